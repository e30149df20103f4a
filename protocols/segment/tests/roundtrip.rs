//! Round trips through the streaming writer/reader and encode/decode, with
//! arbitrary payloads, frame sizes, write/read chunkings and headers.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::io::{BufRead, Read};

use common::{header, wal_like, Trickle};
use pitr_segment::{
    decode, encode, Codec, Engine, Epoch, LogPos, SegmentError, SegmentHeader, SegmentReader,
    SegmentWriter, TimestampMicros, WriterOptions,
};
use proptest::prelude::*;

fn payload_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..20_000),
        (0usize..60_000, any::<u64>()).prop_map(|(n, seed)| wal_like(n, seed)),
    ]
}

fn header_strategy() -> impl Strategy<Value = SegmentHeader> {
    (
        1u8..=4,
        "\\PC{0,60}",
        any::<u64>(),
        any::<u64>(),
        0u64..u64::MAX / 2,
        prop_oneof![
            Just(Codec::None),
            (-5i32..6).prop_map(|level| Codec::Zstd { level })
        ],
    )
        .prop_map(|(e, source_id, epoch, hi, lo, codec)| SegmentHeader {
            engine: Engine::from_code(e).unwrap(),
            source_id,
            epoch: Epoch(epoch),
            start: LogPos::new(hi, lo),
            codec,
            key_id: 0,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(160))]

    #[test]
    fn streaming_roundtrip(
        payload in payload_strategy(),
        header in header_strategy(),
        frame_size in prop_oneof![1usize..64, 64usize..20_000],
        write_chunks in proptest::collection::vec(1usize..9000, 1..8),
        read_max in 1usize..70_000,
        interrupt_every in prop_oneof![Just(0usize), 2usize..7],
        first in proptest::option::of(any::<i64>()),
        last in proptest::option::of(any::<i64>()),
        record_count in any::<u64>(),
    ) {
        let opts = WriterOptions { frame_size, zstd_level: None, seal: None };
        let mut w = SegmentWriter::new(Vec::new(), header.clone(), opts.clone()).unwrap();
        let mut rest = &payload[..];
        let mut i = 0;
        while !rest.is_empty() {
            let n = write_chunks[i % write_chunks.len()].min(rest.len());
            w.write_all(&rest[..n]).unwrap();
            rest = &rest[n..];
            i += 1;
        }
        prop_assert_eq!(w.payload_len(), payload.len() as u64);
        let end = LogPos::new(header.start.hi, header.start.lo + payload.len() as u64);
        let (obj, wmeta) = w
            .finish(end, first.map(TimestampMicros), last.map(TimestampMicros), record_count)
            .unwrap();

        // writer metadata describes exactly what is stored
        prop_assert_eq!(wmeta.total_len, obj.len() as u64);
        prop_assert_eq!(&wmeta.header, &SegmentHeader { codec: header.codec.stored(), ..header.clone() });
        prop_assert_eq!(wmeta.footer.end, end);
        prop_assert_eq!(wmeta.footer.record_count, record_count);
        prop_assert_eq!(wmeta.footer.first_commit, first.map(TimestampMicros));
        prop_assert_eq!(wmeta.footer.last_commit, last.map(TimestampMicros));
        prop_assert_eq!(wmeta.footer.payload_len(), payload.len() as u64);
        prop_assert_eq!(wmeta.footer.frames.len(), payload.len().div_ceil(frame_size));
        for f in &wmeta.footer.frames[..wmeta.footer.frames.len().saturating_sub(1)] {
            prop_assert_eq!(f.uncompressed_len as usize, frame_size);
        }

        // streaming reader, odd read sizes and interruptions from below
        let mut r = SegmentReader::new(Trickle::new(&obj, read_max % 5000 + 1, interrupt_every)).unwrap();
        prop_assert_eq!(r.header(), &wmeta.header);
        prop_assert!(r.meta().is_none());
        let mut got = Vec::new();
        let mut buf = vec![0u8; read_max];
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 { break; }
            got.extend_from_slice(&buf[..n]);
        }
        prop_assert!(got == payload, "streamed payload differs");
        prop_assert_eq!(r.meta(), Some(&wmeta));
        // reading past the end stays at the end
        prop_assert_eq!(r.read(&mut buf).unwrap(), 0);

        // in-memory decode agrees, and encode is byte-identical to the writer
        let (dmeta, dpayload) = decode(&obj).unwrap();
        prop_assert_eq!(&dmeta, &wmeta);
        prop_assert!(dpayload == payload);
        let enc = encode(header, &payload, end, first.map(TimestampMicros), last.map(TimestampMicros), record_count, opts).unwrap();
        prop_assert!(enc == obj, "encode differs from streaming writer output");
    }
}

#[test]
fn bufread_and_next_chunk_yield_frame_sized_runs() {
    let payload = wal_like(100_000, 7);
    let opts = WriterOptions {
        frame_size: 30_000,
        zstd_level: Some(3),
        seal: None,
    };
    let obj = encode(
        header(Engine::Postgres, Codec::default(), "sys-1"),
        &payload,
        LogPos::new(3, 0x1000 + 100_000),
        None,
        None,
        5,
        opts,
    )
    .unwrap();
    let mut r = SegmentReader::new(&obj[..]).unwrap();
    let mut sizes = Vec::new();
    let mut got = Vec::new();
    while let Some(chunk) = r.next_chunk().unwrap() {
        sizes.push(chunk.len());
        got.extend_from_slice(chunk);
    }
    assert_eq!(sizes, vec![30_000, 30_000, 30_000, 10_000]);
    assert_eq!(got, payload);
    assert_eq!(r.meta().unwrap().footer.frames.len(), 4);

    let mut r = SegmentReader::new(&obj[..]).unwrap();
    let mut lines = 0;
    let mut total = 0;
    loop {
        let avail = r.fill_buf().unwrap();
        if avail.is_empty() {
            break;
        }
        let n = avail.len().min(777);
        total += n;
        lines += 1;
        r.consume(n);
    }
    assert_eq!(total, payload.len());
    assert!(lines > 100);
    assert!(r.meta().is_some());
}

#[test]
fn compression_actually_happens() {
    let payload = wal_like(1 << 20, 3);
    let h = header(Engine::MySql, Codec::default(), "uuid");
    let end = LogPos::new(3, 0x1000 + payload.len() as u64);
    let z = encode(
        h.clone(),
        &payload,
        end,
        None,
        None,
        0,
        WriterOptions::default(),
    )
    .unwrap();
    let n = encode(
        SegmentHeader {
            codec: Codec::None,
            ..h
        },
        &payload,
        end,
        None,
        None,
        0,
        WriterOptions::default(),
    )
    .unwrap();
    assert!(z.len() * 2 < payload.len(), "zstd object {} bytes", z.len());
    assert!(n.len() > payload.len(), "codec none stores raw bytes");
    assert_eq!(decode(&z).unwrap().1, payload);
    assert_eq!(decode(&n).unwrap().1, payload);
}

#[test]
fn writer_rejects_what_the_format_cannot_hold() {
    let h = header(Engine::Postgres, Codec::default(), "x");
    let bad = |h: SegmentHeader, opts: WriterOptions| SegmentWriter::new(Vec::new(), h, opts).err();
    assert!(matches!(
        bad(
            h.clone(),
            WriterOptions {
                frame_size: 0,
                zstd_level: None,
                seal: None,
            }
        ),
        Some(SegmentError::InvalidInput(_))
    ));
    assert!(matches!(
        bad(
            h.clone(),
            WriterOptions {
                frame_size: (64 << 20) + 1,
                zstd_level: None,
                seal: None,
            }
        ),
        Some(SegmentError::InvalidInput(_))
    ));
    assert!(matches!(
        bad(
            SegmentHeader {
                source_id: "é".repeat(128),
                ..h.clone()
            },
            WriterOptions::default()
        ),
        Some(SegmentError::InvalidInput(_))
    ));
    assert!(matches!(
        bad(
            SegmentHeader {
                key_id: 1,
                ..h.clone()
            },
            WriterOptions::default()
        ),
        Some(SegmentError::InvalidInput(_))
    ));
    assert!(matches!(
        bad(
            h.clone(),
            WriterOptions {
                frame_size: 10,
                zstd_level: Some(1000),
                seal: None,
            }
        ),
        Some(SegmentError::InvalidInput(_))
    ));
    let w = SegmentWriter::new(Vec::new(), h.clone(), WriterOptions::default()).unwrap();
    let before = LogPos::new(h.start.hi, h.start.lo - 1);
    assert!(matches!(
        w.finish(before, None, None, 0),
        Err(SegmentError::InvalidInput(_))
    ));
}

#[test]
fn end_frame_cuts_early_and_io_errors_carry_offsets() {
    let h = header(Engine::MariaDb, Codec::None, "m");
    let mut w = SegmentWriter::new(Vec::new(), h.clone(), WriterOptions::default()).unwrap();
    w.write_all(b"abc").unwrap();
    w.end_frame().unwrap();
    w.end_frame().unwrap(); // no empty frame
    w.write_all(b"defg").unwrap();
    let (obj, meta) = w.finish(LogPos::new(3, 0x1007), None, None, 2).unwrap();
    let lens: Vec<u32> = meta
        .footer
        .frames
        .iter()
        .map(|f| f.uncompressed_len)
        .collect();
    assert_eq!(lens, vec![3, 4]);
    assert_eq!(decode(&obj).unwrap().1, b"abcdefg");

    struct Failing(usize);
    impl std::io::Write for Failing {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if self.0 < b.len() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "slow disk",
                ));
            }
            self.0 -= b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut w = SegmentWriter::new(
        Failing(100),
        h,
        WriterOptions {
            frame_size: 8,
            zstd_level: None,
            seal: None,
        },
    )
    .unwrap();
    let err = w.write_all(&[7u8; 200]).unwrap_err();
    assert!(err.is_transient(), "{err}");
    match err {
        SegmentError::Io { offset, .. } => assert!(offset > 0 && offset <= 100, "offset {offset}"),
        other => panic!("unexpected {other}"),
    }
    // poisoned afterwards
    assert!(matches!(
        w.write_all(b"x"),
        Err(SegmentError::InvalidInput(_))
    ));
}
