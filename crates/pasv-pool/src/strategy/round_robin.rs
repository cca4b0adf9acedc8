//! Round robin: the next offerable slot after the previous pick.

use super::{Layout, Ledger, SlotBits, SlotId, Strategy};

/// Offers the first offerable slot after the one it offered last, wrapping around.
///
/// Like least-recently-released it cycles through the range, but a slot freed just behind the
/// cursor waits a whole turn while one freed just ahead is reused at once. A two-level bitmap
/// makes each pick O(N·A/4096) in the worst case.
#[derive(Debug, Clone)]
pub struct RoundRobin {
    bits: SlotBits,
    cursor: usize,
}

impl RoundRobin {
    /// An empty strategy for `layout`.
    pub fn new(layout: Layout) -> RoundRobin {
        RoundRobin {
            bits: SlotBits::new(layout.slots()),
            cursor: 0,
        }
    }
}

impl Strategy for RoundRobin {
    fn name(&self) -> &'static str {
        "round-robin"
    }
    fn insert(&mut self, slot: SlotId) {
        self.bits.insert(slot.index());
    }
    fn remove(&mut self, slot: SlotId) {
        self.bits.remove(slot.index());
    }
    fn pick(&mut self, ledger: &Ledger<'_>) -> Option<SlotId> {
        let start = if self.cursor >= self.bits.len() {
            0
        } else {
            self.cursor
        };
        let (i, _) = self
            .bits
            .find_wrapping(start, |i| ledger.admits(SlotId(i as u32)))?;
        self.cursor = i + 1;
        Some(SlotId(i as u32))
    }
}
