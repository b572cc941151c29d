//! The whole chain on Apache Kafka: 1,000 raw incidents (valid, denied, malformed and
//! exactly repeated) in; over the gRPC stream, exactly the expected (alert, subscriber)
//! notifications out, none lost, none duplicated, each tenant seeing only its own.

use std::collections::{BTreeSet, HashMap};
use std::num::NonZeroU32;
use std::time::Duration;

use hexcast::Target;
use hexcast_api::Tokens;
use hexcast_core::{LatLng, Topic};
use hexcast_proto::v1 as pb;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::common;

const TENANTS: [(&str, &str, [f64; 3]); 2] = [
    ("alpha", "alpha-token-0123456789", [37.0, 157.0, 277.0]),
    ("beta", "beta-token-0123456789ab", [97.0, 217.0, 337.0]),
];
/// Distances of subscribers from their site. Everything at or under radius - 200 m must be
/// notified; everything past radius + 300 m must not (the cover's margin is smaller).
const DISTANCES_M: [f64; 5] = [100.0, 300.0, 500.0, 1_200.0, 2_500.0];
/// Call types and the seed policy's radius for them (None: denied).
const CALLS: [(&str, Option<f64>); 5] = [
    ("ARMED ROBBERY", Some(800.0)),
    ("SHOTS FIRED", Some(1_600.0)),
    ("BURGLARY", Some(800.0)),
    ("ASSAULT", None),
    ("STRUCTURE FIRE", Some(800.0)),
];
const SITES: usize = 20;

fn site(k: usize) -> LatLng {
    LatLng::new(39.5 + (k / 5) as f64 * 0.2, -75.8 + (k % 5) as f64 * 0.2).expect("valid site")
}

struct Sub {
    tenant: &'static str,
    id: String,
    site: usize,
    distance_m: f64,
    at: LatLng,
}

fn population() -> Vec<Sub> {
    let mut subs = Vec::new();
    for k in 0..SITES {
        for (tenant, _, bearings) in TENANTS {
            for d in DISTANCES_M {
                for b in bearings {
                    let id = format!("s{k}-{d}-{b}");
                    subs.push(Sub { tenant, id, site: k, distance_m: d, at: site(k).destination(b, d) });
                }
            }
        }
    }
    // Far-away subscribers that must never be notified.
    for i in 0..400 {
        let tenant = TENANTS[i % 2].0;
        let at = LatLng::new(47.6, -122.3).expect("valid").destination(i as f64, 100.0 + i as f64 * 10.0);
        subs.push(Sub { tenant, id: format!("far-{i}"), site: usize::MAX, distance_m: f64::MAX, at });
    }
    subs
}

type Notification = (String, String, String); // (alert id, tenant, subscriber)

/// The raw records, the notifications they must produce, and how many were malformed and
/// how many distinct valid incidents there are.
struct Scenario {
    raws: Vec<(String, Vec<u8>)>,
    expected: BTreeSet<Notification>,
    malformed: usize,
    valid: usize,
}

fn incidents(subs: &[Sub], now_ms: i64) -> Scenario {
    let mut raws: Vec<(String, Vec<u8>)> = Vec::new();
    let mut expected = BTreeSet::new();
    let (mut malformed, mut valid) = (0, 0);
    let mut last_valid: Option<usize> = None;
    for i in 0..1000usize {
        if i % 25 == 24 {
            let bad = match i % 3 {
                0 => b"{\"id\": \"broken".to_vec(),
                1 => format!(r#"{{"id":"{i}","call_type":"ROBBERY","lat":95.0,"lng":-75.0,"occurred_at":{now_ms}}}"#)
                    .into_bytes(),
                _ => format!(r#"{{"call_type":"ROBBERY","lat":39.9,"lng":-75.1,"occurred_at":{now_ms}}}"#).into_bytes(),
            };
            raws.push((format!("bad-{i}"), bad));
            malformed += 1;
            continue;
        }
        if i % 40 == 39
            && let Some(j) = last_valid
        {
            let repeat = raws[j].clone();
            raws.push(repeat);
            continue;
        }
        let k = i % SITES;
        let (call, radius) = CALLS[(i / SITES) % CALLS.len()];
        let p = site(k);
        let body = serde_json::json!({
            "id": i.to_string(), "version": 1, "call_type": call, "lat": p.lat(), "lng": p.lng(),
            "occurred_at": now_ms, "address": "1 TEST ST", "names": ["Test Person"],
        });
        raws.push((i.to_string(), body.to_string().into_bytes()));
        last_valid = Some(raws.len() - 1);
        valid += 1;
        if let Some(r) = radius {
            for s in subs.iter().filter(|s| s.site == k && s.distance_m <= r - 200.0) {
                expected.insert((format!("it:{i}@1"), s.tenant.to_owned(), s.id.clone()));
            }
        }
    }
    assert_eq!(raws.len(), 1000);
    Scenario { raws, expected, malformed, valid }
}

async fn collect(channel: Channel, token: &str, want: usize) -> (Vec<Notification>, BTreeSet<String>) {
    let mut client = common::push(channel, token);
    let mut stream = client
        .subscribe(pb::SubscribeRequest { from_beginning: true, ..Default::default() })
        .await
        .expect("subscribe")
        .into_inner();
    let mut got = Vec::new();
    let mut tenants = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        // Once everything expected is in, wait a little longer: a duplicate would show up.
        let wait = if got.len() >= want {
            Duration::from_secs(3)
        } else {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        };
        match tokio::time::timeout(wait, stream.message()).await {
            Ok(Ok(Some(batch))) => {
                tenants.insert(batch.tenant.clone());
                let alert = batch.alert.expect("alert in batch");
                for id in batch.subscriber_ids {
                    got.push((alert.alert_id.clone(), batch.tenant.clone(), id));
                }
            }
            Ok(other) => panic!("stream ended: {other:?}"),
            Err(_) => break,
        }
    }
    (got, tenants)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pipeline_delivers_exactly_the_expected_notifications_for_1000_incidents() {
    let mut cfg = common::config("pipeline");
    cfg.topics.partitions = NonZeroU32::new(3).expect("nonzero");
    cfg.topics.shards = NonZeroU32::new(4).expect("nonzero");
    cfg.runner.lag_refresh_ms = 200;
    hexcast::create_topics(&cfg).await.expect("create topics");
    let rt = hexcast::runtime(&cfg);
    let tokens = Tokens::new(TENANTS.iter().map(|(t, tok, _)| ((*t).to_owned(), (*tok).to_owned())));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let shutdown = CancellationToken::new();
    let running = hexcast::start(&cfg, &rt, &Target::ALL, Some(tokens), Some(listener), shutdown.clone())
        .await
        .expect("start pipeline");
    let push = running.push.as_ref().expect("push running");
    let channel = Channel::from_shared(format!("http://{}", push.addr)).expect("uri").connect().await.expect("connect");

    let subs = population();
    for (tenant, token, _) in TENANTS {
        let reqs: Vec<pb::UpsertRequest> = subs
            .iter()
            .filter(|s| s.tenant == tenant)
            .map(|s| pb::UpsertRequest {
                subscription: Some(pb::Subscription {
                    subscriber_id: s.id.clone(),
                    areas: vec![pb::Area { shape: Some(pb::area::Shape::Point(s.at.into())) }],
                    ..Default::default()
                }),
            })
            .collect();
        let n = reqs.len() as u64;
        let resp = common::subscriptions(channel.clone(), token)
            .bulk_upsert(futures::stream::iter(reqs))
            .await
            .expect("bulk upsert");
        assert_eq!(resp.into_inner().upserted, n);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while push.index.len() < subs.len() {
        assert!(std::time::Instant::now() < deadline, "index has {} of {} subscribers", push.index.len(), subs.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let now_ms = (rt.clock)().as_millis();
    let Scenario { raws, expected, malformed, valid } = incidents(&subs, now_ms);
    assert!(expected.len() > 1000, "the scenario must notify plenty: {}", expected.len());
    common::publish_raw(&cfg.kafka.brokers, rt.names.name(Topic::Raw), &raws).await;

    let mut by_tenant: HashMap<&str, usize> = HashMap::new();
    for (_, t, _) in &expected {
        *by_tenant.entry(if t == "alpha" { "alpha" } else { "beta" }).or_default() += 1;
    }
    let (alpha, beta) = tokio::join!(
        collect(channel.clone(), TENANTS[0].1, by_tenant["alpha"]),
        collect(channel.clone(), TENANTS[1].1, by_tenant["beta"]),
    );
    assert_eq!(alpha.1, BTreeSet::from(["alpha".to_owned()]), "alpha saw another tenant");
    assert_eq!(beta.1, BTreeSet::from(["beta".to_owned()]), "beta saw another tenant");
    let mut got: Vec<Notification> = alpha.0.into_iter().chain(beta.0).collect();
    got.sort();
    let total = got.len();
    let got_set: BTreeSet<Notification> = got.into_iter().collect();
    assert_eq!(total, got_set.len(), "duplicated notifications: {}", total - got_set.len());
    let missing: Vec<_> = expected.difference(&got_set).take(5).collect();
    let extra: Vec<_> = got_set.difference(&expected).take(5).collect();
    assert!(missing.is_empty() && extra.is_empty(), "missing {missing:?}, unexpected {extra:?}");

    // Nothing lost on the way: every malformed record is a dead letter with a reason, every
    // valid record an incident, and exact repeats never became events.
    let brokers = cfg.kafka.brokers.clone();
    let names = rt.names.clone();
    let (dead, normalized, unique) = tokio::task::spawn_blocking(move || {
        let settle = Duration::from_secs(1);
        let t = Duration::from_secs(30);
        (
            common::read_topic(&brokers, names.name(Topic::DeadLetter), "read_committed", malformed, settle, t),
            common::read_topic(&brokers, names.name(Topic::Normalized), "read_committed", 1000 - malformed, settle, t),
            common::read_topic(&brokers, names.name(Topic::Unique), "read_committed", valid, settle, t),
        )
    })
    .await
    .expect("reader");
    assert_eq!(dead.len(), malformed);
    assert_eq!(normalized.len() + dead.len(), 1000, "input count = normalized + dead-lettered");
    assert_eq!(unique.len(), valid, "one event per distinct incident");
    for m in &dead {
        use rdkafka::message::{Headers as _, Message as _};
        let reason = m.headers().and_then(|h| {
            h.iter().find(|h| h.key == hexcast_core::header::DL_REASON).and_then(|h| h.value.map(<[u8]>::to_vec))
        });
        let reason = String::from_utf8(reason.expect("reason header")).expect("utf8");
        assert!(["malformed_json", "invalid_coordinates", "missing_field"].contains(&reason.as_str()), "{reason}");
    }

    // Idle now: every stage's lag reaches 0 (its committed offsets step over the transaction
    // markers that end its input, as `kafka-consumer-groups` would show) and none is stalled.
    let stages: Vec<(&str, std::sync::Arc<hexcast_runtime::StageStats>)> = running
        .stages
        .iter()
        .map(|(t, h)| (t.stage().name, std::sync::Arc::clone(&h.stats)))
        .chain(std::iter::once(("push", std::sync::Arc::clone(&push.matcher.stats))))
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let lagging: Vec<(&str, u64)> = stages
            .iter()
            .map(|(n, s)| (*n, s.lag_records.load(std::sync::atomic::Ordering::Relaxed)))
            .filter(|(_, l)| *l > 0)
            .collect();
        if lagging.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "lag never reached 0 while idle: {lagging:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (name, s) in &stages {
        assert!(!s.is_stalled(), "{name} flagged stalled while idle");
        assert!(!s.partitions().is_empty(), "{name} holds no partitions");
    }

    shutdown.cancel();
    running.join().await.expect("clean shutdown");
}
