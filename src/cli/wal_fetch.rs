//! `pitr wal-fetch --repo R [--name N] WALFILE DEST`: PostgreSQL's
//! `restore_command`. Exit 0 = written, 1 = not (yet) archived, other = error.

use std::path::PathBuf;

use anyhow::anyhow;
use clap::Args;

use crate::archive::keys::SourceName;
use crate::restore::wal_fetch::{fetch_wal_file, FetchOptions, FetchOutcome};
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
}

pub async fn run(args: WalFetchArgs) -> anyhow::Result<i32> {
    let repo = Repo::open(&args.repo).await.map_err(|e| anyhow!("{e}"))?;
    let source = resolve_source(&repo, args.name.as_deref()).await?;
    let opts = FetchOptions {
        wal_segment_size: args.wal_segment_size,
        parallel: args.parallel,
        partial: args.partial,
    };
    match fetch_wal_file(&repo, &source, &args.wal_file, &args.dest, &opts).await? {
        FetchOutcome::Written { bytes } => {
            tracing::debug!("wrote {} ({bytes} bytes)", args.dest.display());
            Ok(0)
        }
        FetchOutcome::NotArchived(why) => {
            eprintln!("pitr wal-fetch: {why}");
            Ok(1)
        }
    }
}

/// The `--name` given, or the only source in the repository.
pub async fn resolve_source(repo: &Repo, name: Option<&str>) -> anyhow::Result<SourceName> {
    if let Some(n) = name {
        return SourceName::new(n).map_err(|e| anyhow!("invalid --name: {e}"));
    }
    let dirs = repo.list_dirs("").await.map_err(|e| anyhow!("{e}"))?;
    let mut names: Vec<String> = dirs
        .into_iter()
        .map(|d| d.trim_end_matches('/').to_string())
        .filter(|d| !d.starts_with('.') && SourceName::new(d).is_ok())
        .collect();
    names.sort();
    match names.len() {
        1 => SourceName::new(&names[0]).map_err(|e| anyhow!("{e}")),
        0 => Err(anyhow!(
            "the repository holds no source yet; check --repo or run `pitr archive` first"
        )),
        _ => Err(anyhow!(
            "the repository holds several sources ({}); choose one with --name",
            names.join(", ")
        )),
    }
}
