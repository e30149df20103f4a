//! Smoke tests of the PostgreSQL harness (15 and 18): the servers start replication-ready
//! with the documented roles and settings, a standby streams and can be promoted, and a
//! dropped handle really stops its server.

use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use pitr_integration::{pg, require, PgServer, PgVersion};

/// Runs a replication-protocol command through psql (`replication=true`) as `user`.
fn replication_command(
    server: &PgServer,
    user: &str,
    password: &str,
    cmd: &str,
) -> Result<String, String> {
    let out = Command::new(server.bin("psql"))
        .arg("-XAt")
        .arg(format!(
            "host=127.0.0.1 port={} user={user} dbname=postgres replication=true",
            server.port()
        ))
        .args(["-c", cmd])
        .env("PGPASSWORD", password)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// (systemid, timeline) from IDENTIFY_SYSTEM.
fn identify_system(server: &PgServer, user: &str, password: &str) -> (String, u32) {
    let row = replication_command(server, user, password, "IDENTIFY_SYSTEM").unwrap();
    let fields: Vec<&str> = row.split('|').collect();
    assert_eq!(fields.len(), 4, "IDENTIFY_SYSTEM row: {row}");
    (fields[0].to_string(), fields[1].parse().unwrap())
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn server_is_ready(v: PgVersion) {
    let server = PgServer::start(v).unwrap();
    let version_num: u32 = server
        .psql("SHOW server_version_num")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        version_num / 10000,
        v.major(),
        "server_version_num {version_num}"
    );

    let (systemid, timeline) = identify_system(&server, "postgres", "");
    let control = server
        .psql("SELECT system_identifier FROM pg_control_system()")
        .unwrap();
    assert_eq!(systemid, control);
    assert_eq!(timeline, 1);

    for (setting, want) in [
        ("wal_level", "logical"),
        ("track_commit_timestamp", "on"),
        ("listen_addresses", "127.0.0.1"),
        ("max_wal_senders", "10"),
        ("max_replication_slots", "10"),
    ] {
        assert_eq!(
            server.psql(&format!("SHOW {setting}")).unwrap(),
            want,
            "{setting}"
        );
    }
    assert_eq!(server.psql("SHOW port").unwrap(), server.port().to_string());

    // SCRAM and md5 replication roles can open replication connections with their passwords.
    assert_eq!(
        identify_system(&server, "replicator", "replpass").0,
        systemid
    );
    assert_eq!(identify_system(&server, "md5user", "md5pass").0, systemid);
    let err = replication_command(&server, "replicator", "wrong", "IDENTIFY_SYSTEM").unwrap_err();
    assert!(err.contains("password authentication failed"), "{err}");
    // plainuser may log in but not replicate.
    let err =
        replication_command(&server, "plainuser", "plainpass", "IDENTIFY_SYSTEM").unwrap_err();
    assert!(err.to_lowercase().contains("replication"), "{err}");
    let hashes = server
        .psql(
            "SELECT rolname || ':' || substring(rolpassword from '^(md5|SCRAM)') FROM pg_authid \
             WHERE rolname IN ('replicator', 'md5user') ORDER BY rolname",
        )
        .unwrap();
    assert_eq!(hashes, "md5user:md5\nreplicator:SCRAM");

    // Commit timestamps are tracked (the ground truth for restore tests).
    // (One psql call is one implicit transaction: commit first, then look.)
    server
        .psql("CREATE TABLE t(x int); INSERT INTO t VALUES (1)")
        .unwrap();
    let ts = server
        .psql("SELECT pg_xact_commit_timestamp(xmin) IS NOT NULL FROM t")
        .unwrap();
    assert_eq!(ts, "t");

    assert!(server
        .url()
        .ends_with(&format!("@127.0.0.1:{}/postgres", server.port())));
    assert!(server.bin("pg_receivewal").exists());
    assert!(server.data_dir().join("PG_VERSION").exists());
}

fn standby_streams_and_promotes(v: PgVersion) {
    let primary = PgServer::start(v).unwrap();
    primary
        .psql("CREATE TABLE t(x int); INSERT INTO t VALUES (1)")
        .unwrap();
    let standby = primary.start_standby().unwrap();
    assert_ne!(standby.port(), primary.port());
    assert_eq!(standby.psql("SELECT pg_is_in_recovery()").unwrap(), "t");
    assert_eq!(standby.psql("SELECT count(*) FROM t").unwrap(), "1");
    let streaming = primary
        .psql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
        .unwrap();
    assert_eq!(streaming, "1");

    primary.psql("INSERT INTO t VALUES (2)").unwrap();
    wait_for("the insert to reach the standby", || {
        standby.psql("SELECT count(*) FROM t").unwrap() == "2"
    });

    standby.promote().unwrap();
    assert_eq!(standby.psql("SELECT pg_is_in_recovery()").unwrap(), "f");
    standby.psql("INSERT INTO t VALUES (3)").unwrap();
    let (sys_primary, _) = identify_system(&primary, "postgres", "");
    let (sys_standby, timeline) = identify_system(&standby, "postgres", "");
    assert_eq!(
        sys_standby, sys_primary,
        "a standby keeps the system identifier"
    );
    assert_eq!(timeline, 2, "promotion starts timeline 2");
    let history = replication_command(&standby, "postgres", "", "TIMELINE_HISTORY 2").unwrap();
    assert!(history.contains("00000002.history"), "{history}");
}

fn drop_stops_server(v: PgVersion) {
    let mut server = PgServer::start(v).unwrap();
    let port = server.port();
    let data = server.data_dir().to_path_buf();
    let pid_file = data.join("postmaster.pid");
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(Path::new(&format!("/proc/{pid}")).exists());

    server.restart().unwrap();
    assert_eq!(server.psql("SELECT 1").unwrap(), "1");
    assert_eq!(server.port(), port);
    let pid2: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(pid, pid2, "restart runs a new postmaster");

    drop(server);
    assert!(
        !Path::new(&format!("/proc/{pid2}")).exists(),
        "postmaster still running after drop"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port {port} still accepts"
    );
    assert!(!data.exists(), "temp dir not removed after a passing test");
}

#[test]
fn pg15_server_is_ready() {
    require!(pg::available(PgVersion::V15));
    server_is_ready(PgVersion::V15);
}

#[test]
fn pg18_server_is_ready() {
    require!(pg::available(PgVersion::V18));
    server_is_ready(PgVersion::V18);
}

#[test]
fn pg15_standby_streams_and_promotes() {
    require!(pg::available(PgVersion::V15));
    standby_streams_and_promotes(PgVersion::V15);
}

#[test]
fn pg18_standby_streams_and_promotes() {
    require!(pg::available(PgVersion::V18));
    standby_streams_and_promotes(PgVersion::V18);
}

#[test]
fn pg15_drop_stops_server() {
    require!(pg::available(PgVersion::V15));
    drop_stops_server(PgVersion::V15);
}
