//! MySQL/MariaDB logical base backups (`pitr backup mysql://...`).
//!
//! Consistency: `parallel` worker connections are opened first; then one
//! control connection takes `FLUSH TABLES WITH READ LOCK`, every worker runs
//! `START TRANSACTION WITH CONSISTENT SNAPSHOT` (REPEATABLE READ), the
//! control connection reads the binlog coordinates (`SHOW BINARY LOG
//! STATUS`, or `SHOW MASTER STATUS` on servers without it) and the GTID
//! state (MariaDB `@@gtid_binlog_pos`, MySQL `Executed_Gtid_Set`) and the
//! schema (metadata only), and releases the lock. All workers therefore
//! read the same snapshot, exactly at those coordinates. On MariaDB each
//! worker's `binlog_snapshot_file/position` status and
//! `BINLOG_GTID_POS(file, pos)` are checked against them. (MySQL 9's
//! lock-free `performance_schema.log_status` is not used: it needs the
//! performance schema, which is often off.) The lock needs the RELOAD
//! privilege and is held for milliseconds plus the schema reads.
//!
//! Output, in `<source>/backups/<file seq, pos as LogPos>_<id>/`: the schema
//! stream, one data stream per table (tables dumped `parallel` at a time),
//! and `manifest.json` last (see [`manifest`]).
//!
//! * [`dump`]: schema reading, value encoding, chunked table reads, parts.
//! * [`manifest`]: the manifest and its readers.

pub mod dump;
pub mod manifest;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use bytes::Bytes;
use chrono::Utc;
use pitr_mysql::conn::{Conn, ConnParams};
use pitr_mysql::{BinlogPos, Flavor, MariaGtidPos};
use tokio::sync::Mutex;

use crate::archive::identity::{ensure_identity, SourceIdentity};
use crate::archive::keys::{BackupKey, SourceName};
use crate::backup::parts::StreamWriter;
use crate::backup::BackupRequest;
use crate::storage::Repo;
use dump::{dump_table, q, q1, read_schema, TableJob};
use manifest::{
    MysqlManifest, Schema, TableData, MYSQL_BACKUP_KIND, MYSQL_MANIFEST_FORMAT_VERSION,
};

/// Result of a backup.
#[derive(Debug, Clone)]
pub struct MysqlBackupReport {
    pub key: BackupKey,
    pub manifest: MysqlManifest,
}

/// Source name and system id of a server, per the repository layout:
/// MySQL `mysql-<server_uuid>` / `@@server_uuid`, MariaDB
/// `mariadb-<server_id>` / `mariadb-server-<server_id>`.
pub fn default_source(identity: &pitr_mysql::ServerIdentity) -> anyhow::Result<(String, String)> {
    match identity.flavor {
        Flavor::MySql => {
            let uuid = identity
                .server_uuid
                .ok_or_else(|| anyhow!("the MySQL server reported no server_uuid"))?;
            Ok((format!("mysql-{uuid}"), uuid.to_string()))
        }
        Flavor::MariaDb => Ok((
            format!("mariadb-{}", identity.server_id.0),
            format!("mariadb-server-{}", identity.server_id.0),
        )),
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

async fn connect(params: &ConnParams) -> anyhow::Result<Conn> {
    Ok(Conn::connect(params, CONNECT_TIMEOUT).await?)
}

/// Session settings of every backup connection.
async fn prepare_session(conn: &mut Conn) -> anyhow::Result<()> {
    for s in [
        "SET SESSION time_zone='+00:00'",
        "SET SESSION sql_mode=''",
        "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
    ] {
        q(conn, s).await?;
    }
    Ok(())
}

/// Binlog coordinates and GTID state under the global read lock.
async fn coordinates(conn: &mut Conn, flavor: Flavor) -> anyhow::Result<(BinlogPos, String)> {
    let rows = match q(conn, "SHOW BINARY LOG STATUS").await {
        Ok(r) => r,
        Err(_) => q(conn, "SHOW MASTER STATUS").await?,
    };
    let row = rows.into_iter().next().ok_or_else(|| {
        anyhow!("the server reports no binlog status: binary logging must be on (log_bin)")
    })?;
    let file = row.first().cloned().flatten().unwrap_or_default();
    let pos: u64 = row
        .get(1)
        .cloned()
        .flatten()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow!("unreadable binlog position in SHOW BINARY LOG STATUS"))?;
    let gtid = match flavor {
        Flavor::MariaDb => q1(conn, "SELECT @@gtid_binlog_pos")
            .await?
            .unwrap_or_default(),
        Flavor::MySql => row.get(4).cloned().flatten().unwrap_or_default(),
    };
    let gtid: String = gtid.split_whitespace().collect();
    Ok((BinlogPos::new(file, pos), gtid))
}

/// MariaDB: the worker's snapshot must be exactly at the coordinates.
async fn check_maria_snapshot(conn: &mut Conn, at: &BinlogPos, gtid: &str) -> anyhow::Result<()> {
    let rows = q(conn, "SHOW STATUS LIKE 'binlog_snapshot_%'").await?;
    let get = |name: &str| {
        rows.iter()
            .find(|r| r.first().cloned().flatten().as_deref() == Some(name))
            .and_then(|r| r.get(1).cloned().flatten())
            .unwrap_or_default()
    };
    let (file, pos) = (get("Binlog_snapshot_file"), get("Binlog_snapshot_position"));
    if file != at.file.as_str() || pos != at.offset.to_string() {
        return Err(anyhow!(
            "inconsistent snapshot: a worker's snapshot is at {file}:{pos}, the locked coordinates are {at}"
        ));
    }
    let snap_gtid = q1(
        conn,
        &format!(
            "SELECT BINLOG_GTID_POS({}, {})",
            dump::sql_str(at.file.as_str()),
            at.offset
        ),
    )
    .await?
    .unwrap_or_default();
    let a: Result<MariaGtidPos, _> = snap_gtid.parse();
    let b: Result<MariaGtidPos, _> = gtid.parse();
    match (a, b) {
        (Ok(a), Ok(b)) if a == b => Ok(()),
        // BINLOG_GTID_POS returns NULL when the file was purged meanwhile.
        _ if snap_gtid.is_empty() => Ok(()),
        _ => Err(anyhow!(
            "inconsistent snapshot: BINLOG_GTID_POS({at}) = '{snap_gtid}' but @@gtid_binlog_pos = '{gtid}'"
        )),
    }
}

/// Takes a logical base backup of a MySQL/MariaDB server into `repo`.
pub async fn take_mysql_backup(
    opts: &BackupRequest,
    repo: &Repo,
) -> anyhow::Result<MysqlBackupReport> {
    let start_time = Utc::now();
    let identity = pitr_mysql::server_identity(&opts.url).await?;
    let (default_name, system_id) = default_source(&identity)?;
    let name = opts.name.clone().unwrap_or(default_name);
    let source = SourceName::new(&name).map_err(|e| anyhow!("invalid source name: {e}"))?;
    ensure_identity(
        repo,
        &SourceIdentity::new(&name, identity.flavor.engine(), &system_id),
    )
    .await?;
    let flavor = identity.flavor;
    let params = ConnParams::from_url(&opts.url)?;

    let n = opts.parallel.clamp(1, 64);
    let mut workers = Vec::with_capacity(n);
    for _ in 0..n {
        let mut c = connect(&params).await?;
        prepare_session(&mut c).await?;
        workers.push(c);
    }
    let mut control = connect(&params).await?;
    prepare_session(&mut control).await?;
    q(&mut control, "FLUSH TABLES WITH READ LOCK")
        .await
        .context(
            "taking the global read lock for a consistent snapshot (needs the RELOAD privilege)",
        )?;
    let locked = async {
        for w in &mut workers {
            q(w, "START TRANSACTION WITH CONSISTENT SNAPSHOT").await?;
        }
        let (pos, gtid) = coordinates(&mut control, flavor).await?;
        let snap = q1(&mut control, "SELECT UNIX_TIMESTAMP(NOW(6))")
            .await?
            .unwrap_or_default();
        let schema = read_schema(&mut control).await?;
        anyhow::Ok((pos, gtid, snap, schema))
    }
    .await;
    let unlock = q(&mut control, "UNLOCK TABLES").await;
    let (pos, gtid, snap, schema) = locked?;
    unlock?;
    control.shutdown().await;
    if flavor == Flavor::MariaDb {
        for w in &mut workers {
            check_maria_snapshot(w, &pos, &gtid).await?;
        }
    }
    let snapshot_time_us =
        parse_unix_micros(&snap).ok_or_else(|| anyhow!("unreadable server time {snap:?}"))?;
    let start = pos
        .to_log_pos()
        .ok_or_else(|| anyhow!("binlog file name {} has no numeric suffix", pos.file))?;
    let id = start_time.format("%Y%m%dT%H%M%S%3fZ").to_string();
    let key = BackupKey::new(source.clone(), start, &id)?;
    // Renewed until this function returns; removed by `run_interruptible`.
    let _pin = opts
        .started
        .begin(repo, &key, pitr_mysql::segment::MYSQL_EPOCH)
        .await?;

    let schema = Schema { databases: schema };
    let mut sw = StreamWriter::new(repo, &key, "schema.json", opts.part_size, opts.zstd_level)?;
    sw.write(&serde_json::to_vec(&schema)?).await?;
    let schema_stream = sw.finish().await?;

    let mut jobs: Vec<TableJob> = Vec::new();
    for db in &schema.databases {
        for o in db.objects.iter().filter(|o| o.kind == "table") {
            jobs.push(TableJob {
                index: jobs.len(),
                db: db.name.clone(),
                name: o.name.clone(),
            });
        }
    }
    let queue = Arc::new(Mutex::new(jobs.iter().cloned().collect::<VecDeque<_>>()));
    let mysql_flavor = flavor == Flavor::MySql;
    // A JoinSet: dropping the backup (interrupted) aborts its workers.
    let mut tasks = tokio::task::JoinSet::new();
    for mut conn in workers {
        let (queue, repo, key) = (queue.clone(), repo.clone(), key.clone());
        let (part_size, level) = (opts.part_size, opts.zstd_level);
        tasks.spawn(async move {
            let mut done: Vec<(usize, TableData)> = Vec::new();
            loop {
                let job = queue.lock().await.pop_front();
                let Some(job) = job else { break };
                let name = format!("t{:05}.sql", job.index);
                let mut w = StreamWriter::new(&repo, &key, &name, part_size, level)?;
                let mut t = dump_table(&mut conn, &job, mysql_flavor, &mut w).await?;
                t.data = w.finish().await?;
                done.push((job.index, t));
            }
            let _ = q(&mut conn, "COMMIT").await;
            conn.shutdown().await;
            anyhow::Ok(done)
        });
    }
    let mut tables: Vec<(usize, TableData)> = Vec::new();
    let mut first_err = None;
    while let Some(t) = tasks.join_next().await {
        match t {
            Ok(Ok(v)) => tables.extend(v),
            Ok(Err(e)) => first_err = first_err.or(Some(e)),
            Err(e) => first_err = first_err.or(Some(anyhow!("backup worker failed: {e}"))),
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    tables.sort_by_key(|(i, _)| *i);
    let manifest = MysqlManifest {
        format_version: MYSQL_MANIFEST_FORMAT_VERSION,
        kind: MYSQL_BACKUP_KIND.into(),
        engine: flavor.engine().name().into(),
        id: id.clone(),
        label: opts.label.clone().unwrap_or_default(),
        system_id,
        server_version: identity.version.clone(),
        snapshot_method: "ftwrl".into(),
        binlog_file: pos.file.0.clone(),
        binlog_pos: pos.offset,
        gtid,
        snapshot_time_us,
        start_time,
        stop_time: Utc::now(),
        schema: schema_stream,
        tables: tables.into_iter().map(|(_, t)| t).collect(),
    };
    let json =
        crate::crypto::seal_object(repo, &key.to_key(), serde_json::to_vec_pretty(&manifest)?)?;
    repo.put_if_absent(&key.to_key(), Bytes::from(json))
        .await
        .map_err(|e| anyhow!("storing the backup manifest: {e}"))?;
    Ok(MysqlBackupReport { key, manifest })
}

/// What a finished MySQL/MariaDB backup reports (`pitr backup`, `pitr run`).
pub fn report(r: &MysqlBackupReport) -> crate::engine::BackupReport {
    let m = &r.manifest;
    let rows: u64 = m.tables.iter().map(|t| t.rows).sum();
    let json = serde_json::json!({
        "source": r.key.source.as_str(),
        "backup": r.key.dir(),
        "id": m.id,
        "binlog_file": m.binlog_file,
        "binlog_pos": m.binlog_pos,
        "gtid": m.gtid,
        "snapshot_time_us": m.snapshot_time_us,
        "tables": m.tables.len(),
        "rows": rows,
        "stored_bytes": m.stored_bytes(),
    });
    let summary = format!(
        "backup {} complete: snapshot at {}:{} (GTID {}), {} tables, {rows} rows, {} bytes stored",
        r.key.dir(),
        m.binlog_file,
        m.binlog_pos,
        if m.gtid.is_empty() { "-" } else { &m.gtid },
        m.tables.len(),
        m.stored_bytes()
    );
    crate::engine::BackupReport {
        key: r.key.clone(),
        summary,
        json,
    }
}

/// `1700000000.123456` -> µs.
fn parse_unix_micros(s: &str) -> Option<i64> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let mut us = String::from(frac);
    us.truncate(6);
    while us.len() < 6 {
        us.push('0');
    }
    Some(secs * 1_000_000 + us.parse::<i64>().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_micros() {
        assert_eq!(
            parse_unix_micros("1700000000.123456"),
            Some(1_700_000_000_123_456)
        );
        assert_eq!(
            parse_unix_micros("1700000000.5"),
            Some(1_700_000_000_500_000)
        );
        assert_eq!(parse_unix_micros("1700000000"), Some(1_700_000_000_000_000));
        assert_eq!(parse_unix_micros("x"), None);
    }
}
