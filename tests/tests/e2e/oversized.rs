//! A record never blocks its partition (issue 15), on Apache Kafka at default settings: a
//! 2 MiB `cad-json` record, gzip-compressed by its producer so that the broker takes it, sits
//! between valid records in one partition. Ingest dead-letters it as oversized; the dead
//! letter cannot hold 2 MiB within the topic's message limit, so it is produced truncated
//! with the original size and hash, and the valid records behind it still become alerts.

use std::num::NonZeroU32;
use std::time::Duration;

use hexcast::Target;
use hexcast_core::{Topic, header};
use hexcast_proto::v1 as pb;
use prost::Message as _;
use rdkafka::ClientConfig;
use rdkafka::message::{Header, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use crate::common;

fn cad(id: &str, now_ms: i64, pad: usize) -> Vec<u8> {
    format!(
        r#"{{"id":"{id}","call_type":"ARMED ROBBERY","lat":39.95,"lng":-75.16,"occurred_at":{now_ms},"narrative":"{}"}}"#,
        "x".repeat(pad)
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_gzip_record_is_dead_lettered_truncated_and_valid_ones_behind_it_alert() {
    let mut cfg = common::config("oversized");
    // One partition: the valid records really are behind the big one.
    cfg.topics.partitions = NonZeroU32::new(1).expect("nonzero");
    cfg.topics.shards = NonZeroU32::new(1).expect("nonzero");
    hexcast::create_topics(&cfg).await.expect("topics");
    let rt = hexcast::runtime(&cfg);
    let shutdown = CancellationToken::new();
    let targets = [Target::Ingest, Target::Dedup, Target::Policy, Target::Spatial];
    let running = hexcast::start(&cfg, &rt, &targets, None, None, shutdown.clone()).await.expect("start");

    let now_ms = (rt.clock)().as_millis();
    let big = cad("big", now_ms, 2 * 1024 * 1024);
    // As `kcat -z gzip` would send it: compressed, so the broker's 1 MiB limit is not hit.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.kafka.brokers)
        .set("enable.idempotence", "true")
        .set("compression.codec", "gzip")
        .set("message.max.bytes", "5000000")
        .create()
        .expect("producer");
    let records =
        [("valid-1", cad("valid-1", now_ms, 0)), ("big", big.clone()), ("valid-2", cad("valid-2", now_ms, 0))];
    for (key, payload) in &records {
        let headers = OwnedHeaders::new()
            .insert(Header { key: header::FORMAT, value: Some("cad-json") })
            .insert(Header { key: header::SOURCE, value: Some("it") });
        let rec = FutureRecord::to(rt.names.name(Topic::Raw)).key(*key).payload(payload).headers(headers);
        producer.send(rec, Duration::from_secs(30)).await.map_err(|(e, _)| e).expect("delivered");
    }

    let brokers = cfg.kafka.brokers.clone();
    let names = rt.names.clone();
    let started = std::time::Instant::now();
    let (dead, indexed) = tokio::task::spawn_blocking(move || {
        let settle = Duration::from_secs(2);
        let t = Duration::from_secs(90);
        (
            common::read_topic(&brokers, names.name(Topic::DeadLetter), "read_committed", 1, settle, t),
            common::read_topic(&brokers, names.name(Topic::Indexed), "read_committed", 2, settle, t),
        )
    })
    .await
    .expect("reader");
    tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "dead letter and alerts read");
    shutdown.cancel();
    running.join().await.expect("clean stop");

    assert_eq!(dead.len(), 1, "one dead letter");
    let dl = pb::DeadLetter::decode(dead[0].payload().unwrap_or_default()).expect("DeadLetter");
    assert_eq!((dl.stage.as_str(), dl.reason.as_str()), ("ingest", "oversized_payload"));
    assert_eq!(dl.key, b"big");
    assert!(dl.truncated, "a 2 MiB payload cannot fit the dead letter whole");
    assert_eq!(dl.original_size, big.len() as u64);
    assert_eq!(dl.payload_sha256.len(), 32);
    assert!(!dl.payload.is_empty() && big.starts_with(&dl.payload), "the kept bytes are the payload's first bytes");
    assert!(dead[0].payload().unwrap_or_default().len() <= cfg.kafka.max_message_bytes as usize);

    let ids: Vec<String> = indexed
        .iter()
        .map(|m| pb::IndexedAlert::decode(m.payload().unwrap_or_default()).expect("IndexedAlert"))
        .filter_map(|ia| ia.alert.map(|a| a.alert_id))
        .collect();
    for want in ["it:valid-1@", "it:valid-2@"] {
        assert!(ids.iter().any(|id| id.starts_with(want)), "{want} was not indexed: {ids:?}");
    }
}
