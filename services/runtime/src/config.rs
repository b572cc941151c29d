//! Layered, typed configuration: a TOML file, then `HEXCAST__SECTION__KEY` environment
//! variables, then `--set section.key=value` flags, merged into one TOML tree and only then
//! deserialized into typed structs with `deny_unknown_fields`. Every error names the key
//! (`kafka.brokerz: unknown field ...`) so a bad config fails at start, never later.

use std::collections::BTreeMap;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Prefix of environment overrides; `__` separates path segments.
pub const ENV_PREFIX: &str = "HEXCAST__";

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    /// The file is not valid TOML.
    #[error("parsing config file {path}: {message}")]
    Parse { path: String, message: String },
    /// An override is malformed.
    #[error("invalid override `{0}` (expected section.key=value)")]
    Override(String),
    /// A key is unknown or its value invalid.
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

/// Loads `T` from an optional file, environment variables and `section.key=value` sets.
pub fn load<T: DeserializeOwned>(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    sets: &[String],
) -> Result<T, ConfigError> {
    let mut root = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
            text.parse::<toml::Table>()
                .map_err(|e| ConfigError::Parse { path: path.display().to_string(), message: e.message().to_owned() })?
        }
        None => toml::Table::new(),
    };
    for (name, value) in env {
        if let Some(path) = name.strip_prefix(ENV_PREFIX) {
            let segments: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
            set_path(&mut root, &segments, parse_value(&value))?;
        }
    }
    for set in sets {
        let (path, value) = set.split_once('=').ok_or_else(|| ConfigError::Override(set.clone()))?;
        let segments: Vec<String> = path.trim().split('.').map(str::to_owned).collect();
        set_path(&mut root, &segments, parse_value(value.trim()))?;
    }
    let de = toml::Value::Table(root);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        ConfigError::Invalid { key, message: e.into_inner().message().to_owned() }
    })
}

/// A value as TOML when it parses as one (numbers, booleans, arrays), else as a string.
fn parse_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

fn set_path(root: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), ConfigError> {
    let (last, parents) = path.split_last().ok_or_else(|| ConfigError::Override(String::new()))?;
    let mut table = root;
    for seg in parents {
        let entry = table.entry(seg.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| ConfigError::Invalid { key: path.join("."), message: format!("`{seg}` is not a table") })?;
    }
    table.insert(last.clone(), value);
    Ok(())
}

/// How the runner delivers each stage's outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Outputs and input offsets in one Kafka transaction; consumers read_committed.
    #[default]
    ExactlyOnce,
    /// Outputs flushed, then offsets committed: a crash may repeat a batch. For brokers
    /// without transactions (the embedded demo broker).
    AtLeastOnce,
}

/// `[kafka]`: how to reach the cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    /// Prepended to every topic name (for example `prod.`).
    #[serde(default)]
    pub topic_prefix: String,
    /// Prepended to every consumer group and transactional id.
    #[serde(default = "default_group_prefix")]
    pub group_prefix: String,
    /// Identity of this process, stable across restarts (a pod name). Part of every
    /// transactional id, so a restarted process fences its own zombie at once.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// Exactly-once or at-least-once.
    #[serde(default)]
    pub delivery: Delivery,
    /// Transaction timeout: how long a crashed producer's open transaction can block
    /// read_committed consumers when no process with the same instance id comes back.
    #[serde(default = "default_txn_timeout_ms")]
    pub transaction_timeout_ms: u32,
    /// Largest record the runner produces, in bytes (librdkafka's `message.max.bytes` of
    /// every producer). `topics create` sets each topic's `max.message.bytes` above it with
    /// room for the batch framing, so a record the producer accepts is never refused by the
    /// broker; a dead letter larger than this is produced truncated.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: u32,
    /// Extra librdkafka properties for every client (security settings, tuning).
    #[serde(default)]
    pub client: BTreeMap<String, String>,
    /// Extra librdkafka properties for consumers only (for example `fetch.wait.max.ms`).
    #[serde(default)]
    pub consumer: BTreeMap<String, String>,
}

fn default_group_prefix() -> String {
    "hexcast".to_owned()
}

const fn default_txn_timeout_ms() -> u32 {
    10_000
}

const fn default_max_message_bytes() -> u32 {
    1_000_000
}

impl KafkaConfig {
    /// A config for `brokers` with every default.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic_prefix: String::new(),
            group_prefix: default_group_prefix(),
            instance_id: None,
            delivery: Delivery::default(),
            transaction_timeout_ms: default_txn_timeout_ms(),
            max_message_bytes: default_max_message_bytes(),
            client: BTreeMap::new(),
            consumer: BTreeMap::new(),
        }
    }

    /// The instance id, falling back to the host name, then to a fixed name.
    pub fn instance(&self) -> String {
        self.instance_id.clone().or_else(|| std::env::var("HOSTNAME").ok()).unwrap_or_else(|| "hexcast-0".to_owned())
    }
}

/// `[runner]`: batching of every stage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunnerConfig {
    /// Most records in one batch (one transaction).
    #[serde(default = "default_max_batch")]
    pub max_batch: NonZeroUsize,
    /// How long to wait for a batch to fill once it has a record. 0 (the default): take
    /// what the consumer has already fetched and go; records that arrive while a batch
    /// commits make the next batch, so batches grow with load without adding latency.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// Pause before a stage session is rebuilt after a transient error.
    #[serde(default = "default_backoff_ms")]
    pub retry_backoff_ms: u64,
    /// How often each stage's consumer lag is refreshed (committed offsets against the last
    /// stable offset of every assigned partition).
    #[serde(default = "default_lag_refresh_ms")]
    pub lag_refresh_ms: u64,
    /// A stage whose input waits (lag above 0) with no commit for this long is stalled: an
    /// error in the log, `hexcast_runner_stalled` = 1 and `StageStats::stalled`.
    #[serde(default = "default_stall_after_secs")]
    pub stall_after_secs: u64,
}

fn default_max_batch() -> NonZeroUsize {
    NonZeroUsize::new(500).unwrap_or(NonZeroUsize::MIN)
}

const fn default_linger_ms() -> u64 {
    0
}

const fn default_lag_refresh_ms() -> u64 {
    5_000
}

const fn default_stall_after_secs() -> u64 {
    60
}

const fn default_backoff_ms() -> u64 {
    500
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            max_batch: default_max_batch(),
            linger_ms: default_linger_ms(),
            retry_backoff_ms: default_backoff_ms(),
            lag_refresh_ms: default_lag_refresh_ms(),
            stall_after_secs: default_stall_after_secs(),
        }
    }
}

impl RunnerConfig {
    /// Linger as a duration.
    pub fn linger(&self) -> Duration {
        Duration::from_millis(self.linger_ms)
    }

    /// Lag refresh interval as a duration (at least 100 ms).
    pub fn lag_refresh(&self) -> Duration {
        Duration::from_millis(self.lag_refresh_ms.max(100))
    }

    /// Stall threshold as a duration.
    pub fn stall_after(&self) -> Duration {
        Duration::from_secs(self.stall_after_secs)
    }
}

/// `[topics]`: partitions, retention and creation of the pipeline's topics.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    /// Partitions of every topic except the sharded ones.
    #[serde(default = "default_partitions")]
    pub partitions: NonZeroU32,
    /// Matcher shards = partitions of alerts.indexed and subscriptions. Fixed for the life
    /// of the cluster: changing it re-shards every subscription.
    #[serde(default = "default_partitions")]
    pub shards: NonZeroU32,
    /// Replication factor of created topics.
    #[serde(default = "default_replication")]
    pub replication_factor: NonZeroU32,
    /// Create missing topics at start.
    #[serde(default = "default_true")]
    pub create: bool,
    /// Retention of topics that hold personal data (raw, normalized, unique, dead letters,
    /// review): short by design.
    #[serde(default = "default_sensitive_retention")]
    pub sensitive_retention_ms: u64,
    /// Retention of alerts, audit, indexed alerts and notifications.
    #[serde(default = "default_retention")]
    pub retention_ms: u64,
}

fn default_partitions() -> NonZeroU32 {
    NonZeroU32::new(6).unwrap_or(NonZeroU32::MIN)
}

const fn default_replication() -> NonZeroU32 {
    NonZeroU32::MIN
}

const fn default_true() -> bool {
    true
}

const fn default_sensitive_retention() -> u64 {
    24 * 3600 * 1000
}

const fn default_retention() -> u64 {
    7 * 24 * 3600 * 1000
}

impl Default for TopicsConfig {
    fn default() -> Self {
        Self {
            partitions: default_partitions(),
            shards: default_partitions(),
            replication_factor: default_replication(),
            create: true,
            sensitive_retention_ms: default_sensitive_retention(),
            retention_ms: default_retention(),
        }
    }
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address to serve `/metrics` on; none: no endpoint.
    #[serde(default)]
    pub listen: Option<std::net::SocketAddr>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Root {
        kafka: KafkaConfig,
        #[serde(default)]
        runner: RunnerConfig,
    }

    fn write(text: &str) -> tempfile_path::TempPath {
        tempfile_path::TempPath::with(text)
    }

    /// A tiny temp-file helper so the test needs no extra crate.
    mod tempfile_path {
        pub struct TempPath(pub std::path::PathBuf);
        impl TempPath {
            pub fn with(text: &str) -> Self {
                let n = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                let p = std::env::temp_dir().join(format!("hexcast-config-{}-{n}.toml", std::process::id()));
                std::fs::write(&p, text).expect("write temp config");
                Self(p)
            }
        }
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn unknown_key_is_named_in_the_error() {
        let f = write("[kafka]\nbrokers = \"b:9092\"\nbrokerz = \"x\"\n");
        let err = load::<Root>(Some(&f.0), Vec::new(), &[]).expect_err("unknown key");
        let msg = err.to_string();
        assert!(msg.contains("brokerz"), "{msg}");
    }

    #[test]
    fn invalid_value_names_the_key() {
        let f = write("[kafka]\nbrokers = \"b:9092\"\n[runner]\nmax_batch = 0\n");
        let msg = load::<Root>(Some(&f.0), Vec::new(), &[]).expect_err("zero batch").to_string();
        assert!(msg.contains("runner.max_batch"), "{msg}");
    }

    #[test]
    fn environment_overrides_file_and_flags_override_environment() {
        let f = write("[kafka]\nbrokers = \"file:9092\"\n[runner]\nlinger_ms = 5\n");
        let env = vec![
            ("HEXCAST__KAFKA__BROKERS".to_owned(), "env:9092".to_owned()),
            ("HEXCAST__RUNNER__LINGER_MS".to_owned(), "7".to_owned()),
            ("UNRELATED".to_owned(), "x".to_owned()),
        ];
        let root: Root = load(Some(&f.0), env, &["runner.linger_ms=9".to_owned()]).expect("valid");
        assert_eq!(root.kafka.brokers, "env:9092");
        assert_eq!(root.runner.linger_ms, 9);
    }

    #[test]
    fn missing_required_key_is_named() {
        let msg = load::<Root>(None, Vec::new(), &[]).expect_err("no kafka").to_string();
        assert!(msg.contains("kafka"), "{msg}");
    }
}
