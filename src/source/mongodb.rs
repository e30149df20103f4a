//! MongoDB log source: `pitr archive mongodb://user:pw@h1,h2/?replicaSet=rs0`.
//!
//! Tails `local.oplog.rs` of a replica set (see [`super::mongodb_tail`]) and
//! stores every entry's exact BSON bytes through the `pitr_mongodb`
//! [`Segmenter`]: a segment is cut on size or age only where no transaction
//! (or linked batch) is open; its epoch is the replica-set term `t` of its
//! entries, so an election starts a new epoch whose first segment starts
//! where the previous term's last one ended; its commit times come from the
//! entries' `wall`. Positions are oplog timestamps (`OplogTs::to_log_pos`);
//! a segment `[start, end)` holds every entry of the oplog with `ts` in that
//! range (the chaining rule of `pitr_mongodb::segmenter`). On an idle
//! database the primary's periodic no-op (`op: n`) entries keep the
//! archive's end moving.
//!
//! Start: an empty repository is archived from the oldest entry the oplog
//! holds (`--start-at now|SECS:INC` overrides). Otherwise from the
//! repository's tail: the end `E` of the contiguous chain of segments and
//! gap records over all terms; the last archived entry is
//! `OplogTs::last_before(E)`, and the oplog must still hold it. When it does
//! not (the capped oplog rolled over behind pitr), the stretch up to the
//! first entry the oplog returns is lost: a gap record is written, `GAP:`
//! is logged, and archiving continues from that entry.
//!
//! Segments stored beyond a hole (uploads finish out of order when the
//! archiver is killed) are reproduced exactly: the refill cuts at their
//! boundaries and nowhere else below their end, so the same keys get the
//! same bytes (create-if-absent accepts them as identical).
//!
//! Only majority-committed entries are archived: entries read wait in a
//! [`MajorityGate`] until the replica set's majority-committed optime
//! reaches them (see [`super::mongodb_majority`]), so no archived write can
//! be rolled back.
//!
//! Watermarks: *received* (entries read), *submitted* (sealed up to the
//! last safe boundary; where a reconnect resumes), *durable* (stored). Bytes
//! of a transaction still open when the connection fails are dropped and
//! read again after reconnecting, so nothing is lost or stored twice.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use bson::RawDocumentBuf;
use chrono::Utc;
use mongodb::Client;
use pitr_mongodb::{OplogEntryRef, OplogTs, SealedOplogSegment, Segmenter};
use pitr_segment::{Engine, Epoch, LogPos, TimestampMicros};
use tokio_util::sync::CancellationToken;

use crate::archive::catalog::Catalog;
use crate::archive::driver::{run, take_over, Connection, Ended, Failure, Held, Settings, Writing};
use crate::archive::gaps::GapRecord;
use crate::archive::identity::{check_identity, SourceIdentity};
use crate::archive::keys::{SegmentKey, SourceName};
use crate::archive::lease::start_failure;
use crate::archive::pipeline::Durable;
use crate::archive::progress::ArchiveProgress;
use crate::source::mongodb_majority::MajorityGate;
use crate::source::mongodb_tail::{connect, is_transient, open, Opened, Reader, StartFrom};
use crate::storage::Repo;

/// Where a new archive starts (ignored when the repository has a tail).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The oldest entry the oplog holds (the default).
    Oldest,
    /// The newest entry.
    Now,
    /// Every entry with `ts >=` this.
    Ts(OplogTs),
}

impl std::str::FromStr for StartAt {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "oldest" => Ok(StartAt::Oldest),
            "now" => Ok(StartAt::Now),
            _ => s
                .parse::<OplogTs>()
                .map(StartAt::Ts)
                .map_err(|e| format!("{e}; --start-at takes oldest, now or SECONDS:INCREMENT")),
        }
    }
}

/// Settings of one MongoDB archiver.
#[derive(Debug, Clone, Default)]
pub struct MongoArchiveOptions {
    /// What every archiver is told.
    pub common: Settings,
    pub start_at: Option<StartAt>,
    /// Stop (storing everything) once the entry at or after this `ts` is
    /// archived: for tests and catch-up runs.
    pub stop_at: Option<OplogTs>,
}

/// How long the first connection waits for an unreachable server (when
/// the URL sets no `serverSelectionTimeoutMS`).
const FIRST_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An error that a reconnect may resolve (besides the driver's own).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Transient(String);

fn transient(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Transient>().is_some()
        || e.downcast_ref::<mongodb::error::Error>()
            .is_some_and(is_transient)
}

/// Segment boundaries already stored beyond the resume point.
#[derive(Debug, Default)]
struct Replay {
    cuts: BTreeSet<LogPos>,
    /// While entries below this are read, cut only at `cuts`.
    until: LogPos,
}

/// The state that survives reconnects.
struct Archiver {
    opts: MongoArchiveOptions,
    repo: Repo,
    client: Client,
    set_name: String,
    source: SourceName,
    /// Uploader, lease, progress and whether anything was written.
    held: Held,
    initial: Option<Durable>,
    seg: Segmenter,
    /// Where the next read starts.
    resume: StartFrom,
    /// Epoch of the newest archived stretch (a gap after it is recorded
    /// in it).
    tail_epoch: Epoch,
    /// `ts` of the last entry fed to the segmenter.
    last_pushed: Option<OplogTs>,
    replay: Replay,
    /// Segments stored beyond the tail, rewritten under their own keys.
    reuse: Vec<SegmentKey>,
}

/// Runs `pitr archive` for MongoDB until cancelled (or `stop_at`).
pub async fn archive(
    opts: MongoArchiveOptions,
    repo: Repo,
    cancel: CancellationToken,
    progress: Arc<ArchiveProgress>,
) -> anyhow::Result<()> {
    let shown = crate::redact::redact(&opts.common.url);
    let mut a = match prepare(opts, repo, progress, &cancel).await {
        Ok(a) => a,
        Err(e) => return start_failure(e, &shown),
    };
    run(&mut a, &cancel, |e| {
        anyhow!("archiving {shown} stopped: {e:#}")
    })
    .await
}

/// `term T, last ts S:I` for an exclusive chain end.
fn show_end(epoch: Epoch, end: LogPos) -> String {
    match OplogTs::last_before(end) {
        Some(t) => format!("term {} ts {}:{}", epoch.0, t.secs, t.inc),
        None => format!("term {} position {}", epoch.0, end.to_hex()),
    }
}

/// The repository's tail over all terms.
struct Tail {
    end: LogPos,
    epoch: Epoch,
    last_commit: Option<TimestampMicros>,
    replay: Replay,
}

/// Walks segments and gap records of every epoch from the oldest: an item
/// starting at (or before) the current end continues it; the first hole
/// ends the walk. Items stored beyond it become the replay cuts.
fn find_tail(catalog: &Catalog) -> Option<Tail> {
    // (start, end, epoch, tmax)
    let mut items: Vec<(LogPos, LogPos, Epoch, Option<TimestampMicros>)> = Vec::new();
    for e in catalog.epochs() {
        let Some(ec) = catalog.epoch(e) else { continue };
        items.extend(
            ec.segments()
                .iter()
                .map(|s| (s.key.start, s.key.end, e, s.key.tmax)),
        );
        items.extend(ec.gaps().iter().map(|g| (g.start, g.end, e, None)));
    }
    items.sort_by_key(|&(a, b, e, _)| (a, b, e));
    let &(_, mut end, mut epoch, _) = items.first()?;
    let mut hole = None;
    for (i, &(start, stop, e, _)) in items.iter().enumerate().skip(1) {
        if start > end {
            hole = Some(i);
            break;
        }
        if stop > end || (stop == end && e > epoch) {
            end = stop.max(end);
            epoch = e;
        }
    }
    let last_commit = items
        .iter()
        .filter(|it| it.1 <= end)
        .filter_map(|it| it.3)
        .max();
    let mut replay = Replay::default();
    if let Some(h) = hole {
        for &(start, stop, _, _) in &items[h..] {
            replay.cuts.insert(start);
            replay.cuts.insert(stop);
            replay.until = replay.until.max(stop);
        }
    }
    Some(Tail {
        end,
        epoch,
        last_commit,
        replay,
    })
}

/// Logs in (wrong credentials fail here), names the source and reads the
/// repository's tail. Writes nothing.
async fn prepare(
    opts: MongoArchiveOptions,
    repo: Repo,
    progress: Arc<ArchiveProgress>,
    cancel: &CancellationToken,
) -> anyhow::Result<Archiver> {
    let conn = connect(&opts.common.url, FIRST_CONNECT_TIMEOUT).await?;
    let name = opts
        .common
        .name
        .clone()
        .unwrap_or_else(|| format!("mongo-{}", conn.set_name));
    let source = SourceName::new(&name).map_err(|e| anyhow!("invalid source name: {e}"))?;
    check_identity(
        &repo,
        &SourceIdentity::new(&name, Engine::MongoDb, &conn.set_name),
    )
    .await?;
    let (lease, catalog) = take_over(&repo, &source, opts.common.lease, &progress, cancel).await?;
    let guard = lease.guard();
    let mut reuse = Vec::new();
    let (seg, resume, tail_epoch, initial, replay) = match find_tail(&catalog) {
        Some(t) => {
            let last = OplogTs::last_before(t.end).ok_or_else(|| {
                anyhow!("the archive of source {name} ends at an invalid position; the repository is damaged")
            })?;
            if opts.start_at.is_some() {
                tracing::warn!(
                    "--start-at ignored: source {name} is already archived; resuming after its tail"
                );
            }
            tracing::info!(
                source = %name,
                "resuming after {} (the repository's tail)",
                show_end(t.epoch, t.end)
            );
            let initial = Durable {
                epoch: t.epoch,
                pos: t.end,
                last_commit: t.last_commit,
            };
            // Segments stored beyond a hole keep their keys when re-cut.
            for e in catalog.epochs() {
                if let Some(ec) = catalog.epoch(e) {
                    reuse.extend(
                        ec.segments()
                            .iter()
                            .filter(|s| s.key.start >= t.end)
                            .map(|s| s.key.clone()),
                    );
                }
            }
            (
                Segmenter::resume_at(t.end),
                StartFrom::After(last),
                t.epoch,
                Some(initial),
                t.replay,
            )
        }
        None => match opts.start_at.unwrap_or(StartAt::Oldest) {
            StartAt::Oldest => (
                Segmenter::new(),
                StartFrom::Oldest,
                Epoch(0),
                None,
                Replay::default(),
            ),
            StartAt::Now => (
                Segmenter::new(),
                StartFrom::Now,
                Epoch(0),
                None,
                Replay::default(),
            ),
            StartAt::Ts(ts) => (
                Segmenter::resume_at(ts.to_log_pos()),
                StartFrom::From(ts),
                Epoch(0),
                None,
                Replay::default(),
            ),
        },
    };
    tracing::info!(
        replica_set = %conn.set_name,
        version = %conn.version,
        "connected to the replica set"
    );
    progress.timeline.store(tail_epoch.0, Ordering::Relaxed);
    Ok(Archiver {
        opts,
        repo,
        client: conn.client,
        set_name: conn.set_name,
        source,
        held: Held {
            lease: Some(lease),
            guard,
            ..Held::new(progress)
        },
        initial,
        seg,
        resume,
        tail_epoch,
        last_pushed: None,
        replay,
        reuse,
    })
}

/// The end of every sentence about a rollback behind the archive.
const ROLLED_BACK: &str = "the replica set rolled back writes pitr had archived, and the archive \
     would keep what the cluster undid; archive it under a new --name and take a new base backup \
     (pitr backup)";

/// Checks that the entry a resume found at `last` has the term it was
/// archived under (`archived`, the tail segment's epoch): the same `ts`
/// under another term is another entry, written by a new primary after the
/// archived one was rolled back (mongo: `src/mongo/db/repl/rollback_impl.cpp`
/// finds the common point by optime, `ts` and term). Entries without a
/// term, or an archive of term 0, are not compared.
fn same_optime(last: OplogTs, archived: Epoch, found: Option<i64>) -> anyhow::Result<()> {
    match found {
        Some(t) if archived.0 != 0 && u64::try_from(t).ok() != Some(archived.0) => Err(anyhow!(
            "the server's oplog holds {last}, the last archived entry, under term {t}, but pitr \
             archived it under term {}: {ROLLED_BACK}",
            archived.0
        )),
        _ => Ok(()),
    }
}

impl Connection for Archiver {
    async fn session(&mut self, cancel: &CancellationToken) -> anyhow::Result<Ended> {
        self.engine_session(cancel).await
    }

    fn classify(&self, e: &anyhow::Error) -> Failure {
        if transient(e) {
            Failure::Transient
        } else {
            Failure::Definite
        }
    }

    fn held(&self) -> &Held {
        &self.held
    }

    fn held_mut(&mut self) -> &mut Held {
        &mut self.held
    }

    fn durable(&mut self, d: &Durable) {
        tracing::info!("oplog durable up to {}", show_end(d.epoch, d.pos));
    }
}

impl Archiver {
    async fn engine_session(&mut self, cancel: &CancellationToken) -> anyhow::Result<Ended> {
        let opened = open(&self.client, self.resume).await?;
        self.setup_repository().await?;
        let mut gate = MajorityGate::default();
        gate.refresh(&self.client).await?;
        let cursor = match opened {
            Opened::Tailing {
                cursor,
                resumed_term,
            } => {
                if let StartFrom::After(last) = self.resume {
                    same_optime(last, self.tail_epoch, resumed_term)?;
                }
                cursor
            }
            Opened::RolledOver {
                first,
                cursor,
                first_doc,
            } => {
                self.record_gap(first).await?;
                gate.push(first_doc)?;
                cursor
            }
            Opened::Diverged { last, oldest } => {
                return Err(anyhow!(
                    "the server's oplog no longer holds {last}, the last archived entry, though it \
                     still reaches back to {oldest}: {ROLLED_BACK}"
                ));
            }
            Opened::Empty => {
                return match self.resume {
                    StartFrom::After(t) => Err(anyhow!(
                        "the oplog holds no entry at or after {t}, the last archived one: the \
                         server's oplog is behind the archive (a rollback, or another replica set \
                         under the same name); archive it under a new --name"
                    )),
                    _ => Err(
                        Transient("the oplog is empty; waiting for its first entry".into()).into(),
                    ),
                };
            }
        };
        tracing::info!(from = ?self.resume, "tailing the oplog");
        let mut reader = Reader::spawn(cursor);
        let mut ticker = tokio::time::interval(Duration::from_millis(100));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    reader.stop();
                    break self.seal().await.map(|()| Ended::Shutdown);
                }
                _ = ticker.tick() => {
                    if gate.waiting() {
                        let step = match gate.refresh(&self.client).await {
                            Ok(()) => self.release(&mut gate).await,
                            Err(e) => Err(e),
                        };
                        if let Some(end) = self.after_step(step).await {
                            break end;
                        }
                    }
                    if !self.replaying()
                        && self.seg.should_cut(self.opts.common.max_segment_bytes, self.opts.common.flush_interval, Instant::now())
                    {
                        if let Err(e) = self.seal().await {
                            break Err(e);
                        }
                    }
                    if let Some(d) = self.held.uploader.as_ref().and_then(|u| u.durable()) {
                        self.held.progress.note_durable(&d);
                    }
                }
                // entries wait for the majority (bounded: when full, the
                // cursor is left unread and the server keeps the oplog)
                d = reader.rx.recv(), if gate.has_room() => {
                    let step = match d {
                        Some(Ok(doc)) => match gate.push(doc) {
                            Ok(()) => self.release(&mut gate).await,
                            Err(e) => Err(e),
                        },
                        Some(Err(e)) => Err(e.into()),
                        None => Err(Transient("the server ended the oplog cursor".into()).into()),
                    };
                    if let Some(end) = self.after_step(step).await {
                        break end;
                    }
                }
            }
        };
        reader.stop();
        result
    }

    /// Feeds every held entry the majority has to the segment builder.
    async fn release(&mut self, gate: &mut MajorityGate) -> anyhow::Result<Option<Ended>> {
        while let Some(doc) = gate.pop_committed() {
            if let Some(end) = self.on_entry(doc).await? {
                return Ok(Some(end));
            }
        }
        Ok(None)
    }

    /// What a step of the session means: go on (`None`), or how it ends.
    /// On an error every complete unit received is kept and the rest
    /// (held entries included) is read again after reconnecting.
    async fn after_step(
        &mut self,
        step: anyhow::Result<Option<Ended>>,
    ) -> Option<anyhow::Result<Ended>> {
        match step {
            Ok(None) => None,
            Ok(Some(end)) => Some(self.seal().await.map(|()| end)),
            Err(e) => {
                let r = self.seal().await;
                self.seg.discard_unsafe();
                Some(match r {
                    Ok(()) => Err(e),
                    Err(seal) => Err(seal.context(format!("{e:#}"))),
                })
            }
        }
    }

    /// First successful read: identity and uploader.
    async fn setup_repository(&mut self) -> anyhow::Result<()> {
        self.held
            .start_writing(Writing {
                repo: &self.repo,
                source: &self.source,
                engine: Engine::MongoDb,
                system_id: &self.set_name,
                zstd_level: self.opts.common.zstd_level,
                uploader: self.opts.common.uploader.clone(),
                initial: self.initial,
                reuse: std::mem::take(&mut self.reuse),
            })
            .await
    }

    /// The oplog no longer holds the entry to resume after: record the lost
    /// stretch up to `first` and continue there.
    async fn record_gap(&mut self, first: OplogTs) -> anyhow::Result<()> {
        self.seal().await?;
        self.seg.discard_unsafe();
        let start = self
            .seg
            .start()
            .ok_or_else(|| anyhow!("internal error: a gap without an archived tail"))?;
        let end = first.to_log_pos();
        let last = OplogTs::last_before(start);
        let shown_last = last.map_or_else(|| start.to_hex(), |t| t.to_string());
        let gap = GapRecord {
            epoch: self.tail_epoch,
            start,
            end,
            reason: format!(
                "oplog rolled over before pitr archived it: the entries after {shown_last} and before {first} are lost"
            ),
            detected_at: Utc::now(),
            generation: self.held.guard.generation(),
        };
        self.held.record_gap(&self.repo, &self.source, &gap).await?;
        tracing::error!(
            "GAP: the oplog of replica set {} rolled over before pitr archived it: the entries \
             after {shown_last} and before {first} are lost; point-in-time restore into that \
             stretch is impossible. Take a new base backup (pitr backup) to restore past it, and \
             enlarge the oplog (replSetResizeOplog) or keep pitr running. Continuing from {first}.",
            self.set_name
        );
        self.seg = Segmenter::resume_at(end);
        self.last_pushed = None;
        self.replay = Replay::default();
        Ok(())
    }

    /// True while re-reading a stretch that already has stored segments.
    fn replaying(&self) -> bool {
        self.last_pushed
            .is_some_and(|t| t.to_log_pos() < self.replay.until)
    }

    /// Feeds one entry; `Some(Done)` once `stop_at` is reached.
    async fn on_entry(&mut self, doc: RawDocumentBuf) -> anyhow::Result<Option<Ended>> {
        let e = OplogEntryRef::parse(&doc)
            .map_err(|e| anyhow!("an oplog entry cannot be archived: {e}"))?;
        let ts = e.ts();
        let now = Instant::now();
        if let Some(sealed) = self
            .seg
            .push(&e, now)
            .map_err(|e| anyhow!("oplog order broken: {e}"))?
        {
            self.submit(sealed).await?;
        }
        self.last_pushed = Some(ts);
        self.held
            .progress
            .received_lsn
            .store(ts.to_log_pos().lo, Ordering::Relaxed);
        if let Some(t) = self.seg.safe_last_ts() {
            self.resume = StartFrom::After(t);
        }
        let at_cut = self
            .seg
            .safe_last_ts()
            .is_some_and(|t| self.replay.cuts.contains(&t.pos_after()));
        if at_cut
            || (!self.replaying()
                && self
                    .seg
                    .should_cut(self.opts.common.max_segment_bytes, Duration::MAX, now))
        {
            self.seal().await?;
        }
        if let Some(stop) = self.opts.stop_at {
            if ts >= stop && !self.seg.has_unsafe() {
                return Ok(Some(Ended::Done));
            }
        }
        Ok(None)
    }

    /// Seals the safe part of the segmenter and queues it.
    async fn seal(&mut self) -> anyhow::Result<()> {
        match self.seg.cut() {
            Some(s) => self.submit(s).await,
            None => Ok(()),
        }
    }

    async fn submit(&mut self, s: SealedOplogSegment) -> anyhow::Result<()> {
        let Some(up) = &self.held.uploader else {
            return Err(anyhow!("internal error: uploader not started"));
        };
        self.resume = StartFrom::After(s.last_ts);
        self.tail_epoch = s.epoch;
        self.held
            .progress
            .timeline
            .store(s.epoch.0, Ordering::Relaxed);
        up.submit(s.into_sealed())
            .await
            .map_err(anyhow::Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resume_entry_under_another_term_is_a_rollback() {
        let last = OplogTs { secs: 100, inc: 3 };
        assert!(same_optime(last, Epoch(4), Some(4)).is_ok());
        assert!(same_optime(last, Epoch(4), None).is_ok());
        assert!(same_optime(last, Epoch(0), Some(7)).is_ok());
        let e = same_optime(last, Epoch(4), Some(5))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("under term 5") && e.contains("rolled back"),
            "{e}"
        );
    }
    use crate::archive::catalog::SegmentEntry;
    use crate::archive::keys::{GapKey, SegmentKey};

    fn ts(s: u32, i: u32) -> LogPos {
        OplogTs { secs: s, inc: i }.to_log_pos()
    }

    fn seg(e: u64, a: LogPos, b: LogPos) -> SegmentEntry {
        SegmentEntry {
            key: SegmentKey {
                source: SourceName::new("m").unwrap(),
                epoch: Epoch(e),
                start: a,
                end: b,
                tmin: Some(TimestampMicros(1)),
                tmax: Some(TimestampMicros(i64::from(b.lo as u32))),
                generation: 0,
            },
            size: 1,
        }
    }

    #[test]
    fn the_tail_runs_across_terms_and_gaps_and_stops_at_a_hole() {
        let src = SourceName::new("m").unwrap();
        let gap = GapKey {
            source: src.clone(),
            epoch: Epoch(2),
            start: ts(12, 0),
            end: ts(15, 0),
            generation: 0,
        };
        let c = Catalog::from_parts(
            src,
            vec![
                seg(1, ts(10, 1), ts(11, 0)),
                seg(2, ts(11, 0), ts(12, 0)),
                seg(2, ts(15, 0), ts(16, 0)),
                // Beyond a hole: stored by a killed archiver out of order.
                seg(2, ts(17, 0), ts(18, 0)),
            ],
            vec![gap],
            vec![],
            vec![],
        );
        let t = find_tail(&c).unwrap();
        assert_eq!((t.end, t.epoch), (ts(16, 0), Epoch(2)));
        assert_eq!(t.replay.until, ts(18, 0));
        assert!(t.replay.cuts.contains(&ts(17, 0)) && t.replay.cuts.contains(&ts(18, 0)));
        assert!(find_tail(&Catalog::from_parts(
            SourceName::new("m").unwrap(),
            vec![],
            vec![],
            vec![],
            vec![]
        ))
        .is_none());
    }

    #[test]
    fn start_at_parses() {
        assert_eq!("now".parse::<StartAt>(), Ok(StartAt::Now));
        assert_eq!("oldest".parse::<StartAt>(), Ok(StartAt::Oldest));
        assert_eq!(
            "17:3".parse::<StartAt>(),
            Ok(StartAt::Ts(OplogTs { secs: 17, inc: 3 }))
        );
        assert!("yesterday".parse::<StartAt>().is_err());
    }
}
