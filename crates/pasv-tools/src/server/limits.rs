//! The open-file limit (`RLIMIT_NOFILE`) against what the configuration needs.
//!
//! Every session holds its control connection and, while it transfers, a data connection and
//! an open file; in prebound mode a client address holding a lease on a port also holds a
//! duplicate of that port's listener (registered for readiness once per address), and every
//! passive port is bound at start. A shell's soft limit (1024 on most distributions) runs out
//! at about 250 sessions; the hard limit is usually far higher (systemd: 524288). So at start
//! the soft limit is raised to what `max_clients` needs, as far as the hard limit allows,
//! with a log line either way; with no session limit it is raised to the hard limit.

use rustix::process::{getrlimit, setrlimit, Resource};

use super::config::{Config, ListenerMode};

/// Descriptors one session may hold at once: control, data, file, and a listener duplicate.
pub(crate) const PER_SESSION: u64 = 4;
/// Descriptors besides the sessions': the control listener, the log, the runtime's epoll and
/// eventfd, the root directory, the metrics listener, the transfer log.
const BASE: u64 = 64;

/// Descriptors `config` may need at its limits; `None` when `max_clients` is unlimited.
pub(crate) fn needed(config: &Config) -> Option<u64> {
    if config.max_clients == 0 {
        return None;
    }
    let addresses = config.pasv_address.len().max(1) as u64;
    let ports = u64::from(config.pasv_max_port.saturating_sub(config.pasv_min_port)) + 1;
    let prebound = match config.listener_mode {
        ListenerMode::Prebound => ports * addresses,
        ListenerMode::PerLease => 0,
    };
    Some(config.max_clients as u64 * PER_SESSION + prebound + BASE)
}

/// What to do with a soft limit `soft` (`None`: unlimited) under the hard limit `hard` when
/// `needed` descriptors may be used (`None`: as many as possible).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// The soft limit is enough.
    Keep,
    /// Raise the soft limit to this (`None`: unlimited), which covers the need.
    Raise(Option<u64>),
    /// Raise the soft limit to the hard one, which is still short of the need.
    Short { hard: u64 },
}

/// The pure part of [`ensure`], for tests.
pub(crate) fn decide(soft: Option<u64>, hard: Option<u64>, needed: Option<u64>) -> Decision {
    let covers = |limit: Option<u64>| match (limit, needed) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(l), Some(n)) => l >= n,
    };
    if covers(soft) || soft == hard {
        return match (soft, needed) {
            (Some(s), Some(n)) if s < n => Decision::Short { hard: s },
            _ => Decision::Keep,
        };
    }
    match (hard, needed) {
        (Some(h), Some(n)) if h < n => Decision::Short { hard: h },
        (_, Some(n)) => Decision::Raise(Some(n)),
        (h, None) => Decision::Raise(h),
    }
}

/// Raises the soft open-file limit to what `config` needs (to the hard limit at most) and
/// logs what it did; warns when the hard limit is short of the need.
pub(crate) fn ensure(config: &Config) {
    let limit = getrlimit(Resource::Nofile);
    let need = needed(config);
    let show = |v: Option<u64>| v.map_or("unlimited".to_owned(), |v| v.to_string());
    let short = |hard: u64| {
        let sessions = hard.saturating_sub(BASE) / PER_SESSION;
        tracing::warn!(
            max_clients = config.max_clients,
            needed = show(need),
            hard_limit = hard,
            "the open-file limit (RLIMIT_NOFILE) is short of what max_clients needs: about \
             {sessions} sessions fit; raise the hard limit (LimitNOFILE=, ulimit -Hn) or \
             lower max_clients"
        );
    };
    match decide(limit.current, limit.maximum, need) {
        Decision::Keep => {}
        Decision::Raise(to) => {
            let raised = rustix::process::Rlimit {
                current: to,
                maximum: limit.maximum,
            };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => tracing::info!(
                    from = show(limit.current),
                    to = show(to),
                    max_clients = config.max_clients,
                    "raised the open-file limit (RLIMIT_NOFILE) to what max_clients needs"
                ),
                Err(e) => tracing::warn!(
                    error = %e,
                    from = show(limit.current),
                    to = show(to),
                    "could not raise the open-file limit (RLIMIT_NOFILE)"
                ),
            }
        }
        Decision::Short { hard } => {
            if limit.current != Some(hard) {
                let raised = rustix::process::Rlimit {
                    current: Some(hard),
                    maximum: limit.maximum,
                };
                if setrlimit(Resource::Nofile, raised).is_ok() {
                    tracing::info!(
                        from = show(limit.current),
                        to = hard,
                        "raised the open-file limit (RLIMIT_NOFILE) to the hard limit"
                    );
                }
            }
            short(hard);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_raised_as_far_as_the_need_and_the_hard_limit_allow() {
        // A shell's 1024 under systemd's 524288, 2000 sessions: raised to the need.
        assert_eq!(
            decide(Some(1024), Some(524_288), Some(8084)),
            Decision::Raise(Some(8084))
        );
        // Already enough: kept.
        assert_eq!(decide(Some(65536), Some(65536), Some(8084)), Decision::Keep);
        assert_eq!(decide(None, None, Some(8084)), Decision::Keep);
        // The hard limit is short: raised to it, and said.
        assert_eq!(
            decide(Some(1024), Some(4096), Some(8084)),
            Decision::Short { hard: 4096 }
        );
        assert_eq!(
            decide(Some(4096), Some(4096), Some(8084)),
            Decision::Short { hard: 4096 }
        );
        // No session limit: as far as the hard limit goes.
        assert_eq!(
            decide(Some(1024), Some(524_288), None),
            Decision::Raise(Some(524_288))
        );
        assert_eq!(decide(Some(1024), None, None), Decision::Raise(None));
        assert_eq!(decide(Some(4096), Some(4096), None), Decision::Keep);
    }

    #[test]
    fn the_default_configuration_needs_four_descriptors_a_session_and_its_ports() {
        let config = Config::default();
        assert_eq!(config.listener_mode, ListenerMode::Prebound);
        assert_eq!(
            needed(&config),
            Some(config.max_clients as u64 * PER_SESSION + 20 + BASE)
        );
        let unlimited = Config {
            max_clients: 0,
            ..Config::default()
        };
        assert_eq!(needed(&unlimited), None);
    }
}
