//! The `kamiguard` command line. The only place `anyhow` is used.

use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// mimalloc: the engine allocates many small, short-lived strings per event,
/// and glibc malloc spent a large share of replay time on them (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use kamiguard::config::Config;
use kamiguard::engine::Engine;
use kamiguard::enrich::{GeoDatabases, GeoNeeds};
use kamiguard::event::CodeHasher;
use kamiguard::replay::{replay, ReplaySummary};
use kamiguard::rules::{load_rules, RuleSet};
use kamiguard::scenario::{run_scenario, scenario_dirs};

/// The shipped rule pack, used when neither --rules nor the config names one.
const DEFAULT_RULES: &str = "config/rules";

#[derive(Parser)]
#[command(
    name = "kamiguard",
    version,
    about = "Real-time abuse detection for gift-card codes."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay attempt events (JSON lines) through the engine and print the decisions.
    Replay {
        /// Attempt events, one JSON object per line.
        events: PathBuf,
        /// Write decisions here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Allowlist records, one JSON object a line, later lines winning: a
        /// dump of the allowlist topic (`kcat -C -t kamiguard.allowlist -e`)
        /// applies what the service applied (README, "Admin API").
        #[arg(long)]
        allowlist: Option<PathBuf>,
        #[command(flatten)]
        common: Common,
    },
    /// Score the rules on a history of attempts against outcome labels; with
    /// --baseline, what an edit would change; with --sweep, where a setting
    /// should sit; --report draws it all on one HTML page.
    Backtest {
        /// Attempt events, one JSON object per line (as replay reads them).
        events: PathBuf,
        /// Outcome labels, one JSON object per line (README, "Outcome labels").
        #[arg(long)]
        labels: PathBuf,
        /// The rules in use today: what the candidate (--rules) would change.
        #[arg(long)]
        baseline: Option<PathBuf>,
        /// RULE.FIELD=FROM..TO/STEP: that setting at each value (threshold,
        /// window_secs, limit, period_secs, burst).
        #[arg(long)]
        sweep: Option<kamiguard::backtest::sweep::SweepSpec>,
        /// Write the report as one self-contained HTML page here.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Print the figures as JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Check rule files; print every error as file:line:column and exit non-zero if any.
    CheckRules {
        /// A rule file or a directory of them.
        path: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Write generated attempt traffic (honest with attacks mixed in) as JSON lines.
    Generate {
        /// How many events.
        #[arg(long, default_value_t = 100_000)]
        events: u64,
        /// Seed; the same seed gives the same file.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Events per second of event time.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// Also write made-up geo databases matching the traffic's
        /// addresses into this folder, with a `kamiguard.toml` naming them,
        /// so the shipped geo rules can run (`--config DIR/kamiguard.toml`).
        #[arg(long)]
        geo: Option<PathBuf>,
        /// Also write the outcome labels the generator knows (each actor
        /// fraud or legit, with its family) here, for `kamiguard backtest`.
        #[arg(long)]
        labels: Option<PathBuf>,
    },
    /// Consume attempts from Kafka, publish decisions and dead letters (the live service).
    Run {
        #[command(flatten)]
        common: Common,
    },
    /// The whole pipeline on an in-process Kafka cluster with generated traffic.
    Demo {
        /// Stop after this many attempts instead of on Ctrl-C.
        #[arg(long)]
        events: Option<u64>,
        /// Attempts per second.
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        /// Traffic seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Partitions of each topic.
        #[arg(long, default_value_t = 3)]
        partitions: i32,
        /// Rule file or directory instead of the built-in rule pack.
        #[arg(long)]
        rules: Option<PathBuf>,
        /// Serve /metrics, /healthz and /readyz on this address (e.g. 127.0.0.1:9464).
        #[arg(long)]
        metrics: Option<std::net::SocketAddr>,
    },
    /// Benchmark: load generated events into a broker, time a Kafka passthrough and `run` over them, then latency at half load.
    Bench {
        /// Bootstrap servers of the broker to measure on (scripts/bench.sh starts one).
        #[arg(long)]
        brokers: String,
        /// Events to load.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Seconds of paced traffic for the latency phase (0 skips it).
        #[arg(long, default_value_t = 20)]
        latency_secs: u64,
        /// Events per second for the latency phase (default: half the measured run rate).
        #[arg(long)]
        latency_rate: Option<f64>,
        /// Partitions of the latency phase's attempts topic (more than one
        /// measures what the event-time order across them adds).
        #[arg(long, default_value_t = 1)]
        latency_partitions: i32,
        /// A librdkafka property for every client, KEY=VALUE (repeatable).
        #[arg(long = "set", value_parser = parse_property)]
        properties: Vec<(String, String)>,
        /// Instead: scale-out, one instance not split, then 1..=N split across
        /// instances (internal topics), input keyed by account.
        #[arg(long)]
        scale: Option<usize>,
        /// Partitions of the attempts topic for --scale.
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        #[command(flatten)]
        common: Common,
    },
    /// Hash raw card codes (one a line on standard input) with the code key,
    /// as kamiguard hashes a raw `card.code`: a honey list from the issuer's
    /// decoys. The codes are never printed or logged.
    HashCodes {
        /// Service configuration file naming the code key (else KAMIGUARD_CODE_KEY or its _FILE).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run scenario folders (events.jsonl + expected.jsonl) against the rules.
    TestRules {
        /// A scenario folder, or a folder of them.
        dir: PathBuf,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Args)]
struct Common {
    /// Rule file or directory (default: the config's `rules`, else config/rules).
    #[arg(long)]
    rules: Option<PathBuf>,
    /// Service configuration file (geo databases, engine limits, code key).
    #[arg(long)]
    config: Option<PathBuf>,
    /// GeoIP2/GeoLite2 City database.
    #[arg(long)]
    city: Option<PathBuf>,
    /// GeoLite2 ASN database.
    #[arg(long)]
    asn: Option<PathBuf>,
    /// GeoIP2 Anonymous-IP database.
    #[arg(long)]
    anonymous: Option<PathBuf>,
}

impl Common {
    fn config(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => {
                let mut c = Config::default();
                c.apply_env(|k| std::env::var(k).ok())?;
                c
            }
        };
        if self.city.is_some() {
            config.geo.city = self.city.clone();
        }
        if self.asn.is_some() {
            config.geo.asn = self.asn.clone();
        }
        if self.anonymous.is_some() {
            config.geo.anonymous = self.anonymous.clone();
        }
        if self.rules.is_some() {
            config.rules = self.rules.clone();
        }
        Ok(config)
    }

    fn geo_given(&self) -> bool {
        self.config.is_some() || self.city.is_some() || self.asn.is_some() || self.anonymous.is_some()
    }
}

/// The code hasher from the environment or the config, with the process's
/// state keys seeded from its key (`key::seed_keys`) before any rule set
/// is compiled. Without a key, keys keep the public seed.
fn code_hasher(config: &Config) -> CodeHasher {
    let hasher = CodeHasher::from_key(config.code_key.as_ref().map(|k| k.expose()));
    if let Some(seed) = hasher.state_key_seed() {
        kamiguard::key::seed_keys(seed);
    }
    hasher
}

fn rules_path(config: &Config) -> PathBuf {
    config.rules.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_RULES))
}

fn load(path: &Path, available: GeoNeeds) -> anyhow::Result<Arc<RuleSet>> {
    match load_rules(path, available) {
        Ok(set) => Ok(Arc::new(set)),
        Err(errors) => {
            eprintln!("{errors}");
            bail!("{} error(s) in the rules; nothing was run", errors.0.len())
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        // A reader that went away (`| head`, `| tee` stopped with Ctrl-C)
        // ends the output, as it does for every Unix tool; nothing failed.
        Err(e) if reader_left(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kamiguard: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether `e` comes from writing to a pipe whose reader has closed it.
fn reader_left(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Replay {
            events,
            out,
            allowlist,
            common,
        } => replay_command(&events, out.as_deref(), allowlist.as_deref(), &common),
        Command::Backtest {
            events,
            labels,
            baseline,
            sweep,
            report,
            json,
            common,
        } => backtest_command(
            &events,
            &labels,
            baseline.as_deref(),
            sweep.as_ref(),
            report.as_deref(),
            json,
            &common,
        ),
        Command::CheckRules { path, common } => check_rules(&path, &common),
        Command::TestRules { dir, common } => test_rules(&dir, &common),
        Command::HashCodes { config } => hash_codes(config.as_deref()),
        Command::Run { common } => run_command(&common),
        Command::Bench {
            brokers,
            events,
            latency_secs,
            latency_rate,
            latency_partitions,
            properties,
            scale,
            partitions,
            common,
        } => {
            let mut options = bench_options(brokers, events, latency_secs, latency_rate, properties, &common)?;
            options.latency_partitions = latency_partitions;
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            match scale {
                Some(n) => {
                    for point in runtime.block_on(kamiguard::tools::bench::scale(&options, n.max(1), partitions))? {
                        writeln!(std::io::stdout(), "{}", point.render())?;
                    }
                }
                None => write!(
                    std::io::stdout(),
                    "{}",
                    runtime.block_on(kamiguard::tools::bench::bench(options))?.render()
                )?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo {
            events,
            rate,
            seed,
            partitions,
            rules,
            metrics,
        } => demo_command(events, rate, seed, partitions, rules, metrics),
        Command::Generate {
            events,
            seed,
            rate,
            geo,
            labels,
        } => {
            if let Some(dir) = &geo {
                write_geo(dir)?;
            }
            let text = kamiguard::tools::generate::generate(events, seed, rate);
            if let Some(path) = &labels {
                std::fs::write(path, kamiguard::tools::generate::labels(&text))
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            std::io::stdout().lock().write_all(text.as_bytes())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `kamiguard hash-codes`: raw codes in, their keyed hashes out, line for
/// line. A line that is not a code (empty, too long, not UTF-8) stops it
/// with the line's number, never its content.
fn hash_codes(config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = Common {
        rules: None,
        config: config.map(Path::to_owned),
        city: None,
        asn: None,
        anonymous: None,
    }
    .config()?;
    let hasher = CodeHasher::from_key(config.code_key.as_ref().map(|k| k.expose()));
    if !hasher.has_key() {
        anyhow::bail!("no code key: set KAMIGUARD_CODE_KEY (or its _FILE, or code_key in --config); decoys must be hashed with the key the service uses");
    }
    let stdin = std::io::stdin().lock();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut written = 0u64;
    for (i, line) in stdin.split(b'\n').enumerate() {
        let line = line?;
        let code = std::str::from_utf8(&line)
            .map(|l| l.trim_end_matches('\r').trim())
            .map_err(|_| anyhow::anyhow!("line {}: not UTF-8 (not shown)", i + 1))?;
        if code.is_empty() {
            continue;
        }
        if code.len() > 256 {
            anyhow::bail!("line {}: longer than the 256 bytes a code may have (not shown)", i + 1);
        }
        let hash = hasher
            .hash(code)
            .map_err(|_| anyhow::anyhow!("line {}: cannot hash it (not shown)", i + 1))?;
        writeln!(out, "{hash}")?;
        written += 1;
    }
    out.flush()?;
    eprintln!("{written} {} hashed", if written == 1 { "code" } else { "codes" });
    Ok(ExitCode::SUCCESS)
}

/// The generator's made-up geo databases in `dir`, and a config naming
/// them (paths relative to it; rules from the default place).
fn write_geo(dir: &Path) -> anyhow::Result<()> {
    kamiguard::tools::fixtures::write_geo_fixtures(dir).with_context(|| format!("cannot write {}", dir.display()))?;
    let config = dir.join("kamiguard.toml");
    std::fs::write(
        &config,
        "# Made-up geo databases matching `kamiguard generate`'s addresses (not MaxMind's data).\n\
         [geo]\ncity = \"city.mmdb\"\nasn = \"asn.mmdb\"\nanonymous = \"anonymous.mmdb\"\n",
    )
    .with_context(|| format!("cannot write {}", config.display()))?;
    eprintln!(
        "geo databases in {}; use them with --config {}",
        dir.display(),
        config.display()
    );
    Ok(())
}

fn replay_command(
    events: &Path,
    out: Option<&Path>,
    allowlist: Option<&Path>,
    common: &Common,
) -> anyhow::Result<ExitCode> {
    let config = common.config()?;
    let allowlist = match allowlist {
        Some(path) => Some(kamiguard::allowlist::AllowList::load_file(path).map_err(|e| anyhow::anyhow!(e))?),
        None => None,
    };
    let geo = Arc::new(GeoDatabases::open(&config.geo)?);
    let hasher = code_hasher(&config);
    let rules = load(&rules_path(&config), geo.available())?;

    let len = std::fs::metadata(events)
        .with_context(|| format!("cannot open {}", events.display()))?
        .len();
    let progress = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} reading {bytes}/{total_bytes} {wide_bar} {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    });
    let sink: Box<dyn Write> = match out {
        Some(path) => {
            Box::new(std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?)
        }
        None => Box::new(std::io::stdout().lock()),
    };
    let mut sink = BufWriter::with_capacity(1 << 16, sink);
    let mut summary = ReplaySummary::default();
    let open = || std::fs::File::open(events).map(|f| BufReader::with_capacity(1 << 20, f));
    let make_engine = || {
        let engine = Engine::new(rules.clone(), geo.clone(), config.engine.clone())?;
        if let Some(list) = &allowlist {
            engine.set_allowlist(list.clone());
        }
        Ok::<_, kamiguard::engine::EngineError>(engine)
    };
    // Fail on a bad engine setting before reading anything.
    make_engine()?;
    let engine = replay(
        open,
        || make_engine().unwrap_or_else(|_| unreachable!("checked above")),
        &hasher,
        &mut sink,
        &mut summary,
        progress.as_ref(),
        chrono::Utc::now,
    )
    .with_context(|| format!("replay of {} failed", events.display()))?;
    if let Some(bar) = &progress {
        bar.finish_and_clear();
    }
    eprint!("{}", summary.render());
    // When a circuit breaker would have tripped (what `run` publishes on
    // the operations topic).
    for event in engine.take_ops() {
        eprintln!("{} at {}: {}", event.event.replace('_', " "), event.at, event.reason);
    }
    let stats = engine.stats();
    if stats.state.cap_hits > 0 {
        let by_store: Vec<String> = engine
            .cap_hits_by_store()
            .iter()
            .filter(|c| c.hits > 0)
            .map(|c| format!("{} {}", c.store, c.hits))
            .collect();
        eprintln!(
            "warning: the state key cap ({}) was reached {} times ({}); raise engine.max_keys",
            stats.state.cap,
            stats.state.cap_hits,
            by_store.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn backtest_command(
    events: &Path,
    labels: &Path,
    baseline: Option<&Path>,
    sweep: Option<&kamiguard::backtest::sweep::SweepSpec>,
    report: Option<&Path>,
    json: bool,
    common: &Common,
) -> anyhow::Result<ExitCode> {
    use kamiguard::backtest;
    let config = common.config()?;
    let geo = Arc::new(GeoDatabases::open(&config.geo)?);
    let hasher = code_hasher(&config);
    let rules = rules_path(&config);
    let found = backtest::backtest(&backtest::Inputs {
        events,
        labels,
        rules: &rules,
        baseline,
        sweep,
        setup: backtest::Setup {
            geo,
            config: config.engine.clone(),
        },
        hasher: &hasher,
    })
    .map_err(|e| anyhow::anyhow!(e))?;
    if let Some(path) = report {
        std::fs::write(path, backtest::html::render(&found))
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &found)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", backtest::render_text(&found))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A runtime whose shutdown channel turns true on SIGTERM or SIGINT.
fn runtime_with_signals() -> anyhow::Result<(tokio::runtime::Runtime, tokio::sync::watch::Receiver<bool>)> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut term = {
        let _guard = runtime.enter();
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?
    };
    runtime.spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
        }
        let _ = tx.send(true);
    });
    Ok((runtime, rx))
}

fn run_command(common: &Common) -> anyhow::Result<ExitCode> {
    let Some(path) = &common.config else {
        bail!("run needs --config FILE (see config/kamiguard.toml)");
    };
    let config = common.config()?;
    // Secrets print redacted (`kamiguard::secret`), so the whole
    // configuration can be shown to whoever debugs a deployment.
    tracing::debug!(?config, "configuration");
    let geo = Arc::new(GeoDatabases::open(&config.geo)?);
    let available = geo.available();
    let hasher = code_hasher(&config);
    let rules = load(&rules_path(&config), available)?;
    let engine = Arc::new(Engine::new(rules, geo, config.engine.clone())?);
    let (runtime, shutdown) = runtime_with_signals()?;
    let metrics = Arc::new(kamiguard::metrics::Metrics::new());
    let reloader = kamiguard::reload::Reloader::new(rules_path(&config), available, engine.clone(), metrics.clone());
    let poll = (config.pipeline.rules_poll_secs > 0).then(|| Duration::from_secs(config.pipeline.rules_poll_secs));
    runtime.spawn(reloader.watch(poll, shutdown.clone()));
    let health = Arc::new(kamiguard::metrics::Health::default());
    let admin = {
        let _guard = runtime.enter();
        kamiguard::admin::Admin::new(&config.admin, &config.kafka, engine.clone())
            .map_err(|e| anyhow::anyhow!("admin API: {e}"))?
    };
    if config.http.enabled {
        runtime
            .block_on(kamiguard::metrics::serve(
                config.http.listen,
                metrics.clone(),
                health.clone(),
                engine.clone(),
                shutdown.clone(),
            ))
            .with_context(|| format!("cannot listen on {} (http.listen)", config.http.listen))?;
    }
    if let Some(admin) = &admin {
        runtime
            .block_on(admin.serve(&config.admin, shutdown.clone()))
            .map_err(|e| anyhow::anyhow!("admin API: {e}"))?;
    }
    let settings = kamiguard::kafka::Settings {
        kafka: config.kafka,
        pipeline: config.pipeline,
        engine,
        hasher,
        metrics,
        health,
    };
    let stats = Arc::new(kamiguard::kafka::RunStats::default());
    runtime
        .block_on(kamiguard::kafka::run(settings, stats, shutdown))
        .with_context(|| format!("run with {} stopped", path.display()))?;
    Ok(ExitCode::SUCCESS)
}

fn bench_options(
    brokers: String,
    events: u64,
    latency_secs: u64,
    latency_rate: Option<f64>,
    properties: Vec<(String, String)>,
    common: &Common,
) -> anyhow::Result<kamiguard::tools::bench::BenchOptions> {
    let config = common.config()?;
    let geo = Arc::new(GeoDatabases::open(&config.geo)?);
    let rules = load(&rules_path(&config), geo.available())?;
    Ok(kamiguard::tools::bench::BenchOptions {
        brokers,
        events,
        seed: 42,
        latency_secs,
        latency_rate,
        latency_partitions: 1,
        properties,
        rules,
        geo,
        engine: config.engine,
    })
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

fn demo_command(
    events: Option<u64>,
    rate: u64,
    seed: u64,
    partitions: i32,
    rules: Option<PathBuf>,
    metrics: Option<std::net::SocketAddr>,
) -> anyhow::Result<ExitCode> {
    let rules = match rules {
        Some(path) => Some(load(
            &path,
            kamiguard::enrich::GeoNeeds {
                city: true,
                asn: true,
                anonymous: true,
            },
        )?),
        None => None,
    };
    let options = kamiguard::tools::demo::DemoOptions {
        events,
        rate,
        seed,
        partitions,
        rules,
        metrics,
    };
    let (runtime, shutdown) = runtime_with_signals()?;
    let redraw = std::io::stdout().is_terminal();
    let mut screen = std::io::stdout();
    runtime.block_on(kamiguard::tools::demo::demo(options, shutdown, &mut screen, redraw))?;
    Ok(ExitCode::SUCCESS)
}

fn check_rules(path: &Path, common: &Common) -> anyhow::Result<ExitCode> {
    // Without a config or geo flags, check the rules alone and assume every
    // database will be there; with them, also check that the needed ones are.
    let available = if common.geo_given() {
        GeoDatabases::open(&common.config()?.geo)?.available()
    } else {
        GeoNeeds {
            city: true,
            asn: true,
            anonymous: true,
        }
    };
    let mut out = std::io::stdout().lock();
    match load_rules(path, available) {
        Ok(set) => {
            for r in &set.rules {
                writeln!(
                    out,
                    "{:<32} {:<10} {:<9} {}  per {}",
                    r.id,
                    r.action.as_str(),
                    r.mode.as_str(),
                    r.version,
                    r.home.as_str()
                )?;
            }
            for id in &set.disabled {
                writeln!(out, "{id:<32} (disabled)")?;
            }
            writeln!(out, "{} rules ok, rule set version {}", set.rules.len(), set.version)?;
            for caveat in set.split_caveats() {
                writeln!(out, "note: split across instances, {caveat}")?;
            }
            if !common.geo_given() {
                writeln!(
                    out,
                    "note: geo databases were not checked; pass --config or --city/--asn/--anonymous to check them"
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            writeln!(out, "{errors}")?;
            eprintln!("{} error(s)", errors.0.len());
            Ok(ExitCode::FAILURE)
        }
    }
}

fn test_rules(dir: &Path, common: &Common) -> anyhow::Result<ExitCode> {
    let config = common.config()?;
    let geo = Arc::new(GeoDatabases::open(&config.geo)?);
    let hasher = code_hasher(&config);
    let default_rules = match (&config.rules, Path::new(DEFAULT_RULES).exists()) {
        (Some(p), _) => Some(load(p, geo.available())?),
        (None, true) => Some(load(Path::new(DEFAULT_RULES), geo.available())?),
        (None, false) => None,
    };
    let dirs = scenario_dirs(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    if dirs.is_empty() {
        bail!("no scenario folders (with events.jsonl) under {}", dir.display());
    }
    let mut out = std::io::stdout().lock();
    let (mut passed, mut failed) = (0, 0);
    for d in &dirs {
        let report = run_scenario(d, default_rules.as_ref(), &geo, &config.engine, &hasher);
        write!(out, "{}", report.render())?;
        if report.passed() {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    writeln!(out, "{passed} passed, {failed} failed")?;
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
