//! TLS to MySQL/MariaDB servers that accept nothing else
//! (`require_secure_transport=ON`):
//!
//! * MariaDB with a CA and a server certificate for 127.0.0.1 made here:
//!   archive, backup and restore with `ssl-mode=VERIFY_IDENTITY` work and the
//!   restore is exact; another CA, or a host name the certificate does not
//!   name, is refused in one sentence with nothing written; cleartext is
//!   refused by the server.
//! * MySQL 9 with the certificates it generates itself: `VERIFY_CA` against
//!   its `ca.pem` works (and the default `PREFERRED` uses TLS: the server
//!   takes nothing else), `VERIFY_IDENTITY` is refused (its certificate names
//!   no host).

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Output;

use pitr_integration::archiver::Archiver;
use pitr_integration::certs::{openssl_available, server_certs};
use pitr_integration::mysql_restore_util::{binlog_position, dump, ok, wait_archived};
use pitr_integration::restore_util::pitr;
use pitr_integration::{mysql, record_skip, require, Flavor, MySqlServer};

/// A refused command: exit 1, one line that contains `says`, no password,
/// nothing in `repo`.
fn refused(o: &Output, says: &str, repo: &Path) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(says), "wanted {says:?}: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(!err.contains("pitrpass"), "password shown: {err}");
    assert!(
        !repo.exists() || fs::read_dir(repo).unwrap().next().is_none(),
        "wrote to {}",
        repo.display()
    );
}

fn fill(s: &MySqlServer, from: u32, to: u32) {
    let values: Vec<String> = (from..=to).map(|i| format!("({i}, 'row {i}')")).collect();
    s.sql(&format!("INSERT INTO shop.t VALUES {};", values.join(",")))
        .unwrap();
}

#[test]
fn mariadb_verify_identity_end_to_end() {
    require!(mysql::available(Flavor::MariaDb));
    if !openssl_available() {
        record_skip(module_path!(), "openssl not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    fs::create_dir(&dir).unwrap();
    let (Some(certs), Some(other)) = (server_certs(&dir, ""), server_certs(&dir, "other-")) else {
        record_skip(module_path!(), "openssl could not create certificates");
        return;
    };
    // The server runs as its own user: let it read the directory and files.
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    for e in fs::read_dir(&dir).unwrap() {
        fs::set_permissions(e.unwrap().path(), fs::Permissions::from_mode(0o644)).unwrap();
    }
    let args = vec![
        format!("--ssl-ca={}", certs.ca.display()),
        format!("--ssl-cert={}", certs.cert.display()),
        format!("--ssl-key={}", certs.key.display()),
        "--require-secure-transport=ON".to_string(),
    ];
    let src = MySqlServer::start_with(Flavor::MariaDb, &args).unwrap();
    src.sql(
        "CREATE DATABASE shop; \
         CREATE TABLE shop.t (id INT PRIMARY KEY, v VARCHAR(20) NOT NULL DEFAULT 'x', KEY (v))",
    )
    .unwrap();
    fill(&src, 1, 50);
    let tls = format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={}", certs.ca.display());
    let url = format!("{}/?{tls}", src.url());

    // Refusals first: nothing may be written.
    let empty = tmp.path().join("empty-repo");
    let e = empty.to_str().unwrap();
    let wrong_ca = format!(
        "{}/?ssl-mode=VERIFY_CA&ssl-ca={}",
        src.url(),
        other.ca.display()
    );
    refused(
        &pitr(&["backup", &wrong_ca, "--repo", e]),
        "TLS handshake",
        &empty,
    );
    let by_name = url.replace("127.0.0.1", "localhost");
    refused(
        &pitr(&["backup", &by_name, "--repo", e]),
        "TLS handshake",
        &empty,
    );
    let clear = format!("{}/?ssl-mode=DISABLED", src.url());
    let o = pitr(&["backup", &clear, "--repo", e]);
    assert!(!o.status.success(), "cleartext was accepted");

    // Archive, backup and restore over verified TLS.
    let repo = tmp.path().join("repo");
    let r = repo.to_str().unwrap().to_string();
    let archiver = Archiver::start(&url, &repo, "shop", tmp.path(), &[]);
    ok(&pitr(&["backup", &url, "--repo", &r, "--name", "shop"]));
    fill(&src, 51, 120);
    src.sql("UPDATE shop.t SET v = 'changed' WHERE id % 7 = 0")
        .unwrap();
    wait_archived(&r, &url, &binlog_position(&src));
    archiver.terminate();
    let into = MySqlServer::start_with(Flavor::MariaDb, &args).unwrap();
    let target = format!("{}/?{tls}", into.url());
    ok(&pitr(&[
        "restore", "--repo", &r, "--name", "shop", "--latest", "--target", &target,
    ]));
    assert_eq!(dump(&into, "shop"), dump(&src, "shop"));
}

#[test]
fn mysql_verify_ca_with_its_own_certificates() {
    require!(mysql::available(Flavor::MySql));
    let src = MySqlServer::start_with(
        Flavor::MySql,
        &["--require-secure-transport=ON".to_string()],
    )
    .unwrap();
    let ca = src.data_dir().join("ca.pem");
    if !ca.exists() {
        record_skip(module_path!(), "the server generated no certificates");
        return;
    }
    src.sql("CREATE DATABASE shop; CREATE TABLE shop.t (id INT PRIMARY KEY, v VARCHAR(20))")
        .unwrap();
    fill(&src, 1, 20);
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty-repo");
    let e = empty.to_str().unwrap();
    let identity = format!(
        "{}/?ssl-mode=VERIFY_IDENTITY&ssl-ca={}",
        src.url(),
        ca.display()
    );
    refused(
        &pitr(&["backup", &identity, "--repo", e]),
        "TLS handshake",
        &empty,
    );
    let repo = tmp.path().join("repo");
    let r = repo.to_str().unwrap();
    let verify_ca = format!("{}/?ssl-mode=VERIFY_CA&ssl-ca={}", src.url(), ca.display());
    ok(&pitr(&["backup", &verify_ca, "--repo", r, "--name", "a"]));
    // The default (PREFERRED) takes TLS when offered: the server accepts nothing else.
    ok(&pitr(&["backup", &src.url(), "--repo", r, "--name", "a"]));
}
