//! Encryption at rest against a real PostgreSQL 15: `pitr key init`, then
//! archive and back up with the key-encryption key; a marker string the
//! workload writes appears in no stored object; restore without the key is
//! refused in one sentence and writes nothing; restore with it is exact.
//! Then `key rotate` (new segments use data key 2, old ones still restore),
//! `key rewrap` to a second KEK (the first one is no longer accepted, the
//! restore still works with the second alone), and a flipped byte in a
//! sealed segment that `verify` reports.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pitr_integration::archiver::Archiver;
use pitr_integration::restore_util::{id, pitr, query_restored, text};
use pitr_integration::{pg, require, PgServer, PgVersion};

const MARKER: &str = "MARKER-5b0c-secret-ledger-note";

/// Every file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// What someone holding the bucket reads in an object without any key:
/// its bytes, and the output of every zstd frame found in it (zstd codes
/// literals, so a marker need not appear in compressed bytes as such).
fn readable(bytes: &[u8]) -> Vec<u8> {
    use std::io::Read as _;
    const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    let mut out = bytes.to_vec();
    for (i, w) in bytes.windows(4).enumerate() {
        if w == ZSTD_MAGIC {
            if let Ok(d) = zstd::stream::read::Decoder::new(&bytes[i..]) {
                let mut plain = Vec::new();
                let _ = d.single_frame().read_to_end(&mut plain);
                out.extend_from_slice(&plain);
            }
        }
    }
    out
}

fn shows_marker(p: &Path) -> bool {
    contains(
        &readable(&fs::read(p).unwrap_or_default()),
        MARKER.as_bytes(),
    )
}

/// Stored segments: (path, format version, key id).
fn segments(repo: &Path) -> Vec<(PathBuf, u16, u32)> {
    files(repo)
        .into_iter()
        .filter_map(|p| {
            let b = fs::read(&p).ok()?;
            (b.len() > 20 && &b[..8] == b"PITRSEG\0").then(|| {
                let version = u16::from_le_bytes([b[8], b[9]]);
                let key = u32::from_le_bytes(b[16..20].try_into().unwrap());
                (p, version, key)
            })
        })
        .collect()
}

fn kek_file(dir: &Path, name: &str, byte: u8) -> String {
    let p = dir.join(name);
    let hex: String = [byte; 32].iter().map(|b| format!("{b:02x}")).collect();
    fs::write(&p, format!("{hex}\n")).unwrap();
    // the restored PostgreSQL (user postgres) runs wal-fetch with it
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
    format!("file:{}", p.display())
}

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
        .psql("INSERT INTO ledger SELECT g, 'before' FROM generate_series(1, 3) g")
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
    for i in 4..=10 {
        env.server
            .psql(&format!("INSERT INTO ledger VALUES ({i}, '{MARKER}-{i}')"))
            .unwrap();
    }
    env.wait_archived(&a);
    let want = env.server.psql(ROWS).unwrap();
    assert!(want.contains(MARKER));
    pitr_integration::archiver::wait_for(
        "the plain control archive",
        Duration::from_secs(60),
        || files(&plain).iter().any(|p| shows_marker(p)),
    );
    plain_archiver.terminate();

    // Nothing stored holds the marker; every segment is sealed with key 1.
    let all = files(&repo);
    assert!(all.len() > 3, "{all:?}");
    for p in &all {
        assert!(
            !shows_marker(p),
            "the marker is readable in {}",
            p.display()
        );
    }
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
    archiver.terminate();

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
    let (victim, _, _) = segments(&repo)
        .into_iter()
        .max_by_key(|(p, _, _)| fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = fs::read(&victim).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    fs::write(&victim, bytes).unwrap();
    let o = pitr(&["verify", "--repo", &env.repo, "--kek", &b]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("PROBLEM"), "{}", text(&o));
}
