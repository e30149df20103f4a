//! Keys for encryption at rest (envelope encryption).
//!
//! * [`kek`]: the key-encryption key (KEK), 32 bytes the operator keeps
//!   outside the repository: in a file, an environment variable, or printed
//!   by a command (how Vault or a KMS CLI is wired in). It is known by its
//!   fingerprint, never by its bytes.
//! * [`keyring`]: the repository's data keys, each 32 random bytes with a
//!   key id (the `key_id` of the objects it encrypts), stored only wrapped
//!   under a KEK (AES-256-GCM). Rotation adds a data key; rewrapping wraps
//!   every data key under a new KEK without touching the data.
//! * [`unlock`]: a command's KEK and the keyring give the data keys a
//!   [`crate::storage::Repo`] seals new objects with and opens old ones
//!   with (segments: `pitr_segment::seal`).
//!
//! The AEAD is AES-256-GCM from aws-lc-rs, the crypto library the TLS
//! stack of the binary already uses.

pub mod kek;
pub mod keyring;
pub mod objects;
pub mod reencrypt;
pub mod unlock;

pub use objects::{open_object, seal_object, OpenError};
pub use unlock::{refresh, unlock, Access, RepoKeys, UnlockError};

/// Length of every key (AES-256).
pub const KEY_LEN: usize = 32;
