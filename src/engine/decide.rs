//! From a rule that fires to a published decision: the book's admission,
//! the decision record, and the book kept as the decisions topic says
//! (including an operator's release).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::{json, Value};

use super::keys::{subject, Keys};
use super::Engine;
use crate::decision::{decision_id, Active, Decision};
use crate::event::{format_ts, Event};
use crate::rules::{Action, CompiledRule, Facts, KeyName, Mode};
use crate::units::human_ms;

impl Engine {
    /// The decision `rule` makes on `e`, if the book admits it (no decision
    /// of the rule active on the subject, or this one is stronger or
    /// longer). `explain` gives the reason, the evidence and the sample ids
    /// from the subject; it runs only for an admitted decision, since most
    /// attempts that reach a threshold find their subject already decided.
    pub(super) fn decide(
        &self,
        rule: &CompiledRule,
        e: &Event,
        keys: &Keys,
        facts: &Facts,
        explain: impl FnOnce(&str) -> (String, Value, Vec<String>),
    ) -> Option<Decision> {
        if self.restoring.load(Ordering::Acquire) {
            return None;
        }
        let subject = subject(rule.scope, e, keys, facts)?;
        // A rule with a ladder lasts as long as the subject's step says.
        let step = rule
            .ladder
            .as_ref()
            .map(|l| (l, self.ladder_step(rule, l, &subject, e.ts_ms)));
        let duration_ms = match step {
            Some((l, s)) => l.duration_ms(s),
            None => rule.duration_ms,
        };
        let until_ms = duration_ms.map_or(i64::MAX, |d| e.ts_ms.saturating_add(d));
        // A tripped breaker publishes the rule's decisions in shadow.
        let breaker = self.breaker(rule);
        let shadowed = rule.mode == Mode::Enforce && breaker.as_ref().is_some_and(|b| b.is_open(e.ts_ms));
        let mode = if shadowed { Mode::Shadow } else { rule.mode };
        if !self
            .book
            .admit((rule.scope, &subject, mode), &rule.id, rule.action, until_ms, e.ts_ms)
        {
            return None;
        }
        if let Some(b) = &breaker {
            self.breaker_note(b, rule, e.ts_ms);
        }
        let (mut reason, mut evidence, samples) = explain(&subject);
        if shadowed {
            reason.push_str("; in shadow: the rule's circuit breaker is open");
            if let Value::Object(map) = &mut evidence {
                map.insert("breaker".into(), json!("open"));
            }
        }
        if let Value::Object(map) = &mut evidence {
            map.insert("outcome".into(), json!(e.outcome));
            if let Some((ladder, step)) = step {
                self.record_offence(rule, ladder, &subject, e.ts_ms, step);
                map.insert("offence".into(), json!(step + 1));
                if step > 0 {
                    reason.push_str(&format!(
                        "; decided again within {}: offence {}, {}",
                        human_ms(ladder.within_ms),
                        step + 1,
                        duration_ms.map_or("until released".to_string(), human_ms)
                    ));
                }
            }
        }
        Some(Decision {
            decision_id: decision_id(&rule.id, &rule.version, rule.scope, &subject, e.ts_ms, &e.event_id),
            decided_at: String::new(),
            event_ts: format_ts(e.ts_ms),
            action: rule.action,
            scope: rule.scope,
            subject,
            until: duration_ms.map(|_| format_ts(until_ms)),
            rule: rule.id.clone(),
            rule_version: rule.version.clone(),
            mode,
            score: rule.score,
            reason,
            evidence,
            trigger_event_id: e.event_id.to_string(),
            sample_event_ids: samples,
        })
    }

    /// Books a decision read from the decisions topic (see
    /// [`crate::decision::DecisionBook::apply`]); `false` when `payload` is not a decision.
    pub fn book_published(&self, payload: &[u8]) -> bool {
        match Active::read_published(payload) {
            Some((a, offence)) => {
                if let Some(step) = offence {
                    self.offence_published(&a, step);
                }
                self.book.apply(a);
                true
            }
            None => false,
        }
    }

    /// While `on`, attempts change windows, quotas and memory but book and
    /// publish nothing: a restore rebuilds state from attempts, and what is
    /// in force comes from the decisions topic alone.
    pub fn set_restoring(&self, on: bool) {
        self.restoring.store(on, Ordering::Release);
    }

    /// Decisions in force at the engine's event time.
    pub fn decisions_in_force(&self) -> Vec<Active> {
        self.book.in_force(self.clock.now_ms())
    }

    /// The decision in force on a subject at the engine's event time, if any.
    pub fn in_force_on(&self, scope: KeyName, subject: &str, mode: Mode) -> Option<Active> {
        self.book.in_force_on(scope, subject, mode, self.clock.now_ms())
    }

    /// The `release` decision to publish for `subject`, whether this
    /// instance remembers a decision on it or not: the decisions topic, not
    /// this instance's memory, is the record (a permanent freeze older than
    /// the restore lookback, a decision another instance made, a release
    /// whose publication failed and is tried again). It lifts nothing here:
    /// the book takes the release once it is published
    /// ([`Engine::book_published`]), as every other instance does. The id is
    /// deterministic for the subject and the engine's event time.
    pub fn release(&self, scope: KeyName, subject: &str, mode: Mode) -> Decision {
        let now = self.clock.now_ms();
        let lifted = self.book.in_force_on(scope, subject, mode, now);
        let rule: Arc<str> = lifted.as_ref().map_or_else(|| Arc::from("admin"), |l| l.rule.clone());
        let reason = match &lifted {
            Some(l) => format!(
                "{} of {} {} lifted by an operator through the admin API",
                l.action.as_str(),
                scope.as_str(),
                subject
            ),
            None => format!(
                "{} {} released by an operator through the admin API (no decision on it in this instance's memory)",
                scope.as_str(),
                subject
            ),
        };
        let evidence = match &lifted {
            Some(l) => json!({ "released_action": l.action.as_str(), "released_rule": &*l.rule }),
            None => json!({}),
        };
        Decision {
            decision_id: decision_id("release", &rule, scope, subject, now, "admin"),
            decided_at: String::new(),
            event_ts: format_ts(now),
            action: Action::Release,
            scope,
            subject: subject.to_string(),
            until: None,
            rule,
            rule_version: "admin".into(),
            mode,
            score: 0,
            reason,
            evidence,
            trigger_event_id: "admin".into(),
            sample_event_ids: Vec::new(),
        }
    }

    /// Active decisions by scope at the engine's event time.
    pub fn active_decisions(&self) -> [(KeyName, i64); KeyName::ALL.len()] {
        self.book.counts_by_scope()
    }
}
