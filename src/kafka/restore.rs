//! Rebuilding state when partitions are assigned (start, restart, rebalance).
//!
//! # The mechanism
//!
//! The attempts topic is the changelog. When a partition is assigned, the
//! events before its committed offset that are younger than the lookback
//! (longest rule window plus lateness, by message timestamp) are read again
//! with a separate, group-less consumer and run through the engine with their
//! decisions dropped: those were published before the commit. Partitions are
//! merged in event-time order, as the live loop would have seen them. Live
//! consumption of those partitions resumes at the committed offset afterwards,
//! so no event is counted twice, and the decision book knows what was already
//! decided, so nothing is republished.
//!
//! # Limits
//!
//! - What is older than the lookback is not restored: account memory (known
//!   devices, last place) beyond it is lost on restart. Rules that need history
//!   (`new_device`, impossible travel) then see an account as new, which makes
//!   them quieter, never louder.
//! - The input's retention must cover the lookback.
//! - A broker that cannot answer offsets-for-timestamp (the test broker answers
//!   0) makes the restore read from the start of the partition: slower, still
//!   correct.
//! - A restore that receives nothing for `restore_idle_secs` stops and logs a
//!   warning; the partition then runs on the state it has.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use super::config::{KafkaConfig, PipelineConfig};
use crate::engine::Engine;
use crate::event::{self, CodeHasher, Event};
use crate::rules::KeyName;

/// Events buffered across partitions before the merge stops waiting for a
/// slow partition (the engine tolerates the lateness this may cause).
const MAX_BUFFERED: usize = 100_000;

/// One partition to restore: everything before `end` (its committed offset)
/// that this process has not processed itself (`done_upto`), run through the
/// rules of `home` (every rule for `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreRange {
    pub topic: String,
    pub home: Option<KeyName>,
    pub partition: i32,
    pub done_upto: Option<i64>,
    pub end: i64,
}

/// Replays `ranges` (of the attempts topic, or of internal topics when the
/// pipeline is split) into `engine`, decisions dropped.
/// Returns how many events were replayed.
pub fn restore(
    kafka: &KafkaConfig,
    pipeline: &PipelineConfig,
    engine: &Engine,
    hasher: &CodeHasher,
    ranges: &[RestoreRange],
    lookback_ms: i64,
) -> Result<u64, KafkaError> {
    let started = Instant::now();
    // Group-less (assign only): a static member id belongs to the live consumer.
    let consumer: BaseConsumer = kafka
        .consumer_config()
        .set("group.id", format!("{}.restore", kafka.group_id))
        .remove("group.instance.id")
        .create()?;
    let timeout = Duration::from_secs(30);

    let since = chrono::Utc::now().timestamp_millis() - lookback_ms;
    let mut by_time = TopicPartitionList::new();
    for r in ranges {
        by_time.add_partition_offset(&r.topic, r.partition, Offset::Offset(since))?;
    }
    let by_time = consumer.offsets_for_times(by_time, timeout)?;
    let mut start = TopicPartitionList::new();
    // By range index: where each stops.
    let mut end = BTreeMap::new();
    for (i, r) in ranges.iter().enumerate() {
        let from = match by_time.find_partition(&r.topic, r.partition).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            // Nothing as young as the lookback.
            Some(Offset::End) => r.end,
            _ => consumer.fetch_watermarks(&r.topic, r.partition, timeout)?.0,
        };
        let from = from.max(r.done_upto.unwrap_or(0));
        if from < r.end {
            start.add_partition_offset(&r.topic, r.partition, Offset::Offset(from))?;
            end.insert(i, r.end);
        }
    }
    if end.is_empty() {
        return Ok(0);
    }
    consumer.assign(&start)?;

    let mut pending: BTreeSet<usize> = end.keys().copied().collect();
    let mut buffers: BTreeMap<usize, VecDeque<Event>> = end.keys().map(|i| (*i, VecDeque::new())).collect();
    let mut buffered = 0usize;
    let mut replayed = 0u64;
    let mut dropped = Vec::new();
    // Windows and memory only: what is in force comes from the decisions topic.
    engine.set_restoring(true);
    let _done = Restoring(engine);
    let mut replay = |i: usize, e: Event| {
        engine.process_for(&e, ranges[i].home, &mut dropped);
        dropped.clear();
        replayed += 1;
    };
    let idle = Duration::from_secs(pipeline.restore_idle_secs);
    let mut last_progress = Instant::now();
    while !pending.is_empty() {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let Some(p) = ranges
                    .iter()
                    .position(|r| r.partition == m.partition() && r.topic == m.topic())
                else {
                    continue;
                };
                let Some(&stop) = end.get(&p) else { continue };
                if m.offset() < stop {
                    // Bad messages went to the dead-letter topic when first read.
                    if let Ok(e) = event::parse(m.payload().unwrap_or_default(), hasher) {
                        buffers.entry(p).or_default().push_back(e);
                        buffered += 1;
                    }
                }
                if m.offset() + 1 >= stop {
                    pending.remove(&p);
                }
                last_progress = Instant::now();
            }
            Some(Err(e)) => warn!(error = %e, "restore: consumer error"),
            None if last_progress.elapsed() >= idle => {
                warn!(partitions = ?pending, idle_secs = idle.as_secs(), "restore received nothing; going on with partial state for these partitions");
                break;
            }
            None => {}
        }
        // Merge: take the earliest head while every unfinished partition has
        // something buffered, so the engine sees event-time order.
        while buffered > MAX_BUFFERED || pending.iter().all(|p| buffers.get(p).is_some_and(|b| !b.is_empty())) {
            let Some((i, e)) = pop_earliest(&mut buffers) else {
                break;
            };
            buffered -= 1;
            replay(i, e);
        }
    }
    while let Some((i, e)) = pop_earliest(&mut buffers) {
        replay(i, e);
    }
    let restored: Vec<String> = end
        .keys()
        .map(|i| format!("{}[{}]", ranges[*i].topic, ranges[*i].partition))
        .collect();
    info!(events = replayed, partitions = ?restored, took_ms = started.elapsed().as_millis() as u64, "state restored");
    Ok(replayed)
}

/// The earliest head of all buffers, with its buffer's range index.
fn pop_earliest(buffers: &mut BTreeMap<usize, VecDeque<Event>>) -> Option<(usize, Event)> {
    let i = buffers
        .iter()
        .filter_map(|(i, b)| b.front().map(|e| (e.ts_ms, *i)))
        .min()
        .map(|(_, i)| i)?;
    Some((i, buffers.get_mut(&i)?.pop_front()?))
}

/// Ends an engine's restoring when dropped, on every way out of a restore.
struct Restoring<'a>(&'a Engine);

impl Drop for Restoring<'_> {
    fn drop(&mut self) {
        self.0.set_restoring(false);
    }
}
