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

/// What serde_json alone makes of a message: the fast path's reference.
fn serde_only(text: &str) -> Option<RawEvent<'_>> {
    serde_json::from_str(text).ok()
}

#[test]
fn the_fast_path_reads_generated_traffic_and_every_scenario_as_serde_does() {
    let generated = crate::tools::generate::generate(2_000, 7, 2000);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
    let mut scenarios = String::new();
    for dir in std::fs::read_dir(root).expect("scenarios") {
        let path = dir.expect("entry").path().join("events.jsonl");
        if let Ok(text) = std::fs::read_to_string(&path) {
            scenarios.push_str(&text);
        }
    }
    let lines: Vec<&str> = generated
        .lines()
        .chain(scenarios.lines())
        .filter(|l| !l.is_empty())
        .collect();
    assert!(lines.len() > 2_100, "{} lines", lines.len());
    for line in lines {
        let fast = fast::read(line).unwrap_or_else(|| panic!("the fast path gave up on {line}"));
        assert_eq!(Some(fast), serde_only(line), "{line}");
    }
    let fast = fast::read(GOOD).expect("the contract example has the common shape");
    assert_eq!(Some(fast), serde_only(GOOD));
}

#[test]
fn the_fast_path_leaves_rare_forms_to_serde_and_parse_still_reads_them() {
    let id = "\"event_id\":\"a-000017\"";
    let rare = [
        // An escape in a string: serde unescapes it.
        with(id, r#""event_id":"a-\u0030\"17""#),
        // A member the contract may add later.
        with(id, r#""event_id":"a-000017","trace":{"span":[1,2.5,"x"]}"#),
        // Integers serde reads for a u64 as JSON allows them.
        with(
            "\"code_hash\":\"9f2c41e0b7d3\"",
            "\"code_hash\":\"9f2c41e0b7d3\",\"face_value\":5000",
        ),
        // A card without optional members, a null device.
        with(
            "\"device\":{\"fingerprint\":\"fp-7a1c\",\"platform\":\"android\"}",
            "\"device\":null",
        ),
    ];
    assert!(!fast::reads(&rare[0]) && !fast::reads(&rare[1]));
    assert!(fast::reads(&rare[2]) && fast::reads(&rare[3]));
    for text in &rare {
        assert!(fast::agrees_with_serde(text), "{text}");
        let e = parse_str(text).unwrap_or_else(|err| panic!("{text}: {err}"));
        assert_eq!(parse_raw_by_serde(text), Some(e), "{text}");
    }
    assert_eq!(&*parse_str(&rare[0]).expect("escaped").event_id, "a-0\"17");
}

/// `parse` as it was before the fast path: serde_json, then validation.
fn parse_raw_by_serde(text: &str) -> Option<Event> {
    validate(serde_only(text)?, &CodeHasher::with_key(b"k")).ok()
}

#[test]
fn what_serde_refuses_the_fast_path_refuses_too() {
    let refused = [
        with(
            "\"kind\":\"redemption\"",
            "\"kind\":\"redemption\",\"kind\":\"activation\"",
        ),
        with("\"verified\":false", "\"verified\":0"),
        with(
            "\"code_hash\":\"9f2c41e0b7d3\"",
            "\"code_hash\":\"9f2c41e0b7d3\",\"face_value\":007",
        ),
        with(
            "\"code_hash\":\"9f2c41e0b7d3\"",
            "\"code_hash\":\"9f2c41e0b7d3\",\"face_value\":1.0",
        ),
        with(
            "\"code_hash\":\"9f2c41e0b7d3\"",
            "\"code_hash\":\"9f2c41e0b7d3\",\"face_value\":-0",
        ),
        with(
            "\"code_hash\":\"9f2c41e0b7d3\"",
            "\"code_hash\":\"9f2c41e0b7d3\",\"face_value\":18446744073709551616",
        ),
        with("\"channel\":\"app\"", "\"channel\":\"app\","),
        with("\"channel\":\"app\"", "\"channel\":\"APP\""),
        with("\"ip\":\"175.16.199.7\"", "\"ip\":\"175.16.\u{1}199.7\""),
        format!("{GOOD} x"),
        format!("{GOOD}}}"),
        GOOD.replace("\"account\"", "\"acount\""),
    ];
    for text in &refused {
        assert!(!fast::reads(text), "{text}");
        assert_eq!(serde_only(text), None, "{text}");
    }
    let trailing_space = format!("\n {GOOD} \r\n\t");
    assert!(fast::reads(&trailing_space) && fast::agrees_with_serde(&trailing_space));
}

mod equivalence {
    use super::*;
    use proptest::prelude::*;

    /// JSON whitespace between tokens, mostly none.
    fn ws() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["", "", "", " ", "\n", "\t ", "\r\n  "])
    }

    fn pick(values: &[&'static str]) -> BoxedStrategy<String> {
        prop::sample::select(values.to_vec()).prop_map(String::from).boxed()
    }

    /// Values of every type and some not quite JSON: what any member may
    /// hold when `odd` messages are generated.
    const ODD: &[&str] = &[
        "null",
        "0",
        "007",
        "-1",
        "-0",
        "1.5",
        "2e3",
        "18446744073709551616",
        "true",
        "tru",
        "\"\"",
        "\"x\\\"y\"",
        "\"\\u0041\"",
        "\"a\u{1}b\"",
        "[]",
        "{}",
        "{\"x\":1}",
        "\"redemption\"",
    ];

    struct Gen {
        odd: bool,
    }

    impl Gen {
        /// A member's value: one of `plain` (and sometimes one of `ODD`).
        fn value(&self, plain: BoxedStrategy<String>) -> BoxedStrategy<String> {
            if self.odd {
                prop_oneof![30 => plain, 1 => pick(ODD)].boxed()
            } else {
                plain
            }
        }

        /// An object of these members in any order, each present or not
        /// (required ones always when not `odd`), with an unknown member or a
        /// repeated one when `odd`.
        fn object(&self, members: Vec<(&'static str, bool, BoxedStrategy<String>)>) -> BoxedStrategy<String> {
            let keys: Vec<&'static str> = members.iter().map(|m| m.0).collect();
            let parts: Vec<BoxedStrategy<Option<(&'static str, String)>>> = members
                .into_iter()
                .map(|(key, required, value)| {
                    let value = self.value(value).prop_map(move |v| (key, v));
                    match (required, self.odd) {
                        (true, false) => value.prop_map(Some).boxed(),
                        (true, true) => prop::option::weighted(0.97, value).boxed(),
                        (false, _) => prop::option::weighted(0.8, value).boxed(),
                    }
                })
                .collect();
            let extra = if self.odd {
                prop::option::weighted(
                    0.1,
                    (
                        prop::sample::select([keys.clone(), vec!["zz", "Kind", "event id"]].concat()),
                        pick(ODD),
                    ),
                )
                .boxed()
            } else {
                Just(None).boxed()
            };
            (parts, extra, ws())
                .prop_flat_map(|(parts, extra, w)| {
                    let members: Vec<String> = parts
                        .into_iter()
                        .flatten()
                        .chain(extra)
                        .map(|(k, v)| format!("\"{k}\"{w}:{w}{v}"))
                        .collect();
                    (Just(members).prop_shuffle(), Just(w))
                })
                .prop_map(|(members, w)| format!("{{{w}{}{w}}}", members.join(&format!("{w},{w}"))))
                .boxed()
        }

        fn event(&self) -> BoxedStrategy<String> {
            let text = |v: &[&'static str]| {
                prop::sample::select(v.to_vec())
                    .prop_map(|s| format!("\"{s}\""))
                    .boxed()
            };
            let nullable = |s: BoxedStrategy<String>| prop_oneof![6 => s, 1 => Just("null".to_string())].boxed();
            let card = self.object(vec![
                ("code_hash", true, text(&["9f2c41e0b7d3", "AABBCCDDEEFF0011", "zz"])),
                ("brand", false, nullable(text(&["xiaomi", "jd", "京东"]))),
                ("type", false, nullable(text(&["e_card", "custom", "physical"]))),
                (
                    "face_value",
                    false,
                    nullable(pick(&["0", "100", "50000", "18446744073709551615"])),
                ),
                ("currency", false, nullable(text(&["CNY", "usd"]))),
                ("batch", false, nullable(text(&["b-1"]))),
                ("bound_account", false, nullable(text(&["u-1", "u-2"]))),
            ]);
            let account = self.object(vec![
                ("id", true, text(&["u-1", "u-88123", "ü"])),
                (
                    "created_at",
                    false,
                    nullable(text(&["2026-11-20T09:00:00+08:00", "2024-06-01T00:00:00Z"])),
                ),
                ("verified", false, nullable(pick(&["true", "false"]))),
                ("country", false, nullable(text(&["CN", "us"]))),
            ]);
            let device = nullable(self.object(vec![
                ("fingerprint", false, nullable(text(&["fp-1", "fp-7a1c"]))),
                ("platform", false, nullable(text(&["android", "ios", "pos"]))),
            ]));
            self.object(vec![
                ("event_id", true, text(&["a-1", "gen-000000001", "事件"])),
                (
                    "ts",
                    true,
                    text(&["2026-11-22T10:15:03.120+08:00", "2026-11-22T00:00:00Z"]),
                ),
                ("kind", true, text(&["redemption", "activation"])),
                ("outcome", true, text(&["success", "invalid_code", "wrong_pin"])),
                ("card", true, card),
                ("account", true, account),
                ("device", false, device),
                ("ip", false, nullable(text(&["175.16.199.7", "2001:db8::1"]))),
                ("channel", false, nullable(text(&["app", "web"]))),
            ])
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Messages of the common shape (any order, any whitespace, optional
        /// members absent or null) are read by the fast path, as serde reads them.
        #[test]
        fn the_fast_path_reads_the_common_shape_as_serde_does(text in Gen { odd: false }.event()) {
            let fast = fast::read(&text);
            prop_assert!(fast.is_some(), "gave up on {}", text);
            prop_assert_eq!(fast, serde_only(&text));
        }

        /// On anything, the fast path gives up or reads what serde reads.
        #[test]
        fn the_fast_path_never_reads_what_serde_would_not(text in Gen { odd: true }.event()) {
            prop_assert!(fast::agrees_with_serde(&text), "{}", text);
        }
    }
}

#[test]
fn lengths_count_characters_and_control_characters_are_refused_in_any_script() {
    let id = |v: &str| with("\"id\":\"u-88123\"", &format!("\"id\":\"{v}\""));
    let reason = |text: String| parse_str(&text).map(|_| ()).map_err(|e| e.to_string());
    assert_eq!(reason(id(&"账".repeat(128))), Ok(()), "128 characters of 3 bytes each");
    assert_eq!(
        reason(id(&"账".repeat(129))),
        Err("field `account.id`: must be 1 to 128 characters".into())
    );
    for control in ["u\\u0007", "u\u{7f}", "账\\u0085", "账\u{85}"] {
        assert_eq!(
            reason(id(control)),
            Err("field `account.id`: contains control characters".into()),
            "{control}"
        );
    }
}

#[test]
fn every_contract_enum_is_named_on_the_wire_in_snake_case_both_ways() {
    fn snake(debug: String) -> String {
        let mut out = String::new();
        for (i, c) in debug.chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        }
        out
    }
    fn check<T>(all: &[T], from_wire: fn(&str) -> Option<T>)
    where
        T: Copy + PartialEq + std::fmt::Debug + serde::Serialize,
    {
        for v in all {
            let wire = snake(format!("{v:?}"));
            assert_eq!(serde_json::to_value(v).expect("serializes"), serde_json::json!(wire));
            assert_eq!(from_wire(&wire), Some(*v), "{wire}");
        }
        assert_eq!(from_wire("Success"), None, "names are exact");
    }
    check(Kind::ALL, Kind::from_wire);
    check(Outcome::ALL, Outcome::from_wire);
    check(CardType::ALL, CardType::from_wire);
    check(Platform::ALL, Platform::from_wire);
    check(Channel::ALL, Channel::from_wire);
}

/// What the split pipeline forwards is read back as the same event, by the
/// fast path, and carries no raw code however the sender wrote it.
#[test]
fn an_event_written_anew_reads_back_the_same_and_without_its_code() {
    let hasher = CodeHasher::with_key(b"k");
    let mut messages: Vec<String> = crate::tools::generate::generate(2_000, 5, 100)
        .lines()
        .map(String::from)
        .collect();
    messages.push(GOOD.to_string());
    messages.push(with(
        r#""code_hash":"9f2c41e0b7d3""#,
        r#""co\u0064e":"XM-SECRET-1","brand":"x\/y","batch":"b\u00e9","bound_account":"u-9""#,
    ));
    messages.push(with("\"ip\":\"175.16.199.7\"", "\"ip\":\"::ffff:175.16.199.7\""));
    messages.push(with(
        "\"ts\":\"2026-11-22T10:15:03.120+08:00\"",
        "\"ts\":\"2026-11-22T10:15:03.120999+08:00\"",
    ));
    for m in &messages {
        let e = parse(m.as_bytes(), &hasher).expect("valid");
        let written = e.to_json();
        let text = std::str::from_utf8(&written).expect("utf-8");
        assert!(!text.contains("SECRET"), "{text}");
        assert_eq!(parse(&written, &hasher).as_ref(), Ok(&e), "{m}\n{text}");
        assert!(
            fast::reads(text) || text.contains('\\'),
            "the fast path reads it: {text}"
        );
    }
}
