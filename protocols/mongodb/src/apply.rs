//! Restore planner: oplog entries → `applyOps` requests.
//!
//! A restore replays the archived entries onto a target that holds a base
//! backup, up to a target `ts` INCLUSIVE. [`ApplyPlanner`] is fed the
//! entries in oplog order and emits, in the order they must run, the
//! command documents to send ([`ApplyRequest`]), many entries per round
//! trip where that is safe:
//!
//! * **Which entries**: every entry with `ts <= target`, none after it. A
//!   transaction counts at its commit: it is applied whole when its commit
//!   entry (last `applyOps`, or `commitTransaction` of a prepared one) is at
//!   or before the target, and not at all otherwise (an abort, or a commit
//!   after the target, drops it). Each batch of linked batches
//!   (`multiOpType: 1`) is a complete insert of its own, included by its own
//!   `ts`.
//! * **CRUD** (`i`, `u`, `d`) entries batch together into one
//!   `{applyOps: [...]}`, bounded by [`ApplyLimits`] (operations and request
//!   bytes). The default byte bound leaves room for the strictest server:
//!   6.0 applies a CRUD-only `applyOps` atomically and logs it as ONE oplog
//!   entry in which every operation gains a `ui`, and that entry must fit the
//!   16 MiB document limit (TransactionTooLarge otherwise; mongo
//!   `src/mongo/db/repl/apply_ops.cpp`, 6.0), so requests stay
//!   [`ENTRY_HEADROOM`] below it.
//! * **Transactions** (and user `applyOps`, linked batches): DDL among
//!   their inner operations (`create`, `createIndexes`) runs first, each
//!   alone (see `ApplyPlanner::apply_group`); the other inner operations
//!   are flattened in order into ONE request (the server applies
//!   an `applyOps` of CRUD operations atomically); one whose operations are
//!   all CRUD joins the current CRUD batch when it fits whole, otherwise it
//!   is sent alone. Only a transaction larger than the bounds by itself is
//!   split over consecutive requests (counted in [`ApplyStats::split_txns`];
//!   the restore target has no other clients, and a failure fails the restore).
//! * **Commands** (`op: c` other than the above) run ALONE, in log order:
//!   `{applyOps: [entry]}`, except index builds: `startIndexBuild` and
//!   `abortIndexBuild` are skipped, `commitIndexBuild` and the old
//!   `createIndexes` oplog form become a `createIndexes` command on the
//!   entry's database (servers 4.4+ refuse to apply them through `applyOps`).
//! * **No-ops** (`n`) and newer servers' internal ops (`ci`, `cu`, `cd`,
//!   `km`, `xi`, `xd`), also inside transactions, are skipped; any other
//!   unknown `op` is an error.
//!
//! Namespaces skipped (counted in [`ApplyStats::skipped_ns`]): `local.*`
//! (never replicated), `config.*` (sessions — `config.system.sessions` —,
//! `config.transactions`, `config.image_collection`: bookkeeping the target
//! keeps for itself), `admin.system.version` (feature compatibility version)
//! and `admin.system.keys` (the target's signing keys). `admin.system.users`
//! and `admin.system.roles` are applied, so users and roles are as of the
//! target. A command's namespace is `db.<first value of o>`.
//!
//! Each operation sent is a new document holding only the fields
//! `applyOps` needs, copied value for value from the entry: `op`, `ns`,
//! `o`, `o2`, `b` (old upsert flag) and, with
//! [`ApplyOptions::preserve_uuid`], `ui` (except for the namespaces whose
//! UUID the target chooses itself: time-series buckets, `system.views`, the
//! target's own users and roles; see `target_owns_uuid`). Dropped: `ts`, `t`, `h`, `v`,
//! `wall` (the target writes its own oplog entries), `lsid`, `txnNumber`,
//! `stmtId`, `prevOpTime`, `multiOpType`, `partialTxn`, `fromMigrate`
//! (session and migration history of the source, which `applyOps` either
//! rejects or would turn into bogus retryable-write records), and `ui` by
//! default (a base backup loaded by `mongorestore` gives collections new
//! UUIDs; `applyOps` resolves `ns` then).
//! Without `ui`, a `renameCollection` that names the
//! target to drop by UUID (`dropTarget: <UUID>`, as `$out` logs it) is sent
//! with `dropTarget: true` (see `drop_target_by_name`).

use std::collections::{HashMap, VecDeque};

use bson::raw::{RawBsonRef, RawDocument, RawDocumentBuf};

use crate::entry::{CommandKind, OpKind, OplogEntryRef};
use crate::error::DecodeError;
use crate::OplogTs;

/// Bounds of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyLimits {
    /// Operations per `applyOps`.
    pub max_ops: usize,
    /// Bytes of the request document.
    pub max_bytes: usize,
}

/// The largest BSON document a server stores (an oplog entry included).
pub const MAX_DOCUMENT: usize = 16 * 1024 * 1024;
/// Bytes a `ui` adds to one operation (`"ui"`: type, name, length, subtype,
/// 16 bytes).
pub const UI_BYTES: usize = 1 + 3 + 4 + 1 + 16;
/// How far below [`MAX_DOCUMENT`] a default request stays: a `ui` per
/// operation (at most 5,000) plus the oplog entry's own fields.
pub const ENTRY_HEADROOM: usize = 128 * 1024;

impl Default for ApplyLimits {
    fn default() -> Self {
        ApplyLimits {
            max_ops: 5000,
            max_bytes: MAX_DOCUMENT - ENTRY_HEADROOM,
        }
    }
}

/// Planner settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyOptions {
    /// The last `ts` to apply (inclusive).
    pub target: OplogTs,
    pub limits: ApplyLimits,
    /// Keep `ui` (collection UUIDs): only when the base backup kept them.
    pub preserve_uuid: bool,
    /// Add `bypassDocumentValidation: true` to `applyOps` (the entries
    /// passed validation when they were first written).
    pub bypass_document_validation: bool,
}

impl ApplyOptions {
    pub fn new(target: OplogTs) -> ApplyOptions {
        ApplyOptions {
            target,
            limits: ApplyLimits::default(),
            preserve_uuid: false,
            bypass_document_validation: true,
        }
    }
}

/// What a request holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchKind {
    /// CRUD operations (and whole all-CRUD transactions).
    Crud,
    /// One transaction (or one part of a transaction too large for one request).
    Transaction,
    /// One command entry, alone.
    Command,
}

/// One command to send, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct ApplyRequest {
    pub kind: BatchKind,
    /// The database to run it on (`admin` for `applyOps`).
    pub db: String,
    pub command: RawDocumentBuf,
    /// Oplog entries it covers (a transaction's entries all count).
    pub entries: usize,
    /// Operations inside it.
    pub ops: usize,
    /// `ts` of the last entry it covers.
    pub last_ts: OplogTs,
}

/// Counters of a plan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Entries fed with `ts <= target`.
    pub entries: u64,
    /// Entries covered by the requests emitted.
    pub applied_entries: u64,
    pub requests: u64,
    pub ops: u64,
    pub max_ops_per_request: u64,
    pub request_bytes: u64,
    pub skipped_noops: u64,
    pub skipped_ns: u64,
    pub skipped_index_builds: u64,
    pub skipped_internal: u64,
    pub txns_applied: u64,
    /// Transactions aborted, or committed after the target.
    pub txns_dropped: u64,
    /// Transactions too large for one request.
    pub split_txns: u64,
}

impl ApplyStats {
    /// Entries per round trip.
    pub fn entries_per_request(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.applied_entries as f64 / self.requests as f64
        }
    }
}

/// The planner's answer to one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Taken into the plan (possibly skipped by the rules).
    Taken,
    /// After the target: not applied; stop feeding and call `finish`.
    PastTarget,
}

type TxnId = (Vec<u8>, i64);

#[derive(Debug, Default)]
struct OpenTxn {
    ops: Vec<Vec<u8>>,
    entries: usize,
}

/// A batch being filled.
#[derive(Debug, Default)]
struct Batch {
    ops: Vec<Vec<u8>>,
    /// Bytes of the `applyOps` array elements so far.
    body: usize,
    entries: usize,
    last_ts: Option<OplogTs>,
}

/// Bytes of an array element: type, decimal index, NUL, document.
fn element_len(index: usize, doc_len: usize) -> usize {
    1 + index.to_string().len() + 1 + doc_len
}

/// `{applyOps: [...], bypassDocumentValidation: true}` around `body` bytes.
fn request_len(body: usize, bypass: bool) -> usize {
    4 + (1 + 9) + 4 + body + 1 + if bypass { 1 + 25 + 1 } else { 0 } + 1
}

/// Feeds on entries in order and emits requests; see the module docs.
#[derive(Debug)]
pub struct ApplyPlanner {
    opts: ApplyOptions,
    batch: Batch,
    open: HashMap<TxnId, OpenTxn>,
    out: VecDeque<ApplyRequest>,
    stats: ApplyStats,
    past_target: bool,
}

impl ApplyPlanner {
    pub fn new(opts: ApplyOptions) -> ApplyPlanner {
        ApplyPlanner {
            opts,
            batch: Batch::default(),
            open: HashMap::new(),
            out: VecDeque::new(),
            stats: ApplyStats::default(),
            past_target: false,
        }
    }

    pub fn stats(&self) -> &ApplyStats {
        &self.stats
    }

    /// The next request ready to send.
    pub fn pop(&mut self) -> Option<ApplyRequest> {
        self.out.pop_front()
    }

    /// Ends the plan: flushes the last batch; transactions still open (their
    /// commit is after the target, or was never archived) are dropped.
    pub fn finish(&mut self) {
        self.flush();
        self.stats.txns_dropped += self.open.len() as u64;
        self.open.clear();
    }

    /// Feeds the next entry.
    pub fn push(&mut self, e: &OplogEntryRef<'_>) -> Result<Pushed, DecodeError> {
        let ts = e.ts();
        if self.past_target || ts > self.opts.target {
            self.past_target = true;
            return Ok(Pushed::PastTarget);
        }
        self.stats.entries += 1;
        let m = *e.meta();
        match m.op {
            OpKind::Noop => self.stats.skipped_noops += 1,
            OpKind::Other => match e.op_str() {
                op if is_internal_op(op) => self.stats.skipped_internal += 1,
                other => {
                    return Err(DecodeError::new(format!(
                        "op {other:?} is unknown to this version of pitr and cannot be restored"
                    ))
                    .at_ts(ts))
                }
            },
            OpKind::Insert | OpKind::Update | OpKind::Delete => {
                if skip_ns(e.ns().unwrap_or("")) {
                    self.stats.skipped_ns += 1;
                } else {
                    let op = self.filtered(e.doc()).map_err(|r| r.at_ts(ts))?;
                    self.add_group(vec![op], 1, ts, true);
                }
            }
            OpKind::Command if m.is_txn() => self.txn_entry(e)?,
            OpKind::Command if m.command == Some(CommandKind::ApplyOps) => {
                // Linked batches and user applyOps: an atomic group.
                let (ops, _) = self.inner_ops(e)?;
                self.stats.txns_applied += 1;
                self.apply_group(ops, 1, ts)?;
            }
            OpKind::Command => self.command(e)?,
        }
        Ok(Pushed::Taken)
    }

    fn txn_entry(&mut self, e: &OplogEntryRef<'_>) -> Result<(), DecodeError> {
        let m = *e.meta();
        let id: TxnId = (
            e.lsid().map(|l| l.as_bytes().to_vec()).unwrap_or_default(),
            m.txn_number.unwrap_or_default(),
        );
        match m.command {
            Some(CommandKind::ApplyOps) => {
                let (ops, _) = self.inner_ops(e)?;
                if m.partial_txn || m.prepare {
                    let t = self.open.entry(id).or_default();
                    t.ops.extend(ops);
                    t.entries += 1;
                } else {
                    let mut t = self.open.remove(&id).unwrap_or_default();
                    t.ops.extend(ops);
                    self.commit(t, e.ts())?;
                }
            }
            Some(CommandKind::CommitTransaction) => {
                // Without its prepare entry (before the archive's start) the
                // operations are unknown; nothing to apply.
                if let Some(t) = self.open.remove(&id) {
                    self.commit(t, e.ts())?;
                } else {
                    self.stats.txns_dropped += 1;
                }
            }
            _ => {
                self.open.remove(&id);
                self.stats.txns_dropped += 1;
            }
        }
        Ok(())
    }

    fn commit(&mut self, t: OpenTxn, ts: OplogTs) -> Result<(), DecodeError> {
        self.stats.txns_applied += 1;
        self.apply_group(t.ops, t.entries + 1, ts)
    }

    /// Applies the inner operations of a committed transaction, a user
    /// `applyOps` or a linked batch. DDL among them (since 4.4 a
    /// transaction that creates a collection logs `create`, and
    /// `createIndexes`, inside its `applyOps`) runs first, each alone, the
    /// only way a server takes it: `create` (and `renameCollection`) in an
    /// `applyOps` of more than one operation needs the `__system` role
    /// (mongo: `src/mongo/db/commands/apply_ops_cmd.cpp`,
    /// `validateApplyOpsCommand`), and `createIndexes` is not applied
    /// through `applyOps` at all (`src/mongo/db/repl/oplog.cpp`,
    /// CommandNotSupported), so it runs as the `createIndexes` command. The
    /// rest follows as one atomic group. Moving the DDL first is safe: the
    /// transaction's writes to a collection it creates come after the create
    /// anyway, and an index it builds was satisfied by its own writes.
    fn apply_group(
        &mut self,
        ops: Vec<Vec<u8>>,
        entries: usize,
        ts: OplogTs,
    ) -> Result<(), DecodeError> {
        let (ddl, rest): (Vec<Vec<u8>>, Vec<Vec<u8>>) =
            ops.into_iter().partition(|op| ddl_name(op).is_some());
        let crud = rest.iter().all(|op| is_crud_op(op));
        let n = ddl.len();
        for (i, op) in ddl.into_iter().enumerate() {
            // the group's entries count with its last request
            let owns = rest.is_empty() && i + 1 == n;
            self.ddl_alone(op, if owns { entries } else { 0 }, ts)?;
        }
        self.add_group(rest, entries, ts, crud);
        Ok(())
    }

    /// One DDL operation of a group, alone (see [`Self::apply_group`]).
    fn ddl_alone(&mut self, op: Vec<u8>, entries: usize, ts: OplogTs) -> Result<(), DecodeError> {
        self.flush();
        let doc = RawDocument::from_bytes(&op)
            .map_err(|e| DecodeError::new(format!("malformed BSON: {e}")).at_ts(ts))?;
        let (db, command) = match ddl_name(&op) {
            Some("createIndexes") => {
                let o = doc
                    .get_document("o")
                    .map_err(|_| bad("createIndexes", ts))?;
                let ns = doc.get_str("ns").unwrap_or("");
                let db = ns.split('.').next().unwrap_or("").to_string();
                (db, create_indexes_command(o, ts)?)
            }
            _ => (
                "admin".to_string(),
                build_apply_ops(&[op], self.opts.bypass_document_validation),
            ),
        };
        self.emit(ApplyRequest {
            kind: BatchKind::Command,
            db,
            command,
            entries,
            ops: 1,
            last_ts: ts,
        });
        Ok(())
    }

    /// The filtered inner operations of an `applyOps` entry, skipped
    /// namespaces left out; `true` when all are CRUD.
    fn inner_ops(&mut self, e: &OplogEntryRef<'_>) -> Result<(Vec<Vec<u8>>, bool), DecodeError> {
        let mut out = Vec::new();
        let mut crud = true;
        for op in e.apply_ops()? {
            let ns = op.get_str("ns").unwrap_or("");
            let kind = op.get_str("op").unwrap_or("");
            if is_internal_op(kind) {
                self.stats.skipped_internal += 1;
                continue;
            }
            let target_ns = if kind == "c" {
                command_ns(ns, op)
            } else {
                ns.to_string()
            };
            if skip_ns(&target_ns) {
                self.stats.skipped_ns += 1;
                continue;
            }
            crud &= matches!(kind, "i" | "u" | "d");
            out.push(self.filtered(op).map_err(|r| r.at_ts(e.ts()))?);
        }
        Ok((out, crud))
    }

    /// Adds a group of operations that must not be split (unless it alone
    /// exceeds the bounds). `crud`: may share a request with others.
    fn add_group(&mut self, ops: Vec<Vec<u8>>, entries: usize, ts: OplogTs, crud: bool) {
        if ops.is_empty() {
            // Every operation in it was skipped.
            return;
        }
        let lim = self.opts.limits;
        let bypass = self.opts.bypass_document_validation;
        let fits = |b: &Batch| {
            let mut body = b.body;
            for (i, op) in ops.iter().enumerate() {
                body += element_len(b.ops.len() + i, op.len());
            }
            b.ops.len() + ops.len() <= lim.max_ops && request_len(body, bypass) <= lim.max_bytes
        };
        if crud && fits(&self.batch) {
            self.append(ops, entries, ts);
            return;
        }
        self.flush();
        if fits(&self.batch) {
            self.append(ops, entries, ts);
            self.flush_as(if crud {
                BatchKind::Crud
            } else {
                BatchKind::Transaction
            });
            return;
        }
        // Larger than one request by itself: consecutive requests.
        if entries > 1 || ops.len() > 1 {
            self.stats.split_txns += 1;
        }
        let n = ops.len();
        for (i, op) in ops.into_iter().enumerate() {
            if !self.batch.ops.is_empty() && !fits_one(&self.batch, &op, lim, bypass) {
                self.flush_as(BatchKind::Transaction);
            }
            let last = i + 1 == n;
            self.append(vec![op], if last { entries } else { 0 }, ts);
        }
        self.flush_as(BatchKind::Transaction);
    }

    fn append(&mut self, ops: Vec<Vec<u8>>, entries: usize, ts: OplogTs) {
        for op in ops {
            self.batch.body += element_len(self.batch.ops.len(), op.len());
            self.batch.ops.push(op);
        }
        self.batch.entries += entries;
        self.batch.last_ts = Some(ts);
    }

    fn flush(&mut self) {
        self.flush_as(BatchKind::Crud);
    }

    fn flush_as(&mut self, kind: BatchKind) {
        if self.batch.ops.is_empty() {
            return;
        }
        let b = std::mem::take(&mut self.batch);
        let command = build_apply_ops(&b.ops, self.opts.bypass_document_validation);
        let last_ts = b.last_ts.unwrap_or(self.opts.target);
        self.emit(ApplyRequest {
            kind,
            db: "admin".into(),
            command,
            entries: b.entries,
            ops: b.ops.len(),
            last_ts,
        });
    }

    fn emit(&mut self, r: ApplyRequest) {
        let s = &mut self.stats;
        s.requests += 1;
        s.ops += r.ops as u64;
        s.max_ops_per_request = s.max_ops_per_request.max(r.ops as u64);
        s.applied_entries += r.entries as u64;
        s.request_bytes += r.command.as_bytes().len() as u64;
        self.out.push_back(r);
    }

    fn command(&mut self, e: &OplogEntryRef<'_>) -> Result<(), DecodeError> {
        let ts = e.ts();
        let ns = e.ns().unwrap_or("");
        let o = e
            .o()
            .ok_or_else(|| DecodeError::new("command without \"o\"").at_ts(ts))?;
        if skip_ns(&command_ns(ns, e.doc())) {
            self.stats.skipped_ns += 1;
            return Ok(());
        }
        let db = ns.split('.').next().unwrap_or("").to_string();
        let name = e.command_name().unwrap_or("");
        let command = match name {
            "startIndexBuild" | "abortIndexBuild" => {
                self.stats.skipped_index_builds += 1;
                return Ok(());
            }
            "commitIndexBuild" => {
                let coll = o.get_str(name).map_err(|_| bad(name, ts))?;
                let indexes = o.get_array("indexes").map_err(|_| bad(name, ts))?;
                let mut c = RawDocumentBuf::new();
                c.append("createIndexes", coll);
                c.append_ref("indexes", RawBsonRef::Array(indexes));
                c
            }
            "createIndexes" => create_indexes_command(o, ts)?,
            _ => {
                let op = self.filtered(e.doc()).map_err(|r| r.at_ts(ts))?;
                self.flush();
                let command = build_apply_ops(&[op], self.opts.bypass_document_validation);
                self.emit(ApplyRequest {
                    kind: BatchKind::Command,
                    db: "admin".into(),
                    command,
                    entries: 1,
                    ops: 1,
                    last_ts: ts,
                });
                return Ok(());
            }
        };
        self.flush();
        self.emit(ApplyRequest {
            kind: BatchKind::Command,
            db,
            command,
            entries: 1,
            ops: 1,
            last_ts: ts,
        });
        Ok(())
    }

    /// A copy of `src` with only the fields `applyOps` needs.
    fn filtered(&self, src: &RawDocument) -> Result<Vec<u8>, DecodeError> {
        let mut d = RawDocumentBuf::new();
        for el in src.iter() {
            let (k, v) = el.map_err(|e| DecodeError::new(format!("malformed BSON: {e}")))?;
            let keep = match k {
                "op" | "ns" | "o" | "o2" | "b" => true,
                "ui" => {
                    self.opts.preserve_uuid
                        && !target_owns_uuid(src.get_str("ns").unwrap_or_default())
                }
                _ => false,
            };
            if !keep {
                continue;
            }
            match (k, v) {
                ("o", RawBsonRef::Document(o))
                    if !self.opts.preserve_uuid && src.get_str("op").ok() == Some("c") =>
                {
                    match drop_target_by_name(o)? {
                        Some(o) => d.append("o", o),
                        None => d.append_ref(k, v),
                    }
                }
                _ => d.append_ref(k, v),
            }
        }
        Ok(d.into_bytes())
    }
}

/// The `createIndexes` command for the oplog form `{createIndexes: coll,
/// <index spec fields>}` of one index.
fn create_indexes_command(o: &RawDocument, ts: OplogTs) -> Result<RawDocumentBuf, DecodeError> {
    let name = "createIndexes";
    let coll = o.get_str(name).map_err(|_| bad(name, ts))?;
    let mut spec = RawDocumentBuf::new();
    for el in o.iter() {
        let (k, v) = el.map_err(|_| bad(name, ts))?;
        if k != name {
            spec.append_ref(k, v);
        }
    }
    let mut arr = bson::RawArrayBuf::new();
    arr.push(spec);
    let mut c = RawDocumentBuf::new();
    c.append(name, coll);
    c.append("indexes", arr);
    Ok(c)
}

/// A `renameCollection` whose `dropTarget` names the target's UUID, with
/// `dropTarget: true` instead: without kept UUIDs the target's collection
/// has another UUID, and a server then moves it aside to a `tmpXXXXX.rename`
/// collection instead of dropping it (mongo:
/// `src/mongo/db/catalog/rename_collection.cpp`, `renameTargetCollectionToTmp`);
/// a user without the `useUUID` action is refused the operation at all
/// (`apply_ops_cmd.cpp`, `operationContainsUUID`). `None` when `o` is no such
/// rename.
fn drop_target_by_name(o: &RawDocument) -> Result<Option<RawDocumentBuf>, DecodeError> {
    let malformed = |e| DecodeError::new(format!("malformed BSON: {e}"));
    let is_rename = o
        .iter()
        .next()
        .transpose()
        .map_err(malformed)?
        .is_some_and(|(k, _)| k == "renameCollection");
    let by_uuid = matches!(
        o.get("dropTarget").map_err(malformed)?,
        Some(RawBsonRef::Binary(_))
    );
    if !is_rename || !by_uuid {
        return Ok(None);
    }
    let mut out = RawDocumentBuf::new();
    for el in o.iter() {
        let (k, v) = el.map_err(malformed)?;
        if k == "dropTarget" {
            out.append(k, true);
        } else {
            out.append_ref(k, v);
        }
    }
    Ok(Some(out))
}

/// Namespaces whose collection UUID the target chooses itself even when the
/// restore keeps UUIDs: time-series buckets (created by the time-series
/// `create`), `system.views` (created with the first view) and the target's
/// own `admin.system.users` / `admin.system.roles`. Their operations are
/// resolved by `ns`: a `ui` the target does not have fails the operation
/// (NamespaceNotFound; mongo: `src/mongo/db/repl/oplog.cpp`, the operation's
/// namespace is looked up by its UUID when it has one).
fn target_owns_uuid(ns: &str) -> bool {
    let coll = ns.split_once('.').map_or("", |(_, c)| c);
    coll.starts_with("system.buckets.")
        || coll == "system.views"
        || ns == "admin.system.users"
        || ns == "admin.system.roles"
}

/// Operations a restore never replays: newer servers' internal ones (`ci`,
/// `cu`, `cd` container operations, `km` key management, `xi`/`xd` global
/// index keys, logged inside transactions by sharding: mongo
/// `src/mongo/db/repl/oplog_entry.cpp`, `OpTypeEnum`) and, inside a group,
/// no-ops.
fn is_internal_op(op: &str) -> bool {
    matches!(op, "ci" | "cu" | "cd" | "km" | "xi" | "xd" | "n")
}

/// `create` or `createIndexes` for an inner DDL operation of a group.
fn ddl_name(op: &[u8]) -> Option<&'static str> {
    let d = RawDocument::from_bytes(op).ok()?;
    if d.get_str("op").ok()? != "c" {
        return None;
    }
    let o = d.get_document("o").ok()?;
    match o.iter().next()?.ok()?.0 {
        "create" => Some("create"),
        "createIndexes" => Some("createIndexes"),
        _ => None,
    }
}

fn bad(name: &str, ts: OplogTs) -> DecodeError {
    DecodeError::new(format!("malformed {name} command")).at_ts(ts)
}

fn fits_one(b: &Batch, op: &[u8], lim: ApplyLimits, bypass: bool) -> bool {
    b.ops.len() < lim.max_ops
        && request_len(b.body + element_len(b.ops.len(), op.len()), bypass) <= lim.max_bytes
}

fn is_crud_op(op: &[u8]) -> bool {
    RawDocument::from_bytes(op)
        .ok()
        .and_then(|d| d.get_str("op").ok())
        .is_some_and(|k| matches!(k, "i" | "u" | "d"))
}

/// The namespace a command acts on: `db.<first value of o>` when that is a
/// string, else the entry's `ns`.
fn command_ns(ns: &str, entry: &RawDocument) -> String {
    let db = ns.split('.').next().unwrap_or("");
    let first = entry
        .get_document("o")
        .ok()
        .and_then(|o| o.iter().next())
        .and_then(|el| el.ok());
    match first {
        Some((_, RawBsonRef::String(coll))) => format!("{db}.{coll}"),
        _ => ns.to_string(),
    }
}

/// Namespaces a restore never writes; see the module docs.
pub fn skip_ns(ns: &str) -> bool {
    ns.starts_with("local.")
        || ns.starts_with("config.")
        || ns == "admin.system.version"
        || ns == "admin.system.keys"
}

/// `{applyOps: [ops...], bypassDocumentValidation: true}`, built from the
/// operations' bytes.
fn build_apply_ops(ops: &[Vec<u8>], bypass: bool) -> RawDocumentBuf {
    let mut out = Vec::with_capacity(64 + ops.iter().map(|o| o.len() + 8).sum::<usize>());
    out.extend_from_slice(&[0; 4]);
    out.push(0x04);
    out.extend_from_slice(b"applyOps\0");
    let arr = out.len();
    out.extend_from_slice(&[0; 4]);
    for (i, op) in ops.iter().enumerate() {
        out.push(0x03);
        out.extend_from_slice(i.to_string().as_bytes());
        out.push(0);
        out.extend_from_slice(op);
    }
    out.push(0);
    let arr_len = (out.len() - arr) as i32;
    out[arr..arr + 4].copy_from_slice(&arr_len.to_le_bytes());
    if bypass {
        out.push(0x08);
        out.extend_from_slice(b"bypassDocumentValidation\0");
        out.push(1);
    }
    out.push(0);
    let len = out.len() as i32;
    out[..4].copy_from_slice(&len.to_le_bytes());
    // The framing above is valid by construction.
    RawDocumentBuf::from_bytes(out).unwrap_or_default()
}

/// Plans a whole stream: requests in order, and the counters.
pub fn plan<'a>(
    entries: impl IntoIterator<Item = OplogEntryRef<'a>>,
    opts: ApplyOptions,
) -> Result<(Vec<ApplyRequest>, ApplyStats), DecodeError> {
    let mut p = ApplyPlanner::new(opts);
    let mut out = Vec::new();
    for e in entries {
        if p.push(&e)? == Pushed::PastTarget {
            break;
        }
        out.extend(std::iter::from_fn(|| p.pop()));
    }
    p.finish();
    out.extend(std::iter::from_fn(|| p.pop()));
    Ok((out, p.stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn request_sizes_are_exact() {
        let ops: Vec<Vec<u8>> = (0..12)
            .map(|i| {
                RawDocumentBuf::from_document(&doc! {"op": "i", "ns": "a.b", "o": {"_id": i}})
                    .unwrap()
                    .into_bytes()
            })
            .collect();
        for bypass in [false, true] {
            let r = build_apply_ops(&ops, bypass);
            let body: usize = ops
                .iter()
                .enumerate()
                .map(|(i, o)| element_len(i, o.len()))
                .sum();
            assert_eq!(r.as_bytes().len(), request_len(body, bypass));
            let d = r.to_document().unwrap();
            assert_eq!(d.get_array("applyOps").unwrap().len(), 12);
            assert_eq!(d.get_bool("bypassDocumentValidation").is_ok(), bypass);
        }
    }

    #[test]
    fn namespaces_skipped() {
        for ns in [
            "local.oplog.rs",
            "config.system.sessions",
            "config.transactions",
            "admin.system.version",
        ] {
            assert!(skip_ns(ns), "{ns}");
        }
        for ns in [
            "admin.system.users",
            "admin.system.roles",
            "test.c",
            "configx.c",
        ] {
            assert!(!skip_ns(ns), "{ns}");
        }
    }

    /// A transaction that creates a collection and an index (logged inside
    /// its `applyOps` since 4.4): the create alone in its own `applyOps`,
    /// the index as a `createIndexes` command, then the writes atomically.
    #[test]
    fn ddl_inside_a_transaction_runs_alone_first() {
        let ops = vec![
            doc! {"op": "i", "ns": "a.x", "ui": bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: vec![1; 16] }, "o": {"_id": 1}},
            doc! {"op": "c", "ns": "a.$cmd", "o": {"create": "y", "idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"}}},
            doc! {"op": "i", "ns": "a.y", "o": {"_id": 2}},
            doc! {"op": "c", "ns": "a.$cmd", "o": {"createIndexes": "y", "v": 2, "key": {"k": 1}, "name": "k_1"}},
        ];
        let entry = doc! {
            "lsid": {"id": bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: vec![9; 16] }},
            "txnNumber": 1i64, "op": "c", "ns": "admin.$cmd", "o": {"applyOps": ops},
            "ts": bson::Timestamp { time: 10, increment: 1 }, "t": 1i64, "v": 2,
            "wall": bson::DateTime::from_millis(0), "prevOpTime": {"ts": bson::Timestamp { time: 0, increment: 0 }, "t": -1i64},
        };
        let raw = RawDocumentBuf::from_document(&entry).unwrap();
        let e = OplogEntryRef::parse(&raw).unwrap();
        let (reqs, stats) = plan([e], ApplyOptions::new(OplogTs { secs: 10, inc: 1 })).unwrap();
        let docs: Vec<bson::Document> = reqs
            .iter()
            .map(|r| r.command.to_document().unwrap())
            .collect();
        assert_eq!(reqs.len(), 3, "{docs:?}");
        let first = docs[0].get_array("applyOps").unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(
            first[0]
                .as_document()
                .unwrap()
                .get_document("o")
                .unwrap()
                .get_str("create")
                .unwrap(),
            "y"
        );
        assert_eq!(
            (
                reqs[1].db.as_str(),
                docs[1].get_str("createIndexes").unwrap()
            ),
            ("a", "y")
        );
        assert_eq!(docs[1].get_array("indexes").unwrap().len(), 1);
        let writes = docs[2].get_array("applyOps").unwrap();
        assert_eq!(writes.len(), 2, "both inserts, together");
        assert_eq!(reqs.iter().map(|r| r.entries).sum::<usize>(), 1);
        assert_eq!(stats.applied_entries, 1);
    }

    /// With UUIDs kept, operations on namespaces whose UUID the target chooses itself lose
    /// their `ui`; others keep it.
    #[test]
    fn target_owned_namespaces_are_resolved_by_name() {
        let ui = bson::Binary {
            subtype: bson::spec::BinarySubtype::Uuid,
            bytes: vec![7; 16],
        };
        let mut entries = Vec::new();
        for (i, ns) in [
            "d.c",
            "d.system.buckets.m",
            "d.system.views",
            "admin.system.users",
            "admin.system.roles",
        ]
        .iter()
        .enumerate()
        {
            let e = doc! {
                "op": "i", "ns": *ns, "ui": ui.clone(), "o": {"_id": i as i32},
                "ts": bson::Timestamp { time: 10, increment: i as u32 + 1 }, "t": 1i64, "v": 2,
                "wall": bson::DateTime::from_millis(0),
            };
            entries.push(RawDocumentBuf::from_document(&e).unwrap());
        }
        let parsed = entries.iter().map(|r| OplogEntryRef::parse(r).unwrap());
        let opts = ApplyOptions {
            preserve_uuid: true,
            ..ApplyOptions::new(OplogTs { secs: 10, inc: 5 })
        };
        let (reqs, _) = plan(parsed, opts).unwrap();
        let ops: Vec<bson::Document> = reqs
            .iter()
            .flat_map(|r| {
                r.command
                    .to_document()
                    .unwrap()
                    .get_array("applyOps")
                    .unwrap()
                    .clone()
            })
            .map(|b| b.as_document().unwrap().clone())
            .collect();
        assert_eq!(ops.len(), 5);
        assert!(ops[0].contains_key("ui"), "{:?}", ops[0]);
        for op in &ops[1..] {
            assert!(!op.contains_key("ui"), "{op:?}");
        }
    }

    /// Global index key operations (`xi`, `xd`) inside a transaction are skipped; its
    /// writes are applied.
    #[test]
    fn global_index_keys_in_a_transaction_are_skipped() {
        let ops = vec![
            doc! {"op": "xi", "ns": "d.$cmd", "ui": bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: vec![1; 16] }, "o": {"ik": {"a": 1}, "dk": {"_id": 1}}},
            doc! {"op": "i", "ns": "d.c", "o": {"_id": 1}},
            doc! {"op": "xd", "ns": "d.$cmd", "o": {"ik": {"a": 0}, "dk": {"_id": 0}}},
        ];
        let entry = doc! {
            "lsid": {"id": bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: vec![9; 16] }},
            "txnNumber": 1i64, "op": "c", "ns": "admin.$cmd", "o": {"applyOps": ops},
            "ts": bson::Timestamp { time: 10, increment: 1 }, "t": 1i64, "v": 2,
            "wall": bson::DateTime::from_millis(0), "prevOpTime": {"ts": bson::Timestamp { time: 0, increment: 0 }, "t": -1i64},
        };
        let raw = RawDocumentBuf::from_document(&entry).unwrap();
        let (reqs, stats) = plan(
            [OplogEntryRef::parse(&raw).unwrap()],
            ApplyOptions::new(OplogTs { secs: 10, inc: 1 }),
        )
        .unwrap();
        assert_eq!(reqs.len(), 1);
        let d = reqs[0].command.to_document().unwrap();
        let applied = d.get_array("applyOps").unwrap();
        assert_eq!(applied.len(), 1);
        assert_eq!(
            applied[0].as_document().unwrap().get_str("op").unwrap(),
            "i"
        );
        assert_eq!(stats.skipped_internal, 2);
    }

    /// A default request that 6.0 logs as one atomic entry (every op gaining a `ui`, the
    /// entry's own fields around it) still fits the 16 MiB document limit.
    #[test]
    fn default_requests_fit_a_six_oh_atomic_entry() {
        let lim = ApplyLimits::default();
        let entry_fields = 512;
        assert!(lim.max_bytes + lim.max_ops * UI_BYTES + entry_fields <= MAX_DOCUMENT);
        // and the planner keeps to the bound with ops just under it
        let big = "x".repeat(60_000);
        let ops: Vec<RawDocumentBuf> = (0..600)
            .map(|i| {
                let e = doc! {"op": "i", "ns": "d.c", "o": {"_id": i, "p": &big},
                "ts": bson::Timestamp { time: 10, increment: i as u32 + 1 }, "t": 1i64, "v": 2,
                "wall": bson::DateTime::from_millis(0)};
                RawDocumentBuf::from_document(&e).unwrap()
            })
            .collect();
        let (reqs, _) = plan(
            ops.iter().map(|r| OplogEntryRef::parse(r).unwrap()),
            ApplyOptions::new(OplogTs { secs: 10, inc: 600 }),
        )
        .unwrap();
        assert!(reqs.len() >= 3);
        for r in &reqs {
            assert!(r.command.as_bytes().len() <= lim.max_bytes);
            assert!(r.command.as_bytes().len() + r.ops * UI_BYTES + entry_fields <= MAX_DOCUMENT);
        }
    }
}
