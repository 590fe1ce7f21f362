//! Commit tracking: the loop hands the committer batches in consumption
//! order, each with the next offset of every partition and the
//! acknowledgements of everything its attempts published; a batch's offsets
//! are committed only once all of them are acknowledged.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};
use tracing::warn;

use super::assign::RunContext;
use super::dead_letter::DeadLetter;
use super::error::RunError;
use super::order::Orderer;
use super::produce::{delivered, send, too_large};
use super::stats::RunStats;
use super::topology::Slot;
use crate::metrics::Metrics;

/// One hand-off from the loop to the committer.
#[derive(Default)]
pub(super) struct Batch {
    /// Next offset to consume, by partition, after this batch.
    pub(super) offsets: BTreeMap<Slot, i64>,
    /// Acknowledgements of everything the batch published.
    pub(super) acks: Vec<Pending>,
    pub(super) events: usize,
}

impl Batch {
    /// Adds the acknowledgement of a message just queued, so the batch's
    /// offsets wait for it; a message the producer refused to queue is the
    /// error that stops the pipeline.
    pub(super) fn expect_ack(
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
    pub(super) fn expect_ack_or(
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

/// A dead letter's headers-only stand-in (see [`DeadLetter::without_body`]).
pub(super) struct Fallback {
    pub(super) topic: String,
    pub(super) key: Vec<u8>,
    pub(super) letter: DeadLetter,
}

/// One published message awaiting its acknowledgement.
pub(super) struct Pending {
    what: &'static str,
    ack: DeliveryFuture,
    /// For decisions: when the attempt was taken off the topic, and its event time.
    timing: Option<(Instant, i64)>,
    /// For dead letters: sent instead when the broker refuses this one for
    /// its size, and awaited before the batch's offsets are committed.
    fallback: Option<Fallback>,
}

/// Sets what may be committed for every partition read: the next offset
/// to read, or the first attempt still waiting in `order`, whichever is
/// smaller. `processed` (where a partition that comes back is restored
/// from) follows it.
pub(super) fn frontier<T>(
    batch: &mut Batch,
    processed: &mut BTreeMap<Slot, i64>,
    consumed: &BTreeMap<Slot, i64>,
    order: &Orderer<T>,
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
pub(super) async fn hand_off(
    tx: &mpsc::Sender<Batch>,
    batch: &mut Batch,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
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

/// Waits for each batch's acknowledgements in order and commits the offsets
/// they cover. Returns at the first refused delivery, without committing it.
pub(super) async fn commit_loop(
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
