//! hexcast-runtime: the only crate that talks to Kafka. It holds the one stage runner
//! (consume, decode, process, produce, commit in one transaction, dead-letter), topic
//! layout and creation, the embedded broker, layered configuration, metrics and shutdown.
//! It must never contain stage logic: stages are plain `hexcast_core::Stage`s.

pub mod broker;
pub mod changelog;
pub mod config;
pub mod runner;
pub mod shutdown;
pub mod telemetry;
pub mod topics;

pub use broker::EmbeddedBroker;
pub use changelog::{ChangelogRecord, PartitionedRecord, fence_stage, read_changelog, read_changelog_partitioned};
pub use config::{Delivery, KafkaConfig, MetricsConfig, RunnerConfig, TopicsConfig};
pub use runner::{
    Clock, Runtime, StageHandle, group_id, group_instance_id, spawn_stage, system_clock, transactional_id,
};
#[cfg(feature = "fault-injection")]
pub use runner::{FaultInjection, spawn_stage_with_faults};
pub use telemetry::StageStats;
pub use topics::{TopicNames, TopicSpec, ensure_topics, specs};
