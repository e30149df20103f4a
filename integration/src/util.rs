//! Plumbing shared by the server handles: free loopback ports, per-server temp dirs that
//! survive a failed test, OS-user lookup, child processes stopped by pid, and polling with
//! a deadline.
//!
//! Ports: a port is taken by binding `127.0.0.1:0` (the kernel picks a free one) and is
//! then recorded in a process-wide set, so two tests running in parallel threads are never
//! handed the same port between the probe and the server's own bind.

use std::collections::HashSet;
use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::signal::{self, Signal};

fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// A free TCP port on 127.0.0.1 that no other caller in this process has been given.
pub fn free_port() -> Result<u16> {
    for _ in 0..200 {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
        let port = listener.local_addr().context("local_addr")?.port();
        drop(listener);
        let mut set = handed_out()
            .lock()
            .map_err(|_| anyhow!("port set poisoned"))?;
        if set.insert(port) {
            return Ok(port);
        }
    }
    bail!("no free loopback port found after 200 attempts")
}

/// How often a server start is retried on a fresh port when its port was taken.
pub(crate) const PORT_ATTEMPTS: usize = 3;

/// A small number unique within this process (server ids, name suffixes).
pub fn next_serial() -> u32 {
    static SERIAL: AtomicU32 = AtomicU32::new(1);
    SERIAL.fetch_add(1, Ordering::Relaxed)
}

/// True when this process runs with effective uid 0.
pub fn is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// uid and gid of `user` according to `passwd` (normally /etc/passwd).
pub fn lookup_user(passwd: &Path, user: &str) -> Option<(u32, u32)> {
    let text = fs::read_to_string(passwd).ok()?;
    text.lines().find_map(|line| {
        let mut f = line.split(':');
        if f.next()? != user {
            return None;
        }
        let _password = f.next()?;
        let uid = f.next()?.parse().ok()?;
        let gid = f.next()?.parse().ok()?;
        Some((uid, gid))
    })
}

/// Changes the owner of `path` and everything below it.
pub fn chown_recursive(path: &Path, owner: (u32, u32)) -> Result<()> {
    std::os::unix::fs::chown(path, Some(owner.0), Some(owner.1))
        .with_context(|| format!("chown {}", path.display()))?;
    let meta = fs::symlink_metadata(path).with_context(|| format!("stat {}", path.display()))?;
    if meta.is_dir() {
        for entry in fs::read_dir(path).with_context(|| format!("read_dir {}", path.display()))? {
            chown_recursive(&entry?.path(), owner)?;
        }
    }
    Ok(())
}

/// Makes `cmd` run as the given OS user (no-op when `owner` is None).
pub fn run_as(cmd: &mut Command, owner: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = owner {
        // std drops the supplementary groups when switching uid as root.
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// Runs `cmd` to completion; Ok(stdout) on exit status 0, otherwise an error carrying the
/// command line, the exit status and stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Polls `ready` every 50 ms until it returns Ok(true) or `timeout` passes. An error from
/// `ready` (e.g. the server process exited) ends the wait at once.
pub fn wait_until<F>(what: &str, timeout: Duration, mut ready: F) -> Result<()>
where
    F: FnMut() -> Result<bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if ready().with_context(|| format!("waiting for {what}"))? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        sleep(Duration::from_millis(50));
    }
}

/// A per-server temp dir. Removed on drop, except while the thread is panicking (a failed
/// test): then it is kept and its path and the server log are printed to stderr.
#[derive(Debug)]
pub(crate) struct ServerDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    log: PathBuf,
}

impl ServerDir {
    /// Creates `<parent>/pitr-<kind>-XXXX` (parent: the system temp dir when None), owned
    /// by `owner` when given. `log_name` is the server log file inside it.
    pub fn new(
        kind: &str,
        parent: Option<&Path>,
        owner: Option<(u32, u32)>,
        log_name: &str,
    ) -> Result<ServerDir> {
        let prefix = format!("pitr-{kind}-");
        let mut b = tempfile::Builder::new();
        b.prefix(&prefix);
        let dir = match parent {
            Some(p) => b.tempdir_in(p),
            None => b.tempdir(),
        }
        .with_context(|| format!("creating a temp dir for {kind}"))?;
        let path = dir.path().to_path_buf();
        if let Some(owner) = owner {
            chown_recursive(&path, owner)?;
        }
        let log = path.join(log_name);
        Ok(ServerDir {
            dir: Some(dir),
            path,
            log,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Opens the server log for appending (for a child's stdout and stderr).
    pub fn log_stdio(&self) -> Result<(Stdio, Stdio)> {
        let f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let g = f.try_clone().context("dup log fd")?;
        Ok((Stdio::from(f), Stdio::from(g)))
    }

    /// Current size of the server log (to look at one start attempt's output later).
    pub fn log_len(&self) -> u64 {
        fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }

    /// True when the log written since `offset` says the port was taken: another process
    /// bound it between our probe and the server's own bind.
    pub fn port_taken_since(&self, offset: u64) -> bool {
        let text = fs::read(&self.log).unwrap_or_default();
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(text.len());
        String::from_utf8_lossy(&text[start..]).contains("Address already in use")
    }

    /// The last `n` lines of the server log (for error messages).
    pub fn log_tail(&self, n: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for ServerDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!(
                    "pitr-integration: test failed; kept {} (server log: {})",
                    kept.display(),
                    self.log.display()
                );
            }
        }
    }
}

/// A server child process, stopped by pid when dropped.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    child: Child,
    graceful: Signal,
    grace: Duration,
    name: String,
}

impl ServerProcess {
    /// Spawns `cmd` with stdout/stderr appended to `dir`'s log. `graceful` is the signal
    /// that asks this server for a clean, quick shutdown.
    pub fn spawn(name: &str, cmd: &mut Command, dir: &ServerDir, graceful: Signal) -> Result<Self> {
        let (out, err) = dir.log_stdio()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(ServerProcess {
            child,
            graceful,
            grace: Duration::from_secs(20),
            name: name.to_string(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Ok(None) while running, Ok(Some(description)) once it has exited.
    pub fn exited(&mut self) -> Result<Option<String>> {
        Ok(self
            .child
            .try_wait()
            .with_context(|| format!("waiting for {}", self.name))?
            .map(|s| s.to_string()))
    }

    /// Fails when the process has already exited (used while waiting for readiness).
    pub fn ensure_running(&mut self) -> Result<()> {
        match self.exited()? {
            None => Ok(()),
            Some(status) => bail!("{} exited during startup ({status})", self.name),
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return true,
                Ok(None) => {}
            }
            if Instant::now() >= deadline {
                return false;
            }
            sleep(Duration::from_millis(20));
        }
    }

    /// Graceful signal, then the harsher ones; returns once the process is reaped.
    pub fn stop(&mut self) -> Result<()> {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return Ok(());
        }
        let pid = self.pid();
        for (sig, wait) in [
            (self.graceful, self.grace),
            (Signal::Quit, Duration::from_secs(5)),
            (Signal::Kill, Duration::from_secs(5)),
        ] {
            if !signal::send(pid, sig) {
                // Already gone: reap it.
                let _ = self.child.try_wait();
                return Ok(());
            }
            if self.wait_exit(wait) {
                return Ok(());
            }
        }
        bail!("{} (pid {pid}) did not exit after SIGKILL", self.name)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("pitr-integration: {e:#}");
        }
    }
}

/// Appends a line to a file (used for the skip log).
pub fn append_line(path: &Path, line: &str) -> Result<()> {
    use std::io::Write;
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).ok();
    }
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    // One write call per line: O_APPEND keeps concurrent writers' lines whole.
    f.write_all(format!("{line}\n").as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// True when `path` is an executable regular file.
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Percent-encodes a URL userinfo component.
pub fn encode_userinfo(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_bindable() {
        let ports: Vec<u16> = (0..64).map(|_| free_port().unwrap()).collect();
        let set: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(set.len(), ports.len());
        // Free when handed out; any other process on the machine may take
        // one of them since, so most, not all, must still be bindable.
        let bindable = ports
            .iter()
            .take(8)
            .filter(|p| TcpListener::bind(("127.0.0.1", **p)).is_ok())
            .count();
        assert!(bindable >= 6, "only {bindable} of 8 ports were still free");
    }

    #[test]
    fn wait_until_polls_until_ready_and_stops_on_error() {
        let mut n = 0;
        wait_until("three polls", Duration::from_secs(5), || {
            n += 1;
            Ok(n == 3)
        })
        .unwrap();
        assert_eq!(n, 3);

        let t = Instant::now();
        let err =
            wait_until("a dead server", Duration::from_secs(30), || bail!("exited")).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(format!("{err:#}").contains("exited"), "{err:#}");

        let err = wait_until("never", Duration::from_millis(200), || Ok(false)).unwrap_err();
        assert!(err.to_string().contains("timed out"), "{err}");
    }

    #[test]
    fn lookup_user_reads_passwd_format() {
        let dir = tempfile::tempdir().unwrap();
        let passwd = dir.path().join("passwd");
        fs::write(
            &passwd,
            "root:x:0:0:root:/root:/bin/bash\npostgres:x:101:104::/var/lib/postgresql:/bin/bash\n",
        )
        .unwrap();
        assert_eq!(lookup_user(&passwd, "postgres"), Some((101, 104)));
        assert_eq!(lookup_user(&passwd, "root"), Some((0, 0)));
        assert_eq!(lookup_user(&passwd, "post"), None);
        assert_eq!(lookup_user(&dir.path().join("missing"), "root"), None);
    }

    #[test]
    fn server_dir_is_removed_on_success_and_kept_on_panic() {
        let d = ServerDir::new("unit", None, None, "x.log").unwrap();
        let ok_path = d.path().to_path_buf();
        assert!(ok_path.is_dir());
        drop(d);
        assert!(!ok_path.exists());

        let kept = std::thread::spawn(|| {
            let d = ServerDir::new("unit", None, None, "x.log").unwrap();
            let path = d.path().to_path_buf();
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                let _d = d;
                panic!("simulated test failure");
            }));
            assert!(r.is_err());
            path
        })
        .join()
        .unwrap();
        assert!(kept.is_dir(), "temp dir of a failed test was removed");
        fs::remove_dir_all(&kept).unwrap();
    }

    #[test]
    fn stop_escalates_when_the_graceful_signal_is_ignored() {
        let dir = ServerDir::new("unit", None, None, "x.log").unwrap();
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "trap '' TERM; echo started; while :; do sleep 0.05; done",
        ]);
        let mut p = ServerProcess::spawn("stubborn", &mut cmd, &dir, Signal::Term).unwrap();
        p.grace = Duration::from_millis(300);
        wait_until("the shell to start", Duration::from_secs(5), || {
            Ok(fs::read_to_string(dir.log())
                .unwrap_or_default()
                .contains("started"))
        })
        .unwrap();
        let pid = p.pid();
        let t = Instant::now();
        p.stop().unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "SIGTERM should have been ignored"
        );
        assert!(p.exited().unwrap().is_some());
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn port_taken_is_detected_only_in_new_log_output() {
        let dir = ServerDir::new("unit", None, None, "x.log").unwrap();
        append_line(dir.log(), "bind: Address already in use").unwrap();
        assert!(dir.port_taken_since(0));
        let offset = dir.log_len();
        assert!(!dir.port_taken_since(offset));
        append_line(dir.log(), "ready").unwrap();
        assert!(!dir.port_taken_since(offset));
        assert!(dir.log_tail(1) == "ready");
    }

    #[test]
    fn userinfo_is_percent_encoded() {
        assert_eq!(encode_userinfo("pitr"), "pitr");
        assert_eq!(encode_userinfo("p@ss:w/rd"), "p%40ss%3Aw%2Frd");
    }
}
