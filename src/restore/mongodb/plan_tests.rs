//! Unit tests of the MongoDB restore planner on synthetic catalogs.

use super::*;
use crate::archive::keys::{SegmentKey, SourceName};
use chrono::{DateTime, Utc};
use pitr_segment::Epoch;

fn src() -> SourceName {
    SourceName::new("mongodb-rs0").unwrap()
}

fn ts(secs: u32, inc: u32) -> OplogTs {
    OplogTs { secs, inc }
}

/// Seconds as µs of a wall time.
fn us(secs: i64) -> i64 {
    secs * 1_000_000
}

/// A segment of `term` holding entries from `a` to `b` (inclusive), walls
/// `tmin..tmax` seconds; starting at `start` (the previous end).
fn seg(term: u64, start: OplogTs, last: OplogTs, tmin: i64, tmax: i64) -> SegmentEntry {
    SegmentEntry {
        key: SegmentKey {
            source: src(),
            epoch: Epoch(term),
            start: start.to_log_pos(),
            end: last.pos_after(),
            tmin: Some(TimestampMicros(us(tmin))),
            tmax: Some(TimestampMicros(us(tmax))),
            generation: 0,
        },
        size: 100,
    }
}

fn backup(start: OplogTs, end: OplogTs, end_wall_secs: i64) -> (BackupKey, MongoManifest) {
    let m = MongoManifest {
        format_version: 1,
        kind: "mongodb-logical".into(),
        engine: "mongodb".into(),
        id: format!("b{}", end.secs),
        label: String::new(),
        system_id: "rs0".into(),
        server_version: "7.0.14".into(),
        start: start.into(),
        start_term: 1,
        end: end.into(),
        end_term: 1,
        end_wall: DateTime::<Utc>::from_timestamp(end_wall_secs, 0).unwrap(),
        start_time: Utc::now(),
        stop_time: Utc::now(),
        users: None,
        roles: None,
        collections: vec![],
    };
    let k = BackupKey::new(src(), start.to_log_pos(), &m.id).unwrap();
    (k, m)
}

/// Term 1: entries 100..=199 in three segments; term 2 (after a step-down)
/// continues at the previous end: 200..=299 in two.
fn terms() -> Vec<Vec<SegmentEntry>> {
    vec![
        vec![
            seg(1, ts(100, 1), ts(120, 5), 100, 120),
            seg(1, ts(120, 6), ts(150, 1), 120, 150),
            seg(1, ts(150, 2), ts(199, 1), 150, 199),
        ],
        vec![
            seg(2, ts(199, 2), ts(250, 1), 200, 250),
            seg(2, ts(250, 2), ts(299, 1), 250, 299),
        ],
    ]
}

fn backups() -> Vec<(BackupKey, MongoManifest)> {
    vec![
        backup(ts(110, 1), ts(115, 3), 115),
        backup(ts(160, 1), ts(170, 2), 170),
    ]
}

#[test]
fn chain_runs_across_terms() {
    let chain = oplog_chain(&terms());
    assert_eq!(chain.len(), 5);
    assert!(chain.windows(2).all(|w| w[0].key.end == w[1].key.start));
    assert!(covers(
        &chain,
        ts(110, 1).to_log_pos(),
        ts(260, 0).to_log_pos()
    ));
    assert!(!covers(
        &chain,
        ts(50, 1).to_log_pos(),
        ts(110, 0).to_log_pos()
    ));
    assert!(!covers(
        &chain,
        ts(290, 1).to_log_pos(),
        ts(300, 0).to_log_pos()
    ));
}

#[test]
fn newest_backup_at_or_before_a_ts_target() {
    let chain = oplog_chain(&terms());
    let p = plan_mongo(&chain, &[], &backups(), &MongoTarget::Ts(ts(220, 0))).unwrap();
    assert_eq!(p.backup_id, "b170");
    assert_eq!(p.start_ts, ts(160, 1));
    assert_eq!(p.stop_ts, Some(ts(220, 0)));
    // From the segment holding 160:1 to the one covering 220:0, across the step-down.
    assert_eq!(p.segments.len(), 2);
    assert_eq!(p.terms, vec![1, 2]);
    assert_eq!(p.segments[0], chain[2].key.to_key());
    assert_eq!(p.segments[1], chain[3].key.to_key());
    // A target before the newer backup's consistent point uses the older one.
    let p = plan_mongo(&chain, &[], &backups(), &MongoTarget::Ts(ts(169, 0))).unwrap();
    assert_eq!(p.backup_id, "b115");
    assert_eq!(p.segments.len(), 3);
    // Exactly at a backup's end: that backup, nothing after it needed.
    let p = plan_mongo(&chain, &[], &backups(), &MongoTarget::Ts(ts(170, 2))).unwrap();
    assert_eq!(p.backup_id, "b170");
    assert_eq!(p.segments.len(), 1);
}

#[test]
fn time_target_reads_to_the_first_later_entry() {
    let chain = oplog_chain(&terms());
    let p = plan_mongo(
        &chain,
        &[],
        &backups(),
        &MongoTarget::Time(TimestampMicros(us(130))),
    )
    .unwrap();
    assert_eq!(p.backup_id, "b115");
    assert_eq!(p.stop_ts, None);
    // Segments [100..120] and [120..150]: the second has entries after 130 s.
    assert_eq!(p.segments.len(), 2);
    let p = plan_mongo(
        &chain,
        &[],
        &backups(),
        &MongoTarget::Time(TimestampMicros(us(299))),
    )
    .unwrap();
    assert_eq!(p.backup_id, "b170");
    assert_eq!(p.segments.len(), 3);
}

#[test]
fn latest_reads_everything_contiguous() {
    let chain = oplog_chain(&terms());
    let p = plan_mongo(&chain, &[], &backups(), &MongoTarget::Latest).unwrap();
    assert_eq!(p.backup_id, "b170");
    assert_eq!(p.stop_ts, Some(ts(299, 1)));
    assert_eq!(p.segments.len(), 3);
    assert_eq!(p.log_end, "299:2");
}

#[test]
fn targets_outside_the_window_are_refused() {
    let chain = oplog_chain(&terms());
    let e = plan_mongo(&chain, &[], &backups(), &MongoTarget::Ts(ts(115, 2))).unwrap_err();
    assert!(e.0.contains("before the recoverable window"), "{e}");
    assert!(e.0.contains("b115"), "{e}");
    let e = plan_mongo(
        &chain,
        &[],
        &backups(),
        &MongoTarget::Time(TimestampMicros(us(114))),
    )
    .unwrap_err();
    assert!(e.0.contains("before the recoverable window"), "{e}");
    let e = plan_mongo(&chain, &[], &backups(), &MongoTarget::Ts(ts(300, 0))).unwrap_err();
    assert!(e.0.contains("after the last archived entry"), "{e}");
    assert!(e.0.contains("299:1"), "{e}");
    let e = plan_mongo(
        &chain,
        &[],
        &backups(),
        &MongoTarget::Time(TimestampMicros(us(400))),
    )
    .unwrap_err();
    assert!(e.0.contains("after the last archived entry"), "{e}");
    let e = plan_mongo(&chain, &[], &[], &MongoTarget::Latest).unwrap_err();
    assert!(e.0.contains("no complete MongoDB base backup"), "{e}");
    let e = plan_mongo(&[], &[], &backups(), &MongoTarget::Latest).unwrap_err();
    assert!(e.0.contains("no oplog segments"), "{e}");
}

#[test]
fn holes_and_gaps_are_refused() {
    let mut t = terms();
    t[1].remove(0); // 199:2 .. 250:1 missing
    let chain = oplog_chain(&t);
    let e = plan_mongo(&chain, &[], &backups(), &MongoTarget::Ts(ts(260, 0))).unwrap_err();
    assert!(e.0.contains("not archived (a hole"), "{e}");
    assert!(e.0.contains("199:2..250:2"), "{e}");
    // Before the hole the restore still works, and --latest stops at the hole.
    plan_mongo(&chain, &[], &backups(), &MongoTarget::Ts(ts(190, 0))).unwrap();
    let p = plan_mongo(&chain, &[], &backups(), &MongoTarget::Latest).unwrap();
    assert_eq!(p.stop_ts, Some(ts(199, 1)));
    let gap = GapKey {
        source: src(),
        epoch: Epoch(2),
        start: ts(199, 2).to_log_pos(),
        end: ts(250, 2).to_log_pos(),
        generation: 0,
    };
    let e = plan_mongo(&chain, &[gap], &backups(), &MongoTarget::Ts(ts(260, 0))).unwrap_err();
    assert!(e.0.contains("recorded gap"), "{e}");
    // A hole between a backup's start and its end: that backup is unusable.
    let mut t = terms();
    t[0].remove(2);
    let chain = oplog_chain(&t);
    let e = plan_mongo(&chain, &[], &backups(), &MongoTarget::Ts(ts(175, 0))).unwrap_err();
    assert!(e.0.contains("hole") || e.0.contains("not archived"), "{e}");
}

#[test]
fn overlapping_terms_prefer_the_newer_at_the_same_start() {
    let mut t = terms();
    // Term 2 archived again from 199:2 (same start) with a different end.
    t.push(vec![seg(3, ts(199, 2), ts(240, 0), 200, 240)]);
    let chain = oplog_chain(&t);
    let e3: Vec<_> = chain.iter().filter(|s| s.key.epoch == Epoch(3)).collect();
    assert_eq!(e3.len(), 1);
    // The term-2 segment starting at the same position is left out, so
    // 240:1..250:2 is a hole and a restore beyond it is refused.
    assert!(covers(
        &chain,
        ts(199, 2).to_log_pos(),
        ts(240, 0).pos_after()
    ));
    assert!(!covers(
        &chain,
        ts(199, 2).to_log_pos(),
        ts(260, 0).to_log_pos()
    ));
}
