//! Base backups (`pitr backup`), one module per engine, and what they share.
//!
//! * [`postgres`]: a PostgreSQL `BASE_BACKUP` streamed into the repository as
//!   zstd parts, plus the WAL that makes it consistent.
//! * [`mysql`], [`mongodb`]: logical backups streamed as [`parts`].
//! * [`interrupt`]: a backup stopped by SIGTERM/SIGINT deletes what it wrote.
//! * [`manifest`]: reading any engine's manifest (kind, format version).

pub mod interrupt;
pub mod manifest;
pub mod mongodb;
pub mod mysql;
pub mod parts;
pub mod postgres;
