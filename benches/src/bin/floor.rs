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
//! ```text
//! floor --pasv LO-HI --file PATH [--listen 127.0.0.1:0]
//! ```
//!
//! Every port of the range is listened on once at start; PASV lends one to the session until
//! its transfer ends, and a session that finds none free waits for one (as pasvd's
//! `pasv_wait`). It prints `listening on ADDR` once it accepts connections.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};

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
            other => {
                return Err(format!(
                "unknown argument {other:?}; usage: floor --pasv LO-HI --file PATH [--listen ADDR]"
            ))
            }
        }
    }
    let (lo, hi) = range.ok_or("--pasv LO-HI is required")?;
    let file = file.ok_or("--file PATH is required")?;
    let content: Arc<[u8]> = std::fs::read(&file)
        .map_err(|e| format!("{file}: {e}"))?
        .into();

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
    let size_reply: Arc<[u8]> = format!("213 {}\r\n", content.len()).into_bytes().into();

    let control = TcpListener::bind(listen).map_err(|e| format!("{listen}: {e}"))?;
    let local = control.local_addr().map_err(|e| e.to_string())?;
    println!("listening on {local}");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    for stream in control.incoming() {
        let Ok(stream) = stream else { continue };
        let ports = Arc::clone(&ports);
        let content = Arc::clone(&content);
        let size_reply = Arc::clone(&size_reply);
        std::thread::spawn(move || {
            // A session ends on QUIT, EOF or any socket error; nothing to report.
            let _ = session(stream, &ports, &content, &size_reply);
        });
    }
    Ok(())
}

/// One control connection: a read and a write per command.
fn session(
    mut ctl: TcpStream,
    ports: &Ports,
    content: &[u8],
    size_reply: &[u8],
) -> std::io::Result<()> {
    // Replies are whole lines written at once: Nagle's algorithm would hold a reply behind
    // the previous one's acknowledgement.
    ctl.set_nodelay(true)?;
    ctl.write_all(b"220 floor\r\n")?;
    let mut buf = [0u8; 1024];
    let mut have = 0;
    let mut lent: Option<usize> = None;
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
            b"SIZE" => ctl.write_all(size_reply)?,
            b"PASV" | b"EPSV" => {
                let i = match lent {
                    Some(i) => i,
                    None => *lent.insert(ports.take()),
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
                let accepted = ports.listeners[i].accept();
                ports.give_back(i);
                let (mut data, _) = accepted?;
                data.write_all(content)?;
                drop(data);
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
