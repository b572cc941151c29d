//! Layered, typed configuration: a TOML file, then `HEXCAST__SECTION__KEY` environment
//! variables, then `--set section.key=value` flags, merged into one TOML tree and only then
//! deserialized into typed structs with `deny_unknown_fields`. Every error names the key
//! (`kafka.brokerz: unknown field ...`) so a bad config fails at start, never later.

use std::collections::BTreeMap;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
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
    /// TLS and SASL towards the cluster; none: plaintext.
    #[serde(default)]
    pub security: Option<KafkaSecurity>,
    /// Extra librdkafka properties for every client (tuning, OAUTHBEARER token settings).
    /// The properties `[kafka.security]` sets are refused here: one place for each.
    #[serde(default, deserialize_with = "client_properties")]
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
            security: None,
            max_message_bytes: default_max_message_bytes(),
            client: BTreeMap::new(),
            consumer: BTreeMap::new(),
        }
    }

    /// The instance id, falling back to the host name, then to a fixed name.
    pub fn instance(&self) -> String {
        self.instance_id.clone().or_else(|| std::env::var("HOSTNAME").ok()).unwrap_or_else(|| "hexcast-0".to_owned())
    }

    /// The librdkafka properties every client of this config gets: the brokers, the
    /// security settings and `[kafka.client]`. The one place a client's connection
    /// settings are made; every client config starts from it.
    pub fn client_properties(&self) -> Vec<(String, String)> {
        let mut props = vec![("bootstrap.servers".to_owned(), self.brokers.clone())];
        if let Some(security) = &self.security {
            props.extend(security.properties().into_iter().map(|(k, v)| (k.to_owned(), v)));
        }
        props.extend(self.client.iter().map(|(k, v)| (k.clone(), v.clone())));
        props
    }
}

/// librdkafka properties that only `[kafka.security]` sets.
const SECURITY_OWNED: [&str; 9] = [
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.key.password",
];

fn client_properties<'de, D: serde::Deserializer<'de>>(de: D) -> Result<BTreeMap<String, String>, D::Error> {
    let map = BTreeMap::<String, String>::deserialize(de)?;
    if let Some(key) = map.keys().find(|k| SECURITY_OWNED.contains(&k.as_str())) {
        return Err(serde::de::Error::custom(format!(
            "`{key}` is set in [kafka.security] (protocol, sasl_mechanism, sasl_username, \
             sasl_password_file, ca_file, cert_file, key_file), not here"
        )));
    }
    Ok(map)
}

/// `security.protocol`: how clients reach the brokers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    /// No TLS, no SASL.
    #[serde(alias = "PLAINTEXT")]
    Plaintext,
    /// TLS (with a client certificate: mutual TLS).
    #[serde(alias = "SSL")]
    Ssl,
    /// SASL without TLS: credentials cross the network readable (SCRAM's do not, PLAIN's do).
    #[serde(alias = "SASL_PLAINTEXT")]
    SaslPlaintext,
    /// SASL over TLS: what managed Kafka services require.
    #[serde(alias = "SASL_SSL")]
    SaslSsl,
}

impl SecurityProtocol {
    /// The librdkafka name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    const fn tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    const fn sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

impl std::fmt::Display for SecurityProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `sasl.mechanism`: the SASL mechanisms this build supports (GSSAPI/Kerberos is not
/// built in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SaslMechanism {
    /// User name and password in the clear: only over TLS.
    #[serde(rename = "PLAIN")]
    Plain,
    /// Salted challenge-response, SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// Salted challenge-response, SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    /// OAuth 2 bearer tokens; the token settings (`sasl.oauthbearer.method = "oidc"`,
    /// client id, token endpoint) go in `[kafka.client]`.
    #[serde(rename = "OAUTHBEARER")]
    OauthBearer,
}

impl SaslMechanism {
    /// The librdkafka and Kafka name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
            Self::OauthBearer => "OAUTHBEARER",
        }
    }

    /// Whether the mechanism logs in with a user name and a password.
    const fn password(self) -> bool {
        !matches!(self, Self::OauthBearer)
    }
}

impl std::fmt::Display for SaslMechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[kafka.security]` as written: TLS and SASL settings. Secrets are never written
/// inline, only as the path of a file (a mounted Kubernetes secret). Validated into
/// [`KafkaSecurity`] when the config is loaded.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySection {
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub protocol: SecurityProtocol,
    /// `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512` or `OAUTHBEARER`; sasl protocols only.
    #[serde(default)]
    pub sasl_mechanism: Option<SaslMechanism>,
    /// SASL user (PLAIN and SCRAM).
    #[serde(default)]
    pub sasl_username: Option<String>,
    /// File holding the SASL password (PLAIN and SCRAM); one trailing newline is ignored.
    #[serde(default)]
    pub sasl_password_file: Option<PathBuf>,
    /// PEM file of the CA(s) that signed the brokers' certificates; none: the system's
    /// CA store. TLS protocols only.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain), for mutual TLS; with `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`, unencrypted (protect the file instead).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

impl SecuritySection {
    /// A section for `protocol` with nothing else set.
    pub fn new(protocol: SecurityProtocol) -> Self {
        Self {
            protocol,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password_file: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }
}

/// Why `[kafka.security]` is invalid. Each message names the key.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// A key the protocol or mechanism needs is absent.
    #[error("`{key}` is required with {with}")]
    Missing { key: &'static str, with: String },
    /// A key that means nothing with this protocol or mechanism is set.
    #[error("`{key}` does not apply to {with}")]
    NotApplicable { key: &'static str, with: String },
    /// A file cannot be read.
    #[error("`{key}`: reading {path}: {source}")]
    File { key: &'static str, path: PathBuf, source: std::io::Error },
    /// A value is empty.
    #[error("`{key}` is empty")]
    Empty { key: &'static str },
}

/// A secret read from a file: never printed, not even by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that hands it to a client.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// `[kafka.security]`, validated: the protocol and mechanism agree, every file named
/// exists and is readable, and the password has been read from its file. Built only by
/// `TryFrom<SecuritySection>` (which loading the config calls).
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "SecuritySection")]
pub struct KafkaSecurity {
    section: SecuritySection,
    password: Option<Secret>,
}

impl KafkaSecurity {
    /// The protocol.
    pub fn protocol(&self) -> SecurityProtocol {
        self.section.protocol
    }

    /// The SASL mechanism, for sasl protocols.
    pub fn sasl_mechanism(&self) -> Option<SaslMechanism> {
        self.section.sasl_mechanism
    }

    /// The SASL user, for PLAIN and SCRAM.
    pub fn sasl_username(&self) -> Option<&str> {
        self.section.sasl_username.as_deref()
    }

    /// The librdkafka properties of these settings.
    pub fn properties(&self) -> Vec<(&'static str, String)> {
        let s = &self.section;
        let mut props = vec![("security.protocol", s.protocol.as_str().to_owned())];
        if let Some(m) = s.sasl_mechanism {
            props.push(("sasl.mechanism", m.as_str().to_owned()));
        }
        if let Some(user) = &s.sasl_username {
            props.push(("sasl.username", user.clone()));
        }
        if let Some(password) = &self.password {
            props.push(("sasl.password", password.expose().to_owned()));
        }
        if s.protocol.tls() {
            // Without a CA file, look for the system's store: the OpenSSL built into
            // librdkafka does not know where this machine keeps it.
            let ca = s.ca_file.as_ref().map_or_else(|| "probe".to_owned(), |p| p.display().to_string());
            props.push(("ssl.ca.location", ca));
        }
        if let (Some(cert), Some(key)) = (&s.cert_file, &s.key_file) {
            props.push(("ssl.certificate.location", cert.display().to_string()));
            props.push(("ssl.key.location", key.display().to_string()));
        }
        props
    }
}

impl TryFrom<SecuritySection> for KafkaSecurity {
    type Error = SecurityError;

    fn try_from(s: SecuritySection) -> Result<Self, SecurityError> {
        let protocol = format!("protocol {}", s.protocol);
        let not_applicable = |key: &'static str, set: bool, with: &str| {
            if set { Err(SecurityError::NotApplicable { key, with: with.to_owned() }) } else { Ok(()) }
        };
        let mut password = None;
        if s.protocol.sasl() {
            let mechanism =
                s.sasl_mechanism.ok_or(SecurityError::Missing { key: "sasl_mechanism", with: protocol.clone() })?;
            let with = format!("sasl_mechanism {mechanism}");
            if mechanism.password() {
                let user = s
                    .sasl_username
                    .as_deref()
                    .ok_or(SecurityError::Missing { key: "sasl_username", with: with.clone() })?;
                if user.is_empty() {
                    return Err(SecurityError::Empty { key: "sasl_username" });
                }
                let path =
                    s.sasl_password_file.as_ref().ok_or(SecurityError::Missing { key: "sasl_password_file", with })?;
                let text = std::fs::read_to_string(path).map_err(|source| SecurityError::File {
                    key: "sasl_password_file",
                    path: path.clone(),
                    source,
                })?;
                let text = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
                if text.is_empty() {
                    return Err(SecurityError::Empty { key: "sasl_password_file" });
                }
                password = Some(Secret(text.to_owned()));
            } else {
                not_applicable("sasl_username", s.sasl_username.is_some(), &with)?;
                not_applicable("sasl_password_file", s.sasl_password_file.is_some(), &with)?;
            }
        } else {
            not_applicable("sasl_mechanism", s.sasl_mechanism.is_some(), &protocol)?;
            not_applicable("sasl_username", s.sasl_username.is_some(), &protocol)?;
            not_applicable("sasl_password_file", s.sasl_password_file.is_some(), &protocol)?;
        }
        if !s.protocol.tls() {
            not_applicable("ca_file", s.ca_file.is_some(), &protocol)?;
            not_applicable("cert_file", s.cert_file.is_some(), &protocol)?;
            not_applicable("key_file", s.key_file.is_some(), &protocol)?;
        }
        match (&s.cert_file, &s.key_file) {
            (Some(_), None) => return Err(SecurityError::Missing { key: "key_file", with: "cert_file".into() }),
            (None, Some(_)) => return Err(SecurityError::Missing { key: "cert_file", with: "key_file".into() }),
            _ => {}
        }
        for (key, path) in [("ca_file", &s.ca_file), ("cert_file", &s.cert_file), ("key_file", &s.key_file)] {
            if let Some(path) = path {
                std::fs::File::open(path).map_err(|source| SecurityError::File { key, path: path.clone(), source })?;
            }
        }
        Ok(Self { section: s, password })
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
    /// Retention of topics that hold personal data or a precise incident location (raw,
    /// normalized, unique, dead letters, alerts, review, alerts.indexed, dedup state,
    /// request responses; see `docs/topics.md`): short by design.
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

    /// `[kafka]` with a `[kafka.security]` section made of `lines`.
    fn with_security(lines: &str) -> Result<Root, ConfigError> {
        let f = write(&format!("[kafka]\nbrokers = \"b:9093\"\n[kafka.security]\n{lines}\n"));
        load::<Root>(Some(&f.0), Vec::new(), &[])
    }

    fn prop<'a>(props: &'a [(String, String)], key: &str) -> Option<&'a str> {
        props.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    #[test]
    fn sasl_ssl_scram_maps_onto_librdkafka_properties_and_never_prints_the_password() {
        let password = write("Pa55-word-from-a-file\n");
        let ca = write("-----BEGIN CERTIFICATE-----\n");
        let root = with_security(&format!(
            "protocol = \"sasl_ssl\"\nsasl_mechanism = \"SCRAM-SHA-512\"\nsasl_username = \"hexcast\"\n\
             sasl_password_file = {:?}\nca_file = {:?}",
            password.0, ca.0
        ))
        .expect("valid security section");
        let props = root.kafka.client_properties();
        assert_eq!(prop(&props, "bootstrap.servers"), Some("b:9093"));
        assert_eq!(prop(&props, "security.protocol"), Some("sasl_ssl"));
        assert_eq!(prop(&props, "sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(prop(&props, "sasl.username"), Some("hexcast"));
        assert_eq!(prop(&props, "sasl.password"), Some("Pa55-word-from-a-file"), "trailing newline dropped");
        assert_eq!(prop(&props, "ssl.ca.location"), Some(ca.0.to_str().expect("utf8 path")));
        assert_eq!(prop(&props, "ssl.certificate.location"), None);
        let shown = format!("{:?}", root.kafka);
        assert!(!shown.contains("Pa55-word"), "{shown}");
    }

    #[test]
    fn tls_without_a_ca_file_probes_the_system_store_and_maps_the_client_certificate() {
        let (cert, key) = (write("cert"), write("key"));
        let root = with_security(&format!("protocol = \"ssl\"\ncert_file = {:?}\nkey_file = {:?}", cert.0, key.0))
            .expect("mtls");
        let props = root.kafka.client_properties();
        assert_eq!(prop(&props, "security.protocol"), Some("ssl"));
        assert_eq!(prop(&props, "ssl.ca.location"), Some("probe"));
        assert_eq!(prop(&props, "ssl.certificate.location"), Some(cert.0.to_str().expect("utf8")));
        assert_eq!(prop(&props, "ssl.key.location"), Some(key.0.to_str().expect("utf8")));
        assert_eq!(prop(&props, "sasl.mechanism"), None);
    }

    #[test]
    fn uppercase_protocol_names_are_accepted() {
        let root = with_security("protocol = \"SASL_SSL\"\nsasl_mechanism = \"OAUTHBEARER\"").expect("valid");
        let props = root.kafka.client_properties();
        assert_eq!(prop(&props, "security.protocol"), Some("sasl_ssl"));
        assert_eq!(prop(&props, "sasl.mechanism"), Some("OAUTHBEARER"));
    }

    #[test]
    fn invalid_security_sections_fail_naming_the_key() {
        let password = write("pw");
        let pw = format!("sasl_password_file = {:?}", password.0);
        let cases = [
            // (section, words the message must contain)
            ("protocol = \"tls\"".to_owned(), vec!["kafka.security.protocol", "tls"]),
            (
                format!("protocol = \"sasl_ssl\"\nsasl_mechanism = \"SCRAM-SHA-1\"\nsasl_username = \"u\"\n{pw}"),
                vec!["kafka.security.sasl_mechanism", "SCRAM-SHA-1"],
            ),
            (format!("protocol = \"sasl_ssl\"\nsasl_username = \"u\"\n{pw}"), vec!["sasl_mechanism", "required"]),
            (
                "protocol = \"sasl_ssl\"\nsasl_mechanism = \"SCRAM-SHA-512\"\nsasl_username = \"u\"".to_owned(),
                vec!["sasl_password_file", "required"],
            ),
            (
                "protocol = \"sasl_ssl\"\nsasl_mechanism = \"PLAIN\"\nsasl_username = \"u\"\n\
                 sasl_password_file = \"/nonexistent/hexcast/password\""
                    .to_owned(),
                vec!["kafka.security", "sasl_password_file", "/nonexistent/hexcast/password"],
            ),
            (
                "protocol = \"sasl_ssl\"\nsasl_mechanism = \"PLAIN\"\nsasl_username = \"u\"\nsasl_password = \"inline\""
                    .to_owned(),
                vec!["sasl_password", "unknown field"],
            ),
            (format!("protocol = \"ssl\"\n{pw}"), vec!["sasl_password_file", "does not apply", "ssl"]),
            (format!("protocol = \"sasl_plaintext\"\nsasl_mechanism = \"SCRAM-SHA-256\"\nsasl_username = \"u\"\n{pw}\nca_file = {:?}", password.0), vec!["ca_file", "does not apply"]),
            (
                "protocol = \"sasl_ssl\"\nsasl_mechanism = \"OAUTHBEARER\"\nsasl_username = \"u\"".to_owned(),
                vec!["sasl_username", "does not apply", "OAUTHBEARER"],
            ),
            (format!("protocol = \"ssl\"\ncert_file = {:?}", password.0), vec!["key_file", "required"]),
            ("protocol = \"ssl\"\nca_file = \"/nonexistent/hexcast/ca.pem\"".to_owned(), vec!["ca_file", "/nonexistent"]),
        ];
        for (section, words) in cases {
            let msg = with_security(&section).expect_err(&section).to_string();
            for w in words {
                assert!(msg.contains(w), "`{w}` missing from: {msg}\n(section: {section})");
            }
        }
        let empty = write("\n");
        let msg = with_security(&format!(
            "protocol = \"sasl_ssl\"\nsasl_mechanism = \"PLAIN\"\nsasl_username = \"u\"\nsasl_password_file = {:?}",
            empty.0
        ))
        .expect_err("empty password")
        .to_string();
        assert!(msg.contains("sasl_password_file") && msg.contains("empty"), "{msg}");
    }

    #[test]
    fn security_properties_in_kafka_client_are_refused() {
        for key in ["security.protocol", "sasl.password", "ssl.ca.location"] {
            let f = write(&format!("[kafka]\nbrokers = \"b:9092\"\n[kafka.client]\n\"{key}\" = \"x\"\n"));
            let msg = load::<Root>(Some(&f.0), Vec::new(), &[]).expect_err(key).to_string();
            assert!(msg.contains("kafka.client") && msg.contains(key) && msg.contains("[kafka.security]"), "{msg}");
        }
        let f = write("[kafka]\nbrokers = \"b:9092\"\n[kafka.client]\n\"socket.keepalive.enable\" = \"true\"\n");
        let root: Root = load(Some(&f.0), Vec::new(), &[]).expect("tuning stays allowed");
        assert_eq!(prop(&root.kafka.client_properties(), "socket.keepalive.enable"), Some("true"));
        assert_eq!(prop(&root.kafka.client_properties(), "security.protocol"), None);
    }

    #[test]
    fn security_keys_can_come_from_the_environment() {
        let password = write("from-env");
        let f = write("[kafka]\nbrokers = \"b:9092\"\n");
        let env = vec![
            ("HEXCAST__KAFKA__SECURITY__PROTOCOL".to_owned(), "sasl_plaintext".to_owned()),
            ("HEXCAST__KAFKA__SECURITY__SASL_MECHANISM".to_owned(), "SCRAM-SHA-256".to_owned()),
            ("HEXCAST__KAFKA__SECURITY__SASL_USERNAME".to_owned(), "svc".to_owned()),
            ("HEXCAST__KAFKA__SECURITY__SASL_PASSWORD_FILE".to_owned(), password.0.display().to_string()),
        ];
        let root: Root = load(Some(&f.0), env, &[]).expect("valid");
        let props = root.kafka.client_properties();
        assert_eq!(prop(&props, "sasl.mechanism"), Some("SCRAM-SHA-256"));
        assert_eq!(prop(&props, "sasl.password"), Some("from-env"));
        assert_eq!(prop(&props, "ssl.ca.location"), None, "no TLS, no CA");
    }

    #[test]
    fn missing_required_key_is_named() {
        let msg = load::<Root>(None, Vec::new(), &[]).expect_err("no kafka").to_string();
        assert!(msg.contains("kafka"), "{msg}");
    }
}
