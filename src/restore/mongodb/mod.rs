//! MongoDB point-in-time restore (`pitr restore --target mongodb://...`):
//! plan (pure, printable with `--dry-run`), check the target, load the
//! chosen logical base backup, then replay the archived oplog through
//! `applyOps` up to the target.
//!
//! * [`plan`]: backup + segment chain (across terms) for a target, window checks.
//! * [`load`]: collections (with their UUIDs), documents, indexes, views,
//!   users and roles of the backup into the target.
//! * [`apply`]: the oplog from the backup's `start` to the target.
//!
//! Targets: `--to TIME` (every entry whose `wall` is at or before it),
//! `--to-ts SECS:INC` (every entry with `ts` at or before it, none after),
//! `--latest`. The target must not hold any of the backup's databases
//! (`--replace` drops them first).

pub mod apply;
pub mod load;
pub mod plan;

use anyhow::anyhow;
use pitr_mongodb::OplogTs;

use crate::archive::catalog::Catalog;
use crate::archive::keys::{BackupKey, SourceName};
use crate::backup::mongodb::manifest::MongoManifest;
use crate::redact::redact;
use crate::restore::request::{RestoreRequest, RestoreTarget};
use crate::restore::session;
use crate::restore::time::{parse_time, to_micros, utc_text};
use crate::source::mongodb_tail::connect;
use crate::storage::Repo;
use plan::{oplog_chain, plan_mongo, MongoPlan, MongoTarget};

/// Parses the target of a request.
pub fn parse_target(t: &RestoreTarget) -> anyhow::Result<MongoTarget> {
    match t {
        RestoreTarget::Latest => Ok(MongoTarget::Latest),
        RestoreTarget::Time(t) => Ok(MongoTarget::Time(to_micros(parse_time(t)?))),
        RestoreTarget::Ts(t) => {
            let ts: OplogTs = t
                .parse()
                .map_err(|e| anyhow!("invalid --to-ts {t:?}: {e} (for example 1700000000:5)"))?;
            Ok(MongoTarget::Ts(ts))
        }
        other => Err(anyhow!(
            "{} is not a MongoDB restore target",
            other.kind().flag()
        )),
    }
}

/// Complete MongoDB backups among `keys`, oldest first.
pub async fn list_mongo_backups(
    repo: &Repo,
    keys: &[BackupKey],
) -> anyhow::Result<Vec<(BackupKey, MongoManifest)>> {
    crate::backup::manifest::list(repo, keys, |k, _: &MongoManifest| (k.start, k.id.clone())).await
}

/// Loads the catalog and plans.
pub async fn make_plan(
    repo: &Repo,
    source: &SourceName,
    target: &MongoTarget,
) -> anyhow::Result<(MongoPlan, Vec<(BackupKey, MongoManifest)>)> {
    let catalog = Catalog::load(repo, source).await?;
    let backups = list_mongo_backups(repo, catalog.backups()).await?;
    let mut terms = Vec::new();
    let mut gaps = Vec::new();
    for e in catalog.epochs() {
        if let Some(c) = catalog.epoch(e) {
            terms.push(c.segments().to_vec());
            gaps.extend(c.gaps().iter().cloned());
        }
    }
    let chain = oplog_chain(&terms);
    let p = plan_mongo(&chain, &gaps, &backups, target)?;
    Ok((p, backups))
}

/// Runs a MongoDB restore; returns the exit code.
pub async fn run_mongo(a: RestoreRequest) -> anyhow::Result<i32> {
    let target = parse_target(&a.target)?;
    let (repo, source) = (&a.repo, &a.source);
    if let MongoTarget::Time(t) = &target {
        eprintln!(
            "restoring to {}",
            utc_text(crate::restore::time::from_micros(*t))
        );
    }
    let (p, backups) = make_plan(repo, source, &target).await?;
    if a.dry_run {
        if a.json {
            println!("{}", serde_json::to_string_pretty(&p)?);
        } else {
            println!(
                "restore {} to {}: base backup {} (oplog {} .. {}, consistent at {}), then {} oplog segments ({} bytes, terms {}) up to {}",
                source.as_str(),
                p.target,
                p.backup_dir,
                p.backup_start,
                p.backup_end,
                p.backup_end_wall,
                p.segments.len(),
                p.bytes,
                p.terms
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                p.log_end
            );
        }
        return Ok(0);
    }
    let url = a
        .server_url("mongodb://user:password@host:port/?replicaSet=NAME")?
        .to_string();
    let (key, manifest) = backups
        .iter()
        .find(|(k, _)| k.dir() == p.backup_dir)
        .ok_or_else(|| anyhow!("the planned backup vanished"))?;
    // Pin the backup and the oplog planned on for the whole load and replay:
    // prune and compaction in other processes delete none of it meanwhile.
    let planned = session::Planned {
        source,
        target: &p.target,
        backup: key,
        segments: &p.segments,
        open_ended: matches!(target, MongoTarget::Latest),
    };
    let guard = session::pin(repo, planned, a.pin_ttl).await?;
    let res = load_and_apply(&a, repo, &p, key, manifest, &target, &url).await;
    session::release(guard).await;
    res
}

/// Checks the target, loads the backup and replays the oplog (under the pin).
async fn load_and_apply(
    a: &RestoreRequest,
    repo: &Repo,
    p: &MongoPlan,
    key: &BackupKey,
    manifest: &MongoManifest,
    target: &MongoTarget,
    url: &str,
) -> anyhow::Result<i32> {
    // The archiver's own connect: the same checks (credentials, replica set) and wording.
    let client = connect(url, std::time::Duration::from_secs(15))
        .await
        .map_err(|e| anyhow!("the restore target {}: {e}", redact(url)))?
        .client;
    let clash = load::clashes(&client, manifest).await?;
    if !clash.is_empty() {
        if !a.load.replace {
            return Err(anyhow!(
                "the target already has {}; restore into an empty replica set or pass --replace to drop them first",
                clash.join(", ")
            ));
        }
        load::drop_clashes(&client, &clash).await?;
    }
    eprintln!(
        "loading base backup {} ({} collections) into {}",
        p.backup_dir,
        manifest.collections.len(),
        redact(url)
    );
    let loaded = load::load_backup(repo, key, manifest, &client, a.load.parallel.max(1)).await?;
    eprintln!(
        "loaded {} documents, {} indexes, {} views (collection UUIDs {}); applying the archived oplog to {}",
        loaded.documents,
        loaded.indexes,
        loaded.views,
        if loaded.uuids_preserved { "kept" } else { "new" },
        p.target
    );
    let cfg = apply::ApplyConfig {
        preserve_uuid: loaded.uuids_preserved,
        ..Default::default()
    };
    let rep = apply::apply_oplog(repo, p, target, &client, cfg).await?;
    eprintln!(
        "restore {}: {} oplog entries applied in {} round trips ({} operations, {} transactions), stopped {}; last applied ts {}",
        if rep.reached_target { "complete" } else { "INCOMPLETE" },
        rep.entries_applied,
        rep.round_trips,
        rep.operations,
        rep.transactions_applied,
        rep.stopped,
        rep.last_ts_applied.as_deref().unwrap_or("none (the backup is the target)")
    );
    if a.json {
        let v = serde_json::json!({"plan": p, "load": loaded, "apply": rep});
        println!("{v}");
    }
    if !rep.reached_target {
        eprintln!("the replay stopped short of the target; the target holds a partial restore");
        return Ok(1);
    }
    Ok(0)
}
