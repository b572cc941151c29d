//! `hexcast-faults`: the exactly-once fault run (driven by `scripts/faults.sh`).
//!
//! Runs every pipeline stage as its own `hexcast run --target ...` process (two push
//! instances), loads a known subscriber population through the Subscriptions gRPC API,
//! feeds a known stream of incidents, and meanwhile SIGKILLs a random stage process at
//! random moments and restarts it, restarts the broker once (data kept), and adds then
//! removes a third push instance (rebalance). Backends, one per tenant, consume the Push
//! stream, resume from the last cursor after every disconnect (and disconnect on their
//! own now and then), and must end with exactly the expected (alert, tenant, subscriber)
//! set, computed in process with the same stages, index and matcher (recipients of record
//! included) the services run. The feed has three phases: new incidents; then, once those
//! are delivered and every 20th subscriber has moved, updates of every 4th incident; then
//! closes, which reach exactly the recipients of record. Prints a JSON summary; exits
//! non-zero on any lost, duplicated or unexpected notification.

#![allow(clippy::print_stdout)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use clap::Parser;
use hexcast_core::cells::{GeoConfig, ShardMap};
use hexcast_core::{LatLng, Stage as _, StageCtx, Timestamp, header};
use hexcast_dedup::{Dedup, DedupConfig};
use hexcast_ingest::{Ingest, RawIncident};
use hexcast_match::{Matcher, SubscriberIndex};
use hexcast_policy::{Policy, PolicyConfig, PolicyOut};
use hexcast_proto::v1 as pb;
use hexcast_spatial::Spatial;
use prost::Message as _;
use rdkafka::ClientConfig;
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, Parser)]
#[command(name = "hexcast-faults", about = "exactly-once under kill -9, broker restart and rebalance")]
struct Args {
    /// Seconds of incident feed (faults are injected during it and a little after).
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Incidents per second.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Seed of every random choice (population, incidents, fault schedule).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// SIGKILLs of stage processes over the run.
    #[arg(long, default_value_t = 24)]
    kills: u32,
    /// Broker restarts over the run (each waits for the previous one to finish).
    #[arg(long, default_value_t = 1)]
    broker_restarts: u32,
    /// Subscribers per tenant.
    #[arg(long, default_value_t = 600)]
    subscribers: usize,
    /// The hexcast binary.
    #[arg(long)]
    hexcast: PathBuf,
    /// Bootstrap servers of the broker this run owns (it is restarted).
    #[arg(long)]
    brokers: String,
    /// Command that stops the broker (run through `sh -c`).
    #[arg(long)]
    broker_stop: String,
    /// Command that starts the broker again with its data kept.
    #[arg(long)]
    broker_resume: String,
    /// Folder for configs and process logs.
    #[arg(long)]
    work_dir: PathBuf,
    /// Only kill processes whose name starts with one of these (default: any stage).
    #[arg(long = "kill-only", value_name = "PREFIX")]
    kill_only: Vec<String>,
    /// Extra `--set KEY=VALUE` for every stage process (e.g. `kafka.delivery=at_least_once`
    /// to see the run catch duplicates).
    #[arg(long = "stage-set", value_name = "KEY=VALUE")]
    stage_sets: Vec<String>,
    /// Seconds allowed after the feed for every expected notification to arrive.
    #[arg(long, default_value_t = 240)]
    drain_timeout: u64,
}

const TENANTS: [(&str, &str); 2] = [("alpha", "alpha-token-0123456789"), ("beta", "beta-token-0123456789ab")];
const CALLS: [&str; 5] = ["ARMED ROBBERY", "SHOTS FIRED", "BURGLARY", "ASSAULT", "STRUCTURE FIRE"];
const SITES: usize = 8;
const SHARDS: u32 = 4;
const PARTITIONS: u32 = 3;

/// splitmix64: small, seeded, good enough for schedules and synthetic data.
struct Rng(u64);
impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

fn site(k: usize) -> LatLng {
    LatLng::new(39.9 + (k / 4) as f64 * 0.05, -75.2 + (k % 4) as f64 * 0.05).unwrap_or_else(|_| unreachable!())
}

/// One stage process and how to start it again.
struct Proc {
    name: String,
    args: Vec<String>,
    child: Option<Child>,
    kills: u32,
}

struct Cluster {
    hexcast: PathBuf,
    sets: Vec<String>,
    config: PathBuf,
    logs: PathBuf,
    procs: Vec<Proc>,
}

impl Cluster {
    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let p = &mut self.procs[i];
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.logs.join(format!("{}.log", p.name)))?;
        let child = Command::new(&self.hexcast)
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .args(&p.args)
            .args(self.sets.iter().flat_map(|s| ["--set", s.as_str()]))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", p.name))?;
        p.child = Some(child);
        Ok(())
    }

    fn kill(&mut self, i: usize) {
        let p = &mut self.procs[i];
        if let Some(mut c) = p.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
            p.kills += 1;
        }
    }

    /// Fails if a process exited on its own (a stage died without being killed).
    fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in &mut self.procs {
            if let Some(c) = &mut p.child
                && let Some(status) = c.try_wait()?
            {
                bail!("{} exited on its own with {status} (see {}.log)", p.name, p.name);
            }
        }
        Ok(())
    }

    fn stop_all(&mut self) {
        for p in &mut self.procs {
            if let Some(mut c) = p.child.take() {
                let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
                let deadline = Instant::now() + Duration::from_secs(15);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = c.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn sh(cmd: &str) -> anyhow::Result<()> {
    let status = Command::new("sh").arg("-c").arg(cmd).stdout(Stdio::null()).status()?;
    ensure!(status.success(), "`{cmd}` failed: {status}");
    Ok(())
}

type Auth = Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;
fn auth(token: &str) -> Auth {
    let bearer: MetadataValue<_> = format!("Bearer {token}").parse().unwrap_or_else(|_| unreachable!());
    Box::new(move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", bearer.clone());
        Ok(req)
    })
}

async fn connect(addr: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?.connect_timeout(Duration::from_secs(2)).connect().await?)
}

/// The population: points and circles around the sites, per tenant.
fn population(rng: &mut Rng, per_tenant: usize) -> Vec<(&'static str, pb::Subscription)> {
    let mut out = Vec::new();
    for (tenant, _) in TENANTS {
        for i in 0..per_tenant {
            let at = site(rng.below(SITES)).destination(rng.f64() * 360.0, rng.f64() * 3_000.0);
            let shape = if i % 5 == 0 {
                pb::area::Shape::Circle(pb::Circle { center: Some(at.into()), radius_m: 200.0 + rng.f64() * 800.0 })
            } else {
                pb::area::Shape::Point(at.into())
            };
            let sub = pb::Subscription {
                subscriber_id: format!("{tenant}-{i}"),
                areas: vec![pb::Area { shape: Some(shape) }],
                ..Default::default()
            };
            out.push((tenant, sub));
        }
    }
    out
}

/// The raw records in three phases, each fed only once the one before is acknowledged (so
/// an incident's events reach the pipeline in order): cad-json incidents near the sites,
/// every 50th one poison (malformed JSON, a 2 MiB record or binary garbage; keys `bad-*`,
/// first phase only); then updates of every 4th incident (moved up to 500 m, so some reach
/// newcomers); then closes of every 8th and of every 12th from 6.
fn incidents(rng: &mut Rng, n: usize, now_ms: i64) -> [Vec<(String, Vec<u8>)>; 3] {
    let mut phases: [Vec<(String, Vec<u8>)>; 3] = Default::default();
    let body = |i: usize, version: u32, call: &str, p: LatLng, status: &str| {
        serde_json::json!({
            "id": i.to_string(), "version": version, "call_type": call, "status": status,
            "lat": p.lat(), "lng": p.lng(), "occurred_at": now_ms, "address": "1 FAULT ST",
        })
        .to_string()
        .into_bytes()
    };
    for i in 0..n {
        // Poison records (raw-topic keys `bad-*`, never updated or closed): every 200th a
        // 2 MiB record (sent gzip-compressed, so the broker takes it and ingest must
        // dead-letter it truncated), every 200th, shifted, binary garbage, and the rest of
        // every 50th malformed JSON.
        if i % 200 == 99 {
            let filler = "x".repeat(2 << 20);
            let big = format!("{{\"id\": \"{i}\", \"call_type\": \"FIRE\", \"notes\": \"{filler}\"}}");
            phases[0].push((format!("bad-big-{i}"), big.into_bytes()));
            continue;
        }
        if i % 200 == 149 {
            phases[0].push((format!("bad-garbage-{i}"), (0..4096).map(|_| rng.below(256) as u8).collect()));
            continue;
        }
        if i % 50 == 49 {
            phases[0].push((format!("bad-{i}"), format!("{{\"id\": \"{i}\", \"lat\": ").into_bytes()));
            continue;
        }
        let p = site(rng.below(SITES)).destination(rng.f64() * 360.0, rng.f64() * 1_500.0);
        let call = CALLS[rng.below(CALLS.len())];
        phases[0].push((i.to_string(), body(i, 1, call, p, "active")));
        let mut version = 1;
        if i % 4 == 0 {
            version += 1;
            let q = p.destination(rng.f64() * 360.0, rng.f64() * 500.0);
            phases[1].push((i.to_string(), body(i, version, call, q, "active")));
        }
        if i % 8 == 0 || i % 12 == 6 {
            phases[2].push((i.to_string(), body(i, version + 1, call, p, "closed")));
        }
    }
    phases
}

/// Subscribers who move between the first phase and the updates: every 20th, to another
/// site's neighbourhood (some out of their alerts' areas, some into others').
fn moves(rng: &mut Rng, subs: &[(&'static str, pb::Subscription)]) -> Vec<(&'static str, pb::Subscription)> {
    subs.iter()
        .step_by(20)
        .map(|(tenant, s)| {
            let at = site(rng.below(SITES)).destination(rng.f64() * 360.0, rng.f64() * 3_000.0);
            let mut moved = s.clone();
            moved.areas = vec![pb::Area { shape: Some(pb::area::Shape::Point(at.into())) }];
            (*tenant, moved)
        })
        .collect()
}

type Notification = (String, String, String);

/// Watches every stage's consumer group once a second and returns, per stage, the longest
/// time its input waited (committed offsets behind the input's last stable offset) while
/// those committed offsets did not move. A broker restart counts for every stage that had
/// input waiting: nothing moves then either.
fn spawn_stall_probe(
    brokers: String,
    prefix: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<BTreeMap<&'static str, f64>> {
    const STAGES: [(&str, &str); 5] = [
        ("ingest", "incidents.raw"),
        ("dedup", "incidents.normalized"),
        ("policy", "incidents.unique"),
        ("spatial", "alerts"),
        ("push", "alerts.indexed"),
    ];
    std::thread::spawn(move || {
        let client = |group: &str, isolation: &str| -> Option<BaseConsumer> {
            ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("group.id", group)
                .set("enable.auto.commit", "false")
                .set("isolation.level", isolation)
                .create()
                .ok()
        };
        let timeout = Duration::from_secs(2);
        let ends = client(&format!("{prefix}-stall-probe"), "read_committed");
        let groups: Vec<Option<BaseConsumer>> =
            STAGES.iter().map(|(stage, _)| client(&format!("{prefix}-{stage}"), "read_uncommitted")).collect();
        // Per stage: committed offsets last seen, since when they have not moved while
        // input waited, and the longest such time.
        let mut last: Vec<Option<i64>> = vec![None; STAGES.len()];
        let mut since: Vec<Option<Instant>> = vec![None; STAGES.len()];
        let mut longest = vec![0f64; STAGES.len()];
        while !stop.load(Ordering::SeqCst) {
            for (k, (_, input)) in STAGES.iter().enumerate() {
                let topic = format!("{prefix}.{input}");
                let measured = (|| -> Option<(i64, bool)> {
                    let (ends, group) = (ends.as_ref()?, groups[k].as_ref()?);
                    let md = ends.fetch_metadata(Some(&topic), timeout).ok()?;
                    let parts: Vec<i32> = md.topics().first()?.partitions().iter().map(|p| p.id()).collect();
                    let mut tpl = TopicPartitionList::new();
                    for p in &parts {
                        tpl.add_partition(&topic, *p);
                    }
                    let committed = group.committed_offsets(tpl, timeout).ok()?;
                    let (mut done, mut waits) = (0i64, false);
                    for p in parts {
                        let (low, stable) = ends.fetch_watermarks(&topic, p, timeout).ok()?;
                        let c = committed
                            .find_partition(&topic, p)
                            .and_then(|e| if let Offset::Offset(o) = e.offset() { Some(o) } else { None })
                            .unwrap_or(low)
                            .max(low);
                        done += c;
                        waits |= stable > c;
                    }
                    Some((done, waits))
                })();
                // Unreadable (the broker is away): a running stall goes on.
                if let Some((done, waits)) = measured {
                    if !waits || last[k] != Some(done) {
                        since[k] = waits.then(Instant::now);
                    } else if since[k].is_none() {
                        since[k] = Some(Instant::now());
                    }
                    last[k] = Some(done);
                }
                if let Some(t) = since[k] {
                    longest[k] = longest[k].max(t.elapsed().as_secs_f64());
                }
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        STAGES.iter().zip(longest).map(|((stage, _), s)| (*stage, (s * 10.0).round() / 10.0)).collect()
    })
}

/// How many committed records of `topic` carry each key (read_committed, whole topic).
fn key_counts(brokers: &str, topic: &str) -> anyhow::Result<BTreeMap<String, usize>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-faults-check"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let timeout = Duration::from_secs(10);
    let md = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> =
        md.topics().first().map(|t| t.partitions().iter().map(|p| p.id()).collect()).unwrap_or_default();
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout)?;
        if high > low {
            tpl.add_partition_offset(topic, p, Offset::Offset(low))?;
            ends.insert(p, high);
        }
    }
    consumer.assign(&tpl)?;
    let mut counts = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ends.is_empty() {
        ensure!(Instant::now() < deadline, "reading {topic}: partitions {:?} not read to their end", ends.keys());
        // The end is the last stable offset; control records and aborted records are
        // skipped, so a partition is done once its position reaches it.
        if let Ok(positions) = consumer.position() {
            for e in positions.elements() {
                if let Offset::Offset(o) = e.offset()
                    && ends.get(&e.partition()).is_some_and(|end| o >= *end)
                {
                    ends.remove(&e.partition());
                }
            }
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                *counts.entry(key).or_default() += 1;
            }
            Some(Err(e)) => bail!("reading {topic}: {e}"),
            None => {}
        }
    }
    Ok(counts)
}

/// What the services must deliver: the same stages, index and matcher (with its recipients
/// of record), in process, with the moves applied between the first phase and the updates.
fn expected(
    subs: &[(&'static str, pb::Subscription)],
    moved: &[(&'static str, pb::Subscription)],
    phases: &[Vec<(String, Vec<u8>)>; 3],
    now: Timestamp,
) -> anyhow::Result<(BTreeSet<Notification>, BTreeSet<Notification>, serde_json::Value)> {
    let geo = GeoConfig::default();
    let shard_map = ShardMap { territory_res: geo.territory_resolution, shards: SHARDS };
    let index = Arc::new(SubscriberIndex::new(shard_map));
    let store = |subs: &[(&'static str, pb::Subscription)]| -> anyhow::Result<()> {
        for (tenant, s) in subs {
            let stored =
                hexcast_api::subscriptions::stored_subscription(&geo, &shard_map, 20_000, tenant, s.clone(), now)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            index.upsert(stored);
        }
        Ok(())
    };
    store(subs)?;
    let mut ingest = Ingest::default();
    let mut dedup = Dedup::new(DedupConfig::default());
    let mut policy = Policy::new(PolicyConfig::seed());
    let spatial = Spatial::new(geo, SHARDS);
    let mut matcher = Matcher::new(Arc::clone(&index), PARTITIONS, 10_000);
    let ctx = StageCtx::at(now);
    let mut out = BTreeSet::new();
    // How much of the expected set the recipients of record decide: notifications per
    // phase, and those of updates and closes that reach a subscriber who moved.
    let mut per_phase = [0usize; 3];
    let mut to_movers = 0usize;
    let movers: BTreeSet<(&str, &str)> = moved.iter().map(|(t, s)| (*t, s.subscriber_id.as_str())).collect();
    let mut first_phase = BTreeSet::new();
    for (phase, raws) in phases.iter().enumerate() {
        if phase == 1 {
            store(moved)?;
            first_phase = out.clone();
        }
        for (_, payload) in raws {
            let raw =
                RawIncident { format: "cad-json".into(), source: Some("faults".into()), payload: payload.clone() };
            let mut normalized = Vec::new();
            if ingest.process(raw, &ctx, &mut normalized).is_err() {
                continue;
            }
            for inc in normalized.into_iter().filter_map(hexcast_ingest::IngestOut::incident) {
                let mut events = Vec::new();
                let _ = dedup.process(inc, &ctx, &mut events);
                for ev in events {
                    let hexcast_dedup::DedupOut::Event(ev) = ev else { continue };
                    let ev = *ev;
                    let mut outs = Vec::new();
                    let _ = policy.process(ev, &ctx, &mut outs);
                    for o in outs {
                        let PolicyOut::Alert(alert) = o else { continue };
                        for rec in spatial.index(alert)? {
                            let mut records = Vec::new();
                            matcher.process(rec, &ctx, &mut records)?;
                            for r in records.iter().filter(|r| r.topic == hexcast_core::Topic::Notifications) {
                                let b = pb::NotificationBatch::decode(r.payload.as_deref().unwrap_or_default())?;
                                let alert = b.alert.map(|a| a.alert_id).unwrap_or_default();
                                for id in b.subscriber_ids {
                                    per_phase[phase] += 1;
                                    if phase > 0 && movers.contains(&(b.tenant.as_str(), id.as_str())) {
                                        to_movers += 1;
                                    }
                                    out.insert((alert.clone(), b.tenant.clone(), id));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    let stats = serde_json::json!({
        "expected_new": per_phase[0], "expected_updates": per_phase[1], "expected_closes": per_phase[2],
        "expected_to_moved_subscribers": to_movers,
    });
    Ok((out, first_phase, stats))
}

/// Moves `moved` through any live push instance, then waits until every live instance's
/// index shows them where they moved (an instance killed meanwhile reloads the whole topic
/// before it matches again).
async fn move_subscribers(
    moved: &[(&'static str, pb::Subscription)],
    addrs: &Mutex<Vec<String>>,
) -> anyhow::Result<()> {
    let live = || addrs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let token_of = |tenant: &str| TENANTS.iter().find(|(t, _)| *t == tenant).map_or("", |(_, k)| *k);
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut stored = Vec::new();
    for (attempt, (tenant, s)) in moved.iter().enumerate() {
        let mut k = attempt;
        loop {
            ensure!(Instant::now() < deadline, "could not move {}", s.subscriber_id);
            let addr = { live()[k % live().len()].clone() };
            k += 1;
            let Ok(ch) = connect(&addr).await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let mut client =
                pb::subscriptions_client::SubscriptionsClient::with_interceptor(ch, auth(token_of(tenant)));
            match client.upsert(pb::UpsertRequest { subscription: Some(s.clone()) }).await {
                Ok(resp) => {
                    let sub = resp.into_inner().subscription.context("upsert answer without subscription")?;
                    stored.push((*tenant, sub));
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    for addr in live() {
        for (tenant, sub) in &stored {
            loop {
                if !live().contains(&addr) {
                    break;
                }
                ensure!(Instant::now() < deadline, "{addr} never showed {} moved", sub.subscriber_id);
                if let Ok(ch) = connect(&addr).await {
                    let mut client =
                        pb::subscriptions_client::SubscriptionsClient::with_interceptor(ch, auth(token_of(tenant)));
                    if let Ok(got) = client.get(pb::GetRequest { subscriber_id: sub.subscriber_id.clone() }).await
                        && got.into_inner().areas == sub.areas
                    {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    eprintln!("faults: {} subscribers moved and visible on every live push instance", stored.len());
    Ok(())
}

#[derive(Default)]
struct Received {
    all: Mutex<Vec<Notification>>,
    reconnects: AtomicU64,
}

/// A push backend: consumes the tenant's stream from any live push instance, keeps the
/// cursor of the last batch it processed, and resumes from it after every disconnect.
async fn backend(
    tenant: &'static str,
    token: &'static str,
    addrs: Arc<Mutex<Vec<String>>>,
    got: Arc<Received>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let mut rng = Rng(seed);
    let mut cursor = String::new();
    let mut attempt = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let addr = {
            let a = addrs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            a[attempt % a.len()].clone()
        };
        attempt += 1;
        let Ok(channel) = connect(&addr).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut client = pb::push_client::PushClient::with_interceptor(channel, auth(token));
        let req = pb::SubscribeRequest {
            cursor: cursor.clone(),
            from_beginning: cursor.is_empty(),
            max_batch_ids: 1 + rng.below(40) as u32,
        };
        let Ok(resp) = client.subscribe(req).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut stream = resp.into_inner();
        // Hang up on our own after a random number of batches, to resume mid-record too.
        let mut budget = 1 + rng.below(200);
        loop {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            match tokio::time::timeout(Duration::from_millis(500), stream.message()).await {
                Err(_) => continue,
                Ok(Ok(Some(batch))) => {
                    let alert = batch.alert.map(|a| a.alert_id).unwrap_or_default();
                    {
                        let mut all = got.all.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        for id in batch.subscriber_ids {
                            all.push((alert.clone(), tenant.to_owned(), id));
                        }
                    }
                    // Acknowledge: only now is the cursor advanced.
                    cursor = batch.cursor;
                    budget -= 1;
                    if budget == 0 {
                        break;
                    }
                }
                Ok(_) => break,
            }
        }
        got.reconnects.fetch_add(1, Ordering::Relaxed);
    }
}

fn write_config(dir: &Path, brokers: &str, prefix: &str) -> anyhow::Result<PathBuf> {
    let tokens = dir.join("tokens.toml");
    let mut t = String::new();
    for (tenant, token) in TENANTS {
        t.push_str(&format!("{tenant} = \"{token}\"\n"));
    }
    std::fs::write(&tokens, t)?;
    let cfg = format!(
        r#"[kafka]
brokers = "{brokers}"
topic_prefix = "{prefix}."
group_prefix = "{prefix}"
transaction_timeout_ms = 10000
[kafka.consumer]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "1000"
[runner]
max_batch = 50
linger_ms = 20
retry_backoff_ms = 300
[topics]
partitions = {PARTITIONS}
shards = {SHARDS}
create = false
[push]
tokens_file = "{}"
"#,
        tokens.display()
    );
    let path = dir.join("hexcast.toml");
    std::fs::write(&path, cfg)?;
    Ok(path)
}

async fn publish(topic: &str, key: &str, payload: &[u8], producer: &FutureProducer) -> anyhow::Result<()> {
    let headers = OwnedHeaders::new()
        .insert(Header { key: header::FORMAT, value: Some("cad-json") })
        .insert(Header { key: header::SOURCE, value: Some("faults") });
    let rec = FutureRecord::to(topic).key(key).payload(payload).headers(headers);
    producer.send(rec, Duration::from_secs(30)).await.map_err(|(e, _)| anyhow::anyhow!("publishing {key}: {e}"))?;
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    std::fs::create_dir_all(&args.work_dir)?;
    let logs = args.work_dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let prefix = format!("faults-{}-{}", args.seed, std::process::id());
    let config = write_config(&args.work_dir, &args.brokers, &prefix)?;
    let status = Command::new(&args.hexcast)
        .args(["topics", "create", "--config"])
        .arg(&config)
        .arg("--set")
        .arg("topics.create=true")
        .env("RUST_LOG", "warn")
        .status()?;
    ensure!(status.success(), "hexcast topics create failed");

    let push_ports = [free_port()?, free_port()?, free_port()?];
    let mut procs = Vec::new();
    for t in ["ingest", "dedup", "policy", "spatial"] {
        procs.push(Proc {
            name: t.into(),
            args: vec!["--target".into(), t.into(), "--set".into(), format!("kafka.instance_id={t}-0")],
            child: None,
            kills: 0,
        });
    }
    for (i, port) in push_ports.iter().enumerate() {
        procs.push(Proc {
            name: format!("push-{i}"),
            args: vec![
                "--target".into(),
                "push".into(),
                "--set".into(),
                format!("kafka.instance_id=push-{i}"),
                "--set".into(),
                format!("push.listen=127.0.0.1:{port}"),
                // Each instance holds only its shards: Get of a subscriber held elsewhere is
                // forwarded to the others.
                "--set".into(),
                format!(
                    "push.peers=[{}]",
                    push_ports
                        .iter()
                        .filter(|p| *p != port)
                        .map(|p| format!("\"http://127.0.0.1:{p}\""))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            ],
            child: None,
            kills: 0,
        });
    }
    let mut cluster =
        Cluster { hexcast: args.hexcast.clone(), sets: args.stage_sets.clone(), config, logs: logs.clone(), procs };
    // The third push instance joins later and leaves again.
    for i in 0..6 {
        cluster.spawn(i)?;
    }
    let addr_of = |i: usize| format!("127.0.0.1:{}", push_ports[i]);

    // The population, through the API of the first push instance.
    let mut rng = Rng(args.seed);
    let subs = population(&mut rng, args.subscribers);
    let deadline = Instant::now() + Duration::from_secs(60);
    let channel = loop {
        match connect(&addr_of(0)).await {
            Ok(c) => break c,
            Err(e) => {
                ensure!(Instant::now() < deadline, "push-0 did not come up: {e}");
                cluster.check_alive()?;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    for (tenant, token) in TENANTS {
        let reqs: Vec<pb::UpsertRequest> = subs
            .iter()
            .filter(|(t, _)| *t == tenant)
            .map(|(_, s)| pb::UpsertRequest { subscription: Some(s.clone()) })
            .collect();
        let n = reqs.len() as u64;
        let resp = pb::subscriptions_client::SubscriptionsClient::with_interceptor(channel.clone(), auth(token))
            .bulk_upsert(futures::stream::iter(reqs))
            .await
            .context("bulk upsert")?;
        ensure!(resp.into_inner().upserted == n, "not every subscription was upserted");
    }
    // Both instances' indexes hold the whole population before the first incident.
    for i in 0..2 {
        let ch = connect(&addr_of(i)).await?;
        for (tenant, token) in TENANTS {
            let mut client = pb::subscriptions_client::SubscriptionsClient::with_interceptor(ch.clone(), auth(token));
            for (_, s) in subs.iter().filter(|(t, _)| *t == tenant) {
                let deadline = Instant::now() + Duration::from_secs(60);
                while client.get(pb::GetRequest { subscriber_id: s.subscriber_id.clone() }).await.is_err() {
                    ensure!(Instant::now() < deadline, "push-{i} never indexed {}", s.subscriber_id);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    eprintln!("faults: {} subscribers loaded and indexed ({:.1}s)", subs.len(), started.elapsed().as_secs_f64());

    let now = hexcast_runtime::clock::now();
    let n = ((args.duration as f64) * args.rate).round().max(1.0) as usize;
    let phases = incidents(&mut rng, n, now.0);
    let moved = moves(&mut rng, &subs);
    let (expected, first_phase, expected_stats) = expected(&subs, &moved, &phases, now)?;
    let records = phases.iter().map(Vec::len).sum::<usize>();
    eprintln!(
        "faults: {records} records ({} updates, {} closes), {} subscribers move, {} expected notifications",
        phases[1].len(),
        phases[2].len(),
        moved.len(),
        expected.len()
    );

    // Backends.
    let live_addrs = Arc::new(Mutex::new(vec![addr_of(0), addr_of(1)]));
    let got = Arc::new(Received::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut backends = Vec::new();
    for (k, (tenant, token)) in TENANTS.into_iter().enumerate() {
        backends.push(tokio::spawn(backend(
            tenant,
            token,
            Arc::clone(&live_addrs),
            Arc::clone(&got),
            Arc::clone(&stop),
            args.seed.wrapping_mul(31).wrapping_add(k as u64),
        )));
    }

    // The feed, in its own task. An idempotent producer with a bounded delivery timeout:
    // a record not acknowledged in time (the broker is restarted meanwhile) is sent again
    // on a fresh producer. A resend may duplicate a raw record that did land; the pipeline
    // must absorb that too (dedup drops exact repeats), so the check below is unchanged.
    let make_producer = {
        let brokers = args.brokers.clone();
        move || -> anyhow::Result<FutureProducer> {
            Ok(ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("enable.idempotence", "true")
                .set("message.timeout.ms", "20000")
                .set("linger.ms", "5")
                // The 2 MiB poison records go out compressed, as `kcat -z gzip` sends them.
                .set("compression.type", "gzip")
                .set("message.max.bytes", (8 << 20).to_string())
                .create()?)
        }
    };
    let producer = Arc::new(Mutex::new((0u64, make_producer()?)));
    let resends = Arc::new(AtomicU64::new(0));
    let raw_topic = format!("{prefix}.incidents.raw");
    let feed = {
        let phases = phases.clone();
        let rate = args.rate;
        let resends = Arc::clone(&resends);
        let (addrs, moved) = (Arc::clone(&live_addrs), moved.clone());
        let got = Arc::clone(&got);
        tokio::spawn(async move {
            let t0 = tokio::time::Instant::now();
            let mut pending = Vec::new();
            let mut i = 0usize;
            for (phase, raws) in phases.into_iter().enumerate() {
                // The phase before is acknowledged in full: an incident's events stay in order.
                for p in pending.drain(..) {
                    let p: tokio::task::JoinHandle<anyhow::Result<()>> = p;
                    p.await??;
                }
                if phase == 1 {
                    // The first phase matched in full before anyone moves: a move must not
                    // reach an alert still on its way (the expected set assumes it does not).
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
                    loop {
                        let have: BTreeSet<Notification> =
                            got.all.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().cloned().collect();
                        if first_phase.is_subset(&have) {
                            break;
                        }
                        if tokio::time::Instant::now() > deadline {
                            eprintln!("faults: the first phase was not delivered in full within 240 s; moving anyway");
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    move_subscribers(&moved, &addrs).await?;
                }
                for (key, payload) in raws {
                    i += 1;
                    tokio::time::sleep_until(t0 + Duration::from_secs_f64(i as f64 / rate)).await;
                    let producer = Arc::clone(&producer);
                    let make_producer = make_producer.clone();
                    let resends = Arc::clone(&resends);
                    let t = raw_topic.clone();
                    pending.push(tokio::spawn(async move {
                        for _attempt in 0..30 {
                            let (generation, p) = {
                                let g = producer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                                (g.0, g.1.clone())
                            };
                            match publish(&t, &key, &payload, &p).await {
                                Ok(()) => return anyhow::Ok(()),
                                Err(e) => {
                                    resends.fetch_add(1, Ordering::Relaxed);
                                    eprintln!("faults: {e}; sending it again on a fresh producer");
                                    let mut g = producer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                                    if g.0 == generation {
                                        *g = (generation + 1, make_producer()?);
                                    }
                                }
                            }
                        }
                        anyhow::bail!("record {key} could not be published")
                    }));
                }
            }
            for p in pending {
                p.await??;
            }
            anyhow::Ok(())
        })
    };

    // Faults, on a schedule drawn from the seed, over the feed plus a fifth.
    let window = Duration::from_secs_f64(args.duration as f64 * 1.2);
    let mut events: Vec<(Duration, &str)> = Vec::new();
    for _ in 0..args.kills {
        events.push((window.mul_f64(rng.f64()), "kill"));
    }
    for i in 0..args.broker_restarts {
        // Spread over the window, the first at 40 % as before.
        let at =
            if args.broker_restarts == 1 { 0.4 } else { 0.2 + 0.6 * f64::from(i) / f64::from(args.broker_restarts) };
        events.push((window.mul_f64(at), "broker"));
    }
    events.push((window.mul_f64(0.55), "push-join"));
    events.push((window.mul_f64(0.8), "push-leave"));
    events.sort_by_key(|e| e.0);
    let probe_stop = Arc::new(AtomicBool::new(false));
    let probe = spawn_stall_probe(args.brokers.clone(), prefix.clone(), Arc::clone(&probe_stop));
    let t0 = Instant::now();
    let mut broker_restarts = 0;
    let mut broker = None;
    let mut third_running = false;
    for (at, what) in events {
        while t0.elapsed() < at {
            cluster.check_alive()?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        match what {
            "kill" => {
                let candidates: Vec<usize> = (0..7)
                    .filter(|&i| i < 6 || third_running)
                    .filter(|&i| {
                        args.kill_only.is_empty() || args.kill_only.iter().any(|p| cluster.procs[i].name.starts_with(p))
                    })
                    .collect();
                let i = candidates[rng.below(candidates.len())];
                let name = cluster.procs[i].name.clone();
                cluster.kill(i);
                tokio::time::sleep(Duration::from_millis(rng.below(1500) as u64)).await;
                cluster.spawn(i)?;
                eprintln!("faults: [{:>5.1}s] kill -9 {name}, restarted", t0.elapsed().as_secs_f64());
            }
            "broker" => {
                eprintln!("faults: [{:>5.1}s] restarting the broker", t0.elapsed().as_secs_f64());
                let (stop_cmd, resume_cmd) = (args.broker_stop.clone(), args.broker_resume.clone());
                // One restart at a time.
                if let Some(previous) = broker.take() {
                    previous.await??;
                }
                // In the background: the other faults go on while the broker is away.
                broker = Some(tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                    sh(&stop_cmd)?;
                    std::thread::sleep(Duration::from_secs(2));
                    sh(&resume_cmd)?;
                    eprintln!("faults: [{:>5.1}s] broker back", t0.elapsed().as_secs_f64());
                    Ok(())
                }));
                broker_restarts += 1;
            }
            "push-join" => {
                cluster.spawn(6)?;
                third_running = true;
                live_addrs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(addr_of(2));
                eprintln!("faults: [{:>5.1}s] push-2 joined", t0.elapsed().as_secs_f64());
            }
            _ => {
                live_addrs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).retain(|a| *a != addr_of(2));
                cluster.kill(6);
                // A planned removal, not one of the counted kills.
                cluster.procs[6].kills -= 1;
                third_running = false;
                eprintln!("faults: [{:>5.1}s] push-2 removed", t0.elapsed().as_secs_f64());
            }
        }
    }
    if let Some(b) = broker {
        b.await??;
    }
    feed.await??;
    let fed_at = t0.elapsed();
    eprintln!("faults: [{:>5.1}s] feed done, faults over; draining", fed_at.as_secs_f64());

    // Drain: until every expected notification arrived, then a settle period in which a
    // duplicate would still show up.
    let drain_deadline = Instant::now() + Duration::from_secs(args.drain_timeout);
    loop {
        cluster.check_alive()?;
        let have: BTreeSet<Notification> = {
            let all = got.all.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            all.iter().cloned().collect()
        };
        if expected.is_subset(&have) || Instant::now() > drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    probe_stop.store(true, Ordering::SeqCst);
    let longest_stall = probe.join().map_err(|_| anyhow::anyhow!("the stall probe panicked"))?;
    stop.store(true, Ordering::SeqCst);
    for b in backends {
        let _ = b.await;
    }
    cluster.stop_all();

    let all = std::mem::take(&mut *got.all.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    let mut counts: BTreeMap<&Notification, usize> = BTreeMap::new();
    for n in &all {
        *counts.entry(n).or_default() += 1;
    }
    let duplicated: usize = counts.values().map(|c| c - 1).sum();
    let lost: Vec<&Notification> = expected.iter().filter(|n| !counts.contains_key(n)).collect();
    let unexpected: Vec<&&Notification> = counts.keys().filter(|n| !expected.contains(**n)).collect();
    // Per alert: lost pairs of an alert that did arrive point at a partial index (a matcher
    // that ran before its index was loaded); alerts with nothing at all at a slow drain.
    let mut per_alert: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for n in &expected {
        let e = per_alert.entry(n.0.as_str()).or_default();
        e.0 += 1;
        if counts.contains_key(n) {
            e.1 += 1;
        }
    }
    let alerts_partial = per_alert.values().filter(|(want, got)| *got > 0 && got < want).count();
    let alerts_missing = per_alert.values().filter(|(_, got)| *got == 0).count();
    let kills: BTreeMap<String, u32> = cluster.procs.iter().map(|p| (p.name.clone(), p.kills)).collect();

    // Poison records: each malformed raw record (every copy the feed's resends wrote) is
    // dead-lettered exactly once, through the same kills and broker restart.
    let raw_counts = key_counts(&args.brokers, &format!("{prefix}.incidents.raw"))?;
    let dl_counts = key_counts(&args.brokers, &format!("{prefix}.incidents.deadletter"))?;
    let poison: BTreeMap<&String, usize> =
        raw_counts.iter().filter(|(k, _)| k.starts_with("bad-")).map(|(k, n)| (k, *n)).collect();
    let dead_letter_mismatch: Vec<(&String, usize, usize)> = poison
        .iter()
        .map(|(k, n)| (*k, *n, dl_counts.get(*k).copied().unwrap_or(0)))
        .filter(|(_, want, got)| want != got)
        .collect();
    let summary = serde_json::json!({
        "seed": args.seed,
        "duration_s": args.duration,
        "rate": args.rate,
        "incidents": phases[0].len(),
        "updates": phases[1].len(),
        "closes": phases[2].len(),
        "moved_subscribers": moved.len(),
        "expected_by_kind": expected_stats,
        "subscribers": subs.len(),
        "expected": expected.len(),
        "delivered": all.len(),
        "lost": lost.len(),
        "duplicated": duplicated,
        "unexpected": unexpected.len(),
        "alerts_expected": per_alert.len(),
        "alerts_partially_delivered": alerts_partial,
        "alerts_missing": alerts_missing,
        "kills": kills.values().sum::<u32>(),
        "kills_by_process": kills,
        "broker_restarts": broker_restarts,
        "push_instances_added_removed": 1,
        "backend_reconnects": got.reconnects.load(Ordering::Relaxed),
        "raw_resends": resends.load(Ordering::Relaxed),
        "poison_records": poison.values().sum::<usize>(),
        "dead_letters": dl_counts.values().sum::<usize>(),
        "dead_letter_mismatches": dead_letter_mismatch.len(),
        "longest_stall_s": longest_stall,
        "drain_s": (t0.elapsed() - fed_at).as_secs_f64().round(),
        "total_s": started.elapsed().as_secs_f64().round(),
    });
    println!("{summary}");
    if !lost.is_empty() || duplicated > 0 || !unexpected.is_empty() {
        let dups: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).take(5).collect();
        bail!(
            "exactly-once violated: lost {} (e.g. {:?}), duplicated {duplicated} (e.g. {dups:?}), unexpected {} (e.g. {:?})",
            lost.len(),
            lost.iter().take(5).collect::<Vec<_>>(),
            unexpected.len(),
            unexpected.iter().take(5).collect::<Vec<_>>()
        );
    }
    ensure!(
        dead_letter_mismatch.is_empty(),
        "poison records not dead-lettered exactly once (key, raw copies, dead letters): {:?}",
        &dead_letter_mismatch[..dead_letter_mismatch.len().min(5)]
    );
    ensure!(!poison.is_empty(), "the scenario had no poison record");
    ensure!(!expected.is_empty(), "the scenario expected no notification at all");
    Ok(())
}
