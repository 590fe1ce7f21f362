//! The `kamiguard` binary as an analyst uses it: check-rules, replay, test-rules.

mod common;

use std::path::Path;

use common::kamiguard;

fn geo_args(config: &kamiguard::enrich::GeoConfig) -> Vec<String> {
    let mut args = Vec::new();
    for (flag, path) in [
        ("--city", &config.city),
        ("--asn", &config.asn),
        ("--anonymous", &config.anonymous),
    ] {
        if let Some(p) = path {
            args.push(flag.to_string());
            args.push(p.display().to_string());
        }
    }
    args
}

#[test]
fn check_rules_reports_every_error_in_every_file_with_positions() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("a.toml"),
        r#"[[rule]]
id = "x"
kind = "threshold"
group_by = "ip"
aggregate = "count"
window_secs = 0
threshold = 5
action = "freeze"
score = 500

[[rule]]
id = "y"
kind = "match"
filtre = { failed = true }
action = "block"
score = 1
"#,
    )
    .expect("write");
    std::fs::write(dir.path().join("b.toml"), "[[rule]]\nid = \"x\"\nkind = \"match\"\naction = \"review\"\nscore = 10\nfilter = { network = [\"tor\", \"darknet\"] }\n\n[[rule]]\nid = \"s\"\nkind = \"threshold\"\ngroup_by = \"account\"\naggregate = \"sum_face_value\"\nwindow_secs = 3600\nthreshold = 5000000000\naction = \"review\"\nscore = 10\n").expect("write");
    let out = kamiguard().arg("check-rules").arg(dir.path()).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let a = dir.path().join("a.toml").display().to_string();
    let b = dir.path().join("b.toml").display().to_string();
    let expected = [
        format!("{a}:6:15: `window_secs` must be 1 to 604800"),
        format!("{a}:8:10: `freeze` applies to a card or an account, not to scope `ip`; use `block`"),
        format!("{a}:9:9: `score` must be 0 to 100"),
        format!("{a}:14:1: unknown field `filtre`, expected one of `id`, `description`, `kind`, `enabled`, `filter`, `group_by`, `aggregate`, `distinct_of`, `window_secs`, `threshold`, `limit`, `period_secs`, `burst`, `baseline_secs`, `factor`, `min_count`, `honey_list`, `noun`, `action`, `scope`, `duration_secs`, `ladder_secs`, `repeat_within_secs`, `breaker`, `score`, `mode`, `allow`"),
        format!("{b}:2:6: rule id `x` is already used at {a}:2:6"),
        format!("{b}:14:13: a sum_face_value `threshold` must be at most 4294967295 fen (¥42,949,672.95)"),
    ];
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        expected.iter().map(String::as_str).collect::<Vec<_>>()
    );
}

#[test]
fn check_rules_rejects_a_geo_rule_without_its_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("geo.toml");
    std::fs::write(&file, "[[rule]]\nid = \"far\"\nkind = \"match\"\nfilter = { ip_country = [\"US\"] }\naction = \"review\"\nscore = 10\n").expect("write");
    let empty_config = dir.path().join("kamiguard.toml");
    std::fs::write(&empty_config, "").expect("write");
    let out = kamiguard()
        .arg("check-rules")
        .arg(&file)
        .arg("--config")
        .arg(&empty_config)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(
            "{}:1:1: rule `far` needs the GeoIP2/GeoLite2 City database, which is not configured (set `geo.city` in the config or pass --city)",
            file.display()
        )
    );
}

#[test]
fn shipped_rules_pass_check_rules() {
    let out = kamiguard()
        .current_dir(common::root())
        .args(["check-rules", "config/rules"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("19 rules ok"));
    assert!(text.contains("per ip") && text.contains("per card"), "{text}");
    assert!(!text.contains("note: split"), "the shipped pack splits cleanly: {text}");
}

#[test]
fn check_rules_warns_about_a_rule_that_splits_its_decision_book() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("split.toml");
    std::fs::write(
        &file,
        r#"[[rule]]
id = "device-freezes-account"
kind = "threshold"
group_by = "device"
aggregate = "count"
window_secs = 600
threshold = 5
scope = "account"
action = "freeze"
score = 50
"#,
    )
    .expect("write");
    let out = kamiguard().arg("check-rules").arg(&file).output().expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("note: split across instances, rule `device-freezes-account` keeps its state per device but decides on account"),
        "{text}"
    );
}

fn replay(events: &Path, geo: &[String], extra_env: Option<(&str, &str)>) -> (String, String) {
    let mut cmd = kamiguard();
    cmd.current_dir(common::root()).arg("replay").arg(events).args(geo);
    if let Some((k, v)) = extra_env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run replay");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (
        String::from_utf8(out.stdout).expect("utf-8"),
        String::from_utf8(out.stderr).expect("utf-8"),
    )
}

fn without_decided_at(jsonl: &str) -> Vec<serde_json::Value> {
    jsonl
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).expect("decision is JSON");
            v.as_object_mut().expect("object").remove("decided_at");
            v
        })
        .collect()
}

#[test]
fn replay_is_deterministic_reports_bad_lines_and_orders_by_event_time() {
    let (_dir, config, _) = common::fixture_geo();
    let geo = geo_args(&config);
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut all = String::new();
    for case in ["single-ip-guessing", "account-takeover", "device-farm"] {
        all.push_str(
            &std::fs::read_to_string(common::root().join("tests/scenarios").join(case).join("events.jsonl"))
                .expect("read"),
        );
    }
    let mut lines: Vec<&str> = all.lines().collect();
    lines.insert(3, "{\"event_id\":\"x\"}");
    lines.insert(7, "\u{1}not json");
    let forward = tmp.path().join("forward.jsonl");
    std::fs::write(&forward, lines.join("\n")).expect("write");
    // The same events in reverse file order must give the same decisions.
    let mut reversed: Vec<&str> = all.lines().collect();
    reversed.reverse();
    let backward = tmp.path().join("backward.jsonl");
    std::fs::write(&backward, reversed.join("\n")).expect("write");

    let (out1, err1) = replay(&forward, &geo, None);
    let (out2, _) = replay(&forward, &geo, None);
    let (out3, _) = replay(&backward, &geo, None);
    assert_eq!(without_decided_at(&out1), without_decided_at(&out2));
    assert_eq!(without_decided_at(&out1), without_decided_at(&out3));
    let rules: Vec<String> = without_decided_at(&out1)
        .iter()
        .map(|d| d["rule"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        rules,
        [
            "account-takeover",
            "account-guessing",
            "single-ip-guessing",
            "device-farm"
        ]
    );
    assert!(err1.contains("line 4: missing required field `ts`"), "{err1}");
    assert!(err1.contains("line 8: message is not a valid JSON object"), "{err1}");
    assert!(err1.contains("2 rejected"), "{err1}");
    assert!(err1.contains("single-ip-guessing block: 1"), "{err1}");
}

#[test]
fn raw_codes_are_hashed_and_never_printed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let events = tmp.path().join("raw.jsonl");
    let mut text = String::new();
    for i in 0..4 {
        text.push_str(&format!(
            "{{\"event_id\":\"r-{i}\",\"ts\":\"2026-11-22T10:00:0{i}+08:00\",\"kind\":\"redemption\",\"outcome\":\"wrong_pin\",\"card\":{{\"code\":\"KAMI-SECRET-7788\"}},\"account\":{{\"id\":\"u-raw-{i}\"}}}}\n"
        ));
    }
    // a raw code in a line that is otherwise bad must not be echoed either
    text.push_str("{\"event_id\":\"r-x\",\"ts\":\"KAMI-SECRET-7788\",\"kind\":\"redemption\",\"outcome\":\"success\",\"card\":{\"code\":\"KAMI-SECRET-7788\"},\"account\":{\"id\":\"u\"}}\n");
    std::fs::write(&events, text).expect("write");
    let (out, err) = replay(
        &events,
        &["--rules".into(), "config/rules/10-guessing.toml".into()],
        Some(("KAMIGUARD_CODE_KEY", "test-key")),
    );
    assert!(out.contains("code-shared-by-accounts"), "{out}");
    assert!(
        !out.contains("KAMI-SECRET") && !err.contains("KAMI-SECRET"),
        "{out}\n{err}"
    );
    let decision: serde_json::Value = serde_json::from_str(out.lines().next().unwrap_or("{}")).expect("json");
    assert_eq!(
        decision["subject"].as_str().map(str::len),
        Some(64),
        "card subject is the HMAC-SHA256 hex"
    );
    assert!(
        err.contains("line 5: field `ts`: must be an RFC 3339 timestamp"),
        "{err}"
    );
}

#[test]
fn replay_without_a_code_key_rejects_raw_codes_with_a_reason() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let events = tmp.path().join("raw.jsonl");
    std::fs::write(&events, "{\"event_id\":\"r\",\"ts\":\"2026-11-22T10:00:00Z\",\"kind\":\"redemption\",\"outcome\":\"success\",\"card\":{\"code\":\"K-1\"},\"account\":{\"id\":\"u\"}}\n").expect("write");
    let out = kamiguard()
        .current_dir(common::root())
        .args(["replay", "--rules", "config/rules/10-guessing.toml"])
        .arg(&events)
        .env_remove("KAMIGUARD_CODE_KEY")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 1: `card.code` is present but no code-hash key is configured"),
        "{err}"
    );
}

#[test]
fn replay_refuses_the_geo_rules_without_databases() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let events = tmp.path().join("e.jsonl");
    std::fs::write(&events, "").expect("write");
    let out = kamiguard()
        .current_dir(common::root())
        .arg("replay")
        .arg(&events)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("config/rules/30-geo.toml:4:1: rule `account-takeover` needs the GeoIP2/GeoLite2 City database"),
        "{err}"
    );
}

#[test]
fn test_rules_command_passes_on_the_golden_folders_and_fails_on_a_bad_one() {
    let (_dir, config, _) = common::fixture_geo();
    let geo = geo_args(&config);
    let out = kamiguard()
        .current_dir(common::root())
        .args(["test-rules", "tests/scenarios"])
        .args(&geo)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.trim_end().ends_with("38 passed, 0 failed"), "{stdout}");

    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        common::root().join("tests/scenarios/bulk-drain-legit/events.jsonl"),
        tmp.path().join("events.jsonl"),
    )
    .expect("copy");
    std::fs::write(tmp.path().join("expected.jsonl"), "").expect("write");
    let out = kamiguard()
        .current_dir(common::root())
        .arg("test-rules")
        .arg(tmp.path())
        .args(&geo)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"rule\":\"corporate-bulk-review\""));
}

/// The demo's traffic has every attack of the pack mixed in: within its
/// first 20,000 attempts (ten seconds at the default rate) every shipped
/// rule that can in a minute fires.
#[test]
fn demo_runs_the_pipeline_on_the_mock_cluster_and_every_shipped_rule_fires() {
    let out = kamiguard()
        .args(["demo", "--events", "20000", "--rate", "20000"])
        .env_remove("KAMIGUARD_CODE_KEY")
        .output()
        .expect("run demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("kcat -b 127.0.0.1:"),
        "prints the bootstrap address: {stdout}"
    );
    // One message in a thousand is malformed on purpose.
    assert!(stdout.contains("attempts 19980  dead letters 20"), "{stdout}");
    let all = kamiguard::enrich::GeoNeeds {
        city: true,
        asn: true,
        anonymous: true,
    };
    let pack = kamiguard::rules::load_rules(&common::root().join("config/rules"), all).expect("the shipped pack");
    assert_eq!(pack.rules.len(), 19);
    // The final table: one row per (rule, action, mode) that fired.
    let fired: Vec<&str> = stdout.lines().filter_map(|l| l.split_whitespace().next()).collect();
    // A surge rule decides only against a baseline of its own history (a
    // day of hours, shipped): the demo's minute of traffic cannot show it,
    // and its batch fields are not in the generated traffic. Its golden
    // scenario does (tests/scenarios/batch-alarm).
    let demo_can_show =
        |r: &&kamiguard::rules::CompiledRule| !matches!(r.kind, kamiguard::rules::CompiledKind::Surge { .. });
    for rule in pack.rules.iter().filter(demo_can_show) {
        assert!(
            fired.contains(&&*rule.id),
            "{} should fire in the demo traffic:\n{stdout}",
            rule.id
        );
    }
}

#[test]
fn demo_stops_cleanly_on_ctrl_c() {
    let child = kamiguard()
        .args(["demo", "--rate", "5000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start demo");
    std::thread::sleep(std::time::Duration::from_secs(3));
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill -INT")
        .success());
    let out = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("attempts ") && stdout.contains("rule "),
        "a last summary: {stdout}"
    );
}

#[test]
fn kcat_attaches_to_the_demo_cluster_at_the_printed_address() {
    use std::io::{BufRead, BufReader};
    let mut child = kamiguard()
        .args(["demo", "--rate", "3000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start demo");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let bootstrap = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.split("kcat -b ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .map(str::to_owned)
        })
        .expect("the demo prints a kcat command");
    // Keep draining the demo's output so it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    // The first decision, whenever it comes. A kcat started in the cluster's
    // first instants may leave at once with nothing and exit 0 (seen here):
    // ask again, at most five times.
    let mut out = None;
    for _ in 0..5 {
        let o = std::process::Command::new("timeout")
            .args([
                "30",
                "kcat",
                "-b",
                &bootstrap,
                "-C",
                "-t",
                "kamiguard.decisions",
                "-c",
                "1",
                "-q",
            ])
            .output()
            .expect("kcat (scripts/setup.sh installs Debian's kcat)");
        if !o.stdout.is_empty() || !o.status.success() {
            out = Some(o);
            break;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    let _ = child.kill();
    let _ = child.wait();
    let out = out.expect("kcat read nothing from the demo cluster, five times");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let decision: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert!(
        decision["decision_id"].is_string() && decision["rule"].is_string(),
        "{decision}"
    );
}

#[test]
fn run_refuses_to_start_without_a_code_key_and_says_how_to_set_one() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("kamiguard.toml");
    let rules = common::root().join("config/rules/10-guessing.toml");
    std::fs::write(
        &config,
        format!(
            "rules = \"{}\"\n[http]\nenabled = false\n[kafka]\nbrokers = \"127.0.0.1:1\"\n",
            rules.display()
        ),
    )
    .expect("config");
    let out = kamiguard()
        .args(["run", "--config"])
        .arg(&config)
        .env_remove("KAMIGUARD_CODE_KEY")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no code-hash key: set KAMIGUARD_CODE_KEY"), "{stderr}");
}

#[test]
fn replay_applies_an_allowlist_dump_and_its_expiry_on_event_time() {
    let (_dir, config, _) = common::fixture_geo();
    let geo = geo_args(&config);
    let events = common::root().join("tests/scenarios/single-ip-guessing/events.jsonl");
    let (out, _) = replay(&events, &geo, None);
    let decisions = without_decided_at(&out);
    // The address's block (and the guessing account's challenge).
    let blocks: Vec<_> = decisions.iter().filter(|d| d["rule"] == "single-ip-guessing").collect();
    assert_eq!(blocks.len(), 1, "{out}");
    let ip = blocks[0]["subject"].as_str().expect("subject").to_string();
    let first_ts = std::fs::read_to_string(&events).expect("events");
    let first: serde_json::Value = serde_json::from_str(first_ts.lines().next().expect("a line")).expect("json");

    let tmp = tempfile::tempdir().expect("tempdir");
    let list = tmp.path().join("allowlist.jsonl");
    let with_list = |text: &str| {
        std::fs::write(&list, text).expect("write");
        let out = kamiguard()
            .current_dir(common::root())
            .arg("replay")
            .arg(&events)
            .args(&geo)
            .arg("--allowlist")
            .arg(&list)
            .output()
            .expect("replay");
        (
            out.status.success(),
            without_decided_at(&String::from_utf8_lossy(&out.stdout)),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The topic's records as kcat prints them: an entry, then one for
    // another network, removed again.
    let (ok, got, err) = with_list(&format!(
        "{{\"kind\":\"cidr\",\"value\":\"{ip}/32\",\"by\":\"oncall\"}}\n{{\"kind\":\"cidr\",\"value\":\"10.0.0.0/8\"}}\n{{\"kind\":\"cidr\",\"value\":\"10.0.0.0/8\",\"removed\":true}}\n"
    ));
    assert!(ok, "{err}");
    assert!(
        !got.iter().any(|d| d["subject"] == ip.as_str()),
        "the allowlisted address was decided on: {got:?}"
    );
    // An entry that expired (event time) before the attack exempts nothing.
    let (ok, got, err) = with_list(&format!(
        "{{\"kind\":\"cidr\",\"value\":\"{ip}/32\",\"expires\":\"{}\"}}\n",
        first["ts"].as_str().expect("ts")
    ));
    assert!(ok, "{err}");
    assert_eq!(got, decisions);
    // A broken record stops the replay with its line.
    let (ok, _, err) = with_list("{\"kind\":\"account\",\"value\":\"u\"}\n{\"kind\":\"cidr\",\"value\":\"nope\"}\n");
    assert!(!ok);
    assert!(err.contains("allowlist.jsonl:2: `value` must be a CIDR"), "{err}");
}

/// The output end of a pipe closed by its reader (`| head`, `| tee` stopped
/// with Ctrl-C) ends the output: exit 0, no panic, no "Broken pipe".
#[test]
fn a_reader_that_closes_the_pipe_is_a_normal_end() {
    use std::process::Stdio;
    let (_dir, config, _) = common::fixture_geo();
    let geo = geo_args(&config);
    let events = common::root().join("tests/scenarios/single-ip-guessing/events.jsonl");
    let closed = |cmd: &mut std::process::Command| {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start");
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "{err}");
        assert!(!err.contains("Broken pipe") && !err.contains("panicked"), "{err}");
    };
    closed(
        kamiguard()
            .current_dir(common::root())
            .arg("replay")
            .arg(&events)
            .args(&geo),
    );
    closed(
        kamiguard()
            .current_dir(common::root())
            .args(["check-rules", "config/rules"]),
    );
    closed(
        kamiguard()
            .current_dir(common::root())
            .args(["test-rules", "tests/scenarios"])
            .args(&geo),
    );

    // The demo into a pipe whose reader stops after its first lines, as
    // `kamiguard demo | head -3` does.
    let mut child = kamiguard()
        .args(["demo", "--rate", "5000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start demo");
    {
        use std::io::{BufRead, BufReader};
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        for _ in 0..3 {
            lines.next().expect("a line").expect("utf-8");
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the demo kept running after its reader left");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err).expect("stderr");
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(!err.contains("Broken pipe") && !err.contains("panicked"), "{err}");
}

/// Without a terminal the demo prints a plain line every few seconds.
#[test]
fn the_demo_without_a_terminal_prints_plain_summary_lines() {
    let child = kamiguard()
        .args(["demo", "--rate", "2000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start demo");
    std::thread::sleep(std::time::Duration::from_secs(12));
    let _ = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines = stdout.lines().filter(|l| l.starts_with("attempts ")).count();
    // Two periodic lines in 12 s, and the last summary.
    assert!(lines >= 3, "{stdout}");
    assert!(!stdout.contains('\x1b'), "no terminal codes into a pipe: {stdout:?}");
}

/// `KAMIGUARD_CODE_KEY_FILE` is a path of the process (relative to where it
/// runs), also with a config file in another folder: the key is read once,
/// from there, and used.
#[test]
fn a_code_key_file_from_the_environment_is_read_where_the_process_runs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let etc = tmp.path().join("etc");
    std::fs::create_dir(&etc).expect("etc");
    std::fs::write(
        etc.join("kamiguard.toml"),
        format!(
            "rules = \"{}\"\n",
            common::root().join("config/rules/10-guessing.toml").display()
        ),
    )
    .expect("config");
    std::fs::write(tmp.path().join("code-key"), "test-key\n").expect("key");
    let events = tmp.path().join("raw.jsonl");
    let mut text = String::new();
    for i in 0..4 {
        text.push_str(&format!(
            "{{\"event_id\":\"r-{i}\",\"ts\":\"2026-11-22T10:00:0{i}+08:00\",\"kind\":\"redemption\",\"outcome\":\"wrong_pin\",\"card\":{{\"code\":\"KAMI-SECRET-7788\"}},\"account\":{{\"id\":\"u-raw-{i}\"}}}}\n"
        ));
    }
    std::fs::write(&events, text).expect("write");
    let out = kamiguard()
        .current_dir(tmp.path())
        .env_remove("KAMIGUARD_CODE_KEY")
        .env("KAMIGUARD_CODE_KEY_FILE", "code-key")
        .args(["replay", "raw.jsonl", "--config", "etc/kamiguard.toml"])
        .output()
        .expect("replay");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("code-shared-by-accounts"),
        "hashed with the key: {stdout}\n{stderr}"
    );
    assert!(!stderr.contains("no_code_key"), "{stderr}");
}

/// The issuer's raw decoys become a honey list through `hash-codes` (with
/// the deployment's code key); an attempt that gives a decoy raw, as
/// `card.code`, is hashed on arrival and caught. No raw code reaches the
/// list, the decisions or the logs, and a raw code put in a list by mistake
/// is refused without being shown.
#[test]
fn a_raw_decoy_code_is_hashed_on_arrival_and_caught_by_a_honey_list_made_with_hash_codes() {
    use std::io::Write as _;
    const KEY: &str = "honey-test-code-key";
    let decoys = ["XMI-DECOY-0001-7731", "XMI-DECOY-0002-1180"];
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut child = kamiguard()
        .arg("hash-codes")
        .env("KAMIGUARD_CODE_KEY", KEY)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("hash-codes");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{}\n\n{}\n", decoys[0], decoys[1]).as_bytes())
        .expect("write codes");
    let out = child.wait_with_output().expect("hash-codes ends");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(
        list.lines().count(),
        2,
        "one hash per code, blank lines skipped: {list}"
    );
    assert!(list.lines().all(|l| l.len() == 64), "{list}");
    for d in decoys {
        assert!(!list.contains(d) && !String::from_utf8_lossy(&out.stderr).contains(d));
    }
    std::fs::create_dir(tmp.path().join("rules")).expect("mkdir");
    std::fs::write(tmp.path().join("rules/decoys.txt"), &list).expect("list");
    std::fs::write(
        tmp.path().join("rules/honey.toml"),
        "[[rule]]\nid = \"honey\"\nkind = \"honey\"\nhoney_list = \"decoys.txt\"\nscope = \"account\"\naction = \"freeze\"\nscore = 100\n",
    )
    .expect("rule");
    let attempt = |id: &str, account: &str, code: &str| {
        format!(
            r#"{{"event_id":"{id}","ts":"2026-11-22T10:00:0{}Z","kind":"redemption","outcome":"invalid_code","card":{{"code":"{code}"}},"account":{{"id":"{account}"}}}}"#,
            id.len() % 10
        )
    };
    let events = tmp.path().join("events.jsonl");
    std::fs::write(
        &events,
        [
            attempt("e-1", "u-honest", "XMI-REAL-0003-5512"),
            attempt("e-22", "u-thief", decoys[1]),
        ]
        .join("\n"),
    )
    .expect("events");
    let replay = |key: &str| {
        kamiguard()
            .arg("replay")
            .arg(&events)
            .arg("--rules")
            .arg(tmp.path().join("rules"))
            .env("KAMIGUARD_CODE_KEY", key)
            .env("RUST_LOG", "debug")
            .output()
            .expect("replay")
    };
    let out = replay(KEY);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let decisions = without_decided_at(&String::from_utf8(out.stdout.clone()).expect("utf-8"));
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    assert_eq!(decisions[0]["rule"], "honey");
    assert_eq!(decisions[0]["subject"], "u-thief");
    assert_eq!(decisions[0]["evidence"]["honey_list"], "decoys.txt");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for d in decoys.iter().chain(&["XMI-REAL-0003-5512"]) {
        assert!(!all.contains(d), "a raw code reached the output: {d}");
    }
    // Hashed under another key, the same decoy is another hash: not caught.
    let other = replay("another-deployments-key");
    assert!(other.status.success());
    assert!(other.stdout.is_empty(), "{}", String::from_utf8_lossy(&other.stdout));

    // A raw code in a list is refused, by line, without being shown.
    std::fs::write(tmp.path().join("rules/decoys.txt"), format!("{list}{}\n", decoys[0])).expect("list");
    let check = kamiguard()
        .arg("check-rules")
        .arg(tmp.path().join("rules"))
        .output()
        .expect("check-rules");
    let said = String::from_utf8_lossy(&check.stderr).to_string() + &String::from_utf8_lossy(&check.stdout);
    assert!(!check.status.success());
    assert!(said.contains("line 3") && said.contains("not a code hash"), "{said}");
    assert!(!said.contains(decoys[0]), "{said}");
}
