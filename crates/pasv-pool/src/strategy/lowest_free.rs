//! Lowest free: the offerable slot with the lowest port.

use super::{Layout, Ledger, SlotBits, SlotId, Strategy};

/// Offers the lowest offerable port (first address first).
///
/// The simplest deterministic choice, and the worst for TIME_WAIT: under light load every
/// transfer lands on the same few ports, which pile up TIME_WAIT sockets and pay for them at
/// every bind (DESIGN.md section 2).
#[derive(Debug, Clone)]
pub struct LowestFree {
    bits: SlotBits,
}

impl LowestFree {
    /// An empty strategy for `layout`.
    pub fn new(layout: Layout) -> LowestFree {
        LowestFree {
            bits: SlotBits::new(layout.slots()),
        }
    }
}

impl Strategy for LowestFree {
    fn name(&self) -> &'static str {
        "lowest-free"
    }
    fn insert(&mut self, slot: SlotId) {
        self.bits.insert(slot.index());
    }
    fn remove(&mut self, slot: SlotId) {
        self.bits.remove(slot.index());
    }
    fn pick(&mut self, ledger: &Ledger<'_>) -> Option<SlotId> {
        let (i, _) = self
            .bits
            .find_wrapping(0, |i| ledger.admits(SlotId(i as u32)))?;
        Some(SlotId(i as u32))
    }
}
