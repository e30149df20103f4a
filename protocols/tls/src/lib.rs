//! TLS client configuration shared by pitr's database protocols
//! (PostgreSQL and MySQL/MariaDB), written once: rustls with the aws-lc-rs
//! provider, the one provider of the whole binary (the S3 client and the
//! MongoDB driver use it too).
//!
//! What a protocol asks for, in the words both libpq and the MySQL clients
//! use:
//!
//! * encrypt without verifying the certificate (`sslmode=require`,
//!   `ssl-mode=REQUIRED`): any certificate is accepted, but the handshake
//!   signatures are still checked, so the session key is bound to the key
//!   the server presented;
//! * verify the chain against roots (`verify-ca`, `VERIFY_CA`);
//! * verify the chain and the host name (`verify-full`, `VERIFY_IDENTITY`).
//!
//! Roots are a PEM file of CA certificates, or the publicly trusted roots
//! (the bundled Mozilla set of `webpki-roots`). A client certificate and its
//! key (PEM) may be presented. Each protocol names these settings its own
//! way ([`Names`]), so every error names the setting to fix. [`Stream`] is
//! the socket every protocol reads and writes, encrypted or not.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, DigitallySignedStruct, Error as TlsError, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// A TLS session over TCP.
pub type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// The socket of a database connection: TCP, a unix socket, or TLS over TCP.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<TlsStream>),
    /// None (taken out to switch it to TLS): every read and write fails.
    Closed,
}

impl Stream {
    /// True when the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }
}

fn closed() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotConnected, "the connection is closed")
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Closed => Poll::Ready(Err(closed())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }
}

/// Where the certificates a server is verified against come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// A PEM file of CA certificates.
    File(PathBuf),
    /// The publicly trusted roots.
    System,
}

/// How the server's certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verify {
    /// Not at all (encryption only).
    Nothing,
    /// Its chain against `roots`, and with `check_name` its host name.
    Chain { roots: Roots, check_name: bool },
}

/// How a protocol's users name the settings (for error messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Names {
    pub roots: &'static str,
    pub cert: &'static str,
    pub key: &'static str,
}

/// What a connection asks of TLS.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub verify: Verify,
    /// A client certificate chain (PEM) to present.
    pub client_cert: Option<PathBuf>,
    /// Its private key (PEM; default: the certificate's path with `.key`).
    pub client_key: Option<PathBuf>,
    /// The ALPN protocol to offer, if any.
    pub alpn: Option<Vec<u8>>,
    pub names: Names,
}

/// A TLS setting that cannot be used: what is wrong and what to do.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct TlsSetupError {
    pub message: String,
    pub hint: String,
}

fn setup_error(message: String, hint: impl Into<String>) -> TlsSetupError {
    TlsSetupError {
        message,
        hint: hint.into(),
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn root_store(roots: &Roots, names: &Names) -> Result<RootCertStore, TlsSetupError> {
    let mut store = RootCertStore::empty();
    let path = match roots {
        Roots::System => {
            store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            return Ok(store);
        }
        Roots::File(p) => p,
    };
    let what = names.roots;
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| {
        setup_error(
            format!("cannot read {what} {}: {e}", path.display()),
            format!("point {what} at a readable PEM file with the CA certificate(s)"),
        )
    })?;
    for cert in certs {
        let cert = cert.map_err(|e| {
            setup_error(
                format!("invalid certificate in {}: {e}", path.display()),
                format!("{what} must contain PEM certificates"),
            )
        })?;
        store.add(cert).map_err(|e| {
            setup_error(
                format!("unusable certificate in {}: {e}", path.display()),
                format!("{what} must contain valid CA certificates"),
            )
        })?;
    }
    if store.is_empty() {
        return Err(setup_error(
            format!("{what} {} holds no certificate", path.display()),
            format!("point {what} at a PEM file with the CA certificate(s)"),
        ));
    }
    Ok(store)
}

type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// The client certificate chain and key, when a certificate is set.
fn client_identity(s: &TlsSettings) -> Result<Option<Identity>, TlsSetupError> {
    let Some(cert_path) = &s.client_cert else {
        return Ok(None);
    };
    let (cert, key) = (s.names.cert, s.names.key);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            setup_error(
                format!("cannot read {cert} {}: {e}", cert_path.display()),
                format!("point {cert} at a readable PEM file with the client certificate"),
            )
        })?;
    if certs.is_empty() {
        return Err(setup_error(
            format!("{cert} {} holds no certificate", cert_path.display()),
            format!("point {cert} at a PEM file with the client certificate"),
        ));
    }
    let key_path = s
        .client_key
        .clone()
        .unwrap_or_else(|| cert_path.with_extension("key"));
    let private = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| {
        setup_error(
            format!("cannot read {key} {}: {e}", key_path.display()),
            format!("point {key} at the PEM private key of the client certificate"),
        )
    })?;
    Ok(Some((certs, private)))
}

/// Builds the rustls client configuration for `s`.
pub fn client_config(s: &TlsSettings) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match &s.verify {
        Verify::Nothing => Arc::new(NoVerify(provider.clone())),
        Verify::Chain { roots, check_name } => {
            let inner = WebPkiServerVerifier::builder_with_provider(
                Arc::new(root_store(roots, &s.names)?),
                provider.clone(),
            )
            .build()
            .map_err(|e| {
                setup_error(
                    format!("cannot build the certificate verifier: {e}"),
                    format!("check {}", s.names.roots),
                )
            })?;
            Arc::new(WebPki {
                inner,
                check_name: *check_name,
            })
        }
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| {
            setup_error(
                format!("TLS setup failed: {e}"),
                "this is a build problem of pitr",
            )
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client_identity(s)? {
        Some((certs, key)) => config.with_client_auth_cert(certs, key).map_err(|e| {
            setup_error(
                format!(
                    "cannot use the client certificate {} with {}: {e}",
                    s.names.cert, s.names.key
                ),
                format!(
                    "{} must be an X.509 v3 certificate and {} its private key",
                    s.names.cert, s.names.key
                ),
            )
        })?,
        None => config.with_no_client_auth(),
    };
    if let Some(p) = &s.alpn {
        config.alpn_protocols = vec![p.clone()];
    }
    Ok(Arc::new(config))
}

/// Server name for SNI and verification.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsSetupError> {
    ServerName::try_from(host.to_string()).map_err(|_| {
        setup_error(
            format!("{host:?} is not a valid TLS server name"),
            "use a DNS name or an IP address as host",
        )
    })
}

/// Runs the TLS handshake on `tcp` with `config`, verifying as `host`.
pub async fn handshake(
    config: Arc<rustls::ClientConfig>,
    host: &str,
    tcp: TcpStream,
) -> Result<TlsStream, HandshakeError> {
    let name = server_name(host).map_err(HandshakeError::Setup)?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(HandshakeError::Io)
}

/// Why a TLS handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error(transparent)]
    Setup(TlsSetupError),
    /// The handshake itself (a certificate the verification refused comes
    /// as an `InvalidData` error whose inner error is rustls').
    #[error("TLS handshake failed: {0}")]
    Io(std::io::Error),
}

/// Encryption only: accept any certificate, but still check the handshake
/// signatures so the session key is bound to the presented key.
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

/// Web PKI verification, optionally ignoring the name.
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

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: Names = Names {
        roots: "ssl-ca",
        cert: "ssl-cert",
        key: "ssl-key",
    };

    fn settings(verify: Verify) -> TlsSettings {
        TlsSettings {
            verify,
            client_cert: None,
            client_key: None,
            alpn: None,
            names: NAMES,
        }
    }

    #[test]
    fn settings_that_cannot_work_name_what_to_fix() {
        assert!(client_config(&settings(Verify::Nothing)).is_ok());
        let system = Verify::Chain {
            roots: Roots::System,
            check_name: true,
        };
        assert!(client_config(&settings(system)).is_ok());
        let missing = Verify::Chain {
            roots: Roots::File("/nonexistent/ca.pem".into()),
            check_name: true,
        };
        let e = client_config(&settings(missing)).unwrap_err();
        assert!(
            e.message
                .starts_with("cannot read ssl-ca /nonexistent/ca.pem"),
            "{e}"
        );
        let dir = std::env::temp_dir().join(format!("pitr-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = client_config(&settings(Verify::Chain {
            roots: Roots::File(empty.clone()),
            check_name: false,
        }))
        .unwrap_err();
        assert!(e.message.contains("holds no certificate"), "{e}");
        let mut s = settings(Verify::Nothing);
        s.client_cert = Some(empty);
        let e = client_config(&s).unwrap_err();
        assert!(e.message.contains("ssl-cert"), "{e}");
        assert!(server_name("not a host name").is_err());
        assert!(server_name("127.0.0.1").is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
