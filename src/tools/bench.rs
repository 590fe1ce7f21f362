//! `kamiguard bench`: kamiguard against Kafka itself, in one run on the same
//! broker (README, "Benchmarks": measured against the limit).
//!
//! 1. **Load** N generated events (the demo's traffic mix) into a fresh topic.
//! 2. **Passthrough**: a consumer group reads them and produces each message
//!    to another topic with the same client settings as `run` (the floor:
//!    Kafka and librdkafka alone), acknowledgements awaited.
//! 3. **Run**: the real pipeline ([`crate::kafka::run()`]) over the same input,
//!    with a fresh group, until every event is processed, acknowledged and
//!    committed.
//! 4. **Latency at half load**: events stamped with the wall clock are sent at
//!    half the measured run rate; a reader of the decisions topic takes
//!    `now - event_ts` of each decision (event to decision readable by the
//!    enforcement side, broker included).
//!
//! Timing starts at the first message taken off the topic, so consumer-group
//! joins do not count. CPU time is the process's user + system time
//! (`/proc/self/stat`) over each phase; peak RSS is the process's `VmHWM`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryFuture, FutureProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};

use crate::engine::{Engine, EngineConfig};
use crate::enrich::GeoDatabases;
use crate::event::{parse_ts_ms, CodeHasher};
use crate::kafka::config::Repartition;
use crate::kafka::topology::partition_for;
use crate::kafka::{ensure_topics, run, KafkaConfig, PipelineConfig, RunError, RunStats, Settings, Topics};
use crate::metrics::{Health, Metrics};
use crate::rules::RuleSet;
use crate::tools::generate::Traffic;

pub struct BenchOptions {
    pub brokers: String,
    pub events: u64,
    pub seed: u64,
    /// Seconds of paced traffic for the latency phase (0 skips it).
    pub latency_secs: u64,
    /// Events per second for the latency phase; default half the measured run rate.
    pub latency_rate: Option<f64>,
    /// Partitions of the latency phase's attempts topic (1: no ordering to
    /// wait for; more: the cost of the event-time order across them).
    pub latency_partitions: i32,
    /// librdkafka properties for every client of the bench (`kafka.properties`).
    pub properties: Vec<(String, String)>,
    pub rules: Arc<RuleSet>,
    pub geo: Arc<GeoDatabases>,
    pub engine: EngineConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("{0}")]
    Other(String),
}

/// One timed phase.
#[derive(Debug, Clone, Copy, Default)]
pub struct Phase {
    pub events: u64,
    pub wall_secs: f64,
    pub cpu_secs: f64,
}

impl Phase {
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.wall_secs.max(1e-9)
    }

    pub fn cpu_per_million(&self) -> f64 {
        self.cpu_secs * 1e6 / self.events.max(1) as f64
    }
}

#[derive(Debug, Clone, Default)]
pub struct Latency {
    pub rate: f64,
    pub events: u64,
    /// Decisions the reader saw, and their age when readable.
    pub samples: usize,
    pub p50_ms: i64,
    pub p99_ms: i64,
    pub p999_ms: i64,
    pub max_ms: i64,
    /// Event time to the broker's acknowledgement of the decision, from
    /// kamiguard's own histogram: the bucket bound each quantile falls under.
    pub ack_p50_le_ms: f64,
    pub ack_p99_le_ms: f64,
    pub ack_p999_le_ms: f64,
    /// The same from the moment kamiguard took the event off the topic.
    pub ingest_p50_le_ms: f64,
    pub ingest_p99_le_ms: f64,
}

#[derive(Debug, Clone, Default)]
pub struct BenchReport {
    pub load: Phase,
    pub passthrough: Phase,
    pub run: Phase,
    pub decisions: u64,
    pub peak_rss_kib: u64,
    pub latency: Option<Latency>,
}

impl BenchReport {
    pub fn render(&self) -> String {
        let row = |name: &str, p: &Phase| {
            format!(
                "{name:<12} {:>9} events {:>8.2} s {:>10.0} events/s {:>7.2} CPU s/M events\n",
                p.events,
                p.wall_secs,
                p.rate(),
                p.cpu_per_million()
            )
        };
        let mut s = String::new();
        s += &row("load", &self.load);
        s += &row("passthrough", &self.passthrough);
        s += &row("run", &self.run);
        s += &format!(
            "run / passthrough throughput: {:.2}   decisions: {}   peak RSS: {} MiB\n",
            self.run.rate() / self.passthrough.rate().max(1e-9),
            self.decisions,
            self.peak_rss_kib / 1024
        );
        if let Some(l) = &self.latency {
            s += &format!(
                "latency at {:.0} events/s ({} events, {} decisions): p50 {} ms, p99 {} ms, p99.9 {} ms, max {} ms\n",
                l.rate, l.events, l.samples, l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms
            );
            s += &format!(
                "  of which event to broker acknowledgement: p50 <= {} ms, p99 <= {} ms, p99.9 <= {} ms\n",
                l.ack_p50_le_ms, l.ack_p99_le_ms, l.ack_p999_le_ms
            );
            s += &format!(
                "  and taken off the topic to acknowledgement: p50 <= {} ms, p99 <= {} ms\n",
                l.ingest_p50_le_ms, l.ingest_p99_le_ms
            );
        }
        s
    }
}

/// Process user + system CPU seconds (`/proc/self/stat`, clock ticks of 1/100 s).
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    (ticks(11) + ticks(12)) / 100.0
}

/// A `kB` field of `/proc/self/status` (`"VmRSS:"`, `"VmHWM:"`), in KiB.
pub fn proc_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn peak_rss_kib() -> u64 {
    proc_status_kib("VmHWM:")
}

/// Loads `o.events` generated attempts into the attempts topic, all
/// acknowledged. With `by_account` (the partition count), keyed by account and
/// placed by Kafka's partitioner function, as a redemption service keys them.
async fn load(
    o: &BenchOptions,
    kafka: &KafkaConfig,
    producer: &FutureProducer,
    by_account: Option<i32>,
) -> Result<Phase, BenchError> {
    let (cpu0, t0) = (cpu_secs(), Instant::now());
    let (acks, awaiter) = ack_awaiter();
    let mut traffic = Traffic::new(o.seed, 1_795_305_600_000, 2000);
    let mut batch = Vec::with_capacity(1000);
    let topic = &kafka.topics.attempts;
    for _ in 0..o.events {
        let line = traffic.next_line();
        let ack = match by_account {
            Some(n) => {
                let account = account_of(&line);
                let partition = partition_for(account.as_bytes(), n);
                crate::kafka::produce::send(producer, topic, Some(partition), account, line.as_bytes(), None).await?
            }
            None => send(producer, topic, b"", line.as_bytes()).await?,
        };
        batch.push(ack);
        if batch.len() == 1000 {
            let _ = acks.send(std::mem::take(&mut batch)).await;
        }
    }
    let _ = acks.send(batch).await;
    drop(acks);
    awaiter.await.map_err(|e| BenchError::Other(e.to_string()))??;
    eprintln!("bench: loaded {} events into {topic}", o.events);
    Ok(Phase {
        events: o.events,
        wall_secs: t0.elapsed().as_secs_f64(),
        cpu_secs: cpu_secs() - cpu0,
    })
}

/// The account id of a generated line.
fn account_of(line: &str) -> &str {
    const AT: &str = r#""account":{"id":""#;
    line.find(AT)
        .and_then(|i| {
            let rest = &line[i + AT.len()..];
            rest.find('"').map(|end| &rest[..end])
        })
        .unwrap_or_default()
}

/// One point of the scale-out bench.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScalePoint {
    pub instances: usize,
    /// Split by home key (internal topics) or not.
    pub split: bool,
    pub phase: Phase,
    /// Copies forwarded to internal topics.
    pub copies: u64,
    /// Decisions published: the same input gives the same count in every row.
    pub decisions: u64,
}

impl ScalePoint {
    pub fn render(&self) -> String {
        format!(
            "{} instance(s), {:<9} {:>9} events {:>8.2} s {:>9.0} events/s {:>7.2} CPU s/M events, {:.2} copies per event, {} decisions",
            self.instances,
            if self.split { "split" } else { "not split" },
            self.phase.events,
            self.phase.wall_secs,
            self.phase.rate(),
            self.phase.cpu_per_million(),
            self.copies as f64 / self.phase.events.max(1) as f64,
            self.decisions
        )
    }
}

/// `kamiguard bench --scale N`: the same input (keyed by account over
/// `partitions`) through one instance not split, then 1..=N instances split,
/// each set in a consumer group of its own, all in this process (so they share
/// this machine's cores, as instances on one machine would). The input is
/// loaded once every instance has partitions, and timing starts at the first
/// attempt taken in, so it overlaps the load (which is several times faster).
pub async fn scale(o: &BenchOptions, max_instances: usize, partitions: i32) -> Result<Vec<ScalePoint>, BenchError> {
    let stamp = chrono::Utc::now().timestamp_millis();
    let mut points = Vec::new();
    let runs = std::iter::once((1, false)).chain((1..=max_instances).map(|k| (k, true)));
    for (instances, split) in runs {
        let kind = if split { "split" } else { "direct" };
        let name = format!("scale-{}-{stamp}-{instances}{kind}", std::process::id());
        let kafka = KafkaConfig {
            partitions,
            ..config(o, &name)
        };
        ensure_topics(&kafka).await?;
        let pipeline = PipelineConfig {
            repartition: if split { Repartition::Always } else { Repartition::Never },
            ..PipelineConfig::default()
        };
        let (stop, shutdown) = watch::channel(false);
        let mut tasks = Vec::new();
        let mut all = Vec::new();
        let mut healths = Vec::new();
        for _ in 0..instances {
            let engine = Arc::new(
                Engine::new(o.rules.clone(), o.geo.clone(), o.engine.clone())
                    .map_err(|e| BenchError::Other(e.to_string()))?,
            );
            let stats = Arc::new(RunStats::default());
            let health = Arc::new(Health::default());
            let settings = Settings {
                kafka: kafka.clone(),
                pipeline: pipeline.clone(),
                engine,
                hasher: CodeHasher::with_key(b"bench"),
                metrics: Arc::new(Metrics::new()),
                health: health.clone(),
            };
            healths.push(health);
            all.push(stats.clone());
            tasks.push(tokio::spawn(run(settings, stats, shutdown.clone())));
        }
        // The group forms before the input arrives: joins and the first
        // rebalances are not timed.
        while !healths.iter().all(|h| h.assigned.load(Ordering::SeqCst)) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let producer: FutureProducer = kafka.producer_config().create()?;
        let sum = |f: fn(&RunStats) -> &std::sync::atomic::AtomicU64| {
            all.iter().map(|s| f(s).load(Ordering::Relaxed)).sum::<u64>()
        };
        // Timing starts at the first attempt taken in, while the load goes on.
        let first_taken = async {
            while sum(|s| &s.consumed) == 0 {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            (cpu_secs(), Instant::now())
        };
        let (loaded, (cpu0, t0)) = tokio::join!(load(o, &kafka, &producer, Some(partitions)), first_taken);
        loaded?;
        // Done when every attempt was taken in and every copy decided on
        // (twice in a row: a copy is counted just after its attempt).
        let target = |decided: u64| {
            if split {
                decided >= sum(|s| &s.routed)
            } else {
                decided >= o.events
            }
        };
        let done = || sum(|s| &s.consumed) >= o.events && target(sum(|s| &s.decided));
        loop {
            if done() {
                tokio::time::sleep(Duration::from_millis(5)).await;
                if done() {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let phase = Phase {
            events: o.events,
            wall_secs: t0.elapsed().as_secs_f64(),
            cpu_secs: cpu_secs() - cpu0,
        };
        let _ = stop.send(true);
        for t in tasks {
            t.await.map_err(|e| BenchError::Other(e.to_string()))??;
        }
        let point = ScalePoint {
            instances,
            split,
            phase,
            copies: sum(|s| &s.routed),
            decisions: sum(|s| &s.decisions),
        };
        eprintln!("bench: {}", point.render());
        points.push(point);
    }
    Ok(points)
}

/// Queues one message without headers (waits while the producer queue is full).
async fn send(
    producer: &FutureProducer,
    topic: &str,
    key: &[u8],
    payload: &[u8],
) -> Result<DeliveryFuture, KafkaError> {
    crate::kafka::produce::send(producer, topic, None, key, payload, None).await
}

/// Awaits acknowledgements in batches, off the sending loop.
fn ack_awaiter() -> (
    mpsc::Sender<Vec<DeliveryFuture>>,
    tokio::task::JoinHandle<Result<(), BenchError>>,
) {
    let (tx, mut rx) = mpsc::channel::<Vec<DeliveryFuture>>(64);
    let task = tokio::spawn(async move {
        while let Some(batch) = rx.recv().await {
            for ack in batch {
                match ack.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => return Err(BenchError::Kafka(e)),
                    Err(_) => return Err(BenchError::Other("producer went away".into())),
                }
            }
        }
        Ok(())
    });
    (tx, task)
}

fn config(o: &BenchOptions, name: &str) -> KafkaConfig {
    let brokers = &o.brokers;
    KafkaConfig {
        properties: o
            .properties
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().into()))
            .collect(),
        brokers: brokers.into(),
        group_id: format!("{name}.run"),
        partitions: 1,
        replication_factor: 1,
        create_topics: false,
        topics: Topics {
            attempts: format!("{name}.attempts"),
            decisions: format!("{name}.decisions"),
            dead_letters: format!("{name}.dlq"),
            audit: format!("{name}.audit"),
            allowlist: format!("{name}.allowlist"),
            operations: format!("{name}.operations"),
        },
        ..KafkaConfig::default()
    }
}

pub async fn bench(o: BenchOptions) -> Result<BenchReport, BenchError> {
    let stamp = chrono::Utc::now().timestamp_millis();
    let name = format!("bench-{}-{stamp}", std::process::id());
    let kafka = config(&o, &name);
    ensure_topics(&kafka).await?;
    let out_topic = format!("{name}.passthrough");
    ensure_topics(&KafkaConfig {
        topics: Topics {
            attempts: out_topic.clone(),
            ..kafka.topics.clone()
        },
        ..kafka.clone()
    })
    .await?;
    let mut report = BenchReport::default();

    // 1. Load.
    let producer: FutureProducer = kafka.producer_config().create()?;
    report.load = load(&o, &kafka, &producer, None).await?;

    // 2. Passthrough.
    let consumer: StreamConsumer = kafka
        .consumer_config()
        .set("group.id", format!("{name}.passthrough"))
        .create()?;
    consumer.subscribe(&[&kafka.topics.attempts])?;
    let (acks, awaiter) = ack_awaiter();
    let mut batch = Vec::with_capacity(1000);
    let mut start = None;
    for _ in 0..o.events {
        let m = consumer.recv().await?;
        start.get_or_insert_with(|| (cpu_secs(), Instant::now()));
        batch.push(
            send(
                &producer,
                &out_topic,
                m.key().unwrap_or_default(),
                m.payload().unwrap_or_default(),
            )
            .await?,
        );
        if batch.len() == 1000 {
            let _ = acks.send(std::mem::take(&mut batch)).await;
        }
    }
    let _ = acks.send(batch).await;
    drop(acks);
    awaiter.await.map_err(|e| BenchError::Other(e.to_string()))??;
    // Offsets are not stored automatically (the same settings as `run`):
    // commit the positions reached.
    consumer.commit(&consumer.position()?, CommitMode::Sync)?;
    let (cpu0, t0) = start.unwrap_or((cpu_secs(), Instant::now()));
    report.passthrough = Phase {
        events: o.events,
        wall_secs: t0.elapsed().as_secs_f64(),
        cpu_secs: cpu_secs() - cpu0,
    };
    drop(consumer);
    eprintln!("bench: passthrough {:.0} events/s", report.passthrough.rate());

    // 3. Run.
    let engine = Arc::new(
        Engine::new(o.rules.clone(), o.geo.clone(), o.engine.clone()).map_err(|e| BenchError::Other(e.to_string()))?,
    );
    let stats = Arc::new(RunStats::default());
    let (stop, shutdown) = watch::channel(false);
    let settings = Settings {
        kafka: kafka.clone(),
        pipeline: PipelineConfig::default(),
        engine: engine.clone(),
        hasher: CodeHasher::with_key(b"bench"),
        metrics: Arc::new(Metrics::new()),
        health: Arc::new(Health::default()),
    };
    let pipeline = tokio::spawn(run(settings, stats.clone(), shutdown));
    while stats.consumed.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let (cpu0, t0) = (cpu_secs(), Instant::now());
    while stats.consumed.load(Ordering::Relaxed) < o.events {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let _ = stop.send(true);
    pipeline.await.map_err(|e| BenchError::Other(e.to_string()))??;
    report.run = Phase {
        events: o.events,
        wall_secs: t0.elapsed().as_secs_f64(),
        cpu_secs: cpu_secs() - cpu0,
    };
    report.decisions = stats.decisions.load(Ordering::Relaxed);
    drop(engine);
    eprintln!("bench: run {:.0} events/s", report.run.rate());

    // 4. Latency at half the run rate.
    if o.latency_secs > 0 {
        let rate = o.latency_rate.unwrap_or(report.run.rate() / 2.0);
        report.latency = Some(latency(&o, &format!("{name}-paced"), rate, &producer).await?);
    }
    report.peak_rss_kib = peak_rss_kib();
    Ok(report)
}

async fn latency(o: &BenchOptions, name: &str, rate: f64, producer: &FutureProducer) -> Result<Latency, BenchError> {
    let kafka = KafkaConfig {
        partitions: o.latency_partitions.max(1),
        ..config(o, name)
    };
    ensure_topics(&kafka).await?;
    let engine = Arc::new(
        Engine::new(o.rules.clone(), o.geo.clone(), o.engine.clone()).map_err(|e| BenchError::Other(e.to_string()))?,
    );
    let stats = Arc::new(RunStats::default());
    let health = Arc::new(Health::default());
    let metrics = Arc::new(Metrics::new());
    let (stop, shutdown) = watch::channel(false);
    let settings = Settings {
        kafka: kafka.clone(),
        pipeline: PipelineConfig::default(),
        engine,
        hasher: CodeHasher::with_key(b"bench"),
        metrics: metrics.clone(),
        health: health.clone(),
    };
    let pipeline = tokio::spawn(run(settings, stats.clone(), shutdown));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !health.assigned.load(Ordering::SeqCst) {
        if Instant::now() > deadline {
            return Err(BenchError::Other(
                "the latency pipeline was never assigned its partition".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The reader: every decision's age when it becomes readable.
    let reader: BaseConsumer = kafka
        .consumer_config()
        .set("group.id", format!("{name}.reader"))
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..kafka.partitions {
        tpl.add_partition_offset(&kafka.topics.decisions, p, Offset::Beginning)?;
    }
    reader.assign(&tpl)?;
    let (reader_stop, reader_done) = watch::channel(false);
    let (measure_from_tx, measure_from) = watch::channel(i64::MAX);
    let reading = tokio::task::spawn_blocking(move || {
        let mut ages = Vec::new();
        loop {
            match reader.poll(Duration::from_millis(50)) {
                Some(Ok(m)) => {
                    let now = chrono::Utc::now().timestamp_millis();
                    let ts = m
                        .payload()
                        .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
                        .and_then(|d| d["event_ts"].as_str().and_then(parse_ts_ms));
                    let from = *measure_from.borrow();
                    if let Some(ts) = ts.filter(|ts| *ts >= from) {
                        ages.push(now - ts);
                    }
                }
                _ if *reader_done.borrow() => return ages,
                _ => {}
            }
        }
    });

    // Warm up: the first fetches of a newly assigned consumer (offset lookups)
    // take about a second; decisions on events from before the pipeline is
    // consuming would measure that, not the steady state. Events are paced
    // from the first consumed one on, and only decisions on events stamped
    // after that count.
    let mut traffic = Traffic::new(o.seed + 1, 0, 1000);
    let warm = traffic.next_line_at(chrono::Utc::now().timestamp_millis());
    send(producer, &kafka.topics.attempts, b"", warm.as_bytes()).await?;
    while stats.consumed.load(Ordering::Relaxed) == 0 {
        if Instant::now() > deadline + Duration::from_secs(60) {
            return Err(BenchError::Other("the latency pipeline consumed nothing".into()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let measured_from = chrono::Utc::now().timestamp_millis();
    let _ = measure_from_tx.send(measured_from);
    let per_ms = rate / 1000.0;
    let (acks, awaiter) = ack_awaiter();
    let mut batch = Vec::new();
    let (t0, mut sent, mut owed) = (Instant::now(), 0u64, 0.0f64);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while t0.elapsed() < Duration::from_secs(o.latency_secs) {
        tick.tick().await;
        owed += per_ms;
        while owed >= 1.0 {
            owed -= 1.0;
            let line = traffic.next_line_at(chrono::Utc::now().timestamp_millis());
            batch.push(send(producer, &kafka.topics.attempts, b"", line.as_bytes()).await?);
            sent += 1;
        }
        if batch.len() >= 1000 {
            let _ = acks.send(std::mem::take(&mut batch)).await;
        }
    }
    let _ = acks.send(batch).await;
    drop(acks);
    awaiter.await.map_err(|e| BenchError::Other(e.to_string()))??;
    producer.flush(Duration::from_secs(30))?;
    while stats.consumed.load(Ordering::Relaxed) < sent && t0.elapsed() < Duration::from_secs(o.latency_secs + 60) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = reader_stop.send(true);
    let mut ages = reading.await.map_err(|e| BenchError::Other(e.to_string()))?;
    let _ = stop.send(true);
    pipeline.await.map_err(|e| BenchError::Other(e.to_string()))??;
    ages.sort_unstable();
    let pct = |q: f64| {
        ages.get(((ages.len() as f64 * q) as usize).min(ages.len().saturating_sub(1)))
            .copied()
            .unwrap_or(-1)
    };
    let ack = |q: f64| histogram_bound(&metrics.latency_from_event, q) * 1000.0;
    Ok(Latency {
        rate,
        events: sent,
        samples: ages.len(),
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        p999_ms: pct(0.999),
        max_ms: ages.last().copied().unwrap_or(-1),
        ack_p50_le_ms: ack(0.5),
        ack_p99_le_ms: ack(0.99),
        ack_p999_le_ms: ack(0.999),
        ingest_p50_le_ms: histogram_bound(&metrics.latency_from_ingest, 0.5) * 1000.0,
        ingest_p99_le_ms: histogram_bound(&metrics.latency_from_ingest, 0.99) * 1000.0,
    })
}

/// The upper bound (seconds) of the first bucket holding quantile `q`.
fn histogram_bound(h: &prometheus::Histogram, q: f64) -> f64 {
    use prometheus::core::Collector;
    let families = h.collect();
    let Some(metric) = families.first().and_then(|f| f.get_metric().first()) else {
        return f64::NAN;
    };
    let hist = metric.get_histogram();
    let want = (hist.get_sample_count() as f64 * q).ceil() as u64;
    hist.get_bucket()
        .iter()
        .find(|b| b.cumulative_count() >= want)
        .map_or(f64::INFINITY, |b| b.upper_bound())
}
