//! `pitr status` and `pitr verify` on repositories built in-process in a
//! temporary directory: a healthy one, one with a recorded gap, one with a
//! hole and corrupted objects, one without base backups.

#![allow(clippy::unwrap_used)] // test helpers unwrap; the workspace lint targets production code

use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use pitr::archive::gaps::{write_gap, GapRecord};
use pitr::archive::identity::{ensure_identity, SourceIdentity};
use pitr::archive::keys::{BackupKey, SegmentKey, SourceName};
use pitr::backup::postgres::manifest::{ArchiveInfo, BackupManifest, PartInfo};
use pitr::monitor::status::repo_status;
use pitr::storage::Repo;
use pitr_postgres::lsn::Lsn;
use pitr_segment::{
    encode, Codec, Engine, Epoch, LogPos, SegmentHeader, TimestampMicros, WriterOptions,
};
use sha2::{Digest, Sha256};

const SYSID: &str = "7301234567890123456";
/// 2024-01-01T00:00:00Z in µs.
const T0: i64 = 1_704_067_200_000_000;

fn src() -> SourceName {
    SourceName::new("db").unwrap()
}

async fn put_segment(repo: &Repo, epoch: u64, a: u64, b: u64, t: (i64, i64)) -> String {
    let header = SegmentHeader {
        engine: Engine::Postgres,
        source_id: SYSID.to_string(),
        epoch: Epoch(epoch),
        start: LogPos::from_lsn(a),
        codec: Codec::Zstd { level: 1 },
        key_id: 0,
    };
    let payload: Vec<u8> = (a..b).map(|i| (i % 251) as u8).collect();
    let (tmin, tmax) = (TimestampMicros(T0 + t.0), TimestampMicros(T0 + t.1));
    let obj = encode(
        header,
        &payload,
        LogPos::from_lsn(b),
        Some(tmin),
        Some(tmax),
        3,
        WriterOptions::default(),
    )
    .unwrap();
    let key = SegmentKey {
        source: src(),
        epoch: Epoch(epoch),
        start: LogPos::from_lsn(a),
        end: LogPos::from_lsn(b),
        tmin: Some(tmin),
        tmax: Some(tmax),
        generation: 0,
    }
    .to_key();
    repo.put_if_absent(&key, Bytes::from(obj)).await.unwrap();
    key
}

fn at(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(T0 + us).unwrap()
}

/// A backup starting at `start`, consistent at `stop`, finished at `stop_us`.
async fn put_backup(repo: &Repo, start: u64, stop: u64, stop_us: i64) -> String {
    let key = BackupKey::new(src(), LogPos::from_lsn(start), "b1").unwrap();
    let part = b"zstd bytes of base.tar".to_vec();
    let part_key = key.part_key("base.tar.zst.000").unwrap();
    repo.put_if_absent(&part_key, Bytes::from(part.clone()))
        .await
        .unwrap();
    let m = BackupManifest {
        format_version: 1,
        id: "b1".into(),
        label: "test".into(),
        engine: "postgres".into(),
        system_id: SYSID.into(),
        server_version: "15.8".into(),
        timeline: 1,
        start_lsn: Lsn(start),
        stop_lsn: Lsn(stop),
        start_time: at(stop_us - 1_000_000),
        stop_time: at(stop_us),
        archives: vec![ArchiveInfo {
            name: "base.tar".into(),
            tablespace_oid: None,
            tablespace_path: String::new(),
            size: 1000,
            sha256: "00".into(),
            parts: vec![PartInfo {
                key: "base.tar.zst.000".into(),
                size: part.len() as u64,
                sha256: hex::encode(Sha256::digest(&part)),
            }],
        }],
        backup_manifest: None,
    };
    repo.put_if_absent(&key.to_key(), Bytes::from(serde_json::to_vec(&m).unwrap()))
        .await
        .unwrap();
    part_key
}

async fn new_repo(dir: &Path) -> Repo {
    let repo = Repo::open(dir.to_str().unwrap()).await.unwrap();
    ensure_identity(&repo, &SourceIdentity::new("db", Engine::Postgres, SYSID))
        .await
        .unwrap();
    repo
}

fn pitr(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pitr"))
        .args(args)
        .env_remove("PITR_REPO")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn status_json(dir: &Path, extra: &[&str]) -> (i32, serde_json::Value, String) {
    let mut args = vec!["status", "--json", "--repo", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (code, out, err) = pitr(&args);
    (code, serde_json::from_str(&out).unwrap(), err)
}

#[tokio::test]
async fn healthy_repo_reports_window_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(dir.path()).await;
    put_segment(&repo, 1, 0, 100, (1_000_000, 2_000_000)).await;
    put_segment(&repo, 1, 100, 200, (3_000_000, 4_000_000)).await;
    put_segment(&repo, 1, 200, 300, (5_000_000, 6_000_000)).await;
    put_backup(&repo, 40, 120, 3_500_000).await;

    let (code, j, err) = status_json(dir.path(), &[]);
    assert_eq!(code, 0, "{err}");
    let s = &j["sources"][0];
    assert_eq!(s["name"], "db");
    assert_eq!(s["engine"], "postgres");
    assert_eq!(s["segments"], 3);
    assert_eq!(s["base_backups"], 1);
    assert_eq!(s["gaps"].as_array().unwrap().len(), 0);
    let start: DateTime<Utc> = serde_json::from_value(s["window"]["start"].clone()).unwrap();
    let end: DateTime<Utc> = serde_json::from_value(s["window"]["end"].clone()).unwrap();
    assert_eq!(
        start,
        at(3_500_000),
        "window starts at the backup's stop time"
    );
    assert_eq!(
        end,
        at(6_000_000),
        "window ends at the newest reachable commit"
    );
    // Commits are from 2024: the lag is large, so --max-lag fails.
    assert!(s["lag_seconds"].as_f64().unwrap() > 86_400.0);
    let (code, _, err) = status_json(dir.path(), &["--max-lag", "1h"]);
    assert_eq!(code, 1);
    assert!(err.contains("archive lag"), "{err}");

    let (code, out, _) = pitr(&["status", "--repo", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        out.contains("recoverable window    2024-01-01 00:00:03.500000 UTC"),
        "{out}"
    );

    let (code, out, err) = pitr(&["verify", "--repo", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("3 segment(s)") && out.contains("1 part(s): 0 problem(s)"),
        "{out}"
    );
}

#[tokio::test]
async fn recorded_gap_splits_window_and_fails_status() {
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(dir.path()).await;
    put_segment(&repo, 1, 0, 100, (1_000_000, 2_000_000)).await;
    put_segment(&repo, 1, 100, 200, (3_000_000, 4_000_000)).await;
    put_segment(&repo, 1, 300, 400, (7_000_000, 8_000_000)).await;
    write_gap(
        &repo,
        &src(),
        &GapRecord {
            epoch: Epoch(1),
            start: LogPos::from_lsn(200),
            end: LogPos::from_lsn(300),
            reason: "replication slot invalidated".into(),
            detected_at: Utc::now(),
            generation: 0,
        },
    )
    .await
    .unwrap();
    put_backup(&repo, 0, 50, 1_500_000).await;

    let st = repo_status(&repo, None).await.unwrap();
    let w = st.sources[0].window.unwrap();
    assert_eq!(w.end, at(4_000_000), "the window stops at the gap");
    let (code, j, err) = status_json(dir.path(), &[]);
    assert_eq!(code, 1, "a gap inside the window fails status");
    let g = &j["sources"][0]["gaps"][0];
    assert_eq!(g["reason"], "replication slot invalidated");
    assert_eq!(g["start"], LogPos::from_lsn(200).to_hex());
    assert_eq!(g["inside_window"], true);
    assert!(err.contains("replication slot invalidated"), "{err}");

    // A recorded gap is not a verify problem: the archive is what it says.
    let (code, out, _) = pitr(&["verify", "--repo", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 gap record(s)"), "{out}");
}

#[tokio::test]
async fn verify_reports_hole_and_corrupt_objects_with_keys() {
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(dir.path()).await;
    put_segment(&repo, 1, 0, 100, (1_000_000, 2_000_000)).await;
    let bad = put_segment(&repo, 1, 100, 200, (3_000_000, 4_000_000)).await;
    let after_hole = put_segment(&repo, 1, 300, 400, (7_000_000, 8_000_000)).await;
    let part = put_backup(&repo, 0, 50, 1_500_000).await;

    let (code, out, _) = pitr(&["verify", "--repo", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("hole in the log"), "{out}");
    assert!(out.contains(&after_hole), "{out}");

    // Flip one byte in the middle of a segment and one in the backup part.
    let p = dir.path().join(&bad);
    let mut bytes = std::fs::read(&p).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&p, bytes).unwrap();
    let pp = dir.path().join(&part);
    let mut bytes = std::fs::read(&pp).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&pp, bytes).unwrap();

    let (code, out, _) = pitr(&["verify", "--json", "--repo", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    let problems = j["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 3, "{out}");
    let corrupt = problems.iter().find(|p| p["key"] == bad.as_str()).unwrap();
    assert!(
        corrupt["message"]
            .as_str()
            .unwrap()
            .contains("corrupt segment"),
        "{out}"
    );
    assert_eq!(
        corrupt["position"],
        format!("{}/{}", Epoch(1).to_hex(), LogPos::from_lsn(100).to_hex())
    );
    let sha = problems.iter().find(|p| p["key"] == part.as_str()).unwrap();
    assert!(sha["message"].as_str().unwrap().contains("sha256"), "{out}");

    // status sees the hole (no gap record) as inside the window too.
    let (code, j, _) = status_json(dir.path(), &[]);
    assert_eq!(code, 1);
    assert_eq!(j["sources"][0]["gaps"][0]["recorded"], false);
}

#[tokio::test]
async fn segment_whose_key_lies_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(dir.path()).await;
    let good = put_segment(&repo, 1, 0, 100, (1_000_000, 2_000_000)).await;
    // Same bytes stored under a key claiming a different end position.
    let body = repo.get(&good).await.unwrap();
    let liar = SegmentKey::parse(&good).unwrap();
    let liar = SegmentKey {
        start: LogPos::from_lsn(100),
        end: LogPos::from_lsn(150),
        ..liar
    };
    repo.put_if_absent(&liar.to_key(), body).await.unwrap();
    let (code, out, _) = pitr(&["verify", "--repo", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("header start") && out.contains("footer end"),
        "{out}"
    );
    assert!(out.contains(&liar.to_key()), "{out}");
}

#[tokio::test]
async fn no_base_backup_means_nothing_restorable() {
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(dir.path()).await;
    put_segment(&repo, 1, 0, 100, (1_000_000, 2_000_000)).await;
    let (code, j, _) = status_json(dir.path(), &[]);
    assert_eq!(code, 0);
    let s = &j["sources"][0];
    assert!(s["window"].is_null());
    assert!(s["note"].as_str().unwrap().contains("no base backup"));
    assert!(!s["log_coverage"].is_null());
    let (_, out, _) = pitr(&["status", "--repo", dir.path().to_str().unwrap()]);
    assert!(out.contains("nothing is restorable"), "{out}");
}

#[test]
fn unreadable_repository_exits_2() {
    let (code, _, err) = pitr(&["status", "--repo", "ftp://nowhere/x"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    let (code, _, err) = pitr(&["verify", "--repo", "ftp://nowhere/x"]);
    assert_eq!(code, 2, "{err}");
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = pitr(&[
        "status",
        "--repo",
        dir.path().to_str().unwrap(),
        "--name",
        "nope",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("no source named"), "{err}");
}
