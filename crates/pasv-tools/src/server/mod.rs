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
//! * **Listener modes** ([`ListenerMode`]): every port bound once at start and shared,
//!   connections routed by peer address, the pool leasing per port and peer (default); or a
//!   listener per lease, one session per port. With SO_REUSEADDR (the default; never SO_REUSEPORT) Linux lets a port be
//!   bound again over its TIME_WAIT sockets, so the default quarantine scope is `None`;
//!   `no_reuseaddr` restores the classic exhaustion, with scope `Port` to match.
//! * **IPv6.** EPSV leases on the control connection's local address (or another passive
//!   address of its family). PASV, whose 227 reply can only carry IPv4, answers
//!   `502 ... use EPSV` when there is no IPv4 passive address (an IPv6 control connection to
//!   an IPv6-only server): permanent, so clients switch rather than retry. EPSV without a
//!   passive address of the control connection's family answers 522 (RFC 2428).
//! * **Exhaustion.** PASV/EPSV wait up to `pasv_wait` for a release (any session's) or for
//!   the pool's `retry_after`; then `425 ... (retry after Ns)`. Every 425 for a shortage of
//!   ports carries a hint; one for an address at its lease cap says that no time is known
//!   (only the client's own transfers free its leases).
//!   A release wakes one waiter, the oldest whose address filter admits the freed address
//!   (EPSV on IPv6 waits for an IPv6 port, PASV for an IPv4 one); one that still finds
//!   nothing hands the wake-up on to a waiter of another kind.
//! * **Files.** Every filesystem operation resolves beneath a descriptor of the root, in the
//!   kernel (`openat2` with `RESOLVE_BENEATH`), at the moment of use; reads follow symlinks
//!   that stay inside the root, writes never follow the last component, RETR opens only
//!   regular files, and listings show nothing of what lies outside (the `vfs` module has the
//!   rules). Uploads go to an unnamed file in the target directory, fsynced and linked into
//!   place on success, and vanish on failure, ABOR or a vanished client (APPE and REST+STOR
//!   copy the kept part of the old file first, so the old file stays whole until the commit).
//!   Every filesystem call runs on the blocking pool except RETR's open and fstat, which
//!   stay inline on the hot path: one non-blocking open of a local file waits on no other
//!   process (a root on a network file system that can hang should not be served).
//! * **TYPE A** (the RFC 959 default until the client sends `TYPE I`). Downloads send each
//!   bare LF of the file as CRLF (a CRLF in the file stays one, a lone CR stays); uploads
//!   (STOR, APPE, STOU) store CRLF as LF and keep a lone CR. Listings are CRLF text in
//!   either type. REST offsets and SIZE count bytes of the stored file, as vsftpd's do, and
//!   so does the byte count in the 150 reply; a TYPE A download may put more bytes on the
//!   wire. TYPE A transfers skip the binary fast paths (inline send, `sendfile`).
//!   `ascii_transfers = false` (`--no-ascii`) makes every transfer binary whatever the TYPE,
//!   like vsftpd's default; the 150 reply then says BINARY.
//! * **Control loop.** Commands keep being read during a transfer: ABOR gives 426 then 226,
//!   STAT and NOOP are answered at once; every other command queues (at most 16), QUIT
//!   included, and runs after the transfer's final reply, so QUIT closes after it.
//! * **Pending replies.** Replies go out with one non-blocking write per loop turn; what the
//!   socket does not take waits in the session. While more than [`MAX_PENDING_OUTPUT`] bytes
//!   wait, the session decodes and reads no further command, so a client that pipelines
//!   commands and never reads its replies holds at most that bound plus one reply (the largest
//!   is a capped STAT listing, [`STAT_MAX_BYTES`]) and then its own sends block.
//! * **Timeouts on both directions.** `idle_timeout` ends a control connection on which
//!   nothing moved: no command arrived and no reply byte was taken (421 when it can still be
//!   written). It is also the control write timeout: replies that wait with no byte taken for
//!   `idle_timeout` end the session with a reset, whatever the client still sends, so a client
//!   that never reads frees its `max_clients` slot like one that never writes.
//!   `data_timeout` is the stall timeout of every data read and write (`sendfile`, the copy
//!   loop, listings, the closing FIN): a transfer fails with 426 once no byte moved for that
//!   long, however long the transfer as a whole takes.
//! * **STAT of a directory** sends the listing on the control connection, capped at
//!   [`STAT_MAX_ENTRIES`] entries and [`STAT_MAX_BYTES`] bytes; a capped reply says so in its
//!   last line (`End of status: first N of M entries; LIST shows all`). LIST, NLST and MLSD
//!   over a data connection have no cap.
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
//! rules), `core` (the rules of a control connection as a state machine without IO: events
//! in with `now`, actions and reply bytes out, `poll_timeout`), `session` (its tokio driver:
//! the control socket, the data endpoint, files and the transfer task), `transfer` (the data copy and who closes), `ascii`
//! (TYPE A line ends), `vfs` (every filesystem operation, confined to the root), `listing`
//! (LIST/NLST/MLSD), `users` (argon2 accounts), `defender` (failed logins and bans),
//! `xferlog`, `privileges` (the switch to `run_as`; see [`BoundServer`]), [`cert_reader`]
//! (the child that keeps the first privileges to read TLS files for SIGHUP reloads).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

mod ascii;
mod busy_poll;
pub mod cert_reader;
pub mod config;
mod core;
mod defender;
mod demo;
mod error;
pub mod kernel;
mod limits;
pub(crate) mod listing;
mod metrics;
mod passive;
mod privileges;
mod proxy;
mod public;
mod session;
mod shared;
mod stats;
pub mod tls;
mod transfer;
mod users;
mod vfs;
mod xferlog;

pub use self::core::{MAX_PENDING_OUTPUT, STAT_MAX_BYTES, STAT_MAX_ENTRIES};
pub use config::{Cidr, Config, ConfigFile, ListenerMode, LogFormat, PublicAddress};
pub use demo::populate_demo;
pub use error::ServerError;
pub use stats::ServerStats;
pub use users::hash_password;

use defender::{BanPolicy, Defender};
use passive::PassivePorts;
use shared::Shared;
use users::Users;

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

/// Session counts for `max_clients` and `max_per_ip`, and of the sessions not logged in yet
/// for `max_unauthenticated` and `max_unauthenticated_per_ip`; addresses are counted by
/// [`defender::address_key`] (an IPv6 /64 as one).
#[derive(Default)]
struct Admission {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    unauthenticated: usize,
    unauthenticated_per_ip: HashMap<IpAddr, usize>,
}

fn decrement(map: &mut HashMap<IpAddr, usize>, key: IpAddr) {
    if let Some(n) = map.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            map.remove(&key);
        }
    }
}

/// A session's place among those not logged in yet; dropped at login or at the session's
/// end, whichever comes first.
pub(crate) struct LoginSlot {
    admission: Arc<Mutex<Admission>>,
    ip: IpAddr,
}

impl Drop for LoginSlot {
    fn drop(&mut self) {
        let mut a = self.admission.lock().unwrap_or_else(|e| e.into_inner());
        a.unauthenticated = a.unauthenticated.saturating_sub(1);
        decrement(&mut a.unauthenticated_per_ip, self.ip);
    }
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
        decrement(&mut a.per_ip, self.ip);
    }
}

/// A bound server, ready to run.
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    /// The implicit FTPS listener, when `implicit_tls_listen` is set.
    implicit: Option<TcpListener>,
    shared: Arc<Shared>,
    /// The metrics listener and what it serves, when `metrics` is set.
    metrics: Option<(std::net::TcpListener, Arc<metrics::Exporter>)>,
    /// The SIGHUP certificate reloader, installed by [`BoundServer::start`] (before the
    /// caller announces the server: a SIGHUP from then on reloads instead of killing it).
    reloader: Option<AbortOnDrop>,
}

/// A task that stops when its handle goes.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

/// A server whose control socket is bound, users file read and transfer log open, but that
/// is not yet attached to a runtime: what a process started as root holds between binding
/// its ports and switching to `run_as`. [`Server::bind`] takes the three steps at once;
/// `pasvd` takes them one by one, so that the switch happens before any thread exists:
///
/// ```no_run
/// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use pasv_tools::server::{BoundServer, Config};
///
/// let mut config = Config::for_tests("/srv/ftp".into());
/// config.listen = "0.0.0.0:21".parse()?;
/// config.run_as = Some("ftp".to_owned());
/// let mut bound = BoundServer::bind(config)?; // port 21, as root
/// bound.drop_privileges()?; // still a single thread
/// let runtime = tokio::runtime::Runtime::new()?; // its threads start as "ftp"
/// runtime.block_on(async move {
///     let server = bound.start().await?;
///     server.run_until(async { let _ = tokio::signal::ctrl_c().await; }).await
/// })?;
/// # Ok(())
/// # }
/// ```
pub struct BoundServer {
    config: Config,
    listener: std::net::TcpListener,
    local_addr: SocketAddr,
    users: Arc<Users>,
    xferlog: Option<xferlog::Xferlog>,
    run_as: Option<privileges::Account>,
    privileges_dropped: bool,
    metrics: Option<std::net::TcpListener>,
    tls: Option<tls::TlsServer>,
    /// The implicit FTPS listener (`implicit_tls_listen`).
    implicit: Option<std::net::TcpListener>,
}

impl std::fmt::Debug for BoundServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundServer")
            .field("local_addr", &self.local_addr)
            .field("run_as", &self.config.run_as)
            .finish_non_exhaustive()
    }
}

/// Checks a configuration as `pasvd --check-config` does, without binding or serving: every
/// value ([`Config::validate`]), the users file (read and parsed), and the served root
/// (a readable, searchable directory for the account running the check). Returns the number
/// of accounts in the users file.
pub fn check_config(config: &Config) -> Result<usize, ServerError> {
    config.validate()?;
    let users = Users::load(
        config.users.as_deref(),
        config.anonymous_enable,
        config.anonymous_write,
    )?;
    vfs::Vfs::new(&config.root).map_err(|source| ServerError::Root {
        path: config.root.clone(),
        source,
    })?;
    // Loads the certificate and key: a file that is unreadable or a key that does not fit
    // the certificate is reported now, not at the first AUTH TLS.
    tls::TlsServer::from_config(config)?;
    Ok(users.count())
}

impl BoundServer {
    /// Checks the configuration, resolves the `run_as` account, loads the users file, opens
    /// the transfer log and binds the control socket; all of it with the privileges the
    /// process started with (so the log may live in `/var/log`, the users file may be
    /// readable by root only, the port may be 21). Needs no runtime and starts no thread.
    pub fn bind(config: Config) -> Result<BoundServer, ServerError> {
        config.validate()?;
        // The certificate and key are read now, with the privileges the process started
        // with (key files are often readable by root only); SIGHUP reads them again.
        let tls = tls::TlsServer::from_config(&config)?;
        for contradiction in config.contradictions() {
            tracing::warn!("{contradiction}");
        }
        limits::ensure(&config);
        let run_as =
            match &config.run_as {
                Some(user) => Some(privileges::Account::lookup(user).map_err(|reason| {
                    ServerError::RunAs {
                        user: user.clone(),
                        reason,
                    }
                })?),
                None => None,
            };
        let users = Arc::new(Users::load(
            config.users.as_deref(),
            config.anonymous_enable,
            config.anonymous_write,
        )?);
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
        let implicit = match config.implicit_tls_listen {
            Some(addr) => Some(
                passive::bind_listener(addr, true, config.listen_backlog)
                    .map_err(|source| ServerError::Bind { addr, source })?,
            ),
            None => None,
        };
        let metrics = match config.metrics {
            Some(addr) => {
                Some(metrics::bind(addr).map_err(|source| ServerError::Bind { addr, source })?)
            }
            None => None,
        };
        Ok(BoundServer {
            config,
            listener,
            local_addr,
            users,
            xferlog,
            run_as,
            privileges_dropped: false,
            metrics,
            tls,
            implicit,
        })
    }

    /// The control address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Starts the privileged certificate reader ([`cert_reader`]) when the server will
    /// switch to `run_as` and its certificate comes from files: `program` (the server's own
    /// executable, `/proc/self/exe` for `pasvd`) run with [`cert_reader::SUBCOMMAND`] and
    /// the two paths, keeping the privileges the process has now. From then on a SIGHUP
    /// reload reads the files through it, so a key readable by root only can be reloaded
    /// after the switch. One round trip checks that it answers. Call it before
    /// [`BoundServer::drop_privileges`]; returns the reader's process id, or `None` when
    /// no reader is needed (no `run_as`, or the process already runs as that account; no
    /// certificate files; privileges already dropped).
    pub fn start_cert_reader(
        &mut self,
        program: &std::path::Path,
    ) -> Result<Option<u32>, ServerError> {
        // Only a process that will change accounts has privileges to keep (one a service
        // manager started as the run_as account reads no more than that account).
        let switching = self
            .run_as
            .as_ref()
            .is_some_and(|account| rustix::process::geteuid() != account.uid);
        if self.privileges_dropped || !switching {
            return Ok(None);
        }
        let Some(tls) = &self.tls else {
            return Ok(None);
        };
        let resolver = tls.resolver();
        let tls::CertSource::Files { cert, key } = resolver.source() else {
            return Ok(None);
        };
        // A reader reads as root whatever the paths lead to: not for paths the account it
        // works for could re-point (it would read any file for it). Such files are the
        // account's to read anyway; if it cannot, the warning at the switch says so.
        if let Some(account) = &self.run_as {
            let gids: Vec<u32> = account.groups.iter().map(|g| g.as_raw()).collect();
            for path in [cert, key] {
                if let Some(place) = cert_reader::changeable_by(path, account.uid.as_raw(), &gids) {
                    tracing::warn!(
                        "no privileged certificate reader: {} leads through {}, which the \
                         run_as account {} can change; make the directories root's and not \
                         writable by that account (see docs/FTPS.md)",
                        path.display(),
                        place.display(),
                        account.name
                    );
                    return Ok(None);
                }
            }
        }
        let failed = |what: String| ServerError::Config {
            reason: format!(
                "TLS: the certificate reader ({}): {what}",
                program.display()
            ),
        };
        let reader = cert_reader::CertReader::spawn(program, cert, key)
            .map_err(|e| failed(format!("cannot start it: {e}")))?;
        let pid = reader.pid();
        resolver
            .read_through(reader)
            .map_err(|e| failed(e.to_string()))?;
        // The first request: it runs and answers, and the files it reads are usable.
        resolver.reload().map_err(|e| failed(e.to_string()))?;
        tracing::info!(
            pid,
            "TLS certificate and key read by a privileged reader process: a SIGHUP reload \
             works after the switch to run_as"
        );
        Ok(Some(pid))
    }

    /// Switches the process to the `run_as` account: supplementary groups, group id, user id
    /// (real, effective and saved), then checks that all of them took and that setuid(0)
    /// fails. Linux keeps credentials per thread and the switch changes the calling thread
    /// only, so it must run while the process has a single thread: it refuses otherwise
    /// (call it before starting a multi-threaded runtime). Without `run_as` it changes
    /// nothing and logs a warning if the process runs as root. Once done, calling it again
    /// does nothing.
    pub fn drop_privileges(&mut self) -> Result<(), ServerError> {
        if self.privileges_dropped {
            return Ok(());
        }
        match &self.run_as {
            Some(account) => {
                privileges::switch_to(account).map_err(|reason| ServerError::RunAs {
                    user: account.name.clone(),
                    reason,
                })?;
                tracing::info!(
                    user = %account.name,
                    uid = account.uid.as_raw(),
                    gid = account.gid.as_raw(),
                    "serving as an unprivileged account"
                );
            }
            None if rustix::process::geteuid().is_root() => tracing::warn!(
                "running as root: set run_as (--run-as) to switch to an unprivileged account \
                 once the ports are bound"
            ),
            None => {}
        }
        self.privileges_dropped = true;
        Ok(())
    }

    /// Drops privileges if that is not done yet, checks the served root (as the account
    /// that will serve it), binds the passive ports in prebound mode and attaches the
    /// control socket to the current tokio runtime.
    pub async fn start(mut self) -> Result<Server, ServerError> {
        self.drop_privileges()?;
        let BoundServer {
            config,
            listener,
            local_addr,
            users,
            xferlog,
            run_as,
            metrics: metrics_listener,
            tls,
            implicit,
            ..
        } = self;
        // Read and search permission, as the serving account: checked now rather than
        // discovered at every login.
        let readable = rustix::fs::Access::READ_OK | rustix::fs::Access::EXEC_OK;
        let vfs = rustix::fs::access(&config.root, readable)
            .map_err(io::Error::from)
            .and_then(|()| vfs::Vfs::new(&config.root))
            .map_err(|source| ServerError::Root {
                path: config.root.clone(),
                source: match &run_as {
                    Some(account) => {
                        io::Error::new(source.kind(), format!("{source} (as {})", account.name))
                    }
                    None => source,
                },
            })?;
        let listener = TcpListener::from_std(listener).map_err(|source| ServerError::Bind {
            addr: local_addr,
            source,
        })?;
        let implicit = match implicit {
            Some(l) => {
                let addr = l.local_addr().map_err(ServerError::Accept)?;
                Some(
                    TcpListener::from_std(l)
                        .map_err(|source| ServerError::Bind { addr, source })?,
                )
            }
            None => None,
        };
        let ports = PassivePorts::new(&config, local_addr).await?;
        let defender = Arc::new(Defender::new(BanPolicy {
            max_failures: config.max_login_failures,
            window: config.ban_window,
            ban_time: config.ban_time,
            fail_delay: config.login_fail_delay,
            capacity: defender::DEFAULT_CAPACITY,
        }));
        if let (Some(account), Some(tls)) = (&run_as, &tls) {
            tls.check_readable_as(&account.name);
        }
        // A new certificate for new handshakes on SIGHUP; sessions keep theirs. Installed
        // now, before the caller prints that it listens.
        let reloader = match &tls {
            Some(tls) => Some(AbortOnDrop(
                tls::reload_on_sighup(Arc::clone(tls.resolver())).map_err(ServerError::Accept)?,
            )),
            None => None,
        };
        let counters = Arc::clone(&ports.counters);
        let metrics = metrics_listener.map(|l| {
            let collector = metrics::ServerCollector::new(
                Arc::clone(&counters),
                Arc::clone(&ports),
                Arc::clone(&defender),
                Arc::clone(&users),
            );
            (l, Arc::new(metrics::Exporter::new(collector)))
        });
        Ok(Server {
            listener,
            local_addr,
            implicit,
            metrics,
            reloader,
            shared: Arc::new(Shared {
                rules: Arc::new(self::core::Rules::new(&config, users.anonymous_allowed())),
                busy_poll: busy_poll::BusyPoll::new(config.busy_poll),
                config,
                vfs,
                ports,
                users,
                defender,
                xferlog,
                shutdown: CancellationToken::new(),
                stats: ServerStats::default(),
                metrics: counters,
                tls,
            }),
        })
    }
}

impl Server {
    /// Checks the configuration, binds the control socket (and, in prebound mode, every
    /// passive port), loads the users file and opens the transfer log: [`BoundServer::bind`],
    /// [`BoundServer::drop_privileges`] and [`BoundServer::start`] in one step. With
    /// `run_as` set the switch is refused if the process already runs other threads (a
    /// multi-threaded runtime does): take the steps one by one.
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        BoundServer::bind(config)?.start().await
    }

    /// The control address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The implicit FTPS address actually bound, when `implicit_tls_listen` is set (useful
    /// with port 0).
    pub fn implicit_tls_addr(&self) -> Option<SocketAddr> {
        self.implicit.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The address of the metrics endpoint, when `metrics` is set (useful with port 0).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// A handle on the figures the server keeps; it stays valid while and after it runs.
    pub fn stats(&self) -> ServerStats {
        self.shared.stats.clone()
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
            listener,
            implicit,
            shared,
            metrics,
            reloader,
            ..
        } = self;
        if let Some((metrics_listener, exporter)) = metrics {
            tokio::spawn(metrics::serve(
                metrics_listener,
                exporter,
                shared.shutdown.clone(),
            ));
        }
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
                accepted = accept_either(&listener, implicit.as_ref()) => match accepted {
                    Ok((stream, peer, tls)) if shared.config.proxy_protocol => {
                        // Only a trusted balancer may name the client's address; anyone else
                        // is closed before a byte is read.
                        if !shared.config.proxy_from.iter().any(|c| c.contains(peer.ip())) {
                            tracing::warn!(from = %peer, "connection refused: not a trusted PROXY source");
                            continue;
                        }
                        let id = next_id.fetch_add(1, Ordering::Relaxed);
                        let (shared, admission) = (Arc::clone(&shared), Arc::clone(&admission));
                        sessions.spawn(async move {
                            let mut stream = stream;
                            let client = match proxy::read_header(&mut stream).await {
                                Ok(client) => client.unwrap_or(peer),
                                Err(e) => {
                                    tracing::warn!(from = %peer, error = %e, "connection refused: PROXY header");
                                    return passive::reset(stream);
                                }
                            };
                            tracing::debug!(session = id, peer = %client, via = %peer, "proxied connection");
                            if let Some(session) = open_session(&shared, &admission, stream, client, id, tls) {
                                session.await;
                            }
                        });
                    }
                    Ok((stream, peer, tls)) => {
                        let id = next_id.fetch_add(1, Ordering::Relaxed);
                        if let Some(session) = open_session(&shared, &admission, stream, peer, id, tls) {
                            sessions.spawn(session);
                        }
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
        drop(implicit);
        drop(reloader);
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

/// The next connection of the control listener or of the implicit FTPS listener (`true`).
async fn accept_either(
    listener: &TcpListener,
    implicit: Option<&TcpListener>,
) -> io::Result<(TcpStream, SocketAddr, bool)> {
    let implicit = async {
        match implicit {
            Some(l) => l.accept().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = listener.accept() => r.map(|(s, a)| (s, a, false)),
        r = implicit => r.map(|(s, a)| (s, a, true)),
    }
}

fn is_transient_accept_error(e: &io::Error) -> bool {
    // Per-connection failures and descriptor exhaustion: the listener itself is fine.
    !matches!(
        e.kind(),
        io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported
    )
}

/// The session of a control connection from `peer` (the client's address, given by a PROXY
/// header when there is one), unless the address is banned or over its limits (then the
/// connection is answered 421 and closed).
fn open_session(
    shared: &Arc<Shared>,
    admission: &Arc<Mutex<Admission>>,
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    implicit_tls: bool,
) -> Option<impl Future<Output = ()> + Send + 'static> {
    // Before any session state: a banned address costs one write.
    if shared.defender.refuses(peer.ip()) {
        refuse_banned(stream, peer, implicit_tls);
        return None;
    }
    let Some((slot, login)) = admit(&shared.config, admission, peer.ip()) else {
        shared.metrics.session_refused_by_limit();
        refuse(stream, peer, implicit_tls);
        return None;
    };
    let shared = Arc::clone(shared);
    Some(async move {
        session::serve(shared, stream, peer, id, login, implicit_tls).await;
        drop(slot);
    })
}

fn admit(
    config: &Config,
    admission: &Arc<Mutex<Admission>>,
    ip: IpAddr,
) -> Option<(Slot, LoginSlot)> {
    let ip = defender::address_key(ip);
    let mut a = admission.lock().unwrap_or_else(|e| e.into_inner());
    let over = |limit: usize, n: usize| limit > 0 && n >= limit;
    let max_unauthenticated = config.effective_max_unauthenticated();
    if over(config.max_clients, a.total)
        || over(config.max_per_ip, a.per_ip.get(&ip).copied().unwrap_or(0))
        || over(max_unauthenticated, a.unauthenticated)
        || over(
            config.max_unauthenticated_per_ip,
            a.unauthenticated_per_ip.get(&ip).copied().unwrap_or(0),
        )
    {
        return None;
    }
    *a.per_ip.entry(ip).or_insert(0) += 1;
    a.total += 1;
    *a.unauthenticated_per_ip.entry(ip).or_insert(0) += 1;
    a.unauthenticated += 1;
    Some((
        Slot {
            admission: Arc::clone(admission),
            ip,
        },
        LoginSlot {
            admission: Arc::clone(admission),
            ip,
        },
    ))
}

fn refuse(stream: TcpStream, peer: SocketAddr, implicit_tls: bool) {
    tracing::warn!(peer = %peer, "connection refused: session limit");
    refuse_with(
        stream,
        implicit_tls,
        b"421 Too many connections, try later.\r\n",
    );
}

fn refuse_banned(stream: TcpStream, peer: SocketAddr, implicit_tls: bool) {
    // Debug, not warn: a banned client reconnecting in a loop would flood the log; the ban
    // itself was logged, and the refusals are counted.
    tracing::debug!(peer = %peer, "connection refused: address banned");
    refuse_with(
        stream,
        implicit_tls,
        b"421 Too many failed logins from your address, try later.\r\n",
    );
}

/// Answers a refused control connection with `reply` and closes it. On the implicit FTPS
/// listener the client's first bytes are a TLS ClientHello and it reads a TLS record back:
/// a plaintext reply would only show up as a TLS protocol error, and a handshake to carry
/// the reply is what a flood of refused connections must not cost. The connection is
/// closed without a word.
fn refuse_with(stream: TcpStream, implicit_tls: bool, reply: &[u8]) {
    if !implicit_tls {
        // A fresh socket's send buffer is empty: this write does not block or fail short.
        let _ = stream.try_write(reply);
    }
}
