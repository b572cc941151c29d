//! Records per second of each ingest format, on the real shared data (skipped, with a note,
//! when shared/data is not beside the repository). Throughput is in records (CSV: rows).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hexcast_core::Timestamp;
use hexcast_ingest::{Ingest, RawIncident};

const NOW: Timestamp = Timestamp(1_767_225_600_000);

fn load(rel: &str) -> Option<Vec<u8>> {
    std::fs::read(hexcast_testdata::try_path(rel)?).ok()
}

/// The real sample carries only a civic address; a GML point is added so the whole path runs.
fn eido_with_point() -> Option<Vec<u8>> {
    let text = String::from_utf8(load("eido/phrsite-eidolib/SampleCallTransferEido.json")?).ok()?;
    let point = r#"<gml:Point xmlns:gml=\"http://www.opengis.net/gml\"><gml:pos>39.74 -75.55</gml:pos></gml:Point><civicAddress"#;
    Some(text.replacen("<civicAddress", point, 1).into_bytes())
}

fn bench(c: &mut Criterion) {
    let ingest = Ingest::default().with_max_payload_bytes(64 << 20);
    let cad = br#"{"source":"pd","id":"17","version":2,"call_type":"ARMED ROBBERY","lat":40.1,"lng":-75.3,"occurred_at":"2025-11-14T22:00:00Z","address":"12 ELM ST"}"#.to_vec();
    let cases: Vec<(&str, &str, Option<Vec<u8>>, u64)> = vec![
        ("cad-json", "cad-json", Some(cad), 1),
        ("cap-xml/thunderstorm", "cap-xml", load("cap/google-cap-library/thunderstorm.cap"), 1),
        ("cap-xml/ipaws-large", "cap-xml", load("cap/oasiscap/ipaws-5e7e0fc5023f1930efcf3deb.xml"), 1),
        ("eido-json", "eido-json", eido_with_point(), 1),
        ("csv-montco", "csv-montco", load("cad/montco_pa_911_2015-12_2016-01.csv"), 9_226),
        ("csv-sf-fire", "csv-sf-fire", load("cad/sf_fire_calls_for_service_2016-12-31_2017-01-07.csv"), 7_704),
    ];
    let mut group = c.benchmark_group("ingest");
    for (name, format, payload, records) in cases {
        let Some(payload) = payload else {
            eprintln!("skipping {name}: public data not found (HEXCAST_DATA)");
            continue;
        };
        group.throughput(Throughput::Elements(records));
        let raw = RawIncident { format: format.to_owned(), source: None, payload };
        group.bench_function(name, |b| b.iter(|| ingest.normalize(std::hint::black_box(&raw), NOW)));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
