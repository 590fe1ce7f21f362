//! Step 6 of the flow: decisions (docs/contract.md, "Decisions"). Deterministic ids, the
//! book of active decisions that stops republishing, and expiry.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::key::key_of;
use crate::rules::{Action, KeyName, Mode};
use crate::state::{KeyedStore, LastSeen, StateBudget};

/// One decision, serialized in the contract's field order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub decision_id: String,
    /// Processing time; stamped by the sink that publishes or writes it.
    pub decided_at: String,
    pub event_ts: String,
    pub action: Action,
    pub scope: KeyName,
    pub subject: String,
    pub until: Option<String>,
    pub rule: Arc<str>,
    pub rule_version: Arc<str>,
    pub mode: Mode,
    pub score: u8,
    pub reason: String,
    pub evidence: Value,
    pub trigger_event_id: String,
    pub sample_event_ids: Vec<String>,
}

impl Decision {
    /// The message key: `<scope>:<subject>`.
    pub fn key(&self) -> String {
        format!("{}:{}", self.scope.as_str(), self.subject)
    }

    /// Sets `decided_at` to `now` (RFC 3339, UTC).
    pub fn stamp(&mut self, now: chrono::DateTime<chrono::Utc>) {
        self.decided_at = now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    }
}

/// The id of an episode: the same rule, version, subject and trigger always
/// give the same id, so a replayed or redelivered decision is recognisable.
pub fn decision_id(
    rule: &str,
    version: &str,
    scope: KeyName,
    subject: &str,
    trigger_ts_ms: i64,
    trigger_event_id: &str,
) -> String {
    let mut h = Sha256::new();
    for part in [
        rule,
        version,
        scope.as_str(),
        subject,
        &trigger_ts_ms.to_string(),
        trigger_event_id,
    ] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    hex::encode(&h.finalize()[..16])
}

/// The strongest active decision on one subject.
#[derive(Debug, Clone)]
pub struct Active {
    pub scope: KeyName,
    pub subject: Arc<str>,
    pub mode: Mode,
    pub action: Action,
    /// `i64::MAX`: until released.
    pub until_ms: i64,
    pub rule: Arc<str>,
    /// When it was decided (event time): of two records of one subject, the
    /// later one stands.
    pub at_ms: i64,
}

/// What the decisions topic says of one subject, as the book keeps it.
#[derive(Debug, serde::Deserialize)]
struct Published {
    scope: KeyName,
    subject: String,
    #[serde(default)]
    mode: Mode,
    action: Action,
    event_ts: String,
    until: Option<String>,
    rule: String,
    /// Taken whole, whatever its shape: a record whose evidence is odd is
    /// still a decision for the book; only its ladder step is then unknown.
    #[serde(default)]
    evidence: Option<serde_json::Value>,
}

impl Active {
    /// Whether it is in force at event time `now_ms`: not a release, not lapsed.
    pub fn in_force(&self, now_ms: i64) -> bool {
        self.until_ms > now_ms && self.action != Action::Release
    }

    /// A decision as published (the contract's JSON), as the book keeps it:
    /// a `release` lapses at its own event time. `None` for anything that is
    /// not a decision.
    pub fn from_published(payload: &[u8]) -> Option<Active> {
        Active::read_published(payload).map(|(a, _)| a)
    }

    /// [`Active::from_published`], with the ladder step the decision
    /// carries (`evidence.offence`), from one parse of the payload.
    pub fn read_published(payload: &[u8]) -> Option<(Active, Option<u32>)> {
        let p: Published = serde_json::from_slice(payload).ok()?;
        // A ladder rule's step (`engine::ladder`).
        let offence = p
            .evidence
            .as_ref()
            .and_then(|e| e.get("offence"))
            .and_then(serde_json::Value::as_u64)
            .and_then(|o| u32::try_from(o).ok());
        let at = crate::event::parse_ts_ms(&p.event_ts)?;
        let until_ms = match (p.action, &p.until) {
            (Action::Release, _) => at,
            (_, None) => i64::MAX,
            (_, Some(u)) => crate::event::parse_ts_ms(u)?,
        };
        Some(Active {
            scope: p.scope,
            subject: p.subject.into(),
            mode: p.mode,
            action: p.action,
            until_ms,
            rule: p.rule.into(),
            at_ms: at,
        })
        .map(|a| (a, offence))
    }
}

impl LastSeen for Active {
    fn last_seen_ms(&self) -> i64 {
        self.until_ms
    }
}

/// Active decisions per (scope, subject, mode). Shadow decisions are booked
/// apart so a shadow rule never silences an enforced one.
///
/// The book keeps its own count by scope as it changes, so the metrics
/// never walk it: a scrape on a book of millions would hold the shards the
/// pipeline writes to.
#[derive(Debug)]
pub struct DecisionBook {
    active: KeyedStore<Active>,
    /// Booked decisions that are not releases, by `KeyName::ALL` index:
    /// in force, or lapsed and not yet swept (`expire`).
    counts: [AtomicI64; KeyName::ALL.len()],
}

/// Whether a booked entry counts in [`DecisionBook::counts`]. `admit`'s
/// placeholder (`until_ms` of `i64::MIN`) is replaced before its lock is let go.
fn counted(a: &Active) -> bool {
    a.action != Action::Release && a.until_ms != i64::MIN
}

impl DecisionBook {
    pub fn new(budget: Arc<StateBudget>) -> DecisionBook {
        DecisionBook {
            active: KeyedStore::new(budget).named("decision book"),
            counts: Default::default(),
        }
    }

    /// Moves the count of `a`'s scope from what it was (`before`) to what it is.
    fn recount(&self, before: bool, a: &Active) {
        self.add(a.scope, i64::from(counted(a)) - i64::from(before));
    }

    fn add(&self, scope: KeyName, delta: i64) {
        if delta != 0 {
            // `KeyName::ALL` is in declaration order: the discriminant is the index.
            self.counts[scope as usize].fetch_add(delta, Ordering::Relaxed);
        }
    }

    fn key(scope: KeyName, subject: &str, mode: Mode) -> u64 {
        key_of(&(scope, subject, mode))
    }

    /// Whether a candidate from `rule` should publish at event time `now_ms`;
    /// if so it is booked. While a decision is active the same rule does not
    /// publish again; a stronger action, or the same action lasting longer
    /// from another rule, does.
    pub fn admit(
        &self,
        (scope, subject, mode): (KeyName, &str, Mode),
        rule: &Arc<str>,
        action: Action,
        until_ms: i64,
        now_ms: i64,
    ) -> bool {
        let fresh = || Active {
            scope,
            subject: subject.into(),
            mode,
            action,
            until_ms,
            rule: rule.clone(),
            at_ms: now_ms,
        };
        // The book judges expiry itself (`until_ms`): no state is stale.
        let verdict = self.active.with_new(
            Self::key(scope, subject, mode),
            i64::MIN,
            || Active {
                until_ms: i64::MIN,
                ..fresh()
            },
            |a, new| {
                let before = !new && counted(a);
                let publish = a.until_ms <= now_ms
                    || action.strength() > a.action.strength()
                    || (action.strength() == a.action.strength() && until_ms > a.until_ms && a.rule != *rule);
                if publish {
                    *a = fresh();
                }
                self.recount(before, a);
                publish
            },
        );
        // At the key cap the book cannot remember; publishing again later is
        // the safe side (the same id comes back for the same trigger).
        verdict.unwrap_or(true)
    }

    /// The decision in force on a subject at `now_ms`, if any.
    pub fn in_force_on(&self, scope: KeyName, subject: &str, mode: Mode, now_ms: i64) -> Option<Active> {
        self.active.read(Self::key(scope, subject, mode), i64::MIN, |a| {
            a.in_force(now_ms).then(|| a.clone())
        })?
    }

    /// Books what the decisions topic says of a subject, over what the book
    /// had: the topic is the record of what is in force (a restart, or a
    /// release by another instance, learns it from there).
    /// A record older than what the book holds for the subject (this
    /// instance's own decision read back after a newer one) changes nothing.
    pub fn apply(&self, a: Active) {
        self.active.with_new(
            Self::key(a.scope, &a.subject, a.mode),
            i64::MIN,
            || a.clone(),
            |kept, new| {
                let before = !new && counted(kept);
                if a.at_ms >= kept.at_ms {
                    *kept = a.clone();
                }
                self.recount(before, kept);
            },
        );
    }

    /// Every decision in force at `now_ms` (walks the whole book).
    pub fn in_force(&self, now_ms: i64) -> Vec<Active> {
        let mut all = Vec::new();
        self.active.for_each(|a| {
            if a.in_force(now_ms) {
                all.push(a.clone());
            }
        });
        all
    }

    /// Drops decisions that have lapsed by `now_ms`.
    pub fn expire(&self, now_ms: i64) -> usize {
        self.active
            .evict_idle_each(now_ms, |a| self.add(a.scope, -i64::from(counted(a))))
    }

    pub fn len(&self) -> usize {
        self.active.len()
    }

    /// Booked decisions by scope: those in force, and those lapsed since
    /// the last sweep (at most `engine.sweep_every_secs` of event time).
    /// Kept as the book changes; reading it walks nothing.
    pub fn counts_by_scope(&self) -> [(KeyName, i64); KeyName::ALL.len()] {
        KeyName::ALL.map(|k| (k, self.counts[k as usize].load(Ordering::Relaxed)))
    }

    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_and_distinct() {
        let a = decision_id("r", "v", KeyName::Ip, "1.2.3.4", 10, "e1");
        assert_eq!(a, decision_id("r", "v", KeyName::Ip, "1.2.3.4", 10, "e1"));
        assert_ne!(a, decision_id("r", "v", KeyName::Ip, "1.2.3.4", 11, "e1"));
        assert_eq!(a.len(), 32);
    }

    /// A device blocked for a day by one rule and for a week by another:
    /// what is published depends on which fires first, and both orders are
    /// what the contract says. This is why the engine takes attempts in
    /// event-time order (`kafka::order`): then "first" is the same everywhere.
    #[test]
    fn a_longer_block_follows_a_shorter_one_but_not_the_other_way_round() {
        let day: Arc<str> = Arc::from("distributed-guessing");
        let week: Arc<str> = Arc::from("device-farm");
        let subject = (KeyName::Device, "fp-1", Mode::Enforce);
        let book = DecisionBook::new(StateBudget::new(100));
        assert!(book.admit(subject, &day, Action::Block, 86_400_000, 0));
        assert!(
            book.admit(subject, &week, Action::Block, 7 * 86_400_000, 10),
            "a later until from another rule"
        );
        let book = DecisionBook::new(StateBudget::new(100));
        assert!(book.admit(subject, &week, Action::Block, 7 * 86_400_000, 0));
        assert!(
            !book.admit(subject, &day, Action::Block, 86_400_000, 10),
            "neither stronger nor later"
        );
    }

    /// The counts the metrics read follow the book through admits,
    /// re-admits, a release read from the topic and the sweep.
    #[test]
    fn counts_by_scope_follow_the_book_as_it_changes() {
        let book = DecisionBook::new(StateBudget::new(100));
        let rule: Arc<str> = Arc::from("r");
        // Event times of 2026, as the topic carries them.
        let t = |ms: i64| 1_795_000_000_000 + ms;
        let count = |scope| {
            book.counts_by_scope()
                .iter()
                .find(|(k, _)| *k == scope)
                .map(|(_, n)| *n)
        };
        for ip in ["10.0.0.1", "10.0.0.2"] {
            assert!(book.admit((KeyName::Ip, ip, Mode::Enforce), &rule, Action::Block, t(1_000), t(0)));
        }
        assert!(book.admit(
            (KeyName::Account, "u-1", Mode::Shadow),
            &rule,
            Action::Review,
            t(5_000),
            t(0)
        ));
        // Another rule's longer block replaces the entry: no new count.
        let other: Arc<str> = Arc::from("other");
        assert!(book.admit(
            (KeyName::Ip, "10.0.0.1", Mode::Enforce),
            &other,
            Action::Block,
            t(2_000),
            t(10)
        ));
        assert_eq!((count(KeyName::Ip), count(KeyName::Account)), (Some(2), Some(1)));
        let release = format!(
            r#"{{"scope":"ip","subject":"10.0.0.2","action":"release","event_ts":"{}","until":null,"rule":"admin"}}"#,
            crate::event::format_ts(t(500))
        );
        book.apply(Active::from_published(release.as_bytes()).expect("a decision"));
        assert_eq!(count(KeyName::Ip), Some(1), "a release lifts the count");
        book.expire(t(3_000));
        assert_eq!((count(KeyName::Ip), count(KeyName::Account)), (Some(0), Some(1)));
        book.expire(t(6_000));
        assert!(book.counts_by_scope().iter().all(|(_, n)| *n == 0));
    }

    #[test]
    fn active_decision_is_not_republished_but_escalation_is() {
        let book = DecisionBook::new(StateBudget::new(100));
        let r1: Arc<str> = "r1".into();
        let r2: Arc<str> = "r2".into();
        assert!(book.admit((KeyName::Account, "u", Mode::Enforce), &r1, Action::Challenge, 1000, 0));
        assert!(
            !book.admit((KeyName::Account, "u", Mode::Enforce), &r1, Action::Challenge, 2000, 10),
            "same rule while active"
        );
        assert!(
            !book.admit((KeyName::Account, "u", Mode::Enforce), &r2, Action::Review, 5000, 10),
            "weaker action"
        );
        assert!(
            book.admit((KeyName::Account, "u", Mode::Enforce), &r2, Action::Challenge, 5000, 10),
            "same action, later until"
        );
        assert!(
            book.admit((KeyName::Account, "u", Mode::Enforce), &r1, Action::Freeze, 3000, 20),
            "stronger action"
        );
        assert!(
            book.admit((KeyName::Account, "u", Mode::Shadow), &r1, Action::Challenge, 3000, 20),
            "shadow is booked apart"
        );
        assert!(
            book.admit(
                (KeyName::Account, "u", Mode::Enforce),
                &r1,
                Action::Challenge,
                9000,
                3000
            ),
            "lapsed"
        );
    }
}
