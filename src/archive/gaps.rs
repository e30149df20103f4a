//! Gap records: explicit markers for a stretch of log that is lost (slot
//! invalidated, binlog purged, oplog rolled over) and can never be archived.
//!
//! Stored as `<source>/<epoch>/gaps/<start>-<end>[_<gen>].json` (`<gen>`:
//! the writer-lease generation, see `keys`), create-if-absent:
//!
//! ```json
//! {"epoch":"0000000000000001","start":"<32 hex>","end":"<32 hex>",
//!  "reason":"replication slot invalidated","detected_at":"2024-01-02T03:04:05Z"}
//! ```
//!
//! The range `[start, end)` is also in the key, so the catalog learns every
//! gap from a listing alone; the body carries the reason for `status`/`verify`.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use pitr_segment::{Epoch, LogPos};
use serde::{Deserialize, Serialize};

use crate::archive::keys::{GapKey, SourceName};
use crate::storage::{PutOutcome, Repo, StorageError};

/// Serde helpers writing positions and epochs as fixed-width hex strings.
pub(crate) mod hex {
    use pitr_segment::{Epoch, LogPos};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn ser_pos<S: Serializer>(p: &LogPos, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&p.to_hex())
    }

    pub fn de_pos<'de, D: Deserializer<'de>>(d: D) -> Result<LogPos, D::Error> {
        let s = String::deserialize(d)?;
        LogPos::from_hex(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("bad log position {s:?}")))
    }

    pub fn ser_epoch<S: Serializer>(e: &Epoch, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&e.to_hex())
    }

    pub fn de_epoch<'de, D: Deserializer<'de>>(d: D) -> Result<Epoch, D::Error> {
        let s = String::deserialize(d)?;
        Epoch::from_hex(&s).ok_or_else(|| serde::de::Error::custom(format!("bad epoch {s:?}")))
    }
}

/// One lost stretch `[start, end)` of an epoch's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapRecord {
    #[serde(serialize_with = "hex::ser_epoch", deserialize_with = "hex::de_epoch")]
    pub epoch: Epoch,
    #[serde(serialize_with = "hex::ser_pos", deserialize_with = "hex::de_pos")]
    pub start: LogPos,
    #[serde(serialize_with = "hex::ser_pos", deserialize_with = "hex::de_pos")]
    pub end: LogPos,
    pub reason: String,
    pub detected_at: DateTime<Utc>,
    /// Writer-lease generation of the archiver that recorded it (0: none;
    /// also in the key).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u32,
}

fn is_zero(g: &u32) -> bool {
    *g == 0
}

/// Errors reading or writing gap records.
#[derive(Debug, thiserror::Error)]
pub enum GapError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("gap record {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("gap record {key} does not match its key (body says {epoch} {start}..{end})")]
    KeyMismatch {
        key: String,
        epoch: Epoch,
        start: LogPos,
        end: LogPos,
    },
    #[error("gap [{start}, {end}) is empty or reversed; a gap must cover at least one position")]
    EmptyRange { start: LogPos, end: LogPos },
}

impl GapRecord {
    /// The key of this record for `source`.
    pub fn key(&self, source: &SourceName) -> GapKey {
        GapKey {
            source: source.clone(),
            epoch: self.epoch,
            start: self.start,
            end: self.end,
            generation: self.generation,
        }
    }
}

/// Writes `gap` (create-if-absent; rewriting an identical record is harmless).
pub async fn write_gap(
    repo: &Repo,
    source: &SourceName,
    gap: &GapRecord,
) -> Result<PutOutcome, GapError> {
    if gap.end <= gap.start {
        return Err(GapError::EmptyRange {
            start: gap.start,
            end: gap.end,
        });
    }
    let key = gap.key(source).to_key();
    let body = serde_json::to_vec_pretty(gap).map_err(|e| GapError::Corrupt {
        key: key.clone(),
        reason: e.to_string(),
    })?;
    Ok(repo.put_if_absent(&key, Bytes::from(body)).await?)
}

/// What an archiver does on finding a lost stretch of log: stores `gap`
/// under its writer lease (checked first: a holder that lost the lease
/// records nothing), where a record of the same range already stored (by an
/// earlier attempt, with other words) counts as recorded.
pub async fn record_gap(
    repo: &Repo,
    source: &SourceName,
    lease: &crate::archive::lease::LeaseGuard,
    gap: &GapRecord,
) -> anyhow::Result<()> {
    lease.check()?;
    match write_gap(repo, source, gap).await {
        Ok(_) | Err(GapError::Storage(StorageError::Divergent { .. })) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Reads the record behind `key` and checks that it matches the key.
pub async fn read_gap(repo: &Repo, key: &GapKey) -> Result<GapRecord, GapError> {
    let k = key.to_key();
    let body = repo.get(&k).await?;
    let rec: GapRecord = serde_json::from_slice(&body).map_err(|e| GapError::Corrupt {
        key: k.clone(),
        reason: e.to_string(),
    })?;
    if rec.epoch != key.epoch || rec.start != key.start || rec.end != key.end {
        return Err(GapError::KeyMismatch {
            key: k,
            epoch: rec.epoch,
            start: rec.start,
            end: rec.end,
        });
    }
    Ok(rec)
}
