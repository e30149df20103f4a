//! Smoke tests of the S3 harness (moto and s3s-fs): the server's advertised environment is
//! enough to configure an `object_store` client, objects round-trip, and a create-if-absent
//! put (`If-None-Match: *`) on an existing key is rejected.

use std::net::TcpStream;

use bytes::Bytes;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use pitr_integration::{require, s3, S3Impl, S3Server};

/// A client built only from what the harness advertises (`env()` + the bucket).
fn client(server: &S3Server) -> AmazonS3 {
    let mut b = AmazonS3Builder::new().with_bucket_name(server.bucket());
    for (k, v) in server.env() {
        let key: AmazonS3ConfigKey = k.to_ascii_lowercase().parse().unwrap();
        b = b.with_config(key, v);
    }
    b.build().unwrap()
}

fn create(data: &'static [u8]) -> (PutPayload, PutOptions) {
    let opts = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    (PutPayload::from_static(data), opts)
}

async fn conditional_put_is_enforced(i: S3Impl) {
    let server = S3Server::start(i).unwrap();
    assert!(server.endpoint().starts_with("http://127.0.0.1:"));
    assert_eq!(
        server.repo_url("a/b"),
        format!("s3://{}/a/b", server.bucket())
    );
    let store = client(&server);
    let key = Path::from("smoke/segment-0001");

    let (payload, opts) = create(b"first");
    store.put_opts(&key, payload, opts).await.unwrap();
    let got = store.get(&key).await.unwrap().bytes().await.unwrap();
    assert_eq!(got, Bytes::from_static(b"first"));

    let (payload, opts) = create(b"second");
    let err = store.put_opts(&key, payload, opts).await.unwrap_err();
    assert!(
        matches!(
            err,
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }
        ),
        "expected AlreadyExists/Precondition, got {err:?}"
    );
    let got = store.get(&key).await.unwrap().bytes().await.unwrap();
    assert_eq!(
        got,
        Bytes::from_static(b"first"),
        "the rejected put changed the object"
    );

    // A different key is still creatable, and listing sees both.
    let (payload, opts) = create(b"other");
    store
        .put_opts(&Path::from("smoke/segment-0002"), payload, opts)
        .await
        .unwrap();
    let listed = store
        .list_with_delimiter(Some(&Path::from("smoke")))
        .await
        .unwrap();
    assert_eq!(listed.objects.len(), 2);

    let port = server.port();
    drop(server);
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "server still listening after drop"
    );
}

#[tokio::test]
async fn moto_conditional_put_is_enforced() {
    require!(s3::available(S3Impl::Moto));
    conditional_put_is_enforced(S3Impl::Moto).await;
}

#[tokio::test]
async fn s3s_fs_conditional_put_is_enforced() {
    require!(s3::available(S3Impl::S3sFs));
    conditional_put_is_enforced(S3Impl::S3sFs).await;
}

#[test]
fn s3s_fs_rejects_wrong_credentials() {
    require!(s3::available(S3Impl::S3sFs));
    let server = S3Server::start(S3Impl::S3sFs).unwrap();
    let store = AmazonS3Builder::new()
        .with_bucket_name(server.bucket())
        .with_endpoint(server.endpoint())
        .with_allow_http(true)
        .with_region(server.region())
        .with_access_key_id(server.access_key())
        .with_secret_access_key("not-the-secret")
        .build()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let res = rt.block_on(store.put(&Path::from("x"), PutPayload::from_static(b"x")));
    assert!(res.is_err(), "s3s-fs accepted a bad signature");
}
