//! Why the live pipeline stops. Its own file so that every part of `kafka`
//! (the loop, topic creation, the topology) returns one error type without
//! importing another's.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::config::KafkaConfigError;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] KafkaConfigError),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("topic {0} does not exist (create it, or set kafka.create_topics = true)")]
    MissingTopic(String),
    #[error(
        "kafka.group_id `{0}` names the internal topics but contains `{1}`; use letters, digits, `.`, `_` and `-`"
    )]
    InternalTopicName(String, char),
    #[error("cannot create topic {topic}: {code}")]
    CreateTopic { topic: String, code: RDKafkaErrorCode },
    #[error("the broker refused a {what}: {error}; offsets after it are not committed")]
    Delivery { what: &'static str, error: KafkaError },
    #[error("cannot encode a decision: {0}")]
    Encode(String),
    #[error("no code-hash key: set KAMIGUARD_CODE_KEY (or code_key in the config); without it raw codes could not be hashed in dead letters")]
    NoCodeKey,
    #[error("shutdown timed out after {0:?} waiting for the broker; uncommitted events will be redelivered")]
    ShutdownTimeout(Duration),
}
