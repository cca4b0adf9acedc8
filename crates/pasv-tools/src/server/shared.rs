//! The state every session shares: configuration, the served root, the passive ports, the
//! accounts and the login defences, the transfer log, the shutdown signal, the counters.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::busy_poll::BusyPoll;
use super::config::Config;
use super::core::Rules;
use super::defender::Defender;
use super::metrics::Counters;
use super::passive::PassivePorts;
use super::stats::ServerStats;
use super::tls::TlsServer;
use super::users::Users;
use super::vfs::Vfs;
use super::xferlog::Xferlog;

/// State shared by all sessions.
pub(crate) struct Shared {
    /// The session rules taken from `config`.
    pub(crate) rules: Arc<Rules>,
    pub(crate) config: Config,
    /// The served root, for accounts without a root of their own.
    pub(crate) vfs: Vfs,
    pub(crate) ports: Arc<PassivePorts>,
    pub(crate) users: Arc<Users>,
    pub(crate) defender: Arc<Defender>,
    pub(crate) xferlog: Option<Xferlog>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) busy_poll: BusyPoll,
    pub(crate) stats: ServerStats,
    /// The counters behind the Prometheus metrics (kept whether or not they are served).
    pub(crate) metrics: Arc<Counters>,
    /// FTPS: the certificate and the policy, when a certificate is configured.
    pub(crate) tls: Option<TlsServer>,
}
