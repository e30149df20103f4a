//! WAL record headers and the layout of a record's payload (`xlogrecord.h`).
//!
//! ```text
//! XLogRecord (24 bytes): u32 xl_tot_len, u32 xl_xid, u64 xl_prev,
//!                        u8 xl_info, u8 xl_rmid, 2 pad, u32 xl_crc
//! then block headers, in order:
//!   0..=32  block reference: u8 id, u8 fork_flags, u16 data_length,
//!           [if fork_flags & 0x10 HAS_IMAGE: u16 length, u16 hole_offset, u8 bimg_info,
//!            [if image has a hole and is compressed: u16 hole_length]],
//!           [unless fork_flags & 0x80 SAME_REL: 12-byte RelFileLocator], u32 block number
//!   253     replication origin: u16
//!   252     top-level xid: u32
//!   255     main data, short: u8 length   (always the last header)
//!   254     main data, long:  u32 length  (always the last header)
//! then the block images and block data, then the main data.
//! ```
//!
//! Records start at 8-byte (MAXALIGN) positions. `xl_crc` is CRC-32C over
//! the payload followed by the first 20 header bytes.

use super::page;

pub const HEADER_LEN: usize = 24;
/// `XLogRecordMaxSize`.
pub const MAX_RECORD_LEN: u32 = 1020 * 1024 * 1024;

pub const RM_XLOG_ID: u8 = 0;
pub const RM_XACT_ID: u8 = 1;

/// A decoded `XLogRecord` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub tot_len: u32,
    pub xid: u32,
    pub prev: u64,
    pub info: u8,
    pub rmid: u8,
    pub crc: u32,
}

impl RecordHeader {
    pub fn parse(b: &[u8; HEADER_LEN]) -> RecordHeader {
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        RecordHeader {
            tot_len: u32_at(0),
            xid: u32_at(4),
            prev: u64::from(u32_at(8)) | (u64::from(u32_at(12)) << 32),
            info: b[16],
            rmid: b[17],
            crc: u32_at(20),
        }
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&self.tot_len.to_le_bytes());
        b[4..8].copy_from_slice(&self.xid.to_le_bytes());
        b[8..16].copy_from_slice(&self.prev.to_le_bytes());
        b[16] = self.info;
        b[17] = self.rmid;
        b[20..24].copy_from_slice(&self.crc.to_le_bytes());
        b
    }
}

const BKPBLOCK_HAS_IMAGE: u8 = 0x10;
const BKPBLOCK_SAME_REL: u8 = 0x80;
const BKPIMAGE_HAS_HOLE: u8 = 0x01;

fn image_compressed(bimg_info: u8, magic: u16) -> bool {
    if page::version_of_magic(magic).is_some_and(|v| v < 15) {
        bimg_info & 0x02 != 0
    } else {
        bimg_info & (0x04 | 0x08 | 0x10) != 0
    }
}

/// Returns the main data of a record, given its payload (everything after
/// the 24-byte header). `magic` selects version-specific flag meanings.
pub fn main_data(payload: &[u8], magic: u16) -> Result<&[u8], String> {
    let mut p = 0usize;
    let mut datatotal = 0usize;
    let mut main_len = 0usize;
    let short = || "record payload ends inside a block header".to_string();
    let get = |p: usize, n: usize| payload.get(p..p + n).ok_or_else(short);
    while payload.len() - p > datatotal {
        let id = payload[p];
        p += 1;
        match id {
            255 => {
                main_len = usize::from(*get(p, 1)?.first().ok_or_else(short)?);
                p += 1;
                datatotal += main_len;
                break;
            }
            254 => {
                let b = get(p, 4)?;
                main_len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
                p += 4;
                datatotal += main_len;
                break;
            }
            253 => p += 2,
            252 => p += 4,
            0..=32 => {
                let b = get(p, 3)?;
                let fork_flags = b[0];
                datatotal += usize::from(u16::from_le_bytes([b[1], b[2]]));
                p += 3;
                if fork_flags & BKPBLOCK_HAS_IMAGE != 0 {
                    let b = get(p, 5)?;
                    datatotal += usize::from(u16::from_le_bytes([b[0], b[1]]));
                    let bimg_info = b[4];
                    p += 5;
                    if bimg_info & BKPIMAGE_HAS_HOLE != 0 && image_compressed(bimg_info, magic) {
                        p += 2;
                    }
                }
                if fork_flags & BKPBLOCK_SAME_REL == 0 {
                    p += 12;
                }
                p += 4;
                if p > payload.len() {
                    return Err(short());
                }
            }
            other => return Err(format!("invalid block id {other} in record")),
        }
    }
    if payload.len().checked_sub(p) != Some(datatotal) {
        return Err(format!(
            "record lengths disagree: {} payload bytes after headers, headers announce {datatotal}",
            payload.len().saturating_sub(p)
        ));
    }
    Ok(&payload[payload.len() - main_len..])
}

/// Builds a record payload with an optional block reference and main data (tests).
pub fn build_payload(block_data: Option<&[u8]>, main: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    if let Some(d) = block_data {
        v.push(0); // block id 0
        v.push(0x20); // HAS_DATA, main fork, not SAME_REL
        v.extend_from_slice(&(d.len() as u16).to_le_bytes());
        v.extend_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0]); // RelFileLocator
        v.extend_from_slice(&42u32.to_le_bytes()); // block number
    }
    if main.len() < 256 {
        v.push(255);
        v.push(main.len() as u8);
    } else {
        v.push(254);
        v.extend_from_slice(&(main.len() as u32).to_le_bytes());
    }
    if let Some(d) = block_data {
        v.extend_from_slice(d);
    }
    v.extend_from_slice(main);
    v
}

/// CRC-32C of a record as PostgreSQL computes it.
pub fn record_crc(header: &[u8; HEADER_LEN], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(payload), &header[..20])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn main_data_with_blocks_and_image() {
        let p = build_payload(Some(b"blockdata"), b"main!");
        assert_eq!(main_data(&p, 0xD110).unwrap(), b"main!");
        let long = vec![7u8; 300];
        let p = build_payload(None, &long);
        assert_eq!(main_data(&p, 0xD110).unwrap(), &long[..]);

        // Block with a compressed image with a hole, SAME_REL, plus origin and toplevel xid.
        let mut v = vec![253, 1, 0, 252, 9, 0, 0, 0];
        v.extend_from_slice(&[3, BKPBLOCK_HAS_IMAGE | BKPBLOCK_SAME_REL | 0x20, 2, 0]);
        v.extend_from_slice(&[4, 0, 0, 0, BKPIMAGE_HAS_HOLE | 0x04, 10, 0]);
        v.extend_from_slice(&5u32.to_le_bytes());
        v.extend_from_slice(&[255, 3]);
        v.extend_from_slice(&[0xAA; 4]); // image
        v.extend_from_slice(&[0xBB; 2]); // block data
        v.extend_from_slice(b"xyz");
        assert_eq!(main_data(&v, 0xD118).unwrap(), b"xyz");
        // No main data at all.
        let v = vec![
            0, 0x20, 1, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0, 0xCC,
        ];
        assert_eq!(main_data(&v, 0xD110).unwrap(), b"");
        // Truncated.
        assert!(main_data(&build_payload(Some(b"abc"), b"m")[..10], 0xD110).is_err());
        assert!(main_data(&[99], 0xD110).is_err());
    }
}
