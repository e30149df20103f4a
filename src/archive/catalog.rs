//! The catalog: what one source's repository holds, as a time index.
//!
//! Built from the object keys alone (positions and commit-time ranges are in
//! the segment keys, see `keys`), so loading never reads a segment body. The
//! roll-up `index` replaces most of the listing for long histories.
//!
//! # Resolution
//!
//! Per epoch, segments are sorted by `(start asc, end desc)` and resolved
//! greedily into the minimal chain: a segment wholly inside the previous
//! chosen one is *redundant* (e.g. small segments left over by a compaction
//! that crashed before deleting them); a segment starting at or after the
//! chain's end extends it (equal = contiguous, after = a hole); a segment that
//! starts inside the chain but ends beyond it is a *conflict* (divergent
//! history) and is never used. Nothing is double-counted.
//!
//! # Fencing
//!
//! Before resolution, segments and gap records written by a writer that had
//! already lost its lease are set aside as *fenced* (the rule is in
//! `fence`; the takeover records come from one listing of `<source>/lease/`).
//! They never enter the chain, so restore never uses them; [`Catalog::fenced`]
//! lists them for `verify`, `status` and `prune`.
//!
//! # Queries (n = segments in the epoch, k = segments returned)
//! * [`Catalog::segments_covering`] — O(log n + k), the first hole is an error;
//! * [`Catalog::segment_at_time`], [`Catalog::first_commit_after`] — O(log n),
//!   over running min/max of the keys' commit times (commit times are not
//!   strictly monotone across segments; the running extremes make them so);
//! * [`Catalog::tail`], [`Catalog::window`] — O(1), precomputed.

use std::collections::BTreeMap;

use pitr_segment::{Epoch, LogPos, TimestampMicros};

use crate::archive::fence::{Fences, Takeover};
use crate::archive::index;
use crate::archive::keys::{self, BackupKey, GapKey, HistoryKey, SegmentKey, SourceName};
use crate::storage::{Repo, StorageError};

pub use crate::archive::keys::SegmentEntry;

/// Errors loading a catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// A requested range is not fully covered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoverageError {
    #[error("epoch {epoch}: positions {start}..{end} are a recorded gap (lost log); a restore cannot cross it")]
    Gap {
        epoch: Epoch,
        start: LogPos,
        end: LogPos,
    },
    #[error(
        "epoch {epoch}: no segment covers positions {start}..{end}; the archive has a hole there"
    )]
    Missing {
        epoch: Epoch,
        start: LogPos,
        end: LogPos,
    },
    #[error("epoch {epoch} is not in the repository")]
    UnknownEpoch { epoch: Epoch },
}

/// Counts for `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CatalogStats {
    pub epochs: usize,
    pub segments: usize,
    pub bytes: u64,
    pub redundant_segments: usize,
    pub redundant_bytes: u64,
    pub conflicting_segments: usize,
    pub gaps: usize,
    pub backups: usize,
    /// Segments and gap records fenced off (written after losing the lease).
    pub fenced_objects: usize,
    pub fenced_bytes: u64,
}

/// What a fenced object is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FencedKind {
    Segment(SegmentEntry),
    Gap(GapKey),
}

/// An object written by generation `generation` after `by` took over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FencedObject {
    pub object: FencedKind,
    pub by: Takeover,
}

impl FencedObject {
    pub fn key(&self) -> String {
        match &self.object {
            FencedKind::Segment(s) => s.key.to_key(),
            FencedKind::Gap(g) => g.to_key(),
        }
    }

    pub fn generation(&self) -> u32 {
        match &self.object {
            FencedKind::Segment(s) => s.key.generation,
            FencedKind::Gap(g) => g.generation,
        }
    }

    pub fn size(&self) -> u64 {
        match &self.object {
            FencedKind::Segment(s) => s.size,
            FencedKind::Gap(_) => 0,
        }
    }

    /// "fenced (written by generation g after generation h took over at …)"
    pub fn describe(&self) -> String {
        format!(
            "fenced (written by generation {} after generation {} took over at epoch {} position {})",
            self.generation(),
            self.by.generation,
            self.by.epoch.0,
            self.by.position.to_hex()
        )
    }
}

/// Sets aside the fenced segments and gaps of one epoch.
fn split_fenced(
    fences: &Fences,
    segments: Vec<SegmentEntry>,
    gaps: Vec<GapKey>,
    fenced: &mut Vec<FencedObject>,
) -> (Vec<SegmentEntry>, Vec<GapKey>) {
    if fences.is_empty() {
        return (segments, gaps);
    }
    let mut keep_s = Vec::with_capacity(segments.len());
    for s in segments {
        match fences.fenced_by(s.key.generation, s.key.epoch, s.key.end) {
            Some(t) => fenced.push(FencedObject {
                object: FencedKind::Segment(s),
                by: *t,
            }),
            None => keep_s.push(s),
        }
    }
    let mut keep_g = Vec::with_capacity(gaps.len());
    for g in gaps {
        match fences.fenced_by(g.generation, g.epoch, g.end) {
            Some(t) => fenced.push(FencedObject {
                object: FencedKind::Gap(g),
                by: *t,
            }),
            None => keep_g.push(g),
        }
    }
    (keep_s, keep_g)
}

/// One epoch's resolved segments.
#[derive(Debug, Clone, Default)]
pub struct EpochCatalog {
    chain: Vec<SegmentEntry>,
    redundant: Vec<SegmentEntry>,
    conflicts: Vec<SegmentEntry>,
    gaps: Vec<GapKey>,
    history: Vec<HistoryKey>,
    /// Running max of `tmax` over `chain[..=i]` (`i64::MIN` = no commit yet).
    run_max_tmax: Vec<i64>,
    /// Min of `tmin` over `chain[i..]` (`i64::MAX` = no commit left).
    suffix_min_tmin: Vec<i64>,
    /// Where an archiver resumes: end of the prefix that is contiguous
    /// (holes covered by gap records count as contiguous).
    tail: Option<LogPos>,
    /// Number of chain segments strictly contiguous from the oldest one.
    first_run_len: usize,
}

impl EpochCatalog {
    /// Resolves `segments` (any order, overlaps allowed) plus `gaps`/`history`.
    pub fn build(
        mut segments: Vec<SegmentEntry>,
        mut gaps: Vec<GapKey>,
        mut history: Vec<HistoryKey>,
    ) -> EpochCatalog {
        segments.sort_by(|a, b| {
            (a.key.start, std::cmp::Reverse(a.key.end))
                .cmp(&(b.key.start, std::cmp::Reverse(b.key.end)))
        });
        segments.dedup_by(|a, b| a.key == b.key);
        let (mut chain, mut redundant, mut conflicts) = (Vec::new(), Vec::new(), Vec::new());
        for s in segments {
            match chain.last() {
                Some(last) if s.key.end <= last_end(last) => redundant.push(s),
                Some(last) if s.key.start < last_end(last) => conflicts.push(s),
                _ => chain.push(s),
            }
        }
        gaps.sort_by_key(|g| (g.start, g.end));
        history.sort_by(|a, b| a.name.cmp(&b.name));

        let mut run_max_tmax = Vec::with_capacity(chain.len());
        let mut m = i64::MIN;
        for s in &chain {
            if let Some(t) = s.key.tmax {
                m = m.max(t.0);
            }
            run_max_tmax.push(m);
        }
        let mut suffix_min_tmin = vec![i64::MAX; chain.len()];
        let mut m = i64::MAX;
        for (i, s) in chain.iter().enumerate().rev() {
            if let Some(t) = s.key.tmin {
                m = m.min(t.0);
            }
            suffix_min_tmin[i] = m;
        }
        let first_run_len = match chain.first() {
            None => 0,
            Some(_) => {
                1 + chain
                    .windows(2)
                    .take_while(|w| w[1].key.start == w[0].key.end)
                    .count()
            }
        };
        let mut cat = EpochCatalog {
            chain,
            redundant,
            conflicts,
            gaps,
            history,
            run_max_tmax,
            suffix_min_tmin,
            tail: None,
            first_run_len,
        };
        cat.tail = cat.compute_tail();
        cat
    }

    fn gap_covering(&self, start: LogPos, end: LogPos) -> Option<&GapKey> {
        // The last gap starting at or before `start`.
        let i = self.gaps.partition_point(|g| g.start <= start);
        let g = self.gaps[..i].last()?;
        (g.end >= end).then_some(g)
    }

    fn gap_at(&self, pos: LogPos) -> Option<&GapKey> {
        let i = self.gaps.partition_point(|g| g.start <= pos);
        self.gaps[..i].last().filter(|g| g.end > pos)
    }

    fn compute_tail(&self) -> Option<LogPos> {
        let first = self.chain.first()?;
        let mut end = first.key.end;
        for s in &self.chain[1..] {
            if s.key.start != end && self.gap_covering(end, s.key.start).is_none() {
                break;
            }
            end = s.key.end;
        }
        // A gap recorded right at the tail moves it (the log before it is lost).
        while let Some(g) = self.gap_at(end) {
            end = g.end;
        }
        Some(end)
    }

    fn hole(&self, epoch: Epoch, start: LogPos, end: LogPos) -> CoverageError {
        match self.gap_at(start) {
            Some(g) => CoverageError::Gap {
                epoch,
                start: g.start,
                end: g.end,
            },
            None => CoverageError::Missing { epoch, start, end },
        }
    }

    fn covering(
        &self,
        epoch: Epoch,
        from: LogPos,
        to: LogPos,
    ) -> Result<Vec<SegmentKey>, CoverageError> {
        let mut out = Vec::new();
        if to <= from {
            return Ok(out);
        }
        let mut i = self.chain.partition_point(|s| s.key.end <= from);
        let Some(first) = self.chain.get(i) else {
            return Err(self.hole(epoch, from, to));
        };
        if first.key.start > from {
            return Err(self.hole(epoch, from, first.key.start.min(to)));
        }
        let mut end = first.key.end;
        out.push(first.key.clone());
        while end < to {
            i += 1;
            match self.chain.get(i) {
                Some(s) if s.key.start == end => {
                    end = s.key.end;
                    out.push(s.key.clone());
                }
                Some(s) => return Err(self.hole(epoch, end, s.key.start.min(to))),
                None => return Err(self.hole(epoch, end, to)),
            }
        }
        Ok(out)
    }

    /// The resolved chain, sorted by start (holes possible between runs).
    pub fn segments(&self) -> &[SegmentEntry] {
        &self.chain
    }

    /// Segments wholly covered by others (compaction leftovers).
    pub fn redundant(&self) -> &[SegmentEntry] {
        &self.redundant
    }

    /// Segments partially overlapping the chain (never used).
    pub fn conflicts(&self) -> &[SegmentEntry] {
        &self.conflicts
    }

    pub fn gaps(&self) -> &[GapKey] {
        &self.gaps
    }

    pub fn history(&self) -> &[HistoryKey] {
        &self.history
    }

    /// Contiguous runs `[start, end)` of the chain.
    pub fn runs(&self) -> Vec<(LogPos, LogPos)> {
        let mut runs: Vec<(LogPos, LogPos)> = Vec::new();
        for s in &self.chain {
            match runs.last_mut() {
                Some(r) if r.1 == s.key.start => r.1 = s.key.end,
                _ => runs.push((s.key.start, s.key.end)),
            }
        }
        runs
    }
}

fn last_end(e: &SegmentEntry) -> LogPos {
    e.key.end
}

/// Everything the repository holds for one source.
#[derive(Debug, Clone)]
pub struct Catalog {
    source: SourceName,
    epochs: BTreeMap<Epoch, EpochCatalog>,
    backups: Vec<BackupKey>,
    unrecognized: Vec<String>,
    fences: Fences,
    fenced: Vec<FencedObject>,
}

impl Catalog {
    /// Loads the catalog, using roll-up index objects where they are valid
    /// and listing only what they do not cover.
    pub async fn load(repo: &Repo, source: &SourceName) -> Result<Catalog, CatalogError> {
        Catalog::load_inner(repo, source, true).await
    }

    /// Loads the catalog from a full listing, ignoring index objects.
    pub async fn load_listing(repo: &Repo, source: &SourceName) -> Result<Catalog, CatalogError> {
        Catalog::load_inner(repo, source, false).await
    }

    async fn load_inner(
        repo: &Repo,
        source: &SourceName,
        use_index: bool,
    ) -> Result<Catalog, CatalogError> {
        let dirs = repo.list_dirs(&keys::source_prefix(source)).await?;
        let epochs: Vec<Epoch> = dirs
            .iter()
            .filter_map(|d| keys::parse_epoch_dir(source, d))
            .collect();
        let has = |name: &str| dirs.iter().any(|d| d == &format!("{source}/{name}"));
        let index_keys = if use_index && has("index") {
            index::list_index_keys(repo, source).await?
        } else {
            BTreeMap::new()
        };
        let mut unrecognized = Vec::new();
        let fences = if has("lease") {
            Fences::new(
                repo.list(&keys::lease_prefix(source))
                    .await?
                    .iter()
                    .filter_map(|m| keys::parse_takeover_key(source, m.location.as_ref()))
                    .collect(),
            )
        } else {
            Fences::default()
        };
        let mut fenced = Vec::new();
        let mut out = BTreeMap::new();
        for epoch in epochs {
            let gaps = list_parsed(
                repo,
                &keys::gaps_prefix(source, epoch),
                &mut unrecognized,
                |k| GapKey::parse(k).ok(),
            )
            .await?;
            let history = list_parsed(
                repo,
                &keys::history_prefix(source, epoch),
                &mut unrecognized,
                |k| HistoryKey::parse(k).ok(),
            )
            .await?;
            let mut segments = Vec::new();
            let mut after = None;
            if let Some(ikeys) = index_keys.get(&epoch) {
                let view = index::IndexView::new(ikeys.clone(), &gaps);
                if let Some(loaded) = view.load_chain(repo, source).await {
                    after = loaded.last_segment_key.clone();
                    segments = loaded.segments;
                }
            }
            let prefix = keys::log_prefix(source, epoch);
            let listed = match &after {
                Some(k) => repo.list_after(&prefix, k).await?,
                None => repo.list(&prefix).await?,
            };
            for m in listed {
                let k = m.location.to_string();
                match SegmentKey::parse(&k) {
                    Ok(key) if key.epoch == epoch => {
                        segments.push(SegmentEntry { key, size: m.size })
                    }
                    _ => unrecognized.push(k),
                }
            }
            let (segments, gaps) = split_fenced(&fences, segments, gaps, &mut fenced);
            out.insert(epoch, EpochCatalog::build(segments, gaps, history));
        }
        let backups = if has("backups") {
            repo.list_dirs(&keys::backups_prefix(source))
                .await?
                .into_iter()
                .filter_map(|d| BackupKey::parse_dir(&d).ok())
                .collect()
        } else {
            Vec::new()
        };
        if !unrecognized.is_empty() {
            tracing::warn!(source = %source, count = unrecognized.len(), first = %unrecognized[0], "ignoring objects that do not follow the key layout");
        }
        Ok(Catalog {
            source: source.clone(),
            epochs: out,
            backups,
            unrecognized,
            fences,
            fenced,
        })
    }

    /// Builds a catalog from already-known keys (pure; tests and planning).
    pub fn from_parts(
        source: SourceName,
        segments: Vec<SegmentEntry>,
        gaps: Vec<GapKey>,
        history: Vec<HistoryKey>,
        backups: Vec<BackupKey>,
    ) -> Catalog {
        Catalog::from_parts_fenced(source, segments, gaps, history, backups, Vec::new())
    }

    /// [`Catalog::from_parts`] with the takeover records of the source.
    pub fn from_parts_fenced(
        source: SourceName,
        segments: Vec<SegmentEntry>,
        gaps: Vec<GapKey>,
        history: Vec<HistoryKey>,
        backups: Vec<BackupKey>,
        takeovers: Vec<Takeover>,
    ) -> Catalog {
        let fences = Fences::new(takeovers);
        let mut fenced = Vec::new();
        type Parts = (Vec<SegmentEntry>, Vec<GapKey>, Vec<HistoryKey>);
        let mut per: BTreeMap<Epoch, Parts> = BTreeMap::new();
        for s in segments {
            per.entry(s.key.epoch).or_default().0.push(s);
        }
        for g in gaps {
            per.entry(g.epoch).or_default().1.push(g);
        }
        for h in history {
            per.entry(h.epoch).or_default().2.push(h);
        }
        let epochs = per
            .into_iter()
            .map(|(e, (s, g, h))| {
                let (s, g) = split_fenced(&fences, s, g, &mut fenced);
                (e, EpochCatalog::build(s, g, h))
            })
            .collect();
        let mut backups = backups;
        backups.sort_by(|a, b| (a.start, &a.id).cmp(&(b.start, &b.id)));
        Catalog {
            source,
            epochs,
            backups,
            unrecognized: Vec::new(),
            fences,
            fenced,
        }
    }

    /// Segments and gap records written after their writer lost the lease
    /// (never used; see the module docs).
    pub fn fenced(&self) -> &[FencedObject] {
        &self.fenced
    }

    /// The takeover records of the source.
    pub fn fences(&self) -> &Fences {
        &self.fences
    }

    pub fn source(&self) -> &SourceName {
        &self.source
    }

    pub fn epochs(&self) -> Vec<Epoch> {
        self.epochs.keys().copied().collect()
    }

    pub fn epoch(&self, epoch: Epoch) -> Option<&EpochCatalog> {
        self.epochs.get(&epoch)
    }

    /// Base backups (manifest keys), sorted by start position.
    pub fn backups(&self) -> &[BackupKey] {
        &self.backups
    }

    /// Keys under the source that do not follow the layout (ignored).
    pub fn unrecognized(&self) -> &[String] {
        &self.unrecognized
    }

    /// The chain of segments covering `[from, to)` of `epoch`, or the first hole.
    pub fn segments_covering(
        &self,
        epoch: Epoch,
        from: LogPos,
        to: LogPos,
    ) -> Result<Vec<SegmentKey>, CoverageError> {
        self.epochs
            .get(&epoch)
            .ok_or(CoverageError::UnknownEpoch { epoch })?
            .covering(epoch, from, to)
    }

    /// The last segment of `epoch` holding a commit at or before `t`.
    pub fn segment_at_time(&self, epoch: Epoch, t: TimestampMicros) -> Option<&SegmentKey> {
        let e = self.epochs.get(&epoch)?;
        let i = e.suffix_min_tmin.partition_point(|&m| m <= t.0);
        i.checked_sub(1).map(|i| &e.chain[i].key)
    }

    /// The first segment of `epoch` holding a commit strictly after `t` (a
    /// restore to `t` needs the log up to and including that commit).
    pub fn first_commit_after(&self, epoch: Epoch, t: TimestampMicros) -> Option<&SegmentKey> {
        let e = self.epochs.get(&epoch)?;
        let i = e.run_max_tmax.partition_point(|&m| m <= t.0);
        e.chain.get(i).map(|s| &s.key)
    }

    /// Where an archiver of `epoch` resumes: the end of the contiguous
    /// prefix of the chain (recorded gaps bridge holes).
    pub fn tail(&self, epoch: Epoch) -> Option<LogPos> {
        self.epochs.get(&epoch)?.tail
    }

    /// The furthest point any segment or gap record reaches in the latest
    /// epoch that has one: what a new lease holder records as its takeover
    /// point (everything it saw is then never fenced).
    pub fn high_water(&self) -> Option<(Epoch, LogPos)> {
        self.epochs.iter().rev().find_map(|(epoch, e)| {
            let ends = e.chain.iter().chain(&e.redundant).chain(&e.conflicts);
            ends.map(|s| s.key.end)
                .chain(e.gaps.iter().map(|g| g.end))
                .max()
                .map(|end| (*epoch, end))
        })
    }

    /// (earliest, latest) commit time continuously covered from the oldest
    /// segment of `epoch` without any hole or gap.
    pub fn window(&self, epoch: Epoch) -> Option<(TimestampMicros, TimestampMicros)> {
        let e = self.epochs.get(&epoch)?;
        let run = &e.chain[..e.first_run_len];
        let lo = run.iter().filter_map(|s| s.key.tmin).min()?;
        let hi = run.iter().filter_map(|s| s.key.tmax).max()?;
        Some((lo, hi))
    }

    pub fn stats(&self) -> CatalogStats {
        let mut s = CatalogStats {
            epochs: self.epochs.len(),
            backups: self.backups.len(),
            ..CatalogStats::default()
        };
        for e in self.epochs.values() {
            s.segments += e.chain.len();
            s.bytes += e.chain.iter().map(|x| x.size).sum::<u64>();
            s.redundant_segments += e.redundant.len();
            s.redundant_bytes += e.redundant.iter().map(|x| x.size).sum::<u64>();
            s.conflicting_segments += e.conflicts.len();
            s.gaps += e.gaps.len();
        }
        s.fenced_objects = self.fenced.len();
        s.fenced_bytes = self.fenced.iter().map(FencedObject::size).sum();
        s
    }
}

async fn list_parsed<T>(
    repo: &Repo,
    prefix: &str,
    unrecognized: &mut Vec<String>,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Vec<T>, StorageError> {
    let mut out = Vec::new();
    for m in repo.list(prefix).await? {
        let k = m.location.to_string();
        match parse(&k) {
            Some(v) => out.push(v),
            None => unrecognized.push(k),
        }
    }
    Ok(out)
}
