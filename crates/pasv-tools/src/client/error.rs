//! The client's error type.

use std::io;
use std::time::Duration;

use pasv_protocol::{AddressError, InvalidArgument, Reply, ReplyCode, ReplyError};

use super::url::UrlError;

/// What went wrong in a client operation.
///
/// A negative or unexpected reply keeps the server's code and text ([`ClientError::code`],
/// [`ClientError::reply`]). [`ClientError::is_transient`] tells whether trying again later can
/// help; the client has already retried 421 greetings, 425 and 426 within its
/// [`RetryPolicy`](super::RetryPolicy) when it returns one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server answered `command` with a negative or unexpected reply.
    #[error("{command}: {reply}")]
    Reply {
        /// The verb that got the reply (`"greeting"` for the banner).
        command: String,
        /// The server's reply, code and text.
        reply: Reply,
    },
    /// Retries of transient failures used up the attempts or the time budget.
    #[error("gave up after {attempts} attempts: {last}")]
    RetriesExhausted {
        /// How many attempts were made.
        attempts: u32,
        /// The failure of the last attempt.
        last: Box<ClientError>,
    },
    /// The server asked for a wait (its `retry after` hint) longer than what is left of the
    /// retry budget: the operation ends at once instead of sleeping past the budget.
    #[error(
        "gave up after {attempts} attempts: the server asks to retry after {}, beyond the {} left of the retry budget: {last}",
        secs(.hint),
        secs(.left)
    )]
    HintBeyondBudget {
        /// How many attempts were made.
        attempts: u32,
        /// The server's hint.
        hint: Duration,
        /// What was left of the budget.
        left: Duration,
        /// The failure that carried the hint.
        last: Box<ClientError>,
    },
    /// A socket operation failed.
    #[error("network error: {0}")]
    Io(io::Error),
    /// Reading or writing the local side of a transfer (a file, stdout) failed.
    #[error("local i/o error: {0}")]
    Local(io::Error),
    /// The remote file is larger than the size limit of the download.
    #[error("the remote file is {}{size} bytes, more than the limit of {limit}", counted_prefix(.at_least))]
    TooLarge {
        /// The remote size, from SIZE or counted so far.
        size: u64,
        /// Whether `size` was counted during the transfer (the file is at least that large).
        at_least: bool,
        /// The limit.
        limit: u64,
    },
    /// A download ended with another length than the server's SIZE announced.
    #[error("received {received} bytes in all where SIZE announced {expected}")]
    SizeMismatch {
        /// The size SIZE announced.
        expected: u64,
        /// The length of the downloaded file (resumed part included).
        received: u64,
    },
    /// A resumed upload's remote file is longer than the local file.
    #[error("the remote file has {remote} bytes, more than the local {local}")]
    RemoteLonger {
        /// The local length.
        local: u64,
        /// The remote size.
        remote: u64,
    },
    /// A resumed download's local file is longer than the remote file.
    #[error("the local file has {local} bytes, more than the remote {remote}")]
    LocalLonger {
        /// The local length.
        local: u64,
        /// The remote size.
        remote: u64,
    },
    /// The server closed the control connection.
    #[error("control connection closed by the server")]
    Closed,
    /// No answer, no data connection, or no progress on the data connection within the
    /// configured timeout.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// A reply could not be framed or parsed.
    #[error("malformed reply: {0}")]
    Malformed(#[from] ReplyError),
    /// A 227 or 229 reply did not hold a usable address.
    #[error("bad passive reply: {0}")]
    PassiveAddress(#[from] AddressError),
    /// A path or name cannot be sent (it holds CR, LF or NUL, or is empty).
    #[error("invalid argument: {0}")]
    InvalidArgument(#[from] InvalidArgument),
    /// The URL could not be parsed.
    #[error("invalid url: {0}")]
    Url(#[from] UrlError),
    /// A TLS handshake failed or TLS could not be set up (`what` says which step).
    #[error("TLS {what}: {reason}")]
    Tls {
        /// The step: `control connection handshake`, `data connection handshake`, `ca file`...
        what: &'static str,
        /// rustls' or the system's reason.
        reason: String,
    },
    /// The host name resolved to no address.
    #[error("host {0:?} resolved to no address")]
    NoAddress(String),
}

impl ClientError {
    /// The server's reply code, when the error is a reply (or ended in one).
    pub fn code(&self) -> Option<ReplyCode> {
        self.reply().map(Reply::code)
    }

    /// The server's reply, when the error is a reply (or ended in one).
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            ClientError::Reply { reply, .. } => Some(reply),
            ClientError::RetriesExhausted { last, .. }
            | ClientError::HintBeyondBudget { last, .. } => last.reply(),
            _ => None,
        }
    }

    /// A 4xx reply: the server says a later attempt may succeed (RFC 959 section 4.2).
    pub fn is_transient(&self) -> bool {
        self.code().is_some_and(ReplyCode::is_transient)
    }

    /// A 5xx reply: the same command will fail again.
    pub fn is_permanent(&self) -> bool {
        self.code().is_some_and(ReplyCode::is_permanent)
    }

    /// A socket error, a closed connection or a timeout.
    pub fn is_network(&self) -> bool {
        match self {
            ClientError::Io(_) | ClientError::Closed | ClientError::Timeout(_) => true,
            ClientError::RetriesExhausted { last, .. }
            | ClientError::HintBeyondBudget { last, .. } => last.is_network(),
            _ => false,
        }
    }

    /// Whether retries were attempted and gave up (the attempts or the budget ran out, or the
    /// server's hint went beyond the budget). Such an error is never retried again.
    pub fn is_exhausted(&self) -> bool {
        matches!(
            self,
            ClientError::RetriesExhausted { .. } | ClientError::HintBeyondBudget { .. }
        )
    }

    /// The error that ended the retries (the error itself when it was not retried).
    pub fn last(&self) -> &ClientError {
        match self {
            ClientError::RetriesExhausted { last, .. }
            | ClientError::HintBeyondBudget { last, .. } => last.last(),
            other => other,
        }
    }

    /// Whether the error is one of the failures the client retries: a 421 greeting, a 425 or a
    /// 426 reply.
    pub fn is_retryable(&self) -> bool {
        matches!(self.code().map(ReplyCode::get), Some(421 | 425 | 426)) && !self.is_exhausted()
    }

    /// The server's machine-readable retry hint (`retry after 0.25s`), if its reply had one.
    pub fn retry_after(&self) -> Option<Duration> {
        self.reply().and_then(Reply::retry_after)
    }

    /// A short key for counting errors: the reply code (`"425"`), or the kind (`"io"`,
    /// `"closed"`, `"timeout"`, `"malformed"`, `"passive_address"`, ...).
    pub fn kind(&self) -> String {
        match self {
            ClientError::Reply { reply, .. } => reply.code().get().to_string(),
            ClientError::RetriesExhausted { last, .. }
            | ClientError::HintBeyondBudget { last, .. } => last.kind(),
            ClientError::Io(_) => "io".into(),
            ClientError::Local(_) => "local".into(),
            ClientError::TooLarge { .. } => "too_large".into(),
            ClientError::SizeMismatch { .. } => "size_mismatch".into(),
            ClientError::LocalLonger { .. } => "local_longer".into(),
            ClientError::RemoteLonger { .. } => "remote_longer".into(),
            ClientError::Closed => "closed".into(),
            ClientError::Timeout(_) => "timeout".into(),
            ClientError::Malformed(_) => "malformed".into(),
            ClientError::PassiveAddress(_) => "passive_address".into(),
            ClientError::InvalidArgument(_) => "invalid_argument".into(),
            ClientError::Url(_) => "url".into(),
            ClientError::NoAddress(_) => "no_address".into(),
            ClientError::Tls { .. } => "tls".into(),
        }
    }

    /// Whether trying again can help: a 421, 425 or 426 reply, or a network error when
    /// `network` is set (a transfer cut short can resume). Never after retries gave up.
    pub(crate) fn can_retry(&self, network: bool) -> bool {
        !self.is_exhausted() && (self.is_retryable() || (network && self.is_network()))
    }

    pub(crate) fn from_reply(command: &str, reply: Reply) -> ClientError {
        ClientError::Reply {
            command: command.to_owned(),
            reply,
        }
    }
}

/// An I/O error from a data connection that made no progress within the stall timeout; the
/// client turns it into [`ClientError::Timeout`].
#[derive(Debug, thiserror::Error)]
#[error("no progress on the data connection within the stall timeout")]
pub(crate) struct Stalled;

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> ClientError {
        if e.get_ref().is_some_and(|inner| inner.is::<Stalled>()) {
            ClientError::Timeout("data transfer progress")
        } else {
            ClientError::Io(e)
        }
    }
}

/// `1.5s`, `99999999999s`: a duration the way retry hints write it.
fn secs(d: &Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

fn counted_prefix(counted: &bool) -> &'static str {
    if *counted {
        "at least "
    } else {
        ""
    }
}
