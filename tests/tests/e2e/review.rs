//! The editorial hold on Apache Kafka: policy holds two hostage incidents (the seed policy
//! holds `crime.hostage`); a reviewer lists them over gRPC, approves one, which is released
//! to `alerts`, and rejects the other, which never is; both verdicts are audited with the
//! reviewer and reason, and a decided hold cannot be decided again.

use std::time::Duration;

use hexcast::Target;
use hexcast_api::Tokens;
use hexcast_core::{
    Category, Certainty, EventKind, Incident, IncidentEvent, IncidentStatus, IntoRecord, LatLng, Severity, Timestamp,
    Topic, Urgency,
};
use hexcast_proto::v1 as pb;
use hexcast_proto::v1::review_client::ReviewClient;
use prost::Message as _;
use rdkafka::ClientConfig;
use rdkafka::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use crate::common;

const TOKEN: &str = "ana-reviewer-token-0123";

fn hostage(id: &str, now_ms: i64) -> IncidentEvent {
    let incident = Incident {
        id: Incident::make_id("pd", id),
        source: "pd".into(),
        source_id: id.into(),
        version: 1,
        category: Category::parse("crime.hostage").expect("known"),
        raw_type: "HOSTAGE".into(),
        severity: Severity::Extreme,
        urgency: Urgency::Immediate,
        certainty: Certainty::Observed,
        status: IncidentStatus::Active,
        occurred_at: Timestamp(now_ms),
        updated_at: Timestamp(now_ms),
        expires_at: None,
        location: Some(LatLng::new(40.1, -75.3).expect("valid")),
        areas: vec![],
        sensitive: Default::default(),
        references: None,
        community_threat: Some(true),
        published_at: None,
    };
    IncidentEvent { kind: EventKind::New, incident, merged_ids: vec![] }
}

fn request(id: &str, reason: &str, token: &str) -> tonic::Request<pb::ReviewDecisionRequest> {
    let mut req = tonic::Request::new(pb::ReviewDecisionRequest {
        incident_id: id.into(),
        reviewer: String::new(),
        reason: reason.into(),
    });
    let bearer: MetadataValue<_> = format!("Bearer {token}").parse().expect("ascii");
    req.metadata_mut().insert("authorization", bearer);
    req
}

fn list_request() -> tonic::Request<pb::ListPendingRequest> {
    let mut req = tonic::Request::new(pb::ListPendingRequest { limit: 0 });
    let bearer: MetadataValue<_> = format!("Bearer {TOKEN}").parse().expect("ascii");
    req.metadata_mut().insert("authorization", bearer);
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn held_alerts_are_released_by_approve_and_dropped_by_reject_and_both_audited() {
    let mut cfg = common::config("review");
    cfg.review.tick_interval_ms = 200;
    hexcast::create_topics(&cfg).await.expect("topics");
    let rt = hexcast::runtime(&cfg);
    let tokens = Tokens::new([("ana".to_owned(), TOKEN.to_owned())]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let shutdown = CancellationToken::new();
    let running = hexcast::start_with_review(
        &cfg,
        &rt,
        &[Target::Policy, Target::Review],
        None,
        None,
        Some((tokens, listener)),
        shutdown.clone(),
    )
    .await
    .expect("start");
    let addr = running.review.as_ref().expect("review running").addr;
    let channel = Channel::from_shared(format!("http://{addr}")).expect("uri").connect().await.expect("connect");
    let mut client = ReviewClient::new(channel);

    let now_ms = (rt.clock)().as_millis();
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", &cfg.kafka.brokers).create().expect("producer");
    for id in ["h1", "h2"] {
        let rec = hostage(id, now_ms).into_record();
        let payload = rec.payload.expect("payload");
        producer
            .send(
                FutureRecord::to(rt.names.name(Topic::Unique)).key(&rec.key).payload(&payload),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("delivered");
    }

    // Both wait for a reviewer.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let pending = loop {
        let p = client.list_pending(list_request()).await.expect("list").into_inner().pending;
        if p.len() == 2 {
            break p;
        }
        assert!(std::time::Instant::now() < deadline, "pending: {p:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(pending[0].category, "crime.hostage");
    assert!(!pending[0].headline.is_empty() && pending[0].deadline_ms > pending[0].held_at_ms);

    // Bad requests get the right status, naming the field.
    let e = client.approve(request("pd:h1", "", TOKEN)).await.expect_err("no reason");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("reason"), "{e:?}");
    let e = client.approve(request("pd:h1", "ok", "wrong-token-0123456789")).await.expect_err("bad token");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);

    assert!(
        client
            .approve(request("pd:h1", "verified with the scene", TOKEN))
            .await
            .expect("approve")
            .into_inner()
            .recorded
    );
    assert!(client.reject(request("pd:h2", "duplicate report", TOKEN)).await.expect("reject").into_inner().recorded);
    // Once decided, never again.
    assert!(!client.reject(request("pd:h1", "changed my mind", TOKEN)).await.expect("reject").into_inner().recorded);

    let brokers = cfg.kafka.brokers.clone();
    let (alerts_topic, audit_topic) = (rt.names.name(Topic::Alerts).to_owned(), rt.names.name(Topic::Audit).to_owned());
    let (alerts, audit) = tokio::task::spawn_blocking(move || {
        let a = common::read_topic(
            &brokers,
            &alerts_topic,
            "read_committed",
            1,
            Duration::from_secs(3),
            Duration::from_secs(90),
        );
        let d = common::read_topic(
            &brokers,
            &audit_topic,
            "read_committed",
            4,
            Duration::from_secs(2),
            Duration::from_secs(90),
        );
        (a, d)
    })
    .await
    .expect("reader");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !client.list_pending(list_request()).await.expect("list").into_inner().pending.is_empty() {
        assert!(std::time::Instant::now() < deadline, "holds still pending");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    running.join().await.expect("clean stop");

    let released: Vec<pb::Alert> =
        alerts.iter().map(|m| pb::Alert::decode(m.payload().expect("payload")).expect("alert")).collect();
    assert_eq!(released.len(), 1, "only the approved alert is released: {released:?}");
    assert_eq!(released[0].incident_id, "pd:h1");
    let decisions: Vec<pb::PolicyDecision> =
        audit.iter().map(|m| pb::PolicyDecision::decode(m.payload().expect("payload")).expect("decision")).collect();
    let of = |id: &str| {
        decisions
            .iter()
            .filter(|d| d.incident_id == id)
            .map(|d| (d.decision(), d.rule.clone(), d.reason.clone(), d.reviewer.clone(), d.note.clone()))
            .collect::<Vec<_>>()
    };
    let held = (pb::Decision::Held, "hold".to_owned(), "held_for_review".to_owned(), String::new(), String::new());
    assert_eq!(
        of("pd:h1"),
        vec![
            held.clone(),
            (
                pb::Decision::Released,
                "review".to_owned(),
                "approved".to_owned(),
                "ana".to_owned(),
                "verified with the scene".to_owned()
            )
        ]
    );
    assert_eq!(
        of("pd:h2"),
        vec![
            held,
            (
                pb::Decision::Rejected,
                "review".to_owned(),
                "rejected_by_reviewer".to_owned(),
                "ana".to_owned(),
                "duplicate report".to_owned()
            )
        ]
    );
}
