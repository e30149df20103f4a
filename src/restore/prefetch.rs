//! WAL prefetch for `wal-fetch`: while PostgreSQL replays WAL file N, the
//! next `k` files are already being rebuilt into a local spool, so the next
//! `restore_command` finds its file ready instead of waiting on the
//! repository.
//!
//! PostgreSQL runs one short-lived `restore_command` per file, so the
//! downloads happen in a detached background worker (`pitr wal-fetch
//! --prefetch-worker`, its own process group) that outlives the invocation
//! that started it. Only one worker runs per spool (a lock file holding its
//! pid; a lock whose pid is gone or a zombie is stale and taken over).
//!
//! Spool layout, by default `<dir of %p>/.pitr-prefetch` — with %p =
//! `pg_wal/RECOVERYXLOG` that is `$PGDATA/pg_wal/.pitr-prefetch`: on the same
//! file system as the destination (a hit is a rename, no copy), and inside
//! `pg_wal`, whose contents base backups never include:
//!
//! ```text
//! .pitr-prefetch/<id>/            id = sha256(repo URL, source, WAL segment size)[..16]:
//!                                 files of another repository/source are never looked at
//!   want                          the WAL file PostgreSQL asked for last (written by wal-fetch)
//!   worker.lock                   pid of the running worker
//!   worker.log                    the worker's stderr
//!   <WAL file name>.<crc32c>      a complete, verified WAL file and the CRC-32C of its bytes
//! ```
//!
//! The worker keeps exactly the window `want+1 ..= want+k` of `want`'s
//! timeline: everything else is deleted, so the spool never holds more than
//! `k` files. A file enters the spool only after its segments were fully
//! verified and it was written to a temporary name, synced, and renamed.
//! Before a spooled file is served its size and CRC-32C are checked again; a
//! damaged one is deleted and the file is rebuilt from the repository.
//! Zero-padded partial files (the end of the archive) are never spooled.
//!
//! The spool is removed when recovery ends: when PostgreSQL asks for a WAL
//! file the repository does not hold, when the zero-padded end of the
//! archive is served, or when a timeline history file is missing (which is
//! how PostgreSQL looks for a free timeline id when it promotes).

use std::collections::HashSet;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use pitr_postgres::lsn::{parse_wal_file_name, wal_file_name, Lsn};
use sha2::{Digest, Sha256};

use crate::archive::catalog::Catalog;
use crate::archive::keys::SourceName;
use crate::restore::postgres::wal_fetch::{
    fetch_wal_file, rebuild_file, write_atomically, FetchOptions, FetchOutcome, Rebuilt,
};
use crate::storage::Repo;

/// Files fetched ahead by default.
pub const DEFAULT_DEPTH: usize = 8;
/// Name of the spool directory next to the destination of `wal-fetch`.
pub const SPOOL_DIR_NAME: &str = ".pitr-prefetch";
const WANT: &str = "want";
const LOCK: &str = "worker.lock";
/// Name of the worker's log file inside the spool.
pub const WORKER_LOG: &str = "worker.log";

/// The spool of one repository/source.
#[derive(Debug, Clone)]
pub struct Spool {
    root: PathBuf,
    dir: PathBuf,
    depth: usize,
    seg_size: u64,
}

/// Where a served file came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Spool,
    Repository,
}

impl Spool {
    /// The spool under `root` for files of `source` in the repository `repo_url`.
    pub fn new(
        root: &Path,
        repo_url: &str,
        source: &SourceName,
        seg_size: u64,
        depth: usize,
    ) -> Spool {
        let mut h = Sha256::new();
        h.update(b"pitr-prefetch v1\0");
        h.update(repo_url.as_bytes());
        h.update(b"\0");
        h.update(source.as_str().as_bytes());
        h.update(b"\0");
        h.update(seg_size.to_string().as_bytes());
        let id = hex::encode(h.finalize());
        Spool {
            root: root.to_path_buf(),
            dir: root.join(&id[..16]),
            depth,
            seg_size,
        }
    }

    /// The default spool root for a `wal-fetch` destination (`%p`).
    pub fn default_root(dest: &Path) -> PathBuf {
        let parent = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        parent.join(SPOOL_DIR_NAME)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// This repository/source's directory inside the root.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Creates the directory and deletes spools of other repositories/sources.
    fn create(&self) -> io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        for e in std::fs::read_dir(&self.root)? {
            let e = e?;
            if e.path() != self.dir && e.file_type()?.is_dir() {
                std::fs::remove_dir_all(e.path())?;
            }
        }
        Ok(())
    }

    /// Deletes the whole spool root (all identities).
    pub fn remove_all(&self) -> io::Result<()> {
        match std::fs::remove_dir_all(&self.root) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn set_want(&self, name: &str) -> io::Result<()> {
        write_atomically(&self.dir.join(WANT), name.as_bytes())
    }

    /// The file PostgreSQL asked for last; `None` once the spool is gone.
    fn want(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join(WANT))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// The `depth` WAL file names after `name` on its timeline.
    pub fn window(&self, name: &str) -> Vec<String> {
        let Some((tli, start)) = parse_wal_file_name(name, self.seg_size) else {
            return Vec::new();
        };
        (1..=self.depth as u64)
            .filter_map(|i| {
                let lsn = start.0.checked_add(i.checked_mul(self.seg_size)?)?;
                Some(wal_file_name(tli, Lsn(lsn), self.seg_size))
            })
            .collect()
    }

    /// Spooled files: (WAL file name, CRC-32C from the name, path).
    pub fn spooled(&self) -> io::Result<Vec<(String, u32, PathBuf)>> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for e in rd {
            let e = e?;
            let file = e.file_name();
            let Some(file) = file.to_str() else { continue };
            let Some((wal, crc)) = file.split_once('.') else {
                continue;
            };
            if parse_wal_file_name(wal, self.seg_size).is_none() || crc.len() != 8 {
                continue;
            }
            if let Ok(crc) = u32::from_str_radix(crc, 16) {
                out.push((wal.to_string(), crc, e.path()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Deletes spooled files whose WAL file is not in `keep`.
    fn prune(&self, keep: &[String]) -> io::Result<()> {
        for (wal, _, path) in self.spooled()? {
            if !keep.contains(&wal) {
                remove_if_present(&path)?;
            }
        }
        Ok(())
    }

    /// Moves a verified spooled copy of `name` to `dest`; returns its size.
    /// Damaged copies are deleted.
    fn take(&self, name: &str, dest: &Path) -> io::Result<Option<u64>> {
        for (wal, crc, path) in self.spooled()? {
            if wal != name {
                continue;
            }
            let data = match read_verified(&path, crc, self.seg_size) {
                Ok(Some(d)) => d,
                Ok(None) => {
                    tracing::warn!(
                        "spooled {} is damaged; fetching {name} from the repository",
                        path.display()
                    );
                    remove_if_present(&path)?;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if std::fs::rename(&path, dest).is_err() {
                // Another file system (--spool elsewhere): copy what was verified.
                write_atomically(dest, &data)?;
                remove_if_present(&path)?;
            }
            return Ok(Some(data.len() as u64));
        }
        Ok(None)
    }

    /// Adds a complete, verified WAL file, if it is still wanted. Returns
    /// whether it was stored.
    fn store(&self, name: &str, data: &[u8]) -> io::Result<bool> {
        use std::io::Write as _;
        if data.len() as u64 != self.seg_size {
            return Ok(false);
        }
        let Some(want) = self.want() else {
            return Ok(false);
        };
        if !self.window(&want).iter().any(|w| w == name) {
            return Ok(false);
        }
        let crc = crc32c::crc32c(data);
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&self.dir)?;
        tmp.write_all(data)?;
        tmp.as_file().sync_all()?;
        let path = self.dir.join(format!("{name}.{crc:08x}"));
        tmp.persist(&path).map_err(|e| e.error)?;
        // The request may have moved on meanwhile: keep the window exact.
        match self.want() {
            Some(w) if self.window(&w).iter().any(|n| n == name) => Ok(true),
            _ => {
                remove_if_present(&path)?;
                Ok(false)
            }
        }
    }

    /// Window files neither spooled nor in `busy`, and not at or after `end`.
    fn missing(&self, want: &str, busy: &HashSet<String>, end: Option<&str>) -> Vec<String> {
        let have: HashSet<String> = self
            .spooled()
            .unwrap_or_default()
            .into_iter()
            .map(|(w, _, _)| w)
            .collect();
        self.window(want)
            .into_iter()
            .filter(|n| !have.contains(n) && !busy.contains(n))
            .filter(|n| end.is_none_or(|e| n.as_str() < e || n[..8] != e[..8]))
            .collect()
    }
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The bytes of a spooled file if its size and CRC-32C are right.
fn read_verified(path: &Path, crc: u32, size: u64) -> io::Result<Option<Vec<u8>>> {
    let mut f = std::fs::File::open(path)?;
    let mut data = Vec::with_capacity(size as usize);
    f.by_ref().take(size + 1).read_to_end(&mut data)?;
    Ok((data.len() as u64 == size && crc32c::crc32c(&data) == crc).then_some(data))
}

/// The lock of the one worker of a spool: a file created exclusively,
/// holding the worker's pid, deleted when dropped.
struct WorkerLock {
    path: PathBuf,
}

impl WorkerLock {
    fn try_acquire(dir: &Path) -> io::Result<Option<WorkerLock>> {
        use std::io::Write as _;
        let path = dir.join(LOCK);
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    f.write_all(std::process::id().to_string().as_bytes())?;
                    return Ok(Some(WorkerLock { path }));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if worker_running(dir) {
                        return Ok(None);
                    }
                    remove_if_present(&path)?; // stale: its worker is gone
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }
}

impl Drop for WorkerLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// True if the lock of `dir` names a live process.
fn worker_running(dir: &Path) -> bool {
    let Ok(pid) = std::fs::read_to_string(dir.join(LOCK)) else {
        return false;
    };
    let Ok(pid) = pid.trim().parse::<u32>() else {
        // Being written right now (create, then write): count it as running.
        return true;
    };
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3, after the command name in parentheses, is the state.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Serves `file_name` like [`fetch_wal_file`], from the spool when it holds
/// a verified copy, and makes sure a worker is filling the spool with the
/// files after it (`spawn_worker` starts one; it is called only when none
/// runs). Spool trouble never fails the fetch: it falls back to the
/// repository.
pub async fn fetch_with_prefetch(
    repo: &Repo,
    source: &SourceName,
    file_name: &str,
    dest: &Path,
    opts: &FetchOptions,
    spool: &Spool,
    spawn_worker: &dyn Fn(&Spool) -> anyhow::Result<()>,
) -> anyhow::Result<(FetchOutcome, Source)> {
    let is_wal = parse_wal_file_name(file_name, opts.wal_segment_size).is_some();
    if is_wal && spool.depth > 0 {
        match prepare(spool, file_name, dest) {
            Ok(Some(bytes)) => {
                ensure_worker(spool, spawn_worker);
                let out = FetchOutcome::Written {
                    bytes,
                    partial: false,
                };
                return Ok((out, Source::Spool));
            }
            Ok(None) => ensure_worker(spool, spawn_worker),
            Err(e) => tracing::warn!("prefetch spool {}: {e}", spool.dir.display()),
        }
    }
    let outcome = fetch_wal_file(repo, source, file_name, dest, opts).await?;
    if matches!(
        outcome,
        FetchOutcome::NotArchived(_) | FetchOutcome::Written { partial: true, .. }
    ) {
        // The end of the archive (or PostgreSQL probing for a free
        // timeline id as it promotes): recovery is over.
        if let Err(e) = spool.remove_all() {
            tracing::warn!("removing {}: {e}", spool.root.display());
        }
    }
    Ok((outcome, Source::Repository))
}

/// Records the request, serves a spooled hit, drops files outside the window.
fn prepare(spool: &Spool, file_name: &str, dest: &Path) -> io::Result<Option<u64>> {
    spool.create()?;
    spool.set_want(file_name)?;
    let hit = spool.take(file_name, dest)?;
    spool.prune(&spool.window(file_name))?;
    Ok(hit)
}

fn ensure_worker(spool: &Spool, spawn_worker: &dyn Fn(&Spool) -> anyhow::Result<()>) {
    if !worker_running(&spool.dir) {
        if let Err(e) = spawn_worker(spool) {
            tracing::warn!("cannot start the prefetch worker: {e:#}");
        }
    }
}

/// What a worker did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WorkerStats {
    /// Files stored into the spool.
    pub stored: usize,
    /// Files rebuilt but no longer wanted when they were ready.
    pub discarded: usize,
}

/// The background worker: keeps the spool's window filled until the spool
/// is removed, the archive ends, or nothing new was asked for during
/// `linger`. Returns at once if another worker holds the lock.
pub async fn run_worker(
    repo: &Repo,
    source: &SourceName,
    spool: &Spool,
    opts: &FetchOptions,
    linger: Duration,
) -> anyhow::Result<WorkerStats> {
    let opts = FetchOptions {
        partial: false,
        ..opts.clone()
    };
    let mut stats = WorkerStats::default();
    loop {
        let Some(lock) = WorkerLock::try_acquire(&spool.dir)? else {
            return Ok(stats);
        };
        let end = fill(repo, source, spool, &opts, linger, &mut stats).await;
        drop(lock);
        let end = end?;
        // A request that arrived while the lock was being released saw a
        // running worker and started none: look once more.
        match spool.want() {
            Some(w)
                if !spool
                    .missing(&w, &HashSet::new(), end.as_deref())
                    .is_empty() => {}
            _ => return Ok(stats),
        }
    }
}

type Job = (String, anyhow::Result<Rebuilt>);

/// Fills the window while it moves; returns the first file found not
/// archived (the end of the archive), if any.
async fn fill(
    repo: &Repo,
    source: &SourceName,
    spool: &Spool,
    opts: &FetchOptions,
    linger: Duration,
    stats: &mut WorkerStats,
) -> anyhow::Result<Option<String>> {
    let load = || async { Catalog::load(repo, source).await.map(Arc::new) };
    let mut catalog = load().await?;
    let mut loaded_at = Instant::now();
    let mut jobs: tokio::task::JoinSet<Job> = tokio::task::JoinSet::new();
    let mut busy: HashSet<String> = HashSet::new();
    let mut end: Option<String> = None;
    let mut idle_since = Instant::now();
    loop {
        let Some(want) = spool.want() else {
            jobs.abort_all();
            return Ok(end); // the spool was removed: recovery is over
        };
        spool.prune(&spool.window(&want))?;
        for name in spool.missing(&want, &busy, end.as_deref()) {
            if busy.len() >= spool.depth.max(1) {
                break;
            }
            busy.insert(name.clone());
            let (repo, source, catalog, opts) =
                (repo.clone(), source.clone(), catalog.clone(), opts.clone());
            jobs.spawn(async move {
                let r = rebuild_file(&repo, &source, Some(&catalog), &name, &opts).await;
                (name, r)
            });
        }
        if jobs.is_empty() {
            if idle_since.elapsed() >= linger {
                return Ok(end);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        idle_since = Instant::now();
        let joined = tokio::time::timeout(Duration::from_millis(50), jobs.join_next()).await;
        let Ok(Some(joined)) = joined else { continue };
        let (name, result) = joined.map_err(|e| anyhow!("prefetch task: {e}"))?;
        busy.remove(&name);
        match result {
            Ok(Rebuilt::File {
                data,
                partial: false,
            }) => {
                match spool.store(&name, &data) {
                    Ok(true) => stats.stored += 1,
                    Ok(false) => stats.discarded += 1,
                    Err(_) if spool.want().is_none() => {
                        jobs.abort_all();
                        return Ok(end); // removed while storing
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(_) if loaded_at.elapsed() > Duration::from_secs(2) => {
                // Maybe archived since the catalog was loaded: look again.
                catalog = load().await?;
                loaded_at = Instant::now();
            }
            Ok(_) => {
                tracing::debug!("prefetch: {name} is not archived; stopping there");
                end = Some(end.map_or(name.clone(), |e| e.min(name)));
            }
            Err(e) => {
                // The foreground fetch reports it if PostgreSQL asks for it.
                tracing::warn!("prefetching {name}: {e:#}");
                end = Some(end.map_or(name.clone(), |e| e.min(name)));
            }
        }
    }
}

#[cfg(test)]
#[path = "prefetch_tests.rs"]
mod tests;
