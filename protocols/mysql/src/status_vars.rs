//! Full decoding of a QUERY event for re-execution: the session context in
//! its status variables, the default database and the exact statement bytes.
//!
//! Layout (after the 19-byte common header): post-header `thread_id u32 |
//! exec_time u32 | db_len u8 | error_code u16 | status_vars_len u16` (plus
//! any extra post-header bytes the FORMAT_DESCRIPTION announces), then
//! `status_vars_len` bytes of `code u8 | value` pairs, the database name,
//! a NUL, and the statement up to the checksum.
//!
//! Status variables (`log_event.h` of both servers; values little-endian):
//!
//! | code | name | value |
//! |---|---|---|
//! | 0 | FLAGS2 | u32 (`OPTION_*` bits) |
//! | 1 | SQL_MODE | u64 |
//! | 2 | CATALOG | len u8, bytes, NUL |
//! | 3 | AUTO_INCREMENT | increment u16, offset u16 |
//! | 4 | CHARSET | client u16, collation_connection u16, collation_server u16 |
//! | 5 | TIME_ZONE | len u8, bytes |
//! | 6 | CATALOG_NZ | len u8, bytes |
//! | 7 | LC_TIME_NAMES | u16 |
//! | 8 | CHARSET_DATABASE | u16 |
//! | 9 | TABLE_MAP_FOR_UPDATE | u64 |
//! | 10 | MASTER_DATA_WRITTEN | u32 |
//! | 11 | INVOKER | len u8 user, len u8 host |
//! | 12 | UPDATED_DB_NAMES | count u8 (254 = too many), count NUL-terminated names |
//! | 13 | MICROSECONDS | u24 |
//! | 16 | EXPLICIT_DEFAULTS_FOR_TIMESTAMP (MySQL) | u8 |
//! | 17 | DDL_LOGGED_WITH_XID (MySQL) | u64 |
//! | 18 | DEFAULT_COLLATION_FOR_UTF8MB4 (MySQL) | u16 |
//! | 19 | SQL_REQUIRE_PRIMARY_KEY (MySQL) | u8 |
//! | 20 | DEFAULT_TABLE_ENCRYPTION (MySQL) | u8 |
//! | 128 | HRNOW (MariaDB) | u24 microseconds |
//! | 129 | XID (MariaDB) | u64 |
//! | 130 | GTID_FLAGS3 (MariaDB) | u8 |
//!
//! Like the servers' own binlog tools, decoding stops at the first unknown
//! code (the rest of the block is skipped by its length).

use crate::error::DecodeError;
use crate::event::{types, DecodeCtx, CHECKSUM_LEN, HEADER_LEN};

/// The session context a QUERY event was executed in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryContext {
    pub flags2: Option<u32>,
    pub sql_mode: Option<u64>,
    pub auto_increment: Option<(u16, u16)>,
    /// (character_set_client, collation_connection, collation_server) as collation ids.
    pub charset: Option<(u16, u16, u16)>,
    pub time_zone: Option<String>,
    pub lc_time_names: Option<u16>,
    pub charset_database: Option<u16>,
    /// Fractional seconds of the statement's start time.
    pub microseconds: Option<u32>,
    pub explicit_defaults_for_timestamp: Option<u8>,
    pub default_collation_for_utf8mb4: Option<u16>,
    pub sql_require_primary_key: Option<u8>,
    pub default_table_encryption: Option<u8>,
}

/// A QUERY event decoded for re-execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullQuery {
    /// Header timestamp: the statement's start time (seconds).
    pub timestamp: u32,
    pub thread_id: u32,
    pub error_code: u16,
    pub db: Vec<u8>,
    /// The statement exactly as logged (not necessarily UTF-8).
    pub query: Vec<u8>,
    pub context: QueryContext,
}

struct Cur<'a> {
    b: &'a [u8],
}

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.b.len() < n {
            return None;
        }
        let (a, rest) = self.b.split_at(n);
        self.b = rest;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u24(&mut self) -> Option<u32> {
        self.take(3)
            .map(|b| u32::from(b[0]) | u32::from(b[1]) << 8 | u32::from(b[2]) << 16)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        })
    }
    fn len_str(&mut self) -> Option<&'a [u8]> {
        let n = usize::from(self.u8()?);
        self.take(n)
    }
}

/// Decodes the status variables block; unknown codes end decoding.
pub fn parse_status_vars(block: &[u8]) -> QueryContext {
    let mut c = QueryContext::default();
    let mut r = Cur { b: block };
    // A truncated value leaves what was decoded so far.
    let _ = (|| -> Option<()> {
        while let Some(code) = r.u8() {
            match code {
                0 => c.flags2 = Some(r.u32()?),
                1 => c.sql_mode = Some(r.u64()?),
                2 => {
                    r.len_str()?;
                    r.u8()?;
                }
                3 => c.auto_increment = Some((r.u16()?, r.u16()?)),
                4 => c.charset = Some((r.u16()?, r.u16()?, r.u16()?)),
                5 => c.time_zone = Some(String::from_utf8_lossy(r.len_str()?).into_owned()),
                6 => {
                    r.len_str()?;
                }
                7 => c.lc_time_names = Some(r.u16()?),
                8 => c.charset_database = Some(r.u16()?),
                9 => {
                    r.u64()?;
                }
                10 => {
                    r.u32()?;
                }
                11 => {
                    r.len_str()?;
                    r.len_str()?;
                }
                12 => {
                    let n = r.u8()?;
                    if n != 254 {
                        for _ in 0..n {
                            let end = r.b.iter().position(|b| *b == 0)?;
                            r.take(end + 1)?;
                        }
                    }
                }
                13 | 128 => c.microseconds = Some(r.u24()?),
                16 => c.explicit_defaults_for_timestamp = Some(r.u8()?),
                17 | 129 => {
                    r.u64()?;
                }
                18 => c.default_collation_for_utf8mb4 = Some(r.u16()?),
                19 => c.sql_require_primary_key = Some(r.u8()?),
                20 => c.default_table_encryption = Some(r.u8()?),
                130 => {
                    r.u8()?;
                }
                _ => return None,
            }
        }
        Some(())
    })();
    c
}

/// Decodes a whole QUERY event (header and checksum included per `ctx`).
pub fn decode_full_query(event: &[u8], ctx: &DecodeCtx) -> Result<FullQuery, DecodeError> {
    let t = event.get(4).copied().unwrap_or(0);
    let bad = |what: &str| DecodeError::new(t, format!("QUERY event: {what}"));
    if t == types::MARIA_QUERY_COMPRESSED {
        return Err(DecodeError::new(
            t,
            "compressed QUERY events (log_bin_compress=ON) cannot be replayed; turn log_bin_compress off on the source",
        ));
    }
    if t != types::QUERY {
        return Err(bad("not a QUERY event"));
    }
    let end = if ctx.checksum {
        event.len().checked_sub(CHECKSUM_LEN)
    } else {
        Some(event.len())
    }
    .filter(|e| *e >= HEADER_LEN)
    .ok_or_else(|| bad("too short"))?;
    let timestamp = u32::from_le_bytes([event[0], event[1], event[2], event[3]]);
    let mut r = Cur {
        b: &event[HEADER_LEN..end],
    };
    let thread_id = r.u32().ok_or_else(|| bad("truncated post-header"))?;
    r.u32().ok_or_else(|| bad("truncated post-header"))?;
    let db_len = usize::from(r.u8().ok_or_else(|| bad("truncated post-header"))?);
    let error_code = r.u16().ok_or_else(|| bad("truncated post-header"))?;
    let status_len = usize::from(r.u16().ok_or_else(|| bad("truncated post-header"))?);
    let extra = usize::from(ctx.query_post_header.max(13)) - 13;
    r.take(extra).ok_or_else(|| bad("truncated post-header"))?;
    let block = r
        .take(status_len)
        .ok_or_else(|| bad("truncated status variables"))?;
    let db = r
        .take(db_len)
        .ok_or_else(|| bad("truncated database name"))?;
    r.take(1)
        .ok_or_else(|| bad("missing NUL after the database name"))?;
    Ok(FullQuery {
        timestamp,
        thread_id,
        error_code,
        db: db.to_vec(),
        query: r.b.to_vec(),
        context: parse_status_vars(block),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query_event(status: &[u8], db: &[u8], sql: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&77u32.to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        body.push(db.len() as u8);
        body.extend_from_slice(&0u16.to_le_bytes());
        body.extend_from_slice(&(status.len() as u16).to_le_bytes());
        body.extend_from_slice(status);
        body.extend_from_slice(db);
        body.push(0);
        body.extend_from_slice(sql);
        let size = (HEADER_LEN + body.len() + CHECKSUM_LEN) as u32;
        let mut ev = Vec::new();
        ev.extend_from_slice(&1_700_000_000u32.to_le_bytes());
        ev.push(types::QUERY);
        ev.extend_from_slice(&1u32.to_le_bytes());
        ev.extend_from_slice(&size.to_le_bytes());
        ev.extend_from_slice(&0u32.to_le_bytes());
        ev.extend_from_slice(&0u16.to_le_bytes());
        ev.extend_from_slice(&body);
        let crc = crate::event::compute_checksum(&ev);
        ev.extend_from_slice(&crc.to_le_bytes());
        ev
    }

    #[test]
    fn decodes_context_db_and_exact_bytes() {
        let mut st = vec![0u8];
        st.extend_from_slice(&0x0400_0000u32.to_le_bytes());
        st.push(1);
        st.extend_from_slice(&0x5420_0000u64.to_le_bytes());
        st.push(6);
        st.push(3);
        st.extend_from_slice(b"std");
        st.push(4);
        for v in [8u16, 8, 45] {
            st.extend_from_slice(&v.to_le_bytes());
        }
        st.push(5);
        st.push(6);
        st.extend_from_slice(b"+02:00");
        st.push(128);
        st.extend_from_slice(&[0x40, 0xe2, 0x01]); // 123456
        let sql = b"INSERT INTO t VALUES ('\xe9')"; // latin1, not UTF-8
        let ev = query_event(&st, b"shop", sql);
        let ctx = DecodeCtx {
            checksum: true,
            ..DecodeCtx::default()
        };
        let q = decode_full_query(&ev, &ctx).unwrap();
        assert_eq!(q.thread_id, 77);
        assert_eq!(q.timestamp, 1_700_000_000);
        assert_eq!(q.db, b"shop");
        assert_eq!(q.query, sql);
        let c = q.context;
        assert_eq!(c.flags2, Some(0x0400_0000));
        assert_eq!(c.sql_mode, Some(0x5420_0000));
        assert_eq!(c.charset, Some((8, 8, 45)));
        assert_eq!(c.time_zone.as_deref(), Some("+02:00"));
        assert_eq!(c.microseconds, Some(123_456));
    }

    #[test]
    fn unknown_code_stops_but_keeps_earlier_values() {
        let mut st = vec![7u8, 5, 0, 250, 1, 2, 3];
        st.extend_from_slice(&[8, 9, 0]);
        let c = parse_status_vars(&st);
        assert_eq!(c.lc_time_names, Some(5));
        assert_eq!(c.charset_database, None);
        // Truncated value.
        assert_eq!(parse_status_vars(&[1, 2, 3]), QueryContext::default());
    }

    #[test]
    fn rejects_truncation_and_compressed_queries() {
        let ev = query_event(&[], b"db", b"BEGIN");
        let ctx = DecodeCtx {
            checksum: true,
            ..DecodeCtx::default()
        };
        assert!(decode_full_query(&ev[..25], &ctx).is_err());
        let mut c = ev.clone();
        c[4] = types::MARIA_QUERY_COMPRESSED;
        let e = decode_full_query(&c, &ctx).unwrap_err();
        assert!(e.message.contains("log_bin_compress"), "{e:?}");
    }
}
