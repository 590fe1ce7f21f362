//! The operator's side, checked with Debian's `prometheus` and `promtool`:
//! the scrape config and alert rules are valid, the alert unit tests pass,
//! and a real Prometheus scraping `kamiguard demo` gets series for every
//! dashboard panel query and evaluates every alert expression.

mod common;

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::broker::free_port;
use serde_json::Value;

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(common::root())
        .output()
        .expect("promtool (scripts/setup.sh installs Debian's prometheus)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn promtool_accepts_the_config_and_rules_and_the_alert_tests_pass() {
    promtool(&["check", "config", "deploy/prometheus/prometheus.yml"]);
    let rules = promtool(&["check", "rules", "deploy/prometheus/alerts.yml"]);
    assert!(rules.contains("SUCCESS: 10 rules found"), "{rules}");
    promtool(&["test", "rules", "deploy/prometheus/alerts_test.yml"]);
}

/// GET `path` from `port` on loopback; the body.
fn get(port: u16, path: &str) -> String {
    common::http(port, "GET", path, None, None).1
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn query(port: u16, q: &str) -> Value {
    serde_json::from_str(&get(port, &format!("/api/v1/query?query={}", encode(q)))).expect("prometheus json")
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every `expr:` of the alert rules file.
fn alert_exprs(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).expect("alerts.yml");
    let mut exprs = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(rest) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        if rest.trim() == "|" {
            let mut e = String::new();
            while let Some(next) = lines.peek() {
                if next.trim_start().starts_with("for:") || next.trim_start().starts_with("labels:") {
                    break;
                }
                e.push_str(next.trim());
                e.push(' ');
                lines.next();
            }
            exprs.push(e);
        } else {
            exprs.push(rest.trim().to_string());
        }
    }
    exprs
}

#[test]
fn prometheus_scrapes_the_demo_and_every_panel_and_alert_works() {
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics_port = free_port();
    let _demo = Killed(
        common::kamiguard()
            .args([
                "demo",
                "--rate",
                "3000",
                "--metrics",
                &format!("127.0.0.1:{metrics_port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("demo"),
    );
    let alerts = common::root().join("deploy/prometheus/alerts.yml");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: kamiguard\n    static_configs:\n      - targets: [\"127.0.0.1:{metrics_port}\"]\n",
            alerts.display()
        ),
    )
    .expect("config");
    let prom_port = free_port();
    let _prometheus = Killed(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (scripts/setup.sh installs it)"),
    );

    // Up, and long enough for rates and for librdkafka's 5 s statistics (lag).
    let deadline = Instant::now() + Duration::from_secs(60);
    let started = Instant::now();
    loop {
        let up = TcpStream::connect(("127.0.0.1", prom_port)).is_ok()
            && query(prom_port, "up{job=\"kamiguard\"}")["data"]["result"][0]["value"][1] == "1";
        if up && started.elapsed() > Duration::from_secs(15) {
            break;
        }
        assert!(Instant::now() < deadline, "prometheus never scraped the demo");
        std::thread::sleep(Duration::from_millis(500));
    }

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(common::root().join("deploy/grafana/dashboards/kamiguard.json")).expect("dashboard"),
    )
    .expect("dashboard json");
    let mut empty = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let answer = query(prom_port, expr);
            assert_eq!(answer["status"], "success", "{}: {expr}: {answer}", panel["title"]);
            if answer["data"]["result"].as_array().is_none_or(|r| r.is_empty()) {
                empty.push(format!("{}: {expr}", panel["title"]));
            }
        }
    }
    assert!(empty.is_empty(), "panel queries with no series: {empty:#?}");

    let exprs = alert_exprs(&alerts);
    assert_eq!(exprs.len(), 10);
    for expr in &exprs {
        let answer = query(prom_port, expr);
        assert_eq!(answer["status"], "success", "{expr}: {answer}");
        // Each metric an alert reads is exported.
        for name in expr
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("kamiguard_"))
        {
            let series = query(prom_port, &format!("count({{__name__=\"{name}\"}})"));
            assert!(
                series["data"]["result"].as_array().is_some_and(|r| !r.is_empty()),
                "alert reads {name}, which the demo does not export"
            );
        }
    }
    let rules: Value = serde_json::from_str(&get(prom_port, "/api/v1/rules")).expect("rules json");
    let group = &rules["data"]["groups"][0];
    assert_eq!(group["rules"].as_array().map(Vec::len), Some(10));
    for rule in group["rules"].as_array().expect("rules") {
        assert_eq!(rule["health"], "ok", "{rule}");
    }
}
