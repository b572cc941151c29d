//! State changelogs: a stateful stage writes every change of its state to a compacted topic
//! in the same transaction as its outputs and input offsets, so the changelog read up to
//! its last stable offset is exactly the state as of the committed input. These helpers read
//! it back for the stage's factory. They never write: only the runner produces.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hexcast_core::Topic;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::runner::{Runtime, group_id, transactional_id};

/// Partition ends are how the reader knows it is done; librdkafka also reports them as
/// client errors, which would otherwise be logged at error level.
struct ReaderContext;

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::PartitionEOF(_)) {
            tracing::warn!(%error, reason, "changelog reader error");
        }
    }
}

impl ConsumerContext for ReaderContext {}

pub use hexcast_core::{ChangelogRecord, PartitionedRecord};

/// Fences any previous incarnation of `stage` on this instance (a crashed process whose
/// transaction is still open) by initializing a producer with the stage's transactional
/// id. Until that transaction is aborted, a read_committed reader cannot get past it, so a
/// restarted stage calls this before [`read_changelog`]. Never call it while this process's
/// own session of the stage is open: it would fence that too.
pub fn fence_stage(rt: &Runtime, stage: &str) -> anyhow::Result<()> {
    if rt.kafka.delivery != crate::Delivery::ExactlyOnce {
        return Ok(());
    }
    let producer: BaseProducer = rt
        .client_config()
        .set("transactional.id", transactional_id(rt, stage))
        .set("transaction.timeout.ms", rt.kafka.transaction_timeout_ms.to_string())
        .create()
        .context("creating fencing producer")?;
    producer.init_transactions(Duration::from_secs(60)).context("fencing the previous transaction")?;
    Ok(())
}

/// Reads a whole changelog topic, every partition from the beginning up to its last stable
/// offset (read_committed: aborted writes are never seen), and returns its records in log
/// order per partition as `(key, value)`, `None` for a tombstone. Fails after `timeout`.
pub fn read_changelog(
    rt: &Runtime,
    stage: &str,
    topic: Topic,
    timeout: Duration,
) -> anyhow::Result<Vec<ChangelogRecord>> {
    Ok(read_changelog_partitioned(rt, stage, topic, timeout)?.into_iter().map(|(_, k, v)| (k, v)).collect())
}

/// [`read_changelog`] with each record's partition: `(partition, key, value)`.
pub fn read_changelog_partitioned(
    rt: &Runtime,
    stage: &str,
    topic: Topic,
    timeout: Duration,
) -> anyhow::Result<Vec<PartitionedRecord>> {
    let name = rt.names.name(topic).to_owned();
    let consumer: BaseConsumer<ReaderContext> = rt
        .consumer_config()
        .set("group.id", format!("{}-restore", group_id(rt, stage)))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create_with_context(ReaderContext)
        .context("creating changelog reader")?;
    let md = consumer
        .fetch_metadata(Some(&name), Duration::from_secs(10))
        .with_context(|| format!("reading metadata of {name}"))?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .find(|t| t.name() == name)
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    anyhow::ensure!(!partitions.is_empty(), "changelog topic {name} does not exist");
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(&name, *p, Offset::Beginning).context("assigning changelog partition")?;
    }
    consumer.assign(&tpl).context("assigning changelog partitions")?;
    let started = Instant::now();
    let mut at_end: HashSet<i32> = HashSet::new();
    let mut records = Vec::new();
    while at_end.len() < partitions.len() {
        anyhow::ensure!(
            started.elapsed() < timeout,
            "changelog {name}: end not reached within {timeout:?} ({} of {} partitions)",
            at_end.len(),
            partitions.len()
        );
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(m)) => {
                at_end.remove(&m.partition());
                records.push((m.partition(), m.key().unwrap_or_default().to_vec(), m.payload().map(<[u8]>::to_vec)));
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => return Err(e).with_context(|| format!("reading changelog {name}")),
        }
    }
    tracing::info!(stage, topic = %name, records = records.len(), elapsed_ms = started.elapsed().as_millis() as u64, "changelog read");
    Ok(records)
}
