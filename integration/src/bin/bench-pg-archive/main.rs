//! PostgreSQL WAL archiving benchmark: `pitr archive` against `pg_receivewal`.
//!
//! Starts a throwaway PostgreSQL 15, loads `pgbench -i -s SCALE`, then for each run drives
//! `pgbench -c 4 -j 2 -T SECONDS -n` (no rate limit: as fast as the machine goes) while
//! the run's archivers stream the same server side by side, each on its own physical
//! replication slot:
//!
//! * `pg_receivewal --synchronous` into a local directory: the baseline. `--synchronous`
//!   fsyncs every received chunk and reports it as flushed at once, which is what
//!   `flush` means for pitr too (reported only once durable in the repository);
//! * `pitr archive` into a local-directory repository, plain and encrypted (`pitr key
//!   init`: every segment sealed with AES-256-GCM);
//! * `pitr archive` into S3 (moto, and s3s-fs when installed).
//!
//! Default (`--mode separate`): one run per pitr configuration, each with its own
//! `pg_receivewal` baseline measured under the same load. `--mode together`: one run with
//! every archiver at once.
//!
//! Measured per archiver (see `report.rs` for the table): archived WAL bytes/s against
//! WAL generated (`pg_current_wal_lsn()` delta), catch-up time after the load stops,
//! replication lag sampled from `pg_stat_replication` every 100 ms (bytes behind in
//! `write_lsn` / `flush_lsn`, and the server's `write_lag` / `flush_lag` times: p50/p99),
//! CPU seconds per GB of WAL (utime+stime from `/proc/PID/stat`), peak RSS (`VmHWM`).
//! `flush_lag` is the RPO: pitr reports `flush` only for WAL stored in the repository.
//!
//! The result is printed as markdown and written into the "PostgreSQL WAL archiving"
//! section of BENCHMARKS.md (other sections are left alone). This is a program, not a
//! test: nothing here asserts on timings. Env `PITR_BENCH_SAMPLES=DIR` also writes every raw
//! sample as CSV into DIR.

mod procs;
mod report;
mod sampler;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pitr_integration::{pg, pitr_bin, s3, PgServer, PgVersion, S3Impl, S3Server};

use procs::{Archiver, Kind};
use report::{ArchiverResult, Machine, RunResult, Settings};
use sampler::{replication_rows, Psql, Sampler};

const USAGE: &str =
    "usage: bench-pg-archive [--seconds N] [--scale N] [--clients N] [--threads N] \
[--flush-interval 1s] [--mode separate|together] [--s3 moto,s3s-fs] [--no-write] [--out FILE]";

fn main() {
    match run() {
        Ok(()) => {}
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

fn parse_args() -> Result<Settings> {
    let mut s = Settings {
        seconds: 60,
        scale: 20,
        clients: 4,
        threads: 2,
        flush_interval: "1s".into(),
        together: false,
        s3: vec![S3Impl::Moto, S3Impl::S3sFs],
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
            "--seconds" => s.seconds = val()?.parse().context("--seconds")?,
            "--scale" => s.scale = val()?.parse().context("--scale")?,
            "--clients" => s.clients = val()?.parse().context("--clients")?,
            "--threads" => s.threads = val()?.parse().context("--threads")?,
            "--flush-interval" => s.flush_interval = val()?,
            "--mode" => {
                s.together = match val()?.as_str() {
                    "together" => true,
                    "separate" => false,
                    other => bail!("unknown mode {other:?}\n{USAGE}"),
                }
            }
            "--s3" => {
                s.s3 = val()?
                    .split(',')
                    .filter(|x| !x.is_empty())
                    .map(|x| match x {
                        "moto" => Ok(S3Impl::Moto),
                        "s3s-fs" => Ok(S3Impl::S3sFs),
                        other => bail!("unknown S3 server {other:?}"),
                    })
                    .collect::<Result<_>>()?
            }
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

fn run() -> Result<()> {
    let settings = parse_args()?;
    pg::available(PgVersion::V15).map_err(anyhow::Error::msg)?;
    let pitr = pitr_bin();
    let flush_secs = report::parse_secs(&settings.flush_interval)
        .with_context(|| format!("--flush-interval {:?}", settings.flush_interval))?;
    let mut notes = Vec::new();
    let mut s3_impls = Vec::new();
    for i in &settings.s3 {
        match s3::available(*i) {
            Ok(()) => s3_impls.push(*i),
            Err(reason) => notes.push(format!("{} not measured: {reason}", s3_name(*i))),
        }
    }

    eprintln!("starting PostgreSQL 15 ...");
    let pg = PgServer::start(PgVersion::V15)?;
    // The harness runs with synchronous_commit=off; commit must mean "WAL flushed" here so
    // that flush_lag measures commit → durable in the archive. (fsync stays off: the
    // shared disk of this machine would otherwise throttle pgbench, not the archivers.)
    pg.psql("ALTER SYSTEM SET synchronous_commit = on")?;
    pg.psql("ALTER SYSTEM SET max_wal_size = '2GB'")?;
    pg.psql("SELECT pg_reload_conf()")?;
    let machine = Machine::collect(&pg);
    eprintln!("pgbench -i -s {} ...", settings.scale);
    let t0 = Instant::now();
    pgbench(&pg, &["-i", "-q", "-s", &settings.scale.to_string()])?;
    eprintln!("  loaded in {:.0} s", t0.elapsed().as_secs_f64());
    pg.psql("CHECKPOINT")?;

    let mut plans: Vec<Vec<Config>> = Vec::new();
    let mut pitr_configs = vec![Config::PitrLocal, Config::PitrLocalSealed];
    pitr_configs.extend(s3_impls.iter().map(|i| Config::PitrS3(*i)));
    if settings.together {
        let mut all = vec![Config::ReceiveWal];
        all.extend(pitr_configs);
        plans.push(all);
    } else {
        for c in pitr_configs {
            plans.push(vec![Config::ReceiveWal, c]);
        }
    }

    let mut runs = Vec::new();
    for (n, plan) in plans.iter().enumerate() {
        eprintln!("run {} of {}: {:?}", n + 1, plans.len(), plan);
        let r = bench_run(&pg, &pitr, &settings, n + 1, plan)
            .with_context(|| format!("run {}", n + 1))?;
        runs.push(r);
    }

    let md = report::render(&settings, &machine, &runs, flush_secs, &notes);
    println!("{md}");
    if settings.write {
        report::write_section(&settings.out, &md)?;
        eprintln!("wrote the section into {}", settings.out.display());
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Config {
    ReceiveWal,
    PitrLocal,
    PitrLocalSealed,
    PitrS3(S3Impl),
}

fn s3_name(i: S3Impl) -> &'static str {
    match i {
        S3Impl::Moto => "moto",
        S3Impl::S3sFs => "s3s-fs",
    }
}

fn pgbench(pg: &PgServer, args: &[&str]) -> Result<String> {
    let out = Command::new(pg.bin("pgbench"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port().to_string(),
            "-U",
            "postgres",
        ])
        .args(args)
        .arg("postgres")
        .output()
        .context("running pgbench")?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        bail!(
            "pgbench {args:?} failed: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

fn start_archiver(
    pg: &PgServer,
    pitr: &Path,
    settings: &Settings,
    dir: &Path,
    run: usize,
    config: Config,
    servers: &mut Vec<S3Server>,
) -> Result<Archiver> {
    match config {
        Config::ReceiveWal => {
            let slot = format!("bench_rw_{run}");
            pg.psql(&format!(
                "SELECT pg_create_physical_replication_slot('{slot}', true)"
            ))?;
            let out = dir.join("receivewal");
            std::fs::create_dir_all(&out)?;
            let mut cmd = Command::new(pg.bin("pg_receivewal"));
            cmd.args(["-d", &pg.url(), "-D"]).arg(&out).args([
                "--slot",
                &slot,
                "--synchronous",
                "--no-password",
                "-n",
            ]);
            Archiver::spawn(
                Kind::ReceiveWal,
                &slot,
                Some(out),
                dir.join("pg_receivewal.log"),
                &mut cmd,
            )
        }
        Config::PitrLocal => {
            let slot = format!("bench_pitr_local_{run}");
            let repo = dir.join("repo");
            let mut cmd = Command::new(pitr);
            cmd.args(["archive", &pg.url(), "--repo"])
                .arg(&repo)
                .args(["--name", "bench", "--slot", &slot])
                .args(["--flush-interval", &settings.flush_interval]);
            Archiver::spawn(
                Kind::PitrLocal,
                &slot,
                Some(repo),
                dir.join("pitr-local.log"),
                &mut cmd,
            )
        }
        Config::PitrLocalSealed => {
            let slot = format!("bench_pitr_sealed_{run}");
            let repo = dir.join("repo-sealed");
            let kek = dir.join("kek");
            std::fs::write(&kek, "a1".repeat(32))?;
            let kek = format!("file:{}", kek.display());
            let init = Command::new(pitr)
                .args(["key", "init", "--repo"])
                .arg(&repo)
                .args(["--kek", &kek])
                .output()
                .context("pitr key init")?;
            if !init.status.success() {
                bail!("pitr key init: {}", String::from_utf8_lossy(&init.stderr));
            }
            let mut cmd = Command::new(pitr);
            cmd.args(["archive", &pg.url(), "--repo"])
                .arg(&repo)
                .args(["--name", "bench", "--slot", &slot, "--kek", &kek])
                .args(["--flush-interval", &settings.flush_interval]);
            Archiver::spawn(
                Kind::PitrLocalSealed,
                &slot,
                Some(repo),
                dir.join("pitr-local-sealed.log"),
                &mut cmd,
            )
        }
        Config::PitrS3(i) => {
            let name = s3_name(i);
            let slot = format!("bench_pitr_{}_{run}", name.replace('-', "_"));
            let server = S3Server::start(i).with_context(|| format!("starting {name}"))?;
            let mut cmd = Command::new(pitr);
            cmd.args(["archive", &pg.url(), "--repo"])
                .arg(server.repo_url(&format!("bench-{run}")))
                .args(["--name", "bench", "--slot", &slot])
                .args(["--flush-interval", &settings.flush_interval])
                .envs(server.env());
            servers.push(server);
            Archiver::spawn(
                Kind::PitrS3(name.to_string()),
                &slot,
                None,
                dir.join(format!("pitr-{name}.log")),
                &mut cmd,
            )
        }
    }
}

fn current_lsn(psql: &mut Psql) -> Result<u64> {
    psql.query("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint")?
        .first()
        .and_then(|r| r.first())
        .and_then(|v| v.parse().ok())
        .context("reading pg_current_wal_lsn()")
}

fn bench_run(
    pg: &PgServer,
    pitr: &Path,
    settings: &Settings,
    run: usize,
    plan: &[Config],
) -> Result<RunResult> {
    let tmp = tempfile::Builder::new()
        .prefix("pitr-bench-")
        .tempdir()
        .context("creating a temp dir")?;
    let mut servers = Vec::new();
    let mut archivers = Vec::new();
    for c in plan {
        archivers.push(start_archiver(
            pg,
            pitr,
            settings,
            tmp.path(),
            run,
            *c,
            &mut servers,
        )?);
    }
    let mut psql = Psql::connect(pg)?;

    // Every archiver streaming and caught up with an idle server.
    pg.psql("SELECT pg_switch_wal()")?;
    let ready_at = current_lsn(&mut psql)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        for a in archivers.iter_mut() {
            a.ensure_running()?;
        }
        let rows = replication_rows(&mut psql, 0.0)?;
        let ready = archivers
            .iter()
            .all(|a| rows.iter().any(|r| r.slot == a.slot && r.flush >= ready_at));
        if ready {
            break;
        }
        if Instant::now() > deadline {
            bail!("archivers did not catch up with the idle server within 120 s: {rows:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    let cpu0: Vec<f64> = archivers
        .iter()
        .map(|a| a.cpu_seconds())
        .collect::<Result<_>>()?;
    let machine0 = procs::machine_cpu()?;
    let load_before = procs::loadavg();
    let sampler = Sampler::start(pg)?;
    let start_rows = replication_rows(&mut psql, 0.0)?;
    let lsn0 = current_lsn(&mut psql)?;
    let flush0: Vec<u64> = archivers
        .iter()
        .map(|a| {
            start_rows
                .iter()
                .find(|r| r.slot == a.slot)
                .map(|r| r.flush)
                .unwrap_or(lsn0)
        })
        .collect();

    let load_start = sampler.now();
    eprintln!("  pgbench for {} s ...", settings.seconds);
    let out = pgbench(
        pg,
        &[
            "-c",
            &settings.clients.to_string(),
            "-j",
            &settings.threads.to_string(),
            "-T",
            &settings.seconds.to_string(),
            "-n",
        ],
    )?;
    let load_end = sampler.now();
    let lsn1 = current_lsn(&mut psql)?;
    let end_rows = replication_rows(&mut psql, load_end)?;
    let machine1 = procs::machine_cpu()?;
    let load_after = procs::loadavg();
    let tps = out
        .lines()
        .find(|l| l.starts_with("tps = ") && l.contains("without initial connection"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);

    // Catch-up: how long after the load stopped until each archiver confirmed lsn1.
    let mut caught_up: Vec<Option<f64>> = vec![None; archivers.len()];
    let deadline = Instant::now() + Duration::from_secs(120);
    while caught_up.iter().any(Option::is_none) && Instant::now() < deadline {
        for (i, a) in archivers.iter().enumerate() {
            if caught_up[i].is_none() {
                if let Some(s) = sampler.latest(&a.slot) {
                    if s.flush >= lsn1 {
                        caught_up[i] = Some((s.t - load_end).max(0.0));
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let cpu1: Vec<f64> = archivers
        .iter()
        .map(|a| a.cpu_seconds())
        .collect::<Result<_>>()?;
    let rss: Vec<u64> = archivers
        .iter()
        .map(|a| a.peak_rss())
        .collect::<Result<_>>()?;
    let samples = sampler.finish()?;
    if let Some(dir) = std::env::var_os("PITR_BENCH_SAMPLES") {
        // Raw samples for a closer look: t,slot,current,write,flush,write_lag,flush_lag.
        let path = PathBuf::from(dir).join(format!("samples-run{run}.csv"));
        let mut csv = String::from("t,slot,current,write,flush,write_lag,flush_lag\n");
        for s in &samples {
            csv.push_str(&format!(
                "{:.3},{},{},{},{},{},{}\n",
                s.t - load_start,
                s.slot,
                s.current,
                s.write,
                s.flush,
                s.write_lag.map(|v| v.to_string()).unwrap_or_default(),
                s.flush_lag.map(|v| v.to_string()).unwrap_or_default()
            ));
        }
        std::fs::write(&path, csv).with_context(|| format!("writing {}", path.display()))?;
    }

    let load_secs = load_end - load_start;
    let wal_bytes = lsn1.saturating_sub(lsn0);
    let mut results = Vec::new();
    for (i, a) in archivers.iter().enumerate() {
        let all_mine: Vec<_> = samples.iter().filter(|s| s.slot == a.slot).collect();
        let rpo = sampler::measured_rpo(&all_mine, load_start, load_end);
        let mine: Vec<_> = all_mine
            .iter()
            .copied()
            .filter(|s| s.t >= load_start && s.t <= load_end)
            .collect();
        let flush_end = end_rows
            .iter()
            .find(|r| r.slot == a.slot)
            .map(|r| r.flush)
            .unwrap_or(0);
        results.push(ArchiverResult {
            label: a.kind.label(),
            is_pitr: a.kind.is_pitr(),
            archived_during_load: flush_end.saturating_sub(flush0[i]),
            caught_up_after: caught_up[i],
            write_lag_bytes: mine
                .iter()
                .map(|s| s.current.saturating_sub(s.write) as f64)
                .collect(),
            flush_lag_bytes: mine
                .iter()
                .map(|s| s.current.saturating_sub(s.flush) as f64)
                .collect(),
            // NULL lag = nothing unconfirmed: counts as 0.
            write_lag: mine.iter().map(|s| s.write_lag.unwrap_or(0.0)).collect(),
            flush_lag: mine.iter().map(|s| s.flush_lag.unwrap_or(0.0)).collect(),
            rpo,
            cpu_secs: cpu1[i] - cpu0[i],
            peak_rss: rss[i],
            stored_bytes: a.dir.as_deref().map(procs::dir_size),
            clean_exit: false,
        });
    }

    // Stop everything: pitr stores what it received and exits 0 on SIGTERM.
    for (i, a) in archivers.into_iter().enumerate() {
        let log = a.log.clone();
        let ok = a.terminate(Duration::from_secs(60))?;
        results[i].clean_exit = ok;
        if !ok {
            eprintln!(
                "  {} did not exit cleanly; log {}:\n{}",
                results[i].label,
                log.display(),
                procs::log_tail(&log, 10)
            );
        }
    }
    drop(servers);
    pg.psql("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE 'bench%' AND NOT active")?;
    pg.psql("CHECKPOINT")?;
    let busy = (machine1.0.saturating_sub(machine0.0)) as f64
        / (machine1.1.saturating_sub(machine0.1)).max(1) as f64;
    Ok(RunResult {
        run,
        tps,
        load_secs,
        wal_bytes,
        machine_busy: busy,
        load_before,
        load_after,
        archivers: results,
    })
}
