//! Server configuration: embedded defaults, a TOML file, command-line flags.
//!
//! Keys are named after the vsftpd ones where vsftpd has one (`pasv_min_port`, `max_clients`,
//! `max_per_ip`, `accept_timeout`, `idle_session_timeout` is `idle_timeout` here). The layers
//! are applied in order: [`Config::default`], then a file ([`ConfigFile`]), then flags (also a
//! [`ConfigFile`], built by the binary), so a flag overrides the file.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use pasv_pool::{QuarantineScope, StrategyKind};
use serde::Deserialize;

use super::error::ServerError;
use super::tls::{CertSource, SessionReuse, TlsRequired};

/// How passive listeners are bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ListenerMode {
    /// A listener is bound for each lease and closed right after its one accept (portable).
    /// A port is leased to one session at a time, whatever its address.
    PerLease,
    /// Every passive port is bound once at start and kept (the default); an accepted
    /// connection goes to the session that holds the lease for that port and that peer
    /// address, and one nobody expects is reset when a session next accepts on that port or
    /// is granted a lease on it (until then it waits in the backlog). A port is leased per
    /// port and peer address, so clients from different addresses share the range: 20 ports
    /// serve any number of addresses at once, 20 sessions each. No bind, listen or filter
    /// compilation per PASV, and no walk over a port's TIME_WAIT sockets to bind it again.
    ///
    /// A client that connects after its lease ended (accept timeout, replaced PASV) is
    /// accepted by the kernel instead of refused, and reset at the next grant on that port:
    /// it is never taken for the next lease of that port by the same address, which is what
    /// a listener bound per lease gives. A connection that comes from that address after
    /// the next grant is taken for it in both modes (nothing tells the two apart).
    ///
    /// The backlog of a port is shared by the addresses holding a lease on it: one of them
    /// could fill it (`listen_backlog` connections) until a session accepts on the port or
    /// a lease is granted on it, which clears it. `max_passive_per_ip` bounds how many ports
    /// one address can do that to, as in per-lease mode it bounds how many ports one
    /// address can hold.
    #[default]
    Prebound,
}

impl FromStr for ListenerMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "per-lease" | "per_lease" | "perlease" => Ok(ListenerMode::PerLease),
            "prebound" | "pre-bound" => Ok(ListenerMode::Prebound),
            _ => Err(format!(
                "unknown listener mode {s:?} (per-lease or prebound)"
            )),
        }
    }
}

/// The format of pasvd's log on stderr (the xferlog, if any, is written alongside either).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LogFormat {
    /// One human-readable line per event (`key=value` fields).
    #[default]
    Text,
    /// One JSON object per line and event, with the field names of docs/LOGS.md.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("unknown log format {s:?} (text or json)")),
        }
    }
}

/// Linux's TIME_WAIT length (`TCP_TIMEWAIT_LEN`, not tunable).
const LINUX_TIME_WAIT: Duration = Duration::from_secs(60);

fn scope_name(scope: QuarantineScope) -> &'static str {
    match scope {
        QuarantineScope::Port => "port",
        QuarantineScope::Peer => "peer",
        QuarantineScope::None => "none",
    }
}

/// Parses a quarantine scope name: `port`, `peer` or `none`.
pub fn parse_scope(s: &str) -> Result<QuarantineScope, String> {
    match s.to_ascii_lowercase().as_str() {
        "port" => Ok(QuarantineScope::Port),
        "peer" => Ok(QuarantineScope::Peer),
        "none" => Ok(QuarantineScope::None),
        _ => Err(format!(
            "unknown quarantine scope {s:?} (port, peer or none)"
        )),
    }
}

/// Everything `pasvd` can be told. Field names are the TOML keys.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// Control connection address (`127.0.0.1:2121`; port 0 picks a free one).
    pub listen: SocketAddr,
    /// The served directory.
    pub root: PathBuf,
    /// Lowest passive port.
    pub pasv_min_port: u16,
    /// Highest passive port (inclusive).
    pub pasv_max_port: u16,
    /// Local addresses whose passive ports are leased; empty means the listen address (or,
    /// when that is unspecified, any address, advertising the control connection's local one).
    pub pasv_address: Vec<IpAddr>,
    /// Address advertised in 227 replies instead of the leased one (NAT): `local -> public`.
    /// The key `0.0.0.0` applies to every local address without its own entry.
    pub pasv_public_address: HashMap<IpAddr, PublicAddress>,
    /// Address advertised in 227 replies to clients in a block (`CIDR=ADDR`, LAN and WAN
    /// clients of one server): the first block that holds the client wins, before
    /// `pasv_public_address`.
    pub pasv_public_address_for: Vec<(Cidr, PublicAddress)>,
    /// PASV may lease on any passive address, because clients connect to the address the
    /// 227 reply advertises. Off (the default), PASV leases on the control connection's local
    /// address when it is a passive address: Python's ftplib, curl and Apache commons-net
    /// ignore the 227 address and connect to the control connection's peer, so a lease on
    /// another address would be refused.
    pub pasv_follow_advertised: bool,
    /// Control connections start with a PROXY protocol header (version 1 or 2) naming the
    /// client's address, which then counts as the peer everywhere (limits, bans, logs, the
    /// PORT check, the data connection's address check). Needs `proxy_from`.
    pub proxy_protocol: bool,
    /// The sources (load balancers) allowed to send a PROXY header; with `proxy_protocol`,
    /// control connections from anywhere else are closed unread.
    pub proxy_from: Vec<Cidr>,
    /// Passive data connections from `proxy_from` sources start with a PROXY header naming
    /// the client (the balancer forwards the passive ranges with `send-proxy-v2`); the data
    /// connection's address check then uses that address. Needs `proxy_from`; passive
    /// listeners are then per lease ([`Config::effective_listener_mode`]).
    pub proxy_protocol_data: bool,
    /// Anonymous logins (`anonymous`, `ftp`) allowed.
    pub anonymous_enable: bool,
    /// Anonymous users may upload, rename, delete and create directories.
    pub anonymous_write: bool,
    /// TOML users file with argon2 password hashes.
    pub users: Option<PathBuf>,
    /// What a closed port blocks; `None` here means: derived from `no_reuseaddr`
    /// (`Port` without SO_REUSEADDR, `None` with it, which Linux allows).
    pub quarantine: Option<QuarantineScope>,
    /// Quarantine length (Linux TIME_WAIT is 60 s).
    pub time_wait: Duration,
    /// Bind passive listeners without SO_REUSEADDR (reproduces classic exhaustion).
    pub no_reuseaddr: bool,
    /// Longest wait for a port, before answering 425: the session waits in the pool's wait
    /// queue, served first come, first served as ports are released or their quarantine ends.
    pub pasv_wait: Duration,
    /// Time a passive listener waits for the client's connection; a connection that came but
    /// whose transfer command did not gets this long again, then it is closed.
    pub accept_timeout: Duration,
    /// Time an active (PORT/EPRT) connect may take.
    pub connect_timeout: Duration,
    /// Maximum concurrent sessions (0 = unlimited; 2000 by default). At start the soft
    /// open-file limit is raised to what this many sessions need (four descriptors each),
    /// up to the hard limit.
    pub max_clients: usize,
    /// Maximum concurrent sessions per client address (0 = unlimited). A client address is
    /// an IPv4 address, or an IPv6 /64 (every address of it together).
    pub max_per_ip: usize,
    /// Maximum sessions that have not logged in yet, over all addresses (0 = unlimited).
    /// `None`: half of `max_clients`, at least one (unlimited when `max_clients` is);
    /// see [`Config::effective_max_unauthenticated`]. Connections that never log in then
    /// cannot fill `max_clients`: logged-in sessions do not count here.
    pub max_unauthenticated: Option<usize>,
    /// Maximum sessions from one client address that have not logged in yet (0 =
    /// unlimited; default 8).
    pub max_unauthenticated_per_ip: usize,
    /// Maximum passive leases one client address holds at once, over all its sessions
    /// (0 = unlimited). `None`: half the ports of the range, at least one (see
    /// [`Config::effective_max_passive_per_ip`]).
    pub max_passive_per_ip: Option<usize>,
    /// Idle control connection timeout: no command read and no reply byte written for this
    /// long ends the session. Also the control write timeout: replies that wait this long
    /// with no byte taken by the client end the session with a reset, even while it still
    /// sends commands.
    pub idle_timeout: Duration,
    /// Data connection stall timeout: a transfer whose reads or writes move no byte for this
    /// long fails with 426 (the whole transfer may take longer).
    pub data_timeout: Duration,
    /// Optional wu-ftpd format transfer log.
    pub xferlog: Option<PathBuf>,
    /// Passive listener mode.
    pub listener_mode: ListenerMode,
    /// Port selection strategy of the pool.
    pub pasv_strategy: StrategyKind,
    /// PORT and EPRT allowed.
    pub port_enable: bool,
    /// Lowest port PORT/EPRT may name (1024 blocks bounces to well-known services).
    pub port_min_port: u16,
    /// Delay before answering a client address's first failed login in `ban_window`;
    /// doubled for each later one, up to 16 times.
    pub login_fail_delay: Duration,
    /// Failed logins after which the session is closed (the address may reconnect; see
    /// `max_login_failures`).
    pub max_login_fails: u32,
    /// Failed logins from one client address (an IPv6 /64) within `ban_window` that ban it
    /// for `ban_time`: its connections are then refused with 421 (1 to 1000).
    pub max_login_failures: u32,
    /// How long a failed login counts towards `max_login_failures`.
    pub ban_window: Duration,
    /// How long a banned address is refused.
    pub ban_time: Duration,
    /// Time a session has to log in; then it is closed with 421, whatever it sent.
    pub login_timeout: Duration,
    /// Time running transfers get to finish after a shutdown signal.
    pub shutdown_timeout: Duration,
    /// Listen backlog of the control and passive sockets.
    pub listen_backlog: u32,
    /// Data copy buffer size in bytes.
    pub buffer_size: usize,
    /// fsync uploads before renaming them into place.
    pub fsync_uploads: bool,
    /// Honour TYPE A: downloads send LF as CRLF, uploads store CRLF as LF. Off, every
    /// transfer is binary whatever the TYPE (vsftpd's default).
    pub ascii_transfers: bool,
    /// Greeting text.
    pub banner: String,
    /// Busy polling: how long the server keeps polling for I/O after the last control input
    /// instead of sleeping (zero = off, the default). It saves the wake-up each command
    /// would cost (over loopback, the client pays for it) and spends the server's core on
    /// spinning; see the `busy_poll` module.
    pub busy_poll: Duration,
    /// Runtime threads serving sessions; 0 (the default) runs one per CPU the process may
    /// use (its affinity mask, so `taskset -c 1 pasvd` gets one). With one thread the
    /// runtime is single-threaded: no work stealing and no wake-ups across threads, which
    /// on one CPU are pure cost. Busy polling always runs one.
    pub threads: usize,
    /// The account (a name in `/etc/passwd`) the server switches to once its sockets are
    /// bound, when started as root: its groups, group id and user id. `None` keeps the
    /// starting account (a warning is logged if that is root).
    pub run_as: Option<String>,
    /// Address of the Prometheus endpoint (`GET /metrics` over HTTP on a listener of its
    /// own; see docs/METRICS.md). `None` serves no metrics.
    pub metrics: Option<SocketAddr>,
    /// The format of the log on stderr (read by `pasvd` when it sets up its log).
    pub log_format: LogFormat,
    /// PEM certificate chain (leaf first) for FTPS; needs `tls_key`. Read again on SIGHUP.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert` (PKCS#8, PKCS#1 or SEC1).
    pub tls_key: Option<PathBuf>,
    /// Generate a self-signed certificate at start (development only; a warning is logged).
    pub tls_self_signed: bool,
    /// Address of the implicit FTPS listener (TLS from the first byte, usually port 990).
    pub implicit_tls_listen: Option<SocketAddr>,
    /// What a session must protect with TLS.
    pub tls_required: TlsRequired,
    /// Whether protected data connections must resume their control session's TLS session.
    pub tls_session_reuse: SessionReuse,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 2121)),
            root: demo_root(),
            pasv_min_port: 30000,
            pasv_max_port: 30019,
            pasv_address: Vec::new(),
            pasv_public_address: HashMap::new(),
            pasv_public_address_for: Vec::new(),
            pasv_follow_advertised: false,
            proxy_protocol: false,
            proxy_from: Vec::new(),
            proxy_protocol_data: false,
            anonymous_enable: true,
            anonymous_write: false,
            users: None,
            quarantine: None,
            time_wait: Duration::from_secs(60),
            no_reuseaddr: false,
            pasv_wait: Duration::from_secs(2),
            accept_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(30),
            max_clients: 2000,
            max_per_ip: 64,
            max_unauthenticated: None,
            max_unauthenticated_per_ip: 8,
            max_passive_per_ip: None,
            idle_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(300),
            xferlog: None,
            listener_mode: ListenerMode::Prebound,
            pasv_strategy: StrategyKind::default(),
            port_enable: true,
            port_min_port: 1024,
            login_fail_delay: Duration::from_secs(1),
            max_login_fails: 3,
            // A user who mistypes gets three sessions of three tries; a guesser from one
            // address gets fewer than 10 guesses per 25 minutes (fail2ban: 5 in 10 minutes,
            // a 10-minute ban; SFTPGo: a score of 15 in 30 minutes, a 30-minute ban).
            max_login_failures: 10,
            ban_window: Duration::from_secs(600),
            ban_time: Duration::from_secs(900),
            login_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(10),
            listen_backlog: 1024,
            buffer_size: 256 * 1024,
            fsync_uploads: true,
            ascii_transfers: true,
            banner: "pasvd ready".to_owned(),
            busy_poll: Duration::ZERO,
            threads: 0,
            run_as: None,
            metrics: None,
            log_format: LogFormat::Text,
            tls_cert: None,
            tls_key: None,
            tls_self_signed: false,
            implicit_tls_listen: None,
            tls_required: TlsRequired::None,
            tls_session_reuse: SessionReuse::Required,
        }
    }
}

/// Where the demo directory lives when no root is configured.
pub fn demo_root() -> PathBuf {
    std::env::temp_dir().join("pasvd-demo")
}

impl Config {
    /// How many runtime threads to run: `threads`, or with 0 one per CPU this process may
    /// run on; always 1 with busy polling.
    pub fn runtime_threads(&self) -> usize {
        if !self.busy_poll.is_zero() {
            return 1;
        }
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }
    }

    /// A configuration for tests: `127.0.0.1:0`, the given root, passive ports leased on
    /// 127.0.0.1 from the default range (tests usually set their own), anonymous with write
    /// access, short timeouts, no login delay, and no limit of passive leases per address
    /// (test clients all come from 127.0.0.1).
    pub fn for_tests(root: PathBuf) -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            root,
            pasv_address: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            anonymous_write: true,
            accept_timeout: Duration::from_secs(10),
            login_fail_delay: Duration::from_millis(10),
            shutdown_timeout: Duration::from_secs(2),
            fsync_uploads: false,
            max_passive_per_ip: Some(0),
            max_unauthenticated_per_ip: 0,
            ..Config::default()
        }
    }

    /// Every setting in effect, as `key = value` lines in the TOML file's syntax (the value
    /// as its `Debug` form where TOML has no literal for it), for `pasvd --check-config`.
    /// Nothing secret is in a `Config` (passwords live in the users file, which is named, not
    /// shown); the users file's path is shown, its content never.
    pub fn effective_settings(&self) -> String {
        let mut out = String::new();
        let mut line = |key: &str, value: String| {
            out.push_str(key);
            out.push_str(" = ");
            out.push_str(&value);
            out.push('\n');
        };
        let quote = |s: &str| format!("{s:?}");
        let list = |items: Vec<String>| format!("[{}]", items.join(", "));
        let path = |p: &Path| quote(&p.display().to_string());
        line("listen", quote(&self.listen.to_string()));
        line("root", path(&self.root));
        line("pasv_min_port", self.pasv_min_port.to_string());
        line("pasv_max_port", self.pasv_max_port.to_string());
        line(
            "pasv_address",
            list(
                self.pasv_address
                    .iter()
                    .map(|a| quote(&a.to_string()))
                    .collect(),
            ),
        );
        let mut public: Vec<String> = self
            .pasv_public_address
            .iter()
            .map(|(local, public)| quote(&format!("{local}={public}")))
            .collect();
        public.sort();
        line("pasv_public_address", list(public));
        line(
            "pasv_public_address_for",
            list(
                self.pasv_public_address_for
                    .iter()
                    .map(|(block, public)| quote(&format!("{block}={public}")))
                    .collect(),
            ),
        );
        line(
            "pasv_follow_advertised",
            self.pasv_follow_advertised.to_string(),
        );
        line("proxy_protocol", self.proxy_protocol.to_string());
        line(
            "proxy_from",
            list(
                self.proxy_from
                    .iter()
                    .map(|c| quote(&c.to_string()))
                    .collect(),
            ),
        );
        line("proxy_protocol_data", self.proxy_protocol_data.to_string());
        line("anonymous_enable", self.anonymous_enable.to_string());
        line("anonymous_write", self.anonymous_write.to_string());
        line(
            "users",
            self.users
                .as_deref()
                .map_or_else(|| "(none)".to_owned(), path),
        );
        line(
            "quarantine",
            quote(&format!("{:?}", self.effective_quarantine()).to_lowercase()),
        );
        line("no_reuseaddr", self.no_reuseaddr.to_string());
        line(
            "listener_mode",
            quote(&format!("{:?}", self.effective_listener_mode())),
        );
        line("pasv_strategy", quote(&format!("{:?}", self.pasv_strategy)));
        line("max_clients", self.max_clients.to_string());
        line("max_per_ip", self.max_per_ip.to_string());
        line(
            "max_unauthenticated",
            self.effective_max_unauthenticated().to_string(),
        );
        line(
            "max_unauthenticated_per_ip",
            self.max_unauthenticated_per_ip.to_string(),
        );
        line(
            "max_passive_per_ip",
            self.effective_max_passive_per_ip().unwrap_or(0).to_string(),
        );
        for (key, value) in [
            ("time_wait", self.time_wait),
            ("pasv_wait", self.pasv_wait),
            ("accept_timeout", self.accept_timeout),
            ("connect_timeout", self.connect_timeout),
            ("idle_timeout", self.idle_timeout),
            ("data_timeout", self.data_timeout),
            ("login_fail_delay", self.login_fail_delay),
            ("ban_window", self.ban_window),
            ("ban_time", self.ban_time),
            ("login_timeout", self.login_timeout),
            ("shutdown_timeout", self.shutdown_timeout),
        ] {
            line(key, value.as_secs_f64().to_string());
        }
        line("max_login_fails", self.max_login_fails.to_string());
        line("max_login_failures", self.max_login_failures.to_string());
        line("port_enable", self.port_enable.to_string());
        line("port_min_port", self.port_min_port.to_string());
        line("listen_backlog", self.listen_backlog.to_string());
        line("buffer_size", self.buffer_size.to_string());
        line("fsync_uploads", self.fsync_uploads.to_string());
        line("ascii_transfers", self.ascii_transfers.to_string());
        line("busy_poll_us", self.busy_poll.as_micros().to_string());
        line("threads", self.threads.to_string());
        line("banner", quote(&self.banner));
        line(
            "xferlog",
            self.xferlog
                .as_deref()
                .map_or_else(|| "(none)".to_owned(), path),
        );
        line(
            "run_as",
            self.run_as
                .as_deref()
                .map_or_else(|| "(none)".to_owned(), quote),
        );
        for (key, value) in super::tls::describe(
            self.tls_source().as_ref(),
            self.implicit_tls_listen,
            self.tls_required,
            self.tls_session_reuse,
        ) {
            line(key, value);
        }
        out
    }

    /// The listener mode in effect: the configured one, except with `proxy_protocol_data`,
    /// whose passive listeners are per lease. A shared prebound listener keeps a connection
    /// that came after its lease ended in its backlog, to be reset at the next grant on the
    /// port; coming through a balancer, such a connection can be told from the next lease's
    /// only by its header, read after accepting, so another session behind the same client
    /// address could be handed it. A listener bound per lease refuses it.
    pub fn effective_listener_mode(&self) -> ListenerMode {
        if self.proxy_protocol_data {
            ListenerMode::PerLease
        } else {
            self.listener_mode
        }
    }

    /// Where the FTPS certificate comes from; `None` when FTPS is not configured.
    pub fn tls_source(&self) -> Option<CertSource> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(CertSource::Files {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ if self.tls_self_signed => {
                let mut names = vec!["localhost".to_owned()];
                for addr in [Some(self.listen), self.implicit_tls_listen]
                    .into_iter()
                    .flatten()
                {
                    if !addr.ip().is_unspecified() {
                        names.push(addr.ip().to_string());
                    }
                }
                names.dedup();
                Some(CertSource::SelfSigned { names })
            }
            _ => None,
        }
    }

    /// The first FTPS setting given (its TOML key), if any: a certificate, the implicit
    /// listener or a requirement.
    pub fn tls_setting(&self) -> Option<&'static str> {
        if self.tls_cert.is_some() {
            Some("tls_cert")
        } else if self.tls_key.is_some() {
            Some("tls_key")
        } else if self.tls_self_signed {
            Some("tls_self_signed")
        } else if self.implicit_tls_listen.is_some() {
            Some("implicit_tls_listen")
        } else if self.tls_required != TlsRequired::None {
            Some("tls_required")
        } else {
            None
        }
    }

    /// The FTPS settings' own checks (part of [`Config::validate`]).
    fn validate_tls(&self) -> Result<(), ServerError> {
        let bad = |reason: &str| {
            Err(ServerError::Config {
                reason: reason.to_owned(),
            })
        };
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return bad("tls_cert (--tls-cert) needs tls_key (--tls-key)"),
            (None, Some(_)) => return bad("tls_key (--tls-key) needs tls_cert (--tls-cert)"),
            (Some(_), Some(_)) if self.tls_self_signed => {
                return bad(
                    "tls_self_signed (--tls-self-signed) and tls_cert/tls_key (--tls-cert, \
                     --tls-key) exclude each other",
                )
            }
            _ => {}
        }
        let configured = self.tls_source().is_some();
        if !configured && self.implicit_tls_listen.is_some() {
            return bad(
                "implicit_tls_listen (--implicit-tls-listen) needs a certificate: tls_cert and \
                 tls_key (--tls-cert, --tls-key) or tls_self_signed (--tls-self-signed)",
            );
        }
        if !configured && self.tls_required != TlsRequired::None {
            return bad(
                "tls_required (--tls-required) needs a certificate: tls_cert and tls_key \
                 (--tls-cert, --tls-key) or tls_self_signed (--tls-self-signed)",
            );
        }
        // Port 0 (tests): two different ports are bound.
        if self.implicit_tls_listen == Some(self.listen) && self.listen.port() != 0 {
            return bad("implicit_tls_listen (--implicit-tls-listen) is the listen address");
        }
        Ok(())
    }

    /// The quarantine scope in effect: the configured one, else derived from SO_REUSEADDR.
    pub fn effective_quarantine(&self) -> QuarantineScope {
        match self.quarantine {
            Some(scope) => scope,
            None if self.no_reuseaddr => QuarantineScope::Port,
            None => QuarantineScope::None,
        }
    }

    /// Settings that contradict the kernel the pool models, each as a sentence for the
    /// log (the server starts all the same and warns). Without SO_REUSEADDR a port the
    /// server closed first cannot be bound again, by anybody, until its TIME_WAIT ends
    /// (60 s on Linux, fixed): a quarantine scope other than `port`, or shorter than that,
    /// lets the pool offer ports whose bind will fail, and the refused clients are told to
    /// retry too soon.
    pub fn contradictions(&self) -> Vec<String> {
        let mut found = Vec::new();
        if !self.no_reuseaddr {
            return found;
        }
        let scope = self.effective_quarantine();
        if scope != QuarantineScope::Port {
            found.push(format!(
                "no_reuseaddr (--no-reuseaddr) with quarantine {} (--quarantine): without \
                 SO_REUSEADDR a port in TIME_WAIT cannot be bound by anybody, so the pool \
                 will offer ports whose bind fails; use --quarantine port",
                scope_name(scope)
            ));
        }
        if self.time_wait < LINUX_TIME_WAIT {
            found.push(format!(
                "no_reuseaddr (--no-reuseaddr) with time_wait (--time-wait) {} s: Linux \
                 keeps TIME_WAIT {} s, so ports come back to the pool before the kernel \
                 lets them be bound",
                self.time_wait.as_secs_f64(),
                LINUX_TIME_WAIT.as_secs()
            ));
        }
        found
    }

    /// The cap on sessions not logged in yet: `max_unauthenticated`, else half of
    /// `max_clients`, at least one (0, unlimited, when `max_clients` is).
    pub fn effective_max_unauthenticated(&self) -> usize {
        match (self.max_unauthenticated, self.max_clients) {
            (Some(n), _) => n,
            (None, 0) => 0,
            (None, clients) => (clients / 2).max(1),
        }
    }

    /// The per-address passive lease cap in effect; `None` means unlimited.
    ///
    /// The default is half the ports of the range, at least one. The range counts ports, not
    /// ports × addresses: every passive address has the same ports, and a client can be held
    /// to one address (EPSV leases on the control connection's local address, PASV only on
    /// IPv4 ones), so half of one address's ports is what keeps half of every address free
    /// for the others whichever address they come in on.
    ///
    /// In prebound mode (the default) an address holds at most one lease per port and
    /// passive address whatever the cap, and its leases take no port from other addresses
    /// (they lease per port and peer): the cap no longer keeps ports free for others, it
    /// bounds how many shared backlogs one address is admitted to (see
    /// [`ListenerMode::Prebound`]), and it is what sessions behind one address (a NAT) get
    /// at once, as in per-lease mode. Clients on distinct addresses never meet it: 1,000 of
    /// them hold a lease each on 20 ports.
    pub fn effective_max_passive_per_ip(&self) -> Option<usize> {
        match self.max_passive_per_ip {
            Some(0) => None,
            Some(n) => Some(n),
            None => Some((self.pasv_port_count() / 2).max(1)),
        }
    }

    /// Ports in the passive range (0 when the range is empty).
    fn pasv_port_count(&self) -> usize {
        if self.pasv_min_port > self.pasv_max_port {
            return 0;
        }
        usize::from(self.pasv_max_port - self.pasv_min_port) + 1
    }

    /// Reads a TOML file and applies it over `self`.
    pub fn load_file(&mut self, path: &Path) -> Result<(), ServerError> {
        let text = std::fs::read_to_string(path).map_err(|source| ServerError::Config {
            reason: format!("cannot read {}: {source}", path.display()),
        })?;
        let file: ConfigFile = toml::from_str(&text).map_err(|e| ServerError::Config {
            reason: format!("{}: {e}", path.display()),
        })?;
        file.apply(self)
    }

    /// Checks every value: each numeric setting within its range (named by its key and its
    /// flag), and the ones that depend on each other. A configuration built in code goes
    /// through the same checks as one read from a file or flags.
    pub fn validate(&self) -> Result<(), ServerError> {
        let bad = |reason: String| Err(ServerError::Config { reason });
        for (key, value) in [
            ("time_wait", self.time_wait),
            ("pasv_wait", self.pasv_wait),
            ("accept_timeout", self.accept_timeout),
            ("connect_timeout", self.connect_timeout),
            ("idle_timeout", self.idle_timeout),
            ("data_timeout", self.data_timeout),
            ("login_fail_delay", self.login_fail_delay),
            ("shutdown_timeout", self.shutdown_timeout),
        ] {
            check_duration(key, value)?;
        }
        if self.busy_poll > MAX_BUSY_POLL {
            return bad(format!(
                "busy_poll_us (--busy-poll-us): {} is out of range (0 to {})",
                self.busy_poll.as_micros(),
                MAX_BUSY_POLL.as_micros()
            ));
        }
        if !self.busy_poll.is_zero() && self.threads > 1 {
            return bad(format!(
                "threads (--threads): busy polling runs on one thread, not {} (set 0 or 1)",
                self.threads
            ));
        }
        if self.threads > MAX_THREADS {
            return bad(format!(
                "threads (--threads): {} is out of range (0 to {MAX_THREADS})",
                self.threads
            ));
        }
        if self.pasv_min_port == 0 || self.pasv_min_port > self.pasv_max_port {
            return bad(format!(
                "pasv_min_port, pasv_max_port (--pasv-min-port, --pasv-max-port): passive range \
                 {}-{} is empty or starts at 0 (1 <= min <= max <= 65535)",
                self.pasv_min_port, self.pasv_max_port
            ));
        }
        let addresses = self.pasv_address.len().max(1);
        let slots = self.pasv_port_count() * addresses;
        if let Some(n) = self.max_passive_per_ip {
            check_count("max_passive_per_ip", n as u64, 0, slots as u64)?;
        }
        if let Some(user) = &self.run_as {
            if user.is_empty() {
                return bad("run_as is empty".to_owned());
            }
            // Passive ports are bound as that account, after the switch: a port below 1024
            // would fail at every PASV.
            if self.pasv_min_port < 1024 {
                return bad(format!(
                    "passive ports below 1024 cannot be bound after switching to {user:?}"
                ));
            }
        }
        if self.proxy_protocol && self.proxy_from.is_empty() {
            return bad(
                "proxy_protocol (--proxy-protocol) needs proxy_from (--proxy-from): the \
                 balancers allowed to name a client's address"
                    .to_owned(),
            );
        }
        if self.proxy_protocol_data && self.proxy_from.is_empty() {
            return bad(
                "proxy_protocol_data (--proxy-protocol-data) needs proxy_from (--proxy-from): \
                 the balancers allowed to name a client's address"
                    .to_owned(),
            );
        }
        if !(1..=1000).contains(&self.max_login_failures) {
            return bad(format!(
                "max_login_failures {} is not within 1-1000",
                self.max_login_failures
            ));
        }
        // A zero ban window, ban or login timeout would switch the defence off unnoticed.
        const DAY: Duration = Duration::from_secs(86_400);
        for (key, value, zero_ok, max) in [
            ("ban_window", self.ban_window, false, DAY),
            ("ban_time", self.ban_time, false, DAY),
            (
                "login_timeout",
                self.login_timeout,
                false,
                Duration::from_secs(3600),
            ),
            (
                "login_fail_delay",
                self.login_fail_delay,
                true,
                Duration::from_secs(60),
            ),
        ] {
            if (value.is_zero() && !zero_ok) || value > max {
                return bad(format!(
                    "{key} {}s is not within {}-{}s",
                    value.as_secs_f64(),
                    if zero_ok { "0" } else { "0 (excluded)" },
                    max.as_secs()
                ));
            }
        }
        check_count("max_clients", self.max_clients as u64, 0, MAX_SESSIONS)?;
        check_count("max_per_ip", self.max_per_ip as u64, 0, MAX_SESSIONS)?;
        if let Some(n) = self.max_unauthenticated {
            check_count("max_unauthenticated", n as u64, 0, MAX_SESSIONS)?;
        }
        check_count(
            "max_unauthenticated_per_ip",
            self.max_unauthenticated_per_ip as u64,
            0,
            MAX_SESSIONS,
        )?;
        check_count(
            "max_login_fails",
            u64::from(self.max_login_fails),
            1,
            MAX_LOGIN_FAILS,
        )?;
        check_count(
            "listen_backlog",
            u64::from(self.listen_backlog),
            1,
            MAX_BACKLOG,
        )?;
        check_count(
            "buffer_size",
            self.buffer_size as u64,
            MIN_BUFFER,
            MAX_BUFFER,
        )?;
        self.validate_tls()?;
        Ok(())
    }
}

/// Longest duration any setting may have: a day, longer than any of these timeouts needs.
/// Every timer is `now + setting`, which must not overflow `Instant` (`--idle-timeout 1e19`
/// made every session panic on its first timer) and stays well inside tokio's timer wheel
/// (about two years).
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);
/// Longest busy polling after an input: a second of spinning.
const MAX_BUSY_POLL: Duration = Duration::from_secs(1);
/// More runtime threads than this only adds memory and scheduling.
const MAX_THREADS: usize = 1024;
/// Most sessions `max_clients` and `max_per_ip` may name (each takes a file descriptor).
const MAX_SESSIONS: u64 = 1_000_000;
/// Most failed logins a session may be allowed.
const MAX_LOGIN_FAILS: u64 = 1_000;
/// Largest listen backlog (`listen(2)` takes an `int`; Linux caps it at `somaxconn`, 4096 by
/// default, anyway).
const MAX_BACKLOG: u64 = 65_535;
/// Smallest data copy buffer.
const MIN_BUFFER: u64 = 4096;
/// Largest data copy buffer: every running transfer holds one.
const MAX_BUFFER: u64 = 64 * 1024 * 1024;

/// The flag that sets `key`.
fn flag(key: &str) -> String {
    format!("--{}", key.replace('_', "-"))
}

fn check_duration(key: &str, value: Duration) -> Result<(), ServerError> {
    if value > MAX_DURATION {
        return Err(ServerError::Config {
            reason: format!(
                "{key} ({}): {} s is out of range (0 to {} s)",
                flag(key),
                value.as_secs_f64(),
                MAX_DURATION.as_secs()
            ),
        });
    }
    Ok(())
}

fn check_count(key: &str, value: u64, min: u64, max: u64) -> Result<(), ServerError> {
    if value < min || value > max {
        return Err(ServerError::Config {
            reason: format!(
                "{key} ({}): {value} is out of range ({min} to {max})",
                flag(key)
            ),
        });
    }
    Ok(())
}

/// One configuration layer: every key optional. Used for the TOML file and for the flags.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
#[allow(missing_docs)]
pub struct ConfigFile {
    pub listen: Option<SocketAddr>,
    pub root: Option<PathBuf>,
    pub pasv_min_port: Option<u16>,
    pub pasv_max_port: Option<u16>,
    pub pasv_address: Option<Vec<IpAddr>>,
    /// Entries `PUBLIC` (for every local address) or `LOCAL=PUBLIC`.
    pub pasv_public_address: Option<Vec<String>>,
    /// Entries `CIDR=PUBLIC`, first match wins.
    pub pasv_public_address_for: Option<Vec<String>>,
    pub pasv_follow_advertised: Option<bool>,
    pub proxy_protocol: Option<bool>,
    /// CIDR blocks (`10.0.0.0/8`, `192.0.2.7`, `2001:db8::/32`).
    pub proxy_from: Option<Vec<String>>,
    pub proxy_protocol_data: Option<bool>,
    pub anonymous_enable: Option<bool>,
    pub anonymous_write: Option<bool>,
    pub users: Option<PathBuf>,
    pub quarantine: Option<String>,
    pub time_wait: Option<f64>,
    pub no_reuseaddr: Option<bool>,
    pub pasv_wait: Option<f64>,
    pub accept_timeout: Option<f64>,
    pub connect_timeout: Option<f64>,
    pub max_clients: Option<usize>,
    pub max_per_ip: Option<usize>,
    pub max_unauthenticated: Option<usize>,
    pub max_unauthenticated_per_ip: Option<usize>,
    pub max_passive_per_ip: Option<usize>,
    pub idle_timeout: Option<f64>,
    pub data_timeout: Option<f64>,
    pub xferlog: Option<PathBuf>,
    pub listener_mode: Option<String>,
    pub pasv_strategy: Option<String>,
    pub port_enable: Option<bool>,
    pub port_min_port: Option<u16>,
    pub login_fail_delay: Option<f64>,
    pub max_login_fails: Option<u32>,
    pub max_login_failures: Option<u32>,
    pub ban_window: Option<f64>,
    pub ban_time: Option<f64>,
    pub login_timeout: Option<f64>,
    pub shutdown_timeout: Option<f64>,
    pub listen_backlog: Option<u32>,
    pub buffer_size: Option<usize>,
    pub fsync_uploads: Option<bool>,
    pub ascii_transfers: Option<bool>,
    pub banner: Option<String>,
    /// Microseconds (the unit of Linux's `net.core.busy_poll`).
    pub busy_poll_us: Option<u64>,
    pub threads: Option<usize>,
    /// Same as `anonymous_enable = false` (the key of the `--no-anonymous` flag).
    pub no_anonymous: Option<bool>,
    /// Same as `port_enable = false` (the key of the `--no-port` flag).
    pub no_port: Option<bool>,
    /// Same as `fsync_uploads = false` (the key of the `--no-fsync` flag).
    pub no_fsync: Option<bool>,
    /// Same as `ascii_transfers = false` (the key of the `--no-ascii` flag).
    pub no_ascii: Option<bool>,
    pub run_as: Option<String>,
    pub metrics: Option<SocketAddr>,
    /// `text` or `json`.
    pub log_format: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_self_signed: Option<bool>,
    pub implicit_tls_listen: Option<SocketAddr>,
    /// `none`, `login`, `data` or `all`.
    pub tls_required: Option<String>,
    /// `required` or `off`.
    pub tls_session_reuse: Option<String>,
}

/// Seconds from a file or a flag: finite, not negative, at most [`MAX_DURATION`].
fn secs(key: &str, v: f64) -> Result<Duration, ServerError> {
    let max = MAX_DURATION.as_secs_f64();
    if !(0.0..=max).contains(&v) {
        return Err(ServerError::Config {
            reason: format!(
                "{key} ({}): {v} is out of range (0 to {max} seconds)",
                flag(key)
            ),
        });
    }
    Duration::try_from_secs_f64(v).map_err(|e| ServerError::Config {
        reason: format!("{key} ({}): {v}: {e}", flag(key)),
    })
}

/// A block of addresses, `ADDR/PREFIX` (a bare address is a block of one). IPv4 blocks also
/// match IPv4-mapped IPv6 addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The one address of a block that holds one (`/32`, `/128`).
    pub fn host(&self) -> Option<IpAddr> {
        let full = if self.addr.is_ipv4() { 32 } else { 128 };
        (self.prefix == full).then_some(self.addr)
    }

    /// Whether `ip` lies in the block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr = addr
            .parse::<IpAddr>()
            .map_err(|e| format!("{s:?}: {e}"))?
            .to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0 to {max}"))?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An address to advertise in 227 replies: an IPv4 address, or a host name resolved when a
/// reply needs it (dynamic DNS), its answer cached for 30 s; a failed lookup keeps the last
/// good address.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublicAddress {
    /// This address.
    Fixed(Ipv4Addr),
    /// The first IPv4 address this name resolves to.
    Host(String),
}

impl From<Ipv4Addr> for PublicAddress {
    fn from(addr: Ipv4Addr) -> Self {
        PublicAddress::Fixed(addr)
    }
}

impl FromStr for PublicAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(addr) = s.parse::<Ipv4Addr>() {
            return Ok(PublicAddress::Fixed(addr));
        }
        if s.parse::<IpAddr>().is_ok() {
            return Err(format!("{s:?}: a 227 reply carries IPv4 addresses only"));
        }
        // RFC 1123 host names: labels of letters, digits and hyphens.
        let valid = !s.is_empty()
            && s.len() <= 253
            && s.trim_end_matches('.').split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if valid {
            Ok(PublicAddress::Host(s.to_owned()))
        } else {
            Err(format!("{s:?} is neither an IPv4 address nor a host name"))
        }
    }
}

impl std::fmt::Display for PublicAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublicAddress::Fixed(addr) => addr.fmt(f),
            PublicAddress::Host(host) => f.write_str(host),
        }
    }
}

/// Parses `CIDR=PUBLIC` (an entry of `pasv_public_address_for`).
pub fn parse_public_address_for(s: &str) -> Result<(Cidr, PublicAddress), String> {
    let (block, public) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected CIDR=ADDRESS"))?;
    Ok((block.parse()?, public.parse()?))
}

/// Parses `PUBLIC` or `LOCAL=PUBLIC`.
pub fn parse_public_address(s: &str) -> Result<(IpAddr, PublicAddress), String> {
    let (local, public) = match s.split_once('=') {
        Some((l, p)) => (
            l.trim()
                .parse::<IpAddr>()
                .map_err(|e| format!("{s:?}: {e}"))?,
            p.trim(),
        ),
        None => (IpAddr::V4(Ipv4Addr::UNSPECIFIED), s.trim()),
    };
    Ok((local, public.parse()?))
}

impl ConfigFile {
    /// Applies every key that is set over `config`.
    pub fn apply(self, config: &mut Config) -> Result<(), ServerError> {
        let cfg = |reason: String| ServerError::Config { reason };
        macro_rules! set {
            ($($key:ident),*) => { $( if let Some(v) = self.$key { config.$key = v; } )* };
        }
        macro_rules! set_secs {
            ($($key:ident),*) => {
                $( if let Some(v) = self.$key { config.$key = secs(stringify!($key), v)?; } )*
            };
        }
        set!(
            listen,
            root,
            pasv_min_port,
            pasv_max_port,
            pasv_address,
            pasv_follow_advertised,
            proxy_protocol,
            proxy_protocol_data,
            anonymous_enable,
            anonymous_write,
            no_reuseaddr,
            max_clients,
            max_per_ip,
            max_unauthenticated_per_ip,
            listen_backlog,
            buffer_size,
            fsync_uploads,
            ascii_transfers,
            banner,
            port_enable,
            port_min_port,
            max_login_fails,
            max_login_failures
        );
        set_secs!(
            time_wait,
            pasv_wait,
            accept_timeout,
            connect_timeout,
            idle_timeout,
            data_timeout,
            login_fail_delay,
            shutdown_timeout,
            ban_window,
            ban_time,
            login_timeout
        );
        if let Some(v) = self.busy_poll_us {
            check_count("busy_poll_us", v, 0, MAX_BUSY_POLL.as_micros() as u64)?;
            config.busy_poll = Duration::from_micros(v);
        }
        if let Some(v) = self.threads {
            config.threads = v;
        }
        if let Some(v) = self.no_anonymous {
            config.anonymous_enable = !v;
        }
        if let Some(v) = self.no_port {
            config.port_enable = !v;
        }
        if let Some(v) = self.no_fsync {
            config.fsync_uploads = !v;
        }
        if let Some(v) = self.no_ascii {
            config.ascii_transfers = !v;
        }
        if let Some(v) = self.max_unauthenticated {
            config.max_unauthenticated = Some(v);
        }
        if let Some(v) = self.max_passive_per_ip {
            config.max_passive_per_ip = Some(v);
        }
        if let Some(v) = self.users {
            config.users = Some(v);
        }
        if let Some(v) = self.xferlog {
            config.xferlog = Some(v);
        }
        if let Some(v) = self.run_as {
            config.run_as = Some(v);
        }
        if let Some(v) = self.metrics {
            config.metrics = Some(v);
        }
        if let Some(v) = self.quarantine {
            config.quarantine = Some(parse_scope(&v).map_err(cfg)?);
        }
        if let Some(v) = self.log_format {
            config.log_format = v.parse().map_err(cfg)?;
        }
        if let Some(v) = self.tls_cert {
            config.tls_cert = Some(v);
        }
        if let Some(v) = self.tls_key {
            config.tls_key = Some(v);
        }
        if let Some(v) = self.tls_self_signed {
            config.tls_self_signed = v;
        }
        if let Some(v) = self.implicit_tls_listen {
            config.implicit_tls_listen = Some(v);
        }
        if let Some(v) = self.tls_required {
            config.tls_required = v.parse().map_err(cfg)?;
        }
        if let Some(v) = self.tls_session_reuse {
            config.tls_session_reuse = v.parse().map_err(cfg)?;
        }
        if let Some(v) = self.listener_mode {
            config.listener_mode = v.parse().map_err(cfg)?;
        }
        if let Some(v) = self.pasv_strategy {
            config.pasv_strategy = v
                .parse()
                .map_err(|_| cfg(format!("unknown pasv_strategy {v:?}")))?;
        }
        if let Some(v) = self.proxy_from {
            config.proxy_from = v
                .iter()
                .map(|c| c.parse().map_err(|e| cfg(format!("proxy_from: {e}"))))
                .collect::<Result<_, _>>()?;
        }
        if let Some(v) = self.pasv_public_address_for {
            config.pasv_public_address_for = v
                .iter()
                .map(|e| {
                    parse_public_address_for(e)
                        .map_err(|e| cfg(format!("pasv_public_address_for: {e}")))
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(v) = self.pasv_public_address {
            config.pasv_public_address.clear();
            for entry in v {
                let (local, public) = parse_public_address(&entry).map_err(cfg)?;
                config.pasv_public_address.insert(local, public);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_overrides_defaults_and_flags_override_file() {
        let mut config = Config::default();
        let file: ConfigFile = toml::from_str(
            "pasv_min_port = 40000\npasv_max_port = 40009\npasv_wait = 0.5\nquarantine = \"peer\"\n\
             listener_mode = \"prebound\"\npasv_public_address = [\"203.0.113.7\"]\n\
             busy_poll_us = 150\n",
        )
        .unwrap();
        file.apply(&mut config).unwrap();
        assert_eq!((config.pasv_min_port, config.pasv_max_port), (40000, 40009));
        assert_eq!(config.pasv_wait, Duration::from_millis(500));
        assert_eq!(config.effective_quarantine(), QuarantineScope::Peer);
        assert_eq!(config.listener_mode, ListenerMode::Prebound);
        assert_eq!(config.busy_poll, Duration::from_micros(150));
        assert_eq!(
            config.pasv_public_address[&IpAddr::V4(Ipv4Addr::UNSPECIFIED)],
            Ipv4Addr::new(203, 0, 113, 7).into()
        );
        let flags = ConfigFile {
            pasv_max_port: Some(40001),
            ..ConfigFile::default()
        };
        flags.apply(&mut config).unwrap();
        assert_eq!(config.pasv_max_port, 40001);
        assert_eq!(config.pasv_min_port, 40000);
    }

    #[test]
    fn threads_default_to_the_cpus_and_busy_polling_runs_one() {
        let mut config = Config::default();
        assert_eq!(config.threads, 0);
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(config.runtime_threads(), cpus);
        let file: ConfigFile = toml::from_str("threads = 3").unwrap();
        file.apply(&mut config).unwrap();
        assert_eq!(config.runtime_threads(), 3);
        config.busy_poll = Duration::from_micros(50);
        let refused = config.validate().unwrap_err().to_string();
        assert!(
            refused.contains("busy polling runs on one thread"),
            "{refused}"
        );
        config.threads = 0;
        config.validate().unwrap();
        assert_eq!(config.runtime_threads(), 1);
    }

    #[test]
    fn ascii_transfers_are_on_unless_switched_off() {
        let mut config = Config::default();
        assert!(config.ascii_transfers);
        let file: ConfigFile = toml::from_str("ascii_transfers = false").unwrap();
        file.apply(&mut config).unwrap();
        assert!(!config.ascii_transfers);
        let mut config = Config::default();
        let flags: ConfigFile = toml::from_str("no_ascii = true").unwrap();
        flags.apply(&mut config).unwrap();
        assert!(!config.ascii_transfers);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected() {
        assert!(toml::from_str::<ConfigFile>("pasv_min = 1").is_err());
        let file: ConfigFile = toml::from_str("quarantine = \"sometimes\"").unwrap();
        assert!(file.apply(&mut Config::default()).is_err());
        let file: ConfigFile = toml::from_str("pasv_wait = -1.0").unwrap();
        assert!(file.apply(&mut Config::default()).is_err());
        let file: ConfigFile = toml::from_str("busy_poll_us = 5000000").unwrap();
        assert!(file.apply(&mut Config::default()).is_err());
    }

    /// Every out-of-range number is refused with its key, its flag and its range, from a
    /// file or flags (both are a `ConfigFile`) and from a configuration built in code.
    #[test]
    fn numbers_out_of_range_are_refused_naming_the_key_and_the_range() {
        let refused = |toml_text: &str| -> String {
            let mut config = Config::default();
            let file: ConfigFile = toml::from_str(toml_text).expect(toml_text);
            let result = file.apply(&mut config).and_then(|()| config.validate());
            match result {
                Err(e) => e.to_string(),
                Ok(()) => panic!("{toml_text} accepted"),
            }
        };
        for (text, key, range) in [
            (
                "idle_timeout = 1e19",
                "idle_timeout (--idle-timeout)",
                "0 to 86400",
            ),
            ("idle_timeout = 86400.5", "idle_timeout", "0 to 86400"),
            ("accept_timeout = inf", "accept_timeout", "0 to 86400"),
            ("data_timeout = nan", "data_timeout", "0 to 86400"),
            ("pasv_wait = -1.0", "pasv_wait", "0 to 86400"),
            ("time_wait = 1e300", "time_wait", "0 to 86400"),
            ("connect_timeout = 1e10", "connect_timeout", "0 to 86400"),
            ("login_fail_delay = 1e6", "login_fail_delay", "0 to 86400"),
            ("shutdown_timeout = 1e6", "shutdown_timeout", "0 to 86400"),
            ("busy_poll_us = 5000000", "busy_poll_us", "0 to 1000000"),
            ("threads = 100000", "threads (--threads)", "0 to 1024"),
            ("listen_backlog = 0", "listen_backlog", "1 to 65535"),
            (
                "listen_backlog = 4294967295",
                "listen_backlog",
                "1 to 65535",
            ),
            ("buffer_size = 100", "buffer_size", "4096 to 67108864"),
            (
                "buffer_size = 9223372036854775807",
                "buffer_size",
                "4096 to 67108864",
            ),
            (
                "max_clients = 9223372036854775807",
                "max_clients",
                "0 to 1000000",
            ),
            ("max_per_ip = 2000000", "max_per_ip", "0 to 1000000"),
            (
                "max_unauthenticated = 2000000",
                "max_unauthenticated",
                "0 to 1000000",
            ),
            (
                "max_unauthenticated_per_ip = 2000000",
                "max_unauthenticated_per_ip",
                "0 to 1000000",
            ),
            ("max_login_fails = 0", "max_login_fails", "1 to 1000"),
            (
                "max_passive_per_ip = 21",
                "max_passive_per_ip (--max-passive-per-ip)",
                "0 to 20",
            ),
            ("pasv_min_port = 0", "pasv_min_port", "1 <= min <= max"),
            (
                "pasv_min_port = 40000\npasv_max_port = 39999",
                "pasv_max_port",
                "1 <= min <= max",
            ),
        ] {
            let message = refused(text);
            assert!(message.contains(key), "{text}: {message}");
            assert!(message.contains(range), "{text}: {message}");
        }
        // The bounds themselves are fine.
        let mut config = Config::default();
        let file: ConfigFile = toml::from_str(
            "idle_timeout = 86400\nlisten_backlog = 65535\nmax_passive_per_ip = 20\n\
             busy_poll_us = 1000000\npasv_wait = 0",
        )
        .unwrap();
        file.apply(&mut config).unwrap();
        config.validate().unwrap();
        // Two passive addresses: the range is 20 ports on each, 40 leases in all.
        config.pasv_address = vec![
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
        ];
        config.max_passive_per_ip = Some(40);
        config.validate().unwrap();
        config.max_passive_per_ip = Some(41);
        assert!(config.validate().is_err());
        // Built in code: the same checks.
        let config = Config {
            idle_timeout: Duration::from_secs(u64::MAX),
            ..Config::default()
        };
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("idle_timeout"), "{message}");
    }

    #[test]
    fn the_passive_limit_defaults_to_half_the_ports() {
        let mut config = Config::default();
        assert_eq!(config.effective_max_passive_per_ip(), Some(10));
        config.pasv_address = vec![
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
        ];
        // Half of one address's ports: a client can be held to one address.
        assert_eq!(config.effective_max_passive_per_ip(), Some(10));
        config.pasv_max_port = config.pasv_min_port;
        assert_eq!(config.effective_max_passive_per_ip(), Some(1));
        config.max_passive_per_ip = Some(0);
        assert_eq!(config.effective_max_passive_per_ip(), None);
        config.max_passive_per_ip = Some(3);
        assert_eq!(config.effective_max_passive_per_ip(), Some(3));
    }

    #[test]
    fn run_as_is_read_and_checked() {
        let mut config = Config::default();
        let file: ConfigFile = toml::from_str("run_as = \"ftp\"").unwrap();
        file.apply(&mut config).unwrap();
        assert_eq!(config.run_as.as_deref(), Some("ftp"));
        config.validate().unwrap();
        config.pasv_min_port = 1000;
        assert!(config.validate().is_err());
        config.pasv_min_port = 30000;
        config.run_as = Some(String::new());
        assert!(config.validate().is_err());
    }

    #[test]
    fn login_defences_are_read_and_range_checked() {
        let config = Config::default();
        assert_eq!(config.max_login_failures, 10);
        assert_eq!(config.login_timeout, Duration::from_secs(60));
        assert_eq!(config.effective_max_unauthenticated(), 1000);
        assert_eq!(config.max_unauthenticated_per_ip, 8);
        config.validate().unwrap();
        let file: ConfigFile =
            toml::from_str("max_unauthenticated = 7\nmax_unauthenticated_per_ip = 3\n").unwrap();
        let mut limited = Config::default();
        file.apply(&mut limited).unwrap();
        assert_eq!(limited.effective_max_unauthenticated(), 7);
        assert_eq!(limited.max_unauthenticated_per_ip, 3);
        let mut config = Config::default();
        let file: ConfigFile = toml::from_str(
            "max_login_failures = 5\nban_window = 60\nban_time = 3600\nlogin_timeout = 20\n",
        )
        .unwrap();
        file.apply(&mut config).unwrap();
        assert_eq!(config.max_login_failures, 5);
        assert_eq!(config.ban_window, Duration::from_secs(60));
        assert_eq!(config.ban_time, Duration::from_secs(3600));
        assert_eq!(config.login_timeout, Duration::from_secs(20));
        config.validate().unwrap();
        for bad in [
            "max_login_failures = 0",
            "max_login_failures = 1001",
            "ban_window = 0",
            "ban_time = 0",
            "ban_time = 2600000",
            "login_timeout = 0",
            "login_timeout = 3601",
            "login_fail_delay = 61",
        ] {
            let mut config = Config::default();
            let applied = toml::from_str::<ConfigFile>(bad)
                .unwrap()
                .apply(&mut config);
            assert!(applied.is_err() || config.validate().is_err(), "{bad}");
        }
    }

    /// `--no-reuseaddr` with a quarantine the kernel will not honour is named at start.
    #[test]
    fn contradictions_with_the_kernel_are_named() {
        let mut config = Config::default();
        assert!(config.contradictions().is_empty());
        config.quarantine = Some(QuarantineScope::None);
        assert!(
            config.contradictions().is_empty(),
            "SO_REUSEADDR: none is right"
        );
        config.no_reuseaddr = true;
        let found = config.contradictions();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("quarantine none"), "{found:?}");
        config.quarantine = Some(QuarantineScope::Peer);
        assert!(config.contradictions()[0].contains("quarantine peer"));
        config.quarantine = None;
        assert!(config.contradictions().is_empty(), "derived scope: port");
        config.time_wait = Duration::from_secs(10);
        let found = config.contradictions();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("time_wait (--time-wait) 10 s"),
            "{found:?}"
        );
    }

    #[test]
    fn cidr_blocks_match_their_addresses_only() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let net: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains(ip("10.1.255.3")));
        assert!(net.contains(ip("::ffff:10.1.0.1")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(!net.contains(ip("::1")));
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.6")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.1")));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:1::1")) && !v6.contains(ip("2001:db9::1")));
        for bad in ["10.0.0.0/33", "::/129", "10.0.0.0/x", "host/8", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn public_addresses_per_client_block_and_host_names_are_read_in_order() {
        let mut config = Config::default();
        let file: ConfigFile = toml::from_str(
            "pasv_public_address_for = [\"10.0.0.0/8=10.0.0.5\", \"0.0.0.0/0=ftp.example.net\"]\n\
             pasv_public_address = [\"127.0.0.2=gw.example.net\"]",
        )
        .unwrap();
        file.apply(&mut config).unwrap();
        assert_eq!(
            config.pasv_public_address_for,
            vec![
                (
                    "10.0.0.0/8".parse().unwrap(),
                    Ipv4Addr::new(10, 0, 0, 5).into()
                ),
                (
                    "0.0.0.0/0".parse().unwrap(),
                    PublicAddress::Host("ftp.example.net".to_owned())
                ),
            ]
        );
        assert_eq!(
            config.pasv_public_address[&"127.0.0.2".parse::<IpAddr>().unwrap()],
            PublicAddress::Host("gw.example.net".to_owned())
        );
        for bad in [
            "pasv_public_address_for = [\"10.0.0.0/8\"]",
            "pasv_public_address_for = [\"10.0.0.0/8=::1\"]",
            "pasv_public_address_for = [\"10.0.0.0/99=10.0.0.1\"]",
            "pasv_public_address = [\"bad name!\"]",
            "pasv_public_address = [\"-x.example\"]",
        ] {
            let file: ConfigFile = toml::from_str(bad).unwrap();
            assert!(file.apply(&mut Config::default()).is_err(), "{bad}");
        }
    }

    #[test]
    fn proxy_protocol_needs_trusted_sources() {
        let mut config = Config::default();
        let file: ConfigFile = toml::from_str("proxy_protocol = true").unwrap();
        file.apply(&mut config).unwrap();
        assert!(config.validate().is_err());
        let file: ConfigFile = toml::from_str("proxy_from = [\"10.0.0.0/8\", \"::1\"]").unwrap();
        file.apply(&mut config).unwrap();
        config.validate().unwrap();
        assert_eq!(config.proxy_from.len(), 2);
        let file: ConfigFile = toml::from_str("proxy_from = [\"10.0.0.0/40\"]").unwrap();
        assert!(file.apply(&mut config).is_err());

        // The same for headers on data connections, which may come without the control one.
        let mut config = Config::default();
        let file: ConfigFile = toml::from_str("proxy_protocol_data = true").unwrap();
        file.apply(&mut config).unwrap();
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("--proxy-protocol-data"), "{error}");
        let file: ConfigFile = toml::from_str("proxy_from = [\"10.0.0.1\"]").unwrap();
        file.apply(&mut config).unwrap();
        config.validate().unwrap();
        assert!(config.proxy_protocol_data);
    }

    #[test]
    fn a_block_of_one_address_names_its_host() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let host = |s: &str| s.parse::<Cidr>().unwrap().host();
        assert_eq!(host("10.0.0.1"), Some(ip("10.0.0.1")));
        assert_eq!(host("10.0.0.1/32"), Some(ip("10.0.0.1")));
        assert_eq!(host("2001:db8::1/128"), Some(ip("2001:db8::1")));
        assert_eq!(host("10.0.0.0/31"), None);
        assert_eq!(host("2001:db8::/127"), None);
    }

    #[test]
    fn scope_follows_reuseaddr_unless_set() {
        let mut config = Config::default();
        assert_eq!(config.effective_quarantine(), QuarantineScope::None);
        config.no_reuseaddr = true;
        assert_eq!(config.effective_quarantine(), QuarantineScope::Port);
        config.quarantine = Some(QuarantineScope::Peer);
        assert_eq!(config.effective_quarantine(), QuarantineScope::Peer);
    }
}
