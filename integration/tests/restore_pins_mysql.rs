//! A MariaDB restore pins its base backup for the whole load and apply:
//! `pitr prune --keep-backups 1` run while the restore applies keeps the
//! older backup the restore planned on (and says why); the restore is exact;
//! once it has ended, prune deletes that backup.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pitr_integration::archiver::Archiver;
use pitr_integration::mysql_restore_util::{binlog_position, dump, ok, same, wait_archived};
use pitr_integration::restore_util::pitr;
use pitr_integration::{mysql, pitr_bin, require, Flavor, MySqlServer};

/// `n` transactions of each kind from `from` on, sent 200 at a time.
fn work(src: &MySqlServer, from: u32, n: u32) {
    let ids: Vec<u32> = (from..from + n).collect();
    for chunk in ids.chunks(200) {
        let sql: String = chunk
            .iter()
            .map(|i| {
                format!(
                    "UPDATE pins.acct SET bal = (bal * 3 + {i}) % 1000000007 WHERE id = {}; \
                     INSERT INTO pins.acct VALUES ({}, {i});",
                    i % 10 + 1,
                    10_000 + i
                )
            })
            .collect();
        src.sql(&sql).unwrap();
    }
}

#[test]
fn mariadb_restore_pins_its_backup() {
    require!(mysql::available(Flavor::MariaDb));
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let repo_s = repo.to_str().unwrap().to_string();
    let src = MySqlServer::start(Flavor::MariaDb).unwrap();
    let url = src.url();
    src.sql(
        "CREATE DATABASE pins; \
         CREATE TABLE pins.acct (id INT PRIMARY KEY, bal BIGINT NOT NULL); \
         INSERT INTO pins.acct SELECT seq, seq FROM pins.seq_1_to_10",
    )
    .unwrap();
    let archiver = Archiver::start(&url, &repo, "pins", dir.path(), &[]);
    let backup = || -> String {
        let o = pitr(&[
            "backup", &url, "--repo", &repo_s, "--name", "pins", "--json",
        ]);
        let v: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
        v["backup"].as_str().unwrap().to_string()
    };
    let b1 = backup();
    work(&src, 1, 1500);
    let p1 = binlog_position(&src);
    let want = dump(&src, "pins");
    work(&src, 5000, 20); // the second backup is after the target
    let _b2 = backup();
    work(&src, 2000, 100);
    wait_archived(&repo_s, &url, &binlog_position(&src));
    archiver.terminate();
    let manifest = |b: &str| Path::new(&repo_s).join(b).join("manifest.json");
    assert!(manifest(&b1).exists(), "{b1}");

    let target = MySqlServer::start(Flavor::MariaDb).unwrap();
    let mut child = Command::new(pitr_bin())
        .args(["restore", "--repo", &repo_s, "--to-position", &p1])
        .args(["--target", &target.url(), "--parallel", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pins = repo.join("pins").join("pins");
    let start = Instant::now();
    while std::fs::read_dir(&pins).map_or(0, |d| d.count()) == 0
        && child.try_wait().unwrap().is_none()
    {
        assert!(start.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(10));
    }
    let prune = || {
        let o = pitr(&[
            "prune",
            "--repo",
            &repo_s,
            "--name",
            "pins",
            "--keep-backups",
            "1",
            "--json",
        ]);
        serde_json::from_str::<serde_json::Value>(&ok(&o)).unwrap()[0].clone()
    };
    let rep = prune();
    if child.try_wait().unwrap().is_none() {
        // The restore ran through the whole prune: its pin was live.
        assert!(manifest(&b1).exists(), "{rep}");
        let why = rep["pinned"].to_string();
        assert!(
            why.contains("kept because restore pin") && why.contains(&b1),
            "{rep}"
        );
    } else {
        eprintln!("the restore ended before prune did; pin not exercised: {rep}");
    }
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    same(&dump(&target, "pins"), &want, "restore under prune");
    assert_eq!(
        std::fs::read_dir(&pins).map_or(0, |d| d.count()),
        0,
        "pin removed"
    );
    let rep = prune();
    assert!(
        !manifest(&b1).exists(),
        "without a pin prune deletes it: {rep}"
    );
}
