//! Binlog client against real MariaDB and MySQL servers started by the
//! integration harness: byte-identical file rebuild, native tool as oracle,
//! GTID and file-position resume, rotations, commit times, and error kinds.
//! A flavour that is not installed is skipped (recorded by `require!`).

// Test helpers outside #[test] fns: panicking on failure is the point.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pitr_integration::{require, Flavor as HFlavor, MySqlServer};
use pitr_mysql::{
    rebuild_files, BinlogClient, BinlogFile, BinlogPos, ClientOptions, ErrorKind, EventData, Gtid,
    MariaGtidPos, MysqlGtidSet, RawEvent, ServerId, StartFrom, TxnBoundary, TxnTracker,
};

static NEXT_ID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A replica server id unique in this process and distinct from the server's.
fn replica_id(server: &MySqlServer) -> ServerId {
    let n = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    ServerId(server.server_id().wrapping_add(10_000 + n))
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn opts(server: &MySqlServer) -> ClientOptions {
    let mut o = ClientOptions::new(replica_id(server));
    o.heartbeat = Duration::from_millis(500);
    o.read_timeout = Duration::from_secs(10);
    o
}

/// The server's binlog files and sizes.
fn binlogs(server: &MySqlServer) -> Vec<(String, u64)> {
    server
        .sql("SHOW BINARY LOGS")
        .unwrap()
        .lines()
        .map(|l| {
            let mut f = l.split('\t');
            let name = f.next().unwrap().to_string();
            let size = f.next().unwrap().parse().unwrap();
            (name, size)
        })
        .collect()
}

/// The GTID of the last transaction of a one-statement session.
fn run_txn(server: &MySqlServer, sql: &str) -> String {
    match server.flavor() {
        HFlavor::MariaDb => server.sql(&format!("{sql}; SELECT @@last_gtid")).unwrap(),
        HFlavor::MySql => {
            let before: MysqlGtidSet = server
                .sql("SELECT @@global.gtid_executed")
                .unwrap()
                .parse()
                .unwrap();
            server.sql(sql).unwrap();
            let after: MysqlGtidSet = server
                .sql("SELECT @@global.gtid_executed")
                .unwrap()
                .parse()
                .unwrap();
            // Exactly one new GTID: the uuid whose interval grew by one.
            let mut diff = None;
            for (uuid, ivs) in after.iter() {
                for &(_, end) in ivs {
                    let g = pitr_mysql::MysqlGtid {
                        sid: *uuid,
                        gno: end,
                    };
                    if !before.contains(&g) {
                        diff = Some(g.to_string());
                    }
                }
            }
            diff.expect("the statement produced a GTID")
        }
    }
}

/// Streams until the client reached `end` (file, offset), returning all events.
async fn stream_until(client: &mut BinlogClient, end: &BinlogPos) -> Vec<RawEvent> {
    let mut out = Vec::new();
    loop {
        let ev = client
            .next_event()
            .await
            .unwrap()
            .expect("stream ended early");
        let done = !ev.artificial && ev.next_pos == *end;
        out.push(ev);
        if done {
            return out;
        }
    }
}

fn end_of_log(server: &MySqlServer) -> BinlogPos {
    let (f, size) = binlogs(server).pop().unwrap();
    BinlogPos::new(f, size)
}

fn boundaries(events: &[RawEvent]) -> Vec<TxnBoundary> {
    let mut t = TxnTracker::new();
    events.iter().filter_map(|e| t.feed(e).unwrap()).collect()
}

fn scratch_dir(server: &MySqlServer) -> PathBuf {
    // Inside the server's directory, so MySQL's chrooted tools can read it too.
    let d = server.binlog_dir().parent().unwrap().join("rebuilt");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn setup_schema(server: &MySqlServer) {
    server
        .sql("CREATE DATABASE shop; CREATE TABLE shop.orders (id INT PRIMARY KEY, note VARCHAR(40)) ENGINE=InnoDB")
        .unwrap();
}

fn stream_rebuild_compare(flavor: HFlavor) {
    let server = MySqlServer::start(flavor).unwrap();
    setup_schema(&server);
    // Several transactions, each with its wall-clock window, and rotations between them.
    let mut inserts = Vec::new();
    for i in 0..6 {
        if i == 2 || i == 4 {
            server.sql("FLUSH BINARY LOGS").unwrap();
        }
        let before = now_micros();
        let gtid = run_txn(
            &server,
            &format!(
                "INSERT INTO shop.orders VALUES ({i}, 'row {i}'), ({}, 'x')",
                i + 100
            ),
        );
        let after = now_micros();
        inserts.push((gtid, before, after));
        std::thread::sleep(Duration::from_millis(30));
    }
    // A multi-statement transaction.
    let before = now_micros();
    let gtid = run_txn(
        &server,
        "BEGIN; UPDATE shop.orders SET note='upd' WHERE id=1; DELETE FROM shop.orders WHERE id=2; COMMIT",
    );
    inserts.push((gtid, before, now_micros()));
    if flavor == HFlavor::MySql {
        // A compressed transaction travels as one TRANSACTION_PAYLOAD event.
        let before = now_micros();
        let gtid = run_txn(
            &server,
            "SET SESSION binlog_transaction_compression=ON; INSERT INTO shop.orders VALUES (50, 'zstd'), (51, 'zstd')",
        );
        inserts.push((gtid, before, now_micros()));
    }
    server.sql("FLUSH BINARY LOGS").unwrap();
    let end = end_of_log(&server);

    let events = rt().block_on(async {
        let mut c = BinlogClient::connect_with(&server.url(), opts(&server), StartFrom::Beginning)
            .await
            .unwrap();
        assert_eq!(
            c.identity().flavor,
            match flavor {
                HFlavor::MariaDb => pitr_mysql::Flavor::MariaDb,
                HFlavor::MySql => pitr_mysql::Flavor::MySql,
            }
        );
        assert_eq!(c.identity().server_id.0, server.server_id());
        assert_eq!(c.identity().binlog_checksum, "CRC32");
        if flavor == HFlavor::MySql {
            assert!(c.identity().server_uuid.is_some());
            assert_eq!(c.identity().gtid_mode.as_deref(), Some("ON"));
        }
        let evs = stream_until(&mut c, &end).await;
        // Idle: the server sends heartbeats (artificial, position unchanged).
        // MariaDB may first append its asynchronous BINLOG_CHECKPOINT.
        let hb = loop {
            let e = c.next_event().await.unwrap().unwrap();
            if e.is_heartbeat() {
                break e;
            }
            assert!(
                !e.artificial && e.next_pos.offset > end.offset,
                "{:?}",
                e.header
            );
        };
        assert!(hb.artificial);
        assert_eq!(&hb.next_pos, c.position());
        assert_eq!(hb.next_pos.file, end.file);
        c.close().await;
        evs
    });
    if flavor == HFlavor::MySql {
        assert!(events
            .iter()
            .any(|e| matches!(e.decode(), Ok(EventData::TransactionPayload))));
    }

    // Every event decodes; artificial ones are marked.
    let mut artificial_rotates = 0;
    for e in &events {
        let d = e
            .decode()
            .unwrap_or_else(|err| panic!("{err} at {}", e.next_pos));
        if matches!(d, EventData::Rotate { .. }) && e.artificial {
            artificial_rotates += 1;
        }
        if let EventData::Other(t) = d {
            assert!(
                ![2u8, 4, 15, 16, 33, 162].contains(&t),
                "known type {t} undecoded"
            );
        }
    }
    assert!(artificial_rotates >= 1);

    // Rotations: the rebuilt files are exactly the server's files, byte for byte.
    let files = rebuild_files(&events).unwrap();
    let server_files = binlogs(&server);
    assert_eq!(
        files
            .iter()
            .map(|(f, _)| f.as_str().to_string())
            .collect::<Vec<_>>(),
        server_files
            .iter()
            .map(|(f, _)| f.clone())
            .collect::<Vec<_>>()
    );
    assert!(files.len() >= 4, "three FLUSHes: {} files", files.len());
    let last = files.len() - 1;
    for (i, (name, bytes)) in files.iter().enumerate() {
        let mut disk = std::fs::read(server.binlog_dir().join(name.as_str())).unwrap();
        if i == last {
            // The open file's FORMAT_DESCRIPTION still has LOG_EVENT_BINLOG_IN_USE_F,
            // and the server may have appended to it since we stopped streaming
            // (MariaDB writes its BINLOG_CHECKPOINT asynchronously after FLUSH).
            assert_eq!(disk[4 + 17] & 1, 1);
            disk[4 + 17] &= !1;
            assert!(disk.len() >= bytes.len(), "{name} shrank");
            disk.truncate(bytes.len());
        }
        assert_eq!(bytes.len(), disk.len(), "size of {name}");
        assert!(*bytes == disk, "{name} differs from the server's file");
    }

    // The native tool reads the rebuilt files and sees the transactions' GTIDs.
    let dir = scratch_dir(&server);
    let tool = match flavor {
        HFlavor::MariaDb => server.bin("mariadb-binlog"),
        HFlavor::MySql => server.bin("mysqlbinlog"),
    };
    let mut tool_output = String::new();
    for (name, bytes) in &files {
        let p = dir.join(name.as_str());
        std::fs::write(&p, bytes).unwrap();
        let out = std::process::Command::new(&tool).arg(&p).output().unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            name,
            String::from_utf8_lossy(&out.stderr)
        );
        tool_output.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    for (gtid, _, _) in &inserts {
        let needle = match flavor {
            HFlavor::MariaDb => format!("GTID {gtid}"),
            HFlavor::MySql => format!("'{gtid}'"),
        };
        assert!(tool_output.contains(&needle), "tool output lacks {needle}");
    }

    // Transaction boundaries: exactly the server's GTIDs, commit times inside the windows.
    let b = boundaries(&events);
    let seen: Vec<String> = b.iter().map(|b| b.gtid.unwrap().to_string()).collect();
    assert_eq!(
        seen.iter().collect::<BTreeSet<_>>().len(),
        seen.len(),
        "duplicates"
    );
    match flavor {
        HFlavor::MariaDb => {
            let last: String = server.sql("SELECT @@global.gtid_binlog_pos").unwrap();
            let seqs: Vec<u64> = b
                .iter()
                .map(|b| match b.gtid {
                    Some(Gtid::MariaDb(g)) => g.seq,
                    other => panic!("{other:?}"),
                })
                .collect();
            assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
            assert_eq!(seen.last().unwrap(), &last);
        }
        HFlavor::MySql => {
            let executed: MysqlGtidSet = server
                .sql("SELECT @@global.gtid_executed")
                .unwrap()
                .parse()
                .unwrap();
            let mut ours = MysqlGtidSet::new();
            for x in &b {
                let Some(Gtid::MySql(g)) = x.gtid else {
                    panic!()
                };
                ours.add(g);
            }
            assert_eq!(ours, executed);
        }
    }
    for (gtid, before, after) in &inserts {
        let x = b
            .iter()
            .find(|x| x.gtid.unwrap().to_string() == *gtid)
            .unwrap();
        let (lo, hi) = match flavor {
            // MariaDB records whole seconds.
            HFlavor::MariaDb => (before / 1_000_000 * 1_000_000, *after),
            HFlavor::MySql => (*before, *after),
        };
        assert!(
            lo <= x.commit_time.0 && x.commit_time.0 <= hi,
            "{gtid}: commit {} outside [{lo}, {hi}]",
            x.commit_time.0
        );
        let start = x.start_pos.clone().unwrap();
        assert_eq!(start.file, x.end_pos.file);
        assert!(start.offset < x.end_pos.offset);
    }
}

#[test]
fn mariadb_stream_rebuild_compare() {
    require!(pitr_integration::mysql::available(HFlavor::MariaDb));
    stream_rebuild_compare(HFlavor::MariaDb);
}

#[test]
fn mysql_stream_rebuild_compare() {
    require!(pitr_integration::mysql::available(HFlavor::MySql));
    stream_rebuild_compare(HFlavor::MySql);
}

/// Streams from `start` until `end`, returning the transactions' GTIDs.
fn gtids_from(server: &MySqlServer, start: StartFrom, end: &BinlogPos) -> Vec<String> {
    rt().block_on(async {
        let mut c = BinlogClient::connect_with(&server.url(), opts(server), start)
            .await
            .unwrap();
        let evs = stream_until(&mut c, end).await;
        c.close().await;
        boundaries(&evs)
            .iter()
            .map(|b| b.gtid.unwrap().to_string())
            .collect()
    })
}

fn resume(flavor: HFlavor) {
    let server = MySqlServer::start(flavor).unwrap();
    setup_schema(&server);
    for i in 0..3 {
        run_txn(
            &server,
            &format!("INSERT INTO shop.orders VALUES ({i}, 'a')"),
        );
    }
    server.sql("FLUSH BINARY LOGS").unwrap();
    for i in 3..6 {
        run_txn(
            &server,
            &format!("INSERT INTO shop.orders VALUES ({i}, 'b')"),
        );
    }
    let end = end_of_log(&server);
    let all = gtids_from(&server, StartFrom::Beginning, &end);
    assert!(all.len() >= 8, "{all:?}");

    // Stop after transaction k (in the first file) and after k2 (in the second).
    for k in [3usize, all.len() - 2] {
        let (start_gtid, start_pos) = rt().block_on(async {
            let mut c =
                BinlogClient::connect_with(&server.url(), opts(&server), StartFrom::Beginning)
                    .await
                    .unwrap();
            let mut t = TxnTracker::new();
            let mut maria = MariaGtidPos::new();
            let mut mysql = MysqlGtidSet::new();
            let mut n = 0;
            let mut last_end = None;
            while n < k {
                let ev = c.next_event().await.unwrap().unwrap();
                if let Some(b) = t.feed(&ev).unwrap() {
                    match b.gtid.unwrap() {
                        Gtid::MariaDb(g) => maria.update(g),
                        Gtid::MySql(g) => mysql.add(g),
                    }
                    last_end = Some(b.end_pos);
                    n += 1;
                }
            }
            c.close().await;
            let g = match flavor {
                HFlavor::MariaDb => StartFrom::MariaGtid(maria),
                HFlavor::MySql => StartFrom::MysqlGtid(mysql),
            };
            (g, last_end.unwrap())
        });
        let by_gtid = gtids_from(&server, start_gtid, &end);
        assert_eq!(by_gtid, all[k..].to_vec(), "GTID resume after {k}");
        let by_pos = gtids_from(&server, StartFrom::Position(start_pos), &end);
        assert_eq!(by_pos, all[k..].to_vec(), "position resume after {k}");
    }
}

#[test]
fn mariadb_resume() {
    require!(pitr_integration::mysql::available(HFlavor::MariaDb));
    resume(HFlavor::MariaDb);
}

#[test]
fn mysql_resume() {
    require!(pitr_integration::mysql::available(HFlavor::MySql));
    resume(HFlavor::MySql);
}

fn errors(flavor: HFlavor) {
    let mut server = MySqlServer::start(flavor).unwrap();
    setup_schema(&server);
    let rt = rt();

    let url = server.url_as("pitr", "Wr0ngSecret");
    let e = rt
        .block_on(BinlogClient::connect_with(
            &url,
            opts(&server),
            StartFrom::Beginning,
        ))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AccessDenied, "{e}");
    assert!(!e.is_transient());
    assert!(!e.to_string().contains("Wr0ngSecret"), "{e}");
    assert!(e.to_string().contains("password"), "{e}");

    let url = server.url_as("noreplic", "noreplpass");
    let e = rt
        .block_on(BinlogClient::connect_with(
            &url,
            opts(&server),
            StartFrom::Beginning,
        ))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::MissingPrivilege, "{e}");
    assert!(e.to_string().contains("REPLICATION SLAVE"), "{e}");

    // Purge the first files, then ask for them by position and by GTID.
    let first = binlogs(&server)[0].0.clone();
    run_txn(&server, "INSERT INTO shop.orders VALUES (1, 'a')");
    server.sql("FLUSH BINARY LOGS").unwrap();
    run_txn(&server, "INSERT INTO shop.orders VALUES (2, 'a')");
    server.sql("FLUSH BINARY LOGS").unwrap();
    let keep = binlogs(&server).last().unwrap().0.clone();
    // MariaDB keeps a file until its binlog checkpoint is written: retry a little.
    for _ in 0..50 {
        server
            .sql(&format!("PURGE BINARY LOGS TO '{keep}'"))
            .unwrap();
        if binlogs(&server).len() == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(binlogs(&server).len(), 1);

    let at = StartFrom::Position(BinlogPos::new(first.clone(), 4));
    let e = rt
        .block_on(BinlogClient::connect_with(
            &server.url(),
            opts(&server),
            at.clone(),
        ))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BinlogPurged, "{e}");
    assert_eq!(e.position(), Some(&at));
    assert!(e.to_string().contains(&first), "{e}");

    let gtid_start = match flavor {
        HFlavor::MariaDb => {
            StartFrom::MariaGtid(format!("0-{}-1", server.server_id()).parse().unwrap())
        }
        HFlavor::MySql => StartFrom::MysqlGtid(MysqlGtidSet::new()),
    };
    let e = rt
        .block_on(async {
            let mut c =
                BinlogClient::connect_with(&server.url(), opts(&server), gtid_start).await?;
            // The server reports the purge on the first read.
            loop {
                if c.next_event().await?.is_none() {
                    return Ok::<(), pitr_mysql::MysqlError>(());
                }
            }
        })
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BinlogPurged, "{e}");

    // A position in a file that never existed.
    let bogus = BinlogFile::new(keep.clone()).with_sequence(999).unwrap();
    let e = rt
        .block_on(BinlogClient::connect_with(
            &server.url(),
            opts(&server),
            StartFrom::Position(BinlogPos::start_of(bogus)),
        ))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnknownPosition, "{e}");

    // A server restart mid-stream is transient (or a clean end of stream).
    let mut c = rt
        .block_on(BinlogClient::connect_with(
            &server.url(),
            opts(&server),
            StartFrom::Position(BinlogPos::start_of(BinlogFile::new(keep.clone()))),
        ))
        .unwrap();
    let ev = rt.block_on(c.next_event()).unwrap().unwrap();
    assert!(ev.artificial);
    server.restart().unwrap();
    let outcome = rt.block_on(async {
        loop {
            match c.next_event().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(e) => return Some(e),
            }
        }
    });
    if let Some(e) = outcome {
        assert!(e.is_transient(), "{e}");
    }
    // And the stream resumes after the restart.
    let end = end_of_log(&server);
    let again = rt.block_on(async {
        let mut c = BinlogClient::connect_with(
            &server.url(),
            opts(&server),
            StartFrom::Position(BinlogPos::start_of(BinlogFile::new(keep.clone()))),
        )
        .await
        .unwrap();
        stream_until(&mut c, &end).await
    });
    assert!(again.iter().any(|e| !e.artificial));
}

#[test]
fn mariadb_errors() {
    require!(pitr_integration::mysql::available(HFlavor::MariaDb));
    errors(HFlavor::MariaDb);
}

#[test]
fn mysql_errors() {
    require!(pitr_integration::mysql::available(HFlavor::MySql));
    errors(HFlavor::MySql);
}
