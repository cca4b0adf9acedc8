//! The server's metrics: one registry, counters bumped where the events happen, and a
//! Prometheus endpoint (`GET /metrics`, OpenMetrics text) on a listener of its own.
//!
//! Every counter a session or transfer bumps is a plain relaxed atomic in [`Counters`], so the
//! per-transfer cost is a handful of uncontended-or-not `fetch_add`s: no lock, no allocation,
//! no label lookup (labels are array indices fixed at compile time). Everything else (the
//! pool's free, leased and cooling ports, its capacity model, the ban ledger's counts) is
//! read when a scrape comes, by [`ServerCollector`]. Only waits and refusals, which happen
//! when ports run out, touch a histogram (and its lock).
//!
//! Every metric is documented in docs/METRICS.md; a metric added here belongs there too.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use pasv_pool::capacity;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::defender::Defender;
use super::kernel::Disagreement;
use super::passive::PassivePorts;
use super::users::Users;
use crate::clock;

/// Scrapes served at once; more connections wait for a turn (a scraper needs one).
const MAX_SCRAPE_CONNECTIONS: usize = 8;
/// Time a scrape connection gets to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time one scrape connection may stay open, whatever it does.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Transfer direction, the `direction` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    /// RETR.
    Download = 0,
    /// STOR, APPE, STOU.
    Upload = 1,
    /// LIST, NLST, MLSD.
    Listing = 2,
}

const DIRECTIONS: [&str; 3] = ["download", "upload", "listing"];

impl Direction {
    /// The label value (also the `direction` field of the transfer log event).
    pub(crate) fn label(self) -> &'static str {
        DIRECTIONS[self as usize]
    }

    /// The direction of a transfer command's verb.
    pub(crate) fn of_verb(verb: &str) -> Direction {
        match verb {
            "RETR" => Direction::Download,
            "STOR" | "APPE" | "STOU" => Direction::Upload,
            _ => Direction::Listing,
        }
    }
}

/// How a transfer ended, the `result` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TransferResult {
    /// 226.
    Complete = 0,
    /// 425: the data connection never came (accept timeout, failed connect).
    NoConnection = 1,
    /// 426 after ABOR or a vanished control connection.
    Aborted = 2,
    /// 426: the data connection failed or stalled.
    NetworkError = 3,
    /// 451: the file could not be read or written.
    LocalError = 4,
}

impl TransferResult {
    /// The label value (also the `result` field of the transfer log event).
    pub(crate) fn label(self) -> &'static str {
        RESULTS[self as usize]
    }
}

const RESULTS: [&str; 5] = [
    "complete",
    "no_connection",
    "aborted",
    "network_error",
    "local_error",
];

/// Outcome of a PASS, the `result` label of `pasvd_logins`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LoginResult {
    /// 230.
    Ok = 0,
    /// A wrong name or password.
    Failed = 1,
    /// Refused without a verification: the client's address is banned.
    Banned = 2,
}

const LOGIN_RESULTS: [&str; 3] = ["ok", "failed", "banned"];

/// Why a PASV/EPSV got no port, the `cause` label of `pasvd_pool_refusals`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RefusalCause {
    /// Ports cooling: the hint is the pool's exact `retry_after`.
    Cooling = 0,
    /// Every port leased, none cooling: the hint is a guess.
    AllLeased = 1,
    /// The client's address holds `max_passive_per_ip` leases: no hint.
    PeerLimit = 2,
    /// The leased ports could not be bound.
    Bind = 3,
}

const REFUSAL_CAUSES: [&str; 4] = ["cooling", "all_leased", "peer_limit", "bind"];

/// Where an accept timeout struck, the `stage` label of `pasvd_data_accept_timeouts`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AcceptStage {
    /// A transfer command waited for the connection (the client got 425).
    Transfer = 0,
    /// No transfer command came; the unused endpoint went back to the pool.
    Idle = 1,
}

const ACCEPT_STAGES: [&str; 2] = ["transfer", "idle"];

/// Which connection a TLS handshake was on, the `connection` label of
/// `pasvd_tls_handshakes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TlsConnection {
    /// A control connection (AUTH TLS, or the implicit listener).
    Control = 0,
    /// A data connection under PROT P.
    Data = 1,
}

const TLS_CONNECTIONS: [&str; 2] = ["control", "data"];
const TLS_KINDS: [&str; 2] = ["full", "resumed"];

/// Why a data connection's TLS handshake was refused, the `reason` label of
/// `pasvd_tls_data_refused`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DataTlsRefusal {
    /// It did not resume its own control session's TLS session (reuse required).
    NotResumed = 0,
    /// The handshake failed (an alert, a protocol error, a plaintext connection).
    Failed = 1,
    /// It did not finish within the accept deadline.
    Timeout = 2,
}

const DATA_TLS_REFUSALS: [&str; 3] = ["not_resumed", "failed", "timeout"];

/// Buckets of the pool wait histogram, in seconds (`pasv_wait` is 2 s by default).
const WAIT_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0,
];
/// Buckets of the refusal hint histogram, in seconds (TIME_WAIT is 60 s on Linux).
const HINT_BUCKETS: [f64; 9] = [1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 45.0, 60.0, 120.0];

/// The counters sessions, transfers and passive endpoints bump. Cheap to share
/// (`Arc`); every update is one relaxed atomic add, except the two histograms, which only
/// sessions that found no port touch.
#[derive(Debug)]
pub(crate) struct Counters {
    sessions_current: AtomicI64,
    sessions: AtomicU64,
    sessions_refused_limit: AtomicU64,
    logins: [AtomicU64; 3],
    commands: AtomicU64,
    /// Index: the first digit of the code (1 to 5; 0 collects anything else).
    replies: [AtomicU64; 6],
    transfers: [[AtomicU64; 5]; 3],
    bytes: [AtomicU64; 3],
    accept_timeouts: [AtomicU64; 2],
    intruders: AtomicU64,
    /// Sum of lease hold times, in nanoseconds.
    hold_ns: AtomicU64,
    refusals: [AtomicU64; 4],
    bind_in_use: AtomicU64,
    /// Index: [`TlsConnection`], then full (0) or resumed (1).
    tls_handshakes: [[AtomicU64; 2]; 2],
    tls_control_failed: AtomicU64,
    tls_data_refused: [AtomicU64; 3],
    /// Waits that ended with a lease, and those that ended refused.
    waits_leased: Histogram,
    waits_refused: Histogram,
    refusal_hints: Histogram,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            sessions_current: AtomicI64::new(0),
            sessions: AtomicU64::new(0),
            sessions_refused_limit: AtomicU64::new(0),
            logins: Default::default(),
            commands: AtomicU64::new(0),
            replies: Default::default(),
            transfers: Default::default(),
            bytes: Default::default(),
            accept_timeouts: Default::default(),
            intruders: AtomicU64::new(0),
            hold_ns: AtomicU64::new(0),
            refusals: Default::default(),
            bind_in_use: AtomicU64::new(0),
            tls_handshakes: Default::default(),
            tls_control_failed: AtomicU64::new(0),
            tls_data_refused: Default::default(),
            waits_leased: Histogram::new(WAIT_BUCKETS),
            waits_refused: Histogram::new(WAIT_BUCKETS),
            refusal_hints: Histogram::new(HINT_BUCKETS),
        }
    }
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Counters {
    /// A session starts; the returned guard ends it when dropped.
    pub(crate) fn session_opened(self: &Arc<Self>) -> SessionGuard {
        add(&self.sessions, 1);
        self.sessions_current.fetch_add(1, Ordering::Relaxed);
        SessionGuard(Arc::clone(self))
    }

    /// A connection refused by `max_clients` or `max_per_ip`.
    pub(crate) fn session_refused_by_limit(&self) {
        add(&self.sessions_refused_limit, 1);
    }

    /// A PASS answered.
    pub(crate) fn login(&self, result: LoginResult) {
        add(&self.logins[result as usize], 1);
    }

    /// A command decoded.
    pub(crate) fn command(&self) {
        add(&self.commands, 1);
    }

    /// A reply queued for the client.
    pub(crate) fn reply(&self, code: u16) {
        let class = usize::from(code / 100);
        add(&self.replies[if class <= 5 { class } else { 0 }], 1);
    }

    /// A transfer ended (its final reply is on its way).
    pub(crate) fn transfer(&self, direction: Direction, result: TransferResult, bytes: u64) {
        add(&self.transfers[direction as usize][result as usize], 1);
        if bytes > 0 {
            add(&self.bytes[direction as usize], bytes);
        }
    }

    /// A passive endpoint's accept timeout passed without the client's connection.
    pub(crate) fn accept_timeout(&self, stage: AcceptStage) {
        add(&self.accept_timeouts[stage as usize], 1);
    }

    /// A connection to a passive port from an address other than the lease's peer was reset.
    pub(crate) fn intruder_dropped(&self) {
        add(&self.intruders, 1);
    }

    /// A lease went back to the pool after `held`.
    pub(crate) fn lease_held(&self, held: Duration) {
        add(
            &self.hold_ns,
            u64::try_from(held.as_nanos()).unwrap_or(u64::MAX),
        );
    }

    /// A session waited `waited` for a port, and got one or not.
    pub(crate) fn pool_wait(&self, waited: Duration, leased: bool) {
        let h = if leased {
            &self.waits_leased
        } else {
            &self.waits_refused
        };
        h.observe(waited.as_secs_f64());
    }

    /// A PASV/EPSV refused, with the retry hint its 425 carried.
    pub(crate) fn pool_refusal(&self, cause: RefusalCause, hint: Option<Duration>) {
        add(&self.refusals[cause as usize], 1);
        if let Some(hint) = hint {
            self.refusal_hints.observe(hint.as_secs_f64());
        }
    }

    /// A TLS handshake that completed and was accepted.
    pub(crate) fn tls_handshake(&self, connection: TlsConnection, resumed: bool) {
        add(
            &self.tls_handshakes[connection as usize][usize::from(resumed)],
            1,
        );
    }

    /// A control connection's TLS handshake failed or timed out (the session ended).
    pub(crate) fn tls_control_failed(&self) {
        add(&self.tls_control_failed, 1);
    }

    /// A data connection refused at its TLS handshake (the transfer got 425).
    pub(crate) fn tls_data_refused(&self, reason: DataTlsRefusal) {
        add(&self.tls_data_refused[reason as usize], 1);
    }

    /// A leased port whose bind failed with EADDRINUSE (the kernel holds it, the pool did
    /// not know).
    pub(crate) fn bind_in_use(&self) {
        add(&self.bind_in_use, 1);
    }
}

/// A running session's place in `pasvd_sessions`; dropped when the session ends.
pub(crate) struct SessionGuard(Arc<Counters>);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.sessions_current.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Reads everything at scrape time: the counters, the pool, the ban ledger.
pub(crate) struct ServerCollector {
    pub(crate) counters: Arc<Counters>,
    pub(crate) ports: Arc<PassivePorts>,
    pub(crate) defender: Arc<Defender>,
    pub(crate) users: Arc<Users>,
    /// The previous scrape's time and acquisitions, for the lease rate between scrapes.
    previous: Mutex<Option<(tokio::time::Instant, u64)>>,
}

impl fmt::Debug for ServerCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCollector").finish_non_exhaustive()
    }
}

/// Writes one metric with no labels.
fn one(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    metric: &impl EncodeMetric,
) -> fmt::Result {
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// Writes one metric family whose members differ by one label.
fn family<'v, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &str,
    members: impl IntoIterator<Item = (&'v str, M)>,
) -> fmt::Result {
    let mut members = members.into_iter().peekable();
    let Some((_, first)) = members.peek() else {
        return Ok(());
    };
    let mut metric = encoder.encode_descriptor(name, help, None, first.metric_type())?;
    for (value, m) in members {
        let labels = [(label, value)];
        m.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter(v: u64) -> ConstCounter<u64> {
    ConstCounter::new(v)
}

impl ServerCollector {
    pub(crate) fn new(
        counters: Arc<Counters>,
        ports: Arc<PassivePorts>,
        defender: Arc<Defender>,
        users: Arc<Users>,
    ) -> ServerCollector {
        ServerCollector {
            counters,
            ports,
            defender,
            users,
            previous: Mutex::new(None),
        }
    }

    fn encode_server(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let c = &*self.counters;
        one(
            e,
            "pasvd_sessions",
            "Control connections being served.",
            &ConstGauge::new(c.sessions_current.load(Ordering::Relaxed)),
        )?;
        one(
            e,
            "pasvd_sessions_opened",
            "Control connections admitted since start.",
            &counter(get(&c.sessions)),
        )?;
        let (logins, tracked) = self.defender.counts();
        family(
            e,
            "pasvd_connections_refused",
            "Control connections answered 421 and closed before a session: by the session \
             limits (max_clients, max_per_ip) or because the address is banned.",
            "reason",
            [
                ("limit", counter(get(&c.sessions_refused_limit))),
                ("banned", counter(logins.refused_connections)),
            ],
        )?;
        family(
            e,
            "pasvd_logins",
            "PASS commands answered, by result.",
            "result",
            LOGIN_RESULTS
                .iter()
                .zip(&c.logins)
                .map(|(&l, v)| (l, counter(get(v)))),
        )?;
        one(
            e,
            "pasvd_login_bans",
            "Bans imposed on client addresses (max_login_failures within ban_window).",
            &counter(logins.bans),
        )?;
        one(
            e,
            "pasvd_login_tracked_addresses",
            "Client addresses the ban ledger tracks now.",
            &ConstGauge::new(tracked as i64),
        )?;
        one(
            e,
            "pasvd_password_verifications",
            "Password verifications run (argon2), against the dummy hash included.",
            &counter(self.users.verify_counts().runs),
        )?;
        one(
            e,
            "pasvd_commands",
            "Commands received on control connections.",
            &counter(get(&c.commands)),
        )?;
        let classes = ["other", "1xx", "2xx", "3xx", "4xx", "5xx"];
        family(
            e,
            "pasvd_replies",
            "Replies sent, by the class of their code.",
            "class",
            classes
                .iter()
                .zip(&c.replies)
                .skip(1)
                .map(|(&l, v)| (l, counter(get(v)))),
        )?;
        let mut transfers = e.encode_descriptor(
            "pasvd_transfers",
            "Transfers ended, by direction and result.",
            None,
            counter(0).metric_type(),
        )?;
        for (d, row) in DIRECTIONS.iter().zip(&c.transfers) {
            for (r, v) in RESULTS.iter().zip(row) {
                let labels = [("direction", *d), ("result", *r)];
                counter(get(v)).encode(transfers.encode_family(&labels)?)?;
            }
        }
        family(
            e,
            "pasvd_transfer_bytes",
            "Bytes moved by transfers (file bytes, whatever their ending), by direction.",
            "direction",
            DIRECTIONS
                .iter()
                .zip(&c.bytes)
                .map(|(&d, v)| (d, counter(get(v)))),
        )?;
        family(
            e,
            "pasvd_data_accept_timeouts",
            "Passive endpoints whose accept_timeout passed without the client's connection: \
             while a transfer command waited (425), or with no transfer command.",
            "stage",
            ACCEPT_STAGES
                .iter()
                .zip(&c.accept_timeouts)
                .map(|(&s, v)| (s, counter(get(v)))),
        )?;
        one(
            e,
            "pasvd_data_intruders_dropped",
            "Connections to a passive port from an address other than the lease's client, \
             reset.",
            &counter(get(&c.intruders)),
        )?;
        let mut handshakes = e.encode_descriptor(
            "pasvd_tls_handshakes",
            "TLS handshakes completed and accepted, by connection (control, data) and kind \
             (full, resumed).",
            None,
            counter(0).metric_type(),
        )?;
        for (conn, row) in TLS_CONNECTIONS.iter().zip(&c.tls_handshakes) {
            for (kind, v) in TLS_KINDS.iter().zip(row) {
                let labels = [("connection", *conn), ("kind", *kind)];
                counter(get(v)).encode(handshakes.encode_family(&labels)?)?;
            }
        }
        one(
            e,
            "pasvd_tls_control_failed",
            "Control connection TLS handshakes that failed or timed out (the session ended).",
            &counter(get(&c.tls_control_failed)),
        )?;
        family(
            e,
            "pasvd_tls_data_refused",
            "Data connections refused at their TLS handshake (425), by reason: not_resumed \
             (it did not resume its own control session's TLS session), failed, timeout.",
            "reason",
            DATA_TLS_REFUSALS
                .iter()
                .zip(&c.tls_data_refused)
                .map(|(&r, v)| (r, counter(get(v)))),
        )?;
        Ok(())
    }

    fn encode_pool(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let c = &*self.counters;
        let now = clock::now();
        let stats = self.ports.stats();
        let addresses: Vec<String> = stats
            .per_address
            .iter()
            .map(|a| a.address.to_string())
            .collect();
        let per_address = |e: &mut DescriptorEncoder<'_>,
                           name: &str,
                           help: &str,
                           value: fn(&pasv_pool::AddressStats) -> usize| {
            family(
                e,
                name,
                help,
                "address",
                addresses
                    .iter()
                    .zip(&stats.per_address)
                    .map(|(a, s)| (a.as_str(), ConstGauge::new(value(s) as i64))),
            )
        };
        per_address(
            e,
            "pasvd_pool_free_ports",
            "Passive ports with no lease and no port-wide quarantine, per local address.",
            |s| s.free,
        )?;
        per_address(
            e,
            "pasvd_pool_leased_ports",
            "Live passive leases, per local address.",
            |s| s.leased,
        )?;
        per_address(
            e,
            "pasvd_pool_cooling_ports",
            "Passive ports in port-wide quarantine (TIME_WAIT on our side), per local address.",
            |s| s.cooling,
        )?;
        one(
            e,
            "pasvd_pool_peer_quarantined",
            "(port, client) pairs in per-client quarantine (quarantine scope peer).",
            &ConstGauge::new(stats.peer_quarantined as i64),
        )?;
        one(
            e,
            "pasvd_pool_peak_leased",
            "The most passive leases held at once since start.",
            &ConstGauge::new(stats.peak_leased as i64),
        )?;
        one(
            e,
            "pasvd_pool_acquisitions",
            "Passive leases handed out.",
            &counter(stats.acquisitions),
        )?;
        let releases = [
            ("server", stats.releases_server),
            ("client", stats.releases_client),
            ("reset", stats.releases_reset),
            ("never_connected", stats.releases_never_connected),
        ];
        family(
            e,
            "pasvd_pool_releases",
            "Passive leases ended, by who closed the data connection first (server: \
             TIME_WAIT on the passive port).",
            "closer",
            releases.iter().map(|&(l, v)| (l, counter(v))),
        )?;
        let released: u64 = releases.iter().map(|(_, v)| v).sum();
        let hold_total = Duration::from_nanos(get(&c.hold_ns));
        one(
            e,
            "pasvd_pool_lease_hold_seconds",
            "Total time passive leases were held, from the lease to its release.",
            &ConstCounter::new(hold_total.as_secs_f64()),
        )?;
        family(
            e,
            "pasvd_pool_refusals",
            "PASV/EPSV answered 425 without a port, by \
             cause.",
            "cause",
            REFUSAL_CAUSES
                .iter()
                .zip(&c.refusals)
                .map(|(&l, v)| (l, counter(get(v)))),
        )?;
        one(
            e,
            "pasvd_pool_refusal_hint_seconds",
            "The `retry after` hint carried by each 425 refusal.",
            &c.refusal_hints,
        )?;
        family(
            e,
            "pasvd_pool_wait_seconds",
            "How long PASV/EPSV waited for a port when none was free at once, by how the \
             wait ended.",
            "outcome",
            [
                ("leased", c.waits_leased.clone()),
                ("refused", c.waits_refused.clone()),
            ],
        )?;
        one(
            e,
            "pasvd_pool_bind_in_use",
            "Leased ports whose bind the kernel refused with EADDRINUSE.",
            &counter(get(&c.bind_in_use)),
        )?;
        // The capacity model (DESIGN.md section 1) with the measured hold time and share of
        // server-side closes; before the first release, a hold of zero and no server closes.
        let (hold, server_share) = if released == 0 {
            (Duration::ZERO, 0.0)
        } else {
            (
                hold_total / u32::try_from(released).unwrap_or(u32::MAX),
                stats.releases_server as f64 / released as f64,
            )
        };
        let model = self.ports.capacity(hold, server_share);
        one(
            e,
            "pasvd_pool_ports",
            "Passive (address, port) slots: ports in the range times local addresses.",
            &ConstGauge::new(model.slots as i64),
        )?;
        one(
            e,
            "pasvd_pool_time_wait_seconds",
            "The configured quarantine length T (time_wait).",
            &ConstGauge::new(model.time_wait.as_secs_f64()),
        )?;
        one(
            e,
            "pasvd_pool_hold_seconds_mean",
            "Mean lease hold time h since start.",
            &ConstGauge::new(hold.as_secs_f64()),
        )?;
        one(
            e,
            "pasvd_pool_server_close_ratio",
            "Share f of leases whose data connection the server closed first, since start.",
            &ConstGauge::new(server_share),
        )?;
        family(
            e,
            "pasvd_pool_rate_max",
            "Fluid capacity N*A/(h+f*T) in leases per second: with T charged as the \
             configured quarantine scope does (`configured`; none charges nothing), or as a \
             port-wide quarantine would (`port`).",
            "scope",
            [
                ("configured", ConstGauge::new(model.rate_max)),
                (
                    "port",
                    ConstGauge::new(capacity::rate_max(
                        model.slots,
                        hold.as_secs_f64(),
                        server_share,
                        model.time_wait.as_secs_f64(),
                    )),
                ),
            ],
        )?;
        let rate = {
            let mut previous = self.previous.lock().unwrap_or_else(|p| p.into_inner());
            let (since, before) = previous.unwrap_or((self.ports.started(), 0));
            *previous = Some((now, stats.acquisitions));
            let secs = now.saturating_duration_since(since).as_secs_f64();
            if secs > 0.0 {
                stats.acquisitions.saturating_sub(before) as f64 / secs
            } else {
                0.0
            }
        };
        one(
            e,
            "pasvd_pool_lease_rate",
            "Leases per second since the previous scrape (since start for the first).",
            &ConstGauge::new(rate),
        )?;
        one(
            e,
            "pasvd_pool_headroom",
            "pasvd_pool_rate_max{scope=\"configured\"} minus pasvd_pool_lease_rate, in \
             leases per second.",
            &ConstGauge::new(model.rate_max - rate),
        )?;
        // The ledger against the kernel, from the check the scrape refreshed (at most
        // LEDGER_CACHE_AGE old; absent where the kernel's tables cannot be read).
        if let Some((check, age)) = self.ports.ledger_cached() {
            one(
                e,
                "pasvd_ledger_age_seconds",
                "Age of the ledger check the pasvd_ledger_* metrics come from (checks are \
                 cached for a few seconds).",
                &ConstGauge::new(age.as_secs_f64()),
            )?;
            one(
                e,
                "pasvd_ledger_kernel_time_wait",
                "TCP sockets in TIME_WAIT on the passive ports, as the kernel reports them.",
                &ConstGauge::new(check.kernel_time_wait as i64),
            )?;
            one(
                e,
                "pasvd_ledger_foreign_ports",
                "Passive ports on which another program holds a TCP socket (a listener or a \
                 connection), so the kernel refuses their bind.",
                &ConstGauge::new(check.foreign as i64),
            )?;
            family(
                e,
                "pasvd_ledger_disagreements",
                "Passive ports on which the pool's ledger and the kernel disagree now.",
                "kind",
                [
                    (
                        Disagreement::OfferedWhileHeld.name(),
                        ConstGauge::new(check.offered_while_held as i64),
                    ),
                    (
                        Disagreement::WithheldWhileFree.name(),
                        ConstGauge::new(check.withheld_while_free as i64),
                    ),
                ],
            )?;
        }
        Ok(())
    }
}

impl Collector for ServerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        self.encode_server(&mut encoder)?;
        self.encode_pool(&mut encoder)
    }
}

/// The registry and its text encoding.
pub(crate) struct Exporter {
    registry: Registry,
    /// The passive ports, whose ledger check a scrape refreshes before encoding.
    ports: Arc<PassivePorts>,
}

impl Exporter {
    pub(crate) fn new(collector: ServerCollector) -> Exporter {
        let ports = Arc::clone(&collector.ports);
        let mut registry = Registry::default();
        registry.register_collector(Box::new(collector));
        Exporter { registry, ports }
    }

    /// The OpenMetrics text of every metric now.
    pub(crate) fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        out
    }
}

/// Binds the metrics listener (with the privileges the process starts with, like the
/// control socket).
pub(crate) fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn respond(exporter: &Exporter, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            // Off the runtime and outside the pool's lock; cached, so scrapes in a row
            // share one reading of the kernel's tables.
            if let Err(e) = exporter.ports.ledger_check().await {
                tracing::debug!(error = %e, "ledger check unavailable");
            }
            (StatusCode::OK, exporter.render())
        }
        (&Method::GET, _) => (StatusCode::NOT_FOUND, "not found; try /metrics\n".into()),
        _ => (StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if status == StatusCode::OK {
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(CONTENT_TYPE),
        );
    }
    response
}

/// Serves `GET /metrics` on `listener` until `stop`: HTTP/1.1 by hyper, at most
/// [`MAX_SCRAPE_CONNECTIONS`] connections at once, each with a deadline.
pub(crate) async fn serve(
    listener: std::net::TcpListener,
    exporter: Arc<Exporter>,
    stop: CancellationToken,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "metrics listener unusable");
            return;
        }
    };
    let turns = Arc::new(Semaphore::new(MAX_SCRAPE_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            () = stop.cancelled() => return,
            p = Arc::clone(&turns).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (stream, _) = tokio::select! {
            () = stop.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let exporter = Arc::clone(&exporter);
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let exporter = Arc::clone(&exporter);
                async move { Ok::<_, std::convert::Infallible>(respond(&exporter, &req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                () = stop.cancelled() => {}
                _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn) => {}
            }
            drop(permit);
        });
    }
}
