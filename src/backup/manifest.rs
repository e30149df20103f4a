//! Reading any engine's `manifest.json`, written once: a backup is complete when its
//! manifest exists. Each engine's manifest says which it is by its `kind` field
//! (`mysql-logical`, `mongodb-logical`; PostgreSQL's has none) and carries a
//! `format_version`; a manifest of a newer format than this pitr reads is refused with a
//! sentence saying to upgrade, never half-read.

use anyhow::{anyhow, Context as _};
use serde::de::DeserializeOwned;

use crate::archive::keys::BackupKey;
use crate::storage::{Repo, StorageError};

/// One engine's manifest type.
pub trait Manifest: DeserializeOwned {
    /// The `kind` of this engine's manifests (`None`: PostgreSQL's, which have none).
    const KIND: Option<&'static str>;
    /// The engine, for messages (`MySQL`, `MongoDB`).
    const ENGINE: &'static str;
    /// The newest format this pitr reads.
    const FORMAT_VERSION: u32;
    /// The format the manifest was written in.
    fn format_version(&self) -> u32;
}

/// The manifest of `key` parsed from JSON; `Ok(None)` when it is another engine's.
pub fn parse<M: Manifest>(key: &BackupKey, v: &serde_json::Value) -> anyhow::Result<Option<M>> {
    if v.get("kind").and_then(|k| k.as_str()) != M::KIND {
        return Ok(None);
    }
    let k = key.to_key();
    let m: M = serde_json::from_value(v.clone()).with_context(|| {
        format!(
            "backup manifest {k} is not a valid {} backup manifest",
            M::ENGINE
        )
    })?;
    if m.format_version() > M::FORMAT_VERSION {
        return Err(anyhow!(
            "backup manifest {k} has format version {} (this pitr reads up to {}); upgrade pitr",
            m.format_version(),
            M::FORMAT_VERSION
        ));
    }
    Ok(Some(m))
}

/// The `manifest.json` of `key` as JSON; `Ok(None)` when the backup is incomplete (no
/// manifest yet).
pub async fn read_json(repo: &Repo, key: &BackupKey) -> anyhow::Result<Option<serde_json::Value>> {
    let k = key.to_key();
    let body = match repo.get(&k).await {
        Ok(b) => b,
        Err(StorageError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let body = crate::crypto::open_object(repo, &k, body)?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| anyhow!("backup manifest {k} is not valid JSON: {e}"))
}

/// The manifest of `key`; `Ok(None)` when the backup is incomplete (no manifest yet) or
/// another engine's.
pub async fn read<M: Manifest>(repo: &Repo, key: &BackupKey) -> anyhow::Result<Option<M>> {
    match read_json(repo, key).await? {
        Some(v) => parse(key, &v),
        None => Ok(None),
    }
}

/// The complete backups of this engine among `keys`, ordered by `order`.
pub async fn list<M: Manifest, O: Ord>(
    repo: &Repo,
    keys: &[BackupKey],
    order: impl Fn(&BackupKey, &M) -> O,
) -> anyhow::Result<Vec<(BackupKey, M)>> {
    let mut out = Vec::new();
    for k in keys {
        match read::<M>(repo, k).await? {
            Some(m) => out.push((k.clone(), m)),
            None => tracing::debug!("backup {} has no manifest of this engine, skipped", k.dir()),
        }
    }
    out.sort_by_key(|(k, m)| order(k, m));
    Ok(out)
}
