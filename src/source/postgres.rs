//! PostgreSQL log source: `pitr archive postgres://...`.
//!
//! Connects as a physical-replication standby, streams WAL and cuts it into
//! segments that never cross a WAL-file boundary, so each 16 MiB WAL file is
//! the concatenation of the segments covering it (that is what `wal-fetch`
//! rebuilds, byte-identical to what PostgreSQL wrote).
//!
//! Positions: epoch = timeline id, position = LSN. The stream always starts
//! at the beginning of a WAL file (like `pg_receivewal`) so the WAL reader
//! sees record boundaries; bytes before the resume point are only indexed,
//! never stored twice.
//!
//! Watermarks: *received* (what the socket gave us), *submitted* (sealed and
//! queued for upload; where a reconnect resumes), *durable* (stored in the
//! repository). Only *durable* is reported to the server as flushed, so the
//! replication slot never advances past what the repository holds.
//!
//! Timeline switches: when the server ends a historic timeline it says where
//! the next one starts; the current segment is sealed, the next timeline's
//! `.history` file is stored, and streaming restarts at the beginning of the
//! WAL file holding the switch point on the new timeline.
//!
//! Writer lease: before it writes anything, an archiver takes the source's
//! writer lease (`archive::lease`; a second archiver waits for it), computes
//! the repository's tail, stores its takeover record and then writes every
//! segment and gap record under its lease generation. Losing the lease stops
//! it at once.
//!
//! Lost WAL: when the server no longer has the WAL we need (slot dropped or
//! invalidated, segment recycled) a gap record is written for the missing
//! stretch, a loud error is logged, and archiving continues from the oldest
//! WAL the server still has.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use bytes::Bytes;
use chrono::Utc;
use pitr_postgres::commit_index::{Commit, CommitIndexer};
use pitr_postgres::conninfo::Config;
use pitr_postgres::error::{ErrorKind, PgError};
use pitr_postgres::lsn::{Lsn, TimelineId};
use pitr_postgres::replication::{
    ReplicationClient, ReplicationMessage, ReplicationStream, SystemIdentity,
};
use pitr_postgres::segment::SegmentBuilder;
use pitr_segment::{Engine, Epoch, LogPos};
use tokio_util::sync::CancellationToken;

use crate::archive::driver::{run, take_over, Connection, Ended, Failure, Held, Settings, Writing};
use crate::archive::gaps::GapRecord;
use crate::archive::identity::{check_identity, SourceIdentity};
use crate::archive::keys::{HistoryKey, SourceName};
use crate::archive::pipeline::Durable;
use crate::storage::Repo;

/// Settings of one PostgreSQL archiver.
#[derive(Debug, Clone, Default)]
pub struct PgArchiveOptions {
    /// What every archiver is told.
    pub common: Settings,
    pub slot: Option<String>,
    /// Stop once this LSN is durable (tests and one-shot catch-up).
    pub stop_at: Option<Lsn>,
    /// Where to start when the repository holds nothing of the source yet
    /// (default: the slot's restart position).
    pub start_at: Option<(TimelineId, Lsn)>,
    /// Use a temporary replication slot (dropped by the server when the
    /// connection ends) instead of a permanent one: one-shot catch-up.
    pub temporary_slot: bool,
}

pub use crate::archive::progress::ArchiveProgress;

/// Outcome of one streaming session.
enum SessionEnd {
    /// Cancelled: everything received is durable and confirmed.
    Shutdown,
    /// `stop_at` reached.
    Done,
    /// Timeline ended; continue on the next one.
    NextTimeline { tli: TimelineId, start: Lsn },
}

/// The state that survives reconnects.
struct Archiver {
    opts: PgArchiveOptions,
    cfg: Config,
    repo: Repo,
    source: Option<SourceName>,
    slot: String,
    /// Uploader, lease, progress (the driver ends the work with them).
    held: Held,
    /// Where the next segment starts (end of the last submitted one).
    next: Option<(TimelineId, Lsn)>,
    seg_size: u64,
    /// Streaming has started at least once (later failures are retried).
    connected_once: bool,
    /// The lease was just taken on the current connection.
    fresh_lease: bool,
    /// A timeline switch the next session follows.
    pending_switch: Option<(TimelineId, Lsn)>,
}

/// Runs `pitr archive` for PostgreSQL until cancelled (or `stop_at`).
pub async fn archive(
    opts: PgArchiveOptions,
    repo: Repo,
    cancel: CancellationToken,
    progress: Arc<ArchiveProgress>,
) -> anyhow::Result<()> {
    let cfg = Config::parse(&opts.common.url)?;
    let mut a = Archiver {
        slot: String::new(),
        cfg,
        repo,
        source: None,
        // Every PostgreSQL holder stores its takeover position as a segment
        // boundary: its lease is always released, never removed unused.
        held: Held {
            written: true,
            ..Held::new(progress)
        },
        next: None,
        seg_size: 16 << 20,
        connected_once: false,
        fresh_lease: false,
        pending_switch: None,
        opts,
    };
    run(&mut a, &cancel, |e| e).await
}

impl Connection for Archiver {
    async fn session(&mut self, cancel: &CancellationToken) -> anyhow::Result<Ended> {
        let switch = self.pending_switch.take();
        Ok(match self.pg_session(cancel, switch).await? {
            SessionEnd::Shutdown => Ended::Shutdown,
            SessionEnd::Done => Ended::Done,
            SessionEnd::NextTimeline { tli, start } => {
                self.pending_switch = Some((tli, start));
                Ended::Continue
            }
        })
    }

    fn classify(&self, e: &anyhow::Error) -> Failure {
        let pg = e.downcast_ref::<PgError>();
        // After a takeover, the slot may still be held by the previous
        // holder's connection until the server drops it (wal_sender_timeout).
        if self.held.lease.is_some() && pg.and_then(|p| p.code()) == Some("55006") {
            tracing::warn!(slot = %self.slot, "the replication slot is still in use by another connection (the previous archiver's?)");
            return Failure::Busy;
        }
        if pg.is_some_and(|p| p.is_transient()) {
            Failure::Transient
        } else {
            Failure::Definite
        }
    }

    fn got_through(&self) -> bool {
        self.connected_once
    }

    fn held(&self) -> &Held {
        &self.held
    }

    fn held_mut(&mut self) -> &mut Held {
        &mut self.held
    }
}

impl Archiver {
    /// Every connection: the server's identity and WAL segment size; on the
    /// first one also the source name, identity check, slot name and uploader.
    async fn prepare(
        &mut self,
        client: &mut ReplicationClient,
        cancel: &CancellationToken,
    ) -> anyhow::Result<SystemIdentity> {
        let ident = client.identify_system().await?;
        self.seg_size = client.wal_segment_size().await?;
        if self.source.is_some() {
            return Ok(ident);
        }
        let name = match &self.opts.common.name {
            Some(n) => n.clone(),
            None => format!("pg-{}", ident.systemid),
        };
        let source = SourceName::new(&name).map_err(|e| anyhow!("invalid source name: {e}"))?;
        check_identity(
            &self.repo,
            &SourceIdentity::new(&name, Engine::Postgres, &ident.systemid),
        )
        .await?;
        self.slot = match &self.opts.slot {
            Some(s) => s.clone(),
            None => default_slot_name(&name),
        };
        let (lease, catalog) = take_over(
            &self.repo,
            &source,
            self.opts.common.lease,
            &self.held.progress,
            cancel,
        )
        .await?;
        self.held.guard = lease.guard();
        self.held.lease = Some(lease);
        self.fresh_lease = true;
        let tail = catalog
            .epochs()
            .into_iter()
            .rev()
            .find_map(|e| catalog.tail(e).map(|p| (e, p)));
        let initial = tail.map(|(e, p)| Durable {
            epoch: e,
            pos: p,
            last_commit: catalog
                .epoch(e)
                .and_then(|ec| ec.segments().iter().rev().find_map(|s| s.key.tmax)),
        });
        if let Some((e, p)) = tail {
            tracing::info!(
                source = %name, timeline = e.0, "resuming after {} (the repository's tail)",
                Lsn(p.lo)
            );
            self.next = Some((TimelineId(e.0 as u32), Lsn(p.lo)));
            self.held
                .progress
                .durable_lsn
                .store(p.lo, Ordering::Relaxed);
        }
        let reuse = tail
            .iter()
            .flat_map(|&(e, p)| {
                catalog.epoch(e).into_iter().flat_map(move |ec| {
                    ec.segments()
                        .iter()
                        .chain(ec.redundant())
                        .filter(move |s| s.key.start >= p)
                        .map(|s| s.key.clone())
                })
            })
            .collect();
        self.held
            .start_writing(Writing {
                repo: &self.repo,
                source: &source,
                engine: Engine::Postgres,
                system_id: &ident.systemid,
                zstd_level: self.opts.common.zstd_level,
                uploader: self.opts.common.uploader.clone(),
                initial,
                reuse,
            })
            .await?;
        self.source = Some(source);
        Ok(ident)
    }

    async fn pg_session(
        &mut self,
        cancel: &CancellationToken,
        switch: Option<(TimelineId, Lsn)>,
    ) -> anyhow::Result<SessionEnd> {
        let mut client = ReplicationClient::connect(&self.cfg).await?;
        let mut ident = self.prepare(&mut client, cancel).await?;
        if std::mem::take(&mut self.fresh_lease) {
            // Waiting for the lease may have taken long: a fresh connection
            // and a fresh look at the server.
            let _ = client.close().await;
            client = ReplicationClient::connect(&self.cfg).await?;
            ident = self.prepare(&mut client, cancel).await?;
        }
        let slot_info = if self.opts.temporary_slot {
            tracing::info!(slot = %self.slot, "creating a temporary physical replication slot (dropped when this connection ends)");
            client.create_temporary_physical_slot(&self.slot).await?;
            client.read_replication_slot(&self.slot).await?
        } else {
            match client.read_replication_slot(&self.slot).await? {
                Some(s) => Some(s),
                None => {
                    tracing::info!(slot = %self.slot, "creating physical replication slot");
                    client.create_physical_slot(&self.slot).await?;
                    client.read_replication_slot(&self.slot).await?
                }
            }
        };
        if let Some((tli, start)) = switch {
            self.next = Some((tli, start));
        }
        let (tli, resume) = match self.next.or(self.opts.start_at) {
            Some(n) => n,
            None => {
                let restart = slot_info
                    .as_ref()
                    .and_then(|s| s.restart_lsn)
                    .unwrap_or(ident.xlogpos);
                let tli = slot_info
                    .as_ref()
                    .and_then(|s| s.restart_tli)
                    .unwrap_or(ident.timeline);
                (tli, restart.segment_start(self.seg_size))
            }
        };
        if tli.0 > 1 {
            self.store_history(&mut client, tli).await?;
        }
        let stream_from = resume.segment_start(self.seg_size);
        let stream = match client
            .start_physical(Some(&self.slot), stream_from, tli)
            .await
        {
            Ok(s) => s,
            Err(e) if e.kind() == ErrorKind::WalRemoved => {
                return self.record_gap(tli, resume, e).await;
            }
            Err(e) => return Err(e.into()),
        };
        self.connected_once = true;
        self.held
            .progress
            .timeline
            .store(u64::from(tli.0), Ordering::Relaxed);
        tracing::info!(
            timeline = tli.0,
            "streaming WAL from {} (archiving from {})",
            stream_from,
            resume
        );
        match self.stream(cancel, stream, tli, stream_from, resume).await {
            Err(e) => match e.downcast::<PgError>() {
                Ok(pg) if pg.kind() == ErrorKind::WalRemoved => {
                    let (tli, from) = self.next.unwrap_or((tli, resume));
                    self.record_gap(tli, from, pg).await
                }
                Ok(pg) => Err(pg.into()),
                Err(other) => Err(other),
            },
            ok => ok,
        }
    }

    async fn store_history(
        &mut self,
        client: &mut ReplicationClient,
        tli: TimelineId,
    ) -> anyhow::Result<()> {
        let Some(source) = self.source.clone() else {
            return Ok(());
        };
        let (file, content) = client.timeline_history(tli).await?;
        let key = HistoryKey::new(source, Epoch(u64::from(tli.0)), &file)?;
        self.repo.put_if_absent(&key.to_key(), content).await?;
        Ok(())
    }

    /// The server no longer has WAL from `from`: record the gap up to the
    /// oldest WAL it still has, then resume there.
    async fn record_gap(
        &mut self,
        tli: TimelineId,
        from: Lsn,
        err: PgError,
    ) -> anyhow::Result<SessionEnd> {
        let mut client = ReplicationClient::connect(&self.cfg).await?;
        // The slot may be gone too: drop and recreate it so it reserves what exists now.
        // (A temporary slot ended with its connection; a new one on this
        // connection says what the server still has, and ends with it.)
        let restart = if self.opts.temporary_slot {
            client.create_temporary_physical_slot(&self.slot).await?;
            client
                .read_replication_slot(&self.slot)
                .await?
                .and_then(|s| s.restart_lsn)
        } else {
            match client.read_replication_slot(&self.slot).await? {
                Some(s)
                    if s.restart_lsn
                        .is_some_and(|r| r.segment_start(self.seg_size) > from) =>
                {
                    s.restart_lsn
                }
                other => {
                    if other.is_some() {
                        client.drop_slot(&self.slot).await?;
                    }
                    client.create_physical_slot(&self.slot).await?;
                    client
                        .read_replication_slot(&self.slot)
                        .await?
                        .and_then(|s| s.restart_lsn)
                }
            }
        };
        let restart = restart
            .ok_or_else(|| {
                anyhow!(
                    "slot {} has no restart position after re-creation",
                    self.slot
                )
            })?
            .segment_start(self.seg_size);
        if restart <= from {
            return Err(anyhow!(
                "the server reports WAL at {from} removed but still has it from {restart}: {err}"
            ));
        }
        let Some(source) = self.source.clone() else {
            return Err(err.into());
        };
        let gap = GapRecord {
            epoch: Epoch(u64::from(tli.0)),
            start: LogPos::from_lsn(from.0),
            end: LogPos::from_lsn(restart.0),
            reason: format!("WAL removed by the server before it was archived: {err}"),
            detected_at: Utc::now(),
            generation: self.held.guard.generation(),
        };
        self.held.record_gap(&self.repo, &source, &gap).await?;
        tracing::error!(
            timeline = tli.0,
            "GAP: WAL from {from} to {restart} was removed by the server before pitr archived it; \
             point-in-time restore into that stretch is impossible. Take a new base backup \
             (pitr backup) to restore past it. Continuing from {restart}."
        );
        self.next = Some((tli, restart));
        Ok(SessionEnd::NextTimeline {
            tli,
            start: restart,
        })
    }

    async fn stream(
        &mut self,
        cancel: &CancellationToken,
        mut stream: ReplicationStream,
        tli: TimelineId,
        stream_from: Lsn,
        resume: Lsn,
    ) -> anyhow::Result<SessionEnd> {
        let epoch = Epoch(u64::from(tli.0));
        let mut indexer = CommitIndexer::new(stream_from, self.seg_size);
        let mut buf = SegmentBuilder::new(epoch, resume);
        let mut received = stream_from;
        let mut ticker = tokio::time::interval(Duration::from_millis(100));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut durable_rx = match &self.held.uploader {
            Some(u) => u.watch(),
            None => return Err(anyhow!("uploader not started")),
        };
        let mut last_status = Instant::now();
        let guard = self.held.guard.clone();
        loop {
            tokio::select! {
                lost = guard.wait_lost() => {
                    // Stop writing at once: nothing more is sealed or stored.
                    return Err(lost.into());
                }
                _ = cancel.cancelled() => {
                    self.seal(&mut buf, received).await?;
                    return self.shutdown(stream, received).await;
                }
                changed = durable_rx.changed() => {
                    if changed.is_ok() {
                        let durable = self.confirm(&mut stream, received, epoch).await?;
                        last_status = Instant::now();
                        if self.opts.stop_at.is_some_and(|s| durable >= s) {
                            self.seal(&mut buf, received).await?;
                            return self.shutdown(stream, received).await.map(|_| SessionEnd::Done);
                        }
                    }
                }
                _ = ticker.tick() => {
                    if buf.due(self.opts.common.flush_interval) {
                        self.seal(&mut buf, received).await?;
                    }
                    if last_status.elapsed() >= Duration::from_secs(10) {
                        self.confirm(&mut stream, received, epoch).await?;
                        last_status = Instant::now();
                    }
                }
                msg = stream.next() => {
                    let msg = match msg {
                        Ok(m) => m,
                        Err(e) => {
                            // Keep what we have: it is valid WAL up to `received`.
                            self.seal(&mut buf, received).await?;
                            return Err(e.into());
                        }
                    };
                    match msg {
                        Some(ReplicationMessage::XLogData { wal_start, data, .. }) => {
                            if wal_start != received {
                                self.seal(&mut buf, received).await?;
                                return Err(PgError::protocol(
                                    format!("WAL arrived at {wal_start}, expected {received}"),
                                    "replication stream",
                                ).into());
                            }
                            let commits = indexer.feed(&data);
                            received = Lsn(received.0 + data.len() as u64);
                            self.held.progress.received_lsn.store(received.0, Ordering::Relaxed);
                            self.append(&mut buf, wal_start, data, &commits).await?;
                        }
                        Some(ReplicationMessage::Keepalive { reply_requested, .. }) => {
                            if reply_requested {
                                self.confirm(&mut stream, received, epoch).await?;
                                last_status = Instant::now();
                            }
                        }
                        Some(ReplicationMessage::EndOfTimeline { next_tli, next_tli_start }) => {
                            self.seal(&mut buf, received).await?;
                            tracing::info!(
                                "timeline {} ended at {}; following timeline {}",
                                tli.0, next_tli_start, next_tli.0
                            );
                            let start = next_tli_start.segment_start(self.seg_size);
                            self.next = Some((next_tli, start));
                            return Ok(SessionEnd::NextTimeline { tli: next_tli, start });
                        }
                        None => {
                            self.seal(&mut buf, received).await?;
                            return Err(PgError::new(
                                ErrorKind::Transient,
                                "the server ended the replication stream",
                                "replication stream",
                                "pitr reconnects",
                            ).with_lsn(received).into());
                        }
                    }
                }
            }
        }
    }

    /// Sends standby status: `received` as written, the durable position as
    /// flushed and applied; only while the lease is still held, so a holder
    /// that lost it never lets the server recycle WAL on its word.
    async fn confirm(
        &self,
        stream: &mut ReplicationStream,
        received: Lsn,
        epoch: Epoch,
    ) -> anyhow::Result<Lsn> {
        self.held.guard.check()?;
        let durable = self.durable_lsn(epoch);
        stream
            .send_status(received, durable, durable, false)
            .await?;
        Ok(durable)
    }

    fn durable_lsn(&self, epoch: Epoch) -> Lsn {
        match self.held.uploader.as_ref().and_then(|u| u.durable()) {
            Some(d) if d.epoch == epoch => {
                self.held.progress.note_durable(&d);
                Lsn(d.pos.lo)
            }
            // Nothing durable on this timeline yet: report nothing flushed.
            _ => Lsn(0),
        }
    }

    /// Appends WAL at `at` (already indexed), cutting at WAL-file and size limits.
    async fn append(
        &mut self,
        buf: &mut SegmentBuilder,
        at: Lsn,
        mut data: Bytes,
        commits: &[Commit],
    ) -> anyhow::Result<()> {
        let mut pos = at;
        while !data.is_empty() {
            // Skip what lies before the resume point (already archived).
            if pos < buf.start() {
                let skip = ((buf.start().0 - pos.0) as usize).min(data.len());
                let _ = data.split_to(skip);
                pos = Lsn(pos.0 + skip as u64);
                continue;
            }
            let file_end = pos.segment_start(self.seg_size).0 + self.seg_size;
            let room_file = (file_end - pos.0) as usize;
            let room_size = self
                .opts
                .common
                .max_segment_bytes
                .saturating_sub(buf.len())
                .max(1);
            let take = data.len().min(room_file).min(room_size);
            let chunk = data.split_to(take);
            buf.push(chunk);
            let piece_end = Lsn(pos.0 + take as u64);
            for c in commits
                .iter()
                .filter(|c| c.end_lsn > pos && c.end_lsn <= piece_end)
            {
                buf.note_commit(c.end_lsn, c.time);
            }
            pos = piece_end;
            if pos.0 == file_end || buf.len() >= self.opts.common.max_segment_bytes {
                self.seal(buf, pos).await?;
            }
        }
        Ok(())
    }

    /// Seals the buffered bytes `[buf.start, end)` into a segment and queues it.
    async fn seal(&mut self, buf: &mut SegmentBuilder, end: Lsn) -> anyhow::Result<()> {
        if buf.is_empty() {
            if end > buf.start() {
                buf.reset(end);
            }
            return Ok(());
        }
        let seg = buf.take(end);
        let Some(up) = &self.held.uploader else {
            return Err(anyhow!("uploader not started"));
        };
        self.next = Some((TimelineId(seg.epoch.0 as u32), end));
        up.submit(seg).await?;
        Ok(())
    }

    /// Waits until everything submitted is durable, confirms it to the
    /// server and ends the stream cleanly.
    async fn shutdown(
        &mut self,
        mut stream: ReplicationStream,
        received: Lsn,
    ) -> anyhow::Result<SessionEnd> {
        let Some(up) = self.held.uploader.take() else {
            return Ok(SessionEnd::Shutdown);
        };
        let durable = up.finish().await?;
        if let Some(d) = durable {
            let lsn = Lsn(d.pos.lo);
            self.held.progress.note_durable(&d);
            self.held.guard.check()?;
            stream
                .send_status(received, lsn, lsn, false)
                .await
                .context("confirming the durable position to the server")?;
            tracing::info!("stored and confirmed WAL up to {lsn}");
        }
        let _ = stream.send_copy_done().await;
        Ok(SessionEnd::Shutdown)
    }
}

/// Default slot name for a source: `pitr_<name>` restricted to what
/// PostgreSQL accepts (lower-case letters, digits, underscore; ≤ 63 bytes).
pub fn default_slot_name(source: &str) -> String {
    let mut s: String = format!("pitr_{source}")
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '_'
            }
        })
        .collect();
    s.truncate(63);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_are_valid() {
        assert_eq!(default_slot_name("pg-7290"), "pitr_pg_7290");
        assert_eq!(default_slot_name("Main.DB"), "pitr_main_db");
        assert!(default_slot_name(&"x".repeat(100)).len() <= 63);
    }
}
