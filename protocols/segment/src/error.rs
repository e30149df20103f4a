//! Errors of the segment format.
//!
//! Every corruption error names the part of the object that is bad
//! ([`Part`]: header, frame N, footer, trailer) and the byte range
//! ([`ByteRange`], offsets into the whole object) where it was found, so a
//! caller that names the object in its own error can point at the exact bytes.
//!
//! Classification: only [`SegmentError::Io`] with a retryable
//! [`std::io::ErrorKind`] is transient (re-fetch the object and try again);
//! every other error is definite — the bytes are wrong and reading them again
//! will not help.

use std::fmt;
use std::io;

/// The part of a segment object an error refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    Header,
    /// Payload frame with this zero-based index.
    Frame(u32),
    Footer,
    Trailer,
    /// The object as a whole (whole-object checksum, trailing data).
    Object,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Part::Header => f.write_str("header"),
            Part::Frame(n) => write!(f, "frame {n}"),
            Part::Footer => f.write_str("footer"),
            Part::Trailer => f.write_str("trailer"),
            Part::Object => f.write_str("object"),
        }
    }
}

/// A half-open byte range `start..end` within a segment object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    pub const fn new(start: u64, end: u64) -> ByteRange {
        ByteRange { start, end }
    }

    /// `start..start+len` (saturating).
    pub const fn at(start: u64, len: u64) -> ByteRange {
        ByteRange {
            start,
            end: start.saturating_add(len),
        }
    }

    pub const fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    pub const fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    /// True when `offset` lies inside the range.
    pub const fn contains(&self, offset: u64) -> bool {
        self.start <= offset && offset < self.end
    }
}

impl fmt::Display for ByteRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bytes {}..{}", self.start, self.end)
    }
}

/// Everything that can go wrong writing or reading a segment.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// The object ended inside `part`: `range` is what was needed,
    /// `available` the object length seen.
    #[error("{part} truncated: needed {range} but the object ends at byte {available}")]
    Truncated {
        part: Part,
        range: ByteRange,
        available: u64,
    },
    /// A magic number is wrong: not a segment, or not at a part boundary.
    #[error("{part}: bad magic at {range}")]
    BadMagic { part: Part, range: ByteRange },
    /// The object was written by a newer (or unknown) format version.
    #[error("unsupported segment format version {version} at {range} of the {part}")]
    UnsupportedVersion {
        part: Part,
        version: u16,
        range: ByteRange,
    },
    /// A field uses a value this build does not implement (codec, flags, encryption).
    #[error("{part}: unsupported {what} at {range}")]
    Unsupported {
        part: Part,
        range: ByteRange,
        what: String,
    },
    /// A CRC-32C over `range` does not match the stored value.
    #[error(
        "{part}: checksum mismatch over {range}: stored {stored:08x}, computed {computed:08x}"
    )]
    ChecksumMismatch {
        part: Part,
        range: ByteRange,
        stored: u32,
        computed: u32,
    },
    /// Fields are individually well-formed but inconsistent or out of bounds.
    #[error("{part}: invalid at {range}: {reason}")]
    Invalid {
        part: Part,
        range: ByteRange,
        reason: String,
    },
    /// A frame's checksum matched but its compressed bytes did not decode
    /// to exactly its stated length.
    #[error("{part}: decompression failed at {range}: {reason}")]
    Decompress {
        part: Part,
        range: ByteRange,
        reason: String,
    },
    /// A sealed frame did not authenticate: its bytes were altered, or the
    /// data key given under its key id is not the one it was sealed with.
    #[error("{part}: the encrypted bytes at {range} do not authenticate: they were altered, or the data key is not the one they were sealed with")]
    NotAuthentic { part: Part, range: ByteRange },
    /// The object is sealed with a data key the reader was not given.
    #[error("the segment is encrypted with data key {key_id}, which was not given")]
    KeyNeeded { key_id: u32 },
    /// Bytes follow the trailer.
    #[error("object: unexpected data after the trailer at {range}")]
    TrailingData { range: ByteRange },
    /// [`crate::parse_tail`] needs the last `needed` bytes of the object.
    #[error("tail too short: the last {needed} bytes of the object are needed")]
    NeedMoreTail { needed: u64 },
    /// The writer was called with arguments the format cannot represent.
    #[error("invalid segment writer input: {0}")]
    InvalidInput(String),
    /// The underlying reader or writer failed at object byte `offset`.
    #[error("I/O error at object byte {offset}: {cause}")]
    Io { offset: u64, cause: io::Error },
}

impl SegmentError {
    /// True only for I/O failures worth retrying (interrupted, timed out,
    /// connection dropped). Corruption is never transient.
    pub fn is_transient(&self) -> bool {
        match self {
            SegmentError::Io { cause: source, .. } => matches!(
                source.kind(),
                io::ErrorKind::Interrupted
                    | io::ErrorKind::TimedOut
                    | io::ErrorKind::WouldBlock
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::NotConnected
                    | io::ErrorKind::BrokenPipe
            ),
            _ => false,
        }
    }

    /// The part of the object the error refers to, if any.
    pub fn part(&self) -> Option<Part> {
        match self {
            SegmentError::Truncated { part, .. }
            | SegmentError::BadMagic { part, .. }
            | SegmentError::UnsupportedVersion { part, .. }
            | SegmentError::Unsupported { part, .. }
            | SegmentError::ChecksumMismatch { part, .. }
            | SegmentError::Invalid { part, .. }
            | SegmentError::Decompress { part, .. }
            | SegmentError::NotAuthentic { part, .. } => Some(*part),
            SegmentError::TrailingData { .. } => Some(Part::Object),
            SegmentError::KeyNeeded { .. } => Some(Part::Header),
            SegmentError::NeedMoreTail { .. }
            | SegmentError::InvalidInput(_)
            | SegmentError::Io { .. } => None,
        }
    }

    /// The byte range of the object the error refers to, if any.
    pub fn range(&self) -> Option<ByteRange> {
        match self {
            SegmentError::Truncated { range, .. }
            | SegmentError::BadMagic { range, .. }
            | SegmentError::UnsupportedVersion { range, .. }
            | SegmentError::Unsupported { range, .. }
            | SegmentError::ChecksumMismatch { range, .. }
            | SegmentError::Invalid { range, .. }
            | SegmentError::Decompress { range, .. }
            | SegmentError::NotAuthentic { range, .. }
            | SegmentError::TrailingData { range } => Some(*range),
            SegmentError::Io { offset, .. } => Some(ByteRange::at(*offset, 0)),
            SegmentError::KeyNeeded { .. }
            | SegmentError::NeedMoreTail { .. }
            | SegmentError::InvalidInput(_) => None,
        }
    }

    /// Extracts the segment error carried by an `io::Error` returned from
    /// [`crate::SegmentReader`]'s `Read`/`BufRead` implementation.
    pub fn from_io(err: &io::Error) -> Option<&SegmentError> {
        err.get_ref()
            .and_then(|inner| inner.downcast_ref::<SegmentError>())
    }

    /// Wraps into an `io::Error` for the `Read` implementation: I/O errors
    /// keep their kind, corruption becomes `InvalidData`.
    pub(crate) fn into_io(self) -> io::Error {
        let kind = match &self {
            SegmentError::Io { cause: source, .. } => source.kind(),
            SegmentError::Truncated { .. } => io::ErrorKind::UnexpectedEof,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, self)
    }

    pub(crate) fn invalid(part: Part, range: ByteRange, reason: impl Into<String>) -> Self {
        SegmentError::Invalid {
            part,
            range,
            reason: reason.into(),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = SegmentError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_only_for_retryable_io() {
        let t = SegmentError::Io {
            offset: 5,
            cause: io::Error::new(io::ErrorKind::TimedOut, "slow"),
        };
        assert!(t.is_transient());
        let d = SegmentError::Io {
            offset: 5,
            cause: io::Error::new(io::ErrorKind::PermissionDenied, "no"),
        };
        assert!(!d.is_transient());
        let c = SegmentError::ChecksumMismatch {
            part: Part::Frame(2),
            range: ByteRange::new(10, 20),
            stored: 1,
            computed: 2,
        };
        assert!(!c.is_transient());
        assert_eq!(c.part(), Some(Part::Frame(2)));
        assert_eq!(c.range(), Some(ByteRange::new(10, 20)));
        let msg = c.to_string();
        assert!(
            msg.contains("frame 2") && msg.contains("bytes 10..20"),
            "{msg}"
        );
    }

    #[test]
    fn io_wrapping_roundtrips() {
        let e = SegmentError::BadMagic {
            part: Part::Trailer,
            range: ByteRange::new(1, 9),
        }
        .into_io();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let inner = SegmentError::from_io(&e).expect("segment error inside");
        assert_eq!(inner.part(), Some(Part::Trailer));
    }
}
