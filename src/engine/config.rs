//! The engine's limits (`[engine]` in the service configuration) and its errors.

use serde::Deserialize;

use crate::enrich::{GeoDatabases, GeoNeeds};
use crate::rules::RuleSet;
use crate::units::secs_to_ms;

/// Engine limits. Every field has a safe default.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Most keys all state together may hold (windows, quotas, account and
    /// card memory, active decisions). At the cap new keys are not tracked and
    /// `cap_hits` counts them; past three quarters of it, neither are a
    /// store's beyond its share (see `StateBudget::try_take`).
    pub max_keys: usize,
    /// How late (event time) an attempt may arrive and still be counted in
    /// its own window; also how long idle keys are kept past their window.
    pub lateness_secs: u64,
    /// How far an attempt's `ts` may run ahead of when it was received (its
    /// record's timestamp; see `kafka::run`) before it is refused as
    /// `ts_ahead`. The engine's clock is the newest event time it has seen:
    /// one attempt stamped a year ahead would otherwise age every window,
    /// memory and decision out for everyone.
    pub max_ahead_secs: u64,
    /// How long an event id is remembered to drop redeliveries.
    pub dedup_window_secs: u64,
    /// Most event ids remembered per dedup generation.
    pub dedup_max_ids: usize,
    /// How long account and card memory is kept without activity: an
    /// account or card idle this long is new again, swept or not.
    pub memory_ttl_secs: u64,
    /// How often (event time) idle keys are swept out, at most: each store
    /// about once per eighth of its span (see `engine::sweep`). An idle key
    /// counts as gone as soon as a sweep could evict it, so when sweeps run
    /// changes memory, never a decision.
    pub sweep_every_secs: u64,
    /// Prefix length for `ip_prefix` keys on IPv4 addresses.
    pub ipv4_prefix_len: u8,
    /// Prefix length for `ip_prefix` keys on IPv6 addresses.
    pub ipv6_prefix_len: u8,
    /// Linked-entity decisions (see `engine::links`): off by default.
    pub links: super::links::LinksConfig,
}

impl EngineConfig {
    /// `lateness_secs` in milliseconds.
    pub fn lateness_ms(&self) -> i64 {
        secs_to_ms(self.lateness_secs)
    }

    /// `max_ahead_secs` in milliseconds.
    pub fn max_ahead_ms(&self) -> i64 {
        secs_to_ms(self.max_ahead_secs)
    }

    /// `memory_ttl_secs` in milliseconds.
    pub fn memory_ttl_ms(&self) -> i64 {
        secs_to_ms(self.memory_ttl_secs)
    }

    /// `sweep_every_secs` in milliseconds.
    pub fn sweep_every_ms(&self) -> i64 {
        secs_to_ms(self.sweep_every_secs)
    }

    /// How long an event id is remembered, ms: the dedup window, and never
    /// less than the lateness (a redelivery that still counts must still be
    /// recognised).
    pub fn dedup_ms(&self) -> i64 {
        secs_to_ms(self.dedup_window_secs.max(self.lateness_secs))
    }

    pub(super) fn validate(&self) -> Result<(), EngineError> {
        if self.ipv4_prefix_len > 32 || self.ipv6_prefix_len > 128 {
            return Err(EngineError::Config(
                "ipv4_prefix_len must be 0..=32 and ipv6_prefix_len 0..=128".into(),
            ));
        }
        self.links.validate().map_err(EngineError::Config)
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            // Just under 7/8 of 2^22: a store filled to the cap stays below
            // the load at which its hash tables double (see BENCHMARKS.md).
            max_keys: 3_600_000,
            lateness_secs: 30,
            max_ahead_secs: 60,
            dedup_window_secs: 600,
            dedup_max_ids: 2_000_000,
            memory_ttl_secs: 30 * 86_400,
            sweep_every_secs: 60,
            ipv4_prefix_len: 24,
            ipv6_prefix_len: 48,
            links: Default::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the rules need geo databases that are not open: {0:?}")]
    MissingGeo(GeoNeeds),
    #[error("invalid engine setting: {0}")]
    Config(String),
    #[error("rule `{rule}` runs per {home}, but this pipeline was started without routing by {home}; restart it to add the {home} topic")]
    Unrouted { rule: String, home: &'static str },
}

/// A rule set may only need databases that are open.
pub(super) fn check_geo(rules: &RuleSet, geo: &GeoDatabases) -> Result<(), EngineError> {
    let (have, need) = (geo.available(), rules.geo_needs);
    if (need.city && !have.city) || (need.asn && !have.asn) || (need.anonymous && !have.anonymous) {
        return Err(EngineError::MissingGeo(need));
    }
    Ok(())
}
