//! The clock of the checkout path: when a connection was checked out, returned, opened.
//!
//! Every checkout and every return reads it, so it is the CPU's time-stamp counter through a
//! calibrated `quanta::Clock` (about 9 ns a read on x86-64 with an invariant TSC, where the OS
//! clock costs about 25 ns; `quanta` falls back to the OS clock where there is no usable
//! counter, so the saving depends on the host). The counter is calibrated against the OS clock
//! once per process, when the first pool is built: well under a millisecond on common
//! hardware, bounded by `quanta` at 200 ms. With the `test-util` feature it is tokio's clock
//! instead, so that `tokio::time::pause()` and `advance()` move lifetimes, the pre-ping bypass
//! window and leak thresholds. Every difference is taken saturating, so a counter that is not
//! perfectly in step across cores can shorten a measured time but never underflow it.

use std::ops::Add;
use std::time::Duration;

#[cfg(not(feature = "test-util"))]
type Inner = quanta::Instant;
#[cfg(feature = "test-util")]
type Inner = tokio::time::Instant;

/// A point in time on the pool's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Stamp(Inner);

/// Far enough ahead to stand for "never" (a lifetime that does not end).
const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The pool's clock; each pool holds one (the calibration behind it is shared).
#[derive(Clone, Debug)]
pub(crate) struct Clock {
    #[cfg(not(feature = "test-util"))]
    counter: quanta::Clock,
}

impl Clock {
    pub(crate) fn new() -> Clock {
        Clock {
            #[cfg(not(feature = "test-util"))]
            counter: quanta::Clock::new(),
        }
    }

    #[inline]
    pub(crate) fn now(&self) -> Stamp {
        #[cfg(not(feature = "test-util"))]
        return Stamp(self.counter.now());
        #[cfg(feature = "test-util")]
        return Stamp(Inner::now());
    }
}

impl Stamp {
    /// A point later than any this process will see.
    pub(crate) fn never(now: Stamp) -> Stamp {
        now + NEVER
    }

    /// The time from `earlier` to `self`, zero if `earlier` is later.
    #[inline]
    pub(crate) fn saturating_since(self, earlier: Stamp) -> Duration {
        self.0.saturating_duration_since(earlier.0)
    }
}

impl Add<Duration> for Stamp {
    type Output = Stamp;

    fn add(self, d: Duration) -> Stamp {
        Stamp(self.0 + d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_and_additive() {
        let clock = Clock::new();
        let a = clock.now();
        let b = clock.now();
        assert!(b >= a);
        assert_eq!(
            a.saturating_since(b + Duration::from_secs(1)),
            Duration::ZERO
        );
        assert_eq!(
            (a + Duration::from_secs(2)).saturating_since(a),
            Duration::from_secs(2)
        );
        assert!(Stamp::never(a) > b + Duration::from_secs(86_400 * 365 * 50));
    }
}
