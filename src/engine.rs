//! Steps 2 to 6 joined: one validated attempt in, zero or more decisions out.
//!
//! The engine is pure in the sense the pipeline needs: it reads no clock, does
//! no I/O, and given the same events in the same order produces the same
//! decisions. Its state sits in `DashMap`s, so `process` takes `&self` and
//! partitions may share one engine.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::{json, Value};
use smallvec::SmallVec;

use crate::decision::{decision_id, Decision, DecisionBook};
use crate::enrich::{distance_km, GeoDatabases, GeoNeeds};
use crate::event::{format_ts, Event, Kind, Outcome};
use crate::rules::filter::{human_secs, yuan};
use crate::rules::{CompiledAggregate, CompiledKind, CompiledRule, Facts, KeyName, RuleSet};
use crate::state::{
    key_of, AccountMemory, BudgetStats, CapHits, CardMemory, DistinctWindow, EventClock, KeyedQuota, KeyedStore,
    LastSeen, Recalled, SeenEvents, SlidingCount, StateBudget,
};

/// Most sample event ids a decision carries.
pub const MAX_SAMPLES: usize = 10;

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
    /// about once per eighth of its span (see `Engine::sweep_loaded`). An
    /// idle key counts as gone as soon as a sweep could evict it, so when
    /// sweeps run changes memory, never a decision.
    pub sweep_every_secs: u64,
    /// Prefix length for `ip_prefix` keys on IPv4 addresses.
    pub ipv4_prefix_len: u8,
    /// Prefix length for `ip_prefix` keys on IPv6 addresses.
    pub ipv6_prefix_len: u8,
}

impl EngineConfig {
    /// `lateness_secs` in milliseconds.
    pub fn lateness_ms(&self) -> i64 {
        self.lateness_secs as i64 * 1000
    }

    /// `max_ahead_secs` in milliseconds.
    pub fn max_ahead_ms(&self) -> i64 {
        self.max_ahead_secs as i64 * 1000
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

/// What happened to one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Processed,
    /// Processed, but its event time was more than the lateness behind the
    /// engine's clock: windows may no longer count it where it belongs.
    /// Counted (`EngineStats::late`), never dropped.
    Late,
    /// Same `event_id` seen within the dedup window: not counted again.
    Duplicate,
}

/// Per-key state of a threshold rule: its aggregate (a [`SlidingCount`] or a
/// [`DistinctWindow`]) and the newest event ids of the episode. The first
/// sample is stored inline, so a key seen once (most keys under a flood of
/// fresh codes or addresses) allocates nothing of its own.
#[derive(Debug, Clone, Default)]
struct WindowKey<A> {
    agg: A,
    samples: SmallVec<[Arc<str>; 1]>,
    last_ms: i64,
}

impl<A> LastSeen for WindowKey<A> {
    fn last_seen_ms(&self) -> i64 {
        self.last_ms
    }
}

/// A threshold and the value of the aggregate from which a key keeps the
/// ids of its attempts for a decision's samples.
#[derive(Debug, Clone, Copy)]
struct Limits {
    threshold: u64,
    keep_from: u64,
}

impl Limits {
    /// A count or a distinct count rises by at most one per attempt, so the
    /// `MAX_SAMPLES` attempts before the one that reaches the threshold all
    /// stood at `threshold - MAX_SAMPLES` or more: ids kept from there on
    /// are exactly the newest ones, and a key far below its threshold (most
    /// keys, most of the time) keeps none. A sum can jump, so its episode is
    /// taken to start at half the threshold.
    fn new(aggregate: &CompiledAggregate, threshold: u64) -> Limits {
        let keep_from = match aggregate {
            CompiledAggregate::SumFaceValue => threshold / 2,
            _ => threshold.saturating_sub(MAX_SAMPLES as u64),
        };
        Limits { threshold, keep_from }
    }
}

impl<A> WindowKey<A> {
    /// Adds the event through `add`; returns the aggregate and, when it
    /// reaches the threshold, the samples before this event.
    fn observe(&mut self, e: &Event, limits: Limits, add: impl FnOnce(&mut A) -> u64) -> (u64, Option<Vec<Arc<str>>>) {
        self.last_ms = self.last_ms.max(e.ts_ms);
        let value = add(&mut self.agg);
        let samples = (value >= limits.threshold).then(|| self.samples.to_vec());
        if value < limits.keep_from {
            // Below the episode: what was kept can no longer be sampled.
            self.samples = SmallVec::new();
            return (value, samples);
        }
        if self.samples.len() == MAX_SAMPLES {
            self.samples.remove(0);
        }
        self.samples.push(e.event_id.clone());
        (value, samples)
    }
}

/// A distinct-count key seen once: its one value, when, and the attempt.
#[derive(Debug)]
struct Single {
    value: u64,
    ts_ms: i64,
    sample: Arc<str>,
}

/// Per-key state of a distinct-count rule. Most keys of a rule grouped by
/// card are seen once (every guess is a new code), so a key starts compact
/// and gets a full window at its second attempt, boxed so that the map's
/// slots stay the size of the compact form (32 bytes, where a window takes
/// 56). One map and one probe per attempt, new key or not.
#[derive(Debug)]
enum DistinctKey {
    Once(Single),
    Many(Box<WindowKey<DistinctWindow>>),
}

// The claim above, checked where pointers are 64 bits.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<DistinctKey>() == 32);

impl LastSeen for DistinctKey {
    fn last_seen_ms(&self) -> i64 {
        match self {
            DistinctKey::Once(s) => s.ts_ms,
            DistinctKey::Many(w) => w.last_ms,
        }
    }
}

impl DistinctKey {
    /// The state of a key's first attempt: compact, unless one attempt
    /// already reaches the threshold (no waiting room).
    fn first(e: &Event, value: u64, threshold: u64) -> DistinctKey {
        if threshold <= 1 {
            return DistinctKey::Many(Box::default());
        }
        DistinctKey::Once(Single {
            value,
            ts_ms: e.ts_ms,
            sample: e.event_id.clone(),
        })
    }

    /// Adds `value` for `e` as [`WindowKey::observe`] does; `None` for a key
    /// `fresh` from [`DistinctKey::first`] that is still below the threshold.
    fn observe(
        &mut self,
        fresh: bool,
        e: &Event,
        value: u64,
        (limits, window_ms, cap): (Limits, i64, usize),
    ) -> Option<(u64, Option<Vec<Arc<str>>>)> {
        let w = match self {
            DistinctKey::Once(_) if fresh => return None,
            DistinctKey::Once(s) => {
                let mut agg = DistinctWindow::default();
                agg.add(s.value, s.ts_ms, window_ms, cap);
                *self = DistinctKey::Many(Box::new(WindowKey {
                    agg,
                    samples: smallvec::smallvec![s.sample.clone()],
                    last_ms: s.ts_ms,
                }));
                let DistinctKey::Many(w) = self else {
                    unreachable!("just set")
                };
                w
            }
            DistinctKey::Many(w) => w,
        };
        Some(w.observe(e, limits, |d| d.add(value, e.ts_ms, window_ms, cap)))
    }
}

enum RuleState {
    /// Count and sum-of-face-value thresholds (a count is a sum of ones).
    /// Sums fit the same `u32` buckets as counts because rules refuse a sum
    /// threshold above `u32::MAX` fen: a bucket that saturates has reached
    /// the threshold on its own, so no decision changes.
    Sums(KeyedStore<WindowKey<SlidingCount>>),
    /// Distinct-count thresholds.
    Distincts(KeyedStore<DistinctKey>),
    Quota(KeyedQuota),
    Stateless,
}

impl RuleState {
    /// The new keys the rule's store refused; `None` for a rule with no state.
    fn cap_hits(&self) -> Option<CapHits> {
        match self {
            RuleState::Sums(store) => Some(store.cap_hits()),
            RuleState::Distincts(store) => Some(store.cap_hits()),
            RuleState::Quota(quota) => Some(quota.cap_hits()),
            RuleState::Stateless => None,
        }
    }
}

/// Counters the engine keeps for the summary and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct EngineStats {
    pub processed: u64,
    pub duplicates: u64,
    /// Attempts processed more than the lateness behind the clock.
    pub late: u64,
    pub decisions: u64,
    pub state: BudgetStats,
}

/// The rule set in force and the state of each of its rules, swapped whole
/// by [`Engine::replace_rules`].
struct Loaded {
    rules: Arc<RuleSet>,
    states: Vec<RuleState>,
    /// Counts rule sets swapped in, so that what was prepared for one is
    /// never applied to the next.
    generation: u64,
}

pub struct Engine {
    loaded: RwLock<Loaded>,
    /// Allowlist entries that apply to every rule (the admin API's).
    global_allow: RwLock<crate::allowlist::SharedAllow>,
    /// The entries `global_allow` is made from, as typed.
    allowlist: Mutex<crate::allowlist::AllowList>,
    /// Whether `global_allow` has entries: while it has none (the usual
    /// case), attempts skip its lock.
    global_allow_set: AtomicBool,
    /// Home keys a split pipeline routes to; `None` when not split.
    routed_homes: RwLock<Option<Vec<KeyName>>>,
    geo: Arc<GeoDatabases>,
    accounts: KeyedStore<AccountMemory>,
    cards: KeyedStore<CardMemory>,
    book: DecisionBook,
    seen: SeenEvents,
    clock: EventClock,
    budget: Arc<StateBudget>,
    next_sweep_ms: AtomicI64,
    /// Sweeps so far, for the stores swept only every few rounds.
    sweep_rounds: AtomicU64,
    processed: AtomicU64,
    duplicates: AtomicU64,
    late: AtomicU64,
    decisions: AtomicU64,
    /// See [`Engine::set_restoring`].
    restoring: AtomicBool,
    /// New keys refused by stores dropped on reload (a rule changed or
    /// removed), by store name: the count by store never goes back.
    retired_cap_hits: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    config: EngineConfig,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("rules", &self.rules().version)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Key hashes of one attempt, computed once and shared by every rule.
#[derive(Debug, Clone, Copy)]
struct Keys {
    card: u64,
    account: u64,
    device: Option<u64>,
    ip: Option<u64>,
    ip_prefix: Option<(u64, IpNet)>,
    asn: Option<u64>,
}

impl Keys {
    fn get(&self, k: KeyName) -> Option<u64> {
        match k {
            KeyName::Card => Some(self.card),
            KeyName::Account => Some(self.account),
            KeyName::Device => self.device,
            KeyName::Ip => self.ip,
            KeyName::IpPrefix => self.ip_prefix.map(|(h, _)| h),
            KeyName::Asn => self.asn,
        }
    }
}

/// What [`Engine::prepare`] worked out for an attempt ahead of deciding it
/// (its key hashes, and which filters its own fields pass), for
/// [`Engine::process_prepared`] to reuse.
#[derive(Debug, Clone, Copy)]
pub struct Prepared {
    id: u64,
    keys: Keys,
    /// Which rules' filters pass the attempt's own fields (bit `i` for rule
    /// `i`), for the rule set of `generation`; `None` past 64 rules.
    fields: Option<u64>,
    generation: u64,
}

/// The rules whose filters pass an attempt's own fields (bit `i` for rule
/// `i`), judged for all rules at once by the rule set's [`FieldIndex`];
/// `None` past 64 rules, where each rule's filter is judged whole.
fn may_match(rules: &RuleSet, e: &Event) -> Option<u64> {
    let index = rules.field_index.as_ref()?;
    Some(index.may_match(e, |i| &rules.rules[i].filter))
}

/// The rules worth judging for an attempt, in order: those set in `fields`,
/// or all `n` when the fields were not judged ahead.
enum Candidates {
    Set(u64),
    All(std::ops::Range<usize>),
}

impl Candidates {
    fn new(fields: Option<u64>, n: usize) -> Candidates {
        match fields {
            Some(m) => Candidates::Set(m),
            None => Candidates::All(0..n),
        }
    }
}

impl Iterator for Candidates {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        match self {
            Candidates::Set(0) => None,
            Candidates::Set(m) => {
                let i = m.trailing_zeros() as usize;
                *m &= *m - 1;
                Some(i)
            }
            Candidates::All(range) => range.next(),
        }
    }
}

impl Engine {
    pub fn new(rules: Arc<RuleSet>, geo: Arc<GeoDatabases>, config: EngineConfig) -> Result<Engine, EngineError> {
        check_geo(&rules, &geo)?;
        if config.ipv4_prefix_len > 32 || config.ipv6_prefix_len > 128 {
            return Err(EngineError::Config(
                "ipv4_prefix_len must be 0..=32 and ipv6_prefix_len 0..=128".into(),
            ));
        }
        let budget = StateBudget::new(config.max_keys);
        let clock = EventClock::default();
        let states = rules
            .rules
            .iter()
            .map(|r| new_state(r, config.lateness_ms(), &clock, &budget))
            .collect();
        Ok(Engine {
            loaded: RwLock::new(Loaded {
                rules,
                states,
                generation: 0,
            }),
            global_allow: RwLock::new(Default::default()),
            allowlist: Mutex::new(Default::default()),
            global_allow_set: AtomicBool::new(false),
            routed_homes: RwLock::new(None),
            geo,
            accounts: KeyedStore::new(budget.clone()).named("account memory"),
            cards: KeyedStore::new(budget.clone()).named("card memory"),
            // The book has a budget of its own: a flood of attacker keys filling
            // the window budget must not make active decisions forgettable
            // (that would republish every decision on every attempt).
            book: DecisionBook::new(StateBudget::new(config.max_keys)),
            seen: SeenEvents::new(
                config.dedup_window_secs.max(config.lateness_secs) as i64 * 1000,
                config.dedup_max_ids,
            ),
            clock,
            budget,
            next_sweep_ms: AtomicI64::new(i64::MIN),
            sweep_rounds: AtomicU64::new(0),
            processed: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            late: AtomicU64::new(0),
            restoring: AtomicBool::new(false),
            decisions: AtomicU64::new(0),
            retired_cap_hits: Default::default(),
            config,
        })
    }

    fn loaded(&self) -> std::sync::RwLockReadGuard<'_, Loaded> {
        // Nothing panics while holding the lock; a poisoned one is still whole.
        self.loaded.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The rule set in force.
    pub fn rules(&self) -> Arc<RuleSet> {
        self.loaded().rules.clone()
    }

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
                None => new_state(r, self.lateness_ms(), &self.clock, &self.budget),
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
        *loaded = Loaded {
            rules,
            states,
            generation: loaded.generation + 1,
        };
        Ok(replaced)
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats {
            processed: self.processed.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            late: self.late.load(Ordering::Relaxed),
            decisions: self.decisions.load(Ordering::Relaxed),
            state: self.budget.stats(),
        }
    }

    /// Runs one attempt through every rule, appending published decisions to
    /// `out` (with `decided_at` empty: the sink stamps it).
    pub fn process(&self, e: &Event, out: &mut Vec<Decision>) -> Verdict {
        self.process_for(e, None, out)
    }

    /// Runs one attempt through the rules whose home key is `home` (every rule
    /// for `None`): the work of the instance that owns the attempt's `home`
    /// key when the rules are split across instances. Account memory is kept
    /// where accounts are home, card memory where cards are, and an event id
    /// counts once per home.
    pub fn process_for(&self, e: &Event, home: Option<KeyName>, out: &mut Vec<Decision>) -> Verdict {
        let id = match home {
            None => key_of(e.event_id.as_ref()),
            Some(h) => key_of(&(h, e.event_id.as_ref())),
        };
        self.decide_hashed(e, home, id, None, out)
    }

    /// Hashes `e`'s keys, judges every rule's filter on `e`'s own fields,
    /// and asks the CPU to start loading the state that
    /// [`Engine::process_prepared`] will read for it: the first lines of the
    /// dedup set's probe, of the store of every threshold and quota rule the
    /// fields pass, and of account and card memory. A caller that holds the
    /// next attempt while it decides this one (replay) prepares the next
    /// first, so those loads overlap this attempt's work instead of each
    /// lookup waiting for memory in turn. Changes no state.
    pub fn prepare(&self, e: &Event) -> Prepared {
        let loaded = self.loaded();
        let prepared = Prepared {
            id: key_of(e.event_id.as_ref()),
            keys: self.keys(e, loaded.rules.uses_ip_prefix),
            fields: may_match(&loaded.rules, e),
            generation: loaded.generation,
        };
        self.prefetch(&loaded, &prepared);
        prepared
    }

    /// [`Engine::process`] for `e`, reusing what [`Engine::prepare`] (which
    /// must have been given this `e`) worked out; the result is the same as
    /// `process`, rules reloaded in between included.
    pub fn process_prepared(&self, e: &Event, prepared: &Prepared, out: &mut Vec<Decision>) -> Verdict {
        debug_assert_eq!(prepared.id, key_of(e.event_id.as_ref()), "prepared for another attempt");
        self.decide_hashed(e, None, prepared.id, Some(prepared), out)
    }

    /// The work of [`Engine::process_for`] once the event id is hashed,
    /// reusing the keys and the filters' verdicts on the attempt's fields
    /// from `prepared` when it was prepared for the rule set in force.
    fn decide_hashed(
        &self,
        e: &Event,
        home: Option<KeyName>,
        id: u64,
        prepared: Option<&Prepared>,
        out: &mut Vec<Decision>,
    ) -> Verdict {
        if !self.seen.first_time(id, e.ts_ms) {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return Verdict::Duplicate;
        }
        self.processed.fetch_add(1, Ordering::Relaxed);
        let late = e.ts_ms < self.clock.now_ms().saturating_sub(self.lateness_ms());
        if late {
            self.late.fetch_add(1, Ordering::Relaxed);
        }
        self.clock.advance_to(e.ts_ms);
        let loaded = self.loaded();
        self.maybe_sweep(&loaded);
        let rules = &*loaded.rules;
        let prepared = prepared.filter(|p| p.generation == loaded.generation);
        // All keys but `asn`, which needs the geo lookup.
        let mut keys = match prepared {
            Some(p) => p.keys,
            None => self.keys(e, rules.uses_ip_prefix),
        };
        let needs = rules.geo_needs_at(home);
        let geo = match e.ip {
            Some(ip) if needs.any() => self.geo.lookup(ip, needs),
            _ => Default::default(),
        };
        keys.asn = geo.asn.map(|a| key_of(&a));
        let serves = |k: KeyName| home.is_none_or(|h| h == k);
        let memory = if rules.needs_account_memory && serves(KeyName::Account) {
            self.recall_account(e, &keys, &geo)
        } else {
            None
        };
        let facts = self.facts(rules, e, &keys, geo, memory);

        // The rules whose filters the attempt's own fields pass, from
        // `prepare` when it judged them for this rule set.
        let fields = match prepared {
            Some(p) => p.fields,
            None => may_match(rules, e),
        };
        let before = out.len();
        let global = self
            .global_allow_set
            .load(Ordering::Acquire)
            .then(|| self.global_allow.read().unwrap_or_else(|p| p.into_inner()));
        for i in Candidates::new(fields, rules.rules.len()) {
            let (rule, state) = (&rules.rules[i], &loaded.states[i]);
            let passes = match fields {
                Some(_) => rule.filter.facts_pass(e, &facts),
                None => rule.filter.matches(e, &facts),
            };
            if !serves(rule.home) || !passes || self.allowed(rule, e, &keys, global.as_deref()) {
                continue;
            }
            if let Some(d) = self.evaluate(rule, state, e, &keys, &facts) {
                out.push(d);
            }
        }
        if out.len() > before {
            self.decisions.fetch_add((out.len() - before) as u64, Ordering::Relaxed);
        }
        self.remember(rules, e, &keys, serves);
        if late {
            Verdict::Late
        } else {
            Verdict::Processed
        }
    }

    /// Prefetches the lines [`Engine::decide_hashed`] reads first for a
    /// prepared attempt (as [`Engine::process`], every home). Stores keyed by
    /// `asn` are left out: that key needs the attempt's geo lookup.
    fn prefetch(&self, loaded: &Loaded, prepared: &Prepared) {
        let keys = &prepared.keys;
        self.seen.prefetch(prepared.id);
        let rules = &*loaded.rules;
        // A rule whose filter the attempt's fields fail will not read its state.
        for i in Candidates::new(prepared.fields, rules.rules.len()) {
            let (rule, state) = (&rules.rules[i], &loaded.states[i]);
            let Some(key) = rule.group_by().and_then(|g| keys.get(g)) else {
                continue;
            };
            match state {
                RuleState::Sums(store) => store.prefetch(key),
                RuleState::Distincts(store) => store.prefetch(key),
                RuleState::Quota(quota) => quota.prefetch(key),
                RuleState::Stateless => {}
            }
        }
        if rules.needs_account_memory {
            self.accounts.prefetch(keys.account);
        }
        if rules.needs_card_memory {
            self.cards.prefetch(keys.card);
        }
    }

    /// The home keys among `homes` that want this attempt, each with the
    /// attempt's value of it (the subject string decisions use), for routing
    /// it to the instance that owns that value. A home key is left out when
    /// the attempt lacks it (no device, no address, an address outside the
    /// ASN database), or when no rule there could pass it and the memory kept
    /// there does not learn from it: it would change nothing at that home.
    pub fn route_keys(&self, e: &Event, homes: &[KeyName]) -> SmallVec<[(KeyName, String); 4]> {
        let rules = self.rules();
        let homes: SmallVec<[KeyName; 6]> = homes.iter().copied().filter(|h| wants(&rules, e, *h)).collect();
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
            ..self.keys(e, homes.contains(&KeyName::IpPrefix))
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

    /// The attempt's key hashes; `asn` is left for the caller, who knows
    /// whether the geo lookup is needed, and `ip_prefix` is left out unless
    /// `prefix` (a rule set that uses it).
    fn keys(&self, e: &Event, prefix: bool) -> Keys {
        let ip_prefix = e.ip.filter(|_| prefix).map(|ip| {
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
        }
    }

    fn facts(
        &self,
        rules: &RuleSet,
        e: &Event,
        keys: &Keys,
        geo: crate::enrich::GeoFacts,
        memory: Option<Recalled>,
    ) -> Facts {
        let mut facts = Facts {
            geo,
            account_age_ms: e.account_age_ms(),
            ..Facts::default()
        };
        if let Some(m) = memory {
            if let Some(known) = m.knows_device {
                facts.new_device = Some(m.has_history && !known);
            }
            if let (Some(here), Some(last)) = (geo.location, m.last_place) {
                // Both ends at the precision a place is kept in (`f32`,
                // about a metre): the same city twice is then 0 km apart,
                // not a rounding error apart, and costs no trigonometry.
                let kept = |lat: f32, lon: f32| (lat as f64, lon as f64);
                let d = distance_km(kept(last.lat, last.lon), kept(here.0 as f32, here.1 as f32));
                facts.distance_km = Some(d);
                // Under a minute apart counts as a minute: clocks and batching
                // jitter, and zero would make any distance infinitely fast.
                let hours = ((e.ts_ms - last.ts_ms).max(60_000)) as f64 / 3_600_000.0;
                facts.speed_kmh = Some(d / hours);
            }
        } else if rules.needs_account_memory && keys.device.is_some() {
            // An account with no successes yet has no device of its own to differ from.
            facts.new_device = Some(false);
        }
        facts.bound_to_other_account = match e.card.bound_account.as_deref() {
            Some(bound) => bound != e.account.id.as_ref(),
            None if rules.needs_card_memory => self
                .cards
                .read(keys.card, self.memory_stale_ms(), |c| {
                    c.bound_before(e.ts_ms).is_some_and(|a| a != keys.account)
                })
                .unwrap_or(false),
            None => false,
        };
        facts
    }

    fn allowed(
        &self,
        rule: &CompiledRule,
        e: &Event,
        keys: &Keys,
        global: Option<&crate::allowlist::SharedAllow>,
    ) -> bool {
        let allow = &rule.allow;
        let by_rule = !allow.is_empty()
            && (allow.accounts.contains(&keys.account)
                || keys.device.is_some_and(|d| allow.devices.contains(&d))
                || e.ip.is_some_and(|ip| allow.cidrs.iter().any(|n| n.contains(&ip))));
        by_rule || global.is_some_and(|g| g.exempts(e.ts_ms, keys.account, keys.device, e.ip))
    }

    /// Takes one allowlist record (from the topic, a file or the admin
    /// API); returns whether the list changed.
    pub fn apply_allow(&self, entry: crate::allowlist::Entry) -> bool {
        let mut list = self.allowlist.lock().unwrap_or_else(|p| p.into_inner());
        let changed = list.apply(entry);
        if changed {
            self.set_global_allow(list.shared());
        }
        changed
    }

    /// Replaces the whole allowlist (replay's `--allowlist`).
    pub fn set_allowlist(&self, list: crate::allowlist::AllowList) {
        let mut kept = self.allowlist.lock().unwrap_or_else(|p| p.into_inner());
        self.set_global_allow(list.shared());
        *kept = list;
    }

    /// The allowlist entries as typed.
    pub fn allowlist(&self) -> crate::allowlist::AllowList {
        self.allowlist.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the allowlist that applies to every rule (`crate::allowlist`).
    fn set_global_allow(&self, allow: crate::allowlist::SharedAllow) {
        let mut global = self.global_allow.write().unwrap_or_else(|p| p.into_inner());
        self.global_allow_set.store(!allow.is_empty(), Ordering::Release);
        *global = allow;
    }

    /// Books a decision read from the decisions topic (see
    /// [`DecisionBook::apply`]); `false` when `payload` is not a decision.
    pub fn book_published(&self, payload: &[u8]) -> bool {
        match crate::decision::Active::from_published(payload) {
            Some(a) => {
                self.book.apply(a);
                true
            }
            None => false,
        }
    }

    /// While `on`, attempts change windows, quotas and memory but book and
    /// publish nothing: a restore rebuilds state from attempts, and what is
    /// in force comes from the decisions topic alone.
    pub fn set_restoring(&self, on: bool) {
        self.restoring.store(on, Ordering::Release);
    }

    /// Decisions in force at the engine's event time.
    pub fn decisions_in_force(&self) -> Vec<crate::decision::Active> {
        self.book.in_force(self.clock.now_ms())
    }

    /// The decision in force on a subject at the engine's event time, if any.
    pub fn in_force_on(
        &self,
        scope: KeyName,
        subject: &str,
        mode: crate::rules::Mode,
    ) -> Option<crate::decision::Active> {
        self.book.in_force_on(scope, subject, mode, self.clock.now_ms())
    }

    /// The `release` decision to publish for `subject`, whether this
    /// instance remembers a decision on it or not: the decisions topic, not
    /// this instance's memory, is the record (a permanent freeze older than
    /// the restore lookback, a decision another instance made, a release
    /// whose publication failed and is tried again). It lifts nothing here:
    /// the book takes the release once it is published
    /// ([`Engine::book_published`]), as every other instance does. The id is
    /// deterministic for the subject and the engine's event time.
    pub fn release(&self, scope: KeyName, subject: &str, mode: crate::rules::Mode) -> Decision {
        let now = self.clock.now_ms();
        let lifted = self.book.in_force_on(scope, subject, mode, now);
        let rule: Arc<str> = lifted.as_ref().map_or_else(|| Arc::from("admin"), |l| l.rule.clone());
        let reason = match &lifted {
            Some(l) => format!(
                "{} of {} {} lifted by an operator through the admin API",
                l.action.as_str(),
                scope.as_str(),
                subject
            ),
            None => format!(
                "{} {} released by an operator through the admin API (no decision on it in this instance's memory)",
                scope.as_str(),
                subject
            ),
        };
        let evidence = match &lifted {
            Some(l) => json!({ "released_action": l.action.as_str(), "released_rule": &*l.rule }),
            None => json!({}),
        };
        Decision {
            decision_id: decision_id("release", &rule, scope, subject, now, "admin"),
            decided_at: String::new(),
            event_ts: format_ts(now),
            action: crate::rules::Action::Release,
            scope,
            subject: subject.to_string(),
            until: None,
            rule,
            rule_version: "admin".into(),
            mode,
            score: 0,
            reason,
            evidence,
            trigger_event_id: "admin".into(),
            sample_event_ids: Vec::new(),
        }
    }

    fn evaluate(
        &self,
        rule: &CompiledRule,
        state: &RuleState,
        e: &Event,
        keys: &Keys,
        facts: &Facts,
    ) -> Option<Decision> {
        match (&rule.kind, state) {
            (
                CompiledKind::Threshold {
                    group_by,
                    aggregate,
                    window_ms,
                    bucket_ms,
                    threshold,
                },
                state,
            ) => {
                let key = keys.get(*group_by)?;
                let bucket = e.ts_ms.div_euclid(*bucket_ms);
                let limits = Limits::new(aggregate, *threshold);
                let stale = self.clock.now_ms() - self.window_idle_ms(*window_ms);
                let (value, samples) = match (aggregate, state) {
                    (CompiledAggregate::Count | CompiledAggregate::SumFaceValue, RuleState::Sums(store)) => {
                        let amount = match aggregate {
                            CompiledAggregate::SumFaceValue => e.card.face_value_fen?,
                            _ => 1,
                        };
                        store.with(key, stale, Default::default, |w| {
                            w.observe(e, limits, |s| s.add(bucket, amount))
                        })?
                    }
                    (CompiledAggregate::Distinct(of), RuleState::Distincts(store)) => {
                        let value = keys.get(*of)?;
                        let cap = (*threshold).min(10_000) as usize;
                        store.with_new(
                            key,
                            stale,
                            || DistinctKey::first(e, value, *threshold),
                            |k, fresh| k.observe(fresh, e, value, (limits, *window_ms, cap)),
                        )??
                    }
                    _ => return None,
                };
                let samples = samples?;
                self.decide(rule, e, keys, facts, |subject| {
                    let group_subject = group_subject(rule, *group_by, subject, e, keys, facts);
                    let (shown, limit) = match aggregate {
                        CompiledAggregate::SumFaceValue => (yuan(value), yuan(*threshold)),
                        _ => (value.to_string(), threshold.to_string()),
                    };
                    let reason = format!(
                        "{shown} {} {} {} {group_subject} in {} (threshold {limit})",
                        rule.noun,
                        preposition(*group_by),
                        group_by.as_str().replace('_', " "),
                        human_secs(window_ms / 1000)
                    );
                    let evidence = json!({
                        "aggregate": match aggregate {
                            CompiledAggregate::Count => "count".to_string(),
                            CompiledAggregate::SumFaceValue => "sum_face_value".to_string(),
                            CompiledAggregate::Distinct(of) => format!("distinct {}", of.as_str()),
                        },
                        "value": value,
                        "threshold": threshold,
                        "window_secs": window_ms / 1000,
                        "group_by": group_by.as_str(),
                        "key": group_subject,
                    });
                    (reason, evidence, samples.iter().map(|s| s.to_string()).collect())
                })
            }
            (
                CompiledKind::Quota {
                    group_by,
                    limit,
                    period_secs,
                    burst,
                },
                RuleState::Quota(quota),
            ) => {
                let key = keys.get(*group_by)?;
                if quota.check(key) {
                    return None;
                }
                self.decide(rule, e, keys, facts, |subject| {
                    let group_subject = group_subject(rule, *group_by, subject, e, keys, facts);
                    let reason = format!(
                        "{} {group_subject} is over its quota of {limit} {} per {} (burst {burst})",
                        group_by.as_str().replace('_', " "),
                        rule.noun,
                        human_secs(*period_secs as i64)
                    );
                    let evidence = json!({
                        "limit": limit.get(),
                        "period_secs": period_secs,
                        "burst": burst.get(),
                        "group_by": group_by.as_str(),
                        "key": group_subject,
                    });
                    (reason, evidence, Vec::new())
                })
            }
            (CompiledKind::Match, _) => self.decide(rule, e, keys, facts, |_| {
                let (said, evidence) = rule.filter.explain(e, facts);
                let what = match e.kind {
                    Kind::Activation => "activation",
                    Kind::Redemption => "redemption",
                };
                let mut reason = format!("{what} by account {}", e.account.id);
                if !said.is_empty() {
                    reason.push_str(": ");
                    reason.push_str(&said.join(", "));
                }
                (reason, Value::Object(evidence), Vec::new())
            }),
            _ => None,
        }
    }

    /// The decision `rule` makes on `e`, if the book admits it (no decision
    /// of the rule active on the subject, or this one is stronger or
    /// longer). `explain` gives the reason, the evidence and the sample ids
    /// from the subject; it runs only for an admitted decision, since most
    /// attempts that reach a threshold find their subject already decided.
    fn decide(
        &self,
        rule: &CompiledRule,
        e: &Event,
        keys: &Keys,
        facts: &Facts,
        explain: impl FnOnce(&str) -> (String, Value, Vec<String>),
    ) -> Option<Decision> {
        if self.restoring.load(Ordering::Acquire) {
            return None;
        }
        let subject = subject(rule.scope, e, keys, facts)?;
        let until_ms = rule.duration_ms.map_or(i64::MAX, |d| e.ts_ms.saturating_add(d));
        if !self.book.admit(
            (rule.scope, &subject, rule.mode),
            &rule.id,
            rule.action,
            until_ms,
            e.ts_ms,
        ) {
            return None;
        }
        let (reason, mut evidence, samples) = explain(&subject);
        if let Value::Object(map) = &mut evidence {
            map.insert("outcome".into(), json!(e.outcome));
        }
        Some(Decision {
            decision_id: decision_id(&rule.id, &rule.version, rule.scope, &subject, e.ts_ms, &e.event_id),
            decided_at: String::new(),
            event_ts: format_ts(e.ts_ms),
            action: rule.action,
            scope: rule.scope,
            subject,
            until: rule.duration_ms.map(|_| format_ts(until_ms)),
            rule: rule.id.clone(),
            rule_version: rule.version.clone(),
            mode: rule.mode,
            score: rule.score,
            reason,
            evidence,
            trigger_event_id: e.event_id.to_string(),
            sample_event_ids: samples,
        })
    }

    /// What the account knows, for the rules to judge this attempt against
    /// as of its event time (see [`AccountMemory`]); a success also teaches
    /// the account its device and place, in the same lookup (one probe of
    /// the store where a read and a later update took two). What it teaches
    /// is of this attempt's own millisecond, which no question about this
    /// attempt counts as before it.
    fn recall_account(&self, e: &Event, keys: &Keys, geo: &crate::enrich::GeoFacts) -> Option<Recalled> {
        if e.outcome != Outcome::Success {
            return self
                .accounts
                .read(keys.account, self.memory_stale_ms(), |m| m.recall(keys.device, e.ts_ms));
        }
        let place = geo.location.map(|(lat, lon)| (lat as f32, lon as f32));
        self.accounts
            .with(keys.account, self.memory_stale_ms(), AccountMemory::default, |m| {
                m.learn(e.ts_ms, keys.device, place, self.lateness_ms());
                m.recall(keys.device, e.ts_ms)
            })
    }

    /// Teaches card memory a successful activation (see [`CardMemory`]).
    fn remember(&self, rules: &RuleSet, e: &Event, keys: &Keys, serves: impl Fn(KeyName) -> bool) {
        if e.outcome != Outcome::Success {
            return;
        }
        if rules.needs_card_memory && serves(KeyName::Card) && e.kind == Kind::Activation {
            let bound = match e.card.bound_account.as_deref() {
                Some(b) => key_of(b),
                None => keys.account,
            };
            self.cards.with(
                keys.card,
                self.memory_stale_ms(),
                || CardMemory {
                    bound_account: bound,
                    activated_ms: e.ts_ms,
                    last_seen_ms: e.ts_ms,
                },
                |c| c.learn(bound, e.ts_ms),
            );
        }
    }

    /// Drops idle keys once per `sweep_every_secs` of event time.
    fn maybe_sweep(&self, loaded: &Loaded) {
        let now = self.clock.now_ms();
        let next = self.next_sweep_ms.load(Ordering::Acquire);
        if next == i64::MIN {
            self.next_sweep_ms
                .store(now + self.config.sweep_every_secs as i64 * 1000, Ordering::Release);
            return;
        }
        if now < next
            || self
                .next_sweep_ms
                .compare_exchange(
                    next,
                    now + self.config.sweep_every_secs as i64 * 1000,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_err()
        {
            return;
        }
        self.sweep_loaded(loaded, now, false);
    }

    /// Evicts everything that can no longer change a decision at event time `now`.
    pub fn sweep(&self, now: i64) -> usize {
        self.sweep_loaded(&self.loaded(), now, true)
    }

    /// Evicts the keys idle past their span at event time `now`: in every
    /// store when `all`, else in the stores due this round.
    ///
    /// A stale key reads as absent whether it was swept or not
    /// ([`KeyedStore::with`]), so sweeps only give memory back, and each
    /// walks its whole store. A store is therefore swept about once per
    /// eighth of its span (a window and the lateness, or memory's TTL), and
    /// at most once per `sweep_every_secs`: a day-long window is not walked
    /// every minute for the few keys that went idle in it. The price is
    /// idle keys kept up to an eighth of their span longer. While the state
    /// holds three quarters of `max_keys` or more, every round sweeps every
    /// store, to make room before the cap refuses new keys.
    fn sweep_loaded(&self, loaded: &Loaded, now: i64, all: bool) -> usize {
        let round = self.sweep_rounds.fetch_add(1, Ordering::Relaxed);
        let crowded = self.budget.crowded();
        let every_ms = (self.config.sweep_every_secs as i64 * 1000).max(1);
        let sweep = |span_ms: i64, evict: &dyn Fn(i64) -> usize| {
            let period = (span_ms / 8 / every_ms).max(1) as u64;
            if all || crowded || round % period == 0 {
                evict(now - span_ms)
            } else {
                0
            }
        };
        let mut evicted = 0;
        for (rule, state) in loaded.rules.rules.iter().zip(&loaded.states) {
            evicted += match (state, &rule.kind) {
                (RuleState::Sums(store), CompiledKind::Threshold { window_ms, .. }) => {
                    sweep(self.window_idle_ms(*window_ms), &|h| store.evict_idle(h))
                }
                (RuleState::Distincts(store), CompiledKind::Threshold { window_ms, .. }) => {
                    sweep(self.window_idle_ms(*window_ms), &|h| store.evict_idle(h))
                }
                (RuleState::Quota(q), _) => sweep(q.idle_ms(), &|h| q.evict_idle(h)),
                _ => 0,
            };
        }
        let ttl = self.memory_ttl_ms();
        evicted += sweep(ttl, &|h| self.accounts.evict_idle(h));
        evicted += sweep(ttl, &|h| self.cards.evict_idle(h));
        evicted += self.book.expire(now);
        evicted
    }

    /// How long a key of a window of `window_ms` goes unused before it is
    /// stale: the window and the lateness.
    fn window_idle_ms(&self, window_ms: i64) -> i64 {
        window_ms + self.lateness_ms()
    }

    fn memory_ttl_ms(&self) -> i64 {
        self.config.memory_ttl_secs as i64 * 1000
    }

    /// Account and card memory last touched at or before this is forgotten.
    fn memory_stale_ms(&self) -> i64 {
        self.clock.now_ms() - self.memory_ttl_ms()
    }

    /// New keys refused at the cap, by store, since the engine started:
    /// account and card memory, the store of each rule in force (whether it
    /// refused any or not), then rules no longer in force that refused
    /// some. A rule changed on reload starts a new store; the old one's
    /// refusals stay in its count.
    pub fn cap_hits_by_store(&self) -> Vec<CapHits> {
        let loaded = self.loaded();
        let mut all: Vec<CapHits> = [self.accounts.cap_hits(), self.cards.cap_hits()]
            .into_iter()
            .chain(loaded.states.iter().filter_map(RuleState::cap_hits))
            .collect();
        for (store, hits) in self.retired_cap_hits.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            match all.iter_mut().find(|c| c.store == *store) {
                Some(c) => c.hits += hits,
                None => all.push(CapHits {
                    store: store.clone(),
                    hits: *hits,
                }),
            }
        }
        all
    }

    /// Per open geo database: lookups answered from a kept record, records decoded.
    pub fn geo_record_counts(&self) -> Vec<(&'static str, u64, u64)> {
        self.geo.record_counts()
    }

    /// Per open geo database: records found that did not decode.
    pub fn geo_failed_counts(&self) -> Vec<(&'static str, u64)> {
        self.geo.failed_counts()
    }

    /// Active decisions by scope at the engine's event time.
    pub fn active_decisions(&self) -> [(KeyName, i64); KeyName::ALL.len()] {
        self.book.counts_by_scope()
    }

    /// How late an event may arrive and still count, ms.
    pub fn lateness_ms(&self) -> i64 {
        self.config.lateness_ms()
    }

    /// How far an attempt's event time may run ahead of its receipt, ms.
    pub fn max_ahead_ms(&self) -> i64 {
        self.config.max_ahead_ms()
    }

    /// Latest event time seen, ms.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }
}

/// Whether anything at `home` could change for `e`: a rule there that the
/// attempt's own fields could pass (facts are not known before the home
/// looks them up), or the memory kept there (account memory learns from
/// successes, card memory from successful activations).
fn wants(rules: &RuleSet, e: &Event, home: KeyName) -> bool {
    let success = e.outcome == Outcome::Success;
    (home == KeyName::Account && rules.needs_account_memory && success)
        || (home == KeyName::Card && rules.needs_card_memory && success && e.kind == Kind::Activation)
        || rules.rules.iter().any(|r| r.home == home && r.filter.may_match(e))
}

/// A rule set may only need databases that are open.
fn check_geo(rules: &RuleSet, geo: &GeoDatabases) -> Result<(), EngineError> {
    let (have, need) = (geo.available(), rules.geo_needs);
    if (need.city && !have.city) || (need.asn && !have.asn) || (need.anonymous && !have.anonymous) {
        return Err(EngineError::MissingGeo(need));
    }
    Ok(())
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

fn new_state(rule: &CompiledRule, lateness_ms: i64, clock: &EventClock, budget: &Arc<StateBudget>) -> RuleState {
    match rule.kind {
        CompiledKind::Threshold {
            aggregate: CompiledAggregate::Distinct(_),
            ..
        } => RuleState::Distincts(KeyedStore::new(budget.clone()).named(rule.id.clone())),
        CompiledKind::Threshold { .. } => RuleState::Sums(KeyedStore::new(budget.clone()).named(rule.id.clone())),
        CompiledKind::Quota {
            limit,
            period_secs,
            burst,
            ..
        } => RuleState::Quota(KeyedQuota::new(
            limit,
            period_secs,
            burst,
            lateness_ms,
            clock.clone(),
            budget.clone(),
            &rule.id,
        )),
        CompiledKind::Match => RuleState::Stateless,
    }
}

fn preposition(k: KeyName) -> &'static str {
    match k {
        KeyName::Account => "by",
        KeyName::Card => "on",
        _ => "from",
    }
}

/// What a rule counts by (`group_by`), in its decision's words: the
/// decision's subject again when the rule decides on what it counts by.
/// The key was counted, so it is present and so is its subject.
fn group_subject(
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
fn subject(scope: KeyName, e: &Event, keys: &Keys, facts: &Facts) -> Option<String> {
    Some(match scope {
        KeyName::Card => e.card.code_hash.to_string(),
        KeyName::Account => e.account.id.to_string(),
        KeyName::Device => e.device.fingerprint.as_deref()?.to_string(),
        KeyName::Ip => e.ip?.to_string(),
        KeyName::IpPrefix => keys.ip_prefix?.1.to_string(),
        KeyName::Asn => facts.geo.asn?.to_string(),
    })
}
