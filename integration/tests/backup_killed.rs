//! Interrupted and killed `pitr backup` runs against a real PostgreSQL 15.
//!
//! With no archiver running, `pitr backup` stores the data and then waits
//! (up to 10 s) for the WAL of the backup before archiving it itself: the
//! backup directory then holds every part and no manifest. The test
//! signals the process at that point:
//!
//! * SIGTERM: exit status 143, one sentence saying the incomplete backup
//!   was removed, and its directory is gone (no empty directory left);
//! * SIGKILL: the parts stay. After a complete backup, `pitr status`
//!   reports the orphan and exits 1 (with `--incomplete-grace 0s`; the
//!   default grace of 1 h spares it), `pitr prune --dry-run` names it,
//!   `pitr prune --json` removes and reports it, and then `pitr status`
//!   passes and no empty directory is left in the repository.
//!
//! A backup paused (SIGSTOP) while it waits for its WAL, then overtaken by
//! a complete backup and a `pitr prune --keep-backups 1 --incomplete-grace
//! 0s` in another process: its pin keeps its directory and the WAL from its
//! start, so once resumed (SIGCONT) it completes, and `verify` is clean.
//!
//! MariaDB: SIGINT while the dump of a large table is being stored: exit
//! status 130, the directory is gone; the same for `pitr run` stopped by
//! SIGTERM during its scheduled backup (exit status 0).

#![allow(clippy::unwrap_used)] // tests unwrap

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use pitr_integration::archiver::{wait_child, wait_for, Archiver};
use pitr_integration::signal::{send, Signal};
use pitr_integration::{mysql, pg, pitr_bin, require, Flavor, MySqlServer, PgServer, PgVersion};

fn pitr(args: &[&str], repo: &Path) -> Output {
    Command::new(pitr_bin())
        .args(args)
        .arg("--repo")
        .arg(repo)
        .env_remove("PITR_REPO")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Backup directories of `source`: (name, has manifest, object count).
fn backup_dirs(repo: &Path, source: &str) -> Vec<(String, bool, usize)> {
    let dir = repo.join(source).join("backups");
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| {
                    let files = std::fs::read_dir(e.path()).map(|f| f.count()).unwrap_or(0);
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        e.path().join("manifest.json").exists(),
                        files,
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Every empty directory under `root` (the root itself excepted).
fn empty_dirs(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .filter_map(|e| e.ok())
            .collect();
        if entries.is_empty() && d != root {
            out.push(d.clone());
        }
        stack.extend(entries.into_iter().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    out
}

/// `kill SIG PID` of an archiver process.
fn kill(a: &Archiver, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &a.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} failed");
}

fn spawn_backup(url: &str, repo: &Path, log: &Path, extra: &[&str]) -> Child {
    Command::new(pitr_bin())
        .args(["backup", url, "--repo"])
        .arg(repo)
        .args(extra)
        .env_remove("PITR_REPO")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// Starts a backup and waits until its data is stored (the `backup_manifest`
/// part exists): from then on it waits for the WAL, manifest not written.
fn backup_waiting_for_wal(url: &str, repo: &Path, log: &Path) -> Child {
    let before: Vec<String> = backup_dirs(repo, "main").into_iter().map(|d| d.0).collect();
    let child = spawn_backup(url, repo, log, &["--name", "main"]);
    wait_for(
        "the backup data to be stored",
        Duration::from_secs(60),
        || {
            backup_dirs(repo, "main").iter().any(|(d, manifest, _)| {
                !before.contains(d)
                    && !manifest
                    && repo
                        .join("main/backups")
                        .join(d)
                        .join("backup_manifest.zst.000")
                        .exists()
            })
        },
    );
    child
}

#[test]
fn pg_backup_sigterm_cleans_up_and_sigkill_leftovers_are_pruned() {
    require!(pg::available(PgVersion::V15));
    let pg = PgServer::start(PgVersion::V15).unwrap();
    pg.psql("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g")
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let log = tmp.path().join("backup.log");
    let url = pg.url();

    // An archiver holds the writer lease but is paused: the backups below
    // wait for it to store their WAL (instead of archiving it themselves),
    // which keeps them in the window between data and manifest.
    let paused = Archiver::start(&url, &repo, "main", tmp.path(), &["--lease-ttl", "10m"]);
    wait_for("the writer lease", Duration::from_secs(30), || {
        repo.join("main/lease/writer.json").exists()
    });
    kill(&paused, "-STOP");

    // SIGTERM: cleaned up by the process itself.
    let mut child = backup_waiting_for_wal(&url, &repo, &log);
    send(child.id(), Signal::Term);
    let status = wait_child(&mut child, Duration::from_secs(30));
    let err = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(143), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("backup interrupted by SIGTERM"))
        .unwrap_or_else(|| panic!("no interruption sentence:\n{err}"));
    assert!(line.contains("was removed"), "{line}");
    assert_eq!(backup_dirs(&repo, "main"), vec![], "{err}");
    assert_eq!(empty_dirs(&repo), Vec::<PathBuf>::new());

    // SIGKILL: parts stay behind.
    let mut child = backup_waiting_for_wal(&url, &repo, &log);
    send(child.id(), Signal::Kill);
    wait_child(&mut child, Duration::from_secs(30));
    let killed = backup_dirs(&repo, "main");
    assert_eq!(killed.len(), 1, "{killed:?}");
    let (killed_dir, manifest, parts) = killed[0].clone();
    assert!(!manifest && parts >= 2, "{killed:?}");
    kill(&paused, "-CONT");
    paused.terminate(); // stores what it has and releases the lease

    // A complete backup (an archiver stores its WAL) overtakes it.
    std::thread::sleep(Duration::from_millis(20)); // a later backup id
    let archiver = Archiver::start(&url, &repo, "main", tmp.path(), &[]);
    let o = pitr(&["backup", &url, "--name", "main"], &repo);
    assert!(o.status.success(), "{}", text(&o));
    let dirs = backup_dirs(&repo, "main");
    assert_eq!(dirs.iter().filter(|d| d.1).count(), 1, "{dirs:?}");
    archiver.terminate();

    // status: an orphan older than the grace period fails the check.
    let o = pitr(&["status", "--incomplete-grace", "0s", "--json"], &repo);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&killed_dir) && err.contains("never finished"),
        "{}",
        text(&o)
    );
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let orphans = st["sources"][0]["orphaned_backups"].as_array().unwrap();
    assert_eq!(orphans.len(), 1, "{st}");
    assert!(orphans[0]["dir"].as_str().unwrap().contains(&killed_dir));
    // Within the default grace period (1 h) it is not a problem yet.
    let o = pitr(&["status"], &repo);
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("never finished"),
        "{}",
        text(&o)
    );

    // prune: the dry run names it, the real run removes and reports it.
    let o = pitr(
        &[
            "prune",
            "--keep-backups",
            "1",
            "--incomplete-grace",
            "0s",
            "--dry-run",
        ],
        &repo,
    );
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.lines()
            .any(|l| l.contains("would remove incomplete backup")
                && l.contains(&killed_dir)
                && l.contains("no manifest")),
        "{out}"
    );
    assert_eq!(
        backup_dirs(&repo, "main").len(),
        2,
        "the dry run deleted something"
    );
    // Without --incomplete-grace the default (1 h) spares it.
    let o = pitr(&["prune", "--keep-backups", "1", "--json"], &repo);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        r[0]["incomplete_backups"].as_array().unwrap().len(),
        0,
        "{r}"
    );
    assert_eq!(backup_dirs(&repo, "main").len(), 2);

    let o = pitr(
        &[
            "prune",
            "--keep-backups",
            "1",
            "--incomplete-grace",
            "0s",
            "--json",
        ],
        &repo,
    );
    assert!(o.status.success(), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let removed = r[0]["incomplete_backups"].as_array().unwrap();
    assert_eq!(removed.len(), 1, "{r}");
    assert!(
        removed[0]["dir"].as_str().unwrap().contains(&killed_dir),
        "{r}"
    );
    assert!(removed[0]["started"].is_string(), "{r}");
    let left = backup_dirs(&repo, "main");
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].1, "{left:?}");
    assert_eq!(empty_dirs(&repo), Vec::<PathBuf>::new());

    let o = pitr(&["status", "--incomplete-grace", "0s"], &repo);
    assert!(o.status.success(), "{}", text(&o));
    let o = pitr(&["verify"], &repo);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn pg_backup_paused_during_prune_keeps_its_parts_and_wal() {
    require!(pg::available(PgVersion::V15));
    let pg = PgServer::start(PgVersion::V15).unwrap();
    pg.psql("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g")
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let log = tmp.path().join("backup.log");
    let url = pg.url();
    let archiver = Archiver::start(&url, &repo, "main", tmp.path(), &["--lease-ttl", "10m"]);
    wait_for("the writer lease", Duration::from_secs(30), || {
        repo.join("main/lease/writer.json").exists()
    });
    // The archiver paused: the first backup stores its data and waits for
    // its WAL; then it is paused itself, mid-backup.
    kill(&archiver, "-STOP");
    let mut first = backup_waiting_for_wal(&url, &repo, &log);
    let first_dir = backup_dirs(&repo, "main")[0].0.clone();
    assert!(Command::new("kill")
        .args(["-STOP", &first.id().to_string()])
        .status()
        .unwrap()
        .success());
    kill(&archiver, "-CONT");
    // A second backup completes and more WAL follows.
    std::thread::sleep(Duration::from_millis(20)); // a later backup id
    let o = pitr(&["backup", &url, "--name", "main"], &repo);
    assert!(o.status.success(), "{}", text(&o));
    for _ in 0..3 {
        pg.psql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 5000) g")
            .unwrap();
        pg.psql("SELECT pg_switch_wal()").unwrap();
    }
    // Prune in another process: the paused backup is incomplete, older than
    // the grace and overtaken, so only its pin keeps it (and its WAL).
    let o = pitr(
        &[
            "prune",
            "--keep-backups",
            "1",
            "--incomplete-grace",
            "0s",
            "--json",
        ],
        &repo,
    );
    assert!(o.status.success(), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        r[0]["incomplete_backups"].as_array().unwrap().len(),
        0,
        "{r}"
    );
    assert!(
        r[0]["pinned"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().contains(&first_dir)),
        "{r}"
    );
    // Resumed, the paused backup finds its WAL archived and completes.
    assert!(Command::new("kill")
        .args(["-CONT", &first.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = wait_child(&mut first, Duration::from_secs(120));
    assert!(
        status.success(),
        "the paused backup failed: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let dirs = backup_dirs(&repo, "main");
    assert!(
        dirs.iter()
            .any(|(d, manifest, _)| *d == first_dir && *manifest),
        "{dirs:?}"
    );
    archiver.terminate();
    let o = pitr(&["verify"], &repo);
    assert!(o.status.success(), "{}", text(&o));
    // Its pin is gone with it: the next prune keeps only the newest backup.
    let o = pitr(&["prune", "--keep-backups", "1", "--json"], &repo);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(backup_dirs(&repo, "main").len(), 1);
}

#[test]
fn mysql_backup_sigint_cleans_up() {
    require!(mysql::available(Flavor::MariaDb));
    let src = MySqlServer::start(Flavor::MariaDb).unwrap();
    // ~60 MB of hex that compresses to about half: the dump takes a while
    // and stores a 1 MiB part every few hundred milliseconds.
    src.sql(
        "CREATE DATABASE big; CREATE TABLE big.t (id INT PRIMARY KEY, a CHAR(128), b CHAR(128)); \
         INSERT INTO big.t SELECT seq, SHA2(seq, 512), SHA2(seq + 1000000, 512) FROM big.seq_1_to_250000",
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let log = tmp.path().join("backup.log");
    let mut child = spawn_backup(
        &src.url(),
        &repo,
        &log,
        &["--name", "m", "--part-size-mib", "1"],
    );
    wait_for(
        "the first part of the table dump",
        Duration::from_secs(60),
        || {
            backup_dirs(&repo, "m").iter().any(|(d, _, _)| {
                repo.join("m/backups")
                    .join(d)
                    .join("t00000.sql.zst.000")
                    .exists()
            })
        },
    );
    send(child.id(), Signal::Int);
    let status = wait_child(&mut child, Duration::from_secs(30));
    let err = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(
        err.lines()
            .any(|l| l.starts_with("backup interrupted by SIGINT") && l.contains("was removed")),
        "{err}"
    );
    assert_eq!(backup_dirs(&repo, "m"), vec![], "{err}");
    assert_eq!(empty_dirs(&repo), Vec::<PathBuf>::new());
    // The server is left without the backup's sessions or locks.
    src.sql("INSERT INTO big.t VALUES (0, 'a', 'b')").unwrap();

    // `pitr run` stopped during its scheduled backup (the schema is stored,
    // the big table is being dumped): it exits 0 and the backup is gone.
    let cfg = tmp.path().join("pitr.toml");
    std::fs::write(
        &cfg,
        format!(
            "repo = \"{}\"\n[[source]]\nname = \"r\"\nurl = \"{}\"\nbackup_interval = \"1h\"\n",
            repo.display(),
            src.url()
        ),
    )
    .unwrap();
    let run_log = tmp.path().join("run.log");
    let mut run = Command::new(pitr_bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .env_remove("PITR_REPO")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&run_log).unwrap())
        .spawn()
        .unwrap();
    wait_for(
        "the scheduled backup's schema",
        Duration::from_secs(60),
        || {
            backup_dirs(&repo, "r").iter().any(|(d, _, _)| {
                repo.join("r/backups")
                    .join(d)
                    .join("schema.json.zst.000")
                    .exists()
            })
        },
    );
    send(run.id(), Signal::Term);
    let status = wait_child(&mut run, Duration::from_secs(60));
    let text = std::fs::read_to_string(&run_log).unwrap();
    assert!(status.success(), "{status:?}\n{text}");
    assert!(
        text.contains("backup interrupted by shutdown") && text.contains("was removed"),
        "{text}"
    );
    assert_eq!(backup_dirs(&repo, "r"), vec![], "{text}");
}
