//! `applyOps` on the MongoDB test double with real oplog entries: the time-series `$v: 2`
//! updates (nested sub-diffs) replayed onto the dumped bucket documents, checked field by
//! field against what the entries set; catalog entries (create, createIndexes, collMod),
//! replayed the way a restore sends them (`pitr_mongodb::apply::plan`: a `create` alone, an
//! index build as the `createIndexes` command: the double refuses them inside a batch, as a
//! server does), and a vectored-insert `applyOps`.

use std::collections::BTreeMap;
use std::path::Path;

use bson::{doc, Bson, Document, RawDocumentBuf};
use mongodb::Client;
use pitr_integration::mongo::{fixtures_dir, read_bson_file};
use pitr_integration::{MongoDouble, MongoOptions};

fn start() -> MongoDouble {
    MongoDouble::start_bin(
        Path::new(env!("CARGO_BIN_EXE_mongo-double")),
        MongoOptions::default(),
    )
    .expect("start mongo-double")
}

/// Replays `entries` as a restore does: the planner's requests, in order, each on its
/// database; collection UUIDs kept when `keep_uuids`. Returns the operations applied.
async fn replay_with(c: &Client, entries: &[Document], keep_uuids: bool) -> i64 {
    let raw: Vec<RawDocumentBuf> = entries
        .iter()
        .map(|d| RawDocumentBuf::from_document(d).expect("raw"))
        .collect();
    let parsed: Vec<pitr_mongodb::OplogEntryRef> = raw
        .iter()
        .map(|r| pitr_mongodb::OplogEntryRef::parse(r).expect("entry"))
        .collect();
    let target = parsed.iter().map(|e| e.ts()).max().expect("entries");
    let opts = pitr_mongodb::apply::ApplyOptions {
        preserve_uuid: keep_uuids,
        ..pitr_mongodb::apply::ApplyOptions::new(target)
    };
    let (requests, _) = pitr_mongodb::apply::plan(parsed, opts).expect("plan");
    let mut applied = 0;
    for r in requests {
        let cmd = r.command.to_document().expect("command");
        let out = c
            .database(&r.db)
            .run_command(cmd.clone())
            .await
            .unwrap_or_else(|e| panic!("{cmd}: {e}"));
        applied += out.get_i32("applied").map_or(1, i64::from);
    }
    applied
}

async fn replay(c: &Client, entries: &[Document]) {
    replay_with(c, entries, true).await;
}

fn docs(path: &str) -> Vec<Document> {
    read_bson_file(&fixtures_dir().join(path))
        .expect("fixture")
        .into_iter()
        .map(|b| {
            RawDocumentBuf::from_bytes(b)
                .expect("raw")
                .to_document()
                .expect("decodes")
        })
        .collect()
}

/// Every (path, value) a diff sets, walking `u`/`i` sections and `s<field>` sub-diffs.
fn set_paths(diff: &Document, prefix: &str, out: &mut Vec<(String, Bson)>) {
    for (k, v) in diff {
        match (k.as_str(), v) {
            ("u" | "i", Bson::Document(fields)) => {
                for (f, val) in fields {
                    out.push((format!("{prefix}{f}"), val.clone()));
                }
            }
            (_, Bson::Document(sub)) if k.starts_with('s') => {
                set_paths(sub, &format!("{prefix}{}.", &k[1..]), out);
            }
            _ => panic!("unexpected diff section {k} in the fixture"),
        }
    }
}

fn at<'a>(d: &'a Document, path: &str) -> Option<&'a Bson> {
    let mut parts = path.split('.');
    let mut cur = d.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_document()?.get(p)?;
    }
    Some(cur)
}

const TS: &str = "mongorestore/testdata/timeseries_tests/ts_dump_with_oplog/";

#[tokio::test]
async fn time_series_diffs_replay_onto_the_dumped_buckets() {
    let server = start();
    let c = Client::with_uri_str(server.url()).await.expect("client");
    let db = c.database("timeseries_test");
    let buckets = docs(&format!("{TS}timeseries_test/system.buckets.foo_ts.bson"));
    assert!(!buckets.is_empty());
    let coll = db.collection::<Document>("system.buckets.foo_ts");
    coll.insert_many(buckets.clone())
        .await
        .expect("load the dump");

    let entries = docs(&format!("{TS}oplog.part1.bson"));
    assert_eq!(entries.len(), 300);
    // The buckets were loaded with a new UUID (as a time-series create gives them): sent
    // as recorded, with their `ui`, the entries are refused; the restore's requests
    // resolve them by namespace.
    let ops: Vec<Bson> = entries.iter().cloned().map(Bson::Document).collect();
    let refused = c
        .database("admin")
        .run_command(doc! {"applyOps": ops})
        .await
        .expect_err("unknown ui");
    assert!(
        refused.to_string().contains("NamespaceNotFound"),
        "{refused}"
    );
    assert_eq!(replay_with(&c, &entries, true).await, 300);

    // Expected, from the entries alone: the last value each entry sets at each path.
    let mut expected: BTreeMap<(String, String), Bson> = BTreeMap::new();
    for e in &entries {
        let id = e
            .get_document("o2")
            .expect("o2")
            .get_object_id("_id")
            .expect("_id");
        let o = e.get_document("o").expect("o");
        assert_eq!(o.get_i32("$v"), Ok(2));
        let mut paths = Vec::new();
        set_paths(o.get_document("diff").expect("diff"), "", &mut paths);
        assert!(!paths.is_empty());
        for (p, v) in paths {
            expected.insert((id.to_hex(), p), v);
        }
    }
    let mut after = BTreeMap::new();
    let mut cur = coll.find(doc! {}).await.expect("find");
    while cur.advance().await.expect("advance") {
        let d = cur.deserialize_current().expect("doc");
        after.insert(d.get_object_id("_id").expect("_id").to_hex(), d);
    }
    assert_eq!(
        after.len(),
        buckets.len(),
        "updates only: no bucket added or lost"
    );
    for ((id, path), want) in &expected {
        let d = after
            .get(id)
            .unwrap_or_else(|| panic!("bucket {id} missing"));
        assert_eq!(at(d, path), Some(want), "bucket {id} field {path}");
    }
    // Fields no entry touched are as dumped, in the dumped order.
    for b in &buckets {
        let id = b.get_object_id("_id").expect("_id").to_hex();
        let d = &after[&id];
        assert_eq!(d.get("meta"), b.get("meta"), "bucket {id} meta");
        assert_eq!(
            d.keys().collect::<Vec<_>>(),
            b.keys().collect::<Vec<_>>(),
            "bucket {id} field order"
        );
        for (field, old) in b.get_document("data").expect("data") {
            let old = old.as_document().expect("column");
            let new = d
                .get_document("data")
                .expect("data")
                .get_document(field)
                .expect("column");
            for (k, v) in old {
                if !expected.contains_key(&(id.clone(), format!("data.{field}.{k}"))) {
                    assert_eq!(new.get(k), Some(v), "bucket {id} data.{field}.{k}");
                }
            }
            // Columns grow at the end: keys stay "0", "1", ... in order.
            let keys: Vec<usize> = new
                .keys()
                .map(|k| k.parse().expect("numeric key"))
                .collect();
            assert_eq!(
                keys,
                (0..keys.len()).collect::<Vec<_>>(),
                "bucket {id} data.{field}"
            );
        }
    }
    // Each replayed entry wrote one `u` entry with the same diff.
    let mut cur = c
        .database("local")
        .collection::<Document>("oplog.rs")
        .find(doc! {"op": "u", "ns": "timeseries_test.system.buckets.foo_ts"})
        .await
        .expect("oplog");
    let mut logged = Vec::new();
    while cur.advance().await.expect("advance") {
        logged.push(cur.deserialize_current().expect("entry"));
    }
    assert_eq!(logged.len(), 300);
    assert_eq!(logged[0].get_document("o"), entries[0].get_document("o"));
}

#[tokio::test]
async fn catalog_and_vectored_insert_entries_replay() {
    let server = start();
    let c = Client::with_uri_str(server.url()).await.expect("client");
    let admin = c.database("admin");
    let entries = docs("mongorestore/testdata/oplogs/bson/collMod_indexUniqueness.bson");
    let db = c.database("mongodump_test_db");
    let indexes = || async {
        let r = db
            .run_command(doc! {"listIndexes": "coll1"})
            .await
            .expect("listIndexes");
        r.get_document("cursor")
            .expect("cursor")
            .get_array("firstBatch")
            .expect("batch")
            .iter()
            .filter_map(|b| b.as_document().cloned())
            .collect::<Vec<Document>>()
    };
    // Up to `unique: true` on a_1 (entry 8): a_1 is unique, its prepareUnique phase over.
    // Sent as one batch, as a lenient double would take it, the create is refused.
    let ops: Vec<Bson> = entries[..9].iter().cloned().map(Bson::Document).collect();
    let refused = admin
        .run_command(doc! {"applyOps": ops})
        .await
        .expect_err("create among other operations");
    assert!(refused.to_string().contains("Unauthorized"), "{refused}");
    replay(&c, &entries[..9]).await;
    let r = db
        .run_command(doc! {"listCollections": 1, "filter": {"name": "coll1"}})
        .await
        .expect("list");
    let batch = r
        .get_document("cursor")
        .expect("cursor")
        .get_array("firstBatch")
        .expect("batch");
    let info = batch[0]
        .as_document()
        .expect("entry")
        .get_document("info")
        .expect("info");
    assert_eq!(
        info.get("uuid"),
        entries[0].get("ui"),
        "the replayed create keeps the entry's ui"
    );
    let idx = indexes().await;
    let names: Vec<&str> = idx
        .iter()
        .map(|d| d.get_str("name").expect("name"))
        .collect();
    assert_eq!(names, vec!["_id_", "a_1", "b_1", "c_1", "d_1"]);
    assert_eq!(
        idx[1],
        doc! {"v": 2, "key": {"a": 1}, "name": "a_1", "unique": true}
    );
    assert_eq!(
        idx[2],
        doc! {"v": 2, "hidden": true, "key": {"b": 1}, "name": "b_1"}
    );
    assert_eq!(
        idx[3],
        doc! {"v": 2, "key": {"c": 1}, "name": "c_1", "expireAfterSeconds": 100000}
    );
    // The rest: every index made unique, then non-unique again.
    replay(&c, &entries[9..]).await;
    let idx = indexes().await;
    assert_eq!(idx[1], doc! {"v": 2, "key": {"a": 1}, "name": "a_1"});
    assert_eq!(
        idx[4],
        doc! {"v": 2, "hidden": true, "key": {"d": 1}, "name": "d_1", "expireAfterSeconds": 100000}
    );

    // Recorded on another server: its UUIDs are not this collection's.
    let vectored = docs("mongorestore/testdata/oplogs/bson/vectored_insert.bson");
    replay_with(&c, &vectored, false).await;
    let coll = db.collection::<Document>("coll1");
    let mut got = Vec::new();
    let mut cur = coll
        .find(doc! {})
        .sort(doc! {"_id": 1})
        .await
        .expect("find");
    while cur.advance().await.expect("advance") {
        got.push(cur.deserialize_current().expect("doc"));
    }
    assert_eq!(
        got,
        vec![doc! {"_id": 100, "a": 1}, doc! {"_id": 200, "a": 2}]
    );
    // And a delete, and an update in the replacement form.
    let ops = vec![
        Bson::Document(doc! {"op": "d", "ns": "mongodump_test_db.coll1", "o": {"_id": 100}}),
        Bson::Document(
            doc! {"op": "u", "ns": "mongodump_test_db.coll1", "o": {"_id": 200, "a": 20}, "o2": {"_id": 200}},
        ),
        Bson::Document(
            doc! {"op": "u", "ns": "mongodump_test_db.coll1", "o": {"$v": 2, "diff": {"sx": {"a": true, "u2": 7}}}, "o2": {"_id": 200}},
        ),
    ];
    admin
        .run_command(doc! {"applyOps": ops})
        .await
        .expect("applyOps d/u");
    let only = coll
        .find_one(doc! {})
        .await
        .expect("find")
        .expect("one doc");
    // The sub-diff names a field the document lacks: ignored, as the server's
    // document_diff_applier.cpp does (it walks the pre-image's fields).
    assert_eq!(only, doc! {"_id": 200, "a": 20});
    assert_eq!(coll.count_documents(doc! {}).await.expect("count"), 1);
}
