//! `pitr restore --to TIME` with the target inside a busy second: 1500 autocommit inserts, each
//! recording the start of its own statement (`UTC_TIMESTAMP(6)`), are archived after a backup;
//! the target lies between two inserts of a second that holds many.
//!
//! * MySQL 9 records each transaction's commit time in microseconds
//!   (`immediate_commit_timestamp` of its GTID event). Row `i` committed between the start of
//!   its statement and the start of the next one, so a restore to a time between rows `k` and
//!   `k + 1` holds rows `1..=k-1` for certain, `k` perhaps, and none after: exactly a prefix.
//! * MariaDB records only whole seconds (the statement's start second in every event header),
//!   so a time target includes every transaction of its second: exactly the rows whose
//!   statement started before the next second, also those started after the target inside it.

use chrono::NaiveDateTime;
use pitr_integration::archiver::Archiver;
use pitr_integration::mysql_restore_util::{binlog_position, ok, wait_archived};
use pitr_integration::restore_util::pitr;
use pitr_integration::{mysql, require, Flavor, MySqlServer};

const ROWS: usize = 1500;

fn parse(t: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f").unwrap()
}

/// `(id, statement start)` of every row, in id order.
fn rows(s: &MySqlServer) -> Vec<(usize, NaiveDateTime)> {
    let out = s
        .sql("SELECT id, DATE_FORMAT(at, '%Y-%m-%d %H:%i:%s.%f') FROM busy.t ORDER BY id")
        .unwrap();
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (id, at) = l.split_once('\t').unwrap();
            (id.trim().parse().unwrap(), parse(at.trim()))
        })
        .collect()
}

fn second_of(t: NaiveDateTime) -> i64 {
    t.and_utc().timestamp()
}

/// An index `k` (0-based) whose row and the next one start in the same second with distinct
/// times, with at least five rows of that second before it and after the next one.
fn busy_pair(rows: &[(usize, NaiveDateTime)]) -> Option<usize> {
    (5..rows.len().saturating_sub(6)).find(|&k| {
        let s = second_of(rows[k].1);
        rows[k].1 < rows[k + 1].1
            && (k - 5..=k + 6).all(|i| second_of(rows[i].1) == s)
            // The middle of the second's rows, for a target well inside it.
            && rows.iter().filter(|r| second_of(r.1) == s && r.1 <= rows[k].1).count()
                >= rows.iter().filter(|r| second_of(r.1) == s).count() / 2
    })
}

fn busy_second(flavor: Flavor) {
    let src = MySqlServer::start(flavor).unwrap();
    src.sql(
        "CREATE DATABASE busy; \
         CREATE TABLE busy.t (id INT AUTO_INCREMENT PRIMARY KEY, at DATETIME(6) NOT NULL)",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let repo_s = repo.to_str().unwrap().to_string();
    let archiver = Archiver::start(&src.url(), &repo, "busy", dir.path(), &[]);
    ok(&pitr(&[
        "backup",
        &src.url(),
        "--repo",
        &repo_s,
        "--name",
        "busy",
    ]));
    src.sql(&"INSERT INTO busy.t (at) VALUES (UTC_TIMESTAMP(6));".repeat(ROWS))
        .unwrap();
    let all = rows(&src);
    assert_eq!(all.len(), ROWS);
    // One more commit in a later second: the archived window then reaches past every
    // second of the inserts (MariaDB's window ends at its last commit's whole second).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    src.sql("INSERT INTO busy.t (at) VALUES (UTC_TIMESTAMP(6))")
        .unwrap();
    let k = busy_pair(&all).expect("a second with a dozen inserts or more");
    let (a, b) = (all[k].1, all[k + 1].1);
    let target = a + (b - a) / 2;
    let target_text = format!("{}Z", target.format("%Y-%m-%d %H:%M:%S%.6f"));
    wait_archived(&repo_s, &src.url(), &binlog_position(&src));
    archiver.terminate();

    let into = MySqlServer::start(flavor).unwrap();
    let o = pitr(&[
        "restore",
        "--repo",
        &repo_s,
        "--to",
        &target_text,
        "--target",
        &into.url(),
    ]);
    let report = format!(
        "target {target_text} between row {} ({a}) and row {} ({b}): {}",
        all[k].0,
        all[k + 1].0,
        String::from_utf8_lossy(&o.stderr)
    );
    ok(&o);
    let got: Vec<usize> = rows(&into).into_iter().map(|(id, _)| id).collect();
    let prefix: Vec<usize> = (1..=got.len()).collect();
    assert_eq!(got, prefix, "not a prefix of the inserts; {report}");
    match flavor {
        Flavor::MySql => assert!(
            got.len() == all[k].0 || got.len() + 1 == all[k].0,
            "restored {} rows; {report}",
            got.len()
        ),
        Flavor::MariaDb => {
            let want = all
                .iter()
                .filter(|r| second_of(r.1) <= second_of(target))
                .count();
            assert_eq!(got.len(), want, "{report}");
            assert!(got.len() > all[k + 1].0, "the whole second; {report}");
        }
    }
}

#[test]
fn mysql_time_target_inside_a_busy_second() {
    require!(mysql::available(Flavor::MySql));
    busy_second(Flavor::MySql);
}

#[test]
fn mariadb_time_target_inside_a_busy_second_takes_the_whole_second() {
    require!(mysql::available(Flavor::MariaDb));
    busy_second(Flavor::MariaDb);
}
