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
