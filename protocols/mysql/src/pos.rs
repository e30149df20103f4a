//! Binlog coordinates and server identity newtypes.
//!
//! A MySQL/MariaDB binary log is a sequence of files named `<base>.<NNNNNN>`
//! (for example `mysql-bin.000123`). A position is the pair (file name, byte
//! offset of the next event). Offsets start at 4, right after the `\xfebin`
//! magic. The numeric suffix of the file name grows by one on every rotation,
//! so `(sequence, offset)` orders positions in log order and maps onto the
//! engine-neutral [`pitr_segment::LogPos`] as `hi = sequence, lo = offset`.

use std::fmt;
use std::str::FromStr;

use pitr_segment::{Engine, LogPos};

/// Offset of the first event in every binlog file (right after the magic).
pub const FIRST_EVENT_OFFSET: u64 = 4;

/// Name of one binlog file, as the server reports it (no directory part).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct BinlogFile(pub String);

impl BinlogFile {
    pub fn new(name: impl Into<String>) -> BinlogFile {
        BinlogFile(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Sequence number of the file: the digits after the last `.`
    /// (`mysql-bin.000123` -> 123). `None` when the name has no numeric suffix.
    pub fn sequence(&self) -> Option<u64> {
        let (_, digits) = self.0.rsplit_once('.')?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }

    /// Base name without the numeric suffix (`mysql-bin.000123` -> `mysql-bin`).
    pub fn base(&self) -> Option<&str> {
        self.sequence()?;
        self.0.rsplit_once('.').map(|(base, _)| base)
    }

    /// The file with the same base name and the given sequence number, keeping
    /// the zero padding width of `self` (at least six digits, as servers do).
    pub fn with_sequence(&self, seq: u64) -> Option<BinlogFile> {
        let (base, digits) = self.0.rsplit_once('.')?;
        self.sequence()?;
        let width = digits.len().max(6);
        Some(BinlogFile(format!("{base}.{seq:0width$}")))
    }
}

impl fmt::Display for BinlogFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A binlog position: file plus byte offset of the next event to read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BinlogPos {
    pub file: BinlogFile,
    pub offset: u64,
}

impl BinlogPos {
    pub fn new(file: impl Into<String>, offset: u64) -> BinlogPos {
        BinlogPos {
            file: BinlogFile(file.into()),
            offset,
        }
    }

    /// The start of `file` (offset 4).
    pub fn start_of(file: BinlogFile) -> BinlogPos {
        BinlogPos {
            file,
            offset: FIRST_EVENT_OFFSET,
        }
    }

    /// `LogPos{hi: file sequence, lo: offset}`; `None` when the file name has
    /// no numeric suffix.
    pub fn to_log_pos(&self) -> Option<LogPos> {
        Some(LogPos::new(self.file.sequence()?, self.offset))
    }
}

impl fmt::Display for BinlogPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.offset)
    }
}

impl FromStr for BinlogPos {
    type Err = String;

    /// Parses `file:offset` as written by `Display`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (file, offset) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("binlog position {s:?} is not of the form FILE:OFFSET"))?;
        if file.is_empty() {
            return Err(format!("binlog position {s:?} has an empty file name"));
        }
        let offset = offset
            .parse()
            .map_err(|_| format!("binlog position {s:?} has a non-numeric offset"))?;
        Ok(BinlogPos::new(file, offset))
    }
}

/// A server id (`@@server_id`, and the id we register with as a replica).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerId(pub u32);

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Which server family we talk to; their GTIDs and some events differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flavor {
    MySql,
    MariaDb,
}

impl Flavor {
    /// Detects the flavour from the result of `SELECT VERSION()`
    /// (`10.11.6-MariaDB-0+deb12u1-log` vs `9.4.0`).
    pub fn from_version(version: &str) -> Flavor {
        if version.to_ascii_lowercase().contains("mariadb") {
            Flavor::MariaDb
        } else {
            Flavor::MySql
        }
    }

    pub fn engine(self) -> Engine {
        match self {
            Flavor::MySql => Engine::MySql,
            Flavor::MariaDb => Engine::MariaDb,
        }
    }
}

impl fmt::Display for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Flavor::MySql => "MySQL",
            Flavor::MariaDb => "MariaDB",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_parsing() {
        assert_eq!(BinlogFile::new("mysql-bin.000123").sequence(), Some(123));
        assert_eq!(BinlogFile::new("a.b.000001").sequence(), Some(1));
        assert_eq!(BinlogFile::new("a.b.000001").base(), Some("a.b"));
        assert_eq!(BinlogFile::new("mysql-bin").sequence(), None);
        assert_eq!(BinlogFile::new("mysql-bin.").sequence(), None);
        assert_eq!(BinlogFile::new("mysql-bin.12a").sequence(), None);
        assert_eq!(BinlogFile::new("mysql-bin.12a").base(), None);
    }

    #[test]
    fn with_sequence_keeps_padding() {
        let f = BinlogFile::new("binlog.000009");
        assert_eq!(f.with_sequence(10).unwrap().as_str(), "binlog.000010");
        assert_eq!(
            f.with_sequence(1_234_567).unwrap().as_str(),
            "binlog.1234567"
        );
        assert!(BinlogFile::new("x").with_sequence(1).is_none());
    }

    #[test]
    fn log_pos_mapping_orders_like_the_log() {
        let a = BinlogPos::new("bin.000002", 900_000).to_log_pos().unwrap();
        let b = BinlogPos::new("bin.000010", 4).to_log_pos().unwrap();
        assert_eq!(a, LogPos::new(2, 900_000));
        assert!(a < b);
        assert!(a.to_hex() < b.to_hex());
        assert!(BinlogPos::new("nosuffix", 4).to_log_pos().is_none());
    }

    #[test]
    fn pos_display_roundtrip() {
        let p = BinlogPos::new("mysql-bin.000003", 1234);
        assert_eq!(p.to_string(), "mysql-bin.000003:1234");
        assert_eq!(p.to_string().parse::<BinlogPos>().unwrap(), p);
        assert!("nofile".parse::<BinlogPos>().is_err());
        assert!(":4".parse::<BinlogPos>().is_err());
        assert!("f.1:x".parse::<BinlogPos>().is_err());
    }

    #[test]
    fn flavor_detection() {
        assert_eq!(
            Flavor::from_version("10.11.6-MariaDB-0+deb12u1-log"),
            Flavor::MariaDb
        );
        assert_eq!(Flavor::from_version("9.4.0"), Flavor::MySql);
        assert_eq!(Flavor::from_version("8.0.36-log"), Flavor::MySql);
        assert_eq!(Flavor::MariaDb.engine(), Engine::MariaDb);
    }
}
