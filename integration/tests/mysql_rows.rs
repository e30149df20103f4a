//! Row-image decoding against real servers: a table with a column of every
//! width rule gets inserts (some rows all NULL), updates, a delete and a
//! `binlog_row_image=MINIMAL` update; the binlog files the server wrote are
//! then read back and every TABLE_MAP and rows event decoded with
//! `pitr_mysql::rows`. The TABLE_MAP must describe each column as expected,
//! every image must decode with nothing left over, and the key, VARCHAR and
//! CHAR cells must hold exactly the bytes inserted.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use pitr_integration::{mysql, require, Flavor, MySqlServer};
use pitr_mysql::event::{self, types, DecodeCtx, RowsKind, HEADER_LEN};
use pitr_mysql::rows::{self, col, Cell, TableMap};

/// The test table: (name, SQL type, expected TABLE_MAP type code and meta).
fn columns(f: Flavor) -> Vec<(&'static str, &'static str, u8, u16)> {
    let json = match f {
        // MariaDB's JSON is LONGTEXT with a CHECK constraint.
        Flavor::MariaDb => col::BLOB,
        Flavor::MySql => col::JSON,
    };
    let mut c = vec![
        ("id", "INT NOT NULL PRIMARY KEY", col::LONG, 0),
        ("ti", "TINYINT", col::TINY, 0),
        ("tiu", "TINYINT UNSIGNED", col::TINY, 0),
        ("si", "SMALLINT", col::SHORT, 0),
        ("siu", "SMALLINT UNSIGNED", col::SHORT, 0),
        ("mi", "MEDIUMINT", col::INT24, 0),
        ("miu", "MEDIUMINT UNSIGNED", col::INT24, 0),
        ("i", "INT", col::LONG, 0),
        ("iu", "INT UNSIGNED", col::LONG, 0),
        ("bi", "BIGINT", col::LONGLONG, 0),
        ("biu", "BIGINT UNSIGNED", col::LONGLONG, 0),
        ("f", "FLOAT", col::FLOAT, 4),
        ("d", "DOUBLE", col::DOUBLE, 8),
        ("dec1", "DECIMAL(10,2)", col::NEWDECIMAL, (10 << 8) | 2),
        ("dec2", "DECIMAL(30,10)", col::NEWDECIMAL, (30 << 8) | 10),
        ("dt", "DATE", col::DATE, 0),
        ("tm", "TIME(3)", col::TIME2, 3),
        ("dtm", "DATETIME(6)", col::DATETIME2, 6),
        ("ts", "TIMESTAMP(2) NULL", col::TIMESTAMP2, 2),
        ("yr", "YEAR", col::YEAR, 0),
        ("c10", "CHAR(10)", col::STRING, 40),
        // 100 characters of up to 4 bytes: a "long CHAR" of 400 bytes.
        ("c100", "CHAR(100)", col::STRING, 400),
        ("vc10", "VARCHAR(10)", col::VARCHAR, 40),
        ("vc1000", "VARCHAR(1000)", col::VARCHAR, 4000),
        ("bin4", "BINARY(4)", col::STRING, 4),
        ("vb300", "VARBINARY(300)", col::VARCHAR, 300),
        ("b13", "BIT(13)", col::BIT, (1 << 8) | 5),
        ("en", "ENUM('a','b','c')", col::ENUM, 1),
        ("st", "SET('x','y','z')", col::SET, 1),
        ("tt", "TINYTEXT", col::BLOB, 1),
        ("tx", "TEXT", col::BLOB, 2),
        ("mb", "MEDIUMBLOB", col::BLOB, 3),
        ("lb", "LONGBLOB", col::BLOB, 4),
        ("js", "JSON", json, 4),
        ("g", "GEOMETRY", col::GEOMETRY, 4),
    ];
    if f == Flavor::MySql {
        c.push(("vec", "VECTOR(3)", col::VECTOR, 4));
    }
    c
}

/// SQL values of one row; `vc10` / `vc1000` vary per row.
fn row_values(f: Flavor, id: i32, vc10: &str, vc1000: &str) -> String {
    let mut v = format!(
        "{id}, -1, 255, -2, 65535, -3, 16777215, -4, 4294967295, -5, 18446744073709551615, \
         1.5, 2.25, 12345678.91, 12345678901234567890.0123456789, '2024-02-29', \
         '12:34:56.789', '2024-02-29 12:34:56.123456', '2024-02-29 12:34:56.12', 2024, \
         'short', 'hello', '{vc10}', {vc1000}, 'ab', UNHEX(REPEAT('AB', 300)), \
         b'1010101010101', 'b', 'x,z', 'tiny', REPEAT('t', 1000), 'mediumblob', 'longblob', \
         '{{\"a\": [1, 2]}}', ST_GeomFromText('POINT(1 2)')"
    );
    if f == Flavor::MySql {
        v.push_str(", STRING_TO_VECTOR('[1,2,3]')");
    }
    v
}

/// Every event of the closed binlog files, each with the context of its file.
fn binlog_events(dir: &Path) -> Vec<(DecodeCtx, Vec<u8>)> {
    let index = fs::read_to_string(dir.join("binlog.index")).unwrap();
    let mut names: Vec<String> = index
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            Path::new(l.trim())
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    // The last file is still being written.
    names.pop();
    let mut out = Vec::new();
    for name in names {
        let data = fs::read(dir.join(&name)).unwrap();
        assert_eq!(&data[..4], b"\xfebin", "{name}");
        let mut ctx = DecodeCtx::default();
        let mut pos = 4;
        while pos < data.len() {
            let len = u32::from_le_bytes(data[pos + 9..pos + 13].try_into().unwrap()) as usize;
            assert!(len >= HEADER_LEN && pos + len <= data.len(), "{name}:{pos}");
            let ev = data[pos..pos + len].to_vec();
            if ev[4] == types::FORMAT_DESCRIPTION {
                ctx = event::decode_fde(&ev).unwrap().context();
                assert!(ctx.checksum, "the harness turns CRC32 checksums on");
            }
            out.push((ctx, ev));
            pos += len;
        }
    }
    out
}

fn is_rows(t: u8) -> bool {
    matches!(
        t,
        types::WRITE_ROWS_V1
            | types::UPDATE_ROWS_V1
            | types::DELETE_ROWS_V1
            | types::WRITE_ROWS
            | types::UPDATE_ROWS
            | types::DELETE_ROWS
    )
}

fn pk(cell: &Cell) -> i32 {
    match cell {
        Cell::Value(v) => i32::from_le_bytes((*v).try_into().unwrap()),
        other => panic!("key cell is {other:?}"),
    }
}

/// `text` with the 1- or 2-byte length prefix of a row image.
fn prefixed(text: &[u8], prefix: usize) -> Vec<u8> {
    let mut v = (text.len() as u16).to_le_bytes()[..prefix].to_vec();
    v.extend_from_slice(text);
    v
}

fn row_images(f: Flavor) {
    let server = MySqlServer::start(f).unwrap();
    let cols = columns(f);
    let at = |name: &str| cols.iter().position(|c| c.0 == name).unwrap();
    let defs: Vec<String> = cols.iter().map(|(n, t, ..)| format!("{n} {t}")).collect();
    let names: Vec<&str> = cols.iter().map(|c| c.0).collect();
    let names = names.join(", ");
    let nulls = vec!["NULL"; cols.len() - 1].join(", ");
    let long = "REPEAT('é', 300)";
    server
        .sql(&format!(
            "CREATE DATABASE rt; \
             CREATE TABLE rt.t ({}) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4; \
             INSERT INTO rt.t ({names}) VALUES ({}), ({}), (3, {nulls}), ({});",
            defs.join(", "),
            row_values(f, 1, "abc", "'hi'"),
            row_values(f, 2, "defg", long),
            row_values(f, 4, "x", "''"),
        ))
        .unwrap();
    server
        .sql("UPDATE rt.t SET vc10 = 'upd', i = i + 1 WHERE id IN (1, 3)")
        .unwrap();
    server.sql("DELETE FROM rt.t WHERE id = 2").unwrap();
    server
        .sql("SET SESSION binlog_row_image = 'MINIMAL'; UPDATE rt.t SET i = 42 WHERE id = 4")
        .unwrap();
    server.sql("FLUSH BINARY LOGS").unwrap();

    let events = binlog_events(server.binlog_dir());
    let mut maps: HashMap<u64, TableMap> = HashMap::new();
    // Images of rt.t, grouped by transaction (GTID event).
    let mut groups: Vec<(RowsKind, Vec<Vec<Cell>>)> = Vec::new();
    let mut txn = 0usize;
    let mut group_txn = usize::MAX;
    let mut rows_types: Vec<u8> = Vec::new();
    for (ctx, ev) in &events {
        let t = ev[4];
        if t == types::GTID || t == types::MARIA_GTID || t == types::ANONYMOUS_GTID {
            txn += 1;
        } else if t == types::TABLE_MAP {
            let map = rows::decode_table_map(ev, ctx).unwrap();
            maps.insert(map.table_id, map);
        } else if is_rows(t) {
            rows_types.push(t);
            let r = rows::decode_rows(ev, ctx).unwrap();
            let map = &maps[&r.table_id];
            let images = r
                .images(map)
                .unwrap_or_else(|e| panic!("{f:?} `{}`.`{}`: {e}", map.db, map.table));
            if (map.db.as_str(), map.table.as_str()) != ("rt", "t") {
                continue;
            }
            assert!(images.iter().all(|img| img.len() == cols.len()));
            if group_txn == txn {
                let last = groups.last_mut().unwrap();
                assert_eq!(last.0, r.kind);
                last.1.extend(images);
            } else {
                groups.push((r.kind, images));
                group_txn = txn;
            }
        }
    }
    rows_types.sort_unstable();
    rows_types.dedup();
    // MariaDB writes v1 rows events, MySQL v2.
    let want_types = match f {
        Flavor::MariaDb => [23, 24, 25],
        Flavor::MySql => [30, 31, 32],
    };
    assert_eq!(rows_types, want_types, "{f:?}");

    // The TABLE_MAP describes every column as expected.
    let map = maps
        .values()
        .find(|m| m.db == "rt" && m.table == "t")
        .unwrap();
    let got: Vec<(u8, u16, bool)> = map
        .columns
        .iter()
        .map(|c| (c.type_code, c.meta, c.nullable))
        .collect();
    let want: Vec<(u8, u16, bool)> = cols.iter().map(|c| (c.2, c.3, c.0 != "id")).collect();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "{f:?} column {} ({})", cols[i].0, cols[i].1);
    }
    assert_eq!(got.len(), want.len());

    let kinds: Vec<RowsKind> = groups.iter().map(|g| g.0).collect();
    assert_eq!(
        kinds,
        [
            RowsKind::Write,
            RowsKind::Update,
            RowsKind::Delete,
            RowsKind::Update
        ],
        "{f:?}"
    );
    let keys = |k: usize| -> Vec<i32> { groups[k].1.iter().map(|img| pk(&img[0])).collect() };
    assert_eq!(keys(0), [1, 2, 3, 4], "{f:?} insert");
    assert_eq!(keys(1), [1, 1, 3, 3], "{f:?} update before/after");
    assert_eq!(keys(2), [2], "{f:?} delete");

    // Inserted values, exactly as stored.
    let ins = &groups[0].1;
    let (vc10, vc1000, c10, c100) = (at("vc10"), at("vc1000"), at("c10"), at("c100"));
    assert_eq!(ins[0][vc10], Cell::Value(&prefixed(b"abc", 1)), "{f:?}");
    assert_eq!(ins[0][vc1000], Cell::Value(&prefixed(b"hi", 2)), "{f:?}");
    assert_eq!(ins[1][vc10], Cell::Value(&prefixed(b"defg", 1)), "{f:?}");
    let e300 = "é".repeat(300);
    assert_eq!(
        ins[1][vc1000],
        Cell::Value(&prefixed(e300.as_bytes(), 2)),
        "{f:?}"
    );
    assert_eq!(ins[3][vc1000], Cell::Value(&[0, 0]), "{f:?}");
    assert_eq!(ins[0][c10], Cell::Value(&prefixed(b"short", 1)), "{f:?}");
    assert_eq!(ins[0][c100], Cell::Value(&prefixed(b"hello", 2)), "{f:?}");
    let i = at("i");
    assert_eq!(ins[0][i], Cell::Value(&(-4i32).to_le_bytes()), "{f:?}");
    // BINARY pads with NUL bytes, stripped in the image like CHAR's spaces.
    assert_eq!(ins[0][at("bin4")], Cell::Value(b"\x02ab"), "{f:?}");
    // Row 3: every column but the key is NULL.
    assert!(ins[2][1..].iter().all(|c| *c == Cell::Null), "{f:?}");
    // Fixed-width values have their full width.
    for (name, width) in [
        ("dec1", 5),
        ("dec2", 14),
        ("tm", 5),
        ("dtm", 8),
        ("ts", 5),
        ("b13", 2),
        ("en", 1),
        ("st", 1),
        ("bi", 8),
        ("mi", 3),
    ] {
        match ins[0][at(name)] {
            Cell::Value(v) => assert_eq!(v.len(), width, "{f:?} {name}"),
            other => panic!("{f:?} {name}: {other:?}"),
        }
    }

    // The FULL update: the after images carry the new VARCHAR, NULL + 1 stays NULL.
    let upd = &groups[1].1;
    assert_eq!(upd[0][vc10], Cell::Value(&prefixed(b"abc", 1)), "{f:?}");
    assert_eq!(upd[1][vc10], Cell::Value(&prefixed(b"upd", 1)), "{f:?}");
    assert_eq!(upd[1][i], Cell::Value(&(-3i32).to_le_bytes()), "{f:?}");
    assert_eq!(upd[2][vc10], Cell::Null, "{f:?}");
    assert_eq!(upd[3][vc10], Cell::Value(&prefixed(b"upd", 1)), "{f:?}");
    assert_eq!(upd[3][i], Cell::Null, "{f:?}");

    // The MINIMAL update: before = the key only, after = the changed column only.
    let min = &groups[3].1;
    assert_eq!(min.len(), 2, "{f:?}");
    assert_eq!(pk(&min[0][0]), 4, "{f:?}");
    assert!(min[0][1..].iter().all(|c| *c == Cell::Absent), "{f:?}");
    assert_eq!(min[1][i], Cell::Value(&42i32.to_le_bytes()), "{f:?}");
    for (k, c) in min[1].iter().enumerate() {
        if k != i {
            assert_eq!(*c, Cell::Absent, "{f:?} column {}", cols[k].0);
        }
    }
}

#[test]
fn mariadb_row_images() {
    require!(mysql::available(Flavor::MariaDb));
    row_images(Flavor::MariaDb);
}

#[test]
fn mysql_row_images() {
    require!(mysql::available(Flavor::MySql));
    row_images(Flavor::MySql);
}
