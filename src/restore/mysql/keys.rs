//! The rows a transaction changes, as hashes of their unique-key values:
//! two transactions whose hashes do not meet change no common row and may
//! be applied in either order (see [`super::parallel`]).
//!
//! For each table a transaction's rows events touch, the target server is
//! asked (once, until the next transaction that runs alone) for the
//! table's engine, column count, foreign keys and unique indexes
//! (`information_schema`). Every row image (before and after images of
//! updates) then gives, for each unique index whose columns are all
//! non-NULL, one hash of (schema, table, index, key values).
//!
//! Values are compared as the server would compare them only where that is
//! certain: integer, decimal, temporal, `BINARY`/`VARBINARY`, `BIT`, `ENUM`
//! and `SET` columns by their bytes; `CHAR`/`VARCHAR` columns in any
//! collation only when the value is printable ASCII, folded to lower case
//! without trailing spaces (so values that a case-insensitive or PAD SPACE
//! collation finds equal hash alike; any other byte, which an accent- or
//! width-insensitive collation might equate, makes the transaction run
//! alone). The transaction runs alone (`None`) when any table has no unique
//! index, a foreign key (either side), a non-InnoDB engine, a prefix,
//! expression, float, text/blob or JSON key column, a column count other
//! than the TABLE_MAP's, or when an image lacks a key column (minimal row
//! images) or cannot be decoded, and when it changes more than
//! [`MAX_KEYS`] key values.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use bytes::Bytes;
use pitr_mysql::conn::Conn;
use pitr_mysql::event::{types, DecodeCtx, EventHeader};
use pitr_mysql::rows::{decode_rows, decode_table_map, Cell, TableMap};

use crate::backup::mysql::dump::{q, sql_str};

/// Key hashes kept for one transaction; a bigger one runs alone (its
/// writeset would cost more memory than its parallelism is worth).
const MAX_KEYS: usize = 1 << 18;

/// How a key column's value is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compare {
    /// By its bytes.
    Bytes,
    /// `CHAR`/`VARCHAR`: printable ASCII, case-folded, trailing spaces cut.
    Text,
}

/// What the target says about one table.
#[derive(Debug)]
enum TableKeys {
    Keys {
        /// Hash of (schema, table).
        table: u64,
        columns: usize,
        /// Unique indexes: (column index, comparison) per key part.
        uniques: Vec<Vec<(usize, Compare)>>,
    },
    /// Transactions touching it run alone.
    Alone,
}

/// Unique-key information of the target's tables, read on first use.
pub(super) struct KeyCache {
    conn: Conn,
    tables: HashMap<(String, String), Arc<TableKeys>>,
}

impl KeyCache {
    pub(super) fn new(conn: Conn) -> KeyCache {
        KeyCache {
            conn,
            tables: HashMap::new(),
        }
    }

    /// Forgets what was read (after a transaction that may have changed tables).
    pub(super) fn clear(&mut self) {
        self.tables.clear();
    }

    pub(super) async fn shutdown(self) {
        self.conn.shutdown().await;
    }

    /// The key hashes of a transaction's row changes; `None`: it must run
    /// alone (see the module docs).
    pub(super) async fn writeset(&mut self, events: &[Bytes], ctx: &DecodeCtx) -> Option<Vec<u64>> {
        let mut maps: HashMap<u64, (TableMap, Arc<TableKeys>)> = HashMap::new();
        let mut out = Vec::new();
        for ev in events {
            let header = EventHeader::parse(ev).ok()?;
            match header.type_code {
                types::TABLE_MAP => {
                    let map = decode_table_map(ev, ctx).ok()?;
                    let keys = self.table(&map.db, &map.table).await;
                    maps.insert(map.table_id, (map, keys));
                }
                t if types::is_plain_rows(t) => {
                    let rows = decode_rows(ev, ctx).ok()?;
                    let (map, keys) = maps.get(&rows.table_id)?;
                    let TableKeys::Keys {
                        table,
                        columns,
                        uniques,
                    } = keys.as_ref()
                    else {
                        return None;
                    };
                    if map.columns.len() != *columns || rows.column_count != *columns {
                        return None;
                    }
                    let mut images = rows.image_iter(map).ok()?;
                    let mut cells = Vec::with_capacity(*columns);
                    while images.next_into(&mut cells).ok()? {
                        image_keys(*table, uniques, &cells, &mut out)?;
                    }
                    if out.len() > MAX_KEYS {
                        return None;
                    }
                }
                // Only row-change transactions come here (see `apply`):
                // GTID, BEGIN/COMMIT, XID and annotations carry no rows.
                _ => {}
            }
        }
        Some(out)
    }

    /// The target's key information for a table (read once).
    async fn table(&mut self, db: &str, table: &str) -> Arc<TableKeys> {
        let k = (db.to_string(), table.to_string());
        if let Some(t) = self.tables.get(&k) {
            return t.clone();
        }
        let t = Arc::new(
            read_table(&mut self.conn, db, table)
                .await
                .unwrap_or(TableKeys::Alone),
        );
        self.tables.insert(k, t.clone());
        t
    }
}

/// Adds the key hashes of one row image; `None` when a key column is
/// missing or not comparable.
fn image_keys(
    table: u64,
    uniques: &[Vec<(usize, Compare)>],
    image: &[Cell<'_>],
    out: &mut Vec<u64>,
) -> Option<()> {
    'index: for (i, parts) in uniques.iter().enumerate() {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (table, i).hash(&mut h);
        for (col, cmp) in parts {
            match image.get(*col)? {
                Cell::Absent => return None,
                // NULLs never collide in a unique index.
                Cell::Null => continue 'index,
                Cell::Value(v) => match cmp {
                    Compare::Bytes => v.hash(&mut h),
                    Compare::Text => fold_text(v)?.hash(&mut h),
                },
            }
        }
        out.push(h.finish());
    }
    Some(())
}

/// A `CHAR`/`VARCHAR` image value (1- or 2-byte length prefix) as compared
/// by any collation: `None` unless printable ASCII; lower case, trailing
/// spaces cut.
fn fold_text(v: &[u8]) -> Option<Vec<u8>> {
    let body = match v {
        [n, rest @ ..] if usize::from(*n) == rest.len() => rest,
        [lo, hi, rest @ ..] if usize::from(u16::from_le_bytes([*lo, *hi])) == rest.len() => rest,
        _ => return None,
    };
    if !body.iter().all(|b| (0x20..0x7f).contains(b)) {
        return None;
    }
    let end = body.iter().rposition(|b| *b != b' ').map_or(0, |p| p + 1);
    Some(body[..end].to_ascii_lowercase())
}

/// Reads a table's engine, columns, foreign keys and unique indexes.
async fn read_table(conn: &mut Conn, db: &str, table: &str) -> anyhow::Result<TableKeys> {
    let (sdb, stable) = (sql_str(db), sql_str(table));
    let info = q(
        conn,
        &format!(
            "SELECT t.ENGINE, \
               (SELECT COUNT(*) FROM information_schema.COLUMNS c \
                 WHERE c.TABLE_SCHEMA = t.TABLE_SCHEMA AND c.TABLE_NAME = t.TABLE_NAME), \
               (SELECT COUNT(*) FROM information_schema.REFERENTIAL_CONSTRAINTS r \
                 WHERE (r.CONSTRAINT_SCHEMA = t.TABLE_SCHEMA AND r.TABLE_NAME = t.TABLE_NAME) \
                    OR (r.UNIQUE_CONSTRAINT_SCHEMA = t.TABLE_SCHEMA AND r.REFERENCED_TABLE_NAME = t.TABLE_NAME)) \
             FROM information_schema.TABLES t \
             WHERE t.TABLE_SCHEMA = {sdb} AND t.TABLE_NAME = {stable}"
        ),
    )
    .await?;
    let Some(row) = info.into_iter().next() else {
        return Ok(TableKeys::Alone);
    };
    let col = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
    let (engine, columns, fks) = (col(0), col(1), col(2));
    let columns: usize = columns.parse().unwrap_or(0);
    if !engine.eq_ignore_ascii_case("InnoDB") || fks != "0" || columns == 0 {
        return Ok(TableKeys::Alone);
    }
    let parts = q(
        conn,
        &format!(
            "SELECT s.INDEX_NAME, c.ORDINAL_POSITION, s.SUB_PART, LOWER(c.DATA_TYPE) \
             FROM information_schema.STATISTICS s \
             LEFT JOIN information_schema.COLUMNS c \
               ON c.TABLE_SCHEMA = s.TABLE_SCHEMA AND c.TABLE_NAME = s.TABLE_NAME \
              AND c.COLUMN_NAME = s.COLUMN_NAME \
             WHERE s.TABLE_SCHEMA = {sdb} AND s.TABLE_NAME = {stable} AND s.NON_UNIQUE = 0 \
             ORDER BY s.INDEX_NAME, s.SEQ_IN_INDEX"
        ),
    )
    .await?;
    let mut uniques: Vec<(String, Vec<(usize, Compare)>)> = Vec::new();
    for r in parts {
        let f = |i: usize| r.get(i).cloned().flatten();
        let name = f(0).unwrap_or_default();
        let Some(pos) = f(1).and_then(|p| p.parse::<usize>().ok()) else {
            // An expression (functional) index part.
            return Ok(TableKeys::Alone);
        };
        if f(2).is_some() || pos == 0 || pos > columns {
            // A prefix of the column is indexed.
            return Ok(TableKeys::Alone);
        }
        let Some(cmp) = compare_for(&f(3).unwrap_or_default()) else {
            return Ok(TableKeys::Alone);
        };
        match uniques.last_mut() {
            Some((n, p)) if *n == name => p.push((pos - 1, cmp)),
            _ => uniques.push((name, vec![(pos - 1, cmp)])),
        }
    }
    if uniques.is_empty() {
        return Ok(TableKeys::Alone);
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (db, table).hash(&mut h);
    Ok(TableKeys::Keys {
        table: h.finish(),
        columns,
        uniques: uniques.into_iter().map(|(_, p)| p).collect(),
    })
}

/// How a key column of this `DATA_TYPE` is compared; `None`: not safely.
fn compare_for(data_type: &str) -> Option<Compare> {
    match data_type {
        "tinyint" | "smallint" | "mediumint" | "int" | "bigint" | "decimal" | "date" | "time"
        | "datetime" | "timestamp" | "year" | "binary" | "varbinary" | "bit" | "enum" | "set" => {
            Some(Compare::Bytes)
        }
        "char" | "varchar" => Some(Compare::Text),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_keys_fold_like_any_collation_or_refuse() {
        assert_eq!(fold_text(b"\x03AbC").unwrap(), b"abc");
        assert_eq!(fold_text(b"\x05abc  ").unwrap(), b"abc");
        assert_eq!(fold_text(b"\x05abc  "), fold_text(b"\x03ABC"));
        assert_eq!(fold_text(b"\x00").unwrap(), b"");
        // Two-byte length prefix.
        let mut long = vec![0x2c, 0x01];
        long.extend(std::iter::repeat_n(b'x', 300));
        assert_eq!(fold_text(&long).unwrap().len(), 300);
        // Bytes an accent- or width-insensitive collation might equate.
        assert!(fold_text(b"\x02\xc3\xa9").is_none());
        assert!(fold_text(b"\x02a\x01").is_none());
        // A length prefix that does not fit.
        assert!(fold_text(b"\x09abc").is_none());
    }

    #[test]
    fn key_hashes_per_unique_index_and_nulls() {
        let uniques = vec![
            vec![(0, Compare::Bytes)],
            vec![(1, Compare::Text), (2, Compare::Bytes)],
        ];
        let row = [
            Cell::Value(&[1, 0, 0, 0][..]),
            Cell::Value(&b"\x01A"[..]),
            Cell::Value(&[7][..]),
        ];
        let mut a = Vec::new();
        image_keys(11, &uniques, &row, &mut a).unwrap();
        assert_eq!(a.len(), 2);
        // Same key values in another case: the same hashes.
        let same = [
            Cell::Value(&[1, 0, 0, 0][..]),
            Cell::Value(&b"\x01a"[..]),
            Cell::Value(&[7][..]),
        ];
        let mut b = Vec::new();
        image_keys(11, &uniques, &same, &mut b).unwrap();
        assert_eq!(a, b);
        // Another table: other hashes.
        let mut c = Vec::new();
        image_keys(12, &uniques, &row, &mut c).unwrap();
        assert!(a.iter().all(|h| !c.contains(h)));
        // A NULL key part: that index gives no hash.
        let null = [
            Cell::Value(&[2, 0, 0, 0][..]),
            Cell::Null,
            Cell::Value(&[7][..]),
        ];
        let mut d = Vec::new();
        image_keys(11, &uniques, &null, &mut d).unwrap();
        assert_eq!(d.len(), 1);
        // A key column missing from the image: cannot tell.
        let minimal = [Cell::Value(&[2, 0, 0, 0][..]), Cell::Absent, Cell::Absent];
        assert!(image_keys(11, &uniques, &minimal, &mut d).is_none());
    }

    #[test]
    fn only_exactly_comparable_types_are_keys() {
        assert_eq!(compare_for("bigint"), Some(Compare::Bytes));
        assert_eq!(compare_for("varchar"), Some(Compare::Text));
        for t in ["float", "double", "text", "blob", "json", "geometry"] {
            assert_eq!(compare_for(t), None, "{t}");
        }
    }
}
