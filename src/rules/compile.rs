//! `RuleSpec` → `CompiledRule`: every check that can be made before the first
//! event is made here, and every failure is pointed at its file position.

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;

use ipnet::IpNet;
use sha2::{Digest, Sha256};

use super::errors::Located;
use super::filter::{mask, Filter};
use super::honey::HoneyList;
use super::modifiers::{compile_breaker, compile_ladder, BreakerConfig, Ladder};
use super::spec::{Action, Aggregate, FilterSpec, KeyName, Mode, RuleKind, RuleSpec, MAX_DURATION_SECS};
use crate::enrich::{GeoNeeds, NetworkFlags};
use crate::event::Country;
use crate::key::key_of;
use crate::units::secs_to_ms;

/// Longest window (or quota period) a rule may have: a week.
pub const MAX_WINDOW_SECS: u64 = 7 * 86_400;

/// Longest account age a filter may name: a hundred years.
pub const MAX_ACCOUNT_AGE_SECS: u64 = 100 * 365 * 86_400;

/// Highest threshold of a distinct count: a key keeps up to this many values
/// (memory per key grows with it), so the engine's distinct sets are capped here.
pub const MAX_DISTINCT_THRESHOLD: u64 = 10_000;

/// A rule ready to run.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    pub id: Arc<str>,
    /// First 12 hex digits of SHA-256 over the rule's definition as loaded.
    pub version: Arc<str>,
    pub description: String,
    pub kind: CompiledKind,
    pub filter: Filter,
    pub action: Action,
    pub scope: KeyName,
    /// `None`: until released.
    pub duration_ms: Option<i64>,
    /// Repeat offenders: longer decisions for a subject decided again.
    pub ladder: Option<Ladder>,
    /// Circuit breaker on the rule's blast radius.
    pub breaker: Option<BreakerConfig>,
    pub score: u8,
    pub mode: Mode,
    pub noun: String,
    pub allow: Allow,
    pub geo_needs: GeoNeeds,
    /// The key this rule's state lives under: its group-by key; for a match
    /// rule, the key of the memory it reads (account, card), else its scope.
    /// Split across instances, each rule runs where its home key is owned
    /// (see `kafka::topology`).
    pub home: KeyName,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CompiledKind {
    Threshold {
        group_by: KeyName,
        aggregate: CompiledAggregate,
        window_ms: i64,
        bucket_ms: i64,
        threshold: u64,
    },
    Quota {
        group_by: KeyName,
        limit: NonZeroU32,
        period_ms: i64,
        burst: NonZeroU32,
    },
    Match,
    /// An attempt on a decoy code of `list`.
    Honey {
        list: Arc<HoneyList>,
    },
    /// A key's count in a tumbling window of `window_ms` against its mean
    /// over the `baseline_windows` windows before.
    Surge {
        group_by: KeyName,
        window_ms: i64,
        baseline_windows: u32,
        factor: f64,
        min_count: u64,
    },
}

/// Most windows a surge rule's baseline may span (two weeks of hours).
pub const MAX_SURGE_BASELINE_WINDOWS: u64 = 336;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompiledAggregate {
    Count,
    Distinct(KeyName),
    SumFaceValue,
}

/// Allowlists, as key hashes and networks.
#[derive(Debug, Clone, Default)]
pub struct Allow {
    pub accounts: HashSet<u64>,
    pub devices: HashSet<u64>,
    pub cidrs: Vec<IpNet>,
}

impl Allow {
    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty() && self.devices.is_empty() && self.cidrs.is_empty()
    }
}

impl CompiledRule {
    /// Whether the rule reads key `k` of an attempt: as its home or as one
    /// of [`CompiledRule::keys`].
    pub fn uses(&self, k: KeyName) -> bool {
        self.home == k || self.keys().contains(&k)
    }

    /// The attempt's keys the rule decides on: its scope, its group-by key
    /// and the key it counts distinct values of.
    fn keys(&self) -> Vec<KeyName> {
        let mut keys = vec![self.scope];
        keys.extend(self.group_by());
        if let CompiledKind::Threshold {
            aggregate: CompiledAggregate::Distinct(k),
            ..
        } = self.kind
        {
            keys.push(k);
        }
        keys
    }

    /// Whether the attempt's own fields could make this rule decide, before
    /// any fact is looked up: its filter could pass, and for a honey rule
    /// the card is on the list (so a split pipeline routes only decoys to
    /// the honey rules' homes, not every attempt).
    pub fn may_match(&self, e: &crate::event::Event) -> bool {
        self.filter.may_match(e)
            && match &self.kind {
                CompiledKind::Honey { list } => list.contains(key_of(e.card.code_hash.as_ref())),
                _ => true,
            }
    }

    pub fn group_by(&self) -> Option<KeyName> {
        match self.kind {
            CompiledKind::Threshold { group_by, .. }
            | CompiledKind::Quota { group_by, .. }
            | CompiledKind::Surge { group_by, .. } => Some(group_by),
            CompiledKind::Match | CompiledKind::Honey { .. } => None,
        }
    }

    fn key_needs(&self) -> GeoNeeds {
        GeoNeeds {
            asn: self.keys().contains(&KeyName::Asn),
            ..GeoNeeds::default()
        }
    }
}

fn rule_version(spec: &RuleSpec) -> Arc<str> {
    // Spanned serializes as its value, so the version ignores where the rule
    // sits in its file: moving a rule does not reset its windows.
    let canonical = serde_json::to_vec(spec).unwrap_or_default();
    hex::encode(&Sha256::digest(&canonical)[..6]).into()
}

/// Honey lists read while compiling one rule set, by path: rules that name
/// the same list share one copy.
pub(crate) type HoneyLists = std::collections::HashMap<std::path::PathBuf, Arc<HoneyList>>;

/// A setting the kind needs: its value when `ok`, else `problem` at the
/// value, or, when it is missing, an error at the rule's `kind`.
fn need<T: Copy>(
    errs: &mut Located,
    kind: &toml::Spanned<RuleKind>,
    kind_name: &str,
    name: &str,
    field: &Option<toml::Spanned<T>>,
    ok: impl Fn(T) -> bool,
    problem: String,
) -> Option<T> {
    match field {
        Some(v) if ok(*v.get_ref()) => Some(*v.get_ref()),
        Some(v) => {
            errs.at(v, problem);
            None
        }
        None => {
            errs.at(kind, format!("a {kind_name} rule needs `{name}`"));
            None
        }
    }
}

/// Compiles one rule; on failure the errors are in `errs` and `None` returns.
pub(crate) fn compile_rule(
    spec: &RuleSpec,
    table_start: usize,
    available: GeoNeeds,
    lists: &mut HoneyLists,
    errs: &mut Located,
) -> Option<CompiledRule> {
    let before = errs.len();
    let id = spec.id.get_ref();
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        errs.at(&spec.id, "rule id must be 1 to 64 letters, digits, `-` or `_`".into());
    }
    let kind = *spec.kind.get_ref();
    let filter = compile_filter(&spec.filter, errs);

    // Fields that belong to other kinds are mistakes, not silently ignored.
    let threshold_only: [(&str, Option<usize>); 4] = [
        ("aggregate", spec.aggregate.as_ref().map(|s| s.span().start)),
        ("distinct_of", spec.distinct_of.as_ref().map(|s| s.span().start)),
        ("window_secs", spec.window_secs.as_ref().map(|s| s.span().start)),
        ("threshold", spec.threshold.as_ref().map(|s| s.span().start)),
    ];
    let quota_only: [(&str, Option<usize>); 3] = [
        ("limit", spec.limit.as_ref().map(|s| s.span().start)),
        ("period_secs", spec.period_secs.as_ref().map(|s| s.span().start)),
        ("burst", spec.burst.as_ref().map(|s| s.span().start)),
    ];
    let kind_name = match kind {
        RuleKind::Threshold => "threshold",
        RuleKind::Quota => "quota",
        RuleKind::Match => "match",
        RuleKind::Honey => "honey",
        RuleKind::Surge => "surge",
    };
    let mut misplaced = |fields: &[(&str, Option<usize>)]| {
        for (name, at) in fields {
            if let Some(at) = at {
                errs.at_offset(*at, format!("`{name}` has no meaning for a {kind_name} rule"));
            }
        }
    };
    if kind == RuleKind::Surge {
        // A surge rule has a window too; the rest is the threshold's.
        misplaced(&[threshold_only[0], threshold_only[1], threshold_only[3]]);
    } else if kind != RuleKind::Threshold {
        misplaced(&threshold_only);
    }
    if kind != RuleKind::Surge {
        misplaced(&[
            ("baseline_secs", spec.baseline_secs.as_ref().map(|s| s.span().start)),
            ("factor", spec.factor.as_ref().map(|s| s.span().start)),
            ("min_count", spec.min_count.as_ref().map(|s| s.span().start)),
        ]);
    }
    if kind != RuleKind::Quota {
        misplaced(&quota_only);
    }
    if kind != RuleKind::Honey {
        if let Some(l) = &spec.honey_list {
            errs.at(l, format!("`honey_list` has no meaning for a {kind_name} rule"));
        }
    }
    if matches!(kind, RuleKind::Match | RuleKind::Honey) {
        if let Some(g) = &spec.group_by {
            errs.at(g, format!("`group_by` has no meaning for a {kind_name} rule"));
        }
    }

    let need_group_by = |errs: &mut Located| -> Option<KeyName> {
        match &spec.group_by {
            Some(g) => Some(*g.get_ref()),
            None => {
                errs.at(&spec.kind, format!("a {kind_name} rule needs `group_by`"));
                None
            }
        }
    };

    let compiled_kind = match kind {
        RuleKind::Threshold => {
            let group_by = need_group_by(errs);
            let aggregate = match spec.aggregate.as_ref().map(|a| *a.get_ref()) {
                Some(Aggregate::Count) => Some(CompiledAggregate::Count),
                Some(Aggregate::SumFaceValue) => Some(CompiledAggregate::SumFaceValue),
                Some(Aggregate::Distinct) => match &spec.distinct_of {
                    Some(d) if Some(*d.get_ref()) == group_by => {
                        errs.at(d, "`distinct_of` must differ from `group_by`".into());
                        None
                    }
                    Some(d) => Some(CompiledAggregate::Distinct(*d.get_ref())),
                    None => {
                        if let Some(a) = &spec.aggregate {
                            errs.at(a, "`aggregate = \"distinct\"` needs `distinct_of`".into());
                        }
                        None
                    }
                },
                None => {
                    errs.at(&spec.kind, "a threshold rule needs `aggregate`".into());
                    None
                }
            };
            if let (Some(d), Some(a)) = (&spec.distinct_of, &spec.aggregate) {
                if *a.get_ref() != Aggregate::Distinct {
                    errs.at(d, "`distinct_of` needs `aggregate = \"distinct\"`".into());
                }
            }
            let window = need(
                errs,
                &spec.kind,
                kind_name,
                "window_secs",
                &spec.window_secs,
                |w| (1..=MAX_WINDOW_SECS).contains(&w),
                format!("`window_secs` must be 1 to {MAX_WINDOW_SECS}"),
            );
            let threshold = need(
                errs,
                &spec.kind,
                kind_name,
                "threshold",
                &spec.threshold,
                |t| t >= 1,
                "`threshold` must be at least 1".into(),
            );
            // What a key's state can hold bounds the threshold.
            let bound = match aggregate {
                Some(CompiledAggregate::Distinct(_)) => Some((
                    MAX_DISTINCT_THRESHOLD,
                    format!("a distinct `threshold` must be at most {MAX_DISTINCT_THRESHOLD} (memory per key grows with it)"),
                )),
                Some(CompiledAggregate::SumFaceValue) => Some((
                    u32::MAX as u64,
                    format!(
                        "a sum_face_value `threshold` must be at most {} fen ({})",
                        u32::MAX,
                        crate::units::yuan(u32::MAX as u64)
                    ),
                )),
                _ => None,
            };
            if let (Some((most, why)), Some(t)) = (bound, &spec.threshold) {
                if *t.get_ref() > most {
                    errs.at(t, why);
                }
            }
            match (group_by, aggregate, window, threshold) {
                (Some(group_by), Some(aggregate), Some(window), Some(threshold)) => {
                    let window_ms = secs_to_ms(window);
                    Some(CompiledKind::Threshold {
                        group_by,
                        aggregate,
                        window_ms,
                        bucket_ms: (window_ms / crate::state::BUCKETS as i64).max(1),
                        threshold,
                    })
                }
                _ => None,
            }
        }
        RuleKind::Quota => {
            let group_by = need_group_by(errs);
            let limit = match &spec.limit {
                Some(l) => NonZeroU32::new(*l.get_ref()).or_else(|| {
                    errs.at(l, "`limit` must be at least 1".into());
                    None
                }),
                None => {
                    errs.at(&spec.kind, "a quota rule needs `limit`".into());
                    None
                }
            };
            let period = need(
                errs,
                &spec.kind,
                kind_name,
                "period_secs",
                &spec.period_secs,
                |p| (1..=MAX_WINDOW_SECS).contains(&p),
                format!("`period_secs` must be 1 to {MAX_WINDOW_SECS}"),
            );
            let burst = match &spec.burst {
                Some(b) => NonZeroU32::new(*b.get_ref()).or_else(|| {
                    errs.at(b, "`burst` must be at least 1".into());
                    None
                }),
                None => limit,
            };
            match (group_by, limit, period, burst) {
                (Some(group_by), Some(limit), Some(period), Some(burst)) => Some(CompiledKind::Quota {
                    group_by,
                    limit,
                    period_ms: secs_to_ms(period),
                    burst,
                }),
                _ => None,
            }
        }
        RuleKind::Match => Some(CompiledKind::Match),
        RuleKind::Surge => {
            let group_by = need_group_by(errs);
            let window = need(
                errs,
                &spec.kind,
                kind_name,
                "window_secs",
                &spec.window_secs,
                |w| (60..=MAX_WINDOW_SECS).contains(&w),
                format!("`window_secs` must be 60 to {MAX_WINDOW_SECS} for a surge rule"),
            );
            let windows = match (&spec.baseline_secs, window) {
                (Some(b), Some(w)) => {
                    let n = b.get_ref() / w;
                    if b.get_ref() % w != 0 || !(1..=MAX_SURGE_BASELINE_WINDOWS).contains(&n) {
                        errs.at(
                            b,
                            format!("`baseline_secs` must be 1 to {MAX_SURGE_BASELINE_WINDOWS} whole windows (`window_secs`)"),
                        );
                        None
                    } else {
                        Some(n as u32)
                    }
                }
                (None, _) => {
                    errs.at(&spec.kind, "a surge rule needs `baseline_secs`".into());
                    None
                }
                (Some(_), None) => None,
            };
            let factor = need(
                errs,
                &spec.kind,
                kind_name,
                "factor",
                &spec.factor,
                |f| f.is_finite() && f > 1.0 && f <= 1000.0,
                "`factor` must be above 1 and at most 1000".into(),
            );
            let min_count = need(
                errs,
                &spec.kind,
                kind_name,
                "min_count",
                &spec.min_count,
                |m| m >= 1,
                "`min_count` must be at least 1".into(),
            );
            match (group_by, window, windows, factor, min_count) {
                (Some(group_by), Some(window), Some(baseline_windows), Some(factor), Some(min_count)) => {
                    Some(CompiledKind::Surge {
                        group_by,
                        window_ms: secs_to_ms(window),
                        baseline_windows,
                        factor,
                        min_count,
                    })
                }
                _ => None,
            }
        }
        RuleKind::Honey => match &spec.honey_list {
            None => {
                errs.at(&spec.kind, "a honey rule needs `honey_list`".into());
                None
            }
            Some(name) => {
                let path = errs.file().parent().unwrap_or(Path::new(".")).join(name.get_ref());
                let loaded = match lists.get(&path) {
                    Some(list) => Ok(list.clone()),
                    None => HoneyList::load(&path, name.get_ref()).map(Arc::new),
                };
                match loaded {
                    Ok(list) => {
                        lists.insert(path, list.clone());
                        Some(CompiledKind::Honey { list })
                    }
                    Err(e) => {
                        errs.at(name, e);
                        None
                    }
                }
            }
        },
    };

    let scope = match (&spec.scope, &spec.group_by) {
        (Some(s), _) => *s.get_ref(),
        (None, Some(g)) if !matches!(kind, RuleKind::Match | RuleKind::Honey) => *g.get_ref(),
        _ => KeyName::Account,
    };
    let action = *spec.action.get_ref();
    match action {
        Action::Release => errs.at(
            &spec.action,
            "a rule cannot `release`; releases come from the admin API".into(),
        ),
        Action::Freeze if !matches!(scope, KeyName::Card | KeyName::Account) => errs.at(
            &spec.action,
            format!(
                "`freeze` applies to a card or an account, not to scope `{}`; use `block`",
                scope.as_str()
            ),
        ),
        Action::Block if matches!(scope, KeyName::Card | KeyName::Account) => errs.at(
            &spec.action,
            format!(
                "`block` applies to an ip, prefix, device or asn, not to scope `{}`; use `freeze`",
                scope.as_str()
            ),
        ),
        _ => {}
    }
    if *spec.score.get_ref() > 100 {
        errs.at(&spec.score, "`score` must be 0 to 100".into());
    }

    let mut allow = Allow {
        accounts: spec.allow.accounts.iter().map(|a| key_of(a.as_str())).collect(),
        devices: spec.allow.devices.iter().map(|d| key_of(d.as_str())).collect(),
        cidrs: Vec::new(),
    };
    for cidr in &spec.allow.cidrs {
        match parse_cidr(cidr.get_ref()) {
            Some(net) => allow.cidrs.push(net),
            None => errs.at(
                cidr,
                "not an address range like \"10.0.0.0/8\" or \"2001:db8::/32\"".into(),
            ),
        }
    }

    let noun = spec.noun.clone().unwrap_or_else(|| match &compiled_kind {
        Some(CompiledKind::Threshold {
            aggregate: CompiledAggregate::Distinct(k),
            ..
        }) => format!("distinct {}s", plural_stem(*k)),
        Some(CompiledKind::Threshold {
            aggregate: CompiledAggregate::SumFaceValue,
            ..
        }) => "of face value".into(),
        _ => "attempts".into(),
    });

    let ladder = compile_ladder(spec, errs);
    let breaker = compile_breaker(spec, errs);

    let mut rule = CompiledRule {
        id: id.as_str().into(),
        version: rule_version(spec),
        description: spec.description.clone(),
        kind: compiled_kind?,
        filter: filter?,
        action,
        scope,
        duration_ms: spec
            .duration_secs
            .filter(|d| *d > 0)
            .map(|d| secs_to_ms(d.min(MAX_DURATION_SECS))),
        ladder,
        breaker,
        score: (*spec.score.get_ref()).min(100) as u8,
        mode: spec.mode,
        noun,
        allow,
        geo_needs: GeoNeeds::default(),
        home: KeyName::Account,
    };
    rule.home = rule.group_by().unwrap_or(if rule.filter.needs_account_memory() {
        KeyName::Account
    } else if rule.filter.needs_card_memory() {
        KeyName::Card
    } else {
        rule.scope
    });
    rule.geo_needs = rule.filter.geo_needs().union(rule.key_needs());
    for (needed, have, name, key) in [
        (rule.geo_needs.city, available.city, "City", "geo.city"),
        (rule.geo_needs.asn, available.asn, "ASN", "geo.asn"),
        (
            rule.geo_needs.anonymous,
            available.anonymous,
            "Anonymous-IP",
            "geo.anonymous",
        ),
    ] {
        if needed && !have {
            errs.at_offset(
                table_start,
                format!("rule `{id}` needs the GeoIP2/GeoLite2 {name} database, which is not configured (set `{key}` in the config or pass --{})", key.trim_start_matches("geo.")),
            );
        }
    }
    (errs.len() == before).then_some(rule)
}

fn plural_stem(k: KeyName) -> &'static str {
    match k {
        KeyName::Card => "card",
        KeyName::Account => "account",
        KeyName::Device => "device",
        KeyName::Ip => "addresse",
        KeyName::IpPrefix => "prefixe",
        KeyName::Asn => "network",
        KeyName::Batch => "batche",
        KeyName::Brand => "brand",
    }
}

fn parse_cidr(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
        .map(|n| n.trunc())
}

fn compile_filter(spec: &FilterSpec, errs: &mut Located) -> Option<Filter> {
    let before = errs.len();
    let mut ip_countries = Vec::new();
    for c in &spec.ip_country {
        match Country::parse(c.get_ref()) {
            Some(country) => ip_countries.push(country),
            None => errs.at(c, "not a two-letter country code (ISO 3166-1 alpha-2)".into()),
        }
    }
    let mut network = 0u8;
    for n in &spec.network {
        match NetworkFlags::NAMES.iter().find(|(name, _)| name == n.get_ref()) {
            Some((_, bit)) => network |= bit,
            None => errs.at(
                n,
                format!(
                    "unknown network flag, expected one of {}",
                    NetworkFlags::NAMES
                        .iter()
                        .map(|(n, _)| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
        }
    }
    let exclude = match &spec.exclude {
        Some(x) => Some(Box::new(compile_filter(x, errs)?)),
        None => None,
    };
    let age_ms = |s: Option<u64>| s.map(|s| secs_to_ms(s.min(MAX_ACCOUNT_AGE_SECS)));
    let filter = Filter {
        kinds: mask(&spec.kind),
        outcomes: mask(&spec.outcome),
        failed: spec.failed,
        brands: spec.brand.iter().map(|b| b.as_str().into()).collect(),
        card_types: mask(&spec.card_type),
        min_face_value_fen: spec.min_face_value_fen,
        max_face_value_fen: spec.max_face_value_fen,
        channels: mask(&spec.channel),
        platforms: mask(&spec.platform),
        min_account_age_ms: age_ms(spec.min_account_age_secs),
        max_account_age_ms: age_ms(spec.max_account_age_secs),
        verified: spec.verified,
        ip_countries,
        asns: spec.asn.clone(),
        network,
        country_mismatch: spec.country_mismatch,
        new_device: spec.new_device,
        bound_to_other_account: spec.bound_to_other_account,
        min_distance_km: spec.min_distance_km,
        min_speed_kmh: spec.min_speed_kmh,
        exclude,
    };
    (errs.len() == before).then_some(filter)
}

#[cfg(test)]
mod tests {
    use crate::rules::compile_sources;
    use crate::rules::tests::error;

    #[test]
    fn a_honey_list_belongs_to_honey_rules_and_must_exist() {
        assert!(error("honey_list = \"x.txt\"\n").contains("`honey_list` has no meaning for a threshold rule"));
        let honey = |extra: &str| {
            compile_sources(
                &[(
                    "r.toml".into(),
                    format!("[[rule]]\nid = \"h\"\nkind = \"honey\"\naction = \"freeze\"\nscore = 100\n{extra}"),
                )],
                Default::default(),
            )
        };
        assert!(honey("")
            .expect_err("no list")
            .to_string()
            .contains("needs `honey_list`"));
        let missing = honey("honey_list = \"/nonexistent/decoys.txt\"\n")
            .expect_err("no file")
            .to_string();
        assert!(missing.contains("cannot read honey list"), "{missing}");
        assert!(honey("honey_list = \"x\"\ngroup_by = \"ip\"\n").is_err());
    }
}
