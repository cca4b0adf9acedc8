//! `pasv`: an FTP client, load generator, passive-port probe, capacity planner and protocol
//! decoder.
//!
//! Exit codes (also in docs/CLIENT.md): 0 success; 1 usage error or a local precondition
//! (bad arguments, unusable URL, local file larger than the remote one, a file over
//! `--max-size`); 2 permanent FTP error (a 5xx reply); 3 transient FTP error (a 4xx reply,
//! also when retries end on one); 4 network or I/O error (connection refused or reset,
//! timeout, malformed reply, a length other than SIZE said, local file error, also when
//! retries end on one).
//!
//! The transfers themselves, with their resume and retry, are the library's
//! (`Client::download_to`, `Client::upload_from`): this file parses arguments and prints.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pasv_tools::client::{
    decode, escape_bytes, escape_text, load, plan, probe, Client, ClientConfig, ClientError,
    ClientTls, DataMode, DownloadOptions, EntryKind, FtpUrl, RetryPolicy, TlsMode, UploadOptions,
    Verification,
};

use pasv_tools::cli::pasv::{
    Cli, Cmd, DecodeKind, DoctorArgs, Global, LoadArgs, Mode, PlanArgs, ProbeArgs, ResumeUpload,
};

fn parse_secs(s: f64, what: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| anyhow!("{what} must be a non-negative number of seconds"))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            // Printing help or an error can only fail on a closed stream; the code says it all.
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    init_tracing(cli.global.verbose);
    // One thread: `pasv load --threads` starts the threads of its own event loops.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pasv: cannot start the runtime: {e}");
            return ExitCode::from(4);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Error messages carry the server's text: control characters are shown, not sent
            // to the terminal.
            eprintln!("pasv: {}", escape_text(&format!("{e:#}")));
            ExitCode::from(exit_code(&e))
        }
    }
}

fn init_tracing(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // A second initialisation can only happen in tests; the first subscriber stays.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Maps an error to the documented exit code.
fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(client) = cause.downcast_ref::<ClientError>() {
            return client_exit_code(client);
        }
        if cause.downcast_ref::<std::io::Error>().is_some() {
            return 4;
        }
    }
    1
}

/// The exit code of a client error: after retries, that of the error they ended on.
fn client_exit_code(e: &ClientError) -> u8 {
    match e.last() {
        ClientError::Url(_)
        | ClientError::InvalidArgument(_)
        | ClientError::LocalLonger { .. }
        | ClientError::RemoteLonger { .. }
        | ClientError::TooLarge { .. } => 1,
        last if last.is_permanent() => 2,
        last if last.is_transient() => 3,
        _ => 4,
    }
}

/// The FTPS settings for `u`: its scheme's mode, or explicit with `--tls`; `None` for plain
/// FTP.
fn client_tls(g: &Global, u: &FtpUrl) -> anyhow::Result<Option<ClientTls>> {
    let mode = match (u.tls(), g.tls) {
        (Some(mode), _) => mode,
        (None, true) => TlsMode::Explicit,
        (None, false) => {
            if g.insecure || g.ca_file.is_some() {
                bail!("--insecure and --ca-file apply to FTPS: use ftps://, ftpes:// or --tls");
            }
            return Ok(None);
        }
    };
    let verification = match (&g.ca_file, g.insecure) {
        (_, true) => Verification::Insecure,
        (Some(file), false) => Verification::CaFile(file.clone()),
        (None, false) => Verification::SystemRoots,
    };
    Ok(Some(ClientTls::new(mode, &verification)?))
}

fn client_config(g: &Global, u: &FtpUrl) -> anyhow::Result<ClientConfig> {
    let timeout = parse_secs(g.timeout, "--timeout")?;
    Ok(ClientConfig {
        tls: client_tls(g, u)?,
        data_mode: if g.active {
            DataMode::Active
        } else {
            g.mode.unwrap_or(Mode::Auto).data_mode()
        },
        trust_pasv_ip: g.trust_pasv_ip,
        retry: RetryPolicy {
            max_attempts: g.attempts.max(1),
            budget: parse_secs(g.retry_budget, "--retry-budget")?,
            ..RetryPolicy::default()
        },
        data_socket_buffer: socket_buffer(g)?,
        ..ClientConfig::default().with_timeout(timeout)
    })
}

fn socket_buffer(g: &Global) -> anyhow::Result<Option<u32>> {
    g.socket_buffer
        .map(|b| u32::try_from(b).map_err(|_| anyhow!("--socket-buffer must be below 4 GiB")))
        .transpose()
}

fn url(s: &str) -> anyhow::Result<FtpUrl> {
    FtpUrl::parse(s).map_err(|e| anyhow::Error::new(ClientError::Url(e)).context(format!("{s:?}")))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let g = &cli.global;
    match cli.command {
        Cmd::Ls {
            url: u,
            names,
            mlsd,
        } => {
            let u = url(&u)?;
            let mut client = Client::open(&u, client_config(g, &u)?).await?;
            let path = (!u.path().is_empty()).then_some(u.path());
            let mut out = Vec::new();
            if names {
                for name in client.nlst(path).await? {
                    out.extend_from_slice(&name);
                    out.push(b'\n');
                }
            } else if mlsd {
                for entry in client.mlsd(path).await? {
                    let kind = match entry.kind() {
                        Some(EntryKind::File) => "file".to_owned(),
                        Some(EntryKind::Dir) => "dir".to_owned(),
                        Some(EntryKind::CurrentDir) => "cdir".to_owned(),
                        Some(EntryKind::ParentDir) => "pdir".to_owned(),
                        Some(EntryKind::Other(t)) => t,
                        Some(_) | None => "-".to_owned(),
                    };
                    let size = entry.size().map_or("-".to_owned(), |s| s.to_string());
                    write!(
                        out,
                        "{kind:<5} {size:>12} {:<14} ",
                        entry.modify().unwrap_or("-")
                    )?;
                    out.extend_from_slice(&entry.name);
                    out.push(b'\n');
                }
            } else {
                out = client.list(path).await?;
            }
            client.quit().await?;
            // Names and listings come from the server: on a terminal their control characters
            // are shown, as `ls` does; a pipe gets the bytes as sent.
            let mut stdout = std::io::stdout().lock();
            if stdout.is_terminal() {
                stdout.write_all(escape_bytes(&out).as_bytes())?;
            } else {
                stdout.write_all(&out)?;
            }
            stdout.flush()?;
        }
        Cmd::Get {
            url: u,
            output,
            resume,
            max_size,
        } => {
            let u = url(&u)?;
            get(g, &u, output, resume, max_size).await?;
        }
        Cmd::Put {
            url: u,
            input,
            resume,
            resume_with,
        } => {
            let u = url(&u)?;
            put(g, &u, &input, resume, resume_with).await?;
        }
        Cmd::Rm { url: u } => {
            let u = url(&u)?;
            let mut client = Client::open(&u, client_config(g, &u)?).await?;
            client.delete(u.path()).await?;
            client.quit().await?;
        }
        Cmd::Mv { url: u, to } => {
            let u = url(&u)?;
            let to_path = if FtpUrl::parse(&to).is_ok() {
                url(&to)?.path().to_vec()
            } else {
                to.into_bytes()
            };
            let mut client = Client::open(&u, client_config(g, &u)?).await?;
            client.rename(u.path(), &to_path).await?;
            client.quit().await?;
        }
        Cmd::Mkdir { url: u } => {
            let u = url(&u)?;
            let mut client = Client::open(&u, client_config(g, &u)?).await?;
            client.mkdir(u.path()).await?;
            client.quit().await?;
        }
        Cmd::Rmdir { url: u } => {
            let u = url(&u)?;
            let mut client = Client::open(&u, client_config(g, &u)?).await?;
            client.rmdir(u.path()).await?;
            client.quit().await?;
        }
        Cmd::Size { url: u } => {
            let u = url(&u)?;
            let mut client = Client::open(&u, client_config(g, &u)?).await?;
            println!("{}", client.size(u.path()).await?);
            client.quit().await?;
        }
        Cmd::Mdtm { url: u } => {
            let u = url(&u)?;
            let mut client = Client::open(&u, client_config(g, &u)?).await?;
            println!("{}", client.mdtm(u.path()).await?);
            client.quit().await?;
        }
        Cmd::Load(args) => run_load(g, args).await?,
        Cmd::Probe(args) => run_probe(g, args).await?,
        Cmd::Plan(args) => run_plan(args)?,
        Cmd::Simulate(args) => {
            pasv_tools::cli::simulate::run(&args, &mut std::io::stdout().lock())?
        }
        Cmd::Doctor(args) => run_doctor(g, args).await?,
        Cmd::Decode { kind } => {
            let mut input = Vec::new();
            std::io::stdin().lock().read_to_end(&mut input)?;
            let values = match kind {
                DecodeKind::Reply => decode::replies(&input),
                DecodeKind::Command => decode::commands(&input),
            };
            let mut out = std::io::stdout().lock();
            out.write_all(decode::to_json_lines(&values).as_bytes())?;
            out.flush()?;
        }
    }
    Ok(())
}

/// A progress bar on stderr when it is a terminal, hidden otherwise (scripts and pipes see
/// no escape codes).
fn progress(g: &Global, total: Option<u64>) -> ProgressBar {
    if g.quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(total) => ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr()),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
    };
    let template = if total.is_some() {
        "{bytes:>10}/{total_bytes} {binary_bytes_per_sec:>12} ETA {eta:>4} [{wide_bar}]"
    } else {
        "{spinner} {bytes:>10} {binary_bytes_per_sec:>12} {elapsed}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

async fn get(
    g: &Global,
    u: &FtpUrl,
    output: Option<PathBuf>,
    resume: bool,
    max_size: Option<u64>,
) -> anyhow::Result<()> {
    let config = client_config(g, u)?;
    let to_stdout = output.as_deref() == Some(Path::new("-"));
    let path = match output {
        Some(p) => p,
        None => {
            let name = String::from_utf8_lossy(u.file_name()).into_owned();
            if name.is_empty() || name == "." || name == ".." {
                bail!("the URL names no file; give an output path");
            }
            PathBuf::from(name)
        }
    };
    let offset = if resume && !to_stdout {
        match tokio::fs::metadata(&path).await {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
        }
    } else {
        0
    };
    let mut client = Client::open(u, config).await?;
    let bar = progress(g, Some(0));
    let options = DownloadOptions::from_offset(offset).with_max_size(max_size);
    let open = |offset| open_output(path.clone(), to_stdout, offset);
    let report = client
        .download_to(u.path(), options, open, |at, size| {
            if let Some(size) = size {
                bar.set_length(size);
            }
            bar.set_position(at);
        })
        .await?;
    bar.finish_and_clear();
    if report.already_complete && !g.quiet {
        eprintln!(
            "{}: already complete ({} bytes)",
            path.display(),
            report.offset
        );
    }
    client.quit().await?;
    Ok(())
}

/// The local side of a download, opened once the server has accepted RETR.
async fn open_output(
    path: PathBuf,
    to_stdout: bool,
    offset: u64,
) -> std::io::Result<Box<dyn tokio::io::AsyncWrite + Unpin>> {
    if to_stdout {
        return Ok(Box::new(tokio::io::stdout()));
    }
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(offset > 0)
        .truncate(offset == 0)
        .open(&path)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    Ok(Box::new(file))
}

async fn put(
    g: &Global,
    u: &FtpUrl,
    input: &Path,
    resume: bool,
    resume_with: ResumeUpload,
) -> anyhow::Result<()> {
    let mut file = tokio::fs::File::open(input)
        .await
        .with_context(|| format!("{}", input.display()))?;
    let len = file.metadata().await?.len();
    let remote = if u.path().is_empty() || u.path().ends_with(b"/") {
        let name = input
            .file_name()
            .ok_or_else(|| anyhow!("{} has no file name", input.display()))?;
        let mut p = u.path().to_vec();
        p.extend_from_slice(name.to_string_lossy().as_bytes());
        p
    } else {
        u.path().to_vec()
    };
    let mut client = Client::open(u, client_config(g, u)?).await?;
    let options = if resume {
        UploadOptions::resume(resume_with == ResumeUpload::Appe)
    } else {
        UploadOptions::whole()
    };
    let bar = progress(g, Some(len));
    let report = client
        .upload_from(&remote, &mut file, len, options, |at| bar.set_position(at))
        .await?;
    bar.finish_and_clear();
    if report.already_complete && !g.quiet {
        eprintln!("{}: already complete ({len} bytes)", escape_bytes(&remote));
    }
    client.quit().await?;
    Ok(())
}

/// Load and probe default to PASV, as ftpload.py does: one command per transfer, and the
/// peers all answer it. Active mode would measure the client's accept, not the server.
fn load_data_mode(g: &Global) -> anyhow::Result<DataMode> {
    match (g.active, g.mode) {
        (true, _) | (_, Some(Mode::Active)) => bail!("load and probe use passive mode only"),
        (_, None | Some(Mode::Pasv)) => Ok(DataMode::Pasv),
        (_, Some(Mode::Epsv)) => Ok(DataMode::Epsv),
        (_, Some(Mode::Auto)) => Ok(DataMode::Auto),
    }
}

/// The most event loops `pasv load --threads` starts (each is a thread).
const MAX_LOAD_THREADS: usize = 1024;

async fn run_load(g: &Global, args: LoadArgs) -> anyhow::Result<()> {
    let u = url(&args.url)?;
    if !(1..=10_000).contains(&args.sessions) {
        bail!("-k must be between 1 and 10000");
    }
    let duration = parse_secs(args.duration, "--duration")?.min(Duration::from_secs(3600));
    let mut config = load::LoadConfig::new(u, args.sessions, duration);
    config.max_transfers = args.max_transfers;
    config.rate = args.rate;
    config.mix = args.mix;
    config.size = args.size;
    config.expect_size = args.expect_size;
    config.stor_path = args.stor_path;
    config.delete_after = args.delete_after;
    config.expect_range = args.expect_range;
    config.data_mode = load_data_mode(g)?;
    config.socket_buffer = socket_buffer(g)?;
    config.timeout = parse_secs(g.timeout, "--timeout")?;
    config.tls = client_tls(g, &config.url)?;
    config.threads = match args.threads {
        0 => std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(MAX_LOAD_THREADS),
        n if n <= MAX_LOAD_THREADS => n,
        _ => bail!("--threads must be at most {MAX_LOAD_THREADS}"),
    };
    let report = load::run(config).await;
    print_report(&report, args.json)?;
    if report.transfers == 0 && !report.errors.is_empty() {
        bail!("no transfer completed");
    }
    Ok(())
}

/// Writes a load or probe report to stdout: one JSON line, or the text form.
fn print_report<R: serde::Serialize + std::fmt::Display>(
    report: &R,
    json: bool,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, report)?;
        writeln!(out)?;
    } else {
        write!(out, "{report}")?;
    }
    out.flush()?;
    Ok(())
}

async fn run_probe(g: &Global, args: ProbeArgs) -> anyhow::Result<()> {
    let u = url(&args.url)?;
    let mut config = probe::ProbeConfig::new(u);
    config.count = args.count.min(100_000);
    config.transfers = args.transfers.min(100_000);
    config.push_sessions = args.push.min(1024);
    config.time_wait = parse_secs(args.time_wait, "--time-wait")?;
    config.timeout = parse_secs(g.timeout, "--timeout")?;
    config.data_mode = load_data_mode(g)?;
    config.tls = client_tls(g, &config.url)?;
    let report = probe::run(&config).await?;
    print_report(&report, args.json)?;
    Ok(())
}

async fn run_doctor(g: &Global, args: DoctorArgs) -> anyhow::Result<()> {
    use pasv_tools::client::doctor;
    let t = parse_secs(args.time_wait, "--time-wait")?;
    let input = doctor::read_host(args.ports, args.address, t)
        .map_err(|e| anyhow!("reading the kernel's TCP tables (/proc/net/tcp): {e}"))?;
    let report = doctor::examine(&input);
    let server_text = if let Some(u) = &args.server {
        let u = url(u)?;
        if u.tls().is_none() && !g.tls && !g.quiet {
            eprintln!(
                "warning: --server over plain ftp:// sends the administrator's password \
                 unencrypted; prefer a loopback address"
            );
        }
        let mut client = Client::open(&u, client_config(g, &u)?).await?;
        let site = pasv_protocol::Command::Site(pasv_protocol::Argument::new(b"POOL".to_vec())?);
        let reply = client.command(&site).await?;
        client.quit().await.ok();
        if reply.code().get() != 200 {
            bail!("SITE POOL refused: {}", escape_text(&reply.to_string()));
        }
        Some(reply.to_string())
    } else if let Some(addr) = args.metrics {
        Some(http_get_metrics(addr, parse_secs(g.timeout, "--timeout")?).await?)
    } else {
        None
    };
    let disagreements = match &server_text {
        Some(text) => Some(doctor::parse_disagreements(text).ok_or_else(|| {
            anyhow!("the server's answer has no ledger check (pasvd without it, or not Linux)")
        })?),
        None => None,
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(
            &mut out,
            &serde_json::json!({
                "host": report,
                "server_disagreements": disagreements.map(|(o, w)| serde_json::json!({
                    "offered_while_held": o,
                    "withheld_while_free": w,
                })),
            }),
        )?;
        writeln!(out)?;
    } else {
        write!(out, "{report}")?;
        if let (Some((o, w)), Some(text)) = (disagreements, &server_text) {
            if args.server.is_some() {
                writeln!(out, "server (SITE POOL):")?;
                // The server's text, escaped: a hostile server must not reach the terminal.
                for line in escape_text(text).lines() {
                    writeln!(out, "  {line}")?;
                }
            }
            writeln!(
                out,
                "server ledger against the kernel: {o} offered_while_held, {w} withheld_while_free"
            )?;
        }
    }
    out.flush()?;
    let disagree = disagreements.is_some_and(|(o, w)| o + w > 0);
    if !report.warnings.is_empty() || disagree {
        std::process::exit(1);
    }
    Ok(())
}

/// `GET /metrics` over plain HTTP/1.1 (one request, `Connection: close`).
async fn http_get_metrics(addr: std::net::SocketAddr, timeout: Duration) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.take(64 << 20).read_to_end(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| anyhow!("metrics endpoint {addr}: no answer in {timeout:?}"))??;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("metrics endpoint {addr}: not an HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "metrics endpoint {addr}: {}",
            head.lines().next().unwrap_or_default()
        );
    }
    Ok(body.to_owned())
}

fn run_plan(args: PlanArgs) -> anyhow::Result<()> {
    let finite = |x: f64, what: &str| {
        if x.is_finite() && x >= 0.0 {
            Ok(x)
        } else {
            Err(anyhow!("{what} must be a non-negative number"))
        }
    };
    let input = plan::PlanInput {
        port_lo: args.ports.0,
        port_hi: args.ports.1,
        addresses: args.addresses.max(1),
        time_wait_s: finite(args.time_wait, "--time-wait")?,
        hold_s: finite(args.hold, "--hold")?,
        server_close: finite(args.server_close, "--server-close")?.min(1.0),
        rate: args.rate.map(|r| finite(r, "--rate")).transpose()?,
        target_refusal: finite(args.target_refusal, "--target-refusal")?,
        max_wait_s: finite(args.max_wait, "--max-wait")?,
    };
    if input.hold_s + input.server_close * input.time_wait_s <= 0.0 {
        bail!("h + f*T is zero: give --hold or a server-closed share of --time-wait");
    }
    let result = plan::plan(input);
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &result)?;
        writeln!(out)?;
    } else {
        write!(out, "{result}")?;
        if !args.no_chart {
            writeln!(out)?;
            write!(out, "{}", result.chart())?;
        }
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_documented_table() {
        let reply = |code| {
            let reply =
                pasv_protocol::Reply::new(pasv_protocol::ReplyCode::new(code).unwrap(), "x");
            anyhow::Error::new(ClientError::Reply {
                command: "RETR".into(),
                reply,
            })
        };
        assert_eq!(exit_code(&reply(550)), 2);
        assert_eq!(exit_code(&reply(425)), 3);
        assert_eq!(exit_code(&anyhow::Error::new(ClientError::Closed)), 4);
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "x");
        assert_eq!(exit_code(&anyhow::Error::new(io).context("local file")), 4);
        assert_eq!(exit_code(&anyhow!("bad argument")), 1);
        // After retries, the code of the error they ended on.
        let exhausted = |last| ClientError::RetriesExhausted {
            attempts: 3,
            last: Box::new(last),
        };
        assert_eq!(
            exit_code(&anyhow::Error::new(exhausted(ClientError::Closed))),
            4
        );
        let refused = || ClientError::Reply {
            command: "PASV".into(),
            reply: pasv_protocol::Reply::new(pasv_protocol::ReplyCode::new(425).unwrap(), "x"),
        };
        assert_eq!(exit_code(&anyhow::Error::new(exhausted(refused()))), 3);
        let too_large = ClientError::TooLarge {
            size: 9,
            at_least: false,
            limit: 4,
        };
        assert_eq!(exit_code(&anyhow::Error::new(too_large)), 1);
        let mismatch = ClientError::SizeMismatch {
            expected: 100,
            received: 9,
        };
        assert_eq!(exit_code(&anyhow::Error::new(mismatch)), 4);
    }
}
