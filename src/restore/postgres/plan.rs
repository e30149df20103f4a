//! The restore plan: a pure function of the catalog, the complete base
//! backups and the target.
//!
//! * Time target `T`: the newest backup that finished (`stop_time`) at or
//!   before `T`; WAL from its start up to the end of the first segment
//!   holding a commit after `T` (PostgreSQL must see that commit to stop).
//!   `T` must lie in the recoverable window `[oldest backup stop_time,
//!   newest archived commit)`.
//! * LSN target `X`: the newest backup with `stop_lsn <= X`; WAL up to `X`.
//! * Named restore point: restore points are not indexed, so the oldest
//!   backup and all WAL up to the tail.
//! * Latest: the newest backup and all WAL up to the tail.
//!
//! Timelines: the plan follows the path to the target timeline given by its
//! history file (`--timeline latest` = the newest archived timeline). A
//! backup on an ancestor timeline is usable when it was consistent before
//! that timeline's switch point; the WAL file holding a switch point is
//! taken from the newer timeline, as PostgreSQL does. The chain must be
//! continuous on every step; a hole or recorded gap is refused, naming it.

use chrono::{DateTime, Utc};
use pitr_postgres::lsn::Lsn;
use pitr_segment::{Epoch, LogPos};
use serde::Serialize;

use crate::archive::catalog::{Catalog, CoverageError};
use crate::archive::keys::BackupKey;
use crate::backup::postgres::manifest::BackupManifest;
use crate::restore::time::{from_micros, to_micros, utc_text};

/// What to restore to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Time(DateTime<Utc>),
    Lsn(Lsn),
    Name(String),
    Latest,
}

impl Target {
    pub fn describe(&self) -> String {
        match self {
            Target::Time(t) => format!("time {}", utc_text(*t)),
            Target::Lsn(l) => format!("LSN {l}"),
            Target::Name(n) => format!("restore point {n:?}"),
            Target::Latest => "the latest archived WAL".into(),
        }
    }
}

/// The chosen backup and WAL chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub source: String,
    pub target: String,
    pub backup_dir: String,
    pub backup_id: String,
    pub backup_start_lsn: String,
    pub backup_stop_lsn: String,
    pub backup_stop_time: DateTime<Utc>,
    pub timeline: u32,
    /// WAL needed: `[wal_from, wal_to)`.
    pub wal_from: String,
    pub wal_to: String,
    /// Segment object keys, in log order.
    pub segments: Vec<String>,
    /// Recoverable window of the timeline (UTC).
    pub window_start: Option<DateTime<Utc>>,
    pub window_end: Option<DateTime<Utc>>,
}

/// Why no plan exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("the repository holds no complete base backup of {name}; run `pitr backup` first")]
    NoBackup { name: String },
    #[error("{target} is outside the recoverable window {window}")]
    OutsideWindow { target: String, window: String },
    #[error("the WAL needed for {target} is not continuous: {cause}")]
    Chain {
        target: String,
        cause: CoverageError,
    },
}

fn window_text(lo: Option<DateTime<Utc>>, hi: Option<DateTime<Utc>>) -> String {
    match (lo, hi) {
        (Some(lo), Some(hi)) => format!("[{}, {}]", utc_text(lo), utc_text(hi)),
        (Some(lo), None) => format!("[{}, no commit archived yet]", utc_text(lo)),
        _ => "(empty)".into(),
    }
}

fn pos(l: Lsn) -> LogPos {
    LogPos::from_lsn(l.0)
}

/// One timeline of the path to the target timeline: `tli` holds the WAL
/// below `end` (its switch point; `Lsn(u64::MAX)` for the target timeline).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimelineStep {
    pub tli: u32,
    pub end: Lsn,
}

/// The path from the first timeline to `target_tli`, from the target
/// timeline's history file (`None` for timeline 1, which has none).
pub fn timeline_path(
    target_tli: u32,
    history: Option<&[pitr_postgres::lsn::HistoryEntry]>,
) -> Vec<TimelineStep> {
    let mut path: Vec<TimelineStep> = history
        .unwrap_or_default()
        .iter()
        .map(|h| TimelineStep {
            tli: h.tli.0,
            end: h.switch_lsn,
        })
        .collect();
    path.push(TimelineStep {
        tli: target_tli,
        end: Lsn(u64::MAX),
    });
    path
}

/// Plans a restore of `catalog`'s source to `target` from `backups`
/// (complete backups, any order), on the newest backup's timeline only.
pub fn plan(
    catalog: &Catalog,
    backups: &[(BackupKey, BackupManifest)],
    target: &Target,
) -> Result<Plan, PlanError> {
    let newest = backups
        .iter()
        .max_by_key(|(k, m)| (m.stop_lsn, m.stop_time, k.id.clone()))
        .map(|b| b.1.timeline)
        .unwrap_or(1);
    plan_on(catalog, backups, target, &timeline_path(newest, None))
}

/// Plans a restore along `path` (see [`timeline_path`]): the backup may lie
/// on any timeline of the path before that timeline's switch point; the WAL
/// chain follows the path, taking the WAL file holding each switch point
/// from the newer timeline, as PostgreSQL does.
pub fn plan_on(
    catalog: &Catalog,
    backups: &[(BackupKey, BackupManifest)],
    target: &Target,
    path: &[TimelineStep],
) -> Result<Plan, PlanError> {
    let source = catalog.source().to_string();
    if path.is_empty() {
        return Err(PlanError::NoBackup { name: source });
    }
    let step_of = |tli: u32| path.iter().position(|s| s.tli == tli);
    // Backups usable on this path: on a path timeline, consistent before its switch.
    let mut usable: Vec<(&(BackupKey, BackupManifest), usize)> = backups
        .iter()
        .filter_map(|b| {
            let i = step_of(b.1.timeline)?;
            (b.1.stop_lsn < path[i].end).then_some((b, i))
        })
        .collect();
    usable.sort_by_key(|((k, m), _)| (m.stop_lsn, m.stop_time, k.id.clone()));
    let Some(oldest) = usable.iter().min_by_key(|((_, m), _)| m.stop_time).copied() else {
        return Err(PlanError::NoBackup { name: source });
    };
    let tdesc = target.describe();
    // Start of the part of step `i` that PostgreSQL reads from its timeline.
    let seg_size = 16u64 << 20;
    let step_start = |i: usize| -> Lsn {
        if i == 0 {
            Lsn(0)
        } else {
            path[i - 1].end.segment_start(seg_size)
        }
    };
    let step_stop = |i: usize| -> Lsn {
        if i + 1 == path.len() {
            Lsn(u64::MAX)
        } else {
            path[i].end.segment_start(seg_size)
        }
    };
    // Newest commit archived along the path.
    let last_commit = (0..path.len()).rev().find_map(|i| {
        let e = catalog.epoch(Epoch(u64::from(path[i].tli)))?;
        e.segments()
            .iter()
            .filter(|s| s.key.start.lo < step_stop(i).0)
            .filter_map(|s| s.key.tmax)
            .max()
            .map(from_micros)
    });
    let win_lo = Some(oldest.0 .1.stop_time);
    let win_hi = last_commit;
    let outside = || PlanError::OutsideWindow {
        target: tdesc.clone(),
        window: window_text(win_lo, win_hi),
    };
    let tail_of = |i: usize| {
        catalog
            .tail(Epoch(u64::from(path[i].tli)))
            .map(|p| Lsn(p.lo))
    };
    // (backup, backup's step, last step, end of WAL needed on the last step)
    let (chosen, b_step, to_step, to): (&(BackupKey, BackupManifest), usize, usize, Lsn) =
        match target {
            Target::Time(t) => {
                let (b, bi) = usable
                    .iter()
                    .rev()
                    .filter(|((_, m), _)| m.stop_time <= *t)
                    .max_by_key(|((_, m), _)| (m.stop_time, m.stop_lsn))
                    .copied()
                    .ok_or_else(outside)?;
                // The first commit after T along the path from the backup on.
                let found = (bi..path.len()).find_map(|i| {
                    let s =
                        catalog.first_commit_after(Epoch(u64::from(path[i].tli)), to_micros(*t))?;
                    (s.start.lo < step_stop(i).0 && s.end.lo > step_start(i).0)
                        .then_some((i, Lsn(s.end.lo)))
                });
                let (i, end) = found.ok_or_else(outside)?;
                let end = if i == bi { end.max(b.1.stop_lsn) } else { end };
                (b, bi, i, end)
            }
            Target::Lsn(l) => {
                let (b, bi) = usable
                    .iter()
                    .rev()
                    .find(|((_, m), _)| m.stop_lsn <= *l)
                    .copied()
                    .ok_or_else(|| PlanError::OutsideWindow {
                        target: tdesc.clone(),
                        window: format!(
                            "(the oldest backup is consistent from LSN {})",
                            usable[0].0 .1.stop_lsn
                        ),
                    })?;
                let i = (bi..path.len())
                    .find(|&i| *l < path[i].end)
                    .unwrap_or(path.len() - 1);
                let tail = tail_of(i).unwrap_or(Lsn(0));
                if *l >= tail && i + 1 == path.len() {
                    return Err(PlanError::OutsideWindow {
                        target: tdesc,
                        window: format!("[{}, {tail}) of timeline {}", b.1.stop_lsn, path[i].tli),
                    });
                }
                (b, bi, i, Lsn(l.0 + 1))
            }
            Target::Name(_) => {
                let i = path.len() - 1;
                let to = tail_of(i).unwrap_or(oldest.0 .1.stop_lsn);
                (oldest.0, oldest.1, i, to.max(oldest.0 .1.stop_lsn))
            }
            Target::Latest => {
                let (b, bi) = usable[usable.len() - 1];
                let i = path.len() - 1;
                let to = tail_of(i).unwrap_or(b.1.stop_lsn);
                (b, bi, i, if i == bi { to.max(b.1.stop_lsn) } else { to })
            }
        };
    let (key, m) = chosen;
    let mut segments = Vec::new();
    for (i, step) in path.iter().enumerate().take(to_step + 1).skip(b_step) {
        let from = if i == b_step {
            m.start_lsn
        } else {
            step_start(i)
        };
        let until = if i == to_step { to } else { step_stop(i) };
        if from >= until {
            continue;
        }
        let epoch = Epoch(u64::from(step.tli));
        let chain = catalog
            .segments_covering(epoch, pos(from), pos(until))
            .map_err(|cause| PlanError::Chain {
                target: tdesc.clone(),
                cause,
            })?;
        segments.extend(chain.iter().map(|s| s.to_key()));
    }
    Ok(Plan {
        source,
        target: tdesc,
        backup_dir: key.dir(),
        backup_id: key.id.clone(),
        backup_start_lsn: m.start_lsn.to_string(),
        backup_stop_lsn: m.stop_lsn.to_string(),
        backup_stop_time: m.stop_time,
        timeline: path[to_step].tli,
        wal_from: m.start_lsn.to_string(),
        wal_to: to.to_string(),
        segments,
        window_start: win_lo,
        window_end: win_hi,
    })
}
