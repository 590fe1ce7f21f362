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
use rdkafka::message::{Headers, Message};
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
use super::topology::{self, Role, Slot};
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
    let mut out = MessageHandler {
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
        if consumer.context().take_assignment_changed() || unknown {
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
