//! Least recently released: a FIFO of offerable slots per address.

use super::{Layout, Ledger, SlotId, Strategy};

const NIL: u32 = u32::MAX;

/// Offers the slot that became offerable longest ago.
///
/// Closes, and so TIME_WAIT sockets, spread evenly over the whole range: a port is reused only
/// after every other port was, which keeps the per-port TIME_WAIT population (and the bind
/// cost it brings, DESIGN.md section 2) as low as the range allows. One intrusive FIFO per
/// address, ordered by a global insertion stamp; with several addresses the oldest head wins.
/// `insert`, `remove` and an unrestricted `pick` are O(A); a restricted pick also skips the
/// slots the ledger refuses to this peer.
#[derive(Debug, Clone)]
pub struct LeastRecentlyReleased {
    layout: Layout,
    next: Vec<u32>,
    prev: Vec<u32>,
    stamp: Vec<u64>,
    head: Vec<u32>,
    tail: Vec<u32>,
    clock: u64,
}

impl LeastRecentlyReleased {
    /// An empty strategy for `layout`.
    pub fn new(layout: Layout) -> LeastRecentlyReleased {
        let n = layout.slots();
        LeastRecentlyReleased {
            layout,
            next: vec![NIL; n],
            prev: vec![NIL; n],
            // Stamp 0 marks "not in a list"; real stamps start at 1.
            stamp: vec![0; n],
            head: vec![NIL; layout.addresses],
            tail: vec![NIL; layout.addresses],
            clock: 0,
        }
    }

    fn first_admitted(&self, address: usize, ledger: &Ledger<'_>) -> Option<u32> {
        let mut cur = self.head[address];
        while cur != NIL {
            if ledger.admits(SlotId(cur)) {
                return Some(cur);
            }
            cur = self.next[cur as usize];
        }
        None
    }
}

impl Strategy for LeastRecentlyReleased {
    fn name(&self) -> &'static str {
        "lrr"
    }

    fn insert(&mut self, slot: SlotId) {
        let i = slot.index();
        if self.stamp[i] != 0 {
            return;
        }
        let a = self.layout.address_of(slot);
        self.clock += 1;
        self.stamp[i] = self.clock;
        self.prev[i] = self.tail[a];
        self.next[i] = NIL;
        if self.tail[a] == NIL {
            self.head[a] = slot.0;
        } else {
            self.next[self.tail[a] as usize] = slot.0;
        }
        self.tail[a] = slot.0;
    }

    fn remove(&mut self, slot: SlotId) {
        let i = slot.index();
        if self.stamp[i] == 0 {
            return;
        }
        let a = self.layout.address_of(slot);
        let (p, n) = (self.prev[i], self.next[i]);
        if p == NIL {
            self.head[a] = n;
        } else {
            self.next[p as usize] = n;
        }
        if n == NIL {
            self.tail[a] = p;
        } else {
            self.prev[n as usize] = p;
        }
        self.stamp[i] = 0;
    }

    fn pick(&mut self, ledger: &Ledger<'_>) -> Option<SlotId> {
        if self.layout.addresses == 1 {
            let h = self.head[0];
            if ledger.admits_all() {
                return (h != NIL).then_some(SlotId(h));
            }
            return self.first_admitted(0, ledger).map(SlotId);
        }
        let mut best: Option<u32> = None;
        for a in 0..self.layout.addresses {
            if !ledger.admits_address(a) {
                continue;
            }
            let cand = if ledger.admits_all() {
                Some(self.head[a]).filter(|&h| h != NIL)
            } else {
                self.first_admitted(a, ledger)
            };
            if let Some(c) = cand {
                if best.is_none_or_older(c, &self.stamp) {
                    best = Some(c);
                }
            }
        }
        best.map(SlotId)
    }

    fn touch(&mut self, slot: SlotId) {
        // Under one lease per (port, peer) the slot stays offerable; moving it to the back
        // spreads concurrent peers over the range.
        self.remove(slot);
        self.insert(slot);
    }
}

trait OlderThan {
    fn is_none_or_older(&self, candidate: u32, stamp: &[u64]) -> bool;
}

impl OlderThan for Option<u32> {
    fn is_none_or_older(&self, candidate: u32, stamp: &[u64]) -> bool {
        match *self {
            None => true,
            Some(b) => stamp[candidate as usize] < stamp[b as usize],
        }
    }
}
