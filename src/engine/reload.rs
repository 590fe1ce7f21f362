//! Swapping the rule set in force between two events (hot reload), keeping
//! the state of every rule that did not change.

use std::sync::Arc;

use super::config::check_geo;
use super::kinds::{Build, RuleState};
use super::{Engine, EngineError, Loaded};
use crate::rules::RuleSet;

impl Engine {
    /// Swaps in a new rule set between two events. A rule whose id and
    /// version (the hash of its definition) are unchanged keeps its windows
    /// and quotas; a new or changed rule starts empty; a removed rule's state
    /// is dropped and its keys return to the budget.
    pub fn replace_rules(&self, rules: Arc<RuleSet>) -> Result<Replaced, EngineError> {
        check_geo(&rules, &self.geo)?;
        if let Some(routed) = &*self.routed_homes.read().unwrap_or_else(|p| p.into_inner()) {
            if let Some(r) = rules.rules.iter().find(|r| !routed.contains(&r.home)) {
                return Err(EngineError::Unrouted {
                    rule: r.id.to_string(),
                    home: r.home.as_str(),
                });
            }
        }
        let mut loaded = self.loaded.write().unwrap_or_else(|p| p.into_inner());
        let old = std::mem::take(&mut loaded.states);
        let mut by_version: std::collections::HashMap<(Arc<str>, Arc<str>), RuleState> = loaded
            .rules
            .rules
            .iter()
            .map(|r| (r.id.clone(), r.version.clone()))
            .zip(old)
            .collect();
        let mut kept = 0;
        let states = rules
            .rules
            .iter()
            .map(|r| match by_version.remove(&(r.id.clone(), r.version.clone())) {
                Some(state) => {
                    kept += 1;
                    state
                }
                None => RuleState::new(
                    r,
                    &Build {
                        lateness_ms: self.lateness_ms(),
                        clock: &self.clock,
                        budget: &self.budget,
                    },
                ),
            })
            .collect();
        let replaced = Replaced {
            kept,
            fresh: rules.rules.len() - kept,
            dropped: by_version.len(),
        };
        // No attempt uses the dropped states any more (the write lock is
        // held): their refusals are final.
        let mut retired = self.retired_cap_hits.lock().unwrap_or_else(|p| p.into_inner());
        for c in by_version.values().filter_map(RuleState::cap_hits) {
            *retired.entry(c.store).or_default() += c.hits;
        }
        let mut retired_hits = self.retired_hits.lock().unwrap_or_else(|p| p.into_inner());
        for ((id, _), state) in &by_version {
            if let Some(hits) = state.hits() {
                *retired_hits.entry(id.to_string()).or_default() += hits;
            }
        }
        self.retire_breakers(&rules);
        *loaded = Loaded {
            rules,
            states,
            generation: loaded.generation + 1,
        };
        Ok(replaced)
    }
}

/// What [`Engine::replace_rules`] did with each rule's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replaced {
    /// Unchanged rules that kept their state.
    pub kept: usize,
    /// New or changed rules, starting empty.
    pub fresh: usize,
    /// States not carried over (rules removed or changed), dropped with their keys.
    pub dropped: usize,
}
