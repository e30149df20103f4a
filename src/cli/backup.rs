//! `pitr backup <postgres-url|mysql-url|mongodb-url> --repo R [--name N] [--json]`: a
//! base backup into the repository; a PostgreSQL backup succeeds once the
//! WAL making it consistent is archived too.
//!
//! SIGTERM or SIGINT stops the backup: what it stored so far is deleted,
//! one sentence says so, and the exit status is 143 (SIGTERM) or 130
//! (SIGINT), as for a process the signal ended. A second signal exits at
//! once; leftovers of a killed backup are removed by `pitr prune`.

use std::io::IsTerminal as _;
use std::sync::OnceLock;

use anyhow::anyhow;
use clap::Args;

use crate::backup::interrupt::{run_interruptible, Cleanup, Outcome, StartedBackup};
use crate::backup::mongodb::take::{take_mongo_backup, MongoBackupOptions};
use crate::backup::mysql::{take_mysql_backup, MysqlBackupOptions};
use crate::backup::postgres::take::{take_backup, BackupOptions, Progress};
use crate::cli::common::{shutdown_signal, Signal};
use crate::config::redact;
use crate::source::{url_kind, UrlKind};
use crate::storage::Repo;

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Database: postgres://user[:password]@host[:port]/db (a REPLICATION role)
    /// or mysql://user:password@host:port (mariadb:// too)
    /// or mongodb://user:password@host1,host2/?replicaSet=NAME.
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
    let kind = url_kind(&args.url);
    if !matches!(
        kind,
        Some(UrlKind::MySql | UrlKind::Postgres | UrlKind::MongoDb)
    ) {
        return Err(anyhow!(
            "base backups are available for PostgreSQL, MySQL/MariaDB and MongoDB; {:?} is not a postgres://, mysql:// or mongodb:// URL",
            redact(&args.url)
        ));
    }
    let repo = Repo::open(&args.repo).await.map_err(|e| anyhow!("{e}"))?;
    let (cancel, signal) = shutdown_signal();
    let started = StartedBackup::default();
    let part_size = args.part_size_mib.max(1) << 20;
    if kind == Some(UrlKind::MongoDb) {
        let opts = MongoBackupOptions {
            url: args.url.clone(),
            name: args.name.clone(),
            label: args.label.clone(),
            parallel: usize::from(args.parallel),
            part_size,
            started: started.clone(),
            ..Default::default()
        };
        let backup = take_mongo_backup(&opts, &repo);
        return match run_interruptible(backup, &started, &repo, &cancel).await {
            Outcome::Finished(r) => {
                crate::backup::mongodb::take::print_report(&r?, args.json);
                Ok(0)
            }
            Outcome::Interrupted(c) => Ok(interrupted(&c, &signal)),
        };
    }
    if kind == Some(UrlKind::MySql) {
        let opts = MysqlBackupOptions {
            url: args.url.clone(),
            name: args.name.clone(),
            label: args.label.clone(),
            part_size,
            started: started.clone(),
            ..Default::default()
        };
        let backup = take_mysql_backup(&opts, &repo);
        return match run_interruptible(backup, &started, &repo, &cancel).await {
            Outcome::Finished(r) => {
                crate::backup::mysql::print_report(&r?, args.json);
                Ok(0)
            }
            Outcome::Interrupted(c) => Ok(interrupted(&c, &signal)),
        };
    }
    let opts = BackupOptions {
        url: args.url.clone(),
        name: args.name.clone(),
        label: args.label.clone(),
        part_size,
        started: started.clone(),
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
    let backup = take_backup(&opts, &repo, &show);
    let report = match run_interruptible(backup, &started, &repo, &cancel).await {
        Outcome::Finished(r) => r?,
        Outcome::Interrupted(c) => {
            if tty {
                eprintln!();
            }
            return Ok(interrupted(&c, &signal));
        }
    };
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

/// Prints what became of an interrupted backup; returns the exit status
/// of a process ended by that signal (143 SIGTERM, 130 SIGINT).
fn interrupted(c: &Cleanup, signal: &OnceLock<Signal>) -> i32 {
    let sig = signal.get().copied().unwrap_or(Signal::Term);
    eprintln!("{}", c.message(sig.name()));
    sig.exit_code()
}
