//! Resume without loss at scale, on Apache Kafka: 100,000 subscribers placed around real
//! 911 calls (Montgomery County PA, `../shared/data/cad`), the calls replayed through the
//! whole pipeline in the `csv-montco` ingest format, and a push backend that drops its
//! stream at seeded random moments and resumes from its last cursor. What it receives must
//! be exactly the (alert, subscriber) pairs committed to the notifications topic, once
//! each, and those must agree with geometry: every subscriber well inside an alert's target
//! notified, none well outside.
//!
//! Scale for a long run: `HEXCAST_RESUME_SUBSCRIBERS` (default 100000),
//! `HEXCAST_RESUME_CALLS` (default 4000), `HEXCAST_RESUME_SEED` (default 6).

use std::collections::{BTreeSet, HashMap};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hexcast::Target;
use hexcast_api::Tokens;
use hexcast_core::{LatLng, Timestamp, Topic, header};
use hexcast_proto::v1 as pb;
use prost::Message as _;
use rdkafka::ClientConfig;
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::common;

const TENANT: (&str, &str) = ("county", "county-token-0123456789");
const MONTCO: &str = "cad/montco_pa_911_2015-12_2016-01.csv";
/// Rows per raw record (a CSV payload with its header line).
const ROWS_PER_RECORD: usize = 50;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// SplitMix64: a seeded, dependency-free generator, so every run disconnects at the same
/// points and places the same subscribers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The first `calls` data rows of the Montco export, as raw records of up to
/// `ROWS_PER_RECORD` rows each (header repeated), and the calls' locations.
fn montco(calls: usize) -> (Vec<(String, Vec<u8>)>, Vec<LatLng>) {
    let path = hexcast_testdata::path(MONTCO);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut lines = text.lines();
    let head = lines.next().expect("header line");
    assert!(head.starts_with("lat,lng,"), "unexpected header {head}");
    let rows: Vec<&str> = lines.filter(|l| !l.trim().is_empty()).take(calls).collect();
    let mut sites = Vec::new();
    for row in &rows {
        let mut cols = row.split(',');
        let lat = cols.next().and_then(|v| v.parse::<f64>().ok());
        let lng = cols.next().and_then(|v| v.parse::<f64>().ok());
        if let (Some(lat), Some(lng)) = (lat, lng)
            && (39.9..40.6).contains(&lat)
            && (-75.8..-74.9).contains(&lng)
        {
            sites.push(LatLng::new(lat, lng).expect("valid"));
        }
    }
    let records = rows
        .chunks(ROWS_PER_RECORD)
        .enumerate()
        .map(|(i, chunk)| (format!("montco-{i}"), format!("{head}\n{}\n", chunk.join("\n")).into_bytes()))
        .collect();
    (records, sites)
}

struct Sub {
    id: String,
    at: LatLng,
    radius_m: f64,
}

/// Subscribers around the calls' sites: 80% points, 20% circles of 200-1000 m, each within
/// 3 km of a randomly chosen site.
fn population(n: usize, sites: &[LatLng], rng: &mut Rng) -> Vec<Sub> {
    (0..n)
        .map(|i| {
            let site = sites[rng.below(sites.len() as u64) as usize];
            let at = site.destination(rng.unit() * 360.0, rng.unit() * 3_000.0);
            let radius_m = if rng.below(5) == 0 { 200.0 + rng.unit() * 800.0 } else { 0.0 };
            Sub { id: format!("sub-{i:06}"), at, radius_m }
        })
        .collect()
}

async fn publish(brokers: &str, topic: &str, records: &[(String, Vec<u8>)]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    for (key, payload) in records {
        let headers = OwnedHeaders::new()
            .insert(Header { key: header::FORMAT, value: Some("csv-montco") })
            .insert(Header { key: header::SOURCE, value: Some("montco-911") });
        let rec = FutureRecord::to(topic).key(key).payload(payload).headers(headers);
        producer.send(rec, Duration::from_secs(30)).await.map_err(|(e, _)| e).expect("delivered");
    }
}

/// Sum of the high watermarks of a topic.
fn end_offsets(consumer: &BaseConsumer, topic: &str) -> i64 {
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    md.topics()[0]
        .partitions()
        .iter()
        .map(|p| consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10)).expect("watermarks").1)
        .sum()
}

/// Waits until every topic of the chain has stopped growing for a while: the pipeline has
/// drained what was published. (A wait, not an assertion on time.)
fn wait_for_quiet(brokers: &str, topics: &[String], deadline: Duration) {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers).create().expect("consumer");
    let start = Instant::now();
    let mut last = Vec::new();
    let mut stable = 0;
    while stable < 4 {
        assert!(start.elapsed() < deadline, "pipeline still moving after {deadline:?}: {last:?}");
        std::thread::sleep(Duration::from_secs(2));
        let now: Vec<i64> = topics.iter().map(|t| end_offsets(&consumer, t)).collect();
        stable = if now == last && now.iter().all(|&n| n > 0) { stable + 1 } else { 0 };
        last = now;
    }
}

type Pair = (String, String);

/// A backend that drops its stream after a random number of batches and resumes from the
/// last cursor it processed, until it has `want` pairs and nothing more arrives.
async fn flaky_backend(
    channel: Channel,
    want: Arc<std::sync::atomic::AtomicUsize>,
    seed: u64,
) -> (Vec<Pair>, usize, usize) {
    let mut rng = Rng(seed);
    let mut got: Vec<Pair> = Vec::new();
    let mut cursor = String::new();
    let (mut connections, mut mid_record) = (0usize, 0usize);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    loop {
        let mut client = common::push(channel.clone(), TENANT.1);
        let req = pb::SubscribeRequest { cursor: cursor.clone(), from_beginning: cursor.is_empty(), max_batch_ids: 64 };
        let mut stream = client.subscribe(req).await.expect("subscribe").into_inner();
        connections += 1;
        let drop_after = 1 + rng.below(10);
        let mut batches = 0;
        let mut last_batch = tokio::time::Instant::now();
        loop {
            match tokio::time::timeout(Duration::from_secs(1), stream.message()).await {
                Ok(Ok(Some(batch))) => {
                    last_batch = tokio::time::Instant::now();
                    let alert = batch.alert.expect("alert").alert_id;
                    got.extend(batch.subscriber_ids.into_iter().map(|s| (alert.clone(), s)));
                    if !batch.cursor.ends_with(".0") {
                        mid_record += 1;
                    }
                    cursor = batch.cursor;
                    batches += 1;
                    if batches >= drop_after {
                        break; // drops the stream: the server sees the client go away
                    }
                }
                Ok(other) => panic!("stream ended: {other:?}"),
                Err(_) => {
                    // Done once everything committed is in and nothing more (a duplicate)
                    // has arrived for a few seconds.
                    let target = want.load(std::sync::atomic::Ordering::SeqCst);
                    if target > 0 && got.len() >= target && last_batch.elapsed() >= Duration::from_secs(3) {
                        return (got, connections, mid_record);
                    }
                    assert!(tokio::time::Instant::now() < deadline, "backend: {} pairs by the deadline", got.len());
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backend_dropping_at_random_receives_every_pair_once_100k_subscribers_real_calls() {
    let n_subs = env_or("HEXCAST_RESUME_SUBSCRIBERS", 100_000) as usize;
    let calls = env_or("HEXCAST_RESUME_CALLS", 4_000) as usize;
    let seed = env_or("HEXCAST_RESUME_SEED", 6);

    let mut cfg = common::config("resume");
    cfg.topics.partitions = NonZeroU32::new(3).expect("nonzero");
    cfg.topics.shards = NonZeroU32::new(4).expect("nonzero");
    // The calls are from December 2015: a policy whose age window reaches back to them.
    let policy = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("resume-policy.toml");
    let seed_policy = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../services/policy/seed-policy.toml"),
    )
    .expect("seed policy");
    std::fs::write(&policy, seed_policy.replace("max_age_secs = 3600", "max_age_secs = 315360000")).expect("policy");
    cfg.policy.file = Some(policy);
    hexcast::create_topics(&cfg).await.expect("create topics");
    let mut rt = hexcast::runtime(&cfg);
    // Fixed "now": 2016-01-05T00:00:00Z, after the last call of the export.
    rt.clock = Arc::new(|| Timestamp(1_451_952_000_000));
    let tokens = Tokens::new([(TENANT.0.to_owned(), TENANT.1.to_owned())]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let shutdown = CancellationToken::new();
    let running = hexcast::start(&cfg, &rt, &Target::ALL, Some(tokens), Some(listener), shutdown.clone())
        .await
        .expect("start pipeline");
    let push = running.push.as_ref().expect("push running");
    let channel = Channel::from_shared(format!("http://{}", push.addr)).expect("uri").connect().await.expect("connect");

    let (records, sites) = montco(calls);
    let mut rng = Rng(seed);
    let subs = population(n_subs, &sites, &mut rng);
    let started = Instant::now();
    for chunk in subs.chunks(20_000) {
        let reqs: Vec<pb::UpsertRequest> = chunk
            .iter()
            .map(|s| {
                let shape = if s.radius_m > 0.0 {
                    pb::area::Shape::Circle(pb::Circle { center: Some(s.at.into()), radius_m: s.radius_m })
                } else {
                    pb::area::Shape::Point(s.at.into())
                };
                pb::UpsertRequest {
                    subscription: Some(pb::Subscription {
                        subscriber_id: s.id.clone(),
                        areas: vec![pb::Area { shape: Some(shape) }],
                        ..Default::default()
                    }),
                }
            })
            .collect();
        let resp = common::subscriptions(channel.clone(), TENANT.1)
            .bulk_upsert(futures::stream::iter(reqs))
            .await
            .expect("bulk upsert");
        assert_eq!(resp.into_inner().upserted, chunk.len() as u64);
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while push.index.len() < subs.len() {
        assert!(Instant::now() < deadline, "index has {} of {} subscribers", push.index.len(), subs.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tracing::info!(subscribers = subs.len(), secs = started.elapsed().as_secs_f64(), "subscribers indexed");

    // The backend runs while the calls flow, so its drops land mid-stream.
    let want = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let backend = tokio::spawn(flaky_backend(channel.clone(), Arc::clone(&want), seed ^ 0xD15C));
    publish(&cfg.kafka.brokers, rt.names.name(Topic::Raw), &records).await;

    let brokers = cfg.kafka.brokers.clone();
    let names = rt.names.clone();
    let (alerts, committed) = tokio::task::spawn_blocking(move || {
        let chain: Vec<String> =
            [Topic::Normalized, Topic::Unique, Topic::Alerts, Topic::Indexed, Topic::Notifications]
                .iter()
                .map(|t| names.name(*t).to_owned())
                .collect();
        wait_for_quiet(&brokers, &chain, Duration::from_secs(600));
        let settle = Duration::from_secs(1);
        let t = Duration::from_secs(60);
        let alerts = common::read_topic(&brokers, names.name(Topic::Alerts), "read_committed", 1, settle, t);
        let notes = common::read_topic(&brokers, names.name(Topic::Notifications), "read_committed", 1, settle, t);
        (alerts, notes)
    })
    .await
    .expect("reader");

    // Expected: every pair durably committed to the notifications topic.
    let mut expected = BTreeSet::new();
    for m in &committed {
        let batch = pb::NotificationBatch::decode(m.payload().expect("payload")).expect("notification");
        assert_eq!(batch.tenant, TENANT.0);
        let alert = batch.alert.expect("alert").alert_id;
        for id in batch.subscriber_ids {
            assert!(expected.insert((alert.clone(), id)), "the matcher committed a pair twice");
        }
    }
    want.store(expected.len(), std::sync::atomic::Ordering::SeqCst);
    let (got, connections, mid_record) = backend.await.expect("backend task");
    let got_set: BTreeSet<Pair> = got.iter().cloned().collect();
    assert_eq!(got.len(), got_set.len(), "duplicates: {} received, {} distinct", got.len(), got_set.len());
    let missing: Vec<_> = expected.difference(&got_set).take(5).collect();
    let extra: Vec<_> = got_set.difference(&expected).take(5).collect();
    assert!(missing.is_empty() && extra.is_empty(), "missing {missing:?}, unexpected {extra:?}");
    assert!(
        connections >= 10,
        "the backend should have reconnected many times: {connections} for {} pairs",
        expected.len()
    );
    assert!(mid_record > 0, "some drops should land inside a stored record");

    // The committed pairs agree with geometry, with a margin of 100 m either side of each
    // target circle (the stored form is within ~70 m of the true place).
    let mut by_alert: HashMap<String, BTreeSet<&str>> = HashMap::new();
    for (a, s) in &expected {
        by_alert.entry(a.clone()).or_default().insert(s.as_str());
    }
    let (mut must, mut checked_alerts) = (0usize, 0usize);
    for m in &alerts {
        let alert = pb::Alert::decode(m.payload().expect("payload")).expect("alert");
        let Some(pb::area::Shape::Circle(c)) = alert.target.as_ref().and_then(|t| t.shape.clone()) else {
            panic!("montco calls become circle targets: {:?}", alert.target);
        };
        let center = LatLng::try_from(&c.center.expect("center")).expect("valid center");
        let notified = by_alert.get(&alert.alert_id);
        if !alert.required_attributes.is_empty() {
            // For example cardiac arrests, for CPR-trained subscribers only: none here.
            assert!(
                notified.is_none(),
                "alert {} needs {:?}: nobody here has them",
                alert.alert_id,
                alert.required_attributes
            );
            continue;
        }
        checked_alerts += 1;
        for s in &subs {
            let gap = center.distance_m(s.at) - s.radius_m - c.radius_m;
            let hit = notified.is_some_and(|n| n.contains(s.id.as_str()));
            if gap <= -100.0 {
                must += 1;
                assert!(
                    hit,
                    "{} (radius {:.0} m) is {:.0} m inside alert {} ({:?}, kind {}, {} notified) but was not notified",
                    s.id,
                    s.radius_m,
                    -gap,
                    alert.alert_id,
                    alert.category,
                    alert.kind,
                    notified.map_or(0, |n| n.len())
                );
            } else if gap >= 100.0 {
                assert!(!hit, "{} is {gap:.0} m outside alert {} but was notified", s.id, alert.alert_id);
            }
        }
    }
    assert!(checked_alerts >= 20, "the replay should raise many alerts: {checked_alerts}");
    assert!(must >= 10_000, "the scenario should notify plenty: {must}");
    tracing::warn!(
        subscribers = subs.len(),
        alerts = checked_alerts,
        pairs = expected.len(),
        connections,
        mid_record,
        "resume test done"
    );

    shutdown.cancel();
    running.join().await.expect("clean shutdown");
}
