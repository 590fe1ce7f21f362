//! Sweeping: giving back the memory of keys that can no longer change a
//! decision, on event time. When a sweep runs changes memory, never a
//! decision: a stale key reads as absent whether it was swept or not.

use std::sync::atomic::Ordering;

use super::{Engine, Loaded};
use crate::state::CapHits;

impl Engine {
    /// Drops idle keys once per `sweep_every_secs` of event time.
    pub(super) fn maybe_sweep(&self, loaded: &Loaded) {
        let now = self.clock.now_ms();
        let next = self.next_sweep_ms.load(Ordering::Acquire);
        if next == i64::MIN {
            self.next_sweep_ms
                .store(now + self.config.sweep_every_ms(), Ordering::Release);
            return;
        }
        if now < next
            || self
                .next_sweep_ms
                .compare_exchange(
                    next,
                    now + self.config.sweep_every_ms(),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_err()
        {
            return;
        }
        self.sweep_loaded(loaded, now, false);
    }

    /// Evicts everything that can no longer change a decision at event time `now`.
    pub fn sweep(&self, now: i64) -> usize {
        self.sweep_loaded(&self.loaded(), now, true)
    }

    /// Evicts the keys idle past their span at event time `now`: in every
    /// store when `all`, else in the stores due this round.
    ///
    /// A stale key reads as absent whether it was swept or not
    /// ([`crate::state::KeyedStore::with`]), so sweeps only give memory back, and each
    /// walks its whole store. A store is therefore swept about once per
    /// eighth of its span (a window and the lateness, or memory's TTL), and
    /// at most once per `sweep_every_secs`: a day-long window is not walked
    /// every minute for the few keys that went idle in it. The price is
    /// idle keys kept up to an eighth of their span longer. While the state
    /// holds three quarters of `max_keys` or more, every round sweeps every
    /// store, to make room before the cap refuses new keys.
    fn sweep_loaded(&self, loaded: &Loaded, now: i64, all: bool) -> usize {
        let round = self.sweep_rounds.fetch_add(1, Ordering::Relaxed);
        let crowded = self.budget.crowded();
        let every_ms = self.config.sweep_every_ms().max(1);
        let sweep = |span_ms: i64, evict: &dyn Fn(i64) -> usize| {
            let period = (span_ms / 8 / every_ms).max(1) as u64;
            if all || crowded || round % period == 0 {
                evict(now - span_ms)
            } else {
                0
            }
        };
        let mut evicted = 0;
        for (rule, state) in loaded.rules.rules.iter().zip(&loaded.states) {
            if let Some(span) = state.idle_ms(rule, self) {
                evicted += sweep(span, &|h| state.evict_idle(h));
            }
        }
        let ttl = self.config.memory_ttl_ms();
        evicted += sweep(ttl, &|h| self.accounts.evict_idle(h));
        evicted += sweep(ttl, &|h| self.cards.evict_idle(h));
        if self.config.links.enabled {
            let window = crate::units::secs_to_ms(self.config.links.window_secs);
            evicted += sweep(window, &|h| self.links.evict_idle(h));
        }
        let offences = self.offence_span_ms(&loaded.rules.rules);
        evicted += sweep(offences, &|h| self.offences.evict_idle(h));
        evicted += self.book.expire(now);
        evicted
    }

    /// How long a key of a window of `window_ms` goes unused before it is
    /// stale: the window and the lateness.
    pub(super) fn window_idle_ms(&self, window_ms: i64) -> i64 {
        window_ms + self.lateness_ms()
    }

    /// New keys refused at the cap, by store, since the engine started:
    /// account and card memory, the store of each rule in force (whether it
    /// refused any or not), then rules no longer in force that refused
    /// some. A rule changed on reload starts a new store; the old one's
    /// refusals stay in its count.
    pub fn cap_hits_by_store(&self) -> Vec<CapHits> {
        let loaded = self.loaded();
        let mut all: Vec<CapHits> = [
            self.accounts.cap_hits(),
            self.cards.cap_hits(),
            self.offences.cap_hits(),
        ]
        .into_iter()
        .chain(loaded.states.iter().filter_map(|s| s.cap_hits()))
        .chain(
            self.config
                .links
                .enabled
                .then(|| self.links.cap_hits())
                .into_iter()
                .flatten(),
        )
        .collect();
        for (store, hits) in self.retired_cap_hits.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            match all.iter_mut().find(|c| c.store == *store) {
                Some(c) => c.hits += hits,
                None => all.push(CapHits {
                    store: store.clone(),
                    hits: *hits,
                }),
            }
        }
        all
    }
}
