//! Executes a PostgreSQL restore plan: verifies the WAL chain, unpacks the
//! base backup into the target directory, configures recovery, and
//! optionally runs it with local PostgreSQL binaries.
//!
//! Unpacking streams each archive's parts (sha256-checked) through a zstd
//! decoder into a tar extractor on a blocking thread, with at most two parts
//! in memory. `base.tar` goes to the directory, `<oid>.tar` to
//! `pg_tblspc/<oid>` (an in-place tablespace; `tablespace_map` is removed).
//!
//! Recovery configuration (appended to `postgresql.auto.conf`, plus an empty
//! `recovery.signal`): `restore_command` running this binary's `wal-fetch`,
//! `recovery_target_*`, `recovery_target_inclusive = on` (every transaction
//! committed at or before the target, none after),
//! `recovery_target_timeline` and `recovery_target_action = 'promote'`.
//! The `restore_command` also carries the plan's WAL ranges (and, when the
//! server is started by the user, the restore pin to renew): see
//! `restore::postgres::planned` and `cli::wal_fetch`. `--recover` itself runs in
//! `restore::postgres::recover`.

pub mod plan;
#[cfg(test)]
mod plan_tests;
pub mod planned;
pub mod recover;
pub mod run;
pub mod wal_fetch;

use std::io::{Read, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};

use crate::archive::keys::{BackupKey, SegmentKey};
use crate::archive::segment_read::read_segment;
use crate::backup::postgres::manifest::{ArchiveInfo, BackupManifest};
use crate::restore::postgres::plan::{Plan, Target};
use crate::restore::time::pg_timestamp;
use crate::storage::Repo;

/// Downloads and fully verifies every segment of the plan (frame CRCs and
/// whole-object checksum), so a damaged chain fails before anything runs.
pub async fn verify_chain(repo: &Repo, plan: &Plan, parallel: usize) -> anyhow::Result<()> {
    // Owned keys and repository handles: the future stays `Send` for any caller.
    stream::iter(plan.segments.iter().cloned().map(|key| {
        let repo = repo.clone();
        async move { verify_segment(&repo, &key).await }
    }))
    .buffer_unordered(parallel.max(1))
    .try_collect::<Vec<()>>()
    .await?;
    Ok(())
}

async fn verify_segment(repo: &Repo, key: &str) -> anyhow::Result<()> {
    let k = SegmentKey::parse(key)?;
    read_segment(repo, &k)
        .await
        .map_err(|e| anyhow!("{e}; restore refused"))?;
    Ok(())
}

/// Refuses a non-empty directory; creates it (mode 0700) if missing.
pub fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if dir.exists() {
        if std::fs::read_dir(dir)?.next().is_some() {
            bail!(
                "target directory {} is not empty; refusing to overwrite it",
                dir.display()
            );
        }
    } else {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

/// Removes everything inside `dir` (a failed restore leaves it empty).
pub fn empty_dir(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let path = e.path();
            let _ = if path.is_dir() && !path.is_symlink() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
    }
}

/// A `Read` over byte chunks arriving from an async task.
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<Bytes>,
    cur: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.recv() {
                Ok(b) => self.cur = b,
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

/// Hashes what passes through.
struct HashReader<R> {
    inner: R,
    sha: Sha256,
    n: u64,
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
}

/// Streams one archive's parts into `dest` (tar) or `file` (raw).
async fn unpack_archive(
    repo: &Repo,
    key: &BackupKey,
    a: &ArchiveInfo,
    dest: PathBuf,
    raw: bool,
) -> anyhow::Result<()> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Bytes>(2);
    let name = a.name.clone();
    let (want_size, want_sha) = (a.size, a.sha256.clone());
    let worker = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let decoder = zstd::stream::read::Decoder::new(ChannelReader {
            rx,
            cur: Bytes::new(),
        })?;
        let mut r = HashReader {
            inner: decoder,
            sha: Sha256::new(),
            n: 0,
        };
        if raw {
            let mut f = std::fs::File::create(&dest)?;
            std::io::copy(&mut r, &mut f)?;
            f.sync_all()?;
        } else {
            let mut ar = tar::Archive::new(&mut r);
            ar.set_preserve_permissions(true);
            ar.set_overwrite(false);
            ar.unpack(&dest)
                .with_context(|| format!("unpacking {name}"))?;
            std::io::copy(&mut r, &mut std::io::sink())?;
        }
        let sha = hex::encode(r.sha.finalize());
        if r.n != want_size || sha != want_sha {
            bail!("{name} of the backup does not match its manifest (size {} vs {want_size}, sha256 {sha} vs {want_sha})", r.n);
        }
        Ok(())
    });
    let mut send_err = None;
    for p in &a.parts {
        let k = key.part_key(&p.key)?;
        let data = repo.get(&k).await?;
        let sha = hex::encode(Sha256::digest(&data));
        if data.len() as u64 != p.size || sha != p.sha256 {
            send_err = Some(anyhow!(
                "backup part {k} is corrupt (sha256 {sha}, manifest says {}); restore refused",
                p.sha256
            ));
            break;
        }
        let data = match crate::crypto::open_object(repo, &k, data) {
            Ok(d) => d,
            Err(e) => {
                send_err = Some(e.into());
                break;
            }
        };
        let tx2 = tx.clone();
        if tokio::task::spawn_blocking(move || tx2.send(data))
            .await?
            .is_err()
        {
            break; // the extractor failed; its error is reported below
        }
    }
    drop(tx);
    let res = worker.await?;
    if let Some(e) = send_err {
        return Err(e);
    }
    res
}

/// Unpacks the backup of the plan into `dir` (which [`prepare_dir`] made).
pub async fn unpack_backup(
    repo: &Repo,
    key: &BackupKey,
    m: &BackupManifest,
    dir: &Path,
) -> anyhow::Result<()> {
    let mut tablespaces = false;
    for a in &m.archives {
        let dest = match a.tablespace_oid {
            None => dir.to_path_buf(),
            Some(oid) => {
                tablespaces = true;
                let d = dir.join("pg_tblspc").join(oid.to_string());
                std::fs::create_dir_all(&d)?;
                d
            }
        };
        unpack_archive(repo, key, a, dest, false).await?;
    }
    if let Some(bm) = &m.backup_manifest {
        unpack_archive(repo, key, bm, dir.join("backup_manifest"), true).await?;
    }
    if tablespaces {
        let map = dir.join("tablespace_map");
        if map.exists() {
            std::fs::remove_file(map)?;
        }
    }
    Ok(())
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn shell_quote(s: &str) -> String {
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-:=".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Settings appended to `postgresql.auto.conf`.
pub fn recovery_settings(
    pitr_exe: &Path,
    repo_url: &str,
    plan: &Plan,
    target: &Target,
    timeline: &str,
    extra_args: &[String],
) -> String {
    let mut cmd = format!(
        "{} wal-fetch --partial --repo {} --name {}",
        shell_quote(&pitr_exe.to_string_lossy()),
        shell_quote(repo_url),
        shell_quote(&plan.source)
    );
    for a in extra_args {
        cmd.push(' ');
        cmd.push_str(&shell_quote(a));
    }
    cmd.push_str(" %f %p");
    let mut s = String::from("\n# Added by pitr restore\n");
    s += &format!("restore_command = {}\n", quote(&cmd));
    match target {
        Target::Time(t) => s += &format!("recovery_target_time = {}\n", quote(&pg_timestamp(*t))),
        Target::Lsn(l) => s += &format!("recovery_target_lsn = {}\n", quote(&l.to_string())),
        Target::Name(n) => s += &format!("recovery_target_name = {}\n", quote(n)),
        Target::Latest => {}
    }
    if !matches!(target, Target::Latest) {
        s += "recovery_target_inclusive = on\n";
    }
    s += &format!("recovery_target_timeline = {}\n", quote(timeline));
    s += "recovery_target_action = 'promote'\n";
    s
}

/// Writes `recovery.signal` and appends `settings` to `postgresql.auto.conf`.
pub fn configure_recovery(dir: &Path, settings: &str) -> anyhow::Result<()> {
    // A backup taken from a standby carries its standby.signal: left in
    // place, PostgreSQL would stay a standby (following primary_conninfo)
    // instead of stopping at the target and promoting.
    let standby = dir.join("standby.signal");
    if standby.exists() {
        std::fs::remove_file(&standby)?;
        tracing::info!("removed standby.signal of the source standby from the restored directory");
    }
    std::fs::write(dir.join("recovery.signal"), b"")?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("postgresql.auto.conf"))?;
    f.write_all(settings.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// True when this process runs as root.
pub fn running_as_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// The name of the user with `uid` (from `/etc/passwd`).
pub fn user_name(uid: u32) -> anyhow::Result<String> {
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.get(2) == Some(&uid.to_string().as_str())).then(|| f[0].to_string())
        })
        .ok_or_else(|| anyhow!("no user with uid {uid}"))
}

/// Chowns `dir` (recursively) to `owner` (see `owner::resolve`).
pub fn fix_ownership(dir: &Path, owner: &crate::restore::owner::Owner) -> anyhow::Result<()> {
    chown_recursive(dir, owner.uid, owner.gid)
}

fn chown_recursive(p: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid))?;
    let m = std::fs::symlink_metadata(p)?;
    if m.is_dir() {
        for e in std::fs::read_dir(p)? {
            chown_recursive(&e?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Finds the PostgreSQL binaries: `--pg-bin`, else `postgres` on PATH, else `pg_config --bindir`.
pub fn find_bin_dir(pg_bin: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(d) = pg_bin {
        return Ok(d.to_path_buf());
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            if d.join("postgres").is_file() && d.join("pg_ctl").is_file() {
                return Ok(d);
            }
        }
    }
    let out = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .map_err(|_| anyhow!("no PostgreSQL binaries found: pass --pg-bin DIR"))?;
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_quote_everything() {
        let plan = Plan {
            source: "pg-1".into(),
            target: String::new(),
            backup_dir: String::new(),
            backup_id: String::new(),
            backup_start_lsn: String::new(),
            backup_stop_lsn: String::new(),
            backup_stop_time: chrono::DateTime::default(),
            timeline: 1,
            wal_from: String::new(),
            wal_to: String::new(),
            segments: vec![],
            window_start: None,
            window_end: None,
        };
        let s = recovery_settings(
            Path::new("/usr/bin/pitr"),
            "/srv/it's repo",
            &plan,
            &Target::Name("a'b".into()),
            "latest",
            &[],
        );
        assert!(s.contains("restore_command = '/usr/bin/pitr wal-fetch --partial --repo ''/srv/it''\\''''s repo'' --name pg-1 %f %p'"), "{s}");
        assert!(
            s.contains("recovery_target_name = 'a''b'\nrecovery_target_inclusive = on\n"),
            "{s}"
        );
        assert!(
            s.contains("recovery_target_timeline = 'latest'\nrecovery_target_action = 'promote'\n")
        );
        let s = recovery_settings(
            Path::new("/p"),
            "/r",
            &plan,
            &Target::Latest,
            "1",
            &["--plan-range".into(), "1:0/1-0/2".into()],
        );
        assert!(
            s.contains("--name pg-1 --plan-range 1:0/1-0/2 %f %p"),
            "{s}"
        );
        assert!(!s.contains("recovery_target_inclusive") && !s.contains("recovery_target_name"));
    }
}
