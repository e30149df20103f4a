//! Physical streaming replication (the walsender command language).
//!
//! On a `replication=true` connection the simple query protocol accepts
//! replication commands: `IDENTIFY_SYSTEM`, `TIMELINE_HISTORY`,
//! `CREATE_REPLICATION_SLOT`, `READ_REPLICATION_SLOT` (PostgreSQL 15+),
//! `DROP_REPLICATION_SLOT`, `SHOW`, and `START_REPLICATION`, which switches
//! the connection to COPY-both mode. In that mode every `CopyData` (`d`)
//! message carries one of:
//!
//! * `w` XLogData: `dataStart u64, walEnd u64, sendTime i64`, then raw WAL bytes;
//! * `k` primary keepalive: `walEnd u64, sendTime i64, replyRequested u8`;
//!
//! and the client sends `r` standby status updates
//! (`written u64, flushed u64, applied u64, clientTime i64, replyRequested u8`).
//! When the server reaches the end of a historic timeline it sends
//! `CopyDone`; after the client answers `CopyDone` the server sends a
//! one-row result set (`next_tli int8, next_tli_startpos text`), then
//! `CommandComplete` and `ReadyForQuery`. Times are microseconds since
//! 2000-01-01 UTC.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes};
use pitr_segment::TimestampMicros;
use postgres_protocol::message::frontend;

use crate::conn::{command_name, Connection, Row, StartupMode};
use crate::conninfo::Config;
use crate::error::{ErrorKind, PgError, Result, ServerMessage};
use crate::lsn::{valid_segment_size, Lsn, TimelineId};

/// Result of `IDENTIFY_SYSTEM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemIdentity {
    /// The cluster's system identifier (decimal text as sent by the server).
    pub systemid: String,
    /// The same, as a number.
    pub systemid_u64: u64,
    /// Current timeline of the server.
    pub timeline: TimelineId,
    /// Current WAL flush position.
    pub xlogpos: Lsn,
    /// Database name (only for logical replication connections).
    pub dbname: Option<String>,
}

/// Result of `READ_REPLICATION_SLOT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    /// `physical` or `logical`.
    pub slot_type: String,
    pub restart_lsn: Option<Lsn>,
    pub restart_tli: Option<TimelineId>,
}

/// A physical-replication (walsender) connection in command mode.
#[derive(Debug)]
pub struct ReplicationClient {
    conn: Connection,
}

fn text<'a>(row: &'a Row, i: usize, what: &str, addr: &str) -> Result<&'a str> {
    row.text(i)
        .ok_or_else(|| PgError::protocol(format!("{what}: missing or non-text column {i}"), addr))
}

fn lsn_col(row: &Row, i: usize, what: &str, addr: &str) -> Result<Lsn> {
    let s = text(row, i, what, addr)?;
    s.parse()
        .map_err(|_| PgError::protocol(format!("{what}: invalid WAL position {s:?}"), addr))
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Parses a size setting as shown by `SHOW` (`16MB`, `1GB`, `65536kB`, `8192`).
pub fn parse_size_setting(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..split].parse().ok()?;
    let mult = match s[split..].trim() {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

impl ReplicationClient {
    /// Opens a `replication=true` connection.
    pub async fn connect(cfg: &Config) -> Result<ReplicationClient> {
        Ok(ReplicationClient {
            conn: Connection::connect(cfg, StartupMode::PhysicalReplication).await?,
        })
    }

    /// The underlying connection (server parameters, address).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    async fn one_row(&mut self, cmd: &str) -> Result<Row> {
        let mut rows = self.conn.simple_query(cmd).await?;
        if rows.len() != 1 {
            return Err(PgError::protocol(
                format!(
                    "{} returned {} rows, expected 1",
                    command_name(cmd),
                    rows.len()
                ),
                self.conn.address(),
            ));
        }
        Ok(rows.remove(0))
    }

    /// `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<SystemIdentity> {
        let row = self.one_row("IDENTIFY_SYSTEM").await?;
        let addr = self.conn.address().to_string();
        let systemid = text(&row, 0, "IDENTIFY_SYSTEM", &addr)?.to_string();
        let systemid_u64 = systemid.parse().map_err(|_| {
            PgError::protocol(
                format!("IDENTIFY_SYSTEM: invalid systemid {systemid:?}"),
                &addr,
            )
        })?;
        let tli = text(&row, 1, "IDENTIFY_SYSTEM", &addr)?;
        let timeline = tli.parse().map(TimelineId).map_err(|_| {
            PgError::protocol(format!("IDENTIFY_SYSTEM: invalid timeline {tli:?}"), &addr)
        })?;
        Ok(SystemIdentity {
            systemid,
            systemid_u64,
            timeline,
            xlogpos: lsn_col(&row, 2, "IDENTIFY_SYSTEM", &addr)?,
            dbname: row.text(3).map(str::to_string),
        })
    }

    /// `TIMELINE_HISTORY tli`: the history file's name and exact content.
    pub async fn timeline_history(&mut self, tli: TimelineId) -> Result<(String, Bytes)> {
        let row = self.one_row(&format!("TIMELINE_HISTORY {}", tli.0)).await?;
        let addr = self.conn.address().to_string();
        let name = text(&row, 0, "TIMELINE_HISTORY", &addr)?.to_string();
        let content = row
            .bytes(1)
            .cloned()
            .ok_or_else(|| PgError::protocol("TIMELINE_HISTORY: missing content", &addr))?;
        Ok((name, content))
    }

    /// `SHOW wal_segment_size`, in bytes.
    pub async fn wal_segment_size(&mut self) -> Result<u64> {
        let row = self.one_row("SHOW wal_segment_size").await?;
        let addr = self.conn.address().to_string();
        let s = text(&row, 0, "SHOW wal_segment_size", &addr)?;
        parse_size_setting(s)
            .filter(|&n| valid_segment_size(n))
            .ok_or_else(|| PgError::protocol(format!("invalid wal_segment_size {s:?}"), &addr))
    }

    /// `SHOW name` for any setting.
    pub async fn show(&mut self, name: &str) -> Result<String> {
        let row = self.one_row(&format!("SHOW {}", quote_ident(name))).await?;
        Ok(row.text(0).unwrap_or_default().to_string())
    }

    /// `CREATE_REPLICATION_SLOT name PHYSICAL RESERVE_WAL`; returns the slot's consistent point.
    pub async fn create_physical_slot(&mut self, name: &str) -> Result<Option<Lsn>> {
        let row = self
            .one_row(&format!(
                "CREATE_REPLICATION_SLOT {} PHYSICAL RESERVE_WAL",
                quote_ident(name)
            ))
            .await?;
        Ok(row.text(1).and_then(|s| s.parse().ok()))
    }

    /// `CREATE_REPLICATION_SLOT name TEMPORARY PHYSICAL RESERVE_WAL`: a slot
    /// the server drops when this connection ends (PostgreSQL 10+).
    pub async fn create_temporary_physical_slot(&mut self, name: &str) -> Result<Option<Lsn>> {
        let row = self
            .one_row(&format!(
                "CREATE_REPLICATION_SLOT {} TEMPORARY PHYSICAL RESERVE_WAL",
                quote_ident(name)
            ))
            .await?;
        Ok(row.text(1).and_then(|s| s.parse().ok()))
    }

    /// `READ_REPLICATION_SLOT name` (PostgreSQL 15+); `None` if the slot does not exist.
    pub async fn read_replication_slot(&mut self, name: &str) -> Result<Option<SlotInfo>> {
        let row = self
            .one_row(&format!("READ_REPLICATION_SLOT {}", quote_ident(name)))
            .await?;
        let Some(slot_type) = row.text(0) else {
            return Ok(None);
        };
        Ok(Some(SlotInfo {
            slot_type: slot_type.to_string(),
            restart_lsn: row.text(1).and_then(|s| s.parse().ok()),
            restart_tli: row.text(2).and_then(|s| s.parse().ok()).map(TimelineId),
        }))
    }

    /// `DROP_REPLICATION_SLOT name`.
    pub async fn drop_slot(&mut self, name: &str) -> Result<()> {
        self.conn
            .simple_query(&format!("DROP_REPLICATION_SLOT {}", quote_ident(name)))
            .await
            .map(|_| ())
    }

    /// `START_REPLICATION [SLOT s] PHYSICAL start TIMELINE tli`.
    pub async fn start_physical(
        mut self,
        slot: Option<&str>,
        start: Lsn,
        tli: TimelineId,
    ) -> Result<ReplicationStream> {
        let slot = slot
            .map(|s| format!("SLOT {} ", quote_ident(s)))
            .unwrap_or_default();
        let cmd = format!(
            "START_REPLICATION {slot}PHYSICAL {start} TIMELINE {}",
            tli.0
        );
        frontend::query(&cmd, self.conn.write_buf()).map_err(|e| {
            PgError::config(format!("invalid slot name: {e}"), "use a plain slot name")
        })?;
        self.conn.flush().await?;
        let context = format!("START_REPLICATION on {}", self.conn.address());
        loop {
            let msg = self.conn.read_message().await?;
            match msg.tag {
                b'W' => {
                    return Ok(ReplicationStream {
                        conn: self.conn,
                        received: start,
                        context,
                        state: StreamState::Streaming,
                    })
                }
                b'N' => {}
                b'E' => {
                    let err =
                        PgError::server(ServerMessage::parse(&msg.body), &context).with_lsn(start);
                    // Resynchronise so the caller could reuse the connection; ignore secondary errors.
                    let _ = self.conn.collect_results("START_REPLICATION").await;
                    return Err(err);
                }
                // Start point is exactly the end of a historic timeline: no COPY, just the result set.
                b'T' | b'D' | b'C' => {
                    let mut stream = ReplicationStream {
                        conn: self.conn,
                        received: start,
                        context,
                        state: StreamState::Ended,
                    };
                    let first = msg;
                    let next = stream.finish_after_copy(Some(first)).await?;
                    stream.state = StreamState::Pending(next);
                    return Ok(stream);
                }
                other => {
                    return Err(PgError::protocol(
                        format!(
                            "unexpected message {:?} after START_REPLICATION",
                            other as char
                        ),
                        &context,
                    )
                    .with_lsn(start))
                }
            }
        }
    }

    /// Closes the connection.
    pub async fn close(self) -> Result<()> {
        self.conn.close().await
    }
}

/// A message of the replication stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// WAL bytes `[wal_start, wal_start + data.len())`.
    XLogData {
        wal_start: Lsn,
        wal_end: Lsn,
        server_time: TimestampMicros,
        data: Bytes,
    },
    /// Primary keepalive; answer with [`ReplicationStream::send_status`] when `reply_requested`.
    Keepalive {
        wal_end: Lsn,
        server_time: TimestampMicros,
        reply_requested: bool,
    },
    /// The server finished streaming a historic timeline; continue on `next_tli`
    /// from `next_tli_start` with a new `START_REPLICATION` (see [`ReplicationStream::into_client`]).
    EndOfTimeline {
        next_tli: TimelineId,
        next_tli_start: Lsn,
    },
}

#[derive(Debug)]
enum StreamState {
    Streaming,
    /// We sent CopyDone, waiting for the server's.
    Stopping,
    /// A message to return before `Ended`.
    Pending(Option<ReplicationMessage>),
    /// Out of COPY mode; the connection accepts commands again.
    Ended,
}

/// The COPY-both phase of `START_REPLICATION`.
#[derive(Debug)]
pub struct ReplicationStream {
    conn: Connection,
    received: Lsn,
    context: String,
    state: StreamState,
}

fn pg_now() -> i64 {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    unix - TimestampMicros::PG_EPOCH_OFFSET_MICROS
}

impl ReplicationStream {
    /// End of the WAL received so far (start position before any data).
    pub fn received(&self) -> Lsn {
        self.received
    }

    /// Next message; `Ok(None)` once the stream has ended (after
    /// [`ReplicationStream::send_copy_done`], or after `EndOfTimeline` was returned).
    /// Cancel-safe: no message is lost if the future is dropped.
    pub async fn next(&mut self) -> Result<Option<ReplicationMessage>> {
        loop {
            match &mut self.state {
                StreamState::Ended => return Ok(None),
                StreamState::Pending(m) => {
                    let m = m.take();
                    self.state = StreamState::Ended;
                    if m.is_some() {
                        return Ok(m);
                    }
                    continue;
                }
                StreamState::Streaming | StreamState::Stopping => {}
            }
            let msg = self.conn.read_message().await?;
            match msg.tag {
                b'd' => {
                    if let Some(m) = self.decode_copy_data(msg.body)? {
                        return Ok(Some(m));
                    }
                }
                b'c' => {
                    if matches!(self.state, StreamState::Streaming) {
                        frontend::copy_done(self.conn.write_buf());
                        self.conn.flush().await?;
                    }
                    let next = self.finish_after_copy(None).await?;
                    self.state = StreamState::Pending(next);
                }
                b'E' => {
                    return Err(
                        PgError::server(ServerMessage::parse(&msg.body), &self.context)
                            .with_lsn(self.received),
                    )
                }
                b'N' => {}
                b'S' => {}
                // A walsender that shuts down ends COPY with CommandComplete
                // (no CopyDone) once everything sent was confirmed.
                b'C' | b'Z' => {
                    self.state = StreamState::Ended;
                    return Err(PgError::new(
                        ErrorKind::Transient,
                        "the server ended the replication stream (it is shutting down or restarting)",
                        &self.context,
                        "reconnect once it is back",
                    )
                    .with_lsn(self.received));
                }
                other => {
                    return Err(PgError::protocol(
                        format!("unexpected message {:?} while streaming", other as char),
                        &self.context,
                    )
                    .with_lsn(self.received))
                }
            }
        }
    }

    fn decode_copy_data(&mut self, mut body: Bytes) -> Result<Option<ReplicationMessage>> {
        let bad = |what: &str, this: &Self| {
            PgError::protocol(format!("malformed {what} message"), &this.context)
                .with_lsn(this.received)
        };
        if body.is_empty() {
            return Err(bad("CopyData", self));
        }
        match body.get_u8() {
            b'w' => {
                if body.len() < 24 {
                    return Err(bad("XLogData", self));
                }
                let wal_start = Lsn(body.get_u64());
                let wal_end = Lsn(body.get_u64());
                let server_time = TimestampMicros::from_pg(body.get_i64());
                if wal_start != self.received && self.received.is_valid() {
                    return Err(PgError::protocol(
                        format!(
                            "WAL data starts at {wal_start} but {} was expected",
                            self.received
                        ),
                        &self.context,
                    )
                    .with_lsn(self.received));
                }
                self.received = wal_start.plus(body.len() as u64);
                Ok(Some(ReplicationMessage::XLogData {
                    wal_start,
                    wal_end,
                    server_time,
                    data: body,
                }))
            }
            b'k' => {
                if body.len() < 17 {
                    return Err(bad("keepalive", self));
                }
                Ok(Some(ReplicationMessage::Keepalive {
                    wal_end: Lsn(body.get_u64()),
                    server_time: TimestampMicros::from_pg(body.get_i64()),
                    reply_requested: body.get_u8() != 0,
                }))
            }
            // Other CopyData kinds (none defined for physical replication today) are skipped.
            _ => Ok(None),
        }
    }

    /// After COPY mode: reads the optional next-timeline result set up to `ReadyForQuery`.
    async fn finish_after_copy(
        &mut self,
        first: Option<crate::conn::BackendMessage>,
    ) -> Result<Option<ReplicationMessage>> {
        let mut rows = Vec::new();
        let mut pending = first;
        loop {
            let msg = match pending.take() {
                Some(m) => m,
                None => self.conn.read_message().await?,
            };
            match msg.tag {
                b'D' => rows.push(msg.body),
                b'E' => {
                    let err = PgError::server(ServerMessage::parse(&msg.body), &self.context)
                        .with_lsn(self.received);
                    let _ = self.conn.collect_results("START_REPLICATION").await;
                    return Err(err);
                }
                b'Z' => break,
                // RowDescription, CommandComplete, notices, trailing CopyData after our CopyDone.
                _ => {}
            }
        }
        self.state = StreamState::Ended;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let parsed = parse_next_timeline(row);
        match parsed {
            Some((tli, lsn)) => Ok(Some(ReplicationMessage::EndOfTimeline {
                next_tli: tli,
                next_tli_start: lsn,
            })),
            None => Err(PgError::protocol(
                "malformed next-timeline result after streaming",
                &self.context,
            )
            .with_lsn(self.received)),
        }
    }

    /// Sends a standby status update. `flushed` must only cover WAL that is
    /// durable in the archive: the server may recycle everything before it.
    pub async fn send_status(
        &mut self,
        written: Lsn,
        flushed: Lsn,
        applied: Lsn,
        reply_requested: bool,
    ) -> Result<()> {
        let mut payload = bytes::BytesMut::with_capacity(34);
        payload.put_u8(b'r');
        payload.put_u64(written.0);
        payload.put_u64(flushed.0);
        payload.put_u64(applied.0);
        payload.put_i64(pg_now());
        payload.put_u8(u8::from(reply_requested));
        let buf = self.conn.write_buf();
        buf.put_u8(b'd');
        buf.put_i32(4 + payload.len() as i32);
        buf.extend_from_slice(&payload);
        self.conn.flush().await
    }

    /// Asks the server to stop streaming (clean shutdown). Keep calling
    /// [`ReplicationStream::next`] until it returns `Ok(None)`: WAL already in
    /// flight is still delivered.
    pub async fn send_copy_done(&mut self) -> Result<()> {
        if matches!(self.state, StreamState::Streaming) {
            frontend::copy_done(self.conn.write_buf());
            self.conn.flush().await?;
            self.state = StreamState::Stopping;
        }
        Ok(())
    }

    /// The connection back in command mode, once the stream has ended.
    pub fn into_client(self) -> std::result::Result<ReplicationClient, Box<ReplicationStream>> {
        match self.state {
            StreamState::Ended => Ok(ReplicationClient { conn: self.conn }),
            _ => Err(Box::new(self)),
        }
    }
}

fn parse_next_timeline(body: &Bytes) -> Option<(TimelineId, Lsn)> {
    let mut b = body.clone();
    if b.remaining() < 2 {
        return None;
    }
    let n = b.get_u16();
    let mut cols = Vec::new();
    for _ in 0..n {
        if b.remaining() < 4 {
            return None;
        }
        let len = b.get_i32();
        if len < 0 || b.remaining() < len as usize {
            return None;
        }
        cols.push(b.split_to(len as usize));
    }
    let tli = std::str::from_utf8(cols.first()?).ok()?.parse().ok()?;
    let lsn = std::str::from_utf8(cols.get(1)?).ok()?.parse().ok()?;
    Some((TimelineId(tli), lsn))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_settings() {
        assert_eq!(parse_size_setting("16MB"), Some(16 << 20));
        assert_eq!(parse_size_setting("1GB"), Some(1 << 30));
        assert_eq!(parse_size_setting("65536kB"), Some(64 << 20));
        assert_eq!(parse_size_setting("8192"), Some(8192));
        assert_eq!(parse_size_setting("16 MB"), Some(16 << 20));
        assert_eq!(parse_size_setting("MB"), None);
        assert_eq!(parse_size_setting("3XB"), None);
    }

    #[test]
    fn next_timeline_row() {
        let mut b = bytes::BytesMut::new();
        b.put_u16(2);
        b.put_i32(1);
        b.extend_from_slice(b"2");
        b.put_i32(9);
        b.extend_from_slice(b"0/3000160");
        assert_eq!(
            parse_next_timeline(&b.freeze()),
            Some((TimelineId(2), Lsn(0x300_0160)))
        );
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
