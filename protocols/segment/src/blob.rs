//! Sealed blobs: every object of an encrypted repository that is not a
//! segment (base-backup parts, dump streams, manifests) is stored as one
//! AEAD message.
//!
//! ```text
//! 0   8   magic "PITRBLOB"
//! 8   2   version (u16 LE) = 1
//! 10  2   reserved (0)
//! 12  4   key_id (u32 LE, non-zero): the data key
//! 16  32  salt
//! 48  n   AES-256-GCM ciphertext of the body
//! 48+n 16 tag
//! ```
//!
//! Object key = HKDF-SHA256(data key, salt, `"pitr blob v1"` ‖ key_id);
//! nonce = 12 zero bytes (every object key seals exactly one message);
//! associated data = header bytes `[0, 48)` followed by the object's name
//! in the repository, so a blob copied under another name does not open.
//! The salt is keyed BLAKE3 of name and body ([`crate::SealKey`]): the same
//! body under the same name seals to the same bytes, so a retried upload is
//! recognised as identical. A plain object never starts with the magic
//! (parts are zstd streams, manifests JSON).

use crate::error::{ByteRange, Part, Result, SegmentError};
use crate::seal::{FrameCipher, KeySet, SealKey, SALT_LEN, TAG_LEN};

/// First bytes of every sealed blob.
pub const BLOB_MAGIC: [u8; 8] = *b"PITRBLOB";
const VERSION: u16 = 1;
const HEADER_LEN: usize = 48;
const LABEL: &[u8] = b"pitr blob v1";

/// True when `stored` is a sealed blob (by its magic).
pub fn is_sealed_blob(stored: &[u8]) -> bool {
    stored.starts_with(&BLOB_MAGIC)
}

/// The data key id of a sealed blob.
pub fn blob_key_id(stored: &[u8]) -> Option<u32> {
    let b = stored.get(12..16)?;
    is_sealed_blob(stored).then(|| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn aad(header: &[u8], name: &str) -> Vec<u8> {
    let mut a = Vec::with_capacity(HEADER_LEN + name.len());
    a.extend_from_slice(header);
    a.extend_from_slice(name.as_bytes());
    a
}

/// Seals `body`, to be stored under `name`.
pub fn seal_blob(key: &SealKey, name: &str, body: &[u8]) -> Result<Vec<u8>> {
    let salt = key.salt_of([&b"pitr blob salt v1"[..], name.as_bytes(), body]);
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + TAG_LEN);
    out.extend_from_slice(&BLOB_MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&key.id().to_le_bytes());
    out.extend_from_slice(&salt);
    let header = out.clone();
    let cipher = FrameCipher::derive(key, &salt, LABEL)?;
    let mut sealed = body.to_vec();
    cipher.seal(0, &aad(&header, name), &mut sealed)?;
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Opens the sealed blob `stored` found under `name` with its data key
/// from `keys`.
pub fn open_blob(keys: &KeySet, name: &str, stored: &[u8]) -> Result<Vec<u8>> {
    if stored.len() < HEADER_LEN + TAG_LEN || !is_sealed_blob(stored) {
        return Err(SegmentError::invalid(
            Part::Object,
            ByteRange::new(0, stored.len() as u64),
            "not a sealed object",
        ));
    }
    let version = u16::from_le_bytes([stored[8], stored[9]]);
    if version != VERSION || stored[10..12] != [0, 0] {
        return Err(SegmentError::UnsupportedVersion {
            part: Part::Header,
            version,
            range: ByteRange::new(8, 12),
        });
    }
    let key_id = blob_key_id(stored).unwrap_or(0);
    let key = keys.get(key_id).ok_or(SegmentError::KeyNeeded { key_id })?;
    let mut salt = [0u8; SALT_LEN];
    salt.copy_from_slice(&stored[16..HEADER_LEN]);
    let cipher = FrameCipher::derive(key, &salt, LABEL)?;
    let mut buf = stored[HEADER_LEN..].to_vec();
    let n = cipher
        .open(0, &aad(&stored[..HEADER_LEN], name), &mut buf)
        .ok_or(SegmentError::NotAuthentic {
            part: Part::Object,
            range: ByteRange::new(HEADER_LEN as u64, stored.len() as u64),
        })?;
    buf.truncate(n);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_round_trip_and_refuse_everything_else() {
        let k = SealKey::new(5, [3; 32]).unwrap();
        let keys = KeySet::new([k.clone()]);
        let body = b"{\"tables\": [\"payroll\"]}";
        let s = seal_blob(&k, "b/manifest.json", body).unwrap();
        assert!(is_sealed_blob(&s));
        assert_eq!(blob_key_id(&s), Some(5));
        assert!(!s.windows(7).any(|w| w == b"payroll"));
        assert_eq!(s, seal_blob(&k, "b/manifest.json", body).unwrap());
        assert_eq!(open_blob(&keys, "b/manifest.json", &s).unwrap(), body);
        // another name, key, or a flipped byte: refused
        assert!(matches!(
            open_blob(&keys, "b/other.json", &s),
            Err(SegmentError::NotAuthentic { .. })
        ));
        assert!(matches!(
            open_blob(&KeySet::default(), "b/manifest.json", &s),
            Err(SegmentError::KeyNeeded { key_id: 5 })
        ));
        for at in [12, 20, 50, s.len() - 1] {
            let mut f = s.clone();
            f[at] ^= 1;
            assert!(
                open_blob(&keys, "b/manifest.json", &f).is_err(),
                "byte {at}"
            );
        }
        assert!(!is_sealed_blob(b"{}"));
        assert!(open_blob(&keys, "x", b"{}").is_err());
    }
}
