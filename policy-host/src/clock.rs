//! The time a guest sees: the system's, or a virtual clock that tests set
//! and advance, so that staleness, cool-downs and ticks can be tested
//! without waiting.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A clock shared by every VM of one simulated proxy.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// The system's wall clock, and a monotonic clock from the host's start.
    #[default]
    System,
    /// Nanoseconds since the epoch, moved only by [`Clock::advance`].
    Virtual(Arc<AtomicU64>),
}

impl Clock {
    /// A virtual clock reading `nanos` since the epoch.
    pub fn virtual_at(nanos: u64) -> Clock {
        Clock::Virtual(Arc::new(AtomicU64::new(nanos)))
    }

    /// Wall-clock time: nanoseconds since the epoch.
    pub fn now_nanos(&self) -> u64 {
        match self {
            Clock::System => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
            Clock::Virtual(nanos) => nanos.load(Ordering::SeqCst),
        }
    }

    /// Monotonic time in nanoseconds: never goes back.
    pub fn monotonic_nanos(&self) -> u64 {
        match self {
            Clock::System => {
                static START: OnceLock<Instant> = OnceLock::new();
                START.get_or_init(Instant::now).elapsed().as_nanos() as u64
            }
            // Only `advance` moves a virtual clock, and only forwards.
            Clock::Virtual(nanos) => nanos.load(Ordering::SeqCst),
        }
    }

    /// Moves a virtual clock forward; the system clock moves by itself, so
    /// advancing it is an error.
    pub fn advance(&self, by: Duration) -> Result<(), ClockError> {
        match self {
            Clock::System => Err(ClockError::NotVirtual),
            Clock::Virtual(nanos) => {
                let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
                let _ = nanos.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    Some(n.saturating_add(by))
                });
                Ok(())
            }
        }
    }
}

/// A clock that cannot do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClockError {
    #[error("the system clock cannot be advanced; start the host with a virtual clock")]
    NotVirtual,
}
