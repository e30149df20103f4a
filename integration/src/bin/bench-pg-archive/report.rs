//! The benchmark's results as markdown, and the "## PostgreSQL WAL archiving" section of
//! BENCHMARKS.md (created, or replaced in place; every other section is kept byte for
//! byte). A `### Analysis` subsection already in that section is carried over, since it
//! is written by hand.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;
use pitr_integration::{PgServer, S3Impl};

use crate::sampler::percentile;

pub const SECTION: &str = "## PostgreSQL WAL archiving";
const MIB: f64 = 1024.0 * 1024.0;
const GB: f64 = 1e9;
/// Goal: peak RSS of pitr.
const RSS_GOAL: f64 = 64.0 * MIB;

/// Command-line settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub seconds: u32,
    pub scale: u32,
    pub clients: u32,
    pub threads: u32,
    pub flush_interval: String,
    pub together: bool,
    pub s3: Vec<S3Impl>,
    pub write: bool,
    pub out: PathBuf,
}

/// Facts about where the numbers were taken.
#[derive(Debug, Clone)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub mem_gib: f64,
    pub kernel: String,
    pub date: String,
    pub pg_version: String,
    pub commit: String,
}

impl Machine {
    pub fn collect(pg: &PgServer) -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let cmd = |prog: &str, args: &[&str]| {
            Command::new(prog)
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_else(|| "?".into())
        };
        Machine {
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            cpu: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
                .unwrap_or_else(|| "?".into()),
            mem_gib: meminfo
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                .map(|kb| kb / 1024.0 / 1024.0)
                .unwrap_or(0.0),
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "?".into()),
            date: cmd("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            pg_version: pg
                .psql("SHOW server_version")
                .unwrap_or_else(|_| "?".into()),
            commit: cmd(
                "git",
                &[
                    "-C",
                    &pitr_integration::workspace_dir().display().to_string(),
                    "rev-parse",
                    "--short",
                    "HEAD",
                ],
            ),
        }
    }
}

/// One archiver's numbers in one run.
#[derive(Debug, Clone)]
pub struct ArchiverResult {
    pub label: String,
    pub is_pitr: bool,
    /// `flush_lsn` advance between the start and the end of the load.
    pub archived_during_load: u64,
    /// Seconds after the load ended until `flush_lsn` reached the final WAL position.
    pub caught_up_after: Option<f64>,
    pub write_lag_bytes: Vec<f64>,
    pub flush_lag_bytes: Vec<f64>,
    pub write_lag: Vec<f64>,
    pub flush_lag: Vec<f64>,
    /// Measured commit → durable times (see `sampler::measured_rpo`).
    pub rpo: Vec<f64>,
    pub cpu_secs: f64,
    pub peak_rss: u64,
    pub stored_bytes: Option<u64>,
    pub clean_exit: bool,
}

/// One run: one load, several archivers side by side.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub run: usize,
    pub tps: f64,
    pub load_secs: f64,
    pub wal_bytes: u64,
    /// Fraction of all CPU time of the machine that was busy during the load.
    pub machine_busy: f64,
    pub load_before: String,
    pub load_after: String,
    pub archivers: Vec<ArchiverResult>,
}

impl ArchiverResult {
    fn cpu_per_gb(&self, wal_bytes: u64) -> f64 {
        if wal_bytes == 0 {
            return 0.0;
        }
        self.cpu_secs / (wal_bytes as f64 / GB)
    }
}

/// Parses `1s`, `500ms`, `2m`, or plain seconds.
pub fn parse_secs(s: &str) -> Option<f64> {
    let s = s.trim();
    if let Some(v) = s.strip_suffix("ms") {
        return v.parse::<f64>().ok().map(|v| v / 1000.0);
    }
    if let Some(v) = s.strip_suffix('s') {
        return v.parse().ok();
    }
    if let Some(v) = s.strip_suffix('m') {
        return v.parse::<f64>().ok().map(|v| v * 60.0);
    }
    s.parse().ok()
}

fn p(values: &[f64], q: f64) -> f64 {
    percentile(values, q).unwrap_or(f64::NAN)
}

fn pair(values: &[f64], scale: f64, digits: usize) -> String {
    format!(
        "{:.d$} / {:.d$}",
        p(values, 50.0) / scale,
        p(values, 99.0) / scale,
        d = digits
    )
}

fn verdict(met: bool, detail: String) -> String {
    if met {
        format!("met ({detail})")
    } else {
        format!("**NOT met** ({detail})")
    }
}

/// The whole section, starting with its `## ` heading.
pub fn render(
    s: &Settings,
    m: &Machine,
    runs: &[RunResult],
    flush_secs: f64,
    notes: &[String],
) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{SECTION}\n");
    let _ = writeln!(
        o,
        "`pitr archive --flush-interval {fi}` against `pg_receivewal --synchronous`, streaming the \
         same PostgreSQL {pg} side by side on their own physical slots while `pgbench -c {c} -j {j} \
         -T {t} -n` (TPC-B-like, no rate limit: as fast as this machine goes) runs against \
         `pgbench -i -s {sc}`. {mode}",
        fi = s.flush_interval,
        pg = m.pg_version,
        c = s.clients,
        j = s.threads,
        t = s.seconds,
        sc = s.scale,
        mode = if s.together {
            "All archivers ran at once, in one run."
        } else {
            "One run per pitr configuration, each with its own pg_receivewal baseline under the \
             same load (on 2 cores, archivers running at once would measure each other)."
        }
    );
    let _ = writeln!(
        o,
        "\nMachine: {cores} cores ({cpu}), {mem:.0} GiB RAM, Linux {k}; {date}; pitr commit \
         {commit} (release build). PostgreSQL runs with `synchronous_commit=on`, `fsync=off`, \
         `wal_level=logical`, `shared_buffers=32MB`. The machine was shared: other \
         builds ran at the same time (load average and machine-wide CPU busy per run below), so \
         absolute rates are noisy; the comparison within a run is the point.",
        cores = m.cores,
        cpu = m.cpu,
        mem = m.mem_gib,
        k = m.kernel,
        date = m.date,
        commit = m.commit,
    );
    let _ = writeln!(
        o,
        "\nReproduce: `scripts/bench` (= `cargo build --release --bin pitr && \
         PITR_BIN=target/release/pitr cargo run --release -p pitr-integration --bin \
         bench-pg-archive -- --seconds {t} --scale {sc}{mode}`).",
        t = s.seconds,
        sc = s.scale,
        mode = if s.together { " --mode together" } else { "" }
    );

    let _ = writeln!(o, "\n### Runs\n");
    let _ = writeln!(
        o,
        "| Run | pgbench tps | WAL generated | WAL rate | machine CPU busy | load avg (1 min) before → after |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|");
    for r in runs {
        let _ = writeln!(
            o,
            "| {} | {:.0} | {:.0} MiB in {:.0} s | {:.1} MiB/s | {:.0} % | {} → {} |",
            r.run,
            r.tps,
            r.wal_bytes as f64 / MIB,
            r.load_secs,
            r.wal_bytes as f64 / MIB / r.load_secs.max(0.001),
            r.machine_busy * 100.0,
            r.load_before,
            r.load_after
        );
    }

    let _ = writeln!(o, "\n### Results\n");
    let _ = writeln!(
        o,
        "| Run | Archiver | archived during load (MiB/s) | caught up after load | write lag bytes p50 / p99 (KiB) | flush lag bytes p50 / p99 (KiB) | `write_lag` p50 / p99 (s) | `flush_lag` p50 / p99 (s) | RPO measured p50 / p99 (s) | CPU s per GB WAL | peak RSS (MiB) | stored (MiB) | clean exit |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in runs {
        for a in &r.archivers {
            let _ = writeln!(
                o,
                "| {} | {} | {:.1} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {} | {} |",
                r.run,
                a.label,
                a.archived_during_load as f64 / MIB / r.load_secs.max(0.001),
                a.caught_up_after
                    .map(|t| format!("{t:.1} s"))
                    .unwrap_or_else(|| "**no** (120 s)".into()),
                pair(&a.write_lag_bytes, 1024.0, 0),
                pair(&a.flush_lag_bytes, 1024.0, 0),
                pair(&a.write_lag, 1.0, 2),
                pair(&a.flush_lag, 1.0, 2),
                pair(&a.rpo, 1.0, 2),
                a.cpu_per_gb(r.wal_bytes),
                a.peak_rss as f64 / MIB,
                a.stored_bytes
                    .map(|b| format!("{:.0}", b as f64 / MIB))
                    .unwrap_or_else(|| "–".into()),
                if a.clean_exit { "yes" } else { "**no**" },
            );
        }
    }
    let _ = writeln!(
        o,
        "\nLag samples: `pg_stat_replication` every 100 ms during the load (joined to each \
         archiver's slot); bytes = `pg_current_wal_lsn()` − `write_lsn` / `flush_lsn`; the \
         `write_lag` / `flush_lag` columns are the server's own intervals (NULL, i.e. nothing \
         unconfirmed, counts as 0). pitr reports `flush` only for WAL durable in the repository, \
         but the server computes `flush_lag` only for the positions a standby reports: for pitr \
         that is the last byte of each stored segment, so `flush_lag` shows the upload latency \
         and hides the time earlier WAL waited for its segment to be sealed. *RPO measured* \
         closes that hole: for every sample, the time until `flush_lsn` reached the WAL \
         position the server had at that sample (100 ms resolution; commits are flushed \
         locally at once with `synchronous_commit=on`). The RPO goal is judged on it. pitr \
         reports `write` (= received) only together with `flush`, so its write-lag bytes \
         include WAL received but not yet reported; `write_lag` time is the keep-up measure. \
         CPU = utime+stime of the archiver \
         process from the moment it was caught up before the load until it confirmed the last \
         WAL after it, per GB (10^9 bytes) of WAL generated; the S3 server's own CPU is not \
         counted. Peak RSS = `VmHWM`. Stored = bytes on disk (pg_receivewal: raw 16 MiB files; \
         pitr: zstd segments)."
    );

    let _ = writeln!(o, "\n### Goals\n");
    let _ = writeln!(
        o,
        "| Run | pitr configuration | keeps up with pg_receivewal (`write_lag` p99 ≤ 1 s, caught up after load) | CPU per GB ≤ 2× pg_receivewal | peak RSS ≤ 64 MiB | RPO p99 ≤ flush interval + 1 s = {:.1} s |",
        flush_secs + 1.0
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|");
    for r in runs {
        let base = r.archivers.iter().find(|a| !a.is_pitr);
        for a in r.archivers.iter().filter(|a| a.is_pitr) {
            let wl99 = p(&a.write_lag, 99.0);
            let keep = verdict(
                wl99 <= 1.0 && a.caught_up_after.is_some(),
                format!(
                    "p99 {wl99:.2} s; caught up {}",
                    a.caught_up_after
                        .map(|t| format!("{t:.1} s after"))
                        .unwrap_or_else(|| "never".into())
                ),
            );
            let cpu = match base {
                Some(b) => {
                    let (mine, theirs) = (a.cpu_per_gb(r.wal_bytes), b.cpu_per_gb(r.wal_bytes));
                    verdict(
                        mine <= 2.0 * theirs,
                        format!(
                            "{:.1}×: {mine:.1} vs {theirs:.1} s/GB",
                            mine / theirs.max(1e-9)
                        ),
                    )
                }
                None => "no baseline".into(),
            };
            let rss = verdict(
                a.peak_rss as f64 <= RSS_GOAL,
                format!("{:.1} MiB", a.peak_rss as f64 / MIB),
            );
            let rpo99 = p(&a.rpo, 99.0);
            let rpo = verdict(rpo99 <= flush_secs + 1.0, format!("{rpo99:.2} s"));
            let _ = writeln!(
                o,
                "| {} | {} | {keep} | {cpu} | {rss} | {rpo} |",
                r.run, a.label
            );
        }
    }
    if !notes.is_empty() {
        let _ = writeln!(o);
        for n in notes {
            let _ = writeln!(o, "Note: {n}.");
        }
    }
    o
}

/// Writes `section` (starting with [`SECTION`]) into `path`; see
/// [`pitr_integration::benchmarks_md`].
pub fn write_section(path: &Path, section: &str) -> Result<()> {
    pitr_integration::benchmarks_md::write_section(path, SECTION, section)
}

#[cfg(test)]
fn replace_section(old: &str, section: &str) -> String {
    pitr_integration::benchmarks_md::replace_section(old, SECTION, section)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_only_its_own_section_and_keeps_the_analysis() {
        let old = "# Benchmarks\n\n## MySQL\nmysql numbers\n\n## PostgreSQL WAL archiving\nold table\n\n### Analysis\nwhy\n\n## Other\nkeep me\n";
        let new = replace_section(old, "## PostgreSQL WAL archiving\nnew table\n");
        assert_eq!(
            new,
            "# Benchmarks\n\n## MySQL\nmysql numbers\n\n## PostgreSQL WAL archiving\nnew table\n\n### Analysis\nwhy\n\n## Other\nkeep me\n"
        );
        let appended = replace_section(
            "# Benchmarks\n\n## MySQL\nx\n",
            "## PostgreSQL WAL archiving\nt\n",
        );
        assert_eq!(
            appended,
            "# Benchmarks\n\n## MySQL\nx\n\n## PostgreSQL WAL archiving\nt\n"
        );
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_secs("1s"), Some(1.0));
        assert_eq!(parse_secs("250ms"), Some(0.25));
        assert_eq!(parse_secs("2m"), Some(120.0));
        assert_eq!(parse_secs("x"), None);
    }
}
