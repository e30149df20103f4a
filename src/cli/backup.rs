//! `pitr backup <postgres-url|mysql-url|mongodb-url> --repo R [--name N] [--json]`: a
//! base backup into the repository; a PostgreSQL backup succeeds once the
//! WAL making it consistent is archived too.
//!
//! SIGTERM or SIGINT stops the backup: what it stored so far is deleted,
//! one sentence says so, and the exit status is 143 (SIGTERM) or 130
//! (SIGINT), as for a process the signal ended. A second signal exits at
//! once; leftovers of a killed backup are removed by `pitr prune`.

use std::sync::OnceLock;

use anyhow::anyhow;
use clap::Args;

use crate::backup::interrupt::{run_interruptible, Cleanup, Outcome};
use crate::cli::common::{shutdown_signal, Signal};
use crate::config::redact;
use crate::engine::{self, BackupRequest};
use crate::storage::Repo;

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Database: postgres://user[:password]@host[:port]/db (a REPLICATION role)
    /// or mysql://user:password@host:port (mariadb:// too)
    /// or mongodb://user:password@host1,host2/?replicaSet=NAME.
    pub url: String,
    /// Read the database password from this file (kept off the command line,
    /// where `ps` shows it); the URL then names the user without a password.
    #[arg(long, env = "PITR_PASSWORD_FILE")]
    pub password_file: Option<std::path::PathBuf>,
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
    /// MySQL/MariaDB and MongoDB: tables or collections dumped at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: u16,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(
    args: BackupArgs,
    kek: Option<crate::crypto::kek::KekSource>,
) -> anyhow::Result<i32> {
    let engine = engine::by_url(&args.url).ok_or_else(|| {
        anyhow!(
            "base backups are available for PostgreSQL, MySQL/MariaDB and MongoDB; {:?} is not a postgres://, mysql:// or mongodb:// URL",
            redact(&args.url)
        )
    })?;
    let url = crate::cli::common::with_password_file(
        args.url.clone(),
        args.password_file.as_deref(),
        "--password-file",
    )?;
    let repo = Repo::open(&args.repo).await?;
    crate::crypto::unlock(&repo, kek.as_ref(), crate::crypto::Access::Write).await?;
    let (cancel, signal) = shutdown_signal();
    let req = BackupRequest {
        part_size: args.part_size_mib.max(1) << 20,
        parallel: usize::from(args.parallel),
        progress: true,
        ..BackupRequest::new(url, args.name, args.label)
    };
    let started = req.started.clone();
    let backup = engine.backup(req, repo.clone());
    let report = match run_interruptible(backup, &started, &repo, &cancel).await {
        Outcome::Finished(r) => r?,
        Outcome::Interrupted(c) => return Ok(interrupted(&c, &signal)),
    };
    if args.json {
        println!("{}", report.json);
    } else {
        eprintln!("{}", report.summary);
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
