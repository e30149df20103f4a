//! Throwaway MySQL-protocol servers: MariaDB 10.11 (system packages) and Oracle MySQL 9.x
//! (a Debian sid chroot built by `scripts/setup`, run with `chroot`, so root is required).
//!
//! Both run with ROW binlogs in `<tmp>/binlog/` (base name `binlog`), GTIDs on (always on in
//! MariaDB; `gtid_mode=ON` + `enforce_gtid_consistency` on MySQL), CRC32 event checksums, a
//! server id unique within the test process, 127.0.0.1 on a free port and a unix socket in
//! the temp dir. Users created at start (TCP, any host): `pitr`/`pitrpass` with ALL
//! PRIVILEGES (incl. REPLICATION SLAVE/CLIENT) WITH GRANT OPTION, `noreplic`/`noreplpass`
//! with SELECT only. `root` (no password) is reachable only over the socket, which [`sql`]
//! uses.
//!
//! MySQL's tools live inside the chroot: [`MySqlServer::bin`] returns a small wrapper script
//! that runs the tool through `chroot` and rewrites host paths under the chroot (such as
//! [`MySqlServer::binlog_dir`]) to chroot paths. Relative paths do not work through it
//! (chroot changes the working directory to `/`): pass absolute ones.
//!
//! [`sql`]: MySqlServer::sql

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::signal::Signal;
use crate::util::{self, ServerDir, ServerProcess};

const START_TIMEOUT: Duration = Duration::from_secs(120);

/// Which server to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flavor {
    /// MariaDB 10.11 from the system packages.
    MariaDb,
    /// Oracle MySQL 9.x from the Debian sid chroot.
    MySql,
}

impl Flavor {
    fn name(self) -> &'static str {
        match self {
            Flavor::MariaDb => "MariaDB",
            Flavor::MySql => "MySQL",
        }
    }
}

/// Root of the MySQL chroot: env `PITR_MYSQL_ROOT`, default `<deps>/mysql-sid`.
pub fn mysql_chroot() -> PathBuf {
    std::env::var_os("PITR_MYSQL_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::deps_dir().join("mysql-sid"))
}

/// Ok when `f` is installed (and runnable by this process), Err(reason) otherwise.
pub fn available(f: Flavor) -> Result<(), String> {
    match f {
        Flavor::MariaDb => {
            for p in [
                "/usr/sbin/mariadbd",
                "/usr/bin/mariadb-install-db",
                "/usr/bin/mariadb",
            ] {
                if !util::is_executable(Path::new(p)) {
                    return Err(format!(
                        "MariaDB not installed ({p} missing; run scripts/setup)"
                    ));
                }
            }
            if util::is_root() && mysql_os_user().is_none() {
                return Err("running as root but OS user `mysql` does not exist".into());
            }
            Ok(())
        }
        Flavor::MySql => {
            let root = mysql_chroot();
            for p in ["usr/sbin/mysqld", "usr/bin/mysql"] {
                if !util::is_executable(&root.join(p)) {
                    return Err(format!(
                        "MySQL not installed ({} missing; run scripts/setup)",
                        root.join(p).display()
                    ));
                }
            }
            if !util::is_root() {
                return Err("MySQL runs in a chroot, which needs root".into());
            }
            Ok(())
        }
    }
}

fn mysql_os_user() -> Option<(u32, u32)> {
    util::lookup_user(Path::new("/etc/passwd"), "mysql")
}

/// A running throwaway MariaDB or MySQL server.
#[derive(Debug)]
pub struct MySqlServer {
    flavor: Flavor,
    port: u16,
    server_id: u32,
    /// Some(root) for MySQL: paths below are host paths, translated for the chroot.
    chroot: Option<PathBuf>,
    data_dir: PathBuf,
    binlog_dir: PathBuf,
    socket: PathBuf,
    process: Option<ServerProcess>,
    /// More server options (e.g. TLS settings).
    extra: Vec<String>,
    // Declared last: dropped after the process is stopped.
    dir: ServerDir,
}

impl MySqlServer {
    /// Initializes and starts a fresh server; returns once it accepts connections and the
    /// users exist.
    pub fn start(f: Flavor) -> Result<MySqlServer> {
        Self::start_with(f, &[])
    }

    /// As [`MySqlServer::start`], with more server options (`--name=value`;
    /// paths as the server sees them).
    pub fn start_with(f: Flavor, extra: &[String]) -> Result<MySqlServer> {
        available(f).map_err(anyhow::Error::msg)?;
        let (chroot, owner, parent) = match f {
            Flavor::MariaDb => (None, mysql_os_user().filter(|_| util::is_root()), None),
            Flavor::MySql => {
                let root = mysql_chroot();
                let tmp = root.join("tmp");
                (Some(root), None, Some(tmp))
            }
        };
        let kind = match f {
            Flavor::MariaDb => "mariadb",
            Flavor::MySql => "mysql",
        };
        let dir = ServerDir::new(kind, parent.as_deref(), owner, "server.log")?;
        let binlog_dir = dir.path().join("binlog");
        fs::create_dir(&binlog_dir).context("creating the binlog dir")?;
        if let Some(owner) = owner {
            util::chown_recursive(&binlog_dir, owner)?;
        }
        let server_id = (std::process::id() % 1_000_000) * 1000 + util::next_serial() % 1000;
        let mut server = MySqlServer {
            flavor: f,
            port: util::free_port()?,
            server_id: server_id.max(1),
            chroot,
            data_dir: dir.path().join("data"),
            binlog_dir,
            socket: dir.path().join("mysqld.sock"),
            process: None,
            extra: extra.to_vec(),
            dir,
        };
        server.initialize()?;
        server.spawn_retrying_port()?;
        server.create_users()?;
        Ok(server)
    }

    /// Starts the server; when another process took the port first, tries a fresh port.
    fn spawn_retrying_port(&mut self) -> Result<()> {
        let mut attempt = 1;
        loop {
            let offset = self.dir.log_len();
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(_) if attempt < util::PORT_ATTEMPTS && self.dir.port_taken_since(offset) => {
                    self.stop().ok();
                    self.port = util::free_port()?;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A host path as the server sees it (inside the chroot for MySQL).
    fn inner(&self, host: &Path) -> PathBuf {
        match &self.chroot {
            Some(root) => match host.strip_prefix(root) {
                Ok(rel) => Path::new("/").join(rel),
                Err(_) => host.to_path_buf(),
            },
            None => host.to_path_buf(),
        }
    }

    /// A command for a program of the server's installation (`prog` is an absolute path
    /// inside the installation, e.g. `/usr/sbin/mysqld`).
    fn command(&self, prog: &str) -> Command {
        match &self.chroot {
            Some(root) => {
                let mut c = Command::new("chroot");
                c.arg(root).arg(prog);
                c
            }
            None => Command::new(prog),
        }
    }

    fn initialize(&self) -> Result<()> {
        let datadir = format!("--datadir={}", self.inner(&self.data_dir).display());
        let mut cmd = match self.flavor {
            Flavor::MariaDb => {
                let mut c = self.command("/usr/bin/mariadb-install-db");
                c.arg("--no-defaults")
                    .arg(&datadir)
                    .arg("--user=mysql")
                    .arg("--auth-root-authentication-method=normal")
                    .arg("--skip-test-db");
                // A private temp dir: parallel installs sharing /tmp collide.
                c.env("TMPDIR", self.inner(self.dir.path()));
                c
            }
            Flavor::MySql => {
                let mut c = self.command("/usr/sbin/mysqld");
                c.arg("--no-defaults")
                    .arg("--initialize-insecure")
                    .arg("--user=root")
                    .arg(&datadir);
                c
            }
        };
        util::run(&mut cmd).with_context(|| format!("initializing {}", self.flavor.name()))?;
        Ok(())
    }

    fn spawn(&mut self) -> Result<()> {
        let inner_dir = self.inner(self.dir.path());
        let mut cmd = match self.flavor {
            Flavor::MariaDb => {
                let mut c = self.command("/usr/sbin/mariadbd");
                c.arg("--no-defaults")
                    .arg("--user=mysql")
                    .arg(format!("--tmpdir={}", inner_dir.display()));
                c
            }
            Flavor::MySql => {
                let mut c = self.command("/usr/sbin/mysqld");
                c.arg("--no-defaults")
                    .arg("--user=root")
                    .arg("--gtid-mode=ON")
                    .arg("--enforce-gtid-consistency=ON")
                    .arg("--secure-file-priv=")
                    .arg("--mysqlx=OFF")
                    .arg("--performance-schema=OFF");
                c
            }
        };
        cmd.arg(format!(
            "--datadir={}",
            self.inner(&self.data_dir).display()
        ))
        .arg(format!("--port={}", self.port))
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--socket={}", self.inner(&self.socket).display()))
        .arg(format!(
            "--pid-file={}",
            inner_dir.join("mysqld.pid").display()
        ))
        .arg(format!(
            "--log-bin={}",
            self.inner(&self.binlog_dir.join("binlog")).display()
        ))
        .arg("--binlog-format=ROW")
        .arg("--binlog-checksum=CRC32")
        .arg(format!("--server-id={}", self.server_id))
        .arg("--skip-name-resolve")
        .arg("--innodb-buffer-pool-size=64M")
        .args(&self.extra);
        let mut process =
            ServerProcess::spawn(self.flavor.name(), &mut cmd, &self.dir, Signal::Term)?;
        let ready = util::wait_until(
            &format!("{} to accept connections", self.flavor.name()),
            START_TIMEOUT,
            || {
                process.ensure_running()?;
                Ok(self.socket.exists() && self.sql("SELECT 1").is_ok())
            },
        );
        self.process = Some(process);
        ready.with_context(|| format!("server log:\n{}", self.dir.log_tail(20)))
    }

    fn create_users(&self) -> Result<()> {
        self.sql(
            "CREATE USER 'pitr'@'%' IDENTIFIED BY 'pitrpass';\n\
             GRANT ALL PRIVILEGES ON *.* TO 'pitr'@'%' WITH GRANT OPTION;\n\
             CREATE USER 'noreplic'@'%' IDENTIFIED BY 'noreplpass';\n\
             GRANT SELECT ON *.* TO 'noreplic'@'%';",
        )
        .context("creating users")?;
        Ok(())
    }

    /// Which server this is.
    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// The server's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's `server_id` (unique within the test process).
    pub fn server_id(&self) -> u32 {
        self.server_id
    }

    /// Directory holding the binlog files (`binlog.000001`, ...) and `binlog.index`
    /// (a host path, also for MySQL).
    pub fn binlog_dir(&self) -> &Path {
        &self.binlog_dir
    }

    /// The data directory (a host path).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The unix socket (a host path).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The server log file.
    pub fn log_path(&self) -> &Path {
        self.dir.log()
    }

    /// Path of a tool of this installation, e.g. `bin("mariadb-binlog")` or
    /// `bin("mysqlbinlog")`. For MySQL it is a wrapper script that runs the chroot's tool
    /// (absolute host paths under the chroot in its arguments are translated).
    pub fn bin(&self, tool: &str) -> PathBuf {
        let Some(root) = &self.chroot else {
            let usr_bin = Path::new("/usr/bin").join(tool);
            return if usr_bin.exists() {
                usr_bin
            } else {
                Path::new("/usr/sbin").join(tool)
            };
        };
        let inner = if root.join("usr/bin").join(tool).exists() {
            format!("/usr/bin/{tool}")
        } else {
            format!("/usr/sbin/{tool}")
        };
        let wrappers = self.dir.path().join("bin");
        let path = wrappers.join(tool);
        if !path.exists() {
            let root = root.display().to_string();
            let script = format!(
                "#!/bin/sh\n\
                 # Runs {inner} inside the MySQL chroot; host paths under the chroot are\n\
                 # rewritten to chroot paths.\n\
                 root='{root}'\n\
                 n=$#\n\
                 while [ \"$n\" -gt 0 ]; do\n\
                 \x20   a=$1; shift; n=$((n - 1))\n\
                 \x20   case $a in *\"$root\"/*) a=$(printf '%s' \"$a\" | sed \"s#$root/#/#g\") ;; esac\n\
                 \x20   set -- \"$@\" \"$a\"\n\
                 done\n\
                 exec chroot \"$root\" {inner} \"$@\"\n"
            );
            let written = fs::create_dir_all(&wrappers)
                .and_then(|()| fs::write(&path, script))
                .and_then(|()| fs::set_permissions(&path, fs::Permissions::from_mode(0o755)));
            if let Err(e) = written {
                eprintln!("pitr-integration: writing {}: {e}", path.display());
            }
        }
        path
    }

    /// `mysql://pitr:pitrpass@127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.url_as("pitr", "pitrpass")
    }

    /// URL for connecting as `user` with `password` over TCP.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!(
            "mysql://{}:{}@127.0.0.1:{}",
            util::encode_userinfo(user),
            util::encode_userinfo(password),
            self.port
        )
    }

    /// Runs SQL with the batch client (`-N -B`) as root over the socket (several statements
    /// allowed; stops at the first error) and returns stdout, trimmed.
    pub fn sql(&self, sql: &str) -> Result<String> {
        let mut cmd = self.client_command();
        cmd.arg("-e").arg(sql);
        util::run(&mut cmd)
    }

    /// The server's command-line client as root over the socket, batch mode
    /// without column names; add `-e SQL`.
    pub fn client_command(&self) -> Command {
        let client = match self.flavor {
            Flavor::MariaDb => "/usr/bin/mariadb",
            Flavor::MySql => "/usr/bin/mysql",
        };
        let mut cmd = self.command(client);
        cmd.arg("--no-defaults")
            .arg(format!("--socket={}", self.inner(&self.socket).display()))
            .args(["-u", "root", "-N", "-B"]);
        cmd
    }

    /// Stops the server (SIGTERM, clean shutdown). Idempotent.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut p) = self.process.take() {
            p.stop()?;
        }
        Ok(())
    }

    /// Stops and starts the server again (same port, data and binlogs).
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn()
    }

    /// True while the server process runs.
    pub fn is_running(&mut self) -> bool {
        match self.process.as_mut() {
            Some(p) => matches!(p.exited(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for MySqlServer {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!(
                "pitr-integration: stopping {} on port {}: {e:#}",
                self.flavor.name(),
                self.port
            );
        }
    }
}
