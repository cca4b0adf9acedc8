//! Failed logins per client address: a growing delay, and a ban past a count in a window.
//!
//! [`BanLedger`] is the policy, sans IO: every call takes `now`, it never reads a clock and
//! never sleeps, so its tests run in virtual time. [`Defender`] is the thin driver the server
//! shares between the accept loop and the sessions: a lock around the ledger, the clock, a
//! wake-up for logins waiting their turn, and the log lines. It plays the part of ProFTPD's
//! `mod_ban` and SFTPGo's defender.
//!
//! The rules, and why:
//!
//! * **What counts.** A PASS whose verification fails, for a known name or an unknown one
//!   alike (the client cannot tell them apart, so neither does the count). A USER is not
//!   counted by itself: its reply is 331 for every name, so it reveals nothing, and every
//!   guess needs the PASS that follows. A success does not forgive earlier failures: an
//!   anonymous login, which always succeeds, would otherwise launder a guesser's count.
//! * **The window** opens at an address's first failure and closes `window` later; the
//!   `max_failures`-th failure inside it bans the address for `ban_time`. A served ban
//!   starts a clean slate. A guesser keeps below the count across the edge of two windows at
//!   best, so the long-run rate from one address is under `max_failures` per `window`.
//! * **Races.** An address's failures plus its verifications in flight never exceed
//!   `max_failures`: a login that would go past waits ([`Turn::Busy`]) until one in flight
//!   ends. A thousand sessions sending PASS at once from one address therefore run at most
//!   `max_failures` argon2 verifications before the ban, not a thousand.
//! * **Throttle.** After each failure the session waits `fail_delay` doubled per earlier
//!   failure of its address in the window (1, 2, 4, 8, then 16 times), before its 530.
//! * **Memory.** At most `capacity` addresses are tracked; an address with nothing to
//!   remember (no failure in an open window, no ban, nothing in flight) is dropped at once.
//!   When the table is full, expired entries go first, then the oldest failures, then the
//!   logins in flight, and bans (the one ending soonest) only when every entry is a ban: an
//!   attacker who sprays from many addresses can reset counts, not lift its own ban.
//! * **IPv6** addresses are keyed by their /64 prefix, the block one subscriber is handed:
//!   per /128 a ban would cost an IPv6 attacker nothing. IPv4-mapped addresses count as IPv4.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use pasv_pool::Instant;
use tokio::sync::Notify;

use crate::clock;

/// Largest multiple of `fail_delay` a failure waits (the fifth failure and later).
const MAX_DELAY_FACTOR: u32 = 16;

/// Addresses tracked by default: a full table takes well under a MiB.
pub(crate) const DEFAULT_CAPACITY: usize = 10_000;

/// The numbers of the policy; see the module docs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BanPolicy {
    /// Failures within `window` that ban an address (at least 1).
    pub(crate) max_failures: u32,
    /// How long a failure counts.
    pub(crate) window: Duration,
    /// How long a ban lasts.
    pub(crate) ban_time: Duration,
    /// The delay after an address's first failure; doubled for each later one.
    pub(crate) fail_delay: Duration,
    /// Addresses tracked at most.
    pub(crate) capacity: usize,
}

/// Whether a login attempt may go on to verify its password.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Turn {
    /// Verify now; report the outcome with [`BanLedger::login_succeeded`] or
    /// [`BanLedger::login_failed`].
    Go,
    /// The address's failures and verifications in flight reach the count: ask again when
    /// one in flight ends.
    Busy,
    /// The address is banned until then.
    Banned(Instant),
}

/// What a failed login leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Failure {
    /// The address's failures in the current window, this one included.
    pub(crate) failures: u32,
    /// How long to hold the reply.
    pub(crate) delay: Duration,
    /// Set when this failure banned the address: until when.
    pub(crate) banned_until: Option<Instant>,
}

/// Totals since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LedgerCounts {
    /// Failed logins.
    pub(crate) failures: u64,
    /// Bans imposed.
    pub(crate) bans: u64,
    /// Connections refused because their address was banned.
    pub(crate) refused_connections: u64,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    failures: u32,
    window_start: Instant,
    banned_until: Option<Instant>,
    in_flight: u32,
    /// The last failure or, before any, when the entry was made.
    touched: Instant,
}

impl Entry {
    fn new(now: Instant) -> Entry {
        Entry {
            failures: 0,
            window_start: now,
            banned_until: None,
            in_flight: 0,
            touched: now,
        }
    }

    /// Forgets a served ban and a closed window.
    fn refresh(&mut self, now: Instant, window: Duration) {
        if self.banned_until.is_some_and(|until| until <= now) {
            self.banned_until = None;
            self.failures = 0;
        }
        if self.failures > 0 && now.saturating_duration_since(self.window_start) >= window {
            self.failures = 0;
        }
    }

    fn is_empty(&self) -> bool {
        self.failures == 0 && self.banned_until.is_none() && self.in_flight == 0
    }

    /// Lower goes first when the table is full.
    fn eviction_rank(&self) -> (u8, Instant) {
        match self.banned_until {
            Some(until) => (2, until),
            None if self.in_flight > 0 => (1, self.touched),
            None => (0, self.touched),
        }
    }
}

/// The address a ledger entry is kept under: IPv4 as is (IPv4-mapped IPv6 included), IPv6
/// by its /64 prefix.
/// The one notion of a client address shared with the session limits and the pool's
/// `max_passive_per_ip` ([`pasv_pool::client_key`]).
pub(crate) fn address_key(ip: IpAddr) -> IpAddr {
    pasv_pool::client_key(ip)
}

/// Failed logins and bans per client address; see the module docs.
#[derive(Debug)]
pub(crate) struct BanLedger {
    policy: BanPolicy,
    entries: HashMap<IpAddr, Entry>,
    counts: LedgerCounts,
}

impl BanLedger {
    /// An empty ledger.
    pub(crate) fn new(policy: BanPolicy) -> BanLedger {
        BanLedger {
            policy: BanPolicy {
                max_failures: policy.max_failures.max(1),
                capacity: policy.capacity.max(1),
                ..policy
            },
            entries: HashMap::new(),
            counts: LedgerCounts::default(),
        }
    }

    /// The live entry of `key`, if any, with a served ban or a closed window forgotten (and
    /// the entry dropped when nothing is left to remember).
    fn live(&mut self, key: IpAddr, now: Instant) -> Option<&mut Entry> {
        let window = self.policy.window;
        let entry = self.entries.get_mut(&key)?;
        entry.refresh(now, window);
        if entry.is_empty() {
            self.entries.remove(&key);
            return None;
        }
        self.entries.get_mut(&key)
    }

    /// The entry of `key`, made if needed; makes room first when the table is full.
    fn entry(&mut self, key: IpAddr, now: Instant) -> &mut Entry {
        if self.live(key, now).is_none() && self.entries.len() >= self.policy.capacity {
            self.make_room(now);
        }
        self.entries.entry(key).or_insert_with(|| Entry::new(now))
    }

    /// Drops expired entries, then the lowest ranked one if the table is still full. A
    /// scan of the table: it runs only for an address not yet tracked, once per login
    /// attempt at most, which costs an argon2 verification (milliseconds) anyway.
    fn make_room(&mut self, now: Instant) {
        let window = self.policy.window;
        self.entries.retain(|_, e| {
            e.refresh(now, window);
            !e.is_empty()
        });
        if self.entries.len() < self.policy.capacity {
            return;
        }
        let victim = self
            .entries
            .iter()
            .min_by_key(|(_, e)| e.eviction_rank())
            .map(|(key, _)| *key);
        if let Some(key) = victim {
            self.entries.remove(&key);
        }
    }

    /// Whether a connection from `ip` is refused: until when it is banned. Counts refusals.
    pub(crate) fn banned_until(&mut self, ip: IpAddr, now: Instant) -> Option<Instant> {
        let until = self.live(address_key(ip), now)?.banned_until?;
        self.counts.refused_connections += 1;
        Some(until)
    }

    /// A login from `ip` wants to verify a password; on [`Turn::Go`] it is in flight until
    /// its outcome is reported.
    pub(crate) fn begin_login(&mut self, ip: IpAddr, now: Instant) -> Turn {
        let max = self.policy.max_failures;
        let key = address_key(ip);
        if let Some(entry) = self.live(key, now) {
            if let Some(until) = entry.banned_until {
                return Turn::Banned(until);
            }
            if entry.failures.saturating_add(entry.in_flight) >= max {
                return Turn::Busy;
            }
        }
        self.entry(key, now).in_flight += 1;
        Turn::Go
    }

    /// A login that [`BanLedger::begin_login`] let through succeeded.
    pub(crate) fn login_succeeded(&mut self, ip: IpAddr, now: Instant) {
        let key = address_key(ip);
        if let Some(entry) = self.entries.get_mut(&key) {
            entry.in_flight = entry.in_flight.saturating_sub(1);
        }
        // Drops the entry if nothing is left to remember.
        let _ = self.live(key, now);
    }

    /// A login that [`BanLedger::begin_login`] let through failed: counted, and perhaps a ban.
    pub(crate) fn login_failed(&mut self, ip: IpAddr, now: Instant) -> Failure {
        let policy = self.policy;
        let entry = self.entry(address_key(ip), now);
        entry.in_flight = entry.in_flight.saturating_sub(1);
        entry.refresh(now, policy.window);
        if entry.failures == 0 {
            entry.window_start = now;
        }
        entry.failures += 1;
        entry.touched = now;
        let failures = entry.failures;
        let factor = 1u32
            .checked_shl(failures - 1)
            .unwrap_or(u32::MAX)
            .min(MAX_DELAY_FACTOR);
        let mut banned_until = None;
        if failures >= policy.max_failures && entry.banned_until.is_none() {
            let until = now.saturating_add(policy.ban_time);
            entry.banned_until = Some(until);
            banned_until = Some(until);
        }
        self.counts.failures += 1;
        if banned_until.is_some() {
            self.counts.bans += 1;
        }
        Failure {
            failures,
            delay: policy.fail_delay.saturating_mul(factor),
            banned_until,
        }
    }

    /// Totals since start.
    pub(crate) fn counts(&self) -> LedgerCounts {
        self.counts
    }

    /// Addresses tracked now.
    pub(crate) fn tracked(&self) -> usize {
        self.entries.len()
    }
}

/// The ledger shared by the accept loop and the sessions, on the server's clock.
#[derive(Debug)]
pub(crate) struct Defender {
    ledger: Mutex<BanLedger>,
    /// Signalled whenever a verification in flight ends, for logins that were
    /// [`Turn::Busy`].
    turn_freed: Notify,
}

/// Why a login cannot go on: its address is banned.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Banned;

impl Defender {
    /// A defender with an empty ledger.
    pub(crate) fn new(policy: BanPolicy) -> Defender {
        Defender {
            ledger: Mutex::new(BanLedger::new(policy)),
            turn_freed: Notify::new(),
        }
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, BanLedger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a new connection from `ip` is refused (its address is banned).
    pub(crate) fn refuses(&self, ip: IpAddr) -> bool {
        self.ledger().banned_until(ip, clock::pool_now()).is_some()
    }

    /// Waits for `ip`'s turn to verify a password (see [`Turn::Busy`]).
    pub(crate) async fn begin_login(&self, ip: IpAddr) -> Result<LoginAttempt<'_>, Banned> {
        loop {
            // Registered before the ledger is asked, so an end in between is not missed.
            let freed = self.turn_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let turn = self.ledger().begin_login(ip, clock::pool_now());
            match turn {
                Turn::Go => {
                    return Ok(LoginAttempt {
                        defender: self,
                        ip,
                        reported: false,
                    })
                }
                Turn::Banned(_) => return Err(Banned),
                Turn::Busy => freed.await,
            }
        }
    }

    /// Totals since start, and the addresses tracked now.
    pub(crate) fn counts(&self) -> (LedgerCounts, usize) {
        let ledger = self.ledger();
        (ledger.counts(), ledger.tracked())
    }

    fn failed(&self, ip: IpAddr) -> Failure {
        let failure = self.ledger().login_failed(ip, clock::pool_now());
        self.turn_freed.notify_waiters();
        if let Some(until) = failure.banned_until {
            let secs = until.saturating_duration_since(clock::pool_now()).as_secs();
            tracing::warn!(
                peer = %address_key(ip),
                failures = failure.failures,
                ban_secs = secs,
                "address banned: too many failed logins"
            );
        }
        failure
    }
}

/// A login let through to verify its password. Report the outcome; one dropped unreported
/// (its session timed out or ended meanwhile) counts as a failure, since its password may
/// have been tried.
#[must_use = "report the outcome of the login"]
#[derive(Debug)]
pub(crate) struct LoginAttempt<'a> {
    defender: &'a Defender,
    ip: IpAddr,
    reported: bool,
}

impl LoginAttempt<'_> {
    /// The password was right.
    pub(crate) fn succeeded(mut self) {
        self.reported = true;
        self.defender
            .ledger()
            .login_succeeded(self.ip, clock::pool_now());
        self.defender.turn_freed.notify_waiters();
    }

    /// The password was wrong (or the name unknown).
    pub(crate) fn failed(mut self) -> Failure {
        self.reported = true;
        self.defender.failed(self.ip)
    }
}

impl Drop for LoginAttempt<'_> {
    fn drop(&mut self) {
        if !self.reported {
            let _ = self.defender.failed(self.ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn policy() -> BanPolicy {
        BanPolicy {
            max_failures: 3,
            window: 10 * MIN,
            ban_time: 15 * MIN,
            fail_delay: Duration::from_secs(1),
            capacity: 4,
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    fn at(secs: u64) -> Instant {
        Instant::ZERO + Duration::from_secs(secs)
    }

    /// One whole failed login at `now`.
    fn fail(ledger: &mut BanLedger, addr: IpAddr, now: Instant) -> Failure {
        assert_eq!(ledger.begin_login(addr, now), Turn::Go);
        ledger.login_failed(addr, now)
    }

    #[test]
    fn the_count_within_the_window_bans_until_the_ban_is_served() {
        let mut ledger = BanLedger::new(policy());
        assert_eq!(fail(&mut ledger, ip(1), at(0)).banned_until, None);
        assert_eq!(fail(&mut ledger, ip(1), at(100)).banned_until, None);
        assert_eq!(ledger.banned_until(ip(1), at(100)), None);
        let third = fail(&mut ledger, ip(1), at(200));
        let until = at(200) + 15 * MIN;
        assert_eq!(third.banned_until, Some(until));
        // Refused at connect and at PASS, others not.
        assert_eq!(ledger.banned_until(ip(1), at(201)), Some(until));
        assert_eq!(ledger.begin_login(ip(1), at(201)), Turn::Banned(until));
        assert_eq!(ledger.banned_until(ip(2), at(201)), None);
        assert_eq!(
            ledger.banned_until(ip(1), until - Duration::from_nanos(1)),
            Some(until)
        );
        // Served: a clean slate, so the next failure does not ban again.
        assert_eq!(ledger.banned_until(ip(1), until), None);
        assert_eq!(fail(&mut ledger, ip(1), until).failures, 1);
        assert_eq!(
            ledger.counts(),
            LedgerCounts {
                failures: 4,
                bans: 1,
                refused_connections: 2
            }
        );
    }

    #[test]
    fn failures_older_than_the_window_are_forgotten() {
        let mut ledger = BanLedger::new(policy());
        fail(&mut ledger, ip(1), at(0));
        fail(&mut ledger, ip(1), at(599));
        // The window opened at 0 closes at 600: this is the first failure of a new one.
        let third = fail(&mut ledger, ip(1), at(600));
        assert_eq!((third.failures, third.banned_until), (1, None));
        assert_eq!(ledger.counts().bans, 0);
    }

    #[test]
    fn a_success_does_not_forgive_failures() {
        let mut ledger = BanLedger::new(policy());
        fail(&mut ledger, ip(1), at(0));
        fail(&mut ledger, ip(1), at(1));
        assert_eq!(ledger.begin_login(ip(1), at(2)), Turn::Go);
        ledger.login_succeeded(ip(1), at(2));
        assert!(fail(&mut ledger, ip(1), at(3)).banned_until.is_some());
    }

    #[test]
    fn logins_in_flight_take_their_share_of_the_count() {
        let mut ledger = BanLedger::new(policy());
        // Three sessions race: all three may verify, a fourth waits for one of them.
        for _ in 0..3 {
            assert_eq!(ledger.begin_login(ip(1), at(0)), Turn::Go);
        }
        assert_eq!(ledger.begin_login(ip(1), at(0)), Turn::Busy);
        // A success frees a turn.
        ledger.login_succeeded(ip(1), at(1));
        assert_eq!(ledger.begin_login(ip(1), at(1)), Turn::Go);
        // Three failures: banned, and the waiters find the ban.
        ledger.login_failed(ip(1), at(2));
        ledger.login_failed(ip(1), at(2));
        let last = ledger.login_failed(ip(1), at(2));
        assert!(last.banned_until.is_some());
        assert!(matches!(ledger.begin_login(ip(1), at(2)), Turn::Banned(_)));
        assert_eq!(ledger.counts().failures, 3);
        // Other addresses are not held up.
        assert_eq!(ledger.begin_login(ip(2), at(2)), Turn::Go);
    }

    #[test]
    fn the_delay_doubles_per_failure_up_to_sixteen_times() {
        let mut ledger = BanLedger::new(BanPolicy {
            max_failures: 10,
            ..policy()
        });
        let delays: Vec<u64> = (0..7)
            .map(|i| fail(&mut ledger, ip(1), at(i)).delay.as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 16, 16]);
        // Per address: another one starts at the bottom.
        assert_eq!(fail(&mut ledger, ip(2), at(7)).delay.as_secs(), 1);
    }

    #[test]
    fn addresses_with_nothing_to_remember_are_not_kept() {
        let mut ledger = BanLedger::new(policy());
        assert_eq!(ledger.begin_login(ip(1), at(0)), Turn::Go);
        assert_eq!(ledger.tracked(), 1);
        ledger.login_succeeded(ip(1), at(0));
        assert_eq!(ledger.tracked(), 0);
        fail(&mut ledger, ip(1), at(0));
        assert_eq!(ledger.tracked(), 1);
        // A closed window empties the entry; asking about it drops it.
        assert_eq!(ledger.banned_until(ip(1), at(600)), None);
        assert_eq!(ledger.tracked(), 0);
    }

    #[test]
    fn a_full_table_evicts_old_failures_but_keeps_bans() {
        let mut ledger = BanLedger::new(policy());
        // ip(1) banned at 0; then ip(2..=4) fail once each: the table (4) is full.
        for _ in 0..3 {
            fail(&mut ledger, ip(1), at(0));
        }
        for n in 2..=4 {
            fail(&mut ledger, ip(n), at(u64::from(n)));
        }
        assert_eq!(ledger.tracked(), 4);
        // A sprayer from many new addresses: each evicts the oldest failure, never the ban.
        for n in 10..200 {
            fail(&mut ledger, ip(n), at(u64::from(n)));
            assert!(ledger.tracked() <= 4);
            assert!(ledger.banned_until(ip(1), at(u64::from(n))).is_some());
        }
        assert_eq!(ledger.tracked(), 4);
        // ip(2) was evicted: its count starts again.
        assert_eq!(fail(&mut ledger, ip(2), at(300)).failures, 1);
    }

    #[test]
    fn a_table_full_of_bans_gives_up_the_one_ending_first() {
        let mut ledger = BanLedger::new(BanPolicy {
            max_failures: 1,
            ..policy()
        });
        for n in 1..=4 {
            fail(&mut ledger, ip(n), at(u64::from(n)));
        }
        fail(&mut ledger, ip(5), at(5));
        assert_eq!(ledger.tracked(), 4);
        assert_eq!(ledger.banned_until(ip(1), at(6)), None);
        for n in 2..=5 {
            assert!(ledger.banned_until(ip(n), at(6)).is_some(), "{n}");
        }
    }

    #[test]
    fn expired_entries_make_room_before_anything_is_evicted() {
        let mut ledger = BanLedger::new(policy());
        for n in 1..=4 {
            fail(&mut ledger, ip(n), at(0));
        }
        // At 600 every window has closed: the new address takes a freed place.
        fail(&mut ledger, ip(9), at(600));
        assert_eq!(ledger.tracked(), 1);
    }

    #[test]
    fn ipv6_addresses_share_their_64_prefix_and_mapped_ipv4_is_ipv4() {
        let mut ledger = BanLedger::new(BanPolicy {
            max_failures: 2,
            ..policy()
        });
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        fail(&mut ledger, a, at(0));
        assert!(fail(&mut ledger, b, at(1)).banned_until.is_some());
        assert!(ledger.banned_until(a, at(2)).is_some());
        assert!(ledger.banned_until(other, at(2)).is_none());
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(address_key(mapped), ip(7));
    }
}
