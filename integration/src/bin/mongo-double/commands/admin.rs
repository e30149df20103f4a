//! Handshake and replica-set commands: `hello` / `isMaster`, `buildInfo`,
//! `getParameter`, `serverStatus`, `hostInfo`, `replSetGetStatus`, `replSetStepDown`, and
//! the no-op entries a primary writes (`new primary`, `periodic noop`); and the
//! double's own test commands (not server commands): `pitrHoldMajority` holds
//! the majority-committed optime where it is, as lagging secondaries would;
//! `pitrRollback: <Timestamp>` removes the oplog entries after it, as a rollback
//! does.

use bson::oid::ObjectId;
use bson::{doc, Bson, DateTime, Document, Timestamp};

use super::Conn;
use crate::oplog::noop_entry;
use crate::state::{Shared, State, SET_NAME};

/// The version the double answers as.
pub const VERSION: &str = "7.0.14";
pub const MAX_WIRE_VERSION: i32 = 21;

/// `electionId`: `7fffffff` then the term as a big-endian i64, as the server builds it.
fn election_id(term: i64) -> ObjectId {
    let mut b = [0u8; 12];
    b[..4].copy_from_slice(&[0x7f, 0xff, 0xff, 0xff]);
    b[4..].copy_from_slice(&term.to_be_bytes());
    ObjectId::from_bytes(b)
}

fn ts_date(ts: Timestamp) -> DateTime {
    DateTime::from_millis(i64::from(ts.time) * 1000)
}

pub fn hello(
    shared: &Shared,
    st: &mut State,
    conn: &mut Conn,
    name: &str,
    body: &Document,
) -> Document {
    let host = shared.config.host.clone();
    let last = st.oplog.last_ts();
    let optime = doc! {"ts": last, "t": st.term};
    let (maj_ts, maj_t) = st.majority();
    let majority = doc! {"ts": maj_ts, "t": maj_t};
    let mut d = doc! {
        "topologyVersion": {"processId": shared.process_id, "counter": st.topology_counter},
        "hosts": [host.clone()],
        "setName": SET_NAME,
        "setVersion": 1,
    };
    if name == "hello" {
        d.insert("isWritablePrimary", true);
    } else {
        d.insert("ismaster", true);
    }
    d.extend(doc! {
        "secondary": false,
        "primary": host.clone(),
        "me": host,
        "electionId": election_id(st.term),
        "lastWrite": {
            "opTime": optime.clone(),
            "lastWriteDate": ts_date(last),
            "majorityOpTime": majority,
            "majorityWriteDate": ts_date(maj_ts),
        },
        "maxBsonObjectSize": 16_777_216,
        "maxMessageSizeBytes": 48_000_000,
        "maxWriteBatchSize": 100_000,
        "localTime": DateTime::now(),
        "logicalSessionTimeoutMinutes": 30,
        "connectionId": conn.id,
        "minWireVersion": 0,
        "maxWireVersion": MAX_WIRE_VERSION,
        "readOnly": false,
    });
    if crate::state::truthy(body.get("helloOk")) {
        d.insert("helloOk", true);
    }
    if let (Ok(mechs_for), Some(user)) = (body.get_str("saslSupportedMechs"), &shared.config.user) {
        if mechs_for.split_once('.').map(|(_, u)| u) == Some(user.name.as_str()) {
            d.insert("saslSupportedMechs", vec![Bson::from("SCRAM-SHA-256")]);
        }
    }
    if let Ok(spec) = body.get_document("speculativeAuthenticate") {
        if let Ok(r) = super::auth::sasl_start(shared, conn, spec) {
            let mut r = r;
            r.remove("ok");
            d.insert("speculativeAuthenticate", r);
        }
    }
    d.insert("ok", 1.0);
    d
}

pub fn build_info() -> Document {
    doc! {
        "version": VERSION,
        "gitVersion": "0000000000000000000000000000000000000000",
        "versionArray": [7, 0, 14, 0],
        "bits": 64,
        "debug": false,
        "maxBsonObjectSize": 16_777_216,
        "storageEngines": ["wiredTiger"],
        "ok": 1.0,
    }
}

pub fn get_parameter(body: &Document) -> Document {
    let mut d = Document::new();
    if body.contains_key("featureCompatibilityVersion") {
        d.insert("featureCompatibilityVersion", doc! {"version": "7.0"});
    }
    d.insert("ok", 1.0);
    d
}

pub fn server_status(shared: &Shared, st: &State) -> Document {
    doc! {
        "host": shared.config.host.clone(),
        "version": VERSION,
        "process": "mongod",
        "localTime": DateTime::now(),
        "repl": {"setName": SET_NAME, "isWritablePrimary": true, "primary": shared.config.host.clone()},
        "oplog": {"sizeBytes": st.oplog.size_bytes() as i64, "entries": st.oplog.entries().len() as i64},
        "ok": 1.0,
    }
}

/// `{pitrHoldMajority: true}` holds the majority-committed optime at the
/// newest entry; `false` lets it follow the oplog again.
pub fn hold_majority(st: &mut State, body: &Document) -> Document {
    st.majority_hold = if crate::state::truthy(body.get("pitrHoldMajority")) {
        Some((st.oplog.last_ts(), st.term))
    } else {
        None
    };
    let (ts, t) = st.majority();
    doc! {"majorityOpTime": {"ts": ts, "t": t}, "ok": 1.0}
}

/// `{pitrRollback: Timestamp(..)}`: removes the oplog entries after it.
pub fn rollback(st: &mut State, body: &Document) -> Document {
    match body.get_timestamp("pitrRollback") {
        Ok(ts) => {
            let removed = st.oplog.rollback_after(ts);
            doc! {"removed": removed as i64, "ok": 1.0}
        }
        Err(_) => doc! {"ok": 0.0, "errmsg": "pitrRollback takes a Timestamp", "code": 2},
    }
}

pub fn host_info() -> Document {
    doc! {"system": {"hostname": "127.0.0.1", "numCores": 1}, "os": {"type": "Linux"}, "extra": {}, "ok": 1.0}
}

pub fn repl_set_get_status(shared: &Shared, st: &State) -> Document {
    let last = st.oplog.last_ts();
    let optime = doc! {"ts": last, "t": st.term};
    doc! {
        "set": SET_NAME,
        "date": DateTime::now(),
        "myState": 1,
        "term": st.term,
        "heartbeatIntervalMillis": 2000i64,
        "optimes": {
            "lastCommittedOpTime": {"ts": st.majority().0, "t": st.majority().1},
            "appliedOpTime": optime.clone(),
            "durableOpTime": optime.clone(),
        },
        "members": [{
            "_id": 0,
            "name": shared.config.host.clone(),
            "health": 1.0,
            "state": 1,
            "stateStr": "PRIMARY",
            "optime": optime.clone(),
            "optimeDate": ts_date(last),
            "optimeDurable": optime,
            "optimeDurableDate": ts_date(last),
            "electionId": election_id(st.term),
            "configVersion": 1,
            "self": true,
        }],
        "ok": 1.0,
    }
}

/// Steps down and, being the only member, is elected again at once: a new term, the
/// `new primary` no-op, a new topology version.
pub fn step_down(st: &mut State) -> Document {
    st.term += 1;
    st.topology_counter += 1;
    write_noop(st, "new primary");
    doc! {"ok": 1.0}
}

/// Appends `{op: "n", o: {msg}}`.
pub fn write_noop(st: &mut State, msg: &str) {
    let term = st.term;
    st.oplog.append(term, |ts, wall| {
        noop_entry(doc! {"msg": msg}, ts, term, wall)
    });
}
