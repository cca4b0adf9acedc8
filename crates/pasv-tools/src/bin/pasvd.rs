//! `pasvd`: an FTP server whose passive ports come from a TIME_WAIT-aware pool.
//!
//! With no configuration it serves a demo directory on 127.0.0.1:2121, anonymous read-only,
//! with passive ports 30000-30019. `pasvd passwd` prints an argon2 hash for the users file.

use std::io::{BufRead, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pasv_tools::server::{self, BoundServer, Config, ConfigFile, LogFormat};

#[derive(Parser, Debug)]
#[command(
    name = "pasvd",
    version,
    about = "FTP server with a TIME_WAIT-aware passive port pool"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    /// TOML configuration file (keys named like the flags, with underscores).
    #[arg(long, env = "PASVD_CONFIG")]
    config: Option<PathBuf>,
    /// Check the configuration (file, environment and flags; the users file; the root),
    /// print the settings in effect and exit without serving: 0 when valid, 1 when not.
    #[arg(long)]
    check_config: bool,
    /// Control connection address (port 0 picks a free one).
    #[arg(long, env = "PASVD_LISTEN")]
    listen: Option<SocketAddr>,
    /// Served directory (default: a demo directory under the system temp dir).
    #[arg(long, env = "PASVD_ROOT")]
    root: Option<PathBuf>,
    /// Lowest passive port.
    #[arg(long, env = "PASVD_PASV_MIN_PORT")]
    pasv_min_port: Option<u16>,
    /// Highest passive port (inclusive).
    #[arg(long, env = "PASVD_PASV_MAX_PORT")]
    pasv_max_port: Option<u16>,
    /// Local address whose passive ports are leased (repeat for several).
    #[arg(long, env = "PASVD_PASV_ADDRESS", value_delimiter = ',')]
    pasv_address: Vec<IpAddr>,
    /// Address advertised in 227 replies (NAT): PUBLIC or LOCAL=PUBLIC (repeatable); PUBLIC
    /// is an IPv4 address or a host name, looked up when needed (cached 30 s).
    #[arg(long, env = "PASVD_PASV_PUBLIC_ADDRESS", value_delimiter = ',')]
    pasv_public_address: Vec<String>,
    /// Address advertised in 227 replies to clients in a block: CIDR=PUBLIC (repeatable; the
    /// first block that holds the client wins, --pasv-public-address is the fallback).
    #[arg(long, env = "PASVD_PASV_PUBLIC_ADDRESS_FOR", value_delimiter = ',')]
    pasv_public_address_for: Vec<String>,
    /// Clients connect to the address a 227 reply advertises, so PASV may lease on any
    /// passive address (default: PASV leases on the control connection's local address,
    /// where ftplib, curl and commons-net connect whatever the reply says).
    #[arg(long, env = "PASVD_PASV_FOLLOW_ADVERTISED")]
    pasv_follow_advertised: bool,
    /// Control connections start with a PROXY protocol header (v1 or v2) naming the client's
    /// address, from a load balancer in --proxy-from; that address then counts everywhere.
    #[arg(long, env = "PASVD_PROXY_PROTOCOL")]
    proxy_protocol: bool,
    /// Sources allowed to send a PROXY header, as CIDR blocks (repeatable); with
    /// --proxy-protocol, control connections from anywhere else are closed unread.
    #[arg(long, env = "PASVD_PROXY_FROM", value_delimiter = ',')]
    proxy_from: Vec<String>,
    /// Let anonymous users upload, rename, delete and create directories.
    #[arg(long, env = "PASVD_ANONYMOUS_WRITE")]
    anonymous_write: bool,
    /// Refuse anonymous logins.
    #[arg(long, env = "PASVD_NO_ANONYMOUS")]
    no_anonymous: bool,
    /// TOML users file with argon2 hashes (see `pasvd passwd`).
    #[arg(long, env = "PASVD_USERS")]
    users: Option<PathBuf>,
    /// What a server-closed port blocks: port, peer or none (default: none with
    /// SO_REUSEADDR, port without).
    #[arg(long, env = "PASVD_QUARANTINE")]
    quarantine: Option<String>,
    /// Quarantine length in seconds (Linux TIME_WAIT: 60).
    #[arg(long, env = "PASVD_TIME_WAIT")]
    time_wait: Option<f64>,
    /// Bind passive listeners without SO_REUSEADDR (shows the classic exhaustion).
    #[arg(long, env = "PASVD_NO_REUSEADDR")]
    no_reuseaddr: bool,
    /// Longest wait in seconds for a port that frees soon before answering 425.
    #[arg(long, env = "PASVD_PASV_WAIT")]
    pasv_wait: Option<f64>,
    /// Seconds a passive listener waits for the client.
    #[arg(long, env = "PASVD_ACCEPT_TIMEOUT")]
    accept_timeout: Option<f64>,
    /// Maximum concurrent sessions (0 = unlimited).
    #[arg(long, env = "PASVD_MAX_CLIENTS")]
    max_clients: Option<usize>,
    /// Maximum concurrent sessions per client address (0 = unlimited).
    #[arg(long, env = "PASVD_MAX_PER_IP")]
    max_per_ip: Option<usize>,
    /// Maximum passive ports one client address holds at once, over all its sessions
    /// (0 = unlimited; default: half the passive range, at least 1).
    #[arg(long, env = "PASVD_MAX_PASSIVE_PER_IP")]
    max_passive_per_ip: Option<usize>,
    /// Idle control connection timeout in seconds (no command read and no reply byte
    /// written); also the control write timeout (replies left unread this long).
    #[arg(long, env = "PASVD_IDLE_TIMEOUT")]
    idle_timeout: Option<f64>,
    /// Data connection stall timeout in seconds (no byte moved on a read or write).
    #[arg(long, env = "PASVD_DATA_TIMEOUT")]
    data_timeout: Option<f64>,
    /// wu-ftpd format transfer log.
    #[arg(long, env = "PASVD_XFERLOG")]
    xferlog: Option<PathBuf>,
    /// prebound (default: every port bound once at start, shared by client addresses) or
    /// per-lease (a listener bound per PASV, one session per port).
    #[arg(long, env = "PASVD_LISTENER_MODE")]
    listener_mode: Option<String>,
    /// Pool strategy: lrr, round-robin, lowest-free, keyed.
    #[arg(long, env = "PASVD_PASV_STRATEGY")]
    pasv_strategy: Option<String>,
    /// Refuse PORT and EPRT.
    #[arg(long, env = "PASVD_NO_PORT")]
    no_port: bool,
    /// Do not fsync uploads before renaming them into place.
    #[arg(long, env = "PASVD_NO_FSYNC")]
    no_fsync: bool,
    /// Keep polling for I/O this many microseconds after each command instead of sleeping
    /// (0 = off): lower latency and no wake-up per command, for a core spent spinning.
    #[arg(long, env = "PASVD_BUSY_POLL_US")]
    busy_poll_us: Option<u64>,
    /// Ignore TYPE A: send and store every file as is (binary), like vsftpd's default.
    #[arg(long, env = "PASVD_NO_ASCII")]
    no_ascii: bool,
    /// Once the ports are bound, switch to this account (its groups, gid and uid; a name in
    /// /etc/passwd). Needs root; without it a server started as root warns and stays root.
    #[arg(long, env = "PASVD_RUN_AS")]
    run_as: Option<String>,
    /// Seconds a session has to log in before it is closed with 421 (default 60).
    #[arg(long, env = "PASVD_LOGIN_TIMEOUT")]
    login_timeout: Option<f64>,
    /// Failed logins from one client address (IPv6: its /64) within --ban-window that ban
    /// it (default 10).
    #[arg(long, env = "PASVD_MAX_LOGIN_FAILURES")]
    max_login_failures: Option<u32>,
    /// Seconds a failed login counts towards --max-login-failures (default 600).
    #[arg(long, env = "PASVD_BAN_WINDOW")]
    ban_window: Option<f64>,
    /// Seconds a banned address is refused (default 900).
    #[arg(long, env = "PASVD_BAN_TIME")]
    ban_time: Option<f64>,
    /// Serve Prometheus metrics over HTTP at this address (`GET /metrics`).
    #[arg(long, env = "PASVD_METRICS")]
    metrics: Option<SocketAddr>,
    /// Log format on stderr: text (default) or json (one object per event and line; the
    /// xferlog is written either way).
    #[arg(long, env = "PASVD_LOG_FORMAT")]
    log_format: Option<String>,
    /// FTPS: PEM certificate chain, leaf first (with --tls-key; read again on SIGHUP).
    #[arg(long, env = "PASVD_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// FTPS: PEM private key of --tls-cert.
    #[arg(long, env = "PASVD_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// FTPS with a certificate generated at start: for development only, clients cannot
    /// verify it.
    #[arg(long, env = "PASVD_TLS_SELF_SIGNED")]
    tls_self_signed: bool,
    /// Implicit FTPS listener (TLS from the first byte; usually port 990).
    #[arg(long, env = "PASVD_IMPLICIT_TLS_LISTEN")]
    implicit_tls_listen: Option<SocketAddr>,
    /// What sessions must protect: none (default), login (no USER/PASS before AUTH TLS),
    /// data (no transfer without PROT P) or all.
    #[arg(long, env = "PASVD_TLS_REQUIRED")]
    tls_required: Option<String>,
    /// Protected data connections must resume their own control session's TLS session:
    /// required (default) or off (for clients that never resume, such as Python's ftplib).
    #[arg(long, env = "PASVD_TLS_SESSION_REUSE")]
    tls_session_reuse: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Reads a password from stdin and prints its argon2 hash for the users file.
    Passwd,
}

impl Cli {
    fn overrides(&self) -> ConfigFile {
        let mut o = ConfigFile::default();
        o.listen = self.listen;
        o.root = self.root.clone();
        o.pasv_min_port = self.pasv_min_port;
        o.pasv_max_port = self.pasv_max_port;
        o.pasv_address = (!self.pasv_address.is_empty()).then(|| self.pasv_address.clone());
        o.pasv_public_address =
            (!self.pasv_public_address.is_empty()).then(|| self.pasv_public_address.clone());
        o.pasv_public_address_for = (!self.pasv_public_address_for.is_empty())
            .then(|| self.pasv_public_address_for.clone());
        o.pasv_follow_advertised = self.pasv_follow_advertised.then_some(true);
        o.proxy_protocol = self.proxy_protocol.then_some(true);
        o.proxy_from = (!self.proxy_from.is_empty()).then(|| self.proxy_from.clone());
        o.anonymous_write = self.anonymous_write.then_some(true);
        o.no_anonymous = self.no_anonymous.then_some(true);
        o.users = self.users.clone();
        o.quarantine = self.quarantine.clone();
        o.time_wait = self.time_wait;
        o.no_reuseaddr = self.no_reuseaddr.then_some(true);
        o.pasv_wait = self.pasv_wait;
        o.accept_timeout = self.accept_timeout;
        o.max_clients = self.max_clients;
        o.max_per_ip = self.max_per_ip;
        o.max_passive_per_ip = self.max_passive_per_ip;
        o.idle_timeout = self.idle_timeout;
        o.data_timeout = self.data_timeout;
        o.xferlog = self.xferlog.clone();
        o.listener_mode = self.listener_mode.clone();
        o.pasv_strategy = self.pasv_strategy.clone();
        o.no_port = self.no_port.then_some(true);
        o.no_fsync = self.no_fsync.then_some(true);
        o.busy_poll_us = self.busy_poll_us;
        o.no_ascii = self.no_ascii.then_some(true);
        o.run_as = self.run_as.clone();
        o.login_timeout = self.login_timeout;
        o.max_login_failures = self.max_login_failures;
        o.ban_window = self.ban_window;
        o.ban_time = self.ban_time;
        o.metrics = self.metrics;
        o.log_format = self.log_format.clone();
        o.tls_cert = self.tls_cert.clone();
        o.tls_key = self.tls_key.clone();
        o.tls_self_signed = self.tls_self_signed.then_some(true);
        o.implicit_tls_listen = self.implicit_tls_listen;
        o.tls_required = self.tls_required.clone();
        o.tls_session_reuse = self.tls_session_reuse.clone();
        o
    }
}

fn passwd() -> anyhow::Result<()> {
    eprintln!("password (read from stdin, one line):");
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password")?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    anyhow::ensure!(!password.is_empty(), "empty password");
    println!("{}", server::hash_password(password.as_bytes())?);
    Ok(())
}

/// Completes on SIGTERM or SIGINT. The handlers are installed when this is called, not when
/// the future is first polled, so a signal sent as soon as the server says it listens stops
/// it cleanly instead of killing it with its log unflushed.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        tracing::info!("signal received");
    }
}

/// Log lines collected in memory and written to stderr by a helper thread every 100 ms (or
/// at 64 KiB): one `write` per transfer to an unbuffered stderr cost about 3% of the server's
/// CPU at 9,000 transfers/s.
#[derive(Clone, Default)]
struct BufferedStderr(Arc<Mutex<Vec<u8>>>);

const LOG_FLUSH_BYTES: usize = 64 * 1024;

impl BufferedStderr {
    fn flush_now(&self) {
        let pending = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        if !pending.is_empty() {
            let _ = std::io::stderr().lock().write_all(&pending);
        }
    }

    fn spawn_flusher(&self) {
        let me = self.clone();
        let _ = std::thread::Builder::new()
            .name("log-flush".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(100));
                me.flush_now();
            });
    }
}

impl Write for BufferedStderr {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let full = {
            let mut buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
            buf.extend_from_slice(bytes);
            buf.len() >= LOG_FLUSH_BYTES
        };
        if full {
            self.flush_now();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.flush_now();
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BufferedStderr {
    type Writer = BufferedStderr;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Sub::Passwd) = cli.command {
        return passwd();
    }
    if cli.check_config {
        return check_config(&cli);
    }
    // The configuration comes first: it says which log format to set up.
    let (config, demo) = configure(&cli)?;
    let log = BufferedStderr::default();
    let filter = tracing_subscriber::EnvFilter::try_from_env("PASVD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_writer(log.clone())
        .with_env_filter(filter);
    match config.log_format {
        // Field names are documented in docs/LOGS.md: the event's fields at the top level
        // beside `timestamp`, `level`, `target` and `message`, no span context.
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
        _ => fmt
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    let result = serve(config, demo, &log);
    log.flush_now();
    result
}

/// `--check-config`: the configuration the server would run with, checked and printed.
fn check_config(cli: &Cli) -> anyhow::Result<()> {
    let (config, _) = configure(cli)?;
    let accounts = server::check_config(&config)?;
    print!("{}", config.effective_settings());
    eprintln!("configuration ok ({accounts} accounts in the users file)");
    Ok(())
}

/// The configuration from the file and the flags, and whether the demo directory is served.
fn configure(cli: &Cli) -> anyhow::Result<(Config, bool)> {
    let mut config = Config::default();
    if let Some(path) = &cli.config {
        config.load_file(path)?;
    }
    let configured_root =
        cli.root.is_some() || cli.config.is_some() && config.root != server::config::demo_root();
    cli.overrides().apply(&mut config)?;
    config.validate()?;
    Ok((config, !configured_root))
}

fn serve(config: Config, demo: bool, log: &BufferedStderr) -> anyhow::Result<()> {
    // Linux keeps credentials per thread and the switch to run_as changes the calling thread
    // only: it runs here, while this is the process's only thread, after binding with the
    // privileges it started with. The log flusher and the runtime's workers start afterwards
    // and inherit the new account.
    let mut bound = BoundServer::bind(config.clone())?;
    bound.drop_privileges()?;
    log.spawn_flusher();
    if demo {
        // Created as the account that serves it, which must own it.
        server::populate_demo(&config.root)
            .with_context(|| format!("creating the demo directory {}", config.root.display()))?;
    }
    // Busy polling needs the polling task on the thread that owns the I/O driver, which a
    // current-thread runtime guarantees (see the server's busy_poll module).
    let mut builder = if config.busy_poll.is_zero() {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let runtime = builder
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let server = bound.start().await?;
        let stop = shutdown_signal();
        let addr = server.local_addr();
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "listening on {addr}")?;
            out.flush()?;
        }
        if demo {
            eprintln!(
                "serving the demo directory {} (anonymous, read-only)\n  try: curl ftp://{addr}/hello.txt\n       lftp -p {} {}",
                config.root.display(),
                addr.port(),
                addr.ip()
            );
        }
        server.run_until(stop).await?;
        Ok(())
    })
}
