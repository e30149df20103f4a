//! The key-encryption key (KEK) and where it comes from.
//!
//! A source is written `file:PATH`, `env:NAME` or `cmd:COMMAND` (run with
//! `sh -c`, its standard output taken). What it yields is the key as 64 hex
//! digits or as base64 of 32 bytes (surrounding white space ignored); a key
//! file may also hold the 32 raw bytes. A KEK is named by its fingerprint:
//! the first 8 bytes of SHA-256 over a fixed label and the key, in hex; the
//! fingerprint reveals nothing usable about the key, and the key's bytes are
//! never printed (its `Debug` shows the fingerprint).

use std::path::PathBuf;
use std::process::Command;

use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::KEY_LEN;

/// Where a KEK comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KekSource {
    File(PathBuf),
    Env(String),
    Command(String),
}

/// Why a KEK could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KekError {
    #[error("invalid key source {0:?}: write file:PATH, env:NAME or cmd:COMMAND")]
    BadSource(String),
    #[error("cannot read the key file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("the environment variable {0} holding the key is not set")]
    Env(String),
    #[error("the key command {command:?} failed: {reason}")]
    Command { command: String, reason: String },
    #[error("the key from {0} is not 32 bytes as 64 hex digits or base64; make one with `openssl rand -hex 32`")]
    Format(String),
}

/// A key-encryption key.
#[derive(Clone)]
pub struct Kek {
    bytes: [u8; KEY_LEN],
    fingerprint: String,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kek({})", self.fingerprint)
    }
}

impl Kek {
    /// A KEK from its 32 bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Kek {
        let digest = Sha256::new()
            .chain_update(b"pitr key-encryption key fingerprint\0")
            .chain_update(bytes)
            .finalize();
        Kek {
            bytes,
            fingerprint: hex::encode(&digest[..8]),
        }
    }

    /// The name of this KEK in keyrings and messages.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub(crate) fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }
}

impl std::fmt::Display for KekSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KekSource::File(p) => write!(f, "file:{}", p.display()),
            KekSource::Env(n) => write!(f, "env:{n}"),
            KekSource::Command(c) => write!(f, "cmd:{c}"),
        }
    }
}

impl std::str::FromStr for KekSource {
    type Err = KekError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some(("file", p)) if !p.is_empty() => Ok(KekSource::File(PathBuf::from(p))),
            Some(("env", n)) if !n.is_empty() => Ok(KekSource::Env(n.to_string())),
            Some(("cmd", c)) if !c.trim().is_empty() => Ok(KekSource::Command(c.to_string())),
            _ => Err(KekError::BadSource(s.to_string())),
        }
    }
}

/// Decodes a key written as 64 hex digits or base64 of 32 bytes.
fn decode_text(text: &[u8], from: &str) -> Result<[u8; KEY_LEN], KekError> {
    let text = String::from_utf8_lossy(text);
    let t = text.trim();
    let bytes = hex::decode(t)
        .ok()
        .filter(|b| b.len() == KEY_LEN)
        .or_else(|| {
            base64::engine::general_purpose::STANDARD
                .decode(t)
                .ok()
                .filter(|b| b.len() == KEY_LEN)
        })
        .ok_or_else(|| KekError::Format(from.to_string()))?;
    let mut key = [0u8; KEY_LEN];
    key.copy_from_slice(&bytes);
    Ok(key)
}

impl KekSource {
    /// Reads the KEK.
    pub fn load(&self) -> Result<Kek, KekError> {
        let bytes = match self {
            KekSource::File(p) => {
                let raw = std::fs::read(p).map_err(|e| KekError::File {
                    path: p.display().to_string(),
                    reason: e.to_string(),
                })?;
                let from = format!("the file {}", p.display());
                match <[u8; KEY_LEN]>::try_from(raw.as_slice()) {
                    // 32 bytes that are not text: the raw key.
                    Ok(k) if decode_text(&raw, &from).is_err() => k,
                    _ => decode_text(&raw, &from)?,
                }
            }
            KekSource::Env(n) => {
                let v = std::env::var_os(n).ok_or_else(|| KekError::Env(n.clone()))?;
                decode_text(v.as_encoded_bytes(), &format!("${n}"))?
            }
            KekSource::Command(c) => {
                let out = Command::new("sh").arg("-c").arg(c).output().map_err(|e| {
                    KekError::Command {
                        command: c.clone(),
                        reason: e.to_string(),
                    }
                })?;
                if !out.status.success() {
                    return Err(KekError::Command {
                        command: c.clone(),
                        reason: format!(
                            "{}: {}",
                            out.status,
                            String::from_utf8_lossy(&out.stderr).trim()
                        ),
                    });
                }
                decode_text(&out.stdout, &format!("the command {c:?}"))?
            }
        };
        Ok(Kek::from_bytes(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn sources_yield_the_same_key_and_never_print_it() {
        let want: [u8; 32] = std::array::from_fn(|i| i as u8);
        let dir = tempfile::tempdir().unwrap();
        let hex_file = dir.path().join("hex");
        std::fs::write(&hex_file, format!("{HEX}\n")).unwrap();
        let raw_file = dir.path().join("raw");
        std::fs::write(&raw_file, want).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(want);
        let sources = [
            format!("file:{}", hex_file.display()),
            format!("file:{}", raw_file.display()),
            format!("cmd:echo {b64}"),
        ];
        for s in &sources {
            let k = s.parse::<KekSource>().unwrap().load().unwrap();
            assert_eq!(k.bytes(), &want, "{s}");
            assert_eq!(k.fingerprint(), Kek::from_bytes(want).fingerprint());
            let shown = format!("{k:?}");
            assert!(
                !shown.contains(&HEX[..16]) && !shown.contains(&b64[..8]),
                "{shown}"
            );
        }
        assert_eq!(Kek::from_bytes(want).fingerprint().len(), 16);
        assert_ne!(
            Kek::from_bytes(want).fingerprint(),
            Kek::from_bytes([9; 32]).fingerprint()
        );
    }

    #[test]
    fn unusable_sources_say_what_is_wrong() {
        assert!(matches!(
            "vault".parse::<KekSource>(),
            Err(KekError::BadSource(_))
        ));
        let e = "env:PITR_TEST_NO_SUCH_KEY_VAR"
            .parse::<KekSource>()
            .unwrap()
            .load()
            .unwrap_err();
        assert!(e.to_string().contains("PITR_TEST_NO_SUCH_KEY_VAR"), "{e}");
        let e = "cmd:echo short"
            .parse::<KekSource>()
            .unwrap()
            .load()
            .unwrap_err();
        assert!(e.to_string().contains("openssl rand -hex 32"), "{e}");
        let e = "cmd:exit 3"
            .parse::<KekSource>()
            .unwrap()
            .load()
            .unwrap_err();
        assert!(e.to_string().contains("failed"), "{e}");
        let e = "file:/nonexistent/kek"
            .parse::<KekSource>()
            .unwrap()
            .load()
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/kek"), "{e}");
    }
}
