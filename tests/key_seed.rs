//! State keys under a deployment's secret seed (its own test binary, so its
//! own process: the seed is set once per process).

use std::hash::BuildHasher;
use std::sync::Arc;

use kamiguard::engine::{Engine, EngineConfig};
use kamiguard::enrich::GeoDatabases;
use kamiguard::event::{parse, CodeHasher};
use kamiguard::key::{key_of, seed_keys};
use kamiguard::rules::compile_sources;

#[test]
fn a_secret_seed_changes_every_key_keeps_them_stable_and_the_decisions_the_same() {
    let public = |v: &str| kamiguard::key::key_hasher().hash_one(v);
    let values = ["fp-7a1c", "175.16.199.7", "u-88123", "2001:db8::1"];
    // Before seeding: the public seed.
    for v in values {
        assert_eq!(key_of(v), public(v));
    }

    // Rules with an allowlist, compiled before the engine sees any key;
    // decisions on generated traffic taken with the public seed.
    let rules_text = r#"[[rule]]
id = "ip-guessing"
kind = "threshold"
filter = { failed = true }
group_by = "ip"
aggregate = "count"
window_secs = 600
threshold = 5
action = "block"
score = 80
allow = { devices = ["fp-bot"] }

[[rule]]
id = "device-accounts"
kind = "threshold"
group_by = "device"
aggregate = "distinct"
distinct_of = "account"
window_secs = 86400
threshold = 5
action = "block"
score = 75
"#;
    let hasher = CodeHasher::with_key(b"deployment key");
    let lines = kamiguard::tools::generate::generate(20_000, 9, 100);
    let decide = || {
        let rules =
            Arc::new(compile_sources(&[("r.toml".into(), rules_text.into())], Default::default()).expect("rules"));
        let engine = Engine::new(rules, Arc::new(GeoDatabases::default()), EngineConfig::default()).expect("engine");
        let mut out = Vec::new();
        for l in lines.lines() {
            engine.process(&parse(l.as_bytes(), &hasher).expect("valid"), &mut out);
        }
        let mut ids: Vec<String> = out.into_iter().map(|d| d.decision_id).collect();
        ids.sort();
        ids
    };
    let unseeded = decide();
    assert!(
        unseeded.len() > 5,
        "the traffic should make decisions: {}",
        unseeded.len()
    );

    let seed = hasher.state_key_seed().expect("a key gives a seed");
    assert_eq!(
        Some(seed),
        CodeHasher::with_key(b"deployment key").state_key_seed(),
        "stable"
    );
    assert_ne!(Some(seed), CodeHasher::with_key(b"other key").state_key_seed());
    assert!(seed_keys(seed));
    for v in values {
        assert_ne!(key_of(v), public(v), "{v} hashed with the public seed");
        assert_eq!(key_of(v), key_of(v));
    }
    assert!(seed_keys(seed), "the same seed again is no change");
    assert!(!seed_keys([1, 2]), "a different seed later is refused");
    assert_eq!(key_of("fp-7a1c"), key_of("fp-7a1c"));

    // The allowlist still exempts fp-bot (compiled under the new seed) and
    // every decision is the one the public seed gave.
    assert_eq!(decide(), unseeded);
}
