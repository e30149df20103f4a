//! Loads a MySQL/MariaDB logical base backup into a target server: the
//! databases and tables, then the rows (tables in parallel, one connection
//! each, `foreign_key_checks=0`, `unique_checks=0`,
//! `sql_mode='NO_AUTO_VALUE_ON_ZERO'`, `time_zone='+00:00'`), then views
//! (retried until their dependencies exist), routines and triggers (each
//! under its recorded `sql_mode`; triggers last so they do not fire on the
//! loaded rows). Every stored part and every stream is checked against the
//! manifest's sizes and SHA-256 sums while it is read.

use std::collections::VecDeque;
use std::io::Write as _;
use std::sync::Arc;

use anyhow::{anyhow, Context as _};
use pitr_mysql::conn::{Conn, ConnParams};
use pitr_mysql::replay::quote_ident;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use crate::archive::keys::BackupKey;
use crate::backup::mysql::dump::{q, sql_str};
use crate::backup::mysql::manifest::{MysqlManifest, Schema, SchemaObject, Stream};
use crate::storage::Repo;

/// `SET SESSION sql_log_bin=0`, with a plain error when the target's user
/// may not do it.
pub async fn skip_binlog(conn: &mut Conn) -> anyhow::Result<()> {
    conn.query("SET SESSION sql_log_bin=0").await.map_err(|e| {
        anyhow!("the target refused SET SESSION sql_log_bin=0 ({e}); --skip-target-binlog needs the SUPER or BINLOG ADMIN privilege (MariaDB) or SYSTEM_VARIABLES_ADMIN (MySQL)")
    })?;
    Ok(())
}

/// Session settings for loading.
pub async fn load_session(conn: &mut Conn, no_binlog: bool) -> anyhow::Result<()> {
    if no_binlog {
        skip_binlog(conn).await?;
    }
    for s in [
        "SET SESSION sql_mode='NO_AUTO_VALUE_ON_ZERO'",
        "SET SESSION time_zone='+00:00'",
        "SET SESSION foreign_key_checks=0",
        "SET SESSION unique_checks=0",
    ] {
        q(conn, s).await?;
    }
    Ok(())
}

/// Reads a stored stream, verifying parts and the whole, calling `on_data`
/// with decompressed chunks.
async fn read_stream<F>(
    repo: &Repo,
    key: &BackupKey,
    s: &Stream,
    mut on_data: F,
) -> anyhow::Result<()>
where
    F: AsyncChunk,
{
    let mut dec = zstd::stream::write::Decoder::new(Vec::new())?;
    let mut sha = Sha256::new();
    let mut size = 0u64;
    for p in &s.parts {
        let k = key.part_key(&p.key)?;
        let body = repo
            .get(&k)
            .await
            .map_err(|e| anyhow!("reading {k}: {e}"))?;
        if body.len() as u64 != p.size || hex::encode(Sha256::digest(&body)) != p.sha256 {
            return Err(anyhow!(
                "backup part {k} does not match its manifest entry (size or SHA-256); the backup is damaged"
            ));
        }
        let body = crate::crypto::open_object(repo, &k, body)?;
        for chunk in body.chunks(256 << 10) {
            dec.write_all(chunk)
                .with_context(|| format!("decompressing {k}"))?;
            let out = std::mem::take(dec.get_mut());
            sha.update(&out);
            size += out.len() as u64;
            on_data.chunk(out).await?;
        }
    }
    dec.flush()?;
    let out = std::mem::take(dec.get_mut());
    sha.update(&out);
    size += out.len() as u64;
    on_data.chunk(out).await?;
    if size != s.size || hex::encode(sha.finalize()) != s.sha256 {
        return Err(anyhow!(
            "backup stream {} does not match its manifest (size or SHA-256); the backup is damaged",
            s.name
        ));
    }
    Ok(())
}

/// A consumer of decompressed chunks.
trait AsyncChunk {
    async fn chunk(&mut self, data: Vec<u8>) -> anyhow::Result<()>;
}

struct Collect(Vec<u8>);

impl AsyncChunk for &mut Collect {
    async fn chunk(&mut self, data: Vec<u8>) -> anyhow::Result<()> {
        self.0.extend_from_slice(&data);
        Ok(())
    }
}

/// Executes complete lines as statements.
struct Lines<'a> {
    conn: &'a mut Conn,
    pending: Vec<u8>,
    what: String,
    statements: u64,
}

impl AsyncChunk for &mut Lines<'_> {
    async fn chunk(&mut self, data: Vec<u8>) -> anyhow::Result<()> {
        self.pending.extend_from_slice(&data);
        let Some(last_nl) = self.pending.iter().rposition(|b| *b == b'\n') else {
            return Ok(());
        };
        let rest = self.pending.split_off(last_nl + 1);
        let done = std::mem::replace(&mut self.pending, rest);
        for line in done.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let sql = std::str::from_utf8(line).map_err(|_| {
                anyhow!(
                    "{}: a data line is not UTF-8; the backup is damaged",
                    self.what
                )
            })?;
            q(self.conn, sql)
                .await
                .with_context(|| format!("loading {}", self.what))?;
            self.statements += 1;
        }
        Ok(())
    }
}

/// Reads the schema stream.
pub async fn read_schema(
    repo: &Repo,
    key: &BackupKey,
    m: &MysqlManifest,
) -> anyhow::Result<Schema> {
    let mut c = Collect(Vec::new());
    read_stream(repo, key, &m.schema, &mut c).await?;
    serde_json::from_slice(&c.0).context("the backup's schema stream is not valid")
}

async fn exec(conn: &mut Conn, sql: &str, what: &str) -> anyhow::Result<()> {
    q(conn, sql)
        .await
        .with_context(|| format!("creating {what}"))?;
    Ok(())
}

/// Loads the whole backup. Returns the number of rows loaded.
pub async fn load_backup(
    repo: &Repo,
    key: &BackupKey,
    m: &MysqlManifest,
    params: &ConnParams,
    parallel: usize,
    no_binlog: bool,
) -> anyhow::Result<u64> {
    let schema = read_schema(repo, key, m).await?;
    let timeout = std::time::Duration::from_secs(15);
    let mut conn = Conn::connect(params, timeout).await?;
    load_session(&mut conn, no_binlog).await?;
    for db in &schema.databases {
        exec(&mut conn, &db.create, &format!("database {}", db.name)).await?;
        q(&mut conn, &format!("use {}", quote_ident(&db.name))).await?;
        for o in db
            .objects
            .iter()
            .filter(|o| o.kind == "table" || o.kind == "sequence")
        {
            exec(
                &mut conn,
                &o.create,
                &format!("table {}.{}", db.name, o.name),
            )
            .await?;
        }
    }

    let queue = Arc::new(Mutex::new(
        m.tables.iter().cloned().collect::<VecDeque<_>>(),
    ));
    let mut tasks = Vec::new();
    for _ in 0..parallel.clamp(1, 64).min(m.tables.len().max(1)) {
        let (queue, repo, key, params) = (queue.clone(), repo.clone(), key.clone(), params.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::connect(&params, timeout).await?;
            load_session(&mut c, no_binlog).await?;
            let mut rows = 0u64;
            loop {
                let t = queue.lock().await.pop_front();
                let Some(t) = t else { break };
                q(&mut c, &format!("use {}", quote_ident(&t.db))).await?;
                let mut lines = Lines {
                    conn: &mut c,
                    pending: Vec::new(),
                    what: format!("{}.{}", t.db, t.name),
                    statements: 0,
                };
                read_stream(&repo, &key, &t.data, &mut lines).await?;
                if !lines.pending.is_empty() {
                    return Err(anyhow!(
                        "{}.{}: the data stream ends inside a line",
                        t.db,
                        t.name
                    ));
                }
                rows += t.rows;
            }
            c.shutdown().await;
            anyhow::Ok(rows)
        }));
    }
    let mut rows = 0;
    for t in tasks {
        rows += t.await.map_err(|e| anyhow!("loader task failed: {e}"))??;
    }

    // Views may depend on each other: retry the failed ones while progress is made.
    let mut views: Vec<(&str, &str, &str, &SchemaObject)> = Vec::new();
    for db in &schema.databases {
        for o in db.objects.iter().filter(|o| o.kind == "view") {
            views.push((&db.name, &o.name, &o.create, o));
        }
    }
    while !views.is_empty() {
        let mut failed = Vec::new();
        let mut last_err = None;
        for v in &views {
            q(&mut conn, &format!("use {}", quote_ident(v.0))).await?;
            creation_context(&mut conn, v.3).await?;
            if let Err(e) = q(&mut conn, v.2).await {
                last_err = Some(e);
                failed.push(*v);
            }
        }
        if failed.len() == views.len() {
            let e = last_err.map(|e| e.to_string()).unwrap_or_default();
            return Err(anyhow!(
                "creating view {}.{}: {e}",
                failed[0].0,
                failed[0].1
            ));
        }
        views = failed;
    }
    for kind in ["procedure", "function", "trigger"] {
        for db in &schema.databases {
            for o in db.objects.iter().filter(|o| o.kind == kind) {
                q(&mut conn, &format!("use {}", quote_ident(&db.name))).await?;
                if let Some(mode) = &o.sql_mode {
                    q(
                        &mut conn,
                        &format!("SET SESSION sql_mode={}", sql_str(mode)),
                    )
                    .await?;
                }
                creation_context(&mut conn, o).await?;
                exec(
                    &mut conn,
                    &o.create,
                    &format!("{kind} {}.{}", db.name, o.name),
                )
                .await?;
            }
        }
    }
    conn.shutdown().await;
    Ok(rows)
}

/// Sets the session's `character_set_client` and `collation_connection` to
/// those `o` was created under (when the backup recorded them), so the
/// restored object keeps its creation context (as `mysqldump` restores it).
async fn creation_context(conn: &mut Conn, o: &SchemaObject) -> anyhow::Result<()> {
    if let Some(cs) = &o.character_set_client {
        q(
            conn,
            &format!("SET SESSION character_set_client={}", sql_str(cs)),
        )
        .await?;
    }
    if let Some(coll) = &o.collation_connection {
        q(
            conn,
            &format!("SET SESSION collation_connection={}", sql_str(coll)),
        )
        .await?;
    }
    Ok(())
}
