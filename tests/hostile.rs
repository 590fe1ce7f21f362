//! What one hostile or careless message must not do: move the engine's clock
//! for everyone, or make the order attempts arrive in change a verdict.

mod common;

use std::collections::BTreeMap;

use common::kamiguard;
use serde_json::Value;

fn geo_args(config: &kamiguard::enrich::GeoConfig) -> Vec<String> {
    [
        ("--city", &config.city),
        ("--asn", &config.asn),
        ("--anonymous", &config.anonymous),
    ]
    .into_iter()
    .filter_map(|(flag, p)| Some([flag.to_string(), p.as_ref()?.display().to_string()]))
    .flatten()
    .collect()
}

/// `kamiguard replay` of `lines`: decisions by id (without `decided_at`), and
/// standard error.
fn replay(lines: &[Vec<u8>], geo: &[String]) -> (BTreeMap<String, Value>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("events.jsonl");
    std::fs::write(&path, lines.join(&b'\n')).expect("write");
    let out = kamiguard()
        .current_dir(common::root())
        .arg("replay")
        .arg(&path)
        .args(geo)
        .output()
        .expect("replay");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let decisions = String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).expect("json");
            v.as_object_mut().expect("object").remove("decided_at");
            (v["decision_id"].as_str().expect("id").to_string(), v)
        })
        .collect();
    (decisions, String::from_utf8(out.stderr).expect("utf-8"))
}

#[test]
fn attempts_stamped_ahead_of_their_records_change_no_decision_in_replay() {
    let (_dir, config, _) = common::fixture_geo();
    let geo = geo_args(&config);
    let (timed, clean) = common::poisoned_stream(30_000, 41);
    let (expected, _) = replay(&clean, &geo);
    assert!(
        expected.len() > 50,
        "the traffic should make decisions: {}",
        expected.len()
    );

    // A topic dumped with its record timestamps (kcat's `%T\t%s`).
    let dumped: Vec<Vec<u8>> = timed
        .iter()
        .map(|(at, m)| [format!("{at}\t").into_bytes(), m.clone()].concat())
        .collect();
    let (got, stderr) = replay(&dumped, &geo);
    assert_eq!(got, expected, "the poisoned attempts changed decisions\n{stderr}");
    let poisoned = timed.len() - clean.len();
    assert!(
        stderr.contains(&format!("rejected ts_ahead: {poisoned}")),
        "each poisoned attempt refused with its own reason\n{stderr}"
    );
    assert!(
        stderr.contains("line 38: field `ts` is 28800 s ahead of when the message was received (at most 60 s"),
        "{stderr}"
    );
}
