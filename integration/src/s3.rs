//! Throwaway S3-compatible servers: moto (Python S3 emulator, in the venv made by
//! `scripts/setup`) and s3s-fs (file-backed S3 server written in Rust). Both enforce
//! conditional puts (`If-None-Match: *` → 412), which the archive relies on.
//!
//! Each server listens on 127.0.0.1 on a free port (plain HTTP, path-style addressing) with
//! one bucket already created. moto accepts any credentials; s3s-fs checks SigV4 against the
//! access/secret key it was started with.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::signal::Signal;
use crate::util::{self, ServerDir, ServerProcess};

const START_TIMEOUT: Duration = Duration::from_secs(60);
const BUCKET: &str = "pitr-test";
const ACCESS_KEY: &str = "pitrtestkey";
const SECRET_KEY: &str = "pitrtestsecret";
const REGION: &str = "us-east-1";

/// Which S3 implementation to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum S3Impl {
    /// moto_server (Python).
    Moto,
    /// s3s-fs (Rust, file-backed).
    S3sFs,
}

impl S3Impl {
    fn name(self) -> &'static str {
        match self {
            S3Impl::Moto => "moto",
            S3Impl::S3sFs => "s3s-fs",
        }
    }

    /// The server executable: `<deps>/moto/bin/moto_server` or `<deps>/s3s-fs/bin/s3s-fs`
    /// (env `PITR_MOTO_SERVER` / `PITR_S3S_FS` override).
    pub fn program(self) -> PathBuf {
        match self {
            S3Impl::Moto => std::env::var_os("PITR_MOTO_SERVER")
                .map(PathBuf::from)
                .unwrap_or_else(|| crate::deps_dir().join("moto/bin/moto_server")),
            S3Impl::S3sFs => std::env::var_os("PITR_S3S_FS")
                .map(PathBuf::from)
                .unwrap_or_else(|| crate::deps_dir().join("s3s-fs/bin/s3s-fs")),
        }
    }
}

/// Ok when `i` is installed here, Err(reason) otherwise.
pub fn available(i: S3Impl) -> Result<(), String> {
    let prog = i.program();
    if util::is_executable(&prog) {
        Ok(())
    } else {
        Err(format!(
            "{} not installed ({} missing; run scripts/setup)",
            i.name(),
            prog.display()
        ))
    }
}

/// A running throwaway S3 server with one bucket.
#[derive(Debug)]
pub struct S3Server {
    imp: S3Impl,
    port: u16,
    process: Option<ServerProcess>,
    // Declared last: dropped after the process is stopped.
    dir: ServerDir,
}

impl S3Server {
    /// Starts the server and creates the bucket.
    pub fn start(i: S3Impl) -> Result<S3Server> {
        available(i).map_err(anyhow::Error::msg)?;
        let dir = ServerDir::new(i.name(), None, None, "server.log")?;
        let root = dir.path().join("root");
        if i == S3Impl::S3sFs {
            // s3s-fs serves every directory under its root as a bucket.
            fs::create_dir_all(root.join(BUCKET)).context("creating the bucket dir")?;
        }
        let mut server = S3Server {
            imp: i,
            port: 0,
            process: None,
            dir,
        };
        let mut attempt = 1;
        loop {
            server.port = util::free_port()?;
            let offset = server.dir.log_len();
            match server.spawn(&root) {
                Ok(()) => break,
                Err(_) if attempt < util::PORT_ATTEMPTS && server.dir.port_taken_since(offset) => {
                    server.stop().ok();
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
        if i == S3Impl::Moto {
            // moto does not check signatures: a plain path-style PUT creates the bucket.
            let (status, body) = http(server.port, "PUT", &format!("/{BUCKET}"), &[])?;
            if status != 200 {
                bail!("creating bucket on moto: HTTP {status}: {body}");
            }
        }
        Ok(server)
    }

    fn spawn(&mut self, root: &Path) -> Result<()> {
        let i = self.imp;
        let port = self.port.to_string();
        let mut cmd = Command::new(i.program());
        match i {
            S3Impl::Moto => {
                cmd.args(["-H", "127.0.0.1", "-p", &port]);
            }
            S3Impl::S3sFs => {
                cmd.args(["--host", "127.0.0.1", "--port", &port])
                    .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                    .arg(root);
            }
        }
        cmd.env("RUST_LOG", "warn").env("PYTHONUNBUFFERED", "1");
        let mut process = ServerProcess::spawn(i.name(), &mut cmd, &self.dir, Signal::Term)?;
        let ready = util::wait_until(
            &format!("{} to answer HTTP", i.name()),
            START_TIMEOUT,
            || {
                process.ensure_running()?;
                Ok(http(self.port, "GET", "/", &[]).is_ok())
            },
        );
        self.process = Some(process);
        ready.with_context(|| format!("server log:\n{}", self.dir.log_tail(20)))
    }

    /// Which implementation this is.
    pub fn implementation(&self) -> S3Impl {
        self.imp
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The bucket created at start.
    pub fn bucket(&self) -> &str {
        BUCKET
    }

    pub fn access_key(&self) -> &str {
        ACCESS_KEY
    }

    pub fn secret_key(&self) -> &str {
        SECRET_KEY
    }

    /// The region to sign requests for.
    pub fn region(&self) -> &str {
        REGION
    }

    /// Environment for a process that should use this server: `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP=true`.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// `s3://BUCKET/prefix`.
    pub fn repo_url(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{}", prefix.trim_start_matches('/'))
    }

    /// The server log file.
    pub fn log_path(&self) -> &Path {
        self.dir.log()
    }

    /// Stops the server. Idempotent.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut p) = self.process.take() {
            p.stop()?;
        }
        Ok(())
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("pitr-integration: stopping {}: {e:#}", self.imp.name());
        }
    }
}

/// A minimal unsigned HTTP/1.1 request to 127.0.0.1:`port`; returns (status, body).
fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).context("connecting")?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .context("set_read_timeout")?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).context("sending request")?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).context("reading response")?;
    let text = String::from_utf8_lossy(&resp);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .with_context(|| format!("malformed HTTP response: {:?}", text.lines().next()))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
