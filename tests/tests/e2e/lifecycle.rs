//! The push server's life cycle and transport: graceful shutdown (health NOT_SERVING, then
//! open streams end with UNAVAILABLE, and a new instance resumes from the cursor without
//! loss), TLS with rustls, and the request size limit.

use std::collections::BTreeSet;
use std::time::Duration;

use hexcast_core::Topic;
use hexcast_proto::v1 as pb;
use rdkafka::ClientConfig;
use rdkafka::producer::FutureProducer;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::auth::{ALPHA, drain, push_config, start_with};
use crate::common;
use crate::streams::{Pair, pairs, publish};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_goes_not_serving_then_ends_streams_resumably_and_another_instance_resumes() {
    let mut cfg = push_config("shutdown");
    cfg.push.shutdown_grace_ms = 3_000;
    let server = start_with(cfg.clone()).await;
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", &cfg.kafka.brokers).create().expect("producer");
    let topic = server.rt.names.name(Topic::Notifications).to_owned();
    let all = publish(&producer, &topic, 0, 10).await;

    let mut health = HealthClient::new(server.channel.clone());
    let service = "hexcast.v1.Push".to_owned();
    let mut watch =
        health.watch(HealthCheckRequest { service: service.clone() }).await.expect("health watch").into_inner();
    let first = watch.message().await.expect("watch").expect("status");
    assert_eq!(first.status(), ServingStatus::Serving);

    let req = pb::SubscribeRequest { from_beginning: true, max_batch_ids: 2, ..Default::default() };
    let mut stream =
        common::push(server.channel.clone(), ALPHA.1).subscribe(req).await.expect("subscribe").into_inner();
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(stream.message().await.expect("stream").expect("batch"));
    }

    server.shutdown.cancel();
    let next = tokio::time::timeout(Duration::from_secs(10), watch.message()).await.expect("watch update");
    assert_eq!(next.expect("watch").expect("status").status(), ServingStatus::NotServing);
    // The stream ends with UNAVAILABLE (retryable), after whatever was already in flight.
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message()).await.expect("stream ends") {
            Ok(Some(batch)) => got.push(batch),
            Ok(None) => panic!("stream ended without a status the client can act on"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("last cursor"), "{status:?}");
    // During the grace period: probes see NOT_SERVING, new streams are refused.
    let check = health.check(HealthCheckRequest { service: String::new() }).await.expect("check during grace");
    assert_eq!(check.into_inner().status(), ServingStatus::NotServing);
    let again = common::push(server.channel.clone(), ALPHA.1)
        .subscribe(pb::SubscribeRequest::default())
        .await
        .expect_err("no new streams while draining");
    assert_eq!(again.code(), Code::Unavailable);
    drop(watch);
    server.running.join().await.expect("clean shutdown");

    // Another instance on the same topics: resume from the last cursor, lose nothing.
    let cursor = got.last().map(|b| b.cursor.clone()).expect("cursor");
    let server = start_with(cfg).await;
    let req = pb::SubscribeRequest { cursor, max_batch_ids: 2, ..Default::default() };
    let mut stream = common::push(server.channel.clone(), ALPHA.1).subscribe(req).await.expect("resume").into_inner();
    let want = 30 - got.len(); // 10 records of 5 ids in batches of 2, 2, 1
    got.extend(drain(&mut stream, want).await);
    let received = pairs(&got);
    assert_eq!(received.len(), all.len(), "no duplicates, nothing lost");
    assert_eq!(received.into_iter().collect::<BTreeSet<Pair>>(), all);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_serves_with_a_configured_certificate_and_refuses_plaintext() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("self-signed certificate");
    let (cert_pem, key_pem) = (key.cert.pem(), key.signing_key.serialize_pem());
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, &cert_pem).expect("write cert");
    std::fs::write(&key_file, &key_pem).expect("write key");

    // Half a configuration, or a file that is not PEM, fails at start naming the key.
    let mut cfg = push_config("tls");
    cfg.push.tls_cert_file = Some(cert_file.clone());
    let err = cfg.push.tls().err().map(|e| format!("{e:#}")).unwrap_or_default();
    assert!(err.contains("push.tls_key_file"), "{err}");
    cfg.push.tls_key_file = Some(cert_file.clone());
    let err = cfg.push.tls().err().map(|e| format!("{e:#}")).unwrap_or_default();
    assert!(err.contains("push.tls_key_file") && err.contains("PEM"), "{err}");

    cfg.push.tls_key_file = Some(key_file);
    let server = start_with(cfg).await;
    let addr = server.push().addr;
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&cert_pem)).domain_name("localhost");
    let channel = Channel::from_shared(format!("https://127.0.0.1:{}", addr.port()))
        .expect("uri")
        .tls_config(tls)
        .expect("client tls")
        .connect()
        .await
        .expect("TLS connect");
    let mut subs = common::subscriptions(channel.clone(), ALPHA.1);
    let req = pb::UpsertRequest {
        subscription: Some(pb::Subscription {
            subscriber_id: "over-tls".into(),
            areas: vec![pb::Area { shape: Some(pb::area::Shape::Point(pb::LatLng { lat: 40.0, lng: -75.0 })) }],
            ..Default::default()
        }),
    };
    let stored = subs.upsert(req).await.expect("upsert over TLS").into_inner();
    assert_eq!(stored.subscription.expect("stored").subscriber_id, "over-tls");
    let health = HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await;
    assert_eq!(health.expect("health over TLS").into_inner().status(), ServingStatus::Serving);

    // The same port in plaintext gets nothing.
    let plain = Channel::from_shared(format!("http://{addr}")).expect("uri").connect_lazy();
    let refused = HealthClient::new(plain).check(HealthCheckRequest { service: String::new() }).await;
    assert!(refused.is_err(), "plaintext must not be served on a TLS port: {refused:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_over_the_size_limit_are_refused() {
    let mut cfg = push_config("limits");
    cfg.push.max_request_bytes = std::num::NonZeroUsize::new(4_096).expect("nonzero");
    let server = start_with(cfg).await;
    let mut subs = common::subscriptions(server.channel.clone(), ALPHA.1);
    // A 1,000-vertex ring (about 18 KB encoded), well over 4 KB.
    let points: Vec<pb::LatLng> = (0..=1_000)
        .map(|i| {
            let a = (i % 1_000) as f64 / 1_000.0 * std::f64::consts::TAU;
            pb::LatLng { lat: 40.0 + 0.01 * a.sin(), lng: -75.0 + 0.01 * a.cos() }
        })
        .collect();
    let polygon = pb::Polygon { exterior: Some(pb::LinearRing { points }), holes: vec![] };
    let big = pb::UpsertRequest {
        subscription: Some(pb::Subscription {
            subscriber_id: "big".into(),
            areas: vec![pb::Area { shape: Some(pb::area::Shape::Polygon(polygon)) }],
            ..Default::default()
        }),
    };
    let status = subs.upsert(big).await.expect_err("over the limit");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("4096"), "{status:?}");
    // A small request still passes.
    let small = pb::UpsertRequest {
        subscription: Some(pb::Subscription {
            subscriber_id: "small".into(),
            areas: vec![pb::Area { shape: Some(pb::area::Shape::Point(pb::LatLng { lat: 40.0, lng: -75.0 })) }],
            ..Default::default()
        }),
    };
    subs.upsert(small).await.expect("under the limit");
    server.stop().await;
}
