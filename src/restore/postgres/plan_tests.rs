//! Tests of the pure restore planner.

use chrono::{DateTime, TimeZone, Utc};
use pitr_postgres::lsn::Lsn;
use pitr_segment::{Epoch, LogPos, TimestampMicros};
use proptest::prelude::*;

use crate::archive::catalog::{Catalog, CoverageError, SegmentEntry};
use crate::archive::keys::{BackupKey, GapKey, SegmentKey, SourceName};
use crate::backup::postgres::manifest::{BackupManifest, MANIFEST_FORMAT_VERSION};
use crate::restore::postgres::plan::{plan, PlanError, Target};

const SEG: u64 = 0x100_0000;

fn src() -> SourceName {
    SourceName::new("pg-1").unwrap()
}

fn t(s: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
}

fn micros(s: i64) -> TimestampMicros {
    TimestampMicros(t(s).timestamp_micros())
}

/// Segment `i` covers `[i*SEG, (i+1)*SEG)` with commits at seconds `10*i..=10*i+9`.
fn seg(i: u64) -> SegmentEntry {
    SegmentEntry {
        key: SegmentKey {
            source: src(),
            epoch: Epoch(1),
            start: LogPos::from_lsn(i * SEG),
            end: LogPos::from_lsn((i + 1) * SEG),
            tmin: Some(micros(10 * i as i64)),
            tmax: Some(micros(10 * i as i64 + 9)),
            generation: 0,
        },
        size: 100,
    }
}

/// A backup from `start` to `start + 0x100` finishing at second `stop_s`.
fn backup(start: u64, stop_s: i64) -> (BackupKey, BackupManifest) {
    let key = BackupKey::new(src(), LogPos::from_lsn(start), &format!("b{start:x}")).unwrap();
    let m = BackupManifest {
        format_version: MANIFEST_FORMAT_VERSION,
        id: key.id.clone(),
        label: "x".into(),
        engine: "postgres".into(),
        system_id: "1".into(),
        server_version: "15".into(),
        timeline: 1,
        start_lsn: Lsn(start),
        stop_lsn: Lsn(start + 0x100),
        start_time: t(stop_s - 1),
        stop_time: t(stop_s),
        archives: vec![],
        backup_manifest: None,
    };
    (key, m)
}

fn catalog(segs: &[u64], gaps: Vec<GapKey>) -> Catalog {
    Catalog::from_parts(
        src(),
        segs.iter().map(|&i| seg(i)).collect(),
        gaps,
        vec![],
        vec![],
    )
}

#[test]
fn time_target_picks_newest_backup_before_it() {
    let c = catalog(&[0, 1, 2, 3, 4, 5], vec![]);
    let b = vec![
        backup(SEG / 2, 5),
        backup(2 * SEG + 8, 25),
        backup(4 * SEG, 45),
    ];
    let p = plan(&c, &b, &Target::Time(t(33))).unwrap();
    assert_eq!(p.backup_start_lsn, Lsn(2 * SEG + 8).to_string());
    // Needs the WAL up to the segment holding the first commit after 33 s (segment 3).
    assert_eq!(p.segments.len(), 2);
    assert_eq!(p.wal_to, Lsn(4 * SEG).to_string());
    assert_eq!(p.segments[0], seg(2).key.to_key());
    // Exactly at the newest backup's stop time: that backup.
    let p = plan(&c, &b, &Target::Time(t(45))).unwrap();
    assert_eq!(p.backup_start_lsn, Lsn(4 * SEG).to_string());
}

#[test]
fn targets_outside_the_window_are_refused_with_the_window() {
    let c = catalog(&[0, 1, 2], vec![]);
    let b = vec![backup(SEG / 2, 5)];
    for target in [t(4), t(29), t(100)] {
        let e = plan(&c, &b, &Target::Time(target)).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, PlanError::OutsideWindow { .. }), "{msg}");
        assert!(
            msg.contains(" UTC, ") && msg.contains(&t(5).format("%Y-%m-%d %H:%M:%S").to_string()),
            "{msg}"
        );
    }
    assert!(plan(&c, &b, &Target::Time(t(28))).is_ok());
    assert!(matches!(
        plan(&c, &[], &Target::Latest),
        Err(PlanError::NoBackup { .. })
    ));
}

#[test]
fn holes_and_gaps_are_refused_by_name() {
    let b = vec![backup(SEG / 2, 5)];
    let c = catalog(&[0, 1, 3, 4], vec![]);
    let e = plan(&c, &b, &Target::Time(t(35))).unwrap_err();
    match &e {
        PlanError::Chain {
            cause: CoverageError::Missing { start, end, .. },
            ..
        } => {
            assert_eq!((start.lo, end.lo), (2 * SEG, 3 * SEG));
        }
        other => panic!("{other}"),
    }
    // Before the hole it works.
    assert!(plan(&c, &b, &Target::Time(t(15))).is_ok());
    let gap = GapKey {
        source: src(),
        epoch: Epoch(1),
        start: LogPos::from_lsn(2 * SEG),
        end: LogPos::from_lsn(3 * SEG),
        generation: 0,
    };
    let c = catalog(&[0, 1, 3, 4], vec![gap]);
    let e = plan(&c, &b, &Target::Latest).unwrap_err();
    assert!(
        matches!(
            e,
            PlanError::Chain {
                cause: CoverageError::Gap { .. },
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("gap"), "{e}");
}

#[test]
fn lsn_latest_and_name_targets() {
    let c = catalog(&[0, 1, 2, 3], vec![]);
    let b = vec![backup(SEG / 2, 5), backup(2 * SEG + 8, 25)];
    let p = plan(&c, &b, &Target::Lsn(Lsn(2 * SEG + 0x200))).unwrap();
    assert_eq!(p.backup_start_lsn, Lsn(2 * SEG + 8).to_string());
    assert_eq!(p.segments.len(), 1);
    let p = plan(&c, &b, &Target::Lsn(Lsn(2 * SEG))).unwrap();
    assert_eq!(p.backup_start_lsn, Lsn(SEG / 2).to_string());
    assert!(plan(&c, &b, &Target::Lsn(Lsn(4 * SEG))).is_err());
    assert!(plan(&c, &b, &Target::Lsn(Lsn(0x10))).is_err());
    let p = plan(&c, &b, &Target::Latest).unwrap();
    assert_eq!(
        (p.backup_id.as_str(), p.wal_to.clone()),
        ("b2000008", Lsn(4 * SEG).to_string())
    );
    let p = plan(&c, &b, &Target::Name("before".into())).unwrap();
    assert_eq!(p.backup_id, "b800000");
    assert_eq!(p.segments.len(), 4);
}

proptest! {
    /// For any backups and time target: the chosen backup finished at or
    /// before the target, the chain is contiguous from the backup's start
    /// and reaches a commit after the target; a refusal only happens for a
    /// target outside the window.
    #[test]
    fn plans_are_sound(nseg in 2u64..20, backups in prop::collection::vec((0u64..20, 0u64..SEG), 1..5), target in -20i64..220) {
        let segs: Vec<u64> = (0..nseg).collect();
        let c = catalog(&segs, vec![]);
        let bs: Vec<_> = backups.iter().filter(|(i, _)| *i < nseg - 1).map(|&(i, off)| backup(i * SEG + off.min(SEG - 0x200), 10 * i as i64 + 9)).collect();
        prop_assume!(!bs.is_empty());
        let oldest_stop = bs.iter().map(|b| b.1.stop_time).min().unwrap();
        let last_commit = t(10 * nseg as i64 - 1);
        match plan(&c, &bs, &Target::Time(t(target))) {
            Ok(p) => {
                prop_assert!(p.backup_stop_time <= t(target));
                let keys: Vec<SegmentKey> = p.segments.iter().map(|k| SegmentKey::parse(k).unwrap()).collect();
                let start: Lsn = p.backup_start_lsn.parse().unwrap();
                prop_assert!(keys[0].start.lo <= start.0 && keys[0].end.lo > start.0);
                for w in keys.windows(2) { prop_assert_eq!(w[0].end, w[1].start); }
                let last = keys.last().unwrap();
                prop_assert!(last.tmax.unwrap() > micros(target));
                // No newer eligible backup was skipped.
                prop_assert!(bs.iter().all(|b| b.1.stop_time > t(target) || b.1.stop_time <= p.backup_stop_time));
            }
            Err(PlanError::OutsideWindow { .. }) => {
                prop_assert!(t(target) < oldest_stop || t(target) >= last_commit);
            }
            Err(e) => prop_assert!(false, "unexpected {}", e),
        }
    }
}
