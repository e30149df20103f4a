//! Replication commands and WAL streaming against real PostgreSQL servers:
//! streamed bytes are compared with the server's own segment files and with
//! `pg_receivewal`; the WAL reader is checked against SQL ground truth
//! (`pg_xact_commit_timestamp`) and against `pg_waldump`.

// Test code: panicking on unexpected errors is the point.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pitr_integration::{pg, require, PgServer, PgVersion};
use pitr_postgres::lsn::{wal_file_name, WAL_PAGE_SIZE};
use pitr_postgres::{
    Config, Connection, ErrorKind, Lsn, RecordKind, ReplicationClient, ReplicationMessage,
    ReplicationStream, StartupMode, TimelineId, WalReader, WalRecord,
};
use pitr_segment::TimestampMicros;

const SEG: u64 = 16 * 1024 * 1024;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn cfg(url: &str) -> Config {
    Config::parse_with_env(url, |_| None).unwrap()
}

async fn sql(c: &mut Connection, q: &str) -> Vec<pitr_postgres::Row> {
    c.simple_query(q)
        .await
        .unwrap_or_else(|e| panic!("{q}: {e}"))
}

async fn one(c: &mut Connection, q: &str) -> String {
    sql(c, q).await[0].text(0).unwrap_or("").to_string()
}

/// Streams until `stop()` says so; collects bytes from `start` and feeds the reader.
struct Collected {
    bytes: Vec<u8>,
    records: Vec<WalRecord>,
}

async fn pump(
    stream: &mut ReplicationStream,
    start: Lsn,
    reader: &mut WalReader,
    into: &mut Collected,
) {
    let msg = tokio::time::timeout(Duration::from_secs(60), stream.next())
        .await
        .expect("no WAL for 60 s")
        .unwrap()
        .expect("stream ended");
    match msg {
        ReplicationMessage::XLogData {
            wal_start, data, ..
        } => {
            assert_eq!(
                wal_start.0,
                start.0 + into.bytes.len() as u64,
                "XLogData must be contiguous"
            );
            into.bytes.extend_from_slice(&data);
            reader.feed(&data, &mut into.records).unwrap();
        }
        ReplicationMessage::Keepalive {
            reply_requested, ..
        } => {
            if reply_requested {
                let r = stream.received();
                stream.send_status(r, r, Lsn::INVALID, false).await.unwrap();
            }
        }
        ReplicationMessage::EndOfTimeline { .. } => panic!("unexpected end of timeline"),
    }
}

fn wait_file(path: &Path, len: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) != len {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn stream_segment_identical(v: PgVersion) {
    let server = PgServer::start(v).unwrap();
    let rt = rt();
    let recv_dir = tempfile_dir("recv");
    rt.block_on(async {
        let mut sqlc = Connection::connect(&cfg(&server.url()), StartupMode::Normal)
            .await
            .unwrap();
        let mut c = ReplicationClient::connect(&cfg(&server.url_as("replicator", "replpass")))
            .await
            .unwrap();
        let id = c.identify_system().await.unwrap();
        assert_eq!(
            id.systemid,
            one(
                &mut sqlc,
                "SELECT system_identifier::text FROM pg_control_system()"
            )
            .await
        );
        assert_eq!(id.systemid_u64.to_string(), id.systemid);
        assert_eq!(id.timeline, TimelineId(1));
        assert!(id.dbname.is_none());
        assert_eq!(c.wal_segment_size().await.unwrap(), SEG);

        // Slots: create, read back, and a missing one.
        let consistent = c.create_physical_slot("pitr_test").await.unwrap();
        let slot = c.read_replication_slot("pitr_test").await.unwrap().unwrap();
        assert_eq!(slot.slot_type, "physical");
        assert!(slot.restart_lsn.is_some());
        assert_eq!(slot.restart_tli, Some(TimelineId(1)));
        if let Some(cp) = consistent {
            assert!(cp <= id.xlogpos.max(cp));
        }
        assert_eq!(c.read_replication_slot("no_such_slot").await.unwrap(), None);
        let e = c.drop_slot("no_such_slot").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Definite);
        assert_eq!(e.code(), Some("42704"));
        // The connection still works after a failed command.
        let start = c
            .identify_system()
            .await
            .unwrap()
            .xlogpos
            .segment_start(SEG);

        // pg_receivewal side by side, from the same segment.
        let name = wal_file_name(TimelineId(1), start, SEG);
        let _recv = KillOnDrop(
            Command::new(server.bin("pg_receivewal"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &server.port().to_string(),
                    "-U",
                    "postgres",
                    "-n",
                    "--no-sync",
                ])
                .arg("-D")
                .arg(&recv_dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        wait_file(&recv_dir.join(format!("{name}.partial")), SEG);

        let mut stream = c
            .start_physical(Some("pitr_test"), start, TimelineId(1))
            .await
            .unwrap();
        let mut reader = WalReader::new(start, SEG).unwrap();
        let mut got = Collected {
            bytes: Vec::new(),
            records: Vec::new(),
        };
        // Generate WAL while streaming, then finish the segment.
        sql(&mut sqlc, "CREATE TABLE s (a int, b text)").await;
        for i in 0..20 {
            sql(
                &mut sqlc,
                &format!(
                    "INSERT INTO s SELECT g, repeat('x', 200) FROM generate_series(1, {}) g",
                    100 * i
                ),
            )
            .await;
            pump(&mut stream, start, &mut reader, &mut got).await;
        }
        let switched: Lsn = one(&mut sqlc, "SELECT pg_switch_wal()::text")
            .await
            .parse()
            .unwrap();
        assert!(
            switched < start.plus(SEG),
            "the workload must stay within one segment"
        );
        while (got.bytes.len() as u64) < SEG {
            pump(&mut stream, start, &mut reader, &mut got).await;
        }
        let seg = &got.bytes[..SEG as usize];

        let server_file = std::fs::read(server.data_dir().join("pg_wal").join(&name)).unwrap();
        assert_eq!(server_file.len() as u64, SEG);
        assert!(
            seg == &server_file[..],
            "streamed segment differs from the server's pg_wal/{name}"
        );
        wait_file(&recv_dir.join(&name), SEG);
        let theirs = std::fs::read(recv_dir.join(&name)).unwrap();
        assert!(
            seg == &theirs[..],
            "streamed segment differs from pg_receivewal's {name}"
        );
        assert!(got
            .records
            .iter()
            .any(|r| r.kind == RecordKind::Switch && r.end_lsn == start.plus(SEG)));

        // Report durable progress, then shut down cleanly.
        let done = start.plus(SEG);
        stream
            .send_status(done, done, Lsn::INVALID, false)
            .await
            .unwrap();
        stream.send_copy_done().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while stream.next().await.unwrap().is_some() {
            assert!(Instant::now() < deadline);
        }
        let mut c = stream.into_client().unwrap();
        // Back in command mode: the slot shows our flush position.
        let restart: Lsn = one(
            &mut sqlc,
            "SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = 'pitr_test'",
        )
        .await
        .parse()
        .unwrap();
        assert_eq!(restart, done);
        c.drop_slot("pitr_test").await.unwrap();
        assert_eq!(c.read_replication_slot("pitr_test").await.unwrap(), None);
    });
    let _ = std::fs::remove_dir_all(&recv_dir);
}

fn tempfile_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "pitr-pgtest-{tag}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn stream_segment_identical_pg15() {
    require!(pg::available(PgVersion::V15));
    stream_segment_identical(PgVersion::V15);
}

#[test]
fn stream_segment_identical_pg18() {
    require!(pg::available(PgVersion::V18));
    stream_segment_identical(PgVersion::V18);
}

/// What the workload did, from SQL.
struct Truth {
    commits: BTreeMap<u32, i64>,
    aborted: u32,
    prepared_commit: u32,
    prepared_abort: u32,
    restore_point_end: Lsn,
    checkpoint: (Lsn, Lsn),
    before_us: i64,
    after_us: i64,
    end: Lsn,
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

async fn workload(mut c: Connection) -> Truth {
    let before_us = now_us();
    sql(&mut c, "CREATE TABLE t (a int, b text)").await;
    for i in 0..25 {
        sql(&mut c, &format!("INSERT INTO t VALUES ({i}, 'row {i}')")).await;
    }
    // A big transaction: spans many pages and full-page images.
    sql(
        &mut c,
        "INSERT INTO t SELECT g, repeat('y', 300) FROM generate_series(1000, 40000) g",
    )
    .await;
    sql(&mut c, "BEGIN").await;
    sql(&mut c, "INSERT INTO t VALUES (-1, 'aborted')").await;
    let aborted: u32 = one(&mut c, "SELECT pg_current_xact_id()::text")
        .await
        .parse()
        .unwrap();
    sql(&mut c, "ROLLBACK").await;
    // Two-phase: one committed, one rolled back.
    sql(&mut c, "BEGIN").await;
    sql(&mut c, "INSERT INTO t VALUES (-2, 'prepared')").await;
    sql(&mut c, "PREPARE TRANSACTION 'pitr_p1'").await;
    let prepared_commit: u32 = one(
        &mut c,
        "SELECT transaction::text FROM pg_prepared_xacts WHERE gid = 'pitr_p1'",
    )
    .await
    .parse()
    .unwrap();
    sql(&mut c, "BEGIN").await;
    sql(&mut c, "INSERT INTO t VALUES (-3, 'prepared, rolled back')").await;
    sql(&mut c, "PREPARE TRANSACTION 'pitr_p2'").await;
    let prepared_abort: u32 = one(
        &mut c,
        "SELECT transaction::text FROM pg_prepared_xacts WHERE gid = 'pitr_p2'",
    )
    .await
    .parse()
    .unwrap();
    sql(&mut c, "COMMIT PREPARED 'pitr_p1'").await;
    sql(&mut c, "ROLLBACK PREPARED 'pitr_p2'").await;
    let restore_point_end: Lsn = one(&mut c, "SELECT pg_create_restore_point('pitr_rp')::text")
        .await
        .parse()
        .unwrap();
    sql(&mut c, "CHECKPOINT").await;
    let cp = sql(
        &mut c,
        "SELECT checkpoint_lsn::text, redo_lsn::text FROM pg_control_checkpoint()",
    )
    .await;
    let checkpoint = (
        cp[0].text(0).unwrap().parse().unwrap(),
        cp[0].text(1).unwrap().parse().unwrap(),
    );
    sql(&mut c, "SELECT pg_switch_wal()").await;
    for i in 0..5 {
        sql(
            &mut c,
            &format!("INSERT INTO t VALUES ({}, 'after switch')", 100 + i),
        )
        .await;
    }
    let after_us = now_us();
    let mut commits = BTreeMap::new();
    for r in sql(
        &mut c,
        "SELECT DISTINCT xmin::text, (extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000000)::bigint::text FROM t",
    )
    .await
    {
        commits.insert(r.text(0).unwrap().parse().unwrap(), r.text(1).unwrap().parse().unwrap());
    }
    let end: Lsn = one(&mut c, "SELECT pg_current_wal_insert_lsn()::text")
        .await
        .parse()
        .unwrap();
    Truth {
        commits,
        aborted,
        prepared_commit,
        prepared_abort,
        restore_point_end,
        checkpoint,
        before_us,
        after_us,
        end,
    }
}

/// `pg_waldump` over WAL files in `dir`: (lsn, rmgr, xid, description) per record.
fn waldump(server: &PgServer, dir: &Path, start: Lsn, end: Lsn) -> Vec<(Lsn, String, u32, String)> {
    let out = Command::new(server.bin("pg_waldump"))
        .arg("-p")
        .arg(dir)
        .args(["-s", &start.to_string(), "-e", &end.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut v = Vec::new();
    for line in text.lines() {
        let field = |key: &str| {
            line.split(key).nth(1).map(|s| {
                s.trim_start()
                    .split([',', ' '])
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
        };
        let (Some(rmgr), Some(tx), Some(lsn)) = (field("rmgr: "), field("tx: "), field("lsn: "))
        else {
            continue;
        };
        let desc = line.split("desc: ").nth(1).unwrap_or("").to_string();
        v.push((lsn.parse().unwrap(), rmgr, tx.parse().unwrap(), desc));
    }
    assert!(
        !v.is_empty(),
        "pg_waldump printed nothing: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    v
}

fn wal_reader_ground_truth(v: PgVersion) {
    let mut server = PgServer::start(v).unwrap();
    server
        .psql("ALTER SYSTEM SET max_prepared_transactions = 5")
        .unwrap();
    server.restart().unwrap();
    let rt = rt();
    let wal_dir = tempfile_dir("wal");
    let (truth, records, start, bytes) = rt.block_on(async {
        let sqlc = Connection::connect(&cfg(&server.url()), StartupMode::Normal)
            .await
            .unwrap();
        let mut c = ReplicationClient::connect(&cfg(&server.url()))
            .await
            .unwrap();
        let id = c.identify_system().await.unwrap();
        let start = id.xlogpos.segment_start(SEG);
        c.create_physical_slot("pitr_reader").await.unwrap();
        let mut stream = c
            .start_physical(Some("pitr_reader"), start, id.timeline)
            .await
            .unwrap();
        let mut reader = WalReader::new(start, SEG).unwrap();
        let mut got = Collected {
            bytes: Vec::new(),
            records: Vec::new(),
        };
        // Stream while the workload runs.
        let mut work = Some(tokio::spawn(workload(sqlc)));
        let mut truth = None;
        loop {
            if let Some(t) = &truth {
                let t: &Truth = t;
                if start.plus(got.bytes.len() as u64) >= t.end {
                    break;
                }
            }
            match work.as_mut() {
                Some(w) => tokio::select! {
                    t = w => { truth = Some(t.unwrap()); work = None; }
                    _ = pump(&mut stream, start, &mut reader, &mut got) => {}
                },
                None => pump(&mut stream, start, &mut reader, &mut got).await,
            }
        }
        (truth.unwrap(), got.records, start, got.bytes)
    });

    // 1. Every committed transaction of the table, with its exact commit time (µs).
    let mut found: HashMap<u32, Vec<(TimestampMicros, bool)>> = HashMap::new();
    let mut aborts: HashMap<u32, (TimestampMicros, bool)> = HashMap::new();
    let mut prepares = Vec::new();
    for r in &records {
        match &r.kind {
            RecordKind::Commit(e) => found.entry(e.xid).or_default().push((e.time, e.prepared)),
            RecordKind::Abort(e) => {
                aborts.insert(e.xid, (e.time, e.prepared));
            }
            RecordKind::Prepare { xid, time, gid } => prepares.push((*xid, *time, gid.clone())),
            _ => {}
        }
    }
    assert!(truth.commits.len() >= 30, "{}", truth.commits.len());
    for (xid, us) in &truth.commits {
        let f = found
            .get(xid)
            .unwrap_or_else(|| panic!("commit of xid {xid} not found"));
        assert_eq!(f.len(), 1, "xid {xid} committed more than once");
        assert_eq!(f[0].0, TimestampMicros(*us), "commit time of xid {xid}");
        assert_eq!(
            f[0].1,
            *xid == truth.prepared_commit,
            "prepared flag of xid {xid}"
        );
    }
    // 2. The abort and the rolled-back prepared transaction.
    let (t, prepared) = aborts[&truth.aborted];
    assert!(!prepared && t.0 >= truth.before_us - 1_000_000 && t.0 <= truth.after_us + 1_000_000);
    assert!(aborts[&truth.prepared_abort].1);
    let gids: Vec<_> = prepares.iter().map(|p| (p.0, p.2.as_str())).collect();
    assert_eq!(
        gids,
        vec![
            (truth.prepared_commit, "pitr_p1"),
            (truth.prepared_abort, "pitr_p2")
        ]
    );
    // 3. Restore point (pg_create_restore_point returns the record's end), checkpoint, switch.
    let rp = records
        .iter()
        .find(|r| matches!(&r.kind, RecordKind::RestorePoint { name, .. } if name == "pitr_rp"))
        .unwrap();
    assert_eq!(rp.end_lsn, truth.restore_point_end);
    let cp = records
        .iter()
        .find(|r| r.lsn == truth.checkpoint.0)
        .expect("checkpoint record");
    match &cp.kind {
        RecordKind::Checkpoint {
            shutdown,
            redo,
            tli,
            ..
        } => {
            assert!(!shutdown);
            assert_eq!(*redo, truth.checkpoint.1);
            assert_eq!(*tli, TimelineId(1));
        }
        other => panic!("{other:?}"),
    }
    let sw = records
        .iter()
        .find(|r| r.kind == RecordKind::Switch)
        .expect("switch record");
    assert_eq!(sw.end_lsn.0 % SEG, 0);
    assert!(
        records.iter().any(|r| r.lsn > sw.lsn),
        "records after the switch are decoded"
    );

    // 4. pg_waldump over the streamed bytes (written out as segment files) sees the same records.
    let mut buf = bytes;
    buf.resize(buf.len().div_ceil(SEG as usize) * SEG as usize, 0);
    for (i, chunk) in buf.chunks(SEG as usize).enumerate() {
        let name = wal_file_name(TimelineId(1), start.plus(i as u64 * SEG), SEG);
        std::fs::write(wal_dir.join(name), chunk).unwrap();
    }
    let first = records[0].lsn;
    let end = records.last().unwrap().end_lsn;
    let dump = waldump(&server, &wal_dir, first, end);
    let ours: Vec<Lsn> = records.iter().map(|r| r.lsn).collect();
    let theirs: Vec<Lsn> = dump.iter().map(|d| d.0).collect();
    assert_eq!(
        ours.len(),
        theirs.len(),
        "record count differs from pg_waldump"
    );
    assert_eq!(ours, theirs);
    assert!(
        ours.len() > 10_000,
        "the stream must cover real WAL ({} records)",
        ours.len()
    );
    for (r, d) in records.iter().zip(&dump) {
        assert_eq!(r.xid, d.2, "xid at {}", r.lsn);
        let is_commit = d.1 == "Transaction"
            && (d.3.starts_with("COMMIT") || d.3.starts_with("COMMIT_PREPARED"));
        assert_eq!(
            matches!(r.kind, RecordKind::Commit(_)),
            is_commit,
            "commit at {}: {}",
            r.lsn,
            d.3
        );
        let is_abort = d.1 == "Transaction" && d.3.starts_with("ABORT");
        assert_eq!(
            matches!(r.kind, RecordKind::Abort(_)),
            is_abort,
            "abort at {}: {}",
            r.lsn,
            d.3
        );
    }
    assert!(records
        .iter()
        .all(|r| r.end_lsn.0 % 8 == 0 && r.end_lsn > r.lsn));
    assert!(start.0 % WAL_PAGE_SIZE == 0);
    let _ = std::fs::remove_dir_all(&wal_dir);
}

#[test]
fn wal_reader_ground_truth_pg15() {
    require!(pg::available(PgVersion::V15));
    wal_reader_ground_truth(PgVersion::V15);
}

#[test]
fn wal_reader_ground_truth_pg18() {
    require!(pg::available(PgVersion::V18));
    wal_reader_ground_truth(PgVersion::V18);
}

fn timeline_switch(v: PgVersion) {
    let primary = PgServer::start(v).unwrap();
    primary
        .psql("CREATE TABLE tl (a int); INSERT INTO tl VALUES (1)")
        .unwrap();
    let standby = primary.start_standby().unwrap();
    standby.promote().unwrap();
    rt().block_on(async {
        let mut c = ReplicationClient::connect(&cfg(&standby.url()))
            .await
            .unwrap();
        let id = c.identify_system().await.unwrap();
        assert_eq!(id.timeline, TimelineId(2));
        let (name, content) = c.timeline_history(TimelineId(2)).await.unwrap();
        assert_eq!(name, "00000002.history");
        let on_disk = std::fs::read(standby.data_dir().join("pg_wal").join(&name)).unwrap();
        assert_eq!(
            &content[..],
            &on_disk[..],
            "history content is passed through unchanged"
        );
        let hist =
            pitr_postgres::lsn::parse_history(std::str::from_utf8(&content).unwrap()).unwrap();
        assert_eq!(hist.len(), 1);
        assert_eq!(hist[0].tli, TimelineId(1));
        let switch = hist[0].switch_lsn;

        // Stream the old timeline: it ends at the switch point with EndOfTimeline.
        let start = switch.segment_start(SEG);
        let mut stream = c.start_physical(None, start, TimelineId(1)).await.unwrap();
        let mut received = start;
        let end = loop {
            let m = tokio::time::timeout(Duration::from_secs(30), stream.next())
                .await
                .unwrap()
                .unwrap();
            match m.expect("stream ended without EndOfTimeline") {
                ReplicationMessage::XLogData {
                    wal_start, data, ..
                } => {
                    assert_eq!(wal_start, received);
                    received = received.plus(data.len() as u64);
                }
                ReplicationMessage::Keepalive { .. } => {}
                ReplicationMessage::EndOfTimeline {
                    next_tli,
                    next_tli_start,
                } => break (next_tli, next_tli_start),
            }
        };
        assert_eq!(end, (TimelineId(2), switch));
        assert!(
            received >= switch,
            "all WAL up to the switch was sent ({received} < {switch})"
        );
        assert!(stream.next().await.unwrap().is_none());

        // The same connection continues on the new timeline.
        let mut c = stream.into_client().unwrap();
        assert_eq!(c.identify_system().await.unwrap().timeline, TimelineId(2));
        let mut stream = c
            .start_physical(None, switch.segment_start(SEG), TimelineId(2))
            .await
            .unwrap();
        match tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .unwrap()
            .unwrap()
        {
            Some(ReplicationMessage::XLogData { wal_start, .. }) => {
                assert_eq!(wal_start, switch.segment_start(SEG))
            }
            other => panic!("expected WAL on timeline 2, got {other:?}"),
        }
    });
}

#[test]
fn timeline_switch_pg15() {
    require!(pg::available(PgVersion::V15));
    timeline_switch(PgVersion::V15);
}

#[test]
fn timeline_switch_pg18() {
    require!(pg::available(PgVersion::V18));
    timeline_switch(PgVersion::V18);
}

fn removed_wal_is_reported(v: PgVersion) {
    let server = PgServer::start(v).unwrap();
    // Move far enough past wal_keep_size (64MB) that the first segments are removed.
    for i in 0..7 {
        server
            .psql(&format!(
                "CREATE TABLE r{i} (a int); SELECT pg_switch_wal()"
            ))
            .unwrap();
    }
    server.psql("CHECKPOINT").unwrap();
    server.psql("CHECKPOINT").unwrap();
    let first = wal_file_name(TimelineId(1), Lsn(SEG), SEG);
    assert!(
        !server.data_dir().join("pg_wal").join(&first).exists(),
        "{first} should have been removed"
    );
    rt().block_on(async {
        let c = ReplicationClient::connect(&cfg(&server.url()))
            .await
            .unwrap();
        // The server reports it either before or just after entering COPY mode.
        let e = match c.start_physical(None, Lsn(SEG), TimelineId(1)).await {
            Err(e) => e,
            Ok(mut stream) => stream.next().await.unwrap_err(),
        };
        assert_eq!(e.kind(), ErrorKind::WalRemoved, "{e}");
        assert_eq!(e.lsn(), Some(Lsn(SEG)));
        let msg = e.to_string();
        assert!(
            msg.contains(&first) && msg.contains("WAL position 0/1000000"),
            "{msg}"
        );
        assert!(msg.contains("base backup"), "{msg}");
    });
}

#[test]
fn removed_wal_is_reported_pg15() {
    require!(pg::available(PgVersion::V15));
    removed_wal_is_reported(PgVersion::V15);
}

#[test]
fn removed_wal_is_reported_pg18() {
    require!(pg::available(PgVersion::V18));
    removed_wal_is_reported(PgVersion::V18);
}
