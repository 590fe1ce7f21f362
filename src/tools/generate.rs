//! A deterministic generator of attempt traffic: honest redemptions with a
//! little of every attack in the shipped rule pack mixed in. Used by the
//! benchmarks, by `kamiguard generate`, and by `kamiguard demo`.
//!
//! Addresses come from the ranges the test fixture databases know (see
//! `src/tools/fixtures.rs`), so geo rules have something to look up.

use std::fmt::Write as _;

/// A small, fast, seedable generator (SplitMix64); no crate needed, and the
/// sequence is the same on every machine.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> SplitMix {
        SplitMix(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Start of generated time: 2026-11-22T00:00:00Z.
const START_MS: i64 = 1_795_305_600_000;

/// Writes `count` events as JSON lines, `rate_per_sec` events per second of
/// event time. About 96% honest (a million customers in households, a
/// third behind carrier NAT; now and then one large card; gifts; shared
/// tablets); the rest are the attacks of the rule pack, each shaped to set
/// off the rule that names it. [`labels`] gives the truth of each actor.
pub fn generate(count: u64, seed: u64, rate_per_sec: u64) -> String {
    let mut out = String::with_capacity(count as usize * 330);
    let mut traffic = Traffic::new(seed, START_MS, rate_per_sec);
    for _ in 0..count {
        out.push_str(&traffic.next_line());
        out.push('\n');
    }
    out
}

/// An endless stream of generated attempts (what [`generate`] writes), one
/// JSON object per call, event time advancing `1000 / rate_per_sec` ms each.
#[derive(Debug, Clone)]
pub struct Traffic {
    rng: SplitMix,
    i: u64,
    start_ms: i64,
    step_ms: i64,
    /// How many attempts each multi-step attack has made: its next step,
    /// and which actor makes it.
    seq: [u64; 10],
}

impl Traffic {
    pub fn new(seed: u64, start_ms: i64, rate_per_sec: u64) -> Traffic {
        Traffic {
            rng: SplitMix::new(seed),
            i: 0,
            start_ms,
            step_ms: (1000 / rate_per_sec.max(1)).max(1) as i64,
            seq: [0; 10],
        }
    }

    /// The next attempt as one line of JSON (no newline).
    pub fn next_line(&mut self) -> String {
        let ts_ms = self.start_ms + self.i as i64 * self.step_ms;
        self.next_line_at(ts_ms)
    }

    /// The next attempt, stamped `ts_ms` instead of the generator's clock
    /// (the benchmark stamps events with the wall clock as it sends them).
    pub fn next_line_at(&mut self, ts_ms: i64) -> String {
        let (i, rng, seq) = (self.i, &mut self.rng, &mut self.seq);
        self.i += 1;
        let ts = crate::event::format_ts(ts_ms);
        // Fresh accounts are as old as they look from their own attempt,
        // whatever clock stamps it (the demo and the bench use the wall clock).
        let created_hours_ago = |hours: i64| crate::event::format_ts(ts_ms - hours * 3_600_000);
        let roll = rng.below(1000);
        match roll {
            // code guessing from a few bot addresses (three: each passes the
            // guessing threshold within the demo's first ten seconds)
            0..=9 => {
                let bot = rng.below(3);
                let (acct, ip) = (format!("u-bot-{bot}"), format!("175.16.199.{}", 200 + bot));
                attempt(
                    rng,
                    i,
                    &ts,
                    "invalid_code",
                    &acct,
                    &ip,
                    "fp-bot",
                    1000,
                    "2025-01-01T00:00:00Z",
                    true,
                )
            }
            // distributed guessing: one device, rotating addresses
            10..=14 => {
                let ip = format!("100.65.{}.{}", rng.below(250), rng.below(250));
                attempt(
                    rng,
                    i,
                    &ts,
                    "wrong_pin",
                    "u-rotator",
                    &ip,
                    "fp-rotator",
                    1000,
                    "2025-01-01T00:00:00Z",
                    true,
                )
            }
            // device farm: fresh accounts on a few phones
            15..=19 => {
                let acct = format!("u-farm-{}", rng.below(1000));
                let dev = format!("fp-farm-{}", rng.below(3));
                attempt(
                    rng,
                    i,
                    &ts,
                    "success",
                    &acct,
                    "175.16.199.250",
                    &dev,
                    2000,
                    &created_hours_ago(24),
                    false,
                )
            }
            // hosting and VPN addresses
            20..=24 => {
                let acct = format!("u-cloud-{}", rng.below(500));
                let ip = if rng.below(2) == 0 { "192.0.2.10" } else { "198.18.0.7" };
                attempt(
                    rng,
                    i,
                    &ts,
                    "success",
                    &acct,
                    ip,
                    "fp-cloud",
                    10000,
                    "2025-01-01T00:00:00Z",
                    true,
                )
            }
            // new unverified accounts redeeming high value
            25..=29 => {
                let acct = format!("u-new-{}", rng.below(100_000));
                let dev = format!("fp-new-{}", rng.below(100_000));
                attempt(
                    rng,
                    i,
                    &ts,
                    "success",
                    &acct,
                    "100.64.7.7",
                    &dev,
                    200_000,
                    &created_hours_ago(12),
                    false,
                )
            }
            // The other attacks of the pack, one in a thousand each, so every
            // rule fires within the demo's first minute. Each is a run of
            // steps by one actor; `step` says which, `k` which actor.
            30..=39 => {
                let shape = (roll - 30) as usize;
                let n = seq[shape];
                seq[shape] += 1;
                let old = "2024-06-01T00:00:00Z";
                let x = Extra::default();
                match shape {
                    // a resold code: four accounts try one code
                    0 => {
                        let (k, step) = (n / 4, n % 4);
                        let outcome = if step == 0 { "success" } else { "already_used" };
                        let x = Extra {
                            code: Some(format!("c0de5a1e{k:08x}")),
                            ..x
                        };
                        // Each buyer on a line of their own, so their failed
                        // tries never add up to an address that guesses.
                        let (acct, dev) = (format!("u-resale-{n}"), format!("fp-resale-{n}"));
                        let ip = format!("100.65.{}.{}", 200 + n % 50, n / 50 % 250);
                        attempt_with(rng, i, &ts, outcome, &acct, &ip, &dev, 10000, old, true, &x)
                    }
                    // draining stolen balances: eight ¥3,000 cards an account
                    1 => {
                        let k = n / 8;
                        let (acct, dev) = (format!("u-drain-{k}"), format!("fp-drain-{k}"));
                        attempt(rng, i, &ts, "success", &acct, "175.16.199.61", &dev, 300_000, old, true)
                    }
                    // company benefit cards: six ¥5,000 custom cards an account
                    2 => {
                        let k = n / 6;
                        let (acct, dev) = (format!("u-corp-{k}"), format!("fp-corp-{k}"));
                        let x = Extra {
                            card_type: "custom",
                            ..x
                        };
                        attempt_with(
                            rng,
                            i,
                            &ts,
                            "success",
                            &acct,
                            "175.16.199.62",
                            &dev,
                            500_000,
                            old,
                            true,
                            &x,
                        )
                    }
                    // many small redemptions: fourteen an account
                    3 => {
                        let k = n / 14;
                        let (acct, dev) = (format!("u-quota-{k}"), format!("fp-quota-{k}"));
                        attempt(rng, i, &ts, "success", &acct, "175.16.199.63", &dev, 1000, old, true)
                    }
                    // a card activated by one account, redeemed by another
                    4 => {
                        let (k, step) = (n / 2, n % 2);
                        let (kind, acct) = if step == 0 {
                            ("activation", format!("u-seller-{k}"))
                        } else {
                            ("redemption", format!("u-buyer-{k}"))
                        };
                        let x = Extra {
                            kind,
                            code: Some(format!("7a5f{k:012x}")),
                            ..x
                        };
                        let dev = format!("fp-{acct}");
                        attempt_with(
                            rng,
                            i,
                            &ts,
                            "success",
                            &acct,
                            "175.16.199.64",
                            &dev,
                            20000,
                            old,
                            true,
                            &x,
                        )
                    }
                    // a takeover: the owner in Beijing, then a new device in
                    // Guangzhou, 1,900 km away, redeeming ¥600
                    5 => {
                        let (k, step) = (n / 2, n % 2);
                        let acct = format!("u-victim-{k}");
                        let (ip, dev, face) = if step == 0 {
                            ("175.16.199.65".to_string(), format!("fp-victim-{k}"), 10000)
                        } else {
                            (format!("100.64.200.{}", k % 250), format!("fp-thief-{k}"), 60_000)
                        };
                        attempt(rng, i, &ts, "success", &acct, &ip, &dev, face, old, true)
                    }
                    // a leaked code list worked through by one account, device
                    // and address each: eight codes, the fourth a decoy of
                    // the shipped honey list (`config/rules/honey-decoys.txt`)
                    7 => {
                        let (k, step) = (n / 8, n % 8);
                        let (acct, dev) = (format!("u-leak-{k}"), format!("fp-leak-{k}"));
                        let code = if step == 3 {
                            format!("dec0dec0{:08x}", k % 16)
                        } else {
                            format!("1eaced{k:06x}{step:04x}")
                        };
                        let x = Extra { code: Some(code), ..x };
                        let ip = format!("175.16.199.{}", 210 + k % 10);
                        attempt_with(rng, i, &ts, "invalid_code", &acct, &ip, &dev, 10000, old, true, &x)
                    }
                    // several accounts working through one list of codes,
                    // most of which do not exist: four accounts, six codes
                    // each, each account on a device and address of its own
                    8 => {
                        let (k, a, j) = (n / 24, n % 24 / 6, n % 6);
                        let (acct, dev) = (format!("u-list-{k}-{a}"), format!("fp-list-{k}-{a}"));
                        let ip = format!("100.65.{}.{a}", 100 + k % 100);
                        let outcome = match (j, a) {
                            (0, 0) => "success",
                            (0, _) => "already_used",
                            _ => "invalid_code",
                        };
                        let x = Extra {
                            code: Some(format!("115700{k:06x}{j:04x}")),
                            ..x
                        };
                        attempt_with(rng, i, &ts, outcome, &acct, &ip, &dev, 10000, old, true, &x)
                    }
                    // honest: a gift. The friend redeems it; the giver, later,
                    // checks it and finds it used. Two honest customers.
                    9 => {
                        let (k, step) = (n / 2, n % 2);
                        let who = (k * 7 + if step == 0 { 1 } else { 4 }) % 1_000_000;
                        let (acct, dev, ip) = honest_actor(who);
                        let outcome = if step == 0 { "success" } else { "already_used" };
                        let x = Extra {
                            code: Some(format!("91f7{k:012x}")),
                            ..x
                        };
                        attempt_with(rng, i, &ts, outcome, &acct, &ip, &dev, 20000, old, true, &x)
                    }
                    // an account of another country (US) with a new device,
                    // redeeming ¥1,500 in Beijing
                    _ => {
                        let (k, step) = (n / 2, n % 2);
                        let acct = format!("u-abroad-{k}");
                        let (dev, face) = if step == 0 {
                            (format!("fp-abroad-{k}"), 10000)
                        } else {
                            (format!("fp-abroad-new-{k}"), 150_000)
                        };
                        let x = Extra { country: "US", ..x };
                        attempt_with(
                            rng,
                            i,
                            &ts,
                            "success",
                            &acct,
                            "175.16.199.66",
                            &dev,
                            face,
                            old,
                            true,
                            &x,
                        )
                    }
                }
            }
            // honest traffic: a million customers, a third on carrier NAT
            _ => {
                let (acct, dev, ip) = honest_actor(rng.below(1_000_000));
                let outcome = if rng.below(30) == 0 { "invalid_code" } else { "success" };
                // Now and then a long-standing customer redeems one large
                // card (¥10,000 to ¥20,000): one card is not a drain.
                let face = if rng.below(500) == 0 {
                    [1_000_000, 1_500_000, 2_000_000][rng.below(3) as usize]
                } else {
                    [1000, 5000, 10000, 20000, 50000][rng.below(5) as usize]
                };
                attempt(
                    rng,
                    i,
                    &ts,
                    outcome,
                    &acct,
                    &ip,
                    &dev,
                    face,
                    "2024-06-01T00:00:00Z",
                    true,
                )
            }
        }
    }
}

/// Honest customer `n`: (account, device, address). Three accounts make
/// a household (`n / 3`) on one home line, one in five households shares
/// a tablet; one account in three is on mobile data behind one of 320
/// carrier-NAT addresses (about a thousand customers each, a few dozen
/// typos in ten minutes at most, as `single-ip-guessing` allows for).
fn honest_actor(n: u64) -> (String, String, String) {
    let home = n / 3;
    let dev = if home % 5 == 0 {
        format!("fp-home-{home}")
    } else {
        format!("fp-{n}")
    };
    let ip = if n % 3 == 0 {
        format!("100.64.{}.{}", n % 40, n / 40 % 8)
    } else {
        format!("175.17.{}.{}", home / 256 % 256, home % 256)
    };
    (format!("u-{n}"), dev, ip)
}

/// What some attacks set differently from an honest redemption.
struct Extra {
    kind: &'static str,
    /// The code's hash, when several attempts share one card.
    code: Option<String>,
    card_type: &'static str,
    /// The account's country.
    country: &'static str,
}

impl Default for Extra {
    fn default() -> Self {
        Extra {
            kind: "redemption",
            code: None,
            card_type: "e_card",
            country: "CN",
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn attempt(
    rng: &mut SplitMix,
    i: u64,
    ts: &str,
    outcome: &str,
    account: &str,
    ip: &str,
    device: &str,
    face: u64,
    created: &str,
    verified: bool,
) -> String {
    attempt_with(
        rng,
        i,
        ts,
        outcome,
        account,
        ip,
        device,
        face,
        created,
        verified,
        &Extra::default(),
    )
}

#[allow(clippy::too_many_arguments)]
fn attempt_with(
    rng: &mut SplitMix,
    i: u64,
    ts: &str,
    outcome: &str,
    account: &str,
    ip: &str,
    device: &str,
    face: u64,
    created: &str,
    verified: bool,
    x: &Extra,
) -> String {
    // Drawn whether used or not, so every attempt takes the same share of
    // the sequence.
    let random = format!("{:016x}", rng.next_u64());
    let code = x.code.as_deref().unwrap_or(&random);
    let (kind, card_type, country) = (x.kind, x.card_type, x.country);
    let mut s = String::with_capacity(360);
    let _ = write!(
        s,
        r#"{{"event_id":"gen-{i:09}","ts":"{ts}","kind":"{kind}","outcome":"{outcome}","card":{{"code_hash":"{code}","brand":"xiaomi","type":"{card_type}","face_value":{face}}},"account":{{"id":"{account}","created_at":"{created}","verified":{verified},"country":"{country}"}},"device":{{"fingerprint":"{device}","platform":"android"}},"ip":"{ip}","channel":"app"}}"#
    );
    s
}

/// What each generated actor is, by the account names the generator gives
/// them: (account prefix, scope labeled, label, family). The scope says
/// whose label it is: for a resold or transferred code the card (its
/// buyers were sold it), for the others the account. A seller activating
/// a card is not labeled: the activation itself is honest-looking.
const ACTORS: [(&str, &str, &str, &str); 15] = [
    ("u-bot-", "account", "fraud", "guessing"),
    ("u-rotator", "account", "fraud", "distributed-guessing"),
    ("u-farm-", "account", "fraud", "device-farm"),
    ("u-cloud-", "account", "fraud", "proxy-redemption"),
    // Fresh unverified accounts by the thousand, all from one address,
    // each cashing one ¥2,000 card: a mule farm, not new customers.
    ("u-new-", "account", "fraud", "fresh-account-cashout"),
    ("u-resale-", "card", "fraud", "resold-code"),
    ("u-drain-", "account", "fraud", "balance-drain"),
    ("u-corp-", "account", "fraud", "custom-card-drain"),
    ("u-quota-", "account", "fraud", "many-small"),
    // The card activated by one account and redeemed by another.
    ("u-buyer-", "card", "fraud", "transfer-after-activation"),
    // A taken-over account: the chargeback lands on the account.
    ("u-victim-", "account", "fraud", "takeover"),
    ("u-leak-", "account", "fraud", "leaked-list"),
    ("u-list-", "account", "fraud", "shared-code-list"),
    ("u-abroad-", "account", "fraud", "takeover-abroad"),
    // Honest customers: `u-` and a number.
    ("u-", "account", "legit", "honest"),
];

/// Outcome labels (README, "Outcome labels") for generated traffic: the
/// truth the generator knows, one line per labeled subject, as the
/// business would learn it a week after the last attempt.
pub fn labels(text: &str) -> String {
    use std::collections::BTreeMap;
    let mut found: BTreeMap<(&str, String), (&str, &str, i64)> = BTreeMap::new();
    let mut last_ms = START_MS;
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let field = |path: &[&str]| {
            let mut x = &v;
            for p in path {
                x = &x[*p];
            }
            x.as_str().unwrap_or_default().to_string()
        };
        let account = field(&["account", "id"]);
        let ts = crate::event::parse_ts_ms(&field(&["ts"])).unwrap_or(START_MS);
        last_ms = last_ms.max(ts);
        let Some((_, scope, label, family)) = ACTORS.iter().find(|(p, ..)| account.starts_with(p)) else {
            continue;
        };
        let subject = match *scope {
            "card" => field(&["card", "code_hash"]),
            _ => account,
        };
        found.entry((scope, subject)).or_insert((label, family, ts));
    }
    let at = crate::event::format_ts(last_ms + 7 * 86_400_000);
    let mut out = String::new();
    for ((scope, subject), (label, family, _)) in found {
        let _ = writeln!(
            out,
            r#"{{"scope":"{scope}","subject":"{subject}","label":"{label}","at":"{at}","source":"generator","family":"{family}"}}"#
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{parse, CodeHasher};

    #[test]
    fn generated_labels_read_as_labels_and_name_every_actor() {
        let text = generate(20_000, 3, 1000);
        let labels = crate::backtest::labels::Labels::read(labels(&text).as_bytes()).expect("valid labels");
        let families: std::collections::BTreeSet<&str> =
            labels.by_subject.values().map(|l| l.family.as_str()).collect();
        for f in [
            "guessing",
            "device-farm",
            "fresh-account-cashout",
            "takeover",
            "leaked-list",
            "honest",
        ] {
            assert!(families.contains(f), "no {f} in {families:?}");
        }
    }

    #[test]
    fn generated_events_are_valid_and_repeatable() {
        let a = generate(2000, 7, 1000);
        assert_eq!(a, generate(2000, 7, 1000));
        for line in a.lines() {
            parse(line.as_bytes(), &CodeHasher::without_key()).expect(line);
        }
    }
}
