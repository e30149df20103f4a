//! Decoding errors of oplog entries and oplog files.
//!
//! Every error says where it happened: the byte offset in the stream or file
//! being read when there is one, and the entry's `ts` once it is known. A
//! decoding error is always definite: the same bytes decode the same way on
//! every retry.

use std::fmt;

use crate::OplogTs;

/// Where in a stream of oplog entries something went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct At {
    /// Byte offset of the entry in the file, segment payload or batch.
    pub offset: Option<u64>,
    /// The entry's `ts`, when it could be read.
    pub ts: Option<OplogTs>,
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.offset, self.ts) {
            (Some(o), Some(t)) => write!(f, "at byte offset {o} (ts {t})"),
            (Some(o), None) => write!(f, "at byte offset {o}"),
            (None, Some(t)) => write!(f, "with ts {t}"),
            (None, None) => write!(f, "at an unknown position"),
        }
    }
}

/// A malformed oplog entry or a malformed stream of entries (definite).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("oplog entry {at}: {reason}")]
pub struct DecodeError {
    pub at: At,
    pub reason: String,
}

impl DecodeError {
    pub fn new(reason: impl Into<String>) -> DecodeError {
        DecodeError {
            at: At::default(),
            reason: reason.into(),
        }
    }

    /// Adds the byte offset (keeps one already set).
    pub fn at_offset(mut self, offset: u64) -> DecodeError {
        self.at.offset.get_or_insert(offset);
        self
    }

    /// Adds the entry's ts (keeps one already set).
    pub fn at_ts(mut self, ts: OplogTs) -> DecodeError {
        self.at.ts.get_or_insert(ts);
        self
    }

    /// Decoding errors never go away on a retry.
    pub fn is_transient(&self) -> bool {
        false
    }
}
