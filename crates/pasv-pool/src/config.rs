//! Pool configuration: addresses, port set, quarantine and strategy.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::str::FromStr;
use std::time::Duration;

/// Which future leases a server-side close forbids, and for how long ([`PoolConfig::quarantine`]).
///
/// TIME_WAIT belongs to a 4-tuple, not to a port; what must be avoided depends on the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum QuarantineScope {
    /// Nobody may lease the port for T: listeners bound without `SO_REUSEADDR`, Windows-like
    /// stacks, or a middlebox that tracks the port.
    #[default]
    Port,
    /// Only the peer whose transfer the server closed may not lease the port for T
    /// (FileZilla Server's rule: 4 minutes per port and peer).
    Peer,
    /// No quarantine: Linux with `SO_REUSEADDR` on the old and the new listener re-binds over
    /// TIME_WAIT. Only ports with a live lease are busy.
    None,
}

/// How many leases one port can carry at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum Exclusivity {
    /// One lease per port: servers that bind a listener per lease.
    #[default]
    PerPort,
    /// One lease per (port, peer address): servers that keep every passive port listening and
    /// route each accepted connection to the session that leased the port for that peer. A
    /// 20-port range then serves any number of concurrent clients from different addresses.
    PerPortAndPeer,
}

/// Which of the configured local addresses an acquisition may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum AddrFilter {
    /// Any configured address.
    #[default]
    Any,
    /// Exactly this address (for example the address the control connection arrived on).
    Only(IpAddr),
    /// Any IPv4 address (PASV can only advertise IPv4).
    V4,
    /// Any IPv6 address.
    V6,
}

impl AddrFilter {
    /// Whether `addr` passes the filter.
    pub fn matches(self, addr: IpAddr) -> bool {
        match self {
            AddrFilter::Any => true,
            AddrFilter::Only(a) => a == addr,
            AddrFilter::V4 => addr.is_ipv4(),
            AddrFilter::V6 => addr.is_ipv6(),
        }
    }
}

/// The accounted allocation strategies built into the pool (see [`crate::strategy`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum StrategyKind {
    /// The free port released longest ago: spreads closes, and so TIME_WAIT, evenly over the
    /// range. O(1) per operation. The default.
    #[default]
    LeastRecentlyReleased,
    /// The next free port after the previous pick, wrapping around.
    RoundRobin,
    /// The lowest free port.
    LowestFree,
    /// A keyed per-peer sequence (RFC 6056 algorithm 4): another client cannot predict the
    /// port a peer will get (RFC 2577 section 8).
    KeyedPermutation,
}

impl StrategyKind {
    /// Every built-in accounted strategy, default first.
    pub const ALL: [StrategyKind; 4] = [
        StrategyKind::LeastRecentlyReleased,
        StrategyKind::RoundRobin,
        StrategyKind::LowestFree,
        StrategyKind::KeyedPermutation,
    ];

    /// The short name accepted by [`FromStr`].
    pub fn name(self) -> &'static str {
        match self {
            StrategyKind::LeastRecentlyReleased => "lrr",
            StrategyKind::RoundRobin => "round-robin",
            StrategyKind::LowestFree => "lowest-free",
            StrategyKind::KeyedPermutation => "keyed",
        }
    }
}

impl fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A strategy name that [`StrategyKind::from_str`] does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown strategy {name:?} (expected lrr, round-robin, lowest-free or keyed)")]
pub struct ParseStrategyError {
    /// The name that was given.
    pub name: String,
}

impl FromStr for StrategyKind {
    type Err = ParseStrategyError;
    fn from_str(s: &str) -> Result<StrategyKind, ParseStrategyError> {
        match s.to_ascii_lowercase().as_str() {
            "lrr" | "least-recently-released" => Ok(StrategyKind::LeastRecentlyReleased),
            "round-robin" | "rr" => Ok(StrategyKind::RoundRobin),
            "lowest-free" | "lowest" => Ok(StrategyKind::LowestFree),
            "keyed" | "keyed-permutation" => Ok(StrategyKind::KeyedPermutation),
            _ => Err(ParseStrategyError { name: s.to_owned() }),
        }
    }
}

/// An invalid configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The port set holds no port (after exclusions).
    #[error("the port set is empty")]
    EmptyPortSet,
    /// Port 0 asks the kernel for any port; it cannot be part of a range.
    #[error("port 0 cannot be part of a port range")]
    PortZero,
    /// A range whose low end is above its high end.
    #[error("invalid port range {lo}-{hi}")]
    InvalidRange {
        /// Low end.
        lo: u16,
        /// High end.
        hi: u16,
    },
    /// Two ranges share at least one port.
    #[error("port range {lo}-{hi} overlaps another range")]
    OverlappingRanges {
        /// Low end of the range that was added.
        lo: u16,
        /// High end of the range that was added.
        hi: u16,
    },
    /// No local address.
    #[error("no local address")]
    NoAddresses,
    /// The same local address given twice.
    #[error("duplicate local address {0}")]
    DuplicateAddress(IpAddr),
    /// More (address, port) pairs than a pool can number (2^32).
    #[error("too many address and port pairs ({0})")]
    TooLarge(usize),
}

/// A set of ports: inclusive ranges that do not overlap, minus excluded ports.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct PortSet {
    ranges: Vec<(u16, u16)>,
    excluded: BTreeSet<u16>,
}

impl PortSet {
    /// The ports `lo..=hi`.
    pub fn range(lo: u16, hi: u16) -> Result<PortSet, ConfigError> {
        PortSet {
            ranges: Vec::new(),
            excluded: BTreeSet::new(),
        }
        .with_range(lo, hi)
    }

    /// Adds the ports `lo..=hi`; a range sharing a port with one already present is an error.
    pub fn with_range(mut self, lo: u16, hi: u16) -> Result<PortSet, ConfigError> {
        if lo == 0 {
            return Err(ConfigError::PortZero);
        }
        if lo > hi {
            return Err(ConfigError::InvalidRange { lo, hi });
        }
        if self.ranges.iter().any(|&(a, b)| lo <= b && a <= hi) {
            return Err(ConfigError::OverlappingRanges { lo, hi });
        }
        self.ranges.push((lo, hi));
        self.ranges.sort_unstable();
        Ok(self)
    }

    /// The `n` highest ports, `65536 - n ..= 65535` (empty for `n` = 0).
    pub(crate) fn top(n: u16) -> PortSet {
        if n == 0 {
            return PortSet {
                ranges: Vec::new(),
                excluded: BTreeSet::new(),
            };
        }
        PortSet {
            ranges: vec![(65_535 - n + 1, 65_535)],
            excluded: BTreeSet::new(),
        }
    }

    /// Removes one port (a port outside the set is ignored).
    pub fn without(mut self, port: u16) -> PortSet {
        if self.contains(port) {
            self.excluded.insert(port);
        }
        self
    }

    /// Number of ports.
    pub fn len(&self) -> usize {
        let total: usize = self
            .ranges
            .iter()
            .map(|&(a, b)| usize::from(b - a) + 1)
            .sum();
        total - self.excluded.len()
    }

    /// Whether the set holds no port.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `p` is in the set.
    pub fn contains(&self, p: u16) -> bool {
        self.ranges.iter().any(|&(a, b)| a <= p && p <= b) && !self.excluded.contains(&p)
    }

    /// The ports in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        self.ranges
            .iter()
            .flat_map(|&(a, b)| a..=b)
            .filter(move |p| !self.excluded.contains(p))
    }
}

/// Everything a [`crate::Pool`] needs to know.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct PoolConfig {
    /// Local addresses to advertise; every port of [`PoolConfig::ports`] exists on each.
    pub addresses: Vec<IpAddr>,
    /// The passive port range.
    pub ports: PortSet,
    /// How long a server-side close forbids the port (T). Default 60 s, Linux's
    /// `TCP_TIMEWAIT_LEN`.
    pub quarantine: Duration,
    /// Who the quarantine applies to. Default [`QuarantineScope::Port`].
    pub scope: QuarantineScope,
    /// One lease per port, or one per (port, peer). Default [`Exclusivity::PerPort`].
    pub exclusivity: Exclusivity,
    /// Which free port to offer. Default [`StrategyKind::LeastRecentlyReleased`].
    pub strategy: StrategyKind,
    /// Seed for everything keyed or random; equal seeds give equal runs.
    pub seed: u64,
    /// Most leases one peer address may hold at once; `None`, the default, for no limit.
    /// Peers are counted by [`crate::client_key`]: every address of an IPv6 /64 together.
    /// A peer at its limit is refused with [`crate::Shortage::PeerLimit`] even when ports
    /// are free, so one address cannot take the whole range from the others.
    pub peer_limit: Option<NonZeroUsize>,
}

impl PoolConfig {
    /// Default quarantine: Linux's TIME_WAIT length (`TCP_TIMEWAIT_LEN`, 60 s).
    pub const DEFAULT_QUARANTINE: Duration = Duration::from_secs(60);

    /// A configuration with the defaults for everything but addresses and ports.
    pub fn new(addresses: Vec<IpAddr>, ports: PortSet) -> PoolConfig {
        PoolConfig {
            addresses,
            ports,
            quarantine: PoolConfig::DEFAULT_QUARANTINE,
            scope: QuarantineScope::Port,
            exclusivity: Exclusivity::PerPort,
            strategy: StrategyKind::LeastRecentlyReleased,
            seed: 0,
            peer_limit: None,
        }
    }

    /// Sets the quarantine length T.
    pub fn with_quarantine(mut self, t: Duration) -> PoolConfig {
        self.quarantine = t;
        self
    }

    /// Sets the quarantine scope.
    pub fn with_scope(mut self, scope: QuarantineScope) -> PoolConfig {
        self.scope = scope;
        self
    }

    /// Sets the exclusivity.
    pub fn with_exclusivity(mut self, exclusivity: Exclusivity) -> PoolConfig {
        self.exclusivity = exclusivity;
        self
    }

    /// Sets the strategy.
    pub fn with_strategy(mut self, strategy: StrategyKind) -> PoolConfig {
        self.strategy = strategy;
        self
    }

    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> PoolConfig {
        self.seed = seed;
        self
    }

    /// Sets the most leases one peer address may hold at once (`None`: no limit).
    pub fn with_peer_limit(mut self, limit: Option<NonZeroUsize>) -> PoolConfig {
        self.peer_limit = limit;
        self
    }

    /// Checks the configuration without building a pool.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.addresses.is_empty() {
            return Err(ConfigError::NoAddresses);
        }
        for (i, a) in self.addresses.iter().enumerate() {
            if self.addresses[..i].contains(a) {
                return Err(ConfigError::DuplicateAddress(*a));
            }
        }
        if self.ports.is_empty() {
            return Err(ConfigError::EmptyPortSet);
        }
        let slots = self.addresses.len().saturating_mul(self.ports.len());
        if slots > u32::MAX as usize {
            return Err(ConfigError::TooLarge(slots));
        }
        Ok(())
    }
}
