//! Base backups (`pitr backup`): a PostgreSQL `BASE_BACKUP` streamed into
//! the repository as zstd parts, plus the WAL that makes it consistent.
//!
//! * [`manifest`]: `manifest.json`, written last; its presence marks a
//!   complete backup.
//! * [`take`]: runs the backup and waits until the WAL from its start to its
//!   stop position is archived.
//! * [`interrupt`]: a backup stopped by SIGTERM/SIGINT deletes what it wrote.

pub mod interrupt;
pub mod manifest;
pub mod mongodb;
pub mod mysql;
pub mod parts;
pub mod take;
