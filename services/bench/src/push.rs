//! `hexcast bench push`: the push service's figures on a real Kafka cluster, over real gRPC
//! on loopback, with the spatial and push targets running in this process on topics of
//! their own (a fresh prefix per run). Three measurements, printed as one JSON object:
//!
//! 1. notifications per second streamed to one backend (records written straight to the
//!    notifications topic, then read by one Push.Subscribe stream);
//! 2. BulkUpsert subscriptions per second into the subscriptions topic (client stream to
//!    the response, every record acknowledged by Kafka), then the index load rate;
//! 3. a city-wide alert: every subscriber of step 2 lies inside it; time from the alert's
//!    publish on the `alerts` topic to the last notification received by the backend.
//!
//! Measured, not asserted: it prints what it saw.

#![allow(clippy::print_stdout)]

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hexcast_api::Tokens;
use hexcast_core::{Alert, Area, Category, LatLng, OutRecord, Topic};
use hexcast_proto::v1 as pb;
use hexcast_proto::v1::push_client::PushClient;
use hexcast_proto::v1::subscriptions_client::SubscriptionsClient;
use rand::{Rng as _, SeedableRng as _};
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use hexcast::{Config, Target};

/// Arguments of `hexcast bench push`.
#[derive(Debug, Clone, clap::Args)]
pub struct PushBenchArgs {
    /// Kafka bootstrap servers (a real cluster: the bench writes with transactions).
    #[arg(long, env = "HEXCAST_BENCH_BROKERS")]
    pub brokers: String,
    /// Subscriber ids streamed to one backend in the stream measurement.
    #[arg(long, default_value_t = 2_000_000)]
    pub stream_ids: usize,
    /// Subscribers loaded through BulkUpsert, all inside the city-wide alert.
    #[arg(long, default_value_t = 3_000_000)]
    pub subscribers: usize,
    /// Concurrent BulkUpsert streams.
    #[arg(long, default_value_t = 4)]
    pub bulk_streams: usize,
    /// Radius of the city-wide alert (subscribers are placed within 95% of it).
    #[arg(long, default_value_t = 12_000.0)]
    pub city_radius_m: f64,
    /// Random seed.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

const TENANT: &str = "bench";

type Auth = Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;
/// A channel that sends a tenant's bearer token with every call.
type Authed = tonic::service::interceptor::InterceptedService<Channel, Auth>;

/// `channel` with `token` as the bearer of every call.
pub(crate) fn authed(channel: &Channel, token: &str) -> anyhow::Result<Authed> {
    let bearer: MetadataValue<_> = format!("Bearer {token}").parse()?;
    let f: Auth = Box::new(move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", bearer.clone());
        Ok(req)
    });
    Ok(tonic::service::interceptor::InterceptedService::new(channel.clone(), f))
}

/// Runs the bench and returns its JSON report.
pub async fn run(args: &PushBenchArgs) -> anyhow::Result<serde_json::Value> {
    let mut cfg = Config::for_brokers(&args.brokers);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    cfg.kafka.topic_prefix = format!("bench-{nanos}.");
    cfg.kafka.group_prefix = format!("bench-{nanos}");
    cfg.kafka.instance_id = Some("bench".into());
    cfg.topics.partitions = NonZeroU32::new(6).unwrap_or(NonZeroU32::MIN);
    cfg.topics.shards = NonZeroU32::new(6).unwrap_or(NonZeroU32::MIN);
    cfg.runner.linger_ms = 5;
    hexcast::create_topics(&cfg).await?;
    let rt = hexcast::runtime(&cfg);
    let token = format!("bench-{:032x}", rand::rng().random::<u128>());
    let tokens = Tokens::new([(TENANT.to_owned(), token.clone())]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding the bench gRPC port")?;
    let shutdown = CancellationToken::new();
    let running =
        hexcast::start(&cfg, &rt, &[Target::Spatial, Target::Push], Some(tokens), Some(listener), shutdown.clone())
            .await?;
    // The index loads the shards of the matcher's assignment: wait for it, so that the
    // upserts below are written as to an instance that holds every shard.
    running.wait_assigned(Duration::from_secs(120)).await?;
    let push = running.push.as_ref().context("push target did not start")?;
    let channel = Channel::from_shared(format!("http://{}", push.addr))?.connect().await?;
    let producer = hexcast_runtime::Writer::new(&rt, "bench-push")?;

    // 1. Stream: records of 10,000 ids written straight to the tenant's partition.
    let per_record = 10_000usize;
    let records = args.stream_ids.div_ceil(per_record);
    let partition = hexcast_match::tenant_partition(TENANT, cfg.topics.partitions.get());
    let alert = pb::Alert::from(&bench_alert("stream@1", LatLng::new(39.95, -75.16)?, 1_000.0)?);
    for r in 0..records {
        let ids: Vec<String> = (0..per_record).map(|i| format!("s{:07}", r * per_record + i)).collect();
        let batch = pb::NotificationBatch {
            alert: Some(alert.clone()),
            tenant: TENANT.into(),
            subscriber_ids: ids,
            part: r as u32,
            parts: records as u32,
            cursor: String::new(),
            ..Default::default()
        };
        let record = OutRecord::proto(Topic::Notifications, TENANT, &batch, "hexcast.v1.NotificationBatch")
            .on_partition(partition);
        producer.write([record]).await.context("writing notifications")?;
    }
    let mut client = PushClient::new(authed(&channel, &token)?);
    let started = Instant::now();
    let req = pb::SubscribeRequest { from_beginning: true, ..Default::default() };
    let mut stream = client.subscribe(req).await?.into_inner();
    let (mut ids, mut batches) = (0usize, 0usize);
    while ids < records * per_record {
        let b = stream.message().await?.context("stream ended")?;
        ids += b.subscriber_ids.len();
        batches += 1;
    }
    let stream_secs = started.elapsed().as_secs_f64();
    drop(stream);
    println!("stream: {ids} ids in {batches} batches, {stream_secs:.2} s");

    // 2. BulkUpsert: points inside the city, several client streams at once.
    let center = LatLng::new(39.95, -75.16)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let per_stream = args.subscribers.div_ceil(args.bulk_streams.max(1));
    let mut requests: Vec<Vec<pb::UpsertRequest>> = Vec::new();
    for s in 0..args.bulk_streams.max(1) {
        let from = s * per_stream;
        let to = ((s + 1) * per_stream).min(args.subscribers);
        requests.push(
            (from..to)
                .map(|i| {
                    // Uniform over the disc: radius ~ sqrt(u).
                    let d = args.city_radius_m * 0.95 * rng.random::<f64>().sqrt();
                    let p = center.destination(rng.random::<f64>() * 360.0, d);
                    pb::UpsertRequest {
                        subscription: Some(pb::Subscription {
                            subscriber_id: format!("c{i:07}"),
                            areas: vec![pb::Area { shape: Some(pb::area::Shape::Point(p.into())) }],
                            ..Default::default()
                        }),
                    }
                })
                .collect(),
        );
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for reqs in requests {
        let mut client = SubscriptionsClient::new(authed(&channel, &token)?);
        tasks.push(tokio::spawn(async move { client.bulk_upsert(futures::stream::iter(reqs)).await }));
    }
    let mut upserted = 0u64;
    for t in tasks {
        upserted += t.await??.into_inner().upserted;
    }
    let bulk_secs = started.elapsed().as_secs_f64();
    println!("bulk upsert: {upserted} in {bulk_secs:.2} s");
    while push.index.len() < args.subscribers {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let index_secs = started.elapsed().as_secs_f64();
    println!("index loaded: {} subscribers {index_secs:.2} s after the first upsert", push.index.len());

    // 3. City-wide alert: publish on `alerts`, wait for the last notification.
    let mut stream =
        PushClient::new(authed(&channel, &token)?).subscribe(pb::SubscribeRequest::default()).await?.into_inner();
    // The stream starts at the end of the topic once its consumer is assigned; give it a
    // moment so the alert's notifications are after that point.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let city = bench_alert("city@1", center, args.city_radius_m)?;
    let record = OutRecord::proto(Topic::Alerts, "city@1", &pb::Alert::from(&city), "hexcast.v1.Alert");
    let published = Instant::now();
    producer.write([record]).await.context("publishing the city-wide alert")?;
    let (mut got, mut first) = (0usize, None);
    while got < args.subscribers {
        let b = tokio::time::timeout(Duration::from_secs(600), stream.message())
            .await
            .context("no notification within 600 s")??
            .context("stream ended")?;
        if b.alert.as_ref().is_some_and(|a| a.alert_id == "city@1") {
            first.get_or_insert_with(|| published.elapsed());
            got += b.subscriber_ids.len();
        }
    }
    let last = published.elapsed();
    println!("city-wide alert: {got} notifications, first after {:?}, last after {last:?}", first.unwrap_or_default());

    shutdown.cancel();
    running.join().await?;
    Ok(serde_json::json!({
        "stream": {
            "ids": ids, "batches": batches, "secs": round(stream_secs),
            "ids_per_sec": (ids as f64 / stream_secs).round(),
        },
        "bulk_upsert": {
            "subscriptions": upserted, "streams": args.bulk_streams, "secs": round(bulk_secs),
            "per_sec": (upserted as f64 / bulk_secs).round(),
            "index_loaded_secs": round(index_secs),
        },
        "city_wide_alert": {
            "subscribers": args.subscribers, "radius_m": args.city_radius_m, "notifications": got,
            "first_ms": first.map(|d| d.as_millis() as u64), "last_ms": last.as_millis() as u64,
        },
    }))
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn bench_alert(id: &str, center: LatLng, radius_m: f64) -> anyhow::Result<Alert> {
    let mut alert = Alert::synthetic(id, Category::parse("fire.structure")?, Area::circle(center, radius_m)?);
    let now = hexcast_runtime::clock::now();
    alert.occurred_at = now;
    alert.issued_at = now;
    Ok(alert)
}
