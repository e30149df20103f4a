//! A sealed stretch of log: what an engine's segment builder hands the
//! archiver once a stretch is complete, before it is encoded into a segment
//! object. Every engine's builder (PostgreSQL WAL, MySQL/MariaDB binlog
//! events, MongoDB oplog entries) produces this one type.

use bytes::Bytes;

use crate::position::{Epoch, LogPos, TimestampMicros};

/// A finished stretch `[start, end)` of one epoch's log, ready to be
/// encoded and stored.
#[derive(Debug, Clone)]
pub struct SealedSegment {
    pub epoch: Epoch,
    pub start: LogPos,
    pub end: LogPos,
    pub first_commit: Option<TimestampMicros>,
    pub last_commit: Option<TimestampMicros>,
    /// Number of transactions (commits/aborts) in the segment.
    pub records: u64,
    /// The log bytes exactly as the server sent them, in the chunks they
    /// arrived in (no copy into one large buffer).
    pub raw: Vec<Bytes>,
}

impl SealedSegment {
    /// Total log bytes.
    pub fn raw_len(&self) -> usize {
        self.raw.iter().map(|c| c.len()).sum()
    }
}
