//! `pitr backup` + `pitr restore --recover` against real PostgreSQL.
//!
//! One source cluster with a ledger workload (`track_commit_timestamp=on`),
//! `pitr archive` running, one base backup, then more single-row
//! transactions whose commit timestamps (`pg_xact_commit_timestamp(xmin)`)
//! are the oracle: a restore to time T must hold exactly the rows committed
//! at or before T. Also LSN and restore-point targets, `--latest`, refusals
//! outside the window, and a corrupted segment.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pitr_integration::restore_util::{id, micros_text, pitr, rows, text, Bg, Ctx, Row};
use pitr_integration::{pg, pitr_bin, require, PgServer, PgVersion};

fn suite(v: PgVersion, time_targets: usize) {
    let server = PgServer::start(v).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let repo = tmp.path().join("repo");
    let work = tmp.path().join("work");
    fs::create_dir_all(&work).unwrap();
    std::os::unix::fs::chown(&work, Some(id("-u")), Some(id("-g"))).unwrap();
    let url = server.url_as("replicator", "replpass");

    server
        .psql("CREATE TABLE ledger (id int PRIMARY KEY, amount int)")
        .unwrap();
    for i in 1..=3 {
        server
            .psql(&format!("INSERT INTO ledger VALUES ({i}, {i})"))
            .unwrap();
    }
    let log = fs::File::create(tmp.path().join("archive.log")).unwrap();
    let _archiver = Bg(Command::new(pitr_bin())
        .args([
            "archive",
            &url,
            "--repo",
            repo.to_str().unwrap(),
            "--name",
            "src",
            "--flush-interval",
            "200ms",
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap());

    let t0 = Instant::now();
    let o = pitr(&[
        "backup",
        &url,
        "--repo",
        repo.to_str().unwrap(),
        "--name",
        "src",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        summary["archived_wal_itself"], false,
        "the running archiver provides the WAL"
    );
    eprintln!("backup took {:?}: {summary}", t0.elapsed());
    let stop_time = summary["stop_time"].as_str().unwrap().to_string();

    // The workload after the backup: one row per transaction.
    let mut lsn_target = None;
    for i in 4..=40 {
        server
            .psql(&format!("INSERT INTO ledger VALUES ({i}, {i})"))
            .unwrap();
        if i == 20 {
            // The insert position: with synchronous_commit = off the write
            // position may still be before row 20's commit record.
            lsn_target = Some(server.psql("SELECT pg_current_wal_insert_lsn()").unwrap());
        }
        if i == 27 {
            server
                .psql("SELECT pg_create_restore_point('rp27')")
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(15));
    }
    server.psql("SELECT pg_switch_wal()").unwrap();
    // Rows 41..=45 stay in the newest, incomplete WAL file: restores reach
    // them through the zero-padded partial file (`wal-fetch --partial`).
    for i in 41..=45 {
        server
            .psql(&format!("INSERT INTO ledger VALUES ({i}, {i})"))
            .unwrap();
        std::thread::sleep(Duration::from_millis(15));
    }
    let switch = server.psql("SELECT pg_current_wal_insert_lsn()").unwrap();
    let switch_lsn: pitr_postgres::Lsn = switch.parse().unwrap();
    // Wait until the archive holds everything up to the switch.
    let start = Instant::now();
    loop {
        let o = pitr(&[
            "restore",
            "--repo",
            repo.to_str().unwrap(),
            "--name",
            "src",
            "--latest",
            "--dry-run",
            "--json",
        ]);
        let p: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        let to: Option<pitr_postgres::Lsn> = p["wal_to"].as_str().and_then(|s| s.parse().ok());
        if to.is_some_and(|t| t >= switch_lsn) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "archive did not reach {switch}: {}",
            text(&o)
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let all = rows(&server, "");
    let after: Vec<&Row> = all.iter().filter(|r| r.id >= 4).collect();
    let mut ctx = Ctx {
        repo: repo.clone(),
        work,
        bin: server.bin("postgres").parent().unwrap().to_path_buf(),
        n: 0,
        name: "src".into(),
    };

    // Time targets: exactly at commits and between two commits.
    let step = (after.len() - 1) / time_targets.max(1);
    for k in 0..time_targets {
        let i = (k * step + k % 3).min(after.len() - 2);
        let (target_micros, target_txt) = if k % 2 == 0 {
            (after[i].micros, after[i].ts.clone())
        } else {
            let mid = (after[i].micros + after[i + 1].micros) / 2;
            (mid, micros_text(&server, mid))
        };
        let expected: Vec<i64> = all
            .iter()
            .filter(|r| r.micros <= target_micros)
            .map(|r| r.id)
            .collect();
        let got = ctx.restore(&["--to", &format!("{target_txt}Z")]);
        assert_eq!(got, expected, "restore to {target_txt} UTC");
        eprintln!("restore to {target_txt}: {} rows, ok", got.len());
    }

    // LSN target: everything up to and including row 20's commit record.
    let lsn = lsn_target.expect("LSN recorded after row 20");
    let got = ctx.restore(&["--to-lsn", &lsn]);
    assert_eq!(got, (1..=20).collect::<Vec<_>>(), "restore to LSN {lsn}");
    // Named restore point.
    let got = ctx.restore(&["--to-name", "rp27"]);
    assert_eq!(got, (1..=27).collect::<Vec<_>>());
    // Latest: every row.
    let got = ctx.restore(&["--latest"]);
    assert_eq!(got, (1..=45).collect::<Vec<_>>());

    // Outside the window: refused with the window in UTC, nothing written.
    let dir = ctx.work.join("refused");
    for target in [all[0].ts.clone() + "Z", "2099-01-01 00:00:00Z".to_string()] {
        let o = pitr(&[
            "restore",
            "--repo",
            repo.to_str().unwrap(),
            "--name",
            "src",
            "--to",
            &target,
            "--target-dir",
            dir.to_str().unwrap(),
        ]);
        assert!(!o.status.success(), "{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("outside the recoverable window") && err.contains(" UTC"),
            "{err}"
        );
        assert!(!dir.exists());
    }
    assert!(stop_time.len() > 10);

    // A corrupted segment: refused before anything is unpacked or replayed.
    let mut segs: Vec<PathBuf> = walk(&repo)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    let victim = segs.last().unwrap();
    let mut bytes = fs::read(victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    fs::write(victim, bytes).unwrap();
    let o = pitr(&[
        "restore",
        "--repo",
        repo.to_str().unwrap(),
        "--name",
        "src",
        "--latest",
        "--target-dir",
        dir.to_str().unwrap(),
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("corrupt"), "{err}");
    assert!(
        !dir.exists(),
        "nothing may be unpacked from a corrupt chain"
    );
}

fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(p).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn restore_pg15() {
    require!(pg::available(PgVersion::V15));
    suite(PgVersion::V15, 10);
}

#[test]
fn restore_pg18() {
    require!(pg::available(PgVersion::V18));
    suite(PgVersion::V18, 4);
}
