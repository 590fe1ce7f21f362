//! Assignment and restore: the consumer context that notes rebalances and
//! reads partitions' progress from librdkafka's statistics, and bringing
//! the partitions this instance owns up to the assignment, restoring the
//! state of those new to it before any of their attempts is decided.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{info, warn};

use super::config::{KafkaConfig, PipelineConfig};
use super::restore::{restore, RestoreRange};
use super::topology::{Role, Slot, Topology};
use crate::engine::Engine;
use crate::event::CodeHasher;
use crate::metrics::Metrics;

/// How long the consumer has gone without partitions, so that a group that
/// never assigns any (a broker stuck in a rebalance) is said in the log and
/// not only by `/readyz`.
#[derive(Debug)]
pub(super) struct Unassigned {
    since: Option<Instant>,
    next_warning: Duration,
}

impl Unassigned {
    /// The first warning after a minute without partitions, then every five.
    const FIRST: Duration = Duration::from_secs(60);
    const EVERY: Duration = Duration::from_secs(300);

    pub(super) fn since(now: Instant) -> Unassigned {
        Unassigned {
            since: Some(now),
            next_warning: Self::FIRST,
        }
    }

    /// Whole seconds without partitions when a warning is due, else `None`.
    pub(super) fn overdue(&mut self, empty: bool, now: Instant) -> Option<u64> {
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
    pub(super) fn new(metrics: Arc<Metrics>) -> RunContext {
        RunContext {
            assignment_changed: AtomicBool::new(false),
            metrics,
            watermarks: Default::default(),
        }
    }

    /// Whether the assignment changed since the last call.
    pub(super) fn take_assignment_changed(&self) -> bool {
        self.assignment_changed.swap(false, Ordering::SeqCst)
    }

    /// Whether the loop has taken everything `partition` of `topic` holds,
    /// `next` being the next offset it would take (`None`: it has taken
    /// nothing yet, so it starts at the committed offset). Unknown before
    /// the first statistics: not caught up.
    pub(super) fn is_caught_up(&self, topic: &str, partition: i32, next: Option<i64>) -> bool {
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
pub(super) fn reconcile(
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
