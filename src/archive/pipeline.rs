//! Ordered parallel upload of sealed segments and the durable watermark.
//!
//! The archiver of every engine produces [`SealedSegment`]s in log order and
//! hands them to an [`Uploader`]. The uploader stores up to `parallelism`
//! segments at once, but advances the *durable watermark* strictly in log
//! order: the watermark is the end position of the longest prefix of the
//! submitted segments that are all stored. Only that watermark may be
//! reported to the database as flushed (rule 2 of the architecture: received,
//! durable and reported are three different positions).
//!
//! Backpressure: the log bytes queued or in flight are bounded
//! (`max_in_flight_bytes`, default 32 MiB) as well as their count. When
//! storage stalls, [`Uploader::submit`] waits, the archiver stops reading its
//! socket and the server retains the log; memory stays bounded however slow
//! the storage is.
//!
//! Stores are idempotent (create-if-absent with identical bytes is a success),
//! so a transient failure is retried with backoff until it succeeds or the
//! uploader is cancelled; a definite failure (divergent history, permission)
//! stops the uploader and is returned from [`Uploader::finish`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesOrdered, StreamExt};
use pitr_segment::{Epoch, LogPos, TimestampMicros};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

pub use pitr_segment::SealedSegment;

/// Error of a [`SegmentSink`], classified for retrying.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    pub message: String,
    pub transient: bool,
}

impl SinkError {
    pub fn transient(message: impl Into<String>) -> SinkError {
        SinkError {
            message: message.into(),
            transient: true,
        }
    }
    pub fn definite(message: impl Into<String>) -> SinkError {
        SinkError {
            message: message.into(),
            transient: false,
        }
    }
}

/// Where sealed segments go (the repository in production).
pub trait SegmentSink: Send + Sync + 'static {
    /// Stores one segment; must be idempotent for identical input.
    fn store<'a>(
        &'a self,
        seg: &'a SealedSegment,
    ) -> Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>>;
}

/// The durable position: everything up to `pos` in `epoch` is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durable {
    pub epoch: Epoch,
    pub pos: LogPos,
    pub last_commit: Option<TimestampMicros>,
}

/// Counters shared with monitoring.
#[derive(Debug, Default)]
pub struct UploadStats {
    pub segments_uploaded: AtomicU64,
    pub bytes_uploaded: AtomicU64,
    pub upload_errors: AtomicU64,
}

/// Tunables of the uploader.
#[derive(Debug, Clone)]
pub struct UploaderOptions {
    /// Segments stored concurrently.
    pub parallelism: usize,
    /// Sealed segments waiting beyond those in flight.
    pub queue: usize,
    /// First retry delay; doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Log bytes submitted but not yet stored, at most (a larger single
    /// segment is admitted alone).
    pub max_in_flight_bytes: usize,
}

impl Default for UploaderOptions {
    fn default() -> Self {
        UploaderOptions {
            parallelism: 4,
            queue: 4,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            max_in_flight_bytes: 32 << 20,
        }
    }
}

/// Ordered parallel uploader; see the module docs.
pub struct Uploader {
    tx: Option<mpsc::Sender<(SealedSegment, OwnedSemaphorePermit)>>,
    budget: Arc<Semaphore>,
    budget_units: u32,
    durable: watch::Receiver<Option<Durable>>,
    task: JoinHandle<Result<(), SinkError>>,
    stats: Arc<UploadStats>,
}

impl Uploader {
    /// Starts the upload task. `initial` is the watermark already durable
    /// (the repository's tail), if any.
    pub fn start(
        sink: Arc<dyn SegmentSink>,
        opts: UploaderOptions,
        initial: Option<Durable>,
        stats: Arc<UploadStats>,
    ) -> Uploader {
        let (tx, rx) = mpsc::channel(opts.queue.max(1));
        let (wtx, wrx) = watch::channel(initial);
        let budget_units = units(opts.max_in_flight_bytes).max(1);
        let budget = Arc::new(Semaphore::new(budget_units as usize));
        let task = tokio::spawn(run(sink, opts, rx, wtx, stats.clone()));
        Uploader {
            tx: Some(tx),
            budget,
            budget_units,
            durable: wrx,
            task,
            stats,
        }
    }

    /// Queues a segment; waits while the queue is full (backpressure).
    /// Fails only when the upload task has stopped on a definite error.
    pub async fn submit(&self, seg: SealedSegment) -> Result<(), SinkError> {
        let want = units(seg.raw_len()).clamp(1, self.budget_units);
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(want)
            .await
            .map_err(|_| SinkError::definite("the uploader is closed"))?;
        match &self.tx {
            Some(tx) => tx
                .send((seg, permit))
                .await
                .map_err(|_| SinkError::definite("the upload task stopped")),
            None => Err(SinkError::definite("the uploader is finished")),
        }
    }

    /// The current durable watermark.
    pub fn durable(&self) -> Option<Durable> {
        *self.durable.borrow()
    }

    /// A receiver that changes whenever the watermark advances.
    pub fn watch(&self) -> watch::Receiver<Option<Durable>> {
        self.durable.clone()
    }

    pub fn stats(&self) -> &Arc<UploadStats> {
        &self.stats
    }

    /// True once the task has stopped (on an error, or after `finish`).
    pub fn is_stopped(&self) -> bool {
        self.task.is_finished()
    }

    /// Closes the queue, waits for every submitted segment to be stored and
    /// returns the final watermark.
    pub async fn finish(mut self) -> Result<Option<Durable>, SinkError> {
        self.tx.take();
        match (&mut self.task).await {
            Ok(Ok(())) => Ok(*self.durable.borrow()),
            Ok(Err(e)) => Err(e),
            Err(join) => Err(SinkError::definite(format!("upload task failed: {join}"))),
        }
    }
}

/// Budget units (4 KiB) for `bytes`.
fn units(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(4096)).unwrap_or(u32::MAX)
}

async fn run(
    sink: Arc<dyn SegmentSink>,
    opts: UploaderOptions,
    mut rx: mpsc::Receiver<(SealedSegment, OwnedSemaphorePermit)>,
    watermark: watch::Sender<Option<Durable>>,
    stats: Arc<UploadStats>,
) -> Result<(), SinkError> {
    let mut in_flight = FuturesOrdered::new();
    let mut closed = false;
    loop {
        tokio::select! {
            // Prefer completing uploads so the watermark moves promptly.
            biased;
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                let seg: Arc<SealedSegment> = done?;
                stats.segments_uploaded.fetch_add(1, Ordering::Relaxed);
                stats.bytes_uploaded.fetch_add(seg.raw_len() as u64, Ordering::Relaxed);
                let prev_commit = watermark.borrow().and_then(|d| d.last_commit);
                let _ = watermark.send(Some(Durable {
                    epoch: seg.epoch,
                    pos: seg.end,
                    last_commit: seg.last_commit.or(prev_commit),
                }));
            }
            next = rx.recv(), if !closed && in_flight.len() < opts.parallelism.max(1) => {
                match next {
                    Some((seg, permit)) => {
                        let sink = sink.clone();
                        let opts = opts.clone();
                        let stats = stats.clone();
                        in_flight.push_back(async move {
                            let seg = Arc::new(seg);
                            store_with_retry(&*sink, &seg, &opts, &stats).await?;
                            // The bytes are stored: give their budget back.
                            drop(permit);
                            Ok::<_, SinkError>(seg)
                        });
                    }
                    None => closed = true,
                }
            }
            else => break,
        }
        if closed && in_flight.is_empty() {
            break;
        }
    }
    Ok(())
}

async fn store_with_retry(
    sink: &dyn SegmentSink,
    seg: &SealedSegment,
    opts: &UploaderOptions,
    stats: &UploadStats,
) -> Result<(), SinkError> {
    let mut backoff = crate::retry::Backoff::new(opts.initial_backoff, opts.max_backoff);
    loop {
        match sink.store(seg).await {
            Ok(()) => return Ok(()),
            Err(e) if e.transient => {
                stats.upload_errors.fetch_add(1, Ordering::Relaxed);
                let delay = backoff.next_delay();
                tracing::warn!(
                    start = %seg.start, end = %seg.end,
                    "storing segment failed, retrying in {:?}: {}", delay, e.message
                );
                tokio::time::sleep(delay).await;
            }
            Err(e) => {
                stats.upload_errors.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A sink whose latency is chosen per segment, that fails transiently
    /// a given number of times, and records store order.
    struct TestSink {
        delays_ms: Vec<u64>,
        fail_first: Mutex<u32>,
        stored: Mutex<Vec<LogPos>>,
        definite_at: Option<LogPos>,
    }

    impl SegmentSink for TestSink {
        fn store<'a>(
            &'a self,
            seg: &'a SealedSegment,
        ) -> Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>> {
            Box::pin(async move {
                if Some(seg.start) == self.definite_at {
                    return Err(SinkError::definite("divergent"));
                }
                {
                    let mut f = self.fail_first.lock().unwrap();
                    if *f > 0 {
                        *f -= 1;
                        return Err(SinkError::transient("flaky"));
                    }
                }
                let idx = seg.start.lo as usize / 10;
                let d = self.delays_ms.get(idx).copied().unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(d)).await;
                self.stored.lock().unwrap().push(seg.start);
                Ok(())
            })
        }
    }

    fn seg(i: u64) -> SealedSegment {
        SealedSegment {
            epoch: Epoch(1),
            start: LogPos::from_lsn(i * 10),
            end: LogPos::from_lsn(i * 10 + 10),
            first_commit: Some(TimestampMicros(i as i64)),
            last_commit: Some(TimestampMicros(i as i64)),
            records: 1,
            raw: vec![bytes::Bytes::from(vec![0u8; 10])],
        }
    }

    fn opts() -> UploaderOptions {
        UploaderOptions {
            parallelism: 3,
            queue: 2,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(4),
            max_in_flight_bytes: 1 << 20,
        }
    }

    #[tokio::test]
    async fn watermark_advances_in_order_despite_out_of_order_completion() {
        // Segment 0 is the slowest: nothing may be durable until it is stored.
        let sink = Arc::new(TestSink {
            delays_ms: vec![80, 1, 1, 1, 1, 1],
            fail_first: Mutex::new(0),
            stored: Mutex::new(vec![]),
            definite_at: None,
        });
        let up = Uploader::start(sink.clone(), opts(), None, Arc::default());
        let mut w = up.watch();
        let seen = tokio::spawn(async move {
            let mut seen = vec![];
            while w.changed().await.is_ok() {
                if let Some(d) = *w.borrow() {
                    seen.push(d.pos.lo);
                }
            }
            seen
        });
        for i in 0..3 {
            up.submit(seg(i)).await.unwrap();
        }
        // Segments 1 and 2 are stored by now, segment 0 is not: nothing is durable.
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(sink.stored.lock().unwrap().len(), 2);
        assert_eq!(up.durable(), None);
        for i in 3..6 {
            up.submit(seg(i)).await.unwrap();
        }
        let fin = up.finish().await.unwrap().unwrap();
        assert_eq!(fin.pos, LogPos::from_lsn(60));
        let seen = seen.await.unwrap();
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        let stored = sink.stored.lock().unwrap().clone();
        assert_ne!(stored[0], LogPos::from_lsn(0), "{stored:?}");
    }

    #[tokio::test]
    async fn transient_errors_are_retried_and_counted() {
        let sink = Arc::new(TestSink {
            delays_ms: vec![],
            fail_first: Mutex::new(3),
            stored: Mutex::new(vec![]),
            definite_at: None,
        });
        let stats = Arc::new(UploadStats::default());
        let up = Uploader::start(sink.clone(), opts(), None, stats.clone());
        up.submit(seg(0)).await.unwrap();
        up.submit(seg(1)).await.unwrap();
        let fin = up.finish().await.unwrap().unwrap();
        assert_eq!(fin.pos, LogPos::from_lsn(20));
        assert_eq!(stats.upload_errors.load(Ordering::Relaxed), 3);
        assert_eq!(stats.segments_uploaded.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn definite_error_stops_without_advancing_past_it() {
        let sink = Arc::new(TestSink {
            delays_ms: vec![],
            fail_first: Mutex::new(0),
            stored: Mutex::new(vec![]),
            definite_at: Some(LogPos::from_lsn(20)),
        });
        let up = Uploader::start(sink, opts(), None, Arc::default());
        let w = up.watch();
        for i in 0..5 {
            if up.submit(seg(i)).await.is_err() {
                break;
            }
        }
        let err = up.finish().await.unwrap_err();
        assert!(!err.transient);
        let last = w.borrow().map(|d| d.pos.lo).unwrap_or(0);
        assert!(last <= 20, "watermark {last} passed the failed segment");
    }

    #[tokio::test]
    async fn in_flight_bytes_are_bounded() {
        // A sink that never finishes until released: submits beyond the byte
        // budget must wait.
        struct Stuck(tokio::sync::Notify);
        impl SegmentSink for Stuck {
            fn store<'a>(
                &'a self,
                _seg: &'a SealedSegment,
            ) -> Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>> {
                Box::pin(async move {
                    self.0.notified().await;
                    Ok(())
                })
            }
        }
        let sink = Arc::new(Stuck(tokio::sync::Notify::new()));
        let mut o = opts();
        o.max_in_flight_bytes = 64 << 10;
        o.queue = 100;
        o.parallelism = 100;
        let up = Uploader::start(sink.clone(), o, None, Arc::default());
        let big = |i: u64| SealedSegment {
            raw: vec![bytes::Bytes::from(vec![0u8; 20 << 10])],
            ..seg(i)
        };
        // 3 × 20 KiB fit in 64 KiB, the 4th does not.
        for i in 0..3 {
            up.submit(big(i)).await.unwrap();
        }
        let fourth = tokio::time::timeout(Duration::from_millis(100), up.submit(big(3))).await;
        assert!(
            fourth.is_err(),
            "a 4th segment was admitted beyond the byte budget"
        );
        sink.0.notify_waiters();
        tokio::time::sleep(Duration::from_millis(20)).await;
        sink.0.notify_waiters();
        tokio::time::timeout(Duration::from_secs(2), up.submit(big(3)))
            .await
            .expect("budget released after storing")
            .unwrap();
        sink.0.notify_waiters();
        // Release everything left so finish() completes.
        let releaser = {
            let sink = sink.clone();
            tokio::spawn(async move {
                for _ in 0..50 {
                    sink.0.notify_waiters();
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        };
        up.finish().await.unwrap();
        releaser.abort();
    }
}
