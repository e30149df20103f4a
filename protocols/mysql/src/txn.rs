//! Sans-IO transaction-boundary tracker.
//!
//! An archiver may only cut a segment where a transaction (an "event group")
//! ends, so that every segment replays on its own. Groups look like this in
//! a binlog (both flavours):
//!
//! ```text
//! GTID [QUERY BEGIN | XA START] ... (TABLE_MAP, ROWS, QUERY)* XID | QUERY COMMIT | QUERY XA PREPARE | XA_PREPARE
//! GTID QUERY <ddl or other standalone statement>
//! GTID QUERY "XA COMMIT ..." | "XA ROLLBACK ..."
//! GTID TRANSACTION_PAYLOAD            (MySQL binlog_transaction_compression)
//! ```
//!
//! MySQL without GTIDs writes ANONYMOUS_GTID instead of GTID; very old
//! servers write no GTID event at all (then a QUERY outside BEGIN is a group).
//! The commit time of a group is MySQL's `immediate_commit_timestamp` (µs)
//! from its GTID event when present, otherwise the ending event's header
//! timestamp (seconds) × 10⁶ — the only commit time MariaDB records.

use pitr_segment::TimestampMicros;

use crate::client::RawEvent;
use crate::error::DecodeError;
use crate::event::EventData;
use crate::gtid::Gtid;
use crate::pos::BinlogPos;

/// A completed transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnBoundary {
    /// `None` for anonymous transactions (MySQL gtid_mode=OFF, old servers).
    pub gtid: Option<Gtid>,
    /// Position of the group's first event (its GTID event), when known.
    pub start_pos: Option<BinlogPos>,
    /// Position right after the group's last event: a safe cut point.
    pub end_pos: BinlogPos,
    pub commit_time: TimestampMicros,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Between groups.
    Idle,
    /// A GTID event was seen; the next event decides the group's shape.
    AfterGtid,
    /// Inside BEGIN ... COMMIT.
    InGroup,
}

/// Feeds on [`RawEvent`]s and reports each transaction end.
#[derive(Debug, Clone)]
pub struct TxnTracker {
    state: State,
    gtid: Option<Gtid>,
    gtid_commit_micros: Option<u64>,
    start_pos: Option<BinlogPos>,
    max_timestamp: u32,
}

impl Default for TxnTracker {
    fn default() -> Self {
        TxnTracker::new()
    }
}

impl TxnTracker {
    pub fn new() -> TxnTracker {
        TxnTracker {
            state: State::Idle,
            gtid: None,
            gtid_commit_micros: None,
            start_pos: None,
            max_timestamp: 0,
        }
    }

    /// True while inside an event group: cutting here would split a transaction.
    pub fn in_transaction(&self) -> bool {
        self.state != State::Idle
    }

    /// Processes one event; returns the boundary if it ended a transaction.
    /// Artificial events are ignored.
    pub fn feed(&mut self, ev: &RawEvent) -> Result<Option<TxnBoundary>, DecodeError> {
        if ev.artificial {
            return Ok(None);
        }
        let data = ev.decode()?;
        let ts = ev.header.timestamp;
        match data {
            EventData::MysqlGtid(g) => {
                self.begin(ev, g.gtid.map(Gtid::MySql));
                self.gtid_commit_micros = g.immediate_commit_micros.filter(|m| *m > 0);
                Ok(None)
            }
            EventData::MariaGtid(g) => {
                self.begin(ev, Some(Gtid::MariaDb(g.gtid)));
                Ok(None)
            }
            EventData::Xid(_) | EventData::XaPrepare { .. } => Ok(Some(self.end(ev, ts))),
            // MySQL binlog_transaction_compression: the payload holds the whole
            // transaction (BEGIN ... XID) after its GTID event.
            EventData::TransactionPayload => {
                if self.state == State::Idle {
                    self.start_pos = ev.start_pos();
                }
                Ok(Some(self.end(ev, ts)))
            }
            EventData::Query(q) => {
                self.max_timestamp = self.max_timestamp.max(ts);
                if q.is_group_end() {
                    return Ok(Some(self.end(ev, ts)));
                }
                match self.state {
                    State::AfterGtid if q.is_begin() => {
                        self.state = State::InGroup;
                        Ok(None)
                    }
                    State::Idle if q.is_begin() => {
                        self.start_pos = ev.start_pos();
                        self.state = State::InGroup;
                        Ok(None)
                    }
                    // A standalone statement (DDL, or a group without GTID events).
                    State::AfterGtid => Ok(Some(self.end(ev, ts))),
                    State::Idle => {
                        self.start_pos = ev.start_pos();
                        Ok(Some(self.end(ev, ts)))
                    }
                    State::InGroup => Ok(None),
                }
            }
            _ => {
                if self.state != State::Idle {
                    self.max_timestamp = self.max_timestamp.max(ts);
                }
                Ok(None)
            }
        }
    }

    fn begin(&mut self, ev: &RawEvent, gtid: Option<Gtid>) {
        self.state = State::AfterGtid;
        self.gtid = gtid;
        self.gtid_commit_micros = None;
        self.start_pos = ev.start_pos();
        self.max_timestamp = ev.header.timestamp;
    }

    fn end(&mut self, ev: &RawEvent, ts: u32) -> TxnBoundary {
        let secs = self.max_timestamp.max(ts);
        let micros = match self.gtid_commit_micros {
            Some(m) => i64::try_from(m).unwrap_or(i64::MAX),
            None => i64::from(secs) * 1_000_000,
        };
        let b = TxnBoundary {
            gtid: self.gtid.take(),
            start_pos: self.start_pos.take(),
            end_pos: ev.next_pos.clone(),
            commit_time: TimestampMicros(micros),
        };
        self.state = State::Idle;
        self.gtid_commit_micros = None;
        self.max_timestamp = 0;
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::tests::build;
    use crate::event::{maria_flags, types, DecodeCtx, EventHeader};
    use bytes::Bytes;

    const CTX: DecodeCtx = DecodeCtx {
        checksum: true,
        table_id_len: 6,
        query_post_header: 13,
    };

    struct Log {
        offset: u64,
        ts: u32,
    }

    impl Log {
        fn ev(&mut self, t: u8, body: &[u8]) -> RawEvent {
            let mut bytes = build(t, 1, 0, 0, body, true);
            self.offset += bytes.len() as u64;
            bytes[13..17].copy_from_slice(&(self.offset as u32).to_le_bytes());
            bytes[0..4].copy_from_slice(&self.ts.to_le_bytes());
            let len = bytes.len();
            let c = crate::event::compute_checksum(&bytes[..len - 4]);
            bytes[len - 4..].copy_from_slice(&c.to_le_bytes());
            RawEvent {
                header: EventHeader::parse(&bytes).unwrap(),
                bytes: Bytes::from(bytes),
                next_pos: BinlogPos::new("bin.000001", self.offset),
                artificial: false,
                ctx: CTX,
            }
        }
        fn query(&mut self, q: &str) -> RawEvent {
            let mut b = vec![0u8; 13];
            b.push(0);
            b.extend_from_slice(q.as_bytes());
            self.ev(types::QUERY, &b)
        }
        fn maria_gtid(&mut self, seq: u64, flags: u8) -> RawEvent {
            let mut b = seq.to_le_bytes().to_vec();
            b.extend_from_slice(&0u32.to_le_bytes());
            b.push(flags);
            self.ev(types::MARIA_GTID, &b)
        }
        fn mysql_gtid(&mut self, gno: u64, micros: u64) -> RawEvent {
            let mut b = vec![0u8];
            b.extend_from_slice(&[7u8; 16]);
            b.extend_from_slice(&gno.to_le_bytes());
            b.push(2);
            b.extend_from_slice(&[0u8; 16]);
            b.extend_from_slice(&micros.to_le_bytes()[..7]);
            b.push(10);
            self.ev(types::GTID, &b)
        }
        fn xid(&mut self) -> RawEvent {
            self.ev(types::XID, &5u64.to_le_bytes())
        }
        fn rows(&mut self) -> RawEvent {
            self.ev(types::WRITE_ROWS, &[1, 0, 0, 0, 0, 0, 0, 0, 2, 0])
        }
    }

    fn run(t: &mut TxnTracker, evs: Vec<RawEvent>) -> Vec<(usize, TxnBoundary)> {
        evs.iter()
            .enumerate()
            .filter_map(|(i, e)| t.feed(e).unwrap().map(|b| (i, b)))
            .collect()
    }

    #[test]
    fn maria_groups() {
        let mut l = Log {
            offset: 4,
            ts: 1000,
        };
        let mut t = TxnTracker::new();
        let evs = vec![
            l.maria_gtid(1, maria_flags::FL_STANDALONE | maria_flags::FL_DDL),
            l.query("CREATE TABLE t (a int)"),
            l.maria_gtid(2, maria_flags::FL_TRANSACTIONAL),
            l.query("BEGIN"),
            l.rows(),
            l.xid(),
            l.maria_gtid(3, 0),
            l.query("BEGIN"),
            l.query("INSERT INTO myisam_t VALUES (1)"),
            l.query("COMMIT"),
        ];
        let ends = run(&mut t, evs.clone());
        assert_eq!(ends.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [1, 5, 9]);
        let seqs: Vec<String> = ends
            .iter()
            .map(|(_, b)| b.gtid.unwrap().to_string())
            .collect();
        assert_eq!(seqs, ["0-1-1", "0-1-2", "0-1-3"]);
        for (i, b) in &ends {
            assert_eq!(b.end_pos, evs[*i].next_pos);
            assert_eq!(b.commit_time, TimestampMicros(1_000_000_000));
        }
        assert_eq!(ends[1].1.start_pos, evs[2].start_pos());
        assert!(!t.in_transaction());
    }

    #[test]
    fn in_transaction_tracks_open_groups() {
        let mut l = Log { offset: 4, ts: 5 };
        let mut t = TxnTracker::new();
        assert!(t.feed(&l.maria_gtid(1, 0)).unwrap().is_none());
        assert!(t.in_transaction());
        assert!(t.feed(&l.query("BEGIN")).unwrap().is_none());
        assert!(t.feed(&l.rows()).unwrap().is_none());
        assert!(t.in_transaction());
        l.ts = 7;
        let b = t.feed(&l.xid()).unwrap().unwrap();
        assert_eq!(b.commit_time, TimestampMicros(7_000_000));
        assert!(!t.in_transaction());
    }

    #[test]
    fn mysql_commit_timestamp_wins() {
        let mut l = Log {
            offset: 4,
            ts: 1000,
        };
        let mut t = TxnTracker::new();
        let evs = vec![
            l.mysql_gtid(8, 1_000_000_123_456),
            l.query("BEGIN"),
            l.rows(),
            l.xid(),
            l.mysql_gtid(9, 1_000_000_200_000),
            l.query("XA START X'31',X'',1"),
            l.rows(),
            l.query("XA END X'31',X'',1"),
            l.ev(types::XA_PREPARE, &[0, 1, 0, 0, 0]),
            l.mysql_gtid(10, 1_000_000_300_000),
            l.query("XA COMMIT X'31',X'',1"),
        ];
        let ends = run(&mut t, evs);
        assert_eq!(ends.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [3, 8, 10]);
        // A compressed transaction: GTID then one TRANSACTION_PAYLOAD event.
        let g = l.mysql_gtid(11, 1_000_000_400_000);
        assert!(t.feed(&g).unwrap().is_none());
        let b = t
            .feed(&l.ev(types::TRANSACTION_PAYLOAD, &[1, 2, 3]))
            .unwrap()
            .unwrap();
        assert_eq!(b.commit_time, TimestampMicros(1_000_000_400_000));
        assert_eq!(b.start_pos, g.start_pos());
        assert_eq!(ends[0].1.commit_time, TimestampMicros(1_000_000_123_456));
        let Some(Gtid::MySql(g)) = ends[2].1.gtid else {
            panic!()
        };
        assert_eq!(g.gno, 10);
    }

    #[test]
    fn groups_without_gtid_events() {
        let mut l = Log { offset: 4, ts: 3 };
        let mut t = TxnTracker::new();
        let evs = vec![
            l.query("CREATE DATABASE d"),
            l.query("BEGIN"),
            l.rows(),
            l.xid(),
        ];
        let ends = run(&mut t, evs);
        assert_eq!(ends.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0, 3]);
        assert!(ends.iter().all(|(_, b)| b.gtid.is_none()));
    }

    #[test]
    fn artificial_events_are_ignored() {
        let mut l = Log { offset: 4, ts: 3 };
        let mut t = TxnTracker::new();
        let mut q = l.query("CREATE DATABASE d");
        q.artificial = true;
        assert!(t.feed(&q).unwrap().is_none());
        assert!(!t.in_transaction());
    }
}
