//! Corruption detection: every single flipped bit, every truncation, and
//! trailing data are reported as errors that name a part and byte range.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use common::{header, wal_like, Rng};
use pitr_segment::{
    decode, decode_frame, encode, parse_header, parse_tail, Codec, Engine, LogPos, Part,
    SegmentError, SegmentMeta, TimestampMicros, WriterOptions, TRAILER_LEN,
};
use proptest::prelude::*;

fn object(codec: Codec, payload: &[u8], frame_size: usize) -> (Vec<u8>, SegmentMeta) {
    let h = header(Engine::Postgres, codec, "7301234567890123456");
    let end = LogPos::new(h.start.hi, h.start.lo + payload.len() as u64);
    let obj = encode(
        h,
        payload,
        end,
        Some(TimestampMicros(1_700_000_000_000_000)),
        Some(TimestampMicros(1_700_000_000_500_000)),
        9,
        WriterOptions {
            frame_size,
            zstd_level: None,
            seal: None,
        },
    )
    .unwrap();
    let meta = decode(&obj).unwrap().0;
    (obj, meta)
}

/// Asserts a flipped bit at `offset` is caught by the full decode (with an
/// error naming a range that contains the offset, unless it is in the
/// trailer), and by the range-read path for the part holding the offset.
fn assert_flip_detected(obj: &[u8], meta: &SegmentMeta, offset: usize, bit: u8) {
    let mut bad = obj.to_vec();
    bad[offset] ^= 1 << bit;
    let err = match decode(&bad) {
        Ok(_) => panic!("flip of bit {bit} at byte {offset} not detected"),
        Err(e) => e,
    };
    let range = err.range().unwrap_or_else(|| panic!("no range in {err}"));
    assert!(err.part().is_some(), "no part in {err}");
    let trailer_start = obj.len() - TRAILER_LEN;
    if offset < trailer_start {
        assert!(
            range.contains(offset as u64),
            "flip at {offset}: error range {range} does not contain it: {err}"
        );
    }

    // range-read path: parse_tail, then the frame holding the offset, or the header
    let tail = parse_tail(&bad, bad.len() as u64);
    let stored_crc_field = trailer_start + 16..trailer_start + 20;
    if offset >= meta.footer_offset() as usize {
        if !stored_crc_field.contains(&offset) {
            assert!(
                tail.is_err(),
                "flip at {offset} in footer/trailer missed by parse_tail"
            );
        }
        return;
    }
    let tail = tail.unwrap();
    assert_eq!(tail.footer, meta.footer);
    if (offset as u64) < tail.header_len {
        assert!(parse_header(&bad[..tail.header_len as usize]).is_err());
        return;
    }
    let f = tail
        .footer
        .frames
        .iter()
        .find(|f| f.range().contains(&(offset as u64)))
        .unwrap();
    let r = f.range();
    let e = decode_frame(&bad[r.start as usize..r.end as usize], f).unwrap_err();
    assert_eq!(e.part(), Some(Part::Frame(f.index)), "{e}");
}

trait FooterOffset {
    fn footer_offset(&self) -> u64;
}
impl FooterOffset for SegmentMeta {
    fn footer_offset(&self) -> u64 {
        let footer_len = 64 + 28 * self.footer.frames.len() as u64;
        self.total_len - TRAILER_LEN as u64 - footer_len
    }
}

#[test]
fn every_single_bit_flip_is_detected_exhaustively() {
    for codec in [Codec::Zstd { level: 1 }, Codec::None] {
        let payload = wal_like(300, 11);
        let (obj, meta) = object(codec, &payload, 100);
        assert_eq!(meta.footer.frames.len(), 3);
        for offset in 0..obj.len() {
            for bit in 0..8 {
                assert_flip_detected(&obj, &meta, offset, bit);
            }
        }
    }
}

#[test]
fn every_truncation_is_detected_as_truncated() {
    for (codec, len, frame) in [
        (Codec::Zstd { level: 1 }, 0, 10),
        (Codec::Zstd { level: 1 }, 3000, 1000),
        (Codec::None, 2000, 300),
    ] {
        let (obj, _) = object(codec, &wal_like(len, 5), frame);
        for cut in 0..obj.len() {
            match decode(&obj[..cut]) {
                Err(SegmentError::Truncated {
                    available, range, ..
                }) => {
                    assert_eq!(available, cut as u64, "cut {cut}");
                    assert!(range.end > cut as u64, "cut {cut}: needed range {range}");
                }
                Err(other) => panic!("cut at {cut}: expected Truncated, got {other}"),
                Ok(_) => panic!("cut at {cut} not detected"),
            }
            // the range path never accepts a shortened object either
            assert!(parse_tail(&obj[..cut], cut as u64).is_err(), "cut {cut}");
        }
    }
}

#[test]
fn trailing_data_and_concatenation_are_rejected() {
    let (obj, _) = object(Codec::default(), b"hello", 4);
    let mut longer = obj.clone();
    longer.push(0);
    match decode(&longer) {
        Err(SegmentError::TrailingData { range }) => assert_eq!(range.start, obj.len() as u64),
        other => panic!("expected TrailingData, got {other:?}"),
    }
    let mut twice = obj.clone();
    twice.extend_from_slice(&obj);
    assert!(decode(&twice).is_err());
    assert!(parse_tail(&twice, twice.len() as u64).is_err());
}

#[test]
fn errors_name_the_part_and_range() {
    let payload = wal_like(5000, 1);
    let (obj, meta) = object(Codec::default(), &payload, 2000);
    let f1 = meta.footer.frames[1];
    let mut bad = obj.clone();
    let at = f1.offset as usize + 32 + 3; // inside frame 1's stored bytes
    bad[at] ^= 0x40;
    match decode(&bad).unwrap_err() {
        SegmentError::ChecksumMismatch {
            part,
            range,
            stored,
            computed,
        } => {
            assert_eq!(part, Part::Frame(1));
            assert_eq!(range.start, f1.offset + 32);
            assert_eq!(range.end, f1.end());
            assert_eq!(stored, f1.crc);
            assert_ne!(computed, stored);
        }
        other => panic!("unexpected {other}"),
    }
    let mut bad = obj.clone();
    bad[0] = b'X';
    assert!(matches!(
        decode(&bad).unwrap_err(),
        SegmentError::BadMagic {
            part: Part::Header,
            ..
        }
    ));
    let mut bad = obj.clone();
    bad[8] = 9; // version 9
    assert!(matches!(
        decode(&bad).unwrap_err(),
        SegmentError::UnsupportedVersion { version: 9, .. }
    ));
    let err = decode(&bad).unwrap_err();
    assert!(!err.is_transient());
    // the io::Read path carries the same error
    use std::io::Read;
    let mut bad = obj.clone();
    bad[at] ^= 0x40;
    let mut r = pitr_segment::SegmentReader::new(&bad[..]).unwrap();
    let mut sink = Vec::new();
    let e = r.read_to_end(&mut sink).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    let inner = SegmentError::from_io(&e).unwrap();
    assert_eq!(inner.part(), Some(Part::Frame(1)));
    // frame 0 was verified and handed out before frame 1 failed
    assert_eq!(sink, payload[..2000]);
    // and the reader stays failed
    assert!(r.read(&mut [0u8; 10]).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random single-bit flips in bigger multi-frame objects.
    #[test]
    fn random_bit_flips_in_big_objects(seed in any::<u64>(), zstd in any::<bool>(), flips in proptest::collection::vec((any::<u64>(), 0u8..8), 20)) {
        let codec = if zstd { Codec::default() } else { Codec::None };
        let payload = wal_like(200_000 + (seed % 50_000) as usize, seed);
        let (obj, meta) = object(codec, &payload, 16 << 10);
        for (pos, bit) in flips {
            assert_flip_detected(&obj, &meta, (pos % obj.len() as u64) as usize, bit);
        }
    }

    /// Random overwrites of several bytes, and random truncations, of bigger objects.
    #[test]
    fn random_damage_in_big_objects(seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let payload = wal_like(100_000, seed);
        let (obj, _) = object(Codec::default(), &payload, 8 << 10);
        let mut bad = obj.clone();
        let at = rng.below(obj.len() as u64) as usize;
        let n = 1 + rng.below(16) as usize;
        for b in bad.iter_mut().skip(at).take(n) {
            *b = rng.next_u64() as u8;
        }
        if bad != obj {
            prop_assert!(decode(&bad).is_err());
        }
        let cut = rng.below(obj.len() as u64) as usize;
        let is_truncated = matches!(decode(&obj[..cut]), Err(SegmentError::Truncated { .. }));
        prop_assert!(is_truncated);
    }
}
