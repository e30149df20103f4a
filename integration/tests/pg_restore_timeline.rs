//! Restore across a timeline switch, from a base backup taken on a standby.
//!
//! A primary replicates to a standby; `pitr archive` and `pitr backup` run
//! against the standby. The standby is promoted (timeline 2) and takes more
//! writes. Restores to times on timeline 1 and on timeline 2 must hold
//! exactly the rows committed at or before the target, following the
//! archived `00000002.history`; `--timeline 1`, `--timeline current` (the
//! backup's) and `--timeline 2` with `--latest` hold exactly the rows of
//! that timeline's history.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pitr_integration::restore_util::{id, micros_text, pitr, rows, text, Bg, Ctx};
use pitr_integration::{pg, pitr_bin, require, PgServer, PgVersion};

#[test]
fn restore_across_promotion_from_a_standby_backup() {
    require!(pg::available(PgVersion::V15));
    let primary = PgServer::start(PgVersion::V15).unwrap();
    primary
        .psql("CREATE TABLE ledger (id int PRIMARY KEY, amount int)")
        .unwrap();
    for i in 1..=3 {
        primary
            .psql(&format!("INSERT INTO ledger VALUES ({i}, {i})"))
            .unwrap();
    }
    let standby = primary.start_standby().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let repo = tmp.path().join("repo");
    let work = tmp.path().join("work");
    fs::create_dir_all(&work).unwrap();
    std::os::unix::fs::chown(&work, Some(id("-u")), Some(id("-g"))).unwrap();
    let repo_s = repo.to_str().unwrap().to_string();

    let log = fs::File::create(tmp.path().join("archive.log")).unwrap();
    let _archiver = Bg(Command::new(pitr_bin())
        .args([
            "archive",
            &standby.url(),
            "--repo",
            &repo_s,
            "--name",
            "src",
        ])
        .args(["--flush-interval", "200ms"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap());

    // A base backup taken from the standby.
    let o = pitr(&[
        "backup",
        &standby.url(),
        "--repo",
        &repo_s,
        "--name",
        "src",
        "--json",
    ]);
    assert!(o.status.success(), "backup from the standby: {}", text(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["timeline"], 1, "{summary}");

    // Timeline 1 rows, written on the primary.
    for i in 4..=10 {
        primary
            .psql(&format!("INSERT INTO ledger VALUES ({i}, {i})"))
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let lsn = primary.psql("SELECT pg_current_wal_lsn()").unwrap();
    let start = Instant::now();
    while standby
        .psql(&format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'"))
        .unwrap()
        != "t"
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "standby did not catch up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(primary);
    standby.promote().unwrap();
    // Timeline 2 rows, written on the promoted standby.
    for i in 11..=16 {
        standby
            .psql(&format!("INSERT INTO ledger VALUES ({i}, {i})"))
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let last = standby.psql("SELECT pg_current_wal_insert_lsn()").unwrap();
    // Wait until the archive's latest plan reaches the last row on timeline 2.
    let start = Instant::now();
    loop {
        let o = pitr(&[
            "restore",
            "--repo",
            &repo_s,
            "--name",
            "src",
            "--latest",
            "--dry-run",
            "--json",
        ]);
        let p: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        let to: Option<pitr_postgres::Lsn> = p["wal_to"].as_str().and_then(|s| s.parse().ok());
        let last: pitr_postgres::Lsn = last.parse().unwrap();
        if p["timeline"] == 2 && to.is_some_and(|t| t >= last) {
            break;
        }
        // A bound on liveness only (the suite runs many servers at once).
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the archive did not reach timeline 2 at {last}: {}\n---- pitr archive log ----\n{}",
            text(&o),
            fs::read_to_string(tmp.path().join("archive.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let all = rows(&standby, "");
    assert_eq!(all.len(), 16);
    let mut ctx = Ctx {
        repo: repo.clone(),
        work,
        bin: standby.bin("postgres").parent().unwrap().to_path_buf(),
        n: 0,
        name: "src".into(),
    };
    // Targets: a row on timeline 1, between two timeline-2 rows, exactly at a timeline-2 row.
    let between = (all[12].micros + all[13].micros) / 2;
    for (target_micros, target_txt) in [
        (all[6].micros, all[6].ts.clone()),
        (between, micros_text(&standby, between)),
        (all[14].micros, all[14].ts.clone()),
    ] {
        let expected: Vec<i64> = all
            .iter()
            .filter(|r| r.micros <= target_micros)
            .map(|r| r.id)
            .collect();
        let got = ctx.restore(&["--to", &format!("{target_txt}Z")]);
        assert_eq!(got, expected, "restore to {target_txt} UTC");
    }
    let got = ctx.restore(&["--latest"]);
    assert_eq!(got, (1..=16).collect::<Vec<_>>());
    // Staying on a timeline: 1 (by number, and `current`, the backup's) ends
    // where the standby left it, with every row it replayed; 2 by number is
    // the latest.
    let timeline1: Vec<i64> = (1..=10).collect();
    assert_eq!(ctx.restore(&["--latest", "--timeline", "1"]), timeline1);
    assert_eq!(
        ctx.restore(&["--latest", "--timeline", "current"]),
        timeline1
    );
    assert_eq!(
        ctx.restore(&["--latest", "--timeline", "2"]),
        (1..=16).collect::<Vec<_>>()
    );
    // On timeline 1, a time of a timeline-2 row is past its end: the restore
    // stops at timeline 1's last row, not at a row of another history.
    let o = pitr(&[
        "restore",
        "--repo",
        &repo_s,
        "--name",
        "src",
        "--to",
        &format!("{}Z", all[14].ts),
        "--timeline",
        "1",
        "--dry-run",
        "--json",
    ]);
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    assert!(
        !o.status.success() || plan["timeline"] == 1,
        "a timeline-1 plan reached another timeline: {}",
        text(&o)
    );
}
