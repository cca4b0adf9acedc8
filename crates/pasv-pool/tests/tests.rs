//! Integration tests of pasv-pool: configuration, leases, strategies, properties, simulator.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use pasv_pool::{
    AddrFilter, Closer, ConfigError, Exclusivity, Instant, Lease, Pool, PoolConfig, PortSet,
    QuarantineScope, ReleaseError, Shortage, StrategyKind,
};
use std::num::NonZeroUsize;

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

    /// A port the host refuses to bind stays out until the host's end, under every scope
    /// (even with no quarantine of its own), and the refusal's hint is that end.
    #[test]
    fn release_until_keeps_the_port_out_until_the_hosts_end() {
        for scope in [
            QuarantineScope::None,
            QuarantineScope::Peer,
            QuarantineScope::Port,
        ] {
            for exclusivity in [Exclusivity::PerPort, Exclusivity::PerPortAndPeer] {
                let mut p = pool(2, scope, exclusivity, StrategyKind::LeastRecentlyReleased);
                let a = p.acquire(at(0), peer(1)).unwrap();
                let b = p.acquire(at(0), peer(1)).unwrap();
                p.release_until(a, at(1), at(1) + secs(57)).unwrap();
                // An end shorter than T on a port-scope pool: the host's end wins.
                p.release_until(b, at(1), at(1) + secs(42)).unwrap();
                let what = format!("{scope:?} {exclusivity:?}");
                assert_eq!(
                    p.acquire(at(2), peer(2)).unwrap_err().retry_after,
                    Some(secs(41)),
                    "{what}"
                );
                assert_eq!(p.stats(at(2)).cooling, 2, "{what}");
                assert_eq!(p.poll_timeout(), Some(at(43)), "{what}");
                let c = p.acquire(at(43), peer(2)).unwrap();
                if exclusivity == Exclusivity::PerPort {
                    assert_eq!(
                        p.acquire(at(43), peer(3)).unwrap_err().retry_after,
                        Some(secs(15)),
                        "{what}"
                    );
                    assert_ne!(
                        p.acquire(at(58), peer(3)).unwrap().addr(),
                        c.addr(),
                        "{what}"
                    );
                } else {
                    // The other port is still out; only c's port, shared, is offered.
                    assert_eq!(
                        p.acquire(at(43), peer(3)).unwrap().addr(),
                        c.addr(),
                        "{what}"
                    );
                }
            }
        }
        // An end already past is a plain release.
        let mut p = pool(
            1,
            QuarantineScope::None,
            Exclusivity::PerPort,
            StrategyKind::LeastRecentlyReleased,
        );
        let a = p.acquire(at(5), peer(1)).unwrap();
        p.release_until(a, at(5), at(4)).unwrap();
        assert!(p.acquire(at(5), peer(1)).is_ok());
    }

    /// The ledger shows each port's leases and quarantines, port-wide and per peer.
    #[test]
    fn ledger_shows_what_the_pool_believes_per_port() {
        let mut p = pool(
            3,
            QuarantineScope::Peer,
            Exclusivity::PerPortAndPeer,
            StrategyKind::LeastRecentlyReleased,
        );
        let a = p.acquire(at(0), peer(1)).unwrap();
        let b = p.acquire(at(0), peer(2)).unwrap();
        let (a_addr, b_addr) = (a.addr(), b.addr());
        p.release(a, at(1), Closer::Server).unwrap();
        let c = p.acquire(at(1), peer(3)).unwrap();
        let c_addr = c.addr();
        p.release_until(c, at(2), at(30)).unwrap();
        let ledger = p.ledger(at(2));
        assert_eq!(ledger.len(), 3);
        let get = |addr| ledger.iter().find(|l| l.addr == addr).unwrap();
        assert_eq!(get(a_addr).blocked, vec![(peer(1), at(61))]);
        assert_eq!(get(b_addr).leases, 1);
        assert_eq!(get(c_addr).cooling_until, Some(at(30)));
        assert!(!get(c_addr).offerable(Exclusivity::PerPortAndPeer));
        let later = p.ledger(at(61));
        assert!(later
            .iter()
            .all(|l| l.blocked.is_empty() && l.cooling_until.is_none()));
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

    /// A peer at its limit is refused while ports are free, with no retry time (only the
    /// release of one of its own leases helps); other peers are served; in either
    /// exclusivity, and the count follows releases of every kind.
    #[test]
    fn a_peer_at_its_limit_is_refused_while_ports_are_free() {
        for exclusivity in [Exclusivity::PerPort, Exclusivity::PerPortAndPeer] {
            let config = PoolConfig::new(vec![v4(1)], PortSet::range(5000, 5009).unwrap())
                .with_quarantine(secs(60))
                .with_exclusivity(exclusivity)
                .with_peer_limit(NonZeroUsize::new(3));
            let mut p = Pool::new(config).unwrap();
            let held: Vec<Lease> = (0..3).map(|_| p.acquire(at(0), peer(1)).unwrap()).collect();
            let refused = p.acquire(at(0), peer(1)).unwrap_err();
            assert_eq!(refused.cause, Shortage::PeerLimit, "{exclusivity:?}");
            assert_eq!(refused.retry_after, None, "{exclusivity:?}");
            assert_eq!(p.stats(at(0)).refusals_peer_limit, 1);
            assert_eq!(p.stats(at(0)).free, 7, "{exclusivity:?}");
            // Another address is not affected.
            let other = p.acquire(at(0), peer(2)).unwrap();
            // Time alone does not lift the limit; a release of the peer's own lease does,
            // whoever closed (a server close quarantines the port, not the peer).
            assert!(p.acquire(at(1_000), peer(1)).is_err());
            let mut held = held.into_iter();
            p.release(held.next().unwrap(), at(1_000), Closer::Server)
                .unwrap();
            let again = p.acquire(at(1_000), peer(1)).unwrap();
            assert_eq!(
                p.acquire(at(1_000), peer(1)).unwrap_err().cause,
                Shortage::PeerLimit
            );
            for (lease, closer) in held.zip([Closer::Reset, Closer::NeverConnected]) {
                p.release(lease, at(1_001), closer).unwrap();
            }
            p.release(again, at(1_001), Closer::Client).unwrap();
            p.release(other, at(1_001), Closer::Client).unwrap();
            // Every lease back: the peer starts again from zero.
            let fresh: Vec<Lease> = (0..3)
                .map(|_| p.acquire(at(1_002), peer(1)).unwrap())
                .collect();
            assert_eq!(fresh.len(), 3);
            p.check_invariants().unwrap();
        }
    }

    /// Without a limit, one peer takes every port (the limit is off by default).
    #[test]
    fn without_a_limit_one_peer_takes_the_range() {
        let mut p = default_pool(4);
        let _all: Vec<Lease> = (0..4).map(|_| p.acquire(at(0), peer(1)).unwrap()).collect();
        assert_eq!(
            p.acquire(at(0), peer(2)).unwrap_err().cause,
            Shortage::Ports
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

    /// Under one lease per (port, peer), a second server close on a port still cooling
    /// extends its quarantine.
    #[test]
    fn a_second_close_extends_the_quarantine() {
        let mut p = pool(
            1,
            QuarantineScope::Port,
            Exclusivity::PerPortAndPeer,
            StrategyKind::LeastRecentlyReleased,
        );
        let a = p.acquire(at(0), peer(1)).unwrap();
        let b = p.acquire(at(0), peer(2)).unwrap();
        let c = p.acquire(at(0), peer(3)).unwrap();
        p.release(a, at(0), Closer::Server).unwrap();
        p.release(b, at(30), Closer::Server).unwrap();
        p.release(c, at(45), Closer::Client).unwrap();
        assert_eq!(
            p.acquire(at(45), peer(4)).unwrap_err().retry_after,
            Some(secs(45))
        );
        // The timer may wake at the first end; nothing frees then, and the next one is exact.
        assert_eq!(p.poll_timeout(), Some(at(60)));
        p.handle_timeout(at(60));
        assert_eq!(p.poll_timeout(), Some(at(90)));
        let s = p.stats(at(60));
        assert_eq!((s.free, s.cooling, s.leased), (0, 1, 0));
        assert_eq!(
            p.acquire(at(60), peer(4)).unwrap_err().retry_after,
            Some(secs(30))
        );
        assert!(p
            .acquire(at(90) - Duration::from_nanos(1), peer(4))
            .is_err());
        assert_eq!(p.stats(at(90)).free, 1);
        assert!(p.acquire(at(90), peer(4)).is_ok());
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

    /// A custom strategy that keeps offering the same slot, leased or not.
    #[derive(Debug, Default)]
    struct Stubborn(Option<pasv_pool::strategy::SlotId>);

    impl pasv_pool::strategy::Strategy for Stubborn {
        fn name(&self) -> &'static str {
            "stubborn"
        }
        fn insert(&mut self, slot: pasv_pool::strategy::SlotId) {
            self.0.get_or_insert(slot);
        }
        fn remove(&mut self, _slot: pasv_pool::strategy::SlotId) {}
        fn pick(
            &mut self,
            _ledger: &pasv_pool::strategy::Ledger<'_>,
        ) -> Option<pasv_pool::strategy::SlotId> {
            self.0
        }
    }

    #[test]
    fn a_broken_custom_strategy_cannot_double_lease() {
        let config = PoolConfig::new(vec![v4(1)], PortSet::range(5000, 5001).unwrap());
        let mut p = Pool::with_strategy(config, Box::new(Stubborn::default())).unwrap();
        let a = p.acquire(at(0), peer(1)).unwrap();
        assert_eq!(a.addr().port(), 5000);
        assert_eq!(p.acquire(at(0), peer(2)).unwrap_err().retry_after, None);
        p.release(a, at(1), Closer::Server).unwrap();
        assert_eq!(
            p.acquire(at(1), peer(2)).unwrap_err().retry_after,
            Some(secs(60))
        );
        assert!(p.acquire(at(61), peer(2)).is_ok());
        p.check_invariants().unwrap();
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
        // 512 cases by default; PROPTEST_CASES raises it for a deeper local run.
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512),
            ..ProptestConfig::default()
        })]

        /// No double lease, no quarantined port offered, refusals only when the model has
        /// nothing to offer, and `retry_after` exact; after all releases and T, all free.
        #[test]
        fn pool_matches_the_model(
            (ports, two, scope, excl, strat) in config_strategy(),
            ops in proptest::collection::vec(op(), 1..120),
        ) {
            check(ports, two, scope, excl, strat, ops)?;
        }

        /// The same on one or two ports shared by three peers under one lease per (port,
        /// peer) and the port scope, where quarantines get extended.
        #[test]
        fn shared_ports_match_the_model(
            ports in 1u16..=2,
            strat in 0u8..4,
            ops in proptest::collection::vec(op(), 1..160),
        ) {
            check(ports, false, 0, 1, strat, ops)?;
        }
    }

    fn check(
        ports: u16,
        two: bool,
        scope: u8,
        excl: u8,
        strat: u8,
        ops: Vec<Op>,
    ) -> Result<(), TestCaseError> {
        let (mut pool, mut m) = build(ports, two, scope, excl, strat);
        let peers = [peer(1), peer(2), IpAddr::V6(Ipv6Addr::LOCALHOST)];
        let mut now = 0u64;
        for op in ops {
            match op {
                Op::Acquire {
                    peer: who,
                    filter: f,
                } => {
                    let who = peers[usize::from(who)];
                    let f = filter(&m.addrs, f);
                    let expected = m.earliest(who, f);
                    match pool.acquire_with(Instant::from_nanos(now), who, f) {
                        Ok(lease) => {
                            prop_assert!(f.matches(lease.addr().ip()));
                            let avail = m.available_from(lease.addr(), who);
                            prop_assert!(avail.is_some(), "leased twice: {:?}", lease.addr());
                            prop_assert!(
                                avail.unwrap() <= now,
                                "quarantined until {:?}, now {now}",
                                avail
                            );
                            m.live.push(lease);
                        }
                        Err(e) => {
                            match expected {
                                None => prop_assert_eq!(e.retry_after, None),
                                Some(t) => {
                                    prop_assert!(t > now, "refused although {t} <= {now}");
                                    prop_assert_eq!(
                                        e.retry_after,
                                        Some(Duration::from_nanos(t - now))
                                    );
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
                    pool.release(lease, Instant::from_nanos(now), closer(c))
                        .unwrap();
                    prop_assert_eq!(
                        pool.release_id(id, Instant::from_nanos(now), closer(c)),
                        Err(ReleaseError::Stale)
                    );
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
            pool.release(lease, Instant::from_nanos(now), Closer::Server)
                .unwrap();
        }
        now += T;
        let s = pool.stats(Instant::from_nanos(now));
        let total = m.addrs.len() * m.ports.len();
        prop_assert_eq!(
            (s.free, s.leased, s.cooling, s.peer_quarantined),
            (total, 0, 0, 0)
        );
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
        Ok(())
    }
}

mod sim {
    use super::*;
    use pasv_pool::capacity;
    use pasv_pool::sim::{run, Arrivals, BindSpec, HoldDist, SimConfig, SimStrategy};
    use pasv_pool::strategy::BlindKind;

    fn rate(c: &SimConfig) -> f64 {
        match c.arrivals {
            Arrivals::Poisson { rate } => rate,
            Arrivals::ClosedLoop { .. } => 0.0,
        }
    }

    /// Poisson arrivals, no waiting, one lease per port, port scope: refusals follow Erlang B
    /// with N servers and load λ·(h + f·T), whatever the hold distribution. T = 1 s keeps
    /// the runs short; time scales, so the result holds for any T.
    fn erlang_sweep(ports: u16, arrivals: f64) {
        let holds = [
            HoldDist::Exponential(Duration::from_millis(50)),
            HoldDist::Fixed(Duration::from_millis(50)),
            HoldDist::Uniform(Duration::ZERO, Duration::from_millis(100)),
        ];
        for (k, load) in [0.5, 0.95, 1.5].into_iter().enumerate() {
            let mut c = SimConfig::new(ports);
            c.quarantine = secs(1);
            c.server_close_fraction = 0.5;
            c.hold = holds[k];
            c.warmup = secs(5);
            c.seed = u64::from(ports) + k as u64;
            let mut c = c.with_load(load);
            // Enough arrivals, and at least 100 mean busy times (0.55 s) after warm-up.
            c.duration = Duration::from_secs_f64(5.0 + (arrivals / rate(&c)).max(55.0));
            let r = run(&c).unwrap();
            // Computed here by the defining sum, not by the capacity module that both the
            // simulator's report and the planner use.
            let theory = erlang_b_by_sum(u64::from(ports), rate(&c) * (0.05 + 0.5 * 1.0));
            assert!(
                (r.erlang_b - theory).abs() <= 1e-9 * theory.max(1e-12),
                "{} vs {theory}",
                r.erlang_b
            );
            let err = (r.refusal_rate - theory).abs();
            assert!(
                err <= 0.05 * theory || err <= 0.002,
                "{ports} ports at {load}: simulated {} vs Erlang B {theory} ({} offered)",
                r.refusal_rate,
                r.offered
            );
            assert_eq!(r.outside_range + r.sessions_killed + r.bind_failures, 0);
            assert!(r.offered > 100_000);
        }
    }

    #[test]
    fn erlang_b_20_ports() {
        erlang_sweep(20, 400_000.0);
    }

    #[test]
    fn erlang_b_200_ports() {
        erlang_sweep(200, 400_000.0);
    }

    #[test]
    fn erlang_b_1000_ports() {
        erlang_sweep(1000, 400_000.0);
    }

    #[test]
    fn erlang_b_4000_ports() {
        erlang_sweep(4000, 200_000.0);
    }

    /// The classic case at full size: 4000 ports, T = 120 s, every close on the server, h
    /// small. Offered 120% (and 200%) of rate_max, the pool serves rate_max within 3%.
    #[test]
    fn fluid_bound_4000_ports_120_s() {
        for load in [1.2, 2.0] {
            let mut c = SimConfig::new(4000);
            c.quarantine = secs(120);
            c.hold = HoldDist::Fixed(Duration::from_millis(10));
            c.warmup = secs(240);
            c.duration = secs(240 + 10 * 120);
            let c = c.with_load(load);
            let r = run(&c).unwrap();
            let bound = capacity::rate_max(4000, 0.01, 1.0, 120.0);
            assert!((bound - 33.33).abs() < 0.01);
            assert!(
                (r.served_rate - bound).abs() < 0.03 * bound,
                "{} vs {bound}",
                r.served_rate
            );
            assert!(r.peak_cooling <= 4000);
        }
    }

    /// Below the bound (80% of rate_max on 4000 ports) nothing is refused.
    #[test]
    fn no_refusal_below_the_bound() {
        let mut c = SimConfig::new(4000);
        c.quarantine = secs(120);
        c.warmup = secs(240);
        c.duration = secs(240 + 5 * 120);
        let r = run(&c.with_load(0.8)).unwrap();
        assert_eq!(r.refused, 0);
        assert!(r.served > 10_000);
    }

    /// 20 ports at 95% load, T = 60 s: about 13% of Poisson arrivals are refused; a bounded
    /// wait for the next expiry serves some of them a little later (numbers in CAPACITY.md).
    #[test]
    fn bounded_wait_20_ports() {
        let refusal = |wait: Duration| {
            let mut c = SimConfig::new(20);
            c.hold = HoldDist::Exponential(Duration::from_millis(100));
            c.max_wait = wait;
            c.warmup = secs(600);
            c.duration = secs(600 + 300_000);
            c.seed = 9;
            run(&c.with_load(0.95)).unwrap()
        };
        let none = refusal(Duration::ZERO);
        assert!(
            (none.refusal_rate - none.erlang_b).abs() < 0.01,
            "{}",
            none.refusal_rate
        );
        assert!(
            (0.12..0.145).contains(&none.refusal_rate),
            "{}",
            none.refusal_rate
        );
        assert_eq!(none.wait.max, 0.0);
        let short = refusal(secs(2));
        assert!(
            short.refusal_rate < none.refusal_rate - 0.005,
            "{}",
            short.refusal_rate
        );
        assert!(short.wait.max <= 2.0 && short.wait.p99 > 0.0);
        let long = refusal(secs(60));
        assert!(long.refusal_rate < 0.02, "{}", long.refusal_rate);
        assert!(long.wait.max <= 60.0);
    }

    #[test]
    fn reports_are_deterministic_and_serialise() {
        let mut c = SimConfig::new(20);
        c.quarantine = secs(1);
        c.duration = secs(100);
        c.peers = 5;
        let c = c.with_load(1.1);
        let a = run(&c).unwrap();
        assert_eq!(a, run(&c).unwrap());
        let mut other = c.clone();
        other.seed = 2;
        assert_ne!(a, run(&other).unwrap());
        let v: serde_json::Value = serde_json::from_str(&a.to_json()).unwrap();
        assert_eq!(v["offered"].as_u64(), Some(a.offered));
        assert_eq!(v["strategy"].as_str(), Some("lrr"));
        assert_eq!(v["wait"]["p99"].as_f64(), Some(a.wait.p99));
        assert_eq!(v["refusal_rate"].as_f64(), Some(a.refusal_rate));
        assert_eq!(a.offered, a.served + a.refused + a.still_waiting);
    }

    fn closed_loop(
        strategy: SimStrategy,
        sessions: usize,
        reuse: bool,
    ) -> pasv_pool::sim::SimReport {
        let mut c = SimConfig::new(20);
        c.strategy = strategy;
        c.scope = if reuse {
            QuarantineScope::None
        } else {
            QuarantineScope::Port
        };
        c.bind = BindSpec {
            reuse_addr: reuse,
            ..BindSpec::default()
        };
        c.arrivals = Arrivals::ClosedLoop {
            sessions,
            backoff: Duration::from_millis(100),
        };
        c.hold = HoldDist::Exponential(Duration::from_micros(500));
        c.duration = secs(5);
        run(&c).unwrap()
    }

    /// 20 ports, 32 sessions, Linux with SO_REUSEADDR: each peer fails in its own way
    /// (DESIGN.md section 3); the pool refuses with a retry time and never leaves the range.
    #[test]
    fn blind_strategies_fail_like_the_peers() {
        let vsftpd = closed_loop(SimStrategy::Blind(BlindKind::Vsftpd), 32, true);
        assert!(vsftpd.sessions_killed > 0 && vsftpd.outside_range == 0);
        for kind in [BlindKind::ProFtpd, BlindKind::Pyftpdlib] {
            let r = closed_loop(SimStrategy::Blind(kind), 32, true);
            assert!(r.outside_range > 0 && r.sessions_killed == 0, "{kind:?}");
            assert!(
                r.binds_per_success > 2.0,
                "{kind:?}: {}",
                r.binds_per_success
            );
        }
        for kind in [
            BlindKind::PureFtpd,
            BlindKind::FileZilla,
            BlindKind::Libunftp,
        ] {
            let r = closed_loop(SimStrategy::Blind(kind), 32, true);
            assert!(
                r.refused > 0 && r.outside_range == 0 && r.sessions_killed == 0,
                "{kind:?}"
            );
        }
        let ours = closed_loop(
            SimStrategy::Accounted(StrategyKind::LeastRecentlyReleased),
            32,
            true,
        );
        assert_eq!(
            (ours.outside_range, ours.sessions_killed, ours.bind_failures),
            (0, 0, 0)
        );
        assert!(ours.refused > 0);
        assert!((ours.binds_per_success - 1.0).abs() < 1e-9);
        assert!(ours.peak_leased <= 20);
    }

    /// Spreading closes over the range keeps TIME_WAIT per port, and so the bind cost, low;
    /// lowest-free piles every close onto the first ports.
    #[test]
    fn least_recently_released_binds_cheaper_than_lowest_free() {
        let lrr = closed_loop(
            SimStrategy::Accounted(StrategyKind::LeastRecentlyReleased),
            4,
            true,
        );
        let low = closed_loop(SimStrategy::Accounted(StrategyKind::LowestFree), 4, true);
        let per = |r: &pasv_pool::sim::SimReport| r.bind_cost_s / r.served as f64;
        assert!(
            per(&low) > 1.5 * per(&lrr),
            "{} vs {}",
            per(&low),
            per(&lrr)
        );
        assert!(lrr.peak_time_wait > 1_000);
    }

    /// The scope must match the kernel: `None` on a kernel without SO_REUSEADDR makes binds
    /// fail; `Port` never does.
    #[test]
    fn scope_must_match_the_kernel() {
        let mut c = SimConfig::new(20);
        c.quarantine = secs(60);
        c.bind = BindSpec {
            reuse_addr: false,
            ..BindSpec::default()
        };
        c.duration = secs(600);
        c.strategy = SimStrategy::Accounted(StrategyKind::LowestFree);
        c.scope = QuarantineScope::None;
        let lax = run(&c.clone().with_load(0.5)).unwrap();
        assert!(lax.bind_failures > 0);
        c.scope = QuarantineScope::Port;
        let right = run(&c.clone().with_load(0.5)).unwrap();
        assert_eq!(right.bind_failures, 0);
        // Least recently released reuses a port only after all others: at this load every
        // TIME_WAIT is over before its port comes round again, even with the lax scope.
        c.strategy = SimStrategy::Accounted(StrategyKind::LeastRecentlyReleased);
        c.scope = QuarantineScope::None;
        assert_eq!(run(&c.with_load(0.5)).unwrap().bind_failures, 0);
    }

    /// One lease per (port, peer): 20 ports serve 200 concurrent sessions from 100 peers.
    #[test]
    fn per_port_and_peer_serves_many_clients() {
        let mut c = SimConfig::new(20);
        c.exclusivity = Exclusivity::PerPortAndPeer;
        c.scope = QuarantineScope::Peer;
        c.quarantine = secs(1);
        c.peers = 100;
        c.arrivals = Arrivals::ClosedLoop {
            sessions: 200,
            backoff: Duration::from_millis(10),
        };
        c.hold = HoldDist::Fixed(Duration::from_millis(50));
        c.server_close_fraction = 0.5;
        c.duration = secs(10);
        let r = run(&c).unwrap();
        assert!(r.peak_leased > 150, "{}", r.peak_leased);
        assert_eq!(r.bind_failures, 0);
        assert!(r.served > 20_000, "{}", r.served);
    }

    /// One peer of a closed loop of 20 sessions on 20 ports: with a limit of 5 the peer never
    /// holds more than 5 leases, and its refused sessions come back after their backoff.
    #[test]
    fn a_peer_limit_caps_one_address() {
        let mut c = SimConfig::new(20);
        c.scope = QuarantineScope::None;
        c.arrivals = Arrivals::ClosedLoop {
            sessions: 20,
            backoff: Duration::from_millis(10),
        };
        c.hold = HoldDist::Fixed(Duration::from_millis(50));
        c.duration = secs(5);
        let free = run(&c).unwrap();
        assert_eq!(free.peak_leased, 20);
        c.peer_limit = NonZeroUsize::new(5);
        let capped = run(&c).unwrap();
        assert_eq!(capped.peak_leased, 5);
        assert!(capped.refused > 0 && capped.served > 0, "{capped:?}");
    }

    /// Absurd inputs give an error or a report, never a panic.
    #[test]
    fn hostile_configurations_do_not_panic() {
        let mut c = SimConfig::new(0);
        assert_eq!(run(&c).unwrap_err(), ConfigError::EmptyPortSet);
        c = SimConfig::new(5);
        c.duration = secs(10);
        for rate in [f64::NAN, -1.0, 0.0, f64::INFINITY, 1e-300] {
            c.arrivals = Arrivals::Poisson { rate };
            assert_eq!(run(&c).unwrap().offered, 0, "{rate}");
        }
        c.arrivals = Arrivals::Poisson { rate: 10.0 };
        c.hold = HoldDist::Exponential(Duration::MAX);
        c.server_close_fraction = f64::NAN;
        c.quarantine = Duration::MAX;
        assert!(run(&c).unwrap().served > 0);
        c.hold = HoldDist::Uniform(Duration::MAX, Duration::ZERO);
        c.addresses = usize::MAX;
        c.peers = 0;
        assert!(run(&c).unwrap().served > 0);
        c.strategy = SimStrategy::Blind(BlindKind::FileZilla);
        assert!(run(&c).unwrap().served > 0);
    }

    #[cfg(feature = "serde")]
    #[test]
    fn serde_report_has_the_same_fields_as_to_json() {
        let mut c = SimConfig::new(20);
        c.duration = secs(100);
        let r = run(&c.clone().with_load(1.0)).unwrap();
        let ours: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        let theirs = serde_json::to_value(&r).unwrap();
        assert_eq!(ours, theirs);
        assert!(serde_json::to_string(&c)
            .unwrap()
            .contains("\"quarantine\""));
    }

    /// The pool's own capacity helpers agree with the capacity module.
    #[test]
    fn pool_capacity_helpers() {
        let config = PoolConfig::new(vec![v4(1), v4(2)], PortSet::range(1000, 2999).unwrap())
            .with_quarantine(secs(120));
        let p = Pool::new(config).unwrap();
        let r = p.rate_max(Duration::ZERO, 1.0);
        assert!((r - 4000.0 / 120.0).abs() < 1e-9);
        let b = p.refusal_probability(30.0, Duration::ZERO, 1.0);
        let sum = erlang_b_by_sum(4000, 3600.0);
        assert!((b - sum).abs() <= 1e-9 * sum, "{b} vs {sum}");
        let none = PoolConfig::new(vec![v4(1)], PortSet::range(1, 20).unwrap())
            .with_scope(QuarantineScope::None);
        let p = Pool::new(none).unwrap();
        assert!((p.rate_max(Duration::from_millis(500), 1.0) - 40.0).abs() < 1e-9);
    }

    /// A refused closed-loop session comes back after exactly `retry_after` and is served.
    #[test]
    fn closed_loop_sessions_follow_retry_after() {
        let mut c = SimConfig::new(2);
        c.quarantine = secs(10);
        c.arrivals = Arrivals::ClosedLoop {
            sessions: 3,
            backoff: secs(1000),
        };
        c.hold = HoldDist::Fixed(secs(1));
        c.duration = secs(100);
        let r = run(&c).unwrap();
        // Two ports, each busy 1 s + 10 s per lease: 100 s allow 2 × 10 leases (rate_max).
        assert!((18..=20).contains(&r.served), "{}", r.served);
        assert!(r.refused > 0);
    }
}

/// A committed table of strategies × load, recomputed and compared on every run (smoltcp's
/// netsim style), so that a change in any strategy, the kernel model or the simulator shows
/// up as a diff. Regenerate with `PASV_UPDATE_SNAPSHOTS=1 cargo test -p pasv-pool`.
mod snapshot {
    use super::*;
    use pasv_pool::sim::{run, Arrivals, BindSpec, HoldDist, SimConfig, SimStrategy};
    use pasv_pool::strategy::BlindKind;
    use std::fmt::Write as _;

    fn sweep() -> String {
        let mut strategies: Vec<SimStrategy> = StrategyKind::ALL
            .iter()
            .map(|&k| SimStrategy::Accounted(k))
            .collect();
        strategies.extend(BlindKind::ALL.iter().map(|&k| SimStrategy::Blind(k)));
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# 20 ports, Poisson, T = TIME_WAIT = 1 s, no SO_REUSEADDR, scope Port, f = 1, h ~ exp(20 ms), 300 s, seed 7"
        );
        let _ = writeln!(
            out,
            "{:<12} {:>5} {:>7} {:>7} {:>7} {:>6} {:>7} {:>8} {:>10} {:>8} {:>8}",
            "strategy",
            "load",
            "offered",
            "served",
            "refused",
            "killed",
            "outside",
            "binds/ok",
            "bind_us/ok",
            "refusal",
            "erlang_b"
        );
        for &s in &strategies {
            for load in [0.5, 0.95, 1.5] {
                let mut c = SimConfig::new(20);
                c.strategy = s;
                c.quarantine = secs(1);
                c.bind = BindSpec {
                    reuse_addr: false,
                    time_wait: secs(1),
                    conntrack: None,
                };
                c.hold = HoldDist::Exponential(Duration::from_millis(20));
                c.warmup = secs(5);
                c.duration = secs(305);
                c.seed = 7;
                let r = run(&c.with_load(load)).unwrap();
                let _ = writeln!(
                    out,
                    "{:<12} {:>5.2} {:>7} {:>7} {:>7} {:>6} {:>7} {:>8.3} {:>10.1} {:>8.4} {:>8.4}",
                    s.name(),
                    load,
                    r.offered,
                    r.served,
                    r.refused,
                    r.sessions_killed,
                    r.outside_range,
                    r.binds_per_success,
                    r.bind_cost_s * 1e6 / r.served.max(1) as f64,
                    r.refusal_rate,
                    r.erlang_b
                );
            }
        }
        let _ = writeln!(
            out,
            "\n# 20 ports, K closed-loop sessions, Linux SO_REUSEADDR (TIME_WAIT 60 s), scope None, f = 1, h ~ exp(0.5 ms), 2 s, seed 7"
        );
        let _ = writeln!(
            out,
            "{:<12} {:>5} {:>7} {:>7} {:>7} {:>6} {:>7} {:>8} {:>10} {:>8}",
            "strategy",
            "K",
            "offered",
            "served",
            "refused",
            "killed",
            "outside",
            "binds/ok",
            "bind_us/ok",
            "peak_tw"
        );
        for s in strategies {
            for k in [4usize, 32] {
                let mut c = SimConfig::new(20);
                c.strategy = s;
                c.scope = QuarantineScope::None;
                c.arrivals = Arrivals::ClosedLoop {
                    sessions: k,
                    backoff: Duration::from_millis(100),
                };
                c.hold = HoldDist::Exponential(Duration::from_micros(500));
                c.duration = secs(2);
                c.seed = 7;
                let r = run(&c).unwrap();
                let _ = writeln!(
                    out,
                    "{:<12} {:>5} {:>7} {:>7} {:>7} {:>6} {:>7} {:>8.3} {:>10.1} {:>8}",
                    s.name(),
                    k,
                    r.offered,
                    r.served,
                    r.refused,
                    r.sessions_killed,
                    r.outside_range,
                    r.binds_per_success,
                    r.bind_cost_s * 1e6 / r.served.max(1) as f64,
                    r.peak_time_wait
                );
            }
        }
        out
    }

    #[test]
    fn strategy_sweep_matches_snapshot() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/sweep.txt");
        let table = sweep();
        if std::env::var_os("PASV_UPDATE_SNAPSHOTS").is_some() {
            std::fs::write(&path, &table).unwrap();
            return;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("{}: {e}; run with PASV_UPDATE_SNAPSHOTS=1", path.display())
        });
        assert!(
            committed == table,
            "simulation sweep changed; if intended, regenerate with PASV_UPDATE_SNAPSHOTS=1\n--- committed\n{committed}\n--- now\n{table}"
        );
    }
}

/// Erlang B by its defining sum, B = (A^N/N!) / Σ_{k<=N} A^k/k!, in logs to stay finite: an
/// independent check on `capacity::erlang_b`, which uses the recurrence.
fn erlang_b_by_sum(servers: u64, load: f64) -> f64 {
    let mut log_terms = Vec::with_capacity(servers as usize + 1);
    let mut log_term = 0.0f64;
    log_terms.push(log_term);
    for k in 1..=servers {
        log_term += load.ln() - (k as f64).ln();
        log_terms.push(log_term);
    }
    let max = log_terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = log_terms.iter().map(|t| (t - max).exp()).sum();
    (log_term - max).exp() / sum
}

#[test]
fn erlang_b_by_sum_known_answers() {
    // B(1, 1) = 1/2, B(2, 1) = 1/5, B(3, 2) = 4/19 by hand.
    assert!((erlang_b_by_sum(1, 1.0) - 0.5).abs() < 1e-12);
    assert!((erlang_b_by_sum(2, 1.0) - 0.2).abs() < 1e-12);
    assert!((erlang_b_by_sum(3, 2.0) - 4.0 / 19.0).abs() < 1e-12);
}
