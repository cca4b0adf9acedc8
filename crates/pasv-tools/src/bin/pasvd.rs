//! `pasvd`: an FTP server whose passive ports come from a TIME_WAIT-aware pool.
//!
//! With no configuration it serves a demo directory on 127.0.0.1:2121, anonymous read-only,
//! with passive ports 30000-30019. `pasvd passwd` prints an argon2 hash for the users file.

use std::io::{BufRead, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use pasv_tools::server::{self, BoundServer, Config, ConfigFile, LogFormat};

use pasv_tools::cli::pasvd::{Cli, Sub};

/// The settings the command line gives, laid over the file and the environment.
fn overrides(cli: &Cli) -> ConfigFile {
    let mut o = ConfigFile::default();
    o.listen = cli.listen;
    o.root = cli.root.clone();
    o.pasv_min_port = cli.pasv_min_port;
    o.pasv_max_port = cli.pasv_max_port;
    o.pasv_address = (!cli.pasv_address.is_empty()).then(|| cli.pasv_address.clone());
    o.pasv_public_address =
        (!cli.pasv_public_address.is_empty()).then(|| cli.pasv_public_address.clone());
    o.pasv_public_address_for =
        (!cli.pasv_public_address_for.is_empty()).then(|| cli.pasv_public_address_for.clone());
    o.pasv_follow_advertised = cli.pasv_follow_advertised.then_some(true);
    o.proxy_protocol = cli.proxy_protocol.then_some(true);
    o.proxy_from = (!cli.proxy_from.is_empty()).then(|| cli.proxy_from.clone());
    o.proxy_protocol_data = cli.proxy_protocol_data.then_some(true);
    o.anonymous_write = cli.anonymous_write.then_some(true);
    o.no_anonymous = cli.no_anonymous.then_some(true);
    o.users = cli.users.clone();
    o.quarantine = cli.quarantine.clone();
    o.time_wait = cli.time_wait;
    o.no_reuseaddr = cli.no_reuseaddr.then_some(true);
    o.pasv_wait = cli.pasv_wait;
    o.accept_timeout = cli.accept_timeout;
    o.max_clients = cli.max_clients;
    o.max_per_ip = cli.max_per_ip;
    o.max_unauthenticated = cli.max_unauthenticated;
    o.max_unauthenticated_per_ip = cli.max_unauthenticated_per_ip;
    o.max_passive_per_ip = cli.max_passive_per_ip;
    o.idle_timeout = cli.idle_timeout;
    o.data_timeout = cli.data_timeout;
    o.xferlog = cli.xferlog.clone();
    o.listener_mode = cli.listener_mode.clone();
    o.pasv_strategy = cli.pasv_strategy.clone();
    o.no_port = cli.no_port.then_some(true);
    o.no_fsync = cli.no_fsync.then_some(true);
    o.busy_poll_us = cli.busy_poll_us;
    o.threads = cli.threads;
    o.no_ascii = cli.no_ascii.then_some(true);
    o.run_as = cli.run_as.clone();
    o.login_timeout = cli.login_timeout;
    o.max_login_failures = cli.max_login_failures;
    o.ban_window = cli.ban_window;
    o.ban_time = cli.ban_time;
    o.metrics = cli.metrics;
    o.log_format = cli.log_format.clone();
    o.tls_cert = cli.tls_cert.clone();
    o.tls_key = cli.tls_key.clone();
    o.tls_self_signed = cli.tls_self_signed.then_some(true);
    o.implicit_tls_listen = cli.implicit_tls_listen;
    o.tls_required = cli.tls_required.clone();
    o.tls_session_reuse = cli.tls_session_reuse.clone();
    o
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
    // The certificate reader, `pasvd tls-reader CERT KEY`, started by pasvd itself (with an
    // empty environment) before it switches to run_as: dispatched before anything else, it
    // reads no flag, no environment, no configuration and sets up no log. Not a clap
    // subcommand, so no help text, man page or shell completion offers it.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let [_, sub, cert, key] = &args[..] {
        if sub == server::cert_reader::SUBCOMMAND {
            return Ok(server::cert_reader::run(cert.as_ref(), key.as_ref())?);
        }
    }
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
        // Colours for a terminal; elsewhere the same line, written more cheaply.
        _ if std::io::IsTerminal::is_terminal(&std::io::stderr()) => fmt.with_ansi(true).init(),
        _ => fmt
            .with_ansi(false)
            .event_format(pasv_tools::logfmt::PlainText)
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
    overrides(cli).apply(&mut config)?;
    config.validate()?;
    Ok((config, !configured_root))
}

fn serve(config: Config, demo: bool, log: &BufferedStderr) -> anyhow::Result<()> {
    // Linux keeps credentials per thread and the switch to run_as changes the calling thread
    // only: it runs here, while this is the process's only thread, after binding with the
    // privileges it started with. The log flusher and the runtime's workers start afterwards
    // and inherit the new account.
    let mut bound = BoundServer::bind(config.clone())?;
    // With run_as and certificate files, a child that keeps these privileges reads the files
    // for SIGHUP reloads (keys are often readable by root only). It is this very program:
    // /proc/self/exe names the running binary even if the file was replaced since.
    bound.start_cert_reader(std::path::Path::new("/proc/self/exe"))?;
    bound.drop_privileges()?;
    log.spawn_flusher();
    if demo {
        // Created as the account that serves it, which must own it.
        server::populate_demo(&config.root)
            .with_context(|| format!("creating the demo directory {}", config.root.display()))?;
    }
    // One thread runs a current-thread runtime: on one CPU the multi-threaded scheduler's
    // queues and cross-thread wake-ups are pure cost. Busy polling needs it too: the polling
    // task on the thread that owns the I/O driver (see the server's busy_poll module).
    let threads = config.runtime_threads();
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
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
            if let Some(implicit) = server.implicit_tls_addr() {
                writeln!(out, "implicit FTPS on {implicit}")?;
            }
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
