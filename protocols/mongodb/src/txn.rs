//! Sans-IO transaction-boundary tracker: where the oplog may be cut.
//!
//! A segment may only end where no multi-entry unit of the oplog is open, so
//! that a restore never sees half of one. The units that span several
//! entries:
//!
//! ```text
//! large transaction     applyOps{partialTxn} ... applyOps{partialTxn} applyOps            (commit = last)
//! prepared transaction  applyOps{[partialTxn...] prepare} ... commitTransaction | abortTransaction
//! linked batches        applyOps multiOpType:1 (prevOpTime null), applyOps multiOpType:1 (prevOpTime = previous), ...
//! ```
//!
//! Entries of one transaction carry the same `lsid` and `txnNumber`, and
//! each one's `prevOpTime.ts` is the `ts` of the previous entry of the same
//! transaction (null, `Timestamp(0, 0)`, for the first). A transaction that
//! fits one entry (a 4.0-style `applyOps` without `partialTxn`) is a unit of
//! its own. Entries of other sessions may sit between the entries of a
//! prepared transaction; the entries of an unprepared large transaction are
//! written together at commit.
//!
//! Linked batches (MongoDB 8.0, a retryable `insertMany` split over several
//! `applyOps` with `multiOpType: 1`) carry no end marker: the chain ends at
//! the first entry that does not continue it. After such an entry the
//! boundary is [`Boundary::PendingChain`] and only the NEXT entry decides
//! ([`TxnTracker::splits_before`]).
//!
//! A prepared transaction keeps the log uncuttable until its commit or
//! abort; a transaction whose first entries were never fed (the stream
//! started inside it) is tracked from the first entry seen.

use std::collections::HashMap;

use crate::entry::{CommandKind, EntryMeta, OplogEntryRef};
use crate::error::DecodeError;
use crate::OplogTs;

/// Whether the log may be cut after the last entry fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boundary {
    /// No multi-entry unit is open.
    Safe,
    /// A transaction is open.
    InTransaction,
    /// The last entry was a linked batch; the next entry decides.
    PendingChain,
}

/// What one entry is, for boundaries and record counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A unit of its own (CRUD, command, no-op, one-entry transaction).
    Standalone,
    /// A transaction's entry that does not end it.
    TxnPart,
    /// The entry committing a transaction; `first_ts` is the transaction's
    /// first entry seen (itself for a one-entry transaction).
    TxnCommit { first_ts: OplogTs },
    /// A prepared transaction's abort.
    TxnAbort,
    /// One batch of linked batches.
    LinkedBatch,
}

impl Role {
    /// The entry completes a unit (a record of the time index).
    pub fn ends_unit(self) -> bool {
        !matches!(self, Role::TxnPart)
    }
}

/// Identity of a transaction: the raw bytes of `lsid` and the `txnNumber`.
type TxnId = (Vec<u8>, i64);

#[derive(Debug, Clone, PartialEq, Eq)]
struct OpenTxn {
    first_ts: OplogTs,
    last_ts: OplogTs,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ChainTail {
    id: TxnId,
    last_ts: OplogTs,
}

/// Feeds on entries in oplog order and tells where a cut is safe.
#[derive(Debug, Clone, Default)]
pub struct TxnTracker {
    open: HashMap<TxnId, OpenTxn>,
    chain: Option<ChainTail>,
}

fn txn_id(e: &OplogEntryRef<'_>) -> Option<TxnId> {
    Some((e.lsid()?.as_bytes().to_vec(), e.txn_number()?))
}

impl TxnTracker {
    pub fn new() -> TxnTracker {
        TxnTracker::default()
    }

    /// The boundary after the last entry fed.
    pub fn boundary(&self) -> Boundary {
        if !self.open.is_empty() {
            Boundary::InTransaction
        } else if self.chain.is_some() {
            Boundary::PendingChain
        } else {
            Boundary::Safe
        }
    }

    /// True when a cut after the last entry fed is certainly safe.
    pub fn is_cut_safe(&self) -> bool {
        self.boundary() == Boundary::Safe
    }

    /// Number of open transactions.
    pub fn open_transactions(&self) -> usize {
        self.open.len()
    }

    /// Would a cut right before `next` (not yet fed) split a unit?
    pub fn splits_before(&self, next: &OplogEntryRef<'_>) -> bool {
        if !self.open.is_empty() {
            return true;
        }
        match &self.chain {
            None => false,
            Some(tail) => continues(tail, next),
        }
    }

    /// Processes the next entry.
    pub fn feed(&mut self, e: &OplogEntryRef<'_>) -> Result<Role, DecodeError> {
        let m: &EntryMeta = e.meta();
        if m.is_linked_batch() {
            // A batch that does not continue the pending chain starts a new
            // one (its predecessor, if any, was before the stream started).
            let id = txn_id(e).unwrap_or_default();
            self.chain = Some(ChainTail {
                id,
                last_ts: m.ts,
            });
            return Ok(Role::LinkedBatch);
        }
        self.chain = None;
        if !m.is_txn() {
            return Ok(Role::Standalone);
        }
        let Some(id) = txn_id(e) else {
            return Ok(Role::Standalone);
        };
        let prev = m.prev_op_time.filter(|p| !p.is_null());
        if let (Some(open), Some(prev)) = (self.open.get(&id), prev) {
            if open.last_ts != prev.ts {
                return Err(DecodeError::new(format!(
                    "transaction entry says its previous entry is {} but the previous entry of the transaction is {}",
                    prev.ts, open.last_ts
                ))
                .at_ts(m.ts));
            }
        }
        match m.command {
            Some(CommandKind::ApplyOps) if m.partial_txn || m.prepare => {
                let o = self.open.entry(id).or_insert(OpenTxn {
                    first_ts: m.ts,
                    last_ts: m.ts,
                });
                o.last_ts = m.ts;
                Ok(Role::TxnPart)
            }
            Some(CommandKind::ApplyOps | CommandKind::CommitTransaction) => {
                let first_ts = self.open.remove(&id).map_or(m.ts, |o| o.first_ts);
                Ok(Role::TxnCommit { first_ts })
            }
            Some(CommandKind::AbortTransaction) => {
                self.open.remove(&id);
                Ok(Role::TxnAbort)
            }
            _ => Ok(Role::Standalone),
        }
    }
}

/// `next` is the following batch of the chain ending at `tail`.
fn continues(tail: &ChainTail, next: &OplogEntryRef<'_>) -> bool {
    let m = next.meta();
    m.is_linked_batch()
        && m.prev_op_time.is_some_and(|p| p.ts == tail.last_ts)
        && txn_id(next).is_some_and(|id| id == tail.id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, Document, RawDocumentBuf, Timestamp};

    fn ts(i: u32) -> Timestamp {
        Timestamp {
            time: 100,
            increment: i,
        }
    }

    fn raw(d: Document) -> RawDocumentBuf {
        RawDocumentBuf::from_document(&d).unwrap()
    }

    fn txn(i: u32, prev: u32, txn: i64, o: Document) -> RawDocumentBuf {
        raw(doc! {
            "lsid": {"id": 7}, "txnNumber": txn, "op": "c", "ns": "admin.$cmd", "o": o,
            "ts": ts(i), "t": 1i64, "prevOpTime": {"ts": ts(prev), "t": 1i64},
        })
    }

    fn ins(i: u32) -> RawDocumentBuf {
        raw(doc! {"op": "i", "ns": "a.b", "o": {"_id": i}, "ts": ts(i), "t": 1i64})
    }

    fn feed(t: &mut TxnTracker, d: &RawDocumentBuf) -> Result<Role, DecodeError> {
        t.feed(&OplogEntryRef::parse(d).unwrap())
    }

    #[test]
    fn large_transaction_is_open_until_its_commit() {
        let mut t = TxnTracker::new();
        let ops = doc! {"applyOps": [{"op": "i", "ns": "a.b", "o": {"_id": 1}}], "partialTxn": true};
        assert_eq!(feed(&mut t, &txn(1, 0, 1, ops.clone())).unwrap(), Role::TxnPart);
        assert_eq!(t.boundary(), Boundary::InTransaction);
        assert!(t.splits_before(&OplogEntryRef::parse(&ins(9)).unwrap()));
        assert_eq!(feed(&mut t, &txn(2, 1, 1, ops)).unwrap(), Role::TxnPart);
        let last = doc! {"applyOps": [{"op": "i", "ns": "a.b", "o": {"_id": 2}}]};
        assert_eq!(
            feed(&mut t, &txn(3, 2, 1, last)).unwrap(),
            Role::TxnCommit {
                first_ts: OplogTs { secs: 100, inc: 1 }
            }
        );
        assert!(t.is_cut_safe());
    }

    #[test]
    fn prepared_transaction_waits_for_commit_or_abort() {
        let mut t = TxnTracker::new();
        let p = doc! {"applyOps": [{"op": "i", "ns": "a.b", "o": {"_id": 1}}], "prepare": true};
        assert_eq!(feed(&mut t, &txn(1, 0, 1, p.clone())).unwrap(), Role::TxnPart);
        assert_eq!(feed(&mut t, &ins(2)).unwrap(), Role::Standalone);
        assert!(!t.is_cut_safe());
        let c = doc! {"commitTransaction": 1, "commitTimestamp": ts(3)};
        assert!(matches!(feed(&mut t, &txn(3, 1, 1, c)).unwrap(), Role::TxnCommit { .. }));
        assert!(t.is_cut_safe());
        assert_eq!(feed(&mut t, &txn(4, 0, 2, p)).unwrap(), Role::TxnPart);
        assert_eq!(
            feed(&mut t, &txn(5, 4, 2, doc! {"abortTransaction": 1})).unwrap(),
            Role::TxnAbort
        );
        assert!(t.is_cut_safe());
    }

    #[test]
    fn broken_transaction_chain_is_an_error() {
        let mut t = TxnTracker::new();
        let ops = doc! {"applyOps": [], "partialTxn": true};
        feed(&mut t, &txn(1, 0, 1, ops.clone())).unwrap();
        let e = feed(&mut t, &txn(3, 2, 1, ops)).unwrap_err();
        assert_eq!(e.at.ts, Some(OplogTs { secs: 100, inc: 3 }));
    }

    #[test]
    fn linked_batches_end_at_the_first_non_continuation() {
        let mut t = TxnTracker::new();
        let b = |i: u32, prev: u32| {
            let mut d = txn(
                i,
                prev,
                9,
                doc! {"applyOps": [{"op": "i", "ns": "a.b", "o": {"_id": i}}]},
            )
            .to_document()
            .unwrap();
            d.insert("multiOpType", 1);
            raw(d)
        };
        assert_eq!(feed(&mut t, &b(1, 0)).unwrap(), Role::LinkedBatch);
        assert_eq!(t.boundary(), Boundary::PendingChain);
        let second = b(2, 1);
        assert!(t.splits_before(&OplogEntryRef::parse(&second).unwrap()));
        feed(&mut t, &second).unwrap();
        assert!(!t.splits_before(&OplogEntryRef::parse(&ins(3)).unwrap()));
        assert!(!t.splits_before(&OplogEntryRef::parse(&b(3, 0)).unwrap()));
        feed(&mut t, &ins(3)).unwrap();
        assert!(t.is_cut_safe());
    }
}
