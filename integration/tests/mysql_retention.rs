//! Retention of MariaDB and MySQL 9 sources against real servers: while
//! `pitr archive` streams the binlog, three logical base backups are taken,
//! each in its own binlog file (`FLUSH BINARY LOGS` between them), with
//! writes before and after each. `pitr prune --keep-backups 1` must keep
//! the newest backup and the log it needs (its binlog file from the start),
//! delete the two older backups and every archived binlog file before the
//! kept backup's file; a restore to a point after the kept backup is then
//! exact (compared with the source's contents at that point), and a point
//! before it is refused in one sentence. No empty directory is left behind.

#![allow(clippy::unwrap_used)] // tests unwrap

use std::time::Duration;

use pitr_integration::archiver::Archiver;
use pitr_integration::mysql_restore_util::{binlog_position, dump, ok, same, wait_archived};
use pitr_integration::restore_util::pitr;
use pitr_integration::{mysql, require, Flavor, MySqlServer};

#[test]
fn mariadb_retention() {
    require!(mysql::available(Flavor::MariaDb));
    retention(Flavor::MariaDb);
}

#[test]
fn mysql_retention() {
    require!(mysql::available(Flavor::MySql));
    retention(Flavor::MySql);
}

fn writes(s: &MySqlServer, k: u32) {
    s.sql(&format!(
        "INSERT INTO shop.orders (id, item, qty) VALUES ({k}1, 'a{k}', {k}), ({k}2, 'b{k}', 2); \
         UPDATE shop.orders SET qty = qty + 1 WHERE id < {k}0; \
         DELETE FROM shop.orders WHERE id = {k}2"
    ))
    .unwrap();
}

/// Server time (UTC, microseconds) inside a quiet second after the last
/// commit: MariaDB records commit times in whole seconds.
fn quiet_time(s: &MySqlServer) -> String {
    std::thread::sleep(Duration::from_millis(1100));
    let t = s
        .sql("SELECT DATE_FORMAT(UTC_TIMESTAMP(6), '%Y-%m-%d %H:%i:%s.%f')")
        .unwrap()
        + "Z";
    std::thread::sleep(Duration::from_millis(1100));
    t
}

/// The binlog files `pitr binlog-fetch --list` shows.
fn archived_files(repo: &str) -> Vec<String> {
    ok(&pitr(&["binlog-fetch", "--repo", repo, "--list"]))
        .lines()
        .filter_map(|l| l.split('\t').next().map(str::to_string))
        .collect()
}

/// Every empty directory under `root` (the root itself excepted).
fn empty_dirs(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries: Vec<_> = std::fs::read_dir(&d).unwrap().flatten().collect();
        if entries.is_empty() && d != root {
            out.push(d.clone());
        }
        stack.extend(entries.into_iter().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    out
}

fn retention(f: Flavor) {
    let src = MySqlServer::start(f).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo_path = dir.path().join("repo");
    let repo = repo_path.to_str().unwrap().to_string();
    let url = src.url();
    src.sql(
        "CREATE DATABASE shop; \
         CREATE TABLE shop.orders (id INT PRIMARY KEY, item VARCHAR(16) NOT NULL, qty INT NOT NULL)",
    )
    .unwrap();
    let archiver = Archiver::start(&url, &repo_path, "shop", dir.path(), &[]);

    let mut backups = Vec::new();
    let mut files = Vec::new();
    let mut before_kept = String::new();
    for k in 1..=3 {
        writes(&src, k);
        if k == 3 {
            // A point between the second and the third backup.
            before_kept = quiet_time(&src);
        }
        let pos = binlog_position(&src);
        files.push(pos.split(':').next().unwrap().to_string());
        let b = ok(&pitr(&[
            "backup", &url, "--repo", &repo, "--name", "shop", "--json",
        ]));
        let bj: serde_json::Value = serde_json::from_str(b.trim()).unwrap();
        assert_eq!(
            bj["binlog_file"].as_str(),
            Some(files[k as usize - 1].as_str()),
            "{b}"
        );
        backups.push(bj["backup"].as_str().unwrap().to_string());
        src.sql("FLUSH BINARY LOGS").unwrap();
    }
    writes(&src, 4);
    let want = dump(&src, "shop");
    let after_kept = quiet_time(&src);
    writes(&src, 5);
    wait_archived(&repo, &url, &binlog_position(&src));
    archiver.terminate();
    let listed = archived_files(&repo);
    for f in &files {
        assert!(listed.contains(f), "{f} not archived: {listed:?}");
    }

    // Dry run: the same report, nothing deleted.
    let dry = ok(&pitr(&[
        "prune",
        "--repo",
        &repo,
        "--keep-backups",
        "1",
        "--json",
        "--dry-run",
    ]));
    assert_eq!(archived_files(&repo), listed);
    let out = ok(&pitr(&[
        "prune",
        "--repo",
        &repo,
        "--keep-backups",
        "1",
        "--json",
    ]));
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let d: serde_json::Value = serde_json::from_str(&dry).unwrap();
    assert_eq!(
        r[0]["deleted_keys"], d[0]["deleted_keys"],
        "dry run differs"
    );
    let strs = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    let kept = strs(&r[0]["kept_backups"]);
    let deleted = strs(&r[0]["deleted_backups"]);
    assert_eq!(kept, backups[2..].to_vec(), "{out}");
    assert_eq!(deleted, backups[..2].to_vec(), "{out}");
    // The log is cut at the start of the kept backup's binlog file.
    let seq: u64 = files[2].rsplit('.').next().unwrap().parse().unwrap();
    let cut = r[0]["cut"]["position"].as_str().unwrap();
    assert_eq!(cut, format!("{seq:016x}{:016x}", 4), "{out}");
    let left = archived_files(&repo);
    let expect: Vec<String> = listed.iter().filter(|f| **f >= files[2]).cloned().collect();
    assert_eq!(left, expect, "archived binlog files after the prune");
    assert!(!left.contains(&files[1]) && left.contains(&files[2]));
    ok(&pitr(&["verify", "--repo", &repo]));
    // status: one backup, its window, no problem; no empty directory left.
    let st: serde_json::Value =
        serde_json::from_str(&ok(&pitr(&["status", "--repo", &repo, "--json"]))).unwrap();
    assert_eq!(st["sources"][0]["base_backups"], 1, "{st}");
    assert!(st["sources"][0]["window"]["start"].is_string(), "{st}");
    assert_eq!(empty_dirs(&repo_path), Vec::<std::path::PathBuf>::new());

    // A point after the kept backup restores exactly.
    let target = MySqlServer::start(f).unwrap();
    let o = pitr(&[
        "restore",
        "--repo",
        &repo,
        "--to",
        &after_kept,
        "--target",
        &target.url(),
    ]);
    ok(&o);
    same(
        &dump(&target, "shop"),
        &want,
        "restore after the pruned window's start",
    );
    // A point before it is refused in one sentence.
    let o = pitr(&[
        "restore",
        "--repo",
        &repo,
        "--to",
        &before_kept,
        "--target",
        &target.url(),
        "--replace",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("before the oldest base backup"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        line.starts_with("error:") && line.contains("no restore can reach it"),
        "{err}"
    );
}
