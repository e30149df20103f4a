//! Measures the restore planner on a synthetic stream of 100,000 oplog
//! entries shaped like real ones (inserts, `$v: 2` updates, deletes, no-ops,
//! a command every 10,000 entries and a two-entry transaction every 1,000):
//! entries per `applyOps` round trip with batching versus one entry per
//! request, request bytes, and the planner's and segmenter's throughput.
//!
//! `cargo run --release -p pitr-mongodb --example apply_batching`

#![allow(clippy::unwrap_used)] // a measurement tool on data it builds itself

use std::time::Instant;

use bson::{doc, Binary, DateTime, RawDocumentBuf, Timestamp};
use pitr_mongodb::{plan, ApplyLimits, ApplyOptions, OplogEntryRef, OplogTs, Segmenter};

fn entry(i: u32) -> Vec<u8> {
    let ts = Timestamp {
        time: 1_700_000_000 + i / 100,
        increment: i % 100 + 1,
    };
    let ui = Binary {
        subtype: bson::spec::BinarySubtype::Uuid,
        bytes: vec![9; 16],
    };
    let wall = DateTime::from_millis(1_700_000_000_000 + i64::from(i) * 10);
    let d = if i % 10_000 == 9_999 {
        doc! {"op": "c", "ns": "bench.$cmd", "ui": ui, "o": {"collMod": "c", "validationLevel": "off"}, "ts": ts, "t": 1i64, "v": 2i64, "wall": wall}
    } else if i % 1_000 == 500 || i % 1_000 == 501 {
        let mut o = doc! {"applyOps": [
            {"op": "i", "ns": "bench.c", "ui": ui.clone(), "o": {"_id": i64::from(i) + 1_000_000, "v": "txn"}},
            {"op": "i", "ns": "bench.c", "ui": ui.clone(), "o": {"_id": i64::from(i) + 2_000_000, "v": "txn"}},
        ]};
        if i % 1_000 == 500 {
            o.insert("partialTxn", true);
        }
        let prev = if i % 1_000 == 500 {
            Timestamp {
                time: 0,
                increment: 0,
            }
        } else {
            Timestamp {
                time: 1_700_000_000 + (i - 1) / 100,
                increment: (i - 1) % 100 + 1,
            }
        };
        doc! {"lsid": {"id": ui.clone()}, "txnNumber": i64::from(i / 1_000), "op": "c", "ns": "admin.$cmd", "o": o,
        "ts": ts, "t": 1i64, "v": 2i64, "wall": wall, "prevOpTime": {"ts": prev, "t": 1i64}}
    } else {
        match i % 7 {
            0..=2 => {
                doc! {"op": "i", "ns": "bench.c", "ui": ui, "o": {"_id": i64::from(i), "name": format!("user {i}"), "score": f64::from(i), "tags": ["a", "b"]}, "o2": {"_id": i64::from(i)}, "ts": ts, "t": 1i64, "v": 2i64, "wall": wall}
            }
            3..=4 => {
                doc! {"op": "u", "ns": "bench.c", "ui": ui, "o": {"$v": 2, "diff": {"u": {"score": f64::from(i) * 2.0}}}, "o2": {"_id": i64::from(i - 3)}, "ts": ts, "t": 1i64, "v": 2i64, "wall": wall}
            }
            5 => {
                doc! {"op": "d", "ns": "bench.c", "ui": ui, "o": {"_id": i64::from(i - 5)}, "ts": ts, "t": 1i64, "v": 2i64, "wall": wall}
            }
            _ => {
                doc! {"op": "n", "ns": "", "o": {"msg": "periodic noop"}, "ts": ts, "t": 1i64, "v": 2i64, "wall": wall}
            }
        }
    };
    RawDocumentBuf::from_document(&d).unwrap().into_bytes()
}

fn main() {
    let n = 100_000u32;
    let stream: Vec<Vec<u8>> = (0..n).map(entry).collect();
    let bytes: usize = stream.iter().map(Vec::len).sum();
    let entries = || stream.iter().map(|b| OplogEntryRef::from_bytes(b).unwrap());
    let target = OplogTs::from_bson(bson::Timestamp {
        time: u32::MAX,
        increment: 0,
    });
    println!("stream: {n} entries, {bytes} bytes");

    let t = Instant::now();
    let now = Instant::now();
    let mut seg = Segmenter::new();
    let mut segs = 0;
    for e in entries() {
        seg.push(&e, now).unwrap();
        if seg.should_cut(1 << 20, std::time::Duration::from_secs(3600), now) {
            segs += usize::from(seg.cut().is_some());
        }
    }
    segs += usize::from(seg.cut().is_some());
    let el = t.elapsed();
    println!(
        "segmenter: {segs} segments of <= 1 MiB, {:.0} entries/s, {:.0} MB/s",
        f64::from(n) / el.as_secs_f64(),
        bytes as f64 / el.as_secs_f64() / 1e6
    );

    for (name, limits) in [
        (
            "one entry per request",
            ApplyLimits {
                max_ops: 1,
                max_bytes: 16 << 20,
            },
        ),
        (
            "batched, 1000 ops",
            ApplyLimits {
                max_ops: 1000,
                max_bytes: 16 << 20,
            },
        ),
        ("batched, default", ApplyLimits::default()),
    ] {
        let mut opts = ApplyOptions::new(target);
        opts.limits = limits;
        let t = Instant::now();
        let (reqs, stats) = plan(entries(), opts).unwrap();
        let el = t.elapsed();
        println!(
            "{name:>22}: {} requests, {:.1} entries/request, max {} ops, {:.1} MB sent, planned at {:.0} entries/s",
            reqs.len(),
            stats.entries_per_request(),
            stats.max_ops_per_request,
            stats.request_bytes as f64 / 1e6,
            f64::from(n) / el.as_secs_f64()
        );
    }
}
