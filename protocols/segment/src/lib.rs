//! pitr's on-object segment format.
//!
//! A segment is an immutable object holding a contiguous stretch of one
//! source's transaction log (PostgreSQL WAL, MySQL/MariaDB binlog events,
//! MongoDB oplog entries), exactly as the server sent it, compressed in
//! independently decodable frames, each with its own CRC-32C, plus a footer
//! with the frame index and commit-time range, and a trailer with a
//! whole-object checksum. See [`format`] for the byte layout.
//!
//! * Build: every engine's builder seals a stretch of log into a
//!   [`SealedSegment`].
//! * Write: [`SegmentWriter`] (streaming) or [`encode`] (in memory).
//! * Read everything: [`SegmentReader`] (streaming, `std::io::Read`) or
//!   [`decode`] (in memory); both verify every checksum.
//! * Range reads: [`parse_tail`] on the end of an object, then
//!   [`decode_frame`] on one frame's bytes, [`parse_header`] on its start.
//! * Encryption at rest ([`seal`]): [`WriterOptions::seal`] writes a sealed
//!   (version 2) object; [`SegmentReader::with_keys`] / [`decode_with`]
//!   read one with its data key ([`KeySet`]).
//!
//! The crate is synchronous (`std::io`); async callers wrap it.

mod blob;
pub mod error;
pub mod format;
mod frame;
mod meta;
pub mod position;
mod range;
mod reader;
pub mod seal;
mod sealed;
mod writer;

pub use blob::{blob_key_id, is_sealed_blob, open_blob, seal_blob, BLOB_MAGIC};
pub use error::{ByteRange, Part, Result, SegmentError};
pub use format::{
    parse_header, DEFAULT_FRAME_SIZE, FORMAT_VERSION, HEADER_MAX_LEN, MAX_FRAMES, MAX_FRAME_LEN,
    SEALED_FORMAT_VERSION, TRAILER_LEN,
};
pub use frame::{decode_frame, decode_sealed_frame, ObjectKey};
pub use meta::{Codec, FrameInfo, SegmentFooter, SegmentHeader, SegmentMeta, SegmentTail};
pub use position::{Engine, Epoch, LogPos, TimestampMicros};
pub use range::{parse_tail, SUGGESTED_TAIL_LEN};
pub use reader::{decode, decode_with, SegmentReader};
pub use seal::{KeySet, Seal, SealKey};
pub use sealed::SealedSegment;
pub use writer::{encode, SegmentWriter, WriterOptions};
