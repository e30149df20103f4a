//! `manifest.json` of a MongoDB logical base backup, written last
//! (create-if-absent) into `<source>/backups/<start>_<id>/`; a backup
//! directory without it is incomplete and ignored.
//!
//! ```json
//! { "format_version": 1, "kind": "mongodb-logical", "engine": "mongodb",
//!   "id": "20240101T120000.123Z", "label": "", "system_id": "rs0",
//!   "server_version": "7.0.12",
//!   "start": {"secs": 1704110400, "inc": 3}, "start_term": 1,
//!   "end": {"secs": 1704110460, "inc": 9}, "end_term": 1,
//!   "end_wall": "2024-01-01T12:01:00.123Z",
//!   "start_time": "...", "stop_time": "...",
//!   "users": {"name": "users.bson", "size": …, "sha256": "…", "parts": [...]},
//!   "roles": {"name": "roles.bson", …},
//!   "collections": [{"db": "shop", "name": "orders", "type": "collection",
//!                    "uuid": "0123456789abcdef0123456789abcdef",
//!                    "options": {…}, "indexes": [{…}], "documents": 1000,
//!                    "data": {"name": "c0000.bson", …}}] }
//! ```
//!
//! * `start` is the newest oplog entry before the dump began and `end` the
//!   newest one after it ended. Documents are read at different moments in
//!   between, so a restore loads them and then applies every oplog entry
//!   after `start` (idempotently, as MongoDB's own initial sync does); the
//!   data is consistent once the entries up to `end` are applied. The
//!   backup key's start position is `start` as a `LogPos`.
//! * `options` and `indexes` are MongoDB Extended JSON (canonical mode, so
//!   every BSON type survives), as `listCollections` / `listIndexes` return
//!   them. `type` is `collection`, `view` (no data) or `timeseries` (its
//!   `system.buckets.<name>` collection is dumped as a collection of its own).
//! * Each `data` stream (and `users`, `roles`) is the collection's
//!   documents as raw BSON back to back, exactly as the server returned them,
//!   in one zstd stream cut into parts (see `backup::parts`).

use chrono::{DateTime, Utc};
use pitr_mongodb::OplogTs;
use serde::{Deserialize, Serialize};

pub use crate::backup::parts::{Part, Stream};

pub const MONGO_MANIFEST_FORMAT_VERSION: u32 = 1;
/// `kind` of MongoDB logical backups.
pub const MONGO_BACKUP_KIND: &str = "mongodb-logical";

/// An oplog timestamp as stored in the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TsJson {
    pub secs: u32,
    pub inc: u32,
}

impl From<OplogTs> for TsJson {
    fn from(t: OplogTs) -> TsJson {
        TsJson {
            secs: t.secs,
            inc: t.inc,
        }
    }
}

impl From<TsJson> for OplogTs {
    fn from(t: TsJson) -> OplogTs {
        OplogTs {
            secs: t.secs,
            inc: t.inc,
        }
    }
}

/// One dumped collection (or view).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionDump {
    pub db: String,
    pub name: String,
    /// `collection`, `view` or `timeseries`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The collection UUID (32 hex digits), when the server reports one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// `listCollections` options, canonical Extended JSON.
    pub options: serde_json::Value,
    /// `listIndexes` specifications, canonical Extended JSON.
    pub indexes: Vec<serde_json::Value>,
    pub documents: u64,
    /// The documents (none for a view).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Stream>,
}

/// A complete MongoDB base backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MongoManifest {
    pub format_version: u32,
    pub kind: String,
    pub engine: String,
    pub id: String,
    pub label: String,
    /// The replica-set name.
    pub system_id: String,
    pub server_version: String,
    pub start: TsJson,
    pub start_term: i64,
    pub end: TsJson,
    pub end_term: i64,
    /// `wall` of the entry at `end`: the earliest instant a restore of this
    /// backup can reach.
    pub end_wall: DateTime<Utc>,
    pub start_time: DateTime<Utc>,
    pub stop_time: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<Stream>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Stream>,
    pub collections: Vec<CollectionDump>,
}

impl MongoManifest {
    /// Every stream of the backup.
    pub fn streams(&self) -> impl Iterator<Item = &Stream> {
        self.users
            .iter()
            .chain(self.roles.iter())
            .chain(self.collections.iter().filter_map(|c| c.data.as_ref()))
    }

    /// Compressed bytes stored.
    pub fn stored_bytes(&self) -> u64 {
        self.streams()
            .flat_map(|s| s.parts.iter())
            .map(|p| p.size)
            .sum()
    }
}

impl crate::backup::manifest::Manifest for MongoManifest {
    const KIND: Option<&'static str> = Some(MONGO_BACKUP_KIND);
    const ENGINE: &'static str = "MongoDB";
    const FORMAT_VERSION: u32 = MONGO_MANIFEST_FORMAT_VERSION;
    fn format_version(&self) -> u32 {
        self.format_version
    }
}
