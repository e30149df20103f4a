//! Errors of the binlog client and decoders.
//!
//! Every error is classified: *transient* ones (network trouble, the server
//! going away or restarting, a missed heartbeat) mean "reconnect and resume
//! from the last durable position"; *definite* ones (bad credentials, missing
//! privilege, purged binlogs, corrupt events) mean "stop and tell a human".
//! Each carries the replication position it happened at and a message that
//! says what to do. Messages never contain the password.

use std::fmt;

use crate::client::StartFrom;

/// What went wrong, and thereby whether retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Socket-level failure (connect refused, reset, EOF). Transient.
    Io,
    /// The server closed the session or is shutting down / restarting. Transient.
    ServerGone,
    /// Nothing (not even a heartbeat) arrived within the read timeout. Transient.
    Timeout,
    /// Too many connections or a similar temporary refusal. Transient.
    Busy,
    /// Wrong user or password (1045). Definite.
    AccessDenied,
    /// The user lacks REPLICATION SLAVE / REPLICATION CLIENT (1227 and kin). Definite.
    MissingPrivilege,
    /// The binlog files (or GTIDs) needed to resume were purged (1236). Definite.
    BinlogPurged,
    /// The requested file, offset or GTID does not exist on this server. Definite.
    UnknownPosition,
    /// Binary logging or GTID mode is not configured as required. Definite.
    Misconfigured,
    /// An event failed its CRC32 check. Definite.
    ChecksumMismatch,
    /// An event could not be decoded or the server broke the protocol. Definite.
    Protocol,
    /// Invalid input from our caller (URL, GTID text). Definite.
    InvalidInput,
    /// Any other server error. Definite.
    Server,
}

impl ErrorKind {
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorKind::Io | ErrorKind::ServerGone | ErrorKind::Timeout | ErrorKind::Busy
        )
    }
}

/// An error of this crate.
#[derive(Debug, Clone)]
pub struct MysqlError {
    kind: ErrorKind,
    /// Where in the replication stream it happened, if known.
    position: Option<StartFrom>,
    /// Server error code, if the server reported one.
    code: Option<u16>,
    message: String,
}

pub type Result<T, E = MysqlError> = std::result::Result<T, E>;

impl MysqlError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> MysqlError {
        MysqlError {
            kind,
            position: None,
            code: None,
            message: message.into(),
        }
    }

    pub fn with_position(mut self, position: StartFrom) -> MysqlError {
        self.position = Some(position);
        self
    }

    pub fn with_code(mut self, code: u16) -> MysqlError {
        self.code = Some(code);
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn is_transient(&self) -> bool {
        self.kind.is_transient()
    }

    pub fn position(&self) -> Option<&StartFrom> {
        self.position.as_ref()
    }

    pub fn code(&self) -> Option<u16> {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// A login that succeeded but a replication command refused with "access
    /// denied" (servers answer COM_REGISTER_SLAVE that way) lacks a privilege.
    pub fn access_denied_means_privilege(self) -> MysqlError {
        if self.kind != ErrorKind::AccessDenied {
            return self;
        }
        let mut e = MysqlError::new(
            ErrorKind::MissingPrivilege,
            format!(
                "the server refused replication to this user ({}); grant it REPLICATION SLAVE and REPLICATION CLIENT (MariaDB: also BINLOG MONITOR), e.g. GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO 'user'@'host'",
                self.message.split("; ").next().unwrap_or_default()
            ),
        );
        e.code = self.code;
        e.position = self.position;
        e
    }

    /// Classifies a server error (code + message) seen while connecting or
    /// streaming at `position`.
    pub fn from_server(code: u16, server_msg: &str, position: Option<StartFrom>) -> MysqlError {
        let lower = server_msg.to_ascii_lowercase();
        let (kind, advice) = match code {
            1045 => (
                ErrorKind::AccessDenied,
                "check the user name and password in the source URL",
            ),
            1227 | 1044 | 1142 | 1370 => (
                ErrorKind::MissingPrivilege,
                "grant the user REPLICATION SLAVE and REPLICATION CLIENT (MariaDB: also BINLOG MONITOR), e.g. GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO 'user'@'host'",
            ),
            1040 | 1203 => (
                ErrorKind::Busy,
                "the server refused the connection for now; it will be retried",
            ),
            1053 | 1077 | 1152 | 1159 | 1160 | 1161 | 2006 | 2013 => (
                ErrorKind::ServerGone,
                "the server went away; it will be retried from the last durable position",
            ),
            1236 if lower.contains("purged") || lower.contains("could not find first log file") => (
                ErrorKind::BinlogPurged,
                "the binlogs needed to continue were purged on the server; take a new base backup and restart archiving from it (the lost stretch is a gap)",
            ),
            1236 if lower.contains("not in the master's binlog")
                || lower.contains("could not find gtid state")
                || lower.contains("position > file size")
                || lower.contains("bogus data in log event")
                || lower.contains("log event entry exceeded") =>
            {
                (
                    ErrorKind::UnknownPosition,
                    "the requested position does not exist on this server; check that the archive belongs to this server and restart from a valid position",
                )
            }
            1236 if lower.contains("binary log is not open") => (
                ErrorKind::Misconfigured,
                "enable binary logging on the server (log_bin) and restart it",
            ),
            1236 if lower.contains("same server_uuid") || lower.contains("same server_id") => (
                ErrorKind::Misconfigured,
                "another replica uses the same server id; give the archiver a unique server id",
            ),
            _ => (
                ErrorKind::Server,
                "see the server message; fix the cause and restart the archiver",
            ),
        };
        let mut e = MysqlError::new(kind, format!("server error {code}: {server_msg}; {advice}"))
            .with_code(code);
        e.position = position;
        e
    }
}

impl fmt::Display for MysqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let class = if self.is_transient() {
            "transient"
        } else {
            "definite"
        };
        write!(f, "{} ({class} {:?})", self.message, self.kind)?;
        if let Some(pos) = &self.position {
            write!(f, " at {pos}")?;
        }
        Ok(())
    }
}

impl std::error::Error for MysqlError {}

/// A malformed event, found by the sans-IO decoders. The client attaches
/// the stream position when turning it into a [`MysqlError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub type_code: u8,
    pub message: String,
}

impl DecodeError {
    pub fn new(type_code: u8, message: impl Into<String>) -> DecodeError {
        DecodeError {
            type_code,
            message: message.into(),
        }
    }

    pub fn into_mysql(self, position: Option<StartFrom>) -> MysqlError {
        let mut e = MysqlError::new(
            ErrorKind::Protocol,
            format!(
                "malformed binlog event of type {}: {}; the server sent data this decoder does not understand, report it with the position",
                self.type_code, self.message
            ),
        );
        e.position = position;
        e
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "event type {}: {}", self.type_code, self.message)
    }
}

impl std::error::Error for DecodeError {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pos::BinlogPos;

    #[test]
    fn classification() {
        let e = MysqlError::from_server(
            1045,
            "Access denied for user 'x'@'localhost' (using password: YES)",
            None,
        );
        assert_eq!(e.kind(), ErrorKind::AccessDenied);
        assert!(!e.is_transient());
        assert!(e.to_string().contains("password in the source URL"));

        let e = MysqlError::from_server(1227, "Access denied; you need (at least one of) the REPLICATION SLAVE privilege(s) for this operation", None);
        assert_eq!(e.kind(), ErrorKind::MissingPrivilege);
        assert!(e.to_string().contains("GRANT REPLICATION SLAVE"));

        let pos = StartFrom::Position(BinlogPos::new("bin.000001", 4));
        let e = MysqlError::from_server(
            1236,
            "Could not find first log file name in binary log index file",
            Some(pos.clone()),
        );
        assert_eq!(e.kind(), ErrorKind::BinlogPurged);
        assert_eq!(e.position(), Some(&pos));
        assert!(e.to_string().contains("bin.000001:4"));

        let e = MysqlError::from_server(1236, "The replica is connecting using CHANGE REPLICATION SOURCE TO SOURCE_AUTO_POSITION = 1, but the source has purged binary logs containing GTIDs that the replica requires.", None);
        assert_eq!(e.kind(), ErrorKind::BinlogPurged);

        let e = MysqlError::from_server(1045, "Access denied for user 'u'@'%'", None)
            .access_denied_means_privilege();
        assert_eq!(e.kind(), ErrorKind::MissingPrivilege);
        assert_eq!(e.code(), Some(1045));
        assert!(e.to_string().contains("GRANT REPLICATION SLAVE"));

        let e = MysqlError::from_server(1053, "Server shutdown in progress", None);
        assert!(e.is_transient());
        let e = MysqlError::from_server(
            1236,
            "Client requested master to start replication from position > file size",
            None,
        );
        assert_eq!(e.kind(), ErrorKind::UnknownPosition);
        let e = MysqlError::from_server(1064, "syntax", None);
        assert_eq!(e.kind(), ErrorKind::Server);
        assert!(!e.is_transient());
    }
}
