//! TLS for MySQL/MariaDB connections, and the URL parameters that ask for
//! it, spelled as MySQL clients spell them.
//!
//! MySQL negotiates TLS inside the handshake: the server's greeting
//! advertises `CLIENT_SSL`; a client that wants TLS answers with an
//! `SSLRequest` (the first 32 bytes of a handshake response: capabilities
//! with `CLIENT_SSL`, max packet size, character set, 23 zero bytes), runs
//! the TLS handshake on the same socket and sends its real handshake
//! response (sequence number 2) over TLS.
//!
//! `ssl-mode` (default `PREFERRED`, as the MySQL client's):
//! * `DISABLED`: never TLS;
//! * `PREFERRED`: TLS when the server offers it, else cleartext;
//! * `REQUIRED`: TLS or refuse, certificate not verified;
//! * `VERIFY_CA`: also verify the chain against `ssl-ca` (required);
//! * `VERIFY_IDENTITY`: also verify that the certificate names the host.
//!
//! `ssl-ca` alone implies `VERIFY_CA`; `ssl-cert` / `ssl-key` present a
//! client certificate. For `caching_sha2_password` over a connection without
//! TLS, `server-public-key-path` gives the server's RSA public key (PEM) and
//! `get-server-public-key=true` allows fetching it from the server
//! unauthenticated (a man in the middle could substitute its own); without
//! either such a login is refused. Every other parameter is refused by name.
//! The TLS configuration and the key file are read when the URL is parsed,
//! so a wrong path is reported before anything connects.

use std::path::PathBuf;
use std::sync::Arc;

use pitr_tls::{Names, Roots, TlsSettings, TlsStream, Verify};
use tokio::net::TcpStream;

use crate::error::{ErrorKind, MysqlError, Result};

/// Capability flag: the client switches to TLS.
pub(crate) const CLIENT_SSL: u32 = 0x800;

const NAMES: Names = Names {
    roots: "ssl-ca",
    cert: "ssl-cert",
    key: "ssl-key",
};

/// The `ssl-mode` of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disabled,
    Preferred,
    Required,
    VerifyCa,
    VerifyIdentity,
}

impl SslMode {
    const ALL: [(&'static str, SslMode); 5] = [
        ("DISABLED", SslMode::Disabled),
        ("PREFERRED", SslMode::Preferred),
        ("REQUIRED", SslMode::Required),
        ("VERIFY_CA", SslMode::VerifyCa),
        ("VERIFY_IDENTITY", SslMode::VerifyIdentity),
    ];

    /// The name MySQL clients use.
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, m)| *m == self)
            .map_or("PREFERRED", |(n, _)| n)
    }
}

/// What a connection asks of TLS and of `caching_sha2_password`.
#[derive(Clone)]
pub struct TlsParams {
    pub mode: SslMode,
    /// The client configuration (for every mode but `DISABLED`).
    config: Option<Arc<rustls::ClientConfig>>,
    /// The server's RSA public key (PEM), from `server-public-key-path`.
    pub server_public_key: Option<Vec<u8>>,
    /// `get-server-public-key=true`: fetching the key unauthenticated is allowed.
    pub get_server_public_key: bool,
}

impl std::fmt::Debug for TlsParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsParams")
            .field("mode", &self.mode)
            .field("server_public_key", &self.server_public_key.is_some())
            .field("get_server_public_key", &self.get_server_public_key)
            .finish_non_exhaustive()
    }
}

fn settings(verify: Verify, cert: Option<PathBuf>, key: Option<PathBuf>) -> TlsSettings {
    TlsSettings {
        verify,
        client_cert: cert,
        client_key: key,
        alpn: None,
        names: NAMES,
    }
}

fn invalid(msg: String) -> MysqlError {
    MysqlError::new(ErrorKind::InvalidInput, msg)
}

fn flag(key: &str, value: &str) -> Result<bool> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" | "on" | "yes" => Ok(true),
        "0" | "false" | "off" | "no" => Ok(false),
        _ => Err(invalid(format!(
            "invalid MySQL URL parameter {key}={value}: use true or false"
        ))),
    }
}

impl TlsParams {
    /// Reads the URL's query parameters (see the module docs).
    pub fn from_query<'a>(pairs: impl IntoIterator<Item = (String, String)> + 'a) -> Result<Self> {
        let mut mode = None;
        let (mut ca, mut cert, mut key, mut pubkey) = (None, None, None, None);
        let mut get_key = false;
        for (k, v) in pairs {
            match k.to_ascii_lowercase().replace('_', "-").as_str() {
                "ssl-mode" | "sslmode" => {
                    let up = v.to_ascii_uppercase();
                    let m = SslMode::ALL
                        .iter()
                        .find(|(n, _)| *n == up)
                        .map(|(_, m)| *m)
                        .ok_or_else(|| {
                            invalid(format!(
                                "invalid MySQL URL parameter ssl-mode={v}: use one of {}",
                                SslMode::ALL.map(|(n, _)| n).join(", ")
                            ))
                        })?;
                    mode = Some(m);
                }
                "ssl-ca" => ca = Some(PathBuf::from(v)),
                "ssl-cert" => cert = Some(PathBuf::from(v)),
                "ssl-key" => key = Some(PathBuf::from(v)),
                "server-public-key-path" => pubkey = Some(PathBuf::from(v)),
                "get-server-public-key" => get_key = flag(&k, &v)?,
                "ssl-capath" | "ssl-cipher" | "tls-version" | "tls-ciphersuites" | "ssl-crl"
                | "ssl-crlpath" => {
                    return Err(invalid(format!(
                        "MySQL URL parameter {k} is not supported; pitr uses TLS 1.2 or 1.3 with \
                         rustls' safe defaults and the CA certificates of ssl-ca"
                    )))
                }
                _ => {
                    return Err(invalid(format!(
                        "unknown MySQL URL parameter {k:?}; the ones pitr knows are ssl-mode, \
                         ssl-ca, ssl-cert, ssl-key, server-public-key-path and get-server-public-key"
                    )))
                }
            }
        }
        let mode = mode.unwrap_or(if ca.is_some() {
            SslMode::VerifyCa
        } else {
            SslMode::Preferred
        });
        let verify = match mode {
            SslMode::Disabled => {
                if ca.is_some() || cert.is_some() || key.is_some() {
                    return Err(invalid(
                        "ssl-mode=DISABLED together with ssl-ca, ssl-cert or ssl-key; \
                         drop one or the other"
                            .into(),
                    ));
                }
                None
            }
            SslMode::Preferred | SslMode::Required => Some(Verify::Nothing),
            SslMode::VerifyCa | SslMode::VerifyIdentity => {
                let Some(ca) = ca else {
                    return Err(invalid(format!(
                        "ssl-mode={} needs the CA certificate to verify the server against; \
                         add ssl-ca=FILE (PEM), or use ssl-mode=REQUIRED to encrypt without verifying",
                        mode.as_str()
                    )));
                };
                let roots = if ca.as_os_str() == "system" {
                    Roots::System
                } else {
                    Roots::File(ca)
                };
                Some(Verify::Chain {
                    roots,
                    check_name: mode == SslMode::VerifyIdentity,
                })
            }
        };
        let config = match verify {
            Some(v) => Some(
                pitr_tls::client_config(&settings(v, cert, key))
                    .map_err(|e| invalid(format!("{e}; {}", e.hint)))?,
            ),
            None => None,
        };
        let server_public_key = match pubkey {
            Some(p) => Some(std::fs::read(&p).map_err(|e| {
                invalid(format!(
                    "cannot read server-public-key-path {}: {e}; point it at the server's RSA \
                     public key (PEM, the server's public_key.pem)",
                    p.display()
                ))
            })?),
            None => None,
        };
        Ok(TlsParams {
            mode,
            config,
            server_public_key,
            get_server_public_key: get_key,
        })
    }

    /// Whether to switch to TLS, given whether the server offers it.
    pub(crate) fn wanted(&self, server_offers: bool) -> Result<bool> {
        match self.mode {
            SslMode::Disabled => Ok(false),
            SslMode::Preferred => Ok(server_offers && self.config.is_some()),
            _ if server_offers => Ok(true),
            m => Err(invalid(format!(
                "the server does not offer TLS but ssl-mode={} requires it; enable TLS on \
                 the server (ssl_cert, ssl_key) or connect with ssl-mode=PREFERRED or DISABLED",
                m.as_str()
            ))),
        }
    }

    /// Runs the TLS handshake on `tcp`, verifying as `host`.
    pub(crate) async fn handshake(&self, host: &str, tcp: TcpStream) -> Result<TlsStream> {
        let config = self
            .config
            .clone()
            .ok_or_else(|| invalid("TLS is not configured for this connection".into()))?;
        pitr_tls::handshake(config, host, tcp)
            .await
            .map_err(|e| match e {
                pitr_tls::HandshakeError::Setup(s) => invalid(format!("{s}; {}", s.hint)),
                pitr_tls::HandshakeError::Io(io)
                    if io.kind() == std::io::ErrorKind::InvalidData =>
                {
                    invalid(format!(
                        "TLS handshake with the server failed: {io}; check the server's \
                         certificate, ssl-ca and ssl-mode"
                    ))
                }
                pitr_tls::HandshakeError::Io(io) => MysqlError::new(
                    ErrorKind::Io,
                    format!("TLS handshake with the server failed ({io}); it will be retried"),
                ),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &[(&str, &str)]) -> Result<TlsParams> {
        TlsParams::from_query(q.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn modes_and_refusals() {
        assert_eq!(parse(&[]).unwrap().mode, SslMode::Preferred);
        assert_eq!(
            parse(&[("ssl_mode", "required")]).unwrap().mode,
            SslMode::Required
        );
        let e = parse(&[("ssl-mode", "VERIFY_IDENTITY")]).unwrap_err();
        assert!(e.to_string().contains("needs the CA certificate"), "{e}");
        let e = parse(&[("ssl-ca", "/nonexistent/ca.pem")]).unwrap_err();
        assert!(
            e.to_string()
                .contains("cannot read ssl-ca /nonexistent/ca.pem"),
            "{e}"
        );
        let e = parse(&[("ssl-mode", "BOGUS")]).unwrap_err();
        assert!(e.to_string().contains("ssl-mode=BOGUS"), "{e}");
        let e = parse(&[("nonsense", "1")]).unwrap_err();
        assert!(e.to_string().contains("\"nonsense\""), "{e}");
        let e = parse(&[("ssl-capath", "/etc")]).unwrap_err();
        assert!(e.to_string().contains("not supported"), "{e}");
        let e = parse(&[("ssl-mode", "DISABLED"), ("ssl-cert", "/c.pem")]).unwrap_err();
        assert!(e.to_string().contains("DISABLED together"), "{e}");
        let e = parse(&[("server-public-key-path", "/nonexistent.pem")]).unwrap_err();
        assert!(e.to_string().contains("server-public-key-path"), "{e}");
        assert!(
            parse(&[("get-server-public-key", "true")])
                .unwrap()
                .get_server_public_key
        );
        assert!(parse(&[("get-server-public-key", "maybe")]).is_err());

        let p = parse(&[("ssl-mode", "DISABLED")]).unwrap();
        assert!(!p.wanted(true).unwrap());
        let p = parse(&[]).unwrap();
        assert!(p.wanted(true).unwrap() && !p.wanted(false).unwrap());
        let p = parse(&[("ssl-mode", "REQUIRED")]).unwrap();
        assert!(p.wanted(true).unwrap());
        let e = p.wanted(false).unwrap_err();
        assert!(e.to_string().contains("does not offer TLS"), "{e}");
    }
}
