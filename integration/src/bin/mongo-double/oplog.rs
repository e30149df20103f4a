//! `local.oplog.rs`: the entries kept as raw BSON (seeded entries are served byte for byte),
//! timestamps, the size cap, and the builders that give each entry the field order a
//! 7.0 server writes:
//!
//! - CRUD without a session: `op, ns, ui, o, o2?, ts, t, v, wall`
//! - insert / delete as a retryable write: `lsid, txnNumber, op, ns, ui, o, o2?, stmtId,
//!   ts, t, v, wall, prevOpTime`
//! - update as a retryable write: `lsid, txnNumber, op, ns, ui, o, o2, ts, t, v, wall,
//!   stmtId, prevOpTime`
//! - command: `op, ns, ui?, o, o2?, ts, t, v, wall`; no-op: `op, ns: "", o, ts, t, v, wall`
//! - transaction: `lsid, txnNumber, op: "c", ns: "admin.$cmd", o: {applyOps, partialTxn? |
//!   count?}, ts, t, v, wall, prevOpTime`
//!
//! `t` and `v` are Int64, `wall` a DateTime, `ui` a UUID (binary subtype 4).

use std::collections::VecDeque;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use bson::{doc, Bson, DateTime, Document, RawDocumentBuf, Timestamp};

use crate::state::uuid_bson;

/// An oplog position: `{ts, t}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpTime {
    pub ts: Timestamp,
    pub t: i64,
}

impl OpTime {
    /// `{ts: Timestamp(0, 0), t: -1}`, the "no previous entry" optime.
    pub const NULL: OpTime = OpTime {
        ts: Timestamp {
            time: 0,
            increment: 0,
        },
        t: -1,
    };
    pub fn to_doc(self) -> Document {
        doc! {"ts": self.ts, "t": self.t}
    }
}

/// One stored entry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Position in the append order (survives the cap, unlike indexes).
    pub seq: u64,
    pub raw: RawDocumentBuf,
}

#[derive(Debug)]
pub struct Oplog {
    entries: VecDeque<Entry>,
    bytes: u64,
    cap: Option<u64>,
    next_seq: u64,
    last_ts: Timestamp,
    /// When the last entry was written (for the periodic no-op).
    pub last_write: Instant,
    /// The collection UUID `listCollections` shows for `local.oplog.rs`.
    pub uuid: [u8; 16],
}

/// The identity of a retryable write or transaction, for the entries it writes.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub lsid: Document,
    pub txn_number: i64,
}

/// What one CRUD write did (logged as its own entry, or inside a transaction's applyOps).
#[derive(Debug, Clone)]
pub struct Op {
    pub op: &'static str,
    pub ns: String,
    pub ui: [u8; 16],
    pub o: Document,
    pub o2: Option<Document>,
}

fn now_secs() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
        .unwrap_or(0)
}

impl Oplog {
    pub fn new(cap: Option<u64>) -> Oplog {
        Oplog {
            entries: VecDeque::new(),
            bytes: 0,
            cap,
            next_seq: 1,
            last_ts: Timestamp {
                time: 0,
                increment: 0,
            },
            last_write: Instant::now(),
            uuid: crate::state::new_uuid(),
        }
    }

    pub fn cap(&self) -> Option<u64> {
        self.cap
    }

    /// Loads recorded entries (BSON documents back to back), kept byte for byte.
    pub fn seed(&mut self, bytes: &[u8]) -> Result<usize> {
        let mut at = 0;
        let mut n = 0;
        while at < bytes.len() {
            let len = bytes
                .get(at..at + 4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .context("truncated document length")?;
            let len = usize::try_from(len).unwrap_or(0);
            if len < 5 || at + len > bytes.len() {
                bail!("document {n} at byte {at} has a bad length {len}");
            }
            let raw = RawDocumentBuf::from_bytes(bytes[at..at + len].to_vec())
                .with_context(|| format!("document {n} at byte {at} is not BSON"))?;
            let ts = match raw.get("ts") {
                Ok(Some(bson::RawBsonRef::Timestamp(ts))) => ts,
                _ => bail!("document {n} at byte {at} has no Timestamp `ts`"),
            };
            if (ts.time, ts.increment) <= (self.last_ts.time, self.last_ts.increment) && n > 0 {
                bail!("document {n} at byte {at}: `ts` does not increase");
            }
            self.push_raw(ts, raw);
            at += len;
            n += 1;
        }
        Ok(n)
    }

    fn push_raw(&mut self, ts: Timestamp, raw: RawDocumentBuf) {
        self.bytes += raw.as_bytes().len() as u64;
        self.entries.push_back(Entry {
            seq: self.next_seq,
            raw,
        });
        self.next_seq += 1;
        self.last_ts = ts;
        // The cap drops the oldest entries but always keeps the newest one.
        if let Some(cap) = self.cap {
            while self.bytes > cap && self.entries.len() > 1 {
                if let Some(e) = self.entries.pop_front() {
                    self.bytes -= e.raw.as_bytes().len() as u64;
                }
            }
        }
    }

    /// Removes every entry after `ts` (a rollback, as the server's
    /// `rollback_impl.cpp` truncates the oplog after the common point); the
    /// newest timestamp stays, so later entries follow the removed ones, as a
    /// new primary's do. Returns how many were removed. The documents are not
    /// touched: the double models the oplog side of a rollback only.
    pub fn rollback_after(&mut self, ts: Timestamp) -> usize {
        let mut n = 0;
        while let Some(e) = self.entries.back() {
            let newer = e
                .raw
                .get_timestamp("ts")
                .is_ok_and(|t| (t.time, t.increment) > (ts.time, ts.increment));
            if !newer {
                break;
            }
            if let Some(e) = self.entries.pop_back() {
                self.bytes -= e.raw.as_bytes().len() as u64;
                n += 1;
            }
        }
        n
    }

    /// The next timestamp: the wall-clock second, counting up within a second, always
    /// after the newest entry.
    pub fn next_ts(&mut self) -> Timestamp {
        let now = now_secs();
        if now > self.last_ts.time {
            Timestamp {
                time: now,
                increment: 1,
            }
        } else {
            Timestamp {
                time: self.last_ts.time,
                increment: self.last_ts.increment + 1,
            }
        }
    }

    /// Appends an entry built by `build(ts, wall)`; returns its optime.
    pub fn append(
        &mut self,
        term: i64,
        build: impl FnOnce(Timestamp, DateTime) -> Document,
    ) -> OpTime {
        let ts = self.next_ts();
        let doc = build(ts, DateTime::now());
        match RawDocumentBuf::from_document(&doc) {
            Ok(raw) => self.push_raw(ts, raw),
            Err(e) => eprintln!("mongo-double: cannot encode an oplog entry: {e}"),
        }
        self.last_write = Instant::now();
        OpTime { ts, t: term }
    }

    pub fn entries(&self) -> &VecDeque<Entry> {
        &self.entries
    }
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }
    pub fn last_ts(&self) -> Timestamp {
        self.last_ts
    }
    pub fn size_bytes(&self) -> u64 {
        self.bytes
    }
}

/// `ts, t, v, wall` in the order every modern entry carries them.
fn push_times(d: &mut Document, ts: Timestamp, t: i64, wall: DateTime) {
    d.insert("ts", ts);
    d.insert("t", t);
    d.insert("v", 2i64);
    d.insert("wall", wall);
}

/// A CRUD entry (`i`, `u`, `d`), as its own write or as a retryable write's statement.
pub fn crud_entry(
    op: &Op,
    retry: Option<(&SessionInfo, i32, OpTime)>,
    ts: Timestamp,
    t: i64,
    wall: DateTime,
) -> Document {
    let mut d = Document::new();
    if let Some((s, _, _)) = retry {
        d.insert("lsid", s.lsid.clone());
        d.insert("txnNumber", s.txn_number);
    }
    d.insert("op", op.op);
    d.insert("ns", op.ns.clone());
    d.insert("ui", uuid_bson(&op.ui));
    d.insert("o", op.o.clone());
    if let Some(o2) = &op.o2 {
        d.insert("o2", o2.clone());
    }
    let stmt_late = op.op == "u";
    if let Some((_, stmt, _)) = retry {
        if !stmt_late {
            d.insert("stmtId", stmt);
        }
    }
    push_times(&mut d, ts, t, wall);
    if let Some((_, stmt, prev)) = retry {
        if stmt_late {
            d.insert("stmtId", stmt);
        }
        d.insert("prevOpTime", prev.to_doc());
    }
    d
}

/// A command entry (`op: "c"`) on `<db>.$cmd`.
pub fn command_entry(
    db: &str,
    ui: Option<[u8; 16]>,
    o: Document,
    o2: Option<Document>,
    ts: Timestamp,
    t: i64,
    wall: DateTime,
) -> Document {
    let mut d = doc! {"op": "c", "ns": format!("{db}.$cmd")};
    if let Some(ui) = ui {
        d.insert("ui", uuid_bson(&ui));
    }
    d.insert("o", o);
    if let Some(o2) = o2 {
        d.insert("o2", o2);
    }
    push_times(&mut d, ts, t, wall);
    d
}

/// A no-op entry (`op: "n"`), e.g. `{msg: "periodic noop"}`.
pub fn noop_entry(o: Document, ts: Timestamp, t: i64, wall: DateTime) -> Document {
    let mut d = doc! {"op": "n", "ns": "", "o": o};
    push_times(&mut d, ts, t, wall);
    d
}

/// One operation inside a transaction's `applyOps` array.
pub fn txn_op(op: &Op) -> Document {
    let mut d = doc! {"op": op.op, "ns": op.ns.clone(), "ui": uuid_bson(&op.ui), "o": op.o.clone()};
    if let Some(o2) = &op.o2 {
        d.insert("o2", o2.clone());
    }
    d
}

/// A transaction's `applyOps` entry; `tail` is `partialTxn: true` or `count: n` or nothing.
pub fn txn_entry(
    s: &SessionInfo,
    ops: Vec<Bson>,
    tail: Option<(&str, Bson)>,
    prev: OpTime,
    ts: Timestamp,
    t: i64,
    wall: DateTime,
) -> Document {
    let mut o = doc! {"applyOps": ops};
    if let Some((k, v)) = tail {
        o.insert(k, v);
    }
    let mut d = doc! {
        "lsid": s.lsid.clone(),
        "txnNumber": s.txn_number,
        "op": "c",
        "ns": "admin.$cmd",
        "o": o,
    };
    push_times(&mut d, ts, t, wall);
    d.insert("prevOpTime", prev.to_doc());
    d
}
