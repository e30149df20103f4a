//! Fencing without holes, without servers: generations derived from the
//! whole repository (never from the lease object alone), expiry that no
//! clock skew below a ttl can cut short, a renewal whose answer was lost,
//! stores that ignore `If-Match`, a first attempt cleaning up after itself
//! without touching a successor's lease, and prune re-reading restore pins
//! before each batch of deletions.

#![allow(clippy::unwrap_used)] // test helpers unwrap; the workspace lint targets production code

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use pitr::archive::catalog::Catalog;
use pitr::archive::keys::{self, BackupKey, SourceName};
use pitr::archive::lease::{
    generation_floor, read_lease, Lease, LeaseError, LeaseOptions, LeaseRecord,
};
use pitr::archive::pins::{Pin, PinAppeared, PinGuard, PinRange, PinWatch};
use pitr::storage::faults::{Fault, FaultyStore};
use pitr::storage::Repo;
use pitr_segment::{Epoch, LogPos};
use tokio_util::sync::CancellationToken;

fn src() -> SourceName {
    SourceName::new("orders").unwrap()
}

fn opts(ttl_ms: u64, wait: bool) -> LeaseOptions {
    LeaseOptions {
        ttl: Duration::from_millis(ttl_ms),
        wait,
        single_writer: false,
    }
}

/// Writes `rec` over the lease object, as another process would.
async fn overwrite_lease(repo: &Repo, rec: &LeaseRecord) {
    let key = keys::writer_lease_key(&src());
    let body = serde_json::to_vec(rec).unwrap();
    match repo.get_versioned(&key).await.unwrap() {
        Some((_, v)) => repo.put_if_version(&key, body.into(), &v).await.unwrap(),
        None => repo.create_versioned(&key, body.into()).await.unwrap(),
    };
}

fn foreign(generation: u64, expires_in_ms: i64, ttl_ms: u64) -> LeaseRecord {
    let now = Utc::now();
    LeaseRecord {
        generation,
        holder: serde_json::from_value(serde_json::json!({
            "host": "elsewhere", "pid": 4242, "started": now
        }))
        .unwrap(),
        acquired_at: now,
        renewed_at: now,
        expires_at: now + chrono::Duration::milliseconds(expires_in_ms),
        ttl_ms,
        released: false,
    }
}

#[tokio::test]
async fn a_removed_lease_object_never_lowers_the_generation() {
    let repo = Repo::open("memory://").await.unwrap();
    let cancel = CancellationToken::new();
    for (want, at) in [(1u64, 100u64), (2, 200), (3, 300)] {
        let l = Lease::acquire(&repo, &src(), opts(600, false), &cancel)
            .await
            .unwrap();
        assert_eq!(u64::from(l.generation()), want);
        l.record_takeover(Some((Epoch(1), LogPos::from_lsn(at))))
            .await
            .unwrap();
        l.release().await;
    }
    // The operator deletes the lease object (as an unreadable one's error
    // text says to): the next writer continues above every takeover record.
    repo.delete(&keys::writer_lease_key(&src())).await.unwrap();
    assert_eq!(generation_floor(&repo, &src()).await.unwrap(), 3);
    let next = Lease::acquire(&repo, &src(), opts(600, false), &cancel)
        .await
        .unwrap();
    assert_eq!(
        next.generation(),
        4,
        "generation 1 would be fenced by 2 and 3"
    );
    next.record_takeover(Some((Epoch(1), LogPos::from_lsn(300))))
        .await
        .unwrap();
    let c = Catalog::load(&repo, &src()).await.unwrap();
    assert_eq!(
        c.fences()
            .fenced_by(next.generation(), Epoch(1), LogPos::from_lsn(10_000)),
        None,
        "what the new writer stores past the last takeover is not fenced"
    );
    next.release().await;
}

#[tokio::test]
async fn a_lease_object_behind_the_takeover_records_is_taken_over_above_them() {
    let repo = Repo::open("memory://").await.unwrap();
    let cancel = CancellationToken::new();
    let a = Lease::acquire(&repo, &src(), opts(600, false), &cancel)
        .await
        .unwrap();
    a.record_takeover(None).await.unwrap();
    let b_gen = {
        // A later writer's takeover record survives while the lease object
        // was recreated by hand at a lower generation.
        a.release().await;
        let b = Lease::acquire(&repo, &src(), opts(600, false), &cancel)
            .await
            .unwrap();
        b.record_takeover(Some((Epoch(1), LogPos::from_lsn(50))))
            .await
            .unwrap();
        let generation = u64::from(b.generation());
        b.release().await;
        generation
    };
    let mut low = foreign(1, -1, 600);
    low.released = true;
    overwrite_lease(&repo, &low).await;
    let c = Lease::acquire(&repo, &src(), opts(600, false), &cancel)
        .await
        .unwrap();
    assert_eq!(u64::from(c.generation()), b_gen + 1);
    c.release().await;
}

#[tokio::test]
async fn a_declared_single_writer_writes_above_earlier_takeovers() {
    let inner: Arc<dyn object_store::ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    // Earlier, the store honoured conditional writes and leases ran there.
    let honest = Repo::from_store(inner.clone(), "honest");
    let cancel = CancellationToken::new();
    for _ in 0..2 {
        let l = Lease::acquire(&honest, &src(), opts(600, false), &cancel)
            .await
            .unwrap();
        l.record_takeover(Some((Epoch(1), LogPos::from_lsn(100))))
            .await
            .unwrap();
        l.release().await;
    }
    let ignoring = Repo::from_store(
        Arc::new(FaultyStore::new(inner, Fault::IgnoreConditions)),
        "ignoring",
    );
    let single = LeaseOptions {
        single_writer: true,
        ..opts(600, true)
    };
    let lease = Lease::acquire(&ignoring, &src(), single, &cancel)
        .await
        .unwrap();
    assert_eq!(lease.generation(), 3);
    lease
        .record_takeover(Some((Epoch(1), LogPos::from_lsn(100))))
        .await
        .unwrap();
    lease.release().await;
    let again = Lease::acquire(&ignoring, &src(), single, &cancel)
        .await
        .unwrap();
    assert_eq!(again.generation(), 4, "every run records its own takeover");
    again.release().await;
}

#[tokio::test]
async fn a_store_that_ignores_if_match_is_refused_by_name() {
    let store = FaultyStore::new(
        Arc::new(object_store::memory::InMemory::new()),
        Fault::IgnoreIfMatch,
    );
    let repo = Repo::from_store(Arc::new(store), "strips-if-match");
    assert!(repo.conditional_puts().await.unwrap());
    assert!(!repo.conditional_updates().await.unwrap());
    let cancel = CancellationToken::new();
    match Lease::acquire(&repo, &src(), opts(600, true), &cancel).await {
        Err(e @ LeaseError::Unsupported { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("If-Match") && msg.contains("--single-writer"),
                "{msg}"
            );
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
    // Nothing was left behind by the probe or the refusal.
    let left = repo.list("").await.unwrap();
    assert!(left.is_empty(), "{left:?}");
    // An honest store passes the probe.
    let honest = Repo::open("memory://").await.unwrap();
    assert!(honest.conditional_updates().await.unwrap());
}

#[tokio::test]
async fn a_renewing_holder_is_never_taken_over_whatever_its_clock_says() {
    let repo = Repo::open("memory://").await.unwrap();
    let cancel = CancellationToken::new();
    // A live holder whose clock runs a minute behind ours: by our clock its
    // `expires_at` has long passed at every renewal (every 100 ms).
    let stop = CancellationToken::new();
    let renewer = tokio::spawn({
        let (repo, stop) = (repo.clone(), stop.clone());
        async move {
            while !stop.is_cancelled() {
                overwrite_lease(&repo, &foreign(5, -60_000, 600)).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let contender = tokio::spawn({
        let (repo, cancel) = (repo.clone(), cancel.clone());
        async move { Lease::acquire(&repo, &src(), opts(600, true), &cancel).await }
    });
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert!(
        !contender.is_finished(),
        "a holder renewing its lease was taken over"
    );
    // It stops renewing (dies): taken over once unchanged for its ttl.
    stop.cancel();
    renewer.await.unwrap();
    let l = tokio::time::timeout(Duration::from_secs(10), contender)
        .await
        .expect("taken over after a ttl unrenewed")
        .unwrap()
        .unwrap();
    assert_eq!(l.generation(), 6);
    l.release().await;
    // --no-wait refuses a lease that is live by the contender's clock.
    overwrite_lease(&repo, &foreign(9, 60_000, 600)).await;
    match Lease::acquire(&repo, &src(), opts(600, false), &cancel).await {
        Err(LeaseError::Held { desc, .. }) => assert!(desc.contains("elsewhere"), "{desc}"),
        other => panic!("expected Held, got {other:?}"),
    }
}

#[tokio::test]
async fn a_holder_whose_clock_runs_ahead_is_taken_over_once_unchanged_for_a_ttl() {
    let repo = Repo::open("memory://").await.unwrap();
    let cancel = CancellationToken::new();
    // A dead holder whose clock ran an hour ahead: its `expires_at` lies far
    // in our future, yet the object has not changed for a whole ttl.
    overwrite_lease(&repo, &foreign(7, 3_600_000, 500)).await;
    let started = std::time::Instant::now();
    let l = tokio::time::timeout(
        Duration::from_secs(10),
        Lease::acquire(&repo, &src(), opts(500, true), &cancel),
    )
    .await
    .expect("a lease unchanged for its ttl is taken over")
    .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert_eq!(l.generation(), 8);
    l.release().await;
}

#[tokio::test]
async fn a_renewal_applied_but_answered_with_an_error_is_not_a_loss() {
    let inner: Arc<dyn object_store::ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    // Updates 1 and 2 are the repository's If-Match probe; 3 is the first renewal.
    let faulty = Arc::new(FaultyStore::new(
        inner,
        Fault::FailUpdateAfterApplying { nth: 3 },
    ));
    let repo = Repo::from_store(faulty.clone(), "flaky");
    let cancel = CancellationToken::new();
    let l = Lease::acquire(&repo, &src(), opts(600, false), &cancel)
        .await
        .unwrap();
    let guard = l.guard();
    // Several renewals (every 200 ms), the first one applied but answered
    // with an error: the next one conflicts with it.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(faulty.injected() >= 1, "the fault was injected");
    guard.check().expect("still the holder");
    let rec = read_lease(&repo, &src()).await.unwrap().unwrap();
    assert_eq!(rec.generation, 1);
    assert_eq!(rec.holder.pid, std::process::id());
    assert!(rec.expires_at > Utc::now(), "renewed after the fault");
    l.release().await;
}

#[tokio::test]
async fn an_unused_lease_removes_only_its_own_objects() {
    let repo = Repo::open("memory://").await.unwrap();
    let cancel = CancellationToken::new();
    // A first attempt that never wrote leaves nothing behind.
    let a = Lease::acquire(&repo, &src(), opts(600, false), &cancel)
        .await
        .unwrap();
    a.record_takeover(None).await.unwrap();
    a.release_unused().await;
    assert!(repo.list("orders/lease/").await.unwrap().is_empty());
    // One whose lease was taken over meanwhile leaves the successor's alone.
    let a = Lease::acquire(&repo, &src(), opts(600, false), &cancel)
        .await
        .unwrap();
    overwrite_lease(&repo, &foreign(2, 60_000, 60_000)).await;
    a.release_unused().await;
    let now = read_lease(&repo, &src()).await.unwrap().unwrap();
    assert_eq!((now.generation, now.holder.pid), (2, 4242));
}

#[tokio::test]
async fn prune_stops_when_a_restore_pins_during_its_deletions() {
    let repo = Repo::open("memory://").await.unwrap();
    let backup = BackupKey::new(src(), LogPos::from_lsn(100), "20260101T000000000Z").unwrap();
    let pin = |target: &str| {
        Pin::new(
            &src(),
            target,
            &backup,
            vec![PinRange::new(Epoch(1), LogPos::from_lsn(100), None)],
            Utc::now(),
            Duration::from_secs(60),
        )
    };
    let first = PinGuard::acquire(&repo, pin("latest"), Duration::from_secs(60))
        .await
        .unwrap();
    let known = pitr::archive::pins::live_pins(&repo, &src(), Utc::now())
        .await
        .unwrap();
    assert_eq!(known.len(), 1);
    let mut watch = PinWatch::new(&repo, &src(), &known);
    for _ in 0..100 {
        watch.before_delete().await.unwrap();
    }
    // A restore pins now: the next batch stops.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = PinGuard::acquire(&repo, pin("time 2026-01-01"), Duration::from_secs(60))
        .await
        .unwrap();
    watch.batch();
    let err = watch.before_delete().await.unwrap_err();
    let appeared = err.downcast::<PinAppeared>().unwrap();
    assert!(
        appeared.to_string().contains("time 2026-01-01") || appeared.to_string().contains("pin"),
        "{appeared}"
    );
    second.release().await.unwrap();
    first.release().await.unwrap();
}

#[tokio::test]
async fn only_the_same_boot_and_pid_namespace_tell_a_holder_is_gone() {
    use pitr::archive::lease::Holder;
    let repo = Repo::open("memory://").await.unwrap();
    let cancel = CancellationToken::new();
    let me = Holder::me();
    // A pid that no process has (beyond pid_max).
    let dead_pid = 4_194_304 + 17;
    // A cloned machine: same host name, same namespace path, another boot.
    let mut clone = foreign(3, 60_000, 60_000);
    clone.holder = Holder {
        pid: dead_pid,
        boot_id: Some("00000000-0000-0000-0000-000000000000".into()),
        ..me.clone()
    };
    overwrite_lease(&repo, &clone).await;
    match Lease::acquire(&repo, &src(), opts(60_000, false), &cancel).await {
        Err(LeaseError::Held { .. }) => {}
        other => panic!("a live lease of a same-named host was taken: {other:?}"),
    }
    // The same boot and namespace, and no such process: taken at once.
    let mut crashed = foreign(3, 60_000, 60_000);
    crashed.holder = Holder {
        pid: dead_pid,
        ..me.clone()
    };
    overwrite_lease(&repo, &crashed).await;
    let l = Lease::acquire(&repo, &src(), opts(60_000, false), &cancel)
        .await
        .unwrap();
    assert_eq!(l.generation(), 4);
    l.release().await;
}

/// A segment whose put completes only after the holder's lease deadline does
/// not count as stored: the sink reports it, so the durable watermark (and
/// what a PostgreSQL archiver confirms to the server) never covers it.
#[tokio::test]
async fn a_put_that_lands_after_the_lease_deadline_does_not_count() {
    use pitr::archive::pipeline::{SealedSegment, SegmentSink};
    use pitr::archive::sink::RepoSink;
    let inner: Arc<dyn object_store::ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let repo = Repo::from_store(inner.clone(), "memory");
    let slow = Repo::from_store(
        Arc::new(FaultyStore::new(
            inner,
            Fault::SlowPuts(Duration::from_millis(1_500)),
        )),
        "slow",
    );
    let cancel = CancellationToken::new();
    let lease = Lease::acquire(&repo, &src(), opts(600, false), &cancel)
        .await
        .unwrap();
    let sink = RepoSink {
        repo: slow,
        source: src(),
        engine: pitr_segment::Engine::Postgres,
        system_id: "42".into(),
        zstd_level: 1,
        lease: lease.guard(),
        reuse: Default::default(),
        keys_checked: Default::default(),
    };
    let seg = SealedSegment {
        epoch: Epoch(1),
        start: LogPos::from_lsn(0x100),
        end: LogPos::from_lsn(0x200),
        first_commit: None,
        last_commit: None,
        records: 0,
        raw: vec![bytes::Bytes::from(vec![7u8; 0x100])],
    };
    // In time: stored.
    sink.store(&seg).await.unwrap();
    // The holder stops renewing (paused, cut off) while a put is under way:
    // its deadline passes before the put completes.
    let guard = lease.guard();
    drop(lease);
    let later = SealedSegment {
        start: LogPos::from_lsn(0x200),
        end: LogPos::from_lsn(0x300),
        ..seg.clone()
    };
    let e = sink.store(&later).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("only after this archiver's lease deadline"),
        "{e}"
    );
    assert!(guard.check().is_err());
}
