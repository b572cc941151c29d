//! An alert's whole life on Apache Kafka: the subscribers notified of an incident get its
//! update and its all-clear even after they moved away; a subscriber who arrives later gets
//! the update only when inside it. Each notification carries the alert's expiry, a collapse
//! key stable across the incident's events and per-subscriber idempotency keys; a stream
//! split by `max_batch_ids` labels its pieces; a cursor past the end is OUT_OF_RANGE.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;
use std::time::Duration;

use hexcast::Target;
use hexcast_api::Tokens;
use hexcast_core::{LatLng, Topic};
use hexcast_proto::v1 as pb;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::common;

const TENANT: (&str, &str) = ("alpha", "alpha-token-0123456789");

fn upsert(id: &str, at: LatLng) -> pb::UpsertRequest {
    pb::UpsertRequest {
        subscription: Some(pb::Subscription {
            subscriber_id: id.to_owned(),
            areas: vec![pb::Area { shape: Some(pb::area::Shape::Point(at.into())) }],
            ..Default::default()
        }),
    }
}

fn raw(version: u32, status: &str, at: LatLng, now_ms: i64) -> (String, Vec<u8>) {
    let body = serde_json::json!({
        "id": "r1", "version": version, "call_type": "ARMED ROBBERY", "lat": at.lat(), "lng": at.lng(),
        "occurred_at": now_ms, "address": "1 TEST ST", "status": status,
    });
    ("r1".to_owned(), body.to_string().into_bytes())
}

/// Reads batches until every alert of `want` has its subscriber set, then 2 s more (a
/// duplicate or an unexpected id would show up).
async fn read_until(
    stream: &mut tonic::Streaming<pb::NotificationBatch>,
    want: &BTreeMap<String, BTreeSet<String>>,
    got: &mut Vec<pb::NotificationBatch>,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let have = ids_by_alert(got);
        let done = want.iter().all(|(a, ids)| have.get(a).is_some_and(|h| ids.is_subset(h)));
        let wait = if done { Duration::from_secs(2) } else { deadline - tokio::time::Instant::now() };
        match tokio::time::timeout(wait, stream.message()).await {
            Ok(Ok(Some(b))) => got.push(b),
            Ok(other) => panic!("stream ended: {other:?}"),
            Err(_) if done => return,
            Err(_) => panic!("timed out waiting for {want:?}; have {have:?}"),
        }
    }
}

fn ids_by_alert(batches: &[pb::NotificationBatch]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for b in batches {
        let a = b.alert.as_ref().map(|a| a.alert_id.clone()).unwrap_or_default();
        out.entry(a).or_default().extend(b.subscriber_ids.iter().cloned());
    }
    out
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recipients_who_moved_get_the_update_and_the_all_clear_and_newcomers_only_inside() {
    let mut cfg = common::config("recipients");
    cfg.topics.partitions = NonZeroU32::new(2).expect("nonzero");
    cfg.topics.shards = NonZeroU32::new(4).expect("nonzero");
    hexcast::create_topics(&cfg).await.expect("create topics");
    let rt = hexcast::runtime(&cfg);
    let tokens = Tokens::new([(TENANT.0.to_owned(), TENANT.1.to_owned())]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let shutdown = CancellationToken::new();
    let running = hexcast::start(&cfg, &rt, &Target::ALL, Some(tokens), Some(listener), shutdown.clone())
        .await
        .expect("start pipeline");
    let push = running.push.as_ref().expect("push running");
    let channel = Channel::from_shared(format!("http://{}", push.addr)).expect("uri").connect().await.expect("connect");
    let mut subs = common::subscriptions(channel.clone(), TENANT.1);

    // Wait until the index holds every subscriber where it was last put.
    let settle = |placed: Vec<(&'static str, LatLng)>| {
        let index = std::sync::Arc::clone(&push.index);
        let precision = cfg.geo.precision;
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                let ok = placed.iter().all(|(id, at)| {
                    index.get(&format!("{}/{id}", TENANT.0)).is_some_and(|s| {
                        matches!(s.places.first(), Some(hexcast_core::Place::Disc { cell, .. }) if *cell == at.cell(precision))
                    })
                });
                if ok {
                    return;
                }
                assert!(std::time::Instant::now() < deadline, "the index never showed {placed:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    let site = LatLng::new(40.1218, -75.3446).expect("valid");
    let first = vec![("mover", site.destination(45.0, 100.0)), ("stayer", site.destination(200.0, 250.0))];
    for (id, at) in &first {
        subs.upsert(upsert(id, *at)).await.expect("upsert");
    }
    settle(first).await;

    let mut stream = common::push(channel.clone(), TENANT.1)
        .subscribe(pb::SubscribeRequest { from_beginning: true, ..Default::default() })
        .await
        .expect("subscribe")
        .into_inner();
    let raw_topic = rt.names.name(Topic::Raw).to_owned();
    let now_ms = (rt.clock)().as_millis();
    common::publish_raw(&cfg.kafka.brokers, &raw_topic, &[raw(1, "active", site, now_ms)]).await;
    let mut got = Vec::new();
    let mut want = BTreeMap::from([("it:r1@1".to_owned(), set(&["mover", "stayer"]))]);
    read_until(&mut stream, &want, &mut got).await;

    // The mover goes 20 km away; one newcomer arrives inside the area, one outside it.
    let moved = vec![
        ("mover", site.destination(0.0, 20_000.0)),
        ("inside", site.destination(120.0, 300.0)),
        ("outside", site.destination(300.0, 3_000.0)),
    ];
    for (id, at) in &moved {
        subs.upsert(upsert(id, *at)).await.expect("upsert");
    }
    settle(moved).await;
    common::publish_raw(&cfg.kafka.brokers, &raw_topic, &[raw(2, "active", site, now_ms)]).await;
    want.insert("it:r1@2".to_owned(), set(&["inside", "mover", "stayer"]));
    read_until(&mut stream, &want, &mut got).await;
    common::publish_raw(&cfg.kafka.brokers, &raw_topic, &[raw(3, "closed", site, now_ms)]).await;
    want.insert("it:r1@3".to_owned(), set(&["inside", "mover", "stayer"]));
    read_until(&mut stream, &want, &mut got).await;

    // Exactly the expected sets, each id once.
    assert_eq!(ids_by_alert(&got), want);
    let total: usize = got.iter().map(|b| b.subscriber_ids.len()).sum();
    assert_eq!(total, want.values().map(BTreeSet::len).sum::<usize>(), "duplicated notifications");
    let kind_of = |alert: &str| {
        let b = got.iter().find(|b| b.alert.as_ref().is_some_and(|a| a.alert_id == alert)).expect("batch");
        b.alert.as_ref().map(|a| a.kind()).expect("alert")
    };
    assert_eq!(kind_of("it:r1@1"), pb::EventKind::New);
    assert_eq!(kind_of("it:r1@2"), pb::EventKind::Update);
    assert_eq!(kind_of("it:r1@3"), pb::EventKind::Close);
    // One collapse key for the incident; expiry on every batch (the seed's default hour for
    // the alert, the close time for the all-clear); one idempotency key per id, distinct.
    let keys: BTreeSet<&str> = got.iter().map(|b| b.collapse_key.as_str()).collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let mut idem = BTreeSet::new();
    for b in &got {
        let a = b.alert.as_ref().expect("alert");
        assert_eq!(b.expires_at_ms, a.expires_at_ms);
        assert!(b.expires_at_ms >= now_ms, "{b:?}");
        if a.kind() == pb::EventKind::Close {
            assert!(b.expires_at_ms <= (rt.clock)().as_millis() && b.expired, "an all-clear ends the alert: {b:?}");
        } else {
            assert!(b.expires_at_ms >= a.issued_at_ms + 3_600_000 && !b.expired, "{b:?}");
        }
        assert_eq!(b.idempotency_keys.len(), b.subscriber_ids.len());
        idem.extend(b.idempotency_keys.iter().cloned());
    }
    assert_eq!(idem.len(), total);

    // Read again one id at a time: the first alert's two ids come as pieces 0 and 1 of 2.
    let mut one = common::push(channel.clone(), TENANT.1)
        .subscribe(pb::SubscribeRequest { from_beginning: true, max_batch_ids: 1, ..Default::default() })
        .await
        .expect("subscribe")
        .into_inner();
    let mut pieces = Vec::new();
    read_until(&mut one, &want, &mut pieces).await;
    let first_alert: Vec<(u32, u32, u32, u32)> = pieces
        .iter()
        .filter(|b| b.alert.as_ref().is_some_and(|a| a.alert_id == "it:r1@1"))
        .map(|b| (b.part, b.parts, b.piece, b.pieces))
        .collect();
    assert_eq!(first_alert, vec![(0, 1, 0, 2), (0, 1, 1, 2)]);

    // A cursor past the end of the partition is refused, not waited on forever.
    let last = got.last().expect("a batch").cursor.clone();
    let partition = last.split('.').nth(1).expect("cursor partition").to_owned();
    let past = format!("v1.{partition}.1000000.0");
    let err = common::push(channel.clone(), TENANT.1)
        .subscribe(pb::SubscribeRequest { cursor: past, ..Default::default() })
        .await
        .expect_err("out of range");
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
    // The end itself is a valid place to wait at.
    assert!(
        common::push(channel, TENANT.1)
            .subscribe(pb::SubscribeRequest { cursor: last, ..Default::default() })
            .await
            .is_ok()
    );

    shutdown.cancel();
    running.join().await.expect("clean shutdown");
}
