//! Dead letters (CONTRACT section 1): a refused message is written as it came,
//! with headers naming the reason and where it came from. The one change: a
//! raw `card.code` in a JSON message is replaced by its hash (`card.code_hash`)
//! before the message is written anywhere.

use std::borrow::Cow;

use rdkafka::message::{Header, OwnedHeaders};
use serde_json::Value;

use crate::event::{CodeHasher, EventError};

/// Header names on every dead letter.
pub const REASON: &str = "kamiguard.reason";
pub const ERROR: &str = "kamiguard.error";
pub const SOURCE_TOPIC: &str = "kamiguard.source.topic";
pub const SOURCE_PARTITION: &str = "kamiguard.source.partition";
pub const SOURCE_OFFSET: &str = "kamiguard.source.offset";
/// Present when a raw code was taken out: `hashed` (replaced by
/// `card.code_hash`) or `removed` (no key to hash it with).
pub const CODE: &str = "kamiguard.code";

/// Where a refused message came from.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

/// What goes to the dead-letter topic for one refused message.
#[derive(Debug)]
pub struct DeadLetter<'a> {
    pub payload: Cow<'a, [u8]>,
    pub headers: OwnedHeaders,
}

/// Builds the dead letter for `payload`, refused with `error`.
pub fn dead_letter<'a>(
    payload: &'a [u8],
    error: &EventError,
    source: Source<'_>,
    hasher: &CodeHasher,
) -> DeadLetter<'a> {
    let (payload, code) = match redact(payload, hasher) {
        Some((clean, how)) => (Cow::Owned(clean), Some(how)),
        None => (Cow::Borrowed(payload), None),
    };
    let (partition, offset) = (source.partition.to_string(), source.offset.to_string());
    let message = error.to_string();
    let mut headers = OwnedHeaders::new_with_capacity(6)
        .insert(header(REASON, error.reason()))
        .insert(header(ERROR, &message))
        .insert(header(SOURCE_TOPIC, source.topic))
        .insert(header(SOURCE_PARTITION, &partition))
        .insert(header(SOURCE_OFFSET, &offset));
    if let Some(how) = code {
        headers = headers.insert(header(CODE, how));
    }
    DeadLetter { payload, headers }
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}

/// When `payload` is a JSON object carrying `card.code`, the same object with
/// the code replaced by its hash (or removed when there is no key), and which
/// of the two was done. `None` when there is nothing to take out.
pub fn redact(payload: &[u8], hasher: &CodeHasher) -> Option<(Vec<u8>, &'static str)> {
    // Cheap check first: most refused messages carry no raw code.
    if !payload.windows(6).any(|w| w == b"\"code\"") {
        return None;
    }
    let mut value: Value = serde_json::from_slice(payload).ok()?;
    let card = value.get_mut("card")?.as_object_mut()?;
    let code = card.remove("code")?;
    let text = match &code {
        Value::String(s) => Cow::Borrowed(s.as_str()),
        // A code sent as a number or anything else is still a secret.
        other => Cow::Owned(other.to_string()),
    };
    let how = match hasher.hash(&text) {
        Ok(hash) => {
            card.entry("code_hash").or_insert_with(|| Value::String(hash.into()));
            "hashed"
        }
        Err(_) => "removed",
    };
    Some((serde_json::to_vec(&value).ok()?, how))
}

#[cfg(test)]
mod tests {
    use rdkafka::message::Headers;

    use super::*;

    fn headers(d: &DeadLetter<'_>) -> Vec<(String, String)> {
        d.headers
            .iter()
            .map(|h| {
                (
                    h.key.to_string(),
                    String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                )
            })
            .collect()
    }

    const SOURCE: Source<'static> = Source {
        topic: "kamiguard.attempts",
        partition: 2,
        offset: 41,
    };

    #[test]
    fn a_raw_code_is_replaced_by_its_hash() {
        let hasher = CodeHasher::with_key(b"k");
        let raw = br#"{"event_id":"e1","card":{"code":"XM-1234-SECRET","brand":"xiaomi"}}"#;
        let d = dead_letter(raw, &EventError::MissingField("ts".into()), SOURCE, &hasher);
        let text = String::from_utf8(d.payload.to_vec()).unwrap();
        assert!(!text.contains("SECRET"), "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["card"]["code_hash"], hasher.hash("XM-1234-SECRET").unwrap().as_ref());
        assert_eq!(v["card"]["brand"], "xiaomi");
        assert_eq!(
            headers(&d),
            [
                ("kamiguard.reason", "missing_field"),
                ("kamiguard.error", "missing required field `ts`"),
                ("kamiguard.source.topic", "kamiguard.attempts"),
                ("kamiguard.source.partition", "2"),
                ("kamiguard.source.offset", "41"),
                ("kamiguard.code", "hashed"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
    }

    #[test]
    fn without_a_key_the_code_is_removed_and_a_numeric_code_is_still_secret() {
        let raw = br#"{"card":{"code":987654321}}"#;
        let d = dead_letter(raw, &EventError::NoCodeKey, SOURCE, &CodeHasher::without_key());
        assert_eq!(&*d.payload, br#"{"card":{}}"#);
        assert_eq!(headers(&d).last().unwrap().1, "removed");
        let (clean, how) = redact(raw, &CodeHasher::with_key(b"k")).unwrap();
        assert_eq!(how, "hashed");
        assert!(!String::from_utf8(clean).unwrap().contains("987654321"));
    }

    #[test]
    fn other_messages_go_as_they_came() {
        for raw in [
            &b"not json \"code\""[..],
            b"\xff\xfe",
            br#"{"code":"top-level is not card.code"}"#,
        ] {
            let d = dead_letter(raw, &EventError::NotUtf8, SOURCE, &CodeHasher::with_key(b"k"));
            assert_eq!(&*d.payload, raw);
            assert_eq!(headers(&d).len(), 5);
        }
    }
}
