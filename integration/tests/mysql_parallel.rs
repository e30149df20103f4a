//! Parallel binlog apply (`pitr restore --parallel N`) against real servers,
//! with a workload built to punish a wrong dependency: the same rows
//! updated with non-commuting changes (`bal = bal * 3 + r`) by transaction
//! after transaction, a unique key value freed by a DELETE and taken again
//! by an INSERT of another primary key in other letter case, the same
//! primary key deleted and inserted again, bulk inserts that are truly
//! independent, and transactions that must run alone (a table without a
//! key, tables with a foreign key, a non-ASCII key value, DDL in the
//! middle). Any transaction applied before one it depends on leaves other
//! final values or fails on a duplicate key. Restores over 4 connections
//! and over 1 connection must both equal the source's contents at the
//! target, and the report must show that transactions did run in parallel.

use pitr_integration::archiver::Archiver;
use pitr_integration::mysql_restore_util::{
    assert_has_gtids, binlog_position, dump, gtid_state, ok, restore_latest, same, wait_archived,
};
use pitr_integration::restore_util::pitr;
use pitr_integration::{mysql, require, Flavor, MySqlServer};

/// Every table of `par`, row by row (the oracle).
fn contents(s: &MySqlServer) -> String {
    dump(s, "par")
}

const SETUP: &str = "CREATE DATABASE par; \
 CREATE TABLE par.acct (id INT PRIMARY KEY, bal BIGINT NOT NULL, n INT NOT NULL); \
 CREATE TABLE par.codes (id INT PRIMARY KEY, code VARCHAR(16) NOT NULL, v INT NOT NULL, UNIQUE KEY (code)); \
 CREATE TABLE par.bag (a INT, b INT); \
 CREATE TABLE par.parent (id INT PRIMARY KEY); \
 CREATE TABLE par.child (id INT PRIMARY KEY, p INT, FOREIGN KEY (p) REFERENCES par.parent (id)); \
 CREATE TABLE par.big (id INT PRIMARY KEY, v INT NOT NULL, pad CHAR(40) NOT NULL); \
 CREATE TABLE par.nums (k INT PRIMARY KEY);";

/// One round of the workload; each statement commits on its own unless in
/// an explicit transaction. Phase 2 runs after an ALTER TABLE.
const PROCEDURE: &str = "CREATE PROCEDURE par.work(IN first INT, IN last INT, IN phase INT)
BEGIN
  DECLARE r INT DEFAULT first;
  WHILE r <= last DO
    UPDATE par.acct SET bal = bal * 3 + r, n = n + 1 WHERE id = r % 20 + 1;
    START TRANSACTION;
    UPDATE par.acct SET bal = bal - 1 WHERE id = (r * 7) % 20 + 1;
    UPDATE par.acct SET bal = bal * 2 + 1 WHERE id = (r * 11) % 20 + 1;
    COMMIT;
    DELETE FROM par.codes WHERE code = CONCAT('c', r % 10);
    INSERT INTO par.codes VALUES (1000 + r, CONCAT(IF(r % 2 = 0, 'C', 'c'), r % 10), r);
    INSERT INTO par.big SELECT r * 1000 + k, r, 'bulk' FROM par.nums;
    DELETE FROM par.big WHERE id = (r - 1) * 1000 + 1;
    INSERT INTO par.big VALUES ((r - 1) * 1000 + 1, -r, 'again');
    UPDATE par.big SET v = v * 5 + r WHERE id = (r - 1) * 1000 + 1;
    IF r % 10 = 0 THEN
      INSERT INTO par.bag VALUES (r, r);
      UPDATE par.bag SET b = b * 2 + r WHERE a < r;
    END IF;
    IF r % 25 = 0 THEN
      INSERT INTO par.parent VALUES (r);
      INSERT INTO par.child VALUES (r, r);
    END IF;
    IF r % 30 = 0 THEN
      INSERT INTO par.codes VALUES (5000 + r, CONCAT(CHAR(0xC3A9 USING utf8mb4), r), r);
    END IF;
    IF phase = 2 THEN
      UPDATE par.acct SET extra = extra * 3 + r WHERE id = (r * 3) % 20 + 1;
    END IF;
    SET r = r + 1;
  END WHILE;
END";

/// Restores into a fresh server and checks the contents; returns the
/// report's `apply` object.
fn restore(
    f: Flavor,
    repo: &str,
    target: &[&str],
    parallel: &str,
    want: &str,
    what: &str,
) -> serde_json::Value {
    let server = MySqlServer::start(f).unwrap();
    let url = server.url();
    let mut args = vec!["restore", "--repo", repo];
    args.extend_from_slice(target);
    args.extend_from_slice(&["--target", &url, "--parallel", parallel, "--json"]);
    let o = pitr(&args);
    let out = ok(&o);
    let what = format!("{what} ({})", String::from_utf8_lossy(&o.stderr));
    same(&contents(&server), want, &what);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    v["apply"].clone()
}

#[test]
fn mariadb_parallel_apply() {
    require!(mysql::available(Flavor::MariaDb));
    parallel_apply(Flavor::MariaDb);
}

#[test]
fn mysql_parallel_apply() {
    require!(mysql::available(Flavor::MySql));
    parallel_apply(Flavor::MySql);
}

fn parallel_apply(f: Flavor) {
    let src = MySqlServer::start(f).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo_path = dir.path().join("repo");
    let repo = repo_path.to_str().unwrap().to_string();
    let url = src.url();
    src.sql(SETUP).unwrap();
    let mut seed = String::from("INSERT INTO par.acct VALUES ");
    seed.push_str(
        &(1..=20)
            .map(|i| format!("({i}, {i}, 0)"))
            .collect::<Vec<_>>()
            .join(","),
    );
    seed.push_str("; INSERT INTO par.codes VALUES ");
    seed.push_str(
        &(0..10)
            .map(|i| format!("({}, 'c{i}', 0)", i + 1))
            .collect::<Vec<_>>()
            .join(","),
    );
    seed.push_str("; INSERT INTO par.nums VALUES ");
    seed.push_str(
        &(2..=60)
            .map(|i| format!("({i})"))
            .collect::<Vec<_>>()
            .join(","),
    );
    src.sql(&seed).unwrap();
    src.sql(&format!("DELIMITER //\n{PROCEDURE} //\nDELIMITER ;"))
        .unwrap();
    let archiver = Archiver::start(&url, &repo_path, "par", dir.path(), &[]);
    ok(&pitr(&["backup", &url, "--repo", &repo, "--name", "par"]));

    src.sql("CALL par.work(1, 120, 1)").unwrap();
    let mid = contents(&src);
    let mid_gtid = gtid_state(&src);
    src.sql("ALTER TABLE par.acct ADD COLUMN extra BIGINT NOT NULL DEFAULT 7")
        .unwrap();
    src.sql("CALL par.work(121, 240, 2)").unwrap();
    let end = contents(&src);
    let end_gtid = gtid_state(&src);
    wait_archived(&repo, &url, &binlog_position(&src));
    archiver.terminate();

    // Over 4 connections: the same contents, and many transactions ran
    // beside others.
    let a = restore(f, &repo, &["--latest"], "4", &end, "latest, 4 connections");
    assert_eq!(a["connections"], 4, "{a}");
    let applied = a["transactions_applied"].as_u64().unwrap();
    let alone = a["transactions_alone"].as_u64().unwrap();
    assert!(applied > 1800, "{a}");
    assert!(alone > 20, "{a}");
    assert!(
        applied - alone > 1500,
        "most transactions were not parallel: {a}"
    );
    assert!(a["last_applied_gtid"].is_string(), "{a}");

    // A GTID target in the middle, before the DDL: exact with 4 connections.
    restore(
        f,
        &repo,
        &["--to-gtid", &mid_gtid],
        "4",
        &mid,
        "gtid mid, 4 connections",
    );

    // --skip-target-binlog: the same contents; the target's binlog and GTID
    // state record none of the source's transactions.
    let quiet = MySqlServer::start(f).unwrap();
    ok(&restore_latest(
        &repo,
        &quiet.url(),
        &["--skip-target-binlog"],
    ));
    same(&contents(&quiet), &end, "latest, --skip-target-binlog");
    let quiet_gtids = gtid_state(&quiet);
    for want in end_gtid.split(',') {
        let source = match f {
            Flavor::MariaDb => want.rsplit_once('-').unwrap().0,
            Flavor::MySql => want.split_once(':').unwrap().0,
        };
        assert!(
            !quiet_gtids.contains(source),
            "{quiet_gtids} records {want} although the target was told not to binlog"
        );
    }
    drop(quiet);

    // A user that may not turn the binlog off gets one plain sentence, and
    // nothing is created on the target.
    let limited = MySqlServer::start(f).unwrap();
    limited
        .sql("CREATE USER 'reader'@'%' IDENTIFIED BY 'pw'; GRANT SELECT ON *.* TO 'reader'@'%'")
        .unwrap();
    let o = restore_latest(
        &repo,
        &limited.url_as("reader", "pw"),
        &["--skip-target-binlog"],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("--skip-target-binlog needs"), "{err}");
    assert_eq!(
        limited
            .sql("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME='par'")
            .unwrap(),
        "0"
    );
    drop(limited);

    // A MariaDB user without SUPER or BINLOG ADMIN may not turn the
    // annotations off: a note, and the same restore.
    if f == Flavor::MariaDb {
        let plain = MySqlServer::start(f).unwrap();
        plain
            .sql(
                "CREATE USER 'plain'@'%' IDENTIFIED BY 'pw'; \
                 GRANT ALL PRIVILEGES ON *.* TO 'plain'@'%'; \
                 REVOKE SUPER, BINLOG ADMIN ON *.* FROM 'plain'@'%'",
            )
            .unwrap();
        let o = restore_latest(&repo, &plain.url_as("plain", "pw"), &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{err}");
        assert!(
            err.contains("refused SET SESSION binlog_annotate_row_events=0"),
            "{err}"
        );
        same(&contents(&plain), &end, "latest, user without BINLOG ADMIN");
        assert!(annotations(&plain).1 > 0);
    }

    // One connection: the same result, nothing runs alone or in parallel.
    let one = restore(f, &repo, &["--latest"], "1", &end, "latest, 1 connection");
    assert_eq!(one["connections"], 1, "{one}");
    assert_eq!(
        one["transactions_applied"], a["transactions_applied"],
        "{one}"
    );

    // The restored server ends with the source's GTID state for its domain
    // or uuid (the last transaction runs alone, after all others).
    // Its binlog annotates row changes with their statements (MariaDB's
    // default; switched on for MySQL), but not the replayed ones with their
    // BINLOG '<base64>' text.
    let target = MySqlServer::start(f).unwrap();
    match f {
        Flavor::MariaDb => assert_eq!(
            target
                .sql("SELECT @@global.binlog_annotate_row_events")
                .unwrap(),
            "1"
        ),
        Flavor::MySql => {
            target
                .sql("SET GLOBAL binlog_rows_query_log_events=ON")
                .unwrap();
        }
    }
    ok(&restore_latest(&repo, &target.url(), &[]));
    same(&contents(&target), &end, "latest, default connections");
    assert_has_gtids(&target, &end_gtid);
    let (annotations, of_binlog) = annotations(&target);
    assert!(
        annotations > 0,
        "the base load's statements should be annotated"
    );
    assert_eq!(
        of_binlog, 0,
        "{of_binlog} of {annotations} annotations hold a BINLOG statement"
    );
}

/// Statement annotations of row events in the server's binlog (MariaDB
/// ANNOTATE_ROWS, MySQL ROWS_QUERY): (all, those of a `BINLOG` statement).
fn annotations(s: &MySqlServer) -> (usize, usize) {
    let (mut all, mut of_binlog) = (0, 0);
    for log in s.sql("SHOW BINARY LOGS").unwrap().lines() {
        let file = log.split('\t').next().unwrap();
        for ev in s
            .sql(&format!("SHOW BINLOG EVENTS IN '{file}'"))
            .unwrap()
            .lines()
        {
            let cols: Vec<&str> = ev.split('\t').collect();
            if matches!(cols.get(2), Some(&("Annotate_rows" | "Rows_query"))) {
                all += 1;
                if cols.get(5).is_some_and(|i| i.contains("BINLOG")) {
                    of_binlog += 1;
                }
            }
        }
    }
    (all, of_binlog)
}
