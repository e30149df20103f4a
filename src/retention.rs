//! Retention (`pitr prune`, and `pitr run` after each scheduled backup):
//! deletes old base backups and the log only they needed.
//!
//! # Which backups stay
//!
//! A backup is *restorable* when the catalog covers its log from its start
//! (rounded down to a log-file boundary, see below) to its stop position.
//! With `keep_backups = N` the newest N restorable backups (by stop time)
//! stay; with `recovery_window = W` every backup that finished within W of
//! now stays, plus the newest restorable one that finished before now − W
//! (a restore to the start of the window needs it). Both set: the union.
//! Backups newer than the oldest kept one always stay (restorable or not:
//! their log may still be arriving). Older ones are deleted.
//!
//! # Which log goes
//!
//! Every engine reduces its backups to an engine-neutral summary (see
//! `engine`): the epoch and first log position a restore of the backup
//! reads, and the position where it is consistent. Let the oldest kept
//! backup need the log from `cut` on epoch E (PostgreSQL: its start LSN
//! rounded down to a multiple of `log_alignment`, the WAL file size, because
//! `restore_command` fetches whole WAL files and the archiver never lets a
//! segment cross a WAL-file boundary; MySQL/MariaDB: the start of its binlog
//! file, whose FORMAT_DESCRIPTION event the replay needs). Deleted: on E,
//! every segment (also redundant or conflicting ones) and gap record ending
//! at or before `cut`; every segment, gap record and index object of epochs
//! older than E. History objects are kept (a few bytes each). Epochs newer
//! than E are never touched: a kept backup's restore may continue into them.
//!
//! # Order (crash safety)
//!
//! 1. Each deleted backup: `manifest.json` first (from then on the backup is
//!    incomplete and ignored by everything), then its parts.
//! 2. Per epoch: index replacements written, then superseded index objects
//!    deleted (see `index::plan_cut`), then segments and gap records.
//! 3. Fenced objects (written after their archiver lost the writer lease,
//!    see `archive::fence`), whatever their position: no restore uses them.
//!
//! A crash between any two deletions leaves every kept backup restorable and
//! the index listing only existing segments; a re-run finishes the job.
//!
//! # Incomplete backups
//!
//! A backup directory without `manifest.json` is a backup being written, or
//! the leftover of one that was killed or crashed (or of a crashed prune).
//! It is *orphaned*, and removed (and reported), when it started before
//! the newest complete backup of its source started **and** more than
//! `incomplete_grace` ago (default 1 h). The first condition alone would
//! remove a long backup still running next to a shorter one another process
//! took; the second alone would remove a backup that takes longer than the
//! grace period. Together they only spare a backup that is either younger
//! than the grace period or the newest attempt: backups of one source run
//! one at a time (`pitr run` never starts one while another runs), so a
//! backup that a newer one overtook more than an hour ago is dead. With no
//! complete backup nothing is orphaned. `pitr status` reports the same
//! orphans (and fails its check while one exists).
//!
//! With no complete backup nothing is deleted: without one the log is all
//! there is.

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use pitr_segment::{Epoch, LogPos};
use serde::Serialize;

use crate::archive::catalog::Catalog;
use crate::archive::index::{self, list_index_keys};
use crate::archive::keys::{BackupKey, SourceName};
use crate::archive::pins::{PinAppeared, PinWatch};
use crate::engine::{list_backups, BackupSummary};
use crate::storage::Repo;

/// Default `log_alignment`: the default PostgreSQL WAL file size.
pub const DEFAULT_LOG_ALIGNMENT: u64 = 16 << 20;

/// Default `incomplete_grace`.
pub const DEFAULT_INCOMPLETE_GRACE: Duration = Duration::from_secs(3600);

/// What to keep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    pub keep_backups: Option<usize>,
    pub recovery_window: Option<Duration>,
}

impl Policy {
    /// True when the policy keeps something specific (else prune refuses).
    pub fn is_set(&self) -> bool {
        self.keep_backups.is_some() || self.recovery_window.is_some()
    }
}

/// Settings of one prune.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    pub policy: Policy,
    /// Report what would be deleted; delete nothing.
    pub dry_run: bool,
    /// Log positions are cut at multiples of this (PostgreSQL WAL file size).
    pub log_alignment: u64,
    /// Incomplete backup directories younger than this are left alone.
    pub incomplete_grace: Duration,
    /// "Now" for the recovery window and the grace period.
    pub now: DateTime<Utc>,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            policy: Policy::default(),
            dry_run: false,
            log_alignment: DEFAULT_LOG_ALIGNMENT,
            incomplete_grace: DEFAULT_INCOMPLETE_GRACE,
            now: Utc::now(),
        }
    }
}

/// Where the log of an epoch is cut.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cut {
    pub epoch: String,
    pub position: String,
}

/// What a prune did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    pub source: String,
    pub dry_run: bool,
    /// Kept backup directories, oldest first.
    pub kept_backups: Vec<String>,
    /// Deleted backup directories (complete or incomplete), oldest first.
    pub deleted_backups: Vec<String>,
    /// The incomplete (orphaned) ones among `deleted_backups`.
    pub incomplete_backups: Vec<IncompleteBackup>,
    /// The log cut on the oldest kept backup's epoch.
    pub cut: Option<Cut>,
    /// Epochs deleted entirely (history objects excepted).
    pub deleted_epochs: Vec<String>,
    /// Every object key deleted, in deletion order.
    pub deleted_keys: Vec<String>,
    /// Index objects written to replace ones that listed deleted segments.
    pub written_keys: Vec<String>,
    /// Bytes of deleted log segments.
    pub deleted_segment_bytes: u64,
    /// Fenced objects deleted (written after their archiver lost the writer
    /// lease; never used by a restore).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deleted_fenced: Vec<String>,
    /// What live restore pins kept ("... kept because restore pin <id> (host, pid, since) covers it").
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pinned: Vec<String>,
    /// Why nothing was deleted, when nothing was.
    pub note: Option<String>,
}

/// A backup directory without a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IncompleteBackup {
    pub dir: String,
    /// The start time its id records (`None`: an id pitr did not write).
    pub started: Option<DateTime<Utc>>,
}

/// Whether an incomplete backup that started at `started` is orphaned (see
/// the module documentation): it started before the newest complete backup
/// (`newest_complete_start`) and more than `grace` before `now`.
pub fn is_orphaned(
    started: Option<DateTime<Utc>>,
    newest_complete_start: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    grace: Duration,
) -> bool {
    match (started, newest_complete_start) {
        (Some(t), Some(newest)) => {
            t < newest && (now - t).to_std().unwrap_or(Duration::ZERO) >= grace
        }
        _ => false,
    }
}

/// The orphaned backup directories of a source (for `pitr status`): one
/// existence check per backup directory of `catalog`.
pub async fn orphaned_backups(
    repo: &Repo,
    catalog: &Catalog,
    now: DateTime<Utc>,
    grace: Duration,
) -> anyhow::Result<Vec<IncompleteBackup>> {
    let mut complete = Vec::new();
    let mut incomplete = Vec::new();
    for k in catalog.backups() {
        if repo.exists(&k.to_key()).await? {
            complete.push(k);
        } else {
            incomplete.push(k);
        }
    }
    let newest = complete.iter().filter_map(|k| id_time(&k.id)).max();
    Ok(incomplete
        .into_iter()
        .filter(|k| is_orphaned(id_time(&k.id), newest, now, grace))
        .map(|k| IncompleteBackup {
            dir: k.dir(),
            started: id_time(&k.id),
        })
        .collect())
}

/// What [`select`] needs to know about one complete backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub stop_time: DateTime<Utc>,
    pub restorable: bool,
}

/// Which backups to keep (pure): `true` at the index of each kept one.
/// `backups` may be in any order.
pub fn select(backups: &[Candidate], policy: &Policy, now: DateTime<Utc>) -> Vec<bool> {
    let mut order: Vec<usize> = (0..backups.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(backups[i].stop_time)); // newest first
    let mut keep = vec![false; backups.len()];
    if let Some(n) = policy.keep_backups {
        for &i in order.iter().filter(|&&i| backups[i].restorable).take(n) {
            keep[i] = true;
        }
    }
    if let Some(w) = policy.recovery_window {
        let edge = chrono::Duration::from_std(w)
            .ok()
            .and_then(|w| now.checked_sub_signed(w))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        for &i in &order {
            if backups[i].stop_time > edge {
                keep[i] = true;
            }
        }
        if let Some(&i) = order
            .iter()
            .find(|&&i| backups[i].stop_time <= edge && backups[i].restorable)
        {
            keep[i] = true;
        }
    }
    // Everything newer than the oldest kept backup stays.
    if let Some(oldest) = (0..backups.len())
        .filter(|&i| keep[i])
        .map(|i| backups[i].stop_time)
        .min()
    {
        for (i, b) in backups.iter().enumerate() {
            if b.stop_time >= oldest {
                keep[i] = true;
            }
        }
    }
    keep
}

pub use crate::engine::align_down;

/// The start time encoded in a backup id (`20240101T120000123Z`).
fn id_time(id: &str) -> Option<DateTime<Utc>> {
    NaiveDateTime::parse_from_str(id, "%Y%m%dT%H%M%S%3fZ")
        .ok()
        .map(|t| t.and_utc())
}

/// Deletes (or, dry run, records) `key`.
async fn delete(
    repo: &Repo,
    rep: &mut PruneReport,
    key: String,
    dry: bool,
    watch: &mut PinWatch,
) -> anyhow::Result<()> {
    if !dry {
        watch.before_delete().await?;
        repo.delete(&key).await?;
        tracing::info!(source = %rep.source, %key, "pruned");
    }
    rep.deleted_keys.push(key);
    Ok(())
}

/// Deletes one backup directory: the manifest first, then everything else.
async fn delete_backup(
    repo: &Repo,
    rep: &mut PruneReport,
    key: &BackupKey,
    dry: bool,
    watch: &mut PinWatch,
) -> anyhow::Result<()> {
    let manifest = key.to_key();
    let objects = repo.list(&key.dir()).await?;
    watch.batch();
    if objects.iter().any(|o| o.location.as_ref() == manifest) {
        delete(repo, rep, manifest.clone(), dry, watch).await?;
    }
    for o in objects {
        let k = o.location.to_string();
        if k != manifest {
            delete(repo, rep, k, dry, watch).await?;
        }
    }
    if !dry {
        // A local repository: what a killed writer left that is no object.
        repo.remove_leftovers(&key.dir()).await?;
    }
    rep.deleted_backups.push(key.dir());
    Ok(())
}

/// Applies the retention policy to one source.
pub async fn prune(
    repo: &Repo,
    source: &SourceName,
    opts: &PruneOptions,
) -> anyhow::Result<PruneReport> {
    let dry = opts.dry_run;
    let mut rep = PruneReport {
        source: source.to_string(),
        dry_run: dry,
        ..PruneReport::default()
    };
    if !opts.policy.is_set() {
        anyhow::bail!("no retention policy: set keep_backups and/or recovery_window");
    }
    if opts.policy.keep_backups == Some(0) {
        anyhow::bail!("keep_backups must be at least 1");
    }
    // A full listing: leftovers (redundant, conflicting) are only visible there.
    let catalog = Catalog::load_listing(repo, source).await?;
    let backups = list_backups(repo, source, catalog.backups()).await?;
    if backups.is_empty() {
        rep.note = Some(format!(
            "{source} has no complete base backup: nothing is pruned (the log is all there is)"
        ));
        return Ok(rep);
    }
    let align = opts.log_alignment;
    let candidates: Vec<Candidate> = backups
        .iter()
        .map(|b| {
            let (epoch, from, to) = b.log_needed(align);
            Candidate {
                stop_time: b.stop_time,
                restorable: catalog.segments_covering(epoch, from, to).is_ok(),
            }
        })
        .collect();
    let keep = select(&candidates, &opts.policy, opts.now);
    // ---- Restore pins (see `archive::pins`): a backup a running restore
    // planned on is kept, and the log is never cut above the start of a
    // range a live pin covers.
    let pins = crate::archive::pins::live_pins(repo, source, Utc::now()).await?;
    let keep = crate::archive::pins::keep_pinned_backups(
        backups.iter().map(|b| &b.key),
        keep,
        &pins,
        &mut rep.pinned,
    );
    // ---- end of restore pins
    let kept: Vec<&BackupSummary> = backups
        .iter()
        .zip(&keep)
        .filter_map(|(b, k)| k.then_some(b))
        .collect();
    rep.kept_backups = kept.iter().map(|b| b.key.dir()).collect();
    let Some((cut_epoch, cut)) = kept
        .iter()
        .map(|b| {
            let (epoch, from, _) = b.log_needed(align);
            (epoch, from)
        })
        .min()
    else {
        rep.note = Some("no backup would be kept; refusing to prune".into());
        return Ok(rep);
    };
    // ---- Restore pins: lower the cut to the oldest pinned log.
    let (cut_epoch, cut) =
        crate::archive::pins::lower_cut((cut_epoch, cut), &pins, &mut rep.pinned);
    // ---- end of restore pins

    // Pins are read again before every batch of deletions: a restore that
    // pins from now on stops the prune instead of losing files mid-way.
    let mut watch = PinWatch::new(repo, source, &pins);
    let deleted = delete_planned(
        repo,
        source,
        opts,
        &catalog,
        &backups,
        &keep,
        (cut_epoch, cut),
        &mut rep,
        &mut watch,
    )
    .await;
    if let Err(e) = deleted {
        match e.downcast::<PinAppeared>() {
            Ok(p) => {
                tracing::warn!(source = %source, "{p}");
                rep.note = Some(p.to_string());
                return Ok(rep);
            }
            Err(e) => return Err(e),
        }
    }
    rep.cut = Some(Cut {
        epoch: cut_epoch.to_hex(),
        position: cut.to_hex(),
    });
    if rep.deleted_keys.is_empty() {
        rep.note = Some(format!(
            "nothing to prune: {} backup(s) kept, no older backup or log",
            rep.kept_backups.len()
        ));
    }
    Ok(rep)
}

/// Deletes what [`prune`] planned: unkept and orphaned backups, the log
/// below the cut, fenced objects.
#[allow(clippy::too_many_arguments)]
async fn delete_planned(
    repo: &Repo,
    source: &SourceName,
    opts: &PruneOptions,
    catalog: &Catalog,
    backups: &[BackupSummary],
    keep: &[bool],
    (cut_epoch, cut): (Epoch, LogPos),
    rep: &mut PruneReport,
    watch: &mut PinWatch,
) -> anyhow::Result<()> {
    let dry = opts.dry_run;
    // 1. Backups.
    for (b, keep) in backups.iter().zip(keep) {
        if !keep {
            delete_backup(repo, rep, &b.key, dry, watch).await?;
        }
    }
    let newest_start = backups.iter().filter_map(|b| id_time(&b.key.id)).max();
    for k in catalog.backups() {
        if backups.iter().any(|b| &b.key == k) {
            continue;
        }
        let started = id_time(&k.id);
        if let Some(p) = watch.protecting(k) {
            rep.pinned.push(format!(
                "incomplete backup {} kept because {} covers it",
                k.dir(),
                p.describe()
            ));
            continue;
        }
        if is_orphaned(started, newest_start, opts.now, opts.incomplete_grace) {
            delete_backup(repo, rep, k, dry, watch).await?;
            rep.incomplete_backups.push(IncompleteBackup {
                dir: k.dir(),
                started,
            });
        } else {
            tracing::info!(source = %source, backup = %k.dir(), "leaving an incomplete backup alone (it may still be being written)");
        }
    }

    // 2. Log.
    let index_keys = list_index_keys(repo, source).await?;
    for epoch in catalog.epochs() {
        let Some(ec) = catalog.epoch(epoch) else {
            continue;
        };
        let whole = epoch < cut_epoch;
        if epoch > cut_epoch {
            continue;
        }
        let limit = if whole { LogPos::MAX } else { cut };
        watch.batch();
        // Index first, so it never lists a deleted segment.
        if whole {
            for k in index_keys.get(&epoch).into_iter().flatten() {
                delete(repo, rep, k.to_key(), dry, watch).await?;
            }
        } else {
            let plan = index::plan_cut(repo, source, epoch, ec.gaps(), cut).await?;
            if !dry {
                plan.write_replacements(repo).await?;
                for k in &plan.replacements {
                    tracing::info!(source = %source, key = %k.to_key(), "index object written");
                }
            }
            rep.written_keys
                .extend(plan.replacements.iter().map(|k| k.to_key()));
            for k in &plan.deletions {
                delete(repo, rep, k.to_key(), dry, watch).await?;
            }
        }
        let mut segs: Vec<_> = ec
            .segments()
            .iter()
            .chain(ec.redundant())
            .chain(ec.conflicts())
            .filter(|s| whole || s.key.end <= limit)
            .collect();
        segs.sort_by_key(|s| s.key.to_key());
        for s in segs {
            rep.deleted_segment_bytes += s.size;
            delete(repo, rep, s.key.to_key(), dry, watch).await?;
        }
        for g in ec.gaps().iter().filter(|g| whole || g.end <= limit) {
            delete(repo, rep, g.to_key(), dry, watch).await?;
        }
        if whole {
            rep.deleted_epochs.push(epoch.to_hex());
        }
    }
    // 3. Fenced objects: garbage whatever their position.
    watch.batch();
    for f in catalog.fenced() {
        let key = f.key();
        if rep.deleted_keys.contains(&key) {
            continue;
        }
        delete(repo, rep, key.clone(), dry, watch).await?;
        rep.deleted_fenced.push(key);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap_or_default()
    }

    fn c(s: i64, restorable: bool) -> Candidate {
        Candidate {
            stop_time: t(s),
            restorable,
        }
    }

    #[test]
    fn keep_newest_restorable() {
        let b = [c(10, true), c(20, true), c(30, false), c(40, true)];
        let p = Policy {
            keep_backups: Some(2),
            recovery_window: None,
        };
        // Newest two restorable: 40 and 20; 30 is newer than 20 so it stays.
        assert_eq!(select(&b, &p, t(100)), vec![false, true, true, true]);
    }

    #[test]
    fn window_keeps_the_one_before_it() {
        let b = [c(10, true), c(20, true), c(30, true), c(90, true)];
        let p = Policy {
            keep_backups: None,
            recovery_window: Some(Duration::from_secs(50)),
        };
        // Edge at 50: 90 is inside; 30 is the newest before the edge.
        assert_eq!(select(&b, &p, t(100)), vec![false, false, true, true]);
        // Union with keep 3.
        let p = Policy {
            keep_backups: Some(3),
            ..p
        };
        assert_eq!(select(&b, &p, t(100)), vec![false, true, true, true]);
    }

    #[test]
    fn backup_ids_carry_their_start_time() {
        assert_eq!(
            id_time("20240101T120000123Z"),
            DateTime::from_timestamp_millis(1_704_110_400_123)
        );
    }
}
