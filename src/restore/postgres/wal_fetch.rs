//! Rebuilds one PostgreSQL WAL file (or timeline `.history` file) from the
//! repository, byte-identical to what the server wrote.
//!
//! A WAL file `TTTTTTTTXXXXXXXXYYYYYYYY` covers LSNs `[segno × size,
//! (segno + 1) × size)` of timeline `T`. The archiver never lets a segment
//! cross a WAL-file boundary, so the file is the concatenation of the
//! segments covering that range in epoch `T`. Every segment is fully
//! verified (frame CRCs, whole-object checksum) before a byte of it is used,
//! and the file appears at its destination only once complete (written to a
//! temporary name in the same directory, synced, then renamed), so
//! PostgreSQL never sees a partial or corrupt file.

use std::path::Path;

use anyhow::{anyhow, Context as _};
use futures::stream::{self, StreamExt, TryStreamExt};
use pitr_postgres::lsn::{parse_wal_file_name, Lsn};
use pitr_segment::{Epoch, LogPos};

use crate::archive::catalog::Catalog;
use crate::archive::keys::{HistoryKey, SegmentKey, SourceName};
use crate::archive::segment_read::read_segment;
pub use crate::restore::fetch::write_atomically;
use crate::storage::{Repo, StorageError};

/// What `wal-fetch` did.
#[derive(Debug, PartialEq, Eq)]
pub enum FetchOutcome {
    /// The file was written; `partial` when it is the newest, incomplete
    /// WAL file of the archive served zero-padded (see [`FetchOptions::partial`]).
    Written { bytes: u64, partial: bool },
    /// The repository does not (yet) hold the whole file.
    NotArchived(String),
}

/// The bytes of one WAL or history file, rebuilt from the repository.
#[derive(Debug, PartialEq, Eq)]
pub enum Rebuilt {
    /// The whole file (`partial`: zero-padded end of the archive).
    File { data: Vec<u8>, partial: bool },
    /// The repository does not (yet) hold the whole file.
    NotArchived(String),
}

/// Options of a fetch.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    pub wal_segment_size: u64,
    /// Segments downloaded concurrently.
    pub parallel: usize,
    /// When the requested file is the newest, still incomplete WAL file of
    /// the archive, return what is archived of it padded with zeros to the
    /// full size (PostgreSQL reads zeros as the end of WAL). Only for the
    /// `restore_command` of a restore: it lets recovery reach the last
    /// archived commit instead of the end of the last complete file.
    pub partial: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            wal_segment_size: 16 << 20,
            parallel: 4,
            partial: false,
        }
    }
}

/// Fetches `file_name` of `source` into `dest`.
pub async fn fetch_wal_file(
    repo: &Repo,
    source: &SourceName,
    file_name: &str,
    dest: &Path,
    opts: &FetchOptions,
) -> anyhow::Result<FetchOutcome> {
    let catalog = if file_name.ends_with(".history") {
        None
    } else {
        Some(Catalog::load(repo, source).await?)
    };
    let rebuilt = match rebuild_file(repo, source, catalog.as_ref(), file_name, opts).await {
        Ok(r) => r,
        Err(e) if catalog.is_some() => {
            // A segment listed a moment ago may have been merged by
            // compaction since: list again once before giving up.
            tracing::info!("rebuilding {file_name} failed ({e:#}); listing the repository again");
            let fresh = Catalog::load(repo, source).await?;
            rebuild_file(repo, source, Some(&fresh), file_name, opts).await?
        }
        Err(e) => return Err(e),
    };
    match rebuilt {
        Rebuilt::File { data, partial } => {
            write_atomically(dest, &data).with_context(|| format!("writing {}", dest.display()))?;
            Ok(FetchOutcome::Written {
                bytes: data.len() as u64,
                partial,
            })
        }
        Rebuilt::NotArchived(why) => Ok(FetchOutcome::NotArchived(why)),
    }
}

/// Rebuilds `file_name` (a WAL file name or `TTTTTTTT.history`) in memory.
/// WAL files need `catalog` (loaded by the caller, so a long-lived caller
/// can reuse it across files); history files do not.
pub async fn rebuild_file(
    repo: &Repo,
    source: &SourceName,
    catalog: Option<&Catalog>,
    file_name: &str,
    opts: &FetchOptions,
) -> anyhow::Result<Rebuilt> {
    if let Some(tli_hex) = file_name.strip_suffix(".history") {
        let tli = u32::from_str_radix(tli_hex, 16)
            .ok()
            .filter(|_| tli_hex.len() == 8)
            .ok_or_else(|| anyhow!("{file_name:?} is not a timeline history file name"))?;
        let key = HistoryKey::new(source.clone(), Epoch(u64::from(tli)), file_name)?;
        return match repo.get(&key.to_key()).await {
            Ok(b) => Ok(Rebuilt::File {
                data: b.to_vec(),
                partial: false,
            }),
            Err(StorageError::NotFound { .. }) => Ok(Rebuilt::NotArchived(format!(
                "{file_name} is not in the repository"
            ))),
            Err(e) => Err(e.into()),
        };
    }
    let seg = opts.wal_segment_size;
    let (tli, start) = parse_wal_file_name(file_name, seg).ok_or_else(|| {
        anyhow!("{file_name:?} is not a WAL file name (expected 24 hex digits or TTTTTTTT.history)")
    })?;
    let catalog = catalog.ok_or_else(|| anyhow!("rebuilding {file_name} needs the catalog"))?;
    match rebuild(repo, catalog, Epoch(u64::from(tli.0)), start, seg, opts).await? {
        Some((data, partial)) => Ok(Rebuilt::File { data, partial }),
        None => Ok(Rebuilt::NotArchived(format!(
            "{file_name} is not (yet) completely archived"
        ))),
    }
}

/// The bytes `[start, start + size)` of `epoch` and whether they are the
/// zero-padded end of the archive, or `None` if not all archived.
async fn rebuild(
    repo: &Repo,
    catalog: &Catalog,
    epoch: Epoch,
    start: Lsn,
    size: u64,
    opts: &FetchOptions,
) -> anyhow::Result<Option<(Vec<u8>, bool)>> {
    let from = LogPos::from_lsn(start.0);
    let full = LogPos::from_lsn(start.0 + size);
    let (keys, to): (Vec<SegmentKey>, LogPos) = match catalog.segments_covering(epoch, from, full) {
        Ok(k) => (k, full),
        Err(e) => {
            // The newest, still growing WAL file: serve its archived prefix.
            let tail = catalog.tail(epoch);
            match tail {
                Some(t) if opts.partial && t > from && t < full => {
                    match catalog.segments_covering(epoch, from, t) {
                        Ok(k) => {
                            tracing::info!(
                                "WAL {start} of timeline {epoch} is archived up to {}; \
                                 serving it zero-padded (end of the archive)",
                                Lsn(t.lo)
                            );
                            (k, t)
                        }
                        Err(_) => return Ok(None),
                    }
                }
                _ => {
                    tracing::debug!("WAL {start} of timeline {epoch} not covered: {e}");
                    return Ok(None);
                }
            }
        }
    };
    let parts: Vec<Vec<u8>> = stream::iter(keys.into_iter().map(|k| async move {
        let (_, payload) = read_segment(repo, &k).await?;
        // Keep only the overlap with [from, to).
        let lo = from.lo.max(k.start.lo) - k.start.lo;
        let hi = to.lo.min(k.end.lo) - k.start.lo;
        let (lo, hi) = (lo as usize, (hi as usize).min(payload.len()));
        Ok::<_, anyhow::Error>(payload.get(lo..hi).unwrap_or_default().to_vec())
    }))
    .buffered(opts.parallel.max(1))
    .try_collect()
    .await?;
    let mut out: Vec<u8> = parts.concat();
    if out.len() as u64 == to.lo - from.lo && (out.len() as u64) < size {
        out.resize(size as usize, 0);
    }
    let partial = to != full;
    if out.len() as u64 != size {
        return Err(anyhow!(
            "rebuilt WAL at {start} of timeline {epoch} has {} bytes, expected {size}; run `pitr verify`",
            out.len()
        ));
    }
    Ok(Some((out, partial)))
}
