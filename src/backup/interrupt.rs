//! Interrupted backups: a backup stopped by a signal removes what it wrote.
//!
//! A backup directory `<source>/backups/<start>_<id>/` is only usable once
//! its `manifest.json` exists (written last). A backup that is stopped
//! before that leaves parts nothing will ever read. [`run_interruptible`]
//! runs a backup until it ends or the cancellation token fires; on
//! cancellation the backup future is dropped (its connections close, the
//! server ends the `BASE_BACKUP` or the snapshot transactions) and every
//! object of its directory is deleted, the manifest first, as `pitr prune`
//! deletes a backup. A put that was in flight when the backup was dropped
//! may still land after the first sweep (a local file is written on a
//! blocking thread), so the directory is listed again a moment later. What
//! a crash or SIGKILL leaves behind is removed by `pitr prune` (see
//! `retention`: incomplete backups).
//!
//! A running backup also holds a pin (`archive::pins`, [`StartedBackup::begin`])
//! on its directory and on the log from its start position: `pitr prune`
//! (another process, any time) deletes neither while the backup runs, however
//! long it takes, and the pin is released when the backup ends.

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::Utc;
use pitr_segment::Epoch;
use tokio_util::sync::CancellationToken;

use crate::archive::keys::BackupKey;
use crate::archive::pins::{self, Pin, PinGuard};
use crate::storage::Repo;

/// Where a backup publishes its directory as soon as it knows it (before
/// the first part is stored), and the pin that protects it meanwhile.
#[derive(Debug, Clone, Default)]
pub struct StartedBackup {
    key: Arc<OnceLock<BackupKey>>,
    pin_id: Arc<Mutex<Option<String>>>,
}

impl StartedBackup {
    /// Publishes the backup's directory, then pins it and the log of `epoch`
    /// from the backup's start on (see the module docs). The backup keeps the
    /// guard (which renews the pin) while it runs; [`run_interruptible`],
    /// which every backup runs under, removes the pin when it ends.
    pub async fn begin(
        &self,
        repo: &Repo,
        key: &BackupKey,
        epoch: Epoch,
    ) -> anyhow::Result<PinGuard> {
        let _ = self.key.set(key.clone());
        let pin = Pin::for_backup(key, epoch, Utc::now(), pins::DEFAULT_TTL);
        let id = pin.id.clone();
        if let Ok(mut g) = self.pin_id.lock() {
            *g = Some(id);
        }
        PinGuard::acquire(repo, pin, pins::DEFAULT_TTL).await
    }

    /// The backup's directory, once published.
    pub fn get(&self) -> Option<&BackupKey> {
        self.key.get()
    }

    /// Removes the backup's pin (when it still exists).
    async fn release_pin(&self, repo: &Repo) {
        let id = self.pin_id.lock().ok().and_then(|mut g| g.take());
        if let (Some(id), Some(key)) = (id, self.key.get()) {
            if let Err(e) = pins::release_by_id(repo, &key.source, &id).await {
                tracing::warn!(backup = %key.dir(), "could not remove the backup's pin (it expires by itself): {e:#}");
            }
        }
    }
}

/// How a backup run under [`run_interruptible`] ended.
#[derive(Debug)]
pub enum Outcome<T> {
    /// The backup finished (successfully or not).
    Finished(anyhow::Result<T>),
    /// The token fired first.
    Interrupted(Cleanup),
}

/// What was done with the directory of an interrupted backup.
#[derive(Debug)]
pub enum Cleanup {
    /// The backup had not created its directory yet.
    NothingStored,
    /// Every object of the directory was deleted.
    Removed { dir: String, objects: usize },
    /// Deleting failed; the directory is left for `pitr prune`.
    Left { dir: String, error: String },
}

impl Cleanup {
    /// One sentence for the operator; `signal` names what interrupted.
    pub fn message(&self, signal: &str) -> String {
        match self {
            Cleanup::NothingStored => {
                format!("backup interrupted by {signal} before it stored anything")
            }
            Cleanup::Removed { dir, objects } => format!(
                "backup interrupted by {signal}; the incomplete backup {dir} was removed ({objects} object(s) deleted)"
            ),
            Cleanup::Left { dir, error } => format!(
                "backup interrupted by {signal}; the incomplete backup {dir} is left for `pitr prune` to remove (deleting it failed: {error})"
            ),
        }
    }
}

/// Runs `backup` until it ends or `cancel` fires; then removes the
/// directory it published in `started`. Either way its pin is released.
pub async fn run_interruptible<T>(
    backup: impl Future<Output = anyhow::Result<T>>,
    started: &StartedBackup,
    repo: &Repo,
    cancel: &CancellationToken,
) -> Outcome<T> {
    tokio::select! {
        biased;
        r = backup => {
            started.release_pin(repo).await;
            return Outcome::Finished(r);
        }
        _ = cancel.cancelled() => {}
    }
    // `backup` is dropped here: its connections and tasks end.
    let Some(key) = started.get() else {
        return Outcome::Interrupted(Cleanup::NothingStored);
    };
    let removed = remove_backup_dir(repo, key).await;
    started.release_pin(repo).await;
    Outcome::Interrupted(match removed {
        Ok(objects) => Cleanup::Removed {
            dir: key.dir(),
            objects,
        },
        Err(e) => Cleanup::Left {
            dir: key.dir(),
            error: format!("{e:#}"),
        },
    })
}

/// Deletes every object of a backup directory, `manifest.json` first;
/// sweeps again after a moment for puts that were in flight. Returns the
/// number of objects deleted.
pub async fn remove_backup_dir(repo: &Repo, key: &BackupKey) -> anyhow::Result<usize> {
    let manifest = key.to_key();
    let mut deleted = 0;
    for sweep in 0..3 {
        if sweep > 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let objects = repo.list(&key.dir()).await?;
        if objects.is_empty() && sweep > 0 {
            break;
        }
        if objects.iter().any(|o| o.location.as_ref() == manifest) {
            repo.delete(&manifest).await?;
            deleted += 1;
        }
        for o in objects {
            let k = o.location.to_string();
            if k != manifest {
                repo.delete(&k).await?;
                deleted += 1;
            }
        }
    }
    repo.remove_leftovers(&key.dir()).await?;
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use pitr_segment::LogPos;

    use super::*;
    use crate::archive::keys::SourceName;

    fn key() -> anyhow::Result<BackupKey> {
        Ok(BackupKey::new(
            SourceName::new("db")?,
            LogPos::new(1, 4),
            "20240101T000000000Z",
        )?)
    }

    /// A backup that stores two parts, starts a third that lands late (a
    /// put in flight when it is dropped), then never finishes.
    async fn stuck_backup(repo: Repo, started: StartedBackup) -> anyhow::Result<()> {
        let k = key()?;
        let _pin = started.begin(&repo, &k, Epoch(1)).await?;
        for p in ["a.zst.000", "a.zst.001"] {
            repo.put_if_absent(&k.part_key(p)?, Bytes::from_static(b"x"))
                .await?;
        }
        let (r, late) = (repo.clone(), k.part_key("a.zst.002")?);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = r.put_if_absent(&late, Bytes::from_static(b"x")).await;
        });
        std::future::pending::<()>().await;
        Ok(())
    }

    #[tokio::test]
    async fn interrupted_backup_removes_its_parts_also_late_ones() -> anyhow::Result<()> {
        let repo = Repo::open("memory://").await?;
        repo.put_if_absent("db/source.json", Bytes::from_static(b"{}"))
            .await?;
        let started = StartedBackup::default();
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            c.cancel();
        });
        let out = run_interruptible(
            stuck_backup(repo.clone(), started.clone()),
            &started,
            &repo,
            &cancel,
        )
        .await;
        let Outcome::Interrupted(Cleanup::Removed { dir, objects }) = out else {
            anyhow::bail!("not removed: {out:?}");
        };
        assert_eq!(dir, key()?.dir());
        assert_eq!(objects, 3);
        assert!(repo.list(&dir).await?.is_empty());
        assert!(
            pins::live_pins(&repo, &key()?.source, Utc::now())
                .await?
                .is_empty(),
            "the interrupted backup's pin is released"
        );
        assert!(repo.exists("db/source.json").await?);
        Ok(())
    }

    #[tokio::test]
    async fn a_finished_backup_is_left_alone() -> anyhow::Result<()> {
        let repo = Repo::open("memory://").await?;
        let started = StartedBackup::default();
        let cancel = CancellationToken::new();
        let out = run_interruptible(async { Ok(7) }, &started, &repo, &cancel).await;
        assert!(matches!(out, Outcome::Finished(Ok(7))));
        cancel.cancel();
        let out = run_interruptible(
            std::future::pending::<anyhow::Result<()>>(),
            &started,
            &repo,
            &cancel,
        )
        .await;
        assert!(matches!(out, Outcome::Interrupted(Cleanup::NothingStored)));
        assert_eq!(
            Cleanup::NothingStored.message("SIGINT"),
            "backup interrupted by SIGINT before it stored anything"
        );
        Ok(())
    }
}
