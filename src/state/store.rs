//! Keyed state in a `DashMap`, bounded by a shared key budget.

use std::hash::BuildHasher;

use crate::key::key_hasher;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::{DashMap, SharedValue};

/// The hasher of the stores' own tables. Their keys are [`crate::key::key_of`] hashes
/// already, evenly spread in every bit, so the table uses the key as it is
/// instead of hashing it a second time.
#[derive(Debug, Default, Clone, Copy)]
pub struct PreHashed(u64);

impl std::hash::Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, key: u64) {
        self.0 = key;
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are stored; anything else is still spread, if slowly.
        self.0 = key_hasher().hash_one(bytes);
    }
}

/// Builds [`PreHashed`] hashers for the stores' tables.
pub type TableHasher = std::hash::BuildHasherDefault<PreHashed>;

/// How many keys all stores together may hold, and what happened at the limit.
/// Shared by every store of an engine so one figure bounds its memory.
#[derive(Debug)]
pub struct StateBudget {
    cap: usize,
    live: AtomicUsize,
    /// Stores drawing on the budget, for their fair share under pressure.
    stores: AtomicUsize,
    evicted: AtomicU64,
    cap_hits: AtomicU64,
}

/// A snapshot of the budget's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BudgetStats {
    pub cap: usize,
    pub live_keys: usize,
    pub evicted: u64,
    pub cap_hits: u64,
}

impl StateBudget {
    pub fn new(cap: usize) -> Arc<StateBudget> {
        Arc::new(StateBudget {
            cap,
            live: AtomicUsize::new(0),
            stores: AtomicUsize::new(0),
            evicted: AtomicU64::new(0),
            cap_hits: AtomicU64::new(0),
        })
    }

    pub fn stats(&self) -> BudgetStats {
        BudgetStats {
            cap: self.cap,
            live_keys: self.live.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
            cap_hits: self.cap_hits.load(Ordering::Relaxed),
        }
    }

    /// Whether the stores hold three quarters of the cap or more: from
    /// there on, only a store under its fair share takes new keys
    /// ([`StateBudget::try_take`]), and the engine sweeps every store at
    /// every round.
    pub fn crowded(&self) -> bool {
        self.live.load(Ordering::Relaxed) >= self.crowded_from()
    }

    fn crowded_from(&self) -> usize {
        self.cap - self.cap / 4
    }

    /// Takes a key for a store that holds `mine` keys. Up to three quarters
    /// of the cap any store may; past that, only a store under its fair
    /// share (the cap over the number of stores). A flood of fresh keys in
    /// one store (an attacker rotating addresses or codes) then leaves the
    /// last quarter to the other stores instead of blinding every rule to
    /// new keys.
    fn try_take(&self, mine: usize) -> bool {
        let crowded_from = self.crowded_from();
        // Under its share: `mine < cap / stores`, without a division on
        // every new key, and only asked once crowded.
        let under_share = || mine.saturating_mul(self.stores.load(Ordering::Relaxed).max(1)) < self.cap;
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < crowded_from || (n < self.cap && under_share())).then_some(n + 1)
            })
            .is_ok()
    }

    fn give_back(&self, n: usize, evicted: bool) {
        self.live.fetch_sub(n, Ordering::AcqRel);
        if evicted {
            self.evicted.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    fn note_cap_hit(&self) {
        self.cap_hits.fetch_add(1, Ordering::Relaxed);
    }
}

/// The new keys a store refused ([`StateBudget::try_take`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapHits {
    /// What the store keeps: a rule's id, "account memory", "card memory".
    pub store: String,
    pub hits: u64,
}

/// Values that know when they were last touched (event time, ms).
pub trait LastSeen {
    fn last_seen_ms(&self) -> i64;
}

/// A map from key hash to state, counted against a [`StateBudget`].
#[derive(Debug)]
pub struct KeyedStore<V> {
    map: DashMap<u64, V, TableHasher>,
    /// Keys held, for the store's fair share of the budget (the map's own
    /// `len` locks every shard).
    live: AtomicUsize,
    /// What the store keeps (a rule's id, "account memory"), for the log
    /// and the summary when it refuses keys.
    name: Arc<str>,
    /// New keys this store refused ([`StateBudget::try_take`]).
    cap_hits: AtomicU64,
    /// Per shard, where its table lies, for [`KeyedStore::prefetch`].
    layouts: Box<[Layout]>,
    budget: Arc<StateBudget>,
}

/// Where a shard's table lies: the end of its slots (where its control bytes
/// begin) and its number of buckets. Published under the write lock by
/// every [`KeyedStore::with_new`], the only path that can move a table
/// (hashbrown grows it while finding a slot), and read by
/// [`KeyedStore::prefetch`] without
/// the shard's lock: two plain loads where a shared lock takes two locked
/// instructions, which measured a tenth of the engine's time (BENCHMARKS.md,
/// "fewer locks and instructions per attempt"). A prefetch that reads a layout a concurrent insert is
/// replacing (the old one, or half of each) hints at lines that are not the
/// table's: a wasted hint, never a read.
#[derive(Debug, Default)]
pub(crate) struct Layout {
    end: AtomicPtr<u8>,
    buckets: AtomicUsize,
}

impl Layout {
    /// Records where `table` lies, writing only what changed: tables
    /// rarely move once grown, and several shards' layouts share a cache
    /// line, which threads writing to different shards would otherwise
    /// pass back and forth on every update.
    pub(crate) fn publish<T>(&self, table: &hashbrown::raw::RawTable<T>) {
        let (end, buckets) = (table.data_end().as_ptr().cast::<u8>(), table.buckets());
        if self.end.load(Ordering::Relaxed) != end {
            self.end.store(end, Ordering::Relaxed);
        }
        if self.buckets.load(Ordering::Relaxed) != buckets {
            self.buckets.store(buckets, Ordering::Relaxed);
        }
    }

    /// Prefetches the lines a lookup of `hash` reads first in the table last
    /// published, whose slots are `slot` bytes (see [`prefetch_probe_at`]).
    pub(crate) fn prefetch(&self, hash: u64, slot: usize) {
        let buckets = self.buckets.load(Ordering::Relaxed);
        if buckets > 0 {
            prefetch_probe_at(self.end.load(Ordering::Relaxed), buckets, slot, hash);
        }
    }
}

impl<V: LastSeen> KeyedStore<V> {
    /// What the store keeps, named in the log and the summary when it
    /// refuses keys.
    pub fn named(mut self, name: impl Into<Arc<str>>) -> KeyedStore<V> {
        self.name = name.into();
        self
    }

    /// The new keys this store refused.
    pub fn cap_hits(&self) -> CapHits {
        CapHits {
            store: self.name.to_string(),
            hits: self.cap_hits.load(Ordering::Relaxed),
        }
    }

    pub fn new(budget: Arc<StateBudget>) -> KeyedStore<V> {
        let map = DashMap::with_hasher(TableHasher::default());
        budget.stores.fetch_add(1, Ordering::Relaxed);
        KeyedStore {
            live: AtomicUsize::new(0),
            name: Arc::from("state"),
            cap_hits: AtomicU64::new(0),
            layouts: map.shards().iter().map(|_| Layout::default()).collect(),
            map,
            budget,
        }
    }

    /// Runs `f` on the state for `key`, creating it with `init` when absent.
    /// Returns `None` when the key is new and the budget is spent: the attempt
    /// is not tracked under this key, and the cap hit is counted.
    ///
    /// A state last touched at or before `stale_ms` is what a sweep at this
    /// moment would evict ([`KeyedStore::evict_idle`] with the same horizon),
    /// so it is treated as absent and made again with `init`, whether or not a
    /// sweep has reached it yet: when sweeps run changes memory, never an
    /// answer. `i64::MIN` keeps every state.
    ///
    /// The DashMap guard lives only inside this call, never across an await.
    pub fn with<R>(&self, key: u64, stale_ms: i64, init: impl FnOnce() -> V, f: impl FnOnce(&mut V) -> R) -> Option<R> {
        self.with_new(key, stale_ms, init, |v, _| f(v))
    }

    /// As [`KeyedStore::with`], and tells `f` whether `init` just made the
    /// state (new or stale).
    pub fn with_new<R>(
        &self,
        key: u64,
        stale_ms: i64,
        init: impl FnOnce() -> V,
        f: impl FnOnce(&mut V, bool) -> R,
    ) -> Option<R> {
        // The shard's table is used directly, as DashMap's own `entry` does,
        // so that an insert can publish where the table now lies. One probe
        // whether the key is there or not: a flood of new keys (the common
        // case under attack) pays for one lookup, not two.
        let shard = self.map.determine_shard(key as usize);
        let mut table = self.map.shards()[shard].write();
        // The key is its own hash (`PreHashed`), as DashMap hashes it.
        let found = table.find_or_find_insert_slot(key, |(k, _)| *k == key, |(k, _)| *k);
        // Finding the key or a slot for it may have grown the table (hashbrown
        // makes room first), whether or not the key was there.
        self.layouts[shard].publish(&table);
        // `init` is kept for a state that was found, to remake it if stale.
        let (bucket, unused_init) = match found {
            Ok(bucket) => (bucket, Some(init)),
            Err(slot) => {
                if !self.budget.try_take(self.live.load(Ordering::Relaxed)) {
                    drop(table);
                    self.budget.note_cap_hit();
                    let hits = self.cap_hits.fetch_add(1, Ordering::Relaxed) + 1;
                    if hits.is_power_of_two() {
                        tracing::warn!(
                            store = %self.name,
                            cap = self.budget.cap,
                            hits,
                            "State key cap reached for this store; its new keys are not tracked."
                        );
                    }
                    return None;
                }
                // SAFETY: `slot` was just found for `key` in this table, under
                // the write lock still held, with nothing inserted since.
                #[allow(unsafe_code)]
                let bucket = unsafe { table.insert_in_slot(key, slot, (key, SharedValue::new(init()))) };
                self.live.fetch_add(1, Ordering::Relaxed);
                (bucket, None)
            }
        };
        // SAFETY: `bucket` is a live slot of `table`, whose write lock is held
        // for as long as the reference lives.
        #[allow(unsafe_code)]
        let value = unsafe { bucket.as_mut() }.1.get_mut();
        let fresh = match unused_init {
            None => true,
            Some(init) if value.last_seen_ms() <= stale_ms => {
                *value = init();
                true
            }
            Some(_) => false,
        };
        Some(f(value, fresh))
    }

    /// Asks the CPU to start loading the cache lines a lookup of `key` will
    /// read first (the control bytes and the first slots of its probe), so
    /// that the lookup, made a little later, does not wait for memory. Only a
    /// hint: it changes no state and cannot fail.
    pub fn prefetch(&self, key: u64) {
        self.layouts[self.map.determine_shard(key as usize)]
            .prefetch(key, std::mem::size_of::<(u64, SharedValue<V>)>());
    }

    /// Reads the state for `key`, if any that is not stale (see [`KeyedStore::with`]).
    pub fn read<R>(&self, key: u64, stale_ms: i64, f: impl FnOnce(&V) -> R) -> Option<R> {
        self.map
            .get(&key)
            .filter(|v| v.last_seen_ms() > stale_ms)
            .map(|v| f(&v))
    }

    /// Drops every key last touched at or before `horizon_ms`.
    pub fn evict_idle(&self, horizon_ms: i64) -> usize {
        self.evict_idle_each(horizon_ms, |_| {})
    }

    /// As [`KeyedStore::evict_idle`], showing `gone` each value it drops.
    pub fn evict_idle_each(&self, horizon_ms: i64, mut gone: impl FnMut(&V)) -> usize {
        // Counted as removed, not as a difference of lengths: other threads
        // may insert into the shards not being walked.
        let mut removed = 0;
        self.map.retain(|_, v| {
            let keep = v.last_seen_ms() > horizon_ms;
            if !keep {
                gone(v);
            }
            removed += usize::from(!keep);
            keep
        });
        self.live.fetch_sub(removed, Ordering::Relaxed);
        self.budget.give_back(removed, true);
        removed
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Calls `f` on every value (one shard locked at a time).
    pub fn for_each(&self, mut f: impl FnMut(&V)) {
        for entry in self.map.iter() {
            f(entry.value());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Prefetches the lines a lookup of `hash` reads first in a table known by
/// its layout: where its slots end, its number of buckets (a power of two)
/// and the size of a slot. Those lines are the 16 control bytes where its
/// probe starts, and the slots they stand for. By hashbrown's layout, the
/// slots end where the control bytes begin, slot `i` is the `i + 1`-th
/// before that point, and a probe starts at `hash & (buckets - 1)`.
///
/// The slots are the one where the probe starts and the three after it, at
/// most four cache lines: a lookup usually finds its key there, and an
/// insert takes the first free slot of the group, often one of those. Fewer
/// (two slots) or more (eight, or four without the cap) measured slower on
/// the million (BENCHMARKS.md, "prepared attempts"). Only computes addresses and hints
/// them: never reads through them.
fn prefetch_probe_at(end: *const u8, buckets: usize, slot: usize, hash: u64) {
    let start = (hash as usize) & (buckets - 1);
    let ctrl = end.wrapping_add(start);
    prefetch(ctrl);
    prefetch(ctrl.wrapping_add(15));
    let high = end.wrapping_sub(start * slot);
    let low = end.wrapping_sub((start + 4) * slot).max(high.wrapping_sub(256));
    let mut at = low;
    while at < high {
        prefetch(at);
        at = at.wrapping_add(64);
    }
    prefetch(high.wrapping_sub(1));
}

/// A prefetch hint for the line holding `at`.
#[inline(always)]
#[allow(unsafe_code)]
fn prefetch(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch only hints the cache; it never dereferences `at` in
    // the language's sense and never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

impl<V> Drop for KeyedStore<V> {
    fn drop(&mut self) {
        // Keys of a dropped store (a rule removed on reload) go back to the budget.
        self.budget.give_back(self.map.len(), false);
        self.budget.stores.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::key_of;

    struct V(i64);
    impl LastSeen for V {
        fn last_seen_ms(&self) -> i64 {
            self.0
        }
    }

    #[test]
    fn cap_holds_and_is_counted() {
        let budget = StateBudget::new(3);
        let store = KeyedStore::<V>::new(budget.clone());
        for k in 0..10u64 {
            store.with(k, i64::MIN, || V(k as i64), |_| ());
        }
        assert_eq!(store.len(), 3);
        let stats = budget.stats();
        assert_eq!(stats.live_keys, 3);
        assert_eq!(stats.cap_hits, 7);
        // existing keys still update at the cap
        assert_eq!(store.with(1, i64::MIN, || V(0), |v| v.0), Some(1));
    }

    #[test]
    fn concurrent_updates_and_prefetches_lose_nothing() {
        // Two writers add to the same keys while a third thread prefetches
        // them: every table grows many times under the prefetches.
        let budget = StateBudget::new(1 << 20);
        let store = KeyedStore::<V>::new(budget.clone());
        let keys = 50_000u64;
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for k in 0..keys {
                        store.with(key_of(&k), i64::MIN, || V(0), |v| v.0 += 1);
                    }
                });
            }
            s.spawn(|| {
                for k in 0..keys {
                    store.prefetch(key_of(&k));
                }
            });
        });
        assert_eq!(store.len(), keys as usize);
        assert_eq!(budget.stats().live_keys, keys as usize);
        for k in 0..keys {
            assert_eq!(store.read(key_of(&k), i64::MIN, |v| v.0), Some(2), "key {k}");
        }
    }

    #[test]
    fn past_three_quarters_of_the_cap_only_a_store_under_its_share_grows() {
        let budget = StateBudget::new(8);
        let (flooded, other) = (
            KeyedStore::<V>::new(budget.clone()),
            KeyedStore::<V>::new(budget.clone()),
        );
        let tracked = |store: &KeyedStore<V>, keys: std::ops::Range<u64>| {
            keys.filter(|k| store.with(*k, i64::MIN, || V(0), |_| ()).is_some())
                .count()
        };
        // The flood takes three quarters of the cap (6 of 8), then stops:
        // it holds more than its share (8 over 2 stores).
        assert_eq!(tracked(&flooded, 0..100), 6);
        assert!(budget.crowded());
        // The other store takes the rest, up to the cap.
        assert_eq!(tracked(&other, 0..100), 2);
        assert_eq!(budget.stats().live_keys, 8);
        assert_eq!(budget.stats().cap_hits, 94 + 98);
        // Keys already tracked still update.
        assert_eq!(flooded.with(0, i64::MIN, || V(0), |v| v.0 = 5), Some(()));
        // Evicted keys make room again, for the store they came from too.
        assert_eq!(flooded.evict_idle(0), 5);
        assert_eq!(tracked(&flooded, 100..103), 3);
    }

    #[test]
    fn a_stale_key_reads_as_absent_and_is_remade_before_any_sweep() {
        let budget = StateBudget::new(10);
        let store = KeyedStore::<V>::new(budget.clone());
        store.with(1, i64::MIN, || V(100), |_| ());
        // Still live at a horizon before its last touch.
        assert_eq!(store.read(1, 99, |v| v.0), Some(100));
        assert_eq!(
            store.with_new(1, 99, || V(0), |v, fresh| (v.0, fresh)),
            Some((100, false))
        );
        // At or past it: what a sweep would evict, so absent, then made again.
        assert_eq!(store.read(1, 100, |v| v.0), None);
        assert_eq!(
            store.with_new(1, 100, || V(7), |v, fresh| (v.0, fresh)),
            Some((7, true))
        );
        // Remade in place: still one key against the budget.
        assert_eq!(budget.stats().live_keys, 1);
        assert_eq!(store.read(1, 6, |v| v.0), Some(7));
    }

    #[test]
    fn eviction_frees_budget() {
        let budget = StateBudget::new(3);
        let store = KeyedStore::<V>::new(budget.clone());
        for k in 0..3u64 {
            store.with(k, i64::MIN, || V(k as i64 * 100), |_| ());
        }
        assert_eq!(store.evict_idle(150), 2);
        assert_eq!(budget.stats().live_keys, 1);
        assert_eq!(budget.stats().evicted, 2);
        assert!(store.with(7, i64::MIN, || V(500), |_| ()).is_some());
    }
}
