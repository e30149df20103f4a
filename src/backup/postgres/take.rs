//! Takes a PostgreSQL base backup into the repository.
//!
//! Layout: `<source>/backups/<start lsn hex32>_<id>/` holds, per tar
//! archive the server sends (`base.tar`, `<oid>.tar`) and for its
//! `backup_manifest`, one zstd stream cut into parts of at most
//! `part_size` compressed bytes (`base.tar.zst.000`, `.001`, ...), each
//! written create-if-absent as soon as it is full, so memory stays bounded
//! by one part. `manifest.json` is written last.
//!
//! A backup is only usable with the WAL from its start to its stop LSN. The
//! backup succeeds once the catalog covers that range. When an archiver runs
//! (the source's writer lease is live) the backup only waits for it to store
//! that WAL. Otherwise this process takes the writer lease itself and
//! archives the missing WAL (an archiver with `stop_at` = stop LSN) over a
//! TEMPORARY replication slot, which the server drops when the connection
//! ends: no slot is left behind to pin WAL on the server. The lease is
//! released afterwards.

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use bytes::Bytes;
use chrono::Utc;
use pitr_postgres::backup::{BackupEvent, BaseBackupOptions, BaseBackupStream};
use pitr_postgres::conninfo::Config;
use pitr_postgres::lsn::Lsn;
use pitr_postgres::replication::ReplicationClient;
use pitr_segment::{Engine, Epoch};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::archive::catalog::Catalog;
use crate::archive::driver::Settings;
use crate::archive::identity::{ensure_identity, SourceIdentity};
use crate::archive::keys::{BackupKey, SourceName};
use crate::archive::lease::{read_lease, LeaseState};
use crate::backup::interrupt::StartedBackup;
use crate::backup::postgres::manifest::{
    ArchiveInfo, BackupManifest, PartInfo, MANIFEST_FORMAT_VERSION,
};
use crate::source::postgres::{archive, default_slot_name, ArchiveProgress, PgArchiveOptions};
use crate::storage::Repo;

/// Settings of one backup.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub url: String,
    pub name: Option<String>,
    pub label: Option<String>,
    /// Largest stored part (compressed bytes).
    pub part_size: usize,
    pub zstd_level: i32,
    /// How long a running archiver (one holding the writer lease) may go
    /// without storing more WAL before the backup gives up on it (at least
    /// a minute is allowed).
    pub wal_wait: Duration,
    /// Immediate checkpoint (else spread).
    pub fast_checkpoint: bool,
    /// Set to the backup's directory before its first part is stored.
    pub started: StartedBackup,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            url: String::new(),
            name: None,
            label: None,
            part_size: 64 << 20,
            zstd_level: 3,
            wal_wait: Duration::from_secs(10),
            fast_checkpoint: true,
            started: StartedBackup::default(),
        }
    }
}

/// Progress callback data.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Uncompressed bytes received.
    pub received: u64,
    /// Estimated total (sum of the tablespace sizes), 0 if unknown.
    pub total: u64,
    /// Compressed bytes stored.
    pub stored: u64,
}

/// Result of a backup.
#[derive(Debug, Clone)]
pub struct BackupReport {
    pub key: BackupKey,
    pub manifest: BackupManifest,
    /// True when this process archived the backup's WAL itself.
    pub archived_wal_itself: bool,
}

/// One archive being compressed and stored.
struct ArchiveWriter {
    info: ArchiveInfo,
    encoder: zstd::stream::write::Encoder<'static, Vec<u8>>,
    raw_sha: Sha256,
}

impl ArchiveWriter {
    fn new(name: &str, tablespace_path: &str, level: i32) -> anyhow::Result<ArchiveWriter> {
        let oid = name.strip_suffix(".tar").and_then(|s| s.parse().ok());
        Ok(ArchiveWriter {
            info: ArchiveInfo {
                name: name.to_string(),
                tablespace_oid: oid,
                tablespace_path: tablespace_path.to_string(),
                size: 0,
                sha256: String::new(),
                parts: Vec::new(),
            },
            encoder: zstd::stream::write::Encoder::new(Vec::new(), level)?,
            raw_sha: Sha256::new(),
        })
    }
}

struct Store<'a> {
    repo: &'a Repo,
    key: &'a BackupKey,
    part_size: usize,
    stored: u64,
}

impl Store<'_> {
    async fn put_part(&mut self, info: &mut ArchiveInfo, data: Vec<u8>) -> anyhow::Result<()> {
        let name = format!("{}.zst.{:03}", info.name, info.parts.len());
        let key = self
            .key
            .part_key(&name)
            .map_err(|e| anyhow!("archive name {:?} from the server: {e}", info.name))?;
        let data = crate::crypto::seal_object(self.repo, &key, data)?;
        let sha = hex::encode(Sha256::digest(&data));
        let size = data.len() as u64;
        self.repo
            .put_if_absent(&key, Bytes::from(data))
            .await
            .map_err(|e| anyhow!("storing backup part: {e}"))?;
        self.stored += size;
        info.parts.push(PartInfo {
            key: name,
            size,
            sha256: sha,
        });
        Ok(())
    }

    async fn write(&mut self, w: &mut ArchiveWriter, data: &[u8]) -> anyhow::Result<()> {
        w.raw_sha.update(data);
        w.info.size += data.len() as u64;
        w.encoder.write_all(data)?;
        if w.encoder.get_ref().len() >= self.part_size {
            let full = std::mem::take(w.encoder.get_mut());
            self.put_part(&mut w.info, full).await?;
        }
        Ok(())
    }

    async fn finish(&mut self, w: ArchiveWriter) -> anyhow::Result<ArchiveInfo> {
        let ArchiveWriter {
            mut info,
            encoder,
            raw_sha,
        } = w;
        let rest = encoder.finish()?;
        self.put_part(&mut info, rest).await?;
        info.sha256 = hex::encode(raw_sha.finalize());
        Ok(info)
    }
}

/// Takes a base backup of `opts.url` into `repo`.
pub async fn take_backup(
    opts: &BackupOptions,
    repo: &Repo,
    on_progress: &(dyn Fn(Progress) + Sync),
) -> anyhow::Result<BackupReport> {
    let cfg = Config::parse(&opts.url)?;
    let mut client = ReplicationClient::connect(&cfg).await?;
    let ident = client.identify_system().await?;
    let server_version = client
        .connection()
        .parameter("server_version")
        .unwrap_or("unknown")
        .to_string();
    let _ = client.close().await;
    let name = match &opts.name {
        Some(n) => n.clone(),
        None => format!("pg-{}", ident.systemid),
    };
    let source = SourceName::new(&name).map_err(|e| anyhow!("invalid source name: {e}"))?;
    ensure_identity(
        repo,
        &SourceIdentity::new(&name, Engine::Postgres, &ident.systemid),
    )
    .await?;

    let start_time = Utc::now();
    let id = start_time.format("%Y%m%dT%H%M%S%3fZ").to_string();
    let label = opts.label.clone().unwrap_or_else(|| format!("pitr {id}"));
    let bb_opts = BaseBackupOptions {
        label: label.clone(),
        fast_checkpoint: opts.fast_checkpoint,
        ..Default::default()
    };
    let mut stream = BaseBackupStream::start_backup(&cfg, &bb_opts).await?;
    let start = stream.start().clone();
    let key = BackupKey::new(source.clone(), start.lsn.to_log_pos(), &id)?;
    // Renewed until this function returns; removed by `run_interruptible`.
    let _pin = opts
        .started
        .begin(repo, &key, Epoch(u64::from(start.timeline.0)))
        .await?;
    tracing::info!(
        "base backup started at {} on timeline {} into {}",
        start.lsn,
        start.timeline.0,
        key.dir()
    );
    let total: u64 = start.tablespaces.iter().filter_map(|t| t.size).sum();
    let mut store = Store {
        repo,
        key: &key,
        part_size: opts.part_size.max(1),
        stored: 0,
    };
    let mut archives = Vec::new();
    let mut manifest_archive = None;
    let mut current: Option<ArchiveWriter> = None;
    let mut in_manifest = false;
    let mut received = 0u64;
    let mut done_before = 0u64;
    while let Some(ev) = stream.next().await? {
        match ev {
            BackupEvent::Archive {
                name,
                tablespace_path,
            } => {
                if let Some(w) = current.take() {
                    done_before += w.info.size;
                    archives.push(store.finish(w).await?);
                }
                current = Some(ArchiveWriter::new(
                    &name,
                    &tablespace_path,
                    opts.zstd_level,
                )?);
            }
            BackupEvent::Manifest => {
                if let Some(w) = current.take() {
                    done_before += w.info.size;
                    archives.push(store.finish(w).await?);
                }
                in_manifest = true;
                current = Some(ArchiveWriter::new("backup_manifest", "", opts.zstd_level)?);
            }
            BackupEvent::Data(d) => {
                let w = current.as_mut().ok_or_else(|| {
                    anyhow!("the server sent backup data before naming an archive")
                })?;
                store.write(w, &d).await?;
                received = done_before + w.info.size;
                on_progress(Progress {
                    received,
                    total,
                    stored: store.stored,
                });
            }
            BackupEvent::Progress(_) => {}
        }
    }
    if let Some(w) = current.take() {
        let info = store.finish(w).await?;
        if in_manifest {
            manifest_archive = Some(info);
        } else {
            archives.push(info);
        }
    }
    let end = stream.finish().await?;
    let stop_time = Utc::now();
    tracing::info!(
        "base backup data stored ({received} bytes, {} stored); stop position {}",
        store.stored,
        end.lsn
    );
    if archives.is_empty() {
        return Err(anyhow!("the server sent no archive in the base backup"));
    }

    let archived_wal_itself = ensure_wal(opts, repo, &source, &start, end).await?;

    let manifest = BackupManifest {
        format_version: MANIFEST_FORMAT_VERSION,
        id,
        label,
        engine: "postgres".into(),
        system_id: ident.systemid.clone(),
        server_version,
        timeline: end.timeline.0,
        start_lsn: start.lsn,
        stop_lsn: end.lsn,
        start_time,
        stop_time,
        archives,
        backup_manifest: manifest_archive,
    };
    let json =
        crate::crypto::seal_object(repo, &key.to_key(), serde_json::to_vec_pretty(&manifest)?)?;
    repo.put_if_absent(&key.to_key(), Bytes::from(json))
        .await
        .map_err(|e| anyhow!("storing {}: {e}", key.to_key()))?;
    Ok(BackupReport {
        key,
        manifest,
        archived_wal_itself,
    })
}

/// True when `[start, end)` of the timeline is covered by archived segments.
async fn covered(
    repo: &Repo,
    source: &SourceName,
    epoch: Epoch,
    start: Lsn,
    end: Lsn,
) -> anyhow::Result<(bool, Option<u64>)> {
    let catalog = Catalog::load(repo, source).await?;
    let ok = catalog
        .segments_covering(epoch, start.to_log_pos(), end.to_log_pos())
        .is_ok();
    Ok((ok, catalog.tail(epoch).map(|p| p.lo)))
}

/// Waits for (or archives) the WAL `[start, end.lsn)`; true = archived by us.
async fn ensure_wal(
    opts: &BackupOptions,
    repo: &Repo,
    source: &SourceName,
    begin: &pitr_postgres::backup::BackupStart,
    end: pitr_postgres::backup::BackupEnd,
) -> anyhow::Result<bool> {
    let start = begin.lsn;
    let epoch = Epoch(u64::from(end.timeline.0));
    let patience = opts.wal_wait.max(Duration::from_secs(60));
    let (mut ok, mut tail) = covered(repo, source, epoch, start, end.lsn).await?;
    let mut last_growth = Instant::now();
    let mut announced = false;
    while !ok {
        let lease = read_lease(repo, source).await?;
        let Some(live) = lease.filter(|l| l.state(Utc::now()) == LeaseState::Live) else {
            break;
        };
        if !announced {
            tracing::info!(
                "an archiver runs for {source} (writer lease {}): waiting for it to store the WAL up to {}",
                live.describe(),
                end.lsn
            );
            announced = true;
        }
        if last_growth.elapsed() >= patience {
            return Err(anyhow!(
                "the archiver holding the writer lease of {source} ({}) stored no WAL for {patience:?} and has not reached {}; the backup is unusable without that WAL: check that archiver",
                live.holder,
                end.lsn
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (now_ok, now_tail) = covered(repo, source, epoch, start, end.lsn).await?;
        if now_tail > tail {
            last_growth = Instant::now();
        }
        (ok, tail) = (now_ok, now_tail);
    }
    if ok {
        if announced {
            tracing::info!(
                "the running archiver stored the backup's WAL up to {}",
                end.lsn
            );
        }
        return Ok(false);
    }
    let mut slot = format!("{}_backup", default_slot_name(source.as_str()));
    slot.truncate(63);
    tracing::info!(
        "no archiver runs for {source}: taking its writer lease and archiving the WAL up to {} over the temporary replication slot {slot} (dropped when done)",
        end.lsn
    );
    let aopts = PgArchiveOptions {
        common: Settings {
            url: opts.url.clone(),
            name: Some(source.as_str().to_string()),
            ..Default::default()
        },
        slot: Some(slot),
        stop_at: Some(end.lsn),
        start_at: Some((begin.timeline, start)),
        temporary_slot: true,
    };
    archive(
        aopts,
        repo.clone(),
        CancellationToken::new(),
        Arc::new(ArchiveProgress::default()),
    )
    .await
    .context("archiving the WAL of the backup")?;
    let (ok, _) = covered(repo, source, epoch, start, end.lsn).await?;
    if !ok {
        return Err(anyhow!(
            "the WAL from {start} to {} (timeline {}) is still not in the repository; the backup is unusable without it (is there a recorded gap?)",
            end.lsn,
            end.timeline.0
        ));
    }
    tracing::info!(
        "archived the backup's WAL up to {} itself; released the writer lease, no replication slot left behind",
        end.lsn
    );
    Ok(true)
}
