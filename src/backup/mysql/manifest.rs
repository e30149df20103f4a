//! `manifest.json` of a MySQL/MariaDB logical base backup, written last
//! (create-if-absent) into `<source>/backups/<start>_<id>/`; a backup
//! directory without it is incomplete and ignored.
//!
//! ```json
//! { "format_version": 1, "kind": "mysql-logical", "engine": "mariadb",
//!   "id": "20240101T120000.123Z", "label": "", "system_id": "mariadb-server-1",
//!   "server_version": "10.11.6-MariaDB", "snapshot_method": "ftwrl",
//!   "binlog_file": "binlog.000003", "binlog_pos": 1234, "gtid": "0-1-57",
//!   "snapshot_time_us": 1704110400123456, "start_time": "...", "stop_time": "...",
//!   "schema": {"name": "schema.json", "size": 900, "sha256": "…", "parts": [...]},
//!   "tables": [{"db": "shop", "name": "orders", "columns": ["id", "total"],
//!               "rows": 1000, "data": {"name": "t0000.sql", "size": …, "sha256": …, "parts": [...]}}] }
//! ```
//!
//! `binlog_file:binlog_pos` and `gtid` (MariaDB `gtid_binlog_pos`, MySQL
//! `gtid_executed`) are the coordinates of the consistent snapshot: every
//! transaction before them is in the data, none after. The backup key's
//! start position is `LogPos{hi: file sequence, lo: binlog_pos}`.
//!
//! Each stream (`schema`, each table's `data`) is one zstd stream cut into
//! parts of at most the configured size (`<name>.zst.000`, `.001`, ...);
//! `size`/`sha256` of a stream are of its uncompressed bytes, a part's are
//! of the stored object. The schema stream is the JSON of [`Schema`]; a
//! table's data stream is one `INSERT INTO \`table\` (cols) VALUES (...),...`
//! statement per line (strings and binary values as `X'hex'` literals, so
//! no literal contains a newline), to be run with the table's database as
//! the default database, `time_zone='+00:00'` and
//! `sql_mode='NO_AUTO_VALUE_ON_ZERO'`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::archive::keys::BackupKey;
use crate::storage::Repo;

pub const MYSQL_MANIFEST_FORMAT_VERSION: u32 = 1;
/// `kind` of MySQL/MariaDB logical backups.
pub const MYSQL_BACKUP_KIND: &str = "mysql-logical";

pub use crate::backup::parts::{Part, Stream};

/// The dump of one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableData {
    pub db: String,
    pub name: String,
    /// Columns in the INSERT statements (generated columns left out).
    pub columns: Vec<String>,
    pub rows: u64,
    pub data: Stream,
}

/// A schema object created from its `SHOW CREATE` text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaObject {
    pub name: String,
    /// `table`, `sequence`, `view`, `procedure`, `function`, `trigger`.
    pub kind: String,
    /// The `sql_mode` it was created under (routines and triggers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql_mode: Option<String>,
    pub create: String,
    /// The `character_set_client` and `collation_connection` it was created
    /// under (views, routines, triggers: the server keeps them with the
    /// object and parses its body with them); restored with it, as
    /// `mysqldump` does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub character_set_client: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collation_connection: Option<String>,
}

/// One user database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseSchema {
    pub name: String,
    pub create: String,
    /// Tables and sequences, then views, routines, triggers.
    pub objects: Vec<SchemaObject>,
}

/// Content of the `schema` stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Schema {
    pub databases: Vec<DatabaseSchema>,
}

/// A complete MySQL/MariaDB base backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MysqlManifest {
    pub format_version: u32,
    pub kind: String,
    /// `mysql` or `mariadb`.
    pub engine: String,
    pub id: String,
    pub label: String,
    pub system_id: String,
    pub server_version: String,
    /// How the snapshot was made consistent with the coordinates.
    pub snapshot_method: String,
    pub binlog_file: String,
    pub binlog_pos: u64,
    pub gtid: String,
    /// Server clock at the snapshot (µs since the epoch).
    pub snapshot_time_us: i64,
    pub start_time: DateTime<Utc>,
    pub stop_time: DateTime<Utc>,
    pub schema: Stream,
    pub tables: Vec<TableData>,
}

impl MysqlManifest {
    /// Compressed bytes stored.
    pub fn stored_bytes(&self) -> u64 {
        std::iter::once(&self.schema)
            .chain(self.tables.iter().map(|t| &t.data))
            .flat_map(|s| s.parts.iter())
            .map(|p| p.size)
            .sum()
    }
}

impl crate::backup::manifest::Manifest for MysqlManifest {
    const KIND: Option<&'static str> = Some(MYSQL_BACKUP_KIND);
    const ENGINE: &'static str = "MySQL";
    const FORMAT_VERSION: u32 = MYSQL_MANIFEST_FORMAT_VERSION;
    fn format_version(&self) -> u32 {
        self.format_version
    }
}

/// Complete MySQL/MariaDB backups among `keys`, oldest first.
pub async fn list_mysql_backups(
    repo: &Repo,
    keys: &[BackupKey],
) -> anyhow::Result<Vec<(BackupKey, MysqlManifest)>> {
    crate::backup::manifest::list(repo, keys, |k, m: &MysqlManifest| {
        (k.start, m.snapshot_time_us, k.id.clone())
    })
    .await
}
