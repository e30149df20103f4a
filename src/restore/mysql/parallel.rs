//! Applies the replayed transactions over several connections at once.
//!
//! The decoding side ([`super::apply`]) hands transactions over in log
//! order. A dispatcher numbers them and decides what each must wait for:
//!
//! * a transaction that only changes rows (GTID, `BEGIN`, TABLE_MAP, rows
//!   events, `COMMIT`/XID) whose every row image yields its unique-key
//!   values (see [`super::keys`]) waits only for the earlier transactions
//!   that changed a row with one of the same key values (a *writeset*, as
//!   MySQL's own parallel replicas use). Two transactions that touch no
//!   common row commute, so their order on the target does not matter;
//! * any other transaction (DDL, statement-logged DML, a table without a
//!   usable unique key, with foreign keys or a non-transactional engine,
//!   a key in a float or non-ASCII text column...) runs alone: after every
//!   earlier one has committed, and before any later one starts. The last
//!   transaction of the restore also runs alone, so the target's binlog
//!   ends with the GTID the source ended with.
//!
//! Workers take transactions from one queue in log order, wait for their
//! dependencies, then execute them. The earliest unfinished transaction
//! never waits on anything, so the workers always make progress. A lock
//! conflict between two independent transactions (deadlock or lock wait
//! timeout, e.g. on gap locks) rolls the transaction back and runs it
//! again. With one connection every transaction is executed in log order
//! and nothing is decoded for keys.
//!
//! Each connection gets the current FORMAT_DESCRIPTION (`BINLOG '...'`)
//! before the first transaction that needs it; the decoding side leaves it
//! out of the statements.
//!
//! Two session settings keep the target's work down: statement annotations
//! of row events are off (the target would otherwise log every `BINLOG`
//! statement's base64 text beside the row events it applies, doubling its
//! binlog), and row-only transactions run with the client character set
//! `binary`, in which the server lexes the long base64 literals about twice
//! as fast as in utf8mb4.

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::anyhow;
use pitr_mysql::conn::{Conn, ConnParams};
use pitr_mysql::replay::{binlog_statement, Statement};
use pitr_mysql::Flavor;
use tokio::sync::{mpsc, Notify};

use super::apply::{ApplyReport, Body, Item, TxnJob};
use super::keys::KeyCache;

/// How many times a transaction that hit a lock conflict is run again.
const MAX_RETRIES: u32 = 20;
/// Writeset entries kept before the ones of finished transactions are dropped.
const WRITERS_LIMIT: usize = 1 << 20;

/// MySQL/MariaDB error codes of lock conflicts that roll back the
/// transaction or statement and can be retried.
const ER_LOCK_WAIT_TIMEOUT: u16 = 1205;
const ER_LOCK_DEADLOCK: u16 = 1213;

/// A transaction with its number and the numbers it waits for.
struct Task {
    id: u64,
    deps: Vec<u64>,
    job: TxnJob,
}

/// Which transactions have committed, and the first error.
#[derive(Default)]
struct Shared {
    state: Mutex<DoneState>,
    changed: Notify,
    applied: AtomicU64,
    statements: AtomicU64,
    retries: AtomicU64,
}

#[derive(Default)]
struct DoneState {
    /// Every transaction numbered below this has committed.
    below: u64,
    /// Committed transactions numbered `below` or more.
    above: BTreeSet<u64>,
    error: Option<anyhow::Error>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, DoneState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn complete(&self, id: u64) {
        {
            let mut s = self.lock();
            s.above.insert(id);
            loop {
                let next = s.below;
                if !s.above.remove(&next) {
                    break;
                }
                s.below += 1;
            }
        }
        self.changed.notify_waiters();
    }

    fn fail(&self, e: anyhow::Error) {
        {
            let mut s = self.lock();
            if s.error.is_none() {
                s.error = Some(e);
            }
        }
        self.changed.notify_waiters();
    }

    fn failed(&self) -> bool {
        self.lock().error.is_some()
    }

    fn below(&self) -> u64 {
        self.lock().below
    }

    /// Waits until `ready` holds; false when applying failed meanwhile.
    async fn wait(&self, ready: impl Fn(&DoneState) -> bool) -> bool {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let s = self.lock();
                if s.error.is_some() {
                    return false;
                }
                if ready(&s) {
                    return true;
                }
            }
            notified.await;
        }
    }

    async fn wait_for(&self, deps: &[u64]) -> bool {
        self.wait(|s| deps.iter().all(|d| *d < s.below || s.above.contains(d)))
            .await
    }

    /// Waits until every transaction numbered below `id` has committed.
    async fn wait_below(&self, id: u64) -> bool {
        self.wait(|s| s.below >= id).await
    }
}

/// The last transaction that changed each key hash.
#[derive(Default)]
struct Writers {
    last: HashMap<u64, u64, BuildHasherDefault<KeyHasher>>,
    /// Size above which finished writers are dropped.
    limit: usize,
}

/// The keys are hashes already: used as they are.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl Writers {
    /// Records `id` as the last writer of `keys`; returns the unfinished
    /// earlier writers it must wait for.
    fn record(&mut self, id: u64, keys: &[u64], below: u64) -> Vec<u64> {
        let mut deps = Vec::new();
        for k in keys {
            if let Some(prev) = self.last.insert(*k, id) {
                if prev != id && prev >= below {
                    deps.push(prev);
                }
            }
        }
        deps.sort_unstable();
        deps.dedup();
        if self.last.len() > self.limit.max(WRITERS_LIMIT) {
            self.last.retain(|_, w| *w >= below);
            // Unfinished writers stay: prune again only after as many more.
            self.limit = 2 * self.last.len();
        }
        deps
    }
}

/// How to apply.
pub(super) struct Settings {
    pub(super) connections: usize,
    pub(super) max_packet: usize,
    pub(super) flavor: Flavor,
    /// `SET SESSION sql_log_bin=0` on every connection.
    pub(super) no_binlog: bool,
    /// The connection the target was checked over; it reads the tables'
    /// keys when there are several connections.
    pub(super) checks: Conn,
}

/// Executes the transactions from `rx` on `connections` connections (see
/// the module docs); counts into `rep`.
pub(super) async fn run(
    mut rx: mpsc::Receiver<Item>,
    params: &ConnParams,
    settings: Settings,
    rep: &mut ApplyReport,
) -> anyhow::Result<()> {
    let Settings {
        connections,
        max_packet,
        flavor,
        no_binlog,
        checks,
    } = settings;
    let n = connections.max(1);
    let mut conns = Vec::with_capacity(n);
    // Refused on one connection, the setting is refused on all (same user).
    let mut annotations_refused = false;
    for _ in 0..n {
        let mut c = Conn::connect_multi_statements(params, Duration::from_secs(15)).await?;
        if no_binlog {
            super::load::skip_binlog(&mut c).await?;
        } else if !annotations_refused {
            if let Some(note) = no_statement_annotations(&mut c, flavor).await {
                eprintln!("{note}");
                annotations_refused = true;
            }
        }
        conns.push(c);
    }
    let keys = if n > 1 {
        Some(KeyCache::new(checks))
    } else {
        checks.shutdown().await;
        None
    };
    let shared = Arc::new(Shared::default());
    let (task_tx, task_rx) = mpsc::channel::<Task>(2 * n);
    let queue = Arc::new(tokio::sync::Mutex::new(task_rx));
    let mut workers = tokio::task::JoinSet::new();
    for conn in conns {
        let (shared, queue) = (shared.clone(), queue.clone());
        workers.spawn(worker(conn, queue, shared, max_packet, flavor, n > 1));
    }
    drop(queue);

    let mut d = Dispatcher {
        n,
        keys,
        writers: Writers::default(),
        next_id: 0,
        shared: shared.clone(),
        tasks: task_tx,
    };
    // One transaction is held back, so that the last one runs alone.
    let mut held: Option<TxnJob> = None;
    let mut decode_error = None;
    loop {
        let (job, last) = match rx.recv().await {
            Some(Item::Txn(j)) => (held.replace(j), false),
            Some(Item::Fail(e)) => {
                // The transactions before the decoding error are applied;
                // the error is reported after them.
                decode_error = Some(e);
                (held.take(), true)
            }
            None => (held.take(), true),
        };
        if let Some(job) = job {
            rep.last_applied_position = Some(job.end_pos.to_string());
            rep.last_applied_commit_time_us = Some(job.commit_time);
            if let Some(g) = job.gtid {
                rep.last_applied_gtid = Some(g.to_string());
            }
            if !d.dispatch(job, last, rep).await {
                break;
            }
        }
        if last {
            break;
        }
    }
    let Dispatcher { keys, tasks, .. } = d;
    drop(tasks);
    drop(rx);
    while let Some(r) = workers.join_next().await {
        if let Err(e) = r {
            shared.fail(anyhow!("an apply worker failed: {e}"));
        }
    }
    if let Some(k) = keys {
        k.shutdown().await;
    }
    rep.transactions_applied = shared.applied.load(Ordering::Relaxed);
    rep.statements = shared.statements.load(Ordering::Relaxed);
    rep.lock_retries = shared.retries.load(Ordering::Relaxed);
    rep.connections = n;
    let error = shared.lock().error.take();
    if let Some(e) = error {
        if n > 1 {
            return Err(e.context(format!(
                "the target holds part of the log ({} of the dispatched transactions committed, applied over {n} connections, not necessarily a prefix): restore again into an empty server",
                rep.transactions_applied
            )));
        }
        return Err(e);
    }
    if let Some(e) = decode_error {
        return Err(e);
    }
    Ok(())
}

/// Turns off the target's statement annotations of row events for this
/// session (MariaDB `binlog_annotate_row_events`, MySQL
/// `binlog_rows_query_log_events`). The statement a replayed row event comes
/// from is `BINLOG '<base64 of the event>'`: annotating with it would make
/// the target write every row change into its binlog twice, once as a
/// base64 text a third larger. A refusal (a server that restricts the
/// variable) is returned as a note; applying works either way.
async fn no_statement_annotations(conn: &mut Conn, flavor: Flavor) -> Option<String> {
    let (var, privilege) = match flavor {
        Flavor::MariaDb => ("binlog_annotate_row_events", "BINLOG ADMIN"),
        Flavor::MySql => ("binlog_rows_query_log_events", "SESSION_VARIABLES_ADMIN"),
    };
    match conn.query(&format!("SET SESSION {var}=0")).await {
        Ok(_) => None,
        Err(e) => Some(format!(
            "note: the target refused SET SESSION {var}=0 ({e}); the restore goes on, but the target's binlog will also hold each replayed row change as BINLOG statement text (grant the restoring user {privilege} to avoid this)"
        )),
    }
}

/// Numbers the transactions and sends them to the workers with what each
/// waits for.
struct Dispatcher {
    n: usize,
    keys: Option<KeyCache>,
    writers: Writers,
    next_id: u64,
    shared: Arc<Shared>,
    tasks: mpsc::Sender<Task>,
}

impl Dispatcher {
    /// Sends one transaction on; `alone`: it runs after all earlier ones and
    /// before any later one. False once applying has failed.
    async fn dispatch(&mut self, job: TxnJob, alone: bool, rep: &mut ApplyReport) -> bool {
        if self.shared.failed() {
            return false;
        }
        let id = self.next_id;
        self.next_id += 1;
        if self.n == 1 {
            return self
                .tasks
                .send(Task {
                    id,
                    deps: Vec::new(),
                    job,
                })
                .await
                .is_ok();
        }
        let keyset = match (&mut self.keys, &job.rows, alone) {
            (Some(k), Some(events), false) => k.writeset(events, &job.ctx).await,
            _ => None,
        };
        if let Some(ks) = keyset {
            let deps = self.writers.record(id, &ks, self.shared.below());
            return self.tasks.send(Task { id, deps, job }).await.is_ok();
        }
        rep.transactions_alone += 1;
        if !self.shared.wait_below(id).await {
            return false;
        }
        if self
            .tasks
            .send(Task {
                id,
                deps: Vec::new(),
                job,
            })
            .await
            .is_err()
        {
            return false;
        }
        if !self.shared.wait_below(id + 1).await {
            return false;
        }
        // It may have changed tables: their keys are read again.
        self.writers.last.clear();
        if let Some(k) = &mut self.keys {
            k.clear();
        }
        true
    }
}

/// One connection: takes transactions in log order, waits for their
/// dependencies, executes them.
async fn worker(
    mut conn: Conn,
    queue: Arc<tokio::sync::Mutex<mpsc::Receiver<Task>>>,
    shared: Arc<Shared>,
    max_packet: usize,
    flavor: Flavor,
    retry: bool,
) {
    let mut fde_sent: Option<Arc<Vec<u8>>> = None;
    let mut lex_binary = false;
    loop {
        let task = { queue.lock().await.recv().await };
        let Some(task) = task else { break };
        if !shared.wait_for(&task.deps).await {
            break;
        }
        let job = &task.job;
        // Row statements are long base64 texts, which the server lexes in
        // the client character set: about twice as fast in a single-byte
        // one (`binary`) as in utf8mb4. Other transactions bring their own
        // character set (their whole session context is replayed), and get
        // the connection's back first.
        let binary = job.rows.is_some();
        if binary != lex_binary {
            let set = if binary {
                "SET @@session.character_set_client=binary".to_string()
            } else {
                format!(
                    "SET @@session.character_set_client={}",
                    pitr_mysql::conn::CHARSET
                )
            };
            if let Err(e) = conn.query(&set).await {
                shared.fail(anyhow!("{e} ({set})"));
                break;
            }
            lex_binary = binary;
        }
        if let Some(fde) = &job.fde {
            if !fde_sent.as_ref().is_some_and(|s| Arc::ptr_eq(s, fde)) {
                if let Err(e) = conn.query(&binlog_statement(fde)).await {
                    shared.fail(anyhow!(
                        "{e} (sending the FORMAT_DESCRIPTION event of {})",
                        job.file
                    ));
                    break;
                }
                fde_sent = Some(fde.clone());
            }
        }
        match execute_retrying(
            &mut conn,
            job,
            max_packet,
            flavor,
            retry && job.rows.is_some(),
        )
        .await
        {
            Ok(retries) => {
                shared
                    .statements
                    .fetch_add(job.body.len() as u64, Ordering::Relaxed);
                shared.applied.fetch_add(1, Ordering::Relaxed);
                shared
                    .retries
                    .fetch_add(u64::from(retries), Ordering::Relaxed);
                shared.complete(task.id);
            }
            Err(e) => {
                shared.fail(e);
                break;
            }
        }
    }
    conn.shutdown().await;
}

/// Executes a transaction; on a lock conflict rolls it back and runs it
/// again (up to [`MAX_RETRIES`] times). Returns the number of retries.
async fn execute_retrying(
    conn: &mut Conn,
    job: &TxnJob,
    max_packet: usize,
    flavor: Flavor,
    retry: bool,
) -> anyhow::Result<u32> {
    let mut attempt = 0u32;
    loop {
        match execute(conn, job, max_packet).await {
            Ok(()) => return Ok(attempt),
            Err((Some(ER_LOCK_DEADLOCK | ER_LOCK_WAIT_TIMEOUT), _))
                if retry && attempt < MAX_RETRIES =>
            {
                let _ = conn.query("ROLLBACK").await;
                if flavor == Flavor::MySql {
                    let _ = conn.query("SET @@SESSION.GTID_NEXT='AUTOMATIC'").await;
                }
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(5 * u64::from(attempt))).await;
            }
            Err((_, e)) => return Err(e),
        }
    }
}

/// Executes one transaction's statements; errors name the event the
/// failing statement comes from and carry the server's error code.
async fn execute(
    conn: &mut Conn,
    job: &TxnJob,
    max_packet: usize,
) -> Result<(), (Option<u16>, anyhow::Error)> {
    let file = &job.file;
    match &job.body {
        Body::Batch { stmts, .. } if stmts.is_empty() => Ok(()),
        Body::Batch { sql, stmts } => match conn.query_multi(sql, stmts.len()).await {
            Ok(n) if n == stmts.len() => Ok(()),
            Ok(n) => Err((
                None,
                anyhow!(
                    "the target answered {n} results to the {} statements of the transaction at {file}:{}",
                    stmts.len(),
                    stmts.first().map_or(0, |(o, _)| *o)
                ),
            )),
            Err((i, e)) => {
                let code = e.code();
                let Some((eoff, short)) = stmts.get(i).or(stmts.last()) else {
                    return Err((code, e.into()));
                };
                Err((
                    code,
                    anyhow!("{e} (statement: {short})")
                        .context(format!("applying the transaction at {file}:{eoff}")),
                ))
            }
        },
        Body::Each(stmts) => {
            for (eoff, s) in stmts {
                run_one(conn, s, max_packet).await.map_err(|(c, e)| {
                    (c, e.context(format!("applying the transaction at {file}:{eoff}")))
                })?;
            }
            Ok(())
        }
    }
}

async fn run_one(
    conn: &mut Conn,
    s: &Statement,
    max_packet: usize,
) -> Result<(), (Option<u16>, anyhow::Error)> {
    // A row statement is one BINLOG statement (see `pitr_mysql::replay`).
    if s.as_bytes().len() + 1 > max_packet {
        return Err((None, anyhow!(
            "a statement of {} bytes exceeds the target's max_allowed_packet ({max_packet}); raise it on the target (SET GLOBAL max_allowed_packet={}) and restore again",
            s.as_bytes().len(),
            (s.as_bytes().len() + (1 << 20)).next_power_of_two()
        )));
    }
    match s {
        Statement::Text(t) => {
            conn.query(t).await.map_err(|e| {
                let short: String = t.chars().take(200).collect();
                (e.code(), anyhow!("{e} (statement: {short})"))
            })?;
            Ok(())
        }
        Statement::Bytes(_) => Err((None, anyhow!(
            "a logged statement is not valid UTF-8 text; statements in other character sets cannot be replayed yet"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writers_depend_on_the_last_unfinished_writer() {
        let mut w = Writers::default();
        assert!(w.record(0, &[1, 2], 0).is_empty());
        assert!(w.record(1, &[3], 0).is_empty());
        assert_eq!(w.record(2, &[2, 3, 9], 0), [0, 1]);
        // Transaction 4 waits for 2 (the last writer of key 2), not for 0.
        assert_eq!(w.record(4, &[2, 1], 0), [0, 2]);
        // Finished writers are not waited for.
        assert!(w.record(5, &[2, 1, 3], 5).is_empty());
        // The same key twice in one transaction: no self-dependency.
        assert!(w.record(6, &[7, 7], 5).is_empty());
    }

    #[tokio::test]
    async fn completion_tracks_the_committed_prefix() {
        let s = Arc::new(Shared::default());
        s.complete(1);
        assert_eq!(s.below(), 0);
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move { s.wait_for(&[0, 1]).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        s.complete(0);
        assert!(waiter.await.unwrap());
        assert_eq!(s.below(), 2);
        assert!(s.wait_below(2).await);
        // A failure releases every waiter with `false`.
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move { s.wait_below(10).await })
        };
        tokio::task::yield_now().await;
        s.fail(anyhow!("boom"));
        assert!(!waiter.await.unwrap());
    }
}
