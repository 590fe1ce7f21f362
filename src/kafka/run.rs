//! `kamiguard run`: attempts from a consumer group through the engine,
//! decisions and dead letters out through an idempotent producer.
//!
//! # Guarantees
//!
//! - **At-least-once, idempotent effect.** The processing loop hands the
//!   committer batches in consumption order: the next offset of each partition
//!   and the delivery acknowledgements of every decision and dead letter those
//!   events caused. The committer waits for every acknowledgement of a batch
//!   before it may commit the batch's offsets. A crash loses no decision; a
//!   redelivered event is dropped by the engine's event-id memory, or, when
//!   that memory is gone with the process, republished with the same
//!   deterministic `decision_id`.
//! - **State survives a restart or a rebalance.** See [`super::restore`].
//! - **Bounded memory.** At most `in_flight_batches` batches wait for the
//!   broker, and the producer queue is bounded: a slow broker slows intake.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::config::{KafkaConfig, KafkaConfigError, PipelineConfig, Topics};
use super::dead_letter::{dead_letter, DeadLetter, Source};
use super::order::{Marker, Orderer, Released};
use super::restore::{restore, RestoreRange};
use super::topology::{self, partition_for, Role, Topology};
use crate::decision::Decision;
use crate::engine::{Engine, Verdict};
use crate::event::{self, CodeHasher, Kind, Outcome};
use crate::metrics::{Health, Metrics};

/// Everything `run` needs.
pub struct Settings {
    pub kafka: KafkaConfig,
    pub pipeline: PipelineConfig,
    pub engine: Arc<Engine>,
    pub hasher: CodeHasher,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

/// Live counters, readable while the pipeline runs (the demo's summary, metrics).
#[derive(Debug, Default)]
pub struct RunStats {
    /// Messages taken from the attempts topic (live, not restore).
    pub consumed: AtomicU64,
    /// Valid events processed by the engine.
    pub events: AtomicU64,
    /// Events dropped as redeliveries.
    pub duplicates: AtomicU64,
    /// Messages sent to the dead-letter topic.
    pub dead_letters: AtomicU64,
    /// Decisions published.
    pub decisions: AtomicU64,
    /// Events replayed into state by restores (no decisions published).
    pub restored: AtomicU64,
    /// Offset commits sent.
    pub commits: AtomicU64,
    /// Copies of attempts forwarded to internal topics (split pipeline).
    pub routed: AtomicU64,
    /// Attempts (or their copies) run through the engine, live.
    pub decided: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] KafkaConfigError),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("topic {0} does not exist (create it, or set kafka.create_topics = true)")]
    MissingTopic(String),
    #[error(
        "kafka.group_id `{0}` names the internal topics but contains `{1}`; use letters, digits, `.`, `_` and `-`"
    )]
    InternalTopicName(String, char),
    #[error("cannot create topic {topic}: {code}")]
    CreateTopic { topic: String, code: RDKafkaErrorCode },
    #[error("the broker refused a {what}: {error}; offsets after it are not committed")]
    Delivery { what: &'static str, error: KafkaError },
    #[error("cannot encode a decision: {0}")]
    Encode(String),
    #[error("no code-hash key: set KAMIGUARD_CODE_KEY (or code_key in the config); without it raw codes could not be hashed in dead letters")]
    NoCodeKey,
    #[error("shutdown timed out after {0:?} waiting for the broker; uncommitted events will be redelivered")]
    ShutdownTimeout(Duration),
}

/// How long the consumer has gone without partitions, so that a group that
/// never assigns any (a broker stuck in a rebalance) is said in the log and
/// not only by `/readyz`.
#[derive(Debug)]
struct Unassigned {
    since: Option<Instant>,
    next_warning: Duration,
}

impl Unassigned {
    /// The first warning after a minute without partitions, then every five.
    const FIRST: Duration = Duration::from_secs(60);
    const EVERY: Duration = Duration::from_secs(300);

    fn since(now: Instant) -> Unassigned {
        Unassigned {
            since: Some(now),
            next_warning: Self::FIRST,
        }
    }

    /// Whole seconds without partitions when a warning is due, else `None`.
    fn overdue(&mut self, empty: bool, now: Instant) -> Option<u64> {
        if !empty {
            self.since = None;
            return None;
        }
        let since = *self.since.get_or_insert_with(|| {
            self.next_warning = Self::FIRST;
            now
        });
        let waited = now.saturating_duration_since(since);
        if waited < self.next_warning {
            return None;
        }
        self.next_warning = waited + Self::EVERY;
        Some(waited.as_secs())
    }
}

/// Consumer context: notes that the assignment changed, so the loop restores
/// newly assigned partitions before deciding on them.
pub struct RunContext {
    assignment_changed: AtomicBool,
    metrics: Arc<Metrics>,
    /// Each partition's high watermark and committed offset, from the last
    /// statistics: a quiet partition whose attempts this loop has all taken
    /// (not only fetched: fetched ones may wait in the local queue behind
    /// another partition's) is idle, not behind.
    watermarks: std::sync::Mutex<std::collections::HashMap<(String, i32), (i64, i64)>>,
}

impl RunContext {
    /// Whether the loop has taken everything `partition` of `topic` holds,
    /// `next` being the next offset it would take (`None`: it has taken
    /// nothing yet, so it starts at the committed offset). Unknown before
    /// the first statistics: not caught up.
    fn is_caught_up(&self, topic: &str, partition: i32, next: Option<i64>) -> bool {
        let marks = self.watermarks.lock().unwrap_or_else(|p| p.into_inner());
        match marks.get(&(topic.to_string(), partition)) {
            Some((high, committed)) => *high >= 0 && next.unwrap_or((*committed).max(0)) >= *high,
            None => false,
        }
    }
}

impl ClientContext for RunContext {
    /// librdkafka's statistics (every `statistics.interval.ms`): consumer lag
    /// per partition of each consumed topic (the attempts topic, and the
    /// internal topics when split).
    fn stats(&self, statistics: Statistics) {
        let mut marks = std::collections::HashMap::new();
        for (name, topic) in &statistics.topics {
            for (partition, p) in &topic.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    self.metrics
                        .consumer_lag
                        .with_label_values(&[name, &partition.to_string()])
                        .set(p.consumer_lag);
                }
                if *partition >= 0 {
                    marks.insert((name.clone(), *partition), (p.hi_offset, p.committed_offset));
                }
            }
        }
        *self.watermarks.lock().unwrap_or_else(|p| p.into_inner()) = marks;
    }
}

impl ConsumerContext for RunContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => info!(partitions = tpl.count(), "partitions assigned"),
            Rebalance::Revoke(tpl) => info!(partitions = tpl.count(), "partitions revoked"),
            Rebalance::Error(e) => warn!(error = %e, "rebalance error"),
        }
        self.assignment_changed.store(true, Ordering::SeqCst);
    }
}

/// A partition of a consumed topic: the topic's index in
/// [`Topology::consumed`], and the partition.
type Slot = (usize, i32);

/// One hand-off from the loop to the committer.
#[derive(Default)]
struct Batch {
    /// Next offset to consume, by partition, after this batch.
    offsets: BTreeMap<Slot, i64>,
    /// Acknowledgements of everything the batch published.
    acks: Vec<Pending>,
    events: usize,
}

impl Batch {
    /// Adds the acknowledgement of a message just queued, so the batch's
    /// offsets wait for it; a message the producer refused to queue is the
    /// error that stops the pipeline.
    fn expect_ack(
        &mut self,
        what: &'static str,
        sent: Result<DeliveryFuture, KafkaError>,
        timing: Option<(Instant, i64)>,
    ) -> Result<(), RunError> {
        let ack = sent.map_err(|error| RunError::Delivery { what, error })?;
        self.acks.push(Pending {
            what,
            ack,
            timing,
            fallback: None,
        });
        Ok(())
    }

    /// [`Batch::expect_ack`] for a dead letter, with what to send instead
    /// if the broker refuses it for its size.
    fn expect_ack_or(
        &mut self,
        what: &'static str,
        sent: Result<DeliveryFuture, KafkaError>,
        fallback: Fallback,
    ) -> Result<(), RunError> {
        self.expect_ack(what, sent, None)?;
        if let Some(p) = self.acks.last_mut() {
            p.fallback = Some(fallback);
        }
        Ok(())
    }
}

/// Whether the broker or the producer refused one message for what it is
/// (its size, its form): sending it again cannot succeed, a smaller one can.
fn too_large(error: &KafkaError) -> bool {
    let code = match error {
        KafkaError::MessageProduction(code) => *code,
        _ => return false,
    };
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidRecord
    )
}

/// A dead letter's headers-only stand-in (see [`DeadLetter::without_body`]).
struct Fallback {
    topic: String,
    key: Vec<u8>,
    letter: DeadLetter,
}

/// One published message awaiting its acknowledgement.
struct Pending {
    what: &'static str,
    ack: DeliveryFuture,
    /// For decisions: when the attempt was taken off the topic, and its event time.
    timing: Option<(Instant, i64)>,
    /// For dead letters: sent instead when the broker refuses this one for
    /// its size, and awaited before the batch's offsets are committed.
    fallback: Option<Fallback>,
}

/// Creates the attempts, decisions, dead-letter, audit and allowlist topics
/// if missing. The allowlist is compacted: the latest record of each entry
/// is the entry.
pub async fn ensure_topics(kafka: &KafkaConfig) -> Result<(), RunError> {
    let admin: AdminClient<DefaultClientContext> = kafka.admin_config().create()?;
    let t = &kafka.topics;
    let names = [&t.attempts, &t.decisions, &t.dead_letters, &t.audit];
    let replication = || TopicReplication::Fixed(kafka.replication_factor);
    let mut topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| NewTopic::new(n, kafka.partitions, replication()))
        .collect();
    topics.push(NewTopic::new(&t.allowlist, 1, replication()).set("cleanup.policy", "compact"));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics(&topics, &opts).await? {
        match result {
            Ok(topic) => info!(%topic, partitions = kafka.partitions, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(RunError::CreateTopic { topic, code }),
        }
    }
    Ok(())
}

/// Runs until `shutdown` turns true, then stops fetching, finishes what is in
/// flight, commits and returns.
pub async fn run(
    settings: Settings,
    stats: Arc<RunStats>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), RunError> {
    let Settings {
        kafka,
        pipeline,
        engine,
        hasher,
        metrics,
        health,
    } = settings;
    health.rules_loaded.store(true, Ordering::SeqCst);
    kafka.validate()?;
    if !hasher.has_key() {
        return Err(RunError::NoCodeKey);
    }
    if kafka.create_topics {
        ensure_topics(&kafka).await?;
    }
    let consumer: Arc<StreamConsumer<RunContext>> = Arc::new(
        kafka
            .consumer_config()
            .set("group.id", &kafka.group_id)
            .create_with_context(RunContext {
                assignment_changed: AtomicBool::new(false),
                metrics: metrics.clone(),
                watermarks: Default::default(),
            })?,
    );
    let lookback_ms = match pipeline.restore_lookback_secs {
        Some(secs) => secs as i64 * 1000,
        None => engine.rules().longest_window_ms + engine.lateness_ms(),
    };
    let topology = topology::plan(&kafka, pipeline.repartition, &engine.rules().homes(), lookback_ms).await?;
    if topology.is_split() {
        engine.restrict_homes(Some(topology.homes()));
        for caveat in engine.rules().split_caveats() {
            warn!("{caveat}");
        }
    }
    consumer.subscribe(&topology.topics())?;
    let producer: FutureProducer = kafka.producer_config().create()?;
    info!(brokers = %kafka.brokers, topics = ?topology.topics(), group = %kafka.group_id, "consuming");

    // What is in force is what the decisions topic says (see `super::book`).
    let book = tokio::task::block_in_place(|| super::book::BookFollower::load(&kafka, &engine))?.0;
    // So is the allowlist every instance shares (`crate::allowlist`).
    let allowlist = tokio::task::block_in_place(|| super::book::AllowFollower::load(&kafka, &engine))?;

    let (tx, rx) = mpsc::channel::<Batch>(pipeline.in_flight_batches.max(1));
    let committer = tokio::spawn(commit_loop(
        consumer.clone(),
        producer.clone(),
        topology.topics().into_iter().map(String::from).collect(),
        rx,
        Duration::from_millis(pipeline.commit_interval_ms),
        stats.clone(),
        metrics.clone(),
    ));

    let mut owned: BTreeSet<Slot> = BTreeSet::new();
    // Next offset this process has processed, by partition: a partition that
    // comes back after a rebalance is restored only from there.
    let mut processed: BTreeMap<Slot, i64> = BTreeMap::new();
    let mut batch = Batch::default();
    let mut batch_started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(pipeline.batch_ms.max(1)));
    let mut out = Outputs {
        producer: &producer,
        topics: &kafka.topics,
        engine: &engine,
        hasher: &hasher,
        stats: &stats,
        metrics: &metrics,
        events_by: EventCounters::new(&metrics),
        decisions: Vec::new(),
        topology: &topology,
        homes: topology.homes(),
    };

    // Event-time order across the partitions this engine reads (see
    // `super::order`): attempts wait in `order` until every source has come
    // as far; `marks` is what this instance, as a router, tells the homes.
    let mut order: Orderer<Ready> = Orderer::new(Duration::from_millis(pipeline.order_stall_ms), pipeline.order_buffer);
    let mut marks = RouterMarks::default();
    let idle = Duration::from_millis(pipeline.order_idle_ms);
    // Next offset to read, by partition; what may be committed is that or
    // the first attempt still in `order`, whichever is smaller.
    let mut consumed: BTreeMap<Slot, i64> = BTreeMap::new();

    let mut unassigned = Unassigned::since(Instant::now());
    let outcome: Result<(), RunError> = loop {
        let message = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break Ok(()),
            _ = tick.tick() => None,
            m = consumer.recv() => Some(m),
        };
        // Restore newly assigned partitions before deciding on any of their
        // events (also on a quiet tick, so /readyz turns ready on an empty topic).
        let unknown = matches!(&message, Some(Ok(m)) if topology.index(m.topic()).is_none_or(|t| !owned.contains(&(t, m.partition()))));
        if consumer.context().assignment_changed.swap(false, Ordering::SeqCst) || unknown {
            let started = Instant::now();
            let before = owned.clone();
            let restored = tokio::task::block_in_place(|| {
                reconcile(
                    &consumer,
                    &kafka,
                    &pipeline,
                    &engine,
                    &hasher,
                    &topology,
                    &mut owned,
                    &processed,
                    lookback_ms,
                )
            });
            match restored {
                Ok(n) => {
                    stats.restored.fetch_add(n, Ordering::Relaxed);
                    metrics.restored_events.inc_by(n);
                    metrics
                        .restore_seconds
                        .with_label_values(&[] as &[&str])
                        .observe(started.elapsed().as_secs_f64());
                }
                Err(e) => warn!(error = %e, "restore failed; continuing with the state there is"),
            }
            let now = Instant::now();
            for gone in before.difference(&owned) {
                order.forget(*gone);
                marks.0.remove(gone);
                consumed.remove(gone);
            }
            for new in owned.difference(&before) {
                match topology.consumed[new.0].role {
                    Role::Direct => order.expect((*new, new.1), now),
                    Role::Home(_) => (0..topology.sources).for_each(|p| order.expect((*new, p), now)),
                    Role::Route => marks.own(*new, now),
                }
            }
            health.assigned.store(!owned.is_empty(), Ordering::SeqCst);
        }
        let Some(message) = message else {
            // On ticks only, off the per-message path: without partitions
            // no message arrives, and ticks still come while busy.
            if let Some(for_secs) = unassigned.overdue(owned.is_empty(), Instant::now()) {
                warn!(
                    for_secs,
                    group = %kafka.group_id,
                    "no partitions assigned yet: expected while the group has more instances than partitions; otherwise the group may be stuck (/readyz stays 503; on the Tansu broker see the README on static membership)"
                );
            }
            book.follow(&engine);
            allowlist.follow(&engine);
            let now = Instant::now();
            let context = consumer.context();
            let caught_up = |slot: &Slot| {
                context.is_caught_up(&topology.consumed[slot.0].topic, slot.1, consumed.get(slot).copied())
            };
            order.idle_if_quiet(idle, now, |(slot, _)| {
                topology.consumed[slot.0].role == Role::Direct && caught_up(slot)
            });
            match out.release(&mut order, &mut batch).await {
                Err(e) => break Err(e),
                // What was released moves what may be committed: it goes to
                // the committer like events taken.
                Ok(0) => {}
                Ok(n) => {
                    if batch.events == 0 {
                        batch_started = now;
                    }
                    batch.events += n;
                }
            }
            for (slot, mark) in marks.0.iter_mut() {
                mark.caught_up = caught_up(slot);
            }
            if let Err(e) = out.send_marks(&mut marks, idle, now, &mut batch).await {
                break Err(e);
            }
            let due = batch.events > 0 && batch_started.elapsed() >= Duration::from_millis(pipeline.batch_ms);
            if due {
                frontier(&mut batch, &mut processed, &consumed, &order);
                if !hand_off(&tx, &mut batch, &mut shutdown).await {
                    break Ok(());
                }
            }
            continue;
        };
        let m = match message {
            Ok(m) => m,
            Err(e) => {
                // librdkafka reconnects by itself; errors here are transient
                // (broker down, rebalance in progress).
                warn!(error = %e, "consumer error");
                continue;
            }
        };
        let Some(t) = topology.index(m.topic()) else {
            warn!(topic = m.topic(), "message from a topic not subscribed to; skipped");
            continue;
        };
        let slot = (t, m.partition());
        let role = topology.consumed[t].role;
        if matches!(role, Role::Direct | Role::Route) {
            stats.consumed.fetch_add(1, Ordering::Relaxed);
        }
        let source = Source {
            topic: m.topic(),
            partition: m.partition(),
            offset: m.offset(),
        };
        let key = m.key().unwrap_or_default();
        let ingested = Instant::now();
        let received = super::received_ms(m.timestamp(), chrono::Utc::now().timestamp_millis());
        let header = |name: &str| {
            m.headers()
                .and_then(|h| h.iter().find(|h| h.key == name))
                .and_then(|h| std::str::from_utf8(h.value?).ok())
        };
        if let Some(marker) = header(Marker::HEADER).and_then(Marker::decode) {
            // A router's watermark for one attempts partition.
            order.mark((slot, marker.source), marker.ts_ms, ingested);
        } else {
            let intake = out
                .intake(
                    m.payload().unwrap_or_default(),
                    key,
                    source,
                    (role, received),
                    &mut batch,
                )
                .await;
            match intake {
                Err(e) => break Err(e),
                Ok(None) => {}
                Ok(Some(e)) => match role {
                    Role::Route => marks.heard(slot, e.ts_ms, ingested),
                    Role::Direct | Role::Home(_) => {
                        // A home's copies name the attempts partition they
                        // came from; a partition read directly is its own.
                        let (from, home) = match role {
                            Role::Home(h) => (
                                header(Marker::SOURCE).and_then(|p| p.parse().ok()).unwrap_or(-1),
                                Some(h),
                            ),
                            _ => (slot.1, None),
                        };
                        let ts = e.ts_ms;
                        order.push(
                            (slot, from),
                            m.offset(),
                            ts,
                            Ready {
                                event: e,
                                home,
                                ingested,
                            },
                            ingested,
                        );
                    }
                },
            }
        }
        if let Err(e) = out.release(&mut order, &mut batch).await {
            break Err(e);
        }
        if batch.events == 0 {
            batch_started = Instant::now();
        }
        consumed.insert(slot, m.offset() + 1);
        batch.events += 1;
        if batch.events >= pipeline.batch_events {
            frontier(&mut batch, &mut processed, &consumed, &order);
            if !hand_off(&tx, &mut batch, &mut shutdown).await {
                break Ok(());
            }
        }
    };
    frontier(&mut batch, &mut processed, &consumed, &order);
    if !order.is_empty() {
        info!(
            attempts = order.len(),
            "stopping with attempts still waiting for their turn; they are not committed and will be read again"
        );
    }

    // Stop fetching, hand over the last batch, wait for the broker, commit.
    let timeout = Duration::from_secs(pipeline.shutdown_timeout_secs);
    let last = std::mem::take(&mut batch);
    let drained = async {
        if last.events > 0 {
            // The committer may already have failed; its error is reported below.
            let _ = tx.send(last).await;
        }
        drop(tx);
        match committer.await {
            Ok(result) => result,
            Err(join) => Err(RunError::Delivery {
                what: "commit task",
                error: KafkaError::Canceled,
            })
            .inspect_err(|_| warn!(error = %join, "committer task failed")),
        }
    };
    let committed = match tokio::time::timeout(timeout, drained).await {
        Ok(r) => r,
        Err(_) => Err(RunError::ShutdownTimeout(timeout)),
    };
    consumer.unsubscribe();
    // Dropping the consumer closes it and leaves the group. librdkafka can
    // hang in that close (seen with the mock cluster: `rd_kafka_assign(NULL)`
    // in the revoke callback never returned), so it closes on a thread of its
    // own and shutdown goes on after 10 s: the offsets are committed already.
    close_within(consumer, Duration::from_secs(10));
    info!(
        consumed = stats.consumed.load(Ordering::Relaxed),
        decisions = stats.decisions.load(Ordering::Relaxed),
        dead_letters = stats.dead_letters.load(Ordering::Relaxed),
        "stopped"
    );
    outcome.and(committed)
}

/// Drops `value` on a thread of its own, waiting at most `limit` for it.
fn close_within<T: Send + 'static>(value: T, limit: Duration) {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(value);
        let _ = done.send(());
    });
    if finished.recv_timeout(limit).is_err() {
        warn!(?limit, "closing the consumer did not finish; going on without it");
    }
}

/// What one message produces, and where it goes.
struct Outputs<'a> {
    producer: &'a FutureProducer,
    topics: &'a Topics,
    engine: &'a Engine,
    hasher: &'a CodeHasher,
    stats: &'a RunStats,
    metrics: &'a Metrics,
    events_by: EventCounters,
    decisions: Vec<Decision>,
    topology: &'a Topology,
    homes: Vec<crate::rules::KeyName>,
}

/// `events_total` resolved once per (kind, outcome): no label lookup per event.
struct EventCounters(Vec<IntCounter>);

impl EventCounters {
    fn new(metrics: &Metrics) -> EventCounters {
        let mut counters = Vec::with_capacity(Kind::ALL.len() * Outcome::ALL.len());
        for kind in Kind::ALL {
            for outcome in Outcome::ALL {
                counters.push(
                    metrics
                        .events
                        .with_label_values(&[&serde_name(&kind), &serde_name(&outcome)]),
                );
            }
        }
        EventCounters(counters)
    }

    fn get(&self, kind: Kind, outcome: Outcome) -> Option<&IntCounter> {
        let k = Kind::ALL.iter().position(|x| *x == kind)?;
        let o = Outcome::ALL.iter().position(|x| *x == outcome)?;
        self.0.get(k * Outcome::ALL.len() + o)
    }
}

/// The name serde gives an enum value (`invalid_code`), for a label.
fn serde_name(v: &impl serde::Serialize) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

impl Outputs<'_> {
    /// Parses one message: a bad one, or an attempt stamped further ahead of
    /// `received` (ms) than `engine.max_ahead_secs`, becomes a dead letter;
    /// on the attempts topic when split, a good one is forwarded to its home
    /// keys' topics. Returns the good attempt, for the caller to order
    /// (direct, home) or to note its progress (route). Every acknowledgement
    /// awaited goes into `batch`. An error stops the pipeline before anything
    /// after it is committed, so those events are redelivered.
    async fn intake(
        &mut self,
        payload: &[u8],
        key: &[u8],
        source: Source<'_>,
        (role, received): (Role, i64),
        batch: &mut Batch,
    ) -> Result<Option<event::Event>, RunError> {
        // Forwarded copies were held to the bound where they were routed.
        let parsed = event::parse(payload, self.hasher).and_then(|e| match role {
            Role::Home(_) => Ok(e),
            _ => event::check_ahead(&e, received, self.engine.max_ahead_ms()).map(|()| e),
        });
        match parsed {
            Ok(e) => {
                match role {
                    Role::Route => {
                        self.count_intake(&e);
                        self.route(&e, source.partition, batch).await?;
                    }
                    Role::Direct => self.count_intake(&e),
                    Role::Home(_) => {}
                }
                Ok(Some(e))
            }
            Err(error) => {
                let letter = dead_letter(payload, &error, source, self.hasher);
                debug!(
                    reason = error.reason(),
                    partition = source.partition,
                    offset = source.offset,
                    "dead letter"
                );
                self.send_dead_letter(letter, payload, key, batch).await?;
                self.stats.dead_letters.fetch_add(1, Ordering::Relaxed);
                self.metrics.rejected.with_label_values(&[error.reason()]).inc();
                Ok(None)
            }
        }
    }

    /// Decides every attempt whose turn has come in `order`; returns how many.
    async fn release(&mut self, order: &mut Orderer<Ready>, batch: &mut Batch) -> Result<usize, RunError> {
        let mut ready = Vec::new();
        order.drain(Instant::now(), |r| ready.push(r));
        let n = ready.len();
        for Released {
            item,
            waited,
            forced,
            behind,
            ..
        } in ready
        {
            self.metrics.order_wait.observe(waited.as_secs_f64());
            if forced {
                self.metrics.order_forced.inc();
            }
            if behind {
                self.metrics.order_behind.inc();
            }
            self.decide(item, batch).await?;
        }
        self.metrics.order_buffered.set(order.len() as i64);
        Ok(n)
    }

    /// Runs one attempt through the engine (the rules of its home, when
    /// split) and publishes its decisions.
    async fn decide(&mut self, ready: Ready, batch: &mut Batch) -> Result<(), RunError> {
        let Ready {
            event: e,
            home,
            ingested,
        } = ready;
        let (stats, metrics) = (self.stats, self.metrics);
        self.decisions.clear();
        let started = Instant::now();
        let verdict = self.engine.process_for(&e, home, &mut self.decisions);
        stats.decided.fetch_add(1, Ordering::Relaxed);
        metrics.engine_seconds.observe(started.elapsed().as_secs_f64());
        match verdict {
            Verdict::Duplicate => {
                stats.duplicates.fetch_add(1, Ordering::Relaxed);
                metrics.duplicates.inc();
            }
            Verdict::Late => metrics.late.inc(),
            Verdict::Processed => {}
        }
        let now = chrono::Utc::now();
        for d in &mut self.decisions {
            d.stamp(now);
            let body = serde_json::to_vec(&*d).map_err(|e| RunError::Encode(e.to_string()))?;
            let sent = send(self.producer, &self.topics.decisions, None, &d.key(), &body, None).await;
            batch.expect_ack("decision", sent, Some((ingested, e.ts_ms)))?;
            stats.decisions.fetch_add(1, Ordering::Relaxed);
            metrics
                .decisions
                .with_label_values(&[&*d.rule, d.action.as_str(), d.scope.as_str(), d.mode.as_str()])
                .inc();
        }
        Ok(())
    }

    /// As a router, tells every home partition how far each attempts
    /// partition this instance owns has come, or that it is idle (nothing
    /// delivered for `idle` and nothing left to fetch): at every tick of the
    /// loop (`pipeline.batch_ms`, the homes' wait), and only what changed,
    /// but each at least once a second so a home can tell a live router
    /// from a stopped one.
    async fn send_marks(
        &mut self,
        marks: &mut RouterMarks,
        idle: Duration,
        now: Instant,
        batch: &mut Batch,
    ) -> Result<(), RunError> {
        if marks.0.is_empty() {
            return Ok(());
        }
        for ((_, partition), mark) in marks.0.iter_mut() {
            // Idle: quiet, and nothing left to fetch (a quiet partition
            // that is only not fetched yet is behind, not idle).
            let quiet = now.saturating_duration_since(mark.heard) >= idle && mark.caught_up;
            let marker = Marker {
                source: *partition,
                ts_ms: (!quiet).then_some(mark.watermark),
            };
            let fresh =
                mark.sent != Some(marker) || now.saturating_duration_since(mark.sent_at) >= Duration::from_secs(1);
            // A partition that has delivered nothing since it was assigned
            // has no watermark to give until it is idle.
            if !fresh || marker.ts_ms == Some(i64::MIN) {
                continue;
            }
            let text = marker.encode();
            for route in &self.topology.routes {
                for q in 0..route.partitions {
                    let headers = OwnedHeaders::new().insert(rdkafka::message::Header {
                        key: Marker::HEADER,
                        value: Some(text.as_str()),
                    });
                    let sent = send(self.producer, &route.topic, Some(q), &[] as &[u8], &[], Some(headers)).await;
                    batch.expect_ack("watermark", sent, None)?;
                }
            }
            mark.sent = Some(marker);
            mark.sent_at = now;
        }
        Ok(())
    }

    /// Queues a dead letter. One the producer refuses for its size (a
    /// broker or producer `message.max.bytes` below the event limit) is
    /// queued again without its body; a broker that refuses it on delivery
    /// gets the same from the committer (see [`Pending::fallback`]). A
    /// dead letter never stops the pipeline for its own sake.
    async fn send_dead_letter(
        &mut self,
        letter: DeadLetter,
        payload: &[u8],
        key: &[u8],
        batch: &mut Batch,
    ) -> Result<(), RunError> {
        let topic = &self.topics.dead_letters;
        let bare = letter.without_body(payload, self.hasher);
        let mut sent = send(
            self.producer,
            topic,
            None,
            key,
            &letter.payload,
            Some(letter.kafka_headers()),
        )
        .await;
        if sent.as_ref().is_err_and(too_large) {
            warn!(
                bytes = payload.len(),
                "dead letter too large for the producer; sent without its body"
            );
            sent = send(self.producer, topic, None, key, &[], Some(bare.kafka_headers())).await;
        }
        let fallback = Fallback {
            topic: topic.clone(),
            key: key.to_vec(),
            letter: bare,
        };
        batch.expect_ack_or("dead letter", sent, fallback)
    }

    fn count_intake(&self, e: &event::Event) {
        self.stats.events.fetch_add(1, Ordering::Relaxed);
        if let Some(c) = self.events_by.get(e.kind, e.outcome) {
            c.inc();
        }
    }

    /// Forwards one valid attempt to the internal topic of each home key it
    /// has, keyed and placed by that key, with a raw code replaced by its hash.
    async fn route(&mut self, e: &event::Event, from: i32, batch: &mut Batch) -> Result<(), RunError> {
        let from = from.to_string();
        // Written from the validated event, never the bytes as sent.
        let body = e.to_json();
        let body = body.as_slice();
        for (home, value) in self.engine.route_keys(e, &self.homes) {
            let Some(route) = self.topology.routes.iter().find(|r| r.home == home) else {
                continue;
            };
            let partition = partition_for(value.as_bytes(), route.partitions);
            // The home orders copies by the attempts partition they came from.
            let headers = OwnedHeaders::new().insert(rdkafka::message::Header {
                key: Marker::SOURCE,
                value: Some(from.as_str()),
            });
            let sent = send(
                self.producer,
                &route.topic,
                Some(partition),
                &value,
                body,
                Some(headers),
            )
            .await;
            batch.expect_ack("forwarded attempt", sent, None)?;
            self.stats.routed.fetch_add(1, Ordering::Relaxed);
            self.metrics.routed.with_label_values(&[route.home.as_str()]).inc();
        }
        Ok(())
    }
}

/// An attempt waiting in the orderer for its turn.
struct Ready {
    event: event::Event,
    /// The home whose rules decide it; `None` unsplit.
    home: Option<crate::rules::KeyName>,
    /// When it was taken off its topic.
    ingested: Instant,
}

/// What this instance, as a router, last told the homes about each
/// attempts partition it owns.
#[derive(Default)]
struct RouterMarks(BTreeMap<Slot, Mark>);

struct Mark {
    /// The newest event time delivered from the partition.
    watermark: i64,
    /// When the partition last delivered an attempt.
    heard: Instant,
    sent: Option<Marker>,
    sent_at: Instant,
    /// The loop has taken everything the partition holds.
    caught_up: bool,
}

impl RouterMarks {
    fn own(&mut self, slot: Slot, now: Instant) {
        self.0.entry(slot).or_insert(Mark {
            watermark: i64::MIN,
            heard: now,
            sent: None,
            sent_at: now,
            caught_up: false,
        });
    }

    fn heard(&mut self, slot: Slot, ts_ms: i64, now: Instant) {
        self.own(slot, now);
        if let Some(m) = self.0.get_mut(&slot) {
            m.watermark = m.watermark.max(ts_ms);
            m.heard = now;
        }
    }
}

/// Sets what may be committed for every partition read: the next offset
/// to read, or the first attempt still waiting in `order`, whichever is
/// smaller. `processed` (where a partition that comes back is restored
/// from) follows it.
fn frontier(
    batch: &mut Batch,
    processed: &mut BTreeMap<Slot, i64>,
    consumed: &BTreeMap<Slot, i64>,
    order: &Orderer<Ready>,
) {
    for (slot, next) in consumed {
        let at = order.first_unreleased(*slot).map_or(*next, |o| o.min(*next));
        batch.offsets.insert(*slot, at);
        processed.insert(*slot, at);
    }
}

/// Sends the current batch to the committer, waiting while
/// `in_flight_batches` are unacknowledged (backpressure). Returns `false` when
/// the loop must stop: a shutdown (the batch stays for the final drain) or a
/// committer that ended (its error is reported by the drain).
async fn hand_off(tx: &mpsc::Sender<Batch>, batch: &mut Batch, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        permit = tx.reserve() => match permit {
            Ok(permit) => {
                permit.send(std::mem::take(batch));
                true
            }
            Err(_) => false,
        },
        _ = shutdown.wait_for(|stop| *stop) => false,
    }
}

/// Queues one message, waiting while the producer queue is full.
pub(crate) async fn send(
    producer: &FutureProducer,
    topic: &str,
    partition: Option<i32>,
    key: &(impl rdkafka::message::ToBytes + ?Sized),
    payload: &[u8],
    headers: Option<OwnedHeaders>,
) -> Result<DeliveryFuture, KafkaError> {
    let mut record = FutureRecord::to(topic).key(key).payload(payload);
    if let Some(p) = partition {
        record = record.partition(p);
    }
    if let Some(h) = headers {
        record = record.headers(h);
    }
    loop {
        match producer.send_result(record) {
            Ok(ack) => return Ok(ack),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Waits for each batch's acknowledgements in order and commits the offsets
/// they cover. Returns at the first refused delivery, without committing it.
async fn commit_loop(
    consumer: Arc<StreamConsumer<RunContext>>,
    producer: FutureProducer,
    topics: Vec<String>,
    mut rx: mpsc::Receiver<Batch>,
    interval: Duration,
    stats: Arc<RunStats>,
    metrics: Arc<Metrics>,
) -> Result<(), RunError> {
    let mut acked: BTreeMap<Slot, i64> = BTreeMap::new();
    let mut last_commit = Instant::now();
    let commit = |acked: &mut BTreeMap<Slot, i64>, mode: CommitMode| {
        if acked.is_empty() {
            return;
        }
        // Only partitions still assigned: a partition that moved to another
        // instance is that instance's to commit, and an old offset of ours
        // committed late would rewind it.
        let assigned = consumer.assignment().ok();
        let mut tpl = TopicPartitionList::new();
        for ((t, p), o) in acked.iter() {
            if assigned
                .as_ref()
                .is_some_and(|a| a.find_partition(&topics[*t], *p).is_none())
            {
                continue;
            }
            // Offsets were valid when read; adding one cannot fail.
            let _ = tpl.add_partition_offset(&topics[*t], *p, Offset::Offset(*o));
        }
        if tpl.count() == 0 {
            acked.clear();
            return;
        }
        match consumer.commit(&tpl, mode) {
            Ok(()) => {
                stats.commits.fetch_add(1, Ordering::Relaxed);
                acked.clear();
            }
            // Typically a partition that moved to another instance: it will
            // redeliver from its own last commit, with the same decision ids.
            Err(e) => warn!(error = %e, "commit failed"),
        }
    };
    // A zero interval from the config would make tokio panic: commit at most every millisecond.
    let interval = interval.max(Duration::from_millis(1));
    let mut tick = tokio::time::interval(interval);
    loop {
        // Commit on a timer as well: the last batch before a quiet spell must
        // not wait for the next event to be committed.
        let batch = tokio::select! {
            b = rx.recv() => match b {
                Some(b) => b,
                None => break,
            },
            _ = tick.tick() => {
                commit(&mut acked, CommitMode::Async);
                last_commit = Instant::now();
                continue;
            }
        };
        for Pending {
            what,
            ack,
            timing,
            fallback,
        } in batch.acks
        {
            let delivered = match (delivered(ack).await, fallback) {
                (Err(error), Some(f)) if too_large(&error) => {
                    warn!(error = %error, "the broker refused a dead letter; sending it without its body");
                    match send(&producer, &f.topic, None, &f.key, &[], Some(f.letter.kafka_headers())).await {
                        Ok(ack) => delivered(ack).await,
                        Err(error) => Err(error),
                    }
                }
                (result, _) => result,
            };
            if let Err(error) = delivered {
                commit(&mut acked, CommitMode::Sync);
                return Err(RunError::Delivery { what, error });
            }
            if let Some((ingested, event_ms)) = timing {
                metrics.latency_from_ingest.observe(ingested.elapsed().as_secs_f64());
                let from_event = chrono::Utc::now().timestamp_millis() - event_ms;
                metrics.latency_from_event.observe(from_event.max(0) as f64 / 1000.0);
            }
        }
        acked.extend(batch.offsets);
        if last_commit.elapsed() >= interval {
            commit(&mut acked, CommitMode::Async);
            last_commit = Instant::now();
        }
    }
    commit(&mut acked, CommitMode::Sync);
    Ok(())
}

/// Waits for one acknowledgement: the broker's error, or `Canceled` when the
/// producer went away first.
async fn delivered(ack: DeliveryFuture) -> Result<(), KafkaError> {
    match ack.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((error, _))) => Err(error),
        Err(_) => Err(KafkaError::Canceled),
    }
}

/// Not split, yet sharing the attempts topic with other instances: each sees
/// part of every key, and attacks spread over partitions go unseen. Says so.
fn warn_if_shared(consumer: &StreamConsumer<RunContext>, topic: &str, owned: &BTreeSet<Slot>) {
    let Ok(metadata) = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)) else {
        return;
    };
    let total = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len());
    let mine = owned.iter().filter(|(t, _)| *t == 0).count();
    if mine > 0 && mine < total {
        warn!(
            owned = mine,
            partitions = total,
            "another instance shares the attempts topic, but this pipeline is not split (pipeline.repartition = \"never\"): each instance counts only its own partitions' attempts, and attacks spread over partitions go unseen; use \"auto\""
        );
    }
}

/// Brings `owned` up to the consumer's assignment and restores the state of
/// partitions that are new to this process: those of the attempts topic when
/// not split, of the internal topics when split (routing keeps no state).
/// Returns events restored.
#[allow(clippy::too_many_arguments)]
fn reconcile(
    consumer: &StreamConsumer<RunContext>,
    kafka: &KafkaConfig,
    pipeline: &PipelineConfig,
    engine: &Engine,
    hasher: &CodeHasher,
    topology: &Topology,
    owned: &mut BTreeSet<Slot>,
    processed: &BTreeMap<Slot, i64>,
    lookback_ms: i64,
) -> Result<u64, KafkaError> {
    let assignment = consumer.assignment()?;
    let now: BTreeSet<Slot> = assignment
        .elements()
        .iter()
        .filter_map(|e| Some((topology.index(e.topic())?, e.partition())))
        .collect();
    let new: Vec<Slot> = now.difference(owned).copied().collect();
    *owned = now;
    if !new.is_empty() && topology.consumed[0].role == Role::Direct {
        warn_if_shared(consumer, &topology.consumed[0].topic, owned);
    }
    let mut tpl = TopicPartitionList::new();
    for (t, p) in &new {
        if topology.consumed[*t].role != Role::Route {
            tpl.add_partition(&topology.consumed[*t].topic, *p);
        }
    }
    if tpl.count() == 0 {
        return Ok(0);
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(30))?;
    let ranges: Vec<RestoreRange> = committed
        .elements()
        .iter()
        .filter_map(|e| {
            let t = topology.index(e.topic())?;
            let slot = (t, e.partition());
            match e.offset() {
                Offset::Offset(end) => Some(RestoreRange {
                    topic: topology.consumed[t].topic.clone(),
                    home: match topology.consumed[t].role {
                        Role::Home(h) => Some(h),
                        _ => None,
                    },
                    partition: e.partition(),
                    done_upto: processed.get(&slot).copied(),
                    end,
                }),
                // No commit yet: the group starts from `auto.offset.reset`, and
                // there is nothing before it to restore.
                _ => None,
            }
        })
        .collect();
    info!(partitions = ?new.iter().map(|(t, p)| format!("{}[{p}]", topology.consumed[*t].topic)).collect::<Vec<_>>(), restoring = ranges.len(), "new partitions");
    if ranges.is_empty() {
        return Ok(0);
    }
    restore(kafka, pipeline, engine, hasher, &ranges, lookback_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consumer_without_partitions_is_warned_about_after_a_minute_then_every_five() {
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let mut u = Unassigned::since(start);
        assert_eq!(u.overdue(true, at(59)), None);
        assert_eq!(u.overdue(true, at(60)), Some(60));
        assert_eq!(u.overdue(true, at(61)), None, "once, not on every tick");
        assert_eq!(u.overdue(true, at(359)), None);
        assert_eq!(u.overdue(true, at(360)), Some(360));
        // Partitions arrive: quiet, and losing them all starts the count anew.
        assert_eq!(u.overdue(false, at(400)), None);
        assert_eq!(u.overdue(true, at(410)), None);
        assert_eq!(u.overdue(true, at(469)), None);
        assert_eq!(u.overdue(true, at(470)), Some(60));
    }
}
