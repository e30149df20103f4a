//! `pitr restore --repo R [--name N] (--to TIME | --to-lsn X/Y | --to-name
//! NAME | --latest | --to-position | --to-gtid | --to-ts) (--target-dir DIR
//! | --target URL) [--dry-run] [--recover]`: PostgreSQL plans, then unpacks a
//! base backup and configures recovery to the target; MySQL/MariaDB and
//! MongoDB restores are handed to their engine's module.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use clap::Args;

use crate::archive::catalog::Catalog;
use crate::archive::identity::resolve_source;
use crate::archive::keys::BackupKey;
use crate::backup::postgres::manifest::{list_backups, BackupManifest};
use crate::restore::owner::{self, Owner};
use crate::restore::postgres as pg;
use crate::restore::postgres::plan::{plan, plan_on, timeline_path, Plan, Target};
use crate::restore::postgres::planned;
use crate::restore::postgres::recover::{self as pg_recover, RecoverOptions};
use crate::restore::session;
use crate::restore::time::{parse_time, utc_text};
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
    /// without an offset): every transaction committed at or before it, none after.
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
    /// Directory to restore into (must be empty or missing).
    #[arg(long)]
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

pub async fn run(args: RestoreArgs) -> anyhow::Result<i32> {
    let mongo_target = args
        .target
        .as_deref()
        .is_some_and(|t| crate::source::url_kind(t) == Some(crate::source::UrlKind::MongoDb));
    let mongo = mongo_target
        || args.to_ts.is_some()
        || (args.target.is_none()
            && source_engine(&args.repo, args.name.as_deref()).await
                == Some(pitr_segment::Engine::MongoDb));
    if mongo {
        return crate::restore::mongodb::run_mongo(crate::restore::mongodb::MongoRestoreArgs {
            repo: args.repo,
            name: args.name,
            to: args.to,
            to_ts: args.to_ts,
            latest: args.latest,
            target: args.target,
            dry_run: args.dry_run,
            replace: args.replace,
            json: args.json,
            parallel: usize::from(args.parallel),
            pin_ttl: args.pin_ttl,
        })
        .await;
    }
    let mysql_target = args
        .target
        .as_deref()
        .is_some_and(|t| crate::source::url_kind(t) == Some(crate::source::UrlKind::MySql));
    // The engine of the source decides when no --target says it.
    let mysql_source = if mysql_target || args.target.is_some() {
        false
    } else {
        mysql_source(&args.repo, args.name.as_deref()).await
    };
    if mysql_target || mysql_source || args.to_gtid.is_some() || args.to_position.is_some() {
        return crate::restore::mysql::run_mysql(crate::restore::mysql::MysqlRestoreArgs {
            repo: args.repo,
            name: args.name,
            to: args.to,
            to_gtid: args.to_gtid,
            to_position: args.to_position,
            latest: args.latest,
            target: args.target,
            dry_run: args.dry_run,
            replace: args.replace,
            json: args.json,
            parallel: usize::from(args.parallel),
            skip_binlog: args.skip_target_binlog,
            pin_ttl: args.pin_ttl,
        })
        .await;
    }
    let target = if let Some(t) = &args.to {
        let t = parse_time(t)?;
        eprintln!("restoring to {}", utc_text(t));
        Target::Time(t)
    } else if let Some(l) = &args.to_lsn {
        Target::Lsn(
            l.parse()
                .map_err(|_| anyhow!("invalid --to-lsn {l:?}: expected X/Y"))?,
        )
    } else if let Some(n) = &args.to_name {
        Target::Name(n.clone())
    } else {
        Target::Latest
    };
    if args.timeline != "latest"
        && args.timeline != "current"
        && args.timeline.parse::<u32>().is_err()
    {
        return Err(anyhow!(
            "invalid --timeline {:?}: latest, current or a number",
            args.timeline
        ));
    }
    let repo = Repo::open_existing(&args.repo)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let source = resolve_source(&repo, args.name.as_deref()).await?;
    let catalog = Catalog::load(&repo, &source)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let backups = list_backups(&repo, &source, catalog.backups()).await?;
    let p = match target_timeline(&catalog, &args.timeline) {
        Some(tli) => {
            let history = load_history(&repo, &catalog, tli).await?;
            plan_on(
                &catalog,
                &backups,
                &target,
                &timeline_path(tli, history.as_deref()),
            )?
        }
        None => plan(&catalog, &backups, &target)?,
    };
    if args.dry_run {
        if args.json {
            println!("{}", serde_json::to_string_pretty(&p)?);
        } else {
            println!(
                "restore {} to {}: base backup {} ({} .. {}, timeline {}), WAL {} .. {} in {} segments",
                p.source, p.target, p.backup_dir, p.backup_start_lsn, p.backup_stop_lsn, p.timeline,
                p.wal_from, p.wal_to, p.segments.len()
            );
        }
        return Ok(0);
    }
    let dir = args
        .target_dir
        .clone()
        .ok_or_else(|| anyhow!("--target-dir is required (or use --dry-run)"))?;
    let dir = std::path::absolute(&dir)?;
    let (key, manifest) = backups
        .iter()
        .find(|(k, _)| k.dir() == p.backup_dir)
        .ok_or_else(|| anyhow!("planned backup vanished"))?;
    // Before anything is unpacked: who runs PostgreSQL, and can it run pitr?
    let owner = owner::resolve(&dir, args.owner.as_deref())?;
    let exe = std::env::current_exe().context("locating the pitr binary")?;
    let (exe, bin_copy) = owner::runnable_binary(&exe, &dir, owner.as_ref())?;
    let planned = session::Planned {
        source: &source,
        target: &p.target,
        backup: key,
        segments: &p.segments,
        open_ended: matches!(target, Target::Latest),
    };
    let guard = session::pin(&repo, planned, args.pin_ttl).await?;
    let pin_id = guard.id().await;
    let ctx = PgRestore {
        args: &args,
        repo: &repo,
        plan: &p,
        target: &target,
        key,
        manifest,
        dir: &dir,
        owner: owner.as_ref(),
        exe: &exe,
        pin_id: &pin_id,
    };
    let res = execute_pg(&ctx).await;
    let remove_copy = || {
        if let Some(c) = &bin_copy {
            let _ = std::fs::remove_dir_all(c);
        }
    };
    match res {
        Ok(out) => {
            if args.recover {
                remove_copy();
                guard.release().await?;
            } else {
                // The server the user starts renews it through wal-fetch.
                guard.detach();
                if let Some(c) = &bin_copy {
                    eprintln!(
                        "remove {} once recovery has finished (restore_command runs the pitr copy in it)",
                        c.display()
                    );
                }
            }
            if args.json {
                println!("{out}");
            }
            Ok(0)
        }
        Err(e) => {
            remove_copy();
            if let Err(r) = guard.release().await {
                tracing::warn!("removing restore pin {pin_id}: {r:#}");
            }
            Err(e)
        }
    }
}

/// What the PostgreSQL part of a restore works with.
struct PgRestore<'a> {
    args: &'a RestoreArgs,
    repo: &'a Repo,
    plan: &'a Plan,
    target: &'a Target,
    key: &'a BackupKey,
    manifest: &'a BackupManifest,
    dir: &'a std::path::Path,
    owner: Option<&'a Owner>,
    exe: &'a std::path::Path,
    pin_id: &'a str,
}

/// Verifies the chain, unpacks, configures recovery and, with `--recover`,
/// runs it; returns the JSON report.
async fn execute_pg(c: &PgRestore<'_>) -> anyhow::Result<serde_json::Value> {
    let (p, dir) = (c.plan, c.dir);
    pg::verify_chain(c.repo, p, 4).await?;
    pg::prepare_dir(dir)?;
    let res = unpack_and_recover(c).await;
    if res.is_err() {
        // Nothing partial is left behind (the directory was empty or missing).
        pg::empty_dir(dir);
    }
    res
}

async fn unpack_and_recover(c: &PgRestore<'_>) -> anyhow::Result<serde_json::Value> {
    let (args, p, dir) = (c.args, c.plan, c.dir);
    pg::unpack_backup(c.repo, c.key, c.manifest, dir).await?;
    let repo_url = if args.repo.contains("://") {
        args.repo.clone()
    } else {
        std::path::absolute(&args.repo)?
            .to_string_lossy()
            .into_owned()
    };
    let mut extra: Vec<String> = Vec::new();
    for r in planned::pg_ranges(&p.segments)? {
        extra.push("--plan-range".into());
        extra.push(r.to_string());
    }
    if !args.recover {
        extra.extend(["--pin".into(), c.pin_id.to_string()]);
        extra.extend([
            "--pin-ttl".into(),
            humantime::format_duration(args.pin_ttl).to_string(),
        ]);
    }
    let settings = pg::recovery_settings(c.exe, &repo_url, p, c.target, &args.timeline, &extra);
    pg::configure_recovery(dir, &settings)?;
    if let Some(o) = c.owner {
        pg::fix_ownership(dir, o)?;
    }
    let mut out = serde_json::json!({ "plan": p, "target_dir": dir });
    eprintln!(
        "restored base backup {} into {}",
        p.backup_dir,
        dir.display()
    );
    if args.recover {
        let opts = RecoverOptions {
            bin: pg::find_bin_dir(args.pg_bin.as_deref())?,
            as_user: c.owner.map(|o| o.name.clone()),
            timeout: args.recover_timeout,
            wal_segment_size: 16 << 20,
        };
        let r = pg_recover::run_recovery(dir, p, c.target, &opts).await?;
        // wal-fetch removes its prefetch spool when recovery ends; make sure.
        let spool = dir.join("pg_wal").join(".pitr-prefetch");
        if spool.exists() {
            let _ = std::fs::remove_dir_all(&spool);
        }
        eprintln!(
            "recovery finished: replayed up to {}, last replayed commit at {}{}",
            r.replay_lsn.as_deref().unwrap_or("?"),
            r.last_commit_time.map_or("(none)".into(), utc_text),
            r.timeline
                .map_or(String::new(), |t| format!(", now on timeline {t}"))
        );
        out["recovery"] = serde_json::to_value(&r)?;
    } else {
        eprintln!(
            "start PostgreSQL on {} to replay the WAL to {}",
            dir.display(),
            p.target
        );
    }
    Ok(out)
}

/// The timeline to restore onto: `latest` = the newest archived timeline,
/// a number = that one, `current` = the newest backup's (`None`).
fn target_timeline(catalog: &Catalog, arg: &str) -> Option<u32> {
    match arg {
        "current" => None,
        "latest" => catalog.epochs().into_iter().max().map(|e| e.0 as u32),
        n => n.parse().ok(),
    }
}

/// The parsed history file of `tli` (timeline 1 has none).
async fn load_history(
    repo: &Repo,
    catalog: &Catalog,
    tli: u32,
) -> anyhow::Result<Option<Vec<pitr_postgres::lsn::HistoryEntry>>> {
    if tli <= 1 {
        return Ok(None);
    }
    let name = format!("{tli:08X}.history");
    let key = crate::archive::keys::HistoryKey::new(
        catalog.source().clone(),
        pitr_segment::Epoch(u64::from(tli)),
        &name,
    )
    .map_err(|e| anyhow!("{e}"))?
    .to_key();
    if !repo.exists(&key).await.map_err(|e| anyhow!("{e}"))? {
        return Err(anyhow!(
            "the repository has WAL of timeline {tli} but not its history file {name}; \
             restore onto another timeline with --timeline N"
        ));
    }
    let bytes = repo.get(&key).await.map_err(|e| anyhow!("{e}"))?;
    let text = String::from_utf8_lossy(&bytes);
    pitr_postgres::lsn::parse_history(&text)
        .map(Some)
        .ok_or_else(|| anyhow!("the archived history file {key} is malformed; run `pitr verify`"))
}

/// True when the (named or only) source of the repository is MySQL/MariaDB.
async fn mysql_source(repo: &str, name: Option<&str>) -> bool {
    let Ok(repo) = Repo::open_existing(repo).await else {
        return false;
    };
    let Ok(source) = resolve_source(&repo, name).await else {
        return false;
    };
    matches!(
        crate::archive::identity::read_identity(&repo, &source).await,
        Ok(Some(id)) if matches!(id.engine, pitr_segment::Engine::MySql | pitr_segment::Engine::MariaDb)
    )
}

/// The engine of the (named or only) source of the repository.
async fn source_engine(repo: &str, name: Option<&str>) -> Option<pitr_segment::Engine> {
    let repo = Repo::open_existing(repo).await.ok()?;
    let source = resolve_source(&repo, name).await.ok()?;
    match crate::archive::identity::read_identity(&repo, &source).await {
        Ok(Some(id)) => Some(id.engine),
        _ => None,
    }
}
