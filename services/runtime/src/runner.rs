//! The one stage runner. For every stage it consumes a bounded batch, decodes each record,
//! calls the stage's pure `process`, dead-letters rejects, and then produces all outputs
//! and commits the input offsets in ONE Kafka transaction (or, at-least-once, produces,
//! flushes and commits). It never contains stage logic.
//!
//! Failure model: any error while producing or committing abandons the whole batch
//! (transaction aborted), drops the Kafka session and the stage's in-memory state, and
//! rebuilds both: the new consumer resumes from the committed offsets and the new producer,
//! with the same transactional id, fences any zombie. A rebalance abandons the batch the
//! same way. So a stage's state and outputs never get ahead of its committed input.
//!
//! No record blocks its partition: a dead letter too large for the topic is produced
//! truncated (original size, SHA-256, reason kept), and an input whose output the broker
//! refuses is dead-lettered on the retry instead of being retried forever. Every call that
//! waits on the broker is bounded, and after shutdown by a few seconds, so a stuck
//! transaction cannot hold SIGTERM. A monitor thread per stage reports true lag (committed
//! offsets against the last stable offset) and flags a stage whose input waits while
//! nothing commits.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hexcast_core::{
    FromRecord, InRecord, IntoRecord, OutRecord, ReasonCode, Stage, StageCtx, StageSpec, Timestamp, Topic, header,
};
use hexcast_proto::v1 as pb;
use prost::Message as _;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

pub use crate::clock::{Clock, system_clock};
use crate::config::{Delivery, KafkaConfig, RunnerConfig};
use crate::telemetry::{self, StageStats};
use crate::topics::TopicNames;

fn unix_ms() -> u64 {
    u64::try_from(crate::clock::now().0).unwrap_or(0)
}

/// What every stage runner shares.
#[derive(Clone)]
pub struct Runtime {
    /// Cluster access.
    pub kafka: KafkaConfig,
    /// Batching.
    pub runner: RunnerConfig,
    /// Topic names.
    pub names: TopicNames,
    /// Time source.
    pub clock: Clock,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("kafka", &self.kafka).field("runner", &self.runner).finish()
    }
}

impl Runtime {
    /// A runtime with the system clock.
    pub fn new(kafka: KafkaConfig, runner: RunnerConfig) -> Self {
        let names = TopicNames::new(&kafka.topic_prefix);
        Self { kafka, runner, names, clock: system_clock() }
    }

    /// A client config with the brokers and the extra client properties.
    pub fn client_config(&self) -> ClientConfig {
        crate::preflight::client_config(&self.kafka)
    }

    /// A consumer config: the client config plus the consumer-only properties.
    pub fn consumer_config(&self) -> ClientConfig {
        let mut cfg = self.client_config();
        for (k, v) in &self.kafka.consumer {
            cfg.set(k, v);
        }
        cfg
    }

    /// The producer config of the runner: latency-first defaults, then the configured client
    /// properties (which may override them), then the message limit and, exactly-once, the
    /// transactional id of `stage` on this instance.
    fn producer_config(&self, stage: &str) -> ClientConfig {
        let mut cfg = crate::preflight::client_config(&self.kafka);
        // The runner waits for every output's acknowledgement before it commits, so lingering
        // only adds latency; batches still form while a request is in flight. The configured
        // client properties win.
        for (key, value) in [("linger.ms", "0"), ("compression.type", "lz4")] {
            if !self.kafka.client.contains_key(key) {
                cfg.set(key, value);
            }
        }
        cfg.set("enable.idempotence", "true")
            .set("message.max.bytes", self.kafka.max_message_bytes.to_string())
            // librdkafka refuses a delivery timeout longer than the transaction timeout.
            .set("message.timeout.ms", self.kafka.transaction_timeout_ms.min(30_000).to_string());
        if self.kafka.delivery == Delivery::ExactlyOnce {
            cfg.set("transactional.id", transactional_id(self, stage))
                .set("transaction.timeout.ms", self.kafka.transaction_timeout_ms.to_string());
        }
        cfg
    }
}

/// Test hooks that simulate a crash at a chosen point (cargo feature `fault-injection`;
/// production builds cannot set them).
#[cfg(feature = "fault-injection")]
#[derive(Debug, Clone, Default)]
pub struct FaultInjection {
    /// Exit the runner, as a killed process would, after producing the outputs of this
    /// batch (1-based, counted from the start of the runner) but before committing.
    pub crash_before_commit_of_batch: Option<u64>,
    /// Fail this batch (1-based) after producing its outputs, as a broker error would: the
    /// runner aborts the transaction, rebuilds the stage from its factory and retries.
    pub abort_batch: Option<u64>,
}

/// The hooks as the runner reads them: always empty without the feature.
#[derive(Debug, Clone, Copy, Default)]
struct Faults {
    crash_at: Option<u64>,
    abort_at: Option<u64>,
}

/// A running stage.
#[derive(Debug)]
pub struct StageHandle {
    /// Live counters.
    pub stats: Arc<StageStats>,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
}

impl StageHandle {
    /// Waits for the stage to stop (after its shutdown token fired, or on a fatal error).
    pub async fn join(self) -> anyhow::Result<()> {
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .context("joining stage thread")?
            .map_err(|_| anyhow::anyhow!("stage thread panicked"))?
    }

    /// Whether the stage has stopped.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }
}

/// Starts a stage on its own thread (stage code is synchronous; one thread per stage, never
/// one task per message). `factory` builds the stage's state; it is called again whenever a
/// batch is abandoned, so state never survives an uncommitted batch.
pub fn spawn_stage<S, F>(
    rt: &Runtime,
    spec: &'static StageSpec,
    factory: F,
    shutdown: CancellationToken,
) -> anyhow::Result<StageHandle>
where
    F: FnMut() -> S + Send + 'static,
    S: Stage,
    S::In: FromRecord,
    S::Out: IntoRecord,
{
    spawn(rt, spec, factory, shutdown, Faults::default(), Arc::new(StageStats::default()))
}

/// [`spawn_stage`] with counters the caller made first, so that the factory can read them
/// (the push target's factory loads the subscriptions partitions of the assignment).
pub fn spawn_stage_with_stats<S, F>(
    rt: &Runtime,
    spec: &'static StageSpec,
    factory: F,
    stats: Arc<StageStats>,
    shutdown: CancellationToken,
) -> anyhow::Result<StageHandle>
where
    F: FnMut() -> S + Send + 'static,
    S: Stage,
    S::In: FromRecord,
    S::Out: IntoRecord,
{
    spawn(rt, spec, factory, shutdown, Faults::default(), stats)
}

/// [`spawn_stage`] with injected faults, for tests.
#[cfg(feature = "fault-injection")]
pub fn spawn_stage_with_faults<S, F>(
    rt: &Runtime,
    spec: &'static StageSpec,
    factory: F,
    shutdown: CancellationToken,
    faults: FaultInjection,
) -> anyhow::Result<StageHandle>
where
    F: FnMut() -> S + Send + 'static,
    S: Stage,
    S::In: FromRecord,
    S::Out: IntoRecord,
{
    let faults = Faults { crash_at: faults.crash_before_commit_of_batch, abort_at: faults.abort_batch };
    spawn(rt, spec, factory, shutdown, faults, Arc::new(StageStats::default()))
}

fn spawn<S, F>(
    rt: &Runtime,
    spec: &'static StageSpec,
    factory: F,
    shutdown: CancellationToken,
    faults: Faults,
    stats: Arc<StageStats>,
) -> anyhow::Result<StageHandle>
where
    F: FnMut() -> S + Send + 'static,
    S: Stage,
    S::In: FromRecord,
    S::Out: IntoRecord,
{
    stats.last_commit_ms.store(unix_ms(), Ordering::Relaxed);
    let rt = rt.clone();
    let thread_stats = Arc::clone(&stats);
    let thread = std::thread::Builder::new()
        .name(format!("stage-{}", spec.name))
        .spawn(move || run(rt, spec, factory, shutdown, faults, thread_stats))
        .context("spawning stage thread")?;
    Ok(StageHandle { stats, thread })
}

struct RunnerContext {
    stage: &'static str,
    rebalanced: std::sync::atomic::AtomicBool,
    stats: Arc<StageStats>,
}

impl ClientContext for RunnerContext {}

impl ConsumerContext for RunnerContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let n = self.stats.assign(tpl.elements().iter().map(|e| e.partition()));
                tracing::info!(stage = self.stage, partitions = n, "partitions assigned");
            }
            Rebalance::Revoke(tpl) => {
                let revoked: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                self.stats.revoke(&revoked);
                // Another member owns these now and reports their lag; a stale value here
                // would count it twice.
                for p in &revoked {
                    metrics::gauge!(telemetry::LAG, "stage" => self.stage, "partition" => p.to_string()).set(0.0);
                }
                tracing::info!(stage = self.stage, partitions = revoked.len(), "partitions revoked");
            }
            Rebalance::Error(e) => tracing::warn!(stage = self.stage, error = %e, "rebalance error"),
        }
        self.rebalanced.store(true, Ordering::SeqCst);
    }
}

/// An output the broker (or the producer's own size check) will never accept.
#[derive(Debug, Clone)]
struct Refusal {
    /// Index of the output in the batch's outputs.
    output: usize,
    /// Its size in bytes (key and payload).
    size: usize,
    error: String,
    too_large: bool,
}

#[derive(Default)]
struct DeliveryContext {
    failed: AtomicU64,
    refused: Mutex<Vec<Refusal>>,
}

impl DeliveryContext {
    fn take_refused(&self) -> Vec<Refusal> {
        std::mem::take(&mut *self.refused.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &DeliveryResult<'_>, output: usize) {
        if let Err((error, msg)) = result {
            self.failed.fetch_add(1, Ordering::SeqCst);
            if let Some(too_large) = refusal(error) {
                let size = msg.payload_len() + msg.key_len();
                self.refused.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(Refusal {
                    output,
                    size,
                    error: error.to_string(),
                    too_large,
                });
            }
            tracing::warn!(%error, "delivery failed");
        }
    }
}

/// Whether an error refuses one record for good (`Some(too_large)`), as opposed to a
/// transient failure worth retrying.
fn refusal(error: &KafkaError) -> Option<bool> {
    match error {
        KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::MessageBatchTooLarge,
        ) => Some(true),
        KafkaError::MessageProduction(RDKafkaErrorCode::InvalidRecord) => Some(false),
        _ => None,
    }
}

/// Why a batch did not commit.
#[derive(Debug, thiserror::Error)]
enum BatchError {
    /// Transient: abandon the batch, rebuild the session, retry from the committed offsets.
    #[error("{0:#}")]
    Retry(anyhow::Error),
    /// The broker will never take this output: dead-letter its input on the retry.
    #[error("output refused: {}", .0.error)]
    Refused(Refusal),
    /// Shutdown was requested and the broker did not let the batch finish in time.
    #[error("shutdown while the transaction could not finish")]
    Shutdown,
    /// The injected crash.
    #[error("injected crash before commit")]
    Crash,
}

impl From<KafkaError> for BatchError {
    fn from(e: KafkaError) -> Self {
        BatchError::Retry(e.into())
    }
}

/// The longest any transactional call may take before the batch is abandoned.
const TXN_TIMEOUT: Duration = Duration::from_secs(60);
/// Transactional calls run in slices of this length, so that shutdown is noticed.
const TXN_SLICE: Duration = Duration::from_millis(500);
/// How long a batch in flight may still take once shutdown is requested: SIGTERM must end
/// the process within 10 s even when the broker does not answer.
const SHUTDOWN_BUDGET: Duration = Duration::from_secs(5);
/// Pause between two polls for delivery reports while outputs are in flight.
const DRAIN_PAUSE: Duration = Duration::from_micros(250);
/// How long a stage must be idle (no input, nothing held) before it commits the positions
/// its consumer moved to past transaction markers and aborted records: without it the
/// committed offset of an idle partition stays one marker short of the end, and its lag
/// (what `kafka-consumer-groups` and the lag gauge show) never reaches 0.
const IDLE_COMMIT_AFTER: Duration = Duration::from_secs(1);
/// How long partitions may be held without a fetch position, while input waits, before
/// the runner looks for a hanging transactional offset commit ([`crate::repair`]).
const REPAIR_AFTER: Duration = Duration::from_secs(20);
/// Least time between two such looks.
const REPAIR_EVERY: Duration = Duration::from_secs(60);
/// Room left in a record for the framing librdkafka counts in `message.max.bytes`.
const RECORD_OVERHEAD_BYTES: usize = 4096;

/// Shutdown as the stage thread sees it: the token, and when the thread first noticed it.
struct Stop {
    token: CancellationToken,
    seen: Cell<Option<Instant>>,
}

impl Stop {
    fn new(token: CancellationToken) -> Self {
        Self { token, seen: Cell::new(None) }
    }

    fn requested(&self) -> bool {
        if !self.token.is_cancelled() {
            return false;
        }
        if self.seen.get().is_none() {
            self.seen.set(Some(Instant::now()));
        }
        true
    }

    /// Shutdown was requested more than [`SHUTDOWN_BUDGET`] ago.
    fn overdue(&self) -> bool {
        self.requested() && self.seen.get().is_some_and(|t| t.elapsed() >= SHUTDOWN_BUDGET)
    }
}

/// Calls a resumable transactional operation in [`TXN_SLICE`]s until it succeeds, fails for
/// good, takes longer than `limit`, or shutdown is overdue. librdkafka documents these calls
/// (init, send offsets, commit, abort) as resumable after a retriable timeout.
fn bounded(
    stop: &Stop,
    what: &'static str,
    limit: Duration,
    mut op: impl FnMut(Duration) -> KafkaResult<()>,
) -> Result<(), BatchError> {
    let started = Instant::now();
    loop {
        let error = match op(TXN_SLICE) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let retriable = match &error {
            KafkaError::Transaction(e) => e.is_retriable(),
            KafkaError::Flush(code) => *code == RDKafkaErrorCode::OperationTimedOut,
            _ => false,
        };
        if !retriable {
            return Err(BatchError::Retry(anyhow::Error::new(error).context(what)));
        }
        if stop.overdue() {
            return Err(BatchError::Shutdown);
        }
        if started.elapsed() >= limit {
            return Err(BatchError::Retry(
                anyhow::Error::new(error).context(format!("{what}: no answer in {limit:?}")),
            ));
        }
    }
}

struct Session {
    consumer: BaseConsumer<RunnerContext>,
    producer: BaseProducer<DeliveryContext>,
    exactly_once: bool,
    /// The offsets this session committed last, per input partition.
    committed: RefCell<BTreeMap<(String, i32), i64>>,
    /// When this session last committed (or started).
    last_commit: Cell<Instant>,
    /// Since when held partitions have had no fetch position while input waits.
    unpositioned_since: Cell<Option<Instant>>,
    /// When the runner last looked for a hanging offset commit.
    repair_looked: Cell<Option<Instant>>,
}

impl Drop for Session {
    /// Leaves the group before the consumer is closed. A rebalance still pending when the
    /// consumer closes (a stage stopped right after it joined) makes rust-rdkafka's close
    /// call `assign` from inside librdkafka's close, which never returns; serving the
    /// rebalance events here first, in bounded polls, leaves close nothing to do.
    fn drop(&mut self) {
        self.consumer.unsubscribe();
        // At least a few polls (a join response may still be on its way), at most 2 s.
        let (started, deadline) = (Instant::now(), Instant::now() + Duration::from_secs(2));
        while Instant::now() < deadline {
            let _ = self.consumer.poll(Duration::from_millis(50));
            let unassigned = self.consumer.assignment().map(|a| a.count() == 0).unwrap_or(true);
            if unassigned && started.elapsed() >= Duration::from_millis(300) {
                break;
            }
        }
    }
}

/// The consumer group of a stage.
pub fn group_id(rt: &Runtime, stage: &str) -> String {
    format!("{}-{stage}", rt.kafka.group_prefix)
}

/// The transactional id of a stage's producer on this instance: a restarted instance uses
/// the same one, which fences its predecessor and aborts its open transaction.
pub fn transactional_id(rt: &Runtime, stage: &str) -> String {
    format!("{}-{}", group_id(rt, stage), rt.kafka.instance())
}

/// The static group member id of a stage's consumer on this instance (`group.instance.id`):
/// a restarted process with the same `kafka.instance_id` gets its partitions back at once,
/// without waiting for the dead member's session to time out. The flip side: a member that
/// leaves for good keeps its partitions until `session.timeout.ms` (librdkafka's default
/// 45 s; `[kafka.consumer]` may change it) has passed. Used with exactly-once delivery
/// only: at-least-once serves the embedded broker, whose classic groups do not implement
/// static membership (a rejoining member would wait out its own old session).
pub fn group_instance_id(rt: &Runtime, stage: &str) -> String {
    format!("{}-{stage}", rt.kafka.instance())
}

impl Session {
    fn open(
        rt: &Runtime,
        stage: &'static str,
        input: Topic,
        stats: &Arc<StageStats>,
        stop: &Stop,
    ) -> Result<Self, anyhow::Error> {
        let group = group_id(rt, stage);
        let exactly_once = rt.kafka.delivery == Delivery::ExactlyOnce;
        let mut ccfg = rt.consumer_config();
        if exactly_once {
            ccfg.set("group.instance.id", group_instance_id(rt, stage));
        }
        let consumer: BaseConsumer<RunnerContext> = ccfg
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .create_with_context(RunnerContext {
                stage,
                rebalanced: std::sync::atomic::AtomicBool::new(false),
                stats: Arc::clone(stats),
            })
            .context("creating consumer")?;
        consumer.subscribe(&[rt.names.name(input)]).context("subscribing")?;

        let producer: BaseProducer<DeliveryContext> =
            rt.producer_config(stage).create_with_context(DeliveryContext::default()).context("creating producer")?;
        if exactly_once {
            match bounded(stop, "initializing transactions", TXN_TIMEOUT, |t| producer.init_transactions(t)) {
                Ok(()) => {}
                Err(BatchError::Shutdown) => anyhow::bail!(ShutdownDuringOpen),
                Err(e) => return Err(anyhow::Error::new(e)),
            }
        }
        Ok(Self {
            consumer,
            producer,
            exactly_once,
            committed: RefCell::new(BTreeMap::new()),
            last_commit: Cell::new(Instant::now()),
            unpositioned_since: Cell::new(None),
            repair_looked: Cell::new(None),
        })
    }

    /// Remembers what a successful commit committed.
    fn committed(&self, offsets: &BTreeMap<(String, i32), i64>) {
        self.committed.borrow_mut().extend(offsets.iter().map(|(k, v)| (k.clone(), *v)));
        self.last_commit.set(Instant::now());
    }

    /// Forgets what this session committed (a rebalance: partitions may come back with
    /// another member's commits).
    fn forget_commits(&self) {
        self.committed.borrow_mut().clear();
        self.unpositioned_since.set(None);
    }

    /// Called when a poll brought nothing and no batch is held. Commits positions the
    /// consumer moved to without delivering a record (transaction markers, aborted
    /// records), once the stage has been idle for [`IDLE_COMMIT_AFTER`]; and when held
    /// partitions have had no fetch position for [`REPAIR_AFTER`] while input waits, looks
    /// for (and closes) a hanging transactional offset commit of this stage.
    fn idle(&self, rt: &Runtime, stage: &'static str, stats: &StageStats, stop: &Stop) {
        let Ok(assignment) = self.consumer.assignment() else { return };
        if assignment.count() == 0 {
            self.unpositioned_since.set(None);
            return;
        }
        let Ok(positions) = self.consumer.position() else { return };
        let mut known = BTreeMap::new();
        let mut unpositioned = BTreeSet::new();
        for e in positions.elements() {
            match e.offset() {
                Offset::Offset(o) => {
                    known.insert((e.topic().to_owned(), e.partition()), o);
                }
                _ => {
                    unpositioned.insert(e.partition());
                }
            }
        }
        if unpositioned.is_empty() || stats.lag_records.load(Ordering::Relaxed) == 0 {
            self.unpositioned_since.set(None);
        } else {
            let since = self.unpositioned_since.get().unwrap_or_else(Instant::now);
            self.unpositioned_since.set(Some(since));
            let looked_recently = self.repair_looked.get().is_some_and(|t| t.elapsed() < REPAIR_EVERY);
            if self.exactly_once && since.elapsed() >= REPAIR_AFTER && !looked_recently {
                self.repair_looked.set(Some(Instant::now()));
                self.repair(rt, stage, &unpositioned, stop);
            }
        }
        if self.last_commit.get().elapsed() < IDLE_COMMIT_AFTER {
            return;
        }
        let ahead: BTreeMap<(String, i32), i64> = {
            let committed = self.committed.borrow();
            known.into_iter().filter(|(k, o)| committed.get(k) != Some(o)).collect()
        };
        if ahead.is_empty() {
            return;
        }
        match self.commit(&rt.names, &[], &ahead, stop, false, false) {
            Ok(()) => {
                self.committed(&ahead);
                stats.last_commit_ms.store(unix_ms(), Ordering::Relaxed);
                tracing::debug!(stage, partitions = ahead.len(), "idle: committed positions past markers");
            }
            Err(e) => {
                // Nothing is lost: the next batch commits these positions anyway.
                tracing::debug!(stage, error = %e, "idle: committing positions failed");
                self.abandon(stop);
                self.last_commit.set(Instant::now());
            }
        }
    }

    /// Looks for a hanging transactional offset commit of this stage on the group's
    /// offsets partition and, if there is one, commits in a new transaction what the lost
    /// marker would have left (see [`crate::repair`]).
    fn repair(&self, rt: &Runtime, stage: &'static str, held: &BTreeSet<i32>, stop: &Stop) {
        let group = group_id(rt, stage);
        let txn_id = transactional_id(rt, stage);
        let topic = self.consumer.assignment().ok().and_then(|a| a.elements().first().map(|e| e.topic().to_owned()));
        let Some(topic) = topic else { return };
        tracing::debug!(stage, partitions = ?held, "held partitions have no fetch position: looking for a hanging offset commit");
        let finding =
            crate::repair::investigate(&rt.client_config(), &group, &txn_id, &topic, held, Duration::from_secs(10));
        let (outcome, offsets) = match finding {
            Ok(crate::repair::Finding::Repair { outcome, offsets }) => (outcome, offsets),
            Ok(crate::repair::Finding::NoOpenTransaction) => return,
            Ok(other) => {
                tracing::warn!(
                    stage,
                    finding = ?other,
                    "input waits behind an open transaction on the group's offsets partition that this stage cannot close \
                     (see docs/runbook-hanging-transaction.md)"
                );
                return;
            }
            Err(error) => {
                tracing::warn!(stage, %error, "looking for a hanging offset commit failed");
                return;
            }
        };
        let tpl_offsets: BTreeMap<(String, i32), i64> =
            offsets.iter().map(|(p, o)| ((topic.clone(), *p), *o)).collect();
        match self.commit(&rt.names, &[], &tpl_offsets, stop, false, false) {
            Ok(()) => {
                metrics::counter!(telemetry::REPAIRED, "stage" => stage).increment(1);
                tracing::warn!(
                    stage,
                    ?outcome,
                    offsets = ?offsets,
                    "closed a hanging transactional offset commit left by an unclean broker stop"
                );
            }
            Err(e) => {
                tracing::error!(stage, error = %e, "closing a hanging offset commit failed; will look again");
                self.abandon(stop);
            }
        }
    }

    /// Takes what the consumer has already fetched (up to `max`), waiting up to 100 ms for a
    /// first record and then `linger` for more. Returns `None` when a rebalance happened:
    /// the caller abandons everything it holds.
    fn collect(&self, cfg: &RunnerConfig) -> anyhow::Result<Option<Vec<rdkafka::message::OwnedMessage>>> {
        let mut batch = Vec::new();
        let mut first_at: Option<Instant> = None;
        loop {
            let timeout = match first_at {
                None => Duration::from_millis(100),
                Some(t) => cfg.linger().saturating_sub(t.elapsed()),
            };
            let polled = self.consumer.poll(timeout);
            if self.consumer.context().rebalanced.swap(false, Ordering::SeqCst) {
                return Ok(None);
            }
            match polled {
                None => return Ok(Some(batch)),
                Some(Ok(m)) => {
                    batch.push(m.detach());
                    first_at.get_or_insert_with(Instant::now);
                    if batch.len() >= cfg.max_batch.get() {
                        return Ok(Some(batch));
                    }
                }
                Some(Err(e)) => {
                    if matches!(e, KafkaError::MessageConsumptionFatal(_))
                        || matches!(e, KafkaError::MessageConsumption(RDKafkaErrorCode::Fatal))
                    {
                        return Err(e).context("the consumer failed for good");
                    }
                    tracing::warn!(error = %e, "consumer error");
                    return Ok(Some(batch));
                }
            }
        }
    }

    fn send(&self, names: &TopicNames, rec: &OutRecord, index: usize) -> Result<(), KafkaError> {
        let mut headers = OwnedHeaders::new_with_capacity(rec.headers.len());
        for (k, v) in &rec.headers {
            headers = headers.insert(Header { key: k, value: Some(v.as_slice()) });
        }
        let mut record: BaseRecord<'_, [u8], [u8], usize> =
            BaseRecord::with_opaque_to(names.name(rec.topic), index).key(rec.key.as_slice()).headers(headers);
        if let Some(p) = &rec.payload {
            record = record.payload(p.as_slice());
        }
        if let Some(p) = rec.partition {
            record = record.partition(p);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    self.producer.poll(Duration::ZERO);
                    std::thread::sleep(DRAIN_PAUSE);
                    record = back;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Enqueues every output; an output the producer's own size check refuses ends the
    /// batch with [`BatchError::Refused`].
    fn send_all(&self, names: &TopicNames, outputs: &[OutRecord]) -> Result<(), BatchError> {
        for (i, rec) in outputs.iter().enumerate() {
            if let Err(e) = self.send(names, rec, i) {
                if let Some(too_large) = refusal(&e) {
                    let size = rec.key.len() + rec.payload.as_ref().map_or(0, Vec::len);
                    return Err(BatchError::Refused(Refusal { output: i, size, error: e.to_string(), too_large }));
                }
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Serves delivery reports until nothing is in flight. rust-rdkafka's own flush (called
    /// by `commit_transaction`) polls in 100 ms slices and so made every transaction last at
    /// least 100 ms; after this it returns at once. rust-rdkafka's timed poll spins for the
    /// last sub-millisecond of its deadline, so this polls without waiting and sleeps briefly
    /// between polls instead.
    fn drain(&self, stop: &Stop) -> Result<(), BatchError> {
        // One non-blocking flush tells librdkafka's broker threads to send what is queued now.
        let _ = self.producer.flush(Duration::ZERO);
        let started = Instant::now();
        loop {
            self.producer.poll(Duration::ZERO);
            if self.producer.in_flight_count() == 0 {
                return Ok(());
            }
            if stop.overdue() {
                return Err(BatchError::Shutdown);
            }
            if started.elapsed() >= TXN_TIMEOUT {
                return Err(BatchError::Retry(anyhow::anyhow!("outputs not acknowledged within {TXN_TIMEOUT:?}")));
            }
            std::thread::sleep(DRAIN_PAUSE);
        }
    }

    /// The largest refused output, if the broker refused any: only it is dead-lettered, so
    /// records refused merely for sharing its request go through on the retry.
    fn refused(&self) -> Option<BatchError> {
        self.producer.context().take_refused().into_iter().max_by_key(|r| r.size).map(BatchError::Refused)
    }

    fn commit(
        &self,
        names: &TopicNames,
        outputs: &[OutRecord],
        offsets: &BTreeMap<(String, i32), i64>,
        stop: &Stop,
        crash: bool,
        fail: bool,
    ) -> Result<(), BatchError> {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), next) in offsets {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
        }
        self.producer.context().take_refused();
        if self.exactly_once {
            self.producer.begin_transaction()?;
            self.send_all(names, outputs)?;
            if crash {
                self.drain(stop)?;
                return Err(BatchError::Crash);
            }
            if fail {
                self.drain(stop)?;
                return Err(BatchError::Retry(anyhow::anyhow!("injected failure before commit")));
            }
            let group = self
                .consumer
                .group_metadata()
                .ok_or_else(|| BatchError::Retry(anyhow::anyhow!("no consumer group metadata")))?;
            // Offsets first: their round trips to the coordinators overlap the outputs'
            // acknowledgements.
            let sent = bounded(stop, "sending offsets to the transaction", TXN_TIMEOUT, |t| {
                self.producer.send_offsets_to_transaction(&tpl, &group, t)
            });
            let drained = self.drain(stop);
            if let Some(refused) = self.refused() {
                return Err(refused);
            }
            sent?;
            drained?;
            bounded(stop, "committing the transaction", TXN_TIMEOUT, |t| self.producer.commit_transaction(t))?;
        } else {
            let failed_before = self.producer.context().failed.load(Ordering::SeqCst);
            self.send_all(names, outputs)?;
            self.drain(stop)?;
            if crash {
                return Err(BatchError::Crash);
            }
            if fail {
                return Err(BatchError::Retry(anyhow::anyhow!("injected failure before commit")));
            }
            if let Some(refused) = self.refused() {
                return Err(refused);
            }
            if self.producer.context().failed.load(Ordering::SeqCst) != failed_before {
                return Err(BatchError::Retry(anyhow::anyhow!("some outputs were not delivered")));
            }
            self.consumer.commit(&tpl, CommitMode::Sync)?;
        }
        Ok(())
    }

    /// Aborts the open transaction, bounded: at shutdown the next start of this instance
    /// aborts it anyway (same transactional id), so waiting long gains nothing.
    fn abandon(&self, stop: &Stop) {
        if !self.exactly_once {
            return;
        }
        let limit = if stop.requested() { Duration::from_secs(1) } else { TXN_TIMEOUT };
        if let Err(e) = bounded(stop, "aborting the transaction", limit, |t| self.producer.abort_transaction(t)) {
            tracing::debug!(error = %e, "abort after failed batch");
        }
    }
}

/// Opening a session was cut short by shutdown.
#[derive(Debug, thiserror::Error)]
#[error("shutdown while opening the Kafka session")]
struct ShutdownDuringOpen;

fn to_in_record(m: &rdkafka::message::OwnedMessage) -> InRecord {
    let headers = m
        .headers()
        .map(|h| h.iter().map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec())).collect())
        .unwrap_or_default();
    InRecord { key: m.key().map(<[u8]>::to_vec), payload: m.payload().map(<[u8]>::to_vec), headers }
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().to_vec()
}

/// Where a rejected record came from.
struct Origin<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
}

/// A dead letter for `rec`, no larger than `max_bytes` on the wire: when the whole record
/// does not fit, the payload is cut to what fits (and an oversized key or header set is cut
/// too), with `truncated`, the original size and the SHA-256 of the whole payload kept, so
/// the record is still traceable and never blocks its partition.
fn dead_letter(
    stage: &'static str,
    reason: &'static str,
    detail: String,
    from: &Origin<'_>,
    rec: InRecord,
    now: Timestamp,
    max_bytes: usize,
) -> OutRecord {
    let trace = rec.header(header::TRACE_ID).map(<[u8]>::to_vec);
    let payload = rec.payload.unwrap_or_default();
    let mut dl = pb::DeadLetter {
        stage: stage.to_owned(),
        reason: reason.to_owned(),
        detail,
        topic: from.topic.to_owned(),
        partition: from.partition,
        offset: from.offset,
        key: rec.key.clone().unwrap_or_default(),
        payload: Vec::new(),
        headers: rec.headers.into_iter().collect(),
        rejected_at_ms: now.0,
        original_size: payload.len() as u64,
        payload_sha256: sha256(&payload),
        truncated: false,
    };
    let mut key = rec.key.unwrap_or_default();
    let mut headers = vec![
        (header::SCHEMA.to_owned(), b"hexcast.v1.DeadLetter".to_vec()),
        (header::DL_STAGE.to_owned(), stage.as_bytes().to_vec()),
        (header::DL_REASON.to_owned(), reason.as_bytes().to_vec()),
    ];
    if let Some(t) = trace {
        headers.push((header::TRACE_ID.to_owned(), t));
    }
    let header_bytes: usize = headers.iter().map(|(k, v)| k.len() + v.len() + 16).sum();
    let budget = max_bytes.saturating_sub(RECORD_OVERHEAD_BYTES + header_bytes);
    // Everything but the payload's bytes: the envelope, the record key, and room for the
    // payload field's tag and length.
    let envelope = |dl: &pb::DeadLetter, key: &[u8]| dl.encoded_len() + key.len() + 16;
    if envelope(&dl, &key) + payload.len() > budget {
        dl.truncated = true;
        const KEEP_KEY: usize = 1024;
        if envelope(&dl, &key) > budget / 2 {
            key.truncate(KEEP_KEY);
            dl.key.truncate(KEEP_KEY);
            dl.detail.truncate(KEEP_KEY);
            if envelope(&dl, &key) > budget / 2 {
                dl.headers.clear();
            }
        }
        let room = budget.saturating_sub(envelope(&dl, &key));
        dl.payload = payload;
        dl.payload.truncate(room);
    } else {
        dl.payload = payload;
    }
    OutRecord { topic: Topic::DeadLetter, key, partition: None, payload: Some(dl.encode_to_vec()), headers }
}

/// Copies the input's trace headers onto an output that lacks them, and the origin time
/// (the raw record's timestamp, set by the first stage) for end-to-end latency.
fn propagate(input: &InRecord, origin_ms: Option<i64>, out: &mut OutRecord) {
    for name in [header::TRACE_ID, header::SOURCE] {
        if out.headers.iter().all(|(k, _)| k != name)
            && let Some(v) = input.header(name)
        {
            out.headers.push((name.to_owned(), v.to_vec()));
        }
    }
    if let Some(ms) = origin_ms
        && out.headers.iter().all(|(k, _)| k != telemetry::ORIGIN_HEADER)
    {
        out.headers.push((telemetry::ORIGIN_HEADER.to_owned(), ms.to_string().into_bytes()));
    }
}

/// The origin time of an input: its origin header, else its own timestamp.
fn origin_ms(input: &InRecord, m: &rdkafka::message::OwnedMessage) -> Option<i64> {
    input.header_str(telemetry::ORIGIN_HEADER).and_then(|s| s.parse().ok()).or_else(|| m.timestamp().to_millis())
}

/// Inputs whose outputs the broker refused, by (topic, partition, offset): the next try
/// dead-letters them instead of processing them. The value counts refusals: a dead letter
/// refused again is produced with no payload at all.
type Poisoned = HashMap<(String, i32, i64), (u8, Refusal)>;

struct Processed {
    outputs: Vec<OutRecord>,
    /// For each output, the index of its input in the batch.
    origin: Vec<usize>,
    offsets: BTreeMap<(String, i32), i64>,
    rejected: Vec<&'static str>,
    filtered: u64,
    /// Per input: (record timestamp, origin time), Unix ms.
    times: Vec<(Option<i64>, Option<i64>)>,
}

fn process_batch<S>(
    stage: &mut S,
    spec: &StageSpec,
    batch: &[rdkafka::message::OwnedMessage],
    now: Timestamp,
    poisoned: &Poisoned,
    max_bytes: usize,
) -> Processed
where
    S: Stage,
    S::In: FromRecord,
    S::Out: IntoRecord,
{
    let name = stage.name();
    let mut p = Processed {
        outputs: Vec::new(),
        origin: Vec::new(),
        offsets: BTreeMap::new(),
        rejected: Vec::new(),
        filtered: 0,
        times: Vec::with_capacity(batch.len()),
    };
    let mut outs = Vec::new();
    let mut kept: Vec<OutRecord> = Vec::new();
    for (index, m) in batch.iter().enumerate() {
        p.offsets.insert((m.topic().to_owned(), m.partition()), m.offset() + 1);
        let mut rec = to_in_record(m);
        let origin = origin_ms(&rec, m);
        p.times.push((m.timestamp().to_millis(), origin));
        let from = Origin { topic: m.topic(), partition: m.partition(), offset: m.offset() };
        if let Some((times, refusal)) = poisoned.get(&(m.topic().to_owned(), m.partition(), m.offset())) {
            let reason = if refusal.too_large { "output_too_large" } else { "output_refused" };
            let detail =
                format!("the broker refused an output of {} bytes of this record: {}", refusal.size, refusal.error);
            tracing::error!(stage = name, reason, %detail, partition = m.partition(), offset = m.offset(), "dead-lettered record");
            if *times > 1 {
                rec.payload = None;
                rec.headers.clear();
            }
            p.rejected.push(reason);
            p.outputs.push(dead_letter(name, reason, detail, &from, rec, now, max_bytes));
            p.origin.push(index);
            continue;
        }
        let ctx = StageCtx {
            now,
            partition: m.partition(),
            offset: m.offset(),
            record_time: m.timestamp().to_millis().map(Timestamp),
        };
        let result = match S::In::from_record(&rec) {
            Err(e) => Err((e.reason, e.detail)),
            Ok(input) => {
                outs.clear();
                match std::panic::catch_unwind(AssertUnwindSafe(|| stage.process(input, &ctx, &mut outs))) {
                    Ok(Ok(())) => {
                        // A stage writes only what the topology declares for it; anything
                        // else is a bug in the stage, and the input goes to the dead letters.
                        let records: Vec<OutRecord> = outs.drain(..).map(IntoRecord::into_record).collect();
                        match records.iter().map(|r| r.topic).find(|t| !spec.writes(*t)) {
                            Some(topic) => {
                                tracing::error!(stage = name, %topic, "stage wrote a topic it does not declare");
                                Err(("undeclared_output", format!("stage {name} wrote {topic}")))
                            }
                            None => {
                                kept = records;
                                Ok(())
                            }
                        }
                    }
                    Ok(Err(reject)) => Err((reject.reason_code(), reject.to_string())),
                    Err(_) => Err(("stage_panic", "the stage panicked on this record".to_owned())),
                }
            }
        };
        match result {
            Ok(()) => {
                if kept.is_empty() {
                    p.filtered += 1;
                }
                for mut r in kept.drain(..) {
                    propagate(&rec, origin, &mut r);
                    p.outputs.push(r);
                    p.origin.push(index);
                }
            }
            Err((reason, detail)) => {
                tracing::warn!(stage = name, reason, %detail, partition = m.partition(), offset = m.offset(), "dead-lettered record");
                p.rejected.push(reason);
                p.outputs.push(dead_letter(name, reason, detail, &from, rec, now, max_bytes));
                p.origin.push(index);
            }
        }
    }
    p
}

fn run<S, F>(
    rt: Runtime,
    spec: &'static StageSpec,
    mut factory: F,
    shutdown: CancellationToken,
    faults: Faults,
    stats: Arc<StageStats>,
) -> anyhow::Result<()>
where
    F: FnMut() -> S,
    S: Stage,
    S::In: FromRecord,
    S::Out: IntoRecord,
{
    let stop = Stop::new(shutdown);
    let input = spec.input;
    let mut stage = factory();
    let name = stage.name();
    anyhow::ensure!(name == spec.name, "stage {name} started under the topology row of {}", spec.name);
    let monitor_stop = stop.token.child_token();
    let _monitor_guard = monitor_stop.clone().drop_guard();
    spawn_monitor(&rt, name, input, &stats, monitor_stop);
    // Every series of the stage exists from its start (at 0): an alert rule's rate() over
    // a counter that appears only with its first event would be undefined until then.
    for counter in
        [telemetry::RECEIVED, telemetry::FILTERED, telemetry::BATCHES, telemetry::ABORTED, telemetry::REPAIRED]
    {
        metrics::counter!(counter, "stage" => name).increment(0);
    }
    metrics::gauge!(telemetry::STALLED, "stage" => name).set(0.0);
    let max_bytes = rt.kafka.max_message_bytes as usize;
    let mut poisoned = Poisoned::new();
    let mut batch_no: u64 = 0;
    'session: loop {
        if stop.requested() {
            return Ok(());
        }
        let session = match Session::open(&rt, name, input, &stats, &stop) {
            Ok(s) => s,
            Err(e) if e.is::<ShutdownDuringOpen>() => {
                tracing::warn!(stage = name, "stage stopping: shutdown while initializing transactions");
                return Ok(());
            }
            // A client the configuration cannot create will never work: fail the process.
            Err(e)
                if e.chain().any(|c| matches!(c.downcast_ref::<KafkaError>(), Some(KafkaError::ClientCreation(_)))) =>
            {
                return Err(e.context(format!("stage {name}: invalid Kafka client configuration")));
            }
            Err(e) => {
                tracing::warn!(stage = name, error = %format!("{e:#}"), "opening Kafka session failed, retrying");
                std::thread::sleep(Duration::from_millis(rt.runner.retry_backoff_ms));
                continue 'session;
            }
        };
        tracing::info!(stage = name, topic = rt.names.name(input), "stage started");
        loop {
            if stop.requested() {
                tracing::info!(stage = name, "stage stopping: no batch in flight");
                return Ok(());
            }
            let batch = match session.collect(&rt.runner) {
                Ok(Some(batch)) => batch,
                Ok(None) => {
                    // Rebalanced: whatever was read is abandoned and state rebuilt.
                    session.forget_commits();
                    stage = factory();
                    continue;
                }
                Err(e) => {
                    // A fatal consumer error never clears by itself: the consumer would poll
                    // nothing forever. Seen after a broker SIGKILL: the restarted coordinator
                    // fenced this static member (FencedInstanceId). A new consumer with the
                    // same instance id rejoins and takes the member's place.
                    tracing::error!(
                        stage = name,
                        error = %format!("{e:#}"),
                        "rebuilding the Kafka session (if this repeats, another process may use the same \
                         kafka.instance_id)"
                    );
                    drop(session);
                    stage = factory();
                    std::thread::sleep(Duration::from_millis(rt.runner.retry_backoff_ms));
                    continue 'session;
                }
            };
            if batch.is_empty() {
                session.idle(&rt, name, &stats, &stop);
                continue;
            }
            batch_no += 1;
            let started = Instant::now();
            let now = (rt.clock)();
            let processed = process_batch(&mut stage, spec, &batch, now, &poisoned, max_bytes);
            let crash = faults.crash_at == Some(batch_no);
            let fail = faults.abort_at == Some(batch_no);
            match session.commit(&rt.names, &processed.outputs, &processed.offsets, &stop, crash, fail) {
                Ok(()) => {
                    session.committed(&processed.offsets);
                    record_batch(name, &stats, &batch, &processed, started);
                    if !poisoned.is_empty() {
                        for m in &batch {
                            poisoned.remove(&(m.topic().to_owned(), m.partition(), m.offset()));
                        }
                    }
                }
                Err(BatchError::Crash) => {
                    return Err(anyhow::anyhow!("injected crash before commit of batch {batch_no}"));
                }
                Err(BatchError::Shutdown) => {
                    tracing::warn!(
                        stage = name,
                        "stage stopping: the broker did not let the batch in flight finish within the shutdown budget; \
                         it is abandoned and the next start of this instance aborts its transaction"
                    );
                    session.abandon(&stop);
                    return Ok(());
                }
                Err(BatchError::Refused(refusal)) => {
                    let m = &batch[processed.origin[refusal.output]];
                    tracing::error!(
                        stage = name,
                        partition = m.partition(),
                        offset = m.offset(),
                        size = refusal.size,
                        error = %refusal.error,
                        "the broker refused an output; its input will be dead-lettered"
                    );
                    let entry = poisoned
                        .entry((m.topic().to_owned(), m.partition(), m.offset()))
                        .or_insert_with(|| (0, refusal.clone()));
                    entry.0 = entry.0.saturating_add(1);
                    abandon(name, &stats, &session, &stop);
                    drop(session);
                    stage = factory();
                    continue 'session;
                }
                Err(BatchError::Retry(e)) => {
                    tracing::warn!(stage = name, error = %format!("{e:#}"), "batch abandoned, rebuilding session");
                    abandon(name, &stats, &session, &stop);
                    drop(session);
                    stage = factory();
                    std::thread::sleep(Duration::from_millis(rt.runner.retry_backoff_ms));
                    continue 'session;
                }
            }
        }
    }
}

fn abandon(name: &'static str, stats: &StageStats, session: &Session, stop: &Stop) {
    session.abandon(stop);
    stats.aborted.fetch_add(1, Ordering::Relaxed);
    metrics::counter!(telemetry::ABORTED, "stage" => name).increment(1);
}

fn record_batch(
    name: &'static str,
    stats: &StageStats,
    batch: &[rdkafka::message::OwnedMessage],
    p: &Processed,
    started: Instant,
) {
    let committed_ms = unix_ms();
    stats.last_commit_ms.store(committed_ms, Ordering::Relaxed);
    stats.received.fetch_add(batch.len() as u64, Ordering::Relaxed);
    stats.rejected.fetch_add(p.rejected.len() as u64, Ordering::Relaxed);
    stats.batches.fetch_add(1, Ordering::Relaxed);
    metrics::counter!(telemetry::RECEIVED, "stage" => name).increment(batch.len() as u64);
    metrics::counter!(telemetry::FILTERED, "stage" => name).increment(p.filtered);
    metrics::counter!(telemetry::BATCHES, "stage" => name).increment(1);
    for reason in &p.rejected {
        metrics::counter!(telemetry::REJECTED, "stage" => name, "reason" => *reason).increment(1);
    }
    let mut per_topic = [0u64; Topic::ALL.len()];
    for o in &p.outputs {
        per_topic[o.topic.index()] += 1;
    }
    for t in Topic::ALL {
        let n = per_topic[t.index()];
        if n > 0 {
            stats.add_emitted(t, n);
            metrics::counter!(telemetry::EMITTED, "stage" => name, "topic" => t.base_name()).increment(n);
        }
    }
    metrics::histogram!(telemetry::BATCH_SECONDS, "stage" => name).record(started.elapsed().as_secs_f64());
    let hop = metrics::histogram!(telemetry::RECORD_LATENCY_SECONDS, "stage" => name);
    let e2e = metrics::histogram!(telemetry::END_TO_END_SECONDS, "stage" => name);
    let secs_since = |ms: i64| (committed_ms as i64 - ms).max(0) as f64 / 1000.0;
    for (record_ms, origin_ms) in &p.times {
        if let Some(ms) = record_ms {
            hop.record(secs_since(*ms));
        }
        if let Some(ms) = origin_ms {
            e2e.record(secs_since(*ms));
        }
    }
}

/// Starts the stage's lag and stall monitor on its own thread; it stops with `stop`.
fn spawn_monitor(rt: &Runtime, stage: &'static str, input: Topic, stats: &Arc<StageStats>, stop: CancellationToken) {
    let rt = rt.clone();
    let stats = Arc::clone(stats);
    let spawned = std::thread::Builder::new()
        .name(format!("lag-{}", input.base_name()))
        .spawn(move || monitor(&rt, stage, input, &stats, &stop));
    if let Err(error) = spawned {
        tracing::warn!(stage, %error, "cannot start the lag monitor");
    }
}

/// Two clients outside the group: one reads the group's committed offsets (read_uncommitted,
/// so the broker answers with the last commit instead of waiting for open transactions),
/// one the partitions' last stable offsets (read_committed: ListOffsets then answers with
/// the LSO, the end a read_committed stage can reach).
struct LagClients {
    offsets: BaseConsumer,
    ends: BaseConsumer,
    topic: String,
}

impl LagClients {
    fn new(rt: &Runtime, stage: &str, input: Topic) -> KafkaResult<Self> {
        let client = |isolation: &str| -> KafkaResult<BaseConsumer> {
            rt.consumer_config()
                .set("group.id", group_id(rt, stage))
                .set("enable.auto.commit", "false")
                .set("isolation.level", isolation)
                .create()
        };
        Ok(Self {
            offsets: client("read_uncommitted")?,
            ends: client("read_committed")?,
            topic: rt.names.name(input).to_owned(),
        })
    }

    /// Lag of each partition: last stable offset minus the committed offset (or the log
    /// start when nothing is committed yet).
    fn measure(&self, partitions: &BTreeSet<i32>) -> KafkaResult<BTreeMap<i32, u64>> {
        let timeout = Duration::from_secs(2);
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition(&self.topic, *p);
        }
        let committed = self.offsets.committed_offsets(tpl, timeout)?;
        let mut lag = BTreeMap::new();
        for p in partitions {
            let (low, stable) = self.ends.fetch_watermarks(&self.topic, *p, timeout)?;
            let done = committed
                .find_partition(&self.topic, *p)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                })
                .unwrap_or(low)
                .max(low);
            lag.insert(*p, (stable - done).max(0) as u64);
        }
        Ok(lag)
    }
}

/// What the monitor concludes from one measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StallCheck {
    /// Unix ms since which input has waited without a commit, if it waits.
    waiting_since_ms: Option<u64>,
    stalled: bool,
}

/// The stall rule: input waits (lag above 0, or lag unknown while partitions are held) and
/// nothing was committed for `stall_after` since it started waiting.
fn check_stall(
    previous: Option<u64>,
    holds_partitions: bool,
    lag: Option<u64>,
    last_commit_ms: u64,
    now_ms: u64,
    stall_after: Duration,
) -> StallCheck {
    let waits = holds_partitions && lag.is_none_or(|l| l > 0);
    if !waits {
        return StallCheck { waiting_since_ms: None, stalled: false };
    }
    let since = previous.unwrap_or(now_ms);
    let progress = since.max(last_commit_ms);
    StallCheck {
        waiting_since_ms: Some(since),
        stalled: now_ms.saturating_sub(progress) >= stall_after.as_millis() as u64,
    }
}

fn monitor(rt: &Runtime, stage: &'static str, input: Topic, stats: &StageStats, stop: &CancellationToken) {
    let clients = match LagClients::new(rt, stage, input) {
        Ok(c) => c,
        Err(error) => {
            tracing::warn!(stage, %error, "cannot create the lag clients; no lag for this stage");
            return;
        }
    };
    let refresh = rt.runner.lag_refresh();
    let mut waiting_since = None;
    let mut shown: BTreeSet<i32> = BTreeSet::new();
    loop {
        let slept = Instant::now();
        while slept.elapsed() < refresh {
            if stop.is_cancelled() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50).min(refresh));
        }
        let partitions = stats.partitions();
        let lag = if partitions.is_empty() {
            Some(BTreeMap::new())
        } else {
            match clients.measure(&partitions) {
                Ok(lag) => Some(lag),
                Err(error) => {
                    tracing::warn!(stage, %error, "reading consumer lag failed");
                    None
                }
            }
        };
        if let Some(lag) = &lag {
            for (p, l) in lag {
                metrics::gauge!(telemetry::LAG, "stage" => stage, "partition" => p.to_string()).set(*l as f64);
            }
            // Partitions no longer held read 0 here (the new owner reports them).
            for p in shown.difference(&partitions) {
                metrics::gauge!(telemetry::LAG, "stage" => stage, "partition" => p.to_string()).set(0.0);
            }
            shown.clone_from(&partitions);
            stats.lag_records.store(lag.values().sum(), Ordering::Relaxed);
        }
        let total = lag.as_ref().map(|l| l.values().sum::<u64>());
        let check = check_stall(
            waiting_since,
            !partitions.is_empty(),
            total,
            stats.last_commit_ms.load(Ordering::Relaxed),
            unix_ms(),
            rt.runner.stall_after(),
        );
        waiting_since = check.waiting_since_ms;
        let was = stats.stalled.swap(check.stalled, Ordering::SeqCst);
        if check.stalled && !was {
            let quiet_secs = unix_ms().saturating_sub(stats.last_commit_ms.load(Ordering::Relaxed)) / 1000;
            tracing::error!(
                stage,
                lag = ?total,
                seconds_without_commit = quiet_secs,
                "stage stalled: input waits and nothing was committed (see docs/runbook-hanging-transaction.md)"
            );
        } else if was && !check.stalled {
            tracing::info!(stage, "stage progressing again");
        }
        metrics::gauge!(telemetry::STALLED, "stage" => stage).set(if check.stalled { 1.0 } else { 0.0 });
    }
}

#[cfg(test)]
mod tests;
