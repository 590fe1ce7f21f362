use super::*;

const GOOD: &str = r#"{"event_id":"a-000017","ts":"2026-11-22T10:15:03.120+08:00","kind":"redemption",
 "outcome":"invalid_code","card":{"code_hash":"9f2c41e0b7d3"},
 "account":{"id":"u-88123","created_at":"2026-11-20T09:00:00+08:00","verified":false,"country":"CN"},
 "device":{"fingerprint":"fp-7a1c","platform":"android"},"ip":"175.16.199.7","channel":"app"}"#;

fn parse_str(s: &str) -> Result<Event, EventError> {
    parse(s.as_bytes(), &CodeHasher::with_key(b"k"))
}

fn with(field_json: &str, value: &str) -> String {
    GOOD.replacen(field_json, value, 1)
}

#[test]
fn the_contract_example_parses() {
    let e = parse_str(GOOD).expect("contract example is valid");
    assert_eq!(&*e.event_id, "a-000017");
    assert_eq!(e.ts_ms, 1_763_777_703_120 + 365 * 86_400_000);
    assert_eq!(e.outcome, Outcome::InvalidCode);
    assert_eq!(e.account.country, Country::parse("CN"));
    assert_eq!(e.ip, Some("175.16.199.7".parse().expect("ip")));
    assert_eq!(e.device.platform, Some(Platform::Android));
}

#[test]
fn errors_name_the_field_and_never_echo_the_value() {
    let cases = [
        (
            with("\"event_id\":\"a-000017\",", ""),
            "missing required field `event_id`",
        ),
        (
            with("\"id\":\"u-88123\"", "\"id\":\"\""),
            "field `account.id`: must be 1 to 128 characters",
        ),
        (
            with("\"kind\":\"redemption\"", "\"kind\":\"SECRET-KIND\""),
            "field `kind`: not one of the allowed values",
        ),
        (
            with("\"verified\":false", "\"verified\":\"SECRET\""),
            "field `account.verified` has the wrong type, expected a boolean",
        ),
        (
            with("\"ip\":\"175.16.199.7\"", "\"ip\":\"SECRET.1\""),
            "field `ip`: not an IPv4 or IPv6 address",
        ),
        (
            with(
                "\"ts\":\"2026-11-22T10:15:03.120+08:00\"",
                "\"ts\":\"3026-11-22T10:15:03Z\"",
            ),
            "field `ts`: must be an RFC 3339 timestamp with offset between 2000 and 2100",
        ),
        (
            with(
                "\"ts\":\"2026-11-22T10:15:03.120+08:00\"",
                "\"ts\":\"2026-11-22 10:15\"",
            ),
            "field `ts`: must be an RFC 3339 timestamp with offset between 2000 and 2100",
        ),
        (
            with("\"code_hash\":\"9f2c41e0b7d3\"", "\"code_hash\":\"SECRETzz\""),
            "field `card.code_hash`: must be 8 to 128 hexadecimal characters",
        ),
        (
            with("\"code_hash\":\"9f2c41e0b7d3\"", "\"brand\":\"jd\""),
            "missing required field `card.code_hash`",
        ),
        (
            with("\"country\":\"CN\"", "\"country\":\"CHN\""),
            "field `account.country`: must be two letters (ISO 3166-1 alpha-2)",
        ),
        (
            with(
                "\"code_hash\":\"9f2c41e0b7d3\"",
                "\"code_hash\":\"9f2c41e0b7d3\",\"face_value\":-5",
            ),
            "field `card.face_value`: value out of range",
        ),
        (
            "[1,2]".to_string(),
            "message is not a valid JSON object (the top level is not an object)",
        ),
        (
            "{\"event_id\":".to_string(),
            "message is not a valid JSON object (syntax error at line 1 column 12)",
        ),
    ];
    for (input, message) in cases {
        let err = parse_str(&input).expect_err(&input);
        assert_eq!(err.to_string(), message, "{input}");
        assert!(!err.to_string().contains("SECRET"));
    }
}

#[test]
fn raw_codes_are_hashed_with_the_key_and_dropped() {
    let input = with("\"code_hash\":\"9f2c41e0b7d3\"", "\"code\":\"KAMI-1234-5678\"");
    let a = parse(input.as_bytes(), &CodeHasher::with_key(b"key-a")).expect("valid");
    let b = parse(input.as_bytes(), &CodeHasher::with_key(b"key-b")).expect("valid");
    assert_eq!(a.card.code_hash.len(), 64);
    assert_ne!(a.card.code_hash, b.card.code_hash, "the key changes the hash");
    assert!(!format!("{a:?}").contains("KAMI-1234"));
    assert_eq!(
        parse(input.as_bytes(), &CodeHasher::without_key()),
        Err(EventError::NoCodeKey)
    );
}

#[test]
fn hostile_bytes_are_refused_not_panicked_on() {
    let hasher = CodeHasher::with_key(b"k");
    assert_eq!(
        parse(&[0xff, 0xfe, b'{'], &hasher).map_err(|e| e.reason()),
        Err("not_utf8")
    );
    let deep = format!("{{\"extra\":{}", "[".repeat(10_000));
    let err = parse(deep.as_bytes(), &hasher).expect_err("deep nesting");
    assert_eq!(err.reason(), "not_json", "{err}");
    let huge = format!("{{\"event_id\":\"{}\"}}", "x".repeat(MAX_EVENT_BYTES));
    assert_eq!(
        parse(huge.as_bytes(), &hasher).map_err(|e| e.reason()),
        Err("too_large")
    );
    let long_id = with(
        "\"event_id\":\"a-000017\"",
        &format!("\"event_id\":\"{}\"", "x".repeat(129)),
    );
    assert_eq!(
        parse(long_id.as_bytes(), &hasher).map_err(|e| e.reason()),
        Err("invalid_value")
    );
}

#[test]
fn ipv4_mapped_ipv6_is_the_same_client() {
    let e = parse_str(&with("\"ip\":\"175.16.199.7\"", "\"ip\":\"::ffff:175.16.199.7\"")).expect("valid");
    assert_eq!(e.ip, Some("175.16.199.7".parse().expect("ip")));
    assert!(parse_str(&with("\"ip\":\"175.16.199.7\"", "\"ip\":\"fe80::1%eth0\"")).is_err());
}

#[test]
fn a_null_where_an_enum_goes_is_a_wrong_type_not_a_syntax_error() {
    let line = r#"{"event_id":"m-1","ts":"2026-11-22T01:00:00Z","kind":"redemption","outcome":null,"card":{"code_hash":"aabbccddeeff"},"account":{"id":"u-1"}}"#;
    let err = parse(line.as_bytes(), &CodeHasher::without_key()).unwrap_err();
    assert_eq!(err.reason(), "wrong_type");
    assert_eq!(
        err.to_string(),
        "field `outcome` has the wrong type, expected one of the allowed values"
    );
}
