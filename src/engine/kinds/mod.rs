//! The kinds of rule, one file each (threshold, quota, match, honey, surge): a kind's per-key state, how an attempt
//! updates it, how its keys are prefetched, swept and capped, when it
//! decides, and how its decision is worded.
//!
//! Every kind implements [`RuleKind`]; the `kinds!` list below registers
//! it against the compiled form of its rules (`rules::CompiledKind`). A new
//! kind is a new file here and one line in that list, and the list is
//! matched exhaustively: a compiled kind left unregistered does not build.
//! The engine holds one [`RuleState`] per rule and never looks inside it.

mod honey;
mod matching;
mod quota;
mod surge;
mod threshold;

use std::sync::Arc;

use super::keys::Keys;
use super::Engine;
use crate::decision::Decision;
use crate::event::Event;
use crate::rules::{CompiledKind, CompiledRule, Facts};
use crate::state::{CapHits, EventClock, StateBudget};

pub use threshold::MAX_SAMPLES;

/// What a kind's state is made from, besides its rule.
pub(super) struct Build<'a> {
    pub(super) lateness_ms: i64,
    pub(super) clock: &'a EventClock,
    pub(super) budget: &'a Arc<StateBudget>,
}

/// One kind of rule, as the engine runs it. Stateless kinds keep the
/// defaults.
pub(super) trait RuleKind: Sized {
    /// The state of `rule`, which is of this kind, starting empty.
    fn new(rule: &CompiledRule, build: &Build<'_>) -> Self;

    /// Starts loading `key`'s slot, ahead of [`RuleKind::evaluate`] (see
    /// `Engine::prepare`).
    fn prefetch(&self, _key: u64) {}

    /// How long a key goes unused before it can no longer change a
    /// decision, ms; `None` for a kind that keeps no keys.
    fn idle_ms(&self, _rule: &CompiledRule, _engine: &Engine) -> Option<i64> {
        None
    }

    /// Evicts keys last used at or before `horizon_ms`; returns how many.
    fn evict_idle(&self, _horizon_ms: i64) -> usize {
        0
    }

    /// New keys refused at the budget's cap; `None` for a kind with no store.
    fn cap_hits(&self) -> Option<CapHits> {
        None
    }

    /// Attempts this kind's own condition caught, decided or not, for a
    /// kind that counts them (honey: attempts on decoys).
    fn hits(&self) -> Option<u64> {
        None
    }

    /// Counts the attempt and returns the decision `rule` makes on it, if
    /// any (through [`Engine::decide`], which asks the book first).
    fn evaluate(&self, engine: &Engine, rule: &CompiledRule, e: &Event, keys: &Keys, facts: &Facts)
        -> Option<Decision>;
}

/// Registers each kind against the compiled rules it runs, and gives the
/// engine one [`RuleState`] enum that dispatches to them.
macro_rules! kinds {
    ($($variant:ident: $ty:ty = $compiled:pat),* $(,)?) => {
        /// The state of one rule, of whichever kind it is.
        pub(super) enum RuleState {
            $($variant($ty),)*
        }

        impl RuleState {
            pub(super) fn new(rule: &CompiledRule, build: &Build<'_>) -> RuleState {
                match rule.kind {
                    $($compiled => RuleState::$variant(<$ty as RuleKind>::new(rule, build)),)*
                }
            }

            #[inline]
            pub(super) fn prefetch(&self, key: u64) {
                match self {
                    $(RuleState::$variant(s) => s.prefetch(key),)*
                }
            }

            pub(super) fn idle_ms(&self, rule: &CompiledRule, engine: &Engine) -> Option<i64> {
                match self {
                    $(RuleState::$variant(s) => s.idle_ms(rule, engine),)*
                }
            }

            pub(super) fn evict_idle(&self, horizon_ms: i64) -> usize {
                match self {
                    $(RuleState::$variant(s) => s.evict_idle(horizon_ms),)*
                }
            }

            pub(super) fn cap_hits(&self) -> Option<CapHits> {
                match self {
                    $(RuleState::$variant(s) => s.cap_hits(),)*
                }
            }

            pub(super) fn hits(&self) -> Option<u64> {
                match self {
                    $(RuleState::$variant(s) => s.hits(),)*
                }
            }

            #[inline]
            pub(super) fn evaluate(
                &self,
                engine: &Engine,
                rule: &CompiledRule,
                e: &Event,
                keys: &Keys,
                facts: &Facts,
            ) -> Option<Decision> {
                match self {
                    $(RuleState::$variant(s) => s.evaluate(engine, rule, e, keys, facts),)*
                }
            }
        }
    };
}

kinds! {
    Threshold: threshold::Threshold = CompiledKind::Threshold { .. },
    Quota: quota::Quota = CompiledKind::Quota { .. },
    Match: matching::Match = CompiledKind::Match,
    Honey: honey::Honey = CompiledKind::Honey { .. },
    Surge: surge::Surge = CompiledKind::Surge { .. },
}
