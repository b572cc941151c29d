//! The process health endpoint tells the truth: NOT_SERVING until every stage holds
//! partitions and the subscriber index has caught up, SERVING then, NOT_SERVING again at
//! shutdown. Read over real gRPC (grpc.health.v1 Watch) against a real broker.

use std::time::{Duration, Instant};

use hexcast::Target;
use hexcast_api::Tokens;
use hexcast_core::cells::{GeoConfig, ShardMap};
use hexcast_core::{OutRecord, Timestamp, Topic};
use hexcast_proto::v1 as pb;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::common;

const SUBSCRIBERS: usize = 3_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_is_serving_only_when_stages_hold_partitions_and_the_index_caught_up() {
    let cfg = common::config("health");
    hexcast::create_topics(&cfg).await.expect("create topics");
    let rt = hexcast::runtime(&cfg);

    // Subscribers already stored before the process starts: the index has work to do.
    let geo = GeoConfig::default();
    let shard_map = ShardMap { territory_res: geo.territory_resolution, shards: cfg.topics.shards.get() };
    let mut records = Vec::new();
    for i in 0..SUBSCRIBERS {
        let center = hexcast_core::LatLng::new(39.9 + (i % 100) as f64 * 0.001, -75.2 + (i / 100) as f64 * 0.001)
            .expect("valid point");
        let api = pb::Subscription {
            subscriber_id: format!("s{i}"),
            areas: vec![pb::Area {
                shape: Some(pb::area::Shape::Circle(pb::Circle { center: Some(center.into()), radius_m: 500.0 })),
            }],
            ..Default::default()
        };
        let sub = hexcast_api::subscriptions::stored_subscription(&geo, &shard_map, 20_000, "alpha", api, Timestamp(0))
            .expect("valid subscription");
        for &shard in &sub.shards {
            records.push(
                OutRecord::proto(
                    Topic::Subscriptions,
                    sub.key(),
                    &pb::Subscription::from(&sub),
                    "hexcast.v1.Subscription",
                )
                .on_partition(shard as i32),
            );
        }
    }
    hexcast_runtime::Writer::new(&rt, "test").expect("writer").write(records).await.expect("subscriptions stored");

    let health_stop = CancellationToken::new();
    let health_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let health_addr = health_listener.local_addr().expect("addr");
    let reporter = hexcast::health::serve_on(health_listener, health_stop.clone()).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{health_addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest { service: String::new() })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.message().await.expect("status").expect("a first status");
    assert_eq!(first.status, ServingStatus::NotServing as i32, "health must start NOT_SERVING");

    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let tokens = Tokens::new([("alpha".to_owned(), "alpha-token-0123456789".to_owned())]);
    let started = Instant::now();
    let running =
        hexcast::start(&cfg, &rt, &Target::ALL, Some(tokens), Some(listener), shutdown.clone()).await.expect("start");
    let readiness = running.readiness();
    let watcher =
        tokio::spawn(hexcast::health::watch(reporter, readiness, Duration::from_millis(100), shutdown.clone()));

    // NOT_SERVING (repeated while not ready) until SERVING, and by then the process really
    // is doing its job.
    tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let s = watch.message().await.expect("status").expect("a status");
            if s.status == ServingStatus::Serving as i32 {
                break;
            }
            assert_eq!(s.status, ServingStatus::NotServing as i32, "unexpected status {s:?}");
        }
    })
    .await
    .expect("SERVING within 120 s");
    let push = running.push.as_ref().expect("push running");
    assert!(push.loader.is_caught_up(), "SERVING before the index caught up");
    assert_eq!(push.index.len(), SUBSCRIBERS, "SERVING with a partial index");
    for (target, stage) in &running.stages {
        let held = stage.stats.assigned_partitions.load(std::sync::atomic::Ordering::SeqCst);
        assert!(held > 0, "SERVING while {target} holds no partition");
    }
    eprintln!(
        "health: SERVING {:.2} s after start ({SUBSCRIBERS} subscribers loaded)",
        started.elapsed().as_secs_f64()
    );

    // Shutdown: NOT_SERVING before the process is gone.
    shutdown.cancel();
    let last = tokio::time::timeout(Duration::from_secs(30), watch.message())
        .await
        .expect("a status at shutdown")
        .expect("status")
        .expect("a status");
    assert_eq!(last.status, ServingStatus::NotServing as i32);
    watcher.await.expect("watcher");
    running.join().await.expect("clean stop");
    health_stop.cancel();
}
