//! The admin API against a real broker (Tansu): its own listener, named
//! tokens, an audit record before every change, an allowlist every instance
//! shares through its topic, TLS, and secrets that never reach a log or a
//! metric.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::broker::{Broker, Record};
use common::pipeline::{setup, Processor, Setup, ATTEMPTS, DECISIONS};
use serde_json::Value;

const TOKEN: &str = "s3cret-admin-token-0001";
const AUDIT: &str = "kamiguard.audit";

fn http(port: u16, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> (u16, Value) {
    let (status, text) = common::http(port, method, path, token, body);
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn high_value_attempt(id: &str, account: &str) -> Vec<u8> {
    format!(
        r#"{{"event_id":"{id}","ts":"2026-11-22T02:00:00Z","kind":"redemption","outcome":"success","card":{{"code_hash":"aa00bb11cc22","face_value":200000}},"account":{{"id":"{account}","created_at":"2026-11-21T00:00:00Z","verified":false,"country":"CN"}},"ip":"175.16.199.9"}}"#
    )
    .into_bytes()
}

fn json(r: &Record) -> Value {
    serde_json::from_slice(&r.payload).unwrap_or_default()
}

/// Whether `GET /admin/decisions` answered `body` lists a decision on `subject`.
fn in_force(body: &Value, subject: &str) -> bool {
    body["decisions"]
        .as_array()
        .expect("decisions")
        .iter()
        .any(|d| d["subject"] == subject)
}

/// Polls `f` until it holds or 30 s pass.
fn eventually(what: &str, setup: &Setup, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "{what}\n{}", setup.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The admin port of instance `n` (from its log line).
fn admin_port_of(setup: &Setup, name: &str) -> u16 {
    let log = setup.dir.path().join(format!("{name}.log"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("admin API listening")) {
            let port = line
                .split("bound=127.0.0.1:")
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|p| p.parse().ok())
                .expect("port in the log line");
            common::wait_listening(port, "the admin API");
            return port;
        }
        assert!(Instant::now() < deadline, "{name} never listened\n{}", setup.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn admin_changes_are_audited_first_and_shared_by_every_instance() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::memory(dir.path());
    broker.create_topics(1);
    let setup = setup(broker.port, "kg-admin", 1);
    let env = [("KAMIGUARD_ADMIN_TOKEN", TOKEN)];
    // Two members of one group: dynamic membership (see
    // `Processor::instance` on Tansu and static members).
    let text = std::fs::read_to_string(&setup.config).expect("config");
    std::fs::write(
        &setup.config,
        text.replace("\"group.instance.id\" = \"kg-test-instance\"", ""),
    )
    .expect("config");

    broker.produce(ATTEMPTS, &[high_value_attempt("a-1", "u-new-1")], true);
    let run = Processor::start_with(&setup, "run-1", &env);
    let admin = setup.admin_port;
    common::wait_listening(admin, "the admin API");
    let mut decisions = broker.reader(DECISIONS, 1);
    assert!(
        decisions.read_until(Duration::from_secs(60), |seen| !seen.is_empty()),
        "{}",
        setup.logs()
    );

    // The door: a token, the right one, on the admin listener only.
    for token in [None, Some("wrong"), Some("")] {
        let (status, _) = http(admin, "GET", "/admin/decisions", token, None);
        assert_eq!(status, 401, "token {token:?} must be refused");
    }
    let (status, body) = http(admin, "POST", "/admin/decisions/release", None, Some("{}"));
    assert_eq!((status, body["error"].is_string()), (401, true));
    let (status, _) = http(setup.http_port, "GET", "/admin/decisions", Some(TOKEN), None);
    assert_eq!(status, 404, "the metrics port serves no admin route");

    let (status, body) = http(admin, "GET", "/admin/decisions", Some(TOKEN), None);
    assert_eq!(status, 200);
    let held = body["decisions"]
        .as_array()
        .expect("decisions")
        .iter()
        .find(|d| d["subject"] == "u-new-1")
        .cloned()
        .expect("the challenge is in force");
    assert_eq!(held["rule"], "new-account-high-value");

    // A change needs a reason, and its audit record comes first.
    let release = r#"{"scope":"account","subject":"u-new-1"}"#;
    let (status, body) = http(admin, "POST", "/admin/decisions/release", Some(TOKEN), Some(release));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap_or_default().contains("reason"), "{body}");
    let release = r#"{"scope":"account","subject":"u-new-1","reason":"customer verified by phone, ticket 4711"}"#;
    let (status, body) = http(admin, "POST", "/admin/decisions/release", Some(TOKEN), Some(release));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["action"], "release");
    let mut audit = broker.reader(AUDIT, 1);
    assert!(audit.read_until(Duration::from_secs(30), |seen| !seen.is_empty()));
    let record = json(&audit.seen[0]);
    assert_eq!(record["actor"], "admin");
    assert_eq!(record["action"], "release");
    assert_eq!(record["subject"], "u-new-1");
    assert_eq!(record["reason"], "customer verified by phone, ticket 4711");
    assert_eq!(record["undoes"]["rule"], "new-account-high-value", "{record}");
    assert!(record["at"].is_string());
    assert!(
        decisions.read_until(Duration::from_secs(30), |seen| seen
            .iter()
            .any(|r| json(r)["action"] == "release" && json(r)["subject"] == "u-new-1")),
        "the release reaches the decisions topic"
    );
    let (_, body) = http(admin, "GET", "/admin/decisions", Some(TOKEN), None);
    assert!(!in_force(&body, "u-new-1"), "released: {body}");

    // Circuit breakers: the shipped pack's two are listed, closed; a reset
    // needs a reason and a rule that has one, is audited, and is published
    // on the operations topic.
    let (status, body) = http(admin, "GET", "/admin/breakers", Some(TOKEN), None);
    assert_eq!(status, 200, "{body}");
    let listed: Vec<&str> = body["breakers"]
        .as_array()
        .expect("breakers")
        .iter()
        .filter_map(|b| b["rule"].as_str())
        .collect();
    assert_eq!(listed, ["new-account-high-value", "hosting-or-anonymous"], "{body}");
    assert!(body["breakers"]
        .as_array()
        .is_some_and(|b| b.iter().all(|b| b["open"] == false)));
    let (status, _) = http(
        admin,
        "POST",
        "/admin/breakers/reset",
        Some(TOKEN),
        Some(r#"{"rule":"hosting-or-anonymous"}"#),
    );
    assert_eq!(status, 400, "a reset needs a reason");
    let (status, _) = http(
        admin,
        "POST",
        "/admin/breakers/reset",
        Some(TOKEN),
        Some(r#"{"rule":"single-ip-guessing","reason":"no breaker there"}"#),
    );
    assert_eq!(status, 404);
    let (status, body) = http(
        admin,
        "POST",
        "/admin/breakers/reset",
        Some(TOKEN),
        Some(r#"{"rule":"hosting-or-anonymous","reason":"geo update rolled back, ticket 4712"}"#),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["event"], "breaker_reset");
    assert!(audit.read_until(Duration::from_secs(30), |seen| seen.iter().any(|r| {
        let r = json(r);
        r["action"] == "breaker_reset" && r["subject"] == "hosting-or-anonymous" && r["actor"] == "admin"
    })));
    let mut operations = broker.reader("kamiguard.operations", 1);
    assert!(operations.read_until(Duration::from_secs(30), |seen| seen
        .iter()
        .any(|r| json(r)["event"] == "breaker_reset" && json(r)["rule"] == "hosting-or-anonymous")));

    // A second instance that never saw the challenge or the release, with
    // its admin API over TLS.
    let tls = setup.dir.path().join("tls");
    std::fs::create_dir(&tls).expect("tls dir");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    std::fs::write(tls.join("cert.pem"), cert.cert.pem()).expect("cert");
    std::fs::write(tls.join("key.pem"), cert.key_pair.serialize_pem()).expect("key");
    let text = std::fs::read_to_string(&setup.config).expect("config");
    let second = setup.dir.path().join("second.toml");
    std::fs::write(
        &second,
        text.replace(
            "audit_timeout_ms = 3000",
            &format!(
                "audit_timeout_ms = 3000\ntls_cert = \"{}\"\ntls_key = \"{}\"",
                tls.join("cert.pem").display(),
                tls.join("key.pem").display()
            ),
        ),
    )
    .expect("second config");
    let listen = format!("127.0.0.1:{}", common::broker::free_port());
    let other = Processor::start_config(
        &setup,
        &second,
        "run-2",
        &[
            ("KAMIGUARD_ADMIN_TOKEN", TOKEN),
            ("KAMIGUARD_HTTP_LISTEN", &listen),
            ("KAMIGUARD_ADMIN_LISTEN", "127.0.0.1:0"),
        ],
    );
    let other_admin = admin_port_of(&setup, "run-2");
    let curl = |path: &str, extra: &[&str]| {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(tls.join("cert.pem"))
            .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
            .args(extra)
            .arg(format!("https://localhost:{other_admin}{path}"))
            .output()
            .expect("curl");
        serde_json::from_slice::<Value>(&out.stdout)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&out.stderr).into_owned()))
    };
    // Plain HTTP on the TLS listener gets no answer.
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", other_admin)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let _ = s.write_all(b"GET /admin/decisions HTTP/1.0\r\n\r\n");
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        assert!(
            !answer.starts_with(b"HTTP/"),
            "plain HTTP was served on the TLS listener"
        );
    }
    eventually("the second instance loads the book", &setup, || {
        curl("/admin/decisions", &[])["decisions"].is_array()
    });
    let body = curl("/admin/decisions", &[]);
    assert!(
        !in_force(&body, "u-new-1"),
        "the release reached an instance that never saw the decision: {body}"
    );

    // An allowlist entry added through one instance holds on both.
    let entry = r#"{"kind":"account","value":"u-vip","reason":"board member, verified in branch"}"#;
    let (status, body) = http(admin, "POST", "/admin/allowlist", Some(TOKEN), Some(entry));
    assert_eq!((status, body["changed"].as_bool()), (200, Some(true)), "{body}");
    let (status, body) = http(
        admin,
        "POST",
        "/admin/allowlist",
        Some(TOKEN),
        Some(r#"{"kind":"cidr","value":"nope","reason":"typo"}"#),
    );
    assert_eq!((status, body["error"].is_string()), (400, true));
    // What a careless or hostile caller sends is refused, never half-taken.
    let padded = format!(
        r#"{{"kind":"account","value":"u-pad","reason":"{}"}}"#,
        "x".repeat(100 * 1024)
    );
    for (body, want) in [
        (padded.as_str(), 413),
        (
            r#"{"kind":"account","value":"u-x","reason":"r","by":"someone-else"}"#,
            422,
        ),
        (r#"{"kind":"account","value":"u-x","value":"u-y","reason":"r"}"#, 422),
        (r#"{"kind":"account","value":"u-x","reason":"   "}"#, 400),
        ("not json", 400),
    ] {
        let (status, _) = http(admin, "POST", "/admin/allowlist", Some(TOKEN), Some(body));
        assert_eq!(status, want, "{}", &body[..body.len().min(80)]);
    }
    let long_subject = format!(r#"{{"scope":"ip","subject":"{}","reason":"r"}}"#, "1".repeat(300));
    let (status, _) = http(
        admin,
        "POST",
        "/admin/decisions/release",
        Some(TOKEN),
        Some(&long_subject),
    );
    assert_eq!(status, 400);
    eventually("the entry reaches the other instance", &setup, || {
        curl("/admin/allowlist", &[])["entries"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["value"] == "u-vip" && e["by"] == "admin"))
    });
    assert!(audit.read_until(Duration::from_secs(30), |seen| seen
        .iter()
        .any(|r| json(r)["action"] == "allowlist_add" && json(r)["subject"] == "u-vip")));

    // Whichever instance owns the partition exempts the allowlisted account
    // and decides on the other.
    broker.produce(
        ATTEMPTS,
        &[high_value_attempt("a-2", "u-vip"), high_value_attempt("a-3", "u-new-3")],
        true,
    );
    let subject = |r: &Record| json(r)["subject"].clone();
    assert!(
        decisions.read_until(Duration::from_secs(60), |seen| seen
            .iter()
            .any(|r| subject(r) == "u-new-3")),
        "{}",
        setup.logs()
    );
    decisions.drain(Duration::from_millis(500));
    assert!(
        !decisions.seen.iter().any(|r| subject(r) == "u-vip"),
        "an allowlisted account got a decision"
    );
    assert_eq!(other.sigterm().code(), Some(0));
    assert_eq!(run.sigterm().code(), Some(0));

    // After a restart the entry is still there: the topic is the record.
    // Records no admin API wrote (bytes that are not JSON, an unknown kind)
    // are skipped with a warning and change nothing else.
    broker.produce(
        "kamiguard.allowlist",
        &[
            b"\xff\xfe not json".to_vec(),
            br#"{"kind":"phone","value":"1"}"#.to_vec(),
        ],
        true,
    );
    let run = Processor::start_with(&setup, "run-3", &env);
    common::wait_listening(admin, "the admin API");
    eventually("the allowlist survives a restart", &setup, || {
        let (_, body) = http(admin, "GET", "/admin/allowlist", Some(TOKEN), None);
        body["entries"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["value"] == "u-vip"))
    });

    let log = std::fs::read_to_string(setup.dir.path().join("run-3.log")).unwrap_or_default();
    assert_eq!(log.matches("allowlist record skipped").count(), 2, "{log}");

    // Without a broker the audit record cannot be written: the call fails
    // and nothing changes.
    let (_, before) = http(admin, "GET", "/admin/allowlist", Some(TOKEN), None);
    let mut broker = broker;
    broker.stop();
    let remove = r#"{"kind":"account","value":"u-vip","reason":"no longer a member"}"#;
    let (status, body) = http(admin, "DELETE", "/admin/allowlist", Some(TOKEN), Some(remove));
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("nothing was changed"),
        "{body}"
    );
    let (_, after) = http(admin, "GET", "/admin/allowlist", Some(TOKEN), None);
    assert_eq!(before, after, "a refused change changed the allowlist");
    let log = std::fs::read_to_string(setup.dir.path().join("run-3.log")).unwrap_or_default();
    assert!(
        log.contains("admin action refused: its audit record was not acknowledged"),
        "{log}"
    );
    run.sigkill();
}

/// Secrets given by environment variable and by file never reach a log at
/// debug level, the metrics or an admin answer.
#[test]
fn secrets_from_files_and_the_environment_never_reach_logs_or_metrics() {
    const CODE_KEY: &str = "code-key-from-a-file-7c1d";
    const SASL: &str = "sasl-password-from-env-93ab";
    const OPS: &str = "ops-token-from-a-file-55e2";
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::memory(dir.path());
    broker.create_topics(1);
    let setup = setup(broker.port, "kg-secrets", 1);
    let secrets = setup.dir.path().join("secrets");
    std::fs::create_dir(&secrets).expect("secrets dir");
    std::fs::write(secrets.join("code-key"), format!("{CODE_KEY}\n")).expect("code key");
    std::fs::write(secrets.join("ops-token"), OPS).expect("token");
    let text = std::fs::read_to_string(&setup.config).expect("config");
    std::fs::write(
        &setup.config,
        format!(
            "{text}\n[[admin.tokens]]\nname = \"ops\"\ntoken = {{ file = \"{}\" }}\n[kafka.properties]\n\"sasl.password\" = {{ env = \"KG_TEST_SASL\" }}\n",
            secrets.join("ops-token").display()
        ),
    )
    .expect("config");

    let log = std::fs::File::create(setup.dir.path().join("run.log")).expect("log");
    let mut child = common::kamiguard()
        .args(["run", "--config"])
        .arg(&setup.config)
        .env_remove("KAMIGUARD_CODE_KEY")
        .env("KAMIGUARD_CODE_KEY_FILE", secrets.join("code-key"))
        .env("KAMIGUARD_ADMIN_TOKEN", TOKEN)
        .env("KG_TEST_SASL", SASL)
        .env("RUST_LOG", "debug")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("kamiguard run");
    let raw = r#"{"event_id":"s-1","ts":"2026-11-22T02:00:00Z","kind":"redemption","outcome":"invalid_code","card":{"code":"RAW-CODE-1234-5678"},"account":{"id":"u-1"},"ip":"175.16.199.9"}"#;
    broker.produce(ATTEMPTS, &[raw.as_bytes().to_vec()], true);
    common::wait_listening(setup.admin_port, "the admin API");
    common::wait_listening(setup.http_port, "the metrics endpoint");
    let admin = setup.admin_port;
    // Both tokens work, and the trail names who acted.
    let entry = r#"{"kind":"device","value":"fp-kiosk-1","reason":"store kiosk"}"#;
    let (status, body) = http(admin, "POST", "/admin/allowlist", Some(OPS), Some(entry));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["entry"]["by"], "ops");
    let (status, _) = http(admin, "GET", "/admin/rules", Some(TOKEN), None);
    assert_eq!(status, 200);
    let mut answers = String::new();
    for path in ["/admin/rules", "/admin/decisions", "/admin/allowlist"] {
        answers += &common::http(admin, "GET", path, Some(OPS), None).1;
    }
    // The attempt with a raw code is hashed with the key from the file: it
    // is decided (or counted), not refused for want of a key.
    let mut dlq = broker.reader(common::pipeline::DLQ, 1);
    dlq.drain(Duration::from_secs(2));
    assert!(
        !dlq.seen
            .iter()
            .any(|r| String::from_utf8_lossy(&r.payload).contains("no_code_key")),
        "the code key from the file was not used"
    );
    let metrics = common::http(setup.http_port, "GET", "/metrics", None, None).1;
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    let logs = std::fs::read_to_string(setup.dir.path().join("run.log")).expect("log");
    assert!(
        logs.contains("DEBUG") && logs.contains("configuration") && logs.contains("sasl.password"),
        "the run logged its configuration at debug level:\n{logs}"
    );
    for secret in [CODE_KEY, SASL, OPS, TOKEN] {
        for (what, text) in [("log", &logs), ("metrics", &metrics), ("admin answers", &answers)] {
            assert!(!text.contains(secret), "a secret reached the {what}");
        }
    }
}
