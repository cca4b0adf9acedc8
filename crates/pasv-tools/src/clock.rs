//! The one place where pasv-tools reads the clock.
//!
//! Architecture Invariant: every other module asks this one for the time, so tokio's paused
//! clock (`#[tokio::test(start_paused = true)]`) drives the server and the client in tests,
//! and the pool, which never reads a clock, gets its time from here.
#![allow(clippy::disallowed_methods)]

use std::sync::OnceLock;
use std::time::SystemTime;

/// The process epoch that [`pool_now`] counts from.
static EPOCH: OnceLock<tokio::time::Instant> = OnceLock::new();

fn epoch() -> tokio::time::Instant {
    *EPOCH.get_or_init(tokio::time::Instant::now)
}

/// Monotonic time, from tokio's clock (paused in tests that ask for it).
pub fn now() -> tokio::time::Instant {
    tokio::time::Instant::now()
}

/// Monotonic time as the pool's [`pasv_pool::Instant`], counted from the first call in this
/// process.
pub fn pool_now() -> pasv_pool::Instant {
    pool_instant(now())
}

/// Converts a tokio instant to the pool's time base (saturating at the epoch).
pub fn pool_instant(at: tokio::time::Instant) -> pasv_pool::Instant {
    let since = at.saturating_duration_since(epoch());
    pasv_pool::Instant::from_nanos(u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
}

/// Converts a pool instant back to a tokio instant, to sleep until a pool deadline.
pub fn tokio_instant(at: pasv_pool::Instant) -> tokio::time::Instant {
    epoch() + std::time::Duration::from_nanos(at.as_nanos())
}

/// Wall-clock time, for logs, MDTM and listings.
pub fn wall_now() -> SystemTime {
    SystemTime::now()
}

/// The CPU's monotonic clock, for busy-poll windows: real time even when tokio's clock is
/// paused (a spinning task keeps a paused runtime from ever advancing its clock).
pub fn cpu_now() -> std::time::Instant {
    std::time::Instant::now()
}
