//! End-to-end MySQL/MariaDB point-in-time restore against real servers:
//! `pitr archive` streams the source's binlog into a repository while a
//! ledger workload runs; `pitr backup` takes a logical base backup in the
//! middle of it; more bursts of transactions follow (with DDL and a binlog
//! rotation inside the stream). Each burst's end is recorded three ways —
//! GTID position, binlog coordinates, and a server time inside the quiet
//! second after it — together with the full ledger contents at that point.
//! `pitr restore` into fresh servers must then reproduce exactly the
//! recorded contents for every kind of target; targets outside the window
//! and non-empty targets are refused clearly.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use pitr_integration::mysql_restore_util::{
    assert_has_gtids, binlog_position, dump, gtid_state, ok, restore_latest, same, wait_archived,
};
use pitr_integration::restore_util::pitr;
use pitr_integration::{mysql, pitr_bin, require, Flavor, MySqlServer};

/// The ledger contents as the client prints them (the oracle).
fn ledger(s: &MySqlServer) -> String {
    dump(s, "ledger")
}

struct Mark {
    gtid: String,
    position: String,
    time: String,
    ledger: String,
}

fn mark(s: &MySqlServer) -> Mark {
    let position = binlog_position(s);
    let gtid = gtid_state(s);
    let ledger = ledger(s);
    // The burst committed within the previous second(s); MariaDB records commit
    // times in whole seconds, so the target lies in a quiet second after it.
    std::thread::sleep(Duration::from_millis(1100));
    let time = s
        .sql("SELECT DATE_FORMAT(UTC_TIMESTAMP(6), '%Y-%m-%d %H:%i:%s.%f')")
        .unwrap()
        + "Z";
    std::thread::sleep(Duration::from_millis(1100));
    Mark {
        gtid,
        position,
        time,
        ledger,
    }
}

fn burst(s: &MySqlServer, k: u32) {
    let mut sql = String::from("USE ledger; ");
    for i in 0..5 {
        sql.push_str(&format!(
            "START TRANSACTION; \
             INSERT INTO ledger.entries (account, amount, note, at) VALUES ('acct{i}', {k}{i}.25, X'00FF0A27{k:02x}{i:02x}', NOW(6)); \
             UPDATE ledger.accounts SET balance = balance + {k}{i}.25, updates = updates + 1 WHERE name = 'acct{i}'; \
             COMMIT; "
        ));
    }
    // A rolled-back transaction leaves no trace.
    sql.push_str("START TRANSACTION; INSERT INTO ledger.entries (account, amount, at) VALUES ('ghost', 1, NOW(6)); ROLLBACK; ");
    // A big multi-row statement: several rows events for one statement.
    sql.push_str(match s.flavor() {
        Flavor::MariaDb => "INSERT INTO ledger.entries (account, amount, note, at) SELECT CONCAT('bulk', seq), seq, REPEAT('b', 60), NOW(6) FROM seq_1_to_300; ",
        Flavor::MySql => "INSERT INTO ledger.entries (account, amount, note, at) WITH RECURSIVE s (seq) AS (SELECT 1 UNION ALL SELECT seq + 1 FROM s WHERE seq < 300) SELECT CONCAT('bulk', seq), seq, REPEAT('b', 60), NOW(6) FROM s; ",
    });
    sql.push_str(&format!(
        "DELETE FROM ledger.entries WHERE account LIKE 'bulk%' AND amount % {} = 0; ",
        k + 2
    ));
    s.sql(&sql).unwrap();
}

fn restore_and_check(f: Flavor, repo: &str, flag: &str, value: &str, want: &str, what: &str) {
    let target = MySqlServer::start(f).unwrap();
    let o = pitr(&[
        "restore",
        "--repo",
        repo,
        flag,
        value,
        "--target",
        &target.url(),
        "--json",
    ]);
    let out = ok(&o);
    let report = format!("{what} ({out} {})", String::from_utf8_lossy(&o.stderr));
    same(&ledger(&target), want, &report);
}

struct Archiver(Child);

impl Drop for Archiver {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn mariadb_point_in_time_restore() {
    require!(mysql::available(Flavor::MariaDb));
    point_in_time_restore(Flavor::MariaDb);
}

#[test]
fn mysql_point_in_time_restore() {
    require!(mysql::available(Flavor::MySql));
    point_in_time_restore(Flavor::MySql);
}

fn point_in_time_restore(f: Flavor) {
    let src = MySqlServer::start(f).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo_path = dir.path().join("repo");
    let repo = repo_path.to_str().unwrap().to_string();
    let url = src.url();
    src.sql(
        "CREATE DATABASE ledger; \
         CREATE TABLE ledger.accounts (name VARCHAR(32) PRIMARY KEY, balance DECIMAL(14,2) NOT NULL, updates INT NOT NULL); \
         CREATE TABLE ledger.entries (id INT AUTO_INCREMENT PRIMARY KEY, account VARCHAR(32) NOT NULL, amount DECIMAL(12,2) NOT NULL, \
            note VARBINARY(128), at DATETIME(6) NOT NULL, doubled DECIMAL(13,2) AS (amount * 2) VIRTUAL); \
         INSERT INTO ledger.accounts VALUES ('acct0',0,0),('acct1',0,0),('acct2',0,0),('acct3',0,0),('acct4',0,0); \
         CREATE VIEW ledger.totals AS SELECT account, SUM(amount) AS total FROM ledger.entries GROUP BY account; \
         CREATE TRIGGER ledger.touch BEFORE INSERT ON ledger.accounts FOR EACH ROW SET NEW.updates = NEW.updates;",
    )
    .unwrap();
    let archiver = Archiver(
        Command::new(pitr_bin())
            .args([
                "archive",
                &url,
                "--repo",
                &repo,
                "--flush-interval",
                "200ms",
            ])
            .stderr(std::fs::File::create(dir.path().join("archive.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    burst(&src, 0);
    let before_backup = mark(&src);

    let rows: u64 = src
        .sql(
            "SELECT (SELECT COUNT(*) FROM ledger.accounts) + (SELECT COUNT(*) FROM ledger.entries)",
        )
        .unwrap()
        .parse()
        .unwrap();
    let b = ok(&pitr(&["backup", &url, "--repo", &repo, "--json"]));
    let bj: serde_json::Value = serde_json::from_str(b.trim()).unwrap();
    assert_eq!(bj["rows"].as_u64().unwrap(), rows, "{b}");
    assert_eq!(bj["tables"].as_u64().unwrap(), 2, "{b}");
    let after_backup = mark(&src);

    burst(&src, 1);
    let m1 = mark(&src);
    // DDL inside the stream, then a binlog rotation.
    src.sql(
        "ALTER TABLE ledger.entries ADD COLUMN tag VARCHAR(8) NOT NULL DEFAULT 'new'; \
         CREATE TABLE ledger.audit (id INT PRIMARY KEY, what TEXT); \
         INSERT INTO ledger.audit VALUES (1, 'after ddl');",
    )
    .unwrap();
    burst(&src, 2);
    let m2 = mark(&src);
    src.sql("FLUSH BINARY LOGS").unwrap();
    burst(&src, 3);
    // One ~6 MB statement: applied as several BINLOG statements.
    let rows = match f {
        Flavor::MariaDb => "seq_1_to_300",
        Flavor::MySql => "(WITH RECURSIVE s (seq) AS (SELECT 1 UNION ALL SELECT seq + 1 FROM s WHERE seq < 300) SELECT seq FROM s) AS s",
    };
    src.sql(&format!(
        "CREATE TABLE ledger.blobs (id INT PRIMARY KEY, body MEDIUMTEXT); \
         INSERT INTO ledger.blobs SELECT seq, REPEAT(CHAR(65 + seq % 26), 20000) FROM {}",
        if f == Flavor::MariaDb {
            format!("ledger.{rows}")
        } else {
            rows.to_string()
        }
    ))
    .unwrap();
    src.sql("DROP TABLE ledger.audit").unwrap();
    let m3 = mark(&src);
    // Commits after the last time target put it inside the archived window.
    burst(&src, 4);
    let m4 = mark(&src);
    wait_archived(&repo, &url, &m4.position);
    drop(archiver);
    // status sees the backup, a window, and no hole across the rotation.
    let st = ok(&pitr(&["status", "--repo", &repo, "--json"]));
    let sj: serde_json::Value = serde_json::from_str(st.trim()).unwrap();
    let s0 = &sj["sources"][0];
    assert_eq!(s0["base_backups"], 1, "{st}");
    assert!(
        s0["window"]["start"].is_string() && s0["window"]["end"].is_string(),
        "{st}"
    );
    assert_eq!(s0["gaps"].as_array().map(|g| g.len()), Some(0), "{st}");
    // verify re-reads the MySQL backup's parts and every segment.
    let v = pitr(&["verify", "--repo", &repo]);
    assert!(v.status.success(), "verify: {}", ok(&v));
    assert_ne!(m1.ledger, m2.ledger);
    assert_ne!(m2.ledger, m3.ledger);

    // Time targets, including one right after the backup (nothing to apply).
    restore_and_check(
        f,
        &repo,
        "--to",
        &after_backup.time,
        &after_backup.ledger,
        "time after backup",
    );
    restore_and_check(f, &repo, "--to", &m1.time, &m1.ledger, "time m1");
    restore_and_check(
        f,
        &repo,
        "--to",
        &m2.time,
        &m2.ledger,
        "time m2 (after DDL)",
    );
    restore_and_check(
        f,
        &repo,
        "--to",
        &m3.time,
        &m3.ledger,
        "time m3 (next binlog file)",
    );
    // GTID and position targets.
    restore_and_check(f, &repo, "--to-gtid", &m2.gtid, &m2.ledger, "gtid m2");
    restore_and_check(f, &repo, "--to-gtid", &m1.gtid, &m1.ledger, "gtid m1");
    restore_and_check(
        f,
        &repo,
        "--to-position",
        &m1.position,
        &m1.ledger,
        "position m1",
    );
    restore_and_check(
        f,
        &repo,
        "--to-position",
        &m3.position,
        &m3.ledger,
        "position m3",
    );

    // The restored server carries the source's GTIDs.
    let target = MySqlServer::start(f).unwrap();
    ok(&restore_latest(&repo, &target.url(), &[]));
    same(&ledger(&target), &m4.ledger, "latest");
    assert_has_gtids(&target, &m4.gtid);
    // Views and triggers came back.
    assert_eq!(
        target.sql("SELECT COUNT(*) FROM ledger.totals").unwrap(),
        src.sql("SELECT COUNT(*) FROM ledger.totals").unwrap()
    );
    assert_eq!(
        target
            .sql("SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA='ledger'")
            .unwrap(),
        "1"
    );

    // A non-empty target is refused, unless --replace.
    let o = pitr(&[
        "restore",
        "--repo",
        &repo,
        "--to-gtid",
        &m1.gtid,
        "--target",
        &target.url(),
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--replace"),
        "{o:?}"
    );
    ok(&pitr(&[
        "restore",
        "--repo",
        &repo,
        "--to-gtid",
        &m1.gtid,
        "--target",
        &target.url(),
        "--replace",
    ]));
    same(&ledger(&target), &m1.ledger, "replace");

    // Outside the window: after the last archived commit, before the backup.
    let late = src
        .sql("SELECT DATE_FORMAT(UTC_TIMESTAMP() + INTERVAL 1 HOUR, '%Y-%m-%d %H:%i:%s')")
        .unwrap()
        + "Z";
    let o = pitr(&[
        "restore",
        "--repo",
        &repo,
        "--to",
        &late,
        "--target",
        &target.url(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("after the last archived commit"),
        "{err}"
    );
    let o = pitr(&[
        "restore",
        "--repo",
        &repo,
        "--to",
        &before_backup.time,
        "--target",
        &target.url(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("before the oldest base backup"),
        "{err}"
    );
    let unreachable = match f {
        Flavor::MariaDb => "0-1-999999".to_string(),
        Flavor::MySql => format!("{}:1-999999", src.sql("SELECT @@server_uuid").unwrap()),
    };
    let o = pitr(&[
        "restore",
        "--repo",
        &repo,
        "--to-gtid",
        &unreachable,
        "--target",
        &target.url(),
        "--replace",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("not reached"), "{err}");
}

/// Benchmark (ignored by default): replay `PITR_BENCH_MB` (default 500) MB of
/// row events with `pitr restore` and with `mariadb-binlog ... | mariadb`
/// into fresh servers; both must end with the source's table checksum.
/// Run: `cargo test --release -p pitr-integration --test mysql_restore bench -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_mariadb_binlog_replay() {
    require!(mysql::available(Flavor::MariaDb));
    let mb: u64 = std::env::var("PITR_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let src = MySqlServer::start(Flavor::MariaDb).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo").to_str().unwrap().to_string();
    let url = src.url();
    src.sql("CREATE DATABASE bench; CREATE TABLE bench.t (id INT AUTO_INCREMENT PRIMARY KEY, a INT NOT NULL, b VARCHAR(255), c VARCHAR(700))")
        .unwrap();
    let archiver = Archiver(
        Command::new(pitr_bin())
            .args(["archive", &url, "--repo", &repo])
            .stderr(std::fs::File::create(dir.path().join("archive.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let b = ok(&pitr(&["backup", &url, "--repo", &repo, "--json"]));
    let bj: serde_json::Value = serde_json::from_str(b.trim()).unwrap();
    let (bfile, bpos) = (
        bj["binlog_file"].as_str().unwrap().to_string(),
        bj["binlog_pos"].as_u64().unwrap(),
    );
    let binlog_bytes = |s: &MySqlServer| -> u64 {
        let logs = s.sql("SHOW BINARY LOGS").unwrap();
        logs.lines()
            .filter_map(|l| {
                let c: Vec<&str> = l.split('\t').collect();
                (c[0] >= bfile.as_str()).then(|| c[1].parse::<u64>().unwrap())
            })
            .sum::<u64>()
            - bpos
    };
    let t0 = Instant::now();
    let mut i = 0u64;
    while binlog_bytes(&src) < mb * 1_000_000 {
        let sql = if i % 5 == 4 {
            format!("UPDATE bench.t SET a = a + 1, b = CONCAT('u', {i}, b) WHERE id % 5 = {} AND id > {} LIMIT 2000", i % 5, i * 400)
        } else {
            "INSERT INTO bench.t (a, b, c) SELECT seq, REPEAT(CHAR(97 + seq % 26), 200), REPEAT('y', 700) FROM bench.seq_1_to_2000".to_string()
        };
        src.sql(&sql).unwrap();
        i += 1;
    }
    let bytes = binlog_bytes(&src);
    let generated = t0.elapsed();
    let m = mark(&src);
    wait_archived(&repo, &url, &m.position);
    drop(archiver);
    let want = src.sql("CHECKSUM TABLE bench.t").unwrap();
    let rows = src.sql("SELECT COUNT(*) FROM bench.t").unwrap();

    let a = MySqlServer::start(Flavor::MariaDb).unwrap();
    let t = Instant::now();
    ok(&restore_latest(&repo, &a.url(), &[]));
    let pitr_time = t.elapsed();
    assert_eq!(a.sql("CHECKSUM TABLE bench.t").unwrap(), want);

    let native = MySqlServer::start(Flavor::MariaDb).unwrap();
    native
        .sql("CREATE DATABASE bench; CREATE TABLE bench.t (id INT AUTO_INCREMENT PRIMARY KEY, a INT NOT NULL, b VARCHAR(255), c VARCHAR(700))")
        .unwrap();
    let files: Vec<String> = src
        .sql("SHOW BINARY LOGS")
        .unwrap()
        .lines()
        .map(|l| l.split('\t').next().unwrap().to_string())
        .filter(|f| f.as_str() >= bfile.as_str())
        .map(|f| src.binlog_dir().join(f).to_str().unwrap().to_string())
        .collect();
    let cmd = format!(
        "{} --no-defaults --start-position={bpos} {} | {} --no-defaults --socket={} -u root",
        src.bin("mariadb-binlog").display(),
        files.join(" "),
        src.bin("mariadb").display(),
        native.socket().display()
    );
    let t = Instant::now();
    let st = Command::new("sh").args(["-c", &cmd]).status().unwrap();
    let native_time = t.elapsed();
    assert!(st.success());
    assert_eq!(native.sql("CHECKSUM TABLE bench.t").unwrap(), want);
    let mbs = |d: Duration| bytes as f64 / 1e6 / d.as_secs_f64();
    println!(
        "BENCH mariadb binlog replay: {:.1} MB of binlog ({rows} rows, {i} statements, generated in {:.1} s): \
         pitr restore {:.1} s ({:.1} MB/s), mariadb-binlog | mariadb {:.1} s ({:.1} MB/s)",
        bytes as f64 / 1e6,
        generated.as_secs_f64(),
        pitr_time.as_secs_f64(),
        mbs(pitr_time),
        native_time.as_secs_f64(),
        mbs(native_time)
    );
}
