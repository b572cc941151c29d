//! The canonical incident taxonomy. Every feed's own call-type codes are mapped onto these
//! dotted paths by ingest; policy rules and subscriber filters match on path prefixes
//! (`crime` matches `crime.robbery`). The set is closed so that a typo in a mapping or
//! policy file fails at start-up instead of silently never matching.

use std::fmt;

/// Every category, with a one-line description.
pub const CATEGORIES: &[(&str, &str)] = &[
    ("crime.burglary", "burglary of a home or business"),
    ("crime.robbery", "robbery, armed or not"),
    ("crime.shooting", "shooting with a victim"),
    ("crime.shots_fired", "shots fired, no known victim"),
    ("crime.stabbing", "stabbing or cutting"),
    ("crime.hostage", "hostage or barricaded subject"),
    ("crime.vehicle_break_in", "vehicle break-in or theft from a vehicle"),
    ("crime.vehicle_theft", "stolen vehicle"),
    ("crime.assault", "assault or fight"),
    ("crime.sexual_assault", "sexual assault"),
    ("crime.domestic", "domestic dispute or violence"),
    ("crime.theft", "theft, larceny, shoplifting"),
    ("crime.vandalism", "vandalism or criminal mischief"),
    ("crime.trespass", "trespass or prowler"),
    ("crime.disturbance", "disturbance, noise, suspicious person"),
    ("crime.other", "other police matter"),
    ("fire.structure", "building fire"),
    ("fire.residential", "residential fire"),
    ("fire.commercial", "commercial building fire"),
    ("fire.arson", "arson"),
    ("fire.vehicle", "vehicle fire"),
    ("fire.wildland", "brush, grass or wildland fire"),
    ("fire.alarm", "fire alarm, no confirmed fire"),
    ("fire.rescue", "technical, water, elevator or confined-space rescue"),
    ("fire.other", "other fire department call"),
    ("hazard.explosion", "explosion"),
    ("hazard.gas_leak", "gas leak or odor"),
    ("hazard.hazmat", "hazardous material release"),
    ("hazard.bomb_threat", "bomb threat or suspicious package"),
    ("hazard.utility", "utility or infrastructure emergency"),
    ("medical.cardiac_arrest", "cardiac or respiratory arrest"),
    ("medical.other", "other medical emergency"),
    ("traffic.collision", "vehicle collision"),
    ("traffic.hazard", "road hazard or closure"),
    ("public.missing_person", "missing or endangered person"),
    ("public.school_lockdown", "school lockdown"),
    ("public.death_investigation", "dead person, death investigation"),
    ("public.evacuation", "evacuation order"),
    ("public.shelter", "shelter in place"),
    ("public.test", "test message"),
    ("public.request", "geofenced request from an agency (Requests service), never from a feed"),
    ("weather.tornado", "tornado"),
    ("weather.flood", "flood or flash flood"),
    ("weather.storm", "severe thunderstorm or winter storm"),
    ("weather.heat", "extreme heat"),
    ("weather.fire", "fire weather, red flag"),
    ("weather.other", "other weather event"),
    ("geo.earthquake", "earthquake"),
    ("geo.tsunami", "tsunami"),
    ("other", "could not be classified"),
];

/// A category of the canonical taxonomy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Category(&'static str);

/// Not a category of the taxonomy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown category `{0}`")]
pub struct UnknownCategory(pub String);

impl Category {
    /// The fallback for unmapped call types.
    pub const UNKNOWN: Category = Category("other");

    /// Looks a path up in the taxonomy.
    pub fn parse(path: &str) -> Result<Self, UnknownCategory> {
        CATEGORIES
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(p, _)| Category(p))
            .ok_or_else(|| UnknownCategory(path.to_owned()))
    }

    /// The dotted path, for example `crime.robbery`.
    pub const fn as_str(self) -> &'static str {
        self.0
    }

    /// The first segment, for example `crime`.
    pub fn family(self) -> &'static str {
        self.0.split('.').next().unwrap_or(self.0)
    }

    /// Whether `prefix` is this category or one of its ancestors (`crime` or `crime.robbery`
    /// for `crime.robbery`; never `crime.rob`).
    pub fn matches_prefix(self, prefix: &str) -> bool {
        self.0 == prefix
            || (self.0.len() > prefix.len() && self.0.starts_with(prefix) && self.0.as_bytes()[prefix.len()] == b'.')
    }
}

/// Validates a category prefix (a family such as `crime`, or a full category), as used in
/// policy rules and subscriber filters.
pub fn validate_prefix(prefix: &str) -> Result<(), UnknownCategory> {
    if CATEGORIES.iter().any(|(p, _)| Category(p).matches_prefix(prefix)) {
        Ok(())
    } else {
        Err(UnknownCategory(prefix.to_owned()))
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_matches_whole_segments_only() {
        let c = Category::parse("crime.robbery").expect("known");
        assert!(c.matches_prefix("crime"));
        assert!(c.matches_prefix("crime.robbery"));
        assert!(!c.matches_prefix("crime.rob"));
        assert!(!c.matches_prefix("fire"));
        assert_eq!(c.family(), "crime");
    }

    #[test]
    fn unknown_paths_and_prefixes_are_refused() {
        assert!(Category::parse("crime.robery").is_err());
        assert!(validate_prefix("crime").is_ok());
        assert!(validate_prefix("crim").is_err());
    }

    #[test]
    fn taxonomy_paths_are_unique_and_well_formed() {
        let mut seen = std::collections::HashSet::new();
        for (p, _) in CATEGORIES {
            assert!(seen.insert(p), "duplicate {p}");
            assert!(p.split('.').count() <= 2, "{p} is deeper than family.name");
            assert!(p.bytes().all(|b| b.is_ascii_lowercase() || b == b'.' || b == b'_'));
        }
    }
}
