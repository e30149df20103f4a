//! The writer lease: at most one archiver writes a source at a time.
//!
//! Stored in the repository itself, at `<source>/lease/writer.json`:
//!
//! ```json
//! {"generation":3,
//!  "holder":{"host":"db1","pid":4242,"started":"2026-01-02T03:04:05Z"},
//!  "acquired_at":"…","renewed_at":"…","expires_at":"…","ttl_ms":30000,
//!  "released":false}
//! ```
//!
//! Protocol (every write is a compare-and-swap, see `storage::cas`):
//! * **generation**: derived from the repository as a whole, never from one
//!   object: one above the highest of the lease object's generation and every
//!   takeover record's (see [`generation_floor`]). Deleting `writer.json`
//!   (by hand, or a first attempt cleaning up after itself) therefore never
//!   lets a later writer start below an earlier takeover, where all it wrote
//!   would be fenced. Takeover records are never deleted by maintenance.
//! * **acquire**: no lease object → conditional create at that generation. A
//!   lease that is released or expired is taken over by a conditional update
//!   (If-Match the version read): of several contenders exactly one wins. A
//!   live lease is waited for (or, with `--no-wait`, refused naming its
//!   holder).
//! * **expiry** is decided so that no clock skew lets two writers overlap: a
//!   contender takes an unreleased lease over only once it has watched the
//!   very same version of the object unchanged for a full ttl on its own
//!   monotonic clock (the holder renews every ttl/3, so an unchanged version
//!   means the holder's own deadline, measured from before that version was
//!   written, has passed). `expires_at` only tells people and `status`; a
//!   `--no-wait` contender refuses a lease that is live by it, and watches
//!   an expired one for a ttl before taking it over.
//! * **renew**: every ttl/3 a conditional update moves `expires_at` to
//!   now + ttl. A holder that cannot renew before its own deadline (measured
//!   on its monotonic clock from the moment it sent the last successful
//!   renewal, minus a tenth of the ttl for differing clock rates), or that
//!   finds the lease changed under it, has lost it and stops writing at once.
//!   A renewal whose answer was lost (applied, then a transient error) is
//!   recognised as its own when the next one conflicts with it.
//! * **release** (clean shutdown): a conditional update marks it released,
//!   so a successor need not wait for the expiry.
//! * **takeover record**: right after acquiring generation `h`, before writing
//!   anything else, the holder stores the immutable record
//!   `<source>/lease/gen-<h>_<epoch>-<position>.json` naming where it resumes
//!   (the repository's tail as it found it). Every segment and gap record it
//!   writes carries `h` in its key; the records fence objects written late by
//!   a writer that lost the lease (see `fence`).
//!
//! A contender running under the same kernel boot (`boot_id`) and in the
//! same PID namespace as the holder does not wait for the expiry of a lease
//! whose holder process no longer exists (killed, crashed): a restart after a
//! crash resumes at once. The host name is never trusted for this (cloned
//! machines share it); records without a boot id are waited for.
//!
//! A store that ignores conditional writes (`If-None-Match` or `If-Match`)
//! cannot keep writers apart at all: archiving there needs the operator's
//! `--single-writer` declaration, and then runs without a lease object, but
//! still under a generation of its own and its takeover record, so what it
//! writes is never fenced by an earlier takeover.

use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use pitr_segment::{Epoch, LogPos};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::archive::fence::Takeover;
use crate::archive::gaps::hex;
use crate::archive::keys::{self, SourceName};
use crate::storage::{CasError, Repo, StorageError, Version};

/// Default time to live of a lease.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// Who holds a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
    /// When the holding process started.
    pub started: DateTime<Utc>,
    /// The holder's PID namespace (`/proc/self/ns/pid`), so a process of the
    /// same boot and namespace can tell that the holder no longer exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_ns: Option<String>,
    /// The holder's kernel boot (`/proc/sys/kernel/random/boot_id`): the
    /// same boot and PID namespace mean the same process table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
}

impl Holder {
    /// This process.
    pub fn me() -> Holder {
        static ME: OnceLock<Holder> = OnceLock::new();
        ME.get_or_init(|| Holder {
            host: hostname(),
            pid: std::process::id(),
            started: Utc::now(),
            pid_ns: pid_namespace(),
            boot_id: boot_id(),
        })
        .clone()
    }

    /// True when the holder provably no longer runs: same kernel boot, same
    /// PID namespace, and no process with its pid. (A reused pid only makes
    /// a contender wait for the expiry.) The host name plays no part.
    pub fn is_gone(&self) -> bool {
        process_gone(self.pid, &self.boot_id, &self.pid_ns)
    }
}

/// True when process `pid` of kernel boot `boot_id` and PID namespace
/// `pid_ns` provably no longer runs: both are this process's own (so this
/// process sees the same process table) and no process has that pid.
pub fn process_gone(pid: u32, boot_id: &Option<String>, pid_ns: &Option<String>) -> bool {
    let me = Holder::me();
    pid != me.pid
        && boot_id.is_some()
        && *boot_id == me.boot_id
        && pid_ns.is_some()
        && *pid_ns == me.pid_ns
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn pid_namespace() -> Option<String> {
    std::fs::read_link("/proc/self/ns/pid")
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} pid {}", self.host, self.pid)
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown-host".to_string())
}

/// The body of `<source>/lease/writer.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub generation: u64,
    pub holder: Holder,
    pub acquired_at: DateTime<Utc>,
    pub renewed_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Time to live, milliseconds.
    pub ttl_ms: u64,
    #[serde(default)]
    pub released: bool,
}

/// What a reader can tell about a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Held and renewed in time.
    Live,
    /// Given up on a clean shutdown.
    Released,
    /// Not renewed before it expired: its holder died or hangs.
    Expired,
    /// Not expired yet, but its holder provably no longer runs (a process of
    /// this host and PID namespace that is gone): may be taken over at once.
    Abandoned,
}

impl LeaseRecord {
    pub fn state(&self, now: DateTime<Utc>) -> LeaseState {
        if self.released {
            LeaseState::Released
        } else if self.expires_at > now {
            if self.holder.is_gone() {
                LeaseState::Abandoned
            } else {
                LeaseState::Live
            }
        } else {
            LeaseState::Expired
        }
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms.max(1))
    }

    /// Whether a contender may take this lease over now, having watched this
    /// very version of it unchanged for `watched` on its monotonic clock (see
    /// the module docs): released, abandoned, or unrenewed for a whole ttl.
    /// Wall clocks play no part, so no clock skew lets two writers overlap.
    pub fn may_take_over(&self, now: DateTime<Utc>, watched: Duration) -> bool {
        match self.state(now) {
            LeaseState::Released | LeaseState::Abandoned => true,
            LeaseState::Live | LeaseState::Expired => watched >= self.ttl(),
        }
    }

    /// "held by <host> pid <pid> since <t>, expires <t>"
    pub fn describe(&self) -> String {
        format!(
            "held by {} since {}, expires {}",
            self.holder,
            self.acquired_at.format("%Y-%m-%d %H:%M:%S%.3f UTC"),
            self.expires_at.format("%Y-%m-%d %H:%M:%S%.3f UTC")
        )
    }
}

/// The body of a takeover record (its key holds the same facts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TakeoverRecord {
    pub generation: u64,
    #[serde(serialize_with = "hex::ser_epoch", deserialize_with = "hex::de_epoch")]
    pub epoch: Epoch,
    #[serde(serialize_with = "hex::ser_pos", deserialize_with = "hex::de_pos")]
    pub position: LogPos,
    pub holder: Holder,
    pub at: DateTime<Utc>,
}

/// How an archiver takes the lease.
#[derive(Debug, Clone, Copy)]
pub struct LeaseOptions {
    pub ttl: Duration,
    /// Wait for a live lease to be released or expire (else refuse at once).
    pub wait: bool,
    /// The operator declares that only one archiver writes this source: the
    /// only way to archive into a store that ignores conditional writes.
    pub single_writer: bool,
}

impl Default for LeaseOptions {
    fn default() -> Self {
        LeaseOptions {
            ttl: DEFAULT_TTL,
            wait: true,
            single_writer: false,
        }
    }
}

/// Errors taking or reading a lease.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("the writer lease of {name} is {desc}: another process archives it now; stop it, or run without --no-wait to wait for it")]
    Held { name: SourceName, desc: String },
    #[error("the repository {repo} ignores conditional writes ({what}), so pitr cannot keep two archivers of {name} apart; run exactly one archiver per source and declare it with --single-writer (single_writer = true in the config)")]
    Unsupported {
        repo: String,
        name: SourceName,
        /// Which condition: `If-None-Match` or `If-Match`.
        what: &'static str,
    },
    #[error("the writer lease {key} is unreadable ({reason}); if no archiver of this source runs, delete that object (the next archiver continues above every earlier generation)")]
    Corrupt { key: String, reason: String },
    #[error("writer lease generation {0} is beyond what segment keys can record")]
    Exhausted(u64),
    #[error("cancelled while waiting for the writer lease")]
    Cancelled,
    #[error(transparent)]
    Lost(#[from] LeaseLost),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl LeaseError {
    pub fn is_transient(&self) -> bool {
        matches!(self, LeaseError::Storage(e) if e.is_transient())
    }
}

/// The lease was lost: the holder must stop writing.
#[derive(Debug, Clone, thiserror::Error)]
#[error("lost the writer lease of {name} to {to}; another process archives it now")]
pub struct LeaseLost {
    pub name: SourceName,
    pub to: String,
}

fn corrupt(key: &str, e: impl fmt::Display) -> LeaseError {
    LeaseError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    }
}

/// The highest writer generation the repository records for `source`: the
/// lease object's and every takeover record's (0 when there is none). A new
/// writer takes the next one above it, so generations never go down, even
/// when the lease object is gone.
pub async fn generation_floor(repo: &Repo, source: &SourceName) -> Result<u64, LeaseError> {
    let lease = read_lease(repo, source).await?.map_or(0, |r| r.generation);
    Ok(takeover_floor(repo, source).await?.max(lease))
}

/// The highest generation among the takeover records of `source` (0: none).
async fn takeover_floor(repo: &Repo, source: &SourceName) -> Result<u64, LeaseError> {
    Ok(repo
        .list(&keys::lease_prefix(source))
        .await?
        .iter()
        .filter_map(|m| keys::parse_takeover_key(source, m.location.as_ref()))
        .map(|t| t.generation)
        .max()
        .unwrap_or(0))
}

/// Reads the writer lease of `source`, if there is one.
pub async fn read_lease(
    repo: &Repo,
    source: &SourceName,
) -> Result<Option<LeaseRecord>, LeaseError> {
    Ok(read_versioned(repo, source).await?.map(|(r, _)| r))
}

async fn read_versioned(
    repo: &Repo,
    source: &SourceName,
) -> Result<Option<(LeaseRecord, Version)>, LeaseError> {
    let key = keys::writer_lease_key(source);
    match repo.get_versioned(&key).await? {
        None => Ok(None),
        Some((b, v)) => {
            let rec: LeaseRecord = serde_json::from_slice(&b).map_err(|e| corrupt(&key, e))?;
            Ok(Some((rec, v)))
        }
    }
}

fn encode(rec: &LeaseRecord) -> Bytes {
    // Serialising plain data cannot fail; an empty body would read back as corrupt.
    Bytes::from(serde_json::to_vec_pretty(rec).unwrap_or_default())
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn chrono_dur(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// State shared by a held lease, its renewal task and its guards.
#[derive(Debug)]
struct Shared {
    repo: Repo,
    source: SourceName,
    /// The holder's own deadline: sent-time of the last successful renewal + ttl.
    deadline: Mutex<Instant>,
    lost: CancellationToken,
    lost_to: Mutex<Option<String>>,
}

impl Shared {
    fn deadline(&self) -> Instant {
        self.deadline
            .lock()
            .map(|d| *d)
            .unwrap_or_else(|p| *p.into_inner())
    }

    fn set_deadline(&self, d: Instant) {
        match self.deadline.lock() {
            Ok(mut g) => *g = d,
            Err(p) => *p.into_inner() = d,
        }
    }

    fn mark_lost(&self, to: String) {
        if let Ok(mut g) = self.lost_to.lock() {
            if g.is_none() {
                *g = Some(to);
            }
        }
        self.lost.cancel();
    }

    fn lost_error(&self) -> LeaseLost {
        let to = self
            .lost_to
            .lock()
            .ok()
            .and_then(|g| g.clone())
            .unwrap_or_else(|| "another process".to_string());
        LeaseLost {
            name: self.source.clone(),
            to,
        }
    }
}

/// How long the holder itself trusts a renewal: a tenth less than what
/// others see in `expires_at`, so it stops before anyone may take over.
fn own_ttl(ttl: Duration) -> Duration {
    ttl - ttl / 10
}

const EXPIRED_UNRENEWED: &str = "another process (this one could not renew it before it expired)";

/// A cheap handle every writer of a lease holder checks before it writes.
#[derive(Debug, Clone)]
pub struct LeaseGuard {
    shared: Option<Arc<Shared>>,
    /// The generation of what is written (a lease's, or a declared single
    /// writer's own).
    generation: u32,
}

impl LeaseGuard {
    /// A guard that never fails, at generation 0 (tests, tools that write no log).
    pub fn none() -> LeaseGuard {
        LeaseGuard {
            shared: None,
            generation: 0,
        }
    }

    /// The generation every object written under this lease carries.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Ok while the lease is held and its deadline has not passed.
    pub fn check(&self) -> Result<(), LeaseLost> {
        let Some(s) = &self.shared else {
            return Ok(());
        };
        if !s.lost.is_cancelled() && Instant::now() >= s.deadline() {
            s.mark_lost(EXPIRED_UNRENEWED.to_string());
        }
        if s.lost.is_cancelled() {
            Err(s.lost_error())
        } else {
            Ok(())
        }
    }

    /// The loss, once it happened.
    pub fn lost(&self) -> Option<LeaseLost> {
        self.check().err()
    }

    /// Resolves when the lease is lost (never for [`LeaseGuard::none`]).
    pub async fn wait_lost(&self) -> LeaseLost {
        let Some(s) = &self.shared else {
            return std::future::pending().await;
        };
        loop {
            let d = s.deadline();
            tokio::select! {
                _ = s.lost.cancelled() => return s.lost_error(),
                _ = tokio::time::sleep_until(d) => {
                    if Instant::now() >= s.deadline() && !s.lost.is_cancelled() {
                        // Name the new holder if the repository says who it is.
                        let to = match tokio::time::timeout(
                            Duration::from_secs(2),
                            read_lease(&s.repo, &s.source),
                        )
                        .await
                        {
                            Ok(Ok(Some(r))) if u64::from(self.generation) != r.generation => {
                                format!("{} (generation {})", r.holder, r.generation)
                            }
                            _ => EXPIRED_UNRENEWED.to_string(),
                        };
                        s.mark_lost(to);
                    }
                    if let Err(e) = self.check() {
                        return e;
                    }
                }
            }
        }
    }
}

/// A held writer lease (or none, in single-writer mode). Renewed in the
/// background until [`Lease::release`] or loss.
pub struct Lease {
    repo: Repo,
    source: SourceName,
    guard: LeaseGuard,
    holder: Holder,
    stop: CancellationToken,
    task: Option<JoinHandle<Option<(LeaseRecord, Version)>>>,
    /// This process created the lease object (there was none).
    created: bool,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("source", &self.source)
            .field("generation", &self.guard.generation())
            .finish()
    }
}

impl Lease {
    /// Takes the writer lease of `source` (waiting for a live one when
    /// `opts.wait`), and starts renewing it.
    pub async fn acquire(
        repo: &Repo,
        source: &SourceName,
        opts: LeaseOptions,
        cancel: &CancellationToken,
    ) -> Result<Lease, LeaseError> {
        if !repo.conditional_puts().await? {
            if !opts.single_writer {
                return Err(LeaseError::Unsupported {
                    repo: repo.to_string(),
                    name: source.clone(),
                    what: "If-None-Match",
                });
            }
            return Lease::unleased(repo, source).await;
        }
        if !repo.conditional_updates().await? {
            if !opts.single_writer {
                return Err(LeaseError::Unsupported {
                    repo: repo.to_string(),
                    name: source.clone(),
                    what: "If-Match",
                });
            }
            return Lease::unleased(repo, source).await;
        }
        let key = keys::writer_lease_key(source);
        let me = Holder::me();
        let ttl = opts.ttl.max(Duration::from_millis(300));
        let mut announced: Option<(u64, Holder)> = None;
        // The version of the lease object seen, and since when (monotonic).
        let mut watching: Option<(Version, Instant)> = None;
        loop {
            let now = Utc::now();
            let current = read_versioned(repo, source).await?;
            let watched = match (&current, &watching) {
                (Some((_, v)), Some((seen, since))) if v == seen => since.elapsed(),
                (Some((_, v)), _) => {
                    watching = Some((v.clone(), Instant::now()));
                    Duration::ZERO
                }
                (None, _) => Duration::ZERO,
            };
            let generation = match &current {
                Some((rec, _)) if !rec.may_take_over(now, watched) => {
                    // An expired lease is watched for a ttl even with
                    // --no-wait: its holder may only have a slower clock.
                    if !opts.wait && rec.state(now) == LeaseState::Live {
                        return Err(LeaseError::Held {
                            name: source.clone(),
                            desc: rec.describe(),
                        });
                    }
                    let who = (rec.generation, rec.holder.clone());
                    if announced.as_ref() != Some(&who) {
                        tracing::info!(
                            "waiting for the writer lease of {source}: {}",
                            rec.describe()
                        );
                        announced = Some(who);
                    }
                    let pause = rec
                        .ttl()
                        .saturating_sub(watched)
                        .min(rec.ttl() / 3)
                        .max(Duration::from_millis(100));
                    tokio::select! {
                        _ = cancel.cancelled() => return Err(LeaseError::Cancelled),
                        _ = tokio::time::sleep(pause + Duration::from_millis(20)) => {}
                    }
                    continue;
                }
                // Above the lease object just read and every takeover record.
                _ => {
                    let lease = current.as_ref().map_or(0, |(rec, _)| rec.generation);
                    takeover_floor(repo, source).await?.max(lease) + 1
                }
            };
            let short = u32::try_from(generation).map_err(|_| LeaseError::Exhausted(generation))?;
            let rec = LeaseRecord {
                generation,
                holder: me.clone(),
                acquired_at: now,
                renewed_at: now,
                expires_at: now + chrono_dur(ttl),
                ttl_ms: ms(ttl),
                released: false,
            };
            let sent = Instant::now();
            let result = match &current {
                None => repo.create_versioned(&key, encode(&rec)).await,
                Some((_, v)) => repo.put_if_version(&key, encode(&rec), v).await,
            };
            match result {
                Ok(version) => {
                    if let Some((old, _)) = &current {
                        match old.state(now) {
                            LeaseState::Expired => {
                                tracing::warn!(source = %source, "took over the writer lease of {source} (generation {generation}) from {}, which stopped renewing it at {}", old.holder, old.renewed_at)
                            }
                            LeaseState::Live => {
                                tracing::warn!(source = %source, "took over the writer lease of {source} (generation {generation}) from {}, which left it unrenewed for {:?} (its clock runs ahead of this one's)", old.holder, watched)
                            }
                            LeaseState::Abandoned => {
                                tracing::warn!(source = %source, "took over the writer lease of {source} (generation {generation}) from {}, which no longer runs", old.holder)
                            }
                            _ => {
                                tracing::info!(source = %source, "took the writer lease of {source} (generation {generation})")
                            }
                        }
                    } else {
                        tracing::debug!(source = %source, "took the writer lease of {source} (generation 1)");
                    }
                    let created = current.is_none();
                    return Ok(Lease::start(
                        repo, source, rec, version, short, sent, me, created,
                    ));
                }
                Err(CasError::Conflict { .. }) => continue,
                Err(CasError::Storage(e)) => return Err(e.into()),
            }
        }
    }

    /// A declared single writer on a store without conditional writes: no
    /// lease object, but a generation above every earlier one (and, once
    /// [`Lease::record_takeover`] ran, a takeover record of its own), so
    /// nothing it writes is fenced by an earlier takeover.
    async fn unleased(repo: &Repo, source: &SourceName) -> Result<Lease, LeaseError> {
        let generation = generation_floor(repo, source).await? + 1;
        let short = u32::try_from(generation).map_err(|_| LeaseError::Exhausted(generation))?;
        tracing::warn!(source = %source, "the repository ignores conditional writes: archiving without a writer lease (generation {generation}), trusting --single-writer");
        Ok(Lease {
            repo: repo.clone(),
            source: source.clone(),
            guard: LeaseGuard {
                shared: None,
                generation: short,
            },
            holder: Holder::me(),
            stop: CancellationToken::new(),
            task: None,
            created: false,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn start(
        repo: &Repo,
        source: &SourceName,
        rec: LeaseRecord,
        version: Version,
        generation: u32,
        sent: Instant,
        me: Holder,
        created: bool,
    ) -> Lease {
        let ttl = rec.ttl();
        let shared = Arc::new(Shared {
            repo: repo.clone(),
            source: source.clone(),
            deadline: Mutex::new(sent + own_ttl(ttl)),
            lost: CancellationToken::new(),
            lost_to: Mutex::new(None),
        });
        let guard = LeaseGuard {
            shared: Some(shared.clone()),
            generation,
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(renew_loop(
            repo.clone(),
            shared,
            guard.clone(),
            rec,
            version,
            stop.clone(),
        ));
        Lease {
            repo: repo.clone(),
            source: source.clone(),
            guard,
            holder: me,
            stop,
            task: Some(task),
            created,
        }
    }

    pub fn guard(&self) -> LeaseGuard {
        self.guard.clone()
    }

    pub fn generation(&self) -> u32 {
        self.guard.generation()
    }

    /// Stores the takeover record of this generation: it resumes writing at
    /// `resume` (`None`: the repository held nothing of the source). Must
    /// happen before anything else is written under the lease.
    pub async fn record_takeover(&self, resume: Option<(Epoch, LogPos)>) -> Result<(), LeaseError> {
        let generation = u64::from(self.generation());
        if generation == 0 {
            return Ok(());
        }
        self.guard.check()?;
        let (epoch, position) = resume.unwrap_or_default();
        let t = Takeover {
            generation,
            epoch,
            position,
        };
        let body = TakeoverRecord {
            generation,
            epoch,
            position,
            holder: self.holder.clone(),
            at: Utc::now(),
        };
        let key = keys::takeover_key(&self.source, &t);
        let data = serde_json::to_vec_pretty(&body).map_err(|e| corrupt(&key, e))?;
        self.repo.put_if_absent(&key, Bytes::from(data)).await?;
        Ok(())
    }

    /// For a first attempt that failed before writing anything: a lease
    /// object this process created is deleted with its takeover record,
    /// leaving the repository as it was (the lease object only while it is
    /// still this process's own version); any other is released.
    pub async fn release_unused(mut self) {
        if !self.created {
            return self.release().await;
        }
        self.stop.cancel();
        let last = match self.task.take() {
            Some(task) => task.await.ok().flatten(),
            None => None,
        };
        let Some((_, version)) = last else {
            return;
        };
        if self.guard.check().is_err() {
            return;
        }
        let generation = u64::from(self.generation());
        let unused = "could not remove the unused writer lease";
        let prefix = keys::lease_prefix(&self.source);
        let listed = match self.repo.list(&prefix).await {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(source = %self.source, "{unused}: {e}");
                return;
            }
        };
        for m in listed {
            let k = m.location.to_string();
            if keys::parse_takeover_key(&self.source, &k)
                .is_some_and(|t| t.generation == generation)
            {
                if let Err(e) = self.repo.delete(&k).await {
                    tracing::warn!(source = %self.source, "{unused}: {e}");
                }
            }
        }
        let key = keys::writer_lease_key(&self.source);
        match self.repo.get_versioned(&key).await {
            Ok(Some((_, v))) if v == version => {
                if let Err(e) = self.repo.delete(&key).await {
                    tracing::warn!(source = %self.source, "{unused}: {e}");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(source = %self.source, "{unused}: {e}"),
        }
    }

    /// Stops renewing and marks the lease released (clean shutdown), so a
    /// successor need not wait for it to expire.
    pub async fn release(mut self) {
        self.stop.cancel();
        let Some(task) = self.task.take() else {
            return;
        };
        let Ok(Some((mut rec, version))) = task.await else {
            return;
        };
        if self.guard.check().is_err() {
            return;
        }
        let now = Utc::now();
        rec.released = true;
        rec.renewed_at = now;
        rec.expires_at = now;
        let key = keys::writer_lease_key(&self.source);
        match self.repo.put_if_version(&key, encode(&rec), &version).await {
            Ok(_) => {
                tracing::info!(source = %self.source, "released the writer lease of {} (generation {})", self.source, rec.generation)
            }
            Err(e) => {
                tracing::warn!(source = %self.source, "could not release the writer lease of {}: {e}; a successor takes it over when it expires", self.source)
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Not released (an error path): stop renewing; the lease expires.
        self.stop.cancel();
    }
}

/// Renews every ttl/3 until stopped (returns the last record and version,
/// for the release) or lost (returns `None`).
async fn renew_loop(
    repo: Repo,
    shared: Arc<Shared>,
    guard: LeaseGuard,
    mut rec: LeaseRecord,
    mut version: Version,
    stop: CancellationToken,
) -> Option<(LeaseRecord, Version)> {
    let key = keys::writer_lease_key(&shared.source);
    let ttl = rec.ttl();
    // Renewals whose outcome is unknown since the last certain one (a
    // transient error: each may have been applied), with when each was sent.
    let mut unsure: Vec<(LeaseRecord, Instant)> = Vec::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Some((rec, version)),
            e = guard.wait_lost() => {
                tracing::error!("{e}");
                return None;
            }
            _ = tokio::time::sleep(ttl / 3) => {}
        }
        if guard.check().is_err() {
            continue; // reported by wait_lost on the next turn
        }
        let now = Utc::now();
        let mut next = rec.clone();
        next.renewed_at = now;
        next.expires_at = now + chrono_dur(ttl);
        let sent = Instant::now();
        match repo.put_if_version(&key, encode(&next), &version).await {
            Ok(v) => {
                rec = next;
                version = v;
                unsure.clear();
                shared.set_deadline(sent + own_ttl(ttl));
            }
            Err(CasError::Conflict { .. }) => match read_versioned(&repo, &shared.source).await {
                // A retried request of our own that had already succeeded.
                Ok(Some((cur, v))) if cur == next => {
                    rec = cur;
                    version = v;
                    unsure.clear();
                    shared.set_deadline(sent + own_ttl(ttl));
                }
                // An earlier renewal of ours whose answer was lost: it was
                // applied, so the deadline counts from when it was sent, and
                // the next turn renews from its version.
                Ok(Some((cur, v))) if unsure.iter().any(|(u, _)| *u == cur) => {
                    if let Some((_, at)) = unsure.iter().find(|(u, _)| *u == cur) {
                        shared.set_deadline(*at + own_ttl(ttl));
                    }
                    unsure.clear();
                    rec = cur;
                    version = v;
                }
                Ok(Some((cur, _))) => {
                    shared.mark_lost(format!("{} (generation {})", cur.holder, cur.generation))
                }
                Ok(None) => shared.mark_lost("nobody (the lease object was deleted)".into()),
                Err(e) => tracing::warn!(source = %shared.source, "renewing the writer lease: {e}"),
            },
            Err(e) => {
                // Bounded: the deadline passes long before this grows.
                if unsure.len() < 64 {
                    unsure.push((next, sent));
                }
                tracing::warn!(source = %shared.source, "could not renew the writer lease (retrying until it expires): {e}")
            }
        }
    }
}

/// An archiver that could not start: cancelled while waiting for the lease
/// is a clean stop (`Ok`); a lease error is a sentence of its own (it names
/// the holder); anything else says which database could not be archived.
pub fn start_failure(e: anyhow::Error, shown_url: &str) -> anyhow::Result<()> {
    match e.downcast::<LeaseError>() {
        Ok(LeaseError::Cancelled) => Ok(()),
        Ok(lease) => Err(lease.into()),
        Err(e) => Err(anyhow::anyhow!("cannot archive {shown_url}: {e:#}")),
    }
}

/// What every archiver does with its lease once it stopped and its uploader
/// finished: a lease lost meanwhile is the error to report; otherwise, when
/// everything received was stored (`stored`), the lease is released — as
/// unused when the archiver never wrote (a failed first attempt leaves no
/// lease objects behind).
pub async fn wind_down(
    lease: Option<Lease>,
    guard: &LeaseGuard,
    progress: &crate::archive::progress::ArchiveProgress,
    wrote: bool,
    stored: bool,
) -> anyhow::Result<()> {
    progress
        .lease_generation
        .store(0, std::sync::atomic::Ordering::Relaxed);
    if let Some(lost) = guard.lost() {
        return Err(anyhow::anyhow!(lost));
    }
    if let (Some(lease), true) = (lease, stored) {
        if wrote {
            lease.release().await;
        } else {
            lease.release_unused().await;
        }
    }
    Ok(())
}
