//! The hexcast binary's library half: configuration, `--target` wiring and the demo, so
//! that the end-to-end tests start exactly what the binary starts.

pub mod config;
pub mod demo;
pub mod geojson;
pub mod health;
pub mod normalize;
pub mod offline;
pub mod offline_stages;
pub mod targets;

pub use config::Config;
pub use targets::{Running, Target, parse_targets, start, start_with_review};

use hexcast_runtime::{Runtime, TopicsConfig};

/// Builds the shared runtime of a config.
pub fn runtime(cfg: &Config) -> Runtime {
    Runtime::new(cfg.kafka.clone(), cfg.runner.clone())
}

/// Creates the pipeline's topics on a real cluster (idempotent).
pub async fn create_topics(cfg: &Config) -> anyhow::Result<()> {
    let rt = runtime(cfg);
    let specs = hexcast_runtime::specs(&rt.names, &cfg.topics);
    hexcast_runtime::ensure_topics(&cfg.kafka, &specs, replication(&cfg.topics)).await
}

fn replication(t: &TopicsConfig) -> i32 {
    t.replication_factor.get() as i32
}
