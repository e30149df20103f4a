//! MongoDB oplog support for pitr: the exact raw bytes of oplog entries, from
//! the server to a segment and back to a restore.
//!
//! * [`entry`]: [`OplogEntry`] / [`OplogEntryRef`], a view over ONE entry's
//!   raw BSON bytes with the fields indexing and restore need.
//! * [`txn`]: transaction boundaries ([`TxnTracker`]): where a segment may be cut.
//! * [`segmenter`]: the sans-IO segment builder ([`Segmenter`]) and the
//!   position rule that makes consecutive segments chain exactly.
//! * [`oplog_file`]: `oplog.bson` (documents back to back), read and written.
//! * [`apply`]: the restore planner turning entries into `applyOps` requests.
//!
//! Reading the oplog from a server (the tailable cursor, resuming without a
//! hole) is the archiver's: `src/source/mongodb_tail.rs`.
//!
//! Positions: an oplog entry's `ts` is a BSON Timestamp `(seconds, increment)`,
//! unique and strictly increasing in a replica set's oplog; [`OplogTs`] maps it
//! onto [`pitr_segment::LogPos`] as `hi = 0, lo = seconds << 32 | increment`.
//! The epoch of a segment is the replica-set term `t` of its entries.

pub mod apply;
pub mod entry;
pub mod error;
pub mod oplog_file;
pub mod segmenter;
pub mod txn;

pub use apply::{
    plan, ApplyLimits, ApplyOptions, ApplyPlanner, ApplyRequest, ApplyStats, BatchKind, Pushed,
};
pub use entry::{CommandKind, EntryMeta, OpKind, OpTime, OplogEntry, OplogEntryRef};
pub use error::DecodeError;
pub use oplog_file::{OplogFileReader, OplogFileWriter, MAX_ENTRY_LEN};
pub use segmenter::{SealedOplogSegment, Segmenter};
pub use txn::{Boundary, TxnTracker};

use pitr_segment::LogPos;
use std::fmt;

/// An oplog position: the BSON Timestamp `(t seconds, i increment)` of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OplogTs {
    pub secs: u32,
    pub inc: u32,
}

impl OplogTs {
    /// Engine-neutral position: `lo = secs << 32 | inc`, so order is preserved.
    pub fn to_log_pos(self) -> LogPos {
        LogPos::new(0, (u64::from(self.secs) << 32) | u64::from(self.inc))
    }

    /// The position right after this timestamp (`lo + 1`): the exclusive end
    /// of a segment whose last entry has this `ts`. Never equal to another
    /// entry's position unless that entry directly follows (same second,
    /// next increment).
    pub fn pos_after(self) -> LogPos {
        match self.to_log_pos().lo.checked_add(1) {
            Some(lo) => LogPos::new(0, lo),
            None => LogPos::new(1, 0),
        }
    }

    /// The greatest timestamp strictly before the exclusive end position
    /// `end` (inverse of [`OplogTs::pos_after`]); `None` for `LogPos::ZERO`
    /// or a position that is not a MongoDB one.
    pub fn last_before(end: LogPos) -> Option<OplogTs> {
        match (end.hi, end.lo) {
            (1, 0) => Some(OplogTs {
                secs: u32::MAX,
                inc: u32::MAX,
            }),
            (0, 0) => None,
            (0, lo) => OplogTs::from_log_pos(LogPos::new(0, lo - 1)),
            _ => None,
        }
    }

    /// From a BSON Timestamp.
    pub fn from_bson(t: bson::Timestamp) -> OplogTs {
        OplogTs {
            secs: t.time,
            inc: t.increment,
        }
    }

    /// As a BSON Timestamp (for queries).
    pub fn to_bson(self) -> bson::Timestamp {
        bson::Timestamp {
            time: self.secs,
            increment: self.inc,
        }
    }

    /// The timestamp's seconds as a commit time (µs), for entries without `wall`.
    pub fn as_micros(self) -> pitr_segment::TimestampMicros {
        pitr_segment::TimestampMicros::from_unix_secs(i64::from(self.secs))
    }

    /// Inverse of [`OplogTs::to_log_pos`]; `None` when `hi` is set.
    pub fn from_log_pos(p: LogPos) -> Option<OplogTs> {
        if p.hi != 0 {
            return None;
        }
        Some(OplogTs {
            secs: (p.lo >> 32) as u32,
            inc: (p.lo & 0xffff_ffff) as u32,
        })
    }
}

impl fmt::Display for OplogTs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{}", self.secs, self.inc)
    }
}

impl std::str::FromStr for OplogTs {
    type Err = String;
    /// Parses `secs,inc` (the form `pbm` and `mongodump --oplogLimit` print).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, b) = s
            .split_once([',', ':'])
            .ok_or_else(|| format!("oplog timestamp {s:?} is not of the form SECONDS,INCREMENT"))?;
        let secs = a
            .trim()
            .parse()
            .map_err(|_| format!("bad seconds in oplog timestamp {s:?}"))?;
        let inc = b
            .trim()
            .parse()
            .map_err(|_| format!("bad increment in oplog timestamp {s:?}"))?;
        Ok(OplogTs { secs, inc })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_survives_mapping() {
        let a: OplogTs = "1700000000,5".parse().unwrap();
        let b: OplogTs = "1700000000,6".parse().unwrap();
        let c: OplogTs = "1700000001,0".parse().unwrap();
        assert!(a.to_log_pos() < b.to_log_pos() && b.to_log_pos() < c.to_log_pos());
        assert_eq!(OplogTs::from_log_pos(a.to_log_pos()), Some(a));
        assert_eq!(OplogTs::from_log_pos(LogPos::new(1, 0)), None);
        assert!("17".parse::<OplogTs>().is_err());
    }

    #[test]
    fn pos_after_is_the_exclusive_end() {
        let a = OplogTs { secs: 5, inc: 7 };
        assert_eq!(a.pos_after(), OplogTs { secs: 5, inc: 8 }.to_log_pos());
        assert_eq!(OplogTs::last_before(a.pos_after()), Some(a));
        let b = OplogTs {
            secs: 5,
            inc: u32::MAX,
        };
        assert_eq!(b.pos_after(), OplogTs { secs: 6, inc: 0 }.to_log_pos());
        assert_eq!(OplogTs::last_before(b.pos_after()), Some(b));
        let m = OplogTs {
            secs: u32::MAX,
            inc: u32::MAX,
        };
        assert!(m.pos_after() > m.to_log_pos());
        assert_eq!(OplogTs::last_before(m.pos_after()), Some(m));
        assert_eq!(OplogTs::last_before(LogPos::ZERO), None);
    }
}
