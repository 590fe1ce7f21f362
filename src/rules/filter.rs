//! Compiled filter conditions, evaluated per attempt against its [`Facts`].

use serde_json::{json, Map, Value};

use crate::enrich::{GeoFacts, GeoNeeds};
use crate::event::{Country, Event, Variant};

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
        passes && !self.exclude.as_ref().is_some_and(|x| x.excludes(e, f))
    }

    /// The exclusion's match, kept out of line: few filters have one.
    #[inline(never)]
    fn excludes(&self, e: &Event, f: &Facts) -> bool {
        self.matches(e, f)
    }

    /// Whether the attempt could pass, judged on its own fields alone:
    /// conditions on geo facts or memory count as passing and exclusions are
    /// not applied. `false` means no facts could make it pass.
    #[inline]
    pub fn may_match(&self, e: &Event) -> bool {
        self.fields_pass(e, e.account.created_at_ms.map(|c| e.ts_ms - c))
    }

    /// The conditions on the attempt's own fields (`account_age_ms` is
    /// derived from them). Always inlined: judged for every rule on every
    /// attempt, where a call's register saves cost a third of the work.
    #[inline(always)]
    fn fields_pass(&self, e: &Event, account_age_ms: Option<i64>) -> bool {
        in_mask(self.kinds, Some(e.kind))
            && in_mask(self.outcomes, Some(e.outcome))
            && equals(self.failed, Some(e.outcome.is_failure()))
            && (self.brands.is_empty() || e.card.brand.as_ref().is_some_and(|b| self.brands.contains(b)))
            && in_mask(self.card_types, e.card.card_type)
            && at_least(self.min_face_value_fen, e.card.face_value_fen)
            && at_most(self.max_face_value_fen, e.card.face_value_fen)
            && in_mask(self.channels, e.channel)
            && in_mask(self.platforms, e.device.platform)
            && at_least(self.min_account_age_ms, account_age_ms)
            && at_most(self.max_account_age_ms, account_age_ms)
            && equals(self.verified, e.account.verified)
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
            said.push(format!("account {} old", human_secs(age / 1000)));
            ev.insert("account_age_secs".into(), json!(age / 1000));
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

/// Whether the address's country differs from the account's registered one;
/// unknown when either is unknown.
pub fn country_mismatch(e: &Event, f: &Facts) -> Option<bool> {
    Some(f.geo.country? != e.account.country?)
}

/// Fen as yuan with the sign, e.g. `¥1,000.00`.
pub fn yuan(fen: u64) -> String {
    let whole = (fen / 100).to_string();
    let mut grouped = String::new();
    for (i, ch) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(ch);
    }
    format!("¥{grouped}.{:02}", fen % 100)
}

/// Seconds as the largest whole unit: `600` → `10m`, `86400` → `1d`.
pub fn human_secs(secs: i64) -> String {
    match secs {
        s if s >= 86_400 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s >= 3_600 && s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s >= 3_600 => format!("{:.1}h", s as f64 / 3_600.0),
        s if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_and_time_read_naturally() {
        assert_eq!(yuan(123_456_789), "¥1,234,567.89");
        assert_eq!(yuan(5), "¥0.05");
        assert_eq!(human_secs(600), "10m");
        assert_eq!(human_secs(86_400), "1d");
        assert_eq!(human_secs(7_200), "2h");
        assert_eq!(human_secs(45), "45s");
    }

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
