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

use crate::backup::interrupt::StartedBackup;

/// What `pitr backup` and `pitr run` ask of any engine's base backup.
#[derive(Debug, Clone)]
pub struct BackupRequest {
    pub url: String,
    /// Source name (`None`: derived from the server's identity).
    pub name: Option<String>,
    pub label: Option<String>,
    /// Where the backup publishes its directory once it knows it, so an
    /// interrupted backup can be cleaned up.
    pub started: StartedBackup,
    /// Largest stored part (compressed bytes).
    pub part_size: usize,
    /// Logical backups: tables or collections dumped at once.
    pub parallel: usize,
    /// Show progress on a terminal's stderr (PostgreSQL reports bytes received).
    pub progress: bool,
    /// zstd level of the stored parts.
    pub zstd_level: i32,
}

impl BackupRequest {
    /// A request with the defaults of every option the command line may leave out.
    pub fn new(url: String, name: Option<String>, label: Option<String>) -> Self {
        BackupRequest {
            url,
            name,
            label,
            started: StartedBackup::default(),
            part_size: 64 << 20,
            parallel: 4,
            progress: false,
            zstd_level: 3,
        }
    }
}
