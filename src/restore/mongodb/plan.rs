//! The MongoDB restore plan: a pure function of the catalog's resolved
//! segment chains (every term), its gap records, the complete backups and
//! the target. Printable with `--dry-run`.
//!
//! * Oplog positions are `ts` (`LogPos {hi: 0, lo: secs << 32 | inc}`) and
//!   run on across terms: the first segment of a new term starts where the
//!   previous term's last segment ended (see the segmenter's chaining rule
//!   in `pitr_mongodb::segmenter`). [`oplog_chain`] therefore merges the
//!   chains of all terms into one, by position.
//! * Backup: the newest one whose consistent point is not after the target
//!   — `end_wall <= TIME`, `end <= TS`; the newest for `--latest`.
//! * Log: from the segment holding the backup's `start` (entries after it are
//!   applied), contiguous, up to the segment holding the target (time: the
//!   first segment with an entry after the target time; ts: the segment
//!   covering the target position; latest: the end of the contiguous
//!   archive). It must reach past the backup's `end` (the data is
//!   consistent only from there).
//! * Refused, in one sentence each: no backup at or before the target (the
//!   oldest consistent point is named), a target after the last archived
//!   entry (the window is named), a hole or a recorded gap between the
//!   backup's `start` and the target.

use pitr_mongodb::OplogTs;
use pitr_segment::{LogPos, TimestampMicros};
use serde::Serialize;

use crate::archive::catalog::SegmentEntry;
use crate::archive::keys::{BackupKey, GapKey};
pub use crate::archive::oplog_chain::{covers, oplog_chain};
use crate::backup::mongodb::manifest::MongoManifest;
use crate::restore::time::{from_micros, utc_text};

/// Where to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MongoTarget {
    /// Every entry whose `wall` is at or before this instant (entries are
    /// read in `ts` order; the first one after it ends the restore).
    Time(TimestampMicros),
    /// Every entry with `ts <= target`, none after.
    Ts(OplogTs),
    /// Everything archived.
    Latest,
}

impl std::fmt::Display for MongoTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MongoTarget::Time(t) => write!(f, "time {}", utc_text(from_micros(*t))),
            MongoTarget::Ts(ts) => write!(f, "oplog ts {}:{}", ts.secs, ts.inc),
            MongoTarget::Latest => f.write_str("the end of the archive"),
        }
    }
}

/// A restore plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MongoPlan {
    pub target: String,
    pub backup_dir: String,
    pub backup_id: String,
    /// Entries after this `ts` are applied (`secs:inc`).
    pub backup_start: String,
    /// The data is consistent once entries up to here are applied.
    pub backup_end: String,
    pub backup_end_wall: String,
    #[serde(skip)]
    pub start_ts: OplogTs,
    #[serde(skip)]
    pub end_ts: OplogTs,
    /// The last `ts` to apply for `--to-ts` and `--latest` (the last
    /// archived entry); `None` for a time target (decided by `wall`).
    #[serde(skip)]
    pub stop_ts: Option<OplogTs>,
    /// Segment keys in log order, across terms.
    pub segments: Vec<String>,
    /// Terms the segments belong to, in order of first use.
    pub terms: Vec<u64>,
    /// Exclusive end of the log the plan reads (`secs:inc` of the position).
    pub log_end: String,
    pub bytes: u64,
}

use crate::restore::plan_error::LogWords;
pub use crate::restore::plan_error::PlanError;

/// How the oplog is named in a plan's errors.
const WORDS: LogWords = LogWords {
    subject: "oplog",
    verb: "is",
    pos: pos_text,
    gap_cause: "the oplog rolled over before it was archived",
    epoch_word: Some("term"),
};

/// `secs:inc` of an oplog timestamp.
pub fn ts_text(ts: OplogTs) -> String {
    format!("{}:{}", ts.secs, ts.inc)
}

fn pos_text(p: LogPos) -> String {
    match OplogTs::from_log_pos(p) {
        Some(ts) => ts_text(ts),
        None => format!("{}/{}", p.hi, p.lo),
    }
}

fn time_text(us: i64) -> String {
    utc_text(from_micros(TimestampMicros(us)))
}

fn hole_error(gaps: &[GapKey], from: LogPos, to: LogPos) -> PlanError {
    crate::restore::plan_error::hole_error(&WORDS, gaps, from, to)
}

/// Chooses the backup for `target`: the newest whose consistent point is
/// not after it.
pub fn choose_backup<'a>(
    backups: &'a [(BackupKey, MongoManifest)],
    target: &MongoTarget,
) -> Result<&'a (BackupKey, MongoManifest), PlanError> {
    if backups.is_empty() {
        return Err(PlanError(
            "the repository holds no complete MongoDB base backup for this source; run `pitr backup mongodb://...` first".into(),
        ));
    }
    let eligible = |(_, m): &&(BackupKey, MongoManifest)| match target {
        MongoTarget::Time(t) => m.end_wall.timestamp_micros() <= t.0,
        MongoTarget::Ts(ts) => OplogTs::from(m.end) <= *ts,
        MongoTarget::Latest => true,
    };
    backups
        .iter()
        .filter(eligible)
        .max_by_key(|(k, m)| (m.end, k.start, m.end_wall))
        .ok_or_else(|| {
            let oldest = backups
                .iter()
                .min_by_key(|(_, m)| m.end)
                .map(|(k, m)| {
                    format!(
                        "backup {} is consistent at {} (oplog ts {})",
                        k.id,
                        utc_text(m.end_wall),
                        ts_text(m.end.into())
                    )
                })
                .unwrap_or_default();
            PlanError(format!(
                "{target} is before the recoverable window: the oldest {oldest}; no restore can reach an earlier point"
            ))
        })
}

/// The full plan. `chain` is [`oplog_chain`] of every term; `gaps` the
/// gap records of every term.
pub fn plan_mongo(
    chain: &[SegmentEntry],
    gaps: &[GapKey],
    backups: &[(BackupKey, MongoManifest)],
    target: &MongoTarget,
) -> Result<MongoPlan, PlanError> {
    let (bk, m) = choose_backup(backups, target)?;
    let start_ts: OplogTs = m.start.into();
    let end_ts: OplogTs = m.end.into();
    let start = start_ts.to_log_pos();
    let first = chain.partition_point(|s| s.key.end <= start);
    match chain.get(first) {
        Some(s) if s.key.start <= start => {}
        next => {
            if chain.is_empty() {
                return Err(PlanError(
                    "the archive holds no oplog segments for this source; run `pitr archive mongodb://...` alongside backups".into(),
                ));
            }
            let to = next.map(|s| s.key.start).unwrap_or(end_ts.pos_after());
            return Err(hole_error(gaps, start, to));
        }
    }
    let goal: Option<LogPos> = match target {
        MongoTarget::Ts(ts) => Some(ts.pos_after()),
        _ => None,
    };
    let mut i = first;
    let mut keys = Vec::new();
    let mut terms: Vec<u64> = Vec::new();
    let mut bytes = 0u64;
    let mut last_time: Option<i64> = None;
    let window = |last_time: Option<i64>, end: LogPos| {
        format!(
            "the recoverable window from backup {} is {} .. {} (oplog ts {} .. {})",
            bk.id,
            utc_text(m.end_wall),
            last_time
                .map(time_text)
                .unwrap_or_else(|| utc_text(m.end_wall)),
            ts_text(end_ts),
            OplogTs::last_before(end)
                .map(ts_text)
                .unwrap_or_else(|| "?".into())
        )
    };
    loop {
        let s = &chain[i];
        keys.push(s.key.to_key());
        if terms.last() != Some(&s.key.epoch.0) {
            terms.push(s.key.epoch.0);
        }
        bytes += s.size;
        if let Some(t) = s.key.tmax {
            last_time = Some(last_time.map_or(t.0, |l| l.max(t.0)));
        }
        let past_end = s.key.end > end_ts.to_log_pos();
        let done = past_end
            && match target {
                MongoTarget::Time(t) => s.key.tmax.is_some_and(|m| m.0 > t.0),
                MongoTarget::Ts(_) => goal.is_some_and(|g| s.key.end >= g),
                MongoTarget::Latest => false,
            };
        if done {
            break;
        }
        match chain.get(i + 1) {
            Some(n) if n.key.start == s.key.end => i += 1,
            next => {
                let end = s.key.end;
                let then = next
                    .map(|n| format!(" (then {})", hole_error(gaps, end, n.key.start).0))
                    .unwrap_or_default();
                if !past_end {
                    let e = match next {
                        Some(n) => hole_error(gaps, end, n.key.start),
                        None => PlanError(format!(
                            "the oplog up to backup {}'s consistent point {} is not archived yet (the archive ends at {}); wait for the archiver, or choose another backup",
                            bk.id,
                            ts_text(end_ts),
                            pos_text(end)
                        )),
                    };
                    return Err(e);
                }
                match target {
                    MongoTarget::Time(t) => {
                        let hi = last_time.unwrap_or(i64::MIN);
                        if t.0 > hi {
                            return Err(PlanError(format!(
                                "{target} is after the last archived entry: {}{then}",
                                window(last_time, end)
                            )));
                        }
                    }
                    MongoTarget::Ts(_) => {
                        return Err(PlanError(format!(
                            "{target} is after the last archived entry: {}{then}",
                            window(last_time, end)
                        )));
                    }
                    MongoTarget::Latest => {}
                }
                break;
            }
        }
    }
    let log_end = chain[i].key.end;
    let stop_ts = match target {
        MongoTarget::Ts(ts) => Some(*ts),
        MongoTarget::Latest => OplogTs::last_before(log_end),
        MongoTarget::Time(_) => None,
    };
    Ok(MongoPlan {
        target: target.to_string(),
        backup_dir: bk.dir(),
        backup_id: bk.id.clone(),
        backup_start: ts_text(start_ts),
        backup_end: ts_text(end_ts),
        backup_end_wall: utc_text(m.end_wall),
        start_ts,
        end_ts,
        stop_ts,
        segments: keys,
        terms,
        log_end: pos_text(log_end),
        bytes,
    })
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
