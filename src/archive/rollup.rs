//! Roll-up of the index (`pitr compact`, `pitr run`): writes level-0 index
//! objects for every full run of unindexed segments of the catalog and
//! merges consecutive objects into the next level (the object format and
//! how readers use it are in `index`).

use std::collections::HashMap;

use crate::archive::catalog::{Catalog, CatalogError};
use crate::archive::index::{
    bridged, list_index_keys, read_body, write_body, IndexError, IndexView, FAN_OUT,
    SEGMENTS_PER_INDEX,
};
use crate::archive::keys::{IndexKey, SourceName};
use crate::storage::Repo;

/// What a roll-up wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RollUpReport {
    pub written: Vec<IndexKey>,
}

/// Writes roll-up index objects.
#[derive(Debug, Clone, Copy)]
pub struct Indexer {
    pub segments_per_index: usize,
    pub fan_out: usize,
}

impl Default for Indexer {
    fn default() -> Self {
        Indexer {
            segments_per_index: SEGMENTS_PER_INDEX,
            fan_out: FAN_OUT,
        }
    }
}

impl Indexer {
    /// Indexes every full run of `segments_per_index` unindexed segments and
    /// merges `fan_out` consecutive objects of one level into the next level.
    pub async fn roll_up(
        &self,
        repo: &Repo,
        source: &SourceName,
    ) -> Result<RollUpReport, IndexError> {
        let per = self.segments_per_index.max(1);
        let fan = self.fan_out.max(2);
        let catalog = Catalog::load(repo, source)
            .await
            .map_err(|CatalogError::Storage(e)| IndexError::Storage(e))?;
        let mut all_keys = list_index_keys(repo, source).await?;
        let mut report = RollUpReport::default();
        for epoch in catalog.epochs() {
            let Some(ec) = catalog.epoch(epoch) else {
                continue;
            };
            let gaps = ec.gaps();
            let mut view = IndexView::new(all_keys.remove(&epoch).unwrap_or_default(), gaps);
            let mut bodies = match view.try_load_chain(repo, source).await {
                Ok(loaded) => loaded.bodies,
                Err(IndexError::Storage(e)) if e.is_transient() => return Err(e.into()),
                Err(e) => {
                    // Unreadable chain: index from scratch; new generations supersede it.
                    tracing::warn!(source = %source, error = %e, "rebuilding the index");
                    view.chain.clear();
                    HashMap::new()
                }
            };
            // Level 0: consecutive unindexed segments after the chain.
            let chain = ec.segments();
            let mut i = match view.chain.last() {
                Some(last) => {
                    let i = chain.partition_point(|s| s.key.start < last.last);
                    match chain.get(i) {
                        Some(s) if bridged(gaps, last.last, s.key.start) => i,
                        _ => chain.len(),
                    }
                }
                None => 0,
            };
            while i + per <= chain.len() {
                let group = &chain[i..i + per];
                if group
                    .windows(2)
                    .any(|w| !bridged(gaps, w[0].key.end, w[1].key.start))
                {
                    // An unexplained hole: stop indexing this epoch here.
                    break;
                }
                let (first, last) = (group[0].key.start, group[per - 1].key.end);
                let key = IndexKey {
                    source: source.clone(),
                    epoch,
                    first,
                    last,
                    level: 0,
                    generation: view.new_generation(first, last, &[]),
                };
                let segs = group.iter().map(|s| (s.key.file_name(), s.size)).collect();
                let segs = write_body(repo, &key, segs).await?;
                bodies.insert(key.clone(), segs);
                report.written.push(key.clone());
                let mut all = view.all.clone();
                all.push(key);
                view = IndexView::new(all, gaps);
                i += per;
                if i < chain.len() && !bridged(gaps, last, chain[i].key.start) {
                    break;
                }
            }
            // Higher levels.
            'merge: while let Some(w) = view.chain.windows(fan).find(|w| {
                w.iter().all(|k| k.level == w[0].level && k.level < u8::MAX)
                    && w.windows(2).all(|p| bridged(gaps, p[0].last, p[1].first))
            }) {
                let children: Vec<IndexKey> = w.to_vec();
                let (first, last) = (children[0].first, children[fan - 1].last);
                let key = IndexKey {
                    source: source.clone(),
                    epoch,
                    first,
                    last,
                    level: children[0].level + 1,
                    generation: view.new_generation(first, last, &children),
                };
                let mut segs = Vec::new();
                for c in &children {
                    if !bodies.contains_key(c) {
                        match read_body(repo, c).await {
                            Ok(b) => {
                                bodies.insert(c.clone(), b.segments);
                            }
                            Err(IndexError::Storage(e)) if e.is_transient() => return Err(e.into()),
                            Err(e) => {
                                tracing::warn!(error = %e, "not merging index objects");
                                break 'merge;
                            }
                        }
                    }
                    if let Some(b) = bodies.get(c) {
                        segs.extend(b.iter().cloned());
                    }
                }
                let segs = write_body(repo, &key, segs).await?;
                bodies.insert(key.clone(), segs);
                report.written.push(key.clone());
                let mut all = view.all.clone();
                all.push(key);
                view = IndexView::new(all, gaps);
            }
        }
        Ok(report)
    }
}
