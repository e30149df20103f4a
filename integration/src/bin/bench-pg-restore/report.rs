//! The restore benchmark's results as markdown, and the "## PostgreSQL restore" section
//! of BENCHMARKS.md (created, or replaced in place; every other section is kept byte for
//! byte; a hand-written `### Analysis` subsection in it is carried over).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;
use pitr_integration::PgServer;

pub const SECTION: &str = "## PostgreSQL restore";
const MB: f64 = 1e6;
const MIB: f64 = 1024.0 * 1024.0;

/// Command-line settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub scale: u32,
    pub wal_mib: u64,
    pub prefetch: usize,
    pub repeat: usize,
    pub write: bool,
    pub out: PathBuf,
}

/// One timed recovery.
#[derive(Debug, Clone)]
pub struct Recovery {
    pub label: String,
    /// `pg_ctl start` until ready to accept connections.
    pub wall_secs: f64,
    /// PostgreSQL's own `redo done ... elapsed`.
    pub redo_secs: Option<f64>,
    /// Bytes of WAL from redo start to redo done.
    pub replayed: u64,
    /// Whether a prefetch spool was still there when recovery had finished.
    pub spool_left: bool,
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
    pub load: String,
}

fn cmd(prog: &str, args: &[&str]) -> String {
    Command::new(prog)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into())
}

impl Machine {
    pub fn collect(pg: &PgServer) -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
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
                .map(|kb| kb / MIB)
                .unwrap_or(0.0),
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "?".into()),
            date: cmd("date", &["-u", "+%Y-%m-%d"]),
            pg_version: pg
                .psql("SHOW server_version")
                .unwrap_or_else(|_| "?".into()),
            load: fs::read_to_string("/proc/loadavg")
                .ok()
                .and_then(|s| s.split_whitespace().next().map(str::to_string))
                .unwrap_or_else(|| "?".into()),
        }
    }
}

/// The markdown section.
pub fn render(s: &Settings, m: &Machine, generated: u64, runs: &[Recovery]) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{SECTION}\n");
    let _ = writeln!(
        o,
        "Recovery of the same base backup to the end of the same WAL, fed by \
         `restore_command` (1 MB = 10^6 bytes). Baseline: `cp` from a local directory \
         that `pg_receivewal` filled; pitr: `wal-fetch` rebuilding each 16 MiB WAL file \
         from zstd segments in S3 (moto on loopback), with and without prefetch. \
         Time = `pg_ctl start` until the server accepts connections (replay, \
         end-of-recovery checkpoint, promotion); redo = PostgreSQL's own `redo done ... \
         elapsed`. Goal: pitr with prefetch within 1.1x of `cp`. Anchor: a serial WAL \
         fetch from S3 has been reported at ~24 MB/s for WAL-G.\n"
    );
    let _ = writeln!(o, "Reproduce:\n\n```\nscripts/bench pg-restore [--scale {}] [--wal-mib {}] [--prefetch {}] [--repeat N]\n```\n", s.scale, s.wal_mib, s.prefetch);
    let _ = writeln!(
        o,
        "Machine: {} cores ({}), {:.1} GiB RAM, Linux {}, PostgreSQL {}; load average {} \
         at the start; {}. WAL: `pgbench -i -s {}` after the backup, {:.0} MiB generated.\n",
        m.cores,
        m.cpu,
        m.mem_gib,
        m.kernel,
        m.pg_version,
        m.load,
        m.date,
        s.scale,
        generated as f64 / MIB
    );
    let _ = writeln!(
        o,
        "| restore_command | time s | redo range MiB | MB/s | redo s | vs cp |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|");
    let base = runs.first().map(|r| r.wall_secs).unwrap_or(0.0);
    // MB/s over the WAL every variant replays: the baseline's redo range (pitr's
    // zero-padded end of the archive adds a few records past the last switch).
    let wal = runs.first().map(|r| r.replayed).unwrap_or(0) as f64;
    for r in runs {
        let _ = writeln!(
            o,
            "| {} | {:.1} | {:.0} | {:.1} | {} | {:.2} |",
            r.label,
            r.wall_secs,
            r.replayed as f64 / MIB,
            wal / MB / r.wall_secs.max(1e-9),
            r.redo_secs
                .map(|v| format!("{v:.1}"))
                .unwrap_or_else(|| "?".into()),
            r.wall_secs / base.max(1e-9)
        );
    }
    let left: Vec<&str> = runs
        .iter()
        .filter(|r| r.spool_left)
        .map(|r| r.label.as_str())
        .collect();
    if !left.is_empty() {
        let _ = writeln!(
            o,
            "\nThe prefetch spool was still present after recovery for: {}.",
            left.join(", ")
        );
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
    fn section_is_replaced_in_place_keeping_the_rest() {
        let old = "# Benchmarks\n\n## A\na\n\n## PostgreSQL restore\nold\n\n### Analysis\nmine\n\n## B\nb\n";
        let new = replace_section(old, "## PostgreSQL restore\n\nnew\n");
        assert_eq!(
            new,
            "# Benchmarks\n\n## A\na\n\n## PostgreSQL restore\n\nnew\n\n### Analysis\nmine\n\n## B\nb\n"
        );
        let appended = replace_section("# Benchmarks\n\n## A\na\n", "## PostgreSQL restore\nx\n");
        assert!(appended.ends_with("## A\na\n\n## PostgreSQL restore\nx\n"));
    }
}
