//! PostgreSQL restore benchmark: WAL replay fed by `pitr wal-fetch` from S3 against
//! `cp` from a local directory.
//!
//! Starts a throwaway PostgreSQL 15 and two archivers on their own physical slots:
//! `pitr archive` into S3 (moto) and `pg_receivewal` into a local directory (the same
//! WAL bytes). Takes one base backup with `pitr backup`, then generates at least
//! `--wal-mib` of WAL with `pgbench -i -s SCALE` (plus `pgbench -T` runs until enough),
//! switches WAL and waits until both archivers hold all of it.
//!
//! `pitr restore --latest` unpacks the backup once; every variant recovers its own copy
//! of that directory, so all replay the same WAL from the same backup:
//!
//! * `cp`: `restore_command = 'cp DIR/%f %p'` from the pg_receivewal directory (baseline);
//! * `pitr, prefetch K`: the restore_command `pitr restore` writes (wal-fetch from S3,
//!   prefetching the next K files in a background worker);
//! * `pitr, no prefetch`: the same with `--prefetch 0` (one file at a time).
//!
//! Measured: wall time from `pg_ctl start` to "database system is ready to accept
//! connections" (recovery, end-of-recovery checkpoint and promotion), PostgreSQL's own
//! redo time (`redo done at ... elapsed: N s`) and the WAL replayed (redo start..done
//! LSN). The result is printed as markdown and written into the "PostgreSQL restore"
//! section of BENCHMARKS.md. This is a program, not a test: nothing asserts on timings.

mod report;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pitr_integration::procstat::Bg;
use pitr_integration::{pg, pitr_bin, s3, PgServer, PgVersion, S3Impl, S3Server};

use report::{Machine, Recovery, Settings};

const USAGE: &str = "usage: bench-pg-restore [--scale N] [--wal-mib N] [--prefetch K] \
[--repeat N] [--no-write] [--out FILE]";

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn parse_args() -> Result<Settings> {
    let mut s = Settings {
        scale: 80,
        wal_mib: 1100,
        prefetch: 8,
        repeat: 1,
        write: true,
        out: pitr_integration::workspace_dir().join("BENCHMARKS.md"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .with_context(|| format!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--scale" => s.scale = val()?.parse().context("--scale")?,
            "--wal-mib" => s.wal_mib = val()?.parse().context("--wal-mib")?,
            "--prefetch" => s.prefetch = val()?.parse().context("--prefetch")?,
            "--repeat" => s.repeat = val()?.parse().context("--repeat")?,
            "--no-write" => s.write = false,
            "--out" => s.out = PathBuf::from(val()?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(s)
}

fn pgbench(pg: &PgServer, args: &[&str]) -> Result<()> {
    let out = Command::new(pg.bin("pgbench"))
        .args(["-h", "127.0.0.1", "-p", &pg.port().to_string(), "-U"])
        .arg("postgres")
        .args(args)
        .arg("postgres")
        .output()
        .context("running pgbench")?;
    if !out.status.success() {
        bail!(
            "pgbench {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn lsn(pg: &PgServer, expr: &str) -> Result<u64> {
    pg.psql(&format!("SELECT pg_wal_lsn_diff({expr}, '0/0')::bigint"))?
        .trim()
        .parse()
        .with_context(|| format!("reading {expr}"))
}

fn run_ok(cmd: &mut Command) -> Result<String> {
    let o = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !o.status.success() {
        bail!(
            "{:?} failed: {}{}",
            cmd.get_program(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn as_postgres(program: &Path) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"])
        .arg(program)
        .current_dir("/");
    c
}

fn run() -> Result<()> {
    let settings = parse_args()?;
    pg::available(PgVersion::V15).map_err(anyhow::Error::msg)?;
    s3::available(S3Impl::Moto).map_err(anyhow::Error::msg)?;
    let pitr = pitr_bin();
    let work = tempfile::Builder::new()
        .prefix("pitr-bench-restore-")
        .tempdir()?;
    // PostgreSQL runs as postgres and must read the WAL directory and own the restores.
    run_ok(
        Command::new("chown")
            .arg("postgres:postgres")
            .arg(work.path()),
    )?;

    eprintln!("starting PostgreSQL 15 and moto ...");
    let pg = PgServer::start(PgVersion::V15)?;
    pg.psql("ALTER SYSTEM SET max_wal_size = '4GB'")?;
    pg.psql("SELECT pg_reload_conf()")?;
    let machine = Machine::collect(&pg);
    let s3 = S3Server::start(S3Impl::Moto)?;
    let repo = s3.repo_url("bench-restore");

    let wal_dir = work.path().join("wal");
    std::fs::create_dir_all(&wal_dir)?;
    pg.psql("SELECT pg_create_physical_replication_slot('bench_rw', true)")?;
    let mut receivewal = Bg::spawn(
        Command::new(pg.bin("pg_receivewal"))
            .args(["-d", &pg.url(), "-D"])
            .arg(&wal_dir)
            .args(["--slot", "bench_rw", "--no-password", "-n"]),
        work.path().join("pg_receivewal.log"),
    )?;
    let mut archiver = Bg::spawn(
        Command::new(&pitr)
            .args(["archive", &pg.url(), "--repo", &repo])
            .args(["--name", "bench", "--slot", "bench_pitr"])
            .envs(s3.env()),
        work.path().join("pitr-archive.log"),
    )?;
    wait_archived(&pg, &mut [&mut receivewal, &mut archiver])?;

    eprintln!("base backup ...");
    run_ok(
        Command::new(&pitr)
            .args(["backup", &pg.url(), "--repo", &repo, "--name", "bench"])
            .envs(s3.env()),
    )?;
    let lsn0 = lsn(&pg, "pg_current_wal_lsn()")?;
    eprintln!("pgbench -i -s {} ...", settings.scale);
    let t0 = Instant::now();
    pgbench(&pg, &["-i", "-q", "-s", &settings.scale.to_string()])?;
    while lsn(&pg, "pg_current_wal_lsn()")? - lsn0 < settings.wal_mib << 20 {
        pgbench(&pg, &["-c", "4", "-j", "2", "-T", "15", "-n"])?;
    }
    let generated = lsn(&pg, "pg_current_wal_lsn()")? - lsn0;
    eprintln!(
        "  {:.0} MiB of WAL in {:.0} s; waiting for the archivers ...",
        generated as f64 / 1048576.0,
        t0.elapsed().as_secs_f64()
    );
    wait_archived(&pg, &mut [&mut receivewal, &mut archiver])?;
    archiver.stop("TERM")?;
    receivewal.stop("INT")?;
    // pg_receivewal creates its files with mode 0600: let postgres read them.
    run_ok(
        Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&wal_dir),
    )?;

    eprintln!("unpacking the backup ...");
    let base = work.path().join("base");
    run_ok(
        Command::new(&pitr)
            .args(["restore", "--repo", &repo, "--name", "bench", "--latest"])
            .arg("--target-dir")
            .arg(&base)
            .envs(s3.env()),
    )?;
    let pitr_cmd = |extra: &str| {
        format!(
            "{} wal-fetch --partial{extra} --repo {repo} --name bench %f %p",
            pitr.display()
        )
    };
    let mut variants: Vec<(String, Option<String>)> = vec![
        (
            "cp from a local directory".into(),
            Some(format!("cp {}/%f %p", wal_dir.display())),
        ),
        (
            format!(
                "pitr wal-fetch from S3 (moto), prefetch {}",
                settings.prefetch
            ),
            Some(pitr_cmd(&format!(" --prefetch {}", settings.prefetch))),
        ),
        (
            "pitr wal-fetch from S3 (moto), no prefetch".into(),
            Some(pitr_cmd(" --prefetch 0")),
        ),
    ];
    if settings.prefetch == 8 {
        // The restore_command exactly as `pitr restore` writes it (default prefetch).
        variants[1].1 = None;
    }
    let mut results = Vec::new();
    for round in 0..settings.repeat {
        for (label, cmd) in &variants {
            eprintln!("recovery: {label} ...");
            let dir = work
                .path()
                .join(format!("restore-{}-{round}", results.len()));
            run_ok(Command::new("cp").arg("-a").arg(&base).arg(&dir))?;
            if let Some(cmd) = cmd {
                let line = format!("restore_command = '{}'\n", cmd.replace('\'', "''"));
                append(&dir.join("postgresql.auto.conf"), &line)?;
            }
            let r = recover(&pg, &dir, label, &s3)?;
            eprintln!(
                "  {:.1} s, {:.0} MiB replayed, redo {:.1} s",
                r.wall_secs,
                r.replayed as f64 / 1048576.0,
                r.redo_secs.unwrap_or(0.0)
            );
            let _ = std::fs::remove_dir_all(&dir);
            results.push(r);
        }
    }
    let md = report::render(&settings, &machine, generated, &results);
    println!("{md}");
    if settings.write {
        report::write_section(&settings.out, &md)?;
        eprintln!("wrote the section into {}", settings.out.display());
    }
    Ok(())
}

fn append(path: &Path, text: &str) -> Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// Switches WAL and waits until every archiver's slot confirmed the switch point.
fn wait_archived(pg: &PgServer, procs: &mut [&mut Bg]) -> Result<()> {
    pg.psql("SELECT pg_switch_wal()")?;
    let target = lsn(pg, "pg_current_wal_lsn()")?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        for p in procs.iter_mut() {
            p.ensure_running()?;
        }
        let behind = pg.psql(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'bench%' \
             AND (restart_lsn IS NULL OR pg_wal_lsn_diff(restart_lsn, '0/0') < {target})"
        ))?;
        let slots =
            pg.psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'bench%'")?;
        if behind.trim() == "0" && slots.trim() == "2" {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the archivers did not catch up within 600 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs recovery in `dir` to the end of the WAL and times it.
fn recover(pg: &PgServer, dir: &Path, label: &str, s3: &S3Server) -> Result<Recovery> {
    let log = dir.join("recovery.log");
    let port = pitr_integration::util::free_port()?;
    let opts = format!(
        "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
         -c archive_mode=off -c log_min_messages=log -c shared_buffers=128MB \
         -c logging_collector=off",
        dir.display()
    );
    let t0 = Instant::now();
    run_ok(
        as_postgres(&pg.bin("pg_ctl"))
            .arg("-D")
            .arg(dir)
            .arg("-l")
            .arg(&log)
            .args(["-o", &opts, "-W", "start"])
            .envs(s3.env()),
    )?;
    let deadline = t0 + Duration::from_secs(3600);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("database system is ready to accept connections") {
            break text;
        }
        if let Some(l) = text
            .lines()
            .find(|l| l.contains("FATAL:") || l.contains("PANIC:"))
        {
            bail!("recovery ({label}) failed: {l}");
        }
        if Instant::now() > deadline {
            bail!("recovery ({label}) did not finish; see {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let wall_secs = t0.elapsed().as_secs_f64();
    let spool_left = dir.join("pg_wal/.pitr-prefetch").exists();
    run_ok(
        as_postgres(&pg.bin("pg_ctl"))
            .arg("-D")
            .arg(dir)
            .args(["-m", "fast", "-w", "stop"]),
    )?;
    let lsn_after = |marker: &str| -> Option<u64> {
        let rest = text
            .lines()
            .find_map(|l| l.split_once(marker).map(|(_, r)| r))?;
        let v = rest.split_whitespace().next()?.trim_end_matches(',');
        let (hi, lo) = v.split_once('/')?;
        Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
    };
    let start = lsn_after("redo starts at ").context("no 'redo starts at' in the log")?;
    let done = lsn_after("redo done at ").context("no 'redo done at' in the log")?;
    let redo_secs = text
        .lines()
        .find(|l| l.contains("redo done at "))
        .and_then(|l| l.split_once("elapsed: "))
        .and_then(|(_, r)| r.trim().trim_end_matches(" s").parse().ok());
    Ok(Recovery {
        label: label.to_string(),
        wall_secs,
        redo_secs,
        replayed: done.saturating_sub(start),
        spool_left,
    })
}
