//! Encryption at rest against a real PostgreSQL 15 and a real MariaDB:
//! `pitr key init`, then archive and back up with the key-encryption key; a
//! marker string the workload writes before and after the backup appears in
//! no stored object, not even after zstd-decoding every frame found in it
//! (while a plain repository of the same source shows it: the control);
//! restore without the key is refused in one sentence and writes nothing;
//! restore with it is exact. PostgreSQL also: `key rotate` (new segments
//! use data key 2, old ones still restore), `key rotate --reencrypt` (every
//! object rewritten under data key 3), `key rewrap` to a second KEK
//! (the first one is no longer accepted, the restore works with the second
//! alone after the first is deleted), and a flipped byte in a sealed
//! segment that `verify` reports.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use pitr_integration::archiver::{wait_for, Archiver};
use pitr_integration::at_rest::{
    assert_hidden, contains, files, flip_byte_in_largest_segment, is_part, kek_file, readable,
    segments, shows,
};
use pitr_integration::mysql_restore_util::{binlog_position, dump, same, wait_archived_with};
use pitr_integration::restore_util::{id, pitr, query_restored, text};
use pitr_integration::{mysql, pg, require, Flavor, MySqlServer, PgServer, PgVersion};

const MARKER: &str = "MARKER-5b0c-secret-ledger-note";

struct Env {
    server: PgServer,
    repo: String,
    work: PathBuf,
    bin: PathBuf,
    n: usize,
}

impl Env {
    fn pitr_ok(&self, args: &[&str]) -> String {
        let o = pitr(args);
        assert!(o.status.success(), "pitr {args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Waits until `--latest` of source `name` in `repo` reaches the
    /// source's current insert position.
    fn wait_archived_in(&self, repo: &str, name: &str, kek: &[&str]) {
        self.server.psql("SELECT pg_switch_wal()").unwrap();
        let want: pitr_postgres::Lsn = self
            .server
            .psql("SELECT pg_current_wal_insert_lsn()")
            .unwrap()
            .parse()
            .unwrap();
        let start = Instant::now();
        loop {
            let mut args = vec![
                "restore",
                "--repo",
                repo,
                "--name",
                name,
                "--latest",
                "--dry-run",
                "--json",
            ];
            args.extend_from_slice(kek);
            let o = pitr(&args);
            let p: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            let to: Option<pitr_postgres::Lsn> = p["wal_to"].as_str().and_then(|s| s.parse().ok());
            if to.is_some_and(|t| t >= want) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "archive did not reach {want}: {}",
                text(&o)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn wait_archived(&self, kek: &str) {
        self.wait_archived_in(&self.repo, "src", &["--kek", kek]);
    }

    /// `restore --latest --recover` with `extra`; the restored rows.
    fn restore(&mut self, extra: &[&str]) -> Result<String, String> {
        self.n += 1;
        let dir = self.work.join(format!("r{}", self.n));
        let mut args = vec![
            "restore",
            "--repo",
            &self.repo,
            "--name",
            "src",
            "--latest",
            "--recover",
            "--owner",
            "postgres",
        ];
        let dir_s = dir.to_str().unwrap().to_string();
        let bin_s = self.bin.to_str().unwrap().to_string();
        args.extend(["--target-dir", &dir_s, "--pg-bin", &bin_s]);
        args.extend_from_slice(extra);
        let o = pitr(&args);
        if !o.status.success() {
            let left = files(&dir);
            assert!(left.is_empty(), "a refused restore left {left:?}");
            return Err(String::from_utf8_lossy(&o.stderr).into_owned());
        }
        let rows = query_restored(&self.bin, &dir, ROWS);
        let _ = fs::remove_dir_all(&dir);
        Ok(rows)
    }
}

const ROWS: &str =
    "SELECT coalesce(string_agg(id || ':' || note, ',' ORDER BY id), '') FROM ledger";

#[test]
fn encrypted_repository_postgres() {
    require!(pg::available(PgVersion::V15));
    let server = PgServer::start(PgVersion::V15).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let repo = tmp.path().join("repo");
    let work = tmp.path().join("work");
    fs::create_dir_all(&work).unwrap();
    std::os::unix::fs::chown(&work, Some(id("-u")), Some(id("-g"))).unwrap();
    let url = server.url_as("replicator", "replpass");
    let bin = server.bin("postgres").parent().unwrap().to_path_buf();
    let mut env = Env {
        server,
        repo: repo.to_str().unwrap().to_string(),
        work,
        bin,
        n: 0,
    };
    let (a, b) = (
        kek_file(tmp.path(), "kek-a", 0xa1),
        kek_file(tmp.path(), "kek-b", 0xb2),
    );

    // Encrypt the (new) repository; init refuses twice.
    let out = env.pitr_ok(&["key", "init", "--repo", &env.repo, "--kek", &a]);
    assert!(out.contains("data key 1"), "{out}");
    let again = pitr(&["key", "init", "--repo", &env.repo, "--kek", &a]);
    assert!(!again.status.success(), "{}", text(&again));

    env.server
        .psql("CREATE TABLE ledger (id int PRIMARY KEY, note text)")
        .unwrap();
    env.server
        .psql(&format!(
            "INSERT INTO ledger SELECT g, '{MARKER}-' || g FROM generate_series(1, 3) g"
        ))
        .unwrap();
    // A writer without the key is refused before it connects.
    let o = pitr(&[
        "archive",
        &url,
        "--repo",
        &env.repo,
        "--name",
        "src",
        "--no-wait",
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("--kek"), "{}", text(&o));

    let archiver = Archiver::start(&url, &repo, "src", tmp.path(), &["--kek", &a]);
    // The control: the same WAL archived into a plain repository shows the
    // marker, so its absence above means something.
    let plain = tmp.path().join("plain");
    let plain_archiver = Archiver::start(&url, &plain, "plain", tmp.path(), &[]);
    env.pitr_ok(&[
        "backup", &url, "--repo", &env.repo, "--name", "src", "--kek", &a,
    ]);
    let plain_s = plain.to_str().unwrap();
    env.pitr_ok(&["backup", &url, "--repo", plain_s, "--name", "plain"]);
    for i in 4..=10 {
        env.server
            .psql(&format!("INSERT INTO ledger VALUES ({i}, '{MARKER}-{i}')"))
            .unwrap();
    }
    env.wait_archived(&a);
    let want = env.server.psql(ROWS).unwrap();
    assert!(want.contains(MARKER));
    wait_for("the plain control archive", Duration::from_secs(60), || {
        files(&plain)
            .iter()
            .any(|p| !is_part(p) && shows(p, MARKER))
    });
    plain_archiver.terminate();
    assert!(
        files(&plain).iter().any(|p| is_part(p) && shows(p, MARKER)),
        "the control: a plain base backup shows the marker"
    );

    // Nothing stored holds the marker; every segment is sealed with key 1.
    let all = files(&repo);
    assert!(all.len() > 3, "{all:?}");
    assert_hidden(&repo, MARKER);
    let segs = segments(&repo);
    assert!(!segs.is_empty());
    for (p, version, key) in &segs {
        assert_eq!((*version, *key), (2, 1), "{}", p.display());
    }

    // Without the key: one sentence, nothing written.
    let e = env.restore(&[]).unwrap_err();
    assert!(e.contains("encrypted") && e.contains("--kek"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    // With it: exact.
    assert_eq!(env.restore(&["--kek", &a]).unwrap(), want);
    let out = env.pitr_ok(&["verify", "--repo", &env.repo, "--kek", &a]);
    assert!(out.contains("data key(s) 1:"), "{out}");

    // Rotate: the restarted archiver seals new segments with key 2.
    let out = env.pitr_ok(&["key", "rotate", "--repo", &env.repo, "--kek", &a]);
    assert!(out.contains("data key 2"), "{out}");
    archiver.terminate();
    let before_rotation = segs.len();
    let archiver = Archiver::start(&url, &repo, "src", tmp.path(), &["--kek", &a]);
    for i in 11..=15 {
        env.server
            .psql(&format!("INSERT INTO ledger VALUES ({i}, '{MARKER}-{i}')"))
            .unwrap();
    }
    env.wait_archived(&a);
    let want = env.server.psql(ROWS).unwrap();
    let segs = segments(&repo);
    assert!(segs.len() > before_rotation);
    assert!(segs.iter().any(|s| s.2 == 2), "{segs:?}");
    assert!(segs.iter().any(|s| s.2 == 1), "{segs:?}");
    let out = env.pitr_ok(&["verify", "--repo", &env.repo, "--kek", &a]);
    assert!(out.contains("data key(s) 1, 2:"), "{out}");
    // Objects of both data keys restore together.
    assert_eq!(env.restore(&["--kek", &a]).unwrap(), want);
    archiver.terminate();

    // Rotate with re-encryption: every segment, part and manifest is
    // rewritten under data key 3, and the backup still restores.
    let out = env.pitr_ok(&[
        "key",
        "rotate",
        "--reencrypt",
        "--repo",
        &env.repo,
        "--kek",
        &a,
    ]);
    assert!(out.contains("re-encrypted under data key 3"), "{out}");
    let segs = segments(&repo);
    assert!(segs.iter().all(|s| s.2 == 3), "{segs:?}");
    let blobs: Vec<u32> = files(&repo)
        .iter()
        .filter_map(|p| {
            let b = fs::read(p).unwrap();
            b.starts_with(b"PITRBLOB")
                .then(|| u32::from_le_bytes(b[12..16].try_into().unwrap()))
        })
        .collect();
    assert!(
        blobs.len() >= 2 && blobs.iter().all(|&k| k == 3),
        "{blobs:?}"
    );
    let out = env.pitr_ok(&["verify", "--repo", &env.repo, "--kek", &a]);
    assert!(out.contains("data key(s) 3:"), "{out}");

    // Rewrap under B: A no longer opens anything, B alone restores all.
    let out = env.pitr_ok(&[
        "key",
        "rewrap",
        "--repo",
        &env.repo,
        "--kek",
        &a,
        "--new-kek",
        &b,
    ]);
    assert!(out.contains("no longer needed"), "{out}");
    let e = env.restore(&["--kek", &a]).unwrap_err();
    assert!(e.contains("not by the one given"), "{e}");
    fs::remove_file(a.trim_start_matches("file:")).unwrap();
    assert_eq!(env.restore(&["--kek", &b]).unwrap(), want);

    // A flipped byte in a sealed segment is reported by verify.
    flip_byte_in_largest_segment(&repo, 0x01);
    let o = pitr(&["verify", "--repo", &env.repo, "--kek", &b]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("PROBLEM"), "{}", text(&o));
}

#[test]
fn encrypted_repository_mariadb() {
    require!(mysql::available(Flavor::MariaDb));
    let src = MySqlServer::start(Flavor::MariaDb).unwrap();
    let target = MySqlServer::start(Flavor::MariaDb).unwrap();
    src.sql("CREATE DATABASE s; CREATE TABLE s.t (id INT PRIMARY KEY, note VARCHAR(100))")
        .unwrap();
    src.sql(&format!(
        "INSERT INTO s.t VALUES (1, '{MARKER}-1'), (2, '{MARKER}-2')"
    ))
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let repo_s = repo.to_str().unwrap().to_string();
    let plain = tmp.path().join("plain");
    let plain_s = plain.to_str().unwrap().to_string();
    let a = kek_file(tmp.path(), "kek-a", 0x5c);
    let ok = |args: &[&str]| {
        let o = pitr(args);
        assert!(o.status.success(), "pitr {args:?}: {}", text(&o));
    };
    ok(&["key", "init", "--repo", &repo_s, "--kek", &a]);

    let archiver = Archiver::start(&src.url(), &repo, "s", tmp.path(), &["--kek", &a]);
    // another name: another replica server id
    let plain_archiver = Archiver::start(&src.url(), &plain, "plain", tmp.path(), &[]);
    ok(&[
        "backup",
        &src.url(),
        "--repo",
        &repo_s,
        "--name",
        "s",
        "--kek",
        &a,
    ]);
    ok(&["backup", &src.url(), "--repo", &plain_s, "--name", "plain"]);
    for i in 3..=6 {
        src.sql(&format!("INSERT INTO s.t VALUES ({i}, '{MARKER}-{i}')"))
            .unwrap();
    }
    let pos = binlog_position(&src);
    wait_archived_with(&repo_s, &target.url(), &pos, &["--kek", &a]);
    let last = format!("{MARKER}-6");
    wait_for("the plain control archive", Duration::from_secs(60), || {
        files(&plain).iter().any(|p| {
            !is_part(p) && contains(&readable(&fs::read(p).unwrap_or_default()), last.as_bytes())
        })
    });
    archiver.terminate();
    plain_archiver.terminate();
    assert!(
        files(&plain).iter().any(|p| is_part(p) && shows(p, MARKER)),
        "the control: a plain dump shows the marker"
    );
    let all = files(&repo);
    assert!(all.iter().any(|p| is_part(p)), "{all:?}");
    assert_hidden(&repo, MARKER);
    for (p, version, key) in segments(&repo) {
        assert_eq!((version, key), (2, 1), "{}", p.display());
    }

    // Without the key: one sentence, nothing loaded.
    let o = pitr(&[
        "restore",
        "--repo",
        &repo_s,
        "--latest",
        "--target",
        &target.url(),
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("encrypted") && err.contains("--kek"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(target.sql("SHOW DATABASES LIKE 's'").unwrap().trim(), "");
    // With it: exact.
    ok(&[
        "restore",
        "--repo",
        &repo_s,
        "--latest",
        "--target",
        &target.url(),
        "--kek",
        &a,
    ]);
    same(&dump(&target, "s"), &dump(&src, "s"), "restored database s");

    // One flipped byte in a sealed segment: verify reports it, restore
    // refuses it.
    flip_byte_in_largest_segment(&repo, 0x04);
    let o = pitr(&["verify", "--repo", &repo_s, "--kek", &a]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let o = pitr(&[
        "restore",
        "--repo",
        &repo_s,
        "--latest",
        "--target",
        &target.url(),
        "--replace",
        "--kek",
        &a,
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("corrupt"), "{}", text(&o));
}
