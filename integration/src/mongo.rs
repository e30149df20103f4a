//! A throwaway MongoDB replica set for tests: one member `rs0` on a free loopback port,
//! stopped when the handle drops.
//!
//! By default it is the `mongo-double` binary of this crate (a wire-protocol double, see
//! `MONGO-DOUBLE.md`): `<target>/debug/mongo-double` (cargo builds it with this crate's
//! tests), or env `PITR_MONGO_DOUBLE_BIN`.
//!
//! [`MongoDouble::server`] starts a real `mongod` instead when env `PITR_MONGOD_BIN` names
//! one (see [`real_mongod`]): `--replSet rs0` on a free port with a data directory in a
//! temporary directory, `--keyFile` when a user is wanted, initiated with
//! `replSetInitiate` and given its user through the localhost exception. Tests of pitr's
//! MongoDB engine use it; tests that need what only the double can do (a seeded oplog, a
//! tiny oplog cap, a step-down with a long freeze on a one-member set) and the tests of
//! the double itself always use the double.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

/// How to start the double.
#[derive(Debug, Clone)]
pub struct MongoOptions {
    /// The one SCRAM-SHA-256 user, `(name, password)`; `None`: no authentication.
    pub user: Option<(String, String)>,
    /// Start with this recorded oplog (`.bson`, documents back to back), served unchanged.
    pub seed_oplog: Option<PathBuf>,
    /// Drop the oldest oplog entries beyond this many bytes.
    pub oplog_cap_bytes: Option<u64>,
    /// Seconds without writes before a `periodic noop` entry (0: never). Default 10.
    pub noop_interval_secs: u64,
}

impl Default for MongoOptions {
    fn default() -> Self {
        MongoOptions {
            user: Some(("pitr".into(), "pitrpass".into())),
            seed_oplog: None,
            oplog_cap_bytes: None,
            noop_interval_secs: 10,
        }
    }
}

/// A running double (or real `mongod`); killed on drop.
#[derive(Debug)]
pub struct MongoDouble {
    child: Child,
    port: u16,
    user: Option<(String, String)>,
    /// A real server's data directory, removed on drop.
    _dir: Option<tempfile::TempDir>,
}

/// The real `mongod` named by env `PITR_MONGOD_BIN`, if any.
pub fn real_mongod() -> Option<PathBuf> {
    std::env::var_os("PITR_MONGOD_BIN")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The double's binary: env `PITR_MONGO_DOUBLE_BIN`, else `<target>/debug/mongo-double`.
pub fn double_bin() -> PathBuf {
    std::env::var_os("PITR_MONGO_DOUBLE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("debug").join("mongo-double"))
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        Some(d) if d.is_absolute() => d,
        Some(d) => crate::workspace_dir().join(d),
        None => crate::workspace_dir().join("target"),
    }
}

impl MongoDouble {
    /// Starts the double (on a free port) and waits until it listens.
    pub fn start(opts: MongoOptions) -> Result<MongoDouble> {
        Self::start_bin(&double_bin(), opts)
    }

    /// A real `mongod` when `PITR_MONGOD_BIN` names one ([`real_mongod`]), else the
    /// double `double` (tests pass `env!("CARGO_BIN_EXE_mongo-double")`). `opts` must not
    /// need the double (`seed_oplog`, `oplog_cap_bytes`): a real server refuses them.
    pub fn server(double: &Path, opts: MongoOptions) -> Result<MongoDouble> {
        match real_mongod() {
            Some(mongod) => crate::mongo_real::start(&mongod, opts),
            None => Self::start_bin(double, opts),
        }
    }

    /// Wraps a started real server (see `mongo_real`).
    pub(crate) fn from_real(
        child: Child,
        port: u16,
        user: Option<(String, String)>,
        dir: tempfile::TempDir,
    ) -> MongoDouble {
        MongoDouble {
            child,
            port,
            user,
            _dir: Some(dir),
        }
    }

    /// Like [`MongoDouble::start`] with an explicit binary (tests pass
    /// `env!("CARGO_BIN_EXE_mongo-double")`).
    pub fn start_bin(bin: &Path, opts: MongoOptions) -> Result<MongoDouble> {
        if !crate::util::is_executable(bin) {
            bail!(
                "the mongo-double binary is not built: {} does not exist (run `cargo build -p \
                 pitr-integration --bin mongo-double`, or set PITR_MONGO_DOUBLE_BIN)",
                bin.display()
            );
        }
        let mut cmd = Command::new(bin);
        cmd.args(["--port", "0"])
            .args(["--noop-interval-secs", &opts.noop_interval_secs.to_string()]);
        if let Some((u, p)) = &opts.user {
            cmd.args(["--user", u, "--password", p]);
        }
        if let Some(seed) = &opts.seed_oplog {
            cmd.arg("--seed-oplog").arg(seed);
        }
        if let Some(cap) = opts.oplog_cap_bytes {
            cmd.args(["--oplog-cap-bytes", &cap.to_string()]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("no stdout from mongo-double")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("reading mongo-double's first line")?;
        let port = line
            .trim()
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok());
        let Some(port) = port else {
            let _ = child.kill();
            let status = child.wait().ok();
            bail!("mongo-double did not start (said {line:?}, exit {status:?})");
        };
        Ok(MongoDouble {
            child,
            port,
            user: opts.user,
            _dir: None,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mongodb://u:pw@127.0.0.1:P/?replicaSet=rs0&directConnection=true` (the credentials
    /// authenticate against `admin`).
    pub fn url(&self) -> String {
        let auth = match &self.user {
            Some((u, p)) => format!(
                "{}:{}@",
                crate::util::encode_userinfo(u),
                crate::util::encode_userinfo(p)
            ),
            None => String::new(),
        };
        format!(
            "mongodb://{auth}127.0.0.1:{}/?replicaSet=rs0&directConnection=true",
            self.port
        )
    }

    /// The same URL with other credentials (e.g. a wrong password).
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!(
            "mongodb://{}:{}@127.0.0.1:{}/?replicaSet=rs0&directConnection=true",
            crate::util::encode_userinfo(user),
            crate::util::encode_userinfo(password),
            self.port
        )
    }
}

impl Drop for MongoDouble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real oplog entries the double is held against
/// (`integration/fixtures/mongodb-oplog`, see its README). Panics when
/// missing: the fixtures are part of the test contract, a test must not pass
/// without them.
pub fn fixtures_dir() -> PathBuf {
    let dir = crate::workspace_dir()
        .join("integration")
        .join("fixtures")
        .join("mongodb-oplog");
    assert!(
        dir.join("README.md").is_file(),
        "the MongoDB oplog fixtures are missing: expected {}",
        dir.display()
    );
    dir
}

/// Splits a `.bson` file (documents back to back) into the documents' bytes.
pub fn split_bson(bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some(len) = bytes.get(at..at + 4) else {
            bail!("truncated document length at byte {at}");
        };
        let len = i32::from_le_bytes([len[0], len[1], len[2], len[3]]);
        let len = usize::try_from(len).unwrap_or(0);
        if len < 5 || at + len > bytes.len() {
            bail!("bad document length {len} at byte {at}");
        }
        out.push(bytes[at..at + len].to_vec());
        at += len;
    }
    Ok(out)
}

/// The documents of a `.bson` file.
pub fn read_bson_file(path: &Path) -> Result<Vec<Vec<u8>>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    split_bson(&bytes)
        .with_context(|| format!("{} is not BSON documents back to back", path.display()))
}
