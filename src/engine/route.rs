//! Routing for the split pipeline: which instances (home keys) an attempt
//! concerns, and the homes a running split pipeline was started with.

use smallvec::SmallVec;

use super::keys::{subject, Keys};
use super::Engine;
use crate::enrich::GeoNeeds;
use crate::event::{Event, Kind, Outcome};
use crate::key::key_of;
use crate::rules::{Facts, KeyName, RuleSet};

impl Engine {
    /// The home keys among `homes` that want this attempt, each with the
    /// attempt's value of it (the subject string decisions use), for routing
    /// it to the instance that owns that value. A home key is left out when
    /// the attempt lacks it (no device, no address, an address outside the
    /// ASN database), or when no rule there could pass it and the memory kept
    /// there does not learn from it: it would change nothing at that home.
    pub fn route_keys(&self, e: &Event, homes: &[KeyName]) -> SmallVec<[(KeyName, String); 4]> {
        let rules = self.rules();
        let homes: SmallVec<[KeyName; 8]> = homes.iter().copied().filter(|h| wants(&rules, e, *h)).collect();
        let geo = match e.ip {
            Some(ip) if homes.contains(&KeyName::Asn) => self.geo.lookup(
                ip,
                GeoNeeds {
                    asn: true,
                    ..GeoNeeds::default()
                },
            ),
            _ => Default::default(),
        };
        let keys = Keys {
            asn: geo.asn.map(|a| key_of(&a)),
            ..self.keys(
                e,
                super::keys::Wanted {
                    ip_prefix: homes.contains(&KeyName::IpPrefix),
                    batch: homes.contains(&KeyName::Batch),
                    brand: homes.contains(&KeyName::Brand),
                },
            )
        };
        let facts = Facts {
            geo,
            ..Facts::default()
        };
        homes
            .iter()
            .filter_map(|h| Some((*h, subject(*h, e, &keys, &facts)?)))
            .collect()
    }

    /// Restricts later rule sets to these home keys (`None`: any). A running
    /// split pipeline routes attempts only to the homes it started with, so a
    /// reload that needs another is refused rather than silently starved.
    pub fn restrict_homes(&self, homes: Option<Vec<KeyName>>) {
        *self.routed_homes.write().unwrap_or_else(|p| p.into_inner()) = homes;
    }
}

/// Whether anything at `home` could change for `e`: a rule there that the
/// attempt's own fields could pass (facts are not known before the home
/// looks them up; see `CompiledRule::may_match`), or the memory kept there (account memory learns from
/// successes, card memory from successful activations).
fn wants(rules: &RuleSet, e: &Event, home: KeyName) -> bool {
    let success = e.outcome == Outcome::Success;
    (home == KeyName::Account && rules.needs_account_memory && success)
        || (home == KeyName::Card && rules.needs_card_memory && success && e.kind == Kind::Activation)
        || rules.rules.iter().any(|r| r.home == home && r.may_match(e))
}
