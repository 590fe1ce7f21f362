//! What an edit would change: the same history through the candidate rules
//! and a baseline, compared subject by subject within each rule.
//!
//! Per rule, each subject's strongest action in either run is compared: a
//! subject only the candidate acts on *appears*, one only the baseline acts
//! on *disappears*, one both act on with another strongest action
//! *changes*. How often a subject is decided (episodes) is not compared:
//! an analyst asks who is affected, not how many records say so.

use std::collections::BTreeMap;

use serde::Serialize;

use super::score::{class_of, Class, Made, Subjects};
use crate::rules::{Action, KeyName};

/// Sample event ids kept per change.
const SAMPLES: usize = 3;

/// One subject's change under one rule.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub kind: Kind,
    pub scope: KeyName,
    pub subject: String,
    /// The baseline's strongest action; `None`: it did not act.
    pub from: Option<Action>,
    /// The candidate's; `None`: it does not act.
    pub to: Option<Action>,
    pub class: Class,
    /// Attempts the decisions were made on (trigger first).
    pub sample_event_ids: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Appears,
    Disappears,
    Changes,
}

/// One rule's changes and their one-line verdicts.
#[derive(Debug, Clone, Serialize)]
pub struct RuleDiff {
    pub rule: String,
    pub verdicts: Vec<String>,
    pub changes: Vec<Change>,
}

/// What one run did to one subject under one rule.
struct Acted {
    action: Action,
    class: Class,
    samples: Vec<String>,
}

fn acted(made: &[Made], touched: &[Vec<usize>], subjects: &Subjects) -> BTreeMap<(String, KeyName, String), Acted> {
    let mut out: BTreeMap<(String, KeyName, String), Acted> = BTreeMap::new();
    for (m, touched) in made.iter().zip(touched) {
        let d = &m.decision;
        if d.action == Action::Release {
            continue;
        }
        let class = class_of(subjects, touched);
        let entry = out
            .entry((d.rule.to_string(), d.scope, d.subject.clone()))
            .or_insert_with(|| Acted {
                action: d.action,
                class,
                samples: Vec::new(),
            });
        entry.action = entry.action.max(d.action);
        // Fraud over legit over unlabeled, as a decision is classed.
        entry.class = match (entry.class, class) {
            (Class::Fraud, _) | (_, Class::Fraud) => Class::Fraud,
            (Class::Legit, _) | (_, Class::Legit) => Class::Legit,
            _ => Class::Unlabeled,
        };
        for id in std::iter::once(&d.trigger_event_id).chain(&d.sample_event_ids) {
            if entry.samples.len() < SAMPLES && !entry.samples.contains(id) {
                entry.samples.push(id.clone());
            }
        }
    }
    out
}

/// The changes from `baseline` to `candidate`, by rule (rules with none left out).
pub fn diff(
    baseline: (&[Made], &[Vec<usize>]),
    candidate: (&[Made], &[Vec<usize>]),
    subjects: &Subjects,
) -> Vec<RuleDiff> {
    let before = acted(baseline.0, baseline.1, subjects);
    let after = acted(candidate.0, candidate.1, subjects);
    let mut by_rule: BTreeMap<String, Vec<Change>> = BTreeMap::new();
    let keys: std::collections::BTreeSet<_> = before.keys().chain(after.keys()).collect();
    for key in keys {
        let (b, a) = (before.get(key), after.get(key));
        let kind = match (b, a) {
            (None, Some(_)) => Kind::Appears,
            (Some(_), None) => Kind::Disappears,
            (Some(b), Some(a)) if b.action != a.action => Kind::Changes,
            _ => continue,
        };
        let (rule, scope, subject) = key;
        let shown = a.or(b).expect("one of the two acted");
        let class = match (b.map(|x| x.class), a.map(|x| x.class)) {
            (Some(Class::Fraud), _) | (_, Some(Class::Fraud)) => Class::Fraud,
            (Some(Class::Legit), _) | (_, Some(Class::Legit)) => Class::Legit,
            _ => Class::Unlabeled,
        };
        by_rule.entry(rule.clone()).or_default().push(Change {
            kind,
            scope: *scope,
            subject: subject.clone(),
            from: b.map(|x| x.action),
            to: a.map(|x| x.action),
            class,
            sample_event_ids: shown.samples.clone(),
        });
    }
    by_rule
        .into_iter()
        .map(|(rule, changes)| RuleDiff {
            verdicts: verdicts(&changes),
            rule,
            changes,
        })
        .collect()
}

/// One line per kind of change, action and scope: "would newly challenge
/// 41 accounts: 38 fraud, 1 legit, 2 unlabeled".
pub fn verdicts(changes: &[Change]) -> Vec<String> {
    // (kind, from, to, scope) -> subjects that are fraud, legit, unlabeled.
    type Group = (Kind, Option<Action>, Option<Action>, KeyName);
    let mut groups: BTreeMap<Group, [u64; 3]> = BTreeMap::new();
    for c in changes {
        let n = groups.entry((c.kind, c.from, c.to, c.scope)).or_default();
        n[match c.class {
            Class::Fraud => 0,
            Class::Legit => 1,
            Class::Unlabeled => 2,
        }] += 1;
    }
    groups
        .into_iter()
        .map(|((kind, from, to, scope), [fraud, legit, unlabeled])| {
            let total = fraud + legit + unlabeled;
            let verb = |a: Option<Action>| a.map_or("act on", |a| a.as_str());
            let what = match kind {
                Kind::Appears => format!("would newly {}", verb(to)),
                Kind::Disappears => format!("would no longer {}", verb(from)),
                Kind::Changes => format!("would {} instead of {}", verb(to), verb(from)),
            };
            format!(
                "{what} {total} {}: {fraud} fraud, {legit} legit, {unlabeled} unlabeled",
                plural(scope, total)
            )
        })
        .collect()
}

fn plural(scope: KeyName, n: u64) -> String {
    let word = match scope {
        KeyName::Card => "card",
        KeyName::Account => "account",
        KeyName::Device => "device",
        KeyName::Ip => "address",
        KeyName::IpPrefix => "address range",
        KeyName::Asn => "network",
        KeyName::Batch => "batch",
        KeyName::Brand => "brand",
    };
    match (n, scope) {
        (1, _) => word.into(),
        (_, KeyName::Ip) => "addresses".into(),
        (_, KeyName::Batch) => "batches".into(),
        _ => format!("{word}s"),
    }
}
