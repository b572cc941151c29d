//! Property tests: no input panics any parser, and what normalizes survives the proto round
//! trip unchanged.

use hexcast_core::{Incident, Stage, StageCtx, Timestamp};
use hexcast_ingest::{Ingest, IngestOut, RawIncident};
use proptest::prelude::*;

const NOW: Timestamp = Timestamp(1_767_225_600_000);
const FORMATS: &[&str] = &["cad-json", "cap-xml", "eido-json", "csv-montco", "csv-sf-fire", "json-example-cad"];

fn run(format: &str, payload: Vec<u8>) -> Vec<Incident> {
    let mut out = Vec::new();
    let raw = RawIncident { format: format.to_owned(), source: None, payload };
    let _ = Ingest::default().process(raw, &StageCtx::at(NOW), &mut out);
    out.into_iter().filter_map(IngestOut::incident).collect()
}

fn round_trips(i: &Incident) -> bool {
    Incident::try_from(hexcast_proto::v1::Incident::from(i)).as_ref() == Ok(i)
}

/// Fragments that steer random input into the parsers' deeper paths.
fn fragments() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("<alert>".to_owned()),
            Just("</alert>".to_owned()),
            Just("<info><area><polygon>".to_owned()),
            Just("</polygon></area></info>".to_owned()),
            Just("<circle>1,2 0</circle>".to_owned()),
            Just("<identifier>x</identifier><sender>s</sender><sent>2020-01-01T00:00:00Z</sent>".to_owned()),
            Just("&amp;&#0;&#x110000;&bogus;".to_owned()),
            Just("<![CDATA[".to_owned()),
            Just("{\"$id\":\"a\",\"eidoVersion\":\"1\",\"locationComponent\":[{\"locationByValue\":\"".to_owned()),
            Just("<gml:Polygon><gml:LinearRing><gml:posList>".to_owned()),
            Just("\"}]}".to_owned()),
            Just("lat,lng,desc,zip,title,timeStamp,twp,addr,e\n".to_owned()),
            Just("\"(37.7, -122.4)\",".to_owned()),
            Just("2015-12-10 @ 17:10:52;".to_owned()),
            "[ -~]{0,12}",
            "[0-9.,+ -]{0,16}",
        ],
        0..24,
    )
    .prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_any_format(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        for f in FORMATS {
            for i in run(f, bytes.clone()) {
                prop_assert!(round_trips(&i));
            }
        }
    }

    #[test]
    fn structured_garbage_never_panics_any_format(text in fragments()) {
        for f in FORMATS {
            for i in run(f, text.clone().into_bytes()) {
                prop_assert!(round_trips(&i));
            }
        }
    }

    #[test]
    fn generated_cap_alerts_round_trip_through_proto(
        lat in -80.0f64..80.0, lng in -179.0f64..179.0, d in 0.001f64..1.0, radius_km in 0.0f64..400.0,
    ) {
        let (a, b) = (lat + d, lng + d);
        let doc = format!(
            "<alert><identifier>p</identifier><sender>s</sender><sent>2025-01-01T00:00:00Z</sent>\
             <msgType>Alert</msgType><info><event>Flood</event><area><areaDesc>x</areaDesc>\
             <polygon>{lat},{lng} {a},{lng} {a},{b} {lat},{lng}</polygon><circle>{lat},{lng} {radius_km}</circle>\
             </area></info></alert>"
        );
        let out = run("cap-xml", doc.into_bytes());
        prop_assert_eq!(out.len(), 1);
        let geo::Coord { x, y } = match &out[0].areas[0] {
            hexcast_core::Area::Polygon(p) => p.exterior().0[0],
            other => return Err(TestCaseError::fail(format!("{other:?}"))),
        };
        prop_assert_eq!((y, x), (lat, lng));
        prop_assert!(round_trips(&out[0]));
    }
}
