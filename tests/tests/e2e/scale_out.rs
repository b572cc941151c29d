//! Scale-out on Apache Kafka: three push instances share the six shards. Each holds only
//! the subscribers of the alerts.indexed partitions it is assigned (the table-stream
//! join), `Subscriptions.Get` answers from any instance (forwarded to the peer that holds
//! the subscriber), and when one instance leaves and another joins, every (alert,
//! subscriber) pair is notified exactly once: alerts published while the newcomer is still
//! loading wait for its load instead of missing anyone.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hexcast::{Config, Running, Target};
use hexcast_api::{Role, Tokens};
use hexcast_core::cells::ShardMap;
use hexcast_core::{Alert, Area, Category, LatLng, Subscription, Timestamp, Topic};
use hexcast_match::SubscriberIndex;
use hexcast_proto::v1 as pb;
use hexcast_runtime::Writer;
use prost::Message as _;
use rdkafka::ClientConfig;
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::common;

const TENANTS: [(&str, &str); 2] = [("alpha", "alpha-token-0123456789"), ("beta", "beta-token-0123456789ab")];
const SHARDS: u32 = 6;

fn tokens() -> Tokens {
    Tokens::with_roles(TENANTS.iter().map(|(t, k)| ((*t).to_owned(), (*k).to_owned(), Role::Backend)))
}

/// Cluster centers on a grid over the contiguous US: far more territories than shards.
fn clusters() -> Vec<LatLng> {
    let mut out = Vec::new();
    for i in 0..6 {
        for j in 0..6 {
            out.push(LatLng::new(30.5 + 2.8 * f64::from(i), -120.0 + 8.5 * f64::from(j)).expect("valid"));
        }
    }
    out
}

struct Instance {
    name: String,
    addr: SocketAddr,
    running: Running,
    shutdown: CancellationToken,
}

impl Instance {
    fn push(&self) -> &hexcast::targets::PushHandle {
        self.running.push.as_ref().expect("push running")
    }

    fn assigned(&self) -> BTreeSet<u32> {
        self.push().matcher.stats.partitions().into_iter().map(|p| p as u32).collect()
    }
}

async fn start(cfg: &Config, name: &str, listener: tokio::net::TcpListener, peers: &[SocketAddr]) -> Instance {
    let mut cfg = cfg.clone();
    cfg.kafka.instance_id = Some(format!("it-{name}"));
    cfg.push.peers = peers.iter().map(|a| format!("http://{a}")).collect();
    let rt = hexcast::runtime(&cfg);
    let shutdown = CancellationToken::new();
    let addr = listener.local_addr().expect("addr");
    let running = hexcast::start(&cfg, &rt, &[Target::Push], Some(tokens()), Some(listener), shutdown.clone())
        .await
        .expect("start push");
    Instance { name: name.to_owned(), addr, running, shutdown }
}

async fn bind() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind")
}

async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}")).expect("uri").connect().await.expect("connect")
}

/// Subscribers that a set of shards holds.
fn held_by(subs: &[Subscription], shards: &BTreeSet<u32>) -> usize {
    subs.iter().filter(|s| s.shards.iter().any(|x| shards.contains(x))).count()
}

/// Waits until the instances split every shard between them, each is ready (its index
/// holds the subscriptions partitions of its assignment), and each index holds exactly the
/// subscribers of its shards: nothing of the others'.
async fn wait_settled(instances: &[&Instance], subs: &[Subscription]) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let assigned: Vec<BTreeSet<u32>> = instances.iter().map(|i| i.assigned()).collect();
        let all: BTreeSet<u32> = assigned.iter().flatten().copied().collect();
        let disjoint = assigned.iter().map(BTreeSet::len).sum::<usize>() == all.len();
        let ready = instances.iter().all(|i| i.running.readiness().check().is_ok());
        let sizes_ok =
            instances.iter().zip(&assigned).all(|(i, a)| !a.is_empty() && i.push().index.len() == held_by(subs, a));
        if all.len() == SHARDS as usize && disjoint && ready && sizes_ok {
            return;
        }
        let state: Vec<String> = instances
            .iter()
            .zip(&assigned)
            .map(|(i, a)| {
                format!("{}: shards {a:?}, index {} (want {})", i.name, i.push().index.len(), held_by(subs, a))
            })
            .collect();
        assert!(Instant::now() < deadline, "instances did not settle: {state:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every (alert, tenant, subscriber) of the committed notifications, with repeats.
fn notified(brokers: &str, topic: &str, want: usize) -> Vec<(String, String, String)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("reader-{}", common::unique_prefix("n")))
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
    let (start, mut last_new) = (Instant::now(), Instant::now());
    let mut out = Vec::new();
    // Wait for what is expected, then long enough that a duplicate would show too.
    while start.elapsed() < Duration::from_secs(240) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let batch = pb::NotificationBatch::decode(m.payload().unwrap_or_default()).expect("batch");
                let alert = batch.alert.as_ref().map(|a| a.alert_id.clone()).unwrap_or_default();
                for id in batch.subscriber_ids {
                    out.push((alert.clone(), batch.tenant.clone(), id));
                }
                last_new = Instant::now();
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None if out.len() >= want && last_new.elapsed() >= Duration::from_secs(5) => break,
            None => {}
        }
    }
    out
}

/// Gets `sub` through `channel` and checks it is the one stored.
async fn get_ok(channel: &Channel, sub: &Subscription, through: &str) {
    let token = TENANTS.iter().find(|(t, _)| *t == sub.tenant).expect("tenant").1;
    let got = common::subscriptions(channel.clone(), token)
        .get(pb::GetRequest { subscriber_id: sub.subscriber_id.clone() })
        .await
        .unwrap_or_else(|s| panic!("get {} through {through}: {s:?}", sub.key()))
        .into_inner();
    assert_eq!(got.subscriber_id, sub.subscriber_id, "through {through}");
    assert_eq!(got.shards, sub.shards, "{} through {through}", sub.key());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_hold_only_their_shards_and_notify_exactly_once_through_a_leave_and_a_join() {
    let mut cfg = common::config("scale");
    cfg.topics.shards = std::num::NonZeroU32::new(SHARDS).expect("nonzero");
    // A member that leaves for good holds its static assignment this long.
    cfg.kafka.consumer.insert("session.timeout.ms".into(), "6000".into());
    cfg.kafka.consumer.insert("heartbeat.interval.ms".into(), "1000".into());
    hexcast::create_topics(&cfg).await.expect("create topics");
    let brokers = cfg.kafka.brokers.clone();
    let rt = hexcast::runtime(&cfg);
    let shard_map = ShardMap { territory_res: cfg.geo.territory_resolution, shards: SHARDS };

    // Three instances, each told the others' addresses. The fourth replaces the third at
    // its address, as a rescheduled pod keeps its stable name.
    let listeners = [bind().await, bind().await, bind().await];
    let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().expect("addr")).collect();
    let peers_of =
        |i: usize| -> Vec<SocketAddr> { addrs.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, a)| *a).collect() };
    let [la, lb, lc] = listeners;
    let a = start(&cfg, "a", la, &peers_of(0)).await;
    let b = start(&cfg, "b", lb, &peers_of(1)).await;
    let c = start(&cfg, "c", lc, &peers_of(2)).await;

    // Subscribers in every shard: around each cluster center, 8 points within 400 m and 2
    // circles of 40 km whose areas reach into neighbouring territories (several shards).
    let ch_a = channel(a.addr).await;
    let mut subs: Vec<Subscription> = Vec::new();
    for (k, center) in clusters().into_iter().enumerate() {
        for n in 0..10 {
            let (tenant, token) = TENANTS[n % 2];
            let area = if n < 8 {
                let p = center.destination(45.0 * n as f64, 50.0 * n as f64);
                pb::Area { shape: Some(pb::area::Shape::Point(p.into())) }
            } else {
                let p = center.destination(90.0 * n as f64, 3_000.0);
                pb::Area {
                    shape: Some(pb::area::Shape::Circle(pb::Circle { center: Some(p.into()), radius_m: 40_000.0 })),
                }
            };
            let api = pb::Subscription { subscriber_id: format!("c{k}-s{n}"), areas: vec![area], ..Default::default() };
            let stored = common::subscriptions(ch_a.clone(), token)
                .upsert(pb::UpsertRequest { subscription: Some(api.clone()) })
                .await
                .expect("upsert")
                .into_inner()
                .subscription
                .expect("stored");
            let sub = hexcast_api::subscriptions::stored_subscription(
                &cfg.geo,
                &shard_map,
                cfg.push.max_cells_per_subscription.get(),
                tenant,
                api,
                Timestamp(0),
            )
            .expect("valid");
            assert_eq!(stored.shards, sub.shards);
            subs.push(sub);
        }
    }
    let used: BTreeSet<u32> = subs.iter().flat_map(|s| s.shards.iter().copied()).collect();
    assert_eq!(used.len(), SHARDS as usize, "the population must reach every shard");
    assert!(subs.iter().any(|s| s.shards.len() > 1), "some subscribers must span shards");

    wait_settled(&[&a, &b, &c], &subs).await;
    for i in [&a, &b, &c] {
        assert!(i.push().index.len() < subs.len(), "{} holds everyone: {}", i.name, i.push().index.len());
    }

    // Get works from any instance, whichever holds the subscriber.
    let channels = [channel(a.addr).await, channel(b.addr).await, channel(c.addr).await];
    for (n, sub) in subs.iter().enumerate().step_by(7) {
        get_ok(&channels[n % 3], sub, ["a", "b", "c"][n % 3]).await;
    }
    let status = common::subscriptions(channels[1].clone(), TENANTS[0].1)
        .get(pb::GetRequest { subscriber_id: "nobody".into() })
        .await
        .expect_err("unknown subscriber");
    assert_eq!(status.code(), tonic::Code::NotFound);

    // Alerts: a 1.5 km circle at every cluster center, in three rounds: before the
    // change, while one instance leaves and another joins, and after.
    let writer = Writer::new(&rt, "scale-test").expect("writer");
    let spatial = hexcast_spatial::Spatial::new(cfg.geo, SHARDS);
    let oracle = SubscriberIndex::new(shard_map);
    for s in &subs {
        oracle.upsert(s.clone());
    }
    let mut expected: BTreeSet<(String, String, String)> = BTreeSet::new();
    let mut publish = async |round: usize| {
        let mut records = Vec::new();
        for (k, center) in clusters().into_iter().enumerate() {
            let target = Area::circle(center, 1_500.0).expect("valid");
            let alert =
                Alert::synthetic(&format!("c{k}-r{round}@1"), Category::parse("crime.robbery").expect("known"), target);
            for ia in spatial.index(alert).expect("indexed") {
                for m in oracle.matches(&ia.alert, ia.shard, &ia.shards).expect("matched") {
                    let pair = (ia.alert.alert_id.clone(), m.tenant.to_string(), m.subscriber_id.to_string());
                    assert!(expected.insert(pair), "the oracle emitted a pair twice");
                }
                records.push(hexcast_core::IntoRecord::into_record(ia));
            }
        }
        writer.write(records).await.expect("alerts written");
    };
    publish(0).await;

    c.shutdown.cancel();
    c.running.join().await.expect("c stopped cleanly");
    let ld = tokio::net::TcpListener::bind(addrs[2]).await.expect("rebind the third address");
    let d = start(&cfg, "d", ld, &peers_of(2)).await;
    // Published while d has not loaded yet: its alerts must wait for the load.
    publish(1).await;
    wait_settled(&[&a, &b, &d], &subs).await;
    publish(2).await;

    // Every cluster's points are inside its alerts: the oracle is not empty-handed.
    for k in 0..clusters().len() {
        for n in 0..8 {
            let id = format!("c{k}-s{n}");
            assert!(expected.iter().any(|(al, _, s)| *s == id && al.starts_with(&format!("c{k}-r2"))), "{id}");
        }
    }
    let got = notified(&brokers, rt.names.name(Topic::Notifications), expected.len());
    let mut counts: BTreeMap<&(String, String, String), usize> = BTreeMap::new();
    for p in &got {
        *counts.entry(p).or_default() += 1;
    }
    let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(repeated.is_empty(), "notified more than once: {repeated:?}");
    let got: BTreeSet<(String, String, String)> = got.into_iter().collect();
    let missed: Vec<_> = expected.difference(&got).take(5).collect();
    assert!(missed.is_empty(), "missed {} pairs, e.g. {missed:?}", expected.difference(&got).count());
    let extra: Vec<_> = got.difference(&expected).take(5).collect();
    assert!(extra.is_empty(), "unexpected pairs: {extra:?}");

    // After the change: Get from the newcomer and the old instances alike.
    let channels = [channel(a.addr).await, channel(b.addr).await, channel(d.addr).await];
    for (n, sub) in subs.iter().enumerate().skip(3).step_by(11) {
        get_ok(&channels[n % 3], sub, ["a", "b", "d"][n % 3]).await;
    }

    for i in [a, b, d] {
        i.shutdown.cancel();
        i.running.join().await.expect("stopped cleanly");
    }
}
