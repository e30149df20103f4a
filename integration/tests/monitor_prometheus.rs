//! A real Prometheus scraping `pitr run`'s `/metrics` every second with the
//! alert rule `pitr_archive_lag_seconds > 5`: while commits (every ~200 ms)
//! are archived the alert stays inactive; once archiving stops while the
//! primary keeps committing (the archiver's role loses LOGIN and its
//! walsender is terminated, so every reconnect fails — `/metrics` keeps
//! serving), the alert fires within 20 s.
//!
//! Skipped (recorded) when the `prometheus` binary is not installed.

#![allow(clippy::unwrap_used)] // tests unwrap

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pitr_integration::util::free_port;
use pitr_integration::{pg, pitr_bin, record_skip, require, PgServer, PgVersion};

const ALERT: &str = "PitrArchiveLagging";

fn prometheus_bin() -> Option<PathBuf> {
    let fixed = PathBuf::from("/usr/bin/prometheus");
    if fixed.exists() {
        return Some(fixed);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("prometheus"))
        .find(|p| p.exists())
}

/// Decodes a `Transfer-Encoding: chunked` body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

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
    let (head, body) = resp.split_once("\r\n\r\n")?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    Some((
        code,
        if chunked {
            dechunk(body)
        } else {
            body.to_string()
        },
    ))
}

/// Kills the child by pid when dropped (also on panic).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The state of our alert in Prometheus (`None`: not active).
fn alert_state(port: u16) -> Option<String> {
    let (code, body) = http_get(port, "/api/v1/alerts")?;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["data"]["alerts"]
        .as_array()?
        .iter()
        .find(|a| a["labels"]["alertname"] == ALERT)
        .and_then(|a| a["state"].as_str().map(str::to_string))
}

/// The lag Prometheus last scraped.
fn scraped_lag(port: u16) -> Option<f64> {
    let (_, body) = http_get(port, "/api/v1/query?query=pitr_archive_lag_seconds")?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[test]
fn lag_alert_fires_only_when_archiving_stops() {
    require!(pg::available(PgVersion::V15));
    let Some(prom) = prometheus_bin() else {
        record_skip(module_path!(), "prometheus is not installed");
        return;
    };
    let pg = PgServer::start(PgVersion::V15).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (mport, pport) = (free_port().unwrap(), free_port().unwrap());

    let cfg = tmp.path().join("pitr.toml");
    std::fs::write(
        &cfg,
        format!(
            "repo = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:{mport}\"\n[[source]]\nname = \"main\"\nurl = \"{}\"\nflush_interval = \"200ms\"\n",
            tmp.path().join("repo").display(),
            pg.url_as("replicator", "replpass")
        ),
    )
    .unwrap();
    let log = tmp.path().join("run.log");
    let _run = Killed(
        Command::new(pitr_bin())
            .args(["run", "--config"])
            .arg(&cfg)
            .env_remove("PITR_REPO")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let show_log = || std::fs::read_to_string(&log).unwrap_or_default();

    std::fs::write(
        tmp.path().join("rules.yml"),
        format!(
            "groups:\n- name: pitr\n  rules:\n  - alert: {ALERT}\n    expr: pitr_archive_lag_seconds > 5\n    for: 0s\n"
        ),
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n- {}\n\
             scrape_configs:\n- job_name: pitr\n  static_configs:\n  - targets: ['127.0.0.1:{mport}']\n",
            tmp.path().join("rules.yml").display()
        ),
    )
    .unwrap();
    let prom_log = tmp.path().join("prometheus.log");
    let _prom = Killed(
        Command::new(&prom)
            .arg(format!(
                "--config.file={}",
                tmp.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                tmp.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{pport}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&prom_log).unwrap())
            .spawn()
            .unwrap(),
    );
    let show_prom = || std::fs::read_to_string(&prom_log).unwrap_or_default();

    // Commits every ~200 ms for the whole test.
    pg.psql("CREATE TABLE t (id bigserial primary key, at timestamptz default now())")
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, url, psql) = (stop.clone(), pg.url(), pg.bin("psql"));
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(180);
            while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                let _ = Command::new(&psql)
                    .args(["-X", "-q", "-d", &url, "-c", "INSERT INTO t DEFAULT VALUES"])
                    .output();
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };

    // Prometheus has scraped a lag value from the running archiver.
    let deadline = Instant::now() + Duration::from_secs(60);
    while scraped_lag(pport).is_none() {
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped pitr_archive_lag_seconds:\n{}\n{}",
            show_log(),
            show_prom()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Archiving: the alert stays inactive for 8 s of evaluations.
    let until = Instant::now() + Duration::from_secs(8);
    let mut max_lag: f64 = 0.0;
    while Instant::now() < until {
        let state = alert_state(pport);
        assert_eq!(state, None, "alert active while archiving:\n{}", show_log());
        max_lag = max_lag.max(scraped_lag(pport).unwrap_or(0.0));
        std::thread::sleep(Duration::from_millis(1000));
    }
    assert!(max_lag < 5.0, "lag {max_lag} while archiving");

    // Stop archiving: the role may no longer log in; its walsender goes.
    pg.psql("ALTER ROLE replicator NOLOGIN").unwrap();
    pg.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_replication")
        .unwrap();
    let stopped = Instant::now();
    let fired_after = loop {
        if alert_state(pport).as_deref() == Some("firing") {
            break stopped.elapsed();
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(20),
            "the alert did not fire within 20 s (lag {:?}):\n{}",
            scraped_lag(pport),
            show_log()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    // /metrics kept serving throughout: the lag is what Prometheus saw.
    let lag = scraped_lag(pport).unwrap();
    assert!(lag > 5.0, "lag {lag}");
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    eprintln!("max lag while archiving {max_lag:.2} s; alert fired {fired_after:?} after archiving stopped (lag {lag:.1} s)");
}
