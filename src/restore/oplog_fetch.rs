//! Writes archived MongoDB oplog entries as one `oplog.bson` file.
//!
//! `oplog.bson` is what `mongodump --oplog` writes and `mongorestore
//! --oplogReplay` reads: BSON documents back to back, nothing else. A
//! MongoDB segment's payload is exactly that (the entries' bytes as the
//! server sent them, see `crate::source::mongodb`), and a segment `[start,
//! end)` holds every entry whose `ts` lies in that range. So the entries
//! with `from <= ts <= to` are the payloads of the segments covering
//! `[from, to + 1)`, concatenated in position order across terms (a new
//! term's first segment starts where the previous term's last one ended),
//! with the entries outside the range dropped from the first and last
//! segment. The range must be covered without a hole; a gap record or a
//! missing segment inside it makes the range "not archived".
//!
//! The file is written to a temporary file beside the destination and
//! renamed into place: a failure leaves no partial destination.

use std::io::Write as _;
use std::path::Path;

use anyhow::{anyhow, Context as _};
use futures::stream::{self, StreamExt};
use pitr_mongodb::oplog_file::entries;
use pitr_mongodb::OplogTs;
use pitr_segment::{Epoch, LogPos, TimestampMicros};

use crate::archive::catalog::Catalog;
use crate::archive::gaps::read_gap;
use crate::archive::keys::{GapKey, SegmentKey, SourceName};
use crate::archive::segment_read::read_segment;
use crate::storage::Repo;

/// What `oplog-fetch` did.
#[derive(Debug, PartialEq, Eq)]
pub enum OplogFetchOutcome {
    Written {
        entries: u64,
        bytes: u64,
    },
    /// The range is not (wholly) archived; the sentence says why.
    NotArchived(String),
}

/// One archived segment, for `--list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedStretch {
    pub epoch: Epoch,
    pub start: LogPos,
    pub end: LogPos,
    pub first_wall: Option<TimestampMicros>,
    pub last_wall: Option<TimestampMicros>,
    pub stored_bytes: u64,
}

/// `secs:inc`, as `--from`/`--to` take it.
pub fn show_ts(t: OplogTs) -> String {
    format!("{}:{}", t.secs, t.inc)
}

/// A chain end position as the last timestamp before it.
fn show_end(p: LogPos) -> String {
    OplogTs::last_before(p).map_or_else(|| p.to_hex(), show_ts)
}

fn show_start(p: LogPos) -> String {
    OplogTs::from_log_pos(p).map_or_else(|| p.to_hex(), show_ts)
}

/// Every chain segment of every term, in position order, and every gap.
fn all_segments(catalog: &Catalog) -> (Vec<(SegmentKey, u64)>, Vec<GapKey>) {
    let mut segs = Vec::new();
    let mut gaps = Vec::new();
    for e in catalog.epochs() {
        if let Some(ec) = catalog.epoch(e) {
            segs.extend(ec.segments().iter().map(|s| (s.key.clone(), s.size)));
            gaps.extend(ec.gaps().iter().cloned());
        }
    }
    segs.sort_by_key(|(k, _)| (k.start, std::cmp::Reverse(k.end), k.epoch));
    // Drop segments another one already covers (one term's compaction
    // never spans terms, but be safe).
    let mut out: Vec<(SegmentKey, u64)> = Vec::new();
    for s in segs {
        if out.last().is_some_and(|l| s.0.end <= l.0.end) {
            continue;
        }
        out.push(s);
    }
    gaps.sort_by_key(|g| (g.start, g.end));
    (out, gaps)
}

/// The segments covering `[lo, hi)`, or the sentence why they do not.
fn plan(
    segs: &[(SegmentKey, u64)],
    gaps: &[GapKey],
    lo: LogPos,
    hi: LogPos,
) -> Result<Vec<SegmentKey>, (String, Option<GapKey>)> {
    let picked: Vec<&SegmentKey> = segs
        .iter()
        .map(|(k, _)| k)
        .filter(|k| k.end > lo && k.start < hi)
        .collect();
    let hole = |from: LogPos, to: LogPos| {
        let gap = gaps.iter().find(|g| g.start < to && g.end > from).cloned();
        let what = if to == LogPos::new(u64::MAX, u64::MAX) {
            format!("nothing from {} on is archived", show_start(from))
        } else {
            format!(
                "the oplog from {} up to (not including) {} is missing",
                show_start(from),
                show_start(to)
            )
        };
        (what, gap)
    };
    let Some(first) = picked.first() else {
        return Err(("no archived segment holds that range".into(), None));
    };
    if first.start > lo {
        return Err((
            format!(
                "the archive starts at {}, after {}",
                show_start(first.start),
                show_start(lo)
            ),
            None,
        ));
    }
    let mut at = first.end;
    for k in &picked[1..] {
        if k.start > at {
            return Err(hole(at, k.start));
        }
        at = at.max(k.end);
    }
    if at < hi {
        return Err(hole(at, LogPos::new(u64::MAX, u64::MAX)));
    }
    Ok(picked.into_iter().cloned().collect())
}

/// Writes the entries of `source` with `from <= ts <= to` (defaults: the
/// whole archive) into `dest`.
pub async fn fetch_oplog(
    repo: &Repo,
    source: &SourceName,
    from: Option<OplogTs>,
    to: Option<OplogTs>,
    dest: &Path,
    parallel: usize,
) -> anyhow::Result<OplogFetchOutcome> {
    let catalog = Catalog::load(repo, source).await?;
    let (segs, gaps) = all_segments(&catalog);
    let (Some(first), Some(last)) = (segs.first(), segs.last()) else {
        return Ok(OplogFetchOutcome::NotArchived(format!(
            "source {source} has no archived oplog"
        )));
    };
    let lo = from.map_or(first.0.start, OplogTs::to_log_pos);
    let hi = to.map_or(last.0.end, OplogTs::pos_after);
    if let (Some(f), Some(t)) = (from, to) {
        if f > t {
            return Err(anyhow!(
                "--from {} is after --to {}: give a range with from <= to",
                show_ts(f),
                show_ts(t)
            ));
        }
    }
    let keys = match plan(&segs, &gaps, lo, hi) {
        Ok(k) => k,
        Err((why, gap)) => {
            let reason = match gap {
                Some(g) => match read_gap(repo, &g).await {
                    Ok(r) => format!(" (recorded gap: {})", r.reason),
                    Err(_) => " (a gap record covers it)".into(),
                },
                None => String::new(),
            };
            return Ok(OplogFetchOutcome::NotArchived(format!(
                "oplog {}..{} of source {source} is not archived: {why}{reason}",
                show_start(lo),
                show_end(hi)
            )));
        }
    };
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let mut out = std::io::BufWriter::new(tmp);
    let mut fetched = stream::iter(keys.into_iter().map(|k| async move {
        let (_, payload) = read_segment(repo, &k).await?;
        Ok::<_, anyhow::Error>((k.to_key(), payload))
    }))
    .buffered(parallel.max(1));
    let (mut n, mut bytes) = (0u64, 0u64);
    while let Some(r) = fetched.next().await {
        let (key, payload) = r?;
        for e in entries(&payload) {
            let (_, e) = e.map_err(|e| anyhow!("segment {key} holds a bad entry: {e}"))?;
            let p = e.ts().to_log_pos();
            if p >= lo && p < hi {
                out.write_all(e.raw_bytes())
                    .with_context(|| format!("writing {}", dest.display()))?;
                n += 1;
                bytes += e.raw_bytes().len() as u64;
            }
        }
    }
    let tmp = out
        .into_inner()
        .map_err(|e| anyhow!("writing {}: {}", dest.display(), e.error()))?;
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("writing {}", dest.display()))?;
    tmp.persist(dest)
        .map_err(|e| anyhow!("writing {}: {}", dest.display(), e.error))?;
    Ok(OplogFetchOutcome::Written { entries: n, bytes })
}

/// Every archived segment of `source`, in position order.
pub async fn list_oplog(repo: &Repo, source: &SourceName) -> anyhow::Result<Vec<ArchivedStretch>> {
    let catalog = Catalog::load(repo, source).await?;
    let (segs, _) = all_segments(&catalog);
    Ok(segs
        .into_iter()
        .map(|(k, size)| ArchivedStretch {
            epoch: k.epoch,
            start: k.start,
            end: k.end,
            first_wall: k.tmin,
            last_wall: k.tmax,
            stored_bytes: size,
        })
        .collect())
}

/// `--list` line parts: term, first position, last position.
pub fn stretch_bounds(s: &ArchivedStretch) -> (u64, String, String) {
    (s.epoch.0, show_start(s.start), show_end(s.end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: u32, i: u32) -> LogPos {
        OplogTs { secs: s, inc: i }.to_log_pos()
    }

    fn k(e: u64, a: LogPos, b: LogPos) -> (SegmentKey, u64) {
        (
            SegmentKey {
                source: SourceName::new("m").unwrap(),
                epoch: Epoch(e),
                start: a,
                end: b,
                tmin: None,
                tmax: None,
                generation: 0,
            },
            1,
        )
    }

    #[test]
    fn ranges_are_covered_across_terms_or_refused_with_the_hole() {
        let segs = vec![
            k(1, p(10, 1), p(11, 0)),
            k(2, p(11, 0), p(12, 0)),
            k(2, p(14, 0), p(15, 0)),
        ];
        let ok = plan(&segs, &[], p(10, 5), p(11, 3)).unwrap();
        assert_eq!(ok.len(), 2);
        let (why, gap) = plan(&segs, &[], p(10, 1), p(14, 2)).unwrap_err();
        assert!(
            why.contains("from 12:0 up to (not including) 14:0"),
            "{why}"
        );
        assert!(gap.is_none());
        let g = GapKey {
            source: SourceName::new("m").unwrap(),
            epoch: Epoch(2),
            start: p(12, 0),
            end: p(14, 0),
            generation: 0,
        };
        assert!(plan(&segs, &[g], p(11, 1), p(14, 2))
            .unwrap_err()
            .1
            .is_some());
        let (why, _) = plan(&segs, &[], p(14, 1), p(16, 0)).unwrap_err();
        assert!(why.contains("nothing from 15:0 on"), "{why}");
        let (why, _) = plan(&segs, &[], p(9, 0), p(10, 3)).unwrap_err();
        assert!(why.contains("starts at 10:1"), "{why}");
    }
}
