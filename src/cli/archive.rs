//! `pitr archive <db-url> --repo <repo>`: continuous log streaming, by the engine of the URL.

use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use clap::Args;

use crate::archive::lease::LeaseOptions;
use crate::archive::progress::ArchiveProgress;
use crate::cli::common::{parse_duration, shutdown_token};
use crate::config::redact;
use crate::engine::{self, ArchiveRequest};
use crate::storage::Repo;

#[derive(Debug, Args)]
pub struct ArchiveArgs {
    /// Database to archive: postgres://user[:password]@host[:port]/db (or a
    /// libpq key=value string; PG* variables and ~/.pgpass apply).
    pub url: String,
    /// Read the database password from this file (kept off the command line,
    /// where `ps` shows it); the URL then names the user without a password.
    #[arg(long, env = "PITR_PASSWORD_FILE")]
    pub password_file: Option<std::path::PathBuf>,
    /// Repository: a directory path, file://PATH, or s3://bucket/prefix.
    #[arg(long, env = "PITR_REPO", default_value = "./pitr-repo")]
    pub repo: String,
    /// Source name in the repository (default: derived from the server's
    /// system identifier, e.g. pg-7312345678901234567).
    #[arg(long)]
    pub name: Option<String>,
    /// Physical replication slot to use (created if missing; default pitr_<name>).
    #[arg(long)]
    pub slot: Option<String>,
    /// Store a segment at least this often while WAL flows: the recovery
    /// point objective.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub flush_interval: Duration,
    /// Uploads in flight at once.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// zstd level of stored segments.
    #[arg(long, default_value_t = 1)]
    pub zstd_level: i32,
    /// MongoDB: where a new archive starts: `oldest` (the oldest entry the
    /// oplog holds, the default), `now`, or an oplog timestamp SECS:INC.
    /// Ignored once the source has an archive (it resumes from its tail).
    #[arg(long)]
    pub start_at: Option<crate::source::mongodb::StartAt>,
    /// MySQL/MariaDB: server id to register with as a replica (default: a
    /// stable value derived from the source name, in 0x70000000..0x7fffffff).
    #[arg(long)]
    pub server_id: Option<u32>,
    /// Time to live of the writer lease this archiver holds in the
    /// repository (renewed every third of it). Another archiver of the same
    /// source takes over this long after this one stops renewing.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub lease_ttl: Duration,
    /// When another archiver holds the writer lease of this source, exit 1
    /// naming it instead of waiting to take over.
    #[arg(long)]
    pub no_wait: bool,
    /// Declare that no other archiver writes this source: required (and
    /// only used) when the storage server ignores conditional writes.
    #[arg(long)]
    pub single_writer: bool,
}

impl ArchiveArgs {
    fn lease(&self) -> LeaseOptions {
        LeaseOptions {
            ttl: self.lease_ttl,
            wait: !self.no_wait,
            single_writer: self.single_writer,
        }
    }
}

pub async fn run(
    args: ArchiveArgs,
    kek: Option<crate::crypto::kek::KekSource>,
) -> anyhow::Result<i32> {
    let engine = engine::by_url(&args.url).ok_or_else(|| {
        anyhow!(
            "cannot tell which database {:?} is: use a postgres://, mysql://, mariadb:// or mongodb:// URL",
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
    let lease = args.lease();
    let req = ArchiveRequest {
        slot: args.slot,
        flush_interval: args.flush_interval,
        zstd_level: args.zstd_level,
        parallelism: args.parallel,
        server_id: args.server_id,
        start_at: args.start_at,
        ..ArchiveRequest::new(url, args.name, lease)
    };
    let progress = Arc::new(ArchiveProgress::default());
    engine
        .archive(req, repo, shutdown_token(), progress)
        .await?;
    Ok(0)
}
