//! `[console]` configuration: where the web console listens, who may sign in as an
//! operator, and how long a session lives. Reviewers sign in with their `review.tokens_file`
//! token; nothing here names a reviewer.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// `[console]` configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Serve the console when the `console` target runs; `false` refuses the target (a
    /// switch that needs no change of the deployment's target list).
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// HTTP listen address.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// TOML file of `operator = "token"` (16+ characters) for the live map; without it
    /// nobody signs in as an operator.
    #[serde(default)]
    pub operator_tokens_file: Option<PathBuf>,
    /// How long a signed-in session lasts.
    #[serde(default = "default_session_ttl")]
    pub session_ttl_secs: u64,
    /// Most sessions (signed in or not) kept at once; the oldest go first.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// How often the pages poll for changes.
    #[serde(default = "default_poll_ms")]
    pub poll_interval_ms: u64,
    /// Mark the session cookie `Secure` (set it when a TLS proxy fronts the console).
    #[serde(default)]
    pub cookie_secure: bool,
    /// GeoJSON file of outline polygons (city neighbourhoods) drawn under every map.
    #[serde(default)]
    pub outline_geojson: Option<PathBuf>,
}

const fn default_enabled() -> bool {
    true
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}
const fn default_session_ttl() -> u64 {
    8 * 3_600
}
const fn default_max_sessions() -> usize {
    10_000
}
const fn default_poll_ms() -> u64 {
    2_000
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            enabled: default_enabled(),
            listen: default_listen(),
            operator_tokens_file: None,
            session_ttl_secs: default_session_ttl(),
            max_sessions: default_max_sessions(),
            poll_interval_ms: default_poll_ms(),
            cookie_secure: false,
            outline_geojson: None,
        }
    }
}

impl ConsoleConfig {
    /// Checks the values, naming the key of the first bad one.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (60..=7 * 24 * 3_600).contains(&self.session_ttl_secs),
            "config key `console.session_ttl_secs`: expected 60..=604800"
        );
        anyhow::ensure!(self.max_sessions >= 1, "config key `console.max_sessions`: expected at least 1");
        anyhow::ensure!(
            (200..=60_000).contains(&self.poll_interval_ms),
            "config key `console.poll_interval_ms`: expected 200..=60000"
        );
        Ok(())
    }
}
