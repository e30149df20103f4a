//! A `pitr archive` process for end-to-end tests: started with its log in a
//! file, stopped with SIGTERM (which must exit 0) or SIGKILL, and killed on
//! drop, printing its log when the test panicked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::pitr_bin;
use crate::signal::{send, Signal};

/// A running `pitr archive`.
pub struct Archiver {
    child: Child,
    log: PathBuf,
}

impl Archiver {
    /// `pitr archive URL --repo REPO --name NAME --flush-interval 200ms -v`
    /// plus `extra` arguments; stderr goes to a file in `log_dir`.
    pub fn start(url: &str, repo: &Path, name: &str, log_dir: &Path, extra: &[&str]) -> Archiver {
        static N: AtomicUsize = AtomicUsize::new(0);
        let log = log_dir.join(format!(
            "pitr-archive-{}-{}.log",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let out = fs::File::create(&log).unwrap();
        let child = Command::new(pitr_bin())
            .args(["archive", url, "--repo"])
            .arg(repo)
            .args(["--name", name, "--flush-interval", "200ms", "-v"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("spawning pitr archive");
        Archiver { child, log }
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM; the exit status must be 0. Returns the log.
    /// The archiver's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn terminate(mut self) -> String {
        send(self.child.id(), Signal::Term);
        let status = wait_child(&mut self.child, Duration::from_secs(60));
        let log = self.log();
        assert!(
            status.success(),
            "pitr archive exited with {status:?} after SIGTERM:\n{log}"
        );
        log
    }

    /// SIGKILL: no chance to flush.
    pub fn kill(mut self) {
        send(self.child.id(), Signal::Kill);
        let _ = self.child.wait();
    }
}

impl Drop for Archiver {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- pitr archive log ----\n{}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for `child` to exit; kills it and panics after `timeout`.
pub fn wait_child(child: &mut Child, timeout: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            panic!("process did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `f` every 100 ms until it is true; panics after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}
