//! Threshold rules: a count, a sum of face value or a distinct count per
//! key over a sliding window; a decision when it reaches the threshold.

use std::sync::Arc;

use serde_json::json;
use smallvec::SmallVec;

use super::{Build, RuleKind};
use crate::decision::Decision;
use crate::engine::keys::{group_subject, Keys};
use crate::engine::Engine;
use crate::event::Event;
use crate::rules::compile::MAX_DISTINCT_THRESHOLD;
use crate::rules::{CompiledAggregate, CompiledKind, CompiledRule, Facts, KeyName};
use crate::state::{DistinctWindow, KeyedStore, LastSeen, SlidingCount};
use crate::units::{human_ms, ms_to_secs, yuan};

/// Most sample event ids a decision carries.
pub const MAX_SAMPLES: usize = 10;

/// The state of one threshold rule.
pub(in crate::engine) enum Threshold {
    /// Count and sum-of-face-value thresholds (a count is a sum of ones).
    /// Sums fit the same `u32` buckets as counts because rules refuse a sum
    /// threshold above `u32::MAX` fen: a bucket that saturates has reached
    /// the threshold on its own, so no decision changes.
    Sums(KeyedStore<WindowKey<SlidingCount>>),
    /// Distinct-count thresholds.
    Distincts(KeyedStore<DistinctKey>),
}

impl RuleKind for Threshold {
    fn new(rule: &CompiledRule, build: &Build<'_>) -> Threshold {
        let name = rule.id.clone();
        match rule.kind {
            CompiledKind::Threshold {
                aggregate: CompiledAggregate::Distinct(_),
                ..
            } => Threshold::Distincts(KeyedStore::new(build.budget.clone()).named(name)),
            _ => Threshold::Sums(KeyedStore::new(build.budget.clone()).named(name)),
        }
    }

    #[inline]
    fn prefetch(&self, key: u64) {
        match self {
            Threshold::Sums(store) => store.prefetch(key),
            Threshold::Distincts(store) => store.prefetch(key),
        }
    }

    fn idle_ms(&self, rule: &CompiledRule, engine: &Engine) -> Option<i64> {
        match rule.kind {
            CompiledKind::Threshold { window_ms, .. } => Some(engine.window_idle_ms(window_ms)),
            _ => None,
        }
    }

    fn evict_idle(&self, horizon_ms: i64) -> usize {
        match self {
            Threshold::Sums(store) => store.evict_idle(horizon_ms),
            Threshold::Distincts(store) => store.evict_idle(horizon_ms),
        }
    }

    fn cap_hits(&self) -> Option<crate::state::CapHits> {
        Some(match self {
            Threshold::Sums(store) => store.cap_hits(),
            Threshold::Distincts(store) => store.cap_hits(),
        })
    }

    #[inline]
    fn evaluate(
        &self,
        engine: &Engine,
        rule: &CompiledRule,
        e: &Event,
        keys: &Keys,
        facts: &Facts,
    ) -> Option<Decision> {
        let CompiledKind::Threshold {
            group_by,
            aggregate,
            window_ms,
            bucket_ms,
            threshold,
        } = &rule.kind
        else {
            return None;
        };
        let key = keys.get(*group_by)?;
        let bucket = e.ts_ms.div_euclid(*bucket_ms);
        let limits = Limits::new(aggregate, *threshold);
        let stale = engine.now_ms() - engine.window_idle_ms(*window_ms);
        let (value, samples) = match (aggregate, self) {
            (CompiledAggregate::Count | CompiledAggregate::SumFaceValue, Threshold::Sums(store)) => {
                let amount = match aggregate {
                    CompiledAggregate::SumFaceValue => e.card.face_value_fen?,
                    _ => 1,
                };
                store.with(key, stale, Default::default, |w| {
                    w.observe(e, limits, |s| s.add(bucket, amount))
                })?
            }
            (CompiledAggregate::Distinct(of), Threshold::Distincts(store)) => {
                let value = keys.get(*of)?;
                let cap = (*threshold).min(MAX_DISTINCT_THRESHOLD) as usize;
                store.with_new(
                    key,
                    stale,
                    || DistinctKey::first(e, value, *threshold),
                    |k, fresh| k.observe(fresh, e, value, (limits, *window_ms, cap)),
                )??
            }
            _ => return None,
        };
        let samples = samples?;
        engine.decide(rule, e, keys, facts, |subject| {
            let group_subject = group_subject(rule, *group_by, subject, e, keys, facts);
            let (shown, limit) = match aggregate {
                CompiledAggregate::SumFaceValue => (yuan(value), yuan(*threshold)),
                _ => (value.to_string(), threshold.to_string()),
            };
            let reason = format!(
                "{shown} {} {} {} {group_subject} in {} (threshold {limit})",
                rule.noun,
                preposition(*group_by),
                group_by.as_str().replace('_', " "),
                human_ms(*window_ms)
            );
            let evidence = json!({
                "aggregate": match aggregate {
                    CompiledAggregate::Count => "count".to_string(),
                    CompiledAggregate::SumFaceValue => "sum_face_value".to_string(),
                    CompiledAggregate::Distinct(of) => format!("distinct {}", of.as_str()),
                },
                "value": value,
                "threshold": threshold,
                "window_secs": ms_to_secs(*window_ms),
                "group_by": group_by.as_str(),
                "key": group_subject,
            });
            (reason, evidence, samples.iter().map(|s| s.to_string()).collect())
        })
    }
}

/// How a reason joins a count to what it counts by: "12 attempts by
/// account", "5 activations on card", "40 attempts from ip".
fn preposition(k: KeyName) -> &'static str {
    match k {
        KeyName::Account => "by",
        KeyName::Card => "on",
        _ => "from",
    }
}

/// Per-key state of a threshold rule: its aggregate (a [`SlidingCount`] or a
/// [`DistinctWindow`]) and the newest event ids of the episode. The first
/// sample is stored inline, so a key seen once (most keys under a flood of
/// fresh codes or addresses) allocates nothing of its own.
#[derive(Debug, Clone, Default)]
pub(in crate::engine) struct WindowKey<A> {
    agg: A,
    samples: SmallVec<[Arc<str>; 1]>,
    last_ms: i64,
}

impl<A> LastSeen for WindowKey<A> {
    fn last_seen_ms(&self) -> i64 {
        self.last_ms
    }
}

/// A threshold and the value of the aggregate from which a key keeps the
/// ids of its attempts for a decision's samples.
#[derive(Debug, Clone, Copy)]
struct Limits {
    threshold: u64,
    keep_from: u64,
}

impl Limits {
    /// A count or a distinct count rises by at most one per attempt, so the
    /// `MAX_SAMPLES` attempts before the one that reaches the threshold all
    /// stood at `threshold - MAX_SAMPLES` or more: ids kept from there on
    /// are exactly the newest ones, and a key far below its threshold (most
    /// keys, most of the time) keeps none. A sum can jump, so its episode is
    /// taken to start at half the threshold.
    fn new(aggregate: &CompiledAggregate, threshold: u64) -> Limits {
        let keep_from = match aggregate {
            CompiledAggregate::SumFaceValue => threshold / 2,
            _ => threshold.saturating_sub(MAX_SAMPLES as u64),
        };
        Limits { threshold, keep_from }
    }
}

impl<A> WindowKey<A> {
    /// Adds the event through `add`; returns the aggregate and, when it
    /// reaches the threshold, the samples before this event.
    fn observe(&mut self, e: &Event, limits: Limits, add: impl FnOnce(&mut A) -> u64) -> (u64, Option<Vec<Arc<str>>>) {
        self.last_ms = self.last_ms.max(e.ts_ms);
        let value = add(&mut self.agg);
        let samples = (value >= limits.threshold).then(|| self.samples.to_vec());
        if value < limits.keep_from {
            // Below the episode: what was kept can no longer be sampled.
            self.samples = SmallVec::new();
            return (value, samples);
        }
        if self.samples.len() == MAX_SAMPLES {
            self.samples.remove(0);
        }
        self.samples.push(e.event_id.clone());
        (value, samples)
    }
}

/// A distinct-count key seen once: its one value, when, and the attempt.
#[derive(Debug)]
pub(in crate::engine) struct Single {
    value: u64,
    ts_ms: i64,
    sample: Arc<str>,
}

/// Per-key state of a distinct-count rule. Most keys of a rule grouped by
/// card are seen once (every guess is a new code), so a key starts compact
/// and gets a full window at its second attempt, boxed so that the map's
/// slots stay the size of the compact form (32 bytes, where a window takes
/// 56). One map and one probe per attempt, new key or not.
#[derive(Debug)]
pub(in crate::engine) enum DistinctKey {
    Once(Single),
    Many(Box<WindowKey<DistinctWindow>>),
}

// The claim above, checked where pointers are 64 bits.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<DistinctKey>() == 32);

impl LastSeen for DistinctKey {
    fn last_seen_ms(&self) -> i64 {
        match self {
            DistinctKey::Once(s) => s.ts_ms,
            DistinctKey::Many(w) => w.last_ms,
        }
    }
}

impl DistinctKey {
    /// The state of a key's first attempt: compact, unless one attempt
    /// already reaches the threshold (no waiting room).
    fn first(e: &Event, value: u64, threshold: u64) -> DistinctKey {
        if threshold <= 1 {
            return DistinctKey::Many(Box::default());
        }
        DistinctKey::Once(Single {
            value,
            ts_ms: e.ts_ms,
            sample: e.event_id.clone(),
        })
    }

    /// Adds `value` for `e` as [`WindowKey::observe`] does; `None` for a key
    /// `fresh` from [`DistinctKey::first`] that is still below the threshold.
    fn observe(
        &mut self,
        fresh: bool,
        e: &Event,
        value: u64,
        (limits, window_ms, cap): (Limits, i64, usize),
    ) -> Option<(u64, Option<Vec<Arc<str>>>)> {
        let w = match self {
            DistinctKey::Once(_) if fresh => return None,
            DistinctKey::Once(s) => {
                let mut agg = DistinctWindow::default();
                agg.add(s.value, s.ts_ms, window_ms, cap);
                *self = DistinctKey::Many(Box::new(WindowKey {
                    agg,
                    samples: smallvec::smallvec![s.sample.clone()],
                    last_ms: s.ts_ms,
                }));
                let DistinctKey::Many(w) = self else {
                    unreachable!("just set")
                };
                w
            }
            DistinctKey::Many(w) => w,
        };
        Some(w.observe(e, limits, |d| d.add(value, e.ts_ms, window_ms, cap)))
    }
}
