//! `pitr key rotate --reencrypt`: rewrites every object sealed with a data
//! key other than the current one under the current key, for a data key
//! that may be compromised.
//!
//! Every object of every source is read once: a sealed segment is decoded
//! (all checksums and tags verified) and encoded again with the current key
//! (same positions, commit times and record count); a sealed part or dump
//! stream is opened and sealed again. A backup's `manifest.json` is then
//! rewritten after its parts, with their new sizes and SHA-256 (it records
//! the stored bytes), sealed with the current key. Each object is replaced
//! with a conditional write against the version read, so an object changed
//! meanwhile (compaction, prune) is left to the next run, never clobbered.
//! Plain objects (written before the repository was encrypted) stay plain.
//!
//! Restores running meanwhile may fail on an object swapped under them;
//! run it when no restore is in progress. Objects an archiver seals with
//! the old key before it picks up the rotation (within a minute) are not
//! rewritten: run it again later, `pitr verify` lists the key ids in use.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{anyhow, Context as _};
use bytes::Bytes;
use pitr_segment::{Codec, SealKey, SegmentHeader, WriterOptions};
use sha2::{Digest, Sha256};

use crate::archive::identity::list_sources;
use crate::archive::keys::source_prefix;
use crate::storage::{CasError, Repo};

/// What a re-encryption did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Reencrypted {
    pub segments: usize,
    pub parts: usize,
    pub manifests: usize,
    /// Objects changed by another process meanwhile, left as they were.
    pub skipped: Vec<String>,
    /// Data key ids objects were sealed with before.
    pub from_keys: BTreeSet<u32>,
}

/// Rewrites every object of the repository not sealed with its current
/// data key (see the module docs). The repository must be unlocked with
/// the current key and the old ones.
pub async fn reencrypt(repo: &Repo) -> anyhow::Result<Reencrypted> {
    let keys = repo.keys();
    let current = keys
        .current
        .clone()
        .ok_or_else(|| anyhow!("the repository is not encrypted; nothing to re-encrypt"))?;
    let mut done = Reencrypted::default();
    for source in list_sources(repo).await? {
        let mut objects = repo.list(&source_prefix(&source)).await?;
        objects.sort_by(|a, b| a.location.as_ref().cmp(b.location.as_ref()));
        // new (size, sha256) of rewritten parts, by object key
        let mut parts: BTreeMap<String, (u64, String)> = BTreeMap::new();
        let mut manifests = Vec::new();
        for o in objects {
            let name = o.location.to_string();
            if name.ends_with("/manifest.json") {
                manifests.push(name);
                continue;
            }
            let Some((stored, version)) = repo.get_versioned(&name).await? else {
                continue;
            };
            let rewritten = if stored.starts_with(b"PITRSEG\0") {
                match reseal_segment(&keys.all, &current, &stored, &name)? {
                    Some((bytes, old)) => {
                        done.from_keys.insert(old);
                        done.segments += 1;
                        Some(bytes)
                    }
                    None => None,
                }
            } else {
                match pitr_segment::blob_key_id(&stored) {
                    Some(id) if id != current.id() => {
                        let body = pitr_segment::open_blob(&keys.all, &name, &stored)
                            .with_context(|| format!("opening {name}"))?;
                        done.from_keys.insert(id);
                        done.parts += 1;
                        Some(pitr_segment::seal_blob(&current, &name, &body)?)
                    }
                    _ => None,
                }
            };
            let Some(bytes) = rewritten else { continue };
            let entry = (bytes.len() as u64, hex::encode(Sha256::digest(&bytes)));
            match repo
                .put_if_version(&name, Bytes::from(bytes), &version)
                .await
            {
                Ok(_) => {
                    parts.insert(name, entry);
                }
                Err(CasError::Conflict { .. }) => done.skipped.push(name),
                Err(CasError::Storage(e)) => return Err(e.into()),
            }
        }
        for name in manifests {
            if rewrite_manifest(repo, &current, &name, &parts, &mut done).await? {
                done.manifests += 1;
            }
        }
    }
    Ok(done)
}

/// A sealed segment encoded again with `current`, and its old key id;
/// `None` for a plain segment or one already under `current`.
fn reseal_segment(
    all: &pitr_segment::KeySet,
    current: &SealKey,
    stored: &[u8],
    name: &str,
) -> anyhow::Result<Option<(Vec<u8>, u32)>> {
    let (h, _) = pitr_segment::parse_header(stored).with_context(|| format!("reading {name}"))?;
    if h.key_id == 0 || h.key_id == current.id() {
        return Ok(None);
    }
    let (meta, payload) =
        pitr_segment::decode_with(stored, all).with_context(|| format!("reading {name}"))?;
    let f = &meta.footer;
    let header = SegmentHeader {
        key_id: 0,
        codec: match h.codec {
            Codec::None => Codec::None,
            Codec::Zstd { .. } => Codec::Zstd { level: 1 },
        },
        ..h.clone()
    };
    let opts = WriterOptions::default().sealed_with(Some(current.clone()), &header, [&payload[..]]);
    let bytes = pitr_segment::encode(
        header,
        &payload,
        f.end,
        f.first_commit,
        f.last_commit,
        f.record_count,
        opts,
    )?;
    Ok(Some((bytes, h.key_id)))
}

/// Rewrites a backup's manifest when it is sealed with an old key or lists
/// rewritten parts: their new size and SHA-256, sealed with `current`.
async fn rewrite_manifest(
    repo: &Repo,
    current: &SealKey,
    name: &str,
    parts: &BTreeMap<String, (u64, String)>,
    done: &mut Reencrypted,
) -> anyhow::Result<bool> {
    let Some((stored, version)) = repo.get_versioned(name).await? else {
        return Ok(false);
    };
    let dir = name.trim_end_matches("manifest.json");
    let old = pitr_segment::blob_key_id(&stored);
    let touched = parts.keys().any(|k| k.starts_with(dir));
    if !touched && old.is_none_or(|id| id == current.id()) {
        return Ok(false);
    }
    let body = crate::crypto::open_object(repo, name, stored)?;
    let mut json: serde_json::Value =
        serde_json::from_slice(&body).with_context(|| format!("{name} is not JSON"))?;
    update_parts(&mut json, dir, parts);
    let body = serde_json::to_vec_pretty(&json)?;
    let bytes = match old {
        // a plain manifest (written before encryption) stays plain
        None => body,
        Some(id) => {
            done.from_keys.insert(id);
            pitr_segment::seal_blob(current, name, &body)?
        }
    };
    match repo
        .put_if_version(name, Bytes::from(bytes), &version)
        .await
    {
        Ok(_) => Ok(true),
        Err(CasError::Conflict { .. }) => {
            done.skipped.push(name.to_string());
            Ok(false)
        }
        Err(CasError::Storage(e)) => Err(e.into()),
    }
}

/// Sets `size` and `sha256` of every part entry (`{"key", "size",
/// "sha256"}`, the key relative to the backup directory `dir`) found in
/// `json` to its rewritten object's.
fn update_parts(json: &mut serde_json::Value, dir: &str, parts: &BTreeMap<String, (u64, String)>) {
    match json {
        serde_json::Value::Object(m) => {
            let full = m
                .get("key")
                .and_then(|k| k.as_str())
                .filter(|_| m.contains_key("sha256") && m.contains_key("size"))
                .map(|k| format!("{dir}{k}"));
            if let Some((size, sha)) = full.and_then(|k| parts.get(&k)) {
                m.insert("size".into(), (*size).into());
                m.insert("sha256".into(), sha.clone().into());
            }
            for v in m.values_mut() {
                update_parts(v, dir, parts);
            }
        }
        serde_json::Value::Array(a) => {
            for v in a {
                update_parts(v, dir, parts);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_entries_are_found_anywhere_in_a_manifest() {
        let mut j = serde_json::json!({
            "archives": [{"name": "base.tar", "parts": [
                {"key": "base.tar.zst.000", "size": 1, "sha256": "a"},
                {"key": "base.tar.zst.001", "size": 2, "sha256": "b"}]}],
            "schema": {"parts": [{"key": "schema.json.zst.000", "size": 3, "sha256": "c"}]},
            "key": "not a part"
        });
        let parts = BTreeMap::from([
            (
                "s/backups/x/base.tar.zst.001".to_string(),
                (20, "bb".to_string()),
            ),
            (
                "s/backups/x/schema.json.zst.000".to_string(),
                (30, "cc".to_string()),
            ),
            (
                "s/backups/y/base.tar.zst.000".to_string(),
                (99, "zz".to_string()),
            ),
        ]);
        update_parts(&mut j, "s/backups/x/", &parts);
        assert_eq!(j["archives"][0]["parts"][0]["sha256"], "a");
        assert_eq!(j["archives"][0]["parts"][1]["size"], 20);
        assert_eq!(j["archives"][0]["parts"][1]["sha256"], "bb");
        assert_eq!(j["schema"]["parts"][0]["sha256"], "cc");
        assert_eq!(j["key"], "not a part");
    }
}
