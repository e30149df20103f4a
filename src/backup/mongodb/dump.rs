//! Reading a MongoDB replica set for a logical backup: the oplog's newest
//! entry, the catalog (`listDatabases`, `listCollections`, `listIndexes`)
//! and each collection's documents as the raw BSON bytes of the server's
//! reply batches (`find` read as raw batches: documents are never decoded
//! or re-encoded), written as zstd streams cut into parts.
//!
//! What is dumped (and what is not, see also [`skip_collection`]):
//!
//! * every database but `local` (the oplog and replication state of THIS
//!   member) and `config` (sessions, `config.transactions`: bookkeeping the
//!   target keeps for itself; restore skips `config.*` oplog entries for the
//!   same reason);
//! * collections, views (definition only) and time-series collections (the
//!   definition, plus their `system.buckets.<name>` collection's documents);
//! * not: `system.views` (views come from `listCollections`), `system.profile`,
//!   `admin.system.version` / `admin.system.keys` (the target's own), and
//!   `admin.system.users` / `admin.system.roles`, which are dumped as the
//!   backup's `users` / `roles` streams instead.

use anyhow::{anyhow, Context as _};
use bson::raw::RawBsonRef;
use bson::{doc, Bson, Document, RawDocumentBuf};
use futures::TryStreamExt as _;
use mongodb::{Client, Database};

use super::manifest::CollectionDump;
use crate::backup::parts::StreamWriter;
use pitr_mongodb::OplogTs;

/// The newest entry of the oplog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OplogTop {
    pub ts: OplogTs,
    pub term: i64,
    /// `wall` in ms since the epoch (None on servers without it).
    pub wall_ms: Option<i64>,
}

/// The replica set's majority-committed optime (`hello.lastWrite.majorityOpTime`
/// and `majorityWriteDate`): the backup's start. No oplog hole lies below it
/// (secondaries fetch the oplog with forward cursors, which stop at the first
/// hole, so the majority can only have applied a hole-free prefix), whereas the
/// newest entry a reverse scan sees may lie above an earlier write still being
/// committed, which would then be in neither the dump nor the replay
/// (mongo: `src/mongo/db/repl/replication_coordinator_impl.cpp`,
/// `_fillIsMasterForReplSet`; `oplog_fetcher.cpp`). Waits up to 10 s while the
/// server reports none yet (just after the replica set was initiated).
pub async fn majority_point(client: &Client) -> anyhow::Result<OplogTop> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match crate::source::mongodb_majority::majority_optime(client).await? {
            Some(m) => {
                return Ok(OplogTop {
                    ts: m.ts,
                    term: m.term,
                    wall_ms: m.wall_ms,
                })
            }
            _ if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            _ => {
                return Err(anyhow!(
                    "the server reports no majority-committed optime (hello.lastWrite.majorityOpTime); \
                     pitr backs up members of an initiated replica set whose majority is reachable"
                ))
            }
        }
    }
}

/// Reads the newest oplog entry (`local.oplog.rs`, reverse natural order).
pub async fn oplog_top(client: &Client) -> anyhow::Result<OplogTop> {
    let coll = client
        .database("local")
        .collection::<RawDocumentBuf>("oplog.rs");
    let top = coll
        .find_one(doc! {})
        .sort(doc! {"$natural": -1})
        .await
        .context("reading the newest oplog entry (local.oplog.rs)")?
        .ok_or_else(|| {
            anyhow!("the server's oplog is empty: is it a replica-set member (replSet configured and initiated)?")
        })?;
    let ts = match top.get("ts") {
        Ok(Some(RawBsonRef::Timestamp(t))) => OplogTs::from_bson(t),
        _ => return Err(anyhow!("the newest oplog entry has no timestamp \"ts\"")),
    };
    let term = match top.get("t") {
        Ok(Some(RawBsonRef::Int64(t))) => t,
        Ok(Some(RawBsonRef::Int32(t))) => i64::from(t),
        _ => 0,
    };
    let wall_ms = match top.get("wall") {
        Ok(Some(RawBsonRef::DateTime(d))) => Some(d.timestamp_millis()),
        _ => None,
    };
    Ok(OplogTop { ts, term, wall_ms })
}

/// Databases never dumped.
pub fn skip_database(db: &str) -> bool {
    matches!(db, "local" | "config")
}

/// Collections of a dumped database that are not dumped as collections.
pub fn skip_collection(db: &str, name: &str) -> bool {
    if name.starts_with("system.buckets.") || name == "system.js" {
        return false;
    }
    if db == "admin" && matches!(name, "system.users" | "system.roles") {
        return true;
    }
    name.starts_with("system.")
}

/// Runs a cursor-returning command and collects every document.
async fn cursor_docs(db: &Database, cmd: Document) -> anyhow::Result<Vec<Document>> {
    let what = cmd.keys().next().cloned().unwrap_or_default();
    let cursor = db
        .run_cursor_command(cmd)
        .await
        .with_context(|| format!("{what} on database {}", db.name()))?;
    cursor
        .try_collect()
        .await
        .with_context(|| format!("{what} on database {}", db.name()))
}

/// The databases to dump, sorted.
pub async fn list_databases(client: &Client) -> anyhow::Result<Vec<String>> {
    let mut names = client
        .list_database_names()
        .await
        .context("listDatabases")?;
    names.retain(|d| !skip_database(d));
    names.sort();
    Ok(names)
}

/// A UUID (binary subtype 4) as 32 hex digits.
fn uuid_hex(v: Option<&Bson>) -> Option<String> {
    match v {
        Some(Bson::Binary(b)) if b.subtype == bson::spec::BinarySubtype::Uuid => {
            Some(hex::encode(&b.bytes))
        }
        _ => None,
    }
}

/// `listCollections` + `listIndexes` of one database: one entry per dumped
/// collection/view, with no data stream yet (`documents` 0).
pub async fn read_catalog(client: &Client, db_name: &str) -> anyhow::Result<Vec<CollectionDump>> {
    let db = client.database(db_name);
    let mut specs = cursor_docs(&db, doc! {"listCollections": 1}).await?;
    specs.sort_by(|a, b| {
        a.get_str("name")
            .unwrap_or("")
            .cmp(b.get_str("name").unwrap_or(""))
    });
    let mut out = Vec::new();
    for spec in specs {
        let name = spec
            .get_str("name")
            .map_err(|_| anyhow!("listCollections on {db_name} returned an entry without a name"))?
            .to_string();
        if skip_collection(db_name, &name) {
            continue;
        }
        let kind = spec.get_str("type").unwrap_or("collection").to_string();
        let options = spec.get_document("options").cloned().unwrap_or_default();
        let uuid = spec
            .get_document("info")
            .ok()
            .and_then(|i| uuid_hex(i.get("uuid")));
        let indexes = if kind == "collection" || kind == "timeseries" {
            cursor_docs(&db, doc! {"listIndexes": name.as_str()})
                .await?
                .into_iter()
                .map(|d| Bson::Document(d).into_canonical_extjson())
                .collect()
        } else {
            Vec::new()
        };
        out.push(CollectionDump {
            db: db_name.to_string(),
            name,
            kind,
            uuid,
            options: Bson::Document(options).into_canonical_extjson(),
            indexes,
            documents: 0,
            data: None,
        });
    }
    Ok(out)
}

/// Whether a catalog entry has documents to dump.
pub fn has_data(c: &CollectionDump) -> bool {
    c.kind == "collection"
}

/// Streams every document of `db.coll` (raw reply batches) into `w`;
/// returns the number of documents.
pub async fn dump_documents(
    client: &Client,
    db: &str,
    coll: &str,
    w: &mut StreamWriter<'_>,
) -> anyhow::Result<u64> {
    let c = client.database(db).collection::<RawDocumentBuf>(coll);
    let mut cursor = c
        .find(doc! {})
        .batch()
        .await
        .with_context(|| format!("reading {db}.{coll}"))?;
    let mut n = 0u64;
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    while let Some(batch) = cursor
        .try_next()
        .await
        .with_context(|| format!("reading {db}.{coll}"))?
    {
        let docs = batch
            .doc_slices()
            .with_context(|| format!("reading {db}.{coll}"))?;
        for d in docs {
            match d {
                Ok(RawBsonRef::Document(d)) => {
                    buf.extend_from_slice(d.as_bytes());
                    n += 1;
                }
                Ok(_) => return Err(anyhow!("{db}.{coll}: the server returned a non-document")),
                Err(e) => return Err(anyhow!("{db}.{coll}: malformed reply batch: {e}")),
            }
        }
        if buf.len() >= 1 << 20 {
            w.write(&buf).await?;
            buf.clear();
        }
    }
    if !buf.is_empty() {
        w.write(&buf).await?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_dumped() {
        assert!(skip_database("local") && skip_database("config"));
        assert!(!skip_database("admin") && !skip_database("shop"));
        assert!(skip_collection("admin", "system.users"));
        assert!(skip_collection("admin", "system.version"));
        assert!(skip_collection("shop", "system.views"));
        assert!(skip_collection("shop", "system.profile"));
        assert!(!skip_collection("shop", "system.buckets.weather"));
        assert!(!skip_collection("shop", "system.js"));
        assert!(!skip_collection("shop", "orders"));
        assert!(!skip_collection("admin", "settings"));
    }

    #[test]
    fn uuids_print_as_hex() {
        let b = Bson::Binary(bson::Binary {
            subtype: bson::spec::BinarySubtype::Uuid,
            bytes: (0u8..16).collect(),
        });
        assert_eq!(
            uuid_hex(Some(&b)).as_deref(),
            Some("000102030405060708090a0b0c0d0e0f")
        );
        assert_eq!(uuid_hex(Some(&Bson::Int32(1))), None);
    }
}
