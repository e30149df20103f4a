//! Compare-and-swap on one small object: the primitive the writer lease
//! (`archive::lease`) is built on.
//!
//! * [`Repo::get_versioned`] reads an object and its [`Version`];
//! * [`Repo::create_versioned`] creates it only if absent (`If-None-Match: *`);
//! * [`Repo::put_if_version`] replaces it only if it still has the version
//!   that was read (`If-Match: <etag>`).
//!
//! A lost race is [`CasError::Conflict`], never an overwrite.
//!
//! Object stores (S3, the in-memory store) do this with their conditional
//! requests (`PutMode::Create` / `PutMode::Update`). The local-directory
//! store has no conditional update, so for `file://` repositories the repo
//! does it itself: every conditional write of a key takes an exclusive
//! `flock` on the key's directory (no lock file is ever created), compares
//! the current content (the version of a local object is the SHA-256 of its
//! bytes), writes a temporary file beside the key (`<key>#<digits>`,
//! hidden from listings like the store's own staging files), fsyncs it,
//! renames it onto the key and fsyncs the directory. Readers need no lock: a rename is atomic. Only processes that
//! see the same directory (one machine, or a file system with working
//! `flock`, not every NFS) are kept apart this way.

use std::io::Write as _;
use std::path::{Path as FsPath, PathBuf};

use bytes::Bytes;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use sha2::{Digest, Sha256};

use super::{parse_key, Repo, StorageError};

/// The version of an object as read by [`Repo::get_versioned`]: opaque,
/// only good for a later [`Repo::put_if_version`] of the same key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version(Inner);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Inner {
    /// What the object store returned (ETag and/or version id).
    Store {
        e_tag: Option<String>,
        version: Option<String>,
    },
    /// Local directory: SHA-256 of the content.
    Digest([u8; 32]),
}

/// A conditional write that did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CasError {
    /// The object exists (create) or changed since it was read (update).
    #[error("{key} was changed by another process; the conditional write was not applied")]
    Conflict { key: String },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

fn digest(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn io_err(op: &'static str, key: &str, e: std::io::Error) -> StorageError {
    let kind = e.kind();
    StorageError::Backend {
        op,
        key: key.to_string(),
        transient: matches!(
            kind,
            std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
        ),
        cause: object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(e),
        },
    }
}

impl Repo {
    /// The object and its version, or `None` when it does not exist.
    pub async fn get_versioned(&self, key: &str) -> Result<Option<(Bytes, Version)>, StorageError> {
        let path = parse_key(key)?;
        if let Some(root) = &self.inner.local_root {
            let file = root.join(path.as_ref());
            return match tokio::fs::read(&file).await {
                Ok(b) => {
                    let v = Version(Inner::Digest(digest(&b)));
                    Ok(Some((Bytes::from(b), v)))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io_err("get", key, e)),
            };
        }
        let result = match self.inner.store.get(&path).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(StorageError::from_store("get", key, e)),
        };
        let version = Version(Inner::Store {
            e_tag: result.meta.e_tag.clone(),
            version: result.meta.version.clone(),
        });
        let data = result
            .bytes()
            .await
            .map_err(|e| StorageError::from_store("get", key, e))?;
        Ok(Some((data, version)))
    }

    /// True when a replacement conditioned on a stale version is refused:
    /// the store honours `If-Match`. Probed once per repository on a scratch
    /// object (create, replace with the version read, then replace again
    /// with that first, now stale, version, which must conflict); a
    /// `file://` repository does its own compare-and-swap and needs no probe.
    /// A store that honours `If-None-Match` but ignores `If-Match` would let
    /// two lease contenders win the same generation and hide every loss from
    /// renewals, so the writer lease refuses it (see `archive::lease`).
    pub async fn conditional_updates(&self) -> Result<bool, StorageError> {
        if self.inner.local_root.is_some() {
            return Ok(true);
        }
        self.inner
            .conditional_updates
            .get_or_try_init(|| self.probe_updates())
            .await
            .copied()
    }

    async fn probe_updates(&self) -> Result<bool, StorageError> {
        let key = format!(
            "{}/probe-if-match-{}",
            super::SCRATCH_PREFIX,
            digits_nonce()
        );
        let honoured = async {
            let first = match self
                .create_versioned(&key, Bytes::from_static(b"probe-1"))
                .await
            {
                Ok(v) => v,
                // Create is not honoured either: the caller refuses for that.
                Err(CasError::Conflict { .. }) => return Ok(false),
                Err(CasError::Storage(e)) => return Err(e),
            };
            match self
                .put_if_version(&key, Bytes::from_static(b"probe-2"), &first)
                .await
            {
                Ok(_) => {}
                Err(CasError::Conflict { .. }) => return Ok(false),
                Err(CasError::Storage(e)) => return Err(e),
            }
            match self
                .put_if_version(&key, Bytes::from_static(b"probe-3"), &first)
                .await
            {
                Ok(_) => Ok(false),
                Err(CasError::Conflict { .. }) => Ok(true),
                Err(CasError::Storage(e)) => Err(e),
            }
        }
        .await;
        if let Err(e) = self.delete(&key).await {
            tracing::warn!(key = %key, error = %e, "could not delete the probe object");
        }
        let honoured = honoured?;
        if !honoured {
            tracing::warn!(repo = %self, "the storage server ignores If-Match (conditional updates)");
        }
        Ok(honoured)
    }

    /// Creates `key` only if it does not exist.
    pub async fn create_versioned(&self, key: &str, data: Bytes) -> Result<Version, CasError> {
        self.conditional_put(key, data, None).await
    }

    /// Replaces `key` only if its version is still `expected`.
    pub async fn put_if_version(
        &self,
        key: &str,
        data: Bytes,
        expected: &Version,
    ) -> Result<Version, CasError> {
        self.conditional_put(key, data, Some(expected)).await
    }

    async fn conditional_put(
        &self,
        key: &str,
        data: Bytes,
        expected: Option<&Version>,
    ) -> Result<Version, CasError> {
        let path = parse_key(key)?;
        if let Some(root) = self.inner.local_root.clone() {
            let want = match expected {
                None => None,
                Some(Version(Inner::Digest(d))) => Some(*d),
                Some(_) => return Err(conflict(key)),
            };
            let key = key.to_string();
            let rel = path.to_string();
            return tokio::task::spawn_blocking(move || local_cas(&root, &key, &rel, want, &data))
                .await
                .map_err(|e| StorageError::Backend {
                    op: "put",
                    key: path.to_string(),
                    transient: true,
                    cause: object_store::Error::JoinError { source: e },
                })?;
        }
        let mode = match expected {
            None => PutMode::Create,
            Some(Version(Inner::Store { e_tag, version })) => PutMode::Update(UpdateVersion {
                e_tag: e_tag.clone(),
                version: version.clone(),
            }),
            Some(_) => return Err(conflict(key)),
        };
        match self
            .inner
            .store
            .put_opts(&path, PutPayload::from(data), PutOptions::from(mode))
            .await
        {
            Ok(r) => Ok(Version(Inner::Store {
                e_tag: r.e_tag,
                version: r.version,
            })),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Err(conflict(key)),
            // S3 answers an If-Match on a deleted object with 404.
            Err(object_store::Error::NotFound { .. }) if expected.is_some() => Err(conflict(key)),
            Err(e) => Err(StorageError::from_store("put", key, e).into()),
        }
    }
}

fn conflict(key: &str) -> CasError {
    CasError::Conflict {
        key: key.to_string(),
    }
}

/// A unique all-digit suffix (time, pid, sequence): far longer than the
/// local store's own staging counters, so the two never collide.
fn digits_nonce() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{nanos}{:010}{:06}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed) % 1_000_000
    )
}

/// The locked compare-and-write of a local repository (see the module docs).
fn local_cas(
    root: &FsPath,
    key: &str,
    rel: &str,
    expected: Option<[u8; 32]>,
    data: &[u8],
) -> Result<Version, CasError> {
    let target: PathBuf = root.join(rel);
    let dir = target
        .parent()
        .map(FsPath::to_path_buf)
        .unwrap_or_else(|| root.to_path_buf());
    std::fs::create_dir_all(&dir).map_err(|e| io_err("put", key, e))?;
    // The lock is the key's directory itself: it outlives every writer, so
    // no lock file is ever created (or removed while someone waits on it).
    let lock = std::fs::File::open(&dir).map_err(|e| io_err("put", key, e))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| io_err("put", key, e.into()))?;
    let current = match std::fs::read(&target) {
        Ok(b) => Some(digest(&b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err("get", key, e).into()),
    };
    if current != expected {
        return Err(conflict(key));
    }
    // Beside the key, named like the local store's own staging files
    // (`<name>#<digits>`), which listings never show and `remove_leftovers`
    // sweeps after a crash.
    let tmp = PathBuf::from(format!("{}#{}", target.display(), digits_nonce()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &target)?;
        lock.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err("put", key, e).into());
    }
    drop(lock);
    Ok(Version(Inner::Digest(digest(data))))
}
