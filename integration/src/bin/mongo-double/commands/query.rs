//! Reads: `find` (filter, sort incl. `$natural`, skip, limit, batchSize, singleBatch,
//! projection; `tailable` + `awaitData` on `local.oplog.rs`), `getMore`, `killCursors`,
//! `count`, `distinct`, and `aggregate` with `$match`, `$sort`, `$skip`, `$limit`,
//! `$project`, `$count` and a `$group` on a constant `_id` with `$sum`.

use std::time::Instant;

use bson::{doc, Bson, Document, RawDocumentBuf};

use super::{coll_name, Reply};
use crate::cursor::{self, Cursor, Source};
use crate::matcher;
use crate::state::{as_i64, truthy, CmdError, CmdResult, State};

const DEFAULT_BATCH: usize = 101;

fn is_oplog(db: &str, coll: &str) -> bool {
    db == "local" && coll == "oplog.rs"
}

fn internal(e: impl std::fmt::Display) -> CmdError {
    CmdError::new(1, "InternalError", e.to_string())
}

/// All documents of a namespace as (decoded, raw) pairs; oplog entries keep their bytes.
fn scan(st: &State, db: &str, coll: &str, filter: &Document) -> CmdResult<Vec<(Document, Option<RawDocumentBuf>)>> {
    let mut out = Vec::new();
    if is_oplog(db, coll) {
        for e in st.oplog.entries() {
            let d = e.raw.to_document().map_err(internal)?;
            if matcher::matches(&d, filter)? {
                out.push((d, Some(e.raw.clone())));
            }
        }
    } else if let Some(c) = st.store.get(db, coll) {
        for d in &c.docs {
            if matcher::matches(d, filter)? {
                out.push((d.clone(), None));
            }
        }
    }
    Ok(out)
}

fn to_raw(items: Vec<(Document, Option<RawDocumentBuf>)>, proj: &Document) -> CmdResult<Vec<RawDocumentBuf>> {
    items
        .into_iter()
        .map(|(d, raw)| match raw {
            Some(r) if proj.is_empty() => Ok(r),
            _ => RawDocumentBuf::from_document(&matcher::project(&d, proj)).map_err(internal),
        })
        .collect()
}

fn batch_size(body: &Document) -> Option<usize> {
    body.get("batchSize")
        .and_then(as_i64)
        .and_then(|n| usize::try_from(n).ok())
}

pub fn find(st: &mut State, db: &str, body: &Document) -> CmdResult<RawDocumentBuf> {
    let coll = coll_name(body)?;
    let ns = format!("{db}.{coll}");
    let empty = Document::new();
    let filter = body.get_document("filter").unwrap_or(&empty).clone();
    let tailable = truthy(body.get("tailable"));
    let limit = body.get("limit").and_then(as_i64).unwrap_or(0);
    let single = truthy(body.get("singleBatch")) || limit < 0;
    let remaining = (limit != 0).then(|| limit.unsigned_abs());
    let mut first = batch_size(body).unwrap_or(DEFAULT_BATCH);
    if batch_size(body) == Some(0) {
        first = 0;
    }
    let mut c = if tailable {
        if !is_oplog(db, &coll) {
            return Err(CmdError::bad_value(format!(
                "error processing query: ns={ns} tailable cursor requested on non capped collection"
            )));
        }
        let next_seq = st.oplog.entries().front().map(|e| e.seq).unwrap_or(st.oplog.last_seq() + 1);
        Cursor {
            ns: ns.clone(),
            source: Source::Oplog {
                next_seq,
                filter,
                await_data: truthy(body.get("awaitData")),
            },
            remaining,
        }
    } else {
        let mut items = scan(st, db, &coll, &filter)?;
        matcher::sort_docs(&mut items, body.get_document("sort").unwrap_or(&empty), |(d, _)| d);
        let skip = body.get("skip").and_then(as_i64).unwrap_or(0).max(0) as usize;
        let items: Vec<_> = items.into_iter().skip(skip).collect();
        let raws = to_raw(items, body.get_document("projection").unwrap_or(&empty))?;
        Cursor {
            ns: ns.clone(),
            source: Source::Buffered(raws.into()),
            remaining,
        }
    };
    let (batch, exhausted) = if first == 0 {
        (Vec::new(), false)
    } else {
        c.next_batch(&st.oplog, Some(first))?
    };
    let id = if exhausted || single { 0 } else { st.cursors.add(c) };
    Ok(cursor::reply(id, &ns, true, batch))
}

/// `getMore`; `Ok(None)` asks the caller to wait for new oplog entries and run it again.
pub fn get_more(st: &mut State, body: &Document, wait_until: Option<Instant>) -> CmdResult<Option<Reply>> {
    let id = body
        .get("getMore")
        .and_then(as_i64)
        .ok_or_else(|| CmdError::type_mismatch("getMore cursor id must be a long"))?;
    let State { cursors, oplog, .. } = st;
    let Some(c) = cursors.get_mut(id) else {
        return Err(CmdError::new(43, "CursorNotFound", format!("cursor id {id} not found")));
    };
    let ns = c.ns.clone();
    let (batch, exhausted) = match c.next_batch(oplog, batch_size(body)) {
        Ok(r) => r,
        Err(e) => {
            cursors.remove(id);
            return Err(e);
        }
    };
    if batch.is_empty() && c.is_await_data() && wait_until.is_some_and(|t| Instant::now() < t) {
        return Ok(None);
    }
    let id = if exhausted {
        cursors.remove(id);
        0
    } else {
        id
    };
    Ok(Some(Reply::Raw(cursor::reply(id, &ns, false, batch))))
}

pub fn kill_cursors(st: &mut State, body: &Document) -> CmdResult<Document> {
    let ids = match body.get("cursors") {
        Some(Bson::Array(a)) => a.clone(),
        _ => return Err(CmdError::failed_to_parse("killCursors needs 'cursors'")),
    };
    let (mut killed, mut not_found) = (Vec::new(), Vec::new());
    for id in ids {
        match as_i64(&id) {
            Some(n) if st.cursors.remove(n).is_some() => killed.push(Bson::Int64(n)),
            _ => not_found.push(id),
        }
    }
    Ok(doc! {
        "cursorsKilled": killed,
        "cursorsNotFound": not_found,
        "cursorsAlive": [],
        "cursorsUnknown": [],
        "ok": 1.0,
    })
}

pub fn count(st: &mut State, db: &str, body: &Document) -> CmdResult<Document> {
    let coll = coll_name(body)?;
    let empty = Document::new();
    let q = body.get_document("query").unwrap_or(&empty);
    let mut n = scan(st, db, &coll, q)?.len() as i64;
    if let Some(skip) = body.get("skip").and_then(as_i64) {
        n = (n - skip).max(0);
    }
    if let Some(limit) = body.get("limit").and_then(as_i64).filter(|l| *l != 0) {
        n = n.min(limit.abs());
    }
    Ok(doc! {"n": n as i32, "ok": 1.0})
}

pub fn distinct(st: &mut State, db: &str, body: &Document) -> CmdResult<Document> {
    let coll = coll_name(body)?;
    let key = body.get_str("key").map_err(|_| CmdError::failed_to_parse("distinct needs 'key'"))?;
    let empty = Document::new();
    let q = body.get_document("query").unwrap_or(&empty);
    let mut values: Vec<Bson> = Vec::new();
    for (d, _) in scan(st, db, &coll, q)? {
        if let Some(v) = matcher::get_path(&d, key) {
            if !values.iter().any(|x| matcher::equal(x, v)) {
                values.push(v.clone());
            }
        }
    }
    values.sort_by(matcher::cmp);
    Ok(doc! {"values": values, "ok": 1.0})
}

pub fn aggregate(st: &mut State, db: &str, body: &Document) -> CmdResult<RawDocumentBuf> {
    let coll = match body.get("aggregate") {
        Some(Bson::String(s)) => s.clone(),
        _ => return Err(CmdError::bad_value("aggregate on a database is not supported by this test server")),
    };
    let ns = format!("{db}.{coll}");
    let Some(Bson::Array(pipeline)) = body.get("pipeline") else {
        return Err(CmdError::failed_to_parse("aggregate needs 'pipeline'"));
    };
    let mut docs: Vec<Document> = scan(st, db, &coll, &Document::new())?
        .into_iter()
        .map(|(d, _)| d)
        .collect();
    for stage in pipeline {
        let Bson::Document(stage) = stage else {
            return Err(CmdError::type_mismatch("each pipeline stage must be an object"));
        };
        let Some((name, arg)) = stage.iter().next() else {
            return Err(CmdError::failed_to_parse("empty pipeline stage"));
        };
        docs = run_stage(docs, name, arg)?;
    }
    let mut c = Cursor {
        ns: ns.clone(),
        source: Source::Buffered(cursor::docs_to_raw(docs)?),
        remaining: None,
    };
    let bs = body
        .get_document("cursor")
        .ok()
        .and_then(|c| c.get("batchSize"))
        .and_then(as_i64)
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(DEFAULT_BATCH);
    let (batch, exhausted) = if bs == 0 {
        (Vec::new(), false)
    } else {
        c.next_batch(&st.oplog, Some(bs))?
    };
    let id = if exhausted { 0 } else { st.cursors.add(c) };
    Ok(cursor::reply(id, &ns, true, batch))
}

fn run_stage(mut docs: Vec<Document>, name: &str, arg: &Bson) -> CmdResult<Vec<Document>> {
    let arg_doc = || match arg {
        Bson::Document(d) => Ok(d),
        _ => Err(CmdError::type_mismatch(format!("{name} needs an object"))),
    };
    let arg_n = || {
        as_i64(arg)
            .map(|n| n.max(0) as usize)
            .ok_or_else(|| CmdError::type_mismatch(format!("{name} needs a number")))
    };
    Ok(match name {
        "$match" => {
            let f = arg_doc()?;
            let mut out = Vec::new();
            for d in docs {
                if matcher::matches(&d, f)? {
                    out.push(d);
                }
            }
            out
        }
        "$sort" => {
            matcher::sort_docs(&mut docs, arg_doc()?, |d| d);
            docs
        }
        "$skip" => docs.into_iter().skip(arg_n()?).collect(),
        "$limit" => docs.into_iter().take(arg_n()?).collect(),
        "$project" => {
            let p = arg_doc()?;
            docs.iter().map(|d| matcher::project(d, p)).collect()
        }
        "$count" => {
            let Bson::String(field) = arg else {
                return Err(CmdError::type_mismatch("$count needs a field name"));
            };
            if docs.is_empty() {
                Vec::new()
            } else {
                vec![doc! {field.clone(): docs.len() as i32}]
            }
        }
        "$group" => {
            let g = arg_doc()?;
            let id = g.get("_id").cloned().unwrap_or(Bson::Null);
            if matches!(&id, Bson::String(s) if s.starts_with('$')) {
                return Err(CmdError::bad_value("$group by a field is not supported by this test server"));
            }
            if docs.is_empty() {
                return Ok(Vec::new());
            }
            let mut out = doc! {"_id": id};
            for (k, acc) in g {
                if k == "_id" {
                    continue;
                }
                let sum = match acc {
                    Bson::Document(a) => match a.get("$sum") {
                        Some(Bson::String(f)) if f.starts_with('$') => docs
                            .iter()
                            .filter_map(|d| matcher::get_path(d, &f[1..]).and_then(as_i64))
                            .sum::<i64>(),
                        Some(v) => as_i64(v).unwrap_or(0) * docs.len() as i64,
                        None => return Err(CmdError::bad_value("only $sum is supported in $group")),
                    },
                    _ => return Err(CmdError::bad_value("bad $group accumulator")),
                };
                match i32::try_from(sum) {
                    Ok(s) => out.insert(k.clone(), s),
                    Err(_) => out.insert(k.clone(), sum),
                };
            }
            vec![out]
        }
        other => {
            return Err(CmdError::new(
                40324,
                "Location40324",
                format!("Unrecognized pipeline stage name: '{other}'"),
            ))
        }
    })
}
