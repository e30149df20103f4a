//! The archiver driver: the reconnect loop every engine's archiver runs,
//! written once.
//!
//! An engine's archiver implements [`Connection`]: one session of its
//! replication protocol (connect, resume from the durable tail, stream,
//! seal and submit segments) and the facts the driver decides on. The
//! driver runs sessions until one ends the work, and between them decides,
//! the same way for every engine:
//!
//! * a holder that lost its writer lease never reconnects (another process
//!   archives the source now) and reports the loss;
//! * a definite error stops the archiver;
//! * a transient error before the first session that got through (a wrong
//!   host, port or password) stops it too: the operator must see it, not a
//!   silent retry loop;
//! * an uploader that failed definitely stops it (its error is the one to
//!   see);
//! * otherwise it reconnects after a backoff (250 ms doubling to 30 s;
//!   `Busy`: capped at 2 s, for a resource the previous holder's connection
//!   still holds until the server drops it), reset whenever a session ends
//!   in [`Ended::Continue`] (a new timeline or binlog file to follow at once);
//! * cancellation (SIGTERM) ends the wait at once: the session itself
//!   flushed what it had received before returning.
//!
//! [`run`] wraps the loop with the end every archiver shares: store what the
//! uploader still holds, then let a successor in (release the lease, or
//! report that it was lost), then report the first error.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use tokio_util::sync::CancellationToken;

use pitr_segment::Engine;

use crate::archive::catalog::Catalog;
use crate::archive::gaps::{record_gap, GapRecord};
use crate::archive::identity::{ensure_identity, SourceIdentity};
use crate::archive::keys::{SegmentKey, SourceName};
use crate::archive::lease::{wind_down, Lease, LeaseError, LeaseGuard, LeaseOptions};
use crate::archive::pipeline::{Durable, Uploader, UploaderOptions};
use crate::archive::progress::ArchiveProgress;
use crate::archive::sink::{reuse_map, RepoSink};
use crate::retry::Backoff;
use crate::storage::Repo;

/// How a session ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Cancelled: everything received was stored.
    Shutdown,
    /// The requested stop position was reached.
    Done,
    /// Continue with a new session at once (a new timeline, a rotation).
    Continue,
}

/// What a session's error means for the next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Configuration, data or protocol error: retrying cannot help.
    Definite,
    /// Network trouble, a restarting server: reconnect after a backoff.
    Transient,
    /// A resource still held by a previous connection: retry soon.
    Busy,
}

/// What every archiver holds and the driver ends its work with.
pub struct Held {
    /// The uploader, once the archiver knows where to write.
    pub uploader: Option<Uploader>,
    /// The writer lease, once taken.
    pub lease: Option<Lease>,
    /// Whether the lease is still ours (a no-op guard before it is taken).
    pub guard: LeaseGuard,
    pub progress: Arc<ArchiveProgress>,
    /// Anything was written under the lease (an unused lease is released
    /// without a trace).
    pub written: bool,
}

impl Held {
    /// Nothing held yet.
    pub fn new(progress: Arc<ArchiveProgress>) -> Held {
        Held {
            uploader: None,
            lease: None,
            guard: LeaseGuard::none(),
            progress,
            written: false,
        }
    }

    /// The first session got through: stores the source's identity (or
    /// refuses a repository that holds another database under its name) and
    /// starts the uploader under the lease held. Later calls do nothing.
    pub async fn start_writing(&mut self, w: Writing<'_>) -> anyhow::Result<()> {
        if self.uploader.is_some() {
            return Ok(());
        }
        let identity = SourceIdentity::new(w.source.as_str(), w.engine, w.system_id);
        ensure_identity(w.repo, &identity).await?;
        let sink = Arc::new(RepoSink {
            repo: w.repo.clone(),
            source: w.source.clone(),
            engine: w.engine,
            system_id: w.system_id.to_string(),
            zstd_level: w.zstd_level,
            lease: self.guard.clone(),
            reuse: reuse_map(w.reuse),
            keys_checked: Default::default(),
        });
        self.uploader = Some(Uploader::start(
            sink,
            w.uploader,
            w.initial,
            self.progress.upload.clone(),
        ));
        self.written = true;
        Ok(())
    }

    /// Records a lost stretch of log under the lease held (a holder that
    /// lost it records nothing) and counts it for `/metrics`.
    pub async fn record_gap(
        &self,
        repo: &Repo,
        source: &SourceName,
        gap: &GapRecord,
    ) -> anyhow::Result<()> {
        record_gap(repo, source, &self.guard, gap).await?;
        self.progress
            .gaps
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

/// Where and how an archiver's segments are stored (see
/// [`Held::start_writing`]).
pub struct Writing<'a> {
    pub repo: &'a Repo,
    pub source: &'a SourceName,
    pub engine: Engine,
    /// The source's identity, written into `source.json` and every header.
    pub system_id: &'a str,
    pub zstd_level: i32,
    pub uploader: UploaderOptions,
    /// The durable watermark the repository already had.
    pub initial: Option<Durable>,
    /// Segments stored beyond the resume point, rewritten under their keys.
    pub reuse: Vec<SegmentKey>,
}

/// One engine's archiver as the driver sees it.
pub trait Connection: Send {
    /// Runs one session until it ends or fails.
    fn session(
        &mut self,
        cancel: &CancellationToken,
    ) -> impl Future<Output = anyhow::Result<Ended>> + Send;

    /// What an error of [`Connection::session`] means.
    fn classify(&self, e: &anyhow::Error) -> Failure;

    /// True once a session got through to the server and the repository.
    fn got_through(&self) -> bool {
        self.held().written
    }

    /// What the archiver holds.
    fn held(&self) -> &Held;

    /// What the archiver holds, to take the uploader and lease at the end.
    fn held_mut(&mut self) -> &mut Held;

    /// Notes the final durable end once the uploader has stored everything
    /// (the numbers of `/metrics` are kept by the driver).
    fn durable(&mut self, _d: &Durable) {}

    /// True when the uploader stopped on a definite error.
    fn uploader_failed(&self) -> bool {
        self.held()
            .uploader
            .as_ref()
            .is_some_and(|u| u.is_stopped())
    }

    /// The writer lease the archiver writes under.
    fn lease(&self) -> &LeaseGuard {
        &self.held().guard
    }
}

/// What every engine's archiver is told: where the source is, what the
/// repository calls it, when a segment is sealed and how it is stored.
#[derive(Debug, Clone)]
pub struct Settings {
    pub url: String,
    /// Source name (`None`: derived from the server's identity).
    pub name: Option<String>,
    /// A segment is sealed at least this often while the log flows (the RPO).
    pub flush_interval: Duration,
    /// A segment is sealed at the first transaction boundary past this size.
    pub max_segment_bytes: usize,
    pub zstd_level: i32,
    pub uploader: UploaderOptions,
    /// How the writer lease is taken.
    pub lease: LeaseOptions,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            url: String::new(),
            name: None,
            flush_interval: Duration::from_secs(1),
            max_segment_bytes: 16 << 20,
            zstd_level: 1,
            uploader: UploaderOptions::default(),
            lease: LeaseOptions::default(),
        }
    }
}

/// First and largest reconnect delays.
pub const RECONNECT_INITIAL: Duration = Duration::from_millis(250);
pub const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// Largest delay while a resource is [`Failure::Busy`].
pub const BUSY_MAX: Duration = Duration::from_secs(2);

/// Runs sessions of `c` until one ends the work, `cancel` fires, or an
/// error must stop the archiver (see the module docs).
pub async fn drive<C: Connection>(c: &mut C, cancel: &CancellationToken) -> anyhow::Result<()> {
    let mut backoff = Backoff::new(RECONNECT_INITIAL, RECONNECT_MAX);
    loop {
        if cancel.is_cancelled() {
            return Ok(());
        }
        let e = match c.session(cancel).await {
            Ok(Ended::Shutdown | Ended::Done) => return Ok(()),
            Ok(Ended::Continue) => {
                backoff.reset();
                continue;
            }
            Err(e) => e,
        };
        if let Some(lost) = c.lease().lost() {
            return Err(anyhow!(lost));
        }
        let failure = c.classify(&e);
        let delay = match failure {
            Failure::Definite => return Err(e),
            Failure::Transient if !c.got_through() => return Err(e),
            _ if c.uploader_failed() => return Err(e),
            Failure::Busy => {
                let d = backoff.next_capped(BUSY_MAX);
                tracing::warn!("{e:#}; retrying in {d:?}");
                d
            }
            Failure::Transient => {
                let d = backoff.next_delay();
                tracing::warn!("connection lost, reconnecting in {d:?}: {e:#}");
                d
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Runs [`drive`], then ends the work the same way for every engine: the
/// uploader stores what it holds, the lease is released once everything is
/// stored (or its loss is reported), and the errors are reported in this
/// order: a lost lease, the sessions' error (worded by `explain`; a wait for
/// the lease cut short by cancellation is no error), the uploader's.
pub async fn run<C: Connection>(
    c: &mut C,
    cancel: &CancellationToken,
    explain: impl FnOnce(anyhow::Error) -> anyhow::Error,
) -> anyhow::Result<()> {
    let result = drive(c, cancel).await;
    let finished = match c.held_mut().uploader.take() {
        Some(up) => up.finish().await.map_err(anyhow::Error::from),
        None => Ok(None),
    };
    if let Ok(Some(d)) = &finished {
        c.held().progress.note_durable(d);
        c.durable(d);
    }
    let held = c.held_mut();
    let lease = held.lease.take();
    wind_down(
        lease,
        &held.guard,
        &held.progress,
        held.written,
        finished.is_ok(),
    )
    .await?;
    match result {
        Err(e) if matches!(e.downcast_ref::<LeaseError>(), Some(LeaseError::Cancelled)) => {}
        Err(e) => return Err(explain(e)),
        Ok(()) => {}
    }
    finished?;
    Ok(())
}

/// What every archiver does before it reads its first byte of log: take the
/// writer lease of `source` (the tail is only final once no one else
/// writes), load the catalog under it, and store the takeover record at the
/// repository's high water, before anything else is written. The engine then
/// finds its own resume point in the catalog.
pub async fn take_over(
    repo: &Repo,
    source: &SourceName,
    opts: LeaseOptions,
    progress: &ArchiveProgress,
    cancel: &CancellationToken,
) -> anyhow::Result<(Lease, Catalog)> {
    let lease = Lease::acquire(repo, source, opts, cancel).await?;
    progress.lease_generation.store(
        u64::from(lease.generation()),
        std::sync::atomic::Ordering::Relaxed,
    );
    let catalog = Catalog::load(repo, source).await?;
    lease.record_takeover(catalog.high_water()).await?;
    Ok((lease, catalog))
}

#[cfg(test)]
#[path = "driver_tests.rs"]
mod tests;
