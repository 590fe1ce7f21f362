//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use kamiguard::enrich::{GeoConfig, GeoDatabases};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Writes the fixture databases into a fresh temporary folder and opens them.
pub fn fixture_geo() -> (tempfile::TempDir, GeoConfig, Arc<GeoDatabases>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = kamiguard::tools::fixtures::write_geo_fixtures(dir.path()).expect("write fixture databases");
    let dbs = GeoDatabases::open(&config).expect("open fixture databases");
    (dir, config, Arc::new(dbs))
}

/// The built `kamiguard` binary.
pub fn kamiguard() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_kamiguard"))
}
pub mod broker;
pub mod pipeline;

/// Waits until something listens on loopback `port` (at most 30 s); `what`
/// names it in the failure.
pub fn wait_listening(port: u16, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// One HTTP/1.0 request to loopback `port`, with a bearer `token` and a JSON
/// `body` when given: (status, body text). HTTP/1.0, so the answer is never
/// chunked (Prometheus chunks larger HTTP/1.1 answers) and the connection
/// closes at its end.
pub fn http(port: u16, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A message with its record timestamp, ms.
pub type Timed = (i64, Vec<u8>);

/// A generated stream as a live upstream would produce it, each attempt with
/// its record timestamp (when it was received: its own event time), then
/// poisoned as issue reports found it: one copy of an honest attempt stamped
/// a year ahead in the middle, and one attempt in a hundred stamped eight
/// hours ahead (a service writing China time with a `+00:00` offset), their
/// records still received at the honest time. Returns the poisoned
/// (record timestamp, message) pairs and the honest messages without the
/// poisoned ones: what the decisions must be of.
pub fn poisoned_stream(count: u64, seed: u64) -> (Vec<Timed>, Vec<Vec<u8>>) {
    const HOUR_MS: i64 = 3_600_000;
    let generated = kamiguard::tools::generate::generate(count, seed, 100);
    let mut timed = Vec::new();
    let mut clean = Vec::new();
    for (i, line) in generated.lines().enumerate() {
        let mut v: serde_json::Value = serde_json::from_str(line).expect("generated json");
        let ts = kamiguard::event::parse_ts_ms(v["ts"].as_str().expect("ts")).expect("ts");
        if i as u64 == count / 2 {
            let mut copy = v.clone();
            copy["event_id"] = "poison-year".into();
            copy["ts"] = kamiguard::event::format_ts(ts + 365 * 24 * HOUR_MS).into();
            timed.push((ts, serde_json::to_vec(&copy).expect("json")));
        }
        if i % 100 == 37 {
            v["ts"] = kamiguard::event::format_ts(ts + 8 * HOUR_MS).into();
            timed.push((ts, serde_json::to_vec(&v).expect("json")));
            continue;
        }
        timed.push((ts, line.as_bytes().to_vec()));
        clean.push(line.as_bytes().to_vec());
    }
    (timed, clean)
}
