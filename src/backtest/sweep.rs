//! `--sweep RULE.FIELD=FROM..TO/STEP`: one rule's setting tried at each
//! value over the same history, so an analyst sees precision, recall and
//! friction trade against each other.
//!
//! Each value is the rule files with that one setting rewritten, compiled
//! as `check-rules` would (a value the rule cannot take is refused with
//! the rule error), and run by an engine of its own over the events parsed
//! once. Not one engine pass for all values: a decision changes what the
//! engine does next (the book stops a second decision on a subject in
//! force, a breaker trips, a ladder climbs), so the count at which the
//! rule would have fired under another value cannot be read off one run.
//! The values run on as many threads as the machine has cores.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;

use super::score::{RuleScore, Subjects};
use super::Setup;
use crate::enrich::GeoNeeds;
use crate::event::Event;
use crate::rules::compile_sources;

/// Most values one sweep tries.
pub const MAX_VALUES: usize = 64;

/// Settings a sweep may vary: whole numbers, each read by some kind of rule.
pub const FIELDS: [&str; 5] = ["threshold", "window_secs", "limit", "period_secs", "burst"];

/// What to sweep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepSpec {
    pub rule: String,
    pub field: String,
    pub values: Vec<u64>,
}

impl std::str::FromStr for SweepSpec {
    type Err = String;

    /// `RULE.FIELD=FROM..TO/STEP`, the values FROM, FROM+STEP, ... up to TO.
    fn from_str(text: &str) -> Result<SweepSpec, String> {
        let form = "expected RULE.FIELD=FROM..TO/STEP, e.g. card-enumeration-by-ip.threshold=10..40/5";
        let (target, range) = text.split_once('=').ok_or(form)?;
        let (rule, field) = target.rsplit_once('.').ok_or(form)?;
        let field = if field == "window" { "window_secs" } else { field };
        if rule.is_empty() {
            return Err(format!("no rule named: {form}"));
        }
        if !FIELDS.contains(&field) {
            return Err(format!(
                "cannot sweep `{field}`: one of {} can be swept",
                FIELDS.join(", ")
            ));
        }
        let (span, step) = range.split_once('/').ok_or(form)?;
        let (from, to) = span.split_once("..").ok_or(form)?;
        let number = |what: &str, s: &str| {
            s.trim()
                .parse::<u64>()
                .map_err(|_| format!("{what} `{s}` is not a whole number: {form}"))
        };
        let (from, to, step) = (number("FROM", from)?, number("TO", to)?, number("STEP", step)?);
        if step == 0 {
            return Err("STEP must be at least 1".into());
        }
        if from > to {
            return Err(format!("FROM ({from}) is above TO ({to})"));
        }
        let count = (to - from) / step + 1;
        if count > MAX_VALUES as u64 {
            return Err(format!("{count} values; at most {MAX_VALUES} (take a larger STEP)"));
        }
        Ok(SweepSpec {
            rule: rule.to_string(),
            field: field.to_string(),
            values: (0..count).map(|i| from + i * step).collect(),
        })
    }
}

/// The sources with `rule`'s `field` set to `value`; an error names what
/// is wrong (no such rule, or a file that does not parse).
pub fn rewrite(sources: &[(PathBuf, String)], spec: &SweepSpec, value: u64) -> Result<Vec<(PathBuf, String)>, String> {
    let mut out = sources.to_vec();
    let mut found = false;
    for (path, text) in out.iter_mut() {
        let mut table: toml::Table = match text.parse() {
            Ok(t) => t,
            Err(_) => continue,
        };
        let Some(toml::Value::Array(rules)) = table.get_mut("rule") else {
            continue;
        };
        for rule in rules.iter_mut() {
            let Some(rule) = rule.as_table_mut() else { continue };
            if rule.get("id").and_then(|v| v.as_str()) != Some(spec.rule.as_str()) {
                continue;
            }
            let value = i64::try_from(value).map_err(|_| format!("{value} is too large"))?;
            rule.insert(spec.field.clone(), toml::Value::Integer(value));
            found = true;
        }
        if found {
            *text = toml::to_string(&table).map_err(|e| format!("cannot rewrite {}: {e}", path.display()))?;
            break;
        }
    }
    if !found {
        return Err(format!("no rule `{}` in the rules", spec.rule));
    }
    Ok(out)
}

/// One value's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub value: u64,
    /// The swept rule alone.
    pub rule: RuleScore,
    /// Every enforced decision of the pack at this value.
    pub pack: RuleScore,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sweep {
    pub rule: String,
    pub field: String,
    pub points: Vec<Point>,
}

/// Runs the sweep; the first error (a value the rule refuses) stops it.
pub fn sweep(
    setup: &Setup,
    sources: &[(PathBuf, String)],
    available: GeoNeeds,
    spec: &SweepSpec,
    events: &[Event],
    subjects: &Subjects,
) -> Result<Sweep, String> {
    // Every value compiles before any runs: a refused value is reported
    // before minutes are spent on the others.
    let mut sets = Vec::with_capacity(spec.values.len());
    for &value in &spec.values {
        let rewritten = rewrite(sources, spec, value)?;
        let set = compile_sources(&rewritten, available)
            .map_err(|e| format!("{}.{} = {value}: the rule refuses it:\n{e}", spec.rule, spec.field))?;
        sets.push(set);
    }
    let next = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(sets.len());
    let results: Vec<Result<Vec<(usize, Point)>, String>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(set) = sets.get(i) else { break };
                        let score = super::score_rules(setup, set, events, subjects)
                            .map_err(|e| e.to_string())?
                            .score;
                        let rule = score
                            .rules
                            .iter()
                            .find(|r| r.rule == spec.rule)
                            .cloned()
                            .ok_or_else(|| format!("rule `{}` is switched off", spec.rule))?;
                        mine.push((
                            i,
                            Point {
                                value: spec.values[i],
                                rule,
                                pack: score.pack,
                            },
                        ));
                    }
                    Ok(mine)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| Err("a sweep worker panicked".into())))
            .collect()
    });
    let mut points = Vec::new();
    for r in results {
        points.extend(r?);
    }
    points.sort_by_key(|(i, _)| *i);
    Ok(Sweep {
        rule: spec.rule.clone(),
        field: spec.field.clone(),
        points: points.into_iter().map(|(_, p)| p).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_reads_its_values() {
        let s: SweepSpec = "card-enumeration-by-ip.threshold=10..40/10".parse().expect("parses");
        assert_eq!(s.rule, "card-enumeration-by-ip");
        assert_eq!(s.field, "threshold");
        assert_eq!(s.values, [10, 20, 30, 40]);
        let s: SweepSpec = "r.window=60..100/50".parse().expect("parses");
        assert_eq!(s.field, "window_secs");
        assert_eq!(s.values, [60], "110 is past TO");
    }

    #[test]
    fn a_bad_sweep_says_why() {
        for (text, says) in [
            ("r.threshold", "expected RULE.FIELD"),
            ("r.colour=1..2/1", "cannot sweep `colour`"),
            ("r.threshold=5..1/1", "above TO"),
            ("r.threshold=1..5/0", "STEP must be"),
            ("r.threshold=1..1000/1", "at most 64"),
            ("r.threshold=a..5/1", "not a whole number"),
        ] {
            let err = text.parse::<SweepSpec>().expect_err(text);
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn a_rewrite_changes_one_setting_of_one_rule() {
        let text = "[[rule]]\nid = \"a\"\nthreshold = 5\n\n[[rule]]\nid = \"b\"\nthreshold = 5\n";
        let sources = vec![(PathBuf::from("x.toml"), text.to_string())];
        let spec: SweepSpec = "b.threshold=9..9/1".parse().expect("parses");
        let out = rewrite(&sources, &spec, 9).expect("rewrites");
        let t: toml::Table = out[0].1.parse().expect("toml");
        let rules = t["rule"].as_array().expect("rules");
        assert_eq!(rules[0]["threshold"].as_integer(), Some(5));
        assert_eq!(rules[1]["threshold"].as_integer(), Some(9));
        let spec: SweepSpec = "c.threshold=9..9/1".parse().expect("parses");
        assert!(rewrite(&sources, &spec, 9)
            .expect_err("no rule c")
            .contains("no rule `c`"));
    }
}
