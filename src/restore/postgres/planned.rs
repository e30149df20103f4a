//! The log a restore planned on, as `wal-fetch` and the restore pin see it.
//!
//! A PostgreSQL restore writes one `--plan-range TLI:X/Y-X/Y` per timeline
//! of its plan into the `restore_command` (`[from, to)` of that timeline's
//! WAL, from the planned segments). `wal-fetch` then tells a WAL file the
//! plan said is archived but that is gone (it must abort recovery: exit
//! 126) from one past the plan's end (the end of the archive: exit 1, and
//! PostgreSQL ends recovery).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use pitr_postgres::lsn::{parse_wal_file_name, Lsn};
use pitr_segment::{Epoch, LogPos};

use crate::archive::keys::SegmentKey;
use crate::archive::pins::PinRange;

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

/// Per epoch: the first start and the last end of the planned segments
/// (`segments` are keys, in log order), in epoch order.
pub fn epoch_spans(segments: &[String]) -> anyhow::Result<Vec<(Epoch, LogPos, LogPos)>> {
    let mut spans: BTreeMap<Epoch, (LogPos, LogPos)> = BTreeMap::new();
    for k in segments {
        let sk = SegmentKey::parse(k).map_err(|e| anyhow::anyhow!("{e}"))?;
        let e = spans.entry(sk.epoch).or_insert((sk.start, sk.end));
        e.0 = e.0.min(sk.start);
        e.1 = e.1.max(sk.end);
    }
    Ok(spans.into_iter().map(|(e, (s, t))| (e, s, t)).collect())
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

/// The pin ranges of `segments`; with `open_ended` the last epoch's range
/// has no end (a `--latest` restore reads whatever is archived after it).
pub fn pin_ranges(segments: &[String], open_ended: bool) -> anyhow::Result<Vec<PinRange>> {
    let spans = epoch_spans(segments)?;
    let n = spans.len();
    Ok(spans
        .into_iter()
        .enumerate()
        .map(|(i, (e, s, t))| PinRange::new(e, s, (!(open_ended && i + 1 == n)).then_some(t)))
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
