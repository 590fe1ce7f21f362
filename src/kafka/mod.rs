//! The live pipeline on Kafka: `kamiguard run` and the demo's cluster.
//!
//! - [`config`]: the `[kafka]` and `[pipeline]` configuration sections and the
//!   librdkafka properties kamiguard sets.
//! - [`run`]: consume, decide, publish, commit.
//! - [`restore`]: rebuilding window state from the attempts topic.
//! - [`dead_letter`]: what a refused message becomes.
//! - [`topology`]: splitting the work across instances (internal topics).

pub mod config;
pub mod dead_letter;
pub mod restore;
pub mod run;
pub mod topology;

pub use config::{KafkaConfig, PipelineConfig, Topics};
pub use run::{ensure_topics, run, RunError, RunStats, Settings};
