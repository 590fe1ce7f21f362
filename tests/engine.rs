//! Engine behaviour a user notices: the key cap holds and is visible,
//! redelivered events do not count twice, late events still count, and the
//! rules split by home key decide as one engine does.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use kamiguard::engine::{Engine, EngineConfig, Verdict};
use kamiguard::enrich::GeoDatabases;
use kamiguard::event::{parse, CodeHasher, Event};
use kamiguard::rules::{compile_sources, load_rules};

const RULE: &str = r#"[[rule]]
id = "ip-guessing"
kind = "threshold"
filter = { failed = true }
group_by = "ip"
aggregate = "count"
window_secs = 600
threshold = 5
action = "block"
score = 80
"#;

fn engine(max_keys: usize) -> Engine {
    engine_of(
        RULE,
        EngineConfig {
            max_keys,
            ..EngineConfig::default()
        },
    )
}

/// An engine with the rules of one TOML file and no geo databases.
fn engine_of(rules: &str, config: EngineConfig) -> Engine {
    let rules = Arc::new(compile_sources(&[("t.toml".into(), rules.into())], Default::default()).expect("rules"));
    Engine::new(rules, Arc::new(GeoDatabases::default()), config).expect("engine")
}

/// The shipped rule pack on the fixture geo databases (kept in the folder
/// returned first).
fn shipped_rules() -> (tempfile::TempDir, Arc<GeoDatabases>, Arc<kamiguard::rules::RuleSet>) {
    let (dir, _config, geo) = common::fixture_geo();
    let rules = Arc::new(load_rules(&common::root().join("config/rules"), geo.available()).expect("shipped rules"));
    (dir, geo, rules)
}

/// `count` generated attempts (100 events/s of event time), parsed.
fn generated(count: u64, seed: u64) -> Vec<Event> {
    let hasher = CodeHasher::with_key(b"engine-test-key");
    kamiguard::tools::generate::generate(count, seed, 100)
        .lines()
        .filter_map(|l| parse(l.as_bytes(), &hasher).ok())
        .collect()
}

/// The stores that refused new keys, with how many.
fn refusals(engine: &Engine) -> Vec<(String, u64)> {
    engine
        .cap_hits_by_store()
        .into_iter()
        .filter(|c| c.hits > 0)
        .map(|c| (c.store, c.hits))
        .collect()
}

fn attempt(id: &str, second: u32, ip: &str) -> Event {
    let line = format!(
        r#"{{"event_id":"{id}","ts":"2026-11-22T10:{:02}:{:02}Z","kind":"redemption","outcome":"invalid_code","card":{{"code_hash":"0011223344"}},"account":{{"id":"u"}},"ip":"{ip}"}}"#,
        second / 60,
        second % 60
    );
    parse(line.as_bytes(), &CodeHasher::without_key()).expect("valid")
}

#[test]
fn a_flood_of_random_addresses_stays_under_the_cap_and_is_counted() {
    let engine = engine(1_000);
    let mut out = Vec::new();
    for i in 0..20_000u32 {
        // one attacker address tracked from the start, hidden in the flood
        let ip = if i % 500 == 0 {
            "10.9.9.9".to_string()
        } else {
            std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string()
        };
        engine.process(&attempt(&format!("f-{i}"), i / 10, &ip), &mut out);
    }
    let stats = engine.stats().state;
    assert!(stats.live_keys <= 1_000, "{stats:?}");
    assert!(stats.cap_hits > 10_000, "{stats:?}");
    assert!(stats.evicted > 0, "idle keys are swept: {stats:?}");
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].subject, "10.9.9.9");
}

#[test]
fn a_redelivered_event_does_not_count_twice() {
    let engine = engine(1_000);
    let mut out = Vec::new();
    for i in 0..4 {
        let e = attempt(&format!("d-{i}"), i, "10.1.1.1");
        assert_eq!(engine.process(&e, &mut out), Verdict::Processed);
        assert_eq!(engine.process(&e, &mut out), Verdict::Duplicate);
    }
    assert!(
        out.is_empty(),
        "4 distinct failures, each delivered twice, stay under 5: {out:?}"
    );
    engine.process(&attempt("d-4", 10, "10.1.1.1"), &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].evidence["value"], 5);
    assert_eq!(engine.stats().duplicates, 4);
}

#[test]
fn a_late_event_within_the_window_still_counts() {
    let engine = engine(1_000);
    let mut out = Vec::new();
    for (i, second) in [100, 130, 160, 190].into_iter().enumerate() {
        engine.process(&attempt(&format!("l-{i}"), second, "10.2.2.2"), &mut out);
    }
    // arrives after the others but happened before them, by more than the
    // 30 s lateness: decided and counted where it belongs, and said to be late
    assert_eq!(
        engine.process(&attempt("l-late", 40, "10.2.2.2"), &mut out),
        Verdict::Late
    );
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].trigger_event_id, "l-late");
    assert_eq!(engine.stats().late, 1);
    // within the lateness: not late
    assert_eq!(
        engine.process(&attempt("l-near", 170, "10.2.2.3"), &mut out),
        Verdict::Processed
    );
    assert_eq!(engine.stats().late, 1);
}

/// What several instances do when split (`kafka::topology`): each home key's
/// rules on an engine of their own, fed only that home's copies. On the same
/// events in the same order, the union of their decisions is exactly what one
/// engine with every rule publishes, ids included.
#[test]
fn rules_split_by_home_key_decide_exactly_as_one_engine() {
    let (_dir, geo, rules) = shipped_rules();
    assert_eq!(
        rules.split_caveats(),
        Vec::<String>::new(),
        "the shipped pack splits cleanly"
    );
    let events = generated(30_000, 5);
    let json = |out: &[kamiguard::decision::Decision]| -> Vec<String> {
        let mut v: Vec<String> = out.iter().map(|d| serde_json::to_string(d).expect("json")).collect();
        v.sort();
        v
    };

    let whole = Engine::new(rules.clone(), geo.clone(), EngineConfig::default()).expect("engine");
    let mut one = Vec::new();
    for e in &events {
        whole.process(e, &mut one);
    }

    let mut split = Vec::new();
    let mut by_home = BTreeMap::new();
    let mut copies = BTreeMap::new();
    for home in rules.homes() {
        let engine = Engine::new(rules.clone(), geo.clone(), EngineConfig::default()).expect("engine");
        let before = split.len();
        let mut forwarded = 0;
        for e in &events {
            // what a router forwards to this home key: attempts that have
            // the key and that something there could count or learn from
            if !engine.route_keys(e, &[home]).is_empty() {
                engine.process_for(e, Some(home), &mut split);
                forwarded += 1;
            }
        }
        copies.insert(home.as_str(), forwarded);
        by_home.insert(home.as_str(), split.len() - before);
    }

    let rules_fired: std::collections::BTreeSet<&str> = one.iter().map(|d| &*d.rule).collect();
    assert!(
        rules_fired.len() >= 6,
        "the traffic exercises most rules: {rules_fired:?}"
    );
    assert!(
        by_home.values().filter(|n| **n > 0).count() >= 3,
        "decisions come from several homes: {by_home:?}"
    );
    assert_eq!(json(&one), json(&split));
    // routing by what could match: failures only for the address rules
    assert!(copies["ip"] < events.len() / 4, "{copies:?} of {}", events.len());
}

/// A split pipeline routes only to the home keys it started with: a reload
/// that needs another is refused, saying why, and the running rules stay.
#[test]
fn a_split_engine_refuses_rules_at_a_home_key_it_is_not_fed() {
    let engine = engine(1_000);
    engine.restrict_homes(Some(vec![kamiguard::rules::KeyName::Ip]));
    let by_device = RULE
        .replace("ip-guessing", "device-guessing")
        .replace("\"ip\"", "\"device\"");
    let rules = Arc::new(compile_sources(&[("t.toml".into(), by_device)], Default::default()).expect("rule"));
    let err = engine.replace_rules(rules).expect_err("refused");
    assert_eq!(
        err.to_string(),
        "rule `device-guessing` runs per device, but this pipeline was started without routing by device; restart it to add the device topic"
    );
    assert_eq!(&*engine.rules().rules[0].id, "ip-guessing");
}

/// Keys of a distinct rule seen once stay compact; the second attempt gives
/// them a full window without losing the first one, and an idle one is swept
/// like any window.
#[test]
fn a_key_seen_once_keeps_its_first_attempt_for_the_decision() {
    const SHARED: &str = r#"[[rule]]
id = "shared-code"
kind = "threshold"
group_by = "card"
aggregate = "distinct"
distinct_of = "account"
window_secs = 600
threshold = 2
action = "freeze"
score = 80
"#;
    let engine = engine_of(SHARED, EngineConfig::default());
    let attempt = |id: &str, minute: u32, code: &str, account: &str| {
        let line = format!(
            r#"{{"event_id":"{id}","ts":"2026-11-22T{:02}:{:02}:00Z","kind":"redemption","outcome":"invalid_code","card":{{"code_hash":"{code}"}},"account":{{"id":"{account}"}}}}"#,
            10 + minute / 60,
            minute % 60
        );
        parse(line.as_bytes(), &CodeHasher::without_key()).expect("valid")
    };
    let mut out = Vec::new();
    engine.process(&attempt("s-1", 0, "c0ffee00", "u-a"), &mut out);
    engine.process(&attempt("s-2", 1, "c0ffee00", "u-a"), &mut out);
    assert!(out.is_empty(), "one account on the code: {out:?}");
    engine.process(&attempt("s-3", 2, "c0ffee00", "u-b"), &mut out);
    assert_eq!(out.len(), 1, "a second account on the code");
    assert_eq!(out[0].evidence["value"], 2);
    assert_eq!(out[0].sample_event_ids, ["s-1", "s-2"]);

    engine.process(&attempt("s-4", 3, "beef0001", "u-c"), &mut out);
    let before = engine.stats().state.live_keys;
    // an hour later both codes are idle past window and lateness
    engine.process(&attempt("s-5", 63, "beef0002", "u-d"), &mut out);
    engine.process(&attempt("s-6", 65, "beef0003", "u-d"), &mut out);
    let after = engine.stats().state;
    assert!(after.evicted >= 2, "the window and the single are swept: {after:?}");
    assert!(after.live_keys < before + 2, "{before} -> {after:?}");
}

#[test]
fn a_decision_samples_the_ten_attempts_before_its_trigger_and_a_sum_those_past_half() {
    const RULES: &str = r#"[[rule]]
id = "ip-count"
kind = "threshold"
group_by = "ip"
aggregate = "count"
window_secs = 600
threshold = 15
action = "block"
score = 80

[[rule]]
id = "account-sum"
kind = "threshold"
filter = { outcome = ["success"] }
group_by = "account"
aggregate = "sum_face_value"
window_secs = 3600
threshold = 100000
action = "review"
score = 50
"#;
    let engine = engine_of(RULES, EngineConfig::default());
    let attempt = |id: &str, second: u32, ip: &str, outcome: &str, fen: u32| {
        let line = format!(
            r#"{{"event_id":"{id}","ts":"2026-11-22T10:{:02}:{:02}Z","kind":"redemption","outcome":"{outcome}","card":{{"code_hash":"c0de{second:04}","face_value":{fen}}},"account":{{"id":"u-{ip}"}},"ip":"{ip}"}}"#,
            second / 60,
            second % 60
        );
        parse(line.as_bytes(), &CodeHasher::without_key()).expect("valid")
    };
    let mut out = Vec::new();
    // Ten attempts an address makes, then the window passes them by.
    for i in 0..10 {
        engine.process(
            &attempt(&format!("a-{i}"), i, "198.51.100.1", "invalid_code", 100),
            &mut out,
        );
    }
    for i in 0..15 {
        engine.process(
            &attempt(&format!("b-{i}"), 700 + i, "198.51.100.1", "invalid_code", 100),
            &mut out,
        );
    }
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].trigger_event_id, "b-14");
    let ten_before: Vec<String> = (4..14).map(|i| format!("b-{i}")).collect();
    assert_eq!(out[0].sample_event_ids, ten_before);

    // 290 + 100 + 100 yuan stays under half of 1,000; 200 passes it; 400 crosses.
    out.clear();
    for (i, fen) in [29_000, 10_000, 10_000, 20_000, 40_000].into_iter().enumerate() {
        engine.process(
            &attempt(&format!("s-{i}"), 900 + i as u32, "203.0.113.9", "success", fen),
            &mut out,
        );
    }
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].evidence["value"], 109_000);
    assert_eq!(out[0].sample_event_ids, ["s-3"]);
}

/// Replay prepares the next attempt (hashes its keys, judges the filters on
/// its own fields, prefetches its state) while it decides the current one:
/// that must change nothing, redeliveries included.
#[test]
fn prefetching_the_next_attempt_changes_no_decision() {
    let (_dir, geo, rules) = shipped_rules();
    let mut events = generated(20_000, 7);
    // Redeliveries, some right after the original: the prefetched attempt
    // is then the one just decided.
    for i in (0..events.len()).step_by(97).rev() {
        let copy = events[i].clone();
        events.insert(i + 1 + i % 3, copy);
    }
    let json = |out: &[kamiguard::decision::Decision]| -> Vec<String> {
        out.iter().map(|d| serde_json::to_string(d).expect("json")).collect()
    };

    let plain = Engine::new(rules.clone(), geo.clone(), EngineConfig::default()).expect("engine");
    let mut expected = Vec::new();
    let plain_verdicts: Vec<Verdict> = events.iter().map(|e| plain.process(e, &mut expected)).collect();

    let ahead = Engine::new(rules, geo, EngineConfig::default()).expect("engine");
    let mut got = Vec::new();
    let mut prepared: Vec<_> = events.iter().map(|e| ahead.prepare(e)).take(1).collect();
    let ahead_verdicts: Vec<Verdict> = events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            // The next attempt is prepared before this one is decided, as replay does.
            prepared.extend(events.get(i + 1).map(|n| ahead.prepare(n)));
            ahead.process_prepared(e, &prepared[i], &mut got)
        })
        .collect();

    assert!(expected.len() > 50, "the traffic makes decisions: {}", expected.len());
    assert!(plain_verdicts.contains(&Verdict::Duplicate));
    assert_eq!(ahead_verdicts, plain_verdicts);
    assert_eq!(json(&got), json(&expected));
    assert_eq!(ahead.stats(), plain.stats());
}

/// What `prepare` judged of an attempt under one rule set is not applied
/// under the next: rules reloaded between preparing an attempt and deciding
/// it decide it as they now read.
#[test]
fn an_attempt_prepared_before_a_reload_is_decided_by_the_new_rules() {
    let match_rule = |kind: &str| {
        let toml = format!(
            "[[rule]]\nid = \"watch\"\nkind = \"match\"\nfilter = {{ kind = [\"{kind}\"] }}\naction = \"review\"\nscore = 10\n"
        );
        Arc::new(compile_sources(&[("t.toml".into(), toml)], Default::default()).expect("rules"))
    };
    let engine = Engine::new(
        match_rule("activation"),
        Arc::new(GeoDatabases::default()),
        EngineConfig::default(),
    )
    .expect("engine");
    let (first, second) = (attempt("a-1", 0, "10.0.0.1"), attempt("a-2", 1, "10.0.0.2"));
    let mut out = Vec::new();

    // Under the first rules a redemption passes no filter; the first attempt
    // is decided under them.
    let prepared = engine.prepare(&first);
    engine.process_prepared(&first, &prepared, &mut out);
    assert!(out.is_empty(), "{out:?}");

    // The second is prepared under the first rules, decided under the new.
    let prepared = engine.prepare(&second);
    engine.replace_rules(match_rule("redemption")).expect("reload");
    engine.process_prepared(&second, &prepared, &mut out);
    assert_eq!(out.len(), 1, "the reloaded rule reviews the redemption: {out:?}");
    assert_eq!(out[0].trigger_event_id, "a-2");
}

#[test]
fn a_rule_by_address_prefix_counts_a_whole_subnet_even_after_a_reload_adds_it() {
    let by_prefix = Arc::new(
        compile_sources(
            &[(
                "p.toml".into(),
                RULE.replace("ip-guessing", "subnet-guessing")
                    .replace("\"ip\"", "\"ip_prefix\""),
            )],
            Default::default(),
        )
        .expect("rules"),
    );
    // Five failures from five addresses of one /24, and one from another /24.
    let attempts: Vec<Event> = (1..=5)
        .map(|i| attempt(&format!("p-{i}"), i, &format!("10.0.7.{i}")))
        .chain([attempt("p-6", 6, "10.0.8.1")])
        .collect();

    // Straight, and prepared one attempt ahead under a rule set without the
    // prefix rule that a reload then replaces.
    let straight = engine_of(
        &RULE
            .replace("ip-guessing", "subnet-guessing")
            .replace("\"ip\"", "\"ip_prefix\""),
        EngineConfig::default(),
    );
    let reloaded = engine(1_000);
    let mut out = Vec::new();
    for e in &attempts[..4] {
        straight.process(e, &mut out);
        reloaded.process(e, &mut out);
    }
    assert!(out.is_empty(), "four failures, by address or by subnet: {out:?}");
    let prepared = reloaded.prepare(&attempts[4]);
    reloaded.replace_rules(by_prefix).expect("reload");
    straight.process(&attempts[4], &mut out);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(
        (out[0].subject.as_str(), out[0].trigger_event_id.as_str()),
        ("10.0.7.0/24", "p-5")
    );

    // The reloaded rule starts empty: its first attempt counts one, from
    // the subnet, though it was prepared before the rule existed.
    out.clear();
    reloaded.process_prepared(&attempts[4], &prepared, &mut out);
    assert!(out.is_empty(), "{out:?}");
    for i in 6..=9 {
        reloaded.process(&attempt(&format!("q-{i}"), i, &format!("10.0.7.{i}")), &mut out);
    }
    assert_eq!(out.len(), 1, "five from the subnet since the reload: {out:?}");
    assert_eq!(out[0].subject, "10.0.7.0/24");
    assert_eq!(out[0].evidence["value"], 5);
}

/// An idle key reads as absent from the moment a sweep could evict it,
/// swept or not: when sweeps run changes memory, never a decision. One
/// engine sweeps every store every ten attempts, the other never; the
/// traffic is slow (two attempts a second, over five and a half hours of
/// event time), so windows of ten minutes and an hour, the quota and a
/// half-hour memory all go idle and come back many times.
#[test]
fn when_idle_keys_are_swept_changes_no_decision() {
    let (_dir, geo, rules) = shipped_rules();
    let hasher = CodeHasher::with_key(b"engine-test-key");
    let events: Vec<Event> = kamiguard::tools::generate::generate(40_000, 11, 2)
        .lines()
        .filter_map(|l| parse(l.as_bytes(), &hasher).ok())
        .collect();
    let config = |sweep_every_secs| EngineConfig {
        memory_ttl_secs: 1800,
        sweep_every_secs,
        ..EngineConfig::default()
    };
    let decide = |engine: &Engine, sweep_each: Option<usize>| {
        let mut out = Vec::new();
        for (i, e) in events.iter().enumerate() {
            engine.process(e, &mut out);
            if sweep_each.is_some_and(|n| i % n == 0) {
                engine.sweep(engine.now_ms());
            }
        }
        out.iter()
            .map(|d| serde_json::to_string(d).expect("json"))
            .collect::<Vec<_>>()
    };

    let swept = Engine::new(rules.clone(), geo.clone(), config(1)).expect("engine");
    let kept = Engine::new(rules, geo, config(u32::MAX as u64)).expect("engine");
    let (swept_out, kept_out) = (decide(&swept, Some(10)), decide(&kept, None));

    assert!(kept_out.len() > 50, "the traffic makes decisions: {}", kept_out.len());
    assert!(
        swept.stats().state.evicted > 10_000,
        "the swept engine evicted {}",
        swept.stats().state.evicted
    );
    assert_eq!(kept.stats().state.evicted, 0);
    assert!(kept.stats().state.live_keys > swept.stats().state.live_keys);
    assert_eq!(swept_out, kept_out);
}

/// An attacker who floods one store with fresh keys (rotating addresses
/// here) fills the key budget; the budget must not then blind every other
/// rule. Past three quarters of the cap a store holding more than its share
/// stops growing, so the quota still sees a new account draining cards.
#[test]
fn a_flood_of_random_addresses_does_not_blind_the_per_account_quota() {
    let rules = format!(
        "{RULE}\n{}",
        r#"[[rule]]
id = "quota"
kind = "quota"
filter = { outcome = ["success"] }
group_by = "account"
limit = 10
period_secs = 3600
burst = 10
action = "challenge"
score = 40
"#
    );
    let engine = engine_of(
        &rules,
        EngineConfig {
            max_keys: 1_000,
            ..EngineConfig::default()
        },
    );
    let mut out = Vec::new();
    for i in 0..5_000u32 {
        let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string();
        engine.process(&attempt(&format!("f-{i}"), i / 100, &ip), &mut out);
    }
    let stats = engine.stats().state;
    assert!(stats.cap_hits > 3_000, "{stats:?}");
    // The refusals are pinned on the flooded rule's store.
    assert_eq!(refusals(&engine), vec![("ip-guessing".to_string(), stats.cap_hits)]);
    // Then a new account redeems fifteen cards in a minute.
    for i in 0..15u32 {
        let line = format!(
            r#"{{"event_id":"v-{i}","ts":"2026-11-22T10:01:{i:02}Z","kind":"redemption","outcome":"success","card":{{"code_hash":"c0ffee{i:02}"}},"account":{{"id":"victim"}},"ip":"10.200.0.1"}}"#
        );
        engine.process(
            &parse(line.as_bytes(), &CodeHasher::without_key()).expect("valid"),
            &mut out,
        );
    }
    let quota: Vec<_> = out.iter().filter(|d| &*d.rule == "quota").collect();
    assert_eq!(quota.len(), 1, "{out:?}");
    assert_eq!(quota[0].subject, "victim");
    assert_eq!(quota[0].trigger_event_id, "v-10");
    assert!(engine.stats().state.live_keys <= 1_000);
}

/// Operators see which store stopped tracking new keys, in Prometheus:
/// `kamiguard_state_cap_hits_total` has a series per store, at zero from the
/// first scrape. A rule changed on reload gets a new store that counts from
/// zero; its series keeps counting on, and what the old store refused after
/// the last scrape is not lost.
#[test]
fn cap_hits_are_exported_by_store_and_survive_a_reload() {
    let quota = r#"[[rule]]
id = "quota"
kind = "quota"
group_by = "account"
limit = 10
period_secs = 3600
burst = 10
action = "challenge"
score = 40
"#;
    let engine = engine_of(
        &format!("{RULE}\n{quota}"),
        EngineConfig {
            max_keys: 100,
            ..EngineConfig::default()
        },
    );
    let metrics = kamiguard::metrics::Metrics::new();
    let series = |metrics: &kamiguard::metrics::Metrics| -> BTreeMap<String, u64> {
        let text = String::from_utf8(metrics.render()).expect("utf-8");
        text.lines()
            .filter_map(|l| l.strip_prefix("kamiguard_state_cap_hits_total{store=\""))
            .filter_map(|l| l.split_once("\"} "))
            .map(|(store, n)| (store.to_string(), n.parse().expect("a count")))
            .collect()
    };
    metrics.observe_engine(&engine);
    let zeros = [
        ("account memory", 0),
        ("card memory", 0),
        ("ip-guessing", 0),
        ("offences", 0),
        ("quota", 0),
    ];
    assert_eq!(series(&metrics), zeros.map(|(s, n)| (s.to_string(), n)).into());

    // Every attempt from a new address and a new account: the cap (100)
    // is shared by the two stores.
    let flood = |engine: &Engine, from: u32, to: u32| {
        let mut out = Vec::new();
        for i in from..to {
            let mut e = attempt(
                &format!("f-{i}"),
                i / 100,
                &std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string(),
            );
            e.account.id = format!("a-{i}").into();
            engine.process(&e, &mut out);
        }
    };
    flood(&engine, 0, 1_000);
    metrics.observe_engine(&engine);
    let first = series(&metrics);
    assert!(first["ip-guessing"] > 0 && first["quota"] > 0, "{first:?}");
    assert_eq!(first.values().sum::<u64>(), engine.stats().state.cap_hits, "{first:?}");

    // More refusals after that scrape, then a changed threshold makes a
    // new store for ip-guessing, which refuses keys of its own from zero.
    flood(&engine, 1_000, 1_500);
    let changed = RULE.replace("threshold = 5", "threshold = 6");
    let rules =
        compile_sources(&[("t.toml".into(), format!("{changed}\n{quota}"))], Default::default()).expect("rules");
    let replaced = engine.replace_rules(Arc::new(rules)).expect("reload");
    assert_eq!((replaced.kept, replaced.fresh), (1, 1));
    flood(&engine, 1_500, 2_500);
    metrics.observe_engine(&engine);
    let second = series(&metrics);
    assert!(second["ip-guessing"] > first["ip-guessing"], "{first:?} {second:?}");
    assert_eq!(
        second.values().sum::<u64>(),
        engine.stats().state.cap_hits,
        "every refusal in the series, the dropped store's last ones too: {second:?}"
    );
    // Scraping again adds nothing.
    metrics.observe_engine(&engine);
    assert_eq!(series(&metrics), second);

    // A rule taken out keeps its series, at what it refused.
    let rules = compile_sources(&[("t.toml".into(), quota.to_string())], Default::default()).expect("rules");
    engine.replace_rules(Arc::new(rules)).expect("reload");
    metrics.observe_engine(&engine);
    assert_eq!(series(&metrics), second);
}

/// A guessing flood (thousands of made-up codes) must not blind the shipped
/// `code-shared-by-accounts` to a real code tried by several accounts: codes
/// that do not exist are not its business, so the flood takes none of its
/// share of the key budget (it takes `code-list-shared`'s, whose business
/// made-up codes are).
#[test]
fn a_guessing_flood_does_not_blind_the_shared_code_rule() {
    let (_dir, geo, rules) = shipped_rules();
    let engine = Engine::new(
        rules,
        geo,
        EngineConfig {
            max_keys: 1_000,
            ..EngineConfig::default()
        },
    )
    .expect("engine");
    let line = |id: &str, second: u32, outcome: &str, code: &str, account: &str, ip: &str| {
        let line = format!(
            r#"{{"event_id":"{id}","ts":"2026-11-22T10:{:02}:{:02}Z","kind":"redemption","outcome":"{outcome}","card":{{"code_hash":"{code}","brand":"xiaomi","type":"e_card","face_value":5000}},"account":{{"id":"{account}","created_at":"2024-06-01T00:00:00Z","verified":true,"country":"CN"}},"device":{{"fingerprint":"fp-{account}","platform":"android"}},"ip":"{ip}","channel":"app"}}"#,
            second / 60,
            second % 60
        );
        parse(line.as_bytes(), &CodeHasher::without_key()).expect("valid")
    };
    let mut out = Vec::new();
    for i in 0..3_000u32 {
        let code = format!("{:032x}", u128::from(i) * 0x9e37_79b9_7f4a_7c15);
        engine.process(
            &line(
                &format!("g-{i}"),
                i / 100,
                "invalid_code",
                &code,
                "u-bot",
                "198.51.100.9",
            ),
            &mut out,
        );
    }
    assert!(
        out.iter().any(|d| &*d.rule == "single-ip-guessing"),
        "the flood itself is caught by the guessing rules"
    );
    out.clear();
    let leaked = "5eaf00d5eaf00d5eaf00d5eaf00d5eaf";
    for (i, (outcome, account)) in [("success", "u-a"), ("wrong_pin", "u-b"), ("wrong_pin", "u-c")]
        .iter()
        .enumerate()
    {
        let ip = format!("175.16.199.{}", 10 + i);
        engine.process(
            &line(&format!("l-{i}"), 40 + i as u32, outcome, leaked, account, &ip),
            &mut out,
        );
    }
    let freezes: Vec<_> = out.iter().filter(|d| &*d.rule == "code-shared-by-accounts").collect();
    assert_eq!(freezes.len(), 1, "{out:#?}");
    assert_eq!(freezes[0].subject, leaked);
    // Made-up codes are `code-list-shared`'s business: the flood fills its
    // share (at this tiny budget) and no other store's.
    let refused = refusals(&engine);
    assert!(
        refused.iter().all(|(rule, _)| rule == "code-list-shared"),
        "the flood cost no other store a key: {refused:?}"
    );
}

/// The ladder survives a restart: what a subject earned is carried by the
/// decisions themselves (`evidence.offence`), so an engine that has read
/// the decisions topic (as `run` does at start, through `book_published`)
/// climbs where the one before it left off; one that has not starts again.
#[test]
fn a_repeat_offender_climbs_the_ladder_after_a_restart_from_the_decisions_topic() {
    let rules = r#"[[rule]]
id = "ip-guessing"
kind = "threshold"
filter = { failed = true }
group_by = "ip"
aggregate = "count"
window_secs = 600
threshold = 3
action = "block"
ladder_secs = [3600, 21600, 0]
repeat_within_secs = 86400
score = 80
"#;
    let hasher = CodeHasher::without_key();
    let burst = |from: i64| -> Vec<Event> {
        (0..3)
            .map(|i| {
                let ts = kamiguard::event::format_ts(1_764_000_000_000 + (from + i) * 1000);
                let line = format!(
                    r#"{{"event_id":"e-{from}-{i}","ts":"{ts}","kind":"redemption","outcome":"invalid_code","card":{{"code_hash":"abcdef01{i:04}{from:08}"}},"account":{{"id":"u-{from}"}},"ip":"203.0.113.9"}}"#
                );
                parse(line.as_bytes(), &hasher).expect("event")
            })
            .collect()
    };
    let decide = |engine: &Engine, events: &[Event]| -> Vec<kamiguard::decision::Decision> {
        let mut out = Vec::new();
        for e in events {
            engine.process(e, &mut out);
        }
        out
    };
    let config = EngineConfig::default();
    let first = engine_of(rules, config.clone());
    let d1 = decide(&first, &burst(0));
    assert_eq!(d1.len(), 1);
    assert_eq!(d1[0].evidence["offence"], 1);
    assert_eq!(d1[0].until.as_deref(), Some("2025-11-24T17:00:02.000Z"), "an hour");
    // The same process, two hours later: the second step, six hours.
    let d2 = decide(&first, &burst(7200));
    assert_eq!(d2[0].evidence["offence"], 2);
    assert!(d2[0].reason.contains("offence 2, 6h"), "{}", d2[0].reason);

    // A restart before the second burst: the new engine reads the topic.
    let restarted = engine_of(rules, config.clone());
    let published = serde_json::to_vec(&d1[0]).expect("json");
    assert!(restarted.book_published(&published));
    let again = decide(&restarted, &burst(7200));
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].evidence["offence"], 2, "climbed from the topic");
    assert_eq!(again[0].until, d2[0].until, "as the engine that never stopped");
    assert_eq!(again[0].decision_id, d2[0].decision_id);

    // Without the topic it would have started over: the record is the topic.
    let forgetful = engine_of(rules, config.clone());
    assert_eq!(decide(&forgetful, &burst(7200))[0].evidence["offence"], 1);

    // Past the ladder's end the last step holds: until released.
    let d3 = decide(&first, &burst(7200 + 7 * 3600));
    assert_eq!(d3[0].evidence["offence"], 3);
    assert_eq!(d3[0].until, None);
    // Days later the block is still in force: nothing new to publish.
    let later = decide(&first, &burst(7200 + 7 * 3600 + 2 * 86400));
    assert!(later.is_empty(), "the until-released block is still in force");
}
