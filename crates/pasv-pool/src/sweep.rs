//! Strategies × load: the comparison behind `pasv simulate` and `cargo xtask bench
//! --strategies`.
//!
//! Every strategy (the accounted ones of [`StrategyKind`] and the blind models of other
//! servers in [`BlindKind`]) is run by [`crate::sim::run`] at each load, a multiple of the
//! configuration's fluid bound `rate_max`, with Poisson arrivals, a quarantine T equal to the
//! kernel's TIME_WAIT and every transfer closed by the server. Each row sets the simulator's
//! numbers next to Erlang B, the refusal rate of the capacity model for the same offered load.
//!
//! ```
//! use pasv_pool::sweep::{sweep, SweepSpec};
//!
//! let mut spec = SweepSpec::new(pasv_pool::PortSet::range(60000, 60019)?);
//! spec.strategies = vec!["lrr".parse()?];
//! spec.loads = vec![0.95];
//! spec.duration = std::time::Duration::from_secs(60);
//! let rows = sweep(&spec)?;
//! assert_eq!(rows.len(), 1);
//! print!("{}", pasv_pool::sweep::table(&spec, &rows));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt::{self, Write as _};
use std::str::FromStr;
use std::time::Duration;

use crate::config::{ConfigError, PortSet, StrategyKind};
use crate::sim::{run, BindSpec, HoldDist, SimConfig, SimReport, SimStrategy};
use crate::strategy::BlindKind;

/// Every strategy the simulator knows: the accounted ones first, then the blind models.
pub fn all_strategies() -> Vec<SimStrategy> {
    StrategyKind::ALL
        .iter()
        .map(|&k| SimStrategy::Accounted(k))
        .chain(BlindKind::ALL.iter().map(|&k| SimStrategy::Blind(k)))
        .collect()
}

/// A strategy name that neither [`StrategyKind`] nor [`BlindKind`] knows.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown strategy {name:?} (expected all, {})", strategy_names())]
pub struct UnknownStrategy {
    /// The name that was given.
    pub name: String,
}

fn strategy_names() -> String {
    all_strategies()
        .iter()
        .map(|s| s.name())
        .collect::<Vec<_>>()
        .join(", ")
}

impl FromStr for SimStrategy {
    type Err = UnknownStrategy;
    /// An accounted strategy by any name [`StrategyKind`] accepts, or a blind one by its
    /// report name (`vsftpd`, `pure-ftpd`, ...).
    fn from_str(s: &str) -> Result<SimStrategy, UnknownStrategy> {
        if let Ok(k) = s.parse::<StrategyKind>() {
            return Ok(SimStrategy::Accounted(k));
        }
        BlindKind::ALL
            .iter()
            .find(|b| b.name().eq_ignore_ascii_case(s))
            .map(|&b| SimStrategy::Blind(b))
            .ok_or_else(|| UnknownStrategy { name: s.to_owned() })
    }
}

/// The kernel model of a sweep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum BindModelKind {
    /// Linux, listeners with `SO_REUSEADDR` (what every peer server sets): a port whose
    /// connections are in TIME_WAIT can be bound again.
    #[default]
    Reuseaddr,
    /// Linux, listeners without `SO_REUSEADDR`: TIME_WAIT blocks the port.
    NoReuseaddr,
}

impl BindModelKind {
    /// The name accepted by [`FromStr`].
    pub fn name(self) -> &'static str {
        match self {
            BindModelKind::Reuseaddr => "reuseaddr",
            BindModelKind::NoReuseaddr => "no-reuseaddr",
        }
    }
}

impl fmt::Display for BindModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A bind model name that [`BindModelKind::from_str`] does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown bind model {name:?} (expected reuseaddr or no-reuseaddr)")]
pub struct UnknownBindModel {
    /// The name that was given.
    pub name: String,
}

impl FromStr for BindModelKind {
    type Err = UnknownBindModel;
    fn from_str(s: &str) -> Result<BindModelKind, UnknownBindModel> {
        match s.to_ascii_lowercase().as_str() {
            "reuseaddr" | "linux" => Ok(BindModelKind::Reuseaddr),
            "no-reuseaddr" | "linux-no-reuseaddr" => Ok(BindModelKind::NoReuseaddr),
            _ => Err(UnknownBindModel { name: s.to_owned() }),
        }
    }
}

/// What a sweep runs.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepSpec {
    /// The passive range.
    pub ports: PortSet,
    /// TIME_WAIT of the kernel, also the pool's quarantine T.
    pub time_wait: Duration,
    /// The strategies, in table order.
    pub strategies: Vec<SimStrategy>,
    /// Offered loads, as multiples of `rate_max`.
    pub loads: Vec<f64>,
    /// The kernel model.
    pub bind_model: BindModelKind,
    /// Mean of the exponential lease hold time h.
    pub hold: Duration,
    /// Simulated time before measuring.
    pub warmup: Duration,
    /// Measured simulated time (after `warmup`).
    pub duration: Duration,
    /// Seed of every run.
    pub seed: u64,
}

impl SweepSpec {
    /// Every strategy at loads 0.5, 0.95 and 1.5 on `ports`, T = 1 s, no `SO_REUSEADDR`,
    /// h ~ exp(20 ms), 5 s of warm-up then 300 s measured, seed 7: the case of the committed
    /// snapshot `tests/snapshots/sweep.txt`.
    pub fn new(ports: PortSet) -> SweepSpec {
        SweepSpec {
            ports,
            time_wait: Duration::from_secs(1),
            strategies: all_strategies(),
            loads: vec![0.5, 0.95, 1.5],
            bind_model: BindModelKind::NoReuseaddr,
            hold: Duration::from_millis(20),
            warmup: Duration::from_secs(5),
            duration: Duration::from_secs(300),
            seed: 7,
        }
    }

    /// The simulator configuration of one cell.
    pub fn config(&self, strategy: SimStrategy, load: f64) -> SimConfig {
        let mut c = SimConfig::new(1);
        c.ports = self.ports.clone();
        c.strategy = strategy;
        c.quarantine = self.time_wait;
        c.bind = BindSpec {
            reuse_addr: self.bind_model == BindModelKind::Reuseaddr,
            time_wait: self.time_wait,
            conntrack: None,
        };
        c.hold = HoldDist::Exponential(self.hold);
        c.warmup = self.warmup;
        c.duration = self.warmup.saturating_add(self.duration);
        c.seed = self.seed;
        c.with_load(load)
    }
}

/// One cell of the table.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct SweepRow {
    /// Offered load, a multiple of `rate_max`.
    pub load: f64,
    /// What the simulator measured (its `strategy` names the row).
    pub report: SimReport,
}

impl SweepRow {
    /// Kernel bind time per served arrival, in microseconds.
    pub fn bind_us_per_success(&self) -> f64 {
        self.report.bind_cost_s * 1e6 / self.report.served.max(1) as f64
    }
}

/// Runs every strategy at every load, strategies outermost.
pub fn sweep(spec: &SweepSpec) -> Result<Vec<SweepRow>, ConfigError> {
    let mut rows = Vec::with_capacity(spec.strategies.len() * spec.loads.len());
    for &s in &spec.strategies {
        for &load in &spec.loads {
            rows.push(SweepRow {
                load,
                report: run(&spec.config(s, load))?,
            });
        }
    }
    Ok(rows)
}

/// The rows as a text table under a one-line description of the spec.
pub fn table(spec: &SweepSpec, rows: &[SweepRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# {} ports, Poisson, T = TIME_WAIT = {} s, {}, f = 1, h ~ exp({} ms), {} s after {} s warm-up, seed {}",
        spec.ports.len(),
        spec.time_wait.as_secs_f64(),
        spec.bind_model,
        spec.hold.as_secs_f64() * 1e3,
        spec.duration.as_secs_f64(),
        spec.warmup.as_secs_f64(),
        spec.seed
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
    for row in rows {
        let r = &row.report;
        let _ = writeln!(
            out,
            "{:<12} {:>5.2} {:>7} {:>7} {:>7} {:>6} {:>7} {:>8.3} {:>10.1} {:>8.4} {:>8.4}",
            r.strategy,
            row.load,
            r.offered,
            r.served,
            r.refused,
            r.sessions_killed,
            r.outside_range,
            r.binds_per_success,
            row.bind_us_per_success(),
            r.refusal_rate,
            r.erlang_b
        );
    }
    out
}

/// The rows as a JSON array, one object per cell: `strategy`, `load`, `bind_us_per_success`
/// and every field of [`SimReport::to_json`].
pub fn to_json(rows: &[SweepRow]) -> String {
    let mut out = String::from("[");
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let report = row.report.to_json();
        // `to_json` gives an object: splice the cell's own fields in after its brace.
        let inner = report.strip_prefix('{').unwrap_or(&report);
        let load = if row.load.is_finite() { row.load } else { 0.0 };
        let bind_us = row.bind_us_per_success();
        let _ = write!(
            out,
            "{{\"load\":{load:?},\"bind_us_per_success\":{bind_us:?},{inner}"
        );
    }
    out.push(']');
    out
}
