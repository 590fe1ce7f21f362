//! Per-key GCRA quotas (governor) on event time, in a budgeted store.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};

use super::clock::EventClock;
use super::store::{KeyedStore, LastSeen, StateBudget};

/// governor's theoretical arrival time for one key, plus when it was last used.
#[derive(Debug)]
pub struct Tat {
    nanos: u64,
    last_ms: i64,
}

impl LastSeen for Tat {
    fn last_seen_ms(&self) -> i64 {
        self.last_ms
    }
}

/// governor's state store, backed by a [`KeyedStore`] so quota keys count
/// against the same budget as window keys.
#[derive(Debug)]
pub struct QuotaStore {
    store: Arc<KeyedStore<Tat>>,
    clock: EventClock,
    /// How long a key stays idle before its quota is whole again and it can
    /// go (see [`KeyedQuota::new`]).
    idle_ms: i64,
}

impl StateStore for QuotaStore {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let now_ms = self.clock.now_ms();
        let measured = self.store.with(
            *key,
            now_ms - self.idle_ms,
            || Tat {
                nanos: 0,
                last_ms: now_ms,
            },
            |tat| {
                let prev = (tat.nanos != 0).then(|| Nanos::from(tat.nanos));
                let (result, next) = f(prev)?;
                tat.nanos = next.into();
                tat.last_ms = now_ms;
                Ok(result)
            },
        );
        // At the key cap the attempt is judged as a fresh key and not remembered.
        measured.unwrap_or_else(|| f(None).map(|(result, _)| result))
    }
}

/// One rule's quota: `limit` attempts per `period`, bursts up to `burst`.
pub struct KeyedQuota {
    limiter: RateLimiter<u64, QuotaStore, EventClock, NoOpMiddleware<Nanos>>,
    /// The same store the limiter owns, kept for eviction and sizing.
    store: Arc<KeyedStore<Tat>>,
    /// A whole period and the lateness: how long a key goes unused before
    /// it is stale.
    idle_ms: i64,
}

impl std::fmt::Debug for KeyedQuota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedQuota").field("idle_ms", &self.idle_ms).finish()
    }
}

impl KeyedQuota {
    /// `limit` and `burst` are at least 1 and `period_ms` at least a second
    /// (the rule compiler checks this), so the quota always exists. A key idle for
    /// a whole period has its quota whole again, as a key never seen; it is
    /// kept `lateness_ms` longer, as windows are, before it counts as gone.
    pub fn new(
        limit: NonZeroU32,
        period_ms: i64,
        burst: NonZeroU32,
        lateness_ms: i64,
        clock: EventClock,
        budget: Arc<StateBudget>,
        name: &str,
    ) -> KeyedQuota {
        let period = Duration::from_millis(period_ms.max(1) as u64);
        let per_cell = period / limit.get();
        let quota = Quota::with_period(per_cell)
            .unwrap_or_else(|| Quota::per_second(limit))
            .allow_burst(burst);
        let store = Arc::new(KeyedStore::new(budget).named(name));
        let idle_ms = period_ms.saturating_add(lateness_ms);
        let state = QuotaStore {
            store: store.clone(),
            clock: clock.clone(),
            idle_ms,
        };
        KeyedQuota {
            limiter: RateLimiter::new(quota, state, clock),
            store,
            idle_ms,
        }
    }

    /// Takes one cell for `key`; `false` when the key is over its quota.
    pub fn check(&self, key: u64) -> bool {
        self.limiter.check_key(&key).is_ok()
    }

    /// See [`KeyedStore::prefetch`].
    pub fn prefetch(&self, key: u64) {
        self.store.prefetch(key);
    }

    /// Drops keys last used at or before `horizon_ms`; keys idle for
    /// [`KeyedQuota::idle_ms`] have their quota whole again.
    pub fn evict_idle(&self, horizon_ms: i64) -> usize {
        self.store.evict_idle(horizon_ms)
    }

    /// How long a key goes unused before it is stale (see [`KeyedStore::with`]).
    pub fn idle_ms(&self) -> i64 {
        self.idle_ms
    }

    pub fn len(&self) -> usize {
        self.store.len()
    }

    /// See [`KeyedStore::cap_hits`].
    pub fn cap_hits(&self) -> super::store::CapHits {
        self.store.cap_hits()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn allows_burst_then_refuses_until_time_moves() {
        let clock = EventClock::default();
        clock.advance_to(1_000_000);
        let q = KeyedQuota::new(nz(3), 3_600_000, nz(3), 0, clock.clone(), StateBudget::new(100), "q");
        assert!(q.check(7));
        assert!(q.check(7));
        assert!(q.check(7));
        assert!(!q.check(7), "fourth in the hour is over quota");
        assert!(q.check(8), "other keys are independent");
        clock.advance_to(1_000_000 + 1_200_000); // 20 minutes: one cell back
        assert!(q.check(7));
        assert!(!q.check(7));
    }

    #[test]
    fn idle_keys_are_evicted_after_a_period() {
        let clock = EventClock::default();
        clock.advance_to(10_000);
        let budget = StateBudget::new(100);
        let q = KeyedQuota::new(nz(2), 60_000, nz(2), 0, clock.clone(), budget.clone(), "q");
        q.check(1);
        clock.advance_to(10_000 + 61_000);
        assert_eq!(q.evict_idle(clock.now_ms() - q.idle_ms()), 1);
        assert_eq!(budget.stats().live_keys, 0);
    }
}
