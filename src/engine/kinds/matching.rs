//! Match rules: no state; a decision on every attempt the filter passes
//! (geo, device and account-memory conditions among them).

use serde_json::Value;

use super::{Build, RuleKind};
use crate::decision::Decision;
use crate::engine::keys::Keys;
use crate::engine::Engine;
use crate::event::{Event, Kind};
use crate::rules::{CompiledRule, Facts};

pub(in crate::engine) struct Match;

impl RuleKind for Match {
    fn new(_rule: &CompiledRule, _build: &Build<'_>) -> Match {
        Match
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
        engine.decide(rule, e, keys, facts, |_| {
            let (said, evidence) = rule.filter.explain(e, facts);
            let what = match e.kind {
                Kind::Activation => "activation",
                Kind::Redemption => "redemption",
            };
            let mut reason = format!("{what} by account {}", e.account.id);
            if !said.is_empty() {
                reason.push_str(": ");
                reason.push_str(&said.join(", "));
            }
            (reason, Value::Object(evidence), Vec::new())
        })
    }
}
