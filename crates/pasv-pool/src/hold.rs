//! How long until a live lease ends: the hint for a client refused while every port is
//! leased and none is cooling, when the pool knows no time ([`Exhausted::retry_after`] is
//! `None`).
//!
//! A [`HoldEstimator`] keeps the hold times of the last [`HoldEstimator::WINDOW`] leases
//! and the start of every live lease. Each live lease of age `a` ends after `x` more with
//! the empirical probability `P(H > a + x | H > a)`; the leases end independently, so the
//! first of them has not ended by `x` with the product of those. The estimate is the median
//! of that first end: a client that comes back then finds a port about half of the time.
//! A lease older than every recorded hold time says nothing (the model has no data on it)
//! and is left out; with no data at all there is no estimate and the caller keeps its
//! fallback.
//!
//! Sans-IO: the caller passes every instant, so tests drive it with a fake clock.
//!
//! [`Exhausted::retry_after`]: crate::Exhausted::retry_after

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use crate::Instant;

/// Hold times of recent leases and the starts of live ones (see the module documentation).
#[derive(Clone, Debug, Default)]
pub struct HoldEstimator {
    /// The last `WINDOW` hold times, oldest first.
    samples: VecDeque<Duration>,
    /// Start of each live lease, with how many started at that instant.
    live: BTreeMap<Instant, u32>,
}

impl HoldEstimator {
    /// How many recent hold times the estimate uses.
    pub const WINDOW: usize = 256;
    /// Live leases the estimate looks at, oldest first (the oldest end first as a rule; the
    /// cap bounds the work of one estimate).
    pub const CONSIDERED: usize = 256;
    /// The shortest estimate given: holds near zero (a client that takes and drops leases
    /// in a loop) must not tell everyone to retry at once.
    pub const FLOOR: Duration = Duration::from_secs(1);
    /// The longest estimate given: a client that holds its leases for hours must not tell
    /// everyone else to come back in hours; a few minutes on, the pool will have changed.
    pub const CEILING: Duration = Duration::from_secs(300);

    /// An estimator with no data.
    pub fn new() -> HoldEstimator {
        HoldEstimator::default()
    }

    /// A lease began at `at`.
    pub fn leased(&mut self, at: Instant) {
        *self.live.entry(at).or_default() += 1;
    }

    /// The lease that began at `leased_at` ended at `now`: its hold time becomes a sample.
    /// A start that was never recorded only adds the sample.
    pub fn released(&mut self, leased_at: Instant, now: Instant) {
        if let Some(n) = self.live.get_mut(&leased_at) {
            *n -= 1;
            if *n == 0 {
                self.live.remove(&leased_at);
            }
        }
        if self.samples.len() == Self::WINDOW {
            self.samples.pop_front();
        }
        self.samples
            .push_back(now.saturating_duration_since(leased_at));
    }

    /// Live leases recorded.
    pub fn live(&self) -> usize {
        self.live.values().map(|&n| n as usize).sum()
    }

    /// Hold times recorded (at most [`HoldEstimator::WINDOW`]).
    pub fn samples(&self) -> usize {
        self.samples.len()
    }

    /// The median time from `now` until the first live lease ends, clamped to
    /// [`HoldEstimator::FLOOR`]..=[`HoldEstimator::CEILING`]; `None` without samples, without live leases, or when every
    /// live lease is older than every sample.
    pub fn first_release(&self, now: Instant) -> Option<Duration> {
        if self.samples.is_empty() {
            return None;
        }
        let mut sorted: Vec<Duration> = self.samples.iter().copied().collect();
        sorted.sort_unstable();
        // (age, count, samples longer than the age) of each informative live lease.
        let mut leases = Vec::new();
        for (&start, &count) in self.live.iter().take(Self::CONSIDERED) {
            let age = now.saturating_duration_since(start);
            let longer = sorted.len() - sorted.partition_point(|&s| s <= age);
            if longer > 0 {
                leases.push((age, count, longer as f64));
            }
        }
        if leases.is_empty() {
            return None;
        }
        // P(no lease has ended by x): decreasing in x, 0 at the longest sample.
        let survival = |x: Duration| -> f64 {
            leases
                .iter()
                .map(|&(age, count, longer)| {
                    let beyond = sorted.len() - sorted.partition_point(|&s| s <= age + x);
                    (beyond as f64 / longer).powi(count as i32)
                })
                .product()
        };
        // The smallest x with survival(x) <= 1/2, to a millisecond.
        let (mut lo, mut hi) = (Duration::ZERO, *sorted.last()?);
        while hi.saturating_sub(lo) > Duration::from_millis(1) {
            let mid = lo + (hi - lo) / 2;
            if survival(mid) <= 0.5 {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        Some(hi.clamp(Self::FLOOR, Self::CEILING))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::ZERO + Duration::from_millis(ms)
    }

    #[test]
    fn no_data_no_estimate() {
        let mut e = HoldEstimator::new();
        assert_eq!(e.first_release(at(0)), None);
        e.leased(at(0));
        assert_eq!(e.first_release(at(10)), None);
    }

    /// Hours-long holds give at most the ceiling; near-zero holds at least the floor.
    #[test]
    fn the_estimate_is_clamped_to_floor_and_ceiling() {
        let mut e = HoldEstimator::new();
        let hour = 3_600_000;
        for k in 0..10 {
            e.leased(at(k * 10 * hour));
            e.released(at(k * 10 * hour), at(k * 10 * hour + 5 * hour));
        }
        e.leased(at(200 * hour));
        assert_eq!(
            e.first_release(at(200 * hour)),
            Some(HoldEstimator::CEILING)
        );
        let mut e = HoldEstimator::new();
        for k in 0..(HoldEstimator::WINDOW as u64) {
            e.leased(at(k * 10));
            e.released(at(k * 10), at(k * 10 + 1));
        }
        e.leased(at(1_000_000));
        assert_eq!(e.first_release(at(1_000_000)), Some(HoldEstimator::FLOOR));
    }

    /// Every lease holds 20 s: a lease 5 s old ends in 15 s, and of two the older first.
    #[test]
    fn constant_holds_give_the_remaining_time_of_the_oldest() {
        let mut e = HoldEstimator::new();
        for k in 0..10 {
            e.leased(at(k * 30_000));
            e.released(at(k * 30_000), at(k * 30_000 + 20_000));
        }
        e.leased(at(1_000_000));
        e.leased(at(1_007_000));
        let d = e.first_release(at(1_010_000)).unwrap();
        assert!(
            d.abs_diff(Duration::from_millis(10_000)) <= Duration::from_millis(20),
            "{d:?}"
        );
        assert_eq!(e.live(), 2);
        // Past every sample: nothing known about the older one, the younger decides.
        let d = e.first_release(at(1_022_000)).unwrap();
        assert!(
            d.abs_diff(Duration::from_millis(5_000)) <= Duration::from_millis(20),
            "{d:?}"
        );
        assert_eq!(e.first_release(at(1_030_000)), None);
    }

    /// Holds spread evenly over 0.1-10 s; one fresh lease: its median remaining time is
    /// about 5 s; with four fresh leases the first ends when (1 - x/10)^4 = 1/2, about 1.6 s.
    #[test]
    fn more_leases_end_sooner() {
        let mut e = HoldEstimator::new();
        for k in 0..200u64 {
            let hold = 100 * (k % 100 + 1);
            e.leased(at(k * 20_000));
            e.released(at(k * 20_000), at(k * 20_000 + hold));
        }
        let start = at(10_000_000);
        e.leased(start);
        let one = e.first_release(start).unwrap();
        assert!(
            one.abs_diff(Duration::from_millis(5_000)) <= Duration::from_millis(100),
            "{one:?}"
        );
        for _ in 0..3 {
            e.leased(start);
        }
        let four = e.first_release(start).unwrap();
        assert!(
            four.abs_diff(Duration::from_millis(1_591)) <= Duration::from_millis(100),
            "{four:?}"
        );
        assert_eq!(e.live(), 4);
        e.released(start, start + Duration::from_secs(1));
        assert_eq!(e.live(), 3);
    }

    #[test]
    fn the_window_keeps_the_recent_holds() {
        let mut e = HoldEstimator::new();
        for k in 0..(HoldEstimator::WINDOW as u64 + 50) {
            let hold = if k < 50 { 60_000 } else { 200 };
            e.released(at(k * 100_000), at(k * 100_000 + hold));
        }
        assert_eq!(e.samples(), HoldEstimator::WINDOW);
        e.leased(at(100_000_000));
        // Only 200 ms holds remain: the floor.
        assert_eq!(e.first_release(at(100_000_150)), Some(HoldEstimator::FLOOR));
    }
}
