//! Encryption-at-rest checks for end-to-end tests: what someone holding
//! the repository's bucket can read without a key, and the stored
//! segments' format version and key id.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

/// Every file under `dir`.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// What someone holding the bucket reads in an object without any key:
/// its bytes, and the output of every zstd frame found in it (zstd codes
/// literals, so a marker need not appear in compressed bytes as such).
pub fn readable(bytes: &[u8]) -> Vec<u8> {
    use std::io::Read as _;
    const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    let mut out = bytes.to_vec();
    for (i, w) in bytes.windows(4).enumerate() {
        if w == ZSTD_MAGIC {
            if let Ok(d) = zstd::stream::read::Decoder::new(&bytes[i..]) {
                let mut plain = Vec::new();
                let _ = d.single_frame().read_to_end(&mut plain);
                out.extend_from_slice(&plain);
            }
        }
    }
    out
}

/// A base-backup part (`<stream>.zst.NNN`).
pub fn is_part(p: &Path) -> bool {
    p.to_string_lossy().contains(".zst.")
}

/// Whether `marker` is readable in the file `p` (see [`readable`]), as
/// text or hex-encoded (dumps write strings as hex literals).
pub fn shows(p: &Path, marker: &str) -> bool {
    let r = readable(&fs::read(p).unwrap_or_default());
    let hex: String = marker.bytes().map(|b| format!("{b:02x}")).collect();
    contains(&r, marker.as_bytes())
        || contains(&r, hex.as_bytes())
        || contains(&r, hex.to_uppercase().as_bytes())
}

/// Stored segments: (path, format version, key id).
pub fn segments(repo: &Path) -> Vec<(PathBuf, u16, u32)> {
    files(repo)
        .into_iter()
        .filter_map(|p| {
            let b = fs::read(&p).ok()?;
            (b.len() > 20 && &b[..8] == b"PITRSEG\0").then(|| {
                let version = u16::from_le_bytes([b[8], b[9]]);
                let key = u32::from_le_bytes(b[16..20].try_into().unwrap());
                (p, version, key)
            })
        })
        .collect()
}

/// A key-encryption key file of 32 bytes `byte` (hex), readable by every
/// user; returns its `--kek` source.
pub fn kek_file(dir: &Path, name: &str, byte: u8) -> String {
    let p = dir.join(name);
    let hex: String = [byte; 32].iter().map(|b| format!("{b:02x}")).collect();
    fs::write(&p, format!("{hex}\n")).unwrap();
    // the restored PostgreSQL (user postgres) runs wal-fetch with it
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
    format!("file:{}", p.display())
}

/// Asserts that `marker` is readable in no file under `repo` (see [`shows`]).
pub fn assert_hidden(repo: &Path, marker: &str) {
    for p in files(repo) {
        assert!(
            !shows(&p, marker),
            "the marker is readable in {}",
            p.display()
        );
    }
}

/// Flips `mask` in the middle byte of the largest stored segment under `repo`.
pub fn flip_byte_in_largest_segment(repo: &Path, mask: u8) {
    let (victim, _, _) = segments(repo)
        .into_iter()
        .max_by_key(|(p, _, _)| fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = fs::read(&victim).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= mask;
    fs::write(&victim, bytes).unwrap();
}
