//! The passive-port probe behind `pasv probe`: what a server's passive allocation looks like
//! from the outside.
//!
//! Three bounded phases on loopback-or-not servers alike:
//!
//! 1. **Offers.** One session asks for `count` passive addresses without connecting; a
//!    server releases the unused listener on the next PASV (RFC 959 leaves this open; all
//!    the peers we know do so), so no TIME_WAIT is created. The ports give the range and the
//!    allocation pattern.
//! 2. **Transfers.** The same session lists the directory `transfers` times. The server
//!    closes a listing's data connection first, so its passive port holds TIME_WAIT for a
//!    minute (Linux): a server offering such a port again before then re-binds over
//!    TIME_WAIT (SO_REUSEADDR), i.e. TIME_WAIT does not block it. The mean transfer time is
//!    the lease time h of the capacity model.
//! 3. **Push.** Up to `push_sessions` further sessions each take one passive listener and
//!    hold it, until the server runs out; what it does then (425 and its text, a port
//!    outside the range, a killed session, a refused login) is reported.
//!
//! Before them, FEAT tells whether the server offers TLS (`AUTH TLS`), and over FTPS one
//! listing whose data connection resumes the control connection's TLS session and one whose
//! data connection does not tell whether the server requires session reuse.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

use pasv_pool::capacity;
use serde::Serialize;

use pasv_protocol::Command;

use super::{Client, ClientConfig, ClientError, ClientTls, DataMode, FtpUrl, ListCommand};
use crate::clock;

/// What to probe and how hard.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// The server and login; the listing in phase 2 is of the URL's path (or the login
    /// directory).
    pub url: FtpUrl,
    /// Passive requests without connecting (phase 1).
    pub count: usize,
    /// Listings (phase 2); 0 skips the phase.
    pub transfers: usize,
    /// Most extra sessions holding a listener (phase 3); 0 skips the push.
    pub push_sessions: usize,
    /// PASV (default), EPSV, or EPSV with fallback.
    pub data_mode: DataMode,
    /// Limit for the connect, each reply, opening a data connection and each stall of one
    /// ([`ClientConfig::with_timeout`]); every phase is bounded in count, so the probe ends.
    pub timeout: Duration,
    /// The quarantine assumed for the capacity estimates (Linux TIME_WAIT: 60 s).
    pub time_wait: Duration,
    /// FTPS (`None`: plain FTP, and only FEAT tells about TLS).
    pub tls: Option<ClientTls>,
}

impl ProbeConfig {
    /// Defaults: 200 offers, 40 listings, up to 64 pushing sessions, PASV.
    pub fn new(url: FtpUrl) -> ProbeConfig {
        ProbeConfig {
            url,
            count: 200,
            transfers: 40,
            push_sessions: 64,
            data_mode: DataMode::Pasv,
            timeout: Duration::from_secs(5),
            time_wait: Duration::from_secs(60),
            tls: None,
        }
    }
}

/// What the probe found out about FTPS.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TlsFindings {
    /// FEAT lists `AUTH TLS` (or `AUTH SSL`); `null` when FEAT failed.
    pub auth_tls_advertised: Option<bool>,
    /// FEAT lists `PBSZ` and `PROT`.
    pub prot_advertised: Option<bool>,
    /// A plaintext connection's `AUTH TLS` got 234 (FEAT may not list it: vsftpd leaves it
    /// out unless TLS 1.0 is enabled); `null` when the probe could not ask (implicit FTPS).
    pub auth_tls_accepted: Option<bool>,
    /// The probe spoke FTPS (its control connection is encrypted).
    pub control_encrypted: bool,
    /// A data connection that resumed the control connection's TLS session was served;
    /// `null` without FTPS.
    pub resumed_data_served: Option<bool>,
    /// The server refused a data connection that did not resume (full handshake):
    /// `true` it requires session reuse, `false` it served it, `null` untested.
    pub requires_session_reuse: Option<bool>,
    /// How the server refused the data connection without resumption.
    pub refusal: Option<String>,
}

/// What happened when the range ran out.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Exhaustion {
    /// Extra sessions opened in the push.
    pub sessions_opened: usize,
    /// Offers inside the observed range during the push.
    pub offers_in_range: usize,
    /// Offers outside the observed range (a kernel-chosen port, typically).
    pub offers_outside_range: usize,
    /// The ports outside the range.
    pub outside_ports: Vec<u16>,
    /// 425 replies (in the push, or in phase 2 when the server quarantines).
    pub refusals_425: usize,
    /// The server's retry hint on the first 425 that had one, seconds.
    pub retry_after_s: Option<f64>,
    /// Sessions the server closed (a 421, "500 OOPS" and a close, a reset).
    pub sessions_killed: usize,
    /// Logins refused during the push.
    pub logins_refused: usize,
    /// Reply texts seen on failures, with counts.
    pub texts: BTreeMap<String, usize>,
}

/// Capacity estimates `N / (h + f·T)` for the observed range under each quarantine scope.
#[derive(Debug, Clone, Serialize)]
pub struct CapacityEstimate {
    /// The range size N used (max - min + 1).
    pub ports: u64,
    /// The measured mean lease time h, seconds.
    pub hold_s: f64,
    /// The quarantine T assumed, seconds.
    pub time_wait_s: f64,
    /// `Port` scope, downloads (f = 1): transfers per second for everyone together.
    pub port_scope: f64,
    /// `Peer` scope, downloads: transfers per second for each client address.
    pub peer_scope_per_client: f64,
    /// `None` scope (re-binding over TIME_WAIT): only live leases count, `N / h`.
    pub no_quarantine: f64,
}

/// The probe's findings.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    /// The server, without password.
    pub target: String,
    /// Passive offers received in phases 1 and 2.
    pub offers: usize,
    /// Distinct ports among them.
    pub ports_seen: usize,
    /// Lowest port offered.
    pub min_port: Option<u16>,
    /// Highest port offered.
    pub max_port: Option<u16>,
    /// `max_port - min_port + 1`.
    pub range_size: Option<u64>,
    /// `sequential` (each offer the previous + 1, wrapping), `round-robin` (the same cycle
    /// in another order), `same-port`, `random`, or `unknown` (fewer than 4 offers).
    pub pattern: String,
    /// `true` when the server offered a port again less than T after it had closed a
    /// transfer on it (TIME_WAIT does not block it); `false` when it refused a transfer (4xx)
    /// before any closed port came back; `null` when the transfers did not tell (give
    /// `transfers` above the range size).
    pub reuses_closed_ports: Option<bool>,
    /// Shortest time between a server-side close on a port and the next offer of it, ms.
    pub min_reuse_after_ms: Option<f64>,
    /// Listings completed in phase 2.
    pub transfers: usize,
    /// `425` (refuses), `port-outside-range`, `session-killed`, `login-refused`, a
    /// combination joined by `+`, or `not-reached` when the push did not exhaust the range.
    pub on_exhaustion: String,
    /// The details.
    pub exhaustion: Exhaustion,
    /// Capacity estimates, when a range and a hold time were observed.
    pub capacity: Option<CapacityEstimate>,
    /// Whether the server refused EPSV (in `auto` mode).
    pub epsv_refused: bool,
    /// FTPS: offered, and whether session reuse is required.
    pub tls: TlsFindings,
}

/// Runs the probe.
pub async fn run(config: &ProbeConfig) -> Result<ProbeReport, ClientError> {
    let client_config = ClientConfig {
        tls: config.tls.clone(),
        ..ClientConfig::measuring(config.data_mode, config.timeout)
    };
    let mut exhaustion = Exhaustion::default();
    let mut client = Client::open(&config.url, client_config.clone()).await?;

    // Phase 0: TLS.
    let mut tls = probe_tls(&mut client, &config.url).await;
    if config.tls.as_ref().map(ClientTls::mode) != Some(super::TlsMode::Implicit) {
        tls.auth_tls_accepted = auth_tls_accepted(config).await;
    }
    // A server may end the session after refusing a data connection (vsftpd does after its
    // 522): the phases below start on a live one.
    if tls.control_encrypted
        && (client.is_broken()
            || !matches!(
                tokio::time::timeout(config.timeout, client.noop()).await,
                Ok(Ok(()))
            ))
    {
        client = Client::open(&config.url, client_config.clone()).await?;
    }

    // Phase 1: offers without connecting.
    let mut offers: Vec<u16> = Vec::with_capacity(config.count);
    for _ in 0..config.count {
        match client.request_passive().await {
            Ok(addr) => offers.push(addr.port()),
            Err(e) => {
                // A server that cannot do passive mode at all has nothing to probe.
                if client.is_broken() || (offers.is_empty() && e.is_permanent()) {
                    return Err(e);
                }
                note_failure(&mut exhaustion, &e);
                break;
            }
        }
    }

    // Phase 2: transfers the server closes; when did it offer a just-closed port again?
    let mut closed_at: HashMap<u16, tokio::time::Instant> = HashMap::new();
    let mut min_reuse: Option<Duration> = None;
    let mut hold_total = Duration::ZERO;
    let mut transfers = 0usize;
    let mut refused_in_transfers = false;
    let mut transfer_ports = Vec::new();
    let dir = config.url.path().to_vec();
    for _ in 0..config.transfers {
        let t0 = clock::now();
        let result = list_once(&mut client, &dir).await;
        let now = clock::now();
        let port = client.take_last_data_addr().map(|a| a.port());
        if let Some(port) = port {
            if let Some(&closed) = closed_at.get(&port) {
                let gap = t0.saturating_duration_since(closed);
                min_reuse = Some(min_reuse.map_or(gap, |m| m.min(gap)));
            }
            transfer_ports.push(port);
        }
        match result {
            Ok(()) => {
                transfers += 1;
                hold_total += now.saturating_duration_since(t0);
                if let Some(port) = port {
                    closed_at.insert(port, now);
                }
            }
            Err(e) => {
                note_failure(&mut exhaustion, &e);
                refused_in_transfers = e.is_transient();
                if client.is_broken() {
                    exhaustion.sessions_killed += 1;
                }
                break;
            }
        }
    }
    let epsv_refused = client.epsv_refused();
    if !client.is_broken() {
        let _ = tokio::time::timeout(config.timeout, client.quit()).await;
    }

    let all: Vec<u16> = offers.iter().chain(&transfer_ports).copied().collect();
    let distinct: BTreeSet<u16> = all.iter().copied().collect();
    let min_port = distinct.first().copied();
    let max_port = distinct.last().copied();
    let range = min_port.zip(max_port);

    // Phase 3: hold listeners until the server runs out.
    if config.push_sessions > 0 {
        push(config, &client_config, range, &mut exhaustion).await;
    }

    let time_wait = config.time_wait;
    // Seen again within T: TIME_WAIT does not block the server. Refused before any port came
    // back: it does. Neither (fewer transfers than ports, say): unknown.
    let reuses_closed_ports = match min_reuse {
        Some(gap) if gap < time_wait => Some(true),
        _ if refused_in_transfers => Some(false),
        _ => None,
    };
    let capacity = match (range, transfers) {
        (Some((lo, hi)), n) if n > 0 => {
            let ports = u64::from(hi - lo) + 1;
            let hold = hold_total.as_secs_f64() / n as f64;
            let t = time_wait.as_secs_f64();
            Some(CapacityEstimate {
                ports,
                hold_s: hold,
                time_wait_s: t,
                port_scope: capacity::rate_max(ports, hold, 1.0, t),
                peer_scope_per_client: capacity::rate_max(ports, hold, 1.0, t),
                no_quarantine: capacity::rate_max(ports, hold, 0.0, t),
            })
        }
        _ => None,
    };
    Ok(ProbeReport {
        target: config.url.to_string(),
        offers: all.len(),
        ports_seen: distinct.len(),
        min_port,
        max_port,
        range_size: range.map(|(lo, hi)| u64::from(hi - lo) + 1),
        pattern: classify(&offers).to_owned(),
        reuses_closed_ports,
        min_reuse_after_ms: min_reuse.map(|d| d.as_secs_f64() * 1000.0),
        transfers,
        on_exhaustion: exhaustion_summary(&exhaustion),
        exhaustion,
        capacity,
        epsv_refused,
        tls,
    })
}

/// Whether the server answers `AUTH TLS` with 234 on a new plaintext connection (closed right
/// after, before any handshake).
async fn auth_tls_accepted(config: &ProbeConfig) -> Option<bool> {
    let plain = ClientConfig::measuring(config.data_mode, config.timeout);
    let mut client = Client::connect(config.url.host(), config.url.port(), plain)
        .await
        .ok()?;
    let auth = pasv_protocol::Argument::new(b"TLS".to_vec()).ok()?;
    let reply = client.command(&Command::Auth(auth)).await.ok()?;
    Some(reply.code().get() == 234)
}

/// FEAT, and over FTPS a listing with and one without TLS session resumption.
async fn probe_tls(client: &mut Client, url: &FtpUrl) -> TlsFindings {
    let mut findings = TlsFindings {
        control_encrypted: client.is_tls(),
        ..TlsFindings::default()
    };
    if let Ok(reply) = client.command(&Command::Feat).await {
        if reply.code().get() == 211 {
            let features: Vec<String> = reply
                .lines()
                .iter()
                .map(|l| l.to_string_lossy().trim().to_ascii_uppercase())
                .collect();
            let has = |f: &str| {
                features
                    .iter()
                    .any(|l| l.split_whitespace().next() == Some(f))
            };
            findings.auth_tls_advertised = Some(features.iter().any(|l| {
                let mut words = l.split_whitespace();
                words.next() == Some("AUTH")
                    && words.any(|w| w.split(';').any(|m| m == "TLS" || m == "SSL"))
            }));
            findings.prot_advertised = Some(has("PBSZ") && has("PROT"));
        } else {
            findings.auth_tls_advertised = Some(false);
        }
    }
    if !client.is_tls() {
        return findings;
    }
    let dir = url.path().to_vec();
    findings.resumed_data_served = Some(list_once(client, &dir).await.is_ok());
    if client.is_broken() {
        return findings;
    }
    client.set_data_resumption(false);
    let fresh = list_once(client, &dir).await;
    client.set_data_resumption(true);
    match fresh {
        Ok(()) => findings.requires_session_reuse = Some(false),
        // Refused after the handshake (the connection closed, or a 4xx/5xx reply): the
        // server wants resumption. Only meaningful when the resumed one was served.
        Err(e) if findings.resumed_data_served == Some(true) => {
            findings.requires_session_reuse = Some(true);
            findings.refusal = Some(e.to_string());
            if !client.is_broken() {
                client.check_connection();
            }
        }
        Err(e) => findings.refusal = Some(e.to_string()),
    }
    findings
}

async fn list_once(client: &mut Client, dir: &[u8]) -> Result<(), ClientError> {
    let path = (!dir.is_empty()).then_some(dir);
    let mut download = client.list_stream(ListCommand::List, path).await?;
    tokio::io::copy(&mut download, &mut tokio::io::sink()).await?;
    download.finish().await.map(drop)
}

async fn push(
    config: &ProbeConfig,
    client_config: &ClientConfig,
    range: Option<(u16, u16)>,
    exhaustion: &mut Exhaustion,
) {
    // Enough sessions to exhaust the observed range, with a margin, within the bound.
    let wanted = match range {
        Some((lo, hi)) => (usize::from(hi - lo) + 1 + 4).min(config.push_sessions),
        None => config.push_sessions,
    };
    let mut held = Vec::with_capacity(wanted);
    let mut failures_in_a_row = 0;
    for _ in 0..wanted {
        let mut client = match Client::open(&config.url, client_config.clone()).await {
            Ok(c) => c,
            Err(e) => {
                exhaustion.logins_refused += 1;
                note_failure(exhaustion, &e);
                failures_in_a_row += 1;
                if failures_in_a_row >= 3 {
                    break;
                }
                continue;
            }
        };
        exhaustion.sessions_opened += 1;
        match client.request_passive().await {
            Ok(addr) => {
                let port = addr.port();
                let inside = match range {
                    Some((lo, hi)) => (lo..=hi).contains(&port),
                    None => true,
                };
                if inside {
                    exhaustion.offers_in_range += 1;
                    failures_in_a_row = 0;
                } else {
                    exhaustion.offers_outside_range += 1;
                    exhaustion.outside_ports.push(port);
                    failures_in_a_row += 1;
                }
                held.push(client);
            }
            Err(e) => {
                note_failure(exhaustion, &e);
                // vsftpd answers "500 OOPS" and then closes: only the next command tells.
                let alive = client.check_connection()
                    && matches!(
                        tokio::time::timeout(config.timeout, client.noop()).await,
                        Ok(Ok(()))
                    );
                if alive {
                    held.push(client);
                } else {
                    exhaustion.sessions_killed += 1;
                }
                failures_in_a_row += 1;
            }
        }
        // Three failures in a row show the behaviour; more only load the server.
        if failures_in_a_row >= 3 {
            break;
        }
    }
    for client in held {
        let _ = tokio::time::timeout(config.timeout, client.quit()).await;
    }
}

fn note_failure(exhaustion: &mut Exhaustion, e: &ClientError) {
    if e.code().map(|c| c.get()) == Some(425) {
        exhaustion.refusals_425 += 1;
        if exhaustion.retry_after_s.is_none() {
            exhaustion.retry_after_s = e.retry_after().map(|d| d.as_secs_f64());
        }
    }
    let text = match e.reply() {
        Some(reply) => format!(
            "{} {}",
            reply.code().get(),
            reply.text().lines().next().unwrap_or("")
        ),
        None => e.to_string(),
    };
    *exhaustion
        .texts
        .entry(text.chars().take(100).collect())
        .or_default() += 1;
}

fn exhaustion_summary(x: &Exhaustion) -> String {
    let mut parts = Vec::new();
    if x.refusals_425 > 0 {
        parts.push("425");
    }
    if x.offers_outside_range > 0 {
        parts.push("port-outside-range");
    }
    if x.sessions_killed > 0 {
        parts.push("session-killed");
    }
    if x.logins_refused > 0 {
        parts.push("login-refused");
    }
    if parts.is_empty() {
        "not-reached".into()
    } else {
        parts.join("+")
    }
}

/// Classifies a sequence of offered ports (see [`ProbeReport::pattern`]).
pub fn classify(ports: &[u16]) -> &'static str {
    if ports.len() < 4 {
        return "unknown";
    }
    let steps = ports.len() - 1;
    let most = |n: usize| n * 5 >= steps * 4;
    if ports.iter().all(|&p| p == ports[0]) {
        return "same-port";
    }
    let lo = ports.iter().copied().min().unwrap_or(0);
    let hi = ports.iter().copied().max().unwrap_or(0);
    let ascending = ports
        .windows(2)
        .filter(|w| w[1] == w[0].wrapping_add(1) || (w[0] == hi && w[1] == lo))
        .count();
    let descending = ports
        .windows(2)
        .filter(|w| w[1] == w[0].wrapping_sub(1) || (w[0] == lo && w[1] == hi))
        .count();
    if most(ascending) || most(descending) {
        return "sequential";
    }
    let period = ports.iter().collect::<BTreeSet<_>>().len();
    if period < ports.len() {
        let repeats = ports.len() - period;
        let same = (period..ports.len())
            .filter(|&i| ports[i] == ports[i - period])
            .count();
        if same * 5 >= repeats * 4 {
            return "round-robin";
        }
    }
    "random"
}

impl fmt::Display for ProbeReport {
    /// The human summary `pasv probe` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "target              {}", self.target)?;
        let t = &self.tls;
        let yes_no = |b: Option<bool>| match b {
            Some(true) => "yes",
            Some(false) => "no",
            None => "unknown",
        };
        writeln!(
            f,
            "TLS offered         AUTH TLS accepted: {}; FEAT lists AUTH TLS: {}, PBSZ/PROT: {}{}",
            yes_no(t.auth_tls_accepted),
            yes_no(t.auth_tls_advertised),
            yes_no(t.prot_advertised),
            if t.control_encrypted {
                "; this probe's control connection is encrypted"
            } else {
                ""
            }
        )?;
        if t.control_encrypted {
            writeln!(
                f,
                "TLS session reuse   {}; resumed data connection served: {}{}",
                match t.requires_session_reuse {
                    Some(true) => "required (a data connection without resumption was refused)",
                    Some(false) => "not required (a data connection without resumption was served)",
                    None => "unknown",
                },
                yes_no(t.resumed_data_served),
                t.refusal
                    .as_deref()
                    .map(|r| format!(" [{r}]"))
                    .unwrap_or_default()
            )?;
        }
        match (self.min_port, self.max_port, self.range_size) {
            (Some(lo), Some(hi), Some(n)) => writeln!(
                f,
                "passive range       {lo}-{hi} ({n} ports; {} distinct in {} offers)",
                self.ports_seen, self.offers
            )?,
            _ => writeln!(f, "passive range       no offer received")?,
        }
        writeln!(f, "allocation          {}", self.pattern)?;
        match self.reuses_closed_ports {
            Some(true) => writeln!(
                f,
                "TIME_WAIT           does not block: a server-closed port came back after {:.1} ms",
                self.min_reuse_after_ms.unwrap_or(0.0)
            )?,
            Some(false) => writeln!(
                f,
                "TIME_WAIT           no port offered again within T after a server-side close ({} transfers)",
                self.transfers
            )?,
            None => writeln!(f, "TIME_WAIT           unknown (no transfer completed)")?,
        }
        let x = &self.exhaustion;
        writeln!(
            f,
            "when pushed         {} ({} sessions: {} offers in range, {} outside, {} × 425, {} killed, {} logins refused)",
            self.on_exhaustion,
            x.sessions_opened,
            x.offers_in_range,
            x.offers_outside_range,
            x.refusals_425,
            x.sessions_killed,
            x.logins_refused
        )?;
        if let Some(s) = x.retry_after_s {
            writeln!(f, "retry hint          {s} s")?;
        }
        for (text, n) in &x.texts {
            writeln!(f, "  {n:>5} × {text}")?;
        }
        if let Some(c) = &self.capacity {
            writeln!(
                f,
                "capacity            h = {:.2} ms, T = {} s, N = {}",
                c.hold_s * 1000.0,
                c.time_wait_s,
                c.ports
            )?;
            writeln!(f, "  port scope        {:.2} downloads/s", c.port_scope)?;
            writeln!(
                f,
                "  peer scope        {:.2} downloads/s per client address",
                c.peer_scope_per_client
            )?;
            writeln!(f, "  no quarantine     {:.0} transfers/s", c.no_quarantine)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_patterns() {
        assert_eq!(classify(&[1, 2, 3]), "unknown");
        assert_eq!(classify(&[5, 5, 5, 5, 5]), "same-port");
        assert_eq!(
            classify(&[10, 11, 12, 13, 10, 11, 12, 13, 10]),
            "sequential"
        );
        assert_eq!(classify(&[13, 12, 11, 10, 13, 12]), "sequential");
        assert_eq!(
            classify(&[10, 13, 11, 12, 10, 13, 11, 12, 10, 13]),
            "round-robin"
        );
        assert_eq!(
            classify(&[10, 13, 13, 11, 10, 12, 12, 13, 11, 10, 10]),
            "random"
        );
    }
}
