//! The kernel's view of the passive ports: its TCP sockets in TIME_WAIT, with the time each
//! has left, read from `/proc/net/tcp` and `/proc/net/tcp6` (Linux).
//!
//! The tables are read as text rather than over netlink `sock_diag`: a TIME_WAIT row there
//! carries the same timer (`tr` 3, `tm->when` its remaining time in clock ticks, `USER_HZ`,
//! converted with the tick rate the C library reports), the reader needs no new dependency,
//! and a read is one pass over text the kernel formats per socket. The cost grows with the
//! host's socket count, so the server reads it only when a bind is refused and when an
//! administrator asks (`SITE POOL`, `pasv doctor`), never per lease.
//!
//! A TIME_WAIT socket on `A:p` makes the kernel refuse a bind on `B:p` without
//! `SO_REUSEADDR` when `A` and `B` are equal or either is a wildcard
//! ([`bind_blocked_for`]); with `SO_REUSEADDR` on both, the kernel lets the bind through and
//! only the 4-tuple (`A:p`, the old peer) stays unusable, which is what the pool's quarantine
//! models.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// The `st` column of a TIME_WAIT socket (`TCP_TIME_WAIT`).
const STATE_TIME_WAIT: &str = "06";
/// The `tr` column of a socket whose TIME_WAIT timer is running.
const TIMER_TIME_WAIT: &str = "03";

/// One TCP socket in TIME_WAIT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeWait {
    /// Local address and port (IPv4-mapped IPv6 addresses as IPv4).
    pub local: SocketAddr,
    /// The peer's address and port.
    pub remote: SocketAddr,
    /// How long the kernel keeps it: the timer's remaining time when the table was read
    /// (zero when no timer was shown).
    pub remaining: Duration,
}

/// Parses the rows of a `/proc/net/tcp` or `/proc/net/tcp6` table and keeps those in
/// TIME_WAIT. `ticks_per_second` is the unit of the `tm->when` column (`USER_HZ`, 100 on
/// every Linux architecture in use). Rows that do not parse are skipped: the table's
/// format is the kernel's, and a reader that gives up on one odd row reports nothing.
///
/// A row: `sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid
/// timeout inode ...`, addresses as `HEX:PORT` with the address in the kernel's byte order
/// (32-bit words as stored, printed as host-order hex) and the port in hex.
pub fn parse_tcp_table(text: &str, ticks_per_second: u64) -> Vec<TimeWait> {
    text.lines()
        .filter_map(|line| parse_row(line, ticks_per_second.max(1)))
        .collect()
}

fn parse_row(line: &str, ticks_per_second: u64) -> Option<TimeWait> {
    let mut fields = line.split_whitespace();
    let _sl = fields.next()?;
    let local = parse_endpoint(fields.next()?)?;
    let remote = parse_endpoint(fields.next()?)?;
    if fields.next()? != STATE_TIME_WAIT {
        return None;
    }
    let _queues = fields.next()?;
    let (timer, when) = fields.next()?.split_once(':')?;
    let ticks = u64::from_str_radix(when, 16).ok()?;
    let remaining = if timer == TIMER_TIME_WAIT {
        Duration::from_secs(ticks / ticks_per_second)
            + Duration::from_nanos((ticks % ticks_per_second) * 1_000_000_000 / ticks_per_second)
    } else {
        Duration::ZERO
    };
    Some(TimeWait {
        local,
        remote,
        remaining,
    })
}

/// `0100007F:1F90` (IPv4) or 32 hex digits `:PORT` (IPv6).
fn parse_endpoint(s: &str) -> Option<SocketAddr> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = addr.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes)).to_canonical()
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The kernel's TIME_WAIT sockets now, IPv4 and IPv6. A table that does not exist (no
/// IPv6 in this kernel) counts as empty; on systems without these tables, an error.
pub fn time_wait_sockets() -> io::Result<Vec<TimeWait>> {
    let ticks = ticks_per_second();
    let mut all = parse_tcp_table(&std::fs::read_to_string("/proc/net/tcp")?, ticks);
    match std::fs::read_to_string("/proc/net/tcp6") {
        Ok(text) => all.extend(parse_tcp_table(&text, ticks)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(all)
}

/// The unit of the `tm->when` column: `USER_HZ`, as the C library reports it.
fn ticks_per_second() -> u64 {
    rustix::param::clock_ticks_per_second()
}

/// Whether a TIME_WAIT socket on `local` makes the kernel refuse a bind on `addr` without
/// `SO_REUSEADDR`: same port, and same address or either one a wildcard.
fn conflicts(local: SocketAddr, addr: SocketAddr) -> bool {
    let (a, b) = (local.ip().to_canonical(), addr.ip().to_canonical());
    local.port() == addr.port() && (a == b || a.is_unspecified() || b.is_unspecified())
}

/// How long the kernel will refuse a bind on `addr` without `SO_REUSEADDR` because of
/// TIME_WAIT sockets in `table`: the longest remaining time among the conflicting ones, or
/// `None` when there is none.
pub fn bind_blocked_for(table: &[TimeWait], addr: SocketAddr) -> Option<Duration> {
    table
        .iter()
        .filter(|t| conflicts(t.local, addr))
        .map(|t| t.remaining)
        .max()
}

/// The kernel's TIME_WAIT sockets on one local (address, port).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortTimeWait {
    /// The longest remaining time among them.
    pub longest: Duration,
    /// Their peers' addresses, each with its longest remaining time.
    pub peers: BTreeMap<IpAddr, Duration>,
}

/// The TIME_WAIT sockets of `table` on `addr`'s ports in `ports` (inclusive), per port,
/// as a bind on (`addr`, port) sees them (see [`bind_blocked_for`]).
pub fn on_ports(
    table: &[TimeWait],
    addr: IpAddr,
    ports: (u16, u16),
) -> BTreeMap<u16, PortTimeWait> {
    let mut out: BTreeMap<u16, PortTimeWait> = BTreeMap::new();
    for t in table {
        let port = t.local.port();
        if port < ports.0 || port > ports.1 || !conflicts(t.local, SocketAddr::new(addr, port)) {
            continue;
        }
        let entry = out.entry(port).or_default();
        entry.longest = entry.longest.max(t.remaining);
        let peer = entry.peers.entry(t.remote.ip()).or_default();
        *peer = (*peer).max(t.remaining);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows as Linux 6.x prints them: a listener, a TIME_WAIT socket, a header, a
    /// FIN_WAIT2 socket, a malformed row; and an IPv6 table with a mapped address.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:751C 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 9111243 1 0000000080998c4e 100 0 0 10 0
   3: 0100007F:751C 0100007F:A5C4 06 00000000:00000000 03:0000175B 00000000     0        0 0 3 00000000d679d6d0
   4: 0200007F:0015 0100007F:A5C5 05 00000000:00000000 00:00000000 00000000     0        0 0 3 00000000d679d6d0
   5: 0100007F:ZZZZ 0100007F:A5C4 06 00000000:00000000 03:0000175B
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0000000000000000FFFF00000100007F:7530 0000000000000000FFFF00000200007F:C000 06 00000000:00000000 03:00000032 00000000     0        0 0 3 0000000000000000
   1: 00000000000000000000000001000000:7531 00000000000000000000000001000000:C001 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000
";

    #[test]
    fn parses_time_wait_rows_and_skips_the_rest() {
        let v4 = parse_tcp_table(TCP, 100);
        assert_eq!(
            v4,
            vec![TimeWait {
                local: "127.0.0.1:29980".parse().unwrap(),
                remote: "127.0.0.1:42436".parse().unwrap(),
                remaining: Duration::from_millis(59_790),
            }]
        );
        let v6 = parse_tcp_table(TCP6, 100);
        assert_eq!(v6.len(), 2);
        assert_eq!(v6[0].local, "127.0.0.1:30000".parse().unwrap());
        assert_eq!(v6[0].remote, "127.0.0.2:49152".parse().unwrap());
        assert_eq!(v6[0].remaining, Duration::from_millis(500));
        assert_eq!(v6[1].local, "[::1]:30001".parse().unwrap());
        assert_eq!(v6[1].remaining, Duration::from_secs(60));
        // Another tick rate scales the timer.
        assert_eq!(
            parse_tcp_table(TCP, 1000)[0].remaining,
            Duration::from_millis(5_979)
        );
    }

    #[test]
    fn a_bind_conflicts_on_the_same_or_a_wildcard_address() {
        let mut table = parse_tcp_table(TCP, 100);
        table.extend(parse_tcp_table(TCP6, 100));
        let at = |s: &str| bind_blocked_for(&table, s.parse().unwrap());
        assert_eq!(at("127.0.0.1:29980"), Some(Duration::from_millis(59_790)));
        assert_eq!(at("0.0.0.0:29980"), Some(Duration::from_millis(59_790)));
        assert_eq!(at("127.0.0.2:29980"), None);
        assert_eq!(at("127.0.0.1:29981"), None);
        assert_eq!(
            at("[::ffff:127.0.0.1]:30000"),
            Some(Duration::from_millis(500))
        );
        let ports = on_ports(&table, "127.0.0.1".parse().unwrap(), (29_000, 30_000));
        assert_eq!(
            ports.keys().copied().collect::<Vec<_>>(),
            vec![29_980, 30_000]
        );
        assert_eq!(
            ports[&30_000].peers.keys().copied().collect::<Vec<_>>(),
            vec!["127.0.0.2".parse::<IpAddr>().unwrap()]
        );
    }
}
