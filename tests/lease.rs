//! Writer leases and fencing without servers: compare-and-swap on the local
//! and in-memory backends, segment/gap keys with and without a generation,
//! the fencing rule against its definition, and the lease protocol
//! (acquire, refuse, expire, take over, release, lose) on one repository.

#![allow(clippy::unwrap_used)] // test helpers unwrap; the workspace lint targets production code

use std::time::Duration;

use pitr::archive::catalog::{Catalog, FencedKind, SegmentEntry};
use pitr::archive::fence::{Fences, Takeover};
use pitr::archive::keys::{self, GapKey, SegmentKey, SourceName};
use pitr::archive::lease::{read_lease, Lease, LeaseError, LeaseOptions, LeaseState};
use pitr::storage::faults::{Fault, FaultyStore};
use pitr::storage::{conformance, Repo};
use pitr_segment::{Epoch, LogPos, TimestampMicros};
use proptest::prelude::*;
use tokio_util::sync::CancellationToken;

fn src() -> SourceName {
    SourceName::new("orders").unwrap()
}

#[tokio::test]
async fn compare_and_swap_on_memory() {
    let repo = Repo::open("memory://").await.unwrap();
    conformance::compare_and_swap(&repo, "cas").await;
}

#[tokio::test]
async fn compare_and_swap_on_a_local_directory() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::open(dir.path().to_str().unwrap()).await.unwrap();
    conformance::compare_and_swap(&repo, "cas").await;
    // Two repository handles (as two processes would have) exclude each other too.
    let other = Repo::open(dir.path().to_str().unwrap()).await.unwrap();
    let key = "cas/two-handles.json";
    repo.create_versioned(key, "a".into()).await.unwrap();
    let (_, v) = other.get_versioned(key).await.unwrap().unwrap();
    repo.put_if_version(key, "b".into(), &v).await.unwrap();
    assert!(other.put_if_version(key, "c".into(), &v).await.is_err());
    // The lock and temporary files stay out of the repository's listing.
    let listed: Vec<String> = repo
        .list("cas")
        .await
        .unwrap()
        .iter()
        .map(|m| m.location.to_string())
        .collect();
    assert_eq!(listed, vec![key.to_string()]);
}

fn seg(generation: u32, start: u64, end: u64) -> SegmentKey {
    SegmentKey {
        source: src(),
        epoch: Epoch(1),
        start: LogPos::from_lsn(start),
        end: LogPos::from_lsn(end),
        tmin: Some(TimestampMicros(start as i64)),
        tmax: Some(TimestampMicros(end as i64)),
        generation,
    }
}

#[test]
fn keys_without_a_generation_still_parse_as_generation_zero() {
    let old = "orders/0000000000000001/log/00000000000000000000000001000000-00000000000000000000000001000100_8000000000000001-8000000000000002.seg";
    let k = SegmentKey::parse(old).unwrap();
    assert_eq!(k.generation, 0);
    assert_eq!(k.to_key(), old);
    let new = SegmentKey {
        generation: 7,
        ..k.clone()
    };
    assert!(new.to_key().ends_with("8000000000000002_00000007.seg"));
    assert_eq!(SegmentKey::parse(&new.to_key()).unwrap(), new);
    // An explicit generation 0 suffix is not a second spelling of the old form.
    assert!(SegmentKey::parse(&old.replace(".seg", "_00000000.seg")).is_err());
    assert!(SegmentKey::parse(&old.replace(".seg", "_0000000g.seg")).is_err());
    let gap = "orders/0000000000000001/gaps/00000000000000000000000001000000-00000000000000000000000001000100.json";
    let g = GapKey::parse(gap).unwrap();
    assert_eq!(g.generation, 0);
    let g3 = GapKey {
        generation: 3,
        ..g.clone()
    };
    assert_eq!(GapKey::parse(&g3.to_key()).unwrap(), g3);
    assert_eq!(g.to_key(), gap);
    let t = Takeover {
        generation: 9,
        epoch: Epoch(2),
        position: LogPos::from_lsn(0x3000000),
    };
    assert_eq!(
        keys::parse_takeover_key(&src(), &keys::takeover_key(&src(), &t)),
        Some(t)
    );
    assert_eq!(
        keys::parse_takeover_key(&src(), &keys::writer_lease_key(&src())),
        None
    );
}

proptest! {
    #[test]
    fn old_and_new_segment_keys_sort_in_log_order(
        a in (0u64..1000, 1u64..100, any::<u32>()),
        b in (0u64..1000, 1u64..100, any::<u32>()),
    ) {
        let ka = seg(a.2, a.0, a.0 + a.1);
        let kb = seg(b.2, b.0, b.0 + b.1);
        prop_assert_eq!(SegmentKey::parse(&ka.to_key()).unwrap(), ka.clone());
        if (ka.start, ka.end) < (kb.start, kb.end) {
            prop_assert!(ka.to_key() < kb.to_key());
        }
    }

    /// `Fences::fenced_by` is the rule of its definition: fenced iff some
    /// takeover of a higher generation resumed before the object's end.
    #[test]
    fn fencing_follows_its_definition(
        takeovers in proptest::collection::vec((1u64..20, 0u64..3, 0u64..1000), 0..8),
        objects in proptest::collection::vec((0u32..20, 0u64..3, 0u64..1000), 1..30),
    ) {
        let ts: Vec<Takeover> = takeovers
            .iter()
            .map(|&(g, e, p)| Takeover { generation: g, epoch: Epoch(e), position: LogPos::from_lsn(p) })
            .collect();
        // One takeover record per generation (the lease's CAS guarantees it).
        let mut unique = ts.clone();
        unique.sort();
        unique.dedup_by_key(|t| t.generation);
        let fences = Fences::new(unique.clone());
        for (g, e, end) in objects {
            let end = LogPos::from_lsn(end);
            let expected = unique
                .iter()
                .any(|t| t.generation > u64::from(g) && (t.epoch, t.position) < (Epoch(e), end));
            let got = fences.fenced_by(g, Epoch(e), end);
            prop_assert_eq!(got.is_some(), expected);
            if let Some(t) = got {
                prop_assert!(t.generation > u64::from(g) && (t.epoch, t.position) < (Epoch(e), end));
            }
        }
    }
}

#[test]
fn the_catalog_never_resolves_through_fenced_objects() {
    let segs = vec![
        SegmentEntry {
            key: seg(1, 0, 100),
            size: 1,
        },
        SegmentEntry {
            key: seg(1, 100, 200),
            size: 1,
        },
        // Written by generation 1 after generation 2 took over at 200.
        SegmentEntry {
            key: seg(1, 200, 350),
            size: 5,
        },
        SegmentEntry {
            key: seg(2, 200, 300),
            size: 1,
        },
        SegmentEntry {
            key: seg(2, 300, 400),
            size: 1,
        },
    ];
    let late_gap = GapKey {
        source: src(),
        epoch: Epoch(1),
        start: LogPos::from_lsn(400),
        end: LogPos::from_lsn(500),
        generation: 1,
    };
    let t = Takeover {
        generation: 2,
        epoch: Epoch(1),
        position: LogPos::from_lsn(200),
    };
    let c =
        Catalog::from_parts_fenced(src(), segs, vec![late_gap.clone()], vec![], vec![], vec![t]);
    let chain = c
        .segments_covering(Epoch(1), LogPos::from_lsn(0), LogPos::from_lsn(400))
        .unwrap();
    assert!(chain
        .iter()
        .all(|k| k.generation != 1 || k.end <= LogPos::from_lsn(200)));
    assert_eq!(chain.len(), 4);
    assert_eq!(c.fenced().len(), 2);
    assert!(c
        .fenced()
        .iter()
        .any(|f| matches!(&f.object, FencedKind::Gap(g) if *g == late_gap)));
    assert!(c.epoch(Epoch(1)).unwrap().gaps().is_empty());
    assert_eq!(c.tail(Epoch(1)), Some(LogPos::from_lsn(400)));
    assert_eq!(c.stats().fenced_objects, 2);
    assert!(c.fenced()[0]
        .describe()
        .contains("generation 1 after generation 2"));
}

fn opts(ttl_ms: u64, wait: bool) -> LeaseOptions {
    LeaseOptions {
        ttl: Duration::from_millis(ttl_ms),
        wait,
        single_writer: false,
    }
}

#[tokio::test]
async fn a_lease_is_refused_while_live_and_taken_over_after_expiry() {
    let repo = Repo::open("memory://").await.unwrap();
    let cancel = CancellationToken::new();
    let a = Lease::acquire(&repo, &src(), opts(600, false), &cancel)
        .await
        .unwrap();
    assert_eq!(a.generation(), 1);
    let guard_a = a.guard();
    // Renewed past its first ttl: still live, still refused to others.
    tokio::time::sleep(Duration::from_millis(900)).await;
    guard_a.check().unwrap();
    match Lease::acquire(&repo, &src(), opts(600, false), &cancel).await {
        Err(LeaseError::Held { desc, .. }) => assert!(
            desc.contains(&format!("pid {}", std::process::id())),
            "{desc}"
        ),
        other => panic!("expected Held, got {other:?}"),
    }
    a.record_takeover(None).await.unwrap();
    // The holder dies (stops renewing): its own guard fails once its
    // deadline passes, and a waiting contender takes generation 2.
    drop(a);
    let b = Lease::acquire(&repo, &src(), opts(600, true), &cancel)
        .await
        .unwrap();
    assert_eq!(b.generation(), 2);
    let lost = guard_a.wait_lost().await;
    assert!(
        lost.to_string()
            .starts_with("lost the writer lease of orders to "),
        "{lost}"
    );
    assert!(guard_a.check().is_err());
    b.record_takeover(Some((Epoch(1), LogPos::from_lsn(200))))
        .await
        .unwrap();
    let c = Catalog::load(&repo, &src()).await.unwrap();
    assert_eq!(c.fences().takeovers().len(), 2);
    assert_eq!(c.fences().latest().unwrap().position, LogPos::from_lsn(200));
    // A clean release lets the next one in at once.
    b.release().await;
    let rec = read_lease(&repo, &src()).await.unwrap().unwrap();
    assert_eq!(rec.state(chrono::Utc::now()), LeaseState::Released);
    let d = Lease::acquire(&repo, &src(), opts(600, false), &cancel)
        .await
        .unwrap();
    assert_eq!(d.generation(), 3);
    d.release().await;
}

#[tokio::test]
async fn a_holder_that_finds_the_lease_taken_stops() {
    let repo = Repo::open("memory://").await.unwrap();
    let cancel = CancellationToken::new();
    let a = Lease::acquire(&repo, &src(), opts(900, false), &cancel)
        .await
        .unwrap();
    let guard = a.guard();
    // Another process takes generation 2 (as after a pause of `a`).
    let key = keys::writer_lease_key(&src());
    let (body, v) = repo.get_versioned(&key).await.unwrap().unwrap();
    let mut rec: serde_json::Value = serde_json::from_slice(&body).unwrap();
    rec["generation"] = 2.into();
    rec["holder"]["host"] = "elsewhere".into();
    rec["holder"]["pid"] = 4242.into();
    repo.put_if_version(&key, serde_json::to_vec(&rec).unwrap().into(), &v)
        .await
        .unwrap();
    let lost = guard.wait_lost().await;
    assert_eq!(
        lost.to_string(),
        "lost the writer lease of orders to elsewhere pid 4242 (generation 2); another process archives it now"
    );
    // Its release does not undo the other's lease.
    a.release().await;
    let now = read_lease(&repo, &src()).await.unwrap().unwrap();
    assert_eq!((now.generation, now.released), (2, false));
}

#[tokio::test]
async fn waiting_for_a_lease_can_be_cancelled() {
    let repo = Repo::open("memory://").await.unwrap();
    let cancel = CancellationToken::new();
    let a = Lease::acquire(&repo, &src(), opts(30_000, false), &cancel)
        .await
        .unwrap();
    let waiter = tokio::spawn({
        let repo = repo.clone();
        let cancel = cancel.clone();
        async move { Lease::acquire(&repo, &src(), opts(30_000, true), &cancel).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    cancel.cancel();
    assert!(matches!(waiter.await.unwrap(), Err(LeaseError::Cancelled)));
    a.release().await;
}

#[tokio::test]
async fn a_store_ignoring_conditional_writes_needs_a_declared_single_writer() {
    let store = FaultyStore::new(
        std::sync::Arc::new(object_store::memory::InMemory::new()),
        Fault::IgnoreConditions,
    );
    let repo = Repo::from_store(std::sync::Arc::new(store), "ignoring");
    let cancel = CancellationToken::new();
    match Lease::acquire(&repo, &src(), opts(3000, true), &cancel).await {
        Err(e @ LeaseError::Unsupported { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("ignores conditional writes") && msg.contains("--single-writer"),
                "{msg}"
            );
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
    let single = LeaseOptions {
        single_writer: true,
        ..opts(3000, true)
    };
    let lease = Lease::acquire(&repo, &src(), single, &cancel)
        .await
        .unwrap();
    assert_eq!(
        lease.generation(),
        1,
        "no lease object, but a generation above every earlier takeover"
    );
    lease.record_takeover(None).await.unwrap();
    assert!(read_lease(&repo, &src()).await.unwrap().is_none());
    let c = Catalog::load(&repo, &src()).await.unwrap();
    assert_eq!(c.fences().latest().map(|t| t.generation), Some(1));
    lease.release().await;
}

#[tokio::test]
async fn status_flags_an_expired_lease_and_fenced_objects() {
    use pitr::archive::identity::{ensure_identity, SourceIdentity};
    use pitr::monitor::status::source_status;
    let repo = Repo::open("memory://").await.unwrap();
    ensure_identity(
        &repo,
        &SourceIdentity::new("orders", pitr_segment::Engine::Postgres, "42"),
    )
    .await
    .unwrap();
    let cancel = CancellationToken::new();
    let a = Lease::acquire(&repo, &src(), opts(400, false), &cancel)
        .await
        .unwrap();
    a.record_takeover(None).await.unwrap();
    let now = chrono::Utc::now();
    let st = source_status(&repo, &src(), now).await.unwrap();
    assert_eq!(st.writer_lease.as_ref().unwrap().state, "live");
    assert!(st.problems(None).is_empty(), "{:?}", st.problems(None));
    // The holder stops renewing (dies): after the expiry, status says no archiver runs.
    drop(a);
    let later = now + chrono::Duration::seconds(5);
    let st = source_status(&repo, &src(), later).await.unwrap();
    assert_eq!(st.writer_lease.as_ref().unwrap().state, "expired");
    let p = st.problems(None);
    assert!(p.len() == 1 && p[0].contains("no archiver runs"), "{p:?}");
    // A generation-1 segment stored after generation 2 took over is fenced.
    let b = Lease::acquire(&repo, &src(), opts(400, true), &cancel)
        .await
        .unwrap();
    b.record_takeover(Some((Epoch(1), LogPos::from_lsn(100))))
        .await
        .unwrap();
    repo.put_if_absent(&seg(1, 100, 200).to_key(), "late".into())
        .await
        .unwrap();
    let st = source_status(&repo, &src(), chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(st.fenced.len(), 1);
    assert_eq!(
        (st.fenced[0].generation, st.fenced[0].fenced_by_generation),
        (1, 2)
    );
    let p = st.problems(None);
    assert!(p.iter().any(|m| m.contains("fenced")), "{p:?}");
    b.release().await;
}

#[tokio::test]
async fn prune_deletes_fenced_objects_and_nothing_a_backup_needs() {
    use pitr::archive::keys::BackupKey;
    use pitr::backup::postgres::manifest::{BackupManifest, MANIFEST_FORMAT_VERSION};
    use pitr::retention::{prune, Policy, PruneOptions};
    use pitr_postgres::lsn::Lsn;
    let repo = Repo::open("memory://").await.unwrap();
    let cancel = CancellationToken::new();
    // Generation 1 archived [0, 100); generation 2 took over at 100 and
    // archived [100, 300); a late generation-1 upload of [100, 200) is fenced.
    let a = Lease::acquire(&repo, &src(), opts(400, false), &cancel)
        .await
        .unwrap();
    a.record_takeover(None).await.unwrap();
    repo.put_if_absent(&seg(1, 0, 100).to_key(), "s1".into())
        .await
        .unwrap();
    drop(a);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b = Lease::acquire(&repo, &src(), opts(400, true), &cancel)
        .await
        .unwrap();
    b.record_takeover(Some((Epoch(1), LogPos::from_lsn(100))))
        .await
        .unwrap();
    for (g, s, e) in [(2, 100, 300), (1, 100, 200)] {
        repo.put_if_absent(&seg(g, s, e).to_key(), "s".into())
            .await
            .unwrap();
    }
    let now = chrono::Utc::now();
    let key = BackupKey::new(src(), LogPos::from_lsn(0), "20240101T000000000Z").unwrap();
    let m = BackupManifest {
        format_version: MANIFEST_FORMAT_VERSION,
        id: key.id.clone(),
        label: "t".into(),
        engine: "postgres".into(),
        system_id: "42".into(),
        server_version: "15".into(),
        timeline: 1,
        start_lsn: Lsn(0),
        stop_lsn: Lsn(50),
        start_time: now,
        stop_time: now,
        archives: vec![],
        backup_manifest: None,
    };
    repo.put_if_absent(&key.to_key(), serde_json::to_vec(&m).unwrap().into())
        .await
        .unwrap();
    let opts = |dry_run| PruneOptions {
        policy: Policy {
            keep_backups: Some(1),
            recovery_window: None,
        },
        dry_run,
        log_alignment: 1,
        ..PruneOptions::default()
    };
    let fenced = seg(1, 100, 200).to_key();
    let dry = prune(&repo, &src(), &opts(true)).await.unwrap();
    assert_eq!(dry.deleted_fenced, vec![fenced.clone()]);
    assert!(
        repo.exists(&fenced).await.unwrap(),
        "a dry run deletes nothing"
    );
    let rep = prune(&repo, &src(), &opts(false)).await.unwrap();
    assert_eq!(rep.deleted_fenced, vec![fenced.clone()]);
    assert_eq!(rep.deleted_keys, vec![fenced.clone()]);
    assert!(!repo.exists(&fenced).await.unwrap());
    // The kept backup's chain is intact.
    let catalog = Catalog::load_listing(&repo, &src()).await.unwrap();
    assert!(catalog.fenced().is_empty());
    catalog
        .segments_covering(Epoch(1), LogPos::from_lsn(0), LogPos::from_lsn(300))
        .unwrap();
    b.release().await;
}
