//! Honey rules: an attempt on a decoy code, one the issuer minted and never
//! sold, is proof that whoever tries it holds a leaked or enumerated code
//! list. No state, no threshold: the first attempt decides.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::json;

use super::{Build, RuleKind};
use crate::decision::Decision;
use crate::engine::keys::Keys;
use crate::engine::Engine;
use crate::event::{Event, Kind};
use crate::rules::{CompiledKind, CompiledRule, Facts};

/// A honey rule's one number: attempts on its decoys, decided or not (a
/// subject already decided is not decided again, but every attempt on a
/// decoy counts).
pub(in crate::engine) struct Honey {
    hits: AtomicU64,
}

impl RuleKind for Honey {
    fn new(_rule: &CompiledRule, _build: &Build<'_>) -> Honey {
        Honey {
            hits: AtomicU64::new(0),
        }
    }

    fn hits(&self) -> Option<u64> {
        Some(self.hits.load(Ordering::Relaxed))
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
        let CompiledKind::Honey { list } = &rule.kind else {
            return None;
        };
        if !list.contains(keys.card) {
            return None;
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        engine.decide(rule, e, keys, facts, |_| {
            let what = match e.kind {
                Kind::Activation => "activation",
                Kind::Redemption => "redemption",
            };
            let reason = format!(
                "{what} of a decoy code from honey list {} by account {}: a leaked or enumerated code list",
                list.name, e.account.id
            );
            let evidence = json!({
                "honey_list": list.name,
                "honey_list_entries": list.len(),
                "code_hash": &*e.card.code_hash,
            });
            (reason, evidence, Vec::new())
        })
    }
}
