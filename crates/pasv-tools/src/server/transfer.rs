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
//! File reads and writes are plain blocking calls on the runtime thread: served files are
//! expected in the page cache, where a 256 KiB read costs tens of microseconds, less than a
//! round trip to tokio's blocking pool. fsync, which waits for the disk, goes to that pool.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pasv_pool::Closer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;

use super::ascii::{FromNetwork, ToNetwork};
use super::passive::{reset, AcceptError, DataConn, LeaseGuard, Passive};
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

/// An upload's temporary file; removed on drop unless taken for the rename.
pub(crate) struct TempUpload {
    pub(crate) path: PathBuf,
    pub(crate) file: Option<File>,
    pub(crate) fsync: bool,
    /// TYPE A: CRLF in the data is stored as LF.
    pub(crate) ascii: bool,
}

impl TempUpload {
    /// Gives up the cleanup duty: the caller renames or removes the file.
    pub(crate) fn keep(mut self) -> PathBuf {
        std::mem::take(&mut self.path)
    }
}

impl Drop for TempUpload {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// How a transfer ended.
#[derive(Debug)]
pub(crate) enum Ending {
    /// Every byte moved and the connection closed cleanly.
    Complete,
    /// The client never connected (accept timeout) or the active connect failed.
    NoConnection(String),
    /// ABOR, or the control connection went away.
    Aborted,
    /// The data connection failed or stalled.
    Network(io::Error),
    /// Reading or writing the file failed.
    Local(io::Error),
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

/// Everything a transfer task needs.
pub(crate) struct Transfer {
    pub(crate) source: DataSource,
    pub(crate) job: Job,
    pub(crate) buffer: Vec<u8>,
    pub(crate) buffer_size: usize,
    pub(crate) stall: Duration,
    pub(crate) progress: Arc<AtomicU64>,
    pub(crate) abort: oneshot::Receiver<()>,
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
        let connected = match self.source {
            DataSource::Connected(stream, guard) => Ok((stream, Some(guard))),
            DataSource::Passive(mut passive) => {
                outcome.port = Some(passive.addr().port());
                let accepted = tokio::select! {
                    r = passive.accept() => Some(r),
                    _ = &mut self.abort => None,
                };
                match accepted {
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
        let (stream, guard) = match connected {
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
        match std::mem::replace(&mut self.job, Job::SendBytes(Vec::new())) {
            Job::SendFile { file, len } if len >= SENDFILE_MIN => {
                let (ending, closer, sent) =
                    send_file(stream, file, len, stall, &mut self.abort).await;
                progress.fetch_add(sent, Ordering::Relaxed);
                outcome.bytes = progress.load(Ordering::Relaxed);
                outcome.ending = ending;
                outcome.closer = Some(closer);
                if let Some(guard) = guard {
                    guard.release(closer);
                }
                outcome.buffer = buffer;
                outcome.duration = clock::now().saturating_duration_since(start);
                return outcome;
            }
            job => self.job = job,
        }
        let mut stream = match TcpStream::from_std(stream) {
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
        let result = {
            let copy = copy(
                &mut stream,
                &mut self.job,
                &mut buffer,
                buffer_size,
                stall,
                &progress,
            );
            tokio::select! {
                r = copy => r,
                _ = &mut self.abort => Err(Ending::Aborted),
            }
        };
        outcome.bytes = progress.load(Ordering::Relaxed);
        let closer = match result {
            Ok(()) if sending => {
                // Our FIN first: TIME_WAIT stays on the passive port.
                match tokio::time::timeout(stall, stream.shutdown()).await {
                    Ok(Ok(())) => Closer::Server,
                    Ok(Err(e)) => {
                        outcome.ending = Ending::Network(e);
                        reset(stream);
                        Closer::Reset
                    }
                    Err(_) => {
                        outcome.ending = Ending::Network(io::ErrorKind::TimedOut.into());
                        reset(stream);
                        Closer::Reset
                    }
                }
            }
            Ok(()) => {
                // The client's FIN came first (we read EOF); closing now completes the
                // handshake without a TIME_WAIT on our side.
                drop(stream);
                Closer::Client
            }
            Err(ending) => {
                reset(stream);
                outcome.ending = ending;
                Closer::Reset
            }
        };
        outcome.closer = Some(closer);
        if let Some(guard) = guard {
            guard.release(closer);
        }
        if let (Ending::Complete, Job::Receive(mut upload)) = (&outcome.ending, self.job) {
            if let Some(file) = upload.file.take() {
                let fsync = upload.fsync;
                let synced = if fsync {
                    tokio::task::spawn_blocking(move || file.sync_all())
                        .await
                        .unwrap_or_else(|e| Err(io::Error::other(e.to_string())))
                } else {
                    Ok(())
                };
                match synced {
                    Ok(()) => outcome.upload = Some(upload),
                    Err(e) => outcome.ending = Ending::Local(e),
                }
            }
        }
        outcome.buffer = buffer;
        outcome.duration = clock::now().saturating_duration_since(start);
        outcome
    }
}

/// Downloads at least this large go through `sendfile` (see [`send_file`]).
const SENDFILE_MIN: u64 = 256 * 1024;

/// Sends a file with `sendfile(2)` (std's `io::copy` specialisation for a regular file into a
/// socket) on a blocking-pool thread: the pages go from the page cache to the socket without
/// a copy through user space, which halves the server's CPU per byte on large files. The
/// socket is switched to blocking mode with a send timeout as the stall timeout; an abort
/// shuts the socket down from here, which wakes the blocked `sendfile`.
async fn send_file(
    std_stream: DataConn,
    file: File,
    len: u64,
    stall: Duration,
    abort: &mut oneshot::Receiver<()>,
) -> (Ending, Closer, u64) {
    let prepared = std_stream
        .set_nonblocking(false)
        .and_then(|()| std_stream.set_write_timeout(Some(stall.max(Duration::from_millis(1)))))
        .and_then(|()| std_stream.try_clone());
    let killer = match prepared {
        Ok(k) => k,
        Err(e) => {
            let _ = socket2::SockRef::from(&std_stream).set_linger(Some(Duration::ZERO));
            return (Ending::Network(e), Closer::Reset, 0);
        }
    };
    let mut task = tokio::task::spawn_blocking(move || {
        let mut source = Read::take(file, len);
        let copied = std::io::copy(&mut source, &mut &std_stream);
        (copied, std_stream)
    });
    let mut aborted = false;
    let joined = tokio::select! {
        r = &mut task => r,
        _ = &mut *abort => {
            aborted = true;
            let _ = killer.shutdown(std::net::Shutdown::Both);
            task.await
        }
    };
    let (copied, std_stream) = match joined {
        Ok(x) => x,
        Err(e) => {
            let _ = socket2::SockRef::from(&killer).set_linger(Some(Duration::ZERO));
            return (
                Ending::Local(io::Error::other(e.to_string())),
                Closer::Reset,
                0,
            );
        }
    };
    drop(killer);
    let rst = |s: &std::net::TcpStream| {
        let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
    };
    match copied {
        _ if aborted => {
            rst(&std_stream);
            (Ending::Aborted, Closer::Reset, 0)
        }
        Ok(n) if n == len => match std_stream.shutdown(std::net::Shutdown::Write) {
            Ok(()) => (Ending::Complete, Closer::Server, n),
            Err(e) => {
                rst(&std_stream);
                (Ending::Network(e), Closer::Reset, n)
            }
        },
        Ok(n) => {
            // The file shrank under us: the client must not take a short file for a whole one.
            rst(&std_stream);
            let e = io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank during transfer");
            (Ending::Local(e), Closer::Reset, n)
        }
        Err(e) => {
            rst(&std_stream);
            let ending = if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) {
                stalled()
            } else {
                Ending::Network(e)
            };
            (ending, Closer::Reset, 0)
        }
    }
}

fn stalled() -> Ending {
    Ending::Network(io::Error::new(
        io::ErrorKind::TimedOut,
        "data connection stalled",
    ))
}

async fn copy(
    stream: &mut TcpStream,
    job: &mut Job,
    buffer: &mut Vec<u8>,
    buffer_size: usize,
    stall: Duration,
    progress: &AtomicU64,
) -> Result<(), Ending> {
    match job {
        Job::SendBytes(bytes) => {
            match tokio::time::timeout(stall, stream.write_all(bytes)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(Ending::Network(e)),
                Err(_) => return Err(stalled()),
            }
            progress.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            Ok(())
        }
        Job::SendFile { file, len } => {
            // Small files get a small buffer: a 256 KiB allocation for a 1 KiB file would cost
            // more than the transfer.
            let want = usize::try_from(*len)
                .unwrap_or(usize::MAX)
                .clamp(4096, buffer_size);
            if buffer.len() < want {
                buffer.resize(want, 0);
            }
            let buf = &mut buffer[..want];
            loop {
                let n = match file.read(buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Ending::Local(e)),
                };
                match tokio::time::timeout(stall, stream.write_all(&buf[..n])).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(Ending::Network(e)),
                    Err(_) => return Err(stalled()),
                }
                progress.fetch_add(n as u64, Ordering::Relaxed);
            }
            Ok(())
        }
        Job::SendText { file, len, encoder } => {
            let want = usize::try_from(*len)
                .unwrap_or(usize::MAX)
                .clamp(4096, buffer_size);
            if buffer.len() < want {
                buffer.resize(want, 0);
            }
            let buf = &mut buffer[..want];
            let mut out = Vec::with_capacity(want + want / 8);
            loop {
                let n = match file.read(buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Ending::Local(e)),
                };
                out.clear();
                encoder.convert(&buf[..n], &mut out);
                match tokio::time::timeout(stall, stream.write_all(&out)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(Ending::Network(e)),
                    Err(_) => return Err(stalled()),
                }
                progress.fetch_add(out.len() as u64, Ordering::Relaxed);
            }
            Ok(())
        }
        Job::Receive(upload) => {
            let Some(file) = upload.file.as_mut() else {
                return Err(Ending::Local(io::Error::other("upload file missing")));
            };
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
