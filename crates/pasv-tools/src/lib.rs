//! The pasv tools: `pasvd`, an FTP server whose passive data connections come from
//! [`pasv_pool`], and `pasv`, a client, load generator, probe and capacity planner.
//!
//! This is the only crate of the workspace that opens sockets, sleeps or reads the clock,
//! and it reads the clock in exactly one module, [`clock`].

pub mod cli;
pub mod client;
pub mod clock;
pub mod server;
