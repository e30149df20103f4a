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

use std::io::{Read, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};

use crate::archive::keys::{BackupKey, SegmentKey};
use crate::backup::manifest::{ArchiveInfo, BackupManifest};
use crate::restore::plan::{Plan, Target};
use crate::restore::time::pg_timestamp;
use crate::storage::Repo;

/// Downloads and fully verifies every segment of the plan (frame CRCs and
/// whole-object checksum), so a damaged chain fails before anything runs.
pub async fn verify_chain(repo: &Repo, plan: &Plan, parallel: usize) -> anyhow::Result<()> {
    stream::iter(plan.segments.iter().map(|key| async move {
        let k = SegmentKey::parse(key).map_err(|e| anyhow!("{e}"))?;
        let object = repo.get(key).await.map_err(|e| anyhow!("{e}"))?;
        let (meta, _) = tokio::task::spawn_blocking(move || pitr_segment::decode(&object))
            .await?
            .map_err(|e| {
                anyhow!("segment {key} is corrupt: {e}; restore refused (run `pitr verify`)")
            })?;
        if meta.header.start != k.start || meta.footer.end != k.end {
            bail!("segment {key} does not hold what its name says; restore refused");
        }
        Ok(())
    }))
    .buffer_unordered(parallel.max(1))
    .try_collect::<Vec<()>>()
    .await?;
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
        let k = key.part_key(&p.key).map_err(|e| anyhow!("{e}"))?;
        let data = repo.get(&k).await.map_err(|e| anyhow!("{e}"))?;
        let sha = hex::encode(Sha256::digest(&data));
        if data.len() as u64 != p.size || sha != p.sha256 {
            send_err = Some(anyhow!(
                "backup part {k} is corrupt (sha256 {sha}, manifest says {}); restore refused",
                p.sha256
            ));
            break;
        }
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
) -> String {
    let cmd = format!(
        "{} wal-fetch --partial --repo {} --name {} %f %p",
        shell_quote(&pitr_exe.to_string_lossy()),
        shell_quote(repo_url),
        shell_quote(&plan.source)
    );
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

/// (uid, gid, name) of `user` via `id`.
pub fn lookup_user(user: &str) -> anyhow::Result<(u32, u32)> {
    let id = |flag: &str| -> anyhow::Result<u32> {
        let out = Command::new("id").args([flag, user]).output()?;
        if !out.status.success() {
            bail!("unknown user {user:?}");
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    Ok((id("-u")?, id("-g")?))
}

fn user_name(uid: u32) -> anyhow::Result<String> {
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.get(2) == Some(&uid.to_string().as_str())).then(|| f[0].to_string())
        })
        .ok_or_else(|| anyhow!("no user with uid {uid}"))
}

/// When root: chowns `dir` to `owner` (or the owner of its parent); returns
/// the user name PostgreSQL must run as (`None` = the current user).
pub fn fix_ownership(dir: &Path, owner: Option<&str>) -> anyhow::Result<Option<String>> {
    if !running_as_root() {
        return Ok(None);
    }
    let (uid, gid, name) = match owner {
        Some(u) => {
            let (uid, gid) = lookup_user(u)?;
            (uid, gid, u.to_string())
        }
        None => {
            let parent = dir.parent().unwrap_or(Path::new("/"));
            let m = std::fs::metadata(parent)?;
            (m.uid(), m.gid(), user_name(m.uid())?)
        }
    };
    if uid == 0 {
        bail!("PostgreSQL cannot run as root: pass --owner USER (e.g. postgres) or restore under a directory owned by that user");
    }
    chown_recursive(dir, uid, gid)?;
    Ok(Some(name))
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

/// What recovery reached.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RecoveryResult {
    pub redo_done_at: Option<String>,
    pub last_commit_time: Option<String>,
    pub stopped_at: Option<String>,
    pub new_timeline: Option<u32>,
    pub log: PathBuf,
}

fn run_cmd(mut cmd: Command, as_user: Option<&str>) -> anyhow::Result<std::process::Output> {
    let cmd = match as_user {
        Some(u) => {
            let mut c = Command::new("runuser");
            c.args(["-u", u, "--"])
                .arg(cmd.get_program())
                .args(cmd.get_args());
            c
        }
        None => {
            cmd.current_dir("/");
            cmd
        }
    };
    let mut cmd = cmd;
    cmd.current_dir("/");
    Ok(cmd.output()?)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Runs recovery in `dir`, waits until it finished (promoted), then stops
/// the server cleanly.
pub fn run_recovery(
    dir: &Path,
    bin: &Path,
    as_user: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<RecoveryResult> {
    let version = std::fs::read_to_string(dir.join("PG_VERSION"))?
        .trim()
        .to_string();
    let out = Command::new(bin.join("postgres"))
        .arg("--version")
        .output()
        .with_context(|| format!("running {}", bin.join("postgres").display()))?;
    let have = String::from_utf8_lossy(&out.stdout).to_string();
    let have_major = have
        .split_whitespace()
        .last()
        .and_then(|v| v.split('.').next())
        .unwrap_or("");
    if have_major != version {
        bail!("the backup is PostgreSQL {version} but {} is {}: pass --pg-bin with version {version} binaries", bin.display(), have.trim());
    }
    let log = dir.join("pitr-recovery.log");
    let port = free_port()?;
    let opts = format!(
        "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c archive_mode=off -c hot_standby=on -c timezone=UTC -c log_timezone=UTC -c logging_collector=off",
        dir.display()
    );
    let pg_ctl = bin.join("pg_ctl");
    let mut start = Command::new(&pg_ctl);
    start
        .arg("-D")
        .arg(dir)
        .arg("-l")
        .arg(&log)
        .arg("-o")
        .arg(&opts)
        .args(["-W", "start"]);
    let o = run_cmd(start, as_user)?;
    if !o.status.success() {
        bail!(
            "pg_ctl start failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let deadline = Instant::now() + timeout;
    let result = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(l) = text
            .lines()
            .find(|l| l.contains("FATAL:") || l.contains("PANIC:"))
        {
            let tail: Vec<&str> = text.lines().rev().take(8).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            break Err(anyhow!(
                "recovery failed: {}\nlast log lines ({}):\n{}",
                l,
                log.display(),
                tail.join("\n")
            ));
        }
        if text
            .lines()
            .any(|l| l.contains("database system is ready to accept connections"))
        {
            break Ok(parse_log(&text, &log));
        }
        if Instant::now() > deadline {
            break Err(anyhow!(
                "recovery did not finish within {timeout:?}; see {}",
                log.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut stop = Command::new(&pg_ctl);
    stop.arg("-D").arg(dir).args(["-m", "fast", "-w", "stop"]);
    let o = run_cmd(stop, as_user)?;
    if !o.status.success() && result.is_ok() {
        bail!("pg_ctl stop failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    result
}

fn after<'a>(text: &'a str, marker: &str) -> Option<&'a str> {
    text.lines()
        .rev()
        .find_map(|l| l.split_once(marker).map(|(_, r)| r.trim()))
}

fn parse_log(text: &str, log: &Path) -> RecoveryResult {
    RecoveryResult {
        redo_done_at: after(text, "redo done at ")
            .and_then(|r| r.split_whitespace().next())
            .map(str::to_string),
        last_commit_time: after(text, "last completed transaction was at log time ")
            .map(str::to_string),
        stopped_at: after(text, "recovery stopping ").map(str::to_string),
        new_timeline: after(text, "selected new timeline ID: ")
            .and_then(|r| r.split_whitespace().next()?.parse().ok()),
        log: log.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_parsing() {
        let log = "2024-01-01 00:00:00.000 UTC [1] LOG:  recovery stopping before commit of transaction 745, time 2024-01-01 00:00:01.5+00\n\
            2024-01-01 00:00:00.000 UTC [1] LOG:  redo done at 0/3000148 system usage: CPU: user: 0.00 s\n\
            2024-01-01 00:00:00.000 UTC [1] LOG:  last completed transaction was at log time 2024-01-01 00:00:01.25+00\n\
            2024-01-01 00:00:00.000 UTC [1] LOG:  selected new timeline ID: 2\n";
        let r = parse_log(log, Path::new("x"));
        assert_eq!(r.redo_done_at.as_deref(), Some("0/3000148"));
        assert_eq!(
            r.last_commit_time.as_deref(),
            Some("2024-01-01 00:00:01.25+00")
        );
        assert_eq!(r.new_timeline, Some(2));
        assert!(r
            .stopped_at
            .unwrap()
            .starts_with("before commit of transaction 745"));
    }

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
        );
        assert!(s.contains("restore_command = '/usr/bin/pitr wal-fetch --partial --repo ''/srv/it''\\''''s repo'' --name pg-1 %f %p'"), "{s}");
        assert!(
            s.contains("recovery_target_name = 'a''b'\nrecovery_target_inclusive = on\n"),
            "{s}"
        );
        assert!(
            s.contains("recovery_target_timeline = 'latest'\nrecovery_target_action = 'promote'\n")
        );
        let s = recovery_settings(Path::new("/p"), "/r", &plan, &Target::Latest, "1");
        assert!(!s.contains("recovery_target_inclusive") && !s.contains("recovery_target_name"));
    }
}
