//! Long-lived memory per account and per card, and the set of recently seen
//! event ids that keeps a redelivered event from counting twice.

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
///
/// Times are kept as milliseconds before `last_seen_ms` in a `u32` (up to
/// 49 days; older reads as 49 days), so an account takes 120 bytes: the
/// accounts' table is walked on every attempt, and its slot size is felt in
/// the replay's speed (BENCHMARKS.md, "Hostile input: what the bounds and
/// the as-of memory cost").
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AccountMemory {
    /// Hashes of devices that succeeded on this account.
    devices: [u64; KNOWN_DEVICES],
    /// How long before `last_seen_ms` each device first succeeded.
    device_backs: [u32; KNOWN_DEVICES],
    device_count: u8,
    /// Where the account succeeded, oldest first: the newest place and those
    /// within the lateness before it, plus the newest one older than that,
    /// so an attempt up to the lateness late finds the place before it.
    places: smallvec::SmallVec<[Spot; 2]>,
    /// The newest success; every kept time counts back from it.
    pub last_seen_ms: i64,
}

/// A place as kept: where, and how long before `last_seen_ms`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Spot {
    lat: f32,
    lon: f32,
    back_ms: u32,
}

/// A located success.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Place {
    pub lat: f32,
    pub lon: f32,
    pub ts_ms: i64,
}

impl AccountMemory {
    /// The event time of a time kept as `back_ms` before the newest success.
    fn at(&self, back_ms: u32) -> i64 {
        self.last_seen_ms - back_ms as i64
    }

    /// `ts_ms` as kept: how long before the newest success.
    fn back(&self, ts_ms: i64) -> u32 {
        u32::try_from(self.last_seen_ms.saturating_sub(ts_ms)).unwrap_or(u32::MAX)
    }

    /// Whether `device` succeeded on this account before `ts_ms`.
    pub fn knows_device(&self, device: u64, ts_ms: i64) -> bool {
        let n = self.device_count as usize;
        self.devices[..n]
            .iter()
            .zip(&self.device_backs[..n])
            .any(|(d, back)| *d == device && self.at(*back) < ts_ms)
    }

    /// Whether the account succeeded at all before `ts_ms`.
    pub fn has_history(&self, ts_ms: i64) -> bool {
        let n = self.device_count as usize;
        self.device_backs[..n].iter().any(|back| self.at(*back) < ts_ms)
            || self.places.first().is_some_and(|p| self.at(p.back_ms) < ts_ms)
    }

    /// The newest place the account succeeded at before `ts_ms`.
    pub fn place_before(&self, ts_ms: i64) -> Option<Place> {
        self.places
            .iter()
            .rev()
            .find(|p| self.at(p.back_ms) < ts_ms)
            .map(|p| Place {
                lat: p.lat,
                lon: p.lon,
                ts_ms: self.at(p.back_ms),
            })
    }

    /// Learns a success at `ts_ms`: from `device`, at `place`. Keeps the
    /// places an attempt up to `lateness_ms` behind the newest could still
    /// need (see [`AccountMemory::places`]), at most [`KEPT_PLACES`].
    pub fn learn(&mut self, ts_ms: i64, device: Option<u64>, place: Option<(f32, f32)>, lateness_ms: i64) {
        if ts_ms > self.last_seen_ms {
            // Every kept time counts back from the newest success.
            let shift = u32::try_from(ts_ms - self.last_seen_ms).unwrap_or(u32::MAX);
            for back in &mut self.device_backs {
                *back = back.saturating_add(shift);
            }
            for p in &mut self.places {
                p.back_ms = p.back_ms.saturating_add(shift);
            }
            self.last_seen_ms = ts_ms;
        }
        let back = self.back(ts_ms);
        if let Some(d) = device {
            self.learn_device(d, back);
        }
        if let Some((lat, lon)) = place {
            self.learn_place(
                Spot {
                    lat,
                    lon,
                    back_ms: back,
                },
                lateness_ms,
            );
        }
    }

    /// Remembers `device` from `back` (its earliest success, whatever the
    /// order they arrive in), forgetting the device first seen longest ago
    /// when full.
    fn learn_device(&mut self, device: u64, back: u32) {
        let n = self.device_count as usize;
        if let Some(i) = self.devices[..n].iter().position(|d| *d == device) {
            self.device_backs[i] = self.device_backs[i].max(back);
            return;
        }
        let slot = if n < KNOWN_DEVICES {
            self.device_count += 1;
            n
        } else {
            (0..KNOWN_DEVICES).max_by_key(|i| self.device_backs[*i]).unwrap_or(0)
        };
        self.devices[slot] = device;
        self.device_backs[slot] = back;
    }

    fn learn_place(&mut self, spot: Spot, lateness_ms: i64) {
        // Oldest first: the largest `back_ms` first. The newest success (the
        // usual case) goes last, and an account that succeeds now and then
        // keeps two places, its newest and the one before, inline.
        if spot.back_ms == 0 {
            self.places.push(spot);
        } else {
            let at = self.places.partition_point(|p| p.back_ms >= spot.back_ms);
            self.places.insert(at, spot);
        }
        let horizon = u32::try_from(lateness_ms).unwrap_or(u32::MAX);
        // The newest place at or before the horizon answers everything
        // older; what is before it answers nothing any more.
        let anchor = self.places.iter().rposition(|p| p.back_ms >= horizon).unwrap_or(0);
        let drop = anchor.max(self.places.len().saturating_sub(KEPT_PLACES));
        self.places.drain(..drop);
    }
}

// The size the doc above promises, where pointers are 64 bits.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<AccountMemory>() == 120);

/// What [`AccountMemory`] says about one attempt, as of its event time: all
/// the rules read of it, small enough to copy out of the store.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Recalled {
    /// The account succeeded before the attempt.
    pub has_history: bool,
    /// The attempt's device succeeded on it before; `None` without a device.
    pub knows_device: Option<bool>,
    /// The newest place it succeeded at before the attempt.
    pub last_place: Option<Place>,
}

impl AccountMemory {
    /// What the rules ask of the account about an attempt at `ts_ms` from `device`.
    pub fn recall(&self, device: Option<u64>, ts_ms: i64) -> Recalled {
        Recalled {
            has_history: self.has_history(ts_ms),
            knows_device: device.map(|d| self.knows_device(d, ts_ms)),
            last_place: self.place_before(ts_ms),
        }
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
            m.learn(d as i64 + 1, Some(d), None, 30_000);
        }
        assert!(m.knows_device(9, 100));
        assert!(!m.knows_device(0, 100));
    }

    #[test]
    fn memory_answers_as_of_an_attempts_time_whatever_arrived_first() {
        let mut m = AccountMemory::default();
        // A success at 100 s arrives first, then one at 40 s.
        m.learn(100_000, Some(7), Some((10.0, 0.0)), 30_000);
        assert!(!m.has_history(50_000), "nothing was known at 50 s yet");
        m.learn(40_000, Some(7), Some((20.0, 0.0)), 30_000);
        assert!(m.knows_device(7, 50_000), "the earliest success counts");
        assert!(!m.knows_device(7, 40_000), "not at the same millisecond");
        assert_eq!(m.place_before(90_000).map(|p| (p.lat, p.ts_ms)), Some((20.0, 40_000)));
        assert_eq!(m.place_before(100_001).map(|p| p.lat), Some(10.0));
        // Far newer places: those older than the lateness go, but the
        // newest of them stays to answer for its era.
        for (i, ts) in [200_000, 210_000, 220_000, 300_000].into_iter().enumerate() {
            m.learn(ts, None, Some((i as f32, 0.0)), 30_000);
        }
        let kept: Vec<i64> = m.places.iter().map(|p| m.at(p.back_ms)).collect();
        assert_eq!(kept, [220_000, 300_000]);
        assert_eq!(m.place_before(275_000).map(|p| p.ts_ms), Some(220_000));
        // Times older than a u32 of milliseconds read as that old.
        m.learn(300_000 + 60 * 86_400_000, None, None, 30_000);
        assert!(m.knows_device(7, 300_000 + 60 * 86_400_000));
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
