//! The decision book follows the decisions topic: what is in force is what
//! the topic says, not what an instance remembers.
//!
//! At start the whole topic is read into the book (a compacted topic keeps
//! the latest decision of each subject), and from then on the topic is
//! followed, so a release made through another instance, or before a
//! restart, lifts the decision here too. A restore rebuilds windows and
//! memory from attempts but books nothing (`Engine::set_restoring`): a
//! decision the topic never carried is never in force.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tracing::info;

use super::config::KafkaConfig;
use crate::engine::Engine;

/// A reader of the decisions topic, every partition, outside any group.
pub struct BookFollower {
    consumer: BaseConsumer,
}

impl BookFollower {
    /// Reads the decisions topic from its start up to where it ends now into
    /// `engine`'s book, and stays there to follow it. Returns the follower
    /// and how many decisions were read.
    pub fn load(kafka: &KafkaConfig, engine: &Engine) -> Result<(BookFollower, u64), KafkaError> {
        let started = Instant::now();
        let consumer: BaseConsumer = kafka
            .consumer_config()
            .set("group.id", format!("{}.book", kafka.group_id))
            .remove("group.instance.id")
            .create()?;
        let topic = kafka.topics.decisions.as_str();
        let timeout = Duration::from_secs(30);
        let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic)
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        let mut tpl = TopicPartitionList::new();
        let mut ends = Vec::new();
        for p in &partitions {
            let (low, high) = consumer.fetch_watermarks(topic, *p, timeout)?;
            tpl.add_partition_offset(topic, *p, Offset::Offset(low))?;
            if high > low {
                ends.push((*p, high));
            }
        }
        consumer.assign(&tpl)?;
        let follower = BookFollower { consumer };
        let mut read = 0u64;
        let deadline = Instant::now() + timeout;
        while !ends.is_empty() && Instant::now() < deadline {
            if let Some(Ok(m)) = follower.consumer.poll(Duration::from_millis(100)) {
                if engine.book_published(m.payload().unwrap_or_default()) {
                    read += 1;
                }
                if let Some(at) = ends
                    .iter()
                    .position(|(p, end)| *p == m.partition() && m.offset() + 1 >= *end)
                {
                    ends.swap_remove(at);
                }
            }
        }
        info!(
            decisions = read,
            took_ms = started.elapsed().as_millis() as u64,
            unfinished_partitions = ends.len(),
            "decision book loaded from the decisions topic"
        );
        Ok((follower, read))
    }

    /// Books whatever has been published since the last call (at most a
    /// few thousand, so the loop is never held up long).
    pub fn follow(&self, engine: &Engine) {
        for _ in 0..4096 {
            match self.consumer.poll(Duration::ZERO) {
                Some(Ok(m)) => {
                    engine.book_published(m.payload().unwrap_or_default());
                }
                Some(Err(_)) => {}
                None => return,
            }
        }
    }
}
