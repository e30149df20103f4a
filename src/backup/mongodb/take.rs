//! Taking a MongoDB logical base backup (`pitr backup mongodb://...`).
//!
//! Order (the manifest's contract, see [`super::manifest`]):
//!
//! 1. the replica-set name (`hello.setName`) is the source identity's
//!    system id; the repository's identity must match before anything is
//!    written;
//! 2. `start` = the majority-committed optime (its `ts` and term `t`): no
//!    oplog hole lies below it (see [`dump::majority_point`]), so every
//!    write the dump can miss is in the replay from `start`;
//! 3. the catalog of every dumped database (see [`super::dump`]), then each
//!    collection's documents, `parallel` collections at a time, each as one
//!    zstd stream cut into parts; users and roles;
//! 4. `end` = the newest oplog entry after the dump, and its `wall`;
//! 5. wait until the repository's oplog archive covers `[start, end]`
//!    (`pitr archive` must be running for this replica set): the backup is
//!    restorable only with that stretch of oplog. The wait is bounded: it
//!    fails when the archive does not grow for [`OplogWait::idle`] or when
//!    no oplog of the source was ever archived;
//! 6. `manifest.json`, last, create-if-absent.
//!
//! A failure or a stop (SIGTERM) after step 1 deletes the parts written so
//! far: a backup directory holds a manifest and all its parts, or nothing.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use mongodb::Client;
use pitr_mongodb::OplogTs;
use tokio::sync::Mutex;

use super::dump::{self, OplogTop};
use super::manifest::{
    CollectionDump, MongoManifest, TsJson, MONGO_BACKUP_KIND, MONGO_MANIFEST_FORMAT_VERSION,
};
use crate::archive::catalog::Catalog;
use crate::archive::identity::{ensure_identity, SourceIdentity};
use crate::archive::keys::{BackupKey, SourceName};
use crate::archive::oplog_chain::{covers, oplog_chain};
use crate::backup::parts::StreamWriter;
use crate::backup::BackupRequest;
use crate::source::mongodb_tail::{connect, Conn};
use crate::storage::Repo;

/// How long an unreachable server is waited for (when the URL does not say).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Result of a backup.
#[derive(Debug, Clone)]
pub struct MongoBackupResult {
    pub key: BackupKey,
    pub manifest: MongoManifest,
}

/// How long to wait for the archiver to store the backup's oplog.
#[derive(Debug, Clone, Copy)]
pub struct OplogWait {
    /// Give up when the archive has not grown for this long.
    pub idle: Duration,
    /// Give up at once after this long when the source has no oplog archived at all.
    pub none: Duration,
}

impl Default for OplogWait {
    fn default() -> Self {
        OplogWait {
            idle: Duration::from_secs(60),
            none: Duration::from_secs(15),
        }
    }
}

/// The source name used when `--name` is not given: `mongo-<replica set>` (as the archiver).
pub fn default_source_name(set_name: &str) -> String {
    format!("mongo-{set_name}")
}

/// Takes a backup; see the module docs.
pub async fn take_mongo_backup(
    opts: &BackupRequest,
    repo: &Repo,
) -> anyhow::Result<MongoBackupResult> {
    take_mongo_backup_with(opts, repo, OplogWait::default()).await
}

/// [`take_mongo_backup`] with an explicit oplog wait. A caller that stops
/// it early drops the future and removes the directory published in
/// `opts.started` (`backup::interrupt::run_interruptible`).
pub async fn take_mongo_backup_with(
    opts: &BackupRequest,
    repo: &Repo,
    wait: OplogWait,
) -> anyhow::Result<MongoBackupResult> {
    let start_time = Utc::now();
    let Conn {
        client,
        set_name,
        version,
    } = connect(&opts.url, CONNECT_TIMEOUT).await?;
    let name = opts
        .name
        .clone()
        .unwrap_or_else(|| default_source_name(&set_name));
    let source = SourceName::new(&name).map_err(|e| anyhow!("invalid source name: {e}"))?;
    ensure_identity(
        repo,
        &SourceIdentity::new(&name, pitr_segment::Engine::MongoDb, &set_name),
    )
    .await?;
    let start = dump::majority_point(&client).await?;
    let id = start_time.format("%Y%m%dT%H%M%S%3fZ").to_string();
    let key = BackupKey::new(source.clone(), start.ts.to_log_pos(), &id)?;
    // Renewed until this function returns; removed by `run_interruptible`.
    let _pin = opts
        .started
        .begin(
            repo,
            &key,
            crate::engine::mongodb::term_epoch(Some(start.term)),
        )
        .await?;
    let run = async {
        let r = dump_all(opts, repo, &client, &key).await?;
        let end = dump::oplog_top(&client).await?;
        wait_for_oplog(repo, &source, start.ts, end.ts, wait).await?;
        anyhow::Ok((r, end))
    };
    let ((users, roles, collections), end) = match run.await {
        Ok(v) => v,
        Err(e) => {
            remove_parts(repo, &key).await;
            return Err(e);
        }
    };
    let manifest = MongoManifest {
        format_version: MONGO_MANIFEST_FORMAT_VERSION,
        kind: MONGO_BACKUP_KIND.into(),
        engine: "mongodb".into(),
        id,
        label: opts.label.clone().unwrap_or_default(),
        system_id: set_name,
        server_version: version,
        start: TsJson::from(start.ts),
        start_term: start.term,
        end: TsJson::from(end.ts),
        end_term: end.term,
        end_wall: wall_time(&end),
        start_time,
        stop_time: Utc::now(),
        users: Some(users),
        roles: Some(roles),
        collections,
    };
    let json =
        crate::crypto::seal_object(repo, &key.to_key(), serde_json::to_vec_pretty(&manifest)?)?;
    let stored = repo.put_if_absent(&key.to_key(), Bytes::from(json)).await;
    if let Err(e) = stored {
        remove_parts(repo, &key).await;
        return Err(anyhow!("storing the backup manifest: {e}"));
    }
    Ok(MongoBackupResult { key, manifest })
}

fn wall_time(t: &OplogTop) -> DateTime<Utc> {
    t.wall_ms
        .and_then(DateTime::from_timestamp_millis)
        .or_else(|| DateTime::from_timestamp(i64::from(t.ts.secs), 0))
        .unwrap_or_else(Utc::now)
}

type Dumped = (
    super::manifest::Stream,
    super::manifest::Stream,
    Vec<CollectionDump>,
);

/// Steps 3: catalog, documents (in parallel), users and roles.
async fn dump_all(
    opts: &BackupRequest,
    repo: &Repo,
    client: &Client,
    key: &BackupKey,
) -> anyhow::Result<Dumped> {
    let mut catalog = Vec::new();
    for db in dump::list_databases(client).await? {
        catalog.extend(dump::read_catalog(client, &db).await?);
    }
    let jobs: VecDeque<usize> = (0..catalog.len())
        .filter(|i| dump::has_data(&catalog[*i]))
        .collect();
    let queue = Arc::new(Mutex::new(jobs));
    let shared = Arc::new(catalog.clone());
    let mut tasks = Vec::new();
    for _ in 0..opts.parallel.clamp(1, 64) {
        let (queue, repo, key, client, shared) = (
            queue.clone(),
            repo.clone(),
            key.clone(),
            client.clone(),
            shared.clone(),
        );
        let (part_size, level) = (opts.part_size, opts.zstd_level);
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            loop {
                let job = queue.lock().await.pop_front();
                let Some(i) = job else { break };
                let c = &shared[i];
                let name = format!("c{i:05}.bson");
                let mut w = StreamWriter::new(&repo, &key, &name, part_size, level)?;
                let n = dump::dump_documents(&client, &c.db, &c.name, &mut w).await?;
                done.push((i, n, w.finish().await?));
            }
            anyhow::Ok(done)
        }));
    }
    let mut first_err = None;
    for t in tasks {
        match t.await {
            Ok(Ok(v)) => {
                for (i, n, s) in v {
                    catalog[i].documents = n;
                    catalog[i].data = Some(s);
                }
            }
            Ok(Err(e)) => first_err = first_err.or(Some(e)),
            Err(e) => first_err = first_err.or(Some(anyhow!("backup worker failed: {e}"))),
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    let mut w = StreamWriter::new(repo, key, "users.bson", opts.part_size, opts.zstd_level)?;
    dump::dump_documents(client, "admin", "system.users", &mut w)
        .await
        .context("dumping users (admin.system.users; the backup user needs the backup role)")?;
    let users = w.finish().await?;
    let mut w = StreamWriter::new(repo, key, "roles.bson", opts.part_size, opts.zstd_level)?;
    dump::dump_documents(client, "admin", "system.roles", &mut w)
        .await
        .context("dumping roles (admin.system.roles)")?;
    let roles = w.finish().await?;
    Ok((users, roles, catalog))
}

/// Waits until the archive covers `[start, end]` (step 5 in the module docs).
async fn wait_for_oplog(
    repo: &Repo,
    source: &SourceName,
    start: OplogTs,
    end: OplogTs,
    wait: OplogWait,
) -> anyhow::Result<()> {
    let (from, to) = (start.to_log_pos(), end.pos_after());
    let began = Instant::now();
    let mut last_growth = Instant::now();
    let mut last_tail = None;
    let mut told = false;
    loop {
        let catalog = Catalog::load(repo, source).await?;
        let terms: Vec<_> = catalog
            .epochs()
            .into_iter()
            .filter_map(|e| catalog.epoch(e).map(|c| c.segments().to_vec()))
            .collect();
        let chain = oplog_chain(&terms);
        if covers(&chain, from, to) {
            return Ok(());
        }
        let tail = chain.last().map(|s| s.key.end);
        if tail != last_tail {
            last_growth = Instant::now();
            last_tail = tail;
        }
        if tail.is_none() && began.elapsed() >= wait.none {
            return Err(anyhow!(
                "no oplog of source {} is archived in the repository: run `pitr archive <mongodb-url> --repo <repo> --name {}` alongside backups, then back up again",
                source.as_str(),
                source.as_str()
            ));
        }
        if last_growth.elapsed() >= wait.idle {
            return Err(anyhow!(
                "the archive of source {} did not reach the backup's oplog end {}:{} within {:?} (it ends at {}): is `pitr archive` running for this replica set?",
                source.as_str(),
                end.secs,
                end.inc,
                wait.idle,
                tail.and_then(OplogTs::last_before)
                    .map(|t| format!("{}:{}", t.secs, t.inc))
                    .unwrap_or_else(|| "-".into())
            ));
        }
        if !told {
            eprintln!(
                "backup: waiting for the archiver to store the oplog up to {}:{}",
                end.secs, end.inc
            );
            told = true;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Deletes what a failed backup stored (best effort).
async fn remove_parts(repo: &Repo, key: &BackupKey) {
    if let Ok(objs) = repo.list(&key.dir()).await {
        for o in objs {
            let _ = repo.delete(o.location.as_ref()).await;
        }
    }
}

/// What a finished MongoDB backup reports (`pitr backup`, `pitr run`).
pub fn report(r: &MongoBackupResult) -> crate::engine::BackupReport {
    let m = &r.manifest;
    let docs: u64 = m.collections.iter().map(|c| c.documents).sum();
    let json = serde_json::json!({
        "source": r.key.source.as_str(),
        "backup": r.key.dir(),
        "id": m.id,
        "replica_set": m.system_id,
        "start": format!("{}:{}", m.start.secs, m.start.inc),
        "end": format!("{}:{}", m.end.secs, m.end.inc),
        "end_wall": m.end_wall,
        "collections": m.collections.len(),
        "documents": docs,
        "stored_bytes": m.stored_bytes(),
    });
    let summary = format!(
        "backup {} complete: oplog {}:{} .. {}:{} (consistent at {}), {} collections, {docs} documents, {} bytes stored",
        r.key.dir(),
        m.start.secs,
        m.start.inc,
        m.end.secs,
        m.end.inc,
        m.end_wall.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        m.collections.len(),
        m.stored_bytes()
    );
    crate::engine::BackupReport {
        key: r.key.clone(),
        summary,
        json,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_name_from_the_replica_set() {
        assert_eq!(default_source_name("rs0"), "mongo-rs0");
    }
}
