//! `[dedup]` configuration, validated before the stage starts.

use serde::Deserialize;

/// `[dedup]` configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupConfig {
    /// How long an incident is remembered after its last report.
    #[serde(default = "default_ttl_secs")]
    pub ttl_secs: u64,
    /// Most reports remembered; the incidents least recently seen are forgotten first.
    #[serde(default = "default_max_entries")]
    pub max_entries: usize,
    /// Whether reports of different sources are merged into one incident.
    #[serde(default = "default_merge")]
    pub merge: bool,
    /// Largest distance between two reports of one incident.
    #[serde(default = "default_merge_distance_m")]
    pub merge_distance_m: f64,
    /// Largest difference of occurrence times between two reports of one incident.
    #[serde(default = "default_merge_window_secs")]
    pub merge_window_secs: u64,
    /// Whether two reports of the same source may merge too (off: a source's own ids are
    /// trusted to name different incidents).
    #[serde(default)]
    pub merge_same_source: bool,
}

const fn default_ttl_secs() -> u64 {
    24 * 3600
}

const fn default_max_entries() -> usize {
    1_000_000
}

const fn default_merge() -> bool {
    true
}

const fn default_merge_distance_m() -> f64 {
    300.0
}

const fn default_merge_window_secs() -> u64 {
    600
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self {
            ttl_secs: default_ttl_secs(),
            max_entries: default_max_entries(),
            merge: default_merge(),
            merge_distance_m: default_merge_distance_m(),
            merge_window_secs: default_merge_window_secs(),
            merge_same_source: false,
        }
    }
}

/// An invalid `[dedup]` value, naming its key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DedupConfigError {
    /// A value out of range.
    #[error("config key `dedup.{key}`: {expected}")]
    OutOfRange {
        /// The key.
        key: &'static str,
        /// What was expected.
        expected: &'static str,
    },
}

impl DedupConfig {
    /// Checks every value.
    pub fn validate(&self) -> Result<(), DedupConfigError> {
        let bad = |key, expected| Err(DedupConfigError::OutOfRange { key, expected });
        if self.ttl_secs == 0 {
            return bad("ttl_secs", "expected at least 1");
        }
        if self.max_entries == 0 {
            return bad("max_entries", "expected at least 1");
        }
        if !(self.merge_distance_m.is_finite() && self.merge_distance_m > 0.0 && self.merge_distance_m <= 50_000.0) {
            return bad("merge_distance_m", "expected a distance in meters in (0, 50000]");
        }
        if self.merge_window_secs == 0 || self.merge_window_secs > self.ttl_secs {
            return bad("merge_window_secs", "expected at least 1 and at most dedup.ttl_secs");
        }
        Ok(())
    }
}
