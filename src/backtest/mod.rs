//! `kamiguard backtest` (README, "Backtest"): the analyst's workbench. A
//! history of attempts goes through exactly the engine replay uses, and
//! the decisions are scored against what the business learned later
//! ([`labels`]): per rule and for the pack, who was caught and missed, the
//! friction on honest subjects, how fast. With a baseline rule set it says
//! what an edit would change; with a sweep, where a threshold should sit;
//! with a report, it draws all of it on one self-contained page.
//!
//! The events are read and sorted once; each rule set (the candidate, the
//! baseline, each value of a sweep) runs its own engine over them, so a
//! sweep of N values costs N engine passes but one parse.

pub mod diff;
pub mod html;
pub mod labels;
pub mod score;
pub mod sweep;

use std::sync::Arc;

use serde::Serialize;

use crate::engine::{Engine, EngineConfig, EngineError};
use crate::enrich::GeoDatabases;
use crate::event::Event;
use crate::rules::RuleSet;
use score::{Made, Score, Subjects};

/// Runs `events` (in event-time order) through `engine`; every decision with
/// the attempt it was made on.
pub fn run(events: &[Event], engine: &Engine) -> Vec<Made> {
    let mut made = Vec::new();
    crate::replay::decide_each(events, engine, |at, _, out| {
        made.extend(out.drain(..).map(|decision| Made { at, decision }));
    });
    made
}

/// What the engine needs besides the rules.
#[derive(Clone)]
pub struct Setup {
    pub geo: Arc<GeoDatabases>,
    pub config: EngineConfig,
}

impl Setup {
    pub fn engine(&self, rules: &RuleSet) -> Result<Engine, EngineError> {
        Engine::new(Arc::new(rules.clone()), self.geo.clone(), self.config.clone())
    }
}

/// The rule ids of a set in file order.
pub fn rule_ids(rules: &RuleSet) -> Vec<String> {
    rules.rules.iter().map(|r| r.id.to_string()).collect()
}

/// Everything a backtest found, as `--json` prints it and the report draws it.
#[derive(Debug, Serialize)]
pub struct Report {
    pub events_file: String,
    pub labels_file: String,
    pub rules: String,
    /// Lines of the events file refused (as replay counts them).
    pub rejected_lines: u64,
    pub score: Score,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Baseline>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sweep: Option<sweep::Sweep>,
}

/// The same history through the rules in use today.
#[derive(Debug, Serialize)]
pub struct Baseline {
    pub rules: String,
    pub score: Score,
    pub diff: Vec<diff::RuleDiff>,
}

/// Scores one rule set over `events`.
/// One rule set's run over `events`: its score, its decisions, and the
/// labeled subjects each touched.
pub struct Scored {
    pub score: Score,
    pub made: Vec<Made>,
    pub touched: Vec<Vec<usize>>,
}

/// Scores one rule set over `events`.
pub fn score_rules(
    setup: &Setup,
    rules: &RuleSet,
    events: &[Event],
    subjects: &Subjects,
) -> Result<Scored, EngineError> {
    let engine = setup.engine(rules)?;
    let made = run(events, &engine);
    let touched = subjects.touched_all(events, &made);
    Ok(Scored {
        score: score::score(events, subjects, &made, &touched, &rule_ids(rules)),
        made,
        touched,
    })
}

/// What `kamiguard backtest` was asked.
pub struct Inputs<'a> {
    pub events: &'a std::path::Path,
    pub labels: &'a std::path::Path,
    pub rules: &'a std::path::Path,
    pub baseline: Option<&'a std::path::Path>,
    pub sweep: Option<&'a sweep::SweepSpec>,
    pub setup: Setup,
    pub hasher: &'a crate::event::CodeHasher,
}

/// Rule files as (path, text), as `compile_sources` takes them.
fn read_sources(path: &std::path::Path) -> Result<Vec<(std::path::PathBuf, String)>, String> {
    let files = crate::rules::rule_files(path).map_err(|e| e.to_string())?;
    files
        .into_iter()
        .map(|f| {
            std::fs::read_to_string(&f)
                .map(|text| (f.clone(), text))
                .map_err(|e| format!("cannot read {}: {e}", f.display()))
        })
        .collect()
}

fn compile(
    sources: &[(std::path::PathBuf, String)],
    available: crate::enrich::GeoNeeds,
    path: &std::path::Path,
) -> Result<RuleSet, String> {
    crate::rules::compile_sources(sources, available).map_err(|e| {
        format!(
            "{e}\n{} error(s) in the rules at {}; nothing was run",
            e.0.len(),
            path.display()
        )
    })
}

/// The whole backtest: labels and events read once, each rule set run and
/// scored, the diff and the sweep if asked.
pub fn backtest(i: &Inputs) -> Result<Report, String> {
    let available = i.setup.geo.available();
    let labels = labels::Labels::load(i.labels)?;
    let sources = read_sources(i.rules)?;
    let rules = compile(&sources, available, i.rules)?;
    let baseline_rules = match i.baseline {
        Some(path) => Some(compile(&read_sources(path)?, available, path)?),
        None => None,
    };
    // A bad engine setting is reported before the events are read.
    let max_ahead_ms = i.setup.engine(&rules).map_err(|e| e.to_string())?.max_ahead_ms();
    let mut summary = crate::replay::ReplaySummary::default();
    let file = std::fs::File::open(i.events).map_err(|e| format!("cannot open {}: {e}", i.events.display()))?;
    let events = crate::replay::read_events(
        std::io::BufReader::with_capacity(1 << 20, file),
        i.hasher,
        max_ahead_ms,
        &mut summary,
        None,
    )
    .map_err(|e| format!("cannot read {}: {e}", i.events.display()))?;
    let subjects = Subjects::new(&labels, &events);
    let run = score_rules(&i.setup, &rules, &events, &subjects).map_err(|e| e.to_string())?;
    let baseline = match (&baseline_rules, i.baseline) {
        (Some(set), Some(path)) => {
            let base = score_rules(&i.setup, set, &events, &subjects).map_err(|e| e.to_string())?;
            Some(Baseline {
                rules: path.display().to_string(),
                diff: diff::diff((&base.made, &base.touched), (&run.made, &run.touched), &subjects),
                score: base.score,
            })
        }
        _ => None,
    };
    let sweep = match i.sweep {
        Some(spec) => Some(sweep::sweep(&i.setup, &sources, available, spec, &events, &subjects)?),
        None => None,
    };
    Ok(Report {
        events_file: i.events.display().to_string(),
        labels_file: i.labels.display().to_string(),
        rules: i.rules.display().to_string(),
        rejected_lines: summary.rejected_total(),
        score: run.score,
        baseline,
        sweep,
    })
}

/// The human summary `backtest` prints.
pub fn render_text(r: &Report) -> String {
    use std::fmt::Write;
    let pct = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{:.1}%", x * 100.0));
    let s = &r.score;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} attempts; labeled subjects seen: {} fraud, {} legit ({} labeled made no attempt; {} lines refused)",
        s.events, s.fraud_labeled, s.legit_labeled, s.labeled_absent, r.rejected_lines
    );
    let _ = writeln!(
        out,
        "{:<34} {:>7} {:>9} {:>8} {:>8} {:>10} {:>8} {:>8} {:>9} {:>9}",
        "rule", "mode", "decisions", "on fraud", "on legit", "unlabeled", "recall", "precis.", "legit f/b", "legit c/r"
    );
    for x in std::iter::once(&s.pack).chain(&s.rules) {
        let _ = writeln!(
            out,
            "{:<34} {:>7} {:>9} {:>8} {:>8} {:>10} {:>8} {:>8} {:>9} {:>9}",
            x.rule,
            x.mode,
            x.decisions,
            x.on_fraud,
            x.on_legit,
            x.unlabeled,
            pct(x.recall),
            pct(x.precision),
            x.hard_friction(),
            x.soft_friction()
        );
    }
    if !s.pack.missed.is_empty() {
        let _ = writeln!(
            out,
            "fraud no enforced decision touched (first by first attempt): {}",
            s.pack.missed.join(", ")
        );
    }
    let _ = writeln!(out, "by family (enforced decisions):");
    for f in &s.families {
        let actions: Vec<String> = f.by_action.iter().map(|(a, n)| format!("{a} {n}")).collect();
        let _ = writeln!(
            out,
            "  {:<28} {:?} {:>6} subjects, {:>6} touched{} {}",
            f.family,
            f.verdict,
            f.subjects,
            f.touched,
            f.recall
                .map(|x| format!(", recall {:.1}%", x * 100.0))
                .unwrap_or_default(),
            actions.join(", ")
        );
    }
    if let Some(b) = &r.baseline {
        let _ = writeln!(out, "against the baseline {}:", b.rules);
        if b.diff.is_empty() {
            let _ = writeln!(out, "  no rule would act differently on anyone");
        }
        for d in &b.diff {
            for v in &d.verdicts {
                let _ = writeln!(out, "  {}: {v}", d.rule);
            }
        }
    }
    if let Some(sw) = &r.sweep {
        let _ = writeln!(out, "sweep of {}.{}:", sw.rule, sw.field);
        let _ = writeln!(
            out,
            "  {:>8} {:>9} {:>8} {:>8} {:>9} {:>9}",
            "value", "decisions", "recall", "precis.", "legit f/b", "legit c/r"
        );
        for p in &sw.points {
            let _ = writeln!(
                out,
                "  {:>8} {:>9} {:>8} {:>8} {:>9} {:>9}",
                p.value,
                p.rule.decisions,
                pct(p.rule.recall),
                pct(p.rule.precision),
                p.rule.hard_friction(),
                p.rule.soft_friction()
            );
        }
    }
    out
}
