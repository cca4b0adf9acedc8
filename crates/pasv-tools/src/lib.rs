//! The pasv tools: `pasvd`, an FTP server whose passive data connections come from
//! [`pasv_pool`], and `pasv`, a client, load generator, probe and capacity planner.
//!
//! This is the only crate of the workspace that opens sockets, sleeps or reads the clock,
//! and it reads the clock in exactly one module, [`clock`].
//!
//! # Features
//!
//! - `cli` (default): the binaries and the clap definitions of their command lines
//!   (`pasv_tools::cli`), with the dependencies only they need (clap, indicatif,
//!   tracing-subscriber, anyhow). A program that uses only the library turns it off:
//!   `pasv-tools = { version = "0.1", default-features = false }`.

#[cfg(feature = "cli")]
pub mod cli;
pub mod client;
pub mod clock;
#[cfg(feature = "cli")]
pub mod logfmt;
pub mod server;
