//! The control connection and the commands sent on it.

use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use bytes::BytesMut;
use pasv_protocol::{
    Argument, Command, EpsvArg, Password, Reply, ReplyClass, ReplyCode, ReplyDecoder, TransferType,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use super::data::{Download, Upload};
use super::listing::{parse_mlsd, MlsdEntry};
use super::retry::Backoff;
use super::tls::{ClientTls, SessionTls, Stream, TlsMode};
use super::{ClientError, FtpUrl, RetryPolicy};
use crate::clock;

/// How the data connection is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DataMode {
    /// EPSV (RFC 2428) first; once the server refuses it, PASV for the rest of the connection.
    #[default]
    Auto,
    /// PASV only (RFC 959): one round trip less against servers known to lack EPSV.
    Pasv,
    /// EPSV only.
    Epsv,
    /// Active mode: the client listens and sends PORT (IPv4) or EPRT (IPv6).
    Active,
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// How data connections are set up.
    pub data_mode: DataMode,
    /// Connect to the address a 227 reply advertises instead of the control connection's
    /// peer. Off by default: curl, ftplib and commons-net all ignore the advertised address,
    /// which is often private (behind NAT) or hostile (a bounce to a third host).
    pub trust_pasv_ip: bool,
    /// Retries of 421 greetings, 425 and 426.
    pub retry: RetryPolicy,
    /// Limit for the TCP connect of the control connection.
    pub connect_timeout: Duration,
    /// Limit for each reply.
    pub reply_timeout: Duration,
    /// Limit for the final reply to a command, counted from the start of the wait, across any
    /// number of preliminary 1xx replies: a server that sends `120` every second forever
    /// fails with [`ClientError::Timeout`] once it is reached.
    pub final_reply_timeout: Duration,
    /// Limit for opening a data connection (connect in passive mode, accept in active mode).
    pub data_timeout: Duration,
    /// Limit for each read and write on a data connection without progress; it starts again
    /// with every byte moved. A passive data connection that the server never accepts, or
    /// accepts and then leaves silent, ends the transfer with [`ClientError::Timeout`].
    pub stall_timeout: Duration,
    /// SO_RCVBUF and SO_SNDBUF for data sockets; `None` (the default) leaves Linux's
    /// autotuning on, which a fixed size disables. Measured on loopback (one 64 MiB download
    /// from pasvd): autotuning 1.6 GiB/s, 256 KiB 1.55 GiB/s, 1 to 4 MiB 1.6 GiB/s.
    /// `pasv` itself moves data through 256 KiB application buffers either way.
    pub data_socket_buffer: Option<u32>,
    /// Send `TYPE I` after login, so that SIZE and REST count bytes (RFC 3659 section 4).
    pub binary: bool,
    /// FTPS: `None` (the default) speaks plain FTP.
    pub tls: Option<ClientTls>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            data_mode: DataMode::Auto,
            trust_pasv_ip: false,
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(10),
            reply_timeout: Duration::from_secs(30),
            final_reply_timeout: Duration::from_secs(30),
            data_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(30),
            data_socket_buffer: None,
            binary: true,
            tls: None,
        }
    }
}

impl ClientConfig {
    /// A client that measures a server rather than gets files from it: no retries, so that
    /// every refusal is counted, and one limit for the connect, each reply and each data
    /// connection.
    pub(crate) fn measuring(data_mode: DataMode, timeout: Duration) -> ClientConfig {
        ClientConfig {
            data_mode,
            retry: RetryPolicy::none(),
            ..ClientConfig::default().with_timeout(timeout)
        }
    }

    /// One limit for the connect, each reply, the final reply after 1xx replies, opening a
    /// data connection and each stall of a data connection (what `pasv --timeout` sets).
    pub fn with_timeout(self, timeout: Duration) -> ClientConfig {
        ClientConfig {
            connect_timeout: timeout,
            reply_timeout: timeout,
            final_reply_timeout: timeout,
            data_timeout: timeout,
            stall_timeout: timeout,
            ..self
        }
    }
}

/// Which listing command to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListCommand {
    /// LIST: human-readable lines, format up to the server.
    List,
    /// NLST: one name per line.
    Nlst,
    /// MLSD (RFC 3659): machine-readable facts per entry.
    Mlsd,
}

/// A logged-in (or about to be) FTP control connection.
///
/// Every method sends one command, or a short fixed sequence, and waits for the final reply.
/// Transfers return a [`Download`] or [`Upload`] that borrows the client, so no other command
/// can be sent while a data connection is open.
#[derive(Debug)]
pub struct Client {
    stream: Stream,
    tls: Option<SessionTls>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    decoder: ReplyDecoder,
    config: ClientConfig,
    peer: SocketAddr,
    local: SocketAddr,
    greeting: Reply,
    epsv_refused: bool,
    last_data_addr: Option<SocketAddr>,
    broken: bool,
    pub(crate) unread_final_reply: bool,
}

enum PendingData {
    Connected(TcpStream),
    Listening(TcpListener),
}

impl Client {
    /// Connects to `host:port` and reads the greeting, retrying a 421 greeting within the
    /// retry policy.
    pub async fn connect(
        host: &str,
        port: u16,
        config: ClientConfig,
    ) -> Result<Client, ClientError> {
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&authority).await?.collect();
        if addrs.is_empty() {
            return Err(ClientError::NoAddress(host.to_owned()));
        }
        let mut backoff = Backoff::new(config.retry);
        loop {
            match Client::connect_once(&addrs, host, config.clone()).await {
                Ok(client) => return Ok(client),
                Err(e) => backoff.retry(e).await?,
            }
        }
    }

    /// Connects to a resolved address and reads the greeting, without retries.
    pub async fn connect_addr(
        addr: SocketAddr,
        config: ClientConfig,
    ) -> Result<Client, ClientError> {
        Client::connect_once(&[addr], &addr.ip().to_string(), config).await
    }

    /// Connects to the URL's host, reads the greeting and logs in (anonymously when the URL
    /// names no user), retrying a 421 at either step within the retry policy.
    pub async fn open(url: &FtpUrl, config: ClientConfig) -> Result<Client, ClientError> {
        let mut backoff = Backoff::new(config.retry);
        Client::open_with(url, config, &mut backoff).await
    }

    /// [`Client::open`] within an operation's retry state.
    pub(crate) async fn open_with(
        url: &FtpUrl,
        config: ClientConfig,
        backoff: &mut Backoff,
    ) -> Result<Client, ClientError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(url.authority()).await?.collect();
        if addrs.is_empty() {
            return Err(ClientError::NoAddress(url.host().to_owned()));
        }
        loop {
            let attempt = async {
                let mut client = Client::connect_once(&addrs, url.host(), config.clone()).await?;
                client.login(url.user(), url.password()).await?;
                Ok::<_, ClientError>(client)
            };
            match attempt.await {
                Ok(client) => return Ok(client),
                Err(e) => backoff.retry(e).await?,
            }
        }
    }

    async fn connect_once(
        addrs: &[SocketAddr],
        host: &str,
        config: ClientConfig,
    ) -> Result<Client, ClientError> {
        let mut last = None;
        for &addr in addrs {
            match tokio::time::timeout(config.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => return Client::handshake(stream, host, config).await,
                Ok(Err(e)) => last = Some(ClientError::Io(e)),
                Err(_) => last = Some(ClientError::Timeout("connect")),
            }
        }
        Err(last.unwrap_or(ClientError::Closed))
    }

    async fn handshake(
        stream: TcpStream,
        host: &str,
        config: ClientConfig,
    ) -> Result<Client, ClientError> {
        // Commands are small and each waits for its reply: Nagle's algorithm would only add
        // delay (up to the peer's delayed-ACK timer) to every round trip.
        stream.set_nodelay(true)?;
        let peer = stream.peer_addr()?;
        let local = stream.local_addr()?;
        let tls = match &config.tls {
            Some(settings) => Some(SessionTls::new(settings, host)?),
            None => None,
        };
        let mut stream = Stream::Plain(stream);
        if let Some(tls) = tls
            .as_ref()
            .filter(|t| t.settings.mode() == TlsMode::Implicit)
        {
            stream = tokio::time::timeout(config.reply_timeout, stream.upgrade(tls))
                .await
                .map_err(|_| ClientError::Timeout("TLS handshake"))??;
        }
        let mut client = Client {
            stream,
            tls,
            rbuf: BytesMut::with_capacity(4096),
            wbuf: BytesMut::with_capacity(512),
            decoder: ReplyDecoder::new(),
            config,
            peer,
            local,
            greeting: Reply::new(ReplyCode::SERVICE_READY, ""),
            epsv_refused: false,
            last_data_addr: None,
            broken: false,
            unread_final_reply: false,
        };
        // RFC 959 section 5.4: 120 (ready in nnn minutes) may precede 220.
        let greeting = client.read_final_reply().await?;
        if greeting.code() != ReplyCode::SERVICE_READY {
            return Err(ClientError::from_reply("greeting", greeting));
        }
        client.greeting = greeting;
        if client.tls.is_some() && !client.stream.is_tls() {
            client.auth_tls().await?;
        }
        Ok(client)
    }

    /// AUTH TLS (RFC 4217 section 4), then the control connection's handshake.
    async fn auth_tls(&mut self) -> Result<(), ClientError> {
        self.expect(&Command::Auth(Argument::new(b"TLS".to_vec())?), |c| {
            c == 234
        })
        .await?;
        let Some(tls) = &self.tls else {
            return Ok(());
        };
        // Nothing may follow 234 in the clear: whatever was read after it is dropped.
        self.rbuf.clear();
        let plain = std::mem::replace(&mut self.stream, Stream::Gone);
        let upgraded = tokio::time::timeout(self.config.reply_timeout, plain.upgrade(tls)).await;
        match upgraded {
            Ok(Ok(stream)) => {
                self.stream = stream;
                Ok(())
            }
            Ok(Err(e)) => {
                self.broken = true;
                Err(e)
            }
            Err(_) => {
                self.broken = true;
                Err(ClientError::Timeout("TLS handshake"))
            }
        }
    }

    /// PBSZ 0 and PROT P (or C): after login, as curl does (some servers want a user first).
    async fn protect_data(&mut self) -> Result<(), ClientError> {
        let Some(protect) = self.tls.as_ref().map(|t| t.settings.protects_data()) else {
            return Ok(());
        };
        self.expect(&Command::Pbsz(Argument::new(b"0".to_vec())?), |c| c == 200)
            .await?;
        let level: &[u8] = if protect { b"P" } else { b"C" };
        self.expect(&Command::Prot(Argument::new(level.to_vec())?), |c| c == 200)
            .await?;
        if let Some(tls) = &mut self.tls {
            tls.data_protected = protect;
        }
        Ok(())
    }

    /// Whether the control connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    /// Data connection handshakes so far: `(full, resumed)` (both 0 without PROT P).
    pub fn data_handshakes(&self) -> (u64, u64) {
        self.tls.as_ref().map_or((0, 0), |t| (t.full, t.resumed))
    }

    /// Whether protected data connections resume the control connection's TLS session (on
    /// by default). Off, each one makes a full handshake: how `pasv probe` finds out whether
    /// a server requires resumption.
    pub fn set_data_resumption(&mut self, resume: bool) {
        if let Some(tls) = &mut self.tls {
            tls.resume_data = resume;
        }
    }

    /// Logs in with USER, then PASS when asked (331), then `TYPE I` when configured.
    pub async fn login(&mut self, user: &str, password: &str) -> Result<(), ClientError> {
        let reply = self
            .command(&Command::User(Argument::new(user.as_bytes().to_vec())?))
            .await?;
        match reply.code().get() {
            230 => {}
            331 => {
                let pass = Password::new(password.as_bytes().to_vec())?;
                let reply = self.command(&Command::Pass(pass)).await?;
                if !matches!(reply.code().get(), 230 | 202) {
                    return Err(ClientError::from_reply("PASS", reply));
                }
            }
            _ => return Err(ClientError::from_reply("USER", reply)),
        }
        if self.config.binary {
            self.expect(&Command::Type(TransferType::Image), |c| c == 200)
                .await?;
        }
        self.protect_data().await
    }

    /// The server's greeting.
    pub fn greeting(&self) -> &Reply {
        &self.greeting
    }

    /// The control connection's peer (the server).
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The control connection's local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The settings in use.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Whether the server refused EPSV on this connection (so PASV is used from now on).
    pub fn epsv_refused(&self) -> bool {
        self.epsv_refused
    }

    /// The address of the last passive data connection the server offered (as connected to,
    /// after the control-peer policy).
    pub fn last_data_addr(&self) -> Option<SocketAddr> {
        self.last_data_addr
    }

    /// Sends one command and returns its final reply, whatever its code (preliminary 1xx
    /// replies are skipped).
    pub async fn command(&mut self, command: &Command) -> Result<Reply, ClientError> {
        self.skip_abandoned_reply().await?;
        self.send(command).await?;
        self.read_final_reply().await
    }

    /// Reads the final reply of a transfer that was dropped without `finish`, so that the
    /// next command does not take it for its own.
    async fn skip_abandoned_reply(&mut self) -> Result<(), ClientError> {
        if self.unread_final_reply {
            self.unread_final_reply = false;
            let reply = self.read_final_reply().await?;
            tracing::debug!(%reply, "skipped the final reply of an abandoned transfer");
        }
        Ok(())
    }

    /// Sends one command and returns its reply when `accept(code)`, an error otherwise.
    async fn expect(
        &mut self,
        command: &Command,
        accept: impl Fn(u16) -> bool,
    ) -> Result<Reply, ClientError> {
        let reply = self.command(command).await?;
        if accept(reply.code().get()) {
            Ok(reply)
        } else {
            Err(ClientError::from_reply(command.verb(), reply))
        }
    }

    /// Whether the control connection is unusable: a read or write failed, it timed out, the
    /// server closed it or said 421 (closing). Only [`Client::quit`] or dropping is left.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Checks, without waiting, whether the server has closed the control connection (or sent
    /// something unasked, kept for the next read), and returns whether it is still usable.
    /// Servers that end a session after a failure ("500 OOPS" from vsftpd) close right after
    /// their reply; this tells so before the next command fails.
    pub fn check_connection(&mut self) -> bool {
        if self.broken {
            return false;
        }
        self.rbuf.reserve(4096);
        let spare = self.rbuf.capacity() - self.rbuf.len();
        let start = self.rbuf.len();
        self.rbuf.resize(start + spare, 0);
        let read = match &mut self.stream {
            Stream::Plain(tcp) => tcp.try_read(&mut self.rbuf[start..]),
            Stream::Gone => Err(std::io::ErrorKind::NotConnected.into()),
            tls @ Stream::Tls(_) => {
                // Polled once with a waker that does nothing: ready data or EOF, or nothing.
                let mut buf = tokio::io::ReadBuf::new(&mut self.rbuf[start..]);
                let mut cx = std::task::Context::from_waker(futures_util::task::noop_waker_ref());
                match std::pin::Pin::new(tls).poll_read(&mut cx, &mut buf) {
                    std::task::Poll::Ready(Ok(())) => Ok(buf.filled().len()),
                    std::task::Poll::Ready(Err(e)) => Err(e),
                    std::task::Poll::Pending => Err(std::io::ErrorKind::WouldBlock.into()),
                }
            }
        };
        match read {
            Ok(0) => {
                self.rbuf.truncate(start);
                self.broken = true;
            }
            Ok(n) => self.rbuf.truncate(start + n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => self.rbuf.truncate(start),
            Err(_) => {
                self.rbuf.truncate(start);
                self.broken = true;
            }
        }
        !self.broken
    }

    /// Writes one command on the control connection.
    pub async fn send(&mut self, command: &Command) -> Result<(), ClientError> {
        self.wbuf.clear();
        command.encode(&mut self.wbuf);
        let write = async {
            self.stream.write_all(&self.wbuf).await?;
            self.stream.flush().await
        };
        if let Err(e) = write.await {
            self.broken = true;
            return Err(e.into());
        }
        Ok(())
    }

    /// Reads the next reply, preliminary or not.
    pub async fn read_reply(&mut self) -> Result<Reply, ClientError> {
        self.read_reply_before(None).await
    }

    /// Reads the next reply within the reply timeout, and before `deadline` when given.
    async fn read_reply_before(
        &mut self,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Reply, ClientError> {
        let result = self.read_reply_inner(deadline).await;
        match &result {
            Ok(reply) if reply.code() == ReplyCode::SERVICE_NOT_AVAILABLE => self.broken = true,
            Ok(_) | Err(ClientError::Malformed(_)) => {}
            Err(_) => self.broken = true,
        }
        result
    }

    async fn read_reply_inner(
        &mut self,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Reply, ClientError> {
        let per_reply = clock::now() + self.config.reply_timeout;
        let (until, what) = match deadline {
            Some(d) if d < per_reply => (d, "the final reply"),
            _ => (per_reply, "reply"),
        };
        loop {
            if let Some(reply) = self.decoder.decode(&mut self.rbuf)? {
                return Ok(reply);
            }
            self.rbuf.reserve(4096);
            let read = tokio::time::timeout_at(until, self.stream.read_buf(&mut self.rbuf))
                .await
                .map_err(|_| ClientError::Timeout(what))??;
            if read == 0 {
                return match self.decoder.decode_eof(&mut self.rbuf)? {
                    Some(reply) => Ok(reply),
                    None => Err(ClientError::Closed),
                };
            }
        }
    }

    /// Reads replies until one is not preliminary (1xx), within
    /// [`ClientConfig::final_reply_timeout`] in all.
    pub async fn read_final_reply(&mut self) -> Result<Reply, ClientError> {
        let deadline = clock::now() + self.config.final_reply_timeout;
        loop {
            let reply = self.read_reply_before(Some(deadline)).await?;
            if reply.code().class() != ReplyClass::PositivePreliminary {
                return Ok(reply);
            }
        }
    }

    /// Asks for a passive data address (EPSV or PASV after the data mode and what the server
    /// refused before) without connecting to it. The address is the control peer's with the
    /// offered port, or the advertised one with `trust_pasv_ip`.
    pub async fn request_passive(&mut self) -> Result<SocketAddr, ClientError> {
        let use_epsv = match self.config.data_mode {
            DataMode::Epsv => true,
            DataMode::Auto => !self.epsv_refused,
            DataMode::Pasv | DataMode::Active => false,
        };
        if use_epsv {
            let reply = self.command(&Command::Epsv(EpsvArg::Any)).await?;
            let code = reply.code();
            if code == ReplyCode::ENTERING_EXTENDED_PASSIVE {
                match reply.epsv_port() {
                    Ok(port) => {
                        return Ok(self.note_data_addr(SocketAddr::new(self.peer.ip(), port)))
                    }
                    Err(e) if self.config.data_mode == DataMode::Epsv => return Err(e.into()),
                    Err(_) => {}
                }
            } else if code.is_transient() || self.config.data_mode == DataMode::Epsv {
                // 4xx is "not now" (our pool says 425 when exhausted), not "unsupported".
                return Err(ClientError::from_reply("EPSV", reply));
            }
            // RFC 2428 section 4 leaves "unsupported" to any other answer: fall back once and
            // remember, as curl does.
            tracing::debug!(%reply, "EPSV refused, using PASV from now on");
            self.epsv_refused = true;
        }
        let reply = self.command(&Command::Pasv).await?;
        if reply.code() != ReplyCode::ENTERING_PASSIVE {
            return Err(ClientError::from_reply("PASV", reply));
        }
        let advertised = reply.pasv_addr()?;
        let ip = if self.config.trust_pasv_ip && !advertised.ip().is_unspecified() {
            IpAddr::V4(*advertised.ip())
        } else {
            self.peer.ip()
        };
        Ok(self.note_data_addr(SocketAddr::new(ip, advertised.port())))
    }

    /// Like [`Client::last_data_addr`], and forgets it, so that the next call tells whether a
    /// new passive reply came in between.
    pub fn take_last_data_addr(&mut self) -> Option<SocketAddr> {
        self.last_data_addr.take()
    }

    fn note_data_addr(&mut self, addr: SocketAddr) -> SocketAddr {
        self.last_data_addr = Some(addr);
        addr
    }

    async fn connect_data(&self, addr: SocketAddr) -> Result<TcpStream, ClientError> {
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        if let Some(size) = self.config.data_socket_buffer {
            socket.set_recv_buffer_size(size)?;
            socket.set_send_buffer_size(size)?;
        }
        match tokio::time::timeout(self.config.data_timeout, socket.connect(addr)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(ClientError::Timeout("data connection")),
        }
    }

    async fn listen_active(&mut self) -> Result<TcpListener, ClientError> {
        let socket = match self.local {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        if let Some(size) = self.config.data_socket_buffer {
            socket.set_recv_buffer_size(size)?;
            socket.set_send_buffer_size(size)?;
        }
        socket.bind(SocketAddr::new(self.local.ip(), 0))?;
        let listener = socket.listen(1)?;
        let addr = listener.local_addr()?;
        let command = match addr {
            SocketAddr::V4(v4) => Command::Port(SocketAddrV4::new(*v4.ip(), v4.port())),
            SocketAddr::V6(_) => Command::Eprt(addr),
        };
        self.expect(&command, |c| c == 200).await?;
        Ok(listener)
    }

    async fn accept_data(&self, listener: TcpListener) -> Result<TcpStream, ClientError> {
        let server_ip = self.peer.ip();
        let accept = async {
            loop {
                let (stream, from) = listener.accept().await?;
                // Only the server may connect: anyone else racing for the port is dropped,
                // and we keep waiting for the real one.
                if from.ip() == server_ip {
                    return Ok::<_, ClientError>(stream);
                }
                tracing::warn!(%from, "dropped data connection from a foreign address");
            }
        };
        tokio::time::timeout(self.config.data_timeout, accept)
            .await
            .map_err(|_| ClientError::Timeout("data connection"))?
    }

    /// Opens a data connection, sends `command` (after `REST offset` when given) and waits for
    /// the preliminary reply, retrying 425 and 426 within the retry policy. Returns the data
    /// stream and, for a server that skipped 1xx, the final reply already read.
    async fn start_transfer(
        &mut self,
        command: &Command,
        offset: Option<u64>,
        backoff: &mut Backoff,
    ) -> Result<(Stream, Option<Reply>), ClientError> {
        loop {
            match self.try_start_transfer(command, offset).await {
                Ok(started) => return Ok(started),
                Err(e) => backoff.retry(e).await?,
            }
        }
    }

    async fn try_start_transfer(
        &mut self,
        command: &Command,
        offset: Option<u64>,
    ) -> Result<(Stream, Option<Reply>), ClientError> {
        let pending = if self.config.data_mode == DataMode::Active {
            PendingData::Listening(self.listen_active().await?)
        } else {
            let addr = self.request_passive().await?;
            PendingData::Connected(self.connect_data(addr).await?)
        };
        if let Some(offset) = offset {
            // After PASV, not before: some servers forget the restart point on PASV.
            self.expect(&Command::Rest(offset), |c| c == 350).await?;
        }
        self.send(command).await?;
        let protected = self.tls.as_ref().is_some_and(|t| t.data_protected);
        let (reply, stream) = match pending {
            PendingData::Connected(tcp) if protected => {
                // The handshake runs while the preliminary reply is awaited: servers differ
                // on whether they send 150 before or after the data connection's handshake.
                let handshake = match &self.tls {
                    Some(tls) => tls.data_handshake(tcp)?,
                    None => return Err(ClientError::Closed),
                };
                let mut handshake =
                    std::pin::pin!(tokio::time::timeout(self.config.data_timeout, handshake));
                let mut done = None;
                let reply = tokio::select! {
                    reply = self.read_reply() => reply?,
                    finished = &mut handshake => {
                        done = Some(finished);
                        self.read_reply().await?
                    }
                };
                if !matches!(
                    reply.code().class(),
                    ReplyClass::PositivePreliminary | ReplyClass::PositiveCompletion
                ) {
                    return Err(ClientError::from_reply(command.verb(), reply));
                }
                let finished = match done {
                    Some(finished) => finished,
                    None => handshake.await,
                };
                let (stream, resumed) = finished
                    .map_err(|_| ClientError::Timeout("data connection TLS handshake"))??;
                if let Some(tls) = &mut self.tls {
                    tls.count(resumed);
                }
                (reply, stream)
            }
            PendingData::Connected(tcp) => (self.read_reply().await?, Stream::Plain(tcp)),
            PendingData::Listening(listener) => {
                let reply = self.read_reply().await?;
                if !matches!(
                    reply.code().class(),
                    ReplyClass::PositivePreliminary | ReplyClass::PositiveCompletion
                ) {
                    return Err(ClientError::from_reply(command.verb(), reply));
                }
                let tcp = self.accept_data(listener).await?;
                let stream = match &self.tls {
                    Some(tls) if protected => {
                        let handshake = tls.data_handshake(tcp)?;
                        let (stream, resumed) =
                            tokio::time::timeout(self.config.data_timeout, handshake)
                                .await
                                .map_err(|_| {
                                    ClientError::Timeout("data connection TLS handshake")
                                })??;
                        if let Some(tls) = &mut self.tls {
                            tls.count(resumed);
                        }
                        stream
                    }
                    _ => Stream::Plain(tcp),
                };
                (reply, stream)
            }
        };
        let early_final = match reply.code().class() {
            ReplyClass::PositivePreliminary => None,
            // A server may answer an empty listing with 226 and no 150.
            ReplyClass::PositiveCompletion => Some(reply),
            _ => return Err(ClientError::from_reply(command.verb(), reply)),
        };
        Ok((stream, early_final))
    }

    /// Reads the final reply of a transfer and checks it is 2xx.
    pub(crate) async fn finish_transfer(
        &mut self,
        verb: &str,
        early_final: Option<Reply>,
    ) -> Result<Reply, ClientError> {
        let reply = match early_final {
            Some(reply) => reply,
            None => self.read_final_reply().await?,
        };
        if reply.code().class() == ReplyClass::PositiveCompletion {
            Ok(reply)
        } else {
            Err(ClientError::from_reply(verb, reply))
        }
    }

    /// Starts a download of `path` from byte `offset` (REST when non-zero).
    pub async fn retrieve(
        &mut self,
        path: impl AsRef<[u8]>,
        offset: u64,
    ) -> Result<Download<'_>, ClientError> {
        let mut backoff = Backoff::new(self.config.retry);
        self.retrieve_with(path, offset, &mut backoff).await
    }

    /// [`Client::retrieve`] within an operation's retry state.
    pub(crate) async fn retrieve_with(
        &mut self,
        path: impl AsRef<[u8]>,
        offset: u64,
        backoff: &mut Backoff,
    ) -> Result<Download<'_>, ClientError> {
        let command = Command::Retr(argument(path)?);
        let (stream, early) = self
            .start_transfer(&command, (offset > 0).then_some(offset), backoff)
            .await?;
        Ok(Download::new(self, stream, early, "RETR"))
    }

    /// Starts a listing; read it from the returned stream.
    pub async fn list_stream(
        &mut self,
        kind: ListCommand,
        path: Option<&[u8]>,
    ) -> Result<Download<'_>, ClientError> {
        let arg = path.filter(|p| !p.is_empty()).map(argument).transpose()?;
        let (command, verb) = match kind {
            ListCommand::List => (Command::List(arg), "LIST"),
            ListCommand::Nlst => (Command::Nlst(arg), "NLST"),
            ListCommand::Mlsd => (Command::Mlsd(arg), "MLSD"),
        };
        let mut backoff = Backoff::new(self.config.retry);
        let (stream, early) = self.start_transfer(&command, None, &mut backoff).await?;
        Ok(Download::new(self, stream, early, verb))
    }

    async fn listing(
        &mut self,
        kind: ListCommand,
        path: Option<&[u8]>,
    ) -> Result<Vec<u8>, ClientError> {
        let mut download = self.list_stream(kind, path).await?;
        let mut out = Vec::new();
        // A listing is held in memory: cap it so a hostile server cannot exhaust it.
        let read = (&mut download)
            .take(MAX_LISTING + 1)
            .read_to_end(&mut out)
            .await?;
        if read as u64 > MAX_LISTING {
            return Err(ClientError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "listing larger than 256 MiB",
            )));
        }
        download.finish().await?;
        Ok(out)
    }

    /// LIST: the server's listing, raw.
    pub async fn list(&mut self, path: Option<&[u8]>) -> Result<Vec<u8>, ClientError> {
        self.listing(ListCommand::List, path).await
    }

    /// NLST: the names, one per line (CR stripped), raw bytes.
    pub async fn nlst(&mut self, path: Option<&[u8]>) -> Result<Vec<Vec<u8>>, ClientError> {
        let raw = self.listing(ListCommand::Nlst, path).await?;
        Ok(raw
            .split(|&b| b == b'\n')
            .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
            .filter(|line| !line.is_empty())
            .map(<[u8]>::to_vec)
            .collect())
    }

    /// MLSD: the entries with their facts (RFC 3659 section 7).
    pub async fn mlsd(&mut self, path: Option<&[u8]>) -> Result<Vec<MlsdEntry>, ClientError> {
        let raw = self.listing(ListCommand::Mlsd, path).await?;
        Ok(parse_mlsd(&raw))
    }

    /// Starts an upload to `path` (STOR), replacing it.
    pub async fn store(&mut self, path: impl AsRef<[u8]>) -> Result<Upload<'_>, ClientError> {
        self.store_at(path, 0).await
    }

    /// Starts an upload that overwrites `path` from byte `offset` (REST + STOR), the way
    /// ftplib resumes.
    pub async fn store_at(
        &mut self,
        path: impl AsRef<[u8]>,
        offset: u64,
    ) -> Result<Upload<'_>, ClientError> {
        let mut backoff = Backoff::new(self.config.retry);
        self.store_with(path, offset, false, &mut backoff).await
    }

    /// Starts an upload appended to `path` (APPE), the way curl resumes.
    pub async fn append(&mut self, path: impl AsRef<[u8]>) -> Result<Upload<'_>, ClientError> {
        let mut backoff = Backoff::new(self.config.retry);
        self.store_with(path, 0, true, &mut backoff).await
    }

    /// STOR (REST + STOR from a non-zero `offset`) or APPE, within an operation's retry state.
    pub(crate) async fn store_with(
        &mut self,
        path: impl AsRef<[u8]>,
        offset: u64,
        append: bool,
        backoff: &mut Backoff,
    ) -> Result<Upload<'_>, ClientError> {
        let (command, verb, rest) = if append {
            (Command::Appe(argument(path)?), "APPE", None)
        } else {
            (
                Command::Stor(argument(path)?),
                "STOR",
                (offset > 0).then_some(offset),
            )
        };
        let (stream, early) = self.start_transfer(&command, rest, backoff).await?;
        Ok(Upload::new(self, stream, early, verb))
    }

    /// DELE.
    pub async fn delete(&mut self, path: impl AsRef<[u8]>) -> Result<(), ClientError> {
        self.expect(&Command::Dele(argument(path)?), |c| c == 250)
            .await
            .map(drop)
    }

    /// RNFR then RNTO.
    pub async fn rename(
        &mut self,
        from: impl AsRef<[u8]>,
        to: impl AsRef<[u8]>,
    ) -> Result<(), ClientError> {
        self.expect(&Command::Rnfr(argument(from)?), |c| c == 350)
            .await?;
        self.expect(&Command::Rnto(argument(to)?), |c| c == 250)
            .await
            .map(drop)
    }

    /// MKD; returns the 257 reply (which names the directory created).
    pub async fn mkdir(&mut self, path: impl AsRef<[u8]>) -> Result<Reply, ClientError> {
        self.expect(&Command::Mkd(argument(path)?), |c| c == 257 || c == 250)
            .await
    }

    /// RMD.
    pub async fn rmdir(&mut self, path: impl AsRef<[u8]>) -> Result<(), ClientError> {
        self.expect(&Command::Rmd(argument(path)?), |c| c == 250)
            .await
            .map(drop)
    }

    /// CWD.
    pub async fn cwd(&mut self, path: impl AsRef<[u8]>) -> Result<(), ClientError> {
        self.expect(&Command::Cwd(argument(path)?), |c| c == 250 || c == 200)
            .await
            .map(drop)
    }

    /// SIZE (RFC 3659 section 4): the size in bytes of a file.
    pub async fn size(&mut self, path: impl AsRef<[u8]>) -> Result<u64, ClientError> {
        let reply = self
            .expect(&Command::Size(argument(path)?), |c| c == 213)
            .await?;
        let text = reply.text();
        text.trim()
            .parse()
            .map_err(|_| ClientError::from_reply("SIZE", reply))
    }

    /// MDTM (RFC 3659 section 3): the modification time as the server sent it,
    /// `YYYYMMDDHHMMSS[.sss]` in UTC.
    pub async fn mdtm(&mut self, path: impl AsRef<[u8]>) -> Result<String, ClientError> {
        let reply = self
            .expect(&Command::Mdtm(argument(path)?), |c| c == 213)
            .await?;
        let text = reply.text();
        let stamp = text.trim();
        let valid = stamp.len() >= 14
            && stamp.bytes().take(14).all(|b| b.is_ascii_digit())
            && stamp
                .bytes()
                .skip(14)
                .all(|b| b.is_ascii_digit() || b == b'.');
        if valid {
            Ok(stamp.to_owned())
        } else {
            Err(ClientError::from_reply("MDTM", reply))
        }
    }

    /// NOOP.
    pub async fn noop(&mut self) -> Result<(), ClientError> {
        self.expect(&Command::Noop, |c| c == 200).await.map(drop)
    }

    /// QUIT, then closes the connection. A server that closes without answering is fine.
    pub async fn quit(mut self) -> Result<(), ClientError> {
        self.skip_abandoned_reply().await?;
        self.send(&Command::Quit).await?;
        match self.read_final_reply().await {
            Ok(reply) if reply.code().is_positive() => {}
            Ok(reply) => return Err(ClientError::from_reply("QUIT", reply)),
            Err(ClientError::Closed) => {}
            Err(e) => return Err(e),
        }
        // The peer may already be gone; the connection is closed either way.
        let _ = self.stream.shutdown().await;
        Ok(())
    }
}

/// The largest listing [`Client::list`], [`Client::nlst`] and [`Client::mlsd`] accept.
pub const MAX_LISTING: u64 = 256 << 20;

fn argument(path: impl AsRef<[u8]>) -> Result<Argument, ClientError> {
    Ok(Argument::new(path.as_ref().to_vec())?)
}
