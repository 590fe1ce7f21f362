//! Creating topics: the service's own at start (`kafka.create_topics`), and
//! the split pipeline's internal topics (`super::topology`), through one
//! function.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use tracing::info;

use super::config::KafkaConfig;
use super::error::RunError;

/// Creates the attempts, decisions, dead-letter, audit, operations and allowlist topics
/// if missing. The allowlist is compacted: the latest record of each entry
/// is the entry.
pub async fn ensure_topics(kafka: &KafkaConfig) -> Result<(), RunError> {
    let admin: AdminClient<DefaultClientContext> = kafka.admin_config().create()?;
    let t = &kafka.topics;
    let names = [&t.attempts, &t.decisions, &t.dead_letters, &t.audit, &t.operations];
    let replication = || TopicReplication::Fixed(kafka.replication_factor);
    let mut topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| NewTopic::new(n, kafka.partitions, replication()))
        .collect();
    topics.push(NewTopic::new(&t.allowlist, 1, replication()).set("cleanup.policy", "compact"));
    create_missing(&admin, &topics).await
}

/// Creates each of `topics` the broker does not have yet; one that exists
/// is used as it is.
pub(super) async fn create_missing(
    admin: &AdminClient<DefaultClientContext>,
    topics: &[NewTopic<'_>],
) -> Result<(), RunError> {
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for (result, asked) in admin.create_topics(topics, &opts).await?.into_iter().zip(topics) {
        match result {
            Ok(topic) => info!(%topic, partitions = asked.num_partitions, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(RunError::CreateTopic { topic, code }),
        }
    }
    Ok(())
}
