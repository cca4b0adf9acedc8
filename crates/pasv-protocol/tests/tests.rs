//! Integration tests of pasv-protocol: known answers, round trips, every split point,
//! property tests and hostile input.

mod addresses;
#[cfg(feature = "codec")]
mod codec;
mod commands;
mod hint;
mod hostile;
mod props;
mod replies;
mod splits;
mod util;
