//! A lock conflict during a parallel binlog apply is rolled back and run
//! again. The target's `innodb_lock_wait_timeout` is 1 s; as soon as
//! `pitr restore` reports the base backup loaded, another session locks the
//! row the last transactions of the log update, and holds it for 3 s while
//! pitr applies thousands of earlier, independent inserts. The updates hit
//! the lock wait timeout, are retried, and the target must end with the
//! source's contents and a report that counts the retries.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use pitr_integration::archiver::Archiver;
use pitr_integration::mysql_restore_util::{binlog_position, dump, ok, same, wait_archived};
use pitr_integration::restore_util::pitr;
use pitr_integration::{mysql, pitr_bin, require, Flavor, MySqlServer};

#[test]
fn mariadb_lock_conflict_is_retried() {
    require!(mysql::available(Flavor::MariaDb));
    let dir = tempfile::tempdir().unwrap();
    let repo_path = dir.path().join("repo");
    let repo = repo_path.to_str().unwrap().to_string();
    let src = MySqlServer::start(Flavor::MariaDb).unwrap();
    let url = src.url();
    src.sql(
        "CREATE DATABASE rt; \
         CREATE TABLE rt.hot (id INT PRIMARY KEY, v BIGINT NOT NULL); \
         CREATE TABLE rt.bulk (id INT PRIMARY KEY, v INT NOT NULL); \
         INSERT INTO rt.hot VALUES (1, 1)",
    )
    .unwrap();
    let archiver = Archiver::start(&url, &repo_path, "rt", dir.path(), &[]);
    ok(&pitr(&["backup", &url, "--repo", &repo, "--name", "rt"]));
    src.sql(
        "DELIMITER //\nCREATE PROCEDURE rt.fill(n INT) BEGIN DECLARE i INT DEFAULT 1; \
         WHILE i <= n DO INSERT INTO rt.bulk VALUES (i, i); SET i = i + 1; END WHILE; END //\n\
         DELIMITER ;",
    )
    .unwrap();
    src.sql("CALL rt.fill(6000)").unwrap();
    for r in 1..=3 {
        src.sql(&format!("UPDATE rt.hot SET v = v * 3 + {r} WHERE id = 1"))
            .unwrap();
    }
    let want = dump(&src, "rt");
    wait_archived(&repo, &url, &binlog_position(&src));
    archiver.terminate();

    let target = MySqlServer::start(Flavor::MariaDb).unwrap();
    target
        .sql("SET GLOBAL innodb_lock_wait_timeout = 1")
        .unwrap();
    let mut child = Command::new(pitr_bin())
        .args(["restore", "--repo", &repo, "--latest", "--target"])
        .arg(target.url())
        .args(["--parallel", "4", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut log = String::new();
    let mut holder = None;
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        if holder.is_none() && line.starts_with("loaded ") {
            // The hot row is in the backup: lock it now, before the apply
            // reaches the updates at the end of the log.
            holder = Some(
                target
                    .client_command()
                    .args([
                        "-e",
                        "BEGIN; SELECT v FROM rt.hot WHERE id = 1 FOR UPDATE; \
                         DO SLEEP(3); COMMIT;",
                    ])
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap(),
            );
        }
        log.push_str(&line);
        log.push('\n');
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{log}");
    assert!(holder.unwrap().wait().unwrap().success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let retries = v["apply"]["lock_retries"].as_u64().unwrap();
    eprintln!("lock retries: {retries}");
    assert!(retries >= 1, "no lock conflict was retried: {v}\n{log}");
    same(&dump(&target, "rt"), &want, "restore with a lock conflict");
}
