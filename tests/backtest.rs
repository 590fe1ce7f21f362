//! `kamiguard backtest` as an analyst uses it, on the tiny labeled history
//! in `tests/backtest/` whose figures were worked out by hand:
//!
//! | attempts | account (label) | address | what the rules do |
//! |---|---|---|---|
//! | e1-e3 failed | u-thief (fraud, guessing) | 10.0.0.1 | `guessing` blocks the address at e3 |
//! | e4 ¥2,000 | u-rich (legit, big-spender) | 10.0.0.2 | `big-card` challenges |
//! | e5 ¥1,500 | u-mule (fraud, cashout) | 10.0.0.3 | `big-card` challenges |
//! | e6-e7 failed | u-guess2 (fraud, guessing) | 10.0.0.4 | missed at threshold 3 |
//! | e8 ¥1,500 | u-other (no label) | 10.0.0.5 | `big-card` challenges |
//! | e9-e11 failed | u-typo (legit), address labeled legit too | 10.0.0.6 | `guessing` blocks |
//! | e12 ¥10 | u-neighbour (legit) | 10.0.0.1 | turned away by the block in force |
//!
//! u-absent is labeled fraud and never attempts: not scored.

mod common;

use std::path::{Path, PathBuf};

use common::kamiguard;
use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/backtest")
}

/// `kamiguard backtest` on the golden history and rules with `labels`.
fn command(labels: &Path) -> std::process::Command {
    let d = dir();
    let mut cmd = kamiguard();
    cmd.arg("backtest")
        .arg(d.join("events.jsonl"))
        .arg("--labels")
        .arg(labels)
        .arg("--rules")
        .arg(d.join("rules.toml"));
    cmd
}

fn backtest(extra: &[&str]) -> Value {
    let out = command(&dir().join("labels.jsonl"))
        .arg("--json")
        .args(extra)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "backtest failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

fn rule<'a>(score: &'a Value, id: &str) -> &'a Value {
    score["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .find(|r| r["rule"] == id)
        .unwrap_or_else(|| panic!("rule {id}"))
}

/// (decisions, on fraud, on legit, unlabeled, caught, fraud subjects)
fn matrix(r: &Value) -> [u64; 6] {
    [
        "decisions",
        "on_fraud",
        "on_legit",
        "unlabeled",
        "caught",
        "fraud_subjects",
    ]
    .map(|k| r[k].as_u64().expect(k))
}

#[test]
fn the_score_is_the_hand_computed_one() {
    let r = backtest(&[]);
    let s = &r["score"];
    assert_eq!(s["events"], 12);
    assert_eq!(
        (s["fraud_labeled"].as_u64(), s["legit_labeled"].as_u64()),
        (Some(3), Some(4))
    );
    assert_eq!(s["labeled_absent"], 1, "u-absent made no attempt");

    // The pack: blocks of 10.0.0.1 (fraud, through u-thief's attempts) and
    // 10.0.0.6 (legit); challenges of u-rich (legit), u-mule (fraud) and
    // u-other (unlabeled).
    let pack = &s["pack"];
    assert_eq!(matrix(pack), [5, 2, 2, 1, 2, 3]);
    assert!((pack["recall"].as_f64().expect("recall") - 2.0 / 3.0).abs() < 1e-9);
    assert_eq!(pack["precision"], 0.5);
    // u-typo and its address blocked, u-neighbour turned away by the block
    // of 10.0.0.1 (which is still on fraud: it stopped u-thief), u-rich
    // challenged.
    assert_eq!(pack["legit_subjects"], serde_json::json!({"block": 3, "challenge": 1}));
    assert_eq!(pack["legit_decisions"], serde_json::json!({"block": 1, "challenge": 1}));
    // u-thief: its third attempt, 20 s after its first; u-mule: its first.
    assert_eq!(pack["attempts_to_catch"]["median"], 2.0);
    assert_eq!(pack["attempts_to_catch"]["max"], 3.0);
    assert_eq!(pack["secs_to_catch"]["max"], 20.0);
    // Who got away, for the analyst to look at next.
    assert_eq!(pack["missed"], serde_json::json!(["account:u-guess2 (guessing)"]));

    let guessing = rule(s, "guessing");
    assert_eq!(matrix(guessing), [2, 1, 1, 0, 1, 3]);
    assert_eq!(guessing["legit_subjects"], serde_json::json!({"block": 3}));
    let big = rule(s, "big-card");
    assert_eq!(matrix(big), [3, 1, 1, 1, 1, 3]);
    assert_eq!(big["legit_subjects"], serde_json::json!({"challenge": 1}));

    // Recall by family: the cashout caught, half the guessing.
    let family = |name: &str, verdict: &str| {
        s["families"]
            .as_array()
            .expect("families")
            .iter()
            .find(|f| f["family"] == name && f["verdict"] == verdict)
            .unwrap_or_else(|| panic!("family {name}"))
            .clone()
    };
    assert_eq!(family("cashout", "fraud")["recall"], 1.0);
    assert_eq!(family("guessing", "fraud")["recall"], 0.5);
    assert_eq!(family("typo", "legit")["by_action"], serde_json::json!({"block": 2}));
    assert_eq!(
        family("neighbour", "legit")["by_action"],
        serde_json::json!({"block": 1})
    );
}

#[test]
fn the_diff_against_a_baseline_names_exactly_what_changes() {
    // The baseline blocks at two failures: it also stops u-guess2's address.
    let r = backtest(&["--baseline", &dir().join("baseline.toml").display().to_string()]);
    let diff = r["baseline"]["diff"].as_array().expect("diff");
    assert_eq!(diff.len(), 1, "one rule changes: {diff:?}");
    assert_eq!(diff[0]["rule"], "guessing");
    assert_eq!(
        diff[0]["verdicts"],
        serde_json::json!(["would no longer block 1 address: 1 fraud, 0 legit, 0 unlabeled"])
    );
    let changes = diff[0]["changes"].as_array().expect("changes");
    assert_eq!(changes.len(), 1);
    let c = &changes[0];
    assert_eq!(
        (
            &c["kind"],
            &c["scope"],
            &c["subject"],
            &c["from"],
            &c["to"],
            &c["class"]
        ),
        (
            &Value::from("disappears"),
            &Value::from("ip"),
            &Value::from("10.0.0.4"),
            &Value::from("block"),
            &Value::Null,
            &Value::from("fraud")
        )
    );
    assert_eq!(c["sample_event_ids"], serde_json::json!(["e7", "e6"]));
    // The baseline's own score, beside the candidate's.
    assert_eq!(matrix(&r["baseline"]["score"]["pack"]), [6, 3, 2, 1, 3, 3]);
}

#[test]
fn a_sweep_trades_recall_for_friction_monotonically() {
    let r = backtest(&["--sweep", "guessing.threshold=1..4/1"]);
    let points = r["sweep"]["points"].as_array().expect("points");
    let values: Vec<u64> = points.iter().map(|p| p["value"].as_u64().expect("value")).collect();
    assert_eq!(values, [1, 2, 3, 4]);
    let caught: Vec<u64> = points
        .iter()
        .map(|p| p["rule"]["caught"].as_u64().expect("caught"))
        .collect();
    assert_eq!(caught, [2, 2, 1, 0]);
    // A higher line catches no one a lower one missed, and touches no
    // honest subject a lower one spared.
    let legit: Vec<u64> = points
        .iter()
        .map(|p| {
            p["rule"]["legit_subjects"]
                .as_object()
                .expect("legit")
                .values()
                .map(|v| v.as_u64().unwrap_or(0))
                .sum()
        })
        .collect();
    assert_eq!(legit, [3, 3, 3, 0]);
    for w in caught.windows(2).chain(legit.windows(2)) {
        assert!(w[0] >= w[1], "not monotone: {caught:?} {legit:?}");
    }
}

#[test]
fn a_sweep_of_something_a_rule_cannot_take_is_refused() {
    let out = command(&dir().join("labels.jsonl"))
        .args(["--sweep", "big-card.window_secs=60..120/60"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("big-card.window_secs = 60: the rule refuses it"), "{err}");
}

#[test]
fn bad_labels_are_refused_with_line_and_field() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let labels = tmp.path().join("labels.jsonl");
    std::fs::write(
        &labels,
        "{\"scope\":\"account\",\"subject\":\"u-1\",\"label\":\"fraud\",\"at\":\"2026-12-01T00:00:00Z\",\"source\":\"chargeback\"}\n\
         {\"scope\":\"account\",\"subject\":\"u-2\",\"label\":\"fraud\",\"at\":\"2026-12-01T00:00:00Z\"}\n",
    )
    .expect("write");
    let out = command(&labels).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2: missing field `source`"), "{err}");
    assert!(out.stdout.is_empty(), "no score on a partly read file");
}

/// The report opened in a real browser (Debian's `chromium`, headless):
/// the page renders, the charts are drawn in their colours, the tables and
/// the diff are there.
#[test]
fn the_report_renders_in_chromium_with_its_charts() {
    let chromium = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| {
            std::process::Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("chromium is installed by scripts/setup.sh");
    let tmp = tempfile::tempdir().expect("tempdir");
    let html = tmp.path().join("report.html");
    let d = dir();
    let out = command(&d.join("labels.jsonl"))
        .arg("--baseline")
        .arg(d.join("baseline.toml"))
        .args(["--sweep", "guessing.threshold=1..4/1", "--report"])
        .arg(&html)
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let page = std::fs::read_to_string(&html).expect("report");
    for id in [
        "tiles",
        "families",
        "rules",
        "chart-over-time",
        "chart-sweep",
        "sweep",
        "diff",
    ] {
        assert!(page.contains(&format!("id=\"{id}\"")), "no #{id}");
    }
    assert!(!page.contains("<script"), "self-contained, no script");
    assert!(
        !page.replace("http://www.w3.org/2000/svg", "").contains("http"),
        "nothing fetched from the network"
    );
    assert!(page.contains("would no longer block 1 address"));

    let shot = tmp.path().join("report.png");
    let status = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1280,1800",
        ])
        .arg(format!("--user-data-dir={}", tmp.path().join("profile").display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", html.display()))
        .output()
        .expect("chromium runs");
    assert!(
        shot.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).expect("png")));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("a frame");
    let channels = info.color_type.samples();
    let pixels: Vec<&[u8]> = buf[..info.buffer_size()].chunks(channels).collect();
    // Pixels near a chart colour: the bars and the recall line (blue), the
    // precision line (green), the friction bars (red, translucent).
    let near = |rgb: [u8; 3], tolerance: i32| {
        pixels
            .iter()
            .filter(|p| (0..3).all(|i| (p[i] as i32 - rgb[i] as i32).abs() <= tolerance))
            .count()
    };
    let blue = near([0x25, 0x63, 0xeb], 12);
    let green = near([0x16, 0xa3, 0x4a], 12);
    let white = near([255, 255, 255], 0);
    assert!(white < pixels.len() * 97 / 100, "the page is nearly blank");
    assert!(blue > 2_000, "the bars and the recall line drew: {blue} blue pixels");
    assert!(green > 500, "the precision line drew: {green} green pixels");
}
