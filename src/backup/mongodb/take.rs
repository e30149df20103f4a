//! Placeholder of the MongoDB logical base backup (the real one is built on
//! another branch with exactly this interface; this one only lets the
//! engine compile and says plainly that backups are not available).

use crate::archive::keys::BackupKey;
use crate::backup::mongodb::manifest::MongoManifest;
use crate::storage::Repo;

/// Settings of one MongoDB base backup.
#[derive(Debug, Clone)]
pub struct MongoBackupOptions {
    pub url: String,
    pub name: Option<String>,
    pub label: Option<String>,
    pub parallel: usize,
    pub part_size: usize,
    pub zstd_level: i32,
}

impl Default for MongoBackupOptions {
    fn default() -> Self {
        MongoBackupOptions {
            url: String::new(),
            name: None,
            label: None,
            parallel: 4,
            part_size: 64 << 20,
            zstd_level: 3,
        }
    }
}

/// A stored backup.
#[derive(Debug, Clone)]
pub struct MongoBackupResult {
    pub key: BackupKey,
    pub manifest: MongoManifest,
}

/// Takes one MongoDB base backup (not available in this build).
pub async fn take_mongo_backup(
    _opts: &MongoBackupOptions,
    _repo: &Repo,
) -> anyhow::Result<MongoBackupResult> {
    Err(anyhow::anyhow!(
        "MongoDB base backups are not available in this build of pitr"
    ))
}
