//! The write commands `insert`, `update`, `delete` (with the driver's document sequences
//! `documents`, `updates`, `deletes`) and `findAndModify`. Statement errors become
//! `writeErrors` entries; `ordered` (default true) stops at the first one.

use bson::{doc, Bson, Document};

use super::coll_name;
use crate::matcher;
use crate::state::{truthy, CmdError, CmdResult, State};
use crate::txn::{self, Mode};
use crate::write::{self, UpdateStmt, WriteLog};

fn statements<'a>(body: &'a Document, field: &str) -> CmdResult<Vec<&'a Document>> {
    match body.get(field) {
        Some(Bson::Array(a)) => a
            .iter()
            .map(|v| match v {
                Bson::Document(d) => Ok(d),
                _ => Err(CmdError::type_mismatch(format!("{field} entries must be objects"))),
            })
            .collect(),
        _ => Err(CmdError::failed_to_parse(format!("BSON field '{field}' is missing but a required field"))),
    }
}

fn write_error(index: usize, e: &CmdError) -> Bson {
    Bson::Document(doc! {"index": index as i32, "code": e.code, "errmsg": e.msg.clone()})
}

fn ordered(body: &Document) -> bool {
    body.get("ordered").map(|v| truthy(Some(v))).unwrap_or(true)
}

pub fn insert(st: &mut State, db: &str, body: &Document, mode: &Mode) -> CmdResult<Document> {
    let coll = coll_name(body)?;
    let docs = statements(body, "documents")?;
    let mut log = WriteLog::default();
    let mut n = 0;
    let mut errors = Vec::new();
    for (i, d) in docs.into_iter().enumerate() {
        match write::insert(st, db, &coll, d.clone(), &mut log) {
            Ok(()) => n += 1,
            Err(e) => {
                errors.push(write_error(i, &e));
                if ordered(body) {
                    break;
                }
            }
        }
    }
    txn::finish(st, mode, log);
    let mut out = doc! {"n": n};
    if !errors.is_empty() {
        out.insert("writeErrors", errors);
    }
    out.insert("ok", 1.0);
    Ok(out)
}

fn update_spec(stmt: &Document) -> CmdResult<&Document> {
    match stmt.get("u") {
        Some(Bson::Document(u)) => Ok(u),
        Some(Bson::Array(_)) => Err(CmdError::bad_value(
            "pipeline-style updates are not supported by this test server",
        )),
        _ => Err(CmdError::failed_to_parse("update statement has no 'u'")),
    }
}

pub fn update(st: &mut State, db: &str, body: &Document, mode: &Mode) -> CmdResult<Document> {
    let coll = coll_name(body)?;
    let stmts = statements(body, "updates")?;
    let mut log = WriteLog::default();
    let (mut n, mut modified) = (0i64, 0i64);
    let mut upserted = Vec::new();
    let mut errors = Vec::new();
    for (i, s) in stmts.into_iter().enumerate() {
        let empty = Document::new();
        let q = s.get_document("q").unwrap_or(&empty);
        let r = update_spec(s).and_then(|u| {
            let stmt = UpdateStmt {
                filter: q,
                u,
                multi: truthy(s.get("multi")),
                upsert: truthy(s.get("upsert")),
            };
            write::update(st, db, &coll, stmt, &mut log)
        });
        match r {
            Ok(u) => {
                n += u.matched as i64;
                modified += u.modified as i64;
                if let Some(id) = u.upserted {
                    n += 1;
                    upserted.push(Bson::Document(doc! {"index": i as i32, "_id": id}));
                }
            }
            Err(e) => {
                errors.push(write_error(i, &e));
                if ordered(body) {
                    break;
                }
            }
        }
    }
    txn::finish(st, mode, log);
    let mut out = doc! {"n": n as i32, "nModified": modified as i32};
    if !upserted.is_empty() {
        out.insert("upserted", upserted);
    }
    if !errors.is_empty() {
        out.insert("writeErrors", errors);
    }
    out.insert("ok", 1.0);
    Ok(out)
}

pub fn delete(st: &mut State, db: &str, body: &Document, mode: &Mode) -> CmdResult<Document> {
    let coll = coll_name(body)?;
    let stmts = statements(body, "deletes")?;
    let mut log = WriteLog::default();
    let mut n = 0u64;
    let mut errors = Vec::new();
    for (i, s) in stmts.into_iter().enumerate() {
        let empty = Document::new();
        let q = s.get_document("q").unwrap_or(&empty);
        let limit_one = s.get("limit").and_then(crate::state::as_i64) == Some(1);
        match write::delete(st, db, &coll, q, limit_one, &mut log) {
            Ok(k) => n += k,
            Err(e) => {
                errors.push(write_error(i, &e));
                if ordered(body) {
                    break;
                }
            }
        }
    }
    txn::finish(st, mode, log);
    let mut out = doc! {"n": n as i32};
    if !errors.is_empty() {
        out.insert("writeErrors", errors);
    }
    out.insert("ok", 1.0);
    Ok(out)
}

pub fn find_and_modify(st: &mut State, db: &str, body: &Document, mode: &Mode) -> CmdResult<Document> {
    let coll = coll_name(body)?;
    let empty = Document::new();
    let query = body.get_document("query").unwrap_or(&empty);
    let sort = body.get_document("sort").unwrap_or(&empty);
    let mut candidates: Vec<Document> = match st.store.get(db, &coll) {
        Some(c) => {
            let mut v = Vec::new();
            for d in &c.docs {
                if matcher::matches(d, query)? {
                    v.push(d.clone());
                }
            }
            v
        }
        None => Vec::new(),
    };
    matcher::sort_docs(&mut candidates, sort, |d| d);
    let before = candidates.into_iter().next();
    let id_filter = before
        .as_ref()
        .and_then(|d| d.get("_id").cloned())
        .map(|id| doc! {"_id": id});
    let mut log = WriteLog::default();
    let mut last_error = doc! {"n": 0};
    let value = if truthy(body.get("remove")) {
        if let Some(f) = &id_filter {
            write::delete(st, db, &coll, f, true, &mut log)?;
            last_error = doc! {"n": 1};
        }
        before.clone()
    } else {
        let u = match body.get("update") {
            Some(Bson::Document(u)) => u,
            _ => return Err(CmdError::failed_to_parse("Either an update or remove=true must be specified")),
        };
        let f = id_filter.clone().unwrap_or_else(|| query.clone());
        let stmt = UpdateStmt {
            filter: &f,
            u,
            multi: false,
            upsert: truthy(body.get("upsert")),
        };
        let r = write::update(st, db, &coll, stmt, &mut log)?;
        let id = r
            .upserted
            .clone()
            .or_else(|| before.as_ref().and_then(|d| d.get("_id").cloned()));
        last_error = doc! {"n": if r.matched > 0 || r.upserted.is_some() { 1 } else { 0 }, "updatedExisting": r.matched > 0};
        if let Some(up) = &r.upserted {
            last_error.insert("upserted", up.clone());
        }
        if truthy(body.get("new")) {
            id.and_then(|id| {
                st.store
                    .get(db, &coll)
                    .and_then(|c| c.position_of_id(&id).map(|p| c.docs[p].clone()))
            })
        } else {
            before.clone()
        }
    };
    txn::finish(st, mode, log);
    Ok(doc! {
        "lastErrorObject": last_error,
        "value": value.map(Bson::Document).unwrap_or(Bson::Null),
        "ok": 1.0,
    })
}
