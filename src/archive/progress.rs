//! Live numbers of a running archiver of any engine, shared with `/metrics`
//! and logs. Positions are the engine-neutral `LogPos::lo` of the epoch in
//! `timeline` (PostgreSQL LSN; other engines their own `lo`).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use crate::archive::pipeline::{Durable, UploadStats};

/// Live numbers of an archiver, read by `/metrics` and logs.
#[derive(Debug, Default)]
pub struct ArchiveProgress {
    pub upload: Arc<UploadStats>,
    pub received_lsn: AtomicU64,
    pub durable_lsn: AtomicU64,
    pub timeline: AtomicU64,
    /// Last durable commit time, µs since the Unix epoch (0 = none yet).
    pub last_commit_micros: AtomicI64,
    pub gaps: AtomicU64,
    /// Generation of the writer lease held (0 = none).
    pub lease_generation: AtomicU64,
}

impl ArchiveProgress {
    /// Publishes a durable watermark: its position and, when known, its last
    /// commit time.
    pub fn note_durable(&self, d: &Durable) {
        self.durable_lsn.store(d.pos.lo, Ordering::Relaxed);
        if let Some(t) = d.last_commit {
            self.last_commit_micros.store(t.0, Ordering::Relaxed);
        }
    }
}
