//! Reading a MySQL/MariaDB snapshot: the schema (`SHOW CREATE ...` of every
//! user database) and each table's rows as SQL `INSERT` lines, written as
//! zstd streams cut into parts (formats in [`super::manifest`]).
//!
//! Values travel through the text protocol: numbers, `DECIMAL` and `YEAR`
//! as the server prints them; `DATE`/`TIME`/`DATETIME`/`TIMESTAMP` quoted
//! (sessions use `time_zone='+00:00'`, so `TIMESTAMP` is exact); `BIT` as
//! its integer value; everything else (strings, binary, `ENUM`/`SET`,
//! spatial, JSON) as `HEX()` on the way out and `X'..'` on the way in, which
//! is binary-exact whatever the column's character set (MySQL `JSON` is
//! wrapped in `CONVERT(X'..' USING utf8mb4)`). Generated columns are left out.
//!
//! Rows are read in chunks: by keyset (`WHERE pk > last ORDER BY pk LIMIT
//! n`) when the primary key is one integer column, by `ORDER BY pk LIMIT n
//! OFFSET k` for other primary keys, and in one query for tables without a
//! primary key (held in memory: such tables should be small).

use anyhow::{anyhow, Context as _};
use pitr_mysql::conn::{Conn, TextRow};
use pitr_mysql::replay::quote_ident;

use crate::backup::mysql::manifest::{DatabaseSchema, SchemaObject, TableData};
use crate::backup::parts::Stream;
use crate::backup::parts::StreamWriter;

/// Rows per chunk query.
const CHUNK_ROWS: usize = 5000;
/// Largest INSERT statement we write (well under max_allowed_packet).
const MAX_STATEMENT: usize = 1 << 20;

/// Databases never backed up.
pub const SYSTEM_DATABASES: [&str; 4] =
    ["mysql", "sys", "information_schema", "performance_schema"];

/// Runs a query, as an error naming the statement on failure.
pub async fn q(conn: &mut Conn, sql: &str) -> anyhow::Result<Vec<TextRow>> {
    conn.query(sql).await.map_err(|e| {
        let short: String = sql.chars().take(120).collect();
        anyhow!("{e} (while running: {short})")
    })
}

/// The first column of the first row.
pub async fn q1(conn: &mut Conn, sql: &str) -> anyhow::Result<Option<String>> {
    Ok(q(conn, sql)
        .await?
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next().flatten()))
}

/// A single-quoted SQL string literal (backslashes escaped too).
pub fn sql_str(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

fn cell(row: &TextRow, i: usize) -> String {
    row.get(i).cloned().flatten().unwrap_or_default()
}

/// Reads the schema of every user database.
pub async fn read_schema(conn: &mut Conn) -> anyhow::Result<Vec<DatabaseSchema>> {
    let mut out = Vec::new();
    let dbs = q(
        conn,
        "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA ORDER BY SCHEMA_NAME",
    )
    .await?;
    for row in dbs {
        let db = cell(&row, 0);
        if SYSTEM_DATABASES.contains(&db.to_ascii_lowercase().as_str()) {
            continue;
        }
        let qdb = quote_ident(&db);
        let create = cell(
            &q(conn, &format!("SHOW CREATE DATABASE {qdb}"))
                .await?
                .remove_first()?,
            1,
        );
        let mut objects = Vec::new();
        let tables = q(
            conn,
            &format!(
                "SELECT TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA={} ORDER BY TABLE_NAME",
                sql_str(&db)
            ),
        )
        .await?;
        let mut views = Vec::new();
        for t in tables {
            let (name, ty) = (cell(&t, 0), cell(&t, 1));
            let qn = format!("{qdb}.{}", quote_ident(&name));
            if ty == "VIEW" {
                let r = q(conn, &format!("SHOW CREATE VIEW {qn}"))
                    .await?
                    .remove_first()?;
                views.push(SchemaObject {
                    name,
                    kind: "view".into(),
                    sql_mode: None,
                    create: cell(&r, 1),
                    character_set_client: Some(cell(&r, 2)).filter(|c| !c.is_empty()),
                    collation_connection: Some(cell(&r, 3)).filter(|c| !c.is_empty()),
                });
                continue;
            }
            let r = q(conn, &format!("SHOW CREATE TABLE {qn}"))
                .await?
                .remove_first()?;
            objects.push(SchemaObject {
                name,
                kind: if ty == "SEQUENCE" {
                    "sequence"
                } else {
                    "table"
                }
                .into(),
                sql_mode: None,
                create: cell(&r, 1),
                character_set_client: None,
                collation_connection: None,
            });
        }
        objects.extend(views);
        let routines = q(
            conn,
            &format!(
                "SELECT ROUTINE_NAME, ROUTINE_TYPE FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA={} ORDER BY ROUTINE_TYPE, ROUTINE_NAME",
                sql_str(&db)
            ),
        )
        .await?;
        for r in routines {
            let (name, ty) = (cell(&r, 0), cell(&r, 1).to_ascii_uppercase());
            if ty != "PROCEDURE" && ty != "FUNCTION" {
                continue;
            }
            let row = q(
                conn,
                &format!("SHOW CREATE {ty} {qdb}.{}", quote_ident(&name)),
            )
            .await?
            .remove_first()?;
            objects.push(SchemaObject {
                name,
                kind: ty.to_ascii_lowercase(),
                sql_mode: Some(cell(&row, 1)),
                create: cell(&row, 2),
                character_set_client: Some(cell(&row, 3)).filter(|c| !c.is_empty()),
                collation_connection: Some(cell(&row, 4)).filter(|c| !c.is_empty()),
            });
        }
        let triggers = q(
            conn,
            &format!(
                "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA={} ORDER BY EVENT_OBJECT_TABLE, ACTION_ORDER",
                sql_str(&db)
            ),
        )
        .await?;
        for t in triggers {
            let name = cell(&t, 0);
            let row = q(
                conn,
                &format!("SHOW CREATE TRIGGER {qdb}.{}", quote_ident(&name)),
            )
            .await?
            .remove_first()?;
            objects.push(SchemaObject {
                name,
                kind: "trigger".into(),
                sql_mode: Some(cell(&row, 1)),
                create: cell(&row, 2),
                character_set_client: Some(cell(&row, 3)).filter(|c| !c.is_empty()),
                collation_connection: Some(cell(&row, 4)).filter(|c| !c.is_empty()),
            });
        }
        out.push(DatabaseSchema {
            name: db,
            create,
            objects,
        });
    }
    Ok(out)
}

trait RemoveFirst {
    fn remove_first(self) -> anyhow::Result<TextRow>;
}

impl RemoveFirst for Vec<TextRow> {
    fn remove_first(self) -> anyhow::Result<TextRow> {
        self.into_iter()
            .next()
            .ok_or_else(|| anyhow!("the server returned no row for a SHOW CREATE statement"))
    }
}

/// How a column travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColKind {
    /// Printed by the server, inserted unquoted (numbers).
    Plain,
    /// Printed by the server, inserted quoted (temporal types).
    Quoted,
    /// `col+0`, inserted unquoted.
    Bit,
    /// `HEX(col)`, inserted as `X'..'`.
    Hex,
    /// MySQL JSON: `HEX(col)`, inserted as `CONVERT(X'..' USING utf8mb4)`.
    HexJson,
}

/// Classifies an `information_schema.COLUMNS.DATA_TYPE`.
pub fn col_kind(data_type: &str, mysql_flavor: bool) -> ColKind {
    match data_type.to_ascii_lowercase().as_str() {
        "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" | "decimal"
        | "numeric" | "float" | "double" | "real" | "year" => ColKind::Plain,
        "date" | "time" | "datetime" | "timestamp" => ColKind::Quoted,
        "bit" => ColKind::Bit,
        "json" if mysql_flavor => ColKind::HexJson,
        _ => ColKind::Hex,
    }
}

/// Appends one value as an SQL literal.
pub fn push_literal(out: &mut String, kind: ColKind, v: Option<&str>) {
    let Some(v) = v else {
        out.push_str("NULL");
        return;
    };
    match kind {
        ColKind::Plain | ColKind::Bit => out.push_str(v),
        ColKind::Quoted => out.push_str(&sql_str(v)),
        ColKind::Hex => {
            out.push_str("X'");
            out.push_str(v);
            out.push('\'');
        }
        ColKind::HexJson => {
            out.push_str("CONVERT(X'");
            out.push_str(v);
            out.push_str("' USING utf8mb4)");
        }
    }
}

/// What to dump of one table.
#[derive(Debug, Clone)]
pub struct TableJob {
    pub index: usize,
    pub db: String,
    pub name: String,
}

/// Dumps one table through `conn` (inside its consistent snapshot).
pub async fn dump_table(
    conn: &mut Conn,
    job: &TableJob,
    mysql_flavor: bool,
    w: &mut StreamWriter<'_>,
) -> anyhow::Result<TableData> {
    let cols = q(
        conn,
        &format!(
            "SELECT COLUMN_NAME, DATA_TYPE, EXTRA FROM information_schema.COLUMNS WHERE TABLE_SCHEMA={} AND TABLE_NAME={} ORDER BY ORDINAL_POSITION",
            sql_str(&job.db),
            sql_str(&job.name)
        ),
    )
    .await?;
    let cols: Vec<(String, ColKind)> = cols
        .iter()
        .filter(|c| !cell(c, 2).to_ascii_uppercase().contains("GENERATED"))
        .map(|c| (cell(c, 0), col_kind(&cell(c, 1), mysql_flavor)))
        .collect();
    if cols.is_empty() {
        return Err(anyhow!(
            "table {}.{} has no columns to dump",
            job.db,
            job.name
        ));
    }
    let pk: Vec<String> = q(
        conn,
        &format!(
            "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE WHERE TABLE_SCHEMA={} AND TABLE_NAME={} AND CONSTRAINT_NAME='PRIMARY' ORDER BY ORDINAL_POSITION",
            sql_str(&job.db),
            sql_str(&job.name)
        ),
    )
    .await?
    .iter()
    .map(|r| cell(r, 0))
    .collect();
    let select: Vec<String> = cols
        .iter()
        .map(|(c, k)| match k {
            ColKind::Plain | ColKind::Quoted => quote_ident(c),
            ColKind::Bit => format!("{}+0", quote_ident(c)),
            ColKind::Hex | ColKind::HexJson => format!("HEX({})", quote_ident(c)),
        })
        .collect();
    let from = format!("{}.{}", quote_ident(&job.db), quote_ident(&job.name));
    let head = format!(
        "INSERT INTO {} ({}) VALUES ",
        quote_ident(&job.name),
        cols.iter()
            .map(|(c, _)| quote_ident(c))
            .collect::<Vec<_>>()
            .join(",")
    );
    let keyset = match pk.as_slice() {
        [one] => cols
            .iter()
            .position(|(c, k)| c == one && *k == ColKind::Plain)
            .map(|i| (i, quote_ident(one))),
        _ => None,
    };
    let order = pk
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(",");
    let sel = select.join(",");
    let mut rows_total = 0u64;
    let mut stmt = String::new();
    let mut last: Option<String> = None;
    let mut offset = 0usize;
    loop {
        let sql = match (&keyset, pk.is_empty()) {
            (Some((_, k)), _) => match &last {
                Some(l) => format!(
                    "SELECT {sel} FROM {from} WHERE {k} > {l} ORDER BY {k} LIMIT {CHUNK_ROWS}"
                ),
                None => format!("SELECT {sel} FROM {from} ORDER BY {k} LIMIT {CHUNK_ROWS}"),
            },
            (None, false) => {
                format!(
                    "SELECT {sel} FROM {from} ORDER BY {order} LIMIT {CHUNK_ROWS} OFFSET {offset}"
                )
            }
            (None, true) => format!("SELECT {sel} FROM {from}"),
        };
        let rows = q(conn, &sql)
            .await
            .with_context(|| format!("dumping {}.{}", job.db, job.name))?;
        let n = rows.len();
        for row in &rows {
            let mut lit = String::from("(");
            for (i, (_, kind)) in cols.iter().enumerate() {
                if i > 0 {
                    lit.push(',');
                }
                push_literal(&mut lit, *kind, row.get(i).and_then(|v| v.as_deref()));
            }
            lit.push(')');
            if !stmt.is_empty() && stmt.len() + lit.len() + 2 > MAX_STATEMENT {
                stmt.push('\n');
                w.write(stmt.as_bytes()).await?;
                stmt.clear();
            }
            if stmt.is_empty() {
                stmt.push_str(&head);
            } else {
                stmt.push(',');
            }
            stmt.push_str(&lit);
        }
        rows_total += n as u64;
        if let (Some((i, _)), Some(row)) = (&keyset, rows.last()) {
            last = row.get(*i).cloned().flatten();
        }
        offset += n;
        if pk.is_empty() || n < CHUNK_ROWS {
            break;
        }
        if keyset.is_some() && last.is_none() {
            return Err(anyhow!("{}.{}: NULL in the primary key", job.db, job.name));
        }
    }
    if !stmt.is_empty() {
        stmt.push('\n');
        w.write(stmt.as_bytes()).await?;
    }
    Ok(TableData {
        db: job.db.clone(),
        name: job.name.clone(),
        columns: cols.into_iter().map(|(c, _)| c).collect(),
        rows: rows_total,
        data: Stream {
            name: String::new(),
            size: 0,
            sha256: String::new(),
            parts: Vec::new(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_per_kind() {
        let mut s = String::new();
        for (k, v) in [
            (ColKind::Plain, Some("-12.50")),
            (ColKind::Quoted, Some("2024-01-02 03:04:05.000006")),
            (ColKind::Hex, Some("00FF27")),
            (ColKind::Hex, Some("")),
            (ColKind::HexJson, Some("7B7D")),
            (ColKind::Bit, Some("5")),
            (ColKind::Hex, None),
        ] {
            push_literal(&mut s, k, v);
            s.push(',');
        }
        assert_eq!(
            s,
            "-12.50,'2024-01-02 03:04:05.000006',X'00FF27',X'',CONVERT(X'7B7D' USING utf8mb4),5,NULL,"
        );
        assert_eq!(sql_str("it's a \\ test"), "'it''s a \\\\ test'");
    }

    #[test]
    fn kinds() {
        assert_eq!(col_kind("BIGINT", false), ColKind::Plain);
        assert_eq!(col_kind("datetime", false), ColKind::Quoted);
        assert_eq!(col_kind("json", true), ColKind::HexJson);
        assert_eq!(col_kind("json", false), ColKind::Hex);
        assert_eq!(col_kind("varchar", false), ColKind::Hex);
        assert_eq!(col_kind("bit", false), ColKind::Bit);
    }
}
