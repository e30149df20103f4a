//! A sans-IO reader of PostgreSQL WAL that finds the records a time index needs.
//!
//! WAL is a sequence of 8 KiB pages, grouped into segments. Each page starts
//! with a header ([`page`]); records ([`record`]) start at 8-byte aligned
//! positions and may continue over any number of pages (and segments): the
//! continuation pages carry `XLP_FIRST_IS_CONTRECORD` and the number of bytes
//! of the record still to come. After an `XLOG_SWITCH` record the rest of the
//! segment is unused.
//!
//! Feed [`WalReader`] the WAL bytes from a page boundary on, in chunks of any
//! size; it reports every record (LSN, end LSN, resource manager, xid) and
//! decodes commits, aborts, prepares, restore points, switches, checkpoints
//! and end-of-recovery records ([`xact`]). Only XLOG and XACT records are
//! buffered; the payload of others is checked (CRC-32C) and skipped. If the
//! first page starts inside a record, that partial record is skipped.
//! Every record's CRC is verified, and its `xl_prev` link checked.

pub mod page;
pub mod record;
pub mod xact;

use crate::error::{ErrorKind, PgError};
use crate::lsn::{valid_segment_size, Lsn, TimelineId, WAL_PAGE_SIZE};
use record::{RecordHeader, HEADER_LEN, MAX_RECORD_LEN};
pub use xact::{RecordKind, XactEnd};

/// One decoded WAL record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalRecord {
    /// Start of the record.
    pub lsn: Lsn,
    /// First position after the record (aligned; for a switch, the next segment start).
    /// Cutting the WAL at `end_lsn` never splits a record.
    pub end_lsn: Lsn,
    /// Timeline of the page the record started on.
    pub tli: TimelineId,
    pub rmid: u8,
    pub info: u8,
    /// `xl_xid` of the record.
    pub xid: u32,
    pub kind: RecordKind,
}

/// WAL that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid WAL at {lsn}: {reason}")]
pub struct WalError {
    pub lsn: Lsn,
    pub reason: String,
}

impl From<WalError> for PgError {
    fn from(e: WalError) -> PgError {
        PgError::new(
            ErrorKind::Definite,
            format!("invalid WAL: {}", e.reason),
            "WAL decoding",
            "the WAL does not match the expected format; check that the server version is supported and the stream started at a page boundary",
        )
        .with_lsn(e.lsn)
    }
}

#[derive(Debug)]
enum State {
    /// At an aligned position, waiting for the next record header.
    Between,
    /// Alignment padding after a record.
    Padding(u64),
    /// Collecting the 24-byte record header.
    Header {
        buf: [u8; HEADER_LEN],
        have: usize,
        start: Lsn,
    },
    /// Inside a record's payload.
    Body {
        hdr: RecordHeader,
        hdr_bytes: [u8; HEADER_LEN],
        start: Lsn,
        left: u32,
        collect: Option<Vec<u8>>,
        crc: u32,
    },
    /// Skipping the tail of a record that began before the first page fed.
    SkipContinuation(u32),
    /// After `XLOG_SWITCH`: ignore the rest of the segment.
    SkipToSegmentEnd,
}

/// Incremental WAL decoder; see the module documentation.
#[derive(Debug)]
pub struct WalReader {
    pos: Lsn,
    seg_size: u64,
    magic: Option<u16>,
    sysid: Option<u64>,
    tli: TimelineId,
    page_buf: Vec<u8>,
    in_page_header: bool,
    first_page: bool,
    state: State,
    prev_record: Option<Lsn>,
    last_end: Option<Lsn>,
    failed: Option<WalError>,
}

fn err(lsn: Lsn, reason: impl Into<String>) -> WalError {
    WalError {
        lsn,
        reason: reason.into(),
    }
}

impl WalReader {
    /// A reader for WAL starting at `start`, which must be a page boundary.
    pub fn new(start: Lsn, seg_size: u64) -> Result<WalReader, WalError> {
        if start.0 % WAL_PAGE_SIZE != 0 {
            return Err(err(
                start,
                "the WAL reader must start at a page boundary (a multiple of 8192)",
            ));
        }
        if !valid_segment_size(seg_size) {
            return Err(err(start, format!("invalid WAL segment size {seg_size}")));
        }
        Ok(WalReader {
            pos: start,
            seg_size,
            magic: None,
            sysid: None,
            tli: TimelineId(0),
            page_buf: Vec::with_capacity(page::LONG_HEADER_LEN),
            in_page_header: false,
            first_page: true,
            state: State::Between,
            prev_record: None,
            last_end: None,
            failed: None,
        })
    }

    /// Position of the next byte the reader expects.
    pub fn position(&self) -> Lsn {
        self.pos
    }

    /// End of the last complete record (a safe cut point), if any.
    pub fn last_record_end(&self) -> Option<Lsn> {
        self.last_end
    }

    /// `XLOG_PAGE_MAGIC` seen in the page headers.
    pub fn page_magic(&self) -> Option<u16> {
        self.magic
    }

    /// System identifier from the first long page header seen.
    pub fn system_id(&self) -> Option<u64> {
        self.sysid
    }

    /// Timeline of the last page header.
    pub fn timeline(&self) -> TimelineId {
        self.tli
    }

    /// Consumes `data` (the WAL bytes at [`WalReader::position`]) and appends
    /// every record completed by it to `out`. After an error the reader stays failed.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<WalRecord>) -> Result<(), WalError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = self.feed_inner(data, out);
        if let Err(e) = &r {
            self.failed = Some(e.clone());
        }
        r
    }

    fn advance(&mut self, n: usize) {
        self.pos = self.pos.plus(n as u64);
    }

    fn feed_inner(&mut self, mut data: &[u8], out: &mut Vec<WalRecord>) -> Result<(), WalError> {
        while !data.is_empty() {
            if let State::SkipToSegmentEnd = self.state {
                let to_end = (self.seg_size - self.pos.segment_offset(self.seg_size)) as usize;
                let n = to_end.min(data.len());
                self.advance(n);
                data = &data[n..];
                if self.pos.segment_offset(self.seg_size) == 0 {
                    self.state = State::Between;
                }
                continue;
            }
            if self.pos.0 % WAL_PAGE_SIZE == 0 && !self.in_page_header {
                self.in_page_header = true;
                self.page_buf.clear();
            }
            if self.in_page_header {
                let need = if self.page_buf.len() < page::SHORT_HEADER_LEN {
                    page::SHORT_HEADER_LEN
                } else {
                    page::header_len(&self.page_buf)
                };
                let n = (need - self.page_buf.len()).min(data.len());
                self.page_buf.extend_from_slice(&data[..n]);
                self.advance(n);
                data = &data[n..];
                if self.page_buf.len() == need && need == page::header_len(&self.page_buf) {
                    self.in_page_header = false;
                    self.on_page_header()?;
                }
                continue;
            }
            let room = (WAL_PAGE_SIZE - self.pos.0 % WAL_PAGE_SIZE) as usize;
            let avail = room.min(data.len());
            let pos = self.pos;
            match &mut self.state {
                State::Between => {
                    self.state = State::Header {
                        buf: [0; HEADER_LEN],
                        have: 0,
                        start: pos,
                    };
                }
                // Handled at the top of the loop.
                State::SkipToSegmentEnd => {}
                State::Padding(left) => {
                    let n = (*left as usize).min(avail);
                    *left -= n as u64;
                    if *left == 0 {
                        self.state = State::Between;
                    }
                    self.advance(n);
                    data = &data[n..];
                }
                State::SkipContinuation(left) => {
                    let n = (*left as usize).min(avail);
                    *left -= n as u32;
                    let done = *left == 0;
                    self.advance(n);
                    data = &data[n..];
                    if done {
                        self.state = self.padding_state();
                    }
                }
                State::Header { buf, have, .. } => {
                    let n = (HEADER_LEN - *have).min(avail);
                    buf[*have..*have + n].copy_from_slice(&data[..n]);
                    *have += n;
                    let complete = *have == HEADER_LEN;
                    self.advance(n);
                    data = &data[n..];
                    if complete {
                        self.on_record_header(out)?;
                    }
                }
                State::Body {
                    left, collect, crc, ..
                } => {
                    let n = (*left as usize).min(avail);
                    let chunk = &data[..n];
                    *crc = crc32c::crc32c_append(*crc, chunk);
                    if let Some(v) = collect {
                        v.extend_from_slice(chunk);
                    }
                    *left -= n as u32;
                    let done = *left == 0;
                    self.advance(n);
                    data = &data[n..];
                    if done {
                        self.finish_record(out)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn padding_state(&self) -> State {
        let pad = self.pos.max_align().0 - self.pos.0;
        if pad == 0 {
            State::Between
        } else {
            State::Padding(pad)
        }
    }

    fn on_page_header(&mut self) -> Result<(), WalError> {
        let h = page::parse(&self.page_buf);
        let page_start = Lsn(self.pos.0 - h.len() as u64);
        if page::version_of_magic(h.magic).is_none() {
            return Err(err(
                page_start,
                format!(
                    "unknown WAL page magic {:#06x} (unsupported PostgreSQL version, or not WAL)",
                    h.magic
                ),
            ));
        }
        if let Some(m) = self.magic.filter(|&m| m != h.magic) {
            return Err(err(
                page_start,
                format!("page magic changed from {m:#06x} to {:#06x}", h.magic),
            ));
        }
        self.magic = Some(h.magic);
        if h.pageaddr != page_start {
            return Err(err(
                page_start,
                format!(
                    "page header says the page is at {} (stale or misplaced WAL)",
                    h.pageaddr
                ),
            ));
        }
        if h.info & !page::XLP_ALL_FLAGS != 0 {
            return Err(err(
                page_start,
                format!("invalid page flags {:#06x}", h.info),
            ));
        }
        if page_start.segment_offset(self.seg_size) == 0 {
            let Some((sysid, seg, blck)) = h.long else {
                return Err(err(
                    page_start,
                    "the first page of a segment lacks the long header",
                ));
            };
            if u64::from(seg) != self.seg_size || u64::from(blck) != WAL_PAGE_SIZE {
                return Err(err(
                    page_start,
                    format!("WAL has segment size {seg} and page size {blck}; expected {} and {WAL_PAGE_SIZE}", self.seg_size),
                ));
            }
            if let Some(s) = self.sysid.filter(|&s| s != sysid) {
                return Err(err(
                    page_start,
                    format!("WAL of system {sysid} follows WAL of system {s}"),
                ));
            }
            self.sysid = Some(sysid);
        }
        if h.tli.0 < self.tli.0 {
            return Err(err(
                page_start,
                format!("timeline went back from {} to {}", self.tli, h.tli),
            ));
        }
        self.tli = h.tli;
        let first = std::mem::replace(&mut self.first_page, false);
        let expected_rem = match &self.state {
            State::Header { buf, have, .. } => {
                let tot = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
                (*have >= 4).then(|| tot.saturating_sub(*have as u32))
            }
            State::Body { left, .. } => Some(*left),
            State::SkipContinuation(left) => Some(*left),
            _ => None,
        };
        let mid_record = matches!(
            self.state,
            State::Header { .. } | State::Body { .. } | State::SkipContinuation(_)
        );
        match (mid_record, h.is_contrecord()) {
            (true, true) => {
                if let Some(rem) = expected_rem.filter(|&r| r != h.rem_len) {
                    return Err(err(
                        page_start,
                        format!("continuation page announces {} remaining bytes, the record needs {rem}", h.rem_len),
                    ));
                }
            }
            (true, false) if h.is_overwrite_contrecord() => {
                // The server abandoned the unfinished record; a new one starts here.
                self.state = State::Between;
                self.prev_record = None;
            }
            (true, false) => {
                return Err(err(
                    page_start,
                    "record continues onto a page that does not continue it",
                ));
            }
            (false, true) if first => {
                self.state = State::SkipContinuation(h.rem_len);
                if h.rem_len == 0 {
                    self.state = self.padding_state();
                }
            }
            (false, true) => {
                return Err(err(
                    page_start,
                    "unexpected continuation data at the start of the page",
                ))
            }
            (false, false) => {}
        }
        Ok(())
    }

    fn on_record_header(&mut self, out: &mut Vec<WalRecord>) -> Result<(), WalError> {
        let State::Header { buf, start, .. } = self.state else {
            return Ok(());
        };
        let hdr = RecordHeader::parse(&buf);
        if hdr.tot_len < HEADER_LEN as u32 || hdr.tot_len > MAX_RECORD_LEN {
            return Err(err(start, format!("invalid record length {}", hdr.tot_len)));
        }
        if let Some(prev) = self.prev_record.filter(|p| p.0 != hdr.prev) {
            return Err(err(
                start,
                format!(
                    "record links back to {} but the previous record is at {prev}",
                    Lsn(hdr.prev)
                ),
            ));
        }
        let left = hdr.tot_len - HEADER_LEN as u32;
        let collect =
            xact::wants_payload(hdr.rmid).then(|| Vec::with_capacity((left as usize).min(1 << 20)));
        self.state = State::Body {
            hdr,
            hdr_bytes: buf,
            start,
            left,
            collect,
            crc: 0,
        };
        if left == 0 {
            self.finish_record(out)?;
        }
        Ok(())
    }

    fn finish_record(&mut self, out: &mut Vec<WalRecord>) -> Result<(), WalError> {
        let State::Body {
            hdr,
            hdr_bytes,
            start,
            collect,
            crc,
            ..
        } = std::mem::replace(&mut self.state, State::Between)
        else {
            return Ok(());
        };
        let crc = crc32c::crc32c_append(crc, &hdr_bytes[..20]);
        if crc != hdr.crc {
            return Err(err(
                start,
                format!(
                    "record CRC mismatch (computed {crc:#010x}, stored {:#010x})",
                    hdr.crc
                ),
            ));
        }
        let magic = self.magic.unwrap_or(0);
        let kind = match collect {
            Some(payload) => {
                let main = record::main_data(&payload, magic).map_err(|r| err(start, r))?;
                xact::decode(hdr.rmid, hdr.info, hdr.xid, main, magic).map_err(|r| {
                    err(
                        start,
                        format!("record rmid {} info {:#04x}: {r}", hdr.rmid, hdr.info),
                    )
                })?
            }
            None => RecordKind::Other,
        };
        let switch = kind == RecordKind::Switch;
        let end_lsn = if switch && self.pos.segment_offset(self.seg_size) != 0 {
            self.pos.segment_start(self.seg_size).plus(self.seg_size)
        } else {
            self.pos.max_align()
        };
        self.state = if switch && self.pos.segment_offset(self.seg_size) != 0 {
            State::SkipToSegmentEnd
        } else {
            self.padding_state()
        };
        self.prev_record = Some(start);
        self.last_end = Some(end_lsn);
        out.push(WalRecord {
            lsn: start,
            end_lsn,
            tli: self.tli,
            rmid: hdr.rmid,
            info: hdr.info,
            xid: hdr.xid,
            kind,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests;
