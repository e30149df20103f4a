//! Streams of a logical base backup as stored objects: one zstd stream per
//! logical piece (a table's rows, a collection's documents, the schema), cut
//! into parts of at most the configured size (`<name>.zst.000`, `.001`, ...).
//! The parts of a stream concatenated form one zstd stream. `size`/`sha256`
//! of a stream are of its uncompressed bytes; a part's are of the stored
//! object.

use std::io::Write as _;

use anyhow::anyhow;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::archive::keys::BackupKey;
use crate::storage::Repo;

/// One stored object of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    pub key: String,
    pub size: u64,
    pub sha256: String,
}

/// A zstd stream stored as parts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stream {
    pub name: String,
    /// Uncompressed size and sha256 (hex).
    pub size: u64,
    pub sha256: String,
    pub parts: Vec<Part>,
}

/// Compresses a stream into parts of at most `part_size` stored bytes.
pub struct StreamWriter<'a> {
    repo: &'a Repo,
    key: &'a BackupKey,
    name: String,
    part_size: usize,
    enc: zstd::stream::write::Encoder<'static, Vec<u8>>,
    sha: Sha256,
    size: u64,
    parts: Vec<Part>,
}

impl<'a> StreamWriter<'a> {
    pub fn new(
        repo: &'a Repo,
        key: &'a BackupKey,
        name: &str,
        part_size: usize,
        level: i32,
    ) -> anyhow::Result<StreamWriter<'a>> {
        Ok(StreamWriter {
            repo,
            key,
            name: name.to_string(),
            part_size: part_size.max(1 << 16),
            enc: zstd::stream::write::Encoder::new(Vec::new(), level)?,
            sha: Sha256::new(),
            size: 0,
            parts: Vec::new(),
        })
    }

    pub async fn write(&mut self, data: &[u8]) -> anyhow::Result<()> {
        self.enc.write_all(data)?;
        self.sha.update(data);
        self.size += data.len() as u64;
        if self.enc.get_ref().len() >= self.part_size {
            let buf = std::mem::take(self.enc.get_mut());
            self.put(buf).await?;
        }
        Ok(())
    }

    async fn put(&mut self, data: Vec<u8>) -> anyhow::Result<()> {
        let part = format!("{}.zst.{:03}", self.name, self.parts.len());
        let key = self.key.part_key(&part)?;
        let data = crate::crypto::seal_object(self.repo, &key, data)?;
        let sha = hex::encode(Sha256::digest(&data));
        let size = data.len() as u64;
        self.repo
            .put_if_absent(&key, Bytes::from(data))
            .await
            .map_err(|e| anyhow!("storing backup part {key}: {e}"))?;
        self.parts.push(Part {
            key: part,
            size,
            sha256: sha,
        });
        Ok(())
    }

    pub async fn finish(mut self) -> anyhow::Result<Stream> {
        let enc = std::mem::replace(
            &mut self.enc,
            zstd::stream::write::Encoder::new(Vec::new(), 1)?,
        );
        let rest = enc.finish()?;
        if !rest.is_empty() || self.parts.is_empty() {
            self.put(rest).await?;
        }
        Ok(Stream {
            name: self.name,
            size: self.size,
            sha256: hex::encode(self.sha.finalize()),
            parts: self.parts,
        })
    }
}
