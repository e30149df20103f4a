//! A stand-in for `pitr archive` in the MongoDB restore tests (the real
//! archiver is built on another branch): copies the source's oplog into the
//! repository as segments, with the proto crate's segmenter.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bson::{doc, RawDocumentBuf};
use futures::TryStreamExt as _;
use mongodb::{Client, Collection};
use pitr::archive::identity::{ensure_identity, SourceIdentity};
use pitr::archive::keys::{SegmentKey, SourceName};
use pitr::storage::Repo;
use pitr_mongodb::{OplogEntryRef, OplogTs, Segmenter};
use tokio::sync::watch;

/// Stand-in for `pitr archive` (built on another branch): copies the
/// source's oplog into the repository as segments every 200 ms, with the
/// proto crate's segmenter (cut-safe boundaries, positions chained across
/// terms), until told to stop and caught up.
pub async fn copy_oplog(
    url: String,
    repo_path: String,
    name: &'static str,
    mut stop: watch::Receiver<bool>,
) {
    let repo = Repo::open(&repo_path).await.unwrap();
    ensure_identity(
        &repo,
        &SourceIdentity::new(name, pitr_segment::Engine::MongoDb, "rs0"),
    )
    .await
    .unwrap();
    let source = SourceName::new(name).unwrap();
    let c = Client::with_uri_str(&url).await.unwrap();
    let oplog: Collection<RawDocumentBuf> = c.database("local").collection("oplog.rs");
    let mut seg = Segmenter::new();
    let mut last: Option<OplogTs> = None;
    loop {
        let stopping = *stop.borrow();
        let filter = match last {
            Some(t) => doc! {"ts": {"$gt": t.to_bson()}},
            None => doc! {},
        };
        let entries: Vec<RawDocumentBuf> = oplog
            .find(filter)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let mut sealed = Vec::new();
        for raw in &entries {
            let e = OplogEntryRef::from_bytes(raw.as_bytes()).unwrap();
            sealed.extend(seg.push(&e, std::time::Instant::now()).unwrap());
            last = Some(e.ts());
        }
        sealed.extend(seg.cut());
        for s in sealed {
            let key = SegmentKey {
                source: source.clone(),
                epoch: s.epoch,
                start: s.start,
                end: s.end,
                tmin: s.first_commit,
                tmax: s.last_commit,
            };
            let body = s
                .encode("rs0", pitr_segment::Codec::DEFAULT, Default::default())
                .unwrap();
            repo.put_if_absent(&key.to_key(), body.into())
                .await
                .unwrap();
        }
        if stopping && entries.is_empty() {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), stop.changed()).await;
    }
}
