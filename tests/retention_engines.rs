//! Retention across engines, on in-memory repositories: one repository
//! holds a PostgreSQL-like source (WAL-file-aligned segments on one or two
//! timelines, gap records, roll-up index objects, `BASE_BACKUP` manifests)
//! and a MySQL/MariaDB-like source (binlog files with the empty bridge
//! segments of rotations, a missing bridge or a gap record now and then,
//! logical-backup manifests), plus incomplete backup directories (killed
//! backups) in both. Each source is pruned with a random policy; then:
//!
//! * the dry run deleted nothing and reported exactly what the real run
//!   deleted;
//! * every kept backup is still restorable: the log it needs (engine-neutral
//!   `BackupSummary::log_needed`) is covered, by the same segments as before;
//! * the newest N restorable backups are kept (and everything newer);
//!   with a recovery window, every backup inside it and the newest
//!   restorable one before it;
//! * incomplete backups are removed (and reported) exactly when orphaned:
//!   started before the newest complete backup and longer ago than the
//!   grace period;
//! * the other source is untouched, and a second run deletes nothing.

#![allow(clippy::unwrap_used)] // test helpers unwrap; the workspace lint targets production code

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use pitr::archive::catalog::Catalog;
use pitr::archive::gaps::{write_gap, GapRecord};
use pitr::archive::keys::{BackupKey, SegmentKey, SourceName};
use pitr::archive::rollup::Indexer;
use pitr::backup::mysql::manifest::{
    MysqlManifest, Part, Stream, MYSQL_BACKUP_KIND, MYSQL_MANIFEST_FORMAT_VERSION,
};
use pitr::backup::postgres::manifest::{
    ArchiveInfo, BackupManifest, PartInfo, MANIFEST_FORMAT_VERSION,
};
use pitr::engine::list_backups;
use pitr::retention::{prune, Policy, PruneOptions, PruneReport};
use pitr::storage::Repo;
use pitr_postgres::lsn::Lsn;
use pitr_segment::{Epoch, LogPos, TimestampMicros};
use proptest::prelude::*;

const FILE: u64 = 0x1000; // the PostgreSQL "WAL file" size of these histories
const BASE: i64 = 1_704_067_200; // 2024-01-01T00:00:00Z

fn pg() -> SourceName {
    SourceName::new("pg").unwrap()
}

fn my() -> SourceName {
    SourceName::new("my").unwrap()
}

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(BASE + secs, 0).unwrap()
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

/// Backup ids are their start time; stop one second later.
fn id_of(start: DateTime<Utc>) -> String {
    start.format("%Y%m%dT%H%M%S%3fZ").to_string()
}

async fn put(repo: &Repo, key: &str, body: &[u8]) {
    repo.put_if_absent(key, Bytes::copy_from_slice(body))
        .await
        .unwrap();
}

async fn segment(repo: &Repo, source: &SourceName, epoch: Epoch, s: LogPos, e: LogPos, t: i64) {
    let empty = s.hi != e.hi; // a MySQL bridge carries no commit
    let key = SegmentKey {
        source: source.clone(),
        epoch,
        start: s,
        end: e,
        tmin: (!empty).then_some(TimestampMicros(t)),
        tmax: (!empty).then_some(TimestampMicros(t + 10)),
        generation: 0,
    };
    put(repo, &key.to_key(), if empty { b"" } else { b"segment" }).await;
}

async fn gap(repo: &Repo, source: &SourceName, epoch: Epoch, start: LogPos, end: LogPos) {
    let g = GapRecord {
        epoch,
        start,
        end,
        reason: "test".into(),
        detected_at: at(0),
        generation: 0,
    };
    write_gap(repo, source, &g).await.unwrap();
}

/// A PostgreSQL history: timeline 1 (and sometimes 2 from a file
/// boundary), segments inside WAL files, now and then a gap record instead
/// of a segment; backups between segment boundaries. `clock` hands out
/// backup times in log order.
async fn populate_pg(repo: &Repo, rng: &mut Rng, clock: &mut i64) {
    let files = 3 + rng.below(6);
    let mut epochs = vec![(Epoch(1), FILE, FILE * (1 + files))];
    if rng.below(3) == 0 {
        let switch = FILE * (2 + rng.below(files - 1));
        epochs.push((Epoch(2), switch, switch + FILE * (2 + rng.below(4))));
    }
    let mut t = 1_000_000;
    for &(epoch, from, to) in &epochs {
        let mut pos = from;
        let mut bounds = Vec::new();
        while pos < to {
            let file_end = (pos / FILE + 1) * FILE;
            let len = if rng.below(3) == 0 {
                file_end - pos
            } else {
                (1 + rng.below(FILE / 2)).min(file_end - pos)
            };
            let (s, e) = (LogPos::from_lsn(pos), LogPos::from_lsn(pos + len));
            if rng.below(20) == 0 {
                gap(repo, &pg(), epoch, s, e).await;
            } else {
                segment(repo, &pg(), epoch, s, e, t).await;
            }
            bounds.push(pos);
            t += 1_000;
            pos += len;
        }
        if rng.below(2) == 0 {
            let ix = Indexer {
                segments_per_index: 2 + rng.below(3) as usize,
                fan_out: 2,
            };
            ix.roll_up(repo, &pg()).await.unwrap();
        }
        let n = 1 + rng.below(4);
        let mut picks: Vec<usize> = (0..n)
            .map(|_| rng.below(bounds.len() as u64 - 1) as usize)
            .collect();
        picks.sort();
        picks.dedup();
        for i in picks {
            let start = bounds[i] + rng.below(5);
            *clock += 10;
            put_pg_backup(repo, epoch, start, bounds[i + 1], at(*clock)).await;
        }
    }
}

async fn put_pg_backup(
    repo: &Repo,
    epoch: Epoch,
    start: u64,
    stop: u64,
    start_time: DateTime<Utc>,
) {
    let id = id_of(start_time);
    let key = BackupKey::new(pg(), LogPos::from_lsn(start), &id).unwrap();
    let part = key.part_key("base.tar.zst.000").unwrap();
    put(repo, &part, b"part").await;
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
        stop_time: start_time + chrono::Duration::seconds(1),
        archives: vec![ArchiveInfo {
            name: "base.tar".into(),
            tablespace_oid: None,
            tablespace_path: String::new(),
            size: 4,
            sha256: String::new(),
            parts: vec![PartInfo {
                key: "base.tar.zst.000".into(),
                size: 4,
                sha256: String::new(),
            }],
        }],
        backup_manifest: None,
    };
    put(repo, &key.to_key(), &serde_json::to_vec(&m).unwrap()).await;
}

/// A MySQL/MariaDB history: binlog files 1..=F, each cut into segments
/// from offset 4, rotations bridged by an empty segment (end of file ..
/// (next, 4)); now and then a bridge is missing (a hole) or a segment is a
/// gap record; backups at segment boundaries.
async fn populate_my(repo: &Repo, rng: &mut Rng, clock: &mut i64) {
    let files = 2 + rng.below(5);
    let mut t = 1_000_000;
    let mut bounds = Vec::new();
    for seq in 1..=files {
        let mut off = 4;
        for _ in 0..1 + rng.below(4) {
            let end = off + 1 + rng.below(500);
            let (s, e) = (LogPos::new(seq, off), LogPos::new(seq, end));
            if rng.below(20) == 0 {
                gap(repo, &my(), Epoch(1), s, e).await;
            } else {
                segment(repo, &my(), Epoch(1), s, e, t).await;
            }
            bounds.push(e);
            t += 1_000;
            off = end;
        }
        if seq < files && rng.below(12) != 0 {
            segment(
                repo,
                &my(),
                Epoch(1),
                LogPos::new(seq, off),
                LogPos::new(seq + 1, 4),
                0,
            )
            .await;
        }
    }
    let n = 1 + rng.below(4);
    let mut picks: Vec<usize> = (0..n)
        .map(|_| rng.below(bounds.len() as u64) as usize)
        .collect();
    picks.sort();
    picks.dedup();
    for i in picks {
        *clock += 10;
        put_my_backup(repo, bounds[i], at(*clock)).await;
    }
}

async fn put_my_backup(repo: &Repo, pos: LogPos, start_time: DateTime<Utc>) {
    let id = id_of(start_time);
    let key = BackupKey::new(my(), pos, &id).unwrap();
    let part = key.part_key("schema.json.zst.000").unwrap();
    put(repo, &part, b"part").await;
    let m = MysqlManifest {
        format_version: MYSQL_MANIFEST_FORMAT_VERSION,
        kind: MYSQL_BACKUP_KIND.into(),
        engine: "mariadb".into(),
        id,
        label: String::new(),
        system_id: "mariadb-server-1".into(),
        server_version: "10.11".into(),
        snapshot_method: "ftwrl".into(),
        binlog_file: format!("binlog.{:06}", pos.hi),
        binlog_pos: pos.lo,
        gtid: String::new(),
        snapshot_time_us: start_time.timestamp_micros(),
        start_time,
        stop_time: start_time + chrono::Duration::seconds(1),
        schema: Stream {
            name: "schema.json".into(),
            size: 4,
            sha256: String::new(),
            parts: vec![Part {
                key: "schema.json.zst.000".into(),
                size: 4,
                sha256: String::new(),
            }],
        },
        tables: vec![],
    };
    put(repo, &key.to_key(), &serde_json::to_vec(&m).unwrap()).await;
}

/// An incomplete backup directory (a part, no manifest) started at `start`.
async fn put_incomplete(repo: &Repo, source: &SourceName, start: DateTime<Utc>) -> String {
    let key = BackupKey::new(source.clone(), LogPos::new(1, 4), &id_of(start)).unwrap();
    put(repo, &key.part_key("t00000.sql.zst.000").unwrap(), b"x").await;
    key.dir()
}

async fn keys_of(repo: &Repo, prefix: &str) -> BTreeSet<String> {
    repo.list(prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.location.to_string())
        .filter(|k| !k.starts_with(".pitr-scratch"))
        .collect()
}

/// One complete backup as the test sees it before the prune.
struct Before {
    dir: String,
    start: DateTime<Utc>,
    stop: DateTime<Utc>,
    restorable: bool,
    /// The segments its restore reads (when restorable).
    chain: Vec<String>,
}

async fn survey(repo: &Repo, source: &SourceName) -> Vec<Before> {
    let cat = Catalog::load_listing(repo, source).await.unwrap();
    let mut out = Vec::new();
    for b in list_backups(repo, source, cat.backups()).await.unwrap() {
        let (e, from, to) = b.log_needed(FILE);
        let chain = cat.segments_covering(e, from, to);
        out.push(Before {
            dir: b.key.dir(),
            start: b.start_time,
            stop: b.stop_time,
            restorable: chain.is_ok(),
            chain: chain
                .map(|c| c.iter().map(|k| k.to_key()).collect())
                .unwrap_or_default(),
        });
    }
    out
}

fn opts(
    keep: usize,
    window: Option<i64>,
    grace: u64,
    now: DateTime<Utc>,
    dry: bool,
) -> PruneOptions {
    PruneOptions {
        policy: Policy {
            keep_backups: (keep > 0).then_some(keep),
            recovery_window: window.map(|w| Duration::from_secs(w as u64)),
        },
        dry_run: dry,
        log_alignment: FILE,
        incomplete_grace: Duration::from_secs(grace),
        now,
    }
}

/// The policy, checked independently of the code under test.
fn check_selection(
    all: &[Before],
    rep: &PruneReport,
    keep: usize,
    window: Option<i64>,
    now: DateTime<Utc>,
) {
    let kept = |d: &str| rep.kept_backups.iter().any(|k| k == d);
    if rep.kept_backups.is_empty() {
        assert!(rep.deleted_keys.is_empty() && rep.note.is_some(), "{rep:?}");
        return;
    }
    let mut restorable: Vec<&Before> = all.iter().filter(|b| b.restorable).collect();
    restorable.sort_by_key(|b| std::cmp::Reverse(b.stop)); // newest first
    for b in restorable.iter().take(keep) {
        assert!(
            kept(&b.dir),
            "{} is among the newest {keep} restorable: {rep:?}",
            b.dir
        );
    }
    if let Some(w) = window {
        let edge = now - chrono::Duration::seconds(w);
        for b in all.iter().filter(|b| b.stop > edge) {
            assert!(kept(&b.dir), "{} finished inside the window", b.dir);
        }
        if let Some(b) = restorable.iter().find(|b| b.stop <= edge) {
            assert!(
                kept(&b.dir),
                "{}: the newest restorable before the window edge",
                b.dir
            );
        }
    }
    let oldest_kept = all
        .iter()
        .filter(|b| kept(&b.dir))
        .map(|b| b.stop)
        .min()
        .unwrap();
    for b in all {
        assert_eq!(
            kept(&b.dir),
            b.stop >= oldest_kept,
            "{}: kept iff not older than every kept backup",
            b.dir
        );
        assert_eq!(
            !kept(&b.dir),
            rep.deleted_backups.contains(&b.dir),
            "{}: deleted iff not kept",
            b.dir
        );
    }
}

async fn scenario(seed: u64, keep: usize, window: Option<i64>, grace_pick: u64) {
    let repo = Repo::open("memory://").await.unwrap();
    let mut rng = Rng(seed | 1);
    let mut clock = 0;
    populate_pg(&repo, &mut rng, &mut clock).await;
    populate_my(&repo, &mut rng, &mut clock).await;
    let now = at(clock + 100);
    // Killed backups at random times (before, between, after the complete ones).
    let mut incomplete = Vec::new();
    for source in [pg(), my()] {
        for _ in 0..rng.below(3) {
            let start = at(rng.below(clock as u64 + 100) as i64 - 5);
            incomplete.push((
                source.clone(),
                put_incomplete(&repo, &source, start).await,
                start,
            ));
        }
    }
    let grace = [0, 30, 1_000_000][grace_pick as usize % 3];

    for (source, other) in [(pg(), my()), (my(), pg())] {
        let prefix = format!("{source}/");
        let other_prefix = format!("{other}/");
        let before = survey(&repo, &source).await;
        let before_keys = keys_of(&repo, &prefix).await;
        let other_keys = keys_of(&repo, &other_prefix).await;

        let dry = prune(&repo, &source, &opts(keep, window, grace, now, true))
            .await
            .unwrap();
        assert_eq!(
            keys_of(&repo, "").await.len(),
            before_keys.len() + other_keys.len(),
            "dry run changed the repository"
        );
        assert_eq!(
            keys_of(&repo, &prefix).await,
            before_keys,
            "dry run changed {source}"
        );
        let rep = prune(&repo, &source, &opts(keep, window, grace, now, false))
            .await
            .unwrap();
        assert_eq!(
            dry.deleted_keys.iter().collect::<BTreeSet<_>>(),
            rep.deleted_keys.iter().collect::<BTreeSet<_>>(),
            "{source}: dry run and real run disagree"
        );
        assert_eq!(dry.incomplete_backups, rep.incomplete_backups);
        let after_keys = keys_of(&repo, &prefix).await;
        assert_eq!(
            keys_of(&repo, &other_prefix).await,
            other_keys,
            "pruning {source} touched {other}"
        );
        let gone: BTreeSet<String> = before_keys.difference(&after_keys).cloned().collect();
        assert_eq!(
            gone,
            rep.deleted_keys.iter().cloned().collect(),
            "{source}: reported deletions differ from the real ones"
        );

        check_selection(&before, &rep, keep, window, now);

        // Every kept backup: still restorable, through the same segments, all there.
        let cat = Catalog::load_listing(&repo, &source).await.unwrap();
        let after = survey(&repo, &source).await;
        for b in before.iter().filter(|b| rep.kept_backups.contains(&b.dir)) {
            let a = after
                .iter()
                .find(|a| a.dir == b.dir)
                .unwrap_or_else(|| panic!("kept backup {} is gone", b.dir));
            assert_eq!(
                a.restorable, b.restorable,
                "{}: restorability changed",
                b.dir
            );
            assert_eq!(a.chain, b.chain, "{}: its log chain changed", b.dir);
            for k in &b.chain {
                assert!(
                    after_keys.contains(k),
                    "{}: needed segment {k} deleted",
                    b.dir
                );
            }
        }
        assert!(cat.backups().len() >= rep.kept_backups.len());

        // Incomplete backups: removed and reported exactly when orphaned.
        let newest_start = before.iter().map(|b| b.start).max();
        let nothing_kept = rep.kept_backups.is_empty();
        for (_, dir, start) in incomplete.iter().filter(|(s, _, _)| *s == source) {
            let orphaned = !nothing_kept
                && newest_start.is_some_and(|n| *start < n)
                && (now - *start).num_seconds() >= grace as i64;
            let reported = rep
                .incomplete_backups
                .iter()
                .any(|i| &i.dir == dir && i.started == Some(*start));
            let present = after_keys.iter().any(|k| k.starts_with(dir.as_str()));
            assert_eq!(reported, orphaned, "{dir} (started {start}, newest complete {newest_start:?}, grace {grace}s): reported {reported}");
            assert_eq!(
                present, !orphaned,
                "{dir}: present {present}, orphaned {orphaned}"
            );
        }

        let again = prune(&repo, &source, &opts(keep, window, grace, now, false))
            .await
            .unwrap();
        assert!(
            again.deleted_keys.is_empty(),
            "{source}: second run deleted {:?}",
            again.deleted_keys
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn prune_keeps_what_every_engine_needs(
        seed in any::<u64>(),
        keep in 0usize..4,
        window in proptest::option::of(0i64..150),
        grace in 0u64..3,
    ) {
        let keep = if window.is_none() { keep.max(1) } else { keep };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(scenario(seed, keep, window, grace));
    }
}

/// A MySQL source whose newest backup needs binlog file 3: keep 1 deletes
/// the older backups and the whole of files 1 and 2 (bridges included),
/// and keeps file 3 from its first event on.
#[tokio::test]
async fn mysql_keep_one_cuts_at_the_kept_backups_binlog_file() {
    let repo = Repo::open("memory://").await.unwrap();
    for seq in 1..=3u64 {
        segment(
            &repo,
            &my(),
            Epoch(1),
            LogPos::new(seq, 4),
            LogPos::new(seq, 100),
            1_000 * seq as i64,
        )
        .await;
        segment(
            &repo,
            &my(),
            Epoch(1),
            LogPos::new(seq, 100),
            LogPos::new(seq, 200),
            1_000 * seq as i64 + 500,
        )
        .await;
        if seq < 3 {
            segment(
                &repo,
                &my(),
                Epoch(1),
                LogPos::new(seq, 200),
                LogPos::new(seq + 1, 4),
                0,
            )
            .await;
        }
    }
    put_my_backup(&repo, LogPos::new(1, 100), at(10)).await;
    put_my_backup(&repo, LogPos::new(2, 100), at(20)).await;
    put_my_backup(&repo, LogPos::new(3, 100), at(30)).await;
    let rep = prune(&repo, &my(), &opts(1, None, 3600, at(100), false))
        .await
        .unwrap();
    assert_eq!(rep.kept_backups.len(), 1);
    assert!(
        rep.kept_backups[0].contains(&LogPos::new(3, 100).to_hex()),
        "{rep:?}"
    );
    assert_eq!(rep.deleted_backups.len(), 2);
    let left: Vec<String> = keys_of(&repo, "my/")
        .await
        .into_iter()
        .filter_map(|k| SegmentKey::parse(&k).ok())
        .map(|s| format!("{}:{}-{}:{}", s.start.hi, s.start.lo, s.end.hi, s.end.lo))
        .collect();
    assert_eq!(left, vec!["3:4-3:100", "3:100-3:200"]);
}
