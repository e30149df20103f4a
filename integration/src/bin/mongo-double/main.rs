//! `mongo-double`: a MongoDB wire-protocol test double for pitr's tests — a one-member
//! replica set `rs0` that keeps its databases in memory and writes, for every write, the
//! oplog entry a real 7.0 server writes. See `integration/MONGO-DOUBLE.md` for what it
//! implements and how it differs from a real `mongod`.
//!
//! Usage: `mongo-double --port P [--seed-oplog FILE.bson] [--oplog-cap-bytes N]
//! [--user U --password PW] [--noop-interval-secs S]`. `--port 0` takes a free port. Once
//! listening it prints `mongo-double listening on 127.0.0.1:<port>` on stdout.

mod commands;
mod cursor;
mod diff;
mod matcher;
mod oplog;
mod scram;
mod state;
mod store;
mod txn;
mod update;
mod wire;
mod write;

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use tokio::net::{TcpListener, TcpStream};

use commands::{Conn, Outcome, Reply};
use state::{Config, Shared, State};
use wire::RequestKind;

#[derive(Debug, Parser)]
#[command(
    name = "mongo-double",
    about = "MongoDB replica-set test double (one member, in memory)"
)]
struct Args {
    /// TCP port on 127.0.0.1 (0: any free port).
    #[arg(long)]
    port: u16,
    /// Start with this recorded oplog (BSON documents back to back); served unchanged.
    #[arg(long)]
    seed_oplog: Option<PathBuf>,
    /// Drop the oldest oplog entries once the oplog is larger than this.
    #[arg(long)]
    oplog_cap_bytes: Option<u64>,
    /// The one user (SCRAM-SHA-256); without it no authentication is required.
    #[arg(long, requires = "password")]
    user: Option<String>,
    #[arg(long, requires = "user")]
    password: Option<String>,
    /// Seconds without writes after which a `periodic noop` entry is written (0: never).
    #[arg(long, default_value_t = 10)]
    noop_interval_secs: u64,
}

fn main() {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mongo-double: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(args)) {
        eprintln!("mongo-double: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<()> {
    let mut oplog = oplog::Oplog::new(args.oplog_cap_bytes);
    let seeded = match &args.seed_oplog {
        Some(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("cannot read the seed oplog {}", path.display()))?;
            let n = oplog.seed(&bytes).with_context(|| {
                format!(
                    "{} is not an oplog (BSON documents back to back, each with a Timestamp `ts`)",
                    path.display()
                )
            })?;
            if n == 0 {
                bail!("the seed oplog {} holds no entries", path.display());
            }
            true
        }
        None => false,
    };
    let listener = TcpListener::bind(("127.0.0.1", args.port))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{}", args.port))?;
    let port = listener.local_addr()?.port();
    let config = Config {
        host: format!("127.0.0.1:{port}"),
        user: match (&args.user, &args.password) {
            (Some(u), Some(p)) => Some(scram::User::new(u, p)),
            _ => None,
        },
        noop_interval: Duration::from_secs(args.noop_interval_secs),
    };
    let mut st = State {
        store: store::Store::default(),
        oplog,
        cursors: cursor::Cursors::default(),
        sessions: Default::default(),
        term: 1,
        topology_counter: 0,
        majority_hold: None,
        deny_uuid_privileges: false,
        lsid_uid: {
            use sha2::Digest;
            let who = args
                .user
                .as_deref()
                .map(|u| format!("{u}@admin"))
                .unwrap_or_default();
            sha2::Sha256::digest(who.as_bytes()).to_vec()
        },
    };
    if seeded {
        // Later writes continue the recorded term.
        st.term = st
            .oplog
            .entries()
            .iter()
            .filter_map(|e| match e.raw.get("t") {
                Ok(Some(bson::RawBsonRef::Int64(t))) => Some(t),
                Ok(Some(bson::RawBsonRef::Int32(t))) => Some(i64::from(t)),
                _ => None,
            })
            .max()
            .unwrap_or(1)
            .max(1);
    } else {
        commands::admin::write_noop(&mut st, "initiating set");
    }
    let shared = Arc::new(Shared::new(config, st));
    tokio::spawn(periodic_noop(shared.clone()));
    println!("mongo-double listening on 127.0.0.1:{port}");
    let _ = std::io::stdout().flush();
    let mut next_conn = 0i64;
    loop {
        let (sock, _) = listener.accept().await.context("accepting a connection")?;
        next_conn += 1;
        let shared = shared.clone();
        let id = next_conn;
        tokio::spawn(async move {
            if let Err(e) = serve(shared, sock, id).await {
                eprintln!("mongo-double: connection {id}: {e:#}");
            }
        });
    }
}

async fn periodic_noop(shared: Arc<Shared>) {
    let interval = shared.config.noop_interval;
    if interval.is_zero() {
        return;
    }
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut st = shared.lock();
        if st.oplog.last_write.elapsed() >= interval {
            commands::admin::write_noop(&mut st, "periodic noop");
            shared.publish(&st);
        }
    }
}

fn max_time(body: &bson::Document, field: &str, default_ms: u64) -> Duration {
    let ms = body
        .get(field)
        .and_then(state::as_i64)
        .and_then(|n| u64::try_from(n).ok())
        .filter(|n| *n > 0)
        .unwrap_or(default_ms);
    Duration::from_millis(ms)
}

async fn serve(shared: Arc<Shared>, sock: TcpStream, id: i64) -> Result<()> {
    sock.set_nodelay(true)?;
    let (mut r, mut w) = sock.into_split();
    let mut conn = Conn {
        id,
        ..Conn::default()
    };
    let mut next_request_id = 1i32;
    while let Some(req) = wire::read_request(&mut r).await? {
        let name = req.body.keys().next().cloned().unwrap_or_default();
        if matches!(name.as_str(), "hello" | "isMaster" | "ismaster") {
            await_topology_change(&shared, &req.body).await;
        }
        conn.wait_until =
            (name == "getMore").then(|| Instant::now() + max_time(&req.body, "maxTimeMS", 1000));
        let reply = loop {
            let mut rx = shared.oplog_tx.subscribe();
            match commands::run(&shared, &mut conn, &req.body) {
                Outcome::Reply(Reply::Raw(raw)) => break raw,
                Outcome::Reply(Reply::Doc(d)) => break bson::RawDocumentBuf::from_document(&d)?,
                Outcome::WaitForOplog => {
                    let until = conn.wait_until.unwrap_or_else(Instant::now);
                    let _ = tokio::time::timeout_at(until.into(), rx.changed()).await;
                }
            }
        };
        next_request_id = next_request_id.wrapping_add(1);
        match req.kind {
            RequestKind::Msg { more_to_come: true } => {}
            RequestKind::Msg {
                more_to_come: false,
            } => {
                wire::write_msg(&mut w, next_request_id, req.request_id, false, &reply).await?;
            }
            RequestKind::Query => {
                wire::write_reply(&mut w, next_request_id, req.request_id, &reply).await?;
            }
        }
    }
    Ok(())
}

/// An awaitable `hello` (with `topologyVersion` and `maxAwaitTimeMS`) answers when the
/// topology changes or the time is up.
async fn await_topology_change(shared: &Shared, body: &bson::Document) {
    let (Ok(tv), Some(_)) = (
        body.get_document("topologyVersion"),
        body.get("maxAwaitTimeMS"),
    ) else {
        return;
    };
    let mut rx = shared.topology_tx.subscribe();
    let known = tv.get("counter").and_then(state::as_i64);
    let same_process = tv.get_object_id("processId").ok() == Some(shared.process_id);
    if !same_process || known != Some(*rx.borrow_and_update()) {
        return;
    }
    let wait = max_time(body, "maxAwaitTimeMS", 10_000);
    let _ = tokio::time::timeout(wait, rx.changed()).await;
}
