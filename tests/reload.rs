//! Hot reload: a broken rule file leaves the old rules working and is
//! reported; a good one changes what fires without a restart, and rules that
//! did not change keep their windows.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kamiguard::engine::{Engine, EngineConfig};
use kamiguard::enrich::GeoDatabases;
use kamiguard::enrich::GeoNeeds;
use kamiguard::event::{parse, CodeHasher, Event};
use kamiguard::metrics::Metrics;
use kamiguard::reload::Reloader;
use kamiguard::rules::load_rules;

fn rule(id: &str, group_by: &str, threshold: u32) -> String {
    let action = if group_by == "account" { "freeze" } else { "block" };
    format!(
        r#"[[rule]]
id = "{id}"
kind = "threshold"
filter = {{ failed = true }}
group_by = "{group_by}"
aggregate = "count"
window_secs = 600
threshold = {threshold}
action = "{action}"
score = 80
"#
    )
}

fn attempt(n: u32) -> Event {
    let line = format!(
        r#"{{"event_id":"e-{n}","ts":"2026-11-22T10:00:{n:02}Z","kind":"redemption","outcome":"invalid_code","card":{{"code_hash":"00aabbcc{n:02}"}},"account":{{"id":"u-1"}},"device":{{"fingerprint":"fp-1"}},"ip":"175.16.199.7"}}"#
    );
    parse(line.as_bytes(), &CodeHasher::without_key()).expect("valid")
}

/// Rules that fired on `e`.
fn fired(engine: &Engine, e: &Event) -> Vec<String> {
    let mut out = Vec::new();
    engine.process(e, &mut out);
    out.into_iter().map(|d| d.rule.to_string()).collect()
}

fn setup(dir: &Path, text: &str) -> (Arc<Engine>, Arc<Metrics>, Reloader) {
    std::fs::write(dir.join("rules.toml"), text).expect("write");
    let rules = Arc::new(load_rules(dir, GeoNeeds::default()).expect("rules"));
    let engine =
        Arc::new(Engine::new(rules, Arc::new(GeoDatabases::default()), EngineConfig::default()).expect("engine"));
    let metrics = Arc::new(Metrics::new());
    let reloader = Reloader::new(dir.to_owned(), GeoNeeds::default(), engine.clone(), metrics.clone());
    (engine, metrics, reloader)
}

#[test]
fn a_broken_file_is_refused_and_the_old_rules_keep_working() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, metrics, mut reloader) = setup(dir.path(), &rule("by-ip", "ip", 3));
    let before = engine.rules().version.clone();
    assert!(fired(&engine, &attempt(1)).is_empty());

    std::fs::write(
        dir.path().join("rules.toml"),
        rule("by-ip", "ip", 3).replace("threshold = 3", "threshold = \"three\""),
    )
    .expect("write");
    assert!(reloader.changed());
    let errors = reloader.reload().expect_err("a broken file is refused");
    assert!(
        errors.contains("rules.toml:8:13:"),
        "errors carry file:line:column: {errors}"
    );
    assert_eq!(engine.rules().version, before, "the running rules stay");
    assert_eq!(
        metrics.reloads.with_label_values(&["error"]).get(),
        1,
        "the refusal is counted"
    );
    assert!(
        !reloader.changed(),
        "a refused file is not retried until it changes again"
    );
    // Still the old rule, with its window: the third failure fires.
    assert!(fired(&engine, &attempt(2)).is_empty());
    assert_eq!(fired(&engine, &attempt(3)), ["by-ip"]);
}

#[test]
fn a_good_file_changes_what_fires_and_unchanged_rules_keep_their_windows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, metrics, mut reloader) =
        setup(dir.path(), &(rule("by-ip", "ip", 3) + &rule("by-device", "device", 3)));
    assert!(fired(&engine, &attempt(1)).is_empty());
    assert!(fired(&engine, &attempt(2)).is_empty());

    // by-ip unchanged; by-device tightened (a new version, a fresh window);
    // by-account added.
    let next = rule("by-ip", "ip", 3) + &rule("by-device", "device", 2) + &rule("by-account", "account", 1);
    std::fs::write(dir.path().join("rules.toml"), next).expect("write");
    let replaced = reloader.reload().expect("a good file is taken");
    assert_eq!((replaced.kept, replaced.fresh, replaced.dropped), (1, 2, 1));
    assert_eq!(metrics.reloads.with_label_values(&["ok"]).get(), 1);

    // by-ip had two failures before the reload: the third fires it. by-device
    // starts over (one failure, under its new threshold of 2); by-account fires
    // on its first.
    let mut got = fired(&engine, &attempt(3));
    got.sort();
    assert_eq!(got, ["by-account", "by-ip"]);
    assert_eq!(fired(&engine, &attempt(4)), ["by-device"]);
}

#[test]
fn a_change_on_disk_is_picked_up_while_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, metrics, reloader) = setup(dir.path(), &rule("by-ip", "ip", 3));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    runtime.spawn(reloader.watch(Some(Duration::from_millis(100)), shutdown));
    // Modification times can be coarse: the size changes too.
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(dir.path().join("rules.toml"), rule("by-ip-renamed", "ip", 3)).expect("write");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metrics.reloads.with_label_values(&["ok"]).get() == 0 {
        assert!(std::time::Instant::now() < deadline, "the change was never picked up");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(&*engine.rules().rules[0].id, "by-ip-renamed");
    let _ = stop.send(true);
}
