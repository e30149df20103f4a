//! `manifest.json` of a base backup: the last object written for a backup
//! (create-if-absent), so a backup without one is incomplete and ignored.
//!
//! ```json
//! { "format_version": 1, "id": "20240101T120000Z", "label": "...",
//!   "engine": "postgres", "system_id": "7312...", "server_version": "15.8",
//!   "timeline": 1, "start_lsn": "0/2000028", "stop_lsn": "0/2000138",
//!   "start_time": "2024-01-01T12:00:00Z", "stop_time": "...",
//!   "tablespaces": [{"oid": null, "location": null, "archive": "base.tar"}],
//!   "archives": [{"name": "base.tar", "tablespace_oid": null, "tablespace_path": "",
//!                 "size": 123, "sha256": "...",
//!                 "parts": [{"key": "base.tar.zst.000", "size": 45, "sha256": "..."}]}],
//!   "backup_manifest": { ...same shape as an archive, name "backup_manifest"... } }
//! ```
//!
//! `size`/`sha256` of an archive are of the uncompressed tar; a part's are of
//! the stored (zstd) object. The parts of an archive concatenated form one
//! zstd stream.

use chrono::{DateTime, Utc};
use pitr_postgres::lsn::Lsn;
use serde::{Deserialize, Serialize};

use crate::archive::keys::{BackupKey, SourceName};
use crate::storage::Repo;

pub const MANIFEST_FORMAT_VERSION: u32 = 1;

/// One stored object of an archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartInfo {
    /// Part name inside the backup directory (`base.tar.zst.000`).
    pub key: String,
    pub size: u64,
    pub sha256: String,
}

/// One tar archive (or the server's backup_manifest) of the backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveInfo {
    /// As the server named it: `base.tar`, `<oid>.tar`, `backup_manifest`.
    pub name: String,
    pub tablespace_oid: Option<u32>,
    /// Location of the tablespace on the source server ("" = data directory).
    pub tablespace_path: String,
    /// Uncompressed size and sha256 (hex).
    pub size: u64,
    pub sha256: String,
    pub parts: Vec<PartInfo>,
}

/// A complete base backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupManifest {
    pub format_version: u32,
    pub id: String,
    pub label: String,
    pub engine: String,
    pub system_id: String,
    pub server_version: String,
    pub timeline: u32,
    #[serde(with = "lsn_text")]
    pub start_lsn: Lsn,
    #[serde(with = "lsn_text")]
    pub stop_lsn: Lsn,
    pub start_time: DateTime<Utc>,
    pub stop_time: DateTime<Utc>,
    pub archives: Vec<ArchiveInfo>,
    pub backup_manifest: Option<ArchiveInfo>,
}

impl BackupManifest {
    /// Compressed bytes stored for this backup.
    pub fn stored_bytes(&self) -> u64 {
        self.archives
            .iter()
            .chain(self.backup_manifest.iter())
            .flat_map(|a| a.parts.iter())
            .map(|p| p.size)
            .sum()
    }
}

/// LSNs as PostgreSQL prints them (`0/2000028`).
mod lsn_text {
    use pitr_postgres::lsn::Lsn;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(l: &Lsn, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&l.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Lsn, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|_| serde::de::Error::custom(format!("invalid LSN {s:?}")))
    }
}

impl crate::backup::manifest::Manifest for BackupManifest {
    const KIND: Option<&'static str> = None;
    const ENGINE: &'static str = "PostgreSQL";
    const FORMAT_VERSION: u32 = MANIFEST_FORMAT_VERSION;
    fn format_version(&self) -> u32 {
        self.format_version
    }
}

/// All complete backups of `source` with their keys, oldest first.
pub async fn list_backups(
    repo: &Repo,
    source: &SourceName,
    keys: &[BackupKey],
) -> anyhow::Result<Vec<(BackupKey, BackupManifest)>> {
    debug_assert!(keys.iter().all(|k| &k.source == source));
    crate::backup::manifest::list(repo, keys, |k, m: &BackupManifest| {
        (m.start_lsn, k.id.clone())
    })
    .await
}
