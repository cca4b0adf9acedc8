//! pyftpdlib's passive port choice.

use std::net::IpAddr;

use super::{BlindOutcome, BlindStrategy};
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
        let mut left = range.to_vec();
        while !left.is_empty() {
            let port = left.swap_remove(rng.below(left.len() as u64) as usize);
            if bind(port) {
                return BlindOutcome::InRange(port);
            }
        }
        BlindOutcome::OutsideRange
    }
}
