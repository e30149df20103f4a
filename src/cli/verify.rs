//! `pitr verify --repo R [--name N] [--json]`: re-reads every segment, gap
//! record and base backup part and checks checksums, key/header agreement
//! and log continuity (see `monitor::verify`).
//!
//! Exit status: 0 no problem; 1 at least one problem (each printed with its
//! object key and position); 2 the repository cannot be read.

use clap::Args;

use crate::monitor::verify::verify_repo;
use crate::storage::Repo;

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Repository: a directory path, file://PATH, or s3://bucket/prefix.
    #[arg(long, env = "PITR_REPO", default_value = "./pitr-repo")]
    pub repo: String,
    /// Only this source.
    #[arg(long)]
    pub name: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Objects read at once.
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
}

pub async fn run(
    args: VerifyArgs,
    kek: Option<crate::crypto::kek::KekSource>,
) -> anyhow::Result<i32> {
    let report = match Repo::open_existing(&args.repo).await {
        Ok(repo) => {
            match crate::crypto::unlock(&repo, kek.as_ref(), crate::crypto::Access::Read).await {
                Ok(()) => verify_repo(&repo, args.name.as_deref(), args.parallel).await,
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    };
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(2);
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for n in &report.notes {
            println!("note: {n}");
        }
        for p in &report.problems {
            println!("PROBLEM: {p}");
        }
        println!(
            "checked {} source(s): {} segment(s) ({} bytes), {} gap record(s), {} backup(s) with {} part(s): {} problem(s)",
            report.sources,
            report.segments,
            report.segment_bytes,
            report.gaps,
            report.backups,
            report.backup_parts,
            report.problems.len()
        );
        if !report.key_ids.is_empty() {
            let ids: Vec<String> = report.key_ids.iter().map(u32::to_string).collect();
            println!(
                "encrypted with data key(s) {}: the repository still needs them",
                ids.join(", ")
            );
        }
    }
    Ok(if report.problems.is_empty() { 0 } else { 1 })
}
