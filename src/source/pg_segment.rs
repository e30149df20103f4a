//! The PostgreSQL segment being built: received WAL chunks of one epoch
//! from `start`, with the commit-time range and count of the commit records
//! that end inside it (a commit belongs to the segment holding its last
//! byte). Sealed into a [`SealedSegment`] for the uploader.

use std::time::{Duration, Instant};

use bytes::Bytes;
use pitr_postgres::lsn::Lsn;
use pitr_segment::{Epoch, LogPos, TimestampMicros};

use crate::archive::pipeline::SealedSegment;

/// Bytes of the segment being built.
pub(crate) struct Builder {
    pub(crate) epoch: Epoch,
    pub(crate) start: Lsn,
    /// Received chunks (slices of the server's messages, not copied).
    pub(crate) data: Vec<Bytes>,
    pub(crate) len: usize,
    pub(crate) first_commit: Option<TimestampMicros>,
    pub(crate) last_commit: Option<TimestampMicros>,
    pub(crate) records: u64,
    pub(crate) opened: Option<Instant>,
}

impl Builder {
    pub(crate) fn new(epoch: Epoch, start: Lsn) -> Builder {
        Builder {
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

    pub(crate) fn push(&mut self, chunk: Bytes) {
        if self.opened.is_none() {
            self.opened = Some(Instant::now());
        }
        self.len += chunk.len();
        self.data.push(chunk);
    }

    /// Records a commit whose record ends at `end` (it belongs to the segment
    /// holding its last byte).
    pub(crate) fn note_commit(&mut self, end: Lsn, time: TimestampMicros) {
        if end <= self.start {
            return;
        }
        self.records += 1;
        self.first_commit = Some(self.first_commit.map_or(time, |t| t.min(time)));
        self.last_commit = Some(self.last_commit.map_or(time, |t| t.max(time)));
    }

    pub(crate) fn due(&self, interval: Duration) -> bool {
        self.opened.is_some_and(|t| t.elapsed() >= interval)
    }

    pub(crate) fn reset(&mut self, start: Lsn) {
        self.start = start;
        self.data.clear();
        self.len = 0;
        self.first_commit = None;
        self.last_commit = None;
        self.records = 0;
        self.opened = None;
    }

    pub(crate) fn take(&mut self, end: Lsn) -> SealedSegment {
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
        let mut b = Builder::new(Epoch(1), Lsn(100));
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
