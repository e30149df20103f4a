//! The engine model: what differs between PostgreSQL, MySQL/MariaDB (and
//! MongoDB) sits behind [`EngineOps`]; catalog, retention, status,
//! verify, run and metrics speak to it and never ask "which engine?".
//!
//! An engine plugs in with one module here implementing [`EngineOps`] and
//! one line in [`ENGINES`]. What an engine tells the rest of pitr:
//!
//! * which source URLs and repository identities are its own
//!   ([`EngineOps::handles_url`], [`EngineOps::codes`]);
//! * how a log position prints ([`EngineOps::format_position`]);
//! * what its base-backup manifest says, reduced to an engine-neutral
//!   [`BackupSummary`]: the first log position a restore of the backup
//!   reads and the position where the restored database is consistent
//!   ([`EngineOps::backup_summary`]); retention and status need nothing else
//!   to decide whether a backup is restorable and which log it needs;
//! * whether the log start of a backup is rounded down to the server's log
//!   file size ([`EngineOps::aligns_log_to_files`]: PostgreSQL fetches whole
//!   WAL files).
//!
//! * how people call it and which verb fetches its log
//!   ([`EngineOps::label`], [`EngineOps::fetch_verb`]);
//! * how it archives, backs up and restores ([`EngineOps::archive`],
//!   [`EngineOps::backup`], [`EngineOps::restore`] with the targets it serves,
//!   [`EngineOps::restore_targets`]); the CLI verbs only pick the engine.

pub mod mongodb;
pub mod mysql;
pub mod postgres;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use pitr_segment::{Epoch, LogPos};
use tokio_util::sync::CancellationToken;

use crate::archive::keys::{BackupKey, SourceName};
use crate::archive::progress::ArchiveProgress;
use crate::restore::request::{RestoreRequest, TargetKind};
use crate::storage::Repo;

/// A boxed engine operation (object-safe async).
pub type EngineFuture<T> = Pin<Box<dyn Future<Output = anyhow::Result<T>> + Send + 'static>>;

/// What `pitr archive` and `pitr run` ask of any engine's archiver.
#[derive(Debug, Clone)]
pub struct ArchiveRequest {
    pub url: String,
    /// Source name (`None`: derived from the server's identity).
    pub name: Option<String>,
    /// PostgreSQL: the replication slot (others ignore it).
    pub slot: Option<String>,
    /// A segment is stored at least this often while the log flows.
    pub flush_interval: Duration,
    /// The writer lease the archiver holds while it writes.
    pub lease: crate::archive::lease::LeaseOptions,
    /// zstd level of stored segments.
    pub zstd_level: i32,
    /// Segment uploads in flight at once.
    pub parallelism: usize,
    /// MySQL/MariaDB: the server id to register with (others ignore it).
    pub server_id: Option<u32>,
    /// MongoDB: where a new archive starts (others ignore it).
    pub start_at: Option<crate::source::mongodb::StartAt>,
}

impl ArchiveRequest {
    /// A request with the defaults of every option the command line may leave out.
    pub fn new(
        url: String,
        name: Option<String>,
        lease: crate::archive::lease::LeaseOptions,
    ) -> Self {
        ArchiveRequest {
            url,
            name,
            slot: None,
            flush_interval: Duration::from_secs(1),
            lease,
            zstd_level: 1,
            parallelism: crate::archive::pipeline::UploaderOptions::default().parallelism,
            server_id: None,
            start_at: None,
        }
    }

    /// What every engine's archiver is told of the request.
    pub fn settings(&self) -> crate::archive::driver::Settings {
        crate::archive::driver::Settings {
            url: self.url.clone(),
            name: self.name.clone(),
            flush_interval: self.flush_interval,
            zstd_level: self.zstd_level,
            uploader: crate::archive::pipeline::UploaderOptions {
                parallelism: self.parallelism.max(1),
                ..Default::default()
            },
            lease: self.lease,
            ..Default::default()
        }
    }
}

pub use crate::backup::BackupRequest;

/// What a finished base backup reports, in the engine's own words.
#[derive(Debug, Clone)]
pub struct BackupReport {
    pub key: BackupKey,
    /// One sentence for people (`backup ... complete: ...`).
    pub summary: String,
    /// The same for machines (`--json`).
    pub json: serde_json::Value,
}

/// What one engine provides to the engine-neutral parts of pitr.
pub trait EngineOps: Send + Sync + std::fmt::Debug {
    /// Short lower-case name (`postgres`, `mysql`).
    fn name(&self) -> &'static str;
    /// How people name the engine's databases in sentences (`PostgreSQL`).
    fn label(&self) -> &'static str;
    /// The verb that writes its archived log back as the server's own files
    /// (`wal-fetch`); see `restore::fetch`.
    fn fetch_verb(&self) -> &'static str;
    /// The segment-format engine codes of its sources.
    fn codes(&self) -> &'static [pitr_segment::Engine];
    /// Whether a database URL is one of this engine's.
    fn handles_url(&self, url: &str) -> bool;
    /// A log position as the engine's users write it.
    fn format_position(&self, epoch: Epoch, pos: LogPos) -> String;
    /// Whether a backup's log start is rounded down to a log-file boundary
    /// before it is looked up (PostgreSQL: whole WAL files are fetched).
    fn aligns_log_to_files(&self) -> bool {
        false
    }
    /// Reduces a `manifest.json` (already parsed as JSON) to a summary;
    /// `Ok(None)` when the manifest is another engine's.
    fn backup_summary(
        &self,
        key: &BackupKey,
        manifest: &serde_json::Value,
    ) -> anyhow::Result<Option<BackupSummary>>;
    /// Streams the source's log into `repo` until `cancel` (then stores what
    /// was received and returns `Ok`), or fails.
    fn archive(
        &self,
        req: ArchiveRequest,
        repo: Repo,
        cancel: CancellationToken,
        progress: Arc<ArchiveProgress>,
    ) -> EngineFuture<()>;
    /// Takes one complete base backup and reports it.
    fn backup(&self, req: BackupRequest, repo: Repo) -> EngineFuture<BackupReport>;
    /// The restore targets this engine serves.
    fn restore_targets(&self) -> &'static [TargetKind];
    /// Restores (or, with `dry_run`, plans) one of its sources; returns the exit code.
    fn restore(&self, req: RestoreRequest) -> EngineFuture<i32>;
}

/// Every engine pitr knows, in the order URLs and manifests are tried.
pub static ENGINES: &[&dyn EngineOps] = &[&postgres::Postgres, &mysql::MySql, &mongodb::MongoDb];

/// The engine whose identities carry `code`.
pub fn by_code(code: pitr_segment::Engine) -> Option<&'static dyn EngineOps> {
    ENGINES.iter().copied().find(|e| e.codes().contains(&code))
}

/// The engine of a database URL.
pub fn by_url(url: &str) -> Option<&'static dyn EngineOps> {
    ENGINES.iter().copied().find(|e| e.handles_url(url))
}

/// Engine-neutral facts of one complete base backup.
#[derive(Debug, Clone)]
pub struct BackupSummary {
    pub key: BackupKey,
    pub engine: &'static dyn EngineOps,
    /// The engine code recorded for the server (`mysql` or `mariadb`...).
    pub server_engine: pitr_segment::Engine,
    pub label: String,
    pub server_version: String,
    pub system_id: String,
    /// The epoch (timeline, lineage) the backup's log starts on.
    pub epoch: Epoch,
    /// The first log position a restore of this backup reads.
    pub log_start: LogPos,
    /// The restored database is consistent once the log is applied up to
    /// here (the backup's stop position; a logical snapshot's own position).
    pub consistent_at: LogPos,
    pub start_time: DateTime<Utc>,
    pub stop_time: DateTime<Utc>,
    /// The instant the restored database is consistent at: the earliest
    /// restore target this backup serves (PostgreSQL: the backup's stop
    /// time; a logical snapshot: the snapshot's server time).
    pub consistent_time: DateTime<Utc>,
    /// Bytes stored for the backup's parts.
    pub stored_bytes: u64,
    /// Every stored object of the backup but its manifest.
    pub parts: Vec<StoredPart>,
}

/// One stored object of a backup, as its manifest records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPart {
    /// Name inside the backup directory.
    pub name: String,
    /// Stored (compressed) size and its sha256 (hex).
    pub size: u64,
    pub sha256: String,
}

impl BackupSummary {
    /// The log range `[from, to)` of [`BackupSummary::epoch`] that must be
    /// archived for this backup to be restorable; `alignment` is the
    /// server's log-file size for engines that fetch whole files.
    pub fn log_needed(&self, alignment: u64) -> (Epoch, LogPos, LogPos) {
        let from = if self.engine.aligns_log_to_files() {
            align_down(self.log_start, alignment)
        } else {
            self.log_start
        };
        (self.epoch, from, self.consistent_at)
    }
}

/// `p` rounded down to a multiple of `a` (positions of one epoch).
pub fn align_down(p: LogPos, a: u64) -> LogPos {
    let a = a.max(1);
    LogPos::new(p.hi, p.lo - p.lo % a)
}

/// Reads the summary of one backup: `Ok(None)` when it is incomplete (no
/// manifest yet) or of an engine this pitr does not know.
pub async fn read_backup(repo: &Repo, key: &BackupKey) -> anyhow::Result<Option<BackupSummary>> {
    let Some(v) = crate::backup::manifest::read_json(repo, key).await? else {
        return Ok(None);
    };
    for engine in ENGINES {
        if let Some(s) = engine.backup_summary(key, &v)? {
            return Ok(Some(s));
        }
    }
    tracing::warn!(backup = %key.dir(), "backup manifest of an unknown engine, skipped");
    Ok(None)
}

/// All complete backups among `keys` (the catalog's backup directories of
/// `source`), oldest stop time first.
pub async fn list_backups(
    repo: &Repo,
    source: &SourceName,
    keys: &[BackupKey],
) -> anyhow::Result<Vec<BackupSummary>> {
    let mut out = Vec::new();
    for k in keys {
        debug_assert_eq!(&k.source, source);
        match read_backup(repo, k).await? {
            Some(s) => out.push(s),
            None => tracing::debug!(backup = %k.dir(), "no manifest (incomplete), skipped"),
        }
    }
    out.sort_by(|a, b| {
        (a.stop_time, a.epoch, a.log_start, &a.key.id).cmp(&(
            b.stop_time,
            b.epoch,
            b.log_start,
            &b.key.id,
        ))
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_find_their_engine() {
        assert_eq!(
            by_url("postgres://u@h/db").map(|e| e.name()),
            Some("postgres")
        );
        assert_eq!(by_url("host=h user=u").map(|e| e.name()), Some("postgres"));
        assert_eq!(by_url("mariadb://u@h").map(|e| e.name()), Some("mysql"));
        assert_eq!(by_url("mysql://u@h").map(|e| e.name()), Some("mysql"));
        assert!(by_url("http://h").is_none());
        assert_eq!(
            by_url("mongodb://u@h/?replicaSet=rs0").map(|e| e.name()),
            Some("mongodb")
        );
        assert_eq!(
            by_code(pitr_segment::Engine::MongoDb).map(|e| e.name()),
            Some("mongodb")
        );
        assert_eq!(
            by_code(pitr_segment::Engine::MariaDb).map(|e| e.name()),
            Some("mysql")
        );
        assert_eq!(
            by_code(pitr_segment::Engine::Postgres).map(|e| e.name()),
            Some("postgres")
        );
    }

    #[test]
    fn alignment() {
        let p = LogPos::from_lsn(0x0300_0028);
        assert_eq!(align_down(p, 16 << 20), LogPos::from_lsn(0x0300_0000));
        assert_eq!(align_down(p, 1), p);
    }
}
