//! `pitr restore --latest` right after a backup of a quiet server (no
//! write after the backup, so the archive ends exactly at the backup's
//! coordinates) restores the backup, on MariaDB and MySQL 9; a time after
//! the backup is refused in one sentence naming the window. Before, the
//! plan asked for log up to the next binlog file and called it a hole.

use pitr_integration::archiver::Archiver;
use pitr_integration::mysql_restore_util::{
    binlog_position, dump, ok, restore_latest, same, wait_archived,
};
use pitr_integration::restore_util::pitr;
use pitr_integration::{mysql, require, Flavor, MySqlServer};

fn quiet_latest(flavor: Flavor) {
    let src = MySqlServer::start(flavor).unwrap();
    src.sql(
        "CREATE DATABASE quiet; \
         CREATE TABLE quiet.t (id INT PRIMARY KEY, v VARCHAR(20) DEFAULT 'd', KEY v (v)); \
         INSERT INTO quiet.t (id) VALUES (1), (2), (3); \
         UPDATE quiet.t SET v = 'changed' WHERE id = 2",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let repo_s = repo.to_str().unwrap().to_string();
    let archiver = Archiver::start(&src.url(), &repo, "quiet", dir.path(), &[]);
    let o = pitr(&[
        "backup",
        &src.url(),
        "--repo",
        &repo_s,
        "--name",
        "quiet",
        "--json",
    ]);
    let b: serde_json::Value = serde_json::from_str(ok(&o).trim()).unwrap();
    // Nothing is written from here on.
    let at = binlog_position(&src);
    let target = MySqlServer::start(flavor).unwrap();
    wait_archived(&repo_s, &target.url(), &at);
    let plan = ok(&pitr(&[
        "restore",
        "--repo",
        &repo_s,
        "--latest",
        "--target",
        &target.url(),
        "--dry-run",
        "--json",
    ]));
    let p: serde_json::Value = serde_json::from_str(plan.trim()).unwrap();
    assert_eq!(p["backup_dir"], b["backup"], "{p}");
    assert_eq!(p["segments"].as_array().map(Vec::len), Some(0), "{p}");
    ok(&restore_latest(&repo_s, &target.url(), &[]));
    same(&dump(&target, "quiet"), &dump(&src, "quiet"), "quiet");
    // A time after the backup: the archive does not reach it.
    let later = pitr(&[
        "restore",
        "--repo",
        &repo_s,
        "--to",
        "2999-01-01 00:00:00",
        "--target",
        &target.url(),
        "--dry-run",
    ]);
    assert!(!later.status.success());
    let err = String::from_utf8_lossy(&later.stderr);
    assert!(err.contains("after the last archived commit"), "{err}");
    archiver.terminate();
}

#[test]
fn mariadb_latest_after_a_quiet_backup() {
    require!(mysql::available(Flavor::MariaDb));
    quiet_latest(Flavor::MariaDb);
}

#[test]
fn mysql_latest_after_a_quiet_backup() {
    require!(mysql::available(Flavor::MySql));
    quiet_latest(Flavor::MySql);
}
