//! `pasv simulate`: the strategies × load table of the port-pool simulator
//! ([`pasv_pool::sweep`]), for a range and a TIME_WAIT the user gives.
//!
//! Each cell is one deterministic run of [`pasv_pool::sim::run`] (Poisson arrivals at a
//! multiple of the fluid bound `rate_max`, every transfer closed by the server, quarantine
//! T = TIME_WAIT); the table sets its served, refused, killed and outside-the-range counts and
//! the kernel binds it cost next to Erlang B for the same offered load. Equal arguments give
//! equal output.

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context};
use pasv_pool::sim::SimStrategy;
use pasv_pool::sweep::{self, BindModelKind, SweepSpec};
use pasv_pool::PortSet;

/// The arguments of `pasv simulate`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Passive range LO-HI.
    #[arg(long, value_parser = parse_ports)]
    pub ports: (u16, u16),
    /// Kernel TIME_WAIT in seconds, also the pool's quarantine T (Linux: 60).
    #[arg(long, value_parser = parse_seconds)]
    pub time_wait: Duration,
    /// `all`, or one or more strategy names separated by commas: lrr, round-robin,
    /// lowest-free, keyed (pasvd's pool) or vsftpd, proftpd, pure-ftpd, pyftpdlib, libunftp,
    /// filezilla (models of those servers).
    #[arg(long, default_value = "all", value_parser = parse_strategies)]
    pub strategy: StrategyList,
    /// Offered loads as multiples of the range's fluid capacity rate_max, comma-separated.
    #[arg(long, default_value = "0.5,0.95,1.5", value_parser = parse_loads)]
    pub load: LoadList,
    /// Kernel model: reuseaddr (listeners set SO_REUSEADDR, as every peer server does) or
    /// no-reuseaddr (a port with connections in TIME_WAIT cannot be bound).
    #[arg(long, default_value = "reuseaddr", value_parser = parse_bind_model)]
    pub bind_model: BindModelKind,
    /// Mean lease hold time (listen + transfer), milliseconds, exponentially distributed.
    #[arg(long, default_value = "20", value_parser = parse_millis)]
    pub hold_ms: Duration,
    /// Measured simulated seconds per cell.
    #[arg(long, default_value = "300", value_parser = parse_seconds)]
    pub duration: Duration,
    /// Simulated seconds before measuring.
    #[arg(long, default_value = "5", value_parser = parse_seconds)]
    pub warmup: Duration,
    /// Seed of every random draw.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Print a JSON array, one object per cell, instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Strategies parsed from `--strategy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrategyList(pub Vec<SimStrategy>);

/// Loads parsed from `--load`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadList(pub Vec<f64>);

fn parse_ports(s: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = s
        .split_once('-')
        .ok_or_else(|| format!("expected LO-HI, got {s:?}"))?;
    let lo: u16 = lo.trim().parse().map_err(|_| format!("bad port {lo:?}"))?;
    let hi: u16 = hi.trim().parse().map_err(|_| format!("bad port {hi:?}"))?;
    if lo == 0 || lo > hi {
        return Err(format!("range {lo}-{hi} is empty or starts at 0"));
    }
    Ok((lo, hi))
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let x: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("expected seconds, got {s:?}"))?;
    Duration::try_from_secs_f64(x).map_err(|_| format!("{s:?} is not a non-negative duration"))
}

fn parse_millis(s: &str) -> Result<Duration, String> {
    let x: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("expected milliseconds, got {s:?}"))?;
    Duration::try_from_secs_f64(x / 1e3)
        .map_err(|_| format!("{s:?} is not a non-negative duration"))
}

fn parse_strategies(s: &str) -> Result<StrategyList, String> {
    if s.trim().eq_ignore_ascii_case("all") {
        return Ok(StrategyList(sweep::all_strategies()));
    }
    let list = s
        .split(',')
        .map(|name| {
            name.trim()
                .parse::<SimStrategy>()
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(StrategyList(list))
}

fn parse_loads(s: &str) -> Result<LoadList, String> {
    let list = s
        .split(',')
        .map(|x| match x.trim().parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 && v <= 100.0 => Ok(v),
            _ => Err(format!(
                "bad load {x:?}: expected a multiple of rate_max above 0 and at most 100"
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(LoadList(list))
}

fn parse_bind_model(s: &str) -> Result<BindModelKind, String> {
    s.parse()
        .map_err(|e: sweep::UnknownBindModel| e.to_string())
}

impl SimulateArgs {
    /// The sweep these arguments ask for.
    pub fn spec(&self) -> anyhow::Result<SweepSpec> {
        let ports = PortSet::range(self.ports.0, self.ports.1)
            .with_context(|| format!("--ports {}-{}", self.ports.0, self.ports.1))?;
        if self.hold_ms.is_zero() && self.time_wait.is_zero() {
            bail!("--hold-ms and --time-wait are both zero: a port would serve without limit");
        }
        if self.duration.is_zero() {
            bail!("--duration must be above zero");
        }
        let mut spec = SweepSpec::new(ports);
        spec.time_wait = self.time_wait;
        spec.strategies = self.strategy.0.clone();
        spec.loads = self.load.0.clone();
        spec.bind_model = self.bind_model;
        spec.hold = self.hold_ms;
        spec.duration = self.duration;
        spec.warmup = self.warmup;
        spec.seed = self.seed;
        // Each cell simulates every arrival: refuse sizes that would run for hours.
        let rate_max = spec.config(spec.strategies[0], 1.0).rate_max();
        let arrivals = rate_max
            * spec.loads.iter().cloned().fold(0.0, f64::max)
            * (spec.duration + spec.warmup).as_secs_f64();
        if arrivals.is_nan() || arrivals > 5e7 {
            bail!(
                "about {arrivals:.0} arrivals per cell (rate_max {rate_max:.0}/s): shorten --duration or raise --time-wait"
            );
        }
        Ok(spec)
    }
}

/// Runs `pasv simulate` and writes its table (or JSON) to `out`.
pub fn run(args: &SimulateArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let spec = args.spec()?;
    let rows = sweep::sweep(&spec)?;
    if args.json {
        writeln!(out, "{}", sweep::to_json(&rows))?;
    } else {
        write!(out, "{}", sweep::table(&spec, &rows))?;
    }
    out.flush()?;
    Ok(())
}
