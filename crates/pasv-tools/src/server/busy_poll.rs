//! Busy polling: while sessions are active, the runtime keeps polling for I/O instead of
//! sleeping in `epoll_wait`, for up to `busy_poll` after the last control input.
//!
//! A server that sleeps between commands has to be woken for each one, and the wake-up is
//! paid by whoever delivers the packet. Over loopback that is the client's CPU: measured on a
//! two-vCPU VM, waking the server took a fifth of a Python client's CPU per transfer. A
//! runtime that is still polling when the command arrives needs no wake-up at all. The price
//! is the server's core, which spins for the whole window after each command (a full core
//! under steady load), so this is off by default and meant for a host with a core to spare.
//!
//! How: one task yields in a loop. Tokio defers a yielded task and polls the I/O driver
//! without blocking before running it again, so each turn of the loop is one non-blocking
//! `epoll_wait`. When no control input has arrived for the window, the task parks until the
//! next one. It works when the spinning task shares its thread with the I/O driver: a
//! current-thread runtime (`pasvd` builds one when `busy_poll` is set) or a multi-thread
//! runtime with one worker.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock;

/// Shared between the sessions (which report activity) and the polling task.
pub(crate) struct BusyPoll {
    window: Duration,
    activity: AtomicU64,
    parked: AtomicBool,
    wake: Notify,
}

impl BusyPoll {
    /// A busy poller with the given window; a zero window disables it.
    pub(crate) fn new(window: Duration) -> BusyPoll {
        BusyPoll {
            window,
            activity: AtomicU64::new(0),
            parked: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    /// Whether polling is on.
    pub(crate) fn enabled(&self) -> bool {
        !self.window.is_zero()
    }

    /// Reports control input: the window starts again, and a parked poller resumes.
    pub(crate) fn touch(&self) {
        if !self.enabled() {
            return;
        }
        self.activity.fetch_add(1, Ordering::SeqCst);
        // Either the poller's re-check after setting `parked` sees this increment, or this
        // load sees `parked` set and the notification (kept as a permit if the poller is not
        // waiting yet) wakes it: no input is missed.
        if self.parked.load(Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }

    /// Polls until `stop` is cancelled.
    pub(crate) async fn run(&self, stop: CancellationToken) {
        if !self.enabled() {
            return;
        }
        let mut seen = self.activity.load(Ordering::SeqCst);
        loop {
            // Spin: each yield is one non-blocking poll of the I/O driver.
            let mut quiet_since = clock::cpu_now();
            loop {
                tokio::task::yield_now().await;
                let now = self.activity.load(Ordering::Relaxed);
                if now != seen {
                    seen = now;
                    quiet_since = clock::cpu_now();
                } else if quiet_since.elapsed() >= self.window {
                    break;
                }
            }
            // Quiet for a whole window: sleep until the next control input.
            self.parked.store(true, Ordering::SeqCst);
            let now = self.activity.load(Ordering::SeqCst);
            if now == seen {
                tokio::select! {
                    () = self.wake.notified() => {}
                    () = stop.cancelled() => return,
                }
            }
            self.parked.store(false, Ordering::SeqCst);
            seen = self.activity.load(Ordering::SeqCst);
            if stop.is_cancelled() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn disabled_poller_returns_at_once_and_touch_is_free() {
        let poll = BusyPoll::new(Duration::ZERO);
        poll.touch();
        assert_eq!(poll.activity.load(Ordering::SeqCst), 0);
        poll.run(CancellationToken::new()).await;
    }

    #[tokio::test]
    async fn poller_parks_when_quiet_resumes_on_input_and_stops_on_cancel() {
        let poll = Arc::new(BusyPoll::new(Duration::from_micros(200)));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (poll, stop) = (Arc::clone(&poll), stop.clone());
            async move { poll.run(stop).await }
        });
        // Quiet: the poller parks after its window (bounded wait for the flag).
        let parked = async {
            while !poll.parked.load(Ordering::SeqCst) {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), parked)
            .await
            .expect("poller parks when quiet");
        // Input wakes it: it unparks, and parks again after the next quiet window.
        poll.touch();
        let resumed = async {
            while poll.parked.load(Ordering::SeqCst) {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), resumed)
            .await
            .expect("poller resumes on input");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("poller stops on cancel")
            .expect("poller task");
    }
}
