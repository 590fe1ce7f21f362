//! Scoring decisions against outcome labels (README, "How a decision is
//! scored").
//!
//! A decision *touches* a labeled subject when its scope and subject are
//! the label's, or, for a label on an account, when its trigger or one of
//! its samples is that account's attempt, or when the account attempted
//! through the decision's device, address, card, batch or brand after it
//! while it was in force: an address block that stopped a fraud account
//! counts as a catch of that account, and a block of a carrier-NAT address
//! counts as friction on every honest account it then turned away. A
//! decision touching any fraud subject is *on fraud*; else, touching any
//! legit one, *on legit*; else *unlabeled* (reported, not scored).
//! Releases are not actions against anyone and are left out.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::labels::{Label, Labels, Verdict};
use crate::decision::Decision;
use crate::engine::named_subject;
use crate::event::Event;
use crate::rules::{Action, KeyName, Mode};

/// Time bins of the decisions-over-time chart.
pub const BINS: usize = 48;

/// Scopes whose subject an attempt names by itself; labels on the others
/// (`ip_prefix`, `asn`) are matched by scope and subject only.
const ATTEMPT_SCOPES: [KeyName; 6] = [
    KeyName::Account,
    KeyName::Device,
    KeyName::Ip,
    KeyName::Card,
    KeyName::Batch,
    KeyName::Brand,
];

/// A decision and the attempt it was made on (index into the events).
#[derive(Debug, Clone)]
pub struct Made {
    pub at: usize,
    pub decision: Decision,
}

/// The labeled subjects, numbered, with the attempts each made.
pub struct Subjects<'a> {
    list: Vec<(KeyName, &'a str, &'a Label)>,
    index: HashMap<(KeyName, &'a str), usize>,
    /// Each subject's attempts, as indices into the events, ascending.
    attempts: Vec<Vec<u32>>,
    /// An attempt's event id, to the labeled account that made it.
    account_of: HashMap<&'a str, usize>,
}

impl<'a> Subjects<'a> {
    pub fn new(labels: &'a Labels, events: &'a [Event]) -> Subjects<'a> {
        let list: Vec<(KeyName, &str, &Label)> = labels
            .by_subject
            .iter()
            .map(|((scope, subject), label)| (*scope, subject.as_str(), label))
            .collect();
        let index: HashMap<(KeyName, &str), usize> = list
            .iter()
            .enumerate()
            .map(|(i, (scope, subject, _))| ((*scope, *subject), i))
            .collect();
        let mut attempts = vec![Vec::new(); list.len()];
        let mut account_of = HashMap::new();
        let wanted: [bool; 6] = ATTEMPT_SCOPES.map(|s| list.iter().any(|(k, _, _)| *k == s));
        for (n, e) in events.iter().enumerate() {
            for (s, scope) in ATTEMPT_SCOPES.iter().enumerate() {
                if !wanted[s] {
                    continue;
                }
                let subject = named_subject(*scope, e);
                if let Some(i) = subject.as_deref().and_then(|v| index.get(&(*scope, v))) {
                    attempts[*i].push(n as u32);
                    if *scope == KeyName::Account {
                        account_of.insert(&*e.event_id, *i);
                    }
                }
            }
        }
        Subjects {
            list,
            index,
            attempts,
            account_of,
        }
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn label(&self, i: usize) -> &Label {
        self.list[i].2
    }

    pub fn name(&self, i: usize) -> (KeyName, &'a str) {
        (self.list[i].0, self.list[i].1)
    }

    /// Whether the subject made any attempt in the history.
    pub fn present(&self, i: usize) -> bool {
        !self.attempts[i].is_empty()
    }

    /// The labeled subjects a decision touches (see the module doc).
    pub fn touched(&self, d: &Decision) -> Vec<usize> {
        let mut out = Vec::new();
        if let Some(i) = self.index.get(&(d.scope, d.subject.as_str())) {
            out.push(*i);
        }
        for id in std::iter::once(&d.trigger_event_id).chain(&d.sample_event_ids) {
            if let Some(i) = self.account_of.get(id.as_str()) {
                if !out.contains(i) {
                    out.push(*i);
                }
            }
        }
        out
    }
}

impl Subjects<'_> {
    /// The labeled subjects each decision of one run touches: those
    /// [`Subjects::touched`] names, and, for a decision on a device, an
    /// address, a card, a batch or a brand, every labeled account that
    /// attempted through that subject after it while it was in force (it
    /// was stopped, or challenged, by it).
    pub fn touched_all(&self, events: &[Event], made: &[Made]) -> Vec<Vec<usize>> {
        let mut touched: Vec<Vec<usize>> = made.iter().map(|m| self.touched(&m.decision)).collect();
        let stops = |k: KeyName| {
            matches!(
                k,
                KeyName::Device | KeyName::Ip | KeyName::Card | KeyName::Batch | KeyName::Brand
            )
        };
        // By scope, then subject: the labeled accounts' attempts through
        // each subject some decision acted on.
        let mut after: HashMap<KeyName, HashMap<String, Vec<u32>>> = HashMap::new();
        for m in made {
            if stops(m.decision.scope) && m.decision.action != Action::Release {
                after
                    .entry(m.decision.scope)
                    .or_default()
                    .entry(m.decision.subject.clone())
                    .or_default();
            }
        }
        if after.is_empty() {
            return touched;
        }
        let scopes: Vec<KeyName> = ATTEMPT_SCOPES.into_iter().filter(|k| after.contains_key(k)).collect();
        for (n, e) in events.iter().enumerate() {
            if !self.index.contains_key(&(KeyName::Account, &*e.account.id)) {
                continue;
            }
            for scope in &scopes {
                let subject = named_subject(*scope, e);
                if let Some(list) = subject.as_deref().and_then(|v| after.get_mut(scope)?.get_mut(v)) {
                    list.push(n as u32);
                }
            }
        }
        for (t, m) in touched.iter_mut().zip(made) {
            let d = &m.decision;
            let Some(list) = after.get(&d.scope).and_then(|m| m.get(d.subject.as_str())) else {
                continue;
            };
            let until = d
                .until
                .as_deref()
                .and_then(crate::event::parse_ts_ms)
                .unwrap_or(i64::MAX);
            let start = list.partition_point(|&n| n as usize <= m.at);
            for &n in &list[start..] {
                let e = &events[n as usize];
                if e.ts_ms >= until {
                    break;
                }
                if let Some(&i) = self.index.get(&(KeyName::Account, &*e.account.id)) {
                    if !t.contains(&i) {
                        t.push(i);
                    }
                }
            }
        }
        touched
    }
}

/// How a decision's touched subjects class it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    Fraud,
    Legit,
    Unlabeled,
}

pub fn class_of(subjects: &Subjects, touched: &[usize]) -> Class {
    let verdict = |v| touched.iter().any(|i| subjects.label(*i).verdict == v);
    if verdict(Verdict::Fraud) {
        Class::Fraud
    } else if verdict(Verdict::Legit) {
        Class::Legit
    } else {
        Class::Unlabeled
    }
}

/// Median, 90th percentile and largest of some figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Spread {
    pub n: usize,
    pub median: f64,
    pub p90: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(mut values: Vec<f64>) -> Spread {
        if values.is_empty() {
            return Spread::default();
        }
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let at = |q: f64| values[((n - 1) as f64 * q).round() as usize];
        Spread {
            n,
            median: (values[(n - 1) / 2] + values[n / 2]) / 2.0,
            p90: at(0.9),
            max: values[values.len() - 1],
        }
    }
}

/// One rule's (or the pack's) score.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RuleScore {
    pub rule: String,
    /// `enforce`, `shadow`, or for the pack `pack` (enforced decisions only).
    pub mode: String,
    pub decisions: u64,
    pub on_fraud: u64,
    pub on_legit: u64,
    pub unlabeled: u64,
    /// Fraud subjects touched, of those that made an attempt.
    pub caught: u64,
    pub fraud_subjects: u64,
    pub recall: Option<f64>,
    /// Decisions on fraud of those on labeled subjects.
    pub precision: Option<f64>,
    /// Legit subjects touched, by the strongest action they received.
    pub legit_subjects: BTreeMap<String, u64>,
    /// Decisions on legit, by action.
    pub legit_decisions: BTreeMap<String, u64>,
    /// Attempts a fraud subject made up to and including the one its first
    /// decision came on.
    pub attempts_to_catch: Spread,
    /// Event time from a fraud subject's first attempt to its first decision, s.
    pub secs_to_catch: Spread,
    /// Decisions per time bin (see [`Score::bins`]).
    pub over_time: Vec<u64>,
    /// The first fraud subjects no decision touched (at most
    /// [`MISSED_SHOWN`]), as `scope:subject (family)`: where to look next.
    pub missed: Vec<String>,
}

/// Missed fraud subjects listed per rule.
pub const MISSED_SHOWN: usize = 20;

impl RuleScore {
    /// Legit subjects frozen or blocked.
    pub fn hard_friction(&self) -> u64 {
        ["freeze", "block"]
            .iter()
            .map(|a| self.legit_subjects.get(*a).copied().unwrap_or(0))
            .sum()
    }

    /// Legit subjects challenged or sent to review.
    pub fn soft_friction(&self) -> u64 {
        ["challenge", "review"]
            .iter()
            .map(|a| self.legit_subjects.get(*a).copied().unwrap_or(0))
            .sum()
    }
}

/// Recall (fraud) or friction (legit) of one family of labels.
#[derive(Debug, Clone, Serialize)]
pub struct FamilyScore {
    pub family: String,
    pub verdict: Verdict,
    /// Subjects of the family that made an attempt.
    pub subjects: u64,
    /// Of them, touched by an enforced decision.
    pub touched: u64,
    /// Fraud: touched / subjects.
    pub recall: Option<f64>,
    /// Legit: subjects by the strongest enforced action they received.
    pub by_action: BTreeMap<String, u64>,
}

/// The whole score of one history under one rule set.
#[derive(Debug, Clone, Serialize)]
pub struct Score {
    pub events: u64,
    pub fraud_labeled: u64,
    pub legit_labeled: u64,
    /// Labeled subjects that made no attempt in the history: not scored.
    pub labeled_absent: u64,
    /// Enforced decisions of every rule together.
    pub pack: RuleScore,
    pub rules: Vec<RuleScore>,
    pub families: Vec<FamilyScore>,
    /// Start of the first time bin and width of each, ms.
    pub bins: (i64, i64),
}

/// Scores `made` (every decision of one run over `events`, in order).
pub fn score(
    events: &[Event],
    subjects: &Subjects,
    made: &[Made],
    touched: &[Vec<usize>],
    rule_order: &[String],
) -> Score {
    let first = events.first().map_or(0, |e| e.ts_ms);
    let last = events.last().map_or(0, |e| e.ts_ms);
    let width = ((last - first) / BINS as i64 + 1).max(1);
    let bins = (first, width);
    let enforced: Vec<usize> = (0..made.len())
        .filter(|&i| made[i].decision.mode == Mode::Enforce)
        .collect();
    let mut pack = rule_score("pack", "pack", events, subjects, made, touched, &enforced, bins);
    pack.rule = "all rules (enforced)".into();
    let mut rules = Vec::new();
    for rule in rule_order {
        let mine: Vec<usize> = (0..made.len()).filter(|&i| &*made[i].decision.rule == rule).collect();
        let mode = match mine.first() {
            Some(&i) if mine.iter().all(|&j| made[j].decision.mode == made[i].decision.mode) => {
                made[i].decision.mode.as_str().to_string()
            }
            Some(_) => "mixed".into(),
            None => "-".into(),
        };
        rules.push(rule_score(rule, &mode, events, subjects, made, touched, &mine, bins));
    }
    let present = |i: &usize| subjects.present(*i);
    let count = |v: Verdict| {
        (0..subjects.len())
            .filter(present)
            .filter(|&i| subjects.label(i).verdict == v)
            .count() as u64
    };
    Score {
        events: events.len() as u64,
        fraud_labeled: count(Verdict::Fraud),
        legit_labeled: count(Verdict::Legit),
        labeled_absent: (0..subjects.len()).filter(|i| !present(i)).count() as u64,
        families: families(subjects, made, touched, &enforced),
        pack,
        rules,
        bins,
    }
}

#[allow(clippy::too_many_arguments)]
fn rule_score(
    rule: &str,
    mode: &str,
    events: &[Event],
    subjects: &Subjects,
    made: &[Made],
    touched: &[Vec<usize>],
    which: &[usize],
    bins: (i64, i64),
) -> RuleScore {
    let mut s = RuleScore {
        rule: rule.into(),
        mode: mode.into(),
        over_time: vec![0; BINS],
        ..RuleScore::default()
    };
    // Per subject: the first decision's attempt (fraud), the strongest action (legit).
    let mut first_catch: HashMap<usize, usize> = HashMap::new();
    let mut strongest: HashMap<usize, Action> = HashMap::new();
    for &i in which {
        let d = &made[i].decision;
        if d.action == Action::Release {
            continue;
        }
        s.decisions += 1;
        let bin = ((events[made[i].at].ts_ms - bins.0) / bins.1).clamp(0, BINS as i64 - 1);
        s.over_time[bin as usize] += 1;
        match class_of(subjects, &touched[i]) {
            Class::Fraud => s.on_fraud += 1,
            Class::Legit => {
                s.on_legit += 1;
                *s.legit_decisions.entry(d.action.as_str().into()).or_default() += 1;
            }
            Class::Unlabeled => s.unlabeled += 1,
        }
        for &t in &touched[i] {
            if !subjects.present(t) {
                continue;
            }
            match subjects.label(t).verdict {
                Verdict::Fraud => {
                    first_catch.entry(t).or_insert(made[i].at);
                }
                Verdict::Legit => {
                    let a = strongest.entry(t).or_insert(d.action);
                    *a = (*a).max(d.action);
                }
            }
        }
    }
    s.fraud_subjects = (0..subjects.len())
        .filter(|&i| subjects.present(i) && subjects.label(i).verdict == Verdict::Fraud)
        .count() as u64;
    s.caught = first_catch.len() as u64;
    let mut missed: Vec<(u32, usize)> = (0..subjects.len())
        .filter(|&i| {
            subjects.present(i) && subjects.label(i).verdict == Verdict::Fraud && !first_catch.contains_key(&i)
        })
        .map(|i| (subjects.attempts[i][0], i))
        .collect();
    missed.sort_unstable();
    s.missed = missed
        .iter()
        .take(MISSED_SHOWN)
        .map(|&(_, i)| {
            let (scope, subject) = subjects.name(i);
            format!("{}:{subject} ({})", scope.as_str(), subjects.label(i).family)
        })
        .collect();
    s.recall = (s.fraud_subjects > 0).then(|| s.caught as f64 / s.fraud_subjects as f64);
    let labeled = s.on_fraud + s.on_legit;
    s.precision = (labeled > 0).then(|| s.on_fraud as f64 / labeled as f64);
    for a in strongest.values() {
        *s.legit_subjects.entry(a.as_str().into()).or_default() += 1;
    }
    let mut attempts = Vec::new();
    let mut secs = Vec::new();
    for (&subject, &at) in &first_catch {
        let mine = &subjects.attempts[subject];
        attempts.push(mine.partition_point(|&n| n as usize <= at) as f64);
        let start = events[mine[0] as usize].ts_ms;
        secs.push(((events[at].ts_ms - start).max(0)) as f64 / 1000.0);
    }
    s.attempts_to_catch = Spread::of(attempts);
    s.secs_to_catch = Spread::of(secs);
    s
}

fn families(subjects: &Subjects, made: &[Made], touched: &[Vec<usize>], enforced: &[usize]) -> Vec<FamilyScore> {
    let mut strongest: HashMap<usize, Action> = HashMap::new();
    for &i in enforced {
        let action = made[i].decision.action;
        if action == Action::Release {
            continue;
        }
        for &t in &touched[i] {
            let a = strongest.entry(t).or_insert(action);
            *a = (*a).max(action);
        }
    }
    let mut by: BTreeMap<(Verdict, String), FamilyScore> = BTreeMap::new();
    for i in (0..subjects.len()).filter(|&i| subjects.present(i)) {
        let label = subjects.label(i);
        let f = by
            .entry((label.verdict, label.family.clone()))
            .or_insert_with(|| FamilyScore {
                family: label.family.clone(),
                verdict: label.verdict,
                subjects: 0,
                touched: 0,
                recall: None,
                by_action: BTreeMap::new(),
            });
        f.subjects += 1;
        if let Some(a) = strongest.get(&i) {
            f.touched += 1;
            *f.by_action.entry(a.as_str().into()).or_default() += 1;
        }
    }
    by.into_values()
        .map(|mut f| {
            if f.verdict == Verdict::Fraud {
                f.recall = Some(f.touched as f64 / f.subjects.max(1) as f64);
            }
            f
        })
        .collect()
}
