//! [`ServerError`]: why the server could not start or stopped.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

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
    /// The account of `run_as` is unknown or unusable, or the switch to it failed.
    #[error("run_as {user}: {reason}")]
    RunAs {
        /// The configured account name.
        user: String,
        /// What went wrong.
        reason: String,
    },
}
