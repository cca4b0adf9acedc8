//! The command line of `pasvd`, the server: flags, environment variables and subcommands.
//!
//! The `pasvd` binary parses it; `cargo xtask dist` renders it as a man page and shell
//! completions, so the two cannot drift apart.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The flags of `pasvd`; each has a TOML key of the same name (with underscores) and a
/// `PASVD_...` environment variable.
#[derive(Parser, Debug)]
#[command(
    name = "pasvd",
    version,
    about = "FTP server with a TIME_WAIT-aware passive port pool"
)]
pub struct Cli {
    /// A subcommand instead of serving.
    #[command(subcommand)]
    pub command: Option<Sub>,
    /// TOML configuration file (keys named like the flags, with underscores).
    #[arg(long, env = "PASVD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Check the configuration (file, environment and flags; the users file; the root),
    /// print the settings in effect and exit without serving: 0 when valid, 1 when not.
    #[arg(long)]
    pub check_config: bool,
    /// Control connection address (port 0 picks a free one).
    #[arg(long, env = "PASVD_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Served directory (default: a demo directory under the system temp dir).
    #[arg(long, env = "PASVD_ROOT")]
    pub root: Option<PathBuf>,
    /// Lowest passive port.
    #[arg(long, env = "PASVD_PASV_MIN_PORT")]
    pub pasv_min_port: Option<u16>,
    /// Highest passive port (inclusive).
    #[arg(long, env = "PASVD_PASV_MAX_PORT")]
    pub pasv_max_port: Option<u16>,
    /// Local address whose passive ports are leased (repeat for several).
    #[arg(long, env = "PASVD_PASV_ADDRESS", value_delimiter = ',')]
    pub pasv_address: Vec<IpAddr>,
    /// Address advertised in 227 replies (NAT): PUBLIC or LOCAL=PUBLIC (repeatable); PUBLIC
    /// is an IPv4 address or a host name, looked up when needed (cached 30 s).
    #[arg(long, env = "PASVD_PASV_PUBLIC_ADDRESS", value_delimiter = ',')]
    pub pasv_public_address: Vec<String>,
    /// Address advertised in 227 replies to clients in a block: CIDR=PUBLIC (repeatable; the
    /// first block that holds the client wins, --pasv-public-address is the fallback).
    #[arg(long, env = "PASVD_PASV_PUBLIC_ADDRESS_FOR", value_delimiter = ',')]
    pub pasv_public_address_for: Vec<String>,
    /// Clients connect to the address a 227 reply advertises, so PASV may lease on any
    /// passive address (default: PASV leases on the control connection's local address,
    /// where ftplib, curl and commons-net connect whatever the reply says).
    #[arg(long, env = "PASVD_PASV_FOLLOW_ADVERTISED")]
    pub pasv_follow_advertised: bool,
    /// Control connections start with a PROXY protocol header (v1 or v2) naming the client's
    /// address, from a load balancer in --proxy-from; that address then counts everywhere.
    #[arg(long, env = "PASVD_PROXY_PROTOCOL")]
    pub proxy_protocol: bool,
    /// Sources allowed to send a PROXY header, as CIDR blocks (repeatable); with
    /// --proxy-protocol, control connections from anywhere else are closed unread.
    #[arg(long, env = "PASVD_PROXY_FROM", value_delimiter = ',')]
    pub proxy_from: Vec<String>,
    /// Passive data connections from --proxy-from sources start with a PROXY header too
    /// (the balancer forwards the passive ranges with send-proxy-v2); the data connection
    /// must come from the client that header names. Passive listeners are then per lease.
    #[arg(long, env = "PASVD_PROXY_PROTOCOL_DATA")]
    pub proxy_protocol_data: bool,
    /// Let anonymous users upload, rename, delete and create directories.
    #[arg(long, env = "PASVD_ANONYMOUS_WRITE")]
    pub anonymous_write: bool,
    /// Refuse anonymous logins.
    #[arg(long, env = "PASVD_NO_ANONYMOUS")]
    pub no_anonymous: bool,
    /// TOML users file with argon2 hashes (see `pasvd passwd`).
    #[arg(long, env = "PASVD_USERS")]
    pub users: Option<PathBuf>,
    /// What a server-closed port blocks: port, peer or none (default: none with
    /// SO_REUSEADDR, port without).
    #[arg(long, env = "PASVD_QUARANTINE")]
    pub quarantine: Option<String>,
    /// Quarantine length in seconds (Linux TIME_WAIT: 60).
    #[arg(long, env = "PASVD_TIME_WAIT")]
    pub time_wait: Option<f64>,
    /// Bind passive listeners without SO_REUSEADDR (shows the classic exhaustion).
    #[arg(long, env = "PASVD_NO_REUSEADDR")]
    pub no_reuseaddr: bool,
    /// Longest wait in seconds for a port that frees soon before answering 425.
    #[arg(long, env = "PASVD_PASV_WAIT")]
    pub pasv_wait: Option<f64>,
    /// Seconds a passive listener waits for the client.
    #[arg(long, env = "PASVD_ACCEPT_TIMEOUT")]
    pub accept_timeout: Option<f64>,
    /// Maximum concurrent sessions (0 = unlimited; default 2000). The soft open-file limit
    /// is raised to what they need, up to the hard limit.
    #[arg(long, env = "PASVD_MAX_CLIENTS")]
    pub max_clients: Option<usize>,
    /// Maximum concurrent sessions per client address (0 = unlimited; default 64). An IPv6
    /// /64 counts as one address.
    #[arg(long, env = "PASVD_MAX_PER_IP")]
    pub max_per_ip: Option<usize>,
    /// Maximum sessions not logged in yet (0 = unlimited; default: half of
    /// max-clients), so connections that never log in cannot fill max-clients.
    #[arg(long, env = "PASVD_MAX_UNAUTHENTICATED")]
    pub max_unauthenticated: Option<usize>,
    /// Maximum sessions not logged in yet per client address (0 = unlimited; default 8).
    /// An IPv6 /64 counts as one address.
    #[arg(long, env = "PASVD_MAX_UNAUTHENTICATED_PER_IP")]
    pub max_unauthenticated_per_ip: Option<usize>,
    /// Maximum passive ports one client address holds at once, over all its sessions
    /// (0 = unlimited; default: half the passive range, at least 1).
    #[arg(long, env = "PASVD_MAX_PASSIVE_PER_IP")]
    pub max_passive_per_ip: Option<usize>,
    /// Idle control connection timeout in seconds (no command read and no reply byte
    /// written); also the control write timeout (replies left unread this long).
    #[arg(long, env = "PASVD_IDLE_TIMEOUT")]
    pub idle_timeout: Option<f64>,
    /// Data connection stall timeout in seconds (no byte moved on a read or write).
    #[arg(long, env = "PASVD_DATA_TIMEOUT")]
    pub data_timeout: Option<f64>,
    /// wu-ftpd format transfer log.
    #[arg(long, env = "PASVD_XFERLOG")]
    pub xferlog: Option<PathBuf>,
    /// prebound (default: every port bound once at start, shared by client addresses) or
    /// per-lease (a listener bound per PASV, one session per port).
    #[arg(long, env = "PASVD_LISTENER_MODE")]
    pub listener_mode: Option<String>,
    /// Pool strategy: lrr, round-robin, lowest-free, keyed.
    #[arg(long, env = "PASVD_PASV_STRATEGY")]
    pub pasv_strategy: Option<String>,
    /// Refuse PORT and EPRT.
    #[arg(long, env = "PASVD_NO_PORT")]
    pub no_port: bool,
    /// Do not fsync uploads before renaming them into place.
    #[arg(long, env = "PASVD_NO_FSYNC")]
    pub no_fsync: bool,
    /// Keep polling for I/O this many microseconds after each command instead of sleeping
    /// (0 = off): lower latency and no wake-up per command, for a core spent spinning.
    #[arg(long, env = "PASVD_BUSY_POLL_US")]
    pub busy_poll_us: Option<u64>,
    /// Runtime threads (0 = one per CPU pasvd may run on; 1 = a single-threaded runtime,
    /// the cheapest on one CPU).
    #[arg(long, env = "PASVD_THREADS")]
    pub threads: Option<usize>,
    /// Ignore TYPE A: send and store every file as is (binary), like vsftpd's default.
    #[arg(long, env = "PASVD_NO_ASCII")]
    pub no_ascii: bool,
    /// Once the ports are bound, switch to this account (its groups, gid and uid; a name in
    /// /etc/passwd). Needs root; without it a server started as root warns and stays root.
    #[arg(long, env = "PASVD_RUN_AS")]
    pub run_as: Option<String>,
    /// Seconds a session has to log in before it is closed with 421 (default 60).
    #[arg(long, env = "PASVD_LOGIN_TIMEOUT")]
    pub login_timeout: Option<f64>,
    /// Failed logins from one client address (IPv6: its /64) within --ban-window that ban
    /// it (default 10).
    #[arg(long, env = "PASVD_MAX_LOGIN_FAILURES")]
    pub max_login_failures: Option<u32>,
    /// Seconds a failed login counts towards --max-login-failures (default 600).
    #[arg(long, env = "PASVD_BAN_WINDOW")]
    pub ban_window: Option<f64>,
    /// Seconds a banned address is refused (default 900).
    #[arg(long, env = "PASVD_BAN_TIME")]
    pub ban_time: Option<f64>,
    /// Serve Prometheus metrics over HTTP at this address (`GET /metrics`).
    #[arg(long, env = "PASVD_METRICS")]
    pub metrics: Option<SocketAddr>,
    /// Log format on stderr: text (default) or json (one object per event and line; the
    /// xferlog is written either way).
    #[arg(long, env = "PASVD_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// FTPS: PEM certificate chain, leaf first (with --tls-key; read again on SIGHUP).
    #[arg(long, env = "PASVD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// FTPS: PEM private key of --tls-cert.
    #[arg(long, env = "PASVD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// FTPS with a certificate generated at start: for development only, clients cannot
    /// verify it.
    #[arg(long, env = "PASVD_TLS_SELF_SIGNED")]
    pub tls_self_signed: bool,
    /// Implicit FTPS listener (TLS from the first byte; usually port 990).
    #[arg(long, env = "PASVD_IMPLICIT_TLS_LISTEN")]
    pub implicit_tls_listen: Option<SocketAddr>,
    /// What sessions must protect: none (default), login (no USER/PASS before AUTH TLS),
    /// data (no transfer without PROT P) or all.
    #[arg(long, env = "PASVD_TLS_REQUIRED")]
    pub tls_required: Option<String>,
    /// Protected data connections must resume their own control session's TLS session:
    /// required (default) or off (for clients that never resume, such as Python's ftplib).
    #[arg(long, env = "PASVD_TLS_SESSION_REUSE")]
    pub tls_session_reuse: Option<String>,
}

/// What `pasvd` does instead of serving.
#[derive(Subcommand, Debug)]
pub enum Sub {
    /// Reads a password from stdin and prints its argon2 hash for the users file.
    Passwd,
}
