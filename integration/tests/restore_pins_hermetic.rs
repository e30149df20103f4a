//! Restore pins and planned WAL without a server: the pin API on a
//! `memory://` repository, and `wal-fetch` telling a planned-but-missing
//! WAL file (exit 126: abort recovery) from one past the plan (exit 1).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chrono::Utc;
use pitr::archive::keys::{BackupKey, SourceName};
use pitr::archive::pins::{live_pins, Pin, PinGuard, PinRange};
use pitr::storage::Repo;
use pitr_integration::pitr_bin;
use pitr_segment::{Epoch, LogPos};

fn pos(lo: u64) -> LogPos {
    LogPos { hi: 0, lo }
}

#[tokio::test]
async fn pins_are_live_until_released_and_cover_what_they_name() {
    let repo = Repo::open("memory://").await.unwrap();
    let source = SourceName::new("src").unwrap();
    let backup = BackupKey::new(source.clone(), pos(0x100), "20260101T000000000Z").unwrap();
    let other = BackupKey::new(source.clone(), pos(0x900), "20260102T000000000Z").unwrap();
    let ranges = vec![
        PinRange::new(Epoch(1), pos(0x100), Some(pos(0x500))),
        PinRange::new(Epoch(2), pos(0x500), None),
    ];
    let ttl = Duration::from_secs(60);
    // A pin that lapsed two days ago: the next restore removes it.
    let two_days_ago = Utc::now() - chrono::Duration::days(2);
    let stale = Pin::new(&source, "old", &other, vec![], two_days_ago, ttl);
    PinGuard::acquire(&repo, stale, ttl).await.unwrap().detach();
    assert_eq!(repo.list("src/pins/").await.unwrap().len(), 1);
    let pin = Pin::new(&source, "time x", &backup, ranges, Utc::now(), ttl);
    let guard = PinGuard::acquire(&repo, pin.clone(), ttl).await.unwrap();
    assert_eq!(
        repo.list("src/pins/").await.unwrap().len(),
        1,
        "the stale pin is gone"
    );

    let live = live_pins(&repo, &source, Utc::now()).await.unwrap();
    assert_eq!(live, vec![pin.clone()]);
    let p = &live[0];
    assert!(p.protects_backup(&backup));
    assert!(!p.protects_backup(&other));
    assert!(p.protects_range(Epoch(1), pos(0x400), pos(0x600)));
    assert!(!p.protects_range(Epoch(1), pos(0x500), pos(0x600))); // end exclusive
    assert!(!p.protects_range(Epoch(1), pos(0), pos(0x100)));
    assert!(p.protects_range(Epoch(2), pos(0x10_0000), pos(0x20_0000))); // open-ended
    assert!(!p.protects_range(Epoch(3), pos(0), pos(0x100)));
    assert!(p
        .describe()
        .contains(&format!("pid {}", std::process::id())));

    // Past its expiry a pin is not live (a crashed restore's pin lapses).
    let later = Utc::now() + chrono::Duration::seconds(61);
    assert!(live_pins(&repo, &source, later).await.unwrap().is_empty());

    guard.release().await.unwrap();
    assert!(live_pins(&repo, &source, Utc::now())
        .await
        .unwrap()
        .is_empty());
    assert!(repo.list("src/pins/").await.unwrap().is_empty());
}

#[test]
fn wal_fetch_of_a_planned_but_missing_file_aborts_recovery() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(repo.join("src")).unwrap();
    let dest = tmp.path().join("dest");
    let run = |file: &str, plan: &[&str]| {
        let mut c = std::process::Command::new(pitr_bin());
        c.args([
            "wal-fetch",
            "--repo",
            repo.to_str().unwrap(),
            "--name",
            "src",
        ]);
        c.args(["--prefetch", "0"]);
        for r in plan {
            c.args(["--plan-range", r]);
        }
        let o = c.arg(file).arg(&dest).output().unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let plan = ["1:0/1000000-0/3800000"];
    // Inside the plan (the file holding its end too): gone = abort (126).
    let (code, err) = run("000000010000000000000002", &plan);
    assert_eq!(code, Some(126), "{err}");
    assert!(err.contains("is gone from the repository"), "{err}");
    assert_eq!(run("000000010000000000000003", &plan).0, Some(126));
    // Past the plan's end, on another timeline, without a plan, or a
    // history file: the end of the archive (1).
    assert_eq!(run("000000010000000000000004", &plan).0, Some(1));
    assert_eq!(run("000000020000000000000002", &plan).0, Some(1));
    assert_eq!(run("000000010000000000000002", &[]).0, Some(1));
    assert_eq!(run("00000002.history", &plan).0, Some(1));
    assert!(!dest.exists());
}

const FILE: u64 = 0x1000;

/// Epoch 1 holds `[FILE, 6 × FILE)` in one segment per file; backups
/// start at 1 × FILE and 4 × FILE.
async fn history(repo: &Repo) -> (BackupKey, BackupKey) {
    use pitr::backup::postgres::manifest::{
        ArchiveInfo, BackupManifest, PartInfo, MANIFEST_FORMAT_VERSION,
    };
    for f in 1..6u64 {
        let key = pitr::archive::keys::SegmentKey {
            source: SourceName::new("db").unwrap(),
            epoch: Epoch(1),
            start: pos(f * FILE),
            end: pos((f + 1) * FILE),
            tmin: Some(pitr_segment::TimestampMicros(f as i64 * 1_000_000)),
            tmax: Some(pitr_segment::TimestampMicros(f as i64 * 1_000_000 + 10)),
            generation: 0,
        };
        repo.put_if_absent(&key.to_key(), bytes::Bytes::from_static(b"seg"))
            .await
            .unwrap();
    }
    let mut keys = Vec::new();
    for (i, f) in [1u64, 4].into_iter().enumerate() {
        let stop_time = chrono::DateTime::from_timestamp(1_704_067_200 + i as i64 * 60, 0).unwrap();
        let id = stop_time.format("%Y%m%dT%H%M%S%3fZ").to_string();
        let key = BackupKey::new(SourceName::new("db").unwrap(), pos(f * FILE), &id).unwrap();
        let part = "base.tar.zst.000";
        repo.put_if_absent(
            &key.part_key(part).unwrap(),
            bytes::Bytes::from_static(b"p"),
        )
        .await
        .unwrap();
        let m = BackupManifest {
            format_version: MANIFEST_FORMAT_VERSION,
            id,
            label: "t".into(),
            engine: "postgres".into(),
            system_id: "1".into(),
            server_version: "15".into(),
            timeline: 1,
            start_lsn: pitr_postgres::lsn::Lsn(f * FILE),
            stop_lsn: pitr_postgres::lsn::Lsn(f * FILE + 0x800),
            start_time: stop_time,
            stop_time,
            archives: vec![ArchiveInfo {
                name: "base.tar".into(),
                tablespace_oid: None,
                tablespace_path: String::new(),
                size: 1,
                sha256: String::new(),
                parts: vec![PartInfo {
                    key: part.into(),
                    size: 1,
                    sha256: String::new(),
                }],
            }],
            backup_manifest: None,
        };
        repo.put_if_absent(
            &key.to_key(),
            bytes::Bytes::from(serde_json::to_vec(&m).unwrap()),
        )
        .await
        .unwrap();
        keys.push(key);
    }
    (keys[0].clone(), keys[1].clone())
}

async fn prune_keep_one(repo: &Repo) -> pitr::retention::PruneReport {
    let opts = pitr::retention::PruneOptions {
        policy: pitr::retention::Policy {
            keep_backups: Some(1),
            recovery_window: None,
        },
        log_alignment: FILE,
        ..Default::default()
    };
    pitr::retention::prune(repo, &SourceName::new("db").unwrap(), &opts)
        .await
        .unwrap()
}

#[tokio::test]
async fn prune_keeps_what_a_live_pin_covers() {
    let source = SourceName::new("db").unwrap();
    let ttl = Duration::from_secs(60);
    let seg_exists = |repo: &Repo, f: u64| {
        let repo = repo.clone();
        async move {
            let listed = repo.list("db/0000000000000001/log/").await.unwrap();
            listed
                .iter()
                .any(|m| m.location.to_string().contains(&pos(f * FILE).to_hex()))
        }
    };

    // A pin on the older backup: it and its log stay, and prune says why.
    let repo = Repo::open("memory://").await.unwrap();
    let (b1, b2) = history(&repo).await;
    let ranges = vec![PinRange::new(Epoch(1), pos(FILE), Some(pos(3 * FILE)))];
    let pin = Pin::new(&source, "time x", &b1, ranges, Utc::now(), ttl);
    let guard = PinGuard::acquire(&repo, pin, ttl).await.unwrap();
    let rep = prune_keep_one(&repo).await;
    assert!(rep.deleted_backups.is_empty(), "{rep:?}");
    assert!(repo.exists(&b1.to_key()).await.unwrap());
    assert!(seg_exists(&repo, 1).await && seg_exists(&repo, 2).await);
    assert!(
        rep.pinned
            .iter()
            .any(|n| n.contains("kept because restore pin r") && n.contains(&b1.dir())),
        "{rep:?}"
    );
    // Released: the next prune deletes the older backup and its log.
    guard.release().await.unwrap();
    let rep = prune_keep_one(&repo).await;
    assert_eq!(rep.deleted_backups, vec![b1.dir()], "{rep:?}");
    assert!(!seg_exists(&repo, 1).await && seg_exists(&repo, 4).await);
    assert!(rep.pinned.is_empty());

    // A pin on log only (a backup that is kept anyway, a range from file 2
    // on): the older backup goes, the pinned log stays.
    let repo = Repo::open("memory://").await.unwrap();
    let (b1, b2b) = history(&repo).await;
    assert_eq!(b2b, b2);
    let ranges = vec![PinRange::new(Epoch(1), pos(2 * FILE), None)];
    let pin = Pin::new(&source, "latest", &b2, ranges, Utc::now(), ttl);
    let _guard = PinGuard::acquire(&repo, pin, ttl).await.unwrap();
    let rep = prune_keep_one(&repo).await;
    assert_eq!(rep.deleted_backups, vec![b1.dir()], "{rep:?}");
    assert!(!seg_exists(&repo, 1).await, "{rep:?}");
    assert!(
        seg_exists(&repo, 2).await && seg_exists(&repo, 3).await,
        "{rep:?}"
    );
    assert!(
        rep.pinned.iter().any(|n| n.contains("log of epoch")),
        "{rep:?}"
    );
}

#[tokio::test]
async fn compaction_merges_but_keeps_pinned_segments() {
    use pitr::archive::compaction::{compact, CompactionOptions};
    use pitr_segment::{encode, Codec, Engine, SegmentHeader, TimestampMicros, WriterOptions};
    let repo = Repo::open("memory://").await.unwrap();
    let source = SourceName::new("db").unwrap();
    let mut starts = Vec::new();
    let mut at = 0x1000u64;
    for i in 0..6u64 {
        let payload = vec![(i % 7) as u8; 3000];
        let header = SegmentHeader {
            engine: Engine::Postgres,
            source_id: "7301234567890123456".into(),
            epoch: Epoch(1),
            start: pos(at),
            codec: Codec::DEFAULT,
            key_id: 0,
        };
        let t = TimestampMicros(1_000 * i as i64);
        let end = pos(at + 3000);
        let obj = encode(
            header,
            &payload,
            end,
            Some(t),
            Some(t),
            1,
            WriterOptions::default(),
        )
        .unwrap();
        let key = pitr::archive::keys::SegmentKey {
            source: source.clone(),
            epoch: Epoch(1),
            start: pos(at),
            end,
            tmin: Some(t),
            tmax: Some(t),
            generation: 0,
        };
        repo.put_if_absent(&key.to_key(), bytes::Bytes::from(obj))
            .await
            .unwrap();
        starts.push(at);
        at += 3000;
    }
    let listed = |repo: &Repo| {
        let repo = repo.clone();
        async move {
            let mut v: Vec<String> = repo
                .list("db/0000000000000001/log/")
                .await
                .unwrap()
                .into_iter()
                .map(|m| m.location.to_string())
                .collect();
            v.sort();
            v
        }
    };
    let small = |s: u64| pos(s).to_hex() + "-" + &pos(s + 3000).to_hex();
    let b = BackupKey::new(source.clone(), pos(0x1000), "20260101T000000000Z").unwrap();
    // The restore pinned the log of segments 1 and 2.
    let ranges = vec![PinRange::new(
        Epoch(1),
        pos(starts[1]),
        Some(pos(starts[3])),
    )];
    let ttl = Duration::from_secs(60);
    let pin = Pin::new(&source, "time x", &b, ranges, Utc::now(), ttl);
    let guard = PinGuard::acquire(&repo, pin, ttl).await.unwrap();
    let opts = CompactionOptions {
        target_size: 1 << 20,
        min_age: Duration::from_secs(1),
        writer: WriterOptions::default(),
    };
    let rep = compact(&repo, &source, &opts, TimestampMicros(10_000_000))
        .await
        .unwrap();
    assert_eq!(rep.merged.len(), 1, "{rep:?}");
    let keys = listed(&repo).await;
    for (i, s) in starts.iter().enumerate() {
        let present = keys.iter().any(|k| k.contains(&small(*s)));
        assert_eq!(present, i == 1 || i == 2, "segment {i}: {keys:?}");
    }
    // Released: the next compaction removes the leftovers.
    guard.release().await.unwrap();
    compact(&repo, &source, &opts, TimestampMicros(10_000_000))
        .await
        .unwrap();
    assert_eq!(listed(&repo).await.len(), 1);
}
