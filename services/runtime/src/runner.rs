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

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

pub use crate::clock::{Clock, system_clock};
use crate::config::{Delivery, KafkaConfig, RunnerConfig};
use crate::telemetry::{self, StageStats};
use crate::topics::TopicNames;

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

    /// A client config with the brokers, the security settings and the extra client
    /// properties ([`KafkaConfig::client_properties`]).
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
}

/// Test hooks that simulate a crash at a chosen point. Never set in production.
#[derive(Debug, Clone, Default)]
pub struct FaultInjection {
    /// Exit the runner, as a killed process would, after producing the outputs of this
    /// batch (1-based, counted from the start of the runner) but before committing.
    pub crash_before_commit_of_batch: Option<u64>,
    /// Fail this batch (1-based) after producing its outputs, as a broker error would: the
    /// runner aborts the transaction, rebuilds the stage from its factory and retries.
    pub abort_batch: Option<u64>,
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
    faults: FaultInjection,
) -> anyhow::Result<StageHandle>
where
    F: FnMut() -> S + Send + 'static,
    S: Stage,
    S::In: FromRecord,
    S::Out: IntoRecord,
{
    let stats = Arc::new(StageStats::default());
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
    rebalanced: AtomicBool,
    stats: Arc<StageStats>,
}

impl ClientContext for RunnerContext {
    fn stats(&self, statistics: Statistics) {
        for topic in statistics.topics.values() {
            for (partition, p) in &topic.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    metrics::gauge!(telemetry::LAG, "stage" => self.stage, "partition" => partition.to_string())
                        .set(p.consumer_lag as f64);
                }
            }
        }
    }
}

impl ConsumerContext for RunnerContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                self.stats.assigned_partitions.store(tpl.count() as u64, Ordering::SeqCst);
                tracing::info!(stage = self.stage, partitions = tpl.count(), "partitions assigned");
            }
            Rebalance::Revoke(tpl) => {
                self.stats.assigned_partitions.store(0, Ordering::SeqCst);
                // Another member owns these now and reports their lag; a stale value here
                // would count it twice.
                for p in tpl.elements() {
                    metrics::gauge!(telemetry::LAG, "stage" => self.stage, "partition" => p.partition().to_string())
                        .set(0.0);
                }
                tracing::info!(stage = self.stage, partitions = tpl.count(), "partitions revoked");
            }
            Rebalance::Error(e) => tracing::warn!(stage = self.stage, error = %e, "rebalance error"),
        }
        self.rebalanced.store(true, Ordering::SeqCst);
    }
}

#[derive(Default)]
struct DeliveryContext {
    failed: AtomicU64,
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            self.failed.fetch_add(1, Ordering::SeqCst);
            tracing::warn!(%error, "delivery failed");
        }
    }
}

/// Why a batch did not commit.
#[derive(Debug, thiserror::Error)]
enum BatchError {
    /// Transient: abandon the batch, rebuild the session, retry from the committed offsets.
    #[error("{0:#}")]
    Retry(anyhow::Error),
    /// The injected crash.
    #[error("injected crash before commit")]
    Crash,
}

impl From<KafkaError> for BatchError {
    fn from(e: KafkaError) -> Self {
        BatchError::Retry(e.into())
    }
}

struct Session {
    consumer: BaseConsumer<RunnerContext>,
    producer: BaseProducer<DeliveryContext>,
    exactly_once: bool,
}

const TXN_TIMEOUT: Duration = Duration::from_secs(60);

/// The consumer group of a stage.
pub fn group_id(rt: &Runtime, stage: &str) -> String {
    format!("{}-{stage}", rt.kafka.group_prefix)
}

/// The transactional id of a stage's producer on this instance: a restarted instance uses
/// the same one, which fences its predecessor and aborts its open transaction.
pub fn transactional_id(rt: &Runtime, stage: &str) -> String {
    format!("{}-{}", group_id(rt, stage), rt.kafka.instance())
}

impl Session {
    fn open(rt: &Runtime, stage: &'static str, input: Topic, stats: &Arc<StageStats>) -> anyhow::Result<Self> {
        let group = group_id(rt, stage);
        let exactly_once = rt.kafka.delivery == Delivery::ExactlyOnce;
        let consumer: BaseConsumer<RunnerContext> = rt
            .consumer_config()
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("statistics.interval.ms", "5000")
            .create_with_context(RunnerContext { stage, rebalanced: AtomicBool::new(false), stats: Arc::clone(stats) })
            .context("creating consumer")?;
        consumer.subscribe(&[rt.names.name(input)]).context("subscribing")?;

        let mut pcfg = rt.client_config();
        pcfg.set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            // librdkafka refuses a delivery timeout longer than the transaction timeout.
            .set("message.timeout.ms", rt.kafka.transaction_timeout_ms.min(30_000).to_string());
        if exactly_once {
            pcfg.set("transactional.id", transactional_id(rt, stage))
                .set("transaction.timeout.ms", rt.kafka.transaction_timeout_ms.to_string());
        }
        let producer: BaseProducer<DeliveryContext> =
            pcfg.create_with_context(DeliveryContext::default()).context("creating producer")?;
        if exactly_once {
            producer.init_transactions(TXN_TIMEOUT).context("initializing transactions")?;
        }
        Ok(Self { consumer, producer, exactly_once })
    }

    /// Polls until `max` records, or `linger` after the first record, or an idle poll.
    /// Returns `None` when a rebalance happened: the caller abandons everything it holds.
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
                    if let KafkaError::MessageConsumption(RDKafkaErrorCode::Fatal) = e {
                        return Err(e).context("consumer fatal error");
                    }
                    tracing::warn!(error = %e, "consumer error");
                    return Ok(Some(batch));
                }
            }
        }
    }

    fn send(&self, names: &TopicNames, rec: &OutRecord) -> Result<(), KafkaError> {
        let mut headers = OwnedHeaders::new_with_capacity(rec.headers.len());
        for (k, v) in &rec.headers {
            headers = headers.insert(Header { key: k, value: Some(v.as_slice()) });
        }
        let mut record: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(names.name(rec.topic)).key(rec.key.as_slice()).headers(headers);
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
                    self.producer.poll(Duration::from_millis(50));
                    record = back;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    fn commit(
        &self,
        names: &TopicNames,
        outputs: &[OutRecord],
        offsets: &BTreeMap<(String, i32), i64>,
        crash: bool,
        fail: bool,
    ) -> Result<(), BatchError> {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), next) in offsets {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
        }
        if self.exactly_once {
            self.producer.begin_transaction()?;
            for rec in outputs {
                self.send(names, rec)?;
            }
            if crash {
                self.producer.flush(Duration::from_secs(10))?;
                return Err(BatchError::Crash);
            }
            if fail {
                self.producer.flush(Duration::from_secs(10))?;
                return Err(BatchError::Retry(anyhow::anyhow!("injected failure before commit")));
            }
            let group = self
                .consumer
                .group_metadata()
                .ok_or_else(|| BatchError::Retry(anyhow::anyhow!("no consumer group metadata")))?;
            self.producer.send_offsets_to_transaction(&tpl, &group, TXN_TIMEOUT)?;
            self.producer.commit_transaction(TXN_TIMEOUT)?;
        } else {
            let failed_before = self.producer.context().failed.load(Ordering::SeqCst);
            for rec in outputs {
                self.send(names, rec)?;
            }
            self.producer.flush(TXN_TIMEOUT)?;
            if crash {
                return Err(BatchError::Crash);
            }
            if fail {
                return Err(BatchError::Retry(anyhow::anyhow!("injected failure before commit")));
            }
            if self.producer.context().failed.load(Ordering::SeqCst) != failed_before {
                return Err(BatchError::Retry(anyhow::anyhow!("some outputs were not delivered")));
            }
            self.consumer.commit(&tpl, CommitMode::Sync)?;
        }
        Ok(())
    }

    fn abandon(&self) {
        if self.exactly_once
            && let Err(e) = self.producer.abort_transaction(TXN_TIMEOUT)
        {
            tracing::debug!(error = %e, "abort after failed batch");
        }
    }
}

fn to_in_record(m: &rdkafka::message::OwnedMessage) -> InRecord {
    let headers = m
        .headers()
        .map(|h| h.iter().map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec())).collect())
        .unwrap_or_default();
    InRecord { key: m.key().map(<[u8]>::to_vec), payload: m.payload().map(<[u8]>::to_vec), headers }
}

fn dead_letter(
    stage: &'static str,
    reason: &'static str,
    detail: String,
    topic: &str,
    m: &rdkafka::message::OwnedMessage,
    rec: InRecord,
    now: Timestamp,
) -> OutRecord {
    let trace = rec.header(header::TRACE_ID).map(<[u8]>::to_vec);
    let dl = pb::DeadLetter {
        stage: stage.to_owned(),
        reason: reason.to_owned(),
        detail,
        topic: topic.to_owned(),
        partition: m.partition(),
        offset: m.offset(),
        key: rec.key.clone().unwrap_or_default(),
        payload: rec.payload.unwrap_or_default(),
        headers: rec.headers.into_iter().collect(),
        rejected_at_ms: now.0,
    };
    let mut headers = vec![
        (header::SCHEMA.to_owned(), b"hexcast.v1.DeadLetter".to_vec()),
        (header::DL_STAGE.to_owned(), stage.as_bytes().to_vec()),
        (header::DL_REASON.to_owned(), reason.as_bytes().to_vec()),
    ];
    if let Some(t) = trace {
        headers.push((header::TRACE_ID.to_owned(), t));
    }
    OutRecord {
        topic: Topic::DeadLetter,
        key: rec.key.unwrap_or_default(),
        partition: None,
        payload: Some(dl.encode_to_vec()),
        headers,
    }
}

/// Copies the input's trace headers onto an output that lacks them.
fn propagate(input: &InRecord, out: &mut OutRecord) {
    for name in [header::TRACE_ID, header::SOURCE] {
        if out.headers.iter().all(|(k, _)| k != name)
            && let Some(v) = input.header(name)
        {
            out.headers.push((name.to_owned(), v.to_vec()));
        }
    }
}

struct Processed {
    outputs: Vec<OutRecord>,
    offsets: BTreeMap<(String, i32), i64>,
    rejected: Vec<&'static str>,
    filtered: u64,
}

fn process_batch<S>(
    stage: &mut S,
    spec: &StageSpec,
    batch: &[rdkafka::message::OwnedMessage],
    now: Timestamp,
) -> Processed
where
    S: Stage,
    S::In: FromRecord,
    S::Out: IntoRecord,
{
    let name = stage.name();
    let mut p = Processed { outputs: Vec::new(), offsets: BTreeMap::new(), rejected: Vec::new(), filtered: 0 };
    let mut outs = Vec::new();
    let mut kept: Vec<OutRecord> = Vec::new();
    for m in batch {
        p.offsets.insert((m.topic().to_owned(), m.partition()), m.offset() + 1);
        let rec = to_in_record(m);
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
                    propagate(&rec, &mut r);
                    p.outputs.push(r);
                }
            }
            Err((reason, detail)) => {
                tracing::warn!(stage = name, reason, %detail, partition = m.partition(), offset = m.offset(), "dead-lettered record");
                p.rejected.push(reason);
                p.outputs.push(dead_letter(name, reason, detail, m.topic(), m, rec, now));
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
    faults: FaultInjection,
    stats: Arc<StageStats>,
) -> anyhow::Result<()>
where
    F: FnMut() -> S,
    S: Stage,
    S::In: FromRecord,
    S::Out: IntoRecord,
{
    let input = spec.input;
    let mut stage = factory();
    let name = stage.name();
    anyhow::ensure!(name == spec.name, "stage {name} started under the topology row of {}", spec.name);
    let mut batch_no: u64 = 0;
    'session: loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let session = match Session::open(&rt, name, input, &stats) {
            Ok(s) => s,
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
            if shutdown.is_cancelled() {
                tracing::info!(stage = name, "stage stopping: no batch in flight");
                return Ok(());
            }
            let Some(batch) = session.collect(&rt.runner)? else {
                // Rebalanced: whatever was read is abandoned and state rebuilt.
                stage = factory();
                continue;
            };
            if batch.is_empty() {
                continue;
            }
            batch_no += 1;
            let started = Instant::now();
            let now = (rt.clock)();
            let processed = process_batch(&mut stage, spec, &batch, now);
            let crash = faults.crash_before_commit_of_batch == Some(batch_no);
            let fail = faults.abort_batch == Some(batch_no);
            match session.commit(&rt.names, &processed.outputs, &processed.offsets, crash, fail) {
                Ok(()) => record_batch(name, &stats, &batch, &processed, started),
                Err(BatchError::Crash) => {
                    return Err(anyhow::anyhow!("injected crash before commit of batch {batch_no}"));
                }
                Err(BatchError::Retry(e)) => {
                    tracing::warn!(stage = name, error = %format!("{e:#}"), "batch abandoned, rebuilding session");
                    session.abandon();
                    stats.aborted.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(telemetry::ABORTED, "stage" => name).increment(1);
                    drop(session);
                    stage = factory();
                    std::thread::sleep(Duration::from_millis(rt.runner.retry_backoff_ms));
                    continue 'session;
                }
            }
        }
    }
}

fn record_batch(
    name: &'static str,
    stats: &StageStats,
    batch: &[rdkafka::message::OwnedMessage],
    p: &Processed,
    started: Instant,
) {
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
}
