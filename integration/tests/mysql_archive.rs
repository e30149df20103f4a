//! `pitr archive mysql://` / `pitr binlog-fetch` against real MariaDB and
//! MySQL servers.
#![allow(clippy::unwrap_used)]
//!
//! Oracles: the server's own binlog files (every closed file rebuilt by
//! `binlog-fetch` must be byte-identical to it, the open one identical up to
//! what was archived) and the flavour's binlog tool (`mariadb-binlog` /
//! `mysqlbinlog`), which must read every rebuilt file.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use pitr_integration::archiver::{wait_for, Archiver};
use pitr_integration::{mysql, pitr_bin, require, Flavor, MySqlServer};

fn binlog_fetch(repo: &Path, file: &str, dest: &Path) -> Output {
    Command::new(pitr_bin())
        .args(["binlog-fetch", "--repo"])
        .arg(repo)
        .args(["--name", "main", file])
        .arg(dest)
        .output()
        .unwrap()
}

fn tool(f: Flavor) -> &'static str {
    match f {
        Flavor::MariaDb => "mariadb-binlog",
        Flavor::MySql => "mysqlbinlog",
    }
}

/// `SHOW BINARY LOGS`: (name, size), oldest first.
fn server_binlogs(server: &MySqlServer) -> Vec<(String, u64)> {
    server
        .sql("SHOW BINARY LOGS")
        .unwrap()
        .lines()
        .map(|l| {
            let mut c = l.split('\t');
            (
                c.next().unwrap().to_string(),
                c.next().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

fn seq_of(file: &str) -> u64 {
    file.rsplit_once('.').unwrap().1.parse().unwrap()
}

/// Stored segments `(seq, start offset, end offset)`, parsed from the keys.
fn segments(repo: &Path) -> Vec<(u64, u64, u64)> {
    let dir = repo.join("main").join(format!("{:016x}", 1)).join("log");
    let mut v: Vec<(u64, u64, u64)> = fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().to_string();
                    // Not the staging file of an upload cut short by a kill.
                    if !n.ends_with(".seg") {
                        return None;
                    }
                    let hex = |r: std::ops::Range<usize>| u64::from_str_radix(n.get(r)?, 16).ok();
                    let (shi, slo) = (hex(0..16)?, hex(16..32)?);
                    let (ehi, elo) = (hex(33..49)?, hex(49..65)?);
                    if shi != ehi {
                        // Only the empty bridge from a file's end to the next file's start.
                        assert!(
                            ehi == shi + 1 && elo == 4,
                            "segment {n} crosses a binlog file"
                        );
                        return None;
                    }
                    Some((shi, slo, elo))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The empty bridge segments `(seq, end of file)`, one per completed file.
fn bridges(repo: &Path) -> Vec<(u64, u64)> {
    let dir = repo.join("main").join(format!("{:016x}", 1)).join("log");
    let mut v: Vec<(u64, u64)> = fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().to_string();
                    let hex = |r: std::ops::Range<usize>| u64::from_str_radix(n.get(r)?, 16).ok();
                    let (shi, slo, ehi) = (hex(0..16)?, hex(16..32)?, hex(33..49)?);
                    (ehi == shi + 1).then_some((shi, slo))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Each file's segments start at offset 4 and tile it: no hole, no overlap.
fn assert_tiling(segs: &[(u64, u64, u64)]) -> BTreeMap<u64, u64> {
    let mut ends: BTreeMap<u64, u64> = BTreeMap::new();
    for &(seq, a, b) in segs {
        let at = ends.get(&seq).copied().unwrap_or(4);
        assert_eq!(
            a, at,
            "file {seq}: segment {a}..{b} does not continue at {at}: {segs:?}"
        );
        assert!(b > a);
        ends.insert(seq, b);
    }
    ends
}

/// Waits until the archive holds everything the server has written.
fn wait_caught_up(server: &MySqlServer, repo: &Path) {
    wait_for(
        "pitr to archive everything the server wrote",
        Duration::from_secs(120),
        || {
            let (last, size) = server_binlogs(server).pop().unwrap();
            let seq = seq_of(&last);
            segments(repo)
                .iter()
                .any(|&(s, _, e)| s == seq && e == size)
        },
    );
}

/// Fetches every server file from `first_seq` on and compares it with the
/// server's own; the binlog tool must read each. Returns how many matched.
fn compare_files(server: &MySqlServer, repo: &Path, f: Flavor, first_seq: u64) -> usize {
    let scratch = server.binlog_dir().parent().unwrap().join("fetched");
    fs::create_dir_all(&scratch).unwrap();
    let files = server_binlogs(server);
    let open = files.last().unwrap().0.clone();
    let mut compared = 0;
    for (name, _) in files.iter().filter(|(n, _)| seq_of(n) >= first_seq) {
        let dest = scratch.join(name);
        let out = binlog_fetch(repo, name, &dest);
        assert!(
            out.status.success(),
            "binlog-fetch {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ours = fs::read(&dest).unwrap();
        let theirs = fs::read(server.binlog_dir().join(name)).unwrap();
        if *name == open {
            // Still written by the server: identical up to what was archived
            // (both carry the in-use flag).
            assert_eq!(ours[4 + 17] & 1, 1, "{name}: in-use flag kept");
            assert!(ours.len() > 4 && ours.len() <= theirs.len(), "{name}");
            assert!(
                ours[..] == theirs[..ours.len()],
                "{name}: archived prefix differs"
            );
        } else {
            assert_eq!(ours.len(), theirs.len(), "{name}: size differs");
            assert!(
                ours == theirs,
                "{name}: bytes differ from the server's file"
            );
        }
        let read = Command::new(server.bin(tool(f)))
            .arg(&dest)
            .output()
            .unwrap();
        assert!(
            read.status.success(),
            "{} rejected {name}: {}",
            tool(f),
            String::from_utf8_lossy(&read.stderr)
        );
        compared += 1;
    }
    compared
}

fn create_ledger(server: &MySqlServer) {
    server
        .sql(
            "CREATE DATABASE IF NOT EXISTS ledger; \
             CREATE TABLE IF NOT EXISTS ledger.entries (id BIGINT AUTO_INCREMENT PRIMARY KEY, \
               account INT NOT NULL, amount INT NOT NULL, note VARCHAR(200)) ENGINE=InnoDB",
        )
        .unwrap();
}

/// `rounds` batches of three transactions each.
fn ledger(server: &MySqlServer, rounds: usize, tag: &str) {
    for i in 0..rounds {
        let mut sql = String::new();
        for t in 0..3 {
            sql.push_str(&format!(
                "START TRANSACTION; \
                 INSERT INTO ledger.entries (account, amount, note) VALUES ({t}, {i}, '{tag}-{i}-{t}'), ({}, -{i}, '{tag}'); \
                 UPDATE ledger.entries SET amount = amount + 1 WHERE account = {t} AND id % 5 = 0; \
                 COMMIT; ",
                t + 10
            ));
        }
        server.sql(&sql).unwrap();
    }
}

fn ledger_rotations_and_big_transaction(f: Flavor) {
    let server = MySqlServer::start(f).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let archiver = Archiver::start(&server.url(), &repo, "main", tmp.path(), &[]);
    create_ledger(&server);
    for _ in 0..3 {
        ledger(&server, 4, "rot");
        server.sql("FLUSH BINARY LOGS").unwrap();
    }
    // One transaction of ~55 MB of row events.
    server
        .sql(
            "CREATE TABLE ledger.big (id BIGINT AUTO_INCREMENT PRIMARY KEY, pad VARCHAR(2000)) ENGINE=InnoDB",
        )
        .unwrap();
    server
        .sql(
            "CREATE TABLE ledger.digits (d INT PRIMARY KEY) ENGINE=InnoDB; \
             INSERT INTO ledger.digits VALUES (0),(1),(2),(3),(4),(5),(6),(7),(8),(9)",
        )
        .unwrap();
    // A cross join: no temporary tables, one statement, one transaction.
    let big = "START TRANSACTION; \
               INSERT INTO ledger.big (pad) SELECT REPEAT('b', 1700) \
                 FROM ledger.digits a, ledger.digits b, ledger.digits c, ledger.digits d, ledger.digits e \
                 LIMIT 33000; \
               COMMIT;";
    let before = server_binlogs(&server).last().unwrap().1;
    server.sql(big).unwrap();
    let after = server_binlogs(&server).last().unwrap().1;
    let big_bytes = after - before;
    assert!(
        big_bytes > 50 << 20,
        "big transaction is only {big_bytes} bytes"
    );
    ledger(&server, 2, "tail");
    wait_caught_up(&server, &repo);
    let log = archiver.terminate();
    assert!(!log.contains("GAP:"), "{log}");

    let segs = segments(&repo);
    let ends = assert_tiling(&segs);
    let files = server_binlogs(&server);
    assert_eq!(ends.len(), files.len(), "every binlog file is archived");
    for (name, size) in &files {
        assert_eq!(ends[&seq_of(name)], *size, "{name} archived completely");
    }
    // Every closed file is bridged to the next at its exact end.
    let expected: Vec<(u64, u64)> = files[..files.len() - 1]
        .iter()
        .map(|(name, size)| (seq_of(name), *size))
        .collect();
    assert_eq!(bridges(&repo), expected, "one bridge per rotation");
    // The big transaction lies whole inside one segment.
    assert!(
        segs.iter().any(|&(_, a, b)| a <= before && b >= after),
        "no segment holds the whole transaction {before}..{after}: {segs:?}"
    );
    assert!(compare_files(&server, &repo, f, 0) >= 4);

    // --list names each file with commit times; unknown files exit 1.
    let list = Command::new(pitr_bin())
        .args(["binlog-fetch", "--list", "--repo"])
        .arg(&repo)
        .output()
        .unwrap();
    assert!(list.status.success());
    let list = String::from_utf8_lossy(&list.stdout).to_string();
    for (name, size) in &files {
        let line = list
            .lines()
            .find(|l| l.starts_with(&format!("{name}\t")))
            .unwrap_or_else(|| panic!("{name} missing from --list:\n{list}"));
        assert!(line.contains(&format!("\t{size}\t")), "{line}");
    }
    assert!(
        list.contains('T') && list.contains('Z'),
        "commit times: {list}"
    );
    let missing = binlog_fetch(&repo, "binlog.999999", &tmp.path().join("x"));
    assert_eq!(missing.status.code(), Some(1));
    assert!(!tmp.path().join("x").exists());
}

fn kill_and_server_restart_lose_nothing(f: Flavor) {
    let mut server = MySqlServer::start(f).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    create_ledger(&server);
    let first = Archiver::start(&server.url(), &repo, "main", tmp.path(), &[]);
    let second = std::thread::scope(|s| {
        let load = s.spawn(|| {
            for i in 0..12 {
                ledger(&server, 3, &format!("k{i}"));
                if i % 4 == 3 {
                    server.sql("FLUSH BINARY LOGS").unwrap();
                }
            }
        });
        wait_for("first segments", Duration::from_secs(30), || {
            segments(&repo).len() >= 2
        });
        first.kill();
        std::thread::sleep(Duration::from_millis(300));
        let second = Archiver::start(&server.url(), &repo, "main", tmp.path(), &[]);
        load.join().unwrap();
        wait_for(
            "the second archiver to stream",
            Duration::from_secs(30),
            || second.log().contains("streaming binlog from"),
        );
        second
    });
    // The server restarts under the running archiver.
    server.restart().unwrap();
    ledger(&server, 5, "after-restart");
    server.sql("FLUSH BINARY LOGS").unwrap();
    ledger(&server, 2, "end");
    wait_caught_up(&server, &repo);
    let log = second.terminate();
    assert!(log.contains("reconnecting"), "no reconnect logged:\n{log}");
    let ends = assert_tiling(&segments(&repo));
    for (name, size) in server_binlogs(&server) {
        assert_eq!(ends.get(&seq_of(&name)), Some(&size), "{name}");
    }
    assert!(compare_files(&server, &repo, f, 0) >= 5);
}

fn purge_while_stopped_records_gap(f: Flavor) {
    let server = MySqlServer::start(f).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    create_ledger(&server);
    let a = Archiver::start(&server.url(), &repo, "main", tmp.path(), &[]);
    ledger(&server, 3, "before");
    wait_caught_up(&server, &repo);
    a.terminate();
    let lost = server_binlogs(&server).last().unwrap().0.clone();
    ledger(&server, 2, "lost");
    server.sql("FLUSH BINARY LOGS").unwrap();
    ledger(&server, 2, "lost2");
    server.sql("FLUSH BINARY LOGS").unwrap();
    let keep = server_binlogs(&server).last().unwrap().0.clone();
    // MariaDB keeps a file until its binlog checkpoint has passed: retry.
    wait_for(
        "PURGE BINARY LOGS to take effect",
        Duration::from_secs(30),
        || {
            server
                .sql(&format!("PURGE BINARY LOGS TO '{keep}'"))
                .unwrap();
            server_binlogs(&server)[0].0 == keep
        },
    );
    let b = Archiver::start(&server.url(), &repo, "main", tmp.path(), &[]);
    ledger(&server, 3, "after");
    wait_caught_up(&server, &repo);
    let log = b.terminate();
    assert!(log.contains("GAP:"), "no GAP line:\n{log}");
    let gaps: Vec<String> =
        fs::read_dir(repo.join("main").join(format!("{:016x}", 1)).join("gaps"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    let g = &gaps[0];
    let end_seq = u64::from_str_radix(&g[33..49], 16).unwrap();
    let end_off = u64::from_str_radix(&g[49..65], 16).unwrap();
    assert_eq!((end_seq, end_off), (seq_of(&keep), 4), "{g}");
    assert_eq!(u64::from_str_radix(&g[0..16], 16).unwrap(), seq_of(&lost));
    assert_tiling(&segments(&repo));
    assert!(compare_files(&server, &repo, f, seq_of(&keep)) >= 1);
}

fn bad_credentials_write_nothing(f: Flavor) {
    let server = MySqlServer::start(f).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for (url, expect) in [
        (server.url_as("pitr", "wrong"), "password"),
        (server.url_as("noreplic", "noreplpass"), "REPLICATION"),
    ] {
        let repo = tmp.path().join("repo");
        let out = Command::new(pitr_bin())
            .args(["archive", &url, "--repo"])
            .arg(&repo)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "{err}");
        assert!(err.contains(expect), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(
            !err.contains("noreplpass") && !err.contains("wrong@"),
            "{err}"
        );
        let files = walk(&repo);
        assert!(files.is_empty(), "wrote {files:?}");
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flat_map(|e| {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p)
        } else {
            vec![p]
        }
    })
    .collect()
}

#[test]
fn mariadb_ledger_rotations_and_big_transaction() {
    require!(mysql::available(Flavor::MariaDb));
    ledger_rotations_and_big_transaction(Flavor::MariaDb);
}

#[test]
fn mysql_ledger_rotations_and_big_transaction() {
    require!(mysql::available(Flavor::MySql));
    ledger_rotations_and_big_transaction(Flavor::MySql);
}

#[test]
fn mariadb_kill_and_server_restart_lose_nothing() {
    require!(mysql::available(Flavor::MariaDb));
    kill_and_server_restart_lose_nothing(Flavor::MariaDb);
}

#[test]
fn mysql_kill_and_server_restart_lose_nothing() {
    require!(mysql::available(Flavor::MySql));
    kill_and_server_restart_lose_nothing(Flavor::MySql);
}

#[test]
fn mariadb_purge_while_stopped_records_gap() {
    require!(mysql::available(Flavor::MariaDb));
    purge_while_stopped_records_gap(Flavor::MariaDb);
}

#[test]
fn mysql_purge_while_stopped_records_gap() {
    require!(mysql::available(Flavor::MySql));
    purge_while_stopped_records_gap(Flavor::MySql);
}

#[test]
fn mariadb_bad_credentials_write_nothing() {
    require!(mysql::available(Flavor::MariaDb));
    bad_credentials_write_nothing(Flavor::MariaDb);
}

#[test]
fn mysql_bad_credentials_write_nothing() {
    require!(mysql::available(Flavor::MySql));
    bad_credentials_write_nothing(Flavor::MySql);
}

/// TLS settings that cannot work are refused in one sentence, never served in cleartext: a
/// server without TLS under `ssl-mode=REQUIRED`, verification without a CA, a CA file that is
/// not there; an invalid `ssl-mode` or an unknown parameter is refused by name;
/// `ssl-mode=DISABLED` says cleartext on purpose and works. Nothing is written on a refusal.
#[test]
fn tls_parameters_that_cannot_work_are_refused() {
    require!(mysql::available(Flavor::MariaDb));
    let server = MySqlServer::start(Flavor::MariaDb).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    for (query, says) in [
        ("ssl-mode=REQUIRED", "does not offer TLS"),
        ("ssl-mode=VERIFY_IDENTITY", "needs the CA certificate"),
        ("ssl-ca=/etc/nonexistent-ca.pem", "cannot read ssl-ca"),
        ("ssl-mode=BOGUS", "ssl-mode=BOGUS"),
        ("ssl-mode=DISABLED&nonsense=1", "\"nonsense\""),
    ] {
        let url = format!("{}/?{query}", server.url());
        for verb in ["archive", "backup"] {
            let out = Command::new(pitr_bin())
                .args([verb, &url, "--repo"])
                .arg(&repo)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{verb} {query}: {err}");
            assert!(err.contains(says), "{verb} {query}: {err}");
            assert_eq!(
                err.trim().lines().count(),
                1,
                "{verb} {query}, one line: {err}"
            );
            assert!(
                !err.contains("pitrpass"),
                "{verb} {query}: password shown: {err}"
            );
            assert!(
                !repo.exists() || fs::read_dir(&repo).unwrap().next().is_none(),
                "{verb} {query} wrote to the repository"
            );
        }
    }
    let url = format!("{}/?ssl-mode=DISABLED", server.url());
    let out = Command::new(pitr_bin())
        .args(["backup", &url, "--repo"])
        .arg(&repo)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Passwords from files, none on a command line: `backup --password-file` and
/// `restore --target-password-file` with URLs that name only the user; a wrong file or a URL
/// that already has a password is refused in one sentence that shows no password.
#[test]
fn passwords_from_files() {
    require!(mysql::available(Flavor::MariaDb));
    let src = MySqlServer::start(Flavor::MariaDb).unwrap();
    src.sql("CREATE DATABASE pw; CREATE TABLE pw.t (id INT PRIMARY KEY); INSERT INTO pw.t VALUES (1), (2)")
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let pwfile = tmp.path().join("pw");
    fs::write(&pwfile, "pitrpass\n").unwrap();
    let bare = |s: &MySqlServer| s.url().replace(":pitrpass@", "@");
    assert!(!bare(&src).contains("pitrpass"));
    let run = |args: &[&str]| Command::new(pitr_bin()).args(args).output().unwrap();
    let repo_s = repo.to_str().unwrap();
    let pw_s = pwfile.to_str().unwrap();
    let archiver = Archiver::start(
        &bare(&src),
        &repo,
        "pw",
        tmp.path(),
        &["--password-file", pw_s],
    );
    let o = run(&[
        "backup",
        &bare(&src),
        "--repo",
        repo_s,
        "--name",
        "pw",
        "--password-file",
        pw_s,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    src.sql("INSERT INTO pw.t VALUES (3)").unwrap();
    let target = MySqlServer::start(Flavor::MariaDb).unwrap();
    pitr_integration::mysql_restore_util::wait_archived(
        repo_s,
        &target.url(),
        &pitr_integration::mysql_restore_util::binlog_position(&src),
    );
    archiver.terminate();
    let o = run(&[
        "restore",
        "--repo",
        repo_s,
        "--latest",
        "--target",
        &bare(&target),
        "--target-password-file",
        pw_s,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(target.sql("SELECT COUNT(*) FROM pw.t").unwrap().trim(), "3");
    // Refusals: a password twice, a missing file.
    let o = run(&[
        "backup",
        &src.url(),
        "--repo",
        repo_s,
        "--password-file",
        pw_s,
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("both a password"), "{err}");
    assert!(!err.contains("pitrpass"), "{err}");
    let missing = tmp.path().join("missing");
    let o = run(&[
        "backup",
        &bare(&src),
        "--repo",
        repo_s,
        "--password-file",
        missing.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot read the password file"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
