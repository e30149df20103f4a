//! Command-line interface: one file per verb.

use clap::{Parser, Subcommand};

/// Continuous log archiving and point-in-time restore for PostgreSQL,
/// MySQL/MariaDB and MongoDB.
#[derive(Debug, Parser)]
#[command(name = "pitr", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {}

/// Runs the parsed command line; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {}
}
