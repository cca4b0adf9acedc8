//! `pasv doctor`: run on the server's host, reads the kernel's TCP tables for a passive
//! range and the host's limits, and warns where they will run out at the observed close
//! rate. The server's own view (its ledger against the same tables) comes from `SITE POOL`
//! or its metrics endpoint; see the binary.
//!
//! The close rate is read off the tables themselves: a TIME_WAIT socket lives `T` (60 s on
//! Linux), so `n` of them mean about `n / T` closes per second over the last `T`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;

use crate::server::kernel::{self, Bound, TimeWait};

/// Share of a limit past which the doctor warns.
pub const WARN_SHARE: f64 = 0.8;

/// The host's limits that TIME_WAIT and outgoing connections run into (Linux sysctls).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HostLimits {
    /// `net.ipv4.tcp_max_tw_buckets`: TIME_WAIT sockets the host keeps at most (beyond,
    /// it closes them at once and logs "time wait bucket table overflow").
    pub tw_buckets: Option<u64>,
    /// `net.ipv4.ip_local_port_range`: the ports outgoing connections take.
    pub ephemeral: Option<(u16, u16)>,
}

impl HostLimits {
    /// Reads both from `/proc/sys`; what cannot be read is `None`.
    pub fn read() -> HostLimits {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        HostLimits {
            tw_buckets: read("/proc/sys/net/ipv4/tcp_max_tw_buckets")
                .and_then(|s| s.trim().parse().ok()),
            ephemeral: read("/proc/sys/net/ipv4/ip_local_port_range").and_then(|s| {
                let mut it = s.split_whitespace().map(|x| x.parse().ok());
                Some((it.next()??, it.next()??))
            }),
        }
    }
}

/// What the doctor looks at.
#[derive(Clone, Debug)]
pub struct DoctorInput {
    /// The passive range, inclusive.
    pub ports: (u16, u16),
    /// The passive address (a wildcard: every address).
    pub address: IpAddr,
    /// The kernel's TIME_WAIT sockets (the whole host).
    pub time_wait: Vec<TimeWait>,
    /// The kernel's other sockets that hold a port (the whole host).
    pub bound: Vec<Bound>,
    /// The host's limits.
    pub limits: HostLimits,
    /// The kernel's TIME_WAIT length (60 s on Linux).
    pub time_wait_length: Duration,
}

/// One passive port on which the kernel holds something.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PortRow {
    /// TIME_WAIT sockets on it.
    pub time_wait: usize,
    /// The longest remaining TIME_WAIT, seconds.
    pub longest_s: f64,
    /// Other sockets on it (a listener, a connection: pasvd's own or another program's).
    pub sockets: usize,
}

/// The doctor's findings.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DoctorReport {
    /// The passive range.
    pub ports: (u16, u16),
    /// Ports of the range on which the kernel holds something.
    pub held: BTreeMap<u16, PortRow>,
    /// TIME_WAIT sockets on the passive ports.
    pub passive_time_wait: usize,
    /// TIME_WAIT sockets on the whole host.
    pub host_time_wait: usize,
    /// TIME_WAIT sockets whose local port is in the ephemeral range (outgoing connections
    /// this host closed first).
    pub ephemeral_time_wait: usize,
    /// Passive closes per second over the last TIME_WAIT length (server-side closes).
    pub passive_close_rate: f64,
    /// Closes per second the host's TIME_WAIT table shows.
    pub host_close_rate: f64,
    /// The fastest passive close rate the range sustains without `SO_REUSEADDR` or with a
    /// port-wide quarantine: ports / T.
    pub passive_rate_max: f64,
    /// The host's limits.
    pub limits: HostLimits,
    /// What will run out, or is wrong, in plain words.
    pub warnings: Vec<String>,
}

/// Examines the tables against the range and the limits (no I/O).
pub fn examine(input: &DoctorInput) -> DoctorReport {
    let (lo, hi) = input.ports;
    let n = f64::from(hi - lo) + 1.0;
    let t = input.time_wait_length.as_secs_f64().max(1e-9);
    let mut held: BTreeMap<u16, PortRow> = BTreeMap::new();
    for (port, tw) in kernel::on_ports(&input.time_wait, input.address, input.ports) {
        let row = held.entry(port).or_default();
        row.time_wait = input
            .time_wait
            .iter()
            .filter(|w| w.local.port() == port && same_or_wild(w.local.ip(), input.address))
            .count();
        row.longest_s = tw.longest.as_secs_f64();
    }
    for b in &input.bound {
        let port = b.local.port();
        if (lo..=hi).contains(&port) && same_or_wild(b.local.ip(), input.address) {
            held.entry(port).or_default().sockets += 1;
        }
    }
    let passive_time_wait = held.values().map(|r| r.time_wait).sum();
    let host_time_wait = input.time_wait.len();
    let ephemeral_time_wait = input.limits.ephemeral.map_or(0, |(a, b)| {
        input
            .time_wait
            .iter()
            .filter(|w| (a..=b).contains(&w.local.port()))
            .count()
    });
    let mut report = DoctorReport {
        ports: input.ports,
        passive_time_wait,
        host_time_wait,
        ephemeral_time_wait,
        passive_close_rate: passive_time_wait as f64 / t,
        host_close_rate: host_time_wait as f64 / t,
        passive_rate_max: n / t,
        limits: input.limits,
        held,
        warnings: Vec::new(),
    };
    let ports_in_tw = report.held.values().filter(|r| r.time_wait > 0).count();
    if ports_in_tw as f64 >= WARN_SHARE * n {
        report.warnings.push(format!(
            "{ports_in_tw} of the {n} passive ports are in TIME_WAIT: at the observed {:.2} \
             server-side closes/s the range is near its {:.2}/s (ports / {t} s); without \
             SO_REUSEADDR or with quarantine port, widen the range",
            report.passive_close_rate, report.passive_rate_max
        ));
    }
    if let Some(max) = input.limits.tw_buckets {
        if host_time_wait as f64 >= WARN_SHARE * max as f64 {
            report.warnings.push(format!(
                "net.ipv4.tcp_max_tw_buckets = {max} and the host holds {host_time_wait} \
                 TIME_WAIT sockets ({:.1} closes/s): past the limit the kernel drops TIME_WAIT \
                 at once (old segments may reach new connections); raise it above {:.0}",
                report.host_close_rate,
                report.host_close_rate * t / WARN_SHARE
            ));
        }
    }
    if let Some((a, b)) = input.limits.ephemeral {
        if a <= hi && lo <= b {
            report.warnings.push(format!(
                "net.ipv4.ip_local_port_range {a}-{b} overlaps the passive range {lo}-{hi}: \
                 outgoing connections can take passive ports; move one of the two"
            ));
        }
        let size = f64::from(b.saturating_sub(a)) + 1.0;
        if ephemeral_time_wait as f64 >= WARN_SHARE * size {
            report.warnings.push(format!(
                "{ephemeral_time_wait} TIME_WAIT sockets on ephemeral ports of \
                 net.ipv4.ip_local_port_range {a}-{b} ({size} ports): outgoing connections \
                 to one destination run out at {:.1}/s; widen the range",
                size / t
            ));
        }
    }
    report
}

fn same_or_wild(a: IpAddr, b: IpAddr) -> bool {
    let (a, b) = (a.to_canonical(), b.to_canonical());
    a == b || a.is_unspecified() || b.is_unspecified()
}

/// Reads the kernel's tables and the host's limits now.
pub fn read_host(
    ports: (u16, u16),
    address: IpAddr,
    time_wait_length: Duration,
) -> std::io::Result<DoctorInput> {
    // Every TIME_WAIT socket on the host (the doctor counts them against
    // tcp_max_tw_buckets and the ephemeral range), the bound ones on the passive ports.
    let time_wait = kernel::time_wait_sockets_in(None, kernel::Reader::Auto)?;
    let bound = kernel::bound_sockets_in(Some(ports), kernel::Reader::Auto)?;
    Ok(DoctorInput {
        ports,
        address,
        time_wait,
        bound,
        limits: HostLimits::read(),
        time_wait_length,
    })
}

/// The two disagreement counts (`offered_while_held`, `withheld_while_free`) in a
/// `SITE POOL` reply's text, or in a Prometheus exposition of pasvd's metrics.
pub fn parse_disagreements(text: &str) -> Option<(u64, u64)> {
    if let Some(line) = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Disagreements: "))
    {
        let mut n = line
            .split(',')
            .map(|part| part.split_whitespace().next()?.parse().ok());
        return Some((n.next()??, n.next()??));
    }
    let sample = |kind: &str| -> Option<u64> {
        let key = format!("pasvd_ledger_disagreements{{kind=\"{kind}\"}} ");
        let value: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix(&key))?
            .trim()
            .parse()
            .ok()?;
        Some(value as u64)
    };
    Some((
        sample("offered_while_held")?,
        sample("withheld_while_free")?,
    ))
}

impl fmt::Display for DoctorReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (lo, hi) = self.ports;
        writeln!(f, "passive range {lo}-{hi}:")?;
        writeln!(
            f,
            "  {} TIME_WAIT sockets on {} ports ({:.2} server-side closes/s; the range \
             sustains {:.2}/s with a port-wide quarantine)",
            self.passive_time_wait,
            self.held.values().filter(|r| r.time_wait > 0).count(),
            self.passive_close_rate,
            self.passive_rate_max
        )?;
        for (port, row) in &self.held {
            writeln!(
                f,
                "  port {port}: {} TIME_WAIT (longest {:.1}s left), {} other sockets",
                row.time_wait, row.longest_s, row.sockets
            )?;
        }
        writeln!(
            f,
            "host: {} TIME_WAIT sockets ({:.1} closes/s), tcp_max_tw_buckets {}, \
             ip_local_port_range {} ({} TIME_WAIT on it)",
            self.host_time_wait,
            self.host_close_rate,
            self.limits
                .tw_buckets
                .map_or_else(|| "unknown".to_owned(), |m| m.to_string()),
            self.limits
                .ephemeral
                .map_or_else(|| "unknown".to_owned(), |(a, b)| format!("{a}-{b}")),
            self.ephemeral_time_wait
        )?;
        if self.warnings.is_empty() {
            writeln!(f, "no warnings")?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tw(local: &str, remote: &str, secs: u64) -> TimeWait {
        TimeWait {
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            remaining: Duration::from_secs(secs),
        }
    }

    fn input(time_wait: Vec<TimeWait>, limits: HostLimits) -> DoctorInput {
        DoctorInput {
            ports: (30_000, 30_009),
            address: "127.0.0.1".parse().unwrap(),
            time_wait,
            bound: vec![Bound {
                local: "0.0.0.0:30001".parse().unwrap(),
                state: 0x0A,
                inode: 7,
            }],
            limits,
            time_wait_length: Duration::from_secs(60),
        }
    }

    #[test]
    fn a_quiet_host_has_no_warnings() {
        let limits = HostLimits {
            tw_buckets: Some(262_144),
            ephemeral: Some((32_768, 60_999)),
        };
        let r = examine(&input(
            vec![tw("127.0.0.1:30002", "127.0.0.1:40000", 50)],
            limits,
        ));
        assert!(r.warnings.is_empty(), "{r}");
        assert_eq!(r.passive_time_wait, 1);
        assert_eq!(r.held.len(), 2);
        assert_eq!(r.held[&30_001].sockets, 1);
        assert_eq!(r.held[&30_002].longest_s, 50.0);
        assert!((r.passive_rate_max - 10.0 / 60.0).abs() < 1e-12);
    }

    #[test]
    fn each_limit_near_its_end_is_named() {
        let mut table: Vec<TimeWait> = (0..9)
            .map(|k| tw(&format!("127.0.0.1:{}", 30_000 + k), "127.0.0.2:40000", 30))
            .collect();
        table.extend((0..10).map(|k| tw(&format!("127.0.0.1:{}", 20_000 + k), "127.0.0.3:21", 30)));
        let limits = HostLimits {
            tw_buckets: Some(20),
            ephemeral: Some((20_000, 30_000)),
        };
        let r = examine(&input(table.clone(), limits));
        let all = r.warnings.join("\n");
        assert_eq!(r.warnings.len(), 3, "{all}");
        assert!(all.contains("9 of the 10 passive ports"), "{all}");
        assert!(all.contains("tcp_max_tw_buckets = 20"), "{all}");
        assert!(all.contains("overlaps the passive range"), "{all}");
        // Ephemeral ports all but used: a 12-port range with 10 of them in TIME_WAIT.
        let small = HostLimits {
            tw_buckets: None,
            ephemeral: Some((20_000, 20_011)),
        };
        let r = examine(&input(table, small));
        assert!(
            r.warnings
                .iter()
                .any(|w| w.contains("outgoing connections to one destination")),
            "{r}"
        );
    }

    #[test]
    fn disagreements_parse_from_site_pool_and_from_metrics() {
        let site = "200-Pool: 3 free\n Disagreements: 2 offered_while_held, 0 withheld_while_free.\n200 End";
        assert_eq!(parse_disagreements(site), Some((2, 0)));
        let metrics = "# HELP x\npasvd_ledger_disagreements{kind=\"offered_while_held\"} 0\n\
                       pasvd_ledger_disagreements{kind=\"withheld_while_free\"} 4\n";
        assert_eq!(parse_disagreements(metrics), Some((0, 4)));
        assert_eq!(parse_disagreements("nothing"), None);
    }
}
