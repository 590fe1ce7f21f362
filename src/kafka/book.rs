//! Topics every instance reads whole and then follows, outside any group:
//! the decisions topic (what is in force) and the allowlist topic.
//!
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
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tracing::info;

use super::config::KafkaConfig;
use crate::engine::Engine;

/// A reader of one topic, every partition, outside any group.
pub struct Follower {
    consumer: BaseConsumer,
}

/// The decisions topic into the engine's book.
pub struct BookFollower(Follower);

impl BookFollower {
    /// Reads the decisions topic from its start up to where it ends now into
    /// `engine`'s book, and stays there to follow it. Returns the follower
    /// and how many decisions were read.
    pub fn load(kafka: &KafkaConfig, engine: &Engine) -> Result<(BookFollower, u64), KafkaError> {
        let started = Instant::now();
        let (follower, read) = Follower::load(kafka, &kafka.topics.decisions, "book", &mut |m| {
            engine.book_published(m.payload().unwrap_or_default())
        })?;
        info!(
            decisions = read.0,
            took_ms = started.elapsed().as_millis() as u64,
            unfinished_partitions = read.1,
            "decision book loaded from the decisions topic"
        );
        Ok((BookFollower(follower), read.0))
    }

    /// Books whatever has been published since the last call (at most a
    /// few thousand, so the loop is never held up long).
    pub fn follow(&self, engine: &Engine) {
        self.0
            .follow(&mut |m| engine.book_published(m.payload().unwrap_or_default()));
    }
}

/// The allowlist topic into the engine's allowlist.
pub struct AllowFollower(Follower);

impl AllowFollower {
    /// Reads the allowlist topic whole, and stays there to follow it.
    pub fn load(kafka: &KafkaConfig, engine: &Engine) -> Result<AllowFollower, KafkaError> {
        let (follower, read) = Follower::load(kafka, &kafka.topics.allowlist, "allowlist", &mut |m| {
            allow(engine, m.payload())
        })?;
        info!(
            records = read.0,
            entries = engine.allowlist().len(),
            unfinished_partitions = read.1,
            "allowlist loaded from its topic"
        );
        Ok(AllowFollower(follower))
    }

    /// Takes whatever has been published since the last call.
    pub fn follow(&self, engine: &Engine) {
        self.0.follow(&mut |m| allow(engine, m.payload()));
    }
}

/// Applies one allowlist record; a record that is not one is skipped with a
/// warning that says why, and changes nothing else.
fn allow(engine: &Engine, payload: Option<&[u8]>) -> bool {
    match crate::allowlist::Entry::parse(payload.unwrap_or_default()) {
        Ok(entry) => {
            engine.apply_allow(entry);
            true
        }
        Err(error) => {
            tracing::warn!(%error, "allowlist record skipped");
            false
        }
    }
}

impl Follower {
    /// Most records one [`Follower::follow`] applies: a burst of releases
    /// is taken over a few ticks rather than holding the loop up.
    pub const MOST_PER_CALL: usize = 4096;

    /// Reads `topic` from its start up to where it ends now through `apply`
    /// (which says whether a record counted), and stays there to follow it.
    /// Returns the follower, the records counted, and the partitions not
    /// read to their end within 30 s.
    pub fn load(
        kafka: &KafkaConfig,
        topic: &str,
        suffix: &str,
        apply: &mut dyn FnMut(&BorrowedMessage<'_>) -> bool,
    ) -> Result<(Follower, (u64, usize)), KafkaError> {
        let consumer: BaseConsumer = kafka
            .consumer_config()
            .set("group.id", format!("{}.{suffix}", kafka.group_id))
            .remove("group.instance.id")
            .create()?;
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
        let follower = Follower { consumer };
        let mut read = 0u64;
        let deadline = Instant::now() + timeout;
        while !ends.is_empty() && Instant::now() < deadline {
            if let Some(Ok(m)) = follower.consumer.poll(Duration::from_millis(100)) {
                if apply(&m) {
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
        let unfinished = ends.len();
        Ok((follower, (read, unfinished)))
    }

    /// Applies whatever has been published since the last call, at most
    /// [`Follower::MOST_PER_CALL`] records, so the loop is never held up long.
    pub fn follow(&self, apply: &mut dyn FnMut(&BorrowedMessage<'_>) -> bool) {
        for _ in 0..Self::MOST_PER_CALL {
            match self.consumer.poll(Duration::ZERO) {
                Some(Ok(m)) => {
                    apply(&m);
                }
                Some(Err(_)) => {}
                None => return,
            }
        }
    }
}
