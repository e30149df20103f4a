//! The oplog tailer over the official driver (feature `driver`).
//!
//! Reads `local.oplog.rs` with a tailable, await-data cursor
//! (`find {ts: {$gte: S}}`, then `getMore` forever) and hands out each
//! server reply as it came ([`OplogBatch`]): the entries are borrowed
//! straight from the reply's bytes, never decoded into documents and
//! re-encoded. Empty replies (the server's await time passed without a
//! write) come out as empty batches, so a caller can act on timers.
//!
//! # Resuming without a hole
//!
//! An archive resumes AFTER its last archived entry `L`: the query is
//! `ts >= L`, and the first entry returned must be `L` itself (and carry the
//! term the archive recorded, when known). Anything else is definite:
//!
//! * the first entry is newer than `L`: the capped oplog dropped `L` (and
//!   maybe more) before the archiver came back: [`TailError::Gap`], carrying
//!   both timestamps, to be recorded as a gap;
//! * same `ts`, other term: the server's history diverged from the archive
//!   (a rollback removed archived entries): [`TailError::Diverged`].
//!
//! `L` is then skipped. Starting points without an archive: the oldest
//! entry ([`StartAt::Oldest`]), a given entry ([`StartAt::At`], which must
//! exist) or the newest entry (`--start-at now`, [`StartAt::Latest`]).
//!
//! # Errors
//!
//! [`TailError::is_transient`]: network failures, elections, shutdowns and
//! killed cursors are transient (reconnect and resume from the durable
//! watermark); authentication and authorization failures, malformed
//! entries, gaps and divergence are definite.

use std::time::Duration;

use bson::{doc, RawDocumentBuf};
use futures::StreamExt;
use mongodb::error::{Error as DriverError, ErrorKind};
use mongodb::options::CursorType;
use mongodb::raw_batch_cursor::{RawBatch, RawBatchCursor};
use mongodb::{Client, Collection};

use crate::entry::{EntryMeta, OplogEntryRef};
use crate::error::DecodeError;
use crate::OplogTs;

/// Where tailing starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// After the last archived entry, which must still be in the oplog.
    After { ts: OplogTs, term: Option<i64> },
    /// At this entry (included), which must be in the oplog.
    At(OplogTs),
    /// The oldest entry in the oplog.
    Oldest,
    /// The newest entry in the oplog (included): `--start-at now`.
    Latest,
}

/// Tailing settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TailOptions {
    /// How long the server waits for new entries before an empty reply.
    pub max_await: Duration,
    /// Entries per reply (`None`: the server's default, up to 16 MiB).
    pub batch_size: Option<u32>,
}

impl Default for TailOptions {
    fn default() -> Self {
        TailOptions {
            max_await: Duration::from_secs(1),
            batch_size: None,
        }
    }
}

/// An error of the tailer.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("the oplog no longer holds {wanted}: its first entry from there is {found} (older entries were dropped from the capped oplog); a gap must be recorded")]
    Gap { wanted: OplogTs, found: OplogTs },
    #[error("the oplog has no entry at or after {wanted}: the server is behind the archive")]
    Missing { wanted: OplogTs },
    #[error("the oplog entry {ts} has term {server:?} on the server but {archived:?} in the archive: the server's history diverged (rollback)")]
    Diverged {
        ts: OplogTs,
        archived: Option<i64>,
        server: Option<i64>,
    },
    #[error("the oplog is empty")]
    Empty,
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("reading the oplog failed: {message}")]
    Driver {
        message: String,
        code: Option<i32>,
        transient: bool,
    },
}

impl TailError {
    pub fn is_transient(&self) -> bool {
        match self {
            TailError::Driver { transient, .. } => *transient,
            // The server may catch up (a lagging node after a failover).
            TailError::Missing { .. } => true,
            _ => false,
        }
    }
}

impl From<DriverError> for TailError {
    fn from(e: DriverError) -> TailError {
        let code = match &*e.kind {
            ErrorKind::Command(c) => Some(c.code),
            _ => None,
        };
        TailError::Driver {
            message: e.to_string(),
            code,
            transient: is_transient(&e),
        }
    }
}

/// Server error codes after which a reconnect may succeed: network, elections,
/// shutdowns, killed or lost cursors, time limits.
const TRANSIENT_CODES: &[i32] = &[
    6,     // HostUnreachable
    7,     // HostNotFound
    43,    // CursorNotFound
    50,    // MaxTimeMSExpired
    89,    // NetworkTimeout
    91,    // ShutdownInProgress
    136,   // CappedPositionLost (the resume check then finds any gap)
    175,   // QueryPlanKilled
    189,   // PrimarySteppedDown
    237,   // CursorKilled
    262,   // ExceededTimeLimit
    9001,  // SocketException
    10107, // NotWritablePrimary
    11600, // InterruptedAtShutdown
    11602, // InterruptedDueToReplStateChange
    13435, // NotPrimaryNoSecondaryOk
    13436, // NotPrimaryOrSecondary
];

/// Classifies a driver error: transient (reconnect) or definite (stop).
pub fn is_transient(e: &DriverError) -> bool {
    if e.contains_label("RetryableError")
        || e.contains_label("ResumableChangeStreamError")
        || e.contains_label("TransientTransactionError")
    {
        return true;
    }
    match &*e.kind {
        ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::DnsResolve { .. }
        | ErrorKind::InvalidResponse { .. } => true,
        ErrorKind::Command(c) => TRANSIENT_CODES.contains(&c.code),
        _ => false,
    }
}

/// The sans-IO check of the first entry a cursor returns; `Ok(true)` when
/// that entry is the already archived one and must be skipped.
pub fn check_first(start: &StartAt, first: &EntryMeta) -> Result<bool, TailError> {
    match *start {
        StartAt::After { ts, term } => {
            if first.ts != ts {
                return Err(TailError::Gap {
                    wanted: ts,
                    found: first.ts,
                });
            }
            if term.is_some() && first.term != term {
                return Err(TailError::Diverged {
                    ts,
                    archived: term,
                    server: first.term,
                });
            }
            Ok(true)
        }
        StartAt::At(ts) if first.ts != ts => Err(TailError::Gap {
            wanted: ts,
            found: first.ts,
        }),
        _ => Ok(false),
    }
}

/// One server reply of oplog entries.
#[derive(Debug)]
pub struct OplogBatch {
    raw: RawBatch,
    skip: usize,
}

impl OplogBatch {
    /// The entries, in oplog order, borrowed from the reply.
    pub fn entries(&self) -> Result<Vec<OplogEntryRef<'_>>, TailError> {
        let arr = self.raw.doc_slices()?;
        let mut out = Vec::new();
        for (i, v) in arr.into_iter().enumerate() {
            let v = v.map_err(|e| DecodeError::new(format!("malformed reply: {e}")))?;
            let d = v
                .as_document()
                .ok_or_else(|| DecodeError::new("an oplog entry in the reply is not a document"))?;
            if i >= self.skip {
                out.push(OplogEntryRef::parse(d)?);
            }
        }
        Ok(out)
    }
}

/// A tailable cursor on `local.oplog.rs`.
pub struct OplogTailer {
    cursor: RawBatchCursor,
    start: StartAt,
    /// The first entry has been checked.
    checked: bool,
}

impl std::fmt::Debug for OplogTailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OplogTailer")
            .field("start", &self.start)
            .field("checked", &self.checked)
            .finish()
    }
}

fn oplog(client: &Client) -> Collection<RawDocumentBuf> {
    client.database("local").collection("oplog.rs")
}

async fn edge_ts(client: &Client, natural: i32) -> Result<Option<OplogTs>, TailError> {
    let d = oplog(client)
        .find_one(doc! {})
        .sort(doc! {"$natural": natural})
        .projection(doc! {"ts": 1})
        .await?;
    match d {
        None => Ok(None),
        Some(d) => match d.get_timestamp("ts") {
            Ok(t) => Ok(Some(OplogTs::from_bson(t))),
            Err(_) => Err(DecodeError::new("the oplog's edge entry has no ts timestamp").into()),
        },
    }
}

/// `ts` of the oldest entry in the oplog (natural order), `None` when empty.
pub async fn oldest_ts(client: &Client) -> Result<Option<OplogTs>, TailError> {
    edge_ts(client, 1).await
}

/// `ts` of the newest entry in the oplog, `None` when empty.
pub async fn newest_ts(client: &Client) -> Result<Option<OplogTs>, TailError> {
    edge_ts(client, -1).await
}

impl OplogTailer {
    /// Opens the cursor; the first entry is checked by the first
    /// [`OplogTailer::next_batch`] that returns one.
    pub async fn open(
        client: &Client,
        start: StartAt,
        opts: TailOptions,
    ) -> Result<OplogTailer, TailError> {
        let start = match start {
            StartAt::Latest => StartAt::At(newest_ts(client).await?.ok_or(TailError::Empty)?),
            s => s,
        };
        let filter = match start {
            StartAt::After { ts, .. } | StartAt::At(ts) => {
                doc! {"ts": {"$gte": ts.to_bson()}}
            }
            StartAt::Oldest | StartAt::Latest => doc! {},
        };
        let coll = oplog(client);
        let mut find = coll
            .find(filter)
            .cursor_type(CursorType::TailableAwait)
            .max_await_time(opts.max_await);
        if let Some(n) = opts.batch_size {
            find = find.batch_size(n);
        }
        let cursor = find.batch().await?;
        Ok(OplogTailer {
            cursor,
            start,
            checked: false,
        })
    }

    /// The next reply (possibly empty). The end of the cursor (the server
    /// closed it) is a transient error: reopen from the durable watermark.
    pub async fn next_batch(&mut self) -> Result<OplogBatch, TailError> {
        let raw = match self.cursor.next().await {
            Some(r) => r?,
            None => {
                if !self.checked {
                    if let StartAt::After { ts, .. } | StartAt::At(ts) = self.start {
                        return Err(TailError::Missing { wanted: ts });
                    }
                }
                return Err(TailError::Driver {
                    message: "the server closed the tailable cursor".into(),
                    code: None,
                    transient: true,
                });
            }
        };
        let mut batch = OplogBatch { raw, skip: 0 };
        if !self.checked {
            let first = batch.entries()?.first().map(|e| *e.meta());
            if let Some(first) = first {
                self.checked = true;
                if check_first(&self.start, &first)? {
                    batch.skip = 1;
                }
            }
        }
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::Timestamp;

    fn meta(secs: u32, inc: u32, t: i64) -> EntryMeta {
        let d = RawDocumentBuf::from_document(
            &doc! {"op": "n", "ns": "", "o": {}, "ts": Timestamp{time: secs, increment: inc}, "t": t},
        )
        .unwrap();
        EntryMeta::parse(&d).unwrap()
    }

    #[test]
    fn resume_requires_the_last_archived_entry() {
        let l = OplogTs { secs: 10, inc: 2 };
        let after = StartAt::After {
            ts: l,
            term: Some(3),
        };
        assert!(check_first(&after, &meta(10, 2, 3)).unwrap());
        let gap = check_first(&after, &meta(10, 5, 3)).unwrap_err();
        assert!(
            matches!(gap, TailError::Gap { wanted, found } if wanted == l && found == OplogTs { secs: 10, inc: 5 })
        );
        assert!(!gap.is_transient());
        let div = check_first(&after, &meta(10, 2, 4)).unwrap_err();
        assert!(matches!(div, TailError::Diverged { .. }) && !div.is_transient());
        let no_term = StartAt::After { ts: l, term: None };
        assert!(check_first(&no_term, &meta(10, 2, 9)).unwrap());
        assert!(!check_first(&StartAt::At(l), &meta(10, 2, 3)).unwrap());
        assert!(check_first(&StartAt::At(l), &meta(11, 0, 3)).is_err());
        assert!(!check_first(&StartAt::Oldest, &meta(1, 1, 1)).unwrap());
    }

    #[test]
    fn driver_errors_are_classified() {
        let io = DriverError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        ));
        assert!(is_transient(&io));
        assert!(TailError::from(io).is_transient());
        let command = |code: i32, name: &str| {
            let ce: mongodb::error::CommandError =
                bson::from_document(doc! {"code": code, "codeName": name, "errmsg": "e"}).unwrap();
            DriverError::from(ErrorKind::Command(ce))
        };
        assert!(is_transient(&command(
            11602,
            "InterruptedDueToReplStateChange"
        )));
        assert!(is_transient(&command(136, "CappedPositionLost")));
        assert!(!is_transient(&command(18, "AuthenticationFailed")));
        assert!(!is_transient(&command(13, "Unauthorized")));
        assert!(!TailError::from(command(13, "Unauthorized")).is_transient());
        assert!(!is_transient(&DriverError::custom("x")));
        assert!(TailError::Missing {
            wanted: OplogTs { secs: 1, inc: 1 }
        }
        .is_transient());
    }
}
