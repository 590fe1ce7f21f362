//! The shared allowlist: entries that exempt an account, a device or an
//! address range from every rule.
//!
//! Entries live on a compacted Kafka topic (`kafka.topics.allowlist`), one
//! record per entry keyed `<kind>:<value>`, written by the admin API and read
//! whole by every instance at start and followed after, so every instance
//! applies the same list. Replay takes the same records from a file
//! (`--allowlist FILE`, one record a line, later lines winning), so a replay
//! given a dump of the topic applies what the service applied.
//!
//! A record is `{"kind": "account"|"device"|"cidr", "value": "…",
//! "expires": RFC 3339?, "removed": bool?, "by": …, "reason": …, "at": …}`.
//! `removed: true` lifts the entry. An entry with `expires` exempts attempts
//! whose event time is before it: judged on event time, so replay and live
//! agree on where it ends.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::event::{format_ts, parse_ts_ms};
use crate::key::key_of;

/// What an entry exempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Account,
    Device,
    Cidr,
}

/// Longest `value`, `by` or `reason` kept: an entry is an id or a network.
const MAX_VALUE_BYTES: usize = 256;
const MAX_TEXT_BYTES: usize = 1024;

/// One allowlist record, as on the topic.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub kind: Kind,
    pub value: String,
    /// Event time (RFC 3339) from which the entry no longer exempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// The record lifts the entry.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
    /// Who made the change (the admin token's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the change was made (wall clock, RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
}

impl Entry {
    /// Checks and normalises an entry: a known kind, a value of bounded
    /// size (a network in its shortest form), an `expires` that parses.
    pub fn checked(mut self) -> Result<Entry, String> {
        if self.value.is_empty() || self.value.len() > MAX_VALUE_BYTES {
            return Err(format!("`value` must be 1 to {MAX_VALUE_BYTES} bytes"));
        }
        for text in [&self.by, &self.reason].into_iter().flatten() {
            if text.len() > MAX_TEXT_BYTES {
                return Err(format!("`by` and `reason` are at most {MAX_TEXT_BYTES} bytes"));
            }
        }
        if self.kind == Kind::Cidr {
            let net: IpNet = self
                .value
                .parse()
                .map_err(|_| "`value` must be a CIDR such as 10.0.0.0/8".to_string())?;
            self.value = net.trunc().to_string();
        }
        if let Some(at) = &self.expires {
            let ms = parse_ts_ms(at).ok_or_else(|| format!("`expires` is not an RFC 3339 time: {at:?}"))?;
            self.expires = Some(format_ts(ms));
        }
        Ok(self)
    }

    /// Parses and checks one record.
    pub fn parse(bytes: &[u8]) -> Result<Entry, String> {
        let entry: Entry = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        entry.checked()
    }

    /// The record's key on the topic: one record per entry survives compaction.
    pub fn key(&self) -> String {
        let kind = match self.kind {
            Kind::Account => "account",
            Kind::Device => "device",
            Kind::Cidr => "cidr",
        };
        format!("{kind}:{}", self.value)
    }

    fn until_ms(&self) -> i64 {
        self.expires.as_deref().and_then(parse_ts_ms).unwrap_or(i64::MAX)
    }
}

/// The entries in force, by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    entries: BTreeMap<String, Entry>,
}

impl AllowList {
    /// Takes a record: an entry replaces the one with its key, a removal
    /// lifts it. Returns whether the list changed.
    pub fn apply(&mut self, entry: Entry) -> bool {
        let key = entry.key();
        if entry.removed {
            self.entries.remove(&key).is_some()
        } else {
            self.entries.insert(key, entry.clone()).as_ref() != Some(&entry)
        }
    }

    /// Reads records a line at a time (blank lines skipped); an error names
    /// the line.
    pub fn load_file(path: &Path) -> Result<AllowList, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut list = AllowList::default();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let entry = Entry::parse(line.as_bytes()).map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?;
            list.apply(entry);
        }
        Ok(list)
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The engine's form: key hashes and networks, each with the event time
    /// it exempts until.
    pub fn shared(&self) -> SharedAllow {
        let mut s = SharedAllow::default();
        for e in self.entries.values() {
            let until = e.until_ms();
            match e.kind {
                Kind::Account => {
                    s.accounts.insert(key_of(e.value.as_str()), until);
                }
                Kind::Device => {
                    s.devices.insert(key_of(e.value.as_str()), until);
                }
                Kind::Cidr => {
                    if let Ok(net) = e.value.parse() {
                        s.cidrs.push((net, until));
                    }
                }
            }
        }
        s
    }
}

/// The allowlist as the engine asks it, per attempt.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SharedAllow {
    pub accounts: HashMap<u64, i64>,
    pub devices: HashMap<u64, i64>,
    pub cidrs: Vec<(IpNet, i64)>,
}

impl SharedAllow {
    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty() && self.devices.is_empty() && self.cidrs.is_empty()
    }

    /// Whether an attempt at `ts_ms` by these keys and address is exempt.
    pub fn exempts(&self, ts_ms: i64, account: u64, device: Option<u64>, ip: Option<std::net::IpAddr>) -> bool {
        let live = |until: Option<&i64>| until.is_some_and(|u| ts_ms < *u);
        live(self.accounts.get(&account))
            || device.is_some_and(|d| live(self.devices.get(&d)))
            || ip.is_some_and(|ip| self.cidrs.iter().any(|(n, u)| ts_ms < *u && n.contains(&ip)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(text: &str) -> Entry {
        Entry::parse(text.as_bytes()).expect("entry")
    }

    #[test]
    fn records_replace_and_remove_by_key_and_expire_on_event_time() {
        let mut list = AllowList::default();
        assert!(list.apply(entry(r#"{"kind":"account","value":"u-1"}"#)));
        assert!(!list.apply(entry(r#"{"kind":"account","value":"u-1"}"#)));
        assert!(list.apply(entry(
            r#"{"kind":"cidr","value":"10.1.2.3/8","expires":"2026-11-22T01:00:00Z"}"#
        )));
        let s = list.shared();
        let at = |t: &str| parse_ts_ms(t).expect("ts");
        let ip = Some("10.9.9.9".parse().expect("ip"));
        assert!(s.exempts(at("2026-11-22T00:59:59Z"), 0, None, ip));
        assert!(
            !s.exempts(at("2026-11-22T01:00:00Z"), 0, None, ip),
            "expired on event time"
        );
        assert!(s.exempts(at("2030-01-01T00:00:00Z"), key_of("u-1"), None, None));
        assert!(list.apply(entry(r#"{"kind":"account","value":"u-1","removed":true}"#)));
        assert!(!list.shared().exempts(0, key_of("u-1"), None, None));
        assert_eq!(list.len(), 1);
        assert_eq!(list.entries().next().expect("cidr").value, "10.0.0.0/8");
    }

    #[test]
    fn bad_records_are_refused_with_the_reason() {
        for (text, want) in [
            (r#"{"kind":"cidr","value":"nope"}"#, "CIDR"),
            (r#"{"kind":"phone","value":"1"}"#, "unknown variant"),
            (r#"{"kind":"account","value":""}"#, "1 to 256"),
            (r#"{"kind":"account","value":"u","expires":"soon"}"#, "RFC 3339"),
            (r#"{"kind":"account","value":"u","extra":1}"#, "unknown field"),
        ] {
            let e = Entry::parse(text.as_bytes()).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("allow.jsonl");
        std::fs::write(&path, "{\"kind\":\"account\",\"value\":\"u\"}\n\n{\"kind\":\"x\"}\n").expect("write");
        assert!(AllowList::load_file(&path).unwrap_err().contains("allow.jsonl:3:"));
    }
}
