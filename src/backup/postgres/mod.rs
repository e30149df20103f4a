//! PostgreSQL base backups: a `BASE_BACKUP` streamed into the repository as
//! zstd parts, plus the WAL that makes it consistent.
//!
//! * [`manifest`]: `manifest.json`, written last; its presence marks a
//!   complete backup.
//! * [`take`]: runs the backup and waits until the WAL from its start to its
//!   stop position is archived.
//! * [`report`]: what a finished backup reports, and its progress on a terminal.

pub mod manifest;
pub mod report;
pub mod take;
