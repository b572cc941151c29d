//! hexcast-runtime: the only crate that talks to Kafka. It holds the one stage runner
//! (consume, decode, process, produce, commit in one transaction, dead-letter), topic
//! layout and creation, the embedded broker, layered configuration, metrics and shutdown.
//! It must never contain stage logic: stages are plain `hexcast_core::Stage`s.

pub mod broker;
pub mod changelog;
pub mod config;
pub mod preflight;
pub mod runner;
pub mod shutdown;
pub mod telemetry;
pub mod topics;

pub use broker::EmbeddedBroker;
pub use changelog::{ChangelogRecord, PartitionedRecord, fence_stage, read_changelog, read_changelog_partitioned};
pub use config::{
    Delivery, KafkaConfig, KafkaSecurity, MetricsConfig, RunnerConfig, SaslMechanism, SecurityProtocol,
    SecuritySection, TopicsConfig,
};
pub use preflight::{ConnectError, check_connection, client_config};
pub use runner::{Clock, FaultInjection, Runtime, StageHandle, group_id, spawn_stage, system_clock, transactional_id};
pub use telemetry::StageStats;
pub use topics::{TopicNames, TopicSpec, ensure_topics, specs};
