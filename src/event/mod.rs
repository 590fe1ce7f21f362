//! Step 1 of the flow: the input contract (docs/contract.md, "Attempt events").
//!
//! Bytes in, a validated [`Event`] out. A raw `card.code` is hashed with the
//! configured key the moment it is read and never stored; errors name the field
//! and the problem and never echo the offending value, since that value may be
//! a card code.

#[doc(hidden)]
pub mod fast;
mod hash;

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use serde::Deserialize;

pub use hash::{CodeHasher, CODE_KEY_ENV};

/// Largest message the parser accepts; anything longer is dead-lettered unread.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

/// Earliest and latest event time accepted (2000-01-01 and 2100-01-01, UTC):
/// anything outside is a broken clock or a forged event.
const MIN_TS_MS: i64 = 946_684_800_000;
const MAX_TS_MS: i64 = 4_102_444_800_000;

/// Declares a closed enum of the contract, each variant with its name on the
/// wire (snake_case), together with `ALL`, its variants in declaration order:
/// the one list the rule filters' bit masks and the per-label metrics index
/// into. The names given here are the only ones: serde reads and writes
/// them, and `from_wire` (the event reader's fast path) matches them.
macro_rules! contract_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $wire:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
        pub enum $name {
            $(#[serde(rename = $wire)] $variant),+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The variant named `name` on the wire.
            pub fn from_wire(name: &str) -> Option<$name> {
                match name {
                    $($wire => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl Variant for $name {
            const COUNT: usize = $name::ALL.len();

            fn index(self) -> usize {
                self as usize
            }
        }
    };
}

/// A variant of a closed enum of the contract.
pub trait Variant: Copy {
    /// How many variants the enum has.
    const COUNT: usize;

    /// The variant's place in declaration order (its discriminant), so also
    /// in `ALL`.
    fn index(self) -> usize;

    /// The variant's bit in a rule filter's mask: one shifted by its place.
    fn bit(self) -> u32 {
        1 << self.index()
    }
}

contract_enum! {
    /// What the redemption service was asked to do.
    Kind { Activation = "activation", Redemption = "redemption" }
}

contract_enum! {
    /// What the redemption service answered.
    Outcome {
        Success = "success",
        InvalidCode = "invalid_code",
        WrongPin = "wrong_pin",
        Expired = "expired",
        AlreadyUsed = "already_used",
        Frozen = "frozen",
        Blocked = "blocked",
        Error = "error",
    }
}

impl Outcome {
    /// Outcomes that mean "the code as typed did not work": what guessing produces.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            Outcome::InvalidCode | Outcome::WrongPin | Outcome::Expired | Outcome::AlreadyUsed
        )
    }
}

contract_enum! {
    CardType {
        Physical = "physical",
        ECard = "e_card",
        Custom = "custom",
        Membership = "membership",
        Service = "service",
        CouponPack = "coupon_pack",
    }
}

contract_enum! {
    Platform { Android = "android", Ios = "ios", Web = "web", Pos = "pos", Other = "other" }
}

contract_enum! {
    Channel { App = "app", Web = "web", Store = "store", Api = "api" }
}

/// An ISO 3166-1 alpha-2 country code, stored inline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Country([u8; 2]);

impl Country {
    /// Parses two ASCII letters, upper-casing them.
    pub fn parse(s: &str) -> Option<Country> {
        let b = s.as_bytes();
        if b.len() == 2 && b.iter().all(u8::is_ascii_alphabetic) {
            Some(Country([b[0].to_ascii_uppercase(), b[1].to_ascii_uppercase()]))
        } else {
            None
        }
    }

    pub fn as_str(&self) -> &str {
        // Both bytes are ASCII letters by construction.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl fmt::Display for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated attempt. Holds the hash of the card code, never the code.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Shared, so window samples keep it without copying.
    pub event_id: std::sync::Arc<str>,
    /// Event time, milliseconds since the Unix epoch.
    pub ts_ms: i64,
    pub kind: Kind,
    pub outcome: Outcome,
    pub card: Card,
    pub account: Account,
    pub device: Device,
    pub ip: Option<IpAddr>,
    pub channel: Option<Channel>,
}

impl Event {
    /// How old the account was at the attempt, ms, when its creation is known.
    pub fn account_age_ms(&self) -> Option<i64> {
        self.account.created_at_ms.map(|c| self.ts_ms - c)
    }

    /// The attempt as a contract message, written from what was validated:
    /// the card by its hash, times at millisecond precision in UTC, the
    /// address canonical. [`parse`] reads it back as this same event. The
    /// split pipeline forwards this, never the bytes as sent, so nothing the
    /// sender wrote beyond the contract (a raw code behind an escape, a
    /// padding field) reaches an internal topic.
    pub fn to_json(&self) -> Vec<u8> {
        let wire = wire::Event {
            event_id: &self.event_id,
            ts: format_ts(self.ts_ms),
            kind: self.kind,
            outcome: self.outcome,
            card: wire::Card {
                code_hash: &self.card.code_hash,
                brand: self.card.brand.as_deref(),
                card_type: self.card.card_type,
                face_value: self.card.face_value_fen,
                currency: self.card.currency.as_deref(),
                batch: self.card.batch.as_deref(),
                bound_account: self.card.bound_account.as_deref(),
            },
            account: wire::Account {
                id: &self.account.id,
                created_at: self.account.created_at_ms.map(format_ts),
                verified: self.account.verified,
                country: self.account.country.as_ref().map(Country::as_str),
            },
            device: wire::Device {
                fingerprint: self.device.fingerprint.as_deref(),
                platform: self.device.platform,
            },
            ip: self.ip.map(|ip| ip.to_string()),
            channel: self.channel,
        };
        // Every field is a string, a number, a bool or a contract enum.
        serde_json::to_vec(&wire).unwrap_or_default()
    }
}

/// The shape [`Event::to_json`] writes.
mod wire {
    use serde::Serialize;

    #[derive(Serialize)]
    pub(super) struct Event<'a> {
        pub event_id: &'a str,
        pub ts: String,
        pub kind: super::Kind,
        pub outcome: super::Outcome,
        pub card: Card<'a>,
        pub account: Account<'a>,
        pub device: Device<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub ip: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub channel: Option<super::Channel>,
    }

    #[derive(Serialize)]
    pub(super) struct Card<'a> {
        pub code_hash: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub brand: Option<&'a str>,
        #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
        pub card_type: Option<super::CardType>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub face_value: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub currency: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub batch: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub bound_account: Option<&'a str>,
    }

    #[derive(Serialize)]
    pub(super) struct Account<'a> {
        pub id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub created_at: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub verified: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub country: Option<&'a str>,
    }

    #[derive(Serialize)]
    pub(super) struct Device<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        pub fingerprint: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub platform: Option<super::Platform>,
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Card {
    /// Lower-case hex keyed hash of the code as typed.
    pub code_hash: Box<str>,
    pub brand: Option<Box<str>>,
    pub card_type: Option<CardType>,
    pub face_value_fen: Option<u64>,
    pub currency: Option<Box<str>>,
    pub batch: Option<Box<str>>,
    pub bound_account: Option<Box<str>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Account {
    pub id: Box<str>,
    pub created_at_ms: Option<i64>,
    pub verified: Option<bool>,
    pub country: Option<Country>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Device {
    pub fingerprint: Option<Box<str>>,
    pub platform: Option<Platform>,
}

/// Why an event was refused. `reason()` is a short fixed code for metrics and
/// dead-letter headers; `Display` is the sentence for a person.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("message is {0} bytes, larger than the {MAX_EVENT_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("message is not valid UTF-8")]
    NotUtf8,
    #[error("message is not a valid JSON object ({0})")]
    NotJson(String),
    #[error("missing required field `{0}`")]
    MissingField(String),
    #[error("field `{field}` has the wrong type, expected {expected}")]
    WrongType { field: String, expected: String },
    #[error("field `{field}`: {problem}")]
    Invalid { field: String, problem: String },
    #[error(
        "`card.code` is present but no code-hash key is configured (set {CODE_KEY_ENV} or code_key in the config)"
    )]
    NoCodeKey,
    #[error("field `ts` is {ahead_secs} s ahead of when the message was received (at most {max_secs} s, engine.max_ahead_secs)")]
    TsAhead { ahead_secs: i64, max_secs: i64 },
}

impl EventError {
    /// Fixed, low-cardinality reason code (metric label, dead-letter header).
    pub fn reason(&self) -> &'static str {
        match self {
            EventError::TooLarge(_) => "too_large",
            EventError::NotUtf8 => "not_utf8",
            EventError::NotJson(_) => "not_json",
            EventError::MissingField(_) => "missing_field",
            EventError::WrongType { .. } => "wrong_type",
            EventError::Invalid { .. } => "invalid_value",
            EventError::NoCodeKey => "no_code_key",
            EventError::TsAhead { .. } => "ts_ahead",
        }
    }

    fn invalid(field: &str, problem: &str) -> EventError {
        EventError::Invalid {
            field: field.to_owned(),
            problem: problem.to_owned(),
        }
    }
}

#[derive(Debug, PartialEq, Deserialize)]
struct RawEvent<'a> {
    #[serde(borrow)]
    event_id: Cow<'a, str>,
    #[serde(borrow)]
    ts: Cow<'a, str>,
    kind: Kind,
    outcome: Outcome,
    #[serde(borrow)]
    card: RawCard<'a>,
    #[serde(borrow)]
    account: RawAccount<'a>,
    #[serde(default, borrow)]
    device: Option<RawDevice<'a>>,
    #[serde(default, borrow)]
    ip: Option<Cow<'a, str>>,
    #[serde(default)]
    channel: Option<Channel>,
}

#[derive(Debug, PartialEq, Deserialize)]
struct RawCard<'a> {
    #[serde(default, borrow)]
    code_hash: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    code: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    brand: Option<Cow<'a, str>>,
    #[serde(default, rename = "type")]
    card_type: Option<CardType>,
    #[serde(default)]
    face_value: Option<u64>,
    #[serde(default, borrow)]
    currency: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    batch: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    bound_account: Option<Cow<'a, str>>,
}

#[derive(Debug, PartialEq, Deserialize)]
struct RawAccount<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(default, borrow)]
    created_at: Option<Cow<'a, str>>,
    #[serde(default)]
    verified: Option<bool>,
    #[serde(default, borrow)]
    country: Option<Cow<'a, str>>,
}

#[derive(Debug, PartialEq, Deserialize)]
struct RawDevice<'a> {
    #[serde(default, borrow)]
    fingerprint: Option<Cow<'a, str>>,
    #[serde(default)]
    platform: Option<Platform>,
}

/// Parses and validates one message. A raw code is hashed with `hasher`.
///
/// Three readers, fastest first: [`fast`] reads the common shape of a
/// message; serde_json reads whatever it leaves; a message serde_json refuses
/// is read once more to name the field at fault. All three agree on what a
/// message says.
pub fn parse(bytes: &[u8], hasher: &CodeHasher) -> Result<Event, EventError> {
    if bytes.len() > MAX_EVENT_BYTES {
        return Err(EventError::TooLarge(bytes.len()));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| EventError::NotUtf8)?;
    // serde would also read a struct from a JSON array; the contract says object.
    if !text.trim_start().starts_with('{') {
        return Err(EventError::NotJson("the top level is not an object".into()));
    }
    let raw = match fast::read(text) {
        Some(raw) => raw,
        None => match serde_json::from_str::<RawEvent<'_>>(text) {
            Ok(raw) => raw,
            Err(_) => return Err(explain_json_error(text)),
        },
    };
    validate(raw, hasher)
}

/// `serde_json::from_str` threw the error away; this re-reads the message
/// with the field path tracked, so the error can name the field. Bad messages
/// are rare, so the cost lands only on them.
fn explain_json_error(text: &str) -> EventError {
    let mut de = serde_json::Deserializer::from_str(text);
    let err = match serde_path_to_error::deserialize::<_, RawEvent<'_>>(&mut de) {
        Ok(_) => return EventError::NotJson("unexpected trailing data".into()),
        Err(err) => err,
    };
    let path = err.path().to_string();
    let inner = err.into_inner();
    let syntax = matches!(
        inner.classify(),
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof
    );
    // serde_json reports a value an enum cannot start with (`"outcome": null`)
    // and a number beyond f64 (`1e400`) as syntax errors; when the text is
    // valid JSON they are problems of the field the path names.
    if syntax && path != "." && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
        if inner.to_string().starts_with("number out of range") {
            return EventError::invalid(&path, "value out of range");
        }
        return EventError::WrongType {
            field: path,
            expected: "one of the allowed values".to_owned(),
        };
    }
    if syntax {
        // serde_json's syntax messages never quote the input; keep the position.
        return EventError::NotJson(format!(
            "syntax error at line {} column {}",
            inner.line(),
            inner.column()
        ));
    }
    let message = inner.to_string();
    let field = |name: Option<&str>| -> String {
        match (path.as_str(), name) {
            (".", Some(n)) => n.to_owned(),
            (p, Some(n)) => format!("{p}.{n}"),
            (p, None) => p.to_owned(),
        }
    };
    if let Some(name) = between_backticks(&message, "missing field `") {
        return EventError::MissingField(field(Some(name)));
    }
    if message.starts_with("invalid type") {
        let expected = message
            .split(", expected ")
            .nth(1)
            .and_then(|rest| rest.split(" at line").next())
            .unwrap_or("another type");
        let field = if path == "." { "(root)".to_owned() } else { field(None) };
        return EventError::WrongType {
            field,
            expected: expected.to_owned(),
        };
    }
    if message.starts_with("unknown variant") {
        return EventError::invalid(&field(None), "not one of the allowed values");
    }
    EventError::invalid(&field(None), "value out of range")
}

fn between_backticks<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    let start = message.find(prefix)? + prefix.len();
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}

fn validate(raw: RawEvent<'_>, hasher: &CodeHasher) -> Result<Event, EventError> {
    bounded_check("event_id", &raw.event_id, 128)?;
    let event_id = std::sync::Arc::from(raw.event_id.as_ref());
    let ts_ms = parse_ts("ts", &raw.ts)?;

    let code_hash = match (&raw.card.code, &raw.card.code_hash) {
        (Some(code), _) => {
            if code.is_empty() || code.len() > 256 {
                return Err(EventError::invalid("card.code", "must be 1 to 256 bytes"));
            }
            hasher.hash(code)?
        }
        (None, Some(hash)) => {
            if hash.len() < 8 || hash.len() > 128 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(EventError::invalid(
                    "card.code_hash",
                    "must be 8 to 128 hexadecimal characters",
                ));
            }
            hash.to_ascii_lowercase().into_boxed_str()
        }
        (None, None) => return Err(EventError::MissingField("card.code_hash".into())),
    };
    let currency = match &raw.card.currency {
        Some(c) if c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()) => Some(c.as_ref().into()),
        Some(_) => {
            return Err(EventError::invalid(
                "card.currency",
                "must be three upper-case letters (ISO 4217)",
            ))
        }
        None => None,
    };
    if raw.card.face_value.is_some_and(|v| v > 1_000_000_000_000) {
        return Err(EventError::invalid("card.face_value", "larger than 10^12 fen"));
    }
    let card = Card {
        code_hash,
        brand: optional_bounded("card.brand", raw.card.brand.as_deref(), 64)?,
        card_type: raw.card.card_type,
        face_value_fen: raw.card.face_value,
        currency,
        batch: optional_bounded("card.batch", raw.card.batch.as_deref(), 128)?,
        bound_account: optional_bounded("card.bound_account", raw.card.bound_account.as_deref(), 128)?,
    };

    let account =
        Account {
            id: bounded("account.id", &raw.account.id, 128)?,
            created_at_ms: raw
                .account
                .created_at
                .as_deref()
                .map(|ts| parse_ts("account.created_at", ts))
                .transpose()?,
            verified: raw.account.verified,
            country: match raw.account.country.as_deref() {
                Some(c) => Some(Country::parse(c).ok_or_else(|| {
                    EventError::invalid("account.country", "must be two letters (ISO 3166-1 alpha-2)")
                })?),
                None => None,
            },
        };

    let device = match raw.device {
        Some(d) => Device {
            fingerprint: optional_bounded("device.fingerprint", d.fingerprint.as_deref(), 256)?,
            platform: d.platform,
        },
        None => Device::default(),
    };

    let ip = match raw.ip.as_deref() {
        Some(text) => Some(parse_ip(text)?),
        None => None,
    };

    Ok(Event {
        event_id,
        ts_ms,
        kind: raw.kind,
        outcome: raw.outcome,
        card,
        account,
        device,
        ip,
        channel: raw.channel,
    })
}

fn bounded(field: &str, value: &str, max: usize) -> Result<Box<str>, EventError> {
    bounded_check(field, value, max)?;
    Ok(value.into())
}

fn bounded_check(field: &str, value: &str, max: usize) -> Result<(), EventError> {
    // Ids are printable ASCII in practice: one byte, one character, and no
    // control character. Anything else is counted and checked by character.
    let (chars, control) = if value.bytes().all(|b| (b' '..0x7f).contains(&b)) {
        (value.len(), false)
    } else {
        (value.chars().count(), value.chars().any(char::is_control))
    };
    if value.is_empty() || chars > max {
        return Err(EventError::invalid(field, &format!("must be 1 to {max} characters")));
    }
    if control {
        return Err(EventError::invalid(field, "contains control characters"));
    }
    Ok(())
}

fn optional_bounded(field: &str, value: Option<&str>, max: usize) -> Result<Option<Box<str>>, EventError> {
    value.map(|v| bounded(field, v, max)).transpose()
}

/// Refuses an attempt whose event time runs more than `max_ahead_ms` ahead
/// of `received_ms`, when it was received: a forged `ts`, or a service
/// writing local time with a UTC offset. `run` takes the Kafka record's
/// timestamp, `replay` a line's record timestamp where the line has one; the
/// bound is the same in both, so the same records give the same decisions.
pub fn check_ahead(e: &Event, received_ms: i64, max_ahead_ms: i64) -> Result<(), EventError> {
    let ahead = e.ts_ms.saturating_sub(received_ms);
    if ahead > max_ahead_ms {
        return Err(EventError::TsAhead {
            ahead_secs: crate::units::ms_to_secs(ahead),
            max_secs: crate::units::ms_to_secs(max_ahead_ms),
        });
    }
    Ok(())
}

/// Parses an RFC 3339 timestamp with offset into milliseconds since the epoch.
pub fn parse_ts_ms(text: &str) -> Option<i64> {
    let ts = chrono::DateTime::parse_from_rfc3339(text).ok()?;
    let ms = ts.timestamp_millis();
    (MIN_TS_MS..MAX_TS_MS).contains(&ms).then_some(ms)
}

fn parse_ts(field: &str, text: &str) -> Result<i64, EventError> {
    parse_ts_ms(text)
        .ok_or_else(|| EventError::invalid(field, "must be an RFC 3339 timestamp with offset between 2000 and 2100"))
}

/// Parses an address; an IPv4-mapped IPv6 address becomes the IPv4 address, so
/// one client is one key whichever way the edge wrote it.
fn parse_ip(text: &str) -> Result<IpAddr, EventError> {
    let ip: IpAddr = text
        .parse()
        .map_err(|_| EventError::invalid("ip", "not an IPv4 or IPv6 address"))?;
    Ok(ip.to_canonical())
}

/// Formats milliseconds since the epoch as RFC 3339 UTC with milliseconds.
pub fn format_ts(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests;
