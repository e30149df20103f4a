//! One restore request for every engine: what `pitr restore` was asked, with the repository
//! opened once and the source resolved. The CLI builds it and hands it to the source's engine
//! ([`crate::engine::EngineOps::restore`]); each engine plans, pins (through
//! [`crate::restore::session`]) and restores from it.
//!
//! A target is one of [`RestoreTarget`]; which kinds an engine serves is its
//! [`crate::engine::EngineOps::restore_targets`], checked before any engine code runs, so that
//! `--to-lsn` against a MySQL source is refused in one sentence naming the targets that work.

use std::path::PathBuf;
use std::time::Duration;

use crate::archive::keys::SourceName;
use crate::storage::Repo;

/// The point a restore stops at, as the user wrote it (each engine parses its own syntax).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreTarget {
    /// `--latest`: everything archived.
    Latest,
    /// `--to TIME`.
    Time(String),
    /// `--to-lsn X/Y` (PostgreSQL).
    Lsn(String),
    /// `--to-name NAME`, a restore point (PostgreSQL).
    Name(String),
    /// `--to-gtid SET` (MySQL/MariaDB).
    Gtid(String),
    /// `--to-position FILE:POS` (MySQL/MariaDB).
    Position(String),
    /// `--to-ts SECONDS:INCREMENT` (MongoDB).
    Ts(String),
}

/// The kind of a [`RestoreTarget`], without its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    Latest,
    Time,
    Lsn,
    Name,
    Gtid,
    Position,
    Ts,
}

impl TargetKind {
    /// The command-line option that asks for this kind.
    pub fn flag(self) -> &'static str {
        match self {
            TargetKind::Latest => "--latest",
            TargetKind::Time => "--to TIME",
            TargetKind::Lsn => "--to-lsn X/Y",
            TargetKind::Name => "--to-name NAME",
            TargetKind::Gtid => "--to-gtid SET",
            TargetKind::Position => "--to-position FILE:POS",
            TargetKind::Ts => "--to-ts SECONDS:INCREMENT",
        }
    }
}

impl RestoreTarget {
    pub fn kind(&self) -> TargetKind {
        match self {
            RestoreTarget::Latest => TargetKind::Latest,
            RestoreTarget::Time(_) => TargetKind::Time,
            RestoreTarget::Lsn(_) => TargetKind::Lsn,
            RestoreTarget::Name(_) => TargetKind::Name,
            RestoreTarget::Gtid(_) => TargetKind::Gtid,
            RestoreTarget::Position(_) => TargetKind::Position,
            RestoreTarget::Ts(_) => TargetKind::Ts,
        }
    }
}

/// Where the restored database goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreInto {
    /// `--dry-run` without a destination: plan only.
    Nowhere,
    /// `--target-dir DIR`: a PostgreSQL data directory.
    Dir(PathBuf),
    /// `--target URL`: a running server the restore loads into.
    Server(String),
}

/// PostgreSQL's own restore settings.
#[derive(Debug, Clone)]
pub struct PgRestoreOptions {
    /// `--timeline`: `latest`, `current` or a number.
    pub timeline: String,
    /// `--recover`: run the recovery now with local binaries.
    pub recover: bool,
    pub pg_bin: Option<PathBuf>,
    /// `--owner`: who owns the restored directory and runs PostgreSQL.
    pub owner: Option<String>,
    pub recover_timeout: Duration,
}

/// How a logical restore loads into its target server (MySQL/MariaDB, MongoDB).
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// `--replace`: drop the backup's databases on the target first.
    pub replace: bool,
    /// `--parallel`: connections used to load and to apply.
    pub parallel: usize,
    /// `--skip-target-binlog` (MySQL/MariaDB).
    pub skip_target_binlog: bool,
}

/// One restore, as every engine receives it.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    /// The repository, opened once for the whole restore.
    pub repo: Repo,
    /// The repository as the user named it (PostgreSQL's `restore_command` opens it again).
    pub repo_arg: String,
    /// The key-encryption key given (PostgreSQL's `restore_command` needs it too).
    pub kek: Option<crate::crypto::kek::KekSource>,
    pub source: SourceName,
    pub target: RestoreTarget,
    pub into: RestoreInto,
    /// Print the plan and stop.
    pub dry_run: bool,
    /// JSON on stdout.
    pub json: bool,
    /// Time to live of the restore's pin.
    pub pin_ttl: Duration,
    pub pg: PgRestoreOptions,
    pub load: LoadOptions,
}

impl RestoreRequest {
    /// The `--target` URL of a server restore, or the sentence asking for one.
    pub fn server_url(&self, example: &str) -> anyhow::Result<&str> {
        match &self.into {
            RestoreInto::Server(u) => Ok(u),
            _ => Err(anyhow::anyhow!(
                "--target {example} is required (or use --dry-run)"
            )),
        }
    }
}
