//! Sans-IO decoding of TABLE_MAP events and of the row images inside rows
//! events (WRITE / UPDATE / DELETE, v1 and v2, MySQL and MariaDB), down to
//! the bytes of each column value. Values are not interpreted: each cell is
//! the column's bytes exactly as the server stored them, so that equal
//! values give equal bytes (enough to compare primary / unique keys).
//!
//! # TABLE_MAP (type 19)
//!
//! ```text
//! header (19) | table_id (6, or 4 on ancient servers) | flags u16
//! | db_len u8 | db | NUL | table_len u8 | table | NUL
//! | column_count (length-encoded int) | column types [column_count]
//! | metadata_len (length-encoded int) | metadata [metadata_len]
//! | null bitmap [(column_count + 7) / 8]   (bit i set: column i nullable)
//! | optional TLV metadata (ignored) | CRC32 (4, when checksums are on)
//! ```
//!
//! The metadata block holds 0, 1 or 2 bytes per column depending on its type
//! (they must add up to `metadata_len`). [`Column::meta`] keeps them as the
//! value-width rules (`calc_field_size` of the servers) need them:
//!
//! | type (code)                                  | meta bytes | `meta`                 | value bytes in an image          |
//! |----------------------------------------------|------------|------------------------|----------------------------------|
//! | TINY (1), YEAR (13) / SHORT (2) / INT24 (9)  | 0          | 0                      | 1 / 2 / 3                        |
//! | LONG (3) / LONGLONG (8) / NULL (6)           | 0          | 0                      | 4 / 8 / 0                        |
//! | DATE (10), NEWDATE (14), TIME (11)           | 0          | 0                      | 3                                |
//! | TIMESTAMP (7) / DATETIME (12)                | 0          | 0                      | 4 / 8                            |
//! | FLOAT (4), DOUBLE (5)                        | 1          | pack length (4 / 8)    | `meta`                           |
//! | TIMESTAMP2 (17) / DATETIME2 (18) / TIME2 (19)| 1          | fsp (0..=6)            | 4 / 5 / 3, plus `(fsp + 1) / 2`  |
//! | BIT (16)                                     | 2: bits % 8, bytes | `bytes << 8 \| bits % 8` | `bytes + (bits % 8 > 0)` |
//! | NEWDECIMAL (246)                             | 2: precision, scale | `precision << 8 \| scale` | 4 per 9 digits on each side of the point, leftover digits `{0,1,1,2,2,3,3,4,4,4}[d]` |
//! | VARCHAR (15), VAR_STRING (253), MariaDB VARCHAR_COMPRESSED (141) | 2 LE | max byte length | length prefix (1 byte if max < 256, else 2) + data |
//! | BLOB, TEXT (249..=252), GEOMETRY (255), JSON (245), VECTOR (242), MariaDB BLOB_COMPRESSED (140) | 1 | prefix bytes (1..=4) | LE length prefix of `meta` bytes + data |
//! | STRING (254), ENUM (247), SET (248)          | 2: byte0, byte1 | see below         | see below                        |
//!
//! STRING metadata is `byte0, byte1` (not a little-endian integer). When
//! `byte0 & 0x30 != 0x30` the column is a CHAR longer than 255 bytes: the real
//! type is `byte0 | 0x30` and the max length
//! `((byte0 & 0x30) ^ 0x30) << 4 | byte1`; otherwise the real type is `byte0`
//! and `byte1` the max length (CHAR) or pack length (ENUM, SET).
//! [`Column::type_code`] is that real type and `meta` that length. CHAR values
//! are a length prefix (1 byte if max < 256, else 2) and the data without its
//! trailing padding; ENUM (pack length 1..=2) and SET (1..=8) values are
//! `meta` bytes. The pre-5.0 DECIMAL (0) and unknown types are errors.
//!
//! # Rows events
//!
//! ```text
//! header (19) | table_id (6) | flags u16
//! | [v2 only: extra_len u16 (counts itself) | extra data [extra_len - 2]]
//! | column_count (length-encoded int) | present columns [(column_count + 7) / 8]
//! | [UPDATE only: present columns of the after image [(column_count + 7) / 8]]
//! | images... | CRC32 (4, when checksums are on)
//! ```
//!
//! Types: WRITE/UPDATE/DELETE v1 = 23/24/25 (MariaDB), v2 = 30/31/32 (MySQL).
//! UPDATE events hold a before and an after image per row. Each image is a
//! null bitmap of one bit per *present* column (in column order,
//! `(present + 7) / 8` bytes), then the values of the present, non-null
//! columns. With `binlog_row_image=MINIMAL` / `NOBLOB` some columns are not
//! present. MariaDB compressed rows events (166..=171) and MySQL
//! PARTIAL_UPDATE_ROWS (39, JSON diffs) cannot be decoded here: errors.

use crate::error::DecodeError;
use crate::event::{types, DecodeCtx, EventHeader, RowsKind, CHECKSUM_LEN, HEADER_LEN};

/// Column type codes (`enum_field_types`).
pub mod col {
    pub const DECIMAL: u8 = 0;
    pub const TINY: u8 = 1;
    pub const SHORT: u8 = 2;
    pub const LONG: u8 = 3;
    pub const FLOAT: u8 = 4;
    pub const DOUBLE: u8 = 5;
    pub const NULL: u8 = 6;
    pub const TIMESTAMP: u8 = 7;
    pub const LONGLONG: u8 = 8;
    pub const INT24: u8 = 9;
    pub const DATE: u8 = 10;
    pub const TIME: u8 = 11;
    pub const DATETIME: u8 = 12;
    pub const YEAR: u8 = 13;
    pub const NEWDATE: u8 = 14;
    pub const VARCHAR: u8 = 15;
    pub const BIT: u8 = 16;
    pub const TIMESTAMP2: u8 = 17;
    pub const DATETIME2: u8 = 18;
    pub const TIME2: u8 = 19;
    /// MariaDB compressed BLOB/TEXT column.
    pub const MARIA_BLOB_COMPRESSED: u8 = 140;
    /// MariaDB compressed VARCHAR column.
    pub const MARIA_VARCHAR_COMPRESSED: u8 = 141;
    /// MySQL 9 VECTOR.
    pub const VECTOR: u8 = 242;
    pub const JSON: u8 = 245;
    pub const NEWDECIMAL: u8 = 246;
    pub const ENUM: u8 = 247;
    pub const SET: u8 = 248;
    pub const TINY_BLOB: u8 = 249;
    pub const MEDIUM_BLOB: u8 = 250;
    pub const LONG_BLOB: u8 = 251;
    pub const BLOB: u8 = 252;
    pub const VAR_STRING: u8 = 253;
    pub const STRING: u8 = 254;
    pub const GEOMETRY: u8 = 255;
}

/// One column of a TABLE_MAP: its real type and metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    /// The real type code: for MYSQL_TYPE_STRING (254) columns the metadata's real
    /// type (ENUM 247 / SET 248 / STRING 254) after the long-CHAR fix-up.
    pub type_code: u8,
    /// Type metadata as the width rules need it (see the module docs for the
    /// encoding per type): VARCHAR max byte length, BLOB length-prefix bytes,
    /// NEWDECIMAL `precision << 8 | scale`, BIT `bytes << 8 | bits % 8`,
    /// temporal fsp, CHAR max byte length, ENUM/SET pack length, FLOAT/DOUBLE
    /// pack length; 0 for types without metadata.
    pub meta: u16,
    pub nullable: bool,
}

/// A decoded TABLE_MAP event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableMap {
    pub table_id: u64,
    /// Database name (lossy UTF-8).
    pub db: String,
    /// Table name (lossy UTF-8).
    pub table: String,
    pub columns: Vec<Column>,
}

/// A cell of a row image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell<'a> {
    /// Column not in this image (binlog_row_image=MINIMAL/NOBLOB).
    Absent,
    Null,
    /// The column's bytes exactly as stored in the image, length prefix INCLUDED for
    /// variable-length types (so that equal values give equal bytes).
    Value(&'a [u8]),
}

/// A decoded rows event (WRITE/UPDATE/DELETE, v1 and v2 types, MySQL and MariaDB).
#[derive(Debug, Clone)]
pub struct RowsEvent<'a> {
    pub kind: RowsKind,
    pub table_id: u64,
    pub flags: u16,
    pub column_count: usize,
    type_code: u8,
    /// Present-columns bitmap of the (before) image.
    present: &'a [u8],
    /// Present-columns bitmap of the after image (UPDATE); else `present`.
    present_after: &'a [u8],
    /// The images.
    body: &'a [u8],
}

/// Checks the header and size of a whole event and returns its type code and
/// body (between the header and the checksum).
fn event_body<'a>(ev: &'a [u8], ctx: &DecodeCtx) -> Result<(u8, &'a [u8]), DecodeError> {
    let h = EventHeader::parse(ev)?;
    let t = h.type_code;
    if ev.len() != h.event_size as usize {
        let msg = format!(
            "event_size is {} but {} bytes given",
            h.event_size,
            ev.len()
        );
        return Err(DecodeError::new(t, msg));
    }
    let end = if ctx.checksum {
        ev.len()
            .checked_sub(CHECKSUM_LEN)
            .filter(|e| *e >= HEADER_LEN)
            .ok_or_else(|| DecodeError::new(t, "event too short to hold its checksum"))?
    } else {
        ev.len()
    };
    Ok((t, ev.get(HEADER_LEN..end).unwrap_or_default()))
}

/// Decodes a whole TABLE_MAP event (header included; checksum present when ctx.checksum).
pub fn decode_table_map(ev: &[u8], ctx: &DecodeCtx) -> Result<TableMap, DecodeError> {
    let (t, body) = event_body(ev, ctx)?;
    if t != types::TABLE_MAP {
        return Err(DecodeError::new(t, "not a TABLE_MAP event"));
    }
    let mut r = Reader::new(t, body);
    let table_id = r.uint(ctx.table_id_len)?;
    let _flags = r.uint(2)?;
    let db = r.name()?;
    let table = r.name()?;
    let count = r.count()?;
    let col_types = r.bytes(count)?;
    let meta_len = r.count()?;
    let mut m = Reader::new(t, r.bytes(meta_len)?);
    let nulls = r.bytes(count.div_ceil(8))?;
    let mut columns = Vec::with_capacity(count);
    for (i, &ty) in col_types.iter().enumerate() {
        let (type_code, meta) = match ty {
            col::FLOAT | col::DOUBLE | col::TIMESTAMP2..=col::TIME2 => (ty, u16::from(m.u8()?)),
            col::TINY_BLOB..=col::BLOB | col::GEOMETRY | col::JSON | col::VECTOR => {
                (ty, u16::from(m.u8()?))
            }
            col::MARIA_BLOB_COMPRESSED => (ty, u16::from(m.u8()?)),
            col::VARCHAR | col::VAR_STRING | col::MARIA_VARCHAR_COMPRESSED => {
                (ty, m.uint(2)? as u16)
            }
            col::BIT => {
                let bits = m.u8()?;
                let bytes = m.u8()?;
                (ty, (u16::from(bytes) << 8) | u16::from(bits))
            }
            col::NEWDECIMAL => {
                let precision = m.u8()?;
                let scale = m.u8()?;
                (ty, (u16::from(precision) << 8) | u16::from(scale))
            }
            col::STRING | col::ENUM | col::SET => {
                let b0 = m.u8()?;
                let b1 = m.u8()?;
                let (real, len) = if b0 & 0x30 != 0x30 {
                    let high = u16::from((b0 & 0x30) ^ 0x30) << 4;
                    (b0 | 0x30, high | u16::from(b1))
                } else {
                    (b0, u16::from(b1))
                };
                if !matches!(real, col::STRING | col::ENUM | col::SET) {
                    return Err(DecodeError::new(
                        t,
                        format!("column {i}: CHAR/ENUM/SET metadata names real type {real}"),
                    ));
                }
                (real, len)
            }
            // FLOAT and DOUBLE, inside this range, matched above.
            col::DECIMAL..=col::NEWDATE => (ty, 0),
            other => {
                return Err(DecodeError::new(
                    t,
                    format!("column {i} has unknown type {other}; its metadata size is unknown"),
                ))
            }
        };
        columns.push(Column {
            type_code,
            meta,
            nullable: nulls[i / 8] & (1 << (i % 8)) != 0,
        });
    }
    if m.remaining() != 0 {
        return Err(DecodeError::new(
            t,
            format!(
                "column metadata is {meta_len} bytes but the column types use {}",
                meta_len - m.remaining()
            ),
        ));
    }
    Ok(TableMap {
        table_id,
        db,
        table,
        columns,
    })
}

/// Decodes a rows event's header. Errors (DecodeError) for MariaDB compressed rows events
/// (types 166..=171) and MySQL PARTIAL_UPDATE_ROWS (39): callers treat those as "cannot decode".
pub fn decode_rows<'a>(ev: &'a [u8], ctx: &DecodeCtx) -> Result<RowsEvent<'a>, DecodeError> {
    let (t, body) = event_body(ev, ctx)?;
    let (kind, v2) = match t {
        types::WRITE_ROWS_V1 => (RowsKind::Write, false),
        types::UPDATE_ROWS_V1 => (RowsKind::Update, false),
        types::DELETE_ROWS_V1 => (RowsKind::Delete, false),
        types::WRITE_ROWS => (RowsKind::Write, true),
        types::UPDATE_ROWS => (RowsKind::Update, true),
        types::DELETE_ROWS => (RowsKind::Delete, true),
        _ => {
            let what = match t {
                types::PARTIAL_UPDATE_ROWS => "partial-update (JSON diff) rows events",
                types::MARIA_WRITE_ROWS_COMPRESSED_V1..=types::MARIA_DELETE_ROWS_COMPRESSED => {
                    "compressed rows events"
                }
                _ => "events that are not rows events",
            };
            return Err(DecodeError::new(t, format!("{what} cannot be decoded")));
        }
    };
    let mut r = Reader::new(t, body);
    let table_id = r.uint(ctx.table_id_len)?;
    let flags = r.uint(2)? as u16;
    if v2 {
        let extra = r.uint(2)? as usize;
        let rest = extra
            .checked_sub(2)
            .ok_or_else(|| DecodeError::new(t, format!("extra-data length {extra} is below 2")))?;
        r.bytes(rest)?;
    }
    let column_count = r.count()?;
    let bitmap_len = column_count.div_ceil(8);
    let present = r.bytes(bitmap_len)?;
    let present_after = if kind == RowsKind::Update {
        r.bytes(bitmap_len)?
    } else {
        present
    };
    Ok(RowsEvent {
        kind,
        table_id,
        flags,
        column_count,
        type_code: t,
        present,
        present_after,
        body: r.rest(),
    })
}

impl<'a> RowsEvent<'a> {
    /// Every row image in order: for UPDATE, before image then after image of each row.
    /// Each image has exactly `column_count` cells. The map must be the TABLE_MAP with the
    /// same table_id and column count (error otherwise). Any truncation, an unknown column
    /// type, or bytes left over that do not form a whole image is an error, never a panic.
    pub fn images(&self, map: &TableMap) -> Result<Vec<Vec<Cell<'a>>>, DecodeError> {
        self.image_iter(map)?.collect()
    }

    /// The images one at a time, for callers that reuse one cell buffer
    /// (see [`Images::next_into`]); same checks as [`RowsEvent::images`].
    pub fn image_iter(&self, map: &TableMap) -> Result<Images<'a>, DecodeError> {
        let t = self.type_code;
        if map.table_id != self.table_id || map.columns.len() != self.column_count {
            let msg = format!(
                "rows event of table id {} with {} columns given the TABLE_MAP of `{}`.`{}`: \
                 table id {}, {} columns",
                self.table_id,
                self.column_count,
                map.db,
                map.table,
                map.table_id,
                map.columns.len()
            );
            return Err(DecodeError::new(t, msg));
        }
        let widths = map
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| width(c).map_err(|m| DecodeError::new(t, format!("column {i}: {m}"))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Images {
            type_code: t,
            update: self.kind == RowsKind::Update,
            present: [self.present, self.present_after],
            present_count: [
                count_bits(self.present, self.column_count),
                count_bits(self.present_after, self.column_count),
            ],
            widths,
            body: self.body,
            pos: 0,
            index: 0,
            failed: false,
        })
    }
}

/// Iterator over the images of a rows event (see [`RowsEvent::images`]).
/// After an error it yields nothing more.
#[derive(Debug)]
pub struct Images<'a> {
    type_code: u8,
    update: bool,
    present: [&'a [u8]; 2],
    present_count: [usize; 2],
    widths: Vec<Width>,
    body: &'a [u8],
    pos: usize,
    index: usize,
    failed: bool,
}

impl<'a> Images<'a> {
    /// Decodes the next image into `cells` (cleared first). Ok(false) when
    /// all images were read.
    pub fn next_into(&mut self, cells: &mut Vec<Cell<'a>>) -> Result<bool, DecodeError> {
        cells.clear();
        if self.failed {
            return Ok(false);
        }
        let t = self.type_code;
        if self.pos >= self.body.len() {
            if self.update && self.index % 2 == 1 {
                self.failed = true;
                return Err(DecodeError::new(t, "UPDATE row without its after image"));
            }
            return Ok(false);
        }
        let which = usize::from(self.update && self.index % 2 == 1);
        let (present, npresent) = (self.present[which], self.present_count[which]);
        let decoded = self.decode_image(present, npresent, cells).and_then(|end| {
            (end > self.pos).then_some(end).ok_or_else(|| {
                DecodeError::new(t, "image without present columns cannot be delimited")
            })
        });
        match decoded {
            Ok(end) => {
                self.pos = end;
                self.index += 1;
                Ok(true)
            }
            Err(e) => {
                self.failed = true;
                cells.clear();
                Err(e)
            }
        }
    }

    /// Decodes one image starting at `self.pos`; returns where it ends.
    fn decode_image(
        &self,
        present: &[u8],
        npresent: usize,
        cells: &mut Vec<Cell<'a>>,
    ) -> Result<usize, DecodeError> {
        let t = self.type_code;
        let body = self.body;
        let truncated = |what: &str, i: usize| {
            DecodeError::new(
                t,
                format!("row image {} truncated in {what} of column {i}", self.index),
            )
        };
        let nulls_end = self
            .pos
            .checked_add(npresent.div_ceil(8))
            .filter(|e| *e <= body.len())
            .ok_or_else(|| {
                DecodeError::new(
                    t,
                    format!("row image {} truncated in its null bitmap", self.index),
                )
            })?;
        let nulls = &body[self.pos..nulls_end];
        let mut pos = nulls_end;
        let mut j = 0usize;
        for (i, w) in self.widths.iter().enumerate() {
            if present[i / 8] & (1 << (i % 8)) == 0 {
                cells.push(Cell::Absent);
                continue;
            }
            let is_null = nulls[j / 8] & (1 << (j % 8)) != 0;
            j += 1;
            if is_null {
                cells.push(Cell::Null);
                continue;
            }
            let len = match *w {
                Width::Fixed(n) => n,
                Width::Prefixed(n) => {
                    let prefix = body
                        .get(pos..pos.saturating_add(n))
                        .ok_or_else(|| truncated("the length prefix", i))?;
                    let l = prefix
                        .iter()
                        .rev()
                        .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
                    l.checked_add(n).ok_or_else(|| truncated("the value", i))?
                }
                Width::Unsupported(ty) => {
                    return Err(DecodeError::new(
                        t,
                        format!("column {i} has type {ty}, whose values cannot be delimited"),
                    ))
                }
            };
            let end = pos
                .checked_add(len)
                .filter(|e| *e <= body.len())
                .ok_or_else(|| truncated("the value", i))?;
            cells.push(Cell::Value(&body[pos..end]));
            pos = end;
        }
        Ok(pos)
    }
}

impl<'a> Iterator for Images<'a> {
    type Item = Result<Vec<Cell<'a>>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut cells = Vec::with_capacity(self.widths.len());
        match self.next_into(&mut cells) {
            Ok(true) => Some(Ok(cells)),
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        }
    }
}

/// How a present, non-null value is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Width {
    /// Exactly this many bytes.
    Fixed(usize),
    /// A little-endian length of this many bytes, then that many bytes.
    Prefixed(usize),
    /// A type the TABLE_MAP can describe but whose values cannot be
    /// delimited (the pre-5.0 DECIMAL): an error only when a value is met.
    Unsupported(u8),
}

/// The width rule of a column, or why its metadata is invalid.
fn width(c: &Column) -> Result<Width, String> {
    let meta = c.meta;
    let fsp = || {
        if meta <= 6 {
            Ok(usize::from(meta + 1) / 2)
        } else {
            Err(format!("fractional-second precision {meta} is above 6"))
        }
    };
    let prefix_of_max = |max: u16| Width::Prefixed(if max < 256 { 1 } else { 2 });
    Ok(match c.type_code {
        col::TINY | col::YEAR => Width::Fixed(1),
        col::SHORT => Width::Fixed(2),
        col::INT24 | col::DATE | col::NEWDATE | col::TIME => Width::Fixed(3),
        col::LONG | col::TIMESTAMP => Width::Fixed(4),
        col::LONGLONG | col::DATETIME => Width::Fixed(8),
        col::NULL => Width::Fixed(0),
        col::FLOAT | col::DOUBLE => match meta {
            4 | 8 => Width::Fixed(usize::from(meta)),
            _ => return Err(format!("floating-point pack length {meta} is not 4 or 8")),
        },
        col::TIMESTAMP2 => Width::Fixed(4 + fsp()?),
        col::DATETIME2 => Width::Fixed(5 + fsp()?),
        col::TIME2 => Width::Fixed(3 + fsp()?),
        col::VARCHAR | col::VAR_STRING | col::MARIA_VARCHAR_COMPRESSED | col::STRING => {
            prefix_of_max(meta)
        }
        col::BIT => {
            let (bytes, bits) = (usize::from(meta >> 8), meta & 0xff);
            if bits > 7 {
                return Err(format!("BIT metadata has {bits} extra bits"));
            }
            Width::Fixed(bytes + usize::from(bits > 0))
        }
        col::NEWDECIMAL => {
            let (precision, scale) = (usize::from(meta >> 8), usize::from(meta & 0xff));
            if precision == 0 || scale > precision {
                return Err(format!("invalid DECIMAL({precision},{scale})"));
            }
            Width::Fixed(decimal_bin_size(precision, scale))
        }
        col::ENUM if (1..=2).contains(&meta) => Width::Fixed(usize::from(meta)),
        col::SET if (1..=8).contains(&meta) => Width::Fixed(usize::from(meta)),
        col::ENUM | col::SET => return Err(format!("ENUM/SET pack length {meta}")),
        col::TINY_BLOB
        | col::MEDIUM_BLOB
        | col::LONG_BLOB
        | col::BLOB
        | col::GEOMETRY
        | col::JSON
        | col::VECTOR
        | col::MARIA_BLOB_COMPRESSED => match meta {
            1..=4 => Width::Prefixed(usize::from(meta)),
            _ => return Err(format!("length-prefix size {meta} is not 1 to 4")),
        },
        other => Width::Unsupported(other),
    })
}

/// Bytes of a NEWDECIMAL(precision, scale) value (`decimal_bin_size`).
pub fn decimal_bin_size(precision: usize, scale: usize) -> usize {
    const DIG2BYTES: [usize; 10] = [0, 1, 1, 2, 2, 3, 3, 4, 4, 4];
    let intg = precision.saturating_sub(scale);
    (intg / 9) * 4 + DIG2BYTES[intg % 9] + (scale / 9) * 4 + DIG2BYTES[scale % 9]
}

/// Number of bits set among the first `n` bits of `bitmap`.
fn count_bits(bitmap: &[u8], n: usize) -> usize {
    (0..n)
        .filter(|i| bitmap.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0))
        .count()
}

/// Bounds-checked little-endian reader.
struct Reader<'a> {
    t: u8,
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(t: u8, buf: &'a [u8]) -> Self {
        Reader { t, buf }
    }
    fn remaining(&self) -> usize {
        self.buf.len()
    }
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::new(
                self.t,
                format!("truncated: needed {n} more bytes, {} left", self.buf.len()),
            ));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn uint(&mut self, n: usize) -> Result<u64, DecodeError> {
        Ok(self
            .bytes(n)?
            .iter()
            .rev()
            .fold(0u64, |acc, x| (acc << 8) | u64::from(*x)))
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.bytes(1)?[0])
    }
    /// Length-encoded integer (`net_field_length`) used as a count.
    fn count(&mut self) -> Result<usize, DecodeError> {
        let v = match self.u8()? {
            x @ 0..=250 => u64::from(x),
            252 => self.uint(2)?,
            253 => self.uint(3)?,
            254 => self.uint(8)?,
            x => {
                return Err(DecodeError::new(
                    self.t,
                    format!("bad length-encoded integer prefix {x}"),
                ))
            }
        };
        usize::try_from(v)
            .map_err(|_| DecodeError::new(self.t, format!("count {v} does not fit in memory")))
    }
    /// A length byte, the name, and its NUL terminator.
    fn name(&mut self) -> Result<String, DecodeError> {
        let n = usize::from(self.u8()?);
        let s = String::from_utf8_lossy(self.bytes(n)?).into_owned();
        if self.u8()? != 0 {
            return Err(DecodeError::new(self.t, "name not NUL-terminated"));
        }
        Ok(s)
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}

#[cfg(test)]
#[path = "rows_tests.rs"]
mod tests;
