//! `pasv simulate`: its numbers are the simulator's own, bad arguments exit 1 with a message
//! that names the argument.

use std::process::{Command, Output};
use std::time::Duration;

use pasv_pool::sim::{run, BindSpec, HoldDist, SimConfig, SimStrategy};
use pasv_pool::strategy::BlindKind;
use pasv_pool::{PortSet, StrategyKind};

fn pasv(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pasv"))
        .arg("simulate")
        .args(args)
        .output()
        .expect("run pasv")
}

/// The simulator run the command should make for one cell, built here from `sim` directly.
fn expected(strategy: SimStrategy, load: f64) -> pasv_pool::sim::SimReport {
    let mut c = SimConfig::new(1);
    c.ports = PortSet::range(61000, 61009).unwrap();
    c.strategy = strategy;
    c.quarantine = Duration::from_secs(2);
    c.bind = BindSpec {
        reuse_addr: false,
        time_wait: Duration::from_secs(2),
        conntrack: None,
    };
    c.hold = HoldDist::Exponential(Duration::from_millis(50));
    c.warmup = Duration::from_secs(3);
    c.duration = Duration::from_secs(3 + 40);
    c.seed = 11;
    run(&c.with_load(load)).unwrap()
}

const CASE: [&str; 16] = [
    "--ports",
    "61000-61009",
    "--time-wait",
    "2",
    "--strategy",
    "lowest-free,pure-ftpd",
    "--load",
    "0.5,1.5",
    "--bind-model",
    "no-reuseaddr",
    "--hold-ms",
    "50",
    "--duration",
    "40",
    "--warmup",
    "3",
];

#[test]
fn json_cells_are_the_simulators_numbers() {
    let mut args = CASE.to_vec();
    args.extend(["--seed", "11", "--json"]);
    let out = pasv(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cells: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cells = cells.as_array().unwrap();
    let order = [
        (SimStrategy::Accounted(StrategyKind::LowestFree), 0.5),
        (SimStrategy::Accounted(StrategyKind::LowestFree), 1.5),
        (SimStrategy::Blind(BlindKind::PureFtpd), 0.5),
        (SimStrategy::Blind(BlindKind::PureFtpd), 1.5),
    ];
    assert_eq!(cells.len(), order.len());
    for (cell, (strategy, load)) in cells.iter().zip(order) {
        let r = expected(strategy, load);
        assert!(r.offered > 0);
        assert_eq!(cell["strategy"], strategy.name());
        assert_eq!(cell["load"], load);
        assert_eq!(cell["offered"], r.offered);
        assert_eq!(cell["served"], r.served);
        assert_eq!(cell["refused"], r.refused);
        assert_eq!(cell["sessions_killed"], r.sessions_killed);
        assert_eq!(cell["outside_range"], r.outside_range);
        assert_eq!(cell["bind_attempts"], r.bind_attempts);
        assert_eq!(cell["erlang_b"], r.erlang_b);
        let bind_us = r.bind_cost_s * 1e6 / r.served.max(1) as f64;
        assert_eq!(cell["bind_us_per_success"], bind_us);
    }
}

#[test]
fn table_rows_are_the_simulators_numbers() {
    let mut args = CASE.to_vec();
    args.extend(["--seed", "11"]);
    let out = pasv(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let title = lines.next().unwrap();
    assert!(
        title.contains("10 ports") && title.contains("seed 11"),
        "{title}"
    );
    assert!(lines.next().unwrap().starts_with("strategy"));
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 4, "{text}");
    let r = expected(SimStrategy::Blind(BlindKind::PureFtpd), 1.5);
    let fields: Vec<&str> = rows[3].split_whitespace().collect();
    assert_eq!(fields[0], "pure-ftpd");
    assert_eq!(fields[1], "1.50");
    assert_eq!(fields[2], r.offered.to_string());
    assert_eq!(fields[3], r.served.to_string());
    assert_eq!(fields[4], r.refused.to_string());
    assert_eq!(fields[10], format!("{:.4}", r.erlang_b));
}

#[test]
fn bad_arguments_exit_1_naming_the_argument() {
    for (args, needle) in [
        (
            vec!["--ports", "61009-61000", "--time-wait", "1"],
            "--ports",
        ),
        (vec!["--ports", "0-10", "--time-wait", "1"], "--ports"),
        (vec!["--ports", "61000", "--time-wait", "1"], "LO-HI"),
        (vec!["--ports", "61000-61009"], "--time-wait"),
        (
            vec!["--ports", "61000-61009", "--time-wait=-1"],
            "not a non-negative",
        ),
        (
            vec![
                "--ports",
                "61000-61009",
                "--time-wait",
                "1",
                "--strategy",
                "lrr,nope",
            ],
            "unknown strategy \"nope\"",
        ),
        (
            vec![
                "--ports",
                "61000-61009",
                "--time-wait",
                "1",
                "--load",
                "0.5,x",
            ],
            "bad load \"x\"",
        ),
        (
            vec!["--ports", "61000-61009", "--time-wait", "1", "--load=-1"],
            "bad load \"-1\"",
        ),
        (
            vec![
                "--ports",
                "61000-61009",
                "--time-wait",
                "1",
                "--bind-model",
                "bsd",
            ],
            "unknown bind model",
        ),
        (
            vec![
                "--ports",
                "61000-61009",
                "--time-wait",
                "0",
                "--hold-ms",
                "0",
            ],
            "both zero",
        ),
        (
            vec![
                "--ports",
                "1-65535",
                "--time-wait",
                "0.001",
                "--duration",
                "100000",
            ],
            "arrivals per cell",
        ),
    ] {
        let out = pasv(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}
