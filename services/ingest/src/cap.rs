//! `cap-xml`: OASIS Common Alerting Protocol 1.0, 1.1 and 1.2, bare or inside an Atom,
//! RSS or EDXL-DE envelope (every `<alert>` anywhere in the document is read). One incident
//! per `<info>` block, except that an `<info>` block in another language for the same areas
//! is a translation: it is folded into the earlier one, whose incident keeps every
//! language's text (`Sensitive::texts`). An `<area>` with only `<geocode>`s takes its area
//! from the geocode table (`ingest.geocodes_file`). CAP writes coordinates as
//! `lat,lon` and circle radii in kilometres; this module must never hand `geo` a lat/lon
//! swapped polygon or a radius in the wrong unit, and must never fetch a linked alert
//! (index feeds that only link to alerts are rejected as `no_incident`).

use chrono::DateTime;
use std::collections::BTreeSet;

use hexcast_core::{
    Area, Category, Certainty, Incident, IncidentStatus, LatLng, LocalizedText, Sensitive, Severity, Timestamp, Urgency,
};

use crate::geocodes::Geocodes;

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

fn geometry(info: &Element, geocodes: &Geocodes) -> Geometry {
    let mut g = Geometry::default();
    let mut features = BTreeSet::new();
    for area in info.children_named("area") {
        let drawn = g.areas.len() + usize::from(g.point.is_some());
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
        // Codes only where the area draws nothing itself: a drawn shape is more precise.
        if g.areas.len() + usize::from(g.point.is_some()) == drawn {
            for code in area.children_named("geocode") {
                let (Some(name), Some(value)) = (code.child_text("valueName"), code.child_text("value")) else {
                    continue;
                };
                // SAME and UGC codes of one place name the same feature: it is added once.
                if let Some(f) = geocodes.lookup(name, value) {
                    features.insert(f);
                }
            }
        }
    }
    g.areas.extend(features.into_iter().filter_map(|f| geocodes.area(f).cloned()));
    g
}

/// Whether two blocks cover the same place (areas in any order).
fn same_place(a: &Incident, areas: &[Area], point: Option<LatLng>) -> bool {
    a.location == point
        && a.areas.len() == areas.len()
        && a.areas.iter().all(|x| areas.contains(x))
        && areas.iter().all(|x| a.areas.contains(x))
}

/// A category more specific than `other` or `<family>.other`.
fn specific(c: Category) -> bool {
    c != Category::UNKNOWN && !c.as_str().ends_with(".other")
}

fn text_of(info: &Element, language: &str) -> LocalizedText {
    let t = |k| info.child_text(k).unwrap_or_default().to_owned();
    LocalizedText {
        language: language.to_owned(),
        headline: t("headline"),
        description: t("description"),
        instruction: t("instruction"),
    }
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
pub(crate) fn parse(
    payload: &[u8],
    source: Option<&str>,
    now: Timestamp,
    geocodes: &Geocodes,
) -> Result<Normalized, IngestError> {
    let roots = xml::parse(payload)?;
    let found = alerts(&roots);
    if found.is_empty() {
        return Err(IngestError::NoIncident("no cap <alert> in document"));
    }
    let mut n = Normalized::default();
    let mut first_error = None;
    for alert in found {
        n.rows += 1;
        match parse_alert(alert, source, now, geocodes) {
            Ok(incidents) => n.incidents.extend(incidents),
            Err(error) => {
                first_error.get_or_insert_with(|| error.clone());
                n.row_errors.push(RowError { row: n.rows, error, raw: Vec::new() });
            }
        }
    }
    match (n.incidents.is_empty(), first_error) {
        (true, Some(e)) => Err(e),
        (true, None) => Err(IngestError::NoLocation),
        _ => Ok(n),
    }
}

fn parse_alert(
    alert: &Element,
    source: Option<&str>,
    now: Timestamp,
    geocodes: &Geocodes,
) -> Result<Vec<Incident>, IngestError> {
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
    // Blocks without geometry of their own: translations of a block that has one, if any.
    let mut unplaced: Vec<(&Element, String)> = Vec::new();
    for info in infos {
        // CAP's default language is en-US.
        let language = info.child_text("language").unwrap_or("en-US").to_owned();
        let event = info.child_text("event").unwrap_or_default();
        let cap_categories: Vec<&str> = info.children_named("category").map(|c| c.text.trim()).collect();
        let category = category_for(&cap_categories, event, status_text);
        let g = geometry(info, geocodes);
        if g.areas.is_empty() && g.point.is_none() {
            match g.error {
                Some(e) => {
                    first_error.get_or_insert(e);
                }
                None => unplaced.push((info, language)),
            }
            continue;
        }
        // The same place in a language not yet seen there is a translation: one incident,
        // each language's text kept. Event names translate differently ("Wind warning" is
        // weather.storm, "Avertissement de vents" only weather.other), so the category is
        // the most specific one among the languages, not a condition for folding.
        let twin = incidents.iter_mut().find(|i| {
            same_place(i, &g.areas, g.point)
                && (!i.sensitive.texts.iter().any(|t| t.language.eq_ignore_ascii_case(&language))
                    || i.category == category)
        });
        if let Some(i) = twin {
            if !i.sensitive.texts.iter().any(|t| t.language.eq_ignore_ascii_case(&language)) {
                i.sensitive.texts.push(text_of(info, &language));
            }
            if !specific(i.category) && specific(category) {
                i.category = category;
            }
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
                texts: vec![text_of(info, &language)],
                ..Sensitive::default()
            },
            references: references.clone(),
            // CAP is public warning by design: it addresses everyone in the area.
            community_threat: Some(true),
            published_at: None,
        });
    }
    for (info, language) in unplaced {
        let home = incidents
            .iter_mut()
            .find(|i| !i.sensitive.texts.iter().any(|t| t.language.eq_ignore_ascii_case(&language)));
        match home {
            Some(i) => i.sensitive.texts.push(text_of(info, &language)),
            None => {
                first_error.get_or_insert(IngestError::NoLocation);
            }
        }
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
        parse(doc.as_bytes(), None, NOW, &Geocodes::default()).map_err(|e| e.reason_code().to_owned())
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
    fn info_expires_becomes_the_incidents_expiry() {
        let doc = alert("Alert", "", "<circle>-35,147 1</circle>").replace(
            "<certainty>Observed</certainty>",
            "<certainty>Observed</certainty><expires>2020-03-01T11:00:00-05:00</expires>",
        );
        let n = run(&doc).expect("valid");
        assert_eq!(n.incidents[0].expires_at, Some(Timestamp(1_583_078_400_000)));
        let n = run(&alert("Alert", "", "<circle>-35,147 1</circle>")).expect("valid");
        assert_eq!(n.incidents[0].expires_at, None);
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

    fn info(language: &str, event: &str, headline: &str, area: &str) -> String {
        let lang = if language.is_empty() { String::new() } else { format!("<language>{language}</language>") };
        format!(
            "<info>{lang}<category>Met</category><event>{event}</event><urgency>Expected</urgency>\
             <severity>Moderate</severity><certainty>Likely</certainty><headline>{headline}</headline>\
             <description>{headline}: details</description>{area}</info>"
        )
    }

    fn with_infos(infos: &[String]) -> String {
        format!(
            "<alert xmlns=\"urn:oasis:names:tc:emergency:cap:1.2\"><identifier>ML-1</identifier>\
             <sender>ec@example.org</sender><sent>2020-03-01T10:00:00-05:00</sent><status>Actual</status>\
             <msgType>Alert</msgType><scope>Public</scope>{}</alert>",
            infos.concat()
        )
    }

    const BOX: &str =
        "<area><areaDesc>Region</areaDesc><polygon>45.0,-75.0 45.5,-75.0 45.5,-74.0 45.0,-75.0</polygon></area>";
    const BOX_FR: &str =
        "<area><areaDesc>R\u{e9}gion</areaDesc><polygon>45.0,-75.0 45.5,-75.0 45.5,-74.0 45.0,-75.0</polygon></area>";
    const OTHER_BOX: &str =
        "<area><areaDesc>Elsewhere</areaDesc><polygon>46.0,-75.0 46.5,-75.0 46.5,-74.0 46.0,-75.0</polygon></area>";

    #[test]
    fn one_alert_in_two_languages_is_one_incident_with_both_texts() {
        // The French event name maps to a less specific category than the English one;
        // whichever comes first, the pair is one incident with the specific category.
        let fr = info("fr-CA", "Avertissement de vents", "Vents violents", BOX_FR);
        let en = info("en-CA", "Wind warning", "Strong winds", BOX);
        for infos in [[fr.clone(), en.clone()], [en.clone(), fr.clone()]] {
            let n = run(&with_infos(&infos)).expect("valid");
            assert_eq!(n.incidents.len(), 1, "{infos:?}");
            let i = &n.incidents[0];
            assert_eq!(i.category.as_str(), "weather.storm");
            assert_eq!(i.id, "ec@example.org:ML-1");
            let mut langs: Vec<&str> = i.sensitive.texts.iter().map(|t| t.language.as_str()).collect();
            langs.sort_unstable();
            assert_eq!(langs, vec!["en-CA", "fr-CA"]);
            let fr_text = i.sensitive.texts.iter().find(|t| t.language == "fr-CA").expect("french");
            assert_eq!(
                (fr_text.headline.as_str(), fr_text.description.as_str()),
                ("Vents violents", "Vents violents: details")
            );
        }
    }

    #[test]
    fn different_places_or_same_language_events_stay_separate() {
        // Same language, another area: two incidents.
        let n =
            run(&with_infos(&[info("en-CA", "Wind warning", "a", BOX), info("en-CA", "Wind warning", "b", OTHER_BOX)]))
                .expect("valid");
        assert_eq!(n.incidents.len(), 2);
        assert_eq!(n.incidents[1].source_id, "ML-1#2");
        // Same language, same area, another event: two incidents.
        let n = run(&with_infos(&[info("en-US", "Flood warning", "a", BOX), info("", "Tornado warning", "b", BOX)]))
            .expect("valid");
        assert_eq!(n.incidents.len(), 2);
        // The same block twice (no language: CAP's default en-US) adds nothing.
        let n = run(&with_infos(&[info("", "Flood warning", "a", BOX), info("en-US", "Flood warning", "a", BOX)]))
            .expect("valid");
        assert_eq!((n.incidents.len(), n.incidents[0].sensitive.texts.len()), (1, 1));
    }

    #[test]
    fn a_translation_without_its_own_area_joins_the_one_that_has_it() {
        let n = run(&with_infos(&[
            info("en-CA", "Wind warning", "Strong winds", BOX),
            info("fr-CA", "Avertissement de vents", "Vents", ""),
        ]))
        .expect("valid");
        assert_eq!(n.incidents.len(), 1);
        assert_eq!(n.incidents[0].sensitive.texts.len(), 2);
        assert!(n.row_errors.is_empty());
    }

    const GEOCODE_ONLY: &str = "<area><areaDesc>Tuolumne</areaDesc>\
        <geocode><valueName>SAME</valueName><value>006109</value></geocode>\
        <geocode><valueName>UGC</valueName><value>CAC109</value></geocode>\
        <geocode><valueName>SAME</valueName><value>006043</value></geocode>\
        <geocode><valueName>SAME</valueName><value>006999</value></geocode></area>";

    fn sample_geocodes() -> Geocodes {
        Geocodes::parse(include_str!("../tests/fixtures/geocodes-sample.geojson")).expect("fixture")
    }

    #[test]
    fn geocode_only_areas_take_their_areas_from_the_table() {
        let doc = with_infos(&[info("en-US", "Flood warning", "x", GEOCODE_ONLY)]);
        assert_eq!(run(&doc).expect_err("no table"), "no_location");
        let n = parse(doc.as_bytes(), None, NOW, &sample_geocodes()).expect("with table");
        let i = &n.incidents[0];
        // SAME 006109 and UGC CAC109 are one feature; 006043 another; 006999 is not in the
        // table and adds nothing.
        assert_eq!(i.areas.len(), 2);
        assert!(i.areas.iter().all(|a| matches!(a, Area::Polygon(_))));
        let Area::Polygon(p) = &i.areas[0] else { panic!("polygon") };
        assert_eq!(p.exterior().0[0], geo::Coord { x: -120.65, y: 37.63 });
        assert!(Incident::try_from(hexcast_proto::v1::Incident::from(i)).is_ok());
        // A drawn polygon wins over the codes of the same area.
        let drawn = GEOCODE_ONLY
            .replace("</area>", "<polygon>38.0,-120.0 38.1,-120.0 38.1,-119.9 38.0,-120.0</polygon></area>");
        let n =
            parse(with_infos(&[info("en-US", "Flood warning", "x", &drawn)]).as_bytes(), None, NOW, &sample_geocodes())
                .expect("drawn");
        assert_eq!(n.incidents[0].areas.len(), 1);
        // Codes the table does not have: still no location.
        let unknown =
            "<area><areaDesc>x</areaDesc><geocode><valueName>UGC</valueName><value>NYZ072</value></geocode></area>";
        let doc = with_infos(&[info("en-US", "Flood warning", "x", unknown)]);
        assert_eq!(
            parse(doc.as_bytes(), None, NOW, &sample_geocodes()).expect_err("unknown").reason_code(),
            "no_location"
        );
    }
}
