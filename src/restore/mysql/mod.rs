//! MySQL/MariaDB point-in-time restore (`pitr restore --target mysql://...`):
//! plan (pure, printable with `--dry-run`), check the target server, load
//! the chosen logical base backup, then apply the archived binlog
//! server-side up to the target.
//!
//! * [`plan`]: backup + segment chain for a target, window checks.
//! * [`load`]: schema and rows of the backup into the target.
//! * [`apply`]: archived binlog events as SQL, transaction by transaction.
//! * `parallel` / `keys`: transactions that change different rows (by
//!   their unique-key values) applied over several connections at once.
//!
//! The target must be a server of the same flavour as the source that does
//! not hold any of the backup's databases (`--replace` drops them first).
//! MariaDB transactions keep their GTIDs (`gtid_domain_id`/`server_id`/
//! `gtid_seq_no` are set per transaction); on MySQL they do when the target
//! runs with `gtid_mode=ON`. With `--skip-target-binlog` the target writes
//! neither the load nor the replayed transactions to its binlog
//! (`sql_log_bin=0`), so its binlog and GTID state record nothing of them.

pub mod apply;
mod keys;
pub mod load;
mod parallel;
pub mod plan;

use anyhow::anyhow;
use pitr_mysql::conn::{Conn, ConnParams};
use pitr_mysql::replay::quote_ident;
use pitr_mysql::{BinlogPos, Flavor};
use pitr_segment::Epoch;

use crate::archive::catalog::Catalog;
use crate::backup::mysql::dump::{q, q1};
use crate::backup::mysql::manifest::list_mysql_backups;
use crate::restore::request::{RestoreRequest, RestoreTarget};
use crate::restore::session;
use crate::restore::time::{parse_time, to_micros, utc_text};
use plan::{plan_mysql, MysqlTarget};

/// Parses the target of a request; `flavor` decides the GTID syntax.
pub fn parse_target(t: &RestoreTarget, flavor: Flavor) -> anyhow::Result<MysqlTarget> {
    match t {
        RestoreTarget::Latest => Ok(MysqlTarget::Latest),
        RestoreTarget::Time(t) => Ok(MysqlTarget::Time(to_micros(parse_time(t)?))),
        RestoreTarget::Gtid(g) => match flavor {
            Flavor::MariaDb => g.parse().map(MysqlTarget::MariaGtid).map_err(|e| {
                anyhow!("invalid --to-gtid {g:?} (MariaDB: domain-server-seq,...): {e}")
            }),
            Flavor::MySql => g
                .parse()
                .map(MysqlTarget::MysqlGtid)
                .map_err(|e| anyhow!("invalid --to-gtid {g:?} (MySQL: uuid:1-10,...): {e}")),
        },
        RestoreTarget::Position(p) => {
            let pos: BinlogPos = p
                .parse()
                .map_err(|e| anyhow!("invalid --to-position: {e}"))?;
            if pos.file.sequence().is_none() {
                return Err(anyhow!(
                    "invalid --to-position {p:?}: the file name needs a numeric suffix (binlog.000003:1234)"
                ));
            }
            Ok(MysqlTarget::Position(pos))
        }
        other => Err(anyhow!(
            "{} is not a MySQL/MariaDB restore target",
            other.kind().flag()
        )),
    }
}

fn flavor_of(engine: &str) -> anyhow::Result<Flavor> {
    match engine {
        "mariadb" => Ok(Flavor::MariaDb),
        "mysql" => Ok(Flavor::MySql),
        e => Err(anyhow!("source engine {e:?} is not MySQL or MariaDB")),
    }
}

/// Runs a MySQL/MariaDB restore; returns the exit code.
pub async fn run_mysql(a: RestoreRequest) -> anyhow::Result<i32> {
    let (repo, source) = (&a.repo, &a.source);
    let catalog = Catalog::load(repo, source).await?;
    let backups = list_mysql_backups(repo, catalog.backups()).await?;
    let flavor = match backups.first() {
        Some((_, m)) => flavor_of(&m.engine)?,
        None => {
            return Err(anyhow!(
                "source {} has no complete MySQL/MariaDB base backup; run `pitr backup mysql://...` first",
                source.as_str()
            ))
        }
    };
    let target = parse_target(&a.target, flavor)?;
    if let MysqlTarget::Time(t) = &target {
        eprintln!(
            "restoring to {}",
            utc_text(crate::restore::time::from_micros(*t))
        );
    }
    let (chain, gaps) = match catalog.epoch(Epoch(1)) {
        Some(e) => (e.segments().to_vec(), e.gaps().to_vec()),
        None => (Vec::new(), Vec::new()),
    };
    let p = plan_mysql(&chain, &gaps, &backups, &target)?;
    if a.dry_run {
        if a.json {
            println!("{}", serde_json::to_string_pretty(&p)?);
        } else {
            println!(
                "restore {} to {}: base backup {} (at {}, GTID {}, {}), then {} binlog segments ({} bytes) up to {}",
                source.as_str(),
                p.target,
                p.backup_dir,
                p.backup_position,
                if p.backup_gtid.is_empty() { "-" } else { &p.backup_gtid },
                p.backup_snapshot_time,
                p.segments.len(),
                p.bytes,
                p.log_end
            );
        }
        return Ok(0);
    }
    let url = a.server_url("mysql://user:password@host:port")?.to_string();
    ConnParams::from_url(&url).map_err(|e| anyhow!("{e}: {}", crate::redact::redact(&url)))?;
    let (key, manifest) = backups
        .iter()
        .find(|(k, _)| k.dir() == p.backup_dir)
        .ok_or_else(|| anyhow!("the planned backup vanished"))?;
    // Pin the backup and the log planned on for the whole load and apply.
    let mut segs: Vec<String> = p.fde_segment.iter().cloned().collect();
    segs.extend(p.segments.iter().cloned());
    let planned = session::Planned {
        source,
        target: &p.target,
        backup: key,
        segments: &segs,
        open_ended: matches!(target, MysqlTarget::Latest),
    };
    let guard = session::pin(repo, planned, a.pin_ttl).await?;
    let res = load_and_apply(&a, repo, &p, key, manifest, target, flavor, url).await;
    session::release(guard).await;
    res
}

/// Checks the target, loads the backup and applies the log (under the pin).
#[allow(clippy::too_many_arguments)]
async fn load_and_apply(
    a: &RestoreRequest,
    repo: &crate::storage::Repo,
    p: &plan::MysqlPlan,
    key: &crate::archive::keys::BackupKey,
    manifest: &crate::backup::mysql::manifest::MysqlManifest,
    target: MysqlTarget,
    flavor: Flavor,
    url: String,
) -> anyhow::Result<i32> {
    let params = ConnParams::from_url(&url)?;
    let repo = repo.clone();
    let schema = load::read_schema(&repo, key, manifest).await?;
    let mut conn = Conn::connect(&params, std::time::Duration::from_secs(15)).await?;
    let target_flavor = Flavor::from_version(conn.server_version());
    if target_flavor != flavor {
        return Err(anyhow!(
            "the target server is {target_flavor}, the backup is of {flavor}: restore into a server of the same kind"
        ));
    }
    let existing: Vec<String> = q(
        &mut conn,
        "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA",
    )
    .await?
    .into_iter()
    .filter_map(|r| r.into_iter().next().flatten())
    .collect();
    let clash: Vec<&str> = schema
        .databases
        .iter()
        .map(|d| d.name.as_str())
        .filter(|d| existing.iter().any(|e| e == d))
        .collect();
    if !clash.is_empty() {
        if !a.load.replace {
            return Err(anyhow!(
                "the target server already has database(s) {}; restore into an empty server or pass --replace to drop them first",
                clash.join(", ")
            ));
        }
        for d in &clash {
            q(&mut conn, &format!("DROP DATABASE {}", quote_ident(d))).await?;
        }
    }
    let target_version = q1(&mut conn, "SELECT VERSION()").await?.unwrap_or_default();
    conn.shutdown().await;
    eprintln!(
        "loading base backup {} ({} tables) into {}",
        p.backup_dir,
        manifest.tables.len(),
        crate::redact::redact(&url)
    );
    let rows = load::load_backup(
        &repo,
        key,
        manifest,
        &params,
        a.load.parallel.max(1),
        a.load.skip_target_binlog,
    )
    .await?;
    eprintln!(
        "loaded {rows} rows; applying the archived binlog to {}",
        p.target
    );
    let opts = apply::ApplyOptions {
        connections: a.load.parallel,
        skip_binlog: a.load.skip_target_binlog,
    };
    let (repo2, p2, manifest2) = (repo.clone(), p.clone(), manifest.clone());
    let report = on_own_thread(move || async move {
        apply::apply_log(&repo2, &p2, &target, &manifest2, flavor, &params, opts).await
    })
    .await?;
    eprintln!(
        "restore complete: {} transactions applied over {} connection(s) ({} alone, {} lock retries; {} already in the backup), stopped: {}; last applied {}",
        report.transactions_applied,
        report.connections,
        report.transactions_alone,
        report.lock_retries,
        report.transactions_skipped,
        report.stopped,
        report
            .last_applied_gtid
            .clone()
            .or(report.last_applied_position.clone())
            .unwrap_or_else(|| "nothing".into())
    );
    if a.json {
        let v = serde_json::json!({
            "plan": p, "rows_loaded": rows, "apply": report, "target_version": target_version,
        });
        println!("{v}");
    }
    Ok(0)
}

/// Runs `f` on a thread of its own with a single-threaded runtime. The
/// binlog apply is bound by the target server's CPU, which usually shares
/// the machine: pitr's part (reading segments, decoding, feeding the
/// connections) needs a fraction of one core, and on one thread it spends
/// less on cross-thread wake-ups (measured: 12 % less CPU and a 4 % faster
/// apply on 2 cores; see BENCHMARKS.md).
async fn on_own_thread<F, Fut, T>(f: F) -> anyhow::Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("binlog-apply".into())
        .spawn(move || {
            let r = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| anyhow!("cannot start the apply runtime: {e}"))
                .and_then(|rt| rt.block_on(f()));
            let _ = tx.send(r);
        })
        .map_err(|e| anyhow!("cannot start the apply thread: {e}"))?;
    rx.await
        .map_err(|_| anyhow!("the apply thread ended without a result"))?
}
