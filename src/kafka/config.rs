//! The `[kafka]` and `[pipeline]` sections of the configuration file.
//!
//! kamiguard sets librdkafka properties it depends on for correctness
//! ([`FORCED_CONSUMER`], [`FORCED_PRODUCER`]) and tuned defaults for the rest
//! ([`DEFAULT_CONSUMER`], [`DEFAULT_PRODUCER`]). Anything in `properties`,
//! `consumer` or `producer` is passed through to librdkafka, so SASL and TLS
//! (`security.protocol`, `sasl.*`, `ssl.*`) work without code changes.

use std::collections::BTreeMap;

use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// Where the pipeline reads and writes.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port]`. Env: `KAMIGUARD_BROKERS`.
    pub brokers: String,
    /// Consumer group of the attempts topic. Env: `KAMIGUARD_GROUP_ID`.
    pub group_id: String,
    /// Topic names.
    pub topics: Topics,
    /// Create missing topics at start (brokers differ on auto-creation).
    pub create_topics: bool,
    /// Partitions of topics kamiguard creates.
    pub partitions: i32,
    /// Replication factor of topics kamiguard creates; -1 takes the broker's default.
    pub replication_factor: i32,
    /// librdkafka properties for every client (security, timeouts).
    pub properties: BTreeMap<String, Secret>,
    /// librdkafka properties for the consumers only; they win over `properties`.
    pub consumer: BTreeMap<String, Secret>,
    /// librdkafka properties for the producer only; they win over `properties`.
    pub producer: BTreeMap<String, Secret>,
}

/// Topic names (docs/contract.md, "Topics").
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Topics {
    pub attempts: String,
    pub decisions: String,
    pub dead_letters: String,
    /// Every admin action, published before it takes effect (`crate::admin`).
    pub audit: String,
    /// Allowlist entries shared by every instance: compacted, keyed by entry.
    pub allowlist: String,
    /// What the engine itself did that operators must hear of: a rule's
    /// circuit breaker tripping or reset (`engine::OpsEvent`).
    pub operations: String,
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            attempts: "kamiguard.attempts".into(),
            decisions: "kamiguard.decisions".into(),
            dead_letters: "kamiguard.attempts.dlq".into(),
            audit: "kamiguard.audit".into(),
            allowlist: "kamiguard.allowlist".into(),
            operations: "kamiguard.operations".into(),
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "localhost:9092".into(),
            group_id: "kamiguard".into(),
            topics: Topics::default(),
            create_topics: true,
            partitions: 6,
            replication_factor: -1,
            properties: BTreeMap::new(),
            consumer: BTreeMap::new(),
            producer: BTreeMap::new(),
        }
    }
}

/// How the pipeline batches, commits, restores and stops.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Events per hand-off from the processing loop to the committer.
    pub batch_events: usize,
    /// Longest a hand-off waits to fill, ms (bounds commit latency when traffic is thin).
    pub batch_ms: u64,
    /// Hand-offs that may wait for broker acknowledgement at once. When they
    /// are all waiting, the loop stops fetching: a slow broker slows intake.
    pub in_flight_batches: usize,
    /// How often acknowledged offsets are committed, ms.
    pub commit_interval_ms: u64,
    /// How far back (by message timestamp) state is rebuilt from the attempts
    /// topic on start or when a partition is assigned. Default: the longest
    /// rule window plus the engine's lateness.
    pub restore_lookback_secs: Option<u64>,
    /// A restore that receives nothing for this long stops and says so.
    pub restore_idle_secs: u64,
    /// Longest a clean shutdown waits for the broker to acknowledge, seconds.
    pub shutdown_timeout_secs: u64,
    /// How often the rule files are checked for changes, seconds (0: only on SIGHUP).
    pub rules_poll_secs: u64,
    /// Whether attempts are forwarded to internal topics keyed by each rule's
    /// home key, so several instances split the work and each window key
    /// lives on one instance: `auto` (when the attempts topic has more than
    /// one partition), `always` or `never` (one instance only).
    pub repartition: Repartition,
    /// Event-time order across partitions (`kafka::order`): a partition
    /// read directly that delivered nothing for this long is idle and holds
    /// no other back, ms. A router says the same of its partitions to the
    /// homes.
    pub order_idle_ms: u64,
    /// Longest an engine waits for a source that says nothing at all (a
    /// router stopped or killed, until its partitions move), ms, counted
    /// only while the partition it is read through holds nothing unread.
    /// Decisions wait with it; what the source sends later counts behind
    /// the order.
    pub order_stall_ms: u64,
    /// Most attempts an engine holds for ordering; past it the oldest goes
    /// on whatever the watermark says, counted.
    pub order_buffer: usize,
}

/// See [`PipelineConfig::repartition`] and `kafka::topology`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Repartition {
    Auto,
    Always,
    Never,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            batch_events: 1000,
            batch_ms: 20,
            in_flight_batches: 64,
            commit_interval_ms: 1000,
            restore_lookback_secs: None,
            restore_idle_secs: 30,
            shutdown_timeout_secs: 30,
            rules_poll_secs: 2,
            repartition: Repartition::Auto,
            order_idle_ms: 200,
            order_stall_ms: 30_000,
            order_buffer: 200_000,
        }
    }
}

/// Consumer properties kamiguard's guarantees rest on; overriding them is an error.
pub const FORCED_CONSUMER: [(&str, &str); 2] = [
    // Offsets are committed by the pipeline, only once the decisions of every
    // event before them are acknowledged (at-least-once).
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
];

/// Producer properties kamiguard's guarantees rest on; overriding them is an error.
pub const FORCED_PRODUCER: [(&str, &str); 2] = [
    // No duplicates or reordering from the producer's own retries.
    ("enable.idempotence", "true"),
    ("acks", "all"),
];

/// Tuned consumer defaults; any of them may be overridden.
pub const DEFAULT_CONSUMER: [(&str, &str); 7] = [
    // A new group starts at the oldest retained attempt: nothing is skipped.
    ("auto.offset.reset", "earliest"),
    // Prefetch up to 32 MiB per partition: large fetches for throughput,
    // bounded so a backlog does not grow memory without limit.
    ("queued.max.messages.kbytes", "32768"),
    ("fetch.max.bytes", "52428800"),
    // A dead instance's partitions move within seconds, not the default 45 s.
    ("session.timeout.ms", "10000"),
    // A restore on assignment may take minutes on a large topic.
    ("max.poll.interval.ms", "600000"),
    // A fetch returns as soon as there is data; when there is none, the broker
    // holds it at most 10 ms. Brokers that do not answer a held fetch early
    // when data arrives (the test broker) would otherwise add up to the
    // librdkafka default of 500 ms to every decision.
    ("fetch.wait.max.ms", "10"),
    // Statistics four times a second: the consumer-lag metric comes from
    // them, and each partition's high watermark, which tells a quiet
    // partition that is caught up (idle) from one whose attempts are not
    // all taken yet, for the event-time order (`kafka::order`): the last
    // attempts before a pause wait that long at most for it.
    ("statistics.interval.ms", "250"),
];

/// Tuned producer defaults; any of them may be overridden.
pub const DEFAULT_PRODUCER: [(&str, &str); 5] = [
    // Wait up to 5 ms to fill a batch: decisions are few, so this costs little
    // latency and saves requests when an attack makes many at once.
    ("linger.ms", "5"),
    ("batch.num.messages", "10000"),
    // Bounded producer queue: when the broker is slow the queue fills and the
    // processing loop waits instead of growing memory.
    ("queue.buffering.max.messages", "100000"),
    // Never give up on a decision or a dead letter; shutdown has its own timeout.
    ("message.timeout.ms", "0"),
    ("compression.type", "none"),
];

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum KafkaConfigError {
    #[error("kafka.{section}: `{key}` must stay `{value}`: {why}")]
    Forced {
        section: &'static str,
        key: String,
        value: &'static str,
        why: &'static str,
    },
    #[error("kafka.partitions must be at least 1")]
    Partitions,
}

impl KafkaConfig {
    /// Checks that no forced property is overridden.
    pub fn validate(&self) -> Result<(), KafkaConfigError> {
        if self.partitions < 1 {
            return Err(KafkaConfigError::Partitions);
        }
        let checks = [
            (
                "consumer",
                &FORCED_CONSUMER[..],
                &self.consumer,
                "offsets are committed by kamiguard",
            ),
            (
                "producer",
                &FORCED_PRODUCER[..],
                &self.producer,
                "decisions must not be lost or duplicated",
            ),
        ];
        for (section, forced, own, why) in checks {
            for (key, value) in forced {
                for (name, map) in [("properties", &self.properties), (section, own)] {
                    if map.get(*key).is_some_and(|v| v.expose() != *value) {
                        return Err(KafkaConfigError::Forced {
                            section: if name == "properties" { "properties" } else { section },
                            key: key.to_string(),
                            value,
                            why,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Properties for a consumer of the attempts topic.
    pub fn consumer_config(&self) -> ClientConfig {
        self.client_config(&DEFAULT_CONSUMER, &self.consumer, &FORCED_CONSUMER)
    }

    /// Properties for the decision and dead-letter producer.
    pub fn producer_config(&self) -> ClientConfig {
        self.client_config(&DEFAULT_PRODUCER, &self.producer, &FORCED_PRODUCER)
    }

    /// Properties for the admin client (topic creation).
    pub fn admin_config(&self) -> ClientConfig {
        self.client_config(&[], &BTreeMap::new(), &[])
    }

    fn client_config(
        &self,
        defaults: &[(&str, &str)],
        own: &BTreeMap<String, Secret>,
        forced: &[(&str, &str)],
    ) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in defaults {
            c.set(*k, *v);
        }
        for (k, v) in self.properties.iter().chain(own) {
            c.set(k, v.expose());
        }
        for (k, v) in forced {
            c.set(*k, *v);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overriding_a_forced_property_is_refused() {
        let mut k = KafkaConfig::default();
        k.consumer.insert("enable.auto.commit".into(), "true".into());
        assert_eq!(
            k.validate().unwrap_err().to_string(),
            "kafka.consumer: `enable.auto.commit` must stay `false`: offsets are committed by kamiguard"
        );
        let mut k = KafkaConfig::default();
        k.properties.insert("acks".into(), "1".into());
        assert!(k
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("kafka.properties: `acks`"));
    }

    #[test]
    fn pass_through_properties_reach_the_client_and_defaults_yield() {
        let mut k = KafkaConfig::default();
        k.properties.insert("security.protocol".into(), "sasl_ssl".into());
        k.producer.insert("linger.ms".into(), "50".into());
        let p = k.producer_config();
        assert_eq!(p.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(p.get("linger.ms"), Some("50"));
        assert_eq!(p.get("enable.idempotence"), Some("true"));
        assert_eq!(k.consumer_config().get("enable.auto.commit"), Some("false"));
    }
}
