//! One control connection: login, commands, and at most one transfer at a time.
//!
//! The loop keeps reading the control connection while a transfer runs (in its own task), so
//! ABOR, STAT, NOOP and QUIT are answered at once; other commands wait in a short queue until
//! the transfer's final reply is out. Replies are encoded into one buffer and written with one
//! non-blocking call per loop turn; what the socket does not take waits for the next turn, and
//! while more than [`MAX_PENDING_OUTPUT`] bytes wait no command is decoded or read (the
//! client's own sends then block). `idle_timeout` bounds both directions: no command and no
//! reply byte taken for that long ends the session, and so do replies that wait that long with
//! no byte taken.

use std::collections::VecDeque;
use std::io::{self, Seek, SeekFrom};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures_util::FutureExt;
use pasv_pool::Closer;
use pasv_protocol::{
    Argument, Command, CommandDecoder, EpsvArg, Reply, ReplyCode, Structure, TransferMode,
    TransferType,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::ascii::ToNetwork;
use super::defender::Banned;
use super::listing::{self, Civil, Format};
use super::metrics::{AcceptStage, Direction, LoginResult, RefusalCause, TransferResult};
use super::passive::{AcceptError, DataConn, LeaseGuard, Passive, Refusal, ALL_LEASED_FALLBACK};
use super::transfer::{DataSource, Ending, Job, Outcome, TempUpload, Transfer};
use super::users::{is_anonymous_name, Grant};
use super::vfs::{io_text, FsError, Kind, Vfs};
use super::xferlog;
use super::{Shared, MAX_PENDING_OUTPUT, STAT_MAX_BYTES, STAT_MAX_ENTRIES};
use crate::clock;

/// Commands held while a transfer runs; beyond this the session stops reading.
const MAX_QUEUED: usize = 16;
/// Unprocessed control input beyond which the session stops reading.
const MAX_INPUT: usize = 64 * 1024;
/// Largest download sent inline by the session (see `send_inline`); loopback and typical
/// socket buffers take this much at once.
const INLINE_MAX: usize = 64 * 1024;
/// Ports listed at most by `SITE POOL` (disagreements first).
const SITE_POOL_PORTS: usize = 64;
/// PASV without an IPv4 passive address (an IPv6-only server, or an IPv6 control connection
/// whose leases would be IPv6).
const PASV_NO_V4: &[u8] = b"PASV needs an IPv4 passive address and there is none; use EPSV.";

const FEATURES: &str = "Features:\n EPRT\n EPSV\n MDTM\n MFMT\n MLST type*;size*;modify*;perm*;unix.mode*;\n PASV\n REST STREAM\n SIZE\n TVFS\n UTF8\n CLNT\n HOST\nEnd";

const HELP: &str = "The following commands are recognized:\n ABOR ACCT ALLO APPE CDUP CLNT CWD  DELE EPRT EPSV FEAT HELP HOST LIST MDTM\n MFMT MKD  MLSD MLST MODE NLST NOOP OPTS PASS PASV PORT PWD  QUIT REIN REST\n RETR RMD  RNFR RNTO SITE SIZE STAT STOR STOU STRU SYST TYPE USER\nHelp OK";

enum Login {
    AwaitUser,
    AwaitPass(Vec<u8>),
    LoggedIn(Account),
}

struct Account {
    grant: Grant,
    vfs: Vfs,
}

/// The data connection the next transfer will use.
enum Data {
    None,
    Passive(Passive),
    Connected(DataConn, LeaseGuard),
    Active(SocketAddr),
}

struct Running {
    handle: JoinHandle<Outcome>,
    abort: Option<oneshot::Sender<()>>,
    progress: Arc<AtomicU64>,
    verb: &'static str,
    path: Vec<u8>,
    incoming: bool,
    /// For STOR/APPE/STOU: the virtual path the upload goes to on success (resolved again
    /// then), and whether it must get a unique name (STOU).
    target: Option<(Vec<u8>, bool)>,
    abor: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        // A session that ends (or is cancelled) takes its transfer with it; the transfer's
        // lease guard and temporary file clean up on drop.
        self.handle.abort();
    }
}

struct Session {
    shared: Arc<Shared>,
    id: u64,
    peer: SocketAddr,
    local: SocketAddr,
    out: BytesMut,
    login: Login,
    cwd: Vec<u8>,
    data: Data,
    epsv_all: bool,
    rest: u64,
    /// RNFR's virtual path; RNTO resolves it again.
    rnfr: Option<Vec<u8>>,
    failed_logins: u32,
    /// While not logged in: when the session is closed for it (`login_timeout`).
    login_deadline: Option<tokio::time::Instant>,
    binary: bool,
    buffer: Vec<u8>,
    transfer: Option<Running>,
    queued: VecDeque<Command>,
    /// QUIT (or shutdown) seen: close once the transfer is done.
    closing: bool,
    /// The last reply to send before closing, if not 221.
    close_reply: Option<(u16, &'static str)>,
    done: bool,
}

/// Serves one control connection to its end.
pub(crate) async fn serve(shared: Arc<Shared>, mut stream: TcpStream, peer: SocketAddr, id: u64) {
    let local = match stream.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let _ = stream.set_nodelay(true);
    // Clients send ABOR with its first byte as TCP urgent data (RFC 959 section 4.1.3, Python's
    // ftplib does): inline, it stays part of the command instead of vanishing out of band.
    let _ = socket2::SockRef::from(&stream).set_out_of_band_inline(true);
    let _counted = shared.metrics.session_opened();
    tracing::info!(session = id, peer = %peer, "session opened");
    let mut session = Session {
        id,
        peer,
        local,
        out: BytesMut::with_capacity(1024),
        login: Login::AwaitUser,
        cwd: b"/".to_vec(),
        data: Data::None,
        epsv_all: false,
        rest: 0,
        rnfr: None,
        failed_logins: 0,
        login_deadline: Some(clock::now() + shared.config.login_timeout),
        binary: false,
        buffer: Vec::new(),
        transfer: None,
        queued: VecDeque::new(),
        closing: false,
        close_reply: None,
        done: false,
        shared,
    };
    let banner = session.shared.config.banner.clone();
    session.reply(220, banner.as_bytes());
    let result = session.run(&mut stream).await;
    session.release_data();
    if let Some(running) = session.transfer.take() {
        drop(running);
    }
    match result {
        Ok(()) => tracing::info!(session = id, peer = %peer, "session closed"),
        Err(e) => tracing::info!(session = id, peer = %peer, error = %e, "session ended"),
    }
}

/// Sleeps until the deadline, or forever without one.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn wait_transfer(transfer: &mut Option<Running>) -> Outcome {
    match transfer {
        Some(r) => match (&mut r.handle).await {
            Ok(outcome) => outcome,
            Err(e) => Outcome::failed(Ending::Local(io::Error::other(format!(
                "transfer task failed: {e}"
            )))),
        },
        None => std::future::pending().await,
    }
}

/// Reads the rest of a line that a TCP urgent mark cut short; returns true at EOF.
///
/// Clients send ABOR with MSG_OOB (RFC 959 section 4.1.3; Python's ftplib does). Even with
/// SO_OOBINLINE a read stops at the urgent mark, so the first read returns `ABOR\r` only.
/// tokio takes a short read as proof that the socket is drained and waits for the next
/// epoll edge, which never comes for bytes already queued: read them here, directly. Only a
/// read that ended inside a line pays this extra call.
fn read_past_urgent_mark(stream: &TcpStream, input: &mut BytesMut) -> bool {
    let mut tmp = [0u8; 512];
    for _ in 0..4 {
        if input.is_empty() || input.last() == Some(&b'\n') {
            return false;
        }
        let socket = socket2::SockRef::from(stream);
        match io::Read::read(&mut &*socket, &mut tmp) {
            Ok(0) => return true,
            Ok(n) => input.extend_from_slice(&tmp[..n]),
            Err(_) => return false,
        }
    }
    false
}

fn sanitize(text: &[u8], out: &mut BytesMut) {
    for &b in text {
        out.extend_from_slice(&[match b {
            b'\r' | b'\n' | 0 => b'?',
            b => b,
        }]);
    }
}

/// The text of a STAT reply for a rendered listing: one entry a line, capped at
/// [`STAT_MAX_ENTRIES`] entries and [`STAT_MAX_BYTES`] bytes of them (a control-connection
/// reply is held whole in the session, and pipelined STATs of a huge directory must not
/// multiply that); the last line says when entries were left out.
fn stat_listing(body: &[u8]) -> Vec<u8> {
    let mut text = b"Status follows:\n".to_vec();
    let (mut shown, mut total) = (0usize, 0usize);
    for line in body.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        total += 1;
        if shown == total - 1
            && shown < STAT_MAX_ENTRIES
            && text.len() + line.len() + 2 <= STAT_MAX_BYTES
        {
            text.push(b' ');
            text.extend_from_slice(line);
            text.push(b'\n');
            shown += 1;
        }
    }
    if shown < total {
        let last = format!("End of status: first {shown} of {total} entries; LIST shows all");
        text.extend_from_slice(last.as_bytes());
    } else {
        text.extend_from_slice(b"End of status");
    }
    text
}

/// Doubles `"` in a pathname for a 257 reply (RFC 959 appendix II).
fn quote_path(path: &[u8]) -> Vec<u8> {
    let mut q = Vec::with_capacity(path.len() + 2);
    q.push(b'"');
    for &b in path {
        if b == b'"' {
            q.push(b'"');
        }
        q.push(b);
    }
    q.push(b'"');
    q
}

impl Session {
    fn reply(&mut self, code: u16, text: &[u8]) {
        self.shared.metrics.reply(code);
        let digits = [
            b'0' + (code / 100 % 10) as u8,
            b'0' + (code / 10 % 10) as u8,
            b'0' + (code % 10) as u8,
            b' ',
        ];
        self.out.extend_from_slice(&digits);
        sanitize(text, &mut self.out);
        self.out.extend_from_slice(b"\r\n");
    }

    fn reply_full(&mut self, reply: &Reply) {
        self.shared.metrics.reply(reply.code().get());
        reply.encode(&mut self.out);
    }

    fn multi(&mut self, code: u16, text: impl AsRef<[u8]>) {
        match ReplyCode::new(code) {
            Some(code) => {
                self.shared.metrics.reply(code.get());
                Reply::new(code, text).encode(&mut self.out)
            }
            None => self.reply(451, b"Internal error"),
        }
    }

    /// Writes what the socket takes of the waiting replies, without waiting: one call, which
    /// takes everything when the client reads its replies. The rest stays in `out` for a later
    /// turn. Returns the bytes written.
    fn write_out(&mut self, stream: &TcpStream) -> io::Result<usize> {
        match stream.try_write(&self.out) {
            Ok(0) => Err(io::ErrorKind::WriteZero.into()),
            Ok(n) if n == self.out.len() => {
                self.out.clear();
                Ok(n)
            }
            Ok(n) => {
                self.out.advance(n);
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        }
    }

    async fn run(&mut self, stream: &mut TcpStream) -> io::Result<()> {
        let mut input = BytesMut::with_capacity(4096);
        let mut decoder = CommandDecoder::new();
        let shutdown = self.shared.shutdown.clone();
        let idle = self.shared.config.idle_timeout;
        // One timer for the whole session, re-armed only when it fires early: arming a timer
        // per command would cost a timer-wheel insert and removal for every command.
        let mut last_activity = clock::now();
        let idle_timer = tokio::time::sleep_until(last_activity + idle);
        tokio::pin!(idle_timer);
        let mut read_closed = false;
        // Since when replies have waited for a socket that took none of their bytes; `None`
        // while nothing waits (the fast path never reads the clock for it).
        let mut write_stalled_since: Option<tokio::time::Instant> = None;
        loop {
            // Everything already buffered first: a pipelining client gets all its replies in
            // one write.
            let mut held_back = false;
            while !self.done {
                if self.out.len() > MAX_PENDING_OUTPUT {
                    // The client is not reading its replies: decode nothing more (and, below,
                    // read nothing more) until it has.
                    held_back = true;
                    break;
                }
                if self.transfer.is_none() {
                    if let Some(cmd) = self.queued.pop_front() {
                        self.handle(cmd).await;
                        continue;
                    }
                } else if self.queued.len() >= MAX_QUEUED {
                    break;
                }
                if self.closing && self.transfer.is_none() {
                    break;
                }
                match decoder.decode(&mut input) {
                    Ok(Some(cmd)) => {
                        last_activity = clock::now();
                        self.shared.metrics.command();
                        self.dispatch(cmd).await;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let code = e.reply_code().get();
                        let text = e.to_string();
                        self.reply(code, text.as_bytes());
                    }
                }
            }
            if self.closing && self.transfer.is_none() && !self.done {
                let (code, text) = self.close_reply.unwrap_or((221, "Goodbye."));
                self.reply(code, text.as_bytes());
                self.done = true;
            }
            if !self.out.is_empty() {
                let waiting = self.out.len();
                let written = self.write_out(stream)?;
                if !self.out.is_empty() {
                    self.shared.stats.note_pending_output(waiting);
                    if written > 0 || write_stalled_since.is_none() {
                        write_stalled_since = Some(clock::now());
                    }
                }
            }
            if self.out.is_empty() && write_stalled_since.take().is_some() {
                // The client read its backlog: that is activity too.
                last_activity = clock::now();
            }
            if self.done && self.out.is_empty() {
                let _ = stream.shutdown().await;
                return Ok(());
            }
            if held_back && self.out.len() <= MAX_PENDING_OUTPUT {
                // Room again, and commands already read wait in `input`: no event would wake
                // the select for them.
                continue;
            }
            let can_read = !read_closed
                && !self.done
                && input.len() < MAX_INPUT
                && self.out.len() <= MAX_PENDING_OUTPUT;
            let replies_wait = !self.out.is_empty();
            // An idle passive endpoint is not watched: the client's connection waits in the
            // backlog until the transfer command takes it (see `Passive::accept`). Only the
            // accept timeout needs a timer.
            let accept_deadline = match (&self.transfer, &self.data) {
                (None, Data::Passive(p)) => Some(p.deadline()),
                (None, Data::Connected(_, guard)) => guard.unused_until(),
                _ => None,
            };
            let has_transfer = self.transfer.is_some();
            let login_deadline = self.login_deadline;
            // Halves only to wait for room while reading: `read_buf` on the read half, as on
            // the stream, takes a short read as the end of the input (no extra read to find
            // the socket empty).
            let (mut reader, writer) = stream.split();
            tokio::select! {
                // Fixed order: a finished transfer is handled before the next command, which
                // may need it.
                biased;
                outcome = wait_transfer(&mut self.transfer), if has_transfer => {
                    let stream_ref = &mut *stream;
                    self.finish_transfer(outcome, stream_ref, &mut input, &mut read_closed)
                        .await;
                    last_activity = clock::now();
                }
                // Ahead of the read: a client that keeps sending cannot starve it.
                () = sleep_until_some(login_deadline), if login_deadline.is_some() => {
                    self.login_timed_out();
                }
                () = sleep_until_some(accept_deadline), if accept_deadline.is_some() => {
                    self.accept_timeout();
                }
                // The next turn writes; this only waits for room.
                writable = writer.as_ref().writable(), if replies_wait => writable?,
                read = reader.read_buf(&mut input), if can_read => {
                    self.shared.busy_poll.touch();
                    let read = match read {
                        Ok(n) if n > 0 && read_past_urgent_mark(stream, &mut input) => Ok(0),
                        other => other,
                    };
                    match read {
                        Ok(0) | Err(_) => {
                            read_closed = true;
                            // The client is gone: a running transfer is abandoned (an upload
                            // must not be committed for a client that vanished).
                            if let Some(running) = self.transfer.as_mut() {
                                if let Some(tx) = running.abort.take() {
                                    let _ = tx.send(());
                                }
                            }
                            if self.transfer.is_none() {
                                if self.out.is_empty() {
                                    return Ok(());
                                }
                                // A client that half-closed may still read what it asked for.
                                self.done = true;
                                continue;
                            }
                            self.closing = true;
                            self.close_reply = Some((421, "Control connection closed."));
                        }
                        Ok(_) => {}
                    }
                }
                () = &mut idle_timer, if !has_transfer => {
                    // Replies that wait with no byte taken set the deadline on their own: the
                    // commands a client keeps sending do not keep it alive if it never reads.
                    let due = match write_stalled_since {
                        Some(since) => since + idle,
                        None => last_activity + idle,
                    };
                    if clock::now() < due {
                        idle_timer.as_mut().reset(due);
                    } else if self.out.is_empty() {
                        self.reply(421, b"Timeout.");
                        self.done = true;
                    } else {
                        // Nothing more can reach this client: a reset frees the socket and
                        // its unsent replies at once instead of leaving them to the kernel's
                        // orphan retries.
                        let socket = socket2::SockRef::from(&*stream);
                        let _ = socket.set_linger(Some(Duration::ZERO));
                        let text = format!("{} reply bytes left unread", self.out.len());
                        return Err(io::Error::new(io::ErrorKind::TimedOut, text));
                    }
                }
                () = shutdown.cancelled(), if !self.closing => {
                    self.closing = true;
                    self.close_reply = Some((421, "Server shutting down."));
                }
            }
        }
    }

    /// Commands that cannot wait for a running transfer; the rest are queued.
    async fn dispatch(&mut self, cmd: Command) {
        if self.transfer.is_none() {
            return self.handle(cmd).await;
        }
        match cmd {
            Command::Abor => {
                if let Some(running) = self.transfer.as_mut() {
                    running.abor = true;
                    if let Some(tx) = running.abort.take() {
                        let _ = tx.send(());
                    }
                }
            }
            Command::Stat(None) => {
                if let Some(running) = &self.transfer {
                    let text = format!(
                        "Status: {} {} bytes transferred",
                        running.verb,
                        running.progress.load(Ordering::Relaxed)
                    );
                    self.reply(213, text.as_bytes());
                }
            }
            Command::Noop => self.reply(200, b"NOOP ok."),
            // RFC 959: QUIT during a transfer closes after the transfer's reply.
            Command::Quit => self.closing = true,
            other => self.queued.push_back(other),
        }
    }

    /// The accept timeout of an idle passive endpoint: a connection that did arrive is taken
    /// (as if the transfer command were next), else the port goes back to the pool. The
    /// deadline of a connection so taken that is still unused: it is reset, and the port
    /// goes back with [`Closer::Reset`] (a RST leaves no TIME_WAIT).
    fn accept_timeout(&mut self) {
        if let Data::Connected(_, guard) = &self.data {
            tracing::info!(
                session = self.id,
                port = guard.addr().map_or(0, |a| a.port()),
                "data connection closed unused"
            );
            return self.release_data();
        }
        if let Ok(true) = self.take_waiting_connection() {
            return;
        }
        if let Data::Passive(p) = std::mem::replace(&mut self.data, Data::None) {
            tracing::info!(
                session = self.id,
                port = p.addr().port(),
                "passive endpoint released unused"
            );
            self.shared.metrics.accept_timeout(AcceptStage::Idle);
            p.never_connected();
        }
    }

    /// Takes the client's connection if it is waiting in the passive backlog, making the
    /// endpoint [`Data::Connected`]; whether it did.
    fn take_waiting_connection(&mut self) -> Result<bool, AcceptError> {
        let Data::Passive(p) = &mut self.data else {
            return Ok(false);
        };
        let Some(conn) = p.try_accept()? else {
            return Ok(false);
        };
        if let Data::Passive(p) = std::mem::replace(&mut self.data, Data::None) {
            self.data = Data::Connected(conn, p.into_waiting_connection());
        }
        Ok(true)
    }

    fn release_data(&mut self) {
        match std::mem::replace(&mut self.data, Data::None) {
            Data::Passive(p) => p.never_connected(),
            Data::Connected(stream, guard) => {
                super::passive::reset(stream);
                guard.release(Closer::Reset);
            }
            Data::Active(_) | Data::None => {}
        }
    }

    fn account(&self) -> Option<&Account> {
        match &self.login {
            Login::LoggedIn(a) => Some(a),
            _ => None,
        }
    }

    fn writable(&self) -> bool {
        self.account().is_some_and(|a| a.grant.write)
    }

    async fn handle(&mut self, cmd: Command) {
        tracing::debug!(session = self.id, command = %cmd, "command");
        // Commands allowed before login.
        match cmd {
            Command::User(name) => self.user(name),
            Command::Pass(pass) => self.pass(pass.expose()).await,
            Command::Quit => {
                self.closing = true;
            }
            Command::Feat => self.multi(211, FEATURES),
            Command::Syst => self.reply(215, b"UNIX Type: L8"),
            Command::Help(_) => self.multi(214, HELP),
            Command::Noop => self.reply(200, b"NOOP ok."),
            Command::Auth(_) => self.reply(504, b"AUTH not supported: no TLS configured."),
            Command::Pbsz(_) | Command::Prot(_) => {
                self.reply(503, b"PBSZ and PROT need a security exchange (AUTH).")
            }
            Command::Ccc => self.reply(533, b"Control connection is not protected."),
            Command::Opts(arg) => self.opts(arg.as_bytes()),
            Command::Clnt(_) => self.reply(200, b"Noted."),
            Command::Host(_) => match self.login {
                Login::LoggedIn(_) => self.reply(503, b"HOST must come before USER."),
                _ => self.reply(220, b"Host accepted."),
            },
            Command::Abor => {
                self.release_data();
                self.reply(226, b"No transfer to abort.");
            }
            Command::Rein => {
                self.release_data();
                if self.account().is_some() {
                    self.login_deadline = Some(clock::now() + self.shared.config.login_timeout);
                }
                self.login = Login::AwaitUser;
                self.cwd = b"/".to_vec();
                self.rest = 0;
                self.rnfr = None;
                self.epsv_all = false;
                self.reply(220, b"Ready for a new user.");
            }
            Command::Unknown { verb, .. } => {
                let text = format!("{} not implemented.", verb.to_string_lossy());
                self.reply(502, text.as_bytes());
            }
            _ if self.account().is_none() => {
                self.reply(530, b"Please login with USER and PASS.");
            }
            cmd => self.logged_in(cmd).await,
        }
    }

    fn user(&mut self, name: Argument) {
        if let Login::LoggedIn(_) = self.login {
            return self.reply(530, b"Can't change to another user.");
        }
        let name = name.as_bytes();
        if is_anonymous_name(name) && !self.shared.users.anonymous_allowed() {
            self.login = Login::AwaitUser;
            return self.reply(530, b"Anonymous login not allowed.");
        }
        self.login = Login::AwaitPass(name.to_vec());
        self.reply(331, b"Please specify the password.");
    }

    /// `login_timeout` passed before a login.
    fn login_timed_out(&mut self) {
        tracing::info!(session = self.id, peer = %self.peer, "login timeout");
        self.reply(421, b"Login timeout.");
        self.done = true;
    }

    async fn pass(&mut self, password: &[u8]) {
        let name = match &self.login {
            Login::AwaitPass(name) => name.clone(),
            Login::LoggedIn(_) => return self.reply(230, b"Already logged in."),
            Login::AwaitUser => return self.reply(503, b"Login with USER first."),
        };
        // The login deadline bounds the waits for a turn, a verification and the failure
        // delay, which the control loop cannot see while this runs.
        let deadline = self
            .login_deadline
            .unwrap_or_else(|| clock::now() + self.shared.config.login_timeout);
        if tokio::time::timeout_at(deadline, self.check_password(name, password))
            .await
            .is_err()
        {
            self.login_timed_out();
        }
    }

    async fn check_password(&mut self, name: Vec<u8>, password: &[u8]) {
        let shared = Arc::clone(&self.shared);
        let attempt = if is_anonymous_name(&name) {
            None
        } else {
            match shared.defender.begin_login(self.peer.ip()).await {
                Ok(attempt) => Some(attempt),
                Err(Banned) => {
                    shared.metrics.login(LoginResult::Banned);
                    self.login = Login::AwaitUser;
                    self.closing = true;
                    self.close_reply = Some((421, "Too many failed logins from your address."));
                    return;
                }
            }
        };
        let grant = shared.users.verify_bounded(&name, password).await;
        let user_text = pasv_protocol::Escaped::new(&name).to_string();
        let grant = grant.and_then(|grant| {
            let vfs = match &grant.root {
                Some(root) => Vfs::new(root),
                None => Ok(self.shared.vfs.clone()),
            };
            match vfs {
                Ok(vfs) => Some(Account { grant, vfs }),
                Err(e) => {
                    tracing::warn!(session = self.id, user = %user_text, error = %e, "user root unusable");
                    None
                }
            }
        });
        match grant {
            Some(account) => {
                if let Some(attempt) = attempt {
                    attempt.succeeded();
                }
                shared.metrics.login(LoginResult::Ok);
                tracing::info!(session = self.id, peer = %self.peer, user = %account.grant.name, write = account.grant.write, "login");
                self.login = Login::LoggedIn(account);
                self.login_deadline = None;
                self.reply(230, b"Login successful.");
            }
            None => {
                shared.metrics.login(LoginResult::Failed);
                let failure = attempt.map(|a| a.failed());
                self.failed_logins += 1;
                tracing::warn!(session = self.id, peer = %self.peer, user = %user_text, attempts = self.failed_logins, "login failed");
                self.login = Login::AwaitUser;
                // The delay is the defence against guessing; it also holds the session's
                // other commands, which is the point. It grows with the address's failures.
                let delay = failure.map_or(self.shared.config.login_fail_delay, |f| f.delay);
                tokio::time::sleep(delay).await;
                if failure.is_some_and(|f| f.banned_until.is_some()) {
                    self.closing = true;
                    self.close_reply = Some((421, "Too many failed logins from your address."));
                } else if self.failed_logins >= self.shared.config.max_login_fails {
                    self.closing = true;
                    self.close_reply = Some((421, "Too many failed logins."));
                } else {
                    self.reply(530, b"Login incorrect.");
                }
            }
        }
    }

    fn opts(&mut self, arg: &[u8]) {
        let mut words = arg.splitn(2, |&b| b == b' ');
        let name = words.next().unwrap_or(b"");
        let value = words.next().unwrap_or(b"");
        if name.eq_ignore_ascii_case(b"UTF8") || name.eq_ignore_ascii_case(b"UTF-8") {
            if value.is_empty() || value.eq_ignore_ascii_case(b"ON") {
                self.reply(200, b"Always in UTF8 mode.");
            } else {
                self.reply(504, b"UTF8 cannot be turned off.");
            }
        } else if name.eq_ignore_ascii_case(b"MLST") {
            self.reply(200, b"MLST OPTS type;size;modify;perm;unix.mode;");
        } else {
            self.reply(501, b"Option not understood.");
        }
    }

    /// The one place a filesystem error becomes a reply.
    fn fs_error(&mut self, e: &FsError) {
        let (code, text) = e.reply();
        self.reply(code, text.as_bytes());
    }

    /// Replies to a filesystem operation that has no other result.
    fn fs_done(&mut self, result: Result<(), FsError>, code: u16, text: &[u8]) {
        match result {
            Ok(()) => self.reply(code, text),
            Err(e) => self.fs_error(&e),
        }
    }

    /// The virtual path of a command's argument, or the error reply.
    fn path_of(&mut self, arg: &[u8]) -> Option<Vec<u8>> {
        match Vfs::path(&self.cwd, arg) {
            Ok(p) => Some(p),
            Err(e) => {
                self.fs_error(&e);
                None
            }
        }
    }

    /// Refuses a write for an account without write access; true when refused.
    fn read_only(&mut self) -> bool {
        if self.writable() {
            return false;
        }
        self.reply(550, b"Permission denied.");
        true
    }

    async fn logged_in(&mut self, cmd: Command) {
        let Some(account) = self.account() else {
            return self.reply(530, b"Please login with USER and PASS.");
        };
        let vfs = account.vfs.clone();
        match cmd {
            Command::Acct(_) => self.reply(202, b"ACCT not needed."),
            Command::Allo(_) => self.reply(202, b"ALLO not needed."),
            Command::Smnt(_) => self.reply(502, b"SMNT not implemented."),
            Command::Pwd => {
                let mut text = quote_path(&self.cwd);
                text.extend_from_slice(b" is the current directory");
                self.reply(257, &text);
            }
            Command::Cwd(arg) => self.cwd(&vfs, arg.as_bytes()).await,
            Command::Cdup => self.cwd(&vfs, b"..").await,
            Command::Type(t) => match t {
                TransferType::Ascii => {
                    self.binary = false;
                    self.reply(200, b"Switching to ASCII mode.");
                }
                TransferType::Image | TransferType::Local(8) => {
                    self.binary = true;
                    self.reply(200, b"Switching to Binary mode.");
                }
                _ => self.reply(504, b"Type not supported."),
            },
            Command::Mode(TransferMode::Stream) => self.reply(200, b"Mode set to S."),
            Command::Mode(_) => self.reply(504, b"Only stream mode is supported."),
            Command::Stru(Structure::File) => self.reply(200, b"Structure set to F."),
            Command::Stru(_) => self.reply(504, b"Only file structure is supported."),
            Command::Rest(offset) => {
                self.rest = offset;
                let text = format!("Restart position accepted ({offset}).");
                self.reply(350, text.as_bytes());
            }
            Command::Port(addr) => self.active(SocketAddr::V4(addr)),
            Command::Eprt(addr) => self.active(addr),
            Command::Pasv => self.pasv().await,
            Command::Epsv(arg) => self.epsv(arg).await,
            Command::Size(arg) => {
                let Some(path) = self.path_of(arg.as_bytes()) else {
                    return;
                };
                match on_pool(&vfs, move |v| v.stat(&path)).await {
                    Ok(m) if m.kind == Kind::File => self.reply(213, m.size.to_string().as_bytes()),
                    Ok(_) => self.fs_error(&FsError::NotRegular),
                    Err(e) => self.fs_error(&e),
                }
            }
            Command::Mdtm(arg) => {
                let Some(path) = self.path_of(arg.as_bytes()) else {
                    return;
                };
                match on_pool(&vfs, move |v| v.stat(&path)).await {
                    Ok(m) => {
                        let text = Civil::from_unix(m.mtime).time_val();
                        self.reply(213, text.as_bytes());
                    }
                    Err(e) => self.fs_error(&e),
                }
            }
            Command::Mfmt { time, path } => self.mfmt(&vfs, time.as_bytes(), path.as_bytes()).await,
            Command::Mkd(arg) => {
                if self.read_only() {
                    return;
                }
                let Some(path) = self.path_of(arg.as_bytes()) else {
                    return;
                };
                let made = path.clone();
                match on_pool(&vfs, move |v| v.mkdir(&made)).await {
                    Ok(()) => {
                        let mut text = quote_path(&path);
                        text.extend_from_slice(b" created");
                        self.reply(257, &text);
                    }
                    Err(e) => self.fs_error(&e),
                }
            }
            Command::Rmd(arg) => {
                if self.read_only() {
                    return;
                }
                if let Some(path) = self.path_of(arg.as_bytes()) {
                    let done = on_pool(&vfs, move |v| v.rmdir(&path)).await;
                    self.fs_done(done, 250, b"Directory removed.");
                }
            }
            Command::Dele(arg) => {
                if self.read_only() {
                    return;
                }
                if let Some(path) = self.path_of(arg.as_bytes()) {
                    let done = on_pool(&vfs, move |v| v.delete(&path)).await;
                    self.fs_done(done, 250, b"File deleted.");
                }
            }
            Command::Rnfr(arg) => {
                if self.read_only() {
                    return;
                }
                let Some(path) = self.path_of(arg.as_bytes()) else {
                    return;
                };
                let from = path.clone();
                match on_pool(&vfs, move |v| v.exists(&from)).await {
                    Ok(()) => {
                        self.rnfr = Some(path);
                        self.reply(350, b"Ready for RNTO.");
                    }
                    Err(e) => self.fs_error(&e),
                }
            }
            Command::Rnto(arg) => {
                let Some(from) = self.rnfr.take() else {
                    return self.reply(503, b"RNFR required first.");
                };
                if self.read_only() {
                    return;
                }
                if let Some(to) = self.path_of(arg.as_bytes()) {
                    let done = on_pool(&vfs, move |v| v.rename(&from, &to)).await;
                    self.fs_done(done, 250, b"Rename successful.");
                }
            }
            Command::Site(arg) => self.site(&vfs, arg.as_bytes()).await,
            Command::Stat(None) => {
                let text = format!(
                    "pasvd status:\n Connected to {}\n Logged in as {}\n TYPE: {}, MODE: S, STRU: F\n Data: {}\nEnd of status",
                    self.peer.ip(),
                    self.account().map_or("?", |a| a.grant.name.as_str()),
                    if self.binary { "BINARY" } else { "ASCII" },
                    match &self.data {
                        Data::None => "none",
                        Data::Passive(_) => "passive, waiting",
                        Data::Connected(..) => "passive, connected",
                        Data::Active(_) => "active",
                    }
                );
                self.multi(211, text);
            }
            Command::Stat(Some(arg)) => {
                let args = listing::list_args(Some(arg.as_bytes()));
                let Some(path) = self.path_of(args.path.unwrap_or(b"")) else {
                    return;
                };
                let format = Format::List { all: args.all };
                match render_blocking(vfs, path, format).await {
                    Ok(body) => self.multi(213, stat_listing(&body)),
                    Err(e) => self.fs_error(&e),
                }
            }
            Command::Mlst(arg) => {
                let arg = arg.as_ref().map_or(&b""[..], |a| a.as_bytes());
                let Some(path) = self.path_of(arg) else {
                    return;
                };
                let stat = {
                    let path = path.clone();
                    on_pool(&vfs, move |v| v.stat(&path)).await
                };
                match stat {
                    Ok(meta) => {
                        let mut text = b"Listing ".to_vec();
                        text.extend_from_slice(&path);
                        text.extend_from_slice(b"\n ");
                        listing::mlsx_facts(&meta, self.writable(), None, &mut text);
                        text.push(b' ');
                        text.extend(path.iter().map(|&b| if b == b'\n' { b'?' } else { b }));
                        text.extend_from_slice(b"\nEnd");
                        self.multi(250, text);
                    }
                    Err(e) => self.fs_error(&e),
                }
            }
            Command::List(arg) => {
                let args = listing::list_args(arg.as_ref().map(Argument::as_bytes));
                self.listing(vfs, args.path, Format::List { all: args.all }, "LIST")
                    .await;
            }
            Command::Nlst(arg) => {
                let args = listing::list_args(arg.as_ref().map(Argument::as_bytes));
                self.listing(vfs, args.path, Format::Nlst, "NLST").await;
            }
            Command::Mlsd(arg) => {
                let writable = self.writable();
                let path = arg.as_ref().map(Argument::as_bytes);
                self.listing(vfs, path, Format::Mlsd { writable }, "MLSD")
                    .await;
            }
            Command::Retr(arg) => self.retr(&vfs, arg.as_bytes()),
            Command::Stor(arg) => self.store(vfs, Some(arg.as_bytes()), StoreKind::Stor).await,
            Command::Appe(arg) => self.store(vfs, Some(arg.as_bytes()), StoreKind::Appe).await,
            Command::Stou(arg) => {
                self.store(vfs, arg.as_ref().map(Argument::as_bytes), StoreKind::Stou)
                    .await
            }
            other => {
                let text = format!("{} not implemented.", other.verb());
                self.reply(502, text.as_bytes());
            }
        }
    }

    async fn cwd(&mut self, vfs: &Vfs, arg: &[u8]) {
        let Some(path) = self.path_of(arg) else {
            return;
        };
        let dir = path.clone();
        match on_pool(vfs, move |v| v.is_dir(&dir)).await {
            Ok(()) => {
                self.cwd = path;
                self.reply(250, b"Directory successfully changed.");
            }
            Err(e) => self.fs_error(&e),
        }
    }

    async fn mfmt(&mut self, vfs: &Vfs, time: &[u8], path: &[u8]) {
        if self.read_only() {
            return;
        }
        let Some(civil) = Civil::parse_time_val(time) else {
            return self.reply(501, b"Bad time value (YYYYMMDDHHMMSS).");
        };
        let secs = civil.to_unix();
        if secs < 0 {
            return self.reply(501, b"Times before 1970 are not supported.");
        }
        let Some(path) = self.path_of(path) else {
            return;
        };
        let file = path.clone();
        match on_pool(vfs, move |v| v.set_modified(&file, secs)).await {
            Ok(()) => {
                let mut text = format!("Modify={}; ", civil.time_val()).into_bytes();
                text.extend_from_slice(&path);
                self.reply(213, &text);
            }
            Err(e) => self.fs_error(&e),
        }
    }

    async fn site(&mut self, vfs: &Vfs, arg: &[u8]) {
        let mut words = arg.splitn(3, |&b| b == b' ');
        let verb = words.next().unwrap_or(b"");
        if verb.eq_ignore_ascii_case(b"HELP") {
            return self.multi(214, "SITE commands:\n CHMOD HELP POOL\nEnd");
        }
        if verb.eq_ignore_ascii_case(b"POOL") {
            return self.site_pool();
        }
        if !verb.eq_ignore_ascii_case(b"CHMOD") {
            return self.reply(504, b"Unknown SITE command.");
        }
        if self.read_only() {
            return;
        }
        let (Some(mode), Some(path)) = (words.next(), words.next()) else {
            return self.reply(501, b"SITE CHMOD mode path.");
        };
        let mode = std::str::from_utf8(mode)
            .ok()
            .and_then(|m| u32::from_str_radix(m, 8).ok())
            .filter(|m| *m <= 0o7777);
        let Some(mode) = mode else {
            return self.reply(501, b"Bad mode (octal).");
        };
        if mode & !0o777 != 0 {
            return self.reply(501, b"Setuid, setgid and sticky bits cannot be set.");
        }
        let Some(path) = self.path_of(path) else {
            return;
        };
        let done = on_pool(vfs, move |v| v.chmod(&path, mode)).await;
        self.fs_done(done, 200, b"SITE CHMOD command ok.");
    }

    /// `SITE POOL`: the pool's counts and its ledger against the kernel's TIME_WAIT table,
    /// for an administrator (an account with `admin = true` in the users file).
    fn site_pool(&mut self) {
        let admin = self.account().is_some_and(|a| a.grant.admin);
        if !admin {
            return self.reply(550, b"SITE POOL is for administrators.");
        }
        let ports = &self.shared.ports;
        let stats = ports.stats();
        let mut text = format!(
            "Pool: {} free, {} leased, {} cooling, {} (port, client) pairs in per-client \
             quarantine.\n",
            stats.free, stats.leased, stats.cooling, stats.peer_quarantined
        );
        match ports.ledger_check() {
            Ok(check) => {
                text.push_str(&format!(
                    " Kernel: {} TIME_WAIT sockets on the passive ports, {} ports held by \
                     other programs.\n \
                     Disagreements: {} offered_while_held, {} withheld_while_free.\n",
                    check.kernel_time_wait,
                    check.foreign,
                    check.offered_while_held,
                    check.withheld_while_free
                ));
                // Disagreements first, then the rest, at most SITE_POOL_PORTS lines.
                let mut listed: Vec<_> = check.ports.iter().collect();
                listed.sort_by_key(|p| p.disagreement.is_none());
                let secs = |d: Option<Duration>| {
                    d.map_or_else(|| "-".to_owned(), |d| format!("{:.1}s", d.as_secs_f64()))
                };
                for p in listed.iter().take(SITE_POOL_PORTS) {
                    text.push_str(&format!(
                        " {} kernel {}{} pool {} leases {} {}\n",
                        p.addr,
                        secs(p.kernel),
                        if p.foreign { "+foreign" } else { "" },
                        secs(p.pool),
                        p.leases,
                        p.disagreement.map_or("agree", |d| d.name())
                    ));
                }
                if listed.len() > SITE_POOL_PORTS {
                    text.push_str(&format!(" ... {} more\n", listed.len() - SITE_POOL_PORTS));
                }
            }
            Err(e) => text.push_str(&format!(" Kernel: tables unreadable ({e}).\n")),
        }
        text.push_str("End");
        self.multi(200, text);
    }

    fn active(&mut self, addr: SocketAddr) {
        let config = &self.shared.config;
        if !config.port_enable {
            return self.reply(502, b"PORT and EPRT are disabled; use PASV or EPSV.");
        }
        if self.epsv_all {
            return self.reply(503, b"EPSV ALL in effect.");
        }
        // Checked before any connect: a foreign address or a privileged port is the FTP
        // bounce attack (RFC 2577 section 3).
        if addr.ip().to_canonical() != self.peer.ip().to_canonical() {
            tracing::warn!(session = self.id, target = %addr, "PORT to a foreign address refused");
            return self.reply(501, b"Data address must be the client's own address.");
        }
        if addr.port() < config.port_min_port {
            return self.reply(501, b"Data port too low.");
        }
        self.release_data();
        self.data = Data::Active(addr);
        self.reply(200, b"PORT command successful. Consider using PASV.");
    }

    async fn pasv(&mut self) {
        if self.epsv_all {
            return self.reply(503, b"EPSV ALL in effect.");
        }
        self.release_data();
        let ports = Arc::clone(&self.shared.ports);
        let filter = ports.pasv_filter(self.local.ip());
        match ports.open(self.peer.ip(), filter).await {
            Ok(passive) => {
                let addr = passive.addr();
                match ports
                    .advertise_v4(addr.ip(), self.local.ip(), self.peer.ip())
                    .await
                {
                    Some(ip) => {
                        let reply =
                            Reply::entering_passive(std::net::SocketAddrV4::new(ip, addr.port()));
                        self.reply_full(&reply);
                        self.data = Data::Passive(passive);
                    }
                    None => {
                        passive.never_connected();
                        self.reply(502, PASV_NO_V4);
                    }
                }
            }
            // A 227 reply can only carry IPv4, and no retry will change that: a permanent
            // reply, so clients go to EPSV instead of retrying (a 425 would invite retries).
            Err(Refusal::NoAddress) => self.reply(502, PASV_NO_V4),
            Err(refusal) => self.refused(refusal),
        }
    }

    async fn epsv(&mut self, arg: EpsvArg) {
        let local = self.local.ip().to_canonical();
        match arg {
            EpsvArg::All => {
                self.epsv_all = true;
                return self.reply(200, b"EPSV ALL ok.");
            }
            EpsvArg::Protocol(1) if local.is_ipv4() => {}
            EpsvArg::Protocol(2) if local.is_ipv6() => {}
            EpsvArg::Protocol(_) => {
                let family = if local.is_ipv4() { "(1)" } else { "(2)" };
                let text = format!("Network protocol not supported, use {family}");
                return self.reply(522, text.as_bytes());
            }
            EpsvArg::Any => {}
        }
        self.release_data();
        let ports = Arc::clone(&self.shared.ports);
        let filter = ports.epsv_filter(local);
        match ports.open(self.peer.ip(), filter).await {
            Ok(passive) => {
                let reply = Reply::entering_extended_passive(passive.addr().port());
                self.reply_full(&reply);
                self.data = Data::Passive(passive);
            }
            // No passive address of the control connection's family (RFC 2428's 522).
            Err(Refusal::NoAddress) => self.reply(
                522,
                b"Network protocol not supported: no passive address of this family.",
            ),
            Err(refusal) => self.refused(refusal),
        }
    }

    fn refused(&mut self, refusal: Refusal) {
        match refusal {
            Refusal::Exhausted {
                retry_after: Some(d),
            } => {
                self.shared
                    .metrics
                    .pool_refusal(RefusalCause::Cooling, Some(d));
                tracing::info!(
                    session = self.id,
                    retry_after_ms = d.as_millis() as u64,
                    "passive ports exhausted"
                );
                self.reply_full(&Reply::try_later(d));
            }
            Refusal::Exhausted { retry_after: None } => {
                // Every port is held by a live lease: the hint is the expected end of the
                // first one, from measured hold times.
                let hint = self.shared.ports.all_leased_hint();
                tracing::info!(
                    session = self.id,
                    retry_after_ms = hint.as_millis() as u64,
                    "passive ports all leased"
                );
                self.shared
                    .metrics
                    .pool_refusal(RefusalCause::AllLeased, Some(hint));
                self.reply_full(&Reply::try_later(hint));
            }
            Refusal::PeerLimit { limit } => {
                self.shared
                    .metrics
                    .pool_refusal(RefusalCause::PeerLimit, None);
                // No `retry after` hint: this address's leases end when its own transfers
                // or accept timeouts end them, which the server cannot foresee.
                tracing::info!(
                    session = self.id,
                    limit,
                    "passive leases per address at limit"
                );
                let text = format!(
                    "Too many data connections from your address ({limit} at once); \
                     wait for one of them to end (no time known)."
                );
                self.reply(425, text.as_bytes());
            }
            Refusal::NoAddress => self.reply(502, b"No passive address of this family."),
            Refusal::Bind(e) => {
                // Something outside the pool holds the ports it picked; they are cooling now,
                // so another try soon may get a different one.
                tracing::warn!(session = self.id, error = %e, "passive ports unbindable");
                self.shared
                    .metrics
                    .pool_refusal(RefusalCause::Bind, Some(ALL_LEASED_FALLBACK));
                self.reply_full(&Reply::try_later(ALL_LEASED_FALLBACK));
            }
        }
    }

    fn take_source(&mut self) -> Option<DataSource> {
        match std::mem::replace(&mut self.data, Data::None) {
            Data::None => None,
            Data::Passive(p) => Some(DataSource::Passive(p)),
            Data::Connected(s, g) => Some(DataSource::Connected(s, g)),
            Data::Active(addr) => Some(DataSource::Active {
                addr,
                local: self.local.ip(),
                timeout: self.shared.config.connect_timeout,
            }),
        }
    }

    fn start(
        &mut self,
        job: Job,
        verb: &'static str,
        path: Vec<u8>,
        target: Option<(Vec<u8>, bool)>,
    ) {
        // The client usually connects right after 227: take a connection that is already
        // waiting, so a small download can go out inline.
        // (An error shows again when the transfer waits for the connection.)
        let _ = self.take_waiting_connection();
        let (job, pre_sent) = match self.send_inline(job) {
            Ok(outcome) => return self.report(verb, &path, false, &outcome, None, false),
            Err(rest) => rest,
        };
        let Some(source) = self.take_source() else {
            return self.reply(425, b"Use PORT, PASV or EPSV first.");
        };
        let (tx, rx) = oneshot::channel();
        let progress = Arc::new(AtomicU64::new(pre_sent));
        let incoming = matches!(job, Job::Receive(_));
        let transfer = Transfer {
            source,
            job,
            buffer: std::mem::take(&mut self.buffer),
            buffer_size: self.shared.config.buffer_size,
            stall: self.shared.config.data_timeout,
            progress: Arc::clone(&progress),
            abort: rx,
        };
        self.transfer = Some(Running {
            handle: tokio::spawn(transfer.run()),
            abort: Some(tx),
            progress,
            verb,
            path,
            incoming,
            target,
            abor: false,
        });
    }

    /// Small downloads on an already accepted connection are written right here: one
    /// non-blocking send into an empty socket buffer, our FIN, and the 150 and 226 leave in
    /// one control write. That saves a task, two wake-ups and a control write per transfer,
    /// which is most of the per-transfer cost for small files. Anything that does not fit at
    /// once goes to a transfer task, with what was sent counted.
    fn send_inline(&mut self, job: Job) -> Result<Outcome, (Job, u64)> {
        if !matches!(self.data, Data::Connected(..)) {
            return Err((job, 0));
        }
        let start = clock::now();
        match job {
            Job::SendBytes(bytes) if bytes.len() <= INLINE_MAX => {
                let len = bytes.len();
                self.write_inline(start, bytes, len)
            }
            Job::SendFile { mut file, len } if len <= INLINE_MAX as u64 => {
                let want = len as usize;
                let mut body = std::mem::take(&mut self.buffer);
                if body.len() < want {
                    body.resize(want, 0);
                }
                let mut filled = 0;
                while filled < want {
                    match io::Read::read(&mut file, &mut body[filled..want]) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            self.buffer = body;
                            self.release_data();
                            return Ok(Outcome::failed(Ending::Local(e)));
                        }
                    }
                }
                self.write_inline(start, body, filled)
            }
            job => Err((job, 0)),
        }
    }

    fn write_inline(
        &mut self,
        start: tokio::time::Instant,
        body: Vec<u8>,
        len: usize,
    ) -> Result<Outcome, (Job, u64)> {
        let Data::Connected(stream, guard) = std::mem::replace(&mut self.data, Data::None) else {
            return Err((Job::SendBytes(body[..len].to_vec()), 0));
        };
        let port = guard.addr().map(|a| a.port());
        // Corked, the data waits in the socket until our FIN joins it: one segment carries
        // both, so the client gets data and EOF in one wake-up and one packet less crosses
        // the stack each way (the FIN is sent with Nagle and cork overridden).
        let corked = socket2::SockRef::from(&stream).set_tcp_cork(true).is_ok();
        let written = io::Write::write(&mut &stream, &body[..len]);
        if corked && !matches!(&written, Ok(n) if *n == len) {
            let _ = socket2::SockRef::from(&stream).set_tcp_cork(false);
        }
        let finished = |ending, closer, bytes| Outcome {
            ending,
            bytes,
            duration: clock::now().saturating_duration_since(start),
            port,
            closer: Some(closer),
            upload: None,
            buffer: Vec::new(),
        };
        match written {
            Ok(n) if n == len => {
                // Our FIN first, as in the task: TIME_WAIT on the passive port.
                let shut = stream.shutdown(std::net::Shutdown::Write);
                self.keep_buffer(body);
                match shut {
                    Ok(()) => {
                        drop(stream);
                        guard.release(Closer::Server);
                        Ok(finished(Ending::Complete, Closer::Server, n as u64))
                    }
                    Err(e) => {
                        super::passive::reset(stream);
                        guard.release(Closer::Reset);
                        Ok(finished(Ending::Network(e), Closer::Reset, n as u64))
                    }
                }
            }
            Ok(n) => {
                let rest = body[n..len].to_vec();
                self.keep_buffer(body);
                self.data = Data::Connected(stream, guard);
                Err((Job::SendBytes(rest), n as u64))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let rest = body[..len].to_vec();
                self.keep_buffer(body);
                self.data = Data::Connected(stream, guard);
                Err((Job::SendBytes(rest), 0))
            }
            Err(e) => {
                self.keep_buffer(body);
                super::passive::reset(stream);
                guard.release(Closer::Reset);
                Ok(finished(Ending::Network(e), Closer::Reset, 0))
            }
        }
    }

    /// Keeps the larger of the two buffers for the next transfer.
    fn keep_buffer(&mut self, body: Vec<u8>) {
        if body.capacity() > self.buffer.capacity() {
            self.buffer = body;
        }
    }

    async fn listing(&mut self, vfs: Vfs, path: Option<&[u8]>, format: Format, verb: &'static str) {
        self.rest = 0;
        let Some(path) = self.path_of(path.unwrap_or(b"")) else {
            return;
        };
        if matches!(format, Format::Mlsd { .. }) {
            let dir = path.clone();
            match on_pool(&vfs, move |v| v.stat(&dir)).await {
                Ok(m) if m.kind == Kind::Dir => {}
                Ok(_) => return self.reply(501, b"MLSD needs a directory."),
                Err(e) => return self.fs_error(&e),
            }
        }
        if matches!(self.data, Data::None) {
            return self.reply(425, b"Use PORT, PASV or EPSV first.");
        }
        match render_blocking(vfs, path.clone(), format).await {
            Ok(body) => {
                self.reply(150, b"Here comes the directory listing.");
                self.start(Job::SendBytes(body), verb, path, None);
            }
            Err(e) => self.fs_error(&e),
        }
    }

    fn retr(&mut self, vfs: &Vfs, arg: &[u8]) {
        let offset = std::mem::take(&mut self.rest);
        if matches!(self.data, Data::None) {
            return self.reply(425, b"Use PORT, PASV or EPSV first.");
        }
        let Some(path) = self.path_of(arg) else {
            return;
        };
        // One open beneath the root and one fstat, inline: neither waits on another process
        // (the open is non-blocking, so a FIFO is refused, not waited for).
        let (mut file, meta) = match vfs.open_read(&path) {
            Ok(x) => x,
            Err(e) => return self.fs_error(&e),
        };
        let len = meta.size;
        if offset > len {
            return self.reply(554, b"Restart position beyond the end of the file.");
        }
        let ascii = self.ascii();
        // REST counts bytes of the stored file in either type. In TYPE A the byte before the
        // offset tells the converter whether an LF right at the offset ends a CRLF already.
        let mut previous = None;
        if offset > 0 {
            let from = if ascii { offset - 1 } else { offset };
            let sought = file.seek(SeekFrom::Start(from)).and_then(|_| {
                if ascii {
                    let mut byte = [0u8];
                    io::Read::read_exact(&mut file, &mut byte)?;
                    previous = Some(byte[0]);
                }
                Ok(())
            });
            if let Err(e) = sought {
                return self.reply(554, io_text(&e).as_bytes());
            }
        }
        // The count is of the stored file's bytes; in TYPE A more may cross the wire.
        let mut text = b"Opening ".to_vec();
        text.extend_from_slice(if ascii { b"ASCII" } else { b"BINARY" });
        text.extend_from_slice(b" mode data connection for ");
        text.extend_from_slice(&path);
        text.extend_from_slice(format!(" ({} bytes).", len - offset).as_bytes());
        self.reply(150, &text);
        let len = len - offset;
        let job = if ascii {
            Job::SendText {
                file,
                len,
                encoder: ToNetwork::after(previous),
            }
        } else {
            Job::SendFile { file, len }
        };
        self.start(job, "RETR", path, None);
    }

    /// Whether transfers convert line ends now: TYPE A, and `ascii_transfers` on.
    fn ascii(&self) -> bool {
        !self.binary && self.shared.config.ascii_transfers
    }

    async fn store(&mut self, vfs: Vfs, arg: Option<&[u8]>, kind: StoreKind) {
        let offset = std::mem::take(&mut self.rest);
        if self.read_only() {
            return;
        }
        if matches!(self.data, Data::None) {
            return self.reply(425, b"Use PORT, PASV or EPSV first.");
        }
        let Some(path) = self.path_of(arg.unwrap_or(b"pasvd.stou")) else {
            return;
        };
        if kind == StoreKind::Stou && !super::vfs::unique_name_fits(&path) {
            return self.reply(553, b"File name too long for a unique name.");
        }
        // What of the old file the new one starts with: REST + STOR keeps `offset` bytes,
        // APPE all of them; copied (on the blocking pool) into the upload's unnamed file so
        // the old file stays whole until the commit.
        let keep = match kind {
            StoreKind::Appe => u64::MAX,
            StoreKind::Stor => offset,
            StoreKind::Stou => 0,
        };
        let prepared = {
            let path = path.clone();
            on_pool(&vfs, move |v| v.create_upload(&path, keep)).await
        };
        let upload = match prepared {
            Ok(u) => u,
            Err(e) => return self.fs_error(&e),
        };
        let upload = TempUpload {
            upload,
            fsync: self.shared.config.fsync_uploads,
            ascii: self.ascii(),
        };
        let verb = match kind {
            StoreKind::Stor => "STOR",
            StoreKind::Appe => "APPE",
            StoreKind::Stou => "STOU",
        };
        if kind == StoreKind::Stou {
            self.reply(150, b"FILE: unique name given in the final reply.");
        } else {
            self.reply(150, b"Ok to send data.");
        }
        let target = (path.clone(), kind == StoreKind::Stou);
        self.start(Job::Receive(upload), verb, path, Some(target));
    }

    async fn finish_transfer(
        &mut self,
        mut outcome: Outcome,
        control: &mut TcpStream,
        input: &mut BytesMut,
        read_closed: &mut bool,
    ) {
        let Some(mut running) = self.transfer.take() else {
            return;
        };
        self.buffer = std::mem::take(&mut outcome.buffer);
        let mut final_name: Option<Vec<u8>> = None;
        if let (Ending::Complete, Some(upload)) = (&outcome.ending, outcome.upload.take()) {
            // The data connection ended with a clean EOF, but a client that dies sends FIN
            // on both connections: if the control connection is closed too, the upload was
            // not finished on purpose.
            if !*read_closed {
                if let Some(Ok(0) | Err(_)) = control.read_buf(input).now_or_never() {
                    *read_closed = true;
                    self.closing = true;
                    self.close_reply = Some((421, "Control connection closed."));
                }
            }
            if *read_closed {
                outcome.ending = Ending::Aborted;
                drop(upload);
            } else if let (Some((target, unique)), Some(account)) =
                (running.target.take(), self.account())
            {
                // The target is resolved again now, beneath the root: a directory renamed
                // or removed during the transfer fails the upload and leaves nothing.
                let upload = upload.upload;
                let vfs = account.vfs.clone();
                match on_pool(&vfs, move |v| v.commit(upload, &target, unique)).await {
                    Ok(name) => final_name = name,
                    Err(e) => outcome.ending = Ending::Local(e.into()),
                }
            }
        }
        let abor = std::mem::take(&mut running.abor);
        let path = std::mem::take(&mut running.path);
        self.report(
            running.verb,
            &path,
            running.incoming,
            &outcome,
            final_name,
            abor,
        );
    }

    /// Logs a finished transfer and writes its final reply (and ABOR's, when it came).
    fn report(
        &mut self,
        verb: &'static str,
        path: &[u8],
        incoming: bool,
        outcome: &Outcome,
        final_name: Option<Vec<u8>>,
        abor: bool,
    ) {
        let ok = matches!(outcome.ending, Ending::Complete);
        let result = match outcome.ending {
            Ending::Complete => TransferResult::Complete,
            Ending::NoConnection(_) => TransferResult::NoConnection,
            Ending::Aborted => TransferResult::Aborted,
            Ending::Network(_) => TransferResult::NetworkError,
            Ending::Local(_) => TransferResult::LocalError,
        };
        let direction = Direction::of_verb(verb);
        self.shared
            .metrics
            .transfer(direction, result, outcome.bytes);
        let closer = outcome.closer.map_or("none", |c| match c {
            Closer::Server => "server",
            Closer::Client => "client",
            Closer::Reset => "reset",
            Closer::NeverConnected => "never-connected",
        });
        // The fields are documented in docs/LOGS.md (the JSON log keeps their names).
        let error = match &outcome.ending {
            Ending::Complete | Ending::Aborted => None,
            Ending::NoConnection(why) => Some(why.clone()),
            Ending::Network(e) | Ending::Local(e) => Some(e.to_string()),
        };
        tracing::info!(
            session = self.id,
            peer = %self.peer.ip(),
            user = self.account().map_or("", |a| a.grant.name.as_str()),
            command = verb,
            direction = direction.label(),
            path = %pasv_protocol::Escaped::new(path),
            bytes = outcome.bytes,
            duration_us = outcome.duration.as_micros() as u64,
            port = outcome.port.unwrap_or(0),
            closer,
            result = result.label(),
            error = error.as_deref(),
            "transfer"
        );
        if let (Some(log), true) = (
            &self.shared.xferlog,
            matches!(verb, "RETR" | "STOR" | "APPE" | "STOU"),
        ) {
            let user = self.account().map_or("?", |a| a.grant.name.as_str());
            log.write(&xferlog::Entry {
                when: clock::wall_now(),
                duration: outcome.duration,
                remote: self.peer.ip(),
                bytes: outcome.bytes,
                path,
                binary: !self.ascii(),
                incoming,
                anonymous: self.account().is_some_and(|a| a.grant.anonymous),
                user,
                complete: ok,
            });
        }
        match &outcome.ending {
            Ending::Complete => match final_name {
                Some(name) => {
                    let mut text = b"Transfer complete. FILE: ".to_vec();
                    text.extend_from_slice(&name);
                    self.reply(226, &text);
                }
                None => self.reply(226, b"Transfer complete."),
            },
            Ending::NoConnection(why) => {
                let text = format!("Can't open data connection: {why}.");
                self.reply(425, text.as_bytes());
            }
            Ending::Aborted => self.reply(426, b"Connection closed; transfer aborted."),
            Ending::Network(e) => {
                let text = format!("Connection closed; transfer aborted: {e}.");
                self.reply(426, text.as_bytes());
            }
            Ending::Local(e) => {
                let text = format!("Local error: {}.", io_text(e));
                self.reply(451, text.as_bytes());
            }
        }
        if abor {
            self.reply(226, b"ABOR successful.");
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum StoreKind {
    Stor,
    Appe,
    Stou,
}

/// Runs a filesystem operation on the blocking pool, off the runtime's threads.
async fn on_pool<T: Send + 'static>(
    vfs: &Vfs,
    op: impl FnOnce(&Vfs) -> Result<T, FsError> + Send + 'static,
) -> Result<T, FsError> {
    let vfs = vfs.clone();
    tokio::task::spawn_blocking(move || op(&vfs))
        .await
        .unwrap_or_else(|e| Err(FsError::Io(io::Error::other(e.to_string()))))
}

/// Renders a listing on the blocking pool (its cost grows with the directory).
async fn render_blocking(vfs: Vfs, path: Vec<u8>, format: Format) -> Result<Vec<u8>, FsError> {
    let now = listing::unix_secs(clock::wall_now());
    on_pool(&vfs, move |v| listing::render(v, &path, format, now)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pathnames_are_quoted_by_doubling() {
        assert_eq!(quote_path(b"/a\"b"), b"\"/a\"\"b\"");
    }

    #[test]
    fn stat_listings_are_capped_and_say_so() {
        let short = stat_listing(b"a\r\nb\r\n");
        assert_eq!(short, b"Status follows:\n a\n b\nEnd of status");
        let mut body = Vec::new();
        for i in 0..STAT_MAX_ENTRIES + 5 {
            body.extend_from_slice(format!("entry {i}\r\n").as_bytes());
        }
        let capped = stat_listing(&body);
        assert_eq!(
            capped
                .split(|&b| b == b'\n')
                .filter(|l| l.starts_with(b" entry"))
                .count(),
            STAT_MAX_ENTRIES
        );
        let last = format!(
            "End of status: first {STAT_MAX_ENTRIES} of {} entries; LIST shows all",
            STAT_MAX_ENTRIES + 5
        );
        assert!(capped.ends_with(last.as_bytes()));
        // Long lines: the byte cap comes first, and no later (shorter) line slips in.
        let long = vec![b'x'; 4000];
        let mut body = Vec::new();
        for _ in 0..1000 {
            body.extend_from_slice(&long);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"y\r\n");
        let capped = stat_listing(&body);
        assert!(capped.len() <= STAT_MAX_BYTES + 100, "{}", capped.len());
        assert!(!capped.windows(3).any(|w| w == b" y\n"));
        let shown = (STAT_MAX_BYTES - 16) / 4002;
        let last = format!("End of status: first {shown} of 1001 entries; LIST shows all");
        assert!(
            capped.ends_with(last.as_bytes()),
            "{}",
            String::from_utf8_lossy(&capped[capped.len() - 80..])
        );
    }

    #[test]
    fn replies_never_carry_line_breaks_from_names() {
        let mut out = BytesMut::new();
        sanitize(b"a\r\nb\0c", &mut out);
        assert_eq!(&out[..], b"a??b?c");
    }
}
