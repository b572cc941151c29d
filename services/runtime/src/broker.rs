//! The embedded broker: librdkafka's in-process mock cluster, for `hexcast demo` and fast
//! runner tests. It speaks the Kafka protocol to real clients but does not implement
//! transactions (a read_committed consumer sees aborted records and transactional offsets
//! are not stored), so stages on it run at-least-once and exactly-once is only ever proven
//! on Apache Kafka.

use anyhow::Context as _;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use crate::topics::TopicSpec;

/// An in-process Kafka-protocol broker that lives as long as this value.
pub struct EmbeddedBroker {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl std::fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBroker").field("bootstrap", &self.bootstrap_servers()).finish()
    }
}

impl EmbeddedBroker {
    /// Starts a one-broker mock cluster.
    pub fn start() -> anyhow::Result<Self> {
        let cluster = MockCluster::new(1).context("starting the embedded broker")?;
        Ok(Self { cluster })
    }

    /// Its bootstrap servers.
    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Creates the topics (the mock has no CreateTopics admin API).
    pub fn create_topics(&self, specs: &[TopicSpec]) -> anyhow::Result<()> {
        for s in specs {
            self.cluster
                .create_topic(&s.name, s.partitions, 1)
                .with_context(|| format!("creating topic {}", s.name))?;
        }
        Ok(())
    }
}
