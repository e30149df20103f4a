//! A known password never leaves the process: every verb is run against a real MariaDB, and
//! against a real PostgreSQL 15 with a SCRAM login, with the password in the URL (and, for the
//! MariaDB restore target, in a password file), at the most verbose log level, and the
//! password is searched for in everything they print, in their logs, in every byte stored in
//! the repository and, for PostgreSQL, in the restored data directory (its restore settings).

use std::path::Path;
use std::process::Command;

use pitr_integration::archiver::Archiver;
use pitr_integration::mysql_restore_util::{binlog_position, wait_archived};
use pitr_integration::{mysql, pg, pitr_bin, require, Flavor, MySqlServer, PgServer, PgVersion};

/// The password the test servers give the `pitr` user.
const PASSWORD: &str = "pitrpass";

/// Every file under `dir`, with its bytes.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else if let Ok(b) = std::fs::read(&p) {
            out.push((p.display().to_string(), b));
        }
    }
    out
}

/// Everything searched: a place and its bytes.
#[derive(Default)]
struct Places(Vec<(String, Vec<u8>)>);

impl Places {
    /// Runs `pitr args` and keeps what it printed.
    fn run(&mut self, args: &[&str]) -> std::process::Output {
        let o = Command::new(pitr_bin()).args(args).output().unwrap();
        let what = args.join(" ");
        self.0.push((format!("{what} (stdout)"), o.stdout.clone()));
        self.0.push((format!("{what} (stderr)"), o.stderr.clone()));
        o
    }

    /// Fails when `password` appears anywhere; at least `min` places searched.
    fn assert_absent(&self, password: &str, min: usize) {
        assert!(self.0.len() > min, "{} places searched", self.0.len());
        for (place, bytes) in &self.0 {
            assert!(
                !contains(bytes, password.as_bytes()),
                "the password appears in {place}: {}",
                String::from_utf8_lossy(bytes)
            );
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn no_verb_prints_logs_or_stores_the_password() {
    require!(mysql::available(Flavor::MariaDb));
    let src = MySqlServer::start(Flavor::MariaDb).unwrap();
    assert!(src.url().contains(PASSWORD), "the URL carries the password");
    src.sql("CREATE DATABASE s; CREATE TABLE s.t (id INT PRIMARY KEY); INSERT INTO s.t VALUES (1)")
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let repo_s = repo.to_str().unwrap().to_string();
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let pwfile = logs.join("pw");
    let archiver = Archiver::start(&src.url(), &repo, "s", &logs, &["-vv"]);
    let mut printed = Places::default();
    let o = printed.run(&[
        "-vv",
        "backup",
        &src.url(),
        "--repo",
        &repo_s,
        "--name",
        "s",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    src.sql("INSERT INTO s.t VALUES (2)").unwrap();
    let target = MySqlServer::start(Flavor::MariaDb).unwrap();
    wait_archived(&repo_s, &target.url(), &binlog_position(&src));
    printed.run(&["-vv", "status", "--repo", &repo_s, "--json"]);
    printed.run(&["-vv", "status", "--repo", &repo_s]);
    printed.run(&["-vv", "verify", "--repo", &repo_s]);
    // A wrong password for the restore target: the error names the target, not its secret.
    let wrong = target.url().replace(PASSWORD, "wrongpass");
    printed.run(&[
        "-vv", "restore", "--repo", &repo_s, "--latest", "--target", &wrong,
    ]);
    std::fs::write(&pwfile, PASSWORD).unwrap();
    let bare = target.url().replace(&format!(":{PASSWORD}@"), "@");
    let o = printed.run(&[
        "-vv",
        "restore",
        "--repo",
        &repo_s,
        "--latest",
        "--target",
        &bare,
        "--target-password-file",
        pwfile.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(target.sql("SELECT COUNT(*) FROM s.t").unwrap().trim(), "2");
    // A second archiver of the source, refused by the writer lease.
    printed.run(&[
        "-vv",
        "archive",
        &src.url(),
        "--repo",
        &repo_s,
        "--name",
        "s",
        "--no-wait",
    ]);
    let log = archiver.terminate();
    printed.0.push(("archive log".into(), log.into_bytes()));
    printed.0.extend(files(&repo));
    printed.0.extend(
        files(&logs)
            .into_iter()
            .filter(|(p, _)| !p.ends_with("/pw")),
    );
    printed.assert_absent(PASSWORD, 10);
}

#[test]
fn postgres_no_verb_prints_logs_or_stores_the_password() {
    require!(pg::available(PgVersion::V15));
    const PG_PASSWORD: &str = "replpass";
    let src = PgServer::start(PgVersion::V15).unwrap();
    let url = src.url_as("replicator", PG_PASSWORD);
    // libpq's key=value form too, with the password quoted.
    let kv = format!(
        "host=127.0.0.1 port={} user=replicator password='{PG_PASSWORD}' dbname=postgres",
        src.port()
    );
    src.psql("CREATE TABLE t (id int primary key); INSERT INTO t VALUES (1)")
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let repo_s = repo.to_str().unwrap().to_string();
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let archiver = Archiver::start(&url, &repo, "p", &logs, &["-vv"]);
    let mut printed = Places::default();
    let o = printed.run(&[
        "-vv", "backup", &kv, "--repo", &repo_s, "--name", "p", "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    src.psql("INSERT INTO t VALUES (2)").unwrap();
    printed.run(&["-vv", "status", "--repo", &repo_s, "--json"]);
    printed.run(&["-vv", "verify", "--repo", &repo_s]);
    let wrong = url.replace(PG_PASSWORD, "wrongpass");
    let o = printed.run(&["-vv", "backup", &wrong, "--repo", &repo_s, "--name", "p"]);
    assert!(!o.status.success(), "a wrong password was accepted");
    let target = tmp.path().join("restored");
    let o = printed.run(&[
        "-vv",
        "restore",
        "--repo",
        &repo_s,
        "--name",
        "p",
        "--latest",
        "--target-dir",
        target.to_str().unwrap(),
        "--owner",
        "postgres",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    printed.run(&[
        "-vv",
        "archive",
        &url,
        "--repo",
        &repo_s,
        "--name",
        "p",
        "--no-wait",
    ]);
    let log = archiver.terminate();
    printed.0.push(("archive log".into(), log.into_bytes()));
    printed.0.extend(files(&repo));
    printed.0.extend(files(&logs));
    let restored = files(&target);
    assert!(
        restored
            .iter()
            .any(|(p, _)| p.ends_with("postgresql.auto.conf")),
        "the restore wrote its settings"
    );
    printed.0.extend(restored);
    printed.assert_absent(PG_PASSWORD, 20);
}
