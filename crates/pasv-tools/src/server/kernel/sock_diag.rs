//! The kernel's TCP sockets over netlink `sock_diag` (`NETLINK_SOCK_DIAG`, `inet_diag`).
//!
//! One dump request per address family, for the TCP states asked for, optionally filtered
//! in the kernel to a range of local ports with `inet_diag` bytecode (`sport >= lo && sport
//! <= hi`, as `ss` compiles it): the kernel then sends only the sockets on the passive ports
//! instead of every socket on the host. `netlink-packet-sock-diag` builds the request and
//! parses the replies; it has no type for the bytecode attribute, so the attribute is
//! appended to the serialized request here, and it drops a TIME_WAIT socket's `idiag_expires`
//! when it parses the reply, so that field (milliseconds left) is read from the message's
//! bytes at its fixed offset in `struct inet_diag_msg`.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
    SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket};

/// `INET_DIAG_REQ_BYTECODE`: the request attribute that carries a filter program.
const INET_DIAG_REQ_BYTECODE: u16 = 1;
/// `INET_DIAG_BC_S_GE` / `INET_DIAG_BC_S_LE`: source (local) port at least / at most.
const INET_DIAG_BC_S_GE: u8 = 2;
const INET_DIAG_BC_S_LE: u8 = 3;
/// Bytes of `struct nlmsghdr`.
const NLMSG_HEADER: usize = 16;
/// Offset of `idiag_expires` in `struct inet_diag_msg`: four one-byte fields, then the
/// 48-byte `struct inet_diag_sockid`.
const EXPIRES_OFFSET: usize = 4 + 48;
/// How long a read may wait for the kernel's next reply before the dump counts as failed.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// The most reply datagrams one dump may take (each up to 32 KiB, some 200 sockets): far
/// above any host's socket count, a bound on the loop should the kernel never say done.
const MAX_DATAGRAMS: usize = 1 << 20;

/// Which sockets a dump asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum States {
    /// TIME_WAIT only.
    TimeWait,
    /// Every state that holds a local port except TIME_WAIT (and CLOSE).
    Bound,
}

impl States {
    fn flags(self) -> StateFlags {
        match self {
            States::TimeWait => StateFlags::TIME_WAIT,
            States::Bound => StateFlags::all() - StateFlags::TIME_WAIT - StateFlags::CLOSE,
        }
    }
}

/// One socket as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Entry {
    /// Local address and port (IPv4-mapped IPv6 addresses as IPv4).
    pub local: SocketAddr,
    /// The peer's address and port.
    pub remote: SocketAddr,
    /// The TCP state, as the kernel numbers it.
    pub state: u8,
    /// The timer in `idiag_timer` (3: TIME_WAIT).
    pub timer: u8,
    /// `idiag_expires`: the timer's remaining time.
    pub expires: Duration,
    /// The socket's inode (zero for TIME_WAIT and orphaned sockets).
    pub inode: u64,
}

/// The `inet_diag` bytecode for `lo <= sport <= hi` (host-order ports, as the kernel
/// compares them): two two-op comparisons, each jumping past the end (rejecting) when false.
fn port_filter(lo: u16, hi: u16) -> Vec<u8> {
    let op = |code: u8, yes: u8, no: u16| {
        let mut b = vec![code, yes];
        b.extend_from_slice(&no.to_ne_bytes());
        b
    };
    let mut bc = Vec::with_capacity(16);
    // At offset 0 (16 bytes left): true goes on 8 bytes, false jumps 20 (past the end).
    bc.extend(op(INET_DIAG_BC_S_GE, 8, 20));
    bc.extend(op(0, 0, lo));
    // At offset 8 (8 bytes left): true goes on 8 (the end: accept), false jumps 12.
    bc.extend(op(INET_DIAG_BC_S_LE, 8, 12));
    bc.extend(op(0, 0, hi));
    bc
}

/// The dump request for one family, with the port filter appended as an attribute.
fn request(family: u8, states: States, ports: Option<(u16, u16)>) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let socket_id = if family == AF_INET {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    let mut packet = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: states.flags(),
            socket_id,
        })
        .into(),
    );
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    if let Some((lo, hi)) = ports {
        let bc = port_filter(lo, hi);
        let nla_len = u16::try_from(4 + bc.len()).unwrap_or(u16::MAX);
        buf.extend_from_slice(&nla_len.to_ne_bytes());
        buf.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
        buf.extend_from_slice(&bc);
        let total = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        buf[..4].copy_from_slice(&total.to_ne_bytes());
    }
    buf
}

/// The kernel's TCP sockets in `states`, IPv4 and IPv6, with local ports in `ports`
/// (inclusive; `None`: all). An error where netlink `sock_diag` is not available (no
/// `inet_diag` module, a sandbox that refuses the socket) or a reply does not parse.
pub(super) fn dump(states: States, ports: Option<(u16, u16)>) -> io::Result<Vec<Entry>> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
    socket2::SockRef::from(&socket).set_read_timeout(Some(READ_TIMEOUT))?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    for family in [AF_INET, AF_INET6] {
        let req = request(family, states, ports);
        socket.send(&req, 0)?;
        read_replies(&socket, &mut buf, &mut out)?;
    }
    Ok(out)
}

/// Reads one dump's replies into `out` until the kernel's `NLMSG_DONE`.
fn read_replies(socket: &Socket, buf: &mut [u8], out: &mut Vec<Entry>) -> io::Result<()> {
    for _ in 0..MAX_DATAGRAMS {
        let size = socket.recv(&mut &mut buf[..], 0)?;
        let mut data = buf.get(..size).unwrap_or_default();
        while data.len() >= NLMSG_HEADER {
            let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
            if len < NLMSG_HEADER || len > data.len() {
                return Err(invalid(format!(
                    "netlink message of {len} bytes in {}",
                    data.len()
                )));
            }
            let bytes = &data[..len];
            let message = NetlinkMessage::<SockDiagMessage>::deserialize(bytes)
                .map_err(|e| invalid(format!("sock_diag reply: {e}")))?;
            match message.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    let h = &r.header;
                    let expires = bytes
                        .get(NLMSG_HEADER + EXPIRES_OFFSET..NLMSG_HEADER + EXPIRES_OFFSET + 4)
                        .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                    let timer = bytes.get(NLMSG_HEADER + 2).copied().unwrap_or(0);
                    let id = &h.socket_id;
                    out.push(Entry {
                        local: SocketAddr::new(id.source_address.to_canonical(), id.source_port),
                        remote: SocketAddr::new(
                            id.destination_address.to_canonical(),
                            id.destination_port,
                        ),
                        state: h.state,
                        timer,
                        expires: Duration::from_millis(expires.into()),
                        inode: h.inode.into(),
                    });
                }
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => return Err(e.to_io()),
                _ => {}
            }
            // Messages are 4-byte aligned in the datagram.
            let next = (len + 3) & !3;
            data = data.get(next..).unwrap_or_default();
        }
    }
    Err(invalid(format!(
        "sock_diag dump not done after {MAX_DATAGRAMS} replies"
    )))
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_filter_is_the_bytecode_ss_compiles() {
        let bc = port_filter(30_000, 30_009);
        assert_eq!(bc.len(), 16);
        assert_eq!(&bc[..2], &[INET_DIAG_BC_S_GE, 8]);
        assert_eq!(u16::from_ne_bytes([bc[2], bc[3]]), 20);
        assert_eq!(u16::from_ne_bytes([bc[6], bc[7]]), 30_000);
        assert_eq!(&bc[8..10], &[INET_DIAG_BC_S_LE, 8]);
        assert_eq!(u16::from_ne_bytes([bc[10], bc[11]]), 12);
        assert_eq!(u16::from_ne_bytes([bc[14], bc[15]]), 30_009);
        // The attribute follows the 56-byte inet_diag_req_v2, and the length covers it.
        let req = request(AF_INET, States::TimeWait, Some((30_000, 30_009)));
        assert_eq!(req.len(), NLMSG_HEADER + 56 + 4 + 16);
        assert_eq!(
            u32::from_ne_bytes([req[0], req[1], req[2], req[3]]) as usize,
            req.len()
        );
    }
}
