//! Allowlists: a rule's own (in its file) and the one every instance
//! shares (`crate::allowlist`, kept by the admin API on a compacted topic).
//! An attempt either exempts is not judged by that rule at all.

use std::sync::atomic::Ordering;

use super::keys::Keys;
use super::Engine;
use crate::allowlist::{AllowList, Entry, SharedAllow};
use crate::event::Event;
use crate::rules::CompiledRule;

impl Engine {
    pub(super) fn allowed(&self, rule: &CompiledRule, e: &Event, keys: &Keys, global: Option<&SharedAllow>) -> bool {
        let allow = &rule.allow;
        let by_rule = !allow.is_empty()
            && (allow.accounts.contains(&keys.account)
                || keys.device.is_some_and(|d| allow.devices.contains(&d))
                || e.ip.is_some_and(|ip| allow.cidrs.iter().any(|n| n.contains(&ip))));
        by_rule || global.is_some_and(|g| g.exempts(e.ts_ms, keys.account, keys.device, e.ip))
    }

    /// Takes one allowlist record (from the topic, a file or the admin
    /// API); returns whether the list changed.
    pub fn apply_allow(&self, entry: Entry) -> bool {
        let mut list = self.allowlist.lock().unwrap_or_else(|p| p.into_inner());
        let changed = list.apply(entry);
        if changed {
            self.set_global_allow(list.shared());
        }
        changed
    }

    /// Replaces the whole allowlist (replay's `--allowlist`).
    pub fn set_allowlist(&self, list: AllowList) {
        let mut kept = self.allowlist.lock().unwrap_or_else(|p| p.into_inner());
        self.set_global_allow(list.shared());
        *kept = list;
    }

    /// The allowlist entries as typed.
    pub fn allowlist(&self) -> AllowList {
        self.allowlist.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the allowlist that applies to every rule (`crate::allowlist`).
    fn set_global_allow(&self, allow: SharedAllow) {
        let mut global = self.global_allow.write().unwrap_or_else(|p| p.into_inner());
        self.global_allow_set.store(!allow.is_empty(), Ordering::Release);
        *global = allow;
    }
}
