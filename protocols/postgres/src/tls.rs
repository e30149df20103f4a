//! TLS for PostgreSQL connections (rustls with the aws-lc-rs provider, the one provider of the
//! whole binary: the S3 client and the MongoDB driver use it too).
//!
//! PostgreSQL negotiates TLS in-band: the client sends an `SSLRequest`
//! (length 8, code 80877103), the server answers one byte, `S` (go ahead with
//! the TLS handshake on the same socket) or `N` (no TLS). This module builds
//! the rustls client configuration for each `sslmode`:
//! `require` encrypts without verifying the certificate (libpq semantics),
//! `verify-ca` checks the chain against the roots, `verify-full` also checks
//! the host name. Roots come from `sslrootcert` (PEM), else
//! `~/.postgresql/root.crt` when present; as in libpq, verification without
//! either is refused, and `sslrootcert=system` asks for the publicly trusted
//! roots (here the bundled Mozilla set of `webpki-roots`).

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, DigitallySignedStruct, Error as TlsError, RootCertStore, SignatureScheme,
};

use crate::conninfo::{Config, SslMode};
use crate::error::PgError;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn roots(cfg: &Config) -> Result<RootCertStore, PgError> {
    let mut store = RootCertStore::empty();
    let file = cfg.sslrootcert.clone().or_else(|| {
        let p = PathBuf::from(std::env::var_os("HOME")?).join(".postgresql/root.crt");
        p.exists().then_some(p)
    });
    match file {
        Some(path) if path.as_os_str() == "system" => {
            store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(&path).map_err(|e| {
                PgError::config(
                    format!("cannot read sslrootcert {}: {e}", path.display()),
                    "point sslrootcert at a readable PEM file with the CA certificate(s)",
                )
            })?;
            for cert in certs {
                let cert = cert.map_err(|e| {
                    PgError::config(
                        format!("invalid certificate in {}: {e}", path.display()),
                        "sslrootcert must contain PEM certificates",
                    )
                })?;
                store.add(cert).map_err(|e| {
                    PgError::config(
                        format!("unusable certificate in {}: {e}", path.display()),
                        "sslrootcert must contain valid CA certificates",
                    )
                })?;
            }
        }
        None => {
            return Err(PgError::config(
                format!(
                    "sslmode={} needs a root certificate to verify the server against, and neither sslrootcert nor ~/.postgresql/root.crt gives one",
                    cfg.sslmode.as_str()
                ),
                "set sslrootcert=FILE (the CA certificate), sslrootcert=system for the publicly trusted roots, or sslmode=require to encrypt without verifying",
            ))
        }
    }
    Ok(store)
}

/// The client certificate chain and key (`sslcert`, `sslkey`), when a certificate is set.
fn client_identity(
    cfg: &Config,
) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, PgError> {
    let Some(cert_path) = &cfg.sslcert else {
        return Ok(None);
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            PgError::config(
                format!("cannot read sslcert {}: {e}", cert_path.display()),
                "point sslcert at a readable PEM file with the client certificate",
            )
        })?;
    if certs.is_empty() {
        return Err(PgError::config(
            format!("sslcert {} holds no certificate", cert_path.display()),
            "point sslcert at a PEM file with the client certificate",
        ));
    }
    let key_path = cfg
        .sslkey
        .clone()
        .unwrap_or_else(|| cert_path.with_extension("key"));
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| {
        PgError::config(
            format!("cannot read sslkey {}: {e}", key_path.display()),
            "point sslkey at the PEM private key of the client certificate",
        )
    })?;
    Ok(Some((certs, key)))
}

/// Builds the rustls configuration for `cfg.sslmode` (not called for `disable`).
pub(crate) fn client_config(cfg: &Config) -> Result<Arc<rustls::ClientConfig>, PgError> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match cfg.sslmode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => {
            Arc::new(NoVerify(provider.clone()))
        }
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let inner = WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots(cfg)?),
                provider.clone(),
            )
            .build()
            .map_err(|e| {
                PgError::config(
                    format!("cannot build the certificate verifier: {e}"),
                    "check sslrootcert",
                )
            })?;
            Arc::new(WebPki {
                inner,
                check_name: cfg.sslmode == SslMode::VerifyFull,
            })
        }
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| {
            PgError::config(
                format!("TLS setup failed: {e}"),
                "this is a build problem of pitr",
            )
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client_identity(cfg)? {
        Some((certs, key)) => config.with_client_auth_cert(certs, key).map_err(|e| {
            PgError::config(
                format!("cannot use the client certificate sslcert with sslkey: {e}"),
                "sslcert must be an X.509 v3 certificate and sslkey its private key",
            )
        })?,
        None => config.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(Arc::new(config))
}

/// Server name for SNI / verification.
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, PgError> {
    ServerName::try_from(host.to_string()).map_err(|_| {
        PgError::config(
            format!("{host:?} is not a valid TLS server name"),
            "use a DNS name or an IP address as host",
        )
    })
}

/// `sslmode=require`: encrypt, accept any certificate, but still check the
/// handshake signatures so the session key is bound to the presented key.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca` / `verify-full`: web PKI verification, optionally ignoring the name.
#[derive(Debug)]
struct WebPki {
    inner: Arc<WebPkiServerVerifier>,
    check_name: bool,
}

impl ServerCertVerifier for WebPki {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(TlsError::InvalidCertificate(CertificateError::NotValidForName))
            | Err(TlsError::InvalidCertificate(CertificateError::NotValidForNameContext {
                ..
            })) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
