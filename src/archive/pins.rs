//! Restore pins: a running restore tells maintenance (`prune`, compaction)
//! which base backup and which stretch of log it planned on, so they are
//! not deleted under it.
//!
//! A pin is a small JSON object `<source>/pins/<id>_<expires>.json` (see
//! `keys::PinKey`):
//!
//! ```json
//! { "format_version": 1, "id": "r20260914T123456Z-4711-3f2a", "source": "main",
//!   "host": "db-restore-1", "pid": 4711, "since": "2026-09-14T12:34:56Z",
//!   "expires_at": "2026-09-14T12:39:56Z", "target": "time 2026-09-14 12:30:00 UTC",
//!   "backup": "main/backups/<start>_<id>/",
//!   "ranges": [ { "epoch": "<16 hex>", "start": "<32 hex>", "end": "<32 hex>" | null } ] }
//! ```
//!
//! `end: null` is an open-ended range (`--latest`: everything from `start`
//! on). A pin lives until `expires_at`; its holder renews it every third of
//! its time to live by writing the same pin with a later expiry under a new
//! key (create-if-absent) and then deleting the older keys of the same id,
//! so at every instant at least one unexpired object of a live pin exists.
//! The holder deletes every object of the pin when the restore ends; a
//! crashed holder's pin simply expires (and the next restore of the source
//! removes pins that expired more than a day ago).
//!
//! Readers ([`live_pins`]) take the newest object of each id and ignore the
//! expired ones. An object that cannot be decoded is an error: maintenance
//! then deletes nothing rather than guess what it protected.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use pitr_segment::{Epoch, LogPos};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::archive::keys::{pins_prefix, BackupKey, PinKey, SourceName};
use crate::storage::{PutOutcome, Repo, StorageError};

/// Default time to live of a pin; it is renewed every third of it.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// One pinned stretch of log of one epoch: `[start, end)`, `end` = open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinRange {
    pub epoch: String,
    pub start: String,
    pub end: Option<String>,
}

impl PinRange {
    pub fn new(epoch: Epoch, start: LogPos, end: Option<LogPos>) -> PinRange {
        PinRange {
            epoch: epoch.to_hex(),
            start: start.to_hex(),
            end: end.map(LogPos::to_hex),
        }
    }

    /// (epoch, start, end); `None` when the fields are malformed.
    pub fn parsed(&self) -> Option<(Epoch, LogPos, Option<LogPos>)> {
        let e = Epoch::from_hex(&self.epoch)?;
        let s = LogPos::from_hex(&self.start)?;
        let end = match &self.end {
            Some(x) => Some(LogPos::from_hex(x)?),
            None => None,
        };
        Some((e, s, end))
    }
}

/// What a restore pinned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    pub format_version: u32,
    pub id: String,
    pub source: String,
    pub host: String,
    pub pid: u32,
    pub since: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// What the restore restores to (for people reading the pin).
    pub target: String,
    /// The planned backup directory (`BackupKey::dir`).
    pub backup: String,
    pub ranges: Vec<PinRange>,
    /// A backup pin's holder process, by kernel boot and PID namespace: a
    /// backup that was killed leaves a pin nobody renews, which readers of
    /// the same boot and namespace ignore at once once its pid is gone (a
    /// restore's pin is renewed by other processes, `wal-fetch`, and has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_ns: Option<String>,
}

impl Pin {
    /// A new pin of the current process for `backup` and `ranges`.
    pub fn new(
        source: &SourceName,
        target: &str,
        backup: &BackupKey,
        ranges: Vec<PinRange>,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> Pin {
        let pid = std::process::id();
        let nanos = now.timestamp_subsec_nanos();
        Pin {
            format_version: 1,
            id: format!(
                "r{}-{pid}-{:04x}",
                now.format("%Y%m%dT%H%M%SZ"),
                (nanos ^ (nanos >> 16)) & 0xffff
            ),
            source: source.to_string(),
            host: host_name(),
            pid,
            since: now,
            expires_at: now + ttl,
            target: target.to_string(),
            backup: backup.dir(),
            ranges,
            boot_id: None,
            pid_ns: None,
        }
    }

    /// A pin of a backup being taken: its directory and the log from its
    /// start on, so prune deletes neither while it runs (its id starts with
    /// `b`; a restore's with `r`).
    pub fn for_backup(backup: &BackupKey, epoch: Epoch, now: DateTime<Utc>, ttl: Duration) -> Pin {
        let mut pin = Pin::new(
            &backup.source,
            &format!("backup {} being taken", backup.dir()),
            backup,
            vec![PinRange::new(epoch, backup.start, None)],
            now,
            ttl,
        );
        pin.id.replace_range(0..1, "b");
        let me = crate::archive::lease::Holder::me();
        pin.boot_id = me.boot_id;
        pin.pid_ns = me.pid_ns;
        pin
    }

    /// `backup` or `restore`: what holds the pin.
    pub fn holder_kind(&self) -> &'static str {
        if self.id.starts_with('b') {
            "backup"
        } else {
            "restore"
        }
    }

    /// True when the process holding this pin provably no longer runs (see
    /// `boot_id`): the pin protects nothing any more.
    pub fn holder_gone(&self) -> bool {
        crate::archive::lease::process_gone(self.pid, &self.boot_id, &self.pid_ns)
    }

    /// True when the pin names this backup.
    pub fn protects_backup(&self, key: &BackupKey) -> bool {
        self.backup == key.dir()
    }

    /// True when `[start, end)` of `epoch` overlaps a pinned range. A range
    /// that cannot be parsed protects the whole epoch.
    pub fn protects_range(&self, epoch: Epoch, start: LogPos, end: LogPos) -> bool {
        self.ranges.iter().any(|r| match r.parsed() {
            Some((e, s, pe)) => e == epoch && s < end && pe.is_none_or(|pe| start < pe),
            None => r.epoch == epoch.to_hex() || Epoch::from_hex(&r.epoch).is_none(),
        })
    }

    /// `restore pin <id> (<host>, pid <pid>, since <time>)` (or `backup pin …`).
    pub fn describe(&self) -> String {
        format!(
            "{} pin {} ({}, pid {}, since {})",
            self.holder_kind(),
            self.id,
            self.host,
            self.pid,
            self.since.format("%Y-%m-%d %H:%M:%S UTC")
        )
    }

    fn key(&self) -> anyhow::Result<PinKey> {
        let source = SourceName::new(&self.source)?;
        let ms = u64::try_from(self.expires_at.timestamp_millis()).unwrap_or(0);
        Ok(PinKey::new(source, &self.id, ms)?)
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

/// The newest key of every pin id under `source` (expired ones included).
async fn newest_keys(
    repo: &Repo,
    source: &SourceName,
) -> anyhow::Result<Vec<(PinKey, Vec<PinKey>)>> {
    let listed = repo.list(&pins_prefix(source)).await?;
    let mut by_id: BTreeMap<String, Vec<PinKey>> = BTreeMap::new();
    for m in listed {
        let k = m.location.to_string();
        match PinKey::parse(&k) {
            Ok(pk) => by_id.entry(pk.id.clone()).or_default().push(pk),
            Err(e) => return Err(anyhow!("{e}; remove the object or fix the repository")),
        }
    }
    Ok(by_id
        .into_values()
        .filter_map(|mut v| {
            v.sort_by_key(|k| k.expires_ms);
            let newest = v.pop()?;
            Some((newest, v))
        })
        .collect())
}

async fn read_pin(repo: &Repo, key: &PinKey) -> anyhow::Result<Option<Pin>> {
    let k = key.to_key();
    match repo.get(&k).await {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            anyhow!("restore pin {k} is malformed ({e}); remove it if no restore is running")
        }),
        Err(StorageError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Every pin of `source` that has not expired at `now`.
pub async fn live_pins(
    repo: &Repo,
    source: &SourceName,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<Pin>> {
    let now_ms = u64::try_from(now.timestamp_millis()).unwrap_or(0);
    // A pin renewed between the listing and the read is read again.
    'again: for _ in 0..5 {
        let mut out = Vec::new();
        for (newest, _) in newest_keys(repo, source).await? {
            if newest.expires_ms <= now_ms {
                continue;
            }
            match read_pin(repo, &newest).await? {
                Some(p) if p.holder_gone() => {
                    tracing::debug!(pin = %p.id, "ignoring the pin of a process that no longer runs");
                }
                Some(p) => out.push(p),
                None => continue 'again,
            }
        }
        return Ok(out);
    }
    Err(anyhow!(
        "the restore pins of {source} kept changing while being read; try again"
    ))
}

/// Writes `pin` under its key, then deletes the older keys of its id.
async fn write_pin(repo: &Repo, pin: &Pin) -> anyhow::Result<()> {
    let key = pin.key()?;
    let body = Bytes::from(serde_json::to_vec_pretty(pin)?);
    match repo.put_if_absent(&key.to_key(), body).await {
        Ok(PutOutcome::Created | PutOutcome::AlreadyIdentical) => {}
        Err(StorageError::Divergent { .. }) => {
            // Another renewal of the same pin in the same millisecond.
        }
        Err(e) => return Err(e.into()),
    }
    let source = key.source.clone();
    for (newest, older) in newest_keys(repo, &source).await? {
        if newest.id != pin.id {
            continue;
        }
        for k in older.iter().chain(std::iter::once(&newest)) {
            if k.expires_ms < key.expires_ms {
                delete_quiet(repo, &k.to_key()).await?;
            }
        }
    }
    Ok(())
}

async fn delete_quiet(repo: &Repo, key: &str) -> anyhow::Result<()> {
    match repo.delete(key).await {
        Ok(()) | Err(StorageError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Deletes every object of pin `id` of `source`.
pub async fn release_by_id(repo: &Repo, source: &SourceName, id: &str) -> anyhow::Result<()> {
    for (newest, older) in newest_keys(repo, source).await? {
        if newest.id == id {
            for k in older.iter().chain(std::iter::once(&newest)) {
                delete_quiet(repo, &k.to_key()).await?;
            }
        }
    }
    Ok(())
}

/// Renews pin `id` (used by `wal-fetch` for a server started on a restored
/// directory) when less than two thirds of `ttl` are left; a pin whose
/// objects were deleted (released) is not brought back.
pub async fn renew_by_id(
    repo: &Repo,
    source: &SourceName,
    id: &str,
    ttl: Duration,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let Some((newest, _)) = newest_keys(repo, source)
        .await?
        .into_iter()
        .find(|(k, _)| k.id == id)
    else {
        return Ok(());
    };
    let Some(mut pin) = read_pin(repo, &newest).await? else {
        return Ok(());
    };
    // An expired pin is renewed too: the server may have been started
    // after it lapsed, and protection from now on is still worth having.
    let left = (pin.expires_at - now).to_std().unwrap_or(Duration::ZERO);
    if left > ttl * 2 / 3 {
        return Ok(());
    }
    pin.expires_at = now + ttl;
    write_pin(repo, &pin).await
}

/// Expired pins older than this are removed by the next restore.
pub const STALE_AFTER: Duration = Duration::from_secs(24 * 3600);

async fn remove_stale(repo: &Repo, source: &SourceName, now: DateTime<Utc>) -> anyhow::Result<()> {
    let limit = now.timestamp_millis() - i64::try_from(STALE_AFTER.as_millis()).unwrap_or(i64::MAX);
    let limit = u64::try_from(limit).unwrap_or(0);
    for (newest, older) in newest_keys(repo, source).await? {
        if newest.expires_ms < limit {
            for k in older.iter().chain(std::iter::once(&newest)) {
                delete_quiet(repo, &k.to_key()).await?;
            }
        }
    }
    Ok(())
}

/// A pin held by this process: renewed every third of its time to live by
/// a background task until [`PinGuard::release`] (or the process ends, in
/// which case it expires).
pub struct PinGuard {
    repo: Repo,
    pin: Arc<Mutex<Pin>>,
    renewer: tokio::task::JoinHandle<()>,
}

impl PinGuard {
    /// Writes `pin` and starts renewing it. Pins of the source that
    /// expired more than [`STALE_AFTER`] ago (their holder crashed, or a
    /// restored server never finished) are removed on the way.
    pub async fn acquire(repo: &Repo, pin: Pin, ttl: Duration) -> anyhow::Result<PinGuard> {
        if let Ok(source) = SourceName::new(&pin.source) {
            if let Err(e) = remove_stale(repo, &source, pin.since).await {
                tracing::warn!("removing stale restore pins: {e:#}");
            }
        }
        write_pin(repo, &pin).await?;
        tracing::debug!(pin = %pin.id, backup = %pin.backup, "restore pin written");
        let shared = Arc::new(Mutex::new(pin));
        let (r, p) = (repo.clone(), shared.clone());
        let renewer = tokio::spawn(async move {
            loop {
                tokio::time::sleep(ttl / 3).await;
                let mut pin = p.lock().await;
                let mut next = pin.clone();
                next.expires_at = Utc::now() + ttl;
                match write_pin(&r, &next).await {
                    Ok(()) => *pin = next,
                    Err(e) => {
                        tracing::warn!(pin = %pin.id, "renewing the restore pin failed: {e:#}")
                    }
                }
            }
        });
        Ok(PinGuard {
            repo: repo.clone(),
            pin: shared,
            renewer,
        })
    }

    pub async fn id(&self) -> String {
        self.pin.lock().await.id.clone()
    }

    /// Stops renewing and deletes the pin.
    pub async fn release(self) -> anyhow::Result<()> {
        self.renewer.abort();
        let pin = self.pin.lock().await.clone();
        let source = SourceName::new(&pin.source)?;
        release_by_id(&self.repo, &source, &pin.id).await?;
        tracing::debug!(pin = %pin.id, "restore pin removed");
        Ok(())
    }

    /// Stops renewing; the pin stays until it expires or is released by id
    /// (a server started on the restored directory renews it through
    /// `wal-fetch`).
    pub fn detach(self) {
        self.renewer.abort();
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

/// How many deletions one reading of the pins covers during a prune.
const PIN_BATCH: usize = 64;

/// A pin that appeared while maintenance was deleting.
#[derive(Debug, thiserror::Error)]
#[error("{pin} appeared while pruning; prune stopped before deleting anything more (run it again once that restore has ended)")]
pub struct PinAppeared {
    pub pin: String,
}

/// Prune: the pins read when the deletions were planned, read again before
/// every batch of deletions. A restore that pinned after prune read the pins
/// stops the prune ([`PinAppeared`]) before it deletes what that restore
/// planned on.
#[derive(Debug)]
pub struct PinWatch {
    repo: Repo,
    source: SourceName,
    known: Vec<Pin>,
    until_reread: usize,
}

impl PinWatch {
    /// Watches for pins other than `pins` (the ones the plan honoured).
    pub fn new(repo: &Repo, source: &SourceName, pins: &[Pin]) -> PinWatch {
        PinWatch {
            repo: repo.clone(),
            source: source.clone(),
            known: pins.to_vec(),
            until_reread: 0,
        }
    }

    /// The pin known to protect backup `key`, if any.
    pub fn protecting(&self, key: &BackupKey) -> Option<&Pin> {
        self.known.iter().find(|p| p.protects_backup(key))
    }

    /// Starts a batch: the next deletion reads the pins again first.
    pub fn batch(&mut self) {
        self.until_reread = 0;
    }

    /// Before one deletion: reads the pins again at the start of a batch and
    /// every [`PIN_BATCH`] deletions; a pin not known yet is [`PinAppeared`].
    pub async fn before_delete(&mut self) -> anyhow::Result<()> {
        if self.until_reread == 0 {
            let now = live_pins(&self.repo, &self.source, Utc::now()).await?;
            if let Some(p) = now
                .iter()
                .find(|p| !self.known.iter().any(|k| k.id == p.id))
            {
                return Err(PinAppeared { pin: p.describe() }.into());
            }
            self.until_reread = PIN_BATCH;
        }
        self.until_reread -= 1;
        Ok(())
    }
}

/// Prune: marks kept every backup a pin names (`keep[i]` for the i-th of
/// `backups`), noting each one it changed in `notes`.
pub fn keep_pinned_backups<'a>(
    backups: impl Iterator<Item = &'a BackupKey>,
    mut keep: Vec<bool>,
    pins: &[Pin],
    notes: &mut Vec<String>,
) -> Vec<bool> {
    for (key, k) in backups.zip(keep.iter_mut()) {
        if *k {
            continue;
        }
        if let Some(p) = pins.iter().find(|p| p.protects_backup(key)) {
            *k = true;
            notes.push(format!(
                "backup {} kept because {} covers it",
                key.dir(),
                p.describe()
            ));
        }
    }
    keep
}

/// Prune: the log cut `(epoch, position)` lowered to the start of the
/// oldest pinned range (a range that cannot be parsed keeps everything).
pub fn lower_cut(cut: (Epoch, LogPos), pins: &[Pin], notes: &mut Vec<String>) -> (Epoch, LogPos) {
    let mut out = cut;
    for p in pins {
        for r in &p.ranges {
            let (e, s) = match r.parsed() {
                Some((e, s, _)) => (e, s),
                None => (Epoch(0), LogPos::ZERO),
            };
            if (e, s) < out {
                out = (e, s);
                notes.push(format!(
                    "log of epoch {} from {} kept because {} covers it",
                    e.to_hex(),
                    s.to_hex(),
                    p.describe()
                ));
            }
        }
    }
    out
}
