//! FTPS (RFC 4217) for the client: explicit (`AUTH TLS`) and implicit TLS, certificate
//! verification, and data connections that resume the control connection's TLS session.
//!
//! Each [`Client`](super::Client) builds its own rustls client configuration with its own
//! session store from the shared [`ClientTls`] settings: the data connections of one control
//! session resume the TLS sessions (TLS 1.3 tickets, TLS 1.2 session ids or tickets) that
//! session's server issued, which servers that check resumption require (pasvd, vsftpd with
//! `require_ssl_reuse`, ProFTPD with `TLSOptions` without `NoSessionReuseRequired`).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::ClientError;

/// How the control connection gets TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsMode {
    /// Plaintext connect and greeting, then `AUTH TLS` (RFC 4217; `ftpes://`, `--tls`).
    Explicit,
    /// TLS from the first byte (`ftps://`, port 990 by default).
    Implicit,
}

/// How the server's certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verification {
    /// Against the system's trusted roots (the default), and the host name of the URL.
    SystemRoots,
    /// Against the certificates of this PEM file only (a private CA, a self-signed server),
    /// and the host name of the URL.
    CaFile(PathBuf),
    /// Not at all (any certificate, any name; signatures are still checked): for tests
    /// against servers with throwaway certificates only, since anyone on the path can
    /// read and change the session.
    Insecure,
}

/// FTPS settings of a client, shared by all its control sessions (cheap to clone).
#[derive(Clone)]
pub struct ClientTls {
    mode: TlsMode,
    verifier: Arc<dyn ServerCertVerifier>,
    provider: Arc<CryptoProvider>,
    versions: Vec<&'static SupportedProtocolVersion>,
    protect_data: bool,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("mode", &self.mode)
            .field("versions", &self.versions)
            .field("protect_data", &self.protect_data)
            .finish_non_exhaustive()
    }
}

fn tls_error(what: &'static str, reason: impl fmt::Display) -> ClientError {
    ClientError::Tls {
        what,
        reason: reason.to_string(),
    }
}

/// Certificates of a PEM file (a CA bundle or a server's own certificate).
fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_error("ca file", format!("{}: {e}", path.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error("ca file", format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(tls_error(
            "ca file",
            format!("{}: no CERTIFICATE in the file", path.display()),
        ));
    }
    Ok(certs)
}

impl ClientTls {
    /// Settings for `mode`, verifying as `verification` says; TLS 1.3 and 1.2, data
    /// connections protected (PROT P). Reads the system roots or the CA file now.
    pub fn new(mode: TlsMode, verification: &Verification) -> Result<ClientTls, ClientError> {
        let provider = crate::server::tls::provider();
        let verifier: Arc<dyn ServerCertVerifier> = match verification {
            Verification::Insecure => Arc::new(NoVerification(Arc::clone(&provider))),
            Verification::SystemRoots | Verification::CaFile(_) => {
                let mut roots = RootCertStore::empty();
                if let Verification::CaFile(path) = verification {
                    for cert in read_pem_certs(path)? {
                        roots.add(cert).map_err(|e| {
                            tls_error("ca file", format!("{}: {e}", path.display()))
                        })?;
                    }
                } else {
                    let found = rustls_native_certs::load_native_certs();
                    for error in &found.errors {
                        tracing::debug!(%error, "reading the system's trusted certificates");
                    }
                    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
                    if added == 0 {
                        return Err(tls_error(
                            "system roots",
                            "no trusted certificate found in the system store (install \
                             ca-certificates, or give --ca-file)",
                        ));
                    }
                }
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                    .build()
                    .map_err(|e| tls_error("roots", e))?
            }
        };
        Ok(ClientTls {
            mode,
            verifier,
            provider,
            versions: vec![&rustls::version::TLS13, &rustls::version::TLS12],
            protect_data: true,
        })
    }

    /// Only these protocol versions (for tests, or a server that mishandles one).
    #[must_use]
    pub fn with_versions(mut self, versions: &[&'static SupportedProtocolVersion]) -> ClientTls {
        self.versions = versions.to_vec();
        self
    }

    /// Whether data connections are protected (PROT P, the default) or clear (PROT C after
    /// PBSZ 0: only the login and the commands are encrypted).
    #[must_use]
    pub fn with_protected_data(mut self, protect: bool) -> ClientTls {
        self.protect_data = protect;
        self
    }

    /// How the control connection gets TLS.
    pub fn mode(&self) -> TlsMode {
        self.mode
    }

    /// Whether data connections are protected.
    pub fn protects_data(&self) -> bool {
        self.protect_data
    }

    /// A connector with a session store of its own (one per control session), or, with
    /// `resume` off, one that never resumes.
    pub(crate) fn connector(&self, resume: bool) -> Result<TlsConnector, ClientError> {
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_protocol_versions(&self.versions)
            .map_err(|e| tls_error("configuration", e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::clone(&self.verifier))
            .with_no_client_auth();
        config.resumption = if resume {
            Resumption::in_memory_sessions(8)
        } else {
            Resumption::disabled()
        };
        Ok(TlsConnector::from(Arc::new(config)))
    }
}

/// The TLS state of one control session.
#[derive(Clone)]
pub(crate) struct SessionTls {
    pub(crate) settings: ClientTls,
    /// The connector of the control connection and of the data connections that resume.
    pub(crate) connector: TlsConnector,
    /// The name the certificate must carry and the session store is keyed by (the control
    /// connection's: data connections use it whatever address they connect to).
    pub(crate) name: ServerName<'static>,
    /// Data connections resume (off for the probe's check of the server's policy).
    pub(crate) resume_data: bool,
    /// PROT P is in effect.
    pub(crate) data_protected: bool,
    /// Data handshakes done: full, resumed.
    pub(crate) full: u64,
    pub(crate) resumed: u64,
}

impl fmt::Debug for SessionTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionTls")
            .field("name", &self.name)
            .field("data_protected", &self.data_protected)
            .field("full", &self.full)
            .field("resumed", &self.resumed)
            .finish_non_exhaustive()
    }
}

impl SessionTls {
    pub(crate) fn new(settings: &ClientTls, host: &str) -> Result<SessionTls, ClientError> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| tls_error("server name", format!("{host:?}: {e}")))?;
        Ok(SessionTls {
            connector: settings.connector(true)?,
            settings: settings.clone(),
            name,
            resume_data: true,
            data_protected: false,
            full: 0,
            resumed: 0,
        })
    }

    /// The handshake of a data connection (owning what it needs, so that the caller can read
    /// the control connection meanwhile): the stream, and whether it resumed.
    pub(crate) fn data_handshake(
        &self,
        tcp: TcpStream,
    ) -> Result<impl std::future::Future<Output = Result<(Stream, bool), ClientError>>, ClientError>
    {
        let connector = if self.resume_data {
            self.connector.clone()
        } else {
            self.settings.connector(false)?
        };
        let name = self.name.clone();
        Ok(async move {
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| tls_error("data connection handshake", e))?;
            let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            Ok((Stream::Tls(Box::new(tls)), resumed))
        })
    }

    /// Counts a data handshake.
    pub(crate) fn count(&mut self, resumed: bool) {
        if resumed {
            self.resumed += 1;
        } else {
            self.full += 1;
        }
    }
}

/// A connection, plain or TLS.
#[derive(Debug)]
pub(crate) enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// Taken away by a failed upgrade: every operation fails.
    Gone,
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "connection lost in a TLS handshake",
    )
}

impl Stream {
    /// Whether TLS is on.
    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// Upgrades a plain stream to TLS (AUTH TLS, implicit FTPS).
    pub(crate) async fn upgrade(self, tls: &SessionTls) -> Result<Stream, ClientError> {
        match self {
            Stream::Plain(tcp) => {
                let stream = tls
                    .connector
                    .connect(tls.name.clone(), tcp)
                    .await
                    .map_err(|e| tls_error("control connection handshake", e))?;
                Ok(Stream::Tls(Box::new(stream)))
            }
            tls @ Stream::Tls(_) => Ok(tls),
            Stream::Gone => Err(ClientError::Io(gone())),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Gone => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Gone => Poll::Ready(Err(gone())),
        }
    }
}

/// Accepts any certificate for any name; still checks that the server holds the key of the
/// certificate it sent (the handshake signature). `--insecure`, for tests.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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
