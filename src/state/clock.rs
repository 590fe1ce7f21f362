//! The engine's clock: event time, never the wall clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use governor::clock::Clock;
use governor::nanos::Nanos;

/// A governor clock that reads event time, set by the engine from the events
/// it processes. It only moves forward: quotas are judged at the newest event
/// time seen, so a slightly late event is judged a little late, never early.
#[derive(Debug, Clone, Default)]
pub struct EventClock(Arc<AtomicU64>);

impl EventClock {
    /// Moves the clock to `ts_ms` if that is later than where it is.
    pub fn advance_to(&self, ts_ms: i64) {
        let nanos = (ts_ms.max(0) as u64).saturating_mul(1_000_000);
        self.0.fetch_max(nanos, Ordering::AcqRel);
    }

    pub fn now_ms(&self) -> i64 {
        (self.0.load(Ordering::Acquire) / 1_000_000) as i64
    }
}

impl Clock for EventClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.0.load(Ordering::Acquire))
    }
}
