//! Logins beyond the servers' defaults:
//!
//! * MariaDB's `ed25519` plugin: a user identified via ed25519 backs up;
//!   a wrong password is refused by the server in one sentence.
//! * MySQL 9's `caching_sha2_password` full authentication (the server's
//!   cache emptied by `FLUSH PRIVILEGES`): without TLS it is refused unless
//!   the server's RSA key is given (`server-public-key-path`) or fetching it
//!   is allowed (`get-server-public-key=true`); over TLS (the default
//!   `ssl-mode=PREFERRED` against a server with certificates) the password
//!   goes in the encrypted session.

use std::path::Path;
use std::process::Output;

use pitr_integration::mysql_restore_util::ok;
use pitr_integration::restore_util::pitr;
use pitr_integration::{mysql, require, Flavor, MySqlServer};

fn backup(url: &str, repo: &Path, name: &str) -> Output {
    pitr(&[
        "backup",
        url,
        "--repo",
        repo.to_str().unwrap(),
        "--name",
        name,
    ])
}

fn refused(o: &Output, says: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(says), "wanted {says:?}: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn mariadb_ed25519_login() {
    require!(mysql::available(Flavor::MariaDb));
    let s = MySqlServer::start(Flavor::MariaDb).unwrap();
    if s.sql("INSTALL SONAME 'auth_ed25519'").is_err() {
        pitr_integration::record_skip(module_path!(), "the server has no auth_ed25519 plugin");
        return;
    }
    s.sql(
        "CREATE USER 'ed'@'%' IDENTIFIED VIA ed25519 USING PASSWORD('ed-pass-1'); \
         GRANT ALL PRIVILEGES ON *.* TO 'ed'@'%'; \
         CREATE DATABASE shop; CREATE TABLE shop.t (id INT PRIMARY KEY); \
         INSERT INTO shop.t VALUES (1), (2)",
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    ok(&backup(&s.url_as("ed", "ed-pass-1"), &repo, "ed"));
    refused(
        &backup(&s.url_as("ed", "wrong"), &tmp.path().join("r2"), "ed"),
        "Access denied",
    );
}

#[test]
fn mysql_full_authentication_needs_tls_or_the_servers_key() {
    require!(mysql::available(Flavor::MySql));
    let s = MySqlServer::start(Flavor::MySql).unwrap();
    let key = s.data_dir().join("public_key.pem");
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let url = s.url();
    let clear = format!("{url}/?ssl-mode=DISABLED");
    // Every login below is a full authentication: the cache is emptied first.
    let flush = || s.sql("FLUSH PRIVILEGES").unwrap();
    flush();
    refused(
        &backup(&clear, &tmp.path().join("r0"), "a"),
        "does not fetch the server's RSA key unauthenticated",
    );
    flush();
    ok(&backup(
        &format!("{clear}&get-server-public-key=true"),
        &repo,
        "a",
    ));
    // The server generates its RSA key pair and certificates at start.
    assert!(key.exists(), "no {}", key.display());
    flush();
    ok(&backup(
        &format!("{clear}&server-public-key-path={}", key.display()),
        &repo,
        "a",
    ));
    assert!(s.data_dir().join("ca.pem").exists(), "no certificates");
    flush();
    ok(&backup(&url, &repo, "a"));
}
