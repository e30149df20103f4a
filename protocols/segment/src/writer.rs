//! Streaming segment writer.
//!
//! [`SegmentWriter`] writes the header as soon as it is created, then cuts
//! the raw log bytes it is given into frames of `frame_size` raw bytes (the
//! last one may be shorter; [`SegmentWriter::end_frame`] cuts early), and
//! writes footer and trailer on [`SegmentWriter::finish`]. Memory use is one
//! frame of raw bytes plus one of compressed bytes, and the frame index.
//! See [`crate::format`] for the byte layout.

use std::io::Write;

use crate::error::{Result, SegmentError};
use crate::format::{
    encode_footer, encode_header, encode_trailer, DEFAULT_FRAME_SIZE, FORMAT_VERSION,
    FRAME_HEADER_LEN, MAX_COMPRESSED_FRAME_LEN, MAX_FRAMES, MAX_FRAME_LEN, SEALED_FORMAT_VERSION,
    TRAILER_LEN,
};
use crate::frame::FrameEncoder;
use crate::meta::{Codec, FrameInfo, SegmentFooter, SegmentHeader, SegmentMeta};
use crate::position::{LogPos, TimestampMicros};
use crate::seal::{FrameCipher, Seal};

/// Writer settings.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Raw bytes per frame (1..=[`MAX_FRAME_LEN`]); default 1 MiB.
    pub frame_size: usize,
    /// zstd level overriding the one in the header's [`Codec::Zstd`]; ignored
    /// for [`Codec::None`]. Default: `None` (use the header's level).
    pub zstd_level: Option<i32>,
    /// Seal (encrypt) the object: format version 2, the header's `key_id`
    /// becomes the key's id. Default: `None` (a plain version 1 object).
    pub seal: Option<Seal>,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            frame_size: DEFAULT_FRAME_SIZE,
            zstd_level: None,
            seal: None,
        }
    }
}

impl WriterOptions {
    /// These options sealing with `key` when one is given (its salt bound to
    /// `header` and `payload`, see [`Seal::for_payload`]); unchanged without.
    pub fn sealed_with<'a>(
        self,
        key: Option<crate::SealKey>,
        header: &SegmentHeader,
        payload: impl IntoIterator<Item = &'a [u8]>,
    ) -> WriterOptions {
        WriterOptions {
            seal: key.map(|k| Seal::for_payload(k, header, payload)),
            ..self
        }
    }
}

/// Streams raw log bytes into a segment object.
pub struct SegmentWriter<W: Write> {
    w: W,
    /// Header as stored (codec level normalised).
    header: SegmentHeader,
    frame_size: usize,
    encoder: FrameEncoder,
    /// Pending raw bytes of the frame being filled.
    pending: Vec<u8>,
    frames: Vec<FrameInfo>,
    /// Object bytes written so far.
    pos: u64,
    /// CRC-32C of all object bytes written so far.
    crc: u32,
    raw_total: u64,
    /// Format version written (1 plain, 2 sealed).
    version: u16,
    failed: bool,
}

impl<W: Write> SegmentWriter<W> {
    /// Validates the header and options and writes the header.
    pub fn new(w: W, header: SegmentHeader, opts: WriterOptions) -> Result<SegmentWriter<W>> {
        if opts.frame_size == 0 || opts.frame_size > MAX_FRAME_LEN {
            return Err(SegmentError::InvalidInput(format!(
                "frame_size {} out of bounds 1..={MAX_FRAME_LEN}",
                opts.frame_size
            )));
        }
        let codec = match (header.codec, opts.zstd_level) {
            (Codec::Zstd { .. }, Some(level)) => Codec::Zstd { level },
            (c, _) => c,
        };
        let key_id = match &opts.seal {
            Some(seal) if header.key_id != 0 && header.key_id != seal.key.id() => {
                return Err(SegmentError::InvalidInput(format!(
                    "header key_id {} but sealing with data key {}",
                    header.key_id,
                    seal.key.id()
                )))
            }
            Some(seal) => seal.key.id(),
            None => header.key_id,
        };
        let cipher = match &opts.seal {
            Some(seal) => Some(FrameCipher::new(&seal.key, &seal.salt)?),
            None => None,
        };
        let version = if cipher.is_some() {
            SEALED_FORMAT_VERSION
        } else {
            FORMAT_VERSION
        };
        let encoder = FrameEncoder::new(codec, cipher)?;
        let stored_header = SegmentHeader {
            codec: codec.stored(),
            key_id,
            ..header
        };
        let bytes = encode_header(&stored_header, opts.seal.as_ref().map(|s| &s.salt))?;
        let mut sw = SegmentWriter {
            w,
            header: stored_header,
            frame_size: opts.frame_size,
            encoder,
            pending: Vec::new(),
            frames: Vec::new(),
            pos: 0,
            crc: 0,
            raw_total: 0,
            version,
            failed: false,
        };
        sw.put(&bytes)?;
        Ok(sw)
    }

    /// Appends raw log bytes (exactly as the server sent them).
    pub fn write_all(&mut self, mut raw: &[u8]) -> Result<()> {
        self.check_usable()?;
        while !raw.is_empty() {
            if self.pending.is_empty() && raw.len() >= self.frame_size {
                // Whole frames straight from the caller's buffer, no copy.
                let (frame, rest) = raw.split_at(self.frame_size);
                self.emit(frame)?;
                raw = rest;
                continue;
            }
            if self.pending.capacity() < self.frame_size {
                self.pending
                    .reserve_exact(self.frame_size - self.pending.len());
            }
            let take = (self.frame_size - self.pending.len()).min(raw.len());
            self.pending.extend_from_slice(&raw[..take]);
            raw = &raw[take..];
            if self.pending.len() == self.frame_size {
                self.flush_pending()?;
            }
        }
        Ok(())
    }

    /// Ends the current frame now (if it holds any bytes), so the next byte
    /// starts a new frame — e.g. to make a transaction boundary a range-read
    /// entry point.
    pub fn end_frame(&mut self) -> Result<()> {
        self.check_usable()?;
        self.flush_pending()
    }

    /// Writes the last frame, the footer and the trailer, flushes, and
    /// returns the inner writer and the metadata of the finished object.
    pub fn finish(
        mut self,
        end: LogPos,
        first_commit: Option<TimestampMicros>,
        last_commit: Option<TimestampMicros>,
        record_count: u64,
    ) -> Result<(W, SegmentMeta)> {
        self.check_usable()?;
        if end < self.header.start {
            return Err(SegmentError::InvalidInput(format!(
                "end position {end} is before the start position {}",
                self.header.start
            )));
        }
        self.flush_pending()?;
        let footer = SegmentFooter {
            end,
            first_commit,
            last_commit,
            record_count,
            frames: std::mem::take(&mut self.frames),
        };
        let footer_bytes = encode_footer(&footer);
        let footer_offset = self.pos;
        self.put(&footer_bytes)?;
        let trailer = encode_trailer(
            footer_offset,
            footer_bytes.len() as u32,
            self.crc,
            self.version,
        );
        self.put(&trailer)?;
        let offset = self.pos;
        self.w.flush().map_err(|source| SegmentError::Io {
            offset,
            cause: source,
        })?;
        let meta = SegmentMeta {
            header: self.header,
            footer,
            total_len: self.pos,
        };
        debug_assert_eq!(
            meta.total_len,
            footer_offset + footer_bytes.len() as u64 + TRAILER_LEN as u64
        );
        Ok((self.w, meta))
    }

    /// Header as it is stored.
    pub fn header(&self) -> &SegmentHeader {
        &self.header
    }

    /// Raw payload bytes accepted so far (including the unflushed frame).
    pub fn payload_len(&self) -> u64 {
        self.raw_total + self.pending.len() as u64
    }

    /// Object bytes written to the inner writer so far.
    pub fn bytes_written(&self) -> u64 {
        self.pos
    }

    /// Frames written so far.
    pub fn frame_count(&self) -> usize {
        self.frames.len()
    }

    pub fn get_ref(&self) -> &W {
        &self.w
    }

    fn check_usable(&self) -> Result<()> {
        if self.failed {
            return Err(SegmentError::InvalidInput(
                "segment writer already failed; the object is incomplete".into(),
            ));
        }
        Ok(())
    }

    fn flush_pending(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let r = self.emit(&pending);
        self.pending = pending;
        self.pending.clear();
        r
    }

    fn emit(&mut self, raw: &[u8]) -> Result<()> {
        if self.frames.len() >= MAX_FRAMES {
            self.failed = true;
            return Err(SegmentError::InvalidInput(format!(
                "segment would exceed {MAX_FRAMES} frames; use a larger frame_size"
            )));
        }
        let offset = self.pos;
        let index = self.frames.len() as u32;
        let (h, stored) = match self.encoder.encode(raw, index, self.raw_total, offset) {
            Ok(s) => s,
            Err(e) => {
                self.failed = true;
                return Err(e);
            }
        };
        if stored.len() > MAX_COMPRESSED_FRAME_LEN {
            self.failed = true;
            return Err(SegmentError::InvalidInput(format!(
                "frame compressed to {} bytes, above the {MAX_COMPRESSED_FRAME_LEN} limit",
                stored.len()
            )));
        }
        let hb = h.encode();
        let r = write_tracked(&mut self.w, &mut self.pos, &mut self.crc, &hb).and_then(|()| {
            let offset = self.pos;
            self.w.write_all(stored).map_err(|source| SegmentError::Io {
                offset,
                cause: source,
            })
        });
        if let Err(e) = r {
            self.failed = true;
            return Err(e);
        }
        // extend the object checksum from the frame checksum, no second pass
        self.crc = crc32c::crc32c_combine(self.crc, h.crc, stored.len());
        self.pos += stored.len() as u64;
        debug_assert_eq!(self.pos, offset + (FRAME_HEADER_LEN + stored.len()) as u64);
        self.frames.push(h.info(self.frames.len() as u32, offset));
        self.raw_total += raw.len() as u64;
        Ok(())
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        let r = write_tracked(&mut self.w, &mut self.pos, &mut self.crc, bytes);
        if r.is_err() {
            self.failed = true;
        }
        r
    }
}

fn write_tracked<W: Write>(w: &mut W, pos: &mut u64, crc: &mut u32, bytes: &[u8]) -> Result<()> {
    w.write_all(bytes).map_err(|source| SegmentError::Io {
        offset: *pos,
        cause: source,
    })?;
    *crc = crc32c::crc32c_append(*crc, bytes);
    *pos += bytes.len() as u64;
    Ok(())
}

/// Encodes a whole segment in memory.
pub fn encode(
    header: SegmentHeader,
    payload: &[u8],
    end: LogPos,
    first_commit: Option<TimestampMicros>,
    last_commit: Option<TimestampMicros>,
    record_count: u64,
    opts: WriterOptions,
) -> Result<Vec<u8>> {
    let estimate = match header.codec {
        Codec::None => payload.len() + payload.len() / opts.frame_size.max(1) * 60 + 512,
        Codec::Zstd { .. } => payload.len() / 3 + 512,
    };
    let mut w = SegmentWriter::new(Vec::with_capacity(estimate), header, opts)?;
    w.write_all(payload)?;
    let (out, _meta) = w.finish(end, first_commit, last_commit, record_count)?;
    Ok(out)
}
