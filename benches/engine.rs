//! Replay throughput against parsing alone, on one core, over the same bytes.
//!
//! `cargo bench --bench engine` (KAMIGUARD_BENCH_EVENTS sets the size,
//! default 1,000,000). "parse" reads and validates every line; "replay" does
//! that and runs the shipped rule pack (with the fixture geo databases) over
//! it: the whole `kamiguard replay` minus file I/O (the generated file is in
//! event-time order, so replay takes its one-pass streaming path).
//! "keys" sweeps the number of distinct addresses for one threshold rule.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kamiguard::engine::{Engine, EngineConfig};
use kamiguard::enrich::GeoDatabases;
use kamiguard::event::{parse, CodeHasher};
use kamiguard::replay::{for_each_line, replay, ReplaySummary};
use kamiguard::rules::{compile_sources, load_rules};
use kamiguard::tools::generate::generate;

fn events() -> u64 {
    std::env::var("KAMIGUARD_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn replay_vs_parse(c: &mut Criterion) {
    let n = events();
    let input = generate(n, 42, 2000);
    let dir = tempfile::tempdir().expect("tempdir");
    let geo = Arc::new(
        GeoDatabases::open(&kamiguard::tools::fixtures::write_geo_fixtures(dir.path()).expect("geo fixtures"))
            .expect("geo"),
    );
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules = Arc::new(load_rules(&root.join("config/rules"), geo.available()).expect("rules"));
    let hasher = CodeHasher::without_key();

    let mut group = c.benchmark_group("replay_1m");
    group.sample_size(10);
    group.throughput(Throughput::Elements(n));
    // Lines are read as `replay` reads them, so that the two differ by the
    // engine and the decisions' output alone.
    group.bench_function("parse", |b| {
        b.iter(|| {
            let mut summary = ReplaySummary::default();
            for_each_line(input.as_bytes(), &hasher, i64::MAX, &mut summary, None, |_| true).expect("in memory");
            assert_eq!(summary.events, n);
        })
    });
    group.bench_function("replay", |b| {
        b.iter(|| {
            let mut summary = ReplaySummary::default();
            replay(
                || Ok(input.as_bytes()),
                || Engine::new(rules.clone(), geo.clone(), EngineConfig::default()).expect("engine"),
                &hasher,
                &mut std::io::sink(),
                &mut summary,
                None,
                chrono::Utc::now,
            )
            .expect("replay");
            assert_eq!(summary.events, n);
            assert!(summary.decisions_total() > 0);
        })
    });
    group.finish();
}

fn distinct_keys(c: &mut Criterion) {
    let rule = r#"[[rule]]
id = "ip-count"
kind = "threshold"
group_by = "ip"
aggregate = "count"
window_secs = 600
threshold = 1000000
action = "block"
score = 1
"#;
    let rules = Arc::new(compile_sources(&[("bench.toml".into(), rule.into())], Default::default()).expect("rule"));
    let hasher = CodeHasher::without_key();
    let mut group = c.benchmark_group("keys");
    group.sample_size(10);
    for keys in [10u32, 1_000, 100_000] {
        let events: Vec<_> = (0..200_000u32)
            .map(|i| {
                let ip = std::net::Ipv4Addr::from(0x0a00_0000 + (i % keys));
                let line = format!(
                    r#"{{"event_id":"k-{i}","ts":"2026-11-22T00:00:00Z","kind":"redemption","outcome":"invalid_code","card":{{"code_hash":"00112233"}},"account":{{"id":"u"}},"ip":"{ip}"}}"#
                );
                parse(line.as_bytes(), &hasher).expect("valid")
            })
            .collect();
        group.throughput(Throughput::Elements(events.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(keys), &events, |b, events| {
            b.iter(|| {
                let engine = Engine::new(
                    rules.clone(),
                    Arc::new(GeoDatabases::default()),
                    EngineConfig::default(),
                )
                .expect("engine");
                let mut out = Vec::new();
                for e in events {
                    engine.process(e, &mut out);
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, replay_vs_parse, distinct_keys);
criterion_main!(benches);

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
