//! Segment write/read throughput versus raw zstd level 1 on the same bytes.
//!
//! Run: `cargo bench -p pitr-segment --bench throughput`
//! Real WAL: `PITR_BENCH_INPUT=/path/to/000000010000000000000001 cargo bench -p pitr-segment --bench throughput`
//! Otherwise 64 MiB of generated WAL-like data is used (`PITR_BENCH_MB` to change).
//! Each measurement is the best of `PITR_BENCH_ITERS` (default 5) runs.
//! Throughput is raw (uncompressed) MB/s (1 MB = 10^6 bytes).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use pitr_segment::{
    decode, decode_with, Codec, Engine, KeySet, LogPos, Seal, SealKey, SegmentReader,
    SegmentWriter, WriterOptions, DEFAULT_FRAME_SIZE,
};

fn best<T>(iters: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best: Option<(Duration, T)> = None;
    for _ in 0..iters {
        let t = Instant::now();
        let out = f();
        let d = t.elapsed();
        if best.as_ref().is_none_or(|(bd, _)| d < *bd) {
            best = Some((d, out));
        }
    }
    match best {
        Some(b) => b,
        None => panic!("no iterations"),
    }
}

fn mbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

fn main() {
    let iters: usize = std::env::var("PITR_BENCH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let (input, what) = match std::env::var("PITR_BENCH_INPUT") {
        Ok(path) => match std::fs::read(&path) {
            Ok(b) => (b, format!("file {path}")),
            Err(e) => panic!("cannot read PITR_BENCH_INPUT {path}: {e}"),
        },
        Err(_) => {
            let mb: usize = std::env::var("PITR_BENCH_MB")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(64);
            (
                common::wal_like(mb << 20, 42),
                format!("generated WAL-like, {mb} MiB"),
            )
        }
    };
    let n = input.len();
    let chunk = DEFAULT_FRAME_SIZE;
    println!("input: {what} ({n} bytes), frame size {chunk}, zstd level 1, best of {iters}");

    // raw zstd, bulk API, one 1 MiB block at a time with a reused context
    let (t_bulk_c, bulk_blocks) = best(iters, || {
        let mut c = zstd::bulk::Compressor::new(1).expect("compressor");
        input
            .chunks(chunk)
            .map(|b| c.compress(b).expect("compress"))
            .collect::<Vec<_>>()
    });
    let bulk_len: usize = bulk_blocks.iter().map(Vec::len).sum();
    let (t_bulk_d, _) = best(iters, || {
        let mut d = zstd::bulk::Decompressor::new().expect("decompressor");
        let mut total = 0;
        for b in &bulk_blocks {
            total += d.decompress(b, chunk).expect("decompress").len();
        }
        assert_eq!(total, n);
    });

    // raw zstd, streaming API over the whole input
    let (t_stream_c, stream_out) = best(iters, || {
        let mut e = zstd::stream::Encoder::new(Vec::with_capacity(n / 2), 1).expect("encoder");
        for b in input.chunks(64 << 10) {
            e.write_all(b).expect("write");
        }
        e.finish().expect("finish")
    });
    let (t_stream_d, _) = best(iters, || {
        let mut d = zstd::stream::Decoder::new(&stream_out[..]).expect("decoder");
        let mut buf = vec![0u8; 64 << 10];
        let mut total = 0;
        loop {
            let k = d.read(&mut buf).expect("read");
            if k == 0 {
                break;
            }
            total += k;
        }
        assert_eq!(total, n);
    });

    // raw zstd into one fresh Vec: the baseline for decode()
    let (t_decode_all, _) = best(iters, || {
        let out = zstd::stream::decode_all(&stream_out[..]).expect("decode_all");
        assert_eq!(out.len(), n);
    });

    // segment writer, fed 64 KiB at a time like a network stream
    let header = common::header(Engine::Postgres, Codec::Zstd { level: 1 }, "bench");
    let end = LogPos::new(header.start.hi, header.start.lo + n as u64);
    let (t_seg_w, seg) = best(iters, || {
        let mut w = SegmentWriter::new(
            Vec::with_capacity(n / 2),
            header.clone(),
            WriterOptions::default(),
        )
        .expect("writer");
        for b in input.chunks(64 << 10) {
            w.write_all(b).expect("write");
        }
        w.finish(end, None, None, 0).expect("finish").0
    });
    // segment reader through std::io::Read into a 64 KiB buffer
    let (t_seg_r, _) = best(iters, || {
        let mut r = SegmentReader::new(&seg[..]).expect("reader");
        let mut buf = vec![0u8; 64 << 10];
        let mut total = 0;
        loop {
            let k = r.read(&mut buf).expect("read");
            if k == 0 {
                break;
            }
            total += k;
        }
        assert_eq!(total, n);
    });
    // segment reader, zero-copy chunks
    let (t_seg_chunks, _) = best(iters, || {
        let mut r = SegmentReader::new(&seg[..]).expect("reader");
        let mut total = 0;
        while let Some(c) = r.next_chunk().expect("chunk") {
            total += c.len();
        }
        assert_eq!(total, n);
    });
    let (t_decode, _) = best(iters, || decode(&seg).expect("decode"));

    // sealed (AES-256-GCM) segments: the salt pass over the payload
    // (HMAC-SHA256) is part of writing, as in the archiver
    let key = SealKey::new(1, [7; 32]).expect("key");
    let (t_sealed_w, sealed) = best(iters, || {
        let seal = Seal::for_payload(key.clone(), &header, input.chunks(64 << 10));
        let opts = WriterOptions {
            seal: Some(seal),
            ..WriterOptions::default()
        };
        let mut w =
            SegmentWriter::new(Vec::with_capacity(n / 2), header.clone(), opts).expect("writer");
        for b in input.chunks(64 << 10) {
            w.write_all(b).expect("write");
        }
        w.finish(end, None, None, 0).expect("finish").0
    });
    let keys = KeySet::new([key.clone()]);
    let (t_sealed_d, _) = best(iters, || {
        decode_with(&sealed, &keys).expect("decode sealed")
    });

    let ratio = |len: usize| n as f64 / len as f64;
    println!();
    println!("| operation | MB/s | vs raw bulk | ratio |");
    println!("|---|---:|---:|---:|");
    let row = |name: &str, d: Duration, base: Duration, len: Option<usize>| {
        println!(
            "| {name} | {:.0} | {:.0}% | {} |",
            mbps(n, d),
            100.0 * base.as_secs_f64() / d.as_secs_f64(),
            len.map_or(String::from("-"), |l| format!("{:.2}", ratio(l)))
        );
    };
    row(
        "compress: zstd::bulk L1, 1 MiB blocks",
        t_bulk_c,
        t_bulk_c,
        Some(bulk_len),
    );
    row(
        "compress: zstd::stream L1",
        t_stream_c,
        t_bulk_c,
        Some(stream_out.len()),
    );
    row(
        "compress: SegmentWriter",
        t_seg_w,
        t_bulk_c,
        Some(seg.len()),
    );
    row(
        "compress + seal: SegmentWriter, AES-256-GCM",
        t_sealed_w,
        t_bulk_c,
        Some(sealed.len()),
    );
    row(
        "decompress: zstd::bulk, 1 MiB blocks",
        t_bulk_d,
        t_bulk_d,
        None,
    );
    row("decompress: zstd::stream", t_stream_d, t_bulk_d, None);
    row(
        "decompress: SegmentReader (io::Read, 64 KiB buf)",
        t_seg_r,
        t_bulk_d,
        None,
    );
    row(
        "decompress: SegmentReader::next_chunk",
        t_seg_chunks,
        t_bulk_d,
        None,
    );
    row(
        "decompress: zstd::stream::decode_all into Vec",
        t_decode_all,
        t_bulk_d,
        None,
    );
    row(
        "decompress: segment decode() into Vec",
        t_decode,
        t_bulk_d,
        None,
    );
    row(
        "open + decompress: sealed decode_with() into Vec",
        t_sealed_d,
        t_bulk_d,
        None,
    );
}
