//! Objects other than segments (base-backup parts, dump streams,
//! manifests) in an encrypted repository: sealed as one AEAD message each
//! (`pitr_segment::seal_blob`, bound to the object's name) with the
//! repository's current data key, and opened with its keyring. A plain
//! repository stores and reads them unchanged; objects written before the
//! repository was encrypted stay plain and are read as such.

use bytes::Bytes;
use pitr_segment::SegmentError;

use crate::storage::Repo;

/// Why a stored object could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{name} cannot be read: {reason}")]
    KeyMissing { name: String, reason: String },
    #[error("{name} is damaged or was altered: {reason}; run `pitr verify`")]
    Damaged { name: String, reason: String },
}

/// The bytes to store under `name`: `body` sealed with the current data
/// key, or `body` itself in a plain repository.
pub fn seal_object(repo: &Repo, name: &str, body: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    match &repo.keys().current {
        Some(key) => pitr_segment::seal_blob(key, name, &body)
            .map_err(|e| anyhow::anyhow!("sealing {name}: {e}")),
        None => Ok(body),
    }
}

/// The body of the object stored under `name`: opened when sealed, as
/// stored when plain.
pub fn open_object(repo: &Repo, name: &str, stored: Bytes) -> Result<Bytes, OpenError> {
    if !pitr_segment::is_sealed_blob(&stored) {
        return Ok(stored);
    }
    let keys = repo.keys();
    pitr_segment::open_blob(&keys.all, name, &stored)
        .map(Bytes::from)
        .map_err(|e| match e {
            SegmentError::KeyNeeded { key_id } => OpenError::KeyMissing {
                name: name.to_string(),
                reason: keys.missing(key_id),
            },
            e => OpenError::Damaged {
                name: name.to_string(),
                reason: e.to_string(),
            },
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::RepoKeys;
    use pitr_segment::{KeySet, SealKey};

    #[tokio::test]
    async fn plain_and_sealed_objects() {
        let repo = Repo::open("memory://").await.unwrap();
        let body = b"{\"a\": 1}".to_vec();
        assert_eq!(seal_object(&repo, "x/m.json", body.clone()).unwrap(), body);
        let key = SealKey::new(1, [9; 32]).unwrap();
        repo.set_keys(RepoKeys {
            current: Some(key.clone()),
            all: KeySet::new([key]),
            ..RepoKeys::default()
        });
        let sealed = seal_object(&repo, "x/m.json", body.clone()).unwrap();
        assert_ne!(sealed, body);
        let opened = open_object(&repo, "x/m.json", Bytes::from(sealed.clone())).unwrap();
        assert_eq!(&opened[..], &body[..]);
        // plain objects (written before encryption) still read
        assert_eq!(
            &open_object(&repo, "x/old.json", Bytes::from(body.clone())).unwrap()[..],
            &body[..]
        );
        let e = open_object(&repo, "x/moved.json", Bytes::from(sealed.clone())).unwrap_err();
        assert!(matches!(e, OpenError::Damaged { .. }), "{e}");
        repo.set_keys(RepoKeys::default());
        let e = open_object(&repo, "x/m.json", Bytes::from(sealed)).unwrap_err();
        assert!(e.to_string().contains("data key 1"), "{e}");
    }
}
