//! Interrupted MongoDB backups (against the wire-protocol double, see
//! `integration/MONGO-DOUBLE.md`, or a real `mongod` named by
//! `PITR_MONGOD_BIN`; none can run here).
//!
//! A MongoDB backup stores its collections, then waits until the
//! repository's oplog archive covers its `[start, end]`. An archiver that
//! holds the writer lease but is paused (SIGSTOP) keeps it in that window:
//! data stored, no manifest. Then:
//!
//! * `pitr backup` stopped by SIGTERM exits 143, says in one sentence that
//!   the incomplete backup was removed, and its directory is gone;
//! * `pitr run` stopped by SIGTERM during its scheduled backup exits 0 and
//!   its backup directory is gone too.

#![allow(clippy::unwrap_used)] // tests unwrap

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use bson::{doc, Document};
use pitr_integration::archiver::{wait_child, wait_for, Archiver};
use pitr_integration::signal::{send, Signal};
use pitr_integration::{pitr_bin, MongoDouble, MongoOptions};

/// Backup directories of `source`: (name, has manifest, has the roles part).
fn backup_dirs(repo: &Path, source: &str) -> Vec<(String, bool, bool)> {
    let dir = repo.join(source).join("backups");
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        e.path().join("manifest.json").exists(),
                        e.path().join("roles.bson.zst.000").exists(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn insert(url: &str, n: i32) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let c = mongodb::Client::with_uri_str(url).await.unwrap();
            for coll in ["a", "b"] {
                let docs: Vec<Document> = (0..n)
                    .map(|i| doc! {"_id": i, "v": format!("{coll}-{i}")})
                    .collect();
                c.database("shop")
                    .collection::<Document>(coll)
                    .insert_many(docs)
                    .await
                    .unwrap();
            }
        });
}

/// Sends `sig` to `pid` with `kill`.
fn kill(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} failed");
}

#[test]
fn mongo_backup_sigterm_in_backup_and_in_run_cleans_up() {
    let db = MongoDouble::server(
        Path::new(env!("CARGO_BIN_EXE_mongo-double")),
        MongoOptions {
            noop_interval_secs: 0,
            ..Default::default()
        },
    )
    .unwrap();
    let url = db.url();
    insert(&url, 200);
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");

    // An archiver stores the oplog so far, then is paused holding the lease.
    let paused = Archiver::start(&url, &repo, "m", tmp.path(), &["--lease-ttl", "10m"]);
    wait_for("the first oplog segment", Duration::from_secs(30), || {
        walk_has_segment(&repo.join("m"))
    });
    kill(paused.pid(), "-STOP");
    insert_more(&url);

    // `pitr backup`: stored, waiting for the oplog, then SIGTERM.
    let log = tmp.path().join("backup.log");
    let mut child = Command::new(pitr_bin())
        .args(["backup", &url, "--name", "m", "--repo"])
        .arg(&repo)
        .env_remove("PITR_REPO")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for(
        "the backup's data to be stored",
        Duration::from_secs(60),
        || backup_dirs(&repo, "m").iter().any(|d| d.2 && !d.1),
    );
    send(child.id(), Signal::Term);
    let status = wait_child(&mut child, Duration::from_secs(30));
    let err = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(143), "{err}");
    assert!(
        err.lines()
            .any(|l| l.starts_with("backup interrupted by SIGTERM") && l.contains("was removed")),
        "{err}"
    );
    assert_eq!(backup_dirs(&repo, "m"), vec![], "{err}");

    // `pitr run`: its archiver waits for the paused one's lease, its
    // scheduled backup waits for the oplog; SIGTERM ends both.
    let cfg = tmp.path().join("pitr.toml");
    std::fs::write(
        &cfg,
        format!(
            "repo = \"{}\"\n[[source]]\nname = \"m\"\nurl = \"{url}\"\nbackup_interval = \"1h\"\n",
            repo.display()
        ),
    )
    .unwrap();
    let run_log = tmp.path().join("run.log");
    let mut run = Command::new(pitr_bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .env_remove("PITR_REPO")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&run_log).unwrap())
        .spawn()
        .unwrap();
    wait_for(
        "the scheduled backup's data to be stored",
        Duration::from_secs(60),
        || backup_dirs(&repo, "m").iter().any(|d| d.2 && !d.1),
    );
    send(run.id(), Signal::Term);
    let status = wait_child(&mut run, Duration::from_secs(60));
    let text = std::fs::read_to_string(&run_log).unwrap();
    assert!(status.success(), "{status:?}\n{text}");
    assert!(
        text.contains("backup interrupted by shutdown") && text.contains("was removed"),
        "{text}"
    );
    assert_eq!(backup_dirs(&repo, "m"), vec![], "{text}");

    kill(paused.pid(), "-CONT");
    paused.terminate();
}

/// Writes after the paused archiver's last segment, so a backup's end is
/// beyond what is archived.
fn insert_more(url: &str) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let c = mongodb::Client::with_uri_str(url).await.unwrap();
            c.database("shop")
                .collection::<Document>("c")
                .insert_one(doc! {"_id": 1, "late": true})
                .await
                .unwrap();
        });
}

/// Whether any file under `dir` is an oplog segment (`*.seg`).
fn walk_has_segment(dir: &Path) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.filter_map(|e| e.ok()) {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "seg") {
                return true;
            }
        }
    }
    false
}
