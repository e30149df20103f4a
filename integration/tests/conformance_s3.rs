//! The repository conformance suite, catalog, roll-up index and compaction
//! against real S3 servers (moto and s3s-fs), configured with explicit
//! settings (no process-global environment), under a key prefix.

#![allow(clippy::unwrap_used)] // test helpers unwrap; the workspace lint targets production code

use std::time::Duration;

use bytes::Bytes;
use pitr::archive::catalog::Catalog;
use pitr::archive::compaction::{compact, CompactionOptions};
use pitr::archive::identity::{ensure_identity, IdentityError, SourceIdentity};
use pitr::archive::keys::{SegmentKey, SourceName};
use pitr::archive::rollup::Indexer;
use pitr::storage::{conformance, Repo};
use pitr_integration::{require, s3, S3Impl, S3Server};
use pitr_segment::{
    decode, encode, Codec, Engine, Epoch, LogPos, SegmentHeader, TimestampMicros, WriterOptions,
};

async fn repo(server: &S3Server, prefix: &str) -> Repo {
    Repo::open_with(&server.repo_url(prefix), &server.env())
        .await
        .unwrap()
}

async fn suite(i: S3Impl) {
    let server = S3Server::start(i).unwrap();
    let r = repo(&server, "conf/under/prefix").await;
    assert!(
        r.conditional_puts().await.unwrap(),
        "{i:?} enforces conditional puts"
    );
    conformance::run_all(&r, "suite").await;
    // The prefix isolates repositories sharing a bucket.
    let other = repo(&server, "conf/other").await;
    assert!(other.list("suite").await.unwrap().is_empty());
    assert!(other.list_dirs("").await.unwrap().is_empty());
    // Wrong credentials: a definite error that says what to check, without the secret.
    let mut bad = server.env();
    for (k, v) in bad.iter_mut() {
        if k == "AWS_SECRET_ACCESS_KEY" {
            *v = "wrong-secret-value".into();
        }
    }
    let denied = Repo::open_with(&server.repo_url("conf"), &bad)
        .await
        .unwrap();
    match denied.get("suite/anything").await {
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains("wrong-secret-value"), "secret leaked: {msg}");
            assert!(!msg.contains(server.secret_key()), "secret leaked: {msg}");
        }
        Ok(_) => panic!("{i:?} accepted a wrong secret"),
    }
}

fn src() -> SourceName {
    SourceName::new("orders").unwrap()
}

async fn archive_flow(i: S3Impl) {
    let server = S3Server::start(i).unwrap();
    let r = repo(&server, "flow").await;
    let id = SourceIdentity::new("orders", Engine::Postgres, "7301234567890123456");
    ensure_identity(&r, &id).await.unwrap();
    let foreign = SourceIdentity::new("orders", Engine::Postgres, "42");
    assert!(matches!(
        ensure_identity(&r, &foreign).await,
        Err(IdentityError::Foreign { .. })
    ));

    // 30 small segments.
    let mut want = Vec::new();
    let mut pos = 0u64;
    for n in 0..30u64 {
        let payload: Vec<u8> = (0..2000 + n * 10).map(|b| (b * n % 13) as u8).collect();
        let header = SegmentHeader {
            engine: Engine::Postgres,
            source_id: id.system_id.clone(),
            epoch: Epoch(1),
            start: LogPos::from_lsn(pos),
            codec: Codec::DEFAULT,
            key_id: 0,
        };
        let end = LogPos::from_lsn(pos + payload.len() as u64);
        let t = Some(TimestampMicros(n as i64 * 1000));
        let obj = encode(header, &payload, end, t, t, 1, WriterOptions::default()).unwrap();
        let key = SegmentKey {
            source: src(),
            epoch: Epoch(1),
            start: LogPos::from_lsn(pos),
            end,
            tmin: t,
            tmax: t,
            generation: 0,
        };
        r.put_if_absent(&key.to_key(), Bytes::from(obj))
            .await
            .unwrap();
        want.extend_from_slice(&payload);
        pos = end.lo;
    }
    let written = Indexer {
        segments_per_index: 5,
        fan_out: 3,
    }
    .roll_up(&r, &src())
    .await
    .unwrap()
    .written;
    assert_eq!(written.len(), 6 + 2);
    let opts = CompactionOptions {
        target_size: 1500,
        min_age: Duration::from_secs(1),
        writer: WriterOptions::default(),
    };
    let report = compact(&r, &src(), &opts, TimestampMicros(1_000_000_000))
        .await
        .unwrap();
    assert!(
        !report.merged.is_empty() && !report.deleted.is_empty(),
        "{report:?}"
    );

    let before = r.requests();
    let c = Catalog::load(&r, &src()).await.unwrap();
    eprintln!(
        "MEASURED ({i:?}): catalog load after compaction: {}",
        r.requests().since(&before)
    );
    assert_eq!(c.stats().redundant_segments, 0);
    let chain = c
        .segments_covering(Epoch(1), LogPos::ZERO, LogPos::from_lsn(pos))
        .unwrap();
    assert!(chain.len() < 30);
    let mut got = Vec::new();
    for k in &chain {
        got.extend_from_slice(&decode(&r.get(&k.to_key()).await.unwrap()).unwrap().1);
    }
    assert!(got == want, "payload differs after compaction on {i:?}");
}

#[tokio::test]
async fn moto_conforms() {
    require!(s3::available(S3Impl::Moto));
    suite(S3Impl::Moto).await;
}

#[tokio::test]
async fn s3s_fs_conforms() {
    require!(s3::available(S3Impl::S3sFs));
    suite(S3Impl::S3sFs).await;
}

#[tokio::test]
async fn moto_archive_index_compaction() {
    require!(s3::available(S3Impl::Moto));
    archive_flow(S3Impl::Moto).await;
}

#[tokio::test]
async fn s3s_fs_archive_index_compaction() {
    require!(s3::available(S3Impl::S3sFs));
    archive_flow(S3Impl::S3sFs).await;
}
