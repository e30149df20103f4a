//! PostgreSQL physical streaming-replication client and minimal WAL reader.
//!
//! * [`backup`]: `BASE_BACKUP` (PostgreSQL 15+ COPY stream of tar archives + manifest).
//! * [`conninfo`]: libpq-style connection strings, environment and `~/.pgpass`.
//! * [`conn`]: protocol v3 connection (TCP/unix, TLS, trust/cleartext/MD5/SCRAM auth, simple queries).
//! * [`replication`]: walsender commands and the `START_REPLICATION PHYSICAL` stream.
//! * [`wal`]: sans-IO WAL decoder extracting commit times, xids, checkpoints and switches.
//! * [`lsn`]: LSNs, timelines, WAL file names.
//! * [`segment`], [`commit_index`]: streamed WAL cut into segments with the
//!   commit times they hold.
//! * [`error`]: errors classified as transient, definite or "WAL removed".

pub mod backup;
mod channel_binding;
pub mod commit_index;
pub mod conn;
pub mod conninfo;
pub mod error;
pub mod lsn;
pub mod replication;
pub mod segment;
mod tls;
pub mod wal;

pub use conn::{Connection, Row, StartupMode};
pub use conninfo::{ChannelBindingMode, Config, Host, SslMode};
pub use error::{ErrorKind, PgError, ServerMessage};
pub use lsn::{Lsn, TimelineId};
pub use replication::{
    ReplicationClient, ReplicationMessage, ReplicationStream, SlotInfo, SystemIdentity,
};
pub use wal::{RecordKind, WalError, WalReader, WalRecord, XactEnd};
