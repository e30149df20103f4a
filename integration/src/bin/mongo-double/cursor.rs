//! Cursors: a buffered result (ordinary `find`/`aggregate`/list commands) or a tailable
//! position in the oplog. A tailable cursor remembers the sequence number of the next
//! entry to look at; when the size cap has dropped entries it had not seen, `getMore`
//! fails with `CappedPositionLost` (136), as the server does.

use std::collections::{HashMap, VecDeque};

use bson::{Document, RawArrayBuf, RawDocumentBuf};

use crate::matcher;
use crate::oplog::Oplog;
use crate::state::{CmdError, CmdResult};

/// A reply batch stops growing past this many bytes (the server's 16 MB rule).
pub const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug)]
pub enum Source {
    Buffered(VecDeque<RawDocumentBuf>),
    Oplog {
        next_seq: u64,
        filter: Document,
        await_data: bool,
    },
}

#[derive(Debug)]
pub struct Cursor {
    pub ns: String,
    pub source: Source,
    /// Documents still allowed by `limit` (None: no limit).
    pub remaining: Option<u64>,
}

#[derive(Debug, Default)]
pub struct Cursors {
    map: HashMap<i64, Cursor>,
    next_id: i64,
}

impl Cursors {
    pub fn add(&mut self, c: Cursor) -> i64 {
        self.next_id += 1;
        // Ids look like a server's: large and positive.
        let id = 0x1000_0000 + self.next_id * 7919;
        self.map.insert(id, c);
        id
    }
    pub fn get_mut(&mut self, id: i64) -> Option<&mut Cursor> {
        self.map.get_mut(&id)
    }
    pub fn remove(&mut self, id: i64) -> Option<Cursor> {
        self.map.remove(&id)
    }
}

impl Cursor {
    pub fn is_await_data(&self) -> bool {
        matches!(self.source, Source::Oplog { await_data: true, .. })
    }

    /// Takes up to `n` documents; returns them and whether the cursor is exhausted.
    pub fn next_batch(&mut self, oplog: &Oplog, n: Option<usize>) -> CmdResult<(Vec<RawDocumentBuf>, bool)> {
        let mut want = n.unwrap_or(usize::MAX).max(1);
        if let Some(r) = self.remaining {
            want = want.min(usize::try_from(r).unwrap_or(usize::MAX));
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let exhausted = match &mut self.source {
            Source::Buffered(q) => {
                while out.len() < want && bytes < MAX_BATCH_BYTES {
                    let Some(d) = q.pop_front() else { break };
                    bytes += d.as_bytes().len();
                    out.push(d);
                }
                q.is_empty()
            }
            Source::Oplog { next_seq, filter, .. } => {
                let entries = oplog.entries();
                let first = entries.front().map(|e| e.seq).unwrap_or(*next_seq);
                if *next_seq < first {
                    return Err(CmdError::new(
                        136,
                        "CappedPositionLost",
                        "CollectionScan died due to position in capped collection being deleted.",
                    ));
                }
                let start = usize::try_from(*next_seq - first).unwrap_or(usize::MAX);
                for e in entries.iter().skip(start) {
                    if out.len() >= want || bytes >= MAX_BATCH_BYTES {
                        break;
                    }
                    *next_seq = e.seq + 1;
                    let doc = e.raw.to_document().map_err(|err| {
                        CmdError::new(1, "InternalError", format!("oplog entry is not valid BSON: {err}"))
                    })?;
                    if matcher::matches(&doc, filter)? {
                        bytes += e.raw.as_bytes().len();
                        out.push(e.raw.clone());
                    }
                }
                false
            }
        };
        if let Some(r) = &mut self.remaining {
            *r = r.saturating_sub(out.len() as u64);
        }
        let done = exhausted || self.remaining == Some(0);
        Ok((out, done))
    }
}

/// `{cursor: {firstBatch|nextBatch: [...], id, ns}, ok: 1}`.
pub fn reply(id: i64, ns: &str, first: bool, batch: Vec<RawDocumentBuf>) -> RawDocumentBuf {
    let mut arr = RawArrayBuf::new();
    for d in batch {
        arr.push(d);
    }
    let mut cursor = RawDocumentBuf::new();
    cursor.append(if first { "firstBatch" } else { "nextBatch" }, arr);
    cursor.append("id", id);
    cursor.append("ns", ns);
    let mut out = RawDocumentBuf::new();
    out.append("cursor", cursor);
    out.append("ok", 1.0);
    out
}

/// A buffered cursor reply for documents computed at once (list commands).
pub fn docs_to_raw(docs: Vec<Document>) -> CmdResult<VecDeque<RawDocumentBuf>> {
    docs.iter()
        .map(|d| {
            RawDocumentBuf::from_document(d)
                .map_err(|e| CmdError::new(1, "InternalError", format!("cannot encode a document: {e}")))
        })
        .collect()
}
