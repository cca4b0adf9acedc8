//! Keyed per-peer permutation, after RFC 6056 algorithm 4 ("double-hash port selection").

use std::net::IpAddr;

use super::{Layout, Ledger, SlotBits, SlotId, Strategy};
use crate::rng::keyed_hash;

/// Size of the table of per-bucket counters (RFC 6056 section 3.3.4 suggests a few hundred).
const TABLE_LEN: usize = 256;

/// Offers, to each peer, the next offerable slot along a sequence only the key determines.
///
/// RFC 6056 algorithm 4: `offset = F(peer, key)` picks the peer's starting point,
/// `index = G(peer, key)` one of 256 counters, and the candidate is
/// `(offset + table[index]) mod N·A`; the counter advances past every candidate tried. Another
/// client, which sees only its own ports, cannot predict the port a peer will be offered and
/// connect to it first (the port theft of RFC 2577 section 8), while the ledger is still
/// honoured: candidates that are not offerable are skipped, exactly as a failed bind would be.
#[derive(Debug, Clone)]
pub struct KeyedPermutation {
    bits: SlotBits,
    key: u64,
    table: Vec<u64>,
}

impl KeyedPermutation {
    /// An empty strategy for `layout`, keyed by `seed` (use a secret seed in production).
    pub fn new(layout: Layout, seed: u64) -> KeyedPermutation {
        KeyedPermutation {
            bits: SlotBits::new(layout.slots()),
            key: keyed_hash(seed, 0x6b65_7965_6420_7065, b"rfc6056 algorithm 4"),
            table: vec![0; TABLE_LEN],
        }
    }

    fn peer_bytes(peer: IpAddr) -> [u8; 16] {
        match peer {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        }
    }
}

impl Strategy for KeyedPermutation {
    fn name(&self) -> &'static str {
        "keyed"
    }
    fn insert(&mut self, slot: SlotId) {
        self.bits.insert(slot.index());
    }
    fn remove(&mut self, slot: SlotId) {
        self.bits.remove(slot.index());
    }
    fn pick(&mut self, ledger: &Ledger<'_>) -> Option<SlotId> {
        let n = self.bits.len() as u64;
        if n == 0 {
            return None;
        }
        // One keyed hash serves as both F and G of RFC 6056 algorithm 4: its top byte picks
        // the counter, its low 56 bits the offset, so the two are independent.
        let h = keyed_hash(self.key, 1, &Self::peer_bytes(ledger.peer()));
        let index = (h >> 56) as usize % TABLE_LEN;
        let offset = h & ((1 << 56) - 1);
        let start = (offset.wrapping_add(self.table[index]) % n) as usize;
        let (i, distance) = self
            .bits
            .find_wrapping(start, |i| ledger.admits(SlotId(i as u32)))?;
        self.table[index] = self.table[index].wrapping_add(distance as u64 + 1);
        Some(SlotId(i as u32))
    }
}
