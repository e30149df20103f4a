//! `pitr binlog-fetch --repo R [--name N] FILE DEST`: writes one archived
//! MySQL/MariaDB binlog file, rebuilt from verified segments, for
//! `mysqlbinlog` / `mariadb-binlog` or a server to apply. Exit 0 = written,
//! 1 = that file is not archived, 126 = any other error. `--list` prints the
//! archived files with their first/last commit times instead.

use std::path::PathBuf;

use anyhow::anyhow;
use clap::Args;

use crate::engine::mysql::MySql;
use crate::restore::binlog_fetch::{fetch_binlog_file, list_binlog_files, BinlogFetchOutcome};
use crate::restore::fetch::{self, list_time};

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

pub async fn run(
    args: BinlogFetchArgs,
    kek: Option<crate::crypto::kek::KekSource>,
) -> anyhow::Result<i32> {
    let (repo, source) =
        fetch::open(&args.repo, args.name.as_deref(), &MySql, kek.as_ref()).await?;
    if args.list {
        for f in list_binlog_files(&repo, &source).await? {
            println!(
                "{}\t{}\t{}\t{}{}",
                f.name,
                f.end,
                list_time(f.first_commit),
                list_time(f.last_commit),
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
            Ok(fetch::NOT_ARCHIVED)
        }
    }
}
