//! Long-lived memory per account and per card, and the set of recently seen
//! event ids that keeps a redelivered event from counting twice.

use crate::event::Country;

use std::sync::Mutex;

use super::store::{LastSeen, Layout, TableHasher};

/// How many devices an account remembers as its own.
pub const KNOWN_DEVICES: usize = 6;

/// Most places an account keeps (see [`AccountMemory::learn_place`]): more
/// than this many successes within the lateness on one account (itself a
/// bulk drain) forget the oldest, and an attempt that late is judged
/// against none.
pub const KEPT_PLACES: usize = 8;

/// What kamiguard remembers about an account from its successful attempts.
///
/// Every question is asked as of an attempt's event time and answered from
/// the successes strictly before it, never from what merely arrived before
/// it: an attempt that comes in behind a later success of its account (two
/// partitions, a retried send) is judged as it would be in event-time order.
/// A success at the same millisecond does not count as before.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AccountMemory {
    /// Hashes of devices that succeeded on this account, each with its
    /// first success.
    devices: [(u64, i64); KNOWN_DEVICES],
    device_count: u8,
    /// Where and when the account succeeded, oldest first: the newest place
    /// and those within the lateness before it, plus the newest one older
    /// than that, so an attempt up to the lateness late finds the place
    /// before it.
    places: smallvec::SmallVec<[Place; 2]>,
    pub last_seen_ms: i64,
}

/// A located attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Place {
    pub lat: f32,
    pub lon: f32,
    pub country: Option<Country>,
    pub ts_ms: i64,
}

impl AccountMemory {
    /// Whether `device` succeeded on this account before `ts_ms`.
    pub fn knows_device(&self, device: u64, ts_ms: i64) -> bool {
        self.devices[..self.device_count as usize]
            .iter()
            .any(|(d, first)| *d == device && *first < ts_ms)
    }

    /// Whether the account succeeded at all before `ts_ms`.
    pub fn has_history(&self, ts_ms: i64) -> bool {
        self.devices[..self.device_count as usize]
            .iter()
            .any(|(_, first)| *first < ts_ms)
            || self.places.first().is_some_and(|p| p.ts_ms < ts_ms)
    }

    /// The newest place the account succeeded at before `ts_ms`.
    pub fn place_before(&self, ts_ms: i64) -> Option<Place> {
        self.places.iter().rev().find(|p| p.ts_ms < ts_ms).copied()
    }

    /// Remembers `device` as the account's own from `ts_ms` (its earliest
    /// success, whatever the order they arrive in), forgetting the device
    /// first seen longest ago when full.
    pub fn learn_device(&mut self, device: u64, ts_ms: i64) {
        let n = self.device_count as usize;
        if let Some(known) = self.devices[..n].iter_mut().find(|(d, _)| *d == device) {
            known.1 = known.1.min(ts_ms);
            return;
        }
        if n < KNOWN_DEVICES {
            self.devices[n] = (device, ts_ms);
            self.device_count += 1;
        } else if let Some(oldest) = self.devices.iter_mut().min_by_key(|(_, first)| *first) {
            *oldest = (device, ts_ms);
        }
    }

    /// Remembers a successful place, in event-time order. Keeps the places
    /// an attempt up to `lateness_ms` behind the newest could still need: the
    /// newest, those within the lateness before it, and the newest older
    /// than that; at most [`KEPT_PLACES`], the oldest dropped first.
    pub fn learn_place(&mut self, place: Place, lateness_ms: i64) {
        let at = self.places.partition_point(|p| p.ts_ms <= place.ts_ms);
        self.places.insert(at, place);
        let newest = self.places.last().map_or(i64::MIN, |p| p.ts_ms);
        let horizon = newest.saturating_sub(lateness_ms);
        // The newest place at or before the horizon answers everything
        // older; what is before it answers nothing any more.
        let anchor = self.places.iter().rposition(|p| p.ts_ms <= horizon).unwrap_or(0);
        let drop = anchor.max(self.places.len().saturating_sub(KEPT_PLACES));
        self.places.drain(..drop);
    }
}

impl LastSeen for AccountMemory {
    fn last_seen_ms(&self) -> i64 {
        self.last_seen_ms
    }
}

/// Which account a card was activated to, learnt from successful
/// activations: the earliest one, whatever the order they arrive in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CardMemory {
    pub bound_account: u64,
    /// When that activation happened; the binding holds from then on.
    pub activated_ms: i64,
    pub last_seen_ms: i64,
}

impl CardMemory {
    /// The account the card was activated to before `ts_ms`, if it was.
    pub fn bound_before(&self, ts_ms: i64) -> Option<u64> {
        (self.activated_ms < ts_ms).then_some(self.bound_account)
    }

    /// Learns an activation to `account` at `ts_ms`; an earlier one wins.
    pub fn learn(&mut self, account: u64, ts_ms: i64) {
        if ts_ms < self.activated_ms {
            self.bound_account = account;
            self.activated_ms = ts_ms;
        }
        self.last_seen_ms = self.last_seen_ms.max(ts_ms);
    }
}

impl LastSeen for CardMemory {
    fn last_seen_ms(&self) -> i64 {
        self.last_seen_ms
    }
}

/// A set of event-id hashes, as a map so its table can be prefetched.
type IdSet = hashbrown::HashMap<u64, (), TableHasher>;

/// Event ids seen within the dedup window, in two generations: a generation is
/// dropped whole once it is older than the window, so memory follows the event
/// rate over the window and housekeeping is O(1) per event.
///
/// Shared by the threads of an engine: the generations sit behind a mutex,
/// and where their tables lie is published beside it, so that a prefetch
/// takes no lock (as [`super::KeyedStore::prefetch`]).
#[derive(Debug)]
pub struct SeenEvents {
    generations: Mutex<Generations>,
    /// Where the current and the previous generation's tables lie.
    layouts: [Layout; 2],
}

#[derive(Debug)]
struct Generations {
    current: IdSet,
    previous: IdSet,
    generation_start_ms: i64,
    window_ms: i64,
    max_ids: usize,
}

impl SeenEvents {
    /// Remembers ids for at least `window_ms` of event time, at most `max_ids`
    /// per generation (a flood rotates generations early rather than grow).
    pub fn new(window_ms: i64, max_ids: usize) -> SeenEvents {
        SeenEvents {
            generations: Mutex::new(Generations {
                current: IdSet::default(),
                previous: IdSet::default(),
                generation_start_ms: i64::MIN,
                window_ms: window_ms.max(1),
                max_ids: max_ids.max(1),
            }),
            layouts: Default::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        // A std Mutex: nothing awaits while it is held, and it is held for one
        // insert. Nothing panics while holding it; a poisoned one is still whole.
        self.generations.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `id` seen at `ts_ms`; `false` if it was already seen.
    pub fn first_time(&self, id: u64, ts_ms: i64) -> bool {
        let mut g = self.lock();
        if g.generation_start_ms == i64::MIN {
            g.generation_start_ms = ts_ms;
        }
        if ts_ms.saturating_sub(g.generation_start_ms) >= g.window_ms || g.current.len() >= g.max_ids {
            // The next generation will likely hold as many ids as this one:
            // sizing it so saves rehashing it through every doubling.
            let expected = g.current.len().min(g.max_ids);
            let next = IdSet::with_capacity_and_hasher(expected, TableHasher::default());
            g.previous = std::mem::replace(&mut g.current, next);
            g.generation_start_ms = ts_ms;
        }
        let first = !g.previous.contains_key(&id) && g.current.insert(id, ()).is_none();
        // A rotation or an insert that grew a table moved it.
        self.layouts[0].publish(g.current.raw_table());
        self.layouts[1].publish(g.previous.raw_table());
        first
    }

    /// Starts loading what [`SeenEvents::first_time`] will read for `id`.
    pub fn prefetch(&self, id: u64) {
        for layout in &self.layouts {
            layout.prefetch(id, std::mem::size_of::<(u64, ())>());
        }
    }

    pub fn len(&self) -> usize {
        let g = self.lock();
        g.current.len() + g.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_within_window_is_refused() {
        let seen = SeenEvents::new(1000, 100);
        assert!(seen.first_time(1, 0));
        assert!(!seen.first_time(1, 500));
        assert!(seen.first_time(2, 1500));
        // id 1 is in the previous generation, still remembered
        assert!(!seen.first_time(1, 1600));
    }

    #[test]
    fn known_devices_are_bounded() {
        let mut m = AccountMemory::default();
        for d in 0..10 {
            m.learn_device(d, d as i64);
        }
        assert!(m.knows_device(9, 100));
        assert!(!m.knows_device(0, 100));
    }

    #[test]
    fn memory_answers_as_of_an_attempts_time_whatever_arrived_first() {
        let place = |ts_ms, lat| Place {
            lat,
            lon: 0.0,
            country: None,
            ts_ms,
        };
        let mut m = AccountMemory::default();
        // A success at 100 s arrives first, then one at 40 s.
        m.learn_device(7, 100_000);
        m.learn_place(place(100_000, 10.0), 30_000);
        assert!(!m.has_history(50_000), "nothing was known at 50 s yet");
        m.learn_device(7, 40_000);
        m.learn_place(place(40_000, 20.0), 30_000);
        assert!(m.knows_device(7, 50_000), "the earliest success counts");
        assert!(!m.knows_device(7, 40_000), "not at the same millisecond");
        assert_eq!(m.place_before(90_000).map(|p| p.lat), Some(20.0));
        assert_eq!(m.place_before(100_001).map(|p| p.lat), Some(10.0));
        // Far newer places: those older than the lateness go, but the
        // newest of them stays to answer for its era.
        for (i, ts) in [200_000, 210_000, 220_000, 300_000].into_iter().enumerate() {
            m.learn_place(place(ts, i as f32), 30_000);
        }
        let kept: Vec<i64> = m.places.iter().map(|p| p.ts_ms).collect();
        assert_eq!(kept, [220_000, 300_000]);
        assert_eq!(m.place_before(275_000).map(|p| p.ts_ms), Some(220_000));
    }

    #[test]
    fn a_card_is_bound_from_its_earliest_activation() {
        let mut c = CardMemory {
            bound_account: 1,
            activated_ms: 500,
            last_seen_ms: 500,
        };
        assert_eq!(c.bound_before(400), None);
        c.learn(2, 300);
        assert_eq!(c.bound_before(400), Some(2));
        assert_eq!(c.bound_before(300), None);
        assert_eq!(c.last_seen_ms, 500);
    }
}
