//! Topic names and layouts. Every topic's partitions, retention and cleanup policy are
//! decided here, once, and created at start (idempotently) on Apache Kafka or on the
//! embedded broker; a running stage never creates a topic by accident.

use std::time::Duration;

use anyhow::Context as _;
use hexcast_core::Topic;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::Consumer as _;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::{KafkaConfig, TopicsConfig};

/// Real topic names: base names with the configured prefix.
#[derive(Debug, Clone)]
pub struct TopicNames {
    names: Vec<String>,
}

impl TopicNames {
    /// Names with `prefix` prepended.
    pub fn new(prefix: &str) -> Self {
        Self { names: Topic::ALL.iter().map(|t| format!("{prefix}{}", t.base_name())).collect() }
    }

    /// The real name of `topic`.
    pub fn name(&self, topic: Topic) -> &str {
        &self.names[topic.index()]
    }

    /// The logical topic of a real name.
    pub fn topic_of(&self, name: &str) -> Option<Topic> {
        Topic::ALL.iter().copied().find(|t| self.name(*t) == name)
    }
}

/// How one topic is laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Real name.
    pub name: String,
    /// Partitions.
    pub partitions: i32,
    /// Log compaction (latest value per key) instead of deletion by age.
    pub compacted: bool,
    /// Retention in ms (ignored for compacted topics).
    pub retention_ms: u64,
}

/// Whether a topic holds personal data or locates an incident more finely than the
/// policy's coarse cell (the precise target of `alerts` and `alerts.indexed`): such topics
/// get the short `sensitive_retention_ms`. The table in `docs/topics.md` says the same.
pub fn is_sensitive(topic: Topic) -> bool {
    matches!(
        topic,
        Topic::Raw
            | Topic::Normalized
            | Topic::Unique
            | Topic::DeadLetter
            | Topic::Alerts
            | Topic::Review
            | Topic::Indexed
            | Topic::DedupState
            | Topic::RequestResponses
    )
}

/// The layout of every pipeline topic.
pub fn specs(names: &TopicNames, cfg: &TopicsConfig) -> Vec<TopicSpec> {
    Topic::ALL
        .iter()
        .map(|&t| {
            let sharded = matches!(t, Topic::Indexed | Topic::Subscriptions | Topic::Recipients);
            let sensitive = is_sensitive(t);
            TopicSpec {
                name: names.name(t).to_owned(),
                partitions: if sharded { cfg.shards.get() } else { cfg.partitions.get() } as i32,
                compacted: matches!(
                    t,
                    Topic::Subscriptions
                        | Topic::DedupState
                        | Topic::Review
                        | Topic::Requests
                        | Topic::Assets
                        | Topic::Recipients
                ),
                retention_ms: if sensitive { cfg.sensitive_retention_ms } else { cfg.retention_ms },
            }
        })
        .collect()
}

/// The names of the topics the cluster has (from its metadata).
pub fn existing_topics(kafka: &KafkaConfig) -> anyhow::Result<Vec<String>> {
    let cfg = crate::preflight::client_config(kafka);
    let consumer: rdkafka::consumer::BaseConsumer = cfg.create().context("creating metadata client")?;
    let md = consumer.fetch_metadata(None, Duration::from_secs(30)).context("reading cluster metadata")?;
    Ok(md.topics().iter().map(|t| t.name().to_owned()).collect())
}

/// Room above the producers' `message.max.bytes` in each topic's `max.message.bytes`: the
/// broker checks whole record batches (framing, and lz4 output slightly larger than its
/// input in the worst case), librdkafka single records.
pub const TOPIC_FRAMING_BYTES: u32 = 64 * 1024;

/// The `max.message.bytes` every pipeline topic is created with: above anything the
/// runner's producers (limited to `kafka.max_message_bytes`) can send, so the broker never
/// refuses a record the producer accepted.
pub fn topic_max_message_bytes(kafka: &KafkaConfig) -> u32 {
    kafka.max_message_bytes.saturating_add(TOPIC_FRAMING_BYTES)
}

/// Creates missing topics on a real cluster; existing topics are left as they are.
pub async fn ensure_topics(kafka: &KafkaConfig, specs: &[TopicSpec], replication: i32) -> anyhow::Result<()> {
    let cfg = crate::preflight::client_config(kafka);
    let admin: AdminClient<DefaultClientContext> = cfg.create().context("creating Kafka admin client")?;
    let retention: Vec<String> = specs.iter().map(|s| s.retention_ms.to_string()).collect();
    let max_message = topic_max_message_bytes(kafka).to_string();
    let new_topics: Vec<NewTopic<'_>> = specs
        .iter()
        .zip(&retention)
        .map(|(s, ret)| {
            let t = NewTopic::new(&s.name, s.partitions, TopicReplication::Fixed(replication))
                .set("max.message.bytes", &max_message);
            if s.compacted {
                t.set("cleanup.policy", "compact").set("min.compaction.lag.ms", "0")
            } else {
                t.set("cleanup.policy", "delete").set("retention.ms", ret)
            }
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics(&new_topics, &opts).await.context("creating topics")?;
    for r in results {
        match r {
            Ok(name) => tracing::info!(topic = %name, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("creating topic {name}: {code}"),
        }
    }
    wait_for_leaders(&cfg, specs).await
}

/// Creation returns before every partition has a leader; clients that start right away
/// would see NotLeaderForPartition. Wait until metadata shows a leader everywhere.
async fn wait_for_leaders(cfg: &ClientConfig, specs: &[TopicSpec]) -> anyhow::Result<()> {
    let consumer: rdkafka::consumer::BaseConsumer = cfg.create().context("creating metadata client")?;
    let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let md = consumer.fetch_metadata(None, Duration::from_secs(10)).context("reading metadata")?;
            let ready = names.iter().all(|n| {
                md.topics().iter().any(|t| {
                    t.name() == n
                        && t.error().is_none()
                        && !t.partitions().is_empty()
                        && t.partitions().iter().all(|p| p.leader() >= 0 && p.error().is_none())
                })
            });
            if ready {
                return Ok(());
            }
            anyhow::ensure!(std::time::Instant::now() < deadline, "topics have no leader after 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .context("waiting for topic leaders")?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharded_topics_have_shard_partitions_and_subscriptions_are_compacted() {
        let cfg = TopicsConfig {
            partitions: std::num::NonZeroU32::new(3).expect("nonzero"),
            shards: std::num::NonZeroU32::new(8).expect("nonzero"),
            ..TopicsConfig::default()
        };
        let names = TopicNames::new("t.");
        let specs = specs(&names, &cfg);
        let get = |t: Topic| specs.iter().find(|s| s.name == names.name(t)).expect("spec").clone();
        assert_eq!(get(Topic::Indexed).partitions, 8);
        assert_eq!(get(Topic::Subscriptions).partitions, 8);
        assert_eq!(get(Topic::Recipients).partitions, 8);
        assert!(get(Topic::Recipients).compacted);
        assert!(get(Topic::Subscriptions).compacted);
        assert!(get(Topic::DedupState).compacted);
        assert!(get(Topic::Requests).compacted && get(Topic::Assets).compacted);
        assert!(!get(Topic::Transparency).compacted);
        assert_eq!(get(Topic::RequestResponses).retention_ms, cfg.sensitive_retention_ms);
        assert_eq!(get(Topic::Raw).partitions, 3);
        assert_eq!(get(Topic::Raw).retention_ms, cfg.sensitive_retention_ms);
        assert_eq!(names.topic_of("t.alerts"), Some(Topic::Alerts));
        // The precise target lives on alerts and alerts.indexed only; what backends read
        // (notifications) carries the public view.
        assert_eq!(get(Topic::Alerts).retention_ms, cfg.sensitive_retention_ms);
        assert_eq!(get(Topic::Indexed).retention_ms, cfg.sensitive_retention_ms);
        assert_eq!(get(Topic::Notifications).retention_ms, cfg.retention_ms);
    }

    #[test]
    fn the_topics_doc_marks_exactly_the_sensitive_topics() {
        let doc = include_str!("../../../docs/topics.md");
        for t in Topic::ALL {
            let row = doc
                .lines()
                .find(|l| l.starts_with(&format!("| `{}` |", t.base_name())))
                .unwrap_or_else(|| panic!("docs/topics.md has no row for {}", t.base_name()));
            assert_eq!(row.contains("| sensitive |"), is_sensitive(t), "{row}");
        }
    }

    #[test]
    fn topics_take_every_record_the_producers_accept() {
        let mut kafka = KafkaConfig::new("b:9092");
        assert!(topic_max_message_bytes(&kafka) > kafka.max_message_bytes);
        kafka.max_message_bytes = 8 * 1024 * 1024;
        assert_eq!(topic_max_message_bytes(&kafka), 8 * 1024 * 1024 + TOPIC_FRAMING_BYTES);
    }
}
