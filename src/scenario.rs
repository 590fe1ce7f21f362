//! Golden scenario folders, run by `kamiguard test-rules DIR` and by the
//! project's own tests.
//!
//! A scenario is a folder with `events.jsonl` (attempts) and `expected.jsonl`
//! (the decisions they must produce, one JSON object per line, giving only the
//! fields that matter, e.g. `{"rule":"x","action":"block","subject":"1.2.3.4"}`).
//! Every expected line must match a distinct produced decision, and every
//! produced decision must be expected: an empty `expected.jsonl` says "this
//! traffic must stay quiet". Rules come from `rules.toml` in the folder when
//! present, else from the rule set given to the runner; engine limits from
//! `engine.toml` (the keys of `[engine]`) when present, else the runner's.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::engine::{Engine, EngineConfig};
use crate::enrich::GeoDatabases;
use crate::event::CodeHasher;
use crate::replay::{read_events, run_events, ReplaySummary};
use crate::rules::{load_rules, RuleSet};

/// Fields shown for an unexpected decision in a diff.
const SHOWN_FIELDS: [&str; 6] = ["rule", "action", "scope", "subject", "mode", "trigger_event_id"];

/// How one scenario went.
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioReport {
    pub name: String,
    /// Problems running it at all (bad files, bad lines).
    pub errors: Vec<String>,
    /// Expected lines no decision matched.
    pub missing: Vec<Value>,
    /// Decisions nobody expected, as their key fields.
    pub unexpected: Vec<Value>,
    pub decisions: usize,
}

impl ScenarioReport {
    pub fn passed(&self) -> bool {
        self.errors.is_empty() && self.missing.is_empty() && self.unexpected.is_empty()
    }

    /// `ok name` or `FAIL name` with a diff: `-` expected but absent, `+`
    /// produced but not expected.
    pub fn render(&self) -> String {
        if self.passed() {
            let noun = if self.decisions == 1 { "decision" } else { "decisions" };
            return format!("ok   {} ({} {noun})\n", self.name, self.decisions);
        }
        let mut s = format!("FAIL {}\n", self.name);
        for e in &self.errors {
            s.push_str(&format!("  ! {e}\n"));
        }
        for m in &self.missing {
            s.push_str(&format!("  - {m}\n"));
        }
        for u in &self.unexpected {
            s.push_str(&format!("  + {u}\n"));
        }
        s
    }
}

/// The scenario folders under `dir` (or `dir` itself if it is one), sorted.
pub fn scenario_dirs(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    if dir.join("events.jsonl").is_file() {
        return Ok(vec![dir.to_owned()]);
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("events.jsonl").is_file())
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// Runs one scenario folder.
pub fn run_scenario(
    dir: &Path,
    default_rules: Option<&Arc<RuleSet>>,
    geo: &Arc<GeoDatabases>,
    config: &EngineConfig,
    hasher: &CodeHasher,
) -> ScenarioReport {
    let name = dir
        .file_name()
        .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned());
    let mut report = ScenarioReport {
        name,
        errors: Vec::new(),
        missing: Vec::new(),
        unexpected: Vec::new(),
        decisions: 0,
    };
    let own_rules = dir.join("rules.toml");
    let rules = if own_rules.is_file() {
        match load_rules(&own_rules, geo.available()) {
            Ok(r) => Arc::new(r),
            Err(e) => {
                report.errors.extend(e.0.iter().map(ToString::to_string));
                return report;
            }
        }
    } else if let Some(r) = default_rules {
        r.clone()
    } else {
        report
            .errors
            .push("no rules.toml in the folder and no --rules given".into());
        return report;
    };
    // A folder may set engine limits of its own (`engine.toml`, the
    // `[engine]` section's keys), e.g. to switch linked decisions on.
    let own_config = dir.join("engine.toml");
    let config = if own_config.is_file() {
        match std::fs::read_to_string(&own_config)
            .map_err(|e| e.to_string())
            .and_then(|t| toml::from_str::<EngineConfig>(&t).map_err(|e| e.to_string()))
        {
            Ok(c) => c,
            Err(e) => {
                report.errors.push(format!("{}: {e}", own_config.display()));
                return report;
            }
        }
    } else {
        config.clone()
    };
    let engine = match Engine::new(rules, geo.clone(), config) {
        Ok(e) => e,
        Err(e) => {
            report.errors.push(e.to_string());
            return report;
        }
    };
    let expected = match read_expected(&dir.join("expected.jsonl")) {
        Ok(x) => x,
        Err(e) => {
            report.errors.push(e);
            return report;
        }
    };
    let mut summary = ReplaySummary::default();
    let produced = std::fs::File::open(dir.join("events.jsonl"))
        .map(std::io::BufReader::new)
        .and_then(|input| read_events(input, hasher, engine.max_ahead_ms(), &mut summary, None))
        .and_then(|events| run_events(&events, &engine, &mut std::io::sink(), &mut summary, chrono::Utc::now));
    let produced = match produced {
        Ok(p) => p,
        Err(e) => {
            report.errors.push(format!("events.jsonl: {e}"));
            return report;
        }
    };
    for (line, message) in &summary.bad_lines {
        report.errors.push(format!("events.jsonl line {line}: {message}"));
    }
    report.decisions = produced.len();
    let produced: Vec<Value> = produced
        .iter()
        .map(|d| serde_json::to_value(d).unwrap_or(Value::Null))
        .collect();
    let mut used = vec![false; produced.len()];
    for want in expected {
        let hit = produced
            .iter()
            .enumerate()
            .position(|(i, got)| !used[i] && subset(&want, got));
        match hit {
            Some(i) => used[i] = true,
            None => report.missing.push(Value::Object(want)),
        }
    }
    for (got, used) in produced.iter().zip(used) {
        if !used {
            let shown: Map<String, Value> = SHOWN_FIELDS
                .iter()
                .filter_map(|k| got.get(*k).map(|v| ((*k).to_string(), v.clone())))
                .collect();
            report.unexpected.push(Value::Object(shown));
        }
    }
    report
}

fn read_expected(path: &Path) -> Result<Vec<Map<String, Value>>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(m)) => out.push(m),
            _ => {
                return Err(format!(
                    "{}:{}: expected one JSON object per line",
                    path.display(),
                    i + 1
                ))
            }
        }
    }
    Ok(out)
}

/// Whether every field of `want` equals the same field of `got` (recursively
/// for objects, so `{"evidence":{"value":20}}` checks one evidence field).
fn subset(want: &Map<String, Value>, got: &Value) -> bool {
    want.iter().all(|(k, w)| match (w, got.get(k)) {
        (Value::Object(wm), Some(g @ Value::Object(_))) => subset(wm, g),
        (w, Some(g)) => w == g,
        (_, None) => false,
    })
}
