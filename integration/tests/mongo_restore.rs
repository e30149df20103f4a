//! MongoDB backup and point-in-time restore end to end, against the
//! replica-set test double (`mongo-double`; no real mongod can run where
//! these tests run): `pitr archive` streams the oplog while a ledger
//! workload runs through the official driver; `pitr backup` is taken in the
//! middle of it; then DDL (create, createIndexes, drop), a multi-document
//! transaction, a transaction larger than 16 MB (a `partialTxn` chain) and
//! a step-down (a new term). The source's state is recorded at chosen
//! points with the `ts` and `wall` of the newest oplog entry; restores into
//! a second double must equal it exactly: to a `ts` (every entry at or
//! before it, none after), to a time, and `--latest`. Also: `--dry-run`
//! changes nothing, a target before the window and a non-empty target
//! without `--replace` are refused in one sentence.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use bson::{doc, Bson, Document, RawDocumentBuf};
use futures::TryStreamExt as _;
use mongodb::{Client, Collection};
use pitr_integration::archiver::{wait_for, Archiver};
use pitr_integration::restore_util::{pitr, text};
use pitr_integration::{pitr_bin, MongoDouble, MongoOptions};
use pitr_mongodb::OplogTs;

/// The double, or a real `mongod` when `PITR_MONGOD_BIN` names one.
fn start() -> MongoDouble {
    MongoDouble::server(
        Path::new(env!("CARGO_BIN_EXE_mongo-double")),
        MongoOptions {
            noop_interval_secs: 0,
            ..Default::default()
        },
    )
    .expect("start mongo-double")
}

/// The newest archived `ts`, from `oplog-fetch --list`.
fn archived_last(repo: &Path) -> Option<OplogTs> {
    archived_last_with(repo, &[])
}

/// As [`archived_last`], with `extra` arguments (e.g. `--kek`).
fn archived_last_with(repo: &Path, extra: &[&str]) -> Option<OplogTs> {
    let out = Command::new(pitr_bin())
        .args(["oplog-fetch", "--repo"])
        .arg(repo)
        .args(["--name", "src", "--list"])
        .args(extra)
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.parse::<OplogTs>().ok())
        .max()
}

/// Waits (up to 30 s) until the archive holds the entry at `ts` (`(secs, inc)`); `extra`
/// goes to `oplog-fetch` (e.g. `--kek`).
fn wait_archived_to(repo: &Path, ts: (u32, u32), extra: &[&str]) {
    let want = OplogTs {
        secs: ts.0,
        inc: ts.1,
    };
    wait_for("the archive to catch up", Duration::from_secs(30), || {
        archived_last_with(repo, extra).is_some_and(|t| t >= want)
    });
}

async fn client(url: &str) -> Client {
    Client::with_uri_str(url).await.expect("client")
}

/// `ts` (secs, inc) and `wall` (ms) of the newest oplog entry.
async fn newest(c: &Client) -> ((u32, u32), i64) {
    let coll: Collection<RawDocumentBuf> = c.database("local").collection("oplog.rs");
    let d = coll
        .find_one(doc! {})
        .sort(doc! {"$natural": -1})
        .await
        .unwrap()
        .unwrap()
        .to_document()
        .unwrap();
    let ts = d.get_timestamp("ts").unwrap();
    let wall = d.get_datetime("wall").unwrap().timestamp_millis();
    ((ts.time, ts.increment), wall)
}

/// A document as compared: large ones by length and a hash of their bytes.
fn comparable(d: RawDocumentBuf) -> Document {
    use std::hash::{DefaultHasher, Hash as _, Hasher as _};
    if d.as_bytes().len() > 4096 {
        let id = d
            .to_document()
            .unwrap()
            .get("_id")
            .cloned()
            .unwrap_or(Bson::Null);
        let mut h = DefaultHasher::new();
        d.as_bytes().hash(&mut h);
        return doc! {"_id": id, "len": d.as_bytes().len() as i64, "hash": h.finish() as i64};
    }
    d.to_document().unwrap()
}

type State = BTreeMap<String, Vec<Document>>;

/// Every collection of the user databases, documents sorted by `_id`.
async fn state(c: &Client) -> State {
    let mut out = State::new();
    for db in ["bank", "files"] {
        let d = c.database(db);
        let mut names = d.list_collection_names().await.unwrap();
        names.sort();
        for n in names {
            if n.starts_with("system.") {
                continue;
            }
            let coll: Collection<RawDocumentBuf> = d.collection(&n);
            let docs: Vec<RawDocumentBuf> = coll
                .find(doc! {})
                .sort(doc! {"_id": 1})
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            out.insert(
                format!("{db}.{n}"),
                docs.into_iter().map(comparable).collect(),
            );
        }
    }
    out
}

/// Index names per collection of `bank`.
async fn indexes(c: &Client) -> BTreeMap<String, Vec<String>> {
    let d = c.database("bank");
    let mut out = BTreeMap::new();
    for n in d.list_collection_names().await.unwrap() {
        let mut names = d
            .collection::<Document>(&n)
            .list_index_names()
            .await
            .unwrap();
        names.sort();
        out.insert(n, names);
    }
    out
}

/// A point of the source's history.
#[derive(Debug, Clone)]
struct Point {
    ts: (u32, u32),
    wall_ms: i64,
    state: State,
}

async fn point(c: &Client) -> Point {
    let (ts, wall_ms) = newest(c).await;
    Point {
        ts,
        wall_ms,
        state: state(c).await,
    }
}

/// One transfer: a ledger entry and two balance updates (three writes).
async fn transfer(c: &Client, n: i64) {
    let bank = c.database("bank");
    let (from, to) = (n % 10, (n * 7 + 3) % 10);
    bank.collection::<Document>("ledger")
        .insert_one(doc! {"_id": n, "from": from, "to": to, "amount": n % 13 + 1})
        .await
        .unwrap();
    let acc = bank.collection::<Document>("accounts");
    acc.update_one(
        doc! {"_id": from},
        doc! {"$inc": {"balance": -(n % 13 + 1)}, "$set": {"last": n}},
    )
    .await
    .unwrap();
    acc.update_one(doc! {"_id": to}, doc! {"$inc": {"balance": n % 13 + 1}})
        .await
        .unwrap();
}

fn restore(repo: &str, target: &[&str], url: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["restore", "--repo", repo, "--name", "src"];
    args.extend_from_slice(target);
    args.extend_from_slice(&["--target", url]);
    args.extend_from_slice(extra);
    pitr(&args)
}

fn ok(o: &std::process::Output) -> String {
    assert!(o.status.success(), "{}", text(o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// One plain sentence on stderr, non-zero exit.
fn refused(o: &std::process::Output, words: &str) {
    assert!(!o.status.success(), "expected a refusal: {}", text(o));
    let err = String::from_utf8_lossy(&o.stderr);
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{}", text(o));
    assert!(errors[0].contains(words), "{}", text(o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_mid_workload_and_exact_restores_across_a_step_down() {
    let source = start();
    let target = start();
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let repo_s = repo.to_str().unwrap().to_string();
    let src = client(&source.url()).await;
    let dst = client(&target.url()).await;

    // Before the archiver: accounts and an index.
    let bank = src.database("bank");
    bank.collection::<Document>("accounts")
        .insert_many((0..10).map(|i| doc! {"_id": i, "owner": format!("o{i}"), "balance": 1000}))
        .await
        .unwrap();
    bank.run_command(
        doc! {"createIndexes": "ledger", "indexes": [{"key": {"from": 1}, "name": "from_1"}]},
    )
    .await
    .unwrap();
    bank.collection::<Document>("scratch")
        .insert_one(doc! {"_id": "tmp"})
        .await
        .unwrap();
    let archiver = Archiver::start(&source.url(), &repo, "src", dir.path(), &[]);

    let mut n = 0i64;
    for _ in 0..20 {
        n += 1;
        transfer(&src, n).await;
    }
    // The backup runs while transfers go on.
    let backup = Command::new(pitr_bin())
        .args([
            "backup",
            &source.url(),
            "--repo",
            &repo_s,
            "--name",
            "src",
            "--json",
            "--parallel",
            "2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..60 {
        n += 1;
        transfer(&src, n).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let out = tokio::task::spawn_blocking(move || backup.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let b: serde_json::Value = serde_json::from_str(ok(&out).trim()).unwrap();
    assert!(b["documents"].as_u64().unwrap() >= 10, "{b}");

    // DDL, a transaction, then the point A right before a > 16 MB transaction.
    bank.run_command(doc! {"create": "audit", "validator": {"kind": {"$exists": true}}})
        .await
        .unwrap();
    bank.run_command(doc! {"createIndexes": "audit", "indexes": [{"key": {"kind": 1, "at": -1}, "name": "kind_at"}]})
        .await
        .unwrap();
    bank.collection::<Document>("scratch").drop().await.unwrap();
    let mut s = src.start_session().await.unwrap();
    s.start_transaction().await.unwrap();
    bank.collection::<Document>("audit")
        .insert_one(doc! {"_id": 1, "kind": "txn", "at": 1})
        .session(&mut s)
        .await
        .unwrap();
    bank.collection::<Document>("accounts")
        .update_one(doc! {"_id": 1}, doc! {"$set": {"frozen": true}})
        .session(&mut s)
        .await
        .unwrap();
    s.commit_transaction().await.unwrap();
    n += 1;
    transfer(&src, n).await;
    let a = point(&src).await;

    let blob = "x".repeat(1 << 20);
    let mut s = src.start_session().await.unwrap();
    s.start_transaction().await.unwrap();
    for i in 0..18 {
        src.database("files")
            .collection::<Document>("blobs")
            .insert_one(doc! {"_id": i, "data": blob.as_str()})
            .session(&mut s)
            .await
            .unwrap();
    }
    s.commit_transaction().await.unwrap();

    // A new term, then more transfers; B is a point in the new term.
    let _ = src
        .database("admin")
        .run_command(doc! {"replSetStepDown": 1, "force": true})
        .await;
    for _ in 0..5 {
        n += 1;
        transfer(&src, n).await;
    }
    let b_point = point(&src).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    for _ in 0..5 {
        n += 1;
        transfer(&src, n).await;
    }
    let last = point(&src).await;
    assert!(a.ts < b_point.ts && b_point.ts < last.ts);
    // Let the archiver store everything, then stop it.
    wait_archived_to(&repo, last.ts, &[]);
    archiver.terminate();

    // --dry-run: the plan, nothing changed.
    let plan = ok(&restore(
        &repo_s,
        &["--latest"],
        &target.url(),
        &["--dry-run"],
    ));
    assert!(
        plan.contains("base backup") && plan.contains("oplog segments"),
        "{plan}"
    );
    assert!(!dst
        .list_database_names()
        .await
        .unwrap()
        .contains(&"bank".to_string()));

    // Before the window: refused.
    refused(
        &restore(&repo_s, &["--to-ts", "1:0"], &target.url(), &[]),
        "before the recoverable window",
    );

    // Exact ts: A, none of the large transaction.
    let ta = format!("{}:{}", a.ts.0, a.ts.1);
    ok(&restore(&repo_s, &["--to-ts", &ta], &target.url(), &[]));
    assert_eq!(state(&dst).await, a.state, "restore to ts {ta}");
    assert_eq!(
        indexes(&dst).await,
        indexes(&src)
            .await
            .into_iter()
            .filter(|(k, _)| k != "scratch")
            .collect()
    );

    // A non-empty target without --replace: refused, unchanged.
    let tb = chrono::DateTime::from_timestamp_millis(b_point.wall_ms)
        .unwrap()
        .format("%Y-%m-%d %H:%M:%S%.3fZ")
        .to_string();
    refused(
        &restore(&repo_s, &["--to", &tb], &target.url(), &[]),
        "--replace",
    );
    assert_eq!(state(&dst).await, a.state);

    // A time in the new term, with --replace.
    ok(&restore(
        &repo_s,
        &["--to", &tb],
        &target.url(),
        &["--replace"],
    ));
    assert_eq!(state(&dst).await, b_point.state, "restore to time {tb}");

    // --replace drops the backup's databases only: `files` (created after
    // the backup) is still there, and the replay refuses to create it again.
    let o = restore(&repo_s, &["--latest"], &target.url(), &["--replace"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("already holds a collection"),
        "{}",
        text(&o)
    );

    // Everything, into an empty replica set.
    let target2 = start();
    let dst2 = client(&target2.url()).await;
    let out = ok(&restore(
        &repo_s,
        &["--latest"],
        &target2.url(),
        &["--json"],
    ));
    assert_eq!(state(&dst2).await, last.state, "restore --latest");
    let j: serde_json::Value = serde_json::from_str(out.trim().lines().last().unwrap()).unwrap();
    assert_eq!(
        j["apply"]["last_ts_applied"].as_str().unwrap(),
        format!("{}:{}", last.ts.0, last.ts.1)
    );
    assert!(
        j["apply"]["round_trips"].as_u64().unwrap()
            < j["apply"]["entries_applied"].as_u64().unwrap()
    );
    // The replay crossed the step-down: segments of two terms.
    let terms = j["plan"]["terms"].as_array().unwrap();
    assert!(terms.len() >= 2, "{j}");
    // Both transactions were applied (the large one as a partialTxn chain).
    assert!(
        j["apply"]["transactions_applied"].as_u64().unwrap() >= 2,
        "{j}"
    );
    assert_eq!(last.state["files.blobs"].len(), 18);
}

/// `pitr prune --keep-backups 1` and `pitr compact --min-age 0s` of `repo`
/// in a loop until `stop`; returns the rounds run.
fn maintenance(repo: String, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> usize {
    let mut rounds = 0;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        for args in [
            ["prune", "--keep-backups", "1"],
            ["compact", "--min-age", "0s"],
        ] {
            let o = Command::new(pitr_bin())
                .args(args)
                .args(["--repo", &repo, "--name", "src"])
                .output()
                .unwrap();
            assert!(o.status.success(), "{args:?}: {}", text(&o));
        }
        rounds += 1;
    }
    rounds
}

/// A MongoDB restore pins the backup and the oplog it planned on: a prune
/// run while it loads keeps that (older) backup and says why, prune and
/// compaction rounds in other processes during the whole restore delete
/// nothing it reads, the restore is exact, and once it has ended prune
/// deletes the backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_pins_its_backup_and_oplog_under_prune_and_compaction() {
    let source = start();
    let target = start();
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let repo_s = repo.to_str().unwrap().to_string();
    let src = client(&source.url()).await;
    let dst = client(&target.url()).await;
    src.database("bank")
        .collection::<Document>("accounts")
        .insert_many((0..10).map(|i| doc! {"_id": i, "owner": format!("o{i}"), "balance": 1000}))
        .await
        .unwrap();
    // Enough data that loading the backup takes a while.
    let blob = "x".repeat(2000);
    for chunk in 0..10 {
        src.database("files")
            .collection::<Document>("blobs")
            .insert_many((0..1000).map(|i| doc! {"_id": chunk * 1000 + i, "data": &blob}))
            .await
            .unwrap();
    }
    let archiver = Archiver::start(&source.url(), &repo, "src", dir.path(), &[]);
    let backup = || {
        let o = pitr(&[
            "backup",
            &source.url(),
            "--repo",
            &repo_s,
            "--name",
            "src",
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_str(ok(&o).trim()).unwrap();
        v["backup"].as_str().unwrap().to_string()
    };
    let archived = |p: &Point| {
        let want = OplogTs {
            secs: p.ts.0,
            inc: p.ts.1,
        };
        wait_for(
            "the archive to reach the point",
            Duration::from_secs(60),
            || archived_last(&repo).is_some_and(|t| t >= want),
        );
    };
    let b1 = backup();
    for n in 1..=200 {
        transfer(&src, n).await;
    }
    let p1 = point(&src).await;
    archived(&p1);
    // Writes after p1 before b2: b2 cannot serve a restore to p1.
    for n in 201..=220 {
        transfer(&src, n).await;
    }
    let b2 = backup();
    for n in 221..=300 {
        transfer(&src, n).await;
    }
    let p2 = point(&src).await;
    archived(&p2);

    // Restore to p1: only b1 (older than b2, which keep 1 keeps) serves it.
    let ts1 = format!("{}:{}", p1.ts.0, p1.ts.1);
    let child = Command::new(pitr_bin())
        .args([
            "restore", "--repo", &repo_s, "--name", "src", "--to-ts", &ts1,
        ])
        .args(["--target", &target.url()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pins = repo.join("src/pins");
    let has_pin = || {
        std::fs::read_dir(&pins)
            .map(|d| d.count() > 0)
            .unwrap_or(false)
    };
    wait_for("the restore pin", Duration::from_secs(60), has_pin);
    let o = pitr(&[
        "prune",
        "--repo",
        &repo_s,
        "--name",
        "src",
        "--keep-backups",
        "1",
        "--json",
    ]);
    let rep = ok(&o);
    let pin_text: Vec<String> = std::fs::read_dir(&pins)
        .map(|d| {
            d.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        rep.contains(&format!("backup {b1} kept because restore pin")),
        "{rep}\npins: {pin_text:?}\nb1 {b1}"
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loop_ = std::thread::spawn({
        let (repo, stop) = (repo_s.clone(), stop.clone());
        move || maintenance(repo, stop)
    });
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let rounds = loop_.join().expect("prune and compaction rounds");
    ok(&out);
    assert_eq!(state(&dst).await, p1.state, "restore to ts {ts1}");
    eprintln!("maintenance rounds during and after the restore: {rounds}");
    assert!(!has_pin(), "the restore released its pin");
    // No pin any more: prune deletes b1 and keeps b2.
    let rep = ok(&pitr(&[
        "prune",
        "--repo",
        &repo_s,
        "--name",
        "src",
        "--keep-backups",
        "1",
        "--json",
    ]));
    assert!(!repo.join("src/backups").join(&b1).exists() && !rep.is_empty());
    let left: Vec<String> = std::fs::read_dir(repo.join("src/backups"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(b2.contains(&left[0]), "{b2} vs {left:?}");
    archiver.terminate();
}

/// The backup starts at the majority-committed optime, never above it: with the majority held
/// back (as when secondaries lag; the double's `pitrHoldMajority`, absent on a real server),
/// the manifest's start is the held optime, not the newest entry; the backup waits for the
/// majority to reach its end (the archive holds only majority-committed entries); `--latest`
/// is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_starts_at_the_majority_committed_optime() {
    if pitr_integration::mongo::real_mongod().is_some() {
        return; // The hold is the double's own command.
    }
    let source = start();
    let target = start();
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let repo_s = repo.to_str().unwrap().to_string();
    let src = client(&source.url()).await;
    let bank = src.database("bank");
    bank.collection::<Document>("accounts")
        .insert_many((0..10).map(|i| doc! {"_id": i, "owner": format!("o{i}"), "balance": 1000}))
        .await
        .unwrap();
    let archiver = Archiver::start(&source.url(), &repo, "src", dir.path(), &[]);
    for n in 1..=5 {
        transfer(&src, n).await;
    }
    let held = src
        .database("admin")
        .run_command(doc! {"pitrHoldMajority": true})
        .await
        .unwrap();
    let held_ts = held
        .get_document("majorityOpTime")
        .unwrap()
        .get_timestamp("ts")
        .unwrap();
    for n in 6..=10 {
        transfer(&src, n).await;
    }
    let newest_ts = newest(&src).await.0;
    assert!(newest_ts > (held_ts.time, held_ts.increment));
    // The archiver archives only majority-committed entries, so the backup waits for the
    // majority to reach its end: it is released once the backup says it waits.
    let mut child = Command::new(pitr_bin())
        .args([
            "backup",
            &source.url(),
            "--repo",
            &repo_s,
            "--name",
            "src",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
        assert!(
            n > 0,
            "the backup ended without waiting for the archive: {seen}"
        );
        seen.push_str(&line);
        if line.contains("waiting for the archiver") {
            break;
        }
    }
    src.database("admin")
        .run_command(doc! {"pitrHoldMajority": false})
        .await
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{seen}");
    let b: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(
        b["start"].as_str(),
        Some(format!("{}:{}", held_ts.time, held_ts.increment).as_str()),
        "{b}"
    );
    for n in 11..=15 {
        transfer(&src, n).await;
    }
    let want = state(&src).await;
    let last = newest(&src).await.0;
    wait_archived_to(&repo, last, &[]);
    archiver.terminate();
    ok(&restore(&repo_s, &["--latest"], &target.url(), &[]));
    assert_eq!(state(&client(&target.url()).await).await, want);
    // The _id index is the source's (v:2): the loader's create gives its idIndex.
    let specs = |c: Client| async move {
        let r = c
            .database("bank")
            .run_command(doc! {"listIndexes": "accounts"})
            .await
            .unwrap();
        r.get_document("cursor")
            .unwrap()
            .get_array("firstBatch")
            .unwrap()
            .clone()
    };
    let got = specs(client(&target.url()).await).await;
    assert_eq!(got, specs(src).await);
    assert_eq!(
        got[0]
            .as_document()
            .unwrap()
            .get("v")
            .map(|v| v.to_string()),
        Some("2".to_string())
    );
}

/// Encryption at rest (against the double): with `pitr key init` and the
/// key-encryption key given to every command, a marker written before and
/// after the backup is readable in no stored object (bytes, or zstd-decoded
/// frames); restore without the key is refused in one sentence and loads
/// nothing; with it the target equals the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_repository_restores_exactly_and_shows_nothing() {
    use pitr_integration::at_rest::{assert_hidden, files, kek_file, segments};
    const MARKER: &str = "MARKER-77e1-secret-account-owner";
    let source = start();
    let target = start();
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let repo_s = repo.to_str().unwrap().to_string();
    let kek = kek_file(dir.path(), "kek", 0x3d);
    ok(&pitr(&["key", "init", "--repo", &repo_s, "--kek", &kek]));
    let src = client(&source.url()).await;
    let bank = src.database("bank");
    bank.collection::<Document>("accounts")
        .insert_many(
            (0..10).map(|i| doc! {"_id": i, "owner": format!("{MARKER}-{i}"), "balance": 1000}),
        )
        .await
        .unwrap();
    let archiver = Archiver::start(&source.url(), &repo, "src", dir.path(), &["--kek", &kek]);
    for n in 1..=5 {
        transfer(&src, n).await;
    }
    ok(&pitr(&[
        "backup",
        &source.url(),
        "--repo",
        &repo_s,
        "--name",
        "src",
        "--kek",
        &kek,
    ]));
    bank.collection::<Document>("accounts")
        .insert_one(doc! {"_id": 10, "owner": format!("{MARKER}-10"), "balance": 5})
        .await
        .unwrap();
    for n in 6..=10 {
        transfer(&src, n).await;
    }
    let want = state(&src).await;
    let last = newest(&src).await.0;
    wait_archived_to(&repo, last, &["--kek", &kek]);
    archiver.terminate();
    let all = files(&repo);
    assert!(
        all.iter()
            .any(|p| p.to_string_lossy().contains(".bson.zst.")),
        "{all:?}"
    );
    assert_hidden(&repo, MARKER);
    let segs = segments(&repo);
    assert!(!segs.is_empty());
    assert!(segs.iter().all(|s| (s.1, s.2) == (2, 1)), "{segs:?}");

    refused(
        &restore(&repo_s, &["--latest"], &target.url(), &[]),
        "encrypted",
    );
    assert!(state(&client(&target.url()).await).await.is_empty());
    ok(&restore(
        &repo_s,
        &["--latest"],
        &target.url(),
        &["--kek", &kek],
    ));
    assert_eq!(state(&client(&target.url()).await).await, want);
}

/// A rename over an existing collection (what `$out` ends with: `renameCollection` with
/// `dropTarget: <UUID of the old target>`), replayed into a target that gives collections
/// new UUIDs (its user lacks the `useUUID`/`forceUUID` actions: the double's
/// `pitrDenyUuidPrivileges`): the rename drops the target's collection by name, and the
/// restore equals the source (no refused operation, no `tmpXXXXX.rename` left over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_over_an_existing_collection_restores_exactly_with_new_uuids() {
    if pitr_integration::mongo::real_mongod().is_some() {
        return; // The privilege switch is the double's own command.
    }
    let source = start();
    let target = start();
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let repo_s = repo.to_str().unwrap().to_string();
    let src = client(&source.url()).await;
    let bank = src.database("bank");
    bank.collection::<Document>("report")
        .insert_many((0..5).map(|i| doc! {"_id": i, "total": i}))
        .await
        .unwrap();
    let archiver = Archiver::start(&source.url(), &repo, "src", dir.path(), &[]);
    ok(&pitr(&[
        "backup",
        &source.url(),
        "--repo",
        &repo_s,
        "--name",
        "src",
    ]));
    bank.collection::<Document>("staging")
        .insert_many((0..3).map(|i| doc! {"_id": i, "total": 10 * i}))
        .await
        .unwrap();
    src.database("admin")
        .run_command(
            doc! {"renameCollection": "bank.staging", "to": "bank.report", "dropTarget": true},
        )
        .await
        .unwrap();
    bank.collection::<Document>("report")
        .insert_one(doc! {"_id": 9, "total": 99})
        .await
        .unwrap();
    let want = state(&src).await;
    let last = newest(&src).await.0;
    wait_archived_to(&repo, last, &[]);
    archiver.terminate();
    let dst = client(&target.url()).await;
    dst.database("admin")
        .run_command(doc! {"pitrDenyUuidPrivileges": true})
        .await
        .unwrap();
    let out = ok(&restore(&repo_s, &["--latest"], &target.url(), &[]));
    assert_eq!(state(&dst).await, want, "{out}");
}
