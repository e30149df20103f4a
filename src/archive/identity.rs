//! Source identity: `<source>/source.json`, written create-if-absent before
//! any data of a source, so two different databases can never interleave
//! their logs under one name.
//!
//! ```json
//! {"name":"orders","engine":"postgres","system_id":"7301234567890123456",
//!  "format_version":1,"created_at":"2024-01-02T03:04:05Z"}
//! ```
//!
//! `system_id` is the PostgreSQL system identifier, the MySQL/MariaDB
//! `server_uuid`, or the MongoDB replica-set name.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use pitr_segment::Engine;
use serde::{Deserialize, Serialize};

use crate::archive::keys::{identity_key, KeyError, SourceName};
use crate::storage::{PutOutcome, Repo, StorageError};

/// Current repository layout version written into new identities.
pub const FORMAT_VERSION: u32 = 1;

/// The identity of an archived source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceIdentity {
    pub name: String,
    #[serde(with = "engine_name")]
    pub engine: Engine,
    pub system_id: String,
    pub format_version: u32,
    pub created_at: DateTime<Utc>,
}

mod engine_name {
    use pitr_segment::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(e: &Engine, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(e.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Engine, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl SourceIdentity {
    /// A new identity with the current format version, created now.
    pub fn new(name: &str, engine: Engine, system_id: &str) -> SourceIdentity {
        SourceIdentity {
            name: name.to_string(),
            engine,
            system_id: system_id.to_string(),
            format_version: FORMAT_VERSION,
            created_at: Utc::now(),
        }
    }
}

/// Errors of the identity check.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Name(#[from] KeyError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("repository source '{name}' belongs to another database ({stored_engine}, system id {stored_system_id}), refusing to write data of {engine} system id {system_id}; use another --name")]
    Foreign {
        name: String,
        stored_engine: Engine,
        stored_system_id: String,
        engine: Engine,
        system_id: String,
    },
    #[error("{key} is corrupt ({reason}); inspect it by hand before archiving into this source")]
    Corrupt { key: String, reason: String },
    #[error("{key} has format version {found}, newer than this pitr understands ({supported}); upgrade pitr")]
    TooNew {
        key: String,
        found: u32,
        supported: u32,
    },
}

/// Reads `<source>/source.json`, if present.
pub async fn read_identity(
    repo: &Repo,
    source: &SourceName,
) -> Result<Option<SourceIdentity>, IdentityError> {
    let key = identity_key(source);
    let body = match repo.get(&key).await {
        Ok(b) => b,
        Err(StorageError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let id: SourceIdentity = serde_json::from_slice(&body).map_err(|e| IdentityError::Corrupt {
        key: key.clone(),
        reason: e.to_string(),
    })?;
    if id.name != source.as_str() {
        return Err(IdentityError::Corrupt {
            key,
            reason: format!("it names source {:?}", id.name),
        });
    }
    if id.format_version > FORMAT_VERSION {
        return Err(IdentityError::TooNew {
            key,
            found: id.format_version,
            supported: FORMAT_VERSION,
        });
    }
    Ok(Some(id))
}

fn check_same(stored: &SourceIdentity, mine: &SourceIdentity) -> Result<(), IdentityError> {
    if stored.engine != mine.engine || stored.system_id != mine.system_id {
        return Err(IdentityError::Foreign {
            name: stored.name.clone(),
            stored_engine: stored.engine,
            stored_system_id: stored.system_id.clone(),
            engine: mine.engine,
            system_id: mine.system_id.clone(),
        });
    }
    Ok(())
}

/// Refuses (definite error) when the source already belongs to another
/// database; writes nothing (an archiver stores the identity once it first
/// gets through, see [`ensure_identity`]).
pub async fn check_identity(repo: &Repo, identity: &SourceIdentity) -> Result<(), IdentityError> {
    let source = SourceName::new(&identity.name)?;
    match read_identity(repo, &source).await? {
        Some(stored) => check_same(&stored, identity),
        None => Ok(()),
    }
}

/// Makes sure the source's identity is `identity`: creates it when absent,
/// refuses (definite error) when it belongs to another database. Returns the
/// stored identity (whose `created_at` is the original one).
pub async fn ensure_identity(
    repo: &Repo,
    identity: &SourceIdentity,
) -> Result<SourceIdentity, IdentityError> {
    let source = SourceName::new(&identity.name)?;
    if let Some(stored) = read_identity(repo, &source).await? {
        check_same(&stored, identity)?;
        return Ok(stored);
    }
    let key = identity_key(&source);
    let body = serde_json::to_vec_pretty(identity).map_err(|e| IdentityError::Corrupt {
        key: key.clone(),
        reason: e.to_string(),
    })?;
    match repo.put_if_absent(&key, Bytes::from(body)).await {
        Ok(PutOutcome::Created | PutOutcome::AlreadyIdentical) => Ok(identity.clone()),
        Err(StorageError::Divergent { .. }) => {
            // Another process created it between our read and our write.
            let stored =
                read_identity(repo, &source)
                    .await?
                    .ok_or_else(|| IdentityError::Corrupt {
                        key: key.clone(),
                        reason: "it vanished while being checked".into(),
                    })?;
            check_same(&stored, identity)?;
            Ok(stored)
        }
        Err(e) => Err(e.into()),
    }
}

/// The sources of the repository (its top-level folders that are source
/// names), sorted.
pub async fn list_sources(repo: &Repo) -> Result<Vec<SourceName>, StorageError> {
    let mut names: Vec<SourceName> = repo
        .list_dirs("")
        .await?
        .into_iter()
        .map(|d| d.trim_end_matches('/').to_string())
        .filter(|d| !d.starts_with('.'))
        .filter_map(|d| SourceName::new(&d).ok())
        .collect();
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    Ok(names)
}

/// The `--name` given, or the only source in the repository.
pub async fn resolve_source(repo: &Repo, name: Option<&str>) -> anyhow::Result<SourceName> {
    if let Some(n) = name {
        return SourceName::new(n).map_err(|e| anyhow::anyhow!("invalid --name: {e}"));
    }
    let mut sources = list_sources(repo).await?;
    let names: Vec<&str> = sources.iter().map(|s| s.as_str()).collect();
    match names.len() {
        1 => Ok(sources.remove(0)),
        0 => Err(anyhow::anyhow!(
            "the repository holds no source yet; check --repo or run `pitr archive` first"
        )),
        _ => Err(anyhow::anyhow!(
            "the repository holds several sources ({}); choose one with --name",
            names.join(", ")
        )),
    }
}
