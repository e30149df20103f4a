//! Byte layout of a segment object, format versions 1 (plain) and 2
//! (sealed: encrypted frames, see [`crate::seal`]).
//!
//! A segment is one immutable object: a header, zero or more payload frames,
//! a footer with the frame index, and a fixed-size trailer at the very end.
//! **All integers are little-endian.** A [`LogPos`] is stored as 16 bytes:
//! `hi` (u64) then `lo` (u64). Offsets are object offsets from byte 0.
//! CRC-32C is the Castagnoli CRC (as in iSCSI/ext4; `crc32c("123456789") =
//! 0xe3069283`). Reserved bytes and undefined flag bits are written as zero
//! and a reader rejects anything else. The same layout is documented in
//! `protocols/segment/FORMAT.md`.
//!
//! ```text
//! HEADER (49 + n bytes in v1, 81 + n in v2)
//!   off  len  field
//!   0    8    magic "PITRSEG\0"
//!   8    2    format version (u16) = 1 or 2
//!   10   1    engine code (1 postgres, 2 mysql, 3 mariadb, 4 mongodb)
//!   11   1    flags (none defined in v1: 0)
//!   12   1    codec id (0 none, 1 zstd)
//!   13   3    reserved (0)
//!   16   4    key_id (u32; 0 in v1 = unencrypted; non-zero in v2 = the data key)
//!   20   8    epoch (u64)
//!   28   16   start LogPos
//!   44   1    n = source identity length (0..=255)
//!   45   n    source identity, UTF-8
//!   45+n 32   v2 only: salt of the object key (see crate::seal)
//!   ...  4    CRC-32C of all header bytes before it
//!
//! FRAME (32 + c bytes), repeated; never empty (u >= 1)
//!   0    4    magic "PFRM"
//!   4    1    codec id (equal to the header's)
//!   5    3    reserved (0)
//!   8    4    c = stored (compressed) length (u32, 1..=MAX_COMPRESSED_FRAME_LEN)
//!   12   4    u = raw (uncompressed) length (u32, 1..=MAX_FRAME_LEN)
//!   16   8    raw offset: payload offset of the frame's first raw byte (u64)
//!   24   4    CRC-32C of the c stored bytes
//!   28   4    CRC-32C of frame bytes [0, 28)
//!   32   c    stored bytes: codec none = the raw bytes (c == u);
//!             zstd = one zstd frame decoding to exactly u bytes;
//!             v2: those bytes sealed with AES-256-GCM, tag appended
//!             (c = their length + 16)
//!
//! FOOTER (64 + 28 * k bytes), starts right after the last frame
//!   0    4    magic "PFTR"
//!   4    16   end LogPos (position just past the last payload byte)
//!   20   1    presence flags: bit 0 = first commit time, bit 1 = last commit time
//!   21   3    reserved (0)
//!   24   8    first commit time (i64 µs since the Unix epoch; 0 when absent)
//!   32   8    last commit time (i64 µs since the Unix epoch; 0 when absent)
//!   40   8    record count (u64)
//!   48   8    payload length = sum of the frames' u (u64)
//!   56   4    k = frame count (u32, <= MAX_FRAMES)
//!   60   28*k frame index, one entry per frame in payload order:
//!               0  8  object offset of the frame (its "PFRM")
//!               8  4  c
//!               12 4  u
//!               16 8  raw offset
//!               24 4  CRC-32C of the stored bytes
//!   60+28k 4  CRC-32C of footer bytes [0, 60+28k)
//!
//! TRAILER (28 bytes, TRAILER_LEN), the last bytes of the object
//!   0    8    footer offset (u64)
//!   8    4    footer length (u32)
//!   12   2    format version (u16), equal to the header's
//!   14   2    reserved (0)
//!   16   4    CRC-32C of every object byte before the trailer
//!   20   8    magic "PITREND\0"
//! ```
//!
//! Invariants a reader checks: frames are contiguous (the first starts right
//! after the header, each next one right after the previous one, the footer
//! right after the last); raw offsets are contiguous from 0; the footer's
//! index equals the frame headers; `end >= start`; the object ends exactly
//! after the trailer. Readers never allocate from a length field beyond the
//! `MAX_*` bounds below.
//!
//! Compatibility rule: version 1 objects must stay readable by every future
//! build (the golden files in `testdata/v1/` guard this). Any layout change
//! bumps [`FORMAT_VERSION`]; readers reject versions they do not know.

use crate::error::{ByteRange, Part, Result, SegmentError};
use crate::meta::{Codec, FrameInfo, SegmentFooter, SegmentHeader};
use crate::position::{Engine, Epoch, LogPos, TimestampMicros};
use crate::seal::SALT_LEN;

/// Format version of plain (unencrypted) objects.
pub const FORMAT_VERSION: u16 = 1;
/// Format version of sealed (encrypted) objects.
pub const SEALED_FORMAT_VERSION: u16 = 2;
/// Magic at the start of every segment.
pub const MAGIC: [u8; 8] = *b"PITRSEG\0";
/// Magic at the start of every frame.
pub const FRAME_MAGIC: [u8; 4] = *b"PFRM";
/// Magic at the start of the footer.
pub const FOOTER_MAGIC: [u8; 4] = *b"PFTR";
/// Magic at the very end of the object.
pub const TRAILER_MAGIC: [u8; 8] = *b"PITREND\0";

/// Header bytes before the source identity.
pub const HEADER_FIXED_LEN: usize = 45;
/// Longest source identity in bytes.
pub const MAX_SOURCE_ID_LEN: usize = 255;
/// Shortest possible header (empty source identity).
pub const HEADER_MIN_LEN: usize = HEADER_FIXED_LEN + 4;
/// Longest possible header: reading this many leading bytes (or the whole
/// object if shorter) always suffices for [`parse_header`].
pub const HEADER_MAX_LEN: usize = HEADER_MIN_LEN + MAX_SOURCE_ID_LEN + SALT_LEN;
/// Length of a frame header.
pub const FRAME_HEADER_LEN: usize = 32;
/// Footer bytes before the frame index.
pub const FOOTER_FIXED_LEN: usize = 60;
/// Length of one frame index entry.
pub const FRAME_ENTRY_LEN: usize = 28;
/// Length of the trailer.
pub const TRAILER_LEN: usize = 28;
/// Largest raw (uncompressed) frame.
pub const MAX_FRAME_LEN: usize = 64 << 20;
/// Largest stored (compressed) frame: above zstd's worst-case expansion of
/// a [`MAX_FRAME_LEN`] input.
pub const MAX_COMPRESSED_FRAME_LEN: usize = MAX_FRAME_LEN + MAX_FRAME_LEN / 128;
/// Most frames one segment may hold.
pub const MAX_FRAMES: usize = 1 << 20;
/// Longest possible footer.
pub const MAX_FOOTER_LEN: usize = FOOTER_FIXED_LEN + FRAME_ENTRY_LEN * MAX_FRAMES + 4;
/// Default raw frame size (1 MiB).
pub const DEFAULT_FRAME_SIZE: usize = 1 << 20;
/// Smallest possible object: empty header, no frames, empty footer, trailer.
pub const MIN_OBJECT_LEN: usize = HEADER_MIN_LEN + FOOTER_FIXED_LEN + 4 + TRAILER_LEN;

const COMMIT_FIRST: u8 = 1;
const COMMIT_LAST: u8 = 2;

// ---- little-endian field access; callers check lengths first ----

fn bytes_at<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(s) = b.get(off..off + N) {
        out.copy_from_slice(s);
    }
    out
}

pub(crate) fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(bytes_at(b, off))
}

pub(crate) fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(bytes_at(b, off))
}

pub(crate) fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(bytes_at(b, off))
}

fn pos_at(b: &[u8], off: usize) -> LogPos {
    LogPos::new(u64_at(b, off), u64_at(b, off + 8))
}

fn put_pos(out: &mut Vec<u8>, p: LogPos) {
    out.extend_from_slice(&p.hi.to_le_bytes());
    out.extend_from_slice(&p.lo.to_le_bytes());
}

fn range(base: u64, off: usize, len: usize) -> ByteRange {
    ByteRange::at(base.saturating_add(off as u64), len as u64)
}

/// Rejects non-zero reserved bytes.
fn check_zero(part: Part, b: &[u8], off: usize, len: usize, base: u64) -> Result<()> {
    match b.get(off..off + len) {
        Some(s) if s.iter().all(|&x| x == 0) => Ok(()),
        _ => Err(SegmentError::invalid(
            part,
            range(base, off, len),
            "reserved bytes are not zero",
        )),
    }
}

fn check_crc(part: Part, covered: &[u8], stored: u32, base: u64) -> Result<()> {
    let computed = crc32c::crc32c(covered);
    if computed != stored {
        return Err(SegmentError::ChecksumMismatch {
            part,
            // the checked bytes and the stored checksum right after them
            range: range(base, 0, covered.len() + 4),
            stored,
            computed,
        });
    }
    Ok(())
}

// ---- header ----

/// Encodes a header: version 1 without a salt (key id 0), version 2 with
/// one (non-zero key id). Fails if the source identity is longer than
/// [`MAX_SOURCE_ID_LEN`] bytes or key id and salt do not go together.
pub(crate) fn encode_header(h: &SegmentHeader, salt: Option<&[u8; SALT_LEN]>) -> Result<Vec<u8>> {
    let sid = h.source_id.as_bytes();
    if sid.len() > MAX_SOURCE_ID_LEN {
        return Err(SegmentError::InvalidInput(format!(
            "source identity is {} bytes, at most {MAX_SOURCE_ID_LEN} allowed",
            sid.len()
        )));
    }
    let version = match (h.key_id, salt) {
        (0, None) => FORMAT_VERSION,
        (id, Some(_)) if id != 0 => SEALED_FORMAT_VERSION,
        (id, _) => {
            return Err(SegmentError::InvalidInput(format!(
                "key_id {id} needs {} data key",
                if id == 0 { "no" } else { "a" }
            )))
        }
    };
    let mut out = Vec::with_capacity(HEADER_MIN_LEN + sid.len() + SALT_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.push(h.engine.code());
    out.push(0); // flags
    out.push(h.codec.id());
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&h.key_id.to_le_bytes());
    out.extend_from_slice(&h.epoch.0.to_le_bytes());
    put_pos(&mut out, h.start);
    out.push(sid.len() as u8);
    out.extend_from_slice(sid);
    if let Some(salt) = salt {
        out.extend_from_slice(salt);
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Checks the magic and version of the first [`HEADER_FIXED_LEN`] bytes and
/// returns the full header length they announce.
pub(crate) fn header_len_from_fixed(fixed: &[u8]) -> Result<usize> {
    if fixed.len() < HEADER_FIXED_LEN {
        return Err(SegmentError::Truncated {
            part: Part::Header,
            range: ByteRange::new(0, HEADER_FIXED_LEN as u64),
            available: fixed.len() as u64,
        });
    }
    if fixed[..8] != MAGIC {
        return Err(SegmentError::BadMagic {
            part: Part::Header,
            range: ByteRange::new(0, 8),
        });
    }
    let salt = match u16_at(fixed, 8) {
        FORMAT_VERSION => 0,
        SEALED_FORMAT_VERSION => SALT_LEN,
        version => {
            return Err(SegmentError::UnsupportedVersion {
                part: Part::Header,
                version,
                range: ByteRange::new(8, 10),
            })
        }
    };
    Ok(HEADER_MIN_LEN + usize::from(fixed[44]) + salt)
}

/// Parses and verifies a header from the leading bytes of an object
/// (`bytes` may extend past the header). Returns the header and its length.
pub fn parse_header(bytes: &[u8]) -> Result<(SegmentHeader, usize)> {
    parse_header_salted(bytes).map(|(h, len, _salt)| (h, len))
}

/// As [`parse_header`], also returning a version 2 header's salt.
pub(crate) fn parse_header_salted(
    bytes: &[u8],
) -> Result<(SegmentHeader, usize, Option<[u8; SALT_LEN]>)> {
    let len = header_len_from_fixed(bytes)?;
    if bytes.len() < len {
        return Err(SegmentError::Truncated {
            part: Part::Header,
            range: ByteRange::new(0, len as u64),
            available: bytes.len() as u64,
        });
    }
    let b = &bytes[..len];
    let body = len - 4;
    check_crc(Part::Header, &b[..body], u32_at(b, body), 0)?;
    let engine = Engine::from_code(b[10]).ok_or_else(|| SegmentError::Unsupported {
        part: Part::Header,
        range: range(0, 10, 1),
        what: format!("engine code {}", b[10]),
    })?;
    if b[11] != 0 {
        return Err(SegmentError::Unsupported {
            part: Part::Header,
            range: range(0, 11, 1),
            what: format!("header flags {:#04x}", b[11]),
        });
    }
    let codec = Codec::from_id(b[12]).ok_or_else(|| SegmentError::Unsupported {
        part: Part::Header,
        range: range(0, 12, 1),
        what: format!("codec id {}", b[12]),
    })?;
    check_zero(Part::Header, b, 13, 3, 0)?;
    let key_id = u32_at(b, 16);
    let sealed = u16_at(b, 8) == SEALED_FORMAT_VERSION;
    if sealed == (key_id == 0) {
        return Err(SegmentError::invalid(
            Part::Header,
            range(0, 16, 4),
            format!("key_id {key_id} in a version {} header", u16_at(b, 8)),
        ));
    }
    let sid_end = HEADER_FIXED_LEN + usize::from(b[44]);
    let salt = sealed.then(|| {
        let mut s = [0u8; SALT_LEN];
        s.copy_from_slice(&b[sid_end..sid_end + SALT_LEN]);
        s
    });
    let source_id = std::str::from_utf8(&b[HEADER_FIXED_LEN..sid_end])
        .map_err(|e| {
            SegmentError::invalid(
                Part::Header,
                range(0, HEADER_FIXED_LEN, sid_end - HEADER_FIXED_LEN),
                format!("source identity is not UTF-8: {e}"),
            )
        })?
        .to_owned();
    let header = SegmentHeader {
        engine,
        source_id,
        epoch: Epoch(u64_at(b, 20)),
        start: pos_at(b, 28),
        codec,
        key_id,
    };
    Ok((header, len, salt))
}

// ---- footer ----

/// Encodes a footer (the payload length is the sum of the frames).
pub(crate) fn encode_footer(f: &SegmentFooter) -> Vec<u8> {
    let mut out = Vec::with_capacity(FOOTER_FIXED_LEN + FRAME_ENTRY_LEN * f.frames.len() + 4);
    out.extend_from_slice(&FOOTER_MAGIC);
    put_pos(&mut out, f.end);
    let mut flags = 0u8;
    if f.first_commit.is_some() {
        flags |= COMMIT_FIRST;
    }
    if f.last_commit.is_some() {
        flags |= COMMIT_LAST;
    }
    out.push(flags);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&f.first_commit.map_or(0, |t| t.0).to_le_bytes());
    out.extend_from_slice(&f.last_commit.map_or(0, |t| t.0).to_le_bytes());
    out.extend_from_slice(&f.record_count.to_le_bytes());
    out.extend_from_slice(&f.payload_len().to_le_bytes());
    out.extend_from_slice(&(f.frames.len() as u32).to_le_bytes());
    for fr in &f.frames {
        out.extend_from_slice(&fr.offset.to_le_bytes());
        out.extend_from_slice(&fr.compressed_len.to_le_bytes());
        out.extend_from_slice(&fr.uncompressed_len.to_le_bytes());
        out.extend_from_slice(&fr.raw_offset.to_le_bytes());
        out.extend_from_slice(&fr.crc.to_le_bytes());
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Footer length announced by the fixed part of a footer (after checking its
/// magic and frame count bound). `base` is the footer's object offset.
pub(crate) fn footer_len_from_fixed(fixed: &[u8], base: u64) -> Result<usize> {
    if fixed.get(..4) != Some(&FOOTER_MAGIC[..]) {
        return Err(SegmentError::BadMagic {
            part: Part::Footer,
            range: range(base, 0, 4),
        });
    }
    let count = u32_at(fixed, 56) as usize;
    if count > MAX_FRAMES {
        return Err(SegmentError::invalid(
            Part::Footer,
            range(base, 56, 4),
            format!("frame count {count} exceeds the maximum {MAX_FRAMES}"),
        ));
    }
    Ok(FOOTER_FIXED_LEN + FRAME_ENTRY_LEN * count + 4)
}

/// Parses and verifies a complete footer located at object offset `base`:
/// magic, checksum, flags, and that the frame index is self-consistent and
/// ends exactly at `base`.
pub(crate) fn parse_footer(b: &[u8], base: u64) -> Result<SegmentFooter> {
    if b.len() < FOOTER_FIXED_LEN + 4 {
        return Err(SegmentError::Truncated {
            part: Part::Footer,
            range: range(base, 0, FOOTER_FIXED_LEN + 4),
            available: base.saturating_add(b.len() as u64),
        });
    }
    let len = footer_len_from_fixed(b, base)?;
    if len != b.len() {
        return Err(SegmentError::invalid(
            Part::Footer,
            range(base, 0, b.len()),
            format!(
                "footer is {} bytes but its frame count implies {len}",
                b.len()
            ),
        ));
    }
    let body = len - 4;
    check_crc(Part::Footer, &b[..body], u32_at(b, body), base)?;
    let flags = b[20];
    if flags & !(COMMIT_FIRST | COMMIT_LAST) != 0 {
        return Err(SegmentError::Unsupported {
            part: Part::Footer,
            range: range(base, 20, 1),
            what: format!("footer flags {flags:#04x}"),
        });
    }
    check_zero(Part::Footer, b, 21, 3, base)?;
    let time = |bit: u8, off: usize| -> Result<Option<TimestampMicros>> {
        let v = u64_at(b, off) as i64;
        if flags & bit != 0 {
            Ok(Some(TimestampMicros(v)))
        } else if v != 0 {
            Err(SegmentError::invalid(
                Part::Footer,
                range(base, off, 8),
                "commit time set although its presence flag is clear",
            ))
        } else {
            Ok(None)
        }
    };
    let first_commit = time(COMMIT_FIRST, 24)?;
    let last_commit = time(COMMIT_LAST, 32)?;
    let count = u32_at(b, 56) as usize;
    let mut frames = Vec::with_capacity(count);
    for i in 0..count {
        let o = FOOTER_FIXED_LEN + i * FRAME_ENTRY_LEN;
        frames.push(FrameInfo {
            index: i as u32,
            offset: u64_at(b, o),
            compressed_len: u32_at(b, o + 8),
            uncompressed_len: u32_at(b, o + 12),
            raw_offset: u64_at(b, o + 16),
            crc: u32_at(b, o + 24),
        });
    }
    let footer = SegmentFooter {
        end: pos_at(b, 4),
        first_commit,
        last_commit,
        record_count: u64_at(b, 40),
        frames,
    };
    check_frame_index(&footer.frames, base)?;
    let payload_len = u64_at(b, 48);
    if payload_len != footer.payload_len() {
        return Err(SegmentError::invalid(
            Part::Footer,
            range(base, 48, 8),
            format!(
                "payload length {payload_len} differs from the frames' total {}",
                footer.payload_len()
            ),
        ));
    }
    Ok(footer)
}

/// Checks that a frame index is contiguous in the object (starting within
/// the possible header sizes, ending at `footer_offset`) and in the payload
/// (raw offsets from 0), with lengths within bounds.
fn check_frame_index(frames: &[FrameInfo], footer_offset: u64) -> Result<()> {
    let entry_range = |i: usize| {
        range(
            footer_offset,
            FOOTER_FIXED_LEN + i * FRAME_ENTRY_LEN,
            FRAME_ENTRY_LEN,
        )
    };
    let header_ok = |off: u64| (HEADER_MIN_LEN as u64..=HEADER_MAX_LEN as u64).contains(&off);
    let mut next_offset = None;
    let mut next_raw = 0u64;
    for (i, f) in frames.iter().enumerate() {
        let bad = |reason: String| Err(SegmentError::invalid(Part::Footer, entry_range(i), reason));
        match next_offset {
            None if !header_ok(f.offset) => {
                return bad(format!(
                    "first frame at offset {} cannot follow a header",
                    f.offset
                ))
            }
            Some(n) if f.offset != n => {
                return bad(format!("frame {i} at offset {} but expected {n}", f.offset))
            }
            _ => {}
        }
        if f.uncompressed_len == 0 || f.uncompressed_len as usize > MAX_FRAME_LEN {
            return bad(format!(
                "frame {i} raw length {} out of bounds",
                f.uncompressed_len
            ));
        }
        if f.compressed_len == 0 || f.compressed_len as usize > MAX_COMPRESSED_FRAME_LEN {
            return bad(format!(
                "frame {i} stored length {} out of bounds",
                f.compressed_len
            ));
        }
        if f.raw_offset != next_raw {
            return bad(format!(
                "frame {i} raw offset {} but expected {next_raw}",
                f.raw_offset
            ));
        }
        next_raw += u64::from(f.uncompressed_len);
        next_offset = Some(f.end());
    }
    match next_offset {
        None if !header_ok(footer_offset) => Err(SegmentError::invalid(
            Part::Footer,
            range(footer_offset, 0, 4),
            format!("footer at offset {footer_offset} cannot follow a header"),
        )),
        Some(n) if n != footer_offset => Err(SegmentError::invalid(
            Part::Footer,
            range(footer_offset, 0, 4),
            format!("frames end at {n} but the footer is at {footer_offset}"),
        )),
        _ => Ok(()),
    }
}

// ---- trailer ----

/// The decoded trailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Trailer {
    pub footer_offset: u64,
    pub footer_len: u32,
    pub version: u16,
    pub object_crc: u32,
}

pub(crate) fn encode_trailer(
    footer_offset: u64,
    footer_len: u32,
    object_crc: u32,
    version: u16,
) -> [u8; TRAILER_LEN] {
    let mut out = [0u8; TRAILER_LEN];
    out[0..8].copy_from_slice(&footer_offset.to_le_bytes());
    out[8..12].copy_from_slice(&footer_len.to_le_bytes());
    out[12..14].copy_from_slice(&version.to_le_bytes());
    out[16..20].copy_from_slice(&object_crc.to_le_bytes());
    out[20..28].copy_from_slice(&TRAILER_MAGIC);
    out
}

/// Parses a trailer located at object offset `base` (so the object is
/// `base + TRAILER_LEN` bytes long) and checks that the footer it points to
/// ends exactly at `base`.
pub(crate) fn parse_trailer(b: &[u8], base: u64) -> Result<Trailer> {
    if b.len() != TRAILER_LEN {
        return Err(SegmentError::Truncated {
            part: Part::Trailer,
            range: range(base, 0, TRAILER_LEN),
            available: base.saturating_add(b.len() as u64),
        });
    }
    if b[20..28] != TRAILER_MAGIC {
        return Err(SegmentError::BadMagic {
            part: Part::Trailer,
            range: range(base, 20, 8),
        });
    }
    let version = u16_at(b, 12);
    if version != FORMAT_VERSION && version != SEALED_FORMAT_VERSION {
        return Err(SegmentError::UnsupportedVersion {
            part: Part::Trailer,
            version,
            range: range(base, 12, 2),
        });
    }
    check_zero(Part::Trailer, b, 14, 2, base)?;
    let t = Trailer {
        footer_offset: u64_at(b, 0),
        footer_len: u32_at(b, 8),
        version,
        object_crc: u32_at(b, 16),
    };
    let len_ok = (FOOTER_FIXED_LEN + 4..=MAX_FOOTER_LEN).contains(&(t.footer_len as usize))
        && (t.footer_len as usize - FOOTER_FIXED_LEN - 4) % FRAME_ENTRY_LEN == 0;
    if !len_ok {
        return Err(SegmentError::invalid(
            Part::Trailer,
            range(base, 8, 4),
            format!(
                "footer length {} is not a possible footer length",
                t.footer_len
            ),
        ));
    }
    if t.footer_offset < HEADER_MIN_LEN as u64
        || t.footer_offset.checked_add(u64::from(t.footer_len)) != Some(base)
    {
        return Err(SegmentError::invalid(
            Part::Trailer,
            range(base, 0, 12),
            format!(
                "footer {}+{} does not end where the trailer starts ({base})",
                t.footer_offset, t.footer_len
            ),
        ));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> SegmentHeader {
        SegmentHeader {
            engine: Engine::MariaDb,
            source_id: "uuid-1234".into(),
            epoch: Epoch(3),
            start: LogPos::new(7, 4),
            codec: Codec::None,
            key_id: 0,
        }
    }

    #[test]
    fn crc32c_is_castagnoli() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn header_layout_is_exact() {
        let b = encode_header(&header(), None).unwrap();
        assert_eq!(b.len(), HEADER_MIN_LEN + 9);
        assert_eq!(&b[..8], b"PITRSEG\0");
        assert_eq!(&b[8..10], &[1, 0]);
        assert_eq!(b[10], 3);
        assert_eq!(b[12], 0);
        assert_eq!(&b[20..28], &3u64.to_le_bytes());
        assert_eq!(&b[28..36], &7u64.to_le_bytes());
        assert_eq!(&b[36..44], &4u64.to_le_bytes());
        assert_eq!(b[44], 9);
        assert_eq!(&b[45..54], b"uuid-1234");
        assert_eq!(u32_at(&b, 54), crc32c::crc32c(&b[..54]));
        let (h, len) = parse_header(&b).unwrap();
        assert_eq!((h, len), (header(), b.len()));
    }

    #[test]
    fn header_rejects_bad_input() {
        let mut h = header();
        h.source_id = "x".repeat(256);
        assert!(matches!(
            encode_header(&h, None),
            Err(SegmentError::InvalidInput(_))
        ));
        h.source_id = "x".repeat(255);
        assert_eq!(
            encode_header(&h, None).unwrap().len(),
            HEADER_MAX_LEN - SALT_LEN
        );
        h.key_id = 9;
        assert!(matches!(
            encode_header(&h, None),
            Err(SegmentError::InvalidInput(_))
        ));
        let sealed = encode_header(&h, Some(&[5; SALT_LEN])).unwrap();
        assert_eq!(sealed.len(), HEADER_MAX_LEN);
        assert_eq!(&sealed[8..10], &[2, 0]);
        let (back, len, salt) = parse_header_salted(&sealed).unwrap();
        assert_eq!(
            (back, len, salt),
            (h.clone(), HEADER_MAX_LEN, Some([5; SALT_LEN]))
        );
        h.key_id = 0;
        assert!(encode_header(&h, Some(&[5; SALT_LEN])).is_err());

        let b = encode_header(&header(), None).unwrap();
        let err = parse_header(&b[..b.len() - 1]).unwrap_err();
        assert!(
            matches!(
                err,
                SegmentError::Truncated {
                    part: Part::Header,
                    ..
                }
            ),
            "{err}"
        );
        let mut v3 = b.clone();
        v3[8] = 3;
        assert!(matches!(
            parse_header(&v3),
            Err(SegmentError::UnsupportedVersion { version: 3, .. })
        ));
    }

    #[test]
    fn trailer_checks_footer_placement() {
        let t = encode_trailer(100, 64, 0xdead_beef, FORMAT_VERSION);
        let p = parse_trailer(&t, 164).unwrap();
        assert_eq!(p.footer_offset, 100);
        assert_eq!(p.object_crc, 0xdead_beef);
        assert!(parse_trailer(&t, 165).is_err());
        let t = encode_trailer(100, 65, 0, FORMAT_VERSION);
        assert!(parse_trailer(&t, 165).is_err(), "65 is not a footer length");
    }
}
