//! What every engine's restore does around its load and replay: pin the
//! planned base backup and log (`archive::pins`), so that `pitr prune` and
//! compaction in other processes delete none of it, and release the pin when
//! the restore ends.
//!
//! The pin names the backup directory and, per epoch, the span of the planned
//! segments `[first start, last end)`; a `--latest` restore leaves the last
//! epoch's span open (it reads whatever is archived after the plan was made).
//! Maintenance reads pins again before each batch of deletions, so a pin taken
//! while a prune runs stops that prune before it deletes more.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use pitr_segment::{Epoch, LogPos};

use crate::archive::keys::{BackupKey, SegmentKey, SourceName};
use crate::archive::pins::{self, Pin, PinGuard, PinRange};
use crate::storage::Repo;

/// Per epoch: the first start and the last end of the planned segments
/// (`segments` are keys, in log order), in epoch order.
pub fn epoch_spans(segments: &[String]) -> anyhow::Result<Vec<(Epoch, LogPos, LogPos)>> {
    let mut spans: BTreeMap<Epoch, (LogPos, LogPos)> = BTreeMap::new();
    for k in segments {
        let sk = SegmentKey::parse(k)?;
        let e = spans.entry(sk.epoch).or_insert((sk.start, sk.end));
        e.0 = e.0.min(sk.start);
        e.1 = e.1.max(sk.end);
    }
    Ok(spans.into_iter().map(|(e, (s, t))| (e, s, t)).collect())
}

/// The pin ranges of `segments`; with `open_ended` the last epoch's range
/// has no end (a `--latest` restore reads whatever is archived after it).
pub fn pin_ranges(segments: &[String], open_ended: bool) -> anyhow::Result<Vec<PinRange>> {
    let spans = epoch_spans(segments)?;
    let n = spans.len();
    Ok(spans
        .into_iter()
        .enumerate()
        .map(|(i, (e, s, t))| PinRange::new(e, s, (!(open_ended && i + 1 == n)).then_some(t)))
        .collect())
}

/// What a restore planned on, for its pin.
#[derive(Debug, Clone, Copy)]
pub struct Planned<'a> {
    pub source: &'a SourceName,
    /// What the restore restores to (for people reading the pin).
    pub target: &'a str,
    pub backup: &'a BackupKey,
    /// Segment keys in log order.
    pub segments: &'a [String],
    /// `--latest`: the last epoch's range stays open.
    pub open_ended: bool,
}

/// Pins what `planned` names for `ttl` (zero: the default), renewed until
/// released.
pub async fn pin(repo: &Repo, planned: Planned<'_>, ttl: Duration) -> anyhow::Result<PinGuard> {
    let ttl = if ttl.is_zero() {
        pins::DEFAULT_TTL
    } else {
        ttl
    };
    let ranges = pin_ranges(planned.segments, planned.open_ended)?;
    let pin = Pin::new(
        planned.source,
        planned.target,
        planned.backup,
        ranges,
        Utc::now(),
        ttl,
    );
    PinGuard::acquire(repo, pin, ttl).await
}

/// Releases a finished restore's pin (one that cannot be removed expires).
pub async fn release(guard: PinGuard) {
    if let Err(e) = guard.release().await {
        tracing::warn!("removing the restore pin: {e:#}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(epoch: u64, start: u64, end: u64) -> String {
        SegmentKey {
            source: SourceName::new("s").unwrap_or_else(|e| panic!("{e}")),
            epoch: Epoch(epoch),
            start: LogPos::from_lsn(start),
            end: LogPos::from_lsn(end),
            tmin: None,
            tmax: None,
            generation: 0,
        }
        .to_key()
    }

    #[test]
    fn spans_per_epoch_and_an_open_end_for_latest() {
        let segs = [key(1, 100, 200), key(1, 200, 300), key(2, 300, 400)];
        let closed = pin_ranges(&segs, false).unwrap_or_default();
        assert_eq!(
            closed,
            vec![
                PinRange::new(Epoch(1), LogPos::from_lsn(100), Some(LogPos::from_lsn(300))),
                PinRange::new(Epoch(2), LogPos::from_lsn(300), Some(LogPos::from_lsn(400))),
            ]
        );
        let open = pin_ranges(&segs, true).unwrap_or_default();
        assert_eq!(open[1].end, None);
        assert!(open[0].end.is_some());
        assert!(pin_ranges(&[], true).unwrap_or_default().is_empty());
    }
}
