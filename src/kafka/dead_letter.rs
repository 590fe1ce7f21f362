//! Dead letters (docs/contract.md, "Dead letters"): a refused message goes to
//! the dead-letter topic with headers naming the reason and where it came
//! from, and never with a raw card code in it.
//!
//! The body is never the bytes as sent. A byte search for `"code"` misses
//! `"co\u0064e"`, a repeated key or a code beside invalid UTF-8, so redaction
//! works on what a JSON parser read:
//!
//! - **parsed**: the message parses as JSON (after replacing invalid UTF-8
//!   with U+FFFD where it must): the body is that value written anew, with
//!   `card.code` replaced by its hash and any other string containing the
//!   code replaced by `[redacted]`. Escapes are written plainly and of a
//!   repeated key only the last survives, as serde_json reads it.
//! - **withheld**: too large to read, or not JSON at all (truncated, trailing
//!   bytes, nested too deep): nothing says where a code could be, so the body
//!   is empty and the headers carry its length and a keyed digest of it
//!   (HMAC-SHA256 under the code key), so whoever holds the original and the
//!   key can tell which message it was.
//!
//! A dead letter the broker still refuses (a broker whose `message.max.bytes`
//! is below kamiguard's 64 KiB event limit) is sent again without a body,
//! marked `dropped`: see [`DeadLetter::without_body`].

use rdkafka::message::{Header, OwnedHeaders};
use serde_json::Value;

use crate::event::{CodeHasher, EventError, MAX_EVENT_BYTES};

/// Header names on every dead letter.
pub const REASON: &str = "kamiguard.reason";
pub const ERROR: &str = "kamiguard.error";
pub const SOURCE_TOPIC: &str = "kamiguard.source.topic";
pub const SOURCE_PARTITION: &str = "kamiguard.source.partition";
pub const SOURCE_OFFSET: &str = "kamiguard.source.offset";
/// What the body is: `parsed`, `withheld` or `dropped` (see the module doc).
pub const BODY: &str = "kamiguard.body";
/// Length in bytes of the message as it came.
pub const BYTES: &str = "kamiguard.bytes";
/// Lower-case hex HMAC-SHA256 of the message as it came, under the code key;
/// on withheld and dropped bodies.
pub const DIGEST: &str = "kamiguard.digest";
/// Present when a raw code was taken out of a parsed body: `hashed`
/// (replaced by `card.code_hash`) or `removed` (no key to hash it with).
pub const CODE: &str = "kamiguard.code";

/// What stands in for a string that contained a raw code.
pub const REDACTED: &str = "[redacted]";

/// Where a refused message came from.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

/// What goes to the dead-letter topic for one refused message.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub payload: Vec<u8>,
    /// (name, value) pairs, in order.
    pub headers: Vec<(&'static str, String)>,
}

impl DeadLetter {
    /// Headers for a Kafka record.
    pub fn kafka_headers(&self) -> OwnedHeaders {
        self.headers
            .iter()
            .fold(OwnedHeaders::new_with_capacity(self.headers.len()), |h, (k, v)| {
                h.insert(Header {
                    key: k,
                    value: Some(v.as_str()),
                })
            })
    }

    /// The same dead letter without its body, marked `dropped`: what is sent
    /// when the broker refuses the whole one, so one message can never stop
    /// the pipeline. Length and digest stay, so the message can still be
    /// found upstream.
    pub fn without_body(&self, payload: &[u8], hasher: &CodeHasher) -> DeadLetter {
        let mut headers: Vec<(&'static str, String)> = self
            .headers
            .iter()
            .filter(|(k, _)| ![BODY, DIGEST, CODE].contains(k))
            .cloned()
            .collect();
        headers.push((BODY, "dropped".into()));
        if let Some(d) = digest(payload, hasher) {
            headers.push((DIGEST, d));
        }
        DeadLetter {
            payload: Vec::new(),
            headers,
        }
    }

    /// The value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }
}

/// Builds the dead letter for `payload`, refused with `error`.
pub fn dead_letter(payload: &[u8], error: &EventError, source: Source<'_>, hasher: &CodeHasher) -> DeadLetter {
    let mut headers = vec![
        (REASON, error.reason().to_string()),
        (ERROR, error.to_string()),
        (SOURCE_TOPIC, source.topic.to_string()),
        (SOURCE_PARTITION, source.partition.to_string()),
        (SOURCE_OFFSET, source.offset.to_string()),
        (BYTES, payload.len().to_string()),
    ];
    let parsed = (payload.len() <= MAX_EVENT_BYTES)
        .then(|| read_json(payload))
        .flatten()
        .and_then(|value| redact_value(value, hasher));
    let body = match parsed {
        Some((body, code)) => {
            headers.push((BODY, "parsed".into()));
            if let Some(how) = code {
                headers.push((CODE, how.into()));
            }
            body
        }
        None => {
            headers.push((BODY, "withheld".into()));
            if let Some(d) = digest(payload, hasher) {
                headers.push((DIGEST, d));
            }
            Vec::new()
        }
    };
    DeadLetter { payload: body, headers }
}

/// The keyed digest of a message; `None` without a key (`run` refuses to
/// start without one, so only tests see it).
fn digest(payload: &[u8], hasher: &CodeHasher) -> Option<String> {
    hasher.digest(payload).map(|d| d.into_string())
}

/// The JSON value in `payload`, reading invalid UTF-8 as U+FFFD; `None` when
/// it is not one JSON value and nothing else.
fn read_json(payload: &[u8]) -> Option<Value> {
    match serde_json::from_slice(payload) {
        Ok(v) => Some(v),
        Err(_) => serde_json::from_str(&String::from_utf8_lossy(payload)).ok(),
    }
}

/// `value` written anew with its raw card code taken out (see the module
/// doc), and what was done with the code: `Some("hashed")`,
/// `Some("removed")`, or `None` when there was none.
fn redact_value(mut value: Value, hasher: &CodeHasher) -> Option<(Vec<u8>, Option<&'static str>)> {
    let code = value
        .get_mut("card")
        .and_then(Value::as_object_mut)
        .and_then(|card| card.remove("code"));
    let mut how = None;
    if let Some(code) = code {
        let text = match code {
            Value::String(s) => s,
            // A code sent as a number or anything else is still a secret.
            other => other.to_string(),
        };
        how = Some(match hasher.hash(&text) {
            Ok(hash) => {
                if let Some(card) = value.get_mut("card").and_then(Value::as_object_mut) {
                    card.entry("code_hash").or_insert_with(|| Value::String(hash.into()));
                }
                "hashed"
            }
            Err(_) => "removed",
        });
        if !text.is_empty() {
            scrub(&mut value, &text);
        }
    }
    Some((serde_json::to_vec(&value).ok()?, how))
}

/// Replaces every string, number and object key in `value` that contains `code`.
fn scrub(value: &mut Value, code: &str) {
    match value {
        Value::String(s) if s.contains(code) => *s = REDACTED.into(),
        Value::Number(n) if n.to_string().contains(code) => *value = Value::String(REDACTED.into()),
        Value::Array(items) => items.iter_mut().for_each(|v| scrub(v, code)),
        Value::Object(map) => {
            if map.keys().any(|k| k.contains(code)) {
                let old = std::mem::take(map);
                for (k, v) in old {
                    let k = if k.contains(code) { REDACTED.to_string() } else { k };
                    map.insert(k, v);
                }
            }
            map.values_mut().for_each(|v| scrub(v, code));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: Source<'static> = Source {
        topic: "kamiguard.attempts",
        partition: 2,
        offset: 41,
    };

    fn hasher() -> CodeHasher {
        CodeHasher::with_key(b"k")
    }

    fn letter(raw: &[u8], error: EventError) -> DeadLetter {
        dead_letter(raw, &error, SOURCE, &hasher())
    }

    fn text(d: &DeadLetter) -> String {
        let headers: Vec<String> = d.headers.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{} {}", String::from_utf8_lossy(&d.payload), headers.join(" "))
    }

    #[test]
    fn a_raw_code_is_replaced_by_its_hash() {
        let raw = br#"{"event_id":"e1","card":{"code":"XM-1234-SECRET","brand":"xiaomi"}}"#;
        let d = letter(raw, EventError::MissingField("ts".into()));
        assert!(!text(&d).contains("SECRET"), "{}", text(&d));
        let v: Value = serde_json::from_slice(&d.payload).unwrap();
        assert_eq!(
            v["card"]["code_hash"],
            hasher().hash("XM-1234-SECRET").unwrap().as_ref()
        );
        assert_eq!(v["card"]["brand"], "xiaomi");
        let expected = [
            ("kamiguard.reason", "missing_field"),
            ("kamiguard.error", "missing required field `ts`"),
            ("kamiguard.source.topic", "kamiguard.attempts"),
            ("kamiguard.source.partition", "2"),
            ("kamiguard.source.offset", "41"),
            ("kamiguard.bytes", &raw.len().to_string()),
            ("kamiguard.body", "parsed"),
            ("kamiguard.code", "hashed"),
        ]
        .map(|(k, v)| (k, v.to_string()));
        assert_eq!(d.headers, expected);
    }

    #[test]
    fn without_a_key_the_code_is_removed_and_a_numeric_code_is_still_secret() {
        let raw = br#"{"card":{"code":987654321}}"#;
        let d = dead_letter(raw, &EventError::NoCodeKey, SOURCE, &CodeHasher::without_key());
        assert_eq!(d.payload, br#"{"card":{}}"#);
        assert_eq!(d.header(CODE), Some("removed"));
        let d = letter(raw, EventError::NoCodeKey);
        assert_eq!(d.header(CODE), Some("hashed"));
        assert!(!text(&d).contains("987654321"));
    }

    /// Each of these carried the code in clear before redaction read parsed
    /// JSON: an escaped key, a repeated key, invalid UTF-8 beside the code,
    /// the code copied into another field.
    #[test]
    fn codes_hidden_from_a_byte_search_are_taken_out() {
        let cases: [&[u8]; 5] = [
            br#"{"event_id":"e1","card":{"co\u0064e":"XM-SECRET-77"}}"#,
            br#"{"card":{"code":"XM-SECRET-77","code":"XM-SECRET-78"}}"#,
            b"{\"card\":{\"brand\":\"x\xff\xfe\xfd\xfc\",\"code\":\"XM-SECRET-77\"}}",
            br#"{"card":{"code":"XM-SECRET-77"},"note":"typed XM-SECRET-77 twice","XM-SECRET-77":1}"#,
            br#"{"card":{"\u0063ode":"XM-\u0053ECRET-77"}}"#,
        ];
        for raw in cases {
            let d = letter(raw, EventError::NotUtf8);
            let t = text(&d);
            assert!(!t.contains("SECRET"), "{t}");
            assert_eq!(d.header(BODY), Some("parsed"), "{t}");
        }
    }

    #[test]
    fn what_does_not_parse_is_withheld_with_its_length_and_digest() {
        let cases: [&[u8]; 4] = [
            br#"{"card":{"code":"XM-SECRET-77"}"#,
            br#"{"card":{"code":"XM-SECRET-77"}} trailing"#,
            b"not json XM-SECRET-77",
            &[b'['; 300],
        ];
        for raw in cases {
            let d = letter(raw, EventError::NotJson("syntax error at line 1 column 9".into()));
            assert!(d.payload.is_empty());
            assert!(!text(&d).contains("SECRET"), "{}", text(&d));
            assert_eq!(d.header(BODY), Some("withheld"));
            assert_eq!(d.header(BYTES), Some(raw.len().to_string().as_str()));
            assert_eq!(d.header(DIGEST).map(str::len), Some(64));
        }
        // The digest tells two messages apart, and is keyed.
        let a = letter(b"{", EventError::NotUtf8);
        let b = letter(b"[", EventError::NotUtf8);
        assert_ne!(a.header(DIGEST), b.header(DIGEST));
        let other_key = dead_letter(b"{", &EventError::NotUtf8, SOURCE, &CodeHasher::with_key(b"other"));
        assert_ne!(a.header(DIGEST), other_key.header(DIGEST));
    }

    #[test]
    fn an_oversized_message_is_withheld_unread() {
        let mut raw = br#"{"card":{"code":"XM-SECRET-77"},"pad":""#.to_vec();
        raw.extend(std::iter::repeat_n(b'x', 2 << 20));
        raw.extend(br#""}"#);
        let d = letter(&raw, EventError::TooLarge(raw.len()));
        assert!(d.payload.is_empty());
        assert_eq!(d.header(BODY), Some("withheld"));
    }

    #[test]
    fn a_dead_letter_without_its_body_keeps_the_reason_and_says_so() {
        let raw = br#"{"card":{"code":"XM-SECRET-77"}}"#;
        let d = letter(raw, EventError::MissingField("ts".into())).without_body(raw, &hasher());
        assert!(d.payload.is_empty());
        assert_eq!(d.header(REASON), Some("missing_field"));
        assert_eq!(d.header(BODY), Some("dropped"));
        assert_eq!(d.header(CODE), None);
        assert_eq!(d.header(DIGEST).map(str::len), Some(64));
    }
}
