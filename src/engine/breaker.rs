//! Circuit breakers on a rule's blast radius. A bad rule edit can challenge
//! half the customers in minutes; a rule with a `breaker` counts its
//! decisions per minute of event time and, when a minute runs far above
//! its own usual rate (or above an absolute cap), switches itself to
//! shadow for a cooldown: it goes on deciding, in shadow mode, so nothing
//! is lost and the surge stays visible, but nothing it decides is enforced.
//!
//! On event time, so `replay` shows when a breaker would have tripped, and
//! replay and `run` trip it alike. The state is each instance's own and
//! starts empty at a start or a rule change: the relative trip waits until
//! the rule has `trailing_mins` of history (before that its usual rate is
//! not known); the absolute cap applies at once.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::Engine;
use crate::event::format_ts;
use crate::rules::{BreakerConfig, CompiledRule, RuleSet};
use crate::units::human_ms;

const MINUTE_MS: i64 = 60_000;

/// One rule's breaker.
#[derive(Debug, Default)]
pub(super) struct Breaker {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The event-time minute being counted, and its decisions so far.
    minute: Option<i64>,
    count: u32,
    /// Decisions in each of the minutes before, newest last, at most
    /// `trailing_mins` of them.
    trailing: VecDeque<u32>,
    /// In shadow until this event time (ms); `i64::MIN`: closed.
    open_until: i64,
    trips: u64,
}

/// What a breaker did, for the operations topic and replay's summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpsEvent {
    /// `breaker_tripped`, or `breaker_reset` (the admin API).
    pub event: &'static str,
    pub rule: Arc<str>,
    /// Event time it happened at.
    pub at: String,
    /// Decisions in the minute that tripped it.
    pub per_minute: u32,
    /// Its usual decisions per minute, over the trailing minutes.
    pub usual_per_minute: f64,
    /// In shadow until (event time).
    pub shadow_until: Option<String>,
    pub reason: String,
}

impl Breaker {
    /// Whether the rule is in shadow at event time `ts_ms`.
    pub(super) fn is_open(&self, ts_ms: i64) -> bool {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        ts_ms < s.open_until
    }

    /// Counts one decision at `ts_ms`; the trip it causes, if it does.
    fn note(&self, rule: &CompiledRule, config: &BreakerConfig, ts_ms: i64) -> Option<OpsEvent> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let minute = ts_ms.div_euclid(MINUTE_MS);
        let keep = config.trailing_mins as usize;
        match s.minute {
            None => s.minute = Some(minute),
            Some(current) if minute > current => {
                // The minute closed, and the quiet ones after it (at most a
                // whole trailing window of them matters).
                let closed = s.count;
                s.trailing.push_back(closed);
                for _ in 1..(minute - current).min(keep as i64 + 1) {
                    s.trailing.push_back(0);
                }
                while s.trailing.len() > keep {
                    s.trailing.pop_front();
                }
                s.minute = Some(minute);
                s.count = 0;
            }
            // A late decision counts in the minute being counted.
            Some(_) => {}
        }
        s.count += 1;
        if ts_ms < s.open_until {
            return None;
        }
        let usual = if s.trailing.is_empty() {
            0.0
        } else {
            s.trailing.iter().map(|c| f64::from(*c)).sum::<f64>() / s.trailing.len() as f64
        };
        let over_cap = config.max_per_minute.is_some_and(|cap| s.count > cap);
        let known = s.trailing.len() == keep;
        let surge = known && s.count >= config.min_per_minute && f64::from(s.count) > config.multiple * usual;
        if !(over_cap || surge) {
            return None;
        }
        s.open_until = ts_ms.saturating_add(config.cooldown_ms);
        s.trips += 1;
        let why = if over_cap {
            format!(
                "{} decisions in a minute, over its cap of {}",
                s.count,
                config.max_per_minute.unwrap_or_default()
            )
        } else {
            format!(
                "{} decisions in a minute, more than {} times its usual {:.1} a minute over the {} before",
                s.count, config.multiple, usual, keep
            )
        };
        Some(OpsEvent {
            event: "breaker_tripped",
            rule: rule.id.clone(),
            at: format_ts(ts_ms),
            per_minute: s.count,
            usual_per_minute: usual,
            shadow_until: Some(format_ts(s.open_until)),
            reason: format!(
                "rule {} switched itself to shadow for {}: {why}",
                rule.id,
                human_ms(config.cooldown_ms)
            ),
        })
    }
}

/// The breakers of the rules that have one, by (id, version): a rule whose
/// definition is unchanged by a reload keeps its breaker, as it keeps its
/// state; a changed one starts afresh.
pub(super) type Breakers = Mutex<std::collections::HashMap<(Arc<str>, Arc<str>), Arc<Breaker>>>;

impl Engine {
    /// The breaker of `rule`, which has a `breaker` setting.
    fn breaker_of(&self, rule: &CompiledRule) -> Arc<Breaker> {
        let mut all = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
        all.entry((rule.id.clone(), rule.version.clone())).or_default().clone()
    }

    /// `rule`'s breaker, for a rule with a `breaker` setting: looked up
    /// once per decision, for both the question and the count.
    pub(super) fn breaker(&self, rule: &CompiledRule) -> Option<Arc<Breaker>> {
        rule.breaker.as_ref().map(|_| self.breaker_of(rule))
    }

    /// Counts a decision `rule` published at `ts_ms` on its breaker, and
    /// queues the trip it causes for the operations topic.
    pub(super) fn breaker_note(&self, breaker: &Breaker, rule: &CompiledRule, ts_ms: i64) {
        let Some(config) = &rule.breaker else {
            return;
        };
        if let Some(event) = breaker.note(rule, config, ts_ms) {
            self.push_ops(event);
        }
    }

    fn push_ops(&self, event: OpsEvent) {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).push(event);
        self.ops_pending.store(true, Ordering::Release);
    }

    /// What the breakers did since the last call, in order (for the
    /// operations topic, and replay's summary).
    pub fn take_ops(&self) -> Vec<OpsEvent> {
        if !self.ops_pending.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        std::mem::take(&mut *self.ops.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Closes `rule`'s breaker at once (the admin API, which publishes the
    /// event it returns): it enforces again, and its count starts over.
    /// `None` when no rule in force by that id has a breaker.
    pub fn reset_breaker(&self, rule_id: &str) -> Option<OpsEvent> {
        let rules = self.rules();
        let rule = rules.rules.iter().find(|r| &*r.id == rule_id && r.breaker.is_some())?;
        let breaker = self.breaker_of(rule);
        let trips = {
            let mut s = breaker.state.lock().unwrap_or_else(|p| p.into_inner());
            let trips = s.trips;
            *s = State {
                trips,
                open_until: i64::MIN,
                ..State::default()
            };
            trips
        };
        let event = OpsEvent {
            event: "breaker_reset",
            rule: rule.id.clone(),
            at: format_ts(self.now_ms()),
            per_minute: 0,
            usual_per_minute: 0.0,
            shadow_until: None,
            reason: format!(
                "breaker of rule {} reset through the admin API after {trips} trips",
                rule.id
            ),
        };
        Some(event)
    }

    /// Per rule with a breaker: its id, times tripped, and whether it holds
    /// the rule in shadow at the engine's event time.
    pub fn breaker_states(&self) -> Vec<(Arc<str>, u64, bool)> {
        let rules = self.rules();
        let now = self.now_ms();
        rules
            .rules
            .iter()
            .filter(|r| r.breaker.is_some())
            .map(|r| {
                let b = self.breaker_of(r);
                let s = b.state.lock().unwrap_or_else(|p| p.into_inner());
                (r.id.clone(), s.trips, now < s.open_until)
            })
            .collect()
    }

    /// Drops the breakers of rules no longer in force (their definition
    /// changed or they were removed).
    pub(super) fn retire_breakers(&self, rules: &RuleSet) {
        let mut all = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|(id, version), _| rules.rules.iter().any(|r| r.id == *id && r.version == *version));
    }
}
