//! Unit tests of the MySQL/MariaDB restore planner on synthetic catalogs.

use super::*;
use crate::archive::keys::SourceName;
use crate::backup::mysql::manifest::Stream;
use chrono::Utc;
use pitr_segment::Epoch;

fn src() -> SourceName {
    SourceName::new("mariadb-1").unwrap()
}

fn seg(a: (u64, u64), b: (u64, u64), tmin: Option<i64>, tmax: Option<i64>) -> SegmentEntry {
    SegmentEntry {
        key: SegmentKey {
            source: src(),
            epoch: Epoch(1),
            start: LogPos::new(a.0, a.1),
            end: LogPos::new(b.0, b.1),
            tmin: tmin.map(TimestampMicros),
            tmax: tmax.map(TimestampMicros),
            generation: 0,
        },
        size: 100,
    }
}

fn backup(file_seq: u64, pos: u64, snap: i64, gtid: &str) -> (BackupKey, MysqlManifest) {
    let s = Stream {
        name: "schema.json".into(),
        size: 0,
        sha256: String::new(),
        parts: vec![],
    };
    let m = MysqlManifest {
        format_version: 1,
        kind: "mysql-logical".into(),
        engine: "mariadb".into(),
        id: format!("b{snap}"),
        label: String::new(),
        system_id: "mariadb-server-1".into(),
        server_version: "10.11".into(),
        snapshot_method: "ftwrl".into(),
        binlog_file: format!("binlog.{file_seq:06}"),
        binlog_pos: pos,
        gtid: gtid.into(),
        snapshot_time_us: snap,
        start_time: Utc::now(),
        stop_time: Utc::now(),
        schema: s,
        tables: vec![],
    };
    let k = BackupKey::new(src(), LogPos::new(file_seq, pos), &m.id).unwrap();
    (k, m)
}

/// File 1: [4,100) [100,300) [300,500 end), the empty bridge (1:500)..(2:4)
/// the archiver stores at a rotation; file 2: [4,200) [200,400).
fn chain() -> Vec<SegmentEntry> {
    vec![
        seg((1, 4), (1, 100), Some(10), Some(20)),
        seg((1, 100), (1, 300), Some(30), Some(40)),
        seg((1, 300), (1, 500), Some(50), Some(60)),
        seg((1, 500), (2, 4), None, None),
        seg((2, 4), (2, 200), Some(70), Some(80)),
        seg((2, 200), (2, 400), Some(90), Some(100)),
    ]
}

fn starts(p: &MysqlPlan) -> Vec<String> {
    p.segments
        .iter()
        .map(|k| {
            let k = SegmentKey::parse(k).unwrap();
            format!("{}:{}", k.start.hi, k.start.lo)
        })
        .collect()
}

#[test]
fn time_target_uses_newest_backup_before_it_and_stops_after_first_later_commit() {
    let backups = vec![backup(1, 100, 25, "0-1-2"), backup(1, 300, 45, "0-1-4")];
    let p = plan_mysql(
        &chain(),
        &[],
        &backups,
        &MysqlTarget::Time(TimestampMicros(75)),
    )
    .unwrap();
    assert_eq!(p.backup_id, "b45");
    // From the start of the backup's file (for its FDE), across the file boundary,
    // to the segment holding the first commit after 75.
    assert_eq!(starts(&p), ["1:4", "1:100", "1:300", "1:500", "2:4"]);
    assert_eq!(p.fde_segment, None);
    assert_eq!(p.backup_start, LogPos::new(1, 300));

    let p = plan_mysql(
        &chain(),
        &[],
        &backups,
        &MysqlTarget::Time(TimestampMicros(30)),
    )
    .unwrap();
    assert_eq!(p.backup_id, "b25");
    assert_eq!(starts(&p), ["1:4", "1:100"]);
    // Exactly the last commit: everything.
    let p = plan_mysql(
        &chain(),
        &[],
        &backups,
        &MysqlTarget::Time(TimestampMicros(100)),
    )
    .unwrap();
    assert_eq!(starts(&p).len(), 6);
}

#[test]
fn time_outside_the_window_is_refused_with_the_window() {
    let backups = vec![backup(1, 100, 25, "0-1-2")];
    let e = plan_mysql(
        &chain(),
        &[],
        &backups,
        &MysqlTarget::Time(TimestampMicros(101)),
    )
    .unwrap_err();
    assert!(e.0.contains("after the last archived commit"), "{e}");
    // Inside the last archived (whole) second on MariaDB: the reason and the way out.
    assert!(
        e.0.contains("whole seconds") && e.0.contains("--to-gtid"),
        "{e}"
    );
    let later = plan_mysql(
        &chain(),
        &[],
        &backups,
        &MysqlTarget::Time(TimestampMicros(2_000_000)),
    )
    .unwrap_err();
    assert!(!later.0.contains("whole seconds"), "{later}");
    let mut mysql = backups.clone();
    mysql[0].1.engine = "mysql".into();
    let e2 = plan_mysql(
        &chain(),
        &[],
        &mysql,
        &MysqlTarget::Time(TimestampMicros(101)),
    )
    .unwrap_err();
    assert!(!e2.0.contains("whole seconds"), "{e2}");
    assert!(
        e.0.contains(&time_text(25)) && e.0.contains(&time_text(100)),
        "{e}"
    );
    let e = plan_mysql(
        &chain(),
        &[],
        &backups,
        &MysqlTarget::Time(TimestampMicros(24)),
    )
    .unwrap_err();
    assert!(e.0.contains("before the oldest base backup"), "{e}");
    assert!(e.0.contains(&time_text(25)), "{e}");
    assert!(plan_mysql(&chain(), &[], &[], &MysqlTarget::Latest).is_err());
}

#[test]
fn holes_and_gaps_stop_the_chain() {
    let mut c = chain();
    c.remove(4); // file 2 starts at 200 and no bridge: hole 1:500 .. 2:200
    c.remove(3);
    let backups = vec![backup(1, 100, 25, "0-1-2")];
    // Without the bridge, the end of file 1 is not known to be its real end:
    // the next file does not continue the chain.
    let mut no_bridge = chain();
    no_bridge.remove(3);
    let p = plan_mysql(&no_bridge, &[], &backups, &MysqlTarget::Latest).unwrap();
    assert_eq!(starts(&p), ["1:4", "1:100", "1:300"]);
    let e = plan_mysql(&c, &[], &backups, &MysqlTarget::Time(TimestampMicros(95))).unwrap_err();
    assert!(e.0.contains("not archived"), "{e}");
    let p = plan_mysql(&c, &[], &backups, &MysqlTarget::Latest).unwrap();
    assert_eq!(starts(&p), ["1:4", "1:100", "1:300"]);
    let gap = GapKey {
        source: src(),
        epoch: Epoch(1),
        start: LogPos::new(1, 500),
        end: LogPos::new(2, 200),
        generation: 0,
    };
    let e = plan_mysql(
        &c,
        &[gap],
        &backups,
        &MysqlTarget::Position("binlog.000002:300".parse().unwrap()),
    )
    .unwrap_err();
    assert!(e.0.contains("recorded gap"), "{e}");
}

#[test]
fn position_targets() {
    let backups = vec![backup(1, 100, 25, "0-1-2"), backup(2, 200, 85, "0-1-9")];
    let p = plan_mysql(
        &chain(),
        &[],
        &backups,
        &MysqlTarget::Position("binlog.000002:150".parse().unwrap()),
    )
    .unwrap();
    assert_eq!(p.backup_id, "b25");
    assert_eq!(starts(&p), ["1:4", "1:100", "1:300", "1:500", "2:4"]);
    let p = plan_mysql(
        &chain(),
        &[],
        &backups,
        &MysqlTarget::Position("binlog.000002:400".parse().unwrap()),
    )
    .unwrap();
    assert_eq!(p.backup_id, "b85");
    assert_eq!(starts(&p), ["2:4", "2:200"]);
    let e = plan_mysql(
        &chain(),
        &[],
        &backups,
        &MysqlTarget::Position("binlog.000002:401".parse().unwrap()),
    )
    .unwrap_err();
    assert!(
        e.0.contains("beyond the archived binlog") && e.0.contains("2:400"),
        "{e}"
    );
}

#[test]
fn gtid_targets_pick_a_backup_not_beyond_them() {
    let backups = vec![
        backup(1, 100, 25, "0-1-2"),
        backup(1, 300, 45, "0-1-4,1-1-9"),
    ];
    let t = |s: &str| MysqlTarget::MariaGtid(s.parse().unwrap());
    assert_eq!(
        plan_mysql(&chain(), &[], &backups, &t("0-1-3"))
            .unwrap()
            .backup_id,
        "b25"
    );
    assert_eq!(
        plan_mysql(&chain(), &[], &backups, &t("0-1-4"))
            .unwrap()
            .backup_id,
        "b45"
    );
    assert_eq!(
        plan_mysql(&chain(), &[], &backups, &t("0-1-8,1-1-5"))
            .unwrap()
            .backup_id,
        "b25"
    );
    assert!(plan_mysql(&chain(), &[], &backups, &t("0-1-1")).is_err());
    // GTID targets read to the end of the contiguous archive.
    assert_eq!(
        starts(&plan_mysql(&chain(), &[], &backups, &t("0-1-3")).unwrap()).len(),
        6
    );
}

#[test]
fn fde_segment_when_the_file_start_is_not_contiguous() {
    let c = vec![
        seg((1, 4), (1, 100), Some(10), Some(20)),
        seg((1, 200), (1, 500), Some(50), Some(60)),
    ];
    let backups = vec![backup(1, 300, 45, "0-1-4")];
    let p = plan_mysql(&c, &[], &backups, &MysqlTarget::Latest).unwrap();
    assert_eq!(starts(&p), ["1:200"]);
    assert!(p.fde_segment.unwrap().contains(&LogPos::new(1, 4).to_hex()));
    let e = plan_mysql(&c[1..], &[], &backups, &MysqlTarget::Latest).unwrap_err();
    assert!(e.0.contains("FORMAT_DESCRIPTION"), "{e}");
}

#[test]
fn an_archive_ending_at_a_quiet_backup_restores_the_backup_alone() {
    // Nothing written after the backup at 2:400, the archive's end.
    let b = [backup(2, 400, 200, "0-1-9")];
    let p = plan_mysql(&chain(), &[], &b, &MysqlTarget::Latest).unwrap();
    assert!(p.segments.is_empty() && p.fde_segment.is_none(), "{p:?}");
    assert_eq!((p.log_end.as_str(), p.bytes), ("2:400", 0));
    // Its own coordinates and its snapshot time are served too...
    let at = MysqlTarget::Position(BinlogPos::new("binlog.000002", 400));
    assert!(plan_mysql(&chain(), &[], &b, &at)
        .unwrap()
        .segments
        .is_empty());
    let t = MysqlTarget::Time(TimestampMicros(200));
    assert!(plan_mysql(&chain(), &[], &b, &t)
        .unwrap()
        .segments
        .is_empty());
    // ...but nothing later: the archive does not reach past the backup.
    let later = MysqlTarget::Time(TimestampMicros(201));
    let e = plan_mysql(&chain(), &[], &b, &later).unwrap_err();
    assert!(e.0.contains("after the last archived commit"), "{e}");
    let beyond = MysqlTarget::Position(BinlogPos::new("binlog.000002", 500));
    let e = plan_mysql(&chain(), &[], &b, &beyond).unwrap_err();
    assert!(e.0.contains("beyond the archived binlog"), "{e}");
    // A backup inside the archive still reads the log after it.
    let inside = [backup(2, 200, 90, "0-1-8")];
    let p = plan_mysql(&chain(), &[], &inside, &MysqlTarget::Latest).unwrap();
    assert!(!p.segments.is_empty());
}
