//! The policy file: which categories may alert, how old an incident may be, how large an
//! area each category notifies, who may see private incidents, what waits for a human, the
//! text templates, and overrides of all of that per region and per tenant. Validated
//! completely at start-up: a category prefix that is not in the taxonomy, a radius that is
//! not positive, a template with an unknown placeholder or an unreadable region fails with
//! its key.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use geo::Contains as _;
use h3o::{CellIndex, Resolution};
use hexcast_core::taxonomy::validate_prefix;
use hexcast_core::{Category, LatLng, Severity};
use serde::Deserialize;

use crate::redact::{
    BUILTIN_LANGUAGES, MAX_BODY_CHARS, MAX_HEADLINE_CHARS, PLACEHOLDERS, Template, builtin_template,
    builtin_template_in,
};

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

/// Reads the polygons of a GeoJSON file (the binary supplies its GeoJSON reader, so this
/// crate needs no JSON parser).
pub type PolygonLoader<'a> = &'a dyn Fn(&Path) -> Result<Vec<geo::Polygon<f64>>, String>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRules {
    allow: Option<Vec<String>>,
    deny: Option<Vec<String>>,
    max_age_secs: Option<u64>,
    min_severity: Option<String>,
    #[serde(default)]
    radius_m: BTreeMap<String, f64>,
    hold: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplate {
    headline: String,
    body: String,
}

/// One entry of `[templates."<prefix>"]`: the default language's `headline` or `body`, or
/// a table of another language (`[templates."crime.robbery".es]`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawTemplateEntry {
    Text(String),
    Language(RawTemplate),
}

fn default_languages() -> Vec<String> {
    BUILTIN_LANGUAGES.iter().map(|l| (*l).to_owned()).collect()
}

/// Whether `tag` looks like a BCP 47 language tag: letters, digits and hyphens, starting
/// with a 2-3 letter language.
pub fn valid_language_tag(tag: &str) -> bool {
    let mut parts = tag.split('-');
    let lang = parts.next().unwrap_or("");
    (2..=3).contains(&lang.len())
        && lang.chars().all(|c| c.is_ascii_lowercase())
        && parts.all(|p| (1..=8).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphanumeric()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegion {
    name: String,
    #[serde(default)]
    cells: Vec<String>,
    geojson: Option<String>,
    #[serde(flatten)]
    rules: RawRules,
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
    #[serde(default)]
    attributes: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    community_threat: BTreeMap<String, bool>,
    #[serde(default)]
    hold: Vec<String>,
    #[serde(default = "default_hold_timeout_secs")]
    hold_timeout_secs: u64,
    #[serde(default)]
    hold_timeout_action: Option<String>,
    #[serde(default)]
    templates: BTreeMap<String, BTreeMap<String, RawTemplateEntry>>,
    #[serde(default = "default_languages")]
    languages: Vec<String>,
    #[serde(default)]
    region: Vec<RawRegion>,
    #[serde(default)]
    tenant: BTreeMap<String, RawRules>,
    #[serde(default = "default_expires_after_secs")]
    default_expires_after_secs: u64,
    #[serde(default)]
    expires_after_secs: BTreeMap<String, u64>,
}

const fn default_max_age_secs() -> u64 {
    3600
}
const fn default_coarse_resolution() -> u8 {
    8
}
const fn default_target_resolution() -> u8 {
    10
}
const fn default_radius_m() -> f64 {
    800.0
}
const fn default_hold_timeout_secs() -> u64 {
    900
}
const fn default_expires_after_secs() -> u64 {
    3600
}

/// What happens to a held alert nobody decided on in time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TimeoutAction {
    /// It is never sent.
    #[default]
    Drop,
    /// It is sent as if approved.
    Release,
}

/// The rules that decide one incident: the file's top level, or a region's or tenant's
/// version of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// Category prefixes that may alert.
    pub allow: Vec<String>,
    /// Category prefixes that never alert (wins over `allow`).
    pub deny: Vec<String>,
    /// Oldest incident (occurrence to now) that may alert.
    pub max_age_secs: u64,
    /// Least severity that may alert; `Unspecified` accepts all.
    pub min_severity: Severity,
    /// Radius for categories without their own.
    pub default_radius_m: f64,
    /// Radius by category prefix; the longest matching prefix wins.
    pub radius_m: BTreeMap<String, f64>,
    /// Category prefixes whose alerts wait for a reviewer.
    pub hold: Vec<String>,
}

impl Rules {
    /// The notification radius for a category.
    pub fn radius_for(&self, category: Category) -> f64 {
        self.radius_m
            .iter()
            .filter(|(p, _)| category.matches_prefix(p))
            .max_by_key(|(p, _)| p.len())
            .map_or(self.default_radius_m, |(_, r)| *r)
    }

    /// Whether a category's alerts are held for review.
    pub fn holds(&self, category: Category) -> bool {
        self.hold.iter().any(|p| category.matches_prefix(p))
    }
}

/// A region with its own rules: a set of H3 cells (any resolutions) or polygons.
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    /// Name, used in audit rules (`region:<name>`).
    pub name: String,
    /// Cells, by resolution.
    pub cells: BTreeMap<u8, HashSet<CellIndex>>,
    /// Polygons (x = longitude, y = latitude).
    pub polygons: Vec<geo::Polygon<f64>>,
    /// Its rules.
    pub rules: Rules,
}

impl Region {
    /// Whether a point is inside the region.
    pub fn contains(&self, p: LatLng) -> bool {
        self.cells.iter().any(|(res, set)| Resolution::try_from(*res).is_ok_and(|r| set.contains(&p.cell(r))))
            || self.polygons.iter().any(|poly| poly.contains(&geo::Point::new(p.lng(), p.lat())))
    }
}

/// A tenant's own narrowing of the rules: its subscribers do not receive alerts the
/// tenant's rules reject, recorded per alert in `excluded_tenants` style audit records.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantRules {
    /// Tenant name (as in the push tokens file).
    pub tenant: String,
    /// Its rules.
    pub rules: Rules,
}

/// A validated policy.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyConfig {
    /// The rules outside every region.
    pub rules: Rules,
    /// Resolution of the coarse location shown to users.
    pub coarse_resolution: Resolution,
    /// Resolution the target circle's center is snapped to.
    pub target_resolution: Resolution,
    /// Attributes a subscriber needs for an incident that does not threaten the community
    /// at large, by category prefix (longest wins); categories without any do not alert.
    pub attributes: BTreeMap<String, Vec<String>>,
    /// Whether an incident whose feed does not say threatens the community at large, by
    /// category prefix (longest wins): the built-in [`BUILTIN_COMMUNITY_THREAT`] with the
    /// file's `[community_threat]` over it. A feed's own value always wins.
    pub community_threat: BTreeMap<String, bool>,
    /// How long a held alert waits for a reviewer.
    pub hold_timeout_secs: u64,
    /// What happens then.
    pub hold_timeout_action: TimeoutAction,
    /// Text templates of the default language by category prefix (longest wins); built-ins
    /// per family otherwise.
    pub templates: BTreeMap<String, Template>,
    /// The languages every alert is written in, the default (of `headline` and `body`)
    /// first; a language without a template for a category is skipped for that alert.
    pub languages: Vec<String>,
    /// Templates of the other languages: language -> category prefix -> template.
    pub language_templates: BTreeMap<String, BTreeMap<String, Template>>,
    /// Regions, first match wins.
    pub regions: Vec<Region>,
    /// Tenant overrides.
    pub tenants: Vec<TenantRules>,
    /// How long an alert lives after policy issues it when its feed gives no expiry (CAP
    /// `expires` always wins), by category prefix (longest wins).
    pub expires_after_secs: BTreeMap<String, u64>,
    /// The same for categories without a prefix in `expires_after_secs`.
    pub default_expires_after_secs: u64,
}

/// The built-in community-threat defaults: a medical call is one household's emergency
/// unless its feed says otherwise; other families (crime, fire, hazard, weather, public,
/// traffic) concern everyone nearby.
pub const BUILTIN_COMMUNITY_THREAT: [(&str, bool); 1] = [("medical", false)];

fn invalid(key: impl Into<String>, message: impl Into<String>) -> PolicyConfigError {
    PolicyConfigError::Invalid { key: key.into(), message: message.into() }
}

fn severity(key: &str, s: Option<&str>) -> Result<Severity, PolicyConfigError> {
    match s {
        None | Some("unspecified") => Ok(Severity::Unspecified),
        Some(s) => Severity::from_str_name(&format!("SEVERITY_{}", s.to_ascii_uppercase()))
            .ok_or_else(|| invalid(key, format!("`{s}` is not minor|moderate|severe|extreme"))),
    }
}

fn prefixes(key: &str, list: &[String]) -> Result<(), PolicyConfigError> {
    for p in list {
        validate_prefix(p).map_err(|e| invalid(key, e.to_string()))?;
    }
    Ok(())
}

fn radius(key: String, r: f64) -> Result<(), PolicyConfigError> {
    if r.is_finite() && r > 0.0 && r <= 50_000.0 {
        Ok(())
    } else {
        Err(invalid(key, format!("{r} is not in 0 < r <= 50000")))
    }
}

/// `base` with `raw`'s values where it has them; keys are named under `at`.
fn rules(at: &str, raw: RawRules, base: &Rules) -> Result<Rules, PolicyConfigError> {
    let key = |k: &str| if at.is_empty() { k.to_owned() } else { format!("{at}.{k}") };
    let mut r = base.clone();
    if let Some(a) = raw.allow {
        prefixes(&key("allow"), &a)?;
        r.allow = a;
    }
    if let Some(d) = raw.deny {
        prefixes(&key("deny"), &d)?;
        r.deny = d;
    }
    if let Some(h) = raw.hold {
        prefixes(&key("hold"), &h)?;
        r.hold = h;
    }
    if let Some(m) = raw.max_age_secs {
        r.max_age_secs = m;
    }
    if raw.min_severity.is_some() {
        r.min_severity = severity(&key("min_severity"), raw.min_severity.as_deref())?;
    }
    for (p, v) in raw.radius_m {
        validate_prefix(&p).map_err(|e| invalid(key(&format!("radius_m.{p}")), e.to_string()))?;
        radius(key(&format!("radius_m.{p}")), v)?;
        r.radius_m.insert(p, v);
    }
    Ok(r)
}

fn template(key: &str, t: RawTemplate) -> Result<Template, PolicyConfigError> {
    for (field, text, max) in [("headline", &t.headline, MAX_HEADLINE_CHARS), ("body", &t.body, MAX_BODY_CHARS)] {
        let mut rest = text.as_str();
        while let Some(i) = rest.find('{') {
            let ph = rest[i..].find('}').map(|j| &rest[i..=i + j]).unwrap_or(&rest[i..]);
            if !PLACEHOLDERS.contains(&ph) {
                return Err(invalid(
                    format!("{key}.{field}"),
                    format!("unknown placeholder {ph} (expected {})", PLACEHOLDERS.join(", ")),
                ));
            }
            rest = &rest[i + ph.len()..];
        }
        let fixed = PLACEHOLDERS.iter().fold(text.clone(), |s, p| s.replace(p, ""));
        if fixed.trim().is_empty() || fixed.chars().count() > max {
            return Err(invalid(format!("{key}.{field}"), format!("fixed text must be 1 to {max} characters")));
        }
    }
    Ok(Template { headline: t.headline, body: t.body })
}

impl PolicyConfig {
    /// The seed policy: alert on burglary, vehicle break-in and theft, robbery, shots
    /// fired, shootings, stabbings, hostage situations, arson, fires and explosions; never
    /// on assault, domestic disputes, death investigations and the like.
    pub fn seed() -> Self {
        Self::parse(include_str!("../seed-policy.toml"), "seed-policy.toml").unwrap_or_else(|e| unreachable!("{e}"))
    }

    /// Reads and validates a policy file whose regions are H3 cells only.
    pub fn load(path: &Path) -> Result<Self, PolicyConfigError> {
        Self::load_with(path, &|p: &Path| Err(format!("{}: no GeoJSON reader in this build", p.display())))
    }

    /// Reads and validates a policy file; region `geojson` paths are relative to it.
    pub fn load_with(path: &Path, polygons: PolygonLoader<'_>) -> Result<Self, PolicyConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| PolicyConfigError::Read { path: path.display().to_string(), source })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::parse_with(&text, &path.display().to_string(), dir, polygons)
    }

    /// Validates a policy document whose regions are H3 cells only.
    pub fn parse(text: &str, path: &str) -> Result<Self, PolicyConfigError> {
        Self::parse_with(text, path, Path::new("."), &|p: &Path| {
            Err(format!("{}: no GeoJSON reader in this build", p.display()))
        })
    }

    /// Validates a policy document.
    pub fn parse_with(
        text: &str,
        path: &str,
        dir: &Path,
        polygons: PolygonLoader<'_>,
    ) -> Result<Self, PolicyConfigError> {
        let raw: RawPolicy = toml::from_str(text)
            .map_err(|e| PolicyConfigError::Parse { path: path.to_owned(), message: e.message().to_owned() })?;
        if !(raw.default_radius_m.is_finite() && raw.default_radius_m > 0.0 && raw.default_radius_m <= 50_000.0) {
            return Err(invalid("default_radius_m", "must be in 0 < r <= 50000"));
        }
        let empty = Rules {
            allow: Vec::new(),
            deny: Vec::new(),
            max_age_secs: raw.max_age_secs,
            min_severity: Severity::Unspecified,
            default_radius_m: raw.default_radius_m,
            radius_m: BTreeMap::new(),
            hold: Vec::new(),
        };
        let base = rules(
            "",
            RawRules {
                allow: Some(raw.allow),
                deny: Some(raw.deny),
                max_age_secs: None,
                min_severity: raw.min_severity,
                radius_m: raw.radius_m,
                hold: Some(raw.hold),
            },
            &empty,
        )?;
        for (p, attrs) in &raw.attributes {
            validate_prefix(p).map_err(|e| invalid(format!("attributes.{p}"), e.to_string()))?;
            if attrs.is_empty() || attrs.iter().any(|a| a.is_empty()) {
                return Err(invalid(format!("attributes.{p}"), "expected a non-empty list of attribute names"));
            }
        }
        let mut community_threat: BTreeMap<String, bool> =
            BUILTIN_COMMUNITY_THREAT.iter().map(|(p, v)| ((*p).to_owned(), *v)).collect();
        for (p, v) in raw.community_threat {
            validate_prefix(&p).map_err(|e| invalid(format!("community_threat.{p}"), e.to_string()))?;
            community_threat.insert(p, v);
        }
        if raw.hold_timeout_secs == 0 {
            return Err(invalid("hold_timeout_secs", "expected at least 1"));
        }
        if raw.languages.is_empty() {
            return Err(invalid("languages", "expected at least the default language"));
        }
        for (i, l) in raw.languages.iter().enumerate() {
            if !valid_language_tag(l) || raw.languages[..i].contains(l) {
                return Err(invalid("languages", format!("`{l}` is not a lowercase language tag or is repeated")));
            }
        }
        let default_language = raw.languages[0].clone();
        if raw.default_expires_after_secs == 0 {
            return Err(invalid("default_expires_after_secs", "expected at least 1"));
        }
        for (p, secs) in &raw.expires_after_secs {
            validate_prefix(p).map_err(|e| invalid(format!("expires_after_secs.{p}"), e.to_string()))?;
            if *secs == 0 {
                return Err(invalid(format!("expires_after_secs.{p}"), "expected at least 1"));
            }
        }
        let mut templates = BTreeMap::new();
        let mut language_templates: BTreeMap<String, BTreeMap<String, Template>> = BTreeMap::new();
        for (p, entries) in raw.templates {
            let key = format!("templates.{p}");
            validate_prefix(&p).map_err(|e| invalid(&key, e.to_string()))?;
            let (mut headline, mut body) = (None, None);
            for (name, entry) in entries {
                match (name.as_str(), entry) {
                    ("headline", RawTemplateEntry::Text(t)) => headline = Some(t),
                    ("body", RawTemplateEntry::Text(t)) => body = Some(t),
                    (lang, RawTemplateEntry::Language(t)) if raw.languages.iter().any(|l| l == lang) => {
                        let t = template(&format!("{key}.{lang}"), t)?;
                        if lang == default_language {
                            templates.insert(p.clone(), t);
                        } else {
                            language_templates.entry(lang.to_owned()).or_default().insert(p.clone(), t);
                        }
                    }
                    (other, _) => {
                        return Err(invalid(
                            format!("{key}.{other}"),
                            "expected `headline`, `body` or a table of a language listed in `languages`",
                        ));
                    }
                }
            }
            match (headline, body) {
                (Some(headline), Some(body)) => {
                    templates.insert(p.clone(), template(&key, RawTemplate { headline, body })?);
                }
                (None, None) => {}
                (Some(_), None) => return Err(invalid(format!("{key}.body"), "missing (the headline has none)")),
                (None, Some(_)) => return Err(invalid(format!("{key}.headline"), "missing (the body has none)")),
            }
        }
        let mut regions = Vec::new();
        for (i, r) in raw.region.into_iter().enumerate() {
            let at = format!("region[{i}]");
            if r.name.is_empty() {
                return Err(invalid(format!("{at}.name"), "expected a name"));
            }
            let mut cells: BTreeMap<u8, HashSet<CellIndex>> = BTreeMap::new();
            for c in &r.cells {
                let cell: CellIndex =
                    c.parse().map_err(|_| invalid(format!("{at}.cells"), format!("`{c}` is not an H3 cell index")))?;
                cells.entry(u8::from(cell.resolution())).or_default().insert(cell);
            }
            let polys = match &r.geojson {
                Some(file) => {
                    let p = polygons(&dir.join(file)).map_err(|e| invalid(format!("{at}.geojson"), e))?;
                    if p.is_empty() {
                        return Err(invalid(format!("{at}.geojson"), format!("{file}: no polygon")));
                    }
                    p
                }
                None => Vec::new(),
            };
            if cells.is_empty() && polys.is_empty() {
                return Err(invalid(at, "expected `cells` or `geojson`"));
            }
            let rules = rules(&at, r.rules, &base)?;
            regions.push(Region { name: r.name, cells, polygons: polys, rules });
        }
        let mut tenants = Vec::new();
        for (name, t) in raw.tenant {
            let rules = rules(&format!("tenant.{name}"), t, &base)?;
            tenants.push(TenantRules { tenant: name, rules });
        }
        let res = |key: &str, v: u8| {
            Resolution::try_from(v).map_err(|_| invalid(key, format!("{v} is not an H3 resolution 0..=15")))
        };
        Ok(Self {
            rules: base,
            coarse_resolution: res("coarse_resolution", raw.coarse_resolution)?,
            target_resolution: res("target_resolution", raw.target_resolution)?,
            attributes: raw.attributes,
            community_threat,
            hold_timeout_secs: raw.hold_timeout_secs,
            hold_timeout_action: match raw.hold_timeout_action.as_deref() {
                None | Some("drop") => TimeoutAction::Drop,
                Some("release") => TimeoutAction::Release,
                Some(other) => return Err(invalid("hold_timeout_action", format!("`{other}` is not drop|release"))),
            },
            templates,
            languages: raw.languages,
            language_templates,
            regions,
            tenants,
            expires_after_secs: raw.expires_after_secs,
            default_expires_after_secs: raw.default_expires_after_secs,
        })
    }

    /// How long an alert of `category` lives after it is issued, when its feed gives no
    /// expiry: the longest matching `[expires_after_secs]` prefix, else
    /// `default_expires_after_secs`.
    pub fn expires_after_secs_for(&self, category: Category) -> u64 {
        self.expires_after_secs
            .iter()
            .filter(|(p, _)| category.matches_prefix(p))
            .max_by_key(|(p, _)| p.len())
            .map_or(self.default_expires_after_secs, |(_, s)| *s)
    }

    /// The rules for an incident at `at` and their audit name: the first region that
    /// contains it, else the top level.
    pub fn rules_at(&self, at: Option<LatLng>) -> (&Rules, Option<&str>) {
        at.and_then(|p| self.regions.iter().find(|r| r.contains(p)))
            .map_or((&self.rules, None), |r| (&r.rules, Some(r.name.as_str())))
    }

    /// The notification radius for a category outside every region.
    pub fn radius_for(&self, category: Category) -> f64 {
        self.rules.radius_for(category)
    }

    /// The template of a category in the default language.
    pub fn template_for(&self, category: Category) -> Template {
        let builtin =
            || builtin_template_in(category, self.default_language()).unwrap_or_else(|| builtin_template(category));
        self.templates
            .iter()
            .filter(|(p, _)| category.matches_prefix(p))
            .max_by_key(|(p, _)| p.len())
            .map_or_else(builtin, |(_, t)| t.clone())
    }

    /// The language of `headline` and `body`.
    pub fn default_language(&self) -> &str {
        self.languages.first().map_or("en", String::as_str)
    }

    /// The template of a category in another language: the longest matching prefix of that
    /// language's templates, else the built-in one (English and Spanish), else none.
    pub fn template_in(&self, category: Category, language: &str) -> Option<Template> {
        if language == self.default_language() {
            return Some(self.template_for(category));
        }
        self.language_templates
            .get(language)
            .and_then(|ts| ts.iter().filter(|(p, _)| category.matches_prefix(p)).max_by_key(|(p, _)| p.len()))
            .map(|(_, t)| t.clone())
            .or_else(|| builtin_template_in(category, language))
    }

    /// Whether an incident of `category` threatens the community at large when its feed
    /// does not say: the longest matching `[community_threat]` prefix, else true.
    pub fn community_threat_for(&self, category: Category) -> bool {
        self.community_threat
            .iter()
            .filter(|(p, _)| category.matches_prefix(p))
            .max_by_key(|(p, _)| p.len())
            .is_none_or(|(_, v)| *v)
    }

    /// Attributes required for a private incident of a category; `None`: it does not alert.
    pub fn attributes_for(&self, category: Category) -> Option<&[String]> {
        self.attributes
            .iter()
            .filter(|(p, _)| category.matches_prefix(p))
            .max_by_key(|(p, _)| p.len())
            .map(|(_, a)| a.as_slice())
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
        assert_eq!(p.coarse_resolution, Resolution::Eight);
    }

    #[test]
    fn bad_policies_name_the_key() {
        let cases = [
            ("allow = [\"crime.robery\"]", "allow"),
            ("allow = [\"crime\"]\n[radius_m]\ncrime = -1.0", "radius_m.crime"),
            ("allow = [\"crime\"]\nmax_agesecs = 3", "max_agesecs"),
            (
                "allow = [\"crime\"]\n[templates.crime]\nheadline = \"{who} did it\"\nbody = \"x\"",
                "templates.crime.headline",
            ),
            ("allow = [\"crime\"]\n[[region]]\nname = \"a\"\ncells = [\"zz\"]", "region[0].cells"),
            ("allow = [\"crime\"]\n[[region]]\nname = \"a\"\ngeojson = \"a.geojson\"", "region[0].geojson"),
            ("allow = [\"crime\"]\n[[region]]\nname = \"a\"", "region[0]"),
            (
                "allow = [\"crime\"]\n[[region]]\nname = \"a\"\ncells = [\"882a100d2bfffff\"]\ndeny = [\"crim\"]",
                "region[0].deny",
            ),
            ("allow = [\"crime\"]\n[tenant.acme]\nmin_severity = \"loud\"", "tenant.acme.min_severity"),
            ("allow = [\"crime\"]\nhold_timeout_action = \"later\"", "hold_timeout_action"),
            ("allow = [\"crime\"]\n[attributes]\n\"medical.cardiac_arrest\" = []", "attributes.medical.cardiac_arrest"),
            ("allow = [\"crime\"]\n[community_threat]\n\"medical.cardiac\" = true", "community_threat.medical.cardiac"),
            ("allow = [\"crime\"]\nlanguages = [\"en\", \"ES\"]", "languages"),
            ("allow = [\"crime\"]\nlanguages = []", "languages"),
            ("allow = [\"crime\"]\n[templates.crime.fr]\nheadline = \"{What}\"\nbody = \"x\"", "templates.crime.fr"),
            (
                "allow = [\"crime\"]\n[templates.crime.es]\nheadline = \"{quien}\"\nbody = \"x\"",
                "templates.crime.es.headline",
            ),
            ("allow = [\"crime\"]\n[templates.crime]\nheadline = \"{What}\"", "templates.crime.body"),
        ];
        for (text, key) in cases {
            let e = PolicyConfig::parse(text, "p").expect_err(key).to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
    }

    #[test]
    fn templates_per_language_fall_back_to_the_builtin_of_that_language() {
        let cat = |c: &str| Category::parse(c).expect("known");
        let p = PolicyConfig::parse(
            "allow = [\"crime\"]\nlanguages = [\"en\", \"es\", \"fr\"]\n\
             [templates.\"crime.robbery\"]\nheadline = \"Robbery at {place}\"\nbody = \"b\"\n\
             [templates.\"crime.robbery\".es]\nheadline = \"Robo en {place}\"\nbody = \"c\"\n\
             [templates.crime.fr]\nheadline = \"Vol près de {place}\"\nbody = \"d\"\n",
            "p",
        )
        .expect("valid");
        assert_eq!(p.default_language(), "en");
        assert_eq!(p.template_for(cat("crime.robbery")).headline, "Robbery at {place}");
        assert_eq!(p.template_in(cat("crime.robbery"), "es").map(|t| t.headline), Some("Robo en {place}".into()));
        // No Spanish template of its own: the built-in Spanish one.
        assert_eq!(p.template_in(cat("crime.burglary"), "es"), builtin_template_in(cat("crime.burglary"), "es"));
        assert_eq!(p.template_in(cat("crime.burglary"), "fr").map(|t| t.body), Some("d".into()));
        // A language without built-ins and without a template for the category: none.
        assert_eq!(p.template_in(cat("fire.arson"), "fr"), None);
        // The seed ships English and Spanish.
        let seed = PolicyConfig::seed();
        assert_eq!(seed.languages, ["en", "es"]);
        assert!(seed.template_in(cat("crime.shots_fired"), "es").is_some_and(|t| t.headline.starts_with("Disparos")));
    }

    #[test]
    fn community_threat_defaults_by_category_with_the_file_over_the_builtin() {
        let cat = |c: &str| Category::parse(c).expect("known");
        let p = PolicyConfig::parse("allow = [\"crime\"]", "p").expect("valid");
        assert!(!p.community_threat_for(cat("medical.cardiac_arrest")), "built in: medical is private");
        assert!(p.community_threat_for(cat("crime.robbery")));
        let p = PolicyConfig::parse(
            "allow = [\"crime\"]\n[community_threat]\n\"medical.other\" = true\n\"crime.burglary\" = false",
            "p",
        )
        .expect("valid");
        assert!(p.community_threat_for(cat("medical.other")), "the longer prefix wins");
        assert!(!p.community_threat_for(cat("medical.cardiac_arrest")));
        assert!(!p.community_threat_for(cat("crime.burglary")));
        assert!(!PolicyConfig::seed().community_threat_for(cat("medical.cardiac_arrest")));
    }

    #[test]
    fn regions_override_the_rules_inside_them() {
        let inside = LatLng::new(40.0, -75.0).expect("valid");
        let cell = inside.cell(Resolution::Seven);
        let text = format!(
            "allow = [\"crime\"]\nmax_age_secs = 60\n[[region]]\nname = \"downtown\"\ncells = [\"{cell}\"]\nmax_age_secs = 600\ndeny = [\"crime.theft\"]\n"
        );
        let p = PolicyConfig::parse(&text, "p").expect("valid");
        let (r, name) = p.rules_at(Some(inside));
        assert_eq!((r.max_age_secs, name), (600, Some("downtown")));
        assert_eq!(r.allow, vec!["crime".to_owned()]);
        let (r, name) = p.rules_at(Some(inside.destination(0.0, 20_000.0)));
        assert_eq!((r.max_age_secs, name), (60, None));
    }
}
