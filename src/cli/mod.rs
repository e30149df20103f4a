//! Command-line interface: one file per verb.
//!
//! Exit codes: 0 success; 1 "not found / not (yet) archived" where a verb
//! defines it (`wal-fetch`) or a check failed (`status`, `verify`); 2 usage
//! or configuration errors; 3 any other error.

pub mod archive;
pub mod common;
pub mod wal_fetch;

use clap::{Parser, Subcommand};

/// Continuous log archiving and point-in-time restore for PostgreSQL and
/// MySQL/MariaDB: pitr connects to the database as a replica, streams its
/// transaction log into time-indexed segments in a repository (a local
/// directory or S3) and restores to any instant.
#[derive(Debug, Parser)]
#[command(name = "pitr", version, about, long_about = None)]
pub struct Cli {
    /// More log output (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream a database's transaction log into the repository continuously.
    Archive(archive::ArchiveArgs),
    /// Write one archived PostgreSQL WAL file (or .history file) to a path;
    /// made for `restore_command`. Exit status 1 when it is not archived.
    WalFetch(wal_fetch::WalFetchArgs),
}

/// Runs the parsed command line; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    common::init_logging(cli.verbose);
    match cli.command {
        Command::Archive(a) => archive::run(a).await,
        Command::WalFetch(a) => wal_fetch::run(a).await,
    }
}
