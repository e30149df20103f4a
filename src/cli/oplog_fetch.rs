//! `pitr oplog-fetch --repo R [--name N] [--from SECS:INC] [--to SECS:INC]
//! DEST`: writes the archived MongoDB oplog entries with `from <= ts <= to`
//! (defaults: the whole archive) as one `oplog.bson` file, exactly the
//! stored bytes back to back, for `mongorestore --oplogReplay`. Exit 0 =
//! written, 1 = the range is not wholly archived (the message names the
//! hole or gap), 126 = any other error. `--list` prints the archived segments.

use std::path::PathBuf;

use anyhow::anyhow;
use clap::Args;
use pitr_mongodb::OplogTs;

use crate::engine::mongodb::MongoDb;
use crate::restore::fetch::{self, list_time};
use crate::restore::oplog_fetch::{fetch_oplog, list_oplog, stretch_bounds, OplogFetchOutcome};

#[derive(Debug, Args)]
pub struct OplogFetchArgs {
    /// Where to write the oplog.bson file.
    #[arg(required_unless_present = "list")]
    pub dest: Option<PathBuf>,
    /// Repository: a directory path, file://PATH, or s3://bucket/prefix.
    #[arg(long, env = "PITR_REPO", default_value = "./pitr-repo")]
    pub repo: String,
    /// Source name; may be left out when the repository holds one source.
    #[arg(long)]
    pub name: Option<String>,
    /// First oplog timestamp to write, SECS:INC (default: the oldest archived).
    #[arg(long)]
    pub from: Option<OplogTs>,
    /// Last oplog timestamp to write, SECS:INC, inclusive (default: the newest archived).
    #[arg(long)]
    pub to: Option<OplogTs>,
    /// Print the archived segments (term, first and last timestamp, first
    /// and last wall time, stored bytes) instead of fetching.
    #[arg(long, conflicts_with_all = ["dest", "from", "to"])]
    pub list: bool,
    /// Segments downloaded at once.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
}

pub async fn run(
    args: OplogFetchArgs,
    kek: Option<crate::crypto::kek::KekSource>,
) -> anyhow::Result<i32> {
    let (repo, source) =
        fetch::open(&args.repo, args.name.as_deref(), &MongoDb, kek.as_ref()).await?;
    if args.list {
        for s in list_oplog(&repo, &source).await? {
            let (term, first, last) = stretch_bounds(&s);
            println!(
                "term {term}\t{first}\t{last}\t{}\t{}\t{}",
                list_time(s.first_wall),
                list_time(s.last_wall),
                s.stored_bytes
            );
        }
        return Ok(0);
    }
    let Some(dest) = args.dest else {
        return Err(anyhow!("give a destination file, or --list"));
    };
    match fetch_oplog(&repo, &source, args.from, args.to, &dest, args.parallel).await? {
        OplogFetchOutcome::Written { entries, bytes } => {
            tracing::info!(
                "wrote {} ({entries} entries, {bytes} bytes)",
                dest.display()
            );
            Ok(0)
        }
        OplogFetchOutcome::NotArchived(why) => {
            eprintln!("pitr oplog-fetch: {why}");
            Ok(fetch::NOT_ARCHIVED)
        }
    }
}
