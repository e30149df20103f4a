//! Benchmark (ignored by default; run with `cargo test --release -p
//! pitr-integration --test mongo_restore_bench -- --ignored --nocapture`):
//! the oplog replay of a MongoDB restore, 100 000 entries (inserts, then
//! updates) archived (by the tests' stand-in for `pitr archive`) from the replica-set test double (no real mongod runs
//! here), applied to two fresh doubles in the same run: once batched
//! (`ApplyLimits::default()`: many entries per `applyOps`), once one entry
//! per request. Prints entries, round trips and seconds of each; both
//! targets must end equal to the source.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Instant;

use bson::{doc, Document};
use futures::TryStreamExt as _;
use mongodb::Client;
use pitr::archive::keys::SourceName;
use pitr::restore::mongodb::apply::{apply_oplog, ApplyConfig};
use pitr::restore::mongodb::plan::MongoTarget;
use pitr::restore::mongodb::{load, make_plan};
use pitr::storage::Repo;
#[path = "mongo_restore_support/copier.rs"]
mod copier;
use pitr_integration::restore_util::{pitr, text};
use pitr_integration::{MongoDouble, MongoOptions};

const INSERTS: i64 = 60_000;
const UPDATES: i64 = 40_000;

fn start() -> MongoDouble {
    MongoDouble::start_bin(
        Path::new(env!("CARGO_BIN_EXE_mongo-double")),
        MongoOptions {
            noop_interval_secs: 0,
            ..Default::default()
        },
    )
    .expect("start mongo-double")
}

async fn docs(c: &Client) -> Vec<Document> {
    c.database("bench")
        .collection::<Document>("items")
        .find(doc! {})
        .sort(doc! {"_id": 1})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn oplog_replay_batched_vs_one_entry_per_request() {
    let source = start();
    let dir = tempfile::tempdir().unwrap();
    let repo_path = dir.path().join("repo");
    let repo_s = repo_path.to_str().unwrap().to_string();
    let src = Client::with_uri_str(source.url()).await.unwrap();
    let items = src.database("bench").collection::<Document>("items");
    items.insert_one(doc! {"_id": -1, "v": 0}).await.unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let copier = tokio::spawn(copier::copy_oplog(
        source.url(),
        repo_s.clone(),
        "bench",
        stop_rx,
    ));
    let o = pitr(&[
        "backup",
        &source.url(),
        "--repo",
        &repo_s,
        "--name",
        "bench",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    for chunk in 0..INSERTS / 1000 {
        items
            .insert_many(
                (0..1000).map(|i| doc! {"_id": chunk * 1000 + i, "v": 0, "pad": "p".repeat(40)}),
            )
            .await
            .unwrap();
    }
    items
        .update_many(doc! {"_id": {"$lt": UPDATES}}, doc! {"$inc": {"v": 1}})
        .await
        .unwrap();
    let want = docs(&src).await;
    stop_tx.send(true).unwrap();
    copier.await.unwrap();

    let repo = Repo::open_existing(&repo_s).await.unwrap();
    let source_name = SourceName::new("bench").unwrap();
    let (plan, backups) = make_plan(&repo, &source_name, &MongoTarget::Latest)
        .await
        .unwrap();
    let (key, manifest) = backups
        .iter()
        .find(|(k, _)| k.dir() == plan.backup_dir)
        .unwrap();
    println!(
        "| mode | entries applied | round trips | entries per round trip | apply seconds |\n|---|---:|---:|---:|---:|"
    );
    for (mode, max_ops) in [
        ("batched (default limits)", None),
        ("one entry per request", Some(1)),
    ] {
        let target = start();
        let dst = Client::with_uri_str(target.url()).await.unwrap();
        let loaded = load::load_backup(&repo, key, manifest, &dst, 2)
            .await
            .unwrap();
        let mut cfg = ApplyConfig {
            preserve_uuid: loaded.uuids_preserved,
            ..Default::default()
        };
        if let Some(n) = max_ops {
            cfg.limits.max_ops = n;
        }
        let t = Instant::now();
        let rep = apply_oplog(&repo, &plan, &MongoTarget::Latest, &dst, cfg)
            .await
            .unwrap();
        let secs = t.elapsed().as_secs_f64();
        assert!(rep.reached_target);
        assert!(rep.entries_applied >= (INSERTS + UPDATES) as u64, "{rep:?}");
        assert_eq!(
            docs(&dst).await,
            want,
            "{mode}: the target differs from the source"
        );
        println!(
            "| {mode} | {} | {} | {:.1} | {secs:.2} |",
            rep.entries_applied,
            rep.round_trips,
            rep.entries_applied as f64 / rep.round_trips.max(1) as f64
        );
    }
}
