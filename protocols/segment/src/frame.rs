//! Payload frames: the 32-byte frame header and the codec that turns raw
//! log bytes into stored bytes and back (see [`crate::format`] for the
//! layout): compression, then in sealed objects AES-256-GCM
//! ([`crate::seal`]). Used by the streaming writer and reader and by the
//! range-read path ([`decode_frame`], [`decode_sealed_frame`]).

use zstd::bulk::{Compressor, Decompressor};

use crate::error::{ByteRange, Part, Result, SegmentError};
use crate::format::{
    u32_at, u64_at, FRAME_HEADER_LEN, FRAME_MAGIC, MAX_COMPRESSED_FRAME_LEN, MAX_FRAME_LEN,
};
use crate::meta::{Codec, FrameInfo};
use crate::seal::{FrameCipher, KeySet, TAG_LEN};

/// A decoded, verified frame header (its object offset is known to the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub codec_id: u8,
    pub compressed_len: u32,
    pub uncompressed_len: u32,
    pub raw_offset: u64,
    pub crc: u32,
}

impl FrameHeader {
    pub fn info(&self, index: u32, offset: u64) -> FrameInfo {
        FrameInfo {
            index,
            offset,
            compressed_len: self.compressed_len,
            uncompressed_len: self.uncompressed_len,
            raw_offset: self.raw_offset,
            crc: self.crc,
        }
    }

    pub fn encode(&self) -> [u8; FRAME_HEADER_LEN] {
        let mut b = [0u8; FRAME_HEADER_LEN];
        b[0..4].copy_from_slice(&FRAME_MAGIC);
        b[4] = self.codec_id;
        b[8..12].copy_from_slice(&self.compressed_len.to_le_bytes());
        b[12..16].copy_from_slice(&self.uncompressed_len.to_le_bytes());
        b[16..24].copy_from_slice(&self.raw_offset.to_le_bytes());
        b[24..28].copy_from_slice(&self.crc.to_le_bytes());
        let hcrc = crc32c::crc32c(&b[..28]);
        b[28..32].copy_from_slice(&hcrc.to_le_bytes());
        b
    }

    /// The frame header bytes a sealed frame's tag covers.
    pub fn aad(&self) -> [u8; 24] {
        let mut a = [0u8; 24];
        a.copy_from_slice(&self.encode()[..24]);
        a
    }

    /// Parses and verifies the frame header of frame `index` at object
    /// offset `base`: magic, header checksum, reserved bytes, codec and
    /// length bounds (`tag_len` is 0, or [`TAG_LEN`] in a sealed object).
    pub fn parse(b: &[u8], base: u64, index: u32, tag_len: usize) -> Result<FrameHeader> {
        let part = Part::Frame(index);
        let at = |off: u64, len: u64| ByteRange::at(base.saturating_add(off), len);
        if b.len() < FRAME_HEADER_LEN {
            return Err(SegmentError::Truncated {
                part,
                range: at(0, FRAME_HEADER_LEN as u64),
                available: base.saturating_add(b.len() as u64),
            });
        }
        if b[..4] != FRAME_MAGIC {
            return Err(SegmentError::BadMagic {
                part,
                range: at(0, 4),
            });
        }
        let stored = u32_at(b, 28);
        let computed = crc32c::crc32c(&b[..28]);
        if stored != computed {
            return Err(SegmentError::ChecksumMismatch {
                part,
                range: at(0, FRAME_HEADER_LEN as u64),
                stored,
                computed,
            });
        }
        if b[5..8] != [0, 0, 0] {
            return Err(SegmentError::invalid(
                part,
                at(5, 3),
                "reserved bytes are not zero",
            ));
        }
        let h = FrameHeader {
            codec_id: b[4],
            compressed_len: u32_at(b, 8),
            uncompressed_len: u32_at(b, 12),
            raw_offset: u64_at(b, 16),
            crc: u32_at(b, 24),
        };
        let codec = Codec::from_id(h.codec_id).ok_or_else(|| SegmentError::Unsupported {
            part,
            range: at(4, 1),
            what: format!("codec id {}", h.codec_id),
        })?;
        if h.uncompressed_len == 0 || h.uncompressed_len as usize > MAX_FRAME_LEN {
            return Err(SegmentError::invalid(
                part,
                at(12, 4),
                format!(
                    "raw length {} out of bounds 1..={MAX_FRAME_LEN}",
                    h.uncompressed_len
                ),
            ));
        }
        if h.compressed_len == 0 || h.compressed_len as usize > MAX_COMPRESSED_FRAME_LEN {
            return Err(SegmentError::invalid(
                part,
                at(8, 4),
                format!(
                    "stored length {} out of bounds 1..={MAX_COMPRESSED_FRAME_LEN}",
                    h.compressed_len
                ),
            ));
        }
        if codec == Codec::None
            && h.compressed_len as usize != h.uncompressed_len as usize + tag_len
        {
            return Err(SegmentError::invalid(
                part,
                at(8, 8),
                "uncompressed frame with different stored and raw lengths",
            ));
        }
        if (h.compressed_len as usize) <= tag_len {
            return Err(SegmentError::invalid(
                part,
                at(8, 4),
                format!(
                    "stored length {} leaves no room for a sealed frame",
                    h.compressed_len
                ),
            ));
        }
        Ok(h)
    }
}

/// Compresses (and in sealed objects encrypts) frames with one reusable
/// context.
pub(crate) struct FrameEncoder {
    codec_id: u8,
    compressor: Option<Compressor<'static>>,
    cipher: Option<FrameCipher>,
    out: Vec<u8>,
}

impl FrameEncoder {
    pub fn new(codec: Codec, cipher: Option<FrameCipher>) -> Result<FrameEncoder> {
        let compressor = match codec {
            Codec::None => None,
            Codec::Zstd { level } if !zstd::compression_level_range().contains(&level) => {
                return Err(SegmentError::InvalidInput(format!(
                    "zstd level {level} outside {:?}",
                    zstd::compression_level_range()
                )))
            }
            Codec::Zstd { level } => Some(Compressor::new(level).map_err(|e| {
                SegmentError::InvalidInput(format!("zstd level {level} rejected: {e}"))
            })?),
        };
        Ok(FrameEncoder {
            codec_id: codec.id(),
            compressor,
            cipher,
            out: Vec::new(),
        })
    }

    /// Returns the header and stored bytes of frame `index` holding `raw`
    /// (borrowing `raw` itself for codec none in a plain object); `offset`
    /// is the frame's object offset, for errors.
    pub fn encode<'a>(
        &'a mut self,
        raw: &'a [u8],
        index: u32,
        raw_offset: u64,
        offset: u64,
    ) -> Result<(FrameHeader, &'a [u8])> {
        let mut h = FrameHeader {
            codec_id: self.codec_id,
            compressed_len: 0,
            uncompressed_len: raw.len() as u32,
            raw_offset,
            crc: 0,
        };
        match &mut self.compressor {
            Some(c) => {
                self.out.clear();
                self.out
                    .reserve(zstd::zstd_safe::compress_bound(raw.len()) + TAG_LEN);
                c.compress_to_buffer(raw, &mut self.out)
                    .map_err(|source| SegmentError::Io {
                        offset,
                        cause: source,
                    })?;
            }
            None if self.cipher.is_some() => {
                self.out.clear();
                self.out.reserve(raw.len() + TAG_LEN);
                self.out.extend_from_slice(raw);
            }
            None => {}
        }
        if let Some(cipher) = &self.cipher {
            h.compressed_len = (self.out.len() + TAG_LEN) as u32;
            cipher.seal(index, &h.aad(), &mut self.out)?;
        }
        let stored: &[u8] = if self.compressor.is_some() || self.cipher.is_some() {
            &self.out
        } else {
            raw
        };
        h.compressed_len = stored.len() as u32;
        h.crc = crc32c::crc32c(stored);
        Ok((h, stored))
    }
}

/// Decodes stored bytes into raw bytes with one reusable context.
#[derive(Default)]
pub(crate) struct FrameDecoder {
    decompressor: Option<Decompressor<'static>>,
    /// The object key of a sealed object.
    cipher: Option<FrameCipher>,
    /// Opened (decrypted) bytes of the current frame.
    opened: Vec<u8>,
}

/// The codec bytes of a frame: `stored` itself in a plain object, else
/// `stored` opened into `opened`.
fn open_frame<'a>(
    cipher: &Option<FrameCipher>,
    opened: &'a mut Vec<u8>,
    h: &FrameHeader,
    stored: &'a [u8],
    base: u64,
    index: u32,
) -> Result<&'a [u8]> {
    let Some(cipher) = cipher else {
        return Ok(stored);
    };
    opened.clear();
    opened.extend_from_slice(stored);
    match cipher.open(index, &h.aad(), opened) {
        Some(n) => Ok(&opened[..n]),
        None => Err(SegmentError::NotAuthentic {
            part: Part::Frame(index),
            range: ByteRange::at(
                base.saturating_add(FRAME_HEADER_LEN as u64),
                stored.len() as u64,
            ),
        }),
    }
}

impl FrameDecoder {
    pub fn new(cipher: Option<FrameCipher>) -> FrameDecoder {
        FrameDecoder {
            cipher,
            ..FrameDecoder::default()
        }
    }

    /// Length of the tag each stored frame carries.
    pub fn tag_len(&self) -> usize {
        if self.cipher.is_some() {
            TAG_LEN
        } else {
            0
        }
    }

    /// Decodes the verified stored bytes of frame `index` (header `h` at
    /// object offset `base`) into `out`, replacing its contents. Fails unless
    /// they decode to exactly `h.uncompressed_len` bytes.
    pub fn decode(
        &mut self,
        h: &FrameHeader,
        stored: &[u8],
        base: u64,
        index: u32,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let part = Part::Frame(index);
        let range = ByteRange::at(
            base.saturating_add(FRAME_HEADER_LEN as u64),
            stored.len() as u64,
        );
        let want = h.uncompressed_len as usize;
        let FrameDecoder {
            decompressor,
            cipher,
            opened,
        } = self;
        let stored = open_frame(cipher, opened, h, stored, base, index)?;
        out.clear();
        match Codec::from_id(h.codec_id) {
            Some(Codec::None) => {
                out.extend_from_slice(stored);
            }
            Some(Codec::Zstd { .. }) => {
                let d = decompressor_in(decompressor, base)?;
                out.reserve_exact(want);
                d.decompress_to_buffer(stored, out)
                    .map_err(|e| SegmentError::Decompress {
                        part,
                        range,
                        reason: e.to_string(),
                    })?;
            }
            None => {
                return Err(SegmentError::Unsupported {
                    part,
                    range: ByteRange::at(base.saturating_add(4), 1),
                    what: format!("codec id {}", h.codec_id),
                })
            }
        }
        if out.len() != want {
            return Err(SegmentError::Decompress {
                part,
                range,
                reason: format!("decoded {} bytes, the frame header says {want}", out.len()),
            });
        }
        Ok(())
    }
}

impl FrameDecoder {
    /// As [`FrameDecoder::decode`], but into `out`, which must be exactly
    /// `h.uncompressed_len` bytes long.
    pub fn decode_into(
        &mut self,
        h: &FrameHeader,
        stored: &[u8],
        base: u64,
        index: u32,
        out: &mut [u8],
    ) -> Result<()> {
        let part = Part::Frame(index);
        let range = ByteRange::at(
            base.saturating_add(FRAME_HEADER_LEN as u64),
            stored.len() as u64,
        );
        let FrameDecoder {
            decompressor,
            cipher,
            opened,
        } = self;
        let stored = open_frame(cipher, opened, h, stored, base, index)?;
        let n = match Codec::from_id(h.codec_id) {
            Some(Codec::None) if stored.len() == out.len() => {
                out.copy_from_slice(stored);
                out.len()
            }
            Some(Codec::None) => stored.len(),
            Some(Codec::Zstd { .. }) => decompressor_in(decompressor, base)?
                .decompress_to_buffer(stored, out)
                .map_err(|e| SegmentError::Decompress {
                    part,
                    range,
                    reason: e.to_string(),
                })?,
            None => {
                return Err(SegmentError::Unsupported {
                    part,
                    range: ByteRange::at(base.saturating_add(4), 1),
                    what: format!("codec id {}", h.codec_id),
                })
            }
        };
        if n != h.uncompressed_len as usize || n != out.len() {
            return Err(SegmentError::Decompress {
                part,
                range,
                reason: format!(
                    "decoded {n} bytes, the frame header says {}",
                    h.uncompressed_len
                ),
            });
        }
        Ok(())
    }
}

fn decompressor_in<'a>(
    slot: &'a mut Option<Decompressor<'static>>,
    base: u64,
) -> Result<&'a mut Decompressor<'static>> {
    match slot {
        Some(d) => Ok(d),
        slot => Ok(
            slot.insert(Decompressor::new().map_err(|e| SegmentError::Io {
                offset: base,
                cause: e,
            })?),
        ),
    }
}

/// Range read of one frame of a plain (version 1) object: verifies
/// `frame_bytes` (the object bytes `info.range()`, frame header included)
/// against the frame index entry `info` and returns its raw log bytes.
pub fn decode_frame(frame_bytes: &[u8], info: &FrameInfo) -> Result<Vec<u8>> {
    decode_frame_in(frame_bytes, info, FrameDecoder::default())
}

/// The key of one sealed object, for range reads of its frames.
pub struct ObjectKey(FrameCipher);

impl ObjectKey {
    /// The object key from the object's leading bytes (at least its header;
    /// see [`crate::parse_header`]) and the data keys held. `None` for a
    /// plain object; an error naming the key id when it is not in `keys`.
    pub fn from_header(header_bytes: &[u8], keys: &KeySet) -> Result<Option<ObjectKey>> {
        let (h, _len, salt) = crate::format::parse_header_salted(header_bytes)?;
        let Some(salt) = salt else {
            return Ok(None);
        };
        let key = keys
            .get(h.key_id)
            .ok_or(SegmentError::KeyNeeded { key_id: h.key_id })?;
        Ok(Some(ObjectKey(FrameCipher::new(key, &salt)?)))
    }
}

/// As [`decode_frame`], for a frame of the sealed object `key` belongs to.
pub fn decode_sealed_frame(
    frame_bytes: &[u8],
    info: &FrameInfo,
    key: ObjectKey,
) -> Result<Vec<u8>> {
    decode_frame_in(frame_bytes, info, FrameDecoder::new(Some(key.0)))
}

fn decode_frame_in(
    frame_bytes: &[u8],
    info: &FrameInfo,
    mut decoder: FrameDecoder,
) -> Result<Vec<u8>> {
    let index = info.index;
    let part = Part::Frame(index);
    let expect_len = FRAME_HEADER_LEN as u64 + u64::from(info.compressed_len);
    if frame_bytes.len() as u64 != expect_len {
        let range = ByteRange::new(info.offset, info.end());
        return Err(if (frame_bytes.len() as u64) < expect_len {
            SegmentError::Truncated {
                part,
                range,
                available: info.offset.saturating_add(frame_bytes.len() as u64),
            }
        } else {
            SegmentError::invalid(
                part,
                range,
                format!(
                    "given {} bytes for a {expect_len}-byte frame",
                    frame_bytes.len()
                ),
            )
        });
    }
    let h = FrameHeader::parse(frame_bytes, info.offset, index, decoder.tag_len())?;
    if h.info(index, info.offset) != *info {
        return Err(SegmentError::invalid(
            part,
            ByteRange::at(info.offset, FRAME_HEADER_LEN as u64),
            "frame header differs from the footer's frame index entry",
        ));
    }
    let stored = &frame_bytes[FRAME_HEADER_LEN..];
    check_stored_crc(&h, crc32c::crc32c(stored), stored.len(), info.offset, index)?;
    let mut out = Vec::new();
    decoder.decode(&h, stored, info.offset, index, &mut out)?;
    Ok(out)
}

/// Verifies the CRC-32C of a frame's stored bytes (`computed` over `len` bytes).
pub(crate) fn check_stored_crc(
    h: &FrameHeader,
    computed: u32,
    len: usize,
    base: u64,
    index: u32,
) -> Result<()> {
    if computed != h.crc {
        return Err(SegmentError::ChecksumMismatch {
            part: Part::Frame(index),
            range: ByteRange::at(base.saturating_add(FRAME_HEADER_LEN as u64), len as u64),
            stored: h.crc,
            computed,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip_and_checks() {
        let h = FrameHeader {
            codec_id: 1,
            compressed_len: 10,
            uncompressed_len: 20,
            raw_offset: 300,
            crc: 0x1234_5678,
        };
        let b = h.encode();
        assert_eq!(&b[..4], b"PFRM");
        assert_eq!(FrameHeader::parse(&b, 0, 0, 0).unwrap(), h);
        let mut bad = b;
        bad[13] ^= 1;
        let err = FrameHeader::parse(&bad, 1000, 4, 0).unwrap_err();
        match err {
            SegmentError::ChecksumMismatch { part, range, .. } => {
                assert_eq!(part, Part::Frame(4));
                assert_eq!(range, ByteRange::new(1000, 1032));
            }
            other => panic!("unexpected {other}"),
        }
        let none = FrameHeader { codec_id: 0, ..h }.encode();
        assert!(
            FrameHeader::parse(&none, 0, 0, 0).is_err(),
            "none with c != u"
        );
        let sealed_none = FrameHeader {
            codec_id: 0,
            compressed_len: 20 + TAG_LEN as u32,
            ..h
        }
        .encode();
        assert!(FrameHeader::parse(&sealed_none, 0, 0, TAG_LEN).is_ok());
        assert!(FrameHeader::parse(&sealed_none, 0, 0, 0).is_err());
    }

    #[test]
    fn zstd_frame_decodes_exactly() {
        let raw: Vec<u8> = (0..5000u32).map(|i| (i % 7) as u8).collect();
        let mut enc = FrameEncoder::new(Codec::Zstd { level: 1 }, None).unwrap();
        let (h, stored) = enc.encode(&raw, 0, 0, 0).unwrap();
        let stored = stored.to_vec();
        assert_eq!(h.compressed_len as usize, stored.len());
        assert_eq!(h.crc, crc32c::crc32c(&stored));
        let mut out = Vec::new();
        FrameDecoder::default()
            .decode(&h, &stored, 0, 0, &mut out)
            .unwrap();
        assert_eq!(out, raw);
        let short = FrameHeader {
            uncompressed_len: raw.len() as u32 - 1,
            ..h
        };
        assert!(FrameDecoder::default()
            .decode(&short, &stored, 0, 0, &mut out)
            .is_err());
        let long = FrameHeader {
            uncompressed_len: raw.len() as u32 + 1,
            ..h
        };
        assert!(FrameDecoder::default()
            .decode(&long, &stored, 0, 0, &mut out)
            .is_err());
    }
}
