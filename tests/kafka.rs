//! `kamiguard run` against a real broker process (Tansu, see
//! tests/common/broker.rs): the same decisions as `replay`, dead letters with
//! their reasons, nothing lost or re-identified across SIGKILL, a clean SIGTERM.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::broker::{Broker, Reader, Record};
use common::pipeline::{by_id, replay, setup, setup_with, Processor, Setup, ATTEMPTS, DECISIONS, DLQ, KEY};
use serde_json::Value;

fn generated(count: u64, seed: u64) -> Vec<Vec<u8>> {
    kamiguard::tools::generate::generate(count, seed, 100)
        .lines()
        .map(|l| l.as_bytes().to_vec())
        .collect()
}

#[test]
fn run_gives_replays_decisions_and_dead_letters_bad_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::memory(dir.path());
    broker.create_topics(1);

    let mut lines = generated(8000, 11);
    // A 2 MiB attempt (over the event limit, and over the producer's
    // default message.max.bytes had it been dead-lettered whole), and one
    // refused message under the limit whose dead letter is over this
    // producer's 20,000 bytes: both become smaller dead letters, and every
    // attempt after them is decided and committed.
    let huge = format!(
        r#"{{"event_id":"b-huge","card":{{"code":"XM-SECRET-0002"}},"pad":"{}"}}"#,
        "x".repeat(2 << 20)
    );
    let wide = format!(
        r#"{{"event_id":"b-wide","kind":"redemption","pad":"{}"}}"#,
        "y".repeat(30_000)
    );
    let bad: [(&[u8], &str, &str); 6] = [
        (b"this is not json", "not_json", "withheld"),
        (b"\xff\xfe{}", "not_utf8", "withheld"),
        (br#"{"event_id":"b-1","kind":"redemption","outcome":"success","card":{"code":"XM-SECRET-0001"},"account":{"id":"u-1"}}"#, "missing_field", "parsed"),
        (br#"{"event_id":"b-2","ts":"2026-11-22T00:00:01Z","kind":"redemption","outcome":"success","card":{"code_hash":"ab"},"account":{"id":42}}"#, "wrong_type", "parsed"),
        (huge.as_bytes(), "too_large", "withheld"),
        (wide.as_bytes(), "missing_field", "dropped"),
    ];
    for (i, (b, _, _)) in bad.iter().enumerate() {
        lines.insert(1000 + i * 1200, b.to_vec());
    }
    let setup = setup_with(
        broker.port,
        "kg-equal",
        1,
        "[kafka.producer]\n\"message.max.bytes\" = \"20000\"\n",
    );
    let expected = replay(&setup, &lines);
    assert!(
        expected.len() > 20,
        "the traffic should make decisions: {}",
        expected.len()
    );

    broker.produce(ATTEMPTS, &lines, false);
    let run = Processor::start(&setup, "run");
    let mut decisions = broker.reader(DECISIONS, 1);
    let all = decisions.read_until(Duration::from_secs(90), |seen| seen.len() >= expected.len());
    let mut dead = broker.reader(DLQ, 1);
    dead.read_until(Duration::from_secs(30), |seen| seen.len() >= bad.len());

    assert_eq!(run.sigterm().code(), Some(0), "a clean SIGTERM exits 0");
    let log = std::fs::read_to_string(setup.dir.path().join("run.log")).expect("run log");
    assert!(
        log.contains("one attempts partition: not split"),
        "one partition: no internal topics, no extra hop"
    );
    assert!(
        all,
        "only {} of {} decisions arrived",
        decisions.seen.len(),
        expected.len()
    );
    decisions.drain(Duration::from_millis(500));
    assert_eq!(decisions.seen.len(), expected.len(), "each decision published once");
    let got = by_id(decisions.seen.iter().map(|r| r.payload.as_slice()));
    assert_eq!(got, expected, "run and replay disagree");
    for r in &decisions.seen {
        let d: Value = serde_json::from_slice(&r.payload).expect("json");
        let key = format!(
            "{}:{}",
            d["scope"].as_str().expect("scope"),
            d["subject"].as_str().expect("subject")
        );
        assert_eq!(
            r.key.as_deref(),
            Some(key.as_bytes()),
            "decision key is <scope>:<subject>"
        );
    }

    assert_eq!(dead.seen.len(), bad.len(), "every bad message is dead-lettered, once");
    for (i, (record, (payload, reason, body))) in dead.seen.iter().zip(bad).enumerate() {
        let header = |k: &str| header(record, k);
        assert_eq!(header("kamiguard.reason"), Some(reason));
        assert_eq!(header("kamiguard.source.topic"), Some(ATTEMPTS));
        assert_eq!(header("kamiguard.source.partition"), Some("0"));
        assert_eq!(
            header("kamiguard.source.offset"),
            Some((1000 + i * 1200).to_string().as_str())
        );
        assert!(header("kamiguard.error").is_some_and(|e| !e.is_empty()));
        assert_eq!(header("kamiguard.body"), Some(body), "{reason}");
        assert_eq!(header("kamiguard.bytes"), Some(payload.len().to_string().as_str()));
        let text = String::from_utf8_lossy(&record.payload);
        assert!(!text.contains("XM-SECRET"), "raw code in a dead letter: {text}");
        match body {
            "parsed" => {
                let sent: Value = serde_json::from_slice(payload).expect("json");
                let mut got: Value = serde_json::from_slice(&record.payload).expect("json");
                if let (Some(card), Some(code)) = (got["card"].as_object_mut(), sent["card"].get("code")) {
                    assert!(card.remove("code_hash").is_some(), "the code's hash stands for it");
                    assert_eq!(header("kamiguard.code"), Some("hashed"));
                    card.insert("code".into(), code.clone());
                }
                assert_eq!(got, sent, "a parsed body says what was sent, but the code");
            }
            _ => {
                assert!(record.payload.is_empty(), "{body}: no body");
                assert_eq!(header("kamiguard.digest").map(str::len), Some(64));
            }
        }
    }
    let committed = broker.committed("kg-equal", ATTEMPTS, 1);
    assert_eq!(committed, [lines.len() as i64], "SIGTERM commits everything processed");
}

/// Issue 18's measurement: one attempt stamped a year ahead made 60,000
/// attempts give 163 decisions instead of 707. Here it and a burst of 1%
/// stamped eight hours ahead of their records are dead-lettered as
/// `ts_ahead`, and `run` gives exactly the decisions of the stream without
/// them, ids included.
#[test]
fn attempts_stamped_ahead_of_their_records_are_dead_lettered_and_change_no_decision() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::memory(dir.path());
    broker.create_topics(1);
    let setup = setup(broker.port, "kg-ahead", 1);
    let (timed, clean) = common::poisoned_stream(20_000, 41);
    let expected = replay(&setup, &clean);
    assert!(
        expected.len() > 20,
        "the traffic should make decisions: {}",
        expected.len()
    );
    let poisoned = timed.len() - clean.len();

    broker.produce_timed(ATTEMPTS, &timed);
    let run = Processor::start(&setup, "run");
    let mut decisions = broker.reader(DECISIONS, 1);
    decisions.read_until(Duration::from_secs(90), |seen| seen.len() >= expected.len());
    let mut dead = broker.reader(DLQ, 1);
    dead.read_until(Duration::from_secs(30), |seen| seen.len() >= poisoned);
    wait_committed(&broker, &setup, "kg-ahead", timed.len() as i64);
    decisions.drain(Duration::from_millis(500));
    dead.drain(Duration::from_millis(200));
    let metrics = common::http(setup.http_port, "GET", "/metrics", None, None).1;
    assert_eq!(run.sigterm().code(), Some(0));

    let got = by_id(decisions.seen.iter().map(|r| r.payload.as_slice()));
    let missing: Vec<&String> = expected.keys().filter(|k| got.get(*k) != expected.get(*k)).collect();
    let extra: Vec<&String> = got.keys().filter(|k| !expected.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "the poisoned attempts changed decisions: {} of {} missing or different, {} extra",
        missing.len(),
        expected.len(),
        extra.len()
    );
    assert_eq!(dead.seen.len(), poisoned, "each poisoned attempt dead-lettered once");
    assert!(dead
        .seen
        .iter()
        .all(|r| header(r, "kamiguard.reason") == Some("ts_ahead")));
    assert!(
        metrics.contains(&format!(
            "kamiguard_rejected_events_total{{reason=\"ts_ahead\"}} {poisoned}"
        )),
        "{metrics}"
    );
}

fn header<'a>(record: &'a Record, key: &str) -> Option<&'a str> {
    record.headers.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Waits until `group` has committed at least `offset` on partition 0.
fn wait_committed(broker: &Broker, setup: &Setup, group: &str, offset: i64) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let committed = broker.committed(group, ATTEMPTS, 1)[0];
        if committed >= offset {
            return;
        }
        if Instant::now() > deadline {
            panic!("committed {committed}, not {offset}\n{}", setup.logs());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sigkill_mid_attack_loses_nothing_and_reuses_decision_ids() {
    let st = stage(Broker::memory, "kg-kill", 12_000, 5);
    let (first, second) = st.lines.split_at(st.lines.len() / 2);

    // Resumed after each kill: one record per batch (Tansu, see broker.rs).
    st.broker.produce(ATTEMPTS, first, true);
    let run = Processor::start(&st.setup, "run-1");
    st.wait_committed(first.len());
    run.sigkill();

    // The attacks straddle the kill: their first half is only in restored state.
    st.broker.produce(ATTEMPTS, second, true);
    let mut decisions = st.broker.reader(DECISIONS, 1);
    decisions.drain(Duration::from_secs(2));
    let before = decisions.seen.len();
    let run = Processor::start(&st.setup, "run-2");
    // Kill again as soon as something new is published: commits lag behind,
    // so the next run redelivers and republishes.
    decisions.read_until(Duration::from_secs(60), |seen| seen.len() > before);
    run.sigkill();

    let run = Processor::start(&st.setup, "run-3");
    st.finish(run, &mut decisions, Duration::from_secs(90), "after two SIGKILLs");
}

#[test]
fn kafka_python_produces_attempts_and_reads_decisions_and_dead_letters() {
    let python = common::root().join(".venv-interop/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/setup.sh", python.display());
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::memory(dir.path());
    broker.create_topics(1);
    let setup = setup(broker.port, "kg-interop", 1);
    let mut lines = generated(4000, 21);
    lines.push(br#"{"event_id":"py-bad","kind":"activation","card":{"code":"PY-SECRET-CODE"}}"#.to_vec());
    let expected = replay(&setup, &lines);
    let events = setup.dir.path().join("events.jsonl");

    let run = Processor::start(&setup, "run");
    let out = std::process::Command::new(&python)
        .arg(common::root().join("tests/interop/kafka_python_client.py"))
        .args(["--bootstrap", &broker.bootstrap(), "--events"])
        .arg(&events)
        .args(["--decisions", &expected.len().to_string(), "--dead-letters", "1"])
        .output()
        .expect("run kafka-python client");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(run.sigterm().code(), Some(0));

    let seen: Value = serde_json::from_slice(&out.stdout).expect("client output");
    let decisions = seen["decisions"].as_array().expect("decisions");
    let got = by_id(decisions.iter().map(|d| d["value"].as_str().expect("value").as_bytes()));
    assert_eq!(got, expected, "decisions read by kafka-python differ from replay's");
    for d in decisions {
        let v: Value = serde_json::from_str(d["value"].as_str().expect("value")).expect("json");
        assert_eq!(
            d["key"],
            format!(
                "{}:{}",
                v["scope"].as_str().expect("scope"),
                v["subject"].as_str().expect("s")
            )
        );
    }
    let dead = seen["dead_letters"].as_array().expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["headers"]["kamiguard.reason"], "missing_field");
    assert_eq!(
        dead[0]["headers"]["kamiguard.source.offset"],
        (lines.len() - 1).to_string()
    );
    assert_eq!(dead[0]["key"], "interop", "a dead letter keeps its key");
    let value = dead[0]["value"].as_str().expect("value");
    assert!(
        !value.contains("PY-SECRET-CODE") && value.contains("code_hash"),
        "{value}"
    );
}

#[test]
fn broker_restart_mid_stream_loses_nothing() {
    // SQLite storage: the broker keeps its topics and offsets over its restart.
    let mut st = stage(Broker::sqlite, "kg-broker", 8000, 9);
    let (first, second) = st.lines.split_at(st.lines.len() / 2);

    // Resumed after the broker restart: one record per batch (see broker.rs).
    st.broker.produce(ATTEMPTS, first, true);
    let run = Processor::start(&st.setup, "run");
    st.wait_committed(first.len());
    st.broker.restart();
    st.broker.produce(ATTEMPTS, second, true);

    let mut decisions = st.broker.reader(DECISIONS, 1);
    st.finish(run, &mut decisions, Duration::from_secs(90), "after a broker restart");
}

/// A broker of its own (`Broker::memory` or `Broker::sqlite`), a scratch
/// setup for `group`, generated input, and the decisions `replay` makes of it.
/// Fields drop in order: the broker stops before its folder goes.
struct Stage {
    broker: Broker,
    setup: Setup,
    group: &'static str,
    lines: Vec<Vec<u8>>,
    expected: BTreeMap<String, Value>,
    _dir: tempfile::TempDir,
}

fn stage(start: fn(&std::path::Path) -> Broker, group: &'static str, count: u64, seed: u64) -> Stage {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = start(dir.path());
    broker.create_topics(1);
    let setup = setup(broker.port, group, 1);
    let lines = generated(count, seed);
    let expected = replay(&setup, &lines);
    Stage {
        broker,
        setup,
        group,
        lines,
        expected,
        _dir: dir,
    }
}

impl Stage {
    fn wait_committed(&self, offset: usize) {
        wait_committed(&self.broker, &self.setup, self.group, offset as i64);
    }

    /// [`finish`] over all of this stage's input.
    fn finish(&self, run: Processor, decisions: &mut Reader, timeout: Duration, context: &str) {
        let total = self.lines.len();
        finish(
            run,
            decisions,
            &self.expected,
            &self.broker,
            &self.setup,
            self.group,
            total,
            timeout,
            context,
        );
    }
}

/// Reads decisions until every one replay expects has arrived (or `timeout`),
/// waits for `group` to commit all `total` input messages, stops the processor
/// with SIGTERM (it must exit 0), and asserts the decisions published, by id,
/// are exactly replay's: none missing, none under an id replay does not know,
/// each republished copy identical. `context` goes into failure messages.
#[allow(clippy::too_many_arguments)]
fn finish(
    run: Processor,
    decisions: &mut Reader,
    expected: &BTreeMap<String, Value>,
    broker: &Broker,
    setup: &Setup,
    group: &str,
    total: usize,
    timeout: Duration,
    context: &str,
) {
    let ids = |seen: &[Record]| by_id(seen.iter().map(|r| r.payload.as_slice()));
    let complete = decisions.read_until(timeout, |seen| ids(seen).len() >= expected.len());
    wait_committed(broker, setup, group, total as i64);
    assert_eq!(run.sigterm().code(), Some(0), "{context}: a clean SIGTERM exits 0");
    decisions.drain(Duration::from_millis(500));
    let got = ids(&decisions.seen);
    let missing: Vec<_> = expected.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !expected.contains_key(*k)).collect();
    assert!(
        complete && missing.is_empty(),
        "{context}: {} of {} decisions, missing {missing:?}\n{}",
        got.len(),
        expected.len(),
        setup.logs()
    );
    assert!(
        extra.is_empty(),
        "{context}: decisions under ids replay does not know: {extra:?}"
    );
    assert_eq!(&got, expected, "{context}");
}

/// An HTTP request to kamiguard's endpoint: (status, JSON body).
fn http(port: u16, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> (u16, Value) {
    let (status, text) = common::http(port, method, path, token, body);
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn wait_http(port: u16) {
    common::wait_listening(port, "kamiguard's HTTP endpoint");
}

/// `count` failed codes from `ip`, a second apart from second `from` on.
fn failures(ip: &str, from: u32, count: u32) -> Vec<Vec<u8>> {
    (from..from + count)
        .map(|i| {
            format!(
                r#"{{"event_id":"f-{ip}-{i}","ts":"{}","kind":"redemption","outcome":"invalid_code","card":{{"code_hash":"f00d{i:08x}"}},"account":{{"id":"u-guess-{i}"}},"ip":"{ip}"}}"#,
                kamiguard::event::format_ts(1_795_309_200_000 + i as i64 * 1000)
            )
            .into_bytes()
        })
        .collect()
}

/// Issue reports: after a restart the book was rebuilt from attempts, so
/// (a) a blocked and released address was in force again and 25 fresh
/// failures published nothing, and (b) with a threshold lowered before the
/// restart, the restore booked a block the topic never carried and fresh
/// failures published nothing. The book now holds what the decisions topic
/// says.
#[test]
fn after_a_restart_the_book_holds_what_the_decisions_topic_says() {
    const TOKEN: &str = "s3cret-admin-token";
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::memory(dir.path());
    broker.create_topics(1);
    let setup = setup(broker.port, "kg-book", 1);
    // Rules of our own, to lower a threshold.
    let rules = setup.dir.path().join("rules");
    std::fs::create_dir(&rules).expect("rules dir");
    for f in std::fs::read_dir(common::root().join("config/rules")).expect("rules") {
        let f = f.expect("entry").path();
        std::fs::copy(&f, rules.join(f.file_name().expect("name"))).expect("copy");
    }
    let text = std::fs::read_to_string(&setup.config).expect("config");
    let shipped = common::root().join("config/rules").display().to_string();
    std::fs::write(&setup.config, text.replace(&shipped, &rules.display().to_string())).expect("config");
    let env = [("KAMIGUARD_ADMIN_TOKEN", TOKEN)];
    let port = setup.http_port;
    let admin = setup.admin_port;
    let subject = |r: &Record| {
        let d: Value = serde_json::from_slice(&r.payload).unwrap_or_default();
        (
            d["subject"].as_str().unwrap_or_default().to_string(),
            d["action"].as_str().unwrap_or_default().to_string(),
        )
    };
    let count = |seen: &[Record], ip: &str, action: &str| {
        seen.iter()
            .filter(|r| subject(r) == (ip.to_string(), action.to_string()))
            .count()
    };
    let (a, b) = ("175.16.199.61", "175.16.199.62");

    // (a) 50 failures: a block; released through the admin API.
    broker.produce(ATTEMPTS, &failures(a, 0, 50), true);
    let run = Processor::start_with(&setup, "run-1", &env);
    wait_http(port);
    common::wait_listening(admin, "the admin API");
    let mut decisions = broker.reader(DECISIONS, 1);
    assert!(
        decisions.read_until(Duration::from_secs(60), |seen| count(seen, a, "block") == 1),
        "{}",
        setup.logs()
    );
    let release = format!(r#"{{"scope":"ip","subject":"{a}","reason":"test: block lifted"}}"#);
    let (status, body) = http(admin, "POST", "/admin/decisions/release", Some(TOKEN), Some(&release));
    assert_eq!(status, 200, "{body}");
    // (b) 30 failures, under the threshold of 50; then the threshold is
    // lowered to 20 and taken on SIGHUP (the rule starts empty).
    broker.produce(ATTEMPTS, &failures(b, 100, 30), true);
    wait_committed(&broker, &setup, "kg-book", 80);
    let pack = rules.join("10-guessing.toml");
    let text = std::fs::read_to_string(&pack).expect("pack");
    std::fs::write(&pack, text.replacen("threshold = 50", "threshold = 20", 1)).expect("pack");
    run.signal("HUP");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(run.sigterm().code(), Some(0));
    assert_eq!(count(&decisions.seen, b, "block"), 0, "nothing on b before the restart");

    // Restart, then fresh failures from both addresses.
    let run = Processor::start_with(&setup, "run-2", &env);
    wait_http(port);
    common::wait_listening(admin, "the admin API");
    let mut fresh = failures(a, 60, 25);
    fresh.extend(failures(b, 130, 1));
    broker.produce(ATTEMPTS, &fresh, true);
    let blocked = decisions.read_until(Duration::from_secs(60), |seen| {
        count(seen, a, "block") == 2 && count(seen, b, "block") == 1
    });
    assert_eq!(run.sigterm().code(), Some(0));
    assert!(
        blocked,
        "after the restart: {} blocks on the released address (want 2), {} on the other (want 1)\n{}",
        count(&decisions.seen, a, "block"),
        count(&decisions.seen, b, "block"),
        setup.logs()
    );
    // The ladder came back from the topic too: `a` was blocked before the
    // restart (and released: the record stays), so its second block is a
    // repeat offence, six hours; `b`'s first is an hour.
    let blocks = |ip: &str| -> Vec<Value> {
        decisions
            .seen
            .iter()
            .filter(|r| subject(r) == (ip.to_string(), "block".to_string()))
            .map(|r| serde_json::from_slice(&r.payload).expect("json"))
            .collect()
    };
    let (on_a, on_b) = (blocks(a), blocks(b));
    assert_eq!(on_a[0]["evidence"]["offence"], 1);
    assert_eq!(on_a[1]["evidence"]["offence"], 2, "{}", on_a[1]);
    assert!(
        on_a[1]["reason"].as_str().is_some_and(|r| r.ends_with("offence 2, 6h")),
        "{}",
        on_a[1]
    );
    assert_eq!(on_b[0]["evidence"]["offence"], 1, "{}", on_b[0]);
}

/// Hostile messages and the reason each must be dead-lettered with.
fn malformed_corpus() -> Vec<(Vec<u8>, &'static str)> {
    let valid = |ip: &str| {
        format!(
            r#"{{"event_id":"ok-{ip}","ts":"2026-11-22T01:00:00Z","kind":"redemption","outcome":"success","card":{{"code_hash":"aabbccddeeff"}},"account":{{"id":"u-1"}},"ip":"{ip}"}}"#
        )
    };
    let with = |field: &str, value: &str| {
        let base = r#"{"event_id":"m-1","ts":"2026-11-22T01:00:00Z","kind":"redemption","outcome":"success","card":{"code_hash":"aabbccddeeff"},"account":{"id":"u-1"}}"#;
        let mut v: Value = serde_json::from_str(base).expect("base");
        let parsed: Value = serde_json::from_str(value).expect("value");
        let mut at = &mut v;
        let parts: Vec<&str> = field.split('.').collect();
        for p in &parts[..parts.len() - 1] {
            at = &mut at[*p];
        }
        at[parts[parts.len() - 1]] = parsed;
        serde_json::to_vec(&v).expect("json")
    };
    vec![
        (Vec::new(), "not_json"),
        (b"\xc3\x28 invalid utf-8".to_vec(), "not_utf8"),
        (b"{\"event_id\":\"nul\0\"}".to_vec(), "not_json"),
        (b"null".to_vec(), "not_json"),
        (b"[1,2,3]".to_vec(), "not_json"),
        (b"42".to_vec(), "not_json"),
        ("[".repeat(100_000).into_bytes(), "too_large"),
        ("[".repeat(5_000).into_bytes(), "not_json"),
        (
            format!("{{\"event_id\":\"{}\"}}", "x".repeat(900_000)).into_bytes(),
            "too_large",
        ),
        (with("event_id", &format!("\"{}\"", "e".repeat(129))), "invalid_value"),
        (with("event_id", "\"\""), "invalid_value"),
        (with("ts", "\"99999-01-01T00:00:00Z\""), "invalid_value"),
        (with("ts", "\"1969-12-31T23:59:59Z\""), "invalid_value"),
        (with("ts", "1795305600"), "wrong_type"),
        (with("ts", "\"yesterday\""), "invalid_value"),
        (with("kind", "\"refund\""), "invalid_value"),
        (with("outcome", "null"), "wrong_type"),
        (with("account.id", "42"), "wrong_type"),
        (with("card.face_value", "-5"), "invalid_value"),
        (
            br#"{"event_id":"m-1","ts":"2026-11-22T01:00:00Z","kind":"redemption","outcome":"success","card":{"code_hash":"aabbccddeeff","face_value":1e400},"account":{"id":"u-1"}}"#.to_vec(),
            "invalid_value",
        ),
        (with("ip", "\"1:2:3:4:5:6:7:8:9\""), "invalid_value"),
        (with("ip", "\"fe80::1%eth0\""), "invalid_value"),
        (with("ip", "\"256.1.1.1\""), "invalid_value"),
        (with("ip", "[\"175.16.199.7\"]"), "wrong_type"),
        (with("account.verified", "\"yes\""), "wrong_type"),
        // Edge cases that are valid: they must not be dead-lettered.
        (valid("::ffff:175.16.199.7").into_bytes(), ""),
        (valid("::").into_bytes(), ""),
        (valid("2001:db8::1").into_bytes(), ""),
    ]
}

#[test]
fn hostile_messages_are_dead_lettered_with_their_reason_and_nothing_panics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::memory(dir.path());
    broker.create_topics(1);
    let setup = setup(broker.port, "kg-hostile", 1);
    let corpus = malformed_corpus();
    let messages: Vec<Vec<u8>> = corpus.iter().map(|(m, _)| m.clone()).collect();
    broker.produce(ATTEMPTS, &messages, false);
    let run = Processor::start(&setup, "run");
    let bad: Vec<(usize, &str)> = corpus
        .iter()
        .enumerate()
        .filter(|(_, (_, r))| !r.is_empty())
        .map(|(i, (_, r))| (i, *r))
        .collect();
    let mut dead = broker.reader(DLQ, 1);
    dead.read_until(Duration::from_secs(60), |seen| seen.len() >= bad.len());
    wait_committed(&broker, &setup, "kg-hostile", corpus.len() as i64);
    dead.drain(Duration::from_millis(500));
    assert_eq!(
        run.sigterm().code(),
        Some(0),
        "the processor survived the corpus\n{}",
        setup.logs()
    );

    let got: Vec<(i64, String)> = dead
        .seen
        .iter()
        .map(|r| {
            let offset = header(r, "kamiguard.source.offset")
                .and_then(|o| o.parse().ok())
                .unwrap_or(-1);
            (offset, header(r, "kamiguard.reason").unwrap_or_default().to_string())
        })
        .collect();
    let want: Vec<(i64, String)> = bad.iter().map(|(i, r)| (*i as i64, r.to_string())).collect();
    assert_eq!(got, want, "each hostile message dead-lettered once, with its reason");
    for r in &dead.seen {
        let error = header(r, "kamiguard.error").unwrap_or_default();
        assert!(
            !error.is_empty() && error.len() < 300,
            "a short sentence, never the value: {error}"
        );
    }
}

#[test]
fn raw_codes_never_reach_a_log_a_metric_a_decision_or_a_dead_letter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::memory(dir.path());
    broker.create_topics(1);
    let setup = setup(broker.port, "kg-leak", 1);
    // Split, so that forwarded copies on the internal topics are searched too.
    let text = std::fs::read_to_string(&setup.config).expect("config");
    std::fs::write(
        &setup.config,
        text.replace("[pipeline]\n", "[pipeline]\nrepartition = \"always\"\n"),
    )
    .expect("config");
    let port = setup.http_port;
    // One real code tried by four accounts with a wrong PIN (a decision on
    // the card), and codes in messages that are refused.
    let code = |n: u32| format!("LEAKCHECK-{n:04}-ZQX");
    let mut lines = Vec::new();
    for (i, account) in ["u-a", "u-b", "u-c", "u-d"].iter().enumerate() {
        lines.push(format!(
            r#"{{"event_id":"leak-{i}","ts":"2026-11-22T03:00:0{i}Z","kind":"redemption","outcome":"wrong_pin","card":{{"code":"{}"}},"account":{{"id":"{account}"}},"device":{{"fingerprint":"fp-{account}"}},"ip":"175.16.199.{i}"}}"#,
            code(1)
        ).into_bytes());
    }
    lines.push(format!(r#"{{"event_id":"leak-bad","card":{{"code":"{}"}}}}"#, code(2)).into_bytes());
    lines.push(
        format!(
            r#"{{"event_id":"leak-bad2","ts":"nope","card":{{"code":"{}"}},"account":{{"id":"x"}}}}"#,
            code(3)
        )
        .into_bytes(),
    );
    // Codes a byte search for `"code"` does not see: behind an escaped key
    // (valid, so forwarded; and refused), beside invalid UTF-8, in 2 MiB.
    lines.push(format!(
        r#"{{"event_id":"leak-esc","ts":"2026-11-22T03:00:05Z","kind":"redemption","outcome":"wrong_pin","card":{{"co\u0064e":"{}"}},"account":{{"id":"u-e"}},"ip":"175.16.199.9"}}"#,
        code(4)
    ).into_bytes());
    lines.push(format!(r#"{{"event_id":"leak-esc2","card":{{"co\u0064e":"{}"}}}}"#, code(5)).into_bytes());
    let mut utf8 = br#"{"event_id":"leak-utf8","ts":"2026-11-22T03:00:06Z","kind":"redemption","outcome":"wrong_pin","card":{"brand":"x"#.to_vec();
    utf8.extend(b"\xff\xfe\xfd\xfc");
    utf8.extend(format!(r#"","code":"{}"}},"account":{{"id":"u-f"}}}}"#, code(6)).into_bytes());
    lines.push(utf8);
    lines.push(format!(r#"{{"card":{{"code":"{}"}},"pad":"{}"}}"#, code(7), "p".repeat(2 << 20)).into_bytes());
    let refused = 5;
    let codes: Vec<String> = (1..=7).map(code).collect();

    broker.produce(ATTEMPTS, &lines, false);
    let run = Processor::start_with(&setup, "run", &[("RUST_LOG", "debug")]);
    let mut decisions = broker.reader(DECISIONS, 1);
    assert!(
        decisions.read_until(Duration::from_secs(60), |seen| seen.iter().any(|r| {
            serde_json::from_slice::<Value>(&r.payload).unwrap_or_default()["scope"] == "card"
        })),
        "the shared code should be decided on\n{}",
        setup.logs()
    );
    let mut dead = broker.reader(DLQ, 1);
    assert!(dead.read_until(Duration::from_secs(30), |seen| seen.len() >= refused));
    wait_committed(&broker, &setup, "kg-leak", lines.len() as i64);
    let mut forwarded = Vec::new();
    for home in ["card", "account", "device", "ip", "ip_prefix", "asn"] {
        let mut r = broker.reader(&format!("kg-leak-repartition-{home}"), 1);
        r.drain(Duration::from_millis(1500));
        forwarded.extend(r.seen);
    }
    assert!(
        forwarded.len() >= 6,
        "the valid attempts were forwarded: {}",
        forwarded.len()
    );
    wait_http(port);
    let (_, _) = http(port, "GET", "/healthz", None, None);
    let (_, metrics) = common::http(port, "GET", "/metrics", None, None);
    assert!(metrics.contains("kamiguard_events_total"), "{metrics}");
    assert_eq!(run.sigterm().code(), Some(0));

    let replay_out = common::kamiguard()
        .args(["replay", "--config"])
        .arg(&setup.config)
        .arg({
            let p = setup.dir.path().join("leak.jsonl");
            std::fs::write(&p, lines.join(&b'\n')).expect("write");
            p
        })
        .env("KAMIGUARD_CODE_KEY", KEY)
        .env("RUST_LOG", "debug")
        .output()
        .expect("replay");
    let mut haystacks = vec![
        (
            "run log",
            std::fs::read_to_string(setup.dir.path().join("run.log")).expect("log"),
        ),
        ("metrics", metrics),
        (
            "replay stdout",
            String::from_utf8_lossy(&replay_out.stdout).into_owned(),
        ),
        (
            "replay stderr",
            String::from_utf8_lossy(&replay_out.stderr).into_owned(),
        ),
    ];
    for r in decisions.seen.iter().chain(&dead.seen).chain(&forwarded) {
        haystacks.push(("message", String::from_utf8_lossy(&r.payload).into_owned()));
        haystacks.push(("headers", format!("{:?}", r.headers)));
        haystacks.push((
            "key",
            String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned(),
        ));
    }
    assert!(haystacks[0].1.contains("DEBUG"), "debug logging was on");
    for (what, text) in &haystacks {
        for c in &codes {
            assert!(!text.contains(c.as_str()), "raw code {c} found in the {what}: {text}");
        }
    }
}

/// A metric's value from the text of `/metrics` (summed over label sets).
fn metric(port: u16, name: &str) -> f64 {
    let (_, text) = common::http(port, "GET", "/metrics", None, None);
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_stalled_decisions_topic_slows_intake_instead_of_growing_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::memory(dir.path());
    broker.create_topics(1);
    // Decisions go to a topic that does not exist yet (Tansu does not create
    // topics on use): the producer holds them, at most 20 at a time.
    let setup = setup_with(
        broker.port,
        "kg-stall",
        1,
        "[kafka.topics]\ndecisions = \"stalled.decisions\"\n[kafka.producer]\n\"queue.buffering.max.messages\" = \"20\"\n\"topic.metadata.propagation.max.ms\" = \"600000\"\n",
    );
    std::fs::write(
        &setup.config,
        std::fs::read_to_string(&setup.config).expect("config").replace(
            "replication_factor = 1",
            "replication_factor = 1\ncreate_topics = false",
        ),
    )
    .expect("config");
    let lines = generated(20_000, 13);
    let expected = replay(&setup, &lines);
    assert!(
        expected.len() > 100,
        "enough decisions to fill the queue: {}",
        expected.len()
    );
    broker.produce(ATTEMPTS, &lines, false);

    let run = Processor::start(&setup, "run");
    let port = setup.http_port;
    wait_http(port);
    std::thread::sleep(Duration::from_secs(8));
    let (events_a, rss_a) = (metric(port, "kamiguard_events_total"), rss_kib(run.child.id()));
    std::thread::sleep(Duration::from_secs(4));
    let (events_b, rss_b) = (metric(port, "kamiguard_events_total"), rss_kib(run.child.id()));
    eprintln!("stalled: {events_a} -> {events_b} events, {rss_a} -> {rss_b} KiB RSS");
    assert!(
        events_b < lines.len() as f64 / 2.0,
        "intake went on while decisions could not be published: {events_b}"
    );
    assert_eq!(
        events_a, events_b,
        "intake stopped while the decisions topic was stalled"
    );
    assert!(
        rss_b < 400 * 1024 && rss_b <= rss_a + 16 * 1024,
        "memory grew: {rss_a} -> {rss_b} KiB"
    );
    let committed = broker.committed("kg-stall", ATTEMPTS, 1)[0];
    assert!(
        committed as f64 <= events_b,
        "committed {committed} past what was processed ({events_b})"
    );

    // The topic appears: everything flows, nothing was lost.
    broker.ensure_topics(kamiguard::kafka::KafkaConfig {
        partitions: 1,
        topics: kamiguard::kafka::Topics {
            decisions: "stalled.decisions".into(),
            ..Default::default()
        },
        ..Default::default()
    });
    let mut decisions = broker.reader("stalled.decisions", 1);
    let total = lines.len();
    finish(
        run,
        &mut decisions,
        &expected,
        &broker,
        &setup,
        "kg-stall",
        total,
        Duration::from_secs(120),
        "after the stall",
    );
}

#[test]
fn sigkill_at_random_moments_several_times_loses_nothing() {
    let seed = std::env::var("KAMIGUARD_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("kill timing seed {seed} (set KAMIGUARD_KILL_SEED to repeat)");
    let mut rng = kamiguard::tools::generate::SplitMix::new(seed);

    let st = stage(Broker::memory, "kg-chaos", 16_000, 17);
    // Resumed after every kill: one record per batch (Tansu, see broker.rs).
    st.broker.produce(ATTEMPTS, &st.lines, true);

    let mut decisions = st.broker.reader(DECISIONS, 1);
    for round in 0..4 {
        let run = Processor::start(&st.setup, &format!("run-{round}"));
        std::thread::sleep(Duration::from_millis(300 + rng.below(2500)));
        run.sigkill();
    }
    let run = Processor::start(&st.setup, "run-last");
    st.finish(
        run,
        &mut decisions,
        Duration::from_secs(120),
        &format!("seed {seed}, after four SIGKILLs"),
    );
    eprintln!(
        "{} messages for {} decisions ({} republished with their own id)",
        decisions.seen.len(),
        st.expected.len(),
        decisions.seen.len() - st.expected.len()
    );
}

#[test]
fn sighup_reloads_the_rules_of_a_running_processor_and_a_broken_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::memory(dir.path());
    broker.create_topics(1);
    let setup = setup(broker.port, "kg-hup", 1);
    // The processor's own copy of the rule pack, to edit while it runs.
    let rules = setup.dir.path().join("rules");
    std::fs::create_dir(&rules).expect("rules dir");
    for f in std::fs::read_dir(common::root().join("config/rules"))
        .expect("pack")
        .flatten()
    {
        std::fs::copy(f.path(), rules.join(f.file_name())).expect("copy");
    }
    let text = std::fs::read_to_string(&setup.config).expect("config");
    let pack = common::root().join("config/rules").display().to_string();
    std::fs::write(&setup.config, text.replace(&pack, &rules.display().to_string())).expect("config");

    const TOKEN: &str = "reload-test-admin-token";
    let run = Processor::start_with(&setup, "run", &[("KAMIGUARD_ADMIN_TOKEN", TOKEN)]);
    let port = setup.http_port;
    wait_http(port);
    common::wait_listening(setup.admin_port, "the admin API");
    let admin = setup.admin_port;
    let version = || http(admin, "GET", "/admin/rules", Some(TOKEN), None).1["version"].clone();
    let reloads = |result: &str| metric(port, &format!("kamiguard_rule_reloads_total{{result=\"{result}\"}}"));
    let before = version();
    let hup = || {
        let pid = run.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .expect("kill -HUP")
            .success());
    };
    let wait_for = |what: &str, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(Instant::now() < deadline, "{what}\n{}", setup.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    // A broken file: refused, counted, the old set stays.
    let geo = rules.join("30-geo.toml");
    let good = std::fs::read_to_string(&geo).expect("geo rules");
    std::fs::write(&geo, good.replacen("score = ", "score = \"high\" # ", 1)).expect("break");
    hup();
    wait_for("the broken file is refused", &|| reloads("error") >= 1.0);
    assert_eq!(version(), before, "the running rules stay");
    assert!(
        setup.logs().contains("30-geo.toml:"),
        "the error is logged with its file and position"
    );

    // A good change: taken on SIGHUP, the process still running.
    std::fs::write(&geo, good.replacen("score = ", "score = 1 # was ", 1)).expect("change");
    hup();
    wait_for("the good file is taken", &|| reloads("ok") >= 1.0);
    assert_ne!(version(), before, "a new rule set version is in force");
    assert_eq!(run.sigterm().code(), Some(0));
}

/// The new capabilities decide live as replay does: each golden scenario of
/// honey codes, the repeat-offender ladder, the circuit breaker, the batch
/// alarm and linked decisions, produced to a broker in event-time order and
/// decided by `kamiguard run` with the folder's rules and engine settings,
/// gives replay's decisions, ids included.
#[test]
fn the_new_capabilities_decide_live_as_in_replay() {
    let scenarios = common::root().join("tests/scenarios");
    for name in [
        "honey-code",
        "repeat-offender",
        "circuit-breaker",
        "batch-alarm",
        "linked-freeze",
    ] {
        let folder = scenarios.join(name);
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = Broker::memory(dir.path());
        broker.create_topics(1);
        let setup = setup(broker.port, &format!("kg-{name}"), 1);
        // The folder's rules and engine settings, as `test-rules` takes them.
        let mut config = std::fs::read_to_string(&setup.config).expect("config");
        let rules = folder.join("rules.toml");
        if rules.is_file() {
            let shipped = common::root().join("config/rules").display().to_string();
            config = config.replace(&shipped, &rules.display().to_string());
        }
        if let Ok(engine) = std::fs::read_to_string(folder.join("engine.toml")) {
            config.push_str(&engine.replace("\n[", "\n[engine.").replacen(
                '[',
                "[engine.",
                usize::from(engine.starts_with('[')),
            ));
        }
        std::fs::write(&setup.config, config).expect("config");
        // In event-time order, as replay takes them (ties keep file order).
        let text = std::fs::read_to_string(folder.join("events.jsonl")).expect("events");
        let mut lines: Vec<(String, Vec<u8>)> = text
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).expect("event");
                let ts = kamiguard::event::parse_ts_ms(v["ts"].as_str().expect("ts")).expect("ts");
                (format!("{ts:020}"), l.as_bytes().to_vec())
            })
            .collect();
        lines.sort_by(|a, b| a.0.cmp(&b.0));
        let lines: Vec<Vec<u8>> = lines.into_iter().map(|(_, l)| l).collect();
        let expected = replay(&setup, &lines);
        // What each scenario is there to show is among the decisions.
        let shows = |d: &Value| match name {
            "honey-code" => d["evidence"]["honey_list"].is_string(),
            "repeat-offender" => d["evidence"]["offence"] == 2,
            "circuit-breaker" => d["evidence"]["breaker"] == "open",
            "batch-alarm" => d["scope"] == "batch",
            _ => d["evidence"]["link"].is_string(),
        };
        assert!(expected.values().any(shows), "{name}: {expected:?}");

        broker.produce(ATTEMPTS, &lines, false);
        let run = Processor::start(&setup, "run");
        let mut decisions = broker.reader(DECISIONS, 1);
        let all = decisions.read_until(Duration::from_secs(90), |seen| seen.len() >= expected.len());
        assert_eq!(run.sigterm().code(), Some(0));
        assert!(
            all,
            "{name}: {} of {} decisions\n{}",
            decisions.seen.len(),
            expected.len(),
            setup.logs()
        );
        let live = by_id(decisions.seen.iter().map(|r| r.payload.as_slice()));
        assert_eq!(live, expected, "{name}: run and replay differ");
    }
}
