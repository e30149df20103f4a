//! MongoDB's oplog across terms as one chain. Oplog positions (`ts`) run on across terms:
//! the first segment of a new term starts where the previous term's last segment ended (the
//! segmenter's chaining rule in `pitr_mongodb::segmenter`), so the chains the catalog
//! resolves per term are merged by position. Used by the restore plan and by a backup waiting
//! for its oplog to be archived.

use pitr_segment::LogPos;

use crate::archive::catalog::SegmentEntry;

/// The segments of every term merged into one chain by position: sorted by
/// start (the newer term first where two start at the same position); a
/// segment starting inside the chain built so far overlaps it (history
/// archived under two terms) and is left out, as the catalog leaves out
/// conflicting segments; a hole that leaves is refused by the plan.
pub fn oplog_chain(terms: &[Vec<SegmentEntry>]) -> Vec<SegmentEntry> {
    let mut all: Vec<&SegmentEntry> = terms.iter().flatten().collect();
    all.sort_by(|a, b| {
        (
            a.key.start,
            std::cmp::Reverse(a.key.epoch),
            std::cmp::Reverse(a.key.end),
        )
            .cmp(&(
                b.key.start,
                std::cmp::Reverse(b.key.epoch),
                std::cmp::Reverse(b.key.end),
            ))
    });
    let mut out: Vec<SegmentEntry> = Vec::new();
    for s in all {
        if out.last().is_none_or(|l| s.key.start >= l.key.end) {
            out.push(s.clone());
        }
    }
    out
}

/// True when `[from, to)` is covered by contiguous segments of `chain`.
pub fn covers(chain: &[SegmentEntry], from: LogPos, to: LogPos) -> bool {
    let i = chain.partition_point(|s| s.key.end <= from);
    let mut at = from;
    for s in &chain[i..] {
        if s.key.start > at {
            return false;
        }
        at = at.max(s.key.end);
        if at >= to {
            return true;
        }
    }
    at >= to
}
