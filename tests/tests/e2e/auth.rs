//! Authentication, tenant isolation and validation of every RPC, over a real socket against
//! the push service on Apache Kafka. Two tenants share one notifications partition (the
//! worst case: only the record key separates them).

use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hexcast::Target;
use hexcast::targets::PushHandle;
use hexcast_api::Tokens;
use hexcast_core::Topic;
use hexcast_proto::v1 as pb;
use prost::Message as _;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::common;

pub(crate) const ALPHA: (&str, &str) = ("alpha", "alpha-token-0123456789");
const BETA: (&str, &str) = ("beta", "beta-token-0123456789ab");

pub(crate) struct Server {
    pub(crate) running: hexcast::Running,
    pub(crate) shutdown: CancellationToken,
    pub(crate) channel: Channel,
    pub(crate) cfg: hexcast::Config,
    pub(crate) rt: hexcast_runtime::Runtime,
}

impl Server {
    pub(crate) fn push(&self) -> &PushHandle {
        self.running.push.as_ref().expect("push running")
    }

    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        self.running.join().await.expect("clean shutdown");
    }
}

/// A config for the push-only server: one notifications partition, two shards.
pub(crate) fn push_config(name: &str) -> hexcast::Config {
    let mut cfg = common::config(name);
    cfg.topics.partitions = NonZeroU32::new(1).expect("nonzero");
    cfg.topics.shards = NonZeroU32::new(2).expect("nonzero");
    cfg.push.shutdown_grace_ms = 0;
    cfg
}

pub(crate) async fn start(name: &str) -> Server {
    start_with(push_config(name)).await
}

/// Starts the push target alone for `cfg` (plaintext channel unless TLS is configured, then
/// no channel is connected: the caller connects).
pub(crate) async fn start_with(cfg: hexcast::Config) -> Server {
    hexcast::create_topics(&cfg).await.expect("create topics");
    let rt = hexcast::runtime(&cfg);
    let tokens = Tokens::new([ALPHA, BETA].map(|(t, k)| (t.to_owned(), k.to_owned())));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let shutdown = CancellationToken::new();
    let running = hexcast::start(&cfg, &rt, &[Target::Push], Some(tokens), Some(listener), shutdown.clone())
        .await
        .expect("start push");
    let addr = running.push.as_ref().expect("push running").addr;
    let channel = Channel::from_shared(format!("http://{addr}")).expect("uri");
    let channel = if cfg.push.tls_cert_file.is_some() {
        channel.connect_lazy()
    } else {
        channel.connect().await.expect("connect")
    };
    Server { running, shutdown, channel, cfg, rt }
}

fn point(id: &str, lat: f64, lng: f64) -> pb::UpsertRequest {
    pb::UpsertRequest {
        subscription: Some(pb::Subscription {
            subscriber_id: id.to_owned(),
            areas: vec![pb::Area { shape: Some(pb::area::Shape::Point(pb::LatLng { lat, lng })) }],
            ..Default::default()
        }),
    }
}

/// Every RPC with an optional raw `authorization` value; returns each call's status.
async fn call_every_rpc(channel: &Channel, authorization: Option<&str>) -> Vec<(&'static str, Status)> {
    let value = authorization.map(|v| v.parse::<tonic::metadata::MetadataValue<_>>().expect("ascii"));
    let with = |mut req: tonic::Request<()>| {
        if let Some(v) = &value {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    };
    let mut subs = pb::subscriptions_client::SubscriptionsClient::with_interceptor(channel.clone(), with);
    let mut push = pb::push_client::PushClient::with_interceptor(channel.clone(), with);
    let get = pb::GetRequest { subscriber_id: "x".into() };
    let del = pb::DeleteRequest { subscriber_id: "x".into() };
    let sub = pb::SubscribeRequest { from_beginning: true, ..Default::default() };
    vec![
        ("Upsert", subs.upsert(point("x", 40.0, -75.0)).await.err().unwrap_or_else(|| Status::ok("accepted"))),
        ("Get", subs.get(get).await.err().unwrap_or_else(|| Status::ok("accepted"))),
        ("Delete", subs.delete(del).await.err().unwrap_or_else(|| Status::ok("accepted"))),
        (
            "BulkUpsert",
            subs.bulk_upsert(futures::stream::iter(vec![point("x", 40.0, -75.0)]))
                .await
                .err()
                .unwrap_or_else(|| Status::ok("accepted")),
        ),
        ("Subscribe", push.subscribe(sub).await.err().unwrap_or_else(|| Status::ok("accepted"))),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_rpc_refuses_missing_malformed_and_wrong_tokens() {
    let server = start("auth").await;
    for (authorization, message) in [
        (None, "missing bearer token"),
        (Some("Basic YWxwaGE6YWxwaGE="), "malformed authorization header"),
        (Some("Bearer"), "malformed authorization header"),
        (Some("Bearer beta-token-0123456789ac"), "invalid bearer token"),
        (Some("Bearer alpha-token-0123456789 extra"), "invalid bearer token"),
    ] {
        let results = call_every_rpc(&server.channel, authorization).await;
        assert_eq!(results.len(), 5, "every RPC of Subscriptions and Push");
        for (rpc, status) in results {
            assert_eq!(status.code(), Code::Unauthenticated, "{rpc} with {authorization:?}: {status:?}");
            assert_eq!(status.message(), message, "{rpc} with {authorization:?}");
        }
    }
    // The right token passes the same calls (whatever they then answer, it is not
    // UNAUTHENTICATED), so the refusals above are about the token.
    for (rpc, status) in call_every_rpc(&server.channel, Some(&format!("Bearer {}", ALPHA.1))).await {
        assert_ne!(status.code(), Code::Unauthenticated, "{rpc}: {status:?}");
    }
    server.stop().await;
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) fn notification(tenant: &str, ids: &[&str], alert_id: &str) -> Vec<u8> {
    pb::NotificationBatch {
        alert: Some(pb::Alert { alert_id: alert_id.to_owned(), ..Default::default() }),
        tenant: tenant.to_owned(),
        subscriber_ids: ids.iter().map(|s| (*s).to_owned()).collect(),
        part: 0,
        parts: 1,
        cursor: String::new(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Reads a stream until `n` batches arrived, then 2 s more for any extra.
pub(crate) async fn drain(
    stream: &mut tonic::Streaming<pb::NotificationBatch>,
    n: usize,
) -> Vec<pb::NotificationBatch> {
    let mut out = Vec::new();
    loop {
        let wait = if out.len() >= n { Duration::from_secs(2) } else { Duration::from_secs(30) };
        match tokio::time::timeout(wait, stream.message()).await {
            Ok(Ok(Some(b))) => out.push(b),
            Ok(other) => panic!("stream ended: {other:?}"),
            Err(_) => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenants_cannot_read_delete_overwrite_or_stream_each_others_data() {
    let server = start("isolation").await;
    let push = server.push();
    let mut alpha = common::subscriptions(server.channel.clone(), ALPHA.1);
    let mut beta = common::subscriptions(server.channel.clone(), BETA.1);

    let stored = alpha.upsert(point("shared-id", 40.0, -75.0)).await.expect("alpha upsert").into_inner();
    let alpha_sub = stored.subscription.expect("stored");
    assert_eq!(alpha_sub.tenant, "alpha");
    wait_until("alpha's subscriber in the index", || push.index.get("alpha/shared-id").is_some()).await;

    // Get: beta does not see alpha's subscriber under the same id.
    let get = |id: &str| pb::GetRequest { subscriber_id: id.to_owned() };
    let status = beta.get(get("shared-id")).await.expect_err("beta must not read alpha's subscriber");
    assert_eq!(status.code(), Code::NotFound);
    assert!(!status.message().contains("alpha"), "{status:?}");

    // Delete: beta's delete touches only beta's key space.
    let applied = push.loader.applied.load(Ordering::SeqCst);
    let del = beta.delete(pb::DeleteRequest { subscriber_id: "shared-id".into() }).await.expect("beta delete");
    assert!(!del.into_inner().existed);
    // Its tombstones (one per shard) have been applied by the loader...
    let shards = server.cfg.topics.shards.get() as u64;
    wait_until("beta's tombstones applied", || push.loader.applied.load(Ordering::SeqCst) >= applied + shards).await;
    // ...and alpha's subscriber is untouched.
    let back = alpha.get(get("shared-id")).await.expect("alpha still has it").into_inner();
    assert_eq!(back, alpha_sub);

    // Upsert: beta writing the same id creates beta's own subscriber.
    let beta_sub =
        beta.upsert(point("shared-id", 47.6, -122.3)).await.expect("beta upsert").into_inner().subscription.expect("s");
    wait_until("beta's subscriber in the index", || push.index.get("beta/shared-id").is_some()).await;
    assert_eq!(alpha.get(get("shared-id")).await.expect("alpha get").into_inner(), alpha_sub);
    assert_eq!(beta.get(get("shared-id")).await.expect("beta get").into_inner(), beta_sub);
    assert_ne!(alpha_sub.areas, beta_sub.areas);
    // An id cannot reach into another key space.
    for id in ["alpha/shared-id", "../alpha/shared-id"] {
        let status = beta.get(get(id)).await.expect_err("ids with '/' are refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{id}");
        assert!(status.message().starts_with("subscriber_id:"), "{status:?}");
    }

    // Subscribe: both tenants' notifications on the same partition; each stream carries
    // only its own tenant's, even when given the other tenant's cursor.
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", &server.cfg.kafka.brokers).create().expect("producer");
    let topic = server.rt.names.name(Topic::Notifications).to_owned();
    for i in 0..6 {
        let (tenant, ids): (&str, &[&str]) = if i % 2 == 0 { ("alpha", &["a1", "a2"]) } else { ("beta", &["b1"]) };
        let payload = notification(tenant, ids, &format!("alert-{i}"));
        let rec = FutureRecord::to(&topic).key(tenant).payload(&payload).partition(0);
        producer.send(rec, Duration::from_secs(10)).await.map_err(|(e, _)| e).expect("delivered");
    }
    let subscribe = pb::SubscribeRequest { from_beginning: true, ..Default::default() };
    let mut alpha_stream =
        common::push(server.channel.clone(), ALPHA.1).subscribe(subscribe.clone()).await.expect("alpha").into_inner();
    let mut beta_stream =
        common::push(server.channel.clone(), BETA.1).subscribe(subscribe).await.expect("beta").into_inner();
    let (a, b) = tokio::join!(drain(&mut alpha_stream, 3), drain(&mut beta_stream, 3));
    let alerts = |v: &[pb::NotificationBatch]| -> Vec<String> {
        v.iter().map(|b| b.alert.as_ref().map(|a| a.alert_id.clone()).unwrap_or_default()).collect()
    };
    assert_eq!(alerts(&a), ["alert-0", "alert-2", "alert-4"]);
    assert_eq!(alerts(&b), ["alert-1", "alert-3", "alert-5"]);
    assert!(a.iter().all(|x| x.tenant == "alpha" && x.subscriber_ids == ["a1", "a2"]));
    assert!(b.iter().all(|x| x.tenant == "beta" && x.subscriber_ids == ["b1"]));
    // Beta resuming from alpha's first cursor still gets only beta's records after it.
    let stolen = pb::SubscribeRequest { cursor: a[0].cursor.clone(), ..Default::default() };
    let mut s = common::push(server.channel.clone(), BETA.1).subscribe(stolen).await.expect("beta").into_inner();
    assert_eq!(alerts(&drain(&mut s, 3).await), ["alert-1", "alert-3", "alert-5"]);
    server.stop().await;
}

/// Asserts INVALID_ARGUMENT whose message starts with `field: `.
fn assert_invalid(status: Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
    assert!(status.message().starts_with(&format!("{field}: ")), "expected the message to name `{field}`: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_requests_are_invalid_argument_naming_the_field() {
    let server = start("validation").await;
    let mut subs = common::subscriptions(server.channel.clone(), ALPHA.1);
    let area = |shape| pb::Area { shape: Some(shape) };
    let with = |f: &dyn Fn(&mut pb::Subscription)| {
        let mut req = point("v1", 40.0, -75.0);
        if let Some(s) = req.subscription.as_mut() {
            f(s);
        }
        req
    };
    let cases: Vec<(pb::UpsertRequest, &str)> = vec![
        (pb::UpsertRequest { subscription: None }, "subscription"),
        (with(&|s| s.subscriber_id = String::new()), "subscription.subscriber_id"),
        (with(&|s| s.subscriber_id = "a/b".into()), "subscription.subscriber_id"),
        (with(&|s| s.subscriber_id = "x".repeat(129)), "subscription.subscriber_id"),
        (with(&|s| s.areas.clear()), "subscription.areas"),
        (
            with(&|s| s.areas[0] = area(pb::area::Shape::Point(pb::LatLng { lat: 91.0, lng: 0.0 }))),
            "subscription.areas[0]",
        ),
        (
            with(&|s| {
                s.areas.push(area(pb::area::Shape::Circle(pb::Circle {
                    center: Some(pb::LatLng { lat: 40.0, lng: -75.0 }),
                    radius_m: -5.0,
                })))
            }),
            "subscription.areas[1]",
        ),
        (with(&|s| s.areas.push(pb::Area { shape: None })), "subscription.areas[1]"),
        (
            // A whole-state polygon: far more cells than max_cells_per_subscription.
            with(&|s| {
                let ring = [(39.7, -80.5), (42.3, -80.5), (42.3, -74.7), (39.7, -74.7), (39.7, -80.5)];
                s.areas[0] = area(pb::area::Shape::Polygon(pb::Polygon {
                    exterior: Some(pb::LinearRing {
                        points: ring.iter().map(|&(lat, lng)| pb::LatLng { lat, lng }).collect(),
                    }),
                    holes: vec![],
                }))
            }),
            "subscription.areas[0]",
        ),
        (
            with(&|s| {
                s.filter = Some(pb::SubscriptionFilter { categories: vec!["nonsense.x".into()], ..Default::default() })
            }),
            "subscription.filter.categories[0]",
        ),
        (
            with(&|s| s.filter = Some(pb::SubscriptionFilter { min_severity: 99, ..Default::default() })),
            "subscription.filter.min_severity",
        ),
    ];
    for (req, field) in cases {
        assert_invalid(subs.upsert(req).await.expect_err(field), field);
    }
    for id in ["", "  ", "a/b"] {
        assert_invalid(subs.get(pb::GetRequest { subscriber_id: id.into() }).await.expect_err("get"), "subscriber_id");
        let del = pb::DeleteRequest { subscriber_id: id.into() };
        assert_invalid(subs.delete(del).await.expect_err("delete"), "subscriber_id");
    }
    let bulk = vec![point("ok-1", 40.0, -75.0), point("ok-2", 40.0, -75.0), with(&|s| s.areas.clear())];
    let status = subs.bulk_upsert(futures::stream::iter(bulk)).await.expect_err("bulk");
    assert_invalid(status, "message[2].subscription.areas");
    let mut push = common::push(server.channel.clone(), ALPHA.1);
    for cursor in ["garbage", "v1.0.-1.0", "v1.7.0.0"] {
        let req = pb::SubscribeRequest { cursor: cursor.into(), ..Default::default() };
        assert_invalid(push.subscribe(req).await.expect_err(cursor), "cursor");
    }
    server.stop().await;
}
