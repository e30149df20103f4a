//! MongoDB oplog archiving benchmark: CPU per GB of oplog and peak RSS of
//! `pitr archive` catching up a backlog, against a bare driver tail of the
//! same oplog in the same run (the floor any archiver built on the official
//! driver pays: it reads every entry and keeps nothing).
//!
//! No real `mongod` can run here: the server is the wire-protocol double of
//! this crate (`mongo-double`, release build), filled through the official
//! driver with `--mib` MiB of inserts (documents of `--doc-bytes`). Both
//! readers start from the oldest entry after the load, so each reads the
//! whole backlog as fast as the double serves it. CPU is `utime + stime` of
//! the reader's process, peak memory its `VmHWM`, read from `/proc` when it
//! has caught up (before it is stopped).
//!
//! `scripts/bench mongo [--mib 1024] [--doc-bytes 1000] [--no-write]`
//! writes the "## MongoDB oplog archiving" section of BENCHMARKS.md.

#![allow(clippy::unwrap_used)] // a benchmark program: failures end the run

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bson::{doc, Document, RawDocumentBuf};
use futures::TryStreamExt;
use mongodb::options::{CursorType, FindOptions};
use pitr_integration::benchmarks_md::write_section;
use pitr_integration::procstat::{cpu_seconds, peak_rss, Bg};
use pitr_integration::{pitr_bin, workspace_dir, MongoDouble, MongoOptions};

struct Args {
    mib: u64,
    doc_bytes: usize,
    write: bool,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        mib: 1024,
        doc_bytes: 1000,
        write: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        match k.as_str() {
            "--mib" => a.mib = it.next().context("--mib needs a value")?.parse()?,
            "--doc-bytes" => {
                a.doc_bytes = it.next().context("--doc-bytes needs a value")?.parse()?
            }
            "--no-write" => a.write = false,
            "--tail-only" => {
                let url = it.next().context("--tail-only needs a URL")?;
                let until = it.next().context("--tail-only needs an entry count")?;
                tail_only(&url, until.parse()?)?;
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    Ok(a)
}

/// One reader's result.
struct Run {
    what: &'static str,
    secs: f64,
    cpu: f64,
    rss: u64,
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let rt = tokio::runtime::Runtime::new()?;
    let double = release_double()?;
    let db = MongoDouble::start_bin(
        &double,
        MongoOptions {
            noop_interval_secs: 0,
            ..Default::default()
        },
    )?;
    let url = db.url();
    eprintln!("loading {} MiB of inserts into the double", args.mib);
    let (entries, bytes) = rt.block_on(load(&url, args.mib << 20, args.doc_bytes))?;
    eprintln!("oplog: {entries} entries, {bytes} bytes");

    let tmp = tempfile::tempdir()?;
    let pitr = archive_run(&url, tmp.path(), entries)?;
    let floor = tail_run(&url, tmp.path(), entries)?;
    let runs = [floor, pitr];
    let section = report(&args, entries, bytes, &runs);
    println!("{section}");
    if args.write {
        write_section(
            &workspace_dir().join("BENCHMARKS.md"),
            "## MongoDB oplog archiving",
            &section,
        )?;
        eprintln!("BENCHMARKS.md updated");
    }
    Ok(())
}

/// `<target>/release/mongo-double`, built if missing.
fn release_double() -> Result<PathBuf> {
    let ok = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--release",
            "-p",
            "pitr-integration",
            "--bin",
            "mongo-double",
        ])
        .current_dir(workspace_dir())
        .status()?
        .success();
    if !ok {
        bail!("building mongo-double failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target"));
    Ok(target.join("release").join("mongo-double"))
}

/// Inserts about `bytes` of documents; returns the oplog's entry count and
/// total BSON bytes.
async fn load(url: &str, bytes: u64, doc_bytes: usize) -> Result<(u64, u64)> {
    let c = mongodb::Client::with_uri_str(url).await?;
    let coll = c.database("bench").collection::<Document>("ledger");
    let per_batch = ((1 << 20) / doc_bytes.max(1)).max(1);
    let mut written = 0u64;
    let mut id = 0i64;
    while written < bytes {
        let docs: Vec<Document> = (0..per_batch)
            .map(|_| {
                id += 1;
                doc! {"_id": id, "account": id % 9973, "amount": id * 7 % 1000,
                "memo": filler(id, doc_bytes)}
            })
            .collect();
        coll.insert_many(docs).await?;
        written += (per_batch * doc_bytes) as u64;
    }
    let oplog = c.database("local").collection::<RawDocumentBuf>("oplog.rs");
    let mut cur = oplog.find(doc! {}).await?;
    let (mut n, mut total) = (0u64, 0u64);
    while let Some(d) = cur.try_next().await? {
        n += 1;
        total += d.as_bytes().len() as u64;
    }
    Ok((n, total))
}

/// Text that compresses about as well as typical application strings
/// (hex digits of a cheap hash: ~2:1 under zstd).
fn filler(seed: i64, len: usize) -> String {
    let mut x = seed as u64 ^ 0x9e37_79b9_7f4a_7c15;
    let mut s = String::with_capacity(len);
    while s.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push_str(&format!("{x:016x}"));
    }
    s.truncate(len);
    s
}

/// `pitr archive` from the oldest entry until it has stored them all.
fn archive_run(url: &str, dir: &Path, entries: u64) -> Result<Run> {
    let repo = dir.join("repo");
    let mut cmd = Command::new(pitr_bin());
    cmd.args(["archive", url, "--repo"]).arg(&repo).args([
        "--name",
        "bench",
        "--flush-interval",
        "1s",
    ]);
    let started = Instant::now();
    let mut bg = Bg::spawn(&mut cmd, dir.join("archive.log"))?;
    let last = last_ts(url)?;
    loop {
        bg.ensure_running()?;
        if archived_last(&repo)?.is_some_and(|t| t >= last) {
            break;
        }
        if started.elapsed() > Duration::from_secs(1800) {
            bail!("pitr archive did not catch up in 30 minutes");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let secs = started.elapsed().as_secs_f64();
    let (cpu, rss) = (bg.cpu_seconds()?, bg.peak_rss()?);
    let _ = bg.stop("TERM");
    eprintln!("pitr archive: {entries} entries in {secs:.1} s");
    Ok(Run {
        what: "pitr archive (file:// repository)",
        secs,
        cpu,
        rss,
    })
}

/// This program in `--tail-only` mode: the same driver, a tailable cursor
/// from the oldest entry, every entry read and dropped.
fn tail_run(url: &str, dir: &Path, entries: u64) -> Result<Run> {
    let me = std::env::current_exe()?;
    let mut cmd = Command::new(me);
    cmd.args(["--tail-only", url, &entries.to_string()]);
    let started = Instant::now();
    let mut bg = Bg::spawn(&mut cmd, dir.join("tail.log"))?;
    let done = dir.join("tail.log");
    loop {
        bg.ensure_running()?;
        if std::fs::read_to_string(&done)?.contains("read all") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let secs = started.elapsed().as_secs_f64();
    let (cpu, rss) = (cpu_seconds(bg.pid())?, peak_rss(bg.pid())?);
    let _ = bg.stop("TERM");
    Ok(Run {
        what: "driver tail, nothing kept (floor)",
        secs,
        cpu,
        rss,
    })
}

/// Reads `until` oplog entries with a tailable await cursor, says
/// "read all", then waits to be measured and stopped.
fn tail_only(url: &str, until: u64) -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let c = mongodb::Client::with_uri_str(url).await?;
        let oplog = c.database("local").collection::<RawDocumentBuf>("oplog.rs");
        let opts = FindOptions::builder()
            .cursor_type(CursorType::TailableAwait)
            .build();
        let mut cur = oplog.find(doc! {}).with_options(opts).await?;
        let mut n = 0u64;
        let mut bytes = 0u64;
        while n < until {
            match cur.try_next().await? {
                Some(d) => {
                    n += 1;
                    bytes += d.as_bytes().len() as u64;
                }
                None => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        eprintln!("read all: {n} entries, {bytes} bytes");
        tokio::time::sleep(Duration::from_secs(3600)).await;
        anyhow::Ok(())
    })
}

/// The newest entry's `ts` as `(secs, inc)`.
fn last_ts(url: &str) -> Result<(u32, u32)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let c = mongodb::Client::with_uri_str(url).await?;
        let oplog = c.database("local").collection::<Document>("oplog.rs");
        let d = oplog
            .find_one(doc! {})
            .sort(doc! {"$natural": -1})
            .await?
            .context("the oplog is empty")?;
        let ts = d.get_timestamp("ts")?;
        Ok((ts.time, ts.increment))
    })
}

/// The newest archived position, from `pitr oplog-fetch --list`.
fn archived_last(repo: &Path) -> Result<Option<(u32, u32)>> {
    let out = Command::new(pitr_bin())
        .args(["oplog-fetch", "--repo"])
        .arg(repo)
        .args(["--name", "bench", "--list"])
        .output()?;
    if !out.status.success() {
        return Ok(None);
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (s, i) = l.split('\t').nth(2)?.split_once(':')?;
            Some((s.parse().ok()?, i.parse().ok()?))
        })
        .max())
}

fn report(args: &Args, entries: u64, bytes: u64, runs: &[Run]) -> String {
    let gb = bytes as f64 / 1e9;
    let mut s = format!(
        "## MongoDB oplog archiving\n\n\
         CPU per GB of oplog and peak memory of `pitr archive` catching up a backlog of\n\
         {entries} oplog entries ({:.0} MB of BSON: driver inserts of {}-byte documents), against a\n\
         bare tail of the same oplog with the same driver in the same run (every entry read\n\
         and dropped: the floor of any archiver built on the official driver). The server is\n\
         the wire-protocol double (`mongo-double`, release build; no real `mongod` can run\n\
         here), so wall times are the double's serving speed more than pitr's. CPU is\n\
         `utime + stime` of the reader's process, peak RSS its `VmHWM`.\n\n\
         Reproduce:\n\n```\nscripts/bench mongo --mib {} --doc-bytes {}\n```\n\n\
         | reader | wall | CPU | CPU per GB | peak RSS |\n|---|---:|---:|---:|---:|\n",
        bytes as f64 / 1e6,
        args.doc_bytes,
        args.mib,
        args.doc_bytes
    );
    for r in runs {
        s.push_str(&format!(
            "| {} | {:.1} s | {:.2} s | {:.2} s | {:.1} MiB |\n",
            r.what,
            r.secs,
            r.cpu,
            r.cpu / gb,
            r.rss as f64 / (1 << 20) as f64
        ));
    }
    s
}
