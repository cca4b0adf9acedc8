//! Prints the tables of `docs/CAPACITY.md`: the formulas of `pasv_pool::capacity` beside the
//! simulator's measurements.
//!
//! `cargo run -p pasv-pool --release --example capacity_table`

use std::time::Duration;

use pasv_pool::capacity::{erlang_b, min_ports_for, offered_load, rate_max};
use pasv_pool::sim::{run, Arrivals, BindSpec, HoldDist, SimConfig, SimStrategy};
use pasv_pool::strategy::BlindKind;
use pasv_pool::{Exclusivity, QuarantineScope, StrategyKind};

fn rate_of(c: &SimConfig) -> f64 {
    match c.arrivals {
        Arrivals::Poisson { rate } => rate,
        Arrivals::ClosedLoop { .. } => 0.0,
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("## Fluid bound: the classic case\n");
    println!(
        "| ports | h | f | T | rate_max (formula) | offered | served/s (sim) | sim / formula |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (ports, t, load) in [
        (4000u16, 120u64, 1.2),
        (4000, 120, 2.0),
        (20, 60, 1.2),
        (1000, 60, 1.5),
    ] {
        let mut c = SimConfig::new(ports);
        c.quarantine = Duration::from_secs(t);
        c.hold = HoldDist::Fixed(Duration::from_millis(10));
        c.warmup = Duration::from_secs(2 * t);
        c.duration = Duration::from_secs(42 * t);
        c.seed = 11;
        let c = c.with_load(load);
        let r = run(&c)?;
        let rm = rate_max(u64::from(ports), 0.01, 1.0, t as f64);
        println!(
            "| {ports} | 10 ms | 1 | {t} s | {rm:.3}/s | {:.0}% | {:.3}/s | {:.4} |",
            load * 100.0,
            r.served_rate,
            r.served_rate / rm
        );
    }

    println!("\n## Erlang B: Poisson arrivals, no waiting, one lease per port, port scope\n");
    println!(
        "T = 1 s, f = 0.5, h exponential (mean 50 ms); time scales, so these hold for any T.\n"
    );
    println!(
        "| ports | load | offered | refused (sim) | Erlang B | sim − theory | within 5% or 0.002 |"
    );
    println!("|---|---|---|---|---|---|---|");
    for ports in [20u16, 100, 1000, 4000] {
        for load in [0.5, 0.8, 0.95, 1.0, 1.2, 1.5] {
            let mut c = SimConfig::new(ports);
            c.quarantine = Duration::from_secs(1);
            c.server_close_fraction = 0.5;
            c.hold = HoldDist::Exponential(Duration::from_millis(50));
            c.warmup = Duration::from_secs(10);
            c.seed = u64::from(ports) * 100 + (load * 100.0) as u64;
            let mut c = c.with_load(load);
            // At least a million arrivals and 2,000 mean busy times (0.55 s): near full load
            // a large range stays correlated for a few busy times.
            c.duration = Duration::from_secs_f64(10.0 + (1_000_000.0 / rate_of(&c)).max(1_100.0));
            let r = run(&c)?;
            let err = r.refusal_rate - r.erlang_b;
            let ok = err.abs() <= (0.05 * r.erlang_b).max(0.002);
            println!(
                "| {ports} | {:.0}% | {} | {:.5} | {:.5} | {:+.5} | {} |",
                load * 100.0,
                r.offered,
                r.refusal_rate,
                r.erlang_b,
                err,
                if ok { "yes" } else { "NO" }
            );
        }
    }

    println!("\n## A short wait for the next expiry (Poisson, T = 60 s, f = 1, h ~ exp(100 ms))\n");
    println!(
        "| ports | load | max_wait | refused | Erlang B | served after waiting: p50 | p99 | max |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (ports, load, secs_sim) in [(20u16, 0.95, 2_000_000u64), (1000, 1.0, 20_000)] {
        for wait_ms in [0u64, 500, 2_000, 10_000, 60_000] {
            let mut c = SimConfig::new(ports);
            c.hold = HoldDist::Exponential(Duration::from_millis(100));
            c.max_wait = Duration::from_millis(wait_ms);
            c.warmup = Duration::from_secs(600);
            c.duration = Duration::from_secs(600 + secs_sim);
            c.seed = 5;
            let c = c.with_load(load);
            let r = run(&c)?;
            println!(
                "| {ports} | {:.0}% | {:.1} s | {:.3}% | {:.3}% | {:.3} s | {:.3} s | {:.3} s |",
                load * 100.0,
                wait_ms as f64 / 1000.0,
                r.refusal_rate * 100.0,
                r.erlang_b * 100.0,
                r.wait.p50,
                r.wait.p99,
                r.wait.max
            );
        }
    }

    println!("\n## Sizing: ports needed for a refusal target (Erlang B, h = 0, f = 1, T = 60 s)\n");
    println!(
        "| rate | target | ports (1 address) | ports (4 addresses, each) | fluid N = rate·T |"
    );
    println!("|---|---|---|---|---|");
    for rate in [1.0, 10.0, 33.3, 100.0] {
        for target in [0.01, 0.001] {
            println!(
                "| {rate}/s | {target} | {} | {} | {:.0} |",
                min_ports_for(rate, 0.0, 1.0, 60.0, 1, target),
                min_ports_for(rate, 0.0, 1.0, 60.0, 4, target),
                rate * 60.0
            );
        }
    }
    let a = offered_load(33.0, 0.0, 1.0, 120.0);
    println!(
        "\n4000 ports, T = 120 s at 33/s: offered {a:.0} erlangs, Erlang B refusal {:.4}.",
        erlang_b(4000, a)
    );

    println!("\n## Strategies at 20 ports: K closed-loop sessions on Linux with SO_REUSEADDR\n");
    println!("Scope None (re-binding over TIME_WAIT works), every transfer closed by the server");
    println!("(RETR), h ~ exp(0.5 ms), TIME_WAIT 60 s, 10 s simulated.\n");
    println!("| strategy | K | served/s | refused | killed | outside range | binds/success | bind µs/success | peak TIME_WAIT |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let strategies = [
        SimStrategy::Accounted(StrategyKind::LeastRecentlyReleased),
        SimStrategy::Accounted(StrategyKind::RoundRobin),
        SimStrategy::Accounted(StrategyKind::LowestFree),
        SimStrategy::Accounted(StrategyKind::KeyedPermutation),
        SimStrategy::Blind(BlindKind::Vsftpd),
        SimStrategy::Blind(BlindKind::ProFtpd),
        SimStrategy::Blind(BlindKind::PureFtpd),
        SimStrategy::Blind(BlindKind::Pyftpdlib),
        SimStrategy::Blind(BlindKind::Libunftp),
        SimStrategy::Blind(BlindKind::FileZilla),
    ];
    for k in [1usize, 8, 32] {
        for s in strategies {
            let mut c = SimConfig::new(20);
            c.strategy = s;
            c.scope = QuarantineScope::None;
            c.exclusivity = Exclusivity::PerPort;
            c.bind = BindSpec::default();
            c.arrivals = Arrivals::ClosedLoop {
                sessions: k,
                backoff: Duration::from_millis(100),
            };
            c.hold = HoldDist::Exponential(Duration::from_micros(500));
            c.duration = Duration::from_secs(10);
            c.seed = 3;
            let r = run(&c)?;
            println!(
                "| {} | {k} | {:.0} | {} | {} | {} | {:.2} | {:.1} | {} |",
                s.name(),
                r.served_rate,
                r.refused,
                r.sessions_killed,
                r.outside_range,
                r.binds_per_success,
                if r.served > 0 {
                    r.bind_cost_s * 1e6 / r.served as f64
                } else {
                    0.0
                },
                r.peak_time_wait,
            );
        }
    }
    Ok(())
}
