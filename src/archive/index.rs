//! Roll-up index objects: a cache of the segment listing, so loading the
//! catalog of a long history costs a handful of requests.
//!
//! Key: `<source>/index/<epoch>/<first>-<last>_<level>-<generation>.idx.json`
//! (see `keys`). Body (JSON):
//!
//! ```json
//! {"format":1,"epoch":"<16 hex>","first":"<32 hex>","last":"<32 hex>",
//!  "level":0,"generation":0,"segments":[["<segment file name>",<size>],...]}
//! ```
//!
//! * A level-0 object lists [`SEGMENTS_PER_INDEX`] consecutive segments of
//!   the resolved chain; a level-`L+1` object is the concatenation of
//!   [`FAN_OUT`] consecutive level-`L` objects. Objects nest (they are built
//!   only from consecutive chain objects), so loading 100,000 segments is one
//!   GET of one level-2 object.
//! * Consecutive means contiguous, or separated by a hole that a recorded gap
//!   covers exactly. Roll-up never indexes across an unexplained hole, so a
//!   late segment filling a hole is always after the indexed range.
//! * Objects are immutable and written create-if-absent. When compaction
//!   replaces segments inside an indexed range, it writes a replacement
//!   object for the smallest valid object containing them, with a higher
//!   `generation`. An object is **valid** unless an overlapping object has a
//!   strictly higher generation; invalid objects are ignored.
//! * Loading: LIST `index/` once; per epoch, take the chain of valid objects
//!   from the lowest position (largest first), GET them, then LIST `log/`
//!   after the last indexed segment key. Any unreadable or inconsistent
//!   index object makes the loader fall back to a plain listing of the epoch:
//!   the index is only a cache.
//!
//! Assumptions (documented contract): segments are never added before the
//! first indexed position of an epoch, and nothing but compaction (which
//! maintains the index) deletes indexed segments. Roll-up and compaction of a
//! source must not run concurrently.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use pitr_segment::{Epoch, LogPos};
use serde::{Deserialize, Serialize};

use crate::archive::gaps::hex;
use crate::archive::keys::{self, GapKey, IndexKey, SegmentEntry, SegmentKey, SourceName};
use crate::storage::{Repo, StorageError};

/// Segments per level-0 index object.
pub const SEGMENTS_PER_INDEX: usize = 1000;
/// Level-`L` objects per level-`L+1` object.
pub const FAN_OUT: usize = 10;
const FORMAT: u32 = 1;
/// Index objects fetched concurrently while loading.
const GET_CONCURRENCY: usize = 8;

/// Errors of index maintenance.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("index object {key} is unusable: {reason}; delete it and run the roll-up again")]
    Corrupt { key: String, reason: String },
    #[error("segments {start}..{end} of epoch {epoch} straddle an index object boundary; compaction must not merge across it")]
    CrossesBoundary {
        epoch: Epoch,
        start: LogPos,
        end: LogPos,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct IndexBody {
    format: u32,
    #[serde(serialize_with = "hex::ser_epoch", deserialize_with = "hex::de_epoch")]
    epoch: Epoch,
    #[serde(serialize_with = "hex::ser_pos", deserialize_with = "hex::de_pos")]
    first: LogPos,
    #[serde(serialize_with = "hex::ser_pos", deserialize_with = "hex::de_pos")]
    last: LogPos,
    level: u8,
    generation: u32,
    pub(crate) segments: Vec<(String, u64)>,
}

/// Lists every index key of `source`, grouped by epoch.
pub async fn list_index_keys(
    repo: &Repo,
    source: &SourceName,
) -> Result<BTreeMap<Epoch, Vec<IndexKey>>, StorageError> {
    let mut out: BTreeMap<Epoch, Vec<IndexKey>> = BTreeMap::new();
    for m in repo.list(&keys::index_prefix(source)).await? {
        match IndexKey::parse(m.location.as_ref()) {
            Ok(k) if &k.source == source => out.entry(k.epoch).or_default().push(k),
            _ => tracing::warn!(key = %m.location, "ignoring malformed index key"),
        }
    }
    Ok(out)
}

fn overlaps(k: &IndexKey, start: LogPos, end: LogPos) -> bool {
    k.first < end && start < k.last
}

pub(crate) fn bridged(gaps: &[GapKey], from: LogPos, to: LogPos) -> bool {
    from == to || gaps.iter().any(|g| g.start <= from && g.end >= to)
}

/// The index objects of one epoch, with validity and the loading chain.
#[derive(Debug, Clone)]
pub struct IndexView {
    pub(crate) all: Vec<IndexKey>,
    pub(crate) valid: Vec<IndexKey>,
    pub(crate) chain: Vec<IndexKey>,
}

/// Segments read from the index chain.
#[derive(Debug, Clone, Default)]
pub struct LoadedIndex {
    pub segments: Vec<SegmentEntry>,
    /// Key of the last indexed segment: list `log/` after it.
    pub last_segment_key: Option<String>,
    pub(crate) bodies: HashMap<IndexKey, Vec<(String, u64)>>,
}

impl IndexView {
    /// `all`: every index key of one epoch; `gaps`: that epoch's gap keys.
    pub fn new(mut all: Vec<IndexKey>, gaps: &[GapKey]) -> IndexView {
        all.sort_by(|a, b| {
            (
                a.first,
                std::cmp::Reverse(a.last),
                std::cmp::Reverse(a.generation),
            )
                .cmp(&(
                    b.first,
                    std::cmp::Reverse(b.last),
                    std::cmp::Reverse(b.generation),
                ))
        });
        all.dedup();
        let valid: Vec<IndexKey> = all
            .iter()
            .filter(|k| {
                !all.iter()
                    .any(|o| o.generation > k.generation && overlaps(o, k.first, k.last))
            })
            .cloned()
            .collect();
        let mut chain: Vec<IndexKey> = Vec::new();
        for k in &valid {
            match chain.last() {
                None => chain.push(k.clone()),
                Some(last) if k.last <= last.last => {} // nested inside the chosen one
                Some(last) if k.first >= last.last && bridged(gaps, last.last, k.first) => {
                    chain.push(k.clone())
                }
                Some(_) => break,
            }
        }
        IndexView { all, valid, chain }
    }

    /// Every index key, valid or not.
    pub fn all(&self) -> &[IndexKey] {
        &self.all
    }

    /// Valid index keys.
    pub fn valid(&self) -> &[IndexKey] {
        &self.valid
    }

    /// The chain the loader reads.
    pub fn chain(&self) -> &[IndexKey] {
        &self.chain
    }

    /// True when `[start, end)` does not straddle a valid object's boundary.
    pub fn fits(&self, start: LogPos, end: LogPos) -> bool {
        self.valid
            .iter()
            .all(|k| !overlaps(k, start, end) || (k.first <= start && end <= k.last))
    }

    /// Generation for a new object over `[first, last)` built from `children`.
    pub(crate) fn new_generation(&self, first: LogPos, last: LogPos, children: &[IndexKey]) -> u32 {
        let base = children.iter().map(|c| c.generation).max().unwrap_or(0);
        let others = self
            .all
            .iter()
            .filter(|k| overlaps(k, first, last) && !children.contains(k))
            .map(|k| k.generation)
            .max();
        match others {
            Some(g) if g >= base && !children.is_empty() => g.saturating_add(1),
            Some(g) if children.is_empty() => g.saturating_add(1),
            _ => base,
        }
    }

    /// GETs the chain objects; `None` (after a warning) when any of them is
    /// missing or inconsistent, so the caller lists instead.
    pub async fn load_chain(&self, repo: &Repo, source: &SourceName) -> Option<LoadedIndex> {
        match self.try_load_chain(repo, source).await {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(source = %source, error = %e, "index unusable; listing instead");
                None
            }
        }
    }

    pub(crate) async fn try_load_chain(
        &self,
        repo: &Repo,
        source: &SourceName,
    ) -> Result<LoadedIndex, IndexError> {
        let bodies: Vec<(IndexKey, IndexBody)> = futures::stream::iter(self.chain.iter().cloned())
            .map(|k| async move {
                let body = read_body(repo, &k).await?;
                Ok::<_, IndexError>((k, body))
            })
            .buffered(GET_CONCURRENCY)
            .try_collect()
            .await?;
        let mut out = LoadedIndex::default();
        for (k, body) in bodies {
            for (name, size) in &body.segments {
                let key = SegmentKey::parse_file_name(source.clone(), k.epoch, name)
                    .ok_or_else(|| corrupt(&k, "bad segment name"))?;
                out.last_segment_key = Some(key.to_key());
                out.segments.push(SegmentEntry { key, size: *size });
            }
            out.bodies.insert(k, body.segments);
        }
        Ok(out)
    }
}

fn corrupt(k: &IndexKey, reason: &str) -> IndexError {
    IndexError::Corrupt {
        key: k.to_key(),
        reason: reason.to_string(),
    }
}

pub(crate) async fn read_body(repo: &Repo, k: &IndexKey) -> Result<IndexBody, IndexError> {
    let bytes = repo.get(&k.to_key()).await?;
    let body: IndexBody = serde_json::from_slice(&bytes).map_err(|e| corrupt(k, &e.to_string()))?;
    if body.format != FORMAT
        || body.epoch != k.epoch
        || body.first != k.first
        || body.last != k.last
        || body.level != k.level
        || body.generation != k.generation
    {
        return Err(corrupt(k, "body does not match its key"));
    }
    Ok(body)
}

pub(crate) async fn write_body(
    repo: &Repo,
    k: &IndexKey,
    segments: Vec<(String, u64)>,
) -> Result<Vec<(String, u64)>, IndexError> {
    let body = IndexBody {
        format: FORMAT,
        epoch: k.epoch,
        first: k.first,
        last: k.last,
        level: k.level,
        generation: k.generation,
        segments,
    };
    let bytes = serde_json::to_vec(&body).map_err(|e| corrupt(k, &e.to_string()))?;
    repo.put_if_absent(&k.to_key(), Bytes::from(bytes)).await?;
    Ok(body.segments)
}

/// After compaction wrote `by` covering the `replaced` segments of one
/// epoch: if a valid index object lists any of them, write its replacement
/// (next generation) listing `by` instead. Returns the replacement's key.
pub async fn replace_in_index(
    repo: &Repo,
    source: &SourceName,
    gaps: &[GapKey],
    replaced: &[SegmentKey],
    by: &SegmentEntry,
) -> Result<Option<IndexKey>, IndexError> {
    let epoch = by.key.epoch;
    let (start, end) = (by.key.start, by.key.end);
    let all = list_index_keys(repo, source)
        .await?
        .remove(&epoch)
        .unwrap_or_default();
    let view = IndexView::new(all, gaps);
    let touching: Vec<&IndexKey> = view
        .valid
        .iter()
        .filter(|k| overlaps(k, start, end))
        .collect();
    if touching.is_empty() {
        return Ok(None);
    }
    let Some(target) = touching
        .iter()
        .filter(|k| k.first <= start && end <= k.last)
        .min_by_key(|k| (k.level, std::cmp::Reverse(k.generation)))
    else {
        return Err(IndexError::CrossesBoundary { epoch, start, end });
    };
    let body = read_body(repo, target).await?;
    let names: Vec<String> = replaced.iter().map(|k| k.file_name()).collect();
    if !body.segments.iter().any(|(n, _)| names.contains(n)) {
        return Ok(None);
    }
    let mut segs: Vec<(String, u64)> = body
        .segments
        .into_iter()
        .filter(|(n, _)| !names.contains(n))
        .collect();
    let pos = segs.partition_point(|(n, _)| n.as_str() < by.key.file_name().as_str());
    segs.insert(pos, (by.key.file_name(), by.size));
    let key = IndexKey {
        generation: view.new_generation(target.first, target.last, &[]),
        ..(*target).clone()
    };
    write_body(repo, &key, segs).await?;
    Ok(Some(key))
}

/// The index view of one epoch, for compaction planning.
pub async fn view(
    repo: &Repo,
    source: &SourceName,
    epoch: Epoch,
    gaps: &[GapKey],
) -> Result<IndexView, StorageError> {
    let all = list_index_keys(repo, source)
        .await?
        .remove(&epoch)
        .unwrap_or_default();
    Ok(IndexView::new(all, gaps))
}

/// Index changes that drop everything before a cut position from one epoch
/// (retention). Plan with [`plan_cut`], then [`IndexCut::write_replacements`],
/// then delete [`IndexCut::deletions`], and only then the segments.
///
/// The outermost valid object straddling the cut (valid objects nest) is
/// replaced by one listing only its segments ending after the cut, starting at the first of them, with a
/// generation above every generation of the epoch (so it supersedes the old
/// object and everything the old one superseded). Objects starting before
/// the cut are deleted, and so is any object the deletions would make valid
/// again (its listing is stale). A crash at any step leaves a valid chain
/// that lists only segments after the cut, which the segment deletion never
/// touches.
#[derive(Debug, Clone, Default)]
pub struct IndexCut {
    pub replacements: Vec<IndexKey>,
    pub deletions: Vec<IndexKey>,
    bodies: HashMap<IndexKey, Vec<(String, u64)>>,
}

impl IndexCut {
    /// Writes the replacement objects (create-if-absent, idempotent).
    pub async fn write_replacements(&self, repo: &Repo) -> Result<(), IndexError> {
        for k in &self.replacements {
            let segs = self.bodies.get(k).cloned().unwrap_or_default();
            write_body(repo, k, segs).await?;
        }
        Ok(())
    }
}

/// Plans the index changes for dropping segments ending at or before `cut`
/// from `epoch` (see [`IndexCut`]).
pub async fn plan_cut(
    repo: &Repo,
    source: &SourceName,
    epoch: Epoch,
    gaps: &[GapKey],
    cut: LogPos,
) -> Result<IndexCut, IndexError> {
    let all = list_index_keys(repo, source)
        .await?
        .remove(&epoch)
        .unwrap_or_default();
    let before = IndexView::new(all.clone(), gaps);
    let top = all.iter().map(|k| k.generation).max().unwrap_or(0);
    let mut out = IndexCut::default();
    let mut untouched = Vec::new();
    let straddling: Vec<&IndexKey> = before
        .valid
        .iter()
        .filter(|k| k.first < cut && cut < k.last)
        .collect();
    // Only the outermost straddler is replaced (valid objects nest); the
    // nested ones start before the cut and are deleted.
    let outermost = straddling.iter().filter(|k| {
        !straddling
            .iter()
            .any(|o| o != *k && o.first <= k.first && k.last <= o.last)
    });
    for &k in outermost {
        let body = read_body(repo, k).await?;
        let mut kept = Vec::new();
        let mut first = None;
        for (name, size) in body.segments {
            let seg = SegmentKey::parse_file_name(source.clone(), epoch, &name)
                .ok_or_else(|| corrupt(k, "bad segment name"))?;
            if seg.end > cut {
                first.get_or_insert(seg.start);
                kept.push((name, size));
            }
        }
        let Some(first) = first else { continue };
        if first == k.first {
            untouched.push(k.clone()); // its first segment straddles the cut
            continue;
        }
        let key = IndexKey {
            first,
            generation: top.saturating_add(1),
            ..k.clone()
        };
        if !out.replacements.contains(&key) {
            out.bodies.insert(key.clone(), kept);
            out.replacements.push(key);
        }
    }
    let doomed = |k: &IndexKey| k.first < cut && !untouched.contains(k);
    let mut remaining: Vec<IndexKey> = all.iter().filter(|k| !doomed(k)).cloned().collect();
    out.deletions = all.iter().filter(|k| doomed(k)).cloned().collect();
    // Objects that were invalid must stay invalid: their listings are stale.
    loop {
        let mut next = remaining.clone();
        next.extend(out.replacements.iter().cloned());
        let view = IndexView::new(next, gaps);
        let revived: Vec<IndexKey> = remaining
            .iter()
            .filter(|k| view.valid.contains(k) && !before.valid.contains(k))
            .cloned()
            .collect();
        if revived.is_empty() {
            break;
        }
        remaining.retain(|k| !revived.contains(k));
        out.deletions.extend(revived);
    }
    Ok(out)
}
