//! Passive data connections: ports leased from the shared [`Pool`], bound per lease or once at
//! start, one accepted connection per lease, every close reported to the pool.
//!
//! The pool decides which port; this module only binds, accepts and reports. One mutex guards
//! the pool (its operations are a few hash-map and heap steps), and one [`Notify`] is signalled
//! on every release so a session waiting for a port wakes up as soon as any session frees one.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use pasv_pool::{AddrFilter, Closer, Exclusivity, Exhausted, Lease, Pool, PoolConfig, PortSet};
use std::os::fd::AsFd;

use tokio::io::unix::AsyncFd;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use super::config::{Config, ListenerMode};
use super::ServerError;
use crate::clock;

/// Backlog of a per-lease listener: it accepts one connection (plus the odd intruder).
const LEASE_BACKLOG: u32 = 16;
/// How many leased ports may fail to bind in a row before PASV gives up.
const MAX_BIND_FAILURES: usize = 4;

/// An accepted data connection: a plain non-blocking socket, not registered with the
/// runtime. A small download is written and closed without ever touching epoll (two
/// `epoll_ctl` calls and a registration saved per transfer); a transfer task registers it.
pub(crate) type DataConn = std::net::TcpStream;

/// A passive listener: non-blocking and, until a session has to wait for it, not registered
/// with the runtime.
type PassiveListener = std::net::TcpListener;

type Registry = Arc<Mutex<HashMap<(SocketAddr, IpAddr), oneshot::Sender<DataConn>>>>;

/// Locks a mutex, ignoring poisoning: the data it guards stays consistent between statements.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why no passive endpoint could be opened.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// Every port is leased or cooling; the pool's hint, if it has one.
    Exhausted { retry_after: Option<Duration> },
    /// No configured passive address matches (PASV on IPv6 only, for example).
    NoAddress,
    /// Leased ports could not be bound.
    Bind(io::Error),
}

/// The passive side of the server, shared by all sessions.
pub(crate) struct PassivePorts {
    pool: Mutex<Pool>,
    released: Notify,
    mode: ListenerMode,
    reuseaddr: bool,
    wait: Duration,
    accept_timeout: Duration,
    public: HashMap<IpAddr, Ipv4Addr>,
    addresses: Vec<IpAddr>,
    registry: Registry,
    /// Prebound mode: every passive listener, bound once at start.
    prebound: Mutex<HashMap<SocketAddr, Arc<PassiveListener>>>,
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
        let exclusivity = match config.listener_mode {
            ListenerMode::PerLease => Exclusivity::PerPort,
            ListenerMode::Prebound => Exclusivity::PerPortAndPeer,
        };
        let pool_config = PoolConfig::new(addresses.clone(), ports.clone())
            .with_quarantine(config.time_wait)
            .with_scope(config.effective_quarantine())
            .with_exclusivity(exclusivity)
            .with_strategy(config.pasv_strategy)
            .with_seed(rand::random());
        let pool = Pool::new(pool_config).map_err(|e| ServerError::Config {
            reason: format!("passive pool: {e}"),
        })?;
        let ports_state = Arc::new(PassivePorts {
            pool: Mutex::new(pool),
            released: Notify::new(),
            mode: config.listener_mode,
            reuseaddr: !config.no_reuseaddr,
            wait: config.pasv_wait,
            accept_timeout: config.accept_timeout,
            public: config.pasv_public_address.clone(),
            addresses: addresses.clone(),
            registry: Arc::default(),
            prebound: Mutex::new(HashMap::new()),
        });
        if config.listener_mode == ListenerMode::Prebound {
            let mut listeners = HashMap::new();
            for &ip in &addresses {
                for port in ports.iter() {
                    let addr = SocketAddr::new(ip, port);
                    let listener = bind_passive(addr, ports_state.reuseaddr, config.listen_backlog)
                        .map_err(|source| ServerError::Bind { addr, source })?;
                    listeners.insert(addr, Arc::new(listener));
                }
            }
            *lock(&ports_state.prebound) = listeners;
        }
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

    /// The IPv4 address a 227 reply advertises for a lease on `leased`.
    pub(crate) fn advertise_v4(&self, leased: IpAddr, control_local: IpAddr) -> Option<Ipv4Addr> {
        if let Some(public) = self
            .public
            .get(&leased)
            .or_else(|| self.public.get(&IpAddr::V4(Ipv4Addr::UNSPECIFIED)))
        {
            return Some(*public);
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

    /// Leases a port for `peer` and opens its listener, waiting up to `pasv_wait` for a port
    /// another session is about to release.
    pub(crate) async fn open(
        self: &Arc<Self>,
        peer: IpAddr,
        filter: AddrFilter,
    ) -> Result<Passive, Refusal> {
        let peer = peer.to_canonical();
        let deadline = clock::now() + self.wait;
        let mut bind_failures = 0;
        loop {
            // Registered before trying, so a release between the try and the wait wakes us.
            let notified = self.released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = clock::now();
            let attempt = {
                let mut pool = lock(&self.pool);
                let at = clock::pool_instant(now);
                pool.handle_timeout(at);
                pool.acquire_with(at, peer, filter)
            };
            match attempt {
                Ok(lease) => match self.listen(lease, peer) {
                    Ok(passive) => return Ok(passive),
                    Err((lease, e)) => {
                        tracing::warn!(port = lease.addr().port(), error = %e, "passive bind failed");
                        // Something outside the pool's model holds the port: keep it cooling.
                        self.release(lease, Closer::Server);
                        bind_failures += 1;
                        if bind_failures >= MAX_BIND_FAILURES {
                            return Err(Refusal::Bind(e));
                        }
                    }
                },
                Err(Exhausted { retry_after }) => {
                    if !self.has_address(filter) {
                        return Err(Refusal::NoAddress);
                    }
                    if now >= deadline {
                        return Err(Refusal::Exhausted { retry_after });
                    }
                    // The pool's hint covers ports freed by time; a release by another session
                    // comes through `released`. Wake for whichever is first, never after the
                    // deadline.
                    let wake = match retry_after {
                        Some(d) => deadline.min(now + d),
                        None => deadline,
                    };
                    tokio::select! {
                        () = &mut notified => {}
                        () = tokio::time::sleep_until(wake) => {}
                    }
                }
            }
        }
    }

    fn has_address(&self, filter: AddrFilter) -> bool {
        self.addresses.iter().any(|&a| filter.matches(a))
    }

    fn listen(self: &Arc<Self>, lease: Lease, peer: IpAddr) -> Result<Passive, (Lease, io::Error)> {
        let addr = lease.addr();
        let acceptor = match self.mode {
            ListenerMode::PerLease => match bind_passive(addr, self.reuseaddr, LEASE_BACKLOG) {
                Ok(listener) => Acceptor::Listener(listener),
                Err(e) => return Err((lease, e)),
            },
            ListenerMode::Prebound => {
                let Some(listener) = lock(&self.prebound).get(&addr).cloned() else {
                    return Err((lease, io::Error::from(io::ErrorKind::AddrNotAvailable)));
                };
                let (tx, rx) = oneshot::channel();
                lock(&self.registry).insert((addr, peer), tx);
                Acceptor::Prebound {
                    listener,
                    routed: rx,
                    registry: Arc::clone(&self.registry),
                }
            }
        };
        Ok(Passive {
            guard: LeaseGuard {
                ports: Arc::clone(self),
                lease: Some(lease),
            },
            acceptor,
            deadline: clock::now() + self.accept_timeout,
            peer,
        })
    }

    fn release(&self, lease: Lease, closer: Closer) {
        if self.mode == ListenerMode::Prebound {
            lock(&self.registry).remove(&(lease.addr(), lease.peer()));
        }
        let result = lock(&self.pool).release(lease, clock::pool_now(), closer);
        if let Err(e) = result {
            tracing::error!(error = %e, "pool refused a release");
        }
        // One port freed wakes one waiter: waking all of them would have every waiting
        // session race for the one port (measured: a thundering herd at 32 sessions on 20
        // ports). A woken waiter that is cancelled passes the wake-up on (tokio's Notified
        // forwards a notify_one on drop), and every waiter also wakes at its deadline.
        self.released.notify_one();
    }

    /// Pool statistics now.
    pub(crate) fn stats(&self) -> pasv_pool::PoolStats {
        lock(&self.pool).stats(clock::pool_now())
    }
}

/// Binds a listener with SO_REUSEADDR as asked and never SO_REUSEPORT (two listeners on one
/// port would split the client's connection between sessions).
pub(crate) fn bind_listener(
    addr: SocketAddr,
    reuseaddr: bool,
    backlog: u32,
) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(reuseaddr)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Binds a passive listener (SO_REUSEADDR as asked, never SO_REUSEPORT), non-blocking from
/// creation and not registered with the runtime (see [`Passive::accept`]).
fn bind_passive(addr: SocketAddr, reuseaddr: bool, backlog: u32) -> io::Result<PassiveListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(reuseaddr)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(std::net::TcpListener::from(socket))
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
}

impl LeaseGuard {
    /// The leased local address.
    pub(crate) fn addr(&self) -> Option<SocketAddr> {
        self.lease.as_ref().map(Lease::addr)
    }

    /// Returns the port to the pool.
    pub(crate) fn release(mut self, closer: Closer) {
        if let Some(lease) = self.lease.take() {
            self.ports.release(lease, closer);
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            self.ports.release(lease, Closer::Reset);
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

/// Accepts one connection if one is waiting, made non-blocking.
fn accept_nonblocking(listener: &PassiveListener) -> io::Result<Option<(DataConn, SocketAddr)>> {
    loop {
        match listener.accept() {
            Ok((stream, from)) => {
                stream.set_nonblocking(true)?;
                return Ok(Some((stream, from)));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            // Interrupted, or a connection reset while it waited in the backlog: try the next.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                ) => {}
            Err(e) => return Err(e),
        }
    }
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
}

impl Passive {
    /// The leased local address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.guard
            .addr()
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// When the accept timeout ends.
    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Takes the control peer's connection if it has arrived, without waiting: `Ok(None)` when
    /// it has not. Connections from any other address are reset (or, on a prebound port,
    /// handed to the session whose lease they belong to) on the way. The listener is closed
    /// as soon as the connection is taken.
    pub(crate) fn try_accept(&mut self) -> Result<Option<DataConn>, AcceptError> {
        let port = self.guard.addr().map_or(0, |a| a.port());
        let taken = match &mut self.acceptor {
            Acceptor::Listener(listener) => loop {
                match accept_nonblocking(listener) {
                    Ok(Some((stream, from))) if from.ip().to_canonical() == self.peer => {
                        break stream
                    }
                    Ok(Some((stream, from))) => {
                        tracing::warn!(port, from = %from, expected = %self.peer,
                            "data connection from a foreign address dropped");
                        reset(stream);
                    }
                    Ok(None) => return Ok(None),
                    Err(e) => return Err(AcceptError::Io(e)),
                }
            },
            Acceptor::Prebound {
                listener,
                routed,
                registry,
            } => {
                // Another session may have accepted our connection and passed it on.
                match routed.try_recv() {
                    Ok(stream) => stream,
                    Err(oneshot::error::TryRecvError::Closed) => {
                        return Err(AcceptError::Io(io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            "passive endpoint withdrawn",
                        )))
                    }
                    Err(oneshot::error::TryRecvError::Empty) => loop {
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
                                reset(stream);
                            }
                        }
                    },
                }
            }
            Acceptor::Done => {
                return Err(AcceptError::Io(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "data connection already taken",
                )))
            }
        };
        // Close the listener now: nobody else may connect to this lease.
        self.acceptor = Acceptor::Done;
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
        let registered = match &self.acceptor {
            Acceptor::Listener(listener) => register(listener),
            Acceptor::Prebound { listener, .. } => register(listener),
            Acceptor::Done => return Err(AcceptError::Io(io::ErrorKind::NotConnected.into())),
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
                Err(_) => return Err(AcceptError::Timeout),
                Ok(Event::Routed(Ok(stream))) => {
                    self.acceptor = Acceptor::Done;
                    return Ok(stream);
                }
                Ok(Event::Routed(Err(_))) => {
                    return Err(AcceptError::Io(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "passive endpoint withdrawn",
                    )))
                }
                Ok(Event::Ready(Err(e))) => return Err(AcceptError::Io(e)),
                Ok(Event::Ready(Ok(mut guard))) => match self.try_accept()? {
                    Some(stream) => return Ok(stream),
                    None => guard.clear_ready(),
                },
            }
        }
    }

    /// Gives the lease back without a connection (accept timeout, replaced, session over).
    pub(crate) fn never_connected(self) {
        self.into_guard().release(Closer::NeverConnected);
    }

    /// The lease, once the endpoint is done accepting.
    pub(crate) fn into_guard(self) -> LeaseGuard {
        self.guard
    }
}
