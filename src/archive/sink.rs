//! The production [`SegmentSink`]: encodes a sealed segment in pitr's segment
//! format and stores it create-if-absent under its catalog key.
//!
//! Encoding (zstd) runs on the blocking pool so the async runtime keeps
//! serving the replication socket. A retry after a lost response finds the
//! identical object already there, which counts as success; different bytes
//! at the same key are a divergent-history error and stop the archiver.
//!
//! Every key carries the writer-lease generation, and nothing is written
//! once the lease is lost (`lease`): a late write that slips through anyway
//! is fenced by the next holder's takeover record (`fence`). A put that
//! completes only after the holder's lease deadline does not count as
//! stored: the durable watermark never covers it, so nothing of it is
//! confirmed to the database (a successor may have taken over meanwhile and
//! fenced it). A segment
//! re-archived over exactly the range of one the repository already held
//! beyond the resume point (stored out of order before a crash) is written
//! under that object's key, so it is an idempotent retry, never a duplicate
//! under the new generation (such an object ends before the takeover point,
//! so it is never fenced).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use pitr_segment::{Codec, Engine, Epoch, LogPos, SegmentHeader, SegmentWriter, WriterOptions};

use crate::archive::keys::{SegmentKey, SourceName};
use crate::archive::lease::LeaseGuard;
use crate::archive::pipeline::{SealedSegment, SegmentSink, SinkError};
use crate::storage::{PutOutcome, Repo};

/// Stores segments of one source in a repository.
pub struct RepoSink {
    pub repo: Repo,
    pub source: SourceName,
    pub engine: Engine,
    /// Source identity written into each segment header.
    pub system_id: String,
    pub zstd_level: i32,
    /// The writer lease the segments are written under.
    pub lease: LeaseGuard,
    /// Segments already stored beyond the resume point, by range.
    pub reuse: HashMap<(Epoch, LogPos, LogPos), SegmentKey>,
    /// When the keyring was last checked for a rotation.
    pub keys_checked: std::sync::Mutex<Option<std::time::Instant>>,
}

/// How often a running archiver looks for a `pitr key rotate`.
pub const KEY_REFRESH: std::time::Duration = std::time::Duration::from_secs(60);

/// The `reuse` map of a [`RepoSink`] from the keys stored beyond the resume point.
pub fn reuse_map(
    keys: impl IntoIterator<Item = SegmentKey>,
) -> HashMap<(Epoch, LogPos, LogPos), SegmentKey> {
    keys.into_iter()
        .map(|k| ((k.epoch, k.start, k.end), k))
        .collect()
}

impl RepoSink {
    /// At most every [`KEY_REFRESH`]: picks up a key rotation, so new
    /// segments use the new data key without a restart. A failed check
    /// keeps the key in use (it is still valid) and is logged.
    async fn refresh_keys(&self) {
        let due = match self.keys_checked.lock() {
            Ok(mut at) => {
                let due = at.is_none_or(|t| t.elapsed() >= KEY_REFRESH);
                if due {
                    *at = Some(std::time::Instant::now());
                }
                due
            }
            Err(_) => false,
        };
        if !due || self.repo.keys().kek.is_none() {
            return;
        }
        match crate::crypto::refresh(&self.repo).await {
            Ok(Some(id)) => {
                tracing::info!(key_id = id, "new segments are sealed with data key {id}")
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("checking the keyring for a rotation failed: {e}"),
        }
    }

    /// The object key a sealed segment is stored under.
    pub fn key_of(&self, seg: &SealedSegment) -> SegmentKey {
        if let Some(k) = self.reuse.get(&(seg.epoch, seg.start, seg.end)) {
            return k.clone();
        }
        SegmentKey {
            source: self.source.clone(),
            epoch: seg.epoch,
            start: seg.start,
            end: seg.end,
            tmin: seg.first_commit,
            tmax: seg.last_commit,
            generation: self.lease.generation(),
        }
    }
}

impl SegmentSink for RepoSink {
    fn store<'a>(
        &'a self,
        seg: &'a SealedSegment,
    ) -> Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>> {
        Box::pin(async move {
            let key = self.key_of(seg).to_key();
            let header = SegmentHeader {
                engine: self.engine,
                source_id: self.system_id.clone(),
                epoch: seg.epoch,
                start: seg.start,
                codec: Codec::Zstd {
                    level: self.zstd_level,
                },
                key_id: 0,
            };
            let raw = seg.raw.clone();
            let (end, first, last, records) =
                (seg.end, seg.first_commit, seg.last_commit, seg.records);
            let estimate = seg.raw_len() / 4 + 4096;
            self.refresh_keys().await;
            let seal_key = self.repo.keys().current.clone();
            let object = tokio::task::spawn_blocking(move || {
                // Sealed with the repository's current data key, if it is
                // encrypted; the salt depends only on key, header and log,
                // so a retry writes identical bytes.
                let opts = WriterOptions::default().sealed_with(
                    seal_key,
                    &header,
                    raw.iter().map(|c| &c[..]),
                );
                let mut w = SegmentWriter::new(Vec::with_capacity(estimate), header, opts)?;
                for chunk in &raw {
                    w.write_all(chunk)?;
                }
                w.finish(end, first, last, records).map(|(out, _meta)| out)
            })
            .await
            .map_err(|e| SinkError::definite(format!("encoding segment {key} failed: {e}")))?
            .map_err(|e| SinkError::definite(format!("encoding segment {key} failed: {e}")))?;
            self.lease
                .check()
                .map_err(|e| SinkError::definite(e.to_string()))?;
            let put = self.repo.put_if_absent(&key, object.into()).await;
            if let (Ok(_), Err(lost)) = (&put, self.lease.check()) {
                return Err(SinkError::definite(format!(
                    "segment {key} was stored only after this archiver's lease deadline, so it does not count as archived ({lost})"
                )));
            }
            match put {
                Ok(PutOutcome::Created) => {
                    tracing::debug!(key = %key, "segment stored");
                    Ok(())
                }
                Ok(PutOutcome::AlreadyIdentical) => {
                    tracing::info!(key = %key, "segment was already stored with identical bytes");
                    Ok(())
                }
                Err(e) if e.is_transient() => Err(SinkError::transient(e.to_string())),
                Err(e) => Err(SinkError::definite(e.to_string())),
            }
        })
    }
}
