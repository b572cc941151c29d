//! Shared helpers: the broker under test, unique topic prefixes, raw producers, topic
//! readers and authenticated gRPC clients.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hexcast::Config;
use hexcast_core::header;
use hexcast_proto::v1::push_client::PushClient;
use hexcast_proto::v1::subscriptions_client::SubscriptionsClient;
use rdkafka::ClientConfig;
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// The broker under test. Panics with instructions when unset: these tests never skip.
pub fn brokers() -> String {
    static LOGS: std::sync::Once = std::sync::Once::new();
    LOGS.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    });
    std::env::var("HEXCAST_TEST_BROKERS").unwrap_or_else(|_| {
        panic!("HEXCAST_TEST_BROKERS is not set: run scripts/test.sh, which starts Apache Kafka and sets it")
    })
}

/// A prefix no other test run uses.
pub fn unique_prefix(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("t{}-{nanos}-{name}.", std::process::id())
}

/// A config for the broker under test with isolated topics and groups.
pub fn config(name: &str) -> Config {
    let mut cfg = Config::for_brokers(&brokers());
    let prefix = unique_prefix(name);
    cfg.kafka.topic_prefix = prefix.clone();
    cfg.kafka.group_prefix = prefix.trim_end_matches('.').to_owned();
    cfg.kafka.instance_id = Some("it-0".into());
    cfg.runner.linger_ms = 10;
    cfg.runner.retry_backoff_ms = 200;
    cfg
}

/// Publishes raw payloads with a format header; returns when all are acknowledged.
pub async fn publish_raw(brokers: &str, topic: &str, records: &[(String, Vec<u8>)]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let mut pending = Vec::new();
    for (key, payload) in records {
        let headers = OwnedHeaders::new()
            .insert(Header { key: header::FORMAT, value: Some("cad-json") })
            .insert(Header { key: header::SOURCE, value: Some("it") })
            .insert(Header { key: header::TRACE_ID, value: Some(key.as_str()) });
        let rec = FutureRecord::to(topic).key(key).payload(payload).headers(headers);
        pending.push(producer.send_result(rec).map_err(|(e, _)| e).expect("enqueue"));
    }
    for p in pending {
        p.await.expect("delivery future").map_err(|(e, _)| e).expect("delivered");
    }
}

/// Reads a whole topic from the beginning until `want` records arrived and then `settle`
/// passed with nothing new (so extra records, such as duplicates, are seen too), or until
/// `timeout`.
pub fn read_topic(
    brokers: &str,
    topic: &str,
    isolation: &str,
    want: usize,
    settle: Duration,
    timeout: Duration,
) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("reader-{}", unique_prefix("r")))
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()
        .expect("consumer");
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning).expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let start = Instant::now();
    let mut last_new = Instant::now();
    let mut out = Vec::new();
    while start.elapsed() < timeout {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                out.push(m.detach());
                last_new = Instant::now();
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {
                if out.len() >= want && last_new.elapsed() >= settle {
                    break;
                }
            }
        }
    }
    out
}

/// Counts of each key in a set of messages.
pub fn key_counts(msgs: &[OwnedMessage]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for m in msgs {
        let k = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        *counts.entry(k).or_default() += 1;
    }
    counts
}

type Auth = Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;

fn auth(token: &str) -> Auth {
    let bearer: MetadataValue<_> = format!("Bearer {token}").parse().expect("ascii token");
    Box::new(move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", bearer.clone());
        Ok(req)
    })
}

/// A Subscriptions client for a tenant token.
pub fn subscriptions(channel: Channel, token: &str) -> SubscriptionsClient<InterceptedService<Channel, Auth>> {
    SubscriptionsClient::with_interceptor(channel, auth(token))
}

/// A Push client for a tenant token.
pub fn push(channel: Channel, token: &str) -> PushClient<InterceptedService<Channel, Auth>> {
    PushClient::with_interceptor(channel, auth(token))
}
