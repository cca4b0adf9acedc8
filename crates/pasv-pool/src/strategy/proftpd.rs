//! ProFTPD's passive port choice.

use std::net::IpAddr;

use super::{walk, BlindOutcome, BlindStrategy};
use crate::rng::Rng;
use crate::time::Instant;

/// Passes over the shuffled range before ProFTPD gives up on it.
const PASSES: usize = 3;

/// ProFTPD: a shuffled sweep of the whole range, up to 3 passes; then it logs a warning and
/// lets the kernel pick a port outside the range.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProFtpd;

impl BlindStrategy for ProFtpd {
    fn name(&self) -> &'static str {
        "proftpd"
    }
    fn allocate(
        &mut self,
        _now: Instant,
        _peer: IpAddr,
        range: &[u16],
        rng: &mut Rng,
        bind: &mut dyn FnMut(u16) -> bool,
    ) -> BlindOutcome {
        (0..PASSES)
            .find_map(|_| walk::shuffled(range, rng, bind))
            .map_or(BlindOutcome::OutsideRange, BlindOutcome::InRange)
    }
}
