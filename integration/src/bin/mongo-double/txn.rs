//! Logical sessions: retryable writes and multi-document transactions.
//!
//! A write that carries `lsid` + `txnNumber` (no `autocommit`) is a retryable write: each
//! of its statements gets an entry with `lsid`, `txnNumber`, `stmtId` (counting from 0
//! within the txnNumber) and `prevOpTime` (the previous entry of the same txnNumber, or
//! `{ts: Timestamp(0, 0), t: -1}`).
//!
//! A transaction (`autocommit: false`, opened by `startTransaction: true`) applies its
//! writes at once (other sessions can see them: no isolation) and buffers their oplog
//! operations. `commitTransaction` writes them as ONE `applyOps` entry; when they exceed
//! 16 MB they are split the way a 4.2+ server splits an unprepared transaction: entries
//! with `partialTxn: true` linked by `prevOpTime`, then the last, committing entry with
//! `count: <number of operations>`. `abortTransaction` takes the writes back.

use bson::{Bson, Document};

use crate::oplog::{crud_entry, txn_entry, txn_op, Op, OpTime, SessionInfo};
use crate::state::{CmdError, CmdResult, State};
use crate::write::{self, WriteLog};

/// The largest `applyOps` array one transaction entry carries.
pub const MAX_TXN_ENTRY_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Default)]
pub struct Session {
    pub txn_number: i64,
    pub in_txn: bool,
    pub ops: Vec<Op>,
    pub undo: Vec<write::Undo>,
    pub retry_stmt: i32,
    pub retry_prev: Option<OpTime>,
}

/// How the current command's writes reach the oplog.
#[derive(Debug, Clone)]
pub enum Mode {
    Plain,
    Retryable(SessionInfo),
    Txn(SessionInfo),
}

fn session_key(lsid: &Document) -> Vec<u8> {
    match lsid.get("id") {
        Some(Bson::Binary(b)) => b.bytes.clone(),
        _ => bson::to_vec(lsid).unwrap_or_default(),
    }
}

fn no_such_txn(n: i64) -> CmdError {
    CmdError::new(
        251,
        "NoSuchTransaction",
        format!("Transaction with {{ txnNumber: {n} }} has been aborted."),
    )
}

/// Reads the session fields of a command and updates the session state.
pub fn mode_of(st: &mut State, cmd: &Document) -> CmdResult<Mode> {
    let Ok(lsid) = cmd.get_document("lsid") else {
        return Ok(Mode::Plain);
    };
    let Some(txn_number) = cmd.get("txnNumber").and_then(crate::state::as_i64) else {
        return Ok(Mode::Plain);
    };
    let mut full_lsid = lsid.clone();
    if !full_lsid.contains_key("uid") {
        full_lsid.insert(
            "uid",
            bson::Binary {
                subtype: bson::spec::BinarySubtype::Generic,
                bytes: st.lsid_uid.clone(),
            },
        );
    }
    let info = SessionInfo {
        lsid: full_lsid,
        txn_number,
    };
    let key = session_key(lsid);
    let autocommit = cmd.get("autocommit").map(|v| crate::state::truthy(Some(v)));
    let s = st.sessions.entry(key).or_default();
    if autocommit == Some(false) {
        if crate::state::truthy(cmd.get("startTransaction")) {
            if txn_number < s.txn_number || (txn_number == s.txn_number && s.in_txn) {
                return Err(CmdError::new(
                    225,
                    "TransactionTooOld",
                    format!("Cannot start transaction {txn_number} on session because a newer transaction {} has already started", s.txn_number),
                ));
            }
            s.txn_number = txn_number;
            s.in_txn = true;
            s.ops.clear();
            s.undo.clear();
        } else if !(s.in_txn && s.txn_number == txn_number) {
            let name = cmd.keys().next().map(String::as_str).unwrap_or("");
            if name == "commitTransaction" && s.txn_number == txn_number {
                // A retried commit of a transaction that already committed.
                return Ok(Mode::Txn(info));
            }
            return Err(no_such_txn(txn_number));
        }
        return Ok(Mode::Txn(info));
    }
    if s.txn_number != txn_number {
        s.txn_number = txn_number;
        s.in_txn = false;
        s.retry_stmt = 0;
        s.retry_prev = None;
    }
    Ok(Mode::Retryable(info))
}

/// Sends the operations of a command's writes to the oplog (or the open transaction).
pub fn finish(st: &mut State, mode: &Mode, log: WriteLog) {
    let term = st.term;
    match mode {
        Mode::Plain => {
            for op in log.ops {
                st.oplog
                    .append(term, |ts, wall| crud_entry(&op, None, ts, term, wall));
            }
        }
        Mode::Retryable(info) => {
            let key = session_key(&info.lsid);
            for op in log.ops {
                if op.op == "c" {
                    // an implicit create is no statement of the retryable write
                    st.oplog
                        .append(term, |ts, wall| crud_entry(&op, None, ts, term, wall));
                    continue;
                }
                let s = st.sessions.entry(key.clone()).or_default();
                let stmt = s.retry_stmt;
                let prev = s.retry_prev.unwrap_or(OpTime::NULL);
                s.retry_stmt += 1;
                let at = st.oplog.append(term, |ts, wall| {
                    crud_entry(&op, Some((info, stmt, prev)), ts, term, wall)
                });
                st.sessions.entry(key.clone()).or_default().retry_prev = Some(at);
            }
        }
        Mode::Txn(info) => {
            let s = st.sessions.entry(session_key(&info.lsid)).or_default();
            s.ops.extend(log.ops);
            s.undo.extend(log.undo);
        }
    }
}

/// `commitTransaction`: logs the buffered operations.
pub fn commit(st: &mut State, info: &SessionInfo) -> CmdResult<()> {
    let key = session_key(&info.lsid);
    let Some(s) = st.sessions.get_mut(&key) else {
        return Err(no_such_txn(info.txn_number));
    };
    if !s.in_txn {
        return Ok(()); // a retried commit
    }
    s.in_txn = false;
    s.undo.clear();
    let ops: Vec<Bson> = std::mem::take(&mut s.ops)
        .iter()
        .map(|op| Bson::Document(txn_op(op)))
        .collect();
    if ops.is_empty() {
        return Ok(());
    }
    let total = ops.len();
    let mut chunks: Vec<Vec<Bson>> = vec![Vec::new()];
    let mut size = 0usize;
    for op in ops {
        let n = match &op {
            Bson::Document(d) => bson::to_vec(d).map(|v| v.len()).unwrap_or(0),
            _ => 0,
        };
        if size + n > MAX_TXN_ENTRY_BYTES && chunks.last().is_some_and(|c| !c.is_empty()) {
            chunks.push(Vec::new());
            size = 0;
        }
        size += n;
        if let Some(c) = chunks.last_mut() {
            c.push(op);
        }
    }
    let term = st.term;
    let n_chunks = chunks.len();
    let mut prev = OpTime::NULL;
    for (i, chunk) in chunks.into_iter().enumerate() {
        let tail = if n_chunks == 1 {
            None
        } else if i + 1 < n_chunks {
            Some(("partialTxn", Bson::Boolean(true)))
        } else {
            Some(("count", Bson::Int64(total as i64)))
        };
        prev = st.oplog.append(term, |ts, wall| {
            txn_entry(info, chunk, tail, prev, ts, term, wall)
        });
    }
    Ok(())
}

/// `abortTransaction`: takes the writes back.
pub fn abort(st: &mut State, info: &SessionInfo) -> CmdResult<()> {
    let key = session_key(&info.lsid);
    let Some(s) = st.sessions.get_mut(&key) else {
        return Err(no_such_txn(info.txn_number));
    };
    if !s.in_txn {
        return Err(no_such_txn(info.txn_number));
    }
    s.in_txn = false;
    // collections the transaction created go with it
    let created: Vec<(String, String)> = s
        .ops
        .iter()
        .filter(|op| op.op == "c")
        .filter_map(|op| {
            let db = op.ns.split_once('.')?.0.to_string();
            Some((db, op.o.get_str("create").ok()?.to_string()))
        })
        .collect();
    s.ops.clear();
    let undo = std::mem::take(&mut s.undo);
    write::undo(st, undo);
    for (db, coll) in created {
        st.store.remove_collection(&db, &coll);
    }
    Ok(())
}
