//! The fetch verbs' shared answers, on a PostgreSQL repository built
//! in-process: 0 written (the exact bytes), 1 not archived, 126 for every
//! other failure (a corrupt segment, a mistyped `--name`, another engine's
//! source), each with one sentence that says what to do.

#![allow(clippy::unwrap_used)] // test helpers unwrap; the workspace lint targets production code

use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use pitr::archive::identity::{ensure_identity, SourceIdentity};
use pitr::archive::keys::{SegmentKey, SourceName};
use pitr::storage::Repo;
use pitr_segment::{encode, Codec, Engine, Epoch, LogPos, SegmentHeader, WriterOptions};

/// WAL file size of the test cluster.
const WAL: u64 = 1 << 20;

fn payload(a: u64, b: u64) -> Vec<u8> {
    (a..b).map(|i| (i % 251) as u8).collect()
}

/// Stores WAL `[a, b)` of timeline 1 as one segment; returns its path.
async fn put_segment(repo: &Repo, dir: &Path, a: u64, b: u64) -> std::path::PathBuf {
    let header = SegmentHeader {
        engine: Engine::Postgres,
        source_id: "7301".into(),
        epoch: Epoch(1),
        start: LogPos::from_lsn(a),
        codec: Codec::Zstd { level: 1 },
        key_id: 0,
    };
    let obj = encode(
        header,
        &payload(a, b),
        LogPos::from_lsn(b),
        None,
        None,
        1,
        WriterOptions::default(),
    )
    .unwrap();
    let key = SegmentKey {
        source: SourceName::new("db").unwrap(),
        epoch: Epoch(1),
        start: LogPos::from_lsn(a),
        end: LogPos::from_lsn(b),
        tmin: None,
        tmax: None,
        generation: 0,
    }
    .to_key();
    repo.put_if_absent(&key, Bytes::from(obj)).await.unwrap();
    dir.join(key)
}

fn pitr(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pitr"))
        .args(args)
        .env_remove("PITR_REPO")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn fetch_verbs_tell_written_not_archived_and_failed_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("repo");
    std::fs::create_dir(&dir).unwrap();
    let repo = Repo::open(dir.to_str().unwrap()).await.unwrap();
    ensure_identity(&repo, &SourceIdentity::new("db", Engine::Postgres, "7301"))
        .await
        .unwrap();
    put_segment(&repo, &dir, 0, WAL).await;
    let second = put_segment(&repo, &dir, WAL, 2 * WAL).await;
    let r = dir.to_str().unwrap();
    let size = WAL.to_string();
    let dest = tmp.path().join("out");
    let d = dest.to_str().unwrap();
    let wal_fetch = |file: &str, name: &str| {
        pitr(&[
            "wal-fetch",
            "--repo",
            r,
            "--name",
            name,
            "--wal-segment-size",
            &size,
            "--prefetch",
            "0",
            file,
            d,
        ])
    };

    // Written: the exact bytes.
    let (code, err) = wal_fetch("000000010000000000000000", "db");
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read(&dest).unwrap(), payload(0, WAL));
    // Past the end of the archive: not archived.
    let (code, err) = wal_fetch("000000010000000000000002", "db");
    assert_eq!(code, 1, "{err}");
    // A mistyped --name is a failure, not the end of the archive.
    let (code, err) = wal_fetch("000000010000000000000002", "dbb");
    assert_eq!(code, 126, "{err}");
    assert!(
        err.contains("the repository holds no source named dbb (it holds db)"),
        "{err}"
    );
    // One flipped byte in a stored segment: a failure naming it.
    let mut bytes = std::fs::read(&second).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&second, bytes).unwrap();
    let (code, err) = wal_fetch("000000010000000000000001", "db");
    assert_eq!(code, 126, "{err}");
    assert!(
        err.contains("is corrupt") && err.contains("pitr verify"),
        "{err}"
    );

    // Another engine's verb: refused with the verb to use.
    let (code, err) = pitr(&["binlog-fetch", "--repo", r, "--name", "db", "--list"]);
    assert_eq!(code, 126, "{err}");
    assert!(
        err.contains(
            "source db is a PostgreSQL source; `pitr binlog-fetch` serves MySQL/MariaDB sources: use `pitr wal-fetch`"
        ),
        "{err}"
    );
    let (code, err) = pitr(&["oplog-fetch", "--repo", r, "--list"]);
    assert_eq!(code, 126, "{err}");
    assert!(
        err.contains("the repository holds no MongoDB source, only db (PostgreSQL)"),
        "{err}"
    );
}
