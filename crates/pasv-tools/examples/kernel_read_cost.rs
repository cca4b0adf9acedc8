//! The time of one read of the kernel's TIME_WAIT sockets on a passive port range, over
//! netlink `sock_diag` with the kernel-side port filter and from `/proc/net/tcp{,6}`, on a
//! host carrying N TIME_WAIT sockets (Linux).
//!
//! Makes N TIME_WAIT sockets on loopback first (connections to a listener on a port outside
//! the range, closed by the accepting side first, so each leaves a TIME_WAIT on the
//! listener's port for the kernel's 60 s), then times R reads of each kind and prints the
//! median and the host's TIME_WAIT count. Run with
//! `cargo run --release -p pasv-tools --example kernel_read_cost [N] [R]`.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use pasv_tools::server::kernel::{self, Reader};

/// The passive range read (ports the loopback connections do not use).
const RANGE: (u16, u16) = (29_900, 29_999);

#[allow(clippy::disallowed_methods)] // a measurement reads the wall clock itself
fn median_time(reads: usize, mut f: impl FnMut() -> usize) -> (Duration, usize) {
    let mut times = Vec::with_capacity(reads);
    let mut found = 0;
    for _ in 0..reads {
        let start = Instant::now();
        found = f();
        times.push(start.elapsed());
    }
    times.sort();
    (times[times.len() / 2], found)
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let reads: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(21)
        .max(1);
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    for _ in 0..n {
        let client = TcpStream::connect(addr)?;
        let (server, _) = listener.accept()?;
        drop(server);
        let mut client = client;
        client.read_to_end(&mut Vec::new())?;
    }
    let host = kernel::time_wait_sockets_in(None, Reader::Netlink)
        .or_else(|_| kernel::time_wait_sockets_in(None, Reader::Proc))?
        .len();
    println!(
        "host TIME_WAIT sockets: {host} ({n} made on port {})",
        addr.port()
    );
    let runs: [(&str, kernel::PortRange, Reader); 4] = [
        (
            "netlink, kernel filter on the range",
            Some(RANGE),
            Reader::Netlink,
        ),
        ("netlink, every port", None, Reader::Netlink),
        (
            "/proc/net/tcp{,6}, filtered after",
            Some(RANGE),
            Reader::Proc,
        ),
        ("/proc/net/tcp{,6}, every port", None, Reader::Proc),
    ];
    for (name, ports, reader) in runs {
        match kernel::time_wait_sockets_in(ports, reader) {
            Err(e) => println!("{name}: unavailable: {e}"),
            Ok(_) => {
                let (t, found) = median_time(reads, || {
                    kernel::time_wait_sockets_in(ports, reader).map_or(0, |v| v.len())
                });
                println!("{name}: median {t:?} over {reads} reads, {found} sockets");
            }
        }
    }
    Ok(())
}
