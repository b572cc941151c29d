//! `hexcast demo`: the whole pipeline in one process, on an embedded broker, with a
//! synthetic subscriber population loaded through the real gRPC API, synthetic incidents
//! published as a CAD producer would, and a gRPC backend consuming the notification stream.
//! Its last line on stdout is a JSON summary.

#![allow(clippy::print_stdout)]

use std::collections::HashSet;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hexcast_api::Tokens;
use hexcast_core::{Topic, header};
use hexcast_proto::v1 as pb;
use hexcast_proto::v1::push_client::PushClient;
use hexcast_proto::v1::subscriptions_client::SubscriptionsClient;
use hexcast_runtime::{Delivery, EmbeddedBroker};
use rand::Rng as _;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use crate::config::Config;
use crate::targets::Target;

/// City centers the synthetic population and incidents cluster around.
const CITIES: [(f64, f64); 3] = [(37.7749, -122.4194), (39.9526, -75.1652), (47.6062, -122.3321)];
/// Radius of a synthetic city, in meters.
const CITY_RADIUS_M: f64 = 8_000.0;
/// Call types the synthetic feed sends: some alert, some are denied by the seed policy.
const CALL_TYPES: [&str; 8] = [
    "ARMED ROBBERY",
    "BURGLARY RESIDENTIAL",
    "SHOTS FIRED",
    "STRUCTURE FIRE",
    "CARDIAC ARREST",
    "ASSAULT",
    "DOMESTIC DISTURBANCE",
    "VEHICLE ACCIDENT",
];

/// Arguments of `hexcast demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Synthetic subscribers to load through the Subscriptions API.
    #[arg(long, default_value_t = 100_000)]
    pub subscribers: usize,
    /// Synthetic incidents per second.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// How long to publish incidents (`30s`, `2m`).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// gRPC port (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
}

/// Parses `500ms`, `10s`, `2m` or a number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| format!("invalid duration `{s}`"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("invalid duration unit in `{s}` (use ms, s or m)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("invalid duration `{s}`"))
}

fn random_point(rng: &mut impl rand::Rng) -> (f64, f64) {
    let (lat, lng) = CITIES[rng.random_range(0..CITIES.len())];
    // Uniform over the disc: sqrt of a uniform draw for the distance.
    let d = CITY_RADIUS_M * rng.random::<f64>().sqrt();
    let bearing = rng.random_range(0.0..360.0);
    let c = hexcast_core::LatLng::new(lat, lng).unwrap_or_else(|_| unreachable!("constant city"));
    let p = c.destination(bearing, d);
    (p.lat(), p.lng())
}

fn now_ms() -> i64 {
    hexcast_runtime::clock::now().0
}

struct Tally {
    alerts: Mutex<HashSet<String>>,
    notifications: AtomicU64,
    latency_ms: Mutex<hdrhistogram::Histogram<u64>>,
}

/// Loads `n` synthetic subscribers through BulkUpsert.
async fn load_subscribers(channel: Channel, token: &str, n: usize) -> anyhow::Result<()> {
    let bearer: MetadataValue<_> = format!("Bearer {token}").parse()?;
    let mut client = SubscriptionsClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", bearer.clone());
        Ok(req)
    });
    let mut rng = rand::rng();
    let reqs: Vec<pb::UpsertRequest> = (0..n)
        .map(|i| {
            let (lat, lng) = random_point(&mut rng);
            pb::UpsertRequest {
                subscription: Some(pb::Subscription {
                    subscriber_id: format!("sub-{i}"),
                    areas: vec![pb::Area { shape: Some(pb::area::Shape::Point(pb::LatLng { lat, lng })) }],
                    ..Default::default()
                }),
            }
        })
        .collect();
    let resp = client.bulk_upsert(futures::stream::iter(reqs)).await.context("BulkUpsert")?;
    anyhow::ensure!(resp.into_inner().upserted as usize == n, "not every subscriber was upserted");
    Ok(())
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let broker = EmbeddedBroker::start()?;
    let mut cfg = Config::for_brokers(&broker.bootstrap_servers());
    // The embedded broker has no transactions: at-least-once is what it can honestly do.
    cfg.kafka.delivery = Delivery::AtLeastOnce;
    cfg.kafka.instance_id = Some("demo".into());
    cfg.topics.partitions = NonZeroU32::new(3).unwrap_or(NonZeroU32::MIN);
    cfg.topics.shards = NonZeroU32::new(3).unwrap_or(NonZeroU32::MIN);
    cfg.runner.linger_ms = 5;
    // The embedded broker answers an empty fetch only after the full wait; keep it short so
    // that each hop costs milliseconds, as it does on Apache Kafka.
    cfg.kafka.consumer.insert("fetch.wait.max.ms".into(), "5".into());
    cfg.runner.max_batch = NonZeroUsize::new(200).unwrap_or(NonZeroUsize::MIN);
    let rt = crate::runtime(&cfg);
    broker.create_topics(&hexcast_runtime::specs(&rt.names, &cfg.topics))?;

    let token = format!("demo-{:032x}", rand::rng().random::<u128>());
    let tokens = Tokens::new([("demo".to_owned(), token.clone())]);
    let listener =
        tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await.context("binding the demo gRPC port")?;
    let shutdown = CancellationToken::new();
    let running = crate::start(&cfg, &rt, &Target::ALL, Some(tokens), Some(listener), shutdown.clone()).await?;
    let push = running.push.as_ref().context("push target did not start")?;
    let addr = push.addr;
    println!("hexcast demo: embedded broker {}, gRPC on {addr}", broker.bootstrap_servers());

    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await
        .context("connecting to the demo gRPC server")?;
    let started = Instant::now();
    load_subscribers(channel.clone(), &token, args.subscribers).await?;
    while push.index.len() < args.subscribers {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "loaded {} subscribers through Subscriptions.BulkUpsert in {:.1}s",
        args.subscribers,
        started.elapsed().as_secs_f64()
    );
    running.wait_assigned(Duration::from_secs(60)).await?;

    let tally = Arc::new(Tally {
        alerts: Mutex::new(HashSet::new()),
        notifications: AtomicU64::new(0),
        latency_ms: Mutex::new(hdrhistogram::Histogram::new_with_bounds(1, 3_600_000, 3)?),
    });
    let consumer = {
        let bearer: MetadataValue<_> = format!("Bearer {token}").parse()?;
        let mut client = PushClient::with_interceptor(channel.clone(), move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", bearer.clone());
            Ok(req)
        });
        let mut stream = client
            .subscribe(pb::SubscribeRequest { from_beginning: true, ..Default::default() })
            .await
            .context("Push.Subscribe")?
            .into_inner();
        let tally = Arc::clone(&tally);
        tokio::spawn(async move {
            while let Ok(Some(batch)) = stream.message().await {
                let received = now_ms();
                tally.notifications.fetch_add(batch.subscriber_ids.len() as u64, Ordering::Relaxed);
                if let Some(alert) = batch.alert {
                    if alert.published_at_ms > 0 {
                        let _ = tally.latency_ms.lock().await.record((received - alert.published_at_ms).max(1) as u64);
                    }
                    tally.alerts.lock().await.insert(alert.alert_id);
                }
            }
        })
    };

    let producer = hexcast_runtime::Writer::new(&rt, "demo-producer")?;
    let mut published = 0u64;
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(0.001));
    let begin = Instant::now();
    let mut next_report = Duration::from_secs(1);
    let mut rng = rand::rng();
    while begin.elapsed() < args.duration {
        let (lat, lng) = random_point(&mut rng);
        let body = serde_json::json!({
            "id": format!("{published}"),
            "version": 1,
            "call_type": CALL_TYPES[rng.random_range(0..CALL_TYPES.len())],
            "lat": lat,
            "lng": lng,
            "occurred_at": now_ms(),
            "address": "100 SYNTHETIC ST",
            "names": ["Synthetic Caller"],
            "phones": ["555-0100"],
        })
        .to_string();
        let record = hexcast_core::OutRecord {
            topic: Topic::Raw,
            key: published.to_string().into_bytes(),
            partition: None,
            payload: Some(body.into_bytes()),
            headers: vec![],
        }
        .with_header(header::FORMAT, "cad-json")
        .with_header(header::SOURCE, "demo")
        .with_header(header::TRACE_ID, format!("demo-{published}"));
        producer.write([record]).await.context("publishing an incident")?;
        published += 1;
        if begin.elapsed() >= next_report {
            report(&tally, published, begin.elapsed()).await;
            next_report += Duration::from_secs(1);
        }
        let target = interval.mul_f64(published as f64);
        if let Some(wait) = target.checked_sub(begin.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }

    // Drain: wait until notifications stop arriving (at most 15 s).
    let drain_start = Instant::now();
    let mut last = tally.notifications.load(Ordering::Relaxed);
    let mut quiet = Instant::now();
    while drain_start.elapsed() < Duration::from_secs(15) && quiet.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let n = tally.notifications.load(Ordering::Relaxed);
        if n != last {
            last = n;
            quiet = Instant::now();
        }
    }
    report(&tally, published, begin.elapsed()).await;
    shutdown.cancel();
    consumer.abort();
    drop(producer);
    running.join().await?;
    // Let the loader and stream consumers notice the shutdown and close before the broker goes.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let hist = tally.latency_ms.lock().await;
    let summary = serde_json::json!({
        "incidents": published,
        "alerts": tally.alerts.lock().await.len(),
        "notifications": tally.notifications.load(Ordering::Relaxed),
        "p50_ms": if hist.is_empty() { 0 } else { hist.value_at_quantile(0.5) },
        "p99_ms": if hist.is_empty() { 0 } else { hist.value_at_quantile(0.99) },
    });
    drop(hist);
    drop(broker);
    println!("{summary}");
    Ok(())
}

async fn report(tally: &Tally, published: u64, elapsed: Duration) {
    let hist = tally.latency_ms.lock().await;
    let (p50, p99) = if hist.is_empty() { (0, 0) } else { (hist.value_at_quantile(0.5), hist.value_at_quantile(0.99)) };
    drop(hist);
    println!(
        "[{:>4.0}s] incidents {published:>6}  alerts {:>5}  notifications {:>9}  p50 {p50:>5} ms  p99 {p99:>5} ms",
        elapsed.as_secs_f64(),
        tally.alerts.lock().await.len(),
        tally.notifications.load(Ordering::Relaxed),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_refuse_garbage() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("10h").is_err());
        assert!(parse_duration("abc").is_err());
    }
}
