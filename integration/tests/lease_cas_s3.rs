//! Compare-and-swap (the writer lease's primitive) against real S3 servers:
//! moto and s3s-fs enforce If-None-Match / If-Match, so of two contenders
//! exactly one wins and a stale version always loses.
//!
//! Found here: s3s-fs checks If-None-Match / If-Match and then writes
//! without holding a lock, so two *simultaneous* creates, or updates from
//! one version, can both succeed (observed both). One after the other its
//! preconditions are exact, so it is tested that way; on such a server two
//! contenders can both take a lease, which fencing then contains. moto is
//! exact under concurrency.
#![allow(clippy::unwrap_used)]

use pitr::storage::{conformance, Repo};
use pitr_integration::{require, s3, S3Impl, S3Server};

async fn cas(i: S3Impl, concurrent: bool) {
    let server = S3Server::start(i).unwrap();
    let repo = Repo::open_with(&server.repo_url("lease/prefix"), &server.env())
        .await
        .unwrap();
    conformance::compare_and_swap_with(&repo, "cas", concurrent).await;
}

#[tokio::test]
async fn compare_and_swap_moto() {
    require!(s3::available(S3Impl::Moto));
    cas(S3Impl::Moto, true).await;
}

#[tokio::test]
async fn compare_and_swap_s3s_fs() {
    require!(s3::available(S3Impl::S3sFs));
    cas(S3Impl::S3sFs, false).await;
}

/// On a real S3 server: the If-Match probe passes (the server refuses a
/// stale version), and a lease object deleted after two takeovers does not
/// lower the next generation (it continues above every takeover record).
async fn generations(i: S3Impl) {
    use pitr::archive::keys::{writer_lease_key, SourceName};
    use pitr::archive::lease::{generation_floor, Lease, LeaseOptions};
    use pitr_segment::{Epoch, LogPos};
    let server = S3Server::start(i).unwrap();
    let repo = Repo::open_with(&server.repo_url("gens"), &server.env())
        .await
        .unwrap();
    assert!(repo.conditional_updates().await.unwrap());
    let src = SourceName::new("main").unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let opts = LeaseOptions {
        ttl: std::time::Duration::from_secs(5),
        wait: false,
        single_writer: false,
    };
    for (want, at) in [(1u32, 100u64), (2, 200)] {
        let l = Lease::acquire(&repo, &src, opts, &cancel).await.unwrap();
        assert_eq!(l.generation(), want);
        l.record_takeover(Some((Epoch(1), LogPos::from_lsn(at))))
            .await
            .unwrap();
        l.release().await;
    }
    repo.delete(&writer_lease_key(&src)).await.unwrap();
    assert_eq!(generation_floor(&repo, &src).await.unwrap(), 2);
    let l = Lease::acquire(&repo, &src, opts, &cancel).await.unwrap();
    assert_eq!(l.generation(), 3);
    l.release().await;
}

#[tokio::test]
async fn generations_continue_after_the_lease_object_is_deleted_moto() {
    require!(s3::available(S3Impl::Moto));
    generations(S3Impl::Moto).await;
}

#[tokio::test]
async fn generations_continue_after_the_lease_object_is_deleted_s3s_fs() {
    require!(s3::available(S3Impl::S3sFs));
    generations(S3Impl::S3sFs).await;
}

/// moto behind a proxy that drops `If-Match` (as a server or gateway that
/// ignores it would): the probe notices, and archiving is refused with a
/// sentence naming the header, unless a single writer is declared.
#[tokio::test]
async fn a_server_that_drops_if_match_is_refused_by_name() {
    use pitr::archive::keys::SourceName;
    use pitr::archive::lease::{Lease, LeaseError, LeaseOptions};
    use pitr_integration::header_proxy::HeaderProxy;
    require!(s3::available(S3Impl::Moto));
    let server = S3Server::start(S3Impl::Moto).unwrap();
    let upstream = format!("127.0.0.1:{}", server.port()).parse().unwrap();
    let proxy = HeaderProxy::start(upstream, &["If-Match"]).unwrap();
    let env: Vec<(String, String)> = server
        .env()
        .into_iter()
        .map(|(k, v)| {
            let v = if k == "AWS_ENDPOINT_URL" {
                proxy.endpoint()
            } else {
                v
            };
            (k, v)
        })
        .collect();
    let repo = Repo::open_with(&server.repo_url("stripped"), &env)
        .await
        .unwrap();
    assert!(
        repo.conditional_puts().await.unwrap(),
        "If-None-Match passes"
    );
    assert!(!repo.conditional_updates().await.unwrap());
    assert!(proxy.dropped() > 0, "the proxy dropped If-Match");
    let src = SourceName::new("main").unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let mut opts = LeaseOptions {
        ttl: std::time::Duration::from_secs(5),
        wait: false,
        single_writer: false,
    };
    match Lease::acquire(&repo, &src, opts, &cancel).await {
        Err(e @ LeaseError::Unsupported { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("If-Match") && msg.contains("--single-writer"),
                "{msg}"
            );
        }
        other => panic!("expected a refusal naming If-Match, got {other:?}"),
    }
    opts.single_writer = true;
    let l = Lease::acquire(&repo, &src, opts, &cancel).await.unwrap();
    assert_eq!(l.generation(), 1);
    l.release().await;
    // Straight to moto (no proxy) the same repository passes the probe.
    let direct = Repo::open_with(&server.repo_url("stripped"), &server.env())
        .await
        .unwrap();
    assert!(direct.conditional_updates().await.unwrap());
}
