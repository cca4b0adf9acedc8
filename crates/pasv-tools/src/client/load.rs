//! The load generator behind `pasv load`.
//!
//! K sessions run as tokio tasks, each on one logged-in control connection, looping
//! PASV (or EPSV) → data connect → RETR, STOR or LIST → EOF → final reply until the duration
//! ends or the shared transfer count is used up. A session whose control connection breaks
//! (421, reset, "500 OOPS" followed by a close) is counted as lost and logs in again.
//! Latency is measured per transfer from sending PASV to the final reply, the way
//! `ftpload.py` measures it, so the two generators' numbers compare.

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
        }
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
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
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
}

impl SessionStats {
    fn new() -> SessionStats {
        SessionStats {
            transfers: 0,
            by_op: [0; 3],
            bytes: 0,
            errors: BTreeMap::new(),
            errors_by_text: BTreeMap::new(),
            count_425: 0,
            sessions_lost: 0,
            // 1 µs to 60 s (longer transfers count as 60 s) at 2 significant digits (1%):
            // about 20 KiB per session, so thousands of sessions stay cheap; 3 digits would
            // take 140 KiB each.
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 2)
                .expect("constant histogram bounds are valid"),
            ports: BTreeSet::new(),
            ports_outside_range: 0,
            passive_replies: 0,
            handshakes_full: 0,
            handshakes_resumed: 0,
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
    }
}

fn note_text(map: &mut BTreeMap<String, u64>, text: String, n: u64) {
    let mut text: String = text.chars().take(100).collect();
    if !map.contains_key(&text) && map.len() >= MAX_ERROR_TEXTS {
        text = "(other texts)".into();
    }
    *map.entry(text).or_default() += n;
}

/// Runs the load and reports.
pub async fn run(config: LoadConfig) -> LoadReport {
    let config = Arc::new(config);
    let cpu_start = process_cpu_time();
    let started = clock::now();
    let deadline = started + config.duration;
    let attempts = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(config.sessions);
    for session in 0..config.sessions {
        let config = Arc::clone(&config);
        let attempts = Arc::clone(&attempts);
        tasks.push(tokio::spawn(async move {
            run_session(&config, session, deadline, &attempts).await
        }));
    }
    let mut total = SessionStats::new();
    for task in tasks {
        match task.await {
            Ok(stats) => total.merge(stats),
            Err(e) => total.error("panic".into(), e.to_string()),
        }
    }
    let elapsed = clock::now()
        .saturating_duration_since(started)
        .as_secs_f64()
        .max(1e-9);
    let cpu = match (cpu_start, process_cpu_time()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a).as_secs_f64()),
        _ => None,
    };
    let h = &total.latency_us;
    let ms = |us: u64| us as f64 / 1000.0;
    let latency_ms = if h.is_empty() {
        Latency::default()
    } else {
        Latency {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    };
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
    }
}

async fn run_session(
    config: &LoadConfig,
    session: usize,
    deadline: tokio::time::Instant,
    attempts: &AtomicU64,
) -> SessionStats {
    let mut stats = SessionStats::new();
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
    // Nothing in flight at the end of the run outlives it by more than the timeout.
    let cut = deadline + config.timeout;
    let cut_off = || ClientError::Timeout("the end of the run");
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
        if let Some(max) = config.max_transfers {
            if attempts.fetch_add(1, Ordering::Relaxed) >= max {
                client = Some(c);
                break;
            }
        }
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
        let latency = clock::now().saturating_duration_since(t0);
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
                let us = u64::try_from(latency.as_micros())
                    .unwrap_or(u64::MAX)
                    .max(1);
                stats.latency_us.saturating_record(us);
            }
            Err(e) => {
                if e.code().map(|c| c.get()) == Some(425) {
                    stats.count_425 += 1;
                }
                stats.error(e.kind(), error_text(&e));
            }
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
        writeln!(f, "sessions          {}", self.sessions)?;
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
    fn cpu_time_is_readable_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(process_cpu_time().is_some());
        }
    }
}
