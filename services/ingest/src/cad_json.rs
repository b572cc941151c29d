//! `cad-json`: hexcast's own simple JSON shape for CAD producers that can choose their
//! output (and for the demo's synthetic feed). One object per record:
//! `{"source","id","version","call_type","category"?,"lat","lng","occurred_at","status"?,
//! "severity"?,"community_threat"?,"address"?,"description"?,"names"?,"phones"?,"medical"?,
//! "units"?}` where `occurred_at` is RFC 3339 or Unix milliseconds. Without
//! `community_threat` the policy decides by category. The source is the producer's
//! `hexcast-source` header, else the body's `source`, else [`DEFAULT_SOURCE`], so that the
//! smallest record a user can type (`kcat -H hexcast-format=cad-json`) is ingested.

use hexcast_core::{Category, Certainty, Incident, IncidentStatus, LatLng, Sensitive, Timestamp, Urgency};
use serde::Deserialize;

use crate::{IngestError, category_for, check_time};

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Time {
    Millis(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
struct CadJson {
    source: Option<String>,
    id: Option<String>,
    #[serde(default)]
    version: i64,
    call_type: Option<String>,
    category: Option<String>,
    lat: Option<f64>,
    lng: Option<f64>,
    occurred_at: Option<Time>,
    status: Option<String>,
    severity: Option<String>,
    #[serde(default)]
    community_threat: Option<bool>,
    #[serde(default)]
    address: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    phones: Vec<String>,
    #[serde(default)]
    medical: Vec<String>,
    #[serde(default)]
    units: u32,
}

fn parse_time(t: &Time) -> Result<Timestamp, IngestError> {
    match t {
        Time::Millis(ms) => Ok(Timestamp(*ms)),
        Time::Text(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|d| Timestamp(d.timestamp_millis()))
            .map_err(|e| IngestError::InvalidTime { field: "occurred_at", detail: format!("`{s}`: {e}") }),
    }
}

fn status(s: Option<&str>) -> IncidentStatus {
    match s.map(str::to_ascii_lowercase).as_deref() {
        Some("closed") => IncidentStatus::Closed,
        Some("cancelled" | "canceled") => IncidentStatus::Cancelled,
        _ => IncidentStatus::Active,
    }
}

fn required(v: Option<String>, field: &'static str) -> Result<String, IngestError> {
    v.filter(|s| !s.trim().is_empty()).ok_or(IngestError::MissingField(field))
}

/// The source of a `cad-json` record that names none, in its header or its body.
pub const DEFAULT_SOURCE: &str = "cad-json";

/// Parses one `cad-json` record. `source` (the producer's header) wins over the body's.
pub fn parse_cad_json(payload: &[u8], source: Option<&str>, now: Timestamp) -> Result<Incident, IngestError> {
    let raw: CadJson = serde_json::from_slice(payload).map_err(|e| IngestError::MalformedJson(e.to_string()))?;
    let source = source
        .map(str::to_owned)
        .or(raw.source)
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_SOURCE.to_owned());
    let source_id = required(raw.id, "id")?;
    let call_type = raw.call_type.unwrap_or_default();
    let category = match raw.category {
        Some(c) => Category::parse(&c).map_err(|_| IngestError::UnknownCategory(c))?,
        None => category_for(&call_type),
    };
    let (lat, lng) = match (raw.lat, raw.lng) {
        (Some(lat), Some(lng)) => (lat, lng),
        _ => return Err(IngestError::MissingField("lat/lng")),
    };
    let location = LatLng::new(lat, lng).map_err(|e| IngestError::InvalidCoordinates(e.to_string()))?;
    let occurred_at = check_time(
        "occurred_at",
        parse_time(raw.occurred_at.as_ref().ok_or(IngestError::MissingField("occurred_at"))?)?,
        now,
    )?;
    let sev = crate::cap::severity(raw.severity.as_deref());
    Ok(Incident {
        id: Incident::make_id(&source, &source_id),
        source,
        source_id,
        version: raw.version,
        category,
        raw_type: call_type,
        severity: sev,
        urgency: Urgency::Unspecified,
        certainty: Certainty::Unspecified,
        status: status(raw.status.as_deref()),
        occurred_at,
        updated_at: occurred_at,
        expires_at: None,
        location: Some(location),
        areas: Vec::new(),
        sensitive: Sensitive {
            names: raw.names,
            phones: raw.phones,
            medical_notes: raw.medical,
            unit_count: raw.units,
            address: raw.address,
            free_text: raw.description,
            texts: Vec::new(),
        },
        references: None,
        community_threat: raw.community_threat,
        published_at: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Ingest, RawIncident};
    use hexcast_core::{ReasonCode, Stage, StageCtx};

    const NOW: Timestamp = Timestamp(1_700_000_000_000);

    fn run(payload: &str) -> Result<Vec<Incident>, String> {
        let mut out = Vec::new();
        let raw = RawIncident { format: "cad-json".into(), source: None, payload: payload.as_bytes().to_vec() };
        Ingest::default().process(raw, &StageCtx::at(NOW), &mut out).map_err(|e| e.reason_code().to_owned())?;
        Ok(out.into_iter().filter_map(crate::IngestOut::incident).collect())
    }

    /// The record docs/OPERATIONS.md shows for producing by hand, exactly as written there.
    fn readme_example() -> String {
        let readme = include_str!("../../../docs/OPERATIONS.md");
        let after = readme
            .split_once("one `cad-json` object per line")
            .map(|(_, rest)| rest)
            .expect("docs/OPERATIONS.md has the example");
        let block = after.split_once("```json").and_then(|(_, rest)| rest.split_once("```")).expect("a json block");
        block.0.to_owned()
    }

    #[test]
    fn the_readme_example_ingests_with_a_default_source() {
        let example = readme_example();
        let mut out = Vec::new();
        let raw = RawIncident { format: "cad-json".into(), source: None, payload: example.into_bytes() };
        // The example's own time, 2026-11-24T06:00Z, seen an hour later.
        let now = Timestamp(1_795_500_000_000 + 3_600_000);
        Ingest::default().process(raw, &StageCtx::at(now), &mut out).expect("the documented example ingests");
        let i = out.into_iter().find_map(crate::IngestOut::incident).expect("one incident");
        assert_eq!((i.id.as_str(), i.source.as_str()), ("cad-json:17", DEFAULT_SOURCE));
        assert_eq!(i.category.as_str(), "crime.robbery");
        // A header or body source still wins.
        let body = r#"{"source":"pd","id":"1","lat":40,"lng":-75,"occurred_at":1699999200000}"#;
        assert_eq!(parse_cad_json(body.as_bytes(), None, NOW).expect("valid").id, "pd:1");
        assert_eq!(parse_cad_json(body.as_bytes(), Some("hdr"), NOW).expect("valid").id, "hdr:1");
        let blank = r#"{"source":" ","id":"1","lat":40,"lng":-75,"occurred_at":1699999200000}"#;
        assert_eq!(parse_cad_json(blank.as_bytes(), None, NOW).expect("valid").source, DEFAULT_SOURCE);
    }

    #[test]
    fn a_complete_record_normalizes_with_pii_in_sensitive_fields() {
        let out = run(r#"{"source":"pd","id":"17","version":2,"call_type":"ARMED ROBBERY","lat":40.1,"lng":-75.3,
            "occurred_at":"2023-11-14T22:00:00Z","address":"12 ELM ST","names":["J DOE"],"phones":["555-0100"]}"#)
        .expect("valid");
        let i = &out[0];
        assert_eq!(i.id, "pd:17");
        assert_eq!(i.category.as_str(), "crime.robbery");
        assert_eq!(i.sensitive.address, "12 ELM ST");
        assert_eq!(i.sensitive.names, vec!["J DOE"]);
        assert_eq!(i.occurred_at, Timestamp(1_699_999_200_000));
    }

    #[test]
    fn bad_records_are_rejected_with_a_reason() {
        assert_eq!(run("{not json").expect_err("bad"), "malformed_json");
        assert_eq!(
            run(r#"{"source":"pd","id":"1","lat":0,"lng":0,"occurred_at":1699999200000}"#).expect_err("zero"),
            "invalid_coordinates"
        );
        assert_eq!(
            run(r#"{"source":"pd","id":"1","lat":91,"lng":0,"occurred_at":1699999200000}"#).expect_err("range"),
            "invalid_coordinates"
        );
        assert_eq!(
            run(r#"{"source":"pd","lat":40,"lng":-75,"occurred_at":1699999200000}"#).expect_err("id"),
            "missing_field"
        );
        assert_eq!(
            run(r#"{"source":"pd","id":"1","lat":40,"lng":-75,"occurred_at":1799999200000}"#).expect_err("future"),
            "invalid_time"
        );
        assert_eq!(
            run(r#"{"source":"pd","id":"1","lat":40,"lng":-75,"occurred_at":"yesterday"}"#).expect_err("text"),
            "invalid_time"
        );
        assert_eq!(
            run(r#"{"source":"pd","id":"1","category":"crime.x","lat":40,"lng":-75,"occurred_at":1699999200000}"#)
                .expect_err("cat"),
            "unknown_category"
        );
    }

    #[test]
    fn unknown_format_and_oversized_payloads_are_rejected() {
        let mut out = Vec::new();
        let raw = RawIncident { format: "fax".into(), source: None, payload: b"{}".to_vec() };
        assert_eq!(
            Ingest::default().process(raw, &StageCtx::at(NOW), &mut out).expect_err("format").reason_code(),
            "unknown_format"
        );
        let raw =
            RawIncident { format: "cad-json".into(), source: None, payload: vec![b' '; crate::MAX_PAYLOAD_BYTES + 1] };
        assert_eq!(
            Ingest::default().process(raw, &StageCtx::at(NOW), &mut out).expect_err("size").reason_code(),
            "oversized_payload"
        );
    }
}
