//! WAL positions, timelines and WAL file names.
//!
//! * An LSN ("log sequence number") is a 64-bit byte position in the WAL,
//!   written by PostgreSQL as two hexadecimal halves `X/Y` (`0/16B3748`).
//! * A timeline id (`TimeLineID`) is a 32-bit number that starts at 1 and is
//!   incremented by every promotion / point-in-time recovery.
//! * WAL is stored in segments of `wal_segment_size` bytes (16 MiB by
//!   default, a power of two between 1 MiB and 1 GiB). A segment file is named
//!   `TTTTTTTTXXXXXXXXYYYYYYYY` (24 upper-case hex digits): the timeline, then
//!   the segment number split as `segno / (2^32 / seg_size)` and
//!   `segno % (2^32 / seg_size)`. Timeline history files are `TTTTTTTT.history`.

use std::fmt;
use std::str::FromStr;

use pitr_segment::{Epoch, LogPos};

/// Size of a WAL page (`XLOG_BLCKSZ`); PostgreSQL's default build value.
pub const WAL_PAGE_SIZE: u64 = 8192;

/// Default WAL segment size (16 MiB).
pub const DEFAULT_SEGMENT_SIZE: u64 = 16 * 1024 * 1024;

/// A position in the WAL (`XLogRecPtr`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The invalid position `0/0`.
    pub const INVALID: Lsn = Lsn(0);

    /// True for every position except `0/0`.
    pub fn is_valid(self) -> bool {
        self.0 != 0
    }

    /// Offset of this position inside its segment.
    pub fn segment_offset(self, seg_size: u64) -> u64 {
        self.0 % seg_size
    }

    /// Number of the segment containing this position.
    pub fn segment_number(self, seg_size: u64) -> u64 {
        self.0 / seg_size
    }

    /// Start of the segment containing this position.
    pub fn segment_start(self, seg_size: u64) -> Lsn {
        Lsn(self.0 - self.0 % seg_size)
    }

    /// Start of the page containing this position.
    pub fn page_start(self) -> Lsn {
        Lsn(self.0 - self.0 % WAL_PAGE_SIZE)
    }

    /// Rounds up to a multiple of 8 (`MAXALIGN`), the alignment of records.
    pub fn max_align(self) -> Lsn {
        Lsn(self.0.saturating_add(7) & !7)
    }

    /// `self + n` (saturating).
    pub fn plus(self, n: u64) -> Lsn {
        Lsn(self.0.saturating_add(n))
    }

    /// The engine-neutral position used in segment headers and object keys.
    pub fn to_log_pos(self) -> LogPos {
        LogPos::from_lsn(self.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Lsn({self})")
    }
}

/// Error for a string that is not an `X/Y` LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a WAL position of the form X/Y (two hexadecimal numbers, e.g. 0/16B3748)")]
pub struct ParseLsnError(pub String);

impl FromStr for Lsn {
    type Err = ParseLsnError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(s.to_string());
        let (hi, lo) = s.trim().split_once('/').ok_or_else(err)?;
        let valid =
            |p: &str| !p.is_empty() && p.len() <= 8 && p.bytes().all(|b| b.is_ascii_hexdigit());
        if !valid(hi) || !valid(lo) {
            return Err(err());
        }
        let hi = u64::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((hi << 32) | lo))
    }
}

/// A PostgreSQL timeline id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct TimelineId(pub u32);

impl TimelineId {
    /// The engine-neutral epoch of this timeline.
    pub fn to_epoch(self) -> Epoch {
        Epoch(u64::from(self.0))
    }
}

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// True if `seg_size` is a segment size PostgreSQL accepts (power of two, 1 MiB..=1 GiB).
pub fn valid_segment_size(seg_size: u64) -> bool {
    seg_size.is_power_of_two() && (1 << 20..=1 << 30).contains(&seg_size)
}

/// Name of the WAL segment file holding `lsn` on timeline `tli`
/// (`XLogFileName`). `seg_size` must satisfy [`valid_segment_size`].
pub fn wal_file_name(tli: TimelineId, lsn: Lsn, seg_size: u64) -> String {
    let segno = lsn.segment_number(seg_size);
    let per_id = 0x1_0000_0000 / seg_size;
    format!("{:08X}{:08X}{:08X}", tli.0, segno / per_id, segno % per_id)
}

/// Parses a WAL segment file name into (timeline, start LSN of the segment).
/// Returns `None` for anything that is not 24 hex digits naming a valid segment.
pub fn parse_wal_file_name(name: &str, seg_size: u64) -> Option<(TimelineId, Lsn)> {
    if name.len() != 24
        || !name.bytes().all(|b| b.is_ascii_hexdigit())
        || !valid_segment_size(seg_size)
    {
        return None;
    }
    let tli = u32::from_str_radix(&name[0..8], 16).ok()?;
    let log = u64::from_str_radix(&name[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
    let per_id = 0x1_0000_0000 / seg_size;
    if seg >= per_id {
        return None;
    }
    let segno = log.checked_mul(per_id)?.checked_add(seg)?;
    Some((TimelineId(tli), Lsn(segno.checked_mul(seg_size)?)))
}

/// Name of the history file of timeline `tli` (`00000002.history`).
pub fn history_file_name(tli: TimelineId) -> String {
    format!("{:08X}.history", tli.0)
}

/// Parses `TTTTTTTT.history` into its timeline.
pub fn parse_history_file_name(name: &str) -> Option<TimelineId> {
    let hex = name.strip_suffix(".history")?;
    if hex.len() != 8 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(hex, 16).ok().map(TimelineId)
}

/// One line of a timeline history file: timeline `tli` ended at `switch_lsn`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub tli: TimelineId,
    pub switch_lsn: Lsn,
    pub reason: String,
}

/// Parses the content of a `.history` file (`<tli>\t<X/Y>\t<reason>` lines,
/// `#` comments and blank lines ignored). Returns `None` on a malformed line.
pub fn parse_history(content: &str) -> Option<Vec<HistoryEntry>> {
    let mut out = Vec::new();
    for line in content.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.splitn(3, char::is_whitespace);
        let tli = parts.next()?.parse().ok()?;
        let switch_lsn = parts.next()?.trim().parse().ok()?;
        let reason = parts.next().unwrap_or("").trim().to_string();
        out.push(HistoryEntry {
            tli: TimelineId(tli),
            switch_lsn,
            reason,
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trip() {
        for (s, v) in [
            ("0/0", 0u64),
            ("0/16B3748", 0x16B3748),
            ("1A/FF000028", 0x1A_FF00_0028),
        ] {
            let l: Lsn = s.parse().unwrap();
            assert_eq!(l, Lsn(v));
            assert_eq!(l.to_string(), s);
        }
        assert_eq!("16/b374d848".parse::<Lsn>().unwrap(), Lsn(0x16_B374_D848));
        for bad in ["", "0", "/1", "1/", "x/1", "1/2/3", "123456789/0", "0/-1"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad}");
        }
        assert_eq!(Lsn(0x1001).max_align(), Lsn(0x1008));
        assert_eq!(Lsn(0x1008).max_align(), Lsn(0x1008));
    }

    #[test]
    fn wal_file_names() {
        let seg = DEFAULT_SEGMENT_SIZE;
        assert_eq!(
            wal_file_name(TimelineId(1), Lsn(0x0300_0028), seg),
            "000000010000000000000003"
        );
        assert_eq!(
            wal_file_name(TimelineId(2), Lsn(0x1_FF00_0000), seg),
            "0000000200000001000000FF"
        );
        // 1 GiB segments: 4 per "log id".
        assert_eq!(
            wal_file_name(TimelineId(1), Lsn(0x1_C000_0000), 1 << 30),
            "000000010000000100000003"
        );
        assert_eq!(
            parse_wal_file_name("0000000200000001000000FF", seg),
            Some((TimelineId(2), Lsn(0x1_FF00_0000)))
        );
        assert_eq!(parse_wal_file_name("000000010000000100000100", seg), None);
        assert_eq!(parse_wal_file_name("00000001000000010000000", seg), None);
        assert_eq!(parse_wal_file_name("00000001000000010000000G", seg), None);
        for lsn in [0u64, 0x0300_0000, 0x7_1200_0000, 0xFFFF_FFFF_FF00_0000] {
            let name = wal_file_name(TimelineId(7), Lsn(lsn), seg);
            assert_eq!(
                parse_wal_file_name(&name, seg),
                Some((TimelineId(7), Lsn(lsn)))
            );
        }
        assert_eq!(history_file_name(TimelineId(10)), "0000000A.history");
        assert_eq!(
            parse_history_file_name("0000000A.history"),
            Some(TimelineId(10))
        );
        assert_eq!(parse_history_file_name("0000000A.hist"), None);
    }

    #[test]
    fn history_content() {
        let h =
            "1\t0/3000160\tno recovery target specified\n\n2\t0/5000000\tat restore point \"x\"\n";
        let e = parse_history(h).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].tli, TimelineId(1));
        assert_eq!(e[0].switch_lsn, Lsn(0x300_0160));
        assert_eq!(e[1].reason, "at restore point \"x\"");
        assert!(parse_history("1\tnope\n").is_none());
    }
}
