//! Shared helpers of the fixture tests: the real oplog entries recorded by
//! MongoDB's own tools (`shared/fixtures/mongodb-oplog` beside the project).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/fixtures/mongodb-oplog"
);

/// Every `.bson` file under the fixtures directory, sorted. Panics when the
/// directory is missing: the tests need the real data.
pub fn bson_files() -> Vec<PathBuf> {
    let root = Path::new(FIXTURES);
    assert!(
        root.join("README.md").is_file(),
        "the MongoDB oplog fixtures are missing at {}; they belong beside the project (shared/fixtures/mongodb-oplog)",
        root.display()
    );
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "bson") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Is this `.bson` file an oplog (rather than a dumped collection)?
/// `oplog*.bson`, `*_oplog.bson` and the files under `oplogs/bson/`.
pub fn is_oplog_file(p: &Path) -> bool {
    let name = p.file_name().unwrap().to_string_lossy();
    name.starts_with("oplog")
        || name.ends_with("_oplog.bson")
        || p.parent().is_some_and(|d| d.ends_with("oplogs/bson"))
}

pub fn oplog_files() -> Vec<PathBuf> {
    bson_files().into_iter().filter(|p| is_oplog_file(p)).collect()
}

/// All oplog fixture files' bytes, concatenated in file order, and each
/// file's bytes.
pub fn read_oplogs() -> Vec<(PathBuf, Vec<u8>)> {
    oplog_files()
        .into_iter()
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect()
}

use pitr_mongodb::oplog_file::OplogFileReader;
use pitr_mongodb::OplogTs;

/// Every fixture entry's exact bytes, sorted by `ts`, one entry per `ts`
/// (some fixture files repeat a `ts`: they were assembled by hand), so the
/// result is shaped like one server's oplog.
pub fn real_stream() -> Vec<(OplogTs, Vec<u8>)> {
    let mut all: Vec<(OplogTs, Vec<u8>)> = Vec::new();
    for (_, b) in read_oplogs() {
        for e in OplogFileReader::new(&b[..]) {
            let (_, e) = e.unwrap();
            all.push((e.ts(), e.raw_bytes().to_vec()));
        }
    }
    all.sort_by_key(|(ts, _)| *ts);
    all.dedup_by_key(|(ts, _)| *ts);
    all
}

use bson::{doc, Binary, Bson, DateTime, Document, RawDocumentBuf};

/// A unit of several entries inserted into the real stream.
#[derive(Debug, Clone, Copy)]
pub enum UnitKind {
    /// `k` entries with `partialTxn` then the committing `applyOps`.
    LargeTxn,
    /// `prepare` entry, then (`span` gaps later) `commitTransaction`.
    PreparedCommit,
    /// Same, ending with `abortTransaction`.
    PreparedAbort,
    /// `k` linked batches (`multiOpType: 1`).
    Chain,
}

/// Where a synthetic unit landed in the final stream.
#[derive(Debug, Clone)]
pub struct UnitSpan {
    pub kind: UnitKind,
    /// Indices of its first and last entry.
    pub first: usize,
    pub last: usize,
    /// `_id`s of its inner operations, in order.
    pub ids: Vec<String>,
}

/// One entry of the mixed stream.
#[derive(Debug, Clone)]
pub struct Item {
    pub ts: OplogTs,
    pub bytes: Vec<u8>,
    /// Index of the synthetic unit it belongs to.
    pub unit: Option<usize>,
}

fn uuid(n: u8) -> Bson {
    Bson::Binary(Binary {
        subtype: bson::spec::BinarySubtype::Uuid,
        bytes: vec![n; 16],
    })
}

fn inner(unit: usize, e: usize, n: usize, ids: &mut Vec<String>) -> Vec<Bson> {
    (0..n)
        .map(|j| {
            let id = format!("u{unit}-e{e}-op{j}");
            ids.push(id.clone());
            Bson::Document(doc! {
                "op": "i", "ns": "synthetic.coll", "ui": uuid(7), "o": {"_id": id.clone(), "pad": "x".repeat(40)},
                "o2": {"_id": id}, "stmtId": j as i32,
            })
        })
        .collect()
}

/// An entry in the field order of a real transaction entry.
fn txn_entry(unit: usize, ts: OplogTs, term: Option<i64>, prev: Option<OplogTs>, o: Document, multi: bool) -> Vec<u8> {
    let mut d = doc! {
        "lsid": {"id": uuid(unit as u8), "uid": Binary{subtype: bson::spec::BinarySubtype::Generic, bytes: vec![3; 32]}},
        "txnNumber": 1i64, "op": "c", "ns": "admin.$cmd", "o": o, "ts": ts.to_bson(),
    };
    if let Some(t) = term {
        d.insert("t", t);
    }
    d.insert("v", 2i64);
    d.insert("wall", DateTime::from_millis(i64::from(ts.secs) * 1000));
    let p = prev.unwrap_or(OplogTs { secs: 0, inc: 0 });
    d.insert("prevOpTime", doc! {"ts": p.to_bson(), "t": if prev.is_some() { term.unwrap_or(1) } else { -1 }});
    if multi {
        d.insert("multiOpType", 1);
    }
    RawDocumentBuf::from_document(&d).unwrap().into_bytes()
}

/// The real stream with synthetic units inserted into the gaps between
/// real entries of different seconds. `units`: (gap choice, kind, size,
/// span in gaps for prepared transactions).
pub fn mixed_stream(units: &[(usize, UnitKind, usize, usize)]) -> (Vec<Item>, Vec<UnitSpan>) {
    let real = real_stream();
    let gaps: Vec<usize> = (0..real.len())
        .filter(|&i| i + 1 == real.len() || real[i + 1].0.secs > real[i].0.secs)
        .collect();
    // Per real index: synthetic entries (unit, bytes builder) after it.
    type Pending = (usize, Box<dyn Fn(OplogTs, Option<i64>, Option<OplogTs>) -> Vec<u8>>);
    let mut after: Vec<Vec<Pending>> = (0..real.len()).map(|_| Vec::new()).collect();
    let mut ids: Vec<Vec<String>> = Vec::new();
    for (u, &(g, kind, size, span)) in units.iter().enumerate() {
        let gi = gaps[g % gaps.len()];
        let mut unit_ids = Vec::new();
        let k = size.max(1);
        match kind {
            UnitKind::LargeTxn | UnitKind::Chain => {
                let multi = matches!(kind, UnitKind::Chain);
                for e in 0..k {
                    let ops = inner(u, e, 2, &mut unit_ids);
                    let last = e + 1 == k;
                    after[gi].push((
                        u,
                        Box::new(move |ts, t, prev| {
                            let mut o = doc! {"applyOps": ops.clone()};
                            if !last && !multi {
                                o.insert("partialTxn", true);
                            }
                            txn_entry(u, ts, t, prev, o, multi)
                        }),
                    ));
                }
            }
            UnitKind::PreparedCommit | UnitKind::PreparedAbort => {
                let ops = inner(u, 0, k, &mut unit_ids);
                after[gi].push((
                    u,
                    Box::new(move |ts, t, prev| {
                        txn_entry(u, ts, t, prev, doc! {"applyOps": ops.clone(), "prepare": true}, false)
                    }),
                ));
                let gj = gaps[(g % gaps.len() + span).min(gaps.len() - 1)];
                let commit = matches!(kind, UnitKind::PreparedCommit);
                after[gj].push((
                    u,
                    Box::new(move |ts, t, prev| {
                        let o = if commit {
                            doc! {"commitTransaction": 1, "commitTimestamp": ts.to_bson()}
                        } else {
                            doc! {"abortTransaction": 1}
                        };
                        txn_entry(u, ts, t, prev, o, false)
                    }),
                ));
            }
        }
        ids.push(unit_ids);
    }
    let mut out = Vec::new();
    let mut last_of: Vec<Option<OplogTs>> = vec![None; units.len()];
    let mut spans: Vec<UnitSpan> = units
        .iter()
        .enumerate()
        .map(|(u, &(_, kind, _, _))| UnitSpan { kind, first: usize::MAX, last: 0, ids: ids[u].clone() })
        .collect();
    for (i, (ts, bytes)) in real.iter().enumerate() {
        out.push(Item { ts: *ts, bytes: bytes.clone(), unit: None });
        let term = pitr_mongodb::OplogEntryRef::from_bytes(bytes).unwrap().term();
        for (j, (u, build)) in after[i].iter().enumerate() {
            let sts = OplogTs { secs: ts.secs, inc: ts.inc + 1 + j as u32 };
            let b = build(sts, term, last_of[*u]);
            last_of[*u] = Some(sts);
            spans[*u].first = spans[*u].first.min(out.len());
            spans[*u].last = out.len();
            out.push(Item { ts: sts, bytes: b, unit: Some(*u) });
        }
    }
    (out, spans)
}
