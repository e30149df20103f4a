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
