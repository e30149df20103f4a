//! Writer leases against a real MariaDB with real `pitr archive` processes:
//! a second archiver of a source refuses with `--no-wait` naming the holder,
//! a third waits and takes over when the holder is SIGKILLed, archives
//! everything the server wrote (the open binlog file is rebuilt to its full
//! size), `verify` is clean and SIGTERM releases the lease.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pitr_integration::archiver::{wait_for, Archiver};
use pitr_integration::restore_util::text;
use pitr_integration::{mysql, pitr_bin, require, Flavor, MySqlServer};

fn insert(server: &MySqlServer, from: u32, to: u32) {
    for i in from..=to {
        server
            .sql(&format!("INSERT INTO lease.t VALUES ({i})"))
            .unwrap();
    }
}

/// (name, size) of the server's newest binlog file.
fn newest_binlog(server: &MySqlServer) -> (String, u64) {
    let out = server.sql("SHOW BINARY LOGS").unwrap();
    let last = out.lines().last().unwrap().to_string();
    let mut c = last.split('\t');
    (
        c.next().unwrap().to_string(),
        c.next().unwrap().parse().unwrap(),
    )
}

/// Archived bytes of `file` per `pitr binlog-fetch --list`.
fn archived(repo: &Path, file: &str) -> Option<u64> {
    let o = Command::new(pitr_bin())
        .args(["binlog-fetch", "--repo"])
        .arg(repo)
        .args(["--name", "main", "--list"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next()? == file).then(|| f.next()?.parse().ok())?
    })
}

#[test]
fn writer_lease_mariadb() {
    require!(mysql::available(Flavor::MariaDb));
    let server = MySqlServer::start(Flavor::MariaDb).unwrap();
    server
        .sql("CREATE DATABASE lease; CREATE TABLE lease.t (id INT PRIMARY KEY) ENGINE=InnoDB")
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let ttl = ["--lease-ttl", "3s"];
    let a = Archiver::start(&server.url(), &repo, "main", tmp.path(), &ttl);
    wait_for(
        "the first archiver to stream",
        Duration::from_secs(60),
        || a.log().contains("streaming binlog from"),
    );
    let o = Command::new(pitr_bin())
        .args(["archive", &server.url(), "--repo"])
        .arg(&repo)
        .args(["--name", "main", "--no-wait"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("the writer lease of main is held by"), "{err}");
    let b = Archiver::start(&server.url(), &repo, "main", tmp.path(), &ttl);
    wait_for(
        "the second archiver to wait",
        Duration::from_secs(60),
        || {
            b.log()
                .contains("waiting for the writer lease of main: held by")
        },
    );
    insert(&server, 1, 20);
    a.kill();
    wait_for(
        "the second archiver to take over",
        Duration::from_secs(60),
        || b.log().contains("streaming binlog from"),
    );
    assert!(
        b.log()
            .contains("took over the writer lease of main (generation 2)"),
        "{}",
        b.log()
    );
    insert(&server, 21, 40);
    let (file, size) = newest_binlog(&server);
    wait_for("everything to be archived", Duration::from_secs(60), || {
        archived(&repo, &file) == Some(size)
    });
    let log = b.terminate();
    assert!(log.contains("released the writer lease of main"), "{log}");
    let o = Command::new(pitr_bin())
        .args(["verify", "--repo"])
        .arg(&repo)
        .output()
        .unwrap();
    assert!(o.status.success(), "verify: {}", text(&o));
    let o = Command::new(pitr_bin())
        .args(["status", "--repo"])
        .arg(&repo)
        .arg("--json")
        .output()
        .unwrap();
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        st["sources"][0]["writer_lease"]["state"], "released",
        "{st}"
    );
    assert_eq!(st["sources"][0]["writer_lease"]["generation"], 2, "{st}");
}
