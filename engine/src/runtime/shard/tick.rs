//! A connection's timestamps in four bytes: milliseconds on a process-wide
//! clock, modulo 2^32 (49.7 days).
//!
//! Every idle connection keeps when it was last heard from, when it was
//! pinged, when it began closing and when its rate bucket last refilled.
//! As `Instant`s those were 16 bytes each (24 with an `Option` and
//! padding); as ticks they are 4, and `Option<Tick>` too (tick values are
//! never zero). Differences are taken modulo 2^32, so they are exact for
//! any two instants less than 49.7 days apart: every timeout that reads
//! them (ping interval, pong timeout, close grace, idle expiry, rate
//! refill) is far shorter, and a live connection refreshes them.

use std::num::NonZeroU32;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A point in time, in milliseconds on the process clock, wrapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick(NonZeroU32);

/// The process clock's zero: the first instant anything asked for a tick.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Tick {
    pub fn now() -> Tick {
        Tick::of(Instant::now())
    }

    /// The tick `at` falls in (whole milliseconds, rounded down).
    pub fn of(at: Instant) -> Tick {
        let zero = epoch();
        let ms = match at.checked_duration_since(zero) {
            Some(after) => after.as_millis() as u32,
            // Rounded down too: minus the whole milliseconds before zero,
            // rounded up.
            None => {
                let before = zero - at;
                let up = before.as_millis()
                    + u128::from(!before.subsec_nanos().is_multiple_of(1_000_000));
                0u32.wrapping_sub(up as u32)
            }
        };
        // Counted from the middle of the range, so that no tick near the
        // clock's zero is zero; the one millisecond in 2^32 that is (24.8
        // days away) reads as the next.
        Tick(NonZeroU32::new(ms.wrapping_add(1 << 31)).unwrap_or(NonZeroU32::MIN))
    }

    /// Whole milliseconds from `earlier` to `self` (modulo 2^32).
    fn millis_since(self, earlier: Tick) -> u32 {
        self.0.get().wrapping_sub(earlier.0.get())
    }

    /// The time from `earlier` to `self`; zero if `earlier` is later by
    /// less than half the clock's range (it was taken after `self`).
    pub fn since(self, earlier: Tick) -> Duration {
        let ms = self.millis_since(earlier);
        if ms > u32::MAX / 2 {
            Duration::ZERO
        } else {
            Duration::from_millis(u64::from(ms))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_measure_whole_milliseconds_either_side_of_the_epoch() {
        let t0 = Instant::now();
        let a = Tick::of(t0);
        assert_eq!(
            Tick::of(t0 + Duration::from_millis(1500))
                .since(a)
                .as_millis(),
            1500
        );
        // Before the clock's zero too (the epoch is the first use).
        let early = Tick::of(t0 - Duration::from_secs(100));
        assert_eq!(a.since(early).as_secs(), 100);
        // Backwards reads as zero, not as 49 days.
        assert_eq!(early.since(a), Duration::ZERO);
        assert_eq!(std::mem::size_of::<Option<Tick>>(), 4);
    }

    #[test]
    fn differences_survive_the_wrap() {
        let before = Tick(NonZeroU32::new(u32::MAX - 10).unwrap_or(NonZeroU32::MIN));
        let after = Tick(NonZeroU32::new(20).unwrap_or(NonZeroU32::MIN));
        assert_eq!(after.millis_since(before), 31);
        assert_eq!(after.since(before), Duration::from_millis(31));
    }
}
