//! `--target`: which stages this process runs, wired from the one topology table
//! (`hexcast_core::topology`). The whole pipeline reads top to bottom in [`start`]: every
//! stage on the same runner, the push target's followers, matcher and API gateway, the
//! review target's queue, ticker and Review service. The same binary and image serve every
//! deployment.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hexcast_api::{RequestStore, Tables, Tokens};
use hexcast_core::topology::{self, StageSpec};
use hexcast_core::{OutRecord, Topic, header};
use hexcast_dedup::Dedup;
use hexcast_ingest::Ingest;
use hexcast_match::{AssetIndex, Matcher, SubscriberIndex};
use hexcast_policy::{Policy, PolicyConfig};
use hexcast_review::{PendingMap, ReviewQueue};
use hexcast_runtime::{
    FollowerStatus, PartitionedTable, Partitions, Runtime, ShardFollower, StageHandle, StageStats, Writer, follow,
    follow_shards, restoring, spawn_stage, spawn_stage_with_stats,
};
use hexcast_spatial::Spatial;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::health::Readiness;

/// One deployable target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// incidents.raw -> incidents.normalized
    Ingest,
    /// incidents.normalized -> incidents.unique
    Dedup,
    /// incidents.unique -> alerts, audit
    Policy,
    /// alerts -> alerts.indexed
    Spatial,
    /// review -> alerts, audit: the editorial hold's queue and the Review gRPC service
    Review,
    /// The web console (review queue, live map, transparency log); needs `review` in the
    /// same process, whose pending holds and verdict path it serves
    Console,
    /// alerts.indexed -> notifications, and the gRPC service
    Push,
}

impl Target {
    /// Every pipeline target, in pipeline order (`--target all`). The review target is
    /// named on its own: it needs reviewers' tokens and runs once per cluster.
    pub const ALL: [Target; 5] = [Target::Ingest, Target::Dedup, Target::Policy, Target::Spatial, Target::Push];

    /// Every target `--target` accepts.
    pub const NAMED: [Target; 7] =
        [Target::Ingest, Target::Dedup, Target::Policy, Target::Spatial, Target::Review, Target::Console, Target::Push];
}

impl Target {
    /// The topology row of a target's stage.
    pub const fn stage(self) -> &'static StageSpec {
        match self {
            Target::Ingest => &topology::INGEST,
            Target::Dedup => &topology::DEDUP,
            Target::Policy => &topology::POLICY,
            Target::Spatial => &topology::SPATIAL,
            // The console runs no stage of its own: it serves the review stage's queue.
            Target::Review | Target::Console => &topology::REVIEW,
            Target::Push => &topology::MATCH,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Target::Ingest => "ingest",
            Target::Dedup => "dedup",
            Target::Policy => "policy",
            Target::Spatial => "spatial",
            Target::Review => "review",
            Target::Console => "console",
            Target::Push => "push",
        })
    }
}

/// Parses `all` or a comma-separated list.
pub fn parse_targets(s: &str) -> anyhow::Result<Vec<Target>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if part == "all" {
            out.extend(Target::ALL);
            continue;
        }
        out.push(part.parse()?);
    }
    out.sort_unstable();
    out.dedup();
    anyhow::ensure!(!out.is_empty(), "--target: no target given (expected all or ingest,dedup,policy,spatial,push)");
    Ok(out)
}

impl FromStr for Target {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        Target::NAMED.into_iter().find(|t| t.to_string() == s).ok_or_else(|| {
            anyhow::anyhow!(
                "--target: unknown target `{s}` (expected all or ingest,dedup,policy,spatial,push,review,console)"
            )
        })
    }
}

/// A running push target: the subscriber, asset and request tables with their followers,
/// the matcher stage, and the API gateway.
#[derive(Debug)]
pub struct PushHandle {
    /// The gateway's bound address.
    pub addr: SocketAddr,
    /// The subscriber index.
    pub index: Arc<SubscriberIndex>,
    /// The subscriptions follower's progress.
    pub loader: Arc<FollowerStatus>,
    /// The subscriptions follower: which partitions (shards) the index holds.
    pub shards: Arc<ShardFollower>,
    /// The matcher stage.
    pub matcher: StageHandle,
    /// The gRPC server task.
    pub server: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// Registered assets.
    pub assets: Arc<AssetIndex>,
    /// Geofenced requests.
    pub requests: Arc<RequestStore>,
}

/// A running review target.
#[derive(Debug)]
pub struct ReviewHandle {
    /// The Review service's bound address.
    pub addr: SocketAddr,
    /// The queue stage.
    pub queue: StageHandle,
    /// The gRPC server and the ticker.
    pub server: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// Pending holds.
    pub pending: PendingMap,
    /// The Review service (shared with the console: one verdict path).
    pub service: hexcast_api::ReviewService,
}

/// The running targets of this process.
#[derive(Debug)]
pub struct Running {
    /// Stage runners, by target.
    pub stages: Vec<(Target, StageHandle)>,
    /// The push service, when running.
    pub push: Option<PushHandle>,
    /// The review service, when running.
    pub review: Option<ReviewHandle>,
    /// The web console, when running.
    pub console: Option<hexcast_console::ConsoleHandle>,
    /// Stops every target.
    pub shutdown: CancellationToken,
}
impl Running {
    /// The readiness of every running target.
    pub fn readiness(&self) -> Readiness {
        let mut stages: Vec<(&'static str, Arc<hexcast_runtime::StageStats>)> =
            self.stages.iter().map(|(t, h)| (t.stage().name, Arc::clone(&h.stats))).collect();
        if let Some(p) = &self.push {
            stages.push((topology::MATCH.name, Arc::clone(&p.matcher.stats)));
        }
        if let Some(r) = &self.review {
            stages.push((topology::REVIEW.name, Arc::clone(&r.queue.stats)));
        }
        let readiness = Readiness::new(stages, self.push.as_ref().map(|p| Arc::clone(&p.loader)));
        match &self.push {
            Some(p) => readiness.with_shards(Arc::clone(&p.shards), Arc::clone(&p.matcher.stats)),
            None => readiness,
        }
    }

    /// The stage handle of a target.
    pub fn stage(&self, target: Target) -> Option<&StageHandle> {
        self.stages.iter().find(|(t, _)| *t == target).map(|(_, h)| h)
    }

    /// Waits until the process is ready ([`Readiness`]: every stage holds partitions, the
    /// index has caught up), so that measurements do not include start-up.
    pub async fn wait_assigned(&self, timeout: std::time::Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let readiness = self.readiness();
        loop {
            let why = match readiness.check() {
                Ok(()) => return Ok(()),
                Err(why) => why,
            };
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "not ready within {timeout:?}: {why}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Waits until every target has stopped. Targets only stop on shutdown or a fatal
    /// error, so the first one to stop cancels the rest; the first error wins.
    pub async fn join(self) -> anyhow::Result<()> {
        use futures::FutureExt as _;
        let mut waits: Vec<futures::future::BoxFuture<'static, (String, anyhow::Result<()>)>> = Vec::new();
        for (target, stage) in self.stages {
            waits.push(async move { (target.to_string(), stage.join().await) }.boxed());
        }
        if let Some(push) = self.push {
            waits.push(async move { ("push".to_owned(), push.matcher.join().await) }.boxed());
            let server = push.server;
            waits.push(
                async move { ("push gRPC".to_owned(), server.await.unwrap_or_else(|e| Err(anyhow::anyhow!(e)))) }
                    .boxed(),
            );
        }
        if let Some(review) = self.review {
            waits.push(async move { ("review".to_owned(), review.queue.join().await) }.boxed());
            let server = review.server;
            waits.push(
                async move { ("review gRPC".to_owned(), server.await.unwrap_or_else(|e| Err(anyhow::anyhow!(e)))) }
                    .boxed(),
            );
        }
        if let Some(console) = self.console {
            let server = console.server;
            waits.push(
                async move { ("console".to_owned(), server.await.unwrap_or_else(|e| Err(anyhow::anyhow!(e)))) }.boxed(),
            );
        }
        let mut result = Ok(());
        while !waits.is_empty() {
            let ((name, r), _, rest) = futures::future::select_all(waits).await;
            if let Err(e) = r {
                tracing::error!(target = %name, error = %format!("{e:#}"), "target failed");
                if result.is_ok() {
                    result = Err(e.context(format!("target {name}")));
                }
            }
            self.shutdown.cancel();
            waits = rest;
        }
        result
    }
}

/// Starts `targets`. `tokens` overrides `push.tokens_file` (demo and tests).
pub async fn start(
    cfg: &Config,
    rt: &Runtime,
    targets: &[Target],
    tokens: Option<Tokens>,
    listener: Option<tokio::net::TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    start_with_review(cfg, rt, targets, tokens, listener, None, shutdown).await
}

/// What a process needs before it starts anything: every configuration value checked and
/// every file read, so that a wrong key fails the start before a topic is created or a port
/// opened.
#[derive(Debug)]
pub struct Prepared {
    policy: PolicyConfig,
    ingest: Ingest,
    push_tokens: Option<Tokens>,
    review_tokens: Option<Tokens>,
    operator_tokens: Option<Tokens>,
}

/// Checks the configuration of `targets` and reads their files; `tokens` and
/// `review_tokens` stand in for the token files (demo and tests).
pub fn prepare(
    cfg: &Config,
    targets: &[Target],
    tokens: Option<Tokens>,
    review_tokens: Option<Tokens>,
) -> anyhow::Result<Prepared> {
    let policy = match &cfg.policy.file {
        Some(path) => load_policy(path).context("config key `policy.file`")?,
        None => PolicyConfig::seed(),
    };
    let ingest = Ingest::new(&cfg.ingest).context("config section [ingest]")?;
    cfg.dedup.validate()?;
    cfg.review.validate()?;
    cfg.push.tls()?;
    cfg.push.requests.validate()?;
    cfg.push.assets.validate()?;
    cfg.push.peer_endpoints()?;
    let push_tokens = match (targets.contains(&Target::Push), tokens, &cfg.push.tokens_file) {
        (false, _, _) => None,
        (true, Some(t), _) => Some(t),
        (true, None, Some(path)) => Some(Tokens::load(path).context("config key `push.tokens_file`")?),
        (true, None, None) => anyhow::bail!("config key `push.tokens_file`: required for target push"),
    };
    let review_tokens = match (targets.contains(&Target::Review), review_tokens, &cfg.review.tokens_file) {
        (false, _, _) => None,
        (true, Some(t), _) => Some(t),
        (true, None, Some(path)) => Some(Tokens::load(path).context("config key `review.tokens_file`")?),
        (true, None, None) => anyhow::bail!("config key `review.tokens_file`: required for target review"),
    };
    let operator_tokens = if targets.contains(&Target::Console) {
        anyhow::ensure!(
            cfg.console.enabled,
            "config key `console.enabled`: false, but target console was named (remove it or enable the console)"
        );
        anyhow::ensure!(
            targets.contains(&Target::Review),
            "--target: console needs review in the same process (it serves the review queue's pending holds)"
        );
        cfg.console.validate()?;
        console_outlines(&cfg.console)?;
        Some(match &cfg.console.operator_tokens_file {
            Some(path) => Tokens::load(path).context("config key `console.operator_tokens_file`")?,
            None => Tokens::default(),
        })
    } else {
        None
    };
    Ok(Prepared { policy, ingest, push_tokens, review_tokens, operator_tokens })
}

/// [`start`], with the review target's tokens (overriding `review.tokens_file`) and
/// listener given (tests). The cluster connection is checked beside the start
/// ([`crate::when_connected`]): a wrong password fails the start saying so.
pub async fn start_with_review(
    cfg: &Config,
    rt: &Runtime,
    targets: &[Target],
    tokens: Option<Tokens>,
    listener: Option<tokio::net::TcpListener>,
    review_service: Option<(Tokens, tokio::net::TcpListener)>,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    start_with_console(cfg, rt, targets, tokens, listener, review_service, None, shutdown).await
}

/// [`start_with_review`], with the console's operator tokens (overriding
/// `console.operator_tokens_file`) and listener given (tests).
#[allow(clippy::too_many_arguments)]
pub async fn start_with_console(
    cfg: &Config,
    rt: &Runtime,
    targets: &[Target],
    tokens: Option<Tokens>,
    listener: Option<tokio::net::TcpListener>,
    review_service: Option<(Tokens, tokio::net::TcpListener)>,
    console: Option<(Tokens, tokio::net::TcpListener)>,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    let (review_tokens, review_listener) = match review_service {
        Some((t, l)) => (Some(t), Some(l)),
        None => (None, None),
    };
    let mut prepared = prepare(cfg, targets, tokens, review_tokens)?;
    let console_listener = console.map(|(operators, l)| {
        prepared.operator_tokens = Some(operators);
        l
    });
    let check = crate::spawn_kafka_check(cfg);
    let started =
        start_prepared_with_console(cfg, rt, targets, prepared, listener, review_listener, console_listener, shutdown)
            .await;
    crate::when_connected(check, started).await
}

/// Starts `targets` from a checked configuration: the pipeline, top to bottom.
pub async fn start_prepared(
    cfg: &Config,
    rt: &Runtime,
    targets: &[Target],
    prepared: Prepared,
    listener: Option<tokio::net::TcpListener>,
    review_listener: Option<tokio::net::TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    start_prepared_with_console(cfg, rt, targets, prepared, listener, review_listener, None, shutdown).await
}

/// [`start_prepared`], with the console's listener given (tests).
#[allow(clippy::too_many_arguments)]
pub async fn start_prepared_with_console(
    cfg: &Config,
    rt: &Runtime,
    targets: &[Target],
    prepared: Prepared,
    listener: Option<tokio::net::TcpListener>,
    mut review_listener: Option<tokio::net::TcpListener>,
    mut console_listener: Option<tokio::net::TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    let Prepared { policy, ingest, push_tokens, review_tokens, operator_tokens } = prepared;
    let shards = cfg.topics.shards.get();
    let mut running =
        Running { stages: Vec::new(), push: None, review: None, console: None, shutdown: shutdown.clone() };
    for &target in targets {
        let s = shutdown.child_token();
        let spec = target.stage();
        let handle = match target {
            Target::Ingest => {
                let i = ingest.clone();
                spawn_stage(rt, spec, move || i.clone(), s)?
            }
            Target::Dedup => {
                let factory = dedup_factory(rt, &cfg.dedup, s.clone());
                spawn_stage(rt, spec, factory, s)?
            }
            Target::Policy => {
                let p = policy.clone();
                spawn_stage(rt, spec, move || Policy::new(p.clone()), s)?
            }
            Target::Spatial => {
                let geo = cfg.geo;
                spawn_stage(rt, spec, move || Spatial::new(geo, shards), s)?
            }
            Target::Review => {
                let tokens = review_tokens.clone().context("review tokens")?;
                let listener = match review_listener.take() {
                    Some(l) => l,
                    None => tokio::net::TcpListener::bind(cfg.review.listen)
                        .await
                        .with_context(|| format!("binding review.listen {}", cfg.review.listen))?,
                };
                running.review = Some(start_review(cfg, rt, tokens, listener, s).await?);
                continue;
            }
            Target::Console => {
                // Review sorts before console, so its service is running by now.
                let review = running.review.as_ref().context("target console needs target review")?;
                let reviewers = review_tokens.clone().context("review tokens")?;
                let operators = operator_tokens.clone().unwrap_or_default();
                let listener = match console_listener.take() {
                    Some(l) => l,
                    None => tokio::net::TcpListener::bind(cfg.console.listen)
                        .await
                        .with_context(|| format!("binding console.listen {}", cfg.console.listen))?,
                };
                let service = review.service.clone();
                let outlines = console_outlines(&cfg.console)?;
                running.console = Some(
                    hexcast_console::start(rt, &cfg.console, service, reviewers, operators, outlines, listener, s)
                        .await?,
                );
                continue;
            }
            Target::Push => {
                let tokens = push_tokens.clone().context("push tokens")?;
                let listener = match listener {
                    Some(l) => l,
                    None => tokio::net::TcpListener::bind(cfg.push.listen)
                        .await
                        .with_context(|| format!("binding push.listen {}", cfg.push.listen))?,
                };
                running.push = Some(start_push(cfg, rt, tokens, listener, s).await?);
                break;
            }
        };
        running.stages.push((target, handle));
    }
    Ok(running)
}

/// The dedup stage's factory: every call (start, abandoned batch, rebalance) rebuilds the
/// state from the `dedup.state` changelog as of the last committed transaction.
pub fn dedup_factory(
    rt: &Runtime,
    cfg: &hexcast_dedup::DedupConfig,
    shutdown: CancellationToken,
) -> impl FnMut() -> Dedup + Send + 'static + use<> {
    let (empty, restore) = (cfg.clone(), cfg.clone());
    restoring(
        rt,
        topology::DEDUP.name,
        Topic::DedupState,
        shutdown,
        move || Dedup::new(empty.clone()),
        move |records, now| {
            let (dedup, stats) = Dedup::restore(restore.clone(), records.into_iter().map(|(_, k, v)| (k, v)), now);
            tracing::info!(
                restored = stats.restored,
                expired = stats.expired,
                malformed = stats.malformed,
                "dedup state restored from its changelog"
            );
            dedup
        },
    )
}

/// The push target: followers fill the subscriber, asset and request tables; the matcher
/// stage starts only once the subscriber index has caught up (a restarted instance would
/// otherwise miss the subscribers not loaded yet, and its commit would make the loss
/// final); the API gateway serves from the same tables.
async fn start_push(
    cfg: &Config,
    rt: &Runtime,
    tokens: Tokens,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<PushHandle> {
    let shard_map =
        hexcast_core::cells::ShardMap { territory_res: cfg.geo.territory_resolution, shards: cfg.topics.shards.get() };
    let notification_partitions = cfg.topics.partitions.get();
    let index = Arc::new(SubscriberIndex::new(shard_map));
    let assets = Arc::new(AssetIndex::default());
    let requests = Arc::new(RequestStore::default());
    // The table side of the table-stream join: only the subscriptions partitions of the
    // alerts.indexed partitions the matcher is assigned (see the matcher's factory).
    let shards = Arc::new(follow_shards(
        rt,
        "subscriptions",
        Topic::Subscriptions,
        Arc::new(IndexTable(Arc::clone(&index))),
        shutdown.clone(),
    )?);
    let loader = Arc::clone(shards.status());
    {
        let a = Arc::clone(&assets);
        follow(
            rt,
            "assets",
            Topic::Assets,
            Partitions::All,
            Arc::new(move |k: &str, v: Option<&[u8]>| a.apply(k, v)),
            shutdown.clone(),
        )?;
        let r = Arc::clone(&requests);
        follow(
            rt,
            "requests",
            Topic::Requests,
            Partitions::All,
            Arc::new(move |k: &str, v: Option<&[u8]>| r.apply(k, v)),
            shutdown.clone(),
        )?;
    }
    let matcher = {
        let (index, assets) = (Arc::clone(&index), Arc::clone(&assets));
        let max_ids = cfg.push.max_ids_per_batch.get();
        let rules: Arc<[hexcast_match::EnrichRule]> = cfg.push.assets.enrich.clone().into();
        let stats = Arc::new(StageStats::default());
        let (follower, assigned, stop) = (Arc::clone(&shards), Arc::clone(&stats), shutdown.clone());
        let ttl_secs = cfg.push.recipients_ttl_secs;
        let empty = {
            let index = Arc::clone(&index);
            move || Matcher::new(Arc::clone(&index), notification_partitions, max_ids)
        };
        // The runner calls this on start and after every rebalance or abandoned batch,
        // before it reads another record. Each call rebuilds the recipients of record from
        // `alerts.recipients` as of the last committed transaction, and loads the
        // subscriptions partitions of the alerts.indexed partitions now assigned (dropping
        // the ones revoked) before matching any alert of them, or a subscriber not loaded
        // yet would be missed for good.
        let factory =
            restoring(rt, topology::MATCH.name, Topic::Recipients, shutdown.clone(), empty, move |records, _now| {
                let (recipients, restored) =
                    hexcast_match::Recipients::restore(max_ids, records.into_iter().map(|(_, k, v)| (k, v)));
                tracing::info!(
                    entries = restored.entries,
                    malformed = restored.malformed,
                    "recipients of record restored"
                );
                let started = std::time::Instant::now();
                if !follower.hold(&assigned.partitions(), &stop) {
                    tracing::warn!("subscriber index load interrupted by shutdown");
                }
                metrics::histogram!("hexcast_push_shard_load_seconds").record(started.elapsed().as_secs_f64());
                Matcher::new(Arc::clone(&index), notification_partitions, max_ids)
                    .with_assets(Arc::clone(&assets), Arc::clone(&rules))
                    .with_recipients(recipients, ttl_secs)
            });
        spawn_stage_with_stats(rt, &topology::MATCH, factory, stats, shutdown.clone())?
    };
    {
        // What the instance holds, for operators (the index only has its shards').
        let (index, shards, stop) = (Arc::clone(&index), Arc::clone(&shards), shutdown.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            while !stop.is_cancelled() {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = every.tick() => {}
                }
                metrics::gauge!("hexcast_push_index_subscribers").set(index.len() as f64);
                metrics::gauge!("hexcast_push_shards_held").set(shards.held().len() as f64);
            }
        });
    }
    let tables = Tables {
        index: Arc::clone(&index),
        assets: Arc::clone(&assets),
        requests: Arc::clone(&requests),
        shards: Some(Arc::clone(&shards)),
    };
    let api = hexcast_api::start(
        rt,
        &cfg.push,
        cfg.geo,
        shard_map.shards,
        notification_partitions,
        tokens,
        tables,
        listener,
        shutdown,
    )
    .await?;
    Ok(PushHandle { addr: api.addr, index, loader, shards, matcher, server: api.server, assets, requests })
}

/// The subscriber index as the subscriptions follower's table.
struct IndexTable(Arc<SubscriberIndex>);

impl PartitionedTable for IndexTable {
    fn apply(&self, partition: i32, key: &str, value: Option<&[u8]>) -> Result<(), String> {
        self.0.apply_from(partition, key, value)
    }

    fn drop_partition(&self, partition: i32) {
        let removed = self.0.drop_partition(partition);
        tracing::info!(partition, removed, held = self.0.len(), "subscriptions partition dropped from the index");
    }
}

/// The review target: the queue stage restored from its changelog, the ticker that applies
/// the timeout rule, and the Review service.
async fn start_review(
    cfg: &Config,
    rt: &Runtime,
    tokens: Tokens,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<ReviewHandle> {
    let pending = PendingMap::default();
    let factory = {
        let (empty, restored) = (Arc::clone(&pending), Arc::clone(&pending));
        restoring(
            rt,
            topology::REVIEW.name,
            Topic::Review,
            shutdown.clone(),
            move || ReviewQueue::new(Arc::clone(&empty)),
            move |records, _now| {
                let holds = hexcast_review::queue::restore(records);
                tracing::info!(pending = holds.len(), "review queue restored");
                *restored.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = holds;
                ReviewQueue::new(Arc::clone(&restored))
            },
        )
    };
    let queue = spawn_stage(rt, &topology::REVIEW, factory, shutdown.clone())?;
    // One producer for the target: reviewers' verdicts and the ticks.
    let writer = Writer::new(rt, "review")?;
    let service = hexcast_api::ReviewService::new(Arc::clone(&pending), writer.clone(), rt.clock.clone());
    let api = hexcast_api::start_review_service(&cfg.push, service.clone(), tokens, listener, shutdown.clone()).await?;
    let every = Duration::from_millis(cfg.review.tick_interval_ms);
    let ticker = ticker(writer, cfg.topics.partitions.get(), every, shutdown);
    let server = tokio::spawn(async move {
        let (served, ()) = tokio::join!(api.server, ticker);
        served.context("review gRPC server")?
    });
    Ok(ReviewHandle { addr: api.addr, queue, server, pending, service })
}

/// Writes a tick to every partition of `review` every `every`: the queue stage applies the
/// timeout rule when it reads one, so time reaches the stage through the log.
async fn ticker(writer: Writer, partitions: u32, every: Duration, stop: CancellationToken) {
    let mut interval = tokio::time::interval(every);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        let ticks = (0..partitions as i32).map(|p| OutRecord {
            topic: Topic::Review,
            key: b"tick".to_vec(),
            partition: Some(p),
            payload: Some(b"t".to_vec()),
            headers: vec![(header::SCHEMA.to_owned(), hexcast_review::queue::TICK_SCHEMA.as_bytes().to_vec())],
        });
        if let Err(error) = writer.write(ticks).await {
            tracing::warn!(%error, "review ticks not delivered");
        }
    }
}

/// The console's map outlines: the exterior rings of `console.outline_geojson`'s polygons,
/// named by their features, read by the binary's GeoJSON reader.
pub fn console_outlines(cfg: &hexcast_console::ConsoleConfig) -> anyhow::Result<Vec<hexcast_console::map::Outline>> {
    let Some(path) = &cfg.outline_geojson else { return Ok(Vec::new()) };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("config key `console.outline_geojson`: reading {}", path.display()))?;
    let shapes = crate::geojson::parse(&text)
        .with_context(|| format!("config key `console.outline_geojson`: {}", path.display()))?;
    Ok(shapes
        .into_iter()
        .flat_map(|shape| {
            let name = shape.name.unwrap_or_default();
            shape.polygons.into_iter().map(move |p| {
                let ring = p.exterior().coords().map(|c| (c.y, c.x)).collect();
                hexcast_console::map::Outline::new(name.clone(), ring)
            })
        })
        .collect())
}

/// Reads a policy file, with region GeoJSON files read by the binary's GeoJSON reader.
pub fn load_policy(path: &std::path::Path) -> anyhow::Result<PolicyConfig> {
    let polygons = |p: &std::path::Path| -> Result<Vec<geo::Polygon<f64>>, String> {
        let text = std::fs::read_to_string(p).map_err(|e| format!("reading {}: {e}", p.display()))?;
        let shapes = crate::geojson::parse(&text).map_err(|e| format!("{}: {e:#}", p.display()))?;
        Ok(shapes.into_iter().flat_map(|s| s.polygons).collect())
    };
    Ok(PolicyConfig::load_with(path, &polygons)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_all_lists_and_refuse_unknown_names() {
        assert_eq!(parse_targets("all").expect("all"), Target::ALL.to_vec());
        assert_eq!(parse_targets("push, ingest").expect("list"), vec![Target::Ingest, Target::Push]);
        let e = parse_targets("ingest,matcher").expect_err("unknown").to_string();
        assert!(e.contains("matcher"), "{e}");
    }

    #[test]
    fn console_needs_review_in_the_process_and_the_switch_on() {
        let mut cfg = Config::for_brokers("127.0.0.1:1");
        let reviewers = || Some(Tokens::new([("ana".to_owned(), "ana-reviewer-token-0123".to_owned())]));
        let alone = prepare(&cfg, &[Target::Console], None, None).expect_err("console alone").to_string();
        assert!(alone.contains("console needs review"), "{alone}");
        assert!(prepare(&cfg, &[Target::Review, Target::Console], None, reviewers()).is_ok());
        cfg.console.enabled = false;
        let off = prepare(&cfg, &[Target::Review, Target::Console], None, reviewers()).expect_err("off").to_string();
        assert!(off.contains("console.enabled"), "{off}");
        assert_eq!(parse_targets("review,console").expect("list"), vec![Target::Review, Target::Console]);
    }

    #[test]
    fn policy_regions_read_geojson_polygons_relative_to_the_policy_file() {
        let dir = std::env::temp_dir().join(format!("hexcast-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        // A square of about 4 km around Philadelphia's City Hall.
        let square = r#"{"type":"FeatureCollection","features":[{"type":"Feature","properties":{"name":"center"},
            "geometry":{"type":"Polygon","coordinates":[[[-75.19,39.93],[-75.14,39.93],[-75.14,39.97],[-75.19,39.97],[-75.19,39.93]]]}}]}"#;
        std::fs::write(dir.join("philadelphia.geojson"), square).expect("write geojson");
        let path = dir.join("policy.toml");
        std::fs::write(
            &path,
            "allow = [\"crime\"]\n[[region]]\nname = \"philadelphia\"\ngeojson = \"philadelphia.geojson\"\nhold = [\"crime.robbery\"]\n",
        )
        .expect("write policy");
        let policy = load_policy(&path).expect("valid policy");
        let city_hall = hexcast_core::LatLng::new(39.9526, -75.1652).expect("valid");
        let norristown = hexcast_core::LatLng::new(40.1215, -75.3399).expect("valid");
        assert_eq!(policy.rules_at(Some(city_hall)).1, Some("philadelphia"));
        assert_eq!(policy.rules_at(Some(norristown)).1, None);
        std::fs::write(&path, "allow = [\"crime\"]\n[[region]]\nname = \"x\"\ngeojson = \"missing.geojson\"\n")
            .expect("write policy");
        let e = format!("{:#}", load_policy(&path).expect_err("missing file"));
        assert!(e.contains("region[0].geojson"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
