//! Range reads: parse_tail on the end of an object, decode_frame on single
//! frames, parse_header on the start — each equals the corresponding slice
//! of a full decode.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use common::wal_like;
use pitr_segment::{
    decode, decode_frame, encode, parse_header, parse_tail, Codec, Engine, Epoch, LogPos, Part,
    SegmentError, SegmentHeader, SegmentTail, TimestampMicros, WriterOptions, TRAILER_LEN,
};
use proptest::prelude::*;

/// Fetches growing tails from the end of `obj` until parse_tail succeeds,
/// like a caller doing ranged GETs; returns the tail info and the number of fetches.
fn fetch_tail(obj: &[u8], first: usize) -> (SegmentTail, usize) {
    let mut want = first.min(obj.len());
    for fetches in 1..5 {
        match parse_tail(&obj[obj.len() - want..], obj.len() as u64) {
            Ok(t) => return (t, fetches),
            Err(SegmentError::NeedMoreTail { needed }) => {
                assert!(needed as usize > want, "must ask for more than it got");
                want = needed as usize;
            }
            Err(e) => panic!("parse_tail: {e}"),
        }
    }
    panic!("parse_tail did not converge");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn frames_by_range_equal_payload_slices(
        len in 0usize..80_000,
        seed in any::<u64>(),
        frame_size in 100usize..9000,
        zstd in any::<bool>(),
        first_tail in 0usize..4000,
        source in "[a-z0-9]{0,255}",
    ) {
        let payload = wal_like(len, seed);
        let h = SegmentHeader {
            engine: Engine::MongoDb,
            source_id: source,
            epoch: Epoch(seed),
            start: LogPos::new(0, seed >> 2),
            codec: if zstd { Codec::default() } else { Codec::None },
            key_id: 0,
        };
        let end = LogPos::new(0, (seed >> 2) + len as u64);
        let obj = encode(h.clone(), &payload, end, Some(TimestampMicros(-5)), None, 3, WriterOptions { frame_size, zstd_level: None, seal: None }).unwrap();
        let (meta, _) = decode(&obj).unwrap();
        let (tail, fetches) = fetch_tail(&obj, first_tail);
        prop_assert!(fetches <= 3);
        prop_assert_eq!(&tail.footer, &meta.footer);
        prop_assert_eq!(tail.total_len, obj.len() as u64);
        prop_assert_eq!(tail.footer_offset + u64::from(tail.footer_len) + TRAILER_LEN as u64, obj.len() as u64);
        let (ph, hlen) = parse_header(&obj[..tail.header_len as usize]).unwrap();
        prop_assert_eq!(hlen as u64, tail.header_len);
        prop_assert_eq!(&ph, &meta.header);
        for f in &tail.footer.frames {
            let r = f.range();
            let raw = decode_frame(&obj[r.start as usize..r.end as usize], f).unwrap();
            let rr = f.raw_range();
            prop_assert!(raw[..] == payload[rr.start as usize..rr.end as usize]);
            // the frame index finds this frame by payload offset
            prop_assert_eq!(tail.footer.frame_for_raw_offset(rr.start), Some(f.index as usize));
        }
    }
}

#[test]
fn decode_frame_rejects_mismatched_inputs() {
    let payload = wal_like(30_000, 9);
    let obj = encode(
        common::header(Engine::Postgres, Codec::default(), "s"),
        &payload,
        LogPos::new(3, 0x1000 + 30_000),
        None,
        None,
        0,
        WriterOptions {
            frame_size: 10_000,
            zstd_level: None,
            seal: None,
        },
    )
    .unwrap();
    let (tail, _) = fetch_tail(&obj, 64 << 10);
    let [f0, f1, _] = tail.footer.frames[..] else {
        panic!("expected 3 frames")
    };
    let bytes = |f: &pitr_segment::FrameInfo| {
        obj[f.range().start as usize..f.range().end as usize].to_vec()
    };
    // frame 1's bytes presented as frame 0
    let err = decode_frame(&bytes(&f1), &f0).unwrap_err();
    assert_eq!(err.part(), Some(Part::Frame(0)));
    // one byte short / long
    let b = bytes(&f1);
    assert!(matches!(
        decode_frame(&b[..b.len() - 1], &f1),
        Err(SegmentError::Truncated { .. })
    ));
    let mut longer = b.clone();
    longer.push(0);
    assert!(decode_frame(&longer, &f1).is_err());
    // index entry with a wrong crc
    let wrong = pitr_segment::FrameInfo {
        crc: f1.crc ^ 1,
        ..f1
    };
    assert!(decode_frame(&b, &wrong).is_err());
    // a hostile index entry near the end of the address space: error, no overflow
    let hostile = pitr_segment::FrameInfo {
        offset: u64::MAX - 3,
        raw_offset: u64::MAX - 1,
        ..f1
    };
    assert!(decode_frame(&b, &hostile).is_err());
    assert_eq!(hostile.raw_range().end, u64::MAX);
    assert_eq!(decode_frame(&b, &f1).unwrap(), payload[10_000..20_000]);
}

#[test]
fn parse_tail_validates_its_arguments() {
    let obj = encode(
        common::header(Engine::MySql, Codec::None, "u"),
        b"abc",
        LogPos::new(3, 0x1003),
        None,
        None,
        1,
        WriterOptions::default(),
    )
    .unwrap();
    let n = obj.len() as u64;
    assert!(matches!(
        parse_tail(&obj[obj.len() - 10..], n),
        Err(SegmentError::NeedMoreTail { needed }) if needed == TRAILER_LEN as u64
    ));
    assert!(matches!(
        parse_tail(&obj, n - 1),
        Err(SegmentError::InvalidInput(_))
    ));
    // the right bytes but a wrong object length: the trailer no longer lines up
    assert!(parse_tail(&obj[1..], n - 1).is_err());
    assert!(parse_tail(&obj, n).is_ok());
}
