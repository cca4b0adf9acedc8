//! One control connection: login, commands, and at most one transfer at a time.
//!
//! The loop keeps reading the control connection while a transfer runs (in its own task), so
//! ABOR, STAT, NOOP and QUIT are answered at once; other commands wait in a short queue until
//! the transfer's final reply is out. Replies are encoded into one buffer and written with one
//! call per loop turn.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::BytesMut;
use futures_util::FutureExt;
use pasv_pool::{AddrFilter, Closer};
use pasv_protocol::{
    Argument, Command, CommandDecoder, EpsvArg, Reply, ReplyCode, Structure, TransferMode,
    TransferType,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::ascii::ToNetwork;
use super::listing::{self, Civil, Format};
use super::passive::{AcceptError, DataConn, LeaseGuard, Passive, Refusal};
use super::transfer::{DataSource, Ending, Job, Outcome, TempUpload, Transfer};
use super::users::{is_anonymous_name, Grant};
use super::vfs::{io_text, PathError, Resolved, Vfs, UPLOAD_PREFIX};
use super::xferlog;
use super::Shared;
use crate::clock;

/// Commands held while a transfer runs; beyond this the session stops reading.
const MAX_QUEUED: usize = 16;
/// Unprocessed control input beyond which the session stops reading.
const MAX_INPUT: usize = 64 * 1024;
/// Largest download sent inline by the session (see `send_inline`); loopback and typical
/// socket buffers take this much at once.
const INLINE_MAX: usize = 64 * 1024;
/// Retry hint when every port is leased and none is cooling (see `refused`).
const ALL_LEASED_RETRY: Duration = Duration::from_secs(1);
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
    /// For STOR/APPE/STOU: where the temporary file goes on success.
    target: Option<(PathBuf, bool)>,
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
    rnfr: Option<Resolved>,
    failed_logins: u32,
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
        reply.encode(&mut self.out);
    }

    fn multi(&mut self, code: u16, text: impl AsRef<[u8]>) {
        match ReplyCode::new(code) {
            Some(code) => Reply::new(code, text).encode(&mut self.out),
            None => self.reply(451, b"Internal error"),
        }
    }

    async fn flush(&mut self, stream: &mut TcpStream) -> io::Result<()> {
        if !self.out.is_empty() {
            stream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
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
        loop {
            // Everything already buffered first: a pipelining client gets all its replies in
            // one write.
            while !self.done {
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
            self.flush(stream).await?;
            if self.done {
                let _ = stream.shutdown().await;
                return Ok(());
            }
            let can_read = !read_closed && input.len() < MAX_INPUT;
            // An idle passive endpoint is not watched: the client's connection waits in the
            // backlog until the transfer command takes it (see `Passive::accept`). Only the
            // accept timeout needs a timer.
            let accept_deadline = match (&self.transfer, &self.data) {
                (None, Data::Passive(p)) => Some(p.deadline()),
                (None, Data::Connected(_, guard)) => guard.unused_until(),
                _ => None,
            };
            let has_transfer = self.transfer.is_some();
            tokio::select! {
                // Fixed order: a finished transfer is handled before the next command, which
                // may need it.
                biased;
                outcome = wait_transfer(&mut self.transfer), if has_transfer => {
                    let stream_ref = &mut *stream;
                    self.finish_transfer(outcome, stream_ref, &mut input, &mut read_closed);
                    last_activity = clock::now();
                }
                () = sleep_until_some(accept_deadline), if accept_deadline.is_some() => {
                    self.accept_timeout();
                }
                read = stream.read_buf(&mut input), if can_read => {
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
                                return Ok(());
                            }
                            self.closing = true;
                            self.close_reply = Some((421, "Control connection closed."));
                        }
                        Ok(_) => {}
                    }
                }
                () = &mut idle_timer, if !has_transfer => {
                    let due = last_activity + idle;
                    if clock::now() >= due {
                        self.reply(421, b"Timeout.");
                        self.done = true;
                    } else {
                        idle_timer.as_mut().reset(due);
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

    async fn pass(&mut self, password: &[u8]) {
        let name = match &self.login {
            Login::AwaitPass(name) => name.clone(),
            Login::LoggedIn(_) => return self.reply(230, b"Already logged in."),
            Login::AwaitUser => return self.reply(503, b"Login with USER first."),
        };
        let users = Arc::clone(&self.shared);
        let pw = password.to_vec();
        let lookup = name.clone();
        // argon2 takes tens of milliseconds on purpose: keep it off the runtime threads.
        let grant = tokio::task::spawn_blocking(move || users.users.verify(&lookup, &pw))
            .await
            .ok()
            .flatten();
        let user_text = String::from_utf8_lossy(&name).into_owned();
        let grant = grant.and_then(|grant| {
            let root = grant.root.clone().unwrap_or_else(|| self.shared.root.clone());
            match Vfs::new(&root) {
                Ok(vfs) => Some(Account { grant, vfs }),
                Err(e) => {
                    tracing::warn!(session = self.id, user = %user_text, error = %e, "user root unusable");
                    None
                }
            }
        });
        match grant {
            Some(account) => {
                tracing::info!(session = self.id, peer = %self.peer, user = %account.grant.name, write = account.grant.write, "login");
                self.login = Login::LoggedIn(account);
                self.reply(230, b"Login successful.");
            }
            None => {
                self.failed_logins += 1;
                tracing::warn!(session = self.id, peer = %self.peer, user = %user_text, attempts = self.failed_logins, "login failed");
                self.login = Login::AwaitUser;
                // The delay is the defence against guessing; it also holds the session's
                // other commands, which is the point.
                tokio::time::sleep(self.shared.config.login_fail_delay).await;
                if self.failed_logins >= self.shared.config.max_login_fails {
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

    fn path_error(&mut self, e: &PathError) {
        self.reply(550, e.describe().as_bytes());
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
            Command::Cwd(arg) => self.cwd(&vfs, arg.as_bytes()),
            Command::Cdup => self.cwd(&vfs, b".."),
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
            Command::Size(arg) => match vfs.existing(&self.cwd, arg.as_bytes()) {
                Ok(r) => match fs::metadata(&r.real) {
                    Ok(m) if m.is_file() => self.reply(213, m.len().to_string().as_bytes()),
                    Ok(_) => self.reply(550, b"Not a regular file."),
                    Err(e) => self.reply(550, io_text(&e).as_bytes()),
                },
                Err(e) => self.path_error(&e),
            },
            Command::Mdtm(arg) => match vfs.existing(&self.cwd, arg.as_bytes()) {
                Ok(r) => match fs::metadata(&r.real).and_then(|m| m.modified()) {
                    Ok(t) => {
                        let text = Civil::from_unix(listing::unix_secs(t)).time_val();
                        self.reply(213, text.as_bytes());
                    }
                    Err(e) => self.reply(550, io_text(&e).as_bytes()),
                },
                Err(e) => self.path_error(&e),
            },
            Command::Mfmt { time, path } => self.mfmt(&vfs, time.as_bytes(), path.as_bytes()),
            Command::Mkd(arg) => {
                if !self.writable() {
                    return self.reply(550, b"Permission denied.");
                }
                match vfs.name(&self.cwd, arg.as_bytes()) {
                    Ok(r) => match fs::create_dir(&r.real) {
                        Ok(()) => {
                            let mut text = quote_path(&r.virt);
                            text.extend_from_slice(b" created");
                            self.reply(257, &text);
                        }
                        Err(e) => self.reply(550, io_text(&e).as_bytes()),
                    },
                    Err(e) => self.path_error(&e),
                }
            }
            Command::Rmd(arg) => {
                if !self.writable() {
                    return self.reply(550, b"Permission denied.");
                }
                match vfs.name(&self.cwd, arg.as_bytes()) {
                    Ok(r) => match fs::remove_dir(&r.real) {
                        Ok(()) => self.reply(250, b"Directory removed."),
                        Err(e) => self.reply(550, io_text(&e).as_bytes()),
                    },
                    Err(e) => self.path_error(&e),
                }
            }
            Command::Dele(arg) => {
                if !self.writable() {
                    return self.reply(550, b"Permission denied.");
                }
                match vfs.name(&self.cwd, arg.as_bytes()) {
                    Ok(r) => match fs::symlink_metadata(&r.real) {
                        Ok(m) if m.is_dir() => self.reply(550, b"Is a directory."),
                        Ok(_) => match fs::remove_file(&r.real) {
                            Ok(()) => self.reply(250, b"File deleted."),
                            Err(e) => self.reply(550, io_text(&e).as_bytes()),
                        },
                        Err(e) => self.reply(550, io_text(&e).as_bytes()),
                    },
                    Err(e) => self.path_error(&e),
                }
            }
            Command::Rnfr(arg) => {
                if !self.writable() {
                    return self.reply(550, b"Permission denied.");
                }
                match vfs.name(&self.cwd, arg.as_bytes()) {
                    Ok(r) => match fs::symlink_metadata(&r.real) {
                        Ok(_) => {
                            self.rnfr = Some(r);
                            self.reply(350, b"Ready for RNTO.");
                        }
                        Err(e) => self.reply(550, io_text(&e).as_bytes()),
                    },
                    Err(e) => self.path_error(&e),
                }
            }
            Command::Rnto(arg) => {
                let Some(from) = self.rnfr.take() else {
                    return self.reply(503, b"RNFR required first.");
                };
                match vfs.name(&self.cwd, arg.as_bytes()) {
                    Ok(to) => match fs::rename(&from.real, &to.real) {
                        Ok(()) => self.reply(250, b"Rename successful."),
                        Err(e) => self.reply(550, io_text(&e).as_bytes()),
                    },
                    Err(e) => self.path_error(&e),
                }
            }
            Command::Site(arg) => self.site(&vfs, arg.as_bytes()),
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
                let path = args.path.unwrap_or(b"");
                match vfs.existing(&self.cwd, path) {
                    Ok(r) => {
                        let now = listing::unix_secs(clock::wall_now());
                        match listing::render(&r.real, &r.virt, Format::List { all: args.all }, now)
                        {
                            Ok(body) => {
                                let mut text = b"Status follows:\n".to_vec();
                                for line in body.split(|&b| b == b'\n') {
                                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                                    if !line.is_empty() {
                                        text.push(b' ');
                                        text.extend_from_slice(line);
                                        text.push(b'\n');
                                    }
                                }
                                text.extend_from_slice(b"End of status");
                                self.multi(213, text);
                            }
                            Err(e) => self.reply(550, io_text(&e).as_bytes()),
                        }
                    }
                    Err(e) => self.path_error(&e),
                }
            }
            Command::Mlst(arg) => {
                let path = arg.as_ref().map_or(&b""[..], |a| a.as_bytes());
                match vfs.existing(&self.cwd, path) {
                    Ok(r) => match fs::metadata(&r.real) {
                        Ok(meta) => {
                            let mut text = b"Listing ".to_vec();
                            text.extend_from_slice(&r.virt);
                            text.extend_from_slice(b"\n ");
                            listing::mlsx_facts(&meta, self.writable(), None, &mut text);
                            text.push(b' ');
                            text.extend(r.virt.iter().map(|&b| if b == b'\n' { b'?' } else { b }));
                            text.extend_from_slice(b"\nEnd");
                            self.multi(250, text);
                        }
                        Err(e) => self.reply(550, io_text(&e).as_bytes()),
                    },
                    Err(e) => self.path_error(&e),
                }
            }
            Command::List(arg) => {
                let args = listing::list_args(arg.as_ref().map(Argument::as_bytes));
                self.listing(&vfs, args.path, Format::List { all: args.all }, "LIST");
            }
            Command::Nlst(arg) => {
                let args = listing::list_args(arg.as_ref().map(Argument::as_bytes));
                self.listing(&vfs, args.path, Format::Nlst, "NLST");
            }
            Command::Mlsd(arg) => {
                let writable = self.writable();
                let path = arg.as_ref().map(Argument::as_bytes);
                self.listing(&vfs, path, Format::Mlsd { writable }, "MLSD");
            }
            Command::Retr(arg) => self.retr(&vfs, arg.as_bytes()),
            Command::Stor(arg) => self.store(&vfs, Some(arg.as_bytes()), StoreKind::Stor),
            Command::Appe(arg) => self.store(&vfs, Some(arg.as_bytes()), StoreKind::Appe),
            Command::Stou(arg) => {
                self.store(&vfs, arg.as_ref().map(Argument::as_bytes), StoreKind::Stou)
            }
            other => {
                let text = format!("{} not implemented.", other.verb());
                self.reply(502, text.as_bytes());
            }
        }
    }

    fn cwd(&mut self, vfs: &Vfs, arg: &[u8]) {
        match vfs.existing(&self.cwd, arg) {
            Ok(r) if r.real.is_dir() => {
                self.cwd = r.virt;
                self.reply(250, b"Directory successfully changed.");
            }
            Ok(_) => self.reply(550, b"Not a directory."),
            Err(e) => self.path_error(&e),
        }
    }

    fn mfmt(&mut self, vfs: &Vfs, time: &[u8], path: &[u8]) {
        if !self.writable() {
            return self.reply(550, b"Permission denied.");
        }
        let Some(civil) = Civil::parse_time_val(time) else {
            return self.reply(501, b"Bad time value (YYYYMMDDHHMMSS).");
        };
        let secs = civil.to_unix();
        let Ok(secs) = u64::try_from(secs) else {
            return self.reply(501, b"Times before 1970 are not supported.");
        };
        match vfs.existing(&self.cwd, path) {
            Ok(r) => {
                let result = File::options()
                    .write(true)
                    .open(&r.real)
                    .and_then(|f| f.set_modified(UNIX_EPOCH + Duration::from_secs(secs)));
                match result {
                    Ok(()) => {
                        let mut text = format!("Modify={}; ", civil.time_val()).into_bytes();
                        text.extend_from_slice(&r.virt);
                        self.reply(213, &text);
                    }
                    Err(e) => self.reply(550, io_text(&e).as_bytes()),
                }
            }
            Err(e) => self.path_error(&e),
        }
    }

    fn site(&mut self, vfs: &Vfs, arg: &[u8]) {
        let mut words = arg.splitn(3, |&b| b == b' ');
        let verb = words.next().unwrap_or(b"");
        if verb.eq_ignore_ascii_case(b"HELP") {
            return self.multi(214, "SITE commands:\n CHMOD HELP\nEnd");
        }
        if !verb.eq_ignore_ascii_case(b"CHMOD") {
            return self.reply(504, b"Unknown SITE command.");
        }
        if !self.writable() {
            return self.reply(550, b"Permission denied.");
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
        match vfs.existing(&self.cwd, path) {
            Ok(r) => match fs::set_permissions(&r.real, fs::Permissions::from_mode(mode)) {
                Ok(()) => self.reply(200, b"SITE CHMOD command ok."),
                Err(e) => self.reply(550, io_text(&e).as_bytes()),
            },
            Err(e) => self.path_error(&e),
        }
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
        match ports.open(self.peer.ip(), AddrFilter::V4).await {
            Ok(passive) => {
                let addr = passive.addr();
                match ports.advertise_v4(addr.ip(), self.local.ip()) {
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
                tracing::info!(
                    session = self.id,
                    retry_after_ms = d.as_millis() as u64,
                    "passive ports exhausted"
                );
                self.reply_full(&Reply::try_later(d));
            }
            Refusal::Exhausted { retry_after: None } => {
                // Every port is held by a live lease, so no time is known; a lease lasts
                // about as long as one transfer, and a second is a generous guess for that.
                tracing::info!(session = self.id, "passive ports all leased");
                self.reply_full(&Reply::try_later(ALL_LEASED_RETRY));
            }
            Refusal::PeerLimit { limit } => {
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
                self.reply_full(&Reply::try_later(ALL_LEASED_RETRY));
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
        target: Option<(PathBuf, bool)>,
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

    fn listing(&mut self, vfs: &Vfs, path: Option<&[u8]>, format: Format, verb: &'static str) {
        self.rest = 0;
        let resolved = match vfs.existing(&self.cwd, path.unwrap_or(b"")) {
            Ok(r) => r,
            Err(e) => return self.path_error(&e),
        };
        if matches!(format, Format::Mlsd { .. }) && !resolved.real.is_dir() {
            return self.reply(501, b"MLSD needs a directory.");
        }
        if matches!(self.data, Data::None) {
            return self.reply(425, b"Use PORT, PASV or EPSV first.");
        }
        let now = listing::unix_secs(clock::wall_now());
        match listing::render(&resolved.real, &resolved.virt, format, now) {
            Ok(body) => {
                self.reply(150, b"Here comes the directory listing.");
                self.start(Job::SendBytes(body), verb, resolved.virt, None);
            }
            Err(e) => self.reply(550, io_text(&e).as_bytes()),
        }
    }

    fn retr(&mut self, vfs: &Vfs, arg: &[u8]) {
        let offset = std::mem::take(&mut self.rest);
        if matches!(self.data, Data::None) {
            return self.reply(425, b"Use PORT, PASV or EPSV first.");
        }
        let resolved = match vfs.existing(&self.cwd, arg) {
            Ok(r) => r,
            Err(e) => return self.path_error(&e),
        };
        let opened = File::open(&resolved.real).and_then(|f| {
            let meta = f.metadata()?;
            Ok((f, meta))
        });
        let (mut file, meta) = match opened {
            Ok(x) => x,
            Err(e) => return self.reply(550, io_text(&e).as_bytes()),
        };
        if !meta.is_file() {
            return self.reply(550, b"Not a regular file.");
        }
        let len = meta.len();
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
        text.extend_from_slice(&resolved.virt);
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
        self.start(job, "RETR", resolved.virt, None);
    }

    /// Whether transfers convert line ends now: TYPE A, and `ascii_transfers` on.
    fn ascii(&self) -> bool {
        !self.binary && self.shared.config.ascii_transfers
    }

    fn store(&mut self, vfs: &Vfs, arg: Option<&[u8]>, kind: StoreKind) {
        let offset = std::mem::take(&mut self.rest);
        if !self.writable() {
            return self.reply(550, b"Permission denied.");
        }
        if matches!(self.data, Data::None) {
            return self.reply(425, b"Use PORT, PASV or EPSV first.");
        }
        let name = match (arg, kind) {
            (Some(a), _) => a.to_vec(),
            (None, _) => b"pasvd.stou".to_vec(),
        };
        let resolved = match vfs.name(&self.cwd, &name) {
            Ok(r) => r,
            Err(e) => return self.path_error(&e),
        };
        let existing = fs::metadata(&resolved.real);
        if let Ok(m) = &existing {
            if m.is_dir() {
                return self.reply(550, b"Is a directory.");
            }
        }
        // What of the old file the new one starts with: REST + STOR keeps `offset` bytes,
        // APPE all of them; copied into the temporary file so the old file stays whole until
        // the rename.
        let keep = match kind {
            StoreKind::Appe => existing.as_ref().map_or(0, fs::Metadata::len),
            StoreKind::Stor if offset > 0 => match &existing {
                Ok(m) if offset <= m.len() => offset,
                _ => return self.reply(554, b"Restart position beyond the end of the file."),
            },
            _ => 0,
        };
        let Some(parent) = resolved.real.parent() else {
            return self.reply(553, b"Bad file name.");
        };
        let temp = match create_temp(parent) {
            Ok(t) => t,
            Err(e) => return self.reply(553, io_text(&e).as_bytes()),
        };
        let mut upload = TempUpload {
            path: temp.0,
            file: Some(temp.1),
            fsync: self.shared.config.fsync_uploads,
            ascii: self.ascii(),
        };
        if keep > 0 {
            let copied = File::open(&resolved.real).and_then(|src| {
                let mut src = io::Read::take(src, keep);
                match upload.file.as_mut() {
                    Some(dst) => io::copy(&mut src, dst),
                    None => Ok(0),
                }
            });
            match copied {
                Ok(n) if n == keep => {}
                Ok(_) => return self.reply(451, b"File changed while preparing the upload."),
                Err(e) => return self.reply(451, io_text(&e).as_bytes()),
            }
        }
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
        self.start(
            Job::Receive(upload),
            verb,
            resolved.virt,
            Some((resolved.real, kind == StoreKind::Stou)),
        );
    }

    fn finish_transfer(
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
            } else if let Some((target, unique)) = running.target.take() {
                match commit(upload, &target, unique) {
                    Ok(name) => final_name = name,
                    Err(e) => outcome.ending = Ending::Local(e),
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
        let closer = outcome.closer.map_or("none", |c| match c {
            Closer::Server => "server",
            Closer::Client => "client",
            Closer::Reset => "reset",
            Closer::NeverConnected => "never-connected",
        });
        tracing::info!(
            session = self.id,
            peer = %self.peer.ip(),
            command = verb,
            path = %String::from_utf8_lossy(path),
            bytes = outcome.bytes,
            duration_us = outcome.duration.as_micros() as u64,
            port = outcome.port.unwrap_or(0),
            closer,
            result = ?outcome.ending,
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

fn create_temp(dir: &Path) -> io::Result<(PathBuf, File)> {
    for _ in 0..8 {
        let mut name = UPLOAD_PREFIX.to_vec();
        name.extend_from_slice(format!("{:016x}", rand::random::<u64>()).as_bytes());
        let path = dir.join(std::ffi::OsStr::from_bytes(&name));
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(f) => return Ok((path, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "no free temporary name",
    ))
}

/// Moves a finished upload into place: rename for STOR/APPE (atomic, replaces the old file),
/// link-then-unlink for STOU (never replaces anything). Returns the unique name for STOU.
fn commit(upload: TempUpload, target: &Path, unique: bool) -> io::Result<Option<Vec<u8>>> {
    let temp = upload.keep();
    if !unique {
        return match fs::rename(&temp, target) {
            Ok(()) => Ok(None),
            Err(e) => {
                let _ = fs::remove_file(&temp);
                Err(e)
            }
        };
    }
    let base = target.as_os_str().as_bytes().to_vec();
    for n in 0..1000u32 {
        let mut candidate = base.clone();
        if n > 0 {
            candidate.extend_from_slice(format!(".{n}").as_bytes());
        }
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(&candidate));
        match fs::hard_link(&temp, &path) {
            Ok(()) => {
                let _ = fs::remove_file(&temp);
                let name = path
                    .file_name()
                    .map(|n| n.as_bytes().to_vec())
                    .unwrap_or_default();
                return Ok(Some(name));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                let _ = fs::remove_file(&temp);
                return Err(e);
            }
        }
    }
    let _ = fs::remove_file(&temp);
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "no unique name left",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pathnames_are_quoted_by_doubling() {
        assert_eq!(quote_path(b"/a\"b"), b"\"/a\"\"b\"");
    }

    #[test]
    fn replies_never_carry_line_breaks_from_names() {
        let mut out = BytesMut::new();
        sanitize(b"a\r\nb\0c", &mut out);
        assert_eq!(&out[..], b"a??b?c");
    }
}
