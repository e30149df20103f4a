//! Repository status: what each archived source can be restored to, and how
//! healthy its archive is. Shared by `pitr status` and `/metrics`.
//!
//! Everything here is derived from the repository alone (object keys, gap
//! records, backup manifests), never from local state:
//!
//! * **Recoverable window**: a restore needs a base backup plus the log from
//!   the backup's start onward. For the oldest backup whose log is complete up
//!   to its stop position, the window starts at the backup's stop time; it
//!   ends at the newest commit reachable from a backup through contiguous
//!   segments (a hole or a gap record ends it). Across epochs (timelines) the
//!   chain continues into the next epoch when that epoch's first segment
//!   starts at or before the point reached. With no base backup, nothing is
//!   restorable: the window is `None` and only the log coverage is shown.
//! * **Lag**: now minus the newest archived commit time (the largest `tmax`
//!   of any segment key). An idle database commits nothing, so its lag grows
//!   although nothing is missing: the time the newest segment was stored is
//!   reported next to it to tell "idle" from "archiver stopped".
//! * **Gaps**: recorded gap objects (with their reason) and holes between
//!   segments that no gap record explains.
//! * **Writer lease**: who holds the source's writer lease (`archive::lease`)
//!   and until when. A lease that expired without being released means its
//!   archiver died or hangs: no archiver runs (a problem).
//! * **Fenced objects**: segments and gap records written by an archiver
//!   after it had lost its lease (`archive::fence`); restore never uses them,
//!   but they mean two writers overlapped (a problem).

use std::time::Duration;

use chrono::{DateTime, Utc};
use pitr_segment::{Epoch, LogPos, TimestampMicros};
use serde::Serialize;

use crate::archive::catalog::{Catalog, EpochCatalog};
use crate::archive::gaps::read_gap;
use crate::archive::identity::read_identity;
use crate::archive::keys::SourceName;
use crate::archive::lease::{read_lease, LeaseRecord, LeaseState};
use crate::engine::{self, list_backups};
use crate::retention::{is_orphaned, orphaned_backups, IncompleteBackup};
use crate::storage::{Repo, StorageError};

/// A time range, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Window {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// A lost or missing stretch of log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GapStatus {
    pub epoch: String,
    pub start: String,
    pub end: String,
    pub reason: String,
    /// `true` for a recorded gap object, `false` for a hole nothing explains.
    pub recorded: bool,
    /// The gap lies after the start of the oldest base backup, so it splits
    /// the restorable history.
    pub inside_window: bool,
}

/// The newest base backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupSummary {
    pub id: String,
    pub start_time: DateTime<Utc>,
    pub stop_time: DateTime<Utc>,
    pub stored_bytes: u64,
}

/// The writer lease of a source, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseStatus {
    pub generation: u64,
    pub holder_host: String,
    pub holder_pid: u32,
    pub acquired_at: DateTime<Utc>,
    pub renewed_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// `live`, `released`, `expired` (holder stopped renewing it) or
    /// `abandoned` (not expired yet, but its holder process is gone).
    pub state: String,
}

impl LeaseStatus {
    fn of(rec: &LeaseRecord, now: DateTime<Utc>) -> LeaseStatus {
        LeaseStatus {
            generation: rec.generation,
            holder_host: rec.holder.host.clone(),
            holder_pid: rec.holder.pid,
            acquired_at: rec.acquired_at,
            renewed_at: rec.renewed_at,
            expires_at: rec.expires_at,
            state: match rec.state(now) {
                LeaseState::Live => "live",
                LeaseState::Released => "released",
                LeaseState::Expired => "expired",
                LeaseState::Abandoned => "abandoned",
            }
            .to_string(),
        }
    }
}

/// An object written after its writer lost the lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FencedStatus {
    pub key: String,
    pub generation: u32,
    pub fenced_by_generation: u64,
}

/// Status of one source.
#[derive(Debug, Clone, Serialize)]
pub struct SourceStatus {
    pub name: String,
    pub engine: String,
    pub system_id: String,
    /// Restorable time range (`None`: nothing restorable, e.g. no base backup).
    pub window: Option<Window>,
    /// Earliest and latest commit time held in the log, restorable or not.
    pub log_coverage: Option<Window>,
    pub base_backups: usize,
    pub newest_backup: Option<BackupSummary>,
    pub gaps: Vec<GapStatus>,
    pub segments: usize,
    pub bytes: u64,
    pub epochs: usize,
    /// Newest archived commit time.
    pub last_commit: Option<DateTime<Utc>>,
    /// When the newest segment was stored (storage time; informational only).
    pub last_segment_stored_at: Option<DateTime<Utc>>,
    /// Now minus `last_commit`, in seconds (`None` when nothing committed).
    pub lag_seconds: Option<f64>,
    /// Why the window is empty, when it is.
    pub note: Option<String>,
    /// The writer lease (`None`: never taken, or written before leases).
    pub writer_lease: Option<LeaseStatus>,
    /// Objects fenced off (written after their writer lost the lease).
    pub fenced: Vec<FencedStatus>,
    /// Segments that overlap the resolved chain with other bytes (divergent
    /// history: never used by a restore).
    pub divergent_segments: usize,
    /// Incomplete backups (no manifest) that started before the newest
    /// complete backup: killed or crashed ones, see [`SourceStatus::orphan_problems`].
    pub orphaned_backups: Vec<IncompleteBackup>,
}

/// The `--json` document of `pitr status`.
#[derive(Debug, Clone, Serialize)]
pub struct RepoStatus {
    pub sources: Vec<SourceStatus>,
}

impl SourceStatus {
    /// Reasons this source fails the check of `pitr status` (exit 1): a gap
    /// inside the recoverable window, or a lag above `max_lag`.
    pub fn problems(&self, max_lag: Option<Duration>) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(l) = self
            .writer_lease
            .as_ref()
            .filter(|l| l.state == "expired" || l.state == "abandoned")
        {
            out.push(format!(
                "{}: the writer lease (generation {}) of {} pid {} expired at {} without being released: that archiver died or hangs, and no archiver runs",
                self.name, l.generation, l.holder_host, l.holder_pid, l.expires_at
            ));
        }
        if !self.fenced.is_empty() {
            out.push(format!(
                "{}: {} object(s) were written after their archiver lost the writer lease (fenced, never used by a restore; pitr verify lists them): two archivers overlapped",
                self.name,
                self.fenced.len()
            ));
        }
        if self.divergent_segments > 0 {
            out.push(format!(
                "{}: {} segment(s) overlap the archive with different log (divergent history, never used by a restore; pitr verify lists them)",
                self.name, self.divergent_segments
            ));
        }
        for g in self.gaps.iter().filter(|g| g.inside_window) {
            out.push(format!(
                "{}: epoch {} positions {}..{} are lost ({}); restores cannot cross them",
                self.name, g.epoch, g.start, g.end, g.reason
            ));
        }
        if let Some(max) = max_lag {
            match self.lag_seconds {
                Some(l) if l > max.as_secs_f64() => out.push(format!(
                    "{}: archive lag {} exceeds {}",
                    self.name,
                    human_secs(l),
                    humantime::format_duration(max)
                )),
                Some(_) => {}
                None => out.push(format!(
                    "{}: no commit archived yet, so the lag is unknown",
                    self.name
                )),
            }
        }
        out
    }
}

/// Formats seconds as `1h 2m 3s` (whole seconds).
pub fn human_secs(s: f64) -> String {
    let secs = if s.is_finite() && s > 0.0 {
        s as u64
    } else {
        0
    };
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// Converts an archive time to a `DateTime` (out-of-range times clamp to the epoch).
pub fn to_datetime(t: TimestampMicros) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.0).unwrap_or_default()
}

/// Names of the sources in the repository: top-level directories holding a
/// `source.json`.
pub async fn list_sources(repo: &Repo) -> Result<Vec<SourceName>, StorageError> {
    let mut out = Vec::new();
    for dir in repo.list_dirs("").await? {
        let name = dir.trim_end_matches('/');
        let Ok(source) = SourceName::new(name) else {
            continue;
        };
        if repo
            .exists(&crate::archive::keys::identity_key(&source))
            .await?
        {
            out.push(source);
        }
    }
    out.sort();
    Ok(out)
}

impl SourceStatus {
    /// Orphaned backups (see `retention`) that started more than `grace`
    /// before `now`: `pitr prune` removes them; `pitr status` fails while
    /// one exists.
    pub fn orphan_problems(&self, grace: Duration, now: DateTime<Utc>) -> Vec<String> {
        self.orphaned_backups
            .iter()
            .filter(|b| is_orphaned(b.started, Some(now), now, grace))
            .map(|b| {
                format!(
                    "{}: the incomplete backup {} (started {}, no manifest) was never finished; `pitr prune` removes it",
                    self.name,
                    b.dir,
                    b.started
                        .map(crate::restore::time::utc_seconds_text)
                        .unwrap_or_default()
                )
            })
            .collect()
    }
}

/// Computes the status of every source (or only `only`).
pub async fn repo_status(repo: &Repo, only: Option<&str>) -> anyhow::Result<RepoStatus> {
    let mut sources = list_sources(repo).await?;
    if let Some(name) = only {
        sources.retain(|s| s.as_str() == name);
        if sources.is_empty() {
            anyhow::bail!("the repository {repo} has no source named {name:?}");
        }
    }
    let mut out = Vec::with_capacity(sources.len());
    for s in &sources {
        out.push(source_status(repo, s, Utc::now()).await?);
    }
    Ok(RepoStatus { sources: out })
}

/// Computes the status of one source as of `now`.
pub async fn source_status(
    repo: &Repo,
    source: &SourceName,
    now: DateTime<Utc>,
) -> anyhow::Result<SourceStatus> {
    let identity = read_identity(repo, source)
        .await?
        .ok_or_else(|| anyhow::anyhow!("{source}/source.json is missing"))?;
    let catalog = Catalog::load(repo, source).await?;
    let writer_lease = read_lease(repo, source)
        .await?
        .map(|l| LeaseStatus::of(&l, now));
    let fenced = catalog
        .fenced()
        .iter()
        .map(|f| FencedStatus {
            key: f.key(),
            generation: f.generation(),
            fenced_by_generation: f.by.generation,
        })
        .collect();
    let backups = list_backups(repo, source, catalog.backups()).await?;
    let stats = catalog.stats();

    let mut gaps = Vec::new();
    for e in catalog.epochs() {
        let Some(ec) = catalog.epoch(e) else { continue };
        for g in ec.gaps() {
            let reason = match read_gap(repo, g).await {
                Ok(r) => r.reason,
                Err(err) => format!("gap record unreadable: {err}"),
            };
            gaps.push((e, g.start, g.end, reason, true));
        }
        for (start, end) in holes(ec) {
            gaps.push((
                e,
                start,
                end,
                "segments missing and no gap record explains it".to_string(),
                false,
            ));
        }
    }
    let first_backup = backups.iter().map(|b| (b.epoch, b.key.start)).min();
    let gaps = gaps
        .into_iter()
        .map(|(e, start, end, reason, recorded)| GapStatus {
            epoch: e.to_hex(),
            start: start.to_hex(),
            end: end.to_hex(),
            reason,
            recorded,
            inside_window: first_backup.is_some_and(|(be, bs)| e > be || (e == be && end > bs)),
        })
        .collect();

    let (mut tmin, mut tmax): (Option<i64>, Option<i64>) = (None, None);
    let mut newest: Option<(Epoch, &crate::archive::catalog::SegmentEntry)> = None;
    for e in catalog.epochs() {
        let Some(ec) = catalog.epoch(e) else { continue };
        for s in ec.segments() {
            if let Some(t) = s.key.tmin {
                tmin = Some(tmin.map_or(t.0, |m| m.min(t.0)));
            }
            if let Some(t) = s.key.tmax {
                tmax = Some(tmax.map_or(t.0, |m| m.max(t.0)));
            }
        }
        if let Some(last) = ec.segments().last() {
            newest = Some((e, last));
        }
    }
    let log_coverage = match (tmin, tmax) {
        (Some(a), Some(b)) => Some(Window {
            start: to_datetime(TimestampMicros(a)),
            end: to_datetime(TimestampMicros(b)),
        }),
        _ => None,
    };
    let last_commit = tmax.map(|t| to_datetime(TimestampMicros(t)));
    let last_segment_stored_at = match newest {
        Some((_, s)) => repo
            .head(&s.key.to_key())
            .await
            .ok()
            .map(|m| m.last_modified),
        None => None,
    };
    let lag_seconds = last_commit.map(|t| (now - t).num_milliseconds() as f64 / 1000.0);

    let orphaned_backups = orphaned_backups(repo, &catalog, now, Duration::ZERO).await?;
    let (window, note) = recoverable_window(&catalog, &backups);
    let base_backups = backups.len();
    let newest_backup = backups.last().map(|b| BackupSummary {
        id: b.key.id.clone(),
        start_time: b.start_time,
        stop_time: b.stop_time,
        stored_bytes: b.stored_bytes,
    });
    Ok(SourceStatus {
        name: source.to_string(),
        engine: identity.engine.name().to_string(),
        system_id: identity.system_id,
        window,
        log_coverage,
        base_backups,
        newest_backup,
        gaps,
        segments: stats.segments,
        bytes: stats.bytes,
        epochs: stats.epochs,
        last_commit,
        last_segment_stored_at,
        lag_seconds,
        note,
        writer_lease,
        fenced,
        divergent_segments: stats.conflicting_segments,
        orphaned_backups,
    })
}

/// Holes between the chain's contiguous runs that no gap record covers.
fn holes(ec: &EpochCatalog) -> Vec<(LogPos, LogPos)> {
    let runs = ec.runs();
    let mut out = Vec::new();
    for w in runs.windows(2) {
        let (mut from, to) = (w[0].1, w[1].0);
        // Gap records may cover the hole partly or wholly.
        for g in ec.gaps() {
            if g.start <= from && g.end > from {
                from = g.end;
            }
        }
        if from < to {
            out.push((from, to));
        }
    }
    out
}

/// How far the log reaches from `(epoch, pos)` without a hole: the end
/// position and epoch reached and the newest commit time on the way.
fn reach(catalog: &Catalog, epoch: Epoch, pos: LogPos) -> Option<(Epoch, LogPos, Option<i64>)> {
    let ec = catalog.epoch(epoch)?;
    let chain = ec.segments();
    let mut i = chain.partition_point(|s| s.key.end <= pos);
    let first = chain.get(i)?;
    if first.key.start > pos {
        return None;
    }
    let (mut ep, mut end, mut tmax) = (epoch, first.key.end, first.key.tmax.map(|t| t.0));
    loop {
        let chain = catalog.epoch(ep).map(|c| c.segments()).unwrap_or_default();
        i += 1;
        while let Some(s) = chain.get(i).filter(|s| s.key.start == end) {
            end = s.key.end;
            tmax = max_opt(tmax, s.key.tmax.map(|t| t.0));
            i += 1;
        }
        // Continue on the next epoch when it starts at or before this point.
        let next = catalog.epochs().into_iter().find(|e| *e > ep);
        let Some(next) = next else { break };
        let Some(nfirst) = catalog.epoch(next).and_then(|c| c.segments().first()) else {
            break;
        };
        if nfirst.key.start > end {
            break;
        }
        ep = next;
        end = nfirst.key.end;
        tmax = max_opt(tmax, nfirst.key.tmax.map(|t| t.0));
        i = 0;
    }
    Some((ep, end, tmax))
}

fn max_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// The recoverable window from the backups and the log (see module docs).
pub fn recoverable_window(
    catalog: &Catalog,
    backups: &[engine::BackupSummary],
) -> (Option<Window>, Option<String>) {
    if backups.is_empty() {
        return (
            None,
            Some("no base backup: nothing is restorable until one is taken (pitr backup)".into()),
        );
    }
    let mut start: Option<DateTime<Utc>> = None;
    let mut end: Option<DateTime<Utc>> = None;
    for b in backups {
        let Some((rep, rend, rt)) = reach(catalog, b.epoch, b.log_start) else {
            continue;
        };
        if rep == b.epoch && rend < b.consistent_at {
            continue; // the backup's own log is not archived (yet)
        }
        let begin = b.consistent_time;
        let reach_end = rt
            .map(|t| to_datetime(TimestampMicros(t)))
            .unwrap_or(begin)
            .max(begin);
        start = Some(start.map_or(begin, |s| s.min(begin)));
        end = Some(end.map_or(reach_end, |e| e.max(reach_end)));
    }
    match (start, end) {
        (Some(start), Some(end)) => (Some(Window { start, end }), None),
        _ => (
            None,
            Some(format!(
                "{} base backup(s), but none has its log archived up to the point where it is consistent",
                backups.len()
            )),
        ),
    }
}
