//! Repository metadata of a MySQL/MariaDB source: the object
//! `<source>/mysql.json` (`{"binlog_basename", "flavor"}`) stores the binlog
//! base name once, so file names can be rebuilt from positions; and the
//! replica server id a source registers with by default.
//!
//! How the binlog stream is cut into segments is `pitr_mysql::segment`.

use anyhow::anyhow;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::archive::keys::{source_prefix, SourceName};
use crate::storage::{PutOutcome, Repo, StorageError};

/// Contents of `<source>/mysql.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MysqlMeta {
    /// `binlog` of `binlog.000003`.
    pub binlog_basename: String,
    /// `mysql` or `mariadb`.
    pub flavor: String,
}

impl MysqlMeta {
    /// The file name of sequence `seq` (six-digit zero padding, as servers write).
    pub fn file_name(&self, seq: u64) -> String {
        format!("{}.{seq:06}", self.binlog_basename)
    }
}

/// Key of the source's `mysql.json`.
pub fn meta_key(source: &SourceName) -> String {
    format!("{}mysql.json", source_prefix(source))
}

/// Reads `mysql.json`; `None` when absent.
pub async fn read_meta(repo: &Repo, source: &SourceName) -> anyhow::Result<Option<MysqlMeta>> {
    let key = meta_key(source);
    match repo.get(&key).await {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| anyhow!("{key} is corrupt ({e}); the repository is damaged")),
        Err(StorageError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Stores `meta` create-if-absent; a different base name already stored is
/// an error (the file names of the archive would become ambiguous).
pub async fn ensure_meta(repo: &Repo, source: &SourceName, meta: &MysqlMeta) -> anyhow::Result<()> {
    let key = meta_key(source);
    let body = serde_json::to_vec_pretty(meta)?;
    match repo.put_if_absent(&key, Bytes::from(body)).await {
        Ok(PutOutcome::Created | PutOutcome::AlreadyIdentical) => Ok(()),
        Err(StorageError::Divergent { .. }) => match read_meta(repo, source).await? {
            Some(stored) if stored == *meta => Ok(()),
            Some(stored) => Err(anyhow!(
                "source {source} was archived with binlog base name {:?} ({}), but the server now writes {:?} ({}); archive it under a new --name",
                stored.binlog_basename,
                stored.flavor,
                meta.binlog_basename,
                meta.flavor
            )),
            None => Err(anyhow!("{key} vanished while being written; retry")),
        },
        Err(e) => Err(e.into()),
    }
}

/// The default replica server id for a source: a stable hash of its name
/// in `0x7000_0000..=0x7fff_ffff`, a range real servers rarely use.
pub fn default_server_id(source: &str) -> u32 {
    // FNV-1a, 64 bit.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in source.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    0x7000_0000 | (h as u32 & 0x0fff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_ids_are_stable_and_in_range() {
        let a = default_server_id("mysql-abc");
        assert_eq!(a, default_server_id("mysql-abc"));
        assert_ne!(a, default_server_id("mysql-abd"));
        assert!((0x7000_0000..=0x7fff_ffff).contains(&a));
        let m = MysqlMeta {
            binlog_basename: "binlog".into(),
            flavor: "mysql".into(),
        };
        assert_eq!(m.file_name(7), "binlog.000007");
    }
}
