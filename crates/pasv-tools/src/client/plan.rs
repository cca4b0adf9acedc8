//! The capacity planner behind `pasv plan`, on pasv-pool's model (`docs/CAPACITY.md`).
//!
//! With N ports on each of A addresses, mean lease time h, a fraction f of leases closed by
//! the server and a quarantine T, the pool sustains at most `rate_max = N·A / (h + f·T)`
//! transfers per second ([`pasv_pool::capacity::rate_max`]). Random (Poisson) arrivals that
//! are refused rather than queued see the Erlang B refusal rate for N·A servers and an
//! offered load `λ·(h + f·T)` ([`pasv_pool::capacity::erlang_b`]).

use std::fmt;

use std::time::Duration;

use pasv_pool::sim::{self, Arrivals, HoldDist, SimConfig};
use pasv_pool::{capacity, PortSet, QuarantineScope};
use serde::Serialize;

/// The planner's inputs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanInput {
    /// Lowest port of the passive range.
    pub port_lo: u16,
    /// Highest port of the passive range.
    pub port_hi: u16,
    /// Local addresses the pool spreads over (A).
    pub addresses: u64,
    /// Quarantine after a server-side close, seconds (T; 60 on Linux).
    pub time_wait_s: f64,
    /// Mean lease time (listen + transfer), seconds (h).
    pub hold_s: f64,
    /// Fraction of leases the server closes first (f): 1 for downloads, 0 for uploads.
    pub server_close: f64,
    /// Target rate, transfers per second.
    pub rate: Option<f64>,
    /// Acceptable refusal rate for sizing (0.001 = 0.1%).
    pub target_refusal: f64,
    /// How long an arrival may wait for a port before it is refused (pasvd's `pasv_wait`);
    /// with a rate, the simulator measures this bounded-wait case.
    pub max_wait_s: f64,
}

/// The simulated bounded-wait case: Poisson arrivals at the target rate that may wait up to
/// `max_wait_s` for the next port ([`pasv_pool::sim`], seeded, port-wide quarantine,
/// exponential holds).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BoundedWait {
    /// The longest wait allowed, seconds.
    pub max_wait_s: f64,
    /// Measured arrivals.
    pub arrivals: u64,
    /// Share refused after waiting `max_wait_s`.
    pub refusal_rate: f64,
    /// Share refused in the same run without waiting (checks the Erlang B figure).
    pub refusal_rate_no_wait: f64,
    /// Median wait of served arrivals, seconds.
    pub wait_p50_s: f64,
    /// 99th percentile wait of served arrivals, seconds.
    pub wait_p99_s: f64,
}

/// One point of the refusal curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CurvePoint {
    /// Offered rate as a fraction of `rate_max`.
    pub load_fraction: f64,
    /// Offered rate, transfers per second.
    pub rate: f64,
    /// Erlang B refusal probability at that rate.
    pub refusal_rate: f64,
}

/// The planner's answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// The inputs.
    pub input: PlanInput,
    /// Ports per address (N).
    pub ports: u64,
    /// Ports in all (N·A).
    pub ports_total: u64,
    /// `h + f·T`, seconds a port is unusable per lease.
    pub busy_time_s: f64,
    /// The fluid bound `N·A / (h + f·T)`, transfers per second.
    pub rate_max: f64,
    /// `(rate_max - rate) / rate_max`: the share of capacity left at the target rate
    /// (negative when the rate exceeds the bound); `null` without a rate.
    pub headroom: Option<f64>,
    /// `λ·(h + f·T)`, erlangs; `null` without a rate.
    pub offered_load_erlangs: Option<f64>,
    /// Erlang B refusal probability at the target rate; `null` without a rate.
    pub refusal_rate: Option<f64>,
    /// Smallest ports per address whose refusal rate at the target rate is at most
    /// `target_refusal`; `null` without a rate.
    pub min_ports_for_rate: Option<u64>,
    /// That smallest range, starting at `port_lo` (`"lo-hi"`), when it fits below 65536.
    pub min_range: Option<String>,
    /// The largest rate whose refusal rate stays at or below `target_refusal` with this range.
    pub rate_at_target_refusal: f64,
    /// Refusal rate against offered load, 10% to 150% of `rate_max`.
    pub curve: Vec<CurvePoint>,
    /// The simulated bounded-wait case; `null` without a rate, or when the simulation would
    /// be too large (more than 2 million arrivals) or cannot run.
    pub bounded_wait: Option<BoundedWait>,
}

/// Computes the plan.
pub fn plan(input: PlanInput) -> Plan {
    let ports = u64::from(input.port_hi.saturating_sub(input.port_lo)) + 1;
    let addresses = input.addresses.max(1);
    let ports_total = ports.saturating_mul(addresses);
    let (h, f, t) = (input.hold_s, input.server_close, input.time_wait_s);
    let busy = capacity::busy_time(h, f, t);
    let rate_max = capacity::rate_max(ports_total, h, f, t);
    let offered = input.rate.map(|r| capacity::offered_load(r, h, f, t));
    let refusal_rate = offered.map(|a| capacity::erlang_b(ports_total, a));
    let min_ports = input
        .rate
        .map(|r| capacity::min_ports_for(r, h, f, t, addresses, input.target_refusal));
    let min_range = min_ports.and_then(|n| {
        let hi = u64::from(input.port_lo).saturating_add(n.max(1) - 1);
        (hi <= 65535).then(|| format!("{}-{}", input.port_lo, hi))
    });
    let curve = (1..=15)
        .map(|i| {
            let load_fraction = f64::from(i) / 10.0;
            let rate = rate_max * load_fraction;
            CurvePoint {
                load_fraction,
                rate,
                refusal_rate: capacity::erlang_b(ports_total, rate * busy),
            }
        })
        .collect();
    Plan {
        ports,
        ports_total,
        busy_time_s: busy,
        rate_max,
        headroom: input.rate.map(|r| (rate_max - r) / rate_max),
        offered_load_erlangs: offered,
        refusal_rate,
        min_ports_for_rate: min_ports,
        min_range,
        rate_at_target_refusal: capacity::rate_at_refusal(ports_total, busy, input.target_refusal),
        curve,
        bounded_wait: input.rate.and_then(|r| simulate(&input, r)),
        input,
    }
}

/// Runs the simulator with and without the wait. The run lasts 20 busy times after a
/// warm-up of 2 (so quarantines reach their steady state), within 2 million arrivals.
fn simulate(input: &PlanInput, rate: f64) -> Option<BoundedWait> {
    const MAX_ARRIVALS: f64 = 2e6;
    let busy = capacity::busy_time(input.hold_s, input.server_close, input.time_wait_s);
    if !(rate > 0.0 && busy > 0.0 && input.max_wait_s.is_finite()) {
        return None;
    }
    let warmup = 2.0 * busy;
    let duration = warmup + (20.0 * busy).max(20_000.0 / rate);
    if rate * duration > MAX_ARRIVALS {
        return None;
    }
    let secs = |s: f64| Duration::try_from_secs_f64(s).ok();
    let hold = secs(input.hold_s)?;
    let mut config = SimConfig::new(1);
    config.ports = PortSet::range(input.port_lo, input.port_hi).ok()?;
    config.addresses = usize::try_from(input.addresses).ok()?;
    config.quarantine = secs(input.time_wait_s)?;
    config.scope = QuarantineScope::Port;
    config.arrivals = Arrivals::Poisson { rate };
    config.hold = if hold.is_zero() {
        HoldDist::Fixed(hold)
    } else {
        HoldDist::Exponential(hold)
    };
    config.server_close_fraction = input.server_close;
    config.warmup = secs(warmup)?;
    config.duration = secs(duration)?;
    config.max_wait = secs(input.max_wait_s)?;
    let waiting = sim::run(&config).ok()?;
    config.max_wait = Duration::ZERO;
    let no_wait = sim::run(&config).ok()?;
    Some(BoundedWait {
        max_wait_s: input.max_wait_s,
        arrivals: waiting.offered,
        refusal_rate: waiting.refusal_rate,
        refusal_rate_no_wait: no_wait.refusal_rate,
        wait_p50_s: waiting.wait.p50,
        wait_p99_s: waiting.wait.p99,
    })
}

/// Formats a probability as a percentage with enough digits to read small values.
pub fn percent(p: f64) -> String {
    let pct = p * 100.0;
    if pct == 0.0 {
        "0%".into()
    } else if pct < 1e-9 {
        "<1e-9%".into()
    } else if pct >= 1.0 {
        format!("{pct:.1}%")
    } else if pct >= 0.01 {
        format!("{pct:.3}%")
    } else {
        format!("{pct:.2e}%")
    }
}

impl Plan {
    /// The ASCII chart of refusal rate against offered load: one row per curve point, the bar
    /// on a log scale from 1e-6 (empty) to 1 (full), `*` marking the target rate's row.
    pub fn chart(&self) -> String {
        const WIDTH: f64 = 40.0;
        let mut out = String::from("refusal rate vs offered load (log scale, 1e-6 .. 100%)\n");
        for point in &self.curve {
            let p = point.refusal_rate.max(1e-12);
            let filled = (((p.log10() + 6.0) / 6.0).clamp(0.0, 1.0) * WIDTH).round() as usize;
            let marker = match self.input.rate {
                Some(r) if (point.rate - r).abs() <= self.rate_max * 0.05 => '*',
                _ => ' ',
            };
            let decimals = if self.rate_max < 10.0 { 3 } else { 1 };
            out.push_str(&format!(
                "{marker}{:>4.0}% {:>10.decimals$}/s |{:<width$}| {}\n",
                point.load_fraction * 100.0,
                point.rate,
                "#".repeat(filled),
                percent(point.refusal_rate),
                width = WIDTH as usize
            ));
        }
        out
    }
}

impl fmt::Display for Plan {
    /// The human summary `pasv plan` prints (without the chart).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.input;
        writeln!(
            f,
            "range {}-{} ({} ports) x {} address(es) = {} ports",
            i.port_lo, i.port_hi, self.ports, i.addresses, self.ports_total
        )?;
        writeln!(
            f,
            "busy per lease  h + f*T = {} + {} * {} = {:.3} s",
            i.hold_s, i.server_close, i.time_wait_s, self.busy_time_s
        )?;
        writeln!(f, "rate_max        {:.2} transfers/s", self.rate_max)?;
        writeln!(
            f,
            "at {} refusal   {:.2} transfers/s (Poisson arrivals, no waiting)",
            percent(i.target_refusal),
            self.rate_at_target_refusal
        )?;
        if let (Some(rate), Some(headroom), Some(refusal)) =
            (i.rate, self.headroom, self.refusal_rate)
        {
            writeln!(f, "target rate     {rate:.2} transfers/s")?;
            // Headroom is signed: below zero the target lies above rate_max, a range that no
            // allocation strategy can serve, and `percent` (for probabilities) would hide it.
            if headroom >= 0.0 {
                writeln!(
                    f,
                    "headroom        {:.1}% of rate_max unused",
                    headroom * 100.0
                )?;
            } else {
                writeln!(
                    f,
                    "headroom        {:.1}%: the target is {:.1}x rate_max, over capacity",
                    headroom * 100.0,
                    rate / self.rate_max
                )?;
            }
            writeln!(f, "refusal rate    {} (Erlang B)", percent(refusal))?;
        }
        if let Some(w) = &self.bounded_wait {
            writeln!(
                f,
                "simulated       {} refused without waiting, {} when waiting up to {} s \
                 (wait p50 {:.3} s, p99 {:.3} s; {} arrivals)",
                percent(w.refusal_rate_no_wait),
                percent(w.refusal_rate),
                w.max_wait_s,
                w.wait_p50_s,
                w.wait_p99_s,
                w.arrivals
            )?;
        }
        if let Some(n) = self.min_ports_for_rate {
            let range = self.min_range.as_deref().unwrap_or("(beyond port 65535)");
            writeln!(
                f,
                "smallest range  {n} ports per address ({range}) for at most {} refused",
                percent(i.target_refusal)
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(lo: u16, hi: u16, t: f64, h: f64, f: f64, rate: Option<f64>) -> PlanInput {
        PlanInput {
            port_lo: lo,
            port_hi: hi,
            addresses: 1,
            time_wait_s: t,
            hold_s: h,
            server_close: f,
            rate,
            target_refusal: 0.001,
            max_wait_s: 2.0,
        }
    }

    #[test]
    fn classic_case() {
        let p = plan(input(50000, 53999, 120.0, 0.0, 1.0, Some(30.0)));
        assert!((p.rate_max - 4000.0 / 120.0).abs() < 1e-9);
        assert!((p.headroom.unwrap() - (1.0 - 30.0 / (4000.0 / 120.0))).abs() < 1e-9);
        let n = p.min_ports_for_rate.unwrap();
        assert!(capacity::erlang_b(n, 3600.0) <= 0.001);
        assert!(capacity::erlang_b(n - 1, 3600.0) > 0.001);
        assert!(p.rate_at_target_refusal < p.rate_max);
        assert_eq!(p.chart().lines().count(), 16);
    }

    #[test]
    fn simulation_agrees_with_erlang_b_and_waiting_helps() {
        // 20 ports at 95% of rate_max: Erlang B says about 13% refused.
        let rate = 0.95 * 20.0 / 60.0;
        let p = plan(input(1, 20, 60.0, 0.0, 1.0, Some(rate)));
        let w = p.bounded_wait.expect("simulated");
        let b = p.refusal_rate.unwrap();
        assert!(
            (w.refusal_rate_no_wait - b).abs() < 0.03,
            "{} vs {b}",
            w.refusal_rate_no_wait
        );
        assert!(w.refusal_rate < w.refusal_rate_no_wait, "{w:?}");
    }
}
