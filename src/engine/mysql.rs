//! The MySQL/MariaDB engine: positions are (binlog file sequence number,
//! byte offset) on one lineage (epoch 1). A logical base backup (see
//! `backup::mysql::manifest`) is a snapshot at a binlog position; restoring
//! it replays the log from the start of that binlog file (its
//! FORMAT_DESCRIPTION event is needed to decode row events), so the file's
//! start (offset 4, after the magic) is the first position it needs, and the snapshot position is where
//! the loaded data is consistent.

use std::sync::Arc;

use pitr_segment::{Epoch, LogPos};
use tokio_util::sync::CancellationToken;

use super::{
    ArchiveRequest, BackupReport, BackupRequest, BackupSummary, EngineFuture, EngineOps, StoredPart,
};
use crate::archive::keys::BackupKey;
use crate::archive::progress::ArchiveProgress;
use crate::backup::manifest::parse;
use crate::backup::mysql::manifest::MysqlManifest;
use crate::backup::mysql::{report, take_mysql_backup};
use crate::restore::request::{RestoreRequest, TargetKind};
use crate::source::mysql::{archive, MysqlArchiveOptions};
use crate::source::{url_kind, UrlKind};
use crate::storage::Repo;

/// MySQL and MariaDB binlog streaming and logical base backups.
#[derive(Debug)]
pub struct MySql;

/// Offset of the first event of a binlog file (after the 4-byte magic).
pub const FIRST_EVENT_OFFSET: u64 = 4;

/// The one epoch of a MySQL/MariaDB source.
pub const MYSQL_EPOCH: Epoch = Epoch(1);

impl EngineOps for MySql {
    fn name(&self) -> &'static str {
        "mysql"
    }

    fn label(&self) -> &'static str {
        "MySQL/MariaDB"
    }

    fn fetch_verb(&self) -> &'static str {
        "binlog-fetch"
    }

    fn codes(&self) -> &'static [pitr_segment::Engine] {
        &[pitr_segment::Engine::MySql, pitr_segment::Engine::MariaDb]
    }

    fn handles_url(&self, url: &str) -> bool {
        url_kind(url) == Some(UrlKind::MySql)
    }

    fn format_position(&self, _epoch: Epoch, pos: LogPos) -> String {
        format!("binlog file #{} offset {}", pos.hi, pos.lo)
    }

    fn backup_summary(
        &self,
        key: &BackupKey,
        manifest: &serde_json::Value,
    ) -> anyhow::Result<Option<BackupSummary>> {
        let Some(m) = parse::<MysqlManifest>(key, manifest)? else {
            return Ok(None);
        };
        let server_engine = if m.engine == "mariadb" {
            pitr_segment::Engine::MariaDb
        } else {
            pitr_segment::Engine::MySql
        };
        let parts = std::iter::once(&m.schema)
            .chain(m.tables.iter().map(|t| &t.data))
            .flat_map(|s| s.parts.iter())
            .map(|p| StoredPart {
                name: p.key.clone(),
                size: p.size,
                sha256: p.sha256.clone(),
            })
            .collect();
        Ok(Some(BackupSummary {
            key: key.clone(),
            engine: &MySql,
            parts,
            server_engine,
            stored_bytes: m.stored_bytes(),
            label: m.label,
            server_version: m.server_version,
            system_id: m.system_id,
            epoch: MYSQL_EPOCH,
            log_start: LogPos::new(key.start.hi, FIRST_EVENT_OFFSET),
            consistent_at: key.start,
            start_time: m.start_time,
            consistent_time: chrono::DateTime::from_timestamp_micros(m.snapshot_time_us)
                .unwrap_or(m.stop_time),
            stop_time: m.stop_time,
        }))
    }

    fn archive(
        &self,
        req: ArchiveRequest,
        repo: Repo,
        cancel: CancellationToken,
        progress: Arc<ArchiveProgress>,
    ) -> EngineFuture<()> {
        let opts = MysqlArchiveOptions {
            common: req.settings(),
            server_id: req.server_id,
        };
        Box::pin(async move { archive(opts, repo, cancel, progress).await })
    }

    fn backup(&self, req: BackupRequest, repo: Repo) -> EngineFuture<BackupReport> {
        let req = BackupRequest {
            parallel: req.parallel.max(1),
            ..req
        };
        Box::pin(async move { take_mysql_backup(&req, &repo).await.map(|r| report(&r)) })
    }

    fn restore_targets(&self) -> &'static [TargetKind] {
        &[
            TargetKind::Latest,
            TargetKind::Time,
            TargetKind::Gtid,
            TargetKind::Position,
        ]
    }

    fn restore(&self, req: RestoreRequest) -> EngineFuture<i32> {
        Box::pin(crate::restore::mysql::run_mysql(req))
    }
}
