//! A deterministic generator of attempt traffic: honest redemptions with a
//! little of every attack in the shipped rule pack mixed in. Used by the
//! benchmarks, by `kamiguard generate`, and by `kamiguard demo`.
//!
//! Addresses come from the ranges the test fixture databases know (see
//! `src/demo/geo.rs`), so geo rules have something to look up.

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
/// event time. About 97% honest; the rest are the attacks of the rule pack.
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
}

impl Traffic {
    pub fn new(seed: u64, start_ms: i64, rate_per_sec: u64) -> Traffic {
        Traffic {
            rng: SplitMix::new(seed),
            i: 0,
            start_ms,
            step_ms: (1000 / rate_per_sec.max(1)).max(1) as i64,
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
        let (i, rng) = (self.i, &mut self.rng);
        self.i += 1;
        let ts = crate::event::format_ts(ts_ms);
        // Fresh accounts are as old as they look from their own attempt,
        // whatever clock stamps it (the demo and the bench use the wall clock).
        let created_hours_ago = |hours: i64| crate::event::format_ts(ts_ms - hours * 3_600_000);
        let roll = rng.below(1000);
        match roll {
            // code guessing from a few bot addresses
            0..=9 => {
                let bot = rng.below(5);
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
            // honest traffic: many accounts behind carrier NAT and home lines
            _ => {
                let n = rng.below(200_000);
                let acct = format!("u-{n}");
                let dev = format!("fp-{n}");
                let ip = if n % 3 == 0 {
                    format!("100.64.{}.{}", n % 250, n / 250 % 250)
                } else {
                    format!("175.16.199.{}", n % 200)
                };
                let outcome = if rng.below(30) == 0 { "invalid_code" } else { "success" };
                let face = [1000, 5000, 10000, 20000, 50000][rng.below(5) as usize];
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
    let code = rng.next_u64();
    let mut s = String::with_capacity(360);
    let _ = write!(
        s,
        r#"{{"event_id":"gen-{i:09}","ts":"{ts}","kind":"redemption","outcome":"{outcome}","card":{{"code_hash":"{code:016x}","brand":"xiaomi","type":"e_card","face_value":{face}}},"account":{{"id":"{account}","created_at":"{created}","verified":{verified},"country":"CN"}},"device":{{"fingerprint":"{device}","platform":"android"}},"ip":"{ip}","channel":"app"}}"#
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{parse, CodeHasher};

    #[test]
    fn generated_events_are_valid_and_repeatable() {
        let a = generate(2000, 7, 1000);
        assert_eq!(a, generate(2000, 7, 1000));
        for line in a.lines() {
            parse(line.as_bytes(), &CodeHasher::without_key()).expect(line);
        }
    }
}
