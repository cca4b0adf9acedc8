//! FTPS building blocks for the server: settings, a reloadable certificate, and TLS
//! acceptors bound to one control session.
//!
//! # Data connections bound to their own session
//!
//! Every control session gets its own [`SessionTls`]: a rustls [`ServerConfig`] that shares
//! the server's certificate resolver ([`CertResolver`]) but has a session cache and a ticket
//! key of its own, used for that session's control connection and for its data connections
//! only. A TLS session (TLS 1.2 session id or ticket, TLS 1.3 ticket) issued on one control
//! session is unknown to every other session's cache and does not decrypt under any other
//! session's ticket key, so a data connection that offers it gets a full handshake, which
//! [`SessionTls::accept_data`] refuses when reuse is required ([`SessionReuse::Required`]):
//! a data connection must *resume its own control session's* TLS session, not just *a*
//! session. That closes the port theft that the address check cannot (a thief behind the
//! same NAT as the client).
//!
//! rustls resumes TLS 1.2 through session ids ([`ServerConfig::session_storage`], looked
//! up, reusable) and tickets ([`ServerConfig::ticketer`]); TLS 1.3 through tickets, which
//! are single-use when they come from the session storage and reusable when they are
//! encrypted by a ticketer. FTP clients built on OpenSSL or GnuTLS offer the same ticket for
//! every data connection, so each session has its own ticketer (stateless, reusable
//! tickets) and its own small session cache (TLS 1.2 session ids). See docs/FTPS.md.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::{HandshakeKind, ProtocolVersion, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::cert_reader::{self, CertReader};

/// What a session must protect with TLS (`tls_required`, `--tls-required`), like vsftpd's
/// `force_local_logins_ssl` / `force_local_data_ssl` and ProFTPD's `TLSRequired`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TlsRequired {
    /// Nothing (the default): plaintext sessions are served as before.
    #[default]
    None,
    /// USER and PASS are refused before AUTH TLS.
    Login,
    /// Transfers are refused without PROT P.
    Data,
    /// Both.
    All,
}

impl TlsRequired {
    /// Whether USER/PASS need a TLS control connection.
    pub fn login(self) -> bool {
        matches!(self, TlsRequired::Login | TlsRequired::All)
    }

    /// Whether transfers need PROT P.
    pub fn data(self) -> bool {
        matches!(self, TlsRequired::Data | TlsRequired::All)
    }

    /// The name used in the TOML file and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            TlsRequired::None => "none",
            TlsRequired::Login => "login",
            TlsRequired::Data => "data",
            TlsRequired::All => "all",
        }
    }
}

impl FromStr for TlsRequired {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "none" | "off" => Ok(TlsRequired::None),
            "login" | "control" => Ok(TlsRequired::Login),
            "data" => Ok(TlsRequired::Data),
            "all" | "both" => Ok(TlsRequired::All),
            _ => Err(format!(
                "unknown tls_required {s:?} (none, login, data or all)"
            )),
        }
    }
}

impl fmt::Display for TlsRequired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether a protected data connection must resume its control session's TLS session
/// (`tls_session_reuse`, `--tls-session-reuse`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SessionReuse {
    /// A data connection whose handshake did not resume a TLS session of its own control
    /// session is refused (the default).
    #[default]
    Required,
    /// Any successful handshake is accepted (for clients that never resume, such as
    /// Python's `ftplib.FTP_TLS` unless told to).
    Off,
}

impl SessionReuse {
    /// The name used in the TOML file and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            SessionReuse::Required => "required",
            SessionReuse::Off => "off",
        }
    }
}

impl FromStr for SessionReuse {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "required" | "on" | "yes" => Ok(SessionReuse::Required),
            "off" | "no" => Ok(SessionReuse::Off),
            _ => Err(format!("unknown tls_session_reuse {s:?} (required or off)")),
        }
    }
}

impl fmt::Display for SessionReuse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why TLS could not be set up or a certificate not (re)loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate or key file is unreadable or holds no usable PEM item.
    #[error("{}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The key does not fit the certificate, or rustls refused the configuration.
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    /// A self-signed certificate could not be generated.
    #[error("self-signed certificate: {0}")]
    SelfSigned(String),
    /// The privileged certificate reader could not be started, or exited, or answered out
    /// of step ([`CertResolver::read_through`]).
    #[error("{0}")]
    Reader(String),
}

/// Where the server's certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CertSource {
    /// A PEM certificate chain (leaf first) and a PEM private key (PKCS#8, PKCS#1 or SEC1),
    /// read again on every reload.
    Files {
        /// The chain.
        cert: PathBuf,
        /// The key.
        key: PathBuf,
    },
    /// Generated once at start for these names (development only: no client can verify it).
    SelfSigned {
        /// Subject alternative names (host names or addresses).
        names: Vec<String>,
    },
}

/// The server's certificate, swappable while sessions run: a handshake takes the one in
/// place when it starts; sessions and resumptions keep working across a swap.
pub struct CertResolver {
    current: RwLock<Arc<CertifiedKey>>,
    source: CertSource,
    provider: Arc<CryptoProvider>,
    /// Reads the files for [`CertResolver::reload`] when set (see
    /// [`CertResolver::read_through`]).
    reader: OnceLock<CertReader>,
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertResolver")
            .field("source", &self.source)
            .field("reader", &self.reader.get().map(CertReader::pid))
            .finish_non_exhaustive()
    }
}

/// The crypto provider of every TLS connection of pasv (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl CertResolver {
    /// Loads the certificate from `source` (or generates it).
    pub fn new(source: CertSource) -> Result<CertResolver, TlsError> {
        let provider = provider();
        let key = load(&source, None, &provider)?;
        Ok(CertResolver {
            current: RwLock::new(Arc::new(key)),
            source,
            provider,
            reader: OnceLock::new(),
        })
    }

    /// From now on [`CertResolver::reload`] gets the files' bytes from `reader` (a process
    /// that kept the privileges the server started with, see
    /// [`super::cert_reader`]) instead of opening them itself; the parsing stays here.
    /// Refused when a reader is already in place.
    pub fn read_through(&self, reader: CertReader) -> Result<(), TlsError> {
        self.reader
            .set(reader)
            .map_err(|_| TlsError::Reader("a certificate reader is already in use".to_owned()))
    }

    /// The process id of the certificate reader, when one is in use.
    pub fn reader_pid(&self) -> Option<u32> {
        self.reader.get().map(CertReader::pid)
    }

    /// Where the certificate comes from.
    pub fn source(&self) -> &CertSource {
        &self.source
    }

    /// The certificate new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Reads the files again (through the certificate reader when there is one) and, if
    /// they hold a usable chain and a key that fits it, puts them in place for new
    /// handshakes. On error the certificate in place stays. A self-signed certificate is
    /// kept as it is. Blocking (file reads, or a round trip to the reader).
    pub fn reload(&self) -> Result<(), TlsError> {
        if let CertSource::SelfSigned { .. } = self.source {
            return Ok(());
        }
        let key = load(&self.source, self.reader.get(), &self.provider)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        Ok(())
    }

    /// [`CertResolver::reload`], logged: `info` on success, `error` (and the old
    /// certificate kept) on failure. What `pasvd` does on SIGHUP.
    pub fn reload_logged(&self) {
        match self.reload() {
            Ok(()) => tracing::info!("TLS certificate reloaded"),
            Err(e) => {
                tracing::error!("TLS certificate reload failed, the previous one stays: {e}")
            }
        }
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Reloads `resolver` on every SIGHUP until the runtime stops (call from inside a tokio
/// runtime). A failed reload is logged and keeps the certificate in place.
pub fn reload_on_sighup(resolver: Arc<CertResolver>) -> io::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let resolver = Arc::clone(&resolver);
            // File reads and key parsing: off the runtime's threads.
            let _ = tokio::task::spawn_blocking(move || resolver.reload_logged()).await;
        }
    }))
}

fn file_error(path: &Path, reason: impl fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// The bytes of the certificate and key files: from the reader when there is one,
/// otherwise read here with the privileges the process has now.
fn read_files(
    cert: &Path,
    key: &Path,
    reader: Option<&CertReader>,
) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    match reader {
        Some(reader) => reader.read().map_err(|e| match e {
            cert_reader::ReadError::File { which, reason } => match which {
                cert_reader::Which::Cert => file_error(cert, reason),
                cert_reader::Which::Key => file_error(key, reason),
            },
            cert_reader::ReadError::Reader(reason) => TlsError::Reader(reason),
        }),
        None => Ok((
            cert_reader::read_file(cert).map_err(|e| file_error(cert, e))?,
            cert_reader::read_file(key).map_err(|e| file_error(key, e))?,
        )),
    }
}

/// The certificate chain and key in the PEM texts of the files `cert` and `key` (named in
/// errors): the one place certificate files are parsed.
fn parse(
    cert: &Path,
    key: &Path,
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(cert, e))?;
    if chain.is_empty() {
        return Err(file_error(cert, "no CERTIFICATE in the file"));
    }
    let der = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => file_error(
            key,
            "no PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY in the file",
        ),
        other => file_error(key, other),
    })?;
    Ok((chain, der))
}

fn load(
    source: &CertSource,
    reader: Option<&CertReader>,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let (chain, key) = match source {
        CertSource::Files { cert, key } => {
            let (cert_pem, key_pem) = read_files(cert, key, reader)?;
            parse(cert, key, &cert_pem, &key_pem)?
        }
        CertSource::SelfSigned { names } => {
            let generated = rcgen::generate_simple_self_signed(names.clone())
                .map_err(|e| TlsError::SelfSigned(e.to_string()))?;
            let key =
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(generated.key_pair.serialize_der()));
            (vec![generated.cert.der().clone()], key)
        }
    };
    // `from_der` checks that the key is the one of the leaf certificate.
    Ok(CertifiedKey::from_der(chain, key, provider)?)
}

/// TLS 1.3 tickets sent after each handshake: a client that takes each ticket once (rustls)
/// gets more than it spends on a data connection it does not read.
const TLS13_TICKETS: usize = 4;

/// TLS 1.3 tickets sent after a resumed download's or listing's handshake: one for the one a
/// client that takes each ticket once spent on it (OpenSSL's servers do the same: more
/// tickets only after a full handshake). A client that offers one ticket again and again
/// needs none, and each ticket costs an encryption and a record.
const DOWNLOAD_TICKETS: usize = 1;

/// TLS 1.3 tickets sent on an upload connection of a session whose client spends its tickets
/// (see [`TicketUse`]): two for the one spent on this connection and the one spent on the
/// upload before, which got none.
const UPLOAD_TICKETS: usize = 2;

/// TLS 1.2 sessions a control session's cache keeps (its control connection and its data
/// connections).
const SESSION_CACHE: usize = 16;

/// The server's TLS setup: the certificate and the policy shared by every session; makes
/// each control session's [`SessionTls`].
#[derive(Clone, Debug)]
pub struct TlsServer {
    base: ServerConfig,
    resolver: Arc<CertResolver>,
    reuse: SessionReuse,
    handshake_timeout: Duration,
    /// Bounds the control connection's handshake (see [`TlsServer::control_timeout`]).
    control_handshake_timeout: Duration,
}

/// The control connection's handshake bound for these timeouts: the shorter of the accept
/// and login timeouts (a client that does not finish its handshake holds a place among the
/// sessions not logged in yet), at least one second.
pub(crate) fn control_handshake_timeout(accept: Duration, login: Duration) -> Duration {
    accept.min(login).max(Duration::from_secs(1))
}

impl TlsServer {
    /// TLS 1.2 and 1.3 with rustls' safe defaults, the certificate from `resolver`.
    /// `handshake_timeout` bounds every handshake (for data connections it is part of the
    /// accept: pass the accept timeout).
    pub fn new(
        resolver: Arc<CertResolver>,
        reuse: SessionReuse,
        handshake_timeout: Duration,
    ) -> Result<TlsServer, TlsError> {
        let mut base = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
        base.send_tls13_tickets = TLS13_TICKETS;
        Ok(TlsServer {
            base,
            resolver,
            reuse,
            handshake_timeout,
            control_handshake_timeout: handshake_timeout,
        })
    }

    /// The same with another bound for the control connection's handshake (by default the
    /// handshake timeout).
    pub fn control_timeout(mut self, timeout: Duration) -> TlsServer {
        self.control_handshake_timeout = timeout;
        self
    }

    /// The same, restricted to some protocol versions (tests; a deployment pinning TLS 1.3).
    pub fn with_versions(
        resolver: Arc<CertResolver>,
        reuse: SessionReuse,
        handshake_timeout: Duration,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Result<TlsServer, TlsError> {
        let mut server = TlsServer::new(resolver, reuse, handshake_timeout)?;
        let mut base = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&server.resolver) as Arc<dyn ResolvesServerCert>);
        base.send_tls13_tickets = TLS13_TICKETS;
        server.base = base;
        Ok(server)
    }

    /// The TLS setup of `config`, `None` when it configures no certificate. Loads (or
    /// generates) the certificate: an error names the file and what is wrong with it.
    pub fn from_config(config: &super::Config) -> Result<Option<TlsServer>, super::ServerError> {
        let source = match config.tls_source() {
            Some(source) => source,
            None => return Ok(None),
        };
        let wrap = |e: TlsError| super::ServerError::Config {
            reason: format!("TLS: {e}"),
        };
        if let CertSource::SelfSigned { names } = &source {
            tracing::warn!(
                "TLS with a self-signed certificate for {names:?} (--tls-self-signed): clients \
                 cannot verify it and will refuse it unless told not to verify; for testing \
                 only, use --tls-cert and --tls-key with a real certificate"
            );
        }
        let resolver = Arc::new(CertResolver::new(source).map_err(wrap)?);
        let control = control_handshake_timeout(config.accept_timeout, config.login_timeout);
        TlsServer::new(resolver, config.tls_session_reuse, config.accept_timeout)
            .map(|server| Some(server.control_timeout(control)))
            .map_err(wrap)
    }

    /// Whether the certificate and key files can be read now (call after the switch to
    /// `run_as`, named `account`): SIGHUP reads them again with these privileges. When they
    /// cannot, a warning says that every reload will fail and how to fix it.
    /// Nothing to check when a certificate reader reads the files
    /// ([`CertResolver::read_through`]).
    pub(crate) fn check_readable_as(&self, account: &str) -> bool {
        let CertSource::Files { cert, key } = self.resolver.source() else {
            return true;
        };
        if self.resolver.reader_pid().is_some() {
            return true;
        }
        let mut readable = true;
        for path in [cert, key] {
            if let Err(e) = std::fs::File::open(path) {
                readable = false;
                tracing::warn!(
                    "TLS file {} is not readable by the run_as account {account} ({e}): \
                     a SIGHUP reload will fail and keep the current certificate; start the \
                     certificate reader (pasvd does) or give the file to that account's group \
                     with mode 0640 (see docs/FTPS.md)",
                    path.display()
                );
            }
        }
        readable
    }

    /// The certificate resolver (for [`reload_on_sighup`]).
    pub fn resolver(&self) -> &Arc<CertResolver> {
        &self.resolver
    }

    /// Whether data connections must resume their session's TLS session.
    pub fn reuse(&self) -> SessionReuse {
        self.reuse
    }

    /// The TLS state of a new control session: its own session cache and ticket key, the
    /// shared certificate. Call once per control connection, before its handshake (implicit
    /// FTPS) or at AUTH TLS, and keep it for the session's data connections.
    pub fn session(&self) -> Result<SessionTls, TlsError> {
        let mut config = self.base.clone();
        config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
        config.ticketer = rustls::crypto::ring::Ticketer::new()?;
        Ok(SessionTls {
            acceptor: TlsAcceptor::from(Arc::new(config.clone())),
            control: Arc::new(config),
            tickets: Arc::new(TicketUse::default()),
            reuse: self.reuse,
            handshake_timeout: self.handshake_timeout,
            control_handshake_timeout: self.control_handshake_timeout,
        })
    }
}

/// Why a data connection's TLS handshake was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataTlsError {
    /// The handshake did not finish within the handshake timeout.
    #[error("TLS handshake timed out after {0:?}")]
    Timeout(Duration),
    /// The handshake failed (the peer's alert, a protocol error, the connection closed).
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
    /// The handshake succeeded without resuming a TLS session of this control session and
    /// reuse is required (a client that does not resume, or a connection of another session).
    #[error("TLS session not resumed (data connections must resume their control session's TLS session)")]
    NotResumed {
        /// The protocol version of the refused handshake.
        version: Option<ProtocolVersion>,
    },
}

/// A finished server-side handshake and what it was.
pub struct Accepted<S> {
    /// The TLS stream.
    pub stream: TlsStream<S>,
    /// Whether the handshake resumed a session of this control session.
    pub resumed: bool,
    /// The negotiated protocol version.
    pub version: Option<ProtocolVersion>,
}

impl<S> fmt::Debug for Accepted<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Accepted")
            .field("resumed", &self.resumed)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// The TLS state of one control session: accepts its control connection and its data
/// connections. Dropping it (at the end of the session) forgets its sessions and ticket key.
#[derive(Clone)]
pub struct SessionTls {
    /// The control connection's.
    acceptor: TlsAcceptor,
    /// The control connection's configuration: each data connection gets a copy whose
    /// ticket key and session cache are gated (see [`DataTicketer`], [`NoNewSessions`]).
    control: Arc<ServerConfig>,
    /// Which tickets the session's data connections resumed with (shared by its clones).
    tickets: Arc<TicketUse>,
    reuse: SessionReuse,
    handshake_timeout: Duration,
    control_handshake_timeout: Duration,
}

impl fmt::Debug for SessionTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionTls")
            .field("reuse", &self.reuse)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl SessionTls {
    /// Whether data connections must resume.
    pub fn reuse(&self) -> SessionReuse {
        self.reuse
    }

    async fn handshake<S>(
        &self,
        acceptor: &TlsAcceptor,
        stream: S,
        timeout: Duration,
    ) -> Result<Accepted<S>, DataTlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let stream = tokio::time::timeout(timeout, acceptor.accept(stream))
            .await
            .map_err(|_| DataTlsError::Timeout(timeout))?
            .map_err(DataTlsError::Handshake)?;
        let conn = stream.get_ref().1;
        let resumed = conn.handshake_kind() == Some(HandshakeKind::Resumed);
        let version = conn.protocol_version();
        Ok(Accepted {
            stream,
            resumed,
            version,
        })
    }

    /// The control connection's handshake (implicit FTPS right after accept, explicit after
    /// the 234 reply to AUTH TLS), within the control handshake timeout (see
    /// [`TlsServer::control_timeout`]). Any handshake is accepted.
    pub async fn accept_control<S>(&self, stream: S) -> Result<Accepted<S>, DataTlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.handshake(&self.acceptor, stream, self.control_handshake_timeout)
            .await
    }

    /// A protected data connection's handshake, within the handshake timeout (call it right
    /// after the TCP accept, as part of the accept). With [`SessionReuse::Required`] a
    /// handshake that did not resume a session issued on this control session is refused
    /// (the stream is dropped, which closes the connection).
    pub async fn accept_data<S>(&self, stream: S) -> Result<Accepted<S>, DataTlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.accept_data_with(&self.data_acceptor(false), stream)
            .await
    }

    /// The acceptor of one data connection: the session's certificate, ticket key and
    /// session cache, but it hands out no TLS session of its own unless the connection
    /// resumed one of this session. A full handshake on a data connection — refused when
    /// reuse is required — must not give a thief tickets (TLS 1.3 tickets are sent right
    /// after the handshake, TLS 1.2 tickets and session ids within it, all before the
    /// server sees whether it resumed) with which its next connection would resume this
    /// session. An upload connection (`upload`) gets TLS 1.3 tickets only when its client
    /// spends them (see [`TicketUse`]).
    fn data_acceptor(&self, upload: bool) -> TlsAcceptor {
        let mut config = (*self.control).clone();
        let full = Arc::new(std::sync::atomic::AtomicBool::new(false));
        config.cert_resolver = Arc::new(DataCert {
            inner: Arc::clone(&self.control.cert_resolver),
            full: Arc::clone(&full),
        });
        config.ticketer = Arc::new(DataTicketer {
            inner: Arc::clone(&self.control.ticketer),
            session: Arc::clone(&self.tickets),
            upload,
            decrypted: std::sync::Mutex::new(None),
            full,
            issue: std::sync::OnceLock::new(),
        });
        config.session_storage = Arc::new(NoNewSessions {
            inner: Arc::clone(&self.control.session_storage),
        });
        config.send_tls13_tickets = if upload {
            UPLOAD_TICKETS
        } else {
            DOWNLOAD_TICKETS
        };
        TlsAcceptor::from(Arc::new(config))
    }

    /// [`SessionTls::accept_data`] for a data connection the client only writes to (an
    /// upload). A client that never reads its upload connection closes it with anything the
    /// server sent unread, which makes its kernel reset the connection, and the reset throws
    /// away the end of the upload still waiting in the server's socket (curl 7.88 with
    /// OpenSSL does this). Such clients offer one ticket again and again and get no TLS 1.3
    /// tickets here; a client that spends a ticket per connection (rustls) gets new ones, as
    /// many as it spent (see `TicketUse` in this module), and must read them.
    pub async fn accept_upload<S>(&self, stream: S) -> Result<Accepted<S>, DataTlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.accept_data_with(&self.data_acceptor(true), stream)
            .await
    }

    async fn accept_data_with<S>(
        &self,
        acceptor: &TlsAcceptor,
        stream: S,
    ) -> Result<Accepted<S>, DataTlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut accepted = self
            .handshake(acceptor, stream, self.handshake_timeout)
            .await?;
        if self.reuse == SessionReuse::Required && !accepted.resumed {
            // A close_notify before the close: the client sees the data connection end
            // cleanly and reads the refusal on the control connection (Python's ssl module
            // raises on a bare close before it gets there).
            let _ = tokio::time::timeout(self.handshake_timeout, accepted.stream.shutdown()).await;
            return Err(DataTlsError::NotResumed {
                version: accepted.version,
            });
        }
        Ok(accepted)
    }
}

/// How a session's client uses the tickets it was given, seen from the tickets its data
/// connections resume with. Clients built on OpenSSL or GnuTLS offer one ticket (the newest
/// they read) again and again; rustls clients take each ticket once and throw it away. An
/// upload connection hands out tickets only to the second kind, and only as many as they
/// spent: after a client resumed with two different tickets since the session last issued
/// any. A client of the first kind never does, so it gets nothing it would leave unread.
#[derive(Debug, Default)]
struct TicketUse {
    /// Fingerprints of the tickets resumed since tickets were last issued (at most two are
    /// needed to tell).
    since_issued: std::sync::Mutex<Vec<u64>>,
    /// Keys the fingerprints (tickets are attacker-chosen bytes).
    hasher: std::collections::hash_map::RandomState,
}

impl TicketUse {
    /// A data connection resumed with `ticket`.
    fn resumed(&self, ticket: &[u8]) {
        use std::hash::BuildHasher;
        let print = self.hasher.hash_one(ticket);
        let mut seen = self.since_issued.lock().unwrap_or_else(|e| e.into_inner());
        if !seen.contains(&print) && seen.len() < 2 {
            seen.push(print);
        }
    }

    /// Whether a data connection issues tickets: always for downloads, for uploads only when
    /// the client spends them. Issuing starts the count again.
    fn issue(&self, upload: bool) -> bool {
        let mut seen = self.since_issued.lock().unwrap_or_else(|e| e.into_inner());
        let issue = !upload || seen.len() >= 2;
        if issue {
            seen.clear();
        }
        issue
    }
}

/// The ticket key of one data connection: decrypts with the session's key, and encrypts
/// (issues tickets) only when the connection resumed this session, and on an upload only
/// when the session's client spends tickets ([`TicketUse`]).
///
/// A ticket that decrypts is not a resumption: rustls decrypts each offered ticket before it
/// checks that the ticket fits the handshake (the same server name, cipher suite and
/// extended master secret) and before it checks the PSK binder, which proves the client
/// holds the ticket's secret. A TLS 1.3 ticket identity travels in the clear in the
/// ClientHello, so a port thief that saw one can offer it with another server name: the
/// ticket decrypts, the server goes on with a full handshake, and the tickets issued after
/// it would resume the victim's session on the thief's next connection. A full handshake
/// is told by its signature ([`DataCert`]): tickets only when the connection signed nothing.
/// The ticket's use is counted for [`TicketUse`] only then too.
#[derive(Debug)]
struct DataTicketer {
    inner: Arc<dyn rustls::server::ProducesTickets>,
    session: Arc<TicketUse>,
    upload: bool,
    /// The last ticket offered on this connection that decrypted with the session's key.
    decrypted: std::sync::Mutex<Option<Vec<u8>>>,
    /// Set when the connection's handshake signed with the certificate's key: a full
    /// handshake (see [`DataCert`]).
    full: Arc<std::sync::atomic::AtomicBool>,
    /// Decided at the connection's first ticket, the same for the others.
    issue: std::sync::OnceLock<bool>,
}

impl rustls::server::ProducesTickets for DataTicketer {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    fn lifetime(&self) -> u32 {
        self.inner.lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        // Called once the handshake is done (TLS 1.3), or within its last flight (TLS 1.2),
        // after the server's signature of a full handshake in both.
        if self.full.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        let issue = self.issue.get_or_init(|| {
            let decrypted = self
                .decrypted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            match decrypted {
                Some(ticket) => {
                    self.session.resumed(&ticket);
                    self.session.issue(self.upload)
                }
                // Resumed with nothing of this session (a TLS 1.2 session id): nothing.
                None => false,
            }
        });
        if !*issue {
            return None;
        }
        self.inner.encrypt(plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let plain = self.inner.decrypt(cipher);
        if plain.is_some() {
            *self.decrypted.lock().unwrap_or_else(|e| e.into_inner()) = Some(cipher.to_vec());
        }
        plain
    }
}

/// The certificate of one data connection: the session's, with a key that marks the
/// connection's handshake as a full one as soon as it is asked to sign (a TLS 1.3
/// CertificateVerify, a TLS 1.2 ServerKeyExchange; a resumption signs nothing). See
/// [`DataTicketer`].
#[derive(Debug)]
struct DataCert {
    inner: Arc<dyn ResolvesServerCert>,
    full: Arc<std::sync::atomic::AtomicBool>,
}

impl ResolvesServerCert for DataCert {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let certified = self.inner.resolve(hello)?;
        let mut marked = CertifiedKey::new(
            certified.cert.clone(),
            Arc::new(FullHandshakeKey {
                inner: Arc::clone(&certified.key),
                full: Arc::clone(&self.full),
            }),
        );
        marked.ocsp.clone_from(&certified.ocsp);
        Some(Arc::new(marked))
    }
}

/// A signing key that records that it was asked to sign (see [`DataCert`]).
#[derive(Debug)]
struct FullHandshakeKey {
    inner: Arc<dyn rustls::sign::SigningKey>,
    full: Arc<std::sync::atomic::AtomicBool>,
}

impl rustls::sign::SigningKey for FullHandshakeKey {
    fn choose_scheme(
        &self,
        offered: &[rustls::SignatureScheme],
    ) -> Option<Box<dyn rustls::sign::Signer>> {
        self.full.store(true, std::sync::atomic::Ordering::Relaxed);
        self.inner.choose_scheme(offered)
    }

    fn public_key(&self) -> Option<rustls_pki_types::SubjectPublicKeyInfoDer<'_>> {
        self.inner.public_key()
    }

    fn algorithm(&self) -> rustls::SignatureAlgorithm {
        self.inner.algorithm()
    }
}

/// The session cache as a data connection sees it: TLS 1.2 session ids of the session are
/// found, but a data connection adds none (its full handshake's session id would be
/// resumable by whoever made it).
#[derive(Debug)]
struct NoNewSessions {
    inner: Arc<dyn rustls::server::StoresServerSessions>,
}

impl rustls::server::StoresServerSessions for NoNewSessions {
    fn put(&self, _key: Vec<u8>, _value: Vec<u8>) -> bool {
        false
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.inner.get(key)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.inner.take(key)
    }

    fn can_cache(&self) -> bool {
        false
    }
}

/// Settings of the implicit FTPS listener and the certificate, as shown by
/// `pasvd --check-config` (paths only: a key file's content is never shown).
pub fn describe(
    source: Option<&CertSource>,
    implicit: Option<SocketAddr>,
    required: TlsRequired,
    reuse: SessionReuse,
) -> Vec<(&'static str, String)> {
    let quote = |s: String| format!("{s:?}");
    let none = || "(none)".to_owned();
    let (cert, key, self_signed) = match source {
        Some(CertSource::Files { cert, key }) => (
            quote(cert.display().to_string()),
            format!("{} (content not shown)", quote(key.display().to_string())),
            false,
        ),
        Some(CertSource::SelfSigned { .. }) => (none(), none(), true),
        None => (none(), none(), false),
    };
    vec![
        ("tls_cert", cert),
        ("tls_key", key),
        ("tls_self_signed", self_signed.to_string()),
        (
            "implicit_tls_listen",
            implicit.map_or_else(none, |a| quote(a.to_string())),
        ),
        ("tls_required", quote(required.name().to_owned())),
        ("tls_session_reuse", quote(reuse.name().to_owned())),
    ]
}

#[cfg(test)]
mod control_timeout_tests {
    use super::*;

    #[test]
    fn the_control_handshake_gets_the_shorter_of_accept_and_login_timeouts_at_least_a_second() {
        let s = Duration::from_secs;
        assert_eq!(control_handshake_timeout(s(30), s(60)), s(30));
        assert_eq!(control_handshake_timeout(s(30), s(5)), s(5));
        assert_eq!(
            control_handshake_timeout(Duration::from_millis(200), s(60)),
            s(1)
        );
    }
}

#[cfg(test)]
mod ticket_use_tests {
    use super::TicketUse;

    #[test]
    fn a_client_that_offers_one_ticket_again_gets_no_tickets_on_uploads() {
        // OpenSSL/GnuTLS clients (curl, lftp, Python): the newest ticket, again and again.
        let session = TicketUse::default();
        for _ in 0..5 {
            session.resumed(b"ticket from the control connection");
            assert!(!session.issue(true));
        }
        // A download hands out tickets; the client then offers the newest, again and again.
        session.resumed(b"ticket from the control connection");
        assert!(session.issue(false));
        for _ in 0..5 {
            session.resumed(b"newest ticket from the download");
            assert!(!session.issue(true));
        }
    }

    #[test]
    fn a_client_that_spends_its_tickets_gets_as_many_back_on_uploads() {
        // rustls: each of the control connection's tickets once.
        let session = TicketUse::default();
        let mut issued = Vec::new();
        for n in 0..8u8 {
            session.resumed(&[n; 100]);
            issued.push(session.issue(true));
        }
        // Every second upload hands out two: the stock of tickets stays where it was.
        assert_eq!(issued, [false, true, false, true, false, true, false, true]);
    }

    #[test]
    fn a_single_use_client_holding_one_ticket_never_gets_upload_tickets() {
        // curl with OpenSSL: one ticket, used once; its next data connection after an upload
        // resumes nothing (refused before the ticketer is asked), so no second ticket shows.
        let session = TicketUse::default();
        session.resumed(b"newest");
        assert!(!session.issue(true));
        assert!(session.issue(false), "downloads always hand out tickets");
        session.resumed(b"newer");
        assert!(!session.issue(true));
    }
}
