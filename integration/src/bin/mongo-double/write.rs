//! Document writes on the store. Each write records the oplog operation it stands for
//! ([`Op`]) and how to undo it (for aborted transactions); the caller decides how the
//! operations reach the oplog (own entries, retryable-write entries, or one `applyOps`
//! at commit). Creating a collection implicitly by a write records its `create` command
//! among the write's operations, so inside a transaction it is logged in the transaction's
//! `applyOps`, as servers 4.4+ do (mongo: `src/mongo/db/op_observer/op_observer_impl.cpp`,
//! `onCreateCollection` appends to the transaction's operations when one is open);
//! otherwise it is logged at once, before the write.

use bson::oid::ObjectId;
use bson::{doc, Bson, Document};

use crate::diff;
use crate::matcher;
use crate::oplog::{command_entry, Op, OpTime};
use crate::state::{CmdError, CmdResult, State};
use crate::store::{id_index, Collection, Kind};
use crate::update;

/// How to take one write back.
#[derive(Debug, Clone)]
pub struct Undo {
    pub db: String,
    pub coll: String,
    pub id: Bson,
    /// The document before the write (`None`: it did not exist).
    pub before: Option<Document>,
}

/// What a series of writes did.
#[derive(Debug, Default)]
pub struct WriteLog {
    pub ops: Vec<Op>,
    pub undo: Vec<Undo>,
}

/// Appends a command entry (`op: "c"`) to the oplog.
pub fn log_command(
    st: &mut State,
    db: &str,
    ui: Option<[u8; 16]>,
    o: Document,
    o2: Option<Document>,
) -> OpTime {
    let term = st.term;
    st.oplog.append(term, |ts, wall| {
        command_entry(db, ui, o, o2, ts, term, wall)
    })
}

pub fn check_names(db: &str, coll: &str) -> CmdResult<()> {
    if db.is_empty() || db.contains(['/', '\\', '.', ' ', '"', '$', '\0']) {
        return Err(CmdError::new(
            73,
            "InvalidNamespace",
            format!("Invalid database name: '{db}'"),
        ));
    }
    if coll.is_empty() || coll.contains('$') || coll.contains('\0') {
        return Err(CmdError::new(
            73,
            "InvalidNamespace",
            format!("Invalid collection name: {coll}"),
        ));
    }
    Ok(())
}

fn not_on_view(db: &str, coll: &str) -> CmdError {
    CmdError::new(
        166,
        "CommandNotSupportedOnView",
        format!("Namespace {db}.{coll} is a view, not a collection"),
    )
}

/// The UUID of `db.coll`, creating it when missing and recording its `create` among the
/// operations of `log` (see the module docs).
fn ensure_collection_for(
    st: &mut State,
    db: &str,
    coll: &str,
    log: &mut WriteLog,
) -> CmdResult<[u8; 16]> {
    if st.store.get(db, coll).is_some() || db == "local" {
        return ensure_collection(st, db, coll);
    }
    check_names(db, coll)?;
    let c = Collection::new(Kind::Collection, Document::new(), None);
    let uuid = c.uuid;
    st.store.insert_collection(db, coll, c);
    log.ops.push(Op {
        op: "c",
        ns: format!("{db}.$cmd"),
        ui: uuid,
        o: doc! {"create": coll, "idIndex": id_index()},
        o2: None,
    });
    Ok(uuid)
}

/// The UUID of `db.coll`, creating it (and logging `create`) when missing.
pub fn ensure_collection(st: &mut State, db: &str, coll: &str) -> CmdResult<[u8; 16]> {
    if let Some(c) = st.store.get(db, coll) {
        return match c.kind {
            Kind::Collection => Ok(c.uuid),
            _ => Err(not_on_view(db, coll)),
        };
    }
    check_names(db, coll)?;
    if db == "local" && coll == "oplog.rs" {
        return Err(CmdError::new(
            20,
            "IllegalOperation",
            "cannot write to 'local.oplog.rs'",
        ));
    }
    let c = Collection::new(Kind::Collection, Document::new(), None);
    let uuid = c.uuid;
    st.store.insert_collection(db, coll, c);
    if db != "local" {
        log_command(
            st,
            db,
            Some(uuid),
            doc! {"create": coll, "idIndex": id_index()},
            None,
        );
    }
    Ok(uuid)
}

fn dup_key(db: &str, coll: &str, id: &Bson) -> CmdError {
    CmdError::new(
        11000,
        "DuplicateKey",
        format!("E11000 duplicate key error collection: {db}.{coll} index: _id_ dup key: {{ _id: {id} }}"),
    )
}

fn replicated(db: &str) -> bool {
    db != "local"
}

/// Inserts one document (an `_id` ObjectId is added first when missing).
pub fn insert(
    st: &mut State,
    db: &str,
    coll: &str,
    mut d: Document,
    log: &mut WriteLog,
) -> CmdResult<()> {
    let ui = ensure_collection_for(st, db, coll, log)?;
    if !d.contains_key("_id") {
        let mut with_id = doc! {"_id": ObjectId::new()};
        with_id.extend(d);
        d = with_id;
    }
    let id = d.get("_id").cloned().unwrap_or(Bson::Null);
    let c = st
        .store
        .get_mut(db, coll)
        .ok_or_else(|| CmdError::ns_not_found(format!("{db}.{coll} not found")))?;
    if c.position_of_id(&id).is_some() {
        return Err(dup_key(db, coll, &id));
    }
    c.push_doc(d.clone());
    log.undo.push(Undo {
        db: db.into(),
        coll: coll.into(),
        id: id.clone(),
        before: None,
    });
    if replicated(db) {
        log.ops.push(Op {
            op: "i",
            ns: format!("{db}.{coll}"),
            ui,
            o: d,
            o2: Some(doc! {"_id": id}),
        });
    }
    Ok(())
}

/// The outcome of one update statement.
#[derive(Debug, Default)]
pub struct Updated {
    pub matched: u64,
    pub modified: u64,
    pub upserted: Option<Bson>,
}

/// One update statement: `q`, `u`, `multi`, `upsert`.
#[derive(Debug, Clone, Copy)]
pub struct UpdateStmt<'a> {
    pub filter: &'a Document,
    pub u: &'a Document,
    pub multi: bool,
    pub upsert: bool,
}

/// Runs one update statement.
pub fn update(
    st: &mut State,
    db: &str,
    coll: &str,
    stmt: UpdateStmt<'_>,
    log: &mut WriteLog,
) -> CmdResult<Updated> {
    let UpdateStmt {
        filter,
        u,
        multi,
        upsert,
    } = stmt;
    let operator = update::is_operator_update(u);
    if !operator && multi {
        return Err(CmdError::failed_to_parse(
            "multi update is not supported for replacement-style update",
        ));
    }
    let mut out = Updated::default();
    let positions: Vec<usize> = match st.store.get(db, coll) {
        Some(c) if c.kind != Kind::Collection => return Err(not_on_view(db, coll)),
        Some(c) => {
            let mut v = Vec::new();
            for (i, d) in c.docs.iter().enumerate() {
                if matcher::matches(d, filter)? {
                    v.push(i);
                    if !multi {
                        break;
                    }
                }
            }
            v
        }
        None => Vec::new(),
    };
    if positions.is_empty() {
        if upsert {
            let mut d = Document::new();
            for (k, v) in filter {
                if !k.starts_with('$')
                    && !k.contains('.')
                    && !matches!(v, Bson::Document(x) if x.keys().any(|k| k.starts_with('$')))
                {
                    d.insert(k.clone(), v.clone());
                }
            }
            let new = if operator {
                update::apply_operators(&mut d, u, true)?;
                d
            } else {
                let mut r = u.clone();
                if let (Some(id), false) = (d.get("_id"), r.contains_key("_id")) {
                    let mut with_id = doc! {"_id": id.clone()};
                    with_id.extend(r);
                    r = with_id;
                }
                r
            };
            let mut new = new;
            if !new.contains_key("_id") {
                let mut with_id = doc! {"_id": ObjectId::new()};
                with_id.extend(new);
                new = with_id;
            }
            out.upserted = new.get("_id").cloned();
            insert(st, db, coll, new, log)?;
        }
        return Ok(out);
    }
    let ui = st.store.get(db, coll).map(|c| c.uuid).unwrap_or_default();
    for pos in positions {
        let Some(c) = st.store.get_mut(db, coll) else {
            break;
        };
        let old = c.docs[pos].clone();
        let new = if operator {
            let mut n = old.clone();
            update::apply_operators(&mut n, u, false)?;
            n
        } else {
            update::replace(&old, u)?
        };
        out.matched += 1;
        if new == old {
            continue;
        }
        out.modified += 1;
        let id = old.get("_id").cloned().unwrap_or(Bson::Null);
        c.replace_doc(pos, new.clone());
        log.undo.push(Undo {
            db: db.into(),
            coll: coll.into(),
            id: id.clone(),
            before: Some(old.clone()),
        });
        if replicated(db) {
            let o = if operator {
                doc! {"$v": 2, "diff": diff::compute(&old, &new)}
            } else {
                new
            };
            log.ops.push(Op {
                op: "u",
                ns: format!("{db}.{coll}"),
                ui,
                o,
                o2: Some(doc! {"_id": id}),
            });
        }
    }
    Ok(out)
}

/// Runs one delete statement; `limit_one` stops at the first match.
pub fn delete(
    st: &mut State,
    db: &str,
    coll: &str,
    filter: &Document,
    limit_one: bool,
    log: &mut WriteLog,
) -> CmdResult<u64> {
    let Some(c) = st.store.get_mut(db, coll) else {
        return Ok(0);
    };
    if c.kind != Kind::Collection {
        return Err(not_on_view(db, coll));
    }
    let ui = c.uuid;
    let mut n = 0;
    let mut i = 0;
    while i < c.docs.len() {
        if matcher::matches(&c.docs[i], filter)? {
            let old = c.remove_doc(i);
            let id = old.get("_id").cloned().unwrap_or(Bson::Null);
            n += 1;
            log.undo.push(Undo {
                db: db.into(),
                coll: coll.into(),
                id: id.clone(),
                before: Some(old),
            });
            if replicated(db) {
                log.ops.push(Op {
                    op: "d",
                    ns: format!("{db}.{coll}"),
                    ui,
                    o: doc! {"_id": id},
                    o2: None,
                });
            }
            if limit_one {
                break;
            }
        } else {
            i += 1;
        }
    }
    Ok(n)
}

/// Takes writes back, newest first.
pub fn undo(st: &mut State, undo: Vec<Undo>) {
    for u in undo.into_iter().rev() {
        let Some(c) = st.store.get_mut(&u.db, &u.coll) else {
            continue;
        };
        let pos = c.position_of_id(&u.id);
        match (pos, u.before) {
            (Some(p), Some(before)) => {
                c.replace_doc(p, before);
            }
            (Some(p), None) => {
                c.remove_doc(p);
            }
            (None, Some(before)) => c.push_doc(before),
            (None, None) => {}
        }
    }
}

/// Stores `new` under its `_id` (replacing in place, or inserting): what an applied oplog
/// `i` or `u` does. The `u` entry logged carries `logged_o` (a `$v: 2` diff) when given,
/// else the whole document.
pub fn put(
    st: &mut State,
    db: &str,
    coll: &str,
    new: Document,
    logged_o: Option<Document>,
    log: &mut WriteLog,
) -> CmdResult<()> {
    let ui = ensure_collection_for(st, db, coll, log)?;
    let id = new.get("_id").cloned().unwrap_or(Bson::Null);
    let Some(c) = st.store.get_mut(db, coll) else {
        return Err(CmdError::ns_not_found(format!("{db}.{coll} not found")));
    };
    let Some(pos) = c.position_of_id(&id) else {
        return insert(st, db, coll, new, log);
    };
    let old = c.replace_doc(pos, new.clone());
    log.undo.push(Undo {
        db: db.into(),
        coll: coll.into(),
        id: id.clone(),
        before: Some(old),
    });
    if replicated(db) {
        log.ops.push(Op {
            op: "u",
            ns: format!("{db}.{coll}"),
            ui,
            o: logged_o.unwrap_or(new),
            o2: Some(doc! {"_id": id}),
        });
    }
    Ok(())
}

/// The current document with this `_id`, if any.
pub fn get_by_id(st: &State, db: &str, coll: &str, id: &Bson) -> Option<Document> {
    let c = st.store.get(db, coll)?;
    c.position_of_id(id).map(|p| c.docs[p].clone())
}
