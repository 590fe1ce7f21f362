//! Compiled filter conditions, evaluated per attempt against its [`Facts`].

use serde_json::{json, Map, Value};

use crate::enrich::{GeoFacts, GeoNeeds};
use crate::event::{CardType, Channel, Country, Event, Kind, Outcome, Platform, Variant};
use crate::units::{human_ms, ms_to_secs, yuan};

/// Facts derived once per attempt, shared by every rule.
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts {
    pub geo: GeoFacts,
    /// Age of the account at the attempt, ms.
    pub account_age_ms: Option<i64>,
    pub new_device: Option<bool>,
    pub bound_to_other_account: bool,
    pub distance_km: Option<f64>,
    pub speed_kmh: Option<f64>,
}

/// One bit per enum variant chosen; 0 means "any".
pub(crate) fn mask<T: Variant>(chosen: &[T]) -> u32 {
    chosen.iter().fold(0, |m, v| m | v.bit())
}

/// A compiled `filter` table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub kinds: u32,
    pub outcomes: u32,
    pub failed: Option<bool>,
    pub brands: Vec<Box<str>>,
    pub card_types: u32,
    pub min_face_value_fen: Option<u64>,
    pub max_face_value_fen: Option<u64>,
    pub channels: u32,
    pub platforms: u32,
    pub min_account_age_ms: Option<i64>,
    pub max_account_age_ms: Option<i64>,
    pub verified: Option<bool>,
    pub ip_countries: Vec<Country>,
    pub asns: Vec<u32>,
    pub network: u8,
    pub country_mismatch: Option<bool>,
    pub new_device: Option<bool>,
    pub bound_to_other_account: Option<bool>,
    pub min_distance_km: Option<f64>,
    pub min_speed_kmh: Option<f64>,
    pub exclude: Option<Box<Filter>>,
}

fn in_mask<T: Variant>(m: u32, v: Option<T>) -> bool {
    m == 0 || v.is_some_and(|v| m & v.bit() != 0)
}

fn at_least<T: PartialOrd>(min: Option<T>, v: Option<T>) -> bool {
    min.is_none_or(|min| v.is_some_and(|v| v >= min))
}

fn at_most<T: PartialOrd>(max: Option<T>, v: Option<T>) -> bool {
    max.is_none_or(|max| v.is_some_and(|v| v <= max))
}

fn equals<T: PartialEq>(want: Option<T>, v: Option<T>) -> bool {
    want.is_none_or(|want| v.is_some_and(|v| v == want))
}

impl Filter {
    /// Whether `event` (with `facts`) passes every condition. Inlined into
    /// the engine's loop over rules, where it runs once per rule per attempt;
    /// the rare `exclude` goes through a call.
    #[inline]
    pub fn matches(&self, e: &Event, f: &Facts) -> bool {
        self.fields_pass(e, f.account_age_ms) && self.facts_pass(e, f)
    }

    /// [`Filter::matches`] for an attempt already known to pass
    /// [`Filter::may_match`]: the conditions on facts, and the exclusion.
    #[inline]
    pub fn facts_pass(&self, e: &Event, f: &Facts) -> bool {
        let passes = (self.ip_countries.is_empty() || f.geo.country.is_some_and(|c| self.ip_countries.contains(&c)))
            && (self.asns.is_empty() || f.geo.asn.is_some_and(|a| self.asns.contains(&a)))
            && (self.network == 0 || f.geo.network.0 & self.network != 0)
            && equals(self.country_mismatch, country_mismatch(e, f))
            && equals(self.new_device, f.new_device)
            && equals(self.bound_to_other_account, Some(f.bound_to_other_account))
            && at_least(self.min_distance_km, f.distance_km)
            && at_least(self.min_speed_kmh, f.speed_kmh);
        // The exclusion's closed fields first, inline: most exclusions are
        // on one of them (`card_type = ["custom"]`), and most attempts fail
        // it, which saves the call (about 100 instructions).
        passes
            && !self
                .exclude
                .as_ref()
                .is_some_and(|x| x.closed_fields_pass(&ClosedFields::of(e)) && x.excludes_beyond_closed(e, f))
    }

    /// The rest of an exclusion's match once its closed fields pass
    /// ([`Filter::matches`] less those), kept out of line: few attempts
    /// get this far.
    #[inline(never)]
    fn excludes_beyond_closed(&self, e: &Event, f: &Facts) -> bool {
        self.open_fields_pass(e, f.account_age_ms) && self.facts_pass(e, f)
    }

    /// Whether the attempt could pass, judged on its own fields alone:
    /// conditions on geo facts or memory count as passing and exclusions are
    /// not applied. `false` means no facts could make it pass.
    #[inline]
    pub fn may_match(&self, e: &Event) -> bool {
        self.fields_pass(e, e.account_age_ms())
    }

    /// The conditions on the attempt's own fields (`account_age_ms` is
    /// derived from them): those on its closed fields, which a
    /// [`FieldIndex`] answers for every rule at once, and the others.
    #[inline]
    fn fields_pass(&self, e: &Event, account_age_ms: Option<i64>) -> bool {
        self.closed_fields_pass(&ClosedFields::of(e)) && self.open_fields_pass(e, account_age_ms)
    }

    /// The conditions on the closed fields, each field on its own.
    fn closed_fields_pass(&self, c: &ClosedFields) -> bool {
        in_mask(self.kinds, Some(c.kind))
            && in_mask(self.outcomes, Some(c.outcome))
            && equals(self.failed, Some(c.outcome.is_failure()))
            && in_mask(self.card_types, c.card_type)
            && in_mask(self.channels, c.channel)
            && in_mask(self.platforms, c.platform)
            && equals(self.verified, c.verified)
    }

    /// Whether any condition is on a field that is not closed.
    fn has_open_fields(&self) -> bool {
        !self.brands.is_empty()
            || self.min_face_value_fen.is_some()
            || self.max_face_value_fen.is_some()
            || self.min_account_age_ms.is_some()
            || self.max_account_age_ms.is_some()
    }

    /// The conditions on fields that are not closed: brand, face value and
    /// account age.
    #[inline]
    fn open_fields_pass(&self, e: &Event, account_age_ms: Option<i64>) -> bool {
        (self.brands.is_empty() || e.card.brand.as_ref().is_some_and(|b| self.brands.contains(b)))
            && at_least(self.min_face_value_fen, e.card.face_value_fen)
            && at_most(self.max_face_value_fen, e.card.face_value_fen)
            && at_least(self.min_account_age_ms, account_age_ms)
            && at_most(self.max_account_age_ms, account_age_ms)
    }

    /// Which databases the conditions need.
    pub fn geo_needs(&self) -> GeoNeeds {
        let inner = self.exclude.as_ref().map(|x| x.geo_needs()).unwrap_or_default();
        GeoNeeds {
            city: inner.city
                || !self.ip_countries.is_empty()
                || self.country_mismatch.is_some()
                || self.min_distance_km.is_some()
                || self.min_speed_kmh.is_some(),
            asn: inner.asn || !self.asns.is_empty(),
            anonymous: inner.anonymous || self.network != 0,
        }
    }

    /// Whether the conditions read the account's memory (devices, last place).
    pub fn needs_account_memory(&self) -> bool {
        self.new_device.is_some()
            || self.min_distance_km.is_some()
            || self.min_speed_kmh.is_some()
            || self.exclude.as_ref().is_some_and(|x| x.needs_account_memory())
    }

    /// Whether the filter asks if a card is bound to another account (card memory).
    pub fn needs_card_memory(&self) -> bool {
        self.bound_to_other_account.is_some() || self.exclude.as_ref().is_some_and(|x| x.needs_card_memory())
    }

    /// The facts behind a match, as phrases for the reason sentence and as
    /// evidence fields. Only conditions this filter sets are described.
    pub fn explain(&self, e: &Event, f: &Facts) -> (Vec<String>, Map<String, Value>) {
        let mut said = Vec::new();
        let mut ev = Map::new();
        if let (Some(min), Some(v)) = (self.min_face_value_fen, e.card.face_value_fen) {
            said.push(format!("face value {} (at least {})", yuan(v), yuan(min)));
            ev.insert("face_value_fen".into(), json!(v));
        }
        if let Some(age) = f
            .account_age_ms
            .filter(|_| self.max_account_age_ms.is_some() || self.min_account_age_ms.is_some())
        {
            said.push(format!("account {} old", human_ms(age)));
            ev.insert("account_age_secs".into(), json!(ms_to_secs(age)));
        }
        if self.verified == Some(false) {
            said.push("account not real-name verified".into());
            ev.insert("verified".into(), json!(false));
        }
        if self.country_mismatch == Some(true) {
            if let (Some(ipc), Some(acc)) = (f.geo.country, e.account.country) {
                said.push(format!("address in {ipc}, account registered in {acc}"));
                ev.insert("ip_country".into(), json!(ipc.as_str()));
                ev.insert("account_country".into(), json!(acc.as_str()));
            }
        } else if !self.ip_countries.is_empty() {
            if let Some(c) = f.geo.country {
                said.push(format!("address in {c}"));
                ev.insert("ip_country".into(), json!(c.as_str()));
            }
        }
        if !self.asns.is_empty() {
            if let Some(a) = f.geo.asn {
                said.push(format!("address in AS{a}"));
                ev.insert("asn".into(), json!(a));
            }
        }
        if self.network != 0 {
            let names = f.geo.network.names();
            said.push(format!("address flagged {}", names.join(", ")));
            ev.insert("network".into(), json!(names));
        }
        if self.new_device == Some(true) {
            said.push("device never used by this account".into());
            ev.insert("new_device".into(), json!(true));
        }
        if self.bound_to_other_account == Some(true) {
            said.push("card activated to a different account".into());
            ev.insert("bound_to_other_account".into(), json!(true));
        }
        if let Some(d) = f
            .distance_km
            .filter(|_| self.min_distance_km.is_some() || self.min_speed_kmh.is_some())
        {
            said.push(format!("{d:.0} km from the account's last place"));
            ev.insert("distance_km".into(), json!(d.round()));
        }
        if let (Some(min), Some(s)) = (self.min_speed_kmh, f.speed_kmh) {
            said.push(format!("{s:.0} km/h needed (limit {min:.0} km/h)"));
            ev.insert("speed_kmh".into(), json!(s.round()));
        }
        (said, ev)
    }
}

/// An attempt's closed fields: those with a few possible values, which a
/// [`FieldIndex`] indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ClosedFields {
    kind: Kind,
    outcome: Outcome,
    card_type: Option<CardType>,
    channel: Option<Channel>,
    platform: Option<Platform>,
    verified: Option<bool>,
}

impl ClosedFields {
    fn of(e: &Event) -> ClosedFields {
        ClosedFields {
            kind: e.kind,
            outcome: e.outcome,
            card_type: e.card.card_type,
            channel: e.channel,
            platform: e.device.platform,
            verified: e.account.verified,
        }
    }
}

/// Which of a rule set's filters pass an attempt's own fields
/// ([`Filter::may_match`]), for up to 64 rules at once: bit `i` for rule `i`.
///
/// For each value of each closed field it holds the rules whose conditions
/// on that field the value passes, so the closed fields of an attempt cost
/// one lookup per field for all rules together. Only rules with conditions
/// on other fields (brand, face value, account age) are then judged one by
/// one, on those alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldIndex {
    kinds: Vec<u64>,
    outcomes: Vec<u64>,
    /// The `Option` fields: one entry per variant, then one for absent.
    card_types: Vec<u64>,
    channels: Vec<u64>,
    platforms: Vec<u64>,
    /// Absent, false, true ([`verified_slot`]).
    verified: [u64; 3],
    /// Rules with conditions on fields that are not closed.
    open: u64,
}

/// Every value of an optional closed field: each variant, then absent.
fn and_absent<T: Copy>(all: &[T]) -> impl Iterator<Item = Option<T>> + '_ {
    all.iter().map(|v| Some(*v)).chain([None])
}

/// Where an optional closed field's value sits in its [`FieldIndex`] table.
fn slot<T: Variant>(v: Option<T>) -> usize {
    v.map_or(T::COUNT, T::index)
}

impl FieldIndex {
    /// The index of `filters` (rule `i`'s at `i`); `None` past 64.
    pub fn new(filters: &[&Filter]) -> Option<FieldIndex> {
        if filters.len() > 64 {
            return None;
        }
        // The rules that pass an attempt which differs from one passing
        // every rule's closed conditions only in the field `with` sets: any
        // closed fields work as that base, since each condition reads only
        // its own field.
        let rules_passing = |with: &dyn Fn(&mut ClosedFields)| -> u64 {
            filters.iter().enumerate().fold(0, |m, (i, f)| {
                let mut c = ClosedFields {
                    kind: pick(Kind::ALL, f.kinds),
                    outcome: *Outcome::ALL
                        .iter()
                        .find(|o| in_mask(f.outcomes, Some(**o)) && equals(f.failed, Some(o.is_failure())))
                        .unwrap_or(&Outcome::Success),
                    card_type: (f.card_types != 0).then(|| pick(CardType::ALL, f.card_types)),
                    channel: (f.channels != 0).then(|| pick(Channel::ALL, f.channels)),
                    platform: (f.platforms != 0).then(|| pick(Platform::ALL, f.platforms)),
                    verified: f.verified,
                };
                with(&mut c);
                m | (f.closed_fields_pass(&c) as u64) << i
            })
        };
        let mut verified = [0; 3];
        for v in [None, Some(false), Some(true)] {
            verified[verified_slot(v)] = rules_passing(&|c| c.verified = v);
        }
        Some(FieldIndex {
            kinds: Kind::ALL.iter().map(|k| rules_passing(&|c| c.kind = *k)).collect(),
            outcomes: Outcome::ALL
                .iter()
                .map(|o| rules_passing(&|c| c.outcome = *o))
                .collect(),
            card_types: and_absent(CardType::ALL)
                .map(|t| rules_passing(&|c| c.card_type = t))
                .collect(),
            channels: and_absent(Channel::ALL)
                .map(|ch| rules_passing(&|c| c.channel = ch))
                .collect(),
            platforms: and_absent(Platform::ALL)
                .map(|p| rules_passing(&|c| c.platform = p))
                .collect(),
            verified,
            open: filters
                .iter()
                .enumerate()
                .fold(0, |m, (i, f)| m | (f.has_open_fields() as u64) << i),
        })
    }

    /// The rules whose filters may match `e` (see [`Filter::may_match`]);
    /// `filters` are the ones the index was made from, in the same order.
    pub fn may_match<'f>(&self, e: &Event, filter: impl Fn(usize) -> &'f Filter) -> u64 {
        let mut rules = self.kinds[e.kind.index()]
            & self.outcomes[e.outcome.index()]
            & self.card_types[slot(e.card.card_type)]
            & self.channels[slot(e.channel)]
            & self.platforms[slot(e.device.platform)]
            & self.verified[verified_slot(e.account.verified)];
        let mut open = rules & self.open;
        if open != 0 {
            let age = e.account_age_ms();
            while open != 0 {
                let i = open.trailing_zeros() as usize;
                open &= open - 1;
                if !filter(i).open_fields_pass(e, age) {
                    rules &= !(1 << i);
                }
            }
        }
        rules
    }
}

/// Where `verified` sits in its [`FieldIndex`] table: absent, false, true.
fn verified_slot(v: Option<bool>) -> usize {
    v.map_or(0, |b| 1 + b as usize)
}

/// A variant that `mask` allows (the first; any when `mask` is 0).
fn pick<T: Variant>(all: &[T], mask: u32) -> T {
    *all.iter().find(|v| in_mask(mask, Some(**v))).unwrap_or(&all[0])
}

/// Whether the address's country differs from the account's registered one;
/// unknown when either is unknown.
pub fn country_mismatch(e: &Event, f: &Facts) -> Option<bool> {
    Some(f.geo.country? != e.account.country?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_variant_s_bit_is_its_place_in_all() {
        use crate::event::{CardType, Channel, Kind, Outcome, Platform};
        fn places<T: Variant>(all: &[T]) -> Vec<u32> {
            all.iter().map(|v| v.bit().trailing_zeros()).collect()
        }
        fn expected(n: usize) -> Vec<u32> {
            (0..n as u32).collect()
        }
        assert_eq!(places(Kind::ALL), expected(Kind::ALL.len()));
        assert_eq!(places(Outcome::ALL), expected(Outcome::ALL.len()));
        assert_eq!(places(CardType::ALL), expected(CardType::ALL.len()));
        assert_eq!(places(Channel::ALL), expected(Channel::ALL.len()));
        assert_eq!(places(Platform::ALL), expected(Platform::ALL.len()));
        let m = mask(&[Outcome::WrongPin, Outcome::Error]);
        assert!(in_mask(m, Some(Outcome::Error)) && !in_mask(m, Some(Outcome::Success)));
        assert!(in_mask(0, None::<Outcome>), "no condition passes anything");
        assert!(!in_mask(m, None::<Outcome>), "a condition fails an absent field");
    }
}

#[cfg(test)]
mod index_tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::event::{Account, Card, Device};

    fn variant<T: Variant + std::fmt::Debug + 'static>(all: &'static [T]) -> impl Strategy<Value = Option<T>> {
        proptest::option::of(proptest::sample::select(all))
    }

    prop_compose! {
        fn filter()(
            kinds in 0u32..4, outcomes in prop_oneof![Just(0u32), 0u32..256], failed in proptest::option::of(any::<bool>()),
            card_types in prop_oneof![Just(0u32), 0u32..64], channels in prop_oneof![Just(0u32), 0u32..16],
            platforms in prop_oneof![Just(0u32), 0u32..32], verified in proptest::option::of(any::<bool>()),
            jd in any::<bool>(), min_face in proptest::option::of(0u64..200_000),
            max_age in proptest::option::of(0i64..10_000),
        ) -> Filter {
            Filter {
                kinds, outcomes, failed, card_types, channels, platforms, verified,
                brands: if jd { vec!["jd".into()] } else { Vec::new() },
                min_face_value_fen: min_face,
                max_account_age_ms: max_age,
                ..Filter::default()
            }
        }
    }

    prop_compose! {
        fn event()(
            kind in proptest::sample::select(Kind::ALL), outcome in proptest::sample::select(Outcome::ALL),
            card_type in variant(CardType::ALL), channel in variant(Channel::ALL),
            platform in variant(Platform::ALL), verified in proptest::option::of(any::<bool>()),
            jd in any::<bool>(), face in proptest::option::of(0u64..200_000),
            created in proptest::option::of(0i64..20_000),
        ) -> Event {
            Event {
                event_id: Arc::from("e-1"),
                ts_ms: 20_000,
                kind,
                outcome,
                card: Card {
                    code_hash: "aabbccdd".into(),
                    brand: jd.then(|| "jd".into()),
                    card_type,
                    face_value_fen: face,
                    currency: None,
                    batch: None,
                    bound_account: None,
                },
                account: Account { id: "u-1".into(), created_at_ms: created, verified, country: None },
                device: Device { fingerprint: None, platform },
                ip: None,
                channel,
            }
        }
    }

    /// Bit `i` set when filter `i` may match, judged one filter at a time.
    fn one_by_one(filters: &[Filter], e: &Event) -> u64 {
        filters
            .iter()
            .enumerate()
            .fold(0, |m, (i, f)| m | (f.may_match(e) as u64) << i)
    }

    proptest! {
        #[test]
        fn the_index_answers_as_each_filter_does(
            filters in proptest::collection::vec(filter(), 1..64),
            events in proptest::collection::vec(event(), 1..20),
        ) {
            let refs: Vec<&Filter> = filters.iter().collect();
            let index = FieldIndex::new(&refs).expect("at most 64 rules");
            for e in &events {
                prop_assert_eq!(index.may_match(e, |i| &filters[i]), one_by_one(&filters, e), "{:?}", e);
            }
        }
    }

    #[test]
    fn the_shipped_rules_index_answers_as_each_filter_does_on_generated_traffic() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/rules");
        let all = crate::enrich::GeoNeeds {
            city: true,
            asn: true,
            anonymous: true,
        };
        let rules = crate::rules::load_rules(&root, all).expect("shipped rules load");
        let filters: Vec<Filter> = rules.rules.iter().map(|r| r.filter.clone()).collect();
        let index = rules.field_index.as_ref().expect("the pack has under 64 rules");
        let hasher = crate::event::CodeHasher::without_key();
        let mut seen = std::collections::HashSet::new();
        for line in crate::tools::generate::generate(20_000, 3, 2000).lines() {
            let e = crate::event::parse(line.as_bytes(), &hasher).expect("generated events parse");
            let bits = index.may_match(&e, |i| &rules.rules[i].filter);
            assert_eq!(bits, one_by_one(&filters, &e), "{line}");
            seen.insert(bits);
        }
        assert!(
            seen.len() > 4,
            "the traffic passes several different sets of rules: {seen:?}"
        );
        assert!(
            FieldIndex::new(&vec![&filters[0]; 65]).is_none(),
            "past 64 rules there is no index"
        );
    }
}
