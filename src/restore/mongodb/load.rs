//! Loads a MongoDB logical base backup into a target replica set.
//!
//! 1. **Check the target**: none of the backup's databases may exist there
//!    (for `admin`, none of the backup's `admin` collections), unless
//!    `--replace`, which drops them first.
//! 2. **Collections, with their UUIDs**: oplog entries carry the UUID of
//!    their collection (`ui`), and a server applying them through `applyOps`
//!    finds the collection by `ui` first. A restored collection therefore
//!    gets the UUID it had on the source: it is created through
//!    `applyOps: [{op: "c", ns: "<db>.$cmd", ui: <uuid>, o: {create: <name>,
//!    <options>}}]` (what `mongorestore --preserveUUID` does), and the replay
//!    keeps `ui` in the operations it sends. When the target refuses that
//!    (the first creation fails), every collection is created with a plain
//!    `create` and the replay drops `ui`, so operations resolve by
//!    namespace (the `mongorestore` default). Views and time-series
//!    collections (no UUID of their own) are created with `create`; a
//!    time-series collection creates its `system.buckets.*` collection
//!    itself, whose documents are then inserted directly.
//! 3. **Documents**: each collection's stream, checked against the
//!    manifest's sizes and SHA-256 sums as it is read, inserted in large
//!    unordered `insert` batches (the driver splits at the server's message
//!    limits), `parallel` collections at a time over one connection pool.
//! 4. **Indexes** after the documents (faster than maintaining them during
//!    the load), all but `_id_` (created with the collection).
//! 5. **Users and roles**: inserted into `admin.system.users` /
//!    `admin.system.roles` through `applyOps`, as the oplog records them.

use std::collections::{BTreeSet, VecDeque};
use std::io::Write as _;
use std::sync::Arc;

use anyhow::{anyhow, Context as _};
use bson::{doc, spec::BinarySubtype, Binary, Bson, Document, RawDocumentBuf};
use mongodb::Client;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use crate::archive::keys::BackupKey;
use crate::backup::mongodb::manifest::{CollectionDump, MongoManifest, Stream};
use crate::storage::Repo;

/// Bytes of documents per `insert_many` call.
const INSERT_BATCH_BYTES: usize = 16 << 20;
/// Documents per `insert_many` call.
const INSERT_BATCH_DOCS: usize = 50_000;

/// What the load did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LoadReport {
    pub collections: usize,
    pub views: usize,
    pub documents: u64,
    pub indexes: usize,
    pub users: u64,
    pub roles: u64,
    /// Collections were created with the source's UUIDs.
    pub uuids_preserved: bool,
}

/// Reads a stored stream part by part, decompressing and verifying.
pub struct StreamReader<'a> {
    repo: &'a Repo,
    key: &'a BackupKey,
    stream: &'a Stream,
    next_part: usize,
    dec: zstd::stream::write::Decoder<'static, Vec<u8>>,
    sha: Sha256,
    size: u64,
    done: bool,
}

impl<'a> StreamReader<'a> {
    pub fn new(
        repo: &'a Repo,
        key: &'a BackupKey,
        stream: &'a Stream,
    ) -> anyhow::Result<StreamReader<'a>> {
        Ok(StreamReader {
            repo,
            key,
            stream,
            next_part: 0,
            dec: zstd::stream::write::Decoder::new(Vec::new())?,
            sha: Sha256::new(),
            size: 0,
            done: false,
        })
    }

    /// The next decompressed chunk; `None` at the (verified) end.
    pub async fn next_chunk(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        if self.done {
            return Ok(None);
        }
        let Some(p) = self.stream.parts.get(self.next_part) else {
            self.dec.flush()?;
            let out = std::mem::take(self.dec.get_mut());
            self.account(&out);
            self.done = true;
            if self.size != self.stream.size
                || hex::encode(self.sha.clone().finalize()) != self.stream.sha256
            {
                return Err(anyhow!(
                    "backup stream {} does not match its manifest (size or SHA-256); the backup is damaged",
                    self.stream.name
                ));
            }
            return Ok(Some(out));
        };
        self.next_part += 1;
        let k = self.key.part_key(&p.key)?;
        let body = self
            .repo
            .get(&k)
            .await
            .map_err(|e| anyhow!("reading {k}: {e}"))?;
        if body.len() as u64 != p.size || hex::encode(Sha256::digest(&body)) != p.sha256 {
            return Err(anyhow!(
                "backup part {k} does not match its manifest entry (size or SHA-256); the backup is damaged"
            ));
        }
        let body = crate::crypto::open_object(self.repo, &k, body)?;
        self.dec
            .write_all(&body)
            .with_context(|| format!("decompressing {k}"))?;
        let out = std::mem::take(self.dec.get_mut());
        self.account(&out);
        Ok(Some(out))
    }

    fn account(&mut self, data: &[u8]) {
        self.sha.update(data);
        self.size += data.len() as u64;
    }
}

/// Splits BSON documents out of a byte stream that arrives in chunks.
#[derive(Debug, Default)]
pub struct DocSplitter {
    pending: Vec<u8>,
}

impl DocSplitter {
    /// Adds bytes; returns the complete documents now available.
    pub fn push(&mut self, data: &[u8], what: &str) -> anyhow::Result<Vec<RawDocumentBuf>> {
        self.pending.extend_from_slice(data);
        let mut out = Vec::new();
        let mut off = 0usize;
        while let Some(head) = self.pending.get(off..off + 4) {
            let len = i32::from_le_bytes([head[0], head[1], head[2], head[3]]);
            let len = usize::try_from(len)
                .ok()
                .filter(|l| *l >= 5)
                .ok_or_else(|| anyhow!("{what}: damaged document stream (length {len})"))?;
            if self.pending.len() < off + len {
                break;
            }
            let d = RawDocumentBuf::from_bytes(self.pending[off..off + len].to_vec())
                .map_err(|e| anyhow!("{what}: damaged document: {e}"))?;
            out.push(d);
            off += len;
        }
        self.pending.drain(..off);
        Ok(out)
    }

    /// Bytes of an unfinished document at the end (must be 0).
    pub fn leftover(&self) -> usize {
        self.pending.len()
    }
}

/// The backup's databases already on the target, and its `admin`
/// collections already there (`admin.<name>`).
pub async fn clashes(client: &Client, m: &MongoManifest) -> anyhow::Result<Vec<String>> {
    let existing = client
        .list_database_names()
        .await
        .context("listDatabases on the target")?;
    let wanted: BTreeSet<&str> = m.collections.iter().map(|c| c.db.as_str()).collect();
    let mut out: Vec<String> = wanted
        .iter()
        .filter(|d| **d != "admin" && existing.iter().any(|e| e == *d))
        .map(|d| d.to_string())
        .collect();
    if wanted.contains("admin") {
        let have = client
            .database("admin")
            .list_collection_names()
            .await
            .context("listCollections admin on the target")?;
        for c in m.collections.iter().filter(|c| c.db == "admin") {
            if have.contains(&c.name) {
                out.push(format!("admin.{}", c.name));
            }
        }
    }
    Ok(out)
}

/// Drops what [`clashes`] found (`--replace`).
pub async fn drop_clashes(client: &Client, clash: &[String]) -> anyhow::Result<()> {
    for c in clash {
        match c.strip_prefix("admin.") {
            Some(coll) => client
                .database("admin")
                .collection::<Document>(coll)
                .drop()
                .await
                .with_context(|| format!("dropping {c} on the target"))?,
            None => client
                .database(c)
                .drop()
                .await
                .with_context(|| format!("dropping database {c} on the target"))?,
        }
    }
    Ok(())
}

fn to_doc(v: &serde_json::Value, what: &str) -> anyhow::Result<Document> {
    match Bson::try_from(v.clone()) {
        Ok(Bson::Document(d)) => Ok(d),
        Ok(_) => Err(anyhow!("{what} is not a document in the backup manifest")),
        Err(e) => Err(anyhow!(
            "{what} in the backup manifest is not Extended JSON: {e}"
        )),
    }
}

fn uuid_of(c: &CollectionDump) -> anyhow::Result<Option<Binary>> {
    let Some(h) = &c.uuid else { return Ok(None) };
    let bytes = hex::decode(h)
        .ok()
        .filter(|b| b.len() == 16)
        .ok_or_else(|| anyhow!("{}.{}: malformed UUID {h:?} in the manifest", c.db, c.name))?;
    Ok(Some(Binary {
        subtype: BinarySubtype::Uuid,
        bytes,
    }))
}

/// The `_id` index spec the backup recorded for `c` (without the old `ns` field).
fn id_index_of(c: &CollectionDump) -> anyhow::Result<Option<Document>> {
    for spec in &c.indexes {
        if spec.get("name").and_then(|n| n.as_str()) == Some("_id_") {
            let mut d = to_doc(spec, &format!("{}.{} _id index", c.db, c.name))?;
            d.remove("ns");
            return Ok(Some(d));
        }
    }
    Ok(None)
}

fn create_cmd(c: &CollectionDump) -> anyhow::Result<Document> {
    let mut cmd = doc! {"create": c.name.as_str()};
    for (k, v) in to_doc(&c.options, &format!("{}.{} options", c.db, c.name))? {
        cmd.insert(k, v);
    }
    Ok(cmd)
}

/// A time-series collection of the backup creates this buckets collection.
fn created_by_timeseries(m: &MongoManifest, c: &CollectionDump) -> bool {
    c.name.strip_prefix("system.buckets.").is_some_and(|base| {
        m.collections
            .iter()
            .any(|t| t.db == c.db && t.name == base && t.kind == "timeseries")
    })
}

/// Step 2 of the module docs; returns whether UUIDs were kept.
async fn create_collections(client: &Client, m: &MongoManifest) -> anyhow::Result<bool> {
    let mut keep_uuid: Option<bool> = None;
    for c in m.collections.iter().filter(|c| c.kind == "collection") {
        if created_by_timeseries(m, c) {
            continue;
        }
        let cmd = create_cmd(c)?;
        let db = client.database(&c.db);
        let ui = if keep_uuid == Some(false) {
            None
        } else {
            uuid_of(c)?
        };
        if let Some(ui) = ui {
            // Without idIndex an applied create builds a v:1 _id index (a primary logs
            // idIndex only for v:2 and later): give the source's.
            let mut o = cmd.clone();
            if let Some(spec) = id_index_of(c)? {
                o.insert("idIndex", spec);
            }
            let op = doc! {"op": "c", "ns": format!("{}.$cmd", c.db), "ui": ui, "o": o};
            match client
                .database("admin")
                .run_command(doc! {"applyOps": [op]})
                .await
            {
                Ok(_) => {
                    keep_uuid = Some(true);
                    continue;
                }
                Err(e) if keep_uuid.is_none() => {
                    tracing::info!(
                        "the target does not create collections with a given UUID ({e}); collections get new UUIDs and the replay resolves operations by namespace"
                    );
                    keep_uuid = Some(false);
                }
                Err(e) => return Err(anyhow!("creating {}.{} on the target: {e}", c.db, c.name)),
            }
        }
        db.run_command(cmd)
            .await
            .with_context(|| format!("creating {}.{} on the target", c.db, c.name))?;
    }
    for kind in ["timeseries", "view"] {
        for c in m.collections.iter().filter(|c| c.kind == kind) {
            client
                .database(&c.db)
                .run_command(create_cmd(c)?)
                .await
                .with_context(|| format!("creating {kind} {}.{} on the target", c.db, c.name))?;
        }
    }
    Ok(keep_uuid.unwrap_or(false))
}

/// Inserts a stream's documents into `db.coll`; returns their number.
async fn insert_stream(
    repo: &Repo,
    key: &BackupKey,
    stream: &Stream,
    client: &Client,
    db: &str,
    coll: &str,
) -> anyhow::Result<u64> {
    let what = format!("{db}.{coll}");
    let target = client.database(db).collection::<RawDocumentBuf>(coll);
    let mut reader = StreamReader::new(repo, key, stream)?;
    let mut split = DocSplitter::default();
    let mut batch: Vec<RawDocumentBuf> = Vec::new();
    let mut bytes = 0usize;
    let mut n = 0u64;
    loop {
        let chunk = reader.next_chunk().await?;
        let last = chunk.is_none();
        for d in split.push(chunk.as_deref().unwrap_or_default(), &what)? {
            bytes += d.as_bytes().len();
            batch.push(d);
            if bytes >= INSERT_BATCH_BYTES || batch.len() >= INSERT_BATCH_DOCS {
                n += flush(&target, &mut batch, &what).await?;
                bytes = 0;
            }
        }
        if last {
            break;
        }
    }
    if split.leftover() != 0 {
        return Err(anyhow!(
            "{what}: the backup stream ends inside a document; the backup is damaged"
        ));
    }
    n += flush(&target, &mut batch, &what).await?;
    Ok(n)
}

async fn flush(
    target: &mongodb::Collection<RawDocumentBuf>,
    batch: &mut Vec<RawDocumentBuf>,
    what: &str,
) -> anyhow::Result<u64> {
    if batch.is_empty() {
        return Ok(0);
    }
    let docs = std::mem::take(batch);
    let r = target
        .insert_many(&docs)
        .ordered(false)
        .bypass_document_validation(true)
        .await
        .with_context(|| format!("inserting documents into {what} on the target"))?;
    Ok(r.inserted_ids.len() as u64)
}

/// Step 4: the indexes of every collection.
async fn create_indexes(client: &Client, m: &MongoManifest) -> anyhow::Result<usize> {
    let mut n = 0;
    for c in &m.collections {
        if c.name.starts_with("system.buckets.") || c.kind == "view" {
            continue;
        }
        let mut specs = Vec::new();
        for (i, v) in c.indexes.iter().enumerate() {
            let mut spec = to_doc(v, &format!("{}.{} index {i}", c.db, c.name))?;
            if spec.get_str("name") == Ok("_id_") {
                continue;
            }
            spec.remove("ns");
            specs.push(spec);
        }
        if specs.is_empty() {
            continue;
        }
        n += specs.len();
        client
            .database(&c.db)
            .run_command(doc! {"createIndexes": c.name.as_str(), "indexes": specs})
            .await
            .with_context(|| {
                format!("creating the indexes of {}.{} on the target", c.db, c.name)
            })?;
    }
    Ok(n)
}

/// Step 5: users or roles through `applyOps` inserts.
async fn load_authz(
    repo: &Repo,
    key: &BackupKey,
    stream: Option<&Stream>,
    client: &Client,
    coll: &str,
) -> anyhow::Result<u64> {
    let Some(stream) = stream else { return Ok(0) };
    let what = format!("admin.{coll}");
    let mut reader = StreamReader::new(repo, key, stream)?;
    let mut split = DocSplitter::default();
    let mut ops = Vec::new();
    while let Some(chunk) = reader.next_chunk().await? {
        for d in split.push(&chunk, &what)? {
            let o = d
                .to_document()
                .map_err(|e| anyhow!("{what}: damaged document: {e}"))?;
            ops.push(doc! {"op": "i", "ns": what.as_str(), "o": o});
        }
    }
    let n = ops.len() as u64;
    for chunk in ops.chunks(500) {
        client
            .database("admin")
            .run_command(doc! {"applyOps": chunk.to_vec()})
            .await
            .with_context(|| format!("restoring {what} on the target"))?;
    }
    Ok(n)
}

/// Loads the backup (steps 2-5; the caller did step 1).
pub async fn load_backup(
    repo: &Repo,
    key: &BackupKey,
    m: &MongoManifest,
    client: &Client,
    parallel: usize,
) -> anyhow::Result<LoadReport> {
    let mut rep = LoadReport {
        uuids_preserved: create_collections(client, m).await?,
        ..Default::default()
    };
    rep.views = m.collections.iter().filter(|c| c.kind == "view").count();
    rep.collections = m.collections.len() - rep.views;
    let jobs: VecDeque<usize> = (0..m.collections.len())
        .filter(|i| m.collections[*i].data.is_some())
        .collect();
    let queue = Arc::new(Mutex::new(jobs));
    let shared = Arc::new(m.clone());
    let mut tasks = Vec::new();
    for _ in 0..parallel.clamp(1, 64) {
        let (queue, repo, key, client, m) = (
            queue.clone(),
            repo.clone(),
            key.clone(),
            client.clone(),
            shared.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut docs = 0u64;
            loop {
                let job = queue.lock().await.pop_front();
                let Some(i) = job else { break };
                let c = &m.collections[i];
                if let Some(s) = &c.data {
                    let n = insert_stream(&repo, &key, s, &client, &c.db, &c.name).await?;
                    if n != c.documents {
                        return Err(anyhow!(
                            "{}.{}: inserted {n} documents, the backup holds {}",
                            c.db,
                            c.name,
                            c.documents
                        ));
                    }
                    docs += n;
                }
            }
            anyhow::Ok(docs)
        }));
    }
    let mut first_err = None;
    for t in tasks {
        match t.await {
            Ok(Ok(n)) => rep.documents += n,
            Ok(Err(e)) => first_err = first_err.or(Some(e)),
            Err(e) => first_err = first_err.or(Some(anyhow!("load worker failed: {e}"))),
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    rep.indexes = create_indexes(client, m).await?;
    rep.users = load_authz(repo, key, m.users.as_ref(), client, "system.users").await?;
    rep.roles = load_authz(repo, key, m.roles.as_ref(), client, "system.roles").await?;
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_split_across_chunks() {
        let docs: Vec<RawDocumentBuf> = (0..5i32)
            .map(|i| {
                RawDocumentBuf::from_document(&doc! {"_id": i, "s": "x".repeat(i as usize * 7)})
                    .unwrap()
            })
            .collect();
        let all: Vec<u8> = docs.iter().flat_map(|d| d.as_bytes().to_vec()).collect();
        for step in [1usize, 3, 17, all.len()] {
            let mut s = DocSplitter::default();
            let mut got = Vec::new();
            for c in all.chunks(step) {
                got.extend(s.push(c, "t").unwrap());
            }
            assert_eq!(got, docs, "chunk size {step}");
            assert_eq!(s.leftover(), 0);
        }
        let mut s = DocSplitter::default();
        assert!(s.push(&[1, 0, 0, 0, 0], "t").is_err());
        let mut s = DocSplitter::default();
        s.push(&all[..all.len() - 1], "t").unwrap();
        assert_eq!(s.leftover(), docs[4].as_bytes().len() - 1);
    }
}
