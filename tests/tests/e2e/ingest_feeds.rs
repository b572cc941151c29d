//! Ingest on Apache Kafka, through the real runner: a bad row inside a multi-row CSV record
//! reaches the dead-letter topic on its own, with its row number, in the same transaction as
//! the good rows' incidents; and the README's `cad-json` example, published with no source
//! anywhere, becomes an incident.

use std::time::Duration;

use hexcast::Target;
use hexcast_core::{Topic, header};
use hexcast_proto::v1 as pb;
use prost::Message as _;
use rdkafka::ClientConfig;
use rdkafka::Message as _;
use rdkafka::message::{Header, Headers as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use crate::common;

const MONTCO_HEADER: &str = "lat,lng,desc,zip,title,timeStamp,twp,addr,e\n";
const GOOD_1: &str = "40.2978759,-75.5812935,REINDEER CT & DEAD END;  NEW HANOVER; Station 332; 2015-12-10 @ 17:10:52;,19525,EMS: BACK PAINS/INJURY,2015-12-10 17:10:52,NEW HANOVER,REINDEER CT & DEAD END,1\n";
// Geocoded 100 km away: outside the mapping's bounds.
const BAD_2: &str = "41.1,-76.6,FAR AWAY;  NOWHERE; 2015-12-10 @ 17:29:21;,,Fire: GAS-ODOR/LEAK,2015-12-10 17:29:21,NOWHERE,FAR AWAY,1\n";
const GOOD_3: &str = "40.2580614,-75.2646799,HAWS AVE; NORRISTOWN; 2015-12-10 @ 14:39:21-Station:STA27;,19401,Fire: GAS-ODOR/LEAK,2015-12-10 17:40:00,NORRISTOWN,HAWS AVE,1\n";

const README_CAD_JSON: &str = r#"{"id": "17", "version": 2, "call_type": "ARMED ROBBERY", "lat": 40.1, "lng": -75.3,
 "occurred_at": "2026-11-24T06:00:00Z", "status": "active", "address": "12 ELM ST",
 "names": ["..."], "phones": ["..."], "medical": ["..."], "units": 3, "description": "..."}"#;

async fn publish(brokers: &str, topic: &str, records: &[(&str, &str, String)]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    for (key, format, payload) in records {
        // No hexcast-source header: as `kcat -H hexcast-format=...` publishes.
        let headers = OwnedHeaders::new().insert(Header { key: header::FORMAT, value: Some(*format) });
        let rec = FutureRecord::to(topic).key(*key).payload(payload.as_bytes()).headers(headers);
        producer.send(rec, Duration::from_secs(30)).await.map_err(|(e, _)| e).expect("delivered");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_dead_letters_each_bad_csv_row_and_ingests_the_readme_cad_json_example() {
    let cfg = common::config("feeds");
    hexcast::create_topics(&cfg).await.expect("topics");
    let rt = hexcast::runtime(&cfg);
    let shutdown = CancellationToken::new();
    let running = hexcast::start(&cfg, &rt, &[Target::Ingest], None, None, shutdown.clone()).await.expect("start");
    let csv = format!("{MONTCO_HEADER}{GOOD_1}{BAD_2}{GOOD_3}");
    publish(
        &cfg.kafka.brokers,
        rt.names.name(Topic::Raw),
        &[("montco", "csv-montco", csv), ("readme", "cad-json", README_CAD_JSON.to_owned())],
    )
    .await;
    let brokers = cfg.kafka.brokers.clone();
    let names = rt.names.clone();
    let (normalized, dead) = tokio::task::spawn_blocking(move || {
        let (settle, t) = (Duration::from_secs(2), Duration::from_secs(90));
        (
            common::read_topic(&brokers, names.name(Topic::Normalized), "read_committed", 3, settle, t),
            common::read_topic(&brokers, names.name(Topic::DeadLetter), "read_committed", 1, settle, t),
        )
    })
    .await
    .expect("reader");
    shutdown.cancel();
    running.join().await.expect("clean stop");

    let mut ids: Vec<String> = normalized
        .iter()
        .map(|m| pb::Incident::decode(m.payload().unwrap_or_default()).expect("Incident").id)
        .collect();
    ids.sort();
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert!(ids.contains(&"cad-json:17".to_owned()), "{ids:?}");
    assert_eq!(ids.iter().filter(|i| i.starts_with("montco-911:")).count(), 2, "{ids:?}");

    assert_eq!(dead.len(), 1, "one dead letter: the bad row");
    let m = &dead[0];
    let h = |name: &str| {
        m.headers()
            .and_then(|hs| {
                hs.iter().find(|h| h.key == name).and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
            })
            .unwrap_or_default()
    };
    assert_eq!(
        (h(header::DL_STAGE).as_str(), h(header::DL_REASON).as_str(), h(header::DL_ROW).as_str()),
        ("ingest", "out_of_bounds", "2")
    );
    let dl = pb::DeadLetter::decode(m.payload().unwrap_or_default()).expect("DeadLetter");
    assert_eq!(dl.payload, format!("{MONTCO_HEADER}{BAD_2}").into_bytes(), "only the bad row, with the header");
    assert!(dl.detail.starts_with("row 2: "), "{}", dl.detail);
}
