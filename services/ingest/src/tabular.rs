//! Mapping-driven ingest of CSV exports (`csv-<name>`) and JSON feeds (`json-<name>`): rows
//! are read into the mapping's columns, each row is validated on its own (a bad row is
//! counted, never fatal to its neighbours), and rows may be grouped into one incident by an
//! incident-number column (San Francisco Fire writes one row per dispatched unit). It never
//! guesses a time zone or a coordinate order: both come from the mapping.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, NaiveDateTime, TimeZone};
use hexcast_core::{Category, Certainty, Incident, IncidentStatus, LatLng, Sensitive, Severity, Timestamp, Urgency};
use serde_json::Value;

use crate::mapping::{Mapping, MappingKind, Order, Pick, TimeFormat, TimeSpec, table_key};
use crate::{IngestError, Normalized, RowError, check_time};

/// One row's cells, aligned with `Mapping::keys`.
type Cells = Vec<Option<String>>;

fn cell(cells: &Cells, i: usize) -> Option<&str> {
    cells.get(i).and_then(|c| c.as_deref()).map(str::trim).filter(|s| !s.is_empty())
}

/// One record of the payload: its cells (or why it could not be split into them) and its
/// own bytes, for the dead letter of a bad row.
pub(crate) struct RawRow {
    cells: Result<Cells, IngestError>,
    raw: Vec<u8>,
}

fn csv_rows(m: &Mapping, payload: &[u8]) -> Result<Vec<RawRow>, IngestError> {
    let text = match std::str::from_utf8(payload) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        // Open-data exports written by spreadsheet tools are often Windows-1252.
        Err(_) => encoding_rs::WINDOWS_1252.decode_without_bom_handling(payload).0,
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    // Rows are length-checked here, one by one, so that a ragged row is one bad row.
    let mut reader =
        csv::ReaderBuilder::new().delimiter(m.delimiter).has_headers(false).flexible(true).from_reader(text.as_bytes());
    let mut record = csv::StringRecord::new();
    let malformed = |e: csv::Error| IngestError::MalformedCsv(e.to_string());
    let mut header_end = 0;
    let mut header: Vec<String> = Vec::new();
    if m.has_header {
        if !reader.read_record(&mut record).map_err(malformed)? {
            return Err(IngestError::MalformedCsv("no header line".to_owned()));
        }
        header_end = usize::try_from(reader.position().byte()).unwrap_or(usize::MAX);
        header = record.iter().map(|h| h.trim().to_owned()).collect();
    }
    let names: &[String] = m.columns.as_deref().unwrap_or(&header);
    if m.has_header && m.columns.is_some() && header.len() != names.len() {
        return Err(IngestError::MalformedCsv(format!(
            "header has {} columns, the mapping's `columns` {}",
            header.len(),
            names.len()
        )));
    }
    let width = names.len();
    let mut index = Vec::with_capacity(m.keys.len());
    for k in &m.keys {
        let i = names
            .iter()
            .position(|h| h == k)
            .ok_or_else(|| IngestError::MalformedCsv(format!("no column `{k}` in header")))?;
        index.push(i);
    }
    // A bad row's dead letter is the header line and that row: a CSV payload of its own.
    let header_raw = text.get(..header_end).unwrap_or_default();
    let mut rows = Vec::new();
    loop {
        let start = usize::try_from(reader.position().byte()).unwrap_or(usize::MAX);
        let read = reader.read_record(&mut record);
        let end = usize::try_from(reader.position().byte()).unwrap_or(usize::MAX);
        let raw = || [header_raw.as_bytes(), text.get(start..end).unwrap_or_default().as_bytes()].concat();
        match read {
            Ok(false) => break,
            Ok(true) if record.len() != width => rows.push(RawRow {
                cells: Err(IngestError::MalformedCsv(format!("row has {} fields, expected {width}", record.len()))),
                raw: raw(),
            }),
            Ok(true) => rows.push(RawRow {
                cells: Ok(index.iter().map(|&i| record.get(i).map(str::to_owned)).collect()),
                raw: raw(),
            }),
            Err(e) => {
                rows.push(RawRow { cells: Err(malformed(e)), raw: raw() });
                if end <= start {
                    break;
                }
            }
        }
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

fn json_rows(m: &Mapping, payload: &[u8]) -> Result<Vec<RawRow>, IngestError> {
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
            let raw = serde_json::to_vec(item).unwrap_or_default();
            let cells = if item.is_object() {
                Ok(m.keys.iter().map(|k| item.pointer(k).and_then(json_cell)).collect())
            } else {
                Err(IngestError::MalformedJson("record is not an object".to_owned()))
            };
            RawRow { cells, raw }
        })
        .collect())
}

fn local_millis(naive: NaiveDateTime, tz: chrono_tz::Tz) -> Option<i64> {
    // In the autumn overlap the earlier instant is taken; a spring-gap time (which no clock
    // showed) is read as the instant an hour later.
    tz.from_local_datetime(&naive)
        .earliest()
        .or_else(|| tz.from_local_datetime(&(naive + chrono::Duration::hours(1))).earliest())
        .map(|d| d.timestamp_millis())
}

/// `s` with its end-of-day time (`24:00`, `24:00:00`, `24:00:00.000`) written as `00:00...`,
/// when it has one. The hour must stand alone (not the end of `124:00`) and every later
/// field must be zero: `24:00:01` is not a time.
pub(crate) fn end_of_day(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let at = s.match_indices("24:00").map(|(i, _)| i).find(|&i| {
        if i > 0 && bytes[i - 1].is_ascii_digit() {
            return false;
        }
        let mut rest = &s[i + 5..];
        if let Some(r) = rest.strip_prefix(":00") {
            rest = r;
            if let Some(r) = rest.strip_prefix('.') {
                rest = r.trim_start_matches('0');
            }
        }
        !rest.starts_with(|c: char| c.is_ascii_digit() || c == ':')
    })?;
    Some(format!("{}00{}", &s[..at], &s[at + 2..]))
}

fn parse_one(f: &TimeFormat, s: &str, tz: chrono_tz::Tz) -> Option<i64> {
    match f {
        TimeFormat::Rfc3339 => DateTime::parse_from_rfc3339(s).ok().map(|d| d.timestamp_millis()),
        TimeFormat::UnixMillis => s.parse::<i64>().ok(),
        TimeFormat::UnixSeconds => s.parse::<f64>().ok().filter(|x| x.is_finite()).map(|x| (x * 1000.0) as i64),
        TimeFormat::WithOffset(fmt) => DateTime::parse_from_str(s, fmt).ok().map(|d| d.timestamp_millis()),
        TimeFormat::Local(fmt) => local_millis(NaiveDateTime::parse_from_str(s, fmt).ok()?, tz),
    }
}

/// A `24:00` time as the next day's midnight: the day is added to the local date, so a DST
/// change that day does not shift it.
fn parse_end_of_day(f: &TimeFormat, s: &str, tz: chrono_tz::Tz) -> Option<i64> {
    let midnight = end_of_day(s)?;
    const DAY_MS: i64 = 86_400_000;
    match f {
        TimeFormat::UnixMillis | TimeFormat::UnixSeconds => None,
        TimeFormat::Rfc3339 | TimeFormat::WithOffset(_) => parse_one(f, &midnight, tz).map(|t| t + DAY_MS),
        TimeFormat::Local(fmt) => {
            let naive = NaiveDateTime::parse_from_str(&midnight, fmt).ok()?;
            local_millis(naive.checked_add_days(chrono::Days::new(1))?, tz)
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
            let found = spec.formats.iter().find_map(|f| parse_one(f, piece, spec.tz)).or_else(|| {
                spec.accept_24_00
                    .then(|| spec.formats.iter().find_map(|f| parse_end_of_day(f, piece, spec.tz)))
                    .flatten()
            });
            if let Some(t) = found {
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
    /// `None` only for a closing record.
    location: Option<LatLng>,
    occurred: i64,
    updated: i64,
    /// Whether the row carried a time (a closing record may not).
    timed: bool,
    status: IncidentStatus,
    severity: Severity,
    unit: Option<String>,
    address: String,
    free_text: String,
    names: Vec<String>,
    phones: Vec<String>,
    closing: bool,
}

/// The incident's id at the source: the id columns, or (when they are all blank and the
/// mapping names `fallback_hash` columns) a hash of those.
fn source_id(m: &Mapping, cells: &Cells) -> Result<String, IngestError> {
    let parts: Vec<&str> = m.id.iter().map(|&c| cell(cells, c).unwrap_or("")).collect();
    if parts.iter().any(|p| !p.is_empty()) {
        let id = parts.join("|");
        return Ok(if m.id_hash { format!("{:016x}", fnv1a(&id)) } else { id });
    }
    let parts: Vec<&str> = m.id_fallback.iter().map(|&c| cell(cells, c).unwrap_or("")).collect();
    if parts.iter().any(|p| !p.is_empty()) {
        // The unit separator cannot occur in a trimmed cell boundary by accident the way `|`
        // can, so ("a|b", "c") and ("a", "b|c") hash differently.
        return Ok(format!("h{:016x}", fnv1a(&parts.join("\u{1f}"))));
    }
    Err(IngestError::MissingField("id"))
}

/// Whether the record closes its incident rather than describing it (`[closing]`).
fn is_closing(m: &Mapping, cells: &Cells) -> bool {
    let Some(c) = &m.closing else { return false };
    if let Some(col) = c.column
        && cell(cells, col).is_some_and(|v| c.values.contains(&table_key(v)))
    {
        return true;
    }
    c.id_only
        && (0..m.keys.len()).filter(|k| !m.id.contains(k) && m.group_by != Some(*k)).all(|k| cell(cells, k).is_none())
}

fn row(m: &Mapping, cells: &Cells, now: Timestamp) -> Result<Row, IngestError> {
    let source_id = source_id(m, cells)?;
    let key = match m.group_by {
        Some(g) => cell(cells, g).ok_or(IngestError::MissingField("group_by"))?.to_owned(),
        None => source_id,
    };
    let closing = is_closing(m, cells);
    let call_type = match cell(cells, m.call_type) {
        Some(c) => c.to_owned(),
        None if closing => String::new(),
        None => return Err(IngestError::MissingField("call_type")),
    };
    // A closing record needs nothing but its id: what it has is still checked.
    let location = match location(m, cells) {
        Ok(p) => Some(p),
        Err(IngestError::NoLocation) if closing => None,
        Err(e) => return Err(e),
    };
    let found = pick(&m.occurred_at, &times(&m.occurred_at, cells));
    let (occurred, timed) = match found {
        Some(t) => (check_time("occurred_at", Timestamp(t), now)?.0, true),
        None if closing => (now.0, false),
        None => {
            return Err(IngestError::InvalidTime {
                field: "occurred_at",
                detail: "no column holds a time in a listed format".to_owned(),
            });
        }
    };
    let updated = match &m.updated_at {
        Some(spec) => pick(spec, &times(spec, cells)).unwrap_or(occurred).max(occurred),
        None => occurred,
    };
    let status = if closing {
        IncidentStatus::Closed
    } else {
        m.status
            .and_then(|c| cell(cells, c))
            .and_then(|s| m.status_map.get(&table_key(s)).copied())
            .unwrap_or(m.default_status)
    };
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
        timed,
        status,
        severity,
        unit: m.unit.and_then(|c| cell(cells, c)).map(str::to_owned),
        address: joined(cells, &m.address, ", "),
        free_text: joined(cells, &m.free_text, " | "),
        names: list(&m.names),
        phones: list(&m.phones),
        closing,
    })
}

/// Unit ids of one row: a JSON array arrives joined with `;`.
fn units_of(cell: Option<&str>) -> impl Iterator<Item = String> + '_ {
    cell.into_iter().flat_map(|c| c.split(';')).map(str::trim).filter(|u| !u.is_empty()).map(str::to_owned)
}

struct Group {
    /// The first describing row (a closing row only while no describing row has come).
    first: Row,
    occurred: i64,
    updated: i64,
    timed: bool,
    closed: bool,
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
    for (i, RawRow { cells, raw }) in rows.into_iter().enumerate() {
        let r = match cells.and_then(|cells| row(m, &cells, now)) {
            Ok(r) => r,
            Err(error) => {
                n.row_errors.push(RowError { row: i + 1, error, raw });
                continue;
            }
        };
        match by_key.get(&r.key) {
            Some(&g) => {
                let g = &mut groups[g];
                g.closed |= r.closing;
                if r.timed {
                    g.occurred = if g.timed { g.occurred.min(r.occurred) } else { r.occurred };
                    g.updated = if g.timed { g.updated.max(r.updated) } else { r.updated };
                    g.timed = true;
                }
                g.units.extend(units_of(r.unit.as_deref()));
                if g.first.closing && !r.closing {
                    g.first = r;
                }
            }
            None => {
                by_key.insert(r.key.clone(), groups.len());
                let units = units_of(r.unit.as_deref()).collect();
                groups.push(Group {
                    occurred: r.occurred,
                    updated: r.updated,
                    timed: r.timed,
                    closed: r.closing,
                    units,
                    first: r,
                });
            }
        }
    }
    let source = source.unwrap_or(&m.source);
    for g in groups {
        let r = g.first;
        // A closing record names no call type: dedup gives the close the category it
        // remembers.
        let category = if r.call_type.is_empty() { Category::UNKNOWN } else { m.category(&r.call_type) };
        n.incidents.push(Incident {
            id: Incident::make_id(source, &r.key),
            source: source.to_owned(),
            source_id: r.key,
            // An untimed close has no version of its own: 0 never counts as newer, so a
            // removal event re-sent on every poll closes the incident once.
            version: if g.timed { g.updated } else { 0 },
            category,
            raw_type: r.call_type,
            severity: r.severity,
            urgency: Urgency::Unspecified,
            certainty: Certainty::Unspecified,
            status: if g.closed { IncidentStatus::Closed } else { r.status },
            occurred_at: Timestamp(g.occurred),
            updated_at: Timestamp(g.updated),
            expires_at: None,
            location: r.location,
            areas: Vec::new(),
            sensitive: Sensitive {
                names: r.names,
                phones: r.phones,
                medical_notes: Vec::new(),
                unit_count: u32::try_from(g.units.len()).unwrap_or(u32::MAX),
                address: r.address,
                free_text: r.free_text,
                texts: Vec::new(),
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
    use crate::mapping::TimeFormat;
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

    fn with(extra_top: &str, replace: &[(&str, &str)]) -> Mapping {
        let mut text = crate::mapping::tests::MINIMAL.to_owned();
        for (a, b) in replace {
            assert!(text.contains(a), "{a}");
            text = text.replace(a, b);
        }
        text = text.replacen("[fields]", &format!("{extra_top}\n[fields]"), 1);
        Mapping::parse(&text, "m.toml").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn headerless_csv_is_read_with_the_mappings_columns() {
        let m = with("columns = [\"no\", \"type\", \"y\", \"x\", \"when\"]\nhas_header = false", &[]);
        let csv = "1,Robbery,41.88,-87.63,03/08/2020 01:30\n2,Robbery,41.89,-87.62,03/08/2020 01:40\n";
        let n = parse(&m, csv.as_bytes(), None, NOW).expect("two rows");
        assert_eq!((n.rows, n.incidents.len()), (2, 2), "{:?}", n.row_errors);
        assert_eq!(n.incidents[0].id, "mini-pd:1");
        // `columns` alone implies no header: the first line is data.
        let m = with("columns = [\"no\", \"type\", \"y\", \"x\", \"when\"]", &[]);
        assert_eq!(parse(&m, csv.as_bytes(), None, NOW).expect("rows").incidents.len(), 2);
        // A header present but named differently: skipped, the mapping's names are used.
        let m = with("columns = [\"no\", \"type\", \"y\", \"x\", \"when\"]\nhas_header = true", &[]);
        let with_header = format!("ID,NATURE,LAT,LON,TIME\n{csv}");
        assert_eq!(parse(&m, with_header.as_bytes(), None, NOW).expect("rows").incidents.len(), 2);
        let narrow = "ID,NATURE\n1,Robbery\n";
        assert_eq!(parse(&m, narrow.as_bytes(), None, NOW).expect_err("width").reason_code(), "malformed_csv");
        // A short row is one bad row, not a bad payload.
        let m = with("columns = [\"no\", \"type\", \"y\", \"x\", \"when\"]", &[]);
        let n = parse(&m, format!("{csv}3,Robbery\n").as_bytes(), None, NOW).expect("rows");
        assert_eq!((n.incidents.len(), n.row_errors[0].row), (2, 3));
        assert_eq!(n.row_errors[0].error.reason_code(), "malformed_csv");
    }

    #[test]
    fn column_declarations_are_checked_at_start() {
        let base = crate::mapping::tests::MINIMAL;
        let cases = [
            (base.replacen("[fields]", "has_header = false\n[fields]", 1), "has_header"),
            (base.replacen("[fields]", "columns = [\"no\", \"type\", \"y\", \"x\"]\n[fields]", 1), "`when`"),
            (base.replacen("[fields]", "columns = [\"no\", \"no\"]\n[fields]", 1), "listed twice"),
            (
                base.replace("kind = \"csv\"", "kind = \"json\"").replacen(
                    "[fields]",
                    "columns = [\"a\"]\n[fields]",
                    1,
                ),
                "columns",
            ),
        ];
        for (text, want) in cases {
            let e = Mapping::parse(&text, "m.toml").expect_err(want).to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn end_of_day_24_00_is_the_next_midnight() {
        // 2020-03-07 24:00 in Chicago is 2020-03-08 00:00 CST, before that night's DST change.
        let csv = "no,type,y,x,when\n1,Robbery,41.88,-87.63,03/07/2020 24:00\n";
        let n = parse(&mini(), csv.as_bytes(), None, NOW).expect("24:00");
        assert_eq!(n.incidents[0].occurred_at, Timestamp(1_583_647_200_000));
        // The day is added to the local date: 24:00 on the day DST ends is still midnight.
        let csv = "no,type,y,x,when\n1,Robbery,41.88,-87.63,10/31/2020 24:00\n";
        let n = parse(&mini(), csv.as_bytes(), None, NOW).expect("24:00");
        assert_eq!(n.incidents[0].occurred_at, Timestamp(1_604_206_800_000));
        // Only 24:00 with zero minutes and seconds.
        for bad in ["03/07/2020 24:30", "03/07/2020 25:00"] {
            let csv = format!("no,type,y,x,when\n1,Robbery,41.88,-87.63,{bad}\n");
            let e = parse(&mini(), csv.as_bytes(), None, NOW).expect_err(bad);
            assert_eq!(e.reason_code(), "invalid_time", "{bad}");
        }
        // A mapping can refuse it.
        let strict =
            with("", &[("formats = [\"%m/%d/%Y %H:%M\"]", "formats = [\"%m/%d/%Y %H:%M\"]\naccept_24_00 = false")]);
        let csv = "no,type,y,x,when\n1,Robbery,41.88,-87.63,03/07/2020 24:00\n";
        assert_eq!(parse(&strict, csv.as_bytes(), None, NOW).expect_err("strict").reason_code(), "invalid_time");
    }

    #[test]
    fn end_of_day_finds_only_a_standalone_zero_24() {
        assert_eq!(end_of_day("2020-01-01 24:00:00").as_deref(), Some("2020-01-01 00:00:00"));
        assert_eq!(end_of_day("2020-01-01T24:00:00.000-05:00").as_deref(), Some("2020-01-01T00:00:00.000-05:00"));
        assert_eq!(end_of_day("1/2/2020 24:00").as_deref(), Some("1/2/2020 00:00"));
        for none in
            ["2020-01-01 124:00", "2020-01-01 24:00:01", "2020-01-01 24:001", "2020-01-01 23:59:59", "24:00:00.5"]
        {
            assert_eq!(end_of_day(none), None, "{none}");
        }
        let spec = |f: &str| TimeFormat::WithOffset(f.to_owned());
        assert_eq!(
            parse_end_of_day(&spec("%Y-%m-%d %H:%M:%S%z"), "2020-01-01 24:00:00+0000", chrono_tz::UTC),
            Some(1_577_923_200_000)
        );
        assert_eq!(
            parse_end_of_day(&TimeFormat::Rfc3339, "2020-01-01T24:00:00Z", chrono_tz::UTC),
            Some(1_577_923_200_000)
        );
    }

    #[test]
    fn blank_ids_fall_back_to_a_stable_hash_of_declared_fields() {
        let m = with(
            "",
            &[(
                "id = { columns = [\"no\"] }",
                "id = { columns = [\"no\"], fallback_hash = [\"when\", \"y\", \"x\", \"type\"] }",
            )],
        );
        let a = "no,type,y,x,when\n,Robbery,41.88,-87.63,03/08/2020 01:30\n7,Robbery,41.88,-87.63,03/08/2020 01:30\n";
        let b = "no,type,y,x,when\n9,Robbery,41.8,-87.6,03/08/2020 01:00\n,Robbery,41.88,-87.63,03/08/2020 01:30\n";
        let na = parse(&m, a.as_bytes(), None, NOW).expect("a");
        let nb = parse(&m, b.as_bytes(), None, NOW).expect("b");
        let hashed = &na.incidents[0].source_id;
        assert!(hashed.starts_with('h') && hashed.len() == 17, "{hashed}");
        // The same row in another export, at another position: the same id.
        assert_eq!(&nb.incidents[1].source_id, hashed);
        assert_eq!(na.incidents[1].source_id, "7");
        // Another address (here: place) is another incident.
        let c = "no,type,y,x,when\n,Robbery,41.89,-87.63,03/08/2020 01:30\n";
        assert_ne!(&parse(&m, c.as_bytes(), None, NOW).expect("c").incidents[0].source_id, hashed);
        // Without the option a blank id is still a missing field.
        assert_eq!(
            parse(&mini(), a.as_bytes(), None, NOW).expect("one").row_errors[0].error.reason_code(),
            "missing_field"
        );
    }

    const STATE_FEED: &str = r#"
name = "state"
kind = "json"
source = "state-cad"
records = "/incidents"
id = { columns = ["/id"] }
[fields]
call_type = "/type"
lat = "/lat"
lng = "/lng"
[times.occurred_at]
columns = ["/received"]
formats = ["rfc3339"]
[closing]
id_only = true
column = "/event"
values = ["removed"]
"#;

    #[test]
    fn closing_records_close_with_only_an_id() {
        let m = Mapping::parse(STATE_FEED, "s.toml").expect("valid");
        let feed = r#"{"incidents":[
            {"id":"1","type":"STRUCTURE FIRE","lat":41.88,"lng":-87.63,"received":"2026-11-24T06:00:00Z"},
            {"id":"2"},
            {"id":"3","event":"Removed"},
            {"id":"4","event":"updated"},
            {"id":"5","type":"ROBBERY","event":"removed","lat":41.8,"lng":-87.6,"received":"2026-11-24T05:00:00Z"}
        ]}"#;
        let now = Timestamp(1_795_500_000_000 + 60_000);
        let n = parse(&m, feed.as_bytes(), None, now).expect("feed");
        let by_id = |id: &str| n.incidents.iter().find(|i| i.source_id == id);
        let open = by_id("1").expect("open");
        assert_eq!((open.status, open.version), (IncidentStatus::Active, 1_795_500_000_000));
        for id in ["2", "3"] {
            let c = by_id(id).expect(id);
            assert_eq!((c.status, c.location, c.version), (IncidentStatus::Closed, None, 0), "{id}");
            assert_eq!(c.category, Category::UNKNOWN);
            // A bare close crosses the wire like any incident.
            assert_eq!(Incident::try_from(hexcast_proto::v1::Incident::from(c)).as_ref(), Ok(c));
        }
        // An id and an unknown event with nothing else is a bad row, not a close.
        assert!(by_id("4").is_none());
        assert_eq!((n.row_errors[0].row, n.row_errors[0].error.reason_code()), (4, "missing_field"));
        // A full record marked removed closes with what it says.
        let full = by_id("5").expect("full close");
        assert_eq!((full.status, full.category.as_str()), (IncidentStatus::Closed, "crime.robbery"));
        assert!(full.location.is_some());
    }

    #[test]
    fn closing_declarations_are_checked_at_start() {
        let cases = [
            (STATE_FEED.replace("column = \"/event\"\n", ""), "closing.values"),
            (STATE_FEED.replace("values = [\"removed\"]\n", ""), "closing.values"),
            (STATE_FEED.replace("id_only = true\ncolumn = \"/event\"\nvalues = [\"removed\"]\n", ""), "closing"),
        ];
        for (text, want) in cases {
            let e = Mapping::parse(&text, "s.toml").expect_err(want).to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
    }
}
