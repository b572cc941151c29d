//! hexcast-review: the editorial hold's queue, a pure stage. Policy writes the alerts of
//! held categories to the compacted `review` topic; the [`queue`] stage keeps them pending
//! and applies each reviewer's verdict or the timeout rule exactly once: the released
//! alert, the audit record and the tombstones are written in one transaction. A verdict is
//! itself a record on `review` (written by the API gateway's Review service), so nothing is
//! decided outside the log. It never alters a held alert: an approved alert is released
//! exactly as policy redacted it.

pub mod queue;

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

pub use queue::{Pending, PendingMap, ReviewInput, ReviewQueue};

/// `[review]` configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewConfig {
    /// gRPC listen address of the Review service.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// TOML file of `reviewer = "token"` (16+ characters); required for target review.
    #[serde(default)]
    pub tokens_file: Option<PathBuf>,
    /// How often the timeout rule is applied.
    #[serde(default = "default_tick_ms")]
    pub tick_interval_ms: u64,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 50052))
}

const fn default_tick_ms() -> u64 {
    5_000
}

impl Default for ReviewConfig {
    fn default() -> Self {
        Self { listen: default_listen(), tokens_file: None, tick_interval_ms: default_tick_ms() }
    }
}

impl ReviewConfig {
    /// Checks the values, naming the key of the first bad one.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.tick_interval_ms > 0, "config key `review.tick_interval_ms`: expected at least 1");
        Ok(())
    }
}
