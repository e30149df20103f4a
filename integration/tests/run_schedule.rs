//! Backup schedules that hold, against real servers: one `pitr run` with a
//! PostgreSQL 15, a MariaDB and a MySQL 9 source and `backup_interval =
//! "1h"` takes exactly one base backup of each (no more while it keeps
//! running), and after a restart the schedule measures from those backups
//! in the repository: no new backup is attempted.

#![allow(clippy::unwrap_used)] // tests unwrap

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pitr_integration::archiver::{wait_child, wait_for};
use pitr_integration::signal::{send, Signal};
use pitr_integration::{mysql, pg, pitr_bin, require, Flavor, MySqlServer, PgServer, PgVersion};

const SOURCES: [&str; 3] = ["pg", "maria", "mysql"];

/// (complete, incomplete) backup directories of a source.
fn backups(repo: &Path, source: &str) -> (usize, usize) {
    let dir = repo.join(source).join("backups");
    let (mut complete, mut incomplete) = (0, 0);
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().join("manifest.json").exists() {
            complete += 1;
        } else {
            incomplete += 1;
        }
    }
    (complete, incomplete)
}

fn start_run(cfg: &Path, log: &Path) -> Child {
    Command::new(pitr_bin())
        .args(["run", "--config"])
        .arg(cfg)
        .env_remove("PITR_REPO")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn stop_run(mut child: Child, log: &Path) -> String {
    send(child.id(), Signal::Term);
    let status = wait_child(&mut child, Duration::from_secs(60));
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert!(status.success(), "pitr run exited {status:?}:\n{text}");
    text
}

#[test]
fn one_backup_per_interval_across_engines_and_restarts() {
    require!(pg::available(PgVersion::V15));
    require!(mysql::available(Flavor::MariaDb));
    require!(mysql::available(Flavor::MySql));
    let pg = PgServer::start(PgVersion::V15).unwrap();
    let maria = MySqlServer::start(Flavor::MariaDb).unwrap();
    let my = MySqlServer::start(Flavor::MySql).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let cfg = tmp.path().join("pitr.toml");
    let mut toml = format!("repo = \"{}\"\n", repo.display());
    for (name, url) in SOURCES.iter().zip([pg.url(), maria.url(), my.url()]) {
        toml.push_str(&format!(
            "[[source]]\nname = \"{name}\"\nurl = \"{url}\"\nflush_interval = \"200ms\"\nbackup_interval = \"1h\"\n"
        ));
    }
    std::fs::write(&cfg, toml).unwrap();

    // First run: one backup of each source, then nothing more.
    let log = tmp.path().join("run1.log");
    let child = start_run(&cfg, &log);
    wait_for(
        "one backup of every source",
        Duration::from_secs(120),
        || SOURCES.iter().all(|s| backups(&repo, s).0 >= 1),
    );
    // Keep running a while longer: a schedule that does not hold takes
    // another backup right away (it used to take hundreds per minute).
    for i in 0..10 {
        pg.psql(&format!("CREATE TABLE t{i} AS SELECT 1 AS x"))
            .unwrap();
        maria.sql(&format!("CREATE TABLE test.t{i} (x INT)")).ok();
        std::thread::sleep(Duration::from_secs(1));
    }
    let text = stop_run(child, &log);
    for s in SOURCES {
        assert_eq!(backups(&repo, s), (1, 0), "{s}:\n{text}");
    }
    let attempts = text.matches("taking a scheduled base backup").count();
    assert_eq!(attempts, 3, "{text}");

    // Second run: the repository's backups are an hour from due.
    let log = tmp.path().join("run2.log");
    let child = start_run(&cfg, &log);
    std::thread::sleep(Duration::from_secs(10));
    let text = stop_run(child, &log);
    for s in SOURCES {
        assert_eq!(backups(&repo, s), (1, 0), "{s} after the restart:\n{text}");
    }
    assert!(
        !text.contains("taking a scheduled base backup"),
        "the restarted run took a backup:\n{text}"
    );
    // It did run: every archiver resumed.
    let o = Command::new(pitr_bin())
        .args(["status", "--json", "--repo"])
        .arg(&repo)
        .output()
        .unwrap();
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for s in st["sources"].as_array().unwrap() {
        assert_eq!(s["base_backups"], 1, "{st}");
        assert!(s["window"]["end"].is_string(), "{st}");
    }
}
