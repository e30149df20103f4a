//! Replays the archived oplog onto the target, after the base backup is
//! loaded, up to the target exactly.
//!
//! The planned segments are fetched in order, [`READ_AHEAD`] of them in
//! flight while the current one is applied, each verified
//! (`pitr_segment::decode`: checksums, and the header's start matching the
//! key) and split into entries (`oplog.bson` framing). Entries go through
//! the proto crate's [`ApplyPlanner`], which turns them into `applyOps`
//! requests (many CRUD entries per round trip, commands alone and in log
//! order, each transaction in one request; see `pitr_mongodb::apply`):
//!
//! * entries at or before the backup's `start` are in the backup; only the
//!   unfinished parts of transactions (`partialTxn` / `prepare` entries)
//!   among them are fed, so that a transaction committing after `start`
//!   is applied whole;
//! * a `ts` target: the planner stops after the target `ts` (inclusive);
//! * a time target: the first entry whose `wall` is after the target ends
//!   the replay (a transaction counts at its commit entry);
//! * `--latest`: every archived entry.
//!
//! The backup's documents were read between `start` and `end`, so entries
//! up to `end` may find their effect already there. Inserts and updates
//! are idempotent under `applyOps` (upserts by `_id`); for requests that
//! end at or before `end`, the errors such a replay can meet — a
//! collection or index that already exists or is already gone, a duplicate
//! key — are tolerated: a batch failing with one of them is re-sent one
//! operation at a time, tolerating them per operation. After `end` every
//! error stops the restore, naming the `ts` of the request.

use std::collections::VecDeque;

use anyhow::anyhow;
use bson::raw::RawBsonRef;
use bson::RawDocumentBuf;
use mongodb::error::ErrorKind;
use mongodb::Client;
use pitr_mongodb::{
    ApplyLimits, ApplyOptions, ApplyPlanner, ApplyRequest, ApplyStats, OplogEntryRef, OplogTs,
    Pushed,
};
use serde::Serialize;

use crate::archive::keys::SegmentKey;
use crate::archive::segment_read::read_segment;
use crate::restore::mongodb::plan::{ts_text, MongoPlan, MongoTarget};
use crate::storage::Repo;

/// Segments fetched ahead of the one being applied.
pub const READ_AHEAD: usize = 3;

/// Error codes a replay over the backup's own window may meet.
const IDEMPOTENT_CODES: &[i32] = &[
    11000, // DuplicateKey
    26,    // NamespaceNotFound
    48,    // NamespaceExists
    27,    // IndexNotFound
    85,    // IndexOptionsConflict
    86,    // IndexKeySpecsConflict
    68,    // IndexAlreadyExists
];

/// How to apply.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyConfig {
    /// Keep `ui` in operations (the load kept the source's UUIDs).
    pub preserve_uuid: bool,
    pub limits: ApplyLimits,
}

/// What the replay did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ApplyReport {
    /// Entries after the backup's `start` read from the archive, up to the stop.
    pub entries_read: u64,
    /// Entries covered by the requests sent.
    pub entries_applied: u64,
    /// `applyOps` / `createIndexes` round trips.
    pub round_trips: u64,
    pub operations: u64,
    pub max_operations_per_round_trip: u64,
    pub transactions_applied: u64,
    pub transactions_dropped: u64,
    /// Operations re-sent alone after an idempotency error in the backup's window.
    pub operations_retried_alone: u64,
    pub segments: usize,
    /// `secs:inc` of the last entry applied.
    pub last_ts_applied: Option<String>,
    #[serde(skip)]
    pub last_applied: Option<OplogTs>,
    /// Whether the replay reached the target.
    pub reached_target: bool,
    pub stopped: String,
}

/// Fetches and verifies one segment; its payload.
async fn fetch(repo: Repo, key: String) -> anyhow::Result<Vec<u8>> {
    let sk = SegmentKey::parse(&key)?;
    Ok(read_segment(&repo, &sk).await?.1)
}

fn command_code(e: &mongodb::error::Error) -> Option<i32> {
    match &*e.kind {
        ErrorKind::Command(c) => Some(c.code),
        _ => None,
    }
}

/// The server's message of a command error (the whole error otherwise).
fn command_message(e: &mongodb::error::Error) -> String {
    match &*e.kind {
        ErrorKind::Command(c) => format!("{} ({})", c.message, c.code_name),
        _ => e.to_string(),
    }
}

/// Sends requests, tolerating idempotency errors inside the backup's window.
struct Sender<'a> {
    client: &'a Client,
    window_end: OplogTs,
    rep: ApplyReport,
}

impl Sender<'_> {
    async fn send(&mut self, r: ApplyRequest) -> anyhow::Result<()> {
        let in_window = r.last_ts <= self.window_end;
        let db = self.client.database(&r.db);
        match db.run_raw_command(r.command.clone()).await {
            Ok(_) => {}
            Err(e)
                if in_window && command_code(&e).is_some_and(|c| IDEMPOTENT_CODES.contains(&c)) =>
            {
                self.one_by_one(&r).await?;
            }
            Err(e) if command_code(&e) == Some(48) => {
                return Err(anyhow!(
                    "the target already holds a collection the archived oplog creates at ts {} ({}); restore into a replica set without it",
                    ts_text(r.last_ts),
                    command_message(&e)
                ))
            }
            Err(e) => {
                return Err(anyhow!(
                    "applying the oplog up to ts {} on the target failed: {}",
                    ts_text(r.last_ts),
                    command_message(&e)
                ))
            }
        }
        self.rep.last_applied = Some(r.last_ts);
        Ok(())
    }

    /// Re-sends the operations of an `applyOps` request one at a time.
    async fn one_by_one(&mut self, r: &ApplyRequest) -> anyhow::Result<()> {
        let ops = match r.command.get("applyOps") {
            Ok(Some(RawBsonRef::Array(a))) => a,
            // A createIndexes (or other single command): already there.
            _ => return Ok(()),
        };
        let admin = self.client.database("admin");
        for op in ops {
            let op = match op {
                Ok(RawBsonRef::Document(d)) => d,
                _ => {
                    return Err(anyhow!(
                        "malformed applyOps request at ts {}",
                        ts_text(r.last_ts)
                    ))
                }
            };
            let mut arr = bson::RawArrayBuf::new();
            arr.push(op.to_raw_document_buf());
            let mut cmd = RawDocumentBuf::new();
            cmd.append("applyOps", arr);
            cmd.append("bypassDocumentValidation", true);
            self.rep.operations_retried_alone += 1;
            match admin.run_raw_command(cmd).await {
                Ok(_) => {}
                Err(e) if command_code(&e).is_some_and(|c| IDEMPOTENT_CODES.contains(&c)) => {}
                Err(e) => {
                    return Err(anyhow!(
                        "applying the oplog up to ts {} on the target failed: {e}",
                        ts_text(r.last_ts)
                    ))
                }
            }
        }
        Ok(())
    }
}

/// Replays the planned segments onto `client`'s server.
pub async fn apply_oplog(
    repo: &Repo,
    plan: &MongoPlan,
    target: &MongoTarget,
    client: &Client,
    cfg: ApplyConfig,
) -> anyhow::Result<ApplyReport> {
    let stop_ts = plan.stop_ts.unwrap_or(OplogTs {
        secs: u32::MAX,
        inc: u32::MAX,
    });
    let stop_time = match target {
        MongoTarget::Time(t) => Some(*t),
        _ => None,
    };
    let mut opts = ApplyOptions::new(stop_ts);
    opts.limits = cfg.limits;
    opts.preserve_uuid = cfg.preserve_uuid;
    let mut planner = ApplyPlanner::new(opts);
    let mut tx = Sender {
        client,
        window_end: plan.end_ts,
        rep: ApplyReport::default(),
    };
    let mut keys = plan.segments.iter();
    let mut inflight: VecDeque<tokio::task::JoinHandle<anyhow::Result<Vec<u8>>>> = VecDeque::new();
    let mut stopped: Option<String> = None;
    let mut entries_read = 0u64;
    'segments: loop {
        while inflight.len() < READ_AHEAD {
            match keys.next() {
                Some(k) => inflight.push_back(tokio::spawn(fetch(repo.clone(), k.clone()))),
                None => break,
            }
        }
        let Some(next) = inflight.pop_front() else {
            break;
        };
        let payload = next
            .await
            .map_err(|e| anyhow!("segment fetch failed: {e}"))??;
        tx.rep.segments += 1;
        for item in pitr_mongodb::oplog_file::entries(&payload) {
            let (_, e): (u64, OplogEntryRef<'_>) =
                item.map_err(|e| anyhow!("archived oplog is damaged: {e}"))?;
            let m = e.meta();
            if e.ts() <= plan.start_ts {
                // In the backup, unless part of a transaction still open at `start`.
                if m.is_txn() && (m.partial_txn || m.prepare) {
                    planner.push(&e)?;
                }
                continue;
            }
            if let Some(t) = stop_time {
                if m.time_micros() > t {
                    stopped = Some(format!(
                        "at the first entry after the target time (ts {})",
                        ts_text(e.ts())
                    ));
                    break 'segments;
                }
            }
            if planner.push(&e)? == Pushed::PastTarget {
                stopped = Some(format!(
                    "at the first entry after the target (ts {})",
                    ts_text(e.ts())
                ));
                break 'segments;
            }
            entries_read += 1;
            while let Some(r) = planner.pop() {
                tx.send(r).await?;
            }
        }
    }
    for h in inflight {
        h.abort();
    }
    planner.finish();
    while let Some(r) = planner.pop() {
        tx.send(r).await?;
    }
    let s: ApplyStats = *planner.stats();
    let mut rep = tx.rep;
    rep.entries_read = entries_read;
    rep.entries_applied = s.applied_entries;
    rep.round_trips = s.requests;
    rep.operations = s.ops;
    rep.max_operations_per_round_trip = s.max_ops_per_request;
    rep.transactions_applied = s.txns_applied;
    rep.transactions_dropped = s.txns_dropped;
    rep.last_ts_applied = rep.last_applied.map(ts_text);
    // Every planned segment read (the plan covers the target), or stopped at it.
    rep.reached_target = stopped.is_some() || rep.segments == plan.segments.len();
    rep.stopped = stopped.unwrap_or_else(|| match target {
        MongoTarget::Latest => "at the end of the archive".into(),
        _ => "at the end of the planned segments (the target is their last entry)".into(),
    });
    Ok(rep)
}
