//! vsftpd's passive port choice.

use std::net::IpAddr;

use super::{walk, BlindOutcome, BlindStrategy};
use crate::rng::Rng;
use crate::time::Instant;

/// Number of binds vsftpd tries before giving up (`vsf_sysutil_bind` loop in `ipaddrparse`
/// era code: 9 random ports, tried ports not remembered).
const TRIES: usize = 9;

/// vsftpd: up to 9 uniformly random ports of the range, with repetition; if all 9 binds
/// fail, `500 OOPS: vsf_sysutil_bind` and the session dies.
#[derive(Debug, Clone, Copy, Default)]
pub struct Vsftpd;

impl BlindStrategy for Vsftpd {
    fn name(&self) -> &'static str {
        "vsftpd"
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
            .map_or(BlindOutcome::SessionKilled, BlindOutcome::InRange)
    }
}
