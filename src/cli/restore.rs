//! `pitr restore --repo R [--name N] (--to TIME | --to-lsn X/Y | --to-name
//! NAME | --latest | --to-position | --to-gtid | --to-ts) (--target-dir DIR
//! | --target URL) [--dry-run] [--recover]`: parses the options into one
//! [`RestoreRequest`], opens the repository once, picks the source's engine
//! and hands the request to it. No engine logic lives here.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::anyhow;
use clap::Args;

use crate::archive::identity::{read_identity, resolve_source};
use crate::archive::keys::SourceName;
use crate::engine::{self, EngineOps};
use crate::restore::request::{
    LoadOptions, PgRestoreOptions, RestoreInto, RestoreRequest, RestoreTarget, TargetKind,
};
use crate::storage::Repo;

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("restore_target").required(true).args(["to", "to_lsn", "to_name", "latest", "to_gtid", "to_position", "to_ts"])))]
pub struct RestoreArgs {
    /// Repository: a directory path, file://PATH, or s3://bucket/prefix.
    #[arg(long, env = "PITR_REPO", default_value = "./pitr-repo")]
    pub repo: String,
    /// Source name; may be left out when the repository holds one source.
    #[arg(long)]
    pub name: Option<String>,
    /// Target time `YYYY-MM-DD HH:MM:SS[.ffffff][Z|+HH:MM]` (local time
    /// without an offset): every transaction committed at or before it, none after
    /// (MariaDB records whole seconds: every transaction of the target's second).
    #[arg(long)]
    pub to: Option<String>,
    /// Target WAL position X/Y.
    #[arg(long)]
    pub to_lsn: Option<String>,
    /// Target restore point (pg_create_restore_point).
    #[arg(long)]
    pub to_name: Option<String>,
    /// Everything archived.
    #[arg(long)]
    pub latest: bool,
    /// PostgreSQL: directory to restore into (must be empty or missing).
    #[arg(long, conflicts_with = "target")]
    pub target_dir: Option<PathBuf>,
    /// recovery_target_timeline.
    #[arg(long, default_value = "latest")]
    pub timeline: String,
    /// Print the plan and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Run the recovery now with local PostgreSQL binaries, then stop the server.
    #[arg(long)]
    pub recover: bool,
    /// Directory of the PostgreSQL binaries for --recover.
    #[arg(long)]
    pub pg_bin: Option<PathBuf>,
    /// When running as root: the user that owns the restored directory and runs PostgreSQL.
    #[arg(long)]
    pub owner: Option<String>,
    /// --recover fails (and stops the server) when recovery takes longer.
    #[arg(long, default_value = "1h", value_parser = crate::cli::common::parse_duration)]
    pub recover_timeout: Duration,
    /// Time to live of the restore's pin (renewed every third of it while
    /// the restore runs): prune and compaction keep what it covers.
    #[arg(long, default_value = "5m", value_parser = crate::cli::common::parse_duration)]
    pub pin_ttl: Duration,
    /// JSON output on stdout.
    #[arg(long)]
    pub json: bool,
    /// MySQL/MariaDB: server to restore into, mysql://user:password@host:port.
    #[arg(long)]
    pub target: Option<String>,
    /// MySQL/MariaDB, MongoDB: read the --target server's password from this file
    /// (kept off the command line); the URL then names the user without a password.
    #[arg(long, env = "PITR_TARGET_PASSWORD_FILE")]
    pub target_password_file: Option<PathBuf>,
    /// MySQL/MariaDB: stop after these GTIDs (MariaDB d-s-n,...; MySQL uuid:1-n,...).
    #[arg(long)]
    pub to_gtid: Option<String>,
    /// MySQL/MariaDB: every transaction ending at or before FILE:POS.
    #[arg(long)]
    pub to_position: Option<String>,
    /// MongoDB: every oplog entry with ts at or before SECONDS:INCREMENT, none after.
    #[arg(long)]
    pub to_ts: Option<String>,
    /// MySQL/MariaDB: drop the backup's databases on the target first.
    #[arg(long)]
    pub replace: bool,
    /// MySQL/MariaDB: connections used to load the base backup's tables and
    /// to apply the binlog (transactions that change different rows run at
    /// the same time); 1 applies one transaction after another.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: u16,
    /// MySQL/MariaDB: the target does not write the restore to its own
    /// binlog (SET SESSION sql_log_bin=0; faster): its binlog and GTID state
    /// then record nothing of the restored transactions.
    #[arg(long)]
    pub skip_target_binlog: bool,
}

pub async fn run(
    args: RestoreArgs,
    kek: Option<crate::crypto::kek::KekSource>,
) -> anyhow::Result<i32> {
    let target = target_of(&args);
    let into = match (&args.target_dir, &args.target) {
        (Some(d), _) => RestoreInto::Dir(d.clone()),
        (None, Some(u)) => RestoreInto::Server(crate::cli::common::with_password_file(
            u.clone(),
            args.target_password_file.as_deref(),
            "--target-password-file",
        )?),
        (None, None) => RestoreInto::Nowhere,
    };
    let repo = Repo::open_existing(&args.repo).await?;
    crate::crypto::unlock(&repo, kek.as_ref(), crate::crypto::Access::Read).await?;
    let source = resolve_source(&repo, args.name.as_deref()).await?;
    let recorded = read_identity(&repo, &source)
        .await?
        .and_then(|id| engine::by_code(id.engine));
    let engine = choose_engine(&source, recorded, &into, target.kind())?;
    let req = RestoreRequest {
        repo,
        repo_arg: args.repo,
        kek,
        source,
        target,
        into,
        dry_run: args.dry_run,
        json: args.json,
        pin_ttl: args.pin_ttl,
        pg: PgRestoreOptions {
            timeline: args.timeline,
            recover: args.recover,
            pg_bin: args.pg_bin,
            owner: args.owner,
            recover_timeout: args.recover_timeout,
        },
        load: LoadOptions {
            replace: args.replace,
            parallel: usize::from(args.parallel),
            skip_target_binlog: args.skip_target_binlog,
        },
    };
    engine.restore(req).await
}

/// The one target clap let through (the options form a required group).
fn target_of(a: &RestoreArgs) -> RestoreTarget {
    let given = [
        a.to.clone().map(RestoreTarget::Time),
        a.to_lsn.clone().map(RestoreTarget::Lsn),
        a.to_name.clone().map(RestoreTarget::Name),
        a.to_gtid.clone().map(RestoreTarget::Gtid),
        a.to_position.clone().map(RestoreTarget::Position),
        a.to_ts.clone().map(RestoreTarget::Ts),
    ];
    given
        .into_iter()
        .flatten()
        .next()
        .unwrap_or(RestoreTarget::Latest)
}

/// The engine that restores `source`: the one its identity records; before any identity
/// exists, the one of the `--target` URL, else the one whose target option was given, else
/// PostgreSQL. A `--target` of another engine, or a target the engine does not serve, is
/// refused before anything is read.
fn choose_engine(
    source: &SourceName,
    recorded: Option<&'static dyn EngineOps>,
    into: &RestoreInto,
    kind: TargetKind,
) -> anyhow::Result<&'static dyn EngineOps> {
    let of_target = match into {
        RestoreInto::Server(u) => Some(engine::by_url(u).ok_or_else(|| {
            anyhow!(
                "--target {} is not a database URL pitr restores into; use mysql://, mariadb:// or mongodb:// (PostgreSQL restores into --target-dir DIR)",
                crate::redact::redact(u)
            )
        })?),
        _ => None,
    };
    let by_kind = || match kind {
        TargetKind::Gtid | TargetKind::Position => &engine::mysql::MySql as &dyn EngineOps,
        TargetKind::Ts => &engine::mongodb::MongoDb,
        _ => &engine::postgres::Postgres,
    };
    let chosen = match (recorded, of_target) {
        (Some(r), Some(t)) if r.name() != t.name() => {
            return Err(anyhow!(
                "source {} is a {} source but --target is a {} URL; restore into a server of the source's kind",
                source.as_str(),
                r.name(),
                t.name()
            ))
        }
        (Some(r), _) => r,
        (None, Some(t)) => t,
        (None, None) => by_kind(),
    };
    if chosen.name() == "postgres" && matches!(into, RestoreInto::Server(_)) {
        return Err(anyhow!(
            "source {} is a PostgreSQL source: it restores into a data directory, give --target-dir DIR instead of --target",
            source.as_str()
        ));
    }
    if !chosen.restore_targets().contains(&kind) {
        let serves: Vec<&str> = chosen.restore_targets().iter().map(|k| k.flag()).collect();
        return Err(anyhow!(
            "{} is not a target for source {} ({}); use one of {}",
            kind.flag(),
            source.as_str(),
            chosen.name(),
            serves.join(", ")
        ));
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name() -> SourceName {
        SourceName::new("shop").expect("valid name")
    }

    fn pick(
        recorded: Option<&'static dyn EngineOps>,
        into: RestoreInto,
        kind: TargetKind,
    ) -> Result<&'static str, String> {
        choose_engine(&name(), recorded, &into, kind)
            .map(|e| e.name())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_recorded_engine_decides() {
        let mysql: &'static dyn EngineOps = &engine::mysql::MySql;
        let pg: &'static dyn EngineOps = &engine::postgres::Postgres;
        assert_eq!(
            pick(Some(mysql), RestoreInto::Nowhere, TargetKind::Time),
            Ok("mysql")
        );
        assert_eq!(
            pick(Some(pg), RestoreInto::Nowhere, TargetKind::Latest),
            Ok("postgres")
        );
        // Before any identity exists: the target URL, then the target option.
        let url = RestoreInto::Server("mongodb://h/?replicaSet=rs0".into());
        assert_eq!(pick(None, url, TargetKind::Latest), Ok("mongodb"));
        assert_eq!(
            pick(None, RestoreInto::Nowhere, TargetKind::Gtid),
            Ok("mysql")
        );
        assert_eq!(
            pick(None, RestoreInto::Nowhere, TargetKind::Ts),
            Ok("mongodb")
        );
        assert_eq!(
            pick(None, RestoreInto::Dir("/d".into()), TargetKind::Time),
            Ok("postgres")
        );
    }

    #[test]
    fn a_target_of_another_engine_is_refused_in_one_sentence() {
        let mysql: &'static dyn EngineOps = &engine::mysql::MySql;
        let e = pick(Some(mysql), RestoreInto::Nowhere, TargetKind::Lsn).unwrap_err();
        assert!(e.contains("--to-lsn") && e.contains("--to-gtid SET"), "{e}");
        let e = pick(
            Some(mysql),
            RestoreInto::Server("mongodb://u:secret@h/".into()),
            TargetKind::Latest,
        )
        .unwrap_err();
        assert!(
            e.contains("mysql source") && e.contains("mongodb URL"),
            "{e}"
        );
        let pg: &'static dyn EngineOps = &engine::postgres::Postgres;
        let e = pick(
            Some(pg),
            RestoreInto::Server("postgres://u:secret@h/db".into()),
            TargetKind::Latest,
        )
        .unwrap_err();
        assert!(e.contains("--target-dir"), "{e}");
        let e = pick(
            None,
            RestoreInto::Server("http://u:secret@h".into()),
            TargetKind::Latest,
        )
        .unwrap_err();
        assert!(
            e.contains("not a database URL") && !e.contains("secret"),
            "{e}"
        );
    }
}
