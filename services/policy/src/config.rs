//! The policy file: which categories may alert, how old an incident may be, and how large
//! an area each category notifies. Validated completely at start-up: a category prefix
//! that is not in the taxonomy or a radius that is not positive fails with its key.

use std::collections::BTreeMap;
use std::path::Path;

use h3o::Resolution;
use hexcast_core::taxonomy::validate_prefix;
use hexcast_core::{Category, Severity};
use serde::Deserialize;

/// Why a policy file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyConfigError {
    /// Unreadable file.
    #[error("reading policy file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    /// Not valid TOML or wrong shape.
    #[error("policy file {path}: {message}")]
    Parse { path: String, message: String },
    /// A value is invalid.
    #[error("policy key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
    #[serde(default = "default_max_age_secs")]
    max_age_secs: u64,
    #[serde(default)]
    min_severity: Option<String>,
    #[serde(default = "default_coarse_resolution")]
    coarse_resolution: u8,
    #[serde(default = "default_target_resolution")]
    target_resolution: u8,
    #[serde(default = "default_radius_m")]
    default_radius_m: f64,
    #[serde(default)]
    radius_m: BTreeMap<String, f64>,
}

const fn default_max_age_secs() -> u64 {
    3600
}
const fn default_coarse_resolution() -> u8 {
    9
}
const fn default_target_resolution() -> u8 {
    10
}
const fn default_radius_m() -> f64 {
    800.0
}

/// A validated policy.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyConfig {
    /// Category prefixes that may alert.
    pub allow: Vec<String>,
    /// Category prefixes that never alert (wins over `allow`).
    pub deny: Vec<String>,
    /// Oldest incident (occurrence to now) that may alert.
    pub max_age_secs: u64,
    /// Least severity that may alert; `Unspecified` accepts all.
    pub min_severity: Severity,
    /// Resolution of the coarse location shown to users.
    pub coarse_resolution: Resolution,
    /// Resolution the target circle's center is snapped to.
    pub target_resolution: Resolution,
    /// Radius for categories without their own.
    pub default_radius_m: f64,
    /// Radius by category prefix; the longest matching prefix wins.
    pub radius_m: BTreeMap<String, f64>,
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> PolicyConfigError {
    PolicyConfigError::Invalid { key: key.into(), message: message.into() }
}

impl PolicyConfig {
    /// The seed policy: alert on burglary, vehicle break-in and theft, robbery, shots
    /// fired, shootings, stabbings, hostage situations, arson, fires and explosions; never
    /// on assault, domestic disputes, death investigations and the like.
    pub fn seed() -> Self {
        Self::parse(include_str!("../seed-policy.toml"), "seed-policy.toml").unwrap_or_else(|e| unreachable!("{e}"))
    }

    /// Reads and validates a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| PolicyConfigError::Read { path: path.display().to_string(), source })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Validates a policy document.
    pub fn parse(text: &str, path: &str) -> Result<Self, PolicyConfigError> {
        let raw: RawPolicy = toml::from_str(text)
            .map_err(|e| PolicyConfigError::Parse { path: path.to_owned(), message: e.message().to_owned() })?;
        for (key, list) in [("allow", &raw.allow), ("deny", &raw.deny)] {
            for p in list {
                validate_prefix(p).map_err(|e| invalid(key, e.to_string()))?;
            }
        }
        for (p, r) in &raw.radius_m {
            validate_prefix(p).map_err(|e| invalid(format!("radius_m.{p}"), e.to_string()))?;
            if !(r.is_finite() && *r > 0.0 && *r <= 50_000.0) {
                return Err(invalid(format!("radius_m.{p}"), format!("{r} is not in 0 < r <= 50000")));
            }
        }
        if !(raw.default_radius_m.is_finite() && raw.default_radius_m > 0.0 && raw.default_radius_m <= 50_000.0) {
            return Err(invalid("default_radius_m", "must be in 0 < r <= 50000"));
        }
        let min_severity = match raw.min_severity.as_deref() {
            None | Some("unspecified") => Severity::Unspecified,
            Some(s) => Severity::from_str_name(&format!("SEVERITY_{}", s.to_ascii_uppercase()))
                .ok_or_else(|| invalid("min_severity", format!("`{s}` is not minor|moderate|severe|extreme")))?,
        };
        let res = |key: &str, v: u8| {
            Resolution::try_from(v).map_err(|_| invalid(key, format!("{v} is not an H3 resolution 0..=15")))
        };
        Ok(Self {
            allow: raw.allow,
            deny: raw.deny,
            max_age_secs: raw.max_age_secs,
            min_severity,
            coarse_resolution: res("coarse_resolution", raw.coarse_resolution)?,
            target_resolution: res("target_resolution", raw.target_resolution)?,
            default_radius_m: raw.default_radius_m,
            radius_m: raw.radius_m,
        })
    }

    /// The notification radius for a category.
    pub fn radius_for(&self, category: Category) -> f64 {
        self.radius_m
            .iter()
            .filter(|(p, _)| category.matches_prefix(p))
            .max_by_key(|(p, _)| p.len())
            .map_or(self.default_radius_m, |(_, r)| *r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_policy_is_valid_and_picks_the_longest_prefix_radius() {
        let p = PolicyConfig::seed();
        assert_eq!(p.radius_for(Category::parse("medical.cardiac_arrest").expect("known")), 400.0);
        assert_eq!(p.radius_for(Category::parse("crime.shots_fired").expect("known")), 1600.0);
    }

    #[test]
    fn bad_policies_name_the_key() {
        let e = PolicyConfig::parse("allow = [\"crime.robery\"]", "p").expect_err("typo").to_string();
        assert!(e.contains("allow") && e.contains("crime.robery"), "{e}");
        let e =
            PolicyConfig::parse("allow = [\"crime\"]\n[radius_m]\ncrime = -1.0", "p").expect_err("radius").to_string();
        assert!(e.contains("radius_m.crime"), "{e}");
        let e = PolicyConfig::parse("allow = [\"crime\"]\nmax_agesecs = 3", "p").expect_err("unknown").to_string();
        assert!(e.contains("max_agesecs"), "{e}");
    }
}
