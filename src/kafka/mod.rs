//! The live pipeline on Kafka: `kamiguard run` and the demo's cluster.
//!
//! - [`config`]: the `[kafka]` and `[pipeline]` configuration sections and the
//!   librdkafka properties kamiguard sets.
//! - [`mod@run`]: the consume loop (`kamiguard run`); `handler`: what one
//!   message becomes; `commit`: commit tracking; `assign`: assignment and
//!   restore on rebalance; `topics`: topic creation; [`produce`]: sending
//!   one message; `error` and `stats`: the loop's error and counters.
//! - [`book`]: the decision book follows the decisions topic.
//! - [`restore`]: rebuilding window state from the attempts topic.
//! - [`dead_letter`]: what a refused message becomes.
//! - [`order`]: event-time order across the partitions an engine reads.
//! - [`topology`]: splitting the work across instances (internal topics).

mod assign;
pub mod book;
mod commit;
pub mod config;
pub mod dead_letter;
mod error;
mod handler;
pub mod order;
pub mod produce;
pub mod restore;
pub mod run;
mod stats;
mod topics;
pub mod topology;

pub use config::{KafkaConfig, PipelineConfig, Topics};
pub use error::RunError;
pub use run::{run, Settings};
pub use stats::RunStats;
pub use topics::ensure_topics;

/// When a record was received, ms, for holding its attempt's event time to
/// `engine.max_ahead_secs` ([`crate::event::check_ahead`]): the broker's
/// append time as it is; a producer's create time, or none, no later than
/// this host's clock (`now_ms`), since a producer's clock may be as wrong
/// as the `ts` it wrote.
pub fn received_ms(timestamp: rdkafka::Timestamp, now_ms: i64) -> i64 {
    match timestamp {
        rdkafka::Timestamp::LogAppendTime(ms) => ms,
        rdkafka::Timestamp::CreateTime(ms) => ms.min(now_ms),
        rdkafka::Timestamp::NotAvailable => now_ms,
    }
}
