//! Any bytes as an attempt event: parsing and validation never panic, a
//! refusal always has a reason code, the fast path reads nothing otherwise
//! than serde_json does, and a dead letter never carries the raw code it was
//! given.
#![no_main]

use kamiguard::event::{fast, parse, CodeHasher};
use kamiguard::kafka::dead_letter::redact;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let hasher = CodeHasher::with_key(b"fuzz-key");
    if let Ok(text) = std::str::from_utf8(data) {
        assert!(fast::agrees_with_serde(text), "the fast path and serde_json differ");
    }
    match parse(data, &hasher) {
        Ok(event) => assert!(!event.event_id.is_empty()),
        Err(e) => assert!(!e.reason().is_empty() && !e.to_string().is_empty()),
    }
    if let Some((clean, _)) = redact(data, &hasher) {
        let v: serde_json::Value = serde_json::from_slice(&clean).expect("redacted output is JSON");
        assert!(v["card"].get("code").is_none(), "a raw code survived redaction");
    }
});
