//! Data transfers: one task per transfer, started by the session, which keeps reading the
//! control connection meanwhile.
//!
//! Who closes first is what the pool needs to know (TIME_WAIT lands on the closer's side):
//! a download ends with our FIN ([`Closer::Server`]), an upload with the client's FIN, which
//! we read as EOF ([`Closer::Client`]), and anything else with a RST ([`Closer::Reset`],
//! SO_LINGER 0), which leaves no TIME_WAIT at all.
//!
//! TYPE A transfers ([`Job::SendText`], and uploads with [`TempUpload::ascii`]) convert line
//! ends on the way (see `ascii`) and so always go through the copy loop here: never inline
//! in the session, never `sendfile`. Binary transfers keep both fast paths. The byte counts
//! (STAT, the final log line, xferlog) are bytes on the data connection.
//!
//! Binary downloads go out with `sendfile(2)`, non-blocking on the runtime thread (see
//! [`send_file`]); the copy loop is the fallback for files the kernel cannot `sendfile`.
//! Other file reads and writes are plain blocking calls on the runtime thread: served files
//! are expected in the page cache, where a 256 KiB read costs tens of microseconds, less
//! than a round trip to tokio's blocking pool. fsync, which waits for the disk, goes to that
//! pool.
//!
//! Under PROT P ([`DataTls`]) the connection first gets its TLS handshake, which must resume
//! the control session's TLS session (see `tls`) and must end within `accept_timeout` of the
//! transfer's start: the accept and the handshake share that deadline. The copy then goes
//! through the TLS stream (no `sendfile`: the bytes are encrypted in user space), and a
//! download ends with TLS close_notify and our FIN before the session writes its 226.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pasv_pool::Closer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;

use super::ascii::{FromNetwork, ToNetwork};
use super::core::Ending;
use super::metrics::{Counters, DataTlsRefusal, TlsConnection};
use super::passive::{AcceptError, DataConn, LeaseGuard, Passive};
use super::tls::{DataTlsError, SessionTls};
use super::vfs::Upload;
use crate::clock;

/// Where the data connection comes from.
pub(crate) enum DataSource {
    /// A passive endpoint still waiting for the client.
    Passive(Passive),
    /// A passive connection the session already accepted.
    Connected(DataConn, LeaseGuard),
    /// PORT/EPRT: we connect to the client (address already checked).
    Active {
        addr: SocketAddr,
        local: IpAddr,
        timeout: Duration,
    },
}

/// What to move.
pub(crate) enum Job {
    /// A file from an offset (RETR).
    SendFile { file: File, len: u64 },
    /// A file from an offset in TYPE A (RETR): bare LF sent as CRLF. `len` is what is left
    /// of the file, which sizes the read buffer.
    SendText {
        file: File,
        len: u64,
        encoder: ToNetwork,
    },
    /// A rendered listing (LIST, NLST, MLSD).
    SendBytes(Vec<u8>),
    /// An upload into a temporary file (STOR, APPE, STOU).
    Receive(TempUpload),
}

/// An upload's file (see [`Upload`]: nothing of it stays unless the session commits it).
pub(crate) struct TempUpload {
    pub(crate) upload: Upload,
    pub(crate) fsync: bool,
    /// TYPE A: CRLF in the data is stored as LF.
    pub(crate) ascii: bool,
}

/// The report a transfer task hands back to its session.
pub(crate) struct Outcome {
    pub(crate) ending: Ending,
    pub(crate) bytes: u64,
    pub(crate) duration: Duration,
    pub(crate) port: Option<u16>,
    pub(crate) closer: Option<Closer>,
    /// The finished upload's temporary file, fsynced, for the session to rename.
    pub(crate) upload: Option<TempUpload>,
    /// The copy buffer, handed back for the next transfer.
    pub(crate) buffer: Vec<u8>,
}

impl Outcome {
    /// A transfer that ended before moving anything.
    pub(crate) fn failed(ending: Ending) -> Outcome {
        Outcome {
            ending,
            bytes: 0,
            duration: Duration::ZERO,
            port: None,
            closer: None,
            upload: None,
            buffer: Vec::new(),
        }
    }
}

/// How a refused data connection handshake is counted, and the 425's text.
fn refusal_of(refused: &DataTlsError) -> (DataTlsRefusal, String) {
    match refused {
        DataTlsError::NotResumed { .. } => (
            DataTlsRefusal::NotResumed,
            "TLS session of data connection not resumed (it must resume the control \
             connection's TLS session)"
                .to_owned(),
        ),
        DataTlsError::Timeout(_) => (
            DataTlsRefusal::Timeout,
            "TLS handshake of data connection timed out".to_owned(),
        ),
        e => (DataTlsRefusal::Failed, format!("data connection: {e}")),
    }
}

/// Data connections refused at their TLS handshake (from the right address, but not
/// resuming the control session) that one transfer tolerates before it fails with 425: each
/// costs a full handshake's CPU.
const MAX_REFUSED_HANDSHAKES: u32 = 4;

/// How long one data connection's TLS handshake may take before the endpoint gives up on it
/// and accepts the next: a share of the accept time, so that a same-address connection that
/// arrives first and sends nothing cannot hold the transfer until its deadline (it counts
/// as one of the [`MAX_REFUSED_HANDSHAKES`]), and at least a second, far more than a
/// client's ClientHello needs after its connect.
fn handshake_step(accept_timeout: Duration) -> Duration {
    (accept_timeout / MAX_REFUSED_HANDSHAKES).max(Duration::from_secs(1))
}

/// PROT P: the data connection is TLS, bound to this control session.
pub(crate) struct DataTls {
    pub(crate) session: SessionTls,
    /// The accept and the handshake end within this of the transfer's start.
    pub(crate) accept_timeout: Duration,
    pub(crate) metrics: Arc<Counters>,
}

/// A data stream the copy runs on: plain TCP (with `sendfile`) or TLS over it.
trait DataIo: AsyncRead + AsyncWrite + Unpin + Send {
    /// The socket beneath.
    fn tcp(&self) -> &TcpStream;
    /// Whether the bytes may go to the socket as they are (`sendfile`).
    fn plain(&self) -> bool;
}

impl DataIo for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }

    fn plain(&self) -> bool {
        true
    }
}

impl DataIo for tokio_rustls::server::TlsStream<&mut TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }

    fn plain(&self) -> bool {
        false
    }
}

/// Everything a transfer task needs.
pub(crate) struct Transfer {
    pub(crate) source: DataSource,
    pub(crate) job: Job,
    pub(crate) buffer: Vec<u8>,
    pub(crate) buffer_size: usize,
    pub(crate) stall: Duration,
    pub(crate) progress: Arc<AtomicU64>,
    pub(crate) abort: oneshot::Receiver<()>,
    /// PROT P: the data connection's TLS.
    pub(crate) tls: Option<DataTls>,
}

async fn connect_active(
    addr: SocketAddr,
    local: IpAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // From the control connection's address, so the client sees the server it talks to.
    socket.bind(SocketAddr::new(local, 0))?;
    match tokio::time::timeout(timeout, socket.connect(addr)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    }
}

impl Transfer {
    /// Runs the transfer to its end; never panics on network or file errors.
    pub(crate) async fn run(mut self) -> Outcome {
        let start = clock::now();
        // Starts as "nothing moved yet"; the steps below fill it in.
        let mut outcome = Outcome::failed(Ending::Complete);
        // PROT P on a passive endpoint: the endpoint keeps listening until a connection
        // passed its TLS handshake (a same-address thief's refused one must not fail the
        // transfer); it becomes the lease's guard after.
        let mut listening: Option<Passive> = None;
        let connected = match self.source {
            DataSource::Connected(stream, guard) => Ok((stream, Some(guard))),
            DataSource::Passive(mut passive) => {
                outcome.port = Some(passive.addr().port());
                if let Some(tls) = &self.tls {
                    passive.keep_listening();
                    // A connection held since before the command may be refused at its
                    // handshake: accepting again gets this command's accept time.
                    passive.extend_deadline(start + tls.accept_timeout);
                }
                let accepted = tokio::select! {
                    r = passive.accept() => Some(r),
                    _ = &mut self.abort => None,
                };
                match accepted {
                    Some(Ok(stream)) if self.tls.is_some() => {
                        listening = Some(passive);
                        Ok((stream, None))
                    }
                    Some(Ok(stream)) => Ok((stream, Some(passive.into_guard()))),
                    Some(Err(e)) => {
                        passive.never_connected();
                        Err(match e {
                            AcceptError::Timeout => Ending::NoConnection("accept timed out".into()),
                            AcceptError::Io(e) => Ending::NoConnection(e.to_string()),
                        })
                    }
                    None => {
                        passive.never_connected();
                        Err(Ending::Aborted)
                    }
                }
            }
            DataSource::Active {
                addr,
                local,
                timeout,
            } => {
                let connect = connect_active(addr, local, timeout);
                tokio::select! {
                    r = connect => r
                        .and_then(TcpStream::into_std)
                        .map(|s| (s, None))
                        .map_err(|e| Ending::NoConnection(e.to_string())),
                    _ = &mut self.abort => Err(Ending::Aborted),
                }
            }
        };
        let (stream, mut guard) = match connected {
            Ok(c) => c,
            Err(ending) => {
                outcome.ending = ending;
                outcome.buffer = self.buffer;
                outcome.duration = clock::now().saturating_duration_since(start);
                return outcome;
            }
        };
        if let Some(g) = &guard {
            outcome.port = g.addr().map(|a| a.port());
        }
        let mut buffer = std::mem::take(&mut self.buffer);
        let progress = Arc::clone(&self.progress);
        let stall = self.stall;
        let buffer_size = self.buffer_size;
        let sending = !matches!(self.job, Job::Receive(_));
        let mut tcp = match TcpStream::from_std(stream) {
            Ok(s) => s,
            Err(e) => {
                if let Some(guard) = guard {
                    guard.release(Closer::Reset);
                }
                outcome.ending = Ending::Network(e);
                outcome.closer = Some(Closer::Reset);
                outcome.buffer = buffer;
                return outcome;
            }
        };
        let closer = match self.tls.take() {
            None => {
                let (ending, closer) = finish(
                    &mut tcp,
                    &mut self.job,
                    &mut buffer,
                    buffer_size,
                    stall,
                    &progress,
                    sending,
                    &mut self.abort,
                )
                .await;
                outcome.ending = ending;
                closer
            }
            Some(tls) => {
                // The accept and the handshakes share the one deadline.
                let deadline = start + tls.accept_timeout;
                let mut refused_handshakes = 0;
                loop {
                    let handshake = async {
                        if sending {
                            tls.session.accept_data(&mut tcp).await
                        } else {
                            tls.session.accept_upload(&mut tcp).await
                        }
                    };
                    let step = deadline.min(clock::now() + handshake_step(tls.accept_timeout));
                    let handshake = tokio::time::timeout_at(step, handshake);
                    let accepted = tokio::select! {
                        r = handshake => Some(r),
                        _ = &mut self.abort => None,
                    };
                    let accepted = accepted
                        .map(|r| r.unwrap_or(Err(DataTlsError::Timeout(tls.accept_timeout))));
                    break match accepted {
                        Some(Ok(accepted)) => {
                            tls.metrics
                                .tls_handshake(TlsConnection::Data, accepted.resumed);
                            let mut stream = accepted.stream;
                            let (ending, closer) = finish(
                                &mut stream,
                                &mut self.job,
                                &mut buffer,
                                buffer_size,
                                stall,
                                &progress,
                                sending,
                                &mut self.abort,
                            )
                            .await;
                            outcome.ending = ending;
                            closer
                        }
                        Some(Err(refused)) => {
                            let (refusal, why) = refusal_of(&refused);
                            tls.metrics.tls_data_refused(refusal);
                            // From the right address but not the client's own TLS session (a
                            // port thief behind the same NAT, or a client that does not
                            // resume): on a passive endpoint the connection is reset and the
                            // endpoint waits on for the real client until the deadline, for a
                            // bounded number of refused handshakes.
                            refused_handshakes += 1;
                            let retry = match listening.as_mut() {
                                // A silent connection's step timed out: the next may be
                                // the client's, while the accept time lasts.
                                Some(passive)
                                    if (refusal != DataTlsRefusal::Timeout
                                        || clock::now() < deadline)
                                        && refused_handshakes < MAX_REFUSED_HANDSHAKES =>
                                {
                                    Some(passive)
                                }
                                _ => None,
                            };
                            if let Some(passive) = retry {
                                tracing::info!(port = outcome.port.unwrap_or(0), error = %refused,
                                    "data connection refused at its TLS handshake; waiting for another");
                                reset_data(&tcp);
                                let next = tokio::select! {
                                    r = tokio::time::timeout_at(deadline, passive.accept()) => Some(r),
                                    _ = &mut self.abort => None,
                                };
                                match next {
                                    None => outcome.ending = Ending::Aborted,
                                    Some(Ok(Ok(stream))) => match TcpStream::from_std(stream) {
                                        Ok(next) => {
                                            // The refused connection goes with a reset.
                                            tcp = next;
                                            continue;
                                        }
                                        Err(e) => {
                                            outcome.ending = Ending::NoConnection(e.to_string());
                                        }
                                    },
                                    Some(Ok(Err(AcceptError::Io(e)))) => {
                                        outcome.ending = Ending::NoConnection(e.to_string());
                                    }
                                    // The deadline passed: the last refusal is the 425's reason.
                                    Some(Ok(Err(AcceptError::Timeout)) | Err(_)) => {
                                        outcome.ending = Ending::NoConnection(why);
                                    }
                                }
                                Closer::Reset
                            } else {
                                outcome.ending = Ending::NoConnection(why);
                                if refusal == DataTlsRefusal::NotResumed {
                                    // close_notify and our FIN went out: a clean close.
                                    Closer::Server
                                } else {
                                    reset_data(&tcp);
                                    Closer::Reset
                                }
                            }
                        }
                        None => {
                            reset_data(&tcp);
                            outcome.ending = Ending::Aborted;
                            Closer::Reset
                        }
                    };
                }
            }
        };
        // The endpoint stops listening now, and its lease goes back below.
        if let Some(passive) = listening {
            guard = Some(passive.into_guard());
        }
        // Closed now (a reset if `reset_data` said so): before the lease goes back.
        drop(tcp);
        outcome.bytes = progress.load(Ordering::Relaxed);
        outcome.closer = Some(closer);
        if let Some(guard) = guard {
            guard.release(closer);
        }
        if let (Ending::Complete, Job::Receive(upload)) = (&outcome.ending, self.job) {
            let synced = if upload.fsync {
                tokio::task::spawn_blocking(move || {
                    let synced = upload.upload.file.sync_all();
                    synced.map(|()| upload)
                })
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e.to_string())))
            } else {
                Ok(upload)
            };
            match synced {
                Ok(upload) => outcome.upload = Some(upload),
                Err(e) => outcome.ending = Ending::Local(e),
            }
        }
        outcome.buffer = buffer;
        outcome.duration = clock::now().saturating_duration_since(start);
        outcome
    }
}

/// Copies and closes: our FIN after a download (TLS close_notify first under TLS), the
/// client's EOF after an upload, a reset after anything else. The ending and who closed.
#[allow(clippy::too_many_arguments)]
async fn finish<S: DataIo>(
    stream: &mut S,
    job: &mut Job,
    buffer: &mut Vec<u8>,
    buffer_size: usize,
    stall: Duration,
    progress: &AtomicU64,
    sending: bool,
    abort: &mut oneshot::Receiver<()>,
) -> (Ending, Closer) {
    let result = {
        let copy = copy(stream, job, buffer, buffer_size, stall, progress);
        tokio::select! {
            r = copy => r,
            _ = abort => Err(Ending::Aborted),
        }
    };
    match result {
        Ok(()) if sending => {
            // Our FIN first: TIME_WAIT stays on the passive port. Under TLS the close_notify
            // goes before it, and both before the 226.
            match tokio::time::timeout(stall, stream.shutdown()).await {
                Ok(Ok(())) => (Ending::Complete, Closer::Server),
                Ok(Err(e)) => {
                    reset_data(stream);
                    (Ending::Network(e), Closer::Reset)
                }
                Err(_) => {
                    reset_data(stream);
                    (
                        Ending::Network(io::ErrorKind::TimedOut.into()),
                        Closer::Reset,
                    )
                }
            }
        }
        // The client's FIN came first (we read EOF); closing now completes the handshake
        // without a TIME_WAIT on our side. Under TLS the client's close_notify came with
        // it: ours answers it (clients that wait for it, such as Python's `unwrap`, get it).
        Ok(()) => {
            if !stream.plain() {
                let _ = tokio::time::timeout(stall, stream.shutdown()).await;
            }
            (Ending::Complete, Closer::Client)
        }
        Err(ending) => {
            reset_data(stream);
            (ending, Closer::Reset)
        }
    }
}

/// Makes the close of a data stream a reset (SO_LINGER 0): the socket is closed when its
/// owner drops it.
fn reset_data<S: DataIo>(stream: &S) {
    let _ = socket2::SockRef::from(stream.tcp()).set_linger(Some(Duration::ZERO));
}

/// Unsent bytes a `sendfile` download may queue in its socket (`TCP_NOTSENT_LOWAT`).
///
/// In-flight data is not limited (the send buffer still grows with the path's
/// bandwidth-delay product); only data the window does not let out yet is. Queued beyond
/// that, it would be sent later from the ACK path, on whichever CPU processes the client's
/// ACKs; over loopback that is the client's. Measured with a Python client pinned to one
/// core: 1 MiB downloads went from 1.5-1.8 GB/s (whole file queued) to 3.1-3.5 GB/s (16 or
/// 32 KiB), with less server CPU than a read/write copy.
const SEND_LOWAT: u32 = 32 * 1024;

/// Sends `len` bytes of `file` from its current position with `sendfile(2)`: the pages go
/// from the page cache into the socket without a copy through user space (one copy in all,
/// the receiver's). Non-blocking: when the socket buffer is full it waits for room, so an
/// abort or the stall timeout ends it like any other copy, and `progress` (what STAT shows)
/// moves with every call. Returns `Ok(false)` when the kernel cannot `sendfile` from this
/// file (nothing was sent; the caller copies instead).
///
/// Not `std::io::copy`: for a file into a socket it deliberately avoids `sendfile` (a later
/// change to the file could show in the socket buffer) and copies through an 8 KiB buffer,
/// 128 `read`/`send` pairs per MiB.
async fn send_file(
    stream: &TcpStream,
    file: &File,
    len: u64,
    stall: Duration,
    progress: &AtomicU64,
) -> Result<bool, Ending> {
    use std::io::Seek;
    use tokio::io::Interest;
    /// The most one `sendfile` call moves on Linux.
    const MAX_CALL: u64 = 0x7fff_f000;
    // Queue little more than the network can take at once; see [`SEND_LOWAT`].
    let _ = socket2::SockRef::from(stream).set_tcp_notsent_lowat(SEND_LOWAT);
    let start = (&mut &*file).stream_position().map_err(Ending::Local)?;
    let end = start.saturating_add(len);
    let mut offset = start;
    while offset < end {
        let want = usize::try_from((end - offset).min(MAX_CALL)).unwrap_or(usize::MAX);
        let sent = stream.try_io(Interest::WRITABLE, || {
            rustix::fs::sendfile(stream, file, Some(&mut offset), want).map_err(io::Error::from)
        });
        match sent {
            Ok(0) => {
                // The file shrank under us: the client must not take a short file for a
                // whole one.
                return Err(Ending::Local(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shrank during transfer",
                )));
            }
            Ok(n) => {
                progress.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                match tokio::time::timeout(stall, stream.writable()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(Ending::Network(e)),
                    Err(_) => return Err(stalled()),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if offset == start
                    && matches!(
                        rustix::io::Errno::from_io_error(&e),
                        Some(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS)
                    ) =>
            {
                return Ok(false);
            }
            Err(e) => return Err(Ending::Network(e)),
        }
    }
    Ok(true)
}

/// Writes all of `bytes`, or fails once no byte moved for `stall`.
///
/// The timeout is per write call, not for the whole buffer: a listing of many megabytes to a
/// slow client that keeps reading may take longer than `stall` in all. A call that the
/// socket takes at once never arms the timer.
async fn write_within<S: DataIo>(
    stream: &mut S,
    mut bytes: &[u8],
    stall: Duration,
) -> Result<(), Ending> {
    while !bytes.is_empty() {
        match tokio::time::timeout(stall, stream.write(bytes)).await {
            Ok(Ok(0)) => return Err(Ending::Network(io::ErrorKind::WriteZero.into())),
            Ok(Ok(n)) => bytes = &bytes[n..],
            Ok(Err(e)) => return Err(Ending::Network(e)),
            Err(_) => return Err(stalled()),
        }
    }
    Ok(())
}

/// Sends a file through the copy buffer: TYPE A (converting line ends with `encoder`) and
/// binary files the kernel cannot `sendfile`.
#[allow(clippy::too_many_arguments)]
async fn send_read<S: DataIo>(
    stream: &mut S,
    file: &mut File,
    len: u64,
    mut encoder: Option<&mut ToNetwork>,
    buffer: &mut Vec<u8>,
    buffer_size: usize,
    stall: Duration,
    progress: &AtomicU64,
) -> Result<(), Ending> {
    // Small files get a small buffer: a 256 KiB allocation for a 1 KiB file would cost more
    // than the transfer.
    let want = usize::try_from(len)
        .unwrap_or(usize::MAX)
        .clamp(4096, buffer_size);
    if buffer.len() < want {
        buffer.resize(want, 0);
    }
    let buf = &mut buffer[..want];
    let mut text = Vec::new();
    loop {
        let n = match file.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Ending::Local(e)),
        };
        let out = match encoder.as_deref_mut() {
            Some(encoder) => {
                text.clear();
                encoder.convert(&buf[..n], &mut text);
                &text[..]
            }
            None => &buf[..n],
        };
        write_within(stream, out, stall).await?;
        progress.fetch_add(out.len() as u64, Ordering::Relaxed);
    }
}

fn stalled() -> Ending {
    Ending::Network(io::Error::new(
        io::ErrorKind::TimedOut,
        "data connection stalled",
    ))
}

async fn copy<S: DataIo>(
    stream: &mut S,
    job: &mut Job,
    buffer: &mut Vec<u8>,
    buffer_size: usize,
    stall: Duration,
    progress: &AtomicU64,
) -> Result<(), Ending> {
    match job {
        Job::SendBytes(bytes) => {
            write_within(stream, bytes, stall).await?;
            progress.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            Ok(())
        }
        Job::SendFile { file, len } => {
            if stream.plain() && send_file(stream.tcp(), file, *len, stall, progress).await? {
                return Ok(());
            }
            send_read(
                stream,
                file,
                *len,
                None,
                buffer,
                buffer_size,
                stall,
                progress,
            )
            .await
        }
        Job::SendText { file, len, encoder } => {
            let encoder = Some(encoder);
            send_read(
                stream,
                file,
                *len,
                encoder,
                buffer,
                buffer_size,
                stall,
                progress,
            )
            .await
        }
        Job::Receive(upload) => {
            let file = &mut upload.upload.file;
            if buffer.len() < buffer_size {
                buffer.resize(buffer_size, 0);
            }
            let mut received = 0u64;
            let mut decoder = upload.ascii.then(FromNetwork::default);
            let mut text = Vec::new();
            loop {
                let n = match tokio::time::timeout(stall, stream.read(buffer)).await {
                    Ok(Ok(0)) => break,
                    Ok(Ok(n)) => n,
                    Ok(Err(e)) => return Err(Ending::Network(e)),
                    Err(_) => return Err(stalled()),
                };
                match decoder.as_mut() {
                    Some(decoder) => {
                        text.clear();
                        decoder.convert(&buffer[..n], &mut text);
                        file.write_all(&text)
                    }
                    None => file.write_all(&buffer[..n]),
                }
                .map_err(Ending::Local)?;
                received += n as u64;
                progress.store(received, Ordering::Relaxed);
            }
            if let Some(mut decoder) = decoder {
                text.clear();
                decoder.finish(&mut text);
                file.write_all(&text).map_err(Ending::Local)?;
            }
            Ok(())
        }
    }
}
