//! The PostgreSQL engine: positions are LSNs on a timeline (the epoch);
//! a base backup (`BASE_BACKUP`, see `backup::postgres::manifest`) needs the WAL from
//! its start LSN, rounded down to a WAL-file boundary, to its stop LSN.

use std::sync::Arc;

use pitr_postgres::lsn::Lsn;
use pitr_segment::{Epoch, LogPos};
use tokio_util::sync::CancellationToken;

use super::{
    ArchiveRequest, BackupReport, BackupRequest, BackupSummary, EngineFuture, EngineOps, StoredPart,
};
use crate::archive::keys::BackupKey;
use crate::backup::manifest::parse;
use crate::backup::postgres::manifest::BackupManifest;
use crate::backup::postgres::report::{report, TerminalProgress};
use crate::backup::postgres::take::{take_backup, BackupOptions};
use crate::restore::request::{RestoreRequest, TargetKind};
use crate::source::postgres::{archive, ArchiveProgress, PgArchiveOptions};
use crate::source::{url_kind, UrlKind};
use crate::storage::Repo;

/// PostgreSQL physical streaming replication and base backups.
#[derive(Debug)]
pub struct Postgres;

impl EngineOps for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn label(&self) -> &'static str {
        "PostgreSQL"
    }

    fn fetch_verb(&self) -> &'static str {
        "wal-fetch"
    }

    fn codes(&self) -> &'static [pitr_segment::Engine] {
        &[pitr_segment::Engine::Postgres]
    }

    fn handles_url(&self, url: &str) -> bool {
        url_kind(url) == Some(UrlKind::Postgres)
    }

    fn format_position(&self, epoch: Epoch, pos: LogPos) -> String {
        format!("timeline {} LSN {}", epoch.0, Lsn(pos.lo))
    }

    fn aligns_log_to_files(&self) -> bool {
        true
    }

    fn backup_summary(
        &self,
        key: &BackupKey,
        manifest: &serde_json::Value,
    ) -> anyhow::Result<Option<BackupSummary>> {
        if manifest.get("engine").and_then(|e| e.as_str()) != Some("postgres") {
            return Ok(None);
        }
        let Some(m) = parse::<BackupManifest>(key, manifest)? else {
            return Ok(None);
        };
        let parts = m
            .archives
            .iter()
            .chain(m.backup_manifest.iter())
            .flat_map(|a| a.parts.iter())
            .map(|p| StoredPart {
                name: p.key.clone(),
                size: p.size,
                sha256: p.sha256.clone(),
            })
            .collect();
        Ok(Some(BackupSummary {
            key: key.clone(),
            engine: &Postgres,
            parts,
            server_engine: pitr_segment::Engine::Postgres,
            stored_bytes: m.stored_bytes(),
            label: m.label,
            server_version: m.server_version,
            system_id: m.system_id,
            epoch: Epoch(u64::from(m.timeline)),
            log_start: key.start,
            consistent_at: LogPos::from_lsn(m.stop_lsn.0),
            start_time: m.start_time,
            consistent_time: m.stop_time,
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
        let opts = PgArchiveOptions {
            common: req.settings(),
            slot: req.slot,
            ..Default::default()
        };
        Box::pin(async move { archive(opts, repo, cancel, progress).await })
    }

    fn backup(&self, req: BackupRequest, repo: Repo) -> EngineFuture<BackupReport> {
        let show = req.progress;
        let opts = BackupOptions {
            url: req.url,
            name: req.name,
            label: req.label,
            started: req.started,
            part_size: req.part_size,
            ..Default::default()
        };
        Box::pin(async move {
            let progress = TerminalProgress::new(show);
            let r = take_backup(&opts, &repo, &|p| progress.show(p)).await;
            progress.finish();
            r.map(|r| report(&r))
        })
    }

    fn restore_targets(&self) -> &'static [TargetKind] {
        &[
            TargetKind::Latest,
            TargetKind::Time,
            TargetKind::Lsn,
            TargetKind::Name,
        ]
    }

    fn restore(&self, req: RestoreRequest) -> EngineFuture<i32> {
        Box::pin(crate::restore::postgres::run::run(req))
    }
}
