//! The load generator behind `pasv load`.
//!
//! K sessions run as tokio tasks, dealt round robin to [`LoadConfig::threads`] event loops
//! (the caller's runtime and single-threaded ones on threads of their own, no work moving
//! between them). Each session, on one logged-in control connection, loops PASV (or EPSV)
//! → data connect → RETR, STOR or LIST → EOF → final reply until the duration ends or the
//! shared transfer count is used up. A session whose control connection breaks (421,
//! reset, "500 OOPS" followed by a close) is counted as lost and logs in again.
//! Latency is measured per transfer from sending PASV to the final reply, the way
//! `ftpload.py` measures it, so the two generators' numbers compare.
//!
//! That loop is *closed*: a session starts its next transfer when the last one ends, so a
//! slow server is offered less work and its latency measures the generator's queue as much as
//! the server. With [`LoadConfig::rate`] the run is *open*: transfers are scheduled at fixed
//! intervals (slot `i` at `i / rate` after the start), each taken by whichever session is free
//! first, and a transfer's latency also counts from its slot's time, so a slot that waited
//! for a free session counts its wait against the server (no coordinated omission).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Barrier, OnceCell};
use tokio::time::Instant;

use super::{
    Client, ClientConfig, ClientError, ClientTls, DataMode, Download, FtpUrl, ListCommand,
};
use crate::clock;

/// Relative weights of the operations a session loops over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Mix {
    /// Weight of RETR of the URL's file.
    pub retr: u32,
    /// Weight of STOR of `size` bytes.
    pub stor: u32,
    /// Weight of LIST of the URL's directory.
    pub list: u32,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            retr: 1,
            stor: 0,
            list: 0,
        }
    }
}

/// A `--mix` that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid mix {0:?}: expected retr=W,stor=W,list=W with at least one weight above 0")]
pub struct MixError(String);

impl FromStr for Mix {
    type Err = MixError;

    /// `retr=8,stor=1,list=1`; operations left out weigh 0.
    fn from_str(s: &str) -> Result<Mix, MixError> {
        let err = || MixError(s.to_owned());
        let mut mix = Mix {
            retr: 0,
            stor: 0,
            list: 0,
        };
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (name, weight) = part.split_once('=').ok_or_else(err)?;
            let weight: u32 = weight.trim().parse().map_err(|_| err())?;
            match name.trim().to_ascii_lowercase().as_str() {
                "retr" => mix.retr = weight,
                "stor" => mix.stor = weight,
                "list" => mix.list = weight,
                _ => return Err(err()),
            }
        }
        if u64::from(mix.retr) + u64::from(mix.stor) + u64::from(mix.list) == 0 {
            return Err(err());
        }
        Ok(mix)
    }
}

impl Mix {
    fn pick(&self, rng: &mut StdRng) -> Op {
        let total = u64::from(self.retr) + u64::from(self.stor) + u64::from(self.list);
        let x = rng.gen_range(0..total.max(1));
        if x < u64::from(self.retr) {
            Op::Retr
        } else if x < u64::from(self.retr) + u64::from(self.stor) {
            Op::Stor
        } else {
            Op::List
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Retr,
    Stor,
    List,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Server, login, and the file RETR fetches; LIST lists its directory.
    pub url: FtpUrl,
    /// Concurrent sessions (K).
    pub sessions: usize,
    /// How long to run. A transfer or login in flight at the end gets at most `timeout` more
    /// to complete; one still running then is cut and counted as a `timeout` error.
    pub duration: Duration,
    /// Stop after this many transfer attempts in all sessions.
    pub max_transfers: Option<u64>,
    /// Operation weights.
    pub mix: Mix,
    /// Bytes per STOR; when `expect_size` is set, the size every RETR must return.
    pub size: u64,
    /// Count a RETR of another length than `size` as an error (`size_mismatch`).
    pub expect_size: bool,
    /// Remote path for STOR; `{session}` is replaced by the session number.
    pub stor_path: String,
    /// Delete each session's STOR file at the end.
    pub delete_after: bool,
    /// The passive range the server is configured with; replies outside it are counted.
    pub expect_range: Option<(u16, u16)>,
    /// PASV (default, like ftpload.py), EPSV or the client's automatic choice.
    pub data_mode: DataMode,
    /// Limit for the connect, each reply, opening a data connection and each stall of one
    /// ([`ClientConfig::with_timeout`]), and the grace a transfer in flight at the end gets.
    pub timeout: Duration,
    /// SO_RCVBUF/SO_SNDBUF for data sockets (`None`: kernel autotuning).
    pub socket_buffer: Option<u32>,
    /// FTPS (`None`: plain FTP); each session resumes its own control connection's TLS
    /// session on its data connections.
    pub tls: Option<ClientTls>,
    /// Open loop: transfers offered at this fixed rate (`None`: closed loop, each session
    /// back to back). The sessions log in first; the schedule starts when all have tried.
    pub rate: Option<Rate>,
    /// Event loops, each with every `threads`-th session and no work moving between them
    /// (0 counts as 1; never more loops than sessions): the caller's runtime runs the first
    /// share, a thread of its own with a single-threaded runtime each of the others.
    pub threads: usize,
}

impl LoadConfig {
    /// A configuration for `url` with K sessions for `duration`, RETR only.
    pub fn new(url: FtpUrl, sessions: usize, duration: Duration) -> LoadConfig {
        LoadConfig {
            url,
            sessions,
            duration,
            max_transfers: None,
            mix: Mix::default(),
            size: 1024,
            expect_size: false,
            stor_path: "upload/pasv-load-{session}.bin".into(),
            delete_after: false,
            expect_range: None,
            data_mode: DataMode::Pasv,
            timeout: Duration::from_secs(10),
            socket_buffer: None,
            tls: None,
            rate: None,
            threads: 1,
        }
    }
}

/// The largest `--rate`, transfers per second: far above what one generator core sustains.
pub const MAX_RATE: f64 = 1_000_000.0;

/// An offered rate of the open-loop mode, transfers per second: finite, above 0, at most
/// [`MAX_RATE`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Rate(f64);

/// A rate that is not a number, not above 0, or above [`MAX_RATE`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid rate {0:?}: expected transfers per second, a number above 0 and at most 1000000")]
pub struct RateError(String);

impl Rate {
    /// `per_s` transfers per second, if it is finite, above 0 and at most [`MAX_RATE`].
    pub fn new(per_s: f64) -> Result<Rate, RateError> {
        if per_s.is_finite() && per_s > 0.0 && per_s <= MAX_RATE {
            Ok(Rate(per_s))
        } else {
            Err(RateError(per_s.to_string()))
        }
    }

    /// Transfers per second.
    pub fn per_s(self) -> f64 {
        self.0
    }
}

impl FromStr for Rate {
    type Err = RateError;

    /// `2000`, `2500.5`.
    fn from_str(s: &str) -> Result<Rate, RateError> {
        let per_s: f64 = s.trim().parse().map_err(|_| RateError(s.to_owned()))?;
        Rate::new(per_s).map_err(|_| RateError(s.to_owned()))
    }
}

/// The resolution of tokio's timer: a sleep ends on the first tick at or after its
/// deadline.
const TIMER_TICK: Duration = Duration::from_millis(1);

/// The open-loop schedule: slot `i` is due `i / rate` after the start, and a run has
/// `len` slots (those due before the end of the duration, at most `max_transfers`).
///
/// Every slot's time is computed from its number, so no error accumulates over a run.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Schedule {
    rate: Rate,
    len: u64,
}

impl Schedule {
    fn new(rate: Rate, duration: Duration, max_transfers: Option<u64>) -> Schedule {
        // Slots due before the end: i / rate < duration. Rate and duration are bounded, so
        // the product fits (at most 3.6e9 for an hour at the largest rate).
        let due = (duration.as_secs_f64() * rate.0).ceil();
        let due = if due >= u64::MAX as f64 {
            u64::MAX
        } else {
            due as u64
        };
        Schedule {
            rate,
            len: max_transfers.map_or(due, |max| max.min(due)),
        }
    }

    /// When slot `slot` is due, counted from the start.
    fn offset(&self, slot: u64) -> Duration {
        Duration::from_secs_f64(slot as f64 / self.rate.0)
    }

    /// The time the slots were offered over: `len / rate`.
    fn window(&self) -> Duration {
        self.offset(self.len)
    }
}

/// Hands out a schedule's slots in order, each to the session that asks first: a free
/// session takes the next slot at once (and waits for its time), so a slot is taken late
/// only when no session was free when it came due.
#[derive(Debug)]
struct Slots {
    schedule: Schedule,
    next: AtomicU64,
}

impl Slots {
    fn new(schedule: Schedule) -> Slots {
        Slots {
            schedule,
            next: AtomicU64::new(0),
        }
    }

    /// The next slot's offset from the start, or `None` when every slot is taken.
    fn claim(&self) -> Option<Duration> {
        // Each session stops at its first `None`, so the counter passes `len` by at most K.
        let slot = self.next.fetch_add(1, Ordering::Relaxed);
        (slot < self.schedule.len).then(|| self.schedule.offset(slot))
    }
}

/// What the open loop records per session: latency from each slot's time, and the slots
/// that were taken late.
#[derive(Debug)]
struct OpenStats {
    /// Completed transfers, from the slot's time to the final reply, µs.
    from_schedule_us: Histogram<u64>,
    /// Late slots (taken after their time): how long after their time they started, µs.
    late_us: Histogram<u64>,
    /// Slots whose transfer began.
    started: u64,
}

impl OpenStats {
    fn new() -> OpenStats {
        OpenStats {
            from_schedule_us: latency_histogram(),
            late_us: latency_histogram(),
            started: 0,
        }
    }

    /// One slot, due at `due`, taken by a free session at `taken`, begun at `started`
    /// (the later of the two, plus the timer's lag), and ended at `completed` if the transfer
    /// completed (`None`: it failed, and only its start counts).
    ///
    /// The latency counts from the slot's time, except for the generator's own timer: a slot
    /// a free session waited for starts when tokio's timer fires, up to one tick
    /// ([`TIMER_TICK`]) after its time, and that much is not the server's. Anything later
    /// (a generator too busy to start it) counts, and so does all of a late slot's wait.
    fn record(
        &mut self,
        due: Instant,
        taken: Instant,
        started: Instant,
        completed: Option<Instant>,
    ) {
        self.started += 1;
        if taken > due {
            record_us(&mut self.late_us, started.saturating_duration_since(due));
        }
        if let Some(end) = completed {
            let from = if taken <= due {
                started.min(due + TIMER_TICK).max(due)
            } else {
                due
            };
            record_us(
                &mut self.from_schedule_us,
                end.saturating_duration_since(from),
            );
        }
    }

    fn merge(&mut self, other: &OpenStats) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.from_schedule_us.add(&other.from_schedule_us);
        let _ = self.late_us.add(&other.late_us);
        self.started += other.started;
    }

    /// The report of a run of `schedule` that completed `transfers` of its slots.
    fn report(&self, schedule: &Schedule, transfers: u64) -> OpenLoopReport {
        let window = schedule.window().as_secs_f64();
        let late = latency_of(&self.late_us);
        OpenLoopReport {
            offered_per_s: schedule.rate.0,
            achieved_per_s: if window > 0.0 {
                transfers as f64 / window
            } else {
                0.0
            },
            slots: schedule.len,
            slots_started: self.started,
            slots_not_started: schedule.len.saturating_sub(self.started),
            late_slots: self.late_us.len(),
            late_ms: LateBy {
                p50: late.p50,
                p99: late.p99,
                max: late.max,
            },
            latency_ms: latency_of(&self.from_schedule_us),
        }
    }
}

/// 1 µs to 60 s (longer counts as 60 s) at 2 significant digits (1%): about 20 KiB, so
/// thousands of sessions stay cheap; 3 digits would take 140 KiB each.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 2).expect("constant histogram bounds are valid")
}

fn record_us(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1));
}

/// The percentiles of a histogram of µs, in ms (all 0 when it is empty).
fn latency_of(h: &Histogram<u64>) -> Latency {
    if h.is_empty() {
        return Latency::default();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Latency {
        p50: ms(h.value_at_quantile(0.50)),
        p90: ms(h.value_at_quantile(0.90)),
        p99: ms(h.value_at_quantile(0.99)),
        p999: ms(h.value_at_quantile(0.999)),
        max: ms(h.max()),
        mean: h.mean() / 1000.0,
    }
}

/// Latency percentiles, milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

/// How long after their time the late slots of an open-loop run started, milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LateBy {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

/// The open-loop part of a report ([`LoadConfig::rate`]).
#[derive(Debug, Clone, Serialize)]
pub struct OpenLoopReport {
    /// Transfers per second offered (`--rate`).
    pub offered_per_s: f64,
    /// Completed transfers over the time the slots were offered (`slots / offered_per_s`):
    /// equal to `offered_per_s` when every slot's transfer completed.
    pub achieved_per_s: f64,
    /// Slots scheduled: those due before the end of the duration, at most
    /// `--max-transfers`.
    pub slots: u64,
    /// Slots whose transfer began.
    pub slots_started: u64,
    /// Slots no session took before the end of the run (a server that fell behind).
    pub slots_not_started: u64,
    /// Slots taken after their time, because no session was free when they came due.
    pub late_slots: u64,
    /// How long after their time the late slots started.
    pub late_ms: LateBy,
    /// Latency of completed transfers from their slot's time to the final reply.
    pub latency_ms: Latency,
}

/// The result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// The server, without password.
    pub target: String,
    /// Sessions (K).
    pub sessions: usize,
    /// Seconds from the start to the end of the last session.
    pub elapsed_s: f64,
    /// Completed transfers (2xx final reply).
    pub transfers: u64,
    /// Completed transfers per second.
    pub transfers_per_s: f64,
    /// Completed transfers by operation (`retr`, `stor`, `list`).
    pub transfers_by_op: BTreeMap<String, u64>,
    /// Data bytes moved by completed transfers.
    pub bytes: u64,
    /// `bytes` per second.
    pub bytes_per_s: f64,
    /// Failed transfers and logins by reply code (`"425"`) or error kind (`"io"`,
    /// `"timeout"`, `"closed"`, `"size_mismatch"`, `"login_530"`, ...).
    pub errors: BTreeMap<String, u64>,
    /// The same failures by reply text or error message (at most 32 distinct texts).
    pub errors_by_text: BTreeMap<String, u64>,
    /// Transfers refused with 425.
    pub count_425: u64,
    /// Sessions whose control connection broke and had to log in again.
    pub sessions_lost: u64,
    /// Latency of completed transfers, from PASV to the final reply.
    pub latency_ms: Latency,
    /// Distinct passive ports offered.
    pub ports_seen: usize,
    /// Lowest passive port offered.
    pub min_port: Option<u16>,
    /// Highest passive port offered.
    pub max_port: Option<u16>,
    /// Passive replies whose port was outside `expect_range`.
    pub ports_outside_range: u64,
    /// Passive replies in all.
    pub passive_replies: u64,
    /// CPU seconds this process used during the run (Linux; `null` elsewhere).
    pub loadgen_cpu_s: Option<f64>,
    /// `loadgen_cpu_s` / `elapsed_s`: cores the generator kept busy.
    pub loadgen_cpu_cores: Option<f64>,
    /// Whether the run used FTPS.
    pub tls: bool,
    /// FTPS data connection handshakes that were full (no session resumed).
    pub tls_data_handshakes_full: u64,
    /// FTPS data connection handshakes that resumed the control connection's TLS session.
    pub tls_data_handshakes_resumed: u64,
    /// The open loop's figures (`null` in a closed-loop run).
    pub open_loop: Option<OpenLoopReport>,
    /// Event loops the sessions ran on: the caller's runtime and a thread of its own each of
    /// the others.
    pub threads: usize,
}

const MAX_ERROR_TEXTS: usize = 32;

#[derive(Debug)]
struct SessionStats {
    transfers: u64,
    by_op: [u64; 3],
    bytes: u64,
    errors: BTreeMap<String, u64>,
    errors_by_text: BTreeMap<String, u64>,
    count_425: u64,
    sessions_lost: u64,
    latency_us: Histogram<u64>,
    ports: BTreeSet<u16>,
    ports_outside_range: u64,
    passive_replies: u64,
    handshakes_full: u64,
    handshakes_resumed: u64,
    /// The open loop's figures (`None` in a closed-loop run).
    open: Option<OpenStats>,
}

impl SessionStats {
    fn new(open_loop: bool) -> SessionStats {
        SessionStats {
            transfers: 0,
            by_op: [0; 3],
            bytes: 0,
            errors: BTreeMap::new(),
            errors_by_text: BTreeMap::new(),
            count_425: 0,
            sessions_lost: 0,
            latency_us: latency_histogram(),
            ports: BTreeSet::new(),
            ports_outside_range: 0,
            passive_replies: 0,
            handshakes_full: 0,
            handshakes_resumed: 0,
            open: open_loop.then(OpenStats::new),
        }
    }

    /// Counts the data handshakes of a client that is done with.
    fn absorb(&mut self, client: &Client) {
        let (full, resumed) = client.data_handshakes();
        self.handshakes_full += full;
        self.handshakes_resumed += resumed;
    }

    fn error(&mut self, key: String, text: String) {
        *self.errors.entry(key).or_default() += 1;
        note_text(&mut self.errors_by_text, text, 1);
    }

    fn merge(&mut self, other: SessionStats) {
        self.transfers += other.transfers;
        for (a, b) in self.by_op.iter_mut().zip(other.by_op) {
            *a += b;
        }
        self.bytes += other.bytes;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        for (k, v) in other.errors_by_text {
            note_text(&mut self.errors_by_text, k, v);
        }
        self.count_425 += other.count_425;
        self.sessions_lost += other.sessions_lost;
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
        self.ports.extend(other.ports);
        self.ports_outside_range += other.ports_outside_range;
        self.passive_replies += other.passive_replies;
        self.handshakes_full += other.handshakes_full;
        self.handshakes_resumed += other.handshakes_resumed;
        if let (Some(mine), Some(theirs)) = (&mut self.open, &other.open) {
            mine.merge(theirs);
        }
    }
}

fn note_text(map: &mut BTreeMap<String, u64>, text: String, n: u64) {
    let mut text: String = text.chars().take(100).collect();
    if !map.contains_key(&text) && map.len() >= MAX_ERROR_TEXTS {
        text = "(other texts)".into();
    }
    *map.entry(text).or_default() += n;
}

/// How the sessions of a run pace their transfers.
#[derive(Debug)]
enum Pace {
    /// Closed loop: back to back until `deadline`; `attempts` counts against
    /// `max_transfers`.
    Closed {
        deadline: Instant,
        attempts: AtomicU64,
    },
    /// Open loop: the sessions log in, meet at `ready`, and the first one past it sets the
    /// schedule's `start`; then each free session takes the next of `slots`.
    Open {
        slots: Slots,
        ready: Barrier,
        start: OnceCell<Instant>,
    },
}

/// Runs the load and reports.
pub async fn run(config: LoadConfig) -> LoadReport {
    let config = Arc::new(config);
    let cpu_start = process_cpu_time();
    let launched = clock::now();
    let pace = Arc::new(match config.rate {
        None => Pace::Closed {
            deadline: launched + config.duration,
            attempts: AtomicU64::new(0),
        },
        Some(rate) => Pace::Open {
            slots: Slots::new(Schedule::new(rate, config.duration, config.max_transfers)),
            ready: Barrier::new(config.sessions),
            start: OnceCell::new(),
        },
    });
    let (total, threads) = run_sessions(&config, &pace).await;
    // An open loop's time runs from the schedule's start, after the logins.
    let (started, open_loop) = match &*pace {
        Pace::Closed { .. } => (launched, None),
        Pace::Open { slots, start, .. } => (
            start.get().copied().unwrap_or(launched),
            total
                .open
                .as_ref()
                .map(|o| o.report(&slots.schedule, total.transfers)),
        ),
    };
    let elapsed = clock::now()
        .saturating_duration_since(started)
        .as_secs_f64()
        .max(1e-9);
    let cpu = match (cpu_start, process_cpu_time()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a).as_secs_f64()),
        _ => None,
    };
    let latency_ms = latency_of(&total.latency_us);
    let by_op = ["retr", "stor", "list"]
        .iter()
        .zip(total.by_op)
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| ((*name).to_owned(), n))
        .collect();
    LoadReport {
        target: config.url.to_string(),
        sessions: config.sessions,
        elapsed_s: elapsed,
        transfers: total.transfers,
        transfers_per_s: total.transfers as f64 / elapsed,
        transfers_by_op: by_op,
        bytes: total.bytes,
        bytes_per_s: total.bytes as f64 / elapsed,
        errors: total.errors,
        errors_by_text: total.errors_by_text,
        count_425: total.count_425,
        sessions_lost: total.sessions_lost,
        latency_ms,
        ports_seen: total.ports.len(),
        min_port: total.ports.first().copied(),
        max_port: total.ports.last().copied(),
        ports_outside_range: total.ports_outside_range,
        passive_replies: total.passive_replies,
        loadgen_cpu_s: cpu,
        loadgen_cpu_cores: cpu.map(|c| c / elapsed),
        tls: config.tls.is_some(),
        tls_data_handshakes_full: total.handshakes_full,
        tls_data_handshakes_resumed: total.handshakes_resumed,
        open_loop,
        threads,
    }
}

/// Runs every session to its end, spread over [`LoadConfig::threads`] event loops: the
/// caller's runtime takes the first share, a thread of its own each of the others. The merged
/// figures, and the number of event loops that ran.
async fn run_sessions(config: &Arc<LoadConfig>, pace: &Arc<Pace>) -> (SessionStats, usize) {
    let (here, started) = start_loops(
        shares(config.sessions, config.threads),
        |t, share, ready| {
            let (config, pace) = (Arc::clone(config), Arc::clone(pace));
            std::thread::Builder::new()
                .name(format!("pasv-load-{t}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(e) => {
                            let _ = ready.send(Err(e));
                            return None;
                        }
                    };
                    let _ = ready.send(Ok(()));
                    let stats = runtime.block_on(spawn_sessions(config, pace, share));
                    // The figures are in: no waiting for the runtime's blocking threads (a name
                    // lookup the resolver still holds) before they are reported.
                    runtime.shutdown_background();
                    Some(stats)
                })
        },
    )
    .await;
    let loops = 1 + started.len();
    let mut total = spawn_sessions(Arc::clone(config), Arc::clone(pace), here).await;
    for handle in started {
        // The threads end with their sessions, which end by the deadline; joined off this
        // runtime, whose other tasks may still need it.
        match tokio::task::spawn_blocking(move || handle.join()).await {
            Ok(Ok(Some(stats))) => total.merge(stats),
            // A loop that said it was ready always returns its figures.
            Ok(Ok(None)) => {}
            Ok(Err(panic)) => {
                let text = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                total.error("panic".into(), text);
            }
            Err(e) => total.error("panic".into(), e.to_string()),
        }
    }
    (total, loops)
}

/// A loop's thread: its figures, `None` if it never got a runtime.
type LoopThread = std::thread::JoinHandle<Option<SessionStats>>;

/// Starts a thread for each share after the first with `spawn(index, share, ready)`, which
/// says on `ready` whether the thread's runtime started. The first share, with the shares of
/// every loop that could not start (no thread, no runtime, a panic before `ready`), is left
/// to the caller: no session is lost, and in an open loop every session reaches the meeting
/// point the others wait at. All threads are spawned before any is waited for.
async fn start_loops<F>(shares: Vec<Vec<usize>>, mut spawn: F) -> (Vec<usize>, Vec<LoopThread>)
where
    F: FnMut(
        usize,
        Vec<usize>,
        tokio::sync::oneshot::Sender<std::io::Result<()>>,
    ) -> std::io::Result<LoopThread>,
{
    let mut shares = shares.into_iter().enumerate();
    let mut here = shares.next().map(|(_, share)| share).unwrap_or_default();
    let mut spawned = Vec::new();
    for (t, share) in shares {
        let (ready, is_ready) = tokio::sync::oneshot::channel();
        // A thread that fails to start drops its closure, and the share with it: a copy.
        match spawn(t, share.clone(), ready) {
            Ok(handle) => spawned.push((t, share, handle, is_ready)),
            Err(e) => {
                tracing::warn!("load thread {t}: not started ({e}); its sessions run on the first");
                here.extend(share);
            }
        }
    }
    let mut started = Vec::new();
    for (t, share, handle, is_ready) in spawned {
        let why = match is_ready.await {
            Ok(Ok(())) => {
                started.push(handle);
                continue;
            }
            Ok(Err(e)) => format!("no runtime ({e})"),
            Err(_) => "ended before it was ready".to_owned(),
        };
        tracing::warn!("load thread {t}: {why}; its sessions run on the first");
        here.extend(share);
    }
    (here, started)
}

/// Sessions `0..sessions` dealt round robin to `threads` event loops (at least one, at most
/// one per session): each loop's sessions, in order.
fn shares(sessions: usize, threads: usize) -> Vec<Vec<usize>> {
    let loops = threads.clamp(1, sessions.max(1));
    (0..loops)
        .map(|t| (t..sessions).step_by(loops).collect())
        .collect()
}

/// Runs `sessions` as tasks on the current runtime and merges their figures.
async fn spawn_sessions(
    config: Arc<LoadConfig>,
    pace: Arc<Pace>,
    sessions: Vec<usize>,
) -> SessionStats {
    let mut tasks = Vec::with_capacity(sessions.len());
    for session in sessions {
        let config = Arc::clone(&config);
        let pace = Arc::clone(&pace);
        tasks.push(tokio::spawn(async move {
            run_session(&config, session, &pace).await
        }));
    }
    let mut total = SessionStats::new(config.rate.is_some());
    for task in tasks {
        match task.await {
            Ok(stats) => total.merge(stats),
            Err(e) => total.error("panic".into(), e.to_string()),
        }
    }
    total
}

async fn run_session(config: &LoadConfig, session: usize, pace: &Pace) -> SessionStats {
    let mut stats = SessionStats::new(matches!(pace, Pace::Open { .. }));
    let mut rng = StdRng::seed_from_u64(0x7061_7376 ^ session as u64);
    // One buffer per session, reused by every transfer: 256 KiB lets a single read drain
    // what loopback delivers in one go.
    let mut buf = vec![0u8; 256 << 10];
    let stor_path = config.stor_path.replace("{session}", &session.to_string());
    let list_dir = config.url.parent().to_vec();
    let client_config = ClientConfig {
        data_socket_buffer: config.socket_buffer,
        tls: config.tls.clone(),
        ..ClientConfig::measuring(config.data_mode, config.timeout)
    };
    let mut stored = false;
    let mut client: Option<Client> = None;
    let mut login_backoff = Duration::from_millis(10);
    let cut_off = || ClientError::Timeout("the end of the run");
    // The open loop's slots and the instant its schedule started.
    let (deadline, open) = match pace {
        Pace::Closed { deadline, .. } => (*deadline, None),
        Pace::Open {
            slots,
            ready,
            start,
        } => {
            // Log in before the schedule starts, so that its first slots do not wait for
            // the logins; a session that fails here tries again in the run.
            let login = Client::open(&config.url, client_config.clone());
            match tokio::time::timeout(config.timeout, login)
                .await
                .unwrap_or_else(|_| Err(ClientError::Timeout("login")))
            {
                Ok(c) => client = Some(c),
                Err(e) => stats.error(format!("login_{}", e.kind()), format!("login: {e}")),
            }
            ready.wait().await;
            let start = *start.get_or_init(|| async { clock::now() }).await;
            (start + config.duration, Some((slots, start)))
        }
    };
    // Nothing in flight at the end of the run outlives it by more than the timeout.
    let cut = deadline + config.timeout;
    // The open loop's one timer per session, reset to each slot's time.
    let timer = tokio::time::sleep_until(deadline);
    tokio::pin!(timer);
    while clock::now() < deadline {
        let mut c = match client.take() {
            Some(c) => c,
            None => {
                match tokio::time::timeout_at(cut, Client::open(&config.url, client_config.clone()))
                    .await
                    .unwrap_or_else(|_| Err(cut_off()))
                {
                    Ok(c) => {
                        login_backoff = Duration::from_millis(10);
                        c
                    }
                    Err(e) => {
                        stats.error(format!("login_{}", e.kind()), format!("login: {e}"));
                        // A server refusing logins must not be hammered in a tight loop.
                        tokio::time::sleep_until(deadline.min(clock::now() + login_backoff)).await;
                        login_backoff = (login_backoff * 2).min(Duration::from_millis(500));
                        continue;
                    }
                }
            }
        };
        // The open loop's slot: when it was due and when this session took it.
        let slot = if let Some((slots, start)) = open {
            let Some(offset) = slots.claim() else {
                client = Some(c);
                break;
            };
            let due = start + offset;
            let taken = clock::now();
            if due > taken {
                timer.as_mut().reset(due);
                timer.as_mut().await;
            }
            Some((due, taken))
        } else {
            if let (Pace::Closed { attempts, .. }, Some(max)) = (pace, config.max_transfers) {
                if attempts.fetch_add(1, Ordering::Relaxed) >= max {
                    client = Some(c);
                    break;
                }
            }
            None
        };
        let op = config.mix.pick(&mut rng);
        let t0 = clock::now();
        let transfer = async {
            match op {
                Op::Retr => retr(&mut c, config.url.path(), &mut buf).await,
                Op::Stor => stor(&mut c, stor_path.as_bytes(), config.size, &mut buf).await,
                Op::List => list(&mut c, &list_dir, &mut buf).await,
            }
        };
        let (result, cut_short) = match tokio::time::timeout_at(cut, transfer).await {
            Ok(result) => (result, false),
            Err(_) => (Err(cut_off()), true),
        };
        let finished = clock::now();
        let latency = finished.saturating_duration_since(t0);
        if let Some(addr) = c.take_last_data_addr() {
            stats.passive_replies += 1;
            stats.ports.insert(addr.port());
            if let Some((lo, hi)) = config.expect_range {
                if !(lo..=hi).contains(&addr.port()) {
                    stats.ports_outside_range += 1;
                }
            }
        }
        let result_failed = result.is_err();
        let mut completed = None;
        match result {
            Ok(bytes) if op == Op::Retr && config.expect_size && bytes != config.size => {
                stats.error(
                    "size_mismatch".into(),
                    format!("RETR returned {bytes} bytes, expected {}", config.size),
                );
            }
            Ok(bytes) => {
                stats.transfers += 1;
                stats.by_op[op as usize] += 1;
                stats.bytes += bytes;
                stored |= op == Op::Stor;
                record_us(&mut stats.latency_us, latency);
                completed = Some(finished);
            }
            Err(e) => {
                if e.code().map(|c| c.get()) == Some(425) {
                    stats.count_425 += 1;
                }
                stats.error(e.kind(), error_text(&e));
            }
        }
        if let (Some(open), Some((due, taken))) = (&mut stats.open, slot) {
            open.record(due, taken, t0, completed);
        }
        if result_failed && !c.is_broken() {
            c.check_connection();
        }
        if cut_short {
            // The session is mid-transfer and the run is over: drop it without QUIT.
            stats.absorb(&c);
            break;
        }
        if c.is_broken() {
            stats.absorb(&c);
            stats.sessions_lost += 1;
        } else {
            client = Some(c);
        }
    }
    if let Some(mut c) = client {
        stats.absorb(&c);
        if stored && config.delete_after {
            if let Err(e) = c.delete(stor_path.as_bytes()).await {
                stats.error(format!("delete_{}", e.kind()), format!("delete: {e}"));
            }
        }
        // The run is over; a server that drops QUIT changes nothing in the report.
        let _ = tokio::time::timeout(Duration::from_secs(2), c.quit()).await;
    }
    stats
}

fn error_text(e: &ClientError) -> String {
    match e.reply() {
        Some(reply) => {
            let text = reply.text();
            let first = text.lines().next().unwrap_or("");
            format!("{} {}", reply.code().get(), first)
        }
        None => e.to_string(),
    }
}

async fn retr(c: &mut Client, path: &[u8], buf: &mut [u8]) -> Result<u64, ClientError> {
    drain(c.retrieve(path, 0).await?, buf).await
}

async fn list(c: &mut Client, dir: &[u8], buf: &mut [u8]) -> Result<u64, ClientError> {
    let path = (!dir.is_empty()).then_some(dir);
    drain(c.list_stream(ListCommand::List, path).await?, buf).await
}

/// Reads `download` to its end through `buf` and finishes it: the bytes it carried.
async fn drain(mut download: Download<'_>, buf: &mut [u8]) -> Result<u64, ClientError> {
    while download.read(buf).await? != 0 {}
    let bytes = download.bytes_read();
    download.finish().await?;
    Ok(bytes)
}

async fn stor(c: &mut Client, path: &[u8], size: u64, buf: &mut [u8]) -> Result<u64, ClientError> {
    let mut upload = c.store(path).await?;
    let mut left = size;
    while left > 0 {
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        upload.write_all(&buf[..n]).await?;
        left -= n as u64;
    }
    let bytes = upload.bytes_written();
    upload.finish().await?;
    Ok(bytes)
}

/// CPU time (user + system) this process has used, from `/proc/self/stat` (Linux).
///
/// Fields 14 and 15 count clock ticks of `USER_HZ`, which is 100 on every Linux
/// architecture in use (the kernel exports it as a constant to user space).
pub fn process_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

impl fmt::Display for LoadReport {
    /// The human table `pasv load` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "target            {}", self.target)?;
        writeln!(
            f,
            "sessions          {} on {} thread(s)",
            self.sessions, self.threads
        )?;
        writeln!(f, "elapsed           {:.2} s", self.elapsed_s)?;
        writeln!(
            f,
            "transfers         {} ({:.1}/s)",
            self.transfers, self.transfers_per_s
        )?;
        for (op, n) in &self.transfers_by_op {
            writeln!(f, "  {op:<15} {n}")?;
        }
        writeln!(f, "throughput        {}/s", human_bytes(self.bytes_per_s))?;
        let l = &self.latency_ms;
        writeln!(
            f,
            "latency ms        p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
            l.p50, l.p90, l.p99, l.max
        )?;
        if let Some(o) = &self.open_loop {
            writeln!(
                f,
                "offered           {:.1}/s ({} slots), achieved {:.1}/s ({:.1}%)",
                o.offered_per_s,
                o.slots,
                o.achieved_per_s,
                100.0 * o.achieved_per_s / o.offered_per_s
            )?;
            let l = &o.latency_ms;
            writeln!(
                f,
                "from schedule ms  p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
                l.p50, l.p90, l.p99, l.p999, l.max
            )?;
            writeln!(
                f,
                "late slots        {} of {} started, late by p50 {:.2}  p99 {:.2}  max {:.2} ms; {} not started",
                o.late_slots,
                o.slots_started,
                o.late_ms.p50,
                o.late_ms.p99,
                o.late_ms.max,
                o.slots_not_started
            )?;
        }
        writeln!(f, "425 refusals      {}", self.count_425)?;
        writeln!(f, "sessions lost     {}", self.sessions_lost)?;
        match (self.min_port, self.max_port) {
            (Some(lo), Some(hi)) => writeln!(
                f,
                "passive ports     {} distinct in {lo}-{hi}, {} of {} replies outside the expected range",
                self.ports_seen, self.ports_outside_range, self.passive_replies
            )?,
            _ => writeln!(f, "passive ports     none seen")?,
        }
        if self.tls {
            let all = self.tls_data_handshakes_full + self.tls_data_handshakes_resumed;
            writeln!(
                f,
                "tls data          {} handshakes: {} resumed ({:.1}%), {} full",
                all,
                self.tls_data_handshakes_resumed,
                if all == 0 {
                    0.0
                } else {
                    100.0 * self.tls_data_handshakes_resumed as f64 / all as f64
                },
                self.tls_data_handshakes_full
            )?;
        }
        if let Some(cores) = self.loadgen_cpu_cores {
            writeln!(f, "generator cpu     {:.2} cores", cores)?;
        }
        if self.errors.is_empty() {
            writeln!(f, "errors            none")?;
        } else {
            writeln!(f, "errors")?;
            for (k, v) in &self.errors {
                writeln!(f, "  {k:<15} {v}")?;
            }
            for (k, v) in &self.errors_by_text {
                writeln!(f, "  {v:>8} × {k}")?;
            }
        }
        Ok(())
    }
}

/// `1536.0` → `"1.5 KiB"`.
pub fn human_bytes(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sessions_of_a_loop_that_cannot_start_run_on_the_first() {
        let dealt = shares(10, 5);
        let (here, started) = start_loops(dealt, |t, _share, ready| match t {
            // No thread.
            1 => Err(std::io::Error::other("no thread")),
            // A thread, but no runtime.
            2 => std::thread::Builder::new().spawn(move || {
                let _ = ready.send(Err(std::io::Error::other("no runtime")));
                None
            }),
            // A thread that ends before it says anything.
            3 => std::thread::Builder::new().spawn(move || {
                drop(ready);
                None
            }),
            _ => std::thread::Builder::new().spawn(move || {
                let _ = ready.send(Ok(()));
                Some(SessionStats::new(false))
            }),
        })
        .await;
        assert_eq!(here, vec![0, 5, 1, 6, 2, 7, 3, 8]);
        assert_eq!(started.len(), 1);
        let stats = started.into_iter().next().unwrap().join().unwrap();
        assert!(stats.is_some());
    }

    #[test]
    fn sessions_are_dealt_round_robin_each_once() {
        assert_eq!(shares(8, 2), vec![vec![0, 2, 4, 6], vec![1, 3, 5, 7]]);
        assert_eq!(shares(5, 3), vec![vec![0, 3], vec![1, 4], vec![2]]);
        // Never more loops than sessions, never none.
        assert_eq!(shares(2, 16), vec![vec![0], vec![1]]);
        assert_eq!(shares(3, 0), vec![vec![0, 1, 2]]);
        for (sessions, threads) in [(1, 1), (7, 2), (100, 8), (10_000, 64)] {
            let dealt = shares(sessions, threads);
            let mut all: Vec<usize> = dealt.iter().flatten().copied().collect();
            all.sort_unstable();
            assert_eq!(
                all,
                (0..sessions).collect::<Vec<_>>(),
                "{sessions}/{threads}"
            );
            let sizes: Vec<usize> = dealt.iter().map(Vec::len).collect();
            let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(hi - lo <= 1, "{sessions}/{threads}: {sizes:?}");
        }
    }

    #[test]
    fn mix_parses_and_picks_by_weight() {
        let mix: Mix = "retr=3, list=1".parse().unwrap();
        assert_eq!(
            mix,
            Mix {
                retr: 3,
                stor: 0,
                list: 1
            }
        );
        assert!("retr=0".parse::<Mix>().is_err());
        assert!("get=1".parse::<Mix>().is_err());
        let mut rng = StdRng::seed_from_u64(1);
        let mut counts = [0u32; 3];
        for _ in 0..4000 {
            counts[mix.pick(&mut rng) as usize] += 1;
        }
        assert_eq!(counts[Op::Stor as usize], 0);
        assert!(
            (2800..3200).contains(&counts[Op::Retr as usize]),
            "{counts:?}"
        );
    }

    #[test]
    fn rates_are_validated() {
        assert_eq!("2000".parse::<Rate>().unwrap().per_s(), 2000.0);
        assert_eq!(" 2.5 ".parse::<Rate>().unwrap().per_s(), 2.5);
        assert!(Rate::new(MAX_RATE).is_ok());
        for bad in ["0", "-5", "NaN", "inf", "1e7", "1000000.5", "fast", ""] {
            let e = bad.parse::<Rate>().unwrap_err();
            assert!(e.to_string().contains("above 0 and at most 1000000"), "{e}");
        }
        assert!(Rate::new(f64::NAN).is_err() && Rate::new(-0.0).is_err());
    }

    fn rate(per_s: f64) -> Rate {
        Rate::new(per_s).unwrap()
    }

    #[test]
    fn slots_are_due_at_fixed_intervals_without_drift() {
        let s = Schedule::new(rate(3000.0), Duration::from_secs(10), None);
        assert_eq!(s.len, 30_000);
        assert_eq!(s.offset(0), Duration::ZERO);
        assert_eq!(s.offset(3), Duration::from_millis(1));
        assert_eq!(s.window(), Duration::from_secs(10));
        // Computed from the slot's number, not summed: no drift after millions of slots.
        let long = Schedule::new(rate(3000.0), Duration::from_secs(3600), None);
        assert_eq!(long.len, 10_800_000);
        assert_eq!(long.offset(9_000_000), Duration::from_secs(3000));
        // Slots due before the end of the duration, at most --max-transfers.
        assert_eq!(
            Schedule::new(rate(1000.0), Duration::from_micros(2500), None).len,
            3
        );
        let capped = Schedule::new(rate(1000.0), Duration::from_secs(10), Some(100));
        assert_eq!(capped.len, 100);
        assert_eq!(capped.window(), Duration::from_millis(100));
    }

    #[test]
    fn every_slot_is_taken_once_in_order() {
        let slots = Slots::new(Schedule::new(rate(1000.0), Duration::from_secs(1), None));
        let taken: Vec<Vec<Duration>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| std::iter::from_fn(|| slots.claim()).collect()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for one in &taken {
            assert!(one.windows(2).all(|w| w[0] < w[1]), "out of order");
        }
        let mut all: Vec<Duration> = taken.concat();
        all.sort();
        let expected: Vec<Duration> = (0..1000).map(Duration::from_millis).collect();
        assert_eq!(all, expected);
        assert_eq!(slots.claim(), None);
    }

    /// Runs a schedule through `k` sessions on a fake clock, as `run_session` does: the
    /// session free first takes the next slot, starts it at its time plus the timer's `lag`
    /// (or at once if it is overdue), and is busy for `service(slot)`.
    fn simulate(
        k: usize,
        schedule: Schedule,
        lag: Duration,
        service: impl Fn(u64) -> Option<Duration>,
    ) -> OpenStats {
        let base = clock::now();
        let slots = Slots::new(schedule);
        let mut free_at = vec![base; k];
        let mut stats = OpenStats::new();
        for slot in 0.. {
            let (session, taken) = free_at
                .iter()
                .copied()
                .enumerate()
                .min_by_key(|(i, t)| (*t, *i))
                .unwrap();
            let Some(offset) = slots.claim() else {
                break;
            };
            let due = base + offset;
            let started = if taken < due { due + lag } else { taken };
            // `None`: the transfer fails after 1 ms.
            let busy = service(slot);
            let end = started + busy.unwrap_or(Duration::from_millis(1));
            stats.record(due, taken, started, busy.map(|_| end));
            free_at[session] = end;
        }
        stats
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= b * 0.02
    }

    #[test]
    fn latency_counts_from_the_scheduled_start() {
        // One session, a slot every 1 ms, each transfer 2 ms: slot i starts at 2i ms and
        // ends at 2i + 2, so its latency from the schedule is i + 2 ms and it started i ms
        // late; measured from its actual start every transfer would take 2 ms.
        let schedule = Schedule::new(rate(1000.0), Duration::from_millis(10), None);
        let two_ms = |_| Some(Duration::from_millis(2));
        let stats = simulate(1, schedule, Duration::ZERO, two_ms);
        let r = stats.report(&schedule, 10);
        assert_eq!((r.slots, r.slots_started, r.slots_not_started), (10, 10, 0));
        assert_eq!(r.late_slots, 9, "{r:?}");
        assert!(close(r.late_ms.max, 9.0), "{r:?}");
        assert!(close(r.latency_ms.max, 11.0), "{r:?}");
        assert!(close(r.latency_ms.p50, 6.0), "{r:?}");
        assert!(close(r.latency_ms.p99, 11.0), "{r:?}");
        assert!(close(r.latency_ms.mean, 6.5), "{r:?}");
        assert!(close(r.achieved_per_s, 1000.0) && r.offered_per_s == 1000.0);

        // Two sessions keep up with the same schedule: every slot on time, 2 ms each.
        let r = simulate(2, schedule, Duration::ZERO, two_ms).report(&schedule, 10);
        assert_eq!(r.late_slots, 0, "{r:?}");
        assert_eq!(r.late_ms, LateBy::default());
        assert!(
            close(r.latency_ms.p50, 2.0) && close(r.latency_ms.max, 2.0),
            "{r:?}"
        );
    }

    #[test]
    fn a_stall_makes_the_following_slots_late_and_failures_count_no_latency() {
        // Four sessions, a slot every 1 ms, 1 ms transfers, each started 0.3 ms after its
        // time (the timer's lag: neither in the latency nor late); slot 10 stalls for 20 ms
        // and slots 30 and 31 fail. The other three sessions keep up, so no slot waits for a
        // session.
        let schedule = Schedule::new(rate(1000.0), Duration::from_millis(100), None);
        let service = |slot| match slot {
            10 => Some(Duration::from_millis(20)),
            30 | 31 => None,
            _ => Some(Duration::from_millis(1)),
        };
        let lag = Duration::from_micros(300);
        let r = simulate(4, schedule, lag, service).report(&schedule, 98);
        assert_eq!((r.slots_started, r.late_slots), (100, 0), "{r:?}");
        assert!(close(r.latency_ms.p50, 1.0), "{r:?}");
        assert!(close(r.latency_ms.max, 20.0), "{r:?}");
        assert!(close(r.achieved_per_s, 980.0), "{r:?}");
        // A timer later than its tick (a generator too busy to start the slot on time):
        // what is beyond the tick counts.
        let r = simulate(4, schedule, Duration::from_micros(1500), service).report(&schedule, 98);
        assert!(close(r.latency_ms.p50, 1.5), "{r:?}");
        // One session with 0.5 ms transfers: the stall (slot 10, from 10 to 30 ms) makes
        // slot k > 10 start at 30 + (k - 11) / 2 ms, late by 24.5 - k / 2 ms, until slot 49
        // is on time again: 38 late slots, the first 19 ms late.
        let service = |slot| Some(Duration::from_micros(if slot == 10 { 20_000 } else { 500 }));
        let r = simulate(1, schedule, Duration::ZERO, service).report(&schedule, 100);
        assert_eq!(r.late_slots, 38, "{r:?}");
        assert!(close(r.late_ms.max, 19.0), "{r:?}");
        // 61 slots of 0.5 ms, then the late ones from 1 to 19.5 ms: the 90th is 15 ms.
        assert!(close(r.latency_ms.p90, 15.0), "{r:?}");
        assert!(close(r.latency_ms.max, 20.0), "{r:?}");
    }

    #[test]
    fn cpu_time_is_readable_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(process_cpu_time().is_some());
        }
    }
}
