//! The driver of one control connection: the control socket, the data endpoint, the files
//! and the transfer task of a session whose rules live in [`Core`].
//!
//! It only carries events in and actions out: bytes read go into the core's input, the
//! core's replies go out with one non-blocking write per loop turn (what the socket does not
//! take waits for a later turn), every [`Action`] is carried out here and answered with the
//! matching `handle_*` call, and one timer sleeps until [`Core::poll_timeout`]. The fast
//! paths stay here, where the sockets are: RETR's open runs inline, a small download on an
//! already accepted connection is written inline so its 150 and 226 leave in one control
//! write, large ones go out with `sendfile` from the transfer task. Filesystem calls that
//! may wait (everything but RETR's open) run on the blocking pool.
//!
//! FTPS: the control stream is a [`Control`], plain TCP or TLS (after AUTH TLS, or from the
//! first byte on the implicit listener). Under TLS the replies still go out with one
//! non-blocking write per turn, into rustls, whose records are flushed to the socket as it
//! takes them. Data connections under PROT P get their TLS handshake in the transfer task
//! (see `transfer`); the inline send and `sendfile` are for plaintext data connections only.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::FutureExt;
use pasv_pool::Closer;
use pasv_protocol::Password;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::ascii::ToNetwork;
use super::core::{
    self, Action, Core, Ending, FsDone, FsOp, PassiveRefusal, TransferEnd, Verified,
};
use super::defender::Banned;
use super::kernel::LedgerCheck;
use super::listing;
use super::metrics::{AcceptStage, TlsConnection};
use super::passive::{DataConn, LeaseGuard, Passive, Refusal};
use super::shared::Shared;
use super::tls::SessionTls;
use super::transfer::{DataSource, DataTls, Job, Outcome, TempUpload, Transfer};
use super::users::is_anonymous_name;
use super::vfs::{Download, FsError, Vfs};
use super::xferlog;
use crate::clock;

/// Largest download sent inline by the driver (see `send_inline`); loopback and typical
/// socket buffers take this much at once.
const INLINE_MAX: usize = 64 * 1024;

/// Ports listed at most by `SITE POOL` (disagreements first).
const SITE_POOL_PORTS: usize = 64;

/// The control connection: plain TCP, or TLS over it.
pub(crate) enum Control {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// Between the plain stream and the TLS stream (during AUTH TLS's handshake), or after a
    /// failed one.
    Gone,
}

/// What the control connection is ready for.
enum ControlEvent {
    Writable(io::Result<()>),
    Read(io::Result<usize>),
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "control connection closed")
}

impl Control {
    /// The TCP socket beneath.
    fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Control::Plain(s) => Some(s),
            Control::Tls(s) => Some(s.get_ref().0),
            Control::Gone => None,
        }
    }

    /// TLS records that rustls holds and the socket has not taken yet.
    fn tls_pending(&self) -> bool {
        match self {
            Control::Tls(s) => s.get_ref().1.wants_write(),
            _ => false,
        }
    }

    /// One non-blocking write: `WouldBlock` when nothing was taken.
    fn try_write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            Control::Plain(s) => s.try_write(bytes),
            Control::Tls(s) => {
                // rustls takes the bytes into its records and writes what the socket takes;
                // a Pending here only means the socket was full (the wake-up comes from
                // `writable` in the loop, not from this waker).
                let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
                // While rustls still holds records the socket did not take, it gets no new
                // bytes: they stay in the core's output, where its write-stall and idle
                // timeouts see them. Otherwise rustls would buffer up to 64 KiB of replies
                // for a client that stopped reading, and the core would believe them sent.
                if s.get_ref().1.wants_write() {
                    if let Poll::Ready(Err(e)) = Pin::new(&mut **s).poll_flush(&mut cx) {
                        return Err(e);
                    }
                    if s.get_ref().1.wants_write() {
                        return Err(io::ErrorKind::WouldBlock.into());
                    }
                }
                match Pin::new(&mut **s).poll_write(&mut cx, bytes) {
                    Poll::Ready(r) => r,
                    Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
                }
            }
            Control::Gone => Err(gone()),
        }
    }

    /// Pushes TLS records rustls holds into the socket, as far as it takes them.
    fn try_flush(&mut self) -> io::Result<()> {
        if let Control::Tls(s) = self {
            let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
            if let Poll::Ready(Err(e)) = Pin::new(&mut **s).poll_flush(&mut cx) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Waits until the socket takes more (`write`) or input came (`read`, into `input`).
    fn poll_event(
        &mut self,
        cx: &mut Context<'_>,
        input: &mut bytes::BytesMut,
        read: bool,
        write: bool,
    ) -> Poll<ControlEvent> {
        if write {
            match self.tcp() {
                Some(tcp) => {
                    if let Poll::Ready(r) = tcp.poll_write_ready(cx) {
                        return Poll::Ready(ControlEvent::Writable(r));
                    }
                }
                None => return Poll::Ready(ControlEvent::Writable(Err(gone()))),
            }
        }
        if read {
            let polled = match self {
                Control::Plain(s) => pin!(s.read_buf(input)).poll(cx),
                Control::Tls(s) => pin!(s.read_buf(input)).poll(cx),
                Control::Gone => Poll::Ready(Err(gone())),
            };
            if let Poll::Ready(r) = polled {
                return Poll::Ready(ControlEvent::Read(r));
            }
        }
        Poll::Pending
    }

    /// Reads what is there already, without waiting: `None` when nothing is.
    fn read_now(&mut self, input: &mut bytes::BytesMut) -> Option<io::Result<usize>> {
        match self {
            Control::Plain(s) => s.read_buf(input).now_or_never(),
            Control::Tls(s) => s.read_buf(input).now_or_never(),
            Control::Gone => Some(Ok(0)),
        }
    }

    /// Ends the connection: FIN (after TLS close_notify), within `timeout`.
    async fn shutdown(&mut self, timeout: Duration) {
        match self {
            Control::Plain(s) => {
                let _ = s.shutdown().await;
            }
            Control::Tls(s) => {
                let _ = tokio::time::timeout(timeout, s.shutdown()).await;
            }
            Control::Gone => {}
        }
    }
}

/// The data endpoint the next transfer will use.
enum Endpoint {
    None,
    Passive(Passive),
    Connected(DataConn, LeaseGuard),
    Active(SocketAddr),
}

/// The file the next transfer moves, opened before its 150 reply.
enum Prepared {
    None,
    Download(Download),
    Upload(TempUpload),
}

/// The answer of an operation that waits (blocking pool, pool queue, password hashing).
enum OpDone {
    Fs(Result<FsDone, FsError>, Prepared),
    Passive(Result<(Passive, Option<SocketAddr>), Refusal>),
    Verified(Verified, Option<Vfs>),
    PoolReport(String),
}

type Op = Pin<Box<dyn Future<Output = OpDone> + Send>>;

struct Running {
    handle: JoinHandle<Outcome>,
    abort: Option<oneshot::Sender<()>>,
    progress: Arc<AtomicU64>,
}

impl Drop for Running {
    fn drop(&mut self) {
        // A session that ends (or is cancelled) takes its transfer with it; the transfer's
        // lease guard and temporary file clean up on drop.
        self.handle.abort();
    }
}

struct Driver {
    shared: Arc<Shared>,
    id: u64,
    peer: SocketAddr,
    local: SocketAddr,
    /// The logged-in account's tree.
    vfs: Option<Vfs>,
    data: Endpoint,
    prepared: Prepared,
    running: Option<Running>,
    /// The one operation in flight, if any (the core waits for its answer).
    op: Option<Op>,
    /// The copy buffer, kept between transfers.
    buffer: Vec<u8>,
    /// The session's place among those not logged in yet, until it logs in.
    login: Option<super::LoginSlot>,
    /// The session's TLS (its own ticket key and session cache), from AUTH TLS or the
    /// implicit listener's handshake on; its data connections must resume it.
    tls: Option<SessionTls>,
    /// AUTH TLS's handshake waits for the replies before it (its 234) to be written.
    secure_pending: bool,
}

/// Serves one control connection to its end.
///
/// `login` is the session's place among those not logged in yet: given back at login.
/// `implicit`: the connection came to the implicit FTPS listener and starts with the TLS
/// handshake.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    login: super::LoginSlot,
    implicit: bool,
) {
    let local = match stream.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let _ = stream.set_nodelay(true);
    // Clients send ABOR with its first byte as TCP urgent data (RFC 959 section 4.1.3, Python's
    // ftplib does): inline, it stays part of the command instead of vanishing out of band.
    let _ = socket2::SockRef::from(&stream).set_out_of_band_inline(true);
    let _counted = shared.metrics.session_opened();
    let mut session_tls = None;
    let mut stream = if implicit {
        let Some(tls) = shared.tls.as_ref().and_then(|t| t.session().ok()) else {
            return;
        };
        match tls.accept_control(stream).await {
            Ok(accepted) => {
                shared
                    .metrics
                    .tls_handshake(TlsConnection::Control, accepted.resumed);
                session_tls = Some(tls);
                Control::Tls(Box::new(accepted.stream))
            }
            Err(e) => {
                shared.metrics.tls_control_failed();
                tracing::info!(session = id, peer = %peer, error = %e, "implicit TLS handshake failed");
                return;
            }
        }
    } else {
        Control::Plain(stream)
    };
    tracing::info!(session = id, peer = %peer, tls = implicit, "session opened");
    let mut core = Core::new(
        Arc::clone(&shared.rules),
        Arc::clone(&shared.metrics),
        id,
        peer,
        local,
        clock::pool_now(),
    );
    if implicit {
        core.set_implicit_tls();
    }
    let mut driver = Driver {
        shared,
        id,
        peer,
        local,
        vfs: None,
        data: Endpoint::None,
        prepared: Prepared::None,
        running: None,
        op: None,
        buffer: Vec::new(),
        login: Some(login),
        tls: session_tls,
        secure_pending: false,
    };
    let result = driver.run(&mut core, &mut stream).await;
    driver.release_data();
    driver.running = None;
    match result {
        Ok(()) => tracing::info!(session = id, peer = %peer, "session closed"),
        Err(e) => tracing::info!(session = id, peer = %peer, error = %e, "session ended"),
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

/// Sleeps until `at`; forever without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn wait_op(op: &mut Option<Op>) -> OpDone {
    match op {
        Some(op) => op.await,
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
fn read_past_urgent_mark(stream: &TcpStream, input: &mut bytes::BytesMut) -> bool {
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

/// What the core needs to know of a transfer's end.
fn transfer_end(outcome: Outcome, upload_ready: bool) -> TransferEnd {
    TransferEnd {
        ending: outcome.ending,
        bytes: outcome.bytes,
        duration: outcome.duration,
        port: outcome.port,
        closer: outcome.closer,
        upload_ready,
    }
}

impl Driver {
    async fn run(&mut self, core: &mut Core, stream: &mut Control) -> io::Result<()> {
        let shutdown = self.shared.shutdown.clone();
        let mut shutdown_told = false;
        // One timer for the whole session, moved only to an earlier deadline or after it
        // fired: the idle deadline moves with every command, and re-arming a timer for each
        // would cost a timer-wheel removal and insert per command. When it fires early the
        // core finds nothing due and the next turn arms it again.
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        let mut armed: Option<pasv_pool::Instant> = None;
        // When a closed session whose last records rustls still holds is reset (see below).
        let mut closing_deadline: Option<tokio::time::Instant> = None;
        loop {
            while let Some(action) = core.poll_action() {
                self.execute(action, core, stream)?;
            }
            if !core.transmit().is_empty() {
                let waiting = core.transmit().len();
                let written = match stream.try_write(core.transmit()) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                    Err(e) => return Err(e),
                };
                core.handle_written(clock::pool_now(), written);
                if !core.transmit().is_empty() {
                    self.shared.stats.note_pending_output(waiting);
                }
                if core.has_actions() {
                    // Room again: commands that waited in the input were decoded.
                    continue;
                }
            }
            if stream.tls_pending() {
                stream.try_flush()?;
            }
            if self.secure_pending && core.transmit().is_empty() && !stream.tls_pending() {
                // AUTH TLS: its 234 is out, nothing read after it was kept.
                self.secure_pending = false;
                self.secure_control(core, stream).await?;
                continue;
            }
            if core.is_closed() {
                // A verification or filesystem call the session no longer waits for.
                self.op = None;
                if core.transmit().is_empty() && !stream.tls_pending() && self.running.is_none() {
                    stream.shutdown(self.shared.config.accept_timeout).await;
                    return Ok(());
                }
            }
            match (core.poll_timeout(), armed) {
                (Some(at), Some(current)) if at >= current => {}
                (Some(at), _) => {
                    timer.as_mut().reset(clock::tokio_instant(at));
                    armed = Some(at);
                }
                (None, _) => armed = None,
            }
            // The backstop for a closed session whose last replies rustls holds: the core has
            // no timer left (its output is empty), and a client that never reads would keep
            // the driver waiting for room forever. After `idle_timeout` the connection is
            // reset, as the core resets one whose replies wait unread.
            let closing = if core.is_closed() && stream.tls_pending() {
                Some(
                    *closing_deadline
                        .get_or_insert_with(|| clock::now() + self.shared.config.idle_timeout),
                )
            } else {
                None
            };
            let can_read = core.wants_input();
            let replies_wait = !core.transmit().is_empty() || stream.tls_pending();
            let has_transfer = self.running.is_some();
            let has_op = self.op.is_some();
            // One future waits for room to write and for input: `read_buf` on the stream
            // takes a short read as the end of the input (no extra read to find the socket
            // empty).
            let plain = matches!(stream, Control::Plain(_));
            let input = core.input_buffer();
            let control = &mut *stream;
            let event =
                std::future::poll_fn(|cx| control.poll_event(cx, input, can_read, replies_wait));
            tokio::select! {
                // Fixed order: a finished transfer is handled before the next command, which
                // may need it.
                biased;
                outcome = wait_transfer(&mut self.running), if has_transfer => {
                    self.transfer_done(core, &mut *stream, outcome);
                }
                done = wait_op(&mut self.op), if has_op => {
                    self.op = None;
                    self.op_done(core, done);
                }
                // Ahead of the read: a client that keeps sending cannot starve the login
                // deadline.
                () = &mut timer, if armed.is_some() => {
                    armed = None;
                    core.handle_timeout(clock::pool_now());
                }
                // The next turn writes; `Writable` only waited for room.
                event = event, if can_read || replies_wait => {
                    let read = match event {
                        ControlEvent::Writable(writable) => {
                            writable?;
                            continue;
                        }
                        ControlEvent::Read(read) => read,
                    };
                    self.shared.busy_poll.touch();
                    let read = match (read, stream.tcp()) {
                        (Ok(n), Some(tcp)) if plain && n > 0 && read_past_urgent_mark(tcp, core.input_buffer()) => Ok(0),
                        (other, _) => other,
                    };
                    if let Some(running) = &self.running {
                        core.handle_progress(running.progress.load(Ordering::Relaxed));
                    }
                    match read {
                        Ok(0) | Err(_) => core.handle_eof(clock::pool_now()),
                        Ok(_) => core.handle_input(clock::pool_now()),
                    }
                }
                () = sleep_until(closing), if closing.is_some() => {
                    if let Some(tcp) = stream.tcp() {
                        let _ = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO));
                    }
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "TLS records left unread after the last reply",
                    ));
                }
                () = shutdown.cancelled(), if !shutdown_told => {
                    shutdown_told = true;
                    core.handle_shutdown(clock::pool_now());
                }
            }
        }
    }

    /// Carries out one action of the core.
    fn execute(&mut self, action: Action, core: &mut Core, stream: &Control) -> io::Result<()> {
        match action {
            Action::Fs(op) => self.fs(op, core),
            Action::OpenPassive { extended } => self.open_passive(extended),
            Action::UseActive(addr) => {
                self.release_data();
                self.data = Endpoint::Active(addr);
            }
            Action::ReleaseData => {
                let unused = match &self.data {
                    Endpoint::Connected(_, guard) => guard.addr().map(|a| a.port()),
                    Endpoint::Passive(p) if p.holds_connection() => Some(p.addr().port()),
                    _ => None,
                };
                if let Some(port) = unused {
                    tracing::info!(session = self.id, port, "data connection closed unused");
                }
                self.release_data();
            }
            Action::AcceptDue => self.accept_due(core),
            Action::PoolReport => {
                let shared = Arc::clone(&self.shared);
                self.op = Some(Box::pin(async move {
                    let check = shared.ports.ledger_check().await;
                    OpDone::PoolReport(Driver::pool_report(&shared, check))
                }));
            }
            Action::Verify { name, password } => self.verify(name, password),
            Action::StartTransfer(job) => self.start(job, core),
            Action::AbortTransfer => {
                if let Some(tx) = self.running.as_mut().and_then(|r| r.abort.take()) {
                    let _ = tx.send(());
                }
            }
            Action::DiscardUpload => self.prepared = Prepared::None,
            Action::Log(finished) => {
                if let Some(log) = &self.shared.xferlog {
                    log.write(&xferlog::Entry {
                        when: clock::wall_now(),
                        duration: finished.duration,
                        remote: self.peer.ip(),
                        bytes: finished.bytes,
                        path: &finished.path,
                        binary: finished.binary,
                        incoming: finished.incoming,
                        anonymous: finished.anonymous,
                        user: &finished.user,
                        complete: finished.complete,
                    });
                }
            }
            Action::Reset { unread } => {
                // Nothing more can reach this client: a reset frees the socket and its
                // unsent replies at once instead of leaving them to the kernel's orphan
                // retries.
                if let Some(tcp) = stream.tcp() {
                    let _ = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO));
                }
                let text = format!("{unread} reply bytes left unread");
                return Err(io::Error::new(io::ErrorKind::TimedOut, text));
            }
            Action::SecureControl => self.secure_pending = true,
        }
        Ok(())
    }

    /// The session's TLS state, made at its first use.
    fn session_tls(&mut self) -> io::Result<SessionTls> {
        if let Some(tls) = &self.tls {
            return Ok(tls.clone());
        }
        let server = self
            .shared
            .tls
            .as_ref()
            .ok_or_else(|| io::Error::other("TLS is not configured"))?;
        let tls = server.session().map_err(io::Error::other)?;
        self.tls = Some(tls.clone());
        Ok(tls)
    }

    /// AUTH TLS: the control connection's handshake, its 234 already written. A failure
    /// ends the session (the stream is in no state to carry a reply).
    async fn secure_control(&mut self, core: &mut Core, stream: &mut Control) -> io::Result<()> {
        let tcp = match std::mem::replace(stream, Control::Gone) {
            Control::Plain(tcp) => tcp,
            other => {
                // The core refuses a second AUTH: not reached.
                *stream = other;
                core.handle_secured(clock::pool_now(), false);
                return Err(io::Error::other(
                    "AUTH TLS on a connection that is not plain",
                ));
            }
        };
        let session = match self.session_tls() {
            Ok(session) => session,
            Err(e) => {
                core.handle_secured(clock::pool_now(), false);
                return Err(e);
            }
        };
        match session.accept_control(tcp).await {
            Ok(accepted) => {
                self.shared
                    .metrics
                    .tls_handshake(TlsConnection::Control, accepted.resumed);
                tracing::debug!(session = self.id, version = ?accepted.version, "control connection secured");
                *stream = Control::Tls(Box::new(accepted.stream));
                core.handle_secured(clock::pool_now(), true);
                Ok(())
            }
            Err(e) => {
                self.shared.metrics.tls_control_failed();
                core.handle_secured(clock::pool_now(), false);
                Err(io::Error::other(format!(
                    "control connection TLS handshake: {e}"
                )))
            }
        }
    }

    /// Runs a filesystem operation: RETR's open inline, the rest on the blocking pool.
    fn fs(&mut self, op: FsOp, core: &mut Core) {
        let Some(vfs) = self.vfs.clone() else {
            return core.handle_fs(clock::pool_now(), Err(FsError::Denied));
        };
        let op: Op = match op {
            FsOp::OpenDownload {
                path,
                offset,
                ascii,
            } => {
                // One open beneath the root and one fstat, inline: neither waits on another
                // process (the open is non-blocking, so a FIFO is refused, not waited for).
                let result = vfs.open_download(&path, offset, ascii).map(|download| {
                    let len = download.len;
                    self.prepared = Prepared::Download(download);
                    FsDone::Opened { len }
                });
                return core.handle_fs(clock::pool_now(), result);
            }
            FsOp::CreateUpload { path, keep } => {
                let fsync = self.shared.config.fsync_uploads;
                Box::pin(async move {
                    match on_pool(&vfs, move |v| v.create_upload(&path, keep)).await {
                        Ok(upload) => OpDone::Fs(
                            Ok(FsDone::Prepared),
                            Prepared::Upload(TempUpload {
                                upload,
                                fsync,
                                // Set when the transfer starts.
                                ascii: false,
                            }),
                        ),
                        Err(e) => OpDone::Fs(Err(e), Prepared::None),
                    }
                })
            }
            FsOp::Commit { target, unique } => {
                let Prepared::Upload(upload) =
                    std::mem::replace(&mut self.prepared, Prepared::None)
                else {
                    let lost = io::Error::other("upload lost before its commit");
                    return core.handle_fs(clock::pool_now(), Err(FsError::Io(lost)));
                };
                let upload = upload.upload;
                Box::pin(async move {
                    let done = on_pool(&vfs, move |v| v.commit(upload, &target, unique)).await;
                    OpDone::Fs(done.map(FsDone::Committed), Prepared::None)
                })
            }
            FsOp::Render { path, format } => Box::pin(async move {
                let now = listing::unix_secs(clock::wall_now());
                let done = on_pool(&vfs, move |v| listing::render(v, &path, format, now)).await;
                OpDone::Fs(done.map(FsDone::Rendered), Prepared::None)
            }),
            op => Box::pin(async move {
                let done = on_pool(&vfs, move |v| run_fs(v, op)).await;
                OpDone::Fs(done, Prepared::None)
            }),
        };
        self.op = Some(op);
    }

    fn open_passive(&mut self, extended: bool) {
        self.release_data();
        let ports = Arc::clone(&self.shared.ports);
        let (peer, local) = (self.peer.ip(), self.local.ip());
        self.op = Some(Box::pin(async move {
            let filter = if extended {
                ports.epsv_filter(local.to_canonical())
            } else {
                ports.pasv_filter(local)
            };
            let passive = match ports.open(peer, filter).await {
                Ok(passive) => passive,
                Err(refusal) => return OpDone::Passive(Err(refusal)),
            };
            let addr = passive.addr();
            if extended {
                return OpDone::Passive(Ok((passive, Some(addr))));
            }
            let advertised = ports
                .advertise_v4(addr.ip(), local, peer)
                .await
                .map(|ip| SocketAddr::from((ip, addr.port())));
            OpDone::Passive(Ok((passive, advertised)))
        }));
    }

    fn verify(&mut self, name: Vec<u8>, password: Password) {
        let shared = Arc::clone(&self.shared);
        let (id, peer) = (self.id, self.peer);
        self.op = Some(Box::pin(async move {
            let attempt = if is_anonymous_name(&name) {
                None
            } else {
                match shared.defender.begin_login(peer.ip()).await {
                    Ok(attempt) => Some(attempt),
                    Err(Banned) => return OpDone::Verified(Verified::Banned, None),
                }
            };
            let grant = shared.users.verify_bounded(&name, password.expose()).await;
            let grant = grant.and_then(|grant| {
                let vfs = match &grant.root {
                    Some(root) => Vfs::new(root),
                    None => Ok(shared.vfs.clone()),
                };
                match vfs {
                    Ok(vfs) => Some((grant, vfs)),
                    Err(e) => {
                        let user = pasv_protocol::Escaped::new(&name).to_string();
                        tracing::warn!(session = id, user = %user, error = %e, "user root unusable");
                        None
                    }
                }
            });
            match grant {
                Some((grant, vfs)) => {
                    if let Some(attempt) = attempt {
                        attempt.succeeded();
                    }
                    let verified = Verified::Granted {
                        name: grant.name,
                        write: grant.write,
                        anonymous: grant.anonymous,
                        admin: grant.admin,
                    };
                    OpDone::Verified(verified, Some(vfs))
                }
                None => {
                    let failure = attempt.map(|a| a.failed());
                    let verified = Verified::Failed {
                        delay: failure.map(|f| f.delay),
                        banned: failure.is_some_and(|f| f.banned_until.is_some()),
                    };
                    OpDone::Verified(verified, None)
                }
            }
        }));
    }

    /// The text of `SITE POOL`: the pool's counts and its ledger against the kernel's
    /// TIME_WAIT table.
    fn pool_report(shared: &Shared, check: io::Result<Arc<LedgerCheck>>) -> String {
        let ports = &shared.ports;
        let stats = ports.stats();
        let mut text = format!(
            "Pool: {} free, {} leased, {} cooling, {} (port, client) pairs in per-client \
             quarantine.\n",
            stats.free, stats.leased, stats.cooling, stats.peer_quarantined
        );
        match check {
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
        text
    }

    fn op_done(&mut self, core: &mut Core, done: OpDone) {
        let now = clock::pool_now();
        match done {
            OpDone::PoolReport(text) => core.handle_pool_report(now, &text),
            OpDone::Fs(result, prepared) => {
                if !matches!(prepared, Prepared::None) {
                    self.prepared = prepared;
                }
                core.handle_fs(now, result);
            }
            OpDone::Passive(Ok((passive, advertised))) => {
                let answer = match advertised {
                    Some(addr) => {
                        self.data = Endpoint::Passive(passive);
                        core::Passive::Opened(addr)
                    }
                    None => {
                        passive.never_connected();
                        core::Passive::NoIpv4
                    }
                };
                core.handle_passive(now, answer);
            }
            OpDone::Passive(Err(refusal)) => {
                let refusal = match refusal {
                    Refusal::Exhausted {
                        retry_after: Some(retry_after),
                    } => PassiveRefusal::Exhausted { retry_after },
                    Refusal::Exhausted { retry_after: None } => PassiveRefusal::AllLeased {
                        hint: self.shared.ports.all_leased_hint(),
                    },
                    Refusal::PeerLimit { limit } => PassiveRefusal::PeerLimit { limit },
                    Refusal::NoAddress => PassiveRefusal::NoAddress,
                    Refusal::Bind(e) => PassiveRefusal::Bind(e.to_string()),
                };
                core.handle_passive(now, core::Passive::Refused(refusal));
            }
            OpDone::Verified(verified, vfs) => {
                if vfs.is_some() {
                    self.vfs = vfs;
                }
                core.handle_verified(now, verified);
                if core.is_logged_in() {
                    self.login = None;
                }
            }
        }
    }

    /// The accept timeout of an idle passive endpoint: a connection that did arrive is taken
    /// (as if the transfer command were next; under PROT P held, with the endpoint still
    /// listening), else the port goes back to the pool.
    fn accept_due(&mut self, core: &mut Core) {
        if core.data_protected() {
            // PROT P: the connection that came first is the client's only once its TLS
            // handshake resumes this session, at the transfer. It is held and the endpoint
            // keeps listening, so that a same-address thief's connection ahead of the
            // client's cannot take the transfer down with it.
            if let Endpoint::Passive(p) = &mut self.data {
                p.keep_listening();
                if let Ok(Some(conn)) = p.try_accept() {
                    p.hold(conn);
                    tracing::info!(
                        session = self.id,
                        port = p.addr().port(),
                        "data connection waiting for a transfer command, endpoint still listening"
                    );
                    return core.handle_connection_taken(clock::pool_now());
                }
            }
        } else if let Ok(true) = self.take_waiting_connection() {
            return core.handle_connection_taken(clock::pool_now());
        }
        if let Endpoint::Passive(p) = std::mem::replace(&mut self.data, Endpoint::None) {
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
    /// endpoint [`Endpoint::Connected`]; whether it did.
    fn take_waiting_connection(&mut self) -> Result<bool, super::passive::AcceptError> {
        let Endpoint::Passive(p) = &mut self.data else {
            return Ok(false);
        };
        let Some(conn) = p.try_accept()? else {
            return Ok(false);
        };
        if let Endpoint::Passive(p) = std::mem::replace(&mut self.data, Endpoint::None) {
            self.data = Endpoint::Connected(conn, p.into_guard());
        }
        Ok(true)
    }

    fn release_data(&mut self) {
        match std::mem::replace(&mut self.data, Endpoint::None) {
            Endpoint::Passive(p) => p.never_connected(),
            Endpoint::Connected(stream, guard) => {
                super::passive::reset(stream);
                guard.release(Closer::Reset);
            }
            Endpoint::Active(_) | Endpoint::None => {}
        }
    }

    fn transfer_done(&mut self, core: &mut Core, control: &mut Control, mut outcome: Outcome) {
        self.running = None;
        self.buffer = std::mem::take(&mut outcome.buffer);
        let upload = outcome.upload.take();
        let upload_ready = upload.is_some();
        if let Some(upload) = upload {
            // The data connection ended with a clean EOF, but a client that dies sends FIN
            // on both connections: if the control connection is closed too, the upload was
            // not finished on purpose.
            if core.input_open() {
                if let Some(Ok(0) | Err(_)) = control.read_now(core.input_buffer()) {
                    core.handle_eof(clock::pool_now());
                }
            }
            self.prepared = Prepared::Upload(upload);
        }
        core.handle_transfer(clock::pool_now(), transfer_end(outcome, upload_ready));
    }

    fn take_source(&mut self) -> Option<DataSource> {
        match std::mem::replace(&mut self.data, Endpoint::None) {
            Endpoint::None => None,
            Endpoint::Passive(p) => Some(DataSource::Passive(p)),
            Endpoint::Connected(s, g) => Some(DataSource::Connected(s, g)),
            Endpoint::Active(addr) => Some(DataSource::Active {
                addr,
                local: self.local.ip(),
                timeout: self.shared.config.connect_timeout,
            }),
        }
    }

    fn start(&mut self, job: core::Job, core: &mut Core) {
        let prepared = std::mem::replace(&mut self.prepared, Prepared::None);
        let job = match (job, prepared) {
            (core::Job::Listing(body), _) => Job::SendBytes(body),
            (core::Job::Download { ascii }, Prepared::Download(d)) => {
                if ascii {
                    Job::SendText {
                        file: d.file,
                        len: d.len,
                        encoder: ToNetwork::after(d.previous),
                    }
                } else {
                    Job::SendFile {
                        file: d.file,
                        len: d.len,
                    }
                }
            }
            (core::Job::Upload { ascii }, Prepared::Upload(upload)) => {
                Job::Receive(TempUpload { ascii, ..upload })
            }
            _ => {
                let lost = io::Error::other("transfer file lost before its start");
                let outcome = Outcome::failed(Ending::Local(lost));
                return core.handle_transfer(clock::pool_now(), transfer_end(outcome, false));
            }
        };
        // The client usually connects right after 227: take a connection that is already
        // waiting, so a small download can go out inline.
        // (An error shows again when the transfer waits for the connection.) Not under
        // PROT P: nothing goes out inline, and the transfer task accepts on the endpoint
        // itself, so that it can accept again after a connection its TLS check refuses.
        if !core.data_protected() {
            let _ = self.take_waiting_connection();
        }
        // PROT P: the data connection's TLS handshake runs in the transfer task, as part of
        // its accept; nothing goes out inline.
        let tls = if core.data_protected() {
            match self.session_tls() {
                Ok(session) => Some(DataTls {
                    session,
                    accept_timeout: self.shared.config.accept_timeout,
                    metrics: Arc::clone(&self.shared.metrics),
                }),
                Err(e) => {
                    self.release_data();
                    let outcome = Outcome::failed(Ending::NoConnection(e.to_string()));
                    return core.handle_transfer(clock::pool_now(), transfer_end(outcome, false));
                }
            }
        } else {
            None
        };
        let (job, pre_sent) = if tls.is_some() {
            (job, 0)
        } else {
            match self.send_inline(job) {
                Ok(outcome) => {
                    return core.handle_transfer(clock::pool_now(), transfer_end(outcome, false))
                }
                Err(rest) => rest,
            }
        };
        let Some(source) = self.take_source() else {
            let outcome = Outcome::failed(Ending::NoConnection("no data connection".into()));
            return core.handle_transfer(clock::pool_now(), transfer_end(outcome, false));
        };
        let (tx, rx) = oneshot::channel();
        let progress = Arc::new(AtomicU64::new(pre_sent));
        let transfer = Transfer {
            source,
            job,
            buffer: std::mem::take(&mut self.buffer),
            buffer_size: self.shared.config.buffer_size,
            stall: self.shared.config.data_timeout,
            progress: Arc::clone(&progress),
            abort: rx,
            tls,
        };
        self.running = Some(Running {
            handle: tokio::spawn(transfer.run()),
            abort: Some(tx),
            progress,
        });
    }

    /// Small downloads on an already accepted connection are written right here: one
    /// non-blocking send into an empty socket buffer, our FIN, and the 150 and 226 leave in
    /// one control write. That saves a task, two wake-ups and a control write per transfer,
    /// which is most of the per-transfer cost for small files. Anything that does not fit at
    /// once goes to a transfer task, with what was sent counted.
    fn send_inline(&mut self, job: Job) -> Result<Outcome, (Job, u64)> {
        if !matches!(self.data, Endpoint::Connected(..)) {
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
        let Endpoint::Connected(stream, guard) = std::mem::replace(&mut self.data, Endpoint::None)
        else {
            return Err((Job::SendBytes(body[..len].to_vec()), 0));
        };
        let port = guard.addr().map(|a| a.port());
        // Sent with MSG_MORE, the data waits in the socket until our FIN joins it: one
        // segment carries both, so the client gets data and EOF in one wake-up and one
        // packet less crosses the stack each way. (TCP_CORK did the same with a system call
        // more.) Whatever a short write leaves goes out with the transfer task's plain
        // writes, which push it.
        use rustix::net::SendFlags;
        let written =
            rustix::net::send(&stream, &body[..len], SendFlags::MORE | SendFlags::NOSIGNAL)
                .map_err(io::Error::from);
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
                self.data = Endpoint::Connected(stream, guard);
                Err((Job::SendBytes(rest), n as u64))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let rest = body[..len].to_vec();
                self.keep_buffer(body);
                self.data = Endpoint::Connected(stream, guard);
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
}

/// Runs the filesystem operations that have no file to hand over.
fn run_fs(vfs: &Vfs, op: FsOp) -> Result<FsDone, FsError> {
    match op {
        FsOp::IsDir(path) => vfs.is_dir(&path).map(|()| FsDone::Done),
        FsOp::Stat(path) => vfs.stat(&path).map(FsDone::Meta),
        FsOp::Mkdir(path) => vfs.mkdir(&path).map(|()| FsDone::Done),
        FsOp::Rmdir(path) => vfs.rmdir(&path).map(|()| FsDone::Done),
        FsOp::Delete(path) => vfs.delete(&path).map(|()| FsDone::Done),
        FsOp::Exists(path) => vfs.exists(&path).map(|()| FsDone::Done),
        FsOp::Rename { from, to } => vfs.rename(&from, &to).map(|()| FsDone::Done),
        FsOp::SetModified { path, secs } => vfs.set_modified(&path, secs).map(|()| FsDone::Done),
        FsOp::Chmod { path, mode } => vfs.chmod(&path, mode).map(|()| FsDone::Done),
        FsOp::Render { .. }
        | FsOp::OpenDownload { .. }
        | FsOp::CreateUpload { .. }
        | FsOp::Commit { .. } => Err(FsError::Io(io::Error::other(
            "operation needs the session's file",
        ))),
    }
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
