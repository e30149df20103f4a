//! Golden files: format-version-1 segments committed under `testdata/v1/`.
//! They must stay readable by every future build; this test is the guard.
//! Never regenerate them to make this test pass — a failure here means the
//! reader broke compatibility.
//!
//! The files were produced once by the ignored generator below:
//! `cargo test -p pitr-segment --test golden -- --ignored generate_golden_files`
//! (it refuses to overwrite existing files).
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::path::{Path, PathBuf};

use common::wal_like;
use pitr_segment::{
    decode, decode_frame, encode, parse_header, parse_tail, Codec, Engine, Epoch, LogPos,
    SegmentHeader, TimestampMicros, WriterOptions, FORMAT_VERSION,
};
use sha2::{Digest, Sha256};

struct Golden {
    file: &'static str,
    engine: Engine,
    source_id: &'static str,
    epoch: u64,
    start: LogPos,
    codec: Codec,
    payload_len: usize,
    payload_seed: u64,
    frame_size: usize,
    end: LogPos,
    first_commit: Option<i64>,
    last_commit: Option<i64>,
    record_count: u64,
    frames: usize,
    payload_sha256: &'static str,
}

const GOLDEN: &[Golden] = &[
    Golden {
        file: "empty-postgres-zstd.seg",
        engine: Engine::Postgres,
        source_id: "7301234567890123456",
        epoch: 1,
        start: LogPos::new(0, 0x1_6B37_4D48),
        codec: Codec::Zstd { level: 1 },
        payload_len: 0,
        payload_seed: 0,
        frame_size: 1 << 20,
        end: LogPos::new(0, 0x1_6B37_4D48),
        first_commit: None,
        last_commit: None,
        record_count: 0,
        frames: 0,
        payload_sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    },
    Golden {
        file: "multiframe-mysql-zstd-commits.seg",
        engine: Engine::MySql,
        source_id: "3e11fa47-71ca-11e1-9e33-c80aa9429562",
        epoch: 7,
        start: LogPos::new(12, 4),
        codec: Codec::Zstd { level: 1 },
        payload_len: 10_000,
        payload_seed: 2,
        frame_size: 4096,
        end: LogPos::new(12, 10_004),
        first_commit: Some(1_694_694_896_000_000),
        last_commit: Some(1_694_694_897_250_000),
        record_count: 42,
        frames: 3,
        payload_sha256: "f240752150e758cbf5a7aa728f29c5b1cf3f8163c87ffc3737612f03f122b298",
    },
    Golden {
        file: "none-mariadb-commits.seg",
        engine: Engine::MariaDb,
        source_id: "0-1-100",
        epoch: 2,
        start: LogPos::new(3, 256),
        codec: Codec::None,
        payload_len: 3000,
        payload_seed: 3,
        frame_size: 1024,
        end: LogPos::new(3, 3256),
        first_commit: Some(1_600_000_000_123_456),
        last_commit: Some(1_600_000_000_123_456),
        record_count: 7,
        frames: 3,
        payload_sha256: "e1e48f1604635eb8f77f64b2e0b869aaad8ddaded4a672e4ea2758d0376a02f5",
    },
    Golden {
        file: "single-mongodb-zstd-nocommits.seg",
        engine: Engine::MongoDb,
        source_id: "rs0",
        epoch: 5,
        start: LogPos::new(0, (1_700_000_000u64 << 32) | 1),
        codec: Codec::Zstd { level: 1 },
        payload_len: 2500,
        payload_seed: 4,
        frame_size: 1 << 20,
        end: LogPos::new(0, (1_700_000_100u64 << 32) | 3),
        first_commit: None,
        last_commit: None,
        record_count: 12,
        frames: 1,
        payload_sha256: "168496b258e046a80557b6d42a9099e854f43f3fb7e7c3434568e920eeeb34cb",
    },
];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/v1")
}

fn sha256_hex(b: &[u8]) -> String {
    format!("{:x}", Sha256::digest(b))
}

fn header(g: &Golden) -> SegmentHeader {
    SegmentHeader {
        engine: g.engine,
        source_id: g.source_id.into(),
        epoch: Epoch(g.epoch),
        start: g.start,
        codec: g.codec,
        key_id: 0,
    }
}

fn build(g: &Golden, payload: &[u8]) -> Vec<u8> {
    encode(
        header(g),
        payload,
        g.end,
        g.first_commit.map(TimestampMicros),
        g.last_commit.map(TimestampMicros),
        g.record_count,
        WriterOptions {
            frame_size: g.frame_size,
            zstd_level: None,
            seal: None,
        },
    )
    .unwrap()
}

#[test]
fn golden_files_decode_to_their_recorded_contents() {
    assert_eq!(
        FORMAT_VERSION, 1,
        "add testdata/v{FORMAT_VERSION} goldens too"
    );
    for g in GOLDEN {
        let path = dir().join(g.file);
        let obj = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (meta, payload) = decode(&obj).unwrap_or_else(|e| panic!("{}: {e}", g.file));
        let h = &meta.header;
        assert_eq!(h.engine, g.engine, "{}", g.file);
        assert_eq!(h.source_id, g.source_id, "{}", g.file);
        assert_eq!(h.epoch, Epoch(g.epoch), "{}", g.file);
        assert_eq!(h.start, g.start, "{}", g.file);
        assert_eq!(h.codec, g.codec.stored(), "{}", g.file);
        assert_eq!(h.key_id, 0, "{}", g.file);
        let f = &meta.footer;
        assert_eq!(f.end, g.end, "{}", g.file);
        assert_eq!(
            f.first_commit,
            g.first_commit.map(TimestampMicros),
            "{}",
            g.file
        );
        assert_eq!(
            f.last_commit,
            g.last_commit.map(TimestampMicros),
            "{}",
            g.file
        );
        assert_eq!(f.record_count, g.record_count, "{}", g.file);
        assert_eq!(f.frames.len(), g.frames, "{}", g.file);
        assert_eq!(meta.total_len, obj.len() as u64, "{}", g.file);
        assert_eq!(payload.len(), g.payload_len, "{}", g.file);
        assert_eq!(
            sha256_hex(&payload),
            g.payload_sha256,
            "{}: payload hash",
            g.file
        );

        // the range-read path reads them too
        let tail = parse_tail(&obj, obj.len() as u64).unwrap();
        assert_eq!(tail.footer, meta.footer);
        assert_eq!(parse_header(&obj).unwrap().0, meta.header);
        let mut joined = Vec::new();
        for fr in &tail.footer.frames {
            let r = fr.range();
            joined.extend(decode_frame(&obj[r.start as usize..r.end as usize], fr).unwrap());
        }
        assert_eq!(joined, payload, "{}", g.file);

        // uncompressed objects have exactly one encoding: today's writer must
        // reproduce the file byte for byte
        if g.codec == Codec::None {
            assert!(
                build(g, &payload) == obj,
                "{}: writer output changed",
                g.file
            );
        }
    }
}

/// Writes the golden files (once). Ignored: run explicitly, see module docs.
#[test]
#[ignore = "generates testdata/v1 golden files; run once, explicitly"]
fn generate_golden_files() {
    std::fs::create_dir_all(dir()).unwrap();
    for g in GOLDEN {
        let path = dir().join(g.file);
        let payload = wal_like(g.payload_len, g.payload_seed);
        println!("{}: payload sha256 {}", g.file, sha256_hex(&payload));
        if path.exists() {
            println!("{}: exists, not overwritten", path.display());
            continue;
        }
        std::fs::write(&path, build(g, &payload)).unwrap();
        println!("{}: written", path.display());
    }
}
