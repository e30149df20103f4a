//! `pitr prune --repo R [--name N] (--keep-backups N | --recovery-window D)
//! [--dry-run] [--json]`: deletes old base backups and the log only they
//! needed (rules in `retention`).
//!
//! Incomplete backups (no manifest) left by a killed backup are removed
//! once orphaned (see `retention`) and reported as "removed incomplete
//! backup <dir> (started <t>, no manifest)".
//!
//! Exit status: 0 done (also when nothing was to be pruned); 2 usage error
//! or unreadable repository; 3 a deletion failed (the repository stays
//! consistent; run the command again).

use std::time::Duration;

use clap::Args;

use crate::archive::keys::SourceName;
use crate::cli::common::parse_duration;
use crate::monitor::status::list_sources;
use crate::retention::{prune, Policy, PruneOptions, PruneReport, DEFAULT_LOG_ALIGNMENT};
use crate::storage::Repo;

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Repository: a directory path, file://PATH, or s3://bucket/prefix.
    #[arg(long, env = "PITR_REPO", default_value = "./pitr-repo")]
    pub repo: String,
    /// Only this source (default: every source of the repository).
    #[arg(long)]
    pub name: Option<String>,
    /// Keep the newest N restorable base backups.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub keep_backups: Option<u64>,
    /// Keep every backup needed to restore to any point this far back (e.g. 14d).
    #[arg(long, value_parser = parse_duration)]
    pub recovery_window: Option<Duration>,
    /// Print what would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Incomplete backups (no manifest) that started before the newest
    /// complete backup are removed once they are this old (e.g. 1h).
    #[arg(long, value_parser = parse_duration, default_value = "1h")]
    pub incomplete_grace: Duration,
    /// The PostgreSQL WAL file size in bytes (log is cut at WAL-file boundaries).
    #[arg(long, default_value_t = DEFAULT_LOG_ALIGNMENT)]
    pub wal_segment_size: u64,
}

pub async fn run(
    args: PruneArgs,
    kek: Option<crate::crypto::kek::KekSource>,
) -> anyhow::Result<i32> {
    let policy = Policy {
        keep_backups: args.keep_backups.map(|n| n as usize),
        recovery_window: args.recovery_window,
    };
    if !policy.is_set() {
        eprintln!("error: give --keep-backups N and/or --recovery-window DURATION");
        return Ok(2);
    }
    if !args.wal_segment_size.is_power_of_two() {
        eprintln!("error: --wal-segment-size must be a power of two");
        return Ok(2);
    }
    let repo = match Repo::open_existing(&args.repo).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(2);
        }
    };
    // backup manifests are sealed in an encrypted repository
    if let Err(e) = crate::crypto::unlock(&repo, kek.as_ref(), crate::crypto::Access::Read).await {
        eprintln!("error: {e}");
        return Ok(2);
    }
    let sources = match &args.name {
        Some(n) => match SourceName::new(n) {
            Ok(s) => vec![s],
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(2);
            }
        },
        None => match list_sources(&repo).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(2);
            }
        },
    };
    let opts = PruneOptions {
        policy,
        dry_run: args.dry_run,
        log_alignment: args.wal_segment_size,
        incomplete_grace: args.incomplete_grace,
        ..PruneOptions::default()
    };
    let mut reports = Vec::new();
    let mut code = 0;
    for s in &sources {
        match prune(&repo, s, &opts).await {
            Ok(r) => {
                if !args.json {
                    print!("{}", render(&r));
                }
                reports.push(r);
            }
            Err(e) => {
                eprintln!("error: pruning {s}: {e:#}");
                code = 3;
            }
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else if sources.is_empty() {
        println!("no sources in this repository: nothing to prune");
    }
    Ok(code)
}

fn render(r: &PruneReport) -> String {
    let verb = if r.dry_run { "would delete" } else { "deleted" };
    let mut out = format!("{}:\n", r.source);
    for k in &r.kept_backups {
        out.push_str(&format!("  keep backup  {k}\n"));
    }
    for k in &r.deleted_backups {
        if !r.incomplete_backups.iter().any(|i| &i.dir == k) {
            out.push_str(&format!("  {verb} backup  {k}\n"));
        }
    }
    let removed = if r.dry_run { "would remove" } else { "removed" };
    for i in &r.incomplete_backups {
        let started = i
            .started
            .map(crate::restore::time::utc_seconds_text)
            .unwrap_or_else(|| "at an unknown time".into());
        out.push_str(&format!(
            "  {removed} incomplete backup {} (started {started}, no manifest)\n",
            i.dir
        ));
    }
    for p in &r.pinned {
        out.push_str(&format!("  {p}\n"));
    }
    if !r.deleted_fenced.is_empty() {
        out.push_str(&format!(
            "  {verb} {} fenced object(s) (written after their archiver lost the writer lease)\n",
            r.deleted_fenced.len()
        ));
    }
    for k in &r.written_keys {
        let w = if r.dry_run { "would write" } else { "wrote" };
        out.push_str(&format!("  {w}  {k}\n"));
    }
    for k in &r.deleted_keys {
        out.push_str(&format!("  {verb}  {k}\n"));
    }
    if let Some(n) = &r.note {
        out.push_str(&format!("  {n}\n"));
    } else {
        out.push_str(&format!(
            "  {verb} {} object(s), {} backup(s), {} bytes of log\n",
            r.deleted_keys.len(),
            r.deleted_backups.len(),
            r.deleted_segment_bytes
        ));
    }
    out
}
