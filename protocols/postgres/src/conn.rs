//! A PostgreSQL frontend/backend protocol (v3) connection.
//!
//! Backend messages are framed here: a 1-byte type tag, an `i32` length
//! (including itself, excluding the tag) and the body. Frontend messages are
//! built with `postgres_protocol::message::frontend`.
//!
//! Connection sequence: TCP or unix socket (with `connect_timeout`), an
//! optional `SSLRequest` + TLS handshake, the `StartupMessage` (with
//! `replication=true` for a physical walsender connection), authentication
//! (trust, cleartext, MD5 or SCRAM-SHA-256 via `AuthenticationRequest`
//! codes 0/3/5/10/11/12), then `ParameterStatus`/`BackendKeyData` until
//! `ReadyForQuery`. Queries use the simple query protocol; rows come back
//! as raw column bytes (text format, except walsender columns that carry
//! raw file content).
//!
//! The read buffer is large (256 KiB) and frames are split off it as
//! `Bytes`, so WAL payloads are never copied after the socket read.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::conninfo::{AuthMethod, ChannelBindingMode, Config, Host, SslMode};
use crate::error::{ErrorKind, PgError, Result, ServerMessage};

const READ_CHUNK: usize = 256 * 1024;
/// Largest backend message we accept (the server's own limit is 1 GiB).
const MAX_MESSAGE: usize = 1 << 30;

/// Which kind of backend process to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartupMode {
    /// A normal session (SQL).
    Normal,
    /// A physical-replication walsender (`replication=true`).
    PhysicalReplication,
}

use pitr_tls::Stream;

/// One backend message: its type tag and body (without tag and length).
#[derive(Debug, Clone)]
pub struct BackendMessage {
    pub tag: u8,
    pub body: Bytes,
}

/// One row of a simple-query result; values are raw (text-format) bytes.
#[derive(Debug, Clone)]
pub struct Row {
    columns: Arc<[String]>,
    values: Vec<Option<Bytes>>,
}

impl Row {
    /// Column names of the result set.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Raw bytes of column `i` (`None` for SQL NULL or out of range).
    pub fn bytes(&self, i: usize) -> Option<&Bytes> {
        self.values.get(i).and_then(|v| v.as_ref())
    }

    /// Column `i` as UTF-8 text.
    pub fn text(&self, i: usize) -> Option<&str> {
        self.bytes(i).and_then(|b| std::str::from_utf8(b).ok())
    }

    /// Column `name` as UTF-8 text.
    pub fn get(&self, name: &str) -> Option<&str> {
        let i = self.columns.iter().position(|c| c == name)?;
        self.text(i)
    }
}

/// An authenticated connection, ready for simple queries.
pub struct Connection {
    io: Stream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    address: String,
    params: HashMap<String, String>,
    tls: bool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("address", &self.address)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Connects, negotiates TLS and authenticates, all within `cfg.connect_timeout`.
    pub async fn connect(cfg: &Config, mode: StartupMode) -> Result<Connection> {
        let address = cfg.address();
        match tokio::time::timeout(cfg.connect_timeout, Connection::connect_inner(cfg, mode, &address)).await {
            Ok(r) => r,
            Err(_) => Err(PgError::new(
                ErrorKind::Transient,
                format!("connection attempt timed out after {:?}", cfg.connect_timeout),
                address,
                "check that the server is reachable (firewall, host, port); the connection will be retried",
            )),
        }
    }

    async fn connect_inner(cfg: &Config, mode: StartupMode, address: &str) -> Result<Connection> {
        let io = match &cfg.host {
            Host::Tcp(h) => {
                let s = TcpStream::connect((h.as_str(), cfg.port))
                    .await
                    .map_err(|e| PgError::io(e, "could not connect", address))?;
                let _ = s.set_nodelay(true);
                if cfg.sslmode == SslMode::Disable {
                    Stream::Tcp(s)
                } else {
                    negotiate_tls(s, cfg, h, address).await?
                }
            }
            Host::Unix(_) => {
                let path = cfg.socket_path().unwrap_or_default();
                Stream::Unix(
                    UnixStream::connect(&path)
                        .await
                        .map_err(|e| PgError::io(e, "could not connect", address))?,
                )
            }
        };
        let tls = matches!(io, Stream::Tls(_));
        let mut conn = Connection {
            io,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::with_capacity(8 * 1024),
            address: address.to_string(),
            params: HashMap::new(),
            tls,
        };
        conn.startup(cfg, mode).await?;
        Ok(conn)
    }

    async fn startup(&mut self, cfg: &Config, mode: StartupMode) -> Result<()> {
        let dbname = cfg.dbname.clone().unwrap_or_else(|| cfg.user.clone());
        let mut params: Vec<(&str, &str)> = vec![("user", cfg.user.as_str())];
        match mode {
            StartupMode::Normal => params.push(("database", dbname.as_str())),
            StartupMode::PhysicalReplication => params.push(("replication", "true")),
        }
        params.push(("client_encoding", "UTF8"));
        if let Some(app) = &cfg.application_name {
            params.push(("application_name", app.as_str()));
        }
        frontend::startup_message(params.iter().copied(), &mut self.wbuf).map_err(|e| {
            PgError::config(
                format!("invalid startup parameter: {e}"),
                "remove NUL bytes from user/dbname",
            )
        })?;
        self.flush().await?;

        let pw_db = match mode {
            StartupMode::Normal => dbname.as_str(),
            StartupMode::PhysicalReplication => "replication",
        };
        let mut scram: Option<ScramSha256> = None;
        // Whether the server asked for any authentication (AuthenticationOk alone is "none").
        let mut asked = false;
        // Whether the SCRAM exchange in progress is bound to the TLS connection.
        let mut bound = false;
        let require_binding = cfg.channel_binding == ChannelBindingMode::Require;
        let unbound = |what: &str, at: &str| {
            PgError::new(
                ErrorKind::Definite,
                format!("channel_binding=require, but {what}; nothing was sent"),
                at,
                "connect over TLS (sslmode=require or stricter) to a server with scram-sha-256 in pg_hba.conf, or drop channel_binding=require",
            )
        };
        loop {
            let msg = self.read_message().await?;
            match msg.tag {
                b'R' => {
                    let mut body = msg.body.clone();
                    if body.remaining() < 4 {
                        return Err(PgError::protocol(
                            "short authentication request",
                            &self.address,
                        ));
                    }
                    let code = body.get_i32();
                    let method = match code {
                        0 if !asked => Some(AuthMethod::None),
                        3 => Some(AuthMethod::Password),
                        5 => Some(AuthMethod::Md5),
                        10 => Some(AuthMethod::ScramSha256),
                        _ => None,
                    };
                    if let (Some(m), Some(req)) = (method, &cfg.require_auth) {
                        if !req.allows(m) {
                            return Err(PgError::new(
                                ErrorKind::Definite,
                                format!(
                                    "the server asked for {} authentication, which require_auth={} does not allow; nothing was sent",
                                    m.as_str(),
                                    req.text
                                ),
                                &self.address,
                                "check the server's pg_hba.conf (and that you reach the server you mean), or change require_auth",
                            ));
                        }
                    }
                    asked |= code != 0;
                    match code {
                        0 => {
                            if require_binding && !bound {
                                return Err(unbound("the server let the login in without a channel-bound SCRAM exchange", &self.address));
                            }
                        }
                        3 | 5 => {
                            if require_binding {
                                return Err(unbound("the server asked for a password instead of SCRAM", &self.address));
                            }
                            let pw = self.password(cfg, pw_db)?;
                            if code == 3 {
                                frontend::password_message(pw.as_bytes(), &mut self.wbuf)
                            } else {
                                if body.remaining() < 4 {
                                    return Err(PgError::protocol("short MD5 salt", &self.address));
                                }
                                let salt = [body[0], body[1], body[2], body[3]];
                                let hash = md5_hash(cfg.user.as_bytes(), pw.as_bytes(), salt);
                                frontend::password_message(hash.as_bytes(), &mut self.wbuf)
                            }
                            .map_err(|e| PgError::config(format!("invalid password: {e}"), "remove NUL bytes from the password"))?;
                            self.flush().await?;
                        }
                        10 => {
                            let mechanisms: Vec<&[u8]> = body.split(|&b| b == 0).filter(|m| !m.is_empty()).collect();
                            let plus = mechanisms.contains(&&b"SCRAM-SHA-256-PLUS"[..]);
                            let end_point = match cfg.channel_binding {
                                ChannelBindingMode::Disable => None,
                                _ => self.tls_end_point(),
                            };
                            let (mechanism, binding) = match (&end_point, plus) {
                                (Some(h), true) => ("SCRAM-SHA-256-PLUS", ChannelBinding::tls_server_end_point(h.clone())),
                                _ if require_binding => {
                                    return Err(unbound(
                                        if self.tls {
                                            "the server does not offer SCRAM-SHA-256-PLUS"
                                        } else {
                                            "the connection is not encrypted"
                                        },
                                        &self.address,
                                    ))
                                }
                                // We could bind, the server did not offer it: say so ("y").
                                (Some(_), false) => ("SCRAM-SHA-256", ChannelBinding::unrequested()),
                                (None, _) => ("SCRAM-SHA-256", ChannelBinding::unsupported()),
                            };
                            bound = mechanism == "SCRAM-SHA-256-PLUS";
                            if !bound && !mechanisms.contains(&&b"SCRAM-SHA-256"[..]) {
                                return Err(PgError::new(
                                    ErrorKind::Definite,
                                    "the server offers no supported SASL mechanism (need SCRAM-SHA-256)",
                                    &self.address,
                                    "configure the server for scram-sha-256 or md5 authentication",
                                ));
                            }
                            let pw = self.password(cfg, pw_db)?;
                            let s = ScramSha256::new(pw.as_bytes(), binding);
                            frontend::sasl_initial_response(mechanism, s.message(), &mut self.wbuf)
                                .map_err(|e| PgError::protocol(format!("SASL: {e}"), &self.address))?;
                            scram = Some(s);
                            self.flush().await?;
                        }
                        11 | 12 => {
                            let Some(s) = scram.as_mut() else {
                                return Err(PgError::protocol("SASL message without SASL start", &self.address));
                            };
                            let r = if code == 11 { s.update(&body) } else { s.finish(&body) };
                            r.map_err(|e| {
                                PgError::new(
                                    ErrorKind::Definite,
                                    format!("SCRAM authentication failed: {e}"),
                                    &self.address,
                                    "check the password in the URL, PGPASSWORD or ~/.pgpass",
                                )
                            })?;
                            if code == 11 {
                                frontend::sasl_response(s.message(), &mut self.wbuf)
                                    .map_err(|e| PgError::protocol(format!("SASL: {e}"), &self.address))?;
                                self.flush().await?;
                            }
                        }
                        other => {
                            return Err(PgError::new(
                                ErrorKind::Definite,
                                format!("the server requests unsupported authentication method {other}"),
                                &self.address,
                                "use trust, password, md5 or scram-sha-256 authentication in pg_hba.conf",
                            ))
                        }
                    }
                }
                b'E' => {
                    return Err(PgError::server(
                        ServerMessage::parse(&msg.body),
                        &self.address,
                    ))
                }
                b'S' => self.parameter_status(&msg.body),
                b'N' => log_notice(&msg.body),
                b'K' => {}
                b'Z' => return Ok(()),
                other => {
                    return Err(PgError::protocol(
                        format!("unexpected message {:?} during startup", other as char),
                        &self.address,
                    ))
                }
            }
        }
    }

    fn password(&self, cfg: &Config, database: &str) -> Result<String> {
        cfg.resolve_password(database).ok_or_else(|| {
            PgError::new(
                ErrorKind::Definite,
                format!(
                    "the server asks for a password for user \"{}\" but none is configured",
                    cfg.user
                ),
                &self.address,
                "put the password in the URL, PGPASSWORD or ~/.pgpass",
            )
        })
    }

    /// The `tls-server-end-point` binding data of a TLS connection's server certificate.
    fn tls_end_point(&self) -> Option<Vec<u8>> {
        let Stream::Tls(t) = &self.io else {
            return None;
        };
        let cert = t.get_ref().1.peer_certificates()?.first()?;
        crate::channel_binding::server_end_point(cert.as_ref())
    }

    fn parameter_status(&mut self, body: &[u8]) {
        let mut parts = body.split(|&b| b == 0);
        if let (Some(k), Some(v)) = (parts.next(), parts.next()) {
            self.params.insert(
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            );
        }
    }

    /// A server parameter reported at startup (`server_version`, `integer_datetimes`, ...).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// The server's major version number (e.g. 15, 18), from `server_version`.
    pub fn server_major_version(&self) -> Option<u32> {
        let v = self.parameter("server_version")?;
        v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    }

    /// Address used in messages.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// True when the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Appends frontend bytes to the write buffer (sent by [`Connection::flush`]).
    pub(crate) fn write_buf(&mut self) -> &mut BytesMut {
        &mut self.wbuf
    }

    /// Writes out the write buffer.
    pub(crate) async fn flush(&mut self) -> Result<()> {
        if !self.wbuf.is_empty() {
            let data = self.wbuf.split();
            self.io
                .write_all(&data)
                .await
                .map_err(|e| PgError::io(e, "could not send to the server", &self.address))?;
        }
        self.io
            .flush()
            .await
            .map_err(|e| PgError::io(e, "could not send to the server", &self.address))
    }

    /// Reads the next backend message.
    pub async fn read_message(&mut self) -> Result<BackendMessage> {
        loop {
            if self.rbuf.len() >= 5 {
                let len =
                    i32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]]);
                let len = usize::try_from(len)
                    .ok()
                    .filter(|l| (4..=MAX_MESSAGE).contains(l))
                    .ok_or_else(|| {
                        PgError::protocol(format!("invalid message length {len}"), &self.address)
                    })?;
                if self.rbuf.len() > len {
                    let mut frame = self.rbuf.split_to(len + 1).freeze();
                    let tag = frame[0];
                    frame.advance(5);
                    return Ok(BackendMessage { tag, body: frame });
                }
                let missing = len + 1 - self.rbuf.len();
                self.rbuf.reserve(missing.max(READ_CHUNK));
            } else if self.rbuf.capacity() - self.rbuf.len() < 64 * 1024 {
                self.rbuf.reserve(READ_CHUNK);
            }
            let n =
                self.io.read_buf(&mut self.rbuf).await.map_err(|e| {
                    PgError::io(e, "lost the connection to the server", &self.address)
                })?;
            if n == 0 {
                return Err(PgError::io(
                    std::io::ErrorKind::UnexpectedEof.into(),
                    "lost the connection to the server",
                    &self.address,
                ));
            }
        }
    }

    /// Runs `sql` with the simple query protocol and returns the rows of all
    /// its result sets. A server error is returned after the connection is
    /// back in sync (`ReadyForQuery`), so the connection stays usable.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Row>> {
        frontend::query(sql, &mut self.wbuf).map_err(|e| {
            PgError::config(
                format!("invalid query: {e}"),
                "remove NUL bytes from the query",
            )
        })?;
        self.flush().await?;
        self.collect_results(sql).await
    }

    /// Reads result sets until `ReadyForQuery` (used after a query or after COPY ends).
    pub(crate) async fn collect_results(&mut self, what: &str) -> Result<Vec<Row>> {
        let mut rows = Vec::new();
        let mut columns: Arc<[String]> = Arc::from(Vec::new());
        let mut error: Option<PgError> = None;
        loop {
            let msg = self.read_message().await?;
            match msg.tag {
                b'T' => {
                    columns = parse_row_description(&msg.body)
                        .ok_or_else(|| self.bad("RowDescription"))?
                }
                b'D' => {
                    let values = parse_data_row(&msg.body).ok_or_else(|| self.bad("DataRow"))?;
                    rows.push(Row {
                        columns: columns.clone(),
                        values,
                    });
                }
                b'C' | b'I' | b'n' | b's' => {}
                b'E' => {
                    let m = ServerMessage::parse(&msg.body);
                    let fatal = m.severity == "FATAL" || m.severity == "PANIC";
                    let e =
                        PgError::server(m, format!("{} on {}", command_name(what), self.address));
                    if fatal {
                        return Err(e);
                    }
                    error.get_or_insert(e);
                }
                b'N' => log_notice(&msg.body),
                b'S' => self.parameter_status(&msg.body),
                b'Z' => {
                    return match error {
                        Some(e) => Err(e),
                        None => Ok(rows),
                    }
                }
                b'W' | b'H' | b'G' => {
                    return Err(PgError::protocol(
                        format!(
                            "{} unexpectedly started COPY mode; use the replication API for it",
                            command_name(what)
                        ),
                        &self.address,
                    ))
                }
                other => {
                    return Err(PgError::protocol(
                        format!(
                            "unexpected message {:?} in reply to {}",
                            other as char,
                            command_name(what)
                        ),
                        &self.address,
                    ))
                }
            }
        }
    }

    fn bad(&self, what: &str) -> PgError {
        PgError::protocol(format!("malformed {what} message"), &self.address)
    }

    /// Sends `Terminate` and closes the socket.
    pub async fn close(mut self) -> Result<()> {
        frontend::terminate(&mut self.wbuf);
        self.flush().await?;
        let _ = self.io.shutdown().await;
        Ok(())
    }
}

/// Sends `SSLRequest` and, if the server agrees, performs the TLS handshake.
async fn negotiate_tls(
    mut tcp: TcpStream,
    cfg: &Config,
    host: &str,
    address: &str,
) -> Result<Stream> {
    let mut req = BytesMut::with_capacity(8);
    frontend::ssl_request(&mut req);
    tcp.write_all(&req)
        .await
        .map_err(|e| PgError::io(e, "TLS negotiation failed", address))?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer)
        .await
        .map_err(|e| PgError::io(e, "TLS negotiation failed", address))?;
    match answer[0] {
        b'S' => {
            let config = crate::tls::client_config(cfg)?;
            let name = crate::tls::server_name(host)?;
            match tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
            {
                Ok(tls) => Ok(Stream::Tls(Box::new(tls))),
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Err(PgError::new(
                    ErrorKind::Definite,
                    format!("TLS handshake failed: {e}"),
                    address,
                    "check the server certificate, sslrootcert and sslmode",
                )),
                Err(e) => Err(PgError::io(e, "TLS handshake failed", address)),
            }
        }
        b'N' if cfg.sslmode == SslMode::Prefer => Ok(Stream::Tcp(tcp)),
        b'N' => Err(PgError::new(
            ErrorKind::Definite,
            format!(
                "the server does not support TLS but sslmode {:?} requires it",
                cfg.sslmode
            ),
            address,
            "enable ssl on the server or use sslmode=prefer / disable",
        )),
        other => Err(PgError::protocol(
            format!("unexpected answer {other:#04x} to SSLRequest"),
            address,
        )),
    }
}

/// First word(s) of a command for messages: `START_REPLICATION`, `SELECT`.
pub(crate) fn command_name(sql: &str) -> String {
    sql.split_whitespace().next().unwrap_or("query").to_string()
}

fn log_notice(body: &[u8]) {
    let m = ServerMessage::parse(body);
    tracing::info!(severity = %m.severity, code = %m.code, "server notice: {}", m.message);
}

fn parse_row_description(mut body: &[u8]) -> Option<Arc<[String]>> {
    if body.len() < 2 {
        return None;
    }
    let n = u16::from_be_bytes([body[0], body[1]]) as usize;
    body = &body[2..];
    let mut cols = Vec::with_capacity(n);
    for _ in 0..n {
        let end = body.iter().position(|&b| b == 0)?;
        cols.push(String::from_utf8_lossy(&body[..end]).into_owned());
        body = body.get(end + 1 + 18..)?;
    }
    Some(Arc::from(cols))
}

fn parse_data_row(body: &Bytes) -> Option<Vec<Option<Bytes>>> {
    if body.len() < 2 {
        return None;
    }
    let n = u16::from_be_bytes([body[0], body[1]]) as usize;
    let mut pos = 2;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let len = i32::from_be_bytes(body.get(pos..pos + 4)?.try_into().ok()?);
        pos += 4;
        if len < 0 {
            out.push(None);
        } else {
            let end = pos.checked_add(len as usize)?;
            if end > body.len() {
                return None;
            }
            out.push(Some(body.slice(pos..end)));
            pos = end;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_row_parsing() {
        let mut b = BytesMut::new();
        b.extend_from_slice(&3u16.to_be_bytes());
        b.extend_from_slice(&2i32.to_be_bytes());
        b.extend_from_slice(b"ab");
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.extend_from_slice(&0i32.to_be_bytes());
        let row = parse_data_row(&b.freeze()).unwrap();
        assert_eq!(row.len(), 3);
        assert_eq!(row[0].as_deref(), Some(&b"ab"[..]));
        assert!(row[1].is_none());
        assert_eq!(row[2].as_deref(), Some(&b""[..]));
        let mut bad = BytesMut::new();
        bad.extend_from_slice(&1u16.to_be_bytes());
        bad.extend_from_slice(&9i32.to_be_bytes());
        bad.extend_from_slice(b"ab");
        assert!(parse_data_row(&bad.freeze()).is_none());
    }
}
