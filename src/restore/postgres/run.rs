//! `pitr restore` of a PostgreSQL source: plan (printable with `--dry-run`), pin the plan,
//! verify the WAL chain, unpack the base backup into `--target-dir`, configure recovery and,
//! with `--recover`, run it. An interrupted or failed restore leaves the directory empty.
//!
//! Without `--recover` the pin outlives this process: the server the user starts renews it
//! through `wal-fetch` (its `restore_command`), and the last fetch releases it.

use std::path::Path;

use anyhow::{anyhow, Context as _};

use crate::archive::catalog::Catalog;
use crate::archive::keys::BackupKey;
use crate::backup::postgres::manifest::{list_backups, BackupManifest};
use crate::restore::owner::{self, Owner};
use crate::restore::postgres as pg;
use crate::restore::postgres::plan::{plan, plan_on, timeline_path, Plan, Target};
use crate::restore::postgres::planned;
use crate::restore::postgres::recover::{self as pg_recover, RecoverOptions};
use crate::restore::request::{RestoreInto, RestoreRequest, RestoreTarget};
use crate::restore::session;
use crate::restore::time::{parse_time, utc_text};
use crate::storage::Repo;

/// The PostgreSQL target of a request.
fn parse_target(t: &RestoreTarget) -> anyhow::Result<Target> {
    Ok(match t {
        RestoreTarget::Time(t) => {
            let t = parse_time(t)?;
            eprintln!("restoring to {}", utc_text(t));
            Target::Time(t)
        }
        RestoreTarget::Lsn(l) => Target::Lsn(
            l.parse()
                .map_err(|_| anyhow!("invalid --to-lsn {l:?}: expected X/Y"))?,
        ),
        RestoreTarget::Name(n) => Target::Name(n.clone()),
        RestoreTarget::Latest => Target::Latest,
        other => {
            return Err(anyhow!(
                "{} is not a PostgreSQL restore target",
                other.kind().flag()
            ))
        }
    })
}

/// Runs a PostgreSQL restore; returns the exit code.
pub async fn run(req: RestoreRequest) -> anyhow::Result<i32> {
    let target = parse_target(&req.target)?;
    if req.pg.timeline != "latest"
        && req.pg.timeline != "current"
        && req.pg.timeline.parse::<u32>().is_err()
    {
        return Err(anyhow!(
            "invalid --timeline {:?}: latest, current or a number",
            req.pg.timeline
        ));
    }
    let (repo, source) = (&req.repo, &req.source);
    let catalog = Catalog::load(repo, source).await?;
    let backups = list_backups(repo, source, catalog.backups()).await?;
    let p = match target_timeline(&catalog, &req.pg.timeline) {
        Some(tli) => {
            let history = load_history(repo, &catalog, tli).await?;
            plan_on(
                &catalog,
                &backups,
                &target,
                &timeline_path(tli, history.as_deref()),
            )?
        }
        None => plan(&catalog, &backups, &target)?,
    };
    if req.dry_run {
        if req.json {
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
    let RestoreInto::Dir(dir) = &req.into else {
        return Err(anyhow!("--target-dir DIR is required (or use --dry-run)"));
    };
    let dir = std::path::absolute(dir)?;
    let (key, manifest) = backups
        .iter()
        .find(|(k, _)| k.dir() == p.backup_dir)
        .ok_or_else(|| anyhow!("planned backup vanished"))?;
    // Before anything is unpacked: who runs PostgreSQL, and can it run pitr?
    let owner = owner::resolve(&dir, req.pg.owner.as_deref())?;
    let exe = std::env::current_exe().context("locating the pitr binary")?;
    let (exe, bin_copy) = owner::runnable_binary(&exe, &dir, owner.as_ref())?;
    let planned = session::Planned {
        source,
        target: &p.target,
        backup: key,
        segments: &p.segments,
        open_ended: matches!(target, Target::Latest),
    };
    let guard = session::pin(repo, planned, req.pin_ttl).await?;
    let pin_id = guard.id().await;
    let ctx = PgRestore {
        req: &req,
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
            if req.pg.recover {
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
            if req.json {
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
    req: &'a RestoreRequest,
    plan: &'a Plan,
    target: &'a Target,
    key: &'a BackupKey,
    manifest: &'a BackupManifest,
    dir: &'a Path,
    owner: Option<&'a Owner>,
    exe: &'a Path,
    pin_id: &'a str,
}

/// Verifies the chain, unpacks, configures recovery and, with `--recover`,
/// runs it; returns the JSON report.
async fn execute_pg(c: &PgRestore<'_>) -> anyhow::Result<serde_json::Value> {
    let (p, dir) = (c.plan, c.dir);
    pg::verify_chain(&c.req.repo, p, 4).await?;
    pg::prepare_dir(dir)?;
    let res = unpack_and_recover(c).await;
    if res.is_err() {
        // Nothing partial is left behind (the directory was empty or missing).
        pg::empty_dir(dir);
    }
    res
}

async fn unpack_and_recover(c: &PgRestore<'_>) -> anyhow::Result<serde_json::Value> {
    let (req, p, dir) = (c.req, c.plan, c.dir);
    pg::unpack_backup(&req.repo, c.key, c.manifest, dir).await?;
    let repo_url = if req.repo_arg.contains("://") {
        req.repo_arg.clone()
    } else {
        std::path::absolute(&req.repo_arg)?
            .to_string_lossy()
            .into_owned()
    };
    let mut extra: Vec<String> = Vec::new();
    // recovery runs `pitr wal-fetch` in PostgreSQL's environment, not ours:
    // it is given the key-encryption key's source, never the key
    if let (Some(kek), true) = (&req.kek, !req.repo.keys().all.is_empty()) {
        if matches!(kek, crate::crypto::kek::KekSource::Env(_)) && !req.pg.recover {
            anyhow::bail!(
                "the restored PostgreSQL fetches WAL itself, without this environment: give the key-encryption key as --kek file:PATH or cmd:COMMAND"
            );
        }
        extra.extend(["--kek".into(), kek.to_string()]);
    }
    for r in planned::pg_ranges(&p.segments)? {
        extra.push("--plan-range".into());
        extra.push(r.to_string());
    }
    if !req.pg.recover {
        extra.extend(["--pin".into(), c.pin_id.to_string()]);
        extra.extend([
            "--pin-ttl".into(),
            humantime::format_duration(req.pin_ttl).to_string(),
        ]);
    }
    let settings = pg::recovery_settings(c.exe, &repo_url, p, c.target, &req.pg.timeline, &extra);
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
    if req.pg.recover {
        let opts = RecoverOptions {
            bin: pg::find_bin_dir(req.pg.pg_bin.as_deref())?,
            as_user: c.owner.map(|o| o.name.clone()),
            timeout: req.pg.recover_timeout,
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
    )?
    .to_key();
    if !repo.exists(&key).await? {
        return Err(anyhow!(
            "the repository has WAL of timeline {tli} but not its history file {name}; \
             restore onto another timeline with --timeline N"
        ));
    }
    let bytes = repo.get(&key).await?;
    let text = String::from_utf8_lossy(&bytes);
    pitr_postgres::lsn::parse_history(&text)
        .map(Some)
        .ok_or_else(|| anyhow!("the archived history file {key} is malformed; run `pitr verify`"))
}
