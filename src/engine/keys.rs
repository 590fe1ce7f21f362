//! An attempt's keys (hashed once, shared by every rule) and the subject
//! strings decisions name them by.

use std::net::IpAddr;

use ipnet::IpNet;

use super::Engine;
use crate::event::Event;
use crate::key::key_of;
use crate::rules::{CompiledRule, Facts, KeyName};

/// Key hashes of one attempt, computed once and shared by every rule.
#[derive(Debug, Clone, Copy)]
pub(super) struct Keys {
    pub(super) card: u64,
    pub(super) account: u64,
    pub(super) device: Option<u64>,
    pub(super) ip: Option<u64>,
    pub(super) ip_prefix: Option<(u64, IpNet)>,
    pub(super) asn: Option<u64>,
    pub(super) batch: Option<u64>,
    pub(super) brand: Option<u64>,
}

impl Keys {
    pub(super) fn get(&self, k: KeyName) -> Option<u64> {
        match k {
            KeyName::Card => Some(self.card),
            KeyName::Account => Some(self.account),
            KeyName::Device => self.device,
            KeyName::Ip => self.ip,
            KeyName::IpPrefix => self.ip_prefix.map(|(h, _)| h),
            KeyName::Asn => self.asn,
            KeyName::Batch => self.batch,
            KeyName::Brand => self.brand,
        }
    }
}

/// The keys that cost a hash only some rule sets need.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Wanted {
    pub(super) ip_prefix: bool,
    pub(super) batch: bool,
    pub(super) brand: bool,
}

impl Wanted {
    pub(super) fn by(rules: &crate::rules::RuleSet) -> Wanted {
        Wanted {
            ip_prefix: rules.uses_ip_prefix,
            batch: rules.uses_batch,
            brand: rules.uses_brand,
        }
    }
}

impl Engine {
    /// The attempt's key hashes; `asn` is left for the caller, who knows
    /// whether the geo lookup is needed, and `ip_prefix`, `batch` and
    /// `brand` are left out unless `wanted` says a rule uses them (each
    /// costs a hash most rule sets never read).
    pub(super) fn keys(&self, e: &Event, wanted: Wanted) -> Keys {
        let ip_prefix = e.ip.filter(|_| wanted.ip_prefix).map(|ip| {
            let len = match ip {
                IpAddr::V4(_) => self.config.ipv4_prefix_len,
                IpAddr::V6(_) => self.config.ipv6_prefix_len,
            };
            let net = IpNet::new(ip, len)
                .map(|n| n.trunc())
                .unwrap_or_else(|_| IpNet::from(ip));
            (key_of(&net), net)
        });
        Keys {
            card: key_of(e.card.code_hash.as_ref()),
            account: key_of(e.account.id.as_ref()),
            device: e.device.fingerprint.as_deref().map(key_of),
            ip: e.ip.map(|ip| key_of(&ip)),
            ip_prefix,
            asn: None,
            batch: e
                .card
                .batch
                .as_deref()
                .filter(|_| wanted.batch)
                .map(|b| key_of(&(KeyName::Batch, b))),
            brand: e
                .card
                .brand
                .as_deref()
                .filter(|_| wanted.brand)
                .map(|b| key_of(&(KeyName::Brand, b))),
        }
    }
}

/// What a rule counts by (`group_by`), in its decision's words: the
/// decision's subject again when the rule decides on what it counts by.
/// The key was counted, so it is present and so is its subject.
pub(super) fn group_subject(
    rule: &CompiledRule,
    group_by: KeyName,
    decided: &str,
    e: &Event,
    keys: &Keys,
    facts: &Facts,
) -> String {
    if group_by == rule.scope {
        decided.to_string()
    } else {
        subject(group_by, e, keys, facts).unwrap_or_default()
    }
}

/// The subject string for a scope, from the attempt. Never a raw card code:
/// the card subject is its hash.
pub(super) fn subject(scope: KeyName, e: &Event, keys: &Keys, facts: &Facts) -> Option<String> {
    match scope {
        KeyName::IpPrefix => Some(keys.ip_prefix?.1.to_string()),
        KeyName::Asn => Some(facts.geo.asn?.to_string()),
        _ => named_subject(scope, e).map(std::borrow::Cow::into_owned),
    }
}

/// The subject an attempt names by itself under `scope`, as decisions name
/// it; `None` for `ip_prefix` and `asn` (the engine derives them) or for a
/// field the attempt lacks. The backtest matches labels with it.
pub fn named_subject(scope: KeyName, e: &Event) -> Option<std::borrow::Cow<'_, str>> {
    use std::borrow::Cow::{Borrowed, Owned};
    Some(match scope {
        KeyName::Card => Borrowed(&*e.card.code_hash),
        KeyName::Account => Borrowed(&*e.account.id),
        KeyName::Device => Borrowed(e.device.fingerprint.as_deref()?),
        KeyName::Ip => Owned(e.ip?.to_string()),
        KeyName::Batch => Borrowed(e.card.batch.as_deref()?),
        KeyName::Brand => Borrowed(e.card.brand.as_deref()?),
        KeyName::IpPrefix | KeyName::Asn => return None,
    })
}
