//! Reading rule files: every error in every file, as `file:line:column: message`.
//!
//! Each file is parsed with toml's recoverable parser, so several syntax
//! errors in one file are all reported; then each `[[rule]]` table is
//! deserialized on its own, so a bad rule does not hide the next one's errors.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::compile::{compile_rule, CompiledRule};
use super::errors::{line_column, Located, RuleError, RuleErrors};
use super::filter::FieldIndex;
use super::spec::RuleSpec;
use super::KeyName;
use crate::enrich::GeoNeeds;

/// A loaded, valid set of rules.
#[derive(Debug, Clone)]
pub struct RuleSet {
    /// Enabled rules, in file order (files sorted by name).
    pub rules: Vec<CompiledRule>,
    /// Ids of rules present but switched off.
    pub disabled: Vec<String>,
    /// Hash over every enabled rule's version.
    pub version: String,
    /// Databases the rules need, all of them.
    pub geo_needs: GeoNeeds,
    /// Whether any rule reads account memory.
    pub needs_account_memory: bool,
    /// Whether any rule asks whether a card is bound to another account.
    pub needs_card_memory: bool,
    /// Longest window or period of any rule, ms.
    pub longest_window_ms: i64,
    /// Databases the rules of each home key need (see [`RuleSet::homes`]).
    pub home_geo_needs: Vec<(KeyName, GeoNeeds)>,
    /// Whether any rule groups, counts or decides by `ip_prefix` (the one
    /// key that costs more to derive than to hash).
    pub uses_ip_prefix: bool,
    /// Whether any rule groups, counts or decides by a card's batch; by its brand.
    pub uses_batch: bool,
    pub uses_brand: bool,
    /// Which rules' filters an attempt's own fields pass, all rules at once
    /// (`None` past 64 rules).
    pub field_index: Option<FieldIndex>,
}

impl RuleSet {
    fn new(rules: Vec<CompiledRule>, disabled: Vec<String>) -> RuleSet {
        let mut hasher = Sha256::new();
        let mut needs = GeoNeeds::default();
        let mut longest = 0;
        for r in &rules {
            hasher.update(r.id.as_bytes());
            hasher.update(r.version.as_bytes());
            needs = needs.union(r.geo_needs);
            longest = longest.max(match r.kind {
                super::CompiledKind::Threshold { window_ms, .. } => window_ms,
                super::CompiledKind::Quota { period_ms, .. } => period_ms,
                super::CompiledKind::Surge {
                    window_ms,
                    baseline_windows,
                    ..
                } => window_ms.saturating_mul(i64::from(baseline_windows) + 1),
                super::CompiledKind::Match | super::CompiledKind::Honey { .. } => 0,
            });
        }
        let home_geo_needs = KeyName::ALL
            .into_iter()
            .map(|home| {
                let at_home = rules.iter().filter(|r| r.home == home);
                (home, at_home.fold(GeoNeeds::default(), |n, r| n.union(r.geo_needs)))
            })
            .collect();
        RuleSet {
            uses_ip_prefix: rules.iter().any(|r| r.uses(KeyName::IpPrefix)),
            uses_batch: rules.iter().any(|r| r.uses(KeyName::Batch)),
            uses_brand: rules.iter().any(|r| r.uses(KeyName::Brand)),
            field_index: FieldIndex::new(&rules.iter().map(|r| &r.filter).collect::<Vec<_>>()),
            home_geo_needs,
            needs_account_memory: rules.iter().any(|r| r.filter.needs_account_memory()),
            needs_card_memory: rules.iter().any(|r| r.filter.needs_card_memory()),
            version: hex::encode(&hasher.finalize()[..6]),
            rules,
            disabled,
            geo_needs: needs,
            longest_window_ms: longest,
        }
    }
}

impl RuleSet {
    /// The same set with only the rules whose id is in `ids` (for profiling
    /// what each rule costs); version, needs and homes recomputed.
    pub fn only(&self, ids: &[&str]) -> RuleSet {
        let kept = self.rules.iter().filter(|r| ids.contains(&&*r.id)).cloned().collect();
        RuleSet::new(kept, self.disabled.clone())
    }

    /// The honey list files the rules read, each once: hot reload watches
    /// them beside the rule files.
    pub fn honey_lists(&self) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = self
            .rules
            .iter()
            .filter_map(|r| match &r.kind {
                super::CompiledKind::Honey { list } => Some(list.path.clone()),
                _ => None,
            })
            .collect();
        paths.sort();
        paths.dedup();
        paths
    }

    /// Databases the rules at `home` need (all rules' for `None`).
    pub fn geo_needs_at(&self, home: Option<KeyName>) -> GeoNeeds {
        match home {
            None => self.geo_needs,
            Some(h) => self
                .home_geo_needs
                .iter()
                .find(|(k, _)| *k == h)
                .map_or(GeoNeeds::default(), |(_, n)| *n),
        }
    }

    /// The home keys of the rules, each once, in [`KeyName::ALL`] order.
    pub fn homes(&self) -> Vec<KeyName> {
        KeyName::ALL
            .into_iter()
            .filter(|k| self.rules.iter().any(|r| r.home == *k))
            .collect()
    }

    /// Rules that give other decisions split across instances than in one:
    /// each instance keeps a rule's state for the home keys it owns, so a rule
    /// that decides on another key, or reads memory kept under another key,
    /// sees only part of it.
    pub fn split_caveats(&self) -> Vec<String> {
        let mut caveats = Vec::new();
        for r in &self.rules {
            if r.scope != r.home {
                caveats.push(format!(
                    "rule `{}` keeps its state per {} but decides on {}: split across instances, two instances may each publish it for one {}",
                    r.id,
                    r.home.as_str(),
                    r.scope.as_str(),
                    r.scope.as_str()
                ));
            }
            if r.filter.needs_account_memory() && r.home != KeyName::Account {
                caveats.push(format!(
                    "rule `{}` reads account memory (new device, travel, country) but runs per {}: split across instances it sees no account memory and stays quiet",
                    r.id,
                    r.home.as_str()
                ));
            }
            if r.filter.needs_card_memory() && r.home != KeyName::Card {
                caveats.push(format!(
                    "rule `{}` asks whether a card is bound to another account but runs per {}: split across instances it sees no card memory and stays quiet",
                    r.id,
                    r.home.as_str()
                ));
            }
        }
        caveats
    }
}

/// Loads a rule file or every `*.toml` file in a directory (sorted by name).
/// `available` says which geo databases are open.
pub fn load_rules(path: &Path, available: GeoNeeds) -> Result<RuleSet, RuleErrors> {
    let files = rule_files(path)?;
    let mut sources = Vec::with_capacity(files.len());
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => sources.push((file, text)),
            Err(e) => {
                return Err(RuleErrors(vec![RuleError {
                    file,
                    line: 1,
                    column: 1,
                    message: format!("cannot read the file: {e}"),
                }]))
            }
        }
    }
    compile_sources(&sources, available)
}

/// The rule files under `path` (the file itself, or the directory's `*.toml`, sorted).
pub fn rule_files(path: &Path) -> Result<Vec<PathBuf>, RuleErrors> {
    let fail = |message: String| {
        RuleErrors(vec![RuleError {
            file: path.to_owned(),
            line: 1,
            column: 1,
            message,
        }])
    };
    let meta = std::fs::metadata(path).map_err(|e| fail(format!("cannot read rules: {e}")))?;
    if meta.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| fail(format!("cannot list the rules directory: {e}")))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(fail("no *.toml rule files in this directory".into()));
    }
    Ok(files)
}

/// Compiles rule sources given as (file name, text); the whole set or errors.
pub fn compile_sources(sources: &[(PathBuf, String)], available: GeoNeeds) -> Result<RuleSet, RuleErrors> {
    let mut errors = Vec::new();
    let mut rules: Vec<CompiledRule> = Vec::new();
    let mut disabled = Vec::new();
    let mut seen_ids: Vec<(String, PathBuf, usize, usize)> = Vec::new();
    let mut lists = super::compile::HoneyLists::new();
    for (file, src) in sources {
        let mut errs = Located::new(file, src);
        for (spec, table_start) in parse_file(src, &mut errs) {
            let id = spec.id.get_ref().clone();
            let (line, column) = line_column(src, spec.id.span().start);
            if let Some((_, f, l, c)) = seen_ids.iter().find(|(other, ..)| *other == id) {
                errs.at(
                    &spec.id,
                    format!("rule id `{id}` is already used at {}:{l}:{c}", f.display()),
                );
                continue;
            }
            seen_ids.push((id.clone(), file.clone(), line, column));
            // A switched-off rule is still checked, but not for databases it
            // would need: switching a geo rule off is how to run without them.
            let available = if spec.enabled {
                available
            } else {
                GeoNeeds {
                    city: true,
                    asn: true,
                    anonymous: true,
                }
            };
            let compiled = compile_rule(&spec, table_start, available, &mut lists, &mut errs);
            if !spec.enabled {
                disabled.push(id);
            } else if let Some(rule) = compiled {
                rules.push(rule);
            }
        }
        // Report in file order, whatever stage found each problem.
        errors.extend(errs.into_sorted());
    }
    if errors.is_empty() {
        Ok(RuleSet::new(rules, disabled))
    } else {
        Err(RuleErrors(errors))
    }
}

/// The `[[rule]]` tables of one file that deserialize, with their start offsets.
fn parse_file(src: &str, errs: &mut Located<'_>) -> Vec<(RuleSpec, usize)> {
    let (root, syntax) = DeTable::parse_recoverable(src);
    for e in &syntax {
        errs.toml(e);
    }
    if !syntax.is_empty() {
        return Vec::new();
    }
    let mut specs = Vec::new();
    for (key, value) in root.get_ref().iter() {
        if key.get_ref() != "rule" {
            errs.at(
                key,
                format!("unknown top-level key `{}`, expected `[[rule]]` tables", key.get_ref()),
            );
            continue;
        }
        let DeValue::Array(tables) = value.get_ref() else {
            errs.at(value, "`rule` must be written as `[[rule]]` tables".into());
            continue;
        };
        for table in tables.iter() {
            let start = table.span().start;
            match RuleSpec::deserialize(ValueDeserializer::from(table.clone())) {
                Ok(spec) => specs.push((spec, start)),
                Err(e) => errs.toml(&e),
            }
        }
    }
    if specs.is_empty() && errs.len() == 0 {
        errs.at_offset(0, "no `[[rule]]` tables in this file".into());
    }
    specs
}
