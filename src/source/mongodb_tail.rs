//! The MongoDB side of the oplog archiver: connecting with the official
//! driver (SCRAM, TLS and replica-set discovery come from the URL), naming
//! the replica set, and reading `local.oplog.rs` through a tailable-await
//! cursor as raw BSON (the bytes are never re-encoded).
//!
//! Where a read starts ([`StartFrom`]):
//!
//! * `After(ts)`: resume after the last archived entry `ts`. The query is
//!   `{ts: {$gte: ts}}` and the first entry returned must be `ts` itself
//!   (it is then skipped; its term is returned, for the caller to check
//!   against the archived entry's: an optime is `ts` and term). A later first entry means the capped oplog
//!   dropped `ts` and everything up to the entry returned: a gap
//!   ([`Opened::RolledOver`]).
//! * `From(ts)`: every entry with `ts >= ts` (`--start-at SECS:INC`).
//! * `Oldest` / `Now`: from the oldest / newest entry the oplog holds.
//!
//! Errors are classified ([`is_transient`]): a network failure, a step-down,
//! a killed cursor or a cursor that fell off the capped oplog is transient
//! (reconnect and resume); wrong credentials or a missing permission is
//! definite.

use std::time::Duration;

use anyhow::anyhow;
use bson::{doc, Document, RawDocumentBuf};
use futures::StreamExt;
use mongodb::error::{Error as MongoError, ErrorKind};
use mongodb::options::{ClientOptions, CursorType};
use mongodb::{Client, Cursor};
use pitr_mongodb::{OplogEntryRef, OplogTs};

/// Where the next read of the oplog starts; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    After(OplogTs),
    From(OplogTs),
    Oldest,
    Now,
}

/// A connected replica-set member.
pub struct Conn {
    pub client: Client,
    /// The replica set name (`setName` of `hello`): the source identity.
    pub set_name: String,
    pub version: String,
}

/// Server error codes that a reconnect resolves.
const TRANSIENT_CODES: &[i32] = &[
    6,     // HostUnreachable
    7,     // HostNotFound
    43,    // CursorNotFound
    89,    // NetworkTimeout
    91,    // ShutdownInProgress
    136,   // CappedPositionLost
    175,   // QueryPlanKilled
    189,   // PrimarySteppedDown
    237,   // CursorKilled
    262,   // ExceededTimeLimit
    9001,  // SocketException
    10107, // NotWritablePrimary
    11600, // InterruptedAtShutdown
    11602, // InterruptedDueToReplStateChange
    13435, // NotPrimaryNoSecondaryOk
    13436, // NotPrimaryOrSecondary
];

/// True when reconnecting may help (see the module docs).
pub fn is_transient(e: &MongoError) -> bool {
    match &*e.kind {
        ErrorKind::Io(_)
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::DnsResolve { .. }
        | ErrorKind::Shutdown => true,
        ErrorKind::Command(c) => TRANSIENT_CODES.contains(&c.code),
        _ => e.contains_label("RetryableWriteError"),
    }
}

/// True for wrong credentials (or a user without the needed roles).
pub fn is_auth(e: &MongoError) -> bool {
    match &*e.kind {
        ErrorKind::Authentication { .. } => true,
        ErrorKind::Command(c) => c.code == 18 || c.code == 13,
        _ => false,
    }
}

/// What to check when no server answers.
const UNREACHABLE_ADVICE: &str =
    "check the hosts, port and replicaSet in the URL, and that mongod runs there";

/// An error of the driver as one plain sentence.
pub fn describe(e: &MongoError) -> anyhow::Error {
    match &*e.kind {
        _ if is_auth(e) => {
            let said = match &*e.kind {
                ErrorKind::Authentication { message, .. } => message.clone(),
                ErrorKind::Command(c) => c.message.clone(),
                _ => String::new(),
            };
            anyhow!(
                "authentication failed ({said}): check the user name and password in the URL \
                 (the user needs read access to local.oplog.rs)"
            )
        }
        // The driver's message is its whole topology description: not a
        // sentence for an operator.
        ErrorKind::ServerSelection { .. } => {
            anyhow!("no server of the replica set answered; {UNREACHABLE_ADVICE}")
        }
        _ => anyhow!("{e}"),
    }
}

/// Connects and names the replica set. `server_selection` bounds how long
/// an unreachable server is waited for (when the URL does not say).
pub async fn connect(url: &str, server_selection: Duration) -> anyhow::Result<Conn> {
    let mut opts = ClientOptions::parse(url)
        .await
        .map_err(|e| anyhow!("the URL is not a usable MongoDB URL: {e}"))?;
    if opts.server_selection_timeout.is_none() {
        opts.server_selection_timeout = Some(server_selection);
    }
    if opts.app_name.is_none() {
        opts.app_name = Some("pitr".into());
    }
    let hosts: Vec<String> = opts.hosts.iter().map(|h| h.to_string()).collect();
    let waited = opts.server_selection_timeout.unwrap_or(server_selection);
    let client = Client::with_options(opts).map_err(|e| describe(&e))?;
    let admin = client.database("admin");
    // `hello` needs no authentication; `ping` proves the credentials.
    let hello: Document = admin
        .run_command(doc! {"hello": 1})
        .await
        .map_err(|e| match &*e.kind {
            ErrorKind::ServerSelection { .. } => anyhow!(
                "cannot reach MongoDB at {}: no server answered within {waited:?}; {UNREACHABLE_ADVICE}",
                hosts.join(",")
            ),
            _ => describe(&e),
        })?;
    admin
        .run_command(doc! {"ping": 1})
        .await
        .map_err(|e| describe(&e))?;
    let set_name = hello
        .get_str("setName")
        .map_err(|_| {
            anyhow!(
                "the server is not a replica-set member (no setName in hello): pitr archives the oplog, \
                 which only replica sets have; run mongod with --replSet"
            )
        })?
        .to_string();
    let version = match admin.run_command(doc! {"buildInfo": 1}).await {
        Ok(b) => b.get_str("version").unwrap_or("").to_string(),
        Err(_) => String::new(),
    };
    Ok(Conn {
        client,
        set_name,
        version,
    })
}

fn oplog(client: &Client) -> mongodb::Collection<RawDocumentBuf> {
    client.database("local").collection("oplog.rs")
}

/// The `ts` of the oldest (`newest = false`) or newest entry of the oplog.
pub async fn edge_ts(client: &Client, newest: bool) -> Result<Option<OplogTs>, MongoError> {
    let dir = if newest { -1 } else { 1 };
    let d = oplog(client)
        .find_one(doc! {})
        .sort(doc! {"$natural": dir})
        .await?;
    Ok(d.and_then(|d| d.get_timestamp("ts").ok())
        .map(OplogTs::from_bson))
}

/// How a read of the oplog began.
pub enum Opened {
    /// Entries follow (the resume entry of `After` already consumed; its
    /// term, when it has one, is `resumed_term`).
    Tailing {
        cursor: Cursor<RawDocumentBuf>,
        resumed_term: Option<i64>,
    },
    /// `After(ts)`: the oplog no longer holds `ts`; its first entry after
    /// it is `first` (the cursor is positioned before `first`).
    RolledOver {
        first: OplogTs,
        cursor: Cursor<RawDocumentBuf>,
        first_doc: RawDocumentBuf,
    },
    /// `After(ts)`: the oplog no longer holds `ts` although it reaches back
    /// before it (its oldest entry is `oldest`): the entry was rolled back, not
    /// dropped by the cap. The archive holds writes the replica set undid.
    Diverged { last: OplogTs, oldest: OplogTs },
    /// The oplog holds nothing to start from.
    Empty,
}

/// Opens a tailable-await cursor at `from`.
pub async fn open(client: &Client, from: StartFrom) -> anyhow::Result<Opened> {
    let ts = match from {
        StartFrom::After(t) | StartFrom::From(t) => Some(t),
        StartFrom::Oldest => edge_ts(client, false).await?,
        StartFrom::Now => edge_ts(client, true).await?,
    };
    let Some(ts) = ts else {
        return Ok(Opened::Empty);
    };
    let mut cursor = oplog(client)
        .find(doc! {"ts": {"$gte": ts.to_bson()}})
        .cursor_type(CursorType::TailableAwait)
        .max_await_time(Duration::from_secs(1))
        .no_cursor_timeout(true)
        .await?;
    let mut resumed_term = None;
    if let StartFrom::After(last) = from {
        let first = match cursor.next().await {
            Some(d) => d?,
            None => return Ok(Opened::Empty),
        };
        let entry = OplogEntryRef::parse(&first)
            .map_err(|e| anyhow!("an oplog entry cannot be read: {e}"))?;
        let fts = entry.ts();
        resumed_term = entry.term();
        if fts != last {
            if let Some(oldest) = edge_ts(client, false).await? {
                if oldest < last {
                    return Ok(Opened::Diverged { last, oldest });
                }
            }
            return Ok(Opened::RolledOver {
                first: fts,
                cursor,
                first_doc: first,
            });
        }
    }
    Ok(Opened::Tailing {
        cursor,
        resumed_term,
    })
}

/// Reads a cursor in its own task and hands entries over a bounded channel
/// (when the archiver waits on storage, the channel fills, the task stops
/// reading and the server keeps the oplog: backpressure).
pub struct Reader {
    pub rx: tokio::sync::mpsc::Receiver<Result<RawDocumentBuf, MongoError>>,
    task: tokio::task::JoinHandle<()>,
}

impl Reader {
    pub fn spawn(mut cursor: Cursor<RawDocumentBuf>) -> Reader {
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let task = tokio::spawn(async move {
            while let Some(d) = cursor.next().await {
                let failed = d.is_err();
                if tx.send(d).await.is_err() || failed {
                    break;
                }
            }
        });
        Reader { rx, task }
    }

    /// Ends the read (the cursor is dropped).
    pub fn stop(&mut self) {
        self.task.abort();
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}
