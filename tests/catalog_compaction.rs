//! Compaction under a crash after every storage operation: coverage is never
//! lost, bytes stay identical, and a re-run finishes the job.

#![allow(clippy::unwrap_used)] // test helpers unwrap; the workspace lint targets production code

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::memory::InMemory;
use object_store::ObjectStore;
use pitr::archive::catalog::Catalog;
use pitr::archive::compaction::{compact, CompactionOptions};
use pitr::archive::index::list_index_keys;
use pitr::archive::keys::{SegmentKey, SourceName};
use pitr::archive::rollup::Indexer;
use pitr::storage::faults::{Fault, FaultyStore};
use pitr::storage::Repo;
use pitr_segment::{
    decode, encode, Codec, Engine, Epoch, LogPos, SegmentHeader, TimestampMicros, WriterOptions,
};

fn src() -> SourceName {
    SourceName::new("db").unwrap()
}

/// 14 small segments of deterministic pseudo-random payload; returns the
/// concatenated payload.
async fn populate(repo: &Repo) -> Vec<u8> {
    let mut all = Vec::new();
    let mut pos = 0x1000u64;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..14u64 {
        let len = 3000 + (i * 517) % 4000;
        let payload: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed % 7) as u8 // compressible, not trivial
            })
            .collect();
        let header = SegmentHeader {
            engine: Engine::Postgres,
            source_id: "7301234567890123456".into(),
            epoch: Epoch(1),
            start: LogPos::from_lsn(pos),
            codec: Codec::DEFAULT,
            key_id: 0,
        };
        let end = LogPos::from_lsn(pos + len);
        // Segment 5 has no commit at all.
        let times = (i != 5).then(|| {
            (
                TimestampMicros(1_000 * i as i64),
                TimestampMicros(1_000 * i as i64 + 900),
            )
        });
        let obj = encode(
            header,
            &payload,
            end,
            times.map(|t| t.0),
            times.map(|t| t.1),
            10 + i,
            WriterOptions::default(),
        )
        .unwrap();
        let key = SegmentKey {
            source: src(),
            epoch: Epoch(1),
            start: LogPos::from_lsn(pos),
            end,
            tmin: times.map(|t| t.0),
            tmax: times.map(|t| t.1),
            generation: 0,
        };
        repo.put_if_absent(&key.to_key(), Bytes::from(obj))
            .await
            .unwrap();
        all.extend_from_slice(&payload);
        pos += len;
    }
    all
}

fn options() -> CompactionOptions {
    CompactionOptions {
        target_size: 12_000,
        min_age: Duration::from_secs(1),
        writer: WriterOptions::default(),
    }
}

const NOW: TimestampMicros = TimestampMicros(10_000_000);

/// Everything a restore could see is complete and byte-identical.
async fn check_full_coverage(repo: &Repo, want: &[u8]) -> usize {
    for catalog in [
        Catalog::load(repo, &src()).await.unwrap(),
        Catalog::load_listing(repo, &src()).await.unwrap(),
    ] {
        let ec = catalog.epoch(Epoch(1)).unwrap();
        let (first, last) = (
            ec.segments()[0].key.start,
            ec.segments().last().unwrap().key.end,
        );
        assert_eq!(first, LogPos::from_lsn(0x1000));
        let chain = catalog.segments_covering(Epoch(1), first, last).unwrap();
        let mut got = Vec::new();
        let mut records = 0;
        for k in &chain {
            let obj = repo.get(&k.to_key()).await.unwrap();
            let (meta, payload) = decode(&obj).unwrap();
            assert_eq!((meta.header.start, meta.footer.end), (k.start, k.end));
            records += meta.footer.record_count;
            got.extend_from_slice(&payload);
        }
        assert_eq!(records, (0..14).map(|i| 10 + i).sum::<u64>());
        assert!(
            got == want,
            "payload differs from the original concatenation"
        );
    }
    Catalog::load_listing(repo, &src())
        .await
        .unwrap()
        .stats()
        .segments
}

#[tokio::test]
async fn crash_after_every_storage_operation() {
    let mut crashes = 0;
    for fail_at in 1.. {
        let mem: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let repo = Repo::from_store(Arc::clone(&mem), "mem");
        let want = populate(&repo).await;
        // Index the first 12 segments so compaction must maintain the index too.
        let written = Indexer {
            segments_per_index: 4,
            fan_out: 2,
        }
        .roll_up(&repo, &src())
        .await
        .unwrap()
        .written;
        assert_eq!(
            written.len(),
            3 + 1,
            "three level-0 objects and one level-1"
        );
        assert_eq!(check_full_coverage(&repo, &want).await, 14);

        let crashing = Repo::from_store(
            Arc::new(FaultyStore::new(
                Arc::clone(&mem),
                Fault::CrashAfter {
                    at: fail_at,
                    writes_only: false,
                    dead_after: false,
                },
            )),
            "crashing",
        );
        let outcome = compact(&crashing, &src(), &options(), NOW).await;
        check_full_coverage(&repo, &want).await;
        let finished = match outcome {
            Ok(report) => {
                assert!(report.skipped.is_empty());
                true
            }
            Err(e) => {
                assert!(e.to_string().contains("injected crash"), "{e}");
                crashes += 1;
                false
            }
        };
        // A clean re-run completes the job.
        compact(&repo, &src(), &options(), NOW).await.unwrap();
        let segments = check_full_coverage(&repo, &want).await;
        let listing = Catalog::load_listing(&repo, &src()).await.unwrap();
        assert_eq!(
            listing.stats().redundant_segments,
            0,
            "leftovers remain after fail_at={fail_at}"
        );
        assert!(
            (3..14).contains(&segments),
            "{segments} segments after compaction"
        );
        // The compacted ranges inside the indexed prefix were re-indexed.
        let index = list_index_keys(&repo, &src()).await.unwrap();
        assert!(
            index[&Epoch(1)].iter().any(|k| k.generation > 0),
            "{index:?}"
        );
        // A further run has nothing left to do.
        let again = compact(&repo, &src(), &options(), NOW).await.unwrap();
        assert!(
            again.merged.is_empty() && again.deleted.is_empty(),
            "{again:?}"
        );
        if finished {
            break;
        }
    }
    eprintln!("MEASURED: compaction survived a crash after each of {crashes} storage operations");
    assert!(crashes > 20, "only {crashes} crash points exercised");
}

#[tokio::test]
async fn young_and_large_segments_are_left_alone() {
    let repo = Repo::open("memory://").await.unwrap();
    let want = populate(&repo).await;
    // Commits of segments 8.. are younger than min_age at this `now`.
    let now = TimestampMicros(8_000 + 1_000_000);
    let report = compact(&repo, &src(), &options(), now).await.unwrap();
    let c = Catalog::load_listing(&repo, &src()).await.unwrap();
    let young = c
        .epoch(Epoch(1))
        .unwrap()
        .segments()
        .iter()
        .filter(|s| s.key.tmin >= Some(TimestampMicros(8_000)))
        .count();
    assert_eq!(young, 6);
    assert!(!report.merged.is_empty());
    for m in &report.merged {
        assert!(m.tmax < Some(TimestampMicros(8_000)), "{m:?}");
    }
    check_full_coverage(&repo, &want).await;
    // With a tiny target nothing is merged.
    let repo = Repo::open("memory://").await.unwrap();
    populate(&repo).await;
    let tiny = CompactionOptions {
        target_size: 100,
        ..options()
    };
    assert!(compact(&repo, &src(), &tiny, NOW)
        .await
        .unwrap()
        .merged
        .is_empty());
}
