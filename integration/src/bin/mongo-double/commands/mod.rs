//! Command dispatch: the body's first key names the command, `$db` the database. Every
//! reply gets `$clusterTime` and `operationTime` (the newest oplog timestamp), as a
//! replica-set member's replies do. When a user is configured, commands other than the
//! handshake and authentication ones need an authenticated connection.

pub mod admin;
pub mod apply_ops;
pub mod auth;
pub mod crud;
pub mod ddl;
pub mod query;

use std::time::Instant;

use bson::spec::BinarySubtype;
use bson::{doc, Binary, Document, RawDocumentBuf};

use crate::state::{CmdError, CmdResult, Shared, State};
use crate::txn;

/// A command's answer.
#[derive(Debug)]
pub enum Reply {
    Doc(Document),
    Raw(RawDocumentBuf),
}

/// What the connection loop should do.
#[derive(Debug)]
pub enum Outcome {
    Reply(Reply),
    /// An awaitData `getMore` found nothing new: wait for an oplog append, then run again.
    WaitForOplog,
}

/// Per-connection state.
#[derive(Debug, Default)]
pub struct Conn {
    pub id: i64,
    pub authenticated: bool,
    pub conversation: Option<crate::scram::Conversation>,
    pub skip_empty_exchange: bool,
    /// Until when an awaitData `getMore` may still wait (None: no waiting).
    pub wait_until: Option<Instant>,
}

const OPEN_COMMANDS: &[&str] = &[
    "hello",
    "isMaster",
    "ismaster",
    "saslStart",
    "saslContinue",
    "ping",
    "buildInfo",
    "buildinfo",
    "endSessions",
    "getnonce",
];

/// Runs one command.
pub fn run(shared: &Shared, conn: &mut Conn, body: &Document) -> Outcome {
    let name = body.keys().next().cloned().unwrap_or_default();
    let db = body.get_str("$db").unwrap_or("admin").to_string();
    let mut st = shared.lock();
    let result = if shared.config.user.is_some()
        && !conn.authenticated
        && !OPEN_COMMANDS.contains(&name.as_str())
    {
        Err(CmdError::new(
            13,
            "Unauthorized",
            format!("Command {name} requires authentication"),
        ))
    } else {
        dispatch(shared, &mut st, conn, &name, &db, body)
    };
    let outcome = match result {
        Ok(Some(r)) => Outcome::Reply(r),
        Ok(None) => Outcome::WaitForOplog,
        Err(e) => Outcome::Reply(Reply::Doc(e.to_doc())),
    };
    shared.publish(&st);
    match outcome {
        Outcome::Reply(r) => Outcome::Reply(Reply::Raw(finish(r, &st))),
        w => w,
    }
}

/// Adds `$clusterTime` and `operationTime`.
fn finish(r: Reply, st: &State) -> RawDocumentBuf {
    let ts = st.oplog.last_ts();
    let mut raw = match r {
        Reply::Raw(raw) => raw,
        Reply::Doc(d) => match RawDocumentBuf::from_document(&d) {
            Ok(raw) => raw,
            Err(e) => RawDocumentBuf::from_document(
                &CmdError::new(1, "InternalError", format!("cannot encode the reply: {e}"))
                    .to_doc(),
            )
            .unwrap_or_default(),
        },
    };
    let cluster = doc! {
        "clusterTime": ts,
        "signature": {
            "hash": Binary { subtype: BinarySubtype::Generic, bytes: vec![0; 20] },
            "keyId": 0i64,
        },
    };
    if let Ok(c) = RawDocumentBuf::from_document(&cluster) {
        raw.append("$clusterTime", c);
    }
    raw.append("operationTime", ts);
    raw
}

fn dispatch(
    shared: &Shared,
    st: &mut State,
    conn: &mut Conn,
    name: &str,
    db: &str,
    body: &Document,
) -> CmdResult<Option<Reply>> {
    let mode = txn::mode_of(st, body)?;
    let doc = |d: Document| Ok(Some(Reply::Doc(d)));
    match name {
        "hello" | "isMaster" | "ismaster" => doc(admin::hello(shared, st, conn, name, body)),
        "ping" => doc(doc! {"ok": 1.0}),
        "buildInfo" | "buildinfo" => doc(admin::build_info()),
        "getParameter" => doc(admin::get_parameter(body)),
        "serverStatus" => doc(admin::server_status(shared, st)),
        "hostInfo" => doc(admin::host_info()),
        "saslStart" => auth::sasl_start(shared, conn, body).map(|d| Some(Reply::Doc(d))),
        "saslContinue" => auth::sasl_continue(shared, conn, body).map(|d| Some(Reply::Doc(d))),
        "endSessions" | "killSessions" | "refreshSessions" | "getnonce" | "logout" => {
            doc(doc! {"ok": 1.0})
        }
        "replSetGetStatus" => doc(admin::repl_set_get_status(shared, st)),
        "pitrHoldMajority" => doc(admin::hold_majority(st, body)),
        "pitrDenyUuidPrivileges" => {
            st.deny_uuid_privileges = crate::state::truthy(body.get("pitrDenyUuidPrivileges"));
            doc(bson::doc! {"ok": 1.0})
        }
        "pitrRollback" => doc(admin::rollback(st, body)),
        "replSetStepDown" | "replSetStepUp" => doc(admin::step_down(st)),
        "insert" => crud::insert(st, db, body, &mode).map(|d| Some(Reply::Doc(d))),
        "update" => crud::update(st, db, body, &mode).map(|d| Some(Reply::Doc(d))),
        "delete" => crud::delete(st, db, body, &mode).map(|d| Some(Reply::Doc(d))),
        "findAndModify" | "findandmodify" => {
            crud::find_and_modify(st, db, body, &mode).map(|d| Some(Reply::Doc(d)))
        }
        "commitTransaction" | "abortTransaction" => {
            let txn::Mode::Txn(info) = &mode else {
                return Err(CmdError::new(
                    50768,
                    "Location50768",
                    format!("{name} must be run within a transaction"),
                ));
            };
            if name == "commitTransaction" {
                txn::commit(st, info)?;
            } else {
                txn::abort(st, info)?;
            }
            doc(doc! {"ok": 1.0})
        }
        "find" => query::find(st, db, body).map(|r| Some(Reply::Raw(r))),
        "getMore" => query::get_more(st, body, conn.wait_until),
        "killCursors" => query::kill_cursors(st, body).map(|d| Some(Reply::Doc(d))),
        "count" => query::count(st, db, body).map(|d| Some(Reply::Doc(d))),
        "aggregate" => query::aggregate(st, db, body).map(|r| Some(Reply::Raw(r))),
        "distinct" => query::distinct(st, db, body).map(|d| Some(Reply::Doc(d))),
        "listDatabases" => ddl::list_databases(st, body).map(|d| Some(Reply::Doc(d))),
        "listCollections" => ddl::list_collections(st, db, body).map(|r| Some(Reply::Raw(r))),
        "listIndexes" => ddl::list_indexes(st, db, body).map(|r| Some(Reply::Raw(r))),
        "create" => ddl::create(st, db, body).map(|d| Some(Reply::Doc(d))),
        "createIndexes" => ddl::create_indexes(st, db, body).map(|d| Some(Reply::Doc(d))),
        "dropIndexes" => ddl::drop_indexes(st, db, body).map(|d| Some(Reply::Doc(d))),
        "drop" => ddl::drop(st, db, body).map(|d| Some(Reply::Doc(d))),
        "dropDatabase" => ddl::drop_database(st, db).map(|d| Some(Reply::Doc(d))),
        "collMod" => ddl::coll_mod(st, db, body).map(|d| Some(Reply::Doc(d))),
        "renameCollection" => ddl::rename_collection(st, body).map(|d| Some(Reply::Doc(d))),
        "applyOps" => apply_ops::apply_ops(st, body).map(|d| Some(Reply::Doc(d))),
        other => Err(CmdError::new(
            59,
            "CommandNotFound",
            format!("no such command: '{other}'"),
        )),
    }
}

/// The collection named by the command's first field (`{find: "c"}` → `c`).
pub fn coll_name(body: &Document) -> CmdResult<String> {
    match body.iter().next() {
        Some((_, bson::Bson::String(s))) => Ok(s.clone()),
        Some((k, _)) => Err(CmdError::new(
            73,
            "InvalidNamespace",
            format!("collection name has invalid type for command {k}"),
        )),
        None => Err(CmdError::failed_to_parse("empty command")),
    }
}
