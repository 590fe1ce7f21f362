//! `kamiguard demo`: the whole pipeline on an in-process Kafka-protocol
//! cluster (librdkafka's mock cluster), fed by generated traffic, with a live
//! summary of decisions by rule.
//!
//! Everything here is for show and for a first look; nothing in it is used by
//! `kamiguard run`. The geo databases it writes ([`super::fixtures`]) are made up.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Deserialize;
use tokio::sync::watch;

use crate::engine::{Engine, EngineConfig};
use crate::enrich::GeoDatabases;
use crate::event::CodeHasher;
use crate::kafka::{run, KafkaConfig, PipelineConfig, RunError, RunStats, Settings};
use crate::metrics::{serve, Health, Metrics};
use crate::rules::{load_rules, RuleSet};
use crate::tools::generate::Traffic;

/// The shipped rule pack, built in so the demo runs from anywhere: its
/// files, as paths under `config/rules`, and their text.
pub const RULE_PACK: [(&str, &str); 6] = [
    (
        "config/rules/10-guessing.toml",
        include_str!("../../config/rules/10-guessing.toml"),
    ),
    (
        "config/rules/20-accounts.toml",
        include_str!("../../config/rules/20-accounts.toml"),
    ),
    (
        "config/rules/30-geo.toml",
        include_str!("../../config/rules/30-geo.toml"),
    ),
    (
        "config/rules/40-honey.toml",
        include_str!("../../config/rules/40-honey.toml"),
    ),
    (
        "config/rules/50-batch.toml",
        include_str!("../../config/rules/50-batch.toml"),
    ),
    (
        "config/rules/honey-decoys.txt",
        include_str!("../../config/rules/honey-decoys.txt"),
    ),
];

/// The code-hash key the demo uses when `KAMIGUARD_CODE_KEY` is not set.
pub const DEMO_CODE_KEY: &str = "kamiguard-demo-key";

/// Milliseconds of event time between generated attempts: event time runs
/// faster than the clock so windows fill within seconds.
const EVENT_STEP_MS: u64 = 10;

#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Stop after this many attempts (and their decisions) instead of on Ctrl-C.
    pub events: Option<u64>,
    /// Attempts sent per second of wall-clock time.
    pub rate: u64,
    /// Traffic seed.
    pub seed: u64,
    /// Partitions of each topic.
    pub partitions: i32,
    /// Rules to run instead of the built-in pack.
    pub rules: Option<Arc<RuleSet>>,
    /// Serve `/metrics`, `/healthz` and `/readyz` here.
    pub metrics: Option<std::net::SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Setup(String),
}

/// Decisions seen on the decisions topic, by (rule, action, mode).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally(pub BTreeMap<(String, String, String), u64>);

impl Tally {
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

/// Runs the demo until `shutdown` turns true or `options.events` are done,
/// drawing the summary on `screen`. Returns the last tally.
pub async fn demo(
    options: DemoOptions,
    mut shutdown: watch::Receiver<bool>,
    screen: &mut (impl Write + Send),
    redraw: bool,
) -> Result<Tally, DemoError> {
    let cluster = MockCluster::new(1)?;
    let bootstrap = cluster.bootstrap_servers();
    let kafka = KafkaConfig {
        brokers: bootstrap.clone(),
        group_id: "kamiguard-demo".into(),
        create_topics: false,
        partitions: options.partitions,
        ..KafkaConfig::default()
    };
    for topic in [
        &kafka.topics.attempts,
        &kafka.topics.decisions,
        &kafka.topics.dead_letters,
        &kafka.topics.operations,
    ] {
        cluster.create_topic(topic, options.partitions, 1)?;
    }

    let dir = std::env::temp_dir().join(format!("kamiguard-demo-{}", std::process::id()));
    let geo = Arc::new(
        GeoDatabases::open(&crate::tools::fixtures::write_geo_fixtures(&dir)?)
            .map_err(|e| DemoError::Setup(e.to_string()))?,
    );
    let rules = match options.rules.clone() {
        Some(r) => r,
        None => {
            // Written out and read back: the honey rules name their list by path.
            let pack = dir.join("rules");
            std::fs::create_dir_all(&pack)?;
            for (path, text) in RULE_PACK {
                let to = pack.join(path.trim_start_matches("config/rules/"));
                std::fs::write(&to, text)?;
            }
            Arc::new(load_rules(&pack, geo.available()).map_err(|e| DemoError::Setup(e.to_string()))?)
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    let engine = Arc::new(
        Engine::new(
            rules.clone(),
            geo,
            EngineConfig {
                // The demo's event time runs faster than the clock
                // (`EVENT_STEP_MS`), so its attempts are ahead of their
                // records by design: the bound on that is off here.
                max_ahead_secs: 10 * 365 * 86_400,
                ..EngineConfig::default()
            },
        )
        .map_err(|e| DemoError::Setup(e.to_string()))?,
    );
    let hasher = match std::env::var(crate::event::CODE_KEY_ENV).ok().filter(|k| !k.is_empty()) {
        Some(k) => CodeHasher::with_key(k.as_bytes()),
        None => CodeHasher::with_key(DEMO_CODE_KEY.as_bytes()),
    };
    if redraw {
        // The table is redrawn below the banner from a fixed row: start on
        // a clear screen so that row is below the banner, not over it.
        write!(screen, "\x1b[2J\x1b[H").map_err(DemoError::Io)?;
    }
    writeln!(
        screen,
        "kamiguard demo: mock Kafka cluster at {bootstrap}, {} rules\n\
         attach with: kcat -b {bootstrap} -C -t {} (decisions), -t {} (attempts), -t {} (dead letters)\n\
         Ctrl-C stops.",
        rules.rules.len(),
        kafka.topics.decisions,
        kafka.topics.attempts,
        kafka.topics.dead_letters,
    )
    .map_err(DemoError::Io)?;

    let stats = Arc::new(RunStats::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    if let Some(addr) = options.metrics {
        let bound = serve(addr, metrics.clone(), health.clone(), engine.clone(), stop_rx.clone()).await?;
        writeln!(screen, "metrics: http://{bound}/metrics").map_err(DemoError::Io)?;
    }
    let pipeline = run(
        Settings {
            kafka: kafka.clone(),
            // One instance: nothing to split (and the mock cluster does not
            // answer the admin requests that create internal topics).
            pipeline: PipelineConfig {
                repartition: crate::kafka::config::Repartition::Never,
                ..PipelineConfig::default()
            },
            engine: engine.clone(),
            hasher,
            metrics: metrics.clone(),
            health: health.clone(),
        },
        stats.clone(),
        stop_rx,
    );
    let sent = Arc::new(AtomicU64::new(0));
    let generator_done = Arc::new(AtomicBool::new(false));
    let generator = tokio::spawn(generate(
        kafka.clone(),
        options.clone(),
        sent.clone(),
        generator_done.clone(),
        shutdown.clone(),
    ));

    let watch = async {
        let tally_consumer = decisions_reader(&kafka)?;
        let mut tally = Tally::default();
        let mut ticks = tokio::time::interval(Duration::from_millis(250));
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => break,
                _ = ticks.tick() => {}
            }
            read_decisions(&tally_consumer, &mut tally);
            n += 1;
            let done = generator_done.load(Ordering::SeqCst)
                && stats.consumed.load(Ordering::Relaxed) >= sent.load(Ordering::SeqCst)
                && tally.total() >= stats.decisions.load(Ordering::Relaxed);
            if redraw && n % 4 == 0 && !done {
                draw(screen, &tally, &stats, redraw).map_err(DemoError::Io)?;
            } else if !redraw && n % 20 == 0 && !done {
                // Not a terminal (a pipe, a log file): a plain line every 5 s.
                writeln!(screen, "{}", summary_line(&tally, &stats)).map_err(DemoError::Io)?;
                screen.flush().map_err(DemoError::Io)?;
            }
            if done {
                break;
            }
        }
        Ok::<Tally, DemoError>(tally)
    };
    // However the watching ends (done, Ctrl-C, a reader that closed the
    // pipe), the pipeline is told to stop.
    let watcher = async {
        let tally = watch.await;
        let _ = stop_tx.send(true);
        tally
    };
    let (ran, tally) = tokio::join!(pipeline, watcher);
    generator.abort();
    ran?;
    let tally = tally?;
    draw(screen, &tally, &stats, false).map_err(DemoError::Io)?;
    Ok(tally)
}

/// Sends generated attempts at `options.rate` per second, with one malformed
/// message in a thousand so the dead-letter topic has something in it.
async fn generate(
    kafka: KafkaConfig,
    options: DemoOptions,
    sent: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), KafkaError> {
    let producer: FutureProducer = kafka.producer_config().create()?;
    let now = chrono::Utc::now().timestamp_millis();
    let mut traffic = Traffic::new(options.seed, now, 1000 / EVENT_STEP_MS);
    let per_tick = (options.rate / 100).max(1);
    let mut ticks = tokio::time::interval(Duration::from_millis(10));
    let limit = options.events.unwrap_or(u64::MAX);
    let mut i = 0u64;
    while i < limit && !*shutdown.borrow() {
        ticks.tick().await;
        for _ in 0..per_tick.min(limit - i) {
            let line = if i % 1000 == 999 {
                format!(r#"{{"event_id":"broken-{i}","kind":"redemption"}}"#)
            } else {
                traffic.next_line()
            };
            let record: FutureRecord<'_, (), str> = FutureRecord::to(&kafka.topics.attempts).payload(&line);
            // Delivery is awaited by the flush below; the acks are not needed.
            let mut record = record;
            loop {
                match producer.send_result(record) {
                    Ok(_) => break,
                    Err((_, back)) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
            i += 1;
        }
        sent.store(i, Ordering::SeqCst);
    }
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(10))?;
    done.store(true, Ordering::SeqCst);
    Ok(())
}

/// A group-less reader of every partition of the decisions topic.
fn decisions_reader(kafka: &KafkaConfig) -> Result<BaseConsumer, KafkaError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", "kamiguard-demo-summary")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..kafka.partitions {
        tpl.add_partition_offset(&kafka.topics.decisions, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}

#[derive(Deserialize)]
struct Seen {
    rule: String,
    action: String,
    mode: String,
}

fn read_decisions(consumer: &BaseConsumer, tally: &mut Tally) {
    while let Some(Ok(m)) = consumer.poll(Duration::from_millis(0)) {
        if let Some(d) = m.payload().and_then(|p| serde_json::from_slice::<Seen>(p).ok()) {
            *tally.0.entry((d.rule, d.action, d.mode)).or_default() += 1;
        }
    }
}

fn summary_line(tally: &Tally, stats: &RunStats) -> String {
    format!(
        "attempts {}  dead letters {}  decisions {}  rules fired {}",
        stats.events.load(Ordering::Relaxed),
        stats.dead_letters.load(Ordering::Relaxed),
        tally.total(),
        tally
            .0
            .keys()
            .map(|(rule, _, _)| rule)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    )
}

fn draw(screen: &mut impl Write, tally: &Tally, stats: &RunStats, redraw: bool) -> std::io::Result<()> {
    if redraw {
        // Clear the screen below the banner and move home.
        write!(screen, "\x1b[5;1H\x1b[J")?;
    }
    writeln!(screen, "\n{}", summary_line(tally, stats))?;
    writeln!(screen, "{:<28} {:<10} {:<8} {:>7}", "rule", "action", "mode", "count")?;
    for ((rule, action, mode), n) in &tally.0 {
        writeln!(screen, "{rule:<28} {action:<10} {mode:<8} {n:>7}")?;
    }
    screen.flush()
}
