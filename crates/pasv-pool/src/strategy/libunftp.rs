//! libunftp's passive port choice (per-transfer mode).

use std::net::IpAddr;

use super::{walk, BlindOutcome, BlindStrategy};
use crate::rng::Rng;
use crate::time::Instant;

/// Random binds before libunftp gives up.
const TRIES: usize = 9;

/// libunftp: like vsftpd, up to 9 uniformly random ports with repetition, but a failure is a
/// 425 and the session survives. (Its pooled mode, with every port bound once and connections
/// routed by client address, is what [`crate::Exclusivity::PerPortAndPeer`] accounts for.)
#[derive(Debug, Clone, Copy, Default)]
pub struct Libunftp;

impl BlindStrategy for Libunftp {
    fn name(&self) -> &'static str {
        "libunftp"
    }
    fn allocate(
        &mut self,
        _now: Instant,
        _peer: IpAddr,
        range: &[u16],
        rng: &mut Rng,
        bind: &mut dyn FnMut(u16) -> bool,
    ) -> BlindOutcome {
        walk::random_tries(TRIES, range, rng, bind)
            .map_or(BlindOutcome::Refused, BlindOutcome::InRange)
    }
}
