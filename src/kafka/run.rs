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
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::producer::FutureProducer;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::assign::{reconcile, RunContext, Unassigned};
use super::commit::{commit_loop, frontier, hand_off, Batch};
use super::config::{KafkaConfig, PipelineConfig};
use super::dead_letter::Source;
use super::error::RunError;
use super::handler::{EventCounters, MessageHandler, Ready, RouterMarks};
use super::order::{Marker, Orderer};
use super::stats::RunStats;
use super::topics::ensure_topics;
use super::topology::{self, Role, Slot, Topology};
use crate::engine::Engine;
use crate::event::CodeHasher;
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
            .create_with_context(RunContext::new(metrics.clone()))?,
    );
    let lookback_ms = match pipeline.restore_lookback_secs {
        Some(secs) => crate::units::secs_to_ms(secs),
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

    let handler = MessageHandler {
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
    let mut state = ConsumeLoop {
        consumer: &consumer,
        kafka: &kafka,
        pipeline: &pipeline,
        engine: &engine,
        hasher: &hasher,
        topology: &topology,
        stats: &stats,
        metrics: &metrics,
        health: &health,
        handler,
        lookback_ms,
        idle: Duration::from_millis(pipeline.order_idle_ms),
        owned: BTreeSet::new(),
        processed: BTreeMap::new(),
        consumed: BTreeMap::new(),
        order: Orderer::new(Duration::from_millis(pipeline.order_stall_ms), pipeline.order_buffer),
        marks: RouterMarks::default(),
        batch: Batch::default(),
        batch_started: Instant::now(),
        unassigned: Unassigned::since(Instant::now()),
    };
    let mut tick = tokio::time::interval(Duration::from_millis(pipeline.batch_ms.max(1)));
    let outcome: Result<(), RunError> = loop {
        let message = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break Ok(()),
            _ = tick.tick() => None,
            m = consumer.recv() => Some(m),
        };
        // Restore newly assigned partitions before deciding on any of their
        // events (also on a quiet tick, so /readyz turns ready on an empty topic).
        let unknown = matches!(&message, Some(Ok(m)) if !state.owns(m.topic(), m.partition()));
        if consumer.context().take_assignment_changed() || unknown {
            state.reassign();
        }
        let step = match message {
            None => state.tick(&book, &allowlist, &tx, &mut shutdown).await,
            Some(Ok(m)) => state.message(&m, &tx, &mut shutdown).await,
            Some(Err(e)) => {
                // librdkafka reconnects by itself; errors here are transient
                // (broker down, rebalance in progress).
                warn!(error = %e, "consumer error");
                Ok(Step::Go)
            }
        };
        match step {
            Ok(Step::Go) => {}
            Ok(Step::Stop) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    state.frontier();
    let ConsumeLoop { order, mut batch, .. } = state;
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

/// Whether the consume loop goes on.
enum Step {
    Go,
    /// A shutdown, or a committer that ended (its error is reported by the
    /// final drain).
    Stop,
}

/// The consume loop's state between messages, and what it reads.
struct ConsumeLoop<'a> {
    consumer: &'a StreamConsumer<RunContext>,
    kafka: &'a KafkaConfig,
    pipeline: &'a PipelineConfig,
    engine: &'a Engine,
    hasher: &'a CodeHasher,
    topology: &'a Topology,
    stats: &'a RunStats,
    metrics: &'a Metrics,
    health: &'a Health,
    handler: MessageHandler<'a>,
    lookback_ms: i64,
    /// How long a partition read directly goes quiet before it no longer
    /// holds back the others (`pipeline.order_idle_ms`).
    idle: Duration,
    /// The partitions this instance owns, as of the last [`ConsumeLoop::reassign`].
    owned: BTreeSet<Slot>,
    /// Next offset this process has processed, by partition: a partition that
    /// comes back after a rebalance is restored only from there.
    processed: BTreeMap<Slot, i64>,
    /// Next offset to read, by partition; what may be committed is that or
    /// the first attempt still in `order`, whichever is smaller.
    consumed: BTreeMap<Slot, i64>,
    /// Event-time order across the partitions this engine reads (see
    /// `super::order`): attempts wait here until every source has come as far.
    order: Orderer<Ready>,
    /// What this instance, as a router, tells the homes.
    marks: RouterMarks,
    batch: Batch,
    batch_started: Instant,
    unassigned: Unassigned,
}

impl ConsumeLoop<'_> {
    /// Whether `partition` of `topic` is one this instance knows it owns.
    fn owns(&self, topic: &str, partition: i32) -> bool {
        self.topology
            .index(topic)
            .is_some_and(|t| self.owned.contains(&(t, partition)))
    }

    /// Brings the partitions owned up to the assignment, restoring the state
    /// of those new to this process, and tells the orderer and the router
    /// marks which sources come and go.
    fn reassign(&mut self) {
        let started = Instant::now();
        let before = self.owned.clone();
        let restored = tokio::task::block_in_place(|| {
            reconcile(
                self.consumer,
                self.kafka,
                self.pipeline,
                self.engine,
                self.hasher,
                self.topology,
                &mut self.owned,
                &self.processed,
                self.lookback_ms,
            )
        });
        match restored {
            Ok(n) => {
                self.stats.restored.fetch_add(n, Ordering::Relaxed);
                self.metrics.restored_events.inc_by(n);
                self.metrics
                    .restore_seconds
                    .with_label_values(&[] as &[&str])
                    .observe(started.elapsed().as_secs_f64());
            }
            Err(e) => warn!(error = %e, "restore failed; continuing with the state there is"),
        }
        let now = Instant::now();
        for gone in before.difference(&self.owned) {
            self.order.forget(*gone);
            self.marks.0.remove(gone);
            self.consumed.remove(gone);
        }
        for new in self.owned.difference(&before) {
            match self.topology.consumed[new.0].role {
                Role::Direct => self.order.expect((*new, new.1), now),
                Role::Home(_) => (0..self.topology.sources).for_each(|p| self.order.expect((*new, p), now)),
                Role::Route => self.marks.own(*new, now),
            }
        }
        self.health.assigned.store(!self.owned.is_empty(), Ordering::SeqCst);
    }

    /// A quiet moment (every `pipeline.batch_ms`): follow the book and the
    /// allowlist, let quiet partitions stop holding back the others, decide
    /// what that released, send the router's marks, and hand a due batch to
    /// the committer. Off the per-message path: without partitions no
    /// message arrives, and ticks still come while busy.
    async fn tick(
        &mut self,
        book: &super::book::BookFollower,
        allowlist: &super::book::AllowFollower,
        tx: &mpsc::Sender<Batch>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Step, RunError> {
        if let Some(for_secs) = self.unassigned.overdue(self.owned.is_empty(), Instant::now()) {
            warn!(
                for_secs,
                group = %self.kafka.group_id,
                "no partitions assigned yet: expected while the group has more instances than partitions; otherwise the group may be stuck (/readyz stays 503; on the Tansu broker see the README on static membership)"
            );
        }
        book.follow(self.engine);
        allowlist.follow(self.engine);
        let now = Instant::now();
        let (context, topology, consumed) = (self.consumer.context(), self.topology, &self.consumed);
        let caught_up =
            |slot: &Slot| context.is_caught_up(&topology.consumed[slot.0].topic, slot.1, consumed.get(slot).copied());
        for slot in &self.owned {
            if topology.consumed[slot.0].role != Role::Route && !caught_up(slot) {
                self.order.backlogged(*slot, now);
            }
        }
        self.order.idle_if_quiet(self.idle, now, |(slot, _)| {
            topology.consumed[slot.0].role == Role::Direct && caught_up(slot)
        });
        // What was released moves what may be committed: it goes to the
        // committer like events taken.
        let n = self.handler.release(&mut self.order, &mut self.batch).await?;
        if n > 0 {
            if self.batch.events == 0 {
                self.batch_started = now;
            }
            self.batch.events += n;
        }
        for (slot, mark) in self.marks.0.iter_mut() {
            mark.caught_up = caught_up(slot);
        }
        self.handler
            .send_marks(&mut self.marks, self.idle, now, &mut self.batch)
            .await?;
        let due =
            self.batch.events > 0 && self.batch_started.elapsed() >= Duration::from_millis(self.pipeline.batch_ms);
        if due {
            return self.hand_off(tx, shutdown).await;
        }
        Ok(Step::Go)
    }

    /// One message: a router's watermark, or an attempt (or its copy) taken
    /// in, ordered, and decided with whatever its arrival released.
    async fn message(
        &mut self,
        m: &BorrowedMessage<'_>,
        tx: &mpsc::Sender<Batch>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Step, RunError> {
        let Some(t) = self.topology.index(m.topic()) else {
            warn!(topic = m.topic(), "message from a topic not subscribed to; skipped");
            return Ok(Step::Go);
        };
        let slot = (t, m.partition());
        let role = self.topology.consumed[t].role;
        if matches!(role, Role::Direct | Role::Route) {
            self.stats.consumed.fetch_add(1, Ordering::Relaxed);
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
            self.order.mark((slot, marker.source), marker.ts_ms, ingested);
        } else {
            let payload = m.payload().unwrap_or_default();
            let intake = self
                .handler
                .intake(payload, key, source, (role, received), &mut self.batch)
                .await?;
            match (intake, role) {
                (None, _) => {}
                (Some(e), Role::Route) => self.marks.heard(slot, e.ts_ms, ingested),
                (Some(e), Role::Direct | Role::Home(_)) => {
                    // A home's copies name the attempts partition they came
                    // from; a partition read directly is its own.
                    let (from, home) = match role {
                        Role::Home(h) => (
                            header(Marker::SOURCE).and_then(|p| p.parse().ok()).unwrap_or(-1),
                            Some(h),
                        ),
                        _ => (slot.1, None),
                    };
                    let ts = e.ts_ms;
                    let ready = Ready {
                        event: e,
                        home,
                        ingested,
                    };
                    self.order.push((slot, from), m.offset(), ts, ready, ingested);
                }
            }
        }
        self.handler.release(&mut self.order, &mut self.batch).await?;
        if self.batch.events == 0 {
            self.batch_started = Instant::now();
        }
        self.consumed.insert(slot, m.offset() + 1);
        self.batch.events += 1;
        if self.batch.events >= self.pipeline.batch_events {
            return self.hand_off(tx, shutdown).await;
        }
        Ok(Step::Go)
    }

    /// Sets what the batch may commit (see [`frontier`]).
    fn frontier(&mut self) {
        frontier(&mut self.batch, &mut self.processed, &self.consumed, &self.order);
    }

    /// Hands the batch to the committer (see [`hand_off`]).
    async fn hand_off(
        &mut self,
        tx: &mpsc::Sender<Batch>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Step, RunError> {
        self.frontier();
        Ok(match hand_off(tx, &mut self.batch, shutdown).await {
            true => Step::Go,
            false => Step::Stop,
        })
    }
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
