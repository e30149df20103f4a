//! Roll-up index: request counts for a long history (measured), and
//! correctness when index objects are missing or corrupt.

#![allow(clippy::unwrap_used)] // test helpers unwrap; the workspace lint targets production code

use std::sync::Arc;
use std::time::Instant;

use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, PutOptions, PutPayload};
use pitr::archive::catalog::Catalog;
use pitr::archive::index::list_index_keys;
use pitr::archive::keys::{SegmentKey, SourceName};
use pitr::archive::rollup::Indexer;
use pitr::storage::Repo;
use pitr_segment::{Epoch, LogPos, TimestampMicros};

const SEG_LEN: u64 = 16 << 20;
const T0: i64 = 1_700_000_000_000_000;

fn src() -> SourceName {
    SourceName::new("big").unwrap()
}

fn key(i: u64) -> SegmentKey {
    SegmentKey {
        source: src(),
        epoch: Epoch(1),
        start: LogPos::from_lsn(i * SEG_LEN),
        end: LogPos::from_lsn((i + 1) * SEG_LEN),
        tmin: Some(TimestampMicros(T0 + (i as i64) * 60_000_000)),
        tmax: Some(TimestampMicros(T0 + (i as i64) * 60_000_000 + 59_000_000)),
        generation: 0,
    }
}

/// Writes segment keys straight into the store (dummy 1-byte bodies).
async fn fill(store: &Arc<dyn ObjectStore>, range: std::ops::Range<u64>) {
    for i in range {
        store
            .put_opts(
                &Path::from(key(i).to_key()),
                PutPayload::from_static(b"x"),
                PutOptions::default(),
            )
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_planning_over_100k_segments_needs_few_requests() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let n = 100_000u64;
    fill(&store, 0..n).await;
    let writer = Repo::from_store(Arc::clone(&store), "mem");
    let t = Instant::now();
    let report = Indexer::default().roll_up(&writer, &src()).await.unwrap();
    let levels: Vec<usize> = (0..3)
        .map(|l| report.written.iter().filter(|k| k.level == l).count())
        .collect();
    assert_eq!(levels, vec![100, 10, 1], "index objects per level");
    eprintln!("roll-up of {n} segments took {:?}", t.elapsed());
    // A second roll-up writes nothing new.
    assert!(Indexer::default()
        .roll_up(&writer, &src())
        .await
        .unwrap()
        .written
        .is_empty());
    // 42 more segments arrive after the roll-up.
    fill(&store, n..n + 42).await;

    let repo = Repo::from_store(Arc::clone(&store), "mem");
    let before = repo.requests();
    let catalog = Catalog::load(&repo, &src()).await.unwrap();
    let target = TimestampMicros(T0 + 77_777 * 60_000_000 + 30_000_000);
    let stop = catalog
        .first_commit_after(Epoch(1), target)
        .unwrap()
        .clone();
    let chain = catalog
        .segments_covering(Epoch(1), LogPos::from_lsn(70_000 * SEG_LEN), stop.end)
        .unwrap();
    let cost = repo.requests().since(&before);
    eprintln!(
        "MEASURED: load catalog of {} segments + plan to a time: {cost}",
        n + 42
    );
    assert!(cost.total() <= 10, "{cost}");
    assert_eq!(stop, key(77_777));
    assert_eq!(chain.len(), 7_778);
    assert_eq!(catalog.stats().segments as u64, n + 42);
    assert_eq!(
        catalog.tail(Epoch(1)),
        Some(LogPos::from_lsn((n + 42) * SEG_LEN))
    );

    // Without the index the same load costs a LIST per 1000 keys.
    let before = repo.requests();
    let listed = Catalog::load_listing(&repo, &src()).await.unwrap();
    let cost_listing = repo.requests().since(&before);
    eprintln!("MEASURED: the same load by listing: {cost_listing}");
    assert!(cost_listing.list > 100);
    assert_eq!(
        listed.epoch(Epoch(1)).unwrap().segments(),
        catalog.epoch(Epoch(1)).unwrap().segments()
    );
}

#[tokio::test]
async fn missing_or_corrupt_index_objects_fall_back_to_listing() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    fill(&store, 0..95).await;
    let repo = Repo::from_store(Arc::clone(&store), "mem");
    let indexer = Indexer {
        segments_per_index: 10,
        fan_out: 3,
    };
    let written = indexer.roll_up(&repo, &src()).await.unwrap().written;
    // 9 level-0, 3 level-1 (each 3 level-0), 1 level-2.
    assert_eq!(written.len(), 9 + 3 + 1);
    let full = Catalog::load_listing(&repo, &src()).await.unwrap();
    let same = |c: &Catalog| {
        c.epoch(Epoch(1)).unwrap().segments() == full.epoch(Epoch(1)).unwrap().segments()
    };
    assert!(same(&Catalog::load(&repo, &src()).await.unwrap()));

    // The top object vanishes: the level-1 objects take over.
    let top = written.iter().find(|k| k.level == 2).unwrap();
    repo.delete(&top.to_key()).await.unwrap();
    let before = repo.requests();
    assert!(same(&Catalog::load(&repo, &src()).await.unwrap()));
    assert_eq!(repo.requests().since(&before).get, 3);

    // A level-1 object is corrupt: the loader lists the epoch instead.
    let l1 = written.iter().find(|k| k.level == 1).unwrap();
    store
        .put_opts(
            &Path::from(l1.to_key()),
            PutPayload::from_static(b"{not json"),
            PutOptions::default(),
        )
        .await
        .unwrap();
    assert!(same(&Catalog::load(&repo, &src()).await.unwrap()));

    // A roll-up now supersedes the corrupt object with a newer generation.
    let rewritten = indexer.roll_up(&repo, &src()).await.unwrap().written;
    assert!(!rewritten.is_empty());
    assert!(rewritten.iter().all(|k| k.generation >= 1), "{rewritten:?}");
    let before = repo.requests();
    assert!(same(&Catalog::load(&repo, &src()).await.unwrap()));
    let cost = repo.requests().since(&before);
    assert!(cost.get <= 3, "{cost}");
    assert!(list_index_keys(&repo, &src()).await.unwrap()[&Epoch(1)].len() > written.len());
}

#[tokio::test]
async fn roll_up_stops_at_an_unexplained_hole() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    fill(&store, 0..25).await;
    fill(&store, 26..60).await; // segment 25 is missing (still uploading)
    let repo = Repo::from_store(Arc::clone(&store), "mem");
    let indexer = Indexer {
        segments_per_index: 10,
        fan_out: 10,
    };
    let written = indexer.roll_up(&repo, &src()).await.unwrap().written;
    assert_eq!(written.len(), 2, "only [0,20) can be indexed: {written:?}");
    // The late segment fills the hole; nothing is lost from the catalog.
    fill(&store, 25..26).await;
    let c = Catalog::load(&repo, &src()).await.unwrap();
    assert_eq!(c.stats().segments, 60);
    assert!(c
        .segments_covering(Epoch(1), LogPos::ZERO, LogPos::from_lsn(60 * SEG_LEN))
        .is_ok());
    let written = indexer.roll_up(&repo, &src()).await.unwrap().written;
    assert_eq!(written.len(), 4);
}
