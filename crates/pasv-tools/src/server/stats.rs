//! [`ServerStats`]: figures a running server keeps for its owner.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Figures a running server keeps, readable from another task while it runs
/// (see [`Server::stats`](super::Server::stats)).
#[derive(Clone, Debug, Default)]
pub struct ServerStats {
    inner: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    peak_pending_output: AtomicUsize,
}

impl ServerStats {
    /// The most reply bytes any session held unsent when its control socket could not take
    /// them all (zero while every client reads its replies as fast as they come). Bounded by
    /// [`MAX_PENDING_OUTPUT`](super::MAX_PENDING_OUTPUT) plus one reply.
    pub fn peak_pending_output(&self) -> usize {
        self.inner.peak_pending_output.load(Ordering::Relaxed)
    }

    /// Records replies left waiting by a write that did not take them all (a slow path: a
    /// client that reads its replies never gets here).
    pub(crate) fn note_pending_output(&self, bytes: usize) {
        self.inner
            .peak_pending_output
            .fetch_max(bytes, Ordering::Relaxed);
    }
}
