//! Background processes for the benchmarks ([`Bg`]) and what `/proc` says
//! about a process: CPU time is
//! `utime + stime` (fields 14 and 15 of `/proc/PID/stat`, in clock ticks of
//! `getconf CLK_TCK`); peak memory is `VmHWM` of `/proc/PID/status` (the
//! resident-set high-water mark over the process's whole life). And the end
//! of a log file, for error messages.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A child process with its output in a log file; killed when dropped.
pub struct Bg {
    pub child: Child,
    pub log: PathBuf,
}

impl Bg {
    pub fn spawn(cmd: &mut Command, log: PathBuf) -> Result<Bg> {
        let out = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("spawning {:?}", cmd.get_program()))?;
        Ok(Bg { child, log })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(s) = self.child.try_wait()? {
            bail!(
                "{} exited with {s}:\n{}",
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

    /// Sends `sig`, waits up to a minute; returns whether it exited with status 0.
    pub fn stop(mut self, sig: &str) -> Result<bool> {
        Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()?;
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(60) {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s.success());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("{} did not stop", self.log.display())
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 on every Linux seen),
/// asked once.
pub fn clk_tck() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// `utime + stime` of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may contain spaces: count fields after its closing ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("malformed {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tck = clk_tck();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    let tick = |i: usize| -> Result<f64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .map(|t| t as f64 / tck)
            .with_context(|| format!("malformed {path}"))
    };
    Ok(tick(11)? + tick(12)?)
}

/// Peak resident set (`VmHWM`) of a process, in bytes.
pub fn peak_rss(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .with_context(|| format!("no VmHWM in {path}"))
}

/// The last `n` lines of a log file (empty when it cannot be read).
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
        assert!(peak_rss(pid).unwrap() > 0);
        assert!(cpu_seconds(u32::MAX).is_err());
    }
}
