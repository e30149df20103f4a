//! Engine-neutral positions shared by every crate of pitr.
//!
//! * [`LogPos`] is a fixed-width (128-bit) position in a source's log. Its
//!   ordering is the log order, and its fixed-width hex rendering sorts the
//!   same way, so object listings come back in log order.
//!   - PostgreSQL: `hi = 0`, `lo = LSN`.
//!   - MySQL/MariaDB: `hi = binlog file sequence number`, `lo = byte offset`.
//!   - MongoDB: `hi = 0`, `lo = (oplog ts seconds << 32) | increment`.
//! * [`Epoch`] is the lineage a position belongs to (PostgreSQL timeline,
//!   MySQL/MariaDB server lineage, MongoDB replica-set term).
//! * [`TimestampMicros`] is a commit time in microseconds since the Unix epoch (UTC).

use std::fmt;
use std::str::FromStr;

/// Database engine a segment belongs to. The discriminant is stored on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Engine {
    Postgres = 1,
    MySql = 2,
    MariaDb = 3,
    MongoDb = 4,
}

impl Engine {
    /// The on-disk code of this engine.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Decodes an on-disk engine code.
    pub fn from_code(code: u8) -> Option<Engine> {
        match code {
            1 => Some(Engine::Postgres),
            2 => Some(Engine::MySql),
            3 => Some(Engine::MariaDb),
            4 => Some(Engine::MongoDb),
            _ => None,
        }
    }

    /// Lower-case name used in object keys, JSON and messages.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Postgres => "postgres",
            Engine::MySql => "mysql",
            Engine::MariaDb => "mariadb",
            Engine::MongoDb => "mongodb",
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Engine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "postgres" => Ok(Engine::Postgres),
            "mysql" => Ok(Engine::MySql),
            "mariadb" => Ok(Engine::MariaDb),
            "mongodb" => Ok(Engine::MongoDb),
            other => Err(format!("unknown engine {other:?}")),
        }
    }
}

/// A fixed-width position in a source's log; see the module docs for the
/// per-engine mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct LogPos {
    pub hi: u64,
    pub lo: u64,
}

impl LogPos {
    pub const ZERO: LogPos = LogPos { hi: 0, lo: 0 };
    pub const MAX: LogPos = LogPos {
        hi: u64::MAX,
        lo: u64::MAX,
    };

    pub const fn new(hi: u64, lo: u64) -> LogPos {
        LogPos { hi, lo }
    }

    /// Position of a PostgreSQL LSN.
    pub const fn from_lsn(lsn: u64) -> LogPos {
        LogPos { hi: 0, lo: lsn }
    }

    /// Big-endian 16-byte encoding (sorts like the position).
    pub fn to_be_bytes(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.hi.to_be_bytes());
        out[8..].copy_from_slice(&self.lo.to_be_bytes());
        out
    }

    pub fn from_be_bytes(b: [u8; 16]) -> LogPos {
        let mut hi = [0u8; 8];
        let mut lo = [0u8; 8];
        hi.copy_from_slice(&b[..8]);
        lo.copy_from_slice(&b[8..]);
        LogPos {
            hi: u64::from_be_bytes(hi),
            lo: u64::from_be_bytes(lo),
        }
    }

    /// 32 lower-case hex digits; lexical order equals position order.
    pub fn to_hex(self) -> String {
        format!("{:016x}{:016x}", self.hi, self.lo)
    }

    /// Parses exactly 32 hex digits as written by [`LogPos::to_hex`].
    pub fn from_hex(s: &str) -> Option<LogPos> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let hi = u64::from_str_radix(&s[..16], 16).ok()?;
        let lo = u64::from_str_radix(&s[16..], 16).ok()?;
        Some(LogPos { hi, lo })
    }
}

impl fmt::Display for LogPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}/{:016x}", self.hi, self.lo)
    }
}

/// Lineage of a log (PostgreSQL timeline, MySQL server lineage, Mongo term).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Epoch(pub u64);

impl Epoch {
    /// 16 lower-case hex digits; lexical order equals numeric order.
    pub fn to_hex(self) -> String {
        format!("{:016x}", self.0)
    }

    pub fn from_hex(s: &str) -> Option<Epoch> {
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(s, 16).ok().map(Epoch)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Microseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TimestampMicros(pub i64);

impl TimestampMicros {
    /// Microseconds between the PostgreSQL epoch (2000-01-01) and the Unix epoch.
    pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

    /// Converts a PostgreSQL `TimestampTz` (µs since 2000-01-01 UTC).
    pub const fn from_pg(pg: i64) -> TimestampMicros {
        TimestampMicros(pg + Self::PG_EPOCH_OFFSET_MICROS)
    }

    pub const fn from_unix_secs(s: i64) -> TimestampMicros {
        TimestampMicros(s * 1_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_roundtrip_and_order() {
        let a = LogPos::new(1, 0xffff_ffff_ffff);
        let b = LogPos::new(2, 0);
        assert!(a < b);
        assert!(a.to_hex() < b.to_hex());
        assert_eq!(LogPos::from_hex(&a.to_hex()), Some(a));
        assert_eq!(LogPos::from_hex("xyz"), None);
        assert_eq!(Epoch::from_hex(&Epoch(7).to_hex()), Some(Epoch(7)));
    }

    #[test]
    fn engine_codes_roundtrip() {
        for e in [
            Engine::Postgres,
            Engine::MySql,
            Engine::MariaDb,
            Engine::MongoDb,
        ] {
            assert_eq!(Engine::from_code(e.code()), Some(e));
            assert_eq!(e.name().parse::<Engine>(), Ok(e));
        }
        assert_eq!(Engine::from_code(0), None);
    }
}
