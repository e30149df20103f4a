//! MariaDB benchmarks of `pitr` against the native tools, on throwaway MariaDB 10.11
//! servers from the harness:
//!
//! * **Replay** ([`replay`]): the same base state plus the same ≥ 500 MB of ROW binlog
//!   applied two ways — `pitr restore --latest` (base backup + server-side apply of the
//!   archived binlog) into one fresh server, and the native pipe
//!   `mariadb-binlog --start-position=… --stop-datetime=… FILES | mariadb` into another
//!   (its base loaded by `pitr restore --to-position <backup coordinates>`, which applies
//!   nothing; its files rebuilt by `pitr binlog-fetch`). Both targets must end with the
//!   source's `CHECKSUM TABLE` values.
//! * **Archive throughput** ([`archive`]): `pitr archive` (local repository) and
//!   `mariadb-binlog --read-from-remote-server --raw --stop-never` side by side while
//!   client processes write for N seconds: bytes/s received, CPU seconds per GB, peak RSS
//!   and how far behind each is when the load stops.
//!
//! The result is printed as markdown and written into the "## MySQL/MariaDB" section of
//! BENCHMARKS.md. This is a program, not a test: nothing asserts on timings, but a
//! checksum mismatch is an error.

mod archive;
mod replay;
mod report;
mod util;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use pitr_integration::{mysql, Flavor, MySqlServer};

use report::{Machine, Settings};

const USAGE: &str = "usage: bench-mysql [--replay-mb N] [--seconds N] [--clients N] \
[--only replay|archive] [--no-variants] [--no-write] [--out FILE] [--more-parallel N,N...]";

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn parse_args() -> Result<Settings> {
    let mut s = Settings {
        replay_mb: 520,
        seconds: 60,
        clients: 3,
        replay: true,
        archive: true,
        variants: true,
        write: true,
        out: pitr_integration::workspace_dir().join("BENCHMARKS.md"),
        more_parallel: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .with_context(|| format!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--replay-mb" => s.replay_mb = val()?.parse().context("--replay-mb")?,
            "--seconds" => s.seconds = val()?.parse().context("--seconds")?,
            "--clients" => s.clients = val()?.parse().context("--clients")?,
            "--only" => match val()?.as_str() {
                "replay" => s.archive = false,
                "archive" => s.replay = false,
                o => bail!("--only {o:?}: expected replay or archive\n{USAGE}"),
            },
            "--no-write" => s.write = false,
            "--no-variants" => s.variants = false,
            "--out" => s.out = PathBuf::from(val()?),
            "--more-parallel" => {
                s.more_parallel = val()?
                    .split(',')
                    .map(|n| n.trim().parse::<u16>().context("--more-parallel"))
                    .collect::<Result<_>>()?
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if s.clients == 0 || s.seconds == 0 {
        bail!("--clients and --seconds must be positive\n{USAGE}");
    }
    Ok(s)
}

fn run() -> Result<()> {
    let settings = parse_args()?;
    mysql::available(Flavor::MariaDb).map_err(anyhow::Error::msg)?;
    let work = tempfile::Builder::new()
        .prefix("pitr-bench-mysql-")
        .tempdir()?;
    let probe = MySqlServer::start(Flavor::MariaDb)?;
    let machine = Machine::collect(&probe);
    drop(probe);
    let replay = if settings.replay {
        Some(replay::run(&settings, work.path())?)
    } else {
        None
    };
    let archive = if settings.archive {
        Some(archive::run(&settings, work.path())?)
    } else {
        None
    };
    let md = report::render(&settings, &machine, replay.as_ref(), archive.as_ref());
    println!("{md}");
    if settings.write {
        let mut keep = Vec::new();
        if replay.is_none() {
            keep.push("### Binlog replay");
        }
        if archive.is_none() {
            keep.push("### Archive throughput");
        }
        report::write_section(&settings.out, &md, &keep)?;
        eprintln!("wrote the section into {}", settings.out.display());
    }
    Ok(())
}
