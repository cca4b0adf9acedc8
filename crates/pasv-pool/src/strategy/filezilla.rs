//! FileZilla Server's passive port choice.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use super::{walk, BlindOutcome, BlindStrategy};
use crate::rng::Rng;
use crate::time::Instant;

/// How long FileZilla Server remembers that a peer used a port.
pub const FILEZILLA_LEDGER: Duration = Duration::from_secs(240);

/// FileZilla Server: a random start and a linear scan, repeated at three relaxation levels:
/// first only ports nobody used in the last 4 minutes, then ports this peer did not use in
/// the last 4 minutes, then any port; a bind decides at every level. Nothing binds: 425.
///
/// Its ledger holds one entry per (port, peer) for 4 minutes after each release and forgets
/// it afterwards, so it stays bounded by the releases of the last 4 minutes.
#[derive(Debug, Clone, Default)]
pub struct FileZilla {
    recent: HashMap<(u16, IpAddr), Instant>,
    /// Keyed by port only, the server's choice: foldhash (see the pool's hashing note).
    per_port: foldhash::HashMap<u16, u32>,
    expiry: VecDeque<(Instant, u16, IpAddr)>,
}

impl FileZilla {
    fn purge(&mut self, now: Instant) {
        while let Some(&(t, port, peer)) = self.expiry.front() {
            if t > now {
                break;
            }
            self.expiry.pop_front();
            if self.recent.get(&(port, peer)) == Some(&t) {
                self.recent.remove(&(port, peer));
                if let Some(c) = self.per_port.get_mut(&port) {
                    *c -= 1;
                    if *c == 0 {
                        self.per_port.remove(&port);
                    }
                }
            }
        }
    }
}

impl BlindStrategy for FileZilla {
    fn name(&self) -> &'static str {
        "filezilla"
    }
    fn allocate(
        &mut self,
        now: Instant,
        peer: IpAddr,
        range: &[u16],
        rng: &mut Rng,
        bind: &mut dyn FnMut(u16) -> bool,
    ) -> BlindOutcome {
        self.purge(now);
        (0..3)
            .find_map(|level| {
                let admit = |port| match level {
                    0 => !self.per_port.contains_key(&port),
                    1 => !self.recent.contains_key(&(port, peer)),
                    _ => true,
                };
                walk::scan_from_random(range, rng, admit, bind)
            })
            .map_or(BlindOutcome::Refused, BlindOutcome::InRange)
    }
    fn on_release(&mut self, now: Instant, port: u16, peer: IpAddr, _server_closed: bool) {
        self.purge(now);
        let until = now + FILEZILLA_LEDGER;
        if self.recent.insert((port, peer), until).is_none() {
            *self.per_port.entry(port).or_insert(0) += 1;
        }
        self.expiry.push_back((until, port, peer));
    }
}
