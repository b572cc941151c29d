//! Dedup's state survives an aborted transaction and a process restart on Apache Kafka: a
//! dedup whose batch is aborted mid-run, and which then dies with a transaction open, is
//! replaced by a new instance that rebuilds its state from the `dedup.state` changelog; over
//! the whole run `incidents.unique` (read_committed) holds exactly one `new` per incident,
//! however often the incident was re-sent before and after the restart. Likewise when a
//! second instance joins and the group rebalances.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::time::Duration;

use hexcast_core::{
    Category, Certainty, Incident, IncidentStatus, IntoRecord, LatLng, Severity, Timestamp, Topic, Urgency,
};
use hexcast_proto::v1 as pb;
use hexcast_runtime::{FaultInjection, spawn_stage, spawn_stage_with_faults};
use prost::Message as _;
use rdkafka::ClientConfig;
use rdkafka::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use crate::common;

/// Distinct incidents before the restart.
const IDS: usize = 60;

fn incident(id: usize, version: i64, now_ms: i64) -> Incident {
    Incident {
        id: Incident::make_id("it", &id.to_string()),
        source: "it".into(),
        source_id: id.to_string(),
        version,
        category: Category::parse("crime.robbery").expect("known"),
        raw_type: "ROBBERY".into(),
        severity: Severity::Severe,
        urgency: Urgency::Immediate,
        certainty: Certainty::Observed,
        status: IncidentStatus::Active,
        occurred_at: Timestamp(now_ms),
        updated_at: Timestamp(now_ms),
        expires_at: None,
        // 2 km apart: no two of them merge.
        location: Some(LatLng::new(39.0 + id as f64 * 0.02, -75.0).expect("valid")),
        areas: vec![],
        sensitive: Default::default(),
        references: None,
        community_threat: Some(true),
        published_at: None,
    }
}

async fn publish(brokers: &str, topic: &str, incidents: &[Incident]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    for i in incidents {
        let rec = i.clone().into_record();
        let payload = rec.payload.expect("payload");
        producer
            .send(FutureRecord::to(topic).key(&rec.key).payload(&payload), Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .expect("delivered");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_aborted_then_restarted_emits_no_second_new() {
    let mut cfg = common::config("dedup-restart");
    cfg.runner.max_batch = NonZeroUsize::new(40).expect("nonzero");
    cfg.runner.linger_ms = 50;
    hexcast::create_topics(&cfg).await.expect("topics");
    let rt = hexcast::runtime(&cfg);
    let now_ms = (rt.clock)().as_millis();
    let input = rt.names.name(Topic::Normalized).to_owned();

    // First wave: every incident three times over, so every batch after the first holds
    // repeats of records an earlier batch committed.
    let wave1: Vec<Incident> = (0..3 * IDS).map(|j| incident(j % IDS, 1, now_ms)).collect();
    publish(&cfg.kafka.brokers, &input, &wave1).await;

    // First life: batch 2 is aborted (the state is rebuilt from the changelog in-process),
    // then the process dies with batch 4's transaction open.
    let faults = FaultInjection { abort_batch: Some(2), crash_before_commit_of_batch: Some(4) };
    let first_shutdown = CancellationToken::new();
    let factory = hexcast::targets::dedup_factory(&rt, &cfg.dedup, first_shutdown.clone());
    let first =
        spawn_stage_with_faults(&rt, &hexcast_core::topology::DEDUP, factory, first_shutdown, faults).expect("spawn");
    let stats = std::sync::Arc::clone(&first.stats);
    let err = first.join().await.expect_err("the first life must crash");
    assert!(err.to_string().contains("injected crash"), "{err:#}");
    assert_eq!(stats.aborted.load(std::sync::atomic::Ordering::SeqCst), 1, "batch 2 was aborted once");

    // Second wave while nobody runs: repeats of everything, newer versions of ten, and
    // twenty incidents never seen.
    let mut wave2: Vec<Incident> = (0..IDS).map(|j| incident(j, 1, now_ms)).collect();
    wave2.extend((0..10).map(|j| incident(j, 2, now_ms)));
    wave2.extend((IDS..IDS + 20).map(|j| incident(j, 1, now_ms)));
    publish(&cfg.kafka.brokers, &input, &wave2).await;

    // Second life: a new instance (same instance id) restores and finishes the work.
    let shutdown = CancellationToken::new();
    let factory = hexcast::targets::dedup_factory(&rt, &cfg.dedup, shutdown.clone());
    let second = spawn_stage(&rt, &hexcast_core::topology::DEDUP, factory, shutdown.clone()).expect("spawn");

    let brokers = cfg.kafka.brokers.clone();
    let out = rt.names.name(Topic::Unique).to_owned();
    let state = rt.names.name(Topic::DedupState).to_owned();
    let want = IDS + 10 + 20;
    let (events, changelog) = tokio::task::spawn_blocking(move || {
        let e = common::read_topic(
            &brokers,
            &out,
            "read_committed",
            want,
            Duration::from_secs(3),
            Duration::from_secs(120),
        );
        let c =
            common::read_topic(&brokers, &state, "read_committed", 1, Duration::from_secs(1), Duration::from_secs(30));
        (e, c)
    })
    .await
    .expect("reader");
    shutdown.cancel();
    second.join().await.expect("clean stop");

    let mut news: HashMap<String, usize> = HashMap::new();
    let mut updates = 0;
    for m in &events {
        let e = pb::IncidentEvent::decode(m.payload().expect("payload")).expect("IncidentEvent");
        let id = e.incident.expect("incident").id;
        match pb::EventKind::try_from(e.kind).expect("kind") {
            pb::EventKind::New => *news.entry(id).or_default() += 1,
            pb::EventKind::Update => updates += 1,
            other => panic!("unexpected {other:?} for {id}"),
        }
    }
    assert_eq!(news.len(), IDS + 20, "every incident has its new");
    let twice: Vec<_> = news.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "second new after abort or restart: {twice:?}");
    assert_eq!(updates, 10, "each newer version is one update");
    assert_eq!(events.len(), want);
    // The changelog holds every incident's state under its report id.
    let keys = common::key_counts(&changelog);
    assert_eq!(keys.len(), IDS + 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_rebalanced_to_a_second_instance_emits_no_second_new() {
    let mut cfg = common::config("dedup-rebalance");
    cfg.topics.partitions = std::num::NonZeroU32::new(4).expect("nonzero");
    hexcast::create_topics(&cfg).await.expect("topics");
    let rt_a = hexcast::runtime(&cfg);
    let mut cfg_b = cfg.clone();
    cfg_b.kafka.instance_id = Some("it-1".into());
    let rt_b = hexcast::runtime(&cfg_b);
    let now_ms = (rt_a.clock)().as_millis();
    let input = rt_a.names.name(Topic::Normalized).to_owned();
    let out = rt_a.names.name(Topic::Unique).to_owned();

    // Instance A alone sees every incident once.
    let shutdown = CancellationToken::new();
    let a = spawn_stage(
        &rt_a,
        &hexcast_core::topology::DEDUP,
        hexcast::targets::dedup_factory(&rt_a, &cfg.dedup, shutdown.clone()),
        shutdown.clone(),
    )
    .expect("spawn a");
    let wave1: Vec<Incident> = (0..IDS).map(|j| incident(j, 1, now_ms)).collect();
    publish(&cfg.kafka.brokers, &input, &wave1).await;
    let brokers = cfg.kafka.brokers.clone();
    let topic = out.clone();
    let first = tokio::task::spawn_blocking(move || {
        common::read_topic(&brokers, &topic, "read_committed", IDS, Duration::from_secs(1), Duration::from_secs(120))
    })
    .await
    .expect("reader");
    assert_eq!(first.len(), IDS, "A emitted every incident once");

    // Instance B joins: the group rebalances, both rebuild their state from the changelog.
    let b = spawn_stage(
        &rt_b,
        &hexcast_core::topology::DEDUP,
        hexcast::targets::dedup_factory(&rt_b, &cfg_b.dedup, shutdown.clone()),
        shutdown.clone(),
    )
    .expect("spawn b");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let assigned =
        |h: &hexcast_runtime::StageHandle| h.stats.assigned_partitions.load(std::sync::atomic::Ordering::SeqCst);
    while assigned(&a) == 0 || assigned(&b) == 0 || assigned(&a) + assigned(&b) != 4 {
        assert!(std::time::Instant::now() < deadline, "no rebalance: a {} b {}", assigned(&a), assigned(&b));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every incident again (repeats), and ten new ones.
    let mut wave2: Vec<Incident> = (0..IDS).map(|j| incident(j, 1, now_ms)).collect();
    wave2.extend((IDS..IDS + 10).map(|j| incident(j, 1, now_ms)));
    publish(&cfg.kafka.brokers, &input, &wave2).await;
    let brokers = cfg.kafka.brokers.clone();
    let events = tokio::task::spawn_blocking(move || {
        common::read_topic(&brokers, &out, "read_committed", IDS + 10, Duration::from_secs(5), Duration::from_secs(120))
    })
    .await
    .expect("reader");
    shutdown.cancel();
    a.join().await.expect("a stops");
    b.join().await.expect("b stops");

    let counts = common::key_counts(&events);
    assert_eq!(counts.len(), IDS + 10, "every incident has its new");
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "second new after the rebalance: {twice:?}");
    for m in &events {
        let e = pb::IncidentEvent::decode(m.payload().expect("payload")).expect("IncidentEvent");
        assert_eq!(e.kind(), pb::EventKind::New);
    }
}
