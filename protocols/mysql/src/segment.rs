//! Cutting a MySQL/MariaDB binlog stream into segments.
//!
//! [`SegmentBuilder`] accumulates the exact bytes of consecutive binlog
//! events of ONE binlog file. Position layout (shared with backup/restore):
//! `LogPos{hi: binlog file sequence number, lo: byte offset in that file}`;
//! a segment holds the events `[start, end)` of one file, the binlog magic
//! is never stored, and the first segment of a file starts at offset 4 with
//! the file's FORMAT_DESCRIPTION event.
//!
//! The builder tracks the last *safe* cut point: the end of the last event
//! after which no transaction (event group) is open. Only the bytes up to it
//! are ever sealed, so a segment never splits a transaction; the bytes of an
//! open transaction stay in the builder (and are dropped, to be re-read, when
//! the connection fails). Commit times of the transactions ending in a
//! segment give its first/last commit time and its record count.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use pitr_segment::{Epoch, LogPos, SealedSegment, TimestampMicros};

/// Offset of the first event of every binlog file (after the magic).
pub const FIRST_EVENT_OFFSET: u64 = 4;

/// Epoch of every MySQL/MariaDB segment (reserved for lineage changes).
pub const MYSQL_EPOCH: Epoch = Epoch(1);

/// Commit-time statistics of the transactions ending in a stretch of log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Commits {
    first: Option<TimestampMicros>,
    last: Option<TimestampMicros>,
    count: u64,
}

impl Commits {
    fn note(&mut self, t: TimestampMicros) {
        self.count += 1;
        self.first = Some(self.first.map_or(t, |f| f.min(t)));
        self.last = Some(self.last.map_or(t, |l| l.max(t)));
    }

    fn merge(&mut self, o: Commits) {
        self.count += o.count;
        self.first = match (self.first, o.first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last = match (self.last, o.last) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

/// A builder asked to move to another file while it holds bytes.
#[derive(Debug, thiserror::Error)]
#[error("internal error: moving to binlog file {to} with {bytes} unsealed bytes of file {from}")]
pub struct NotEmpty {
    pub to: u64,
    pub from: u64,
    pub bytes: usize,
}

/// Bytes of the segment being built; see the module docs.
#[derive(Debug)]
pub struct SegmentBuilder {
    /// Sequence number of the binlog file.
    seq: u64,
    /// Offset of the first buffered byte in that file.
    start: u64,
    data: BytesMut,
    /// `data[..safe_len]` ends at a transaction boundary.
    safe_len: usize,
    safe: Commits,
    /// Transactions that ended after the safe point (always empty in
    /// practice: a transaction end is itself a safe point).
    pending: Commits,
    /// When the oldest unsealed safe byte arrived.
    opened: Option<Instant>,
}

impl SegmentBuilder {
    /// An empty builder whose next event must start at `(seq, offset)`.
    pub fn new(seq: u64, offset: u64) -> SegmentBuilder {
        SegmentBuilder {
            seq,
            start: offset,
            data: BytesMut::new(),
            safe_len: 0,
            safe: Commits::default(),
            pending: Commits::default(),
            opened: None,
        }
    }

    /// `(file sequence, offset)` where the next event must start.
    pub fn expected(&self) -> (u64, u64) {
        (self.seq, self.start + self.data.len() as u64)
    }

    /// End of the sealable part: where a reconnect resumes.
    pub fn safe_end(&self) -> LogPos {
        LogPos::new(self.seq, self.start + self.safe_len as u64)
    }

    pub fn safe_bytes(&self) -> usize {
        self.safe_len
    }

    /// True while bytes of an unfinished transaction are buffered.
    pub fn has_unsafe(&self) -> bool {
        self.data.len() > self.safe_len
    }

    /// Appends one event. `commit`: the commit time when it ends a
    /// transaction; `safe`: no transaction is open after it.
    pub fn push(&mut self, event: &[u8], commit: Option<TimestampMicros>, safe: bool) {
        self.data.extend_from_slice(event);
        if let Some(t) = commit {
            self.pending.note(t);
        }
        if safe {
            self.safe_len = self.data.len();
            let p = std::mem::take(&mut self.pending);
            self.safe.merge(p);
            if self.opened.is_none() {
                self.opened = Some(Instant::now());
            }
        }
    }

    /// True when the sealable part is older than `interval`.
    pub fn due(&self, interval: Duration) -> bool {
        self.safe_len > 0 && self.opened.is_some_and(|t| t.elapsed() >= interval)
    }

    /// Seals `[start, safe end)`; `None` when nothing is sealable. Bytes of
    /// an open transaction stay buffered.
    pub fn take_safe(&mut self) -> Option<SealedSegment> {
        if self.safe_len == 0 {
            return None;
        }
        let raw: Bytes = self.data.split_to(self.safe_len).freeze();
        let start = LogPos::new(self.seq, self.start);
        self.start += self.safe_len as u64;
        self.safe_len = 0;
        let c = std::mem::take(&mut self.safe);
        self.opened = None;
        Some(SealedSegment {
            epoch: MYSQL_EPOCH,
            start,
            end: LogPos::new(self.seq, self.start),
            first_commit: c.first,
            last_commit: c.last,
            records: c.count,
            raw: vec![raw],
        })
    }

    /// Drops the bytes of an unfinished transaction.
    pub fn discard_unsafe(&mut self) {
        self.data.truncate(self.safe_len);
        self.pending = Commits::default();
    }

    /// Moves an empty builder to `(seq, offset)` (the next file).
    pub fn move_to(&mut self, seq: u64, offset: u64) -> Result<(), NotEmpty> {
        if !self.data.is_empty() {
            return Err(NotEmpty {
                to: seq,
                from: self.seq,
                bytes: self.data.len(),
            });
        }
        self.seq = seq;
        self.start = offset;
        Ok(())
    }
}

/// Type code of the last event of `payload` (events back to back, each
/// with its `event_size` at bytes 9..13); `None` when the sizes do not
/// tile the payload exactly.
pub fn last_event_type(payload: &[u8]) -> Option<u8> {
    let mut last = None;
    for e in crate::event::split(payload) {
        let (_, ev) = e.ok()?;
        last = ev.get(4).copied();
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(t: u8, size: usize) -> Vec<u8> {
        let mut e = vec![0u8; size];
        e[4] = t;
        e[9..13].copy_from_slice(&(size as u32).to_le_bytes());
        e
    }

    #[test]
    fn cuts_only_at_safe_points_and_keeps_open_transactions() {
        let mut b = SegmentBuilder::new(3, 4);
        b.push(&ev(15, 100), None, true);
        b.push(&ev(33, 50), None, false);
        b.push(&ev(30, 70), None, false);
        assert_eq!(b.safe_end(), LogPos::new(3, 104));
        b.push(&ev(16, 31), Some(TimestampMicros(20)), true);
        b.push(&ev(33, 50), None, false);
        assert!(b.has_unsafe());
        let s = b.take_safe().unwrap();
        assert_eq!((s.start, s.end), (LogPos::new(3, 4), LogPos::new(3, 255)));
        assert_eq!(s.raw_len(), 251);
        assert_eq!(
            (s.first_commit, s.last_commit, s.records),
            (Some(TimestampMicros(20)), Some(TimestampMicros(20)), 1)
        );
        assert_eq!(b.expected(), (3, 305));
        assert!(b.take_safe().is_none());
        b.discard_unsafe();
        assert_eq!(b.expected(), (3, 255));
        assert!(b.move_to(4, 4).is_ok());
        b.push(&ev(15, 20), None, true);
        assert!(b.move_to(5, 4).is_err());
    }

    #[test]
    fn commit_range_spans_several_transactions() {
        let mut b = SegmentBuilder::new(1, 4);
        for t in [30, 10, 20] {
            b.push(&ev(16, 31), Some(TimestampMicros(t)), true);
        }
        let s = b.take_safe().unwrap();
        assert_eq!(
            (s.first_commit, s.last_commit, s.records),
            (Some(TimestampMicros(10)), Some(TimestampMicros(30)), 3)
        );
        assert!(!b.due(Duration::ZERO));
    }

    #[test]
    fn last_event_type_walks_the_events() {
        let mut p = ev(15, 40);
        p.extend(ev(16, 31));
        p.extend(ev(4, 44));
        assert_eq!(last_event_type(&p), Some(4));
        assert_eq!(last_event_type(&p[..p.len() - 1]), None);
        assert_eq!(last_event_type(&[]), None);
    }
}
