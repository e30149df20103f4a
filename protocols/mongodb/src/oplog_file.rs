//! `oplog.bson`: oplog entries as BSON documents back to back.
//!
//! The format `mongodump --oplog` writes, `mongorestore --oplogReplay`
//! reads, and `pitr oplog-fetch` produces; a MongoDB segment's payload is a
//! stretch of the same format. Each document starts with its total length
//! (int32, little-endian, the 4 length bytes and the trailing NUL included)
//! and ends with a NUL byte; nothing separates documents.
//!
//! Reading is streaming and bounded: a document may be at most
//! [`MAX_ENTRY_LEN`] bytes (the 16 MiB BSON limit plus 16 KiB, the slack
//! `mongorestore` allows for the oplog fields around a maximal document).
//! Truncation and corruption are errors naming the byte offset of the
//! document; nothing is skipped. Bytes are copied, never re-encoded.

use std::io::{self, Read, Write};

use bson::RawDocumentBuf;

use crate::entry::{validate_deep, OplogEntry, OplogEntryRef};
use crate::error::DecodeError;

/// Largest oplog entry accepted: 16 MiB + 16 KiB.
pub const MAX_ENTRY_LEN: usize = 16 * 1024 * 1024 + 16 * 1024;

/// Smallest BSON document: the length and the terminating NUL.
const MIN_DOC_LEN: usize = 5;

/// An error reading or writing an oplog file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("reading the oplog at byte offset {offset} failed: {cause}")]
    Io { offset: u64, cause: io::Error },
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

impl FileError {
    /// I/O interrupted or timed out may succeed on a retry; malformed bytes never.
    pub fn is_transient(&self) -> bool {
        match self {
            FileError::Io { cause: source, .. } => matches!(
                source.kind(),
                io::ErrorKind::Interrupted | io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ),
            FileError::Decode(_) => false,
        }
    }
}

/// Checks the framing of the document starting at `bytes[0]`; returns its
/// length. `bytes` may hold more after it.
pub fn doc_len(bytes: &[u8]) -> Result<usize, DecodeError> {
    let head: [u8; 4] = match bytes.get(..4).and_then(|b| b.try_into().ok()) {
        Some(h) => h,
        None => {
            return Err(DecodeError::new(format!(
                "truncated: {} bytes left, a document needs at least {MIN_DOC_LEN}",
                bytes.len()
            )))
        }
    };
    let len = i32::from_le_bytes(head);
    let len = usize::try_from(len).unwrap_or(0);
    if !(MIN_DOC_LEN..=MAX_ENTRY_LEN).contains(&len) {
        return Err(DecodeError::new(format!(
            "document length {} is outside {MIN_DOC_LEN}..={MAX_ENTRY_LEN}: not an oplog document (corrupt or not BSON)",
            i32::from_le_bytes(head)
        )));
    }
    if bytes.len() < len {
        return Err(DecodeError::new(format!(
            "truncated: the document is {len} bytes but only {} remain",
            bytes.len()
        )));
    }
    if bytes[len - 1] != 0 {
        return Err(DecodeError::new(
            "the document does not end with a NUL byte (corrupt)",
        ));
    }
    Ok(len)
}

/// Entries of an in-memory payload (a segment's, or a whole file), each
/// with its byte offset, header decoded; stops at the first error.
pub fn entries(payload: &[u8]) -> Entries<'_> {
    Entries {
        payload,
        offset: 0,
        failed: false,
    }
}

/// Iterator returned by [`entries`].
#[derive(Debug)]
pub struct Entries<'a> {
    payload: &'a [u8],
    offset: usize,
    failed: bool,
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<(u64, OplogEntryRef<'a>), DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.offset >= self.payload.len() {
            return None;
        }
        let at = self.offset as u64;
        let rest = &self.payload[self.offset..];
        let r = doc_len(rest).and_then(|len| {
            let e = OplogEntryRef::from_bytes(&rest[..len])?;
            Ok((len, e))
        });
        match r {
            Ok((len, e)) => {
                self.offset += len;
                Some(Ok((at, e)))
            }
            Err(err) => {
                self.failed = true;
                Some(Err(err.at_offset(at)))
            }
        }
    }
}

/// Streaming reader of an oplog file.
#[derive(Debug)]
pub struct OplogFileReader<R: Read> {
    r: R,
    offset: u64,
    /// Check every nested element, not only the header fields.
    deep: bool,
    failed: bool,
}

impl<R: Read> OplogFileReader<R> {
    /// A reader checking every element of every entry.
    pub fn new(r: R) -> OplogFileReader<R> {
        OplogFileReader {
            r,
            offset: 0,
            deep: true,
            failed: false,
        }
    }

    /// Checks only framing and header fields (faster; for trusted input).
    pub fn shallow(mut self) -> OplogFileReader<R> {
        self.deep = false;
        self
    }

    /// Byte offset of the next entry.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next entry with its byte offset; `None` at a clean end of file.
    pub fn next_entry(&mut self) -> Result<Option<(u64, OplogEntry)>, FileError> {
        if self.failed {
            return Ok(None);
        }
        let r = self.read_one();
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    fn read_one(&mut self) -> Result<Option<(u64, OplogEntry)>, FileError> {
        let at = self.offset;
        let mut head = [0u8; 4];
        let got = read_full(&mut self.r, &mut head).map_err(|source| FileError::Io {
            offset: at,
            cause: source,
        })?;
        if got == 0 {
            return Ok(None);
        }
        if got < 4 {
            return Err(DecodeError::new(format!(
                "truncated: the file ends {got} bytes into a document's length"
            ))
            .at_offset(at)
            .into());
        }
        let declared = i32::from_le_bytes(head);
        let len = usize::try_from(declared).unwrap_or(0);
        if !(MIN_DOC_LEN..=MAX_ENTRY_LEN).contains(&len) {
            return Err(DecodeError::new(format!(
                "document length {declared} is outside {MIN_DOC_LEN}..={MAX_ENTRY_LEN}: not an oplog document (corrupt or not BSON)"
            ))
            .at_offset(at)
            .into());
        }
        let mut buf = vec![0u8; len];
        buf[..4].copy_from_slice(&head);
        let got = read_full(&mut self.r, &mut buf[4..]).map_err(|source| FileError::Io {
            offset: at + 4,
            cause: source,
        })?;
        if got < len - 4 {
            return Err(DecodeError::new(format!(
                "truncated: the document is {len} bytes but the file ends after {}",
                got + 4
            ))
            .at_offset(at)
            .into());
        }
        doc_len(&buf).map_err(|e| e.at_offset(at))?;
        let raw = RawDocumentBuf::from_bytes(buf)
            .map_err(|e| DecodeError::new(format!("not a BSON document: {e}")).at_offset(at))?;
        if self.deep {
            validate_deep(&raw).map_err(|e| e.at_offset(at))?;
        }
        let entry = OplogEntry::parse(raw).map_err(|e| e.at_offset(at))?;
        self.offset += len as u64;
        Ok(Some((at, entry)))
    }
}

impl<R: Read> Iterator for OplogFileReader<R> {
    type Item = Result<(u64, OplogEntry), FileError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_entry().transpose()
    }
}

/// Reads until `buf` is full or end of file; returns the bytes read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Writes entries' exact bytes back to back.
#[derive(Debug)]
pub struct OplogFileWriter<W: Write> {
    w: W,
    written: u64,
    entries: u64,
}

impl<W: Write> OplogFileWriter<W> {
    pub fn new(w: W) -> OplogFileWriter<W> {
        OplogFileWriter {
            w,
            written: 0,
            entries: 0,
        }
    }

    /// Writes one entry's bytes (exactly one framed document).
    pub fn write_entry(&mut self, doc: &[u8]) -> Result<(), FileError> {
        let len = doc_len(doc).map_err(|e| e.at_offset(self.written))?;
        if len != doc.len() {
            return Err(DecodeError::new(format!(
                "{} bytes given for one document of {len} bytes",
                doc.len()
            ))
            .at_offset(self.written)
            .into());
        }
        self.put(doc)?;
        self.entries += 1;
        Ok(())
    }

    /// Writes a payload of entries back to back (a segment's), checking
    /// its framing first so that nothing partial is written.
    pub fn write_payload(&mut self, payload: &[u8]) -> Result<(), FileError> {
        let mut at = 0usize;
        let mut n = 0u64;
        while at < payload.len() {
            at += doc_len(&payload[at..]).map_err(|e| e.at_offset(at as u64))?;
            n += 1;
        }
        self.put(payload)?;
        self.entries += n;
        Ok(())
    }

    fn put(&mut self, b: &[u8]) -> Result<(), FileError> {
        self.w.write_all(b).map_err(|source| FileError::Io {
            offset: self.written,
            cause: source,
        })?;
        self.written += b.len() as u64;
        Ok(())
    }

    /// Bytes and entries written so far.
    pub fn written(&self) -> (u64, u64) {
        (self.written, self.entries)
    }

    /// Flushes and returns the inner writer.
    pub fn finish(mut self) -> Result<W, FileError> {
        self.w.flush().map_err(|source| FileError::Io {
            offset: self.written,
            cause: source,
        })?;
        Ok(self.w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, Timestamp};

    fn file(n: u32) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 1..=n {
            let d = RawDocumentBuf::from_document(
                &doc! {"op": "n", "ns": "", "o": {"msg": "x"}, "ts": Timestamp{time: 1, increment: i}},
            )
            .unwrap();
            out.extend_from_slice(d.as_bytes());
        }
        out
    }

    #[test]
    fn reads_and_writes_exact_bytes() {
        let f = file(3);
        let mut w = OplogFileWriter::new(Vec::new());
        for e in OplogFileReader::new(&f[..]) {
            w.write_entry(e.unwrap().1.raw_bytes()).unwrap();
        }
        assert_eq!(w.written(), (f.len() as u64, 3));
        assert_eq!(w.finish().unwrap(), f);
        assert_eq!(entries(&f).count(), 3);
    }

    #[test]
    fn truncation_and_corruption_name_the_offset() {
        let f = file(2);
        let one = f.len() / 2;
        for cut in [one + 2, one + 10, f.len() - 1] {
            let mut r = OplogFileReader::new(&f[..cut]);
            assert!(r.next_entry().unwrap().is_some());
            let e = r.next_entry().unwrap_err();
            assert!(e.to_string().contains(&format!("byte offset {one}")), "{e}");
            assert!(e.to_string().contains("truncated"), "{e}");
            assert!(!e.is_transient());
            assert!(r.next_entry().unwrap().is_none());
        }
        let mut bad = f.clone();
        bad[one..one + 4].copy_from_slice(&(200_000_000i32).to_le_bytes());
        let errs: Vec<_> = OplogFileReader::new(&bad[..])
            .filter_map(Result::err)
            .collect();
        assert_eq!(errs.len(), 1);
        assert!(errs[0].to_string().contains("outside"));
        let mut nul = f.clone();
        nul[f.len() - 1] = 1;
        assert!(OplogFileReader::new(&nul[..]).nth(1).unwrap().is_err());
        let e = entries(&nul).nth(1).unwrap().unwrap_err();
        assert_eq!(e.at.offset, Some(one as u64));
        let mut w = OplogFileWriter::new(Vec::new());
        assert!(w.write_payload(&f[..f.len() - 1]).is_err());
        assert!(w.write_entry(&f).is_err());
        assert_eq!(w.written(), (0, 0));
    }
}
