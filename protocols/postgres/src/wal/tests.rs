//! Synthetic-WAL tests: records laid out over pages exactly as PostgreSQL does.

use super::page::{self, PageHeader};
use super::record::{self, RecordHeader, HEADER_LEN};
use super::*;
use pitr_segment::TimestampMicros;

const SEG: u64 = 1 << 20;
const MAGIC: u16 = 0xD110;

/// Writes records into pages the way the server does.
struct Synth {
    start: u64,
    buf: Vec<u8>,
    prev: u64,
    tli: u32,
}

impl Synth {
    fn new(start: u64) -> Synth {
        Synth {
            start,
            buf: Vec::new(),
            prev: 0,
            tli: 1,
        }
    }

    fn pos(&self) -> u64 {
        self.start + self.buf.len() as u64
    }

    fn page_header(&mut self, rem: u32) {
        let at = self.pos();
        let long = at % SEG == 0;
        let mut info = if long { page::XLP_LONG_HEADER } else { 0 };
        if rem > 0 {
            info |= page::XLP_FIRST_IS_CONTRECORD;
        }
        let h = PageHeader {
            magic: MAGIC,
            info,
            tli: TimelineId(self.tli),
            pageaddr: Lsn(at),
            rem_len: rem,
            long: long.then_some((4242, SEG as u32, 8192)),
        };
        self.buf.extend_from_slice(&page::encode(&h));
    }

    /// Appends a record; returns its LSN.
    fn record(&mut self, rmid: u8, info: u8, xid: u32, payload: &[u8]) -> u64 {
        if self.pos() % WAL_PAGE_SIZE == 0 {
            self.page_header(0);
        }
        let lsn = self.pos();
        let mut hdr = RecordHeader {
            tot_len: (HEADER_LEN + payload.len()) as u32,
            xid,
            prev: self.prev,
            info,
            rmid,
            crc: 0,
        };
        hdr.crc = record::record_crc(&hdr.encode(), payload);
        let mut bytes = hdr.encode().to_vec();
        bytes.extend_from_slice(payload);
        let mut written = 0;
        while written < bytes.len() {
            if self.pos() % WAL_PAGE_SIZE == 0 {
                self.page_header((bytes.len() - written) as u32);
            }
            let room = (WAL_PAGE_SIZE - self.pos() % WAL_PAGE_SIZE) as usize;
            let n = room.min(bytes.len() - written);
            self.buf.extend_from_slice(&bytes[written..written + n]);
            written += n;
        }
        while self.pos() % 8 != 0 {
            self.buf.push(0);
        }
        self.prev = lsn;
        lsn
    }

    fn commit(&mut self, xid: u32, time: i64) -> u64 {
        self.record(
            1,
            0x00,
            xid,
            &record::build_payload(None, &time.to_le_bytes()),
        )
    }

    fn filler(&mut self, len: usize) -> u64 {
        let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        self.record(10, 0x00, 5, &record::build_payload(Some(&data), b"heap"))
    }

    fn switch(&mut self) -> u64 {
        let lsn = self.record(0, 0x40, 0, &[]);
        // The rest of the segment is unused (zeros here; the reader must not look at it).
        while self.pos() % SEG != 0 {
            self.buf.push(0);
        }
        lsn
    }
}

fn decode_chunked(start: u64, bytes: &[u8], chunk: usize) -> Result<Vec<WalRecord>, WalError> {
    let mut r = WalReader::new(Lsn(start), SEG)?;
    let mut out = Vec::new();
    for c in bytes.chunks(chunk.max(1)) {
        r.feed(c, &mut out)?;
    }
    assert_eq!(r.position(), Lsn(start + bytes.len() as u64));
    Ok(out)
}

fn commits(recs: &[WalRecord]) -> Vec<(Lsn, u32, TimestampMicros)> {
    recs.iter()
        .filter_map(|r| match &r.kind {
            RecordKind::Commit(e) => Some((r.lsn, e.xid, e.time)),
            _ => None,
        })
        .collect()
}

#[test]
fn records_across_pages_and_segments_any_chunking() {
    let mut s = Synth::new(0);
    let mut expected = Vec::new();
    let mut all_lsns = Vec::new();
    let mut xid = 1000;
    // Mix of small records, records spanning 1..3 pages, and record headers split by page boundaries.
    for i in 0..800usize {
        let size = match i % 9 {
            0 => 20_000,
            3 => 8_150,
            5 => 1,
            _ => 37 * (i % 23),
        };
        all_lsns.push(s.filler(size));
        xid += 1;
        let lsn = s.commit(xid, 1_000_000 * i as i64);
        all_lsns.push(lsn);
        expected.push((
            Lsn(lsn),
            xid,
            TimestampMicros::from_pg(1_000_000 * i as i64),
        ));
    }
    assert!(
        s.buf.len() as u64 > 2 * SEG,
        "test must cross segment boundaries"
    );
    // Make sure some record header really straddles a page boundary.
    let straddles = all_lsns
        .iter()
        .any(|l| l % WAL_PAGE_SIZE > WAL_PAGE_SIZE - HEADER_LEN as u64);
    assert!(straddles);
    for chunk in [1usize, 7, 8192, 100_000, usize::MAX] {
        if chunk == 1 {
            // Byte-at-a-time over the first 300 KiB only (speed).
            let cut = 300 * 1024;
            let recs = decode_chunked(0, &s.buf[..cut], 1).unwrap();
            let want: Vec<_> = expected
                .iter()
                .filter(|(l, ..)| l.0 + 40 <= cut as u64)
                .cloned()
                .collect();
            assert_eq!(commits(&recs)[..want.len() - 1], want[..want.len() - 1]);
            continue;
        }
        let recs = decode_chunked(0, &s.buf, chunk).unwrap();
        assert_eq!(commits(&recs), expected, "chunk {chunk}");
        let lsns: Vec<u64> = recs.iter().map(|r| r.lsn.0).collect();
        assert_eq!(lsns, all_lsns);
        for w in recs.windows(2) {
            assert!(
                w[0].end_lsn <= w[1].lsn,
                "end_lsn must not overlap the next record"
            );
            assert!(w[1].lsn.0 - w[0].end_lsn.0 <= page::LONG_HEADER_LEN as u64);
        }
    }
}

#[test]
fn switch_skips_rest_of_segment() {
    let mut s = Synth::new(0);
    s.commit(1, 10);
    let sw = s.switch();
    let after = s.commit(2, 20);
    assert_eq!(after, SEG + page::LONG_HEADER_LEN as u64);
    let recs = decode_chunked(0, &s.buf, 4096).unwrap();
    let sw_rec = recs.iter().find(|r| r.kind == RecordKind::Switch).unwrap();
    assert_eq!(sw_rec.lsn, Lsn(sw));
    assert_eq!(sw_rec.end_lsn, Lsn(SEG));
    assert_eq!(
        commits(&recs).iter().map(|c| c.1).collect::<Vec<_>>(),
        vec![1, 2]
    );
}

#[test]
fn start_mid_record_skips_the_partial_record() {
    let mut s = Synth::new(0);
    s.commit(1, 10);
    s.filler(30_000); // spans pages 0..4
    let c = s.commit(2, 20);
    // Start at page 2, which begins with continuation data.
    let from = 2 * WAL_PAGE_SIZE as usize;
    let recs = decode_chunked(from as u64, &s.buf[from..], 5000).unwrap();
    assert_eq!(
        commits(&recs),
        vec![(Lsn(c), 2, TimestampMicros::from_pg(20))]
    );
    assert!(WalReader::new(Lsn(100), SEG).is_err());
}

#[test]
fn corruption_is_detected_with_position() {
    let mut s = Synth::new(0);
    s.commit(1, 10);
    let c2 = s.commit(2, 20);
    let mut bad = s.buf.clone();
    bad[c2 as usize + HEADER_LEN + 3] ^= 0xFF; // inside the commit's payload
    let e = decode_chunked(0, &bad, 64).unwrap_err();
    assert_eq!(e.lsn, Lsn(c2));
    assert!(e.reason.contains("CRC"), "{e}");

    // A page from another position (stale recycled data) is rejected.
    let mut s = Synth::new(0);
    for _ in 0..10 {
        s.filler(3000);
    }
    let mut bad = s.buf.clone();
    bad[WAL_PAGE_SIZE as usize + 8] ^= 0x40; // pageaddr of page 1
    let e = decode_chunked(0, &bad, 10_000).unwrap_err();
    assert_eq!(e.lsn, Lsn(WAL_PAGE_SIZE));

    // Unknown magic.
    let mut bad = s.buf.clone();
    bad[0] = 0x00;
    assert!(decode_chunked(0, &bad, 10_000)
        .unwrap_err()
        .reason
        .contains("magic"));
    // A failed reader stays failed.
    let mut r = WalReader::new(Lsn(0), SEG).unwrap();
    let mut out = Vec::new();
    assert!(r.feed(&bad[..100], &mut out).is_err());
    assert!(r.feed(&s.buf[100..200], &mut out).is_err());
}
