//! A seeded, virtual-time, discrete-event simulation of a passive port pool under load.
//!
//! Arrivals (Poisson, or a fixed number of closed-loop sessions) ask for a port; an accounted
//! strategy asks a real [`Pool`], a blind strategy proposes ports to a kernel [`BindModel`].
//! Each lease is held for a sampled time, then closed by the server with probability f
//! (quarantine, TIME_WAIT) or by the client. An arrival that finds no port may wait up to
//! `max_wait` in the [`WaitQueue`] that pasvd runs, which gives each freed port to the oldest
//! waiter that can use it (accounted strategies only). A blind strategy's refusal is final,
//! as in the servers it models: none of them waits for a port; a refused closed-loop session
//! comes back after its backoff. Events live in a binary heap keyed by (time, sequence
//! number), so equal seeds give identical reports.
//!
//! The simulator reproduces the formulas of [`crate::capacity`]: the fluid bound
//! `rate_max` above saturation, and Erlang B for Poisson arrivals without waiting (one lease
//! per port, port-wide quarantine). See `docs/CAPACITY.md`.
//!
//! ```
//! use std::time::Duration;
//! use pasv_pool::sim::{run, HoldDist, SimConfig};
//!
//! // 20 ports, T = 1 s, Poisson arrivals at 95% of rate_max, 200 s.
//! let mut config = SimConfig::new(20);
//! config.quarantine = Duration::from_secs(1);
//! config.hold = HoldDist::Exponential(Duration::from_millis(10));
//! config.warmup = Duration::from_secs(5);
//! config.duration = Duration::from_secs(205);
//! let report = run(&config.with_load(0.95))?;
//! assert!(report.offered > 3_000);
//! // Erlang B says 13.4%; a run this short lands within a few points of it.
//! assert!((report.refusal_rate - report.erlang_b).abs() < 0.05);
//! println!("{}", report.to_json());
//! # Ok::<(), pasv_pool::ConfigError>(())
//! ```

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crate::bind::BindModel;
use crate::config::{
    AddrFilter, ConfigError, Exclusivity, PoolConfig, PortSet, QuarantineScope, StrategyKind,
};
use crate::pool::{Closer, Lease, Pool};
use crate::rng::Rng;
use crate::strategy::{BlindKind, BlindOutcome, BlindStrategy};
use crate::time::{nanos, Instant};
use crate::wait::{Admission, WaitEvent, WaitQueue};

/// How sessions arrive.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum Arrivals {
    /// Independent arrivals at `rate` per second, each from a uniformly chosen peer.
    Poisson {
        /// Arrivals per second.
        rate: f64,
    },
    /// `sessions` clients, each asking for its next port as soon as its previous transfer
    /// ends; session i uses peer i mod `peers`. A refused session comes back after the
    /// pool's `retry_after`, or after `backoff` when there is none (blind strategies, all
    /// ports leased).
    ClosedLoop {
        /// Number of concurrent sessions.
        sessions: usize,
        /// Pause after a refusal without a retry hint.
        backoff: Duration,
    },
}

/// How long a lease is held (listen + transfer), h.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum HoldDist {
    /// Always the same.
    Fixed(Duration),
    /// Exponential with this mean.
    Exponential(Duration),
    /// Uniform between the two bounds.
    Uniform(Duration, Duration),
}

impl HoldDist {
    /// The mean hold time.
    pub fn mean(&self) -> Duration {
        match *self {
            HoldDist::Fixed(d) | HoldDist::Exponential(d) => d,
            HoldDist::Uniform(a, b) => (a + b) / 2,
        }
    }

    fn sample(&self, rng: &mut Rng) -> Duration {
        match *self {
            HoldDist::Fixed(d) => d,
            HoldDist::Exponential(m) => secs_f64(rng.exponential(m.as_secs_f64())),
            HoldDist::Uniform(a, b) => {
                let (lo, hi) = (nanos(a.min(b)), nanos(a.max(b)));
                Duration::from_nanos(lo + rng.below((hi - lo).saturating_add(1)))
            }
        }
    }
}

/// Which allocation the simulated server uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum SimStrategy {
    /// A [`Pool`] with this strategy.
    Accounted(StrategyKind),
    /// A model of another server's allocation, answered by the bind model.
    Blind(BlindKind),
}

impl SimStrategy {
    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            SimStrategy::Accounted(k) => k.name(),
            SimStrategy::Blind(b) => b.name(),
        }
    }
}

/// The kernel the simulated server binds on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct BindSpec {
    /// Listeners set `SO_REUSEADDR`.
    pub reuse_addr: bool,
    /// TIME_WAIT length (60 s on Linux).
    pub time_wait: Duration,
    /// A connection-tracking middlebox with this timeout (for example 120 s).
    pub conntrack: Option<Duration>,
}

impl Default for BindSpec {
    /// Linux with `SO_REUSEADDR`, as every peer server runs.
    fn default() -> BindSpec {
        BindSpec {
            reuse_addr: true,
            time_wait: Duration::from_secs(60),
            conntrack: None,
        }
    }
}

/// Everything a run depends on.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct SimConfig {
    /// The passive port range (the same on every address).
    pub ports: PortSet,
    /// Number of local addresses, 1 to 256 (accounted strategies; blind ones use the first
    /// only).
    pub addresses: usize,
    /// Quarantine T of the pool.
    pub quarantine: Duration,
    /// Quarantine scope of the pool.
    pub scope: QuarantineScope,
    /// Exclusivity of the pool. With one lease per (port, peer) the listeners are bound once
    /// and kept, so no per-transfer bind happens.
    pub exclusivity: Exclusivity,
    /// The allocation.
    pub strategy: SimStrategy,
    /// The kernel.
    pub bind: BindSpec,
    /// The arrival process.
    pub arrivals: Arrivals,
    /// Lease hold time h.
    pub hold: HoldDist,
    /// Fraction f of transfers the server closes first (the others: the client).
    pub server_close_fraction: f64,
    /// Number of distinct client addresses.
    pub peers: usize,
    /// The pool's limit of leases per peer address ([`PoolConfig::peer_limit`]; accounted
    /// strategies only).
    pub peer_limit: Option<std::num::NonZeroUsize>,
    /// How long an arrival that finds no port may wait for one (zero: refuse at once), in the
    /// server's [`WaitQueue`] (accounted strategies only).
    pub max_wait: Duration,
    /// How many arrivals may wait at once ([`WaitQueue::new`]); one more is refused at once.
    pub max_waiters: usize,
    /// Arrivals before this instant warm the system up and are not counted.
    pub warmup: Duration,
    /// Simulated time; arrivals from `warmup` to `duration` are measured.
    pub duration: Duration,
    /// Seed for every random draw.
    pub seed: u64,
}

impl SimConfig {
    /// `ports` ports (the top of the port space), one address, T = 60 s, port scope, one lease
    /// per port, least recently released, Linux with `SO_REUSEADDR`, Poisson at 1/s,
    /// instantaneous transfers all closed by the server, one peer, no waiting (at most
    /// 100,000 waiters once `max_wait` is set), 600 s.
    pub fn new(ports: u16) -> SimConfig {
        SimConfig {
            ports: top_ports(ports),
            addresses: 1,
            quarantine: Duration::from_secs(60),
            scope: QuarantineScope::Port,
            exclusivity: Exclusivity::PerPort,
            strategy: SimStrategy::Accounted(StrategyKind::LeastRecentlyReleased),
            bind: BindSpec::default(),
            arrivals: Arrivals::Poisson { rate: 1.0 },
            hold: HoldDist::Fixed(Duration::ZERO),
            server_close_fraction: 1.0,
            peers: 1,
            peer_limit: None,
            max_wait: Duration::ZERO,
            max_waiters: 100_000,
            warmup: Duration::ZERO,
            duration: Duration::from_secs(600),
            seed: 1,
        }
    }

    /// The fluid bound for this configuration ([`crate::capacity::rate_max`]).
    pub fn rate_max(&self) -> f64 {
        crate::capacity::rate_max(
            (self.ports.len() * self.addresses.clamp(1, 256)) as u64,
            self.hold.mean().as_secs_f64(),
            self.server_close_fraction,
            self.quarantine.as_secs_f64(),
        )
    }

    /// Poisson arrivals at `load` × [`SimConfig::rate_max`].
    pub fn with_load(mut self, load: f64) -> SimConfig {
        self.arrivals = Arrivals::Poisson {
            rate: load * self.rate_max(),
        };
        self
    }
}

/// Seconds to a `Duration`, saturating (absurd rates or means must not panic).
fn secs_f64(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(if s > 0.0 {
        Duration::MAX
    } else {
        Duration::ZERO
    })
}

/// `n` ports ending at 65535 (`n` = 0 gives an empty set, which [`run`] rejects).
pub fn top_ports(n: u16) -> PortSet {
    PortSet::top(n)
}

/// Percentiles of a distribution of durations, in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

/// A log-linear histogram of nanosecond durations with a fixed size (3,776 buckets, 30 KiB),
/// so a run's memory does not grow with the number of transfers: values below 128 ns are
/// exact, larger ones fall in buckets 1/64 of an octave wide (percentiles within 0.8%); the
/// maximum and the mean are exact.
#[derive(Clone, Debug)]
struct Histogram {
    counts: Vec<u64>,
    n: u64,
    sum: f64,
    max: u64,
}

impl Histogram {
    const LINEAR: usize = 128;
    const SUB: usize = 64;

    fn new() -> Histogram {
        Histogram {
            counts: vec![0; Self::LINEAR + 57 * Self::SUB],
            n: 0,
            sum: 0.0,
            max: 0,
        }
    }

    fn bucket(v: u64) -> usize {
        if v < Self::LINEAR as u64 {
            return v as usize;
        }
        let e = 63 - v.leading_zeros() as usize; // 7..=63
        let mantissa = (v >> (e - 6)) as usize; // 64..128
        Self::LINEAR + (e - 7) * Self::SUB + (mantissa - Self::SUB)
    }

    /// The middle of bucket `b`.
    fn value(b: usize) -> u64 {
        if b < Self::LINEAR {
            return b as u64;
        }
        let e = (b - Self::LINEAR) / Self::SUB + 7;
        let mantissa = ((b - Self::LINEAR) % Self::SUB + Self::SUB) as u64;
        let lo = mantissa << (e - 6);
        lo.saturating_add((1u64 << (e - 6)) / 2)
    }

    fn record(&mut self, v: u64) {
        self.counts[Self::bucket(v)] += 1;
        self.n += 1;
        self.sum += v as f64;
        self.max = self.max.max(v);
    }

    fn percentiles(&self) -> Percentiles {
        if self.n == 0 {
            return Percentiles::default();
        }
        let at = |q: f64| {
            let rank = ((self.n - 1) as f64 * q).round() as u64;
            let mut seen = 0u64;
            for (b, &c) in self.counts.iter().enumerate() {
                seen += c;
                if seen > rank {
                    return Self::value(b).min(self.max) as f64 / 1e9;
                }
            }
            self.max as f64 / 1e9
        };
        Percentiles {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: self.max as f64 / 1e9,
            mean: self.sum / self.n as f64 / 1e9,
        }
    }
}

/// What a run measured (arrivals from `warmup` to `duration`).
#[derive(Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct SimReport {
    /// Strategy name.
    pub strategy: String,
    /// Arrivals in the measured window.
    pub offered: u64,
    /// Arrivals that got a port in the range (at once or after waiting).
    pub served: u64,
    /// Arrivals answered 425 (at once, after `max_wait`, or after a failed bind).
    pub refused: u64,
    /// Arrivals whose session the server killed (vsftpd).
    pub sessions_killed: u64,
    /// Arrivals served on a kernel port outside the range (ProFTPD, pyftpdlib).
    pub outside_range: u64,
    /// Arrivals still waiting when the run ended.
    pub still_waiting: u64,
    /// Accounted leases whose bind the kernel refused (a scope too lax for the kernel).
    pub bind_failures: u64,
    /// (refused + killed) / offered.
    pub refusal_rate: f64,
    /// Served per second of measured time.
    pub served_rate: f64,
    /// The fluid bound of the configuration, per second.
    pub rate_max: f64,
    /// Erlang B for the configuration's Poisson rate (0 for closed loops).
    pub erlang_b: f64,
    /// Bind attempts made for measured arrivals (none with one lease per port and peer:
    /// listeners are bound once).
    pub bind_attempts: u64,
    /// Bind attempts per served arrival.
    pub binds_per_success: f64,
    /// Kernel time spent in the bind attempts of measured arrivals, in seconds.
    pub bind_cost_s: f64,
    /// Waiting time of served arrivals.
    pub wait: Percentiles,
    /// Hold time of served arrivals.
    pub hold: Percentiles,
    /// Time-averaged fraction of (address, port) slots leased.
    pub utilization: f64,
    /// Largest number of ports under port-wide quarantine at once.
    pub peak_cooling: usize,
    /// Largest number of live TIME_WAIT sockets in the kernel model at once.
    pub peak_time_wait: usize,
    /// Largest number of simultaneous leases.
    pub peak_leased: usize,
}

impl SimReport {
    /// The report as a JSON object (no serde needed).
    pub fn to_json(&self) -> String {
        let pct = |p: &Percentiles| {
            format!(
                "{{\"p50\":{},\"p90\":{},\"p99\":{},\"max\":{},\"mean\":{}}}",
                num(p.p50),
                num(p.p90),
                num(p.p99),
                num(p.max),
                num(p.mean)
            )
        };
        let mut s = String::from("{");
        let _ = write!(s, "\"strategy\":\"{}\"", self.strategy.escape_default());
        for (k, v) in [
            ("offered", self.offered),
            ("served", self.served),
            ("refused", self.refused),
            ("sessions_killed", self.sessions_killed),
            ("outside_range", self.outside_range),
            ("still_waiting", self.still_waiting),
            ("bind_failures", self.bind_failures),
            ("bind_attempts", self.bind_attempts),
        ] {
            let _ = write!(s, ",\"{k}\":{v}");
        }
        for (k, v) in [
            ("refusal_rate", self.refusal_rate),
            ("served_rate", self.served_rate),
            ("rate_max", self.rate_max),
            ("erlang_b", self.erlang_b),
            ("binds_per_success", self.binds_per_success),
            ("bind_cost_s", self.bind_cost_s),
        ] {
            let _ = write!(s, ",\"{k}\":{}", num(v));
        }
        let _ = write!(
            s,
            ",\"wait\":{},\"hold\":{}",
            pct(&self.wait),
            pct(&self.hold)
        );
        let _ = write!(
            s,
            ",\"utilization\":{},\"peak_cooling\":{},\"peak_time_wait\":{},\"peak_leased\":{}}}",
            num(self.utilization),
            self.peak_cooling,
            self.peak_time_wait,
            self.peak_leased
        );
        s
    }
}

fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:?}")
    } else {
        "null".to_owned()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// Next Poisson arrival.
    Arrival,
    /// Closed-loop session asks for a port.
    Session(usize),
    /// Lease in slot `usize` of `active` ends.
    End(usize),
    /// The wait queue's next deadline or quarantine end.
    QueueTimer,
}

struct Active {
    lease: Option<Lease>,
    address: usize,
    port: Option<u16>,
    peer: IpAddr,
    closer: Closer,
    session: Option<usize>,
}

/// A waiting arrival: the token it leaves in the [`WaitQueue`].
#[derive(Clone, Copy, Debug)]
struct Waiting {
    arrived: Instant,
    session: Option<usize>,
    measured: bool,
}

enum Allocator {
    /// The pool behind the wait queue the server runs.
    Accounted(Box<WaitQueue<Waiting>>),
    Blind(Box<dyn BlindStrategy>),
}

struct Sim<'c> {
    cfg: &'c SimConfig,
    rng: Rng,
    events: BinaryHeap<Reverse<(Instant, u64, Event)>>,
    seq: u64,
    alloc: Allocator,
    kernel: BindModel,
    range: Vec<u16>,
    active: Vec<Option<Active>>,
    free_active: Vec<usize>,
    timer_at: Option<Instant>,
    warmup: Instant,
    end: Instant,
    report: SimReport,
    waits: Histogram,
    holds: Histogram,
    leased: usize,
    leased_area: f64,
    bind_cost_ns: u64,
    last_t: Instant,
    slots: usize,
}

/// Runs one simulation. Errors only on an invalid pool configuration.
pub fn run(cfg: &SimConfig) -> Result<SimReport, ConfigError> {
    let addresses = cfg.addresses.clamp(1, 256);
    let locals: Vec<IpAddr> = (0..addresses)
        .map(|a| IpAddr::V4(Ipv4Addr::from(0xC000_0200u32 + a as u32 + 1)))
        .collect();
    let alloc = match cfg.strategy {
        SimStrategy::Accounted(kind) => {
            let pc = PoolConfig::new(locals, cfg.ports.clone())
                .with_quarantine(cfg.quarantine)
                .with_scope(cfg.scope)
                .with_exclusivity(cfg.exclusivity)
                .with_strategy(kind)
                .with_seed(cfg.seed)
                .with_peer_limit(cfg.peer_limit);
            Allocator::Accounted(Box::new(WaitQueue::new(Pool::new(pc)?, cfg.max_waiters)))
        }
        SimStrategy::Blind(kind) => {
            PoolConfig::new(locals, cfg.ports.clone()).validate()?;
            Allocator::Blind(kind.build())
        }
    };
    let mut kernel =
        BindModel::linux(addresses, cfg.bind.reuse_addr).with_time_wait(cfg.bind.time_wait);
    if let Some(c) = cfg.bind.conntrack {
        kernel = kernel.with_conntrack(c);
    }
    let slots = match cfg.strategy {
        SimStrategy::Accounted(_) => cfg.ports.len() * addresses,
        SimStrategy::Blind(_) => cfg.ports.len(),
    };
    let mut sim = Sim {
        cfg,
        rng: Rng::new(cfg.seed ^ 0x5349_4d55_4c41_5445),
        events: BinaryHeap::new(),
        seq: 0,
        alloc,
        kernel,
        range: cfg.ports.iter().collect(),
        active: Vec::new(),
        free_active: Vec::new(),
        timer_at: None,
        warmup: Instant::ZERO + cfg.warmup,
        end: Instant::ZERO + cfg.duration,
        report: SimReport {
            strategy: cfg.strategy.name().to_owned(),
            ..SimReport::default()
        },
        waits: Histogram::new(),
        holds: Histogram::new(),
        leased: 0,
        leased_area: 0.0,
        bind_cost_ns: 0,
        last_t: Instant::ZERO,
        slots,
    };
    sim.start();
    sim.run_events();
    Ok(sim.finish())
}

impl Sim<'_> {
    fn push(&mut self, t: Instant, e: Event) {
        self.seq += 1;
        self.events.push(Reverse((t, self.seq, e)));
    }

    fn peer(&mut self, session: Option<usize>) -> IpAddr {
        let p = self.cfg.peers.max(1) as u64;
        let i = match session {
            Some(s) => s as u64 % p,
            None => self.rng.below(p),
        };
        // 10.0.0.0/8 plus an index: distinct peers for up to 16 million.
        IpAddr::V4(Ipv4Addr::from(0x0A00_0000u32.wrapping_add(i as u32 + 1)))
    }

    fn start(&mut self) {
        match self.cfg.arrivals {
            Arrivals::Poisson { rate } => {
                if rate > 0.0 && rate.is_finite() {
                    let t = Instant::ZERO + secs_f64(self.rng.exponential(1.0 / rate));
                    self.push(t, Event::Arrival);
                }
            }
            Arrivals::ClosedLoop { sessions, .. } => {
                for s in 0..sessions {
                    self.push(Instant::ZERO, Event::Session(s));
                }
            }
        }
    }

    fn run_events(&mut self) {
        while let Some(Reverse((t, _, e))) = self.events.pop() {
            if t >= self.end {
                self.advance_clock(self.end);
                break;
            }
            self.advance_clock(t);
            match e {
                Event::Arrival => {
                    if let Arrivals::Poisson { rate } = self.cfg.arrivals {
                        let next = t + secs_f64(self.rng.exponential(1.0 / rate));
                        self.push(next, Event::Arrival);
                    }
                    self.arrive(t, None);
                }
                Event::Session(s) => self.arrive(t, Some(s)),
                Event::End(i) => self.end_lease(t, i),
                Event::QueueTimer => {
                    self.timer_at = None;
                    if let Allocator::Accounted(queue) = &mut self.alloc {
                        queue.handle_timeout(t);
                    }
                    self.drain_queue();
                }
            }
        }
    }

    fn advance_clock(&mut self, t: Instant) {
        if t > self.last_t {
            let from = self.last_t.max(self.warmup);
            if t > from {
                self.leased_area += self.leased as f64 * (t - from).as_secs_f64();
            }
            self.last_t = t;
        }
    }

    fn arrive(&mut self, now: Instant, session: Option<usize>) {
        let measured = now >= self.warmup;
        if measured {
            self.report.offered += 1;
        }
        let peer = self.peer(session);
        let waiting = Waiting {
            arrived: now,
            session,
            measured,
        };
        let admission = match &mut self.alloc {
            Allocator::Accounted(queue) => {
                queue.acquire(now, peer, AddrFilter::Any, now + self.cfg.max_wait, waiting)
            }
            Allocator::Blind(_) => {
                self.allocate_blind(now, peer, session, measured);
                return;
            }
        };
        match admission {
            Admission::Leased(lease) => self.start_lease(now, lease, waiting),
            Admission::Waiting(_) => {}
            Admission::Refused { refusal, .. } => {
                if measured {
                    self.report.refused += 1;
                }
                self.retry_session(now, session, refusal.retry_after);
            }
        }
        self.drain_queue();
    }

    /// Serves what the wait queue decided: granted waiters start their transfer, expired
    /// ones are refused with the queue's hint. Then arms the queue's timer.
    fn drain_queue(&mut self) {
        loop {
            let Allocator::Accounted(queue) = &mut self.alloc else {
                return;
            };
            match queue.poll_event() {
                Some(WaitEvent::Granted {
                    token, lease, at, ..
                }) => self.start_lease(at, lease, token),
                Some(WaitEvent::Expired {
                    token, refusal, at, ..
                }) => {
                    if token.measured {
                        self.report.refused += 1;
                    }
                    self.retry_session(at, token.session, refusal.retry_after);
                }
                None => break,
            }
        }
        self.arm_timer();
    }

    /// A lease from the pool (at once or after waiting): binds its port when each lease has
    /// its own listener and starts the transfer. A port the kernel refuses goes back to the
    /// pool and the arrival is refused (a scope too lax for the kernel).
    fn start_lease(&mut self, now: Instant, lease: Lease, w: Waiting) {
        let Allocator::Accounted(queue) = &mut self.alloc else {
            return;
        };
        let address = queue
            .pool()
            .config()
            .addresses
            .iter()
            .position(|&a| a == lease.addr().ip())
            .unwrap_or(0);
        let port = lease.addr().port();
        if self.cfg.exclusivity == Exclusivity::PerPort {
            let before = (self.kernel.attempts(), self.kernel.total_cost_ns());
            let ok = self.kernel.bind(now, address, port).ok;
            if w.measured {
                self.report.bind_attempts += self.kernel.attempts() - before.0;
                self.bind_cost_ns += self.kernel.total_cost_ns() - before.1;
            }
            if !ok {
                let _ = queue.release(lease, now, Closer::NeverConnected);
                if w.measured {
                    self.report.bind_failures += 1;
                    self.report.refused += 1;
                }
                self.retry_session(now, w.session, None);
                return;
            }
        }
        let peer = lease.peer();
        self.start_transfer(now, Some(lease), address, Some(port), peer, w);
    }

    /// A blind strategy proposes ports to the kernel; its refusals are final (no peer server
    /// waits).
    fn allocate_blind(
        &mut self,
        now: Instant,
        peer: IpAddr,
        session: Option<usize>,
        measured: bool,
    ) {
        let Allocator::Blind(strategy) = &mut self.alloc else {
            return;
        };
        let before = (self.kernel.attempts(), self.kernel.total_cost_ns());
        let kernel = &mut self.kernel;
        let mut bind = |p: u16| kernel.bind(now, 0, p).ok;
        let outcome = strategy.allocate(now, peer, &self.range, &mut self.rng, &mut bind);
        if measured {
            self.report.bind_attempts += self.kernel.attempts() - before.0;
            self.bind_cost_ns += self.kernel.total_cost_ns() - before.1;
        }
        let port = match outcome {
            BlindOutcome::InRange(p) => Some(p),
            BlindOutcome::OutsideRange => {
                if measured {
                    self.report.outside_range += 1;
                }
                None
            }
            BlindOutcome::Refused => {
                if measured {
                    self.report.refused += 1;
                }
                self.retry_session(now, session, None);
                return;
            }
            BlindOutcome::SessionKilled => {
                if measured {
                    self.report.sessions_killed += 1;
                }
                self.retry_session(now, session, None);
                return;
            }
        };
        let w = Waiting {
            arrived: now,
            session,
            measured,
        };
        self.start_transfer(now, None, 0, port, peer, w);
    }

    /// Holds the port (or the kernel's port outside the range) for a sampled time.
    fn start_transfer(
        &mut self,
        now: Instant,
        lease: Option<Lease>,
        address: usize,
        port: Option<u16>,
        peer: IpAddr,
        w: Waiting,
    ) {
        let hold = self.cfg.hold.sample(&mut self.rng);
        let closer = if self.rng.unit() < self.cfg.server_close_fraction {
            Closer::Server
        } else {
            Closer::Client
        };
        if w.measured && port.is_some() {
            self.report.served += 1;
            self.waits.record(nanos(now - w.arrived));
            self.holds.record(nanos(hold));
        }
        if port.is_some() {
            self.leased += 1;
            self.report.peak_leased = self.report.peak_leased.max(self.leased);
        }
        let entry = Active {
            lease,
            address,
            port,
            peer,
            closer,
            session: w.session,
        };
        let i = match self.free_active.pop() {
            Some(i) => {
                self.active[i] = Some(entry);
                i
            }
            None => {
                self.active.push(Some(entry));
                self.active.len() - 1
            }
        };
        self.push(now + hold, Event::End(i));
    }

    fn retry_session(
        &mut self,
        now: Instant,
        session: Option<usize>,
        retry_after: Option<Duration>,
    ) {
        if let (Some(s), Arrivals::ClosedLoop { backoff, .. }) = (session, self.cfg.arrivals) {
            let wait = retry_after.unwrap_or(backoff).max(Duration::from_nanos(1));
            self.push(now + wait, Event::Session(s));
        }
    }

    fn end_lease(&mut self, now: Instant, i: usize) {
        let Some(a) = self.active.get_mut(i).and_then(Option::take) else {
            return;
        };
        self.free_active.push(i);
        if let Some(port) = a.port {
            self.leased -= 1;
            if self.cfg.exclusivity == Exclusivity::PerPort
                || matches!(self.alloc, Allocator::Blind(_))
            {
                self.kernel.close(now, a.address, port, a.closer);
                self.report.peak_time_wait =
                    self.report.peak_time_wait.max(self.kernel.live_time_wait());
            }
        }
        match &mut self.alloc {
            Allocator::Accounted(queue) => {
                if let Some(lease) = a.lease {
                    // The queue gives what this frees to the oldest waiter that can use it.
                    let _ = queue.release(lease, now, a.closer);
                    self.report.peak_cooling =
                        self.report.peak_cooling.max(queue.pool().cooling_now());
                }
            }
            Allocator::Blind(strategy) => {
                if let Some(port) = a.port {
                    strategy.on_release(now, port, a.peer, a.closer == Closer::Server);
                }
            }
        }
        if let Some(s) = a.session {
            self.push(now, Event::Session(s));
        }
        self.drain_queue();
    }

    fn arm_timer(&mut self) {
        if let Allocator::Accounted(queue) = &self.alloc {
            if let Some(t) = queue.poll_timeout() {
                if self.timer_at.map_or(true, |cur| cur > t) {
                    self.timer_at = Some(t);
                    self.push(t, Event::QueueTimer);
                }
            }
        }
    }

    fn finish(mut self) -> SimReport {
        let cfg = self.cfg;
        let mut r = std::mem::take(&mut self.report);
        r.still_waiting = match &self.alloc {
            Allocator::Accounted(queue) => queue.tokens().filter(|w| w.measured).count() as u64,
            Allocator::Blind(_) => 0,
        };
        let window = (self.end - self.warmup).as_secs_f64();
        r.refusal_rate = if r.offered == 0 {
            0.0
        } else {
            (r.refused + r.sessions_killed) as f64 / r.offered as f64
        };
        r.served_rate = if window > 0.0 {
            r.served as f64 / window
        } else {
            0.0
        };
        r.rate_max = cfg.rate_max();
        r.erlang_b = match cfg.arrivals {
            Arrivals::Poisson { rate } => crate::capacity::erlang_b(
                self.slots as u64,
                crate::capacity::offered_load(
                    rate,
                    cfg.hold.mean().as_secs_f64(),
                    cfg.server_close_fraction,
                    cfg.quarantine.as_secs_f64(),
                ),
            ),
            Arrivals::ClosedLoop { .. } => 0.0,
        };
        r.binds_per_success = if r.served == 0 {
            0.0
        } else {
            r.bind_attempts as f64 / r.served as f64
        };
        r.bind_cost_s = self.bind_cost_ns as f64 / 1e9;
        r.wait = self.waits.percentiles();
        r.hold = self.holds.percentiles();
        r.utilization = if window > 0.0 && self.slots > 0 {
            self.leased_area / window / self.slots as f64
        } else {
            0.0
        };
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_exact_below_128_and_within_a_percent_above() {
        for v in [0u64, 1, 127, 128, 129, 1_000, 999_999, 1 << 40, u64::MAX] {
            let b = Histogram::bucket(v);
            let rep = Histogram::value(b);
            if v < 128 {
                assert_eq!(rep, v);
            } else {
                assert!(
                    (rep as f64 - v as f64).abs() <= v as f64 / 64.0,
                    "{v} -> {rep}"
                );
            }
        }
        let mut h = Histogram::new();
        for v in 1..=1_000_000u64 {
            h.record(v * 1_000);
        }
        let p = h.percentiles();
        assert!((p.p50 - 0.5).abs() < 0.005, "{}", p.p50);
        assert!((p.p99 - 0.99).abs() < 0.01, "{}", p.p99);
        assert_eq!(p.max, 1.0);
        assert!((p.mean - 0.5000005).abs() < 1e-9);
        assert_eq!(Histogram::new().percentiles(), Percentiles::default());
    }
}
