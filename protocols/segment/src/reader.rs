//! Streaming segment reader.
//!
//! [`SegmentReader`] reads and verifies the header when created, then yields
//! the raw log bytes frame by frame (via `std::io::Read`/`BufRead` or the
//! typed [`SegmentReader::next_chunk`]), checking every frame's checksums
//! before handing out any of its bytes. On reaching the footer it checks the
//! frame index against the frames it saw, the trailer, the whole-object
//! checksum and that nothing follows the trailer; only then does it report
//! end of data and expose [`SegmentReader::meta`]. A caller that consumes to
//! end of data has therefore verified the whole object.
//!
//! Memory stays bounded on any input: at most one frame's stored and raw
//! bytes (each bounded by the `MAX_*` limits of [`crate::format`], and the
//! stored buffer grows only as bytes actually arrive) plus the frame index.
//! The inner reader should be blocking; after any error the reader is
//! finished and returns that error again (re-fetch the object to retry).
//!
//! A sealed (version 2) object needs its data key: [`SegmentReader::with_keys`]
//! opens every frame (checksum first, then the AEAD tag) before handing out
//! its bytes; without the key the reader fails at once, naming the key id.

use std::io::{self, BufRead, Read};

use crate::error::{ByteRange, Part, Result, SegmentError};
use crate::format::{
    footer_len_from_fixed, header_len_from_fixed, parse_footer, parse_header_salted, parse_trailer,
    FOOTER_FIXED_LEN, FOOTER_MAGIC, FORMAT_VERSION, FRAME_HEADER_LEN, FRAME_MAGIC,
    HEADER_FIXED_LEN, MAX_FRAMES, SEALED_FORMAT_VERSION, TRAILER_LEN,
};
use crate::frame::{check_stored_crc, FrameDecoder, FrameHeader};
use crate::meta::{FrameInfo, SegmentHeader, SegmentMeta};
use crate::seal::{FrameCipher, KeySet};

/// Growth step of the stored-bytes buffer: it never runs ahead of the
/// bytes actually received by more than this or its current size.
const GROW_STEP: usize = 1 << 20;

enum State {
    Frames,
    Done,
    Failed(String),
}

/// Reads a segment object from a byte stream, yielding its raw log bytes.
pub struct SegmentReader<R: Read> {
    inner: R,
    /// Object bytes consumed so far.
    pos: u64,
    /// CRC-32C of the object bytes consumed so far (trailer excluded).
    crc: u32,
    header: SegmentHeader,
    header_len: usize,
    decoder: FrameDecoder,
    frames: Vec<FrameInfo>,
    raw_total: u64,
    /// Stored bytes of the current frame (its length only ever grows).
    stored: Vec<u8>,
    /// Raw bytes of the current frame and how many were handed out.
    buf: Vec<u8>,
    buf_pos: usize,
    state: State,
    meta: Option<SegmentMeta>,
}

impl<R: Read> SegmentReader<R> {
    /// Reads and verifies the header of a plain object (a sealed one fails
    /// with [`SegmentError::KeyNeeded`]).
    pub fn new(inner: R) -> Result<SegmentReader<R>> {
        SegmentReader::with_keys(inner, &KeySet::default())
    }

    /// Reads and verifies the header; a sealed object's data key must be
    /// in `keys`.
    pub fn with_keys(inner: R, keys: &KeySet) -> Result<SegmentReader<R>> {
        let mut r = SegmentReader {
            inner,
            pos: 0,
            crc: 0,
            header: SegmentHeader {
                engine: crate::Engine::Postgres,
                source_id: String::new(),
                epoch: crate::Epoch(0),
                start: crate::LogPos::ZERO,
                codec: crate::Codec::None,
                key_id: 0,
            },
            header_len: 0,
            decoder: FrameDecoder::default(),
            frames: Vec::new(),
            raw_total: 0,
            stored: Vec::new(),
            buf: Vec::new(),
            buf_pos: 0,
            state: State::Frames,
            meta: None,
        };
        let mut hb = vec![0u8; HEADER_FIXED_LEN];
        r.read_tracked(&mut hb, Part::Header, true)?;
        let len = header_len_from_fixed(&hb)?;
        hb.resize(len, 0);
        r.read_tracked(&mut hb[HEADER_FIXED_LEN..], Part::Header, true)?;
        let (header, header_len, salt) = parse_header_salted(&hb)?;
        if let Some(salt) = salt {
            let key = keys.get(header.key_id).ok_or(SegmentError::KeyNeeded {
                key_id: header.key_id,
            })?;
            r.decoder = FrameDecoder::new(Some(FrameCipher::new(key, &salt)?));
        }
        r.header = header;
        r.header_len = header_len;
        Ok(r)
    }

    /// The verified header.
    pub fn header(&self) -> &SegmentHeader {
        &self.header
    }

    /// Header length in bytes (= offset of the first frame).
    pub fn header_len(&self) -> usize {
        self.header_len
    }

    /// Metadata of the object, once everything has been read and verified.
    pub fn meta(&self) -> Option<&SegmentMeta> {
        self.meta.as_ref()
    }

    /// Frames read and verified so far.
    pub fn frames(&self) -> &[FrameInfo] {
        &self.frames
    }

    /// Object bytes consumed from the inner reader so far.
    pub fn object_offset(&self) -> u64 {
        self.pos
    }

    pub fn into_inner(self) -> R {
        self.inner
    }

    /// The next verified run of raw log bytes (the rest of the current
    /// frame), or `None` once the whole object has been read and verified.
    pub fn next_chunk(&mut self) -> Result<Option<&[u8]>> {
        if !self.fill()? {
            return Ok(None);
        }
        let start = self.buf_pos;
        self.buf_pos = self.buf.len();
        Ok(Some(&self.buf[start..]))
    }

    /// Reads everything that is left and returns the verified metadata.
    pub fn verify_to_end(&mut self) -> Result<&SegmentMeta> {
        while self.fill()? {
            self.buf_pos = self.buf.len();
        }
        self.meta.as_ref().ok_or_else(|| {
            SegmentError::invalid(
                Part::Object,
                ByteRange::at(self.pos, 0),
                "no metadata after end",
            )
        })
    }

    /// Makes raw bytes available in `buf`; false at verified end of data.
    fn fill(&mut self) -> Result<bool> {
        loop {
            if self.buf_pos < self.buf.len() {
                return Ok(true);
            }
            match &self.state {
                State::Frames => {}
                State::Done => return Ok(false),
                State::Failed(msg) => {
                    return Err(SegmentError::invalid(
                        Part::Object,
                        ByteRange::at(self.pos, 0),
                        format!("reader already failed: {msg}"),
                    ))
                }
            }
            if let Err(e) = self.next_block(None) {
                self.fail(&e);
                return Err(e);
            }
        }
    }

    fn fail(&mut self, e: &SegmentError) {
        self.state = State::Failed(e.to_string());
        self.buf.clear();
        self.buf_pos = 0;
    }

    /// Appends the rest of the payload to `out`, decoding frames straight
    /// into it, and returns the verified metadata. On error, `out` holds the
    /// verified frames before the bad part.
    pub fn read_all_into(&mut self, out: &mut Vec<u8>) -> Result<&SegmentMeta> {
        if self.buf_pos < self.buf.len() {
            out.extend_from_slice(&self.buf[self.buf_pos..]);
            self.buf_pos = self.buf.len();
        }
        loop {
            match &self.state {
                State::Frames => {}
                State::Done => break,
                State::Failed(_) => {
                    self.fill()?;
                }
            }
            if let Err(e) = self.next_block(Some(out)) {
                self.fail(&e);
                return Err(e);
            }
        }
        self.verify_to_end()
    }

    /// Reads the next frame into `buf` (or appends it to `append_to`), or
    /// the footer and trailer.
    fn next_block(&mut self, append_to: Option<&mut Vec<u8>>) -> Result<()> {
        let start = self.pos;
        let index = self.frames.len() as u32;
        let mut fh = [0u8; FRAME_HEADER_LEN];
        self.read_tracked(&mut fh[..4], Part::Frame(index), true)?;
        if fh[..4] == FRAME_MAGIC {
            self.read_tracked(&mut fh[4..], Part::Frame(index), true)?;
            self.read_frame(&fh, start, index, append_to)
        } else if fh[..4] == FOOTER_MAGIC {
            self.read_footer(&fh[..4], start)
        } else {
            Err(SegmentError::BadMagic {
                part: Part::Frame(index),
                range: ByteRange::at(start, 4),
            })
        }
    }

    fn read_frame(
        &mut self,
        fh: &[u8],
        start: u64,
        index: u32,
        append_to: Option<&mut Vec<u8>>,
    ) -> Result<()> {
        let part = Part::Frame(index);
        let h = FrameHeader::parse(fh, start, index, self.decoder.tag_len())?;
        if self.frames.len() >= MAX_FRAMES {
            return Err(SegmentError::invalid(
                part,
                ByteRange::at(start, 4),
                format!("more than {MAX_FRAMES} frames"),
            ));
        }
        if h.codec_id != self.header.codec.id() {
            return Err(SegmentError::invalid(
                part,
                ByteRange::at(start + 4, 1),
                format!(
                    "frame codec id {} differs from the header's {}",
                    h.codec_id,
                    self.header.codec.id()
                ),
            ));
        }
        if h.raw_offset != self.raw_total {
            return Err(SegmentError::invalid(
                part,
                ByteRange::at(start + 16, 8),
                format!(
                    "raw offset {} but {} raw bytes precede this frame",
                    h.raw_offset, self.raw_total
                ),
            ));
        }
        let clen = h.compressed_len as usize;
        self.read_stored(clen, part)?;
        let stored = &self.stored[..clen];
        let crc = crc32c::crc32c(stored);
        check_stored_crc(&h, crc, clen, start, index)?;
        // extend the object checksum from the frame checksum, no second pass
        self.crc = crc32c::crc32c_combine(self.crc, crc, clen);
        match append_to {
            None => {
                self.decoder
                    .decode(&h, stored, start, index, &mut self.buf)?;
                self.buf_pos = 0;
            }
            Some(out) => {
                let at = out.len();
                out.resize(at + h.uncompressed_len as usize, 0);
                let r = self
                    .decoder
                    .decode_into(&h, stored, start, index, &mut out[at..]);
                if r.is_err() {
                    out.truncate(at);
                }
                r?;
            }
        }
        self.frames.push(h.info(index, start));
        self.raw_total += u64::from(h.uncompressed_len);
        Ok(())
    }

    /// Reads `len` stored bytes into `self.stored[..len]`, growing the
    /// buffer only as bytes arrive.
    fn read_stored(&mut self, len: usize, part: Part) -> Result<()> {
        let start = self.pos;
        let mut filled = 0;
        while filled < len {
            if self.stored.len() <= filled {
                let grow = (len - filled).min(filled.max(GROW_STEP));
                self.stored.resize(filled + grow, 0);
            }
            let end = self.stored.len().min(len);
            match self.inner.read(&mut self.stored[filled..end]) {
                Ok(0) => {
                    return Err(SegmentError::Truncated {
                        part,
                        range: ByteRange::at(start, len as u64),
                        available: start + filled as u64,
                    })
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(SegmentError::Io {
                        offset: start + filled as u64,
                        cause: source,
                    })
                }
            }
        }
        // the caller extends the object checksum from the frame checksum
        self.pos += len as u64;
        Ok(())
    }

    fn read_footer(&mut self, magic: &[u8], start: u64) -> Result<()> {
        let mut fb = vec![0u8; FOOTER_FIXED_LEN];
        fb[..4].copy_from_slice(magic);
        self.read_tracked(&mut fb[4..], Part::Footer, true)?;
        let len = footer_len_from_fixed(&fb, start)?;
        let count = (len - FOOTER_FIXED_LEN - 4) / crate::format::FRAME_ENTRY_LEN;
        if count != self.frames.len() {
            return Err(SegmentError::invalid(
                Part::Footer,
                ByteRange::at(start + 56, 4),
                format!(
                    "footer lists {count} frames but the object holds {}",
                    self.frames.len()
                ),
            ));
        }
        fb.resize(len, 0);
        self.read_tracked(&mut fb[FOOTER_FIXED_LEN..], Part::Footer, true)?;
        let footer = parse_footer(&fb, start)?;
        if footer.frames != self.frames {
            return Err(SegmentError::invalid(
                Part::Footer,
                ByteRange::at(
                    start + FOOTER_FIXED_LEN as u64,
                    (len - FOOTER_FIXED_LEN - 4) as u64,
                ),
                "frame index differs from the frames in the object",
            ));
        }
        if footer.end < self.header.start {
            return Err(SegmentError::invalid(
                Part::Footer,
                ByteRange::at(start + 4, 16),
                format!(
                    "end position {} is before the start position {}",
                    footer.end, self.header.start
                ),
            ));
        }
        let object_crc = self.crc;
        let trailer_at = self.pos;
        let mut tb = [0u8; TRAILER_LEN];
        self.read_tracked(&mut tb, Part::Trailer, false)?;
        let t = parse_trailer(&tb, trailer_at)?;
        let header_version = if self.header.key_id == 0 {
            FORMAT_VERSION
        } else {
            SEALED_FORMAT_VERSION
        };
        if t.version != header_version {
            return Err(SegmentError::invalid(
                Part::Trailer,
                ByteRange::at(trailer_at + 12, 2),
                format!(
                    "trailer says format version {} but the header {header_version}",
                    t.version
                ),
            ));
        }
        if t.footer_offset != start {
            return Err(SegmentError::invalid(
                Part::Trailer,
                ByteRange::at(trailer_at, 8),
                format!(
                    "footer offset {} but the footer is at {start}",
                    t.footer_offset
                ),
            ));
        }
        if t.object_crc != object_crc {
            return Err(SegmentError::ChecksumMismatch {
                part: Part::Object,
                range: ByteRange::new(0, trailer_at),
                stored: t.object_crc,
                computed: object_crc,
            });
        }
        let end = self.pos;
        let mut probe = [0u8; 1];
        loop {
            match self.inner.read(&mut probe) {
                Ok(0) => break,
                Ok(_) => {
                    return Err(SegmentError::TrailingData {
                        range: ByteRange::at(end, 1),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(SegmentError::Io {
                        offset: end,
                        cause: source,
                    })
                }
            }
        }
        self.meta = Some(SegmentMeta {
            header: self.header.clone(),
            footer,
            total_len: end,
        });
        self.buf.clear();
        self.buf_pos = 0;
        self.state = State::Done;
        Ok(())
    }

    /// Fills `out` from the inner reader, tracking the object offset and
    /// (if `crc`) the whole-object checksum.
    fn read_tracked(&mut self, out: &mut [u8], part: Part, crc: bool) -> Result<()> {
        let start = self.pos;
        let mut filled = 0;
        while filled < out.len() {
            match self.inner.read(&mut out[filled..]) {
                Ok(0) => {
                    return Err(SegmentError::Truncated {
                        part,
                        range: ByteRange::at(start, out.len() as u64),
                        available: start + filled as u64,
                    })
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(SegmentError::Io {
                        offset: start + filled as u64,
                        cause: source,
                    })
                }
            }
        }
        if crc {
            self.crc = crc32c::crc32c_append(self.crc, out);
        }
        self.pos += out.len() as u64;
        Ok(())
    }
}

impl<R: Read> Read for SegmentReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if !self.fill().map_err(SegmentError::into_io)? {
            return Ok(0);
        }
        let avail = &self.buf[self.buf_pos..];
        let n = avail.len().min(out.len());
        out[..n].copy_from_slice(&avail[..n]);
        self.buf_pos += n;
        Ok(n)
    }
}

impl<R: Read> BufRead for SegmentReader<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if !self.fill().map_err(SegmentError::into_io)? {
            return Ok(&[]);
        }
        Ok(&self.buf[self.buf_pos..])
    }

    fn consume(&mut self, amt: usize) {
        self.buf_pos = (self.buf_pos + amt).min(self.buf.len());
    }
}

/// Decodes and verifies a whole plain segment held in memory.
pub fn decode(object: &[u8]) -> Result<(SegmentMeta, Vec<u8>)> {
    decode_with(object, &KeySet::default())
}

/// Decodes and verifies a whole segment held in memory, opening a sealed
/// one with its data key from `keys`.
pub fn decode_with(object: &[u8], keys: &KeySet) -> Result<(SegmentMeta, Vec<u8>)> {
    let mut r = SegmentReader::with_keys(object, keys)?;
    // Size hint from the footer, if it parses; bounded so that a lying
    // footer cannot make us reserve much more than the object suggests.
    let hint = crate::parse_tail(object, object.len() as u64)
        .map_or(0, |t| t.footer.payload_len())
        .min(object.len() as u64 * 16 + (1 << 20));
    let mut payload = Vec::with_capacity(hint as usize);
    r.read_all_into(&mut payload)?;
    match r.meta {
        Some(meta) => Ok((meta, payload)),
        None => Err(SegmentError::invalid(
            Part::Object,
            ByteRange::at(r.pos, 0),
            "no metadata after end",
        )),
    }
}
