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
