//! Sealed (encrypted) segments: format version 2.
//!
//! A version 2 object is a version 1 object whose header carries a non-zero
//! `key_id` and a 32-byte salt, and whose frames' stored bytes are sealed
//! with AES-256-GCM:
//!
//! * **Object key** = HKDF-SHA256(ikm = the data key named by `key_id`,
//!   salt = the header's salt, info = `"pitr segment v2"` ‖ `key_id` (u32
//!   LE)), 32 bytes. Every object has its own key.
//! * **Frame** `i`: stored bytes = AES-256-GCM(object key, nonce = `i` as
//!   u32 LE followed by 8 zero bytes, associated data = frame header bytes
//!   `[0, 24)`, plaintext = the codec's output), with the 16-byte tag
//!   appended. The frame index makes each nonce unique within the object;
//!   the associated data binds codec, lengths and raw offset; a frame moved
//!   to another place or another object does not open.
//! * The salt is keyed BLAKE3 of header fields ‖ payload, keyed with
//!   BLAKE3's `derive_key("pitr segment salt v2", data key)` ([`Seal::for_payload`]): the same log
//!   sealed twice gives the same bytes (so a retried upload is recognised as
//!   identical), while different contents get different object keys (a
//!   nonce is never reused under one key). It reveals nothing about the
//!   payload without the data key. BLAKE3 rather than HMAC-SHA256 because
//!   this pass reads every raw byte and is the largest cost of sealing.
//!
//! The CRC-32C checksums stay over the stored (sealed) bytes, so damage is
//! found without the key. Header fields, footer and trailer stay in clear:
//! planning a restore needs positions, times and the frame index.

use std::collections::BTreeMap;
use std::fmt;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::hkdf;

use crate::error::{Result, SegmentError};
use crate::meta::SegmentHeader;

/// Length of a data key (AES-256).
pub const KEY_LEN: usize = 32;
/// Length of the per-object salt in a version 2 header.
pub const SALT_LEN: usize = 32;
/// Length of the authentication tag appended to every sealed frame.
pub const TAG_LEN: usize = 16;

const KEY_INFO: &[u8] = b"pitr segment v2";
const SALT_CONTEXT: &str = "pitr segment salt v2";

/// A data key with its id (the `key_id` written into every object it seals).
#[derive(Clone)]
pub struct SealKey {
    id: u32,
    bytes: [u8; KEY_LEN],
    /// Key of the salt hash, derived from `bytes`.
    salt_key: [u8; KEY_LEN],
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealKey({})", self.id)
    }
}

impl SealKey {
    /// A data key; id 0 means "not encrypted" and is refused.
    pub fn new(id: u32, bytes: [u8; KEY_LEN]) -> Result<SealKey> {
        if id == 0 {
            return Err(SegmentError::InvalidInput(
                "key id 0 means unencrypted; data keys are numbered from 1".into(),
            ));
        }
        Ok(SealKey {
            id,
            bytes,
            salt_key: blake3::derive_key(SALT_CONTEXT, &bytes),
        })
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    /// A content-bound salt: keyed BLAKE3 (the key derived from the data
    /// key) of `parts`, each preceded by its length.
    pub(crate) fn salt_of<'a>(&self, parts: impl IntoIterator<Item = &'a [u8]>) -> [u8; SALT_LEN] {
        let mut ctx = blake3::Hasher::new_keyed(&self.salt_key);
        for p in parts {
            ctx.update(&(p.len() as u64).to_le_bytes());
            ctx.update(p);
        }
        *ctx.finalize().as_bytes()
    }
}

/// The data keys a reader may need, by id.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: BTreeMap<u32, SealKey>,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.keys.keys()).finish()
    }
}

impl KeySet {
    pub fn new(keys: impl IntoIterator<Item = SealKey>) -> KeySet {
        KeySet {
            keys: keys.into_iter().map(|k| (k.id, k)).collect(),
        }
    }

    pub fn get(&self, id: u32) -> Option<&SealKey> {
        self.keys.get(&id)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The ids held, ascending.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.keys.keys().copied()
    }
}

/// What a writer needs to seal one object: the data key and the salt.
#[derive(Clone)]
pub struct Seal {
    pub key: SealKey,
    pub salt: [u8; SALT_LEN],
}

impl fmt::Debug for Seal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Seal(key {})", self.key.id)
    }
}

impl Seal {
    /// The deterministic salt for sealing `payload` (given in chunks) under
    /// `header`: equal inputs give equal objects, different ones different
    /// object keys.
    pub fn for_payload<'a>(
        key: SealKey,
        header: &SegmentHeader,
        payload: impl IntoIterator<Item = &'a [u8]>,
    ) -> Seal {
        let mut ctx = blake3::Hasher::new_keyed(&key.salt_key);
        ctx.update(&[header.engine.code(), header.codec.id()]);
        ctx.update(&(header.source_id.len() as u64).to_le_bytes());
        ctx.update(header.source_id.as_bytes());
        ctx.update(&header.epoch.0.to_le_bytes());
        ctx.update(&header.start.hi.to_le_bytes());
        ctx.update(&header.start.lo.to_le_bytes());
        for chunk in payload {
            ctx.update(chunk);
        }
        Seal {
            key,
            salt: *ctx.finalize().as_bytes(),
        }
    }
}

/// The per-object AEAD key of a version 2 object.
pub(crate) struct FrameCipher {
    key: LessSafeKey,
}

fn nonce(index: u32) -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    n[..4].copy_from_slice(&index.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

impl FrameCipher {
    pub fn new(key: &SealKey, salt: &[u8; SALT_LEN]) -> Result<FrameCipher> {
        FrameCipher::derive(key, salt, KEY_INFO)
    }

    /// The object key HKDF-SHA256(data key, salt, `label` ‖ key id).
    pub(crate) fn derive(
        key: &SealKey,
        salt: &[u8; SALT_LEN],
        label: &[u8],
    ) -> Result<FrameCipher> {
        let failed = |_| SegmentError::InvalidInput("deriving the object key failed".into());
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(&key.bytes);
        let id = key.id.to_le_bytes();
        let info = [label, &id[..]];
        let okm = prk.expand(&info, &AES_256_GCM).map_err(failed)?;
        let unbound = UnboundKey::from(okm);
        Ok(FrameCipher {
            key: LessSafeKey::new(unbound),
        })
    }

    /// Seals `buf` (the codec's output) in place and appends the tag.
    pub fn seal(&self, index: u32, aad: &[u8], buf: &mut Vec<u8>) -> Result<()> {
        self.key
            .seal_in_place_append_tag(nonce(index), Aad::from(aad), buf)
            .map_err(|_| SegmentError::InvalidInput("sealing a frame failed".into()))
    }

    /// Opens `buf` (stored bytes, tag included) in place; returns the
    /// plaintext length, or `None` when the bytes do not authenticate.
    pub fn open(&self, index: u32, aad: &[u8], buf: &mut [u8]) -> Option<usize> {
        self.key
            .open_in_place(nonce(index), Aad::from(aad), buf)
            .ok()
            .map(|p| p.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Codec, Engine, Epoch, LogPos};

    fn header() -> SegmentHeader {
        SegmentHeader {
            engine: Engine::Postgres,
            source_id: "42".into(),
            epoch: Epoch(1),
            start: LogPos::new(0, 16),
            codec: Codec::Zstd { level: 1 },
            key_id: 3,
        }
    }

    #[test]
    fn salt_is_deterministic_and_content_bound() {
        let k = SealKey::new(3, [7; KEY_LEN]).unwrap();
        let a = Seal::for_payload(k.clone(), &header(), [&b"ab"[..], b"c"]);
        let b = Seal::for_payload(k.clone(), &header(), [&b"abc"[..]]);
        assert_eq!(a.salt, b.salt, "chunking does not matter");
        let c = Seal::for_payload(k.clone(), &header(), [&b"abd"[..]]);
        assert_ne!(a.salt, c.salt);
        let mut h = header();
        h.epoch = Epoch(2);
        assert_ne!(a.salt, Seal::for_payload(k, &h, [&b"abc"[..]]).salt);
        let other = SealKey::new(3, [8; KEY_LEN]).unwrap();
        assert_ne!(
            a.salt,
            Seal::for_payload(other, &header(), [&b"abc"[..]]).salt
        );
        assert!(SealKey::new(0, [1; KEY_LEN]).is_err());
        assert_eq!(format!("{a:?}"), "Seal(key 3)");
    }

    #[test]
    fn frames_open_only_in_place() {
        let k = SealKey::new(3, [7; KEY_LEN]).unwrap();
        let c = FrameCipher::new(&k, &[1; SALT_LEN]).unwrap();
        let mut buf = b"hello".to_vec();
        c.seal(0, b"aad", &mut buf).unwrap();
        assert_eq!(buf.len(), 5 + TAG_LEN);
        assert_ne!(&buf[..5], b"hello");
        let sealed = buf.clone();
        assert_eq!(c.open(0, b"aad", &mut buf), Some(5));
        assert_eq!(&buf[..5], b"hello");
        // another index, associated data, salt or key: refused
        assert_eq!(c.open(1, b"aad", &mut sealed.clone()), None);
        assert_eq!(c.open(0, b"aaD", &mut sealed.clone()), None);
        let salted = FrameCipher::new(&k, &[2; SALT_LEN]).unwrap();
        assert_eq!(salted.open(0, b"aad", &mut sealed.clone()), None);
        let k4 = SealKey::new(4, [7; KEY_LEN]).unwrap();
        let other_id = FrameCipher::new(&k4, &[1; SALT_LEN]).unwrap();
        assert_eq!(other_id.open(0, b"aad", &mut sealed.clone()), None);
        let mut flipped = sealed;
        flipped[2] ^= 1;
        assert_eq!(c.open(0, b"aad", &mut flipped), None);
    }
}
