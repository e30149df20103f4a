//! Sans-IO segment builder for the oplog.
//!
//! [`Segmenter`] accumulates the exact bytes of consecutive oplog entries
//! (BSON documents back to back, the `oplog.bson` format) and seals them
//! into [`SealedOplogSegment`]s, cutting only where [`TxnTracker`] says no
//! transaction or linked batch is open.
//!
//! # Positions: how segments chain
//!
//! An entry's position is its `ts` ([`OplogTs::to_log_pos`]). Timestamps are
//! sparse (`(secs, inc)` jumps between entries), so "the ts of the next
//! entry" is not known when a segment is sealed, and a rule based on entry
//! timestamps alone (`[first_ts, last_ts + 1)`) would leave the space
//! between one segment's last entry and the next one's first entry
//! uncovered: a catalog treating `start > chain end` as a hole would see a
//! hole between every two segments. The rule used here instead:
//!
//! * a segment covers the half-open range `[start, end)` of oplog positions
//!   and holds EVERY entry of the oplog whose `ts` lies in that range;
//! * `end = last_ts + 1` ([`OplogTs::pos_after`]: the next increment) — known
//!   at seal time, no look-ahead needed, on a size/age cut and on a flush
//!   at shutdown alike;
//! * `start` = the previous segment's `end` (the builder continues from it);
//!   only the very first segment of an archive starts at its first entry's
//!   `ts` (or at the position the builder was created with).
//!
//! So `end == next.start` always holds exactly, and `first_ts >= start`
//! (equality only by chance). The claim "every entry in `[start, end)` is
//! here" is what the archiver guarantees by reading the oplog in order and
//! resuming after a restart at the last archived entry: the chain's end `E`
//! gives that entry as [`OplogTs::last_before`]`(E)`; the tailer queries
//! `ts >= last` and requires the first entry returned to be exactly `last`
//! (otherwise the oplog rolled over past it: a gap, recorded as such).
//!
//! # Epochs
//!
//! The epoch of a segment is the replica-set term `t` of its entries
//! (`0` for entries without `t`). The first entry of a new term forces a cut
//! BEFORE it, whatever the size, age or transaction state: a prepared
//! transaction that survives a failover is the one unit that can span two
//! segments (a restore reads entries across segments, so it still applies
//! it whole). The new term's first segment starts at the previous end.
//!
//! # Time index and records
//!
//! Each entry that completes a unit (see [`Role::ends_unit`]: a standalone
//! entry, a no-op included, a transaction's commit or abort, a linked batch)
//! is one record; its time is `wall` (ms → µs) or, without `wall`, `ts`
//! seconds. A segment's first/last commit times are the min/max of its
//! records' times.
//!
//! Bytes of an unfinished unit stay buffered after a cut;
//! [`Segmenter::discard_unsafe`] drops them (and the tracker's state about
//! them) when the connection fails, to be re-read from the resume point.

use std::time::{Duration, Instant};

use pitr_segment::{
    Codec, Engine, Epoch, LogPos, SealedSegment, SegmentError, SegmentHeader, TimestampMicros,
    WriterOptions,
};

use crate::entry::OplogEntryRef;
use crate::error::DecodeError;
use crate::txn::{Role, TxnTracker};
use crate::OplogTs;

/// A sealed stretch of oplog, ready to be written as a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedOplogSegment {
    /// The term of its entries.
    pub epoch: Epoch,
    /// Covered positions `[start, end)`; see the module docs.
    pub start: LogPos,
    pub end: LogPos,
    pub first_ts: OplogTs,
    pub last_ts: OplogTs,
    pub first_commit: Option<TimestampMicros>,
    pub last_commit: Option<TimestampMicros>,
    /// Units completed in the segment (see the module docs).
    pub records: u64,
    /// Entries in the segment.
    pub entries: u64,
    /// The entries' exact bytes, back to back.
    pub raw: Vec<u8>,
}

impl SealedOplogSegment {
    /// The engine-neutral stretch the archiver stores.
    pub fn into_sealed(self) -> SealedSegment {
        SealedSegment {
            epoch: self.epoch,
            start: self.start,
            end: self.end,
            first_commit: self.first_commit,
            last_commit: self.last_commit,
            records: self.records,
            raw: vec![bytes::Bytes::from(self.raw)],
        }
    }

    /// The segment object (pitr segment format) for source `source_id`.
    pub fn encode(
        &self,
        source_id: &str,
        codec: Codec,
        opts: WriterOptions,
    ) -> Result<Vec<u8>, SegmentError> {
        let header = SegmentHeader {
            engine: Engine::MongoDb,
            source_id: source_id.to_string(),
            epoch: self.epoch,
            start: self.start,
            codec,
            key_id: 0,
        };
        pitr_segment::encode(
            header,
            &self.raw,
            self.end,
            self.first_commit,
            self.last_commit,
            self.records,
            opts,
        )
    }
}

/// Statistics of a stretch of buffered entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Stats {
    first_ts: Option<OplogTs>,
    last_ts: Option<OplogTs>,
    tmin: Option<TimestampMicros>,
    tmax: Option<TimestampMicros>,
    records: u64,
    entries: u64,
}

impl Stats {
    fn merge(&mut self, o: Stats) {
        self.first_ts = self.first_ts.or(o.first_ts);
        self.last_ts = o.last_ts.or(self.last_ts);
        self.tmin = min_opt(self.tmin, o.tmin);
        self.tmax = match (self.tmax, o.tmax) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.records += o.records;
        self.entries += o.entries;
    }
}

fn min_opt(a: Option<TimestampMicros>, b: Option<TimestampMicros>) -> Option<TimestampMicros> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Builds segments from entries fed in oplog order; see the module docs.
#[derive(Debug)]
pub struct Segmenter {
    tracker: TxnTracker,
    /// The tracker as it was at the last safe point (restored by
    /// [`Segmenter::discard_unsafe`]).
    tracker_at_safe: TxnTracker,
    /// Start of the segment being built; `None` until the first entry of an
    /// archive that did not say where it starts.
    start: Option<LogPos>,
    epoch: Option<Epoch>,
    /// `ts` of the last entry pushed (order check).
    last_ts: Option<OplogTs>,
    data: Vec<u8>,
    /// `data[..safe_len]` ends at a safe boundary.
    safe_len: usize,
    safe: Stats,
    pending: Stats,
    /// When the oldest sealable byte arrived.
    opened: Option<Instant>,
}

impl Segmenter {
    /// A builder for a new archive: the first segment starts at its first
    /// entry's `ts`.
    pub fn new() -> Segmenter {
        Segmenter {
            tracker: TxnTracker::new(),
            tracker_at_safe: TxnTracker::new(),
            start: None,
            epoch: None,
            last_ts: None,
            data: Vec::new(),
            safe_len: 0,
            safe: Stats::default(),
            pending: Stats::default(),
            opened: None,
        }
    }

    /// A builder continuing a chain that ends at `end`: the next segment
    /// starts there. Entries fed must have `ts >= end`.
    pub fn resume_at(end: LogPos) -> Segmenter {
        Segmenter {
            start: Some(end),
            ..Segmenter::new()
        }
    }

    /// Where the next sealed segment starts (if known yet).
    pub fn start(&self) -> Option<LogPos> {
        self.start
    }

    /// The `ts` of the last entry in the sealable part, or `None`.
    pub fn safe_last_ts(&self) -> Option<OplogTs> {
        self.safe.last_ts
    }

    /// Bytes sealable now.
    pub fn safe_bytes(&self) -> usize {
        self.safe_len
    }

    /// Bytes buffered in all.
    pub fn buffered_bytes(&self) -> usize {
        self.data.len()
    }

    /// True while bytes of an unfinished unit are buffered.
    pub fn has_unsafe(&self) -> bool {
        self.data.len() > self.safe_len
    }

    /// Appends one entry. Returns the segment sealed because the entry
    /// starts a new term (everything buffered before it), if any.
    pub fn push(
        &mut self,
        e: &OplogEntryRef<'_>,
        now: Instant,
    ) -> Result<Option<SealedOplogSegment>, DecodeError> {
        let ts = e.ts();
        if let Some(last) = self.last_ts {
            if ts <= last {
                return Err(
                    DecodeError::new(format!("entries out of order: {ts} after {last}")).at_ts(ts),
                );
            }
        } else if let Some(start) = self.start {
            if ts.to_log_pos() < start {
                return Err(DecodeError::new(format!(
                    "entry is before the start of the segment chain ({start})"
                ))
                .at_ts(ts));
            }
        }
        let epoch = match e.term() {
            None => Epoch(0),
            Some(t) => Epoch(
                u64::try_from(t)
                    .map_err(|_| DecodeError::new(format!("negative term {t}")).at_ts(ts))?,
            ),
        };
        let mut sealed = None;
        if self.epoch.is_some_and(|cur| cur != epoch) && !self.data.is_empty() {
            // Everything buffered belongs to the old term.
            self.mark_safe(now);
            sealed = self.cut();
        }
        self.epoch = Some(epoch);
        if !self.tracker.splits_before(e) && self.data.len() > self.safe_len {
            self.mark_safe(now);
        }
        let role: Role = self.tracker.feed(e)?;
        self.data.extend_from_slice(e.raw_bytes());
        self.last_ts = Some(ts);
        let p = &mut self.pending;
        p.first_ts = p.first_ts.or(Some(ts));
        p.last_ts = Some(ts);
        p.entries += 1;
        if role.ends_unit() {
            let t = e.meta().time_micros();
            p.records += 1;
            p.tmin = min_opt(p.tmin, Some(t));
            p.tmax = Some(p.tmax.map_or(t, |m| m.max(t)));
        }
        if self.tracker.is_cut_safe() {
            self.mark_safe(now);
        }
        Ok(sealed)
    }

    fn mark_safe(&mut self, now: Instant) {
        self.safe_len = self.data.len();
        let p = std::mem::take(&mut self.pending);
        self.safe.merge(p);
        self.tracker_at_safe = self.tracker.clone();
        if self.opened.is_none() && self.safe_len > 0 {
            self.opened = Some(now);
        }
    }

    /// True when the sealable part reached `max_bytes` or is older than
    /// `max_age`.
    pub fn should_cut(&self, max_bytes: usize, max_age: Duration, now: Instant) -> bool {
        self.safe_len > 0
            && (self.safe_len >= max_bytes
                || self
                    .opened
                    .is_some_and(|t| now.saturating_duration_since(t) >= max_age))
    }

    /// Seals the sealable part; `None` when nothing is sealable. Bytes of an
    /// unfinished unit stay buffered.
    pub fn cut(&mut self) -> Option<SealedOplogSegment> {
        if self.safe_len == 0 {
            return None;
        }
        let s = std::mem::take(&mut self.safe);
        let (first_ts, last_ts) = (s.first_ts?, s.last_ts?);
        let rest = self.data.split_off(self.safe_len);
        let raw = std::mem::replace(&mut self.data, rest);
        let start = self.start.unwrap_or(first_ts.to_log_pos());
        let end = last_ts.pos_after();
        self.start = Some(end);
        self.safe_len = 0;
        self.opened = None;
        Some(SealedOplogSegment {
            epoch: self.epoch.unwrap_or_default(),
            start,
            end,
            first_ts,
            last_ts,
            first_commit: s.tmin,
            last_commit: s.tmax,
            records: s.records,
            entries: s.entries,
            raw,
        })
    }

    /// The input ended (a bounded source such as a file, not a live
    /// oplog): a pending chain of linked batches cannot continue, so the
    /// buffered bytes become sealable unless a transaction is still open.
    pub fn end_of_input(&mut self, now: Instant) {
        if self.tracker.open_transactions() == 0 {
            self.tracker = TxnTracker::new();
            self.mark_safe(now);
        }
    }

    /// Drops the bytes of an unfinished unit (after a connection failure);
    /// the stream must resume right after [`Segmenter::safe_last_ts`] (or
    /// the last sealed segment).
    pub fn discard_unsafe(&mut self) {
        self.data.truncate(self.safe_len);
        self.pending = Stats::default();
        self.tracker = self.tracker_at_safe.clone();
        self.last_ts = self
            .safe
            .last_ts
            .or_else(|| self.start.and_then(OplogTs::last_before));
    }
}

impl Default for Segmenter {
    fn default() -> Self {
        Segmenter::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, Document, RawDocumentBuf, Timestamp};

    fn raw(d: Document) -> RawDocumentBuf {
        RawDocumentBuf::from_document(&d).unwrap()
    }

    fn ins(secs: u32, i: u32, t: i64) -> RawDocumentBuf {
        raw(
            doc! {"op": "i", "ns": "a.b", "o": {"_id": i}, "ts": Timestamp{time: secs, increment: i}, "t": t,
            "wall": bson::DateTime::from_millis(i64::from(secs) * 1000 + 7)},
        )
    }

    fn partial(secs: u32, i: u32, prev: u32, last: bool) -> RawDocumentBuf {
        let mut o = doc! {"applyOps": [{"op": "i", "ns": "a.b", "o": {"_id": i}}]};
        if !last {
            o.insert("partialTxn", true);
        }
        raw(
            doc! {"lsid": {"id": 1}, "txnNumber": 1i64, "op": "c", "ns": "admin.$cmd", "o": o,
            "ts": Timestamp{time: secs, increment: i}, "t": 1i64,
            "prevOpTime": {"ts": Timestamp{time: if prev == 0 {0} else {secs}, increment: prev}, "t": 1i64}},
        )
    }

    fn push(s: &mut Segmenter, d: &RawDocumentBuf) -> Option<SealedOplogSegment> {
        s.push(&OplogEntryRef::parse(d).unwrap(), Instant::now())
            .unwrap()
    }

    #[test]
    fn segments_chain_exactly_and_never_split_a_transaction() {
        let mut s = Segmenter::new();
        push(&mut s, &ins(10, 1, 1));
        push(&mut s, &ins(10, 2, 1));
        push(&mut s, &partial(12, 1, 0, false));
        assert!(s.has_unsafe());
        let a = s.cut().unwrap();
        assert_eq!(a.start, OplogTs { secs: 10, inc: 1 }.to_log_pos());
        assert_eq!(a.end, OplogTs { secs: 10, inc: 3 }.to_log_pos());
        assert_eq!((a.records, a.entries), (2, 2));
        assert_eq!(a.first_commit, Some(TimestampMicros(10_007_000)));
        assert!(s.cut().is_none());
        push(&mut s, &partial(12, 2, 1, true));
        let b = s.cut().unwrap();
        assert_eq!(b.start, a.end);
        assert_eq!(b.end, OplogTs { secs: 12, inc: 3 }.to_log_pos());
        assert_eq!((b.records, b.entries), (1, 2));
        assert_eq!(b.first_ts, OplogTs { secs: 12, inc: 1 });
        // Time falls back to ts seconds without wall.
        assert_eq!(b.last_commit, Some(TimestampMicros(12_000_000)));
    }

    #[test]
    fn new_term_cuts_before_its_first_entry() {
        let mut s = Segmenter::resume_at(OplogTs { secs: 5, inc: 0 }.to_log_pos());
        assert!(push(&mut s, &ins(10, 1, 1)).is_none());
        let sealed = push(&mut s, &ins(11, 1, 2)).unwrap();
        assert_eq!(sealed.epoch, Epoch(1));
        assert_eq!(sealed.start, OplogTs { secs: 5, inc: 0 }.to_log_pos());
        let next = s.cut().unwrap();
        assert_eq!((next.epoch, next.start), (Epoch(2), sealed.end));
    }

    #[test]
    fn discard_unsafe_rewinds_the_tracker() {
        let mut s = Segmenter::new();
        push(&mut s, &ins(10, 1, 1));
        push(&mut s, &partial(12, 1, 0, false));
        s.discard_unsafe();
        assert!(!s.has_unsafe());
        // The transaction is re-read from its start after a reconnect.
        push(&mut s, &partial(12, 1, 0, false));
        push(&mut s, &partial(12, 2, 1, true));
        assert_eq!(s.cut().unwrap().entries, 3);
    }

    #[test]
    fn size_and_age_cuts_wait_for_a_safe_point() {
        let mut s = Segmenter::new();
        let t0 = Instant::now();
        assert!(!s.should_cut(1, Duration::ZERO, t0));
        s.push(
            &OplogEntryRef::parse(&partial(12, 1, 0, false)).unwrap(),
            t0,
        )
        .unwrap();
        assert!(!s.should_cut(1, Duration::ZERO, t0));
        s.push(&OplogEntryRef::parse(&partial(12, 2, 1, true)).unwrap(), t0)
            .unwrap();
        assert!(s.should_cut(1, Duration::from_secs(9), t0));
        assert!(!s.should_cut(1 << 20, Duration::from_secs(9), t0));
        assert!(s.should_cut(1 << 20, Duration::from_secs(9), t0 + Duration::from_secs(9)));
        let e = s
            .push(&OplogEntryRef::parse(&ins(12, 1, 1)).unwrap(), t0)
            .unwrap_err();
        assert!(e.reason.contains("out of order"));
    }
}
