//! Catalog resolution and queries, identity and gap records.

#![allow(clippy::unwrap_used)] // test helpers unwrap; the workspace lint targets production code

use bytes::Bytes;
use chrono::Utc;
use pitr::archive::catalog::{Catalog, CoverageError, SegmentEntry};
use pitr::archive::gaps::{read_gap, write_gap, GapRecord};
use pitr::archive::identity::{ensure_identity, IdentityError, SourceIdentity};
use pitr::archive::keys::{BackupKey, GapKey, HistoryKey, SegmentKey, SourceName};
use pitr::storage::{PutOutcome, Repo};
use pitr_segment::{Engine, Epoch, LogPos, TimestampMicros};
use proptest::prelude::*;

fn src() -> SourceName {
    SourceName::new("db").unwrap()
}

fn seg(e: u64, a: u64, b: u64, t: Option<(i64, i64)>) -> SegmentEntry {
    SegmentEntry {
        key: SegmentKey {
            source: src(),
            epoch: Epoch(e),
            start: LogPos::from_lsn(a),
            end: LogPos::from_lsn(b),
            tmin: t.map(|x| TimestampMicros(x.0)),
            tmax: t.map(|x| TimestampMicros(x.1)),
            generation: 0,
        },
        size: b - a,
    }
}

fn gap(e: u64, a: u64, b: u64) -> GapKey {
    GapKey {
        source: src(),
        epoch: Epoch(e),
        start: LogPos::from_lsn(a),
        end: LogPos::from_lsn(b),
        generation: 0,
    }
}

fn starts(v: &[SegmentKey]) -> Vec<u64> {
    v.iter().map(|k| k.start.lo).collect()
}

#[test]
fn overlaps_resolve_to_minimal_chain() {
    // A compacted [0,40) plus leftovers [0,10),[10,20),[20,40), then [40,50).
    let segs = vec![
        seg(1, 10, 20, None),
        seg(1, 0, 40, None),
        seg(1, 0, 10, None),
        seg(1, 40, 50, None),
        seg(1, 20, 40, None),
        seg(1, 45, 60, None), // conflict: starts inside [40,50) and ends beyond
    ];
    let c = Catalog::from_parts(src(), segs, vec![], vec![], vec![]);
    let e = c.epoch(Epoch(1)).unwrap();
    assert_eq!(e.segments().len(), 2);
    assert_eq!(e.redundant().len(), 3);
    assert_eq!(e.conflicts().len(), 1);
    let st = c.stats();
    assert_eq!((st.segments, st.bytes, st.redundant_segments), (2, 50, 3));
    let chain = c
        .segments_covering(Epoch(1), LogPos::from_lsn(5), LogPos::from_lsn(45))
        .unwrap();
    assert_eq!(starts(&chain), vec![0, 40]);
    assert_eq!(c.tail(Epoch(1)), Some(LogPos::from_lsn(50)));
}

#[test]
fn holes_and_gaps_are_reported() {
    let segs = vec![
        seg(1, 0, 10, Some((100, 190))),
        seg(1, 10, 20, Some((200, 290))),
        // hole [20,30) explained by a gap record
        seg(1, 30, 40, Some((300, 390))),
        // hole [40,50) unexplained
        seg(1, 50, 60, Some((500, 590))),
    ];
    let c = Catalog::from_parts(src(), segs, vec![gap(1, 20, 30)], vec![], vec![]);
    let e = Epoch(1);
    let p = LogPos::from_lsn;
    assert_eq!(
        starts(&c.segments_covering(e, p(3), p(20)).unwrap()),
        vec![0, 10]
    );
    assert_eq!(
        c.segments_covering(e, p(3), p(35)),
        Err(CoverageError::Gap {
            epoch: e,
            start: p(20),
            end: p(30)
        })
    );
    assert_eq!(
        c.segments_covering(e, p(31), p(55)),
        Err(CoverageError::Missing {
            epoch: e,
            start: p(40),
            end: p(50)
        })
    );
    assert_eq!(
        c.segments_covering(e, p(55), p(70)),
        Err(CoverageError::Missing {
            epoch: e,
            start: p(60),
            end: p(70)
        })
    );
    assert!(matches!(
        c.segments_covering(Epoch(9), p(0), p(1)),
        Err(CoverageError::UnknownEpoch { .. })
    ));
    // The archiver resumes after the gap-bridged prefix, before the unexplained hole.
    assert_eq!(c.tail(e), Some(p(40)));
    // The window stops at the first hole of any kind.
    assert_eq!(
        c.window(e),
        Some((TimestampMicros(100), TimestampMicros(290)))
    );
    assert_eq!(
        c.first_commit_after(e, TimestampMicros(250)).unwrap().start,
        p(10)
    );
    assert_eq!(
        c.first_commit_after(e, TimestampMicros(290)).unwrap().start,
        p(30)
    );
    assert!(c.first_commit_after(e, TimestampMicros(590)).is_none());
    assert_eq!(
        c.segment_at_time(e, TimestampMicros(250)).unwrap().start,
        p(10)
    );
    assert_eq!(
        c.segment_at_time(e, TimestampMicros(295)).unwrap().start,
        p(10)
    );
    assert!(c.segment_at_time(e, TimestampMicros(99)).is_none());
}

#[test]
fn gap_at_tail_moves_the_tail() {
    let c = Catalog::from_parts(
        src(),
        vec![seg(1, 0, 10, None)],
        vec![gap(1, 10, 25)],
        vec![],
        vec![],
    );
    assert_eq!(c.tail(Epoch(1)), Some(LogPos::from_lsn(25)));
}

proptest! {
    /// Random compactions/leftovers never change coverage: any range inside
    /// the original contiguous run is covered by a chain without overlaps.
    #[test]
    fn leftovers_never_double_count(cuts in proptest::collection::btree_set(1u64..1000, 1..40),
                                    merges in proptest::collection::vec((0usize..40, 1usize..6), 0..8),
                                    a in 0u64..1000, b in 0u64..1000) {
        let mut bounds: Vec<u64> = vec![0];
        bounds.extend(cuts.iter().copied());
        bounds.push(1000);
        let mut segs: Vec<SegmentEntry> = bounds.windows(2).map(|w| seg(1, w[0], w[1], None)).collect();
        for (i, n) in merges {
            let i = i % (bounds.len() - 1);
            let j = (i + n).min(bounds.len() - 1);
            segs.push(seg(1, bounds[i], bounds[j], None));
        }
        let c = Catalog::from_parts(src(), segs, vec![], vec![], vec![]);
        prop_assert_eq!(c.stats().bytes, 1000);
        let (from, to) = (a.min(b), a.max(b));
        let chain = c.segments_covering(Epoch(1), LogPos::from_lsn(from), LogPos::from_lsn(to)).unwrap();
        for w in chain.windows(2) {
            prop_assert_eq!(w[0].end, w[1].start);
        }
        if to > from {
            prop_assert!(chain[0].start.lo <= from && chain.last().unwrap().end.lo >= to);
        }
    }
}

#[tokio::test]
async fn load_from_repo_lists_everything() {
    let repo = Repo::open("memory://").await.unwrap();
    for s in [
        seg(1, 0, 10, Some((1, 2))),
        seg(1, 10, 20, None),
        seg(2, 15, 30, None),
    ] {
        repo.put_if_absent(&s.key.to_key(), Bytes::from(vec![0u8; s.size as usize]))
            .await
            .unwrap();
    }
    let rec = GapRecord {
        epoch: Epoch(1),
        start: LogPos::from_lsn(20),
        end: LogPos::from_lsn(22),
        reason: "slot invalidated".into(),
        detected_at: Utc::now(),
        generation: 0,
    };
    assert_eq!(
        write_gap(&repo, &src(), &rec).await.unwrap(),
        PutOutcome::Created
    );
    assert_eq!(read_gap(&repo, &rec.key(&src())).await.unwrap(), rec);
    let h = HistoryKey::new(src(), Epoch(2), "00000002.history").unwrap();
    repo.put_if_absent(
        &h.to_key(),
        Bytes::from_static(b"1\t0/F000000\tno recovery target\n"),
    )
    .await
    .unwrap();
    let b = BackupKey::new(src(), LogPos::from_lsn(5), "b1").unwrap();
    repo.put_if_absent(&b.to_key(), Bytes::from_static(b"{}"))
        .await
        .unwrap();
    repo.put_if_absent(&b.part_key("base.tar").unwrap(), Bytes::from_static(b"tar"))
        .await
        .unwrap();
    repo.put_if_absent("db/0000000000000001/log/README", Bytes::from_static(b"?"))
        .await
        .unwrap();
    // Another source is not included.
    repo.put_if_absent(
        &format!("other/{}", "0000000000000001/log/x"),
        Bytes::from_static(b"?"),
    )
    .await
    .unwrap();

    let c = Catalog::load(&repo, &src()).await.unwrap();
    assert_eq!(c.epochs(), vec![Epoch(1), Epoch(2)]);
    assert_eq!(c.stats().segments, 3);
    assert_eq!(c.stats().bytes, 35);
    assert_eq!(c.epoch(Epoch(1)).unwrap().gaps(), &[rec.key(&src())]);
    assert_eq!(c.epoch(Epoch(2)).unwrap().history(), &[h]);
    assert_eq!(c.backups(), &[b]);
    assert_eq!(
        c.unrecognized(),
        &["db/0000000000000001/log/README".to_string()]
    );
    assert_eq!(c.tail(Epoch(1)), Some(LogPos::from_lsn(22)));
}

#[tokio::test]
async fn identity_is_created_once_and_guards_the_source() {
    let repo = Repo::open("memory://").await.unwrap();
    let mine = SourceIdentity::new("db", Engine::Postgres, "7301234567890123456");
    let stored = ensure_identity(&repo, &mine).await.unwrap();
    assert_eq!(stored, mine);
    // A restart of the same database gets the original identity back.
    let again = SourceIdentity::new("db", Engine::Postgres, "7301234567890123456");
    assert_eq!(
        ensure_identity(&repo, &again).await.unwrap().created_at,
        mine.created_at
    );
    // Another database under the same name is refused.
    let other = SourceIdentity::new("db", Engine::Postgres, "999");
    let err = ensure_identity(&repo, &other).await.unwrap_err();
    assert!(matches!(err, IdentityError::Foreign { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("7301234567890123456") && msg.contains("999") && msg.contains("--name"),
        "{msg}"
    );
    let other_engine = SourceIdentity::new("db", Engine::MySql, "7301234567890123456");
    assert!(matches!(
        ensure_identity(&repo, &other_engine).await,
        Err(IdentityError::Foreign { .. })
    ));
    assert!(matches!(
        ensure_identity(&repo, &SourceIdentity::new("bad/name", Engine::MySql, "x")).await,
        Err(IdentityError::Name(_))
    ));
}
