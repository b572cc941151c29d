//! The metrics endpoint tells the truth that deploy/ relies on: after a real pipeline on
//! Apache Kafka handled a valid and a malformed record and delivered a notification over
//! gRPC, every metric name that the Prometheus rules and the Grafana dashboard query is on
//! `/metrics`, the malformed record is counted under its reason, gRPC requests are counted
//! by method and status, the process reports its memory and descriptors, every stage's lag
//! is 0 and none is flagged stalled, and the process reports ready.

use std::collections::BTreeSet;
use std::time::Duration;

use hexcast::Target;
use hexcast_api::Tokens;
use hexcast_core::Topic;
use hexcast_proto::v1 as pb;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

// The end-to-end helpers, shared with the e2e binary. This test has a binary of its own:
// the metrics recorder is process-global, and other tests' stages report under the same
// stage labels.
#[allow(dead_code)]
#[path = "e2e/common.rs"]
mod common;

/// Metric names (`hexcast_...`) in a text: the rules, the dashboard.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("hexcast_") {
        let tail = &rest[i..];
        let end =
            tail.find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')).unwrap_or(tail.len());
        let name = &tail[..end];
        // A name prefix in a regex (`hexcast_push_.*`) is not a metric.
        if !name.ends_with('_') {
            names.insert(name.to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// Deploy files that query metrics, relative to the workspace root.
fn deploy_texts() -> Vec<(String, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = vec![root.join("deploy/prometheus/rules/hexcast.rules.yml")];
    let dashboards = root.join("deploy/grafana/dashboards");
    for e in std::fs::read_dir(&dashboards).expect("deploy/grafana/dashboards") {
        files.push(e.expect("entry").path());
    }
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.display().to_string(), text)
        })
        .collect()
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect to /metrics");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").await.expect("request");
    let mut body = String::new();
    s.read_to_string(&mut body).await.expect("response");
    assert!(body.starts_with("HTTP/1.") && body.contains(" 200 "), "{}", &body[..body.len().min(200)]);
    body
}

/// The value of the series `name{labels...}` whose labels contain all of `want`.
fn value(scrape: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    scrape.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, v) = l.rsplit_once(' ')?;
        let (n, labels) = series.split_once('{').map_or((series, ""), |(n, l)| (n, l));
        if n != name || !want.iter().all(|(k, v)| labels.contains(&format!("{k}=\"{v}\""))) {
            return None;
        }
        v.parse().ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_metric_deploy_queries_is_exported_and_tells_the_truth() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let metrics_addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    hexcast_runtime::telemetry::install_prometheus(metrics_addr).expect("metrics endpoint");

    let mut cfg = common::config("metrics");
    cfg.runner.lag_refresh_ms = 200;
    hexcast::create_topics(&cfg).await.expect("topics");
    let rt = hexcast::runtime(&cfg);
    let token = "alpha-token-0123456789";
    let tokens = Tokens::new([("alpha".to_owned(), token.to_owned())]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let shutdown = CancellationToken::new();
    let running =
        hexcast::start(&cfg, &rt, &Target::ALL, Some(tokens), Some(listener), shutdown.clone()).await.expect("start");
    let health_stop = CancellationToken::new();
    let health_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let reporter = hexcast::health::serve_on(health_listener, health_stop.clone()).await;
    let watcher = tokio::spawn(hexcast::health::watch(
        reporter,
        running.readiness(),
        Duration::from_millis(100),
        shutdown.clone(),
    ));
    let push = running.push.as_ref().expect("push");
    let channel = Channel::from_shared(format!("http://{}", push.addr)).expect("uri").connect().await.expect("connect");

    let at = pb::LatLng { lat: 39.95, lng: -75.16 };
    common::subscriptions(channel.clone(), token)
        .upsert(pb::UpsertRequest {
            subscription: Some(pb::Subscription {
                subscriber_id: "s1".into(),
                areas: vec![pb::Area { shape: Some(pb::area::Shape::Point(at)) }],
                ..Default::default()
            }),
        })
        .await
        .expect("upsert");
    // A bad request: refused with its status, counted under it.
    let refused = common::subscriptions(channel.clone(), token)
        .upsert(pb::UpsertRequest { subscription: None })
        .await
        .expect_err("an upsert without a subscription is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let mut stream = common::push(channel.clone(), token)
        .subscribe(pb::SubscribeRequest { from_beginning: true, ..Default::default() })
        .await
        .expect("subscribe")
        .into_inner();
    let now_ms = (rt.clock)().as_millis();
    let valid = serde_json::json!({
        "id": "m1", "call_type": "ARMED ROBBERY", "lat": at.lat, "lng": at.lng, "occurred_at": now_ms,
    });
    common::publish_raw(
        &cfg.kafka.brokers,
        rt.names.name(Topic::Raw),
        &[("m1".into(), valid.to_string().into_bytes()), ("bad".into(), b"{\"id\": ".to_vec())],
    )
    .await;
    let batch = tokio::time::timeout(Duration::from_secs(120), stream.message())
        .await
        .expect("a notification within 120 s")
        .expect("stream")
        .expect("a batch");
    assert_eq!(batch.subscriber_ids, vec!["s1".to_owned()]);

    // Idle: wait for every stage's lag to read 0 on the endpoint itself.
    let mut stages: Vec<&str> = running.stages.iter().map(|(t, _)| t.stage().name).collect();
    stages.push("push");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let text = loop {
        let text = scrape(metrics_addr).await;
        let lagging: Vec<&str> = stages
            .iter()
            .copied()
            .filter(|s| {
                let total: f64 = text
                    .lines()
                    .filter(|l| {
                        l.starts_with("hexcast_runner_consumer_lag_records{") && l.contains(&format!("stage=\"{s}\""))
                    })
                    .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
                    .sum();
                total > 0.0
            })
            .collect();
        let ready = value(&text, "hexcast_ready", &[]) == Some(1.0);
        if lagging.is_empty() && ready {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "still lagging {lagging:?} or not ready ({ready}) after 60 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    for &s in &stages {
        assert!(text.contains(&format!("hexcast_runner_consumer_lag_records{{stage=\"{s}\"")), "no lag series for {s}");
        assert_eq!(value(&text, "hexcast_runner_stalled", &[("stage", s)]), Some(0.0), "{s} stalled or not exported");
    }
    assert_eq!(
        value(&text, "hexcast_runner_records_rejected_total", &[("stage", "ingest"), ("reason", "malformed_json")]),
        Some(1.0),
        "the malformed record, counted once under its reason"
    );
    assert!(value(&text, "hexcast_runner_records_received_total", &[("stage", "ingest")]).unwrap_or(0.0) >= 2.0);
    assert!(value(&text, "hexcast_push_delivered_ids_total", &[]).unwrap_or(0.0) >= 1.0);
    assert_eq!(value(&text, "hexcast_push_connected_backends", &[]), Some(1.0), "one backend stream open");

    // gRPC requests by method and status, and the process itself.
    let upserts = |code| value(&text, "hexcast_grpc_requests_total", &[("method", "Upsert"), ("code", code)]);
    assert_eq!(upserts("Ok"), Some(1.0), "the good upsert");
    assert_eq!(upserts("InvalidArgument"), Some(1.0), "the refused upsert");
    assert!(value(&text, "hexcast_grpc_requests_total", &[("method", "Subscribe"), ("code", "Ok")]).is_some());
    assert!(value(&text, "process_resident_memory_bytes", &[]).unwrap_or(0.0) > 1e6, "no process RSS");
    assert!(value(&text, "process_open_fds", &[]).unwrap_or(0.0) > 0.0, "no open fds count");

    // Every name deploy/ queries exists. Counters whose labels name an event this run does
    // not cause (a CSV row rejected for a reason) appear with their first event.
    let appear_with_first_event = ["hexcast_ingest_rows_rejected_total"];
    let exported = metric_names(&text);
    let mut missing = Vec::new();
    for (file, body) in deploy_texts() {
        for name in metric_names(&body) {
            if !exported.contains(&name) && !appear_with_first_event.contains(&name.as_str()) {
                missing.push(format!("{name} ({file})"));
            }
        }
    }
    assert!(missing.is_empty(), "deploy/ queries metrics that are not exported: {missing:?}");

    drop(stream);
    shutdown.cancel();
    running.join().await.expect("clean stop");
    watcher.await.expect("watcher");
    health_stop.cancel();
}

#[test]
fn metric_names_are_read_from_queries() {
    let names = metric_names(
        r#"expr: sum by (stage) (rate(hexcast_runner_batches_committed_total[5m])) and hexcast:lag:sum > 0 {"expr": "hexcast_push_.*"} hexcast_push_delivery_seconds_bucket"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        vec!["hexcast_push_delivery_seconds_bucket".to_owned(), "hexcast_runner_batches_committed_total".to_owned()]
    );
}
