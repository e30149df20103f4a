//! `pitr run --config` against a real PostgreSQL: `/metrics` scraped while
//! archiving passes `promtool check metrics`, `/healthz` is 200, and SIGTERM
//! under write load exits 0 with every WAL file up to the flush position
//! confirmed to the server fetchable with `pitr wal-fetch`.

#![allow(clippy::unwrap_used)] // tests unwrap

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pitr_integration::{pg, pitr_bin, require, PgServer, PgVersion};

fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let code = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp.split_once("\r\n\r\n")?.1.to_string();
    Some((code, body))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(&format!("{name}{{source=\"main\"}} ")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[allow(unsafe_code)]
fn sigterm(pid: u32) {
    // SAFETY: plain kill(2) on a child process we spawned and still own.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
}

fn wal_name(tli: u32, segno: u64) -> String {
    format!("{tli:08X}{:08X}{:08X}", segno / 256, segno % 256)
}

#[test]
fn run_serves_metrics_and_sigterm_loses_nothing() {
    require!(pg::available(PgVersion::V15));
    let pg = PgServer::start(PgVersion::V15).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let port = free_port();
    let cfg = tmp.path().join("pitr.toml");
    std::fs::write(
        &cfg,
        format!(
            "repo = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n[[source]]\nname = \"main\"\nurl = \"${{MAIN_URL}}\"\nflush_interval = \"200ms\"\n",
            repo.display()
        ),
    )
    .unwrap();
    let first_seg: u64 = {
        let lsn = pg.psql("SELECT pg_current_wal_lsn() - '0/0'").unwrap();
        lsn.parse::<u64>().unwrap() >> 24
    };
    let log = tmp.path().join("run.log");
    let mut child = Command::new(pitr_bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .env("MAIN_URL", pg.url())
        .env_remove("PITR_REPO")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let show_log = || std::fs::read_to_string(&log).unwrap_or_default();

    pg.psql("CREATE TABLE t (id bigserial primary key, note text)")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let body = loop {
        pg.psql("INSERT INTO t (note) SELECT repeat('m', 100) FROM generate_series(1, 500)")
            .unwrap();
        if let Some((200, b)) = http_get(port, "/metrics") {
            if metric(&b, "pitr_segments_uploaded_total").unwrap_or(0.0) > 0.0
                && metric(&b, "pitr_last_archived_commit_timestamp_seconds").is_some()
            {
                break b;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no upload seen in /metrics:\n{}",
            show_log()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(metric(&body, "pitr_archiver_up"), Some(1.0));
    let lag = metric(&body, "pitr_archive_lag_seconds").unwrap();
    assert!((0.0..30.0).contains(&lag), "lag {lag}");
    assert!(metric(&body, "pitr_durable_position").unwrap() > 0.0);
    assert!(body.contains("# TYPE pitr_upload_errors_total counter"));
    // No base backup: no window samples.
    assert_eq!(
        metric(&body, "pitr_recoverable_window_start_timestamp_seconds"),
        None
    );
    let (code, health) = http_get(port, "/healthz").unwrap();
    assert_eq!((code, health.as_str()), (200, "ok\n"));

    match Command::new("promtool").arg("--version").output() {
        Ok(_) => {
            let mut p = Command::new("promtool")
                .args(["check", "metrics"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            p.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
            let out = p.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool rejected /metrics:\n{}{}\n{body}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // A skip of this check alone; a failure under PITR_REQUIRE_SERVERS=1.
        Err(_) => pitr_integration::record_skip(
            module_path!(),
            "promtool check: promtool is not installed",
        ),
    }

    // SIGTERM while writes keep coming.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, url) = (stop.clone(), pg.url());
        let psql = pg.bin("psql");
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = Command::new(&psql)
                    .args(["-X", "-q", "-d", &url, "-c"])
                    .arg("INSERT INTO t (note) SELECT repeat('w', 300) FROM generate_series(1, 20000)")
                    .output();
            }
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    sigterm(child.id());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "pitr run did not exit:\n{}",
            show_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert!(
        status.success(),
        "pitr run exited {status:?}:\n{}",
        show_log()
    );

    // Everything the server was told is flushed must be in the repository.
    let flushed: u64 = pg
        .psql("SELECT restart_lsn - '0/0' FROM pg_replication_slots WHERE slot_name LIKE 'pitr%'")
        .unwrap()
        .parse()
        .unwrap();
    let last_seg = flushed >> 24;
    assert!(last_seg > first_seg, "the load should span WAL files");
    let dest = tmp.path().join("fetched");
    for segno in first_seg..last_seg {
        let name = wal_name(1, segno);
        let out = Command::new(pitr_bin())
            .args(["wal-fetch", "--repo"])
            .arg(&repo)
            .args(["--name", "main", &name])
            .arg(&dest)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name} (below the confirmed flush position {flushed:x}) is not fetchable: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(std::fs::metadata(&dest).unwrap().len(), 16 << 20);
        let server_copy = pg.data_dir().join("pg_wal").join(&name);
        if let Ok(orig) = std::fs::read(&server_copy) {
            assert!(
                std::fs::read(&dest).unwrap() == orig,
                "{name} differs from the server's"
            );
        }
    }
    let log_text = show_log();
    assert!(!Path::new(&dest).as_os_str().is_empty());
    eprintln!(
        "checked WAL files {first_seg}..{last_seg}; pitr run log tail:\n{}",
        &log_text[log_text.len().saturating_sub(800)..]
    );
}
