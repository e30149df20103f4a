//! `pitr status --repo R [--json] [--max-lag D] [--name N]`: recoverable
//! window, base backups, gaps, size and archive lag of every source.
//!
//! Exit status: 0 healthy; 1 a source has a gap inside its recoverable
//! window, its lag exceeds `--max-lag`, it holds fenced objects (written
//! after their archiver lost the writer lease), its writer lease expired
//! without being released (no archiver runs), or an orphaned incomplete
//! backup older than `--incomplete-grace` exists (see `retention`); 2 the
//! repository cannot be read.
//!
//! The lag is "now minus the newest archived commit": an idle database that
//! commits nothing looks lagging. The time the newest segment was stored is
//! printed next to it to tell an idle database from a stopped archiver.

use std::time::Duration;

use clap::Args;

use crate::cli::common::parse_duration;
use crate::monitor::status::{human_secs, repo_status, RepoStatus, SourceStatus};
use crate::restore::time::utc_text;
use crate::storage::Repo;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Repository: a directory path, file://PATH, or s3://bucket/prefix.
    #[arg(long, env = "PITR_REPO", default_value = "./pitr-repo")]
    pub repo: String,
    /// Only this source.
    #[arg(long)]
    pub name: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Exit 1 when the newest archived commit is older than this (e.g. 5m).
    #[arg(long, value_parser = parse_duration)]
    pub max_lag: Option<Duration>,
    /// Exit 1 when an incomplete backup that a newer backup overtook
    /// started more than this long ago (a killed backup: `pitr prune`
    /// removes it).
    #[arg(long, value_parser = parse_duration, default_value = "1h")]
    pub incomplete_grace: Duration,
}

pub async fn run(
    args: StatusArgs,
    kek: Option<crate::crypto::kek::KekSource>,
) -> anyhow::Result<i32> {
    let status = match load(&args, kek.as_ref()).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(2);
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else if status.sources.is_empty() {
        println!("no sources in this repository");
    } else {
        for s in &status.sources {
            print!("{}", render(s));
        }
    }
    let now = chrono::Utc::now();
    let problems: Vec<String> = status
        .sources
        .iter()
        .flat_map(|s| {
            let mut p = s.problems(args.max_lag);
            p.extend(s.orphan_problems(args.incomplete_grace, now));
            p
        })
        .collect();
    for p in &problems {
        eprintln!("problem: {p}");
    }
    Ok(if problems.is_empty() { 0 } else { 1 })
}

async fn load(
    args: &StatusArgs,
    kek: Option<&crate::crypto::kek::KekSource>,
) -> anyhow::Result<RepoStatus> {
    let repo = Repo::open_existing(&args.repo).await?;
    // backup manifests are sealed in an encrypted repository
    crate::crypto::unlock(&repo, kek, crate::crypto::Access::Read).await?;
    repo_status(&repo, args.name.as_deref()).await
}

/// The human-readable block of one source.
pub fn render(s: &SourceStatus) -> String {
    let mut o = String::new();
    let line = |o: &mut String, k: &str, v: String| o.push_str(&format!("  {k:<22}{v}\n"));
    o.push_str(&format!(
        "{} ({}, system id {})\n",
        s.name, s.engine, s.system_id
    ));
    match (&s.window, &s.note) {
        (Some(w), _) => line(
            &mut o,
            "recoverable window",
            format!("{} .. {}", utc_text(w.start), utc_text(w.end)),
        ),
        (None, Some(n)) => line(&mut o, "recoverable window", format!("none ({n})")),
        (None, None) => line(&mut o, "recoverable window", "none".into()),
    }
    line(
        &mut o,
        "log coverage",
        match &s.log_coverage {
            Some(w) => format!("{} .. {}", utc_text(w.start), utc_text(w.end)),
            None => "no commit archived".into(),
        },
    );
    line(
        &mut o,
        "base backups",
        match &s.newest_backup {
            Some(b) => format!(
                "{} (newest {}, finished {})",
                s.base_backups,
                b.id,
                utc_text(b.stop_time)
            ),
            None => "0".into(),
        },
    );
    line(
        &mut o,
        "segments",
        format!("{} ({} bytes, {} epoch(s))", s.segments, s.bytes, s.epochs),
    );
    line(
        &mut o,
        "archive lag",
        match s.lag_seconds {
            Some(l) => format!("{} (an idle database also looks lagging)", human_secs(l)),
            None => "unknown (no commit archived)".into(),
        },
    );
    line(
        &mut o,
        "last segment stored",
        s.last_segment_stored_at
            .map(utc_text)
            .unwrap_or_else(|| "never".into()),
    );
    line(
        &mut o,
        "writer lease",
        match &s.writer_lease {
            None => "never taken".into(),
            Some(l) => match l.state.as_str() {
                "live" => format!(
                    "generation {} held by {} pid {} since {}, expires {}",
                    l.generation,
                    l.holder_host,
                    l.holder_pid,
                    utc_text(l.acquired_at),
                    utc_text(l.expires_at)
                ),
                "released" => format!(
                    "generation {} released by {} pid {} at {} (no archiver runs)",
                    l.generation,
                    l.holder_host,
                    l.holder_pid,
                    utc_text(l.expires_at)
                ),
                "abandoned" => format!(
                    "generation {} of {} pid {}: that process is gone (the lease expires {})",
                    l.generation,
                    l.holder_host,
                    l.holder_pid,
                    utc_text(l.expires_at)
                ),
                _ => format!(
                    "generation {} of {} pid {} expired at {}: holder dead?",
                    l.generation,
                    l.holder_host,
                    l.holder_pid,
                    utc_text(l.expires_at)
                ),
            },
        },
    );
    if !s.fenced.is_empty() {
        line(
            &mut o,
            "fenced objects",
            format!("{} (written after losing the writer lease)", s.fenced.len()),
        );
    }
    if !s.orphaned_backups.is_empty() {
        line(
            &mut o,
            "incomplete backups",
            format!(
                "{} (no manifest, overtaken by a newer backup: `pitr prune` removes them)",
                s.orphaned_backups.len()
            ),
        );
        for b in &s.orphaned_backups {
            o.push_str(&format!("    {}\n", b.dir));
        }
    }
    if s.gaps.is_empty() {
        line(&mut o, "gaps", "none".into());
    } else {
        line(&mut o, "gaps", s.gaps.len().to_string());
        for g in &s.gaps {
            o.push_str(&format!(
                "    epoch {} {}..{}: {}{}\n",
                g.epoch,
                g.start,
                g.end,
                g.reason,
                if g.inside_window {
                    " [inside the recoverable window]"
                } else {
                    ""
                }
            ));
        }
    }
    o
}
