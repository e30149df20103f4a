//! Range reads: locate the footer and frame index from the end of an object
//! without reading the rest, then fetch and decode single frames.
//!
//! Typical use against object storage: fetch the last
//! [`SUGGESTED_TAIL_LEN`] bytes (or the whole object if smaller), call
//! [`parse_tail`]; if it answers [`SegmentError::NeedMoreTail`], fetch that
//! many bytes from the end and call it again. Then fetch `info.range()` of
//! the wanted frame and pass it to [`crate::decode_frame`], and if needed
//! `0..header_len` for [`crate::parse_header`]. The whole-object checksum is
//! not verified on this path (it needs every byte); each part's own
//! checksum is.

use crate::error::{ByteRange, Part, Result, SegmentError};
use crate::format::{parse_footer, parse_trailer, MIN_OBJECT_LEN, TRAILER_LEN};
use crate::meta::SegmentTail;

/// Tail length that holds the footer of any segment with up to ~2300 frames.
pub const SUGGESTED_TAIL_LEN: usize = 64 << 10;

/// Parses the trailer and footer from `tail`, the last `tail.len()` bytes of
/// an object `object_len` bytes long.
pub fn parse_tail(tail: &[u8], object_len: u64) -> Result<SegmentTail> {
    if (tail.len() as u64) > object_len {
        return Err(SegmentError::InvalidInput(format!(
            "tail of {} bytes is longer than the object ({object_len} bytes)",
            tail.len()
        )));
    }
    if object_len < MIN_OBJECT_LEN as u64 {
        return Err(SegmentError::Truncated {
            part: Part::Object,
            range: ByteRange::new(0, MIN_OBJECT_LEN as u64),
            available: object_len,
        });
    }
    if tail.len() < TRAILER_LEN {
        return Err(SegmentError::NeedMoreTail {
            needed: TRAILER_LEN as u64,
        });
    }
    let trailer_at = object_len - TRAILER_LEN as u64;
    let t = parse_trailer(&tail[tail.len() - TRAILER_LEN..], trailer_at)?;
    let needed = t.footer_len as usize + TRAILER_LEN;
    if tail.len() < needed {
        return Err(SegmentError::NeedMoreTail {
            needed: needed as u64,
        });
    }
    let footer_bytes = &tail[tail.len() - needed..tail.len() - TRAILER_LEN];
    let footer = parse_footer(footer_bytes, t.footer_offset)?;
    let header_len = footer.frames.first().map_or(t.footer_offset, |f| f.offset);
    Ok(SegmentTail {
        footer,
        version: t.version,
        footer_offset: t.footer_offset,
        footer_len: t.footer_len,
        header_len,
        object_crc: t.object_crc,
        total_len: object_len,
    })
}
