//! Unit tests of the TABLE_MAP and row-image decoders on hand-built events
//! whose layouts follow the server sources (`Table_map_log_event`,
//! `Rows_log_event`, `calc_field_size`).

use super::*;
use crate::event::tests::build;

const PLAIN: DecodeCtx = DecodeCtx {
    checksum: false,
    table_id_len: 6,
    query_post_header: 13,
};
const CRC: DecodeCtx = DecodeCtx {
    checksum: true,
    table_id_len: 6,
    query_post_header: 13,
};
const TABLE_ID: u64 = 0x0102_0304_0506;

fn ev(t: u8, body: &[u8], ctx: &DecodeCtx) -> Vec<u8> {
    build(t, 1, 0, 0, body, ctx.checksum)
}

fn packed(n: usize) -> Vec<u8> {
    match n {
        0..=250 => vec![n as u8],
        251..=0xffff => vec![252, n as u8, (n >> 8) as u8],
        _ => vec![253, n as u8, (n >> 8) as u8, (n >> 16) as u8],
    }
}

/// One column of a test table: type and metadata bytes as written in the
/// TABLE_MAP, whether it is nullable, the expected decoded type and meta, and
/// a sample value as stored in a row image.
struct Def {
    ty: u8,
    meta: Vec<u8>,
    nullable: bool,
    real: u8,
    decoded: u16,
    value: Vec<u8>,
}

fn def(ty: u8, meta: &[u8], real: u8, decoded: u16, value: &[u8]) -> Def {
    Def {
        ty,
        meta: meta.to_vec(),
        nullable: true,
        real,
        decoded,
        value: value.to_vec(),
    }
}

/// `n` bytes counting up from `seed`.
fn fixed(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| seed.wrapping_add(i as u8)).collect()
}

/// A little-endian length prefix of `n` bytes followed by `payload`.
fn prefixed(n: usize, payload: &[u8]) -> Vec<u8> {
    let mut v = (0..n)
        .map(|i| (payload.len() >> (8 * i)) as u8)
        .collect::<Vec<_>>();
    v.extend_from_slice(payload);
    v
}

/// A column of every width rule (and every metadata encoding).
fn every_type() -> Vec<Def> {
    use col::*;
    let mut pk = def(LONG, &[], LONG, 0, &7i32.to_le_bytes());
    pk.nullable = false;
    let mut long_text = vec![b'z'; 300];
    long_text[0] = b'A';
    vec![
        pk,
        def(TINY, &[], TINY, 0, &[0x81]),
        def(SHORT, &[], SHORT, 0, &fixed(2, 10)),
        def(INT24, &[], INT24, 0, &fixed(3, 20)),
        def(LONGLONG, &[], LONGLONG, 0, &fixed(8, 30)),
        def(FLOAT, &[4], FLOAT, 4, &1.5f32.to_le_bytes()),
        def(DOUBLE, &[8], DOUBLE, 8, &2.25f64.to_le_bytes()),
        def(YEAR, &[], YEAR, 0, &[124]),
        def(DATE, &[], DATE, 0, &fixed(3, 40)),
        def(NEWDATE, &[], NEWDATE, 0, &fixed(3, 43)),
        def(TIME, &[], TIME, 0, &fixed(3, 46)),
        def(TIMESTAMP, &[], TIMESTAMP, 0, &fixed(4, 50)),
        def(DATETIME, &[], DATETIME, 0, &fixed(8, 60)),
        def(NULL, &[], NULL, 0, &[]),
        // TIMESTAMP(2): 4 + 1, DATETIME(6): 5 + 3, TIME(3): 3 + 2, TIME(0): 3.
        def(TIMESTAMP2, &[2], TIMESTAMP2, 2, &fixed(5, 70)),
        def(DATETIME2, &[6], DATETIME2, 6, &fixed(8, 80)),
        def(TIME2, &[3], TIME2, 3, &fixed(5, 90)),
        def(TIME2, &[0], TIME2, 0, &fixed(3, 95)),
        // VARCHAR(10) utf8mb4 (40 bytes): 1-byte prefix; VARCHAR(1000) utf8mb4: 2 bytes.
        def(VARCHAR, &[40, 0], VARCHAR, 40, &prefixed(1, b"abc")),
        def(VARCHAR, &[0xa0, 0x0f], VARCHAR, 4000, &prefixed(2, b"hi")),
        def(
            VARCHAR,
            &[0x2c, 0x01],
            VARCHAR,
            300,
            &prefixed(2, &long_text),
        ),
        def(VAR_STRING, &[10, 0], VAR_STRING, 10, &prefixed(1, b"vs")),
        // BIT(13): 5 extra bits, 1 whole byte -> 2 bytes; BIT(64) -> 8; BIT(1) -> 1.
        def(BIT, &[5, 1], BIT, 0x105, &[0x15, 0x55]),
        def(BIT, &[0, 8], BIT, 0x800, &fixed(8, 100)),
        def(BIT, &[1, 0], BIT, 1, &[1]),
        // DECIMAL(10,2) 5 bytes, (30,10) 14, (65,30) 30, (1,0) 1.
        def(NEWDECIMAL, &[10, 2], NEWDECIMAL, 0x0a02, &fixed(5, 110)),
        def(NEWDECIMAL, &[30, 10], NEWDECIMAL, 0x1e0a, &fixed(14, 120)),
        def(NEWDECIMAL, &[65, 30], NEWDECIMAL, 0x411e, &fixed(30, 140)),
        def(NEWDECIMAL, &[1, 0], NEWDECIMAL, 0x0100, &[0x81]),
        def(BLOB, &[1], BLOB, 1, &prefixed(1, b"tiny")),
        def(BLOB, &[2], BLOB, 2, &prefixed(2, &long_text)),
        def(BLOB, &[3], BLOB, 3, &prefixed(3, b"medium")),
        def(BLOB, &[4], BLOB, 4, &prefixed(4, b"long")),
        def(GEOMETRY, &[4], GEOMETRY, 4, &prefixed(4, &fixed(25, 1))),
        def(JSON, &[4], JSON, 4, &prefixed(4, b"\x00\x01\x00")),
        def(VECTOR, &[4], VECTOR, 4, &prefixed(4, &fixed(12, 3))),
        def(
            MARIA_BLOB_COMPRESSED,
            &[2],
            MARIA_BLOB_COMPRESSED,
            2,
            &prefixed(2, b"c"),
        ),
        def(
            MARIA_VARCHAR_COMPRESSED,
            &[0x2c, 0x01],
            MARIA_VARCHAR_COMPRESSED,
            300,
            &prefixed(2, b"cv"),
        ),
        // CHAR(10) utf8mb4 = 40 bytes: 1-byte prefix, metadata (254, 40).
        def(STRING, &[STRING, 40], STRING, 40, &prefixed(1, b"short")),
        // CHAR(100) utf8mb4 = 400 bytes = 0x190: byte0 = 0xfe ^ 0x10.
        def(STRING, &[0xee, 0x90], STRING, 400, &prefixed(2, b"hello")),
        // CHAR(255) utf8mb4 = 1020 bytes = 0x3fc: byte0 = 0xfe ^ 0x30.
        def(
            STRING,
            &[0xce, 0xfc],
            STRING,
            1020,
            &prefixed(2, &long_text),
        ),
        // CHAR(255) latin1 = 255 bytes: still a 1-byte prefix.
        def(STRING, &[STRING, 255], STRING, 255, &prefixed(1, b"x")),
        def(STRING, &[ENUM, 1], ENUM, 1, &[2]),
        def(STRING, &[ENUM, 2], ENUM, 2, &[0x01, 0x01]),
        def(STRING, &[SET, 1], SET, 1, &[5]),
        def(STRING, &[SET, 8], SET, 8, &fixed(8, 200)),
        // ENUM announced directly as its own type code.
        def(ENUM, &[ENUM, 2], ENUM, 2, &[3, 0]),
    ]
}

fn table_map_body(table_id: u64, db: &str, table: &str, defs: &[Def], tlv: &[u8]) -> Vec<u8> {
    let mut b = table_id.to_le_bytes()[..6].to_vec();
    b.extend_from_slice(&1u16.to_le_bytes());
    for name in [db, table] {
        b.push(name.len() as u8);
        b.extend_from_slice(name.as_bytes());
        b.push(0);
    }
    b.extend(packed(defs.len()));
    b.extend(defs.iter().map(|d| d.ty));
    let meta: Vec<u8> = defs.iter().flat_map(|d| d.meta.clone()).collect();
    b.extend(packed(meta.len()));
    b.extend(meta);
    let mut nulls = vec![0u8; defs.len().div_ceil(8)];
    for (i, d) in defs.iter().enumerate() {
        if d.nullable {
            nulls[i / 8] |= 1 << (i % 8);
        }
    }
    b.extend(nulls);
    b.extend_from_slice(tlv);
    b
}

fn bitmap(n: usize, set: impl Fn(usize) -> bool) -> Vec<u8> {
    let mut v = vec![0u8; n.div_ceil(8)];
    for i in (0..n).filter(|i| set(*i)) {
        v[i / 8] |= 1 << (i % 8);
    }
    v
}

/// A row image: null bitmap over the present columns, then the non-null values.
fn image(values: &[Option<&[u8]>]) -> Vec<u8> {
    let mut v = bitmap(values.len(), |i| values[i].is_none());
    for x in values.iter().flatten() {
        v.extend_from_slice(x);
    }
    v
}

/// Rows-event body up to the images: table id, flags, v2 extra data, column
/// count, present bitmap(s).
fn rows_head(t: u8, n: usize, present: &[u8], after: Option<&[u8]>) -> Vec<u8> {
    let mut b = TABLE_ID.to_le_bytes()[..6].to_vec();
    b.extend_from_slice(&1u16.to_le_bytes());
    if matches!(
        t,
        types::WRITE_ROWS | types::UPDATE_ROWS | types::DELETE_ROWS
    ) {
        // Extra-data length counts its own two bytes; here 3 bytes of extra data.
        b.extend_from_slice(&5u16.to_le_bytes());
        b.extend_from_slice(&[1, 2, 3]);
    }
    b.extend(packed(n));
    b.extend_from_slice(present);
    if let Some(a) = after {
        b.extend_from_slice(a);
    }
    b
}

fn all(n: usize) -> Vec<u8> {
    bitmap(n, |_| true)
}

fn full_row(defs: &[Def]) -> Vec<Option<&[u8]>> {
    defs.iter().map(|d| Some(d.value.as_slice())).collect()
}

fn null_row(defs: &[Def]) -> Vec<Option<&[u8]>> {
    defs.iter()
        .map(|d| (!d.nullable).then_some(d.value.as_slice()))
        .collect()
}

fn map_of(defs: &[Def], ctx: &DecodeCtx) -> TableMap {
    let e = ev(
        types::TABLE_MAP,
        &table_map_body(TABLE_ID, "db", "t", defs, &[]),
        ctx,
    );
    decode_table_map(&e, ctx).unwrap()
}

fn decode_all<'a>(
    e: &'a [u8],
    map: &TableMap,
    ctx: &DecodeCtx,
) -> Result<Vec<Vec<Cell<'a>>>, DecodeError> {
    decode_rows(e, ctx)?.images(map)
}

#[test]
fn table_map_decodes_every_metadata_encoding() {
    let defs = every_type();
    for ctx in [PLAIN, CRC] {
        for tlv in [&[][..], &[1, 3, 0x01, 0x02, 0x03][..]] {
            let e = ev(
                types::TABLE_MAP,
                &table_map_body(TABLE_ID, "shop", "orders", &defs, tlv),
                &ctx,
            );
            let m = decode_table_map(&e, &ctx).unwrap();
            assert_eq!(m.table_id, TABLE_ID);
            assert_eq!((m.db.as_str(), m.table.as_str()), ("shop", "orders"));
            assert_eq!(m.columns.len(), defs.len());
            for (i, (c, d)) in m.columns.iter().zip(&defs).enumerate() {
                let want = Column {
                    type_code: d.real,
                    meta: d.decoded,
                    nullable: d.nullable,
                };
                assert_eq!(*c, want, "column {i}");
            }
        }
    }
    // Table ids of 4 bytes (ancient servers).
    let ctx4 = DecodeCtx {
        table_id_len: 4,
        ..PLAIN
    };
    let mut body = table_map_body(9, "a", "b", &defs[..3], &[]);
    body.drain(4..6);
    let m = decode_table_map(&ev(types::TABLE_MAP, &body, &ctx4), &ctx4).unwrap();
    assert_eq!((m.table_id, m.db.as_str(), m.columns.len()), (9, "a", 3));
}

#[test]
fn table_map_with_many_columns_uses_wide_counts() {
    // 300 columns: both the column count and the metadata length need the
    // 3-byte (252) length-encoded form.
    let defs: Vec<Def> = (0..300)
        .map(|_| def(col::VARCHAR, &[20, 0], col::VARCHAR, 20, &prefixed(1, b"v")))
        .collect();
    let m = map_of(&defs, &CRC);
    assert_eq!(m.columns.len(), 300);
    let row = full_row(&defs);
    let mut body = rows_head(types::WRITE_ROWS, 300, &all(300), None);
    body.extend(image(&row));
    let e = ev(types::WRITE_ROWS, &body, &CRC);
    let images = decode_all(&e, &m, &CRC).unwrap();
    assert_eq!(images.len(), 1);
    assert!(images[0].iter().all(|c| *c == Cell::Value(&[1, b'v'])));
}

#[test]
fn write_and_delete_images_split_every_width() {
    let defs = every_type();
    let n = defs.len();
    for ctx in [PLAIN, CRC] {
        let map = map_of(&defs, &ctx);
        for t in [
            types::WRITE_ROWS_V1,
            types::WRITE_ROWS,
            types::DELETE_ROWS_V1,
            types::DELETE_ROWS,
        ] {
            let mut body = rows_head(t, n, &all(n), None);
            body.extend(image(&full_row(&defs)));
            body.extend(image(&null_row(&defs)));
            body.extend(image(&full_row(&defs)));
            let e = ev(t, &body, &ctx);
            let rows = decode_rows(&e, &ctx).unwrap();
            let kind = if matches!(t, types::WRITE_ROWS_V1 | types::WRITE_ROWS) {
                RowsKind::Write
            } else {
                RowsKind::Delete
            };
            assert_eq!(
                (rows.kind, rows.table_id, rows.flags, rows.column_count),
                (kind, TABLE_ID, 1, n)
            );
            let images = rows.images(&map).unwrap();
            assert_eq!(images.len(), 3);
            for (i, d) in defs.iter().enumerate() {
                assert_eq!(images[0][i], Cell::Value(&d.value), "column {i}");
                assert_eq!(images[2][i], Cell::Value(&d.value), "column {i}");
                let want = if d.nullable {
                    Cell::Null
                } else {
                    Cell::Value(&d.value)
                };
                assert_eq!(images[1][i], want, "column {i}");
            }
            // The iterator yields the same images.
            let iterated: Vec<_> = rows
                .image_iter(&map)
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(iterated, images);
        }
    }
}

#[test]
fn update_before_and_after_images_with_minimal_row_image() {
    let defs = every_type();
    let n = defs.len();
    let ctx = CRC;
    let map = map_of(&defs, &ctx);
    // FULL: two rows, before then after for each.
    let mut body = rows_head(types::UPDATE_ROWS_V1, n, &all(n), Some(&all(n)));
    let mut changed = full_row(&defs);
    changed[18] = Some(b"\x03upd");
    for img in [
        full_row(&defs),
        changed.clone(),
        null_row(&defs),
        changed.clone(),
    ] {
        body.extend(image(&img));
    }
    let e = ev(types::UPDATE_ROWS_V1, &body, &ctx);
    let images = decode_all(&e, &map, &ctx).unwrap();
    assert_eq!(images.len(), 4);
    assert_eq!(images[0][18], Cell::Value(b"\x03abc"));
    assert_eq!(images[1][18], Cell::Value(b"\x03upd"));
    assert_eq!(images[2][18], Cell::Null);
    assert_eq!(images[3][18], Cell::Value(b"\x03upd"));

    // MINIMAL: the before image holds only the key (column 0), the after
    // image only the changed columns (1, 18 set to NULL, 41).
    let before = bitmap(n, |i| i == 0);
    let after = bitmap(n, |i| [1, 18, 41].contains(&i));
    let mut body = rows_head(types::UPDATE_ROWS, n, &before, Some(&after));
    body.extend(image(&[Some(&7i32.to_le_bytes())]));
    body.extend(image(&[Some(&[9]), None, Some(&[1, b'q'])]));
    body.extend(image(&[Some(&8i32.to_le_bytes())]));
    body.extend(image(&[None, Some(b"\x01r"), None]));
    let e = ev(types::UPDATE_ROWS, &body, &ctx);
    let images = decode_all(&e, &map, &ctx).unwrap();
    assert_eq!(images.len(), 4);
    for (k, img) in images.iter().enumerate() {
        assert_eq!(img.len(), n);
        for (i, c) in img.iter().enumerate() {
            let present = if k % 2 == 0 {
                i == 0
            } else {
                [1, 18, 41].contains(&i)
            };
            assert_eq!(*c != Cell::Absent, present, "image {k} column {i}");
        }
    }
    assert_eq!(images[0][0], Cell::Value(&7i32.to_le_bytes()));
    assert_eq!(images[1][1], Cell::Value(&[9]));
    assert_eq!(images[1][18], Cell::Null);
    assert_eq!(images[1][41], Cell::Value(&[1, b'q']));
    assert_eq!(images[2][0], Cell::Value(&8i32.to_le_bytes()));
    assert_eq!(images[3][1], Cell::Null);
    assert_eq!(images[3][18], Cell::Value(b"\x01r"));
    assert_eq!(images[3][41], Cell::Null);
}

#[test]
fn null_bitmap_counts_present_columns_only() {
    // 12 columns, 9 present: the null bitmap is 2 bytes (not 2 for 12 by
    // chance: use 16 columns with 8 present -> 1 byte).
    let defs: Vec<Def> = (0..16)
        .map(|_| def(col::TINY, &[], col::TINY, 0, &[1]))
        .collect();
    let map = map_of(&defs, &PLAIN);
    let present = bitmap(16, |i| i % 2 == 0);
    let mut body = rows_head(types::DELETE_ROWS_V1, 16, &present, None);
    let bytes: Vec<[u8; 1]> = (0..8u8).map(|j| [j]).collect();
    let vals: Vec<Option<&[u8]>> = bytes
        .iter()
        .enumerate()
        .map(|(j, b)| (j != 3).then_some(&b[..]))
        .collect();
    body.extend(image(&vals));
    assert_eq!(image(&vals).len(), 1 + 7);
    let e = ev(types::DELETE_ROWS_V1, &body, &PLAIN);
    let img = &decode_all(&e, &map, &PLAIN).unwrap()[0];
    assert_eq!(img[0], Cell::Value(&[0]));
    assert_eq!(img[1], Cell::Absent);
    assert_eq!(img[6], Cell::Null);
    assert_eq!(img[14], Cell::Value(&[7]));
}

/// Every valid test event, with its map.
fn samples(ctx: &DecodeCtx) -> Vec<(Vec<u8>, usize)> {
    let defs = every_type();
    let n = defs.len();
    let mut out = Vec::new();
    let mut w = rows_head(types::WRITE_ROWS, n, &all(n), None);
    w.extend(image(&full_row(&defs)));
    w.extend(image(&null_row(&defs)));
    out.push((types::WRITE_ROWS, w));
    let mut u = rows_head(types::UPDATE_ROWS_V1, n, &all(n), Some(&all(n)));
    u.extend(image(&null_row(&defs)));
    u.extend(image(&full_row(&defs)));
    out.push((types::UPDATE_ROWS_V1, u));
    let before = bitmap(n, |i| i == 0);
    let after = bitmap(n, |i| i == 19 || i == 33);
    let mut m = rows_head(types::UPDATE_ROWS, n, &before, Some(&after));
    m.extend(image(&[Some(&[1, 0, 0, 0])]));
    m.extend(image(&[Some(b"\x02\x00hi"), None]));
    out.push((types::UPDATE_ROWS, m));
    out.into_iter()
        .map(|(t, b)| {
            let head = match t {
                types::WRITE_ROWS => rows_head(t, n, &all(n), None).len(),
                _ => rows_head(t, n, &all(n), Some(&all(n))).len(),
            };
            (ev(t, &b, ctx), head)
        })
        .collect()
}

#[test]
fn every_truncation_is_an_error() {
    let defs = every_type();
    for ctx in [PLAIN, CRC] {
        let tm = ev(
            types::TABLE_MAP,
            &table_map_body(TABLE_ID, "db", "t", &defs, &[]),
            &ctx,
        );
        let map = decode_table_map(&tm, &ctx).unwrap();
        for k in 0..tm.len() {
            assert!(decode_table_map(&tm[..k], &ctx).is_err(), "prefix {k}");
        }
        // A shorter body under a consistent header (and CRC) too.
        let body = table_map_body(TABLE_ID, "db", "t", &defs, &[]);
        for k in 0..body.len() {
            let e = ev(types::TABLE_MAP, &body[..k], &ctx);
            assert!(decode_table_map(&e, &ctx).is_err(), "body {k}");
        }
        for (e, _) in samples(&ctx) {
            assert!(decode_all(&e, &map, &ctx).is_ok());
            for k in 0..e.len() {
                assert!(decode_all(&e[..k], &map, &ctx).is_err(), "prefix {k}");
            }
        }
    }
}

#[test]
fn shorter_rows_bodies_fail_unless_they_end_on_a_row() {
    let defs = every_type();
    let ctx = PLAIN;
    let map = map_of(&defs, &ctx);
    for (e, head) in samples(&ctx) {
        let t = e[4];
        let body = &e[HEADER_LEN..];
        let images = decode_all(&e, &map, &ctx).unwrap();
        // Body offsets where a whole row (UPDATE: before + after) ends.
        let mut ends = vec![head];
        let mut pos = head;
        for (k, img) in images.iter().enumerate() {
            let npresent = img.iter().filter(|c| **c != Cell::Absent).count();
            let values: usize = img
                .iter()
                .map(|c| match c {
                    Cell::Value(v) => v.len(),
                    _ => 0,
                })
                .sum();
            pos += npresent.div_ceil(8) + values;
            if (t != types::UPDATE_ROWS && t != types::UPDATE_ROWS_V1) || k % 2 == 1 {
                ends.push(pos);
            }
        }
        assert_eq!(pos, body.len());
        for k in 0..body.len() {
            let short = ev(t, &body[..k], &ctx);
            let r = decode_all(&short, &map, &ctx);
            if ends.contains(&k) {
                let got = r.unwrap_or_else(|err| panic!("body {k}: {err}"));
                let rows = ends.iter().position(|x| *x == k).unwrap_or(0);
                let per_row = if t == types::WRITE_ROWS { 1 } else { 2 };
                assert_eq!(got.len(), rows * per_row, "body {k}");
            } else {
                assert!(r.is_err(), "body {k}");
            }
        }
    }
}

#[test]
fn corrupted_events_never_panic() {
    let defs = every_type();
    let ctx = PLAIN;
    let map = map_of(&defs, &ctx);
    let tm = ev(
        types::TABLE_MAP,
        &table_map_body(TABLE_ID, "db", "t", &defs, &[]),
        &ctx,
    );
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut events: Vec<Vec<u8>> = samples(&ctx).into_iter().map(|(e, _)| e).collect();
    events.push(tm);
    for e in &events {
        for _ in 0..2000 {
            let mut m = e.clone();
            for _ in 0..1 + next() % 3 {
                let at = HEADER_LEN + (next() as usize) % (m.len() - HEADER_LEN);
                m[at] = next() as u8;
            }
            let _ = decode_table_map(&m, &ctx);
            let _ = decode_all(&m, &map, &ctx);
            if let Ok(fuzzed) = decode_table_map(&m, &ctx) {
                let _ = decode_rows(&events[0], &ctx).and_then(|r| r.images(&fuzzed));
            }
        }
    }
}

#[test]
fn rejects_what_it_cannot_decode() {
    let defs = every_type();
    let n = defs.len();
    let ctx = CRC;
    let map = map_of(&defs, &ctx);
    let mut body = rows_head(types::WRITE_ROWS_V1, n, &all(n), None);
    body.extend(image(&full_row(&defs)));

    // Compressed and partial-update rows events, and non-rows events.
    for t in [
        types::PARTIAL_UPDATE_ROWS,
        types::MARIA_WRITE_ROWS_COMPRESSED_V1,
        types::MARIA_UPDATE_ROWS_COMPRESSED_V1,
        types::MARIA_DELETE_ROWS_COMPRESSED_V1,
        types::MARIA_WRITE_ROWS_COMPRESSED,
        types::MARIA_UPDATE_ROWS_COMPRESSED,
        types::MARIA_DELETE_ROWS_COMPRESSED,
        types::TABLE_MAP,
        types::QUERY,
    ] {
        let err = decode_rows(&ev(t, &body, &ctx), &ctx).unwrap_err();
        assert_eq!(err.type_code, t);
    }
    assert!(decode_table_map(&ev(types::WRITE_ROWS_V1, &body, &ctx), &ctx).is_err());

    // Leftover bytes after the last image.
    let mut extra = body.clone();
    extra.push(0);
    let e = ev(types::WRITE_ROWS_V1, &extra, &ctx);
    assert!(decode_all(&e, &map, &ctx).is_err());

    // Wrong map: other table id, other column count.
    let e = ev(types::WRITE_ROWS_V1, &body, &ctx);
    let rows = decode_rows(&e, &ctx).unwrap();
    let mut other = map.clone();
    other.table_id += 1;
    assert!(rows.images(&other).is_err());
    let mut other = map.clone();
    other.columns.pop();
    assert!(rows.images(&other).is_err());

    // An UPDATE whose last row lacks its after image.
    let mut u = rows_head(types::UPDATE_ROWS, n, &all(n), Some(&all(n)));
    u.extend(image(&full_row(&defs)));
    let e = ev(types::UPDATE_ROWS, &u, &ctx);
    let rows = decode_rows(&e, &ctx).unwrap();
    assert!(rows.images(&map).is_err());
    let mut it = rows.image_iter(&map).unwrap();
    assert!(it.next().is_some_and(|r| r.is_ok()));
    assert!(it.next().is_some_and(|r| r.is_err()));
    assert!(it.next().is_none());

    // An image with no present column cannot be delimited.
    let mut z = rows_head(types::DELETE_ROWS_V1, n, &bitmap(n, |_| false), None);
    z.push(0);
    assert!(decode_all(&ev(types::DELETE_ROWS_V1, &z, &ctx), &map, &ctx).is_err());
    // ... but an empty one is just zero rows.
    z.pop();
    let e = ev(types::DELETE_ROWS_V1, &z, &ctx);
    assert_eq!(decode_all(&e, &map, &ctx).unwrap().len(), 0);

    // Extra-data length below its own size.
    let mut bad = rows_head(types::WRITE_ROWS, n, &all(n), None);
    bad[8..10].copy_from_slice(&1u16.to_le_bytes());
    assert!(decode_rows(&ev(types::WRITE_ROWS, &bad, &ctx), &ctx).is_err());
}

#[test]
fn rejects_unknown_types_and_bad_metadata() {
    let ctx = PLAIN;
    let pk = || {
        let mut d = def(col::LONG, &[], col::LONG, 0, &1i32.to_le_bytes());
        d.nullable = false;
        d
    };
    // Types whose metadata size is unknown fail the TABLE_MAP itself.
    for ty in [20u8, 100, 139, 142, 243, 244] {
        let defs = [pk(), def(ty, &[], ty, 0, &[])];
        let e = ev(
            types::TABLE_MAP,
            &table_map_body(TABLE_ID, "db", "t", &defs, &[]),
            &ctx,
        );
        assert!(decode_table_map(&e, &ctx).is_err(), "type {ty}");
    }
    // STRING metadata whose real type is not CHAR, ENUM or SET.
    for meta in [[col::VAR_STRING, 9], [col::BLOB, 1], [0x3f, 0]] {
        let defs = [pk(), def(col::STRING, &meta, 0, 0, &[])];
        let e = ev(
            types::TABLE_MAP,
            &table_map_body(TABLE_ID, "db", "t", &defs, &[]),
            &ctx,
        );
        assert!(decode_table_map(&e, &ctx).is_err(), "{meta:?}");
    }
    // Metadata block longer or shorter than the types use.
    for meta in [vec![40u8], vec![40, 0, 0]] {
        let defs = [pk(), def(col::VARCHAR, &meta, 0, 0, &[])];
        let e = ev(
            types::TABLE_MAP,
            &table_map_body(TABLE_ID, "db", "t", &defs, &[]),
            &ctx,
        );
        assert!(decode_table_map(&e, &ctx).is_err());
    }
    // Names must be NUL-terminated.
    let mut body = table_map_body(TABLE_ID, "db", "t", &[pk()], &[]);
    body[8 + 1 + 2] = b'x';
    assert!(decode_table_map(&ev(types::TABLE_MAP, &body, &ctx), &ctx).is_err());

    // Known metadata layout but values that cannot be delimited: the old
    // DECIMAL (only when a value is met), invalid metadata (always).
    let cases: Vec<(Def, bool)> = vec![
        (def(col::DECIMAL, &[], col::DECIMAL, 0, &[1]), false),
        (
            def(col::STRING, &[col::ENUM, 3], col::ENUM, 3, &[1, 2, 3]),
            true,
        ),
        (def(col::STRING, &[col::SET, 9], col::SET, 9, &[0; 9]), true),
        (def(col::STRING, &[col::SET, 0], col::SET, 0, &[]), true),
        (def(col::BLOB, &[5], col::BLOB, 5, &[0; 5]), true),
        (def(col::BLOB, &[0], col::BLOB, 0, &[]), true),
        (def(col::TIME2, &[7], col::TIME2, 7, &[0; 7]), true),
        (def(col::BIT, &[8, 1], col::BIT, 0x108, &[0; 2]), true),
        (def(col::NEWDECIMAL, &[0, 0], col::NEWDECIMAL, 0, &[]), true),
        (
            def(col::NEWDECIMAL, &[2, 3], col::NEWDECIMAL, 0x0203, &[0; 2]),
            true,
        ),
        (def(col::FLOAT, &[3], col::FLOAT, 3, &[0; 3]), true),
    ];
    for (d, fails_when_null) in cases {
        let label = format!("type {} meta {:?}", d.ty, d.meta);
        let defs = [pk(), d];
        let map = map_of(&defs, &ctx);
        let mut body = rows_head(types::WRITE_ROWS_V1, 2, &all(2), None);
        body.extend(image(&full_row(&defs)));
        let e = ev(types::WRITE_ROWS_V1, &body, &ctx);
        assert!(decode_all(&e, &map, &ctx).is_err(), "{label}");
        let mut body = rows_head(types::WRITE_ROWS_V1, 2, &all(2), None);
        body.extend(image(&null_row(&defs)));
        let e = ev(types::WRITE_ROWS_V1, &body, &ctx);
        assert_eq!(
            decode_all(&e, &map, &ctx).is_err(),
            fails_when_null,
            "{label}"
        );
    }
}

#[test]
fn decimal_sizes_follow_the_server_table() {
    for (p, s, bytes) in [
        (1, 0, 1),
        (9, 0, 4),
        (10, 0, 5),
        (10, 2, 5),
        (18, 9, 8),
        (30, 10, 14),
        (65, 30, 30),
        (65, 0, 29),
        (4, 4, 2),
    ] {
        assert_eq!(decimal_bin_size(p, s), bytes, "DECIMAL({p},{s})");
    }
}

/// Best-of-five time to decode a 1000-row WRITE event of `defs` (every third row NULLs).
fn time_thousand_rows(defs: &[Def]) -> (std::time::Duration, usize) {
    let n = defs.len();
    let map = map_of(defs, &CRC);
    let mut body = rows_head(types::WRITE_ROWS, n, &all(n), None);
    let (nulls, full) = (image(&null_row(defs)), image(&full_row(defs)));
    for i in 0..1000 {
        body.extend_from_slice(if i % 3 == 0 { &nulls } else { &full });
    }
    let e = ev(types::WRITE_ROWS, &body, &CRC);
    let mut best = std::time::Duration::MAX;
    for _ in 0..5 {
        let start = std::time::Instant::now();
        let images = decode_all(&e, &map, &CRC).unwrap();
        best = best.min(start.elapsed());
        assert_eq!(images.len(), 1000);
        assert!(images.iter().all(|img| img.len() == n));
    }
    (best, e.len())
}

#[test]
fn a_thousand_rows_decode_quickly() {
    let wide = every_type();
    // A typical narrow table: INT key, TINYINT, BIGINT, DATETIME(6), VARCHAR(10), DECIMAL(10,2).
    let narrow: Vec<Def> = every_type()
        .into_iter()
        .enumerate()
        .filter(|(i, _)| [0, 1, 4, 15, 18, 25].contains(i))
        .map(|(_, d)| d)
        .collect();
    for defs in [narrow, wide] {
        let (elapsed, size) = time_thousand_rows(&defs);
        // Generous bound: unoptimized builds on a busy machine.
        assert!(elapsed.as_millis() < 500, "{elapsed:?}");
        eprintln!(
            "1000 rows x {} columns ({size} bytes): {elapsed:?}",
            defs.len()
        );
    }
}
