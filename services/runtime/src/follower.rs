//! The follower: keeps an in-memory table in step with a compacted topic (subscriptions,
//! requests, assets). It reads the chosen partitions from the beginning, hands every record
//! to the table (`None` for a tombstone), keeps following, and says when it has caught up
//! with the end of each partition as it was when the follower started, so that nothing is
//! served from a half-loaded table. The topic is the only source of truth; the table can
//! always be rebuilt from it. It never writes and never commits offsets.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use hexcast_core::Topic;
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::runner::Runtime;

/// A table a follower keeps: applies one record, or says why it could not.
pub trait Table: Send + Sync + 'static {
    /// Applies `value` (`None`: a tombstone) under `key`. Applying a record twice must be
    /// harmless: the last value wins.
    fn apply(&self, key: &str, value: Option<&[u8]>) -> Result<(), String>;
}

/// Progress of a running follower.
#[derive(Debug, Default)]
pub struct FollowerStatus {
    /// Set once every record present at start has been applied.
    pub caught_up: AtomicBool,
    /// Records applied.
    pub applied: AtomicU64,
    /// Records the table refused (logged and skipped).
    pub invalid: AtomicU64,
}

impl FollowerStatus {
    /// Whether every record present at start has been applied.
    pub fn is_caught_up(&self) -> bool {
        self.caught_up.load(Ordering::SeqCst)
    }
}

/// Which partitions of the topic to follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Partitions {
    /// Every partition the topic has at start.
    All,
    /// Only these.
    Only(Vec<i32>),
}

/// Starts a thread that follows `partitions` of `topic` into `table`; `name` names the
/// thread, the consumer group (never committed) and the log lines.
pub fn follow(
    rt: &Runtime,
    name: &str,
    topic: Topic,
    partitions: Partitions,
    table: Arc<dyn Table>,
    shutdown: CancellationToken,
) -> anyhow::Result<Arc<FollowerStatus>> {
    let topic_name = rt.names.name(topic).to_owned();
    let consumer: BaseConsumer = rt
        .consumer_config()
        .set("group.id", format!("{}-follow-{name}", rt.kafka.group_prefix))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .with_context(|| format!("creating the {name} follower of {topic_name}"))?;
    let partitions = match partitions {
        Partitions::Only(p) => p,
        Partitions::All => {
            let md = consumer
                .fetch_metadata(Some(&topic_name), Duration::from_secs(30))
                .with_context(|| format!("reading metadata of {topic_name}"))?;
            md.topics().first().map(|t| t.partitions().iter().map(|p| p.id()).collect()).unwrap_or_default()
        }
    };
    let mut tpl = TopicPartitionList::new();
    // (partition, end at start): caught up once the position reaches every end.
    let mut remaining = Vec::new();
    for &p in &partitions {
        tpl.add_partition_offset(&topic_name, p, Offset::Beginning).context("assigning")?;
        let (_, high) = high_watermark(&consumer, &topic_name, p)?;
        if high > 0 {
            remaining.push((p, high));
        }
    }
    consumer.assign(&tpl).with_context(|| format!("assigning {topic_name}"))?;
    let status = Arc::new(FollowerStatus::default());
    if remaining.is_empty() {
        status.caught_up.store(true, Ordering::SeqCst);
    }
    let st = Arc::clone(&status);
    let thread_name = format!("follow-{name}");
    let name = name.to_owned();
    std::thread::Builder::new().name(thread_name).spawn(move || {
        let mut since_check = 0u32;
        while !shutdown.is_cancelled() {
            let mut idle = false;
            match consumer.poll(Duration::from_millis(100)) {
                None => idle = true,
                Some(Err(error)) => tracing::warn!(%error, follower = %name, "follower consumer error"),
                Some(Ok(msg)) => {
                    let key = String::from_utf8_lossy(msg.key().unwrap_or_default());
                    match table.apply(&key, msg.payload()) {
                        Ok(()) => st.applied.fetch_add(1, Ordering::Relaxed),
                        Err(error) => {
                            tracing::warn!(%error, follower = %name, partition = msg.partition(), offset = msg.offset(), "invalid record skipped");
                            st.invalid.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    let (p, o) = (msg.partition(), msg.offset());
                    remaining.retain(|(rp, high)| !(*rp == p && o + 1 >= *high));
                }
            }
            // Transaction markers and compaction leave offsets no record carries: the
            // consumer's position says where it really is.
            since_check += 1;
            if !remaining.is_empty() && (idle || since_check >= 4096) {
                since_check = 0;
                if let Ok(pos) = consumer.position() {
                    remaining.retain(|(p, high)| match pos.find_partition(&topic_name, *p).map(|e| e.offset()) {
                        Some(Offset::Offset(o)) => o < *high,
                        _ => true,
                    });
                }
            }
            if remaining.is_empty() && !st.is_caught_up() {
                st.caught_up.store(true, Ordering::SeqCst);
                tracing::info!(follower = %name, applied = st.applied.load(Ordering::Relaxed), "follower caught up");
            }
        }
    })?;
    Ok(status)
}

/// The high watermark, retried while the partition's leadership settles.
fn high_watermark(consumer: &BaseConsumer, topic: &str, partition: i32) -> anyhow::Result<(i64, i64)> {
    let mut attempt = 0;
    loop {
        match consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)) {
            Ok(w) => return Ok(w),
            Err(e) if attempt < 50 => {
                attempt += 1;
                tracing::debug!(error = %e, partition, "watermarks not available yet");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e).with_context(|| format!("reading the watermarks of {topic}")),
        }
    }
}

/// Any function of a key and a value is a table.
impl<F> Table for F
where
    F: Fn(&str, Option<&[u8]>) -> Result<(), String> + Send + Sync + 'static,
{
    fn apply(&self, key: &str, value: Option<&[u8]>) -> Result<(), String> {
        self(key, value)
    }
}
