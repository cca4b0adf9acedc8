//! A small raw FTP test client (tokio + pasv_protocol's reply decoder) and helpers to start
//! pasvd in-process. Every wait is bounded by [`WAIT`], generous for busy CI machines.
#![allow(dead_code, missing_docs)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use pasv_protocol::{Reply, ReplyDecoder};
use pasv_tools::server::{Config, LoginMonitor, Server, ServerError, ServerStats};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Upper bound on any single wait in the tests.
pub const WAIT: Duration = Duration::from_secs(30);

/// Passive ranges for tests: consecutive blocks from `base` (below the kernel's ephemeral
/// range, so client sockets do not take them), one block per call in this process. Each test
/// binary passes its own base so binaries never share a port.
pub fn port_block_from(base: u16, len: u16) -> (u16, u16) {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let lo = base + NEXT.fetch_add(len.max(10), Ordering::Relaxed);
    (lo, lo + len - 1)
}

/// A block for the server tests (25000-25499).
pub fn port_block(len: u16) -> (u16, u16) {
    port_block_from(25_000, len)
}

/// A server running in-process; stops when dropped or with [`TestServer::stop`].
pub struct TestServer {
    pub addr: SocketAddr,
    pub ports: (u16, u16),
    pub stats: ServerStats,
    /// The server's login counters.
    pub login: LoginMonitor,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(config: Config) -> TestServer {
        TestServer::try_start(config).await.expect("server binds")
    }

    /// Like [`TestServer::start`], with the bind error for the caller to judge.
    pub async fn try_start(config: Config) -> Result<TestServer, ServerError> {
        let ports = (config.pasv_min_port, config.pasv_max_port);
        let server = Server::bind(config).await?;
        let addr = server.local_addr();
        let stats = server.stats();
        let login = server.login_monitor();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            server
                .run_until(async {
                    let _ = rx.await;
                })
                .await
                .expect("server runs");
        });
        Ok(TestServer {
            addr,
            ports,
            stats,
            login,
            stop: Some(tx),
            task: Some(task),
        })
    }

    /// A test configuration for `root` with a fresh passive block of `ports` ports.
    pub fn config(root: &Path, ports: u16) -> Config {
        let mut config = Config::for_tests(root.to_path_buf());
        let (lo, hi) = port_block(ports);
        config.pasv_min_port = lo;
        config.pasv_max_port = hi;
        config
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("server stops in time")
                .expect("server task");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// One control connection.
pub struct Ftp {
    stream: TcpStream,
    input: BytesMut,
    decoder: ReplyDecoder,
    pub peer: SocketAddr,
}

impl Ftp {
    /// Connects and reads the greeting.
    pub async fn connect(addr: SocketAddr) -> (Ftp, Reply) {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        Ftp::greeted(stream, addr).await
    }

    /// Connects from a given local address (a client on another host), logs in anonymously.
    pub async fn login_from(local: IpAddr, addr: SocketAddr) -> Ftp {
        let stream = connect_from(local, addr).await.expect("control connect");
        let (mut ftp, greeting) = Ftp::greeted(stream, addr).await;
        assert_eq!(greeting.code().get(), 220, "greeting: {greeting}");
        ftp.expect("USER anonymous", 331).await;
        ftp.expect("PASS guest@example.invalid", 230).await;
        ftp.expect("TYPE I", 200).await;
        ftp
    }

    /// Wraps a connected stream and reads the greeting.
    pub async fn greeted(stream: TcpStream, addr: SocketAddr) -> (Ftp, Reply) {
        stream.set_nodelay(true).ok();
        let mut ftp = Ftp {
            stream,
            input: BytesMut::new(),
            decoder: ReplyDecoder::new(),
            peer: addr,
        };
        let greeting = ftp.reply().await;
        (ftp, greeting)
    }

    /// Connects, checks the 220 and logs in anonymously.
    pub async fn login(addr: SocketAddr) -> Ftp {
        let (mut ftp, greeting) = Ftp::connect(addr).await;
        assert_eq!(greeting.code().get(), 220, "greeting: {greeting}");
        ftp.expect("USER anonymous", 331).await;
        ftp.expect("PASS guest@example.invalid", 230).await;
        ftp.expect("TYPE I", 200).await;
        ftp
    }

    /// Reads one reply (panics on EOF or timeout).
    pub async fn reply(&mut self) -> Reply {
        self.try_reply().await.expect("a reply before EOF")
    }

    /// Reads one reply; `None` at EOF.
    pub async fn try_reply(&mut self) -> Option<Reply> {
        let deadline = pasv_tools::clock::now() + WAIT;
        loop {
            if let Some(reply) = self
                .decoder
                .decode(&mut self.input)
                .expect("well-formed reply")
            {
                return Some(reply);
            }
            let n = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.input))
                .await
                .expect("reply in time")
                .unwrap_or(0);
            if n == 0 {
                return self.decoder.decode_eof(&mut self.input).ok().flatten();
            }
        }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("control write");
    }

    /// Sends `line` + CRLF and reads the reply.
    pub async fn cmd(&mut self, line: &str) -> Reply {
        self.cmd_bytes(line.as_bytes()).await
    }

    pub async fn cmd_bytes(&mut self, line: &[u8]) -> Reply {
        let mut bytes = line.to_vec();
        bytes.extend_from_slice(b"\r\n");
        self.send_raw(&bytes).await;
        self.reply().await
    }

    /// Sends a command and asserts the reply code.
    pub async fn expect(&mut self, line: &str, code: u16) -> Reply {
        let reply = self.cmd(line).await;
        assert_eq!(reply.code().get(), code, "{line} -> {reply}");
        reply
    }

    /// PASV, returning the advertised address.
    pub async fn pasv(&mut self) -> SocketAddr {
        let reply = self.expect("PASV", 227).await;
        SocketAddr::V4(reply.pasv_addr().expect("227 address"))
    }

    /// EPSV, returning the control peer's address with the port.
    pub async fn epsv(&mut self) -> SocketAddr {
        let reply = self.expect("EPSV", 229).await;
        SocketAddr::new(self.peer.ip(), reply.epsv_port().expect("229 port"))
    }

    /// Opens a data connection (PASV or EPSV) and connects to it.
    pub async fn open_data(&mut self, epsv: bool) -> TcpStream {
        let addr = if epsv {
            self.epsv().await
        } else {
            self.pasv().await
        };
        connect_data(addr).await
    }

    /// Downloads over a passive connection.
    pub async fn retr(&mut self, path: &str) -> Vec<u8> {
        let mut data = self.open_data(false).await;
        let first = self.cmd(&format!("RETR {path}")).await;
        assert_eq!(first.code().get(), 150, "RETR {path} -> {first}");
        let body = read_all(&mut data).await;
        let done = self.reply().await;
        assert_eq!(done.code().get(), 226, "RETR {path} end -> {done}");
        body
    }

    /// Runs a listing command (LIST, NLST, MLSD with arguments) and returns its body.
    pub async fn listing(&mut self, command: &str) -> Vec<u8> {
        let mut data = self.open_data(true).await;
        let first = self.cmd(command).await;
        assert_eq!(first.code().get(), 150, "{command} -> {first}");
        let body = read_all(&mut data).await;
        let done = self.reply().await;
        assert_eq!(done.code().get(), 226, "{command} end -> {done}");
        body
    }

    /// Uploads with `command` (`STOR x`, `APPE x`, `STOU`) and returns the final reply.
    pub async fn upload(&mut self, command: &str, body: &[u8]) -> Reply {
        let mut data = self.open_data(false).await;
        let first = self.cmd(command).await;
        assert_eq!(first.code().get(), 150, "{command} -> {first}");
        data.write_all(body).await.expect("data write");
        data.shutdown().await.expect("data shutdown");
        drop(data);
        self.reply().await
    }

    /// Whether the server closed the control connection (EOF within [`WAIT`]).
    pub async fn closed(&mut self) -> bool {
        let mut buf = [0u8; 256];
        matches!(
            tokio::time::timeout(WAIT, self.stream.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("local addr")
    }

    /// The control connection itself, for a test that drives it by hand (replies already
    /// read are gone).
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }
}

pub async fn connect_data(addr: SocketAddr) -> TcpStream {
    tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("data connect in time")
        .expect("data connect")
}

/// Connects from a given local address (e.g. 127.0.0.2, to play a foreign client).
pub async fn connect_from(local: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(local, 0))?;
    tokio::time::timeout(WAIT, socket.connect(addr))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

pub async fn read_all(stream: &mut TcpStream) -> Vec<u8> {
    let mut body = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut body))
        .await
        .expect("data in time")
        .expect("data read");
    body
}

pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A deterministic body of `len` bytes.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}
