//! Compaction: merge runs of small consecutive segments into one larger
//! segment, never leaving a range uncovered.
//!
//! A run is a strictly contiguous stretch of the resolved chain of one epoch
//! (no hole, no gap) of segments each smaller than the target, totalling at
//! most `target_size` stored bytes, whose commits are all older than
//! `min_age`, and which does not straddle a boundary of a valid roll-up index
//! object. For each run:
//!
//! 1. GET and fully verify every small segment (`pitr_segment::decode`:
//!    every frame CRC and the whole-object checksum), check that header and
//!    footer agree with the key, and encode the concatenated payload as one
//!    segment (commit-time range = min/max, record count = sum), written
//!    create-if-absent — a retry produces identical bytes.
//! 2. If a valid index object lists the small segments, write its
//!    replacement listing the merged one (see `index`).
//! 3. Delete the small segments.
//!
//! A crash after 1 or 2 leaves small segments wholly covered by the merged
//! one: the catalog resolves them as redundant (never double-counted), the
//! index still lists only objects that exist, and the next compaction
//! finishes steps 2 and 3 for every redundant segment before merging anything
//! new.

use std::time::Duration;

use bytes::Bytes;
use pitr_segment::{encode, SegmentHeader, TimestampMicros, WriterOptions};

use crate::archive::catalog::{Catalog, CatalogError, EpochCatalog, SegmentEntry};
use crate::archive::index::{self, IndexError, IndexView};
use crate::archive::keys::{IndexKey, SegmentKey, SourceName};
use crate::archive::segment_read::{read_segment, SegmentReadError};
use crate::storage::{Repo, StorageError};

/// Compaction settings.
#[derive(Debug, Clone)]
pub struct CompactionOptions {
    /// Upper bound on the stored size of a merged segment.
    pub target_size: u64,
    /// Only segments whose commits are all older than this are merged.
    pub min_age: Duration,
    /// Writer settings for merged segments.
    pub writer: WriterOptions,
}

impl Default for CompactionOptions {
    fn default() -> Self {
        CompactionOptions {
            target_size: 64 * 1024 * 1024,
            min_age: Duration::from_secs(3600),
            writer: WriterOptions::default(),
        }
    }
}

/// Errors of a compaction run. Nothing is ever left uncovered by an error.
#[derive(Debug, thiserror::Error)]
pub enum CompactionError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("reading the restore pins: {0}")]
    Pins(String),
    #[error("segment {key} failed verification: {reason}; it was left untouched")]
    Invalid { key: String, reason: String },
    #[error("segment {key} was left untouched: {reason}")]
    KeyMissing { key: String, reason: String },
}

/// What a compaction run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactionReport {
    /// Merged segments written.
    pub merged: Vec<SegmentKey>,
    /// Small (or leftover) segments deleted.
    pub deleted: Vec<SegmentKey>,
    /// Replacement index objects written.
    pub index_replacements: Vec<IndexKey>,
    /// Runs left alone because a segment failed verification (key, reason).
    pub skipped: Vec<(String, String)>,
}

/// One unit of work: `cover` replaces `parts` (which it wholly covers).
#[derive(Debug, Clone)]
struct Group {
    cover: Option<SegmentEntry>,
    parts: Vec<SegmentEntry>,
}

/// Runs compaction of `source` with commit times judged against `now`.
pub async fn compact(
    repo: &Repo,
    source: &SourceName,
    opts: &CompactionOptions,
    now: TimestampMicros,
) -> Result<CompactionReport, CompactionError> {
    // A full listing: leftovers are only visible there, not through the index.
    let catalog = Catalog::load_listing(repo, source).await?;
    let cutoff = now
        .0
        .saturating_sub(i64::try_from(opts.min_age.as_micros()).unwrap_or(i64::MAX));
    let mut report = CompactionReport::default();
    for epoch in catalog.epochs() {
        let Some(ec) = catalog.epoch(epoch) else {
            continue;
        };
        let view = index::view(repo, source, epoch, ec.gaps()).await?;
        let mut groups = leftovers(ec);
        groups.extend(plan_runs(ec, &view, opts.target_size, cutoff));
        for g in groups {
            run_group(repo, source, ec, g, opts, &mut report).await?;
        }
    }
    Ok(report)
}

/// Redundant segments, grouped under the chain segment that covers them.
fn leftovers(ec: &EpochCatalog) -> Vec<Group> {
    let chain = ec.segments();
    let mut groups: Vec<Group> = Vec::new();
    for r in ec.redundant() {
        let i = chain.partition_point(|s| s.key.end <= r.key.start);
        let Some(c) = chain
            .get(i)
            .filter(|c| c.key.start <= r.key.start && r.key.end <= c.key.end)
        else {
            continue;
        };
        match groups.last_mut() {
            Some(g) if g.cover.as_ref().map(|x| &x.key) == Some(&c.key) => g.parts.push(r.clone()),
            _ => groups.push(Group {
                cover: Some(c.clone()),
                parts: vec![r.clone()],
            }),
        }
    }
    groups
}

/// Runs of small contiguous old-enough segments to merge.
fn plan_runs(ec: &EpochCatalog, view: &IndexView, target: u64, cutoff: i64) -> Vec<Group> {
    let mut groups = Vec::new();
    let mut cur: Vec<SegmentEntry> = Vec::new();
    let mut total = 0u64;
    let mut flush = |cur: &mut Vec<SegmentEntry>, total: &mut u64| {
        if cur.len() >= 2 {
            groups.push(Group {
                cover: None,
                parts: std::mem::take(cur),
            });
        }
        cur.clear();
        *total = 0;
    };
    for s in ec.segments() {
        let old_enough = s.key.tmax.is_none_or(|t| t.0 <= cutoff);
        if !old_enough || s.size >= target {
            flush(&mut cur, &mut total);
            continue;
        }
        let extends = cur.last().is_some_and(|l| l.key.end == s.key.start)
            && total + s.size <= target
            && view.fits(cur[0].key.start, s.key.end);
        if !extends {
            flush(&mut cur, &mut total);
            if !view.fits(s.key.start, s.key.end) {
                continue;
            }
        }
        total += s.size;
        cur.push(s.clone());
    }
    flush(&mut cur, &mut total);
    groups
}

fn invalid(key: &SegmentKey, reason: impl Into<String>) -> CompactionError {
    CompactionError::Invalid {
        key: key.to_key(),
        reason: reason.into(),
    }
}

/// Reads, verifies and merges `parts` into one encoded segment.
async fn merge(
    repo: &Repo,
    parts: &[SegmentEntry],
    opts: &CompactionOptions,
) -> Result<(SegmentEntry, Bytes), CompactionError> {
    let mut header: Option<SegmentHeader> = None;
    let mut payload = Vec::new();
    let (mut tmin, mut tmax, mut records) =
        (None::<TimestampMicros>, None::<TimestampMicros>, 0u64);
    let mut expect_start = None;
    for p in parts {
        let k = &p.key;
        let (meta, data) = read_segment(repo, k).await.map_err(|e| match e {
            SegmentReadError::Storage(e) => CompactionError::Storage(e),
            SegmentReadError::Gone { key } => StorageError::NotFound { key }.into(),
            SegmentReadError::Corrupt { reason, .. } => invalid(k, reason),
            SegmentReadError::KeyMissing { key, reason } => {
                CompactionError::KeyMissing { key, reason }
            }
            SegmentReadError::Mismatch { .. } => {
                invalid(k, "header/footer positions differ from the key")
            }
        })?;
        let (h, f) = (&meta.header, &meta.footer);
        if expect_start.is_some_and(|e| e != k.start) {
            return Err(invalid(k, "not contiguous with the previous segment"));
        }
        if let Some(first) = &header {
            if first.engine != h.engine || first.source_id != h.source_id || first.codec != h.codec
            {
                return Err(invalid(
                    k,
                    "engine, source id or codec differs from its neighbours",
                ));
            }
        } else {
            header = Some(h.clone());
        }
        expect_start = Some(f.end);
        payload.extend_from_slice(&data);
        tmin = min_opt(min_opt(tmin, f.first_commit), k.tmin);
        tmax = max_opt(max_opt(tmax, f.last_commit), k.tmax);
        records += f.record_count;
    }
    let (Some(header), Some(first), Some(last)) = (header, parts.first(), parts.last()) else {
        return Err(CompactionError::Invalid {
            key: String::new(),
            reason: "empty run".into(),
        });
    };
    let end = last.key.end;
    // Merged segments are sealed with the repository's current data key
    // (plain in a plain repository), whatever their inputs were sealed with.
    let header = SegmentHeader {
        key_id: 0,
        ..header
    };
    let writer =
        opts.writer
            .clone()
            .sealed_with(repo.keys().current.clone(), &header, [&payload[..]]);
    let bytes = encode(header, &payload, end, tmin, tmax, records, writer)
        .map_err(|e| invalid(&first.key, format!("re-encoding failed: {e}")))?;
    // The output carries the newest writer generation of its inputs, so it
    // is fenced exactly when one of them would be (see `lease`).
    let generation = parts.iter().map(|p| p.key.generation).max().unwrap_or(0);
    let key = SegmentKey {
        end,
        tmin,
        tmax,
        generation,
        ..first.key.clone()
    };
    let entry = SegmentEntry {
        key,
        size: bytes.len() as u64,
    };
    Ok((entry, Bytes::from(bytes)))
}

fn min_opt(a: Option<TimestampMicros>, b: Option<TimestampMicros>) -> Option<TimestampMicros> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

fn max_opt(a: Option<TimestampMicros>, b: Option<TimestampMicros>) -> Option<TimestampMicros> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

async fn run_group(
    repo: &Repo,
    source: &SourceName,
    ec: &EpochCatalog,
    g: Group,
    opts: &CompactionOptions,
    report: &mut CompactionReport,
) -> Result<(), CompactionError> {
    let cover = match g.cover {
        Some(c) => c,
        None => {
            let (entry, bytes) = match merge(repo, &g.parts, opts).await {
                Ok(m) => m,
                Err(CompactionError::Invalid { key, reason }) => {
                    tracing::warn!(%key, %reason, "not compacting a run with an invalid segment");
                    report.skipped.push((key, reason));
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            repo.put_if_absent(&entry.key.to_key(), bytes).await?;
            report.merged.push(entry.key.clone());
            entry
        }
    };
    let replaced: Vec<SegmentKey> = g.parts.iter().map(|p| p.key.clone()).collect();
    if let Some(k) = index::replace_in_index(repo, source, ec.gaps(), &replaced, &cover).await? {
        report.index_replacements.push(k);
    }
    // Restore pins: small segments inside a pinned range are merged but not
    // deleted. Read again before every group's deletions, so a restore that
    // pinned after this compaction started loses nothing mid-way.
    let pins = crate::archive::pins::live_pins(repo, source, chrono::Utc::now())
        .await
        .map_err(|e| CompactionError::Pins(format!("{e:#}")))?;
    for p in &g.parts {
        if let Some(pin) = pins
            .iter()
            .find(|pin| pin.protects_range(p.key.epoch, p.key.start, p.key.end))
        {
            tracing::info!(key = %p.key.to_key(), "segment kept because {} covers it", pin.describe());
            continue;
        }
        repo.delete(&p.key.to_key()).await?;
        report.deleted.push(p.key.clone());
    }
    Ok(())
}
