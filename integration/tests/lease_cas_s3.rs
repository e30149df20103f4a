//! Compare-and-swap (the writer lease's primitive) against real S3 servers:
//! moto and s3s-fs enforce If-None-Match / If-Match, so of two contenders
//! exactly one wins and a stale version always loses.
#![allow(clippy::unwrap_used)]

use pitr::storage::{conformance, Repo};
use pitr_integration::{require, s3, S3Impl, S3Server};

async fn cas(i: S3Impl) {
    let server = S3Server::start(i).unwrap();
    let repo = Repo::open_with(&server.repo_url("lease/prefix"), &server.env())
        .await
        .unwrap();
    conformance::compare_and_swap(&repo, "cas").await;
}

#[tokio::test]
async fn compare_and_swap_moto() {
    require!(s3::available(S3Impl::Moto));
    cas(S3Impl::Moto).await;
}

#[tokio::test]
async fn compare_and_swap_s3s_fs() {
    require!(s3::available(S3Impl::S3sFs));
    cas(S3Impl::S3sFs).await;
}
