//! Commit-time indexing of streamed PostgreSQL WAL.
//!
//! Wraps the protocol crate's WAL reader: fed the stream's bytes in order, it
//! returns the commits and aborts (with their timestamps and the LSN where
//! their record ends) that the segment being built must carry in its
//! commit-time range. Indexing never stops archiving: WAL the reader cannot
//! decode is logged and indexing restarts at the next WAL-file boundary,
//! while the bytes themselves are stored untouched.

use crate::lsn::Lsn;
use crate::wal::{RecordKind, WalReader, WalRecord};
use pitr_segment::TimestampMicros;

/// A transaction end found in the WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// First byte after the commit/abort record.
    pub end_lsn: Lsn,
    pub time: TimestampMicros,
}

/// Streaming commit indexer; see the module docs.
pub struct CommitIndexer {
    reader: Option<WalReader>,
    pos: Lsn,
    seg_size: u64,
    records: Vec<WalRecord>,
}

impl CommitIndexer {
    /// `start` must be a page boundary (the stream starts at WAL-file starts).
    pub fn new(start: Lsn, seg_size: u64) -> CommitIndexer {
        let reader = match WalReader::new(start, seg_size) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!("commit-time indexing disabled at {start}: {e}");
                None
            }
        };
        CommitIndexer {
            reader,
            pos: start,
            seg_size,
            records: Vec::new(),
        }
    }

    /// Feeds the next stream bytes; returns the transaction ends they complete.
    pub fn feed(&mut self, data: &[u8]) -> Vec<Commit> {
        let start = self.pos;
        self.pos = Lsn(self.pos.0 + data.len() as u64);
        let mut out = Vec::new();
        match &mut self.reader {
            Some(r) => {
                self.records.clear();
                if let Err(e) = r.feed(data, &mut self.records) {
                    tracing::warn!(
                        "cannot index WAL (the WAL itself is archived unchanged): {e}; \
                         indexing resumes at the next WAL file"
                    );
                    self.reader = None;
                }
                out = self.feed_done();
            }
            None => {
                // Restart at the first WAL-file boundary inside this chunk.
                let next_file = Lsn(start.segment_start(self.seg_size).0 + self.seg_size);
                if next_file > start && next_file < self.pos {
                    if let Ok(mut r) = WalReader::new(next_file, self.seg_size) {
                        let skip = (next_file.0 - start.0) as usize;
                        self.records.clear();
                        if r.feed(&data[skip..], &mut self.records).is_ok() {
                            self.reader = Some(r);
                            return self.feed_done();
                        }
                    }
                }
            }
        }
        out
    }

    fn feed_done(&mut self) -> Vec<Commit> {
        self.records
            .iter()
            .filter_map(|rec| match &rec.kind {
                RecordKind::Commit(x) | RecordKind::Abort(x) => Some(Commit {
                    end_lsn: rec.end_lsn,
                    time: x.time,
                }),
                _ => None,
            })
            .collect()
    }
}
