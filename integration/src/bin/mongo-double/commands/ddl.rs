//! Catalog commands and the command entries they log: `listDatabases`,
//! `listCollections`, `listIndexes`, `create` (collections, capped, views, time-series;
//! options kept as given), `createIndexes` (`createIndexes` entries on an empty
//! collection, `startIndexBuild` + `commitIndexBuild` otherwise, as a 4.4+ primary does),
//! `dropIndexes`, `drop`, `dropDatabase` (a `drop` per collection, then `dropDatabase`),
//! `collMod` and `renameCollection`.

use bson::{doc, Bson, Document, RawDocumentBuf};

use super::coll_name;
use crate::cursor::{self, Cursor, Source};
use crate::matcher;
use crate::state::{new_uuid, truthy, uuid_bson, CmdError, CmdResult, State};
use crate::store::{id_index, split_ns, Collection, Kind};
use crate::txn::{self, Mode};
use crate::write::{self, log_command, WriteLog};

/// Fields every command may carry that are not part of its own arguments.
const GENERIC: &[&str] = &[
    "$db",
    "lsid",
    "txnNumber",
    "autocommit",
    "startTransaction",
    "$clusterTime",
    "$readPreference",
    "writeConcern",
    "readConcern",
    "maxTimeMS",
    "comment",
    "apiVersion",
    "apiStrict",
    "apiDeprecationErrors",
];

/// The command's own arguments (without the generic ones).
pub fn own_args(body: &Document) -> Document {
    body.iter()
        .filter(|(k, _)| !GENERIC.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn cursor_of(st: &mut State, ns: String, docs: Vec<Document>) -> CmdResult<RawDocumentBuf> {
    let mut c = Cursor {
        ns: ns.clone(),
        source: Source::Buffered(cursor::docs_to_raw(docs)?),
        remaining: None,
    };
    let (batch, exhausted) = c.next_batch(&st.oplog, None)?;
    let id = if exhausted { 0 } else { st.cursors.add(c) };
    Ok(cursor::reply(id, &ns, true, batch))
}

fn oplog_entry(st: &State) -> Document {
    let mut options = doc! {"capped": true};
    if let Some(cap) = st.oplog.cap() {
        options.insert("size", cap as i64);
    }
    doc! {
        "name": "oplog.rs",
        "type": "collection",
        "options": options,
        "info": {"readOnly": false, "uuid": uuid_bson(&st.oplog.uuid)},
        "idIndex": id_index(),
    }
}

pub fn list_databases(st: &mut State, body: &Document) -> CmdResult<Document> {
    let name_only = truthy(body.get("nameOnly"));
    let empty = Document::new();
    let filter = body.get_document("filter").unwrap_or(&empty);
    let mut names: Vec<String> = st.store.dbs.keys().cloned().collect();
    if !names.iter().any(|n| n == "local") {
        names.push("local".into());
        names.sort();
    }
    let mut dbs = Vec::new();
    let mut total = 0i64;
    for name in names {
        let size = if name == "local" {
            st.oplog.size_bytes() as i64
        } else {
            st.store.dbs.get(&name).map(|c| c.values().map(|c| c.size_bytes()).sum::<u64>()).unwrap_or(0) as i64
        };
        let entry = if name_only {
            doc! {"name": name}
        } else {
            doc! {"name": name, "sizeOnDisk": size.max(4096), "empty": false}
        };
        if matcher::matches(&entry, filter)? {
            total += size.max(4096);
            dbs.push(Bson::Document(entry));
        }
    }
    let mut out = doc! {"databases": dbs};
    if !name_only {
        out.insert("totalSize", total);
        out.insert("totalSizeMb", total / (1024 * 1024));
    }
    out.insert("ok", 1.0);
    Ok(out)
}

pub fn list_collections(st: &mut State, db: &str, body: &Document) -> CmdResult<RawDocumentBuf> {
    let empty = Document::new();
    let filter = body.get_document("filter").unwrap_or(&empty);
    let name_only = truthy(body.get("nameOnly"));
    let mut entries = Vec::new();
    if db == "local" {
        entries.push(oplog_entry(st));
    }
    if let Some(colls) = st.store.dbs.get(db) {
        for (name, c) in colls {
            entries.push(c.list_entry(name));
        }
    }
    let mut out = Vec::new();
    for e in entries {
        if matcher::matches(&e, filter)? {
            out.push(if name_only {
                doc! {"name": e.get("name").cloned().unwrap_or(Bson::Null), "type": e.get("type").cloned().unwrap_or(Bson::Null)}
            } else {
                e
            });
        }
    }
    cursor_of(st, format!("{db}.$cmd.listCollections"), out)
}

pub fn list_indexes(st: &mut State, db: &str, body: &Document) -> CmdResult<RawDocumentBuf> {
    let coll = coll_name(body)?;
    let indexes = if db == "local" && coll == "oplog.rs" {
        Vec::new()
    } else {
        match st.store.get(db, &coll) {
            Some(c) if c.kind == Kind::Collection => c.indexes.clone(),
            Some(_) => return Err(CmdError::new(166, "CommandNotSupportedOnView", format!("Namespace {db}.{coll} is a view, not a collection"))),
            None => return Err(CmdError::ns_not_found(format!("ns does not exist: {db}.{coll}"))),
        }
    };
    cursor_of(st, format!("{db}.$cmd.listIndexes.{coll}"), indexes)
}

/// Records a view definition the way the server does: an insert into `<db>.system.views`.
fn insert_view_definition(st: &mut State, db: &str, name: &str, view_on: &str, pipeline: Bson) -> CmdResult<()> {
    let mut log = WriteLog::default();
    write::insert(
        st,
        db,
        "system.views",
        doc! {"_id": format!("{db}.{name}"), "viewOn": view_on, "pipeline": pipeline},
        &mut log,
    )?;
    txn::finish(st, &Mode::Plain, log);
    Ok(())
}

pub fn create(st: &mut State, db: &str, body: &Document) -> CmdResult<Document> {
    create_with_uuid(st, db, body, None)
}

/// `create`, giving a plain collection the UUID `uuid` (applyOps replays keep the `ui`).
pub fn create_with_uuid(st: &mut State, db: &str, body: &Document, uuid: Option<[u8; 16]>) -> CmdResult<Document> {
    let name = coll_name(body)?;
    write::check_names(db, &name)?;
    if st.store.get(db, &name).is_some() || (db == "local" && name == "oplog.rs") {
        return Err(CmdError::ns_exists(format!("Collection {db}.{name} already exists.")));
    }
    let mut options = own_args(body);
    options.remove("create");
    if let Ok(view_on) = options.get_str("viewOn").map(str::to_string) {
        let pipeline = options.get("pipeline").cloned().unwrap_or(Bson::Array(Vec::new()));
        st.store.insert_collection(db, &name, Collection::new(Kind::View, options, None));
        insert_view_definition(st, db, &name, &view_on, pipeline)?;
    } else if let Ok(ts) = options.get_document("timeseries").cloned() {
        let buckets = format!("system.buckets.{name}");
        let mut bucket_opts = doc! {"clusteredIndex": true, "timeseries": ts.clone()};
        for (k, v) in &options {
            if k != "timeseries" {
                bucket_opts.insert(k.clone(), v.clone());
            }
        }
        let bc = Collection::new(Kind::Collection, bucket_opts.clone(), None);
        let ui = bc.uuid;
        st.store.insert_collection(db, &buckets, bc);
        let mut o = doc! {"create": buckets.clone()};
        o.extend(bucket_opts);
        log_command(st, db, Some(ui), o, None);
        st.store.insert_collection(db, &name, Collection::new(Kind::Timeseries, options, None));
        insert_view_definition(st, db, &name, &buckets, Bson::Array(Vec::new()))?;
    } else {
        let c = Collection::new(Kind::Collection, options.clone(), uuid);
        let ui = c.uuid;
        st.store.insert_collection(db, &name, c);
        let mut o = doc! {"create": name.clone()};
        o.extend(options);
        o.insert("idIndex", id_index());
        log_command(st, db, Some(ui), o, None);
    }
    Ok(doc! {"ok": 1.0})
}

pub fn create_indexes(st: &mut State, db: &str, body: &Document) -> CmdResult<Document> {
    let coll = coll_name(body)?;
    let Some(Bson::Array(specs)) = body.get("indexes") else {
        return Err(CmdError::failed_to_parse("BSON field 'createIndexes.indexes' is missing but a required field"));
    };
    let created = st.store.get(db, &coll).is_none();
    let ui = write::ensure_collection(st, db, &coll)?;
    let Some(c) = st.store.get_mut(db, &coll) else {
        return Err(CmdError::ns_not_found(format!("{db}.{coll}")));
    };
    let before = c.indexes.len() as i32;
    let mut new = Vec::new();
    for s in specs {
        let Bson::Document(s) = s else {
            return Err(CmdError::type_mismatch("index specs must be objects"));
        };
        let (Ok(key), Ok(name)) = (s.get_document("key"), s.get_str("name")) else {
            return Err(CmdError::failed_to_parse("index specs need 'key' and 'name'"));
        };
        if let Some(existing) = c.indexes.iter().find(|i| i.get_str("name") == Ok(name)) {
            if existing.get_document("key") != Ok(key) {
                return Err(CmdError::new(86, "IndexKeySpecsConflict", format!("An existing index has the same name as the requested index: {name}")));
            }
            continue;
        }
        let mut spec = doc! {"v": 2};
        for (k, v) in s {
            if k != "v" && k != "ns" {
                spec.insert(k.clone(), v.clone());
            }
        }
        c.indexes.push(spec.clone());
        new.push(spec);
    }
    let after = c.indexes.len() as i32;
    let empty = c.docs.is_empty();
    if empty {
        for spec in new {
            let mut o = doc! {"createIndexes": coll.clone()};
            o.extend(spec);
            log_command(st, db, Some(ui), o, None);
        }
    } else if !new.is_empty() {
        let build = uuid_bson(&new_uuid());
        let indexes: Vec<Bson> = new.into_iter().map(Bson::Document).collect();
        for cmd in ["startIndexBuild", "commitIndexBuild"] {
            let o = doc! {cmd: coll.clone(), "indexBuildUUID": build.clone(), "indexes": indexes.clone()};
            log_command(st, db, Some(ui), o, None);
        }
    }
    Ok(doc! {
        "numIndexesBefore": before,
        "numIndexesAfter": after,
        "createdCollectionAutomatically": created,
        "ok": 1.0,
    })
}

pub fn drop_indexes(st: &mut State, db: &str, body: &Document) -> CmdResult<Document> {
    let coll = coll_name(body)?;
    let Some(c) = st.store.get_mut(db, &coll) else {
        return Err(CmdError::ns_not_found(format!("ns not found {db}.{coll}")));
    };
    let ui = c.uuid;
    let was = c.indexes.len() as i32;
    let wanted: Vec<Document> = c
        .indexes
        .iter()
        .filter(|i| i.get_str("name") != Ok("_id_"))
        .filter(|i| match body.get("index") {
            Some(Bson::String(s)) if s == "*" => true,
            Some(Bson::String(s)) => i.get_str("name") == Ok(s.as_str()),
            Some(Bson::Array(names)) => names.iter().any(|n| matches!(n, Bson::String(s) if i.get_str("name") == Ok(s.as_str()))),
            Some(Bson::Document(key)) => i.get_document("key") == Ok(key),
            _ => false,
        })
        .cloned()
        .collect();
    if wanted.is_empty() && !matches!(body.get("index"), Some(Bson::String(s)) if s == "*") {
        return Err(CmdError::new(27, "IndexNotFound", "index not found"));
    }
    c.indexes.retain(|i| !wanted.contains(i));
    for spec in wanted {
        let name = spec.get_str("name").unwrap_or("").to_string();
        log_command(st, db, Some(ui), doc! {"dropIndexes": coll.clone(), "index": name}, Some(spec));
    }
    Ok(doc! {"nIndexesWas": was, "ok": 1.0})
}

fn drop_one(st: &mut State, db: &str, name: &str) -> CmdResult<Option<i32>> {
    let Some(c) = st.store.get(db, name) else {
        return Ok(None);
    };
    let (kind, ui, n, nidx) = (c.kind, c.uuid, c.docs.len(), c.indexes.len() as i32);
    match kind {
        Kind::Collection => {
            st.store.remove_collection(db, name);
            if db != "local" {
                log_command(st, db, Some(ui), doc! {"drop": name}, Some(doc! {"numRecords": n as i32}));
            }
        }
        Kind::View | Kind::Timeseries => {
            st.store.remove_collection(db, name);
            let mut log = WriteLog::default();
            write::delete(st, db, "system.views", &doc! {"_id": format!("{db}.{name}")}, true, &mut log)?;
            txn::finish(st, &Mode::Plain, log);
            if kind == Kind::Timeseries {
                drop_one(st, db, &format!("system.buckets.{name}"))?;
            }
        }
    }
    Ok(Some(nidx))
}

pub fn drop(st: &mut State, db: &str, body: &Document) -> CmdResult<Document> {
    let name = coll_name(body)?;
    let was = drop_one(st, db, &name)?.unwrap_or(0);
    Ok(doc! {"nIndexesWas": was, "ns": format!("{db}.{name}"), "ok": 1.0})
}

pub fn drop_database(st: &mut State, db: &str) -> CmdResult<Document> {
    let names: Vec<String> = st
        .store
        .dbs
        .get(db)
        .map(|c| c.keys().cloned().collect())
        .unwrap_or_default();
    if names.is_empty() {
        return Ok(doc! {"ok": 1.0});
    }
    // Views first, so their definitions go before system.views itself.
    let kind_of = |st: &State, n: &str| st.store.get(db, n).map(|c| c.kind);
    for n in &names {
        if matches!(kind_of(st, n), Some(Kind::View | Kind::Timeseries)) {
            drop_one(st, db, n)?;
        }
    }
    for n in &names {
        drop_one(st, db, n)?;
    }
    log_command(st, db, None, doc! {"dropDatabase": 1}, None);
    Ok(doc! {"dropped": db, "ok": 1.0})
}

pub fn coll_mod(st: &mut State, db: &str, body: &Document) -> CmdResult<Document> {
    let name = coll_name(body)?;
    let args = own_args(body);
    let Some(c) = st.store.get_mut(db, &name) else {
        return Err(CmdError::ns_not_found(format!("ns does not exist: {db}.{name}")));
    };
    let ui = c.uuid;
    let mut o2 = doc! {"collectionOptions_old": {"uuid": uuid_bson(&ui)}};
    for (k, v) in &args {
        if k == "collMod" {
            continue;
        }
        if k == "index" {
            let Bson::Document(spec) = v else {
                return Err(CmdError::type_mismatch("collMod index must be an object"));
            };
            let idx = c.indexes.iter_mut().find(|i| {
                spec.get_str("name").is_ok_and(|n| i.get_str("name") == Ok(n))
                    || spec.get_document("keyPattern").is_ok_and(|kp| i.get_document("key") == Ok(kp))
            });
            let Some(idx) = idx else {
                return Err(CmdError::new(27, "IndexNotFound", "cannot find index for collMod"));
            };
            let mut old = Document::new();
            for (ik, iv) in spec {
                if ik == "name" || ik == "keyPattern" {
                    continue;
                }
                if let Some(prev) = idx.get(ik) {
                    old.insert(ik.clone(), prev.clone());
                } else if ik == "prepareUnique" || ik == "hidden" {
                    old.insert(ik.clone(), false);
                }
                // The server's index conversions: `unique: true` ends the `prepareUnique`
                // phase, `forceNonUnique: true` drops `unique`; false flags are not kept.
                match (ik.as_str(), truthy(Some(iv))) {
                    ("unique", true) => {
                        idx.remove("prepareUnique");
                        idx.insert("unique", true);
                    }
                    ("forceNonUnique", true) => {
                        idx.remove("unique");
                    }
                    ("prepareUnique" | "hidden" | "unique" | "forceNonUnique", false) => {
                        idx.remove(ik);
                    }
                    _ => {
                        idx.insert(ik.clone(), iv.clone());
                    }
                }
            }
            o2.insert("indexOptions_old", old);
        } else {
            c.options.insert(k.clone(), v.clone());
        }
    }
    log_command(st, db, Some(ui), args, Some(o2));
    Ok(doc! {"ok": 1.0})
}

pub fn rename_collection(st: &mut State, body: &Document) -> CmdResult<Document> {
    let from = body.get_str("renameCollection").map_err(|_| CmdError::type_mismatch("renameCollection needs a namespace"))?.to_string();
    let to = body.get_str("to").map_err(|_| CmdError::type_mismatch("'to' must be a namespace"))?.to_string();
    let (Some((fdb, fcoll)), Some((tdb, tcoll))) = (split_ns(&from), split_ns(&to)) else {
        return Err(CmdError::new(73, "InvalidNamespace", "Invalid namespace specified"));
    };
    let (fdb, fcoll, tdb, tcoll) = (fdb.to_string(), fcoll.to_string(), tdb.to_string(), tcoll.to_string());
    if fdb != tdb {
        return Err(CmdError::bad_value("renaming across databases is not supported by this test server"));
    }
    write::check_names(&tdb, &tcoll)?;
    let Some(src_ui) = st.store.get(&fdb, &fcoll).map(|c| c.uuid) else {
        return Err(CmdError::ns_not_found("Source collection does not exist"));
    };
    let mut o = doc! {"renameCollection": from.clone(), "to": to.clone(), "stayTemp": false};
    if let Some(target) = st.store.get(&tdb, &tcoll) {
        if !truthy(body.get("dropTarget")) {
            return Err(CmdError::ns_exists("target namespace exists"));
        }
        o.insert("dropTarget", uuid_bson(&target.uuid));
        st.store.remove_collection(&tdb, &tcoll);
    }
    if let Some(c) = st.store.remove_collection(&fdb, &fcoll) {
        st.store.insert_collection(&tdb, &tcoll, c);
    }
    log_command(st, &fdb, Some(src_ui), o, None);
    Ok(doc! {"ok": 1.0})
}
