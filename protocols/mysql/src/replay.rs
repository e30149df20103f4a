//! Sans-IO translation of binlog events into the SQL statements that apply
//! them on another server of the same flavour, the way the servers' own
//! binlog tools (`mysqlbinlog`, `mariadb-binlog`) print them for piping
//! into a client:
//!
//! * row events: the current FORMAT_DESCRIPTION once per session (before
//!   the next transaction starts) as `BINLOG '<base64>'`, then one `BINLOG '<base64>'` per statement holding
//!   its TABLE_MAP events and rows events up to the one flagged
//!   `STMT_END_F` (the server decodes and applies them itself; with
//!   [`SqlReplayer::merge_row_statements`] consecutive small statements of
//!   one transaction share one `BINLOG`). A statement
//!   is never split: servers drop their table maps at the end of each
//!   `BINLOG` statement (MariaDB then silently ignores the orphan rows
//!   events), so the target's `max_allowed_packet` must hold the largest one;
//! * QUERY events: the session context they ran in (`SET TIMESTAMP`,
//!   `pseudo_thread_id`, FLAGS2 options, `sql_mode`, auto-increment,
//!   character sets, time zone, `lc_time_names`, `collation_database`, and
//!   the MySQL-only variables), each only when it changed, then `use db` and
//!   the statement bytes unchanged;
//! * GTID events: MariaDB `SET @@session.gtid_domain_id, server_id, gtid_seq_no`
//!   (one statement)
//!   plus `START TRANSACTION` for a transactional group; MySQL
//!   `SET @@SESSION.GTID_NEXT='uuid:n'` (reset to `AUTOMATIC` after the
//!   group) — both only when GTIDs are preserved; otherwise MySQL gets
//!   `GTID_NEXT='AUTOMATIC'` per group (a `BINLOG`'d FORMAT_DESCRIPTION
//!   leaves the session in ANONYMOUS mode);
//! * XID: `COMMIT`; INTVAR: `SET INSERT_ID` / `SET LAST_INSERT_ID`; RAND:
//!   `SET @@RAND_SEED1/2`;
//! * FORMAT_DESCRIPTION, ROTATE, GTID lists, checkpoints, annotations and
//!   heartbeats produce nothing.
//!
//! Statement-based user variables (USER_VAR), MySQL compressed transaction
//! payloads, MariaDB compressed QUERY events, XA_PREPARE and INCIDENT events
//! are refused with an error naming the setting to change.

use crate::error::DecodeError;
use crate::event::{self, types, DecodeCtx, EventData, HEADER_LEN};
use crate::pos::Flavor;
use crate::status_vars::{decode_full_query, QueryContext};

/// Rows event flag: last event of its statement.
const STMT_END_F: u16 = 1;
/// Event header flag: safe to ignore when the type is unknown.
const LOG_EVENT_IGNORABLE_F: u16 = 0x80;

const OPTION_AUTO_IS_NULL: u32 = 1 << 14;
const OPTION_NOT_AUTOCOMMIT: u32 = 1 << 19;
const OPTION_NO_FOREIGN_KEY_CHECKS: u32 = 1 << 26;
const OPTION_RELAXED_UNIQUE_CHECKS: u32 = 1 << 27;

const INTVAR_LAST_INSERT_ID: u8 = 1;
const INTVAR_INSERT_ID: u8 = 2;
const RAND_EVENT: u8 = 13;
const USER_VAR_EVENT: u8 = 14;

/// Standard base64 (with padding) in lines of 76 characters, as the binlog
/// tools print `BINLOG` statements.
pub fn base64_lines(data: &[u8]) -> String {
    let mut out = Vec::with_capacity(base64_lines_len(data.len()));
    base64_lines_into(data, &mut out);
    // Only ASCII was written.
    String::from_utf8(out).unwrap_or_default()
}

/// Length of [`base64_lines`] for `n` input bytes.
fn base64_lines_len(n: usize) -> usize {
    let lines = n.div_ceil(57);
    n.div_ceil(3) * 4 + lines.saturating_sub(1)
}

/// Appends [`base64_lines`] of `data` to `out`.
fn base64_lines_into(data: &[u8], out: &mut Vec<u8>) {
    use base64::Engine as _;
    for (i, line) in data.chunks(57).enumerate() {
        if i > 0 {
            out.push(b'\n');
        }
        let at = out.len();
        out.resize(at + line.len().div_ceil(3) * 4, 0);
        // The room made is exactly the encoded length, so this cannot fail.
        let written = base64::engine::general_purpose::STANDARD
            .encode_slice(line, &mut out[at..])
            .unwrap_or(0);
        out.truncate(at + written);
    }
}

/// `BINLOG '<base64 of events>'`.
pub fn binlog_statement(events: &[u8]) -> String {
    let mut out = Vec::with_capacity(base64_lines_len(events.len()) + 12);
    out.extend_from_slice(b"BINLOG '\n");
    base64_lines_into(events, &mut out);
    out.extend_from_slice(b"\n'");
    // Only ASCII was written.
    String::from_utf8(out).unwrap_or_default()
}

/// Backtick-quotes an identifier.
pub fn quote_ident(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}

/// Session state of the applying connection as far as we have set it.
#[derive(Debug, Clone, Default)]
struct Session {
    timestamp: Option<(u32, u32)>,
    thread_id: Option<u32>,
    flags2: Option<u32>,
    sql_mode: Option<u64>,
    auto_increment: Option<(u16, u16)>,
    charset: Option<(u16, u16, u16)>,
    time_zone: Option<String>,
    lc_time_names: Option<u16>,
    charset_database: Option<u16>,
    explicit_defaults_for_timestamp: Option<u8>,
    default_collation_for_utf8mb4: Option<u16>,
    sql_require_primary_key: Option<u8>,
    default_table_encryption: Option<u8>,
    db: Option<Vec<u8>>,
}

fn changed<T: PartialEq + Clone>(slot: &mut Option<T>, v: &Option<T>) -> Option<T> {
    match v {
        Some(v) if slot.as_ref() != Some(v) => {
            *slot = Some(v.clone());
            Some(v.clone())
        }
        _ => None,
    }
}

/// A statement to execute: text, or bytes that are not valid UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Statement {
    Text(String),
    Bytes(Vec<u8>),
}

impl Statement {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Statement::Text(s) => s.as_bytes(),
            Statement::Bytes(b) => b,
        }
    }
}

/// Turns the events of transactions into SQL statements (see module docs).
#[derive(Debug, Clone)]
pub struct SqlReplayer {
    flavor: Flavor,
    preserve_gtids: bool,
    ctx: DecodeCtx,
    fde: Option<Vec<u8>>,
    fde_sent: bool,
    /// The caller sends the FORMAT_DESCRIPTION itself (one per connection
    /// when transactions are spread over several).
    fde_external: bool,
    rows: Vec<u8>,
    /// Whole statements' row events of the current transaction not sent
    /// yet, and the size up to which they are gathered into one `BINLOG`.
    merged: Vec<u8>,
    merge_limit: usize,
    session: Session,
    in_group: bool,
    gtid_next_set: bool,
}

impl SqlReplayer {
    pub fn new(flavor: Flavor, preserve_gtids: bool) -> SqlReplayer {
        SqlReplayer {
            flavor,
            preserve_gtids,
            ctx: DecodeCtx::default(),
            fde: None,
            fde_sent: false,
            fde_external: false,
            rows: Vec::new(),
            merged: Vec::new(),
            merge_limit: 0,
            session: Session::default(),
            in_group: false,
            gtid_next_set: false,
        }
    }

    /// The decoding context from the last FORMAT_DESCRIPTION seen.
    pub fn ctx(&self) -> DecodeCtx {
        self.ctx
    }

    /// Records a FORMAT_DESCRIPTION event (also for events that are skipped).
    pub fn format_description(&mut self, fde: &[u8]) -> Result<(), DecodeError> {
        let d = event::decode_fde(fde)?;
        self.ctx = d.context();
        if self.fde.as_deref() != Some(fde) {
            self.fde = Some(fde.to_vec());
            self.fde_sent = self.fde_external;
        }
        Ok(())
    }

    /// The last FORMAT_DESCRIPTION event recorded.
    pub fn format_description_event(&self) -> Option<&[u8]> {
        self.fde.as_deref()
    }

    /// From now on the caller sends `BINLOG '<FORMAT_DESCRIPTION>'` itself
    /// (see [`SqlReplayer::format_description_event`]) before any row
    /// statement on each connection it uses; the statements returned never
    /// hold it.
    pub fn external_format_description(&mut self) {
        self.fde_external = true;
        self.fde_sent = true;
    }

    /// Gathers the row events of consecutive statements of one transaction
    /// into one `BINLOG` statement while they hold at most `limit` bytes
    /// (each statement's events still end with their `STMT_END_F` rows
    /// event, where the server closes the statement's tables; one statement
    /// bigger than `limit` is sent alone, as without gathering). Fewer,
    /// larger statements cost the target less to parse. 0: one `BINLOG`
    /// per statement.
    pub fn merge_row_statements(&mut self, limit: usize) {
        self.merge_limit = limit;
    }

    /// Forgets the session state set so far: the next QUERY event gets its
    /// whole context (`SET TIMESTAMP`, `sql_mode`, character sets, `use db`,
    /// ...), for a transaction that may run on a connection other than the
    /// previous ones.
    pub fn forget_session(&mut self) {
        self.session = Session::default();
    }

    /// Statements applying `ev`, one event of a transaction being applied.
    pub fn event(&mut self, ev: &[u8]) -> Result<Vec<Statement>, DecodeError> {
        let header = event::EventHeader::parse(ev)?;
        let t = header.type_code;
        let mut out = Vec::new();
        // The FORMAT_DESCRIPTION goes before a transaction starts, as the
        // binlog tools print it (MySQL refuses it inside a transaction).
        let group_start = matches!(
            t,
            types::GTID | types::ANONYMOUS_GTID | types::MARIA_GTID | types::QUERY
        );
        if group_start && !self.in_group && !self.fde_sent {
            if let Some(fde) = &self.fde {
                out.push(Statement::Text(binlog_statement(fde)));
                self.fde_sent = true;
            }
        }
        match t {
            types::FORMAT_DESCRIPTION => self.format_description(ev)?,
            types::TABLE_MAP => self.rows.extend_from_slice(ev),
            t if types::is_rows(t) => {
                self.rows.extend_from_slice(ev);
                let at = HEADER_LEN + self.ctx.table_id_len;
                let flags = ev
                    .get(at..at + 2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]))
                    .ok_or_else(|| DecodeError::new(t, "rows event too short for its flags"))?;
                if flags & STMT_END_F != 0 {
                    self.end_statement(&mut out)?;
                }
            }
            types::QUERY | types::MARIA_QUERY_COMPRESSED => self.query(ev, &mut out)?,
            types::XID => {
                self.flush_rows(&mut out)?;
                out.push(Statement::Text("COMMIT".into()));
                self.group_end(&mut out);
            }
            types::GTID | types::ANONYMOUS_GTID | types::MARIA_GTID => self.gtid(ev, &mut out)?,
            types::INTVAR => {
                let kind = ev.get(HEADER_LEN).copied();
                let v = ev
                    .get(HEADER_LEN + 1..HEADER_LEN + 9)
                    .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
                    .ok_or_else(|| DecodeError::new(t, "INTVAR event too short"))?;
                match kind {
                    Some(INTVAR_INSERT_ID) => out.push(Statement::Text(format!("SET INSERT_ID={v}"))),
                    Some(INTVAR_LAST_INSERT_ID) => {
                        out.push(Statement::Text(format!("SET LAST_INSERT_ID={v}")))
                    }
                    _ => return Err(DecodeError::new(t, "INTVAR event of an unknown kind")),
                }
            }
            RAND_EVENT => {
                let s = ev
                    .get(HEADER_LEN..HEADER_LEN + 16)
                    .ok_or_else(|| DecodeError::new(t, "RAND event too short"))?;
                let s1 = u64::from_le_bytes(s[..8].try_into().unwrap_or([0; 8]));
                let s2 = u64::from_le_bytes(s[8..].try_into().unwrap_or([0; 8]));
                out.push(Statement::Text(format!(
                    "SET @@RAND_SEED1={s1}, @@RAND_SEED2={s2}"
                )));
            }
            USER_VAR_EVENT => {
                return Err(DecodeError::new(
                    t,
                    "statement-based USER_VAR events cannot be replayed; use binlog_format=ROW on the source",
                ))
            }
            types::TRANSACTION_PAYLOAD => {
                return Err(DecodeError::new(
                    t,
                    "compressed transaction payloads cannot be replayed; set binlog_transaction_compression=OFF on the source",
                ))
            }
            types::XA_PREPARE => {
                return Err(DecodeError::new(
                    t,
                    "XA PREPARE events cannot be replayed (prepared XA transactions are not supported)",
                ))
            }
            types::INCIDENT => {
                return Err(DecodeError::new(
                    t,
                    "the source logged an INCIDENT (events were lost on the source); the binlog cannot be replayed past it",
                ))
            }
            types::ROTATE
            | types::STOP
            | types::PREVIOUS_GTIDS
            | types::HEARTBEAT
            | types::HEARTBEAT_V2
            | types::ROWS_QUERY
            | types::IGNORABLE
            | types::MARIA_ANNOTATE_ROWS
            | types::MARIA_BINLOG_CHECKPOINT
            | types::MARIA_GTID_LIST
            | types::MARIA_START_ENCRYPTION => {}
            _ if header.flags & LOG_EVENT_IGNORABLE_F != 0 => {}
            other => {
                return Err(DecodeError::new(
                    other,
                    format!("event type {other} is not known and not flagged ignorable; it cannot be replayed"),
                ))
            }
        }
        Ok(out)
    }

    /// A statement's last rows event was seen: gather or send its events.
    fn end_statement(&mut self, out: &mut Vec<Statement>) -> Result<(), DecodeError> {
        if self.merge_limit == 0 || !self.in_group {
            return self.flush_rows(out);
        }
        if !self.merged.is_empty() && self.merged.len() + self.rows.len() > self.merge_limit {
            let merged = std::mem::take(&mut self.merged);
            self.emit_rows(&merged, out)?;
        }
        self.merged.append(&mut self.rows);
        if self.merged.len() >= self.merge_limit {
            let merged = std::mem::take(&mut self.merged);
            self.emit_rows(&merged, out)?;
        }
        Ok(())
    }

    /// Sends every row event held (gathered statements, then a statement
    /// without its end).
    fn flush_rows(&mut self, out: &mut Vec<Statement>) -> Result<(), DecodeError> {
        let merged = std::mem::take(&mut self.merged);
        self.emit_rows(&merged, out)?;
        let rows = std::mem::take(&mut self.rows);
        self.emit_rows(&rows, out)
    }

    fn emit_rows(&mut self, rows: &[u8], out: &mut Vec<Statement>) -> Result<(), DecodeError> {
        if rows.is_empty() {
            return Ok(());
        }
        if !self.fde_sent {
            let fde = self.fde.as_ref().ok_or_else(|| {
                DecodeError::new(
                    types::FORMAT_DESCRIPTION,
                    "rows events before any FORMAT_DESCRIPTION event",
                )
            })?;
            out.push(Statement::Text(binlog_statement(fde)));
            self.fde_sent = true;
        }
        out.push(Statement::Text(binlog_statement(rows)));
        Ok(())
    }

    fn group_end(&mut self, out: &mut Vec<Statement>) {
        self.in_group = false;
        if self.gtid_next_set {
            out.push(Statement::Text(
                "SET @@SESSION.GTID_NEXT='AUTOMATIC'".into(),
            ));
            self.gtid_next_set = false;
        }
    }

    fn gtid(&mut self, ev: &[u8], out: &mut Vec<Statement>) -> Result<(), DecodeError> {
        let (_, data) = event::decode(ev, &self.ctx)?;
        match data {
            EventData::MariaGtid(g) => {
                if self.preserve_gtids {
                    out.push(Statement::Text(format!(
                        "SET @@session.gtid_domain_id={}, @@session.server_id={}, @@session.gtid_seq_no={}",
                        g.gtid.domain, g.gtid.server, g.gtid.seq
                    )));
                }
                if !g.is_standalone() {
                    out.push(Statement::Text("START TRANSACTION".into()));
                    self.in_group = true;
                }
            }
            EventData::MysqlGtid(g) => match (self.preserve_gtids, g.gtid) {
                (true, Some(gtid)) => {
                    out.push(Statement::Text(format!("SET @@SESSION.GTID_NEXT='{gtid}'")));
                    self.gtid_next_set = true;
                }
                // A BINLOG'd FORMAT_DESCRIPTION leaves MySQL sessions in
                // ANONYMOUS mode: ask for a new GTID explicitly.
                _ => out.push(Statement::Text(
                    "SET @@SESSION.GTID_NEXT='AUTOMATIC'".into(),
                )),
            },
            _ => {}
        }
        Ok(())
    }

    fn query(&mut self, ev: &[u8], out: &mut Vec<Statement>) -> Result<(), DecodeError> {
        let q = decode_full_query(ev, &self.ctx)?;
        self.flush_rows(out)?;
        let upper: String = String::from_utf8_lossy(&q.query[..q.query.len().min(16)])
            .trim()
            .to_ascii_uppercase();
        let is_begin = upper == "BEGIN" || upper.starts_with("XA START");
        let is_end = upper == "COMMIT"
            || upper == "ROLLBACK"
            || upper.starts_with("XA COMMIT")
            || upper.starts_with("XA ROLLBACK")
            || upper.starts_with("XA PREPARE");
        self.context_sets(q.timestamp, q.thread_id, &q.context, out);
        if !q.db.is_empty() && self.session.db.as_deref() != Some(&q.db[..]) {
            let db = String::from_utf8_lossy(&q.db).into_owned();
            out.push(Statement::Text(format!("use {}", quote_ident(&db))));
            self.session.db = Some(q.db.clone());
        }
        out.push(match String::from_utf8(q.query) {
            Ok(s) => Statement::Text(s),
            Err(e) => Statement::Bytes(e.into_bytes()),
        });
        if is_begin {
            self.in_group = true;
        } else if is_end || !self.in_group {
            self.group_end(out);
        }
        Ok(())
    }

    fn context_sets(
        &mut self,
        timestamp: u32,
        thread_id: u32,
        c: &QueryContext,
        out: &mut Vec<Statement>,
    ) {
        let s = &mut self.session;
        let mut push = |t: String| out.push(Statement::Text(t));
        let ts = (timestamp, c.microseconds.unwrap_or(0));
        if s.timestamp != Some(ts) {
            s.timestamp = Some(ts);
            match c.microseconds {
                Some(us) => push(format!("SET TIMESTAMP={timestamp}.{us:06}")),
                None => push(format!("SET TIMESTAMP={timestamp}")),
            }
        }
        if let Some(t) = changed(&mut s.thread_id, &Some(thread_id)) {
            push(format!("SET @@session.pseudo_thread_id={t}"));
        }
        if let Some(f) = changed(&mut s.flags2, &c.flags2) {
            let on = |bit: u32| u8::from(f & bit != 0);
            push(format!(
                "SET @@session.foreign_key_checks={}, @@session.sql_auto_is_null={}, @@session.unique_checks={}, @@session.autocommit={}",
                1 - on(OPTION_NO_FOREIGN_KEY_CHECKS),
                on(OPTION_AUTO_IS_NULL),
                1 - on(OPTION_RELAXED_UNIQUE_CHECKS),
                1 - on(OPTION_NOT_AUTOCOMMIT),
            ));
        }
        if let Some(m) = changed(&mut s.sql_mode, &c.sql_mode) {
            push(format!("SET @@session.sql_mode={m}"));
        }
        if let Some((inc, off)) = changed(&mut s.auto_increment, &c.auto_increment) {
            push(format!(
                "SET @@session.auto_increment_increment={inc}, @@session.auto_increment_offset={off}"
            ));
        }
        if let Some((cl, conn, srv)) = changed(&mut s.charset, &c.charset) {
            push(format!(
                "SET @@session.character_set_client={cl}, @@session.collation_connection={conn}, @@session.collation_server={srv}"
            ));
        }
        if let Some(tz) = changed(&mut s.time_zone, &c.time_zone) {
            push(format!(
                "SET @@session.time_zone='{}'",
                tz.replace('\\', "\\\\").replace('\'', "''")
            ));
        }
        if let Some(l) = changed(&mut s.lc_time_names, &c.lc_time_names) {
            push(format!("SET @@session.lc_time_names={l}"));
        }
        if let Some(d) = changed(&mut s.charset_database, &c.charset_database) {
            push(format!("SET @@session.collation_database={d}"));
        }
        if self.flavor == Flavor::MySql {
            if let Some(v) = changed(
                &mut s.explicit_defaults_for_timestamp,
                &c.explicit_defaults_for_timestamp,
            ) {
                push(format!("SET @@session.explicit_defaults_for_timestamp={v}"));
            }
            if let Some(v) = changed(
                &mut s.default_collation_for_utf8mb4,
                &c.default_collation_for_utf8mb4,
            ) {
                push(format!("SET @@session.default_collation_for_utf8mb4={v}"));
            }
            if let Some(v) = changed(&mut s.sql_require_primary_key, &c.sql_require_primary_key) {
                push(format!("SET @@session.sql_require_primary_key={v}"));
            }
            if let Some(v) = changed(&mut s.default_table_encryption, &c.default_table_encryption) {
                push(format!("SET @@session.default_table_encryption={v}"));
            }
        }
    }
}

#[cfg(test)]
#[path = "replay_tests.rs"]
mod tests;
