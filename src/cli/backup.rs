//! `pitr backup <postgres-url> --repo R [--name N] [--json]`: a base backup
//! into the repository; succeeds once the WAL making it consistent is
//! archived too.

use std::io::IsTerminal as _;

use anyhow::anyhow;
use clap::Args;

use crate::backup::take::{take_backup, BackupOptions, Progress};
use crate::config::redact;
use crate::source::{url_kind, UrlKind};
use crate::storage::Repo;

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Database: postgres://user[:password]@host[:port]/db (a REPLICATION role).
    pub url: String,
    /// Repository: a directory path, file://PATH, or s3://bucket/prefix.
    #[arg(long, env = "PITR_REPO", default_value = "./pitr-repo")]
    pub repo: String,
    /// Source name in the repository (default pg-<system identifier>).
    #[arg(long)]
    pub name: Option<String>,
    /// Backup label.
    #[arg(long)]
    pub label: Option<String>,
    /// Largest stored part, in MiB.
    #[arg(long, default_value_t = 64)]
    pub part_size_mib: usize,
    /// MongoDB: collections dumped at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: u16,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: BackupArgs) -> anyhow::Result<i32> {
    if url_kind(&args.url) == Some(UrlKind::MySql) {
        return crate::backup::mysql::run_cli(
            &args.url,
            &args.repo,
            args.name.clone(),
            args.label.clone(),
            args.part_size_mib.max(1) << 20,
            args.json,
        )
        .await;
    }
    if url_kind(&args.url) == Some(UrlKind::MongoDb) {
        let opts = crate::backup::mongodb::take::MongoBackupOptions {
            url: args.url.clone(),
            name: args.name.clone(),
            label: args.label.clone(),
            parallel: usize::from(args.parallel),
            part_size: args.part_size_mib.max(1) << 20,
            ..Default::default()
        };
        return crate::backup::mongodb::take::run_cli(opts, &args.repo, args.json).await;
    }
    if url_kind(&args.url) != Some(UrlKind::Postgres) {
        return Err(anyhow!(
            "base backups are available for PostgreSQL only; {:?} is not a postgres:// URL",
            redact(&args.url)
        ));
    }
    let repo = Repo::open(&args.repo).await.map_err(|e| anyhow!("{e}"))?;
    let opts = BackupOptions {
        url: args.url.clone(),
        name: args.name.clone(),
        label: args.label.clone(),
        part_size: args.part_size_mib.max(1) << 20,
        ..Default::default()
    };
    let tty = std::io::stderr().is_terminal();
    let show = move |p: Progress| {
        if tty {
            let pct = if p.total > 0 {
                format!(" ({:.0}%)", 100.0 * p.received as f64 / p.total as f64)
            } else {
                String::new()
            };
            eprint!(
                "\rbackup: {} MiB received{pct}, {} MiB stored   ",
                p.received >> 20,
                p.stored >> 20
            );
        }
    };
    let report = take_backup(&opts, &repo, &show).await?;
    if tty {
        eprintln!();
    }
    let m = &report.manifest;
    if args.json {
        let v = serde_json::json!({
            "source": report.key.source.as_str(),
            "backup": report.key.dir(),
            "id": m.id,
            "timeline": m.timeline,
            "start_lsn": m.start_lsn.to_string(),
            "stop_lsn": m.stop_lsn.to_string(),
            "start_time": m.start_time,
            "stop_time": m.stop_time,
            "bytes": m.archives.iter().map(|a| a.size).sum::<u64>(),
            "stored_bytes": m.stored_bytes(),
            "archived_wal_itself": report.archived_wal_itself,
        });
        println!("{v}");
    } else {
        eprintln!(
            "backup {} complete: {} .. {} on timeline {} ({} bytes stored)",
            report.key.dir(),
            m.start_lsn,
            m.stop_lsn,
            m.timeline,
            m.stored_bytes()
        );
    }
    Ok(0)
}
