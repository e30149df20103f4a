//! The MongoDB engine: positions are oplog timestamps `(secs, inc)` mapped
//! onto `LogPos {hi: 0, lo: secs << 32 | inc}`; the epoch is the replica
//! set's term `t`. A logical base backup (see `backup::mongodb::manifest`)
//! needs the oplog from the newest entry before its dump began (`start`) to
//! the newest entry after it ended (`end`): loaded documents plus those
//! entries applied make a consistent database.

use std::sync::Arc;

use pitr_mongodb::OplogTs;
use pitr_segment::{Epoch, LogPos};
use tokio_util::sync::CancellationToken;

use super::{
    ArchiveRequest, BackupReport, BackupRequest, BackupSummary, EngineFuture, EngineOps, StoredPart,
};
use crate::archive::keys::BackupKey;
use crate::archive::progress::ArchiveProgress;
use crate::backup::manifest::parse;
use crate::backup::mongodb::manifest::MongoManifest;
use crate::backup::mongodb::take::{report, take_mongo_backup};
use crate::restore::request::{RestoreRequest, TargetKind};
use crate::source::mongodb::{archive, MongoArchiveOptions};
use crate::source::{url_kind, UrlKind};
use crate::storage::Repo;

/// MongoDB replica sets: oplog tailing and logical base backups.
#[derive(Debug)]
pub struct MongoDb;

/// The epoch of entries of term `t` (terms start at 0 on a new set; a
/// missing term, as on very old servers, is epoch 0).
pub fn term_epoch(t: Option<i64>) -> Epoch {
    Epoch(t.and_then(|t| u64::try_from(t).ok()).unwrap_or(0))
}

impl EngineOps for MongoDb {
    fn name(&self) -> &'static str {
        "mongodb"
    }

    fn label(&self) -> &'static str {
        "MongoDB"
    }

    fn fetch_verb(&self) -> &'static str {
        "oplog-fetch"
    }

    fn codes(&self) -> &'static [pitr_segment::Engine] {
        &[pitr_segment::Engine::MongoDb]
    }

    fn handles_url(&self, url: &str) -> bool {
        url_kind(url) == Some(UrlKind::MongoDb)
    }

    fn format_position(&self, epoch: Epoch, pos: LogPos) -> String {
        match OplogTs::from_log_pos(pos) {
            Some(ts) => format!("term {} ts {}:{}", epoch.0, ts.secs, ts.inc),
            None => format!("term {} position {}", epoch.0, pos.to_hex()),
        }
    }

    fn backup_summary(
        &self,
        key: &BackupKey,
        manifest: &serde_json::Value,
    ) -> anyhow::Result<Option<BackupSummary>> {
        let Some(m) = parse::<MongoManifest>(key, manifest)? else {
            return Ok(None);
        };
        let parts = m
            .streams()
            .flat_map(|s| s.parts.iter())
            .map(|p| StoredPart {
                name: p.key.clone(),
                size: p.size,
                sha256: p.sha256.clone(),
            })
            .collect();
        let end = OplogTs::from(m.end);
        Ok(Some(BackupSummary {
            key: key.clone(),
            engine: &MongoDb,
            server_engine: pitr_segment::Engine::MongoDb,
            stored_bytes: m.stored_bytes(),
            parts,
            label: m.label,
            server_version: m.server_version,
            system_id: m.system_id,
            epoch: term_epoch(Some(m.start_term)),
            log_start: OplogTs::from(m.start).to_log_pos(),
            // Exclusive: the entry at `end` itself must be archived.
            consistent_at: end.pos_after(),
            start_time: m.start_time,
            consistent_time: m.end_wall,
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
        let opts = MongoArchiveOptions {
            common: req.settings(),
            start_at: req.start_at,
            ..Default::default()
        };
        Box::pin(async move { archive(opts, repo, cancel, progress).await })
    }

    fn backup(&self, req: BackupRequest, repo: Repo) -> EngineFuture<BackupReport> {
        let req = BackupRequest {
            parallel: req.parallel.max(1),
            ..req
        };
        Box::pin(async move { take_mongo_backup(&req, &repo).await.map(|r| report(&r)) })
    }

    fn restore_targets(&self) -> &'static [TargetKind] {
        &[TargetKind::Latest, TargetKind::Time, TargetKind::Ts]
    }

    fn restore(&self, req: RestoreRequest) -> EngineFuture<i32> {
        Box::pin(crate::restore::mongodb::run_mongo(req))
    }
}
