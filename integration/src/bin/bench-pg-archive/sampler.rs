//! Samples `pg_stat_replication` every 100 ms over one long-lived `psql` session (spawning
//! a client per sample would itself load this small machine).
//!
//! Each archiver is found by its replication slot (`pg_replication_slots.active_pid =
//! pg_stat_replication.pid`). Per sample and archiver: the server's current WAL position,
//! the archiver's reported `write_lsn` / `flush_lsn`, and the server-measured
//! `write_lag` / `flush_lag` intervals (NULL when the walsender has no pending lag
//! measurement, i.e. the archiver has confirmed everything sent).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pitr_integration::PgServer;

const END: &str = "__sample_end__";
pub const PERIOD: Duration = Duration::from_millis(100);

/// One archiver's row of one sample.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Seconds since the sampler started.
    pub t: f64,
    pub slot: String,
    pub current: u64,
    pub write: u64,
    pub flush: u64,
    pub write_lag: Option<f64>,
    pub flush_lag: Option<f64>,
}

/// A `psql` session that answers queries line by line.
pub struct Psql {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Psql {
    pub fn connect(pg: &PgServer) -> Result<Psql> {
        let mut child = Command::new(pg.bin("psql"))
            .args(["-X", "-A", "-t", "-q", "-F", "|", "-h", "127.0.0.1"])
            .args([
                "-p",
                &pg.port().to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .env_remove("PGPASSWORD")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning psql")?;
        let stdin = child.stdin.take().context("psql stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("psql stdout")?);
        Ok(Psql {
            child,
            stdin,
            stdout,
        })
    }

    /// Runs one statement; returns its rows split on `|`.
    pub fn query(&mut self, sql: &str) -> Result<Vec<Vec<String>>> {
        writeln!(self.stdin, "{sql};\n\\echo {END}").context("writing to psql")?;
        self.stdin.flush().context("writing to psql")?;
        let mut rows = Vec::new();
        loop {
            let mut line = String::new();
            if self.stdout.read_line(&mut line).context("reading psql")? == 0 {
                bail!("psql ended while answering {sql:?}");
            }
            let line = line.trim_end_matches('\n');
            if line == END {
                return Ok(rows);
            }
            if !line.is_empty() {
                rows.push(line.split('|').map(str::to_string).collect());
            }
        }
    }
}

impl Drop for Psql {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The per-archiver replication state right now.
pub fn replication_rows(psql: &mut Psql, t: f64) -> Result<Vec<Sample>> {
    let rows = psql.query(
        "SELECT s.slot_name, \
                pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint, \
                pg_wal_lsn_diff(r.write_lsn, '0/0')::bigint, \
                pg_wal_lsn_diff(r.flush_lsn, '0/0')::bigint, \
                extract(epoch FROM r.write_lag), extract(epoch FROM r.flush_lag) \
         FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid \
         WHERE s.slot_name LIKE 'bench%'",
    )?;
    rows.into_iter()
        .map(|r| {
            let num = |i: usize| -> Result<u64> {
                r.get(i)
                    .and_then(|v| v.parse::<u64>().ok())
                    .with_context(|| format!("unexpected replication row {r:?}"))
            };
            let secs = |i: usize| r.get(i).and_then(|v| v.parse::<f64>().ok());
            Ok(Sample {
                t,
                slot: r.first().cloned().unwrap_or_default(),
                current: num(1)?,
                write: num(2).unwrap_or(0),
                flush: num(3).unwrap_or(0),
                write_lag: secs(4),
                flush_lag: secs(5),
            })
        })
        .collect()
}

/// Background sampling every [`PERIOD`] until stopped.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<JoinHandle<Result<()>>>,
    pub start: Instant,
}

impl Sampler {
    pub fn start(pg: &PgServer) -> Result<Sampler> {
        let mut psql = Psql::connect(pg)?;
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let start = Instant::now();
        let thread = {
            let (stop, samples) = (stop.clone(), samples.clone());
            std::thread::spawn(move || -> Result<()> {
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let rows = replication_rows(&mut psql, start.elapsed().as_secs_f64())?;
                    if let Ok(mut s) = samples.lock() {
                        s.extend(rows);
                    }
                    next += PERIOD;
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    } else {
                        // Overloaded: do not try to catch up with a burst of samples.
                        next = now;
                    }
                }
                Ok(())
            })
        };
        Ok(Sampler {
            stop,
            samples,
            thread: Some(thread),
            start,
        })
    }

    /// Seconds since the sampler started.
    pub fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// The most recent sample of `slot`.
    pub fn latest(&self, slot: &str) -> Option<Sample> {
        let s = self.samples.lock().ok()?;
        s.iter().rev().find(|x| x.slot == slot).cloned()
    }

    /// Stops sampling and returns every sample taken.
    pub fn finish(mut self) -> Result<Vec<Sample>> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(r) => r?,
                Err(_) => bail!("the sampler thread panicked"),
            }
        }
        let s = self
            .samples
            .lock()
            .map(|s| s.clone())
            .map_err(|_| anyhow::anyhow!("sampler lock poisoned"))?;
        Ok(s)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Nearest-rank percentile (`p` in 0..=100) of unsorted values; None when empty.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v.get(rank.clamp(1, v.len()) - 1).copied()
}

/// Measured RPO of one archiver, at sampling resolution: for every sample taken during
/// `[from, to]`, the time until the archiver's `flush_lsn` first reached the WAL position
/// the server had at that sample. Unlike the server's `flush_lag` (which is computed only
/// for the positions the archiver reports, i.e. the newest byte of each stored segment),
/// this also covers WAL written early in a segment. Samples whose WAL was never confirmed
/// are left out (the caller reports the archiver as not caught up).
pub fn measured_rpo(samples: &[&Sample], from: f64, to: f64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut j = 0;
    for (i, s) in samples.iter().enumerate() {
        if s.t < from || s.t > to {
            continue;
        }
        j = j.max(i);
        while j < samples.len() && samples[j].flush < s.current {
            j += 1;
        }
        match samples.get(j) {
            Some(d) => out.push(d.t - s.t),
            None => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: f64, current: u64, flush: u64) -> Sample {
        Sample {
            t,
            slot: "x".into(),
            current,
            write: flush,
            flush,
            write_lag: None,
            flush_lag: None,
        }
    }

    #[test]
    fn rpo_is_time_until_the_position_is_confirmed() {
        // WAL at 100 (t=0) is confirmed at t=0.3, WAL at 200 (t=0.1) at t=0.5; the last
        // sample's WAL (300) is never confirmed and is left out.
        let v = [
            s(0.0, 100, 0),
            s(0.1, 200, 50),
            s(0.3, 250, 100),
            s(0.5, 300, 250),
        ];
        let refs: Vec<&Sample> = v.iter().collect();
        let rpo = measured_rpo(&refs, 0.0, 1.0);
        let rounded: Vec<i64> = rpo.iter().map(|x| (x * 10.0).round() as i64).collect();
        assert_eq!(rounded, vec![3, 4, 2]);
        assert_eq!(measured_rpo(&refs, 0.2, 0.4).len(), 1);
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
