//! Minimal MySQL client/server protocol connection, just enough for a
//! replica: handshake and authentication, text queries, and the replication
//! commands `COM_REGISTER_SLAVE`, `COM_BINLOG_DUMP` and `COM_BINLOG_DUMP_GTID`.
//!
//! A connection opened with `CLIENT_MULTI_STATEMENTS` can send several
//! `;`-separated statements in one `COM_QUERY`; the server answers each with
//! its own result (OK, ERR or a result set), every one but the last flagged
//! `SERVER_MORE_RESULTS_EXISTS` in its OK/EOF status, and stops at the first
//! error.
//!
//! Framing: every packet is `len u24 LE | seq u8 | payload`; a payload of
//! 0xffffff bytes continues in the next packet. The sequence number restarts
//! at 0 with each command.
//!
//! Authentication supports `mysql_native_password` (MariaDB's default),
//! MariaDB's `ed25519` (`client_ed25519`: the scramble signed with a key
//! derived from the password) and `parsec` (ext-salt, PBKDF2, ed25519),
//! `caching_sha2_password` (MySQL 8+ default: fast path; full authentication
//! sends the password over TLS, or without TLS encrypted with the server's
//! RSA public key, given by `server-public-key-path` or fetched only when
//! `get-server-public-key=true`) and plugin switches between them. TLS and
//! its URL parameters: [`crate::tls`]. Scrambles and RSA come from
//! `mysql_common`.
//!
//! Why not a full driver: the replication stream must be read as raw packets
//! (the exact event bytes), and MariaDB only sends ANNOTATE_ROWS events (which
//! are part of its binlog files) when COM_BINLOG_DUMP carries the
//! `BINLOG_SEND_ANNOTATE_ROWS_EVENT` flag, which higher-level drivers do not
//! let us set.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{ErrorKind, MysqlError, Result};
use crate::tls::{TlsParams, CLIENT_SSL};
use pitr_tls::Stream;

const MAX_PAYLOAD: usize = 0xff_ffff;
/// Largest logical packet accepted (the servers' max_allowed_packet limit).
const MAX_PACKET: usize = 1 << 30;

// Capability flags.
const CLIENT_LONG_PASSWORD: u32 = 0x1;
const CLIENT_LONG_FLAG: u32 = 0x4;
const CLIENT_CONNECT_WITH_DB: u32 = 0x8;
const CLIENT_PROTOCOL_41: u32 = 0x200;
const CLIENT_TRANSACTIONS: u32 = 0x2000;
const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
const CLIENT_MULTI_STATEMENTS: u32 = 0x1_0000;
const CLIENT_MULTI_RESULTS: u32 = 0x2_0000;
const CLIENT_PLUGIN_AUTH: u32 = 0x8_0000;
const CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA: u32 = 0x20_0000;

/// Status flag of OK/EOF packets: another result follows.
const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;

const COM_QUERY: u8 = 0x03;
const COM_BINLOG_DUMP: u8 = 0x12;
const COM_REGISTER_SLAVE: u8 = 0x15;
const COM_BINLOG_DUMP_GTID: u8 = 0x1e;

/// The connection's character set and collation, sent in the handshake:
/// `utf8mb4_general_ci`, known to both flavours.
pub const CHARSET: u8 = 45;

/// Where to connect and as whom (parsed from `mysql://user:pass@host:port/db`).
#[derive(Clone)]
pub struct ConnParams {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub db: Option<String>,
    /// TLS and `caching_sha2_password` settings from the URL's parameters.
    pub tls: TlsParams,
}

impl std::fmt::Debug for ConnParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnParams")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("db", &self.db)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// A URL component with its `%XX` escapes decoded (invalid escapes and
/// bytes that are not UTF-8 are kept as they are, as MySQL clients do).
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

impl ConnParams {
    /// Parses `mysql://user:password@host[:port][/db]` (user and password
    /// percent-encoded). Errors never echo the URL (it may hold a password); callers name it, redacted.
    pub fn from_url(s: &str) -> Result<ConnParams> {
        let bad = |why: &str| {
            MysqlError::new(
                ErrorKind::InvalidInput,
                format!("invalid MySQL URL ({why}); expected mysql://user:password@host:port"),
            )
        };
        let url = url::Url::parse(s).map_err(|_| bad("not a URL"))?;
        if !matches!(url.scheme(), "mysql" | "mariadb") {
            return Err(bad("scheme must be mysql:// or mariadb://"));
        }
        let host = url
            .host_str()
            .ok_or_else(|| bad("no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let db = url.path().trim_start_matches('/');
        let tls = TlsParams::from_query(
            url.query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned())),
        )?;
        Ok(ConnParams {
            host,
            port: url.port().unwrap_or(3306),
            user: percent_decode(url.username()),
            password: url.password().map(percent_decode).unwrap_or_default(),
            db: (!db.is_empty()).then(|| percent_decode(db)),
            tls,
        })
    }
}

/// Server handshake (protocol v10).
#[derive(Debug, Clone)]
struct Handshake {
    server_version: String,
    capabilities: u32,
    nonce: Vec<u8>,
    auth_plugin: String,
}

fn parse_handshake(p: &[u8]) -> Option<Handshake> {
    let mut r = p;
    let take = |r: &mut &[u8], n: usize| -> Option<Vec<u8>> {
        if r.len() < n {
            return None;
        }
        let (a, b) = r.split_at(n);
        *r = b;
        Some(a.to_vec())
    };
    let nul_str = |r: &mut &[u8]| -> Option<String> {
        let end = r.iter().position(|b| *b == 0)?;
        let s = String::from_utf8_lossy(&r[..end]).into_owned();
        *r = &r[end + 1..];
        Some(s)
    };
    let proto = take(&mut r, 1)?[0];
    if proto != 10 {
        return None;
    }
    let server_version = nul_str(&mut r)?;
    take(&mut r, 4)?; // connection id
    let mut nonce = take(&mut r, 8)?;
    take(&mut r, 1)?; // filler
    let cap_lo = take(&mut r, 2)?;
    let mut capabilities = u32::from(u16::from_le_bytes([cap_lo[0], cap_lo[1]]));
    let mut auth_plugin = String::from("mysql_native_password");
    if r.len() >= 3 {
        take(&mut r, 1)?; // charset
        take(&mut r, 2)?; // status
        let cap_hi = take(&mut r, 2)?;
        capabilities |= u32::from(u16::from_le_bytes([cap_hi[0], cap_hi[1]])) << 16;
        let data_len = usize::from(take(&mut r, 1)?[0]);
        take(&mut r, 10)?; // reserved (MariaDB: extended capabilities)
        if capabilities & CLIENT_SECURE_CONNECTION != 0 {
            let n = data_len.saturating_sub(8).max(13);
            let n = n.min(r.len());
            let part2 = take(&mut r, n)?;
            let end = part2.iter().position(|b| *b == 0).unwrap_or(part2.len());
            nonce.extend_from_slice(&part2[..end]);
        }
        if capabilities & CLIENT_PLUGIN_AUTH != 0 {
            let end = r.iter().position(|b| *b == 0).unwrap_or(r.len());
            auth_plugin = String::from_utf8_lossy(&r[..end]).into_owned();
        }
    }
    Some(Handshake {
        server_version,
        capabilities,
        nonce,
        auth_plugin,
    })
}

/// Auth response for `plugin` (empty for an empty password).
fn auth_response(plugin: &str, password: &str, nonce: &[u8]) -> Result<Vec<u8>> {
    if password.is_empty() {
        return Ok(Vec::new());
    }
    let pw = password.as_bytes();
    match plugin {
        "mysql_native_password" => Ok(mysql_common::scramble::scramble_native(nonce, pw)
            .map(|s| s.to_vec())
            .unwrap_or_default()),
        "caching_sha2_password" => Ok(mysql_common::scramble::scramble_sha256(nonce, pw)
            .map(|s| s.to_vec())
            .unwrap_or_default()),
        "client_ed25519" => Ok(mysql_common::scramble::create_response_for_ed25519(pw, nonce).to_vec()),
        other => Err(MysqlError::new(
            ErrorKind::InvalidInput,
            format!(
                "the server asks for authentication plugin {other}, which is not supported; create the user WITH mysql_native_password, caching_sha2_password, ed25519 or parsec"
            ),
        )),
    }
}

/// MariaDB's `parsec` answer to its ext-salt packet (`'P'`, iteration
/// factor `f`, salt): a client nonce and the ed25519 signature of server
/// nonce + client nonce with the key PBKDF2-HMAC-SHA512(password, salt,
/// 1024 << f) derives. The factor is capped so a hostile server cannot make
/// the login spin.
fn parsec_response(password: &str, nonce: &[u8], ext_salt: &[u8]) -> Result<Vec<u8>> {
    let bad = |why: &str| {
        MysqlError::new(
            ErrorKind::Protocol,
            format!("the server's parsec authentication data is not usable: {why}"),
        )
    };
    let server_nonce: &[u8; 32] = nonce
        .try_into()
        .map_err(|_| bad("the scramble is not 32 bytes"))?;
    match ext_salt {
        [b'P', factor, salt @ ..] if *factor <= 8 && !salt.is_empty() => {
            Ok(mysql_common::scramble::create_response_for_parsec(
                password.as_bytes(),
                server_nonce,
                1024 << factor,
                salt,
            )
            .to_vec())
        }
        [b'P', factor, ..] if *factor > 8 => Err(bad("more than 262144 PBKDF2 iterations")),
        _ => Err(bad("no PBKDF2 salt")),
    }
}

fn lenenc_int(v: u64, out: &mut Vec<u8>) {
    match v {
        0..=250 => out.push(v as u8),
        251..=0xffff => {
            out.push(0xfc);
            out.extend_from_slice(&(v as u16).to_le_bytes());
        }
        0x1_0000..=0xff_ffff => {
            out.push(0xfd);
            out.extend_from_slice(&(v as u32).to_le_bytes()[..3]);
        }
        _ => {
            out.push(0xfe);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// Reads a length-encoded integer; `None` for NULL (0xfb) or truncation.
fn read_lenenc(r: &mut &[u8]) -> Option<u64> {
    let (&first, rest) = r.split_first()?;
    let (n, rest) = match first {
        0..=250 => {
            return {
                *r = rest;
                Some(u64::from(first))
            }
        }
        0xfc => (2, rest),
        0xfd => (3, rest),
        0xfe => (8, rest),
        _ => return None,
    };
    if rest.len() < n {
        return None;
    }
    let v = rest[..n]
        .iter()
        .rev()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    *r = &rest[n..];
    Some(v)
}

/// Turns an ERR packet into a classified error.
/// Status flags of an OK packet: `0x00 | affected lenenc | insert id lenenc | status u16 | warnings u16`.
fn ok_status(p: &[u8]) -> Option<u16> {
    let mut r = p.get(1..)?;
    read_lenenc(&mut r)?;
    read_lenenc(&mut r)?;
    r.get(..2).map(|b| u16::from_le_bytes([b[0], b[1]]))
}

pub fn err_packet(p: &[u8]) -> MysqlError {
    let code = if p.len() >= 3 {
        u16::from_le_bytes([p[1], p[2]])
    } else {
        0
    };
    let mut msg = p.get(3..).unwrap_or_default();
    if msg.first() == Some(&b'#') && msg.len() >= 6 {
        msg = &msg[6..];
    }
    MysqlError::from_server(code, &String::from_utf8_lossy(msg), None)
}

fn io_err(e: std::io::Error) -> MysqlError {
    let kind = if e.kind() == std::io::ErrorKind::UnexpectedEof {
        ErrorKind::ServerGone
    } else {
        ErrorKind::Io
    };
    MysqlError::new(
        kind,
        format!("connection to the server failed ({e}); it will be retried"),
    )
}

/// One authenticated connection.
#[derive(Debug)]
pub struct Conn {
    stream: Stream,
    seq: u8,
    server_version: String,
}

/// A text-protocol result row (`None` = SQL NULL).
pub type TextRow = Vec<Option<String>>;

impl Conn {
    /// Connects and authenticates.
    pub async fn connect(p: &ConnParams, timeout: Duration) -> Result<Conn> {
        Self::connect_with(p, timeout, false).await
    }

    /// Connects and authenticates with `CLIENT_MULTI_STATEMENTS`, so that
    /// [`Conn::query_multi`] can send several statements in one query.
    pub async fn connect_multi_statements(p: &ConnParams, timeout: Duration) -> Result<Conn> {
        Self::connect_with(p, timeout, true).await
    }

    async fn connect_with(p: &ConnParams, timeout: Duration, multi: bool) -> Result<Conn> {
        let fut = async {
            let stream = TcpStream::connect((p.host.as_str(), p.port))
                .await
                .map_err(io_err)?;
            let _ = stream.set_nodelay(true);
            let mut c = Conn {
                stream: Stream::Tcp(stream),
                seq: 0,
                server_version: String::new(),
            };
            c.handshake(p, multi).await?;
            Ok(c)
        };
        tokio::time::timeout(timeout, fut).await.map_err(|_| {
            MysqlError::new(
                ErrorKind::Timeout,
                format!(
                    "connecting to {}:{} timed out after {timeout:?}; it will be retried",
                    p.host, p.port
                ),
            )
        })?
    }

    pub fn server_version(&self) -> &str {
        &self.server_version
    }

    /// True when the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    async fn handshake(&mut self, p: &ConnParams, multi: bool) -> Result<()> {
        let pkt = self.read_packet().await?;
        if pkt.first() == Some(&0xff) {
            return Err(err_packet(&pkt));
        }
        let hs = parse_handshake(&pkt).ok_or_else(|| {
            MysqlError::new(
                ErrorKind::Protocol,
                "the server's greeting is not a MySQL protocol v10 handshake; check that the URL points at a MySQL or MariaDB server",
            )
        })?;
        self.server_version = hs.server_version.clone();
        let mut caps = CLIENT_LONG_PASSWORD
            | CLIENT_LONG_FLAG
            | CLIENT_PROTOCOL_41
            | CLIENT_TRANSACTIONS
            | CLIENT_SECURE_CONNECTION
            | CLIENT_MULTI_RESULTS
            | CLIENT_PLUGIN_AUTH
            | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA;
        if p.db.is_some() {
            caps |= CLIENT_CONNECT_WITH_DB;
        }
        caps &= hs.capabilities | CLIENT_CONNECT_WITH_DB;
        if multi {
            if hs.capabilities & CLIENT_MULTI_STATEMENTS == 0 {
                return Err(MysqlError::new(
                    ErrorKind::Protocol,
                    "the server does not support multi-statement queries",
                ));
            }
            caps |= CLIENT_MULTI_STATEMENTS;
        }
        if caps & CLIENT_PROTOCOL_41 == 0 {
            return Err(MysqlError::new(
                ErrorKind::Protocol,
                "the server does not speak protocol 4.1; it is too old",
            ));
        }
        if p.tls.wanted(hs.capabilities & CLIENT_SSL != 0)? {
            caps |= CLIENT_SSL;
            // SSLRequest: the first 32 bytes of the handshake response.
            let mut req = Vec::with_capacity(32);
            req.extend_from_slice(&caps.to_le_bytes());
            req.extend_from_slice(&(16u32 << 20).to_le_bytes());
            req.push(CHARSET);
            req.extend_from_slice(&[0u8; 23]);
            self.write_packet(&req).await?;
            let Stream::Tcp(tcp) = std::mem::replace(&mut self.stream, Stream::Closed) else {
                return Err(MysqlError::new(
                    ErrorKind::Protocol,
                    "internal error: TLS requested twice",
                ));
            };
            self.stream = Stream::Tls(Box::new(p.tls.handshake(&p.host, tcp).await?));
        }
        let mut plugin = hs.auth_plugin.clone();
        if !matches!(
            plugin.as_str(),
            "mysql_native_password" | "caching_sha2_password"
        ) {
            plugin = "mysql_native_password".into();
        }
        let mut nonce = hs.nonce.clone();
        let resp = auth_response(&plugin, &p.password, &nonce)?;

        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(&caps.to_le_bytes());
        out.extend_from_slice(&(16u32 << 20).to_le_bytes());
        out.push(CHARSET);
        out.extend_from_slice(&[0u8; 23]);
        out.extend_from_slice(p.user.as_bytes());
        out.push(0);
        if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
            lenenc_int(resp.len() as u64, &mut out);
        } else {
            out.push(resp.len() as u8);
        }
        out.extend_from_slice(&resp);
        if let Some(db) = &p.db {
            out.extend_from_slice(db.as_bytes());
            out.push(0);
        }
        if caps & CLIENT_PLUGIN_AUTH != 0 {
            out.extend_from_slice(plugin.as_bytes());
            out.push(0);
        }
        self.write_packet(&out).await?;

        for _ in 0..8 {
            let pkt = self.read_packet().await?;
            match pkt.first() {
                Some(0x00) => return Ok(()),
                Some(0xff) => return Err(err_packet(&pkt)),
                Some(0xfe) => {
                    // AuthSwitchRequest: plugin name NUL, new nonce.
                    let body = &pkt[1..];
                    let end = body.iter().position(|b| *b == 0).unwrap_or(body.len());
                    plugin = String::from_utf8_lossy(&body[..end]).into_owned();
                    let data = body.get(end + 1..).unwrap_or_default();
                    nonce = match plugin.as_str() {
                        // A 32-byte random scramble: its last byte may be 0.
                        "client_ed25519" | "parsec" => data.get(..32).unwrap_or(data).to_vec(),
                        _ => data.strip_suffix(&[0]).unwrap_or(data).to_vec(),
                    };
                    let resp = match plugin.as_str() {
                        // First ask for the user's salt (the ext-salt packet).
                        "parsec" => Vec::new(),
                        _ => auth_response(&plugin, &p.password, &nonce)?,
                    };
                    self.write_packet(&resp).await?;
                }
                Some(_) if plugin == "parsec" => {
                    let salt = pkt.strip_prefix(&[0x01]).unwrap_or(&pkt);
                    let resp = parsec_response(&p.password, &nonce, salt)?;
                    self.write_packet(&resp).await?;
                }
                Some(0x01) if plugin == "caching_sha2_password" => match pkt.get(1) {
                    Some(0x03) => {} // fast auth ok; OK packet follows
                    Some(0x04) => self.full_auth(p, &nonce).await?,
                    _ => {
                        return Err(MysqlError::new(
                            ErrorKind::Protocol,
                            "unexpected caching_sha2_password exchange",
                        ))
                    }
                },
                _ => {
                    return Err(MysqlError::new(
                        ErrorKind::Protocol,
                        "unexpected packet during authentication",
                    ))
                }
            }
        }
        Err(MysqlError::new(
            ErrorKind::Protocol,
            "authentication did not finish",
        ))
    }

    /// `caching_sha2_password` full authentication: the password in clear
    /// over TLS; without TLS encrypted with the server's RSA public key,
    /// given in the URL or, only when allowed, fetched from the server.
    async fn full_auth(&mut self, p: &ConnParams, nonce: &[u8]) -> Result<()> {
        let mut pw = p.password.as_bytes().to_vec();
        pw.push(0);
        if self.is_tls() {
            return self.write_packet(&pw).await;
        }
        let key = match (&p.tls.server_public_key, p.tls.get_server_public_key) {
            (Some(k), _) => k.clone(),
            (None, true) => {
                self.write_packet(&[0x02]).await?;
                let key = self.read_packet().await?;
                if key.first() != Some(&0x01) {
                    return Err(MysqlError::new(
                        ErrorKind::Protocol,
                        "the server did not send its RSA public key for caching_sha2_password",
                    ));
                }
                key[1..].to_vec()
            }
            (None, false) => {
                return Err(MysqlError::new(
                    ErrorKind::InvalidInput,
                    "the server wants the password itself (caching_sha2_password full \
                     authentication) on a connection without TLS, and pitr does not fetch the \
                     server's RSA key unauthenticated; use TLS (ssl-mode=REQUIRED or VERIFY_*), \
                     give the key with server-public-key-path=FILE, or allow fetching it with \
                     get-server-public-key=true",
                ))
            }
        };
        for (i, b) in pw.iter_mut().enumerate() {
            *b ^= nonce[i % nonce.len().max(1)];
        }
        let enc = mysql_common::crypto::encrypt(&pw, &key);
        self.write_packet(&enc).await
    }

    /// Reads one logical packet (joining 16 MiB continuations).
    pub async fn read_packet(&mut self) -> Result<Vec<u8>> {
        let mut payload = Vec::new();
        loop {
            let mut head = [0u8; 4];
            self.stream.read_exact(&mut head).await.map_err(io_err)?;
            let len = usize::from(head[0]) | usize::from(head[1]) << 8 | usize::from(head[2]) << 16;
            self.seq = head[3].wrapping_add(1);
            let start = payload.len();
            if start + len > MAX_PACKET {
                return Err(MysqlError::new(
                    ErrorKind::Protocol,
                    "the server sent a packet larger than 1 GiB; check that the URL points at a MySQL or MariaDB server",
                ));
            }
            payload.resize(start + len, 0);
            self.stream
                .read_exact(&mut payload[start..])
                .await
                .map_err(io_err)?;
            if len < MAX_PAYLOAD {
                return Ok(payload);
            }
        }
    }

    async fn write_packet(&mut self, payload: &[u8]) -> Result<()> {
        let mut buf = Vec::with_capacity(payload.len() + 8);
        let mut rest = payload;
        loop {
            let n = rest.len().min(MAX_PAYLOAD);
            buf.extend_from_slice(&(n as u32).to_le_bytes()[..3]);
            buf.push(self.seq);
            self.seq = self.seq.wrapping_add(1);
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            // A chunk of exactly MAX_PAYLOAD bytes is followed by another (maybe empty) one.
            if n < MAX_PAYLOAD {
                break;
            }
        }
        self.stream.write_all(&buf).await.map_err(io_err)
    }

    async fn command(&mut self, cmd: u8, body: &[u8]) -> Result<()> {
        self.seq = 0;
        let mut p = Vec::with_capacity(body.len() + 1);
        p.push(cmd);
        p.extend_from_slice(body);
        self.write_packet(&p).await
    }

    /// Runs a statement and returns its rows (empty for statements without a result set).
    pub async fn query(&mut self, sql: &str) -> Result<Vec<TextRow>> {
        self.command(COM_QUERY, sql.as_bytes()).await?;
        let first = self.read_packet().await?;
        match first.first() {
            Some(0x00) => return Ok(Vec::new()),
            Some(0xff) => return Err(err_packet(&first)),
            _ => {}
        }
        let mut r = first.as_slice();
        let ncols = read_lenenc(&mut r)
            .ok_or_else(|| MysqlError::new(ErrorKind::Protocol, "malformed result set header"))?
            as usize;
        // Column definitions, then EOF.
        for _ in 0..ncols {
            self.read_packet().await?;
        }
        let eof = self.read_packet().await?;
        if eof.first() != Some(&0xfe) {
            return Err(MysqlError::new(
                ErrorKind::Protocol,
                "missing EOF after column definitions",
            ));
        }
        let mut rows = Vec::new();
        loop {
            let p = self.read_packet().await?;
            match p.first() {
                Some(0xfe) if p.len() < 9 => return Ok(rows),
                Some(0xff) => return Err(err_packet(&p)),
                _ => {}
            }
            let mut r = p.as_slice();
            let mut row = Vec::with_capacity(ncols);
            for _ in 0..ncols {
                if r.first() == Some(&0xfb) {
                    r = &r[1..];
                    row.push(None);
                    continue;
                }
                let n = read_lenenc(&mut r)
                    .filter(|n| *n as usize <= r.len())
                    .ok_or_else(|| MysqlError::new(ErrorKind::Protocol, "malformed row"))?
                    as usize;
                row.push(Some(String::from_utf8_lossy(&r[..n]).into_owned()));
                r = &r[n..];
            }
            rows.push(row);
        }
    }

    /// Runs `sql`, `statements` statements separated by `;` sent as one
    /// `COM_QUERY` (the connection must come from
    /// [`Conn::connect_multi_statements`]), and reads one result per
    /// statement; rows are discarded. The results are counted rather than
    /// followed by `SERVER_MORE_RESULTS_EXISTS`: MariaDB leaves that flag out
    /// of the OK of a `BINLOG` statement inside a transaction although it
    /// goes on with the next statement. Results beyond `statements` (the last
    /// one still flagged) are read too. Returns how many results came; on an
    /// error `Err((i, e))`, `i` being the index of the statement that failed
    /// (the server runs none after it).
    pub async fn query_multi(
        &mut self,
        sql: &[u8],
        statements: usize,
    ) -> std::result::Result<usize, (usize, MysqlError)> {
        self.command(COM_QUERY, sql).await.map_err(|e| (0, e))?;
        let mut done = 0usize;
        let mut more = true;
        while done < statements || more {
            let status = self.read_result().await.map_err(|e| (done, e))?;
            done += 1;
            more = status & SERVER_MORE_RESULTS_EXISTS != 0;
        }
        Ok(done)
    }

    /// Reads one statement's result (OK, or a result set whose rows are
    /// discarded) and returns its status flags.
    async fn read_result(&mut self) -> Result<u16> {
        let first = self.read_packet().await?;
        match first.first() {
            Some(0x00) => {
                return ok_status(&first)
                    .ok_or_else(|| MysqlError::new(ErrorKind::Protocol, "malformed OK packet"))
            }
            Some(0xff) => return Err(err_packet(&first)),
            Some(0xfb) => {
                return Err(MysqlError::new(
                    ErrorKind::Protocol,
                    "the server asked for a local file (LOAD DATA LOCAL), which is not supported",
                ))
            }
            _ => {}
        }
        let mut r = first.as_slice();
        let ncols = read_lenenc(&mut r)
            .ok_or_else(|| MysqlError::new(ErrorKind::Protocol, "malformed result set header"))?;
        for _ in 0..ncols {
            self.read_packet().await?;
        }
        let eof = self.read_packet().await?;
        if eof.first() != Some(&0xfe) {
            return Err(MysqlError::new(
                ErrorKind::Protocol,
                "missing EOF after column definitions",
            ));
        }
        loop {
            let p = self.read_packet().await?;
            match p.first() {
                Some(0xfe) if p.len() < 9 => {
                    return Ok(p.get(3..5).map_or(0, |b| u16::from_le_bytes([b[0], b[1]])))
                }
                Some(0xff) => return Err(err_packet(&p)),
                _ => {}
            }
        }
    }

    /// `COM_REGISTER_SLAVE`: announce ourselves as replica `server_id`.
    pub async fn register_replica(&mut self, server_id: u32) -> Result<()> {
        let mut b = Vec::with_capacity(18);
        b.extend_from_slice(&server_id.to_le_bytes());
        b.extend_from_slice(&[0, 0, 0]); // hostname, user, password: empty
        b.extend_from_slice(&0u16.to_le_bytes()); // port
        b.extend_from_slice(&0u32.to_le_bytes()); // replication rank
        b.extend_from_slice(&0u32.to_le_bytes()); // master id
        self.command(COM_REGISTER_SLAVE, &b).await?;
        let p = self.read_packet().await?;
        match p.first() {
            Some(0x00) => Ok(()),
            Some(0xff) => Err(err_packet(&p)),
            _ => Err(MysqlError::new(
                ErrorKind::Protocol,
                "unexpected reply to COM_REGISTER_SLAVE",
            )),
        }
    }

    /// `COM_BINLOG_DUMP`: `pos u32 | flags u16 | server_id u32 | filename`.
    pub async fn binlog_dump(
        &mut self,
        file: &str,
        pos: u32,
        flags: u16,
        server_id: u32,
    ) -> Result<()> {
        let mut b = Vec::with_capacity(10 + file.len());
        b.extend_from_slice(&pos.to_le_bytes());
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(&server_id.to_le_bytes());
        b.extend_from_slice(file.as_bytes());
        self.command(COM_BINLOG_DUMP, &b).await
    }

    /// `COM_BINLOG_DUMP_GTID` (MySQL): `flags u16 | server_id u32 |
    /// name_len u32 | name | pos u64 | data_len u32 | sid block`, with the
    /// `BINLOG_THROUGH_GTID` flag (4).
    pub async fn binlog_dump_gtid(&mut self, server_id: u32, sid_block: &[u8]) -> Result<()> {
        let mut b = Vec::with_capacity(26 + sid_block.len());
        b.extend_from_slice(&4u16.to_le_bytes());
        b.extend_from_slice(&server_id.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&4u64.to_le_bytes());
        b.extend_from_slice(&(sid_block.len() as u32).to_le_bytes());
        b.extend_from_slice(sid_block);
        self.command(COM_BINLOG_DUMP_GTID, &b).await
    }

    /// Closes the socket.
    pub async fn shutdown(mut self) {
        let _ = self.stream.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parsing() {
        let p = ConnParams::from_url("mysql://pi%40tr:p%3Ass@127.0.0.1:3307/shop").unwrap();
        assert_eq!(p.user, "pi@tr");
        assert_eq!(p.password, "p:ss");
        assert_eq!(p.port, 3307);
        assert_eq!(p.host, "127.0.0.1");
        assert_eq!(p.db.as_deref(), Some("shop"));
        let p = ConnParams::from_url("mysql://u@h").unwrap();
        assert_eq!(
            (p.port, p.password.as_str(), p.db.as_deref()),
            (3306, "", None)
        );
        let e = ConnParams::from_url("postgres://u:secret@h").unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        // TLS settings that cannot work are refused when the URL is read.
        for (q, says) in [
            ("ssl-mode=verify_ca", "needs the CA certificate"),
            ("ssl-mode=VERIFY_IDENTITY", "needs the CA certificate"),
            ("ssl-ca=/nonexistent/ca.pem", "cannot read ssl-ca"),
        ] {
            let e = ConnParams::from_url(&format!("mysql://u:secret@h/?{q}")).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{q}");
            assert!(e.to_string().contains(says), "{q}: {e}");
            assert!(!e.to_string().contains("secret"), "{e}");
        }
        let e = ConnParams::from_url("mysql://u@h/?ssl-mode=BOGUS").unwrap_err();
        assert!(e.to_string().contains("ssl-mode=BOGUS"), "{e}");
        let e = ConnParams::from_url("mysql://u@h/?ssl-mode=DISABLED&nonsense=1").unwrap_err();
        assert!(e.to_string().contains("\"nonsense\""), "{e}");
        for ok in [
            "ssl-mode=DISABLED",
            "ssl-mode=preferred",
            "ssl_mode=DISABLED",
            "ssl-mode=REQUIRED",
        ] {
            ConnParams::from_url(&format!("mysql://u@h:3307/db?{ok}")).unwrap();
        }
        assert!(format!("{p:?}").find("password").is_none());
    }

    #[test]
    fn handshake_parsing() {
        // A MariaDB-style greeting.
        let mut p = vec![10u8];
        p.extend_from_slice(b"10.11.6-MariaDB\0");
        p.extend_from_slice(&7u32.to_le_bytes());
        p.extend_from_slice(b"abcdefgh");
        p.push(0);
        p.extend_from_slice(&0xf7feu16.to_le_bytes());
        p.push(45);
        p.extend_from_slice(&2u16.to_le_bytes());
        p.extend_from_slice(&0x81bfu16.to_le_bytes());
        p.push(21);
        p.extend_from_slice(&[0u8; 10]);
        p.extend_from_slice(b"ijklmnopqrst\0");
        p.extend_from_slice(b"mysql_native_password\0");
        let h = parse_handshake(&p).unwrap();
        assert_eq!(h.server_version, "10.11.6-MariaDB");
        assert_eq!(h.nonce, b"abcdefghijklmnopqrst");
        assert_eq!(h.auth_plugin, "mysql_native_password");
        assert!(h.capabilities & CLIENT_PLUGIN_AUTH != 0);
        assert!(parse_handshake(&p[..10]).is_none());
    }

    #[test]
    fn lenenc_roundtrip() {
        for v in [
            0u64,
            250,
            251,
            65535,
            65536,
            0xff_ffff,
            0x100_0000,
            u64::MAX,
        ] {
            let mut b = Vec::new();
            lenenc_int(v, &mut b);
            let mut r = b.as_slice();
            assert_eq!(read_lenenc(&mut r), Some(v));
            assert!(r.is_empty());
        }
        assert_eq!(read_lenenc(&mut &[0xfbu8][..]), None);
    }

    #[test]
    fn ok_packet_status() {
        // affected 1, insert id 300 (lenenc 0xfc), status MORE_RESULTS|AUTOCOMMIT, 0 warnings.
        let p = [0x00, 0x01, 0xfc, 0x2c, 0x01, 0x0a, 0x00, 0x00, 0x00];
        assert_eq!(ok_status(&p), Some(0x000a));
        assert!(ok_status(&p).unwrap() & SERVER_MORE_RESULTS_EXISTS != 0);
        assert_eq!(ok_status(&[0x00, 0x00, 0x00, 0x02, 0x00]), Some(2));
        assert_eq!(ok_status(&[0x00, 0x00, 0x00, 0x02]), None);
    }

    /// Writes one packet with sequence number `seq`.
    async fn send(s: &mut TcpStream, seq: u8, payload: &[u8]) {
        let mut b = (payload.len() as u32).to_le_bytes()[..3].to_vec();
        b.push(seq);
        b.extend_from_slice(payload);
        s.write_all(&b).await.unwrap();
    }

    async fn recv(s: &mut TcpStream) -> Vec<u8> {
        let mut h = [0u8; 4];
        s.read_exact(&mut h).await.unwrap();
        let mut p = vec![0u8; usize::from(h[0]) | usize::from(h[1]) << 8];
        s.read_exact(&mut p).await.unwrap();
        p
    }

    fn ok(status: u16) -> Vec<u8> {
        let mut p = vec![0x00, 0x00, 0x00];
        p.extend_from_slice(&status.to_le_bytes());
        p.extend_from_slice(&[0, 0]);
        p
    }

    #[tokio::test]
    async fn multi_statement_results_are_counted() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut g = vec![10u8];
            g.extend_from_slice(b"10.11.6-MariaDB\0");
            g.extend_from_slice(&7u32.to_le_bytes());
            g.extend_from_slice(b"abcdefgh\0");
            g.extend_from_slice(&0xf7feu16.to_le_bytes());
            g.push(45);
            g.extend_from_slice(&2u16.to_le_bytes());
            g.extend_from_slice(&0x81bfu16.to_le_bytes());
            g.push(21);
            g.extend_from_slice(&[0u8; 10]);
            g.extend_from_slice(b"ijklmnopqrst\0mysql_native_password\0");
            send(&mut s, 0, &g).await;
            let login = recv(&mut s).await;
            let caps = u32::from_le_bytes(login[..4].try_into().unwrap());
            assert!(caps & CLIENT_MULTI_STATEMENTS != 0);
            send(&mut s, 2, &ok(2)).await;
            // 1: three results, the second without MORE_RESULTS (as MariaDB
            // answers a BINLOG statement in a transaction), then a query whose
            // third statement fails.
            assert_eq!(recv(&mut s).await, b"\x03A;B;C");
            send(&mut s, 1, &ok(0x0a)).await;
            send(&mut s, 2, &ok(0x03)).await;
            // A result set: 1 column, its definition, EOF, one row, EOF.
            send(&mut s, 3, &[1]).await;
            send(&mut s, 4, b"\x03def").await;
            send(&mut s, 5, &[0xfe, 0, 0, 0x02, 0]).await;
            send(&mut s, 6, &[1, b'x']).await;
            send(&mut s, 7, &[0xfe, 0, 0, 0x02, 0]).await;
            assert_eq!(recv(&mut s).await, b"\x03D;E;F;G");
            send(&mut s, 1, &ok(0x0a)).await;
            send(&mut s, 2, &ok(0x0a)).await;
            let mut err = vec![0xff];
            err.extend_from_slice(&1146u16.to_le_bytes());
            err.extend_from_slice(b"#42S02Table 'x.t' doesn't exist");
            send(&mut s, 3, &err).await;
            s
        });
        let p = ConnParams::from_url(&format!("mysql://u:p@127.0.0.1:{port}")).unwrap();
        let mut c = Conn::connect_multi_statements(&p, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(c.query_multi(b"A;B;C", 3).await.unwrap(), 3);
        let (i, e) = c.query_multi(b"D;E;F;G", 4).await.unwrap_err();
        assert_eq!(i, 2);
        assert_eq!(e.code(), Some(1146));
        assert!(e.message().contains("doesn't exist"), "{e}");
        server.await.unwrap();
    }

    #[test]
    fn err_packets() {
        let mut p = vec![0xff];
        p.extend_from_slice(&1045u16.to_le_bytes());
        p.extend_from_slice(b"#28000Access denied for user 'x'");
        let e = err_packet(&p);
        assert_eq!(e.kind(), ErrorKind::AccessDenied);
        assert_eq!(e.code(), Some(1045));
        assert!(e.message().contains("Access denied for user 'x'"));
        assert!(!e.message().contains("#28000"));
    }
}
