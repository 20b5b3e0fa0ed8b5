//! Time: millisecond timestamps and the injected clock.

use std::fmt::Debug;
use std::ops::{Add, Sub};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A point in time: whole milliseconds since the Unix epoch.
///
/// Every backend stores and returns timestamps at this precision, so the same
/// calls give the same timestamps everywhere.
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// From milliseconds since the Unix epoch.
    pub const fn from_millis(millis: i64) -> Self {
        Self(millis)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// From a `SystemTime`, truncated to the millisecond.
    pub fn from_system_time(time: SystemTime) -> Self {
        match time.duration_since(UNIX_EPOCH) {
            Ok(after) => Self(i64::try_from(after.as_millis()).unwrap_or(i64::MAX)),
            Err(before) => Self(-i64::try_from(before.duration().as_millis()).unwrap_or(i64::MAX)),
        }
    }

    /// As a `SystemTime`.
    pub fn to_system_time(self) -> SystemTime {
        if self.0 >= 0 {
            UNIX_EPOCH + Duration::from_millis(self.0.unsigned_abs())
        } else {
            UNIX_EPOCH - Duration::from_millis(self.0.unsigned_abs())
        }
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl Add<Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, rhs: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(millis(rhs)))
    }
}

impl Sub<Duration> for Timestamp {
    type Output = Timestamp;
    fn sub(self, rhs: Duration) -> Timestamp {
        Timestamp(self.0.saturating_sub(millis(rhs)))
    }
}

/// Where a store takes the time from. Injected, so tests control it.
pub trait Clock: Send + Sync + Debug + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The system's wall clock.
#[derive(Copy, Clone, Default, Debug)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_system_time(SystemTime::now())
    }
}

/// A clock that moves only when told to. Clones share one time, so a test
/// keeps a clone and hands another to the store.
///
/// ```
/// # use presence_core::{Clock, ManualClock, Timestamp};
/// # use std::time::Duration;
/// let clock = ManualClock::new(Timestamp::from_millis(1_000));
/// let store_side = clock.clone();
/// clock.advance(Duration::from_secs(5));
/// assert_eq!(store_side.now(), Timestamp::from_millis(6_000));
/// ```
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: Timestamp) -> Self {
        Self(Arc::new(AtomicI64::new(start.as_millis())))
    }

    /// Moves the clock forward by `by` and returns the new time.
    pub fn advance(&self, by: Duration) -> Timestamp {
        let by = millis(by);
        Timestamp(self.0.fetch_add(by, Ordering::SeqCst).saturating_add(by))
    }

    /// Sets the clock to `to` (also backwards).
    pub fn set(&self, to: Timestamp) {
        self.0.store(to.as_millis(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

/// The clock a store uses unless told otherwise.
pub fn system_clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_system_time_at_millisecond_precision() {
        let t = Timestamp::from_millis(1_700_000_000_123);
        assert_eq!(Timestamp::from_system_time(t.to_system_time()), t);
        let before_epoch = Timestamp::from_millis(-5);
        assert_eq!(
            Timestamp::from_system_time(before_epoch.to_system_time()),
            before_epoch
        );
        let now = SystemClock.now();
        assert!(now > Timestamp::from_millis(1_600_000_000_000));
    }

    #[test]
    fn manual_clock_is_shared_by_clones() {
        let clock = ManualClock::new(Timestamp::from_millis(10));
        let other = clock.clone();
        assert_eq!(
            clock.advance(Duration::from_millis(5)),
            Timestamp::from_millis(15)
        );
        assert_eq!(other.now(), Timestamp::from_millis(15));
        other.set(Timestamp::from_millis(3));
        assert_eq!(clock.now(), Timestamp::from_millis(3));
        assert_eq!(
            clock.now() - Duration::from_millis(4),
            Timestamp::from_millis(-1)
        );
    }
}
