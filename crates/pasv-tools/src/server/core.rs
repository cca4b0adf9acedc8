//! The rules of one control connection as a state machine: no sockets, no files, no tasks,
//! no clock.
//!
//! In the style of quinn-proto's `Connection` and of [`pasv_pool::Pool`]: what happens to
//! the session comes in through `handle_*` calls, each with `now` (bytes read, end of input,
//! a filesystem result, a passive endpoint opened or refused, a login verified, a transfer
//! ended, a deadline passed); what the session wants done comes out of [`Core::poll_action`]
//! (run a filesystem operation, open a passive endpoint, start or abort a transfer, ...), the
//! reply bytes out of [`Core::transmit`], and the next deadline out of [`Core::poll_timeout`].
//! The driver (`session`) owns the control socket, the data connections, the files and the
//! tasks, and only carries events in and actions out; every rule of the session — login,
//! REST, RNFR/RNTO, ABOR and QUIT during a transfer, queued commands, login delays, timeouts,
//! the commit of an upload against a client that vanished — lives here and is tested here
//! without a socket (see `core/tests.rs`).
//!
//! The session's lifecycle is one enum, [`State`]. Work that needs the outside world (a
//! filesystem call, a passive port, a password verification) moves it to a state that
//! decodes no further command until the result comes back, so replies keep the order of the
//! commands. During a transfer the session keeps decoding: ABOR, STAT, NOOP are answered at
//! once, everything else (QUIT included) waits in a queue of [`MAX_QUEUED`] commands and runs
//! once the transfer's final reply is out.
//!
//! Bounds: undecoded input is at most [`MAX_INPUT`] bytes (the driver reads no more); while
//! more than [`MAX_PENDING_OUTPUT`] reply bytes wait unsent no command is decoded, so the
//! bytes waiting are at most that bound plus one reply; one reply is at most one command
//! line's worth of path plus fixed text on one line, or a multi-line reply whose largest is
//! a STAT listing capped at [`STAT_MAX_BYTES`] (see docs/ARCHITECTURE.md).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use pasv_pool::{Closer, Instant};
use pasv_protocol::{
    Argument, Command, CommandDecoder, EpsvArg, Password, Reply, ReplyCode, Structure,
    TransferMode, TransferType,
};

use super::config::Config;
use super::listing::{self, Civil, Format};
use super::metrics::{Counters, Direction, LoginResult, RefusalCause, TransferResult};
use super::tls::TlsRequired;
use super::users::is_anonymous_name;
use super::vfs::{io_text, FsError, Kind, Meta, Vfs};

#[cfg(test)]
mod tests;

/// Reply bytes a session may hold unsent before it stops reading commands (256 KiB).
///
/// A client that reads its replies never comes near it: the control socket's send buffer
/// takes them. One reply may take a session past it (a STAT listing, at most
/// [`STAT_MAX_BYTES`]); no further command is decoded until the client has read enough.
pub const MAX_PENDING_OUTPUT: usize = 256 * 1024;

/// Most directory entries a STAT reply lists on the control connection.
pub const STAT_MAX_ENTRIES: usize = 10_000;

/// Most bytes of listing a STAT reply carries on the control connection (1 MiB).
pub const STAT_MAX_BYTES: usize = 1024 * 1024;

/// Commands held while a transfer runs; beyond this the session decodes no more.
pub(crate) const MAX_QUEUED: usize = 16;
/// Undecoded control input beyond which the driver stops reading.
pub(crate) const MAX_INPUT: usize = 64 * 1024;
/// Retry hint when the leased ports could not be bound: they are cooling now, and a lease
/// lasts about as long as one transfer, for which a second is a generous guess.
const BIND_RETRY: Duration = Duration::from_secs(1);
/// PASV without an IPv4 passive address (an IPv6-only server, or an IPv6 control connection
/// whose leases would be IPv6).
const PASV_NO_V4: &[u8] = b"PASV needs an IPv4 passive address and there is none; use EPSV.";
/// The 425 of a transfer command with no data connection set up: permanent until the
/// client sends PASV, EPSV, PORT or EPRT, so it carries no retry hint.
const NO_DATA: &[u8] = b"Use PORT, PASV or EPSV first.";

const FEATURES: &str = "Features:\n EPRT\n EPSV\n MDTM\n MFMT\n MLST type*;size*;modify*;perm*;unix.mode*;\n PASV\n REST STREAM\n SIZE\n TVFS\n UTF8\n CLNT\n HOST\nEnd";

/// FEAT with TLS configured: the FTPS commands first (RFC 4217 section 6).
const FEATURES_TLS: &str = "Features:\n AUTH TLS\n AUTH SSL\n PBSZ\n PROT\n EPRT\n EPSV\n MDTM\n MFMT\n MLST type*;size*;modify*;perm*;unix.mode*;\n PASV\n REST STREAM\n SIZE\n TVFS\n UTF8\n CLNT\n HOST\nEnd";

/// 521: a transfer refused for its protection level (RFC 4217 section 9: "Data connection
/// cannot be opened with this PROT setting").
const PROT_REFUSED: ReplyCode = match ReplyCode::new(521) {
    Some(code) => code,
    None => ReplyCode::DENIED_FOR_POLICY,
};

/// 536: a protection level the server does not support (RFC 2228).
const PROT_UNSUPPORTED: ReplyCode = match ReplyCode::new(536) {
    Some(code) => code,
    None => ReplyCode::NOT_IMPLEMENTED_FOR_PARAM,
};

const HELP: &str = "The following commands are recognized:\n ABOR ACCT ALLO APPE CDUP CLNT CWD  DELE EPRT EPSV FEAT HELP HOST LIST MDTM\n MFMT MKD  MLSD MLST MODE NLST NOOP OPTS PASS PASV PORT PWD  QUIT REIN REST\n RETR RMD  RNFR RNTO SITE SIZE STAT STOR STOU STRU SYST TYPE USER\nHelp OK";

/// The settings the rules read, taken from [`Config`] once at start.
#[derive(Clone, Debug)]
pub(crate) struct Rules {
    pub(crate) banner: String,
    pub(crate) login_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) accept_timeout: Duration,
    pub(crate) login_fail_delay: Duration,
    pub(crate) max_login_fails: u32,
    pub(crate) port_enable: bool,
    pub(crate) port_min_port: u16,
    pub(crate) ascii_transfers: bool,
    pub(crate) anonymous_allowed: bool,
    /// A certificate is configured: AUTH TLS is accepted.
    pub(crate) tls: bool,
    /// What must be protected (`tls_required`).
    pub(crate) tls_required: TlsRequired,
}

impl Rules {
    /// The rules of `config`; `anonymous_allowed` comes from the users file.
    pub(crate) fn new(config: &Config, anonymous_allowed: bool) -> Rules {
        Rules {
            banner: config.banner.clone(),
            login_timeout: config.login_timeout,
            idle_timeout: config.idle_timeout,
            accept_timeout: config.accept_timeout,
            login_fail_delay: config.login_fail_delay,
            max_login_fails: config.max_login_fails,
            port_enable: config.port_enable,
            port_min_port: config.port_min_port,
            ascii_transfers: config.ascii_transfers,
            anonymous_allowed,
            tls: config.tls_source().is_some(),
            tls_required: config.tls_required,
        }
    }
}

/// A filesystem operation for the driver to run (through `vfs`) and answer with
/// [`Core::handle_fs`]. Paths are virtual, folded, and checked by [`Vfs::path`].
#[derive(Debug)]
pub(crate) enum FsOp {
    /// CWD: is it a directory? Answer [`FsDone::Done`].
    IsDir(Vec<u8>),
    /// SIZE, MDTM, MLST, MLSD's check: answer [`FsDone::Meta`].
    Stat(Vec<u8>),
    Mkdir(Vec<u8>),
    Rmdir(Vec<u8>),
    Delete(Vec<u8>),
    /// RNFR: does the name exist (without following a final link)?
    Exists(Vec<u8>),
    Rename {
        from: Vec<u8>,
        to: Vec<u8>,
    },
    SetModified {
        path: Vec<u8>,
        secs: i64,
    },
    Chmod {
        path: Vec<u8>,
        mode: u32,
    },
    /// A listing's text: answer [`FsDone::Rendered`].
    Render {
        path: Vec<u8>,
        format: Format,
    },
    /// RETR: open a regular file positioned at `offset` (REST), [`FsError::PastEnd`] beyond
    /// its end; the driver keeps the file for the transfer and answers [`FsDone::Opened`].
    OpenDownload {
        path: Vec<u8>,
        offset: u64,
        ascii: bool,
    },
    /// STOR, APPE, STOU: an upload's unnamed file holding the first `keep` bytes of the old
    /// one; the driver keeps it for the transfer and answers [`FsDone::Prepared`].
    CreateUpload {
        path: Vec<u8>,
        keep: u64,
    },
    /// Links the finished upload the driver holds into place at `target` (resolved again
    /// now); answer [`FsDone::Committed`].
    Commit {
        target: Vec<u8>,
        unique: bool,
    },
}

/// What a filesystem operation gave.
#[derive(Debug)]
pub(crate) enum FsDone {
    Done,
    Meta(Meta),
    Rendered(Vec<u8>),
    /// A download is open; `len` bytes are left from the offset.
    Opened {
        len: u64,
    },
    /// An upload's file is ready.
    Prepared,
    /// The upload is in place; the name STOU chose, if any.
    Committed(Option<Vec<u8>>),
}

/// What the next transfer moves.
#[derive(Debug)]
pub(crate) enum Job {
    /// The file of the last [`FsOp::OpenDownload`].
    Download { ascii: bool },
    /// A rendered listing.
    Listing(Vec<u8>),
    /// Into the file of the last [`FsOp::CreateUpload`].
    Upload { ascii: bool },
}

/// Why no passive endpoint was opened (the driver's `passive::Refusal`, without its IO).
#[derive(Debug)]
pub(crate) enum PassiveRefusal {
    /// Every port is leased or cooling, the first back after `retry_after` (the pool's
    /// exact hint for a cooling port).
    Exhausted { retry_after: Duration },
    /// Every port is held by a live lease: `hint` is the expected end of the first one,
    /// from measured hold times.
    AllLeased { hint: Duration },
    /// The client's address holds `limit` leases already.
    PeerLimit { limit: usize },
    /// No passive address of the family asked for.
    NoAddress,
    /// Leased ports could not be bound.
    Bind(String),
}

/// The answer to [`Action::OpenPassive`].
#[derive(Debug)]
pub(crate) enum Passive {
    /// Listening: the address to advertise (IPv4 for PASV; only the port counts for EPSV).
    Opened(SocketAddr),
    /// PASV leased a port, but there is no IPv4 address to advertise for it (released).
    NoIpv4,
    Refused(PassiveRefusal),
}

/// The answer to [`Action::Verify`].
#[derive(Debug)]
pub(crate) enum Verified {
    /// The password is right; the driver keeps the account's file tree.
    Granted {
        name: String,
        write: bool,
        anonymous: bool,
        /// May run `SITE POOL`.
        admin: bool,
    },
    /// Wrong name or password. `delay` is the address's failure delay (none for anonymous:
    /// the configured one); `banned` when this failure banned the address.
    Failed {
        delay: Option<Duration>,
        banned: bool,
    },
    /// The address is banned.
    Banned,
}

/// How a transfer ended.
#[derive(Debug)]
pub(crate) enum Ending {
    /// Every byte moved and the connection closed cleanly.
    Complete,
    /// The client never connected (accept timeout) or the active connect failed.
    NoConnection(String),
    /// ABOR, or the control connection went away.
    Aborted,
    /// The data connection failed or stalled.
    Network(io::Error),
    /// Reading or writing the file failed.
    Local(io::Error),
}

/// The answer to [`Action::StartTransfer`].
#[derive(Debug)]
pub(crate) struct TransferEnd {
    pub(crate) ending: Ending,
    pub(crate) bytes: u64,
    pub(crate) duration: Duration,
    pub(crate) port: Option<u16>,
    pub(crate) closer: Option<Closer>,
    /// An upload's file is complete and held by the driver, waiting for its commit.
    pub(crate) upload_ready: bool,
}

/// A finished RETR/STOR/APPE/STOU for the transfer log (xferlog).
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) duration: Duration,
    pub(crate) bytes: u64,
    pub(crate) path: Vec<u8>,
    pub(crate) binary: bool,
    pub(crate) incoming: bool,
    pub(crate) anonymous: bool,
    pub(crate) user: String,
    pub(crate) complete: bool,
}

/// What the session wants done; each is answered (when it has an answer) by the
/// `handle_*` call named.
#[derive(Debug)]
#[must_use]
pub(crate) enum Action {
    /// Run a filesystem operation; [`Core::handle_fs`].
    Fs(FsOp),
    /// Open a passive endpoint (the previous one is released first by
    /// [`Action::ReleaseData`]); `extended` for EPSV. [`Core::handle_passive`].
    OpenPassive { extended: bool },
    /// PORT/EPRT: the next transfer connects to this (checked) address.
    UseActive(SocketAddr),
    /// Close the data endpoint, whatever it is (a waiting connection with a reset).
    ReleaseData,
    /// The idle passive endpoint's accept timeout: take the client's connection if it is
    /// waiting ([`Core::handle_connection_taken`]), else release the port.
    AcceptDue,
    /// Verify a login; [`Core::handle_verified`].
    Verify { name: Vec<u8>, password: Password },
    /// Start a transfer on the data endpoint; [`Core::handle_transfer`].
    StartTransfer(Job),
    /// ABOR, or the client vanished: stop the running transfer (it still ends with
    /// [`Core::handle_transfer`]).
    AbortTransfer,
    /// Drop the finished upload uncommitted.
    DiscardUpload,
    /// Write a transfer log entry.
    Log(Finished),
    /// `SITE POOL` from an administrator: the pool's counts and its ledger against the
    /// kernel's; [`Core::handle_pool_report`].
    PoolReport,
    /// Replies waited `idle_timeout` with no byte taken: reset the control connection.
    Reset { unread: usize },
    /// AUTH TLS was accepted: once the replies queued so far (its 234 last) are written,
    /// run the TLS handshake on the control connection and answer
    /// [`Core::handle_secured`]. Nothing read after the AUTH line is kept (the core has
    /// dropped it; the driver reads nothing more in plaintext).
    SecureControl,
}

/// Why the session closes, and its last reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Close {
    Quit,
    /// The client closed its side (no reply is owed while nothing runs).
    Vanished,
    Shutdown,
    LoginTimeout,
    Idle,
    Banned,
    TooManyFailures,
}

impl Close {
    fn reply(self) -> (ReplyCode, &'static [u8]) {
        match self {
            Close::Quit => (ReplyCode::CLOSING_CONTROL, b"Goodbye."),
            Close::Vanished => (
                ReplyCode::SERVICE_NOT_AVAILABLE,
                b"Control connection closed.",
            ),
            Close::Shutdown => (ReplyCode::SERVICE_NOT_AVAILABLE, b"Server shutting down."),
            Close::LoginTimeout => (ReplyCode::SERVICE_NOT_AVAILABLE, b"Login timeout."),
            Close::Idle => (ReplyCode::SERVICE_NOT_AVAILABLE, b"Timeout."),
            Close::Banned => (
                ReplyCode::SERVICE_NOT_AVAILABLE,
                b"Too many failed logins from your address.",
            ),
            Close::TooManyFailures => {
                (ReplyCode::SERVICE_NOT_AVAILABLE, b"Too many failed logins.")
            }
        }
    }
}

/// The session's lifecycle.
#[derive(Debug)]
pub(crate) enum State {
    /// Waiting for USER.
    AwaitingUser,
    /// USER given; waiting for PASS.
    AwaitingPass { name: Vec<u8> },
    /// A password verification for `name` runs ([`Action::Verify`]).
    Authenticating { name: Vec<u8> },
    /// A login failed: its reply is held until `until` (the defence against guessing),
    /// and so is every later command.
    LoginFailed { until: Instant, banned: bool },
    /// AUTH TLS accepted: the control connection's TLS handshake runs
    /// ([`Action::SecureControl`]); no command is decoded until it is done.
    Securing,
    /// Logged in, nothing running.
    Ready,
    /// Logged in, waiting for the outside world (a filesystem call, a passive port).
    Busy(Pending),
    /// A transfer runs.
    Transferring(Running),
    /// The last reply is decided; the driver closes once the replies are out.
    Closed,
}

/// The work a [`State::Busy`] session waits for, and what to do with its answer.
#[derive(Debug)]
pub(crate) enum Pending {
    Cwd(Vec<u8>),
    Size,
    Mdtm,
    Mkd(Vec<u8>),
    Rnfr(Vec<u8>),
    /// RMD, DELE, RNTO, SITE CHMOD: a fixed reply on success.
    Done(ReplyCode, &'static [u8]),
    Mfmt {
        civil: Civil,
        path: Vec<u8>,
    },
    Mlst(Vec<u8>),
    /// STAT of a path: the listing goes on the control connection.
    StatListing,
    /// MLSD checks that its path is a directory before rendering it.
    MlsdCheck {
        path: Vec<u8>,
        writable: bool,
    },
    Listing {
        path: Vec<u8>,
        verb: &'static str,
    },
    Retr {
        path: Vec<u8>,
    },
    Store {
        path: Vec<u8>,
        kind: StoreKind,
    },
    /// An upload's commit, after its transfer.
    Commit {
        running: Running,
        end: TransferEnd,
    },
    Passive {
        extended: bool,
    },
    /// `SITE POOL`.
    PoolReport,
}

/// A running transfer.
#[derive(Debug)]
pub(crate) struct Running {
    verb: &'static str,
    path: Vec<u8>,
    incoming: bool,
    /// For STOR/APPE/STOU: the virtual path the upload goes to on success, and whether it
    /// must get a unique name (STOU).
    target: Option<(Vec<u8>, bool)>,
    /// ABOR came: its own 226 follows the transfer's 426.
    abor_received: bool,
    /// Bytes moved so far, as the driver last told ([`Core::handle_progress`]).
    progress: u64,
    /// The session ends when the transfer does (client gone, server shutting down).
    then: Option<Close>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StoreKind {
    Stor,
    Appe,
    Stou,
}

impl StoreKind {
    fn verb(self) -> &'static str {
        match self {
            StoreKind::Stor => "STOR",
            StoreKind::Appe => "APPE",
            StoreKind::Stou => "STOU",
        }
    }
}

/// The data endpoint the next transfer will use, as the rules see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Data {
    None,
    /// Listening; the port goes back at `until` (accept timeout).
    Passive {
        until: Instant,
    },
    /// The client's connection was taken at the accept timeout (it connected but sent no
    /// transfer command yet); closed unused at `until`. Without this deadline a client
    /// could keep a connected port, and so a share of the range, as long as it keeps its
    /// control connection from going idle.
    Connected {
        until: Instant,
    },
    Active,
}

/// Something that could not run when it came and waits for the session to be idle.
#[derive(Debug)]
enum Queued {
    Command(Command),
    Close(Close),
}

/// The logged-in account, as far as the rules need it.
#[derive(Debug)]
struct Account {
    name: String,
    write: bool,
    anonymous: bool,
    admin: bool,
}

/// One control connection's rules (see the module docs).
#[derive(Debug)]
pub(crate) struct Core {
    rules: Arc<Rules>,
    metrics: Arc<Counters>,
    id: u64,
    peer: SocketAddr,
    /// `peer`'s address as the transfer log writes it, rendered once for the session.
    peer_ip: Box<str>,
    local: SocketAddr,
    state: State,
    account: Option<Account>,
    /// Before login: when the session is closed for it (`login_timeout`).
    login_deadline: Option<Instant>,
    failed_logins: u32,
    cwd: Vec<u8>,
    binary: bool,
    rest: u64,
    /// RNFR's virtual path; RNTO resolves it again.
    rnfr: Option<Vec<u8>>,
    epsv_all: bool,
    data: Data,
    decoder: CommandDecoder,
    input: BytesMut,
    queued: VecDeque<Queued>,
    out: BytesMut,
    actions: VecDeque<Action>,
    /// Last command, finished transfer or drained backlog (the idle timeout's start).
    last_activity: Instant,
    /// Since when replies have waited with no byte taken; `None` while nothing waits.
    write_stalled_since: Option<Instant>,
    /// The session's FTPS state.
    tls: TlsState,
}

/// What of the session TLS protects (RFC 4217).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct TlsState {
    /// The control connection speaks TLS (AUTH TLS done, or implicit FTPS).
    control: bool,
    /// PBSZ came (after AUTH).
    pbsz: bool,
    /// PROT P: data connections are protected.
    private: bool,
}

impl Core {
    /// A new session from `peer` to our `local` address; the banner is the first reply.
    pub(crate) fn new(
        rules: Arc<Rules>,
        metrics: Arc<Counters>,
        id: u64,
        peer: SocketAddr,
        local: SocketAddr,
        now: Instant,
    ) -> Core {
        let mut core = Core {
            login_deadline: Some(now + rules.login_timeout),
            rules,
            metrics,
            id,
            peer,
            peer_ip: peer.ip().to_string().into(),
            local,
            state: State::AwaitingUser,
            account: None,
            failed_logins: 0,
            cwd: b"/".to_vec(),
            binary: false,
            rest: 0,
            rnfr: None,
            epsv_all: false,
            data: Data::None,
            decoder: CommandDecoder::new(),
            input: BytesMut::with_capacity(4096),
            queued: VecDeque::new(),
            out: BytesMut::with_capacity(1024),
            actions: VecDeque::new(),
            last_activity: now,
            write_stalled_since: None,
            tls: TlsState::default(),
        };
        let banner = core.rules.banner.clone();
        core.reply(ReplyCode::SERVICE_READY, banner.as_bytes());
        core
    }

    /// Implicit FTPS: the control connection spoke TLS from its first byte, so the session
    /// starts as if AUTH TLS, PBSZ 0 and PROT P had been sent (what curl's `ftps://` and
    /// lftp expect; a client may still send them, or PROT C).
    pub(crate) fn set_implicit_tls(&mut self) {
        self.tls = TlsState {
            control: true,
            pbsz: true,
            private: true,
        };
    }

    // ---- what the driver reads ----

    /// Whether the next transfer's data connection must be TLS (PROT P).
    pub(crate) fn data_protected(&self) -> bool {
        self.tls.private
    }

    /// Whether the control connection speaks TLS.
    #[cfg(test)]
    pub(crate) fn control_protected(&self) -> bool {
        self.tls.control
    }

    /// The next thing to do, in order.
    pub(crate) fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Reply bytes waiting to be written; report what was written with
    /// [`Core::handle_written`].
    pub(crate) fn transmit(&self) -> &[u8] {
        &self.out
    }

    /// The buffer the driver reads control input into; then [`Core::handle_input`].
    pub(crate) fn input_buffer(&mut self) -> &mut BytesMut {
        &mut self.input
    }

    /// Whether the driver should read the control connection now: not while the session
    /// waits for the outside world (replies keep the commands' order), not past
    /// [`MAX_INPUT`] undecoded bytes, not while replies wait beyond [`MAX_PENDING_OUTPUT`].
    pub(crate) fn wants_input(&self) -> bool {
        let open = matches!(
            self.state,
            State::AwaitingUser | State::AwaitingPass { .. } | State::Ready
        ) || matches!(&self.state, State::Transferring(r) if r.then != Some(Close::Vanished));
        open && self.input.len() < MAX_INPUT && self.out.len() <= MAX_PENDING_OUTPUT
    }

    /// Whether actions wait for [`Core::poll_action`].
    pub(crate) fn has_actions(&self) -> bool {
        !self.actions.is_empty()
    }

    /// Whether the client may still be there: no end of input seen yet. The driver checks
    /// for one before an upload's end is reported (see [`Core::handle_transfer`]).
    pub(crate) fn input_open(&self) -> bool {
        match &self.state {
            State::Closed => false,
            State::Transferring(r) => r.then != Some(Close::Vanished),
            _ => true,
        }
    }

    /// Whether a user is logged in.
    pub(crate) fn is_logged_in(&self) -> bool {
        self.account.is_some()
    }

    /// Whether the session is over: close the connection once [`Core::transmit`] is empty.
    pub(crate) fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// The state, for tests and STAT.
    #[cfg(test)]
    pub(crate) fn state(&self) -> &State {
        &self.state
    }

    /// The next deadline: login timeout, failed-login delay, accept timeout of an idle
    /// endpoint, idle timeout. [`Core::handle_timeout`] once it has passed.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |at: Instant| next = Some(next.map_or(at, |n| n.min(at)));
        if !self.is_closed() {
            if let Some(at) = self.login_deadline {
                consider(at);
            }
        }
        match &self.state {
            State::LoginFailed { until, .. } => consider(*until),
            State::Ready => match self.data {
                Data::Passive { until } | Data::Connected { until } => consider(until),
                Data::None | Data::Active => {}
            },
            _ => {}
        }
        if self.idle_applies() {
            consider(self.idle_due());
        }
        next
    }

    // ---- events ----

    /// Control input was read into [`Core::input_buffer`]: decode what may be decoded now.
    pub(crate) fn handle_input(&mut self, now: Instant) {
        self.pump(now);
    }

    /// The client closed its side of the control connection (or reading it failed).
    pub(crate) fn handle_eof(&mut self, now: Instant) {
        match &mut self.state {
            State::Closed => {}
            // The client is gone: the transfer is abandoned (an upload must not be
            // committed for a client that vanished), and the session ends after it.
            State::Transferring(running) => {
                if running.then.is_none() {
                    running.then = Some(Close::Vanished);
                    self.actions.push_back(Action::AbortTransfer);
                }
            }
            State::Busy(_) | State::Authenticating { .. } | State::LoginFailed { .. } => {
                self.queued.push_front(Queued::Close(Close::Vanished));
            }
            // A client that half-closed may still read what it asked for: the replies
            // already waiting go out, then the connection closes.
            _ => self.close(now, Close::Vanished),
        }
    }

    /// The server is shutting down: end the session once its transfer (if any) is done.
    pub(crate) fn handle_shutdown(&mut self, now: Instant) {
        match &mut self.state {
            State::Closed => {}
            State::Transferring(running) => {
                running.then.get_or_insert(Close::Shutdown);
            }
            State::Busy(_) | State::Authenticating { .. } | State::LoginFailed { .. } => {
                self.queued.push_front(Queued::Close(Close::Shutdown));
            }
            _ => self.close(now, Close::Shutdown),
        }
    }

    /// `n` bytes of [`Core::transmit`] were written (zero: the socket took none).
    pub(crate) fn handle_written(&mut self, now: Instant, n: usize) {
        let held_back = self.out.len() > MAX_PENDING_OUTPUT;
        self.out.advance(n.min(self.out.len()));
        if !self.out.is_empty() {
            if n > 0 || self.write_stalled_since.is_none() {
                self.write_stalled_since = Some(now);
            }
        } else if self.write_stalled_since.take().is_some() {
            // The client read its backlog: that is activity too.
            self.last_activity = now;
        }
        if held_back && self.out.len() <= MAX_PENDING_OUTPUT {
            // Room again: commands already read wait in the input.
            self.pump(now);
        }
    }

    /// The transfer's progress, for STAT during it.
    pub(crate) fn handle_progress(&mut self, bytes: u64) {
        if let State::Transferring(running) = &mut self.state {
            running.progress = bytes;
        }
    }

    /// A deadline of [`Core::poll_timeout`] may have passed.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.is_closed() && self.out.is_empty() {
            return;
        }
        if !self.is_closed() && self.login_deadline.is_some_and(|at| now >= at) {
            tracing::info!(session = self.id, peer = %self.peer, "login timeout");
            self.queued.clear();
            return self.close(now, Close::LoginTimeout);
        }
        if let State::LoginFailed { until, banned } = self.state {
            if now >= until {
                self.state = State::AwaitingUser;
                if banned {
                    self.close(now, Close::Banned);
                } else if self.failed_logins >= self.rules.max_login_fails {
                    self.close(now, Close::TooManyFailures);
                } else {
                    self.reply(ReplyCode::NOT_LOGGED_IN, b"Login incorrect.");
                }
                return self.pump(now);
            }
        }
        if matches!(self.state, State::Ready) {
            match self.data {
                Data::Connected { until } if now >= until => {
                    self.data = Data::None;
                    self.actions.push_back(Action::ReleaseData);
                }
                Data::Passive { until } if now >= until => {
                    self.data = Data::None;
                    self.actions.push_back(Action::AcceptDue);
                }
                _ => {}
            }
        }
        if self.idle_applies() && now >= self.idle_due() {
            if self.out.is_empty() {
                self.close(now, Close::Idle);
            } else {
                // Nothing more can reach this client: the driver resets the connection,
                // which frees it and its unsent replies at once.
                self.actions.push_back(Action::Reset {
                    unread: self.out.len(),
                });
                self.state = State::Closed;
                self.out.clear();
            }
        }
    }

    /// The answer to [`Action::AcceptDue`]: the client's connection was waiting and is
    /// taken; it gets `accept_timeout` again to be used.
    pub(crate) fn handle_connection_taken(&mut self, now: Instant) {
        self.data = Data::Connected {
            until: now + self.rules.accept_timeout,
        };
    }

    /// The answer to [`Action::SecureControl`]: the control connection's TLS handshake
    /// succeeded (`true`) and commands are read through TLS from now on, or it failed and
    /// the session is over (nothing can be written to the client any more).
    pub(crate) fn handle_secured(&mut self, now: Instant, ok: bool) {
        if !matches!(self.state, State::Securing) {
            return;
        }
        // Whatever came in plaintext after AUTH is not the client's protected command
        // stream: dropped (the driver reads nothing in between, this is belt and braces).
        self.drop_plaintext_input();
        if ok {
            self.tls.control = true;
            self.state = State::AwaitingUser;
            self.last_activity = now;
            self.pump(now);
        } else {
            self.state = State::Closed;
            self.queued.clear();
            self.out.clear();
        }
    }

    /// The answer to [`Action::Verify`].
    pub(crate) fn handle_verified(&mut self, now: Instant, verified: Verified) {
        let State::Authenticating { name: user } = &self.state else {
            return;
        };
        let user = pasv_protocol::Escaped::new(user).to_string();
        match verified {
            Verified::Granted {
                name,
                write,
                anonymous,
                admin,
            } => {
                self.metrics.login(LoginResult::Ok);
                tracing::info!(session = self.id, peer = %self.peer, user = %name, write, "login");
                self.account = Some(Account {
                    name,
                    write,
                    anonymous,
                    admin,
                });
                self.login_deadline = None;
                self.state = State::Ready;
                self.reply(ReplyCode::LOGGED_IN, b"Login successful.");
            }
            Verified::Failed { delay, banned } => {
                self.metrics.login(LoginResult::Failed);
                self.failed_logins += 1;
                tracing::warn!(session = self.id, peer = %self.peer, user = %user, attempts = self.failed_logins, "login failed");
                // The delay is the defence against guessing; it also holds the session's
                // other commands, which is the point. It grows with the address's failures.
                let delay = delay.unwrap_or(self.rules.login_fail_delay);
                self.state = State::LoginFailed {
                    until: now + delay,
                    banned,
                };
                return;
            }
            Verified::Banned => {
                self.metrics.login(LoginResult::Banned);
                self.state = State::AwaitingUser;
                self.close(now, Close::Banned);
            }
        }
        self.pump(now);
    }

    /// The answer to [`Action::OpenPassive`].
    pub(crate) fn handle_passive(&mut self, now: Instant, passive: Passive) {
        let State::Busy(Pending::Passive { extended }) = self.state else {
            return;
        };
        self.state = State::Ready;
        match passive {
            Passive::Opened(addr) => {
                match (extended, addr) {
                    (false, SocketAddr::V4(v4)) => {
                        self.metrics.reply(ReplyCode::ENTERING_PASSIVE.get());
                        Reply::encode_entering_passive(v4, &mut self.out);
                    }
                    (false, SocketAddr::V6(_)) => {
                        self.actions.push_back(Action::ReleaseData);
                        self.reply(ReplyCode::NOT_IMPLEMENTED, PASV_NO_V4);
                        return self.pump(now);
                    }
                    (true, addr) => {
                        self.metrics
                            .reply(ReplyCode::ENTERING_EXTENDED_PASSIVE.get());
                        Reply::encode_entering_extended_passive(addr.port(), &mut self.out);
                    }
                }
                self.data = Data::Passive {
                    until: now + self.rules.accept_timeout,
                };
            }
            // A 227 reply can only carry IPv4, and no retry will change that: a permanent
            // reply, so clients go to EPSV instead of retrying (a 425 would invite retries).
            Passive::NoIpv4 | Passive::Refused(PassiveRefusal::NoAddress) if !extended => {
                self.reply(ReplyCode::NOT_IMPLEMENTED, PASV_NO_V4)
            }
            Passive::NoIpv4 | Passive::Refused(PassiveRefusal::NoAddress) => self.reply(
                ReplyCode::PROTOCOL_NOT_SUPPORTED,
                b"Network protocol not supported: no passive address of this family.",
            ),
            Passive::Refused(refusal) => self.refused(refusal),
        }
        self.pump(now);
    }

    /// The answer to [`Action::PoolReport`]: its text, lines separated by `\n`.
    pub(crate) fn handle_pool_report(&mut self, now: Instant, text: &str) {
        if let State::Busy(Pending::PoolReport) = self.state {
            self.state = State::Ready;
            self.multi(ReplyCode::OK, text);
            self.pump(now);
        }
    }

    /// The answer to [`Action::Fs`].
    pub(crate) fn handle_fs(&mut self, now: Instant, result: Result<FsDone, FsError>) {
        let State::Busy(pending) = std::mem::replace(&mut self.state, State::Ready) else {
            return;
        };
        match (pending, result) {
            (Pending::Commit { running, mut end }, result) => {
                let name = match result {
                    Ok(FsDone::Committed(name)) => name,
                    Ok(_) => None,
                    Err(e) => {
                        end.ending = Ending::Local(e.into());
                        None
                    }
                };
                self.finish(running, end, name);
            }
            (_, Err(e)) => self.fs_error(&e),
            (Pending::Cwd(path), Ok(_)) => {
                self.cwd = path;
                self.reply(
                    ReplyCode::FILE_ACTION_OK,
                    b"Directory successfully changed.",
                );
            }
            (Pending::Size, Ok(FsDone::Meta(m))) if m.kind == Kind::File => {
                self.reply(ReplyCode::FILE_STATUS, m.size.to_string().as_bytes())
            }
            (Pending::Size, Ok(_)) => self.fs_error(&FsError::NotRegular),
            (Pending::Mdtm, Ok(FsDone::Meta(m))) => {
                let text = Civil::from_unix(m.mtime).time_val();
                self.reply(ReplyCode::FILE_STATUS, text.as_bytes());
            }
            (Pending::Mkd(path), Ok(_)) => {
                let mut text = quote_path(&path);
                text.extend_from_slice(b" created");
                self.reply(ReplyCode::PATHNAME_CREATED, &text);
            }
            (Pending::Rnfr(path), Ok(_)) => {
                self.rnfr = Some(path);
                self.reply(ReplyCode::FILE_ACTION_PENDING, b"Ready for RNTO.");
            }
            (Pending::Done(code, text), Ok(_)) => self.reply(code, text),
            (Pending::Mfmt { civil, path }, Ok(_)) => {
                let mut text = format!("Modify={}; ", civil.time_val()).into_bytes();
                text.extend_from_slice(&path);
                self.reply(ReplyCode::FILE_STATUS, &text);
            }
            (Pending::Mlst(path), Ok(FsDone::Meta(meta))) => {
                let mut text = b"Listing ".to_vec();
                text.extend_from_slice(&path);
                text.extend_from_slice(b"\n ");
                listing::mlsx_facts(&meta, self.writable(), None, &mut text);
                text.push(b' ');
                text.extend(path.iter().map(|&b| if b == b'\n' { b'?' } else { b }));
                text.extend_from_slice(b"\nEnd");
                self.multi(ReplyCode::FILE_ACTION_OK, text);
            }
            (Pending::StatListing, Ok(FsDone::Rendered(body))) => {
                self.multi(ReplyCode::FILE_STATUS, stat_listing(&body))
            }
            (Pending::MlsdCheck { path, writable }, Ok(FsDone::Meta(m))) => {
                if m.kind != Kind::Dir {
                    self.reply(ReplyCode::SYNTAX_ERROR_ARGS, b"MLSD needs a directory.");
                } else if self.data == Data::None {
                    self.reply(ReplyCode::CANT_OPEN_DATA, NO_DATA);
                } else {
                    self.busy(
                        Pending::Listing {
                            path: path.clone(),
                            verb: "MLSD",
                        },
                        FsOp::Render {
                            path,
                            format: Format::Mlsd { writable },
                        },
                    );
                    return;
                }
            }
            (Pending::Listing { path, verb }, Ok(FsDone::Rendered(body))) => {
                self.reply(
                    ReplyCode::FILE_STATUS_OK,
                    b"Here comes the directory listing.",
                );
                self.start(Job::Listing(body), verb, path, None);
            }
            (Pending::Retr { path }, Ok(FsDone::Opened { len })) => {
                let ascii = self.ascii();
                // The count is of the stored file's bytes; in TYPE A more may cross the wire.
                let mode: &[u8] = if ascii { b"ASCII" } else { b"BINARY" };
                let mut text = Vec::with_capacity(64 + path.len());
                text.extend_from_slice(b"Opening ");
                text.extend_from_slice(mode);
                text.extend_from_slice(b" mode data connection for ");
                text.extend_from_slice(&path);
                text.extend_from_slice(b" (");
                text.extend_from_slice(pasv_protocol::decimal(len, &mut [0; 20]));
                text.extend_from_slice(b" bytes).");
                self.reply(ReplyCode::FILE_STATUS_OK, &text);
                self.start(Job::Download { ascii }, "RETR", path, None);
            }
            (Pending::Store { path, kind }, Ok(FsDone::Prepared)) => {
                if kind == StoreKind::Stou {
                    self.reply(
                        ReplyCode::FILE_STATUS_OK,
                        b"FILE: unique name given in the final reply.",
                    );
                } else {
                    self.reply(ReplyCode::FILE_STATUS_OK, b"Ok to send data.");
                }
                let target = (path.clone(), kind == StoreKind::Stou);
                let ascii = self.ascii();
                self.start(Job::Upload { ascii }, kind.verb(), path, Some(target));
            }
            (pending, Ok(done)) => {
                tracing::warn!(
                    session = self.id,
                    ?pending,
                    ?done,
                    "unexpected filesystem answer"
                );
                self.reply(ReplyCode::LOCAL_ERROR, b"Internal error.");
            }
        }
        self.pump(now);
    }

    /// The answer to [`Action::StartTransfer`]: the transfer ended.
    pub(crate) fn handle_transfer(&mut self, now: Instant, mut end: TransferEnd) {
        let State::Transferring(mut running) = std::mem::replace(&mut self.state, State::Ready)
        else {
            return;
        };
        self.last_activity = now;
        if end.upload_ready {
            end.upload_ready = false;
            let commit = matches!(end.ending, Ending::Complete) && running.then.is_none();
            match running.target.take() {
                Some((target, unique)) if commit => {
                    // The target is resolved again now, beneath the root: a directory
                    // renamed or removed during the transfer fails the upload.
                    self.state = State::Busy(Pending::Commit { running, end });
                    self.actions
                        .push_back(Action::Fs(FsOp::Commit { target, unique }));
                    return;
                }
                _ => {
                    // A clean EOF on the data connection from a client whose control
                    // connection closed too was not the end of an upload on purpose.
                    if matches!(end.ending, Ending::Complete) {
                        end.ending = Ending::Aborted;
                    }
                    self.actions.push_back(Action::DiscardUpload);
                }
            }
        }
        self.finish(running, end, None);
        self.pump(now);
    }

    // ---- the command loop ----

    /// Runs queued commands and decodes input while the session may: not while it waits
    /// for the outside world, not while too many replies wait unsent.
    fn pump(&mut self, now: Instant) {
        loop {
            if self.out.len() > MAX_PENDING_OUTPUT {
                // The client is not reading its replies: decode nothing more until it has.
                return;
            }
            match &self.state {
                State::AwaitingUser | State::AwaitingPass { .. } | State::Ready => {
                    if let Some(queued) = self.queued.pop_front() {
                        match queued {
                            Queued::Command(cmd) => self.command(now, cmd),
                            Queued::Close(close) => self.close(now, close),
                        }
                        continue;
                    }
                }
                State::Transferring(_) if self.queued.len() < MAX_QUEUED => {}
                _ => return,
            }
            match self.decoder.decode(&mut self.input) {
                Ok(Some(cmd)) => {
                    self.last_activity = now;
                    self.metrics.command();
                    if matches!(self.state, State::Transferring(_)) {
                        self.during_transfer(cmd);
                    } else {
                        self.command(now, cmd);
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    let text = e.to_string();
                    self.reply(e.reply_code(), text.as_bytes());
                }
            }
        }
    }

    /// Commands that cannot wait for a running transfer; the rest are queued.
    fn during_transfer(&mut self, cmd: Command) {
        let State::Transferring(running) = &mut self.state else {
            return;
        };
        match cmd {
            Command::Abor => {
                if !running.abor_received {
                    running.abor_received = true;
                    self.actions.push_back(Action::AbortTransfer);
                }
            }
            Command::Stat(None) => {
                let text = format!(
                    "Status: {} {} bytes transferred",
                    running.verb, running.progress
                );
                self.reply(ReplyCode::FILE_STATUS, text.as_bytes());
            }
            Command::Noop => self.reply(ReplyCode::OK, b"NOOP ok."),
            // QUIT waits its turn like the rest: RFC 959 closes after the transfer's reply,
            // and commands sent before it still get theirs.
            other => self.queued.push_back(Queued::Command(other)),
        }
    }

    fn close(&mut self, _now: Instant, close: Close) {
        self.state = State::Closed;
        self.queued.clear();
        // A client that vanished while nothing ran is owed nothing more; what it asked for
        // before still goes out.
        if close != Close::Vanished {
            let (code, text) = close.reply();
            self.reply(code, text);
        }
    }

    fn command(&mut self, now: Instant, cmd: Command) {
        tracing::debug!(session = self.id, command = %cmd, "command");
        // Commands allowed before login.
        match cmd {
            Command::User(name) => self.user(name),
            Command::Pass(password) => self.pass(password),
            Command::Quit => self.close(now, Close::Quit),
            Command::Feat if self.rules.tls => self.multi(ReplyCode::SYSTEM_STATUS, FEATURES_TLS),
            Command::Feat => self.multi(ReplyCode::SYSTEM_STATUS, FEATURES),
            Command::Syst => self.reply(ReplyCode::SYSTEM_TYPE, b"UNIX Type: L8"),
            Command::Help(_) => self.multi(ReplyCode::HELP, HELP),
            Command::Noop => self.reply(ReplyCode::OK, b"NOOP ok."),
            Command::Auth(arg) => self.auth(arg.as_bytes()),
            Command::Pbsz(arg) => self.pbsz(arg.as_bytes()),
            Command::Prot(arg) => self.prot(arg.as_bytes()),
            Command::Ccc if self.tls.control => self.reply(
                ReplyCode::DENIED_FOR_POLICY,
                b"CCC refused: the control connection stays protected.",
            ),
            Command::Ccc => self.reply(
                ReplyCode::PROTECTION_DENIED,
                b"Control connection is not protected.",
            ),
            Command::Opts(arg) => self.opts(arg.as_bytes()),
            Command::Clnt(_) => self.reply(ReplyCode::OK, b"Noted."),
            Command::Host(_) => match self.account {
                Some(_) => self.reply(ReplyCode::BAD_SEQUENCE, b"HOST must come before USER."),
                None => self.reply(ReplyCode::SERVICE_READY, b"Host accepted."),
            },
            Command::Abor => {
                self.release_data();
                self.reply(ReplyCode::CLOSING_DATA, b"No transfer to abort.");
            }
            Command::Rein => {
                self.release_data();
                if self.account.take().is_some() {
                    self.login_deadline = Some(now + self.rules.login_timeout);
                }
                self.state = State::AwaitingUser;
                self.cwd = b"/".to_vec();
                self.rest = 0;
                self.rnfr = None;
                self.epsv_all = false;
                self.reply(ReplyCode::SERVICE_READY, b"Ready for a new user.");
            }
            Command::Unknown { verb, .. } => {
                let text = format!("{} not implemented.", verb.to_string_lossy());
                self.reply(ReplyCode::NOT_IMPLEMENTED, text.as_bytes());
            }
            _ if self.account.is_none() => {
                self.reply(
                    ReplyCode::NOT_LOGGED_IN,
                    b"Please login with USER and PASS.",
                );
            }
            cmd => self.logged_in(cmd),
        }
    }

    /// `tls_required` login or all: USER and PASS only on a protected control connection.
    fn login_refused(&mut self) -> bool {
        if self.rules.tls_required.login() && !self.tls.control {
            self.reply(
                ReplyCode::NOT_LOGGED_IN,
                b"TLS required: send AUTH TLS before USER and PASS.",
            );
            return true;
        }
        false
    }

    /// `tls_required` data or all: transfers only over protected data connections.
    fn data_refused(&mut self) -> bool {
        if self.rules.tls_required.data() && !self.tls.private {
            self.reply(
                PROT_REFUSED,
                b"Data connection cannot be opened with this PROT setting: TLS required, send PBSZ 0 and PROT P.",
            );
            return true;
        }
        false
    }

    fn auth(&mut self, arg: &[u8]) {
        if !self.rules.tls {
            return self.reply(
                ReplyCode::NOT_IMPLEMENTED_FOR_PARAM,
                b"AUTH not supported: TLS is not configured on this server.",
            );
        }
        let known = [&b"TLS"[..], b"TLS-C", b"SSL"]
            .iter()
            .any(|m| arg.eq_ignore_ascii_case(m));
        if !known {
            return self.reply(
                ReplyCode::NOT_IMPLEMENTED_FOR_PARAM,
                b"AUTH mechanism not supported (TLS or SSL).",
            );
        }
        if self.tls.control {
            return self.reply(ReplyCode::BAD_SEQUENCE, b"Already using TLS.");
        }
        if !matches!(self.state, State::AwaitingUser) || self.account.is_some() {
            return self.reply(ReplyCode::BAD_SEQUENCE, b"AUTH must come before USER.");
        }
        self.reply(ReplyCode::AUTH_OK, b"Proceed with TLS negotiation.");
        // Everything the client sent after the AUTH line was sent in plaintext before the
        // handshake: never taken as a command (the STARTTLS command injection). That is the
        // undecoded input and the commands queued during a transfer (REIN, AUTH TLS, then
        // more, all pipelined while a transfer ran: AUTH came from the queue).
        self.drop_plaintext_input();
        self.state = State::Securing;
        self.actions.push_back(Action::SecureControl);
    }

    fn pbsz(&mut self, arg: &[u8]) {
        if !self.tls.control {
            return self.reply(ReplyCode::BAD_SEQUENCE, b"PBSZ needs AUTH TLS first.");
        }
        if arg.is_empty() || !arg.iter().all(u8::is_ascii_digit) {
            return self.reply(ReplyCode::SYNTAX_ERROR_ARGS, b"PBSZ needs a number (0).");
        }
        self.tls.pbsz = true;
        // TLS is a stream: the only buffer size is 0 (RFC 4217 section 8).
        self.reply(ReplyCode::OK, b"PBSZ=0");
    }

    fn prot(&mut self, arg: &[u8]) {
        if !self.tls.control {
            return self.reply(ReplyCode::BAD_SEQUENCE, b"PROT needs AUTH TLS first.");
        }
        if !self.tls.pbsz {
            return self.reply(ReplyCode::BAD_SEQUENCE, b"PROT needs PBSZ first.");
        }
        match arg {
            [b'P' | b'p'] => {
                self.tls.private = true;
                self.reply(ReplyCode::OK, b"Protection level set to Private.");
            }
            [b'C' | b'c'] => {
                if self.rules.tls_required.data() {
                    return self.reply(
                        ReplyCode::DENIED_FOR_POLICY,
                        b"PROT C refused: data connections must be protected.",
                    );
                }
                self.tls.private = false;
                self.reply(ReplyCode::OK, b"Protection level set to Clear.");
            }
            [b'S' | b's' | b'E' | b'e'] => self.reply(
                PROT_UNSUPPORTED,
                b"Protection level not supported (P or C).",
            ),
            _ => self.reply(
                ReplyCode::NOT_IMPLEMENTED_FOR_PARAM,
                b"Unknown protection level (P or C).",
            ),
        }
    }

    fn user(&mut self, name: Argument) {
        if self.account.is_some() {
            return self.reply(ReplyCode::NOT_LOGGED_IN, b"Can't change to another user.");
        }
        if self.login_refused() {
            return;
        }
        let name = name.as_bytes();
        if is_anonymous_name(name) && !self.rules.anonymous_allowed {
            self.state = State::AwaitingUser;
            return self.reply(ReplyCode::NOT_LOGGED_IN, b"Anonymous login not allowed.");
        }
        self.state = State::AwaitingPass {
            name: name.to_vec(),
        };
        self.reply(ReplyCode::NEED_PASSWORD, b"Please specify the password.");
    }

    fn pass(&mut self, password: Password) {
        if self.account.is_some() {
            return self.reply(ReplyCode::LOGGED_IN, b"Already logged in.");
        }
        if self.login_refused() {
            return;
        }
        match std::mem::replace(&mut self.state, State::AwaitingUser) {
            State::AwaitingPass { name } => {
                self.state = State::Authenticating { name: name.clone() };
                self.actions.push_back(Action::Verify { name, password });
            }
            other => {
                self.state = other;
                self.reply(ReplyCode::BAD_SEQUENCE, b"Login with USER first.");
            }
        }
    }

    fn opts(&mut self, arg: &[u8]) {
        let mut words = arg.splitn(2, |&b| b == b' ');
        let name = words.next().unwrap_or(b"");
        let value = words.next().unwrap_or(b"");
        if name.eq_ignore_ascii_case(b"UTF8") || name.eq_ignore_ascii_case(b"UTF-8") {
            if value.is_empty() || value.eq_ignore_ascii_case(b"ON") {
                self.reply(ReplyCode::OK, b"Always in UTF8 mode.");
            } else {
                self.reply(
                    ReplyCode::NOT_IMPLEMENTED_FOR_PARAM,
                    b"UTF8 cannot be turned off.",
                );
            }
        } else if name.eq_ignore_ascii_case(b"MLST") {
            self.reply(ReplyCode::OK, b"MLST OPTS type;size;modify;perm;unix.mode;");
        } else {
            self.reply(ReplyCode::SYNTAX_ERROR_ARGS, b"Option not understood.");
        }
    }

    fn logged_in(&mut self, cmd: Command) {
        match cmd {
            Command::Acct(_) => self.reply(ReplyCode::COMMAND_SUPERFLUOUS, b"ACCT not needed."),
            Command::Allo(_) => self.reply(ReplyCode::COMMAND_SUPERFLUOUS, b"ALLO not needed."),
            Command::Smnt(_) => self.reply(ReplyCode::NOT_IMPLEMENTED, b"SMNT not implemented."),
            Command::Pwd => {
                let mut text = quote_path(&self.cwd);
                text.extend_from_slice(b" is the current directory");
                self.reply(ReplyCode::PATHNAME_CREATED, &text);
            }
            Command::Cwd(arg) => self.cwd(arg.as_bytes()),
            Command::Cdup => self.cwd(b".."),
            Command::Type(t) => match t {
                TransferType::Ascii => {
                    self.binary = false;
                    self.reply(ReplyCode::OK, b"Switching to ASCII mode.");
                }
                TransferType::Image | TransferType::Local(8) => {
                    self.binary = true;
                    self.reply(ReplyCode::OK, b"Switching to Binary mode.");
                }
                _ => self.reply(ReplyCode::NOT_IMPLEMENTED_FOR_PARAM, b"Type not supported."),
            },
            Command::Mode(TransferMode::Stream) => self.reply(ReplyCode::OK, b"Mode set to S."),
            Command::Mode(_) => self.reply(
                ReplyCode::NOT_IMPLEMENTED_FOR_PARAM,
                b"Only stream mode is supported.",
            ),
            Command::Stru(Structure::File) => self.reply(ReplyCode::OK, b"Structure set to F."),
            Command::Stru(_) => self.reply(
                ReplyCode::NOT_IMPLEMENTED_FOR_PARAM,
                b"Only file structure is supported.",
            ),
            Command::Rest(offset) => {
                self.rest = offset;
                let text = format!("Restart position accepted ({offset}).");
                self.reply(ReplyCode::FILE_ACTION_PENDING, text.as_bytes());
            }
            Command::Port(addr) => self.active(SocketAddr::V4(addr)),
            Command::Eprt(addr) => self.active(addr),
            Command::Pasv => self.pasv(),
            Command::Epsv(arg) => self.epsv(arg),
            Command::Size(arg) => {
                if let Some(path) = self.path_of(arg.as_bytes()) {
                    self.busy(Pending::Size, FsOp::Stat(path));
                }
            }
            Command::Mdtm(arg) => {
                if let Some(path) = self.path_of(arg.as_bytes()) {
                    self.busy(Pending::Mdtm, FsOp::Stat(path));
                }
            }
            Command::Mfmt { time, path } => self.mfmt(time.as_bytes(), path.as_bytes()),
            Command::Mkd(arg) => {
                if let Some(path) = self.writable_path(arg.as_bytes()) {
                    self.busy(Pending::Mkd(path.clone()), FsOp::Mkdir(path));
                }
            }
            Command::Rmd(arg) => {
                if let Some(path) = self.writable_path(arg.as_bytes()) {
                    let done = Pending::Done(ReplyCode::FILE_ACTION_OK, b"Directory removed.");
                    self.busy(done, FsOp::Rmdir(path));
                }
            }
            Command::Dele(arg) => {
                if let Some(path) = self.writable_path(arg.as_bytes()) {
                    let done = Pending::Done(ReplyCode::FILE_ACTION_OK, b"File deleted.");
                    self.busy(done, FsOp::Delete(path));
                }
            }
            Command::Rnfr(arg) => {
                if let Some(path) = self.writable_path(arg.as_bytes()) {
                    self.busy(Pending::Rnfr(path.clone()), FsOp::Exists(path));
                }
            }
            Command::Rnto(arg) => {
                let Some(from) = self.rnfr.take() else {
                    return self.reply(ReplyCode::BAD_SEQUENCE, b"RNFR required first.");
                };
                if let Some(to) = self.writable_path(arg.as_bytes()) {
                    let done = Pending::Done(ReplyCode::FILE_ACTION_OK, b"Rename successful.");
                    self.busy(done, FsOp::Rename { from, to });
                }
            }
            Command::Site(arg) => self.site(arg.as_bytes()),
            Command::Stat(None) => {
                let text = format!(
                    "pasvd status:\n Connected to {}\n Logged in as {}\n TYPE: {}, MODE: S, STRU: F\n Data: {}\nEnd of status",
                    self.peer.ip(),
                    self.account.as_ref().map_or("?", |a| a.name.as_str()),
                    if self.binary { "BINARY" } else { "ASCII" },
                    match self.data {
                        Data::None => "none",
                        Data::Passive { .. } => "passive, waiting",
                        Data::Connected { .. } => "passive, connected",
                        Data::Active => "active",
                    }
                );
                self.multi(ReplyCode::SYSTEM_STATUS, text);
            }
            Command::Stat(Some(arg)) => {
                let args = listing::list_args(Some(arg.as_bytes()));
                if let Some(path) = self.path_of(args.path.unwrap_or(b"")) {
                    let format = Format::List { all: args.all };
                    self.busy(Pending::StatListing, FsOp::Render { path, format });
                }
            }
            Command::Mlst(arg) => {
                let arg = arg.as_ref().map_or(&b""[..], |a| a.as_bytes());
                if let Some(path) = self.path_of(arg) {
                    self.busy(Pending::Mlst(path.clone()), FsOp::Stat(path));
                }
            }
            Command::List(_)
            | Command::Nlst(_)
            | Command::Mlsd(_)
            | Command::Retr(_)
            | Command::Stor(_)
            | Command::Appe(_)
            | Command::Stou(_)
                if self.data_refused() => {}
            Command::List(arg) => {
                let args = listing::list_args(arg.as_ref().map(Argument::as_bytes));
                self.listing(args.path, Format::List { all: args.all }, "LIST");
            }
            Command::Nlst(arg) => {
                let args = listing::list_args(arg.as_ref().map(Argument::as_bytes));
                self.listing(args.path, Format::Nlst, "NLST");
            }
            Command::Mlsd(arg) => {
                let writable = self.writable();
                let path = arg.as_ref().map(Argument::as_bytes);
                self.listing(path, Format::Mlsd { writable }, "MLSD");
            }
            Command::Retr(arg) => self.retr(arg.as_bytes()),
            Command::Stor(arg) => self.store(Some(arg.as_bytes()), StoreKind::Stor),
            Command::Appe(arg) => self.store(Some(arg.as_bytes()), StoreKind::Appe),
            Command::Stou(arg) => self.store(arg.as_ref().map(Argument::as_bytes), StoreKind::Stou),
            other => {
                let text = format!("{} not implemented.", other.verb());
                self.reply(ReplyCode::NOT_IMPLEMENTED, text.as_bytes());
            }
        }
    }

    fn cwd(&mut self, arg: &[u8]) {
        if let Some(path) = self.path_of(arg) {
            self.busy(Pending::Cwd(path.clone()), FsOp::IsDir(path));
        }
    }

    fn mfmt(&mut self, time: &[u8], path: &[u8]) {
        if self.read_only() {
            return;
        }
        let Some(civil) = Civil::parse_time_val(time) else {
            return self.reply(
                ReplyCode::SYNTAX_ERROR_ARGS,
                b"Bad time value (YYYYMMDDHHMMSS).",
            );
        };
        let secs = civil.to_unix();
        if secs < 0 {
            return self.reply(
                ReplyCode::SYNTAX_ERROR_ARGS,
                b"Times before 1970 are not supported.",
            );
        }
        if let Some(path) = self.path_of(path) {
            let op = FsOp::SetModified {
                path: path.clone(),
                secs,
            };
            self.busy(Pending::Mfmt { civil, path }, op);
        }
    }

    fn site(&mut self, arg: &[u8]) {
        let mut words = arg.splitn(3, |&b| b == b' ');
        let verb = words.next().unwrap_or(b"");
        if verb.eq_ignore_ascii_case(b"HELP") {
            return self.multi(ReplyCode::HELP, "SITE commands:\n CHMOD HELP POOL\nEnd");
        }
        if verb.eq_ignore_ascii_case(b"POOL") {
            if !self.account.as_ref().is_some_and(|a| a.admin) {
                return self.reply(
                    ReplyCode::FILE_UNAVAILABLE,
                    b"SITE POOL is for administrators.",
                );
            }
            self.state = State::Busy(Pending::PoolReport);
            return self.actions.push_back(Action::PoolReport);
        }
        if !verb.eq_ignore_ascii_case(b"CHMOD") {
            return self.reply(
                ReplyCode::NOT_IMPLEMENTED_FOR_PARAM,
                b"Unknown SITE command.",
            );
        }
        if self.read_only() {
            return;
        }
        let (Some(mode), Some(path)) = (words.next(), words.next()) else {
            return self.reply(ReplyCode::SYNTAX_ERROR_ARGS, b"SITE CHMOD mode path.");
        };
        let mode = std::str::from_utf8(mode)
            .ok()
            .and_then(|m| u32::from_str_radix(m, 8).ok())
            .filter(|m| *m <= 0o7777);
        let Some(mode) = mode else {
            return self.reply(ReplyCode::SYNTAX_ERROR_ARGS, b"Bad mode (octal).");
        };
        if mode & !0o777 != 0 {
            return self.reply(
                ReplyCode::SYNTAX_ERROR_ARGS,
                b"Setuid, setgid and sticky bits cannot be set.",
            );
        }
        if let Some(path) = self.path_of(path) {
            let done = Pending::Done(ReplyCode::OK, b"SITE CHMOD command ok.");
            self.busy(done, FsOp::Chmod { path, mode });
        }
    }

    fn active(&mut self, addr: SocketAddr) {
        if !self.rules.port_enable {
            return self.reply(
                ReplyCode::NOT_IMPLEMENTED,
                b"PORT and EPRT are disabled; use PASV or EPSV.",
            );
        }
        if self.epsv_all {
            return self.reply(ReplyCode::BAD_SEQUENCE, b"EPSV ALL in effect.");
        }
        // Checked before any connect: a foreign address or a privileged port is the FTP
        // bounce attack (RFC 2577 section 3).
        if addr.ip().to_canonical() != self.peer.ip().to_canonical() {
            tracing::warn!(session = self.id, target = %addr, "PORT to a foreign address refused");
            return self.reply(
                ReplyCode::SYNTAX_ERROR_ARGS,
                b"Data address must be the client's own address.",
            );
        }
        if addr.port() < self.rules.port_min_port {
            return self.reply(ReplyCode::SYNTAX_ERROR_ARGS, b"Data port too low.");
        }
        self.release_data();
        self.data = Data::Active;
        self.actions.push_back(Action::UseActive(addr));
        self.reply(
            ReplyCode::OK,
            b"PORT command successful. Consider using PASV.",
        );
    }

    fn pasv(&mut self) {
        if self.epsv_all {
            return self.reply(ReplyCode::BAD_SEQUENCE, b"EPSV ALL in effect.");
        }
        self.release_data();
        self.state = State::Busy(Pending::Passive { extended: false });
        self.actions
            .push_back(Action::OpenPassive { extended: false });
    }

    fn epsv(&mut self, arg: EpsvArg) {
        let local = self.local.ip().to_canonical();
        match arg {
            EpsvArg::All => {
                self.epsv_all = true;
                return self.reply(ReplyCode::OK, b"EPSV ALL ok.");
            }
            EpsvArg::Protocol(1) if local.is_ipv4() => {}
            EpsvArg::Protocol(2) if local.is_ipv6() => {}
            EpsvArg::Protocol(_) => {
                let family = if local.is_ipv4() { "(1)" } else { "(2)" };
                let text = format!("Network protocol not supported, use {family}");
                return self.reply(ReplyCode::PROTOCOL_NOT_SUPPORTED, text.as_bytes());
            }
            EpsvArg::Any => {}
        }
        self.release_data();
        self.state = State::Busy(Pending::Passive { extended: true });
        self.actions
            .push_back(Action::OpenPassive { extended: true });
    }

    /// The 425 (or 502) of a PASV/EPSV that got no port. Every 425 for a shortage of ports
    /// carries a retry hint; the one for an address at its lease cap says no time is known.
    fn refused(&mut self, refusal: PassiveRefusal) {
        match refusal {
            PassiveRefusal::Exhausted { retry_after: d } => {
                self.metrics.pool_refusal(RefusalCause::Cooling, Some(d));
                tracing::info!(
                    session = self.id,
                    retry_after_ms = d.as_millis() as u64,
                    "passive ports exhausted"
                );
                self.reply_full(&Reply::try_later(d));
            }
            PassiveRefusal::AllLeased { hint } => {
                tracing::info!(
                    session = self.id,
                    retry_after_ms = hint.as_millis() as u64,
                    "passive ports all leased"
                );
                self.metrics
                    .pool_refusal(RefusalCause::AllLeased, Some(hint));
                self.reply_full(&Reply::try_later(hint));
            }
            PassiveRefusal::PeerLimit { limit } => {
                self.metrics.pool_refusal(RefusalCause::PeerLimit, None);
                // No `retry after` hint: this address's leases end when its own transfers
                // or accept timeouts end them, which the server cannot foresee.
                tracing::info!(
                    session = self.id,
                    limit,
                    "passive leases per address at limit"
                );
                let text = format!(
                    "Too many data connections from your address ({limit} at once); \
                     wait for one of them to end (no time known)."
                );
                self.reply(ReplyCode::CANT_OPEN_DATA, text.as_bytes());
            }
            PassiveRefusal::NoAddress => self.reply(
                ReplyCode::NOT_IMPLEMENTED,
                b"No passive address of this family.",
            ),
            PassiveRefusal::Bind(e) => {
                // Something outside the pool holds the ports it picked; they are cooling
                // now, so another try soon may get a different one.
                tracing::warn!(session = self.id, error = %e, "passive ports unbindable");
                self.metrics
                    .pool_refusal(RefusalCause::Bind, Some(BIND_RETRY));
                self.reply_full(&Reply::try_later(BIND_RETRY));
            }
        }
    }

    fn listing(&mut self, path: Option<&[u8]>, format: Format, verb: &'static str) {
        self.rest = 0;
        let Some(path) = self.path_of(path.unwrap_or(b"")) else {
            return;
        };
        if let Format::Mlsd { writable } = format {
            return self.busy(
                Pending::MlsdCheck {
                    path: path.clone(),
                    writable,
                },
                FsOp::Stat(path),
            );
        }
        if self.data == Data::None {
            return self.reply(ReplyCode::CANT_OPEN_DATA, NO_DATA);
        }
        self.busy(
            Pending::Listing {
                path: path.clone(),
                verb,
            },
            FsOp::Render { path, format },
        );
    }

    fn retr(&mut self, arg: &[u8]) {
        let offset = std::mem::take(&mut self.rest);
        if self.data == Data::None {
            return self.reply(ReplyCode::CANT_OPEN_DATA, NO_DATA);
        }
        let Some(path) = self.path_of(arg) else {
            return;
        };
        let ascii = self.ascii();
        self.busy(
            Pending::Retr { path: path.clone() },
            FsOp::OpenDownload {
                path,
                offset,
                ascii,
            },
        );
    }

    fn store(&mut self, arg: Option<&[u8]>, kind: StoreKind) {
        let offset = std::mem::take(&mut self.rest);
        if self.read_only() {
            return;
        }
        if self.data == Data::None {
            return self.reply(ReplyCode::CANT_OPEN_DATA, NO_DATA);
        }
        let Some(path) = self.path_of(arg.unwrap_or(b"pasvd.stou")) else {
            return;
        };
        if kind == StoreKind::Stou && !super::vfs::unique_name_fits(&path) {
            return self.reply(
                ReplyCode::BAD_FILENAME,
                b"File name too long for a unique name.",
            );
        }
        // What of the old file the new one starts with: REST + STOR keeps `offset` bytes,
        // APPE all of them, copied into the upload's unnamed file so the old file stays
        // whole until the commit.
        let keep = match kind {
            StoreKind::Appe => u64::MAX,
            StoreKind::Stor => offset,
            StoreKind::Stou => 0,
        };
        self.busy(
            Pending::Store {
                path: path.clone(),
                kind,
            },
            FsOp::CreateUpload { path, keep },
        );
    }

    fn start(
        &mut self,
        job: Job,
        verb: &'static str,
        path: Vec<u8>,
        target: Option<(Vec<u8>, bool)>,
    ) {
        let incoming = matches!(job, Job::Upload { .. });
        // The endpoint goes to the transfer, which closes it.
        self.data = Data::None;
        self.state = State::Transferring(Running {
            verb,
            path,
            incoming,
            target,
            abor_received: false,
            progress: 0,
            then: None,
        });
        self.actions.push_back(Action::StartTransfer(job));
    }

    /// Logs a finished transfer and writes its final reply (and ABOR's, when it came).
    fn finish(&mut self, running: Running, end: TransferEnd, name: Option<Vec<u8>>) {
        let Running {
            verb,
            path,
            incoming,
            abor_received,
            then,
            ..
        } = running;
        let result = match end.ending {
            Ending::Complete => TransferResult::Complete,
            Ending::NoConnection(_) => TransferResult::NoConnection,
            Ending::Aborted => TransferResult::Aborted,
            Ending::Network(_) => TransferResult::NetworkError,
            Ending::Local(_) => TransferResult::LocalError,
        };
        let direction = Direction::of_verb(verb);
        self.metrics.transfer(direction, result, end.bytes);
        let closer = end.closer.map_or("none", |c| match c {
            Closer::Server => "server",
            Closer::Client => "client",
            Closer::Reset => "reset",
            Closer::NeverConnected => "never-connected",
        });
        // The fields are documented in docs/LOGS.md (the JSON log keeps their names).
        let error = match &end.ending {
            Ending::Complete | Ending::Aborted => None,
            Ending::NoConnection(why) => Some(why.clone()),
            Ending::Network(e) | Ending::Local(e) => Some(e.to_string()),
        };
        tracing::info!(
            session = self.id,
            peer = %self.peer_ip,
            user = self.account.as_ref().map_or("", |a| a.name.as_str()),
            command = verb,
            direction = direction.label(),
            path = %pasv_protocol::Escaped::new(&path),
            bytes = end.bytes,
            duration_us = end.duration.as_micros() as u64,
            port = end.port.unwrap_or(0),
            closer,
            result = result.label(),
            error = error.as_deref(),
            "transfer"
        );
        let complete = matches!(end.ending, Ending::Complete);
        match &end.ending {
            Ending::Complete => match name {
                Some(name) => {
                    let mut text = b"Transfer complete. FILE: ".to_vec();
                    text.extend_from_slice(&name);
                    self.reply(ReplyCode::CLOSING_DATA, &text);
                }
                None => self.reply(ReplyCode::CLOSING_DATA, b"Transfer complete."),
            },
            Ending::NoConnection(why) => {
                let text = format!("Can't open data connection: {why}.");
                self.reply(ReplyCode::CANT_OPEN_DATA, text.as_bytes());
            }
            Ending::Aborted => self.reply(
                ReplyCode::TRANSFER_ABORTED,
                b"Connection closed; transfer aborted.",
            ),
            Ending::Network(e) => {
                let text = format!("Connection closed; transfer aborted: {}.", network_text(e));
                self.reply(ReplyCode::TRANSFER_ABORTED, text.as_bytes());
            }
            Ending::Local(e) => {
                let text = format!("Local error: {}", io_text(e));
                self.reply(ReplyCode::LOCAL_ERROR, text.as_bytes());
            }
        }
        if abor_received {
            self.reply(ReplyCode::CLOSING_DATA, b"ABOR successful.");
        }
        if matches!(verb, "RETR" | "STOR" | "APPE" | "STOU") {
            self.actions.push_back(Action::Log(Finished {
                duration: end.duration,
                bytes: end.bytes,
                path,
                binary: !self.ascii(),
                incoming,
                anonymous: self.account.as_ref().is_some_and(|a| a.anonymous),
                user: self
                    .account
                    .as_ref()
                    .map_or_else(|| "?".to_owned(), |a| a.name.clone()),
                complete,
            }));
        }
        if let Some(close) = then {
            // The transfer's reply is out; the client (if still there) gets the last one.
            self.state = State::Closed;
            self.queued.clear();
            let (code, text) = close.reply();
            self.reply(code, text);
        }
    }

    // ---- helpers ----

    /// Forgets every command read but not yet run: the undecoded input, the decoder's
    /// state and the commands queued behind a transfer. Used when the control connection
    /// turns to TLS: nothing sent in plaintext before the handshake may run after it.
    fn drop_plaintext_input(&mut self) {
        self.input.clear();
        self.decoder = CommandDecoder::new();
        self.queued
            .retain(|queued| !matches!(queued, Queued::Command(_)));
    }

    /// Waits for the outside world: `op` runs, `pending` takes its answer.
    fn busy(&mut self, pending: Pending, op: FsOp) {
        self.state = State::Busy(pending);
        self.actions.push_back(Action::Fs(op));
    }

    fn release_data(&mut self) {
        if self.data != Data::None {
            self.data = Data::None;
            self.actions.push_back(Action::ReleaseData);
        }
    }

    /// Whether the idle timeout runs: not while the session waits for the outside world or
    /// a transfer runs (the data connection has its own stall timeout).
    fn idle_applies(&self) -> bool {
        match self.state {
            State::AwaitingUser | State::AwaitingPass { .. } | State::Ready => true,
            State::Closed => !self.out.is_empty(),
            _ => false,
        }
    }

    /// When the idle timeout ends the session. Replies that wait with no byte taken set it
    /// on their own: the commands a client keeps sending do not keep it alive if it never
    /// reads.
    fn idle_due(&self) -> Instant {
        self.write_stalled_since.unwrap_or(self.last_activity) + self.rules.idle_timeout
    }

    fn writable(&self) -> bool {
        self.account.as_ref().is_some_and(|a| a.write)
    }

    /// Whether transfers convert line ends now: TYPE A, and `ascii_transfers` on.
    pub(crate) fn ascii(&self) -> bool {
        !self.binary && self.rules.ascii_transfers
    }

    /// Refuses a write for an account without write access; true when refused.
    fn read_only(&mut self) -> bool {
        if self.writable() {
            return false;
        }
        self.reply(ReplyCode::FILE_UNAVAILABLE, b"Permission denied.");
        true
    }

    /// The virtual path of a command's argument, or the error reply.
    fn path_of(&mut self, arg: &[u8]) -> Option<Vec<u8>> {
        match Vfs::path(&self.cwd, arg) {
            Ok(p) => Some(p),
            Err(e) => {
                self.fs_error(&e);
                None
            }
        }
    }

    /// The path of a command that writes, or the refusal.
    fn writable_path(&mut self, arg: &[u8]) -> Option<Vec<u8>> {
        if self.read_only() {
            return None;
        }
        self.path_of(arg)
    }

    /// Every filesystem error becomes its reply here, through [`FsError::reply`].
    fn fs_error(&mut self, e: &FsError) {
        let (code, text) = e.reply();
        self.reply(
            ReplyCode::new(code).unwrap_or(ReplyCode::LOCAL_ERROR),
            text.as_bytes(),
        );
    }

    /// A one-line reply; CR, LF and NUL in `text` become `?`.
    fn reply(&mut self, code: ReplyCode, text: &[u8]) {
        self.metrics.reply(code.get());
        Reply::encode_line(code, text, &mut self.out);
    }

    fn reply_full(&mut self, reply: &Reply) {
        self.metrics.reply(reply.code().get());
        reply.encode(&mut self.out);
    }

    /// A reply of as many lines as `text` has.
    fn multi(&mut self, code: ReplyCode, text: impl AsRef<[u8]>) {
        self.reply_full(&Reply::new(code, text));
    }
}

/// The text of a STAT reply for a rendered listing: one entry a line, capped at
/// [`STAT_MAX_ENTRIES`] entries and [`STAT_MAX_BYTES`] bytes of them (a control-connection
/// reply is held whole in the session, and pipelined STATs of a huge directory must not
/// multiply that); the last line says when entries were left out.
pub(crate) fn stat_listing(body: &[u8]) -> Vec<u8> {
    let mut text = b"Status follows:\n".to_vec();
    let (mut shown, mut total) = (0usize, 0usize);
    for line in body.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        total += 1;
        if shown == total - 1
            && shown < STAT_MAX_ENTRIES
            && text.len() + line.len() + 2 <= STAT_MAX_BYTES
        {
            text.push(b' ');
            text.extend_from_slice(line);
            text.push(b'\n');
            shown += 1;
        }
    }
    if shown < total {
        let last = format!("End of status: first {shown} of {total} entries; LIST shows all");
        text.extend_from_slice(last.as_bytes());
    } else {
        text.extend_from_slice(b"End of status");
    }
    text
}

/// Doubles `"` in a pathname for a 257 reply (RFC 959 appendix II).
fn quote_path(path: &[u8]) -> Vec<u8> {
    let mut q = Vec::with_capacity(path.len() + 2);
    q.push(b'"');
    for &b in path {
        if b == b'"' {
            q.push(b'"');
        }
        q.push(b);
    }
    q.push(b'"');
    q
}

/// What a 426 says about a data connection's network error: the error's own text, without
/// a TLS library's pointers to its manual, and in plain words for a TLS stream that ended
/// without close_notify (a client that died, or a truncation attack on an upload).
fn network_text(e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        return "the connection ended without TLS close_notify (the data may be cut short)".into();
    }
    let text = e.to_string();
    match text.find(": http") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}
