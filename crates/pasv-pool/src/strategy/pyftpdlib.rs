//! pyftpdlib's passive port choice.

use std::net::IpAddr;

use super::{walk, BlindOutcome, BlindStrategy};
use crate::rng::Rng;
use crate::time::Instant;

/// pyftpdlib: random ports drawn without replacement until a bind succeeds; when the range is
/// used up it binds port 0 and advertises whatever the kernel gave, outside the range.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pyftpdlib;

impl BlindStrategy for Pyftpdlib {
    fn name(&self) -> &'static str {
        "pyftpdlib"
    }
    fn allocate(
        &mut self,
        _now: Instant,
        _peer: IpAddr,
        range: &[u16],
        rng: &mut Rng,
        bind: &mut dyn FnMut(u16) -> bool,
    ) -> BlindOutcome {
        walk::shuffled(range, rng, bind).map_or(BlindOutcome::OutsideRange, BlindOutcome::InRange)
    }
}
