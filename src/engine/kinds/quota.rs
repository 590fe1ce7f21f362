//! Quota rules: `limit` attempts per period and key (GCRA, with a burst);
//! a decision on the attempt that finds its key over quota.

use serde_json::json;

use super::{Build, RuleKind};
use crate::decision::Decision;
use crate::engine::keys::{group_subject, Keys};
use crate::engine::Engine;
use crate::event::Event;
use crate::rules::{CompiledKind, CompiledRule, Facts};
use crate::state::{CapHits, KeyedQuota};
use crate::units::{human_ms, ms_to_secs};

/// The state of one quota rule: governor's per-key arrival times on event time.
pub(in crate::engine) struct Quota(KeyedQuota);

impl RuleKind for Quota {
    fn new(rule: &CompiledRule, build: &Build<'_>) -> Quota {
        let CompiledKind::Quota {
            limit,
            period_ms,
            burst,
            ..
        } = rule.kind
        else {
            unreachable!("registered for quota rules only")
        };
        Quota(KeyedQuota::new(
            limit,
            period_ms,
            burst,
            build.lateness_ms,
            build.clock.clone(),
            build.budget.clone(),
            &rule.id,
        ))
    }

    #[inline]
    fn prefetch(&self, key: u64) {
        self.0.prefetch(key)
    }

    fn idle_ms(&self, _rule: &CompiledRule, _engine: &Engine) -> Option<i64> {
        Some(self.0.idle_ms())
    }

    fn evict_idle(&self, horizon_ms: i64) -> usize {
        self.0.evict_idle(horizon_ms)
    }

    fn cap_hits(&self) -> Option<CapHits> {
        Some(self.0.cap_hits())
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
        let CompiledKind::Quota {
            group_by,
            limit,
            period_ms,
            burst,
        } = &rule.kind
        else {
            return None;
        };
        let key = keys.get(*group_by)?;
        if self.0.check(key) {
            return None;
        }
        engine.decide(rule, e, keys, facts, |subject| {
            let group_subject = group_subject(rule, *group_by, subject, e, keys, facts);
            let reason = format!(
                "{} {group_subject} is over its quota of {limit} {} per {} (burst {burst})",
                group_by.as_str().replace('_', " "),
                rule.noun,
                human_ms(*period_ms)
            );
            let evidence = json!({
                "limit": limit.get(),
                "period_secs": ms_to_secs(*period_ms),
                "burst": burst.get(),
                "group_by": group_by.as_str(),
                "key": group_subject,
            });
            (reason, evidence, Vec::new())
        })
    }
}
