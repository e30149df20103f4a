//! The repository's data keys, stored wrapped: `.pitr/keyring.json`.
//!
//! ```json
//! {"format_version": 1, "current": 2,
//!  "keys": [{"id": 1, "kek": "<fingerprint>", "wrapped": "<base64>",
//!            "created_at": "2026-12-07T12:00:00Z"}, ...]}
//! ```
//!
//! A data key is 32 random bytes; `wrapped` is the 12-byte nonce (random)
//! followed by AES-256-GCM of the key under the KEK named by `kek`, with the
//! associated data `pitr data key <id>`, so a wrapped key moved to another
//! id does not unwrap. Key ids start at 1 (0 means "not encrypted" in every
//! object header) and are never reused; `current` is the one new objects
//! use.
//!
//! * [`Keyring::rotate`] adds a data key and makes it current: new objects
//!   use it at once, old ones keep theirs (still readable while the KEK is
//!   there).
//! * [`Keyring::rewrap`] wraps every data key under a new KEK; the data
//!   is not touched, and the old KEK is no longer needed afterwards.
//!
//! Updates are conditional writes (the version read), so two processes
//! never lose each other's key.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::kek::Kek;
use super::KEY_LEN;
use crate::storage::{CasError, Version};
use crate::storage::{Repo, StorageError};

/// Where the keyring is stored.
pub const KEYRING_KEY: &str = ".pitr/keyring.json";
const FORMAT_VERSION: u32 = 1;

/// A data key, unwrapped.
#[derive(Clone)]
pub struct DataKey {
    pub id: u32,
    bytes: [u8; KEY_LEN],
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataKey({})", self.id)
    }
}

impl DataKey {
    /// The key's bytes, for the segment codec.
    pub fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }
}

/// One stored data key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    pub id: u32,
    /// Fingerprint of the KEK it is wrapped under.
    pub kek: String,
    pub wrapped: String,
    pub created_at: DateTime<Utc>,
}

/// The stored keyring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keyring {
    pub format_version: u32,
    pub current: u32,
    pub keys: Vec<WrappedKey>,
}

/// What went wrong with a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the repository has no keyring: it is not encrypted")]
    NoKeyring,
    #[error("the repository already has a keyring")]
    Exists,
    #[error(
        "the repository holds no data key {0}; it was made with a keyring this one does not match"
    )]
    UnknownKey(u32),
    #[error("data key {id} is wrapped by key-encryption key {want}, not by the one given ({given}); give that key")]
    WrongKek {
        id: u32,
        want: String,
        given: String,
    },
    #[error("data key {id} does not unwrap with key-encryption key {kek}: the keyring is damaged or was altered")]
    Damaged { id: u32, kek: String },
    #[error("{KEYRING_KEY} is corrupt ({0})")]
    Corrupt(String),
    #[error(
        "{KEYRING_KEY} has format version {0}, newer than this pitr understands; upgrade pitr"
    )]
    TooNew(u32),
    #[error("the keyring was changed by another process meanwhile; run the command again")]
    Conflict,
    #[error("the system random generator failed")]
    Random,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<CasError> for KeyError {
    fn from(e: CasError) -> Self {
        match e {
            CasError::Conflict { .. } => KeyError::Conflict,
            CasError::Storage(s) => KeyError::Storage(s),
        }
    }
}

fn random<const N: usize>() -> Result<[u8; N], KeyError> {
    let mut b = [0u8; N];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| KeyError::Random)?;
    Ok(b)
}

fn aad(id: u32) -> Vec<u8> {
    format!("pitr data key {id}").into_bytes()
}

fn sealing_key(kek: &Kek) -> Result<LessSafeKey, KeyError> {
    UnboundKey::new(&AES_256_GCM, kek.bytes())
        .map(LessSafeKey::new)
        .map_err(|_| KeyError::Random)
}

fn wrap(kek: &Kek, id: u32, key: &[u8; KEY_LEN]) -> Result<WrappedKey, KeyError> {
    let nonce = random::<NONCE_LEN>()?;
    let mut sealed = key.to_vec();
    sealing_key(kek)?
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(id)),
            &mut sealed,
        )
        .map_err(|_| KeyError::Random)?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    Ok(WrappedKey {
        id,
        kek: kek.fingerprint().to_string(),
        wrapped: base64::engine::general_purpose::STANDARD.encode(out),
        created_at: Utc::now(),
    })
}

fn unwrap(kek: &Kek, w: &WrappedKey) -> Result<DataKey, KeyError> {
    if w.kek != kek.fingerprint() {
        return Err(KeyError::WrongKek {
            id: w.id,
            want: w.kek.clone(),
            given: kek.fingerprint().to_string(),
        });
    }
    let damaged = || KeyError::Damaged {
        id: w.id,
        kek: w.kek.clone(),
    };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&w.wrapped)
        .map_err(|_| damaged())?;
    if raw.len() != NONCE_LEN + KEY_LEN + AES_256_GCM.tag_len() {
        return Err(damaged());
    }
    let (nonce, sealed) = raw.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| damaged())?;
    let mut buf = sealed.to_vec();
    let plain = sealing_key(kek)?
        .open_in_place(nonce, Aad::from(aad(w.id)), &mut buf)
        .map_err(|_| damaged())?;
    let bytes: [u8; KEY_LEN] = plain.try_into().map_err(|_| damaged())?;
    Ok(DataKey { id: w.id, bytes })
}

impl Keyring {
    /// Reads the keyring and its version; `None` when the repository has none.
    pub async fn load(repo: &Repo) -> Result<Option<(Keyring, Version)>, KeyError> {
        let Some((body, version)) = repo.get_versioned(KEYRING_KEY).await? else {
            return Ok(None);
        };
        let ring: Keyring =
            serde_json::from_slice(&body).map_err(|e| KeyError::Corrupt(e.to_string()))?;
        if ring.format_version > FORMAT_VERSION {
            return Err(KeyError::TooNew(ring.format_version));
        }
        if !ring.keys.iter().any(|k| k.id == ring.current) {
            return Err(KeyError::Corrupt(format!(
                "the current key {} is not in it",
                ring.current
            )));
        }
        Ok(Some((ring, version)))
    }

    fn body(&self) -> Result<Bytes, KeyError> {
        serde_json::to_vec_pretty(self)
            .map(Bytes::from)
            .map_err(|e| KeyError::Corrupt(e.to_string()))
    }

    /// Creates the keyring with data key 1 wrapped under `kek`.
    pub async fn create(repo: &Repo, kek: &Kek) -> Result<Keyring, KeyError> {
        let ring = Keyring {
            format_version: FORMAT_VERSION,
            current: 1,
            keys: vec![wrap(kek, 1, &random::<KEY_LEN>()?)?],
        };
        match repo.create_versioned(KEYRING_KEY, ring.body()?).await {
            Ok(_) => Ok(ring),
            Err(CasError::Conflict { .. }) => Err(KeyError::Exists),
            Err(e) => Err(e.into()),
        }
    }

    /// Unwraps data key `id` with `kek`.
    pub fn key(&self, id: u32, kek: &Kek) -> Result<DataKey, KeyError> {
        let w = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or(KeyError::UnknownKey(id))?;
        unwrap(kek, w)
    }

    /// The data key new objects are encrypted with.
    pub fn current_key(&self, kek: &Kek) -> Result<DataKey, KeyError> {
        self.key(self.current, kek)
    }

    /// Adds a new data key wrapped under `kek` and makes it current; the
    /// KEK must unwrap the current key (the operator holds the keyring).
    pub async fn rotate(repo: &Repo, kek: &Kek) -> Result<Keyring, KeyError> {
        let (mut ring, version) = Self::load(repo).await?.ok_or(KeyError::NoKeyring)?;
        ring.current_key(kek)?;
        let id = ring.keys.iter().map(|k| k.id).max().unwrap_or(0) + 1;
        ring.keys.push(wrap(kek, id, &random::<KEY_LEN>()?)?);
        ring.current = id;
        repo.put_if_version(KEYRING_KEY, ring.body()?, &version)
            .await?;
        Ok(ring)
    }

    /// Wraps every data key under `new` (each unwrapped with `old`, or
    /// already under `new`); the data is not rewritten.
    pub async fn rewrap(repo: &Repo, old: &Kek, new: &Kek) -> Result<Keyring, KeyError> {
        let (mut ring, version) = Self::load(repo).await?.ok_or(KeyError::NoKeyring)?;
        for w in &mut ring.keys {
            if w.kek == new.fingerprint() {
                continue;
            }
            let key = unwrap(old, w)?;
            let created_at = w.created_at;
            *w = wrap(new, key.id, &key.bytes)?;
            w.created_at = created_at;
        }
        repo.put_if_version(KEYRING_KEY, ring.body()?, &version)
            .await?;
        Ok(ring)
    }

    /// The fingerprints of the KEKs the keyring needs.
    pub fn keks(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.keys.iter().map(|k| k.kek.as_str()).collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kek(b: u8) -> Kek {
        Kek::from_bytes([b; KEY_LEN])
    }

    #[tokio::test]
    async fn create_rotate_rewrap_and_refusals() {
        let repo = Repo::open("memory://").await.unwrap();
        assert!(Keyring::load(&repo).await.unwrap().is_none());
        let (a, b) = (kek(1), kek(2));
        let ring = Keyring::create(&repo, &a).await.unwrap();
        let k1 = ring.current_key(&a).unwrap();
        assert_eq!(k1.id, 1);
        assert!(matches!(
            Keyring::create(&repo, &a).await,
            Err(KeyError::Exists)
        ));
        // The stored object holds no key in clear.
        let stored = repo.get(KEYRING_KEY).await.unwrap();
        assert!(!stored.windows(KEY_LEN).any(|w| w == k1.bytes()));
        assert!(!format!("{k1:?}").contains(&hex::encode(k1.bytes())[..8]));

        // A wrong KEK is named, nothing is written.
        let e = Keyring::rotate(&repo, &b).await.unwrap_err();
        assert!(matches!(e, KeyError::WrongKek { id: 1, .. }), "{e}");
        let ring = Keyring::rotate(&repo, &a).await.unwrap();
        assert_eq!(ring.current, 2);
        let k2 = ring.current_key(&a).unwrap();
        assert_ne!(k1.bytes(), k2.bytes());
        // Old objects keep their key.
        assert_eq!(ring.key(1, &a).unwrap().bytes(), k1.bytes());
        assert!(matches!(ring.key(7, &a), Err(KeyError::UnknownKey(7))));

        // Rewrap under b: every key unwraps with b only, and is the same key.
        let ring = Keyring::rewrap(&repo, &a, &b).await.unwrap();
        assert_eq!(ring.keks(), vec![b.fingerprint()]);
        assert_eq!(ring.key(1, &b).unwrap().bytes(), k1.bytes());
        assert_eq!(ring.key(2, &b).unwrap().bytes(), k2.bytes());
        assert!(ring.key(1, &a).is_err());
        let (loaded, _) = Keyring::load(&repo).await.unwrap().unwrap();
        assert_eq!(loaded, ring);

        // A wrapped key moved to another id, or altered, does not unwrap.
        let mut moved = ring.clone();
        moved.keys[1].wrapped = moved.keys[0].wrapped.clone();
        assert!(matches!(
            moved.key(2, &b),
            Err(KeyError::Damaged { id: 2, .. })
        ));
        let mut flipped = ring.clone();
        let mut raw = base64::engine::general_purpose::STANDARD
            .decode(&flipped.keys[0].wrapped)
            .unwrap();
        raw[20] ^= 1;
        flipped.keys[0].wrapped = base64::engine::general_purpose::STANDARD.encode(raw);
        assert!(matches!(flipped.key(1, &b), Err(KeyError::Damaged { .. })));
    }
}
