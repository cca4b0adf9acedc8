//! Passive data connections: ports leased from the shared [`Pool`], bound per lease or once at
//! start, one accepted connection per lease, every close reported to the pool.
//!
//! The pool decides which port; this module only binds, accepts and reports. The pool sits
//! behind pasv-pool's [`WaitQueue`], under one mutex (its operations are a few hash-map and
//! heap steps): a session that finds every port taken waits in the queue for up to
//! `pasv_wait`, and the queue, not the sessions, decides which waiter gets a freed port: the
//! oldest one that can use it (its address filter admits the port, the port is not
//! quarantined for its peer, its peer is under `max_passive_per_ip`). The queue leases the
//! port to that waiter on the spot and this module hands it the lease through a oneshot
//! channel, so exactly one session wakes per port and a newcomer cannot take a port a
//! waiter can use. One driver task sleeps until the queue's next deadline or quarantine end
//! ([`WaitQueue::poll_timeout`]). The simulator runs the same queue.

// Maps keyed by local addresses and ports (the server's choice) use foldhash; the registry,
// keyed by the client's address too, keeps std's SipHash (see pasv-pool's hashing note).
use foldhash::{HashMap, HashMapExt};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use pasv_pool::wait::{Admission, WaitEvent, WaitQueue};
use pasv_pool::{
    AddrFilter, Closer, Exclusivity, Exhausted, Lease, Pool, PoolConfig, PortSet, Shortage,
};
use std::os::fd::AsFd;

use tokio::io::unix::AsyncFd;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use super::config::{Cidr, Config, ListenerMode};
use super::error::ServerError;
use super::kernel::{self, LedgerCheck, TimeWait};
use super::metrics::{AcceptStage, Counters};
use super::proxy;
use super::public::PublicAddresses;
use crate::clock;

/// Retry hint when every port is leased and the hold times measured so far say nothing
/// (no lease has ended yet, or every live one is older than all of them).
pub(crate) const ALL_LEASED_FALLBACK: Duration = Duration::from_secs(1);
/// Backlog of a per-lease listener: it accepts one connection (plus the odd intruder).
const LEASE_BACKLOG: u32 = 16;
/// How many leased ports may fail to bind in a row before PASV gives up.
const MAX_BIND_FAILURES: usize = 4;
/// Most sessions waiting for a port at once when `max_clients` does not bound them (one
/// wait per session): a session beyond it gets its 425 at once.
const MAX_WAITERS: usize = 65_536;
/// Binds refused with EADDRINUSE tried by one `open` (each takes its port out of the pool
/// for the kernel's time, so the pool soon answers with that time instead).
const MAX_IN_USE_FAILURES: usize = 64;
/// How long a ledger check against the kernel (`SITE POOL`, the `pasvd_ledger_*` metrics)
/// is served from its cache: reading the kernel's tables costs in proportion to the host's
/// sockets, so scrapes and reports within this age share one reading.
pub(crate) const LEDGER_CACHE_AGE: Duration = Duration::from_secs(5);
/// How long one reading of the kernel's TIME_WAIT table explains the binds it refuses: every
/// session that meets EADDRINUSE within this age shares it, so a storm of refusals reads the
/// table (milliseconds with thousands of sockets) once a second, not once per session.
const KERNEL_TABLE_AGE: Duration = Duration::from_secs(1);
/// The first time out of the pool for a port the kernel refuses to bind with no TIME_WAIT to
/// explain it (another program's socket); it doubles with each refusal in a row, up to the
/// configured time-wait, and a bind that succeeds resets it.
const UNEXPLAINED_BACKOFF: Duration = Duration::from_secs(1);

/// An accepted data connection: a plain non-blocking socket, not registered with the
/// runtime. A small download is written and closed without ever touching epoll (two
/// `epoll_ctl` calls and a registration saved per transfer); a transfer task registers it.
pub(crate) type DataConn = std::net::TcpStream;

/// A passive listener: non-blocking and, until a session has to wait for it, not registered
/// with the runtime.
type PassiveListener = std::net::TcpListener;

type Registry =
    Arc<Mutex<std::collections::HashMap<(SocketAddr, IpAddr), oneshot::Sender<DataConn>>>>;

/// Locks a mutex, ignoring poisoning: the data it guards stays consistent between statements.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why no passive endpoint could be opened.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// Every port is leased or cooling; the pool's hint, if it has one.
    Exhausted { retry_after: Option<Duration> },
    /// The client's address already holds `limit` leases (`max_passive_per_ip`). When one
    /// of them ends is not known: a lease lasts until its session's transfer or accept
    /// timeout ends it.
    PeerLimit { limit: usize },
    /// No configured passive address matches (PASV on IPv6 only, for example).
    NoAddress,
    /// Leased ports could not be bound.
    Bind(io::Error),
}

/// A prebound passive port: its listener, shared by the leases on it, and its filter.
struct PreboundPort {
    listener: Arc<PassiveListener>,
    filter: Arc<Mutex<PortFilter>>,
}

/// The peers a prebound listener's filter admits, and those with a live lease on it (a
/// subset: a peer stays admitted after its lease ends until the next rebuild).
#[derive(Default)]
struct PortFilter {
    admitted: Vec<IpAddr>,
    live: Vec<IpAddr>,
}

/// What the wait queue decided for a waiting session, sent to it by whoever held the queue.
#[derive(Debug)]
enum WaitOutcome {
    /// A port, leased at `at` on the session's behalf.
    Granted {
        lease: Lease,
        at: pasv_pool::Instant,
    },
    /// The deadline came first: the pool's answer then.
    Expired(Exhausted),
}

/// The queue's token for a waiting session: where its outcome goes.
type WaitToken = oneshot::Sender<WaitOutcome>;

/// The passive side of the server, shared by all sessions.
pub(crate) struct PassivePorts {
    /// The pool behind its wait queue; every lease and release goes through it.
    queue: Mutex<WaitQueue<WaitToken>>,
    /// Hold times of recent leases and the starts of live ones, for the hint when every
    /// port is leased ([`PassivePorts::all_leased_hint`]).
    holds: Mutex<pasv_pool::HoldEstimator>,
    /// Tells the driver task that the queue's next timeout may have moved earlier.
    timer: Arc<Notify>,
    /// The last ledger check and when it was made ([`PassivePorts::ledger_check`]).
    ledger_cache: Mutex<Option<(Instant, Arc<LedgerCheck>)>>,
    /// Held while a ledger check is computed: one at a time, the others wait for its result.
    ledger_turn: tokio::sync::Mutex<()>,
    /// The last reading of the kernel's TIME_WAIT table on the range and when it was made,
    /// shared by the sessions whose binds the kernel refuses ([`KERNEL_TABLE_AGE`]); the lock
    /// is held across a reading, so concurrent refusals wait for one.
    kernel_table: tokio::sync::Mutex<Option<(Instant, Arc<Vec<TimeWait>>)>>,
    /// Per port: binds the kernel refused in a row with no TIME_WAIT to explain them (at most
    /// one entry per port of the range).
    unexplained: Mutex<HashMap<SocketAddr, u32>>,
    /// The pool's limit of leases per peer address.
    peer_limit: Option<NonZeroUsize>,
    mode: ListenerMode,
    reuseaddr: bool,
    /// The passive port range, for the kernel's tables read on these ports only.
    port_span: (u16, u16),
    /// Prebound mode: the backlog of each port's listener (`listen_backlog`), also for a
    /// port bound later because another program held it at start-up.
    backlog: u32,
    wait: Duration,
    accept_timeout: Duration,
    public: PublicAddresses,
    /// PASV may lease on any IPv4 passive address (`pasv_follow_advertised`).
    follow_advertised: bool,
    addresses: Vec<IpAddr>,
    registry: Registry,
    /// Prebound mode: every passive listener, bound once at start, with the peers its
    /// filter admits.
    prebound: Mutex<HashMap<SocketAddr, PreboundPort>>,
    /// The server's counters (see the `metrics` module), bumped here for the passive side.
    pub(crate) counters: Arc<Counters>,
    /// When the pool was built.
    started: Instant,
    /// `proxy_protocol_data`: data connections from the balancers carry a PROXY header.
    proxy_data: Option<ProxyData>,
}

/// Data connections that pass through a load balancer (`proxy_protocol_data`): each one from
/// a `proxy_from` source starts with a PROXY header naming the client, and the data
/// connection's address check uses that address.
struct ProxyData {
    /// The sources whose data connections start with a header.
    from: Vec<Cidr>,
    /// The balancers' addresses, which every passive listener's kernel filter admits beside
    /// the leases' peers; `None` when a `proxy_from` block holds more than one address, and
    /// so the listeners have no filter (the check after the header still applies).
    hosts: Option<Vec<IpAddr>>,
}

impl ProxyData {
    /// What a passive listener's kernel filter admits: the balancers only, since every
    /// client reaches the node through them (`None`: no filter). Data connections that
    /// reach the node directly go with the other mode, each node advertising its own
    /// address, without `proxy_protocol_data`. Listeners are per lease (see
    /// [`Config::effective_listener_mode`]).
    fn admit(&self) -> Option<Vec<IpAddr>> {
        self.hosts.clone()
    }
}

/// The pool's capacity model for given measurements (see [`PassivePorts::capacity`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct CapacityModel {
    /// N·A.
    pub(crate) slots: u64,
    /// The configured quarantine length T.
    pub(crate) time_wait: Duration,
    /// `N·A / (h + f·T)` with T charged as the configured scope does.
    pub(crate) rate_max: f64,
}

impl PassivePorts {
    /// Builds the pool and, in prebound mode, binds every passive port.
    pub(crate) async fn new(config: &Config, listen: SocketAddr) -> Result<Arc<Self>, ServerError> {
        let addresses = if config.pasv_address.is_empty() {
            vec![listen.ip()]
        } else {
            config.pasv_address.clone()
        };
        let ports = PortSet::range(config.pasv_min_port, config.pasv_max_port).map_err(|e| {
            ServerError::Config {
                reason: format!("passive ports: {e}"),
            }
        })?;
        let peer_limit = config
            .effective_max_passive_per_ip()
            .and_then(NonZeroUsize::new);
        let mode = config.effective_listener_mode();
        let exclusivity = match mode {
            ListenerMode::PerLease => Exclusivity::PerPort,
            ListenerMode::Prebound => Exclusivity::PerPortAndPeer,
        };
        let pool_config = PoolConfig::new(addresses.clone(), ports.clone())
            .with_quarantine(config.time_wait)
            .with_scope(config.effective_quarantine())
            .with_exclusivity(exclusivity)
            .with_strategy(config.pasv_strategy)
            .with_seed(rand::random())
            .with_peer_limit(peer_limit);
        let pool = Pool::new(pool_config).map_err(|e| ServerError::Config {
            reason: format!("passive pool: {e}"),
        })?;
        // Every session waits at most once at a time, so `max_clients` sessions never find the
        // queue full; with no session limit the queue still has one.
        let max_waiters = match config.max_clients {
            0 => MAX_WAITERS,
            n => n.min(MAX_WAITERS),
        };
        let ports_state = Arc::new(PassivePorts {
            queue: Mutex::new(WaitQueue::new(pool, max_waiters)),
            holds: Mutex::new(pasv_pool::HoldEstimator::new()),
            timer: Arc::new(Notify::new()),
            ledger_cache: Mutex::new(None),
            ledger_turn: tokio::sync::Mutex::new(()),
            kernel_table: tokio::sync::Mutex::new(None),
            unexplained: Mutex::new(HashMap::new()),
            peer_limit,
            mode,
            reuseaddr: !config.no_reuseaddr,
            port_span: (config.pasv_min_port, config.pasv_max_port),
            backlog: config.listen_backlog,
            wait: config.pasv_wait,
            accept_timeout: config.accept_timeout,
            public: PublicAddresses::new(
                config.pasv_public_address_for.clone(),
                config.pasv_public_address.clone(),
            ),
            follow_advertised: config.pasv_follow_advertised,
            addresses: addresses.clone(),
            registry: Arc::default(),
            prebound: Mutex::new(HashMap::new()),
            counters: Arc::default(),
            started: clock::now(),
            proxy_data: config.proxy_protocol_data.then(|| ProxyData {
                from: config.proxy_from.clone(),
                hosts: config.proxy_from.iter().map(Cidr::host).collect(),
            }),
        });
        if mode == ListenerMode::Prebound {
            let mut listeners = HashMap::new();
            let mut held = Vec::new();
            let mut total = 0usize;
            for &ip in &addresses {
                for port in ports.iter() {
                    total += 1;
                    let addr = SocketAddr::new(ip, port);
                    // Nobody is admitted until a lease on the port names a peer.
                    match bind_passive(addr, ports_state.reuseaddr, config.listen_backlog, &[]) {
                        Ok(listener) => {
                            listeners.insert(
                                addr,
                                PreboundPort {
                                    listener: Arc::new(listener),
                                    filter: Arc::default(),
                                },
                            );
                        }
                        // Another program holds the port: it stays out of service until a
                        // lease lands on it after its hold (see `listen`).
                        Err(e) if e.kind() == io::ErrorKind::AddrInUse => held.push(addr),
                        Err(source) => return Err(ServerError::Bind { addr, source }),
                    }
                }
            }
            if !held.is_empty() {
                let names = held
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ");
                if held.len() * 2 > total {
                    return Err(ServerError::Config {
                        reason: format!(
                            "passive ports: {} of {total} are in use by other programs \
                             ({names}); pasvd starts only when at least half of the range binds",
                            held.len()
                        ),
                    });
                }
                tracing::warn!(
                    held = held.len(),
                    total,
                    ports = %names,
                    "passive ports in use by other programs: left out until they bind"
                );
            }
            *lock(&ports_state.prebound) = listeners;
        }
        tokio::spawn(drive_queue(
            Arc::downgrade(&ports_state),
            Arc::clone(&ports_state.timer),
        ));
        Ok(ports_state)
    }

    /// Closes the prebound listeners.
    pub(crate) fn shutdown(&self) {
        lock(&self.prebound).clear();
    }

    /// The filter for EPSV: the control connection's local address when it is a passive
    /// address, else any passive address of the same family.
    pub(crate) fn epsv_filter(&self, control_local: IpAddr) -> AddrFilter {
        let local = control_local.to_canonical();
        if self.addresses.contains(&local) {
            AddrFilter::Only(local)
        } else if local.is_ipv4() {
            AddrFilter::V4
        } else {
            AddrFilter::V6
        }
    }

    /// The filter for PASV: the control connection's local address when it is a passive
    /// address, else any IPv4 passive address; any IPv4 one as well when clients follow the
    /// advertised address (`pasv_follow_advertised`). Python's ftplib, curl (its default
    /// `--ftp-skip-pasv-ip`) and Apache commons-net connect to the control connection's peer
    /// whatever the 227 reply says: a lease on another local address would see them knock
    /// on a port nobody listens on there.
    pub(crate) fn pasv_filter(&self, control_local: IpAddr) -> AddrFilter {
        let local = control_local.to_canonical();
        if !self.follow_advertised && local.is_ipv4() && self.addresses.contains(&local) {
            AddrFilter::Only(local)
        } else {
            AddrFilter::V4
        }
    }

    /// The IPv4 address a 227 reply to `client` advertises for a lease on `leased`: the
    /// public address of the client's block, or of the leased address (a host name looked up
    /// when needed, see [`PublicAddresses`]), else the leased address. `None` when there is
    /// no IPv4 address to give.
    pub(crate) async fn advertise_v4(
        &self,
        leased: IpAddr,
        control_local: IpAddr,
        client: IpAddr,
    ) -> Option<Ipv4Addr> {
        if let Some(public) = self.public.rule(leased, client) {
            return self.public.resolve(public).await;
        }
        let ip = if leased.is_unspecified() {
            control_local
        } else {
            leased
        };
        match ip.to_canonical() {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        }
    }

    /// Leases a port for `peer` and opens its listener, waiting in the queue up to `pasv_wait`
    /// for a port another session releases or a quarantine frees.
    pub(crate) async fn open(
        self: &Arc<Self>,
        peer: IpAddr,
        filter: AddrFilter,
    ) -> Result<Passive, Refusal> {
        let peer = peer.to_canonical();
        if !self.has_address(filter) {
            return Err(Refusal::NoAddress);
        }
        // One clock reading serves a PASV that finds a port at once; the loop reads again
        // after a wait or a failed bind.
        let mut now = clock::now();
        let deadline = clock::pool_instant(now + self.wait);
        let mut bind_failures = 0;
        let mut in_use_failures = 0;
        // When the first try found no port: the wait is measured from there.
        let mut waiting_since: Option<Instant> = None;
        loop {
            let at = clock::pool_instant(now);
            // The channel a waiter is granted through is made only when a free port was
            // not found at once (most PASVs find one).
            let mut rx = None;
            let admission = {
                let mut queue = lock(&self.queue);
                let admission = match queue.try_acquire(at, peer, filter) {
                    Some(lease) => Admission::Leased(lease),
                    None => {
                        let (tx, waiter) = oneshot::channel();
                        rx = Some(waiter);
                        queue.acquire(at, peer, filter, deadline, tx)
                    }
                };
                dispatch(&mut queue, at);
                admission
            };
            let (lease, leased_at) = match admission {
                Admission::Leased(lease) => (lease, at),
                Admission::Waiting(id) => {
                    let since = *waiting_since.get_or_insert(now);
                    // The driver may be asleep until a later instant than this deadline.
                    self.timer.notify_one();
                    let mut wait = Waiting {
                        ports: self,
                        id,
                        rx,
                    };
                    match wait.outcome().await {
                        Some(WaitOutcome::Granted { lease, at }) => (lease, at),
                        Some(WaitOutcome::Expired(refusal)) => {
                            self.counters.pool_wait(clock::now() - since, false);
                            return Err(self.refusal(refusal));
                        }
                        None => {
                            self.counters.pool_wait(clock::now() - since, false);
                            return Err(Refusal::Exhausted { retry_after: None });
                        }
                    }
                }
                Admission::Refused {
                    refusal,
                    queue_full,
                    ..
                } => {
                    if queue_full {
                        tracing::warn!(
                            waiting = lock(&self.queue).len(),
                            "passive wait queue full: refused at once"
                        );
                    }
                    let since = *waiting_since.get_or_insert(now);
                    self.counters.pool_wait(now - since, false);
                    return Err(self.refusal(refusal));
                }
            };
            if let Some(since) = waiting_since.take() {
                now = clock::now();
                self.counters.pool_wait(now - since, true);
            }
            match self.listen(lease, peer, leased_at, now) {
                Ok(passive) => {
                    let mut unexplained = lock(&self.unexplained);
                    if !unexplained.is_empty() {
                        unexplained.remove(&passive.addr());
                    }
                    return Ok(passive);
                }
                Err((lease, e)) => {
                    tracing::warn!(port = lease.addr().port(), error = %e, "passive bind failed");
                    let at = clock::pool_instant(now);
                    if e.kind() == io::ErrorKind::AddrInUse {
                        // Something outside the pool's model holds the port (a
                        // TIME_WAIT socket without SO_REUSEADDR): keep it out for as
                        // long as the kernel will, so the next hint is the real wait.
                        self.counters.bind_in_use();
                        let wait = self.host_wait(lease.addr()).await;
                        tracing::info!(
                            port = lease.addr().port(),
                            wait_ms = wait.as_millis() as u64,
                            "passive port held by the kernel"
                        );
                        self.release_until(lease, at, at + wait);
                        // Each such port leaves the pool until then, so these
                        // failures end by themselves; the cap only bounds the work.
                        in_use_failures += 1;
                        if in_use_failures < MAX_IN_USE_FAILURES {
                            now = clock::now();
                            continue;
                        }
                    } else {
                        self.release(lease, Closer::Server, at);
                    }
                    bind_failures += 1;
                    if bind_failures >= MAX_BIND_FAILURES || in_use_failures >= MAX_IN_USE_FAILURES
                    {
                        return Err(Refusal::Bind(e));
                    }
                    now = clock::now();
                }
            }
        }
    }

    /// The refusal for the pool's answer.
    fn refusal(&self, e: Exhausted) -> Refusal {
        match (e.cause, self.peer_limit) {
            (Shortage::PeerLimit, Some(limit)) => Refusal::PeerLimit { limit: limit.get() },
            _ => Refusal::Exhausted {
                retry_after: e.retry_after,
            },
        }
    }

    /// Prebound mode: grants `peer` its lease on `addr`: makes the port's filter admit it,
    /// clears the backlog of what was queued before the lease, then registers `routed` as
    /// where a connection from `peer` goes.
    ///
    /// The filter is rebuilt, from the peers with a live lease on the port, only when it does
    /// not admit `peer` yet or still admits a peer whose lease ended; a peer that leases the
    /// same port again and again costs nothing.
    ///
    /// The backlog is cleared at every grant (one `accept` that finds nothing, in the usual
    /// case): a connection from `peer` already queued belongs to no lease, since the pool
    /// leases a port to one session per peer address at a time and this one has not
    /// answered yet. It came late for a lease that ended (accept timeout, replaced PASV) and
    /// is reset, not taken as this lease's connection; a per-lease listener, bound now,
    /// would not have it either. Connections from other peers go to the session that leased
    /// the port for their address, or are reset (so ones from a peer that is no longer
    /// admitted cannot keep the backlog full). All of this under the port's filter lock,
    /// which [`Passive::try_accept`] also holds from its `accept` to its registry look-up, so
    /// no session can take a connection queued before the grant and hand it to this lease.
    ///
    /// What the filter cannot do: a peer with its own live lease on the port is admitted,
    /// and could fill the shared backlog (`listen_backlog` connections) until a session
    /// accepts on the port or a lease is granted on it; `max_passive_per_ip` bounds how many
    /// ports it can do that to.
    fn grant(
        &self,
        addr: SocketAddr,
        listener: &PassiveListener,
        filter: &Mutex<PortFilter>,
        peer: IpAddr,
        routed: oneshot::Sender<DataConn>,
    ) -> io::Result<()> {
        let mut guard = lock(filter);
        let filter = &mut *guard;
        if !filter.live.contains(&peer) {
            filter.live.push(peer);
        }
        if !(filter.admitted.contains(&peer) && filter.admitted.len() == filter.live.len()) {
            if let Err(e) = attach_source_filter(&socket2::SockRef::from(listener), &filter.live) {
                filter.live.retain(|&p| p != peer);
                return Err(e);
            }
            filter.admitted.clone_from(&filter.live);
        }
        while let Ok(Some((stream, from))) = accept_nonblocking(listener) {
            let from = from.ip().to_canonical();
            let waiting = (from != peer)
                .then(|| lock(&self.registry).remove(&(addr, from)))
                .flatten();
            match waiting {
                Some(tx) => {
                    if let Err(stream) = tx.send(stream) {
                        reset(stream);
                    }
                }
                None => {
                    if from == peer {
                        tracing::info!(port = addr.port(), from = %from,
                            "late data connection of an ended lease reset");
                    } else {
                        self.counters.intruder_dropped();
                    }
                    reset(stream);
                }
            }
        }
        lock(&self.registry).insert((addr, peer), routed);
        Ok(())
    }

    /// How many sessions wait for a port.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        lock(&self.queue).len()
    }

    fn has_address(&self, filter: AddrFilter) -> bool {
        self.addresses.iter().any(|&a| filter.matches(a))
    }

    fn listen(
        self: &Arc<Self>,
        lease: Lease,
        peer: IpAddr,
        leased_at: pasv_pool::Instant,
        now: Instant,
    ) -> Result<Passive, (Lease, io::Error)> {
        let addr = lease.addr();
        let acceptor = match self.mode {
            ListenerMode::PerLease => {
                let bound = match &self.proxy_data {
                    None => bind_passive(addr, self.reuseaddr, LEASE_BACKLOG, &[peer]),
                    Some(proxy) => bind_socket(
                        addr,
                        self.reuseaddr,
                        LEASE_BACKLOG,
                        proxy.admit().as_deref(),
                    ),
                };
                match bound {
                    Ok(listener) => Acceptor::Listener(listener),
                    Err(e) => return Err((lease, e)),
                }
            }
            ListenerMode::Prebound => {
                let (listener, filter) = match self.prebound_port(addr) {
                    Ok(port) => port,
                    Err(e) => return Err((lease, e)),
                };
                let (tx, rx) = oneshot::channel();
                if let Err(e) = self.grant(addr, &listener, &filter, peer, tx) {
                    return Err((lease, e));
                }
                Acceptor::Prebound {
                    listener,
                    filter,
                    routed: rx,
                    registry: Arc::clone(&self.registry),
                }
            }
        };
        lock(&self.holds).leased(leased_at);
        Ok(Passive {
            guard: LeaseGuard {
                ports: Arc::clone(self),
                lease: Some(lease),
                leased_at,
            },
            acceptor,
            deadline: now + self.accept_timeout,
            peer,
            keep_listening: false,
            held: None,
        })
    }

    /// Prebound mode: the listener and filter of `addr`. A port another program held at
    /// start-up (or since) has none: it is bound now, when a lease lands on it. While the
    /// other program still holds it the bind fails with `EADDRINUSE` and [`Self::open`] keeps
    /// the port out of the pool for a time-wait before the next try, so the range heals by
    /// itself once the port is free, and no client is ever offered a port nobody listens on.
    fn prebound_port(
        &self,
        addr: SocketAddr,
    ) -> io::Result<(Arc<PassiveListener>, Arc<Mutex<PortFilter>>)> {
        let mut prebound = lock(&self.prebound);
        if let Some(p) = prebound.get(&addr) {
            return Ok((Arc::clone(&p.listener), Arc::clone(&p.filter)));
        }
        let listener = Arc::new(bind_passive(addr, self.reuseaddr, self.backlog, &[])?);
        tracing::info!(port = addr.port(), "passive port bound: back in service");
        let filter: Arc<Mutex<PortFilter>> = Arc::default();
        prebound.insert(
            addr,
            PreboundPort {
                listener: Arc::clone(&listener),
                filter: Arc::clone(&filter),
            },
        );
        Ok((listener, filter))
    }

    /// How long the kernel will refuse to bind `addr`: the remaining TIME_WAIT of the socket
    /// that blocks it (at least [`kernel::OVERDUE_WAIT`]: a timer past its time ends a little
    /// late), or, when no TIME_WAIT explains the refusal (another program's socket), a short
    /// back-off that doubles with each refusal in a row, up to the configured time-wait.
    async fn host_wait(&self, addr: SocketAddr) -> Duration {
        let table = self.kernel_time_waits().await;
        match kernel::bind_blocked_for(&table, addr) {
            Some(wait) => {
                lock(&self.unexplained).remove(&addr);
                wait.max(kernel::OVERDUE_WAIT)
            }
            None => {
                let cap = lock(&self.queue).pool().config().quarantine;
                let mut unexplained = lock(&self.unexplained);
                let refusals = unexplained.entry(addr).or_insert(0);
                *refusals = refusals.saturating_add(1);
                unexplained_backoff(*refusals, cap)
            }
        }
    }

    /// The kernel's TIME_WAIT sockets on the range, read on the blocking pool at most once
    /// per [`KERNEL_TABLE_AGE`] (an unreadable table is empty: every refusal then backs off).
    async fn kernel_time_waits(&self) -> Arc<Vec<TimeWait>> {
        let mut cached = self.kernel_table.lock().await;
        if let Some((at, table)) = &*cached {
            if clock::now().saturating_duration_since(*at) < KERNEL_TABLE_AGE {
                return Arc::clone(table);
            }
        }
        let span = self.port_span;
        let read = tokio::task::spawn_blocking(move || {
            kernel::time_wait_sockets_in(Some(span), kernel::Reader::Auto)
        })
        .await;
        let table = match read {
            Ok(Ok(table)) => table,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "kernel TCP tables unreadable");
                Vec::new()
            }
            Err(e) => {
                tracing::debug!(error = %e, "kernel TCP table reader failed");
                Vec::new()
            }
        };
        let table = Arc::new(table);
        *cached = Some((clock::now(), Arc::clone(&table)));
        table
    }

    /// Returns a lease whose port the kernel refuses to bind, out of the pool until `until`.
    fn release_until(&self, lease: Lease, now: pasv_pool::Instant, until: pasv_pool::Instant) {
        let mut queue = lock(&self.queue);
        if let Err(e) = queue.release_until(lease, now, until) {
            tracing::error!(error = %e, "pool refused a release");
        }
        // A port out of the pool serves nobody, but the release may lift a peer's limit.
        dispatch(&mut queue, now);
    }

    fn release(&self, lease: Lease, closer: Closer, leased_at: pasv_pool::Instant) {
        let freed = lease.addr();
        let lease_peer = lease.peer();
        if self.mode == ListenerMode::Prebound {
            lock(&self.registry).remove(&(lease.addr(), lease.peer()));
            let filter = lock(&self.prebound)
                .get(&freed)
                .map(|p| Arc::clone(&p.filter));
            if let Some(filter) = filter {
                // The filter keeps admitting the peer until the next lease on the port
                // rebuilds it (see `admit`).
                lock(&filter).live.retain(|&p| p != lease_peer);
            }
        }
        let now = clock::pool_now();
        let mut queue = lock(&self.queue);
        // The queue gives what this frees to the oldest waiter that can use it.
        let result = queue.release(lease, now, closer);
        dispatch(&mut queue, now);
        drop(queue);
        match result {
            Ok(()) => {
                lock(&self.holds).released(leased_at, now);
                self.counters
                    .lease_held(now.saturating_duration_since(leased_at));
            }
            Err(e) => tracing::error!(error = %e, "pool refused a release"),
        }
    }

    /// The retry hint when every port is leased and none is cooling: the median time until
    /// the first live lease ends, from the hold times of recent leases (see
    /// `pasv_pool::hold`); [`ALL_LEASED_FALLBACK`] before there are any.
    pub(crate) fn all_leased_hint(&self) -> Duration {
        lock(&self.holds)
            .first_release(clock::pool_now())
            .unwrap_or(ALL_LEASED_FALLBACK)
    }

    /// Pool statistics now.
    pub(crate) fn stats(&self) -> pasv_pool::PoolStats {
        lock(&self.queue).pool().stats(clock::pool_now())
    }

    /// The pool's ledger against the kernel's TIME_WAIT table (see `kernel::compare`), at
    /// most [`LEDGER_CACHE_AGE`] old; an error where the kernel's tables cannot be read.
    pub(crate) async fn ledger_check(&self) -> io::Result<Arc<LedgerCheck>> {
        let ports = Some(self.port_span);
        self.ledger_check_with(move || {
            Ok((
                kernel::time_wait_sockets_in(ports, kernel::Reader::Auto)?,
                kernel::foreign_sockets_in(ports, kernel::Reader::Auto)?,
            ))
        })
        .await
    }

    /// [`PassivePorts::ledger_check`] with the kernel's tables from `read`. The ledger is
    /// copied under the queue lock, which is dropped before `read` and the comparison run
    /// on the blocking pool: a PASV never waits for the kernel's tables. One computation at
    /// a time; callers that waited for it take its result from the cache.
    async fn ledger_check_with(
        &self,
        read: impl FnOnce() -> io::Result<(Vec<TimeWait>, Vec<SocketAddr>)> + Send + 'static,
    ) -> io::Result<Arc<LedgerCheck>> {
        let _turn = self.ledger_turn.lock().await;
        if let Some((check, _)) = self.ledger_cached() {
            return Ok(check);
        }
        let (ledger, now, scope, exclusivity) = {
            let queue = lock(&self.queue);
            let pool = queue.pool();
            let now = clock::pool_now();
            let config = pool.config();
            (pool.ledger(now), now, config.scope, config.exclusivity)
        };
        let reuseaddr = self.reuseaddr;
        let check = tokio::task::spawn_blocking(move || {
            let (table, foreign) = read()?;
            Ok::<_, io::Error>(kernel::compare(
                &ledger,
                &table,
                &foreign,
                now,
                scope,
                exclusivity,
                reuseaddr,
            ))
        })
        .await
        .map_err(io::Error::other)??;
        let check = Arc::new(check);
        *lock(&self.ledger_cache) = Some((clock::now(), Arc::clone(&check)));
        Ok(check)
    }

    /// The cached ledger check and its age, if it is at most [`LEDGER_CACHE_AGE`] old.
    pub(crate) fn ledger_cached(&self) -> Option<(Arc<LedgerCheck>, Duration)> {
        let cache = lock(&self.ledger_cache);
        let (at, check) = cache.as_ref()?;
        let age = clock::now().saturating_duration_since(*at);
        (age <= LEDGER_CACHE_AGE).then(|| (Arc::clone(check), age))
    }

    /// The capacity model for a mean hold time and a share of server-side closes.
    pub(crate) fn capacity(&self, hold: Duration, server_close_fraction: f64) -> CapacityModel {
        let queue = lock(&self.queue);
        let pool = queue.pool();
        CapacityModel {
            slots: pool.layout().slots() as u64,
            time_wait: pool.config().quarantine,
            rate_max: pool.rate_max(hold, server_close_fraction),
        }
    }

    /// When the pool was built.
    pub(crate) fn started(&self) -> Instant {
        self.started
    }
}

impl Drop for PassivePorts {
    fn drop(&mut self) {
        // The driver task holds only a weak reference: wake it to find it gone.
        self.timer.notify_one();
    }
}

/// Hands the queue's decisions to the sessions concerned. Called with the queue locked after
/// every operation on it, so a decision is delivered before anyone else can act on the queue.
fn dispatch(queue: &mut WaitQueue<WaitToken>, now: pasv_pool::Instant) {
    while let Some(event) = queue.poll_event() {
        match event {
            WaitEvent::Granted {
                token, lease, at, ..
            } => {
                if let Err(WaitOutcome::Granted { lease, .. }) =
                    token.send(WaitOutcome::Granted { lease, at })
                {
                    // The session went away after its grant: the port goes to the next waiter.
                    if let Err(e) = queue.release(lease, now, Closer::NeverConnected) {
                        tracing::error!(error = %e, "pool refused a release");
                    }
                }
            }
            WaitEvent::Expired { token, refusal, .. } => {
                let _ = token.send(WaitOutcome::Expired(refusal));
            }
        }
    }
}

/// The wait queue's driver: sleeps until the queue's next deadline or quarantine end, then
/// lets the queue decide and hands out its decisions. Ends with the passive side.
async fn drive_queue(ports: Weak<PassivePorts>, timer: Arc<Notify>) {
    loop {
        let next = {
            let Some(ports) = ports.upgrade() else {
                return;
            };
            let mut queue = lock(&ports.queue);
            let now = clock::pool_now();
            queue.handle_timeout(now);
            dispatch(&mut queue, now);
            queue.poll_timeout()
        };
        match next {
            Some(at) => tokio::select! {
                () = timer.notified() => {}
                () = tokio::time::sleep_until(clock::tokio_instant(at)) => {}
            },
            None => timer.notified().await,
        }
    }
}

/// A session waiting in the queue. Dropped before its outcome arrived (a cancelled `open`),
/// it leaves the queue, and gives back a port granted meanwhile.
struct Waiting<'a> {
    ports: &'a PassivePorts,
    id: pasv_pool::WaiterId,
    rx: Option<oneshot::Receiver<WaitOutcome>>,
}

impl Waiting<'_> {
    /// The queue's decision; `None` if the queue dropped the session without one, which it
    /// does not (a token leaves the queue only with a decision or by our own cancel).
    async fn outcome(&mut self) -> Option<WaitOutcome> {
        let outcome = self.rx.as_mut()?.await.ok();
        self.rx = None;
        outcome
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        let mut queue = lock(&self.ports.queue);
        if queue.cancel(self.id).is_some() {
            return;
        }
        // Decisions are sent under the queue's lock: one made for us is in the channel.
        if let Ok(WaitOutcome::Granted { lease, .. }) = rx.try_recv() {
            let now = clock::pool_now();
            if let Err(e) = queue.release(lease, now, Closer::NeverConnected) {
                tracing::error!(error = %e, "pool refused a release");
            }
            dispatch(&mut queue, now);
        }
    }
}

/// Binds a listener with SO_REUSEADDR as asked and never SO_REUSEPORT (two listeners on one
/// port would split the client's connection between sessions). Non-blocking and not yet
/// registered with a runtime, so it can be bound before the runtime (and its threads) exist.
pub(crate) fn bind_listener(
    addr: SocketAddr,
    reuseaddr: bool,
    backlog: u32,
) -> io::Result<std::net::TcpListener> {
    bind_socket(addr, reuseaddr, backlog, None)
}

/// Binds a passive listener (SO_REUSEADDR as asked, never SO_REUSEPORT), non-blocking from
/// creation and not registered with the runtime (see [`Passive::accept`]). The kernel lets
/// only the addresses in `admit` connect (see [`attach_source_filter`]).
fn bind_passive(
    addr: SocketAddr,
    reuseaddr: bool,
    backlog: u32,
    admit: &[IpAddr],
) -> io::Result<PassiveListener> {
    bind_socket(addr, reuseaddr, backlog, Some(admit))
}

fn bind_socket(
    addr: SocketAddr,
    reuseaddr: bool,
    backlog: u32,
    admit: Option<&[IpAddr]>,
) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    // Before `listen`, so no connection from anyone else is ever queued.
    if let Some(admit) = admit {
        attach_source_filter(&socket, admit)?;
    }
    socket.set_reuse_address(reuseaddr)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(std::net::TcpListener::from(socket))
}

/// Makes the kernel drop every TCP segment to `socket` whose source address is not in
/// `peers`, with a classic BPF socket filter.
///
/// Connections are accepted on demand, so nobody watches an idle passive listener: without
/// the filter, connections from any other address pile up in its backlog, and a few dozen of
/// them (measured: 40 from 127.0.0.2 against a backlog of 16) make the real client's connect
/// time out. A listening socket runs its filter on each incoming SYN before any connection
/// state exists (`tcp_v4_rcv`/`tcp_v6_rcv` call `tcp_filter` for listeners too), so a
/// foreign SYN is dropped as a firewall would drop it and never takes a backlog place.
/// An accepted connection inherits the filter, which passes every segment of its peer.
///
/// Cost, measured on loopback: about 8 µs per attach (the kernel allocates and compiles
/// the program), once per PASV/EPSV in per-lease mode; in prebound mode only when a port's
/// set of peers changes (see [`PassivePorts::admit`]).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn attach_source_filter(socket: &socket2::Socket, peers: &[IpAddr]) -> io::Result<()> {
    match source_filter(peers) {
        Some(program) => match socket.attach_filter(&program) {
            // Some kernels allow socket filters to privileged processes only (seen with
            // `kernel.unprivileged_bpf_disabled`): after `run_as` the listener then works
            // without one, as before the filter existed (foreign connections are reset when
            // the session accepts), and the operator is told once.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::PERM.raw_os_error()) => {
                static TOLD: std::sync::Once = std::sync::Once::new();
                TOLD.call_once(|| {
                    tracing::warn!(
                        "the kernel refuses socket filters to this account: passive ports \
                         admit every address (foreign connections are reset when a session \
                         accepts, and can fill a passive backlog until then)"
                    )
                });
                Ok(())
            }
            other => other,
        },
        None => {
            tracing::warn!(
                peers = peers.len(),
                "too many peers for a passive port filter; admitting every address"
            );
            socket.detach_filter().or(Ok(()))
        }
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn attach_source_filter(_socket: &socket2::Socket, _peers: &[IpAddr]) -> io::Result<()> {
    Ok(())
}

/// The classic BPF program of [`attach_source_filter`]: accept segments from `peers`, drop
/// the rest; `None` when it would be longer than the kernel takes (4096 instructions).
///
/// It reads the network header (at `SKF_NET_OFF`: a TCP socket filter runs with its data
/// pointer at the TCP header): the IP version, then the source address (IPv4: offset 12;
/// IPv6: offset 8, four words). An IPv4 peer on a dual-stack IPv6 listener arrives with an
/// IPv4 header, so peers are matched in their canonical form. A conditional jump reaches
/// at most 255 instructions ahead, so every one of them is short; the jump over the IPv4
/// part is an unconditional one.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn source_filter(peers: &[IpAddr]) -> Option<Vec<socket2::SockFilter>> {
    use socket2::SockFilter;
    // linux/filter.h.
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const LD_B_ABS: u16 = 0x30; // BPF_LD | BPF_B | BPF_ABS
    const AND_K: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K
    const JA: u16 = 0x05; // BPF_JMP | BPF_JA
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const NET: u32 = (-0x10_0000_i32) as u32; // SKF_NET_OFF
    const MAX_INSNS: usize = 4096; // BPF_MAXINSNS
    let accept = || SockFilter::new(RET_K, 0, 0, u32::MAX);
    let drop = || SockFilter::new(RET_K, 0, 0, 0);
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for peer in peers {
        match peer.to_canonical() {
            IpAddr::V4(a) => v4.push(u32::from_be_bytes(a.octets())),
            IpAddr::V6(a) => v6.push(a.octets()),
        }
    }
    // IPv4: one load, then per peer "equal? accept : next".
    let mut ipv4 = vec![SockFilter::new(LD_W_ABS, 0, 0, NET + 12)];
    for a in v4 {
        ipv4.push(SockFilter::new(JEQ_K, 0, 1, a));
        ipv4.push(accept());
    }
    ipv4.push(drop());
    // IPv6 (the accumulator still holds the version): per peer four loads and compares,
    // any mismatch skipping to the next peer.
    let mut ipv6 = vec![SockFilter::new(JEQ_K, 1, 0, 0x60), drop()];
    for a in v6 {
        for (i, w) in a.chunks_exact(4).enumerate() {
            let word = u32::from_be_bytes([w[0], w[1], w[2], w[3]]);
            ipv6.push(SockFilter::new(LD_W_ABS, 0, 0, NET + 8 + 4 * i as u32));
            ipv6.push(SockFilter::new(JEQ_K, 0, (7 - 2 * i) as u8, word));
        }
        ipv6.push(accept());
    }
    ipv6.push(drop());
    let mut program = vec![
        SockFilter::new(LD_B_ABS, 0, 0, NET),
        SockFilter::new(AND_K, 0, 0, 0xf0),
        SockFilter::new(JEQ_K, 1, 0, 0x40),
        SockFilter::new(JA, 0, 0, ipv4.len() as u32),
    ];
    program.extend(ipv4);
    program.extend(ipv6);
    (program.len() <= MAX_INSNS).then_some(program)
}

/// Registers a duplicate of `listener`'s descriptor for readiness, for as long as the result
/// lives. A duplicate, because a prebound listener may be awaited by several sessions at once
/// (one per peer address) and epoll takes each descriptor once.
fn register(listener: &PassiveListener) -> io::Result<AsyncFd<PassiveListener>> {
    // `AsyncFd::new` is deprecated because a wrapped type could close or replace its
    // descriptor while registered; `std::net::TcpListener` owns its descriptor and does
    // neither, and the safe constructor keeps this crate free of `unsafe`.
    #[allow(deprecated)]
    AsyncFd::new(listener.try_clone()?)
}

/// Drops a connection with RST (SO_LINGER 0): no TIME_WAIT, and the peer learns at once.
pub(crate) fn reset(stream: impl AsFd) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// A lease that goes back to the pool exactly once: explicitly with the right [`Closer`], or
/// on drop as a reset (a panic or a cancelled task must not leak a port).
pub(crate) struct LeaseGuard {
    ports: Arc<PassivePorts>,
    lease: Option<Lease>,
    /// When the lease was taken, for its hold time.
    leased_at: pasv_pool::Instant,
}

impl LeaseGuard {
    /// The leased local address.
    pub(crate) fn addr(&self) -> Option<SocketAddr> {
        self.lease.as_ref().map(Lease::addr)
    }

    /// Returns the port to the pool.
    pub(crate) fn release(mut self, closer: Closer) {
        if let Some(lease) = self.lease.take() {
            self.ports.release(lease, closer, self.leased_at);
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            self.ports.release(lease, Closer::Reset, self.leased_at);
        }
    }
}

enum Acceptor {
    Listener(PassiveListener),
    /// A listener shared by every lease on its port (one per peer address). Whichever waiting
    /// session accepts a connection routes it by peer address: its own, another session's
    /// (through the registry), or nobody's (reset). No separate accept task, so no hop
    /// between threads on the way to the session.
    Prebound {
        listener: Arc<PassiveListener>,
        /// The port's filter, whose lock orders accepts against grants (see
        /// [`PassivePorts::grant`]).
        filter: Arc<Mutex<PortFilter>>,
        routed: oneshot::Receiver<DataConn>,
        registry: Registry,
    },
    Done,
}

/// What ended a wait for a passive connection.
enum Event<'a> {
    /// Another session accepted our connection and passed it on.
    Routed(Result<DataConn, oneshot::error::RecvError>),
    /// The listener has a connection to accept (or had one that another session took).
    Ready(io::Result<tokio::io::unix::AsyncFdReadyGuard<'a, PassiveListener>>),
}

/// The time out of the pool after the `refusals`-th bind in a row that the kernel refused
/// with no TIME_WAIT to explain it: [`UNEXPLAINED_BACKOFF`], doubling, at most `cap`.
fn unexplained_backoff(refusals: u32, cap: Duration) -> Duration {
    let doublings = refusals.saturating_sub(1).min(16);
    (UNEXPLAINED_BACKOFF * (1u32 << doublings)).min(cap.max(UNEXPLAINED_BACKOFF))
}

/// Accepts one connection if one is waiting, non-blocking and close-on-exec from the start
/// (`accept4` with both flags: one system call per data connection, where `accept` and then
/// `ioctl(FIONBIO)` took two).
fn accept_nonblocking(listener: &PassiveListener) -> io::Result<Option<(DataConn, SocketAddr)>> {
    use rustix::io::Errno;
    use rustix::net::SocketFlags;
    loop {
        match rustix::net::acceptfrom_with(listener, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC) {
            Ok((fd, from)) => match from.and_then(|a| SocketAddr::try_from(a).ok()) {
                Some(from) => return Ok(Some((DataConn::from(fd), from))),
                // A TCP peer always has an address; one without is dropped like a reset.
                None => continue,
            },
            Err(Errno::AGAIN) => return Ok(None),
            // Interrupted, or a connection reset while it waited in the backlog: try the next.
            Err(Errno::INTR | Errno::CONNABORTED) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads the PROXY header a balancer sends first on `stream`, until [`proxy::HEADER_TIMEOUT`]
/// or `deadline`, whichever comes first: the stream, positioned after the header, and the
/// client it names. A `LOCAL` header names nobody and is refused like a missing one.
async fn read_data_header(
    stream: DataConn,
    deadline: Instant,
) -> Result<(DataConn, IpAddr), (Option<DataConn>, String)> {
    let mut tokio_stream =
        tokio::net::TcpStream::from_std(stream).map_err(|e| (None, e.to_string()))?;
    let read = tokio::time::timeout_at(deadline, proxy::read_header(&mut tokio_stream)).await;
    // Back to a non-blocking std stream, like every other data connection.
    let stream = tokio_stream.into_std().map_err(|e| (None, e.to_string()))?;
    match read {
        Err(_) => Err((
            Some(stream),
            "the accept deadline passed inside the header".into(),
        )),
        Ok(Err(e)) => Err((Some(stream), e.to_string())),
        Ok(Ok(None)) => Err((Some(stream), "a LOCAL header names no client".into())),
        Ok(Ok(Some(client))) => Ok((stream, client.ip().to_canonical())),
    }
}

/// Our connection's channel closed: the lease's registry entry is gone.
fn withdrawn() -> AcceptError {
    AcceptError::Io(io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "passive endpoint withdrawn",
    ))
}

/// The endpoint already handed out its one connection.
fn already_taken() -> AcceptError {
    AcceptError::Io(io::Error::new(
        io::ErrorKind::NotConnected,
        "data connection already taken",
    ))
}

/// Why the client's data connection did not arrive.
#[derive(Debug)]
pub(crate) enum AcceptError {
    Timeout,
    Io(io::Error),
}

/// An open passive endpoint waiting for the client's one connection.
pub(crate) struct Passive {
    guard: LeaseGuard,
    acceptor: Acceptor,
    deadline: Instant,
    peer: IpAddr,
    /// The listener stays open after a connection is taken (see
    /// [`Passive::keep_listening`]).
    keep_listening: bool,
    /// A connection taken before the transfer command, handed out first (see
    /// [`Passive::hold`]).
    held: Option<DataConn>,
}

impl Passive {
    /// Keeps accepting after a connection is taken, until the endpoint is dropped: a data
    /// connection under PROT P is the client's only once its TLS handshake resumed the
    /// control session, and one from the right address that fails it (a port thief behind
    /// the same NAT) must not end the wait for the real one.
    pub(crate) fn keep_listening(&mut self) {
        self.keep_listening = true;
    }

    /// Keeps `conn`, taken before the transfer command, as the next connection [`Passive::accept`]
    /// hands out, while the endpoint keeps listening: under PROT P the connection that came
    /// first may be a same-address thief's, which the TLS check refuses at the transfer, and
    /// the real client's must still get in behind it.
    pub(crate) fn hold(&mut self, conn: DataConn) {
        self.keep_listening = true;
        self.held = Some(conn);
    }

    /// Whether a connection is held (see [`Passive::hold`]).
    pub(crate) fn holds_connection(&self) -> bool {
        self.held.is_some()
    }

    /// Accepts until `until` if that is later than the deadline set at the lease: the
    /// transfer command's own accept time under PROT P, where a refused handshake sends the
    /// endpoint back to accepting.
    pub(crate) fn extend_deadline(&mut self, until: Instant) {
        self.deadline = self.deadline.max(until);
    }

    /// A connection was taken: the listener closes, unless it is kept listening; then on a
    /// prebound port a fresh registry entry takes the place of the one `routed` used.
    fn taken(&mut self, routed_used: bool) {
        if !self.keep_listening {
            self.acceptor = Acceptor::Done;
            return;
        }
        if let (
            true,
            Acceptor::Prebound {
                routed, registry, ..
            },
        ) = (routed_used, &mut self.acceptor)
        {
            let (tx, rx) = oneshot::channel();
            *routed = rx;
            if let Some(addr) = self.guard.addr() {
                lock(registry).insert((addr, self.peer), tx);
            }
        }
    }

    /// The leased local address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.guard
            .addr()
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Takes the control peer's connection if it has arrived, without waiting: `Ok(None)` when
    /// it has not. Connections from any other address are reset (or, on a prebound port,
    /// handed to the session whose lease they belong to) on the way. The listener is closed
    /// as soon as the connection is taken.
    pub(crate) fn try_accept(&mut self) -> Result<Option<DataConn>, AcceptError> {
        if let Some(conn) = self.held.take() {
            return Ok(Some(conn));
        }
        let port = self.guard.addr().map_or(0, |a| a.port());
        let proxied = self.guard.ports.proxy_data.is_some();
        let taken = match &mut self.acceptor {
            // A connection's header may not have arrived yet: only `accept` waits for it.
            Acceptor::Listener(_) if proxied => return Ok(None),
            Acceptor::Listener(listener) => loop {
                match accept_nonblocking(listener) {
                    Ok(Some((stream, from))) if from.ip().to_canonical() == self.peer => {
                        break stream
                    }
                    Ok(Some((stream, from))) => {
                        tracing::warn!(port, from = %from, expected = %self.peer,
                            "data connection from a foreign address dropped");
                        self.guard.ports.counters.intruder_dropped();
                        reset(stream);
                    }
                    Ok(None) => return Ok(None),
                    Err(e) => return Err(AcceptError::Io(e)),
                }
            },
            Acceptor::Prebound {
                listener,
                filter,
                routed,
                registry,
            } => {
                // Another session may have accepted our connection and passed it on.
                match routed.try_recv() {
                    Ok(stream) => {
                        self.taken(true);
                        return Ok(Some(stream));
                    }
                    Err(oneshot::error::TryRecvError::Closed) => return Err(withdrawn()),
                    Err(oneshot::error::TryRecvError::Empty) => {
                        // From accept to registry look-up, no grant on this port runs.
                        let _grants = lock(filter);
                        loop {
                            let (stream, from) = match accept_nonblocking(listener) {
                                Ok(Some(accepted)) => accepted,
                                Ok(None) => return Ok(None),
                                Err(e) => return Err(AcceptError::Io(e)),
                            };
                            let from_ip = from.ip().to_canonical();
                            if from_ip == self.peer {
                                break stream;
                            }
                            let key = (self.guard.addr().unwrap_or(from), from_ip);
                            let waiting = lock(registry).remove(&key);
                            match waiting {
                                Some(tx) => {
                                    if let Err(stream) = tx.send(stream) {
                                        reset(stream);
                                    }
                                }
                                None => {
                                    tracing::warn!(port, from = %from, "unexpected data connection dropped");
                                    self.guard.ports.counters.intruder_dropped();
                                    reset(stream);
                                }
                            }
                        }
                    }
                }
            }
            Acceptor::Done => return Err(already_taken()),
        };
        // Close the listener now: nobody else may connect to this lease.
        self.taken(false);
        Ok(Some(taken))
    }

    /// Waits for the control peer's connection until the accept deadline; a connection from
    /// any other address is reset and the wait goes on. Cancel-safe: dropping the future loses
    /// nothing.
    ///
    /// Clients connect right after the 227/229 reply, before they send the transfer command,
    /// so the connection is nearly always waiting in the backlog by then and is taken with one
    /// `accept`. Only when it is not does the listener get registered with the runtime, for as
    /// long as this wait lasts. A listener that is not registered costs nothing when a client
    /// connects: on loopback the client's `connect` would otherwise pay for waking the
    /// server's event loop (measured: a tenth of a Python client's CPU per transfer).
    pub(crate) async fn accept(&mut self) -> Result<DataConn, AcceptError> {
        if let Some(stream) = self.try_accept()? {
            return Ok(stream);
        }
        if self.guard.ports.proxy_data.is_some() {
            return self.accept_proxied().await;
        }
        let registered = match &self.acceptor {
            Acceptor::Listener(listener) => register(listener),
            Acceptor::Prebound { listener, .. } => register(listener),
            Acceptor::Done => return Err(already_taken()),
        }
        .map_err(AcceptError::Io)?;
        let deadline = self.deadline;
        loop {
            let acceptor = &mut self.acceptor;
            let event = tokio::time::timeout_at(deadline, async {
                match acceptor {
                    Acceptor::Prebound { routed, .. } => tokio::select! {
                        r = routed => Event::Routed(r),
                        r = registered.readable() => Event::Ready(r),
                    },
                    _ => Event::Ready(registered.readable().await),
                }
            })
            .await;
            match event {
                Err(_) => {
                    self.guard
                        .ports
                        .counters
                        .accept_timeout(AcceptStage::Transfer);
                    return Err(AcceptError::Timeout);
                }
                Ok(Event::Routed(Ok(stream))) => {
                    self.taken(true);
                    return Ok(stream);
                }
                Ok(Event::Routed(Err(_))) => return Err(withdrawn()),
                Ok(Event::Ready(Err(e))) => return Err(AcceptError::Io(e)),
                Ok(Event::Ready(Ok(mut guard))) => match self.try_accept()? {
                    Some(stream) => return Ok(stream),
                    None => guard.clear_ready(),
                },
            }
        }
    }

    /// [`Passive::accept`] with PROXY headers on data connections (`proxy_protocol_data`),
    /// on a listener of this lease's own: each connection from a balancer is taken with its
    /// header, read within [`proxy::HEADER_TIMEOUT`] and the accept deadline, then it is
    /// ours if the header names the control peer, and reset otherwise, as are connections
    /// whose header is missing, late, invalid or `LOCAL`. A connection from elsewhere (no
    /// kernel filter when a `proxy_from` block is wider than one address) counts under its
    /// own address.
    async fn accept_proxied(&mut self) -> Result<DataConn, AcceptError> {
        let registered = match &self.acceptor {
            Acceptor::Listener(listener) => register(listener),
            // Prebound listeners are shared, and a connection left in their backlog by an
            // ended lease could only be told from the next one by its header: never used
            // with data headers.
            Acceptor::Prebound { .. } | Acceptor::Done => return Err(already_taken()),
        }
        .map_err(AcceptError::Io)?;
        let deadline = self.deadline;
        let port = self.addr().port();
        loop {
            let ready = tokio::time::timeout_at(deadline, registered.readable()).await;
            let (stream, from) = match ready {
                Err(_) => {
                    self.guard
                        .ports
                        .counters
                        .accept_timeout(AcceptStage::Transfer);
                    return Err(AcceptError::Timeout);
                }
                Ok(Err(e)) => return Err(AcceptError::Io(e)),
                Ok(Ok(mut guard)) => match accept_nonblocking(guard.get_inner()) {
                    Ok(Some(accepted)) => accepted,
                    Ok(None) => {
                        guard.clear_ready();
                        continue;
                    }
                    Err(e) => return Err(AcceptError::Io(e)),
                },
            };
            let from_ip = from.ip().to_canonical();
            let through_balancer = self
                .guard
                .ports
                .proxy_data
                .as_ref()
                .is_some_and(|p| p.from.iter().any(|c| c.contains(from_ip)));
            let (stream, client) = if through_balancer {
                match read_data_header(stream, deadline).await {
                    Ok(named) => named,
                    Err((stream, e)) => {
                        tracing::warn!(port, from = %from, error = %e,
                            "data connection without a usable PROXY header reset");
                        if let Some(stream) = stream {
                            reset(stream);
                        }
                        continue;
                    }
                }
            } else {
                (stream, from_ip)
            };
            if client == self.peer {
                self.taken(false);
                return Ok(stream);
            }
            tracing::warn!(port, from = %from, client = %client, expected = %self.peer,
                "data connection for a foreign address dropped");
            self.guard.ports.counters.intruder_dropped();
            reset(stream);
        }
    }

    /// Gives the lease back without a connection (accept timeout, replaced, session over).
    pub(crate) fn never_connected(mut self) {
        // Connections are taken on demand, so the client's may be waiting in the backlog. A
        // per-lease listener resets it as it closes; on a shared prebound listener it would
        // stay there for the next lease of this port and peer address to take as its own
        // (another session's data into a stale connection), so it is taken and reset here.
        let held = self.held.take().map(reset).is_some();
        let unused = if held {
            Closer::Reset
        } else {
            Closer::NeverConnected
        };
        let closer = match &self.acceptor {
            Acceptor::Prebound { .. } => match self.try_accept() {
                Ok(Some(stream)) => {
                    reset(stream);
                    Closer::Reset
                }
                Ok(None) | Err(_) => unused,
            },
            Acceptor::Listener(_) | Acceptor::Done => unused,
        };
        self.into_guard().release(closer);
    }

    /// The lease, once the endpoint is done accepting.
    pub(crate) fn into_guard(self) -> LeaseGuard {
        self.guard
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn unexplained_refusals_back_off_doubling_up_to_the_time_wait() {
        let cap = Duration::from_secs(60);
        let waits: Vec<u64> = (1..=8)
            .map(|n| unexplained_backoff(n, cap).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(unexplained_backoff(u32::MAX, cap), cap);
        // A time-wait shorter than the first step still backs off the first step.
        assert_eq!(
            unexplained_backoff(3, Duration::from_millis(10)),
            UNEXPLAINED_BACKOFF
        );
    }

    use std::net::{Ipv6Addr, TcpListener as StdListener};

    use futures_util::FutureExt;

    use super::*;

    const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

    /// Passive ports on 127.0.0.1 and ::1, one port (the same number on both), with a 30 s
    /// `pasv_wait`; `None` on a machine without IPv6 loopback.
    async fn two_families(port: u16) -> Option<Arc<PassivePorts>> {
        two_families_with(port, |_| {}).await
    }

    /// [`two_families`] with more configuration.
    async fn two_families_with(
        port: u16,
        configure: impl FnOnce(&mut Config),
    ) -> Option<Arc<PassivePorts>> {
        match StdListener::bind((V6, 0)) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => {
                eprintln!("skipped: no IPv6 loopback on this machine ({e})");
                return None;
            }
            Err(e) => panic!("binding [::1]:0: {e}"),
        }
        let mut config = Config::for_tests(std::env::temp_dir());
        config.pasv_address = vec![V4, V6];
        config.pasv_min_port = port;
        config.pasv_max_port = port;
        config.pasv_wait = Duration::from_secs(30);
        configure(&mut config);
        let listen = SocketAddr::new(V4, 0);
        Some(PassivePorts::new(&config, listen).await.expect("pool"))
    }

    /// A ledger check parked in its reading of the kernel's tables holds no lock a PASV
    /// needs: the queue lock is free and a PASV completes meanwhile. A second check waits
    /// for the first and takes its result: the tables are read once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pasv_completes_while_a_ledger_check_reads_the_kernel() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let Some(ports) = two_families(26_460).await else {
            return;
        };
        let reads = Arc::new(AtomicUsize::new(0));
        let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let read = {
            let reads = Arc::clone(&reads);
            move || {
                reads.fetch_add(1, Ordering::SeqCst);
                entered_tx.send(()).expect("test waits");
                go_rx.recv().expect("test lets the read finish");
                Ok((Vec::new(), Vec::new()))
            }
        };
        let first = tokio::spawn({
            let ports = Arc::clone(&ports);
            async move { ports.ledger_check_with(read).await }
        });
        tokio::task::spawn_blocking(move || entered_rx.recv())
            .await
            .expect("join")
            .expect("the check reaches its read");
        assert!(
            ports.queue.try_lock().is_ok(),
            "the queue lock is held while the kernel's tables are read"
        );
        let second = tokio::spawn({
            let ports = Arc::clone(&ports);
            let reads = Arc::clone(&reads);
            async move {
                ports
                    .ledger_check_with(move || {
                        reads.fetch_add(1, Ordering::SeqCst);
                        Ok((Vec::new(), Vec::new()))
                    })
                    .await
            }
        });
        let passive = ports
            .open(V4, AddrFilter::V4)
            .await
            .expect("a PASV meanwhile");
        go_tx.send(()).expect("the read waits");
        let a = first.await.expect("join").expect("check");
        let b = second.await.expect("join").expect("check");
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        assert!(Arc::ptr_eq(&a, &b));
        passive.never_connected();
    }

    /// The v4-only waiter came first, but the freed port is IPv6: the v6-only waiter must get
    /// it at once (with paused time, a waiter left asleep would only wake at its deadline,
    /// 30 s later, and the 1 s timeout below would fire first).
    #[tokio::test(start_paused = true)]
    async fn a_release_wakes_a_waiter_that_can_use_the_freed_address() {
        let Some(ports) = two_families(26_400).await else {
            return;
        };
        let held4 = ports.open(V4, AddrFilter::V4).await.expect("v4 lease");
        let held6 = ports.open(V6, AddrFilter::V6).await.expect("v6 lease");
        assert_eq!(held6.addr().ip(), V6);
        let mut wait4 = Box::pin(ports.open(V4, AddrFilter::V4));
        let mut wait6 = Box::pin(ports.open(V6, AddrFilter::V6));
        assert!(wait4.as_mut().now_or_never().is_none());
        assert!(wait6.as_mut().now_or_never().is_none());
        assert_eq!(ports.waiting(), 2);

        held6.never_connected();
        let got6 = tokio::time::timeout(Duration::from_secs(1), wait6)
            .await
            .expect("the v6 waiter is woken by the v6 release")
            .expect("v6 lease after the release");
        assert_eq!(got6.addr().ip(), V6);
        // The v4 waiter still waits, and gets the v4 port when it frees.
        assert!(wait4.as_mut().now_or_never().is_none());
        assert_eq!(ports.waiting(), 1);
        held4.never_connected();
        let got4 = tokio::time::timeout(Duration::from_secs(1), wait4)
            .await
            .expect("the v4 waiter is woken by the v4 release")
            .expect("v4 lease after the release");
        assert_eq!(got4.addr().ip(), V4);
        assert_eq!(ports.waiting(), 0);
    }

    /// A released port goes to the oldest waiter, not to a newcomer that asks first; a waiter
    /// cancelled after the queue granted it a port passes the port on to the next.
    #[tokio::test(start_paused = true)]
    async fn freed_ports_go_to_the_oldest_waiter_and_a_cancelled_grant_is_passed_on() {
        let Some(ports) = two_families(26_401).await else {
            return;
        };
        let held6 = ports.open(V6, AddrFilter::V6).await.expect("v6 lease");
        let mut first = Box::pin(ports.open(V6, AddrFilter::V6));
        let mut second = Box::pin(ports.open(V6, AddrFilter::V6));
        assert!(first.as_mut().now_or_never().is_none());
        assert!(second.as_mut().now_or_never().is_none());
        assert_eq!(ports.waiting(), 2);

        // The release leases the port to `first` before it even runs: a newcomer finds
        // nothing and queues behind `second`.
        held6.never_connected();
        assert_eq!(ports.waiting(), 1);
        let mut newcomer = Box::pin(ports.open(V6, AddrFilter::V6));
        assert!(newcomer.as_mut().now_or_never().is_none());
        assert_eq!(ports.waiting(), 2);

        // `first` is cancelled with its grant unread: the port goes to `second`, not to the
        // newcomer.
        drop(first);
        assert_eq!(ports.waiting(), 1);
        let got = tokio::time::timeout(Duration::from_secs(1), second)
            .await
            .expect("the grant is passed on at once")
            .expect("lease after the hand-on");
        assert_eq!(got.addr().ip(), V6);
        assert!(newcomer.as_mut().now_or_never().is_none());
        got.never_connected();
        let last = tokio::time::timeout(Duration::from_secs(1), newcomer)
            .await
            .expect("the newcomer's turn")
            .expect("lease");
        assert_eq!(last.addr().ip(), V6);
        assert_eq!(ports.waiting(), 0);
    }

    /// A waiter whose deadline comes gets its 425 from the driver at the deadline, with the
    /// pool's hint: here the port cools for 60 s from the release, so 30 s after it.
    #[tokio::test(start_paused = true)]
    async fn a_waiter_is_refused_at_its_deadline_with_the_pools_hint() {
        let Some(ports) = two_families_with(26_402, |c| {
            c.quarantine = Some(pasv_pool::QuarantineScope::Port);
        })
        .await
        else {
            return;
        };
        let held = ports.open(V4, AddrFilter::V4).await.expect("v4 lease");
        held.into_guard().release(Closer::Server);
        let start = clock::now();
        match ports.open(V4, AddrFilter::V4).await {
            Err(Refusal::Exhausted { retry_after }) => {
                assert_eq!(clock::now() - start, Duration::from_secs(30));
                assert_eq!(retry_after, Some(Duration::from_secs(30)));
            }
            Ok(p) => panic!("leased {}", p.addr()),
            Err(e) => panic!("{e:?}"),
        }
        assert_eq!(ports.waiting(), 0);
    }
}
