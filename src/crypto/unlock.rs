//! Opening an encrypted repository: from its keyring and the operator's KEK
//! to the data keys a [`Repo`] seals and opens objects with.
//!
//! A repository without a keyring is plain: nothing to unlock, objects are
//! written unencrypted (giving a KEK to a command that writes is refused,
//! as it signals a mistake). With a keyring, a command needs the KEK: it
//! unwraps every data key wrapped under it; writers also need the current
//! key (new objects are sealed with it). Keys wrapped under another KEK
//! stay locked; reading an object sealed with one fails naming its key id
//! and the KEK that wraps it.

use std::collections::BTreeMap;

use pitr_segment::{KeySet, SealKey};

use super::kek::{Kek, KekError, KekSource};
use super::keyring::{KeyError, Keyring};
use crate::storage::Repo;

/// What a command does with the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Only reads objects (restore, fetch verbs, verify).
    Read,
    /// Also writes new objects (archive, backup, compaction).
    Write,
}

/// The data keys of an open repository.
#[derive(Debug, Clone, Default)]
pub struct RepoKeys {
    /// The key new objects are sealed with; `None` in a plain repository.
    pub current: Option<SealKey>,
    /// Every data key the KEK given unwraps.
    pub all: KeySet,
    /// Key ids the KEK given does not unwrap, with the fingerprint of the
    /// KEK that does.
    pub locked: BTreeMap<u32, String>,
    /// The KEK given, kept to pick up a rotation ([`refresh`]).
    pub kek: Option<Kek>,
}

impl RepoKeys {
    /// Why data key `id` is not available, in one sentence.
    pub fn missing(&self, id: u32) -> String {
        match self.locked.get(&id) {
            Some(fp) => format!(
                "data key {id} is wrapped by key-encryption key {fp}, not by the one given; give that key with --kek or PITR_KEK"
            ),
            None if self.all.is_empty() && self.current.is_none() => format!(
                "it is encrypted with data key {id} but no key-encryption key was given; give it with --kek or PITR_KEK"
            ),
            None => format!(
                "it is encrypted with data key {id}, which this repository's keyring does not hold"
            ),
        }
    }
}

/// Why a repository could not be unlocked.
#[derive(Debug, thiserror::Error)]
pub enum UnlockError {
    #[error("the repository is encrypted: give its key-encryption key (fingerprint {fingerprints}) with --kek SOURCE or the PITR_KEK environment variable")]
    KekNeeded { fingerprints: String },
    #[error("a key-encryption key was given but the repository is not encrypted; run `pitr key init` to encrypt it, or give no key")]
    NotEncrypted,
    #[error(transparent)]
    Kek(#[from] KekError),
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// Loads the repository's keyring and unwraps its data keys with the KEK
/// from `kek` into `repo` (see the module docs for the rules).
pub async fn unlock(
    repo: &Repo,
    kek: Option<&KekSource>,
    access: Access,
) -> Result<(), UnlockError> {
    let Some((ring, _version)) = Keyring::load(repo).await? else {
        if kek.is_some() && access == Access::Write {
            return Err(UnlockError::NotEncrypted);
        }
        return Ok(());
    };
    let Some(source) = kek else {
        return Err(UnlockError::KekNeeded {
            fingerprints: ring.keks().join(", "),
        });
    };
    let kek = source.load()?;
    let keys = keys_of(&ring, kek, access)?;
    repo.set_keys(keys);
    Ok(())
}

/// The keys `kek` unwraps from `ring` (see [`unlock`]).
fn keys_of(ring: &Keyring, kek: Kek, access: Access) -> Result<RepoKeys, UnlockError> {
    let mut keys = RepoKeys::default();
    let mut all = Vec::new();
    for w in &ring.keys {
        if w.kek != kek.fingerprint() {
            keys.locked.insert(w.id, w.kek.clone());
            continue;
        }
        let key = ring.key(w.id, &kek)?;
        all.push(seal_key(&key)?);
    }
    let current = ring.current_key(&kek);
    match (current, access) {
        (Ok(k), _) => keys.current = Some(seal_key(&k)?),
        (Err(e), Access::Write) => return Err(e.into()),
        (Err(e), Access::Read) if all.is_empty() => return Err(e.into()),
        (Err(_), Access::Read) => {}
    }
    keys.all = KeySet::new(all);
    keys.kek = Some(kek);
    Ok(keys)
}

/// Picks up a `pitr key rotate` made since the repository was unlocked:
/// when the keyring's current key is another one, the keys are unwrapped
/// again (with the KEK kept in memory) and new objects use the new key.
/// Returns the new current key id when it changed. A plain repository, or
/// one unlocked without a KEK, is left alone.
pub async fn refresh(repo: &Repo) -> Result<Option<u32>, UnlockError> {
    let keys = repo.keys();
    let Some(kek) = keys.kek.clone() else {
        return Ok(None);
    };
    let Some((ring, _)) = Keyring::load(repo).await? else {
        return Ok(None);
    };
    if keys.current.as_ref().map(SealKey::id) == Some(ring.current) {
        return Ok(None);
    }
    let fresh = keys_of(&ring, kek, Access::Write)?;
    let id = fresh.current.as_ref().map(SealKey::id);
    repo.set_keys(fresh);
    Ok(id)
}

fn seal_key(k: &super::keyring::DataKey) -> Result<SealKey, KeyError> {
    SealKey::new(k.id, *k.bytes()).map_err(|e| KeyError::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::kek::Kek;

    fn source(dir: &std::path::Path, name: &str, b: u8) -> (KekSource, Kek) {
        let path = dir.join(name);
        std::fs::write(&path, hex::encode([b; 32])).unwrap();
        let src = KekSource::File(path);
        let kek = src.load().unwrap();
        (src, kek)
    }

    #[tokio::test]
    async fn unlock_follows_the_rules() {
        let dir = tempfile::tempdir().unwrap();
        let (a_src, a) = source(dir.path(), "a", 1);
        let (b_src, _b) = source(dir.path(), "b", 2);
        let repo = Repo::open("memory://").await.unwrap();

        // plain repository: nothing to do; a KEK given to a writer is refused
        unlock(&repo, None, Access::Write).await.unwrap();
        unlock(&repo, Some(&a_src), Access::Read).await.unwrap();
        assert!(repo.keys().current.is_none());
        let e = unlock(&repo, Some(&a_src), Access::Write)
            .await
            .unwrap_err();
        assert!(matches!(e, UnlockError::NotEncrypted), "{e}");

        Keyring::create(&repo, &a).await.unwrap();
        let e = unlock(&repo, None, Access::Read).await.unwrap_err();
        assert!(e.to_string().contains(a.fingerprint()), "{e}");
        let e = unlock(&repo, Some(&b_src), Access::Read).await.unwrap_err();
        assert!(e.to_string().contains("data key 1"), "{e}");
        assert!(repo.keys().current.is_none(), "nothing set on failure");

        unlock(&repo, Some(&a_src), Access::Write).await.unwrap();
        let keys = repo.keys();
        assert_eq!(keys.current.as_ref().map(SealKey::id), Some(1));
        assert_eq!(keys.all.ids().collect::<Vec<_>>(), vec![1]);
        assert!(keys.missing(7).contains("does not hold"));

        // a rotation by another process is picked up
        assert_eq!(refresh(&repo).await.unwrap(), None);
        Keyring::rotate(&repo, &a).await.unwrap();
        assert_eq!(refresh(&repo).await.unwrap(), Some(2));
        assert_eq!(repo.keys().current.as_ref().map(SealKey::id), Some(2));
        assert_eq!(repo.keys().all.ids().collect::<Vec<_>>(), vec![1, 2]);
    }
}
