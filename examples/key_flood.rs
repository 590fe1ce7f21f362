//! Memory per tracked key, and the key cap holding, under a flood of distinct
//! keys (an attacker rotating addresses): one threshold rule grouped by ip,
//! N attempts from N different addresses.
//!
//!   cargo run --release --example key_flood -- [KEYS] [CAP]
//!
//! Defaults: 10,000,000 keys against the default cap (`engine.max_keys`,
//! 3,600,000). Reports resident memory growth per tracked key (state, map
//! overhead and the dedup memory of the event ids, all included) and the cap
//! hits. Uses mimalloc, as the binary does.

use std::net::Ipv4Addr;
use std::sync::Arc;

use kamiguard::engine::{Engine, EngineConfig};
use kamiguard::enrich::GeoDatabases;
use kamiguard::event::{parse, CodeHasher};
use kamiguard::rules::compile_sources;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RULE: &str = r#"[[rule]]
id = "ip-guessing"
kind = "threshold"
filter = { failed = true }
group_by = "ip"
aggregate = "count"
window_secs = 600
threshold = 50
action = "block"
score = 80
"#;

fn rss_kib() -> u64 {
    kamiguard::tools::bench::proc_status_kib("VmRSS:")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let keys: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(10_000_000);
    let defaults = EngineConfig::default();
    let cap: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(defaults.max_keys);
    let rules = Arc::new(compile_sources(
        &[("flood.toml".into(), RULE.into())],
        Default::default(),
    )?);
    let engine = Engine::new(
        rules,
        Arc::new(GeoDatabases::default()),
        EngineConfig {
            max_keys: cap,
            ..defaults
        },
    )?;
    let hasher = CodeHasher::without_key();
    let before = rss_kib();
    let mut out = Vec::new();
    let started = std::time::Instant::now();
    for i in 0..keys {
        let ip = Ipv4Addr::from(0x0a00_0000u32.wrapping_add(i as u32));
        // One attempt a microsecond of event time: the whole flood sits inside
        // one 10-minute window, so nothing is evicted.
        let line = format!(
            r#"{{"event_id":"f{i}","ts":"{}","kind":"redemption","outcome":"invalid_code","card":{{"code_hash":"00112233"}},"account":{{"id":"u"}},"ip":"{ip}"}}"#,
            kamiguard::event::format_ts(1_795_305_600_000 + (i / 1000) as i64)
        );
        engine.process(&parse(line.as_bytes(), &hasher)?, &mut out);
        out.clear();
    }
    let after = rss_kib();
    let stats = engine.stats();
    let tracked = stats.state.live_keys.max(1) as u64;
    println!("keys flooded:     {keys}");
    println!("cap:              {cap}");
    println!("keys tracked:     {}", stats.state.live_keys);
    println!("cap hits:         {}", stats.state.cap_hits);
    println!("RSS growth:       {} MiB", (after.saturating_sub(before)) / 1024);
    println!("bytes per key:    {}", after.saturating_sub(before) * 1024 / tracked);
    println!("time:             {:.1} s", started.elapsed().as_secs_f64());
    assert!(stats.state.live_keys <= cap, "the cap did not hold");
    Ok(())
}
