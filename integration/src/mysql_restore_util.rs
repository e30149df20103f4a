//! Helpers for end-to-end MySQL/MariaDB restore tests: run `pitr` and
//! require success, restore the whole archive into a server, wait until the archive reaches a binlog position, read
//! a server's binlog position and GTID state, dump a database and compare
//! dumps line by line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Output;
use std::time::{Duration, Instant};

use crate::restore_util::pitr;
use crate::{Flavor, MySqlServer};

/// The stdout of a `pitr` run that must have succeeded.
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "pitr failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `pitr restore --repo REPO --latest --target URL` plus `extra` arguments.
pub fn restore_latest(repo: &str, target_url: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "restore", "--repo", repo, "--latest", "--target", target_url,
    ];
    args.extend_from_slice(extra);
    pitr(&args)
}

/// Waits (up to 60 s) until `repo` holds the binlog up to `position`: a
/// `restore --dry-run --to-position` plans without error.
pub fn wait_archived(repo: &str, url: &str, position: &str) {
    wait_archived_with(repo, url, position, &[]);
}

/// As [`wait_archived`], with `extra` arguments (e.g. `--kek`).
pub fn wait_archived_with(repo: &str, url: &str, position: &str, extra: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut args = vec![
            "restore",
            "--repo",
            repo,
            "--to-position",
            position,
            "--target",
            url,
            "--dry-run",
        ];
        args.extend_from_slice(extra);
        let o = pitr(&args);
        if o.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the archive did not reach {position}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The server's current binlog position, `FILE:POS`.
pub fn binlog_position(s: &MySqlServer) -> String {
    let q = match s.flavor() {
        Flavor::MariaDb => "SHOW MASTER STATUS",
        Flavor::MySql => "SHOW BINARY LOG STATUS",
    };
    let status = s.sql(q).unwrap();
    let cols: Vec<&str> = status.split('\t').collect();
    format!("{}:{}", cols[0], cols[1])
}

/// The server's GTID state (MariaDB `gtid_binlog_pos`, MySQL
/// `gtid_executed`) without whitespace.
pub fn gtid_state(s: &MySqlServer) -> String {
    let q = match s.flavor() {
        Flavor::MariaDb => "SELECT @@gtid_binlog_pos",
        Flavor::MySql => "SELECT @@gtid_executed",
    };
    s.sql(q)
        .unwrap()
        .replace("\\n", "")
        .split_whitespace()
        .collect()
}

/// The target's GTID state holds the source's: MariaDB `d-s-n` as is; MySQL
/// `uuid:1-n` as an interval list for that uuid ending at `n`.
pub fn assert_has_gtids(target: &MySqlServer, source_state: &str) {
    let have = gtid_state(target);
    for want in source_state.split(',') {
        let ok = match target.flavor() {
            Flavor::MariaDb => have.split(',').any(|g| g == want),
            Flavor::MySql => {
                let (uuid, ivs) = want.split_once(':').unwrap();
                let last = ivs.rsplit(['-', ':']).next().unwrap();
                have.split(',')
                    .any(|g| g.starts_with(uuid) && g.rsplit(['-', ':']).next() == Some(last))
            }
        };
        assert!(ok, "restored GTID state {have} lacks {want}");
    }
}

/// Every table (and view) of database `db`: its definition as the server
/// shows it (columns, defaults, indexes, keys; without the table's
/// `AUTO_INCREMENT=` counter), then its rows as the client prints them; and
/// every trigger of the database with its statement. The oracle restored
/// servers are compared with.
pub fn dump(s: &MySqlServer, db: &str) -> String {
    let tables = s
        .sql(&format!(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA='{db}' ORDER BY TABLE_NAME"
        ))
        .unwrap();
    let mut out = String::new();
    for t in tables.lines() {
        out.push_str(&format!("== {t}\n"));
        let create = s.sql(&format!("SHOW CREATE TABLE {db}.`{t}`")).unwrap();
        out.push_str(&strip_auto_increment(&create));
        out.push('\n');
        out.push_str(
            &s.sql(&format!("SELECT * FROM {db}.`{t}` ORDER BY 1"))
                .unwrap(),
        );
        out.push('\n');
    }
    out.push_str("== triggers\n");
    out.push_str(
        &s.sql(&format!(
            "SELECT TRIGGER_NAME, EVENT_MANIPULATION, EVENT_OBJECT_TABLE, ACTION_TIMING, \
             ACTION_STATEMENT FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA='{db}' \
             ORDER BY TRIGGER_NAME"
        ))
        .unwrap(),
    );
    out
}

/// `SHOW CREATE TABLE` output without the ` AUTO_INCREMENT=N` table option
/// (the next counter value, which a restore need not reproduce).
fn strip_auto_increment(create: &str) -> String {
    let mut out = String::with_capacity(create.len());
    let mut rest = create;
    while let Some(i) = rest.find(" AUTO_INCREMENT=") {
        out.push_str(&rest[..i]);
        let tail = &rest[i + " AUTO_INCREMENT=".len()..];
        let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
        rest = &tail[digits..];
    }
    out.push_str(rest);
    out
}

/// Compares two dumps, reporting the first differing line (not the whole dump).
pub fn same(got: &str, want: &str, what: &str) {
    if got == want {
        return;
    }
    let (g, w): (Vec<&str>, Vec<&str>) = (got.lines().collect(), want.lines().collect());
    let i = g
        .iter()
        .zip(&w)
        .position(|(a, b)| a != b)
        .unwrap_or(g.len().min(w.len()));
    panic!(
        "{what}: restored contents differ at line {i} ({} vs {} lines): got {:?}, want {:?}",
        g.len(),
        w.len(),
        g.get(i),
        w.get(i)
    );
}
