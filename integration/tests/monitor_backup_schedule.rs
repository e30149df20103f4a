//! `pitr run` with `backup_interval = "2s"` and `keep_backups = 1` against a
//! real PostgreSQL: scheduled base backups keep coming (the backup counter
//! and `pitr_last_base_backup_timestamp_seconds` move), retention leaves one
//! complete backup and deletes the WAL before it (the first archived WAL
//! file disappears, the rest still verifies), and `pitr restore --latest
//! --recover` from the pruned repository works.

#![allow(clippy::unwrap_used)] // tests unwrap

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pitr_integration::{pg, pitr_bin, require, PgServer, PgVersion};

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    Some(resp.split_once("\r\n\r\n")?.1.to_string())
}

fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(&format!("{name}{{source=\"main\"}} ")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn complete_backups(repo: &Path) -> Vec<String> {
    let dir = repo.join("main").join("backups");
    let mut out: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().join("manifest.json").exists())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn pitr(args: &[&str], repo: &Path) -> std::process::Output {
    Command::new(pitr_bin())
        .args(args)
        .arg("--repo")
        .arg(repo)
        .output()
        .unwrap()
}

#[allow(unsafe_code)]
fn sigterm(pid: u32) {
    // SAFETY: plain kill(2) on a child process we spawned and still own.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
}

#[test]
fn scheduled_backups_with_retention() {
    require!(pg::available(PgVersion::V15));
    let pg = PgServer::start(PgVersion::V15).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let port = pitr_integration::util::free_port().unwrap();
    let cfg = tmp.path().join("pitr.toml");
    std::fs::write(
        &cfg,
        format!(
            "repo = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n[retention]\nkeep_backups = 1\n\
             [[source]]\nname = \"main\"\nurl = \"{}\"\nflush_interval = \"200ms\"\nbackup_interval = \"2s\"\n",
            repo.display(),
            pg.url()
        ),
    )
    .unwrap();
    let first_wal = pg
        .psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
        .unwrap();
    let log = tmp.path().join("run.log");
    let mut child = Command::new(pitr_bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .env_remove("PITR_REPO")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let show_log = || std::fs::read_to_string(&log).unwrap_or_default();
    pg.psql("CREATE TABLE t (id bigserial primary key, note text)")
        .unwrap();

    // Backups keep coming; the repository's newest-backup time moves.
    let mut stamps: Vec<f64> = Vec::new();
    let mut taken = 0.0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while stamps.len() < 2 || taken < 3.0 {
        pg.psql("INSERT INTO t (note) SELECT repeat('b', 100) FROM generate_series(1, 200)")
            .unwrap();
        pg.psql("SELECT pg_switch_wal()").unwrap();
        if let Some(b) = http_get(port, "/metrics") {
            taken = metric(&b, "pitr_base_backups_taken_total").unwrap_or(0.0);
            if let Some(t) = metric(&b, "pitr_last_base_backup_timestamp_seconds") {
                if stamps.last() != Some(&t) {
                    stamps.push(t);
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "backups taken {taken}, timestamps {stamps:?}:\n{}",
            show_log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(stamps.windows(2).all(|w| w[1] > w[0]), "{stamps:?}");

    // Let the last retention finish, then stop the daemon.
    std::thread::sleep(Duration::from_secs(1));
    sigterm(child.id());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "pitr run did not exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = show_log();
    assert!(status.success(), "pitr run exited {status:?}:\n{text}");
    assert!(text.contains("pruned"), "no deletion logged:\n{text}");

    // keep_backups = 1: one complete backup is left (a backup may have been
    // stored after the last prune, so allow the newest two).
    let backups = complete_backups(&repo);
    assert!(
        (1..=2).contains(&backups.len()),
        "backups left: {backups:?}\n{text}"
    );
    let out = pitr(
        &["prune", "--keep-backups", "1", "--json", "--name", "main"],
        &repo,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(complete_backups(&repo).len(), 1);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cut = report[0]["cut"]["position"].as_str().unwrap().to_string();

    // The first WAL file is gone; every WAL file from the cut on is there.
    let fetch = |name: &str| {
        Command::new(pitr_bin())
            .args(["wal-fetch", "--repo"])
            .arg(&repo)
            .args(["--name", "main", name])
            .arg(tmp.path().join("fetched"))
            .output()
            .unwrap()
    };
    let out = fetch(&first_wal);
    assert_eq!(out.status.code(), Some(1), "{first_wal} should be pruned");
    let cut_lsn = u64::from_str_radix(&cut[16..], 16).unwrap();
    let cut_wal = format!(
        "00000001{:08X}{:08X}",
        (cut_lsn >> 24) / 256,
        (cut_lsn >> 24) % 256
    );
    let out = fetch(&cut_wal);
    assert!(
        out.status.success(),
        "{cut_wal} (at the cut) must stay: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = pitr(&["verify", "--name", "main"], &repo);
    assert!(
        out.status.success(),
        "verify after pruning: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Restore the latest state from what is left.
    let want = pg.psql("SELECT count(*) FROM t").unwrap();
    let target = tmp.path().join("restored");
    let mut cmd = Command::new(pitr_bin());
    cmd.args([
        "restore",
        "--latest",
        "--recover",
        "--name",
        "main",
        "--repo",
    ])
    .arg(&repo)
    .arg("--target-dir")
    .arg(&target)
    .arg("--pg-bin")
    .arg(pg.bin("postgres").parent().unwrap());
    if pitr_integration::util::is_root() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        cmd.args(["--owner", "postgres"]);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "restore failed: {stderr}");
    // `pitr run` stopped on SIGTERM after storing all it had received, the
    // last insert well before: the latest restore holds every row.
    let got = pitr_integration::restore_util::query_restored(
        pg.bin("postgres").parent().unwrap(),
        &target,
        "SELECT count(*) FROM t",
    );
    assert_eq!(got, want, "rows restored vs on the primary: {stderr}");
    eprintln!(
        "backups seen {}, left {:?}; restore: {}; rows on the primary {want}",
        taken,
        complete_backups(&repo),
        &stderr[stderr.len().saturating_sub(400)..]
    );
}
