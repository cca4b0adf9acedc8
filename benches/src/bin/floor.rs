//! `floor`: the reference responder that pasvd's cost per transfer is measured against.
//!
//! It answers the command sequence `pasv load` sends (greeting, USER, PASS, TYPE I, then per
//! transfer PASV or EPSV, the data connection, RETR, and QUIT at the end) with replies built
//! before the first connection, and makes the fewest system calls the protocol allows: per
//! command one `read` and one `write` (RETR's 150 and 226 leave together after the data); per
//! transfer one `accept` on a listener bound at start, one `write` of the file (held in
//! memory) and a `close`. Nothing is allocated per transfer.
//! It checks nothing (any user, any path: every RETR sends the same file) and serves one
//! session per thread with blocking sockets, so no readiness polling either.
//!
//! With `--root DIR` instead of `--file`, it makes the calls pasvd's security rules add to a
//! transfer, and nothing else: RETR opens the named file beneath `DIR` at the moment of use
//! (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`), checks with `fstat` that it is
//! a regular file, reads it (or `sendfile`s one over 64 KiB) and closes it; PASV first resets
//! any connection already queued on the port it lends (one `accept` that finds the backlog
//! empty: a connection from before the grant is never taken for the transfer); the data
//! leaves with `MSG_MORE` and a `shutdown`, so data and FIN share a segment. That measures
//! what the rules cost apart from how pasvd is built.
//!
//! ```text
//! floor --pasv LO-HI (--file PATH | --root DIR) [--listen 127.0.0.1:0]
//! ```
//!
//! Every port of the range is listened on once at start; PASV lends one to the session until
//! its transfer ends, and a session that finds none free waits for one (as pasvd's
//! `pasv_wait`). It prints `listening on ADDR` once it accepts connections.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::net::SendFlags;

/// Files up to this size are read and sent with one `send`; larger ones go by `sendfile`
/// (pasvd's threshold).
const INLINE_MAX: u64 = 64 * 1024;

/// What RETR sends.
enum Source {
    /// The file read at start, for every RETR.
    Memory(Arc<[u8]>),
    /// The named file, opened beneath this directory at each RETR.
    Root(OwnedFd),
}

/// The passive listeners and the replies that name them, shared by every session.
struct Ports {
    listeners: Vec<TcpListener>,
    /// `227 ... (h1,h2,h3,h4,p1,p2)` per listener.
    pasv: Vec<Vec<u8>>,
    /// `229 ... (|||port|)` per listener.
    epsv: Vec<Vec<u8>>,
    free: Mutex<Vec<usize>>,
    freed: Condvar,
}

impl Ports {
    fn take(&self) -> usize {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(i) = free.pop() {
                return i;
            }
            free = self.freed.wait(free).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn give_back(&self, i: usize) {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).push(i);
        self.freed.notify_one();
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("floor: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let mut listen: SocketAddr = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
    let mut range = None;
    let mut file = None;
    let mut root = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--listen" => listen = value()?.parse().map_err(|e| format!("--listen: {e}"))?,
            "--pasv" => {
                let v = value()?;
                let (lo, hi) = v
                    .split_once('-')
                    .and_then(|(lo, hi)| Some((lo.parse::<u16>().ok()?, hi.parse::<u16>().ok()?)))
                    .filter(|&(lo, hi)| lo > 0 && lo <= hi)
                    .ok_or_else(|| format!("--pasv takes LO-HI, not {v:?}"))?;
                range = Some((lo, hi));
            }
            "--file" => file = Some(value()?),
            "--root" => root = Some(value()?),
            other => return Err(format!("unknown argument {other:?}; {USAGE}")),
        }
    }
    let (lo, hi) = range.ok_or("--pasv LO-HI is required")?;
    let source = Arc::new(match (file, root) {
        (Some(file), None) => Source::Memory(
            std::fs::read(&file)
                .map_err(|e| format!("{file}: {e}"))?
                .into(),
        ),
        (None, Some(root)) => Source::Root(
            rustix::fs::open(
                root.as_str(),
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| format!("{root}: {e}"))?,
        ),
        _ => return Err(format!("one of --file and --root is required; {USAGE}")),
    });

    let ip = listen.ip();
    let octets = match ip {
        std::net::IpAddr::V4(v4) => v4.octets(),
        std::net::IpAddr::V6(_) => return Err("--listen must be an IPv4 address".into()),
    };
    let mut listeners = Vec::new();
    let mut pasv = Vec::new();
    let mut epsv = Vec::new();
    for port in lo..=hi {
        let l = TcpListener::bind((ip, port)).map_err(|e| format!("{ip}:{port}: {e}"))?;
        if matches!(*source, Source::Root(_)) {
            // The check for queued connections must not wait for one.
            l.set_nonblocking(true).map_err(|e| e.to_string())?;
        }
        listeners.push(l);
        let [a, b, c, d] = octets;
        pasv.push(
            format!(
                "227 Entering Passive Mode ({a},{b},{c},{d},{},{}).\r\n",
                port >> 8,
                port & 0xff
            )
            .into_bytes(),
        );
        epsv.push(format!("229 Entering Extended Passive Mode (|||{port}|)\r\n").into_bytes());
    }
    let ports = Arc::new(Ports {
        free: Mutex::new((0..listeners.len()).rev().collect()),
        listeners,
        pasv,
        epsv,
        freed: Condvar::new(),
    });

    let control = TcpListener::bind(listen).map_err(|e| format!("{listen}: {e}"))?;
    let local = control.local_addr().map_err(|e| e.to_string())?;
    println!("listening on {local}");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    for stream in control.incoming() {
        let Ok(stream) = stream else { continue };
        let ports = Arc::clone(&ports);
        let source = Arc::clone(&source);
        std::thread::spawn(move || {
            // A session ends on QUIT, EOF or any socket error; nothing to report.
            let _ = session(stream, &ports, &source);
        });
    }
    Ok(())
}

/// One control connection: a read and a write per command.
fn session(mut ctl: TcpStream, ports: &Ports, source: &Source) -> std::io::Result<()> {
    // Replies are whole lines written at once: Nagle's algorithm would hold a reply behind
    // the previous one's acknowledgement.
    ctl.set_nodelay(true)?;
    ctl.write_all(b"220 floor\r\n")?;
    let mut buf = [0u8; 1024];
    let mut have = 0;
    let mut lent: Option<usize> = None;
    // The file of a confined RETR, read into a buffer kept for the session.
    let mut body = Vec::new();
    let result = (|| loop {
        let n = ctl.read(&mut buf[have..])?;
        if n == 0 {
            return Ok(());
        }
        have += n;
        // One command per read in practice (the client waits for each reply); a partial
        // line waits for the rest, a line longer than the buffer is dropped.
        let Some(end) = buf[..have].iter().position(|&b| b == b'\n') else {
            if have == buf.len() {
                have = 0;
            }
            continue;
        };
        let line = &buf[..end];
        let arg = line.get(5..).unwrap_or_default().trim_ascii().to_vec();
        let verb = {
            let mut v = [0u8; 4];
            for (d, s) in v.iter_mut().zip(&buf[..end]) {
                *d = s.to_ascii_uppercase();
            }
            v
        };
        // Pipelined bytes after the line stay for the next round.
        buf.copy_within(end + 1..have, 0);
        have -= end + 1;
        match &verb {
            b"USER" => ctl.write_all(b"331 \r\n")?,
            b"PASS" => ctl.write_all(b"230 \r\n")?,
            b"TYPE" => ctl.write_all(b"200 \r\n")?,
            b"SIZE" => {
                let size = match source {
                    Source::Memory(content) => Ok(content.len() as u64),
                    Source::Root(root) => open_beneath(root, &arg).map(|(_, size)| size),
                };
                match size {
                    Ok(size) => ctl.write_all(format!("213 {size}\r\n").as_bytes())?,
                    Err(_) => ctl.write_all(b"550 \r\n")?,
                }
            }
            b"PASV" | b"EPSV" => {
                let i = match lent {
                    Some(i) => i,
                    None => {
                        let i = *lent.insert(ports.take());
                        if matches!(source, Source::Root(_)) {
                            reset_queued(&ports.listeners[i]);
                        }
                        i
                    }
                };
                let reply = if &verb == b"PASV" {
                    &ports.pasv[i]
                } else {
                    &ports.epsv[i]
                };
                ctl.write_all(reply)?;
            }
            b"RETR" => {
                let Some(i) = lent.take() else {
                    ctl.write_all(b"425 \r\n")?;
                    continue;
                };
                match source {
                    Source::Memory(content) => {
                        let accepted = ports.listeners[i].accept();
                        ports.give_back(i);
                        let (mut data, _) = accepted?;
                        data.write_all(content)?;
                        drop(data);
                    }
                    Source::Root(root) => {
                        let Ok((file, size)) = open_beneath(root, &arg) else {
                            ports.give_back(i);
                            ctl.write_all(b"550 \r\n")?;
                            continue;
                        };
                        let accepted = accept_waiting(&ports.listeners[i]);
                        ports.give_back(i);
                        let (data, _) = accepted?;
                        send_file(&data, file, size, &mut body)?;
                    }
                }
                // The 150 and the 226 leave together once the data is sent (as pasvd does
                // for a small download): one write for the command.
                ctl.write_all(b"150 \r\n226 \r\n")?;
            }
            b"QUIT" => {
                ctl.write_all(b"221 \r\n")?;
                return Ok(());
            }
            _ => ctl.write_all(b"502 \r\n")?,
        }
    })();
    if let Some(i) = lent {
        ports.give_back(i);
    }
    result
}

const USAGE: &str = "usage: floor --pasv LO-HI (--file PATH | --root DIR) [--listen ADDR]";

/// Opens `name` (a path from the client, leading slashes dropped) beneath `root` as pasvd
/// does: resolved by the kernel without leaving `root`, and refused unless a regular file.
/// Returns the file and its size.
fn open_beneath(root: &OwnedFd, name: &[u8]) -> std::io::Result<(OwnedFd, u64)> {
    let mut name = name;
    while let [b'/', rest @ ..] = name {
        name = rest;
    }
    let name = std::str::from_utf8(name).map_err(std::io::Error::other)?;
    let file = rustix::fs::openat2(
        root,
        name,
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
    )?;
    let stat = rustix::fs::fstat(&file)?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    Ok((file, u64::try_from(stat.st_size).unwrap_or(0)))
}

/// Resets every connection already queued on `listener` (non-blocking): at a grant, none of
/// them can be the client's, which has not seen the port yet.
fn reset_queued(listener: &TcpListener) {
    while let Ok((stream, _)) = listener.accept() {
        let _ = rustix::net::sockopt::set_socket_linger(&stream, Some(Duration::ZERO));
    }
}

/// The data connection from `listener` (non-blocking): at once when queued, else blocking
/// until it comes.
fn accept_waiting(listener: &TcpListener) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            listener.set_nonblocking(false)?;
            let accepted = listener.accept();
            listener.set_nonblocking(true)?;
            accepted
        }
        other => other,
    }
}

/// Sends `file` on `data` as pasvd does and ends the connection with our FIN: a small file
/// read and sent with `MSG_MORE`, so the FIN of the `shutdown` joins the data; a larger one
/// by `sendfile`.
fn send_file(
    data: &TcpStream,
    file: OwnedFd,
    size: u64,
    body: &mut Vec<u8>,
) -> std::io::Result<()> {
    if size <= INLINE_MAX {
        let want = size as usize;
        body.resize(want, 0);
        let mut filled = 0;
        while filled < want {
            match rustix::io::read(&file, &mut body[filled..want])? {
                0 => break,
                n => filled += n,
            }
        }
        let mut sent = 0;
        while sent < filled {
            sent += rustix::net::send(
                data,
                &body[sent..filled],
                SendFlags::MORE | SendFlags::NOSIGNAL,
            )?;
        }
    } else {
        let mut sent = 0u64;
        while sent < size {
            let left = usize::try_from(size - sent).unwrap_or(usize::MAX);
            match rustix::fs::sendfile(data, &file, None, left)? {
                0 => break,
                n => sent += n as u64,
            }
        }
    }
    data.shutdown(std::net::Shutdown::Write)
}
