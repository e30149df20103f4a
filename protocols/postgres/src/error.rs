//! Errors of the PostgreSQL client, classified for the archiver's retry logic.
//!
//! Every error says *where* it happened (server address, command, WAL
//! position) and renders as one plain sentence that ends with what to do.
//! [`ErrorKind`] tells the caller whether to reconnect and resume from its
//! durable watermark ([`ErrorKind::Transient`]), stop and alert
//! ([`ErrorKind::Definite`]), or record a gap because the server no longer
//! has the requested WAL ([`ErrorKind::WalRemoved`]).
//!
//! Server errors arrive as `ErrorResponse` messages: a list of
//! `(field type byte, NUL-terminated string)` pairs; see [`ServerMessage`].

use std::fmt;
use std::io;

use crate::lsn::Lsn;

/// How the caller should react to an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Network trouble or a server that is restarting / overloaded: reconnect and resume.
    Transient,
    /// Configuration, permission or protocol problem: retrying will not help.
    Definite,
    /// The server removed the WAL we need (segment recycled, slot invalidated): a gap.
    WalRemoved,
}

/// Decoded `ErrorResponse` / `NoticeResponse` fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerMessage {
    /// `S`/`V`: ERROR, FATAL, PANIC, WARNING, NOTICE, ...
    pub severity: String,
    /// `C`: SQLSTATE code, e.g. `28P01`.
    pub code: String,
    /// `M`: primary message.
    pub message: String,
    /// `D`: optional detail.
    pub detail: Option<String>,
    /// `H`: optional hint.
    pub hint: Option<String>,
}

impl ServerMessage {
    /// Parses the body of an `E`/`N` message (after tag and length).
    pub fn parse(body: &[u8]) -> ServerMessage {
        let mut m = ServerMessage::default();
        let mut rest = body;
        while let Some((&field, tail)) = rest.split_first() {
            if field == 0 {
                break;
            }
            let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
            let value = String::from_utf8_lossy(&tail[..end]).into_owned();
            rest = tail.get(end + 1..).unwrap_or(&[]);
            match field {
                b'V' => m.severity = value,
                b'S' if m.severity.is_empty() => m.severity = value,
                b'C' => m.code = value,
                b'M' => m.message = value,
                b'D' => m.detail = Some(value),
                b'H' => m.hint = Some(value),
                _ => {}
            }
        }
        m
    }
}

impl fmt::Display for ServerMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " ({d})")?;
        }
        Ok(())
    }
}

/// An error of the PostgreSQL client (boxed: errors are rare, results stay small).
#[derive(Debug)]
pub struct PgError(Box<Inner>);

#[derive(Debug)]
struct Inner {
    kind: ErrorKind,
    summary: String,
    context: String,
    advice: String,
    lsn: Option<Lsn>,
    server: Option<ServerMessage>,
    source: Option<io::Error>,
}

impl PgError {
    /// A new error; `context` says where ("127.0.0.1:5433", "START_REPLICATION 0/3000000 on ...").
    pub fn new(
        kind: ErrorKind,
        summary: impl Into<String>,
        context: impl Into<String>,
        advice: impl Into<String>,
    ) -> PgError {
        PgError(Box::new(Inner {
            kind,
            summary: summary.into(),
            context: context.into(),
            advice: advice.into(),
            lsn: None,
            server: None,
            source: None,
        }))
    }

    /// A network/socket error; transient.
    pub fn io(err: io::Error, what: &str, context: impl Into<String>) -> PgError {
        let summary = match err.kind() {
            io::ErrorKind::UnexpectedEof => format!("{what}: the server closed the connection"),
            _ => format!("{what}: {err}"),
        };
        let mut e = PgError::new(
            ErrorKind::Transient,
            summary,
            context,
            "check that the server is running and reachable at that address; the connection will be retried",
        );
        e.0.source = Some(err);
        e
    }

    /// A malformed or unexpected message from the server; definite.
    pub fn protocol(summary: impl Into<String>, context: impl Into<String>) -> PgError {
        PgError::new(
            ErrorKind::Definite,
            summary,
            context,
            "the server speaks an unexpected protocol variant; check the server version and that the address is a PostgreSQL server",
        )
    }

    /// A configuration mistake on our side (bad URL, missing setting); definite.
    pub fn config(summary: impl Into<String>, advice: impl Into<String>) -> PgError {
        PgError::new(ErrorKind::Definite, summary, "configuration", advice)
    }

    /// Classifies a server `ErrorResponse` by SQLSTATE and message.
    pub fn server(msg: ServerMessage, context: impl Into<String>) -> PgError {
        let (kind, advice) = classify(&msg);
        let mut e = PgError::new(kind, msg.message.clone(), context, advice);
        e.0.server = Some(msg);
        e
    }

    /// Attaches the WAL position the error happened at.
    pub fn with_lsn(mut self, lsn: Lsn) -> PgError {
        self.0.lsn = Some(lsn);
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// The socket error behind an I/O failure, if this is one.
    pub fn io_error(&self) -> Option<&io::Error> {
        self.0.source.as_ref()
    }

    pub fn is_transient(&self) -> bool {
        self.0.kind == ErrorKind::Transient
    }

    /// WAL position the error happened at, if known.
    pub fn lsn(&self) -> Option<Lsn> {
        self.0.lsn
    }

    /// The server's own error fields, when the error came from the server.
    pub fn server_message(&self) -> Option<&ServerMessage> {
        self.0.server.as_ref()
    }

    /// SQLSTATE of a server error.
    pub fn code(&self) -> Option<&str> {
        self.0.server.as_ref().map(|s| s.code.as_str())
    }

    /// Where the error happened.
    pub fn context(&self) -> &str {
        &self.0.context
    }
}

fn classify(msg: &ServerMessage) -> (ErrorKind, String) {
    let text = msg.message.to_ascii_lowercase();
    if text.contains("has already been removed")
        || (text.contains("slot") && text.contains("invalidated"))
    {
        return (
            ErrorKind::WalRemoved,
            "the server no longer has this WAL, so the archive has a gap here; take a new base backup, and use a replication slot so the server keeps WAL until it is archived".into(),
        );
    }
    let class = msg.code.get(..2).unwrap_or("");
    match msg.code.as_str() {
        "28P01" => (
            ErrorKind::Definite,
            "check the password in the URL, PGPASSWORD or ~/.pgpass".into(),
        ),
        "28000" => (
            ErrorKind::Definite,
            "check that the role exists and that pg_hba.conf on the server allows it to connect from this host (for archiving, to the \"replication\" database)".into(),
        ),
        "42501" if text.contains("replication") || text.contains("wal sender") || text.contains("walsender") => (
            ErrorKind::Definite,
            "connect as a role with the REPLICATION attribute, or grant it with ALTER ROLE ... REPLICATION".into(),
        ),
        "42501" => (ErrorKind::Definite, "grant the missing privilege to the role, or connect as a role that has it".into()),
        "42704" => (ErrorKind::Definite, "create the object (e.g. the replication slot) or fix its name".into()),
        "42710" => (ErrorKind::Definite, "the object already exists; reuse it or choose another name".into()),
        "57P01" | "57P02" | "57P03" => (
            ErrorKind::Transient,
            "the server is shutting down or starting up; the connection will be retried".into(),
        ),
        "53300" => (
            ErrorKind::Transient,
            "the server has no free connection (raise max_connections / max_wal_senders or close idle clients); will retry".into(),
        ),
        _ if class == "08" || class == "53" || class == "57" || class == "40" => (
            ErrorKind::Transient,
            "a temporary server condition; the operation will be retried".into(),
        ),
        _ => (ErrorKind::Definite, "see the server log for details".into()),
    }
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {}", self.0.summary, self.0.context)?;
        if let Some(lsn) = self.0.lsn {
            write!(f, " (WAL position {lsn})")?;
        }
        if let Some(d) = self.0.server.as_ref().and_then(|s| s.detail.as_ref()) {
            write!(f, " [{d}]")?;
        }
        if !self.0.advice.is_empty() {
            write!(f, ": {}", self.0.advice)?;
        }
        Ok(())
    }
}

/// The I/O cause is part of the message, so it is not exposed again as a
/// `source()`: an error chain printed with `{:#}` names it once.
impl std::error::Error for PgError {}

pub type Result<T, E = PgError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn body(fields: &[(u8, &str)]) -> Vec<u8> {
        let mut v = Vec::new();
        for (t, s) in fields {
            v.push(*t);
            v.extend_from_slice(s.as_bytes());
            v.push(0);
        }
        v.push(0);
        v
    }

    #[test]
    fn parse_and_classify() {
        let m = ServerMessage::parse(&body(&[
            (b'S', "FATAL"),
            (b'V', "FATAL"),
            (b'C', "28P01"),
            (b'M', "password authentication failed for user \"x\""),
        ]));
        assert_eq!(m.code, "28P01");
        assert_eq!(m.severity, "FATAL");
        let e = PgError::server(m, "127.0.0.1:5433");
        assert_eq!(e.kind(), ErrorKind::Definite);
        assert_eq!(
            e.to_string(),
            "password authentication failed for user \"x\" at 127.0.0.1:5433: check the password in the URL, PGPASSWORD or ~/.pgpass"
        );

        let m = ServerMessage::parse(&body(&[
            (b'S', "ERROR"),
            (b'C', "58P01"),
            (
                b'M',
                "requested WAL segment 000000010000000000000003 has already been removed",
            ),
        ]));
        let e = PgError::server(m, "START_REPLICATION").with_lsn(Lsn(0x300_0000));
        assert_eq!(e.kind(), ErrorKind::WalRemoved);
        assert!(e.to_string().contains("(WAL position 0/3000000)"), "{e}");

        for code in ["57P01", "57P03", "53300", "08006"] {
            let m = ServerMessage {
                code: code.into(),
                message: "x".into(),
                ..Default::default()
            };
            assert_eq!(
                PgError::server(m, "c").kind(),
                ErrorKind::Transient,
                "{code}"
            );
        }
        let m = ServerMessage {
            code: "42501".into(),
            message: "permission denied to start WAL sender".into(),
            ..Default::default()
        };
        let e = PgError::server(m, "c");
        assert_eq!(e.kind(), ErrorKind::Definite);
        assert!(e.to_string().contains("REPLICATION attribute"));
        let e = PgError::io(
            io::Error::from(io::ErrorKind::ConnectionRefused),
            "could not connect",
            "127.0.0.1:1",
        );
        assert!(e.is_transient());
    }
}
