//! Metadata types of a segment: what the header, footer and frame index say.
//!
//! These are the decoded, engine-neutral views of the on-disk structures
//! described in [`crate::format`]. [`SegmentMeta`] is what both the writer
//! (on `finish`) and every reader return, and the two are equal for the same
//! object: it describes exactly what is stored.

use std::ops::Range;

use crate::format::FRAME_HEADER_LEN;
use crate::position::{Engine, Epoch, LogPos, TimestampMicros};

/// Compression codec of a segment's frames.
///
/// Only the codec id is stored on disk (0 = none, 1 = zstd). The zstd level
/// is a writer setting: a decoded header always reports
/// `Codec::Zstd { level: 0 }` ([`Codec::ZSTD_STORED`]), and so does the
/// metadata returned by the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    None,
    Zstd { level: i32 },
}

impl Codec {
    /// Default codec: zstd level 1.
    pub const DEFAULT: Codec = Codec::Zstd { level: 1 };
    /// How a zstd segment's codec reads back (the level is not stored).
    pub const ZSTD_STORED: Codec = Codec::Zstd { level: 0 };

    /// On-disk codec id.
    pub fn id(self) -> u8 {
        match self {
            Codec::None => 0,
            Codec::Zstd { .. } => 1,
        }
    }

    /// Decodes an on-disk codec id (zstd comes back as [`Codec::ZSTD_STORED`]).
    pub fn from_id(id: u8) -> Option<Codec> {
        match id {
            0 => Some(Codec::None),
            1 => Some(Codec::ZSTD_STORED),
            _ => None,
        }
    }

    /// This codec as it reads back from disk (level dropped).
    pub fn stored(self) -> Codec {
        match self {
            Codec::None => Codec::None,
            Codec::Zstd { .. } => Codec::ZSTD_STORED,
        }
    }

    /// Lower-case name for messages and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Zstd { .. } => "zstd",
        }
    }
}

impl Default for Codec {
    fn default() -> Self {
        Codec::DEFAULT
    }
}

/// What the fixed header of a segment says.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SegmentHeader {
    pub engine: Engine,
    /// Source identity (PostgreSQL system identifier, MySQL server_uuid,
    /// MongoDB replica set name...), at most 255 bytes of UTF-8.
    pub source_id: String,
    pub epoch: Epoch,
    /// Position of the first payload byte.
    pub start: LogPos,
    pub codec: Codec,
    /// Encryption key id; 0 = unencrypted (the only value version 1 supports).
    pub key_id: u32,
}

/// One payload frame, as recorded in the footer's frame index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameInfo {
    /// Zero-based position in the frame index (not stored: implied by the
    /// entry's place in the index).
    pub index: u32,
    /// Object offset of the frame header.
    pub offset: u64,
    /// Length of the stored (compressed) bytes after the frame header.
    pub compressed_len: u32,
    /// Length of the raw log bytes the frame decodes to.
    pub uncompressed_len: u32,
    /// Offset of the frame's first raw byte within the segment's payload.
    pub raw_offset: u64,
    /// CRC-32C of the stored (compressed) bytes.
    pub crc: u32,
}

impl FrameInfo {
    /// Object byte range of the whole frame (header + stored bytes): the range
    /// to fetch for [`crate::decode_frame`].
    pub fn range(&self) -> Range<u64> {
        self.offset..self.end()
    }

    /// Object offset just past this frame.
    pub fn end(&self) -> u64 {
        self.offset
            .saturating_add(FRAME_HEADER_LEN as u64 + u64::from(self.compressed_len))
    }

    /// Range of payload (raw log) bytes this frame holds.
    pub fn raw_range(&self) -> Range<u64> {
        self.raw_offset
            ..self
                .raw_offset
                .saturating_add(u64::from(self.uncompressed_len))
    }
}

/// What the footer of a segment says.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SegmentFooter {
    /// Position just past the last payload byte.
    pub end: LogPos,
    /// Commit time of the first transaction in the segment, if it has one.
    pub first_commit: Option<TimestampMicros>,
    /// Commit time of the last transaction in the segment, if it has one.
    pub last_commit: Option<TimestampMicros>,
    /// Number of log records (engine-defined) in the payload.
    pub record_count: u64,
    /// Frame index, in payload order.
    pub frames: Vec<FrameInfo>,
}

impl SegmentFooter {
    /// Total raw payload bytes (sum of the frames' uncompressed lengths).
    pub fn payload_len(&self) -> u64 {
        self.frames
            .iter()
            .map(|f| u64::from(f.uncompressed_len))
            .sum()
    }

    /// Index of the frame holding payload byte `raw_offset`, if any.
    pub fn frame_for_raw_offset(&self, raw_offset: u64) -> Option<usize> {
        let idx = self
            .frames
            .partition_point(|f| f.raw_range().end <= raw_offset);
        (idx < self.frames.len() && self.frames[idx].raw_offset <= raw_offset).then_some(idx)
    }
}

/// Everything known about a complete, verified segment object.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SegmentMeta {
    pub header: SegmentHeader,
    pub footer: SegmentFooter,
    /// Length of the whole object in bytes.
    pub total_len: u64,
}

/// What [`crate::parse_tail`] learns from the end of an object: the footer
/// and where everything is, without reading the header or the frames.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SegmentTail {
    pub footer: SegmentFooter,
    /// Format version recorded in the trailer.
    pub version: u16,
    /// Object offset of the footer.
    pub footer_offset: u64,
    /// Length of the footer in bytes.
    pub footer_len: u32,
    /// Length of the header (= offset of the first frame): fetch
    /// `0..header_len` and pass it to [`crate::parse_header`].
    pub header_len: u64,
    /// Stored CRC-32C of every object byte before the trailer.
    pub object_crc: u32,
    /// Total length of the object.
    pub total_len: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(raw_offset: u64, len: u32) -> FrameInfo {
        FrameInfo {
            index: 0,
            offset: 100 + raw_offset,
            compressed_len: len,
            uncompressed_len: len,
            raw_offset,
            crc: 0,
        }
    }

    #[test]
    fn frame_lookup_by_raw_offset() {
        let footer = SegmentFooter {
            end: LogPos::ZERO,
            first_commit: None,
            last_commit: None,
            record_count: 0,
            frames: vec![frame(0, 10), frame(10, 5), frame(15, 1)],
        };
        assert_eq!(footer.payload_len(), 16);
        assert_eq!(footer.frame_for_raw_offset(0), Some(0));
        assert_eq!(footer.frame_for_raw_offset(9), Some(0));
        assert_eq!(footer.frame_for_raw_offset(10), Some(1));
        assert_eq!(footer.frame_for_raw_offset(14), Some(1));
        assert_eq!(footer.frame_for_raw_offset(15), Some(2));
        assert_eq!(footer.frame_for_raw_offset(16), None);
    }

    #[test]
    fn codec_ids() {
        assert_eq!(Codec::from_id(Codec::None.id()), Some(Codec::None));
        assert_eq!(
            Codec::from_id(Codec::Zstd { level: 7 }.id()),
            Some(Codec::ZSTD_STORED)
        );
        assert_eq!(Codec::from_id(2), None);
        assert_eq!(Codec::default(), Codec::Zstd { level: 1 });
    }
}
