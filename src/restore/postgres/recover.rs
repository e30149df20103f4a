//! `pitr restore --recover` for PostgreSQL: starts the restored cluster
//! with local binaries, follows recovery over a normal SQL connection, and
//! checks what it reached against the plan.
//!
//! The server is started with `pg_ctl` (as `--owner` when running as root)
//! on a unix socket in the data directory only (`listen_addresses = ''`), a
//! private port number, `lc_messages = C`, and an `hba_file` of its own
//! (`pitr-recover-hba.conf` in the data directory: `local all all trust`;
//! the socket directory is the data directory, mode 0700, so only its owner
//! and root can reach it). The restored `pg_hba.conf` is not used and not
//! changed.
//!
//! Every second the server is polled with
//! `pg_is_in_recovery()`, `pg_last_wal_replay_lsn()` and
//! `pg_last_xact_replay_timestamp()` (one progress line every few seconds);
//! a server process that is gone is a failed recovery (PostgreSQL refuses to
//! promote short of a time, LSN or name target). Once promoted, the reached
//! position is compared with the plan: a `--latest` restore must have
//! replayed the newest commit the catalog held when it planned; an LSN
//! target must be reached; a time target must not be passed. Nothing here
//! reads the server log, which is only shown to the user when recovery
//! fails. `--recover-timeout` bounds the whole wait: on timeout the server
//! is stopped and the restore fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use chrono::{DateTime, Utc};
use pitr_postgres::conn::{Connection, StartupMode};
use pitr_postgres::conninfo::{Config, Host};
use pitr_postgres::lsn::Lsn;
use serde::Serialize;

use crate::restore::postgres::plan::{Plan, Target};
use crate::restore::time::utc_text;

/// How often a progress line is printed while recovery runs.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// What recovery reached, read from the server.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RecoveryResult {
    /// `pg_last_wal_replay_lsn()` after recovery.
    pub replay_lsn: Option<String>,
    /// `pg_last_xact_replay_timestamp()` after recovery (UTC).
    pub last_commit_time: Option<DateTime<Utc>>,
    /// Timeline of the promoted cluster.
    pub timeline: Option<u32>,
    /// Server log of the recovery run.
    pub log: PathBuf,
}

/// Settings of one recovery run.
#[derive(Debug, Clone)]
pub struct RecoverOptions {
    pub bin: PathBuf,
    /// Run PostgreSQL as this user (when running as root).
    pub as_user: Option<String>,
    pub timeout: Duration,
    pub wal_segment_size: u64,
}

fn run_cmd(cmd: Command, as_user: Option<&str>) -> anyhow::Result<std::process::Output> {
    let mut cmd = match as_user {
        Some(u) => {
            let mut c = Command::new("runuser");
            c.args(["-u", u, "--"])
                .arg(cmd.get_program())
                .args(cmd.get_args());
            c
        }
        None => cmd,
    };
    cmd.current_dir("/");
    Ok(cmd.output()?)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn sq(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Checks that `bin` holds binaries of the backup's major version.
fn check_version(dir: &Path, bin: &Path) -> anyhow::Result<()> {
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
    Ok(())
}

/// One poll of the server.
#[derive(Debug, Clone, Default)]
struct Poll {
    in_recovery: bool,
    replay_lsn: Option<Lsn>,
    replay_time: Option<DateTime<Utc>>,
}

const POLL_SQL: &str = "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn(), \
     (extract(epoch FROM pg_last_xact_replay_timestamp()) * 1000000)::bigint";

async fn poll(conn: &mut Connection) -> anyhow::Result<Poll> {
    let rows = conn.simple_query(POLL_SQL).await?;
    let row = rows
        .first()
        .ok_or_else(|| anyhow!("the server returned no row"))?;
    Ok(Poll {
        in_recovery: row.text(0) == Some("t"),
        replay_lsn: row.text(1).and_then(|s| s.parse().ok()),
        replay_time: row
            .text(2)
            .and_then(|s| s.parse::<i64>().ok())
            .and_then(DateTime::from_timestamp_micros),
    })
}

/// The pid in `postmaster.pid`, when the file exists.
fn postmaster_pid(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(dir.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(8).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// Why no connection could be made.
struct ConnectError {
    error: anyhow::Error,
    /// The server answered, but knows none of the roles (or databases) tried.
    definite: bool,
}

/// Connects as the first of `users` the server knows.
async fn connect(
    socket_dir: &Path,
    port: u16,
    users: &[String],
) -> Result<Connection, ConnectError> {
    let mut last = None;
    let mut definite = true;
    for u in users {
        for db in ["postgres", "template1"] {
            let cfg = Config {
                host: Host::Unix(socket_dir.to_path_buf()),
                port,
                user: u.clone(),
                password: None,
                dbname: Some(db.into()),
                sslmode: pitr_postgres::conninfo::SslMode::Disable,
                sslrootcert: None,
                sslcert: None,
                sslkey: None,
                application_name: Some("pitr-restore".into()),
                connect_timeout: Duration::from_secs(5),
                passfile: None,
                require_auth: None,
                // The server pitr just started, over its own unix socket.
                channel_binding: pitr_postgres::ChannelBindingMode::Disable,
            };
            match Connection::connect(&cfg, StartupMode::Normal).await {
                Ok(c) => return Ok(c),
                Err(e) => {
                    // 28000: no such role; 3D000: no such database.
                    definite &= matches!(e.code(), Some("28000" | "3D000"));
                    last = Some(e);
                }
            }
        }
    }
    Err(ConnectError {
        error: last.map_or_else(|| anyhow!("no user to connect as"), anyhow::Error::from),
        definite,
    })
}

/// Runs recovery in `dir` and stops the server; fails when recovery
/// failed, timed out, or stopped short of the plan.
pub async fn run_recovery(
    dir: &Path,
    plan: &Plan,
    target: &Target,
    opts: &RecoverOptions,
) -> anyhow::Result<RecoveryResult> {
    check_version(dir, &opts.bin)?;
    let log = dir.join("pitr-recovery.log");
    let hba = dir.join("pitr-recover-hba.conf");
    std::fs::write(
        &hba,
        "# written by pitr restore --recover; removed after it\nlocal all all trust\n",
    )?;
    let port = free_port()?;
    let server_opts = format!(
        "-p {port} -c listen_addresses='' -c unix_socket_directories={} -c hba_file={} \
         -c lc_messages=C -c archive_mode=off -c hot_standby=on -c timezone=UTC \
         -c log_timezone=UTC -c logging_collector=off",
        sq(&dir.to_string_lossy()),
        sq(&hba.to_string_lossy())
    );
    let pg_ctl = opts.bin.join("pg_ctl");
    let mut start = Command::new(&pg_ctl);
    start
        .arg("-D")
        .arg(dir)
        .arg("-l")
        .arg(&log)
        .arg("-o")
        .arg(&server_opts)
        .args(["-W", "start"]);
    let o = run_cmd(start, opts.as_user.as_deref())?;
    if !o.status.success() {
        let _ = std::fs::remove_file(&hba);
        bail!(
            "pg_ctl start failed: {}{}",
            String::from_utf8_lossy(&o.stdout).trim(),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    let result = follow(dir, plan, target, opts, port, &log).await;
    // A server stopped right after `pg_ctl start` may not have written its
    // pid file yet; `pg_ctl stop` needs it.
    let t = Instant::now();
    while postmaster_pid(dir).is_none() && t.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut stop = Command::new(&pg_ctl);
    stop.arg("-D").arg(dir).args(["-m", "fast", "-w", "stop"]);
    let stopped = run_cmd(stop, opts.as_user.as_deref());
    let _ = std::fs::remove_file(&hba);
    let r = result?;
    match stopped {
        Ok(o) if o.status.success() => Ok(r),
        Ok(o) => bail!(
            "recovery finished but pg_ctl stop failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => Err(e),
    }
}

/// Polls the server until it promoted; checks the result against the plan.
async fn follow(
    dir: &Path,
    plan: &Plan,
    target: &Target,
    opts: &RecoverOptions,
    port: u16,
    log: &Path,
) -> anyhow::Result<RecoveryResult> {
    let started = Instant::now();
    let deadline = started + opts.timeout;
    let mut users: Vec<String> = opts.as_user.iter().cloned().collect();
    if let Ok(u) = std::env::var("USER") {
        users.push(u);
    }
    users.push("postgres".into());
    users.dedup();
    let wal_from: Lsn = plan.wal_from.parse().unwrap_or(Lsn(0));
    let wal_to: Lsn = plan.wal_to.parse().unwrap_or(Lsn(0));
    let seg = opts.wal_segment_size.max(1);
    let files_total = (wal_to.0.saturating_sub(wal_from.0)).div_ceil(seg).max(1);
    let mut conn: Option<Connection> = None;
    let mut seen_pid = false;
    let mut last_progress = Instant::now();
    let mut last = Poll::default();
    loop {
        if Instant::now() >= deadline {
            bail!(
                "recovery did not finish within {} (--recover-timeout; replayed up to {}); the server was stopped: restore again with a longer --recover-timeout",
                humantime::format_duration(opts.timeout),
                last.replay_lsn.map_or("nothing yet".into(), |l| l.to_string())
            );
        }
        match postmaster_pid(dir) {
            Some(pid) if Path::new(&format!("/proc/{pid}")).exists() => seen_pid = true,
            _ if seen_pid || started.elapsed() > Duration::from_secs(30) => bail!(
                "recovery failed: the server stopped before it finished; last lines of its log ({}):\n{}",
                log.display(),
                log_tail(log)
            ),
            _ => {}
        }
        if conn.is_none() {
            match connect(dir, port, &users).await {
                Ok(c) => conn = Some(c),
                Err(e) if e.definite => bail!(
                    "recovery is running but pitr cannot connect to the server to follow it (roles tried: {}): {}; pass --owner the name of the cluster's superuser",
                    users.join(", "),
                    e.error
                ),
                Err(_) => {}
            }
        }
        if let Some(c) = conn.as_mut() {
            match poll(c).await {
                Ok(p) => {
                    last = p;
                    if !last.in_recovery {
                        break;
                    }
                }
                Err(_) => conn = None,
            }
        }
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            eprintln!(
                "{}",
                progress_line(&last, wal_from, files_total, seg, started)
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let timeline = match conn.as_mut() {
        Some(c) => c
            .simple_query("SELECT timeline_id FROM pg_control_checkpoint()")
            .await
            .ok()
            .and_then(|rows| rows.first()?.text(0)?.parse().ok()),
        None => None,
    };
    if let Some(c) = conn {
        let _ = c.close().await;
    }
    check_reached(plan, target, &last)?;
    Ok(RecoveryResult {
        replay_lsn: last.replay_lsn.map(|l| l.to_string()),
        last_commit_time: last.replay_time,
        timeline,
        log: log.to_path_buf(),
    })
}

fn progress_line(p: &Poll, wal_from: Lsn, files_total: u64, seg: u64, started: Instant) -> String {
    match p.replay_lsn {
        Some(l) => format!(
            "recovering: replayed up to {l} (WAL file {} of {files_total} fetched), last replayed commit {}, {}s",
            (l.0.saturating_sub(wal_from.0) / seg + 1).min(files_total),
            p.replay_time.map_or("(none yet)".into(), utc_text),
            started.elapsed().as_secs()
        ),
        None => format!(
            "recovering: the server is not accepting connections yet (reaching a consistent state), {}s",
            started.elapsed().as_secs()
        ),
    }
}

/// Compares what recovery reached with the plan.
fn check_reached(plan: &Plan, target: &Target, p: &Poll) -> anyhow::Result<()> {
    match target {
        Target::Latest => {
            if let Some(newest) = plan.window_end.filter(|w| *w > plan.backup_stop_time) {
                if p.replay_time.is_none_or(|t| t < newest) {
                    bail!(
                        "recovery ended short of the plan: the newest commit archived when the restore planned was at {} but the last replayed commit is at {}; the restored directory is incomplete: restore again",
                        utc_text(newest),
                        p.replay_time.map_or("(none)".into(), utc_text)
                    );
                }
            }
        }
        Target::Lsn(x) => {
            if p.replay_lsn.is_none_or(|l| l < *x) {
                bail!(
                    "recovery ended short of the target LSN {x}: replayed up to {}; the restored directory is incomplete: restore again",
                    p.replay_lsn.map_or("nothing".into(), |l| l.to_string())
                );
            }
        }
        Target::Time(t) => {
            if let Some(r) = p.replay_time.filter(|r| r > t) {
                bail!(
                    "recovery replayed a commit at {}, after the target {}; the restored directory is wrong: restore again",
                    utc_text(r),
                    utc_text(*t)
                );
            }
        }
        Target::Name(_) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            source: "pg".into(),
            target: String::new(),
            backup_dir: String::new(),
            backup_id: String::new(),
            backup_start_lsn: String::new(),
            backup_stop_lsn: String::new(),
            backup_stop_time: DateTime::from_timestamp(100, 0).unwrap(),
            timeline: 1,
            wal_from: "0/2000000".into(),
            wal_to: "0/4000000".into(),
            segments: vec![],
            window_start: None,
            window_end: DateTime::from_timestamp(200, 0),
        }
    }

    #[test]
    fn short_latest_and_lsn_restores_are_refused() {
        let p = plan();
        let at = |s: i64, lsn: u64| Poll {
            in_recovery: false,
            replay_lsn: Some(Lsn(lsn)),
            replay_time: DateTime::from_timestamp(s, 0),
        };
        assert!(check_reached(&p, &Target::Latest, &at(200, 1)).is_ok());
        assert!(check_reached(&p, &Target::Latest, &at(199, 1)).is_err());
        assert!(check_reached(&p, &Target::Latest, &Poll::default()).is_err());
        assert!(check_reached(&p, &Target::Lsn(Lsn(50)), &at(0, 50)).is_ok());
        assert!(check_reached(&p, &Target::Lsn(Lsn(50)), &at(0, 49)).is_err());
        let t = DateTime::from_timestamp(150, 0).unwrap();
        assert!(check_reached(&p, &Target::Time(t), &at(150, 1)).is_ok());
        assert!(check_reached(&p, &Target::Time(t), &at(151, 1)).is_err());
    }
}
