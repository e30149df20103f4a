//! Certificates for TLS tests, made with the `openssl` command: a CA and a
//! server certificate for 127.0.0.1 (subjectAltName IP:127.0.0.1) signed
//! by it, valid for two days.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The files [`server_certs`] wrote.
#[derive(Debug, Clone)]
pub struct Certs {
    /// The CA certificate (PEM).
    pub ca: PathBuf,
    /// The server certificate and its key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// True when the `openssl` command runs.
pub fn openssl_available() -> bool {
    Command::new("openssl").arg("version").output().is_ok()
}

/// Writes `<prefix>ca.crt`, `<prefix>server.crt` and `<prefix>server.key` into
/// `dir`; `None` when openssl is missing or fails.
pub fn server_certs(dir: &Path, prefix: &str) -> Option<Certs> {
    let run = |args: &[&str]| {
        Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    let f = |name: &str| format!("{prefix}{name}");
    let (ca_key, ca, key, csr, ext, cert) = (
        f("ca.key"),
        f("ca.crt"),
        f("server.key"),
        f("server.csr"),
        f("ext.cnf"),
        f("server.crt"),
    );
    let ok = run(&[
        "req",
        "-new",
        "-x509",
        "-days",
        "2",
        "-nodes",
        "-subj",
        &format!("/CN=pitr-test-{prefix}ca"),
        "-keyout",
        &ca_key,
        "-out",
        &ca,
    ]) && run(&[
        "req",
        "-new",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &key,
        "-out",
        &csr,
    ]) && std::fs::write(
        dir.join(&ext),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .is_ok()
        && run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &cert,
        ]);
    ok.then(|| Certs {
        ca: dir.join(ca),
        cert: dir.join(cert),
        key: dir.join(key),
    })
}

/// Gives the server certificate and key to the owner of `owner_of` (the
/// user the server runs as), the key readable by it alone.
pub fn hand_to_owner(c: &Certs, owner_of: &Path) {
    let owner = Command::new("stat")
        .args(["-c", "%u:%g"])
        .arg(owner_of)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    for f in [&c.key, &c.cert] {
        let _ = Command::new("chown").arg(&owner).arg(f).status();
    }
    let _ = Command::new("chmod").arg("600").arg(&c.key).status();
}
