//! Virtual time: the pool never reads a clock, every call takes `now`.

use std::fmt;
use std::ops::{Add, AddAssign, Sub};
use std::time::Duration;

/// A point in time, in nanoseconds since an arbitrary origin ([`Instant::ZERO`]).
///
/// Simulations start at zero; a server maps its monotonic clock onto this type once (for
/// example, nanoseconds since it started). Arithmetic saturates instead of panicking, so a
/// hostile or absurd `Duration` can never bring the pool down.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Instant(u64);

impl Instant {
    /// The origin of time.
    pub const ZERO: Instant = Instant(0);
    /// The latest representable instant (about 584 years after [`Instant::ZERO`]).
    pub const MAX: Instant = Instant(u64::MAX);

    /// The instant `n` nanoseconds after [`Instant::ZERO`].
    pub const fn from_nanos(n: u64) -> Instant {
        Instant(n)
    }

    /// Nanoseconds since [`Instant::ZERO`].
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// The instant `s` seconds after [`Instant::ZERO`]; negative or NaN values give zero,
    /// values beyond the range saturate.
    pub fn from_secs_f64(s: f64) -> Instant {
        // `as` saturates for floats (and maps NaN to 0), which is the behaviour documented.
        Instant((s * 1e9) as u64)
    }

    /// Seconds since [`Instant::ZERO`], as a float.
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e9
    }

    /// `self + d`, or `None` if that is beyond [`Instant::MAX`].
    pub fn checked_add(self, d: Duration) -> Option<Instant> {
        let n = u64::try_from(d.as_nanos()).ok()?;
        self.0.checked_add(n).map(Instant)
    }

    /// `self + d`, saturating at [`Instant::MAX`].
    pub fn saturating_add(self, d: Duration) -> Instant {
        self.checked_add(d).unwrap_or(Instant::MAX)
    }

    /// The time elapsed from `earlier` to `self`, or zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    /// Saturates at [`Instant::MAX`].
    fn add(self, d: Duration) -> Instant {
        self.saturating_add(d)
    }
}

impl AddAssign<Duration> for Instant {
    fn add_assign(&mut self, d: Duration) {
        *self = self.saturating_add(d);
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    /// Saturates at zero.
    fn sub(self, earlier: Instant) -> Duration {
        self.saturating_duration_since(earlier)
    }
}

impl Sub<Duration> for Instant {
    type Output = Instant;
    /// Saturates at [`Instant::ZERO`].
    fn sub(self, d: Duration) -> Instant {
        Instant(self.0.saturating_sub(nanos(d)))
    }
}

impl fmt::Debug for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{:09}s",
            self.0 / 1_000_000_000,
            self.0 % 1_000_000_000
        )
    }
}

impl fmt::Display for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A `Duration` in nanoseconds, saturating at `u64::MAX`.
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = Instant::from_nanos(5);
        assert_eq!(t + Duration::from_nanos(3), Instant::from_nanos(8));
        assert_eq!(Instant::MAX + Duration::from_secs(1), Instant::MAX);
        assert_eq!(t - Instant::from_nanos(9), Duration::ZERO);
        assert_eq!(Instant::from_nanos(9) - t, Duration::from_nanos(4));
        assert_eq!(t - Duration::from_nanos(2), Instant::from_nanos(3));
        assert_eq!(t - Duration::from_secs(1), Instant::ZERO);
        assert_eq!(Instant::MAX.checked_add(Duration::from_nanos(1)), None);
        assert_eq!(
            Instant::from_secs_f64(1.5),
            Instant::from_nanos(1_500_000_000)
        );
        assert_eq!(Instant::from_secs_f64(-1.0), Instant::ZERO);
        assert_eq!(
            format!("{:?}", Instant::from_nanos(1_000_000_007)),
            "1.000000007s"
        );
    }
}
