//! Decoding of the records the time index needs (main data, little-endian).
//!
//! * `RM_XACT_ID` (1), `xl_info & 0x70`: COMMIT 0x00, PREPARE 0x10, ABORT 0x20,
//!   COMMIT_PREPARED 0x30, ABORT_PREPARED 0x40. Commit/abort main data
//!   (`xl_xact_commit` / `xl_xact_abort`): `i64 xact_time`, then if
//!   `xl_info & 0x80` (HAS_INFO) `u32 xinfo`, then optional parts in this order:
//!   dbinfo (8 bytes), subxacts (`i32 n`, n × u32), relfilelocators (`i32 n`, n × 12),
//!   dropped stats (`i32 n`, n × 12 bytes, 16 since PostgreSQL 18), invalidations
//!   (commit only: `i32 n`, n × 16), two-phase xid (u32), GID (NUL-terminated).
//!   PREPARE main data is `xl_xact_prepare`: xid at offset 8, `prepared_at` at
//!   16, `gidlen` at 54, the GID at 72.
//! * `RM_XLOG_ID` (0), `xl_info & 0xF0`: CHECKPOINT_SHUTDOWN 0x00 / ONLINE 0x10
//!   (`CheckPoint`: u64 redo, u32 ThisTimeLineID, u32 PrevTimeLineID, ..., i64
//!   time in Unix seconds at offset 64), SWITCH 0x40, RESTORE_POINT 0x70
//!   (`i64 rp_time`, `char rp_name[64]`), END_OF_RECOVERY 0x90 (`i64 end_time`,
//!   u32 ThisTimeLineID, u32 PrevTimeLineID).
//!
//! `TimestampTz` values are microseconds since 2000-01-01 UTC.

use pitr_segment::TimestampMicros;

use super::page;
use super::record::{RM_XACT_ID, RM_XLOG_ID};
use crate::lsn::{Lsn, TimelineId};

/// Commit or abort of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XactEnd {
    /// The transaction id (for COMMIT/ABORT PREPARED: the prepared transaction's xid).
    pub xid: u32,
    /// `xact_time`: the commit (abort) timestamp.
    pub time: TimestampMicros,
    /// True for COMMIT PREPARED / ROLLBACK PREPARED.
    pub prepared: bool,
    /// Subtransaction ids committed (aborted) with it.
    pub subxacts: Vec<u32>,
    /// GID of a prepared transaction, when logged.
    pub gid: Option<String>,
}

/// What a record means for the time index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordKind {
    Commit(XactEnd),
    Abort(XactEnd),
    Prepare {
        xid: u32,
        time: TimestampMicros,
        gid: String,
    },
    RestorePoint {
        time: TimestampMicros,
        name: String,
    },
    /// `pg_switch_wal()`: the rest of the segment is unused.
    Switch,
    Checkpoint {
        shutdown: bool,
        redo: Lsn,
        tli: TimelineId,
        prev_tli: TimelineId,
        time: TimestampMicros,
    },
    EndOfRecovery {
        time: TimestampMicros,
        tli: TimelineId,
        prev_tli: TimelineId,
    },
    /// Any other record.
    Other,
}

/// True if records of this resource manager need their payload decoded.
pub fn wants_payload(rmid: u8) -> bool {
    rmid == RM_XACT_ID || rmid == RM_XLOG_ID
}

struct Cursor<'a> {
    b: &'a [u8],
    p: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let s = self.b.get(self.p..self.p + n).ok_or_else(|| {
            format!(
                "main data too short ({} bytes, needed {})",
                self.b.len(),
                self.p + n
            )
        })?;
        self.p += n;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, String> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn i64(&mut self) -> Result<i64, String> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(i64::from_le_bytes(a))
    }
    fn count(&mut self, elem: usize) -> Result<Vec<&'a [u8]>, String> {
        let n = self.u32()? as usize;
        if n > self.b.len() {
            return Err(format!("implausible element count {n}"));
        }
        (0..n).map(|_| self.take(elem)).collect()
    }
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

const XINFO_HAS_DBINFO: u32 = 1 << 0;
const XINFO_HAS_SUBXACTS: u32 = 1 << 1;
const XINFO_HAS_RELFILELOCATORS: u32 = 1 << 2;
const XINFO_HAS_INVALS: u32 = 1 << 3;
const XINFO_HAS_TWOPHASE: u32 = 1 << 4;
const XINFO_HAS_GID: u32 = 1 << 7;
const XINFO_HAS_DROPPED_STATS: u32 = 1 << 8;

fn xact_end(
    record_xid: u32,
    info: u8,
    data: &[u8],
    commit: bool,
    magic: u16,
) -> Result<XactEnd, String> {
    let mut c = Cursor { b: data, p: 0 };
    let time = TimestampMicros::from_pg(c.i64()?);
    let xinfo = if info & 0x80 != 0 { c.u32()? } else { 0 };
    if xinfo & XINFO_HAS_DBINFO != 0 {
        c.take(8)?;
    }
    let mut subxacts = Vec::new();
    if xinfo & XINFO_HAS_SUBXACTS != 0 {
        subxacts = c
            .count(4)?
            .into_iter()
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
            .collect();
    }
    if xinfo & XINFO_HAS_RELFILELOCATORS != 0 {
        c.count(12)?;
    }
    if xinfo & XINFO_HAS_DROPPED_STATS != 0 {
        let item = if page::version_of_magic(magic).is_some_and(|v| v >= 18) {
            16
        } else {
            12
        };
        c.count(item)?;
    }
    if commit && xinfo & XINFO_HAS_INVALS != 0 {
        c.count(16)?;
    }
    let mut xid = record_xid;
    let mut gid = None;
    if xinfo & XINFO_HAS_TWOPHASE != 0 {
        xid = c.u32()?;
        if xinfo & XINFO_HAS_GID != 0 {
            gid = Some(cstr(&data[c.p..]));
        }
    }
    Ok(XactEnd {
        xid,
        time,
        prepared: false,
        subxacts,
        gid,
    })
}

/// Decodes the main data of a record of resource manager `rmid`.
pub fn decode(
    rmid: u8,
    info: u8,
    record_xid: u32,
    data: &[u8],
    magic: u16,
) -> Result<RecordKind, String> {
    match rmid {
        RM_XACT_ID => match info & 0x70 {
            op @ (0x00 | 0x30) => {
                let mut e = xact_end(record_xid, info, data, true, magic)?;
                e.prepared = op == 0x30;
                Ok(RecordKind::Commit(e))
            }
            op @ (0x20 | 0x40) => {
                let mut e = xact_end(record_xid, info, data, false, magic)?;
                e.prepared = op == 0x40;
                Ok(RecordKind::Abort(e))
            }
            0x10 => {
                let mut c = Cursor { b: data, p: 8 };
                let xid = c.u32()?;
                c.p = 16;
                let time = TimestampMicros::from_pg(c.i64()?);
                c.p = 54;
                let g = c.take(2)?;
                let gidlen = usize::from(u16::from_le_bytes([g[0], g[1]]));
                c.p = 72;
                let gid = cstr(c.take(gidlen)?);
                Ok(RecordKind::Prepare { xid, time, gid })
            }
            _ => Ok(RecordKind::Other),
        },
        RM_XLOG_ID => match info & 0xF0 {
            op @ (0x00 | 0x10) => {
                let mut c = Cursor { b: data, p: 0 };
                let redo = Lsn(c.i64()? as u64);
                let tli = TimelineId(c.u32()?);
                let prev_tli = TimelineId(c.u32()?);
                c.p = 64;
                let time = TimestampMicros::from_unix_secs(c.i64()?);
                Ok(RecordKind::Checkpoint {
                    shutdown: op == 0x00,
                    redo,
                    tli,
                    prev_tli,
                    time,
                })
            }
            0x40 => Ok(RecordKind::Switch),
            0x70 => {
                let mut c = Cursor { b: data, p: 0 };
                let time = TimestampMicros::from_pg(c.i64()?);
                let name = cstr(c.take(data.len().saturating_sub(8).min(64))?);
                Ok(RecordKind::RestorePoint { time, name })
            }
            0x90 => {
                let mut c = Cursor { b: data, p: 0 };
                let time = TimestampMicros::from_pg(c.i64()?);
                let tli = TimelineId(c.u32()?);
                let prev_tli = TimelineId(c.u32()?);
                Ok(RecordKind::EndOfRecovery {
                    time,
                    tli,
                    prev_tli,
                })
            }
            _ => Ok(RecordKind::Other),
        },
        _ => Ok(RecordKind::Other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_with_parts() {
        let mut d = Vec::new();
        d.extend_from_slice(&1_000_000i64.to_le_bytes());
        d.extend_from_slice(
            &(XINFO_HAS_DBINFO
                | XINFO_HAS_SUBXACTS
                | XINFO_HAS_DROPPED_STATS
                | XINFO_HAS_INVALS
                | XINFO_HAS_TWOPHASE
                | XINFO_HAS_GID)
                .to_le_bytes(),
        );
        d.extend_from_slice(&[0; 8]);
        d.extend_from_slice(&2u32.to_le_bytes());
        d.extend_from_slice(&11u32.to_le_bytes());
        d.extend_from_slice(&12u32.to_le_bytes());
        d.extend_from_slice(&1u32.to_le_bytes());
        d.extend_from_slice(&[0; 12]); // one PG15 stats item
        d.extend_from_slice(&1u32.to_le_bytes());
        d.extend_from_slice(&[0; 16]); // one inval message
        d.extend_from_slice(&777u32.to_le_bytes());
        d.extend_from_slice(b"g1\0");
        let k = decode(RM_XACT_ID, 0x30 | 0x80, 0, &d, 0xD110).unwrap();
        let RecordKind::Commit(e) = k else {
            panic!("{k:?}")
        };
        assert_eq!(e.xid, 777);
        assert!(e.prepared);
        assert_eq!(e.subxacts, vec![11, 12]);
        assert_eq!(e.gid.as_deref(), Some("g1"));
        assert_eq!(e.time, TimestampMicros::from_pg(1_000_000));
        // Same bytes read with PG18 stats item size are misparsed: the layout matters.
        let k18 = decode(RM_XACT_ID, 0x30 | 0x80, 0, &d, 0xD118);
        assert!(!matches!(
            k18,
            Ok(RecordKind::Commit(XactEnd { xid: 777, .. }))
        ));

        let plain = 5_000i64.to_le_bytes();
        assert_eq!(
            decode(RM_XACT_ID, 0x20, 99, &plain, 0xD110).unwrap(),
            RecordKind::Abort(XactEnd {
                xid: 99,
                time: TimestampMicros::from_pg(5000),
                prepared: false,
                subxacts: vec![],
                gid: None
            })
        );
        assert!(decode(RM_XACT_ID, 0x00, 1, &[1, 2], 0xD110).is_err());
    }

    #[test]
    fn xlog_records() {
        let mut rp = 42i64.to_le_bytes().to_vec();
        let mut name = [0u8; 64];
        name[..5].copy_from_slice(b"point");
        rp.extend_from_slice(&name);
        assert_eq!(
            decode(RM_XLOG_ID, 0x70, 0, &rp, 0xD110).unwrap(),
            RecordKind::RestorePoint {
                time: TimestampMicros::from_pg(42),
                name: "point".into()
            }
        );
        let mut cp = vec![0u8; 88];
        cp[0..8].copy_from_slice(&0x300_0028u64.to_le_bytes());
        cp[8..12].copy_from_slice(&2u32.to_le_bytes());
        cp[12..16].copy_from_slice(&1u32.to_le_bytes());
        cp[64..72].copy_from_slice(&1_700_000_000i64.to_le_bytes());
        assert_eq!(
            decode(RM_XLOG_ID, 0x10, 0, &cp, 0xD110).unwrap(),
            RecordKind::Checkpoint {
                shutdown: false,
                redo: Lsn(0x300_0028),
                tli: TimelineId(2),
                prev_tli: TimelineId(1),
                time: TimestampMicros::from_unix_secs(1_700_000_000)
            }
        );
        assert_eq!(
            decode(RM_XLOG_ID, 0x40, 0, &[], 0xD110).unwrap(),
            RecordKind::Switch
        );
        assert_eq!(decode(10, 0x00, 0, &[], 0xD110).unwrap(), RecordKind::Other);
    }
}
