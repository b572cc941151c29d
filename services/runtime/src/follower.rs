//! The follower: keeps an in-memory table in step with a compacted topic (subscriptions,
//! requests, assets). It reads the chosen partitions from the beginning, hands every record
//! to the table (`None` for a tombstone), keeps following, and says when it has caught up
//! with the end of each partition as it was when the follower started, so that nothing is
//! served from a half-loaded table. The topic is the only source of truth; the table can
//! always be rebuilt from it. It never writes and never commits offsets.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
                drop_reached(&consumer, &topic_name, &mut remaining);
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

/// A table filled from partitions that change while it runs ([`ShardFollower`]): it is
/// told which partition each record came from, and forgets a partition on request.
pub trait PartitionedTable: Send + Sync + 'static {
    /// Applies `value` (`None`: a tombstone) read from `partition` under `key`. Applying a
    /// record twice must be harmless.
    fn apply(&self, partition: i32, key: &str, value: Option<&[u8]>) -> Result<(), String>;
    /// Forgets everything that only `partition` held.
    fn drop_partition(&self, partition: i32);
}

/// One request to change the held partitions; `done` is told once they are loaded.
struct Hold {
    partitions: BTreeSet<i32>,
    done: std::sync::mpsc::SyncSender<()>,
}

/// A follower whose partitions change while it runs: the table side of a table-stream
/// join. The owner of the stream side calls [`ShardFollower::hold`] with the partitions it
/// was assigned; the follower reads the newly held ones from the beginning, drops the ones
/// no longer held from its table and keeps following the rest, and `hold` returns once
/// every held partition has been read to the end it had when `hold` was called.
#[derive(Debug)]
pub struct ShardFollower {
    tx: std::sync::mpsc::Sender<Hold>,
    status: Arc<FollowerStatus>,
    held: Arc<Mutex<BTreeSet<i32>>>,
}

impl ShardFollower {
    /// Progress: `caught_up` is false while a `hold` is loading.
    pub fn status(&self) -> &Arc<FollowerStatus> {
        &self.status
    }

    /// The partitions held (requested by the last completed or running `hold`).
    pub fn held(&self) -> BTreeSet<i32> {
        self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Holds exactly `partitions` (an empty set keeps what is held: an eager rebalance
    /// revokes everything just before it assigns, and reloading a partition kept would be
    /// wasted). Blocks until each newly held partition has been read to its end as of
    /// this call; `false` when `stop` fired or the follower is gone first.
    pub fn hold(&self, partitions: &BTreeSet<i32>, stop: &CancellationToken) -> bool {
        if partitions.is_empty() {
            return true;
        }
        {
            let mut held = self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if *held == *partitions && self.status.is_caught_up() {
                return true;
            }
            *held = partitions.clone();
        }
        self.status.caught_up.store(false, Ordering::SeqCst);
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        if self.tx.send(Hold { partitions: partitions.clone(), done }).is_err() {
            return false;
        }
        loop {
            match wait.recv_timeout(Duration::from_millis(50)) {
                Ok(()) => return true,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return false,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) if stop.is_cancelled() => return false,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
    }
}

/// Starts a follower of `topic` that holds no partition until [`ShardFollower::hold`].
pub fn follow_shards(
    rt: &Runtime,
    name: &str,
    topic: Topic,
    table: Arc<dyn PartitionedTable>,
    shutdown: CancellationToken,
) -> anyhow::Result<ShardFollower> {
    let topic_name = rt.names.name(topic).to_owned();
    let consumer: BaseConsumer = rt
        .consumer_config()
        .set("group.id", format!("{}-follow-{name}", rt.kafka.group_prefix))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .with_context(|| format!("creating the {name} follower of {topic_name}"))?;
    let (tx, rx) = std::sync::mpsc::channel::<Hold>();
    let status = Arc::new(FollowerStatus::default());
    status.caught_up.store(true, Ordering::SeqCst);
    let st = Arc::clone(&status);
    let name = name.to_owned();
    std::thread::Builder::new().name(format!("follow-{name}")).spawn(move || {
        let mut held: BTreeSet<i32> = BTreeSet::new();
        // (partition, end at the hold): loading until the position reaches it.
        let mut remaining: Vec<(i32, i64)> = Vec::new();
        let mut waiting: Vec<std::sync::mpsc::SyncSender<()>> = Vec::new();
        let mut since_check = 0u32;
        while !shutdown.is_cancelled() {
            while let Ok(cmd) = rx.try_recv() {
                if let Err(error) = change(&consumer, &topic_name, &mut held, &cmd.partitions, &mut remaining, &*table) {
                    tracing::error!(error = %format!("{error:#}"), follower = %name, "changing the held partitions failed");
                    return;
                }
                tracing::info!(follower = %name, partitions = ?held, loading = remaining.len(), "holding partitions");
                waiting.push(cmd.done);
            }
            let mut idle = false;
            let mut at_end = false;
            match consumer.poll(Duration::from_millis(50)) {
                None => idle = true,
                Some(Err(error)) => tracing::warn!(%error, follower = %name, "follower consumer error"),
                Some(Ok(msg)) => {
                    let p = msg.partition();
                    // A partition just let go may still have records in flight.
                    if held.contains(&p) {
                        let key = String::from_utf8_lossy(msg.key().unwrap_or_default());
                        match table.apply(p, &key, msg.payload()) {
                            Ok(()) => st.applied.fetch_add(1, Ordering::Relaxed),
                            Err(error) => {
                                tracing::warn!(%error, follower = %name, partition = p, offset = msg.offset(), "invalid record skipped");
                                st.invalid.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                        at_end = remaining.iter().any(|(rp, high)| *rp == p && msg.offset() + 1 >= *high);
                    }
                }
            }
            since_check += 1;
            // The consumer's position is the truth for the current assignment (transaction
            // markers and compaction leave offsets no record carries).
            if !remaining.is_empty() && (idle || at_end || since_check >= 4096) {
                since_check = 0;
                drop_reached(&consumer, &topic_name, &mut remaining);
            }
            if remaining.is_empty() && !waiting.is_empty() {
                st.caught_up.store(true, Ordering::SeqCst);
                tracing::info!(follower = %name, applied = st.applied.load(Ordering::Relaxed), "follower caught up");
                for w in waiting.drain(..) {
                    let _ = w.send(());
                }
            }
        }
    })?;
    Ok(ShardFollower { tx, status, held: Arc::new(Mutex::new(BTreeSet::new())) })
}

/// Drops from `remaining` (partition, end) every partition whose consumer position reached
/// its end: transaction markers and compaction leave offsets no record carries, so the
/// position, not the last record, says where the consumer really is.
fn drop_reached(consumer: &BaseConsumer, topic: &str, remaining: &mut Vec<(i32, i64)>) {
    if let Ok(pos) = consumer.position() {
        remaining.retain(|(p, high)| match pos.find_partition(topic, *p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o < *high,
            _ => true,
        });
    }
}

/// Moves the consumer from `held` to `want`: drops what is let go (from the consumer, then
/// the table), and reads what is new from the beginning, noting where it ends now.
fn change(
    consumer: &BaseConsumer,
    topic: &str,
    held: &mut BTreeSet<i32>,
    want: &BTreeSet<i32>,
    remaining: &mut Vec<(i32, i64)>,
    table: &dyn PartitionedTable,
) -> anyhow::Result<()> {
    let gone: Vec<i32> = held.difference(want).copied().collect();
    let new: Vec<i32> = want.difference(held).copied().collect();
    if !gone.is_empty() {
        let mut tpl = TopicPartitionList::new();
        for &p in &gone {
            tpl.add_partition(topic, p);
        }
        consumer.incremental_unassign(&tpl).with_context(|| format!("letting go of {topic} {gone:?}"))?;
        remaining.retain(|(p, _)| !gone.contains(p));
        for &p in &gone {
            table.drop_partition(p);
        }
    }
    if !new.is_empty() {
        let mut tpl = TopicPartitionList::new();
        for &p in &new {
            tpl.add_partition_offset(topic, p, Offset::Beginning).context("assigning")?;
            let (_, high) = high_watermark(consumer, topic, p)?;
            if high > 0 {
                remaining.push((p, high));
            }
        }
        consumer.incremental_assign(&tpl).with_context(|| format!("assigning {topic} {new:?}"))?;
    }
    *held = want.clone();
    Ok(())
}
