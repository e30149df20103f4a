//! WAL page headers (`XLogPageHeaderData`, `XLogLongPageHeaderData`).
//!
//! Every 8 KiB WAL page starts with a header (little-endian, as written by
//! the server on x86/ARM):
//!
//! ```text
//! short (24 bytes, MAXALIGNed 20):  u16 xlp_magic, u16 xlp_info, u32 xlp_tli,
//!                                   u64 xlp_pageaddr, u32 xlp_rem_len, 4 pad
//! long  (40 bytes, first page of a segment): short header, then
//!                                   u64 xlp_sysid, u32 xlp_seg_size, u32 xlp_xlog_blcksz
//! ```
//!
//! `xlp_info` flags: `XLP_FIRST_IS_CONTRECORD` (0x1: the page starts with the
//! continuation of a record, `xlp_rem_len` bytes of it remain),
//! `XLP_LONG_HEADER` (0x2), `XLP_BKP_REMOVABLE` (0x4),
//! `XLP_FIRST_IS_OVERWRITE_CONTRECORD` (0x8: an unfinished record before this
//! page was abandoned). `xlp_magic` identifies the WAL format version.

use crate::lsn::{Lsn, TimelineId};

pub const SHORT_HEADER_LEN: usize = 24;
pub const LONG_HEADER_LEN: usize = 40;

pub const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
pub const XLP_LONG_HEADER: u16 = 0x0002;
pub const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
pub const XLP_ALL_FLAGS: u16 = 0x000F;

/// `XLOG_PAGE_MAGIC` of the PostgreSQL versions we know. Any other value is
/// rejected, because record layouts may differ.
pub const KNOWN_MAGICS: &[(u16, u32)] = &[
    (0xD10D, 14),
    (0xD110, 15),
    (0xD113, 16),
    (0xD116, 17),
    (0xD118, 18),
];

/// Major PostgreSQL version writing WAL with this page magic.
pub fn version_of_magic(magic: u16) -> Option<u32> {
    KNOWN_MAGICS
        .iter()
        .find(|(m, _)| *m == magic)
        .map(|(_, v)| *v)
}

/// A decoded page header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageHeader {
    pub magic: u16,
    pub info: u16,
    pub tli: TimelineId,
    pub pageaddr: Lsn,
    pub rem_len: u32,
    /// Long-header fields: (system identifier, segment size, page size).
    pub long: Option<(u64, u32, u32)>,
}

impl PageHeader {
    /// Length of the header as stored (24 or 40).
    pub fn len(&self) -> usize {
        if self.long.is_some() {
            LONG_HEADER_LEN
        } else {
            SHORT_HEADER_LEN
        }
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn is_contrecord(&self) -> bool {
        self.info & XLP_FIRST_IS_CONTRECORD != 0
    }

    pub fn is_overwrite_contrecord(&self) -> bool {
        self.info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0
    }
}

/// Header length announced by the first [`SHORT_HEADER_LEN`] bytes of a page.
pub fn header_len(first: &[u8]) -> usize {
    let info = u16::from_le_bytes([first[2], first[3]]);
    if info & XLP_LONG_HEADER != 0 {
        LONG_HEADER_LEN
    } else {
        SHORT_HEADER_LEN
    }
}

/// Decodes a complete page header (24 or 40 bytes, see [`header_len`]).
pub fn parse(b: &[u8]) -> PageHeader {
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let u64_at = |o: usize| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);
    let info = u16_at(2);
    PageHeader {
        magic: u16_at(0),
        info,
        tli: TimelineId(u32_at(4)),
        pageaddr: Lsn(u64_at(8)),
        rem_len: u32_at(16),
        long: (info & XLP_LONG_HEADER != 0 && b.len() >= LONG_HEADER_LEN)
            .then(|| (u64_at(24), u32_at(32), u32_at(36))),
    }
}

/// Encodes a page header (used by tests to build synthetic WAL).
pub fn encode(h: &PageHeader) -> Vec<u8> {
    let mut v = Vec::with_capacity(LONG_HEADER_LEN);
    v.extend_from_slice(&h.magic.to_le_bytes());
    v.extend_from_slice(&h.info.to_le_bytes());
    v.extend_from_slice(&h.tli.0.to_le_bytes());
    v.extend_from_slice(&h.pageaddr.0.to_le_bytes());
    v.extend_from_slice(&h.rem_len.to_le_bytes());
    v.extend_from_slice(&[0; 4]);
    if let Some((sysid, seg, blck)) = h.long {
        v.extend_from_slice(&sysid.to_le_bytes());
        v.extend_from_slice(&seg.to_le_bytes());
        v.extend_from_slice(&blck.to_le_bytes());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = PageHeader {
            magic: 0xD110,
            info: XLP_LONG_HEADER | XLP_FIRST_IS_CONTRECORD,
            tli: TimelineId(3),
            pageaddr: Lsn(0x1_0300_0000),
            rem_len: 77,
            long: Some((7_123_456_789, 16 << 20, 8192)),
        };
        let b = encode(&h);
        assert_eq!(b.len(), LONG_HEADER_LEN);
        assert_eq!(header_len(&b), LONG_HEADER_LEN);
        assert_eq!(parse(&b), h);
        assert!(h.is_contrecord());
        assert_eq!(version_of_magic(0xD118), Some(18));
        assert_eq!(version_of_magic(0xD111), None);
    }
}
