//! Binlog replication client: connects as a replica and yields every event
//! with the exact bytes the server stored.
//!
//! Protocol (both flavours): log in (mysql_async handles the handshake and
//! the `mysql_native_password` / `caching_sha2_password` exchanges), query the
//! server identity, set session variables that announce what we understand:
//!
//! * `@source_binlog_checksum` / `@master_binlog_checksum`: we verify CRC32,
//!   so the server keeps the checksums it wrote;
//! * `@source_heartbeat_period` / `@master_heartbeat_period` (ns): the server
//!   sends a HEARTBEAT event when idle, which drives our read timeout;
//! * MariaDB: `@mariadb_slave_capability=4` (send real GTID events) and, to
//!   resume by GTID, `@slave_connect_state='d-s-n,...'`;
//!
//! then `COM_REGISTER_SLAVE` and `COM_BINLOG_DUMP` (file + offset) or, for a
//! MySQL GTID start, `COM_BINLOG_DUMP_GTID` carrying the executed GTID set.
//! The server answers with one event per packet.
//!
//! Event bytes: mysql_async hands us `Event` values that keep the header and
//! body verbatim; `Event::write` re-serialises them and recomputes the CRC32.
//! We compare that CRC against the checksum the server sent, so a returned
//! [`RawEvent`] is byte-identical to what the server stored, and corrupted
//! events are rejected. Events mysql_async synthesises by decompressing a
//! MySQL TRANSACTION_PAYLOAD event are not part of the file and are dropped.
//!
//! Artificial events (the dump thread's fake ROTATE at the start, MariaDB's
//! fake GTID_LIST, heartbeats, and the FORMAT_DESCRIPTION re-sent when
//! resuming mid-file with `log_pos = 0`) are returned with `artificial = true`:
//! they must not be written into a rebuilt binlog file.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use mysql_async::binlog::events::{Event, TransactionPayloadEvent};
use mysql_async::binlog::BinlogVersion;
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStream, BinlogStreamRequest, Conn, GnoInterval, Opts, OptsBuilder, Sid};

use crate::error::{ErrorKind, MysqlError, Result};
use crate::event::{self, types, DecodeCtx, EventData, EventHeader, CHECKSUM_LEN, HEADER_LEN};
use crate::gtid::{MariaGtidPos, MysqlGtidSet, ServerUuid};
use crate::pos::{BinlogFile, BinlogPos, Flavor, ServerId, FIRST_EVENT_OFFSET};

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
        matches!(self.header.type_code, types::HEARTBEAT | types::HEARTBEAT_V2)
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
    stream: BinlogStream,
    identity: ServerIdentity,
    opts: ClientOptions,
    /// Position after the last event of the file being read.
    current: BinlogPos,
    /// Decoding context from the latest FORMAT_DESCRIPTION.
    ctx: DecodeCtx,
    /// Decompressed inner events of a TRANSACTION_PAYLOAD still to drop.
    skip_inner: usize,
}

impl fmt::Debug for BinlogClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BinlogClient")
            .field("identity", &self.identity)
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}

/// Replaces the password of a `mysql://user:pass@host` URL with `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

pub(crate) fn map_err(e: mysql_async::Error, position: Option<StartFrom>) -> MysqlError {
    use mysql_async::{DriverError, Error};
    let err = match e {
        Error::Server(se) => return MysqlError::from_server(se.code, &se.message, position),
        Error::Io(io) => MysqlError::new(
            ErrorKind::Io,
            format!("connection to the server failed ({io}); it will be retried"),
        ),
        Error::Driver(DriverError::ConnectionClosed) | Error::Driver(DriverError::PacketOutOfOrder) => {
            MysqlError::new(
                ErrorKind::ServerGone,
                "the server closed the connection; it will be retried from the last durable position",
            )
        }
        Error::Driver(d) => MysqlError::new(
            ErrorKind::Protocol,
            format!("unexpected reply from the server ({d}); check that the URL points at a MySQL or MariaDB server"),
        ),
        Error::Url(u) => MysqlError::new(
            ErrorKind::InvalidInput,
            format!("invalid MySQL URL ({u}); expected mysql://user:password@host:port"),
        ),
        Error::Other(o) => MysqlError::new(ErrorKind::Protocol, format!("{o}")),
    };
    match position {
        Some(p) => err.with_position(p),
        None => err,
    }
}

fn row_str(v: Option<String>) -> String {
    v.unwrap_or_default()
}

/// Connects (no replication) and reads the server identity.
async fn open(url: &str, opts: &ClientOptions) -> Result<(Conn, ServerIdentity)> {
    let parsed = Opts::from_url(url).map_err(|e| map_err(e.into(), None))?;
    let builder = OptsBuilder::from_opts(parsed).prefer_socket(false);
    let conn = tokio::time::timeout(opts.connect_timeout, Conn::new(builder))
        .await
        .map_err(|_| {
            MysqlError::new(
                ErrorKind::Timeout,
                format!(
                    "connecting to {} timed out after {:?}; it will be retried",
                    redact_url(url),
                    opts.connect_timeout
                ),
            )
        })?
        .map_err(|e| map_err(e, None))?;
    let mut conn = conn;
    let identity = query_identity(&mut conn).await?;
    Ok((conn, identity))
}

async fn query_identity(conn: &mut Conn) -> Result<ServerIdentity> {
    let row: Option<(Option<String>, Option<String>, Option<String>, Option<String>)> = conn
        .query_first("SELECT VERSION(), @@server_id, @@binlog_checksum, @@log_bin")
        .await
        .map_err(|e| map_err(e, None))?;
    let (version, server_id, checksum, log_bin) = row.unwrap_or_default();
    let version = row_str(version);
    let flavor = Flavor::from_version(&version);
    let server_id = ServerId(row_str(server_id).parse().unwrap_or(0));
    if row_str(log_bin) != "1" {
        return Err(MysqlError::new(
            ErrorKind::Misconfigured,
            "binary logging is off on the server; enable log_bin (with binlog_format=ROW) and restart it",
        ));
    }
    let (server_uuid, gtid_mode, gtid_executed) = match flavor {
        Flavor::MySql => {
            let row: Option<(Option<String>, Option<String>, Option<String>)> = conn
                .query_first("SELECT @@server_uuid, @@gtid_mode, @@gtid_executed")
                .await
                .map_err(|e| map_err(e, None))?;
            let (uuid, mode, executed) = row.unwrap_or_default();
            let uuid = row_str(uuid).parse::<ServerUuid>().ok();
            (uuid, mode, row_str(executed))
        }
        Flavor::MariaDb => {
            let row: Option<Option<String>> = conn
                .query_first("SELECT @@gtid_binlog_pos")
                .await
                .map_err(|e| map_err(e, None))?;
            (None, None, row.flatten().unwrap_or_default())
        }
    };
    Ok(ServerIdentity {
        flavor,
        version,
        server_id,
        server_uuid,
        gtid_mode,
        binlog_checksum: row_str(checksum),
        gtid_executed: gtid_executed.split_whitespace().collect(),
    })
}

/// Reads the server identity without starting replication.
pub async fn server_identity(url: &str) -> Result<ServerIdentity> {
    let opts = ClientOptions::new(ServerId(0));
    let (conn, identity) = open(url, &opts).await?;
    let _ = conn.disconnect().await;
    Ok(identity)
}

/// `SHOW BINARY LOGS`: the files the server still has, oldest first, with sizes.
pub async fn list_binlogs(conn: &mut Conn) -> Result<Vec<(BinlogFile, u64)>> {
    let rows: Vec<mysql_async::Row> = conn
        .query("SHOW BINARY LOGS")
        .await
        .map_err(|e| map_err(e, None))?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let name: Option<String> = row.get(0);
        let size: Option<String> = row.get(1);
        if let Some(name) = name {
            out.push((
                BinlogFile(name),
                size.and_then(|s| s.parse().ok()).unwrap_or(0),
            ));
        }
    }
    Ok(out)
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

fn mysql_sids(set: &MysqlGtidSet) -> Vec<Sid<'static>> {
    set.iter()
        .map(|(uuid, intervals)| {
            let ivs = intervals
                .iter()
                .map(|&(a, b)| GnoInterval::new(a, b.saturating_add(1)))
                .collect();
            Sid::new(*uuid.as_bytes()).with_intervals(ivs)
        })
        .collect()
}

fn sql_quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\'', "''")
}

impl BinlogClient {
    /// Connects to `url` as replica `server_id` and starts streaming at `start`.
    pub async fn connect(url: &str, server_id: ServerId, start: StartFrom) -> Result<BinlogClient> {
        BinlogClient::connect_with(url, ClientOptions::new(server_id), start).await
    }

    pub async fn connect_with(url: &str, opts: ClientOptions, start: StartFrom) -> Result<BinlogClient> {
        let at = Some(start.clone());
        let (mut conn, identity) = open(url, &opts).await.map_err(|e| match at.clone() {
            Some(p) if e.position().is_none() => e.with_position(p),
            _ => e,
        })?;
        let sql_err = |e| map_err(e, at.clone());

        // Best effort (needs REPLICATION CLIENT): precise errors for bad file positions.
        if let StartFrom::Position(pos) = &start {
            if let Ok(files) = list_binlogs(&mut conn).await {
                precheck_position(pos, &files)?;
            }
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
            conn.query_drop(stmt.as_str()).await.map_err(sql_err)?;
        }

        let mut current = BinlogPos::start_of(BinlogFile::default());
        let filename: Vec<u8>;
        let mut request = BinlogStreamRequest::new(opts.server_id.0);
        match &start {
            StartFrom::Beginning => {}
            StartFrom::Position(p) => {
                filename = p.file.as_str().as_bytes().to_vec();
                request = request.with_filename(&filename).with_pos(p.offset);
                current = p.clone();
            }
            StartFrom::MariaGtid(_) => {
                if identity.flavor != Flavor::MariaDb {
                    return Err(MysqlError::new(
                        ErrorKind::InvalidInput,
                        "a MariaDB GTID position was given but the server is MySQL; resume from a MySQL GTID set or a file position",
                    )
                    .with_position(start.clone()));
                }
            }
            StartFrom::MysqlGtid(set) => {
                if identity.flavor != Flavor::MySql {
                    return Err(MysqlError::new(
                        ErrorKind::InvalidInput,
                        "a MySQL GTID set was given but the server is MariaDB; resume from a MariaDB GTID position or a file position",
                    )
                    .with_position(start.clone()));
                }
                request = request.with_gtid().with_gtid_set(mysql_sids(set));
            }
        }
        let stream = conn.get_binlog_stream(request).await.map_err(sql_err)?;
        Ok(BinlogClient {
            stream,
            identity,
            opts,
            current,
            ctx: DecodeCtx::default(),
            skip_inner: 0,
        })
    }

    pub fn identity(&self) -> &ServerIdentity {
        &self.identity
    }

    /// Position after the last file event received (file name is empty until
    /// the server's first ROTATE names the file).
    pub fn position(&self) -> &BinlogPos {
        &self.current
    }

    fn here(&self) -> Option<StartFrom> {
        Some(StartFrom::Position(self.current.clone()))
    }

    /// The next event; `Ok(None)` when the server ended the stream normally.
    pub async fn next_event(&mut self) -> Result<Option<RawEvent>> {
        loop {
            let item = tokio::time::timeout(self.opts.read_timeout, self.stream.next())
                .await
                .map_err(|_| {
                    MysqlError::new(
                        ErrorKind::Timeout,
                        format!(
                            "no event or heartbeat from the server for {:?}; reconnecting",
                            self.opts.read_timeout
                        ),
                    )
                    .with_position(StartFrom::Position(self.current.clone()))
                })?;
            let ev = match item {
                None => return Ok(None),
                Some(Err(e)) => return Err(map_err(e, self.here())),
                Some(Ok(ev)) => ev,
            };
            if self.skip_inner > 0 {
                self.skip_inner -= 1;
                continue;
            }
            return self.process(ev).map(Some);
        }
    }

    fn process(&mut self, ev: Event) -> Result<RawEvent> {
        let mut buf = Vec::with_capacity(ev.header().event_size() as usize);
        ev.write(BinlogVersion::Version4, &mut buf).map_err(|e| {
            MysqlError::new(ErrorKind::Protocol, format!("cannot serialise event: {e}"))
                .with_position(StartFrom::Position(self.current.clone()))
        })?;
        let header = EventHeader::parse(&buf)
            .map_err(|e| e.into_mysql(self.here()))?;
        if header.event_size as usize != buf.len() {
            return Err(MysqlError::new(
                ErrorKind::Protocol,
                format!(
                    "event of type {} re-serialised to {} bytes instead of {}; report this with the position",
                    header.type_code,
                    buf.len(),
                    header.event_size
                ),
            )
            .with_position(StartFrom::Position(self.current.clone())));
        }
        let t = header.type_code;
        let mut ctx = self.ctx;

        if t == types::FORMAT_DESCRIPTION {
            let fde = event::decode_fde(&buf).map_err(|e| e.into_mysql(self.here()))?;
            if fde.checksum == Some(event::ChecksumAlg::Crc32) {
                self.verify(&ev, &buf, header)?;
            }
            self.ctx = fde.context();
            ctx = self.ctx;
        } else if self.ctx.checksum {
            self.verify(&ev, &buf, header)?;
        } else if t == types::ROTATE
            && self.ctx == DecodeCtx::default()
            && event::checksum_matches(&buf)
        {
            // The first artificial ROTATE precedes any FORMAT_DESCRIPTION but
            // may already carry a checksum.
            ctx.checksum = true;
        }

        let artificial = header.is_artificial_flag()
            || matches!(t, types::HEARTBEAT | types::HEARTBEAT_V2)
            || (t == types::ROTATE && (header.timestamp == 0 || header.log_pos == 0))
            || (t == types::FORMAT_DESCRIPTION && header.log_pos == 0);

        let mut next_file: Option<BinlogPos> = None;
        if t == types::ROTATE {
            match event::decode(&buf, &ctx).map_err(|e| e.into_mysql(self.here()))? {
                (_, EventData::Rotate { position, next_file: f }) => {
                    next_file = Some(BinlogPos { file: f, offset: position })
                }
                (_, other) => {
                    return Err(MysqlError::new(
                        ErrorKind::Protocol,
                        format!("ROTATE event decoded as {other:?}"),
                    ))
                }
            }
        } else if t == types::TRANSACTION_PAYLOAD {
            self.skip_inner = count_payload_events(&ev);
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

    /// Compares the CRC32 the server sent with the one of the bytes we hold.
    fn verify(&self, ev: &Event, buf: &[u8], header: EventHeader) -> Result<()> {
        let bad = |what: String| {
            MysqlError::new(
                ErrorKind::ChecksumMismatch,
                format!(
                    "binlog event of type {} failed its CRC32 check ({what}); the server's binlog may be corrupt, check it with mysqlbinlog/mariadb-binlog",
                    header.type_code
                ),
            )
            .with_position(StartFrom::Position(self.current.clone()))
        };
        let Some(sent) = ev.checksum() else {
            return Err(bad("no checksum present".into()));
        };
        if buf.len() < HEADER_LEN + CHECKSUM_LEN {
            return Err(bad("event too short".into()));
        }
        let computed = event::compute_checksum(&buf[..buf.len() - CHECKSUM_LEN]);
        let sent = u32::from_le_bytes(sent);
        if computed != sent {
            return Err(bad(format!("sent {sent:08x}, computed {computed:08x}")));
        }
        Ok(())
    }

    /// Ends the stream and closes the connection.
    pub async fn close(self) {
        let _ = self.stream.close().await;
    }
}

/// Number of events mysql_async will synthesise from a TRANSACTION_PAYLOAD.
fn count_payload_events(ev: &Event) -> usize {
    let Ok(tpe) = ev.read_event::<TransactionPayloadEvent<'_>>() else {
        return 0;
    };
    let data = tpe.danger_decompress();
    let mut off = 0usize;
    let mut n = 0usize;
    while off + HEADER_LEN <= data.len() {
        let size = event::le_u32(&data[off + 9..off + 13]) as usize;
        if size < HEADER_LEN {
            break;
        }
        off += size;
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction() {
        assert_eq!(
            redact_url("mysql://pitr:secret@127.0.0.1:3306/db"),
            "mysql://pitr:***@127.0.0.1:3306/db"
        );
        assert_eq!(redact_url("mysql://pitr@h"), "mysql://pitr@h");
        assert_eq!(redact_url("mysql://u:p@ss@h"), "mysql://u:***@h");
    }

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
    fn gtid_set_to_sids_uses_exclusive_ends() {
        let set: MysqlGtidSet = "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5:7"
            .parse()
            .unwrap();
        let sids = mysql_sids(&set);
        assert_eq!(sids.len(), 1);
        assert_eq!(
            sids[0].to_string(),
            "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5:7"
        );
        assert_eq!(sids[0].intervals()[0].end(), 6);
    }
}
