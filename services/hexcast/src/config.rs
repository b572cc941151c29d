//! The whole configuration of a hexcast process, one section per component. Loaded in
//! layers (file, `HEXCAST__SECTION__KEY`, `--set section.key=value`) and validated
//! completely before anything starts: an unknown key or a bad value names itself.

use std::path::{Path, PathBuf};

use hexcast_api::PushConfig;
use hexcast_core::cells::GeoConfig;
use hexcast_dedup::DedupConfig;
use hexcast_runtime::config::ConfigError;
use hexcast_runtime::{KafkaConfig, MetricsConfig, RunnerConfig, TopicsConfig};
use serde::Deserialize;

/// `[policy]`: where the policy file is.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// Policy file; the built-in seed policy when absent.
    #[serde(default)]
    pub file: Option<PathBuf>,
}

/// `[log]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (default) or `json` (for Kubernetes).
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter such as `info` or `hexcast_runtime=debug`.
    #[serde(default)]
    pub filter: Option<String>,
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Everything.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Cluster access.
    pub kafka: KafkaConfig,
    /// Batching.
    #[serde(default)]
    pub runner: RunnerConfig,
    /// Topic layout.
    #[serde(default)]
    pub topics: TopicsConfig,
    /// Metrics endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// H3 resolutions.
    #[serde(default)]
    pub geo: GeoConfig,
    /// Ingest.
    #[serde(default)]
    pub ingest: hexcast_ingest::IngestConfig,
    /// Dedup.
    #[serde(default)]
    pub dedup: DedupConfig,
    /// Policy.
    #[serde(default)]
    pub policy: PolicySection,
    /// Push service.
    #[serde(default)]
    pub push: PushConfig,
    /// Review service (editorial hold).
    #[serde(default)]
    pub review: hexcast_review::ReviewConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Health endpoint.
    #[serde(default)]
    pub health: crate::health::HealthConfig,
    /// Web console (target console).
    #[serde(default)]
    pub console: hexcast_console::ConsoleConfig,
}

impl Config {
    /// Loads from a file, the process environment and `--set` overrides.
    pub fn load(file: Option<&Path>, sets: &[String]) -> Result<Self, ConfigError> {
        hexcast_runtime::config::load(file, std::env::vars(), sets)
    }

    /// A config for `brokers` with every default.
    pub fn for_brokers(brokers: &str) -> Self {
        Self {
            kafka: KafkaConfig::new(brokers),
            runner: RunnerConfig::default(),
            topics: TopicsConfig::default(),
            metrics: MetricsConfig::default(),
            geo: GeoConfig::default(),
            ingest: hexcast_ingest::IngestConfig::default(),
            dedup: DedupConfig::default(),
            policy: PolicySection::default(),
            push: PushConfig::default(),
            review: hexcast_review::ReviewConfig::default(),
            log: LogConfig::default(),
            health: crate::health::HealthConfig::default(),
            console: hexcast_console::ConsoleConfig::default(),
        }
    }
}
