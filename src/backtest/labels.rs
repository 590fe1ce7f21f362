//! Outcome labels (README, "Outcome labels"): what the business learned
//! later about a subject, one JSON object a line.
//!
//! ```json
//! {"scope": "account", "subject": "u-1", "label": "fraud", "at": "2026-11-02T10:00:00Z", "source": "chargeback", "family": "takeover"}
//! ```
//!
//! Every bad line is reported as `line N: field "F": problem`, the way bad
//! events are, and the file is refused: a score against half a file of
//! labels would look like a score. A card's subject is its code hash; a raw
//! code given there is refused and never echoed.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;

use serde::Deserialize;

use crate::rules::KeyName;

/// Longest subject, source or family, bytes.
pub const MAX_FIELD_BYTES: usize = 256;

/// Most bad lines reported by message; the rest are counted.
pub const MAX_REPORTED: usize = 20;

/// What was learned of a subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Fraud,
    Legit,
}

/// One subject's label, the latest the file gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub verdict: Verdict,
    /// When it was learned, ms.
    pub at_ms: i64,
    pub source: String,
    /// The attack (or honest behaviour) it belongs to, for recall per
    /// family; `unspecified` when the line gives none.
    pub family: String,
}

/// Every labeled subject.
#[derive(Debug, Clone, Default)]
pub struct Labels {
    pub by_subject: HashMap<(KeyName, String), Label>,
    /// Lines that relabeled a subject labeled earlier in the file.
    pub relabeled: u64,
}

impl Labels {
    pub fn get(&self, scope: KeyName, subject: &str) -> Option<&Label> {
        self.by_subject.get(&(scope, subject.to_string()))
    }

    /// Reads a labels file; every bad line is in the error.
    pub fn load(path: &Path) -> Result<Labels, String> {
        let file = std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        Labels::read(std::io::BufReader::new(file)).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn read(input: impl BufRead) -> Result<Labels, String> {
        let mut labels = Labels::default();
        let mut bad = Vec::new();
        let mut bad_count = 0usize;
        for (i, line) in input.split(b'\n').enumerate() {
            let line = line.map_err(|e| format!("cannot read: {e}"))?;
            let line = line.strip_suffix(b"\r").unwrap_or(&line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match parse_line(line) {
                Ok((key, label)) => {
                    // The latest word on a subject stands (a chargeback later
                    // overturned by a manual review); on a tie, the later line.
                    let replaced = labels.by_subject.get(&key).map(|old| old.at_ms <= label.at_ms);
                    match replaced {
                        Some(true) => {
                            labels.relabeled += 1;
                            labels.by_subject.insert(key, label);
                        }
                        Some(false) => labels.relabeled += 1,
                        None => {
                            labels.by_subject.insert(key, label);
                        }
                    }
                }
                Err(problem) => {
                    bad_count += 1;
                    if bad.len() < MAX_REPORTED {
                        bad.push(format!("line {}: {problem}", i + 1));
                    }
                }
            }
        }
        if bad_count > 0 {
            if bad_count > bad.len() {
                bad.push(format!("... and {} more bad lines", bad_count - bad.len()));
            }
            return Err(format!(
                "{bad_count} bad label {}; no score is given on a partly read file:\n{}",
                if bad_count == 1 { "line" } else { "lines" },
                bad.join("\n")
            ));
        }
        Ok(labels)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    scope: KeyName,
    subject: String,
    label: Verdict,
    at: String,
    source: String,
    #[serde(default)]
    family: Option<String>,
    /// Free text for people; not read.
    #[serde(default)]
    #[allow(dead_code)]
    note: Option<serde::de::IgnoredAny>,
}

fn parse_line(line: &[u8]) -> Result<((KeyName, String), Label), String> {
    let text = std::str::from_utf8(line).map_err(|_| "not UTF-8".to_string())?;
    let mut de = serde_json::Deserializer::from_str(text);
    let wire: Wire = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // serde's messages quote the offending value for a bad enum or type;
        // a label line may carry a raw code in the wrong field, so the
        // value is never repeated.
        let what = match inner.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => "not a JSON object".to_string(),
            _ => describe(&inner.to_string()),
        };
        if path == "." || path.is_empty() {
            what
        } else {
            format!("field \"{path}\": {what}")
        }
    })?;
    de.end().map_err(|_| "text after the JSON object".to_string())?;
    for (field, value) in [("subject", &wire.subject), ("source", &wire.source)] {
        if value.is_empty() {
            return Err(format!("field \"{field}\": empty"));
        }
        if value.len() > MAX_FIELD_BYTES {
            return Err(format!("field \"{field}\": longer than {MAX_FIELD_BYTES} bytes"));
        }
    }
    if let Some(f) = &wire.family {
        if f.is_empty() || f.len() > MAX_FIELD_BYTES {
            return Err(format!(
                "field \"family\": empty or longer than {MAX_FIELD_BYTES} bytes"
            ));
        }
    }
    let at_ms = crate::event::parse_ts_ms(&wire.at)
        .ok_or_else(|| "field \"at\": must be an RFC 3339 timestamp with offset between 2000 and 2100".to_string())?;
    let subject = match wire.scope {
        KeyName::Card => {
            // As an event's `card.code_hash` must be.
            let hash = &wire.subject;
            if hash.len() < 8 || hash.len() > 128 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err("field \"subject\": a card is labeled by its code hash (8 to 128 hexadecimal characters, `kamiguard hash-codes`); this is not one (not shown)".into());
            }
            hash.to_ascii_lowercase()
        }
        KeyName::Ip => {
            let ip: std::net::IpAddr = wire
                .subject
                .parse()
                .map_err(|_| "field \"subject\": not an IPv4 or IPv6 address".to_string())?;
            ip.to_canonical().to_string()
        }
        _ => wire.subject,
    };
    Ok((
        (wire.scope, subject),
        Label {
            verdict: wire.label,
            at_ms,
            source: wire.source,
            family: wire.family.unwrap_or_else(|| "unspecified".into()),
        },
    ))
}

/// serde's message without the value it quotes: which kind of problem, and
/// what was expected.
fn describe(message: &str) -> String {
    let message = message.split(" at line ").next().unwrap_or(message);
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        let expected = rest.split_once(", expected ").map(|(_, e)| e).unwrap_or("");
        return format!("not one of the values allowed (expected {expected})");
    }
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        let expected = rest.split_once(", expected ").map(|(_, e)| e).unwrap_or("");
        return format!("wrong type (expected {expected})");
    }
    message.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Labels, String> {
        Labels::read(text.as_bytes())
    }

    const OK: &str =
        r#"{"scope":"account","subject":"u-1","label":"fraud","at":"2026-11-02T10:00:00Z","source":"chargeback"}"#;

    #[test]
    fn a_good_file_reads_and_the_latest_label_stands() {
        let later = r#"{"scope":"account","subject":"u-1","label":"legit","at":"2026-11-03T10:00:00Z","source":"manual","family":"gift"}"#;
        let earlier =
            r#"{"scope":"account","subject":"u-1","label":"fraud","at":"2026-11-01T10:00:00Z","source":"complaint"}"#;
        let labels = read(&format!("{OK}\n\n{later}\n{earlier}\n")).expect("reads");
        let l = labels.get(KeyName::Account, "u-1").expect("labeled");
        assert_eq!(
            (l.verdict, l.source.as_str(), l.family.as_str()),
            (Verdict::Legit, "manual", "gift")
        );
        assert_eq!(labels.relabeled, 2);
    }

    #[test]
    fn each_bad_line_is_named_with_its_field_and_problem() {
        let text = [
            OK,
            r#"{"scope":"account","subject":"u-2","label":"maybe","at":"2026-11-02T10:00:00Z","source":"x"}"#,
            r#"{"scope":"account","subject":"u-3","label":"fraud","at":"yesterday","source":"x"}"#,
            r#"{"scope":"planet","subject":"u-4","label":"fraud","at":"2026-11-02T10:00:00Z","source":"x"}"#,
            r#"{"scope":"account","label":"fraud","at":"2026-11-02T10:00:00Z","source":"x"}"#,
            r#"{"scope":"account","subject":"u-5","label":"fraud","label":"legit","at":"2026-11-02T10:00:00Z","source":"x"}"#,
            "not json",
        ]
        .join("\n");
        let err = read(&text).expect_err("refused");
        assert!(err.starts_with("6 bad label lines"), "{err}");
        assert!(
            err.contains("line 2: field \"label\": not one of the values allowed (expected `fraud` or `legit`)"),
            "{err}"
        );
        assert!(err.contains("line 3: field \"at\": must be an RFC 3339"), "{err}");
        assert!(
            err.contains("line 4: field \"scope\": not one of the values allowed"),
            "{err}"
        );
        assert!(err.contains("line 5: missing field `subject`"), "{err}");
        assert!(err.contains("line 6: duplicate field `label`"), "{err}");
        assert!(err.contains("line 7: not a JSON object"), "{err}");
    }

    #[test]
    fn a_raw_code_where_a_hash_belongs_is_refused_and_not_shown() {
        let line = r#"{"scope":"card","subject":"XM-SECRET-CODE-1234","label":"fraud","at":"2026-11-02T10:00:00Z","source":"x"}"#;
        let err = read(line).expect_err("refused");
        assert!(!err.contains("SECRET"), "{err}");
        assert!(err.contains("code hash"), "{err}");
        // Nor in a field whose type is wrong.
        let line = r#"{"scope":"account","subject":"u-1","label":"XM-SECRET-CODE-1234","at":"2026-11-02T10:00:00Z","source":"x"}"#;
        assert!(!read(line).expect_err("refused").contains("SECRET"));
    }

    #[test]
    fn addresses_are_canonical() {
        let line =
            r#"{"scope":"ip","subject":"::ffff:10.0.0.1","label":"fraud","at":"2026-11-02T10:00:00Z","source":"x"}"#;
        assert!(read(line).expect("reads").get(KeyName::Ip, "10.0.0.1").is_some());
    }
}
