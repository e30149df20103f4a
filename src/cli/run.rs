//! `pitr run --config pitr.toml`: the sidecar daemon.
//!
//! Validates the whole configuration first (exit 2 with every problem
//! listed), then runs every source's archiver concurrently, each under a
//! supervisor that restarts it with exponential backoff (1 s doubling to
//! 60 s, reset after a minute of healthy streaming), takes scheduled base
//! backups when a source has `backup_interval`, and serves `/metrics` and
//! `/healthz` when `[metrics] listen` is set. After each scheduled backup
//! the `[retention]` policy (if any) is applied to that source (see
//! `retention`; the log is cut at the server's WAL-file size). On
//! SIGTERM/SIGINT every archiver stores what it received and the process
//! exits 0.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::archive::catalog::Catalog;
use crate::archive::keys::SourceName;
use crate::backup::interrupt::{run_interruptible, Outcome};
use crate::cli::common::shutdown_token;
use crate::config::{Config, Retention, SourceConfig};
use crate::engine::{ArchiveRequest, BackupRequest, EngineOps};
use crate::monitor::metrics::{serve, Metrics, SourceMetrics};
use crate::retention::{prune, Policy, PruneOptions, DEFAULT_LOG_ALIGNMENT};
use crate::storage::Repo;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The configuration file.
    #[arg(long, default_value = "pitr.toml")]
    pub config: PathBuf,
    /// Validate the configuration and exit.
    #[arg(long)]
    pub check: bool,
}

pub async fn run(args: RunArgs, kek: Option<crate::crypto::kek::KekSource>) -> anyhow::Result<i32> {
    let cfg = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: invalid configuration:\n{e}");
            return Ok(2);
        }
    };
    if args.check {
        println!(
            "configuration OK: {} source(s), repository {}",
            cfg.sources.len(),
            cfg.repo
        );
        return Ok(0);
    }
    let repo = match Repo::open(&cfg.repo).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(2);
        }
    };
    let kek = kek.or(cfg.kek.clone());
    if let Err(e) = crate::crypto::unlock(&repo, kek.as_ref(), crate::crypto::Access::Write).await {
        eprintln!("error: {e}");
        return Ok(2);
    }
    let cancel = shutdown_token();
    let mut sources = Vec::new();
    for s in &cfg.sources {
        let name = SourceName::new(&s.name)?;
        sources.push(Arc::new(SourceMetrics::new(name)));
    }
    let metrics = Arc::new(Metrics::new(
        repo.clone(),
        sources.clone(),
        Duration::from_secs(10),
    ));
    let server_cancel = CancellationToken::new();
    let server = match cfg.metrics_listen {
        Some(addr) => {
            let listener = match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("error: cannot listen on {addr} for /metrics: {e}");
                    return Ok(2);
                }
            };
            tracing::info!("serving /metrics and /healthz on http://{addr}");
            Some(tokio::spawn(serve(
                listener,
                metrics.clone(),
                server_cancel.clone(),
            )))
        }
        None => None,
    };

    let mut tasks = Vec::new();
    for (s, m) in cfg.sources.iter().zip(&sources) {
        let Some(engine) = crate::engine::by_url(s.url.expose()) else {
            eprintln!(
                "error: source {}: no engine of this pitr archives this kind of URL",
                s.name
            );
            return Ok(2);
        };
        tasks.push(tokio::spawn(supervise(
            s.clone(),
            cfg.lease,
            engine,
            repo.clone(),
            m.clone(),
            cancel.clone(),
        )));
        // Retention and compaction of one source never run at the same time.
        let maintenance = Arc::new(tokio::sync::Mutex::new(()));
        if let Some(every) = s.backup_interval {
            tasks.push(tokio::spawn(schedule_backups(
                s.clone(),
                engine,
                every,
                cfg.retention.clone(),
                repo.clone(),
                m.clone(),
                cancel.clone(),
                maintenance.clone(),
            )));
        }
        tasks.push(tokio::spawn(schedule_compaction(
            m.name.clone(),
            repo.clone(),
            cancel.clone(),
            maintenance,
        )));
    }
    let mut code = 0;
    for t in tasks {
        if let Err(e) = t.await {
            tracing::error!("a source task failed: {e}");
            code = 3;
        }
    }
    server_cancel.cancel();
    if let Some(s) = server {
        let _ = s.await;
    }
    tracing::info!("all archivers stopped");
    Ok(code)
}

/// Runs one source's archiver until cancelled, restarting it on failure.
async fn supervise(
    s: SourceConfig,
    lease: crate::archive::lease::LeaseOptions,
    engine: &'static dyn EngineOps,
    repo: Repo,
    m: Arc<SourceMetrics>,
    cancel: CancellationToken,
) {
    let mut backoff = crate::retry::Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    while !cancel.is_cancelled() {
        let req = ArchiveRequest {
            slot: s.slot.clone(),
            flush_interval: s.flush_interval,
            ..ArchiveRequest::new(s.url.expose().to_string(), Some(s.name.clone()), lease)
        };
        let started = Instant::now();
        m.up.store(true, Ordering::Relaxed);
        let r = engine
            .archive(req, repo.clone(), cancel.clone(), m.progress.clone())
            .await;
        m.up.store(false, Ordering::Relaxed);
        if cancel.is_cancelled() {
            if let Err(e) = r {
                tracing::error!(source = %s.name, "archiver stopped with an error during shutdown: {e:#}");
            }
            return;
        }
        if started.elapsed() > Duration::from_secs(60) {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        match r {
            Ok(()) => {
                tracing::warn!(source = %s.name, "archiver returned; restarting in {delay:?}")
            }
            Err(e) => {
                tracing::error!(source = %s.name, url = %s.url, "archiver failed, restarting in {delay:?}: {e:#}")
            }
        }
        m.restarts.fetch_add(1, Ordering::Relaxed);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Time until the next base backup of a source is due (zero when overdue):
/// `every` after the newest complete backup in the repository, of any
/// engine, so a restart does not take a new one.
async fn backup_due(repo: &Repo, name: &SourceName, every: Duration) -> anyhow::Result<Duration> {
    let catalog = Catalog::load(repo, name).await?;
    let backups = crate::engine::list_backups(repo, name, catalog.backups()).await?;
    let newest = backups.iter().map(|b| b.stop_time).max();
    Ok(match newest {
        None => Duration::ZERO,
        Some(t) => {
            let age = (chrono::Utc::now() - t).to_std().unwrap_or(Duration::ZERO);
            every.saturating_sub(age)
        }
    })
}

/// The next wait of the backup schedule: the repository says when the next
/// backup is due, and a backup this process took (or a failure it is
/// backing off from) holds it back too, even when the repository cannot
/// show it (a listing that misses it must never turn into a loop).
fn next_wait(repo_due: Duration, held_until: Option<Instant>, now: Instant) -> Duration {
    let held = held_until.map_or(Duration::ZERO, |h| h.saturating_duration_since(now));
    repo_due.max(held)
}

/// Backoff after the `failures`-th consecutive failed backup: 30 s doubling,
/// at most an hour and at most the interval.
fn failure_backoff(failures: u32, every: Duration) -> Duration {
    let exp = Duration::from_secs(30).saturating_mul(1 << failures.saturating_sub(1).min(7));
    exp.min(Duration::from_secs(3600))
        .min(every.max(Duration::from_secs(30)))
}

/// Takes a base backup of `s` whenever the newest one is `every` old.
#[allow(clippy::too_many_arguments)]
async fn schedule_backups(
    s: SourceConfig,
    engine: &'static dyn EngineOps,
    every: Duration,
    retention: Retention,
    repo: Repo,
    m: Arc<SourceMetrics>,
    cancel: CancellationToken,
    maintenance: Arc<tokio::sync::Mutex<()>>,
) {
    let retry = every.min(Duration::from_secs(300));
    // Until when this process holds the next backup back (after a backup
    // it took: `every`; after a failure: the backoff).
    let mut held_until: Option<Instant> = None;
    let mut failures: u32 = 0;
    loop {
        let due = match backup_due(&repo, &m.name, every).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(source = %s.name, "cannot tell when the last base backup was taken: {e:#}");
                retry
            }
        };
        let wait = next_wait(due, held_until, Instant::now());
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        if !wait.is_zero() {
            continue; // re-check: a backup may have been taken meanwhile
        }
        let req = BackupRequest::new(
            s.url.expose().to_string(),
            Some(s.name.clone()),
            Some(format!("pitr run scheduled backup of {}", s.name)),
        );
        let started = req.started.clone();
        tracing::info!(source = %s.name, "taking a scheduled base backup");
        let backup = engine.backup(req, repo.clone());
        // Shutdown during a backup: what it stored is deleted.
        let r = match run_interruptible(backup, &started, &repo, &cancel).await {
            Outcome::Finished(r) => r,
            Outcome::Interrupted(c) => {
                tracing::warn!(source = %s.name, "{}", c.message("shutdown"));
                return;
            }
        };
        match r {
            Ok(report) => {
                let key = report.key;
                failures = 0;
                held_until = Some(Instant::now() + every);
                m.backups_taken.fetch_add(1, Ordering::Relaxed);
                tracing::info!(source = %s.name, backup = %key.dir(), "base backup stored");
                let _guard = maintenance.lock().await;
                apply_retention(&s, &retention, &repo, &m.name).await;
            }
            Err(e) => {
                failures += 1;
                let backoff = failure_backoff(failures, every);
                held_until = Some(Instant::now() + backoff);
                m.backup_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(source = %s.name, "scheduled base backup failed ({failures} in a row), retrying in {backoff:?}: {e:#}");
            }
        }
    }
}

/// Every hour (first after ten minutes): merges the small segments older
/// than an hour and refreshes the roll-up index of one source.
async fn schedule_compaction(
    name: SourceName,
    repo: Repo,
    cancel: CancellationToken,
    maintenance: Arc<tokio::sync::Mutex<()>>,
) {
    let mut wait = Duration::from_secs(600);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = Duration::from_secs(3600);
        let _guard = maintenance.lock().await;
        let opts = crate::archive::compaction::CompactionOptions::default();
        let r = tokio::select! {
            _ = cancel.cancelled() => return,
            r = crate::cli::compact::maintain(&repo, &name, &opts) => r,
        };
        match r {
            Ok(report) => tracing::info!(source = %name, "compaction: {report}"),
            Err(e) => {
                tracing::warn!(source = %name, "compaction failed (retried in an hour; the repository stays consistent): {e:#}")
            }
        }
    }
}

/// The server's WAL file size (the default when it cannot be asked).
async fn wal_segment_size(url: &str) -> u64 {
    let ask = async {
        let cfg = pitr_postgres::conninfo::Config::parse(url)?;
        let mut client = pitr_postgres::replication::ReplicationClient::connect(&cfg).await?;
        let size = client.wal_segment_size().await?;
        let _ = client.close().await;
        anyhow::Ok(size)
    };
    match ask.await {
        Ok(size) if size.is_power_of_two() => size,
        Ok(size) => {
            tracing::warn!(
                "the server reports a WAL file size of {size}; assuming {DEFAULT_LOG_ALIGNMENT}"
            );
            DEFAULT_LOG_ALIGNMENT
        }
        Err(e) => {
            tracing::warn!("cannot ask the server for its WAL file size ({e:#}); assuming {DEFAULT_LOG_ALIGNMENT}");
            DEFAULT_LOG_ALIGNMENT
        }
    }
}

/// Applies the `[retention]` policy to one source after a backup.
async fn apply_retention(s: &SourceConfig, retention: &Retention, repo: &Repo, name: &SourceName) {
    let policy = Policy {
        keep_backups: retention.keep_backups,
        recovery_window: retention.recovery_window,
    };
    if !policy.is_set() {
        return;
    }
    let aligns = crate::engine::by_url(s.url.expose()).is_some_and(|e| e.aligns_log_to_files());
    let log_alignment = if aligns {
        wal_segment_size(s.url.expose()).await
    } else {
        1
    };
    let opts = PruneOptions {
        policy,
        log_alignment,
        ..PruneOptions::default()
    };
    match prune(repo, name, &opts).await {
        Ok(r) => tracing::info!(
            source = %s.name,
            "retention: kept {} backup(s), deleted {} backup(s) and {} object(s) ({} bytes of log){}",
            r.kept_backups.len(),
            r.deleted_backups.len(),
            r.deleted_keys.len(),
            r.deleted_segment_bytes,
            r.note.map(|n| format!("; {n}")).unwrap_or_default()
        ),
        Err(e) => {
            tracing::error!(source = %s.name, "retention failed (the repository stays consistent; retried after the next backup): {e:#}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_taken_here_holds_the_next_one_back() {
        let now = Instant::now();
        let day = Duration::from_secs(86_400);
        // The repository does not show the backup just taken (due now): the
        // local hold still waits a whole interval.
        assert_eq!(next_wait(Duration::ZERO, Some(now + day), now), day);
        // Nothing held: the repository decides.
        assert_eq!(
            next_wait(Duration::from_secs(5), None, now),
            Duration::from_secs(5)
        );
        // A hold in the past does not delay an overdue backup.
        assert_eq!(next_wait(Duration::ZERO, Some(now), now), Duration::ZERO);
    }

    #[test]
    fn failures_back_off_exponentially_within_bounds() {
        let day = Duration::from_secs(86_400);
        let b: Vec<u64> = (1..=9).map(|f| failure_backoff(f, day).as_secs()).collect();
        assert_eq!(b, vec![30, 60, 120, 240, 480, 960, 1920, 3600, 3600]);
        // Never longer than the interval (but at least 30 s).
        assert_eq!(failure_backoff(5, Duration::from_secs(60)).as_secs(), 60);
        assert_eq!(failure_backoff(1, Duration::from_secs(1)).as_secs(), 30);
    }
}
