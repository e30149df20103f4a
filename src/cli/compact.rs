//! `pitr compact --repo R [--name N]`: repository maintenance. Merges runs of
//! small segments (one per flush interval) into larger ones, then writes the
//! roll-up index objects that keep restore planning to a handful of
//! requests. Safe to interrupt at any point: a merged segment is stored
//! before the small ones are deleted, and the catalog resolves leftovers.
//! Run it from one place at a time per source (`pitr run` does it on a
//! schedule).

use std::time::Duration;

use anyhow::anyhow;
use clap::Args;
use pitr_segment::TimestampMicros;

use crate::archive::compaction::{compact, CompactionOptions};
use crate::archive::keys::SourceName;
use crate::archive::rollup::Indexer;
use crate::cli::common::parse_duration;
use crate::monitor::status::list_sources;
use crate::storage::Repo;

#[derive(Debug, Args)]
pub struct CompactArgs {
    /// Repository: a directory path, file://PATH, or s3://bucket/prefix.
    #[arg(long, env = "PITR_REPO", default_value = "./pitr-repo")]
    pub repo: String,
    /// Only this source (default: every source of the repository).
    #[arg(long)]
    pub name: Option<String>,
    /// Merge only segments whose commits are all older than this.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub min_age: Duration,
    /// Upper bound on the stored size of a merged segment, in MiB.
    #[arg(long, default_value_t = 64)]
    pub target_size_mib: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Compaction then index roll-up of one source; returns a JSON report.
pub async fn maintain(
    repo: &Repo,
    source: &SourceName,
    opts: &CompactionOptions,
) -> anyhow::Result<serde_json::Value> {
    let now = TimestampMicros(chrono::Utc::now().timestamp_micros());
    let report = compact(repo, source, opts, now)
        .await
        .map_err(|e| anyhow!("compacting {source}: {e}"))?;
    for k in &report.merged {
        tracing::info!(key = %k.to_key(), "merged segment stored");
    }
    for k in &report.deleted {
        tracing::info!(key = %k.to_key(), "small segment deleted (covered by a merged one)");
    }
    for (k, why) in &report.skipped {
        tracing::warn!(key = %k, "not compacted: {why}; run `pitr verify`");
    }
    let rolled = Indexer::default()
        .roll_up(repo, source)
        .await
        .map_err(|e| anyhow!("indexing {source}: {e}"))?;
    Ok(serde_json::json!({
        "source": source.as_str(),
        "merged": report.merged.len(),
        "deleted": report.deleted.len(),
        "skipped": report.skipped.iter().map(|(k, w)| serde_json::json!({"key": k, "reason": w})).collect::<Vec<_>>(),
        "index_objects_written": rolled.written.len() + report.index_replacements.len(),
    }))
}

pub async fn run(
    args: CompactArgs,
    kek: Option<crate::crypto::kek::KekSource>,
) -> anyhow::Result<i32> {
    let repo = Repo::open_existing(&args.repo).await?;
    crate::crypto::unlock(&repo, kek.as_ref(), crate::crypto::Access::Write).await?;
    let names: Vec<SourceName> = match &args.name {
        Some(n) => vec![SourceName::new(n).map_err(|e| anyhow!("invalid --name: {e}"))?],
        None => list_sources(&repo).await?,
    };
    let opts = CompactionOptions {
        target_size: args.target_size_mib.max(1) << 20,
        min_age: args.min_age,
        ..Default::default()
    };
    let mut reports = Vec::new();
    for source in names {
        let n = source.as_str().to_string();
        let r = maintain(&repo, &source, &opts).await?;
        if !args.json {
            println!(
                "{}: {} merged segment(s) written, {} small segment(s) deleted, {} index object(s) written",
                n, r["merged"], r["deleted"], r["index_objects_written"]
            );
        }
        reports.push(r);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    Ok(0)
}
