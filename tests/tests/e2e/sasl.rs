//! The pipeline on a secured Apache Kafka: a broker whose only client listener is SASL_SSL
//! with SCRAM-SHA-512 (`HEXCAST_KAFKA_SECURITY=sasl_ssl scripts/kafka.sh start`, started
//! by scripts/test.sh, which exports `HEXCAST_TEST_SASL_*`). Every client the pipeline
//! makes (stages, transactions, changelog, push readers, topic creation) goes through
//! `[kafka.security]`; a wrong password or an untrusted broker certificate fails at start,
//! saying so. Without the broker these tests fail: they never skip.

use std::path::PathBuf;
use std::time::Duration;

use hexcast::{Config, Target};
use hexcast_api::Tokens;
use hexcast_core::{LatLng, Topic, header};
use hexcast_proto::v1 as pb;
use hexcast_runtime::{KafkaSecurity, Runtime, SaslMechanism, SecurityProtocol, SecuritySection};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::common;

/// What a client of the SASL_SSL broker needs, from scripts/test.sh.
struct SaslBroker {
    brokers: String,
    ca_file: PathBuf,
    username: String,
    password_file: PathBuf,
    cert_file: PathBuf,
    key_file: PathBuf,
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run scripts/test.sh, which starts a SASL_SSL Apache Kafka \
             (HEXCAST_KAFKA_SECURITY=sasl_ssl scripts/kafka.sh start) and exports HEXCAST_TEST_SASL_*"
        )
    })
}

fn sasl_broker() -> SaslBroker {
    common::brokers(); // the plaintext broker too, and the test log subscriber
    SaslBroker {
        brokers: var("HEXCAST_TEST_SASL_BROKERS"),
        ca_file: var("HEXCAST_TEST_SASL_CA_FILE").into(),
        username: var("HEXCAST_TEST_SASL_USERNAME"),
        password_file: var("HEXCAST_TEST_SASL_PASSWORD_FILE").into(),
        cert_file: var("HEXCAST_TEST_SASL_CERT_FILE").into(),
        key_file: var("HEXCAST_TEST_SASL_KEY_FILE").into(),
    }
}

/// The security section as an operator writes it, for the test broker.
fn section(b: &SaslBroker, password_file: PathBuf) -> SecuritySection {
    SecuritySection {
        sasl_mechanism: Some(SaslMechanism::ScramSha512),
        sasl_username: Some(b.username.clone()),
        sasl_password_file: Some(password_file),
        ca_file: Some(b.ca_file.clone()),
        ..SecuritySection::new(SecurityProtocol::SaslSsl)
    }
}

/// A test config on the SASL_SSL broker with `security`.
fn config(name: &str, b: &SaslBroker, security: SecuritySection) -> Config {
    let mut cfg = common::config(name);
    cfg.kafka.brokers.clone_from(&b.brokers);
    cfg.kafka.security = Some(KafkaSecurity::try_from(security).expect("valid security section"));
    cfg
}

/// A file in the temp dir holding `text`, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn with(name: &str, text: &str) -> Self {
        let path = std::env::temp_dir().join(common::unique_prefix(name));
        std::fs::write(&path, text).expect("write temp file");
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Every record of `topic` (read_committed) once `want` arrived and a second passed with
/// nothing new, or after 60 s.
fn read_committed(rt: &Runtime, topic: &str, want: usize) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = rt
        .client_config()
        .set("group.id", format!("reader-{}", common::unique_prefix("r")))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning).expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let start = std::time::Instant::now();
    let mut last_new = std::time::Instant::now();
    let mut out = Vec::new();
    while start.elapsed() < Duration::from_secs(60) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                out.push(m.detach());
                last_new = std::time::Instant::now();
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None if out.len() >= want && last_new.elapsed() >= Duration::from_secs(1) => break,
            None => {}
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sasl_ssl_scram_pipeline_delivers_a_repeated_incident_exactly_once() {
    let b = sasl_broker();
    // The client certificate too: the listener requests one and checks it against its CA.
    let security = SecuritySection {
        cert_file: Some(b.cert_file.clone()),
        key_file: Some(b.key_file.clone()),
        ..section(&b, b.password_file.clone())
    };
    let cfg = config("sasl", &b, security);
    hexcast::create_topics(&cfg).await.expect("create topics over SASL_SSL");
    let rt = hexcast::runtime(&cfg);
    let tokens = Tokens::new([("alpha".to_owned(), "alpha-token-0123456789".to_owned())]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let shutdown = CancellationToken::new();
    let running = hexcast::start(&cfg, &rt, &Target::ALL, Some(tokens), Some(listener), shutdown.clone())
        .await
        .expect("start the pipeline over SASL_SSL");
    let push = running.push.as_ref().expect("push running");
    let channel = Channel::from_shared(format!("http://{}", push.addr)).expect("uri").connect().await.expect("connect");

    let site = LatLng::new(39.95, -75.16).expect("site");
    let near = pb::Subscription {
        subscriber_id: "near".into(),
        areas: vec![pb::Area { shape: Some(pb::area::Shape::Point(site.destination(90.0, 200.0).into())) }],
        ..Default::default()
    };
    let far = pb::Subscription {
        subscriber_id: "far".into(),
        areas: vec![pb::Area { shape: Some(pb::area::Shape::Point(site.destination(90.0, 20_000.0).into())) }],
        ..Default::default()
    };
    let mut subs = common::subscriptions(channel.clone(), "alpha-token-0123456789");
    for s in [near, far] {
        subs.upsert(pb::UpsertRequest { subscription: Some(s) }).await.expect("upsert");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while push.index.len() < 2 {
        assert!(std::time::Instant::now() < deadline, "index has {} of 2 subscribers", push.index.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // One shots-fired incident, sent twice (an exact repeat), through a producer that
    // authenticates like the stages do.
    let now_ms = (rt.clock)().as_millis();
    let body = serde_json::json!({
        "id": "sasl-1", "version": 1, "call_type": "SHOTS FIRED", "lat": site.lat(), "lng": site.lng(),
        "occurred_at": now_ms, "address": "1 TEST ST", "names": ["Test Person"],
    })
    .to_string();
    let producer: FutureProducer =
        rt.client_config().set("enable.idempotence", "true").create().expect("producer over SASL_SSL");
    for _ in 0..2 {
        let headers = OwnedHeaders::new()
            .insert(Header { key: header::FORMAT, value: Some("cad-json") })
            .insert(Header { key: header::SOURCE, value: Some("it") });
        let rec = FutureRecord::to(rt.names.name(Topic::Raw)).key("sasl-1").payload(&body).headers(headers);
        producer.send(rec, Duration::from_secs(30)).await.map_err(|(e, _)| e).expect("delivered");
    }

    let mut stream = common::push(channel.clone(), "alpha-token-0123456789")
        .subscribe(pb::SubscribeRequest { from_beginning: true, ..Default::default() })
        .await
        .expect("subscribe")
        .into_inner();
    let mut got = Vec::new();
    let first = tokio::time::timeout(Duration::from_secs(120), stream.message())
        .await
        .expect("a notification within 120 s")
        .expect("stream")
        .expect("batch");
    got.push(first);
    // A duplicate would arrive right behind the first.
    while let Ok(next) = tokio::time::timeout(Duration::from_secs(3), stream.message()).await {
        got.push(next.expect("stream").expect("batch"));
    }
    let pairs: Vec<(String, String)> = got
        .iter()
        .flat_map(|b| {
            let alert = b.alert.as_ref().expect("alert in batch").alert_id.clone();
            b.subscriber_ids.iter().map(move |s| (alert.clone(), s.clone()))
        })
        .collect();
    assert_eq!(pairs, vec![("it:sasl-1@1".to_owned(), "near".to_owned())], "exactly one notification, to near");

    // Exactly once on the way too: one incident event, one alert, both committed.
    let (unique, alerts) = tokio::task::spawn_blocking({
        let rt = rt.clone();
        move || {
            (read_committed(&rt, rt.names.name(Topic::Unique), 1), read_committed(&rt, rt.names.name(Topic::Alerts), 1))
        }
    })
    .await
    .expect("reader");
    assert_eq!(unique.len(), 1, "one incident event for an incident sent twice");
    assert_eq!(alerts.len(), 1, "one alert");

    shutdown.cancel();
    running.join().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_ssl_wrong_password_fails_at_start_naming_authentication() {
    let b = sasl_broker();
    let wrong = TempFile::with("wrong-password", "not-the-password\n");
    let cfg = config("sasl-wrong", &b, section(&b, wrong.0.clone()));

    let err = hexcast::create_topics(&cfg).await.expect_err("a wrong password must fail topic creation");
    let msg = format!("{err:#}");
    assert!(msg.contains("authentication failed"), "{msg}");
    assert!(msg.contains(&format!("SCRAM-SHA-512 as user `{}`", b.username)), "{msg}");
    assert!(!msg.contains("not-the-password"), "the password must never be printed: {msg}");

    let rt = hexcast::runtime(&cfg);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let tokens = Tokens::new([("alpha".to_owned(), "alpha-token-0123456789".to_owned())]);
    let Err(err) =
        hexcast::start(&cfg, &rt, &Target::ALL, Some(tokens), Some(listener), CancellationToken::new()).await
    else {
        panic!("a wrong password must fail the start");
    };
    let msg = format!("{err:#}");
    assert!(msg.contains("kafka authentication failed"), "{msg}");
    eprintln!("start failed as it must: {msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_ssl_broker_certificate_from_another_ca_fails_at_start_naming_tls() {
    let b = sasl_broker();
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("a self-signed certificate");
    let other_ca = TempFile::with("other-ca", &other.cert.pem());
    let security = SecuritySection { ca_file: Some(other_ca.0.clone()), ..section(&b, b.password_file.clone()) };
    let cfg = config("sasl-ca", &b, security);
    let err = hexcast::create_topics(&cfg).await.expect_err("an untrusted broker must fail the start");
    let msg = format!("{err:#}");
    assert!(msg.contains("tls handshake failed"), "{msg}");
    eprintln!("start failed as it must: {msg}");
}
