//! The processes under test: `pg_receivewal` and `pitr archive` children, and what
//! `/proc` says about them.
//!
//! CPU time and peak memory per process come from [`pitr_integration::procstat`];
//! machine load from `/proc/stat` (aggregate `cpu` line) and `/proc/loadavg`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
pub use pitr_integration::procstat::log_tail;
use pitr_integration::procstat::{cpu_seconds, peak_rss};

/// What kind of archiver a child is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `pg_receivewal --synchronous` into a local directory.
    ReceiveWal,
    /// `pitr archive` into a local-directory repository.
    PitrLocal,
    /// `pitr archive` into an encrypted local-directory repository.
    PitrLocalSealed,
    /// `pitr archive` into an S3 server (label: moto, s3s-fs).
    PitrS3(String),
}

impl Kind {
    pub fn label(&self) -> String {
        match self {
            Kind::ReceiveWal => "pg_receivewal → local dir".into(),
            Kind::PitrLocal => "pitr → local dir".into(),
            Kind::PitrLocalSealed => "pitr → local dir, encrypted".into(),
            Kind::PitrS3(s) => format!("pitr → S3 ({s})"),
        }
    }

    pub fn is_pitr(&self) -> bool {
        !matches!(self, Kind::ReceiveWal)
    }
}

/// A running archiver.
pub struct Archiver {
    pub kind: Kind,
    /// Its replication slot: how its row in `pg_stat_replication` is found.
    pub slot: String,
    /// Local directory it writes to (None for S3).
    pub dir: Option<PathBuf>,
    pub log: PathBuf,
    child: Child,
}

impl Archiver {
    /// Spawns `cmd` with stdout/stderr into `log`.
    pub fn spawn(
        kind: Kind,
        slot: &str,
        dir: Option<PathBuf>,
        log: PathBuf,
        cmd: &mut Command,
    ) -> Result<Archiver> {
        let out = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("cloning a log file handle")?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawning {:?}", cmd.get_program()))?;
        Ok(Archiver {
            kind,
            slot: slot.to_string(),
            dir,
            log,
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails (with the end of its log) when the process has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait().context("waiting for a child")? {
            bail!(
                "{} exited early with {status}; log {}:\n{}",
                self.kind.label(),
                self.log.display(),
                log_tail(&self.log, 20)
            );
        }
        Ok(())
    }

    /// CPU seconds used so far.
    pub fn cpu_seconds(&self) -> Result<f64> {
        cpu_seconds(self.pid())
    }

    /// Peak resident set (VmHWM) in bytes.
    pub fn peak_rss(&self) -> Result<u64> {
        peak_rss(self.pid())
    }

    /// Asks it to stop (pitr: SIGTERM, it stores what it received first; pg_receivewal:
    /// SIGINT, its documented stop signal), then waits up to `timeout` before killing it.
    /// Returns whether it exited with status 0.
    pub fn terminate(mut self, timeout: Duration) -> Result<bool> {
        let sig = if self.kind.is_pitr() { "TERM" } else { "INT" };
        send_signal(self.pid(), sig)?;
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().context("waiting for a child")? {
                return Ok(s.success());
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Archiver {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn send_signal(pid: u32, sig: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -{sig} {pid} failed");
    }
    Ok(())
}

/// Aggregate CPU counters of the machine: (busy, total) ticks.
pub fn machine_cpu() -> Result<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    // idle + iowait
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Ok((total.saturating_sub(idle), total))
}

/// The 1-minute load average.
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// Total size of the regular files under `dir`.
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
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
