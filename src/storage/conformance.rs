//! One behavioural suite every repository backend must pass (local disk,
//! memory, S3 servers, stores that ignore conditional puts). Test support:
//! each check panics with a message naming the backend on failure.
//!
//! Every check works under a caller-chosen `prefix`, so several suites can
//! share one bucket.

use bytes::Bytes;

use crate::storage::{PutOutcome, Repo, StorageError};

fn fail(repo: &Repo, what: &str, detail: impl std::fmt::Display) -> ! {
    panic!("[{repo}] {what}: {detail}")
}

async fn ok<T>(repo: &Repo, what: &str, r: Result<T, StorageError>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => fail(repo, what, e),
    }
}

/// Runs every check.
pub async fn run_all(repo: &Repo, prefix: &str) {
    put_if_absent(repo, &format!("{prefix}/pia")).await;
    get_and_range(repo, &format!("{prefix}/get")).await;
    list_order(repo, &format!("{prefix}/list")).await;
    delete(repo, &format!("{prefix}/del")).await;
}

/// Create, identical retry, divergent write.
pub async fn put_if_absent(repo: &Repo, prefix: &str) {
    let key = format!("{prefix}/obj.seg");
    let a = Bytes::from_static(b"first version");
    let b = Bytes::from_static(b"second version");
    let r = ok(repo, "first put", repo.put_if_absent(&key, a.clone()).await).await;
    if r != PutOutcome::Created {
        fail(repo, "first put", format!("expected Created, got {r:?}"));
    }
    let r = ok(
        repo,
        "identical retry",
        repo.put_if_absent(&key, a.clone()).await,
    )
    .await;
    if r != PutOutcome::AlreadyIdentical {
        fail(
            repo,
            "identical retry",
            format!("expected AlreadyIdentical, got {r:?}"),
        );
    }
    match repo.put_if_absent(&key, b).await {
        Err(StorageError::Divergent { key: k }) if k == key => {}
        other => fail(
            repo,
            "divergent put",
            format!("expected Divergent, got {other:?}"),
        ),
    }
    let got = ok(repo, "get after divergent", repo.get(&key).await).await;
    if got != a {
        fail(repo, "divergent put", "the original bytes were overwritten");
    }
    match repo.get(&format!("{prefix}/absent")).await {
        Err(e @ StorageError::NotFound { .. }) if !e.is_transient() => {}
        other => fail(
            repo,
            "get absent",
            format!("expected NotFound, got {other:?}"),
        ),
    }
}

/// Whole and ranged reads, head.
pub async fn get_and_range(repo: &Repo, prefix: &str) {
    let key = format!("{prefix}/data.bin");
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let data = Bytes::from(data);
    ok(repo, "put", repo.put_if_absent(&key, data.clone()).await).await;
    let got = ok(repo, "get", repo.get(&key).await).await;
    if got != data {
        fail(repo, "get", "bytes differ");
    }
    let r = ok(repo, "get_range", repo.get_range(&key, 1234..5678).await).await;
    if r != data.slice(1234..5678) {
        fail(repo, "get_range", "bytes differ");
    }
    let meta = ok(repo, "head", repo.head(&key).await).await;
    if meta.size != 10_000 {
        fail(repo, "head", format!("size {} != 10000", meta.size));
    }
    if !ok(repo, "exists", repo.exists(&key).await).await {
        fail(repo, "exists", "present key reported absent");
    }
    if ok(repo, "exists", repo.exists(&format!("{prefix}/nope")).await).await {
        fail(repo, "exists", "absent key reported present");
    }
}

/// Listing is sorted, whole-component prefixes, exclusive offsets, dirs.
pub async fn list_order(repo: &Repo, prefix: &str) {
    // Inserted out of order on purpose.
    let names = [
        "0003", "0001", "0010", "0002", "0001x", "sub/0005", "sub/0004",
    ];
    for n in names {
        let k = format!("{prefix}/a/{n}");
        ok(
            repo,
            "put",
            repo.put_if_absent(&k, Bytes::from(n.to_string())).await,
        )
        .await;
    }
    ok(
        repo,
        "put",
        repo.put_if_absent(&format!("{prefix}/ab/0000"), Bytes::from_static(b"x"))
            .await,
    )
    .await;
    let listed: Vec<String> = ok(repo, "list", repo.list(&format!("{prefix}/a/")).await)
        .await
        .into_iter()
        .map(|m| m.location.to_string())
        .collect();
    let mut want: Vec<String> = names.iter().map(|n| format!("{prefix}/a/{n}")).collect();
    want.sort();
    if listed != want {
        fail(repo, "list", format!("got {listed:?}, want {want:?}"));
    }
    let after: Vec<String> = ok(
        repo,
        "list_after",
        repo.list_after(&format!("{prefix}/a"), &format!("{prefix}/a/0002"))
            .await,
    )
    .await
    .into_iter()
    .map(|m| m.location.to_string())
    .collect();
    let want_after: Vec<String> = want
        .iter()
        .filter(|k| k.as_str() > format!("{prefix}/a/0002").as_str())
        .cloned()
        .collect();
    if after != want_after {
        fail(
            repo,
            "list_after",
            format!("got {after:?}, want {want_after:?}"),
        );
    }
    let dirs = ok(
        repo,
        "list_dirs",
        repo.list_dirs(&format!("{prefix}/")).await,
    )
    .await;
    if dirs != vec![format!("{prefix}/a"), format!("{prefix}/ab")] {
        fail(repo, "list_dirs", format!("got {dirs:?}"));
    }
    let empty = ok(
        repo,
        "list empty",
        repo.list(&format!("{prefix}/none/")).await,
    )
    .await;
    if !empty.is_empty() {
        fail(repo, "list empty", format!("got {empty:?}"));
    }
}

/// Delete is idempotent and makes the key absent.
pub async fn delete(repo: &Repo, prefix: &str) {
    let key = format!("{prefix}/gone");
    ok(
        repo,
        "put",
        repo.put_if_absent(&key, Bytes::from_static(b"x")).await,
    )
    .await;
    ok(repo, "delete", repo.delete(&key).await).await;
    if ok(repo, "exists", repo.exists(&key).await).await {
        fail(repo, "delete", "key still present");
    }
    ok(repo, "delete again", repo.delete(&key).await).await;
    // A deleted key can be created again.
    let r = ok(
        repo,
        "recreate",
        repo.put_if_absent(&key, Bytes::from_static(b"y")).await,
    )
    .await;
    if r != PutOutcome::Created {
        fail(repo, "recreate", format!("expected Created, got {r:?}"));
    }
}

/// Compare-and-swap (`storage::cas`): of two contenders creating the same
/// key, and of two contenders updating it from the same version, exactly one
/// wins; a stale version always loses; the winner's bytes are what is read.
pub async fn compare_and_swap(repo: &Repo, prefix: &str) {
    compare_and_swap_with(repo, prefix, true).await
}

/// [`compare_and_swap`]; with `concurrent` false the two creates and the
/// two updates from one version are sent one after the other (for servers
/// whose precondition check is not atomic with the write).
pub async fn compare_and_swap_with(repo: &Repo, prefix: &str, concurrent: bool) {
    use crate::storage::CasError;
    let key = format!("{prefix}/lease.json");
    let what = |r: &Result<crate::storage::Version, CasError>| match r {
        Ok(_) => "won".to_string(),
        Err(CasError::Conflict { .. }) => "lost".to_string(),
        Err(e) => fail(repo, "conditional write", e),
    };
    if ok(repo, "get missing", repo.get_versioned(&key).await)
        .await
        .is_some()
    {
        fail(
            repo,
            "get missing",
            "found an object that was never written",
        );
    }
    let (a, b) = if concurrent {
        tokio::join!(
            repo.create_versioned(&key, Bytes::from_static(b"created by a")),
            repo.create_versioned(&key, Bytes::from_static(b"created by b")),
        )
    } else {
        let a = repo
            .create_versioned(&key, Bytes::from_static(b"created by a"))
            .await;
        let b = repo
            .create_versioned(&key, Bytes::from_static(b"created by b"))
            .await;
        (a, b)
    };
    let outcomes = [what(&a), what(&b)];
    if outcomes.iter().filter(|o| *o == "won").count() != 1 {
        fail(repo, "two creates", format!("outcomes {outcomes:?}"));
    }
    let winner: &[u8] = if a.is_ok() {
        b"created by a"
    } else {
        b"created by b"
    };
    let Some((data, v1)) = ok(repo, "get", repo.get_versioned(&key).await).await else {
        fail(repo, "get", "created object is missing");
    };
    if data.as_ref() != winner {
        fail(repo, "get", "the loser's bytes were stored");
    }
    let (a, b) = if concurrent {
        tokio::join!(
            repo.put_if_version(&key, Bytes::from_static(b"update a"), &v1),
            repo.put_if_version(&key, Bytes::from_static(b"update b"), &v1),
        )
    } else {
        let a = repo
            .put_if_version(&key, Bytes::from_static(b"update a"), &v1)
            .await;
        let b = repo
            .put_if_version(&key, Bytes::from_static(b"update b"), &v1)
            .await;
        (a, b)
    };
    let outcomes = [what(&a), what(&b)];
    if outcomes.iter().filter(|o| *o == "won").count() != 1 {
        fail(repo, "two updates", format!("outcomes {outcomes:?}"));
    }
    let (winner, v2): (&[u8], _) = match (a, b) {
        (Ok(v), _) => (b"update a", v),
        (_, Ok(v)) => (b"update b", v),
        _ => fail(repo, "two updates", "nobody won"),
    };
    let Some((data, v3)) = ok(repo, "get", repo.get_versioned(&key).await).await else {
        fail(repo, "get", "updated object is missing");
    };
    if data.as_ref() != winner {
        fail(repo, "get after update", "the loser's bytes were stored");
    }
    // The stale version loses, the current one wins, a create of an existing key loses.
    let stale = repo
        .put_if_version(&key, Bytes::from_static(b"stale"), &v1)
        .await;
    if what(&stale) != "lost" {
        fail(repo, "stale update", "a stale version overwrote the object");
    }
    let again = repo
        .create_versioned(&key, Bytes::from_static(b"again"))
        .await;
    if what(&again) != "lost" {
        fail(repo, "create existing", "a create overwrote the object");
    }
    let cur = repo
        .put_if_version(&key, Bytes::from_static(b"current"), &v3)
        .await;
    if what(&cur) != "won" {
        fail(repo, "current update", "the current version was refused");
    }
    drop(v2);
    let Some((data, _)) = ok(repo, "get", repo.get_versioned(&key).await).await else {
        fail(repo, "get", "object is missing");
    };
    if data.as_ref() != b"current" {
        fail(repo, "get after current update", "wrong bytes");
    }
    ok(repo, "delete", repo.delete(&key).await).await;
}
