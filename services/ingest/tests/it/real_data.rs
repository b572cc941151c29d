//! Every file of the shared real data either normalizes or dead-letters with the reason
//! named here. The data is never inside the repository: it is read from the folder
//! `HEXCAST_DATA` names (see `hexcast-testdata`), and a missing file fails with one line.

use std::path::{Path, PathBuf};

use hexcast_core::{Area, Incident, ReasonCode, Stage, StageCtx, Timestamp};
use hexcast_ingest::{Ingest, Normalized, RawIncident};

/// 2026-01-01: after every sample, so no real time is "in the future".
const NOW: Timestamp = Timestamp(1_767_225_600_000);

fn data(rel: &str) -> PathBuf {
    hexcast_testdata::path(rel)
}

fn normalize(format: &str, path: &Path) -> Result<Normalized, String> {
    let payload = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let raw = RawIncident { format: format.to_owned(), source: None, payload };
    Ingest::default().with_max_payload_bytes(64 << 20).normalize(&raw, NOW).map_err(|e| e.reason_code().to_owned())
}

fn files(dir: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![data(dir)];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.expect("dir entry").path();
            if p.is_dir() { stack.push(p) } else { out.push(p) }
        }
    }
    out.sort();
    out
}

const MONTCO: &str = "cad/montco_pa_911_2015-12_2016-01.csv";
const SF_FIRE: &str = "cad/sf_fire_calls_for_service_2016-12-31_2017-01-07.csv";

/// What each real file becomes: incidents (count, and how many carry areas) or a reason.
#[derive(Debug, PartialEq)]
enum Expect {
    Incidents { count: usize, with_areas: usize },
    Dead(&'static str),
}
use Expect::{Dead, Incidents};

const fn ok(count: usize, with_areas: usize) -> Expect {
    Incidents { count, with_areas }
}

const EXPECTED: &[(&str, Expect)] = &[
    // Only areaDesc/geocode (no polygon, circle or point): nothing to geofence.
    ("cap/google-cap-library/43b080713727.cap", Dead("no_location")),
    ("cap/google-cap-library/KAR0-0306112239-SW.cap", Dead("no_location")),
    ("cap/google-cap-library/amber.atom", Dead("no_location")),
    // RSS/Atom indexes that only link to alerts: never fetched.
    ("cap/google-cap-library/amber.rss", Dead("no_incident")),
    ("cap/google-cap-library/australia.cap", ok(1, 1)),
    // EDXL-DE envelopes; radius-0 circles become the incident's point.
    ("cap/google-cap-library/bushfire.edxlde", ok(7, 0)),
    ("cap/google-cap-library/bushfire_invalid.edxlde", ok(6, 0)),
    ("cap/google-cap-library/bushfire_valid.edxlde", ok(7, 0)),
    // English and French <info> blocks with the same areas fold into one incident.
    ("cap/google-cap-library/canada.cap", ok(1, 1)),
    ("cap/google-cap-library/canada_errors.cap", ok(1, 1)),
    ("cap/google-cap-library/canada_signed.atom", ok(1, 1)),
    ("cap/google-cap-library/canada_signed.cap", ok(1, 1)),
    // Declares UTF-8, holds Latin-1.
    ("cap/google-cap-library/earthquake-iso8859-1.cap", ok(1, 0)),
    ("cap/google-cap-library/earthquake.atom", ok(1, 0)),
    ("cap/google-cap-library/earthquake.cap", ok(1, 0)),
    ("cap/google-cap-library/earthquake_index.atom", Dead("no_incident")),
    ("cap/google-cap-library/earthquake_signed.cap", ok(1, 0)),
    ("cap/google-cap-library/empty_weather_index.atom", Dead("no_incident")),
    ("cap/google-cap-library/invalid.cap", Dead("no_location")),
    ("cap/google-cap-library/invalid.rss", Dead("no_incident")),
    ("cap/google-cap-library/invalid_element.atom", Dead("no_incident")),
    ("cap/google-cap-library/no_entries.atom", Dead("no_location")),
    ("cap/google-cap-library/no_id.atom", Dead("no_incident")),
    ("cap/google-cap-library/no_link.atom", Dead("no_incident")),
    // No <info> at all.
    ("cap/google-cap-library/no_optional_fields.cap", Dead("missing_field")),
    ("cap/google-cap-library/no_title.atom", Dead("no_incident")),
    // "-118.09," pairs with a trailing comma, and an empty <polygon></polygon>.
    ("cap/google-cap-library/noaa_errors.cap", Dead("invalid_polygon")),
    ("cap/google-cap-library/ny_index.rss", Dead("no_incident")),
    ("cap/google-cap-library/thunderstorm.cap", ok(1, 1)),
    ("cap/google-cap-library/wcatwc-warning.cap", Dead("no_location")),
    ("cap/google-cap-library/weather.atom", Dead("no_location")),
    ("cap/google-cap-library/weather.cap", Dead("no_location")),
    ("cap/google-cap-library/weather_index.atom", Dead("no_incident")),
    ("cap/google-cap-library/weather_invalid.atom", Dead("no_location")),
    // XML external-entity attacks.
    ("cap/google-cap-library/xee.atom", Dead("xml_entity_refused")),
    ("cap/google-cap-library/xee.cap", Dead("xml_entity_refused")),
    ("cap/oasiscap/google-PAAQ-4-mg5a94.xml", ok(1, 0)),
    ("cap/oasiscap/ipaws-5e6dd964023f1930ef638846.xml", Dead("no_location")),
    ("cap/oasiscap/ipaws-5e6dd9de023f1930ef6548d9.xml", Dead("missing_field")),
    ("cap/oasiscap/ipaws-5e6ddbad023f1930ef6c1a5a.xml", Dead("no_location")),
    ("cap/oasiscap/ipaws-5e7e0fc5023f1930efcf3deb.xml", ok(1, 1)),
    ("cap/oasiscap/ipaws-5ea321f39fc226a7b44b6874.xml", Dead("no_location")),
    ("cap/oasiscap/nws-5c2cf27b1f56885d61654dc47fa411d5.xml", Dead("no_location")),
    ("cap/oasiscap/v1dot0_appendix_adot1.xml", Dead("no_location")),
    ("cap/oasiscap/v1dot0_appendix_adot2.xml", ok(1, 1)),
    ("cap/oasiscap/v1dot0_appendix_adot3.xml", ok(1, 0)),
    ("cap/oasiscap/v1dot0_appendix_adot4.xml", Dead("no_location")),
    ("cap/oasiscap/v1dot1_appendix_adot1.xml", Dead("no_location")),
    ("cap/oasiscap/v1dot1_appendix_adot2.xml", ok(1, 1)),
    ("cap/oasiscap/v1dot1_appendix_adot3.xml", ok(1, 0)),
    ("cap/oasiscap/v1dot1_appendix_adot4.xml", Dead("no_location")),
    ("cap/oasiscap/v1dot2_appendix_adot1.xml", Dead("no_location")),
    ("cap/oasiscap/v1dot2_appendix_adot2.xml", ok(1, 1)),
    ("cap/oasiscap/v1dot2_appendix_adot3.xml", ok(1, 0)),
    ("cap/oasiscap/v1dot2_appendix_adot4.xml", Dead("no_location")),
    // Subscription and control messages of the EIDO conveyance protocol.
    ("eido/phrsite-eidolib/BasicSubscribe.json", Dead("no_incident")),
    ("eido/phrsite-eidolib/BasicSubscribeResponse.json", Dead("no_incident")),
    ("eido/phrsite-eidolib/BasicUnsubscribe.json", Dead("no_incident")),
    ("eido/phrsite-eidolib/BasicUnsubscribeResponse.json", Dead("no_incident")),
    // EIDOs whose location is a civic address (never geocoded) or a reference URL (never fetched).
    ("eido/phrsite-eidolib/EidoWithJcard.json", Dead("no_location")),
    ("eido/phrsite-eidolib/NotifyResponse.json", Dead("no_incident")),
    ("eido/phrsite-eidolib/NotifyWithEido.json", Dead("no_location")),
    ("eido/phrsite-eidolib/SampleCallTransferEido.json", Dead("no_location")),
    ("eido/phrsite-eidolib/TerminateRequest.json", Dead("no_incident")),
    ("eido/phrsite-eidolib/TerminateResponse.json", Dead("no_incident")),
];

fn format_of(rel: &str) -> &'static str {
    if rel.starts_with("cap/") { "cap-xml" } else { "eido-json" }
}

fn round_trips(i: &Incident) {
    let back = Incident::try_from(hexcast_proto::v1::Incident::from(i)).expect("valid proto");
    assert_eq!(&back, i);
}

#[test]
fn every_cap_and_eido_file_normalizes_or_dead_letters_with_a_named_reason() {
    let mut listed: Vec<PathBuf> = EXPECTED.iter().map(|(rel, _)| data(rel)).collect();
    listed.sort();
    let mut present = files("cap");
    present.extend(files("eido"));
    present.sort();
    assert_eq!(present, listed, "a file under shared/data/cap or eido is not listed (or gone)");
    for (rel, expected) in EXPECTED {
        let got = match normalize(format_of(rel), &data(rel)) {
            Ok(n) => {
                n.incidents.iter().for_each(round_trips);
                ok(n.incidents.len(), n.incidents.iter().filter(|i| !i.areas.is_empty()).count())
            }
            Err(reason) => Dead(Box::leak(reason.into_boxed_str())),
        };
        assert_eq!(&got, expected, "{rel}");
    }
}

#[test]
fn cap_polygons_and_circles_keep_lat_lon_order() {
    // thunderstorm.cap: "38.47,-120.14 38.34,-119.95 ..." (lat,lon).
    let n = normalize("cap-xml", &data("cap/google-cap-library/thunderstorm.cap")).expect("valid");
    let Area::Polygon(p) = &n.incidents[0].areas[0] else { panic!("polygon expected") };
    assert_eq!(p.exterior().0[0], geo::Coord { x: -120.14, y: 38.47 });
    // australia.cap: "-35.3888,147.0598 25.0", a 25 km circle in the southern hemisphere.
    let n = normalize("cap-xml", &data("cap/google-cap-library/australia.cap")).expect("valid");
    for a in &n.incidents[0].areas {
        match a {
            Area::Circle { center, radius_m } => {
                assert!(center.lat() < 0.0 && center.lng() > 100.0, "{center:?}");
                assert!(*radius_m >= 1000.0, "radius in metres: {radius_m}");
            }
            Area::Polygon(p) => assert!(p.exterior().0.iter().all(|c| c.y < 0.0 && c.x > 100.0)),
            other => panic!("unexpected {other:?}"),
        }
    }
    // Radius-0 earthquake epicentres become the point, in the right order.
    let n = normalize("cap-xml", &data("cap/google-cap-library/earthquake.cap")).expect("valid");
    let p = n.incidents[0].location.expect("epicentre");
    assert_eq!((p.lat(), p.lng()), (-16.053, -173.274));
    assert_eq!(n.incidents[0].category.as_str(), "geo.earthquake");
}

#[test]
fn xee_documents_are_refused_through_the_stage() {
    for rel in ["cap/google-cap-library/xee.cap", "cap/google-cap-library/xee.atom"] {
        let payload = std::fs::read(data(rel)).expect("read");
        let raw = RawIncident { format: "cap-xml".into(), source: None, payload };
        let mut out = Vec::new();
        let e = Ingest::default().process(raw, &StageCtx::at(NOW), &mut out).expect_err("refused");
        assert_eq!(e.reason_code(), "xml_entity_refused", "{rel}");
        assert!(out.is_empty());
    }
}

#[test]
fn montco_export_normalizes_all_but_two_geocoding_errors() {
    let n = normalize("csv-montco", &data(MONTCO)).expect("montco");
    assert_eq!(n.rows, 9_226);
    assert_eq!(n.incidents.len(), 9_224);
    assert!(n.incidents.len() * 1000 >= n.rows * 999, "at least 99.9% normalized");
    let reasons: Vec<&str> = n.row_errors.iter().map(|e| e.error.reason_code()).collect();
    assert_eq!(reasons, ["out_of_bounds", "out_of_bounds"]);
    let first = &n.incidents[0];
    // desc "... 2015-12-10 @ 17:10:52;" (EST) is the occurrence; timeStamp the update.
    assert_eq!(first.occurred_at, Timestamp(1_449_785_452_000));
    assert_eq!(first.updated_at, Timestamp(1_449_787_200_000));
    assert_eq!(first.sensitive.address, "REINDEER CT & DEAD END, NEW HANOVER, 19525");
    n.incidents.iter().take(500).for_each(round_trips);
}

#[test]
fn every_montco_title_has_a_category_and_only_transferred_calls_are_other() {
    let text = std::fs::read_to_string(data(MONTCO)).expect("read");
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let titles: std::collections::BTreeSet<String> = reader.records().map(|r| r.expect("row")[4].to_owned()).collect();
    assert_eq!(titles.len(), 83);
    let m = hexcast_ingest::Mapping::parse(include_str!("../../../../config/mappings/montco.toml"), "montco.toml")
        .expect("valid");
    let other: Vec<&String> = titles.iter().filter(|t| m.category(t).as_str() == "other").collect();
    assert!(titles.iter().all(|t| m.has_category_for(t)), "every title is listed");
    assert_eq!(other, ["Fire: TRANSFERRED CALL"]);
}

#[test]
fn sf_fire_unit_rows_group_into_incidents() {
    let n = normalize("csv-sf-fire", &data(SF_FIRE)).expect("sf fire");
    assert_eq!((n.rows, n.incidents.len(), n.row_errors.len()), (7_704, 3_560, 0));
    let units: u32 = n.incidents.iter().map(|i| i.sensitive.unit_count).sum();
    assert_eq!(units as usize, 7_704 - duplicate_unit_rows(), "each distinct unit counted once");
    // 12/31/2016 11:57:56 PM Pacific is 2017-01-01T07:57:56Z.
    let i = n.incidents.iter().find(|i| i.source_id == "16146990").expect("first incident");
    assert_eq!(i.occurred_at, Timestamp(1_483_257_476_000));
    assert_eq!(i.location.map(|p| (p.lat(), p.lng())), Some((37.745858648581, -122.456664252061)));
    assert!(n.incidents.iter().all(|i| i.category.as_str() != "other"));
    n.incidents.iter().take(500).for_each(round_trips);
}

/// Rows repeating a (incident, unit) pair already seen.
fn duplicate_unit_rows() -> usize {
    let text = std::fs::read_to_string(data(SF_FIRE)).expect("read");
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let mut seen = std::collections::HashSet::new();
    reader
        .records()
        .filter(|r| {
            !seen.insert({
                let r = r.as_ref().expect("row");
                (r[2].to_owned(), r[1].to_owned())
            })
        })
        .count()
}

/// A real geocode-only NWS alert (SAME 006037, no polygon) gets its area from a geocode
/// table; the sample table's boxes stand in for real county boundaries.
#[test]
fn real_geocode_only_alert_gets_an_area_from_the_geocode_table() {
    let rel = "cap/google-cap-library/KAR0-0306112239-SW.cap";
    assert_eq!(normalize("cap-xml", &data(rel)), Err("no_location".to_owned()));
    let table = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/geocodes-sample.geojson"))
        .expect("fixture");
    let ingest = Ingest::default().with_geocodes(hexcast_ingest::Geocodes::parse(&table).expect("valid"));
    let raw = RawIncident { format: "cap-xml".into(), source: None, payload: std::fs::read(data(rel)).expect("read") };
    let n = ingest.normalize(&raw, NOW).expect("an area");
    assert_eq!(n.incidents.len(), 1);
    assert!(matches!(n.incidents[0].areas.as_slice(), [Area::Polygon(_)]));
}
