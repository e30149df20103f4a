//! `pitr binlog-fetch --repo R [--name N] FILE DEST`: writes one archived
//! MySQL/MariaDB binlog file, rebuilt from verified segments, for
//! `mysqlbinlog` / `mariadb-binlog` or a server to apply. Exit 0 = written,
//! 1 = that file is not archived, other = error. `--list` prints the
//! archived files with their first/last commit times instead.

use std::path::PathBuf;

use anyhow::anyhow;
use clap::Args;
use pitr_segment::TimestampMicros;

use crate::archive::identity::resolve_source;
use crate::restore::binlog_fetch::{fetch_binlog_file, list_binlog_files, BinlogFetchOutcome};
use crate::storage::Repo;

#[derive(Debug, Args)]
pub struct BinlogFetchArgs {
    /// Binlog file name, e.g. binlog.000003.
    #[arg(required_unless_present = "list")]
    pub file: Option<String>,
    /// Where to write it.
    #[arg(required_unless_present = "list")]
    pub dest: Option<PathBuf>,
    /// Repository: a directory path, file://PATH, or s3://bucket/prefix.
    #[arg(long, env = "PITR_REPO", default_value = "./pitr-repo")]
    pub repo: String,
    /// Source name; may be left out when the repository holds one source.
    #[arg(long)]
    pub name: Option<String>,
    /// Print the archived binlog files (name, archived bytes, first and
    /// last commit time) instead of fetching one.
    #[arg(long, conflicts_with_all = ["file", "dest"])]
    pub list: bool,
    /// Segments downloaded at once.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
}

fn show_time(t: Option<TimestampMicros>) -> String {
    t.and_then(|t| chrono::DateTime::from_timestamp_micros(t.0))
        .map(|d| d.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
        .unwrap_or_else(|| "-".into())
}

pub async fn run(args: BinlogFetchArgs) -> anyhow::Result<i32> {
    let repo = Repo::open_existing(&args.repo).await?;
    let source = resolve_source(&repo, args.name.as_deref()).await?;
    if args.list {
        for f in list_binlog_files(&repo, &source).await? {
            println!(
                "{}\t{}\t{}\t{}{}",
                f.name,
                f.end,
                show_time(f.first_commit),
                show_time(f.last_commit),
                if f.partial { "\tpartial" } else { "" }
            );
        }
        return Ok(0);
    }
    let (Some(file), Some(dest)) = (args.file, args.dest) else {
        return Err(anyhow!(
            "give a binlog file name and a destination, or --list"
        ));
    };
    match fetch_binlog_file(&repo, &source, &file, &dest, args.parallel).await? {
        BinlogFetchOutcome::Written { bytes, complete } => {
            tracing::debug!(
                "wrote {} ({bytes} bytes, {})",
                dest.display(),
                if complete {
                    "complete"
                } else {
                    "still being written on the server"
                }
            );
            Ok(0)
        }
        BinlogFetchOutcome::NotArchived(why) => {
            eprintln!("pitr binlog-fetch: {why}");
            Ok(1)
        }
    }
}
