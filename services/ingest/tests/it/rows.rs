//! Bad rows inside a multi-row record: each one is dead-lettered on its own, with its row
//! number and only its own bytes, so that nothing is dropped silently and a fixed row can be
//! re-published as it is. And the geocode table, loaded from configuration as a deployment
//! would.

use hexcast_core::{IntoRecord, ReasonCode, Stage, StageCtx, Timestamp, Topic, header};
use hexcast_ingest::{Ingest, IngestConfig, IngestOut, Mapping, RawIncident, RowDeadLetter};
use proptest::prelude::*;
use prost::Message as _;

const NOW: Timestamp = Timestamp(1_800_000_000_000);

const MAPPING: &str = r#"
name = "rows"
kind = "csv"
source = "rows-pd"
id = { columns = ["no"] }
[fields]
call_type = "type"
lat = "y"
lng = "x"
[times.occurred_at]
columns = ["when"]
formats = ["%Y-%m-%d %H:%M"]
"#;

fn stage() -> Ingest {
    Ingest::default().with_mapping(Mapping::parse(MAPPING, "rows.toml").expect("valid"))
}

fn process(payload: &str) -> (Vec<hexcast_core::Incident>, Vec<RowDeadLetter>) {
    let raw = RawIncident { format: "csv-rows".into(), source: None, payload: payload.as_bytes().to_vec() };
    let mut out = Vec::new();
    let ctx = StageCtx { now: NOW, partition: 3, offset: 41, record_time: None };
    stage().process(raw, &ctx, &mut out).expect("some rows are good");
    let mut incidents = Vec::new();
    let mut dead = Vec::new();
    for o in out {
        match o {
            IngestOut::Incident(i) => incidents.push(*i),
            IngestOut::RowRejected(d) => dead.push(*d),
        }
    }
    (incidents, dead)
}

const HEADER: &str = "no,type,y,x,when\n";

#[test]
fn every_bad_row_is_dead_lettered_with_its_row_number_and_bytes() {
    let csv = format!(
        "{HEADER}1,ROBBERY,41.88,-87.63,2026-11-24 06:00\n2,ROBBERY,0,0,2026-11-24 06:00\n\
         3,ROBBERY,41.88,-87.63,2026-11-24 06:00\n4,ROBBERY,41.88,-87.63,yesterday\n5,ROBBERY\n"
    );
    let (incidents, dead) = process(&csv);
    assert_eq!(incidents.len(), 2);
    let got: Vec<(usize, &str)> = dead.iter().map(|d| (d.row, d.reason)).collect();
    assert_eq!(got, vec![(2, "invalid_coordinates"), (4, "invalid_time"), (5, "malformed_csv")]);
    let d = &dead[0];
    assert_eq!(d.payload, format!("{HEADER}2,ROBBERY,0,0,2026-11-24 06:00\n").into_bytes());
    assert!(d.detail.starts_with("row 2: "), "{}", d.detail);
    assert_eq!((d.key.as_str(), d.partition, d.offset), ("rows-pd", 3, 41));
    // On the wire: the dead-letter topic, the runner's headers plus the row number.
    let rec = IngestOut::RowRejected(Box::new(d.clone())).into_record();
    assert_eq!(rec.topic, Topic::DeadLetter);
    let h = |name: &str| rec.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    assert_eq!(h(header::DL_ROW), Some(b"2".to_vec()));
    assert_eq!(h(header::DL_REASON), Some(b"invalid_coordinates".to_vec()));
    assert_eq!(h(header::DL_STAGE), Some(b"ingest".to_vec()));
    let dl = hexcast_proto::v1::DeadLetter::decode(rec.payload.expect("payload").as_slice()).expect("proto");
    assert_eq!((dl.reason.as_str(), dl.partition, dl.offset), ("invalid_coordinates", 3, 41));
    assert_eq!(dl.headers.get(header::FORMAT).map(Vec::as_slice), Some(b"csv-rows".as_slice()));
    // The dead letter is a CSV payload of its own: re-published, it fails the same way.
    let again = RawIncident { format: "csv-rows".into(), source: None, payload: dl.payload };
    assert_eq!(stage().normalize(&again, NOW).expect_err("same row").reason_code(), "invalid_coordinates");
}

#[test]
fn bad_json_records_are_dead_lettered_as_themselves() {
    let feed = r#"{"calls":[
        {"callId":"1","nature":{"code":"ROBBA"},"location":{"latitude":41.88,"longitude":-87.63},"createdAt":"2026-11-24T06:00:00Z"},
        {"callId":"2","nature":{"code":"ROBBA"},"location":{"latitude":95,"longitude":-87.63},"createdAt":"2026-11-24T06:00:00Z"},
        7
    ]}"#;
    let raw = RawIncident { format: "json-example-cad".into(), source: Some("metro".into()), payload: feed.into() };
    let mut out = Vec::new();
    Ingest::default().process(raw, &StageCtx::at(NOW), &mut out).expect("one good");
    let dead: Vec<RowDeadLetter> = out
        .into_iter()
        .filter_map(|o| match o {
            IngestOut::RowRejected(d) => Some(*d),
            IngestOut::Incident(_) => None,
        })
        .collect();
    assert_eq!(
        dead.iter().map(|d| (d.row, d.reason)).collect::<Vec<_>>(),
        vec![(2, "invalid_coordinates"), (3, "malformed_json")]
    );
    let record: serde_json::Value = serde_json::from_slice(&dead[0].payload).expect("json");
    assert_eq!(record["callId"], "2");
    assert_eq!(dead[1].payload, b"7");
    assert_eq!(dead[0].key, "metro");
}

#[test]
fn the_geocode_table_is_loaded_from_configuration() {
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/geocodes-sample.geojson");
    let cfg: IngestConfig = toml::from_str(&format!("geocodes_file = {fixture:?}")).expect("config");
    let ingest = Ingest::new(&cfg).expect("loads");
    // The shape of a real geocode-only NWS alert (SAME 006037, no polygon).
    let doc = "<alert xmlns=\"urn:oasis:names:tc:emergency:cap:1.1\"><identifier>KAR0</identifier>\
        <sender>w-nws.webmaster@noaa.gov</sender><sent>2026-11-24T06:00:00-08:00</sent><status>Actual</status>\
        <msgType>Alert</msgType><scope>Public</scope><info><category>Met</category>\
        <event>SEVERE THUNDERSTORM</event><urgency>Immediate</urgency><severity>Severe</severity>\
        <certainty>Observed</certainty><area><areaDesc>LOS ANGELES</areaDesc>\
        <geocode><valueName>SAME</valueName><value>006037</value></geocode></area></info></alert>";
    let raw = RawIncident { format: "cap-xml".into(), source: None, payload: doc.into() };
    let n = ingest.normalize(&raw, NOW).expect("an area from the table");
    assert_eq!(n.incidents[0].areas.len(), 1);
    assert_eq!(Ingest::default().normalize(&raw, NOW).expect_err("no table").reason_code(), "no_location");
    let bad = IngestConfig { geocodes_file: Some("/nonexistent/geocodes.geojson".into()), ..IngestConfig::default() };
    assert!(Ingest::new(&bad).expect_err("missing file").to_string().contains("geocodes.geojson"));
}

fn row_strategy() -> impl Strategy<Value = (bool, String)> {
    prop_oneof![
        (1u32..9999, -89.0f64..89.0, -179.0f64..179.0)
            .prop_filter("not (0,0)", |(_, lat, lng)| *lat != 0.0 || *lng != 0.0)
            .prop_map(|(n, lat, lng)| (true, format!("{n},ROBBERY,{lat},{lng},2026-11-24 06:00"))),
        Just((false, ",ROBBERY,41.8,-87.6,2026-11-24 06:00".to_owned())),
        Just((false, "9,ROBBERY,41.8,-87.6,2026-13-40 06:00".to_owned())),
        Just((false, "9,ROBBERY,91,-87.6,2026-11-24 06:00".to_owned())),
        Just((false, "9,ROBBERY,41.8".to_owned())),
        Just((false, "9,,41.8,-87.6,2026-11-24 06:00".to_owned())),
    ]
}

proptest! {
    /// Every row of a record is accounted for: in an incident, or in a dead letter that names
    /// exactly that row.
    #[test]
    fn every_row_is_an_incident_or_its_own_dead_letter(rows in prop::collection::vec(row_strategy(), 1..40)) {
        let good: Vec<usize> = rows.iter().enumerate().filter(|(_, (ok, _))| *ok).map(|(i, _)| i + 1).collect();
        let bad: Vec<usize> = rows.iter().enumerate().filter(|(_, (ok, _))| !*ok).map(|(i, _)| i + 1).collect();
        prop_assume!(!good.is_empty());
        let body: String = rows.iter().map(|(_, r)| format!("{r}\n")).collect();
        let (incidents, dead) = process(&format!("{HEADER}{body}"));
        prop_assert_eq!(dead.iter().map(|d| d.row).collect::<Vec<_>>(), bad);
        // Rows with the same number are one incident.
        let ids: std::collections::BTreeSet<&str> =
            rows.iter().filter(|(ok, _)| *ok).map(|(_, r)| r.split(',').next().unwrap_or_default()).collect();
        prop_assert_eq!(incidents.len(), ids.len());
        for d in &dead {
            let line = &rows[d.row - 1].1;
            prop_assert_eq!(&d.payload, &format!("{HEADER}{line}\n").into_bytes());
        }
    }
}
