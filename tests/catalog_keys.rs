//! Key layout: round trips, ordering, rejection of malformed keys.

#![allow(clippy::unwrap_used)] // test helpers unwrap; the workspace lint targets production code

use pitr::archive::keys::{
    time_from_key, time_to_key, BackupKey, GapKey, HistoryKey, IndexKey, SegmentKey, SourceName,
};
use pitr_segment::{Epoch, LogPos, TimestampMicros};
use proptest::prelude::*;

fn src() -> SourceName {
    SourceName::new("db-1.prod_x").unwrap()
}

fn pos() -> impl Strategy<Value = LogPos> {
    (any::<u64>(), any::<u64>()).prop_map(|(h, l)| LogPos::new(h, l))
}

fn time() -> impl Strategy<Value = Option<TimestampMicros>> {
    proptest::option::of(any::<i64>().prop_map(TimestampMicros))
}

fn seg() -> impl Strategy<Value = SegmentKey> {
    (any::<u64>(), pos(), pos(), time(), time()).prop_map(|(e, a, b, t1, t2)| SegmentKey {
        source: src(),
        epoch: Epoch(e),
        start: a.min(b),
        end: a.max(b),
        tmin: t1,
        tmax: t2,
        generation: 0,
    })
}

proptest! {
    #[test]
    fn segment_roundtrip(k in seg()) {
        let s = k.to_key();
        prop_assert_eq!(SegmentKey::parse(&s).unwrap(), k);
    }

    #[test]
    fn segment_key_order_is_epoch_start_order(a in seg(), b in seg()) {
        let (ka, kb) = (a.to_key(), b.to_key());
        if (a.epoch, a.start, a.end) != (b.epoch, b.start, b.end) {
            prop_assert_eq!(ka.cmp(&kb), (a.epoch, a.start, a.end).cmp(&(b.epoch, b.start, b.end)));
        }
    }

    #[test]
    fn time_encoding_sorts_like_time(a in any::<i64>(), b in any::<i64>()) {
        let (ka, kb) = (time_to_key(Some(TimestampMicros(a))), time_to_key(Some(TimestampMicros(b))));
        prop_assert_eq!(ka.len(), 16);
        prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
        prop_assert_eq!(time_from_key(&ka), Some(Some(TimestampMicros(a))));
    }

    #[test]
    fn gap_index_backup_history_roundtrip(e in any::<u64>(), a in pos(), b in pos(), lvl in any::<u8>(), g in any::<u32>()) {
        let gap = GapKey { source: src(), epoch: Epoch(e), start: a, end: b, generation: 0 };
        prop_assert_eq!(GapKey::parse(&gap.to_key()).unwrap(), gap);
        let idx = IndexKey { source: src(), epoch: Epoch(e), first: a, last: b, level: lvl, generation: g };
        prop_assert_eq!(IndexKey::parse(&idx.to_key()).unwrap(), idx);
        let bk = BackupKey::new(src(), a, "20240102T030405Z").unwrap();
        prop_assert_eq!(BackupKey::parse(&bk.to_key()).unwrap(), bk.clone());
        prop_assert_eq!(BackupKey::parse_dir(&bk.dir()).unwrap(), bk);
        let h = HistoryKey::new(src(), Epoch(e), "00000002.history").unwrap();
        prop_assert_eq!(HistoryKey::parse(&h.to_key()).unwrap(), h);
    }

    #[test]
    fn parse_never_panics(s in "\\PC{0,200}") {
        let _ = SegmentKey::parse(&s);
        let _ = GapKey::parse(&s);
        let _ = IndexKey::parse(&s);
        let _ = BackupKey::parse(&s);
        let _ = HistoryKey::parse(&s);
    }
}

#[test]
fn exact_layout() {
    let k = SegmentKey {
        source: SourceName::new("orders").unwrap(),
        epoch: Epoch(2),
        start: LogPos::from_lsn(0x1_0000_0000),
        end: LogPos::from_lsn(0x1_0100_0000),
        tmin: Some(TimestampMicros(1)),
        tmax: None,
        generation: 0,
    };
    assert_eq!(
        k.to_key(),
        "orders/0000000000000002/log/00000000000000000000000100000000-00000000000000000000000101000000_8000000000000001-----------------.seg"
    );
    let b = BackupKey::new(SourceName::new("orders").unwrap(), LogPos::new(3, 4), "b1").unwrap();
    assert_eq!(
        b.part_key("base.tar").unwrap(),
        "orders/backups/00000000000000030000000000000004_b1/base.tar"
    );
}

#[test]
fn names_are_validated() {
    for bad in ["", ".", "..", "a/b", "a b", "é", &"x".repeat(65)] {
        assert!(SourceName::new(bad).is_err(), "{bad:?}");
    }
    assert!(SourceName::new(&"x".repeat(64)).is_ok());
    assert!(HistoryKey::new(src(), Epoch(1), "../x").is_err());
    assert!(BackupKey::new(src(), LogPos::ZERO, "a/b").is_err());
}

#[test]
fn malformed_keys_are_rejected() {
    let good = SegmentKey {
        source: src(),
        epoch: Epoch(1),
        start: LogPos::new(0, 1),
        end: LogPos::new(0, 2),
        tmin: None,
        tmax: None,
        generation: 0,
    }
    .to_key();
    assert!(SegmentKey::parse(&good).is_ok());
    assert!(SegmentKey::parse(&good.replace(".seg", ".tmp")).is_err());
    assert!(SegmentKey::parse(&good.replace("/log/", "/gaps/")).is_err());
    assert!(SegmentKey::parse(&good.to_uppercase()).is_err());
    // end before start
    let reversed = good.replace(
        "00000000000000000000000000000001-00000000000000000000000000000002",
        "00000000000000000000000000000002-00000000000000000000000000000001",
    );
    assert!(SegmentKey::parse(&reversed).is_err());
}
