//! Sealed (format version 2) segments: round trips with the data key, and
//! every way a reader without the right key, or given altered bytes, must
//! refuse. The golden file `testdata/v2/sealed-mariadb-none.seg` guards the
//! version 2 layout and its key derivation: today's writer must reproduce it
//! byte for byte (codec none, deterministic salt), and every build must
//! read it. Generated once by the ignored test below
//! (`cargo test -p pitr-segment --test sealed -- --ignored generate_sealed_golden`).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{header, wal_like};
use pitr_segment::{
    decode, decode_sealed_frame, decode_with, encode, parse_header, parse_tail, Codec, Engine,
    KeySet, LogPos, ObjectKey, Part, Seal, SealKey, SegmentError, SegmentHeader, SegmentReader,
    TimestampMicros, WriterOptions, SEALED_FORMAT_VERSION,
};

const MARKER: &[u8] = b"MARKER-7d1f-the-secret-row";

fn key(id: u32, b: u8) -> SealKey {
    SealKey::new(id, [b; 32]).unwrap()
}

/// A payload with the marker string repeated inside WAL-like bytes.
fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut p = wal_like(len, seed);
    let mut at = 100;
    while at + MARKER.len() < p.len() {
        p[at..at + MARKER.len()].copy_from_slice(MARKER);
        at += 3000;
    }
    p
}

fn seal(h: &SegmentHeader, k: SealKey, payload: &[u8], frame_size: usize) -> Vec<u8> {
    let end = LogPos::new(h.start.hi, h.start.lo + payload.len() as u64);
    let opts = WriterOptions {
        frame_size,
        zstd_level: None,
        seal: Some(Seal::for_payload(k, h, [payload])),
    };
    encode(
        h.clone(),
        payload,
        end,
        Some(TimestampMicros(1_700_000_000_000_000)),
        Some(TimestampMicros(1_700_000_001_000_000)),
        5,
        opts,
    )
    .unwrap()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn sealed_objects_round_trip_and_hide_the_payload() {
    for codec in [Codec::None, Codec::Zstd { level: 1 }] {
        let h = header(Engine::Postgres, codec, "7301234567890123456");
        let p = payload(20_000, 9);
        assert!(contains(&p, MARKER));
        let obj = seal(&h, key(3, 7), &p, 4096);
        assert!(!contains(&obj, MARKER), "{codec:?}: the marker is readable");
        let keys = KeySet::new([key(1, 1), key(3, 7)]);
        let (meta, back) = decode_with(&obj, &keys).unwrap();
        assert_eq!(back, p);
        assert_eq!(meta.header.key_id, 3);
        assert_eq!(meta.footer.frames.len(), 5);
        // every frame carries its tag
        for f in &meta.footer.frames {
            if codec == Codec::None {
                assert_eq!(f.compressed_len, f.uncompressed_len + 16);
            }
        }
        // the streaming reader, chunk by chunk
        let mut r = SegmentReader::with_keys(&obj[..], &keys).unwrap();
        let mut streamed = Vec::new();
        while let Some(chunk) = r.next_chunk().unwrap() {
            streamed.extend_from_slice(chunk);
        }
        assert_eq!(streamed, p);

        // planning needs no key: header and footer are readable
        let tail = parse_tail(&obj, obj.len() as u64).unwrap();
        assert_eq!(tail.version, SEALED_FORMAT_VERSION);
        assert_eq!(tail.footer, meta.footer);
        let (ph, len) = parse_header(&obj).unwrap();
        assert_eq!(ph, meta.header);
        assert_eq!(len as u64, tail.header_len);

        // range reads with the object key
        let mut joined = Vec::new();
        for f in &tail.footer.frames {
            let ok = ObjectKey::from_header(&obj[..len], &keys).unwrap().unwrap();
            let r = f.range();
            joined.extend(
                decode_sealed_frame(&obj[r.start as usize..r.end as usize], f, ok).unwrap(),
            );
        }
        assert_eq!(joined, p);

        // the same log sealed again is the same object (retries are
        // recognised); other contents get other bytes throughout
        assert_eq!(seal(&h, key(3, 7), &p, 4096), obj);
        let mut q = p.clone();
        q[19_999] ^= 1;
        let other = seal(&h, key(3, 7), &q, 4096);
        assert_ne!(other[..len], obj[..len], "salt differs");
        let f0 = meta.footer.frames[0].range();
        let (a, b) = (f0.start as usize + 32, f0.start as usize + 64);
        assert_ne!(
            other[a..b],
            obj[a..b],
            "first frame differs although its plaintext is equal"
        );
    }
}

#[test]
fn without_the_right_key_nothing_is_read() {
    let h = header(Engine::MariaDb, Codec::Zstd { level: 1 }, "0-1-100");
    let p = payload(9000, 2);
    let obj = seal(&h, key(2, 5), &p, 4096);

    let e = decode(&obj).unwrap_err();
    assert!(matches!(e, SegmentError::KeyNeeded { key_id: 2 }), "{e}");
    assert!(e.to_string().contains("data key 2"), "{e}");
    let e = decode_with(&obj, &KeySet::new([key(1, 5)])).unwrap_err();
    assert!(matches!(e, SegmentError::KeyNeeded { key_id: 2 }), "{e}");
    assert!(matches!(
        ObjectKey::from_header(&obj, &KeySet::default()),
        Err(SegmentError::KeyNeeded { key_id: 2 })
    ));

    // a different key under the same id does not open the first frame
    let e = decode_with(&obj, &KeySet::new([key(2, 6)])).unwrap_err();
    assert!(
        matches!(
            e,
            SegmentError::NotAuthentic {
                part: Part::Frame(0),
                ..
            }
        ),
        "{e}"
    );
}

/// Makes every CRC-32C covering the first frame (whose header starts at
/// `frame_offset`) match its altered bytes again, as someone with write
/// access to the bucket could.
fn recompute_crcs(obj: &mut [u8], frame_offset: usize) {
    let c =
        u32::from_le_bytes(obj[frame_offset + 8..frame_offset + 12].try_into().unwrap()) as usize;
    let stored = frame_offset + 32..frame_offset + 32 + c;
    let crc = crc32c::crc32c(&obj[stored.clone()]);
    obj[frame_offset + 24..frame_offset + 28].copy_from_slice(&crc.to_le_bytes());
    let hcrc = crc32c::crc32c(&obj[frame_offset..frame_offset + 28]);
    obj[frame_offset + 28..frame_offset + 32].copy_from_slice(&hcrc.to_le_bytes());
    // the footer's index entry of frame 0 (first entry) carries the CRC too
    let n = obj.len();
    let footer_offset = u64::from_le_bytes(obj[n - 28..n - 20].try_into().unwrap()) as usize;
    let footer_len = u32::from_le_bytes(obj[n - 20..n - 16].try_into().unwrap()) as usize;
    obj[footer_offset + 60 + 24..footer_offset + 60 + 28].copy_from_slice(&crc.to_le_bytes());
    let fcrc = crc32c::crc32c(&obj[footer_offset..footer_offset + footer_len - 4]);
    obj[footer_offset + footer_len - 4..footer_offset + footer_len]
        .copy_from_slice(&fcrc.to_le_bytes());
    let ocrc = crc32c::crc32c(&obj[..n - 28]);
    obj[n - 12..n - 8].copy_from_slice(&ocrc.to_le_bytes());
}

#[test]
fn altered_bytes_are_refused_even_with_matching_checksums() {
    let h = header(Engine::Postgres, Codec::None, "42");
    let p = payload(3000, 4);
    let keys = KeySet::new([key(1, 9)]);
    let obj = seal(&h, key(1, 9), &p, 4096);
    let first = parse_tail(&obj, obj.len() as u64).unwrap().footer.frames[0];
    let at = first.offset as usize + 32 + 100;

    // a flipped byte: the checksum finds it, key or not
    let mut flipped = obj.clone();
    flipped[at] ^= 0x20;
    let e = decode_with(&flipped, &keys).unwrap_err();
    assert!(matches!(e, SegmentError::ChecksumMismatch { .. }), "{e}");

    // the same change with every checksum made to match: only the tag
    // notices, and no byte of the frame is handed out
    recompute_crcs(&mut flipped, first.offset as usize);
    let e = decode_with(&flipped, &keys).unwrap_err();
    match e {
        SegmentError::NotAuthentic { part, range } => {
            assert_eq!(part, Part::Frame(0));
            assert!(range.contains(at as u64), "{range}");
        }
        other => panic!("expected NotAuthentic, got {other}"),
    }
    let mut r = SegmentReader::with_keys(&flipped[..], &keys).unwrap();
    assert!(r.next_chunk().is_err());

    // a sealed header cannot be passed off as a plain one
    let mut plain = obj.clone();
    plain[8] = 1;
    assert!(decode(&plain).is_err());
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/v2")
}

const GOLDEN: &str = "sealed-mariadb-none.seg";
const GOLDEN_PAYLOAD_SHA256: &str =
    "286eaa724e3e5a184706f89f38aa813de3a9ad462f5c0cff70b383864fba0fb0";

fn golden_build() -> (Vec<u8>, Vec<u8>) {
    let h = SegmentHeader {
        key_id: 0,
        ..header(Engine::MariaDb, Codec::None, "0-1-100")
    };
    let p = payload(5000, 11);
    (seal(&h, key(4, 0x42), &p, 2048), p)
}

#[test]
fn sealed_golden_file_reads_and_is_reproduced() {
    use sha2::{Digest, Sha256};
    let path = golden_dir().join(GOLDEN);
    let obj = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (meta, p) = decode_with(&obj, &KeySet::new([key(4, 0x42)])).unwrap();
    assert_eq!(meta.header.key_id, 4);
    assert_eq!(meta.footer.frames.len(), 3);
    assert_eq!(format!("{:x}", Sha256::digest(&p)), GOLDEN_PAYLOAD_SHA256);
    let (built, payload) = golden_build();
    assert_eq!(payload, p);
    assert!(built == obj, "the sealed writer's output changed");
}

#[test]
#[ignore = "generates testdata/v2 golden file; run once, explicitly"]
fn generate_sealed_golden() {
    use sha2::{Digest, Sha256};
    std::fs::create_dir_all(golden_dir()).unwrap();
    let path = golden_dir().join(GOLDEN);
    let (obj, p) = golden_build();
    println!("payload sha256 {:x}", Sha256::digest(&p));
    if path.exists() {
        println!("{}: exists, not overwritten", path.display());
        return;
    }
    std::fs::write(&path, obj).unwrap();
}
