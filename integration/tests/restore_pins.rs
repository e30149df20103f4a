//! Restore pins, `--recover` checked through SQL, and the owner check,
//! against a real PostgreSQL 15 (one server for every case).
//!
//! Ground truth: the rows of a ledger table and their
//! `pg_xact_commit_timestamp`. Cases, in order:
//! 1. `--recover --to T --json` with the pitr binary in a mode-0700
//!    directory and `--owner postgres`: the binary is copied where postgres
//!    can run it (and removed after), and the reached commit time reported
//!    from SQL is exactly T's commit.
//! 2. `pitr prune --keep-backups 1` and `pitr compact --min-age 0s` in a loop
//!    (separate processes) during `restore --to T --recover` (which reads
//!    the older backup) and `restore --latest --recover`: both exact; the
//!    older backup is gone once the pin is released.
//! 3. A restore without `--recover` leaves its pin for the user's server
//!    (`wal-fetch` renews it): prune keeps the backup and says why; without
//!    the pin, prune deletes it.
//! 4. `--recover-timeout 1s` on a restore that cannot finish in time (the
//!    newest backup carries `recovery_min_apply_delay = 1h`, and commits
//!    follow it): non-zero, one sentence, nothing left in the target
//!    directory.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pitr_integration::restore_util::{id, pitr, query_restored, rows, text, Bg};
use pitr_integration::{pg, pitr_bin, require, PgServer, PgVersion};

struct Env {
    server: PgServer,
    repo: PathBuf,
    work: PathBuf,
    bin: PathBuf,
}

impl Env {
    fn repo(&self) -> &str {
        self.repo.to_str().unwrap()
    }

    fn backup(&self) -> String {
        let url = self.server.url_as("replicator", "replpass");
        let o = pitr(&[
            "backup",
            &url,
            "--repo",
            self.repo(),
            "--name",
            "src",
            "--json",
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["backup"].as_str().unwrap().to_string()
    }

    fn insert(&self, ids: std::ops::RangeInclusive<i64>) {
        for i in ids {
            self.server
                .psql(&format!("INSERT INTO ledger VALUES ({i}, {i})"))
                .unwrap();
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Switches WAL and waits until the archive holds everything written.
    fn settle(&self) {
        self.server.psql("SELECT pg_switch_wal()").unwrap();
        let lsn: pitr_postgres::Lsn = self
            .server
            .psql("SELECT pg_current_wal_insert_lsn()")
            .unwrap()
            .parse()
            .unwrap();
        let start = Instant::now();
        loop {
            let o = pitr(&[
                "restore",
                "--repo",
                self.repo(),
                "--name",
                "src",
                "--latest",
                "--dry-run",
                "--json",
            ]);
            let p: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            let to: Option<pitr_postgres::Lsn> = p["wal_to"].as_str().and_then(|s| s.parse().ok());
            if to.is_some_and(|t| t >= lsn) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "archive lags: {}",
                text(&o)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn restore(&self, exe: &Path, dir: &Path, extra: &[&str]) -> std::process::Output {
        let mut c = Command::new(exe);
        c.args(["restore", "--repo", self.repo(), "--name", "src"]);
        c.args(extra);
        c.arg("--target-dir").arg(dir);
        c.args([
            "--owner",
            "postgres",
            "--pg-bin",
            self.bin.to_str().unwrap(),
        ]);
        c.output().unwrap()
    }

    fn ids(&self, dir: &Path) -> Vec<i64> {
        let s = query_restored(
            &self.bin,
            dir,
            "SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM ledger",
        );
        s.split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect()
    }

    fn pins(&self) -> Vec<PathBuf> {
        match fs::read_dir(self.repo.join("src").join("pins")) {
            Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        }
    }

    fn backup_exists(&self, dir: &str) -> bool {
        self.repo.join(dir).join("manifest.json").exists()
    }

    fn prune(&self) -> serde_json::Value {
        let o = pitr(&[
            "prune",
            "--repo",
            self.repo(),
            "--name",
            "src",
            "--keep-backups",
            "1",
            "--json",
        ]);
        assert!(o.status.success(), "{}", text(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()[0].clone()
    }
}

/// `pitr prune` and `pitr compact` in a loop until stopped; counts rounds.
struct Maintenance {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Maintenance {
    fn start(repo: &Path) -> Maintenance {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicUsize::new(0));
        let (s, r, repo) = (stop.clone(), rounds.clone(), repo.to_path_buf());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let repo = repo.to_str().unwrap();
                for args in [
                    vec![
                        "prune",
                        "--repo",
                        repo,
                        "--name",
                        "src",
                        "--keep-backups",
                        "1",
                    ],
                    vec![
                        "compact",
                        "--repo",
                        repo,
                        "--name",
                        "src",
                        "--min-age",
                        "0s",
                    ],
                ] {
                    let o = Command::new(pitr_bin()).args(&args).output().unwrap();
                    assert!(o.status.success(), "{args:?}: {}", text(&o));
                }
                r.fetch_add(1, Ordering::SeqCst);
            }
        });
        Maintenance {
            stop,
            rounds,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            assert!(t.join().is_ok(), "a prune or compaction failed");
        }
        self.rounds.load(Ordering::SeqCst)
    }
}

#[test]
fn restore_pins_recover_and_owner_pg15() {
    require!(pg::available(PgVersion::V15));
    let t_start = Instant::now();
    let server = PgServer::start(PgVersion::V15).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let work = tmp.path().join("work");
    fs::create_dir_all(&work).unwrap();
    std::os::unix::fs::chown(&work, Some(id("-u")), Some(id("-g"))).unwrap();
    let bin = server.bin("postgres").parent().unwrap().to_path_buf();
    let env = Env {
        server,
        repo: tmp.path().join("repo"),
        work,
        bin,
    };
    env.server
        .psql("CREATE TABLE ledger (id int PRIMARY KEY, amount int)")
        .unwrap();
    let log = fs::File::create(tmp.path().join("archive.log")).unwrap();
    let _archiver = Bg(Command::new(pitr_bin())
        .args(["archive", &env.server.url_as("replicator", "replpass")])
        .args([
            "--repo",
            env.repo(),
            "--name",
            "src",
            "--flush-interval",
            "200ms",
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap());
    env.insert(1..=3);
    let b1 = env.backup();
    env.insert(4..=10);
    let b2 = env.backup();
    env.insert(11..=20);
    env.settle();
    let all = rows(&env.server, "");
    let t7 = all.iter().find(|r| r.id == 7).unwrap();
    let to7 = format!("{}Z", t7.ts);

    eprintln!("{:?}: case 1 (owner copy)", t_start.elapsed());
    // 1. The binary in a directory only root can enter: a copy runs.
    let private = tmp.path().join("private");
    fs::create_dir_all(&private).unwrap();
    fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
    let exe = private.join("pitr");
    fs::copy(pitr_bin(), &exe).unwrap();
    let dir = env.work.join("owner");
    let o = env.restore(&exe, &dir, &["--to", &to7, "--recover", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot run") && err.contains("runs a copy"),
        "{err}"
    );
    assert!(
        !env.work.join("owner.pitr-bin").exists(),
        "the copy is removed after --recover"
    );
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let reached = out["recovery"]["last_commit_time"].as_str().unwrap();
    let reached = chrono::DateTime::parse_from_rfc3339(reached).unwrap();
    assert_eq!(reached.timestamp_micros(), t7.micros, "{out}");
    assert!(out["recovery"]["replay_lsn"]
        .as_str()
        .unwrap()
        .contains('/'));
    assert_eq!(env.ids(&dir), (1..=7).collect::<Vec<_>>());
    assert!(
        env.pins().is_empty(),
        "the pin is removed when the restore ends"
    );

    eprintln!("{:?}: case 2 (prune/compact loop)", t_start.elapsed());
    // 2. Prune and compaction in a loop during restores.
    let dir = env.work.join("loop-to");
    let mut child = Command::new(pitr_bin())
        .args([
            "restore",
            "--repo",
            env.repo(),
            "--name",
            "src",
            "--to",
            &to7,
        ])
        .arg("--target-dir")
        .arg(&dir)
        .args([
            "--recover",
            "--owner",
            "postgres",
            "--pg-bin",
            env.bin.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while env.pins().is_empty() && child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(20));
    }
    let maint = Maintenance::start(&env.repo);
    let o = child.wait_with_output().unwrap();
    let loop_during = maint.rounds.load(Ordering::SeqCst);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(env.ids(&dir), (1..=7).collect::<Vec<_>>());
    let dir = env.work.join("loop-latest");
    let o = env.restore(&pitr_bin(), &dir, &["--latest", "--recover"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(env.ids(&dir), (1..=20).collect::<Vec<_>>());
    let rounds = maint.finish();
    eprintln!("maintenance rounds: {loop_during} during the --to restore, {rounds} in all");
    env.prune();
    assert!(
        !env.backup_exists(&b1),
        "prune deleted {b1} once no pin covered it"
    );
    assert!(env.backup_exists(&b2));

    eprintln!(
        "{:?}: case 3 (pin left for the user's server)",
        t_start.elapsed()
    );
    // 3. A pin left for the user's server.
    env.insert(21..=25);
    // The newest backup carries recovery_min_apply_delay = 1h (for case 4).
    env.server
        .psql("ALTER SYSTEM SET recovery_min_apply_delay = '1h'")
        .unwrap();
    let b3 = env.backup();
    env.insert(26..=28);
    env.settle();
    let t15 = all.iter().find(|r| r.id == 15).unwrap();
    let dir = env.work.join("user-started");
    let o = env.restore(&pitr_bin(), &dir, &["--to", &format!("{}Z", t15.ts)]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(env.pins().len(), 1);
    let conf = fs::read_to_string(dir.join("postgresql.auto.conf")).unwrap();
    assert!(
        conf.contains("--plan-range 1:") && conf.contains("--pin r"),
        "{conf}"
    );
    let rep = env.prune();
    assert!(env.backup_exists(&b2), "{rep}");
    let why = rep["pinned"].to_string();
    assert!(
        why.contains("kept because restore pin r") && why.contains(&b2),
        "{rep}"
    );
    assert_eq!(env.ids(&dir), (1..=15).collect::<Vec<_>>());
    // Once the pin is gone (expired or released), prune deletes the backup.
    for p in env.pins() {
        fs::remove_file(p).unwrap();
    }
    let rep = env.prune();
    assert!(!env.backup_exists(&b2), "{rep}");
    assert!(env.backup_exists(&b3));

    eprintln!("{:?}: case 4 (timeout)", t_start.elapsed());
    // 4. A restore that cannot finish in time.
    let dir = env.work.join("timeout");
    let t4 = Instant::now();
    let o = env.restore(
        &pitr_bin(),
        &dir,
        &["--latest", "--recover", "--recover-timeout", "1s"],
    );
    eprintln!(
        "timed-out restore took {:?}: {}",
        t4.elapsed(),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("did not finish within 1s"), "{err}");
    assert_eq!(
        fs::read_dir(&dir).unwrap().count(),
        0,
        "nothing is left behind"
    );
    assert!(env.pins().is_empty());
}
