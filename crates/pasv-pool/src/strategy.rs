//! Allocation strategies: which port to offer next.
//!
//! Two families, each a trait with one submodule per strategy (re-exported here):
//!
//! * **Accounted** strategies ([`Strategy`]) live inside a [`crate::Pool`]. They see the
//!   ledger and can only ever offer a slot the pool marked offerable and the [`Ledger`] admits
//!   for the requesting peer, so they never offer a port under quarantine. The pool tells them
//!   when a slot becomes offerable ([`Strategy::insert`]) or stops being offerable
//!   ([`Strategy::remove`]). [`LeastRecentlyReleased`] is the default.
//! * **Blind** strategies ([`BlindStrategy`]) model what other FTP servers do (vsftpd,
//!   ProFTPD, Pure-FTPd, pyftpdlib, libunftp, FileZilla Server): they propose ports and learn only from
//!   a bind attempt, answered by a [`crate::BindModel`] that reproduces the kernel. They exist
//!   for the simulator, to compare against.

use std::fmt;
use std::net::IpAddr;

use crate::rng::Rng;
use crate::time::Instant;
use crate::StrategyKind;

mod filezilla;
mod keyed;
mod libunftp;
mod lowest_free;
mod lrr;
mod proftpd;
mod pure_ftpd;
mod pyftpdlib;
mod round_robin;
mod vsftpd;

pub use filezilla::FileZilla;
pub use keyed::KeyedPermutation;
pub use libunftp::Libunftp;
pub use lowest_free::LowestFree;
pub use lrr::LeastRecentlyReleased;
pub use proftpd::ProFtpd;
pub use pure_ftpd::PureFtpd;
pub use pyftpdlib::Pyftpdlib;
pub use round_robin::RoundRobin;
pub use vsftpd::Vsftpd;

/// One (local address, port) pair of a pool, numbered port-major: slot `p·A + a` is port
/// index `p` on address index `a`, so consecutive slots alternate between addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SlotId(pub(crate) u32);

impl SlotId {
    /// The slot's number, `0..Layout::slots()`.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// The shape of a pool: `ports` ports on each of `addresses` local addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Number of local addresses (A).
    pub addresses: usize,
    /// Number of ports per address (N).
    pub ports: usize,
}

impl Layout {
    /// Total number of slots, N·A.
    pub fn slots(self) -> usize {
        self.addresses * self.ports
    }
    /// The slot of port index `port` on address index `address`.
    pub fn slot(self, address: usize, port: usize) -> SlotId {
        SlotId((port * self.addresses + address) as u32)
    }
    /// The address index of `slot`.
    pub fn address_of(self, slot: SlotId) -> usize {
        slot.index() % self.addresses
    }
    /// The port index of `slot`.
    pub fn port_of(self, slot: SlotId) -> usize {
        slot.index() / self.addresses
    }
}

/// What an accounted strategy may know about one acquisition: who asks, which addresses the
/// caller accepts, and which slots this peer may not have (its own leases under
/// [`crate::Exclusivity::PerPortAndPeer`], its quarantined ports under
/// [`crate::QuarantineScope::Peer`]).
pub struct Ledger<'a> {
    pub(crate) peer: IpAddr,
    pub(crate) layout: Layout,
    /// `None`: every address is allowed.
    pub(crate) allowed: Option<&'a [bool]>,
    pub(crate) peer_state: Option<&'a crate::pool::PeerLedger>,
}

impl Ledger<'_> {
    /// The peer asking for a port.
    pub fn peer(&self) -> IpAddr {
        self.peer
    }
    /// The pool's layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }
    /// Whether the caller accepts address index `address`.
    pub fn admits_address(&self, address: usize) -> bool {
        match self.allowed {
            None => true,
            Some(a) => a.get(address).copied().unwrap_or(false),
        }
    }
    /// Whether every slot the pool calls offerable is also admitted for this acquisition (no
    /// address filter, no per-peer restriction): strategies may then skip [`Ledger::admits`].
    pub fn admits_all(&self) -> bool {
        self.allowed.is_none() && self.peer_state.is_none()
    }
    /// Whether `slot`, offerable in the pool, may be given to this peer now.
    pub fn admits(&self, slot: SlotId) -> bool {
        if let Some(allowed) = self.allowed {
            let a = self.layout.address_of(slot);
            if !allowed.get(a).copied().unwrap_or(false) {
                return false;
            }
        }
        match self.peer_state {
            None => true,
            Some(p) => !p.holds_or_blocks(slot.0),
        }
    }
}

impl fmt::Debug for Ledger<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ledger")
            .field("peer", &self.peer)
            .field("layout", &self.layout)
            .finish()
    }
}

/// An accounted allocation strategy (see the module documentation).
///
/// Contract: the set of offerable slots is exactly what the pool passed to
/// [`Strategy::insert`] and not yet to [`Strategy::remove`]; [`Strategy::pick`] returns one of
/// them that the ledger admits, and returns `None` only if there is none. The pool then calls
/// `remove` (one lease per port) or [`Strategy::touch`] (one lease per port and peer) for the
/// slot it leased. A strategy that answered `None` while an admitted slot existed would make
/// [`crate::Exhausted::retry_after`] wrong.
pub trait Strategy: fmt::Debug + Send {
    /// A short name for reports.
    fn name(&self) -> &'static str;
    /// `slot` became offerable (it was not).
    fn insert(&mut self, slot: SlotId);
    /// `slot` stopped being offerable (it was).
    fn remove(&mut self, slot: SlotId);
    /// An offerable slot admitted by `ledger`, or `None` if there is none.
    fn pick(&mut self, ledger: &Ledger<'_>) -> Option<SlotId>;
    /// `slot` was leased to one peer and stays offerable to others.
    fn touch(&mut self, slot: SlotId) {
        let _ = slot;
    }
}

/// Builds the strategy `kind` for `layout`, keyed by `seed` where it matters. No slot is
/// offerable yet.
pub fn build(kind: StrategyKind, layout: Layout, seed: u64) -> Box<dyn Strategy> {
    match kind {
        StrategyKind::LeastRecentlyReleased => Box::new(LeastRecentlyReleased::new(layout)),
        StrategyKind::RoundRobin => Box::new(RoundRobin::new(layout)),
        StrategyKind::LowestFree => Box::new(LowestFree::new(layout)),
        StrategyKind::KeyedPermutation => Box::new(KeyedPermutation::new(layout, seed)),
    }
}

/// A set of slots with fast "next member at or after i" (two-level bitmap: one bit per slot,
/// one summary bit per non-empty word), so a scan skips 4,096 slots per summary word.
#[derive(Clone, Debug)]
pub(crate) struct SlotBits {
    words: Vec<u64>,
    summary: Vec<u64>,
    len: usize,
}

impl SlotBits {
    pub(crate) fn new(len: usize) -> SlotBits {
        let nwords = len.div_ceil(64);
        SlotBits {
            words: vec![0; nwords],
            summary: vec![0; nwords.div_ceil(64)],
            len,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn insert(&mut self, i: usize) {
        let w = i / 64;
        self.words[w] |= 1 << (i % 64);
        self.summary[w / 64] |= 1 << (w % 64);
    }

    pub(crate) fn remove(&mut self, i: usize) {
        let w = i / 64;
        self.words[w] &= !(1 << (i % 64));
        if self.words[w] == 0 {
            self.summary[w / 64] &= !(1 << (w % 64));
        }
    }

    /// The smallest member `>= i`.
    pub(crate) fn next_from(&self, i: usize) -> Option<usize> {
        if i >= self.len {
            return None;
        }
        let w = i / 64;
        let m = self.words[w] & (!0u64 << (i % 64));
        if m != 0 {
            return Some(w * 64 + m.trailing_zeros() as usize);
        }
        let w = w + 1;
        let mut s = w / 64;
        if s >= self.summary.len() {
            return None;
        }
        let mut sm = if w % 64 == 0 {
            self.summary[s]
        } else {
            self.summary[s] & (!0u64 << (w % 64))
        };
        loop {
            if sm != 0 {
                let word = s * 64 + sm.trailing_zeros() as usize;
                return Some(word * 64 + self.words[word].trailing_zeros() as usize);
            }
            s += 1;
            if s >= self.summary.len() {
                return None;
            }
            sm = self.summary[s];
        }
    }

    /// The first member at or after `start` (wrapping around once) that `ok` accepts, and how
    /// far after `start` it lies.
    pub(crate) fn find_wrapping(
        &self,
        start: usize,
        mut ok: impl FnMut(usize) -> bool,
    ) -> Option<(usize, usize)> {
        let mut from = start;
        while let Some(i) = self.next_from(from) {
            if ok(i) {
                return Some((i, i - start));
            }
            from = i + 1;
        }
        from = 0;
        while let Some(i) = self.next_from(from) {
            if i >= start {
                break;
            }
            if ok(i) {
                return Some((i, i + self.len - start));
            }
            from = i + 1;
        }
        None
    }
}

/// How a blind allocation ended (DESIGN.md section 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum BlindOutcome {
    /// A port of the range was bound.
    InRange(u16),
    /// The range gave nothing; the server let the kernel pick a port outside it (ProFTPD,
    /// pyftpdlib), which a firewall configured for the range will drop.
    OutsideRange,
    /// The server answered 425 and the session goes on.
    Refused,
    /// The server killed the session (vsftpd's `500 OOPS: vsf_sysutil_bind`).
    SessionKilled,
}

/// A blind allocation strategy: proposes ports of `range` and learns only from `bind`, which
/// answers whether the kernel accepted a listener on that port.
pub trait BlindStrategy: fmt::Debug + Send {
    /// A short name for reports.
    fn name(&self) -> &'static str;
    /// Allocates one port for `peer` at `now`.
    fn allocate(
        &mut self,
        now: Instant,
        peer: IpAddr,
        range: &[u16],
        rng: &mut Rng,
        bind: &mut dyn FnMut(u16) -> bool,
    ) -> BlindOutcome;
    /// A lease allocated by this strategy ended (for strategies that keep a ledger).
    fn on_release(&mut self, now: Instant, port: u16, peer: IpAddr, server_closed: bool) {
        let _ = (now, port, peer, server_closed);
    }
}

/// The blind models' ways of walking a range. Each returns the first port that binds, or
/// `None` when the walk ends without one; what the server does then is the model's own.
pub(crate) mod walk {
    use crate::rng::Rng;

    /// Up to `tries` uniformly random ports of `range`, with repetition: tried ports are not
    /// remembered.
    pub(crate) fn random_tries(
        tries: usize,
        range: &[u16],
        rng: &mut Rng,
        bind: &mut dyn FnMut(u16) -> bool,
    ) -> Option<u16> {
        (0..tries)
            .map_while(|_| range.get(rng.below(range.len() as u64) as usize).copied())
            .find(|&port| bind(port))
    }

    /// Every port of `range` at most once, drawn without replacement: a uniformly shuffled
    /// order that costs nothing for the ports a successful bind leaves unvisited.
    pub(crate) fn shuffled(
        range: &[u16],
        rng: &mut Rng,
        bind: &mut dyn FnMut(u16) -> bool,
    ) -> Option<u16> {
        let mut left = range.to_vec();
        while !left.is_empty() {
            let port = left.swap_remove(rng.below(left.len() as u64) as usize);
            if bind(port) {
                return Some(port);
            }
        }
        None
    }

    /// A random start, then one linear scan of `range` (wrapping), trying to bind only the
    /// ports `admit` accepts.
    pub(crate) fn scan_from_random(
        range: &[u16],
        rng: &mut Rng,
        mut admit: impl FnMut(u16) -> bool,
        bind: &mut dyn FnMut(u16) -> bool,
    ) -> Option<u16> {
        let n = range.len();
        let start = rng.below(n as u64) as usize;
        (0..n)
            .map(|k| range[(start + k) % n])
            .find(|&port| admit(port) && bind(port))
    }
}

/// The blind strategies modelled after other servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum BlindKind {
    /// vsftpd: 9 random binds, then `500 OOPS` and the session dies.
    Vsftpd,
    /// ProFTPD: a shuffled sweep of the range, up to 3 passes, then a kernel port.
    ProFtpd,
    /// Pure-FTPd: random start, one linear scan, then 425.
    PureFtpd,
    /// pyftpdlib: random without replacement over the range, then a kernel port.
    Pyftpdlib,
    /// libunftp: 9 random binds, then 425.
    Libunftp,
    /// FileZilla Server: random start, three relaxation levels over a 4-minute
    /// (port, peer) ledger, then 425.
    FileZilla,
}

impl BlindKind {
    /// Every blind strategy.
    pub const ALL: [BlindKind; 6] = [
        BlindKind::Vsftpd,
        BlindKind::ProFtpd,
        BlindKind::PureFtpd,
        BlindKind::Pyftpdlib,
        BlindKind::Libunftp,
        BlindKind::FileZilla,
    ];

    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            BlindKind::Vsftpd => "vsftpd",
            BlindKind::ProFtpd => "proftpd",
            BlindKind::PureFtpd => "pure-ftpd",
            BlindKind::Pyftpdlib => "pyftpdlib",
            BlindKind::Libunftp => "libunftp",
            BlindKind::FileZilla => "filezilla",
        }
    }

    /// Builds the strategy.
    pub fn build(self) -> Box<dyn BlindStrategy> {
        match self {
            BlindKind::Vsftpd => Box::new(Vsftpd),
            BlindKind::ProFtpd => Box::new(ProFtpd),
            BlindKind::PureFtpd => Box::new(PureFtpd),
            BlindKind::Pyftpdlib => Box::new(Pyftpdlib),
            BlindKind::Libunftp => Box::new(Libunftp),
            BlindKind::FileZilla => Box::new(FileZilla::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_bits_next_and_wrap() {
        let mut b = SlotBits::new(10_000);
        assert_eq!(b.next_from(0), None);
        for i in [3, 64, 4_095, 4_096, 9_999] {
            b.insert(i);
        }
        assert_eq!(b.next_from(0), Some(3));
        assert_eq!(b.next_from(4), Some(64));
        assert_eq!(b.next_from(65), Some(4_095));
        assert_eq!(b.next_from(4_096), Some(4_096));
        assert_eq!(b.next_from(4_097), Some(9_999));
        assert_eq!(b.next_from(10_000), None);
        b.remove(9_999);
        assert_eq!(b.next_from(4_097), None);
        assert_eq!(
            b.find_wrapping(4_097, |_| true),
            Some((3, 10_000 - 4_097 + 3))
        );
        assert_eq!(b.find_wrapping(5, |i| i != 64), Some((4_095, 4_090)));
        assert_eq!(b.find_wrapping(0, |_| false), None);
    }
}
