//! Archive throughput benchmark: `pitr archive` (local repository, default flush interval
//! 1 s) and `mariadb-binlog --read-from-remote-server --raw --stop-never` (files in a local
//! directory) stream the same MariaDB binlog side by side while `--clients` client
//! processes run the stored procedure `bench.churn` for `--seconds`: autocommit
//! transactions of one 100-row INSERT ... SELECT (plus, once a client has inserted 1 000
//! rows, one 100-row DELETE of its oldest rows).
//!
//! Measured per archiver: binlog bytes it had when the load started and stopped (pitr:
//! the archived end offsets `pitr binlog-fetch --list` reports, i.e. what is durable in
//! the repository; mariadb-binlog: the size of the files it wrote, not fsynced) against
//! the server's `SHOW BINARY LOGS` total; how long after the load it held everything; CPU
//! (`utime + stime`) from the start of the load until it caught up, per GB (10^9 bytes)
//! of binlog written in that time; peak RSS (`VmHWM`).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pitr_integration::{Flavor, MySqlServer};

use crate::report::Settings;
use crate::util::{archived, binary_logs, binlog_total, sql_script, Bg};

const SCHEMA: &str = "
CREATE DATABASE bench;
USE bench;
CREATE TABLE w (id BIGINT AUTO_INCREMENT PRIMARY KEY, c INT NOT NULL, v INT NOT NULL,
  pad VARCHAR(255) NOT NULL, KEY (c, id));
DELIMITER //
CREATE PROCEDURE churn(IN cid INT, IN secs INT)
BEGIN
  DECLARE t_end DATETIME(6) DEFAULT SYSDATE(6) + INTERVAL secs SECOND;
  DECLARE k INT DEFAULT 0;
  WHILE SYSDATE(6) < t_end DO
    INSERT INTO bench.w (c, v, pad) SELECT cid, seq, REPEAT(MD5(RAND()), 4) FROM bench.seq_1_to_100;
    SET k = k + 1;
    IF k > 10 THEN
      DELETE FROM bench.w WHERE c = cid ORDER BY id LIMIT 100;
    END IF;
  END WHILE;
END //
DELIMITER ;
";

/// One archiver's numbers.
#[derive(Debug, Clone, Default)]
pub struct ArchiverResult {
    pub label: String,
    /// Bytes it had gained while the load ran, per second of load.
    pub received_per_sec: f64,
    /// Server total minus what it had, right when the load stopped.
    pub behind_at_end: u64,
    /// Seconds after the load stopped until it had everything.
    pub caught_up_secs: f64,
    pub cpu_secs: f64,
    pub cpu_per_gb: f64,
    pub peak_rss: u64,
    pub stored: u64,
    pub clean_exit: bool,
    /// pitr (exit status checked) or mariadb-binlog (killed).
    pub pitr: bool,
}

#[derive(Debug, Clone, Default)]
pub struct ArchiveResult {
    pub load_secs: f64,
    pub generated: u64,
    pub clients: usize,
    /// How long reading pitr's position took at the end of the load (it was read after
    /// mariadb-binlog's file sizes, so pitr had this much longer).
    pub list_secs: f64,
    pub runs: Vec<ArchiverResult>,
}

/// What an archiver holds: total bytes over all files.
fn held_pitr(repo: &Path) -> u64 {
    archived(repo)
        .map(|v| v.iter().map(|(_, e)| e).sum())
        .unwrap_or(0)
}

pub fn run(s: &Settings, work: &Path) -> Result<ArchiveResult> {
    let dir = work.join("archive");
    let raw_dir = dir.join("raw");
    std::fs::create_dir_all(&raw_dir)?;
    let repo = dir.join("repo");
    eprintln!("archive: starting the source ...");
    let src = MySqlServer::start(Flavor::MariaDb)?;
    sql_script(&src, SCHEMA).context("creating the schema")?;
    let first = binary_logs(&src)?
        .first()
        .map(|(n, _)| n.clone())
        .context("the server has no binlog")?;
    let mut pitr = Bg::spawn(
        Command::new(pitr_integration::pitr_bin())
            .args(["archive", &src.url(), "--repo"])
            .arg(&repo)
            .args(["--name", crate::replay::SOURCE]),
        dir.join("pitr-archive.log"),
    )?;
    let mut raw = Bg::spawn(
        Command::new(src.bin("mariadb-binlog"))
            .arg("--no-defaults")
            .args(["--read-from-remote-server", "--raw", "--stop-never"])
            .args(["-h", "127.0.0.1", "-P", &src.port().to_string()])
            .args(["-u", "pitr", "-ppitrpass"])
            .arg(format!("--result-file={}/", raw_dir.display()))
            .arg(&first),
        dir.join("mariadb-binlog.log"),
    )?;
    let total0 = binlog_total(&src)?;
    crate::util::wait_until("both archivers to start", Duration::from_secs(120), || {
        pitr.ensure_running()?;
        raw.ensure_running()?;
        Ok(held_pitr(&repo) >= total0 && dir_size(&raw_dir) >= total0)
    })?;

    eprintln!(
        "archive: {} clients writing for {} s ...",
        s.clients, s.seconds
    );
    let cpu0 = [pitr.cpu_seconds()?, raw.cpu_seconds()?];
    let start = [held_pitr(&repo), dir_size(&raw_dir)];
    let total0 = binlog_total(&src)?;
    let t0 = Instant::now();
    let mut clients: Vec<Child> = (0..s.clients)
        .map(|i| {
            Command::new(src.bin("mariadb"))
                .arg("--no-defaults")
                .arg(format!("--socket={}", src.socket().display()))
                .args(["-u", "root", "-e"])
                .arg(format!("CALL bench.churn({i}, {})", s.seconds))
                .stdout(Stdio::null())
                .spawn()
                .context("spawning a client")
        })
        .collect::<Result<_>>()?;
    for c in &mut clients {
        let st = c.wait()?;
        if !st.success() {
            anyhow::bail!("a load client failed: {st}");
        }
    }
    let t1 = Instant::now();
    let load_secs = (t1 - t0).as_secs_f64();
    let total1 = binlog_total(&src)?;
    let raw_end = dir_size(&raw_dir);
    let pitr_end = held_pitr(&repo);
    let list_secs = t1.elapsed().as_secs_f64();
    eprintln!(
        "  {:.0} MB written in {load_secs:.0} s; waiting for both to catch up ...",
        (total1 - total0) as f64 / 1e6
    );
    let mut done: [Option<(f64, f64)>; 2] = [None, None];
    let deadline = Instant::now() + Duration::from_secs(600);
    while done.iter().any(Option::is_none) {
        pitr.ensure_running()?;
        raw.ensure_running()?;
        let held = [held_pitr(&repo), dir_size(&raw_dir)];
        let procs = [&pitr, &raw];
        for i in 0..2 {
            if done[i].is_none() && held[i] >= total1 {
                done[i] = Some((t1.elapsed().as_secs_f64(), procs[i].cpu_seconds()?));
            }
        }
        if Instant::now() > deadline {
            anyhow::bail!("the archivers did not catch up within 600 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let generated = total1 - total0;
    let peak = [pitr.peak_rss()?, raw.peak_rss()?];
    let labels = [
        "pitr archive → local dir (zstd segments)",
        "mariadb-binlog --raw --stop-never → local dir",
    ];
    let ends = [pitr_end, raw_end];
    let clean = [pitr.stop("TERM")?, raw.stop("TERM")?];
    let stored = [dir_size(&repo), dir_size(&raw_dir)];
    let runs = (0..2)
        .map(|i| {
            let (caught, cpu1) = done[i].unwrap_or_default();
            let cpu = cpu1 - cpu0[i];
            ArchiverResult {
                label: labels[i].to_string(),
                received_per_sec: ends[i].saturating_sub(start[i]) as f64 / load_secs,
                behind_at_end: total1.saturating_sub(ends[i]),
                caught_up_secs: caught,
                cpu_secs: cpu,
                cpu_per_gb: cpu / (generated as f64 / 1e9),
                peak_rss: peak[i],
                stored: stored[i],
                clean_exit: clean[i],
                pitr: i == 0,
            }
        })
        .collect();
    Ok(ArchiveResult {
        load_secs,
        generated,
        clients: s.clients,
        list_secs,
        runs,
    })
}

/// Total size of the regular files in `dir` (recursively).
fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}
