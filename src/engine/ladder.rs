//! Repeat offenders: a rule with a ladder (`ladder_secs`) gives a subject it
//! decided on recently (`repeat_within_secs`) a longer decision, step by
//! step. Each decision carries its step (`evidence.offence`), so what a
//! subject has earned is rebuilt from the decisions topic after a restart
//! or a rebalance, as the book is; replay keeps the same record from the
//! decisions it makes, so both decide alike.

use super::Engine;
use crate::decision::Active;
use crate::key::key_of;
use crate::rules::{CompiledRule, KeyName, Ladder, Mode};
use crate::state::{KeyedStore, LastSeen};

/// A subject's record under one rule: its last step and when.
#[derive(Debug)]
pub(super) struct Offence {
    /// Offences so far within the rule's `repeat_within` of each other.
    count: u32,
    last_ms: i64,
}

impl LastSeen for Offence {
    fn last_seen_ms(&self) -> i64 {
        self.last_ms
    }
}

/// Offence records by (rule, scope, subject, mode).
pub(super) type Offences = KeyedStore<Offence>;

fn offence_key(rule: &str, scope: KeyName, subject: &str, mode: Mode) -> u64 {
    key_of(&(rule, scope, subject, mode))
}

impl Engine {
    /// The step (0 for a first offence) a decision of `rule` on `subject` at
    /// `ts_ms` stands on: the subject's count if its last decision by the
    /// rule is no older than the ladder's `within`, else 0.
    pub(super) fn ladder_step(&self, rule: &CompiledRule, ladder: &Ladder, subject: &str, ts_ms: i64) -> u32 {
        let key = offence_key(&rule.id, rule.scope, subject, rule.mode);
        self.offences
            .read(key, ts_ms.saturating_sub(ladder.within_ms).saturating_sub(1), |o| {
                o.count
            })
            .unwrap_or(0)
    }

    /// Records that `rule` decided on `subject` at `ts_ms` as offence `step + 1`.
    pub(super) fn record_offence(&self, rule: &CompiledRule, ladder: &Ladder, subject: &str, ts_ms: i64, step: u32) {
        let key = offence_key(&rule.id, rule.scope, subject, rule.mode);
        let stale = ts_ms.saturating_sub(ladder.within_ms).saturating_sub(1);
        self.offences.with(
            key,
            stale,
            || Offence {
                count: 0,
                last_ms: ts_ms,
            },
            |o| {
                o.count = o.count.max(step + 1);
                o.last_ms = o.last_ms.max(ts_ms);
            },
        );
    }

    /// Takes the step (`evidence.offence`) of decision `a`, read from the
    /// decisions topic: the record climbs to it, never down.
    pub(super) fn offence_published(&self, a: &Active, step: u32) {
        let ts_ms = a.at_ms;
        let key = offence_key(&a.rule, a.scope, &a.subject, a.mode);
        // Whether it is still recent is judged when it is read.
        self.offences.with(
            key,
            i64::MIN,
            || Offence {
                count: 0,
                last_ms: ts_ms,
            },
            |o| {
                o.count = o.count.max(step);
                o.last_ms = o.last_ms.max(ts_ms);
            },
        );
    }

    /// How long offence records matter for the rules in force: the longest
    /// `repeat_within` (0 without a ladder rule, so all can go).
    pub(super) fn offence_span_ms(&self, rules: &[CompiledRule]) -> i64 {
        rules
            .iter()
            .filter_map(|r| r.ladder.as_ref().map(|l| l.within_ms))
            .max()
            .unwrap_or(0)
    }
}
