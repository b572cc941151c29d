//! ingest: turns raw feed payloads from `incidents.raw` into canonical [`Incident`]s, or
//! rejects them with a reason (the runner dead-letters rejects). Formats: `cad-json`,
//! `cap-xml`, `eido-json`, and mapping-driven `csv-<name>` / `json-<name>`. It reads only the
//! payload it is given: it never resolves an XML entity or DTD, never dereferences a URL in a
//! payload, never reads a local file after start-up and never panics on any input. Personal
//! data is kept, but only in the `sensitive` fields.
//!
//! One raw record may become several incidents (a CAP alert with several `<info>` blocks, a
//! CSV chunk with many rows). The record is dead-lettered (by the runner) only when it yields
//! none; each row that is bad inside a record that yields something is dead-lettered by the
//! stage itself ([`IngestOut::RowRejected`], with its row number and only that row's bytes)
//! and counted in [`ROWS_REJECTED`], so that no row is ever dropped silently.

mod cad_json;
mod cap;
mod categories;
mod config;
mod eido;
mod error;
mod geocodes;
mod mapping;
mod tabular;
mod xml;

pub use cad_json::parse_cad_json;
pub use categories::category_for;
pub use config::{IngestConfig, IngestConfigError};
pub use geocodes::Geocodes;
pub use mapping::{BUILTIN_MAPPINGS, Mapping, MappingKind};

use std::collections::BTreeMap;
use std::sync::Arc;

use hexcast_core::record::{DecodeError, FromRecord};
use hexcast_core::{InRecord, Incident, IntoRecord, OutRecord, ReasonCode, Stage, StageCtx, Timestamp, Topic, header};
use hexcast_proto::v1 as pb;

/// Counter of bad rows dead-lettered from records that still yielded incidents, by reason.
pub const ROWS_REJECTED: &str = "hexcast_ingest_rows_rejected_total";

/// Default largest raw payload accepted (`ingest.max_payload_bytes`).
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// How far in the future an occurrence time may be before it is implausible (clock skew).
pub const MAX_FUTURE_MS: i64 = 24 * 3600 * 1000;
/// Earliest plausible occurrence time: 1990-01-01.
pub const MIN_TIME_MS: i64 = 631_152_000_000;

/// A raw feed payload with its format.
#[derive(Debug, Clone, PartialEq)]
pub struct RawIncident {
    /// The `hexcast-format` header.
    pub format: String,
    /// The `hexcast-source` header, when set.
    pub source: Option<String>,
    /// The payload.
    pub payload: Vec<u8>,
}

impl FromRecord for RawIncident {
    fn from_record(record: &InRecord) -> Result<Self, DecodeError> {
        let format = record
            .header_str(header::FORMAT)
            .ok_or_else(|| DecodeError::new("missing_format", "no hexcast-format header"))?
            .to_owned();
        let payload =
            record.payload.clone().ok_or_else(|| DecodeError::new("empty_payload", "record has no payload"))?;
        Ok(Self { format, source: record.header_str(header::SOURCE).map(str::to_owned), payload })
    }
}

/// Why a raw payload (or one row of it) was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IngestError {
    /// No parser for the format.
    #[error("unknown format `{0}`")]
    UnknownFormat(String),
    /// Payload over the configured maximum.
    #[error("payload of {size} bytes exceeds {max}")]
    Oversized { size: usize, max: usize },
    /// Not parseable JSON.
    #[error("malformed json: {0}")]
    MalformedJson(String),
    /// Not well-formed XML.
    #[error("malformed xml: {0}")]
    MalformedXml(String),
    /// A DTD or an entity reference: refused, never resolved (XXE, billion laughs).
    #[error("xml dtd or entity refused: {0}")]
    XmlEntityRefused(&'static str),
    /// A declared encoding this stage does not decode, or bytes invalid in it.
    #[error("unsupported encoding `{0}`")]
    UnsupportedEncoding(String),
    /// Not a CSV table (ragged rows, missing header column).
    #[error("malformed csv: {0}")]
    MalformedCsv(String),
    /// A well-formed document that holds nothing to ingest (a CAP index feed, an EIDO
    /// subscription message, a CAP Ack).
    #[error("no incident in payload: {0}")]
    NoIncident(&'static str),
    /// A required field is missing or empty.
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    /// Coordinates missing, out of range or (0, 0).
    #[error("invalid coordinates: {0}")]
    InvalidCoordinates(String),
    /// Coordinates valid but outside the mapping's `bounds` (a geocoding error).
    #[error("coordinates {lat},{lng} outside the mapping's bounds")]
    OutOfBounds { lat: f64, lng: f64 },
    /// A polygon that is not a closed ring of at least 4 points with valid coordinates.
    #[error("invalid polygon: {0}")]
    InvalidPolygon(String),
    /// A circle without a valid center or a positive radius.
    #[error("invalid circle: {0}")]
    InvalidCircle(String),
    /// Neither a point nor an area.
    #[error("no location")]
    NoLocation,
    /// A time that does not parse or is implausible.
    #[error("invalid time in `{field}`: {detail}")]
    InvalidTime { field: &'static str, detail: String },
    /// A category that is not in the taxonomy.
    #[error("unknown category `{0}`")]
    UnknownCategory(String),
}

impl ReasonCode for IngestError {
    fn reason_code(&self) -> &'static str {
        match self {
            IngestError::UnknownFormat(_) => "unknown_format",
            IngestError::Oversized { .. } => "oversized_payload",
            IngestError::MalformedJson(_) => "malformed_json",
            IngestError::MalformedXml(_) => "malformed_xml",
            IngestError::XmlEntityRefused(_) => "xml_entity_refused",
            IngestError::UnsupportedEncoding(_) => "unsupported_encoding",
            IngestError::MalformedCsv(_) => "malformed_csv",
            IngestError::NoIncident(_) => "no_incident",
            IngestError::MissingField(_) => "missing_field",
            IngestError::InvalidCoordinates(_) => "invalid_coordinates",
            IngestError::OutOfBounds { .. } => "out_of_bounds",
            IngestError::InvalidPolygon(_) => "invalid_polygon",
            IngestError::InvalidCircle(_) => "invalid_circle",
            IngestError::NoLocation => "no_location",
            IngestError::InvalidTime { .. } => "invalid_time",
            IngestError::UnknownCategory(_) => "unknown_category",
        }
    }
}

/// Checks that an occurrence time is plausible against `now`.
pub fn check_time(field: &'static str, t: Timestamp, now: Timestamp) -> Result<Timestamp, IngestError> {
    if t.0 < MIN_TIME_MS {
        return Err(IngestError::InvalidTime { field, detail: format!("{} ms is before 1990", t.0) });
    }
    if t.0 > now.0.saturating_add(MAX_FUTURE_MS) {
        return Err(IngestError::InvalidTime { field, detail: format!("{} ms is more than a day after now", t.0) });
    }
    Ok(t)
}

/// An RFC 3339 time as a [`Timestamp`], for tools that take `--now`.
pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
    chrono::DateTime::parse_from_rfc3339(s.trim()).ok().map(|d| Timestamp(d.timestamp_millis()))
}

/// One bad row (or `<info>` block) inside a payload that still yielded incidents.
#[derive(Debug, Clone, PartialEq)]
pub struct RowError {
    /// 1-based data row (CSV: not counting the header; JSON: array index + 1).
    pub row: usize,
    /// Why.
    pub error: IngestError,
    /// The row's own bytes (CSV: the header line and the row; JSON: the record), or empty
    /// where a row cannot be cut out of the payload (an alert inside a CAP envelope).
    pub raw: Vec<u8>,
}

/// The dead letter of one bad row inside a record that still yielded incidents.
#[derive(Debug, Clone, PartialEq)]
pub struct RowDeadLetter {
    /// Record key: the source.
    pub key: String,
    /// 1-based row number.
    pub row: usize,
    /// Reason code.
    pub reason: &'static str,
    /// Human-readable detail, starting with `row N: `.
    pub detail: String,
    /// The row's bytes (see [`RowError::raw`]).
    pub payload: Vec<u8>,
    /// The raw record's format and source, so a fixed row can be re-published as it is.
    pub format: String,
    /// Partition and offset of the raw record.
    pub partition: i32,
    /// Offset of the raw record.
    pub offset: i64,
    /// When it was rejected.
    pub rejected_at: Timestamp,
}

/// What ingest emits.
#[derive(Debug, Clone, PartialEq)]
pub enum IngestOut {
    /// A canonical incident, to `incidents.normalized`.
    Incident(Box<Incident>),
    /// One bad row of a multi-row record, to `incidents.deadletter`.
    RowRejected(Box<RowDeadLetter>),
}

impl IngestOut {
    /// The incident, when this is one.
    pub fn incident(self) -> Option<Incident> {
        match self {
            IngestOut::Incident(i) => Some(*i),
            IngestOut::RowRejected(_) => None,
        }
    }
}

impl IntoRecord for IngestOut {
    fn into_record(self) -> OutRecord {
        match self {
            IngestOut::Incident(i) => i.into_record(),
            IngestOut::RowRejected(d) => {
                let dl = pb::DeadLetter {
                    stage: "ingest".to_owned(),
                    reason: d.reason.to_owned(),
                    detail: d.detail,
                    topic: Topic::Raw.base_name().to_owned(),
                    partition: d.partition,
                    offset: d.offset,
                    key: d.key.clone().into_bytes(),
                    original_size: d.payload.len() as u64,
                    payload: d.payload,
                    headers: [(header::FORMAT.to_owned(), d.format.into_bytes())].into_iter().collect(),
                    rejected_at_ms: d.rejected_at.0,
                    ..Default::default()
                };
                let mut r = OutRecord::proto(Topic::DeadLetter, d.key, &dl, "hexcast.v1.DeadLetter");
                r.headers.extend([
                    (header::DL_STAGE.to_owned(), b"ingest".to_vec()),
                    (header::DL_REASON.to_owned(), d.reason.as_bytes().to_vec()),
                    (header::DL_ROW.to_owned(), d.row.to_string().into_bytes()),
                ]);
                r
            }
        }
    }
}

/// Everything one payload turned into.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Normalized {
    /// The incidents.
    pub incidents: Vec<Incident>,
    /// Rows read (1 for a single-object format).
    pub rows: usize,
    /// Rows that could not be used; empty for single-object formats.
    pub row_errors: Vec<RowError>,
}

/// The ingest stage. Cheap to clone: the compiled mappings are shared.
#[derive(Debug, Clone)]
pub struct Ingest {
    mappings: Arc<BTreeMap<String, Mapping>>,
    geocodes: Arc<Geocodes>,
    max_payload_bytes: usize,
    rows_skipped: u64,
}

impl Default for Ingest {
    /// The built-in mappings and the default payload cap.
    fn default() -> Self {
        let mut mappings = BTreeMap::new();
        for (file, text) in BUILTIN_MAPPINGS {
            // The shipped files are validated by a unit test; a bad one is skipped rather
            // than panicking here.
            if let Ok(m) = Mapping::parse(text, file) {
                mappings.insert(m.name.clone(), m);
            }
        }
        Self {
            mappings: Arc::new(mappings),
            geocodes: Arc::new(Geocodes::default()),
            max_payload_bytes: MAX_PAYLOAD_BYTES,
            rows_skipped: 0,
        }
    }
}

impl Ingest {
    /// Builds the stage: the built-in mappings, then every `*.toml` in `mappings_dir`
    /// (a file whose `name` equals a built-in one replaces it). Every file is validated.
    pub fn new(cfg: &IngestConfig) -> Result<Self, IngestConfigError> {
        let mut mappings = (*Ingest::default().mappings).clone();
        for m in config::load_dir(cfg.mappings_dir.as_deref())? {
            mappings.insert(m.name.clone(), m);
        }
        let geocodes = match &cfg.geocodes_file {
            Some(path) => Geocodes::load(path)?,
            None => Geocodes::default(),
        };
        Ok(Self {
            mappings: Arc::new(mappings),
            geocodes: Arc::new(geocodes),
            max_payload_bytes: cfg.max_payload_bytes.get(),
            rows_skipped: 0,
        })
    }

    /// The same stage with a geocode table for CAP areas that carry only codes.
    pub fn with_geocodes(mut self, geocodes: Geocodes) -> Self {
        self.geocodes = Arc::new(geocodes);
        self
    }

    /// The same stage with another payload cap (the offline command reads whole exports).
    pub fn with_max_payload_bytes(mut self, max: usize) -> Self {
        self.max_payload_bytes = max;
        self
    }

    /// Adds (or replaces) one mapping.
    pub fn with_mapping(mut self, mapping: Mapping) -> Self {
        Arc::make_mut(&mut self.mappings).insert(mapping.name.clone(), mapping);
        self
    }

    /// Whether a mapping of that name and kind is loaded.
    pub fn has_mapping(&self, name: &str, kind: MappingKind) -> bool {
        self.mappings.get(name).is_some_and(|m| m.kind == kind)
    }

    /// The mapping names known, for `csv-<name>` and `json-<name>` formats.
    pub fn mapping_names(&self) -> impl Iterator<Item = &str> {
        self.mappings.keys().map(String::as_str)
    }

    /// Rows skipped inside payloads that still yielded incidents, since this stage was built.
    pub fn rows_skipped(&self) -> u64 {
        self.rows_skipped
    }

    /// Parses one payload. `Err` only when the payload as a whole yields no incident.
    pub fn normalize(&self, input: &RawIncident, now: Timestamp) -> Result<Normalized, IngestError> {
        if input.payload.len() > self.max_payload_bytes {
            return Err(IngestError::Oversized { size: input.payload.len(), max: self.max_payload_bytes });
        }
        let source = input.source.as_deref().filter(|s| !s.trim().is_empty());
        let format = input.format.as_str();
        let single = |i: Incident| Normalized { incidents: vec![i], rows: 1, row_errors: Vec::new() };
        let n = match format {
            "cad-json" => single(parse_cad_json(&input.payload, source, now)?),
            "cap-xml" | "cap" => cap::parse(&input.payload, source, now, &self.geocodes)?,
            "eido-json" | "eido" => eido::parse(&input.payload, source, now)?,
            _ => {
                let (kind, name) = match (format.strip_prefix("csv-"), format.strip_prefix("json-")) {
                    (Some(name), _) => (MappingKind::Csv, name),
                    (_, Some(name)) => (MappingKind::Json, name),
                    _ => return Err(IngestError::UnknownFormat(format.to_owned())),
                };
                let mapping = self
                    .mappings
                    .get(name)
                    .filter(|m| m.kind == kind)
                    .ok_or_else(|| IngestError::UnknownFormat(format.to_owned()))?;
                tabular::parse(mapping, &input.payload, source, now)?
            }
        };
        // Every parser returns `Err` rather than nothing; this keeps "input = output + dead
        // letters" true even if one ever did not.
        if n.incidents.is_empty() {
            return Err(IngestError::NoIncident("payload yielded nothing"));
        }
        Ok(n)
    }
}

impl Stage for Ingest {
    type In = RawIncident;
    type Out = IngestOut;
    type Reject = IngestError;

    fn name(&self) -> &'static str {
        "ingest"
    }

    fn process(&mut self, input: RawIncident, ctx: &StageCtx, out: &mut Vec<IngestOut>) -> Result<(), IngestError> {
        let n = self.normalize(&input, ctx.now)?;
        self.rows_skipped = self.rows_skipped.saturating_add(n.row_errors.len() as u64);
        // Keyed like the runner's dead letters: by source.
        let key = n.incidents.first().map(|i| i.source.clone()).unwrap_or_default();
        out.extend(n.incidents.into_iter().map(|mut i| {
            i.published_at = ctx.record_time;
            IngestOut::Incident(Box::new(i))
        }));
        for e in n.row_errors {
            let reason = e.error.reason_code();
            metrics::counter!(ROWS_REJECTED, "reason" => reason).increment(1);
            out.push(IngestOut::RowRejected(Box::new(RowDeadLetter {
                key: key.clone(),
                row: e.row,
                reason,
                detail: format!("row {}: {}", e.row, e.error),
                payload: e.raw,
                format: input.format.clone(),
                partition: ctx.partition,
                offset: ctx.offset,
                rejected_at: ctx.now,
            })));
        }
        Ok(())
    }
}
