//! Mapping-driven ingest of CSV exports (`csv-<name>`) and JSON feeds (`json-<name>`): rows
//! are read into the mapping's columns, each row is validated on its own (a bad row is
//! counted, never fatal to its neighbours), and rows may be grouped into one incident by an
//! incident-number column (San Francisco Fire writes one row per dispatched unit). It never
//! guesses a time zone or a coordinate order: both come from the mapping.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, NaiveDateTime, TimeZone};
use hexcast_core::{Certainty, Incident, IncidentStatus, LatLng, Sensitive, Severity, Timestamp, Urgency};
use serde_json::Value;

use crate::mapping::{Mapping, MappingKind, Order, Pick, TimeFormat, TimeSpec, table_key};
use crate::{IngestError, Normalized, RowError, check_time};

/// One row's cells, aligned with `Mapping::keys`.
type Cells = Vec<Option<String>>;

fn cell(cells: &Cells, i: usize) -> Option<&str> {
    cells.get(i).and_then(|c| c.as_deref()).map(str::trim).filter(|s| !s.is_empty())
}

fn csv_rows(m: &Mapping, payload: &[u8]) -> Result<Vec<Result<Cells, IngestError>>, IngestError> {
    let text = match std::str::from_utf8(payload) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        // Open-data exports written by spreadsheet tools are often Windows-1252.
        Err(_) => encoding_rs::WINDOWS_1252.decode_without_bom_handling(payload).0,
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut reader = csv::ReaderBuilder::new().delimiter(m.delimiter).flexible(false).from_reader(text.as_bytes());
    let header = reader.headers().map_err(|e| IngestError::MalformedCsv(e.to_string()))?.clone();
    let mut index = Vec::with_capacity(m.keys.len());
    for k in &m.keys {
        let i = header
            .iter()
            .position(|h| h.trim() == k)
            .ok_or_else(|| IngestError::MalformedCsv(format!("no column `{k}` in header")))?;
        index.push(i);
    }
    let mut rows = Vec::new();
    for record in reader.records() {
        rows.push(
            record
                .map(|r| index.iter().map(|&i| r.get(i).map(str::to_owned)).collect())
                .map_err(|e| IngestError::MalformedCsv(e.to_string())),
        );
    }
    Ok(rows)
}

fn json_cell(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().filter_map(json_cell).collect();
            (!parts.is_empty()).then(|| parts.join("; "))
        }
        Value::Object(_) => Some(v.to_string()),
    }
}

fn json_rows(m: &Mapping, payload: &[u8]) -> Result<Vec<Result<Cells, IngestError>>, IngestError> {
    let doc: Value = serde_json::from_slice(payload).map_err(|e| IngestError::MalformedJson(e.to_string()))?;
    let records = match &m.records {
        Some(p) => doc.pointer(p).ok_or(IngestError::MissingField("records"))?,
        None => &doc,
    };
    let one = std::slice::from_ref(records);
    let items = match records {
        Value::Array(a) => a.as_slice(),
        _ => one,
    };
    Ok(items
        .iter()
        .map(|item| {
            if item.is_object() {
                Ok(m.keys.iter().map(|k| item.pointer(k).and_then(json_cell)).collect())
            } else {
                Err(IngestError::MalformedJson("record is not an object".to_owned()))
            }
        })
        .collect())
}

fn parse_one(f: &TimeFormat, s: &str, tz: chrono_tz::Tz) -> Option<i64> {
    match f {
        TimeFormat::Rfc3339 => DateTime::parse_from_rfc3339(s).ok().map(|d| d.timestamp_millis()),
        TimeFormat::UnixMillis => s.parse::<i64>().ok(),
        TimeFormat::UnixSeconds => s.parse::<f64>().ok().filter(|x| x.is_finite()).map(|x| (x * 1000.0) as i64),
        TimeFormat::WithOffset(fmt) => DateTime::parse_from_str(s, fmt).ok().map(|d| d.timestamp_millis()),
        TimeFormat::Local(fmt) => {
            let naive = NaiveDateTime::parse_from_str(s, fmt).ok()?;
            // In the autumn overlap the earlier instant is taken; a spring-gap time (which no
            // clock showed) is read as the instant an hour later.
            tz.from_local_datetime(&naive)
                .earliest()
                .or_else(|| tz.from_local_datetime(&(naive + chrono::Duration::hours(1))).earliest())
                .map(|d| d.timestamp_millis())
        }
    }
}

/// Every time the spec finds in a row, in column order.
fn times(spec: &TimeSpec, cells: &Cells) -> Vec<i64> {
    let mut out = Vec::new();
    for &c in &spec.columns {
        let Some(text) = cell(cells, c) else { continue };
        let pieces: Vec<&str> = match &spec.split {
            Some(sep) => text.split(sep.as_str()).map(str::trim).collect(),
            None => vec![text],
        };
        for piece in pieces {
            if let Some(t) = spec.formats.iter().find_map(|f| parse_one(f, piece, spec.tz)) {
                out.push(t);
                break;
            }
        }
        if spec.pick == Pick::First && !out.is_empty() {
            break;
        }
    }
    out
}

fn pick(spec: &TimeSpec, found: &[i64]) -> Option<i64> {
    match spec.pick {
        Pick::First => found.first().copied(),
        Pick::Latest => found.iter().max().copied(),
    }
}

fn location(m: &Mapping, cells: &Cells) -> Result<LatLng, IngestError> {
    let num = |s: &str| s.trim().parse::<f64>().map_err(|_| IngestError::InvalidCoordinates(format!("`{s}`")));
    let (lat, lng) = if let Some((la, ln)) = m.lat_lng.and_then(|(a, b)| Some((cell(cells, a)?, cell(cells, b)?))) {
        (num(la)?, num(ln)?)
    } else if let Some(text) = m.location.and_then(|i| cell(cells, i)) {
        // "(lat, lon)", "lat,lon" or WKT "POINT (lon lat)".
        let (wkt, inner) = match text.strip_prefix("POINT") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let inner = inner.trim().trim_start_matches('(').trim_end_matches(')');
        let parts: Vec<&str> = inner.split([',', ' ']).filter(|p| !p.is_empty()).collect();
        let [a, b] = parts.as_slice() else {
            return Err(IngestError::InvalidCoordinates(format!("`{text}`")));
        };
        let (a, b) = (num(a)?, num(b)?);
        match (wkt, m.order) {
            (true, _) | (false, Order::LngLat) => (b, a),
            (false, Order::LatLng) => (a, b),
        }
    } else {
        return Err(IngestError::NoLocation);
    };
    let p = LatLng::new(lat, lng).map_err(|e| IngestError::InvalidCoordinates(e.to_string()))?;
    if let Some(b) = m.bounds
        && !((b.min_lat..=b.max_lat).contains(&lat) && (b.min_lng..=b.max_lng).contains(&lng))
    {
        return Err(IngestError::OutOfBounds { lat, lng });
    }
    Ok(p)
}

/// FNV-1a, 64 bit: a stable id for rows that carry none (it must not change across Rust
/// versions, which rules out `DefaultHasher`).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

fn joined(cells: &Cells, cols: &[usize], sep: &str) -> String {
    cols.iter().filter_map(|&c| cell(cells, c)).collect::<Vec<_>>().join(sep)
}

/// One usable row.
struct Row {
    key: String,
    call_type: String,
    location: LatLng,
    occurred: i64,
    updated: i64,
    status: IncidentStatus,
    severity: Severity,
    unit: Option<String>,
    address: String,
    free_text: String,
    names: Vec<String>,
    phones: Vec<String>,
}

fn row(m: &Mapping, cells: &Cells, now: Timestamp) -> Result<Row, IngestError> {
    let id_parts: Vec<&str> = m.id.iter().map(|&c| cell(cells, c).unwrap_or("")).collect();
    if id_parts.iter().all(|p| p.is_empty()) {
        return Err(IngestError::MissingField("id"));
    }
    let id = id_parts.join("|");
    let source_id = if m.id_hash { format!("{:016x}", fnv1a(&id)) } else { id };
    let key = match m.group_by {
        Some(g) => cell(cells, g).ok_or(IngestError::MissingField("group_by"))?.to_owned(),
        None => source_id,
    };
    let call_type = cell(cells, m.call_type).ok_or(IngestError::MissingField("call_type"))?.to_owned();
    let location = location(m, cells)?;
    let occurred = pick(&m.occurred_at, &times(&m.occurred_at, cells)).ok_or_else(|| IngestError::InvalidTime {
        field: "occurred_at",
        detail: "no column holds a time in a listed format".to_owned(),
    })?;
    let occurred = check_time("occurred_at", Timestamp(occurred), now)?.0;
    let updated = match &m.updated_at {
        Some(spec) => pick(spec, &times(spec, cells)).unwrap_or(occurred).max(occurred),
        None => occurred,
    };
    let status = m
        .status
        .and_then(|c| cell(cells, c))
        .and_then(|s| m.status_map.get(&table_key(s)).copied())
        .unwrap_or(m.default_status);
    let severity = m
        .severity
        .and_then(|c| cell(cells, c))
        .and_then(|s| m.severity_map.get(&table_key(s)).copied())
        .unwrap_or(Severity::Unspecified);
    let list = |cols: &[usize]| cols.iter().filter_map(|&c| cell(cells, c)).map(str::to_owned).collect::<Vec<_>>();
    Ok(Row {
        key,
        call_type,
        location,
        occurred,
        updated,
        status,
        severity,
        unit: m.unit.and_then(|c| cell(cells, c)).map(str::to_owned),
        address: joined(cells, &m.address, ", "),
        free_text: joined(cells, &m.free_text, " | "),
        names: list(&m.names),
        phones: list(&m.phones),
    })
}

/// Unit ids of one row: a JSON array arrives joined with `;`.
fn units_of(cell: Option<&str>) -> impl Iterator<Item = String> + '_ {
    cell.into_iter().flat_map(|c| c.split(';')).map(str::trim).filter(|u| !u.is_empty()).map(str::to_owned)
}

struct Group {
    first: Row,
    occurred: i64,
    updated: i64,
    units: BTreeSet<String>,
}

/// Parses a CSV or JSON payload with a mapping.
pub(crate) fn parse(
    m: &Mapping,
    payload: &[u8],
    source: Option<&str>,
    now: Timestamp,
) -> Result<Normalized, IngestError> {
    let rows = match m.kind {
        MappingKind::Csv => csv_rows(m, payload)?,
        MappingKind::Json => json_rows(m, payload)?,
    };
    let mut n = Normalized { rows: rows.len(), ..Normalized::default() };
    let mut groups: Vec<Group> = Vec::new();
    let mut by_key: HashMap<String, usize> = HashMap::new();
    for (i, r) in rows.into_iter().enumerate() {
        let parsed = r.and_then(|cells| row(m, &cells, now));
        let r = match parsed {
            Ok(r) => r,
            Err(error) => {
                n.row_errors.push(RowError { row: i + 1, error });
                continue;
            }
        };
        match by_key.get(&r.key) {
            Some(&g) => {
                let g = &mut groups[g];
                g.occurred = g.occurred.min(r.occurred);
                g.updated = g.updated.max(r.updated);
                g.units.extend(units_of(r.unit.as_deref()));
            }
            None => {
                by_key.insert(r.key.clone(), groups.len());
                let units = units_of(r.unit.as_deref()).collect();
                groups.push(Group { occurred: r.occurred, updated: r.updated, units, first: r });
            }
        }
    }
    let source = source.unwrap_or(&m.source);
    for g in groups {
        let r = g.first;
        let category = m.category(&r.call_type);
        n.incidents.push(Incident {
            id: Incident::make_id(source, &r.key),
            source: source.to_owned(),
            source_id: r.key,
            version: g.updated,
            category,
            raw_type: r.call_type,
            severity: r.severity,
            urgency: Urgency::Unspecified,
            certainty: Certainty::Unspecified,
            status: r.status,
            occurred_at: Timestamp(g.occurred),
            updated_at: Timestamp(g.updated),
            expires_at: None,
            location: Some(r.location),
            areas: Vec::new(),
            sensitive: Sensitive {
                names: r.names,
                phones: r.phones,
                medical_notes: Vec::new(),
                unit_count: u32::try_from(g.units.len()).unwrap_or(u32::MAX),
                address: r.address,
                free_text: r.free_text,
            },
            references: None,
            // A medical call concerns one household; everything else may concern neighbours.
            community_threat: None,
            published_at: None,
        });
    }
    if n.incidents.is_empty() {
        return Err(n.row_errors.first().map_or(IngestError::NoIncident("no data rows"), |e| e.error.clone()));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hexcast_core::ReasonCode;

    const NOW: Timestamp = Timestamp(1_800_000_000_000);

    fn mini() -> Mapping {
        Mapping::parse(crate::mapping::tests::MINIMAL, "m.toml").expect("valid")
    }

    #[test]
    fn rows_become_incidents_and_bad_rows_are_counted() {
        let csv = "no,type,y,x,when\n1,Robbery,41.88,-87.63,03/08/2020 01:30\n2,Robbery,0,0,03/08/2020 01:30\n";
        let n = parse(&mini(), csv.as_bytes(), None, NOW).expect("one good row");
        assert_eq!((n.rows, n.incidents.len(), n.row_errors.len()), (2, 1, 1));
        assert_eq!(n.row_errors[0].error.reason_code(), "invalid_coordinates");
        let i = &n.incidents[0];
        assert_eq!(i.id, "mini-pd:1");
        assert_eq!(i.category.as_str(), "crime.robbery");
        // 01:30 CST (UTC-6) on 2020-03-08 is 07:30 UTC.
        assert_eq!(i.occurred_at, Timestamp(1_583_652_600_000));
    }

    #[test]
    fn a_payload_with_no_good_row_is_rejected_with_the_first_reason() {
        let csv = "no,type,y,x,when\n1,Robbery,41.88,-87.63,yesterday\n";
        assert_eq!(parse(&mini(), csv.as_bytes(), None, NOW).expect_err("bad").reason_code(), "invalid_time");
        let no_col = "no,type,lat,x,when\n";
        assert_eq!(parse(&mini(), no_col.as_bytes(), None, NOW).expect_err("col").reason_code(), "malformed_csv");
        let empty = "no,type,y,x,when\n";
        assert_eq!(parse(&mini(), empty.as_bytes(), None, NOW).expect_err("empty").reason_code(), "no_incident");
    }

    #[test]
    fn spring_forward_gap_times_still_parse() {
        // 02:30 does not exist in Chicago on 2020-03-08.
        let csv = "no,type,y,x,when\n1,Robbery,41.88,-87.63,03/08/2020 02:30\n";
        let n = parse(&mini(), csv.as_bytes(), None, NOW).expect("gap");
        assert_eq!(n.incidents[0].occurred_at, Timestamp(1_583_656_200_000));
    }
}
