//! A model of the kernel's answer to `bind()` + `listen()` on a passive port.

use std::collections::VecDeque;
use std::time::Duration;

use crate::pool::Closer;
use crate::time::Instant;

/// Measured cost of `bind()` + `listen()` on a port against the number of TIME_WAIT sockets
/// on that port (DESIGN.md section 2, Linux 6.18, loopback): (sockets, microseconds).
const BIND_COST_US: [(f64, f64); 4] = [
    (0.0, 14.0),
    (1_000.0, 27.0),
    (3_000.0, 70.0),
    (7_700.0, 210.0),
];

/// The kernel's bind cost, in nanoseconds, with `time_wait` TIME_WAIT sockets on the port:
/// linear interpolation between the measured points, extended linearly past the last one.
pub fn bind_cost_ns(time_wait: u64) -> u64 {
    let x = time_wait as f64;
    let mut seg = (BIND_COST_US[2], BIND_COST_US[3]);
    for w in BIND_COST_US.windows(2) {
        if x <= w[1].0 {
            seg = (w[0], w[1]);
            break;
        }
    }
    let ((x0, y0), (x1, y1)) = seg;
    let us = y0 + (x - x0) * (y1 - y0) / (x1 - x0);
    (us * 1_000.0).round() as u64
}

/// What the kernel said to one bind attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BindResult {
    /// `bind()` and `listen()` both succeeded.
    pub ok: bool,
    /// What the attempt cost the kernel, in nanoseconds.
    pub cost_ns: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct PortState {
    listening: bool,
    time_wait: u32,
    tracked_until: Instant,
}

/// Reproduces the kernel's answers to a server that binds one listener per passive transfer
/// (DESIGN.md section 2):
///
/// * another socket listening on the port: `EADDRINUSE`;
/// * TIME_WAIT sockets on the port: `EADDRINUSE` unless both the old and the new listener set
///   `SO_REUSEADDR` ([`BindModel::reuse_addr`]);
/// * optionally a connection-tracking middlebox that refuses a port for a while after each
///   connection on it ended in FIN (RST drops the entry);
/// * TIME_WAIT lasts 60 s (`TCP_TIMEWAIT_LEN`) and at most `tcp_max_tw_buckets` exist at
///   once (beyond that the kernel closes at once and logs an overflow);
/// * each attempt costs the measured time of a bind over that port's TIME_WAIT sockets.
///
/// Ports are numbered per address index so several local addresses can be modelled. Memory
/// is one small record per (address, port) plus one entry per live TIME_WAIT socket.
#[derive(Clone, Debug)]
pub struct BindModel {
    /// Listeners set `SO_REUSEADDR` (Linux then re-binds over TIME_WAIT).
    pub reuse_addr: bool,
    /// TIME_WAIT length (Linux: fixed at 60 s).
    pub time_wait: Duration,
    /// A middlebox that tracks a port for this long after a connection on it closes.
    pub conntrack: Option<Duration>,
    /// System-wide TIME_WAIT cap (`net.ipv4.tcp_max_tw_buckets`, 131072 here).
    pub max_time_wait: usize,
    ports: Vec<PortState>,
    expiry: VecDeque<(Instant, usize)>,
    live_time_wait: usize,
    attempts: u64,
    cost_ns: u64,
    latest: Instant,
}

impl BindModel {
    /// Linux with `SO_REUSEADDR` on every listener (what every peer server does), 60 s
    /// TIME_WAIT, no middlebox, for `addresses` local addresses.
    pub fn linux(addresses: usize, reuse_addr: bool) -> BindModel {
        BindModel {
            reuse_addr,
            time_wait: Duration::from_secs(60),
            conntrack: None,
            max_time_wait: 131_072,
            ports: vec![PortState::default(); addresses.max(1) * 65_536],
            expiry: VecDeque::new(),
            live_time_wait: 0,
            attempts: 0,
            cost_ns: 0,
            latest: Instant::ZERO,
        }
    }

    /// Sets the TIME_WAIT length.
    pub fn with_time_wait(mut self, t: Duration) -> BindModel {
        self.time_wait = t;
        self
    }

    /// Adds a connection-tracking middlebox with the given timeout (for example 120 s).
    pub fn with_conntrack(mut self, t: Duration) -> BindModel {
        self.conntrack = Some(t);
        self
    }

    fn index(address: usize, port: u16) -> usize {
        address * 65_536 + usize::from(port)
    }

    fn expire(&mut self, now: Instant) {
        self.latest = self.latest.max(now);
        while let Some(&(t, i)) = self.expiry.front() {
            if t > self.latest {
                break;
            }
            self.expiry.pop_front();
            self.ports[i].time_wait -= 1;
            self.live_time_wait -= 1;
        }
    }

    /// Tries `bind()` + `listen()` on `port` of address index `address`; on success the port
    /// has a listener until [`BindModel::close`].
    pub fn bind(&mut self, now: Instant, address: usize, port: u16) -> BindResult {
        self.expire(now);
        let i = Self::index(address, port);
        let Some(st) = self.ports.get_mut(i) else {
            return BindResult {
                ok: false,
                cost_ns: 0,
            };
        };
        let cost_ns = bind_cost_ns(u64::from(st.time_wait));
        self.attempts += 1;
        self.cost_ns += cost_ns;
        let ok = !st.listening
            && (st.time_wait == 0 || self.reuse_addr)
            && st.tracked_until <= self.latest;
        if ok {
            st.listening = true;
        }
        BindResult { ok, cost_ns }
    }

    /// The transfer on `port` ended: the listener is gone, and TIME_WAIT lands on the port if
    /// the server closed first (DESIGN.md section 1).
    pub fn close(&mut self, now: Instant, address: usize, port: u16, closer: Closer) {
        self.expire(now);
        let i = Self::index(address, port);
        if i >= self.ports.len() {
            return;
        }
        self.ports[i].listening = false;
        if closer == Closer::Server && self.live_time_wait < self.max_time_wait {
            self.ports[i].time_wait += 1;
            self.live_time_wait += 1;
            self.expiry.push_back((self.latest + self.time_wait, i));
        }
        if let (Some(t), Closer::Server | Closer::Client) = (self.conntrack, closer) {
            self.ports[i].tracked_until = self.latest + t;
        }
    }

    /// TIME_WAIT sockets on `port` of address index `address` at the latest time seen.
    pub fn time_wait_on(&self, address: usize, port: u16) -> u32 {
        self.ports
            .get(Self::index(address, port))
            .map_or(0, |s| s.time_wait)
    }

    /// TIME_WAIT sockets alive system-wide at the latest time seen.
    pub fn live_time_wait(&self) -> usize {
        self.live_time_wait
    }

    /// Bind attempts so far.
    pub fn attempts(&self) -> u64 {
        self.attempts
    }

    /// Total kernel cost of the bind attempts so far, in nanoseconds.
    pub fn total_cost_ns(&self) -> u64 {
        self.cost_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_interpolates_the_measurements() {
        assert_eq!(bind_cost_ns(0), 14_000);
        assert_eq!(bind_cost_ns(1_000), 27_000);
        assert_eq!(bind_cost_ns(500), 20_500);
        assert_eq!(bind_cost_ns(3_000), 70_000);
        assert_eq!(bind_cost_ns(7_700), 210_000);
        assert!(bind_cost_ns(10_000) > 210_000);
    }

    #[test]
    fn kernel_table() {
        let t = Instant::ZERO;
        // Without SO_REUSEADDR, TIME_WAIT blocks the port for 60 s.
        let mut m = BindModel::linux(1, false);
        assert!(m.bind(t, 0, 5000).ok);
        assert!(!m.bind(t, 0, 5000).ok, "a listener holds the port");
        m.close(t, 0, 5000, Closer::Server);
        assert!(!m.bind(t + Duration::from_secs(59), 0, 5000).ok);
        assert!(m.bind(t + Duration::from_secs(60), 0, 5000).ok);
        // With SO_REUSEADDR it re-binds over TIME_WAIT, and pays for it.
        let mut m = BindModel::linux(1, true);
        for _ in 0..1_000 {
            assert!(m.bind(t, 0, 6000).ok);
            m.close(t, 0, 6000, Closer::Server);
        }
        assert_eq!(m.time_wait_on(0, 6000), 1_000);
        assert_eq!(m.bind(t, 0, 6000).cost_ns, 27_000);
        // A client close leaves no TIME_WAIT on the server's port.
        m.close(t, 0, 6000, Closer::Client);
        assert_eq!(m.time_wait_on(0, 6000), 1_000);
        // A middlebox refuses the port after a FIN-closed connection.
        let mut m = BindModel::linux(1, true).with_conntrack(Duration::from_secs(120));
        assert!(m.bind(t, 0, 7000).ok);
        m.close(t, 0, 7000, Closer::Client);
        assert!(!m.bind(t + Duration::from_secs(119), 0, 7000).ok);
        assert!(m.bind(t + Duration::from_secs(120), 0, 7000).ok);
    }
}
