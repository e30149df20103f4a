//! MySQL/MariaDB binlog replication client and event decoding.
//!
//! * [`client`]: connect as a replica (`COM_BINLOG_DUMP` / `COM_BINLOG_DUMP_GTID`,
//!   MariaDB `@slave_connect_state`) and receive each event with the exact
//!   bytes the server stored, CRC32-verified, positions tracked across rotations.
//! * [`conn`]: the minimal client/server protocol underneath (handshake,
//!   authentication, queries, replication commands).
//! * [`event`]: sans-IO decoders for the events indexing needs (FORMAT_DESCRIPTION,
//!   ROTATE, GTIDs of both flavours, XID, QUERY, TABLE_MAP, rows, ...).
//! * [`rows`]: sans-IO decoding of TABLE_MAP events and of rows events into
//!   row images and column values (for comparing primary / unique keys).
//! * [`txn`]: sans-IO transaction-boundary tracker (safe segment cut points
//!   and commit times).
//! * [`segment`]: the binlog stream cut into segments at those points.
//! * [`replay`] / [`status_vars`]: binlog events as SQL statements that apply
//!   them on another server (`BINLOG '...'` + QUERY events with their session context).
//! * [`tls`]: TLS (`ssl-mode`, `ssl-ca`, ...) and the URL parameters.
//! * [`file`]: rebuild binlog files from stored events for the native tools.
//! * [`pos`] / [`gtid`]: positions, server ids, GTIDs and GTID sets.
//! * [`error`]: transient vs definite errors, each with its position.

pub mod client;
pub mod conn;
pub mod error;
pub mod event;
pub mod file;
pub mod gtid;
pub mod pos;
pub mod replay;
pub mod rows;
pub mod segment;
pub mod status_vars;
pub mod tls;
pub mod txn;

pub use client::{
    list_binlogs, server_identity, BinlogClient, ClientOptions, RawEvent, ServerIdentity, StartFrom,
};
pub use error::{DecodeError, ErrorKind, MysqlError};
pub use event::{DecodeCtx, EventData, EventHeader};
pub use file::{rebuild_files, BinlogFileWriter, BINLOG_MAGIC};
pub use gtid::{Gtid, MariaGtid, MariaGtidPos, MysqlGtid, MysqlGtidSet, ServerUuid};
pub use pos::{BinlogFile, BinlogPos, Flavor, ServerId};
pub use txn::{TxnBoundary, TxnTracker};
