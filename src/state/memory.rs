//! Long-lived memory per account and per card, and the set of recently seen
//! event ids that keeps a redelivered event from counting twice.

use crate::event::Country;

use std::sync::Mutex;

use super::store::{LastSeen, Layout, TableHasher};

/// How many devices an account remembers as its own.
pub const KNOWN_DEVICES: usize = 6;

/// What kamiguard remembers about an account from its successful attempts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AccountMemory {
    /// Hashes of devices that succeeded on this account, newest last.
    devices: [u64; KNOWN_DEVICES],
    device_count: u8,
    /// Where and when the account last succeeded.
    pub last_place: Option<Place>,
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
    pub fn knows_device(&self, device: u64) -> bool {
        self.devices[..self.device_count as usize].contains(&device)
    }

    pub fn has_history(&self) -> bool {
        self.device_count > 0 || self.last_place.is_some()
    }

    /// Remembers `device` as the account's own, forgetting the oldest when full.
    pub fn learn_device(&mut self, device: u64) {
        if self.knows_device(device) {
            return;
        }
        let n = self.device_count as usize;
        if n < KNOWN_DEVICES {
            self.devices[n] = device;
            self.device_count += 1;
        } else {
            self.devices.rotate_left(1);
            self.devices[KNOWN_DEVICES - 1] = device;
        }
    }
}

impl LastSeen for AccountMemory {
    fn last_seen_ms(&self) -> i64 {
        self.last_seen_ms
    }
}

/// Which account a card was activated to, learnt from successful activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CardMemory {
    pub bound_account: u64,
    pub last_seen_ms: i64,
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
            m.learn_device(d);
        }
        assert!(m.knows_device(9));
        assert!(!m.knows_device(0));
    }
}
