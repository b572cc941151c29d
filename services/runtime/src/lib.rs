//! hexcast-runtime: the only crate that talks to Kafka. It holds the one stage runner
//! (consume, decode, process, produce, commit in one transaction, dead-letter) with the
//! restore of a stage's declared changelog, the follower that keeps in-memory tables in
//! step with compacted topics, the writer that everything outside the runner produces
//! through, the partition reader behind server streams, topic layout and creation, the
//! embedded broker, layered configuration, metrics and shutdown. It must never contain
//! stage logic: stages are plain `hexcast_core::Stage`s.

pub mod broker;
pub mod changelog;
pub mod clock;
pub mod config;
pub mod follower;
pub mod preflight;
pub mod reader;
pub mod repair;
pub mod restore;
pub mod runner;
pub mod shutdown;
pub mod telemetry;
pub mod topics;
pub mod writer;

pub use broker::EmbeddedBroker;
pub use changelog::{ChangelogRecord, PartitionedRecord, fence_stage, read_changelog, read_changelog_partitioned};
pub use config::{
    Delivery, KafkaConfig, KafkaSecurity, MetricsConfig, RunnerConfig, SaslMechanism, SecurityProtocol,
    SecuritySection, TopicsConfig,
};
pub use follower::{FollowerStatus, PartitionedTable, Partitions, ShardFollower, Table, follow, follow_shards};
pub use preflight::{ConnectError, check_connection, client_config};
pub use reader::{PartitionReader, ReadError, ReadRecord, StartAt};
pub use restore::restoring;
pub use runner::{
    Clock, Runtime, StageHandle, group_id, group_instance_id, spawn_stage, spawn_stage_with_stats, system_clock,
    transactional_id,
};
#[cfg(feature = "fault-injection")]
pub use runner::{FaultInjection, spawn_stage_with_faults};
pub use telemetry::StageStats;
pub use topics::{TopicNames, TopicSpec, ensure_topics, existing_topics, specs};
pub use writer::{WriteError, Writer};
