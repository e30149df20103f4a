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
//! Only the backup's timeline is planned (the chain must be continuous on
//! it); a hole or recorded gap in the chain is refused, naming it.

use chrono::{DateTime, Utc};
use pitr_postgres::lsn::Lsn;
use pitr_segment::{Epoch, LogPos};
use serde::Serialize;

use crate::archive::catalog::{Catalog, CoverageError};
use crate::archive::keys::BackupKey;
use crate::backup::manifest::BackupManifest;
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

/// Plans a restore of `catalog`'s source to `target` from `backups`
/// (complete backups, any order).
pub fn plan(
    catalog: &Catalog,
    backups: &[(BackupKey, BackupManifest)],
    target: &Target,
) -> Result<Plan, PlanError> {
    let source = catalog.source().to_string();
    let mut sorted: Vec<&(BackupKey, BackupManifest)> = backups.iter().collect();
    sorted.sort_by_key(|(k, m)| (m.stop_lsn, m.stop_time, k.id.clone()));
    let Some(oldest) = sorted.iter().min_by_key(|(_, m)| m.stop_time) else {
        return Err(PlanError::NoBackup { name: source });
    };
    let tdesc = target.describe();
    // Newest commit archived on the timeline of the newest backup.
    let last_commit = |epoch: Epoch| {
        catalog
            .epoch(epoch)
            .and_then(|e| e.segments().iter().filter_map(|s| s.key.tmax).max())
            .map(from_micros)
    };
    let newest = sorted.last().map(|b| b.1.timeline).unwrap_or(1);
    let win_lo = Some(oldest.1.stop_time);
    let win_hi = last_commit(Epoch(u64::from(newest)));
    let outside = |w_hi: Option<DateTime<Utc>>| PlanError::OutsideWindow {
        target: tdesc.clone(),
        window: window_text(win_lo, w_hi),
    };
    let (chosen, to): (&(BackupKey, BackupManifest), Option<Lsn>) = match target {
        Target::Time(t) => {
            let b = sorted
                .iter()
                .rev()
                .filter(|(_, m)| m.stop_time <= *t)
                .max_by_key(|(_, m)| (m.stop_time, m.stop_lsn))
                .ok_or_else(|| outside(win_hi))?;
            let epoch = Epoch(u64::from(b.1.timeline));
            let after = catalog
                .first_commit_after(epoch, to_micros(*t))
                .ok_or_else(|| outside(last_commit(epoch)))?;
            (b, Some(Lsn(after.end.lo).max(b.1.stop_lsn)))
        }
        Target::Lsn(l) => {
            let b = sorted
                .iter()
                .rev()
                .find(|(_, m)| m.stop_lsn <= *l)
                .ok_or_else(|| PlanError::OutsideWindow {
                    target: tdesc.clone(),
                    window: format!(
                        "(the oldest backup is consistent from LSN {})",
                        sorted[0].1.stop_lsn
                    ),
                })?;
            (b, Some(Lsn(l.0 + 1)))
        }
        Target::Name(_) => (*oldest, None),
        Target::Latest => (sorted[sorted.len() - 1], None),
    };
    let (key, m) = chosen;
    let epoch = Epoch(u64::from(m.timeline));
    let to = match to {
        Some(l) => l,
        None => catalog
            .tail(epoch)
            .map(|p| Lsn(p.lo))
            .unwrap_or(m.stop_lsn)
            .max(m.stop_lsn),
    };
    if let Target::Lsn(l) = target {
        let tail = catalog.tail(epoch).map(|p| Lsn(p.lo)).unwrap_or(Lsn(0));
        if *l >= tail {
            return Err(PlanError::OutsideWindow {
                target: tdesc,
                window: format!("[{}, {tail}) of timeline {}", m.stop_lsn, m.timeline),
            });
        }
    }
    let segments = catalog
        .segments_covering(epoch, pos(m.start_lsn), pos(to))
        .map_err(|cause| PlanError::Chain {
            target: tdesc.clone(),
            cause,
        })?;
    Ok(Plan {
        source,
        target: tdesc,
        backup_dir: key.dir(),
        backup_id: key.id.clone(),
        backup_start_lsn: m.start_lsn.to_string(),
        backup_stop_lsn: m.stop_lsn.to_string(),
        backup_stop_time: m.stop_time,
        timeline: m.timeline,
        wal_from: m.start_lsn.to_string(),
        wal_to: to.to_string(),
        segments: segments.iter().map(|s| s.to_key()).collect(),
        window_start: win_lo,
        window_end: win_hi,
    })
}
