//! Capacity formulas (DESIGN.md section 1).
//!
//! A port leased for a mean time h, then quarantined for T after a server-side close (a
//! fraction f of leases), is busy h + f·T per lease on average. With N·A ports:
//!
//! * fluid bound: `rate_max = N·A / (h + f·T)` leases per second;
//! * Poisson arrivals, no waiting, one lease per port, port-wide quarantine: a loss system
//!   with N·A servers and offered load `λ·(h + f·T)` erlangs, whose refusal probability is
//!   Erlang B, whatever the distribution of the hold time (insensitivity).

/// The fluid bound `N·A / (h + f·T)`, in leases per second (`ports_total` is N·A).
/// Infinite when every lease is instantaneous and never quarantined.
pub fn rate_max(
    ports_total: u64,
    hold_s: f64,
    server_close_fraction: f64,
    quarantine_s: f64,
) -> f64 {
    ports_total as f64 / busy_time(hold_s, server_close_fraction, quarantine_s)
}

/// Mean time a port stays unusable per lease, `h + f·T`, in seconds.
pub fn busy_time(hold_s: f64, server_close_fraction: f64, quarantine_s: f64) -> f64 {
    hold_s + server_close_fraction * quarantine_s
}

/// Offered load `λ·(h + f·T)`, in erlangs.
pub fn offered_load(rate: f64, hold_s: f64, server_close_fraction: f64, quarantine_s: f64) -> f64 {
    rate * busy_time(hold_s, server_close_fraction, quarantine_s)
}

/// Erlang B: the probability that a Poisson arrival finds all `servers` busy, for an offered
/// load in erlangs.
///
/// Uses the recurrence `B(0) = 1`, `1/B(n) = 1 + n / (A·B(n-1))`, computed on the inverse
/// `I(n) = 1/B(n) = 1 + I(n-1)·n/A`, which only adds and multiplies positive numbers: stable
/// for any number of servers, O(servers). The factorial formula overflows beyond ~170.
pub fn erlang_b(servers: u64, offered_load_erlangs: f64) -> f64 {
    if servers == 0 {
        return 1.0;
    }
    if offered_load_erlangs.is_nan() || offered_load_erlangs <= 0.0 {
        return 0.0;
    }
    if offered_load_erlangs.is_infinite() {
        return 1.0;
    }
    let a = offered_load_erlangs;
    let mut inv = 1.0f64;
    for n in 1..=servers {
        inv = 1.0 + inv * (n as f64) / a;
        if inv.is_infinite() {
            return 0.0;
        }
    }
    1.0 / inv
}

/// The smallest number of ports per address N such that N·`addresses` ports refuse at most
/// `target_refusal` of Poisson arrivals at `rate` (Erlang B, one lease per port, port-wide
/// quarantine). Zero when no port is needed (no load, or a target of 1 or more).
pub fn min_ports_for(
    rate: f64,
    hold_s: f64,
    server_close_fraction: f64,
    quarantine_s: f64,
    addresses: u64,
    target_refusal: f64,
) -> u64 {
    let a = offered_load(rate, hold_s, server_close_fraction, quarantine_s);
    if target_refusal >= 1.0 || a.is_nan() || a <= 0.0 {
        return 0;
    }
    let addresses = addresses.max(1);
    // Refusal can only reach zero with infinitely many ports; aim for the smallest positive.
    let target = target_refusal.max(f64::MIN_POSITIVE);
    let mut inv = 1.0f64;
    let mut n = 0u64;
    while 1.0 / inv > target {
        n += 1;
        inv = 1.0 + inv * (n as f64) / a;
        if n == u64::MAX {
            break;
        }
    }
    n.div_ceil(addresses)
}

/// The largest arrival rate (leases per second) whose Erlang B refusal stays at or below
/// `target_refusal` on `ports_total` ports, each busy `busy_s` (`h + f·T`) per lease: the
/// Poisson counterpart of [`rate_max`]. Found by bisection, since Erlang B grows with the load;
/// infinite when leases keep no port busy.
pub fn rate_at_refusal(ports_total: u64, busy_s: f64, target_refusal: f64) -> f64 {
    if busy_s <= 0.0 || busy_s.is_nan() {
        return f64::INFINITY;
    }
    // Erlang B refuses at least 1 - N/A, so above 4·rate_max it is past any target below 3/4.
    let (mut lo, mut hi) = (0.0f64, 4.0 * ports_total as f64 / busy_s);
    for _ in 0..60 {
        let mid = (lo + hi) / 2.0;
        if erlang_b(ports_total, mid * busy_s) <= target_refusal {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_at_refusal_sits_on_the_target() {
        // 20 ports, 60 s busy: the rate refused at 0.1% is below rate_max, and Erlang B is
        // at the target there (bisection to 60 halvings).
        let r = rate_at_refusal(20, 60.0, 0.001);
        assert!(r > 0.0 && r < 20.0 / 60.0);
        assert!((erlang_b(20, r * 60.0) - 0.001).abs() < 1e-9);
        assert_eq!(rate_at_refusal(20, 0.0, 0.001), f64::INFINITY);
    }

    #[test]
    fn known_values() {
        // Classic case: 4000 ports, h ~ 0, every close on the server, T = 120 s.
        let r = rate_max(4_000, 0.0, 1.0, 120.0);
        assert!((r - 33.333).abs() < 0.001, "{r}");
        // Small tables: B(1, 1) = 1/2, B(2, 1) = 1/5, B(3, 2) = 4/19.
        assert!((erlang_b(1, 1.0) - 0.5).abs() < 1e-12);
        assert!((erlang_b(2, 1.0) - 0.2).abs() < 1e-12);
        assert!((erlang_b(3, 2.0) - 4.0 / 19.0).abs() < 1e-12);
        // Thousands of servers stay finite and sensible.
        let b = erlang_b(4_000, 3_800.0);
        assert!(b > 0.0 && b < 1e-3, "{b}");
        let b = erlang_b(4_000, 6_000.0);
        assert!((b - (1.0 - 4_000.0 / 6_000.0)).abs() < 0.01, "{b}");
        assert_eq!(erlang_b(0, 1.0), 1.0);
        assert_eq!(erlang_b(10, 0.0), 0.0);
    }

    #[test]
    fn min_ports_inverts_erlang_b() {
        let n = min_ports_for(30.0, 0.0, 1.0, 120.0, 1, 0.01);
        assert!(erlang_b(n, 3_600.0) <= 0.01);
        assert!(erlang_b(n - 1, 3_600.0) > 0.01);
        let n2 = min_ports_for(30.0, 0.0, 1.0, 120.0, 2, 0.01);
        assert_eq!(n2, n.div_ceil(2));
        assert_eq!(min_ports_for(0.0, 1.0, 1.0, 1.0, 1, 0.01), 0);
    }
}
