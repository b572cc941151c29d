//! ingest: turns raw feed payloads from `incidents.raw` into canonical [`Incident`]s, or
//! rejects them with a reason (the runner dead-letters rejects). It reads only the payload
//! it is given: it never resolves external references, never reads a local file and never
//! panics on any input. Personal data is kept, but only in the `sensitive` fields.

mod cad_json;
mod categories;

pub use cad_json::parse_cad_json;
pub use categories::category_for;

use hexcast_core::record::{DecodeError, FromRecord};
use hexcast_core::{InRecord, Incident, ReasonCode, Stage, StageCtx, Timestamp, header};

/// Largest raw payload accepted.
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

/// Why a raw payload was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IngestError {
    /// No parser for the format.
    #[error("unknown format `{0}`")]
    UnknownFormat(String),
    /// Payload over [`MAX_PAYLOAD_BYTES`].
    #[error("payload of {0} bytes exceeds {MAX_PAYLOAD_BYTES}")]
    Oversized(usize),
    /// Not parseable JSON.
    #[error("malformed json: {0}")]
    MalformedJson(String),
    /// A required field is missing or empty.
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    /// Coordinates missing, out of range or (0, 0).
    #[error("invalid coordinates: {0}")]
    InvalidCoordinates(String),
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
            IngestError::Oversized(_) => "oversized_payload",
            IngestError::MalformedJson(_) => "malformed_json",
            IngestError::MissingField(_) => "missing_field",
            IngestError::InvalidCoordinates(_) => "invalid_coordinates",
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

/// The ingest stage.
#[derive(Debug, Default)]
pub struct Ingest;

impl Stage for Ingest {
    type In = RawIncident;
    type Out = Incident;
    type Reject = IngestError;

    fn name(&self) -> &'static str {
        "ingest"
    }

    fn process(&mut self, input: RawIncident, ctx: &StageCtx, out: &mut Vec<Incident>) -> Result<(), IngestError> {
        if input.payload.len() > MAX_PAYLOAD_BYTES {
            return Err(IngestError::Oversized(input.payload.len()));
        }
        let mut incident = match input.format.as_str() {
            "cad-json" => parse_cad_json(&input.payload, input.source.as_deref(), ctx.now)?,
            other => return Err(IngestError::UnknownFormat(other.to_owned())),
        };
        incident.published_at = ctx.record_time;
        out.push(incident);
        Ok(())
    }
}
