//! Unit tests of the event decoders on hand-built events whose layouts follow
//! the server sources (`log_event.h`, `binlog_event.h`).

use super::*;

/// Builds an event with a correct header (and CRC32 when `crc`).
pub(crate) fn build(
    t: u8,
    server_id: u32,
    log_pos: u32,
    flags: u16,
    body: &[u8],
    crc: bool,
) -> Vec<u8> {
    let size = HEADER_LEN + body.len() + if crc { CHECKSUM_LEN } else { 0 };
    let mut v = Vec::with_capacity(size);
    v.extend_from_slice(&1_700_000_000u32.to_le_bytes());
    v.push(t);
    v.extend_from_slice(&server_id.to_le_bytes());
    v.extend_from_slice(&(size as u32).to_le_bytes());
    v.extend_from_slice(&log_pos.to_le_bytes());
    v.extend_from_slice(&flags.to_le_bytes());
    v.extend_from_slice(body);
    if crc {
        let c = compute_checksum(&v);
        v.extend_from_slice(&c.to_le_bytes());
    }
    v
}

pub(crate) fn fde_body(version: &str, alg: u8) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&4u16.to_le_bytes());
    let mut ver = [0u8; 50];
    ver[..version.len()].copy_from_slice(version.as_bytes());
    b.extend_from_slice(&ver);
    b.extend_from_slice(&0u32.to_le_bytes());
    b.push(19);
    let mut post = vec![0u8; 40];
    post[usize::from(types::QUERY) - 1] = 13;
    post[usize::from(types::ROTATE) - 1] = 8;
    post[usize::from(types::TABLE_MAP) - 1] = 8;
    b.extend_from_slice(&post);
    b.push(alg);
    b
}

const CRC_CTX: DecodeCtx = DecodeCtx {
    checksum: true,
    table_id_len: 6,
    query_post_header: 13,
};

#[test]
fn header_roundtrip_and_errors() {
    let e = build(
        types::XID,
        7,
        1234,
        LOG_EVENT_ARTIFICIAL_F,
        &42u64.to_le_bytes(),
        false,
    );
    let h = EventHeader::parse(&e).unwrap();
    assert_eq!(h.type_code, types::XID);
    assert_eq!(h.server_id, 7);
    assert_eq!(h.log_pos, 1234);
    assert_eq!(h.event_size as usize, e.len());
    assert!(h.is_artificial_flag());
    assert!(EventHeader::parse(&e[..10]).is_err());
    let mut bad = e.clone();
    bad[9..13].copy_from_slice(&3u32.to_le_bytes());
    assert!(EventHeader::parse(&bad).is_err());
}

#[test]
fn checksum_detects_corruption_and_ignores_fde_in_use_flag() {
    let e = build(types::XID, 1, 100, 0, &9u64.to_le_bytes(), true);
    assert!(checksum_matches(&e));
    let mut bad = e.clone();
    bad[20] ^= 1;
    assert!(!checksum_matches(&bad));

    // The FDE of an open file has the in-use flag set; its CRC is the one of
    // the closed file, so setting the flag must not break verification.
    let mut fde = build(
        types::FORMAT_DESCRIPTION,
        1,
        0,
        0,
        &fde_body("10.11.6-MariaDB-log", 1),
        true,
    );
    assert!(checksum_matches(&fde));
    fde[17] |= LOG_EVENT_BINLOG_IN_USE_F as u8;
    assert!(checksum_matches(&fde));
    fde[18] ^= 0x80; // any other flag bit is covered
    assert!(!checksum_matches(&fde));
    // The known CRC-32 check value: crc32("123456789") = 0xcbf43926.
    let mut h = crc32fast::Hasher::new();
    h.update(b"123456789");
    assert_eq!(h.finalize(), 0xcbf4_3926);
}

#[test]
fn format_description() {
    let e = build(
        types::FORMAT_DESCRIPTION,
        1,
        256,
        1,
        &fde_body("9.4.0", 1),
        true,
    );
    let (h, d) = decode(&e, &DecodeCtx::default()).unwrap();
    assert_eq!(h.flags, 1);
    let EventData::FormatDescription(f) = d else {
        panic!("not an FDE: {d:?}")
    };
    assert_eq!(f.binlog_version, 4);
    assert_eq!(f.server_version, "9.4.0");
    assert_eq!(f.header_len, 19);
    assert_eq!(f.post_header_lens.len(), 40);
    assert_eq!(f.checksum, Some(ChecksumAlg::Crc32));
    assert_eq!(f.post_header_len(types::QUERY), Some(13));
    assert!(f.context().checksum);
    assert_eq!(f.context().table_id_len, 6);

    let e = build(
        types::FORMAT_DESCRIPTION,
        1,
        256,
        0,
        &fde_body("10.11.6-MariaDB", 0),
        true,
    );
    let (_, EventData::FormatDescription(f)) = decode(&e, &CRC_CTX).unwrap() else {
        panic!()
    };
    assert_eq!(f.checksum, Some(ChecksumAlg::Off));
    assert!(!f.context().checksum);

    // A 5.5 server has no checksum byte: all the rest are post-header lengths.
    let mut body = fde_body("5.5.40", 0);
    body.pop();
    let e = build(types::FORMAT_DESCRIPTION, 1, 0, 0, &body, false);
    let (_, EventData::FormatDescription(f)) = decode(&e, &CRC_CTX).unwrap() else {
        panic!()
    };
    assert_eq!(f.checksum, None);
    assert_eq!(f.post_header_lens.len(), 40);
}

#[test]
fn rotate_with_and_without_checksum() {
    let mut body = 4u64.to_le_bytes().to_vec();
    body.extend_from_slice(b"mysql-bin.000002");
    let e = build(types::ROTATE, 1, 0, LOG_EVENT_ARTIFICIAL_F, &body, true);
    let (_, d) = decode(&e, &CRC_CTX).unwrap();
    assert_eq!(
        d,
        EventData::Rotate {
            position: 4,
            next_file: BinlogFile::new("mysql-bin.000002")
        }
    );
    // Decoded without knowing about the checksum, the CRC ends up in the name.
    let (_, d) = decode(&e, &DecodeCtx::default()).unwrap();
    let EventData::Rotate { next_file, .. } = d else {
        panic!()
    };
    assert!(next_file.as_str().starts_with("mysql-bin.000002"));
    assert!(next_file.as_str().len() > "mysql-bin.000002".len());
}

fn query_body(db: &str, query: &str) -> Vec<u8> {
    let status = [0x00u8, 0x01, 0x00, 0x00, 0x00]; // Q_FLAGS2_CODE + u32
    let mut b = Vec::new();
    b.extend_from_slice(&77u32.to_le_bytes());
    b.extend_from_slice(&3u32.to_le_bytes());
    b.push(db.len() as u8);
    b.extend_from_slice(&0u16.to_le_bytes());
    b.extend_from_slice(&(status.len() as u16).to_le_bytes());
    b.extend_from_slice(&status);
    b.extend_from_slice(db.as_bytes());
    b.push(0);
    b.extend_from_slice(query.as_bytes());
    b
}

#[test]
fn query_events() {
    let e = build(types::QUERY, 1, 500, 0, &query_body("shop", "BEGIN"), true);
    let (_, EventData::Query(q)) = decode(&e, &CRC_CTX).unwrap() else {
        panic!()
    };
    assert_eq!(q.thread_id, 77);
    assert_eq!(q.exec_time, 3);
    assert_eq!(q.db, "shop");
    assert_eq!(q.query, "BEGIN");
    assert!(q.is_begin() && !q.is_group_end());

    for (text, end) in [
        ("COMMIT", true),
        ("commit", true),
        ("XA COMMIT X'31',X'',1", true),
        ("XA PREPARE 'a'", true),
        ("ROLLBACK", true),
        ("CREATE TABLE t (a int)", false),
        ("COMMITTED_STUFF", false),
    ] {
        let e = build(types::QUERY, 1, 500, 0, &query_body("", text), false);
        let (_, EventData::Query(q)) = decode(&e, &DecodeCtx::default()).unwrap() else {
            panic!()
        };
        assert_eq!(q.query, text);
        assert_eq!(q.is_group_end(), end, "{text}");
    }
    let e = build(
        types::QUERY,
        1,
        500,
        0,
        &query_body("abc", "x")[..12],
        false,
    );
    assert!(decode(&e, &DecodeCtx::default()).is_err());
}

#[test]
fn xid_table_map_rows() {
    let e = build(
        types::XID,
        1,
        9,
        0,
        &0x0102_0304_0506u64.to_le_bytes(),
        true,
    );
    assert_eq!(
        decode(&e, &CRC_CTX).unwrap().1,
        EventData::Xid(0x0102_0304_0506)
    );

    let mut b = vec![0x2a, 0, 0, 0, 0, 0, 1, 0];
    b.push(4);
    b.extend_from_slice(b"shop\0");
    b.push(6);
    b.extend_from_slice(b"orders\0");
    b.extend_from_slice(&[1, 3, 0]); // column count, types, ... (ignored)
    let e = build(types::TABLE_MAP, 1, 9, 0, &b, true);
    assert_eq!(
        decode(&e, &CRC_CTX).unwrap().1,
        EventData::TableMap {
            table_id: 0x2a,
            db: "shop".into(),
            table: "orders".into()
        }
    );

    let b = [0x2a, 0, 0, 0, 0, 0, 1, 0, 2, 0, 1, 0xff, 0];
    for (t, kind, version) in [
        (types::WRITE_ROWS, RowsKind::Write, 2),
        (types::UPDATE_ROWS_V1, RowsKind::Update, 1),
        (types::DELETE_ROWS, RowsKind::Delete, 2),
        (types::MARIA_DELETE_ROWS_COMPRESSED_V1, RowsKind::Delete, 0),
    ] {
        let e = build(t, 1, 9, 0, &b, true);
        assert_eq!(
            decode(&e, &CRC_CTX).unwrap().1,
            EventData::Rows {
                kind,
                version,
                table_id: 0x2a
            }
        );
    }
}

fn mysql_gtid_body(gno: u64, immediate: u64, original: Option<u64>) -> Vec<u8> {
    let mut b = vec![1u8];
    b.extend_from_slice(&[0xab; 16]);
    b.extend_from_slice(&gno.to_le_bytes());
    b.push(2);
    b.extend_from_slice(&5i64.to_le_bytes());
    b.extend_from_slice(&6i64.to_le_bytes());
    let flag = if original.is_some() { 1u64 << 55 } else { 0 };
    b.extend_from_slice(&(immediate | flag).to_le_bytes()[..7]);
    if let Some(o) = original {
        b.extend_from_slice(&o.to_le_bytes()[..7]);
    }
    b.push(0xfc);
    b.extend_from_slice(&300u16.to_le_bytes());
    b.extend_from_slice(&80400u32.to_le_bytes());
    b
}

#[test]
fn mysql_gtid_with_commit_timestamps() {
    let ts = 1_700_000_000_123_456u64;
    let e = build(types::GTID, 1, 9, 0, &mysql_gtid_body(42, ts, None), true);
    let (_, EventData::MysqlGtid(g)) = decode(&e, &CRC_CTX).unwrap() else {
        panic!()
    };
    let gtid = g.gtid.unwrap();
    assert_eq!(gtid.gno, 42);
    assert_eq!(gtid.sid.0, [0xab; 16]);
    assert_eq!(g.last_committed, Some(5));
    assert_eq!(g.sequence_number, Some(6));
    assert_eq!(g.immediate_commit_micros, Some(ts));
    assert_eq!(g.original_commit_micros, Some(ts));
    assert_eq!(g.transaction_length, Some(300));

    let e = build(
        types::GTID,
        1,
        9,
        0,
        &mysql_gtid_body(43, ts, Some(ts - 5)),
        true,
    );
    let (_, EventData::MysqlGtid(g)) = decode(&e, &CRC_CTX).unwrap() else {
        panic!()
    };
    assert_eq!(g.immediate_commit_micros, Some(ts));
    assert_eq!(g.original_commit_micros, Some(ts - 5));

    let e = build(
        types::ANONYMOUS_GTID,
        1,
        9,
        0,
        &mysql_gtid_body(0, ts, None),
        true,
    );
    let (_, EventData::MysqlGtid(g)) = decode(&e, &CRC_CTX).unwrap() else {
        panic!()
    };
    assert_eq!(g.gtid, None);
    assert_eq!(g.immediate_commit_micros, Some(ts));

    // 5.6-style event: no logical clock, no timestamps.
    let e = build(
        types::GTID,
        1,
        9,
        0,
        &mysql_gtid_body(7, ts, None)[..25],
        false,
    );
    let (_, EventData::MysqlGtid(g)) = decode(&e, &DecodeCtx::default()).unwrap() else {
        panic!()
    };
    assert_eq!(g.gtid.unwrap().gno, 7);
    assert_eq!(g.immediate_commit_micros, None);
}

#[test]
fn maria_events() {
    let mut b = 100u64.to_le_bytes().to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.push(maria_flags::FL_STANDALONE | maria_flags::FL_GROUP_COMMIT_ID);
    b.extend_from_slice(&555u64.to_le_bytes());
    let e = build(types::MARIA_GTID, 9, 9, 0, &b, true);
    let (_, EventData::MariaGtid(g)) = decode(&e, &CRC_CTX).unwrap() else {
        panic!()
    };
    assert_eq!(g.gtid.to_string(), "3-9-100");
    assert!(g.is_standalone());
    assert_eq!(g.commit_id, Some(555));

    let mut b = 2u32.to_le_bytes().to_vec();
    for (d, s, q) in [(0u32, 1u32, 10u64), (1, 2, 5)] {
        b.extend_from_slice(&d.to_le_bytes());
        b.extend_from_slice(&s.to_le_bytes());
        b.extend_from_slice(&q.to_le_bytes());
    }
    let e = build(types::MARIA_GTID_LIST, 1, 9, 0, &b, true);
    let (_, EventData::MariaGtidList(l)) = decode(&e, &CRC_CTX).unwrap() else {
        panic!()
    };
    assert_eq!(
        l.iter().map(|g| g.to_string()).collect::<Vec<_>>(),
        ["0-1-10", "1-2-5"]
    );
    let e = build(types::MARIA_GTID_LIST, 1, 9, 0, &b[..20], true);
    assert!(decode(&e, &CRC_CTX).is_err());

    let mut b = 10u32.to_le_bytes().to_vec();
    b.extend_from_slice(b"bin.000001");
    let e = build(types::MARIA_BINLOG_CHECKPOINT, 1, 9, 0, &b, true);
    assert_eq!(
        decode(&e, &CRC_CTX).unwrap().1,
        EventData::MariaBinlogCheckpoint(BinlogFile::new("bin.000001"))
    );
    let e = build(
        types::MARIA_ANNOTATE_ROWS,
        1,
        9,
        0,
        b"insert into t values (1)",
        true,
    );
    assert_eq!(
        decode(&e, &CRC_CTX).unwrap().1,
        EventData::MariaAnnotateRows("insert into t values (1)".into())
    );
}

#[test]
fn previous_gtids() {
    let mut b = 1u64.to_le_bytes().to_vec();
    b.extend_from_slice(&[0x11; 16]);
    b.extend_from_slice(&2u64.to_le_bytes());
    for (s, e) in [(1u64, 6u64), (8, 9)] {
        b.extend_from_slice(&s.to_le_bytes());
        b.extend_from_slice(&e.to_le_bytes());
    }
    let e = build(types::PREVIOUS_GTIDS, 1, 9, 0, &b, true);
    let (_, EventData::PreviousGtids(set)) = decode(&e, &CRC_CTX).unwrap() else {
        panic!()
    };
    assert_eq!(
        set.to_string(),
        "11111111-1111-1111-1111-111111111111:1-5:8"
    );
}

#[test]
fn unknown_types_pass_through() {
    for t in [0u8, 7, 36, 99, 164, 200, 255] {
        let e = build(t, 1, 9, 0, &[1, 2, 3], true);
        let (h, d) = decode(&e, &CRC_CTX).unwrap();
        assert_eq!(h.type_code, t);
        assert_eq!(d, EventData::Other(t));
    }
    let e = build(types::STOP, 1, 9, 0, &[], true);
    assert_eq!(decode(&e, &CRC_CTX).unwrap().1, EventData::Stop);
    let e = build(
        types::HEARTBEAT,
        1,
        9,
        LOG_EVENT_ARTIFICIAL_F,
        b"bin.000001",
        true,
    );
    assert_eq!(
        decode(&e, &CRC_CTX).unwrap().1,
        EventData::Heartbeat { v2: false }
    );
    // Size mismatch between header and buffer is an error, not a panic.
    let mut e = build(types::XID, 1, 9, 0, &1u64.to_le_bytes(), true);
    e.push(0);
    assert!(decode(&e, &CRC_CTX).is_err());
}

#[test]
fn split_walks_back_to_back_events_and_stops_where_none_is_whole() {
    let a = build(types::QUERY, 1, 100, 0, b"BEGIN", false);
    let b = build(types::XID, 1, 200, 0, &[7u8; 8], true);
    let mut both = a.clone();
    both.extend_from_slice(&b);
    let got: Vec<_> = split(&both).collect();
    assert_eq!(got, vec![Ok((0, &a[..])), Ok((a.len(), &b[..]))]);
    assert_eq!(event_size(&b), Some(b.len()));
    // Cut short: the second event is not whole.
    let cut = &both[..both.len() - 1];
    let got: Vec<_> = split(cut).collect();
    assert_eq!(got, vec![Ok((0, &a[..])), Err(a.len())]);
    // A size below the header's, and a header cut short.
    let mut tiny = a.clone();
    tiny[9..13].copy_from_slice(&3u32.to_le_bytes());
    assert_eq!(split(&tiny).collect::<Vec<_>>(), vec![Err(0)]);
    assert_eq!(split(&a[..10]).collect::<Vec<_>>(), vec![Err(0)]);
    assert_eq!(split(&[]).count(), 0);
}
