//! The MongoDB test double against real oplog entries (shared/fixtures/mongodb-oplog):
//! every fixture entry round-trips byte for byte through the BSON library, and for each
//! kind of operation the entry the double writes has the field names, order and BSON types
//! of a real server's entry of that kind.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bson::spec::ElementType;
use bson::{doc, Bson, Document, RawDocument, RawDocumentBuf, Timestamp};
use mongodb::options::IndexOptions;
use mongodb::{Client, IndexModel};
use pitr_integration::mongo::{fixtures_dir, read_bson_file};
use pitr_integration::{MongoDouble, MongoOptions};

fn start(opts: MongoOptions) -> MongoDouble {
    MongoDouble::start_bin(Path::new(env!("CARGO_BIN_EXE_mongo-double")), opts).expect("start mongo-double")
}

fn bson_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read fixtures dir") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            bson_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "bson") {
            out.push(p);
        }
    }
}

#[test]
fn every_fixture_entry_round_trips_byte_exact() {
    let mut files = Vec::new();
    bson_files(&fixtures_dir(), &mut files);
    assert!(files.len() >= 20, "expected the fixture .bson files, found {}", files.len());
    let mut entries = 0;
    let mut oplog_entries = 0;
    for f in &files {
        for bytes in read_bson_file(f).expect("fixture file") {
            let raw = RawDocumentBuf::from_bytes(bytes.clone()).expect("valid BSON");
            let doc = raw.to_document().expect("decodes");
            let again = RawDocumentBuf::from_document(&doc).expect("encodes");
            assert_eq!(again.as_bytes(), bytes.as_slice(), "{}: an entry changed on re-encoding", f.display());
            let mut via_writer = Vec::new();
            doc.to_writer(&mut via_writer).expect("writes");
            assert_eq!(via_writer, bytes, "{}", f.display());
            entries += 1;
            if doc.contains_key("op") && doc.contains_key("ts") {
                oplog_entries += 1;
            }
        }
    }
    // README: 527 oplog entries; the dumps beside them hold more documents.
    assert_eq!(oplog_entries, 527, "oplog entries in the fixtures");
    assert!(entries > oplog_entries);
}

type Shape = Vec<(String, ElementType)>;

fn shape(raw: &RawDocument) -> Shape {
    raw.iter()
        .map(|r| {
            let (k, v) = r.expect("valid element");
            (k.to_string(), v.element_type())
        })
        .collect()
}

fn names(d: &Document) -> Vec<String> {
    d.keys().cloned().collect()
}

/// The first fixture entry in `file` for which `pick` holds.
fn fixture(file: &str, pick: impl Fn(&Document) -> bool) -> RawDocumentBuf {
    let path = fixtures_dir().join(file);
    for bytes in read_bson_file(&path).expect("fixture") {
        let raw = RawDocumentBuf::from_bytes(bytes).expect("BSON");
        if pick(&raw.to_document().expect("decodes")) {
            return raw;
        }
    }
    panic!("no matching entry in {file}");
}

/// Fixtures from 4.4-era servers carry `t`/`v` as Int32 and `wall` before `v`; a 7.0
/// server writes Int64 and `v` before `wall` (see the create/createIndexes fixtures).
fn as_modern(mut s: Shape) -> Shape {
    for (k, t) in &mut s {
        if k == "t" || k == "v" {
            *t = ElementType::Int64;
        }
    }
    let wall = s.iter().position(|(k, _)| k == "wall");
    let v = s.iter().position(|(k, _)| k == "v");
    if let (Some(w), Some(vi)) = (wall, v) {
        if w < vi {
            let item = s.remove(vi);
            s.insert(w, item);
        }
    }
    s
}

fn without(mut s: Shape, field: &str) -> Shape {
    s.retain(|(k, _)| k != field);
    s
}

const SRC: &str = "mongorestore/testdata/";

async fn newest_ts(client: &Client) -> Timestamp {
    let mut c = client
        .database("local")
        .collection::<Document>("oplog.rs")
        .find(doc! {})
        .sort(doc! {"$natural": -1})
        .limit(1)
        .await
        .expect("find newest");
    assert!(c.advance().await.expect("advance"), "empty oplog");
    let d = c.deserialize_current().expect("entry");
    d.get_timestamp("ts").expect("ts")
}

/// The entries written after `since`.
async fn entries_after(client: &Client, since: Timestamp) -> Vec<RawDocumentBuf> {
    let mut c = client
        .database("local")
        .collection::<RawDocumentBuf>("oplog.rs")
        .find(doc! {"ts": {"$gt": since}})
        .await
        .expect("find");
    let mut out = Vec::new();
    while c.advance().await.expect("advance") {
        out.push(c.current().to_raw_document_buf());
    }
    out
}

fn only<'a>(entries: &'a [RawDocumentBuf], what: &str, pick: impl Fn(&Document) -> bool) -> &'a RawDocumentBuf {
    let found: Vec<&RawDocumentBuf> = entries
        .iter()
        .filter(|e| pick(&e.to_document().expect("decodes")))
        .collect();
    assert_eq!(found.len(), 1, "expected one {what} entry among {entries:?}");
    found[0]
}

fn op_is(op: &'static str) -> impl Fn(&Document) -> bool {
    move |d| d.get_str("op") == Ok(op)
}

fn cmd_is(name: &'static str) -> impl Fn(&Document) -> bool {
    move |d| d.get_str("op") == Ok("c") && d.get_document("o").is_ok_and(|o| o.contains_key(name))
}

fn o_of(raw: &RawDocumentBuf) -> Document {
    raw.to_document().expect("decodes").get_document("o").expect("o").clone()
}

#[tokio::test]
async fn double_entries_have_the_fixture_shape() {
    let server = start(MongoOptions::default());
    let client = Client::with_uri_str(server.url()).await.expect("client");
    let db = client.database("shape");
    let coll = db.collection::<Document>("c");

    // c create, c createIndexes (empty collection): a 7.0 server's entries.
    let t0 = newest_ts(&client).await;
    db.create_collection("c").await.expect("create");
    coll.create_index(IndexModel::builder().keys(doc! {"a": 1}).options(IndexOptions::builder().name("a_1".to_string()).build()).build())
        .await
        .expect("index");
    let got = entries_after(&client, t0).await;
    let create = only(&got, "create", cmd_is("create"));
    let real = fixture(&format!("{SRC}oplogs/bson/collMod_indexUniqueness.bson"), cmd_is("create"));
    assert_eq!(shape(create), shape(&real));
    assert_eq!(names(&o_of(create)), names(&o_of(&real)));
    let ci = only(&got, "createIndexes", cmd_is("createIndexes"));
    let real = fixture(&format!("{SRC}oplogs/bson/collMod_indexUniqueness.bson"), |d| {
        cmd_is("createIndexes")(d) && d.get_document("o").is_ok_and(|o| o.len() == 4)
    });
    assert_eq!(shape(ci), shape(&real));
    assert_eq!(names(&o_of(ci)), names(&o_of(&real)));
    assert_eq!(o_of(ci), doc! {"createIndexes": "c", "v": 2, "key": {"a": 1}, "name": "a_1"});

    // i (retryable write, as the driver sends it): a 7.0 server's entry.
    let t1 = newest_ts(&client).await;
    coll.insert_one(doc! {"_id": 1, "a": 1, "sub": {"x": 1}}).await.expect("insert");
    let got = entries_after(&client, t1).await;
    let ins = only(&got, "insert", op_is("i"));
    let real = fixture(&format!("{SRC}collMod_ttl_index/oplog.bson"), op_is("i"));
    assert_eq!(shape(ins), shape(&real));
    let d = ins.to_document().expect("decodes");
    assert_eq!(d.get_document("o2").expect("o2"), &doc! {"_id": 1});
    assert_eq!(d.get_i32("stmtId"), Ok(0));
    assert_eq!(d.get_document("prevOpTime").expect("prevOpTime"), &doc! {"ts": Timestamp { time: 0, increment: 0 }, "t": -1i64});

    // u with a $v:2 diff: a 5.0+ server's entry (retryable write).
    let t2 = newest_ts(&client).await;
    coll.update_one(doc! {"_id": 1}, doc! {"$set": {"a": 2, "sub.y": 2, "b": 3}}).await.expect("update");
    let got = entries_after(&client, t2).await;
    let upd = only(&got, "update", op_is("u"));
    let real = fixture(&format!("{SRC}timeseries_tests/ts_dump_with_oplog/oplog.part1.bson"), op_is("u"));
    assert_eq!(shape(upd), shape(&real));
    assert_eq!(
        o_of(upd),
        doc! {"$v": 2, "diff": {"u": {"a": 2}, "i": {"b": 3}, "ssub": {"i": {"y": 2}}}}
    );
    assert_eq!(
        shape(&RawDocumentBuf::from_document(&o_of(upd)).expect("raw")),
        shape(&RawDocumentBuf::from_document(&o_of(&real)).expect("raw"))
    );

    // d without a session (retryWrites=false) next to the 4.4-era fixture, modernised.
    let plain = Client::with_uri_str(format!("{}&retryWrites=false", server.url())).await.expect("client");
    let t3 = newest_ts(&client).await;
    plain.database("shape").collection::<Document>("c").delete_one(doc! {"_id": 1}).await.expect("delete");
    let got = entries_after(&client, t3).await;
    let del = only(&got, "delete", op_is("d"));
    let real = fixture(&format!("{SRC}duplicate_index_key_with_oplog/oplog.bson"), op_is("d"));
    assert_eq!(shape(del), as_modern(shape(&real)));
    assert_eq!(o_of(del), doc! {"_id": 1});

    // c drop and c dropDatabase (4.4-era fixtures, modernised).
    let t4 = newest_ts(&client).await;
    coll.insert_one(doc! {"_id": 2}).await.expect("insert");
    coll.drop().await.expect("drop");
    db.collection::<Document>("other").insert_one(doc! {"_id": 1}).await.expect("insert");
    db.drop().await.expect("dropDatabase");
    let got = entries_after(&client, t4).await;
    let drop = only(&got, "drop c", |d| cmd_is("drop")(d) && o_of_doc(d).get_str("drop") == Ok("c"));
    let real = fixture(&format!("{SRC}oplogs/bson/drop_collection.bson"), cmd_is("drop"));
    assert_eq!(shape(drop), as_modern(shape(&real)));
    assert_eq!(names(&o_of(drop)), names(&o_of(&real)));
    let o2 = drop.to_document().expect("decodes").get_document("o2").expect("o2").clone();
    assert_eq!(o2, doc! {"numRecords": 1});
    let dropdb = only(&got, "dropDatabase", cmd_is("dropDatabase"));
    let real = fixture(&format!("{SRC}oplogs/bson/drop_db.bson"), cmd_is("dropDatabase"));
    assert_eq!(shape(dropdb), as_modern(shape(&real)));
    let last = got.last().expect("entries").to_document().expect("decodes");
    assert!(last.get_document("o").expect("o").contains_key("dropDatabase"), "dropDatabase comes last");

    // c applyOps of a transaction: the fixture's shape less `multiOpType` (which a 7.0+
    // server adds to vectored inserts, not to transactions); inner ops less `stmtId`.
    let t5 = newest_ts(&client).await;
    let txc = client.database("shape").collection::<Document>("t");
    txc.insert_one(doc! {"_id": 0}).await.expect("create t");
    let mut s = client.start_session().await.expect("session");
    s.start_transaction().await.expect("start");
    txc.insert_one(doc! {"_id": 1}).session(&mut s).await.expect("insert in txn");
    txc.insert_one(doc! {"_id": 2}).session(&mut s).await.expect("insert in txn");
    s.commit_transaction().await.expect("commit");
    let got = entries_after(&client, t5).await;
    let txn = only(&got, "applyOps", cmd_is("applyOps"));
    let real = fixture(&format!("{SRC}oplogs/bson/vectored_insert.bson"), cmd_is("applyOps"));
    assert_eq!(shape(txn), without(shape(&real), "multiOpType"));
    let ops = o_of(txn).get_array("applyOps").expect("applyOps").clone();
    let real_ops = o_of(&real).get_array("applyOps").expect("applyOps").clone();
    assert_eq!(ops.len(), 2);
    for (op, real_op) in ops.iter().zip(&real_ops) {
        let (Bson::Document(op), Bson::Document(real_op)) = (op, real_op) else {
            panic!("applyOps items are documents");
        };
        let raw = RawDocumentBuf::from_document(op).expect("raw");
        let real_raw = RawDocumentBuf::from_document(real_op).expect("raw");
        assert_eq!(shape(&raw), without(shape(&real_raw), "stmtId"));
    }

    // n: the no-op a new primary writes after a step-down.
    let t6 = newest_ts(&client).await;
    client.database("admin").run_command(doc! {"replSetStepDown": 60, "force": true}).await.expect("step down");
    let got = entries_after(&client, t6).await;
    let noop = only(&got, "no-op", op_is("n"));
    let real = fixture(&format!("{SRC}oplogs/bson/bypassDocumentValidation.bson"), op_is("n"));
    assert_eq!(shape(noop), shape(&real));
    assert_eq!(o_of(noop), doc! {"msg": "new primary"});
}

fn o_of_doc(d: &Document) -> Document {
    d.get_document("o").cloned().unwrap_or_default()
}

#[tokio::test]
async fn periodic_noop_on_an_idle_set() {
    let server = start(MongoOptions {
        noop_interval_secs: 1,
        ..MongoOptions::default()
    });
    let client = Client::with_uri_str(server.url()).await.expect("client");
    let t0 = newest_ts(&client).await;
    let oplog = client.database("local").collection::<RawDocumentBuf>("oplog.rs");
    let mut c = oplog
        .find(doc! {"ts": {"$gt": t0}})
        .cursor_type(mongodb::options::CursorType::TailableAwait)
        .max_await_time(Duration::from_millis(500))
        .await
        .expect("tail");
    // advance() keeps asking until an entry comes; the no-op is due after one idle
    // second, the bound only keeps a broken double from hanging the test.
    let found = tokio::time::timeout(Duration::from_secs(60), c.advance())
        .await
        .ok()
        .and_then(|r| r.ok())
        .filter(|more| *more)
        .map(|_| c.current().to_raw_document_buf());
    let noop = found.expect("a periodic no-op");
    let real = fixture(&format!("{SRC}oplogs/bson/bypassDocumentValidation.bson"), op_is("n"));
    assert_eq!(shape(&noop), shape(&real));
    assert_eq!(o_of(&noop), o_of(&real), "{{msg: \"periodic noop\"}}");
}
