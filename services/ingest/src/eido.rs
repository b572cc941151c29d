//! `eido-json`: NENA EIDO (NENA-STA-021) incident objects, bare, in an array, or inside a
//! notify message (`event.notification[]`). Identity is the EIDO `$id`, version its last
//! update time (`lastUpdateTimeStamp`, tolerating the `lastUpdateTimestamp` casing of real
//! samples). Location comes from the PIDF-LO XML carried as a string
//! (`locationByValue`): GML Point, Circle, Ellipse (as its circumscribed circle) and Polygon;
//! a civic address is kept only as sensitive data, never geocoded. It must never follow a
//! `locationByReferenceUrl` or any other URL: an EIDO whose only coordinates sit behind a
//! reference has no location here.

use chrono::DateTime;
use hexcast_core::{Area, Certainty, Incident, IncidentStatus, LatLng, Sensitive, Severity, Timestamp, Urgency};
use serde_json::{Map, Value};

use crate::cap::closed_polygon;
use crate::xml::{self, Element};
use crate::{IngestError, Normalized, RowError, category_for, check_time};

/// The value of `key`, compared case-insensitively (real EIDOs vary the casing).
fn get<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).or_else(|| obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v))
}

fn get_str<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    get(obj, key).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty())
}

/// A component list: EIDO allows an array or (in older samples) a single object.
fn components<'a>(eido: &'a Map<String, Value>, key: &str) -> Vec<&'a Map<String, Value>> {
    match get(eido, key) {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_object).collect(),
        Some(Value::Object(o)) => vec![o],
        _ => Vec::new(),
    }
}

fn time(field: &'static str, s: &str) -> Result<Timestamp, IngestError> {
    DateTime::parse_from_rfc3339(s)
        .map(|d| Timestamp(d.timestamp_millis()))
        .map_err(|e| IngestError::InvalidTime { field, detail: format!("`{s}`: {e}") })
}

fn is_eido(o: &Map<String, Value>) -> bool {
    o.contains_key("$id") && o.keys().any(|k| k.ends_with("Component") || k == "eidoVersion")
}

/// Every EIDO in the document.
fn eidos(doc: &Value) -> Vec<&Map<String, Value>> {
    match doc {
        Value::Array(items) => items.iter().filter_map(Value::as_object).filter(|o| is_eido(o)).collect(),
        Value::Object(o) if is_eido(o) => vec![o],
        Value::Object(o) => match o.get("event").and_then(|e| e.get("notification")) {
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_object).filter(|o| is_eido(o)).collect(),
            Some(Value::Object(n)) if is_eido(n) => vec![n],
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// Parses an EIDO JSON document into incidents.
pub(crate) fn parse(payload: &[u8], source: Option<&str>, now: Timestamp) -> Result<Normalized, IngestError> {
    let doc: Value = serde_json::from_slice(payload).map_err(|e| IngestError::MalformedJson(e.to_string()))?;
    let found = eidos(&doc);
    if found.is_empty() {
        return Err(IngestError::NoIncident("no eido object (a subscription or control message)"));
    }
    let mut n = Normalized::default();
    for eido in found {
        n.rows += 1;
        match parse_eido(eido, source, now) {
            Ok(i) => n.incidents.push(i),
            Err(error) => n.row_errors.push(RowError { row: n.rows, error, raw: Vec::new() }),
        }
    }
    if n.incidents.is_empty() {
        return Err(n.row_errors.first().map_or(IngestError::NoLocation, |e| e.error.clone()));
    }
    Ok(n)
}

/// Text values of every key containing `needle` (case-insensitive), strings or string arrays.
fn texts_with(obj: &Map<String, Value>, needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in obj {
        if !k.to_ascii_lowercase().contains(needle) {
            continue;
        }
        match v {
            Value::String(s) if !s.trim().is_empty() => out.push(s.trim().to_owned()),
            Value::Array(items) => out.extend(items.iter().filter_map(Value::as_str).map(str::to_owned)),
            _ => {}
        }
    }
    out
}

fn refs(obj: &Map<String, Value>, key: &str) -> Vec<String> {
    let one = |v: &Value| v.get("$ref").and_then(Value::as_str).map(str::to_owned);
    match get(obj, key) {
        Some(Value::Array(items)) => items.iter().filter_map(one).collect(),
        Some(v) => one(v).into_iter().collect(),
        None => Vec::new(),
    }
}

/// Names and phone numbers from jCards (`["fn", {}, "text", "Name"]`) and `tel:` URIs.
fn contacts(v: &Value, names: &mut Vec<String>, phones: &mut Vec<String>, depth: usize) {
    if depth > 32 {
        return;
    }
    match v {
        Value::Array(items) => {
            if let [Value::String(prop), _, _, Value::String(val), ..] = items.as_slice() {
                match prop.as_str() {
                    "fn" => names.push(val.clone()),
                    "tel" => phones.push(val.trim_start_matches("tel:").to_owned()),
                    _ => {}
                }
            }
            for i in items {
                contacts(i, names, phones, depth + 1);
            }
        }
        Value::Object(o) => o.values().for_each(|x| contacts(x, names, phones, depth + 1)),
        Value::String(s) if s.starts_with("tel:") => phones.push(s.trim_start_matches("tel:").to_owned()),
        _ => {}
    }
}

fn parse_eido(eido: &Map<String, Value>, source: Option<&str>, now: Timestamp) -> Result<Incident, IngestError> {
    let eido_id = get_str(eido, "$id").ok_or(IngestError::MissingField("$id"))?;
    let updated = time(
        "lastUpdateTimeStamp",
        get_str(eido, "lastUpdateTimeStamp").ok_or(IngestError::MissingField("lastUpdateTimeStamp"))?,
    )?;
    let incident = components(eido, "incidentComponent").into_iter().next();
    let source_id = incident.and_then(|i| get_str(i, "incidentTrackingIdentifier")).unwrap_or(eido_id).to_owned();
    let source = source
        .map(str::to_owned)
        .or_else(|| get_str(eido, "issuingElementIdentification").map(str::to_owned))
        .unwrap_or_else(|| "eido".to_owned());
    let raw_types = incident.map(|i| texts_with(i, "incidenttype")).unwrap_or_default();
    let raw_type = raw_types.join("; ");
    let category = category_for(&raw_type.replace(['.', '/', '_'], " "));
    let status = incident
        .map(|i| texts_with(i, "status"))
        .unwrap_or_default()
        .iter()
        .find_map(|s| match s.to_ascii_lowercase().as_str() {
            s if s.contains("cancel") => Some(IncidentStatus::Cancelled),
            s if s.contains("close") || s.contains("complete") => Some(IncidentStatus::Closed),
            s if s.contains("active") || s.contains("open") || s.contains("dispatch") => Some(IncidentStatus::Active),
            _ => None,
        })
        .unwrap_or(IncidentStatus::Active);
    // Locations the incident names, else every location of the EIDO.
    let wanted = incident.map(|i| refs(i, "locationReference")).unwrap_or_default();
    let mut location = None;
    let mut areas = Vec::new();
    let mut addresses = Vec::new();
    let mut first_error = None;
    for loc in components(eido, "locationComponent") {
        if !wanted.is_empty() && !get_str(loc, "$id").is_some_and(|id| wanted.iter().any(|w| w == id)) {
            continue;
        }
        let Some(pidf) = get_str(loc, "locationByValue") else { continue };
        match pidf_lo(pidf) {
            Ok(p) => {
                if location.is_none() {
                    location = p.point;
                }
                areas.extend(p.areas);
                addresses.extend(p.civic);
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if location.is_none() && areas.is_empty() {
        return Err(first_error.unwrap_or(IngestError::NoLocation));
    }
    let occurred = incident
        .and_then(|i| get_str(i, "incidentCreationTimestamp"))
        .or_else(|| components(eido, "callComponent").into_iter().find_map(|c| get_str(c, "callStartTimestamp")))
        .map(|t| time("incidentCreationTimestamp", t))
        .transpose()?
        .unwrap_or(updated);
    let occurred_at = check_time("occurred_at", occurred, now)?;
    let mut names = Vec::new();
    let mut phones = Vec::new();
    for key in ["personComponent", "callbackComponent"] {
        for c in components(eido, key) {
            contacts(&Value::Object(c.clone()), &mut names, &mut phones, 0);
        }
    }
    names.dedup();
    phones.dedup();
    let notes = components(eido, "notesComponent")
        .into_iter()
        .filter_map(|c| get_str(c, "notesActionComments").or_else(|| get_str(c, "noteText")))
        .collect::<Vec<_>>()
        .join("\n");
    Ok(Incident {
        id: Incident::make_id(&source, &source_id),
        source,
        source_id,
        version: updated.0,
        category,
        raw_type,
        severity: Severity::Unspecified,
        urgency: Urgency::Unspecified,
        certainty: Certainty::Unspecified,
        status,
        occurred_at,
        updated_at: updated,
        expires_at: None,
        location,
        areas,
        sensitive: Sensitive {
            names,
            phones,
            medical_notes: Vec::new(),
            unit_count: u32::try_from(components(eido, "vehicleComponent").len()).unwrap_or(u32::MAX),
            address: addresses.join("; "),
            free_text: notes,
            texts: Vec::new(),
        },
        references: None,
        community_threat: None,
        published_at: None,
    })
}

/// What one PIDF-LO document says about a location.
#[derive(Debug, Default)]
struct PidfLocation {
    point: Option<LatLng>,
    areas: Vec<Area>,
    civic: Option<String>,
}

/// GML `pos`/`posList` in EPSG:4326 order: latitude first.
fn gml_coords(text: &str) -> Result<Vec<LatLng>, IngestError> {
    let nums: Vec<f64> = text
        .split_whitespace()
        .map(|t| t.parse::<f64>().map_err(|_| IngestError::InvalidCoordinates(format!("`{t}`"))))
        .collect::<Result<_, _>>()?;
    // A 3D position (lat lon alt) is only accepted alone; lists are 2D.
    let pairs: Vec<LatLng> = if nums.len() == 3 {
        vec![LatLng::new(nums[0], nums[1]).map_err(|e| IngestError::InvalidCoordinates(e.to_string()))?]
    } else if nums.len().is_multiple_of(2) && !nums.is_empty() {
        nums.chunks_exact(2)
            .map(|c| LatLng::new(c[0], c[1]).map_err(|e| IngestError::InvalidCoordinates(e.to_string())))
            .collect::<Result<_, _>>()?
    } else {
        return Err(IngestError::InvalidCoordinates(format!("`{}`", text.trim())));
    };
    Ok(pairs)
}

fn pos(el: &Element) -> Result<LatLng, IngestError> {
    let p = el.child("pos").ok_or(IngestError::MissingField("gml:pos"))?;
    gml_coords(&p.text)?.first().copied().ok_or(IngestError::MissingField("gml:pos"))
}

/// A length; PIDF-LO shapes use metres (`urn:ogc:def:uom:EPSG::9001`), the only unit accepted.
fn metres(el: &Element, name: &'static str) -> Result<f64, IngestError> {
    let v = el.child(name).ok_or(IngestError::MissingField(name))?;
    let x: f64 = v.text.trim().parse().map_err(|_| IngestError::InvalidCircle(format!("`{}`", v.text.trim())))?;
    Ok(x)
}

fn circle(center: LatLng, radius_m: f64) -> Result<Area, IngestError> {
    Area::circle(center, radius_m).map_err(|e| IngestError::InvalidCircle(e.to_string()))
}

fn pidf_lo(text: &str) -> Result<PidfLocation, IngestError> {
    let roots = xml::parse_str(text)?;
    let mut out = PidfLocation::default();
    for root in &roots {
        let mut found = Vec::new();
        for name in ["Point", "Circle", "Ellipse", "Polygon", "civicAddress"] {
            root.descendants(name, &mut found);
        }
        for el in found {
            match el.name.as_str() {
                "Point" => {
                    out.point.get_or_insert(pos(el)?);
                }
                "Circle" => out.areas.push(circle(pos(el)?, metres(el, "radius")?)?),
                // The circumscribed circle covers the whole ellipse: nobody inside is missed.
                "Ellipse" => {
                    let r = metres(el, "semiMajorAxis")?.max(metres(el, "semiMinorAxis").unwrap_or(0.0));
                    out.areas.push(circle(pos(el)?, r)?);
                }
                "Polygon" => {
                    let mut rings = Vec::new();
                    el.descendants("LinearRing", &mut rings);
                    let ring = rings.first().ok_or(IngestError::InvalidPolygon("no LinearRing".to_owned()))?;
                    let coords = match ring.child("posList") {
                        Some(list) => gml_coords(&list.text)?,
                        None => ring.children_named("pos").map(|p| gml_coords(&p.text)).try_fold(
                            Vec::new(),
                            |mut acc, c| {
                                acc.extend(c?);
                                Ok::<_, IngestError>(acc)
                            },
                        )?,
                    };
                    let points = coords.iter().map(|p| geo::Coord { x: p.lng(), y: p.lat() }).collect();
                    out.areas.push(closed_polygon(points)?);
                }
                "civicAddress" => {
                    let parts: Vec<&str> =
                        el.children.iter().map(|c| c.text.trim()).filter(|t| !t.is_empty()).collect();
                    if !parts.is_empty() {
                        out.civic.get_or_insert(parts.join(" "));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use hexcast_core::ReasonCode;

    const NOW: Timestamp = Timestamp(1_800_000_000_000);

    /// A complete EIDO of our own: incident component, a PIDF-LO with a point, a circle, an
    /// ellipse and a polygon, and a civic address.
    pub(crate) fn sample(geometry: &str) -> String {
        let pidf = format!(
            r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:gp="urn:ietf:params:xml:ns:pidf:geopriv10" xmlns:gml="http://www.opengis.net/gml" xmlns:gs="http://www.opengis.net/pidflo/1.0"><gp:geopriv><gp:location-info>{geometry}<civicAddress><A1>PA</A1><A3>Norristown</A3><HNO>12</HNO><RD>Elm</RD></civicAddress></gp:location-info></gp:geopriv></presence>"#
        );
        serde_json::json!({
            "$id": "urn:emergency:uid:incidentid:1:example.org",
            "lastUpdateTimestamp": "2026-01-05T10:00:00-05:00",
            "eidoVersion": "1.0",
            "incidentComponent": {
                "$id": "inc-1",
                "incidentTrackingIdentifier": "urn:emergency:uid:incidentid:1:example.org",
                "incidentTypeCommonRegistryText": ["Police.Robbery"],
                "incidentStatusCommonRegistryText": ["Active"],
                "locationReference": [{"$ref": "loc-1"}]
            },
            "locationComponent": [
                {"$id": "loc-1", "locationByValue": pidf},
                {"$id": "loc-2", "locationByReferenceUrl": "https://lrf.example.org/x"}
            ],
            "personComponent": [{"$id": "p1", "vcard": ["vcard", [["fn", {}, "text", "Jo Caller"], ["tel", {}, "uri", "tel:+1-555-0100"]]]}]
        })
        .to_string()
    }

    fn run(doc: &str) -> Result<Normalized, String> {
        parse(doc.as_bytes(), None, NOW).map_err(|e| e.reason_code().to_owned())
    }

    #[test]
    fn gml_shapes_are_read_latitude_first() {
        let geometry = r#"<gml:Point><gml:pos>40.12 -75.34</gml:pos></gml:Point>
            <gs:Circle><gml:pos>40.1 -75.3</gml:pos><gs:radius uom="urn:ogc:def:uom:EPSG::9001">250</gs:radius></gs:Circle>
            <gs:Ellipse><gml:pos>40.1 -75.3</gml:pos><gs:semiMajorAxis>300</gs:semiMajorAxis><gs:semiMinorAxis>100</gs:semiMinorAxis><gs:orientation>10</gs:orientation></gs:Ellipse>
            <gml:Polygon><gml:exterior><gml:LinearRing><gml:posList>40 -75 40.1 -75 40.1 -75.1 40 -75</gml:posList></gml:LinearRing></gml:exterior></gml:Polygon>"#;
        let n = run(&sample(geometry)).expect("valid");
        let i = &n.incidents[0];
        assert_eq!(i.location, Some(LatLng::new(40.12, -75.34).expect("valid")));
        assert_eq!(i.category.as_str(), "crime.robbery");
        assert_eq!(i.areas.len(), 3);
        assert!(matches!(i.areas[1], Area::Circle { radius_m, .. } if radius_m == 300.0));
        let Area::Polygon(p) = &i.areas[2] else { panic!("polygon") };
        assert_eq!(p.exterior().0[2], geo::Coord { x: -75.1, y: 40.1 });
        assert_eq!(i.sensitive.address, "PA Norristown 12 Elm");
        assert_eq!(i.sensitive.names, vec!["Jo Caller"]);
        assert_eq!(i.sensitive.phones, vec!["+1-555-0100"]);
        assert_eq!(i.version, Timestamp(1_767_625_200_000).0);
    }

    #[test]
    fn civic_address_only_and_control_messages_are_rejected() {
        assert_eq!(run(&sample("")).expect_err("civic only"), "no_location");
        assert_eq!(run(r#"{"subscribe":{"requestId":"x"}}"#).expect_err("control"), "no_incident");
        assert_eq!(run("[1,2").expect_err("json"), "malformed_json");
        let bad = sample("<gml:Point><gml:pos>95 -75</gml:pos></gml:Point>");
        assert_eq!(run(&bad).expect_err("range"), "invalid_coordinates");
    }
}
