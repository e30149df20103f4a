//! The MySQL/MariaDB restore plan: a pure function of the catalog's
//! resolved segment chain (epoch 1), its gap records, the complete backups
//! and the target. Printable with `--dry-run`.
//!
//! * Backup: the newest one not after the target — snapshot time ≤ a time
//!   target; coordinates ≤ a position target; for a GTID target, one whose
//!   GTID state does not go beyond the target in any domain (MariaDB) or
//!   source uuid (MySQL); the newest for `--latest`.
//! * Log: the archived segments from the start of the backup's binlog file
//!   (its FORMAT_DESCRIPTION event is needed to apply row events; when that
//!   part of the file is not archived, from the segment holding the backup's
//!   coordinates plus the file's first segment) up to the segment holding
//!   the first commit after a time target / reaching a position target, or
//!   to the end of the contiguous archive (`--latest`, GTID targets).
//! * Continuity across binlog files: a segment starting at offset 4 of the
//!   next file continues a segment ending its file (the replay checks that
//!   the file really ended with a ROTATE event). Any other hole, or a
//!   recorded gap, refuses the plan.
//! * A quiet server: when the contiguous archive ends exactly at the
//!   backup's coordinates (nothing written since), the plan is the backup
//!   alone (no segments) for `--latest`, its own coordinates or its snapshot
//!   time; any later target is beyond the archive.
//! * Window: refused when the target is before the oldest backup or after
//!   the last archived commit / position, with the window in the message.

use pitr_mysql::{BinlogPos, MariaGtidPos, MysqlGtidSet};
use pitr_segment::{LogPos, TimestampMicros};
use serde::Serialize;

use crate::archive::catalog::SegmentEntry;
use crate::archive::keys::{BackupKey, GapKey, SegmentKey};
use crate::backup::mysql::manifest::MysqlManifest;
use crate::restore::time::{from_micros, utc_text};

/// Where to stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MysqlTarget {
    /// Every transaction committed at or before this time, none after.
    Time(TimestampMicros),
    /// Up to and including the transactions with these GTIDs.
    MariaGtid(MariaGtidPos),
    MysqlGtid(MysqlGtidSet),
    /// Every transaction ending at or before this position.
    Position(BinlogPos),
    /// Everything archived.
    Latest,
}

impl std::fmt::Display for MysqlTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MysqlTarget::Time(t) => write!(f, "time {}", utc_text(from_micros(*t))),
            MysqlTarget::MariaGtid(g) => write!(f, "GTID {g}"),
            MysqlTarget::MysqlGtid(g) => write!(f, "GTID set {g}"),
            MysqlTarget::Position(p) => write!(f, "position {p}"),
            MysqlTarget::Latest => f.write_str("the end of the archive"),
        }
    }
}

/// A restore plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MysqlPlan {
    pub target: String,
    pub backup_dir: String,
    pub backup_id: String,
    /// The backup's coordinates: replay starts after them.
    pub backup_position: String,
    pub backup_gtid: String,
    pub backup_snapshot_time: String,
    #[serde(skip)]
    pub backup_start: LogPos,
    /// Segment keys in log order.
    pub segments: Vec<String>,
    /// When the chain does not start at offset 4 of the backup's file: the
    /// file's first segment, read only for its FORMAT_DESCRIPTION event.
    pub fde_segment: Option<String>,
    /// End of the log the plan reads.
    pub log_end: String,
    pub bytes: u64,
}

use crate::restore::plan_error::LogWords;
pub use crate::restore::plan_error::PlanError;

/// How the binlog is named in a plan's errors.
const WORDS: LogWords = LogWords {
    subject: "binlog positions",
    verb: "are",
    pos: pos_text,
    gap_cause: "purged before they were archived",
    epoch_word: None,
};

fn pos_text(p: LogPos) -> String {
    format!("{}:{}", p.hi, p.lo)
}

fn time_text(us: i64) -> String {
    utc_text(from_micros(TimestampMicros(us)))
}

/// The backup's GTID state does not go beyond the target.
fn gtid_eligible(m: &MysqlManifest, target: &MysqlTarget) -> bool {
    match target {
        MysqlTarget::MariaGtid(t) => {
            let Ok(b) = m.gtid.parse::<MariaGtidPos>() else {
                return false;
            };
            let ok = b
                .gtids()
                .all(|g| t.get(g.domain).is_none_or(|tg| g.seq <= tg.seq));
            ok
        }
        MysqlTarget::MysqlGtid(t) => {
            let Ok(b) = m.gtid.parse::<MysqlGtidSet>() else {
                return false;
            };
            let mut relevant = MysqlGtidSet::new();
            for (sid, ivs) in b.iter() {
                if t.iter().any(|(s, _)| s == sid) {
                    for (a, z) in ivs {
                        relevant.add_interval(*sid, *a, *z);
                    }
                }
            }
            relevant.is_subset(t)
        }
        _ => true,
    }
}

/// Chooses the backup for `target` (newest eligible).
pub fn choose_backup<'a>(
    backups: &'a [(BackupKey, MysqlManifest)],
    target: &MysqlTarget,
) -> Result<&'a (BackupKey, MysqlManifest), PlanError> {
    if backups.is_empty() {
        return Err(PlanError(
            "the repository holds no complete MySQL/MariaDB base backup for this source; run `pitr backup` first".into(),
        ));
    }
    let eligible = |(k, m): &&(BackupKey, MysqlManifest)| match target {
        MysqlTarget::Time(t) => m.snapshot_time_us <= t.0,
        MysqlTarget::Position(p) => p.to_log_pos().is_some_and(|p| k.start <= p),
        MysqlTarget::MariaGtid(_) | MysqlTarget::MysqlGtid(_) => gtid_eligible(m, target),
        MysqlTarget::Latest => true,
    };
    backups
        .iter()
        .filter(eligible)
        .max_by_key(|(k, m)| (k.start, m.snapshot_time_us))
        .ok_or_else(|| {
            let oldest = backups
                .iter()
                .min_by_key(|(k, _)| k.start)
                .map(|(_, m)| {
                    format!(
                        "{} at {}:{} (GTID {})",
                        time_text(m.snapshot_time_us),
                        m.binlog_file,
                        m.binlog_pos,
                        m.gtid
                    )
                })
                .unwrap_or_default();
            PlanError(format!(
                "{target} is before the oldest base backup, taken {oldest}; no restore can reach it"
            ))
        })
}

fn contiguous(prev_end: LogPos, next_start: LogPos) -> bool {
    // Rotations are bridged by an empty segment (see docs/mysql-archiving.md),
    // so continuity is exact equality: a missing file tail stays a hole.
    next_start == prev_end
}

fn hole_error(gaps: &[GapKey], from: LogPos, to: LogPos) -> PlanError {
    crate::restore::plan_error::hole_error(&WORDS, gaps, from, to)
}

/// The full plan.
pub fn plan_mysql(
    chain: &[SegmentEntry],
    gaps: &[GapKey],
    backups: &[(BackupKey, MysqlManifest)],
    target: &MysqlTarget,
) -> Result<MysqlPlan, PlanError> {
    let (bk, m) = choose_backup(backups, target)?;
    let start = bk.start;
    let file_start = LogPos::new(start.hi, 4);
    // The segment holding the backup's coordinates (or starting right at them).
    let first = chain.partition_point(|s| s.key.end <= start);
    // The contiguous archive ends exactly at the backup's coordinates (a
    // quiet server: nothing was written since the backup, or not yet
    // archived): the backup itself is the newest state there is.
    let ends_at_backup = first > 0
        && chain[first - 1].key.end == start
        && chain.get(first).is_none_or(|s| s.key.start > start);
    if ends_at_backup {
        return backup_only_plan(bk, m, target, gaps, chain.get(first));
    }
    let seg0 = chain
        .get(first)
        .filter(|s| s.key.start <= start)
        .ok_or_else(|| {
            let next = chain.get(first).map(|s| s.key.start).unwrap_or(LogPos::MAX);
            if chain.is_empty() {
                PlanError(
                    "the archive holds no binlog segments; run `pitr archive` for this source"
                        .into(),
                )
            } else {
                hole_error(gaps, start, next.min(LogPos::new(start.hi + 1, 0)))
            }
        })?;
    debug_assert!(seg0.key.start <= start);
    // Start from the file's first segment when it is contiguous with the backup's.
    let mut i0 = first;
    while i0 > 0
        && chain[i0 - 1].key.end == chain[i0].key.start
        && chain[i0 - 1].key.start >= file_start
    {
        i0 -= 1;
    }
    let fde_segment = if chain[i0].key.start == file_start {
        None
    } else {
        Some(
            chain
                .iter()
                .find(|s| s.key.start == file_start)
                .map(|s| s.key.to_key())
                .ok_or_else(|| {
                    PlanError(format!(
                        "the start of binlog file {} is not archived; its FORMAT_DESCRIPTION event is needed to apply row events",
                        m.binlog_file
                    ))
                })?,
        )
    };
    // Walk forward.
    let mut keys: Vec<&SegmentKey> = Vec::new();
    let mut bytes = 0u64;
    let mut i = i0;
    let mut last_commit: Option<i64> = None;
    loop {
        let s = &chain[i];
        keys.push(&s.key);
        bytes += s.size;
        if let Some(t) = s.key.tmax {
            last_commit = Some(last_commit.map_or(t.0, |l: i64| l.max(t.0)));
        }
        let done = match target {
            MysqlTarget::Time(t) => i >= first && s.key.tmax.is_some_and(|m| m.0 > t.0),
            MysqlTarget::Position(p) => p.to_log_pos().is_some_and(|p| s.key.end >= p),
            _ => false,
        };
        if done {
            break;
        }
        match chain.get(i + 1) {
            Some(n) if contiguous(s.key.end, n.key.start) => i += 1,
            next => {
                // End of the contiguous archive.
                let end = s.key.end;
                match target {
                    MysqlTarget::Time(t) => {
                        let hi = last_commit.unwrap_or(i64::MIN).max(m.snapshot_time_us);
                        if t.0 > hi {
                            // MariaDB's commit times are whole seconds: a target inside the
                            // last archived second may well be covered, but cannot be shown to.
                            let same_second = m.engine == "mariadb"
                                && t.0 < (hi.div_euclid(1_000_000) + 1) * 1_000_000;
                            return Err(PlanError(format!(
                                "{target} is after the last archived commit: the recoverable window from backup {} is {} .. {}{}{}",
                                bk.id,
                                time_text(m.snapshot_time_us),
                                time_text(hi),
                                next.map(|n| format!(
                                    " (then {})",
                                    hole_error(gaps, end, n.key.start).0
                                ))
                                .unwrap_or_default(),
                                if same_second {
                                    "; MariaDB records commit times in whole seconds, so a target inside the last archived second cannot be checked: use --to-gtid, --to-position or --latest"
                                } else {
                                    ""
                                }
                            )));
                        }
                    }
                    MysqlTarget::Position(_) => {
                        return Err(PlanError(format!(
                            "{target} is beyond the archived binlog: the recoverable positions from backup {} are {}:{} .. {}{}",
                            bk.id,
                            m.binlog_file,
                            m.binlog_pos,
                            pos_text(end),
                            next.map(|n| format!(" (then {})", hole_error(gaps, end, n.key.start).0))
                                .unwrap_or_default()
                        )));
                    }
                    _ => {}
                }
                break;
            }
        }
    }
    // A position target before the backup itself.
    if let MysqlTarget::Position(p) = target {
        if p.to_log_pos().is_some_and(|p| p < start) {
            return Err(PlanError(format!(
                "{target} is before the chosen backup's coordinates {}:{}",
                m.binlog_file, m.binlog_pos
            )));
        }
    }
    let log_end = keys.last().map(|k| pos_text(k.end)).unwrap_or_default();
    let mut p = backup_plan(bk, m, target);
    p.segments = keys.iter().map(|k| k.to_key()).collect();
    p.fde_segment = fde_segment;
    p.log_end = log_end;
    p.bytes = bytes;
    Ok(p)
}

/// The plan of `bk` for `target` with no log yet.
fn backup_plan(bk: &BackupKey, m: &MysqlManifest, target: &MysqlTarget) -> MysqlPlan {
    MysqlPlan {
        target: target.to_string(),
        backup_dir: bk.dir(),
        backup_id: bk.id.clone(),
        backup_position: format!("{}:{}", m.binlog_file, m.binlog_pos),
        backup_gtid: m.gtid.clone(),
        backup_snapshot_time: time_text(m.snapshot_time_us),
        backup_start: bk.start,
        segments: Vec::new(),
        fde_segment: None,
        log_end: pos_text(bk.start),
        bytes: 0,
    }
}

/// The plan when the archive ends at the backup's coordinates: the backup
/// alone, no log; only a target the backup itself reaches is served.
fn backup_only_plan(
    bk: &BackupKey,
    m: &MysqlManifest,
    target: &MysqlTarget,
    gaps: &[GapKey],
    after_hole: Option<&SegmentEntry>,
) -> Result<MysqlPlan, PlanError> {
    let start = bk.start;
    let then = || {
        after_hole
            .map(|n| format!(" (then {})", hole_error(gaps, start, n.key.start).0))
            .unwrap_or_default()
    };
    match target {
        MysqlTarget::Time(t) if t.0 > m.snapshot_time_us => {
            return Err(PlanError(format!(
                "{target} is after the last archived commit: the archive ends at backup {}, so the recoverable window is {} .. {}{}",
                bk.id,
                time_text(m.snapshot_time_us),
                time_text(m.snapshot_time_us),
                then()
            )));
        }
        MysqlTarget::Position(p) if p.to_log_pos().is_some_and(|p| p != start) => {
            return Err(PlanError(format!(
                "{target} is beyond the archived binlog: the archive ends at backup {}'s coordinates {}:{}{}",
                bk.id,
                m.binlog_file,
                m.binlog_pos,
                then()
            )));
        }
        _ => {}
    }
    Ok(backup_plan(bk, m, target))
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
