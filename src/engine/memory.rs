//! Account and card memory: what the rules know about an attempt beyond
//! its own fields (a device new to the account, the distance and speed from
//! its last place, a card bound to another account), and what a success
//! teaches for later attempts.

use super::keys::Keys;
use super::Engine;
use crate::enrich::distance_km;
use crate::event::{Event, Kind, Outcome};
use crate::key::key_of;
use crate::rules::{Facts, KeyName, RuleSet};
use crate::state::{AccountMemory, CardMemory, Recalled};

impl Engine {
    pub(super) fn facts(
        &self,
        rules: &RuleSet,
        e: &Event,
        keys: &Keys,
        geo: crate::enrich::GeoFacts,
        memory: Option<Recalled>,
    ) -> Facts {
        let mut facts = Facts {
            geo,
            account_age_ms: e.account_age_ms(),
            ..Facts::default()
        };
        if let Some(m) = memory {
            if let Some(known) = m.knows_device {
                facts.new_device = Some(m.has_history && !known);
            }
            if let (Some(here), Some(last)) = (geo.location, m.last_place) {
                // Both ends at the precision a place is kept in (`f32`,
                // about a metre): the same city twice is then 0 km apart,
                // not a rounding error apart, and costs no trigonometry.
                let kept = |lat: f32, lon: f32| (lat as f64, lon as f64);
                let d = distance_km(kept(last.lat, last.lon), kept(here.0 as f32, here.1 as f32));
                facts.distance_km = Some(d);
                // Under a minute apart counts as a minute: clocks and batching
                // jitter, and zero would make any distance infinitely fast.
                let hours = ((e.ts_ms - last.ts_ms).max(60_000)) as f64 / 3_600_000.0;
                facts.speed_kmh = Some(d / hours);
            }
        } else if rules.needs_account_memory && keys.device.is_some() {
            // An account with no successes yet has no device of its own to differ from.
            facts.new_device = Some(false);
        }
        facts.bound_to_other_account = match e.card.bound_account.as_deref() {
            Some(bound) => bound != e.account.id.as_ref(),
            None if rules.needs_card_memory => self
                .cards
                .read(keys.card, self.memory_stale_ms(), |c| {
                    c.bound_before(e.ts_ms).is_some_and(|a| a != keys.account)
                })
                .unwrap_or(false),
            None => false,
        };
        facts
    }

    /// What the account knows, for the rules to judge this attempt against
    /// as of its event time (see [`AccountMemory`]); a success also teaches
    /// the account its device and place, in the same lookup (one probe of
    /// the store where a read and a later update took two). What it teaches
    /// is of this attempt's own millisecond, which no question about this
    /// attempt counts as before it.
    pub(super) fn recall_account(&self, e: &Event, keys: &Keys, geo: &crate::enrich::GeoFacts) -> Option<Recalled> {
        if e.outcome != Outcome::Success {
            return self
                .accounts
                .read(keys.account, self.memory_stale_ms(), |m| m.recall(keys.device, e.ts_ms));
        }
        let place = geo.location.map(|(lat, lon)| (lat as f32, lon as f32));
        self.accounts
            .with(keys.account, self.memory_stale_ms(), AccountMemory::default, |m| {
                m.learn(e.ts_ms, keys.device, place, self.lateness_ms());
                m.recall(keys.device, e.ts_ms)
            })
    }

    /// Teaches card memory a successful activation (see [`CardMemory`]).
    pub(super) fn remember(&self, rules: &RuleSet, e: &Event, keys: &Keys, serves: impl Fn(KeyName) -> bool) {
        if e.outcome != Outcome::Success {
            return;
        }
        if rules.needs_card_memory && serves(KeyName::Card) && e.kind == Kind::Activation {
            let bound = match e.card.bound_account.as_deref() {
                Some(b) => key_of(b),
                None => keys.account,
            };
            self.cards.with(
                keys.card,
                self.memory_stale_ms(),
                || CardMemory {
                    bound_account: bound,
                    activated_ms: e.ts_ms,
                    last_seen_ms: e.ts_ms,
                },
                |c| c.learn(bound, e.ts_ms),
            );
        }
    }

    /// Account and card memory last touched at or before this is forgotten.
    pub(super) fn memory_stale_ms(&self) -> i64 {
        self.clock.now_ms() - self.config.memory_ttl_ms()
    }
}
