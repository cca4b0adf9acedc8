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

/// A passive listener, registered with the runtime for readiness only.
type PassiveListener = AsyncFd<std::net::TcpListener>;

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
/// creation, registered for readiness.
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
    // `AsyncFd::new` is deprecated because a wrapped type could close or replace its
    // descriptor while registered; `std::net::TcpListener` owns its descriptor and does
    // neither, and the safe constructor keeps this crate free of `unsafe`.
    #[allow(deprecated)]
    AsyncFd::new(std::net::TcpListener::from(socket))
}

/// Accepts one connection, made non-blocking. Cancel-safe.
async fn accept_raw(listener: &PassiveListener) -> io::Result<(DataConn, SocketAddr)> {
    loop {
        let mut ready = listener.readable().await?;
        match ready.try_io(|l| l.get_ref().accept()) {
            Ok(Ok((stream, from))) => {
                stream.set_nonblocking(true)?;
                return Ok((stream, from));
            }
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
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

enum PreboundEvent {
    Routed(Result<DataConn, oneshot::error::RecvError>),
    Accepted(io::Result<(DataConn, SocketAddr)>),
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

    /// Waits for the control peer's connection; a connection from any other address is reset
    /// and the wait goes on. The listener is closed as soon as the connection is accepted.
    /// Cancel-safe: dropping the future loses nothing.
    pub(crate) async fn accept(&mut self) -> Result<DataConn, AcceptError> {
        let stream = match &mut self.acceptor {
            Acceptor::Listener(listener) => loop {
                let accepted = tokio::time::timeout_at(self.deadline, accept_raw(listener)).await;
                match accepted {
                    Err(_) => return Err(AcceptError::Timeout),
                    Ok(Err(e)) => return Err(AcceptError::Io(e)),
                    Ok(Ok((stream, from))) if from.ip().to_canonical() == self.peer => {
                        break stream
                    }
                    Ok(Ok((stream, from))) => {
                        tracing::warn!(
                            port = self.guard.addr().map_or(0, |a| a.port()),
                            from = %from,
                            expected = %self.peer,
                            "data connection from a foreign address dropped"
                        );
                        reset(stream);
                    }
                }
            },
            Acceptor::Prebound {
                listener,
                routed,
                registry,
            } => loop {
                let event = tokio::time::timeout_at(self.deadline, async {
                    tokio::select! {
                        r = &mut *routed => PreboundEvent::Routed(r),
                        r = accept_raw(listener) => PreboundEvent::Accepted(r),
                    }
                })
                .await;
                match event {
                    Err(_) => return Err(AcceptError::Timeout),
                    Ok(PreboundEvent::Routed(Ok(stream))) => break stream,
                    Ok(PreboundEvent::Routed(Err(_))) => {
                        return Err(AcceptError::Io(io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            "passive endpoint withdrawn",
                        )))
                    }
                    Ok(PreboundEvent::Accepted(Err(e))) => return Err(AcceptError::Io(e)),
                    Ok(PreboundEvent::Accepted(Ok((stream, from)))) => {
                        let from_ip = from.ip().to_canonical();
                        if from_ip == self.peer {
                            break stream;
                        }
                        let port = self.guard.addr().map_or(0, |a| a.port());
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
                    }
                }
            },
            Acceptor::Done => {
                return Err(AcceptError::Io(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "data connection already taken",
                )))
            }
        };
        // Close the listener now: nobody else may connect to this lease.
        self.acceptor = Acceptor::Done;
        Ok(stream)
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
