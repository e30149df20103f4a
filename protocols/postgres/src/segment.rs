//! The PostgreSQL segment being built: received WAL chunks of one timeline
//! (the segment's epoch) from `start`, with the commit-time range and count
//! of the commit records that end inside it (a commit belongs to the
//! segment holding its last byte; [`crate::commit_index`] finds them).
//! Sealed into a [`SealedSegment`] with positions `LogPos::from_lsn`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use pitr_segment::{Epoch, LogPos, SealedSegment, TimestampMicros};

use crate::lsn::Lsn;

/// Bytes of the segment being built.
pub struct SegmentBuilder {
    epoch: Epoch,
    start: Lsn,
    /// Received chunks (slices of the server's messages, not copied).
    data: Vec<Bytes>,
    len: usize,
    first_commit: Option<TimestampMicros>,
    last_commit: Option<TimestampMicros>,
    records: u64,
    opened: Option<Instant>,
}

impl SegmentBuilder {
    /// An empty builder of timeline `epoch` starting at `start`.
    pub fn new(epoch: Epoch, start: Lsn) -> SegmentBuilder {
        SegmentBuilder {
            epoch,
            start,
            data: Vec::new(),
            len: 0,
            first_commit: None,
            last_commit: None,
            records: 0,
            opened: None,
        }
    }

    /// Where the buffered bytes start.
    pub fn start(&self) -> Lsn {
        self.start
    }

    /// Bytes buffered.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends received WAL bytes.
    pub fn push(&mut self, chunk: Bytes) {
        if self.opened.is_none() {
            self.opened = Some(Instant::now());
        }
        self.len += chunk.len();
        self.data.push(chunk);
    }

    /// Records a commit whose record ends at `end` (it belongs to the segment
    /// holding its last byte).
    pub fn note_commit(&mut self, end: Lsn, time: TimestampMicros) {
        if end <= self.start {
            return;
        }
        self.records += 1;
        self.first_commit = Some(self.first_commit.map_or(time, |t| t.min(time)));
        self.last_commit = Some(self.last_commit.map_or(time, |t| t.max(time)));
    }

    /// True when the oldest buffered byte is older than `interval`.
    pub fn due(&self, interval: Duration) -> bool {
        self.opened.is_some_and(|t| t.elapsed() >= interval)
    }

    /// Drops what is buffered and starts again at `start`.
    pub fn reset(&mut self, start: Lsn) {
        self.start = start;
        self.data.clear();
        self.len = 0;
        self.first_commit = None;
        self.last_commit = None;
        self.records = 0;
        self.opened = None;
    }

    /// Seals the buffered bytes as `[start, end)` and starts again at `end`.
    pub fn take(&mut self, end: Lsn) -> SealedSegment {
        let raw = std::mem::take(&mut self.data);
        let seg = SealedSegment {
            epoch: self.epoch,
            start: LogPos::from_lsn(self.start.0),
            end: LogPos::from_lsn(end.0),
            first_commit: self.first_commit,
            last_commit: self.last_commit,
            records: self.records,
            raw,
        };
        self.reset(end);
        seg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_are_attributed_to_the_segment_holding_their_end() {
        let mut b = SegmentBuilder::new(Epoch(1), Lsn(100));
        b.note_commit(Lsn(90), TimestampMicros(5));
        assert_eq!(b.records, 0);
        b.push(Bytes::from_static(b"abc"));
        b.note_commit(Lsn(102), TimestampMicros(9));
        b.note_commit(Lsn(103), TimestampMicros(7));
        let s = b.take(Lsn(103));
        assert_eq!(
            (s.first_commit, s.last_commit, s.records),
            (Some(TimestampMicros(7)), Some(TimestampMicros(9)), 2)
        );
        assert_eq!(s.start, LogPos::from_lsn(100));
        assert_eq!(b.start, Lsn(103));
    }
}
