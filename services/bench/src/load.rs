//! `hexcast bench load`: the load bench for SREs. It loads a realistic subscriber population
//! through the Subscriptions gRPC API, publishes incidents on the raw topic (synthetic at a
//! fixed rate, or a time-compressed replay of a real CAD export), consumes the notification
//! stream as a backend would, and measures:
//!
//! - end-to-end latency, raw publish to notification received (HDR histogram);
//! - throughput in (incidents published) and out (notifications received), per second;
//! - consumer lag of every stage over time, from the stages' Kafka group offsets;
//! - this process's RSS over time (`/proc/self/status`);
//! - optionally a burst (incidents published as fast as possible, pipeline throughput until
//!   every stage has caught up) and the raw broker baseline (Kafka's own ProducerPerformance
//!   and ConsumerPerformance against the same broker).
//!
//! It drives either the whole pipeline in this process on a real broker (the default) or a
//! running deployment (`--grpc`, `--token`, `--topic-prefix`, `--group-prefix`). It writes
//! `result.json`, `latency.svg`, `timeline.svg`, `lag.svg` and `report.html` into `--out`,
//! prints a table, and with `--compare OLD.json` fails past `--threshold`.

#![allow(clippy::print_stdout)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write as _;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hexcast_api::Tokens;
use hexcast_core::{Area, Topic, header};
use hexcast_proto::v1 as pb;
use hexcast_proto::v1::push_client::PushClient;
use hexcast_proto::v1::subscriptions_client::SubscriptionsClient;
use rand::{Rng as _, SeedableRng as _};
use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::push::authed;
use crate::report::{self as report, Percentiles, Series};
use hexcast::demo::parse_duration;
use hexcast::{Config, Target};

/// Arguments of `hexcast bench load`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadBenchArgs {
    /// Kafka bootstrap servers (a real cluster).
    #[arg(long, env = "HEXCAST_BENCH_BROKERS")]
    pub brokers: String,
    /// A running deployment's push gRPC endpoint (`http://host:port`); without it the whole
    /// pipeline runs in this process on fresh topics.
    #[arg(long)]
    pub grpc: Option<String>,
    /// Bearer token of the deployment's tenant (with `--grpc`).
    #[arg(long, env = "HEXCAST_BENCH_TOKEN")]
    pub token: Option<String>,
    /// The deployment's topic prefix (with `--grpc`).
    #[arg(long, default_value = "")]
    pub topic_prefix: String,
    /// The deployment's consumer group prefix (with `--grpc`), for the lag figures.
    #[arg(long, default_value = "hexcast")]
    pub group_prefix: String,
    /// Subscribers to generate and load through Subscriptions.BulkUpsert (up to 10 M).
    #[arg(long, default_value_t = 20_000)]
    pub subscribers: usize,
    /// Concurrent BulkUpsert streams.
    #[arg(long, default_value_t = 4)]
    pub bulk_streams: usize,
    /// Synthetic incidents per second.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// How long to publish incidents (`30s`, `2m`).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Replay a CAD export (CSV) instead of synthetic incidents, e.g.
    /// `cad/montco_pa_911_2015-12_2016-01.csv` in the public data folder; its times are compressed by
    /// `--speedup` and rewritten to the present so that policy judges them as fresh.
    #[arg(long)]
    pub replay: Option<PathBuf>,
    /// Built-in CSV mapping of the replayed export.
    #[arg(long, default_value = "montco")]
    pub replay_mapping: String,
    /// Time compression of the replay (60: one hour of calls per minute).
    #[arg(long, default_value_t = 60.0)]
    pub speedup: f64,
    /// After the timed phase, publish this many incidents as fast as possible and measure
    /// the pipeline's throughput until every stage has caught up (0: no burst).
    #[arg(long, default_value_t = 0)]
    pub burst: usize,
    /// Path of scripts/kafka.sh: runs Kafka's ProducerPerformance and ConsumerPerformance on
    /// the same broker for the raw baseline (skipped when absent).
    #[arg(long)]
    pub kafka_sh: Option<PathBuf>,
    /// Records of the raw broker baseline.
    #[arg(long, default_value_t = 500_000)]
    pub raw_records: usize,
    /// Longest wait for the last notifications after publishing stops.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub drain: Duration,
    /// Results folder.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// An earlier result.json: print each figure's ratio, exit non-zero past the threshold.
    #[arg(long)]
    pub compare: Option<PathBuf>,
    /// Allowed regression for `--compare` (0.2: 20% slower or higher latency).
    #[arg(long, default_value_t = 0.2)]
    pub threshold: f64,
    /// Random seed.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Topic partitions of the in-process pipeline.
    #[arg(long, default_value_t = 6)]
    pub partitions: u32,
    /// Folder of neighborhood GeoJSON files the population clusters around (default:
    /// `geofence/click_that_hood` in the public data folder, `HEXCAST_DATA`).
    #[arg(long, default_value_os_t = crate::population::default_geofence())]
    pub geofence: PathBuf,
}

/// Arguments of `hexcast bench compare`.
#[derive(Debug, Clone, clap::Args)]
pub struct CompareArgs {
    /// The earlier result.json.
    pub old: PathBuf,
    /// This run's result.json.
    pub new: PathBuf,
    /// Allowed regression (0.2: 20%).
    #[arg(long, default_value_t = 0.2)]
    pub threshold: f64,
}

const TENANT: &str = "bench";
/// Synthetic call types: (call type, whether the seed policy alerts everyone near it).
const CALL_TYPES: [(&str, bool); 7] = [
    ("STRUCTURE FIRE", true),
    ("BURGLARY RESIDENTIAL", true),
    ("SHOTS FIRED", true),
    ("ARMED ROBBERY", true),
    ("ASSAULT", false),
    ("DOMESTIC DISTURBANCE", false),
    ("VEHICLE ACCIDENT", false),
];
/// The stages, their consumer group suffix and input topic.
const STAGES: [(&str, Topic); 5] = [
    ("ingest", Topic::Raw),
    ("dedup", Topic::Normalized),
    ("policy", Topic::Unique),
    ("spatial", Topic::Alerts),
    ("push", Topic::Indexed),
];

fn now_ms() -> i64 {
    hexcast_runtime::clock::now().0
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Resident set size of this process in kB, from /proc/self/status (0 where there is none).
pub fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status").ok().and_then(|s| parse_rss_kb(&s)).unwrap_or(0)
}

fn parse_rss_kb(status: &str) -> Option<u64> {
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// A progress line on stderr, rewritten in place.
struct Progress {
    label: &'static str,
    total: u64,
    done: Arc<AtomicU64>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    fn start(label: &'static str, total: u64) -> Self {
        let done = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let task = {
            let (done, stop) = (Arc::clone(&done), stop.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                    eprint!("\r{}", bar(label, done.load(Ordering::Relaxed), total, started.elapsed()));
                    let _ = std::io::stderr().flush();
                }
            })
        };
        Self { label, total, done, stop, task: Some(task) }
    }

    async fn finish(mut self, elapsed: Duration) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        eprintln!("\r{}", bar(self.label, self.done.load(Ordering::Relaxed), self.total, elapsed));
    }
}

fn bar(label: &str, done: u64, total: u64, elapsed: Duration) -> String {
    let frac = if total == 0 { 1.0 } else { (done as f64 / total as f64).min(1.0) };
    let width = 30;
    let filled = (frac * width as f64).round() as usize;
    let rate = done as f64 / elapsed.as_secs_f64().max(1e-3);
    format!(
        "{label:<22} [{}{}] {done:>9}/{total:<9} {:>5.1}% {rate:>9.0}/s {:>6.1}s",
        "#".repeat(filled),
        "-".repeat(width - filled),
        frac * 100.0,
        elapsed.as_secs_f64()
    )
}

/// What the backend saw.
struct Tally {
    latency: hdrhistogram::Histogram<u64>,
    /// Incident id -> notifications received for it.
    per_incident: HashMap<String, u64>,
    notifications: u64,
    batches: u64,
}

/// One sample of the timeline.
#[derive(Debug, Clone, serde::Serialize)]
struct Sample {
    t_secs: f64,
    published: u64,
    notifications: u64,
    rss_mb: f64,
    lag: BTreeMap<String, i64>,
}

/// Reads the stages' consumer lag from Kafka: high watermark minus committed offset, summed
/// over partitions (a partition without a commit counts from its low watermark).
struct LagReader {
    stages: Vec<(String, String, BaseConsumer)>,
}

impl LagReader {
    fn new(brokers: &str, group_prefix: &str, names: &hexcast_runtime::TopicNames) -> anyhow::Result<Self> {
        let mut stages = Vec::new();
        for (stage, topic) in STAGES {
            let consumer: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .set("group.id", format!("{group_prefix}-{stage}"))
                .set("enable.auto.commit", "false")
                .create()
                .context("creating the lag reader")?;
            stages.push((stage.to_owned(), names.name(topic).to_owned(), consumer));
        }
        Ok(Self { stages })
    }

    fn read(&self) -> BTreeMap<String, i64> {
        self.read_detail().into_iter().map(|(k, (sum, _))| (k, sum)).collect()
    }

    /// Per stage: (lag summed over partitions, largest lag of one partition).
    fn read_detail(&self) -> BTreeMap<String, (i64, i64)> {
        let timeout = Duration::from_secs(5);
        let mut out = BTreeMap::new();
        for (stage, topic, c) in &self.stages {
            let Ok(md) = c.fetch_metadata(Some(topic), timeout) else { continue };
            let Some(t) = md.topics().first() else { continue };
            let mut tpl = TopicPartitionList::new();
            for p in t.partitions() {
                tpl.add_partition(topic, p.id());
            }
            let Ok(committed) = c.committed_offsets(tpl, timeout) else { continue };
            let (mut lag, mut most) = (0i64, 0i64);
            for e in committed.elements() {
                let Ok((low, high)) = c.fetch_watermarks(topic, e.partition(), timeout) else { continue };
                let at = match e.offset() {
                    Offset::Offset(o) => o,
                    _ => low,
                };
                lag += (high - at).max(0);
                most = most.max(high - at);
            }
            out.insert(stage.clone(), (lag, most));
        }
        out
    }
}

/// A subscriber population as upsert requests, with one home point per subscriber.
type Population = (Vec<pb::UpsertRequest>, Vec<(f64, f64)>);

fn population(args: &LoadBenchArgs, cfg: &Config) -> anyhow::Result<Population> {
    let cities = crate::population::cities(&args.geofence)?;
    let subs = crate::population::population(&cities, args.subscribers, &cfg.geo, args.seed)?;
    let mut homes = Vec::with_capacity(subs.len());
    let mut reqs = Vec::with_capacity(subs.len());
    for s in subs {
        let home = s.places.first().map(|p| match p {
            hexcast_core::Place::Disc { cell, .. } => *cell,
            hexcast_core::Place::Cells(c) => c[c.len() / 2],
        });
        if let Some(cell) = home {
            let ll = h3o::LatLng::from(cell);
            homes.push((ll.lat(), ll.lng()));
        }
        let areas = s.places.iter().map(|p| pb::Area::from(&Area::from(p))).collect();
        reqs.push(pb::UpsertRequest {
            subscription: Some(pb::Subscription { subscriber_id: s.subscriber_id, areas, ..Default::default() }),
        });
    }
    Ok((reqs, homes))
}

/// Loads the population through several BulkUpsert streams; returns (upserted, seconds).
async fn load(
    channel: &Channel,
    token: &str,
    reqs: Vec<pb::UpsertRequest>,
    streams: usize,
) -> anyhow::Result<(u64, f64)> {
    let total = reqs.len();
    let progress = Progress::start("loading subscribers", total as u64);
    let streams = streams.max(1);
    let per = total.div_ceil(streams).max(1);
    let mut chunks: Vec<Vec<pb::UpsertRequest>> = Vec::new();
    let mut it = reqs.into_iter();
    loop {
        let chunk: Vec<_> = it.by_ref().take(per).collect();
        if chunk.is_empty() {
            break;
        }
        chunks.push(chunk);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for chunk in chunks {
        let mut client = SubscriptionsClient::new(authed(channel, token)?)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let done = Arc::clone(&progress.done);
        let stream = futures::stream::iter(chunk.into_iter().inspect(move |_| {
            done.fetch_add(1, Ordering::Relaxed);
        }));
        tasks.push(tokio::spawn(async move { client.bulk_upsert(stream).await }));
    }
    let mut upserted = 0u64;
    for t in tasks {
        upserted += t.await?.context("Subscriptions.BulkUpsert")?.into_inner().upserted;
    }
    let secs = started.elapsed().as_secs_f64();
    progress.finish(started.elapsed()).await;
    Ok((upserted, secs))
}

/// The run's id marker in incident ids, so that notifications map back to what was sent.
fn incident_id(run: &str, seq: u64) -> String {
    format!("{run}-{seq}")
}

/// The sequence number in a pipeline incident id that contains `run-N`.
fn seq_of(run: &str, incident_id: &str) -> Option<u64> {
    let at = incident_id.find(run)? + run.len() + 1;
    let digits: String = incident_id.get(at..)?.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// A synthetic incident in cad-json at a subscriber's home.
fn synthetic(run: &str, seq: u64, home: (f64, f64), call_type: &str) -> String {
    serde_json::json!({
        "id": incident_id(run, seq),
        "version": 1,
        "call_type": call_type,
        "lat": home.0,
        "lng": home.1,
        "occurred_at": now_ms(),
        "address": "100 BENCH ST",
    })
    .to_string()
}

/// A replayed export: header and rows with their times (seconds from the first row).
struct Replay {
    header: csv::StringRecord,
    rows: Vec<(f64, csv::StringRecord)>,
    time_col: usize,
    desc_col: Option<usize>,
}

fn read_replay(path: &Path) -> anyhow::Result<Replay> {
    let mut rdr = csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    let header = rdr.headers()?.clone();
    let time_col =
        header.iter().position(|h| h == "timeStamp").context("the replayed export has no timeStamp column")?;
    let desc_col = header.iter().position(|h| h == "desc");
    let mut rows = Vec::new();
    let mut first = None;
    for r in rdr.records() {
        let r = r?;
        let Some(t) = r.get(time_col).and_then(|t| chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S").ok())
        else {
            continue;
        };
        let t0 = *first.get_or_insert(t);
        rows.push(((t - t0).num_milliseconds() as f64 / 1000.0, r));
    }
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    anyhow::ensure!(!rows.is_empty(), "{}: no rows with a timeStamp", path.display());
    Ok(Replay { header, rows, time_col, desc_col })
}

/// One replayed row as a CSV record with its header, its times rewritten to `now` (local
/// time of the export's zone), so that the pipeline treats it as a fresh call.
fn replay_payload(replay: &Replay, row: &csv::StringRecord, now: chrono::NaiveDateTime) -> anyhow::Result<Vec<u8>> {
    let mut fields: Vec<String> = row.iter().map(str::to_owned).collect();
    if let Some(f) = fields.get_mut(replay.time_col) {
        *f = now.format("%Y-%m-%d %H:%M:%S").to_string();
    }
    if let Some(f) = replay.desc_col.and_then(|c| fields.get_mut(c)) {
        *f =
            f.split(';')
                .map(|part| {
                    if part.contains(" @ ") {
                        format!(" {}", now.format("%Y-%m-%d @ %H:%M:%S"))
                    } else {
                        part.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join(";");
    }
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(&replay.header)?;
    w.write_record(&fields)?;
    w.into_inner().map_err(|e| anyhow::anyhow!("writing a CSV row: {e}"))
}

/// What the publishing phase sent.
#[derive(Default)]
struct Sent {
    published: u64,
    /// Sequence numbers of incidents the policy should alert (synthetic only).
    expected: HashSet<u64>,
    secs: f64,
}

struct Publisher {
    producer: FutureProducer,
    topic: String,
    pending: Vec<rdkafka::producer::DeliveryFuture>,
}

impl Publisher {
    fn send(&mut self, key: &str, payload: &[u8], format: &str, source: &str) -> anyhow::Result<()> {
        let headers = OwnedHeaders::new()
            .insert(Header { key: header::FORMAT, value: Some(format) })
            .insert(Header { key: header::SOURCE, value: Some(source) });
        let record = FutureRecord::to(&self.topic).key(key).payload(payload).headers(headers);
        let fut = self.producer.send_result(record).map_err(|(e, _)| e).context("publishing an incident")?;
        self.pending.push(fut);
        Ok(())
    }

    async fn settle(&mut self) -> anyhow::Result<()> {
        for f in self.pending.drain(..) {
            f.await.context("delivery cancelled")?.map_err(|(e, _)| e).context("publishing an incident")?;
        }
        Ok(())
    }
}

/// Runs `hexcast bench load`; returns the result JSON and whether a comparison regressed.
pub async fn run(args: &LoadBenchArgs) -> anyhow::Result<bool> {
    anyhow::ensure!(args.rate > 0.0, "--rate must be positive");
    anyhow::ensure!(args.speedup > 0.0, "--speedup must be positive");
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let started_at = now_ms();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let run_id = format!("lb{:x}", nanos % (1 << 40));

    let mut cfg = Config::for_brokers(&args.brokers);
    let shutdown = CancellationToken::new();
    let (channel, token, running) = if let Some(grpc) = &args.grpc {
        cfg.kafka.topic_prefix.clone_from(&args.topic_prefix);
        cfg.kafka.group_prefix.clone_from(&args.group_prefix);
        let token = args.token.clone().context("--token (or HEXCAST_BENCH_TOKEN) is required with --grpc")?;
        let channel = Channel::from_shared(grpc.clone())
            .with_context(|| format!("--grpc {grpc}"))?
            .connect()
            .await
            .with_context(|| format!("connecting to {grpc}"))?;
        (channel, token, None)
    } else {
        cfg.kafka.topic_prefix = format!("{run_id}.");
        cfg.kafka.group_prefix = run_id.clone();
        cfg.kafka.instance_id = Some("bench".into());
        let parts = NonZeroU32::new(args.partitions).context("--partitions must be positive")?;
        cfg.topics.partitions = parts;
        cfg.topics.shards = parts;
        cfg.runner.linger_ms = 5;
        hexcast::create_topics(&cfg).await?;
        let rt = hexcast::runtime(&cfg);
        let token = format!("bench-{:032x}", rand::rng().random::<u128>());
        let tokens = Tokens::new([(TENANT.to_owned(), token.clone())]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding the bench gRPC port")?;
        let running = hexcast::start(&cfg, &rt, &Target::ALL, Some(tokens), Some(listener), shutdown.clone()).await?;
        let addr = running.push.as_ref().context("push target did not start")?.addr;
        let channel = Channel::from_shared(format!("http://{addr}"))?.connect().await?;
        (channel, token, Some(running))
    };
    let rt = hexcast::runtime(&cfg);
    let result = measure(args, &cfg, &rt, &run_id, &channel, &token, running.as_ref()).await;
    shutdown.cancel();
    if let Some(r) = running {
        r.join().await?;
    }
    let mut result = result?;
    result["started_at_ms"] = serde_json::json!(started_at);
    let regressed = write_outputs(args, &mut result)?;
    Ok(regressed)
}

#[allow(clippy::too_many_lines)]
async fn measure(
    args: &LoadBenchArgs,
    cfg: &Config,
    rt: &hexcast_runtime::Runtime,
    run_id: &str,
    channel: &Channel,
    token: &str,
    running: Option<&hexcast::targets::Running>,
) -> anyhow::Result<serde_json::Value> {
    let mode = if args.grpc.is_some() { "deployment" } else { "in-process" };
    eprintln!("hexcast bench load: {mode}, brokers {}, {} subscribers", args.brokers, args.subscribers);

    // 1. Population.
    let t = Instant::now();
    let (reqs, homes) = population(args, cfg)?;
    anyhow::ensure!(!homes.is_empty(), "empty population: use --subscribers > 0");
    eprintln!("generated {} subscribers in {:.1}s", reqs.len(), t.elapsed().as_secs_f64());
    let (upserted, bulk_secs) = load(channel, token, reqs, args.bulk_streams).await?;
    anyhow::ensure!(upserted as usize == args.subscribers, "BulkUpsert upserted {upserted} of {}", args.subscribers);
    let mut index_secs = None;
    if let Some(push) = running.and_then(|r| r.push.as_ref()) {
        let t = Instant::now();
        while push.index.len() < args.subscribers {
            anyhow::ensure!(t.elapsed() < Duration::from_secs(1800), "the index did not load every subscriber");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        index_secs = Some(bulk_secs + t.elapsed().as_secs_f64());
    }
    if let Some(r) = running {
        r.wait_assigned(Duration::from_secs(120)).await?;
    }

    // 2. The backend: one Push.Subscribe stream.
    let tally = Arc::new(Mutex::new(Tally {
        latency: report::latency_histogram()?,
        per_incident: HashMap::new(),
        notifications: 0,
        batches: 0,
    }));
    let notified = Arc::new(AtomicU64::new(0));
    let backend = {
        let req = pb::SubscribeRequest { from_beginning: running.is_some(), ..Default::default() };
        let mut stream = PushClient::new(authed(channel, token)?)
            .max_decoding_message_size(64 << 20)
            .subscribe(req)
            .await
            .context("Push.Subscribe")?
            .into_inner();
        let (tally, notified) = (Arc::clone(&tally), Arc::clone(&notified));
        tokio::spawn(async move {
            while let Ok(Some(batch)) = stream.message().await {
                let received = now_ms();
                let n = batch.subscriber_ids.len() as u64;
                notified.fetch_add(n, Ordering::Relaxed);
                let mut t = tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                t.notifications += n;
                t.batches += 1;
                if let Some(alert) = batch.alert {
                    if alert.published_at_ms > 0 {
                        let _ = t.latency.record((received - alert.published_at_ms).max(1) as u64);
                    }
                    *t.per_incident.entry(alert.incident_id).or_default() += n;
                }
            }
        })
    };
    if running.is_none() {
        // The stream starts at the end of the topic once its consumer is assigned.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    // 3. Sampler: published, notified, lag, RSS every second.
    let published = Arc::new(AtomicU64::new(0));
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let lag_reader = Arc::new(LagReader::new(&args.brokers, &cfg.kafka.group_prefix, &rt.names)?);
    let sampler_stop = CancellationToken::new();
    let t0 = Instant::now();
    let sampler = {
        let (published, notified, samples, lag_reader, stop) = (
            Arc::clone(&published),
            Arc::clone(&notified),
            Arc::clone(&samples),
            Arc::clone(&lag_reader),
            sampler_stop.clone(),
        );
        tokio::spawn(async move {
            loop {
                let lr = Arc::clone(&lag_reader);
                let lag = tokio::task::spawn_blocking(move || lr.read()).await.unwrap_or_default();
                let s = Sample {
                    t_secs: round3(t0.elapsed().as_secs_f64()),
                    published: published.load(Ordering::Relaxed),
                    notifications: notified.load(Ordering::Relaxed),
                    rss_mb: round3(rss_kb() as f64 / 1024.0),
                    lag,
                };
                samples.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(s);
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        })
    };

    // 4. Incidents.
    let producer: FutureProducer = rt
        .client_config()
        .set("linger.ms", "1")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .context("creating the bench producer")?;
    let mut publisher = Publisher { producer, topic: rt.names.name(Topic::Raw).to_owned(), pending: Vec::new() };
    let mut sent = Sent::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed ^ 0x5eed);
    let begin = Instant::now();
    if let Some(path) = &args.replay {
        let replay = read_replay(path)?;
        let format = format!("csv-{}", args.replay_mapping);
        let zone: chrono_tz::Tz = "America/New_York".parse().map_err(|e| anyhow::anyhow!("{e}"))?;
        let total = replay.rows.iter().take_while(|(t, _)| *t / args.speedup < args.duration.as_secs_f64()).count();
        let progress = Progress::start("replaying", total as u64);
        for (t, row) in replay.rows.iter().take(total) {
            let at = Duration::from_secs_f64(t / args.speedup);
            if let Some(wait) = at.checked_sub(begin.elapsed()) {
                tokio::time::sleep(wait).await;
            }
            let now = chrono::Utc::now().with_timezone(&zone).naive_local();
            let payload = replay_payload(&replay, row, now)?;
            publisher.send(&sent.published.to_string(), &payload, &format, "bench-replay")?;
            sent.published += 1;
            published.store(sent.published, Ordering::Relaxed);
            progress.done.store(sent.published, Ordering::Relaxed);
        }
        publisher.settle().await?;
        progress.finish(begin.elapsed()).await;
    } else {
        let total = (args.rate * args.duration.as_secs_f64()).round() as u64;
        let interval = Duration::from_secs_f64(1.0 / args.rate);
        let progress = Progress::start("publishing incidents", total);
        while sent.published < total {
            let seq = sent.published;
            let (call_type, alerts) = CALL_TYPES[rng.random_range(0..CALL_TYPES.len())];
            let home = homes[rng.random_range(0..homes.len())];
            let payload = synthetic(run_id, seq, home, call_type);
            publisher.send(&seq.to_string(), payload.as_bytes(), "cad-json", "bench")?;
            if alerts {
                sent.expected.insert(seq);
            }
            sent.published += 1;
            published.store(sent.published, Ordering::Relaxed);
            progress.done.store(sent.published, Ordering::Relaxed);
            if publisher.pending.len() >= 5_000 {
                publisher.settle().await?;
            }
            if let Some(wait) = interval.mul_f64(sent.published as f64).checked_sub(begin.elapsed())
                && wait > Duration::from_millis(1)
            {
                tokio::time::sleep(wait).await;
            }
        }
        publisher.settle().await?;
        progress.finish(begin.elapsed()).await;
    }
    sent.secs = begin.elapsed().as_secs_f64();

    // 5. Drain: until every expected incident notified and notifications stop, or timeout.
    let drain_start = Instant::now();
    let mut last = notified.load(Ordering::Relaxed);
    let mut quiet = Instant::now();
    while drain_start.elapsed() < args.drain {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let n = notified.load(Ordering::Relaxed);
        if n != last {
            last = n;
            quiet = Instant::now();
        }
        let missing = missing_count(&tally, run_id, &sent.expected);
        let lr = Arc::clone(&lag_reader);
        let lag = tokio::task::spawn_blocking(move || lr.read_detail()).await?;
        let settled = lag.len() == STAGES.len() && lag.values().all(|&(_, most)| most <= 1);
        if settled
            && (missing == 0 || quiet.elapsed() > Duration::from_secs(5))
            && quiet.elapsed() > Duration::from_secs(1)
        {
            break;
        }
    }
    let phase_secs = begin.elapsed().as_secs_f64();
    let (lat, per_incident_alerted, notifications, batches, dist) = {
        let t = tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (
            Percentiles::of(&t.latency),
            t.per_incident.len(),
            t.notifications,
            t.batches,
            report::distribution(&t.latency),
        )
    };
    let missing = missing_count(&tally, run_id, &sent.expected);
    let stages = running.map(stage_counts);

    // 6. Burst: as fast as possible, until every stage has caught up.
    let burst = if args.burst > 0 {
        Some(burst(args, run_id, &homes, &mut publisher, &lag_reader, &published).await?)
    } else {
        None
    };

    sampler_stop.cancel();
    let _ = sampler.await;
    backend.abort();

    // 7. Raw broker baseline.
    let raw = match &args.kafka_sh {
        Some(sh) => Some(raw_baseline(sh, &args.brokers, run_id, args.raw_records).await?),
        None => None,
    };

    let samples = samples.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let peak_rss = samples.iter().map(|s| s.rss_mb).fold(0.0, f64::max);
    let mut figures = BTreeMap::new();
    figures.insert("e2e_p50_ms".to_owned(), lat.p50_ms as f64);
    figures.insert("e2e_p90_ms".to_owned(), lat.p90_ms as f64);
    figures.insert("e2e_p99_ms".to_owned(), lat.p99_ms as f64);
    figures.insert("e2e_p999_ms".to_owned(), lat.p999_ms as f64);
    figures.insert("e2e_max_ms".to_owned(), lat.max_ms as f64);
    figures.insert("incidents_in_per_sec".to_owned(), round3(sent.published as f64 / sent.secs.max(1e-3)));
    figures.insert("notifications_out_per_sec".to_owned(), round3(notifications as f64 / phase_secs.max(1e-3)));
    figures.insert("bulk_upsert_per_sec".to_owned(), round3(upserted as f64 / bulk_secs.max(1e-3)));
    figures.insert("peak_rss_mb".to_owned(), peak_rss);
    if let Some(b) = &burst {
        figures.insert("burst_incidents_per_sec".to_owned(), b["incidents_per_sec"].as_f64().unwrap_or(0.0));
    }
    if let (Some(b), Some(r)) = (&burst, &raw) {
        let pipe = b["incidents_per_sec"].as_f64().unwrap_or(0.0);
        if let Some(p) = r["producer_records_per_sec"].as_f64().filter(|p| *p > 0.0) {
            figures.insert("pipeline_vs_raw_producer_fraction".to_owned(), round6(pipe / p));
        }
        if let Some(c) = r["consumer_records_per_sec"].as_f64().filter(|c| *c > 0.0) {
            figures.insert("pipeline_vs_raw_consumer_fraction".to_owned(), round6(pipe / c));
        }
    }
    Ok(serde_json::json!({
        "mode": mode,
        "brokers": args.brokers,
        "source": args.replay.as_ref().map_or_else(|| "synthetic".to_owned(), |p| p.display().to_string()),
        "subscribers": args.subscribers,
        "bulk_upsert": { "upserted": upserted, "secs": round3(bulk_secs), "streams": args.bulk_streams, "index_loaded_secs": index_secs.map(round3) },
        "incidents": {
            "published": sent.published,
            "rate_target": if args.replay.is_some() { None } else { Some(args.rate) },
            "speedup": args.replay.as_ref().map(|_| args.speedup),
            "publish_secs": round3(sent.secs),
            "expected_to_alert": sent.expected.len(),
            "expected_without_notification": missing,
            "alerted": per_incident_alerted,
        },
        "notifications": { "received": notifications, "batches": batches },
        "stages": stages,
        "latency_ms": lat,
        "latency_distribution": dist.iter().map(|(p, v)| serde_json::json!([round3(*p), v])).collect::<Vec<_>>(),
        "burst": burst,
        "raw_broker": raw,
        "timeline": samples,
        "figures": figures,
    }))
}

/// Per in-process stage: records consumed, dead-lettered and written per topic.
fn stage_counts(running: &hexcast::targets::Running) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    let all = running
        .stages
        .iter()
        .map(|(t, h)| (t.to_string(), h))
        .chain(running.push.as_ref().map(|p| ("push".to_owned(), &p.matcher)));
    for (name, h) in all {
        let emitted: serde_json::Map<String, serde_json::Value> = Topic::ALL
            .iter()
            .filter(|t| h.stats.emitted(**t) > 0)
            .map(|t| (format!("{t:?}").to_lowercase(), serde_json::json!(h.stats.emitted(*t))))
            .collect();
        out.insert(
            name,
            serde_json::json!({
                "received": h.stats.received.load(Ordering::Relaxed),
                "rejected": h.stats.rejected.load(Ordering::Relaxed),
                "emitted": emitted,
            }),
        );
    }
    serde_json::Value::Object(out)
}

fn missing_count(tally: &Mutex<Tally>, run_id: &str, expected: &HashSet<u64>) -> usize {
    let t = tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let seen: HashSet<u64> = t.per_incident.keys().filter_map(|id| seq_of(run_id, id)).collect();
    expected.iter().filter(|s| !seen.contains(s)).count()
}

async fn burst(
    args: &LoadBenchArgs,
    run_id: &str,
    homes: &[(f64, f64)],
    publisher: &mut Publisher,
    lag: &Arc<LagReader>,
    published: &AtomicU64,
) -> anyhow::Result<serde_json::Value> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed ^ 0xb0057);
    let base = published.load(Ordering::Relaxed);
    let progress = Progress::start("burst", args.burst as u64);
    let started = Instant::now();
    for i in 0..args.burst as u64 {
        let seq = base + i;
        let (call_type, _) = CALL_TYPES[rng.random_range(0..CALL_TYPES.len())];
        let home = homes[rng.random_range(0..homes.len())];
        publisher.send(&seq.to_string(), synthetic(run_id, seq, home, call_type).as_bytes(), "cad-json", "bench")?;
        published.store(seq + 1, Ordering::Relaxed);
        progress.done.store(i + 1, Ordering::Relaxed);
        if publisher.pending.len() >= 20_000 {
            publisher.settle().await?;
        }
    }
    publisher.settle().await?;
    let publish_secs = started.elapsed().as_secs_f64();
    progress.finish(started.elapsed()).await;
    // Caught up: no partition of any stage is more than one offset behind (a stage reading
    // a transactional topic commits the offset of the transaction's commit marker, which
    // it never consumes), and nothing moved between three reads 100 ms apart.
    let mut still = 0;
    let mut last_lag = BTreeMap::new();
    while still < 3 {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "the pipeline did not catch up: lag {last_lag:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let lr = Arc::clone(lag);
        let now = tokio::task::spawn_blocking(move || lr.read_detail()).await?;
        let settled = now.len() == STAGES.len() && now.values().all(|&(_, most)| most <= 1);
        still = if settled && now == last_lag { still + 1 } else { 0 };
        last_lag = now;
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!("burst: {} incidents through every stage in {secs:.2}s", args.burst);
    Ok(serde_json::json!({
        "incidents": args.burst,
        "publish_secs": round3(publish_secs),
        "caught_up_secs": round3(secs),
        "incidents_per_sec": round3(args.burst as f64 / secs.max(1e-3)),
    }))
}

/// Runs Kafka's ProducerPerformance then ConsumerPerformance on a fresh topic.
async fn raw_baseline(
    kafka_sh: &Path,
    brokers: &str,
    run_id: &str,
    records: usize,
) -> anyhow::Result<serde_json::Value> {
    let topic = format!("{run_id}.raw-perf");
    // Brokers need not create topics on demand: create it like the pipeline's (6 partitions).
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).create().context("creating an admin client")?;
    let spec = rdkafka::admin::NewTopic::new(&topic, 6, rdkafka::admin::TopicReplication::Fixed(1));
    for r in
        admin.create_topics([&spec], &rdkafka::admin::AdminOptions::new()).await.context("creating the perf topic")?
    {
        r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    // The synthetic raw incidents are about this size.
    let record_size = 300;
    eprintln!("raw broker baseline: ProducerPerformance, {records} records of {record_size} bytes");
    let mut cmd = std::process::Command::new(kafka_sh);
    cmd.args(["run-class", "org.apache.kafka.tools.ProducerPerformance", "--topic", &topic])
        .args(["--num-records", &records.to_string(), "--record-size", &record_size.to_string(), "--throughput", "-1"])
        .args(["--producer-props", &format!("bootstrap.servers={brokers}"), "acks=all", "linger.ms=5"]);
    let out = output(cmd, kafka_sh).await?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(out.status.success(), "ProducerPerformance failed: {}", String::from_utf8_lossy(&out.stderr));
    let producer = parse_producer_perf(&text).context("no summary line in ProducerPerformance's output")?;
    eprintln!("raw broker baseline: ConsumerPerformance");
    let mut cmd = std::process::Command::new(kafka_sh);
    cmd.args(["run-class", "org.apache.kafka.tools.ConsumerPerformance", "--bootstrap-server", brokers]).args([
        "--topic",
        &topic,
        "--num-records",
        &records.to_string(),
        "--timeout",
        "60000",
    ]);
    let out = output(cmd, kafka_sh).await?;
    let ctext = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(out.status.success(), "ConsumerPerformance failed: {}", String::from_utf8_lossy(&out.stderr));
    let consumer = parse_consumer_perf(&ctext).context("no nMsg.sec column in ConsumerPerformance's output")?;
    Ok(serde_json::json!({
        "records": records, "record_size": record_size,
        "producer_records_per_sec": producer, "consumer_records_per_sec": consumer,
    }))
}

async fn output(mut cmd: std::process::Command, path: &Path) -> anyhow::Result<std::process::Output> {
    let what = path.display().to_string();
    tokio::task::spawn_blocking(move || cmd.output()).await?.with_context(|| format!("running {what}"))
}

/// Records/s from ProducerPerformance's last line ("N records sent, X records/sec (...)").
fn parse_producer_perf(out: &str) -> Option<f64> {
    let line = out.lines().rev().find(|l| l.contains("records sent"))?;
    let before = line.split(" records/sec").next()?;
    before.rsplit(", ").next()?.trim().parse().ok()
}

/// nMsg.sec from ConsumerPerformance's CSV-like output (header line, then values).
fn parse_consumer_perf(out: &str) -> Option<f64> {
    let mut lines = out.lines().filter(|l| l.contains(','));
    let header: Vec<&str> = lines.find(|l| l.contains("nMsg.sec"))?.split(',').map(str::trim).collect();
    let col = header.iter().position(|h| *h == "nMsg.sec")?;
    let values: Vec<&str> = lines.next()?.split(',').map(str::trim).collect();
    values.get(col)?.parse().ok()
}

/// Writes the JSON, the plots and the page; prints the table; compares.
fn write_outputs(args: &LoadBenchArgs, result: &mut serde_json::Value) -> anyhow::Result<bool> {
    let figures = report::figures_of(result)?;
    let timeline: Vec<serde_json::Value> = result["timeline"].as_array().cloned().unwrap_or_default();
    let series_of = |name: &str, f: &dyn Fn(&serde_json::Value) -> Option<f64>| Series {
        name: name.to_owned(),
        points: timeline.iter().filter_map(|s| Some((s["t_secs"].as_f64()?, f(s)?))).collect(),
    };
    let rate = |key: &'static str| {
        move |pair: &[serde_json::Value]| -> Option<(f64, f64)> {
            let (a, b) = (&pair[0], &pair[1]);
            let dt = b["t_secs"].as_f64()? - a["t_secs"].as_f64()?;
            let d = b[key].as_f64()? - a[key].as_f64()?;
            (dt > 0.0).then(|| (b["t_secs"].as_f64().unwrap_or(0.0), d / dt))
        }
    };
    let incidents_in =
        Series { name: "incidents in /s".into(), points: timeline.windows(2).filter_map(rate("published")).collect() };
    let notes_out = Series {
        name: "notifications out /s".into(),
        points: timeline.windows(2).filter_map(rate("notifications")).collect(),
    };
    let lag: Vec<Series> = STAGES
        .iter()
        .map(|(stage, _)| series_of(&format!("{stage} lag"), &|s| s["lag"][*stage].as_f64()))
        .chain(std::iter::once(series_of("RSS (MB)", &|s| s["rss_mb"].as_f64())))
        .collect();
    let dist: Vec<(f64, u64)> = result["latency_distribution"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| Some((p[0].as_f64()?, p[1].as_u64()?))).collect())
        .unwrap_or_default();
    let latency_svg = report::latency_chart(&dist);
    let throughput_svg = report::line_chart(
        "Throughput",
        "seconds since the first incident",
        "per second",
        &[incidents_in, notes_out],
        None,
    );
    let lag_svg =
        report::line_chart("Consumer lag per stage (records) and RSS (MB)", "seconds", "records / MB", &lag, None);
    let write = |name: &str, text: &str| -> anyhow::Result<()> {
        let p = args.out.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))
    };
    write("latency.svg", &latency_svg)?;
    write("throughput.svg", &throughput_svg)?;
    write("lag.svg", &lag_svg)?;
    let title = format!(
        "hexcast load bench: {} subscribers, {} incidents ({})",
        result["subscribers"],
        result["incidents"]["published"],
        result["source"].as_str().unwrap_or("")
    );
    write("report.html", &report::html_page(&title, &figures, &[latency_svg, throughput_svg, lag_svg]))?;
    let mut regressed = false;
    if let Some(old_path) = &args.compare {
        let old: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(old_path).with_context(|| format!("reading {}", old_path.display()))?,
        )
        .with_context(|| format!("parsing {}", old_path.display()))?;
        let rows = report::compare(&report::figures_of(&old)?, &figures, args.threshold);
        regressed = rows.iter().any(|r| r.regressed);
        result["comparison"] = serde_json::json!({
            "against": old_path.display().to_string(), "threshold": args.threshold, "regressed": regressed,
            "ratios": rows.iter().map(|r| (r.name.clone(), serde_json::json!(r.ratio.map(round3)))).collect::<serde_json::Map<_, _>>(),
        });
        println!("{}", report::compare_table(&rows, args.threshold));
    }
    write("result.json", &serde_json::to_string_pretty(result)?)?;
    println!("{}", report::figures_table(&figures));
    println!(
        "incidents published {}, expected to alert {}, without notification {}, alerted {}; notifications {}",
        result["incidents"]["published"],
        result["incidents"]["expected_to_alert"],
        result["incidents"]["expected_without_notification"],
        result["incidents"]["alerted"],
        result["notifications"]["received"]
    );
    println!("results: {}/result.json, plots: {}/report.html", args.out.display(), args.out.display());
    Ok(regressed)
}

/// Runs `hexcast bench compare`; returns whether a figure regressed.
pub fn compare_cmd(args: &CompareArgs) -> anyhow::Result<bool> {
    let read = |p: &PathBuf| -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
            .with_context(|| format!("parsing {}", p.display()))
    };
    let rows = report::compare(
        &report::figures_of(&read(&args.old)?)?,
        &report::figures_of(&read(&args.new)?)?,
        args.threshold,
    );
    println!("{}", report::compare_table(&rows, args.threshold));
    Ok(rows.iter().any(|r| r.regressed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_is_read_from_proc_status() {
        assert_eq!(parse_rss_kb("Name:\tx\nVmRSS:\t  12345 kB\nVmSwap:\t0 kB\n"), Some(12345));
        assert_eq!(parse_rss_kb("Name:\tx\n"), None);
    }

    #[test]
    fn incident_ids_map_back_to_their_sequence() {
        let id = incident_id("lb1f", 42);
        assert_eq!(seq_of("lb1f", &format!("bench:{id}")), Some(42));
        assert_eq!(seq_of("lb1f", &id), Some(42));
        assert_eq!(seq_of("lb1f", "other-42"), None);
    }

    #[test]
    fn kafka_tool_outputs_parse() {
        let p = "100000 records sent, 20000.0 records/sec (5.72 MB/sec), 1.2 ms avg latency\n\
                 500000 records sent, 187617.260788 records/sec (53.68 MB/sec), 350.11 ms avg latency, 900.00 ms max latency, 1 ms 50th\n";
        assert_eq!(parse_producer_perf(p), Some(187_617.260_788));
        let c = "start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec, rebalance.time.ms\n\
                 2026-11-24 10:00:00:000, 2026-11-24 10:00:02:000, 143.0, 71.5, 500000, 250000.0, 300\n";
        assert_eq!(parse_consumer_perf(c), Some(250_000.0));
        assert_eq!(parse_producer_perf("nothing"), None);
        assert_eq!(parse_consumer_perf("nothing"), None);
    }

    #[test]
    fn replayed_rows_get_present_times() -> anyhow::Result<()> {
        let header = csv::StringRecord::from(vec!["lat", "desc", "timeStamp"]);
        let row = csv::StringRecord::from(vec![
            "40.1",
            "A ST; TOWN; Station 1; 2015-12-10 @ 17:10:52;",
            "2015-12-10 17:40:00",
        ]);
        let replay = Replay { header, rows: vec![], time_col: 2, desc_col: Some(1) };
        let now = chrono::NaiveDate::from_ymd_opt(2026, 11, 24).and_then(|d| d.and_hms_opt(5, 6, 7)).context("date")?;
        let text = String::from_utf8(replay_payload(&replay, &row, now)?)?;
        assert_eq!(
            text,
            "lat,desc,timeStamp\n40.1,A ST; TOWN; Station 1; 2026-11-24 @ 05:06:07;,2026-11-24 05:06:07\n"
        );
        Ok(())
    }

    #[test]
    fn progress_bar_shows_fraction_and_rate() {
        let b = bar("x", 50, 100, Duration::from_secs(2));
        assert!(b.contains("50.0%"), "{b}");
        assert!(b.contains("25/s"), "{b}");
        assert!(bar("x", 0, 0, Duration::ZERO).contains("100.0%"));
    }
}
