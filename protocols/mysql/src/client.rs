//! Binlog replication client: connects as a replica and yields every event
//! with the exact bytes the server stored.
//!
//! Protocol (both flavours, over [`crate::conn`]): log in, query the server
//! identity, set session variables that announce what we understand:
//!
//! * `@source_binlog_checksum` / `@master_binlog_checksum` = the server's
//!   `@@binlog_checksum`: we verify CRC32, so the server keeps the checksums
//!   it wrote (this is the checksum "handshake" of replicas);
//! * `@source_heartbeat_period` / `@master_heartbeat_period` (ns): the server
//!   sends a HEARTBEAT event when idle, which drives our read timeout;
//! * MariaDB: `@mariadb_slave_capability=4` (send real GTID events) and, to
//!   resume by GTID, `@slave_connect_state='d-s-n,...'` with an empty file
//!   name at offset 4;
//!
//! then `COM_REGISTER_SLAVE` and `COM_BINLOG_DUMP` (file + offset; MariaDB with
//! `BINLOG_SEND_ANNOTATE_ROWS_EVENT` so ANNOTATE_ROWS events, which are part
//! of its files, are not skipped) or, for a MySQL GTID start,
//! `COM_BINLOG_DUMP_GTID` carrying the executed GTID set. The server answers
//! with one packet per event: `0x00` + the event bytes as stored, `0xff` +
//! error, or an EOF packet when it ends the stream.
//!
//! Every event's CRC32 is verified when checksums are on. Artificial events
//! (the dump thread's fake ROTATE at the start, MariaDB's fake GTID_LIST,
//! heartbeats, and the FORMAT_DESCRIPTION re-sent with `log_pos = 0` when
//! resuming mid-file) are returned with `artificial = true`: they must not be
//! written into a rebuilt binlog file.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;

use crate::conn::{Conn, ConnParams};
use crate::error::{ErrorKind, MysqlError, Result};
use crate::event::{self, types, DecodeCtx, EventData, EventHeader};
use crate::gtid::{MariaGtidPos, MysqlGtidSet, ServerUuid};
use crate::pos::{BinlogFile, BinlogPos, Flavor, ServerId, FIRST_EVENT_OFFSET};

/// MariaDB `COM_BINLOG_DUMP` flag: also send ANNOTATE_ROWS events.
const BINLOG_SEND_ANNOTATE_ROWS_EVENT: u16 = 2;

/// Where a replication stream starts (and, in errors, where it was).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartFrom {
    /// The oldest binlog file the server still has.
    Beginning,
    /// A file and the offset of the next event to read.
    Position(BinlogPos),
    /// MariaDB: after these GTIDs (one per domain).
    MariaGtid(MariaGtidPos),
    /// MySQL: everything not in this executed set.
    MysqlGtid(MysqlGtidSet),
}

impl fmt::Display for StartFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartFrom::Beginning => f.write_str("the beginning of the binlog"),
            StartFrom::Position(p) => write!(f, "binlog position {p}"),
            StartFrom::MariaGtid(g) => write!(f, "GTID position '{g}'"),
            StartFrom::MysqlGtid(g) => write!(f, "GTID set '{g}'"),
        }
    }
}

/// Tunables of [`BinlogClient`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The id we register with; must differ from every other server and replica.
    pub server_id: ServerId,
    /// Heartbeat period requested from the server.
    pub heartbeat: Duration,
    /// Give up (transient error) when nothing arrives for this long.
    pub read_timeout: Duration,
    pub connect_timeout: Duration,
}

impl ClientOptions {
    pub fn new(server_id: ServerId) -> ClientOptions {
        ClientOptions {
            server_id,
            heartbeat: Duration::from_secs(5),
            read_timeout: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Who we are talking to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerIdentity {
    pub flavor: Flavor,
    /// `SELECT VERSION()`.
    pub version: String,
    pub server_id: ServerId,
    /// MySQL `@@server_uuid` (MariaDB has none).
    pub server_uuid: Option<ServerUuid>,
    /// MySQL `@@gtid_mode` (`ON`, `OFF`, ...).
    pub gtid_mode: Option<String>,
    /// `@@binlog_checksum` (`CRC32` or `NONE`).
    pub binlog_checksum: String,
    /// MySQL `@@gtid_executed` / MariaDB `@@gtid_binlog_pos` at connect time.
    pub gtid_executed: String,
}

/// One binlog event as stored by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent {
    /// Exact bytes (header, body, checksum).
    pub bytes: Bytes,
    pub header: EventHeader,
    /// Position after this event (for artificial events: the current position).
    pub next_pos: BinlogPos,
    /// Not part of the binlog file at this position (see module docs).
    pub artificial: bool,
    /// How to decode this event's body.
    pub ctx: DecodeCtx,
}

impl RawEvent {
    pub fn is_heartbeat(&self) -> bool {
        matches!(
            self.header.type_code,
            types::HEARTBEAT | types::HEARTBEAT_V2
        )
    }

    /// Position of the first byte of this event in its file (`None` for artificial events).
    pub fn start_pos(&self) -> Option<BinlogPos> {
        if self.artificial {
            return None;
        }
        let start = self
            .next_pos
            .offset
            .checked_sub(u64::from(self.header.event_size))?;
        Some(BinlogPos {
            file: self.next_pos.file.clone(),
            offset: start,
        })
    }

    pub fn decode(&self) -> std::result::Result<EventData, crate::error::DecodeError> {
        event::decode(&self.bytes, &self.ctx).map(|(_, d)| d)
    }
}

/// A live replication stream.
pub struct BinlogClient {
    conn: Conn,
    identity: ServerIdentity,
    opts: ClientOptions,
    /// Position after the last event of the file being read.
    current: BinlogPos,
    /// Decoding context from the latest FORMAT_DESCRIPTION.
    ctx: DecodeCtx,
    /// The server ended the stream.
    finished: bool,
}

impl fmt::Debug for BinlogClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BinlogClient")
            .field("identity", &self.identity)
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}

fn col(row: &[Option<String>], i: usize) -> String {
    row.get(i).cloned().flatten().unwrap_or_default()
}

/// Connects (no replication yet) and reads the server identity.
async fn open(url: &str, opts: &ClientOptions) -> Result<(Conn, ServerIdentity)> {
    let params = ConnParams::from_url(url)?;
    let mut conn = Conn::connect(&params, opts.connect_timeout).await?;
    let identity = query_identity(&mut conn).await?;
    Ok((conn, identity))
}

async fn query_identity(conn: &mut Conn) -> Result<ServerIdentity> {
    let rows = conn
        .query("SELECT VERSION(), @@server_id, @@binlog_checksum, @@log_bin")
        .await?;
    let row = rows.first().cloned().unwrap_or_default();
    let version = col(&row, 0);
    let flavor = Flavor::from_version(&version);
    let server_id = ServerId(col(&row, 1).parse().unwrap_or(0));
    if col(&row, 3) != "1" {
        return Err(MysqlError::new(
            ErrorKind::Misconfigured,
            "binary logging is off on the server; enable log_bin (with binlog_format=ROW) and restart it",
        ));
    }
    let (server_uuid, gtid_mode, gtid_executed) = match flavor {
        Flavor::MySql => {
            let rows = conn
                .query("SELECT @@server_uuid, @@gtid_mode, @@gtid_executed")
                .await?;
            let row = rows.first().cloned().unwrap_or_default();
            (
                col(&row, 0).parse::<ServerUuid>().ok(),
                row.get(1).cloned().flatten(),
                col(&row, 2),
            )
        }
        Flavor::MariaDb => {
            let rows = conn.query("SELECT @@gtid_binlog_pos").await?;
            let row = rows.first().cloned().unwrap_or_default();
            (None, None, col(&row, 0))
        }
    };
    Ok(ServerIdentity {
        flavor,
        version,
        server_id,
        server_uuid,
        gtid_mode,
        binlog_checksum: col(&row, 2),
        gtid_executed: gtid_executed.split_whitespace().collect(),
    })
}

/// Reads the server identity without starting replication.
pub async fn server_identity(url: &str) -> Result<ServerIdentity> {
    let opts = ClientOptions::new(ServerId(0));
    let (conn, identity) = open(url, &opts).await?;
    conn.shutdown().await;
    Ok(identity)
}

/// `SHOW BINARY LOGS`: the files the server still has, oldest first, with sizes.
pub async fn list_binlogs(url: &str) -> Result<Vec<(BinlogFile, u64)>> {
    let opts = ClientOptions::new(ServerId(0));
    let (mut conn, _) = open(url, &opts).await?;
    let files = show_binary_logs(&mut conn).await;
    conn.shutdown().await;
    files
}

async fn show_binary_logs(conn: &mut Conn) -> Result<Vec<(BinlogFile, u64)>> {
    let rows = conn.query("SHOW BINARY LOGS").await?;
    Ok(rows
        .iter()
        .filter(|r| r.first().cloned().flatten().is_some())
        .map(|r| (BinlogFile(col(r, 0)), col(r, 1).parse().unwrap_or(0)))
        .collect())
}

/// Rejects a file/offset start the server cannot serve, with a precise kind.
fn precheck_position(pos: &BinlogPos, files: &[(BinlogFile, u64)]) -> Result<()> {
    let at = || StartFrom::Position(pos.clone());
    if let Some((_, size)) = files.iter().find(|(f, _)| *f == pos.file) {
        if pos.offset > *size || pos.offset < FIRST_EVENT_OFFSET {
            return Err(MysqlError::new(
                ErrorKind::UnknownPosition,
                format!(
                    "offset {} is outside binlog file {} ({size} bytes); restart from a valid position",
                    pos.offset, pos.file
                ),
            )
            .with_position(at()));
        }
        return Ok(());
    }
    let first = files.first().and_then(|(f, _)| f.sequence());
    match (pos.file.sequence(), first) {
        (Some(want), Some(first)) if want < first => Err(MysqlError::new(
            ErrorKind::BinlogPurged,
            format!(
                "binlog file {} was purged on the server (oldest is {}); take a new base backup and restart archiving from it (the lost stretch is a gap)",
                pos.file,
                files.first().map(|(f, _)| f.as_str()).unwrap_or("")
            ),
        )
        .with_position(at())),
        _ => Err(MysqlError::new(
            ErrorKind::UnknownPosition,
            format!(
                "binlog file {} does not exist on the server; check that the archive belongs to this server",
                pos.file
            ),
        )
        .with_position(at())),
    }
}

/// The sid block of COM_BINLOG_DUMP_GTID: `n_sids u64 | { uuid [16] |
/// n_intervals u64 | { start u64 | end u64 (exclusive) } }`.
fn sid_block(set: &MysqlGtidSet) -> Vec<u8> {
    let mut b = Vec::new();
    let sids: Vec<_> = set.iter().collect();
    b.extend_from_slice(&(sids.len() as u64).to_le_bytes());
    for (uuid, intervals) in sids {
        b.extend_from_slice(uuid.as_bytes());
        b.extend_from_slice(&(intervals.len() as u64).to_le_bytes());
        for &(a, z) in intervals {
            b.extend_from_slice(&a.to_le_bytes());
            b.extend_from_slice(&z.saturating_add(1).to_le_bytes());
        }
    }
    b
}

fn sql_quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\'', "''")
}

impl BinlogClient {
    /// Connects to `url` as replica `server_id` and starts streaming at `start`.
    pub async fn connect(url: &str, server_id: ServerId, start: StartFrom) -> Result<BinlogClient> {
        BinlogClient::connect_with(url, ClientOptions::new(server_id), start).await
    }

    pub async fn connect_with(
        url: &str,
        opts: ClientOptions,
        start: StartFrom,
    ) -> Result<BinlogClient> {
        let at = || start.clone();
        let with_pos = |e: MysqlError| {
            if e.position().is_none() {
                e.with_position(start.clone())
            } else {
                e
            }
        };
        let (mut conn, identity) = open(url, &opts).await.map_err(with_pos)?;

        // Best effort (needs REPLICATION CLIENT): precise errors for bad file positions.
        if let StartFrom::Position(pos) = &start {
            if let Ok(files) = show_binary_logs(&mut conn).await {
                precheck_position(pos, &files)?;
            }
        }
        match (&start, identity.flavor) {
            (StartFrom::MariaGtid(_), Flavor::MySql) => {
                return Err(MysqlError::new(
                    ErrorKind::InvalidInput,
                    "a MariaDB GTID position was given but the server is MySQL; resume from a MySQL GTID set or a file position",
                )
                .with_position(at()))
            }
            (StartFrom::MysqlGtid(_), Flavor::MariaDb) => {
                return Err(MysqlError::new(
                    ErrorKind::InvalidInput,
                    "a MySQL GTID set was given but the server is MariaDB; resume from a MariaDB GTID position or a file position",
                )
                .with_position(at()))
            }
            _ => {}
        }

        let checksum = if identity.binlog_checksum.eq_ignore_ascii_case("NONE") {
            "NONE"
        } else {
            "CRC32"
        };
        let hb_ns = opts.heartbeat.as_nanos().min(u128::from(u64::MAX)) as u64;
        let mut setup = vec![
            format!("SET @master_binlog_checksum = '{checksum}'"),
            format!("SET @master_heartbeat_period = {hb_ns}"),
        ];
        match identity.flavor {
            Flavor::MySql => {
                setup.push(format!("SET @source_binlog_checksum = '{checksum}'"));
                setup.push(format!("SET @source_heartbeat_period = {hb_ns}"));
            }
            Flavor::MariaDb => {
                setup.push("SET @mariadb_slave_capability = 4".into());
                if let StartFrom::MariaGtid(g) = &start {
                    setup.push(format!(
                        "SET @slave_connect_state = '{}'",
                        sql_quote(&g.to_string())
                    ));
                    setup.push("SET @slave_gtid_strict_mode = 0".into());
                    setup.push("SET @slave_gtid_ignore_duplicates = 0".into());
                }
            }
        }
        for stmt in &setup {
            conn.query(stmt).await.map_err(with_pos)?;
        }
        conn.register_replica(opts.server_id.0)
            .await
            .map_err(|e| with_pos(e.access_denied_means_privilege()))?;

        let flags = match identity.flavor {
            Flavor::MariaDb => BINLOG_SEND_ANNOTATE_ROWS_EVENT,
            Flavor::MySql => 0,
        };
        let mut current = BinlogPos::start_of(BinlogFile::default());
        match &start {
            StartFrom::Beginning | StartFrom::MariaGtid(_) => {
                conn.binlog_dump("", 4, flags, opts.server_id.0).await
            }
            StartFrom::Position(p) => {
                current = p.clone();
                let offset = u32::try_from(p.offset).map_err(|_| {
                    MysqlError::new(
                        ErrorKind::InvalidInput,
                        "binlog offsets beyond 4 GiB cannot be requested with COM_BINLOG_DUMP; resume by GTID",
                    )
                    .with_position(at())
                })?;
                conn.binlog_dump(p.file.as_str(), offset, flags, opts.server_id.0)
                    .await
            }
            StartFrom::MysqlGtid(set) => {
                conn.binlog_dump_gtid(opts.server_id.0, &sid_block(set))
                    .await
            }
        }
        .map_err(with_pos)?;
        Ok(BinlogClient {
            conn,
            identity,
            opts,
            current,
            ctx: DecodeCtx::default(),
            finished: false,
        })
    }

    pub fn identity(&self) -> &ServerIdentity {
        &self.identity
    }

    /// Position after the last file event received (the file name is empty
    /// until the server's first ROTATE names the file).
    pub fn position(&self) -> &BinlogPos {
        &self.current
    }

    fn here(&self) -> StartFrom {
        StartFrom::Position(self.current.clone())
    }

    /// The next event; `Ok(None)` when the server ended the stream normally.
    pub async fn next_event(&mut self) -> Result<Option<RawEvent>> {
        if self.finished {
            return Ok(None);
        }
        let packet = tokio::time::timeout(self.opts.read_timeout, self.conn.read_packet())
            .await
            .map_err(|_| {
                MysqlError::new(
                    ErrorKind::Timeout,
                    format!(
                        "no event or heartbeat from the server for {:?}; reconnect and resume",
                        self.opts.read_timeout
                    ),
                )
                .with_position(self.here())
            })?
            .map_err(|e| e.with_position(self.here()))?;
        match packet.first() {
            Some(0x00) => {}
            Some(0xff) => return Err(crate::conn::err_packet(&packet).with_position(self.here())),
            Some(0xfe) if packet.len() < 9 => {
                self.finished = true;
                return Ok(None);
            }
            _ => {
                return Err(MysqlError::new(
                    ErrorKind::Protocol,
                    "unexpected packet in the binlog stream; check that the URL points at a MySQL or MariaDB server",
                )
                .with_position(self.here()))
            }
        }
        let mut buf = packet;
        buf.remove(0);
        self.process(buf).map(Some)
    }

    fn process(&mut self, buf: Vec<u8>) -> Result<RawEvent> {
        let header = EventHeader::parse(&buf).map_err(|e| e.into_mysql(Some(self.here())))?;
        if header.event_size as usize != buf.len() {
            return Err(MysqlError::new(
                ErrorKind::Protocol,
                format!(
                    "event of type {} has event_size {} but arrived with {} bytes",
                    header.type_code,
                    header.event_size,
                    buf.len()
                ),
            )
            .with_position(self.here()));
        }
        let t = header.type_code;
        let mut ctx = self.ctx;

        if t == types::FORMAT_DESCRIPTION {
            let fde = event::decode_fde(&buf).map_err(|e| e.into_mysql(Some(self.here())))?;
            if fde.checksum == Some(event::ChecksumAlg::Crc32) {
                self.verify(&buf, header)?;
            }
            self.ctx = fde.context();
            ctx = self.ctx;
        } else if self.ctx.checksum {
            self.verify(&buf, header)?;
        } else if t == types::ROTATE
            && self.ctx == DecodeCtx::default()
            && event::checksum_matches(&buf)
        {
            // The first artificial ROTATE precedes any FORMAT_DESCRIPTION but
            // carries a checksum when checksums were negotiated.
            ctx.checksum = true;
        }

        let artificial = header.is_artificial_flag()
            || matches!(t, types::HEARTBEAT | types::HEARTBEAT_V2)
            || (t == types::ROTATE && (header.timestamp == 0 || header.log_pos == 0))
            || (t == types::FORMAT_DESCRIPTION && header.log_pos == 0);

        let mut next_file: Option<BinlogPos> = None;
        if t == types::ROTATE {
            match event::decode(&buf, &ctx).map_err(|e| e.into_mysql(Some(self.here())))? {
                (
                    _,
                    EventData::Rotate {
                        position,
                        next_file: f,
                    },
                ) => {
                    next_file = Some(BinlogPos {
                        file: f,
                        offset: position,
                    })
                }
                (_, other) => {
                    return Err(MysqlError::new(
                        ErrorKind::Protocol,
                        format!("ROTATE event decoded as {other:?}"),
                    )
                    .with_position(self.here()))
                }
            }
        }

        let next_pos = if artificial {
            if let Some(p) = next_file.take() {
                self.current = p;
            }
            self.current.clone()
        } else {
            if header.log_pos != 0 {
                self.current.offset = u64::from(header.log_pos);
            }
            let here = self.current.clone();
            if let Some(p) = next_file {
                self.current = p;
            }
            here
        };
        Ok(RawEvent {
            bytes: Bytes::from(buf),
            header,
            next_pos,
            artificial,
            ctx,
        })
    }

    fn verify(&self, buf: &[u8], header: EventHeader) -> Result<()> {
        if event::checksum_matches(buf) {
            return Ok(());
        }
        Err(MysqlError::new(
            ErrorKind::ChecksumMismatch,
            format!(
                "binlog event of type {} ({} bytes) failed its CRC32 check; the server's binlog may be corrupt, inspect it with mysqlbinlog/mariadb-binlog at this position",
                header.type_code,
                buf.len()
            ),
        )
        .with_position(self.here()))
    }

    /// Ends the stream and closes the connection.
    pub async fn close(self) {
        self.conn.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precheck() {
        let files = vec![
            (BinlogFile::new("bin.000003"), 500),
            (BinlogFile::new("bin.000004"), 300),
        ];
        assert!(precheck_position(&BinlogPos::new("bin.000003", 400), &files).is_ok());
        let e = precheck_position(&BinlogPos::new("bin.000001", 4), &files).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BinlogPurged);
        assert!(e.to_string().contains("bin.000001:4"));
        let e = precheck_position(&BinlogPos::new("bin.000009", 4), &files).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnknownPosition);
        let e = precheck_position(&BinlogPos::new("bin.000004", 301), &files).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnknownPosition);
    }

    #[test]
    fn gtid_set_to_sid_block_uses_exclusive_ends() {
        let set: MysqlGtidSet = "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5:7"
            .parse()
            .unwrap();
        let b = sid_block(&set);
        assert_eq!(b.len(), 8 + 16 + 8 + 2 * 16);
        assert_eq!(&b[..8], &1u64.to_le_bytes());
        assert_eq!(b[8], 0x3e);
        assert_eq!(&b[24..32], &2u64.to_le_bytes());
        assert_eq!(&b[32..40], &1u64.to_le_bytes());
        assert_eq!(&b[40..48], &6u64.to_le_bytes());
        assert_eq!(&b[48..56], &7u64.to_le_bytes());
        assert_eq!(&b[56..64], &8u64.to_le_bytes());
        assert_eq!(sid_block(&MysqlGtidSet::new()), 0u64.to_le_bytes());
    }
}
