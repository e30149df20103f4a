//! Retention on in-memory repositories: random histories (two timelines,
//! gap records, roll-up index objects, leftover segments, backups) pruned
//! with random policies. After every prune — complete, dry-run, or
//! interrupted by a crash after any storage operation — every kept backup
//! still has exactly the log chain it had (to its epoch's end), the index
//! agrees with a plain listing, no backup directory is half there with a
//! manifest, and a re-run reaches the same final state as an uninterrupted
//! prune.

#![allow(clippy::unwrap_used)] // test helpers unwrap; the workspace lint targets production code

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use object_store::memory::InMemory;
use object_store::ObjectStore;
use pitr::archive::catalog::{Catalog, CoverageError};
use pitr::archive::gaps::{write_gap, GapRecord};
use pitr::archive::keys::{BackupKey, SegmentKey, SourceName};
use pitr::archive::rollup::Indexer;
use pitr::backup::postgres::manifest::{
    list_backups, ArchiveInfo, BackupManifest, PartInfo, MANIFEST_FORMAT_VERSION,
};
use pitr::retention::{align_down, prune, Policy, PruneOptions, PruneReport};
use pitr::storage::faults::{Fault, FaultyStore};
use pitr::storage::Repo;
use pitr_postgres::lsn::Lsn;
use pitr_segment::{Epoch, LogPos, TimestampMicros};
use proptest::prelude::*;

const FILE: u64 = 0x1000; // the "WAL file" size of these histories

fn src() -> SourceName {
    SourceName::new("db").unwrap()
}

const BASE: i64 = 1_704_067_200; // 2024-01-01T00:00:00Z

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(BASE + 1_500, 0).unwrap()
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A random history: epoch 1 over `files` WAL files, optionally epoch 2
/// continuing from a file boundary; segments never cross a file boundary;
/// some segments replaced by gap records; backups at random positions.
async fn populate(repo: &Repo, seed: u64) -> usize {
    let mut rng = Rng(seed | 1);
    let two_epochs = rng.below(3) == 0;
    let files1 = 4 + rng.below(8);
    let mut epochs = vec![(Epoch(1), FILE, FILE * (1 + files1))];
    if two_epochs {
        let switch = FILE * (2 + rng.below(files1 - 1));
        epochs.push((Epoch(2), switch, switch + FILE * (2 + rng.below(5))));
    }
    let mut t = 1_000_000i64;
    let mut backups = 0;
    for &(epoch, from, to) in &epochs {
        let mut pos = from;
        let mut starts = Vec::new();
        while pos < to {
            let file_end = (pos / FILE + 1) * FILE;
            let len = if rng.below(3) == 0 {
                file_end - pos
            } else {
                (1 + rng.below(FILE / 2)).min(file_end - pos)
            };
            let (start, end) = (LogPos::from_lsn(pos), LogPos::from_lsn(pos + len));
            if rng.below(25) == 0 {
                let gap = GapRecord {
                    epoch,
                    start,
                    end,
                    reason: "test".into(),
                    detected_at: now(),
                    generation: 0,
                };
                write_gap(repo, &src(), &gap).await.unwrap();
            } else {
                let key = SegmentKey {
                    source: src(),
                    epoch,
                    start,
                    end,
                    tmin: Some(TimestampMicros(t)),
                    tmax: Some(TimestampMicros(t + 10)),
                    generation: 0,
                };
                let body = Bytes::from(vec![(pos % 251) as u8; 16]);
                repo.put_if_absent(&key.to_key(), body).await.unwrap();
                // Now and then a compaction leftover inside it.
                if len > 2 && rng.below(10) == 0 {
                    let inner = SegmentKey {
                        end: LogPos::from_lsn(pos + len / 2),
                        ..key.clone()
                    };
                    repo.put_if_absent(&inner.to_key(), Bytes::from_static(b"x"))
                        .await
                        .unwrap();
                }
            }
            starts.push(pos);
            t += 1_000;
            pos += len;
        }
        // Roll up part of the history (the rest stays listed).
        if rng.below(2) == 0 {
            let ix = Indexer {
                segments_per_index: 2 + rng.below(3) as usize,
                fan_out: 2,
            };
            ix.roll_up(repo, &src()).await.unwrap();
        }
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(starts.len() as u64 - 1) as usize;
            let start = starts[i] + rng.below(5);
            let stop = starts[i + 1];
            let secs = BASE + t / 1_000 + i as i64;
            let stop_time = DateTime::from_timestamp(secs, 0).unwrap();
            if put_backup(repo, epoch, start, stop, stop_time).await {
                backups += 1;
            }
        }
    }
    // An incomplete backup (crashed) at the very start, long ago.
    if rng.below(2) == 0 {
        let k = BackupKey::new(src(), LogPos::from_lsn(FILE), "20200101T000000000Z").unwrap();
        repo.put_if_absent(
            &k.part_key("base.tar.zst.000").unwrap(),
            Bytes::from_static(b"p"),
        )
        .await
        .unwrap();
    }
    backups
}

/// Writes a complete backup; false when one with the same key (same start
/// position and time, drawn twice, possibly on another timeline) exists.
async fn put_backup(
    repo: &Repo,
    epoch: Epoch,
    start: u64,
    stop: u64,
    stop_time: DateTime<Utc>,
) -> bool {
    let start_time = stop_time - chrono::Duration::milliseconds(1);
    let id = start_time.format("%Y%m%dT%H%M%S%3fZ").to_string();
    let key = BackupKey::new(src(), LogPos::from_lsn(start), &id).unwrap();
    if repo.exists(&key.to_key()).await.unwrap() {
        return false;
    }
    let mut parts = Vec::new();
    for p in 0..2 {
        let name = format!("base.tar.zst.{p:03}");
        repo.put_if_absent(&key.part_key(&name).unwrap(), Bytes::from(vec![p; 8]))
            .await
            .unwrap();
        parts.push(PartInfo {
            key: name,
            size: 8,
            sha256: String::new(),
        });
    }
    let m = BackupManifest {
        format_version: MANIFEST_FORMAT_VERSION,
        id,
        label: "t".into(),
        engine: "postgres".into(),
        system_id: "1".into(),
        server_version: "15".into(),
        timeline: epoch.0 as u32,
        start_lsn: Lsn(start),
        stop_lsn: Lsn(stop),
        start_time,
        stop_time,
        archives: vec![ArchiveInfo {
            name: "base.tar".into(),
            tablespace_oid: None,
            tablespace_path: String::new(),
            size: 16,
            sha256: String::new(),
            parts,
        }],
        backup_manifest: None,
    };
    repo.put_if_absent(&key.to_key(), Bytes::from(serde_json::to_vec(&m).unwrap()))
        .await
        .unwrap();
    true
}

fn options(keep: usize, window: Option<u64>, dry_run: bool) -> PruneOptions {
    PruneOptions {
        policy: Policy {
            keep_backups: (keep > 0).then_some(keep),
            recovery_window: window.map(Duration::from_secs),
        },
        dry_run,
        log_alignment: FILE,
        incomplete_grace: Duration::from_secs(60),
        now: now(),
    }
}

async fn all_keys(repo: &Repo) -> BTreeSet<String> {
    repo.list("")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.location.to_string())
        .filter(|k| !k.starts_with(".pitr-scratch"))
        .collect()
}

type Chain = std::result::Result<Vec<SegmentKey>, CoverageError>;

/// Per backup (by directory): its log chain from its aligned start to the
/// end of every epoch from its own on.
async fn chains(repo: &Repo, catalog: &Catalog) -> Vec<(String, Vec<Chain>)> {
    let backups = list_backups(repo, &src(), catalog.backups()).await.unwrap();
    let mut out = Vec::new();
    for (k, m) in backups {
        let e = Epoch(u64::from(m.timeline));
        let mut v = Vec::new();
        for epoch in catalog.epochs().into_iter().filter(|x| *x >= e) {
            let ec = catalog.epoch(epoch).unwrap();
            let end = ec.segments().last().map(|s| s.key.end).unwrap();
            let from = if epoch == e {
                align_down(k.start, FILE)
            } else {
                ec.segments()[0].key.start
            };
            v.push(catalog.segments_covering(epoch, from, end));
        }
        out.push((k.dir(), v));
    }
    out
}

/// The invariants every state (final or after a crash) must satisfy.
/// `from`: compare index and listing only from this (epoch, position) on —
/// mid-prune, segments before the cut may still exist and the index (which
/// never lists before its first object) rightly no longer shows them.
async fn check_consistent(
    repo: &Repo,
    kept_before: &[(String, Vec<Chain>)],
    from: Option<(Epoch, LogPos)>,
) {
    let indexed = Catalog::load(repo, &src()).await.unwrap();
    let listed = Catalog::load_listing(repo, &src()).await.unwrap();
    let wanted = |s: &pitr::archive::catalog::SegmentEntry| match from {
        None => true,
        Some((e, p)) => s.key.epoch > e || (s.key.epoch == e && s.key.end > p),
    };
    for e in listed.epochs() {
        let a: Vec<_> = indexed
            .epoch(e)
            .map(|c| c.segments().to_vec())
            .unwrap_or_default();
        let b = listed.epoch(e).unwrap().segments().to_vec();
        let a: Vec<_> = a.into_iter().filter(|s| wanted(s)).collect();
        let b: Vec<_> = b.into_iter().filter(|s| wanted(s)).collect();
        assert_eq!(a, b, "index disagrees with the listing on epoch {e}");
    }
    // Every backup with a manifest has all its parts.
    let keys = all_keys(repo).await;
    for (k, m) in list_backups(repo, &src(), listed.backups()).await.unwrap() {
        for p in m.archives.iter().flat_map(|a| &a.parts) {
            let part = k.part_key(&p.key).unwrap();
            assert!(
                keys.contains(&part),
                "{} has a manifest but lost {part}",
                k.dir()
            );
        }
    }
    // Kept backups: same chains, through the index and the listing.
    for cat in [&indexed, &listed] {
        let now_chains = chains(repo, cat).await;
        for (dir, before) in kept_before {
            let after = now_chains
                .iter()
                .find(|(d, _)| d == dir)
                .unwrap_or_else(|| panic!("kept backup {dir} is gone"));
            assert_eq!(&after.1, before, "log chain of kept backup {dir} changed");
        }
    }
}

/// Runs one scenario; returns the final key set.
async fn scenario(
    seed: u64,
    keep: usize,
    window: Option<u64>,
) -> (BTreeSet<String>, (Epoch, LogPos)) {
    let repo = Repo::open("memory://").await.unwrap();
    populate(&repo, seed).await;
    let before_keys = all_keys(&repo).await;
    let before_cat = Catalog::load_listing(&repo, &src()).await.unwrap();
    let before_chains = chains(&repo, &before_cat).await;
    let repo_backups = list_backups(&repo, &src(), before_cat.backups())
        .await
        .unwrap()
        .into_iter()
        .map(|(k, m)| {
            let restorable = before_cat
                .segments_covering(
                    Epoch(u64::from(m.timeline)),
                    align_down(k.start, FILE),
                    LogPos::from_lsn(m.stop_lsn.0),
                )
                .is_ok();
            (k.dir(), m.stop_time, restorable)
        })
        .collect::<Vec<_>>();

    let dry = prune(&repo, &src(), &options(keep, window, true))
        .await
        .unwrap();
    assert_eq!(
        all_keys(&repo).await,
        before_keys,
        "dry run changed the repository"
    );
    let rep = prune(&repo, &src(), &options(keep, window, false))
        .await
        .unwrap();
    assert_eq!(
        dry.deleted_keys.iter().collect::<BTreeSet<_>>(),
        rep.deleted_keys.iter().collect::<BTreeSet<_>>(),
        "dry run and real run disagree"
    );
    check_expectations(&rep, &before_cat, &before_keys);
    check_selection(&repo_backups, &rep, keep, window);
    let kept: Vec<_> = before_chains
        .iter()
        .filter(|(d, _)| rep.kept_backups.contains(d))
        .cloned()
        .collect();
    assert_eq!(kept.len(), rep.kept_backups.len());
    check_consistent(&repo, &kept, None).await;
    let after = all_keys(&repo).await;
    for k in &rep.deleted_keys {
        assert!(!after.contains(k), "{k} reported deleted but still there");
    }
    // A second run has nothing left to do.
    let again = prune(&repo, &src(), &options(keep, window, false))
        .await
        .unwrap();
    assert!(
        again.deleted_keys.is_empty(),
        "second run deleted {:?}",
        again.deleted_keys
    );
    let cut = rep.cut.map(|c| {
        (
            Epoch::from_hex(&c.epoch).unwrap(),
            LogPos::from_hex(&c.position).unwrap(),
        )
    });
    (after, cut.unwrap_or((Epoch(0), LogPos::ZERO)))
}

/// The kept backups follow the policy (checked independently of `select`).
fn check_selection(
    all: &[(String, DateTime<Utc>, bool)],
    rep: &PruneReport,
    keep: usize,
    window: Option<u64>,
) {
    let kept = |d: &String| rep.kept_backups.contains(d);
    let restorable = all.iter().filter(|b| b.2).count();
    if rep.kept_backups.is_empty() {
        // Nothing restorable and nothing inside the window: nothing deleted.
        assert!(rep.deleted_keys.is_empty() && rep.note.is_some(), "{rep:?}");
        return;
    }
    let kept_restorable = all.iter().filter(|b| b.2 && kept(&b.0)).count();
    if keep > 0 {
        assert!(kept_restorable >= keep.min(restorable), "{rep:?}");
    }
    if window.is_none() && keep > 0 && restorable > 0 {
        // The keep-th newest restorable backup and everything newer stay.
        let mut times: Vec<_> = all.iter().filter(|b| b.2).map(|b| b.1).collect();
        times.sort_by(|a, b| b.cmp(a));
        let kth = times[keep.min(restorable) - 1];
        for b in all {
            assert_eq!(
                kept(&b.0),
                b.1 >= kth,
                "{} (stop {}) vs keep {keep}",
                b.0,
                b.1
            );
        }
    }
    if let Some(w) = window {
        let edge = now() - chrono::Duration::seconds(w as i64);
        for b in all.iter().filter(|b| b.1 > edge) {
            assert!(
                kept(&b.0),
                "{} finished inside the window but was deleted",
                b.0
            );
        }
        if let Some(before_edge) = all.iter().filter(|b| b.1 <= edge && b.2).map(|b| b.1).max() {
            assert!(
                all.iter().any(|b| b.1 == before_edge && b.2 && kept(&b.0)),
                "the newest restorable backup before the window edge was deleted"
            );
        }
    }
    let oldest_kept = all.iter().filter(|b| kept(&b.0)).map(|b| b.1).min();
    for b in all.iter().filter(|b| !kept(&b.0)) {
        assert!(
            oldest_kept.is_some_and(|o| b.1 < o),
            "deleted {} is not older than every kept backup",
            b.0
        );
        assert!(rep.deleted_backups.contains(&b.0));
    }
}

/// Deleted objects are exactly backups not kept and log before the cut.
fn check_expectations(rep: &PruneReport, before: &Catalog, keys: &BTreeSet<String>) {
    let Some(cut) = rep.cut.as_ref() else {
        assert!(rep.deleted_keys.is_empty());
        return;
    };
    let cut_epoch = Epoch::from_hex(&cut.epoch).unwrap();
    let cut_pos = LogPos::from_hex(&cut.position).unwrap();
    for k in &rep.deleted_keys {
        assert!(keys.contains(k), "deleted a key that never existed: {k}");
        if let Ok(s) = SegmentKey::parse(k) {
            assert!(
                s.epoch < cut_epoch || (s.epoch == cut_epoch && s.end <= cut_pos),
                "deleted segment {k} is not before the cut {cut:?}"
            );
        } else if k.contains("/backups/") {
            assert!(
                !rep.kept_backups.iter().any(|d| k.starts_with(d.as_str())),
                "deleted {k} of a kept backup"
            );
        }
    }
    // Everything before the cut is gone.
    for e in before.epochs().into_iter().filter(|e| *e <= cut_epoch) {
        for s in before.epoch(e).unwrap().segments() {
            if e < cut_epoch || s.key.end <= cut_pos {
                assert!(
                    rep.deleted_keys.contains(&s.key.to_key()),
                    "{:?} kept",
                    s.key
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn prune_keeps_every_needed_byte(seed in any::<u64>(), keep in 0usize..4, window in proptest::option::of(0u64..600)) {
        let keep = if window.is_none() { keep.max(1) } else { keep };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(scenario(seed, keep, window));
    }
}

#[tokio::test]
async fn no_backup_prunes_nothing_and_says_why() {
    let repo = Repo::open("memory://").await.unwrap();
    let key = SegmentKey {
        source: src(),
        epoch: Epoch(1),
        start: LogPos::from_lsn(0),
        end: LogPos::from_lsn(10),
        tmin: None,
        tmax: None,
        generation: 0,
    };
    repo.put_if_absent(&key.to_key(), Bytes::from_static(b"s"))
        .await
        .unwrap();
    let rep = prune(&repo, &src(), &options(1, None, false))
        .await
        .unwrap();
    assert!(rep.deleted_keys.is_empty());
    assert!(rep.note.unwrap().contains("no complete base backup"));
    assert!(repo.exists(&key.to_key()).await.unwrap());
}

/// A crash after each write or deletion of a prune: the repository stays
/// consistent, kept backups keep their chains, and a re-run ends in the
/// same state as an uninterrupted prune.
#[tokio::test]
async fn crash_between_deletions_leaves_a_consistent_repo() {
    let mut crashes = 0;
    for seed in [7u64, 1234, 99_991, 0xfeed] {
        let (keep, window) = (1, None);
        let (expected, cut) = scenario(seed, keep, window).await;
        let mut fail_at = 1;
        loop {
            let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
            let good = Repo::from_store(store.clone(), "memory://");
            populate(&good, seed).await;
            let before_cat = Catalog::load_listing(&good, &src()).await.unwrap();
            let before = chains(&good, &before_cat).await;
            let crashing = Repo::from_store(
                Arc::new(FaultyStore::new(
                    store.clone(),
                    Fault::CrashAfter {
                        at: fail_at,
                        writes_only: true,
                        dead_after: true,
                    },
                )),
                "memory://",
            );
            let r = prune(&crashing, &src(), &options(keep, window, false)).await;
            let Err(_) = r else {
                break; // no mutation left to interrupt
            };
            crashes += 1;
            // Kept = what the uninterrupted run keeps: derive from `expected`.
            let kept: Vec<_> = before
                .iter()
                .filter(|(d, _)| expected.contains(&format!("{d}manifest.json")))
                .cloned()
                .collect();
            check_consistent(&good, &kept, Some(cut)).await;
            prune(&good, &src(), &options(keep, window, false))
                .await
                .unwrap();
            let got = all_keys(&good).await;
            assert!(
                got == expected,
                "seed {seed}: re-run after crash #{fail_at} differs: extra {:?}, missing {:?}",
                got.difference(&expected).collect::<Vec<_>>(),
                expected.difference(&got).collect::<Vec<_>>()
            );
            fail_at += 1;
        }
    }
    assert!(crashes > 20, "only {crashes} crash points exercised");
}

/// A history once drawn the same backup key on two timelines (regression).
#[tokio::test]
async fn duplicate_backup_draws_are_harmless() {
    scenario(417_086_935_282_410_172, 1, None).await;
}

/// The crash points of a prune again, now with a reader: a restore holds a
/// live pin on the oldest backup (which `keep_backups = 1` would delete).
/// After every crash and after the re-run, that backup and its log chain are
/// intact, through the index and the listing alike.
#[tokio::test]
async fn crash_between_deletions_keeps_what_a_live_restore_pinned() {
    use pitr::archive::pins::{Pin, PinGuard, PinRange};
    let (mut crashes, mut pinned_reports) = (0, 0);
    for seed in [7u64, 1234, 99_991, 0xfeed] {
        let mut fail_at = 1;
        loop {
            let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
            let good = Repo::from_store(store.clone(), "memory://");
            populate(&good, seed).await;
            let catalog = Catalog::load_listing(&good, &src()).await.unwrap();
            let backups = list_backups(&good, &src(), catalog.backups())
                .await
                .unwrap();
            if backups.len() < 2 {
                break; // nothing keep_backups = 1 would delete
            }
            let (key, m) = &backups[0];
            let epoch = Epoch(u64::from(m.timeline));
            let from = align_down(key.start, FILE);
            let pinned: Vec<_> = chains(&good, &catalog)
                .await
                .into_iter()
                .filter(|(d, _)| *d == key.dir())
                .collect();
            let ttl = Duration::from_secs(3600);
            let pin = Pin::new(
                &src(),
                "a test restore",
                key,
                vec![PinRange::new(epoch, from, None)],
                Utc::now(),
                ttl,
            );
            let guard = PinGuard::acquire(&good, pin, ttl).await.unwrap();
            let crashing = Repo::from_store(
                Arc::new(FaultyStore::new(
                    store.clone(),
                    Fault::CrashAfter {
                        at: fail_at,
                        writes_only: true,
                        dead_after: true,
                    },
                )),
                "memory://",
            );
            let r = prune(&crashing, &src(), &options(1, None, false)).await;
            check_consistent(&good, &pinned, Some((epoch, from))).await;
            if r.is_ok() {
                guard.release().await.unwrap();
                break; // no mutation left to interrupt
            }
            crashes += 1;
            let rep = prune(&good, &src(), &options(1, None, false))
                .await
                .unwrap();
            if rep.pinned.iter().any(|p| p.contains(&key.dir())) {
                pinned_reports += 1;
            }
            check_consistent(&good, &pinned, Some((epoch, from))).await;
            guard.release().await.unwrap();
            fail_at += 1;
        }
    }
    assert!(crashes > 10, "only {crashes} crash points exercised");
    assert!(
        pinned_reports > 0,
        "no prune ever had to keep a pinned backup"
    );
}

/// A backup still being taken (no manifest yet, older than the grace, a
/// newer backup complete) holds a backup pin: prune keeps its directory
/// and the log from its start. Without the pin the same prune deletes both,
/// so the pin is what keeps them.
#[tokio::test]
async fn a_backup_being_taken_keeps_its_directory_and_its_log() {
    use pitr::archive::pins::{Pin, PinGuard};
    for pinned in [false, true] {
        let repo = Repo::open("memory://").await.unwrap();
        for f in 1..8u64 {
            let key = SegmentKey {
                source: src(),
                epoch: Epoch(1),
                start: LogPos::from_lsn(f * FILE),
                end: LogPos::from_lsn((f + 1) * FILE),
                tmin: Some(TimestampMicros(f as i64 * 1_000)),
                tmax: Some(TimestampMicros(f as i64 * 1_000 + 10)),
                generation: 0,
            };
            repo.put_if_absent(&key.to_key(), Bytes::from(vec![f as u8; 16]))
                .await
                .unwrap();
        }
        let at = |s: i64| DateTime::from_timestamp(BASE + s, 0).unwrap();
        assert!(put_backup(&repo, Epoch(1), FILE + 8, 2 * FILE, at(100)).await);
        assert!(put_backup(&repo, Epoch(1), 6 * FILE + 8, 7 * FILE, at(300)).await);
        let running =
            BackupKey::new(src(), LogPos::from_lsn(3 * FILE + 8), "20240101T000320000Z").unwrap();
        repo.put_if_absent(
            &running.part_key("base.tar.zst.000").unwrap(),
            Bytes::from_static(b"p"),
        )
        .await
        .unwrap();
        let ttl = Duration::from_secs(3600);
        let guard = if pinned {
            let pin = Pin::for_backup(&running, Epoch(1), Utc::now(), ttl);
            Some(PinGuard::acquire(&repo, pin, ttl).await.unwrap())
        } else {
            None
        };
        let rep = prune(&repo, &src(), &options(1, None, false))
            .await
            .unwrap();
        let parts_left = repo.list(&running.dir()).await.unwrap().len();
        let catalog = Catalog::load_listing(&repo, &src()).await.unwrap();
        let log_kept = catalog
            .segments_covering(
                Epoch(1),
                LogPos::from_lsn(3 * FILE),
                LogPos::from_lsn(8 * FILE),
            )
            .is_ok();
        if pinned {
            assert_eq!(parts_left, 1, "{rep:?}");
            assert!(log_kept, "{rep:?}");
            assert!(
                rep.pinned
                    .iter()
                    .any(|p| p.contains(&running.dir()) && p.contains("backup pin")),
                "{:?}",
                rep.pinned
            );
            assert!(rep.incomplete_backups.is_empty());
        } else {
            assert_eq!(parts_left, 0, "{rep:?}");
            assert!(!log_kept, "{rep:?}");
        }
        if let Some(g) = guard {
            g.release().await.unwrap();
        }
    }
}
