//! One failure-injecting object store for the tests of every layer: it wraps
//! any store and misbehaves in one chosen way ([`Fault`]), the way servers
//! and crashes do. Used through [`crate::storage::Repo::from_store`].
//!
//! * servers that ignore conditional writes: every put overwrites
//!   ([`Fault::IgnoreConditions`]), or only `If-Match` is dropped
//!   ([`Fault::IgnoreIfMatch`]);
//! * an answer lost after the server applied the request
//!   ([`Fault::FailUpdateAfterApplying`]); a slow server ([`Fault::SlowPuts`]);
//! * a process that dies part way: from the n-th counted operation on, each
//!   one is performed and then reported failed; with `dead_after`, every
//!   operation after that fails without reaching the store
//!   ([`Fault::CrashAfter`]).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt as _;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// How a [`FaultyStore`] misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Every put overwrites (no `If-None-Match`, no `If-Match`).
    IgnoreConditions,
    /// Conditional creates are honoured; `If-Match` is dropped.
    IgnoreIfMatch,
    /// The `nth` conditional update (1-based) is applied, then answered with
    /// a transient error.
    FailUpdateAfterApplying { nth: u64 },
    /// Every put is held back this long before it reaches the store (a slow
    /// or congested server).
    SlowPuts(std::time::Duration),
    /// From the `at`-th counted operation on (1-based), each is performed and
    /// then reported as failed. `writes_only`: only puts, copies and
    /// deletions count (reads pass); `dead_after`: once it fired, every
    /// operation fails without being performed.
    CrashAfter {
        at: u64,
        writes_only: bool,
        dead_after: bool,
    },
}

/// A store that misbehaves as its [`Fault`] says.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    fault: Fault,
    counted: AtomicU64,
    injected: AtomicU64,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>, fault: Fault) -> FaultyStore {
        FaultyStore {
            inner,
            fault,
            counted: AtomicU64::new(0),
            injected: AtomicU64::new(0),
        }
    }

    /// How many failures were injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    fn error(&self, what: &'static str) -> object_store::Error {
        self.injected.fetch_add(1, Ordering::SeqCst);
        object_store::Error::Generic {
            store: "FaultyStore",
            source: what.into(),
        }
    }

    /// Counts one operation (a write when `write`); true when it must be
    /// reported failed after being performed.
    fn tick(&self, write: bool) -> bool {
        match self.fault {
            Fault::CrashAfter {
                at, writes_only, ..
            } if write || !writes_only => self.counted.fetch_add(1, Ordering::SeqCst) + 1 >= at,
            _ => false,
        }
    }

    /// True once a crash with `dead_after` fired: nothing reaches the store.
    fn dead(&self) -> bool {
        match self.fault {
            Fault::CrashAfter {
                at,
                dead_after: true,
                ..
            } => self.counted.load(Ordering::SeqCst) >= at,
            _ => false,
        }
    }

    fn crash(&self) -> object_store::Error {
        self.error("injected crash")
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({:?}, {})", self.fault, self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(&self, l: &Path, p: PutPayload, mut o: PutOptions) -> Result<PutResult> {
        if self.dead() {
            return Err(self.crash());
        }
        let update = matches!(o.mode, PutMode::Update(_));
        match self.fault {
            Fault::SlowPuts(d) => tokio::time::sleep(d).await,
            Fault::IgnoreConditions => o.mode = PutMode::Overwrite,
            Fault::IgnoreIfMatch if update => o.mode = PutMode::Overwrite,
            Fault::FailUpdateAfterApplying { nth } if update => {
                let n = self.counted.fetch_add(1, Ordering::SeqCst) + 1;
                if n == nth {
                    self.inner.put_opts(l, p, o).await?;
                    return Err(self.error("connection reset after the request was applied"));
                }
            }
            _ => {}
        }
        let r = self.inner.put_opts(l, p, o).await;
        if self.tick(true) {
            return Err(self.crash());
        }
        r
    }

    async fn put_multipart_opts(
        &self,
        l: &Path,
        o: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        if self.dead() || self.tick(true) {
            return Err(self.crash());
        }
        self.inner.put_multipart_opts(l, o).await
    }

    async fn get_opts(&self, l: &Path, o: GetOptions) -> Result<GetResult> {
        if self.dead() {
            return Err(self.crash());
        }
        let r = self.inner.get_opts(l, o).await;
        if self.tick(false) {
            return Err(self.crash());
        }
        r
    }

    fn delete_stream(
        &self,
        l: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        if self.dead() {
            let e = || object_store::Error::Generic {
                store: "FaultyStore",
                source: "injected crash".into(),
            };
            self.injected.fetch_add(1, Ordering::SeqCst);
            return l.map(move |_| Err(e())).boxed();
        }
        let fail = self.tick(true);
        if fail {
            self.injected.fetch_add(1, Ordering::SeqCst);
        }
        self.inner
            .delete_stream(l)
            .map(move |r| {
                if fail {
                    r.and(Err(object_store::Error::Generic {
                        store: "FaultyStore",
                        source: "injected crash".into(),
                    }))
                } else {
                    r
                }
            })
            .boxed()
    }

    fn list(&self, p: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        if self.dead() || self.tick(false) {
            let e = self.crash();
            return futures::stream::once(async move { Err(e) }).boxed();
        }
        self.inner.list(p)
    }

    async fn list_with_delimiter(&self, p: Option<&Path>) -> Result<ListResult> {
        if self.dead() {
            return Err(self.crash());
        }
        let r = self.inner.list_with_delimiter(p).await;
        if self.tick(false) {
            return Err(self.crash());
        }
        r
    }

    async fn copy_opts(&self, f: &Path, t: &Path, o: CopyOptions) -> Result<()> {
        if self.dead() {
            return Err(self.crash());
        }
        let r = self.inner.copy_opts(f, t, o).await;
        if self.tick(true) {
            return Err(self.crash());
        }
        r
    }
}
