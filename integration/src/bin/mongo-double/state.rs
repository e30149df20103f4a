//! The server's shared state (one lock around the data, the oplog, cursors and sessions)
//! and the command error type.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bson::spec::BinarySubtype;
use bson::{doc, Binary, Bson, Document};
use rand::RngCore;
use tokio::sync::watch;

use crate::cursor::Cursors;
use crate::oplog::Oplog;
use crate::scram::User;
use crate::store::Store;
use crate::txn::Session;

/// The replica set name.
pub const SET_NAME: &str = "rs0";

/// Settings fixed at start.
#[derive(Debug)]
pub struct Config {
    /// `127.0.0.1:<port>`, the one member's host.
    pub host: String,
    pub user: Option<User>,
    pub noop_interval: Duration,
}

/// Everything behind the lock.
#[derive(Debug)]
pub struct State {
    pub store: Store,
    pub oplog: Oplog,
    pub cursors: Cursors,
    pub sessions: HashMap<Vec<u8>, Session>,
    /// The replica-set term (oplog `t`).
    pub term: i64,
    /// `topologyVersion.counter`, bumped on a step-down.
    pub topology_counter: i64,
    /// The `lsid.uid` the server adds: SHA-256 of `<user>@admin` (of "" without auth).
    pub lsid_uid: Vec<u8>,
    /// The majority-committed optime held back by the test command
    /// `pitrHoldMajority` (as when secondaries lag); `None`: the newest entry,
    /// as on a one-member set.
    pub majority_hold: Option<(bson::Timestamp, i64)>,
    /// Set by the test command `pitrDenyUuidPrivileges`: the user lacks the
    /// `useUUID`/`forceUUID` actions, so `applyOps` operations naming a UUID are refused.
    pub deny_uuid_privileges: bool,
}

impl State {
    /// The majority-committed optime `(ts, term)`.
    pub fn majority(&self) -> (bson::Timestamp, i64) {
        self.majority_hold
            .unwrap_or((self.oplog.last_ts(), self.term))
    }
}

/// Shared by all connections.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub process_id: bson::oid::ObjectId,
    state: Mutex<State>,
    /// Carries the sequence number of the newest oplog entry (wakes awaitData cursors).
    pub oplog_tx: watch::Sender<u64>,
    /// Carries the topology counter (wakes awaitable `hello`).
    pub topology_tx: watch::Sender<i64>,
}

impl Shared {
    pub fn new(config: Config, state: State) -> Shared {
        let (oplog_tx, _) = watch::channel(0);
        let (topology_tx, _) = watch::channel(0);
        Shared {
            config,
            process_id: bson::oid::ObjectId::new(),
            state: Mutex::new(state),
            oplog_tx,
            topology_tx,
        }
    }

    /// Locks the state (a poisoned lock is taken over: the data stays usable).
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells waiters about new oplog entries / a topology change.
    pub fn publish(&self, st: &State) {
        let seq = st.oplog.last_seq();
        self.oplog_tx
            .send_if_modified(|v| std::mem::replace(v, seq) != seq);
        let counter = st.topology_counter;
        self.topology_tx
            .send_if_modified(|v| std::mem::replace(v, counter) != counter);
    }
}

/// A command failure, sent back as `{ok: 0, errmsg, code, codeName}`.
#[derive(Debug, Clone)]
pub struct CmdError {
    pub code: i32,
    pub code_name: &'static str,
    pub msg: String,
}

impl CmdError {
    pub fn new(code: i32, code_name: &'static str, msg: impl Into<String>) -> CmdError {
        CmdError {
            code,
            code_name,
            msg: msg.into(),
        }
    }
    pub fn bad_value(msg: impl Into<String>) -> CmdError {
        CmdError::new(2, "BadValue", msg)
    }
    pub fn type_mismatch(msg: impl Into<String>) -> CmdError {
        CmdError::new(14, "TypeMismatch", msg)
    }
    pub fn ns_not_found(msg: impl Into<String>) -> CmdError {
        CmdError::new(26, "NamespaceNotFound", msg)
    }
    pub fn ns_exists(msg: impl Into<String>) -> CmdError {
        CmdError::new(48, "NamespaceExists", msg)
    }
    pub fn failed_to_parse(msg: impl Into<String>) -> CmdError {
        CmdError::new(9, "FailedToParse", msg)
    }
    pub fn to_doc(&self) -> Document {
        doc! {"ok": 0.0, "errmsg": self.msg.clone(), "code": self.code, "codeName": self.code_name}
    }
}

pub type CmdResult<T> = Result<T, CmdError>;

/// A new random (version 4) UUID as BSON binary subtype 4.
pub fn new_uuid() -> [u8; 16] {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    b
}

pub fn uuid_bson(u: &[u8; 16]) -> Bson {
    Bson::Binary(Binary {
        subtype: BinarySubtype::Uuid,
        bytes: u.to_vec(),
    })
}

/// Reads a field as i64 from any BSON number.
pub fn as_i64(v: &Bson) -> Option<i64> {
    match v {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        Bson::Double(d) if d.fract() == 0.0 && d.is_finite() => Some(*d as i64),
        _ => None,
    }
}

/// Truthiness the way the server reads boolean-ish options.
pub fn truthy(v: Option<&Bson>) -> bool {
    match v {
        None | Some(Bson::Null) => false,
        Some(Bson::Boolean(b)) => *b,
        Some(other) => as_i64(other).map(|i| i != 0).unwrap_or(true),
    }
}
