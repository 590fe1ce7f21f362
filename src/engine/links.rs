//! Linked-entity decisions. When a rule freezes an account or blocks a
//! device, the entities recently tied to it through attempts get a derived
//! decision of their own, one step weaker (a challenge or a review, never a
//! freeze or a block), naming the parent decision in its evidence: the
//! frozen account's other devices and the cards it redeemed in the last
//! hours, the blocked device's other accounts.
//!
//! Links are learned from the attempts this engine decides and expire after
//! `engine.links.window_secs` of event time. A subject with more partners
//! than `max_partners` (a shared tablet, a store's kiosk) is a hub, not a
//! ring: its links are not followed. Fan-out is bounded per decision and per
//! minute of event time. Derived decisions never derive further.
//!
//! Off unless `engine.links.enabled`; published in shadow unless
//! `engine.links.mode = "enforce"` (a team measures it first).

use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::json;
use smallvec::SmallVec;

use super::keys::Keys;
use super::Engine;
use crate::decision::{decision_id, Decision};
use crate::event::{Event, Kind, Outcome};
use crate::rules::{Action, KeyName, Mode};
use crate::state::{KeyedStore, LastSeen};
use crate::units::secs_to_ms;

/// What a link gives its partners.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkAction {
    /// The link is not followed.
    None,
    Review,
    Challenge,
}

/// `[engine.links]` in the service configuration.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinksConfig {
    /// Whether links are learned and followed at all.
    pub enabled: bool,
    /// `shadow` (published, enforced by no one) or `enforce`. A parent in
    /// shadow always gives shadow.
    pub mode: Mode,
    /// How long a link lasts after the attempt that made it, event time.
    pub window_secs: u64,
    /// A subject with more partners than this on a link is a hub (a shared
    /// device, a kiosk): that link is not followed from it.
    pub max_partners: usize,
    /// Most derived decisions one decision gives.
    pub max_per_decision: usize,
    /// Most derived decisions in one minute of event time, all together.
    pub max_per_minute: u32,
    /// A blocked device's other accounts get this.
    pub device_accounts: LinkAction,
    /// A frozen account's other devices get this.
    pub account_devices: LinkAction,
    /// The cards a frozen account redeemed get this.
    pub account_cards: LinkAction,
}

impl Default for LinksConfig {
    fn default() -> Self {
        LinksConfig {
            enabled: false,
            mode: Mode::Shadow,
            window_secs: 6 * 3600,
            max_partners: 10,
            max_per_decision: 5,
            max_per_minute: 100,
            device_accounts: LinkAction::Challenge,
            account_devices: LinkAction::Challenge,
            account_cards: LinkAction::Challenge,
        }
    }
}

impl LinksConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.window_secs == 0 || self.window_secs > 30 * 86_400 {
            return Err("engine.links.window_secs must be 1 to 2592000".into());
        }
        if self.max_partners == 0 || self.max_partners > MAX_PARTNERS {
            return Err(format!("engine.links.max_partners must be 1 to {MAX_PARTNERS}"));
        }
        if self.max_per_decision == 0 || self.max_per_decision > self.max_partners * 3 {
            return Err("engine.links.max_per_decision must be 1 to three times max_partners".into());
        }
        if self.max_per_minute == 0 {
            return Err("engine.links.max_per_minute must be at least 1".into());
        }
        Ok(())
    }
}

/// Most partners a link may keep per subject (`max_partners` at most).
pub const MAX_PARTNERS: usize = 100;

/// The three links.
#[derive(Debug, Clone, Copy)]
enum Link {
    DeviceAccounts,
    AccountDevices,
    AccountCards,
}

impl Link {
    fn name(self) -> &'static str {
        match self {
            Link::DeviceAccounts => "device_accounts",
            Link::AccountDevices => "account_devices",
            Link::AccountCards => "account_cards",
        }
    }

    /// The scope of the partners it leads to.
    fn partner_scope(self) -> KeyName {
        match self {
            Link::DeviceAccounts => KeyName::Account,
            Link::AccountDevices => KeyName::Device,
            Link::AccountCards => KeyName::Card,
        }
    }
}

/// One subject's partners on one link, newest kept.
#[derive(Debug, Default)]
pub(super) struct Partners {
    list: SmallVec<[Partner; 2]>,
    last_ms: i64,
}

#[derive(Debug)]
struct Partner {
    key: u64,
    subject: Box<str>,
    last_ms: i64,
}

impl LastSeen for Partners {
    fn last_seen_ms(&self) -> i64 {
        self.last_ms
    }
}

impl Partners {
    /// Notes `key` (named `subject`) at `ts_ms`; links older than
    /// `horizon` go. At most `most` partners are kept: one more than
    /// that marks a hub, and more tell nothing new.
    fn add(&mut self, key: u64, subject: &str, ts_ms: i64, horizon: i64, most: usize) {
        self.last_ms = self.last_ms.max(ts_ms);
        self.list.retain(|p| p.last_ms > horizon);
        if let Some(p) = self.list.iter_mut().find(|p| p.key == key) {
            p.last_ms = p.last_ms.max(ts_ms);
        } else if self.list.len() < most {
            self.list.push(Partner {
                key,
                subject: subject.into(),
                last_ms: ts_ms,
            });
        }
    }
}

/// The link stores and the per-minute budget.
#[derive(Debug)]
pub(super) struct Links {
    device_accounts: KeyedStore<Partners>,
    account_devices: KeyedStore<Partners>,
    account_cards: KeyedStore<Partners>,
    /// The event-time minute being counted, and derived decisions in it.
    minute: Mutex<(i64, u32)>,
}

impl Links {
    pub(super) fn new(budget: std::sync::Arc<crate::state::StateBudget>) -> Links {
        Links {
            device_accounts: KeyedStore::new(budget.clone()).named("links device_accounts"),
            account_devices: KeyedStore::new(budget.clone()).named("links account_devices"),
            account_cards: KeyedStore::new(budget).named("links account_cards"),
            minute: Mutex::new((i64::MIN, 0)),
        }
    }

    fn store(&self, link: Link) -> &KeyedStore<Partners> {
        match link {
            Link::DeviceAccounts => &self.device_accounts,
            Link::AccountDevices => &self.account_devices,
            Link::AccountCards => &self.account_cards,
        }
    }

    pub(super) fn evict_idle(&self, horizon_ms: i64) -> usize {
        self.device_accounts.evict_idle(horizon_ms)
            + self.account_devices.evict_idle(horizon_ms)
            + self.account_cards.evict_idle(horizon_ms)
    }

    pub(super) fn cap_hits(&self) -> [crate::state::CapHits; 3] {
        [
            self.device_accounts.cap_hits(),
            self.account_devices.cap_hits(),
            self.account_cards.cap_hits(),
        ]
    }
}

impl Engine {
    fn links_window_ms(&self) -> i64 {
        secs_to_ms(self.config.links.window_secs)
    }

    /// Learns the links of one attempt: its account and device, each
    /// other's partner; a successful redemption's card, its account's.
    pub(super) fn learn_links(&self, e: &Event, keys: &Keys) {
        let config = &self.config.links;
        if !config.enabled {
            return;
        }
        let window = self.links_window_ms();
        let horizon = e.ts_ms - window;
        let stale = self.now_ms() - window;
        let most = config.max_partners + 1;
        let add = |link: Link, from: u64, to: u64, subject: &str| {
            self.links.store(link).with(from, stale, Partners::default, |p| {
                p.add(to, subject, e.ts_ms, horizon, most)
            });
        };
        if let (Some(device), Some(fp)) = (keys.device, e.device.fingerprint.as_deref()) {
            add(Link::DeviceAccounts, device, keys.account, &e.account.id);
            add(Link::AccountDevices, keys.account, device, fp);
        }
        if e.outcome == Outcome::Success && e.kind == Kind::Redemption {
            add(Link::AccountCards, keys.account, keys.card, &e.card.code_hash);
        }
    }

    /// The decisions linked to `parent`, which a rule just made on `e`:
    /// appended to `out`, each admitted by the book as any decision is.
    pub(super) fn derive_linked(&self, parent: &Decision, e: &Event, keys: &Keys, out: &mut Vec<Decision>) {
        let config = &self.config.links;
        if !config.enabled || !matches!(parent.action, Action::Freeze | Action::Block) {
            return;
        }
        let (from, links): (u64, &[Link]) = match parent.scope {
            KeyName::Account => (keys.account, &[Link::AccountDevices, Link::AccountCards]),
            KeyName::Device => match keys.device {
                Some(d) => (d, &[Link::DeviceAccounts]),
                None => return,
            },
            _ => return,
        };
        let mode = if parent.mode == Mode::Shadow {
            Mode::Shadow
        } else {
            config.mode
        };
        let until_ms = parent
            .until
            .as_deref()
            .and_then(crate::event::parse_ts_ms)
            .unwrap_or(i64::MAX);
        let live = e.ts_ms - self.links_window_ms();
        let mut given = 0;
        for link in links {
            let action = match link {
                Link::DeviceAccounts => config.device_accounts,
                Link::AccountDevices => config.account_devices,
                Link::AccountCards => config.account_cards,
            };
            let action = match action {
                LinkAction::None => continue,
                LinkAction::Review => Action::Review,
                LinkAction::Challenge => Action::Challenge,
            };
            let scope = link.partner_scope();
            // The attempt's own entity of that scope is not an "other":
            // it is in the attempt, and its own rules judge it.
            let own = keys.get(scope);
            let Some(mut partners) = self.links.store(*link).read(from, live - 1, |p| {
                p.list
                    .iter()
                    .filter(|q| q.last_ms > live)
                    .map(|q| (q.last_ms, q.key, q.subject.clone()))
                    .collect::<Vec<_>>()
            }) else {
                continue;
            };
            if partners.len() > config.max_partners {
                // A hub: a shared device or a kiosk. Not followed.
                continue;
            }
            // Newest first; ties in key order, so replay and live agree.
            partners.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            for (_, key, subject) in partners {
                if Some(key) == own || given == config.max_per_decision || !self.take_link_budget(e.ts_ms, 1) {
                    continue;
                }
                let id = format!("{}>{}", parent.rule, link.name());
                let book_rule: std::sync::Arc<str> = id.as_str().into();
                if !self
                    .book
                    .admit((scope, &subject, mode), &book_rule, action, until_ms, e.ts_ms)
                {
                    // Already decided: the budget is for what is published.
                    self.take_link_budget(e.ts_ms, -1);
                    continue;
                }
                given += 1;
                out.push(Decision {
                    decision_id: decision_id(&id, &parent.rule_version, scope, &subject, e.ts_ms, &e.event_id),
                    decided_at: String::new(),
                    event_ts: parent.event_ts.clone(),
                    action,
                    scope,
                    subject: subject.to_string(),
                    until: parent.until.clone(),
                    rule: parent.rule.clone(),
                    rule_version: parent.rule_version.clone(),
                    mode,
                    score: parent.score,
                    reason: format!(
                        "linked to {} {} ({} by {}): {}",
                        parent.scope.as_str(),
                        parent.subject,
                        parent.action.as_str(),
                        parent.rule,
                        match link {
                            Link::DeviceAccounts => "another account on its device",
                            Link::AccountDevices => "another device of its account",
                            Link::AccountCards => "a card its account redeemed",
                        }
                    ),
                    evidence: json!({
                        "linked_from": parent.decision_id,
                        "link": link.name(),
                        "via": { "scope": parent.scope.as_str(), "subject": parent.subject },
                        "outcome": e.outcome,
                    }),
                    trigger_event_id: e.event_id.to_string(),
                    sample_event_ids: Vec::new(),
                });
            }
        }
    }

    /// Takes (`n = 1`) one derived decision from the minute's budget, if
    /// any is left, or gives one back (`n = -1`).
    fn take_link_budget(&self, ts_ms: i64, n: i32) -> bool {
        let mut m = self.links.minute.lock().unwrap_or_else(|p| p.into_inner());
        let minute = ts_ms.div_euclid(60_000);
        if minute > m.0 {
            *m = (minute, 0);
        }
        if n < 0 {
            m.1 = m.1.saturating_sub(1);
            return true;
        }
        if m.1 >= self.config.links.max_per_minute {
            return false;
        }
        m.1 += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_out_of_bounds_are_refused() {
        assert!(LinksConfig::default().validate().is_ok());
        let with = |f: fn(&mut LinksConfig)| {
            let mut c = LinksConfig::default();
            f(&mut c);
            c.validate()
        };
        assert!(with(|c| c.window_secs = 0).is_err());
        assert!(with(|c| c.max_partners = 0).is_err());
        assert!(with(|c| c.max_partners = MAX_PARTNERS + 1).is_err());
        assert!(with(|c| c.max_per_decision = 31).is_err());
        assert!(with(|c| c.max_per_minute = 0).is_err());
        let refused = toml::from_str::<LinksConfig>("device_accounts = \"freeze\"").expect_err("a freeze");
        assert!(refused.to_string().contains("unknown variant"), "{refused}");
    }

    #[test]
    fn partners_expire_and_stop_at_one_past_the_hub_size() {
        let mut p = Partners::default();
        for k in 0..5 {
            p.add(k, "x", 1_000 + k as i64, 0, 3);
        }
        assert_eq!(
            p.list.len(),
            3,
            "one past max_partners = 2 marks a hub; more tell nothing new"
        );
        p.add(9, "y", 10_000, 5_000, 3);
        assert_eq!(
            p.list.iter().map(|q| q.key).collect::<Vec<_>>(),
            [9],
            "the old ones expired"
        );
    }
}
