//! A sans-IO pool of passive FTP ports that knows about TIME_WAIT. It opens no socket and
//! reads no clock: every call takes `now` (this crate's own [`Instant`]), [`Pool::acquire`]
//! hands out a [`Lease`] on a (local address, port) or says exactly when to come back
//! ([`Exhausted::retry_after`]), [`Pool::release`] is told who closed the transfer
//! ([`Closer`]), and only a server-side close quarantines the port, for T, under the
//! configured [`QuarantineScope`]. [`Pool::poll_timeout`] / [`Pool::handle_timeout`] drive
//! the quarantine timers, and every operation is also correct without them.
//!
//! ```
//! use std::net::{IpAddr, Ipv4Addr};
//! use std::time::Duration;
//! use pasv_pool::{Closer, Instant, Pool, PoolConfig, PortSet};
//!
//! let local = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
//! let peer = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
//! let config = PoolConfig::new(vec![local], PortSet::range(50_000, 50_001)?)
//!     .with_quarantine(Duration::from_secs(60));
//! let mut pool = Pool::new(config)?;
//!
//! let t0 = Instant::ZERO;
//! let a = pool.acquire(t0, peer).expect("a free port");
//! let b = pool.acquire(t0, peer).expect("a second free port");
//! assert_ne!(a.addr(), b.addr());
//!
//! // RETR: the server closes first, so TIME_WAIT lands on the passive port: quarantine.
//! pool.release(a, t0 + Duration::from_secs(1), Closer::Server)?;
//! // STOR: the client closes first; the port is free again at once.
//! let port_b = b.addr();
//! pool.release(b, t0 + Duration::from_secs(2), Closer::Client)?;
//!
//! let c = pool.acquire(t0 + Duration::from_secs(3), peer).expect("the client-closed port");
//! assert_eq!(c.addr(), port_b);
//!
//! // Both ports are taken now (one leased, one cooling): the refusal says when to retry.
//! let err = pool.acquire(t0 + Duration::from_secs(3), peer).unwrap_err();
//! assert_eq!(err.retry_after, Some(Duration::from_secs(58)));
//! assert_eq!(pool.poll_timeout(), Some(t0 + Duration::from_secs(61)));
//! let d = pool.acquire(t0 + Duration::from_secs(61), peer).expect("quarantine over");
//! # drop((c, d));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # What the pool models
//!
//! * **Quarantine.** After a server-side close the passive port holds TIME_WAIT for T (60 s
//!   on Linux). [`QuarantineScope::Port`] forbids it to everybody for T (listeners without
//!   `SO_REUSEADDR`, middleboxes), [`QuarantineScope::Peer`] only to that peer (TIME_WAIT is
//!   per 4-tuple), [`QuarantineScope::None`] to nobody (Linux with `SO_REUSEADDR`).
//! * **Exclusivity.** [`Exclusivity::PerPort`] for servers that bind a listener per lease;
//!   [`Exclusivity::PerPortAndPeer`] for servers that keep every port listening and route
//!   each accepted connection by peer address.
//! * **Several local addresses**, IPv4 and IPv6, chosen per acquisition with [`AddrFilter`].
//! * **Exact refusals.** [`Exhausted::retry_after`] is the time until the earliest
//!   quarantine that would give this peer a port ends; `None` when all ports are leased.
//! * **A limit per peer** ([`PoolConfig::peer_limit`]): a peer address holding that many
//!   leases is refused with [`Shortage::PeerLimit`] while ports are free, so one address
//!   cannot take the whole range; only the release of one of its own leases lifts it.
//!
//! # Cost
//!
//! With the default [`StrategyKind::LeastRecentlyReleased`], acquire and release are O(A)
//! (A = number of addresses) whatever the range size and however many ports are cooling:
//! slots live in intrusive FIFOs, and with one T for all, quarantines end in the order they
//! began, so a `VecDeque` per address is the priority queue (about 30 ns per acquire +
//! release at 64,000 ports with 99% of them cooling). Memory is proportional to the range:
//! every cooling port has one expiry entry, and per-peer ledgers (peer scope, one lease per
//! port and peer) hold only the entries of the last T. See `docs/CAPACITY.md` for the
//! measured numbers.
//!
//! # Also in this crate
//!
//! * [`capacity`]: the fluid bound `rate_max = N·A / (h + f·T)`, Erlang B, port sizing.
//! * [`strategy`]: the accounted strategies, and blind models of vsftpd, ProFTPD, Pure-FTPd,
//!   pyftpdlib and FileZilla Server, answered by a kernel [`BindModel`].
//! * [`wait`]: a bounded, first-come first-served [`WaitQueue`] of sessions waiting for a
//!   port, in front of a pool: the server and the simulator run the same queue.
//! * [`hold`]: the expected wait for a live lease to end, from measured hold times.
//! * [`sim`]: a seeded discrete-event simulator that checks all of the above against theory.
//! * [`sweep`]: every strategy at several loads through the simulator, against Erlang B.

mod bind;
pub mod capacity;
mod config;
pub mod hold;
mod pool;
mod rng;
pub mod sim;
pub mod strategy;
pub mod sweep;
mod time;
pub mod wait;

pub use bind::{bind_cost_ns, BindModel, BindResult};
pub use config::{
    AddrFilter, ConfigError, Exclusivity, ParseStrategyError, PoolConfig, PortSet, QuarantineScope,
    StrategyKind,
};
pub use hold::HoldEstimator;
pub use pool::{
    client_key, AddressStats, Closer, Exhausted, Lease, LeaseId, Pool, PoolStats, PortLedger,
    ReleaseError, Shortage,
};
pub use rng::{keyed_hash, Rng};
pub use time::Instant;
pub use wait::{Admission, WaitEvent, WaitQueue, WaiterId};
