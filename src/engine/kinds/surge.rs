//! Surge rules (batch alarms): guessing bots spread over thousands of
//! residential addresses keep every address, device and account under its
//! limit; what rises is the failure rate against a card batch or brand as
//! a whole. A surge rule counts a key's attempts in tumbling windows of
//! event time and fires when the current window runs `factor` times above
//! the key's own mean over the windows before (and at `min_count` at
//! least). A key decides only once it has a whole baseline of history.

use std::collections::VecDeque;

use serde_json::json;

use super::{Build, RuleKind};
use crate::decision::Decision;
use crate::engine::keys::{group_subject, Keys};
use crate::engine::Engine;
use crate::event::Event;
use crate::rules::{CompiledKind, CompiledRule, Facts};
use crate::state::{CapHits, KeyedStore, LastSeen};
use crate::units::{human_ms, ms_to_secs};

/// One key's history: the window being counted, and the counts of the
/// windows before it, oldest first.
#[derive(Debug, Default)]
pub(in crate::engine) struct SurgeKey {
    window: i64,
    current: u64,
    before: VecDeque<u32>,
    last_ms: i64,
}

impl LastSeen for SurgeKey {
    fn last_seen_ms(&self) -> i64 {
        self.last_ms
    }
}

impl SurgeKey {
    /// Counts an attempt at `ts_ms`; the current count and the baseline
    /// mean, once a whole baseline is known.
    fn observe(&mut self, ts_ms: i64, window_ms: i64, windows: usize) -> (u64, Option<f64>) {
        let window = ts_ms.div_euclid(window_ms);
        if self.last_ms == 0 && self.current == 0 && self.before.is_empty() {
            self.window = window;
        } else if window > self.window {
            // The window closed, and the empty ones after it.
            self.before.push_back(u32::try_from(self.current).unwrap_or(u32::MAX));
            for _ in 1..(window - self.window).min(windows as i64 + 1) {
                self.before.push_back(0);
            }
            while self.before.len() > windows {
                self.before.pop_front();
            }
            self.window = window;
            self.current = 0;
        }
        // A late attempt counts in the window being counted.
        self.current += 1;
        self.last_ms = self.last_ms.max(ts_ms);
        let known = self.before.len() == windows;
        let mean = known.then(|| self.before.iter().map(|c| f64::from(*c)).sum::<f64>() / windows as f64);
        (self.current, mean)
    }
}

/// The state of one surge rule.
pub(in crate::engine) struct Surge(KeyedStore<SurgeKey>);

impl RuleKind for Surge {
    fn new(rule: &CompiledRule, build: &Build<'_>) -> Surge {
        Surge(KeyedStore::new(build.budget.clone()).named(rule.id.clone()))
    }

    #[inline]
    fn prefetch(&self, key: u64) {
        self.0.prefetch(key)
    }

    fn idle_ms(&self, rule: &CompiledRule, engine: &Engine) -> Option<i64> {
        match rule.kind {
            CompiledKind::Surge {
                window_ms,
                baseline_windows,
                ..
            } => Some(engine.window_idle_ms(window_ms.saturating_mul(i64::from(baseline_windows) + 1))),
            _ => None,
        }
    }

    fn evict_idle(&self, horizon_ms: i64) -> usize {
        self.0.evict_idle(horizon_ms)
    }

    fn cap_hits(&self) -> Option<CapHits> {
        Some(self.0.cap_hits())
    }

    fn evaluate(
        &self,
        engine: &Engine,
        rule: &CompiledRule,
        e: &Event,
        keys: &Keys,
        facts: &Facts,
    ) -> Option<Decision> {
        let CompiledKind::Surge {
            group_by,
            window_ms,
            baseline_windows,
            factor,
            min_count,
        } = &rule.kind
        else {
            return None;
        };
        let key = keys.get(*group_by)?;
        let windows = *baseline_windows as usize;
        // Idle past its whole history, a key starts again.
        let stale = engine.now_ms() - engine.window_idle_ms(window_ms.saturating_mul(i64::from(*baseline_windows) + 1));
        let (count, mean) = self.0.with(key, stale, SurgeKey::default, |k| {
            k.observe(e.ts_ms, *window_ms, windows)
        })?;
        let mean = mean?;
        if count < *min_count || count as f64 <= factor * mean {
            return None;
        }
        engine.decide(rule, e, keys, facts, |subject| {
            let group_subject = group_subject(rule, *group_by, subject, e, keys, facts);
            let baseline_ms = window_ms.saturating_mul(i64::from(*baseline_windows));
            let reason = format!(
                "{count} {} on {} {group_subject} in {}: {:.1} times its usual {mean:.1} over the {} before (factor {factor}, at least {min_count})",
                rule.noun,
                group_by.as_str(),
                human_ms(*window_ms),
                count as f64 / mean.max(f64::MIN_POSITIVE),
                human_ms(baseline_ms),
            );
            let evidence = json!({
                "value": count,
                "usual": (mean * 10.0).round() / 10.0,
                "factor": factor,
                "min_count": min_count,
                "window_secs": ms_to_secs(*window_ms),
                "baseline_secs": ms_to_secs(baseline_ms),
                "group_by": group_by.as_str(),
                "key": group_subject,
            });
            (reason, evidence, Vec::new())
        })
    }
}
