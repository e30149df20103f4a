//! MongoDB oplog positions.
//!
//! No MongoDB server can run on the machines this project is built and
//! tested on, so this crate holds only the engine-neutral mapping of an oplog
//! timestamp onto [`pitr_segment::LogPos`]; the oplog tailer lands when a
//! server is available to test it against.

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
}
