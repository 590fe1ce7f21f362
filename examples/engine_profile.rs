//! Where the replay's time goes: the engine alone over events parsed ahead,
//! with the whole shipped pack or a subset of its rules.
//!
//!   cargo run --release --example engine_profile -- [EVENTS] [RULE_IDS] [RUNS] [ahead|plain]
//!
//! Defaults: 1,000,000 generated events (seed 42, 2,000 events/s, as the
//! `engine` bench), every rule of `config/rules`, 5 runs. RULE_IDS is `all`,
//! `none` (no rule: the engine's fixed cost) or a comma-separated list of rule
//! ids to keep. Prints, per run, the time to parse every line alone, to parse
//! and process every line (streaming, as `replay` does), to sweep the whole
//! state once at the end (every store walked, as sweeps did every minute
//! before sweeps were staggered), and to drop the engine with its state; then the
//! medians and the engine's share. `ahead`
//! (the default) decides each event once the next is parsed and prepared
//! (its keys hashed, the filters judged on its fields, its state
//! prefetched), as `replay` does; `plain` decides each as it is parsed.

use std::sync::Arc;
use std::time::Instant;

use kamiguard::engine::{Engine, EngineConfig};
use kamiguard::enrich::GeoDatabases;
use kamiguard::event::{parse, CodeHasher};
use kamiguard::rules::{load_rules, RuleSet};
use kamiguard::tools::generate::generate;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// This process's user and system CPU seconds so far, from `/proc/self/stat`
/// (zero where there is none): how much of a pass the kernel took, in page
/// faults above all.
fn cpu_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, r)| r)
        .split_whitespace()
        .collect();
    // utime and stime, in clock ticks: 100 a second on Linux (`getconf CLK_TCK`).
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0) / 100.0;
    (ticks(11), ticks(12))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1_000_000);
    let keep = args.next().unwrap_or_else(|| "all".into());
    let runs: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(5);
    let ahead = match args.next().as_deref() {
        None | Some("ahead") => true,
        Some("plain") => false,
        Some(other) => return Err(format!("expected `ahead` or `plain`, not `{other}`").into()),
    };

    let dir = tempfile::tempdir()?;
    let geo = Arc::new(GeoDatabases::open(&kamiguard::tools::fixtures::write_geo_fixtures(
        dir.path(),
    )?)?);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut rules: RuleSet = load_rules(&root.join("config/rules"), geo.available()).map_err(|e| e.to_string())?;
    if keep != "all" {
        rules = rules.only(&keep.split(',').collect::<Vec<_>>());
    }
    let rules = Arc::new(rules);
    eprintln!(
        "{} rules: {:?}",
        rules.rules.len(),
        rules.rules.iter().map(|r| &*r.id).collect::<Vec<_>>()
    );

    let input = generate(n, 42, 2000);
    // `str::lines` finds line ends with memchr, about as `replay`'s reader does.
    let lines = || input.lines().filter(|l| !l.is_empty()).map(str::as_bytes);
    let hasher = CodeHasher::without_key();
    let (mut parse_s, mut both_s, mut drop_s) = (Vec::new(), Vec::new(), Vec::new());
    let mut sys_s = Vec::new();
    for run in 0..runs {
        let t = Instant::now();
        for line in lines() {
            parse(line, &hasher)?;
        }
        parse_s.push(t.elapsed().as_secs_f64());

        let engine = Engine::new(rules.clone(), geo.clone(), EngineConfig::default())?;
        let mut out = Vec::new();
        let cpu = cpu_seconds();
        let t = Instant::now();
        let mut current = None;
        for line in lines() {
            let e = parse(line, &hasher)?;
            if !ahead {
                engine.process(&e, &mut out);
            } else {
                let prepared = engine.prepare(&e);
                if let Some((previous, p)) = current.replace((e, prepared)) {
                    engine.process_prepared(&previous, &p, &mut out);
                }
            }
            out.clear();
        }
        if let Some((last, p)) = current {
            engine.process_prepared(&last, &p, &mut out);
        }
        both_s.push(t.elapsed().as_secs_f64());
        let (user, sys) = cpu_seconds();
        eprintln!(
            "parse and process: user {:.2} s, system {:.2} s",
            user - cpu.0,
            sys - cpu.1
        );
        sys_s.push(sys - cpu.1);
        let t = Instant::now();
        let swept = engine.sweep(engine.now_ms());
        eprintln!("full sweep: {:.1} ms, {swept} evicted", t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let stats = engine.stats();
        let geo = engine.geo_record_counts();
        drop(engine);
        drop_s.push(t.elapsed().as_secs_f64());
        eprintln!(
            "run {run}: parse {:.3} s, parse and process {:.3} s, drop {:.3} s ({} decisions, {} keys; geo kept/decoded {:?})",
            parse_s[run], both_s[run], drop_s[run], stats.decisions, stats.state.live_keys, geo
        );
    }
    let (parse_m, both_m) = (median(parse_s), median(both_s));
    println!(
        "median: parse {parse_m:.3} s, parse and process {both_m:.3} s ({:.2}x parse), engine {:.0} ns/event, drop {:.3} s, system {:.2} s",
        both_m / parse_m,
        (both_m - parse_m) * 1e9 / n as f64,
        median(drop_s),
        median(sys_s)
    );
    Ok(())
}
