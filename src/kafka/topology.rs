//! Splitting the work across instances: Kafka is the distributed engine.
//!
//! # The model
//!
//! A window is keyed by address, device, account or card, while the
//! redemption service keys attempts one way (usually by account). Several
//! instances in one consumer group would each see part of every address's
//! attempts. So, as Kafka Streams repartitions, a split pipeline has two steps
//! inside each instance, both consumed by the same consumer group:
//!
//! 1. **Route.** An attempt from the attempts topic is validated (bad ones go
//!    to the dead-letter topic, as always) and forwarded once per *home key*
//!    that wants it ([`Engine::route_keys`]: a rule there could pass it, or
//!    the memory there learns from it) to the internal topic
//!    `<group_id>-repartition-<key>`, keyed by that key's value (the subject
//!    string: address, fingerprint, account id, code hash...) and placed with
//!    Kafka's own partitioner function (murmur2), so every attempt of one key
//!    lands on one partition. A raw `card.code` is replaced by its hash first.
//! 2. **Decide.** An attempt from an internal topic runs through the rules of
//!    that home key only ([`Engine::process_for`]), on the instance that owns
//!    the partition, which therefore holds the whole window of each of its
//!    keys. Account memory lives where accounts are home, card memory where
//!    cards are.
//!
//! A rule's home key is its group-by key; for a match rule, the key of the
//! memory it reads, else its scope ([`crate::rules::CompiledRule::home`]).
//! Rules whose scope differs from their home split the decision book: see
//! [`crate::rules::RuleSet::split_caveats`], logged at start.
//!
//! # What survives what
//!
//! - The input offset is committed only once every forwarded copy is
//!   acknowledged; a crash in between forwards again, and the decide step
//!   drops the copy by (home key, event id).
//! - An internal topic is the changelog of its keys: a partition assigned to
//!   an instance (start, restart, rebalance) is restored from it, as the
//!   attempts topic is when the pipeline is not split ([`super::restore`]).
//!   Routing itself keeps no state: attempts partitions need no restore.
//!
//! [`Engine::process_for`]: crate::engine::Engine::process_for
//! [`Engine::route_keys`]: crate::engine::Engine::route_keys

use std::time::Duration;

use rdkafka::admin::{AdminClient, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use tracing::{info, warn};

use super::config::{KafkaConfig, Repartition};
use super::error::RunError;
use crate::rules::KeyName;

/// What the pipeline does with the messages of one topic it consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The attempts topic, not split: every rule runs here.
    Direct,
    /// The attempts topic, split: each attempt is forwarded to its home keys.
    Route,
    /// An internal topic: the rules of one home key.
    Home(KeyName),
}

/// One consumed topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumed {
    pub topic: String,
    pub role: Role,
}

/// Where attempts are forwarded for one home key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub home: KeyName,
    pub topic: String,
    pub partitions: i32,
}

/// The topics one instance consumes and forwards to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// The attempts topic first.
    pub consumed: Vec<Consumed>,
    /// Empty when not split.
    pub routes: Vec<Route>,
    /// Partitions of the attempts topic when split: the sources every home
    /// hears from (see `kafka::order`).
    pub sources: i32,
}

/// A partition of a consumed topic: the topic's index in
/// [`Topology::consumed`], and the partition.
pub type Slot = (usize, i32);

impl Topology {
    /// Not split: the attempts topic, every rule.
    pub fn direct(attempts: &str) -> Topology {
        Topology {
            consumed: vec![Consumed {
                topic: attempts.to_string(),
                role: Role::Direct,
            }],
            routes: Vec::new(),
            sources: 0,
        }
    }

    /// Split by `routes`.
    pub fn split(attempts: &str, routes: Vec<Route>, sources: i32) -> Topology {
        let mut consumed = vec![Consumed {
            topic: attempts.to_string(),
            role: Role::Route,
        }];
        consumed.extend(routes.iter().map(|r| Consumed {
            topic: r.topic.clone(),
            role: Role::Home(r.home),
        }));
        Topology {
            consumed,
            routes,
            sources,
        }
    }

    pub fn is_split(&self) -> bool {
        !self.routes.is_empty()
    }

    /// The index of a consumed topic in [`Topology::consumed`].
    pub fn index(&self, topic: &str) -> Option<usize> {
        self.consumed.iter().position(|c| c.topic == topic)
    }

    pub fn homes(&self) -> Vec<KeyName> {
        self.routes.iter().map(|r| r.home).collect()
    }

    pub fn topics(&self) -> Vec<&str> {
        self.consumed.iter().map(|c| c.topic.as_str()).collect()
    }
}

/// The internal topic of one home key: `<group_id>-repartition-<key>`.
pub fn internal_topic(group_id: &str, home: KeyName) -> String {
    format!("{group_id}-repartition-{}", home.as_str())
}

/// Kafka's default partitioner function (murmur2, as the Java client and
/// librdkafka's `murmur2` partitioner): the partition of `key` among `n`.
pub fn partition_for(key: &[u8], n: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) % n.max(1)
}

/// MurmurHash2 as Kafka's `Utils.murmur2` computes it (seed 0x9747b28c).
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    if !tail.is_empty() {
        for (i, b) in tail.iter().enumerate().rev() {
            h ^= (*b as u32) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Decides whether to split and prepares the internal topics: each missing
/// one is created with as many partitions as the attempts topic and a
/// retention of twice the restore lookback (at least a day); an existing one
/// is used as it is (every instance reads the same partition count, so a key
/// still has one owner).
pub async fn plan(
    kafka: &KafkaConfig,
    mode: Repartition,
    homes: &[KeyName],
    lookback_ms: i64,
) -> Result<Topology, RunError> {
    let attempts = kafka.topics.attempts.as_str();
    if mode == Repartition::Never || homes.is_empty() {
        // With no rule enabled there is no home key to route to.
        return Ok(Topology::direct(attempts));
    }
    let admin: AdminClient<DefaultClientContext> = kafka.admin_config().create()?;
    let input_partitions = partition_count(&admin, attempts)?.ok_or_else(|| RunError::MissingTopic(attempts.into()))?;
    if mode == Repartition::Auto && input_partitions <= 1 {
        info!(
            topic = attempts,
            "one attempts partition: not split (pipeline.repartition = \"auto\")"
        );
        return Ok(Topology::direct(attempts));
    }
    if let Some(bad) = kafka
        .group_id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(RunError::InternalTopicName(kafka.group_id.clone(), bad));
    }
    let names: Vec<String> = homes.iter().map(|h| internal_topic(&kafka.group_id, *h)).collect();
    let retention_ms = internal_retention_ms(lookback_ms).to_string();
    let missing: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| {
            NewTopic::new(n, input_partitions, TopicReplication::Fixed(kafka.replication_factor))
                .set("cleanup.policy", "delete")
                .set("retention.ms", &retention_ms)
        })
        .collect();
    super::topics::create_missing(&admin, &missing).await?;
    let mut routes = Vec::with_capacity(homes.len());
    for (home, topic) in homes.iter().zip(names) {
        // A topic just created may take a moment to show in metadata.
        let mut partitions = None;
        for _ in 0..50 {
            partitions = partition_count(&admin, &topic)?;
            if partitions.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let partitions = partitions.ok_or_else(|| RunError::MissingTopic(topic.clone()))?;
        if partitions != input_partitions {
            warn!(%topic, partitions, attempts_partitions = input_partitions, "internal topic has another partition count than the attempts topic; using it as it is");
        }
        routes.push(Route {
            home: *home,
            topic,
            partitions,
        });
    }
    info!(
        homes = ?homes.iter().map(|h| h.as_str()).collect::<Vec<_>>(),
        partitions = input_partitions,
        "split across instances: attempts are forwarded to one internal topic per home key"
    );
    Ok(Topology::split(attempts, routes, input_partitions))
}

/// Retention of a new internal topic: a restore reads back one lookback, so
/// keep two (a reload may lengthen a window a little), and at least a day.
pub fn internal_retention_ms(lookback_ms: i64) -> i64 {
    lookback_ms.saturating_mul(2).max(86_400_000)
}

/// Partitions of `topic`, or `None` when the broker does not know it.
fn partition_count(admin: &AdminClient<DefaultClientContext>, topic: &str) -> Result<Option<i32>, RunError> {
    let metadata = tokio::task::block_in_place(|| admin.inner().fetch_metadata(Some(topic), Duration::from_secs(30)))?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len() as i32)
        .filter(|n| *n > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // The cases of Kafka's own UtilsTest.testMurmur2.
        for (input, want) in [
            (&b"21"[..], -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
            (b"abc", 479470107),
        ] {
            assert_eq!(murmur2(input), want, "{}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn a_key_always_lands_on_the_same_partition_and_keys_spread() {
        let mut seen = [0u32; 4];
        for i in 0..4000 {
            let key = format!("10.0.{}.{}", i / 256, i % 256);
            let p = partition_for(key.as_bytes(), 4);
            assert_eq!(p, partition_for(key.as_bytes(), 4));
            seen[p as usize] += 1;
        }
        assert!(seen.iter().all(|n| *n > 800), "{seen:?}");
    }

    #[test]
    fn internal_topics_keep_two_lookbacks_and_at_least_a_day() {
        assert_eq!(internal_retention_ms(60_000), 86_400_000);
        assert_eq!(internal_retention_ms(86_430_000), 172_860_000);
    }

    #[test]
    fn split_consumes_attempts_then_one_topic_per_home() {
        let t = Topology::split(
            "a",
            vec![Route {
                home: KeyName::Ip,
                topic: internal_topic("kg", KeyName::Ip),
                partitions: 3,
            }],
            3,
        );
        assert_eq!(t.topics(), ["a", "kg-repartition-ip"]);
        assert_eq!(t.consumed[1].role, Role::Home(KeyName::Ip));
        assert_eq!(t.index("kg-repartition-ip"), Some(1));
        assert!(!Topology::direct("a").is_split());
    }
}
