//! The repository: a URL mapped onto an object store, with the write
//! discipline every archived object follows.
//!
//! Supported URLs:
//! * a plain path or `file:///abs/path` — a local directory (created if missing);
//! * `s3://bucket/optional/prefix` — S3 or an S3-compatible server, configured
//!   from the standard `AWS_*` environment variables (`AWS_ACCESS_KEY_ID`,
//!   `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`,
//!   `AWS_ALLOW_HTTP`, ...) or from explicit settings given to [`Repo::open_with`];
//! * `memory://` — a fresh in-memory store (tests).
//!
//! Keys are `/`-separated strings relative to the repository root; only
//! [`crate::archive::keys`] builds them.
//!
//! # Create-if-absent
//!
//! Archived objects are immutable. [`Repo::put_if_absent`] writes with
//! `If-None-Match: *` semantics: a new key is created; an existing key with
//! identical bytes is an idempotent retry ([`PutOutcome::AlreadyIdentical`]);
//! an existing key with different bytes is [`StorageError::Divergent`].
//!
//! # Compare-and-swap
//!
//! [`Repo::get_versioned`], [`Repo::create_versioned`] and
//! [`Repo::put_if_version`] (module `cas`) replace a small object only if it
//! still has the version read; the writer lease is built on them. The local
//! directory store has no conditional update, so the repo does it itself
//! there (flock on the directory, compare, rename); see `cas`.
//!
//! Some S3 servers silently ignore conditional-put headers. The first
//! `put_if_absent` on a `Repo` probes for this (two conditional creates of
//! the same scratch key with different bytes: if the second one succeeds, the
//! server ignores conditions). On such servers the repo falls back to: HEAD
//! the key (existing → compare), upload the bytes under a unique scratch key,
//! HEAD again, server-side copy the scratch object onto the key, read it back
//! and compare. **Residual race:** two writers of the same key with different
//! bytes that both pass the second HEAD within the copy window both copy;
//! the last copy wins, and a writer whose read-back happened before the
//! other's copy believes it won. The window is one server-side copy long, and
//! a single archiver per source (the identity check plus the durable tail)
//! keeps it from happening in normal operation.

mod cas;
pub mod conformance;
mod counting;
pub mod faults;
mod local_dirs;

pub use cas::{CasError, Version};
pub use counting::{CountingStore, RequestCounts, LIST_PAGE};

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutPayload};
use tokio::sync::OnceCell;

/// Where scratch objects (conditional-put probe, fallback uploads) live.
const SCRATCH_PREFIX: &str = ".pitr-scratch";

/// Result of a successful [`Repo::put_if_absent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object did not exist and was written.
    Created,
    /// The object already existed with exactly these bytes (idempotent retry).
    AlreadyIdentical,
}

/// Errors of repository access. Every variant names the key (or URL) and
/// what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("invalid repository URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot open repository {url}: {reason}; check the AWS_* settings (bucket, region, endpoint)")]
    Open { url: String, reason: String },
    #[error("cannot use local repository directory {path}: {cause}; check --repo (the path must exist and be writable)")]
    LocalDir {
        path: String,
        /// In the message, not in the error chain (as every cause here).
        cause: std::io::Error,
    },
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey { key: String, reason: String },
    #[error("object {key} not found in the repository")]
    NotFound { key: String },
    #[error("object {key} already exists with different content: divergent history; refusing to overwrite it (is another archiver writing this source, or a different database using the same --name?)")]
    Divergent { key: String },
    #[error("{op} {key} was refused: {detail}; check the AWS_* credentials and the bucket policy, or that the local path is writable")]
    Denied {
        op: &'static str,
        key: String,
        detail: String,
    },
    /// `cause` is kept out of the error chain on purpose: object_store's
    /// message already repeats every layer; Display shows the root cause.
    #[error("{op} {} failed: {}{}", show_key(key), root_cause(cause), if *.transient { " (a transient error)" } else { "" })]
    Backend {
        op: &'static str,
        key: String,
        transient: bool,
        cause: object_store::Error,
    },
}

/// How a key appears in messages (the empty key is the repository root).
fn show_key(key: &str) -> String {
    if key.is_empty() {
        "the repository root".to_string()
    } else {
        key.to_string()
    }
}

/// The innermost cause of a backend error, in one sentence, with a hint for
/// the common cases (object_store's own message repeats every layer).
fn root_cause(e: &object_store::Error) -> String {
    let mut msg = e.to_string();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cur {
        msg = c.to_string();
        cur = c.source();
    }
    let all = e.to_string();
    let hint = if all.contains("169.254.169.254") || all.contains("api/token") {
        "; no AWS credentials were found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for a self-hosted server)"
    } else if all.contains("Connection refused") || all.contains("error sending request") {
        "; the S3 server cannot be reached: check AWS_ENDPOINT_URL and that the server is up"
    } else if all.contains("NoSuchBucket") {
        "; the bucket does not exist: check the bucket name in --repo"
    } else {
        ""
    };
    format!("{msg}{hint}")
}

impl StorageError {
    /// True when retrying the same operation later may succeed (network
    /// trouble, server errors after the client's own retries).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StorageError::Backend {
                transient: true,
                ..
            }
        )
    }

    fn from_store(op: &'static str, key: &str, e: object_store::Error) -> StorageError {
        use object_store::Error as E;
        match e {
            E::NotFound { .. } => StorageError::NotFound {
                key: key.to_string(),
            },
            E::PermissionDenied { source, .. } | E::Unauthenticated { source, .. } => {
                StorageError::Denied {
                    op,
                    key: key.to_string(),
                    detail: source.to_string(),
                }
            }
            E::Generic { .. } | E::JoinError { .. } => StorageError::Backend {
                op,
                key: key.to_string(),
                transient: true,
                cause: e,
            },
            other => StorageError::Backend {
                op,
                key: key.to_string(),
                transient: false,
                cause: other,
            },
        }
    }
}

type SResult<T> = Result<T, StorageError>;

/// A repository: an object store plus pitr's write discipline. Cheap to clone.
#[derive(Clone)]
pub struct Repo {
    inner: Arc<RepoInner>,
}

struct RepoInner {
    store: CountingStore,
    label: String,
    /// `Some(true)` when the server honours `PutMode::Create`, probed lazily.
    conditional: OnceCell<bool>,
    /// `Some(true)` when the server honours `PutMode::Update` (If-Match),
    /// probed lazily (see `cas`).
    conditional_updates: OnceCell<bool>,
    /// The directory of a `file://` repository (conditional updates are
    /// done by the repo itself there, see `cas`).
    local_root: Option<std::path::PathBuf>,
    /// The data keys its objects are sealed and opened with (none until
    /// `crypto::unlock`: a plain repository).
    keys: std::sync::RwLock<Arc<crate::crypto::RepoKeys>>,
}

impl fmt::Debug for Repo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repo")
            .field("url", &self.inner.label)
            .finish()
    }
}

impl fmt::Display for Repo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.label)
    }
}

fn nonce() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{:x}-{:x}-{:x}",
        nanos,
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

fn parse_key(key: &str) -> SResult<Path> {
    if key.is_empty() || key.starts_with('/') || key.ends_with('/') {
        return Err(StorageError::InvalidKey {
            key: key.to_string(),
            reason: "keys are non-empty, relative and do not end with '/'".into(),
        });
    }
    Path::parse(key).map_err(|e| StorageError::InvalidKey {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

fn parse_prefix(prefix: &str) -> SResult<Option<Path>> {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok(None);
    }
    Path::parse(trimmed)
        .map(Some)
        .map_err(|e| StorageError::InvalidKey {
            key: prefix.to_string(),
            reason: e.to_string(),
        })
}

fn is_exists_error(e: &object_store::Error) -> bool {
    matches!(
        e,
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }
    )
}

impl Repo {
    /// Opens a repository URL, reading S3 settings from the environment.
    pub async fn open(url: &str) -> SResult<Repo> {
        Repo::open_with(url, &[]).await
    }

    /// Opens a repository that must already exist: for the verbs that only
    /// read (restore, fetch, status, verify...), so a mistyped local path is
    /// reported instead of silently created empty.
    pub async fn open_existing(url: &str) -> SResult<Repo> {
        let local = match url.split_once("://") {
            Some((s, r)) if s.eq_ignore_ascii_case("file") => Some(r),
            Some(_) => None,
            None => Some(url),
        };
        if let Some(path) = local.filter(|p| !p.is_empty()) {
            if !std::path::Path::new(path).is_dir() {
                return Err(StorageError::LocalDir {
                    path: path.to_string(),
                    cause: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "no such repository directory",
                    ),
                });
            }
        }
        Repo::open(url).await
    }

    /// Like [`Repo::open`], with explicit S3 settings (`AWS_*` names, as in
    /// the environment) that override the environment. Tests use this so
    /// parallel tests never share process-global variables.
    pub async fn open_with(url: &str, settings: &[(String, String)]) -> SResult<Repo> {
        let (scheme, rest) = match url.split_once("://") {
            Some((s, r)) => (s.to_ascii_lowercase(), r),
            None => ("file".to_string(), url),
        };
        match scheme.as_str() {
            "memory" => Ok(Repo::from_store(Arc::new(InMemory::new()), "memory://")),
            "file" => {
                if rest.is_empty() {
                    return Err(StorageError::InvalidUrl {
                        url: url.to_string(),
                        reason: "empty path".into(),
                    });
                }
                let dir = std::path::PathBuf::from(rest);
                let err = |cause| StorageError::LocalDir {
                    path: dir.display().to_string(),
                    cause,
                };
                tokio::fs::create_dir_all(&dir).await.map_err(err)?;
                let dir = tokio::fs::canonicalize(&dir).await.map_err(err)?;
                // fsync files and directories before a put returns: a local
                // repository must be as durable as an object store, because
                // what is stored is confirmed to the database as flushed.
                let store = LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|e| StorageError::LocalDir {
                        path: dir.display().to_string(),
                        cause: std::io::Error::other(e.to_string()),
                    })?
                    .with_fsync(true)
                    // A deleted object's directories go too once empty
                    // (never the root): pruning leaves no empty directories.
                    .with_automatic_cleanup(true);
                let label = format!("file://{}", dir.display());
                let mut repo = Repo::from_store(Arc::new(store), &label);
                if let Some(inner) = Arc::get_mut(&mut repo.inner) {
                    inner.local_root = Some(dir);
                }
                Ok(repo)
            }
            "s3" => Repo::open_s3(url, rest, settings),
            other => Err(StorageError::InvalidUrl {
                url: url.to_string(),
                reason: format!(
                    "unsupported scheme {other:?}; use a local path, file://, s3:// or memory://"
                ),
            }),
        }
    }

    fn open_s3(url: &str, rest: &str, settings: &[(String, String)]) -> SResult<Repo> {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(StorageError::InvalidUrl {
                url: url.to_string(),
                reason: "missing bucket name (s3://BUCKET/prefix)".into(),
            });
        }
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        for (name, value) in settings {
            let key: AmazonS3ConfigKey =
                name.to_ascii_lowercase()
                    .parse()
                    .map_err(|_| StorageError::InvalidUrl {
                        url: url.to_string(),
                        reason: format!("unknown S3 setting {name}"),
                    })?;
            builder = builder.with_config(key, value);
        }
        let store = builder.build().map_err(|e| StorageError::Open {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        let prefix = prefix.trim_matches('/');
        let label = format!("s3://{bucket}/{prefix}");
        if prefix.is_empty() {
            return Ok(Repo::from_store(Arc::new(store), &label));
        }
        let prefix = Path::parse(prefix).map_err(|e| StorageError::InvalidUrl {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        Ok(Repo::from_store(
            Arc::new(PrefixStore::new(store, prefix)),
            &label,
        ))
    }

    /// Wraps an existing store (tests: fault injection, shared in-memory stores).
    pub fn from_store(store: Arc<dyn ObjectStore>, label: &str) -> Repo {
        Repo {
            inner: Arc::new(RepoInner {
                store: CountingStore::new(store),
                label: label.to_string(),
                conditional: OnceCell::new(),
                conditional_updates: OnceCell::new(),
                local_root: None,
                keys: Default::default(),
            }),
        }
    }

    /// The data keys objects are sealed and opened with.
    pub fn keys(&self) -> Arc<crate::crypto::RepoKeys> {
        match self.inner.keys.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Sets the data keys (see `crypto::unlock`).
    pub fn set_keys(&self, keys: crate::crypto::RepoKeys) {
        match self.inner.keys.write() {
            Ok(mut k) => *k = Arc::new(keys),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(keys),
        }
    }

    /// Requests made through this repository so far.
    pub fn requests(&self) -> RequestCounts {
        self.inner.store.counts()
    }

    /// Whether the server honours conditional creates (probed once, on first use).
    pub async fn conditional_puts(&self) -> SResult<bool> {
        self.inner
            .conditional
            .get_or_try_init(|| self.probe_conditional())
            .await
            .copied()
    }

    async fn probe_conditional(&self) -> SResult<bool> {
        let key = format!("{SCRATCH_PREFIX}/probe-{}", nonce());
        let path = parse_key(&key)?;
        let store = &self.inner.store;
        let create = || object_store::PutOptions::from(PutMode::Create);
        store
            .put_opts(&path, PutPayload::from_static(b"probe-1"), create())
            .await
            .map_err(|e| StorageError::from_store("put", &key, e))?;
        let honoured = match store
            .put_opts(&path, PutPayload::from_static(b"probe-2"), create())
            .await
        {
            Ok(_) => false,
            Err(e) if is_exists_error(&e) => true,
            Err(e) => return Err(StorageError::from_store("put", &key, e)),
        };
        if !honoured {
            tracing::warn!(repo = %self, "the storage server ignores conditional puts; using the HEAD + copy + verify fallback");
        }
        self.delete(&key).await?;
        Ok(honoured)
    }

    /// Creates `key` with `data` unless it exists; see the module docs.
    pub async fn put_if_absent(&self, key: &str, data: Bytes) -> SResult<PutOutcome> {
        let path = parse_key(key)?;
        if !self.conditional_puts().await? {
            return self.put_if_absent_fallback(key, &path, data).await;
        }
        let opts = object_store::PutOptions::from(PutMode::Create);
        match self
            .inner
            .store
            .put_opts(&path, PutPayload::from(data.clone()), opts)
            .await
        {
            Ok(_) => Ok(PutOutcome::Created),
            Err(e) if is_exists_error(&e) => self.compare_existing(key, &data).await,
            Err(e) => Err(StorageError::from_store("put", key, e)),
        }
    }

    async fn compare_existing(&self, key: &str, data: &Bytes) -> SResult<PutOutcome> {
        let existing = self.get(key).await?;
        if existing == *data {
            Ok(PutOutcome::AlreadyIdentical)
        } else {
            Err(StorageError::Divergent {
                key: key.to_string(),
            })
        }
    }

    async fn put_if_absent_fallback(
        &self,
        key: &str,
        path: &Path,
        data: Bytes,
    ) -> SResult<PutOutcome> {
        if self.exists(key).await? {
            return self.compare_existing(key, &data).await;
        }
        let store = &self.inner.store;
        let scratch_key = format!("{SCRATCH_PREFIX}/pending-{}", nonce());
        let scratch = parse_key(&scratch_key)?;
        store
            .put(&scratch, PutPayload::from(data.clone()))
            .await
            .map_err(|e| StorageError::from_store("put", &scratch_key, e))?;
        let result = async {
            if self.exists(key).await? {
                return self.compare_existing(key, &data).await;
            }
            store
                .copy(&scratch, path)
                .await
                .map_err(|e| StorageError::from_store("copy", key, e))?;
            match self.compare_existing(key, &data).await? {
                PutOutcome::AlreadyIdentical => Ok(PutOutcome::Created),
                PutOutcome::Created => Ok(PutOutcome::Created),
            }
        }
        .await;
        if let Err(e) = self.delete(&scratch_key).await {
            tracing::warn!(key = %scratch_key, error = %e, "could not delete scratch object");
        }
        result
    }

    /// True when `key` exists.
    pub async fn exists(&self, key: &str) -> SResult<bool> {
        match self.head(key).await {
            Ok(_) => Ok(true),
            Err(StorageError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The whole object.
    pub async fn get(&self, key: &str) -> SResult<Bytes> {
        let path = parse_key(key)?;
        let result = self
            .inner
            .store
            .get(&path)
            .await
            .map_err(|e| StorageError::from_store("get", key, e))?;
        result
            .bytes()
            .await
            .map_err(|e| StorageError::from_store("get", key, e))
    }

    /// Bytes `range` of the object.
    pub async fn get_range(&self, key: &str, range: Range<u64>) -> SResult<Bytes> {
        let path = parse_key(key)?;
        self.inner
            .store
            .get_range(&path, range)
            .await
            .map_err(|e| StorageError::from_store("get", key, e))
    }

    /// Object metadata (size, etag, last-modified).
    pub async fn head(&self, key: &str) -> SResult<ObjectMeta> {
        let path = parse_key(key)?;
        self.inner
            .store
            .head(&path)
            .await
            .map_err(|e| StorageError::from_store("head", key, e))
    }

    /// All objects under `prefix` (whole path components), sorted by key.
    pub async fn list(&self, prefix: &str) -> SResult<Vec<ObjectMeta>> {
        let p = parse_prefix(prefix)?;
        let mut out: Vec<ObjectMeta> = self
            .inner
            .store
            .list(p.as_ref())
            .try_collect()
            .await
            .map_err(|e| StorageError::from_store("list", prefix, e))?;
        out.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(out)
    }

    /// Objects under `prefix` whose key sorts strictly after `offset_key`, sorted.
    pub async fn list_after(&self, prefix: &str, offset_key: &str) -> SResult<Vec<ObjectMeta>> {
        let p = parse_prefix(prefix)?;
        let offset = parse_key(offset_key)?;
        let mut out: Vec<ObjectMeta> = self
            .inner
            .store
            .list_with_offset(p.as_ref(), &offset)
            .try_collect()
            .await
            .map_err(|e| StorageError::from_store("list", prefix, e))?;
        out.retain(|m| m.location > offset);
        out.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(out)
    }

    /// The immediate "directories" under `prefix` (as full keys, without a
    /// trailing `/`), sorted.
    pub async fn list_dirs(&self, prefix: &str) -> SResult<Vec<String>> {
        let p = parse_prefix(prefix)?;
        let result = self
            .inner
            .store
            .list_with_delimiter(p.as_ref())
            .await
            .map_err(|e| StorageError::from_store("list", prefix, e))?;
        let mut dirs: Vec<String> = result
            .common_prefixes
            .into_iter()
            .map(|p| p.to_string())
            .collect();
        dirs.sort();
        Ok(dirs)
    }

    /// Deletes `key`; deleting a missing key succeeds.
    pub async fn delete(&self, key: &str) -> SResult<()> {
        let path = parse_key(key)?;
        match self.inner.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(StorageError::from_store("delete", key, e)),
        }
    }
}
