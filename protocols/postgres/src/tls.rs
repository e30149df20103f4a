//! TLS for PostgreSQL connections: libpq's settings mapped onto the TLS
//! configuration shared by pitr's database protocols (`pitr-tls`).
//!
//! PostgreSQL negotiates TLS in-band: the client sends an `SSLRequest`
//! (length 8, code 80877103), the server answers one byte, `S` (go ahead with
//! the TLS handshake on the same socket) or `N` (no TLS). Per `sslmode`:
//! `require` encrypts without verifying the certificate (libpq semantics),
//! `verify-ca` checks the chain against the roots, `verify-full` also checks
//! the host name. Roots come from `sslrootcert` (PEM), else
//! `~/.postgresql/root.crt` when present; as in libpq, verification without
//! either is refused, and `sslrootcert=system` asks for the publicly trusted
//! roots. `sslcert`/`sslkey` present a client certificate.

use std::path::PathBuf;
use std::sync::Arc;

use pitr_tls::{Names, Roots, TlsSettings, TlsSetupError, Verify};

use crate::conninfo::{Config, SslMode};
use crate::error::PgError;

const NAMES: Names = Names {
    roots: "sslrootcert",
    cert: "sslcert",
    key: "sslkey",
};

fn config_error(e: TlsSetupError) -> PgError {
    PgError::config(e.message, e.hint)
}

/// The roots `verify-ca` / `verify-full` check against.
fn roots(cfg: &Config) -> Result<Roots, PgError> {
    let file = cfg.sslrootcert.clone().or_else(|| {
        let p = PathBuf::from(std::env::var_os("HOME")?).join(".postgresql/root.crt");
        p.exists().then_some(p)
    });
    match file {
        Some(path) if path.as_os_str() == "system" => Ok(Roots::System),
        Some(path) => Ok(Roots::File(path)),
        None => Err(PgError::config(
            format!(
                "sslmode={} needs a root certificate to verify the server against, and neither sslrootcert nor ~/.postgresql/root.crt gives one",
                cfg.sslmode.as_str()
            ),
            "set sslrootcert=FILE (the CA certificate), sslrootcert=system for the publicly trusted roots, or sslmode=require to encrypt without verifying",
        )),
    }
}

/// Builds the rustls configuration for `cfg.sslmode` (not called for `disable`).
pub(crate) fn client_config(cfg: &Config) -> Result<Arc<rustls::ClientConfig>, PgError> {
    let verify = match cfg.sslmode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => Verify::Nothing,
        SslMode::VerifyCa | SslMode::VerifyFull => Verify::Chain {
            roots: roots(cfg)?,
            check_name: cfg.sslmode == SslMode::VerifyFull,
        },
    };
    pitr_tls::client_config(&TlsSettings {
        verify,
        client_cert: cfg.sslcert.clone(),
        client_key: cfg.sslkey.clone(),
        alpn: Some(b"postgresql".to_vec()),
        names: NAMES,
    })
    .map_err(config_error)
}

/// Server name for SNI / verification.
pub(crate) fn server_name(host: &str) -> Result<rustls::pki_types::ServerName<'static>, PgError> {
    pitr_tls::server_name(host).map_err(config_error)
}
