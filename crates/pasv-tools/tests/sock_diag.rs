//! The two readers of the kernel's socket tables, netlink `sock_diag` and `/proc/net/tcp`,
//! on the same live sockets on loopback: TIME_WAIT sockets made here (the server side
//! closes first) and a listener.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use pasv_tools::server::kernel::{self, Reader, TimeWait};

/// Connections on `listener`, each closed by the accepting side first, so that the
/// accepted side (on the listener's port) ends in TIME_WAIT. Returns the clients' addresses.
fn time_wait_on(listener: &TcpListener, n: usize) -> Vec<SocketAddr> {
    let addr = listener.local_addr().unwrap();
    (0..n)
        .map(|_| {
            let mut client = TcpStream::connect(addr).unwrap();
            let (mut server, _) = listener.accept().unwrap();
            server.write_all(b"x").unwrap();
            drop(server); // the server closes first: its FIN goes out
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).unwrap(); // the FIN arrived
            let local = client.local_addr().unwrap();
            drop(client); // the client's FIN: the server side goes to TIME_WAIT
            local
        })
        .collect()
}

/// The TIME_WAIT sockets of `reader` on `port`, waiting (bounded) until the kernel shows
/// every one of `peers` (the last FIN is processed as the client closes, but the check does
/// not count on it).
fn time_wait_seen(port: u16, peers: &[SocketAddr], reader: Reader) -> Vec<TimeWait> {
    let mut table = Vec::new();
    for _ in 0..1000 {
        table = kernel::time_wait_sockets_in(Some((port, port)), reader).expect("table");
        let seen: BTreeSet<SocketAddr> = table.iter().map(|t| t.remote).collect();
        if peers.iter().all(|p| seen.contains(p)) {
            break;
        }
        std::thread::yield_now();
    }
    table
}

/// Whether this host answers netlink `sock_diag` (some sandboxes refuse the socket).
fn netlink_works() -> bool {
    match kernel::time_wait_sockets_in(Some((1, 1)), Reader::Netlink) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("skipped: netlink sock_diag is not available here: {e}");
            false
        }
    }
}

fn check_family(ip: IpAddr) {
    let Ok(listener) = TcpListener::bind(SocketAddr::new(ip, 0)) else {
        eprintln!("skipped {ip}: no such address here");
        return;
    };
    let port = listener.local_addr().unwrap().port();
    let peers = time_wait_on(&listener, 4);
    let netlink = time_wait_seen(port, &peers, Reader::Netlink);
    let proc = time_wait_seen(port, &peers, Reader::Proc);
    let ours = |table: &[TimeWait]| -> Vec<(SocketAddr, SocketAddr)> {
        let mut v: Vec<_> = table
            .iter()
            .filter(|t| peers.contains(&t.remote))
            .map(|t| (t.local, t.remote))
            .collect();
        v.sort();
        v
    };
    assert_eq!(ours(&netlink).len(), peers.len(), "netlink: {netlink:?}");
    assert_eq!(
        ours(&netlink),
        ours(&proc),
        "netlink {netlink:?} /proc {proc:?}"
    );
    for t in netlink.iter().filter(|t| peers.contains(&t.remote)) {
        let p = proc.iter().find(|p| p.remote == t.remote).unwrap();
        // The same timer, read a moment apart, in ms and in clock ticks.
        let gap = t.remaining.max(p.remaining) - t.remaining.min(p.remaining);
        assert!(gap < Duration::from_secs(2), "{t:?} vs {p:?}");
        assert!(t.remaining > Duration::ZERO && t.remaining <= Duration::from_secs(61));
    }
    // The kernel's filter sends the port asked for and no other.
    assert!(
        netlink.iter().all(|t| t.local.port() == port),
        "{netlink:?}"
    );

    // The listener: the same socket (address, state, inode) from both readers.
    let bound = |reader| {
        let mut v: Vec<_> = kernel::bound_sockets_in(Some((port, port)), reader)
            .expect("bound")
            .into_iter()
            .filter(|b| b.state == 0x0A)
            .collect();
        v.sort_by_key(|b| b.inode);
        v
    };
    let (nl, pr) = (bound(Reader::Netlink), bound(Reader::Proc));
    assert_eq!(nl.len(), 1, "{nl:?}");
    assert_eq!(nl[0].local, listener.local_addr().unwrap());
    assert_ne!(nl[0].inode, 0);
    assert_eq!(nl, pr);
    // This process's own listener is not foreign, through either reader.
    for reader in [Reader::Netlink, Reader::Proc, Reader::Auto] {
        let foreign = kernel::foreign_sockets_in(Some((port, port)), reader).unwrap();
        assert!(foreign.is_empty(), "{reader:?}: {foreign:?}");
    }
}

#[test]
fn netlink_and_proc_agree_on_ipv4_sockets() {
    if netlink_works() {
        check_family("127.0.0.1".parse().unwrap());
    }
}

#[test]
fn netlink_and_proc_agree_on_ipv6_sockets() {
    if netlink_works() {
        check_family("::1".parse().unwrap());
    }
}

/// A filter on a range sends every port in it and none outside, with both readers.
#[test]
fn a_port_range_keeps_its_ports_only() {
    if !netlink_works() {
        return;
    }
    let a = TcpListener::bind("127.0.0.1:0").unwrap();
    let b = TcpListener::bind("127.0.0.1:0").unwrap();
    let (pa, pb) = (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    );
    for reader in [Reader::Netlink, Reader::Proc] {
        let only_a: BTreeSet<u16> = kernel::bound_sockets_in(Some((pa, pa)), reader)
            .unwrap()
            .iter()
            .map(|s| s.local.port())
            .collect();
        assert_eq!(only_a, BTreeSet::from([pa]), "{reader:?}");
        let (lo, hi) = (pa.min(pb), pa.max(pb));
        let ranged = kernel::bound_sockets_in(Some((lo, hi)), reader).unwrap();
        // Both listeners (other programs' sockets in between may come and go).
        for addr in [a.local_addr().unwrap(), b.local_addr().unwrap()] {
            assert!(ranged.iter().any(|s| s.local == addr), "{reader:?}: {addr}");
        }
        assert!(ranged.iter().all(|s| (lo..=hi).contains(&s.local.port())));
    }
}
