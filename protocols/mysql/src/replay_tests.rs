//! Unit tests of the event-to-SQL translation on hand-built events.

use super::*;
use crate::event::{compute_checksum, CHECKSUM_LEN};

fn build(t: u8, server_id: u32, body: &[u8]) -> Vec<u8> {
    let size = HEADER_LEN + body.len() + CHECKSUM_LEN;
    let mut v = Vec::with_capacity(size);
    v.extend_from_slice(&1_700_000_000u32.to_le_bytes());
    v.push(t);
    v.extend_from_slice(&server_id.to_le_bytes());
    v.extend_from_slice(&(size as u32).to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&0u16.to_le_bytes());
    v.extend_from_slice(body);
    let c = compute_checksum(&v);
    v.extend_from_slice(&c.to_le_bytes());
    v
}

fn fde(version: &str) -> Vec<u8> {
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
    b.push(1);
    build(types::FORMAT_DESCRIPTION, 1, &b)
}

fn query(db: &str, sql: &str, status: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&9u32.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.push(db.len() as u8);
    b.extend_from_slice(&0u16.to_le_bytes());
    b.extend_from_slice(&(status.len() as u16).to_le_bytes());
    b.extend_from_slice(status);
    b.extend_from_slice(db.as_bytes());
    b.push(0);
    b.extend_from_slice(sql.as_bytes());
    build(types::QUERY, 1, &b)
}

fn rows(t: u8, flags: u16) -> Vec<u8> {
    let mut b = vec![5, 0, 0, 0, 0, 0];
    b.extend_from_slice(&flags.to_le_bytes());
    b.extend_from_slice(&[2, 0, 1, 0xff, 0xfe, 7, 0, 0, 0]);
    build(t, 1, &b)
}

fn maria_gtid(seq: u64, flags: u8) -> Vec<u8> {
    let mut b = seq.to_le_bytes().to_vec();
    b.extend_from_slice(&0u32.to_le_bytes());
    b.push(flags);
    b.extend_from_slice(&[0u8; 6]);
    build(types::MARIA_GTID, 3, &b)
}

fn texts(v: Vec<Statement>) -> Vec<String> {
    v.into_iter()
        .map(|s| String::from_utf8(s.as_bytes().to_vec()).unwrap())
        .collect()
}

fn unbase64(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    let clean: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(clean)
        .unwrap()
}

#[test]
fn base64_matches_rfc4648_vectors_and_wraps() {
    let cases = [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ];
    for (raw, enc) in cases {
        assert_eq!(base64_lines(raw.as_bytes()), enc);
    }
    let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    let enc = base64_lines(&data);
    assert!(enc.lines().all(|l| l.len() <= 76));
    assert_eq!(enc.lines().count(), 1000usize.div_ceil(57));
    assert_eq!(unbase64(&enc), data);
    for n in 0..400 {
        let enc = base64_lines(&data[..n]);
        assert_eq!(enc.len(), base64_lines_len(n), "{n}");
        assert_eq!(unbase64(&enc), &data[..n], "{n}");
        assert_eq!(binlog_statement(&data[..n]), format!("BINLOG '\n{enc}\n'"));
    }
}

#[test]
fn rows_statement_carries_fde_once_then_table_map_and_rows() {
    let mut r = SqlReplayer::new(Flavor::MariaDb, true);
    let f = fde("10.11.6-MariaDB");
    r.format_description(&f).unwrap();
    let mut gtid = texts(r.event(&maria_gtid(42, 0)).unwrap());
    // The FDE goes first, before the transaction starts.
    let fde_stmt = gtid.remove(0);
    assert_eq!(
        gtid,
        [
            "SET @@session.gtid_domain_id=0, @@session.server_id=3, @@session.gtid_seq_no=42",
            "START TRANSACTION"
        ]
    );
    let tm = build(types::TABLE_MAP, 1, &[5, 0, 0, 0, 0, 0, 1, 0]);
    assert!(r.event(&tm).unwrap().is_empty());
    let r1 = rows(types::WRITE_ROWS_V1, 0);
    assert!(
        r.event(&r1).unwrap().is_empty(),
        "not the statement end yet"
    );
    let r2 = rows(types::WRITE_ROWS_V1, STMT_END_F);
    let out = texts(r.event(&r2).unwrap());
    assert_eq!(out.len(), 1);
    let body = |s: &str| {
        unbase64(
            s.strip_prefix("BINLOG '")
                .unwrap()
                .strip_suffix('\'')
                .unwrap(),
        )
    };
    assert_eq!(body(&fde_stmt), f);
    assert_eq!(body(&out[0]), [tm.clone(), r1, r2.clone()].concat());
    // Second statement: no FDE again.
    r.event(&tm).unwrap();
    let out = texts(r.event(&r2).unwrap());
    assert_eq!(out.len(), 1);
    assert_eq!(body(&out[0]), [tm, r2].concat());
    assert_eq!(
        texts(r.event(&build(types::XID, 1, &7u64.to_le_bytes())).unwrap()),
        ["COMMIT"]
    );
    // A new FDE (next file) is sent again before the next rows.
    let f2 = fde("10.11.7-MariaDB");
    r.format_description(&f2).unwrap();
    let out = texts(r.event(&rows(types::WRITE_ROWS_V1, STMT_END_F)).unwrap());
    assert_eq!(body(&out[0]), f2);
}

#[test]
fn query_context_is_set_only_when_changed() {
    let mut r = SqlReplayer::new(Flavor::MariaDb, false);
    r.format_description(&fde("10.11.6-MariaDB")).unwrap();
    let mut st = vec![0u8];
    st.extend_from_slice(&(OPTION_NO_FOREIGN_KEY_CHECKS).to_le_bytes());
    st.push(1);
    st.extend_from_slice(&1_411_383_296u64.to_le_bytes());
    st.push(4);
    for v in [33u16, 33, 8] {
        st.extend_from_slice(&v.to_le_bytes());
    }
    let mut ddl = texts(
        r.event(&query("shop", "CREATE TABLE t (id INT)", &st))
            .unwrap(),
    );
    assert!(ddl.remove(0).starts_with("BINLOG '"));
    assert_eq!(
        ddl,
        [
            "SET TIMESTAMP=1700000000",
            "SET @@session.pseudo_thread_id=9",
            "SET @@session.foreign_key_checks=0, @@session.sql_auto_is_null=0, @@session.unique_checks=1, @@session.autocommit=1",
            "SET @@session.sql_mode=1411383296",
            "SET @@session.character_set_client=33, @@session.collation_connection=33, @@session.collation_server=8",
            "use `shop`",
            "CREATE TABLE t (id INT)",
        ]
    );
    let again = texts(r.event(&query("shop", "DROP TABLE t", &st)).unwrap());
    assert_eq!(again, ["DROP TABLE t"]);
    let other = texts(r.event(&query("a`b", "DROP TABLE u", &[])).unwrap());
    assert_eq!(other, ["use `a``b`", "DROP TABLE u"]);
}

#[test]
fn mysql_gtid_next_is_reset_after_the_group() {
    let mut r = SqlReplayer::new(Flavor::MySql, true);
    r.format_description(&fde("9.4.0")).unwrap();
    let mut b = vec![1u8];
    b.extend_from_slice(&[0x3e; 16]);
    b.extend_from_slice(&5u64.to_le_bytes());
    let g = build(types::GTID, 1, &b);
    let out = texts(r.event(&g).unwrap());
    assert!(out[0].starts_with("BINLOG '"), "{out:?}");
    assert_eq!(
        out[1..],
        ["SET @@SESSION.GTID_NEXT='3e3e3e3e-3e3e-3e3e-3e3e-3e3e3e3e3e3e:5'"]
    );
    let begin = texts(r.event(&query("", "BEGIN", &[])).unwrap());
    assert_eq!(begin.last().unwrap(), "BEGIN");
    let commit = texts(r.event(&build(types::XID, 1, &7u64.to_le_bytes())).unwrap());
    assert_eq!(commit, ["COMMIT", "SET @@SESSION.GTID_NEXT='AUTOMATIC'"]);
    // DDL: standalone group.
    r.event(&g).unwrap();
    let ddl = texts(r.event(&query("", "CREATE DATABASE x", &[])).unwrap());
    assert_eq!(
        ddl,
        ["CREATE DATABASE x", "SET @@SESSION.GTID_NEXT='AUTOMATIC'"]
    );
    // Not preserving: every group asks for a fresh GTID.
    let mut r = SqlReplayer::new(Flavor::MySql, false);
    r.format_description(&fde("9.4.0")).unwrap();
    let out = texts(r.event(&g).unwrap());
    assert_eq!(out[1..], ["SET @@SESSION.GTID_NEXT='AUTOMATIC'"]);
    let ddl = texts(r.event(&query("", "CREATE DATABASE x", &[])).unwrap());
    assert_eq!(ddl.last().unwrap(), "CREATE DATABASE x");
    assert!(!ddl.iter().any(|s| s.contains("GTID_NEXT")), "{ddl:?}");
}

#[test]
fn refuses_what_cannot_be_replayed() {
    let mut r = SqlReplayer::new(Flavor::MySql, false);
    r.format_description(&fde("9.4.0")).unwrap();
    let e = r.event(&build(USER_VAR_EVENT, 1, &[0; 8])).unwrap_err();
    assert!(e.message.contains("binlog_format=ROW"), "{e:?}");
    let e = r
        .event(&build(types::TRANSACTION_PAYLOAD, 1, &[0; 8]))
        .unwrap_err();
    assert!(
        e.message.contains("binlog_transaction_compression"),
        "{e:?}"
    );
    assert!(r.event(&build(77, 1, &[0; 4])).is_err());
    // Unknown but ignorable: nothing to do.
    let mut ign = build(77, 1, &[0; 4]);
    ign[17] = 0x80;
    ign.truncate(ign.len() - 4);
    let c = compute_checksum(&ign);
    ign.extend_from_slice(&c.to_le_bytes());
    assert!(r.event(&ign).unwrap().is_empty());
    let mut iv = vec![INTVAR_INSERT_ID];
    iv.extend_from_slice(&41u64.to_le_bytes());
    assert_eq!(
        texts(r.event(&build(types::INTVAR, 1, &iv)).unwrap()),
        ["SET INSERT_ID=41"]
    );
}

#[test]
fn rows_without_fde_is_an_error() {
    let mut r = SqlReplayer::new(Flavor::MariaDb, false);
    assert!(r.event(&rows(types::WRITE_ROWS_V1, STMT_END_F)).is_err());
}

#[test]
fn small_row_statements_of_a_transaction_share_one_binlog() {
    let body = |s: &str| {
        unbase64(
            s.strip_prefix("BINLOG '")
                .unwrap()
                .strip_suffix('\'')
                .unwrap(),
        )
    };
    let tm = build(types::TABLE_MAP, 1, &[5, 0, 0, 0, 0, 0, 1, 0]);
    let end = rows(types::WRITE_ROWS_V1, STMT_END_F);
    let stmt = [tm.clone(), end.clone()].concat();
    // Room for two statements: three statements give two BINLOGs, the
    // first with two whole statements, each still ending in STMT_END_F.
    let mut r = SqlReplayer::new(Flavor::MariaDb, false);
    r.format_description(&fde("10.11.6-MariaDB")).unwrap();
    r.external_format_description();
    r.merge_row_statements(2 * stmt.len());
    assert_eq!(
        texts(r.event(&maria_gtid(1, 0)).unwrap()),
        ["START TRANSACTION"]
    );
    let mut sent = Vec::new();
    for _ in 0..3 {
        r.event(&tm).unwrap();
        sent.extend(texts(r.event(&end).unwrap()));
    }
    sent.extend(texts(
        r.event(&build(types::XID, 1, &7u64.to_le_bytes())).unwrap(),
    ));
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert_eq!(body(&sent[0]), [stmt.clone(), stmt.clone()].concat());
    assert_eq!(body(&sent[1]), stmt);
    assert_eq!(sent[2], "COMMIT");
    // A statement bigger than the limit goes alone, unsplit.
    r.merge_row_statements(stmt.len() - 1);
    r.event(&maria_gtid(2, 0)).unwrap();
    let mut sent = Vec::new();
    for _ in 0..2 {
        r.event(&tm).unwrap();
        sent.extend(texts(r.event(&end).unwrap()));
    }
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(sent.iter().all(|s| body(s) == stmt));
    // Without gathering: one BINLOG per statement, as before.
    r.merge_row_statements(0);
    r.event(&tm).unwrap();
    assert_eq!(texts(r.event(&end).unwrap()).len(), 1);
}
