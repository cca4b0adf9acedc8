//! A sans-IO wait queue in front of a [`Pool`]: which waiting session gets a freed port.
//!
//! A session refused by the pool (every port it may have is leased or cooling, or its peer is
//! at its limit) may wait up to a deadline instead of getting its refusal at once. The queue
//! owns the pool, so every release and every quarantine end passes through it, and it decides
//! on the spot which waiter gets the port that freed up: it leases the port on the waiter's
//! behalf and reports a [`WaitEvent::Granted`] with the [`Lease`]. No waiter races a newcomer
//! or another waiter for a port, so nothing needs to be woken just to find out it lost.
//!
//! Like the pool it reads no clock: every call takes `now`, [`WaitQueue::poll_timeout`] says
//! when the next deadline or quarantine end falls, [`WaitQueue::handle_timeout`] processes
//! them, and [`WaitQueue::poll_event`] yields what became of waiters. The server and the
//! simulator both run this queue, so the simulator's waits are the server's waits.
//!
//! # Order
//!
//! * **First come, first served among waiters that can use a port.** Whenever ports may have
//!   freed (a release, a quarantine or a per-peer quarantine ending), waiters are tried
//!   oldest first and each one the pool can serve is served. A waiter the pool cannot serve
//!   (its address filter admits none of the free ports, the freed port is quarantined for its
//!   peer under [`QuarantineScope::Peer`], it already holds the port under
//!   [`Exclusivity::PerPortAndPeer`], its peer is at [`PoolConfig::peer_limit`]) keeps its
//!   place, and a younger waiter that can use the port gets it.
//! * **No waiter waits while a port is available to it** after any call returns. A newcomer
//!   ([`WaitQueue::acquire`]) is served only after the waiters: it can only get a port no
//!   waiter can use.
//! * **No waiter is served after its deadline.** Time is processed in order: a call at `now`
//!   first replays every quarantine end and deadline up to `now`, earliest first, so a waiter
//!   whose port freed before its deadline gets it even when the call comes late, and one
//!   whose deadline came first gets its refusal. A port freeing exactly at a deadline is
//!   still given (the waiter waits up to its deadline, inclusive). An expired waiter's
//!   refusal is the pool's answer at its deadline, with the exact
//!   [`Exhausted::retry_after`].
//!
//! Waiters of one *class* (same address filter, and same peer when the pool keeps per-peer
//! state: [`Exclusivity::PerPortAndPeer`], [`QuarantineScope::Peer`], or a peer limit) get the
//! same answer from the pool, so once one of them is refused in a round the others of its
//! class are not tried; a round stops when every class present has been refused. With one
//! class (the default configuration) a round that serves nobody costs one refused
//! acquisition, whatever the number of waiters.
//!
//! # Bounds
//!
//! At most `max_waiters` sessions wait ([`WaitQueue::new`]); a newcomer refused by the pool
//! while the queue is full gets its refusal at once ([`Admission::Refused`] with
//! `queue_full`), never an unbounded wait. Memory is O(waiters). Each waiter leaves with
//! exactly one event (granted or expired) unless cancelled, so a caller that drains
//! [`WaitQueue::poll_event`] after each call holds at most `max_waiters` events.
//!
//! ```
//! use std::net::{IpAddr, Ipv4Addr};
//! use std::time::Duration;
//! use pasv_pool::wait::{Admission, WaitEvent, WaitQueue};
//! use pasv_pool::{AddrFilter, Closer, Instant, Pool, PoolConfig, PortSet};
//!
//! let local = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
//! let peer = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
//! let config = PoolConfig::new(vec![local], PortSet::range(50_000, 50_000)?)
//!     .with_quarantine(Duration::from_secs(60));
//! let mut queue = WaitQueue::new(Pool::new(config)?, 64);
//! let t0 = Instant::ZERO;
//! let two_s = t0 + Duration::from_secs(2);
//!
//! let Admission::Leased(lease) = queue.acquire(t0, peer, AddrFilter::Any, two_s, "a") else {
//!     panic!("the one port is free");
//! };
//! // The port is leased: "b" waits up to 2 s.
//! assert!(matches!(queue.acquire(t0, peer, AddrFilter::Any, two_s, "b"), Admission::Waiting(_)));
//! // A client-side close frees the port at once: the queue gives it to "b".
//! queue.release(lease, t0 + Duration::from_secs(1), Closer::Client)?;
//! match queue.poll_event() {
//!     Some(WaitEvent::Granted { token: "b", waited, .. }) => {
//!         assert_eq!(waited, Duration::from_secs(1));
//!     }
//!     other => panic!("{other:?}"),
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use crate::config::{AddrFilter, Exclusivity, QuarantineScope};
use crate::pool::{Closer, Exhausted, Lease, LeaseId, Pool, ReleaseError};
use crate::time::Instant;

#[cfg(doc)]
use crate::config::PoolConfig;

/// Identity of one waiter, unique within its queue; later arrivals have larger ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WaiterId(u64);

/// What [`WaitQueue::acquire`] did with a newcomer.
#[derive(Debug)]
#[must_use = "a lease holds its port, a waiter its place"]
pub enum Admission<T> {
    /// A port at once.
    Leased(Lease),
    /// No port now: the newcomer waits, and leaves with one [`WaitEvent`] (or
    /// [`WaitQueue::cancel`]).
    Waiting(WaiterId),
    /// No port and no wait: its deadline is not after `now`, or the queue is full.
    Refused {
        /// The pool's refusal.
        refusal: Exhausted,
        /// The caller's token, back.
        token: T,
        /// Refused because `max_waiters` sessions already wait.
        queue_full: bool,
    },
}

/// What became of a waiter ([`WaitQueue::poll_event`]).
#[derive(Debug)]
pub enum WaitEvent<T> {
    /// The queue leased a port to the waiter.
    Granted {
        /// The waiter.
        id: WaiterId,
        /// Its token.
        token: T,
        /// Its lease, to be released like any other.
        lease: Lease,
        /// When the port was leased (at or before the `now` of the call that granted it).
        at: Instant,
        /// How long it waited.
        waited: Duration,
    },
    /// The waiter's deadline came with no port for it.
    Expired {
        /// The waiter.
        id: WaiterId,
        /// Its token.
        token: T,
        /// The pool's answer at the deadline; its `retry_after` counts from the deadline.
        refusal: Exhausted,
        /// The deadline.
        at: Instant,
        /// How long it waited.
        waited: Duration,
    },
}

/// Counts since the queue was built ([`WaitQueue::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct WaitStats {
    /// Sessions waiting now.
    pub waiting: usize,
    /// The most that ever waited at once.
    pub peak_waiting: usize,
    /// Newcomers that started waiting.
    pub queued: u64,
    /// Waiters that got a port.
    pub granted: u64,
    /// Waiters whose deadline came first.
    pub expired: u64,
    /// Waiters cancelled by their caller.
    pub cancelled: u64,
    /// Newcomers refused because the queue was full.
    pub refused_full: u64,
}

/// Waiters that the pool answers alike (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Class {
    filter: AddrFilter,
    peer: Option<IpAddr>,
}

struct Waiter<T> {
    peer: IpAddr,
    filter: AddrFilter,
    arrived: Instant,
    deadline: Instant,
    token: T,
}

/// A [`Pool`] with a bounded FIFO of sessions waiting for a port. See the module
/// documentation.
pub struct WaitQueue<T> {
    pool: Pool,
    /// By id, which is arrival order.
    waiters: BTreeMap<u64, Waiter<T>>,
    deadlines: BTreeSet<(Instant, u64)>,
    /// Waiters per class.
    classes: HashMap<Class, usize>,
    /// Classes refused in the current round (kept to reuse its memory).
    refused: HashSet<Class>,
    events: VecDeque<WaitEvent<T>>,
    max_waiters: usize,
    next_id: u64,
    per_peer: bool,
    latest: Instant,
    stats: WaitStats,
}

impl<T> fmt::Debug for WaitQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitQueue")
            .field("pool", &self.pool)
            .field("waiting", &self.waiters.len())
            .field("max_waiters", &self.max_waiters)
            .field("events", &self.events.len())
            .finish_non_exhaustive()
    }
}

impl<T> WaitQueue<T> {
    /// A queue in front of `pool` in which at most `max_waiters` sessions wait (zero: nobody
    /// waits, every refusal is immediate).
    pub fn new(pool: Pool, max_waiters: usize) -> WaitQueue<T> {
        let config = pool.config();
        let per_peer = config.exclusivity == Exclusivity::PerPortAndPeer
            || config.scope == QuarantineScope::Peer
            || config.peer_limit.is_some();
        WaitQueue {
            pool,
            waiters: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            classes: HashMap::new(),
            refused: HashSet::new(),
            events: VecDeque::new(),
            max_waiters,
            next_id: 0,
            per_peer,
            latest: Instant::ZERO,
            stats: WaitStats::default(),
        }
    }

    /// The pool, for statistics and configuration. Leases and releases go through the queue.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The most sessions that may wait at once.
    pub fn max_waiters(&self) -> usize {
        self.max_waiters
    }

    /// Sessions waiting now.
    pub fn len(&self) -> usize {
        self.waiters.len()
    }

    /// Whether nobody waits.
    pub fn is_empty(&self) -> bool {
        self.waiters.is_empty()
    }

    /// The waiters' tokens, oldest first.
    pub fn tokens(&self) -> impl Iterator<Item = &T> + '_ {
        self.waiters.values().map(|w| &w.token)
    }

    /// Counts since the queue was built.
    pub fn stats(&self) -> WaitStats {
        WaitStats {
            waiting: self.waiters.len(),
            ..self.stats
        }
    }

    /// Leases a port to `peer` on an address that passes `filter` when [`acquire`] would
    /// lease one at once; `None` (nothing counted, nothing queued) when it would queue or
    /// refuse. A caller whose wait token costs something to make (a channel) tries this
    /// first and makes the token only for `acquire`.
    ///
    /// [`acquire`]: Self::acquire
    pub fn try_acquire(&mut self, now: Instant, peer: IpAddr, filter: AddrFilter) -> Option<Lease> {
        let now = self.advance(now);
        self.pool.acquire_inner(now, peer, filter, false).ok()
    }

    /// Leases a port to `peer` on an address that passes `filter`, or queues the newcomer
    /// until `deadline` with `token` (returned in its [`WaitEvent`]). Waiters are served
    /// first: a newcomer gets only a port none of them can use.
    pub fn acquire(
        &mut self,
        now: Instant,
        peer: IpAddr,
        filter: AddrFilter,
        deadline: Instant,
        token: T,
    ) -> Admission<T> {
        let now = self.advance(now);
        let refusal = match self.pool.acquire_inner(now, peer, filter, true) {
            Ok(lease) => return Admission::Leased(lease),
            Err(e) => e,
        };
        let queue_full = self.waiters.len() >= self.max_waiters;
        if deadline <= now || queue_full {
            if queue_full && deadline > now {
                self.stats.refused_full += 1;
            }
            return Admission::Refused {
                refusal,
                token,
                queue_full: queue_full && deadline > now,
            };
        }
        let id = self.next_id;
        self.next_id += 1;
        let waiter = Waiter {
            peer,
            filter,
            arrived: now,
            deadline,
            token,
        };
        *self.classes.entry(self.class_of(&waiter)).or_default() += 1;
        self.deadlines.insert((deadline, id));
        self.waiters.insert(id, waiter);
        self.stats.queued += 1;
        self.stats.peak_waiting = self.stats.peak_waiting.max(self.waiters.len());
        Admission::Waiting(WaiterId(id))
    }

    /// Takes a waiter out of the queue (its session went away); its token back, or `None` if
    /// it already left (granted or expired: its event is then pending or was polled).
    pub fn cancel(&mut self, id: WaiterId) -> Option<T> {
        let w = self.take(id.0)?;
        self.stats.cancelled += 1;
        Some(w.token)
    }

    /// Returns a lease ([`Pool::release`]) and serves waiters with what it freed.
    pub fn release(
        &mut self,
        lease: Lease,
        now: Instant,
        closer: Closer,
    ) -> Result<(), ReleaseError> {
        self.release_id(lease.id(), now, closer)
    }

    /// Returns a lease by identity ([`Pool::release_id`]) and serves waiters.
    pub fn release_id(
        &mut self,
        id: LeaseId,
        now: Instant,
        closer: Closer,
    ) -> Result<(), ReleaseError> {
        let now = self.advance(now);
        self.pool.release_id(id, now, closer)?;
        self.serve(now);
        Ok(())
    }

    /// Returns a lease whose port the host refuses to bind until `until`
    /// ([`Pool::release_until`]) and serves waiters (the release may lift a peer limit).
    pub fn release_until(
        &mut self,
        lease: Lease,
        now: Instant,
        until: Instant,
    ) -> Result<(), ReleaseError> {
        let now = self.advance(now);
        self.pool.release_until(lease, now, until)?;
        self.serve(now);
        Ok(())
    }

    /// When to call [`WaitQueue::handle_timeout`]: the earliest deadline or, while anybody
    /// waits, the pool's next quarantine end. `None` when nobody waits.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let deadline = self.deadlines.first().map(|e| e.0)?;
        Some(match self.pool.poll_timeout() {
            Some(t) => t.min(deadline),
            None => deadline,
        })
    }

    /// Processes every quarantine end and deadline up to `now`, in time order.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
    }

    /// The next thing that happened to a waiter, in the order it happened.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<WaitEvent<T>> {
        self.events.pop_front()
    }

    fn class_of(&self, w: &Waiter<T>) -> Class {
        Class {
            filter: w.filter,
            peer: self.per_peer.then_some(w.peer),
        }
    }

    fn take(&mut self, id: u64) -> Option<Waiter<T>> {
        let w = self.waiters.remove(&id)?;
        self.deadlines.remove(&(w.deadline, id));
        let class = self.class_of(&w);
        if let Some(n) = self.classes.get_mut(&class) {
            *n -= 1;
            if *n == 0 {
                self.classes.remove(&class);
            }
        }
        Some(w)
    }

    /// Replays quarantine ends and deadlines up to `now`, earliest first (a quarantine end
    /// before a deadline at the same instant), serving waiters at each quarantine end.
    fn advance(&mut self, now: Instant) -> Instant {
        let now = now.max(self.latest);
        self.latest = now;
        // Each turn ends at least one pool timer entry or one waiter, so this ends.
        while let Some(&(deadline, id)) = self.deadlines.first() {
            let timer = self.pool.poll_timeout().filter(|&t| t <= now);
            match timer {
                Some(t) if t <= deadline => {
                    self.pool.handle_timeout(t);
                    self.serve(t);
                }
                _ if deadline <= now => self.expire(id, deadline),
                _ => break,
            }
        }
        // With nobody waiting the pool's own operations end its quarantines as they come.
        if !self.waiters.is_empty() {
            self.pool.handle_timeout(now);
        }
        now
    }

    /// The deadline of waiter `id` came: its refusal, as the pool answers at the deadline.
    fn expire(&mut self, id: u64, at: Instant) {
        let Some(w) = self.take(id) else {
            return;
        };
        let waited = at.saturating_duration_since(w.arrived);
        match self.pool.acquire_inner(at, w.peer, w.filter, false) {
            Ok(lease) => {
                // Not reached while every round serves all it can; serving is still right.
                self.stats.granted += 1;
                self.events.push_back(WaitEvent::Granted {
                    id: WaiterId(id),
                    token: w.token,
                    lease,
                    at,
                    waited,
                });
            }
            Err(refusal) => {
                self.stats.expired += 1;
                self.events.push_back(WaitEvent::Expired {
                    id: WaiterId(id),
                    token: w.token,
                    refusal,
                    at,
                    waited,
                });
            }
        }
    }

    /// One round: every waiter the pool can serve at `now` is served, oldest first.
    fn serve(&mut self, now: Instant) {
        if self.waiters.is_empty() {
            return;
        }
        self.refused.clear();
        let mut next = 0u64;
        while self.refused.len() < self.classes.len() {
            let Some((&id, w)) = self.waiters.range(next..).next() else {
                break;
            };
            next = id + 1;
            let class = self.class_of(w);
            if self.refused.contains(&class) {
                continue;
            }
            let (peer, filter) = (w.peer, w.filter);
            match self.pool.acquire_inner(now, peer, filter, false) {
                Ok(lease) => {
                    let w = self.take(id).expect("the waiter just found");
                    self.stats.granted += 1;
                    self.events.push_back(WaitEvent::Granted {
                        id: WaiterId(id),
                        token: w.token,
                        lease,
                        at: now,
                        waited: now.saturating_duration_since(w.arrived),
                    });
                }
                Err(_) => {
                    self.refused.insert(class);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PoolConfig, PortSet};
    use std::net::Ipv4Addr;
    use std::num::NonZeroUsize;

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

    fn peer(d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, d))
    }

    fn at(ms: u64) -> Instant {
        Instant::ZERO + Duration::from_millis(ms)
    }

    fn queue(ports: u16, config: impl FnOnce(PoolConfig) -> PoolConfig) -> WaitQueue<u32> {
        let c = PoolConfig::new(
            vec![LOCAL],
            PortSet::range(50_000, 50_000 + ports - 1).unwrap(),
        )
        .with_quarantine(Duration::from_secs(60));
        WaitQueue::new(Pool::new(config(c)).unwrap(), 8)
    }

    fn leased<T: fmt::Debug>(a: Admission<T>) -> Lease {
        match a {
            Admission::Leased(l) => l,
            other => panic!("{other:?}"),
        }
    }

    fn waiting<T: fmt::Debug>(a: Admission<T>) -> WaiterId {
        match a {
            Admission::Waiting(id) => id,
            other => panic!("{other:?}"),
        }
    }

    /// Drains the events; granted leases go back at once (a client-side close).
    fn events(q: &mut WaitQueue<u32>) -> Vec<(u32, bool, Instant)> {
        let mut out = Vec::new();
        while let Some(e) = q.poll_event() {
            out.push(match e {
                WaitEvent::Granted {
                    token, lease, at, ..
                } => {
                    q.release(lease, at, Closer::Client).unwrap();
                    (token, true, at)
                }
                WaitEvent::Expired { token, at, .. } => (token, false, at),
            });
        }
        out
    }

    #[test]
    fn waiters_are_served_first_come_first_served() {
        let mut q = queue(1, |c| c);
        let a = leased(q.acquire(at(0), peer(1), AddrFilter::Any, at(5_000), 0));
        for (t, tok) in [(1, 1u32), (2, 2), (3, 3)] {
            waiting(q.acquire(at(t), peer(1), AddrFilter::Any, at(5_000), tok));
        }
        assert_eq!(q.len(), 3);
        q.release(a, at(10), Closer::Client).unwrap();
        let Some(WaitEvent::Granted {
            token: 1,
            lease,
            waited,
            ..
        }) = q.poll_event()
        else {
            panic!("the oldest waiter first");
        };
        assert_eq!(waited, Duration::from_millis(9));
        assert!(q.poll_event().is_none());
        // A newcomer does not jump the queue: the next release goes to waiter 2.
        assert!(matches!(
            q.acquire(at(11), peer(1), AddrFilter::Any, at(11), 9),
            Admission::Refused {
                token: 9,
                queue_full: false,
                ..
            }
        ));
        q.release(lease, at(20), Closer::Client).unwrap();
        assert!(matches!(
            q.poll_event(),
            Some(WaitEvent::Granted { token: 2, .. })
        ));
    }

    #[test]
    fn try_acquire_leases_a_free_port_and_otherwise_leaves_no_trace() {
        let mut q = queue(2, |c| c);
        let a = q
            .try_acquire(at(0), peer(1), AddrFilter::Any)
            .expect("a free port");
        let b = leased(q.acquire(at(0), peer(2), AddrFilter::Any, at(0), 0));
        // Nothing free: no lease, no refusal counted, nobody queued.
        assert!(q.try_acquire(at(1), peer(3), AddrFilter::Any).is_none());
        assert_eq!(q.pool().stats(at(1)).refusals, 0);
        assert_eq!(q.len(), 0);
        // A waiter comes first: a port released while it waits is not for the newcomer.
        waiting(q.acquire(at(2), peer(3), AddrFilter::Any, at(5_000), 3));
        q.release(a, at(3), Closer::Client).unwrap();
        assert!(q.try_acquire(at(4), peer(4), AddrFilter::Any).is_none());
        assert!(matches!(
            q.poll_event(),
            Some(WaitEvent::Granted { token: 3, .. })
        ));
        q.release(b, at(5), Closer::Client).unwrap();
        assert!(q.try_acquire(at(6), peer(4), AddrFilter::Any).is_some());
    }

    #[test]
    fn a_quarantine_end_serves_the_waiter_and_deadlines_refuse_with_the_hint() {
        let mut q = queue(1, |c| c);
        let a = leased(q.acquire(at(0), peer(1), AddrFilter::Any, at(0), 0));
        q.release(a, at(0), Closer::Server).unwrap(); // cooling until 60 s
        waiting(q.acquire(at(1_000), peer(1), AddrFilter::Any, at(3_000), 1));
        waiting(q.acquire(at(2_000), peer(1), AddrFilter::Any, at(61_000), 2));
        assert_eq!(q.poll_timeout(), Some(at(3_000)));
        // One late call replays both: waiter 1 expires at 3 s with 57 s to go, waiter 2 gets
        // the port at 60 s.
        q.handle_timeout(at(70_000));
        match q.poll_event() {
            Some(WaitEvent::Expired {
                token: 1,
                refusal,
                at: when,
                waited,
                ..
            }) => {
                assert_eq!(when, at(3_000));
                assert_eq!(waited, Duration::from_secs(2));
                assert_eq!(refusal.retry_after, Some(Duration::from_secs(57)));
            }
            other => panic!("{other:?}"),
        }
        match q.poll_event() {
            Some(WaitEvent::Granted {
                token: 2, at: when, ..
            }) => assert_eq!(when, at(60_000)),
            other => panic!("{other:?}"),
        }
        assert_eq!(q.poll_timeout(), None);
        let s = q.stats();
        assert_eq!((s.queued, s.granted, s.expired, s.waiting), (2, 1, 1, 0));
    }

    #[test]
    fn a_port_freeing_at_the_deadline_is_given() {
        let mut q = queue(1, |c| c);
        let a = leased(q.acquire(at(0), peer(1), AddrFilter::Any, at(0), 0));
        q.release(a, at(0), Closer::Server).unwrap();
        waiting(q.acquire(at(0), peer(1), AddrFilter::Any, at(60_000), 1));
        assert_eq!(q.poll_timeout(), Some(at(60_000)));
        q.handle_timeout(at(60_000));
        assert!(matches!(
            q.poll_event(),
            Some(WaitEvent::Granted { token: 1, .. })
        ));
    }

    #[test]
    fn a_waiter_that_cannot_use_the_port_keeps_its_place() {
        // Peer scope: the port is quarantined for peer 1 only; peer 2, behind it, gets it.
        let mut q = queue(1, |c| c.with_scope(QuarantineScope::Peer));
        let a = leased(q.acquire(at(0), peer(1), AddrFilter::Any, at(0), 0));
        waiting(q.acquire(at(1), peer(1), AddrFilter::Any, at(90_000), 1));
        waiting(q.acquire(at(2), peer(2), AddrFilter::Any, at(90_000), 2));
        q.release(a, at(10), Closer::Server).unwrap();
        assert_eq!(events(&mut q), vec![(2, true, at(10))]);
        // Peer 1 gets the port when its own quarantine ends.
        assert_eq!(q.poll_timeout(), Some(at(60_010)));
        q.handle_timeout(at(60_010));
        assert_eq!(events(&mut q), vec![(1, true, at(60_010))]);
    }

    #[test]
    fn an_address_filter_is_respected() {
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let c = PoolConfig::new(vec![LOCAL, v6], PortSet::range(50_000, 50_000).unwrap());
        let mut q = WaitQueue::new(Pool::new(c).unwrap(), 8);
        let a4 = leased(q.acquire(at(0), peer(1), AddrFilter::V4, at(0), 0u32));
        let a6 = leased(q.acquire(at(0), peer(1), AddrFilter::V6, at(0), 0));
        waiting(q.acquire(at(1), peer(1), AddrFilter::V4, at(9_000), 4));
        waiting(q.acquire(at(2), peer(1), AddrFilter::V6, at(9_000), 6));
        q.release(a6, at(3), Closer::Client).unwrap();
        assert_eq!(events(&mut q), vec![(6, true, at(3))]);
        q.release(a4, at(4), Closer::Client).unwrap();
        assert_eq!(events(&mut q), vec![(4, true, at(4))]);
    }

    #[test]
    fn a_peer_at_its_limit_is_served_by_its_own_release() {
        let mut q = queue(4, |c| c.with_peer_limit(NonZeroUsize::new(1)));
        let a = leased(q.acquire(at(0), peer(1), AddrFilter::Any, at(0), 0));
        let id = waiting(q.acquire(at(1), peer(1), AddrFilter::Any, at(9_000), 1));
        // Another peer's activity does not serve it; its own release does.
        let b = leased(q.acquire(at(2), peer(2), AddrFilter::Any, at(0), 2));
        q.release(b, at(3), Closer::Client).unwrap();
        assert!(q.poll_event().is_none());
        q.release(a, at(4), Closer::Server).unwrap();
        assert_eq!(events(&mut q), vec![(1, true, at(4))]);
        assert_eq!(q.cancel(id), None);
    }

    #[test]
    fn the_bound_and_cancellation() {
        let mut q = queue(1, |c| c);
        let _a = leased(q.acquire(at(0), peer(1), AddrFilter::Any, at(0), 0));
        let ids: Vec<_> = (0..8)
            .map(|i| waiting(q.acquire(at(1), peer(1), AddrFilter::Any, at(9_000), i)))
            .collect();
        assert!(matches!(
            q.acquire(at(1), peer(1), AddrFilter::Any, at(9_000), 99),
            Admission::Refused {
                token: 99,
                queue_full: true,
                ..
            }
        ));
        assert_eq!(q.cancel(ids[3]), Some(3));
        assert_eq!(q.cancel(ids[3]), None);
        waiting(q.acquire(at(2), peer(1), AddrFilter::Any, at(9_000), 100));
        let s = q.stats();
        assert_eq!(
            (s.waiting, s.peak_waiting, s.refused_full, s.cancelled),
            (8, 8, 1, 1)
        );
        let mut nobody = WaitQueue::new(Pool::new(q.pool().config().clone()).unwrap(), 0);
        let _b = leased(nobody.acquire(at(0), peer(1), AddrFilter::Any, at(0), 0u32));
        assert!(matches!(
            nobody.acquire(at(0), peer(1), AddrFilter::Any, at(1), 1),
            Admission::Refused {
                queue_full: true,
                ..
            }
        ));
    }

    #[test]
    fn waiter_retries_are_not_counted_as_pool_refusals() {
        let mut q = queue(1, |c| c);
        let a = leased(q.acquire(at(0), peer(1), AddrFilter::Any, at(0), 0));
        q.release(a, at(0), Closer::Server).unwrap();
        waiting(q.acquire(at(1), peer(1), AddrFilter::Any, at(9_000), 1));
        let b = leased(q.acquire(at(60_000), peer(2), AddrFilter::Any, at(0), 2));
        q.release(b, at(60_001), Closer::Client).unwrap();
        q.handle_timeout(at(9_000_000));
        assert_eq!(q.pool().stats(at(9_000_000)).refusals, 1);
    }
}
