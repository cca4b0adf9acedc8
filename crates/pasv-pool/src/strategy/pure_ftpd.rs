//! Pure-FTPd's passive port choice.

use std::net::IpAddr;

use super::{walk, BlindOutcome, BlindStrategy};
use crate::rng::Rng;
use crate::time::Instant;

/// Pure-FTPd: a random starting port, then one linear scan of the range (wrapping); if no
/// bind succeeds, 425. (Its cap of clients at half the range limits sessions, not transfers,
/// and is not modelled.)
#[derive(Debug, Clone, Copy, Default)]
pub struct PureFtpd;

impl BlindStrategy for PureFtpd {
    fn name(&self) -> &'static str {
        "pure-ftpd"
    }
    fn allocate(
        &mut self,
        _now: Instant,
        _peer: IpAddr,
        range: &[u16],
        rng: &mut Rng,
        bind: &mut dyn FnMut(u16) -> bool,
    ) -> BlindOutcome {
        walk::scan_from_random(range, rng, |_| true, bind)
            .map_or(BlindOutcome::Refused, BlindOutcome::InRange)
    }
}
