//! The segmenter never cuts inside a transaction or a chain of linked
//! batches, whatever the cut sizes, over the real fixture entries mixed
//! with large, prepared and aborted transactions and linked batches built
//! in the shape of the real ones.

mod common;

use std::time::{Duration, Instant};

use common::{Item, UnitKind, UnitSpan};
use pitr_mongodb::{oplog_file, OplogEntryRef, OplogTs, Segmenter};
use proptest::prelude::*;

fn kind() -> impl Strategy<Value = UnitKind> {
    prop_oneof![
        Just(UnitKind::LargeTxn),
        Just(UnitKind::PreparedCommit),
        Just(UnitKind::PreparedAbort),
        Just(UnitKind::Chain),
    ]
}

fn run(items: &[Item], max_bytes: usize, extra_cuts: &[bool]) -> Vec<pitr_mongodb::SealedOplogSegment> {
    let now = Instant::now();
    let mut s = Segmenter::new();
    let mut out = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let e = OplogEntryRef::from_bytes(&it.bytes).unwrap();
        out.extend(s.push(&e, now).unwrap());
        if s.should_cut(max_bytes, Duration::from_secs(3600), now)
            || extra_cuts.get(i % extra_cuts.len().max(1)).copied().unwrap_or(false)
        {
            out.extend(s.cut());
        }
    }
    s.end_of_input(now);
    out.extend(s.cut());
    out
}

fn term(b: &[u8]) -> Option<i64> {
    OplogEntryRef::from_bytes(b).unwrap().term()
}

/// Spans of the real linked batches (`multiOpType: 1` chained by prevOpTime).
fn real_chain_spans(items: &[Item]) -> Vec<(usize, usize)> {
    let a: OplogTs = "1719861048,2".parse().unwrap();
    let b: OplogTs = "1719861048,3".parse().unwrap();
    let ia = items.iter().position(|i| i.ts == a).unwrap();
    let ib = items.iter().position(|i| i.ts == b).unwrap();
    assert_eq!(ib, ia + 1);
    vec![(ia, ib)]
}

fn check(items: &[Item], spans: &[UnitSpan], segs: &[pitr_mongodb::SealedOplogSegment]) {
    // Bytes: nothing lost, nothing added, order kept.
    let all: Vec<u8> = items.iter().flat_map(|i| i.bytes.clone()).collect();
    let back: Vec<u8> = segs.iter().flat_map(|s| s.raw.clone()).collect();
    assert_eq!(all, back);
    // Boundaries (as entry indices) never fall inside a span, except where
    // the term changes (a forced epoch cut).
    let mut bounds = Vec::new();
    let mut n = 0usize;
    for s in &segs[..segs.len() - 1] {
        n += oplog_file::entries(&s.raw).count();
        bounds.push(n);
    }
    let mut all_spans: Vec<(usize, usize)> = spans.iter().map(|s| (s.first, s.last)).collect();
    all_spans.extend(real_chain_spans(items));
    for k in bounds {
        for &(a, b) in &all_spans {
            if a < k && k <= b {
                assert_ne!(
                    term(&items[k - 1].bytes),
                    term(&items[k].bytes),
                    "cut before entry {k} splits the unit {a}..={b}"
                );
            }
        }
    }
    for w in segs.windows(2) {
        assert_eq!(w[0].end, w[1].start);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn random_cuts_never_split_a_unit(
        units in prop::collection::vec((0usize..400, kind(), 1usize..4, 0usize..6), 0..10),
        max_bytes in 1usize..6000,
        extra in prop::collection::vec(any::<bool>(), 1..50),
    ) {
        let (items, spans) = common::mixed_stream(&units);
        let segs = run(&items, max_bytes, &extra);
        check(&items, &spans, &segs);
    }
}

#[test]
fn cutting_after_every_entry_still_keeps_units_whole() {
    let units = [
        (3, UnitKind::LargeTxn, 3, 0),
        (10, UnitKind::PreparedCommit, 2, 4),
        (11, UnitKind::PreparedAbort, 1, 2),
        (20, UnitKind::Chain, 3, 0),
    ];
    let (items, spans) = common::mixed_stream(&units);
    let segs = run(&items, 1, &[true]);
    check(&items, &spans, &segs);
    // Units that did not straddle a term change are in one segment each.
    let whole = spans
        .iter()
        .filter(|s| term(&items[s.first].bytes) == term(&items[s.last].bytes))
        .count();
    assert!(whole >= 3);
    assert!(segs.len() > items.len() / 2);
}
