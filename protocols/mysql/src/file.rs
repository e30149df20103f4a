//! Rebuilds binlog files from streamed events.
//!
//! A binlog file is the 4-byte magic `\xfe b i n` followed by the events
//! back to back; each event's `log_pos` is the offset right after it. The
//! first event is the FORMAT_DESCRIPTION, whose `LOG_EVENT_BINLOG_IN_USE_F`
//! flag is set while the server still writes the file and cleared when it
//! closes it. Its CRC32 is computed with that flag cleared, so clearing it
//! here yields the bytes of a cleanly closed file without touching the CRC.
//! The result is readable by `mysqlbinlog` / `mariadb-binlog`.

use crate::client::{RawEvent, StartFrom};
use crate::error::{ErrorKind, MysqlError, Result};
use crate::event::{types, EventHeader, LOG_EVENT_BINLOG_IN_USE_F};
use crate::pos::{BinlogFile, BinlogPos, FIRST_EVENT_OFFSET};

/// The magic that starts every binlog file.
pub const BINLOG_MAGIC: [u8; 4] = [0xfe, b'b', b'i', b'n'];

/// Clears the in-use flag if `event` is a FORMAT_DESCRIPTION event.
pub fn clear_in_use_flag(event: &mut [u8]) {
    if event.len() > 18 && event[4] == types::FORMAT_DESCRIPTION {
        event[17] &= !(LOG_EVENT_BINLOG_IN_USE_F as u8);
    }
}

/// Accumulates the events of one binlog file, checking they are contiguous.
#[derive(Debug, Clone)]
pub struct BinlogFileWriter {
    file: BinlogFile,
    buf: Vec<u8>,
}

impl BinlogFileWriter {
    /// An empty file (magic only) named `file`.
    pub fn new(file: BinlogFile) -> BinlogFileWriter {
        BinlogFileWriter {
            file,
            buf: BINLOG_MAGIC.to_vec(),
        }
    }

    pub fn file(&self) -> &BinlogFile {
        &self.file
    }

    /// Offset where the next event must start.
    pub fn offset(&self) -> u64 {
        self.buf.len() as u64
    }

    /// Appends one streamed event. Artificial events are skipped (returns
    /// `false`); an event of another file or not starting at [`Self::offset`]
    /// is an error.
    pub fn push(&mut self, ev: &RawEvent) -> Result<bool> {
        if ev.artificial {
            return Ok(false);
        }
        if ev.next_pos.file != self.file {
            return Err(self.err(format!(
                "event of file {} pushed into file {}",
                ev.next_pos.file, self.file
            )));
        }
        self.push_bytes(&ev.bytes)?;
        Ok(true)
    }

    /// Appends one stored event (exact bytes); its `log_pos` must equal the
    /// offset right after it.
    pub fn push_bytes(&mut self, event: &[u8]) -> Result<()> {
        let header = EventHeader::parse(event).map_err(|e| self.err(e.to_string()))?;
        let end = self.offset() + event.len() as u64;
        if header.event_size as usize != event.len() || u64::from(header.log_pos) != end {
            return Err(self.err(format!(
                "event of type {} ({} bytes, log_pos {}) does not continue the file at offset {}",
                header.type_code,
                event.len(),
                header.log_pos,
                self.offset()
            )));
        }
        let start = self.buf.len();
        self.buf.extend_from_slice(event);
        clear_in_use_flag(&mut self.buf[start..]);
        Ok(())
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    fn err(&self, msg: String) -> MysqlError {
        MysqlError::new(
            ErrorKind::Protocol,
            format!("cannot rebuild binlog file: {msg}; the events are not a contiguous stretch of one file"),
        )
        .with_position(StartFrom::Position(BinlogPos {
            file: self.file.clone(),
            offset: self.offset(),
        }))
    }
}

/// Rebuilds every complete file covered by `events` (a stream from the start
/// of a file, e.g. [`StartFrom::Beginning`]). Files are returned in order; a
/// file whose first event does not start at offset 4 is an error.
pub fn rebuild_files<'a>(
    events: impl IntoIterator<Item = &'a RawEvent>,
) -> Result<Vec<(BinlogFile, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut cur: Option<BinlogFileWriter> = None;
    for ev in events {
        if ev.artificial {
            continue;
        }
        let same = cur.as_ref().is_some_and(|w| *w.file() == ev.next_pos.file);
        if !same {
            if let Some(w) = cur.take() {
                out.push((w.file.clone(), w.into_bytes()));
            }
            let w = BinlogFileWriter::new(ev.next_pos.file.clone());
            debug_assert_eq!(w.offset(), FIRST_EVENT_OFFSET);
            cur = Some(w);
        }
        if let Some(w) = cur.as_mut() {
            w.push(ev)?;
        }
    }
    if let Some(w) = cur {
        out.push((w.file.clone(), w.into_bytes()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::tests::{build, fde_body};
    use crate::event::{checksum_matches, DecodeCtx};
    use bytes::Bytes;

    fn raw(file: &str, offset: &mut u64, t: u8, flags: u16, body: &[u8]) -> RawEvent {
        let mut bytes = build(t, 1, 0, flags, body, true);
        *offset += bytes.len() as u64;
        bytes[13..17].copy_from_slice(&(*offset as u32).to_le_bytes());
        let n = bytes.len();
        let mut crc_input = bytes[..n - 4].to_vec();
        clear_in_use_flag(&mut crc_input);
        let c = crate::event::compute_checksum(&crc_input);
        bytes[n - 4..].copy_from_slice(&c.to_le_bytes());
        RawEvent {
            header: EventHeader::parse(&bytes).unwrap(),
            bytes: Bytes::from(bytes),
            next_pos: BinlogPos::new(file, *offset),
            artificial: false,
            ctx: DecodeCtx::default(),
        }
    }

    #[test]
    fn rebuild_two_files_and_clear_in_use() {
        let mut off = 4;
        let mut evs = vec![];
        let mut fake = raw(
            "b.000001",
            &mut 4,
            types::ROTATE,
            0x20,
            b"\x04\0\0\0\0\0\0\0b.000001",
        );
        fake.artificial = true;
        evs.push(fake);
        let fde = raw(
            "b.000001",
            &mut off,
            types::FORMAT_DESCRIPTION,
            1,
            &fde_body("10.11.6-MariaDB", 1),
        );
        evs.push(fde);
        evs.push(raw(
            "b.000001",
            &mut off,
            types::XID,
            0,
            &1u64.to_le_bytes(),
        ));
        evs.push(raw(
            "b.000001",
            &mut off,
            types::ROTATE,
            0,
            b"\x04\0\0\0\0\0\0\0b.000002",
        ));
        let mut off2 = 4;
        evs.push(raw(
            "b.000002",
            &mut off2,
            types::FORMAT_DESCRIPTION,
            1,
            &fde_body("10.11.6-MariaDB", 1),
        ));

        let files = rebuild_files(&evs).unwrap();
        assert_eq!(files.len(), 2);
        let (name, bytes) = &files[0];
        assert_eq!(name.as_str(), "b.000001");
        assert_eq!(&bytes[..4], &BINLOG_MAGIC);
        assert_eq!(bytes.len() as u64, off);
        assert_eq!(bytes[4 + 17] & 1, 0, "in-use flag cleared");
        let fde_len = evs[1].bytes.len();
        assert!(checksum_matches(&bytes[4..4 + fde_len]));
        assert_eq!(
            &bytes[4 + fde_len..],
            &[&evs[2].bytes[..], &evs[3].bytes[..]].concat()[..]
        );
        assert_eq!(files[1].1.len() as u64, off2);
    }

    #[test]
    fn gaps_and_foreign_events_are_errors() {
        let mut off = 4;
        let a = raw("b.000001", &mut off, types::XID, 0, &1u64.to_le_bytes());
        let _skipped = raw("b.000001", &mut off, types::XID, 0, &2u64.to_le_bytes());
        let c = raw("b.000001", &mut off, types::XID, 0, &3u64.to_le_bytes());
        let mut w = BinlogFileWriter::new(BinlogFile::new("b.000001"));
        assert!(w.push(&a).unwrap());
        let e = w.push(&c).unwrap_err();
        assert!(e.to_string().contains("does not continue"), "{e}");
        let mut o = 4;
        let other = raw("b.000002", &mut o, types::XID, 0, &1u64.to_le_bytes());
        assert!(w.push(&other).is_err());
        // An event that belongs at offset 4 cannot start a file at a later offset.
        assert!(rebuild_files(&[c]).is_err());
    }
}
