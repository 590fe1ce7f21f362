//! Steps 2 to 6 joined: one validated attempt in, zero or more decisions out.
//!
//! The engine is pure in the sense the pipeline needs: it reads no clock, does
//! no I/O, and given the same events in the same order produces the same
//! decisions. Its state sits in `DashMap`s, so `process` takes `&self` and
//! partitions may share one engine.
//!
//! This file runs one attempt through the rules; each of the engine's other
//! jobs has a file of its own:
//!
//! - `kinds`: one file per kind of rule (threshold, quota, match): its
//!   state, how an attempt updates it, and how its decision is worded.
//! - `keys`: an attempt's key hashes and the subjects decisions name.
//! - `memory`: account and card memory, and the facts the rules read from it.
//! - `allow`: rule and shared allowlists.
//! - `decide`: the book's admission, the decision record, releases.
//! - `ladder`: repeat offenders, longer decisions step by step.
//! - `breaker`: circuit breakers that switch a surging rule to shadow.
//! - `links`: decisions derived for the entities linked to a frozen one.
//! - `route`: what the split pipeline routes where.
//! - `sweep`: evicting keys that can no longer change a decision.
//! - `reload`: swapping rule sets, keeping unchanged rules' state.
//! - `config`: the engine's limits and errors.

mod allow;
mod breaker;
mod config;
mod decide;
mod keys;
mod kinds;
mod ladder;
mod links;
mod memory;
mod reload;
mod route;
mod sweep;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::allowlist::{AllowList, SharedAllow};
use crate::decision::{Decision, DecisionBook};
use crate::enrich::GeoDatabases;
use crate::event::Event;
use crate::key::key_of;
use crate::rules::{KeyName, RuleSet};
use crate::state::{AccountMemory, BudgetStats, CardMemory, EventClock, KeyedStore, SeenEvents, StateBudget};

pub use breaker::OpsEvent;
pub use config::{EngineConfig, EngineError};
pub use keys::named_subject;
pub use kinds::MAX_SAMPLES;
pub use links::{LinkAction, LinksConfig};
pub use reload::Replaced;

use config::check_geo;
use keys::Keys;
use kinds::{Build, RuleState};

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
    global_allow: RwLock<SharedAllow>,
    /// The entries `global_allow` is made from, as typed.
    allowlist: Mutex<AllowList>,
    /// Whether `global_allow` has entries: while it has none (the usual
    /// case), attempts skip its lock.
    global_allow_set: AtomicBool,
    /// Home keys a split pipeline routes to; `None` when not split.
    routed_homes: RwLock<Option<Vec<KeyName>>>,
    geo: Arc<GeoDatabases>,
    accounts: KeyedStore<AccountMemory>,
    cards: KeyedStore<CardMemory>,
    book: DecisionBook,
    /// Repeat offenders' records (see `ladder`).
    offences: ladder::Offences,
    /// Links between accounts, devices and cards (see `links`).
    links: links::Links,
    /// Circuit breakers of the rules that have one (see `breaker`).
    breakers: breaker::Breakers,
    /// What the breakers did, waiting for `take_ops`; `ops_pending` says
    /// whether there is any without taking the lock.
    ops: Mutex<Vec<OpsEvent>>,
    ops_pending: AtomicBool,
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
    /// Hits of states dropped on reload (see `RuleKind::hits`), by rule id,
    /// so that a rule's count never goes back when its definition changes.
    retired_hits: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
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
/// `i`), judged for all rules at once by the rule set's [`crate::rules::FieldIndex`];
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
        config.validate()?;
        let budget = StateBudget::new(config.max_keys);
        let clock = EventClock::default();
        let build = Build {
            lateness_ms: config.lateness_ms(),
            clock: &clock,
            budget: &budget,
        };
        let states = rules.rules.iter().map(|r| RuleState::new(r, &build)).collect();
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
            // As the book's: a budget of its own, for the same reason.
            offences: KeyedStore::new(StateBudget::new(config.max_keys)).named("offences"),
            links: links::Links::new(budget.clone()),
            breakers: Default::default(),
            ops: Default::default(),
            ops_pending: AtomicBool::new(false),
            seen: SeenEvents::new(config.dedup_ms(), config.dedup_max_ids),
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
            retired_hits: Default::default(),
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
            keys: self.keys(e, keys::Wanted::by(&loaded.rules)),
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
            None => self.keys(e, keys::Wanted::by(rules)),
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
        // This attempt's own links first: a decision on it reaches the
        // partners it has just shown.
        self.learn_links(e, &keys);
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
            if let Some(d) = state.evaluate(self, rule, e, &keys, &facts) {
                // The parent goes before what it derives (none with links off).
                let at = out.len();
                self.derive_linked(&d, e, &keys, out);
                out.insert(at, d);
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
            state.prefetch(key);
        }
        if rules.needs_account_memory {
            self.accounts.prefetch(keys.account);
        }
        if rules.needs_card_memory {
            self.cards.prefetch(keys.card);
        }
    }

    /// Per honey rule in force: its id, the decoys on its list, and the
    /// attempts on them since the engine started (earlier definitions of the
    /// rule included).
    pub fn honey_counts(&self) -> Vec<(Arc<str>, usize, u64)> {
        let loaded = self.loaded();
        let retired = self.retired_hits.lock().unwrap_or_else(|p| p.into_inner());
        loaded
            .rules
            .rules
            .iter()
            .zip(&loaded.states)
            .filter_map(|(rule, state)| match &rule.kind {
                crate::rules::CompiledKind::Honey { list } => {
                    let before = retired.get(&*rule.id).copied().unwrap_or(0);
                    Some((rule.id.clone(), list.len(), before + state.hits()?))
                }
                _ => None,
            })
            .collect()
    }

    /// Per open geo database: lookups answered from a kept record, records decoded.
    pub fn geo_record_counts(&self) -> Vec<(&'static str, u64, u64)> {
        self.geo.record_counts()
    }

    /// Per open geo database: records found that did not decode.
    pub fn geo_failed_counts(&self) -> Vec<(&'static str, u64)> {
        self.geo.failed_counts()
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
