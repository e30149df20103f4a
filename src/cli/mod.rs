//! Command-line interface: one file per verb.
//!
//! Exit codes: 0 success; 1 a failed check (`status`, `verify`), "not (yet)
//! archived" (`wal-fetch`, `binlog-fetch`, `oplog-fetch`) or any other error; 2 usage or
//! configuration errors. The fetch verbs exit 126 on an error other than
//! "not archived" (an unreachable repository, a corrupt segment, a source
//! that is not there): PostgreSQL aborts recovery on that status instead of
//! taking it for the end of the archive and promoting too early, and a
//! script tells "not archived" from a failure (see `restore::fetch`).

pub mod archive;
pub mod backup;
pub mod binlog_fetch;
pub mod common;
pub mod compact;
pub mod key;
pub mod oplog_fetch;
pub mod prune;
pub mod restore;
pub mod run;
pub mod status;
pub mod verify;
pub mod wal_fetch;

use clap::{Parser, Subcommand};

/// Continuous log archiving and point-in-time restore for PostgreSQL,
/// MySQL/MariaDB and MongoDB: pitr connects to the database as a replica,
/// streams its transaction log into time-indexed segments in a repository
/// (a local directory or S3) and restores to any instant.
#[derive(Debug, Parser)]
#[command(name = "pitr", version, about, long_about = None)]
pub struct Cli {
    /// More log output (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Key-encryption key of an encrypted repository (see `pitr key`):
    /// file:PATH, env:NAME or cmd:COMMAND (its output), holding 32 bytes as
    /// 64 hex digits or base64.
    #[arg(
        long,
        global = true,
        env = "PITR_KEK",
        hide_env_values = true,
        value_name = "SOURCE"
    )]
    pub kek: Option<crate::crypto::kek::KekSource>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream a database's transaction log into the repository continuously.
    Archive(archive::ArchiveArgs),
    /// Write one archived PostgreSQL WAL file (or .history file) to a path;
    /// made for `restore_command`. Exit status 1 when it is not archived, 126
    /// on any other error.
    WalFetch(wal_fetch::WalFetchArgs),
    /// Write one archived MySQL/MariaDB binlog file to a path (or --list
    /// them). Exit status 1 when it is not archived, 126 on any other error.
    BinlogFetch(binlog_fetch::BinlogFetchArgs),
    /// Write archived MongoDB oplog entries (a timestamp range) as one
    /// oplog.bson file for mongorestore --oplogReplay (or --list the
    /// archived segments). Exit status 1 when the range is not archived, 126
    /// on any other error.
    OplogFetch(oplog_fetch::OplogFetchArgs),
    /// Recoverable window, base backups, gaps and lag of each source.
    /// Exit status 1 when a gap splits the window or the lag is too high.
    Status(status::StatusArgs),
    /// Re-read and check every object of the repository (checksums,
    /// continuity, backup parts). Exit status 1 on any problem.
    Verify(verify::VerifyArgs),
    /// Run the sidecar from a config file: every source's archiver,
    /// scheduled base backups, /metrics and /healthz.
    Run(run::RunArgs),
    /// Take a base backup (PostgreSQL, MySQL/MariaDB or MongoDB) into the
    /// repository.
    Backup(backup::BackupArgs),
    /// Restore to a point in time: a PostgreSQL cluster into --target-dir, a
    /// MySQL/MariaDB or MongoDB database into the --target server.
    Restore(restore::RestoreArgs),
    /// Delete old base backups and the log only they needed.
    Prune(prune::PruneArgs),
    /// Merge small segments into larger ones and refresh the roll-up index
    /// (repository maintenance; `pitr run` does it on a schedule).
    Compact(compact::CompactArgs),
    /// Encryption at rest: encrypt a repository (init), start a new data
    /// key (rotate), move the data keys to a new key-encryption key
    /// (rewrap), or list the keys.
    #[command(subcommand)]
    Key(key::KeyCommand),
}

/// Runs the parsed command line; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    common::init_logging(cli.verbose);
    let kek = cli.kek;
    match cli.command {
        Command::Archive(a) => archive::run(a, kek).await,
        Command::WalFetch(a) => fetch_status("wal-fetch", wal_fetch::run(a, kek).await),
        Command::BinlogFetch(a) => fetch_status("binlog-fetch", binlog_fetch::run(a, kek).await),
        Command::OplogFetch(a) => fetch_status("oplog-fetch", oplog_fetch::run(a, kek).await),
        Command::Backup(a) => backup::run(a, kek).await,
        Command::Restore(a) => restore::run(a, kek).await,
        Command::Status(a) => status::run(a, kek).await,
        Command::Verify(a) => verify::run(a, kek).await,
        Command::Run(a) => run::run(a, kek).await,
        Command::Prune(a) => prune::run(a, kek).await,
        Command::Compact(a) => compact::run(a, kek).await,
        Command::Key(a) => key::run(a, kek).await,
    }
}

/// A fetch verb's error is no "not archived": it exits 126, so PostgreSQL
/// aborts recovery rather than end it early at a hole that is not there.
fn fetch_status(verb: &str, r: anyhow::Result<i32>) -> anyhow::Result<i32> {
    match r {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("pitr {verb}: error: {e:#}");
            Ok(crate::restore::fetch::FAILED)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::Cli;

    fn help(path: &[&str]) -> String {
        let mut cmd = Cli::command();
        for p in path {
            cmd = cmd
                .find_subcommand(p)
                .cloned()
                .unwrap_or_else(|| panic!("no subcommand {p}"));
        }
        cmd.render_long_help().to_string()
    }

    #[test]
    fn help_speaks_of_every_engine() {
        for path in [&[][..], &["backup"], &["restore"]] {
            let h = help(path);
            for engine in ["PostgreSQL", "MySQL/MariaDB", "MongoDB"] {
                assert!(
                    h.contains(engine),
                    "`pitr {path:?} --help` omits {engine}:\n{h}"
                );
            }
        }
    }
}
