//! The repository conformance suite against local disk, memory, and a store
//! that silently ignores conditional puts (the fallback protocol), plus
//! request counting and URL handling.

#![allow(clippy::unwrap_used)] // test helpers unwrap; the workspace lint targets production code

use std::sync::Arc;

use bytes::Bytes;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, PutOptions, PutPayload};
use pitr::storage::faults::{Fault, FaultyStore};
use pitr::storage::{conformance, PutOutcome, Repo, StorageError};

#[tokio::test]
async fn memory_backend_conforms() {
    let repo = Repo::open("memory://").await.unwrap();
    conformance::run_all(&repo, "suite").await;
    assert!(repo.conditional_puts().await.unwrap());
}

#[tokio::test]
async fn local_backend_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("not/yet/there");
    let repo = Repo::open(nested.to_str().unwrap()).await.unwrap();
    conformance::run_all(&repo, "suite").await;
    assert!(repo.conditional_puts().await.unwrap());
    // The objects are plain files under the directory.
    assert!(nested.join("suite/get/data.bin").is_file());
    // file:// URLs open the same repository.
    let url = format!("file://{}", nested.display());
    let again = Repo::open(&url).await.unwrap();
    assert_eq!(
        again.get("suite/pia/obj.seg").await.unwrap(),
        Bytes::from_static(b"first version")
    );
}

#[tokio::test]
async fn local_repo_in_unwritable_place_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let err = Repo::open(file.join("sub").to_str().unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::LocalDir { .. }), "{err:?}");
    assert!(err.to_string().contains("writable"), "{err}");
}

#[tokio::test]
async fn bad_urls_are_rejected() {
    for url in ["ftp://x/y", "s3://", "file://"] {
        let err = Repo::open(url).await.unwrap_err();
        assert!(
            matches!(err, StorageError::InvalidUrl { .. }),
            "{url}: {err:?}"
        );
    }
    let err = Repo::open_with(
        "s3://bucket/p",
        &[("AWS_NO_SUCH_SETTING".into(), "secret-value".into())],
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("AWS_NO_SUCH_SETTING"), "{msg}");
    assert!(
        !msg.contains("secret-value"),
        "a setting's value leaked: {msg}"
    );
}

#[tokio::test]
async fn invalid_keys_are_rejected() {
    let repo = Repo::open("memory://").await.unwrap();
    for key in ["", "/abs", "dir/", "a//b"] {
        let err = repo.put_if_absent(key, Bytes::new()).await.unwrap_err();
        assert!(
            matches!(err, StorageError::InvalidKey { .. }),
            "{key:?}: {err:?}"
        );
    }
}

#[tokio::test]
async fn ignored_conditional_puts_are_detected_and_never_overwrite() {
    let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let repo = Repo::from_store(
        Arc::new(FaultyStore::new(
            Arc::clone(&inner),
            Fault::IgnoreConditions,
        )),
        "ignoring",
    );
    assert!(
        !repo.conditional_puts().await.unwrap(),
        "probe must detect ignored conditions"
    );
    conformance::run_all(&repo, "suite").await;
    // No scratch objects are left behind (probe and fallback uploads).
    let leftovers = repo.list(".pitr-scratch").await.unwrap();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn fallback_costs_more_requests_but_never_overwrites() {
    let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let repo = Repo::from_store(
        Arc::new(FaultyStore::new(
            Arc::clone(&inner),
            Fault::IgnoreConditions,
        )),
        "ignoring",
    );
    repo.put_if_absent("k", Bytes::from_static(b"one"))
        .await
        .unwrap();
    let before = repo.requests();
    let err = repo
        .put_if_absent("k", Bytes::from_static(b"two"))
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::Divergent { .. }));
    let cost = repo.requests().since(&before);
    assert_eq!(cost.put, 0, "a divergent write must not PUT at all: {cost}");
    assert_eq!(cost.head, 1, "{cost}");
    assert_eq!(cost.get, 1, "{cost}");
    assert_eq!(repo.get("k").await.unwrap(), Bytes::from_static(b"one"));
}

#[tokio::test]
async fn requests_are_counted_per_list_page() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let repo = Repo::from_store(Arc::clone(&store), "mem");
    for i in 0..2500u32 {
        store
            .put_opts(
                &Path::from(format!("p/{i:05}")),
                PutPayload::from_static(b"x"),
                PutOptions::default(),
            )
            .await
            .unwrap();
    }
    let before = repo.requests();
    assert_eq!(repo.list("p").await.unwrap().len(), 2500);
    assert_eq!(repo.requests().since(&before).list, 3);
    let before = repo.requests();
    assert!(repo.list("q").await.unwrap().is_empty());
    assert_eq!(repo.requests().since(&before).list, 1);
    let before = repo.requests();
    let outcome = repo
        .put_if_absent("p/00001", Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert_eq!(outcome, PutOutcome::AlreadyIdentical);
    let c = repo.requests().since(&before);
    // First use probes conditional puts: 2 probe puts + 1 delete, then put + get.
    assert_eq!((c.put, c.get, c.delete), (3, 1, 1), "{c}");
}

#[tokio::test]
async fn reading_verbs_do_not_create_a_missing_local_repository() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("typo");
    let err = match pitr::storage::Repo::open_existing(missing.to_str().unwrap()).await {
        Ok(_) => panic!("a missing directory must be an error"),
        Err(e) => e,
    };
    assert!(err.to_string().contains("check --repo"), "{err}");
    assert!(!missing.exists(), "open_existing created the directory");
    let url = format!("file://{}", missing.display());
    assert!(pitr::storage::Repo::open_existing(&url).await.is_err());
    // Writers create it.
    pitr::storage::Repo::open(missing.to_str().unwrap())
        .await
        .unwrap();
    assert!(missing.is_dir());
    pitr::storage::Repo::open_existing(&url).await.unwrap();
}
