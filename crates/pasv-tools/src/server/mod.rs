//! `pasvd`, an FTP server whose passive data connections come from [`pasv_pool`].
//!
//! Every PASV/EPSV leases one (address, port) from a shared [`pasv_pool::Pool`], listens for
//! exactly one connection from the control connection's peer, and reports the close to the
//! pool with who closed first, so the pool knows where TIME_WAIT landed. When the range is
//! exhausted a session waits a bounded time for the next port (woken by a release it can use)
//! and otherwise answers `425 ... (retry after Ns)`; it never advertises a port outside the range
//! and never ends a session for lack of ports.
//!
//! ```no_run
//! # async fn demo() -> Result<(), pasv_tools::server::ServerError> {
//! use pasv_tools::server::{Config, Server};
//!
//! let mut config = Config::for_tests("/srv/ftp".into());
//! config.pasv_min_port = 30000;
//! config.pasv_max_port = 30019;
//! let server = Server::bind(config).await?;
//! println!("listening on {}", server.local_addr());
//! server.run_until(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Behaviour worth knowing
//!
//! * **Passive.** One endpoint per session: a new PASV/EPSV releases the previous lease. The
//!   listener accepts one connection from the control connection's peer address (others are
//!   reset and the wait goes on) and closes; after `accept_timeout` the port goes back as
//!   [`pasv_pool::Closer::NeverConnected`]. Downloads end with our FIN
//!   ([`pasv_pool::Closer::Server`]), uploads with the client's ([`pasv_pool::Closer::Client`]),
//!   aborts and errors with a RST ([`pasv_pool::Closer::Reset`]).
//! * **Listener modes** ([`ListenerMode`]): a listener per lease (default), or every port bound
//!   once at start and shared, connections routed by peer address (the pool then leases per
//!   port and peer). With SO_REUSEADDR (the default; never SO_REUSEPORT) Linux lets a port be
//!   bound again over its TIME_WAIT sockets, so the default quarantine scope is `None`;
//!   `no_reuseaddr` restores the classic exhaustion, with scope `Port` to match.
//! * **IPv6.** EPSV leases on the control connection's local address (or another passive
//!   address of its family). PASV, whose 227 reply can only carry IPv4, answers
//!   `502 ... use EPSV` when there is no IPv4 passive address (an IPv6 control connection to
//!   an IPv6-only server): permanent, so clients switch rather than retry. EPSV without a
//!   passive address of the control connection's family answers 522 (RFC 2428).
//! * **Exhaustion.** PASV/EPSV wait up to `pasv_wait` for a release (any session's) or for
//!   the pool's `retry_after`; then `425 ... (retry after Ns)`. Every 425 carries a hint.
//!   A release wakes one waiter, the oldest whose address filter admits the freed address
//!   (EPSV on IPv6 waits for an IPv6 port, PASV for an IPv4 one); one that still finds
//!   nothing hands the wake-up on to a waiter of another kind.
//! * **Files.** Paths are confined to the root (lexically, then symlinks checked); uploads go
//!   to a hidden temporary file in the target directory, are fsynced and renamed on success,
//!   and vanish on failure, ABOR or a vanished client (APPE and REST+STOR copy the kept part
//!   of the old file first, so the old file stays whole until the rename).
//! * **TYPE A** (the RFC 959 default until the client sends `TYPE I`). Downloads send each
//!   bare LF of the file as CRLF (a CRLF in the file stays one, a lone CR stays); uploads
//!   (STOR, APPE, STOU) store CRLF as LF and keep a lone CR. Listings are CRLF text in
//!   either type. REST offsets and SIZE count bytes of the stored file, as vsftpd's do, and
//!   so does the byte count in the 150 reply; a TYPE A download may put more bytes on the
//!   wire. TYPE A transfers skip the binary fast paths (inline send, `sendfile`).
//!   `ascii_transfers = false` (`--no-ascii`) makes every transfer binary whatever the TYPE,
//!   like vsftpd's default; the 150 reply then says BINARY.
//! * **Control loop.** Commands keep being read during a transfer: ABOR gives 426 then 226,
//!   STAT reports progress, QUIT waits for the transfer's reply; other commands queue.
//! * **Logins.** A session that has not logged in within `login_timeout` is closed with 421,
//!   whatever it sends. Every PASS for a name other than anonymous runs one argon2
//!   verification, against a dummy hash when the name is not an account, so a wrong name and
//!   a wrong password take the same time; at most one verification per core runs at once,
//!   the others queue in arrival order. Failed logins are counted per client address (an
//!   IPv6 /64): each holds its reply for `login_fail_delay`, doubled per earlier failure of
//!   the address; `max_login_failures` within `ban_window` ban the address for `ban_time`,
//!   its new connections answered `421` and closed before a session exists. Counters:
//!   [`Server::login_monitor`].
//!
//! The pieces: [`config`] (defaults, TOML file, flags), `passive` (pool, listeners, accept
//! rules), `session` (the control loop), `transfer` (the data copy and who closes), `ascii`
//! (TYPE A line ends), `vfs` (paths confined to the root), `listing` (LIST/NLST/MLSD),
//! `users` (argon2 accounts), `defender` (failed logins and bans), `xferlog`.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

mod ascii;
mod busy_poll;
pub mod config;
mod defender;
mod demo;
mod listing;
mod passive;
mod session;
mod transfer;
mod users;
mod vfs;
mod xferlog;

pub use config::{Config, ConfigFile, ListenerMode};
pub use demo::populate_demo;
pub use users::hash_password;

use defender::{BanPolicy, Defender};
use passive::PassivePorts;
use users::Users;

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A configuration value is wrong.
    #[error("configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// A socket could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// The served root is unusable.
    #[error("root {}: {source}", path.display())]
    Root {
        /// The configured root.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The users file is unusable.
    #[error("users: {reason}")]
    Users {
        /// What is wrong.
        reason: String,
    },
    /// The transfer log cannot be opened.
    #[error("xferlog {}: {source}", path.display())]
    Xferlog {
        /// The configured file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Accepting control connections failed for good.
    #[error("accept: {0}")]
    Accept(io::Error),
}

/// State shared by all sessions.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) root: PathBuf,
    pub(crate) ports: Arc<PassivePorts>,
    pub(crate) users: Arc<Users>,
    pub(crate) defender: Arc<Defender>,
    pub(crate) xferlog: Option<xferlog::Xferlog>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) busy_poll: busy_poll::BusyPoll,
}

/// Counters of the login defences (see [`LoginMonitor`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoginStats {
    /// Password verifications run (argon2), those against the dummy hash for names that are
    /// not accounts included.
    pub verifications: u64,
    /// The most verifications seen running at once.
    pub max_concurrent_verifications: usize,
    /// The bound on verifications running at once (the available parallelism).
    pub verification_limit: usize,
    /// Failed logins.
    pub failures: u64,
    /// Bans imposed on client addresses.
    pub bans: u64,
    /// Connections refused because their address was banned.
    pub refused_connections: u64,
    /// Client addresses the ban ledger tracks now.
    pub tracked_addresses: usize,
}

/// Reads the [`LoginStats`] of a server, also while it runs.
#[derive(Clone)]
pub struct LoginMonitor {
    users: Arc<Users>,
    defender: Arc<Defender>,
}

impl std::fmt::Debug for LoginMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginMonitor")
            .field("stats", &self.stats())
            .finish()
    }
}

impl LoginMonitor {
    /// The counters now.
    pub fn stats(&self) -> LoginStats {
        let verify = self.users.verify_counts();
        let (counts, tracked) = self.defender.counts();
        LoginStats {
            verifications: verify.runs,
            max_concurrent_verifications: verify.max_running,
            verification_limit: verify.limit,
            failures: counts.failures,
            bans: counts.bans,
            refused_connections: counts.refused_connections,
            tracked_addresses: tracked,
        }
    }
}

/// Session counts for `max_clients` and `max_per_ip`.
#[derive(Default)]
struct Admission {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// A session's place in the counts, given back on drop.
struct Slot {
    admission: Arc<Mutex<Admission>>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut a = self.admission.lock().unwrap_or_else(|e| e.into_inner());
        a.total = a.total.saturating_sub(1);
        if let Some(n) = a.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                a.per_ip.remove(&self.ip);
            }
        }
    }
}

/// A bound server, ready to run.
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Checks the configuration, binds the control socket (and, in prebound mode, every
    /// passive port), loads the users file and opens the transfer log.
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        config.validate()?;
        let root = vfs::Vfs::new(&config.root)
            .map_err(|source| ServerError::Root {
                path: config.root.clone(),
                source,
            })?
            .root()
            .to_path_buf();
        let users = Arc::new(Users::load(
            config.users.as_deref(),
            config.anonymous_enable,
            config.anonymous_write,
        )?);
        let defender = Arc::new(Defender::new(BanPolicy {
            max_failures: config.max_login_failures,
            window: config.ban_window,
            ban_time: config.ban_time,
            fail_delay: config.login_fail_delay,
            capacity: defender::DEFAULT_CAPACITY,
        }));
        let xferlog = match &config.xferlog {
            Some(path) => {
                Some(
                    xferlog::Xferlog::open(path).map_err(|source| ServerError::Xferlog {
                        path: path.clone(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        let listener = passive::bind_listener(config.listen, true, config.listen_backlog).map_err(
            |source| ServerError::Bind {
                addr: config.listen,
                source,
            },
        )?;
        let local_addr = listener.local_addr().map_err(ServerError::Accept)?;
        let ports = PassivePorts::new(&config, local_addr).await?;
        Ok(Server {
            listener,
            local_addr,
            shared: Arc::new(Shared {
                busy_poll: busy_poll::BusyPoll::new(config.busy_poll),
                config,
                root,
                ports,
                users,
                defender,
                xferlog,
                shutdown: CancellationToken::new(),
            }),
        })
    }

    /// The control address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Counters of the login defences, readable while the server runs.
    pub fn login_monitor(&self) -> LoginMonitor {
        LoginMonitor {
            users: Arc::clone(&self.shared.users),
            defender: Arc::clone(&self.shared.defender),
        }
    }

    /// Serves until `shutdown` completes, then stops accepting, lets sessions finish their
    /// transfers for up to `shutdown_timeout`, ends the rest and releases every port.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let Server {
            listener, shared, ..
        } = self;
        let admission = Arc::new(Mutex::new(Admission::default()));
        let mut sessions = JoinSet::new();
        let next_id = AtomicU64::new(1);
        tokio::pin!(shutdown);
        let mut result = Ok(());
        let poller = shared.busy_poll.enabled().then(|| {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                let stop = shared.shutdown.clone();
                shared.busy_poll.run(stop).await;
            })
        });
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        // Before any session state: a banned address costs one write.
                        if shared.defender.refuses(peer.ip()) {
                            refuse_banned(stream, peer);
                            continue;
                        }
                        let Some(slot) = admit(&shared.config, &admission, peer.ip()) else {
                            refuse(stream, peer);
                            continue;
                        };
                        let id = next_id.fetch_add(1, Ordering::Relaxed);
                        let shared = Arc::clone(&shared);
                        sessions.spawn(async move {
                            session::serve(shared, stream, peer, id).await;
                            drop(slot);
                        });
                    }
                    Err(e) if is_transient_accept_error(&e) => {
                        tracing::warn!(error = %e, "accept failed; backing off");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                    Err(e) => {
                        result = Err(ServerError::Accept(e));
                        break;
                    }
                },
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            }
        }
        drop(listener);
        tracing::info!(sessions = sessions.len(), "shutting down");
        shared.shutdown.cancel();
        let drain = async { while sessions.join_next().await.is_some() {} };
        if tokio::time::timeout(shared.config.shutdown_timeout, drain)
            .await
            .is_err()
        {
            tracing::warn!(
                sessions = sessions.len(),
                "shutdown deadline passed; ending sessions"
            );
            sessions.shutdown().await;
        }
        if let Some(poller) = poller {
            let _ = poller.await;
        }
        shared.ports.shutdown();
        let stats = shared.ports.stats();
        tracing::info!(
            acquisitions = stats.acquisitions,
            refusals = stats.refusals,
            leased = stats.leased,
            "stopped"
        );
        result
    }
}

fn is_transient_accept_error(e: &io::Error) -> bool {
    // Per-connection failures and descriptor exhaustion: the listener itself is fine.
    !matches!(
        e.kind(),
        io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported
    )
}

fn admit(config: &Config, admission: &Arc<Mutex<Admission>>, ip: IpAddr) -> Option<Slot> {
    let ip = ip.to_canonical();
    let mut a = admission.lock().unwrap_or_else(|e| e.into_inner());
    if config.max_clients > 0 && a.total >= config.max_clients {
        return None;
    }
    let n = a.per_ip.entry(ip).or_insert(0);
    if config.max_per_ip > 0 && *n >= config.max_per_ip {
        return None;
    }
    *n += 1;
    a.total += 1;
    Some(Slot {
        admission: Arc::clone(admission),
        ip,
    })
}

fn refuse(stream: TcpStream, peer: SocketAddr) {
    tracing::warn!(peer = %peer, "connection refused: session limit");
    // A fresh socket's send buffer is empty: this write does not block or fail short.
    let _ = stream.try_write(b"421 Too many connections, try later.\r\n");
}

fn refuse_banned(stream: TcpStream, peer: SocketAddr) {
    // Debug, not warn: a banned client reconnecting in a loop would flood the log; the ban
    // itself was logged, and the refusals are counted.
    tracing::debug!(peer = %peer, "connection refused: address banned");
    let _ = stream.try_write(b"421 Too many failed logins from your address, try later.\r\n");
}
