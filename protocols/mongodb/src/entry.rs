//! One oplog entry, as the exact BSON bytes the server wrote.
//!
//! An entry of `local.oplog.rs` is a BSON document. The fields pitr reads
//! (MongoDB 3.6 – 8.x; older servers lack `t`, `wall` and `ui`):
//!
//! | field        | type        | meaning                                                        |
//! |--------------|-------------|----------------------------------------------------------------|
//! | `ts`         | Timestamp   | position: `(seconds, increment)`, unique, increasing            |
//! | `t`          | int64       | replica-set term (the segment epoch); absent before protocol 1 |
//! | `wall`       | date (ms)   | wall-clock time of the write on the primary                     |
//! | `op`         | string      | `i` insert, `u` update, `d` delete, `c` command, `n` no-op      |
//! | `ns`         | string      | `db.collection`, `db.$cmd` for commands                         |
//! | `ui`         | binary (4)  | collection UUID                                                 |
//! | `o`, `o2`    | document    | the operation; for `u` the update and `o2` the `_id`            |
//! | `lsid`, `txnNumber`, `prevOpTime` | | session, transaction number and the previous entry of the same transaction / retryable write |
//! | `multiOpType`| int         | `1`: an `applyOps` whose operations apply separately (batched retryable inserts) |
//!
//! A transaction is written as `op: c, ns: admin.$cmd, o: {applyOps: [...]}`
//! with `lsid`/`txnNumber`; `o.partialTxn: true` marks an entry that is not
//! the last of its transaction, `o.prepare: true` a prepared transaction's
//! entry, completed later by `o: {commitTransaction: 1, commitTimestamp}` or
//! `o: {abortTransaction: 1}`.
//!
//! [`OplogEntryRef`] borrows the bytes, [`OplogEntry`] owns them; both
//! decode the header fields once ([`EntryMeta`]) and read the others on
//! demand. The bytes are never re-encoded: [`OplogEntry::bytes`] is exactly
//! what the server sent, and what a segment stores.

use bson::raw::{RawBinaryRef, RawBsonRef, RawDocument, RawDocumentBuf};

use crate::error::DecodeError;
use crate::OplogTs;

/// The `op` of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// `i`
    Insert,
    /// `u`
    Update,
    /// `d`
    Delete,
    /// `c`
    Command,
    /// `n`
    Noop,
    /// Any other value (newer servers' internal bookkeeping ops such as
    /// `ci`, `cu`, `cd`, `km`); see [`OplogEntryRef::op_str`].
    Other,
}

impl OpKind {
    pub fn from_op(op: &str) -> OpKind {
        match op {
            "i" => OpKind::Insert,
            "u" => OpKind::Update,
            "d" => OpKind::Delete,
            "c" => OpKind::Command,
            "n" => OpKind::Noop,
            _ => OpKind::Other,
        }
    }

    /// Insert, update or delete.
    pub fn is_crud(self) -> bool {
        matches!(self, OpKind::Insert | OpKind::Update | OpKind::Delete)
    }
}

/// What a command entry (`op: c`) is, from the first field of its `o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandKind {
    /// `applyOps` (transactions, batched inserts, user `applyOps`).
    ApplyOps,
    /// `commitTransaction` (a prepared transaction's commit).
    CommitTransaction,
    /// `abortTransaction` (a prepared transaction's abort).
    AbortTransaction,
    /// Any other command (`create`, `drop`, `createIndexes`, ...).
    Other,
}

/// An oplog time: `{ts, t}` as in `prevOpTime`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OpTime {
    pub ts: OplogTs,
    /// `-1` in the "no previous entry" value `{ts: Timestamp(0, 0), t: -1}`.
    pub term: Option<i64>,
}

impl OpTime {
    /// The null `prevOpTime` (`ts` 0,0) that starts a chain.
    pub fn is_null(&self) -> bool {
        self.ts == OplogTs { secs: 0, inc: 0 }
    }
}

/// The header fields of an entry, decoded once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryMeta {
    pub ts: OplogTs,
    /// `t`: the replica-set term.
    pub term: Option<i64>,
    /// `wall`: milliseconds since the Unix epoch.
    pub wall_ms: Option<i64>,
    pub op: OpKind,
    /// For `op: c`: what the command is.
    pub command: Option<CommandKind>,
    /// `o.partialTxn: true`.
    pub partial_txn: bool,
    /// `o.prepare: true`.
    pub prepare: bool,
    /// An `lsid` is present.
    pub has_lsid: bool,
    pub txn_number: Option<i64>,
    pub prev_op_time: Option<OpTime>,
    pub multi_op_type: Option<i64>,
}

impl EntryMeta {
    /// Decodes the header fields of one entry; `ts` and `op` are required.
    pub fn parse(doc: &RawDocument) -> Result<EntryMeta, DecodeError> {
        let mut ts = None;
        let mut term = None;
        let mut wall_ms = None;
        let mut op = None;
        let mut o = None;
        let mut has_lsid = false;
        let mut txn_number = None;
        let mut prev_op_time = None;
        let mut multi_op_type = None;
        for el in doc.iter() {
            let (key, value) = el.map_err(|e| DecodeError::new(format!("malformed BSON: {e}")))?;
            let bad = |want: &str| {
                DecodeError::new(format!(
                    "field {key:?} is a {:?}, expected {want}",
                    value.element_type()
                ))
            };
            match key {
                "ts" => match value {
                    RawBsonRef::Timestamp(t) => ts = Some(OplogTs::from_bson(t)),
                    _ => return Err(bad("a timestamp")),
                },
                "t" => term = Some(int(value).ok_or_else(|| bad("an integer"))?),
                "wall" => match value {
                    RawBsonRef::DateTime(d) => wall_ms = Some(d.timestamp_millis()),
                    _ => return Err(bad("a date")),
                },
                "op" => match value {
                    RawBsonRef::String(s) => op = Some(OpKind::from_op(s)),
                    _ => return Err(bad("a string")),
                },
                "ns" if !matches!(value, RawBsonRef::String(_)) => return Err(bad("a string")),
                "ui" if !matches!(value, RawBsonRef::Binary(_)) => return Err(bad("a binary")),
                "o2" if !matches!(value, RawBsonRef::Document(_)) => {
                    return Err(bad("a document"))
                }
                "o" => match value {
                    RawBsonRef::Document(d) => o = Some(d),
                    _ => return Err(bad("a document")),
                },
                "lsid" => match value {
                    RawBsonRef::Document(_) => has_lsid = true,
                    _ => return Err(bad("a document")),
                },
                "txnNumber" => txn_number = Some(int(value).ok_or_else(|| bad("an integer"))?),
                "multiOpType" => {
                    multi_op_type = Some(int(value).ok_or_else(|| bad("an integer"))?)
                }
                "prevOpTime" => match value {
                    RawBsonRef::Document(d) => prev_op_time = Some(op_time(d)?),
                    _ => return Err(bad("a document")),
                },
                _ => {}
            }
        }
        let ts = ts.ok_or_else(|| DecodeError::new("no \"ts\" timestamp"))?;
        let op = op.ok_or_else(|| DecodeError::new("no \"op\" field").at_ts(ts))?;
        let mut meta = EntryMeta {
            ts,
            term,
            wall_ms,
            op,
            command: None,
            partial_txn: false,
            prepare: false,
            has_lsid,
            txn_number,
            prev_op_time,
            multi_op_type,
        };
        if op == OpKind::Command {
            let o = o.ok_or_else(|| DecodeError::new("command entry without \"o\"").at_ts(ts))?;
            meta.read_command(o).map_err(|e| e.at_ts(ts))?;
        }
        Ok(meta)
    }

    fn read_command(&mut self, o: &RawDocument) -> Result<(), DecodeError> {
        for (i, el) in o.iter().enumerate() {
            let (key, value) =
                el.map_err(|e| DecodeError::new(format!("malformed BSON in \"o\": {e}")))?;
            if i == 0 {
                self.command = Some(match key {
                    "applyOps" => CommandKind::ApplyOps,
                    "commitTransaction" => CommandKind::CommitTransaction,
                    "abortTransaction" => CommandKind::AbortTransaction,
                    _ => CommandKind::Other,
                });
            }
            match (key, value) {
                ("partialTxn", RawBsonRef::Boolean(b)) => self.partial_txn = b,
                ("prepare", RawBsonRef::Boolean(b)) => self.prepare = b,
                ("applyOps", v) if !matches!(v, RawBsonRef::Array(_)) => {
                    return Err(DecodeError::new("\"o.applyOps\" is not an array"))
                }
                _ => {}
            }
        }
        if self.command.is_none() {
            return Err(DecodeError::new("command entry with an empty \"o\""));
        }
        Ok(())
    }

    /// An `applyOps` command entry.
    pub fn is_apply_ops(&self) -> bool {
        self.command == Some(CommandKind::ApplyOps)
    }

    /// Part of a multi-document transaction (an `applyOps`,
    /// `commitTransaction` or `abortTransaction` carrying `lsid` and
    /// `txnNumber`). Retryable CRUD writes also carry a session but are not
    /// transactions; `multiOpType: 1` batches are reported by
    /// [`EntryMeta::is_linked_batch`] instead.
    pub fn is_txn(&self) -> bool {
        self.has_lsid
            && self.txn_number.is_some()
            && matches!(
                self.command,
                Some(
                    CommandKind::ApplyOps
                        | CommandKind::CommitTransaction
                        | CommandKind::AbortTransaction
                )
            )
            && !self.is_linked_batch()
    }

    /// An `applyOps` with `multiOpType: 1`: one batch of a retryable
    /// multi-document insert, linked to the previous batch of the same
    /// statement by `prevOpTime`; each applies on its own.
    pub fn is_linked_batch(&self) -> bool {
        self.is_apply_ops() && self.multi_op_type == Some(1)
    }

    /// This entry commits a transaction: the last `applyOps` of an
    /// unprepared transaction (no `partialTxn`, no `prepare`) or a
    /// `commitTransaction`.
    pub fn commits_txn(&self) -> bool {
        self.is_txn()
            && match self.command {
                Some(CommandKind::CommitTransaction) => true,
                Some(CommandKind::ApplyOps) => !self.partial_txn && !self.prepare,
                _ => false,
            }
    }

    /// This entry aborts a prepared transaction.
    pub fn aborts_txn(&self) -> bool {
        self.is_txn() && self.command == Some(CommandKind::AbortTransaction)
    }

    /// The commit time of this entry in µs: `wall`, else `ts` seconds.
    pub fn time_micros(&self) -> pitr_segment::TimestampMicros {
        match self.wall_ms {
            Some(ms) => pitr_segment::TimestampMicros(ms.saturating_mul(1000)),
            None => self.ts.as_micros(),
        }
    }
}

fn int(v: RawBsonRef<'_>) -> Option<i64> {
    match v {
        RawBsonRef::Int64(i) => Some(i),
        RawBsonRef::Int32(i) => Some(i64::from(i)),
        _ => None,
    }
}

fn op_time(d: &RawDocument) -> Result<OpTime, DecodeError> {
    let ts = match d.get("ts") {
        Ok(Some(RawBsonRef::Timestamp(t))) => OplogTs::from_bson(t),
        _ => return Err(DecodeError::new("\"prevOpTime.ts\" is not a timestamp")),
    };
    let term = match d.get("t") {
        Ok(Some(v)) => Some(int(v).ok_or_else(|| DecodeError::new("\"prevOpTime.t\" is not an integer"))?),
        Ok(None) => None,
        Err(e) => return Err(DecodeError::new(format!("malformed \"prevOpTime\": {e}"))),
    };
    Ok(OpTime { ts, term })
}

/// Checks every element of `doc`, nested documents and arrays included,
/// so that later reads cannot fail.
pub fn validate_deep(doc: &RawDocument) -> Result<(), DecodeError> {
    fn walk(doc: &RawDocument, depth: usize) -> Result<(), String> {
        if depth > 200 {
            return Err("documents nested more than 200 deep".into());
        }
        for el in doc.iter() {
            let (_, v) = el.map_err(|e| e.to_string())?;
            walk_value(v, depth)?;
        }
        Ok(())
    }
    fn walk_value(v: RawBsonRef<'_>, depth: usize) -> Result<(), String> {
        match v {
            RawBsonRef::Document(d) => walk(d, depth + 1),
            RawBsonRef::Array(a) => {
                for item in a {
                    walk_value(item.map_err(|e| e.to_string())?, depth + 1)?;
                }
                Ok(())
            }
            RawBsonRef::JavaScriptCodeWithScope(c) => walk(c.scope, depth + 1),
            _ => Ok(()),
        }
    }
    walk(doc, 0).map_err(|e| DecodeError::new(format!("malformed BSON: {e}")))
}

/// An oplog entry borrowing its raw bytes.
#[derive(Debug, Clone, Copy)]
pub struct OplogEntryRef<'a> {
    raw: &'a RawDocument,
    meta: EntryMeta,
}

/// An oplog entry owning its raw bytes.
#[derive(Debug, Clone)]
pub struct OplogEntry {
    raw: RawDocumentBuf,
    meta: EntryMeta,
}

impl<'a> OplogEntryRef<'a> {
    /// Decodes the header of one entry (a complete BSON document).
    pub fn parse(raw: &'a RawDocument) -> Result<OplogEntryRef<'a>, DecodeError> {
        Ok(OplogEntryRef {
            raw,
            meta: EntryMeta::parse(raw)?,
        })
    }

    /// Decodes an entry from exactly one document's bytes.
    pub fn from_bytes(bytes: &'a [u8]) -> Result<OplogEntryRef<'a>, DecodeError> {
        let raw = RawDocument::from_bytes(bytes)
            .map_err(|e| DecodeError::new(format!("not a BSON document: {e}")))?;
        OplogEntryRef::parse(raw)
    }

    /// The document, borrowed for `'a`.
    pub fn doc(&self) -> &'a RawDocument {
        self.raw
    }

    /// The exact bytes, borrowed for `'a`.
    pub fn bytes(&self) -> &'a [u8] {
        self.raw.as_bytes()
    }

    pub fn to_owned(&self) -> OplogEntry {
        OplogEntry {
            raw: self.raw.to_raw_document_buf(),
            meta: self.meta,
        }
    }
}

impl OplogEntry {
    /// Decodes the header of one entry, taking ownership of its bytes.
    pub fn parse(raw: RawDocumentBuf) -> Result<OplogEntry, DecodeError> {
        let meta = EntryMeta::parse(&raw)?;
        Ok(OplogEntry { raw, meta })
    }

    /// Decodes an entry from exactly one document's bytes.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<OplogEntry, DecodeError> {
        let raw = RawDocumentBuf::from_bytes(bytes)
            .map_err(|e| DecodeError::new(format!("not a BSON document: {e}")))?;
        OplogEntry::parse(raw)
    }

    /// A borrowed view of this entry.
    pub fn view(&self) -> OplogEntryRef<'_> {
        OplogEntryRef {
            raw: &self.raw,
            meta: self.meta,
        }
    }

    pub fn into_raw(self) -> RawDocumentBuf {
        self.raw
    }
}

/// Accessors shared by [`OplogEntry`] and [`OplogEntryRef`].
macro_rules! accessors {
    ($t:ty) => {
        impl $t {
            fn raw_doc(&self) -> &RawDocument {
                &self.raw
            }

            /// The decoded header fields.
            pub fn meta(&self) -> &EntryMeta {
                &self.meta
            }

            /// The exact bytes of the entry.
            pub fn raw_bytes(&self) -> &[u8] {
                self.raw_doc().as_bytes()
            }

            /// Length in bytes.
            pub fn len(&self) -> usize {
                self.raw_doc().as_bytes().len()
            }

            /// Never true: a BSON document is at least 5 bytes.
            pub fn is_empty(&self) -> bool {
                false
            }

            pub fn ts(&self) -> OplogTs {
                self.meta.ts
            }

            /// `t`, the replica-set term.
            pub fn term(&self) -> Option<i64> {
                self.meta.term
            }

            /// `wall` in milliseconds since the Unix epoch.
            pub fn wall_ms(&self) -> Option<i64> {
                self.meta.wall_ms
            }

            pub fn op(&self) -> OpKind {
                self.meta.op
            }

            /// The `op` string as written.
            pub fn op_str(&self) -> &str {
                self.raw_doc().get_str("op").unwrap_or("")
            }

            pub fn ns(&self) -> Option<&str> {
                self.raw_doc().get_str("ns").ok()
            }

            /// `ui`: the collection UUID.
            pub fn ui(&self) -> Option<RawBinaryRef<'_>> {
                self.raw_doc().get_binary("ui").ok()
            }

            pub fn o(&self) -> Option<&RawDocument> {
                self.raw_doc().get_document("o").ok()
            }

            pub fn o2(&self) -> Option<&RawDocument> {
                self.raw_doc().get_document("o2").ok()
            }

            pub fn lsid(&self) -> Option<&RawDocument> {
                self.raw_doc().get_document("lsid").ok()
            }

            pub fn txn_number(&self) -> Option<i64> {
                self.meta.txn_number
            }

            pub fn prev_op_time(&self) -> Option<OpTime> {
                self.meta.prev_op_time
            }

            /// `o.partialTxn`.
            pub fn partial_txn(&self) -> bool {
                self.meta.partial_txn
            }

            /// `o.prepare`.
            pub fn prepare(&self) -> bool {
                self.meta.prepare
            }

            pub fn is_apply_ops(&self) -> bool {
                self.meta.is_apply_ops()
            }

            pub fn commits_txn(&self) -> bool {
                self.meta.commits_txn()
            }

            /// The command's name (first field of `o`) for `op: c`.
            pub fn command_name(&self) -> Option<&str> {
                if self.meta.op != OpKind::Command {
                    return None;
                }
                self.o()?.iter().next()?.ok().map(|(k, _)| k)
            }

            /// The operations of an `applyOps` entry, in order.
            pub fn apply_ops(&self) -> Result<Vec<&RawDocument>, DecodeError> {
                let ts = self.meta.ts;
                let arr = self
                    .o()
                    .and_then(|o| o.get_array("applyOps").ok())
                    .ok_or_else(|| DecodeError::new("not an applyOps entry").at_ts(ts))?;
                arr.into_iter()
                    .map(|v| match v {
                        Ok(RawBsonRef::Document(d)) => Ok(d),
                        _ => Err(DecodeError::new("an applyOps operation is not a document")
                            .at_ts(ts)),
                    })
                    .collect()
            }
        }
    };
}

accessors!(OplogEntry);
accessors!(OplogEntryRef<'_>);

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, Bson, DateTime, Timestamp};

    fn raw(d: bson::Document) -> RawDocumentBuf {
        RawDocumentBuf::from_document(&d).unwrap()
    }

    #[test]
    fn reads_header_fields() {
        let r = raw(doc! {
            "op": "i", "ns": "db.c", "ui": Bson::Binary(bson::Binary{subtype: bson::spec::BinarySubtype::Uuid, bytes: vec![1;16]}),
            "o": {"_id": 1}, "ts": Timestamp{time: 10, increment: 2}, "t": 3i64,
            "v": 2i64, "wall": DateTime::from_millis(10_500),
        });
        let e = OplogEntry::parse(r.clone()).unwrap();
        assert_eq!(e.ts(), OplogTs { secs: 10, inc: 2 });
        assert_eq!((e.term(), e.wall_ms(), e.op()), (Some(3), Some(10_500), OpKind::Insert));
        assert_eq!(e.ns(), Some("db.c"));
        assert_eq!(e.ui().map(|u| u.bytes.len()), Some(16));
        assert_eq!(e.raw_bytes(), r.as_bytes());
        assert_eq!(e.meta().time_micros(), pitr_segment::TimestampMicros(10_500_000));
        assert!(!e.commits_txn() && !e.is_apply_ops());
        assert_eq!(e.command_name(), None);
    }

    #[test]
    fn transaction_flags() {
        let partial = raw(doc! {
            "lsid": {"id": 1}, "txnNumber": 4i64, "op": "c", "ns": "admin.$cmd",
            "o": {"applyOps": [{"op": "i", "ns": "a.b", "o": {"_id": 1}}], "partialTxn": true},
            "ts": Timestamp{time: 1, increment: 1}, "prevOpTime": {"ts": Timestamp{time:0, increment:0}, "t": -1i64},
        });
        let m = EntryMeta::parse(&partial).unwrap();
        assert!(m.is_txn() && m.partial_txn && !m.commits_txn());
        assert!(m.prev_op_time.unwrap().is_null());
        let e = OplogEntryRef::parse(&partial).unwrap();
        assert_eq!(e.apply_ops().unwrap().len(), 1);
        assert_eq!(e.command_name(), Some("applyOps"));
        let commit = raw(doc! {
            "lsid": {"id": 1}, "txnNumber": 4i64, "op": "c", "ns": "admin.$cmd",
            "o": {"commitTransaction": 1, "commitTimestamp": Timestamp{time: 2, increment: 0}},
            "ts": Timestamp{time: 3, increment: 1},
        });
        assert!(EntryMeta::parse(&commit).unwrap().commits_txn());
        let prepare = raw(doc! {
            "lsid": {"id": 1}, "txnNumber": 5i64, "op": "c", "ns": "admin.$cmd",
            "o": {"applyOps": [], "prepare": true}, "ts": Timestamp{time: 3, increment: 2},
        });
        let p = EntryMeta::parse(&prepare).unwrap();
        assert!(p.prepare && p.is_txn() && !p.commits_txn());
        // A retryable insert carries a session but is not a transaction.
        let retryable = raw(doc! {
            "lsid": {"id": 1}, "txnNumber": 6i64, "op": "i", "ns": "a.b", "o": {"_id": 2},
            "ts": Timestamp{time: 3, increment: 3},
        });
        assert!(!EntryMeta::parse(&retryable).unwrap().is_txn());
    }

    #[test]
    fn malformed_entries_are_definite_errors() {
        let no_ts = raw(doc! {"op": "n", "ns": "", "o": {}});
        let e = EntryMeta::parse(&no_ts).unwrap_err();
        assert!(e.reason.contains("ts") && !e.is_transient());
        let bad_op = raw(doc! {"op": 1, "ts": Timestamp{time: 1, increment: 1}});
        assert!(EntryMeta::parse(&bad_op).is_err());
        let bad_cmd = raw(doc! {"op": "c", "ts": Timestamp{time: 1, increment: 1}, "o": {"applyOps": 1}});
        let e = EntryMeta::parse(&bad_cmd).unwrap_err();
        assert_eq!(e.at.ts, Some(OplogTs { secs: 1, inc: 1 }));
        assert!(OplogEntryRef::from_bytes(&[5, 0, 0]).is_err());
        assert!(OplogEntryRef::from_bytes(&[6, 0, 0, 0, 0, 0]).is_err());
    }
}
