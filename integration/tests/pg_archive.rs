//! `pitr archive` / `pitr wal-fetch` for PostgreSQL against real servers.
#![allow(clippy::unwrap_used)]
//!
//! Oracles: `pg_receivewal` streaming the same server side by side (every
//! completed WAL file must be byte-identical), the server's own `pg_wal`
//! files, and `pg_waldump` reading what `wal-fetch` returns.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use pitr_integration::archiver::{wait_child, wait_for, Archiver};
use pitr_integration::{pg, pitr_bin, require, PgServer, PgVersion};

fn wal_fetch(repo: &Path, name: &str, file: &str, dest: &Path) -> Output {
    Command::new(pitr_bin())
        .args(["wal-fetch", "--repo"])
        .arg(repo)
        .args(["--name", name, file])
        .arg(dest)
        .output()
        .unwrap()
}

/// Completed WAL files (24 hex digits, no `.partial`) in a directory.
fn complete_wal_files(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
                .collect()
        })
        .unwrap_or_default()
}

fn workload(pg: &PgServer, rounds: usize) {
    pg.psql("CREATE TABLE IF NOT EXISTS ledger (id bigserial primary key, amount int, note text)")
        .unwrap();
    for i in 0..rounds {
        pg.psql(&format!(
            "INSERT INTO ledger (amount, note) SELECT g, repeat('x', 200) FROM generate_series(1, 2000) g; \
             UPDATE ledger SET amount = amount + {i} WHERE id % 7 = 0;"
        ))
        .unwrap();
        pg.psql("SELECT pg_switch_wal()").unwrap();
    }
}

/// Starts pg_receivewal into `dir`; returns the child.
fn start_receivewal(pg: &PgServer, dir: &Path) -> Child {
    Command::new(pg.bin("pg_receivewal"))
        .args(["-d", &pg.url(), "-D"])
        .arg(dir)
        .args(["--no-password", "--synchronous"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning pg_receivewal")
}

/// Every completed file of pg_receivewal must come back byte-identical from
/// `pitr wal-fetch`, and pg_waldump must read it. Returns how many were compared.
fn compare_with_receivewal(
    pg: &PgServer,
    repo: &Path,
    name: &str,
    rw_dir: &Path,
    scratch: &Path,
) -> usize {
    let files = complete_wal_files(rw_dir);
    let mut compared = 0;
    for f in &files {
        let dest = scratch.join(f);
        let out = wal_fetch(repo, name, f, &dest);
        if out.status.code() == Some(1) {
            // Older than where pitr started (pg_receivewal may start earlier); skip only those.
            continue;
        }
        assert!(
            out.status.success(),
            "wal-fetch {f} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ours = fs::read(&dest).unwrap();
        let theirs = fs::read(rw_dir.join(f)).unwrap();
        assert_eq!(ours.len(), theirs.len(), "{f}: size differs");
        assert!(ours == theirs, "{f}: bytes differ from pg_receivewal's");
        let dump = Command::new(pg.bin("pg_waldump"))
            .arg("--quiet")
            .arg(&dest)
            .output()
            .unwrap();
        // --quiet prints nothing on success; it fails loudly on invalid WAL
        // (the last file may end in the middle of a record, which waldump reports
        // as "invalid record length" at the very end; accept only that).
        let err = String::from_utf8_lossy(&dump.stderr);
        assert!(
            dump.status.success()
                || err.contains("invalid record length")
                || err.contains("contrecord"),
            "pg_waldump rejected {f}: {err}"
        );
        compared += 1;
        let _ = fs::remove_file(&dest);
    }
    compared
}

/// Segment object names under `<repo>/<name>/<epoch>/log/`, parsed to (start, end).
fn segments(repo: &Path, name: &str, epoch: u64) -> Vec<(u128, u128)> {
    let dir = repo.join(name).join(format!("{epoch:016x}")).join("log");
    let mut v: Vec<(u128, u128)> = fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().to_string();
                    // Not the staging file of an upload cut short by a kill.
                    if !n.ends_with(".seg") {
                        return None;
                    }
                    let s = u128::from_str_radix(n.get(0..32)?, 16).ok()?;
                    let t = u128::from_str_radix(n.get(33..65)?, 16).ok()?;
                    Some((s, t))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn assert_contiguous(segs: &[(u128, u128)]) {
    assert!(!segs.is_empty(), "no segments stored");
    for w in segs.windows(2) {
        assert_eq!(
            w[0].1, w[1].0,
            "segments overlap or leave a hole: {:?} then {:?}",
            w[0], w[1]
        );
    }
}

fn byte_identical_with_pg_receivewal(v: PgVersion) {
    require!(pg::available(v));
    let pg = PgServer::start(v).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (repo, rw_dir, scratch) = (
        tmp.path().join("repo"),
        tmp.path().join("rw"),
        tmp.path().join("scratch"),
    );
    fs::create_dir_all(&rw_dir).unwrap();
    fs::create_dir_all(&scratch).unwrap();
    let mut rw = start_receivewal(&pg, &rw_dir);
    let archiver = Archiver::start(&pg.url(), &repo, "main", tmp.path(), &[]);
    // Let both connect before WAL flows.
    wait_for("pitr to create its slot", Duration::from_secs(20), || {
        pg.psql("SELECT count(*) FROM pg_replication_slots")
            .unwrap()
            == "1"
    });
    workload(&pg, 4);
    wait_for(
        "pg_receivewal to complete 3 files",
        Duration::from_secs(60),
        || complete_wal_files(&rw_dir).len() >= 3,
    );
    let log = {
        // pitr's durable position must reach the server's current switch point.
        let target = pg.psql("SELECT pg_current_wal_lsn()").unwrap();
        wait_for(
            "pitr to confirm the WAL as flushed",
            Duration::from_secs(30),
            || {
                pg.psql(&format!(
                "SELECT coalesce(bool_or(confirmed_flush_lsn >= '{target}' OR restart_lsn >= '{target}'), false) \
                 FROM pg_replication_slots WHERE slot_name LIKE 'pitr%'"
            ))
            .unwrap()
                == "t"
            },
        );
        archiver.terminate()
    };
    let _ = rw.kill();
    let _ = rw.wait();
    let compared = compare_with_receivewal(&pg, &repo, "main", &rw_dir, &scratch);
    assert!(
        compared >= 3,
        "only {compared} WAL files compared; pitr log:\n{log}"
    );
    assert_contiguous(&segments(&repo, "main", 1));
}

#[test]
fn pg15_archive_is_byte_identical_to_pg_receivewal() {
    byte_identical_with_pg_receivewal(PgVersion::V15);
}

#[test]
fn pg18_archive_is_byte_identical_to_pg_receivewal() {
    byte_identical_with_pg_receivewal(PgVersion::V18);
}

#[test]
fn sigkill_and_restart_lose_nothing_and_store_nothing_twice() {
    require!(pg::available(PgVersion::V15));
    let pg = PgServer::start(PgVersion::V15).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (repo, rw_dir, scratch) = (
        tmp.path().join("repo"),
        tmp.path().join("rw"),
        tmp.path().join("scratch"),
    );
    fs::create_dir_all(&rw_dir).unwrap();
    fs::create_dir_all(&scratch).unwrap();
    let mut rw = start_receivewal(&pg, &rw_dir);
    let a = Archiver::start(&pg.url(), &repo, "main", tmp.path(), &[]);
    wait_for("pitr to create its slot", Duration::from_secs(20), || {
        pg.psql("SELECT count(*) FROM pg_replication_slots")
            .unwrap()
            == "1"
    });
    pg.psql("CREATE TABLE ledger (id bigserial primary key, amount int, note text)")
        .unwrap();
    // Kill it in the middle of a stream of writes.
    pg.psql("INSERT INTO ledger (amount, note) SELECT g, repeat('y', 300) FROM generate_series(1, 20000) g")
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    a.kill();
    pg.psql("INSERT INTO ledger (amount, note) SELECT g, repeat('z', 300) FROM generate_series(1, 20000) g")
        .unwrap();
    // PostgreSQL restarted mid-stream too.
    let mut pg = pg;
    let b = Archiver::start(&pg.url(), &repo, "main", tmp.path(), &[]);
    std::thread::sleep(Duration::from_millis(700));
    pg.restart().unwrap();
    workload(&pg, 3);
    wait_for(
        "pg_receivewal to complete 4 files",
        Duration::from_secs(60),
        || complete_wal_files(&rw_dir).len() >= 4,
    );
    let target = pg.psql("SELECT pg_current_wal_lsn()").unwrap();
    wait_for(
        "pitr to confirm the WAL as flushed",
        Duration::from_secs(60),
        || {
            pg.psql(&format!(
            "SELECT coalesce(bool_or(restart_lsn >= '{target}'), false) FROM pg_replication_slots WHERE slot_name LIKE 'pitr%'"
        ))
        .unwrap()
            == "t"
        },
    );
    let log = b.terminate();
    let _ = rw.kill();
    let _ = rw.wait();
    let compared = compare_with_receivewal(&pg, &repo, "main", &rw_dir, &scratch);
    assert!(compared >= 4, "only {compared} files compared; log:\n{log}");
    // Nothing stored twice: the segments tile the log exactly.
    assert_contiguous(&segments(&repo, "main", 1));
}

#[test]
fn promoted_standby_new_timeline_and_history_are_archived() {
    require!(pg::available(PgVersion::V15));
    let primary = PgServer::start(PgVersion::V15).unwrap();
    primary.psql("CREATE TABLE t (x int)").unwrap();
    let standby = primary.start_standby().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let a = Archiver::start(&standby.url(), &repo, "main", tmp.path(), &[]);
    wait_for(
        "pitr to create its slot on the standby",
        Duration::from_secs(20),
        || {
            standby
                .psql("SELECT count(*) FROM pg_replication_slots")
                .unwrap()
                == "1"
        },
    );
    primary
        .psql("INSERT INTO t SELECT generate_series(1, 1000); SELECT pg_switch_wal();")
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    standby.promote().unwrap();
    standby
        .psql("INSERT INTO t SELECT generate_series(1, 1000)")
        .unwrap();
    let file2 = standby
        .psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
        .unwrap();
    standby.psql("SELECT pg_switch_wal()").unwrap();
    standby.psql("INSERT INTO t VALUES (1)").unwrap();
    assert!(file2.starts_with("00000002"), "{file2}");
    let scratch = tmp.path().join(&file2);
    wait_for(
        "the timeline-2 WAL file to be archived",
        Duration::from_secs(60),
        || wal_fetch(&repo, "main", &file2, &scratch).status.success(),
    );
    let log = a.terminate();
    // The history file is archived and equals the server's.
    let hist = tmp.path().join("00000002.history");
    let out = wal_fetch(&repo, "main", "00000002.history", &hist);
    assert!(
        out.status.success(),
        "history not archived: {}\n{log}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        fs::read(&hist).unwrap(),
        fs::read(standby.data_dir().join("pg_wal/00000002.history")).unwrap()
    );
    // The completed timeline-2 file equals the server's own.
    assert_eq!(
        fs::read(&scratch).unwrap(),
        fs::read(standby.data_dir().join("pg_wal").join(&file2)).unwrap(),
        "timeline-2 WAL differs from the server's file"
    );
    assert!(!segments(&repo, "main", 2).is_empty());
}

#[test]
fn slot_dropped_behind_pitrs_back_records_a_gap() {
    require!(pg::available(PgVersion::V15));
    let pg = PgServer::start(PgVersion::V15).unwrap();
    for sql in [
        "ALTER SYSTEM SET wal_keep_size = 0",
        "ALTER SYSTEM SET min_wal_size = '32MB'",
        "ALTER SYSTEM SET max_wal_size = '64MB'",
        "SELECT pg_reload_conf()",
    ] {
        pg.psql(sql).unwrap();
    }
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let a = Archiver::start(&pg.url(), &repo, "main", tmp.path(), &[]);
    wait_for("pitr to create its slot", Duration::from_secs(20), || {
        pg.psql("SELECT count(*) FROM pg_replication_slots")
            .unwrap()
            == "1"
    });
    pg.psql("CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 1000)")
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    a.terminate();
    let slot = pg
        .psql("SELECT slot_name FROM pg_replication_slots")
        .unwrap();
    pg.psql(&format!("SELECT pg_drop_replication_slot('{slot}')"))
        .unwrap();
    for _ in 0..8 {
        pg.psql("INSERT INTO t SELECT generate_series(1, 1000); SELECT pg_switch_wal();")
            .unwrap();
    }
    pg.psql("CHECKPOINT").unwrap();
    pg.psql("CHECKPOINT").unwrap();
    let b = Archiver::start(&pg.url(), &repo, "main", tmp.path(), &[]);
    let gaps = repo.join("main").join(format!("{:016x}", 1)).join("gaps");
    wait_for("a gap record", Duration::from_secs(30), || {
        fs::read_dir(&gaps)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    });
    pg.psql("INSERT INTO t VALUES (1)").unwrap();
    let log = b.terminate();
    assert!(
        log.contains("GAP"),
        "the gap was not reported loudly:\n{log}"
    );
}

fn archive_error(url: &str) -> (Option<i32>, String) {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(pitr_bin())
        .args(["archive", url, "--repo"])
        .arg(tmp.path().join("repo"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_child(&mut child, Duration::from_secs(30));
    let mut err = String::new();
    use std::io::Read as _;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    // Nothing may be left behind in the repository.
    let leftovers = fs::read_dir(tmp.path().join("repo"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(
        leftovers, 0,
        "a failed archive left objects in the repository"
    );
    (status.code(), err)
}

#[test]
fn bad_credentials_privileges_and_hosts_fail_with_one_clear_sentence() {
    require!(pg::available(PgVersion::V15));
    let pg = PgServer::start(PgVersion::V15).unwrap();

    let (code, err) = archive_error(&pg.url_as("replicator", "wrong"));
    assert_ne!(code, Some(0));
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(
        !err.contains("wrong"),
        "the password leaked into the message: {err}"
    );

    let (code, err) = archive_error(&pg.url_as("plainuser", "plainpass"));
    assert_ne!(code, Some(0));
    assert!(err.to_lowercase().contains("replication"), "{err}");

    let port = pitr_integration::util::free_port().unwrap();
    let (code, err) = archive_error(&format!("postgres://postgres@127.0.0.1:{port}/postgres"));
    assert_ne!(code, Some(0));
    assert!(err.contains(&port.to_string()), "{err}");
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error")).count(),
        1,
        "{err}"
    );
}

#[test]
fn compaction_merges_small_segments_and_wal_stays_byte_identical() {
    require!(pg::available(PgVersion::V15));
    let pg = PgServer::start(PgVersion::V15).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (repo, rw_dir, scratch) = (
        tmp.path().join("repo"),
        tmp.path().join("rw"),
        tmp.path().join("scratch"),
    );
    fs::create_dir_all(&rw_dir).unwrap();
    fs::create_dir_all(&scratch).unwrap();
    let mut rw = start_receivewal(&pg, &rw_dir);
    let a = Archiver::start(&pg.url(), &repo, "main", tmp.path(), &[]);
    wait_for("pitr to create its slot", Duration::from_secs(20), || {
        pg.psql("SELECT count(*) FROM pg_replication_slots")
            .unwrap()
            == "1"
    });
    pg.psql("CREATE TABLE t (x int, pad text)").unwrap();
    // Many small segments: a commit every ~120 ms for ~5 s with a 200 ms flush interval.
    for i in 0..40 {
        pg.psql(&format!(
            "INSERT INTO t SELECT g, repeat('p', 100) FROM generate_series(1, {}) g",
            100 + i
        ))
        .unwrap();
        std::thread::sleep(Duration::from_millis(120));
    }
    pg.psql("SELECT pg_switch_wal()").unwrap();
    workload(&pg, 2);
    wait_for(
        "pg_receivewal to complete 2 files",
        Duration::from_secs(60),
        || complete_wal_files(&rw_dir).len() >= 2,
    );
    std::thread::sleep(Duration::from_secs(1));
    a.terminate();
    let _ = rw.kill();
    let _ = rw.wait();
    let before = segments(&repo, "main", 1);
    assert!(
        before.len() >= 10,
        "expected many small segments, got {}",
        before.len()
    );
    let out = Command::new(pitr_bin())
        .args(["compact", "--repo"])
        .arg(&repo)
        .args(["--name", "main", "--min-age", "0s", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "compact failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = segments(&repo, "main", 1);
    assert!(
        after.len() < before.len() / 2,
        "{} segments before, {} after",
        before.len(),
        after.len()
    );
    assert_contiguous(&after);
    assert_eq!(after.first().map(|s| s.0), before.first().map(|s| s.0));
    assert_eq!(after.last().map(|s| s.1), before.last().map(|s| s.1));
    let compared = compare_with_receivewal(&pg, &repo, "main", &rw_dir, &scratch);
    assert!(
        compared >= 2,
        "only {compared} WAL files compared after compaction"
    );
    let verify = Command::new(pitr_bin())
        .args(["verify", "--repo"])
        .arg(&repo)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "verify after compaction: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}
