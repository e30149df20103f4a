//! The restore planner over the real fixture entries mixed with synthetic
//! transactions: exactly the entries up to the target (transactions by
//! their commit), commands alone, transactions whole, requests in bounds.

#![allow(clippy::unwrap_used)] // test helpers unwrap; the workspace lint targets production code

mod common;

use bson::raw::{RawBsonRef, RawDocument};
use common::{Item, UnitKind, UnitSpan};
use pitr_mongodb::apply::{plan, skip_ns};
use pitr_mongodb::{
    ApplyLimits, ApplyOptions, ApplyRequest, BatchKind, OpKind, OplogEntryRef, OplogTs,
};
use proptest::prelude::*;

/// What the target must receive, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    /// A real operation: op, ns, exact bytes of `o`.
    Op(String, String, Vec<u8>),
    /// A synthetic operation, by `_id`.
    Id(String),
    /// A `createIndexes` command on `db`.
    CreateIndexes(String),
}

fn op_of(d: &RawDocument) -> Expect {
    let ns = d.get_str("ns").unwrap_or("").to_string();
    let o = d.get_document("o").unwrap();
    if ns == "synthetic.coll" {
        return Expect::Id(o.get_str("_id").unwrap().to_string());
    }
    Expect::Op(
        d.get_str("op").unwrap().to_string(),
        ns,
        o.as_bytes().to_vec(),
    )
}

fn command_ns(e: &OplogEntryRef) -> String {
    let ns = e.ns().unwrap();
    let db = ns.split('.').next().unwrap();
    match e.o().unwrap().iter().next().unwrap().unwrap().1 {
        RawBsonRef::String(c) => format!("{db}.{c}"),
        _ => ns.to_string(),
    }
}

fn oracle(items: &[Item], spans: &[UnitSpan], target: OplogTs) -> Vec<Expect> {
    let mut out = Vec::new();
    let mut seen = vec![0usize; spans.len()];
    for (i, it) in items.iter().enumerate() {
        if it.ts > target {
            break;
        }
        let e = OplogEntryRef::from_bytes(&it.bytes).unwrap();
        if let Some(u) = it.unit {
            let s = &spans[u];
            let e_idx = seen[u];
            seen[u] += 1;
            match s.kind {
                UnitKind::Chain => out.extend(
                    s.ids
                        .iter()
                        .filter(|id| id.contains(&format!("-e{e_idx}-")))
                        .map(|id| Expect::Id(id.clone())),
                ),
                UnitKind::LargeTxn | UnitKind::PreparedCommit if i == s.last => {
                    out.extend(s.ids.iter().map(|id| Expect::Id(id.clone())))
                }
                _ => {}
            }
            continue;
        }
        match e.op() {
            OpKind::Noop | OpKind::Other => {}
            OpKind::Insert | OpKind::Update | OpKind::Delete => {
                if !skip_ns(e.ns().unwrap()) {
                    out.push(op_of(e.doc()));
                }
            }
            OpKind::Command => match e.command_name().unwrap() {
                "applyOps" => {
                    for op in e.apply_ops().unwrap() {
                        if !skip_ns(op.get_str("ns").unwrap()) {
                            out.push(op_of(op));
                        }
                    }
                }
                "startIndexBuild" | "abortIndexBuild" => {}
                "commitIndexBuild" | "createIndexes" => out.push(Expect::CreateIndexes(
                    e.ns().unwrap().split('.').next().unwrap().into(),
                )),
                _ => {
                    if !skip_ns(&command_ns(&e)) {
                        out.push(op_of(e.doc()));
                    }
                }
            },
        }
    }
    out
}

fn actual(reqs: &[ApplyRequest]) -> Vec<(usize, Expect)> {
    let mut out = Vec::new();
    for (r, req) in reqs.iter().enumerate() {
        if req.command.get("createIndexes").unwrap().is_some() {
            assert_eq!(req.kind, BatchKind::Command);
            out.push((r, Expect::CreateIndexes(req.db.clone())));
            continue;
        }
        assert_eq!(req.db, "admin");
        let ops = req.command.get_array("applyOps").unwrap();
        let mut n = 0;
        for op in ops {
            let op = op.unwrap().as_document().unwrap();
            for (k, _) in op.iter().map(|x| x.unwrap()) {
                assert!(
                    ["op", "ns", "o", "o2", "b"].contains(&k),
                    "field {k} sent to applyOps"
                );
            }
            if op.get_str("op").unwrap() == "c" {
                assert_eq!(
                    (req.kind, req.ops),
                    (BatchKind::Command, 1),
                    "commands run alone"
                );
            }
            out.push((r, op_of(op)));
            n += 1;
        }
        assert_eq!(n, req.ops);
    }
    out
}

fn check(items: &[Item], spans: &[UnitSpan], target: OplogTs, limits: ApplyLimits) {
    let mut opts = ApplyOptions::new(target);
    opts.limits = limits;
    let entries = items
        .iter()
        .map(|i| OplogEntryRef::from_bytes(&i.bytes).unwrap());
    let (reqs, stats) = plan(entries, opts).unwrap();
    let got = actual(&reqs);
    let want = oracle(items, spans, target);
    let got_ops: Vec<Expect> = got.iter().map(|(_, e)| e.clone()).collect();
    assert_eq!(got_ops, want, "target {target}");
    assert_eq!(
        stats.entries as usize,
        items.iter().filter(|i| i.ts <= target).count()
    );
    assert_eq!(stats.requests as usize, reqs.len());
    for r in &reqs {
        assert!(r.last_ts <= target);
        if r.ops > 1 {
            assert!(r.ops <= limits.max_ops && r.command.as_bytes().len() <= limits.max_bytes);
        }
    }
    // A committed transaction is in one request, or, when it alone exceeds
    // the bounds, in consecutive requests holding nothing else.
    for s in spans {
        if !matches!(s.kind, UnitKind::LargeTxn | UnitKind::PreparedCommit)
            || items[s.last].ts > target
        {
            continue;
        }
        let reqs_of: Vec<usize> = got
            .iter()
            .filter(|(_, e)| matches!(e, Expect::Id(id) if s.ids.contains(id)))
            .map(|(r, _)| *r)
            .collect();
        assert_eq!(reqs_of.len(), s.ids.len());
        let (a, b) = (reqs_of[0], reqs_of[reqs_of.len() - 1]);
        if a != b {
            assert!(stats.split_txns > 0);
            for r in a..=b {
                assert!(got
                    .iter()
                    .filter(|(x, _)| *x == r)
                    .all(|(_, e)| matches!(e, Expect::Id(id) if s.ids.contains(id))));
            }
        }
    }
}

fn kind() -> impl Strategy<Value = UnitKind> {
    prop_oneof![
        Just(UnitKind::LargeTxn),
        Just(UnitKind::PreparedCommit),
        Just(UnitKind::PreparedAbort),
        Just(UnitKind::Chain),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn plans_are_exact_for_any_target(
        units in prop::collection::vec((0usize..400, kind(), 1usize..5, 0usize..6), 0..10),
        pick in any::<prop::sample::Index>(),
        before in any::<bool>(),
        max_ops in 1usize..40,
        max_bytes in 200usize..20_000,
        small in any::<bool>(),
    ) {
        let (items, spans) = common::mixed_stream(&units);
        let t = items[pick.index(items.len())].ts;
        let target = if before { OplogTs { secs: t.secs, inc: t.inc.saturating_sub(1) } } else { t };
        let limits = if small { ApplyLimits { max_ops, max_bytes } } else { ApplyLimits::default() };
        check(&items, &spans, target, limits);
    }
}

#[test]
fn whole_stream_batches_many_entries_per_request() {
    let units = [
        (5, UnitKind::LargeTxn, 3, 0),
        (50, UnitKind::PreparedCommit, 2, 3),
        (60, UnitKind::PreparedAbort, 2, 1),
        (70, UnitKind::Chain, 2, 0),
    ];
    let (items, spans) = common::mixed_stream(&units);
    let target = items.last().unwrap().ts;
    check(&items, &spans, target, ApplyLimits::default());
    let (reqs, stats) = plan(
        items
            .iter()
            .map(|i| OplogEntryRef::from_bytes(&i.bytes).unwrap()),
        ApplyOptions::new(target),
    )
    .unwrap();
    assert!(stats.entries_per_request() > 3.0, "{stats:?}");
    assert_eq!((stats.txns_dropped, stats.split_txns), (1, 0));
    assert!(stats.skipped_noops == 28 && stats.skipped_index_builds > 0);
    assert!(reqs.iter().any(|r| r.kind == BatchKind::Command));
    // A target before the prepared transaction's commit drops it whole.
    let s = &spans[1];
    let t = items[s.last - 1].ts;
    let (_, st) = plan(
        items
            .iter()
            .map(|i| OplogEntryRef::from_bytes(&i.bytes).unwrap()),
        ApplyOptions::new(t),
    )
    .unwrap();
    assert!(st.txns_dropped >= 1);
    check(&items, &spans, t, ApplyLimits::default());
}
