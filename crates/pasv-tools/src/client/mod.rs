//! An async FTP client, and the load generator, probe, planner and decoder behind `pasv`.
//!
//! [`Client`] speaks to any FTP server: it frames replies with pasv-protocol's lenient
//! [`ReplyDecoder`](pasv_protocol::ReplyDecoder) (servers that close a multi-line reply on
//! the wrong code still work), sets data connections up with EPSV and falls back to PASV
//! once the server refuses it, connects data to the control connection's peer rather than
//! the address a 227 advertises, and retries 421 greetings, 425 and 426 with a bounded
//! backoff that honours the server's `retry after` hint. Transfers are async streams that
//! borrow the client: a [`Download`] is an `AsyncRead`, an [`Upload`] an `AsyncWrite`, and
//! each has a `finish()` that reads the server's final reply.
//!
//! ```no_run
//! use pasv_tools::client::{Client, ClientConfig, FtpUrl};
//! use tokio::io::AsyncReadExt;
//!
//! # async fn run() -> Result<(), pasv_tools::client::ClientError> {
//! let url = FtpUrl::parse("ftp://alice:secret@127.0.0.1:2121/reports/q3.csv")?;
//! let mut client = Client::open(&url, ClientConfig::default()).await?;
//! let mut download = client.retrieve(url.path(), 0).await?;
//! let mut body = Vec::new();
//! download.read_to_end(&mut body).await?;
//! download.finish().await?;
//! client.quit().await?;
//! # Ok(()) }
//! ```
//!
//! [`Client::download_to`] and [`Client::upload_from`] move whole files: they resume a
//! transfer cut short and retry refusals within one [`RetryPolicy`] for the whole operation.
//! Every wait has a limit ([`ClientConfig`]): each reply, the final reply after any number of
//! 1xx replies, opening a data connection, and each stall of a data connection.
//!
//! Errors keep the server's reply: [`ClientError::code`] gives the code,
//! [`ClientError::is_transient`] and [`ClientError::is_permanent`] its class.
//!
//! The modules [`load`], [`probe`], [`plan`] and [`decode`] are the library side of the
//! `pasv load`, `pasv probe`, `pasv plan` and `pasv decode` commands.

mod connection;
mod data;
pub mod decode;
pub mod doctor;
mod error;
mod escape;
mod listing;
pub mod load;
pub mod plan;
pub mod probe;
mod retry;
mod transfer;
mod url;

pub use connection::{Client, ClientConfig, DataMode, ListCommand, MAX_LISTING};
pub use data::{Download, Upload};
pub use error::ClientError;
pub use escape::{escape_bytes, escape_text};
pub use listing::{parse_mlsd, EntryKind, MlsdEntry};
pub use retry::RetryPolicy;
pub use transfer::{DownloadOptions, DownloadReport, UploadOptions, UploadReport};
pub use url::{
    percent_decode, percent_encode, FtpUrl, UrlError, ANONYMOUS_PASSWORD, ANONYMOUS_USER,
    DEFAULT_PORT,
};
