//! `applyOps`: applies oplog entries in order, the way a restore replays them.
//!
//! - `i`: the document is stored under its `_id` (an existing one is replaced: applyOps
//!   upserts);
//! - `u`: `o2._id` names the document; `o` is a `$v: 2` diff (applied as the server
//!   applies it, nested sub-diffs included), a `$set`/`$unset`-style update, or a whole
//!   replacement; a missing document is created from `{_id}` first (`alwaysUpsert`);
//! - `d`: deletes by `_id` (a missing document is fine); `n`: nothing;
//! - `c`: `create` (its `_id` index as its `idIndex` says, v:1 without one), `createIndexes`, `commitIndexBuild` (`startIndexBuild` and
//!   `abortIndexBuild` change nothing), `dropIndexes`, `collMod`, `drop`,
//!   `dropDatabase`, `renameCollection`, and nested `applyOps` (transactions).
//!
//! The collection is found by `ui` when the entry has one (NamespaceNotFound when no
//! collection has it), else by `ns`. Each
//! applied operation writes its own oplog entry, as the server logs a non-atomic applyOps.
//!
//! Refused as the server refuses them:
//! - `create` or `renameCollection` in an `applyOps` (or nested `applyOps`) of more than
//!   one operation: Unauthorized (13), it needs the `__system` role, which no user of the
//!   double has (mongo: `src/mongo/db/commands/apply_ops_cmd.cpp`,
//!   `validateApplyOpsCommand`, checked before anything is applied);
//! - with the test command `{pitrDenyUuidPrivileges: true}` (a user without the `useUUID` and
//!   `forceUUID` actions, as a role without them has): an operation with a UUID among its
//!   top-level fields, or, for a command, among the top-level fields of its `o` (`ui`,
//!   `dropTarget`), Unauthorized (13) (`apply_ops_cmd.cpp`, `operationContainsUUID`;
//!   `oplog_application_checks.cpp`);
//! - `createIndexes`, `startIndexBuild`, `commitIndexBuild`: CommandNotSupported (115),
//!   "not supported in applyOps mode" (`src/mongo/db/repl/oplog.cpp`, the command map);
//!   a restore runs them as the `createIndexes` command.

use bson::{doc, Bson, Document};

use super::ddl;
use crate::diff;
use crate::state::{as_i64, CmdError, CmdResult, State};
use crate::store::split_ns;
use crate::txn::{self, Mode};
use crate::update;
use crate::write::{self, WriteLog};

pub fn apply_ops(st: &mut State, body: &Document) -> CmdResult<Document> {
    let Some(Bson::Array(ops)) = body.get("applyOps") else {
        return Err(CmdError::failed_to_parse(
            "applyOps needs an array of operations",
        ));
    };
    validate(ops, 0)?;
    if st.deny_uuid_privileges && ops.iter().any(names_uuid) {
        return Err(CmdError::new(
            13,
            "Unauthorized",
            "not authorized on admin to execute command applyOps with operations naming a UUID",
        ));
    }
    let mut results = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let Bson::Document(op) = op else {
            return Err(CmdError::failed_to_parse(format!(
                "applyOps entry {i} is not an object"
            )));
        };
        if let Err(mut e) = apply_one(st, op) {
            e.msg = format!("applyOps entry {i}: {}", e.msg);
            return Err(e);
        }
        results.push(Bson::Boolean(true));
    }
    Ok(doc! {"applied": results.len() as i32, "results": results, "ok": 1.0})
}

/// The name of a command operation (`op: c`), the first key of its `o`.
fn command_name(op: &Bson) -> Option<&str> {
    let Bson::Document(op) = op else { return None };
    if op.get_str("op").ok()? != "c" {
        return None;
    }
    op.get_document("o").ok()?.keys().next().map(String::as_str)
}

fn is_uuid(v: &Bson) -> bool {
    matches!(v, Bson::Binary(b) if b.subtype == bson::spec::BinarySubtype::Uuid)
}

/// An operation with a UUID among its top-level fields or, for a command, among those of
/// its `o` (`apply_ops_cmd.cpp`, `operationContainsUUID`).
fn names_uuid(op: &Bson) -> bool {
    let Bson::Document(op) = op else { return false };
    op.values().any(is_uuid)
        || (op.get_str("op") == Ok("c")
            && op.get_document("o").is_ok_and(|o| o.values().any(is_uuid)))
}

/// The server's checks of an `applyOps` array before it applies anything (see the module
/// docs), nested `applyOps` included.
fn validate(ops: &[Bson], depth: usize) -> CmdResult<()> {
    if depth >= 10 {
        return Err(CmdError::failed_to_parse("Too many nested applyOps"));
    }
    if ops.len() > 1
        && ops
            .iter()
            .any(|op| matches!(command_name(op), Some("create" | "renameCollection")))
    {
        return Err(CmdError::new(
            13,
            "Unauthorized",
            "not authorized on admin to execute command applyOps with create or renameCollection among other operations",
        ));
    }
    for op in ops {
        match command_name(op) {
            Some(name @ ("createIndexes" | "startIndexBuild" | "commitIndexBuild")) => {
                return Err(CmdError::new(
                    115,
                    "CommandNotSupported",
                    format!("The {name} operation is not supported in applyOps mode"),
                ))
            }
            Some("applyOps") => {
                if let Some(Bson::Document(op)) = Some(op) {
                    if let Ok(inner) = op.get_document("o").and_then(|o| o.get_array("applyOps")) {
                        validate(inner, depth + 1)?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn ui_of(op: &Document) -> Option<[u8; 16]> {
    match op.get("ui") {
        Some(Bson::Binary(b)) => b.bytes.as_slice().try_into().ok(),
        _ => None,
    }
}

/// `(db, coll)` of a CRUD entry: by `ui` when it has one (a `ui` no collection has is
/// NamespaceNotFound, as servers 7.0+ answer in `applyOps`: `src/mongo/db/repl/oplog.cpp`
/// looks the namespace up by UUID), else by `ns`.
fn target(st: &State, op: &Document) -> CmdResult<(String, String)> {
    if let Some(ui) = ui_of(op) {
        return st.store.ns_of_uuid(&ui).ok_or_else(|| {
            CmdError::ns_not_found(format!(
                "No namespace with UUID {}",
                bson::Uuid::from_bytes(ui)
            ))
        });
    }
    let ns = op
        .get_str("ns")
        .map_err(|_| CmdError::failed_to_parse("oplog entry has no 'ns'"))?;
    split_ns(ns)
        .map(|(d, c)| (d.to_string(), c.to_string()))
        .ok_or_else(|| CmdError::new(73, "InvalidNamespace", format!("invalid ns: {ns}")))
}

fn object<'a>(op: &'a Document, field: &str) -> CmdResult<&'a Document> {
    op.get_document(field)
        .map_err(|_| CmdError::failed_to_parse(format!("oplog entry has no object '{field}'")))
}

fn apply_one(st: &mut State, op: &Document) -> CmdResult<()> {
    let kind = op
        .get_str("op")
        .map_err(|_| CmdError::failed_to_parse("oplog entry has no 'op'"))?;
    let mut log = WriteLog::default();
    match kind {
        "n" => return Ok(()),
        "c" => return apply_command(st, op),
        "i" => {
            let (db, coll) = target(st, op)?;
            let o = object(op, "o")?.clone();
            write::put(st, &db, &coll, o, None, &mut log)?;
        }
        "u" => {
            let (db, coll) = target(st, op)?;
            let o = object(op, "o")?;
            let id = object(op, "o2")?
                .get("_id")
                .cloned()
                .ok_or_else(|| CmdError::failed_to_parse("update entry has no o2._id"))?;
            let old =
                write::get_by_id(st, &db, &coll, &id).unwrap_or_else(|| doc! {"_id": id.clone()});
            let (new, logged) = if o.get("$v").and_then(as_i64) == Some(2) {
                let d = object(o, "diff")?;
                let mut new = old;
                diff::apply(&mut new, d)?;
                (new, Some(o.clone()))
            } else if update::is_operator_update(o) {
                let mut u = o.clone();
                u.remove("$v");
                let mut new = old.clone();
                update::apply_operators(&mut new, &u, false)?;
                let logged = doc! {"$v": 2, "diff": diff::compute(&old, &new)};
                (new, Some(logged))
            } else {
                (update::replace(&old, o)?, None)
            };
            write::put(st, &db, &coll, new, logged, &mut log)?;
        }
        "d" => {
            let (db, coll) = target(st, op)?;
            let id = object(op, "o")?
                .get("_id")
                .cloned()
                .ok_or_else(|| CmdError::failed_to_parse("delete entry has no o._id"))?;
            write::delete(st, &db, &coll, &doc! {"_id": id}, true, &mut log)?;
        }
        other => return Err(CmdError::bad_value(format!("unknown oplog op {other:?}"))),
    }
    txn::finish(st, &Mode::Plain, log);
    Ok(())
}

fn apply_command(st: &mut State, op: &Document) -> CmdResult<()> {
    let ns = op.get_str("ns").unwrap_or("admin.$cmd");
    let db = ns.split_once('.').map(|(d, _)| d).unwrap_or(ns).to_string();
    let o = object(op, "o")?;
    let name = o.keys().next().cloned().unwrap_or_default();
    let coll = o.get_str(&name).unwrap_or("").to_string();
    match name.as_str() {
        "create" => {
            ddl::create_with_uuid(st, &db, o, ui_of(op))?;
            // The entry's idIndex, or a v:1 _id index when it has none: primaries log
            // idIndex only for v:2 and later (`oplog_entry.cpp`, `makeCreateCollCmdObj`),
            // and applying the entry builds what it stands for (`oplog.cpp`, `create`).
            let id_index = match o.get_document("idIndex") {
                Ok(spec) => spec.clone(),
                Err(_) => doc! {"v": 1, "key": {"_id": 1}, "name": "_id_"},
            };
            let name = o.get_str("create").unwrap_or_default().to_string();
            if let Some(c) = st.store.get_mut(&db, &name) {
                if let Some(first) = c.indexes.first_mut() {
                    *first = id_index;
                }
            }
        }
        "createIndexes" => {
            let mut spec = o.clone();
            spec.remove("createIndexes");
            ddl::create_indexes(st, &db, &doc! {"createIndexes": coll, "indexes": [spec]})?;
        }
        "commitIndexBuild" => {
            let indexes = o.get("indexes").cloned().unwrap_or(Bson::Array(Vec::new()));
            ddl::create_indexes(st, &db, &doc! {"createIndexes": coll, "indexes": indexes})?;
        }
        "startIndexBuild" | "abortIndexBuild" => {}
        "dropIndexes" | "deleteIndexes" => {
            let index = o.get("index").cloned().unwrap_or(Bson::Null);
            ddl::drop_indexes(st, &db, &doc! {"dropIndexes": coll, "index": index})?;
        }
        "collMod" => {
            ddl::coll_mod(st, &db, o)?;
        }
        "drop" => {
            ddl::drop(st, &db, o)?;
        }
        "dropDatabase" => {
            ddl::drop_database(st, &db)?;
        }
        "renameCollection" => {
            ddl::rename_collection(st, o)?;
        }
        "applyOps" => {
            apply_ops(st, o)?;
        }
        other => {
            return Err(CmdError::bad_value(format!(
                "applyOps of the command {other:?} is not supported by this test server"
            )))
        }
    }
    Ok(())
}
