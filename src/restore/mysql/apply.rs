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
//! FORMAT_DESCRIPTION events are taken from every file, also from its
//! skipped part. Moving to the next file requires the previous one to have
//! ended with a ROTATE event (otherwise its tail was never archived).

use std::collections::VecDeque;

use anyhow::{anyhow, Context as _};
use bytes::Bytes;
use pitr_mysql::conn::{Conn, ConnParams};
use pitr_mysql::event::{types, EventHeader};
use pitr_mysql::replay::{SqlReplayer, Statement};
use pitr_mysql::{
    BinlogFile, BinlogPos, Flavor, Gtid, MariaGtidPos, MysqlGtidSet, RawEvent, TxnTracker,
};
use pitr_segment::LogPos;
use serde::Serialize;

use crate::archive::keys::SegmentKey;
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
}

/// Fetches and decodes a segment: (start, payload).
async fn fetch(repo: Repo, key: String) -> anyhow::Result<(LogPos, Vec<u8>)> {
    let sk = SegmentKey::parse(&key).map_err(|e| anyhow!("{e}"))?;
    let body = repo
        .get(&key)
        .await
        .map_err(|e| anyhow!("reading {key}: {e}"))?;
    let (meta, payload) = tokio::task::spawn_blocking(move || pitr_segment::decode(&body))
        .await
        .map_err(|e| anyhow!("decoding {key}: {e}"))?
        .map_err(|e| anyhow!("segment {key} is damaged: {e}"))?;
    // A segment ends in its own file, or (ending a file) at offset 4 of the next.
    let ends_right = if sk.end.hi == sk.start.hi {
        sk.start.lo + payload.len() as u64 == sk.end.lo
    } else {
        sk.end.hi == sk.start.hi + 1 && sk.end.lo == 4
    };
    if meta.header.start != sk.start || !ends_right {
        return Err(anyhow!(
            "segment {key} does not hold what its key says (start {} / {} bytes)",
            meta.header.start,
            payload.len()
        ));
    }
    Ok((sk.start, payload))
}

/// Splits a payload into events.
fn split_events(payload: &[u8], start: LogPos) -> anyhow::Result<Vec<(u64, &[u8])>> {
    let mut out = Vec::new();
    let mut off = 0usize;
    while off < payload.len() {
        let len = payload
            .get(off + 9..off + 13)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .filter(|l| *l >= 19 && off + l <= payload.len())
            .ok_or_else(|| {
                anyhow!(
                    "archived binlog is damaged: no whole event at {}:{}",
                    start.hi,
                    start.lo + off as u64
                )
            })?;
        out.push((start.lo + off as u64, &payload[off..off + len]));
        off += len;
    }
    Ok(out)
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
) -> anyhow::Result<ApplyReport> {
    let binlog_file = &BinlogFile::new(backup.binlog_file.clone());
    let backup_gtid = backup.gtid.as_str();
    let source_system_id = backup.system_id.as_str();
    let mut rep = ApplyReport::default();
    let mut replayer = SqlReplayer::new(flavor, true);
    let mut tracker = TxnTracker::new();
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
    let stop_pos = match target {
        MysqlTarget::Position(p) => p.to_log_pos(),
        _ => None,
    };
    let mut conn = Conn::connect(params, std::time::Duration::from_secs(15))
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let max_packet: usize =
        crate::backup::mysql::dump::q1(&mut conn, "SELECT @@max_allowed_packet")
            .await?
            .and_then(|v| v.parse().ok())
            .unwrap_or(usize::MAX);
    if flavor == Flavor::MySql {
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

    if let Some(k) = &plan.fde_segment {
        let (start, payload) = fetch(repo.clone(), k.clone()).await?;
        if let Some((_, ev)) = split_events(&payload, start)?.first() {
            if ev.get(4) == Some(&types::FORMAT_DESCRIPTION) {
                replayer
                    .format_description(ev)
                    .map_err(|e| anyhow!("{e}"))?;
            }
        }
    }

    let mut keys: VecDeque<String> = plan.segments.iter().cloned().collect();
    let mut next = keys
        .pop_front()
        .map(|k| tokio::spawn(fetch(repo.clone(), k)));
    let mut pending: Vec<(u64, Bytes)> = Vec::new();
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
        for (off, ev) in split_events(&payload, start)? {
            let header = EventHeader::parse(ev).map_err(|e| anyhow!("at {file}:{off}: {e}"))?;
            rep.events += 1;
            prev_file = Some((start.hi, header.type_code == types::ROTATE));
            if header.type_code == types::FORMAT_DESCRIPTION {
                replayer
                    .format_description(ev)
                    .map_err(|e| anyhow!("at {file}:{off}: {e}"))?;
            }
            let raw = RawEvent {
                bytes: Bytes::copy_from_slice(ev),
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
                rep.transactions_skipped += 1;
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
            for (eoff, ev) in &events {
                let stmts = replayer
                    .event(ev)
                    .map_err(|e| anyhow!("at {file}:{eoff}: {e}"))?;
                for s in stmts {
                    run(&mut conn, &s, max_packet)
                        .await
                        .with_context(|| format!("applying the transaction at {file}:{eoff}"))?;
                    rep.statements += 1;
                }
            }
            rep.transactions_applied += 1;
            rep.last_applied_position = Some(b.end_pos.to_string());
            rep.last_applied_commit_time_us = Some(b.commit_time.0);
            if let Some(g) = b.gtid {
                rep.last_applied_gtid = Some(g.to_string());
                match g {
                    Gtid::MariaDb(m) => maria_have.update(m),
                    Gtid::MySql(m) => mysql_have.add(m),
                }
            }
            if goal.reached(&maria_have, &mysql_have) {
                rep.stopped = "GTID target reached".into();
                break 'segments;
            }
        }
    }
    if let Some(h) = next.take() {
        h.abort();
    }
    conn.shutdown().await;
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

async fn run(conn: &mut Conn, s: &Statement, max_packet: usize) -> anyhow::Result<()> {
    // A row statement is one BINLOG statement (see `pitr_mysql::replay`).
    if s.as_bytes().len() + 1 > max_packet {
        return Err(anyhow!(
            "a statement of {} bytes exceeds the target's max_allowed_packet ({max_packet}); raise it on the target (SET GLOBAL max_allowed_packet={}) and restore again",
            s.as_bytes().len(),
            (s.as_bytes().len() + (1 << 20)).next_power_of_two()
        ));
    }
    match s {
        Statement::Text(t) => {
            conn.query(t).await.map_err(|e| {
                let short: String = t.chars().take(200).collect();
                anyhow!("{e} (statement: {short})")
            })?;
            Ok(())
        }
        Statement::Bytes(_) => Err(anyhow!(
            "a logged statement is not valid UTF-8 text; statements in other character sets cannot be replayed yet"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
