//! Applies archived binlog segments to a target server, transaction by
//! transaction, stopping exactly at the target.
//!
//! Each segment object is fetched (the next one is read ahead while the
//! current one is applied), verified and decoded with `pitr_segment::decode`;
//! its payload is split into events by the event length in each header
//! (bytes 9..13, little-endian), event `i` of a segment starting at
//! `LogPos{hi: file, lo: off}` starting at `off + sum of the previous
//! lengths`. A [`TxnTracker`] finds each transaction's end, GTID and commit
//! time; events of a transaction are held until its end, then either
//!
//! * skipped: it ends at or before the backup's coordinates (its effects
//!   are in the backup);
//! * or, if the target includes it, turned into statements by
//!   [`SqlReplayer`] and executed on the target;
//! * or the restore stops: time target — it committed after the target
//!   time; position target — it ends after the target position. GTID
//!   targets stop right after the last transaction needed to reach them.
//!
//! Each transaction's statements go to the target as one multi-statement
//! query (one round trip; the connection enables `CLIENT_MULTI_STATEMENTS`),
//! or one by one when together they exceed the target's
//! `max_allowed_packet`. An error names the event of the failing statement.
//! Reading and decoding run ahead of execution: transaction N+1 is turned
//! into SQL while the target executes transaction N (a bounded queue of
//! [`QUEUE`] transactions between the two).
//!
//! FORMAT_DESCRIPTION events are taken from every file, also from its
//! skipped part. Moving to the next file requires the previous one to have
//! ended with a ROTATE event (otherwise its tail was never archived).

use std::collections::VecDeque;
use std::sync::Arc;

use anyhow::anyhow;
use bytes::Bytes;
use pitr_mysql::conn::{Conn, ConnParams};
use pitr_mysql::event::{types, DecodeCtx, EventHeader};
use pitr_mysql::replay::{SqlReplayer, Statement};
use pitr_mysql::EventData;
use pitr_mysql::{
    BinlogFile, BinlogPos, Flavor, Gtid, MariaGtidPos, MysqlGtidSet, RawEvent, TxnTracker,
};
use pitr_segment::LogPos;
use serde::Serialize;

use crate::archive::keys::SegmentKey;
use crate::archive::segment_read::{read_segment, SegmentReadError};
use crate::backup::mysql::manifest::MysqlManifest;
use crate::restore::mysql::plan::{MysqlPlan, MysqlTarget};
use crate::storage::Repo;

/// What the replay did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ApplyReport {
    pub transactions_applied: u64,
    pub transactions_skipped: u64,
    pub statements: u64,
    pub events: u64,
    pub last_applied_gtid: Option<String>,
    pub last_applied_position: Option<String>,
    pub last_applied_commit_time_us: Option<i64>,
    /// Why the replay stopped.
    pub stopped: String,
    /// Connections the transactions were applied over.
    pub connections: usize,
    /// Transactions that ran alone (not only row changes, or rows whose keys
    /// could not be compared).
    pub transactions_alone: u64,
    /// Re-runs after a lock conflict between independent transactions.
    pub lock_retries: u64,
}

/// How to apply.
#[derive(Debug, Clone, Copy)]
pub struct ApplyOptions {
    /// Connections transactions are applied over (1: one after another).
    pub connections: usize,
    /// `SET SESSION sql_log_bin=0` on the target.
    pub skip_binlog: bool,
}

/// Fetches and decodes a segment: (start, payload).
async fn fetch(repo: Repo, key: String) -> anyhow::Result<(LogPos, Vec<u8>)> {
    let sk = SegmentKey::parse(&key)?;
    let (_, payload) = read_segment(&repo, &sk).await.map_err(|e| match e {
        SegmentReadError::Gone { .. } => anyhow!(
            "segment {key} was in the repository when the restore planned on it but is gone (deleted by prune or another process?); the target holds part of the log: restore again into an empty server"
        ),
        e => e.into(),
    })?;
    // A segment ends in its own file, or (ending a file) at offset 4 of the next.
    let ends_right = if sk.end.hi == sk.start.hi {
        sk.start.lo + payload.len() as u64 == sk.end.lo
    } else {
        sk.end.hi == sk.start.hi + 1 && sk.end.lo == 4
    };
    if !ends_right {
        return Err(anyhow!(
            "segment {key} does not hold what its key says ({} bytes)",
            payload.len()
        ));
    }
    Ok((sk.start, payload))
}

/// Splits a payload into events.
fn split_events(payload: &[u8], start: LogPos) -> anyhow::Result<Vec<(u64, &[u8])>> {
    pitr_mysql::event::split(payload)
        .map(|e| match e {
            Ok((off, ev)) => Ok((start.lo + off as u64, ev)),
            Err(off) => Err(anyhow!(
                "archived binlog is damaged: no whole event at {}:{}",
                start.hi,
                start.lo + off as u64
            )),
        })
        .collect()
}

/// Progress towards a GTID target.
#[derive(Debug, Clone)]
enum GtidGoal {
    None,
    Maria(MariaGtidPos),
    Mysql(MysqlGtidSet),
}

impl GtidGoal {
    /// True once every GTID of the target is applied (or in `have`).
    fn reached(&self, maria: &MariaGtidPos, mysql: &MysqlGtidSet) -> bool {
        match self {
            GtidGoal::None => false,
            GtidGoal::Maria(t) => t
                .gtids()
                .all(|g| maria.get(g.domain).is_some_and(|h| h.seq >= g.seq)),
            GtidGoal::Mysql(t) => t.is_subset(mysql),
        }
    }
}

/// Replays the planned segments onto the target.
pub async fn apply_log(
    repo: &Repo,
    plan: &MysqlPlan,
    target: &MysqlTarget,
    backup: &MysqlManifest,
    flavor: Flavor,
    params: &ConnParams,
    opts: ApplyOptions,
) -> anyhow::Result<ApplyReport> {
    let ApplyOptions {
        connections,
        skip_binlog: no_binlog,
    } = opts;
    let binlog_file = &BinlogFile::new(backup.binlog_file.clone());
    let backup_gtid = backup.gtid.as_str();
    let source_system_id = backup.system_id.as_str();
    let mut rep = ApplyReport::default();
    // Without the target's binlog there are no GTIDs to keep.
    let mut replayer = SqlReplayer::new(flavor, !no_binlog);
    let goal = match target {
        MysqlTarget::MariaGtid(g) => GtidGoal::Maria(g.clone()),
        MysqlTarget::MysqlGtid(g) => GtidGoal::Mysql(g.clone()),
        _ => GtidGoal::None,
    };
    let mut maria_have: MariaGtidPos = match flavor {
        Flavor::MariaDb => backup_gtid.parse().unwrap_or_default(),
        Flavor::MySql => MariaGtidPos::new(),
    };
    let mut mysql_have: MysqlGtidSet = match flavor {
        Flavor::MySql => backup_gtid.parse().unwrap_or_default(),
        Flavor::MariaDb => MysqlGtidSet::new(),
    };
    if goal.reached(&maria_have, &mysql_have) {
        rep.stopped = "the backup already is at the GTID target".into();
        return Ok(rep);
    }
    let mut conn = Conn::connect(params, std::time::Duration::from_secs(15)).await?;
    let max_packet: usize =
        crate::backup::mysql::dump::q1(&mut conn, "SELECT @@max_allowed_packet")
            .await?
            .and_then(|v| v.parse().ok())
            .unwrap_or(usize::MAX);
    if flavor == Flavor::MySql && !no_binlog {
        // GTID_NEXT needs gtid_mode=ON on the target, and a target that already
        // executed GTIDs of the source would silently skip those transactions:
        // then let the target assign its own GTIDs.
        let rows =
            crate::backup::mysql::dump::q(&mut conn, "SELECT @@gtid_mode, @@gtid_executed").await?;
        let row = rows.into_iter().next().unwrap_or_default();
        let on = row
            .first()
            .cloned()
            .flatten()
            .is_some_and(|m| m.eq_ignore_ascii_case("ON"));
        let executed: String = row
            .get(1)
            .cloned()
            .flatten()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        let seen = !source_system_id.is_empty()
            && executed
                .to_ascii_lowercase()
                .contains(&source_system_id.to_ascii_lowercase());
        if on && seen {
            eprintln!(
                "note: the target already executed GTIDs of the source ({source_system_id}); replayed transactions get new GTIDs"
            );
        }
        replayer = SqlReplayer::new(flavor, on && !seen);
    }
    let mut connections = connections.max(1);
    if flavor == Flavor::MariaDb && connections > 1 && !no_binlog {
        // Transactions committed out of log order would give a binlogging
        // target with gtid_strict_mode out-of-order sequence numbers.
        let strict =
            crate::backup::mysql::dump::q1(&mut conn, "SELECT @@gtid_strict_mode AND @@log_bin")
                .await?;
        if strict.as_deref() == Some("1") {
            eprintln!(
                "note: the target runs with gtid_strict_mode and a binlog; applying over one connection"
            );
            connections = 1;
        }
    }
    replayer.external_format_description();
    // Small statements of a transaction share one BINLOG statement, well
    // inside the packet limit (base64 adds a third).
    replayer.merge_row_statements((max_packet / 4).min(1 << 20));

    if let Some(k) = &plan.fde_segment {
        let (start, payload) = fetch(repo.clone(), k.clone()).await?;
        if let Some((_, ev)) = split_events(&payload, start)?.first() {
            if ev.get(4) == Some(&types::FORMAT_DESCRIPTION) {
                replayer.format_description(ev)?;
            }
        }
    }

    // Decoding runs ahead of execution: transaction N+1 is turned into SQL
    // while the target executes transaction N.
    let (tx, rx) = tokio::sync::mpsc::channel::<Item>(QUEUE);
    let mut prod = Produced::default();
    let producer = async {
        let r = produce(
            repo,
            plan,
            target,
            binlog_file,
            &mut replayer,
            &goal,
            &mut maria_have,
            &mut mysql_have,
            max_packet,
            &mut prod,
            &tx,
        )
        .await;
        if let Err(e) = r {
            let _ = tx.send(Item::Fail(e)).await;
        }
        drop(tx);
    };
    // The consumer owns the receiver: when applying fails, dropping it
    // releases a producer waiting for room in the queue.
    let consumer = super::parallel::run(
        rx,
        params,
        super::parallel::Settings {
            connections,
            max_packet,
            flavor,
            no_binlog,
            checks: conn,
        },
        &mut rep,
    );
    let ((), applied) = tokio::join!(producer, consumer);
    applied?;
    rep.events = prod.events;
    rep.transactions_skipped = prod.skipped;
    rep.stopped = prod.stopped;
    if !matches!(goal, GtidGoal::None) && !goal.reached(&maria_have, &mysql_have) {
        return Err(anyhow!(
            "{target} was not reached: the archive ends after {} (applied up to GTID {})",
            rep.last_applied_position
                .as_deref()
                .unwrap_or(plan.backup_position.as_str()),
            rep.last_applied_gtid
                .as_deref()
                .unwrap_or(plan.backup_gtid.as_str())
        ));
    }
    if rep.stopped.is_empty() {
        rep.stopped = "end of the archived binlog".into();
    }
    Ok(rep)
}

/// Transactions decoded ahead of the one being executed.
const QUEUE: usize = 32;
/// Bytes of SQL decoded ahead of the transaction being executed (one
/// larger transaction is let through alone).
const QUEUE_BYTES: usize = 64 << 20;

/// One transaction to execute on the target.
pub(super) struct TxnJob {
    pub(super) file: BinlogFile,
    pub(super) body: Body,
    pub(super) end_pos: BinlogPos,
    pub(super) commit_time: i64,
    pub(super) gtid: Option<Gtid>,
    /// The transaction's events when it only changes rows (GTID, BEGIN,
    /// TABLE_MAP, rows events, COMMIT/XID): their keys let it run beside
    /// others. `None`: it runs alone.
    pub(super) rows: Option<Vec<Bytes>>,
    /// Decoding context of its events.
    pub(super) ctx: DecodeCtx,
    /// The FORMAT_DESCRIPTION event its connection must have been sent.
    pub(super) fde: Option<Arc<Vec<u8>>>,
    /// Share of [`QUEUE_BYTES`] held until the transaction is executed.
    _room: tokio::sync::OwnedSemaphorePermit,
}

/// A transaction's statements, each with the offset of its event.
pub(super) enum Body {
    /// All statements as one multi-statement query, and for error messages
    /// the first 200 characters of each.
    Batch {
        sql: Vec<u8>,
        stmts: Vec<(u64, String)>,
    },
    /// Sent one by one: together they exceed the target's
    /// max_allowed_packet, or one is not text.
    Each(Vec<(u64, Statement)>),
}

impl Body {
    fn new(stmts: Vec<(u64, Statement)>, max_packet: usize) -> Body {
        match join_statements(&stmts, max_packet) {
            Some(sql) => Body::Batch {
                sql,
                stmts: stmts
                    .into_iter()
                    .map(|(o, s)| {
                        (
                            o,
                            // 200 characters are at most 800 bytes.
                            String::from_utf8_lossy(&s.as_bytes()[..s.as_bytes().len().min(800)])
                                .chars()
                                .take(200)
                                .collect(),
                        )
                    })
                    .collect(),
            },
            None => Body::Each(stmts),
        }
    }

    pub(super) fn len(&self) -> usize {
        match self {
            Body::Batch { stmts, .. } => stmts.len(),
            Body::Each(stmts) => stmts.len(),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Body::Batch { sql, .. } => sql.len(),
            Body::Each(stmts) => stmts.iter().map(|(_, s)| s.as_bytes().len()).sum(),
        }
    }
}

/// What the decoding side hands to the executing side, in log order.
pub(super) enum Item {
    Txn(TxnJob),
    /// Decoding failed here: applying stops after the transactions before it.
    Fail(anyhow::Error),
}

/// What the decoding side counted.
#[derive(Debug, Default)]
struct Produced {
    events: u64,
    skipped: u64,
    stopped: String,
}

/// Joins statements into one multi-statement query: `;` between them, after
/// a newline when the statement's last line may end in a line comment, and
/// none after a statement already ending in `;`. `None` when a statement is
/// not text, ends in `;` on a line that may hold a comment, or the query
/// would not fit in `max_packet`.
fn join_statements(stmts: &[(u64, Statement)], max_packet: usize) -> Option<Vec<u8>> {
    let total: usize = stmts.iter().map(|(_, s)| s.as_bytes().len()).sum();
    if total >= max_packet {
        return None;
    }
    let mut out = Vec::with_capacity(total + 2 * stmts.len());
    for (i, (_, s)) in stmts.iter().enumerate() {
        let Statement::Text(t) = s else { return None };
        out.extend_from_slice(t.as_bytes());
        if i + 1 == stmts.len() {
            break;
        }
        let last_line = t.rsplit('\n').next().unwrap_or_default();
        let comment = last_line.contains('#') || last_line.contains("--");
        match (comment, t.trim_end().ends_with(';')) {
            (false, false) => out.push(b';'),
            (false, true) => {}
            (true, false) => out.extend_from_slice(b"\n;"),
            // Whether that `;` ends the statement or a comment: send one by one.
            (true, true) => return None,
        }
    }
    (out.len() < max_packet).then_some(out)
}

/// Reads the planned segments, decides per transaction (skip / apply /
/// stop) and sends the ones to apply, as SQL, down `tx`.
#[allow(clippy::too_many_arguments)]
async fn produce(
    repo: &Repo,
    plan: &MysqlPlan,
    target: &MysqlTarget,
    binlog_file: &BinlogFile,
    replayer: &mut SqlReplayer,
    goal: &GtidGoal,
    maria_have: &mut MariaGtidPos,
    mysql_have: &mut MysqlGtidSet,
    max_packet: usize,
    rep: &mut Produced,
    tx: &tokio::sync::mpsc::Sender<Item>,
) -> anyhow::Result<()> {
    let mut tracker = TxnTracker::new();
    let room = std::sync::Arc::new(tokio::sync::Semaphore::new(QUEUE_BYTES));
    let stop_pos = match target {
        MysqlTarget::Position(p) => p.to_log_pos(),
        _ => None,
    };
    let mut keys: VecDeque<String> = plan.segments.iter().cloned().collect();
    let mut next = keys
        .pop_front()
        .map(|k| tokio::spawn(fetch(repo.clone(), k)));
    let mut pending: Vec<(u64, Bytes)> = Vec::new();
    let mut fde = replayer
        .format_description_event()
        .map(|f| Arc::new(f.to_vec()));
    let mut prev_file: Option<(u64, bool)> = None; // (file seq, ended with ROTATE)
    let backup_start = plan.backup_start;
    'segments: while let Some(handle) = next.take() {
        let (start, payload) = handle
            .await
            .map_err(|e| anyhow!("segment fetch failed: {e}"))??;
        next = keys
            .pop_front()
            .map(|k| tokio::spawn(fetch(repo.clone(), k)));
        if let Some((seq, rotated)) = prev_file {
            if start.hi != seq && !rotated {
                return Err(anyhow!(
                    "binlog file {seq} does not end with a ROTATE event in the archive: its tail is missing, so the restore cannot continue into file {}",
                    start.hi
                ));
            }
        }
        let file = binlog_file
            .with_sequence(start.hi)
            .ok_or_else(|| anyhow!("cannot name binlog file {} after {binlog_file}", start.hi))?;
        let payload = Bytes::from(payload);
        for (off, ev) in split_events(&payload, start)? {
            let header = EventHeader::parse(ev).map_err(|e| anyhow!("at {file}:{off}: {e}"))?;
            rep.events += 1;
            prev_file = Some((start.hi, header.type_code == types::ROTATE));
            if header.type_code == types::FORMAT_DESCRIPTION {
                replayer
                    .format_description(ev)
                    .map_err(|e| anyhow!("at {file}:{off}: {e}"))?;
                if fde.as_deref().map(|f| &f[..]) != replayer.format_description_event() {
                    fde = replayer
                        .format_description_event()
                        .map(|f| Arc::new(f.to_vec()));
                }
            }
            let raw = RawEvent {
                bytes: payload.slice_ref(ev),
                header,
                next_pos: BinlogPos {
                    file: file.clone(),
                    offset: off + ev.len() as u64,
                },
                artificial: false,
                ctx: replayer.ctx(),
            };
            let boundary = tracker
                .feed(&raw)
                .map_err(|e| anyhow!("at {file}:{off}: {e}"))?;
            if LogPos::new(start.hi, off) >= backup_start {
                pending.push((off, raw.bytes));
            }
            let Some(b) = boundary else { continue };
            let end = LogPos::new(start.hi, b.end_pos.offset);
            let events = std::mem::take(&mut pending);
            if end <= backup_start {
                rep.skipped += 1;
                continue;
            }
            let stop = match target {
                MysqlTarget::Time(t) => (b.commit_time > *t).then(|| {
                    format!(
                        "the next transaction ({}) committed at {} after the target",
                        b.gtid
                            .map(|g| g.to_string())
                            .unwrap_or_else(|| b.end_pos.to_string()),
                        crate::restore::time::utc_text(crate::restore::time::from_micros(
                            b.commit_time
                        ))
                    )
                }),
                MysqlTarget::Position(_) => stop_pos.filter(|p| end > *p).map(|_| {
                    format!(
                        "the next transaction ends at {} after the target position",
                        b.end_pos
                    )
                }),
                _ => None,
            };
            if let Some(why) = stop {
                rep.stopped = why;
                break 'segments;
            }
            let ctx = replayer.ctx();
            let rows_only = rows_only(&events, &ctx);
            if !rows_only {
                // It may run on any connection: give it its whole context.
                replayer.forget_session();
            }
            let mut stmts = Vec::new();
            for (eoff, ev) in &events {
                let s = replayer
                    .event(ev)
                    .map_err(|e| anyhow!("at {file}:{eoff}: {e}"))?;
                stmts.extend(s.into_iter().map(|s| (*eoff, s)));
            }
            let body = Body::new(stmts, max_packet);
            let raw: usize = events.iter().map(|(_, e)| e.len()).sum();
            let cost = (body.bytes() + raw).clamp(1, QUEUE_BYTES) as u32;
            let Ok(room) = room.clone().acquire_many_owned(cost).await else {
                break 'segments;
            };
            let job = TxnJob {
                file: file.clone(),
                body,
                _room: room,
                end_pos: b.end_pos.clone(),
                commit_time: b.commit_time.0,
                gtid: b.gtid,
                rows: rows_only.then(|| events.into_iter().map(|(_, e)| e).collect()),
                ctx,
                fde: fde.clone(),
            };
            if tx.send(Item::Txn(job)).await.is_err() {
                // Applying failed; its error is reported.
                break 'segments;
            }
            if let Some(g) = b.gtid {
                match g {
                    Gtid::MariaDb(m) => maria_have.update(m),
                    Gtid::MySql(m) => mysql_have.add(m),
                }
            }
            if goal.reached(maria_have, mysql_have) {
                rep.stopped = "GTID target reached".into();
                break 'segments;
            }
        }
    }
    if let Some(h) = next.take() {
        h.abort();
    }
    Ok(())
}

/// True when a transaction's events only change rows: GTID, `BEGIN`,
/// TABLE_MAP, (uncompressed) rows events, XID or `COMMIT`, annotations.
fn rows_only(events: &[(u64, Bytes)], ctx: &DecodeCtx) -> bool {
    let mut rows = false;
    for (_, ev) in events {
        let Some(&t) = ev.get(4) else { return false };
        match t {
            t if types::is_plain_rows(t) => rows = true,
            types::GTID
            | types::ANONYMOUS_GTID
            | types::MARIA_GTID
            | types::TABLE_MAP
            | types::XID
            | types::ROWS_QUERY
            | types::MARIA_ANNOTATE_ROWS => {}
            types::QUERY => match pitr_mysql::event::decode(ev, ctx) {
                Ok((_, EventData::Query(q))) => {
                    let w = q.query.trim();
                    if !(w.eq_ignore_ascii_case("BEGIN") || w.eq_ignore_ascii_case("COMMIT")) {
                        return false;
                    }
                }
                _ => return false,
            },
            _ => return false,
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> (u64, Statement) {
        (4, Statement::Text(s.into()))
    }

    #[test]
    fn joins_transaction_statements() {
        let stmts = [
            text("SET TIMESTAMP=1"),
            text("INSERT INTO t VALUES (1) -- note"),
            text("CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW BEGIN SET NEW.a=1; END; "),
            text("COMMIT"),
        ];
        let q = join_statements(&stmts, 1 << 20).unwrap();
        assert_eq!(
            String::from_utf8(q.clone()).unwrap(),
            "SET TIMESTAMP=1;INSERT INTO t VALUES (1) -- note\n;CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW BEGIN SET NEW.a=1; END; COMMIT"
        );
        // Too big for the packet limit, or not text: sent one by one.
        assert!(join_statements(&stmts, q.len()).is_none());
        assert!(join_statements(&stmts, q.len() + 1).is_some());
        let bytes = [text("BEGIN"), (9, Statement::Bytes(vec![0xff]))];
        assert!(join_statements(&bytes, 1 << 20).is_none());
        let unclear = [text("INSERT INTO t VALUES ('#');"), text("COMMIT")];
        assert!(join_statements(&unclear, 1 << 20).is_none());
    }

    #[test]
    fn split_by_event_length() {
        let mut p = Vec::new();
        for len in [19u32, 25, 40] {
            let mut ev = vec![0u8; len as usize];
            ev[9..13].copy_from_slice(&len.to_le_bytes());
            p.extend_from_slice(&ev);
        }
        let evs = split_events(&p, LogPos::new(3, 4)).unwrap();
        let offs: Vec<u64> = evs.iter().map(|(o, _)| *o).collect();
        assert_eq!(offs, [4, 23, 48]);
        assert_eq!(evs[2].1.len(), 40);
        let e = split_events(&p[..p.len() - 1], LogPos::new(3, 4)).unwrap_err();
        assert!(e.to_string().contains("3:48"), "{e}");
    }
}
