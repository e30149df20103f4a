//! The MariaDB benchmarks' results as markdown, and the "## MySQL/MariaDB" section of
//! BENCHMARKS.md (created, or replaced in place; every other section is kept byte for
//! byte; a hand-written `### Analysis` subsection in it is carried over).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Result;
use pitr_integration::MySqlServer;

use crate::archive::ArchiveResult;
use crate::replay::{NativeRun, ReplayResult};

pub const SECTION: &str = "## MySQL/MariaDB";
const MB: f64 = 1e6;
const MIB: f64 = 1024.0 * 1024.0;

/// Command-line settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub replay_mb: u64,
    pub seconds: u64,
    pub clients: usize,
    pub replay: bool,
    pub archive: bool,
    /// Also run the reference variants of the native pipe.
    pub variants: bool,
    pub write: bool,
    pub out: PathBuf,
    /// Further `pitr restore --parallel` values to run (beside 4 and 1).
    pub more_parallel: Vec<u16>,
}

/// Facts about where the numbers were taken.
#[derive(Debug, Clone)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub mem_gib: f64,
    pub kernel: String,
    pub date: String,
    pub server: String,
    pub load: String,
}

impl Machine {
    pub fn collect(s: &MySqlServer) -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let date = std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "?".into());
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
            date,
            server: s.sql("SELECT VERSION()").unwrap_or_else(|_| "?".into()),
            load: fs::read_to_string("/proc/loadavg")
                .ok()
                .and_then(|s| s.split_whitespace().next().map(str::to_string))
                .unwrap_or_else(|| "?".into()),
        }
    }
}

/// The markdown section.
pub fn render(
    s: &Settings,
    m: &Machine,
    replay: Option<&ReplayResult>,
    archive: Option<&ArchiveResult>,
) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{SECTION}\n");
    let _ = writeln!(
        o,
        "MariaDB {} throwaway servers from the test harness (ROW binlog, CRC32 checksums, \
         `innodb_buffer_pool_size=64M`, otherwise defaults: `innodb_flush_log_at_trx_commit=1`, \
         `sync_binlog=0`). 1 MB = 10^6 bytes.\n",
        m.server
    );
    let _ = writeln!(
        o,
        "Reproduce:\n\n```\nscripts/bench mysql [--replay-mb {}] [--seconds {}] [--clients {}] [--only replay|archive] [--no-variants]\n```\n",
        s.replay_mb, s.seconds, s.clients
    );
    let _ = writeln!(
        o,
        "Machine: {} cores ({}), {:.1} GiB RAM, Linux {}; load average {} at the start \
         (shared: other builds ran at the same time); {}; pitr release build.\n",
        m.cores, m.cpu, m.mem_gib, m.kernel, m.load, m.date
    );
    if let Some(r) = replay {
        render_replay(&mut o, r);
    }
    if let Some(a) = archive {
        render_archive(&mut o, a);
    }
    o
}

fn render_replay(o: &mut String, r: &ReplayResult) {
    let mb = r.binlog_bytes as f64 / MB;
    let _ = writeln!(
        o,
        "### Binlog replay: pitr restore vs mariadb-binlog | mariadb\n"
    );
    let _ = writeln!(
        o,
        "Source: 50 000-row `items`, 1 000-row `accounts`, 20 000-row `events`; base backup \
         with `pitr backup` at `{}` while `pitr archive` ran; then {} rounds of the \
         `bench.gen` procedure (per round: a 1 000-row INSERT, a 1 000-row UPDATE, 20 small \
         two-statement transactions, a 1 000-row DELETE) wrote **{mb:.0} MB of binlog after \
         the backup** in {} file(s) ({:.0} s). Stop time for the native pipe T = {} UTC, a \
         whole second after the last commit (pitr refuses a time after the last archived \
         commit, so it restores `--latest`: the same transactions).\n",
        r.backup_at, r.rounds, r.files, r.generate_secs, r.target_time
    );
    let _ = writeln!(
        o,
        "- A: `pitr restore --latest --target A` — loads the backup, then applies the archived \
         binlog server-side over {} connections (the default `--parallel 4`; load and apply \
         split at its `loaded N rows` log line; {} transactions, {} statements applied, {} \
         of the transactions ran alone, {} re-runs after a lock conflict). A1: the same with \
         `--parallel 1` (one transaction after another, into a fresh server).\n\
         - B (native): the same base loaded with `pitr restore --to-position {}` (the backup \
         coordinates: nothing to apply), the binlog files rebuilt with `pitr binlog-fetch`, \
         then `mariadb-binlog --start-position={} --stop-datetime=T FILES | mariadb` over \
         TCP as the same user.\n\
         - Both targets ended with the source's `CHECKSUM TABLE` values: `{}`.\n",
        r.pitr.connections,
        r.pitr.transactions,
        r.pitr.statements,
        r.pitr.alone,
        r.pitr.retries,
        r.backup_at,
        r.backup_at.rsplit(':').next().unwrap_or("?"),
        r.checksums
    );
    let _ = writeln!(
        o,
        "| method | base load s | binlog fetch s | log apply s | total s | apply MB/s of binlog | client CPU s during apply | target server CPU s during apply | target binlog MB at end |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let p = &r.pitr;
    let n = &r.native;
    for (label, p) in [
        ("pitr restore --latest (A, 4 connections)", p),
        ("pitr restore --latest --parallel 1 (A1)", &r.pitr_serial),
    ]
    .into_iter()
    .map(|(l, p)| (l.to_string(), p))
    .chain(
        r.pitr_more
            .iter()
            .map(|(n, p)| (format!("pitr restore --latest --parallel {n}"), p)),
    )
    .chain(r.pitr_no_binlog.iter().map(|p| {
        (
            "pitr restore --latest --skip-target-binlog (target writes no binlog)".to_string(),
            p,
        )
    })) {
        let _ = writeln!(
            o,
            "| {label} | {:.1} | (in apply) | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} |",
            p.load_secs,
            p.apply_secs,
            p.total_secs,
            mb / p.apply_secs.max(1e-9),
            p.client_cpu,
            p.server_cpu,
            p.target_binlog as f64 / MB
        );
    }
    let native_total = n.load_secs + n.fetch_secs + n.pipe_secs;
    for (label, v) in std::iter::once(("mariadb-binlog \\| mariadb", n))
        .chain(r.variants.iter().map(|(l, v)| (l.as_str(), v)))
    {
        native_row(o, label, v, mb);
    }

    if !r.variants.is_empty() {
        let _ = writeln!(
            o,
            "\nThe last rows are reference variants of the native pipe (same base, same \
             files, fresh targets), showing what the target's own binlog, its per-commit \
             redo-log flush and its statement annotations of row events (by default the \
             server logs each `BINLOG` statement's base64 text beside the row events it \
             applies) cost; client CPU = mariadb-binlog + mariadb."
        );
    }
    let _ = writeln!(
        o,
        "\nSpeed-up of pitr over the native tools (goal ≥ 2×): replay of the archived binlog \
         **{:.2}×** (pitr's apply, which reads the segments from the repository, vs \
         `binlog-fetch` + pipe); log apply alone **{:.2}×** (pitr's apply vs the pipe; \
         {:.2}× with `--parallel 1`); whole restore {:.2}× (pitr total vs load + fetch + \
         pipe). Anchor: the single-threaded mysqlbinlog pipe has been reported at 1–3 min \
         per GB; here it ran at {:.0} s per GB.\n",
        (n.fetch_secs + n.pipe_secs) / p.apply_secs.max(1e-9),
        n.pipe_secs / p.apply_secs.max(1e-9),
        n.pipe_secs / r.pitr_serial.apply_secs.max(1e-9),
        native_total / p.total_secs.max(1e-9),
        n.pipe_secs / (mb / 1000.0).max(1e-9)
    );
    let no_binlog_pipe = r
        .variants
        .iter()
        .find(|(l, _)| l.contains("--disable-log-bin"))
        .map(|(_, v)| v);
    if let (Some(q), Some(v)) = (&r.pitr_no_binlog, no_binlog_pipe) {
        let _ = writeln!(
            o,
            "Without the target's binlog on both sides (`pitr restore --skip-target-binlog` \
             vs `mariadb-binlog --disable-log-bin | mariadb`): **{:.2}×** (apply phase).\n",
            v.pipe_secs / q.apply_secs.max(1e-9)
        );
    }
}

fn native_row(o: &mut String, label: &str, n: &NativeRun, mb: f64) {
    let _ = writeln!(
        o,
        "| {label} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} + {:.1} | {:.1} | {:.0} |",
        n.load_secs,
        n.fetch_secs,
        n.pipe_secs,
        n.load_secs + n.fetch_secs + n.pipe_secs,
        mb / n.pipe_secs.max(1e-9),
        n.binlog_cpu,
        n.client_cpu,
        n.server_cpu,
        n.target_binlog as f64 / MB
    );
}

fn render_archive(o: &mut String, a: &ArchiveResult) {
    let _ = writeln!(
        o,
        "### Archive throughput: pitr archive vs mariadb-binlog --raw\n"
    );
    let _ = writeln!(
        o,
        "Both stream the same server side by side while {} client processes run \
         `bench.churn` for {:.0} s (autocommit 100-row INSERT ... SELECT, and 100-row \
         DELETEs of each client's oldest rows): {:.0} MB of binlog, {:.1} MB/s. Received = \
         bytes each held at the load's end minus at its start, per second of load (pitr: \
         archived end offsets from `pitr binlog-fetch --list`, i.e. durable in the \
         repository, flush interval 1 s; mariadb-binlog: size of the files it wrote, not \
         fsynced). Behind = server's `SHOW BINARY LOGS` total minus that, when the load \
         stopped (pitr's was read {:.2} s later). CPU = utime + stime (`/proc/PID/stat`) from the load's start \
         until caught up, per GB of binlog written. Peak RSS = `VmHWM`.\n",
        a.clients,
        a.load_secs,
        a.generated as f64 / MB,
        a.generated as f64 / MB / a.load_secs.max(1e-9),
        a.list_secs
    );
    let _ = writeln!(
        o,
        "| archiver | received MB/s | behind at load end (bytes) | caught up after (s) | CPU s | CPU s per GB | peak RSS MiB | stored MB | clean exit |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in &a.runs {
        let _ = writeln!(
            o,
            "| {} | {:.1} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {} |",
            r.label,
            r.received_per_sec / MB,
            r.behind_at_end,
            r.caught_up_secs,
            r.cpu_secs,
            r.cpu_per_gb,
            r.peak_rss as f64 / MIB,
            r.stored as f64 / MB,
            match (r.pitr, r.clean_exit) {
                (false, _) => "– (killed: no SIGTERM handler)",
                (true, true) => "yes",
                (true, false) => "no",
            }
        );
    }
    let _ = writeln!(o);
}

/// Writes `section` (starting with [`SECTION`]) into `path`; see
/// [`pitr_integration::benchmarks_md`]. The subsections whose headings
/// start with one of `keep` (the parts not run this time) are carried over
/// from the file.
pub fn write_section(path: &Path, section: &str, keep: &[&str]) -> Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let section = with_kept(&old, section, keep);
    pitr_integration::benchmarks_md::write_section(path, SECTION, &section)
}

/// `section` followed by the subsections of the old [`SECTION`] in `old`
/// whose headings start with one of `keep`.
fn with_kept(old: &str, section: &str, keep: &[&str]) -> String {
    let mut out = section.trim_end().to_string();
    let Some(start) = old.find(&format!("{SECTION}\n")) else {
        return out + "\n";
    };
    let body = &old[start + SECTION.len()..];
    let body = &body[..body.find("\n## ").map_or(body.len(), |e| e + 1)];
    for k in keep {
        if let Some(i) = body.find(&format!("\n{k}")) {
            let sub = &body[i + 1..];
            let end = sub[1..].find("\n### ").map_or(sub.len(), |e| e + 2);
            out.push_str("\n\n");
            out.push_str(sub[..end].trim_end());
        }
    }
    out + "\n"
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
        let old =
            "# Benchmarks\n\n## A\na\n\n## MySQL/MariaDB\nold\n\n### Analysis\nmine\n\n## B\nb\n";
        let new = replace_section(old, "## MySQL/MariaDB\n\nnew\n");
        assert_eq!(
            new,
            "# Benchmarks\n\n## A\na\n\n## MySQL/MariaDB\n\nnew\n\n### Analysis\nmine\n\n## B\nb\n"
        );
        let appended = replace_section("# Benchmarks\n\n## A\na\n", "## MySQL/MariaDB\nx\n");
        assert!(appended.ends_with("## A\na\n\n## MySQL/MariaDB\nx\n"));
    }

    #[test]
    fn parts_not_run_are_carried_over() {
        let old = "# B\n\n## MySQL/MariaDB\nintro\n\n### Binlog replay: x\nold replay\n\n### Archive throughput: y\nold archive\n\n### Analysis\nmine\n\n## Next\nn\n";
        let new = with_kept(
            old,
            "## MySQL/MariaDB\nnew intro\n\n### Binlog replay: x\nnew replay\n",
            &["### Archive throughput"],
        );
        assert_eq!(
            new,
            "## MySQL/MariaDB\nnew intro\n\n### Binlog replay: x\nnew replay\n\n### Archive throughput: y\nold archive\n"
        );
        // Nothing to keep, or no old section: unchanged.
        assert_eq!(
            with_kept(old, "## MySQL/MariaDB\nz\n", &[]),
            "## MySQL/MariaDB\nz\n"
        );
        assert_eq!(
            with_kept("# B\n", "## MySQL/MariaDB\nz\n", &["### Archive"]),
            "## MySQL/MariaDB\nz\n"
        );
    }
}
