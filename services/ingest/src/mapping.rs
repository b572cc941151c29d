//! Mapping files: TOML that says where each Incident field lives in an agency's CSV export or
//! JSON feed, how its times are written and in which time zone, and which category each of
//! its call types is. A file is parsed and validated completely at start-up into a
//! [`Mapping`] whose lookups cannot fail for a reason the file could have caught (an unknown
//! category, time zone or time format). The format is documented in
//! `docs/ingest-mappings.md`; a mapping never names a file, URL or command, so nothing it
//! says can make ingest reach outside the payload.

use std::collections::{BTreeMap, HashMap};

use chrono::format::{Item, StrftimeItems};
use chrono_tz::Tz;
use hexcast_core::{Category, IncidentStatus, Severity};
use serde::Deserialize;

use crate::error::IngestConfigError;

/// The mapping files shipped with hexcast, compiled in: `(file name, TOML)`.
pub const BUILTIN_MAPPINGS: &[(&str, &str)] = &[
    ("config/mappings/montco.toml", include_str!("../../../config/mappings/montco.toml")),
    ("config/mappings/sf-fire.toml", include_str!("../../../config/mappings/sf-fire.toml")),
    ("config/mappings/example-cad.toml", include_str!("../../../config/mappings/example-cad.toml")),
];

/// What kind of payload a mapping reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MappingKind {
    /// A CSV table with a header row (`csv-<name>`).
    Csv,
    /// A JSON object or array of objects (`json-<name>`); keys are JSON pointers.
    Json,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Order {
    #[default]
    LatLng,
    LngLat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Pick {
    /// The first column that holds a time.
    #[default]
    First,
    /// The latest time of all columns (and, when grouping, of all rows).
    Latest,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Fallback {
    /// hexcast's built-in keyword table, then `other`.
    #[default]
    Keywords,
    /// `other` for every call type not in `[categories]`.
    Other,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBounds {
    min_lat: f64,
    max_lat: f64,
    min_lng: f64,
    max_lng: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileId {
    columns: Vec<String>,
    #[serde(default)]
    hash: bool,
    #[serde(default)]
    fallback_hash: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileClosing {
    #[serde(default)]
    id_only: bool,
    column: Option<String>,
    #[serde(default)]
    values: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFields {
    call_type: String,
    lat: Option<String>,
    lng: Option<String>,
    location: Option<String>,
    #[serde(default)]
    coordinate_order: Order,
    #[serde(default)]
    address: Vec<String>,
    #[serde(default)]
    free_text: Vec<String>,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    phones: Vec<String>,
    status: Option<String>,
    severity: Option<String>,
    unit: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTime {
    columns: Vec<String>,
    formats: Vec<String>,
    split: Option<String>,
    timezone: Option<String>,
    #[serde(default)]
    pick: Pick,
    #[serde(default = "yes")]
    accept_24_00: bool,
}

const fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTimes {
    occurred_at: FileTime,
    updated_at: Option<FileTime>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingFile {
    name: String,
    kind: MappingKind,
    source: String,
    #[serde(default)]
    timezone: Option<String>,
    #[serde(default)]
    delimiter: Option<char>,
    #[serde(default)]
    columns: Option<Vec<String>>,
    #[serde(default)]
    has_header: Option<bool>,
    #[serde(default)]
    records: Option<String>,
    #[serde(default)]
    bounds: Option<FileBounds>,
    #[serde(default)]
    group_by: Option<String>,
    #[serde(default)]
    category_fallback: Fallback,
    #[serde(default)]
    default_status: Option<String>,
    id: FileId,
    fields: FileFields,
    times: FileTimes,
    #[serde(default)]
    closing: Option<FileClosing>,
    #[serde(default)]
    status: BTreeMap<String, String>,
    #[serde(default)]
    severity: BTreeMap<String, String>,
    #[serde(default)]
    categories: BTreeMap<String, String>,
}

/// How one time is read: columns tried in order, each with every format.
#[derive(Debug, Clone)]
pub(crate) struct TimeSpec {
    pub columns: Vec<usize>,
    pub formats: Vec<TimeFormat>,
    pub split: Option<String>,
    pub tz: Tz,
    pub pick: Pick,
    /// Whether `24:00[:00]` reads as the next day's midnight.
    pub accept_24_00: bool,
}

/// Which records close an incident rather than describe it.
#[derive(Debug, Clone)]
pub(crate) struct Closing {
    /// A record whose mapped columns are all blank except the id ones.
    pub id_only: bool,
    /// A column whose value (compared like table keys) is one of `values`.
    pub column: Option<usize>,
    pub values: Vec<String>,
}

/// One accepted way of writing a time.
#[derive(Debug, Clone)]
pub(crate) enum TimeFormat {
    Rfc3339,
    UnixMillis,
    UnixSeconds,
    /// A chrono format with an offset (`%z`).
    WithOffset(String),
    /// A chrono format without offset: local time in the mapping's zone.
    Local(String),
}

/// Latitude/longitude bounds a valid location must fall in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Bounds {
    pub min_lat: f64,
    pub max_lat: f64,
    pub min_lng: f64,
    pub max_lng: f64,
}

/// A validated mapping. Columns (CSV header names or JSON pointers) are interned in `keys`
/// and referred to by index.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// The name in `csv-<name>` / `json-<name>`.
    pub name: String,
    /// CSV or JSON.
    pub kind: MappingKind,
    pub(crate) source: String,
    pub(crate) delimiter: u8,
    /// CSV: the column names in order when the mapping declares them (`columns`).
    pub(crate) columns: Option<Vec<String>>,
    /// CSV: whether the first line is a header.
    pub(crate) has_header: bool,
    pub(crate) records: Option<String>,
    pub(crate) bounds: Option<Bounds>,
    pub(crate) keys: Vec<String>,
    pub(crate) id: Vec<usize>,
    pub(crate) id_hash: bool,
    pub(crate) id_fallback: Vec<usize>,
    pub(crate) closing: Option<Closing>,
    pub(crate) group_by: Option<usize>,
    pub(crate) call_type: usize,
    pub(crate) lat_lng: Option<(usize, usize)>,
    pub(crate) location: Option<usize>,
    pub(crate) order: Order,
    pub(crate) address: Vec<usize>,
    pub(crate) free_text: Vec<usize>,
    pub(crate) names: Vec<usize>,
    pub(crate) phones: Vec<usize>,
    pub(crate) status: Option<usize>,
    pub(crate) severity: Option<usize>,
    pub(crate) unit: Option<usize>,
    pub(crate) occurred_at: TimeSpec,
    pub(crate) updated_at: Option<TimeSpec>,
    pub(crate) status_map: HashMap<String, IncidentStatus>,
    pub(crate) default_status: IncidentStatus,
    pub(crate) severity_map: HashMap<String, Severity>,
    pub(crate) categories: HashMap<String, Category>,
    pub(crate) fallback: Fallback,
}

/// Call types and table values compare trimmed and case-insensitively.
pub(crate) fn table_key(s: &str) -> String {
    s.trim().to_uppercase()
}

struct Builder<'a> {
    file: &'a str,
    keys: Vec<String>,
}

impl Builder<'_> {
    fn err(&self, key: impl Into<String>, detail: impl Into<String>) -> IngestConfigError {
        IngestConfigError::Mapping { file: self.file.to_owned(), key: key.into(), detail: detail.into() }
    }

    fn key(&mut self, field: &str, column: &str) -> Result<usize, IngestConfigError> {
        if column.trim().is_empty() {
            return Err(self.err(field, "empty column name"));
        }
        if let Some(i) = self.keys.iter().position(|k| k == column) {
            return Ok(i);
        }
        self.keys.push(column.to_owned());
        Ok(self.keys.len() - 1)
    }

    fn keys(&mut self, field: &str, columns: &[String]) -> Result<Vec<usize>, IngestConfigError> {
        columns.iter().map(|c| self.key(field, c)).collect()
    }

    fn tz(&self, field: &str, name: &str) -> Result<Tz, IngestConfigError> {
        name.parse::<Tz>().map_err(|_| self.err(field, format!("unknown time zone `{name}` (expected an IANA name)")))
    }

    fn time(&mut self, field: &str, t: &FileTime, default_tz: Tz) -> Result<TimeSpec, IngestConfigError> {
        if t.columns.is_empty() {
            return Err(self.err(format!("{field}.columns"), "at least one column"));
        }
        if t.formats.is_empty() {
            return Err(self.err(format!("{field}.formats"), "at least one format"));
        }
        let mut formats = Vec::new();
        for f in &t.formats {
            let parsed = match f.as_str() {
                "rfc3339" => TimeFormat::Rfc3339,
                "unix_ms" => TimeFormat::UnixMillis,
                "unix_s" => TimeFormat::UnixSeconds,
                other => {
                    if StrftimeItems::new(other).any(|i| matches!(i, Item::Error)) {
                        return Err(self.err(format!("{field}.formats"), format!("invalid chrono format `{other}`")));
                    }
                    if other.contains("%z") || other.contains("%:z") || other.contains("%#z") {
                        TimeFormat::WithOffset(other.to_owned())
                    } else {
                        TimeFormat::Local(other.to_owned())
                    }
                }
            };
            formats.push(parsed);
        }
        let tz = match &t.timezone {
            Some(name) => self.tz(&format!("{field}.timezone"), name)?,
            None => default_tz,
        };
        Ok(TimeSpec {
            columns: self.keys(&format!("{field}.columns"), &t.columns)?,
            formats,
            split: t.split.clone().filter(|s| !s.is_empty()),
            tz,
            pick: t.pick,
            accept_24_00: t.accept_24_00,
        })
    }
}

fn status_of(s: &str) -> Option<IncidentStatus> {
    match s {
        "active" => Some(IncidentStatus::Active),
        "closed" => Some(IncidentStatus::Closed),
        "cancelled" => Some(IncidentStatus::Cancelled),
        _ => None,
    }
}

fn severity_of(s: &str) -> Option<Severity> {
    match s {
        "unspecified" => Some(Severity::Unspecified),
        "minor" => Some(Severity::Minor),
        "moderate" => Some(Severity::Moderate),
        "severe" => Some(Severity::Severe),
        "extreme" => Some(Severity::Extreme),
        _ => None,
    }
}

impl Mapping {
    /// Parses and validates a mapping file; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Mapping, IngestConfigError> {
        let f: MappingFile = toml::from_str(text).map_err(|e| IngestConfigError::Mapping {
            file: file.to_owned(),
            key: e.span().map_or_else(String::new, |s| text.get(s).unwrap_or_default().trim().to_owned()),
            detail: e.message().to_owned(),
        })?;
        let mut b = Builder { file, keys: Vec::new() };
        let name_ok = !f.name.is_empty()
            && f.name.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_');
        if !name_ok {
            return Err(b.err("name", format!("`{}`: use lowercase letters, digits, - and _", f.name)));
        }
        if f.source.trim().is_empty() {
            return Err(b.err("source", "empty"));
        }
        let tz = match &f.timezone {
            Some(name) => b.tz("timezone", name)?,
            None => Tz::UTC,
        };
        let delimiter = match f.delimiter {
            None => b',',
            Some(c) if c.is_ascii() && c != '"' && c != '\n' && c != '\r' => c as u8,
            Some(c) => return Err(b.err("delimiter", format!("`{c}`: an ASCII character other than quote or newline"))),
        };
        if f.kind == MappingKind::Json && (f.columns.is_some() || f.has_header.is_some()) {
            return Err(b.err(if f.columns.is_some() { "columns" } else { "has_header" }, "only for kind = \"csv\""));
        }
        let has_header = f.has_header.unwrap_or(f.columns.is_none());
        if !has_header && f.columns.is_none() {
            return Err(b.err("has_header", "false needs `columns`: the names of the columns in order"));
        }
        if let Some(cols) = &f.columns {
            if cols.is_empty() {
                return Err(b.err("columns", "at least one column"));
            }
            if let Some((i, c)) = cols.iter().enumerate().find(|(i, c)| c.trim().is_empty() || cols[..*i].contains(c)) {
                return Err(b.err("columns", format!("column {} `{c}` is empty or listed twice", i + 1)));
            }
        }
        if f.records.is_some() && f.kind == MappingKind::Csv {
            return Err(b.err("records", "only for kind = \"json\""));
        }
        if f.delimiter.is_some() && f.kind == MappingKind::Json {
            return Err(b.err("delimiter", "only for kind = \"csv\""));
        }
        if f.kind == MappingKind::Json {
            for (field, k) in [("fields.call_type", &f.fields.call_type)] {
                if !k.starts_with('/') {
                    return Err(b.err(field, format!("`{k}`: a JSON pointer starting with /")));
                }
            }
        }
        let bounds = match f.bounds {
            Some(x) if x.min_lat < x.max_lat && x.min_lng < x.max_lng => {
                Some(Bounds { min_lat: x.min_lat, max_lat: x.max_lat, min_lng: x.min_lng, max_lng: x.max_lng })
            }
            Some(_) => return Err(b.err("bounds", "min_lat < max_lat and min_lng < max_lng")),
            None => None,
        };
        if f.id.columns.is_empty() {
            return Err(b.err("id.columns", "at least one column"));
        }
        let id = b.keys("id.columns", &f.id.columns)?;
        let id_fallback = b.keys("id.fallback_hash", &f.id.fallback_hash)?;
        let closing = match &f.closing {
            None => None,
            Some(c) => {
                if c.column.is_some() == c.values.is_empty() {
                    return Err(b.err("closing.values", "`column` and `values` go together"));
                }
                if !c.id_only && c.column.is_none() {
                    return Err(b.err("closing", "set `id_only = true`, or `column` and `values`"));
                }
                let column = c.column.as_deref().map(|k| b.key("closing.column", k)).transpose()?;
                Some(Closing { id_only: c.id_only, column, values: c.values.iter().map(|v| table_key(v)).collect() })
            }
        };
        let group_by = f.group_by.as_deref().map(|c| b.key("group_by", c)).transpose()?;
        let call_type = b.key("fields.call_type", &f.fields.call_type)?;
        let lat_lng = match (&f.fields.lat, &f.fields.lng) {
            (Some(lat), Some(lng)) => Some((b.key("fields.lat", lat)?, b.key("fields.lng", lng)?)),
            (None, None) => None,
            _ => return Err(b.err("fields.lat", "lat and lng go together")),
        };
        let location = f.fields.location.as_deref().map(|c| b.key("fields.location", c)).transpose()?;
        if lat_lng.is_none() && location.is_none() {
            return Err(b.err("fields", "either lat and lng, or location"));
        }
        let occurred_at = b.time("times.occurred_at", &f.times.occurred_at, tz)?;
        let updated_at = f.times.updated_at.as_ref().map(|t| b.time("times.updated_at", t, tz)).transpose()?;
        let mut status_map = HashMap::new();
        for (raw, s) in &f.status {
            let st = status_of(s).ok_or_else(|| {
                b.err(format!("status.\"{raw}\""), format!("`{s}` (expected active, closed or cancelled)"))
            })?;
            status_map.insert(table_key(raw), st);
        }
        let default_status = match f.default_status.as_deref() {
            None => IncidentStatus::Active,
            Some(s) => status_of(s)
                .ok_or_else(|| b.err("default_status", format!("`{s}` (expected active, closed or cancelled)")))?,
        };
        let mut severity_map = HashMap::new();
        for (raw, s) in &f.severity {
            let sev = severity_of(s).ok_or_else(|| {
                b.err(format!("severity.\"{raw}\""), format!("`{s}` (expected minor, moderate, severe or extreme)"))
            })?;
            severity_map.insert(table_key(raw), sev);
        }
        let mut categories = HashMap::new();
        for (raw, c) in &f.categories {
            let cat = Category::parse(c)
                .map_err(|_| b.err(format!("categories.\"{raw}\""), format!("unknown category `{c}`")))?;
            if categories.insert(table_key(raw), cat).is_some() {
                return Err(b.err(format!("categories.\"{raw}\""), "listed twice (keys compare case-insensitively)"));
            }
        }
        let fields = &f.fields;
        let address = b.keys("fields.address", &fields.address)?;
        let free_text = b.keys("fields.free_text", &fields.free_text)?;
        let names = b.keys("fields.names", &fields.names)?;
        let phones = b.keys("fields.phones", &fields.phones)?;
        let status = fields.status.as_deref().map(|c| b.key("fields.status", c)).transpose()?;
        let severity = fields.severity.as_deref().map(|c| b.key("fields.severity", c)).transpose()?;
        let unit = fields.unit.as_deref().map(|c| b.key("fields.unit", c)).transpose()?;
        if f.kind == MappingKind::Json
            && let Some(k) = b.keys.iter().find(|k| !k.starts_with('/'))
        {
            return Err(b.err("fields", format!("`{k}`: JSON mappings name fields by JSON pointer (/a/b)")));
        }
        if let Some(cols) = &f.columns
            && let Some(k) = b.keys.iter().find(|k| !cols.contains(k))
        {
            return Err(b.err("columns", format!("`{k}` is used by the mapping but not listed")));
        }
        Ok(Mapping {
            name: f.name,
            kind: f.kind,
            source: f.source,
            delimiter,
            columns: f.columns,
            has_header,
            records: f.records,
            bounds,
            keys: b.keys,
            id,
            id_hash: f.id.hash,
            id_fallback,
            closing,
            group_by,
            call_type,
            lat_lng,
            location,
            order: fields.coordinate_order,
            address,
            free_text,
            names,
            phones,
            status,
            severity,
            unit,
            occurred_at,
            updated_at,
            status_map,
            default_status,
            severity_map,
            categories,
            fallback: f.category_fallback,
        })
    }

    /// The category of a call type: the table, then the fallback.
    pub fn category(&self, call_type: &str) -> Category {
        match self.categories.get(&table_key(call_type)) {
            Some(c) => *c,
            None if self.fallback == Fallback::Keywords => crate::category_for(call_type),
            None => Category::UNKNOWN,
        }
    }

    /// Whether the call type is listed in the mapping's table.
    pub fn has_category_for(&self, call_type: &str) -> bool {
        self.categories.contains_key(&table_key(call_type))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const MINIMAL: &str = r#"
name = "mini"
kind = "csv"
source = "mini-pd"
timezone = "America/Chicago"
id = { columns = ["no"] }
[fields]
call_type = "type"
lat = "y"
lng = "x"
[times.occurred_at]
columns = ["when"]
formats = ["%m/%d/%Y %H:%M"]
[categories]
"ROBBERY" = "crime.robbery"
"#;

    #[test]
    fn every_builtin_mapping_is_valid() {
        for (file, text) in BUILTIN_MAPPINGS {
            Mapping::parse(text, file).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (MINIMAL.replace("crime.robbery", "crime.robery"), "categories.\"ROBBERY\""),
            (MINIMAL.replace("America/Chicago", "Mars/Olympus"), "timezone"),
            (MINIMAL.replace("%m/%d/%Y %H:%M", "%Q"), "times.occurred_at.formats"),
            (MINIMAL.replace("lat = \"y\"\n", ""), "fields.lat"),
            (MINIMAL.replace("call_type", "calltype"), "calltype"),
        ];
        for (text, key) in cases {
            let e = Mapping::parse(&text, "m.toml").expect_err(key).to_string();
            assert!(e.contains("m.toml") && e.contains(key), "{key}: {e}");
        }
    }

    #[test]
    fn call_types_match_case_insensitively_with_fallback() {
        let m = Mapping::parse(MINIMAL, "m.toml").expect("valid");
        assert_eq!(m.category(" robbery ").as_str(), "crime.robbery");
        assert_eq!(m.category("STRUCTURE FIRE").as_str(), "fire.structure");
        assert_eq!(m.category("LOST DOG").as_str(), "other");
    }

    /// Every complete mapping shown in the documentation is valid.
    #[test]
    fn documented_example_mappings_parse() {
        let doc = include_str!("../../../docs/ingest-mappings.md");
        let blocks: Vec<&str> = doc
            .split("```toml")
            .skip(1)
            .filter_map(|b| b.split_once("```").map(|(toml, _)| toml))
            .filter(|b| b.trim_start().starts_with("name ="))
            .collect();
        assert!(blocks.len() >= 2, "the doc shows its examples");
        for b in blocks {
            let m = Mapping::parse(b, "docs/ingest-mappings.md").unwrap_or_else(|e| panic!("{e}\n{b}"));
            if m.name == "county-so" {
                assert!(!m.has_header && m.columns.as_ref().is_some_and(|c| c.len() == 6));
                assert_eq!(m.id_fallback.len(), 5);
            }
        }
    }
}
