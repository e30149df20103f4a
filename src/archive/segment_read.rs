//! Reading one stored segment back, written once for every reader: the
//! fetch verbs, the MySQL and MongoDB replays, PostgreSQL's check before a
//! restore, the MySQL archiver's resume check and compaction.
//!
//! A read is: GET the object under the segment's key; decode it on the
//! blocking pool with `pitr_segment::decode_with` and the repository's data
//! keys, which verifies every checksum (header, each frame, footer), opens
//! sealed frames, and checks that the frames decode to the lengths the
//! footer records; then check that the object holds what its key says:
//! the header's epoch and start and the footer's end equal the key's (every
//! writer, the archivers' sink and compaction, writes them from the same
//! values). An object that fails either check is damaged and never used.

use pitr_segment::{Epoch, LogPos, SegmentMeta};

use crate::archive::keys::SegmentKey;
use crate::storage::{Repo, StorageError};

/// Why a segment could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SegmentReadError {
    /// No object under the key (deleted after it was listed).
    #[error("segment {key} is not in the repository")]
    Gone { key: String },
    #[error(transparent)]
    Storage(StorageError),
    #[error("segment {key} is corrupt: {reason}; run `pitr verify`")]
    Corrupt { key: String, reason: String },
    /// The object is sealed with a data key this process does not hold.
    #[error("segment {key} cannot be read: {reason}")]
    KeyMissing { key: String, reason: String },
    #[error("segment {key} holds {start}..{end} of epoch {epoch}, not what its name says; the repository is damaged")]
    Mismatch {
        key: String,
        epoch: Epoch,
        start: LogPos,
        end: LogPos,
    },
}

impl SegmentReadError {
    /// True when reading again may succeed (network trouble).
    pub fn is_transient(&self) -> bool {
        matches!(self, SegmentReadError::Storage(e) if e.is_transient())
    }
}

/// Reads, verifies and checks the segment under `key`: its metadata and
/// its log bytes.
pub async fn read_segment(
    repo: &Repo,
    key: &SegmentKey,
) -> Result<(SegmentMeta, Vec<u8>), SegmentReadError> {
    let name = key.to_key();
    let object = match repo.get(&name).await {
        Ok(o) => o,
        Err(StorageError::NotFound { .. }) => return Err(SegmentReadError::Gone { key: name }),
        Err(e) => return Err(SegmentReadError::Storage(e)),
    };
    let keys = repo.keys();
    let all = keys.all.clone();
    let (meta, payload) =
        tokio::task::spawn_blocking(move || pitr_segment::decode_with(&object, &all))
            .await
            .map_err(|e| SegmentReadError::Corrupt {
                key: name.clone(),
                reason: format!("decoding stopped: {e}"),
            })?
            .map_err(|e| match e {
                pitr_segment::SegmentError::KeyNeeded { key_id } => SegmentReadError::KeyMissing {
                    key: name.clone(),
                    reason: keys.missing(key_id),
                },
                e => SegmentReadError::Corrupt {
                    key: name.clone(),
                    reason: e.to_string(),
                },
            })?;
    check(key, &meta).map(|()| (meta, payload))
}

/// Checks that `meta` (of the object stored under `key`) holds what the key
/// says.
pub fn check(key: &SegmentKey, meta: &SegmentMeta) -> Result<(), SegmentReadError> {
    let (h, f) = (&meta.header, &meta.footer);
    if h.epoch == key.epoch && h.start == key.start && f.end == key.end {
        return Ok(());
    }
    Err(SegmentReadError::Mismatch {
        key: key.to_key(),
        epoch: h.epoch,
        start: h.start,
        end: f.end,
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use pitr_segment::{encode, Codec, Engine, SegmentHeader};

    use super::*;
    use crate::archive::keys::SourceName;

    fn key(start: u64, end: u64) -> SegmentKey {
        SegmentKey {
            source: SourceName::new("s").unwrap(),
            epoch: Epoch(1),
            start: LogPos::from_lsn(start),
            end: LogPos::from_lsn(end),
            tmin: None,
            tmax: None,
            generation: 1,
        }
    }

    fn object(start: u64, payload: &[u8]) -> Bytes {
        let header = SegmentHeader {
            engine: Engine::Postgres,
            source_id: "7".into(),
            epoch: Epoch(1),
            start: LogPos::from_lsn(start),
            codec: Codec::Zstd { level: 1 },
            key_id: 0,
        };
        let end = LogPos::from_lsn(start + payload.len() as u64);
        Bytes::from(encode(header, payload, end, None, None, 1, Default::default()).unwrap())
    }

    #[tokio::test]
    async fn reads_what_the_key_says_and_refuses_anything_else() {
        let repo = Repo::open("memory://").await.unwrap();
        let good = key(0x100, 0x105);
        repo.put_if_absent(&good.to_key(), object(0x100, b"hello"))
            .await
            .unwrap();
        let (meta, payload) = read_segment(&repo, &good).await.unwrap();
        assert_eq!(payload, b"hello");
        assert_eq!(meta.footer.end, good.end);

        // Stored under a key whose range differs from the object's.
        let lying = key(0x200, 0x205);
        repo.put_if_absent(&lying.to_key(), object(0x100, b"hello"))
            .await
            .unwrap();
        let e = read_segment(&repo, &lying).await.unwrap_err();
        assert!(matches!(e, SegmentReadError::Mismatch { .. }), "{e}");

        // One flipped byte in the middle of the object.
        let flipped = key(0x300, 0x305);
        let mut bytes = object(0x300, b"hello").to_vec();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        repo.put_if_absent(&flipped.to_key(), Bytes::from(bytes))
            .await
            .unwrap();
        let e = read_segment(&repo, &flipped).await.unwrap_err();
        assert!(matches!(e, SegmentReadError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("run `pitr verify`"), "{e}");

        let e = read_segment(&repo, &key(0x400, 0x405)).await.unwrap_err();
        assert!(matches!(e, SegmentReadError::Gone { .. }), "{e}");
        assert!(!e.is_transient());
    }
}
