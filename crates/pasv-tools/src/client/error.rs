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
    /// A socket operation failed.
    #[error("network error: {0}")]
    Io(#[from] io::Error),
    /// The server closed the control connection.
    #[error("control connection closed by the server")]
    Closed,
    /// No answer (or no data connection) within the configured timeout.
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
            ClientError::RetriesExhausted { last, .. } => last.reply(),
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
            ClientError::RetriesExhausted { last, .. } => last.is_network(),
            _ => false,
        }
    }

    /// Whether retries were attempted and gave up.
    pub fn is_exhausted(&self) -> bool {
        matches!(self, ClientError::RetriesExhausted { .. })
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
            ClientError::RetriesExhausted { last, .. } => last.kind(),
            ClientError::Io(_) => "io".into(),
            ClientError::Closed => "closed".into(),
            ClientError::Timeout(_) => "timeout".into(),
            ClientError::Malformed(_) => "malformed".into(),
            ClientError::PassiveAddress(_) => "passive_address".into(),
            ClientError::InvalidArgument(_) => "invalid_argument".into(),
            ClientError::Url(_) => "url".into(),
            ClientError::NoAddress(_) => "no_address".into(),
        }
    }

    pub(crate) fn from_reply(command: &str, reply: Reply) -> ClientError {
        ClientError::Reply {
            command: command.to_owned(),
            reply,
        }
    }
}
