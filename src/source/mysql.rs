//! MySQL/MariaDB log source: `pitr archive mysql://...` (or `mariadb://`).
//!
//! Registers as a replica (`COM_REGISTER_SLAVE` + `COM_BINLOG_DUMP`, see
//! `pitr_mysql::client`) and stores the exact bytes of every non-artificial
//! binlog event, cut into segments per binlog file at transaction
//! boundaries (layout in `pitr_mysql::segment`). A segment never crosses
//! a binlog file, so `pitr binlog-fetch` rebuilds each file byte-identical to
//! the server's own by concatenation.
//!
//! Start: with an empty repository, from the oldest binlog file the server
//! still has (everything it can give us). Otherwise from the repository's
//! tail, by POSITION: the tail `LogPos{hi: seq, lo: offset}` is turned back
//! into a file name from the stored base name (checked against `SHOW BINARY
//! LOGS`). A position is exact for both flavours and identifies a byte in a
//! file, which is what the archive layout is built on; resuming by GTID
//! would make the server choose the file and offset itself. When the last
//! archived segment ends its file (ROTATE or STOP event), streaming resumes
//! at offset 4 of the next file, so purging the finished file is harmless.
//!
//! Watermarks: *received* (events read), *submitted* (sealed up to the last
//! transaction boundary; where a reconnect resumes), *durable* (stored; what
//! status and monitoring report). MySQL replicas report no flush position,
//! so the durable watermark is not sent to the server. Bytes of a
//! transaction still open when the connection fails are dropped and read
//! again after reconnecting, so nothing is lost or stored twice.
//!
//! Purged binlogs: when the file to resume from is gone, a gap record
//! `[tail, (oldest seq, 4))` is written, a loud `GAP:` line is logged, and
//! archiving continues from the oldest file the server has.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use chrono::Utc;
use pitr_mysql::event::types;
use pitr_mysql::segment::{last_event_type, SegmentBuilder, FIRST_EVENT_OFFSET, MYSQL_EPOCH};
use pitr_mysql::{
    list_binlogs, server_identity, BinlogClient, BinlogPos, ClientOptions, ErrorKind, Flavor,
    MysqlError, RawEvent, ServerId, ServerIdentity, StartFrom, TxnTracker,
};
use pitr_segment::{LogPos, TimestampMicros};
use tokio_util::sync::CancellationToken;

use crate::archive::catalog::SegmentEntry;
use crate::archive::driver::{run, take_over, Connection, Ended, Failure, Held, Settings, Writing};
use crate::archive::gaps::GapRecord;
use crate::archive::identity::{check_identity, SourceIdentity};
use crate::archive::keys::{GapKey, SegmentKey, SourceName};
use crate::archive::lease::start_failure;
use crate::archive::pipeline::Durable;
use crate::archive::progress::ArchiveProgress;
use crate::archive::segment_read::read_segment;
use crate::source::mysql_meta::{default_server_id, ensure_meta, read_meta, MysqlMeta};
use crate::storage::Repo;

/// Settings of one MySQL/MariaDB archiver.
#[derive(Debug, Clone, Default)]
pub struct MysqlArchiveOptions {
    /// What every archiver is told.
    pub common: Settings,
    /// Replica server id (default: [`default_server_id`] of the source name).
    pub server_id: Option<u32>,
}

/// Where the next session starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Resume {
    seq: u64,
    offset: u64,
    /// End of the last archived byte (start of a gap if `seq` is purged).
    tail: LogPos,
}

/// Segment boundaries already stored beyond the resume point.
#[derive(Debug, Default)]
struct Replay {
    cuts: BTreeSet<LogPos>,
    /// While below this, seal only at `cuts`.
    until: LogPos,
}

/// Reads events in its own task and hands them over a bounded channel
/// (when the archiver waits on storage, the channel fills, the task stops
/// reading and the server keeps the binlog: backpressure).
struct Reader {
    rx: tokio::sync::mpsc::Receiver<Result<Option<RawEvent>, MysqlError>>,
    task: tokio::task::JoinHandle<()>,
}

impl Reader {
    fn spawn(mut client: BinlogClient) -> Reader {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let task = tokio::spawn(async move {
            loop {
                let ev = client.next_event().await;
                let more = matches!(ev, Ok(Some(_)));
                if tx.send(ev).await.is_err() || !more {
                    break;
                }
            }
            client.close().await;
        });
        Reader { rx, task }
    }

    /// Ends the stream (dropping the connection).
    fn stop(&mut self) {
        self.task.abort();
    }
}

/// The state that survives reconnects.
struct Archiver {
    opts: MysqlArchiveOptions,
    repo: Repo,
    flavor: Flavor,
    system_id: String,
    source: SourceName,
    server_id: ServerId,
    meta: Option<MysqlMeta>,
    /// Uploader, lease, progress and whether anything was written (set once
    /// identity and uploader are set up, only after the first successful
    /// replication start: a failed first attempt writes nothing).
    held: Held,
    /// Durable watermark the repository already had at start.
    initial: Option<Durable>,
    next: Option<Resume>,
    replay: Replay,
    /// Segments stored beyond the tail, rewritten under their own keys.
    reuse: Vec<SegmentKey>,
}

/// Runs `pitr archive` for MySQL/MariaDB until cancelled.
pub async fn archive(
    opts: MysqlArchiveOptions,
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

/// The system identifier stored in `source.json` and segment headers.
fn system_id_of(ident: &ServerIdentity) -> anyhow::Result<String> {
    match ident.flavor {
        Flavor::MySql => ident
            .server_uuid
            .map(|u| u.to_string())
            .ok_or_else(|| anyhow!("the server did not report a valid @@server_uuid")),
        Flavor::MariaDb => Ok(format!("mariadb-server-{}", ident.server_id)),
    }
}

fn flavor_name(f: Flavor) -> &'static str {
    match f {
        Flavor::MySql => "mysql",
        Flavor::MariaDb => "mariadb",
    }
}

/// `file:offset` when the base name is known, else `seq:offset`.
fn show_pos(meta: Option<&MysqlMeta>, p: LogPos) -> String {
    match meta {
        Some(m) => format!("{}:{}", m.file_name(p.hi), p.lo),
        None => format!("file #{}:{}", p.hi, p.lo),
    }
}

/// Logs in (a wrong password fails here), names the source and reads the
/// repository's tail. Writes nothing.
async fn prepare(
    opts: MysqlArchiveOptions,
    repo: Repo,
    progress: Arc<ArchiveProgress>,
    cancel: &CancellationToken,
) -> anyhow::Result<Archiver> {
    let ident = server_identity(&opts.common.url).await?;
    let system_id = system_id_of(&ident)?;
    let name = match &opts.common.name {
        Some(n) => n.clone(),
        None => format!(
            "{}-{}",
            flavor_name(ident.flavor),
            match ident.flavor {
                Flavor::MySql => system_id.clone(),
                Flavor::MariaDb => ident.server_id.to_string(),
            }
        ),
    };
    let source = SourceName::new(&name).map_err(|e| anyhow!("invalid source name: {e}"))?;
    check_identity(
        &repo,
        &SourceIdentity::new(&name, ident.flavor.engine(), &system_id),
    )
    .await?;
    let (lease, catalog) = take_over(&repo, &source, opts.common.lease, &progress, cancel).await?;
    let guard = lease.guard();
    let meta = read_meta(&repo, &source).await?;
    let mut replay = Replay::default();
    let mut reuse = Vec::new();
    let (next, initial) = match catalog.epoch(MYSQL_EPOCH) {
        Some(ec) => match find_tail(&repo, ec.segments(), ec.gaps()).await? {
            None => (None, None),
            Some(t) => {
                let mut resume = Resume {
                    seq: t.end.hi,
                    offset: t.end.lo,
                    tail: t.end,
                };
                if t.ends_file {
                    resume.seq = t.end.hi + 1;
                    resume.offset = FIRST_EVENT_OFFSET;
                }
                // Segments stored beyond a hole (uploads finish out of order
                // when the archiver is killed): re-cut at exactly their
                // boundaries so the refill reproduces them identically.
                for s in ec.segments().iter().filter(|s| s.key.start >= t.end) {
                    reuse.push(s.key.clone());
                    replay.cuts.insert(s.key.start);
                    replay.cuts.insert(s.key.end);
                    replay.until = replay.until.max(s.key.end);
                }
                let initial = Durable {
                    epoch: MYSQL_EPOCH,
                    pos: t.end,
                    last_commit: t.last_commit,
                };
                (Some(resume), Some(initial))
            }
        },
        None => (None, None),
    };
    if next.is_some() && meta.is_none() {
        return Err(anyhow!(
            "source {name} has binlog segments but no mysql.json; the repository is damaged"
        ));
    }
    if let Some(r) = next {
        tracing::info!(
            source = %name,
            "resuming at {} (the repository's tail is {})",
            show_pos(meta.as_ref(), LogPos::new(r.seq, r.offset)),
            show_pos(meta.as_ref(), r.tail)
        );
    }
    let server_id = ServerId(opts.server_id.unwrap_or_else(|| default_server_id(&name)));
    progress.timeline.store(MYSQL_EPOCH.0, Ordering::Relaxed);
    Ok(Archiver {
        repo,
        flavor: ident.flavor,
        system_id,
        source,
        server_id,
        meta,
        held: Held {
            lease: Some(lease),
            guard,
            ..Held::new(progress)
        },
        initial,
        next,
        replay,
        reuse,
        opts,
    })
}

/// The contiguous end of what the repository holds.
struct Tail {
    end: LogPos,
    /// The stretch ending at `end` ends its binlog file (ROTATE/STOP).
    ends_file: bool,
    last_commit: Option<TimestampMicros>,
}

/// How many of the newest segments get their file-ending event checked at
/// a file boundary (older boundaries were passed long ago).
const CHECK_RECENT: usize = 32;

/// Walks segments and gap records from the oldest: a segment or gap starting
/// at (or before) the current end continues it; so does offset 4 of the
/// next file when the stretch before ends its file. Stops at the first hole.
async fn find_tail(
    repo: &Repo,
    segs: &[SegmentEntry],
    gaps: &[GapKey],
) -> anyhow::Result<Option<Tail>> {
    // (start, end, segment index or None for a gap), sorted by start.
    let mut items: Vec<(LogPos, LogPos, Option<usize>)> = segs
        .iter()
        .enumerate()
        .map(|(i, s)| (s.key.start, s.key.end, Some(i)))
        .chain(gaps.iter().map(|g| (g.start, g.end, None)))
        .collect();
    items.sort_by_key(|&(a, b, _)| (a, b));
    let Some(&(_, first_end, first_idx)) = items.first() else {
        return Ok(None);
    };
    let (mut end, mut by) = (first_end, first_idx);
    let mut checked: Option<bool> = None;
    for &(start, stop, idx) in &items[1..] {
        if start <= end {
            if stop > end {
                (end, by, checked) = (stop, idx, None);
            }
            continue;
        }
        let next_file = start == LogPos::new(end.hi + 1, FIRST_EVENT_OFFSET);
        if next_file {
            let complete = match by {
                None => true,
                Some(i) if i + CHECK_RECENT < segs.len() => true,
                Some(i) => segment_ends_file(repo, &segs[i].key).await?,
            };
            if complete {
                (end, by, checked) = (stop, idx, None);
                continue;
            }
            checked = Some(false);
        }
        break;
    }
    let ends_file = match (checked, by) {
        (Some(c), _) => c,
        (None, Some(i)) => segment_ends_file(repo, &segs[i].key).await?,
        (None, None) => false,
    };
    let last_commit = segs
        .iter()
        .filter(|s| s.key.end <= end)
        .filter_map(|s| s.key.tmax)
        .max();
    Ok(Some(Tail {
        end,
        ends_file,
        last_commit,
    }))
}

/// True when the segment at `key` ends with a ROTATE or STOP event (its
/// binlog file is complete).
async fn segment_ends_file(repo: &Repo, key: &SegmentKey) -> anyhow::Result<bool> {
    let (_, payload) = read_segment(repo, key).await?;
    Ok(matches!(
        last_event_type(&payload),
        Some(types::ROTATE | types::STOP)
    ))
}

fn mysql_kind(e: &anyhow::Error) -> Option<ErrorKind> {
    e.downcast_ref::<MysqlError>().map(|m| m.kind())
}

impl Connection for Archiver {
    async fn session(&mut self, cancel: &CancellationToken) -> anyhow::Result<Ended> {
        self.engine_session(cancel).await
    }

    fn classify(&self, e: &anyhow::Error) -> Failure {
        if mysql_kind(e).is_some_and(|k| k.is_transient()) {
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
        tracing::info!(
            "binlog durable up to {}",
            show_pos(self.meta.as_ref(), d.pos)
        );
    }
}

impl Archiver {
    /// Where to ask the server to start.
    async fn start_from(&self) -> anyhow::Result<StartFrom> {
        let Some(r) = self.next else {
            return Ok(StartFrom::Beginning);
        };
        let meta = self
            .meta
            .as_ref()
            .ok_or_else(|| anyhow!("binlog base name unknown"))?;
        let mut file = meta.file_name(r.seq);
        // The server's own spelling of the file (padding beyond 6 digits).
        if let Ok(files) = list_binlogs(&self.opts.common.url).await {
            if let Some((f, _)) = files.iter().find(|(f, _)| {
                f.sequence() == Some(r.seq) && f.base() == Some(meta.binlog_basename.as_str())
            }) {
                file = f.0.clone();
            }
        }
        Ok(StartFrom::Position(BinlogPos::new(file, r.offset)))
    }

    async fn engine_session(&mut self, cancel: &CancellationToken) -> anyhow::Result<Ended> {
        let start = self.start_from().await?;
        let mut copts = ClientOptions::new(self.server_id);
        copts.read_timeout = Duration::from_secs(20);
        let client =
            match BinlogClient::connect_with(&self.opts.common.url, copts, start.clone()).await {
                Ok(c) => c,
                Err(e) if e.kind() == ErrorKind::BinlogPurged && self.next.is_some() => {
                    return self.record_gap(e).await;
                }
                Err(e) => return Err(e.into()),
            };
        let now = system_id_of(client.identity())?;
        if now != self.system_id || client.identity().flavor != self.flavor {
            client.close().await;
            return Err(anyhow!(
                "the server now identifies as {now} (was {}); it is a different server, archive it under another --name",
                self.system_id
            ));
        }
        self.setup_repository().await?;
        tracing::info!(server_id = %self.server_id, "streaming binlog from {start}");
        match self.stream(cancel, client).await {
            Err(e) if mysql_kind(&e) == Some(ErrorKind::BinlogPurged) => {
                let Ok(m) = e.downcast::<MysqlError>() else {
                    return Err(anyhow!("binlog purged"));
                };
                self.record_gap(m).await
            }
            other => other,
        }
    }

    /// First successful start: identity and uploader.
    async fn setup_repository(&mut self) -> anyhow::Result<()> {
        self.held
            .start_writing(Writing {
                repo: &self.repo,
                source: &self.source,
                engine: self.flavor.engine(),
                system_id: &self.system_id,
                zstd_level: self.opts.common.zstd_level,
                uploader: self.opts.common.uploader.clone(),
                initial: self.initial,
                reuse: std::mem::take(&mut self.reuse),
            })
            .await
    }

    /// The binlog needed to resume was purged: record the lost stretch up to
    /// the oldest file the server has and continue there.
    async fn record_gap(&mut self, err: MysqlError) -> anyhow::Result<Ended> {
        let Some(r) = self.next else {
            return Err(err.into());
        };
        let files = list_binlogs(&self.opts.common.url).await?;
        let oldest = files
            .first()
            .and_then(|(f, _)| f.sequence())
            .ok_or_else(|| anyhow!("the server lists no binary logs"))?;
        if oldest <= r.seq {
            // The server says purged but still has the file: do not loop.
            return Err(err.into());
        }
        self.setup_repository().await?;
        let end = LogPos::new(oldest, FIRST_EVENT_OFFSET);
        let gap = GapRecord {
            epoch: MYSQL_EPOCH,
            start: r.tail,
            end,
            reason: format!("binlog purged by the server before it was archived: {err}"),
            detected_at: Utc::now(),
            generation: self.held.guard.generation(),
        };
        self.held.record_gap(&self.repo, &self.source, &gap).await?;
        let meta = self.meta.as_ref();
        tracing::error!(
            "GAP: binlog from {} to {} was purged by the server before pitr archived it; \
             point-in-time restore into that stretch is impossible. Take a new base backup \
             (pitr backup) to restore past it. Continuing from {}.",
            show_pos(meta, r.tail),
            show_pos(meta, end),
            show_pos(meta, end)
        );
        self.next = Some(Resume {
            seq: oldest,
            offset: FIRST_EVENT_OFFSET,
            tail: end,
        });
        Ok(Ended::Continue)
    }

    async fn stream(
        &mut self,
        cancel: &CancellationToken,
        client: BinlogClient,
    ) -> anyhow::Result<Ended> {
        let (mut b, mut fresh) = match self.next {
            Some(r) => (SegmentBuilder::new(r.seq, r.offset), false),
            None => (SegmentBuilder::new(0, 0), true),
        };
        let mut tracker = TxnTracker::new();
        let mut ticker = tokio::time::interval(Duration::from_millis(100));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // `next_event` is not cancel-safe (a half-read packet would be lost),
        // so a task reads and the select below only waits on the channel.
        let mut reader = Reader::spawn(client);
        let guard = self.held.guard.clone();
        let result = loop {
            tokio::select! {
                lost = guard.wait_lost() => {
                    // Stop writing at once: nothing more is sealed or stored.
                    reader.stop();
                    break Err(lost.into());
                }
                _ = cancel.cancelled() => {
                    reader.stop();
                    if let Err(e) = self.seal(&mut b).await {
                        break Err(e);
                    }
                    break self.shutdown().await;
                }
                _ = ticker.tick() => {
                    if b.due(self.opts.common.flush_interval) && !self.replaying(&b) {
                        if let Err(e) = self.seal(&mut b).await {
                            break Err(e);
                        }
                    }
                    self.note_durable();
                }
                ev = reader.rx.recv() => {
                    let step = match ev {
                        Some(Ok(Some(ev))) => self.on_event(&mut b, &mut tracker, &mut fresh, ev).await,
                        Some(Ok(None)) | None => Err(MysqlError::new(
                            ErrorKind::ServerGone,
                            "the server ended the binlog stream; pitr reconnects",
                        ).into()),
                        Some(Err(e)) => Err(e.into()),
                    };
                    if let Err(e) = step {
                        // Keep every complete transaction received.
                        break match self.seal(&mut b).await {
                            Ok(()) => Err(e),
                            Err(seal) => Err(seal.context(e.to_string())),
                        };
                    }
                }
            }
        };
        reader.stop();
        result
    }

    async fn on_event(
        &mut self,
        b: &mut SegmentBuilder,
        tracker: &mut TxnTracker,
        fresh: &mut bool,
        ev: RawEvent,
    ) -> anyhow::Result<()> {
        if ev.artificial {
            return Ok(());
        }
        let at = || StartFrom::Position(ev.next_pos.clone());
        let protocol = |msg: String| -> anyhow::Error {
            MysqlError::new(ErrorKind::Protocol, msg)
                .with_position(at())
                .into()
        };
        let file = &ev.next_pos.file;
        let (Some(seq), Some(base)) = (file.sequence(), file.base()) else {
            return Err(protocol(format!(
                "binlog file name {file:?} has no numeric suffix; pitr cannot index it"
            )));
        };
        let start = ev
            .start_pos()
            .ok_or_else(|| protocol("event ends before it starts".into()))?
            .offset;
        self.check_basename(base).await?;
        if *fresh {
            if start != FIRST_EVENT_OFFSET {
                return Err(protocol(format!(
                    "the stream began at offset {start}, not at the start of {file}"
                )));
            }
            b.move_to(seq, start)?;
            *fresh = false;
        }
        let (bseq, boff) = b.expected();
        if seq != bseq {
            if b.has_unsafe() {
                return Err(protocol(format!(
                    "binlog file #{bseq} ended inside a transaction"
                )));
            }
            if seq != bseq + 1 || start != FIRST_EVENT_OFFSET {
                return Err(protocol(format!(
                    "expected the next event at {}, got one at {}:{start}",
                    show_pos(self.meta.as_ref(), LogPos::new(bseq, boff)),
                    file
                )));
            }
            // The previous file ended without ROTATE/STOP (server crash).
            self.seal(b).await?;
            self.bridge(b.safe_end(), seq).await?;
            b.move_to(seq, FIRST_EVENT_OFFSET)?;
        } else if start != boff {
            return Err(protocol(format!(
                "expected the next event at offset {boff} of {file}, got one at {start}"
            )));
        }
        let boundary = tracker
            .feed(&ev)
            .map_err(|e| anyhow::Error::from(e.into_mysql(Some(at()))))?;
        let safe = !tracker.in_transaction();
        b.push(&ev.bytes, boundary.map(|x| x.commit_time), safe);
        let t = ev.header.type_code;
        if (t == types::ROTATE || t == types::STOP) && safe {
            // End of this file: its last segment.
            self.seal(b).await?;
            self.bridge(b.safe_end(), seq + 1).await?;
            let tail = LogPos::new(seq + 1, FIRST_EVENT_OFFSET);
            b.move_to(seq + 1, FIRST_EVENT_OFFSET)?;
            self.next = Some(Resume {
                seq: seq + 1,
                offset: FIRST_EVENT_OFFSET,
                tail,
            });
        } else if safe
            && (self.replay.cuts.contains(&b.safe_end())
                || (!self.replaying(b) && b.safe_bytes() >= self.opts.common.max_segment_bytes))
        {
            self.seal(b).await?;
        }
        Ok(())
    }

    /// True while re-reading a stretch that already has stored segments.
    fn replaying(&self, b: &SegmentBuilder) -> bool {
        let (s, o) = b.expected();
        LogPos::new(s, o) < self.replay.until
    }

    /// Learns (and stores once) the binlog base name; a change is an error.
    async fn check_basename(&mut self, base: &str) -> anyhow::Result<()> {
        match &self.meta {
            Some(m) if m.binlog_basename == base => Ok(()),
            Some(m) => Err(anyhow!(
                "the server's binlog base name changed from {:?} to {base:?}; archive it under a new --name",
                m.binlog_basename
            )),
            None => {
                let meta = MysqlMeta {
                    binlog_basename: base.to_string(),
                    flavor: flavor_name(self.flavor).to_string(),
                };
                ensure_meta(&self.repo, &self.source, &meta).await?;
                self.meta = Some(meta);
                Ok(())
            }
        }
    }

    /// Stores an empty segment `[end of file, (next_seq, 4))`: it records
    /// that the binlog file ended at `from` and the log continues at the
    /// start of the next file, so the catalog sees the archive as contiguous
    /// across rotations by exact positions (a missing file tail stays a
    /// visible hole).
    async fn bridge(&mut self, from: LogPos, next_seq: u64) -> anyhow::Result<()> {
        let to = LogPos::new(next_seq, FIRST_EVENT_OFFSET);
        if from >= to {
            return Ok(());
        }
        let Some(up) = &self.held.uploader else {
            return Err(anyhow!("uploader not started"));
        };
        up.submit(crate::archive::pipeline::SealedSegment {
            epoch: MYSQL_EPOCH,
            start: from,
            end: to,
            first_commit: None,
            last_commit: None,
            records: 0,
            raw: Vec::new(),
        })
        .await?;
        self.next = Some(Resume {
            seq: next_seq,
            offset: FIRST_EVENT_OFFSET,
            tail: to,
        });
        Ok(())
    }

    /// Seals the transaction-complete part of `b` and queues it.
    async fn seal(&mut self, b: &mut SegmentBuilder) -> anyhow::Result<()> {
        let Some(seg) = b.take_safe() else {
            return Ok(());
        };
        let end = seg.end;
        let Some(up) = &self.held.uploader else {
            return Err(anyhow!("uploader not started"));
        };
        up.submit(seg).await?;
        self.next = Some(Resume {
            seq: end.hi,
            offset: end.lo,
            tail: end,
        });
        Ok(())
    }

    fn note_durable(&self) {
        if let Some(d) = self.held.uploader.as_ref().and_then(|u| u.durable()) {
            self.held.progress.note_durable(&d);
        }
    }

    /// Waits until everything submitted is durable.
    async fn shutdown(&mut self) -> anyhow::Result<Ended> {
        let Some(up) = self.held.uploader.take() else {
            return Ok(Ended::Shutdown);
        };
        let durable = up.finish().await?;
        if let Some(d) = durable {
            self.held.progress.note_durable(&d);
            tracing::info!(
                "stored binlog up to {}",
                show_pos(self.meta.as_ref(), d.pos)
            );
        }
        Ok(Ended::Shutdown)
    }
}
