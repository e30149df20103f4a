//! The log a restore planned on, as `wal-fetch` and the restore pin see it.
//!
//! A PostgreSQL restore writes one `--plan-range TLI:X/Y-X/Y` per timeline
//! of its plan into the `restore_command` (`[from, to)` of that timeline's
//! WAL, from the planned segments). `wal-fetch` then tells a WAL file the
//! plan said is archived but that is gone (it must abort recovery: exit
//! 126) from one past the plan's end (the end of the archive: exit 1, and
//! PostgreSQL ends recovery).

use std::fmt;
use std::str::FromStr;

use pitr_postgres::lsn::{parse_wal_file_name, Lsn};

use crate::restore::session::epoch_spans;

/// `[from, to)` of timeline `tli`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanRange {
    pub tli: u32,
    pub from: Lsn,
    pub to: Lsn,
}

impl fmt::Display for PlanRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}-{}", self.tli, self.from, self.to)
    }
}

impl FromStr for PlanRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("invalid plan range {s:?}: expected TLI:X/Y-X/Y");
        let (tli, rest) = s.split_once(':').ok_or_else(bad)?;
        let (from, to) = rest.split_once('-').ok_or_else(bad)?;
        Ok(PlanRange {
            tli: tli.parse().map_err(|_| bad())?,
            from: from.parse().map_err(|_| bad())?,
            to: to.parse().map_err(|_| bad())?,
        })
    }
}

/// The PostgreSQL plan ranges of `segments`.
pub fn pg_ranges(segments: &[String]) -> anyhow::Result<Vec<PlanRange>> {
    Ok(epoch_spans(segments)?
        .into_iter()
        .map(|(e, s, t)| PlanRange {
            tli: u32::try_from(e.0).unwrap_or(u32::MAX),
            from: Lsn(s.lo),
            to: Lsn(t.lo),
        })
        .collect())
}

/// True when WAL file `file_name` starts inside one of `ranges`: the plan
/// said it is archived.
pub fn planned(ranges: &[PlanRange], file_name: &str, wal_segment_size: u64) -> bool {
    let Some((tli, start)) = parse_wal_file_name(file_name, wal_segment_size) else {
        return false;
    };
    ranges
        .iter()
        .any(|r| r.tli == tli.0 && r.from.0 < start.0 + wal_segment_size && start < r.to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_round_trip_and_cover_files() {
        let r: PlanRange = "2:0/2000000-0/5800000".parse().unwrap_or(PlanRange {
            tli: 0,
            from: Lsn(0),
            to: Lsn(0),
        });
        assert_eq!(r.to_string(), "2:0/2000000-0/5800000");
        let seg = 16 << 20;
        assert!(planned(&[r], "000000020000000000000002", seg));
        assert!(planned(&[r], "000000020000000000000005", seg)); // holds the end
        assert!(!planned(&[r], "000000020000000000000006", seg)); // past the end
        assert!(!planned(&[r], "000000010000000000000003", seg)); // other timeline
        assert!(!planned(&[r], "000000020000000000000001", seg)); // before
        assert!(!planned(&[r], "00000002.history", seg));
        assert!("2:0/1".parse::<PlanRange>().is_err());
    }
}
