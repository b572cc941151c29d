//! `cap-xml`: OASIS Common Alerting Protocol 1.0, 1.1 and 1.2, bare or inside an Atom,
//! RSS or EDXL-DE envelope (every `<alert>` anywhere in the document is read). One incident
//! per `<info>` block, except that `<info>` blocks repeating an earlier one in another
//! language (same category and areas) are folded into it. CAP writes coordinates as
//! `lat,lon` and circle radii in kilometres; this module must never hand `geo` a lat/lon
//! swapped polygon or a radius in the wrong unit, and must never fetch a linked alert
//! (index feeds that only link to alerts are rejected as `no_incident`).

use chrono::DateTime;
use hexcast_core::{
    Area, Category, Certainty, Incident, IncidentStatus, LatLng, Sensitive, Severity, Timestamp, Urgency,
};

use crate::xml::{self, Element};
use crate::{IngestError, Normalized, RowError, check_time};

fn time(field: &'static str, s: &str) -> Result<Timestamp, IngestError> {
    DateTime::parse_from_rfc3339(s.trim())
        .map(|d| Timestamp(d.timestamp_millis()))
        .map_err(|e| IngestError::InvalidTime { field, detail: format!("`{s}`: {e}") })
}

/// CAP severity words (also used by `cad-json`), case-insensitive.
pub(crate) fn severity(s: Option<&str>) -> Severity {
    match s.map(str::to_ascii_lowercase).as_deref() {
        Some("minor") => Severity::Minor,
        Some("moderate") => Severity::Moderate,
        Some("severe") => Severity::Severe,
        Some("extreme") => Severity::Extreme,
        _ => Severity::Unspecified,
    }
}

fn urgency(s: Option<&str>) -> Urgency {
    match s.map(str::to_ascii_lowercase).as_deref() {
        Some("immediate") => Urgency::Immediate,
        Some("expected") => Urgency::Expected,
        Some("future") => Urgency::Future,
        Some("past") => Urgency::Past,
        _ => Urgency::Unspecified,
    }
}

fn certainty(s: Option<&str>) -> Certainty {
    match s.map(str::to_ascii_lowercase).as_deref() {
        Some("observed") => Certainty::Observed,
        // CAP 1.0's "Very Likely" was folded into "Likely" by 1.1.
        Some("likely" | "very likely") => Certainty::Likely,
        Some("possible") => Certainty::Possible,
        Some("unlikely") => Certainty::Unlikely,
        _ => Certainty::Unspecified,
    }
}

/// Event text first (it is specific), then the CAP `<category>` (coarse).
const EVENT_RULES: &[(&[&str], &str)] = &[
    (&["TEST"], "public.test"),
    (&["TORNADO"], "weather.tornado"),
    (&["TSUNAMI"], "geo.tsunami"),
    (&["EARTHQUAKE", "SEISM"], "geo.earthquake"),
    (&["FLOOD", "INONDATION"], "weather.flood"),
    (&["RED FLAG", "FIRE WEATHER"], "weather.fire"),
    (&["HEAT", "CHALEUR"], "weather.heat"),
    (
        &[
            "THUNDERSTORM",
            "STORM",
            "BLIZZARD",
            "SNOW",
            "WINTER",
            "ICE",
            "WIND",
            "HAIL",
            "NEIGE",
            "ORAGE",
            "TEMP\u{ca}TE",
        ],
        "weather.storm",
    ),
    (&["CHILD ABDUCTION", "AMBER", "ABDUC", "MISSING", "ENDANGERED PERSON"], "public.missing_person"),
    (&["EVACUAT"], "public.evacuation"),
    (&["SHELTER"], "public.shelter"),
    (&["HAZMAT", "HAZARDOUS MATERIAL", "CHEMICAL", "RADIOLOGICAL", "NUCLEAR"], "hazard.hazmat"),
    (&["BOMB"], "hazard.bomb_threat"),
    (&["EXPLOSION"], "hazard.explosion"),
    (&["GRASSFIRE", "GRASS FIRE", "BUSHFIRE", "BUSH FIRE", "WILDFIRE", "FOREST FIRE"], "fire.wildland"),
    (&["SHOOTER", "SHOOTING"], "crime.shooting"),
    (&["LAW ENFORCEMENT"], "crime.other"),
];

fn category_for(cap_categories: &[&str], event: &str, status: &str) -> Category {
    if status.eq_ignore_ascii_case("test") || status.eq_ignore_ascii_case("exercise") {
        return Category::parse("public.test").unwrap_or(Category::UNKNOWN);
    }
    let upper = event.to_uppercase();
    if let Some((_, c)) = EVENT_RULES.iter().find(|(keys, _)| keys.iter().any(|k| upper.contains(k))) {
        return Category::parse(c).unwrap_or(Category::UNKNOWN);
    }
    let by_cap = cap_categories.iter().find_map(|c| match c.to_ascii_lowercase().as_str() {
        "met" => Some("weather.other"),
        "fire" => Some("fire.other"),
        "rescue" => Some("fire.rescue"),
        "health" => Some("medical.other"),
        "cbrne" | "env" => Some("hazard.hazmat"),
        "infra" => Some("hazard.utility"),
        "transport" => Some("traffic.hazard"),
        "security" => Some("crime.other"),
        _ => None,
    });
    by_cap.and_then(|c| Category::parse(c).ok()).unwrap_or(Category::UNKNOWN)
}

/// `lat,lon` pairs separated by whitespace, as CAP writes them.
fn cap_points(s: &str) -> Result<Vec<geo::Coord<f64>>, IngestError> {
    s.split_whitespace()
        .map(|pair| {
            let (lat, lon) = pair.split_once(',').ok_or_else(|| IngestError::InvalidPolygon(format!("`{pair}`")))?;
            let lat: f64 = lat.trim().parse().map_err(|_| IngestError::InvalidPolygon(format!("`{pair}`")))?;
            let lon: f64 = lon.trim().parse().map_err(|_| IngestError::InvalidPolygon(format!("`{pair}`")))?;
            let p = LatLng::new(lat, lon).map_err(|e| IngestError::InvalidPolygon(e.to_string()))?;
            Ok(geo::Coord { x: p.lng(), y: p.lat() })
        })
        .collect()
}

/// A closed ring of at least 4 points (first = last) with 3 distinct ones.
pub(crate) fn closed_polygon(points: Vec<geo::Coord<f64>>) -> Result<Area, IngestError> {
    if points.len() > hexcast_core::geo::MAX_VERTICES {
        return Err(IngestError::InvalidPolygon(format!("{} vertices", points.len())));
    }
    if points.len() < 4 || points.first() != points.last() {
        return Err(IngestError::InvalidPolygon(format!("ring of {} points is not closed", points.len())));
    }
    let mut distinct = points.clone();
    distinct.dedup();
    if distinct.len() < 4 {
        return Err(IngestError::InvalidPolygon("fewer than 3 distinct points".to_owned()));
    }
    Ok(Area::Polygon(geo::Polygon::new(geo::LineString(points), Vec::new())))
}

/// What a `<circle>` is: an area, or (radius 0) just a point.
enum Circle {
    Area(Area),
    Point(LatLng),
}

fn cap_circle(s: &str) -> Result<Circle, IngestError> {
    let bad = || IngestError::InvalidCircle(format!("`{}`", s.trim()));
    let (center, radius) = s.trim().split_once(char::is_whitespace).ok_or_else(bad)?;
    let (lat, lon) = center.split_once(',').ok_or_else(bad)?;
    let lat: f64 = lat.trim().parse().map_err(|_| bad())?;
    let lon: f64 = lon.trim().parse().map_err(|_| bad())?;
    let radius_km: f64 = radius.trim().parse().map_err(|_| bad())?;
    let center = LatLng::new(lat, lon).map_err(|e| IngestError::InvalidCircle(e.to_string()))?;
    if radius_km == 0.0 {
        return Ok(Circle::Point(center));
    }
    Area::circle(center, radius_km * 1000.0).map(Circle::Area).map_err(|e| IngestError::InvalidCircle(e.to_string()))
}

/// Geometry of one `<info>`: areas, a point from radius-0 circles, and the first error seen.
#[derive(Default)]
struct Geometry {
    areas: Vec<Area>,
    point: Option<LatLng>,
    error: Option<IngestError>,
    descriptions: Vec<String>,
}

fn geometry(info: &Element) -> Geometry {
    let mut g = Geometry::default();
    for area in info.children_named("area") {
        if let Some(d) = area.child_text("areaDesc") {
            g.descriptions.push(d.to_owned());
        }
        for poly in area.children_named("polygon") {
            // Real alerts carry empty `<polygon/>` elements: nothing to use, nothing wrong.
            if poly.text.trim().is_empty() {
                continue;
            }
            match cap_points(&poly.text).and_then(closed_polygon) {
                Ok(a) => g.areas.push(a),
                Err(e) => {
                    g.error.get_or_insert(e);
                }
            }
        }
        for circle in area.children_named("circle") {
            if circle.text.trim().is_empty() {
                continue;
            }
            match cap_circle(&circle.text) {
                Ok(Circle::Area(a)) => g.areas.push(a),
                Ok(Circle::Point(p)) => {
                    g.point.get_or_insert(p);
                }
                Err(e) => {
                    g.error.get_or_insert(e);
                }
            }
        }
    }
    g
}

/// The identifier of the last message a CAP `references` list names
/// (`sender,identifier,sent` triples separated by whitespace).
fn referenced_identifier(references: &str) -> Option<String> {
    let last = references.split_whitespace().last()?;
    let mut parts = last.split(',');
    let _sender = parts.next()?;
    parts.next().map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned)
}

fn alerts(roots: &[Element]) -> Vec<&Element> {
    let mut out = Vec::new();
    for r in roots {
        r.descendants("alert", &mut out);
    }
    // An <alert> nested inside another (never valid CAP) would otherwise be read twice.
    out.retain(|a| a.child("identifier").is_some() || a.child("info").is_some());
    out
}

/// Parses a CAP document (or envelope) into incidents.
pub(crate) fn parse(payload: &[u8], source: Option<&str>, now: Timestamp) -> Result<Normalized, IngestError> {
    let roots = xml::parse(payload)?;
    let found = alerts(&roots);
    if found.is_empty() {
        return Err(IngestError::NoIncident("no cap <alert> in document"));
    }
    let mut n = Normalized::default();
    let mut first_error = None;
    for alert in found {
        n.rows += 1;
        match parse_alert(alert, source, now) {
            Ok(incidents) => n.incidents.extend(incidents),
            Err(error) => {
                first_error.get_or_insert_with(|| error.clone());
                n.row_errors.push(RowError { row: n.rows, error });
            }
        }
    }
    match (n.incidents.is_empty(), first_error) {
        (true, Some(e)) => Err(e),
        (true, None) => Err(IngestError::NoLocation),
        _ => Ok(n),
    }
}

fn parse_alert(alert: &Element, source: Option<&str>, now: Timestamp) -> Result<Vec<Incident>, IngestError> {
    let identifier = alert.child_text("identifier").ok_or(IngestError::MissingField("identifier"))?;
    let sender = alert.child_text("sender").ok_or(IngestError::MissingField("sender"))?;
    let sent = time("sent", alert.child_text("sent").ok_or(IngestError::MissingField("sent"))?)?;
    let status_text = alert.child_text("status").unwrap_or("Actual");
    let msg_type = alert.child_text("msgType").unwrap_or("Alert");
    let status = match msg_type.to_ascii_lowercase().as_str() {
        "alert" | "update" => IncidentStatus::Active,
        "cancel" => IncidentStatus::Cancelled,
        // Ack and Error acknowledge other messages; they describe no incident.
        _ => return Err(IngestError::NoIncident("cap msgType is neither alert, update nor cancel")),
    };
    let references = match msg_type.to_ascii_lowercase().as_str() {
        "update" | "cancel" => alert.child_text("references").and_then(referenced_identifier),
        _ => None,
    };
    let source = source.unwrap_or(sender).to_owned();
    let infos: Vec<&Element> = alert.children_named("info").collect();
    if infos.is_empty() {
        return Err(IngestError::MissingField("info"));
    }
    let mut incidents: Vec<Incident> = Vec::new();
    let mut first_error = None;
    for info in infos {
        let event = info.child_text("event").unwrap_or_default();
        let cap_categories: Vec<&str> = info.children_named("category").map(|c| c.text.trim()).collect();
        let category = category_for(&cap_categories, event, status_text);
        let g = geometry(info);
        if g.areas.is_empty() && g.point.is_none() {
            first_error.get_or_insert(g.error.unwrap_or(IngestError::NoLocation));
            continue;
        }
        // A translation of an earlier block (same category, same geometry) adds nothing.
        if incidents.iter().any(|i| i.category == category && i.areas == g.areas && i.location == g.point) {
            continue;
        }
        let occurred = match info.child_text("onset").or_else(|| info.child_text("effective")) {
            Some(t) => time("onset", t)?,
            None => sent,
        };
        let occurred_at = check_time("onset", occurred, now)?;
        let expires_at = info.child_text("expires").map(|t| time("expires", t)).transpose()?;
        let source_id =
            if incidents.is_empty() { identifier.to_owned() } else { format!("{identifier}#{}", incidents.len() + 1) };
        let mut text = Vec::new();
        for key in ["headline", "description", "instruction"] {
            if let Some(t) = info.child_text(key) {
                text.push(t);
            }
        }
        let names: Vec<String> = info.child_text("contact").map(|c| vec![c.to_owned()]).unwrap_or_default();
        incidents.push(Incident {
            id: Incident::make_id(&source, &source_id),
            source: source.clone(),
            source_id,
            version: sent.0,
            category,
            raw_type: if event.is_empty() { cap_categories.join(",") } else { event.to_owned() },
            severity: severity(info.child_text("severity")),
            urgency: urgency(info.child_text("urgency")),
            certainty: certainty(info.child_text("certainty")),
            status,
            occurred_at,
            updated_at: sent,
            expires_at,
            location: g.point,
            areas: g.areas,
            sensitive: Sensitive {
                names,
                address: g.descriptions.join("; "),
                free_text: text.join("\n"),
                ..Sensitive::default()
            },
            references: references.clone(),
            // CAP is public warning by design: it addresses everyone in the area.
            community_threat: Some(true),
            published_at: None,
        });
    }
    if incidents.is_empty() {
        return Err(first_error.unwrap_or(IngestError::NoLocation));
    }
    Ok(incidents)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hexcast_core::ReasonCode;

    const NOW: Timestamp = Timestamp(1_800_000_000_000);

    fn alert(msg_type: &str, refs: &str, area: &str) -> String {
        format!(
            r#"<?xml version="1.0"?><alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
            <identifier>ID-2</identifier><sender>w@example.org</sender><sent>2020-03-01T10:00:00-05:00</sent>
            <status>Actual</status><msgType>{msg_type}</msgType><scope>Public</scope>{refs}
            <info><category>Met</category><event>Tornado Warning</event><urgency>Immediate</urgency>
            <severity>Extreme</severity><certainty>Observed</certainty><area><areaDesc>X</areaDesc>{area}</area></info>
            </alert>"#
        )
    }

    fn run(doc: &str) -> Result<Normalized, String> {
        parse(doc.as_bytes(), None, NOW).map_err(|e| e.reason_code().to_owned())
    }

    #[test]
    fn polygon_is_read_lat_then_lon() {
        let n = run(&alert("Alert", "", "<polygon>38.47,-120.14 38.34,-119.95 38.52,-119.74 38.47,-120.14</polygon>"))
            .expect("valid");
        let i = &n.incidents[0];
        assert_eq!(i.category.as_str(), "weather.tornado");
        assert_eq!(i.severity, Severity::Extreme);
        let Area::Polygon(p) = &i.areas[0] else { panic!("polygon expected") };
        assert_eq!(p.exterior().0[0], geo::Coord { x: -120.14, y: 38.47 });
    }

    #[test]
    fn circle_radius_is_kilometres_and_radius_zero_is_a_point() {
        let n = run(&alert("Alert", "", "<circle>-35.3888,147.0598 25.0</circle><circle>-35,147 0</circle>"))
            .expect("valid");
        let i = &n.incidents[0];
        let Area::Circle { center, radius_m } = &i.areas[0] else { panic!("circle expected") };
        assert_eq!((center.lat(), center.lng(), *radius_m), (-35.3888, 147.0598, 25_000.0));
        assert_eq!(i.location, Some(LatLng::new(-35.0, 147.0).expect("valid")));
    }

    #[test]
    fn cancel_references_the_original_and_closes_it() {
        let refs = "<references>w@example.org,ID-1,2020-03-01T09:00:00-05:00</references>";
        let n = run(&alert("Cancel", refs, "<circle>40,-75 1</circle>")).expect("valid");
        assert_eq!(n.incidents[0].status, IncidentStatus::Cancelled);
        assert_eq!(n.incidents[0].references.as_deref(), Some("ID-1"));
    }

    #[test]
    fn alerts_without_usable_geometry_are_rejected() {
        assert_eq!(run(&alert("Alert", "", "<polygon/>")).expect_err("empty"), "no_location");
        assert_eq!(run(&alert("Alert", "", "<polygon>40,-75 41,-75</polygon>")).expect_err("open"), "invalid_polygon");
        assert_eq!(
            run(&alert("Alert", "", "<polygon>40,-75 41,-75 41,-74 40,-75</polygon><polygon/>"))
                .map(|n| n.incidents.len()),
            Ok(1)
        );
        assert_eq!(run(&alert("Alert", "", "<circle>95,-75 1</circle>")).expect_err("range"), "invalid_circle");
        assert_eq!(run(&alert("Ack", "", "<circle>40,-75 1</circle>")).expect_err("ack"), "no_incident");
        assert_eq!(run("<feed><entry/></feed>").expect_err("index"), "no_incident");
    }
}
