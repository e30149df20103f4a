//! `pitr archive mongodb://` / `pitr oplog-fetch` / `status` against the
//! MongoDB replica-set test double (`mongo-double`: no real mongod can run
//! where these tests run; see integration/MONGO-DOUBLE.md). The tests that
//! do not need the double's own abilities (a seeded oplog, a tiny oplog
//! cap, a 60-s step-down of the only member) run against a real `mongod`
//! when `PITR_MONGOD_BIN` names one.
//!
//! Oracle: the server's own oplog, read through the official driver as
//! raw BSON. What `oplog-fetch` writes for a range must be, byte for byte,
//! the server's entries of that range; every archived entry must decode
//! with the `pitr_mongodb` crate.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bson::{doc, Document, RawDocumentBuf};
use futures::TryStreamExt;
use mongodb::Client;
use pitr_integration::archiver::{wait_for, Archiver};
use pitr_integration::mongo::{
    fixtures_dir, read_bson_file, split_bson, MongoDouble, MongoOptions,
};
use pitr_integration::pitr_bin;
use pitr_mongodb::{OplogEntryRef, OplogTs};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn quiet() -> MongoOptions {
    MongoOptions {
        noop_interval_secs: 0,
        ..MongoOptions::default()
    }
}

async fn client(url: &str) -> Client {
    Client::with_uri_str(url).await.unwrap()
}

/// The server's whole oplog, oldest first, as raw bytes.
fn server_oplog(url: &str) -> Vec<Vec<u8>> {
    rt().block_on(async {
        let c = client(url).await;
        let mut cur = c
            .database("local")
            .collection::<RawDocumentBuf>("oplog.rs")
            .find(doc! {})
            .sort(doc! {"$natural": 1})
            .await
            .unwrap();
        let mut out = Vec::new();
        while let Some(d) = cur.try_next().await.unwrap() {
            out.push(d.as_bytes().to_vec());
        }
        out
    })
}

fn ts_of(entry: &[u8]) -> OplogTs {
    OplogEntryRef::from_bytes(entry).unwrap().ts()
}

/// A ledger: accounts inserted, transfers as updates, every third round a
/// transfer in a transaction.
fn ledger(url: &str, rounds: usize, tag: &str) {
    rt().block_on(async {
        let c = client(url).await;
        let coll = c.database("bank").collection::<Document>("accounts");
        for r in 0..rounds {
            let a = format!("{tag}-{r}-a");
            let b = format!("{tag}-{r}-b");
            coll.insert_many([
                doc! {"_id": &a, "balance": 100i64, "pad": "x".repeat(200)},
                doc! {"_id": &b, "balance": 100i64},
            ])
            .await
            .unwrap();
            if r % 3 == 2 {
                let mut s = c.start_session().await.unwrap();
                s.start_transaction().await.unwrap();
                coll.update_one(doc! {"_id": &a}, doc! {"$inc": {"balance": -7i64}})
                    .session(&mut s)
                    .await
                    .unwrap();
                coll.update_one(doc! {"_id": &b}, doc! {"$inc": {"balance": 7i64}})
                    .session(&mut s)
                    .await
                    .unwrap();
                s.commit_transaction().await.unwrap();
            } else {
                coll.update_one(doc! {"_id": &a}, doc! {"$inc": {"balance": -3i64}})
                    .await
                    .unwrap();
                coll.delete_one(doc! {"_id": &b}).await.unwrap();
            }
        }
    })
}

fn oplog_fetch(repo: &Path, args: &[&str], dest: &Path) -> Output {
    Command::new(pitr_bin())
        .args(["oplog-fetch", "--repo"])
        .arg(repo)
        .args(["--name", "main"])
        .args(args)
        .arg(dest)
        .output()
        .unwrap()
}

/// The newest archived position, from `oplog-fetch --list`.
fn archived_last(repo: &Path) -> Option<OplogTs> {
    let out = Command::new(pitr_bin())
        .args(["oplog-fetch", "--repo"])
        .arg(repo)
        .args(["--name", "main", "--list"])
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

fn wait_caught_up(url: &str, repo: &Path) {
    let newest = ts_of(server_oplog(url).last().unwrap());
    wait_for("the archive to catch up", Duration::from_secs(30), || {
        archived_last(repo).is_some_and(|t| t >= newest)
    });
}

/// Everything archived, fetched; checks that every entry decodes.
fn fetch_all(repo: &Path, args: &[&str]) -> Vec<Vec<u8>> {
    let dest = repo.parent().unwrap().join("oplog.bson");
    let out = oplog_fetch(repo, args, &dest);
    assert!(
        out.status.success(),
        "oplog-fetch failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = split_bson(&fs::read(&dest).unwrap()).unwrap();
    for d in &docs {
        OplogEntryRef::from_bytes(d).expect("an archived entry does not decode");
    }
    fs::remove_file(&dest).unwrap();
    docs
}

fn assert_same(fetched: &[Vec<u8>], server: &[Vec<u8>]) {
    assert_eq!(
        fetched.len(),
        server.len(),
        "entry counts differ (fetched {}, server {})",
        fetched.len(),
        server.len()
    );
    for (i, (a, b)) in fetched.iter().zip(server).enumerate() {
        assert!(
            a == b,
            "entry {i} differs (ts {} vs {})",
            ts_of(a),
            ts_of(b)
        );
    }
}

/// Term directories of the source that hold segments.
fn terms_with_segments(repo: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = fs::read_dir(repo.join("main"))
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let n = e.file_name().to_string_lossy().to_string();
            let t = u64::from_str_radix(&n, 16).ok().filter(|_| n.len() == 16)?;
            e.path().join("log").is_dir().then_some(t)
        })
        .collect();
    v.sort();
    v
}

/// Segment objects stored so far.
fn segment_files(repo: &Path) -> usize {
    walk(repo)
        .iter()
        .filter(|p| p.to_string_lossy().contains("/log/"))
        .count()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flat_map(|e| {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p)
        } else {
            vec![p]
        }
    })
    .collect()
}

#[test]
fn ledger_is_archived_byte_for_byte_with_ranges_and_a_step_down() {
    let db = MongoDouble::start(quiet()).unwrap();
    let url = db.url();
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    ledger(&url, 6, "before");
    let a = Archiver::start(&url, &repo, "main", tmp.path(), &[]);
    ledger(&url, 9, "during");
    wait_caught_up(&url, &repo);
    // An election mid-stream: a new term, followed without a reconnect loss.
    rt().block_on(async {
        let c = client(&url).await;
        let _ = c
            .database("admin")
            .run_command(doc! {"replSetStepDown": 60, "force": true})
            .await;
    });
    ledger(&url, 6, "after-stepdown");
    wait_caught_up(&url, &repo);
    let log = a.terminate();
    assert!(log.contains("tailing the oplog"), "{log}");

    let server = server_oplog(&url);
    assert_same(&fetch_all(&repo, &[]), &server);
    let terms = terms_with_segments(&repo);
    assert!(
        terms.len() >= 2,
        "no new epoch after the step-down: {terms:?}"
    );

    // A range inside: exactly the server's entries from..=to.
    let (from, to) = (ts_of(&server[5]), ts_of(&server[server.len() - 4]));
    let f = format!("{}:{}", from.secs, from.inc);
    let t = format!("{}:{}", to.secs, to.inc);
    let part = fetch_all(&repo, &["--from", &f, "--to", &t]);
    assert_same(&part, &server[5..server.len() - 3]);

    // Past the end: not archived, exit 1, nothing written.
    let dest = tmp.path().join("late.bson");
    let late = format!("{}:0", to.secs + 3600);
    let out = oplog_fetch(&repo, &["--to", &late], &dest);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not archived"), "{err}");
    assert!(!dest.exists());

    // Restarted: resumes after the tail, nothing duplicated.
    ledger(&url, 3, "resumed");
    let b = Archiver::start(&url, &repo, "main", tmp.path(), &[]);
    wait_caught_up(&url, &repo);
    let log = b.terminate();
    assert!(log.contains("resuming after"), "{log}");
    assert_same(&fetch_all(&repo, &[]), &server_oplog(&url));

    // verify re-reads every segment.
    let v = Command::new(pitr_bin())
        .args(["verify", "--repo"])
        .arg(&repo)
        .output()
        .unwrap();
    assert!(
        v.status.success(),
        "verify: {}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
}

#[test]
fn seeded_fixture_oplog_is_archived_unchanged() {
    let fixture = fixtures_dir()
        .join("mongorestore/testdata/timeseries_tests/ts_dump_with_oplog/oplog.part1.bson");
    let want = read_bson_file(&fixture).unwrap();
    let db = MongoDouble::start(MongoOptions {
        seed_oplog: Some(fixture),
        ..quiet()
    })
    .unwrap();
    let url = db.url();
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let a = Archiver::start(&url, &repo, "main", tmp.path(), &[]);
    wait_caught_up(&url, &repo);
    a.terminate();
    let got = fetch_all(&repo, &[]);
    assert_same(&got[..want.len().min(got.len())], &want);
    assert_same(&got, &server_oplog(&url));
}

#[test]
fn killed_three_times_under_load_loses_and_duplicates_nothing() {
    let db = MongoDouble::server(Path::new(env!("CARGO_BIN_EXE_mongo-double")), quiet()).unwrap();
    let url = db.url();
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    ledger(&url, 2, "seed");
    let stop = AtomicBool::new(false);
    let last = std::thread::scope(|s| {
        let load = s.spawn(|| {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && i < 300 {
                ledger(&url, 2, &format!("k{i}"));
                i += 1;
            }
        });
        for _ in 0..3 {
            let before = segment_files(&repo);
            let a = Archiver::start(&url, &repo, "main", tmp.path(), &[]);
            wait_for("new segments", Duration::from_secs(30), || {
                segment_files(&repo) > before
            });
            a.kill();
        }
        stop.store(true, Ordering::Relaxed);
        load.join().unwrap();
        Archiver::start(&url, &repo, "main", tmp.path(), &[])
    });
    wait_caught_up(&url, &repo);
    last.terminate();
    assert_same(&fetch_all(&repo, &[]), &server_oplog(&url));
}

#[test]
fn oplog_rolled_over_behind_pitr_is_a_gap() {
    let db = MongoDouble::start(MongoOptions {
        oplog_cap_bytes: Some(64 << 10),
        ..quiet()
    })
    .unwrap();
    let url = db.url();
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    ledger(&url, 3, "before");
    let a = Archiver::start(&url, &repo, "main", tmp.path(), &[]);
    wait_caught_up(&url, &repo);
    a.terminate();
    let before = server_oplog(&url);
    // A base backup before the gap, so the gap splits the window.
    write_manifest(&repo, &before[0], &before[1]);
    let archived_last = ts_of(before.last().unwrap());
    ledger(&url, 150, "lost");
    let now = server_oplog(&url);
    assert!(
        ts_of(&now[0]) > archived_last,
        "the cap did not drop the archived tail"
    );
    let b = Archiver::start(&url, &repo, "main", tmp.path(), &[]);
    wait_caught_up(&url, &repo);
    let log = b.terminate();
    assert!(log.contains("GAP:"), "no GAP line:\n{log}");
    let gaps: Vec<PathBuf> = walk(&repo)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("/gaps/"))
        .collect();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    let body = fs::read_to_string(&gaps[0]).unwrap();
    assert!(body.contains("rolled over"), "{body}");

    let st = Command::new(pitr_bin())
        .args(["status", "--repo"])
        .arg(&repo)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&st.stdout).to_string() + &String::from_utf8_lossy(&st.stderr);
    assert_eq!(st.status.code(), Some(1), "{text}");
    assert!(
        text.contains("rolled over"),
        "status does not name the gap: {text}"
    );

    // Across the gap: not archived, one sentence naming it.
    let dest = tmp.path().join("x.bson");
    let out = oplog_fetch(&repo, &[], &dest);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rolled over"), "{err}");
    assert!(!dest.exists());
    // After it: exactly what the server still holds.
    let server = server_oplog(&url);
    let first = ts_of(&server[0]);
    let from = format!("{}:{}", first.secs, first.inc);
    assert_same(&fetch_all(&repo, &["--from", &from]), &server);
}

/// A minimal MongoDB backup manifest (no collections) at `start..end`.
fn write_manifest(repo: &Path, first: &[u8], last: &[u8]) {
    let (start, end) = (ts_of(first), ts_of(last));
    let term = |e: &[u8]| OplogEntryRef::from_bytes(e).unwrap().term().unwrap_or(0);
    let (t0, t1) = (term(first), term(last));
    let pos = (u64::from(start.secs) << 32) | u64::from(start.inc);
    let dir = repo
        .join("main")
        .join("backups")
        .join(format!("{:016x}{:016x}_b1", 0u64, pos));
    fs::create_dir_all(&dir).unwrap();
    let when = chrono_like(end.secs);
    let m = serde_json::json!({
        "format_version": 1, "kind": "mongodb-logical", "engine": "mongodb", "id": "b1",
        "label": "", "system_id": "rs0", "server_version": "7.0.14",
        "start": {"secs": start.secs, "inc": start.inc}, "start_term": t0,
        "end": {"secs": end.secs, "inc": end.inc}, "end_term": t1,
        "end_wall": when, "start_time": when, "stop_time": when, "collections": []
    });
    fs::write(dir.join("manifest.json"), m.to_string()).unwrap();
}

/// RFC 3339 UTC for Unix seconds (days-from-civil, no date crate needed).
fn chrono_like(secs: u32) -> String {
    let s = i64::from(secs);
    let (days, rem) = (s.div_euclid(86400), s.rem_euclid(86400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[test]
fn wrong_credentials_fail_in_one_sentence_and_write_nothing() {
    let db = MongoDouble::server(Path::new(env!("CARGO_BIN_EXE_mongo-double")), quiet()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let out = Command::new(pitr_bin())
        .args(["archive", &db.url_as("pitr", "wrongpw"), "--repo"])
        .arg(&repo)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("authentication failed"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(!err.contains("wrongpw"), "password leaked: {err}");
    let files = walk(&repo);
    assert!(files.is_empty(), "wrote {files:?}");
}

/// Nothing listens: one sentence naming the address (not the driver's
/// topology dump), exit status 1, nothing written; `pitr backup` says the
/// same.
#[test]
fn an_unreachable_server_fails_in_one_sentence_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let url = "mongodb://127.0.0.1:1/?directConnection=true&serverSelectionTimeoutMS=500";
    for verb in ["archive", "backup"] {
        let out = Command::new(pitr_bin())
            .args([verb, url, "--repo"])
            .arg(&repo)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(1), "{verb}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{verb}, one line: {err}");
        assert!(err.contains("127.0.0.1:1"), "{verb}: {err}");
        assert!(
            !err.contains("Kind:") && !err.contains("labels") && !err.contains("Topology"),
            "{verb}, the driver's dump: {err}"
        );
        let files = walk(&repo);
        assert!(files.is_empty(), "{verb} wrote {files:?}");
    }
}

/// A rollback behind the archive is no gap: the last archived entry is gone from an oplog
/// that still reaches back before it (the double's `pitrRollback` truncates it, as the
/// server's rollback does). The next archiver stops in one sentence instead of going on
/// from the new entries (which would keep the undone writes as history) and records no gap.
#[test]
fn a_rollback_behind_the_archive_stops_the_archiver_and_records_no_gap() {
    let db = MongoDouble::start(quiet()).unwrap();
    let url = db.url();
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    ledger(&url, 3, "kept");
    let common = ts_of(server_oplog(&url).last().unwrap());
    ledger(&url, 3, "undone");
    let a = Archiver::start(&url, &repo, "main", tmp.path(), &[]);
    wait_caught_up(&url, &repo);
    a.terminate();
    rt().block_on(async {
        let c = client(&url).await;
        let r = c
            .database("admin")
            .run_command(
                doc! {"pitrRollback": bson::Timestamp { time: common.secs, increment: common.inc }},
            )
            .await
            .unwrap();
        assert!(r.get_i64("removed").unwrap() > 0, "{r}");
    });
    ledger(&url, 2, "after");
    let mut child = Command::new(pitr_bin())
        .args(["archive", &url, "--repo"])
        .arg(&repo)
        .args(["--name", "main"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = pitr_integration::archiver::wait_child(&mut child, Duration::from_secs(30));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("rolled back writes pitr had archived"),
        "{err}"
    );
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        !walk(&repo)
            .iter()
            .any(|p| p.to_string_lossy().contains("/gaps/")),
        "a gap was recorded"
    );
}

/// Only majority-committed entries are archived: with the majority held
/// back (the double's `pitrHoldMajority`, as when secondaries lag), the
/// archive stops at the held optime although newer entries are in the
/// oplog; once the majority moves on, they are archived, byte for byte.
#[test]
fn only_majority_committed_entries_are_archived() {
    if pitr_integration::mongo::real_mongod().is_some() {
        return; // The hold is the double's own command.
    }
    let db = MongoDouble::start(quiet()).unwrap();
    let url = db.url();
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    ledger(&url, 3, "committed");
    let a = Archiver::start(&url, &repo, "main", tmp.path(), &[]);
    wait_caught_up(&url, &repo);
    let held = rt().block_on(async {
        let r = client(&url)
            .await
            .database("admin")
            .run_command(doc! {"pitrHoldMajority": true})
            .await
            .unwrap();
        OplogTs::from_bson(
            r.get_document("majorityOpTime")
                .unwrap()
                .get_timestamp("ts")
                .unwrap(),
        )
    });
    ledger(&url, 3, "pending");
    let newest = ts_of(server_oplog(&url).last().unwrap());
    assert!(newest > held);
    // Ten flush intervals: without the gate the new entries would be stored.
    std::thread::sleep(Duration::from_secs(2));
    let last = archived_last(&repo).unwrap();
    assert!(last <= held, "archived {last}, beyond the majority {held}");
    rt().block_on(async {
        client(&url)
            .await
            .database("admin")
            .run_command(doc! {"pitrHoldMajority": false})
            .await
            .unwrap();
    });
    wait_caught_up(&url, &repo);
    a.terminate();
    assert_same(&fetch_all(&repo, &[]), &server_oplog(&url));
}
