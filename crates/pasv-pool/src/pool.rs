//! The pool: leases, releases, quarantine and the sans-IO timer.

// Hashing: maps keyed by what the server chooses (slot numbers) use foldhash, fast and
// seeded per process; maps keyed by a client's address keep std's SipHash, which resists
// keys picked to collide (foldhash does not claim to against a patient attacker).
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::config::{AddrFilter, ConfigError, Exclusivity, PoolConfig, QuarantineScope};
use crate::strategy::{self, Layout, Ledger, SlotId, Strategy};
use crate::time::Instant;

/// Who closed a transfer first, which decides where TIME_WAIT lands (DESIGN.md section 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum Closer {
    /// The server closed first (RETR, LIST, NLST, MLSD in stream mode): TIME_WAIT on the
    /// passive port. The only closer that quarantines.
    Server,
    /// The client closed first (STOR, APPE, STOU): TIME_WAIT on the client's port.
    Client,
    /// Either side reset the connection: RST leaves no TIME_WAIT.
    Reset,
    /// The client never connected (accept timeout, new PASV): nothing to quarantine.
    NeverConnected,
}

/// Identity of one lease: which pool, which slot, which acquisition of that slot, which peer.
///
/// A generation counter per slot makes every acquisition distinct, so releasing an identity
/// twice, or after the slot was leased again, is detected ([`ReleaseError::Stale`]) instead of
/// freeing somebody else's lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LeaseId {
    pool: u32,
    slot: u32,
    generation: u32,
    peer: IpAddr,
}

impl LeaseId {
    /// The peer the lease was acquired for.
    pub fn peer(&self) -> IpAddr {
        self.peer
    }
}

/// A leased (local address, port). Not `Clone`: it is released exactly once, by value.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a lease holds its port until it is released"]
pub struct Lease {
    id: LeaseId,
    addr: SocketAddr,
}

impl Lease {
    /// The local address and port to listen on and advertise.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// The peer the lease was acquired for.
    pub fn peer(&self) -> IpAddr {
        self.id.peer
    }
    /// The lease's identity, for bookkeeping and [`Pool::release_id`].
    pub fn id(&self) -> LeaseId {
        self.id
    }
}

/// No port can be leased to this peer now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[error("{cause}")]
#[non_exhaustive]
pub struct Exhausted {
    /// Exactly how long until a port frees up for this peer by time alone: an acquisition by
    /// the same peer at `now + retry_after` succeeds if nothing else happened in between, one
    /// nanosecond earlier fails. `None`: every port is leased (or no address matches the
    /// filter), or the peer is at its limit, so only a release can help.
    pub retry_after: Option<Duration>,
    /// What ran out.
    pub cause: Shortage,
}

/// Why an acquisition was refused ([`Exhausted::cause`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Shortage {
    /// Every port this peer may lease is leased or cooling.
    Ports,
    /// The peer already holds [`PoolConfig::peer_limit`] leases. Only the release of one of
    /// its own leases helps, and a lease ends when its owner releases it, which the pool
    /// cannot foresee: [`Exhausted::retry_after`] is `None`.
    PeerLimit,
}

impl fmt::Display for Shortage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Shortage::Ports => "no passive port available",
            Shortage::PeerLimit => "the peer holds as many passive leases as it may",
        })
    }
}

/// A release that does not match a live lease. The pool is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum ReleaseError {
    /// The lease was issued by another pool.
    #[error("lease was not issued by this pool")]
    Foreign,
    /// The lease was already released (and perhaps the slot leased again since).
    #[error("lease was already released")]
    Stale,
}

/// Counts for one local address.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct AddressStats {
    /// The address.
    pub address: IpAddr,
    /// Ports with no lease and no port-wide quarantine (under [`QuarantineScope::Peer`] some
    /// of them may still be refused to the peers that closed them).
    pub free: usize,
    /// Live leases (under [`Exclusivity::PerPortAndPeer`] one port can carry several).
    pub leased: usize,
    /// Ports under port-wide quarantine.
    pub cooling: usize,
}

/// A snapshot of the pool ([`Pool::stats`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct PoolStats {
    /// Free ports over all addresses.
    pub free: usize,
    /// Live leases over all addresses.
    pub leased: usize,
    /// Ports under port-wide quarantine over all addresses.
    pub cooling: usize,
    /// (port, peer) pairs under per-peer quarantine.
    pub peer_quarantined: usize,
    /// The same counts, per address, in configuration order.
    pub per_address: Vec<AddressStats>,
    /// Successful acquisitions since the pool was built.
    pub acquisitions: u64,
    /// Refused acquisitions.
    pub refusals: u64,
    /// Releases with [`Closer::Server`].
    pub releases_server: u64,
    /// Releases with [`Closer::Client`].
    pub releases_client: u64,
    /// Releases with [`Closer::Reset`].
    pub releases_reset: u64,
    /// Releases with [`Closer::NeverConnected`].
    pub releases_never_connected: u64,
    /// Refused acquisitions of a peer at its limit (also counted in `refusals`).
    pub refusals_peer_limit: u64,
    /// The largest number of simultaneous leases seen.
    pub peak_leased: usize,
}

/// Per-peer ledger: the peer's live leases (one lease per port and peer) and its quarantined
/// ports (peer scope). Entries leave when the lease ends or the quarantine expires, and the
/// ledger itself when it is empty, so memory follows the leases of the last T, not history.
#[derive(Debug, Default)]
pub(crate) struct PeerLedger {
    /// slot -> generation of the peer's lease on it.
    leases: foldhash::HashMap<u32, u32>,
    /// slot -> end of the peer's quarantine on it.
    blocked: foldhash::HashMap<u32, Instant>,
}

impl PeerLedger {
    pub(crate) fn holds_or_blocks(&self, slot: u32) -> bool {
        self.leases.contains_key(&slot) || self.blocked.contains_key(&slot)
    }
    fn is_empty(&self) -> bool {
        self.leases.is_empty() && self.blocked.is_empty()
    }
}

/// `cooling_until` value of a slot that is not under port-wide quarantine (a quarantine always
/// ends after `ZERO`, because it is only applied when T > 0).
const NOT_COOLING: Instant = Instant::ZERO;

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    generation: u32,
    leases: u32,
    cooling_until: Instant,
}

impl Slot {
    fn cooling(&self) -> bool {
        self.cooling_until != NOT_COOLING
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    leased: usize,
    cooling: usize,
    /// Slots with a lease or a port-wide quarantine.
    occupied: usize,
}

static NEXT_POOL_TAG: AtomicU32 = AtomicU32::new(1);

/// A sans-IO pool of passive (address, port) pairs. See the crate documentation.
pub struct Pool {
    config: PoolConfig,
    layout: Layout,
    ports: Vec<u16>,
    slots: Vec<Slot>,
    strategy: Box<dyn Strategy>,
    /// Port-wide quarantines per address, in expiry order (one T for all, so release order is
    /// expiry order and a FIFO is a priority queue). Entries whose slot was re-quarantined
    /// later move to `extended` when they come up.
    cooling: Vec<VecDeque<(Instant, u32)>>,
    /// Quarantines extended after their entry was queued (a second server close while
    /// cooling), by new end, and quarantines whose end the host chose ([`Pool::release_until`]).
    /// At most one entry per slot, in `cooling` or here.
    extended: BTreeSet<(Instant, u32)>,
    /// Per-peer quarantines, in expiry order.
    peer_expiry: VecDeque<(Instant, IpAddr, u32)>,
    peers: HashMap<IpAddr, PeerLedger>,
    /// Live leases per client address ([`client_key`]: an IPv6 /64 counts as one), kept only
    /// under a [`PoolConfig::peer_limit`]; an address leaves with its last lease.
    held: HashMap<IpAddr, usize>,
    counts: Vec<Counts>,
    allowed: Vec<bool>,
    quarantine: Duration,
    latest: Instant,
    tag: u32,
    leased_total: usize,
    peak_leased: usize,
    acquisitions: u64,
    refusals: u64,
    refusals_peer_limit: u64,
    releases: [u64; 4],
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("config", &self.config)
            .field("strategy", &self.strategy.name())
            .field("leased", &self.leased_total)
            .field("latest", &self.latest)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// Builds a pool with the configured built-in strategy. Every port starts free.
    pub fn new(config: PoolConfig) -> Result<Pool, ConfigError> {
        config.validate()?;
        let layout = Layout {
            addresses: config.addresses.len(),
            ports: config.ports.len(),
        };
        let strategy = strategy::build(config.strategy, layout, config.seed);
        Pool::with_strategy(config, strategy)
    }

    /// Builds a pool with a custom accounted strategy, which must be empty (no slot inserted);
    /// `config.strategy` is then only a label.
    pub fn with_strategy(
        config: PoolConfig,
        mut strategy: Box<dyn Strategy>,
    ) -> Result<Pool, ConfigError> {
        config.validate()?;
        let layout = Layout {
            addresses: config.addresses.len(),
            ports: config.ports.len(),
        };
        let ports: Vec<u16> = config.ports.iter().collect();
        for s in 0..layout.slots() {
            strategy.insert(SlotId(s as u32));
        }
        let quarantine = config.quarantine;
        Ok(Pool {
            layout,
            ports,
            slots: vec![Slot::default(); layout.slots()],
            strategy,
            cooling: vec![VecDeque::new(); layout.addresses],
            extended: BTreeSet::new(),
            peer_expiry: VecDeque::new(),
            peers: HashMap::new(),
            held: HashMap::new(),
            counts: vec![Counts::default(); layout.addresses],
            allowed: vec![false; layout.addresses],
            quarantine,
            latest: Instant::ZERO,
            tag: NEXT_POOL_TAG.fetch_add(1, Ordering::Relaxed),
            leased_total: 0,
            peak_leased: 0,
            acquisitions: 0,
            refusals: 0,
            refusals_peer_limit: 0,
            releases: [0; 4],
            config,
        })
    }

    /// The configuration the pool was built with.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// The fluid capacity of this pool, `N·A / (h + f·T)` leases per second, for a mean hold
    /// time h and a fraction f of server-side closes ([`crate::capacity::rate_max`]). Only
    /// [`QuarantineScope::Port`] charges T to every close; with the other scopes it is the
    /// bound for a single peer.
    pub fn rate_max(&self, hold: Duration, server_close_fraction: f64) -> f64 {
        let t = match self.config.scope {
            QuarantineScope::None => 0.0,
            QuarantineScope::Port | QuarantineScope::Peer => self.quarantine.as_secs_f64(),
        };
        crate::capacity::rate_max(
            self.layout.slots() as u64,
            hold.as_secs_f64(),
            server_close_fraction,
            t,
        )
    }

    /// The Erlang B refusal probability of this pool for Poisson arrivals at `rate` per
    /// second without waiting ([`crate::capacity::erlang_b`]); exact for one lease per port
    /// and the port scope.
    pub fn refusal_probability(
        &self,
        rate: f64,
        hold: Duration,
        server_close_fraction: f64,
    ) -> f64 {
        let t = match self.config.scope {
            QuarantineScope::None => 0.0,
            QuarantineScope::Port | QuarantineScope::Peer => self.quarantine.as_secs_f64(),
        };
        crate::capacity::erlang_b(
            self.layout.slots() as u64,
            crate::capacity::offered_load(rate, hold.as_secs_f64(), server_close_fraction, t),
        )
    }

    /// The pool's shape (addresses × ports).
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Leases a port on any configured address to `peer`.
    pub fn acquire(&mut self, now: Instant, peer: IpAddr) -> Result<Lease, Exhausted> {
        self.acquire_with(now, peer, AddrFilter::Any)
    }

    /// Leases a port on an address that passes `filter` to `peer`.
    ///
    /// Quarantines due at `now` end first, so this is correct even if the caller never drives
    /// [`Pool::handle_timeout`]. Time never runs backwards inside the pool: a `now` earlier
    /// than one seen before is taken as the latest seen.
    pub fn acquire_with(
        &mut self,
        now: Instant,
        peer: IpAddr,
        filter: AddrFilter,
    ) -> Result<Lease, Exhausted> {
        self.acquire_inner(now, peer, filter, true)
    }

    /// [`Pool::acquire_with`], counting a refusal in [`PoolStats`] only if `count`: a
    /// [`crate::WaitQueue`] retrying its waiters does not count each retry as a refusal.
    pub(crate) fn acquire_inner(
        &mut self,
        now: Instant,
        peer: IpAddr,
        filter: AddrFilter,
        count: bool,
    ) -> Result<Lease, Exhausted> {
        let now = self.advance(now);
        if let Some(limit) = self.config.peer_limit {
            if self
                .held
                .get(&client_key(peer))
                .is_some_and(|&n| n >= limit.get())
            {
                if count {
                    self.refusals += 1;
                    self.refusals_peer_limit += 1;
                }
                return Err(Exhausted {
                    retry_after: None,
                    cause: Shortage::PeerLimit,
                });
            }
        }
        let restricted = filter != AddrFilter::Any;
        if restricted {
            for (ok, addr) in self.allowed.iter_mut().zip(&self.config.addresses) {
                *ok = filter.matches(*addr);
            }
        }
        let per_peer = self.config.exclusivity == Exclusivity::PerPortAndPeer
            || self.config.scope == QuarantineScope::Peer;
        let ledger = Ledger {
            peer,
            layout: self.layout,
            allowed: restricted.then_some(&self.allowed[..]),
            peer_state: if per_peer {
                self.peers.get(&peer)
            } else {
                None
            },
        };
        // A custom strategy that breaks its contract (a slot out of range, leased, cooling
        // or refused by the ledger)
        // is treated as finding nothing rather than allowed to corrupt the ledger.
        let picked = self.strategy.pick(&ledger).filter(|&s| {
            ledger.admits(s)
                && self.slots.get(s.index()).is_some_and(|st| {
                    !st.cooling()
                        && (self.config.exclusivity == Exclusivity::PerPortAndPeer
                            || st.leases == 0)
                })
        });
        let Some(slot) = picked else {
            if count {
                self.refusals += 1;
            }
            let retry_after = self
                .next_free_for(peer, restricted)
                .map(|t| t.saturating_duration_since(now));
            return Err(Exhausted {
                retry_after,
                cause: Shortage::Ports,
            });
        };
        let i = slot.index();
        let a = self.layout.address_of(slot);
        let s = &mut self.slots[i];
        s.generation = s.generation.wrapping_add(1);
        let generation = s.generation;
        if s.leases == 0 && !s.cooling() {
            self.counts[a].occupied += 1;
        }
        s.leases += 1;
        match self.config.exclusivity {
            Exclusivity::PerPort => self.strategy.remove(slot),
            Exclusivity::PerPortAndPeer => {
                self.strategy.touch(slot);
                self.peers
                    .entry(peer)
                    .or_default()
                    .leases
                    .insert(slot.0, generation);
            }
        }
        self.counts[a].leased += 1;
        self.leased_total += 1;
        if self.config.peer_limit.is_some() {
            *self.held.entry(client_key(peer)).or_default() += 1;
        }
        self.peak_leased = self.peak_leased.max(self.leased_total);
        self.acquisitions += 1;
        let addr = SocketAddr::new(
            self.config.addresses[a],
            self.ports[self.layout.port_of(slot)],
        );
        Ok(Lease {
            id: LeaseId {
                pool: self.tag,
                slot: slot.0,
                generation,
                peer,
            },
            addr,
        })
    }

    /// Returns a lease. Only [`Closer::Server`] quarantines the port, under the configured
    /// scope, for T from `now`.
    pub fn release(
        &mut self,
        lease: Lease,
        now: Instant,
        closer: Closer,
    ) -> Result<(), ReleaseError> {
        self.release_id(lease.id, now, closer)
    }

    /// Returns a lease by identity, for owners that keep only the [`LeaseId`]. Releasing an
    /// identity twice is [`ReleaseError::Stale`] and changes nothing.
    pub fn release_id(
        &mut self,
        id: LeaseId,
        now: Instant,
        closer: Closer,
    ) -> Result<(), ReleaseError> {
        self.release_inner(id, now, closer, None)
    }

    /// Returns a lease whose port the host refuses to bind until `until` (a bind refused
    /// with `EADDRINUSE`, the kernel still holding a TIME_WAIT entry on it): the port stays
    /// out of the pool for every peer until then, whatever the configured scope and T, so
    /// that [`Exhausted::retry_after`] reports the host's real wait. Counted as a
    /// [`Closer::Server`] release. A port already cooling keeps the later of its two ends;
    /// an `until` not after `now` is a plain release.
    pub fn release_until(
        &mut self,
        lease: Lease,
        now: Instant,
        until: Instant,
    ) -> Result<(), ReleaseError> {
        self.release_inner(lease.id, now, Closer::Server, Some(until))
    }

    fn release_inner(
        &mut self,
        id: LeaseId,
        now: Instant,
        closer: Closer,
        host_until: Option<Instant>,
    ) -> Result<(), ReleaseError> {
        if id.pool != self.tag || id.slot as usize >= self.slots.len() {
            return Err(ReleaseError::Foreign);
        }
        let i = id.slot as usize;
        let slot = SlotId(id.slot);
        match self.config.exclusivity {
            Exclusivity::PerPort => {
                let s = &self.slots[i];
                if s.leases == 0 || s.generation != id.generation {
                    return Err(ReleaseError::Stale);
                }
            }
            Exclusivity::PerPortAndPeer => {
                let ledger = self.peers.get_mut(&id.peer).ok_or(ReleaseError::Stale)?;
                if ledger.leases.get(&id.slot) != Some(&id.generation) {
                    return Err(ReleaseError::Stale);
                }
                ledger.leases.remove(&id.slot);
                if ledger.is_empty() {
                    self.peers.remove(&id.peer);
                }
            }
        }
        let now = self.advance(now);
        let a = self.layout.address_of(slot);
        self.slots[i].leases -= 1;
        self.counts[a].leased -= 1;
        self.leased_total -= 1;
        if let Some(n) = self.held.get_mut(&client_key(id.peer)) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(&client_key(id.peer));
            }
        }
        self.releases[closer as usize] += 1;
        let quarantine = closer == Closer::Server && !self.quarantine.is_zero();
        let until = now + self.quarantine;
        let per_port = self.config.exclusivity == Exclusivity::PerPort;
        if let Some(until) = host_until.filter(|&t| t > now) {
            // An end of the host's choosing, not `now + T`: filed by its own time in
            // `extended`, since the per-address FIFOs are in the order of one T.
            let s = &mut self.slots[i];
            if s.cooling() {
                if until > s.cooling_until {
                    s.cooling_until = until;
                }
            } else {
                self.counts[a].cooling += 1;
                if !per_port {
                    self.strategy.remove(slot);
                }
                s.cooling_until = until;
                self.extended.insert((until, id.slot));
            }
            return Ok(());
        }
        match self.config.scope {
            QuarantineScope::Port if quarantine => {
                // The slot stays occupied (it was leased, now it cools); under one lease per
                // (port, peer) it was offerable to other peers and no longer is.
                // A cooling slot has exactly one expiry entry, so memory follows the range,
                // not the number of closes: a second server close on a port still cooling
                // (other peers' leases, one lease per port and peer) only moves its end;
                // the old entry finds that out when it comes up and moves to `extended`.
                let s = &mut self.slots[i];
                if s.cooling() {
                    s.cooling_until = s.cooling_until.max(until);
                } else {
                    self.counts[a].cooling += 1;
                    if !per_port {
                        self.strategy.remove(slot);
                    }
                    s.cooling_until = until;
                    self.cooling[a].push_back((until, id.slot));
                }
            }
            QuarantineScope::Peer if quarantine => {
                self.peers
                    .entry(id.peer)
                    .or_default()
                    .blocked
                    .insert(id.slot, until);
                self.peer_expiry.push_back((until, id.peer, id.slot));
                self.after_unlease(slot, a, per_port);
            }
            _ => self.after_unlease(slot, a, per_port),
        }
        Ok(())
    }

    /// A lease on `slot` ended without quarantine: it may become free.
    fn after_unlease(&mut self, slot: SlotId, a: usize, per_port: bool) {
        let s = &self.slots[slot.index()];
        if s.leases == 0 && !s.cooling() {
            self.counts[a].occupied -= 1;
            if per_port {
                self.strategy.insert(slot);
            }
        }
    }

    /// When the next quarantine ends: call [`Pool::handle_timeout`] then (or don't: every
    /// operation first ends the quarantines due at its `now`). Under one lease per port and
    /// peer, a port closed again while cooling has its quarantine extended; the instant
    /// returned may then be its original end, where `handle_timeout` only files the new one.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let ports = self
            .cooling
            .iter()
            .filter_map(|q| q.front().map(|e| e.0))
            .chain(self.extended.first().map(|e| e.0))
            .min();
        let peers = self.peer_expiry.front().map(|e| e.0);
        match (ports, peers) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Ends every quarantine due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
    }

    fn advance(&mut self, now: Instant) -> Instant {
        let now = now.max(self.latest);
        self.latest = now;
        for a in 0..self.cooling.len() {
            while let Some(&(t, slot)) = self.cooling[a].front() {
                if t > now {
                    break;
                }
                self.cooling[a].pop_front();
                self.expire_slot(slot, now);
            }
        }
        while let Some(&(t, slot)) = self.extended.first() {
            if t > now {
                break;
            }
            self.extended.pop_first();
            self.expire_slot(slot, now);
        }
        while let Some(&(t, peer, slot)) = self.peer_expiry.front() {
            if t > now {
                break;
            }
            self.peer_expiry.pop_front();
            if let Some(ledger) = self.peers.get_mut(&peer) {
                if ledger.blocked.get(&slot) == Some(&t) {
                    ledger.blocked.remove(&slot);
                    if ledger.is_empty() {
                        self.peers.remove(&peer);
                    }
                }
            }
        }
        now
    }

    /// The expiry entry of `slot` came up at or before `now`: end its quarantine, or, if it
    /// was extended past `now`, file it under its new end.
    fn expire_slot(&mut self, slot: u32, now: Instant) {
        let s = &mut self.slots[slot as usize];
        if !s.cooling() {
            return;
        }
        if s.cooling_until > now {
            self.extended.insert((s.cooling_until, slot));
            return;
        }
        s.cooling_until = NOT_COOLING;
        let a = self.layout.address_of(SlotId(slot));
        self.counts[a].cooling -= 1;
        if s.leases == 0 {
            self.counts[a].occupied -= 1;
        }
        self.strategy.insert(SlotId(slot));
    }

    /// The earliest instant at which a port frees up for `peer` by time alone (quarantines
    /// ending), given that nothing is offerable to it now.
    fn next_free_for(&self, peer: IpAddr, restricted: bool) -> Option<Instant> {
        let ledger = self.peers.get(&peer);
        let mut best: Option<Instant> = None;
        // Entries are in order of their time, and an entry's time is never after the end
        // of its slot's quarantine (an extension only moves the end later), so the scan
        // stops at the first entry not earlier than the best end found.
        let consider = |t: Instant, slot: u32, best: &mut Option<Instant>| -> bool {
            if best.is_some_and(|b| t >= b) {
                return false;
            }
            let s = &self.slots[slot as usize];
            // A port this peer still holds stays refused to it after the quarantine.
            if s.cooling() && !ledger.is_some_and(|l| l.leases.contains_key(&slot)) {
                *best = Some(best.map_or(s.cooling_until, |b| b.min(s.cooling_until)));
            }
            true
        };
        for (a, queue) in self.cooling.iter().enumerate() {
            if restricted && !self.allowed[a] {
                continue;
            }
            for &(t, slot) in queue {
                if !consider(t, slot, &mut best) {
                    break;
                }
            }
        }
        for &(t, slot) in &self.extended {
            if restricted && !self.allowed[self.layout.address_of(SlotId(slot))] {
                continue;
            }
            if !consider(t, slot, &mut best) {
                break;
            }
        }
        if let Some(l) = ledger {
            let per_port = self.config.exclusivity == Exclusivity::PerPort;
            for (&slot, &t) in &l.blocked {
                let s = &self.slots[slot as usize];
                if restricted && !self.allowed[self.layout.address_of(SlotId(slot))] {
                    continue;
                }
                if (per_port && s.leases > 0) || s.cooling() {
                    continue;
                }
                best = Some(best.map_or(t, |b| b.min(t)));
            }
        }
        best
    }

    /// Counts as of `now` (quarantines due at `now` count as ended).
    pub fn stats(&self, now: Instant) -> PoolStats {
        let now = now.max(self.latest);
        // Quarantines due at `now` but not yet ended count as ended. Each cooling slot has
        // exactly one expiry entry, at or before its end, so no slot is counted twice.
        let mut due_cooling = vec![0usize; self.layout.addresses];
        let mut due_free = vec![0usize; self.layout.addresses];
        let entries = self
            .cooling
            .iter()
            .flat_map(|q| q.iter().take_while(|e| e.0 <= now))
            .chain(self.extended.iter().take_while(|e| e.0 <= now));
        for &(_, slot) in entries {
            let s = &self.slots[slot as usize];
            if s.cooling() && s.cooling_until <= now {
                let a = self.layout.address_of(SlotId(slot));
                due_cooling[a] += 1;
                due_free[a] += usize::from(s.leases == 0);
            }
        }
        let mut per_address = Vec::with_capacity(self.layout.addresses);
        for (a, c) in self.counts.iter().enumerate() {
            per_address.push(AddressStats {
                address: self.config.addresses[a],
                free: self.layout.ports - (c.occupied - due_free[a]),
                leased: c.leased,
                cooling: c.cooling - due_cooling[a],
            });
        }
        let peer_quarantined = self
            .peers
            .values()
            .map(|l| l.blocked.values().filter(|&&t| t > now).count())
            .sum();
        PoolStats {
            free: per_address.iter().map(|s| s.free).sum(),
            leased: self.leased_total,
            cooling: per_address.iter().map(|s| s.cooling).sum(),
            peer_quarantined,
            per_address,
            acquisitions: self.acquisitions,
            refusals: self.refusals,
            releases_server: self.releases[Closer::Server as usize],
            releases_client: self.releases[Closer::Client as usize],
            releases_reset: self.releases[Closer::Reset as usize],
            releases_never_connected: self.releases[Closer::NeverConnected as usize],
            refusals_peer_limit: self.refusals_peer_limit,
            peak_leased: self.peak_leased,
        }
    }

    /// Ports under port-wide quarantine, as of the latest operation.
    pub(crate) fn cooling_now(&self) -> usize {
        self.counts.iter().map(|c| c.cooling).sum()
    }

    /// When the port-wide quarantine of `addr` ends, if it is cooling.
    pub fn cooling_until(&self, addr: SocketAddr) -> Option<Instant> {
        let a = self.config.addresses.iter().position(|&x| x == addr.ip())?;
        let p = self.ports.binary_search(&addr.port()).ok()?;
        let s = &self.slots[self.layout.slot(a, p).index()];
        (s.cooling() && s.cooling_until > self.latest).then_some(s.cooling_until)
    }
}

/// What the pool believes of one passive (address, port) ([`Pool::ledger`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortLedger {
    /// The passive address and port.
    pub addr: SocketAddr,
    /// Live leases on it.
    pub leases: u32,
    /// End of its port-wide quarantine, if it is cooling.
    pub cooling_until: Option<Instant>,
    /// Peers it is refused to under per-peer quarantine, with the end of each.
    pub blocked: Vec<(IpAddr, Instant)>,
}

impl PortLedger {
    /// Whether the pool would offer it to a peer that holds and blocks nothing on it.
    pub fn offerable(&self, exclusivity: Exclusivity) -> bool {
        self.cooling_until.is_none()
            && (exclusivity == Exclusivity::PerPortAndPeer || self.leases == 0)
    }
}

impl Pool {
    /// Every passive port with what the pool believes of it as of `now`: leases, port-wide
    /// quarantine, per-peer quarantines (quarantines due at `now` count as ended). One pass
    /// over the range and the peers' ledgers: for an administrator's check against the
    /// kernel, not for every lease.
    pub fn ledger(&self, now: Instant) -> Vec<PortLedger> {
        let now = now.max(self.latest);
        let mut out = Vec::with_capacity(self.slots.len());
        for a in 0..self.layout.addresses {
            for (p, &port) in self.ports.iter().enumerate() {
                let s = &self.slots[self.layout.slot(a, p).index()];
                out.push(PortLedger {
                    addr: SocketAddr::new(self.config.addresses[a], port),
                    leases: s.leases,
                    cooling_until: (s.cooling() && s.cooling_until > now)
                        .then_some(s.cooling_until),
                    blocked: Vec::new(),
                });
            }
        }
        for (&peer, ledger) in &self.peers {
            for (&slot, &until) in &ledger.blocked {
                if until > now {
                    let a = self.layout.address_of(SlotId(slot));
                    let p = slot as usize / self.layout.addresses;
                    out[a * self.ports.len() + p].blocked.push((peer, until));
                }
            }
        }
        for port in &mut out {
            port.blocked.sort_unstable();
        }
        out
    }
}

impl Pool {
    /// Test oracle, independent of the strategy: whether an acquisition by `peer` through
    /// `filter` at `now` would find a port, by a scan of every slot. O(slots).
    #[doc(hidden)]
    pub fn has_port_for(&self, now: Instant, peer: IpAddr, filter: AddrFilter) -> bool {
        let now = now.max(self.latest);
        if let Some(limit) = self.config.peer_limit {
            if self
                .held
                .get(&client_key(peer))
                .is_some_and(|&n| n >= limit.get())
            {
                return false;
            }
        }
        let ledger = self.peers.get(&peer);
        (0..self.slots.len()).any(|i| {
            let s = &self.slots[i];
            let a = self.layout.address_of(SlotId(i as u32));
            let slot = i as u32;
            let cooling = s.cooling() && s.cooling_until > now;
            let leased = self.config.exclusivity == Exclusivity::PerPort && s.leases > 0;
            let refused_to_peer = ledger.is_some_and(|l| {
                l.leases.contains_key(&slot) || l.blocked.get(&slot).is_some_and(|&t| t > now)
            });
            filter.matches(self.config.addresses[a]) && !cooling && !leased && !refused_to_peer
        })
    }

    /// Debug-only consistency check used by tests: counters agree with the slots.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut leased = 0usize;
        for (a, c) in self.counts.iter().enumerate() {
            let (mut l, mut co, mut oc) = (0, 0, 0);
            for p in 0..self.layout.ports {
                let s = &self.slots[self.layout.slot(a, p).index()];
                l += s.leases as usize;
                co += usize::from(s.cooling());
                oc += usize::from(s.cooling() || s.leases > 0);
                if self.config.exclusivity == Exclusivity::PerPort && s.leases > 1 {
                    return Err(format!("slot {a}/{p} has {} leases", s.leases));
                }
            }
            if (l, co, oc) != (c.leased, c.cooling, c.occupied) {
                return Err(format!(
                    "address {a}: counted ({}, {}, {}) but slots say ({l}, {co}, {oc})",
                    c.leased, c.cooling, c.occupied
                ));
            }
            leased += l;
        }
        if leased != self.leased_total {
            return Err(format!(
                "leased_total {} but slots say {leased}",
                self.leased_total
            ));
        }
        Ok(())
    }
}

/// The address per-address limits count a peer under: an IPv4 address as is (IPv4-mapped
/// IPv6 included), an IPv6 address by its /64 prefix, since one host or site commonly has a
/// whole /64 to pick source addresses from. [`PoolConfig::peer_limit`] counts leases by it;
/// the server's session limits and login ledger use it too.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod client_key_tests {
    use super::client_key;
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_groups_by_64_and_ipv4_by_address() {
        assert_eq!(
            client_key(ip("2001:db8:1:2::1")),
            client_key(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            client_key(ip("2001:db8:1:2::1")),
            client_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(client_key(ip("2001:db8:1:2::1")), ip("2001:db8:1:2::"));
        assert_ne!(client_key(ip("127.0.1.2")), client_key(ip("127.0.1.3")));
        assert_eq!(client_key(ip("::ffff:127.0.1.2")), ip("127.0.1.2"));
    }
}
