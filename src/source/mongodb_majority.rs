//! Majority-committed archiving: the MongoDB archiver archives an oplog
//! entry only once the replica set's majority has it, so the archive never
//! holds a write a rollback can undo.
//!
//! The tailing cursor reads `local.oplog.rs` with read concern `local` (the
//! `local` database serves no other), so it also sees entries only the
//! member it reads from has. [`MajorityGate`] holds those back: entries go
//! to the segment builder in oplog order as long as their optime is at or
//! below the majority-committed optime the server reports
//! (`hello.lastWrite.majorityOpTime`, polled while entries wait; WAL-G's
//! MongoDB archiver does the same). Held entries are bounded
//! ([`GATE_LIMIT`]): above it the archiver stops reading the cursor and the
//! server keeps the oplog, as with slow storage. When the connection ends
//! the held entries are dropped and read again on resume, from the server's
//! oplog as it then is: an entry a rollback removed is never archived.
//!
//! A server that reports no majority optime (mongo:
//! `src/mongo/db/repl/replication_coordinator_impl.cpp`,
//! `fillIsMasterForReplSet` sets it on replica-set members only) is archived
//! without the gate, with a warning.

use std::collections::VecDeque;

use anyhow::Context as _;
use bson::{doc, Bson, RawDocumentBuf};
use mongodb::Client;
use pitr_mongodb::{OplogEntryRef, OplogTs};

/// Bytes of entries held back at most before the cursor is no longer read.
pub const GATE_LIMIT: usize = 32 << 20;

/// A majority-committed optime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MajorityOpTime {
    pub ts: OplogTs,
    pub term: i64,
    /// `majorityWriteDate`, ms since the epoch, when the server reports it.
    pub wall_ms: Option<i64>,
}

/// One `hello`: the majority-committed optime, `None` when the server
/// reports none (not a replica-set member, or not initiated yet).
pub async fn majority_optime(client: &Client) -> anyhow::Result<Option<MajorityOpTime>> {
    let hello = client
        .database("admin")
        .run_command(doc! {"hello": 1})
        .await
        .context("asking the server for its majority-committed optime (hello)")?;
    let last = hello.get_document("lastWrite").ok();
    let optime = last.and_then(|l| l.get_document("majorityOpTime").ok());
    let ts = optime
        .and_then(|o| o.get_timestamp("ts").ok())
        .map(OplogTs::from_bson)
        .filter(|ts| *ts != OplogTs { secs: 0, inc: 0 });
    let term = optime
        .and_then(|o| o.get("t"))
        .and_then(|t| match t {
            Bson::Int64(t) => Some(*t),
            Bson::Int32(t) => Some(i64::from(*t)),
            _ => None,
        })
        .unwrap_or(0);
    let wall_ms = last
        .and_then(|l| l.get_datetime("majorityWriteDate").ok())
        .map(|d| d.timestamp_millis());
    Ok(ts.map(|ts| MajorityOpTime { ts, term, wall_ms }))
}

/// Entries read but not yet majority-committed; see the module docs.
#[derive(Debug, Default)]
pub struct MajorityGate {
    held: VecDeque<(OplogTs, RawDocumentBuf)>,
    bytes: usize,
    /// The newest majority-committed `ts` known.
    majority: Option<OplogTs>,
    /// The server reports no majority optime: nothing is held.
    ungated: bool,
}

impl MajorityGate {
    /// Takes an entry read from the cursor.
    pub fn push(&mut self, doc: RawDocumentBuf) -> anyhow::Result<()> {
        let ts = OplogEntryRef::parse(&doc)
            .map_err(|e| anyhow::anyhow!("an oplog entry cannot be archived: {e}"))?
            .ts();
        self.bytes += doc.as_bytes().len();
        self.held.push_back((ts, doc));
        Ok(())
    }

    /// The next entry that may be archived now, in oplog order.
    pub fn pop_committed(&mut self) -> Option<RawDocumentBuf> {
        let (ts, _) = self.held.front()?;
        if !self.ungated && self.majority.is_none_or(|m| *ts > m) {
            return None;
        }
        let (_, doc) = self.held.pop_front()?;
        self.bytes -= doc.as_bytes().len();
        Some(doc)
    }

    /// True when entries wait for the majority.
    pub fn waiting(&self) -> bool {
        !self.held.is_empty()
    }

    /// True while the cursor may be read (held entries below [`GATE_LIMIT`]).
    pub fn has_room(&self) -> bool {
        self.bytes < GATE_LIMIT
    }

    /// Asks the server for its majority-committed optime.
    pub async fn refresh(&mut self, client: &Client) -> anyhow::Result<()> {
        match majority_optime(client).await? {
            Some(m) => self.majority = Some(m.ts).max(self.majority),
            None if !self.ungated => {
                tracing::warn!(
                    "the server reports no majority-committed optime (hello.lastWrite.majorityOpTime): \
                     archiving without waiting for the majority, so a rollback could undo archived writes"
                );
                self.ungated = true;
            }
            None => {}
        }
        Ok(())
    }

    /// The newest majority-committed `ts` known.
    pub fn majority(&self) -> Option<OplogTs> {
        self.majority
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(secs: u32, inc: u32) -> RawDocumentBuf {
        let d = doc! {
            "ts": bson::Timestamp { time: secs, increment: inc },
            "t": 1i64, "v": 2, "op": "n", "ns": "", "wall": bson::DateTime::from_millis(0),
            "o": {"msg": "x"},
        };
        RawDocumentBuf::from_document(&d).unwrap()
    }

    #[test]
    fn entries_pass_only_up_to_the_majority_in_order() {
        let mut g = MajorityGate::default();
        g.push(entry(10, 1)).unwrap();
        g.push(entry(10, 2)).unwrap();
        g.push(entry(11, 1)).unwrap();
        assert!(g.waiting() && g.has_room());
        assert!(g.pop_committed().is_none(), "no majority known yet");
        g.majority = Some(OplogTs { secs: 10, inc: 2 });
        assert!(g.pop_committed().is_some());
        assert!(g.pop_committed().is_some());
        assert!(g.pop_committed().is_none(), "11:1 is above the majority");
        assert!(g.waiting());
        g.ungated = true;
        assert!(g.pop_committed().is_some());
        assert!(!g.waiting());
        assert_eq!(g.bytes, 0);
    }
}
