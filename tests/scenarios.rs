//! The golden scenario folders under tests/scenarios, run with the shipped
//! rule pack and the fixture geo databases, through the same runner as
//! `kamiguard test-rules`.

mod common;

use std::sync::Arc;

use kamiguard::engine::EngineConfig;
use kamiguard::event::CodeHasher;
use kamiguard::rules::load_rules;
use kamiguard::scenario::{run_scenario, scenario_dirs};

#[test]
fn every_scenario_passes_with_the_shipped_rules() {
    let (_dir, _config, geo) = common::fixture_geo();
    let rules =
        Arc::new(load_rules(&common::root().join("config/rules"), geo.available()).expect("shipped rules load"));
    let dirs = scenario_dirs(&common::root().join("tests/scenarios")).expect("scenario folders");
    let mut failures = String::new();
    for d in &dirs {
        let report = run_scenario(
            d,
            Some(&rules),
            &geo,
            &EngineConfig::default(),
            &CodeHasher::without_key(),
        );
        if !report.passed() {
            failures.push_str(&report.render());
        }
    }
    assert!(failures.is_empty(), "scenario failures:\n{failures}");
}

#[test]
fn every_shipped_rule_has_an_attack_and_a_legit_scenario() {
    let (_dir, _config, geo) = common::fixture_geo();
    let rules = load_rules(&common::root().join("config/rules"), geo.available()).expect("shipped rules load");
    let scenarios = common::root().join("tests/scenarios");
    for rule in &rules.rules {
        // corporate-bulk-review is the review half of bulk-drain: its attack
        // is bulk-drain-legit. The three honey rules fire together, on one
        // attempt: one scenario shows them.
        let attack = match &*rule.id {
            "corporate-bulk-review" => "bulk-drain-legit".to_string(),
            id if id.starts_with("honey-code-") => "honey-code".to_string(),
            "batch-failure-surge" => "batch-alarm".to_string(),
            id => id.to_string(),
        };
        let expected = std::fs::read_to_string(scenarios.join(&attack).join("expected.jsonl")).unwrap_or_default();
        assert!(
            expected.contains(&format!("\"rule\":\"{}\"", rule.id)),
            "no scenario where {} fires",
            rule.id
        );
        let legit = scenarios.join(format!("{}-legit", attack.trim_end_matches("-legit")));
        assert!(
            legit.join("events.jsonl").is_file(),
            "no look-alike scenario for {}",
            rule.id
        );
    }
}

#[test]
fn a_scenario_with_a_wrong_expectation_fails_with_a_diff() {
    let (_dir, _config, geo) = common::fixture_geo();
    let rules =
        Arc::new(load_rules(&common::root().join("config/rules"), geo.available()).expect("shipped rules load"));
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = common::root().join("tests/scenarios/single-ip-guessing");
    std::fs::copy(src.join("events.jsonl"), tmp.path().join("events.jsonl")).expect("copy");
    std::fs::write(
        tmp.path().join("expected.jsonl"),
        "{\"rule\":\"single-ip-guessing\",\"subject\":\"10.9.9.9\"}\n",
    )
    .expect("write");
    let report = run_scenario(
        tmp.path(),
        Some(&rules),
        &geo,
        &EngineConfig::default(),
        &CodeHasher::without_key(),
    );
    assert!(!report.passed());
    let text = report.render();
    assert!(
        text.contains("  - {\"rule\":\"single-ip-guessing\",\"subject\":\"10.9.9.9\"}"),
        "{text}"
    );
    assert!(
        text.contains("  + {") && text.contains("\"subject\":\"175.16.199.7\""),
        "{text}"
    );
}
