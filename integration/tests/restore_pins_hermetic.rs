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
    let pin = Pin::new(&source, "time x", &backup, ranges, Utc::now(), ttl);
    let guard = PinGuard::acquire(&repo, pin.clone(), ttl).await.unwrap();

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
