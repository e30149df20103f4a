//! Global transaction identifiers of both flavours.
//!
//! * MariaDB: a GTID is `domain-server-seq` (`0-1-100`); a replication
//!   position ([`MariaGtidPos`], `@@gtid_binlog_pos`, `@slave_connect_state`)
//!   is a comma-separated list holding the last GTID of each domain
//!   (`0-1-100,1-2-5`).
//! * MySQL: a GTID is `source_uuid:transaction_number`; a GTID set
//!   ([`MysqlGtidSet`], `@@gtid_executed`) maps each uuid to a list of closed
//!   intervals: `uuid:1-5:7-9,uuid2:1-3`. Tagged GTIDs (`uuid:tag:n`, MySQL
//!   8.4+) are rejected by the parser.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// A 16-byte server uuid (`@@server_uuid`, the source id of MySQL GTIDs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerUuid(pub [u8; 16]);

impl ServerUuid {
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for ServerUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl FromStr for ServerUuid {
    type Err = String;

    /// Parses the hyphenated form (`3e11fa47-71ca-11e1-9e33-c80aa9429562`),
    /// case-insensitive; hyphens may also be absent.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex: Vec<u8> = s.bytes().filter(|b| *b != b'-').collect();
        if hex.len() != 32 {
            return Err(format!("invalid uuid {s:?}: expected 32 hex digits"));
        }
        let mut out = [0u8; 16];
        for (i, pair) in hex.chunks(2).enumerate() {
            let text = std::str::from_utf8(pair).map_err(|_| format!("invalid uuid {s:?}"))?;
            out[i] = u8::from_str_radix(text, 16).map_err(|_| format!("invalid uuid {s:?}"))?;
        }
        Ok(ServerUuid(out))
    }
}

/// One MariaDB GTID: `domain-server-seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MariaGtid {
    pub domain: u32,
    pub server: u32,
    pub seq: u64,
}

impl fmt::Display for MariaGtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.domain, self.server, self.seq)
    }
}

impl FromStr for MariaGtid {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let mut parts = s.split('-');
        let mut next = |what: &str| {
            parts
                .next()
                .filter(|p| !p.is_empty())
                .ok_or_else(|| format!("invalid MariaDB GTID {s:?}: missing {what}"))
        };
        let domain = next("domain")?;
        let server = next("server id")?;
        let seq = next("sequence number")?;
        if parts.next().is_some() {
            return Err(format!("invalid MariaDB GTID {s:?}: too many parts"));
        }
        let bad = |what: &str| format!("invalid MariaDB GTID {s:?}: bad {what}");
        Ok(MariaGtid {
            domain: domain.parse().map_err(|_| bad("domain"))?,
            server: server.parse().map_err(|_| bad("server id"))?,
            seq: seq.parse().map_err(|_| bad("sequence number"))?,
        })
    }
}

/// A MariaDB replication position: the last GTID of each replication domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct MariaGtidPos {
    by_domain: BTreeMap<u32, MariaGtid>,
}

impl MariaGtidPos {
    pub fn new() -> MariaGtidPos {
        MariaGtidPos::default()
    }

    pub fn is_empty(&self) -> bool {
        self.by_domain.is_empty()
    }

    /// The GTIDs, one per domain, ordered by domain.
    pub fn gtids(&self) -> impl Iterator<Item = &MariaGtid> {
        self.by_domain.values()
    }

    pub fn get(&self, domain: u32) -> Option<&MariaGtid> {
        self.by_domain.get(&domain)
    }

    /// Records `gtid` as the latest of its domain.
    pub fn update(&mut self, gtid: MariaGtid) {
        self.by_domain.insert(gtid.domain, gtid);
    }

    /// True when `gtid` is at or before this position in its domain
    /// (sequence numbers grow monotonically within a domain).
    pub fn contains(&self, gtid: &MariaGtid) -> bool {
        self.by_domain
            .get(&gtid.domain)
            .is_some_and(|last| gtid.seq <= last.seq)
    }
}

impl fmt::Display for MariaGtidPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, g) in self.by_domain.values().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{g}")?;
        }
        Ok(())
    }
}

impl FromStr for MariaGtidPos {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut pos = MariaGtidPos::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let g: MariaGtid = part.parse()?;
            if pos.by_domain.insert(g.domain, g).is_some() {
                return Err(format!(
                    "invalid MariaDB GTID position {s:?}: domain {} appears twice",
                    g.domain
                ));
            }
        }
        Ok(pos)
    }
}

/// One MySQL GTID: `uuid:gno`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MysqlGtid {
    pub sid: ServerUuid,
    pub gno: u64,
}

impl fmt::Display for MysqlGtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.sid, self.gno)
    }
}

impl FromStr for MysqlGtid {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (uuid, gno) = s
            .trim()
            .split_once(':')
            .ok_or_else(|| format!("invalid MySQL GTID {s:?}: expected UUID:NUMBER"))?;
        let gno: u64 = gno
            .parse()
            .map_err(|_| format!("invalid MySQL GTID {s:?}: bad transaction number"))?;
        if gno == 0 {
            return Err(format!("invalid MySQL GTID {s:?}: transaction number 0"));
        }
        Ok(MysqlGtid {
            sid: uuid.parse()?,
            gno,
        })
    }
}

/// A MySQL GTID set: per source uuid, sorted disjoint closed intervals
/// `[start, end]` (adjacent intervals are merged).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct MysqlGtidSet {
    sets: BTreeMap<ServerUuid, Vec<(u64, u64)>>,
}

impl MysqlGtidSet {
    pub fn new() -> MysqlGtidSet {
        MysqlGtidSet::default()
    }

    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    /// `(uuid, intervals)` pairs ordered by uuid; intervals are closed.
    pub fn iter(&self) -> impl Iterator<Item = (&ServerUuid, &[(u64, u64)])> {
        self.sets.iter().map(|(k, v)| (k, v.as_slice()))
    }

    pub fn contains(&self, gtid: &MysqlGtid) -> bool {
        self.sets
            .get(&gtid.sid)
            .is_some_and(|iv| iv.iter().any(|&(a, b)| a <= gtid.gno && gtid.gno <= b))
    }

    pub fn add(&mut self, gtid: MysqlGtid) {
        self.add_interval(gtid.sid, gtid.gno, gtid.gno);
    }

    /// Adds the closed interval `[start, end]` (ignored when `start > end` or `start == 0`).
    pub fn add_interval(&mut self, sid: ServerUuid, start: u64, end: u64) {
        if start == 0 || start > end {
            return;
        }
        let list = self.sets.entry(sid).or_default();
        list.push((start, end));
        list.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(list.len());
        for &(a, b) in list.iter() {
            match merged.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        *list = merged;
    }

    pub fn union(&mut self, other: &MysqlGtidSet) {
        for (sid, list) in &other.sets {
            for &(a, b) in list {
                self.add_interval(*sid, a, b);
            }
        }
    }

    /// True when every GTID of `self` is in `other`.
    pub fn is_subset(&self, other: &MysqlGtidSet) -> bool {
        self.sets.iter().all(|(sid, list)| {
            let Some(theirs) = other.sets.get(sid) else {
                return list.is_empty();
            };
            list.iter()
                .all(|&(a, b)| theirs.iter().any(|&(c, d)| c <= a && b <= d))
        })
    }
}

impl fmt::Display for MysqlGtidSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (sid, list)) in self.sets.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{sid}")?;
            for &(a, b) in list {
                if a == b {
                    write!(f, ":{a}")?;
                } else {
                    write!(f, ":{a}-{b}")?;
                }
            }
        }
        Ok(())
    }
}

impl FromStr for MysqlGtidSet {
    type Err = String;

    /// Parses `uuid:1-5:7,uuid2:3`; whitespace and newlines (as in
    /// `@@gtid_executed`) are ignored; the empty string is the empty set.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut set = MysqlGtidSet::new();
        let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        for part in compact.split(',').filter(|p| !p.is_empty()) {
            let mut fields = part.split(':');
            let uuid: ServerUuid = fields.next().unwrap_or_default().parse()?;
            let mut any = false;
            for iv in fields {
                any = true;
                let (a, b) = match iv.split_once('-') {
                    Some((a, b)) => (a, b),
                    None => (iv, iv),
                };
                let bad = || {
                    if iv
                        .bytes()
                        .next()
                        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
                    {
                        format!("GTID set {s:?} uses tagged GTIDs, which are not supported")
                    } else {
                        format!("invalid GTID set {s:?}: bad interval {iv:?}")
                    }
                };
                let a: u64 = a.parse().map_err(|_| bad())?;
                let b: u64 = b.parse().map_err(|_| bad())?;
                if a == 0 || a > b {
                    return Err(bad());
                }
                set.add_interval(uuid, a, b);
            }
            if !any {
                return Err(format!(
                    "invalid GTID set {s:?}: uuid {uuid} has no intervals"
                ));
            }
        }
        Ok(set)
    }
}

/// A GTID of either flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Gtid {
    MySql(MysqlGtid),
    MariaDb(MariaGtid),
}

impl fmt::Display for Gtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Gtid::MySql(g) => g.fmt(f),
            Gtid::MariaDb(g) => g.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const U1: &str = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
    const U2: &str = "4e11fa47-71ca-11e1-9e33-c80aa9429562";

    #[test]
    fn uuid_roundtrip() {
        let u: ServerUuid = U1.parse().unwrap();
        assert_eq!(u.to_string(), U1);
        assert_eq!(u.0[0], 0x3e);
        assert_eq!(U1.to_uppercase().parse::<ServerUuid>().unwrap(), u);
        assert!("3e11fa47".parse::<ServerUuid>().is_err());
        assert!("zz11fa47-71ca-11e1-9e33-c80aa9429562"
            .parse::<ServerUuid>()
            .is_err());
    }

    #[test]
    fn maria_gtid_and_pos() {
        let g: MariaGtid = "0-1-100".parse().unwrap();
        assert_eq!(
            g,
            MariaGtid {
                domain: 0,
                server: 1,
                seq: 100
            }
        );
        assert!("0-1".parse::<MariaGtid>().is_err());
        assert!("0-1-2-3".parse::<MariaGtid>().is_err());
        assert!("a-1-2".parse::<MariaGtid>().is_err());

        let mut pos: MariaGtidPos = "1-2-5, 0-1-100".parse().unwrap();
        assert_eq!(pos.to_string(), "0-1-100,1-2-5");
        assert!(pos.contains(&"0-7-99".parse().unwrap()));
        assert!(!pos.contains(&"0-1-101".parse().unwrap()));
        assert!(!pos.contains(&"2-1-1".parse().unwrap()));
        pos.update("0-1-101".parse().unwrap());
        assert_eq!(pos.to_string(), "0-1-101,1-2-5");
        assert!("0-1-1,0-1-2".parse::<MariaGtidPos>().is_err());
        assert!("".parse::<MariaGtidPos>().unwrap().is_empty());
    }

    #[test]
    fn mysql_set_parse_format_normalises() {
        let s: MysqlGtidSet = format!("{U2}:3,{U1}:7-9:1-5:6,\n{U2}:1-2").parse().unwrap();
        assert_eq!(s.to_string(), format!("{U1}:1-9,{U2}:1-3"));
        let s2: MysqlGtidSet = format!("{U1}:1-5:7-9").parse().unwrap();
        assert_eq!(s2.to_string(), format!("{U1}:1-5:7-9"));
        assert!("".parse::<MysqlGtidSet>().unwrap().is_empty());
        assert!(U1.parse::<MysqlGtidSet>().is_err());
        assert!(format!("{U1}:5-3").parse::<MysqlGtidSet>().is_err());
        assert!(format!("{U1}:0").parse::<MysqlGtidSet>().is_err());
        let tagged = format!("{U1}:tag:1-3").parse::<MysqlGtidSet>().unwrap_err();
        assert!(tagged.contains("tagged"), "{tagged}");
    }

    #[test]
    fn mysql_set_contains_add_union_subset() {
        let u1: ServerUuid = U1.parse().unwrap();
        let mut s: MysqlGtidSet = format!("{U1}:1-5:7-9").parse().unwrap();
        assert!(s.contains(&MysqlGtid { sid: u1, gno: 5 }));
        assert!(!s.contains(&MysqlGtid { sid: u1, gno: 6 }));
        assert!(!s.contains(&MysqlGtid { sid: u1, gno: 10 }));
        s.add(MysqlGtid { sid: u1, gno: 6 });
        assert_eq!(s.to_string(), format!("{U1}:1-9"));

        let small: MysqlGtidSet = format!("{U1}:2-3").parse().unwrap();
        assert!(small.is_subset(&s));
        assert!(!s.is_subset(&small));
        let other: MysqlGtidSet = format!("{U2}:1").parse().unwrap();
        assert!(!other.is_subset(&s));
        s.union(&other);
        assert!(other.is_subset(&s));
        assert_eq!(s.to_string(), format!("{U1}:1-9,{U2}:1"));
        assert!(MysqlGtidSet::new().is_subset(&small));
    }

    #[test]
    fn mysql_gtid_parse() {
        let g: MysqlGtid = format!("{U1}:42").parse().unwrap();
        assert_eq!(g.gno, 42);
        assert_eq!(g.to_string(), format!("{U1}:42"));
        assert_eq!(Gtid::MySql(g).to_string(), format!("{U1}:42"));
        assert!(format!("{U1}:0").parse::<MysqlGtid>().is_err());
    }
}
