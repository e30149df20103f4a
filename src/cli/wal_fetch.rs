//! `pitr wal-fetch --repo R [--name N] WALFILE DEST`: PostgreSQL's
//! `restore_command`. Exit 0 = written, 1 = not (yet) archived, other = error.
//!
//! The `restore_command` of `pitr restore` also carries the plan: one
//! `--plan-range TLI:X/Y-X/Y` per timeline. A WAL file inside the plan that
//! is not in the repository (deleted after the restore planned on it) exits
//! 126, which makes PostgreSQL abort recovery instead of promoting early;
//! only past the plan's end does "not archived" (1) end recovery. With
//! `--pin ID` (a server started on the restored directory) each call renews
//! the restore's pin, and the end of recovery removes it.
//!
//! With `--prefetch K` (default 8; 0 = off) the next K WAL files are
//! rebuilt ahead into a spool (`--spool`, default `.pitr-prefetch` next to
//! DEST, i.e. `$PGDATA/pg_wal/.pitr-prefetch`) by a detached
//! `wal-fetch --prefetch-worker` process; see `restore::prefetch`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use clap::Args;

use crate::archive::pins;
use crate::engine::postgres::Postgres;
use crate::restore::fetch;
use crate::restore::postgres::planned::{planned, PlanRange};
use crate::restore::postgres::wal_fetch::{FetchOptions, FetchOutcome};
use crate::restore::prefetch::{self, Spool};
use crate::storage::Repo;

#[derive(Debug, Args)]
pub struct WalFetchArgs {
    /// WAL file name as PostgreSQL passes it (%f), e.g. 000000010000000000000003
    /// or 00000002.history.
    pub wal_file: String,
    /// Where to write it (%p).
    pub dest: PathBuf,
    /// Repository: a directory path, file://PATH, or s3://bucket/prefix.
    #[arg(long, env = "PITR_REPO", default_value = "./pitr-repo")]
    pub repo: String,
    /// Source name; may be left out when the repository holds one source.
    #[arg(long)]
    pub name: Option<String>,
    /// WAL segment size of the cluster in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    pub wal_segment_size: u64,
    /// Segments downloaded at once.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Serve the newest, incomplete WAL file zero-padded (used by the
    /// restore_command `pitr restore` writes, so recovery reaches the last
    /// archived commit).
    #[arg(long)]
    pub partial: bool,
    /// WAL files fetched ahead into the spool by a background worker (0 = off).
    #[arg(long, default_value_t = prefetch::DEFAULT_DEPTH)]
    pub prefetch: usize,
    /// Spool directory for prefetched files (default: `.pitr-prefetch` in
    /// the directory of DEST, i.e. `$PGDATA/pg_wal/.pitr-prefetch`).
    #[arg(long)]
    pub spool: Option<PathBuf>,
    /// Run as the background prefetch worker of the spool (started by
    /// wal-fetch itself; WALFILE and DEST are ignored).
    #[arg(long, hide = true)]
    pub prefetch_worker: bool,
    /// WAL the restore planned on (TLI:X/Y-X/Y, repeatable): a file inside
    /// it that is missing aborts recovery (exit 126).
    #[arg(long = "plan-range")]
    pub plan_ranges: Vec<PlanRange>,
    /// Restore pin to renew while recovery runs and remove when it ends.
    #[arg(long)]
    pub pin: Option<String>,
    /// Time to live of the renewed pin.
    #[arg(long, default_value = "5m", value_parser = crate::cli::common::parse_duration)]
    pub pin_ttl: Duration,
}

pub async fn run(
    args: WalFetchArgs,
    kek: Option<crate::crypto::kek::KekSource>,
) -> anyhow::Result<i32> {
    let repo = Repo::open_existing(&args.repo).await?;
    crate::crypto::unlock(&repo, kek.as_ref(), crate::crypto::Access::Read).await?;
    let source = fetch::resolve(&repo, args.name.as_deref(), &Postgres).await?;
    let opts = FetchOptions {
        wal_segment_size: args.wal_segment_size,
        parallel: args.parallel,
        partial: args.partial,
    };
    let root = match &args.spool {
        Some(s) => s.clone(),
        None => Spool::default_root(&args.dest),
    };
    let spool = Spool::new(
        &std::path::absolute(&root)?,
        &args.repo,
        &source,
        args.wal_segment_size,
        args.prefetch,
    );
    if args.prefetch_worker {
        let stats =
            prefetch::run_worker(&repo, &source, &spool, &opts, Duration::from_secs(2)).await?;
        tracing::debug!("prefetch worker done: {stats:?}");
        return Ok(0);
    }
    if let Some(id) = &args.pin {
        if let Err(e) =
            pins::renew_by_id(&repo, &source, id, args.pin_ttl, chrono::Utc::now()).await
        {
            tracing::warn!("renewing restore pin {id}: {e:#}");
        }
    }
    let spawn = |spool: &Spool| spawn_worker(&args, source.as_str(), spool);
    let (outcome, from) = prefetch::fetch_with_prefetch(
        &repo,
        &source,
        &args.wal_file,
        &args.dest,
        &opts,
        &spool,
        &spawn,
    )
    .await?;
    match outcome {
        FetchOutcome::Written { bytes, partial } => {
            tracing::debug!(
                "wrote {} ({bytes} bytes, from {from:?}{})",
                args.dest.display(),
                if partial { ", zero-padded" } else { "" }
            );
            Ok(0)
        }
        FetchOutcome::NotArchived(why) => {
            // Only a source that is there and is PostgreSQL's ends recovery.
            fetch::confirm(&repo, &source, &Postgres).await?;
            if planned(&args.plan_ranges, &args.wal_file, args.wal_segment_size) {
                eprintln!(
                    "pitr wal-fetch: {} was archived when the restore planned on it but is gone from the repository (deleted by prune or another process?); aborting recovery: restore again",
                    args.wal_file
                );
                return Ok(fetch::FAILED);
            }
            let is_wal = !args.wal_file.ends_with(".history");
            if let (Some(id), true) = (&args.pin, is_wal) {
                // The end of the archive: recovery ends, so does the pin.
                if let Err(e) = pins::release_by_id(&repo, &source, id).await {
                    tracing::warn!("removing restore pin {id}: {e:#}");
                }
            }
            eprintln!("pitr wal-fetch: {why}");
            Ok(fetch::NOT_ARCHIVED)
        }
    }
}

/// Starts `pitr wal-fetch --prefetch-worker` detached: own process group,
/// no terminal, stderr into the spool's log; it is not waited for.
fn spawn_worker(args: &WalFetchArgs, source: &str, spool: &Spool) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let exe = std::env::current_exe()?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(spool.dir().join(prefetch::WORKER_LOG))?;
    let root: &Path = spool.root();
    Command::new(exe)
        .arg("wal-fetch")
        .arg("--prefetch-worker")
        .arg("--repo")
        .arg(&args.repo)
        .arg("--name")
        .arg(source)
        .arg("--spool")
        .arg(root)
        .arg("--prefetch")
        .arg(spool.depth().to_string())
        .arg("--wal-segment-size")
        .arg(args.wal_segment_size.to_string())
        .arg("--parallel")
        .arg(args.parallel.to_string())
        .arg(&args.wal_file)
        .arg(&args.dest)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()?;
    Ok(())
}
