//! The kernel's view of the passive ports: its TCP sockets in TIME_WAIT, with the time each
//! has left, and the other sockets that hold a port (Linux).
//!
//! Each query ([`time_wait_sockets_in`], [`bound_sockets_in`], [`foreign_sockets_in`]) asks
//! the kernel over netlink `sock_diag` first, filtered in the kernel to the passive ports
//! (`inet_diag` bytecode) so that a host with tens of thousands of sockets sends only the
//! few on those ports, and falls back to reading `/proc/net/tcp` and `/proc/net/tcp6`
//! whole when netlink fails (no `inet_diag` in the kernel, a sandbox that refuses the
//! socket); the first fallback is logged as a warning, later ones at debug level. Both give
//! the same [`TimeWait`] and [`Bound`] values: a TIME_WAIT socket's remaining time is
//! `idiag_expires` (milliseconds) over netlink and the `tm->when` column (clock ticks,
//! `USER_HZ`) in the text tables. The server reads the kernel only when a bind is refused
//! and when an administrator asks (`SITE POOL`, `pasv doctor`), never per lease.
//!
//! A TIME_WAIT socket on `A:p` makes the kernel refuse a bind on `B:p` without
//! `SO_REUSEADDR` when `A` and `B` are equal or either is a wildcard
//! ([`bind_blocked_for`]); with `SO_REUSEADDR` on both, the kernel lets the bind through and
//! only the 4-tuple (`A:p`, the old peer) stays unusable, which is what the pool's quarantine
//! models.

#[cfg(target_os = "linux")]
mod sock_diag;

use std::collections::{BTreeMap, HashMap};
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

/// Where a query reads the kernel's sockets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reader {
    /// Netlink `sock_diag`, and the `/proc` tables when netlink fails.
    #[default]
    Auto,
    /// Netlink `sock_diag` only: its error, if it fails.
    Netlink,
    /// The `/proc/net/tcp` and `/proc/net/tcp6` tables only.
    Proc,
}

/// Local ports `lo..=hi`, or every port (`None`).
pub type PortRange = Option<(u16, u16)>;

fn in_range(port: u16, ports: PortRange) -> bool {
    match ports {
        Some((lo, hi)) => lo <= port && port <= hi,
        None => true,
    }
}

/// Runs `netlink` or `proc` as `reader` says; under [`Reader::Auto`], `proc` when
/// `netlink` fails (a warning the first time, debug-level messages after).
fn read_with<T>(
    reader: Reader,
    netlink: impl FnOnce() -> io::Result<T>,
    proc: impl FnOnce() -> io::Result<T>,
) -> io::Result<T> {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    match reader {
        Reader::Proc => proc(),
        Reader::Netlink => netlink(),
        Reader::Auto => netlink().or_else(|e| {
            if WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::debug!(error = %e, "netlink sock_diag failed; reading /proc/net/tcp");
            } else {
                tracing::warn!(
                    error = %e,
                    "netlink sock_diag failed; reading /proc/net/tcp instead (slower on busy hosts)"
                );
            }
            proc()
        }),
    }
}

/// Reads `/proc/net/<name>`; a table that does not exist (no IPv6 in this kernel) counts
/// as empty when `optional`.
fn proc_table(name: &str, optional: bool) -> io::Result<String> {
    match std::fs::read_to_string(format!("/proc/net/{name}")) {
        Err(e) if optional && e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        r => r,
    }
}

#[cfg(target_os = "linux")]
fn netlink_time_wait(ports: PortRange) -> io::Result<Vec<TimeWait>> {
    Ok(sock_diag::dump(sock_diag::States::TimeWait, ports)?
        .into_iter()
        .filter(|e| e.state == STATE_TIME_WAIT_NUM)
        .map(|e| TimeWait {
            local: e.local,
            remote: e.remote,
            remaining: if e.timer == 3 {
                e.expires
            } else {
                Duration::ZERO
            },
        })
        .collect())
}

#[cfg(target_os = "linux")]
fn netlink_bound(ports: PortRange) -> io::Result<Vec<Bound>> {
    Ok(sock_diag::dump(sock_diag::States::Bound, ports)?
        .into_iter()
        .filter(|e| e.state != STATE_TIME_WAIT_NUM && e.state != STATE_CLOSE_NUM)
        .map(|e| Bound {
            local: e.local,
            state: e.state,
            inode: e.inode,
        })
        .collect())
}

#[cfg(not(target_os = "linux"))]
fn netlink_time_wait(_: PortRange) -> io::Result<Vec<TimeWait>> {
    Err(io::ErrorKind::Unsupported.into())
}

#[cfg(not(target_os = "linux"))]
fn netlink_bound(_: PortRange) -> io::Result<Vec<Bound>> {
    Err(io::ErrorKind::Unsupported.into())
}

/// `TCP_TIME_WAIT` and `TCP_CLOSE` as numbers.
const STATE_TIME_WAIT_NUM: u8 = 6;
const STATE_CLOSE_NUM: u8 = 7;

/// The kernel's TIME_WAIT sockets now, IPv4 and IPv6, with local ports in `ports`, read
/// as `reader` says. An error where neither way of reading works.
pub fn time_wait_sockets_in(ports: PortRange, reader: Reader) -> io::Result<Vec<TimeWait>> {
    read_with(
        reader,
        || netlink_time_wait(ports),
        || {
            let ticks = ticks_per_second();
            let mut all = parse_tcp_table(&proc_table("tcp", false)?, ticks);
            all.extend(parse_tcp_table(&proc_table("tcp6", true)?, ticks));
            all.retain(|t| in_range(t.local.port(), ports));
            Ok(all)
        },
    )
}

/// The kernel's TIME_WAIT sockets now, IPv4 and IPv6, on every port
/// ([`time_wait_sockets_in`] with [`Reader::Auto`]).
pub fn time_wait_sockets() -> io::Result<Vec<TimeWait>> {
    time_wait_sockets_in(None, Reader::Auto)
}

/// The `st` column of a socket that no longer holds its port (`TCP_CLOSE`).
const STATE_CLOSE: &str = "07";

/// A TCP socket on the host that holds its local port and is not in TIME_WAIT: a
/// listener, a connection, a socket on its way to closing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bound {
    /// Local address and port (IPv4-mapped IPv6 addresses as IPv4).
    pub local: SocketAddr,
    /// The `st` column (`0A`: listening, `01`: established, ...), as the kernel numbers it.
    pub state: u8,
    /// The socket's inode (zero for sockets no process holds any more).
    pub inode: u64,
}

/// Parses the rows of a `/proc/net/tcp` or `/proc/net/tcp6` table and keeps the sockets
/// that hold their port and are not in TIME_WAIT (see [`parse_tcp_table`] for the format).
pub fn parse_bound_sockets(text: &str) -> Vec<Bound> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _sl = fields.next()?;
            let local = parse_endpoint(fields.next()?)?;
            let _remote = parse_endpoint(fields.next()?)?;
            let st = fields.next()?;
            if st == STATE_TIME_WAIT || st == STATE_CLOSE {
                return None;
            }
            let state = u8::from_str_radix(st, 16).ok()?;
            let inode = fields.nth(5)?.parse().ok()?;
            Some(Bound {
                local,
                state,
                inode,
            })
        })
        .collect()
}

/// The host's TCP sockets that hold a port and are not in TIME_WAIT (see [`Bound`]), with
/// local ports in `ports`, read as `reader` says.
pub fn bound_sockets_in(ports: PortRange, reader: Reader) -> io::Result<Vec<Bound>> {
    read_with(
        reader,
        || netlink_bound(ports),
        || {
            let mut all = parse_bound_sockets(&proc_table("tcp", false)?);
            all.extend(parse_bound_sockets(&proc_table("tcp6", true)?));
            all.retain(|b| in_range(b.local.port(), ports));
            Ok(all)
        },
    )
}

/// The host's TCP sockets with local ports in `ports` that hold their port and belong to
/// no file of this process (another program's listener or connection on a passive port):
/// their local addresses. Read as `reader` says, and this process's `/proc/self/fd`; an
/// error where those cannot be read.
pub fn foreign_sockets_in(ports: PortRange, reader: Reader) -> io::Result<Vec<SocketAddr>> {
    let all = bound_sockets_in(ports, reader)?;
    let own = own_socket_inodes()?;
    Ok(all
        .into_iter()
        .filter(|b| b.inode != 0 && !own.contains(&b.inode))
        .map(|b| b.local)
        .collect())
}

/// [`foreign_sockets_in`] on every port, with [`Reader::Auto`].
pub fn foreign_sockets() -> io::Result<Vec<SocketAddr>> {
    foreign_sockets_in(None, Reader::Auto)
}

/// The inodes of the sockets this process holds (`socket:[N]` links in `/proc/self/fd`).
fn own_socket_inodes() -> io::Result<std::collections::BTreeSet<u64>> {
    let mut own = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Ok(link) = std::fs::read_link(entry?.path()) else {
            continue; // closed since the directory was read
        };
        let inode = link
            .to_str()
            .and_then(|l| l.strip_prefix("socket:["))
            .and_then(|l| l.strip_suffix(']'))
            .and_then(|n| n.parse::<u64>().ok());
        own.extend(inode);
    }
    Ok(own)
}

/// The unit of the `tm->when` column: `USER_HZ`, as the C library reports it.
fn ticks_per_second() -> u64 {
    rustix::param::clock_ticks_per_second()
}

/// Whether a TIME_WAIT socket on `local` makes the kernel refuse a bind on `addr` without
/// `SO_REUSEADDR`: same port, and same address or either one a wildcard.
fn conflicts(local: SocketAddr, addr: SocketAddr) -> bool {
    #[cfg(test)]
    tests::CONFLICT_CHECKS.with(|c| c.set(c.get() + 1));
    let (a, b) = (local.ip().to_canonical(), addr.ip().to_canonical());
    local.port() == addr.port() && (a == b || a.is_unspecified() || b.is_unspecified())
}

/// How long to keep a port out of the pool when the kernel still shows a TIME_WAIT socket
/// on it whose timer has run out (remaining time zero). Linux files its 60 s TIME_WAIT
/// timers in a timer-wheel level whose buckets are 512 ticks wide, so one may end up to
/// 512 jiffies late (0.5 s at HZ=1000, 2 s at 250, 5 s at 100); measured with
/// `cargo xtask model-check`: refusals began at 0.98 of the `rate_max` of a 60 s T. The
/// pool retries after this and, if the kernel still holds the port, waits this again.
pub const OVERDUE_WAIT: Duration = Duration::from_secs(1);

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

/// Remaining times shorter than this, on either side, count as ended: the pool starts a
/// quarantine when the server closes, the kernel its TIME_WAIT when the FINs have crossed,
/// and a check that reads the two one after the other must not call that gap a
/// disagreement.
pub const SLACK: Duration = Duration::from_secs(1);

/// How the pool and the kernel disagree on a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disagreement {
    /// The pool offers the port (to some client) while the kernel holds it: another
    /// program's socket on it (the bind will fail), in TIME_WAIT without `SO_REUSEADDR`
    /// (the bind will fail), or, with it, in TIME_WAIT with a client the configured
    /// quarantine scope says to keep the port from.
    OfferedWhileHeld,
    /// The pool keeps the port from a client (port-wide or per-client quarantine) while the
    /// kernel holds nothing that the quarantine stands for.
    WithheldWhileFree,
}

impl Disagreement {
    /// A short name, for replies and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Disagreement::OfferedWhileHeld => "offered_while_held",
            Disagreement::WithheldWhileFree => "withheld_while_free",
        }
    }
}

/// One port as the pool and the kernel see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortCheck {
    /// The passive address and port.
    pub addr: SocketAddr,
    /// The kernel's longest remaining TIME_WAIT on it (`None`: nothing, or under [`SLACK`]).
    pub kernel: Option<Duration>,
    /// Another program's socket holds it (see [`foreign_sockets`]).
    pub foreign: bool,
    /// The pool's live leases on it.
    pub leases: u32,
    /// The pool's remaining quarantine on it, port-wide or the longest per-client one.
    pub pool: Option<Duration>,
    /// How they disagree, if they do.
    pub disagreement: Option<Disagreement>,
}

/// The pool's ledger against the kernel's TIME_WAIT table ([`compare`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LedgerCheck {
    /// Ports where either side holds something, in the ledger's order.
    pub ports: Vec<PortCheck>,
    /// TIME_WAIT sockets on the passive ports.
    pub kernel_time_wait: usize,
    /// Passive ports another program's socket holds.
    pub foreign: usize,
    /// Ports with [`Disagreement::OfferedWhileHeld`].
    pub offered_while_held: usize,
    /// Ports with [`Disagreement::WithheldWhileFree`].
    pub withheld_while_free: usize,
}

/// Compares the pool's `ledger` (as of `now`) with the kernel's TIME_WAIT `table` under the
/// pool's quarantine `scope` and exclusivity, for listeners bound with or without
/// `SO_REUSEADDR` (`reuseaddr`):
/// - without `SO_REUSEADDR`, any TIME_WAIT on a port refuses its bind: a port the pool offers
///   then is [`Disagreement::OfferedWhileHeld`], whatever the scope;
/// - with it, scope `port` stands for "TIME_WAIT on the port", scope `peer` for "TIME_WAIT
///   with that client on the port", scope `none` for nothing (the kernel lets the bind
///   through);
/// - a port another program's socket holds (`foreign`, see [`foreign_sockets`]) refuses
///   the bind whatever the options: a port the pool offers then is
///   [`Disagreement::OfferedWhileHeld`];
/// - a quarantine (port-wide, or per client under `peer`) with no TIME_WAIT that it stands
///   for is [`Disagreement::WithheldWhileFree`].
///
/// Remaining times under [`SLACK`] count as ended on both sides.
pub fn compare(
    ledger: &[pasv_pool::PortLedger],
    table: &[TimeWait],
    foreign: &[SocketAddr],
    now: pasv_pool::Instant,
    scope: pasv_pool::QuarantineScope,
    exclusivity: pasv_pool::Exclusivity,
    reuseaddr: bool,
) -> LedgerCheck {
    use pasv_pool::QuarantineScope;
    let left = |until: pasv_pool::Instant| {
        Some(until.saturating_duration_since(now)).filter(|d| *d >= SLACK)
    };
    // The table and the foreign sockets indexed by port once: each ledger port then looks
    // only at the sockets on its own port, O(ports + table) in all rather than their
    // product (a host with thousands of passive ports and tens of thousands of TIME_WAIT
    // sockets would otherwise spend seconds here).
    let mut by_port: HashMap<u16, Vec<&TimeWait>> = HashMap::new();
    for t in table {
        by_port.entry(t.local.port()).or_default().push(t);
    }
    let mut foreign_by_port: HashMap<u16, Vec<SocketAddr>> = HashMap::new();
    for &f in foreign {
        foreign_by_port.entry(f.port()).or_default().push(f);
    }
    let mut check = LedgerCheck::default();
    for port in ledger {
        let on_port: Vec<&TimeWait> = by_port
            .get(&port.addr.port())
            .into_iter()
            .flatten()
            .copied()
            .filter(|t| conflicts(t.local, port.addr))
            .collect();
        let held: BTreeMap<IpAddr, Duration> = on_port
            .iter()
            .filter(|t| t.remaining >= SLACK)
            .fold(BTreeMap::new(), |mut m, t| {
                let e = m.entry(t.remote.ip()).or_default();
                *e = (*e).max(t.remaining);
                m
            });
        check.kernel_time_wait += on_port.len();
        let kernel = held.values().copied().max();
        let is_foreign = foreign_by_port
            .get(&port.addr.port())
            .is_some_and(|fs| fs.iter().any(|&f| conflicts(f, port.addr)));
        check.foreign += usize::from(is_foreign);
        let cooling = port.cooling_until.and_then(left);
        let blocked: Vec<(IpAddr, Duration)> = port
            .blocked
            .iter()
            .filter_map(|&(peer, until)| left(until).map(|d| (peer, d)))
            .collect();
        let pool = cooling.max(blocked.iter().map(|b| b.1).max());
        let offerable = cooling.is_none() && port.offerable(exclusivity);
        let offered_while_held = offerable
            && (is_foreign
                || match (reuseaddr, scope) {
                    (false, _) => kernel.is_some(),
                    (true, QuarantineScope::Port) => kernel.is_some() && port.leases == 0,
                    (true, QuarantineScope::Peer) => held
                        .keys()
                        .any(|peer| !blocked.iter().any(|b| b.0 == *peer)),
                    (true, QuarantineScope::None) => false,
                });
        let withheld_while_free = match cooling {
            Some(_) => kernel.is_none(),
            None => blocked.iter().any(|b| !held.contains_key(&b.0)),
        };
        let disagreement = if offered_while_held {
            check.offered_while_held += 1;
            Some(Disagreement::OfferedWhileHeld)
        } else if withheld_while_free {
            check.withheld_while_free += 1;
            Some(Disagreement::WithheldWhileFree)
        } else {
            None
        };
        if kernel.is_some() || is_foreign || pool.is_some() || port.leases > 0 {
            check.ports.push(PortCheck {
                addr: port.addr,
                kernel,
                foreign: is_foreign,
                leases: port.leases,
                pool,
                disagreement,
            });
        }
    }
    check
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// Calls of [`conflicts`] on this thread: the work of a [`compare`].
        pub(super) static CONFLICT_CHECKS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    /// A check looks at each kernel socket a bounded number of times, not once per ledger
    /// port: 2,000 ports against 8,000 TIME_WAIT sockets (four on each of the ports) and
    /// 2,000 foreign sockets costs a few comparisons per socket, where comparing every port
    /// with the whole table would take tens of millions. Same answer either way.
    #[test]
    fn compare_does_work_linear_in_ports_plus_table() {
        use pasv_pool::{Exclusivity, Instant, PortLedger, QuarantineScope};
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let now = Instant::ZERO;
        let ports: Vec<u16> = (30_000..32_000).collect();
        let ledger: Vec<PortLedger> = ports
            .iter()
            .map(|&p| PortLedger {
                addr: SocketAddr::new(ip, p),
                leases: 0,
                cooling_until: None,
                blocked: Vec::new(),
            })
            .collect();
        let table: Vec<TimeWait> = ports
            .iter()
            .flat_map(|&p| {
                (0..4u16).map(move |k| TimeWait {
                    local: SocketAddr::new(ip, p),
                    remote: SocketAddr::new(ip, 40_000 + k),
                    remaining: Duration::from_secs(30),
                })
            })
            .collect();
        // Foreign sockets on other ports of the host.
        let foreign: Vec<SocketAddr> = (10_000..12_000).map(|p| SocketAddr::new(ip, p)).collect();
        CONFLICT_CHECKS.with(|c| c.set(0));
        let check = compare(
            &ledger,
            &table,
            &foreign,
            now,
            QuarantineScope::Port,
            Exclusivity::PerPort,
            false,
        );
        let checks = CONFLICT_CHECKS.with(|c| c.get());
        assert_eq!(check.kernel_time_wait, table.len());
        assert_eq!(check.offered_while_held, ports.len());
        assert_eq!(check.foreign, 0);
        let bound = 4 * (table.len() + foreign.len() + ledger.len()) as u64;
        assert!(
            checks <= bound,
            "{checks} comparisons for {} sockets",
            table.len()
        );
    }

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
    fn parses_bound_sockets_with_their_inodes() {
        let bound = parse_bound_sockets(TCP);
        assert_eq!(
            bound,
            vec![
                Bound {
                    local: "127.0.0.1:29980".parse().unwrap(),
                    state: 0x0A,
                    inode: 9_111_243,
                },
                Bound {
                    local: "127.0.0.2:21".parse().unwrap(),
                    state: 0x05,
                    inode: 0,
                },
            ]
        );
    }

    /// A listener this process holds is its own; one in another process is foreign.
    #[test]
    fn a_listener_of_this_process_is_not_foreign() {
        let own = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = own.local_addr().unwrap();
        let foreign = foreign_sockets().expect("kernel tables");
        assert!(!foreign.contains(&addr), "{addr} in {foreign:?}");
    }

    /// Auto reads /proc when netlink fails, and only then; the forced modes do not fall back.
    #[test]
    fn auto_falls_back_to_proc_when_netlink_fails() {
        let failing = || Err::<&str, _>(io::Error::other("no sock_diag"));
        assert_eq!(
            read_with(Reader::Auto, failing, || Ok("proc")).unwrap(),
            "proc"
        );
        assert_eq!(
            read_with(Reader::Auto, failing, || Ok("proc")).unwrap(),
            "proc"
        );
        assert_eq!(
            read_with(Reader::Auto, || Ok("netlink"), || Ok("proc")).unwrap(),
            "netlink"
        );
        assert!(read_with(Reader::Netlink, failing, || Ok("proc")).is_err());
        assert_eq!(
            read_with(Reader::Proc, failing, || Ok("proc")).unwrap(),
            "proc"
        );
        // The /proc path through the public query, as the fallback runs it.
        let own = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = own.local_addr().unwrap().port();
        let bound = bound_sockets_in(Some((port, port)), Reader::Proc).unwrap();
        assert!(bound.iter().any(|b| b.local == own.local_addr().unwrap()));
    }

    /// Each scope's reading of the same kernel table and ledger.
    #[test]
    fn compare_names_each_disagreement_under_each_scope() {
        use pasv_pool::{Exclusivity, Instant, PortLedger, QuarantineScope};
        let now = Instant::ZERO + Duration::from_secs(100);
        let table = parse_tcp_table(TCP, 100); // TIME_WAIT on 127.0.0.1:29980, 59.79 s
        let port = |p: u16| PortLedger {
            addr: SocketAddr::new("127.0.0.1".parse().unwrap(), p),
            leases: 0,
            cooling_until: None,
            blocked: Vec::new(),
        };
        let client: IpAddr = "127.0.0.1".parse().unwrap();
        let cooling = |p: u16| PortLedger {
            cooling_until: Some(now + Duration::from_secs(30)),
            ..port(p)
        };
        let run = |ledger: &[PortLedger], scope, reuseaddr| {
            let c = compare(
                ledger,
                &table,
                &[],
                now,
                scope,
                Exclusivity::PerPort,
                reuseaddr,
            );
            (c.offered_while_held, c.withheld_while_free)
        };
        // Free in the pool, TIME_WAIT in the kernel.
        let free = [port(29_980), port(29_981)];
        assert_eq!(run(&free, QuarantineScope::None, false), (1, 0));
        assert_eq!(run(&free, QuarantineScope::None, true), (0, 0));
        assert_eq!(run(&free, QuarantineScope::Port, true), (1, 0));
        assert_eq!(run(&free, QuarantineScope::Peer, true), (1, 0));
        // Cooling in the pool: agrees where the kernel holds it, not where it does not.
        let both = [cooling(29_980), cooling(29_981)];
        assert_eq!(run(&both, QuarantineScope::Port, true), (0, 1));
        // Per-peer quarantine for the client the kernel holds: agreement.
        let peer = [PortLedger {
            blocked: vec![(client, now + Duration::from_secs(59))],
            ..port(29_980)
        }];
        assert_eq!(run(&peer, QuarantineScope::Peer, true), (0, 0));
        // A quarantine that ends within the slack is no disagreement.
        let ending = [PortLedger {
            cooling_until: Some(now + Duration::from_millis(500)),
            ..port(29_981)
        }];
        assert_eq!(run(&ending, QuarantineScope::Port, true), (0, 0));
        let c = compare(
            &both,
            &table,
            &[],
            now,
            QuarantineScope::Port,
            Exclusivity::PerPort,
            true,
        );
        assert!(!c.ports[0].foreign);
        // Another program's listener on a free port: refused whatever the options.
        let listener: SocketAddr = "0.0.0.0:29981".parse().unwrap();
        let f = compare(
            &free,
            &[],
            &[listener],
            now,
            QuarantineScope::None,
            Exclusivity::PerPort,
            true,
        );
        assert_eq!((f.offered_while_held, f.foreign), (1, 1));
        assert_eq!(f.ports[0].addr.port(), 29_981);
        assert_eq!(c.kernel_time_wait, 1);
        assert_eq!(
            c.ports[1].disagreement,
            Some(Disagreement::WithheldWhileFree)
        );
        assert_eq!(c.ports[0].kernel, Some(Duration::from_millis(59_790)));
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
