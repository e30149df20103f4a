//! The MongoDB test double through the official Rust driver: SCRAM-SHA-256, CRUD and the
//! oplog entries it writes read back through a tailable awaitData cursor, transactions
//! (one applyOps entry; split into partialTxn entries beyond 16 MB), step-down terms, the
//! oplog size cap, a seeded oplog served unchanged, and the catalog commands.

use std::path::Path;
use std::time::Duration;

use bson::{doc, Bson, Document, RawDocumentBuf, Timestamp};
use mongodb::error::ErrorKind;
use mongodb::options::CursorType;
use mongodb::{Client, Collection};
use pitr_integration::mongo::{fixtures_dir, read_bson_file};
use pitr_integration::{MongoDouble, MongoOptions};

fn start(opts: MongoOptions) -> MongoDouble {
    MongoDouble::start_bin(Path::new(env!("CARGO_BIN_EXE_mongo-double")), opts).expect("start mongo-double")
}

async fn client(server: &MongoDouble) -> Client {
    Client::with_uri_str(server.url()).await.expect("client")
}

fn oplog(c: &Client) -> Collection<RawDocumentBuf> {
    c.database("local").collection("oplog.rs")
}

async fn all_entries(c: &Client, filter: Document) -> Vec<Document> {
    let mut cur = oplog(c).find(filter).await.expect("find");
    let mut out = Vec::new();
    while cur.advance().await.expect("advance") {
        out.push(cur.current().to_raw_document_buf().to_document().expect("decodes"));
    }
    out
}

async fn newest(c: &Client) -> Document {
    let mut cur = oplog(c).find(doc! {}).sort(doc! {"$natural": -1}).limit(1).await.expect("find");
    assert!(cur.advance().await.expect("advance"));
    cur.current().to_raw_document_buf().to_document().expect("decodes")
}

fn code_of(e: &mongodb::error::Error) -> Option<i32> {
    match &*e.kind {
        ErrorKind::Command(c) => Some(c.code),
        _ => None,
    }
}

#[tokio::test]
async fn scram_sha_256_and_a_wrong_password() {
    let server = start(MongoOptions::default());
    let good = client(&server).await;
    good.database("admin").run_command(doc! {"ping": 1}).await.expect("ping");
    let names = good.list_database_names().await.expect("listDatabases");
    assert!(names.contains(&"local".to_string()), "{names:?}");

    let bad = Client::with_uri_str(server.url_as("pitr", "wrong")).await.expect("client");
    let err = bad
        .database("admin")
        .run_command(doc! {"ping": 1})
        .await
        .expect_err("a wrong password must fail");
    let msg = err.to_string();
    assert!(msg.contains("Authentication failed."), "{msg}");

    let anonymous = Client::with_uri_str(format!("mongodb://127.0.0.1:{}/?replicaSet=rs0&directConnection=true", server.port()))
        .await
        .expect("client");
    let err = anonymous
        .database("x")
        .collection::<Document>("y")
        .find_one(doc! {})
        .await
        .expect_err("unauthenticated reads are refused");
    assert_eq!(code_of(&err), Some(13), "{err}");
}

#[tokio::test]
async fn crud_entries_reach_a_tailable_await_cursor() {
    let server = start(MongoOptions::default());
    let c = client(&server).await;
    let t0 = newest(&c).await.get_timestamp("ts").expect("ts");
    let mut tail = oplog(&c)
        .find(doc! {"ts": {"$gt": t0}})
        .cursor_type(CursorType::TailableAwait)
        .max_await_time(Duration::from_millis(300))
        .await
        .expect("tail");

    let coll = c.database("app").collection::<Document>("people");
    coll.insert_many(vec![doc! {"_id": 1, "name": "ann", "n": 1}, doc! {"_id": 2, "name": "bob", "tags": ["a"]}])
        .await
        .expect("insert_many");
    coll.update_one(doc! {"_id": 1}, doc! {"$inc": {"n": 4}, "$unset": {"name": ""}}).await.expect("update");
    coll.update_one(doc! {"_id": 2}, doc! {"$push": {"tags": "b"}}).await.expect("push");
    coll.replace_one(doc! {"_id": 2}, doc! {"name": "bobby"}).await.expect("replace");
    let up = coll.update_one(doc! {"_id": 3}, doc! {"$set": {"x": 1}}).upsert(true).await.expect("upsert");
    assert_eq!(up.upserted_id, Some(Bson::Int32(3)));
    coll.delete_one(doc! {"_id": 1}).await.expect("delete");

    // Read them through the tailable cursor (getMore waits for what is not there yet).
    let mut got = Vec::new();
    while got.len() < 8 {
        assert!(tail.advance().await.expect("advance"), "tailable cursor closed");
        got.push(tail.current().to_raw_document_buf().to_document().expect("decodes"));
    }
    let kinds: Vec<(&str, &str)> = got
        .iter()
        .map(|e| (e.get_str("op").expect("op"), e.get_str("ns").expect("ns")))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("c", "app.$cmd"),
            ("i", "app.people"),
            ("i", "app.people"),
            ("u", "app.people"),
            ("u", "app.people"),
            ("u", "app.people"),
            ("i", "app.people"),
            ("d", "app.people"),
        ]
    );
    assert_eq!(got[0].get_document("o").expect("o").get_str("create"), Ok("people"));
    // insert_many is one retryable write: one txnNumber, statements 0 and 1, linked.
    assert_eq!(got[1].get_i64("txnNumber"), got[2].get_i64("txnNumber"));
    assert_eq!(got[1].get_i32("stmtId"), Ok(0));
    assert_eq!(got[2].get_i32("stmtId"), Ok(1));
    let prev = got[2].get_document("prevOpTime").expect("prevOpTime");
    assert_eq!(prev.get_timestamp("ts"), got[1].get_timestamp("ts"));
    assert_eq!(got[3].get_document("o").expect("o"), &doc! {"$v": 2, "diff": {"d": {"name": false}, "u": {"n": 5}}});
    assert_eq!(got[3].get_document("o2").expect("o2"), &doc! {"_id": 1});
    assert_eq!(got[4].get_document("o").expect("o"), &doc! {"$v": 2, "diff": {"stags": {"a": true, "u1": "b"}}});
    assert_eq!(got[5].get_document("o").expect("o"), &doc! {"_id": 2, "name": "bobby"}, "a replacement logs the document");
    assert_eq!(got[6].get_document("o").expect("o"), &doc! {"_id": 3, "x": 1});
    assert_eq!(got[7].get_document("o").expect("o"), &doc! {"_id": 1});
    for w in got.windows(2) {
        let (a, b) = (w[0].get_timestamp("ts").expect("ts"), w[1].get_timestamp("ts").expect("ts"));
        assert!((a.time, a.increment) < (b.time, b.increment), "ts increase");
    }

    // The data itself.
    let mut cur = coll.find(doc! {}).sort(doc! {"_id": 1}).batch_size(1).await.expect("find");
    let mut docs = Vec::new();
    while cur.advance().await.expect("advance") {
        docs.push(cur.deserialize_current().expect("doc"));
    }
    assert_eq!(docs, vec![doc! {"_id": 2, "name": "bobby"}, doc! {"_id": 3, "x": 1}]);
    assert_eq!(coll.count_documents(doc! {"_id": {"$gte": 3}}).await.expect("count"), 1);

    // A write while the cursor waits in getMore is delivered to it.
    let writer = {
        let coll = coll.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            coll.insert_one(doc! {"_id": 9}).await.expect("insert");
        })
    };
    assert!(tail.advance().await.expect("advance"));
    let e = tail.current().to_raw_document_buf().to_document().expect("decodes");
    writer.await.expect("writer");
    assert_eq!(e.get_document("o").expect("o"), &doc! {"_id": 9});
}

#[tokio::test]
async fn transactions_commit_one_applyops_entry_and_abort_nothing() {
    let server = start(MongoOptions::default());
    let c = client(&server).await;
    let coll = c.database("bank").collection::<Document>("acct");
    coll.insert_many(vec![doc! {"_id": "a", "bal": 10}, doc! {"_id": "b", "bal": 0}]).await.expect("seed");
    let t0 = newest(&c).await.get_timestamp("ts").expect("ts");

    let mut s = c.start_session().await.expect("session");
    s.start_transaction().await.expect("start");
    coll.update_one(doc! {"_id": "a"}, doc! {"$inc": {"bal": -5}}).session(&mut s).await.expect("debit");
    coll.update_one(doc! {"_id": "b"}, doc! {"$inc": {"bal": 5}}).session(&mut s).await.expect("credit");
    coll.insert_one(doc! {"_id": "log1"}).session(&mut s).await.expect("log");
    s.commit_transaction().await.expect("commit");

    let entries = all_entries(&c, doc! {"ts": {"$gt": t0}}).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    let e = &entries[0];
    assert_eq!(e.get_str("op"), Ok("c"));
    assert_eq!(e.get_str("ns"), Ok("admin.$cmd"));
    assert!(e.get_document("lsid").expect("lsid").contains_key("uid"));
    assert!(e.get_i64("txnNumber").is_ok());
    let ops = e.get_document("o").expect("o").get_array("applyOps").expect("applyOps");
    let kinds: Vec<&str> = ops
        .iter()
        .map(|o| o.as_document().and_then(|d| d.get_str("op").ok()).unwrap_or("?"))
        .collect();
    assert_eq!(kinds, vec!["u", "u", "i"]);

    // Aborted: the writes are taken back and nothing is logged.
    let t1 = newest(&c).await.get_timestamp("ts").expect("ts");
    s.start_transaction().await.expect("start");
    coll.update_one(doc! {"_id": "a"}, doc! {"$set": {"bal": 1000}}).session(&mut s).await.expect("write");
    coll.delete_one(doc! {"_id": "b"}).session(&mut s).await.expect("write");
    s.abort_transaction().await.expect("abort");
    assert!(all_entries(&c, doc! {"ts": {"$gt": t1}}).await.is_empty());
    let a = coll.find_one(doc! {"_id": "a"}).await.expect("find").expect("a");
    assert_eq!(a.get_i32("bal"), Ok(5));
    assert!(coll.find_one(doc! {"_id": "b"}).await.expect("find").is_some());
}

#[tokio::test]
async fn a_transaction_over_16_mb_is_split_into_partial_entries() {
    let server = start(MongoOptions::default());
    let c = client(&server).await;
    let coll = c.database("big").collection::<Document>("blobs");
    coll.insert_one(doc! {"_id": -1}).await.expect("create");
    let t0 = newest(&c).await.get_timestamp("ts").expect("ts");
    let blob = "x".repeat(1024 * 1024);
    let mut s = c.start_session().await.expect("session");
    s.start_transaction().await.expect("start");
    for i in 0..20 {
        coll.insert_one(doc! {"_id": i, "blob": blob.clone()}).session(&mut s).await.expect("insert");
    }
    s.commit_transaction().await.expect("commit");
    let entries = all_entries(&c, doc! {"ts": {"$gt": t0}}).await;
    assert_eq!(entries.len(), 2, "20 MB of operations take two entries");
    let (first, last) = (&entries[0], &entries[1]);
    let o1 = first.get_document("o").expect("o");
    let o2 = last.get_document("o").expect("o");
    assert_eq!(o1.get_bool("partialTxn"), Ok(true));
    assert!(!o2.contains_key("partialTxn"));
    assert_eq!(o2.get_i64("count"), Ok(20));
    let n1 = o1.get_array("applyOps").expect("ops").len();
    let n2 = o2.get_array("applyOps").expect("ops").len();
    assert_eq!(n1 + n2, 20);
    assert!(n1 >= 15, "the first entry is filled up to 16 MB: {n1} ops");
    assert_eq!(
        first.get_document("prevOpTime").expect("prev"),
        &doc! {"ts": Timestamp { time: 0, increment: 0 }, "t": -1i64}
    );
    let prev = last.get_document("prevOpTime").expect("prev");
    assert_eq!(prev.get_timestamp("ts"), first.get_timestamp("ts"));
    assert_eq!(first.get_i64("txnNumber"), last.get_i64("txnNumber"));
    assert_eq!(coll.count_documents(doc! {}).await.expect("count"), 21);
}

#[tokio::test]
async fn a_step_down_starts_a_new_term() {
    let server = start(MongoOptions::default());
    let c = client(&server).await;
    let coll = c.database("d").collection::<Document>("c");
    coll.insert_one(doc! {"_id": 1}).await.expect("insert");
    assert_eq!(newest(&c).await.get_i64("t"), Ok(1));
    let admin = c.database("admin");
    admin.run_command(doc! {"replSetStepDown": 60, "force": true}).await.expect("stepDown");
    let n = newest(&c).await;
    assert_eq!(n.get_str("op"), Ok("n"));
    assert_eq!(n.get_document("o").expect("o"), &doc! {"msg": "new primary"});
    assert_eq!(n.get_i64("t"), Ok(2));
    coll.insert_one(doc! {"_id": 2}).await.expect("insert after the step-down");
    assert_eq!(newest(&c).await.get_i64("t"), Ok(2));
    let status = admin.run_command(doc! {"replSetGetStatus": 1}).await.expect("status");
    assert_eq!(status.get_str("set"), Ok("rs0"));
    assert_eq!(status.get_i64("term"), Ok(2));
    let members = status.get_array("members").expect("members");
    let m = members[0].as_document().expect("member");
    assert_eq!(m.get_str("stateStr"), Ok("PRIMARY"));
    assert_eq!(m.get_document("optime").expect("optime").get_i64("t"), Ok(2));
}

#[tokio::test]
async fn the_oplog_cap_drops_the_oldest_entries() {
    let server = start(MongoOptions {
        oplog_cap_bytes: Some(64 * 1024),
        ..MongoOptions::default()
    });
    let c = client(&server).await;
    let first = all_entries(&c, doc! {}).await;
    let first_ts = first[0].get_timestamp("ts").expect("ts");
    // A tailing reader that stops after its first batch falls behind.
    let mut tail = oplog(&c)
        .find(doc! {})
        .cursor_type(CursorType::TailableAwait)
        .batch_size(1)
        .max_await_time(Duration::from_millis(100))
        .await
        .expect("tail");
    assert!(tail.advance().await.expect("first entry"));
    let coll = c.database("d").collection::<Document>("c");
    let pad = "p".repeat(1000);
    let docs: Vec<Document> = (0..200).map(|i| doc! {"_id": i, "pad": pad.clone()}).collect();
    coll.insert_many(docs).await.expect("insert_many");

    let kept = all_entries(&c, doc! {}).await;
    let bytes: usize = kept.iter().map(|d| bson::to_vec(d).map(|v| v.len()).unwrap_or(0)).sum();
    assert!(bytes <= 64 * 1024, "{bytes} bytes kept");
    assert!(kept.len() < 201);
    let oldest = kept[0].get_timestamp("ts").expect("ts");
    assert!((oldest.time, oldest.increment) > (first_ts.time, first_ts.increment));
    let last = kept.last().expect("newest");
    assert_eq!(last.get_document("o").expect("o").get_i32("_id"), Ok(199));

    // The reader that fell behind is told so (CappedPositionLost), not given a silent gap.
    let err = loop {
        match tail.advance().await {
            Ok(true) => continue,
            Ok(false) => panic!("tailable cursor closed"),
            Err(e) => break e,
        }
    };
    assert_eq!(code_of(&err), Some(136), "{err}");
}

#[tokio::test]
async fn a_seeded_oplog_is_served_byte_for_byte() {
    let seed = fixtures_dir().join("mongorestore/testdata/timeseries_tests/ts_dump_with_oplog/oplog.part1.bson");
    let want = read_bson_file(&seed).expect("seed");
    let server = start(MongoOptions {
        seed_oplog: Some(seed),
        ..MongoOptions::default()
    });
    let c = client(&server).await;
    let mut cur = oplog(&c).find(doc! {}).batch_size(50).await.expect("find");
    let mut got = Vec::new();
    while cur.advance().await.expect("advance") {
        got.push(cur.current().as_bytes().to_vec());
    }
    assert_eq!(got.len(), want.len());
    assert!(got == want, "seeded entries are served unchanged");
    let last_seeded = RawDocumentBuf::from_bytes(want[want.len() - 1].clone())
        .expect("raw")
        .to_document()
        .expect("doc")
        .get_timestamp("ts")
        .expect("ts");

    c.database("x").collection::<Document>("y").insert_one(doc! {"a": 1}).await.expect("insert");
    let n = newest(&c).await.get_timestamp("ts").expect("ts");
    assert!((n.time, n.increment) > (last_seeded.time, last_seeded.increment));

    // A ts range query, as an archiver resuming from a position asks it.
    let from = RawDocumentBuf::from_bytes(want[100].clone()).expect("raw").to_document().expect("doc");
    let from_ts = from.get_timestamp("ts").expect("ts");
    let after = all_entries(&c, doc! {"ts": {"$gte": from_ts}}).await;
    assert_eq!(after.len(), want.len() - 100 + 2, "200 seeded + create + insert");
}

#[tokio::test]
async fn catalog_commands_keep_options_as_given() {
    let server = start(MongoOptions::default());
    let c = client(&server).await;
    let db = c.database("cat");
    db.run_command(doc! {"create": "capped", "capped": true, "size": 4096i64, "max": 10}).await.expect("capped");
    db.run_command(doc! {"create": "v", "viewOn": "capped", "pipeline": [{"$match": {"a": 1}}]}).await.expect("view");
    db.run_command(doc! {"create": "ts", "timeseries": {"timeField": "t", "metaField": "m", "granularity": "seconds"}})
        .await
        .expect("timeseries");
    db.run_command(doc! {"collMod": "capped", "validationLevel": "off"}).await.expect("collMod");
    let r = db.run_command(doc! {"listCollections": 1}).await.expect("listCollections");
    let batch = r.get_document("cursor").expect("cursor").get_array("firstBatch").expect("batch").clone();
    let by_name = |n: &str| -> Document {
        batch
            .iter()
            .filter_map(|b| b.as_document())
            .find(|d| d.get_str("name") == Ok(n))
            .cloned()
            .unwrap_or_else(|| panic!("{n} not listed in {batch:?}"))
    };
    let capped = by_name("capped");
    assert_eq!(capped.get_str("type"), Ok("collection"));
    assert_eq!(
        capped.get_document("options").expect("options"),
        &doc! {"capped": true, "size": 4096i64, "max": 10, "validationLevel": "off"}
    );
    assert!(matches!(capped.get_document("info").expect("info").get("uuid"), Some(Bson::Binary(b)) if b.bytes.len() == 16));
    let v = by_name("v");
    assert_eq!(v.get_str("type"), Ok("view"));
    assert_eq!(v.get_document("options").expect("options").get_str("viewOn"), Ok("capped"));
    let ts = by_name("ts");
    assert_eq!(ts.get_str("type"), Ok("timeseries"));
    assert_eq!(
        ts.get_document("options").expect("options").get_document("timeseries").expect("ts"),
        &doc! {"timeField": "t", "metaField": "m", "granularity": "seconds"}
    );
    by_name("system.buckets.ts");
    by_name("system.views");

    db.run_command(doc! {"renameCollection": "cat.capped", "to": "cat.renamed"}).await.expect("rename");
    let names = db.list_collection_names().await.expect("names");
    assert!(names.contains(&"renamed".to_string()) && !names.contains(&"capped".to_string()), "{names:?}");
    let idx = db.collection::<Document>("renamed").list_index_names().await.expect("indexes");
    assert_eq!(idx, vec!["_id_".to_string()]);
}
