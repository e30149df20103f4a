//! PostgreSQL base backups: a `BASE_BACKUP` streamed into the repository as
//! zstd parts, plus the WAL that makes it consistent.
//!
//! * [`manifest`]: `manifest.json`, written last; its presence marks a
//!   complete backup.
//! * [`take`]: runs the backup and waits until the WAL from its start to its
//!   stop position is archived.

pub mod manifest;
pub mod take;
