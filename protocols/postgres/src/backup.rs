//! `BASE_BACKUP` over the replication protocol (PostgreSQL 15+ "new-style"
//! COPY stream).
//!
//! The command (`BASE_BACKUP (LABEL 'x', CHECKPOINT 'fast', WAIT false,
//! MANIFEST 'yes', TABLESPACE_MAP true, PROGRESS true)`) is answered with:
//!
//! 1. a result set with one row `(recptr text, tli int8)`: the backup's start
//!    LSN and timeline;
//! 2. a result set with one row per tablespace `(spcoid oid, spclocation
//!    text, size int8)`; the main data directory has a NULL oid and location;
//! 3. one `CopyOutResponse` (`H`), then `CopyData` messages whose first byte
//!    says what they carry:
//!    * `n` new archive: `name\0 tablespace_path\0` (empty path = main data
//!      directory; names are `base.tar` and `<oid>.tar`),
//!    * `m` the backup manifest starts (all following `d` data is manifest),
//!    * `d` archive or manifest bytes (a tar stream; the server ends each
//!      archive with its own tar trailer),
//!    * `p` progress: `int64` bytes of the archive sent so far;
//!
//!    then `CopyDone`;
//! 4. a result set with one row `(recptr text, tli int8)`: the end LSN (the
//!    WAL up to it is needed for the backup to be consistent);
//! 5. `CommandComplete`, `ReadyForQuery`.
//!
//! With `WAL false` (the default) the archive does not contain `pg_wal`
//! content: recovery fetches it through `restore_command`.
//! [`BaseBackupStream`] hands the bytes out as they arrive, never holding
//! more than one protocol message in memory.

use bytes::{Buf, Bytes};

use postgres_protocol::message::frontend;

use crate::conn::{Connection, StartupMode};
use crate::conninfo::Config;
use crate::error::{PgError, Result, ServerMessage};
use crate::lsn::{Lsn, TimelineId};

/// Options of a `BASE_BACKUP` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseBackupOptions {
    /// Backup label (stored in `backup_label`).
    pub label: String,
    /// `CHECKPOINT 'fast'` (immediate) instead of a spread checkpoint.
    pub fast_checkpoint: bool,
    /// Ask for the backup manifest (`MANIFEST 'yes'`).
    pub manifest: bool,
    /// Put a `tablespace_map` file in the main archive instead of symlinks.
    pub tablespace_map: bool,
    /// Ask for `p` progress messages and tablespace size estimates.
    pub progress: bool,
    /// `MAX_RATE` in kB/s (32..=1048576), none = unlimited.
    pub max_rate_kbps: Option<u32>,
}

impl Default for BaseBackupOptions {
    fn default() -> Self {
        BaseBackupOptions {
            label: "pitr base backup".into(),
            fast_checkpoint: true,
            manifest: true,
            tablespace_map: true,
            progress: true,
            max_rate_kbps: None,
        }
    }
}

impl BaseBackupOptions {
    /// The `BASE_BACKUP (...)` command text.
    pub fn command(&self) -> String {
        let mut opts = vec![
            format!("LABEL {}", quote_literal(&self.label)),
            format!(
                "CHECKPOINT '{}'",
                if self.fast_checkpoint {
                    "fast"
                } else {
                    "spread"
                }
            ),
            "WAIT false".to_string(),
            format!("MANIFEST '{}'", if self.manifest { "yes" } else { "no" }),
            format!("TABLESPACE_MAP {}", self.tablespace_map),
            format!("PROGRESS {}", self.progress),
        ];
        if let Some(r) = self.max_rate_kbps {
            opts.push(format!("MAX_RATE {r}"));
        }
        format!("BASE_BACKUP ({})", opts.join(", "))
    }
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// One tablespace of the backup (second result set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tablespace {
    /// OID; `None` for the main data directory.
    pub oid: Option<u32>,
    /// Absolute location on the server; `None` for the main data directory.
    pub location: Option<String>,
    /// Size estimate in bytes (only with `PROGRESS`).
    pub size: Option<u64>,
}

/// Where the backup starts (first two result sets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupStart {
    pub lsn: Lsn,
    pub timeline: TimelineId,
    pub tablespaces: Vec<Tablespace>,
}

/// Where the backup ends (final result set): recovery must replay at least
/// up to `lsn` on `timeline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupEnd {
    pub lsn: Lsn,
    pub timeline: TimelineId,
}

/// One item of the COPY stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupEvent {
    /// A new tar archive starts: `base.tar` (main directory, empty
    /// `tablespace_path`) or `<oid>.tar`.
    Archive {
        name: String,
        tablespace_path: String,
    },
    /// The backup manifest starts; following `Data` is manifest JSON.
    Manifest,
    /// Bytes of the current archive or of the manifest.
    Data(Bytes),
    /// Bytes of the current archive sent so far.
    Progress(u64),
}

impl BackupEvent {
    /// Decodes one `CopyData` payload.
    pub fn decode(mut body: Bytes) -> std::result::Result<BackupEvent, String> {
        if body.is_empty() {
            return Err("empty CopyData message".into());
        }
        match body.get_u8() {
            b'n' => {
                let name = cstring(&mut body).ok_or("new-archive message without a name")?;
                let tablespace_path =
                    cstring(&mut body).ok_or("new-archive message without a tablespace path")?;
                if name.is_empty() {
                    return Err("new-archive message with an empty name".into());
                }
                Ok(BackupEvent::Archive {
                    name,
                    tablespace_path,
                })
            }
            b'm' => Ok(BackupEvent::Manifest),
            b'd' => Ok(BackupEvent::Data(body)),
            b'p' => {
                if body.len() < 8 {
                    return Err("short progress message".into());
                }
                Ok(BackupEvent::Progress(body.get_i64().max(0) as u64))
            }
            other => Err(format!(
                "unknown base backup message type {:?}",
                other as char
            )),
        }
    }
}

fn cstring(b: &mut Bytes) -> Option<String> {
    let end = b.iter().position(|&c| c == 0)?;
    let s = String::from_utf8(b.split_to(end).to_vec()).ok()?;
    b.advance(1);
    Some(s)
}

/// Splits a `DataRow` body into its values.
fn data_row(body: &Bytes) -> Option<Vec<Option<Bytes>>> {
    let mut b = body.clone();
    if b.remaining() < 2 {
        return None;
    }
    let n = b.get_u16();
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        if b.remaining() < 4 {
            return None;
        }
        let len = b.get_i32();
        if len < 0 {
            out.push(None);
        } else {
            if b.remaining() < len as usize {
                return None;
            }
            out.push(Some(b.split_to(len as usize)));
        }
    }
    Some(out)
}

fn text(v: &Option<Bytes>) -> Option<&str> {
    v.as_ref().and_then(|b| std::str::from_utf8(b).ok())
}

/// Parses a `(recptr, tli)` row.
pub fn parse_position_row(body: &Bytes) -> Option<(Lsn, TimelineId)> {
    let row = data_row(body)?;
    let lsn = text(row.first()?)?.parse().ok()?;
    let tli = text(row.get(1)?)?.parse().ok()?;
    Some((lsn, TimelineId(tli)))
}

/// Parses a `(spcoid, spclocation, size)` row.
pub fn parse_tablespace_row(body: &Bytes) -> Option<Tablespace> {
    let row = data_row(body)?;
    let oid = match row.first()? {
        None => None,
        v => Some(text(v)?.parse().ok()?),
    };
    Some(Tablespace {
        oid,
        location: row.get(1).and_then(text).map(str::to_string),
        size: row.get(2).and_then(text).and_then(|s| s.parse().ok()),
    })
}

impl BaseBackupStream {
    /// Opens a replication connection and starts `BASE_BACKUP`; returns once
    /// the start position is known.
    pub async fn start_backup(cfg: &Config, opts: &BaseBackupOptions) -> Result<BaseBackupStream> {
        let mut conn = Connection::connect(cfg, StartupMode::PhysicalReplication).await?;
        let context = format!("BASE_BACKUP on {}", conn.address());
        if conn.server_major_version().is_some_and(|v| v < 15) {
            return Err(PgError::config(
                format!("{context}: base backups need PostgreSQL 15 or newer"),
                "upgrade the server or use pg_basebackup",
            ));
        }
        frontend::query(&opts.command(), conn.write_buf()).map_err(|e| {
            PgError::config(
                format!("invalid backup label: {e}"),
                "remove NUL bytes from the label",
            )
        })?;
        conn.flush().await?;
        let mut result_sets = 0;
        let mut start: Option<(Lsn, TimelineId)> = None;
        let mut tablespaces = Vec::new();
        loop {
            let msg = conn.read_message().await?;
            match msg.tag {
                b'T' => result_sets += 1,
                b'D' if result_sets == 1 => {
                    start = Some(parse_position_row(&msg.body).ok_or_else(|| {
                        PgError::protocol("malformed backup start position", &context)
                    })?)
                }
                b'D' if result_sets == 2 => tablespaces.push(
                    parse_tablespace_row(&msg.body)
                        .ok_or_else(|| PgError::protocol("malformed tablespace row", &context))?,
                ),
                b'C' | b'N' | b'S' => {}
                b'H' => break,
                b'E' => {
                    let err = PgError::server(ServerMessage::parse(&msg.body), &context);
                    let _ = conn.collect_results("BASE_BACKUP").await;
                    return Err(err);
                }
                other => {
                    return Err(PgError::protocol(
                        format!(
                            "unexpected message {:?} before the backup data (PostgreSQL 15 or newer is required)",
                            other as char
                        ),
                        &context,
                    ))
                }
            }
        }
        let (lsn, timeline) =
            start.ok_or_else(|| PgError::protocol("no backup start position", &context))?;
        Ok(BaseBackupStream {
            conn,
            context,
            start: BackupStart {
                lsn,
                timeline,
                tablespaces,
            },
            copy_done: false,
        })
    }
}

/// The COPY phase of a running `BASE_BACKUP`.
#[derive(Debug)]
pub struct BaseBackupStream {
    conn: Connection,
    context: String,
    start: BackupStart,
    copy_done: bool,
}

impl BaseBackupStream {
    /// Start position, timeline and tablespaces.
    pub fn start(&self) -> &BackupStart {
        &self.start
    }

    /// The next item; `Ok(None)` after the server's `CopyDone`.
    pub async fn next(&mut self) -> Result<Option<BackupEvent>> {
        if self.copy_done {
            return Ok(None);
        }
        loop {
            let msg = self.conn.read_message().await?;
            match msg.tag {
                b'd' => {
                    return BackupEvent::decode(msg.body)
                        .map(Some)
                        .map_err(|e| self.error(e));
                }
                b'c' => {
                    self.copy_done = true;
                    return Ok(None);
                }
                b'N' | b'S' => {}
                b'E' => {
                    return Err(
                        PgError::server(ServerMessage::parse(&msg.body), &self.context)
                            .with_lsn(self.start.lsn),
                    )
                }
                other => {
                    return Err(self.error(format!(
                        "unexpected message {:?} in the backup stream",
                        other as char
                    )))
                }
            }
        }
    }

    fn error(&self, what: impl Into<String>) -> PgError {
        PgError::protocol(what, &self.context).with_lsn(self.start.lsn)
    }

    /// After [`BaseBackupStream::next`] returned `None`: reads the end
    /// position and closes the connection.
    pub async fn finish(mut self) -> Result<BackupEnd> {
        while !self.copy_done {
            if self.next().await?.is_some() {
                return Err(self.error("finish() called before the backup data was consumed"));
            }
        }
        let mut end = None;
        loop {
            let msg = self.conn.read_message().await?;
            match msg.tag {
                b'D' if end.is_none() => {
                    end = Some(
                        parse_position_row(&msg.body)
                            .ok_or_else(|| self.error("malformed backup end position"))?,
                    )
                }
                b'T' | b'D' | b'C' | b'N' | b'S' => {}
                b'E' => {
                    let err = PgError::server(ServerMessage::parse(&msg.body), &self.context)
                        .with_lsn(self.start.lsn);
                    let _ = self.conn.collect_results("BASE_BACKUP").await;
                    return Err(err);
                }
                b'Z' => break,
                other => {
                    return Err(self.error(format!(
                        "unexpected message {:?} after the backup data",
                        other as char
                    )))
                }
            }
        }
        let (lsn, timeline) = end.ok_or_else(|| self.error("no backup end position"))?;
        let _ = self.conn.close().await;
        Ok(BackupEnd { lsn, timeline })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};

    fn row(values: &[Option<&str>]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u16(values.len() as u16);
        for v in values {
            match v {
                None => b.put_i32(-1),
                Some(s) => {
                    b.put_i32(s.len() as i32);
                    b.extend_from_slice(s.as_bytes());
                }
            }
        }
        b.freeze()
    }

    #[test]
    fn command_text() {
        let o = BaseBackupOptions {
            label: "it's".into(),
            max_rate_kbps: Some(1024),
            ..Default::default()
        };
        assert_eq!(
            o.command(),
            "BASE_BACKUP (LABEL 'it''s', CHECKPOINT 'fast', WAIT false, MANIFEST 'yes', TABLESPACE_MAP true, PROGRESS true, MAX_RATE 1024)"
        );
    }

    #[test]
    fn copy_messages() {
        let m = BackupEvent::decode(Bytes::from_static(b"nbase.tar\0\0")).unwrap();
        assert_eq!(
            m,
            BackupEvent::Archive {
                name: "base.tar".into(),
                tablespace_path: String::new()
            }
        );
        let m = BackupEvent::decode(Bytes::from_static(b"n16384.tar\0/srv/ts\0")).unwrap();
        assert!(
            matches!(m, BackupEvent::Archive { ref tablespace_path, .. } if tablespace_path == "/srv/ts")
        );
        assert_eq!(
            BackupEvent::decode(Bytes::from_static(b"dabc")).unwrap(),
            BackupEvent::Data(Bytes::from_static(b"abc"))
        );
        assert_eq!(
            BackupEvent::decode(Bytes::from_static(b"m")).unwrap(),
            BackupEvent::Manifest
        );
        let mut p = BytesMut::new();
        p.put_u8(b'p');
        p.put_i64(123_456);
        assert_eq!(
            BackupEvent::decode(p.freeze()).unwrap(),
            BackupEvent::Progress(123_456)
        );
        assert!(BackupEvent::decode(Bytes::from_static(b"nbase.tar")).is_err());
        assert!(BackupEvent::decode(Bytes::from_static(b"p\0\0")).is_err());
        assert!(BackupEvent::decode(Bytes::from_static(b"x")).is_err());
        assert!(BackupEvent::decode(Bytes::new()).is_err());
    }

    #[test]
    fn result_rows() {
        assert_eq!(
            parse_position_row(&row(&[Some("0/2000028"), Some("1")])),
            Some((Lsn(0x200_0028), TimelineId(1)))
        );
        assert_eq!(parse_position_row(&row(&[Some("zz"), Some("1")])), None);
        assert_eq!(
            parse_tablespace_row(&row(&[None, None, Some("4096")])),
            Some(Tablespace {
                oid: None,
                location: None,
                size: Some(4096)
            })
        );
        assert_eq!(
            parse_tablespace_row(&row(&[Some("16385"), Some("/srv/ts"), None])),
            Some(Tablespace {
                oid: Some(16385),
                location: Some("/srv/ts".into()),
                size: None
            })
        );
        assert_eq!(parse_tablespace_row(&row(&[Some("x"), None, None])), None);
    }
}
