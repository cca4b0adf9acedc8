//! Integration tests of pasv-pool: configuration, leases, strategies, properties, simulator.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use pasv_pool::{
    AddrFilter, Closer, ConfigError, Exclusivity, Instant, Lease, Pool, PoolConfig, PortSet,
    QuarantineScope, ReleaseError, StrategyKind,
};

fn v4(d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, d))
}

fn peer(d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 51, 100, d))
}

fn v6(d: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, d))
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn at(s: u64) -> Instant {
    Instant::ZERO + secs(s)
}

fn pool(
    ports: u16,
    scope: QuarantineScope,
    exclusivity: Exclusivity,
    strategy: StrategyKind,
) -> Pool {
    let config = PoolConfig::new(vec![v4(1)], PortSet::range(5000, 5000 + ports - 1).unwrap())
        .with_quarantine(secs(60))
        .with_scope(scope)
        .with_exclusivity(exclusivity)
        .with_strategy(strategy);
    Pool::new(config).unwrap()
}

fn default_pool(ports: u16) -> Pool {
    pool(
        ports,
        QuarantineScope::Port,
        Exclusivity::PerPort,
        StrategyKind::LeastRecentlyReleased,
    )
}

mod config {
    use super::*;

    #[test]
    fn port_set_errors() {
        assert_eq!(PortSet::range(0, 10), Err(ConfigError::PortZero));
        assert_eq!(
            PortSet::range(10, 5),
            Err(ConfigError::InvalidRange { lo: 10, hi: 5 })
        );
        let set = PortSet::range(100, 199).unwrap();
        assert_eq!(
            set.clone().with_range(150, 250),
            Err(ConfigError::OverlappingRanges { lo: 150, hi: 250 })
        );
        assert_eq!(
            set.clone().with_range(199, 199),
            Err(ConfigError::OverlappingRanges { lo: 199, hi: 199 })
        );
        let set = set
            .with_range(300, 309)
            .unwrap()
            .without(150)
            .without(305)
            .without(7);
        assert_eq!(set.len(), 108);
        assert!(set.contains(100) && set.contains(309) && !set.contains(150) && !set.contains(7));
        assert_eq!(set.iter().count(), 108);
        assert!(set.iter().zip(set.iter().skip(1)).all(|(a, b)| a < b));
    }

    #[test]
    fn pool_config_errors() {
        let ports = PortSet::range(5000, 5001).unwrap();
        assert_eq!(
            Pool::new(PoolConfig::new(vec![], ports.clone())).err(),
            Some(ConfigError::NoAddresses)
        );
        assert_eq!(
            Pool::new(PoolConfig::new(vec![v4(1), v6(1), v4(1)], ports.clone())).err(),
            Some(ConfigError::DuplicateAddress(v4(1)))
        );
        let empty = PortSet::range(5000, 5000).unwrap().without(5000);
        assert_eq!(
            Pool::new(PoolConfig::new(vec![v4(1)], empty)).err(),
            Some(ConfigError::EmptyPortSet)
        );
        assert!(Pool::new(PoolConfig::new(vec![v4(1), v6(1)], ports)).is_ok());
    }

    #[test]
    fn defaults_and_strategy_names() {
        let c = PoolConfig::new(vec![v4(1)], PortSet::range(1, 2).unwrap());
        assert_eq!(c.quarantine, secs(60));
        assert_eq!(c.scope, QuarantineScope::Port);
        assert_eq!(c.exclusivity, Exclusivity::PerPort);
        assert_eq!(c.strategy, StrategyKind::LeastRecentlyReleased);
        for (s, k) in [
            ("lrr", StrategyKind::LeastRecentlyReleased),
            (
                "least-recently-released",
                StrategyKind::LeastRecentlyReleased,
            ),
            ("round-robin", StrategyKind::RoundRobin),
            ("lowest-free", StrategyKind::LowestFree),
            ("keyed", StrategyKind::KeyedPermutation),
        ] {
            assert_eq!(s.parse::<StrategyKind>(), Ok(k));
        }
        for k in StrategyKind::ALL {
            assert_eq!(k.to_string().parse::<StrategyKind>(), Ok(k));
        }
        assert!("random".parse::<StrategyKind>().is_err());
    }
}

mod leases {
    use super::*;

    #[test]
    fn stale_and_double_release_are_errors() {
        let mut p = default_pool(1);
        let a = p.acquire(at(0), peer(1)).unwrap();
        let id = a.id();
        p.release(a, at(1), Closer::Client).unwrap();
        assert_eq!(
            p.release_id(id, at(1), Closer::Client),
            Err(ReleaseError::Stale)
        );
        // The same slot, leased again: the old identity must not free the new lease.
        let b = p.acquire(at(2), peer(2)).unwrap();
        assert_eq!(b.addr(), SocketAddr::new(v4(1), 5000));
        assert_eq!(
            p.release_id(id, at(2), Closer::Server),
            Err(ReleaseError::Stale)
        );
        assert_eq!(p.stats(at(2)).leased, 1);
        assert!(
            p.acquire(at(2), peer(3)).is_err(),
            "the slot is still leased to peer 2"
        );
        p.check_invariants().unwrap();
        // A lease from another pool is refused, even for a slot that exists here.
        let mut other = default_pool(1);
        let foreign = other.acquire(at(0), peer(1)).unwrap();
        assert_eq!(
            p.release(foreign, at(3), Closer::Client),
            Err(ReleaseError::Foreign)
        );
        p.release(b, at(3), Closer::Client).unwrap();
        assert_eq!(p.stats(at(3)).free, 1);
    }

    #[test]
    fn only_server_close_quarantines() {
        for closer in [Closer::Client, Closer::Reset, Closer::NeverConnected] {
            let mut p = default_pool(1);
            let a = p.acquire(at(0), peer(1)).unwrap();
            p.release(a, at(1), closer).unwrap();
            assert_eq!(p.poll_timeout(), None);
            assert!(p.acquire(at(1), peer(1)).is_ok(), "{closer:?}");
        }
        let mut p = default_pool(1);
        let a = p.acquire(at(0), peer(1)).unwrap();
        p.release(a, at(1), Closer::Server).unwrap();
        assert_eq!(
            p.acquire(at(1), peer(2)).unwrap_err().retry_after,
            Some(secs(60))
        );
        assert_eq!(
            p.acquire(at(30), peer(2)).unwrap_err().retry_after,
            Some(secs(31))
        );
        assert!(p.acquire(at(61), peer(2)).is_ok());
    }

    #[test]
    fn all_leased_has_no_retry_time() {
        let mut p = default_pool(2);
        let _a = p.acquire(at(0), peer(1)).unwrap();
        let _b = p.acquire(at(0), peer(1)).unwrap();
        assert_eq!(p.acquire(at(0), peer(1)).unwrap_err().retry_after, None);
        let s = p.stats(at(0));
        assert_eq!(
            (s.free, s.leased, s.cooling, s.refusals, s.acquisitions),
            (0, 2, 0, 1, 2)
        );
    }

    #[test]
    fn scope_none_never_quarantines() {
        let mut p = pool(
            1,
            QuarantineScope::None,
            Exclusivity::PerPort,
            StrategyKind::LeastRecentlyReleased,
        );
        for s in 0..5 {
            let a = p.acquire(at(s), peer(1)).unwrap();
            p.release(a, at(s), Closer::Server).unwrap();
        }
        assert_eq!(p.poll_timeout(), None);
        assert_eq!(p.stats(at(5)).releases_server, 5);
    }

    #[test]
    fn peer_scope_blocks_only_that_peer() {
        let mut p = pool(
            2,
            QuarantineScope::Peer,
            Exclusivity::PerPort,
            StrategyKind::LeastRecentlyReleased,
        );
        let a = p.acquire(at(0), peer(1)).unwrap();
        let port_a = a.addr();
        p.release(a, at(0), Closer::Server).unwrap();
        // Peer 1 gets the other port, never the one it closed.
        let b = p.acquire(at(1), peer(1)).unwrap();
        assert_ne!(b.addr(), port_a);
        assert_eq!(
            p.acquire(at(1), peer(1)).unwrap_err().retry_after,
            Some(secs(59))
        );
        // Peer 2 may use it at once.
        let c = p.acquire(at(1), peer(2)).unwrap();
        assert_eq!(c.addr(), port_a);
        p.release(c, at(2), Closer::Client).unwrap();
        assert_eq!(p.stats(at(2)).peer_quarantined, 1);
        assert!(p.acquire(at(59), peer(1)).is_err());
        let d = p.acquire(at(60), peer(1)).unwrap();
        assert_eq!(d.addr(), port_a);
        // The ledger is purged when the quarantine ends.
        p.handle_timeout(at(60));
        assert_eq!(p.stats(at(60)).peer_quarantined, 0);
        assert_eq!(p.poll_timeout(), None);
        p.check_invariants().unwrap();
    }

    #[test]
    fn per_port_and_peer_serves_many_peers_on_few_ports() {
        let mut p = pool(
            2,
            QuarantineScope::Port,
            Exclusivity::PerPortAndPeer,
            StrategyKind::LeastRecentlyReleased,
        );
        let mut leases = Vec::new();
        for d in 1..=50 {
            let a = p.acquire(at(0), peer(d)).unwrap();
            let b = p.acquire(at(0), peer(d)).unwrap();
            assert_ne!(a.addr(), b.addr(), "one lease per (port, peer)");
            assert_eq!(p.acquire(at(0), peer(d)).unwrap_err().retry_after, None);
            leases.push(a);
            leases.push(b);
        }
        assert_eq!(p.stats(at(0)).leased, 100);
        assert_eq!(p.stats(at(0)).peak_leased, 100);
        // A server close quarantines the port for everyone, while live leases on it go on.
        let first = leases.remove(0);
        let closed = first.addr();
        p.release(first, at(1), Closer::Server).unwrap();
        let x = p.acquire(at(1), peer(1)).unwrap_err();
        assert_eq!(x.retry_after, Some(secs(60)));
        let y = p.acquire(at(2), peer(200)).unwrap();
        assert_ne!(y.addr(), closed);
        // Peer 200 holds the other port; its only option is the cooling one.
        assert_eq!(
            p.acquire(at(2), peer(200)).unwrap_err().retry_after,
            Some(secs(59))
        );
        assert_eq!(p.acquire(at(61), peer(200)).unwrap().addr(), closed);
        p.check_invariants().unwrap();
        for l in leases {
            p.release(l, at(62), Closer::Client).unwrap();
        }
        p.release(y, at(62), Closer::Client).unwrap();
        p.check_invariants().unwrap();
    }

    #[test]
    fn several_addresses_and_filters() {
        let config = PoolConfig::new(
            vec![v4(1), v6(1), v4(2)],
            PortSet::range(6000, 6001).unwrap(),
        );
        let mut p = Pool::new(config).unwrap();
        let mut seen = Vec::new();
        for _ in 0..6 {
            seen.push(p.acquire(at(0), peer(1)).unwrap());
        }
        let mut addrs: Vec<SocketAddr> = seen.iter().map(Lease::addr).collect();
        addrs.sort();
        addrs.dedup();
        assert_eq!(addrs.len(), 6);
        // The first three spread over the three addresses.
        let first: Vec<IpAddr> = seen[..3].iter().map(|l| l.addr().ip()).collect();
        assert!(first.contains(&v4(1)) && first.contains(&v6(1)) && first.contains(&v4(2)));
        assert!(p.acquire(at(0), peer(1)).is_err());
        let stats = p.stats(at(0));
        assert_eq!(stats.per_address.len(), 3);
        assert!(stats
            .per_address
            .iter()
            .all(|a| a.leased == 2 && a.free == 0));
        for l in seen {
            let ip = l.addr().ip();
            let closer = if ip == v6(1) {
                Closer::Server
            } else {
                Closer::Client
            };
            p.release(l, at(1), closer).unwrap();
        }
        // The v6 ports cool; v4 ones are free.
        assert_eq!(
            p.acquire_with(at(1), peer(1), AddrFilter::V6)
                .unwrap_err()
                .retry_after,
            Some(secs(60))
        );
        let a = p.acquire_with(at(1), peer(1), AddrFilter::V4).unwrap();
        assert!(a.addr().is_ipv4());
        let b = p
            .acquire_with(at(1), peer(1), AddrFilter::Only(v4(2)))
            .unwrap();
        assert_eq!(b.addr().ip(), v4(2));
        assert_eq!(
            p.acquire_with(at(1), peer(1), AddrFilter::Only(v4(9)))
                .unwrap_err()
                .retry_after,
            None
        );
        let c = p
            .acquire_with(at(61), peer(1), AddrFilter::Only(v6(1)))
            .unwrap();
        assert_eq!(c.addr().ip(), v6(1));
        let s = p.stats(at(61));
        assert_eq!(s.per_address[1].cooling, 0);
        assert_eq!(s.per_address[1].leased, 1);
        p.check_invariants().unwrap();
    }

    #[test]
    fn timers_and_stats() {
        let mut p = default_pool(3);
        assert_eq!(p.poll_timeout(), None);
        let a = p.acquire(at(0), peer(1)).unwrap();
        let b = p.acquire(at(0), peer(1)).unwrap();
        let c = p.acquire(at(0), peer(1)).unwrap();
        p.release(a, at(1), Closer::Server).unwrap();
        p.release(b, at(2), Closer::Reset).unwrap();
        p.release(c, at(3), Closer::Server).unwrap();
        assert_eq!(p.poll_timeout(), Some(at(61)));
        let s = p.stats(at(3));
        assert_eq!((s.free, s.leased, s.cooling), (1, 0, 2));
        assert_eq!(
            (s.releases_server, s.releases_reset, s.releases_client),
            (2, 1, 0)
        );
        assert_eq!(s.peak_leased, 3);
        // stats() sees a quarantine due at `now` as ended even before handle_timeout.
        let s = p.stats(at(61));
        assert_eq!((s.free, s.cooling), (2, 1));
        p.handle_timeout(at(61));
        assert_eq!(p.poll_timeout(), Some(at(63)));
        p.handle_timeout(at(100));
        assert_eq!(p.poll_timeout(), None);
        assert_eq!(p.stats(at(100)).free, 3);
        p.check_invariants().unwrap();
    }

    #[test]
    fn time_never_runs_backwards() {
        let mut p = default_pool(1);
        let a = p.acquire(at(10), peer(1)).unwrap();
        p.release(a, at(10), Closer::Server).unwrap();
        // An earlier `now` is taken as the latest seen: still 60 s to wait, not 65.
        assert_eq!(
            p.acquire(at(5), peer(1)).unwrap_err().retry_after,
            Some(secs(60))
        );
    }
}

mod strategies {
    use super::*;

    fn ports_in_order(strategy: StrategyKind, picks: usize) -> Vec<u16> {
        let mut p = pool(4, QuarantineScope::Port, Exclusivity::PerPort, strategy);
        let mut out = Vec::new();
        for i in 0..picks {
            let l = p.acquire(at(i as u64), peer(1)).unwrap();
            out.push(l.addr().port());
            p.release(l, at(i as u64), Closer::Client).unwrap();
        }
        out
    }

    #[test]
    fn least_recently_released_cycles_and_follows_release_order() {
        assert_eq!(
            ports_in_order(StrategyKind::LeastRecentlyReleased, 6),
            [5000, 5001, 5002, 5003, 5000, 5001]
        );
        let mut p = default_pool(3);
        let a = p.acquire(at(0), peer(1)).unwrap();
        let b = p.acquire(at(0), peer(1)).unwrap();
        let c = p.acquire(at(0), peer(1)).unwrap();
        let (pa, pb, pc) = (a.addr(), b.addr(), c.addr());
        p.release(c, at(1), Closer::Client).unwrap();
        p.release(a, at(2), Closer::Client).unwrap();
        p.release(b, at(3), Closer::Client).unwrap();
        let got: Vec<SocketAddr> = (0..3)
            .map(|_| p.acquire(at(4), peer(1)).unwrap().addr())
            .collect();
        assert_eq!(got, [pc, pa, pb]);
    }

    #[test]
    fn lowest_free_and_round_robin() {
        assert_eq!(
            ports_in_order(StrategyKind::LowestFree, 3),
            [5000, 5000, 5000]
        );
        assert_eq!(
            ports_in_order(StrategyKind::RoundRobin, 6),
            [5000, 5001, 5002, 5003, 5000, 5001]
        );
        let mut p = pool(
            4,
            QuarantineScope::Port,
            Exclusivity::PerPort,
            StrategyKind::LowestFree,
        );
        let a = p.acquire(at(0), peer(1)).unwrap();
        let _b = p.acquire(at(0), peer(1)).unwrap();
        p.release(a, at(0), Closer::Server).unwrap();
        assert_eq!(
            p.acquire(at(1), peer(1)).unwrap().addr().port(),
            5002,
            "5000 cools"
        );
    }

    #[test]
    fn keyed_is_per_peer_and_seeded() {
        let first_ports = |seed: u64| -> Vec<u16> {
            let config = PoolConfig::new(vec![v4(1)], PortSet::range(10_000, 10_999).unwrap())
                .with_strategy(StrategyKind::KeyedPermutation)
                .with_seed(seed);
            let mut p = Pool::new(config).unwrap();
            (1..=50)
                .map(|d| {
                    let l = p.acquire(at(0), peer(d)).unwrap();
                    let port = l.addr().port();
                    p.release(l, at(0), Closer::Client).unwrap();
                    port
                })
                .collect()
        };
        let a = first_ports(1);
        assert_eq!(a, first_ports(1));
        assert_ne!(a, first_ports(2));
        let mut distinct = a.clone();
        distinct.sort_unstable();
        distinct.dedup();
        // 50 peers on 1000 ports: a sequential allocator would give one port; a keyed one
        // gives each peer its own starting point (a few birthday collisions allowed).
        assert!(distinct.len() >= 45, "{distinct:?}");
        // One peer's successive ports follow its own sequence, skipping what is not free.
        let config = PoolConfig::new(vec![v4(1)], PortSet::range(10_000, 10_003).unwrap())
            .with_strategy(StrategyKind::KeyedPermutation);
        let mut p = Pool::new(config).unwrap();
        let mut got: Vec<u16> = (0..4)
            .map(|_| p.acquire(at(0), peer(1)).unwrap().addr().port())
            .collect();
        got.sort_unstable();
        assert_eq!(got, [10_000, 10_001, 10_002, 10_003]);
    }

    #[test]
    fn every_strategy_honours_the_ledger() {
        for s in StrategyKind::ALL {
            let mut p = pool(3, QuarantineScope::Port, Exclusivity::PerPort, s);
            let a = p.acquire(at(0), peer(1)).unwrap();
            let cooling = a.addr();
            p.release(a, at(0), Closer::Server).unwrap();
            for _ in 0..2 {
                let l = p.acquire(at(1), peer(1)).unwrap();
                assert_ne!(l.addr(), cooling, "{s}");
            }
            assert_eq!(
                p.acquire(at(1), peer(1)).unwrap_err().retry_after,
                Some(secs(59)),
                "{s}"
            );
        }
    }
}

mod props {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[derive(Clone, Debug)]
    enum Op {
        Acquire { peer: u8, filter: u8 },
        Release { index: usize, closer: u8 },
        Advance(u64),
        Timeout,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..3, 0u8..4).prop_map(|(peer, filter)| Op::Acquire { peer, filter }),
            3 => (any::<usize>(), 0u8..4).prop_map(|(index, closer)| Op::Release { index, closer }),
            2 => (0u64..400).prop_map(Op::Advance),
            1 => Just(Op::Timeout),
        ]
    }

    const T: u64 = 1_000;

    fn closer(c: u8) -> Closer {
        [
            Closer::Server,
            Closer::Client,
            Closer::Reset,
            Closer::NeverConnected,
        ][usize::from(c % 4)]
    }

    fn filter(addrs: &[IpAddr], f: u8) -> AddrFilter {
        match f {
            0 => AddrFilter::Any,
            1 => AddrFilter::V4,
            2 => AddrFilter::V6,
            _ => AddrFilter::Only(addrs[0]),
        }
    }

    /// The reference model: live leases and every server-side close ever made.
    struct Model {
        scope: QuarantineScope,
        exclusivity: Exclusivity,
        addrs: Vec<IpAddr>,
        ports: Vec<u16>,
        live: Vec<Lease>,
        closes: Vec<(SocketAddr, IpAddr, u64)>,
    }

    impl Model {
        /// When (addr) becomes available to `who` by time alone: `Some(t)` (maybe <= now),
        /// `None` if a live lease blocks it.
        fn available_from(&self, addr: SocketAddr, who: IpAddr) -> Option<u64> {
            let blocked_by_lease = self.live.iter().any(|l| {
                l.addr() == addr && (self.exclusivity == Exclusivity::PerPort || l.peer() == who)
            });
            if blocked_by_lease {
                return None;
            }
            let until = self
                .closes
                .iter()
                .filter(|(a, p, _)| {
                    *a == addr
                        && match self.scope {
                            QuarantineScope::Port => true,
                            QuarantineScope::Peer => *p == who,
                            QuarantineScope::None => false,
                        }
                })
                .map(|c| c.2 + T)
                .max()
                .unwrap_or(0);
            Some(until)
        }

        fn earliest(&self, who: IpAddr, f: AddrFilter) -> Option<u64> {
            let mut best: Option<u64> = None;
            for &a in &self.addrs {
                if !f.matches(a) {
                    continue;
                }
                for &p in &self.ports {
                    if let Some(t) = self.available_from(SocketAddr::new(a, p), who) {
                        best = Some(best.map_or(t, |b: u64| b.min(t)));
                    }
                }
            }
            best
        }
    }

    fn config_strategy() -> impl Strategy<Value = (u16, bool, u8, u8, u8)> {
        (1u16..=5, any::<bool>(), 0u8..3, 0u8..2, 0u8..4)
    }

    fn build(ports: u16, two: bool, scope: u8, excl: u8, strat: u8) -> (Pool, Model) {
        let addrs = if two { vec![v4(1), v6(1)] } else { vec![v4(1)] };
        let scope = [
            QuarantineScope::Port,
            QuarantineScope::Peer,
            QuarantineScope::None,
        ][usize::from(scope)];
        let exclusivity = [Exclusivity::PerPort, Exclusivity::PerPortAndPeer][usize::from(excl)];
        let config = PoolConfig::new(
            addrs.clone(),
            PortSet::range(7000, 7000 + ports - 1).unwrap(),
        )
        .with_quarantine(Duration::from_nanos(T))
        .with_scope(scope)
        .with_exclusivity(exclusivity)
        .with_strategy(StrategyKind::ALL[usize::from(strat)])
        .with_seed(u64::from(strat) * 7 + 3);
        let pool = Pool::new(config).unwrap();
        let model = Model {
            scope,
            exclusivity,
            addrs,
            ports: (7000..7000 + ports).collect(),
            live: Vec::new(),
            closes: Vec::new(),
        };
        (pool, model)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// No double lease, no quarantined port offered, refusals only when the model has
        /// nothing to offer, and `retry_after` exact; after all releases and T, all free.
        #[test]
        fn pool_matches_the_model(
            (ports, two, scope, excl, strat) in config_strategy(),
            ops in proptest::collection::vec(op(), 1..120),
        ) {
            let (mut pool, mut m) = build(ports, two, scope, excl, strat);
            let peers = [peer(1), peer(2), IpAddr::V6(Ipv6Addr::LOCALHOST)];
            let mut now = 0u64;
            for op in ops {
                match op {
                    Op::Acquire { peer: who, filter: f } => {
                        let who = peers[usize::from(who)];
                        let f = filter(&m.addrs, f);
                        let expected = m.earliest(who, f);
                        match pool.acquire_with(Instant::from_nanos(now), who, f) {
                            Ok(lease) => {
                                prop_assert!(f.matches(lease.addr().ip()));
                                let avail = m.available_from(lease.addr(), who);
                                prop_assert!(avail.is_some(), "leased twice: {:?}", lease.addr());
                                prop_assert!(avail.unwrap() <= now, "quarantined until {:?}, now {now}", avail);
                                m.live.push(lease);
                            }
                            Err(e) => {
                                match expected {
                                    None => prop_assert_eq!(e.retry_after, None),
                                    Some(t) => {
                                        prop_assert!(t > now, "refused although {t} <= {now}");
                                        prop_assert_eq!(e.retry_after, Some(Duration::from_nanos(t - now)));
                                        // Exactness, directly: one nanosecond early fails...
                                        now = t - 1;
                                        let early = pool.acquire_with(Instant::from_nanos(now), who, f);
                                        prop_assert!(early.is_err());
                                        // ...and on time succeeds.
                                        now = t;
                                        let lease = pool.acquire_with(Instant::from_nanos(now), who, f);
                                        prop_assert!(lease.is_ok());
                                        m.live.push(lease.unwrap());
                                    }
                                }
                            }
                        }
                    }
                    Op::Release { index, closer: c } => {
                        if m.live.is_empty() {
                            continue;
                        }
                        let lease = m.live.swap_remove(index % m.live.len());
                        let (addr, who, id) = (lease.addr(), lease.peer(), lease.id());
                        pool.release(lease, Instant::from_nanos(now), closer(c)).unwrap();
                        prop_assert_eq!(pool.release_id(id, Instant::from_nanos(now), closer(c)), Err(ReleaseError::Stale));
                        if closer(c) == Closer::Server {
                            m.closes.push((addr, who, now));
                        }
                    }
                    Op::Advance(d) => now += d,
                    Op::Timeout => {
                        if let Some(t) = pool.poll_timeout() {
                            now = now.max(t.as_nanos());
                            pool.handle_timeout(Instant::from_nanos(now));
                            prop_assert!(pool.poll_timeout().map_or(true, |n| n.as_nanos() > now));
                        }
                    }
                }
                prop_assert_eq!(pool.check_invariants(), Ok(()));
                prop_assert_eq!(pool.stats(Instant::from_nanos(now)).leased, m.live.len());
            }
            // Release everything, wait T: everything is free and every port can be leased.
            for lease in std::mem::take(&mut m.live) {
                pool.release(lease, Instant::from_nanos(now), Closer::Server).unwrap();
            }
            now += T;
            let s = pool.stats(Instant::from_nanos(now));
            let total = m.addrs.len() * m.ports.len();
            prop_assert_eq!((s.free, s.leased, s.cooling, s.peer_quarantined), (total, 0, 0, 0));
            pool.handle_timeout(Instant::from_nanos(now));
            prop_assert_eq!(pool.poll_timeout(), None);
            let mut seen = HashMap::new();
            for _ in 0..total {
                let l = pool.acquire(Instant::from_nanos(now), peers[0]);
                prop_assert!(l.is_ok());
                let l = l.unwrap();
                prop_assert!(seen.insert(l.addr(), ()).is_none());
            }
            prop_assert!(pool.acquire(Instant::from_nanos(now), peers[0]).is_err());
        }
    }
}
