//! Throwaway real servers for tests: PostgreSQL 15/18 (+ streaming standby),
//! MariaDB 10.11, MySQL 9.x and S3-compatible servers (moto, s3s-fs), each on a free
//! loopback port in its own temp dir, stopped by pid when the handle drops.
//!
//! The servers are installed by `scripts/setup`. A test that needs one starts with
//! `require!(pg::available(PgVersion::V15));`: when the server is not installed the test
//! prints `SKIPPED: <test>: <reason>`, appends the same line to the skip log (env
//! `PITR_SKIP_LOG`, default `<workspace>/target/pitr-skipped.log`) and returns, so
//! `scripts/test` can list the skips even though cargo captures test output.
//!
//! When a test panics, every server handle it owned keeps its temp dir (data + log) and
//! prints where it is.

pub mod archiver;
pub mod at_rest;
pub mod benchmarks_md;
pub mod certs;
pub mod header_proxy;
pub mod mongo;
mod mongo_real;
pub mod mysql;
pub mod mysql_restore_util;
pub mod pg;
pub mod procstat;
pub mod restore_util;
pub mod s3;
pub mod signal;
pub mod util;

use std::path::PathBuf;

pub use mongo::{MongoDouble, MongoOptions};
pub use mysql::{Flavor, MySqlServer};
pub use pg::{PgServer, PgVersion};
pub use s3::{S3Impl, S3Server};

/// Root of the dependencies installed by `scripts/setup` (env `PITR_DEPS`, default
/// `/opt/pitr-deps`).
pub fn deps_dir() -> PathBuf {
    std::env::var_os("PITR_DEPS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/pitr-deps"))
}

/// The workspace root (parent of this crate).
pub fn workspace_dir() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                workspace_dir().join(d)
            }
        }
        None => workspace_dir().join("target"),
    }
}

/// The skip log: env `PITR_SKIP_LOG`, default `<workspace>/target/pitr-skipped.log`.
pub fn skip_log_path() -> PathBuf {
    std::env::var_os("PITR_SKIP_LOG")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target").join("pitr-skipped.log"))
}

/// True when env `PITR_REQUIRE_SERVERS` is `1` (CI): a missing server or tool is then a
/// failure of the test that needs it, not a skip.
pub fn servers_required() -> bool {
    std::env::var("PITR_REQUIRE_SERVERS").is_ok_and(|v| v.trim() == "1")
}

/// Records a skipped test: prints `SKIPPED: <module>::<test>: <reason>` to stderr and
/// appends it to the skip log. Called by [`require!`]. Under `PITR_REQUIRE_SERVERS=1`
/// it panics instead (after logging), so no skip passes unnoticed, whoever runs the tests.
pub fn record_skip(module: &str, reason: &str) {
    // libtest runs each test on a thread named after the test.
    let test = std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .map(str::to_string);
    let who = match test {
        Some(t) if !t.starts_with(module) => format!("{module}::{t}"),
        Some(t) => t,
        None => module.to_string(),
    };
    let line = format!("SKIPPED: {who}: {reason}");
    eprintln!("{line}");
    let log = skip_log_path();
    if let Err(e) = util::append_line(&log, &line) {
        eprintln!("pitr-integration: cannot write the skip log: {e:#}");
    }
    if servers_required() {
        panic!("{who} needs what is missing here, and PITR_REQUIRE_SERVERS=1 forbids skipping: {reason}");
    }
}

/// In a `#[test]` fn: if `$avail` is `Err(reason)`, record and print
/// `SKIPPED: <test>: <reason>` and return from the test (under
/// `PITR_REQUIRE_SERVERS=1`: fail it, see [`record_skip`]).
#[macro_export]
macro_rules! require {
    ($avail:expr) => {
        if let ::std::result::Result::Err(reason) = $avail {
            $crate::record_skip(
                ::std::module_path!(),
                &::std::string::ToString::to_string(&reason),
            );
            return;
        }
    };
}

/// The built `pitr` binary (env `PITR_BIN`, else `<target>/debug/pitr`). Panics with a clear
/// message when it has not been built.
pub fn pitr_bin() -> PathBuf {
    let path = std::env::var_os("PITR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("debug").join("pitr"));
    if !util::is_executable(&path) {
        panic!(
            "the pitr binary is not built: {} does not exist (run `cargo build --bins` first, \
             or set PITR_BIN)",
            path.display()
        );
    }
    path
}
