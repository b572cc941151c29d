//! Keeps the subscriber index in step with the compacted subscriptions topic: reads every
//! partition from the beginning, applies upserts and tombstones, and reports when it has
//! caught up with the end of the topic as it was at start. The topic is the only source of
//! truth; the index can always be rebuilt from it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use hexcast_core::{Subscription, Topic};
use hexcast_proto::v1 as pb;
use hexcast_runtime::Runtime;
use prost::Message as _;
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::index::SubscriberIndex;

/// Progress of a running loader.
#[derive(Debug, Default)]
pub struct LoaderStatus {
    /// Set once every record present at start has been applied.
    pub caught_up: AtomicBool,
    /// Records applied.
    pub applied: AtomicU64,
    /// Records skipped as invalid.
    pub invalid: AtomicU64,
}

/// The high watermark, retried while the partition's leadership settles.
fn fetch_high_watermark(consumer: &BaseConsumer, topic: &str, partition: i32) -> anyhow::Result<(i64, i64)> {
    let mut attempt = 0;
    loop {
        match consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)) {
            Ok(w) => return Ok(w),
            Err(e) if attempt < 50 => {
                attempt += 1;
                tracing::debug!(error = %e, partition, "watermarks not available yet");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e).context("reading subscriptions watermarks"),
        }
    }
}

/// Starts the loader thread for `partitions` of the subscriptions topic (all when `None`).
pub fn spawn_loader(
    rt: &Runtime,
    index: Arc<SubscriberIndex>,
    partitions: Option<Vec<i32>>,
    shutdown: CancellationToken,
) -> anyhow::Result<Arc<LoaderStatus>> {
    let status = Arc::new(LoaderStatus::default());
    let topic = rt.names.name(Topic::Subscriptions).to_owned();
    let consumer: BaseConsumer = rt
        .consumer_config()
        .set("group.id", format!("{}-push-loader", rt.kafka.group_prefix))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .context("creating subscriptions consumer")?;
    let partitions = match partitions {
        Some(p) => p,
        None => {
            let md = consumer
                .fetch_metadata(Some(&topic), Duration::from_secs(30))
                .context("reading subscriptions topic metadata")?;
            md.topics().first().map(|t| t.partitions().iter().map(|p| p.id()).collect()).unwrap_or_default()
        }
    };
    let mut tpl = TopicPartitionList::new();
    let mut remaining = Vec::new();
    for &p in &partitions {
        tpl.add_partition_offset(&topic, p, Offset::Beginning).context("assigning")?;
        let (_, high) = fetch_high_watermark(&consumer, &topic, p)?;
        remaining.push((p, high));
    }
    consumer.assign(&tpl).context("assigning subscriptions partitions")?;
    let st = Arc::clone(&status);
    std::thread::Builder::new().name("push-loader".into()).spawn(move || {
        let mut remaining: Vec<(i32, i64)> = remaining.into_iter().filter(|(_, high)| *high > 0).collect();
        if remaining.is_empty() {
            st.caught_up.store(true, Ordering::SeqCst);
        }
        while !shutdown.is_cancelled() {
            let Some(msg) = consumer.poll(Duration::from_millis(100)) else { continue };
            let msg = match msg {
                Ok(m) => m,
                Err(error) => {
                    tracing::warn!(%error, "subscriptions consumer error");
                    continue;
                }
            };
            let key = msg.key().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
            match msg.payload() {
                None => {
                    index.remove(&key);
                }
                Some(bytes) => match pb::Subscription::decode(bytes).map_err(|e| e.to_string()).and_then(|p| Subscription::try_from(p).map_err(|e| e.to_string())) {
                    Ok(sub) => index.upsert(sub),
                    Err(error) => {
                        st.invalid.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%error, partition = msg.partition(), offset = msg.offset(), "invalid subscription record skipped");
                    }
                },
            }
            st.applied.fetch_add(1, Ordering::Relaxed);
            if !remaining.is_empty() {
                let (p, o) = (msg.partition(), msg.offset());
                remaining.retain(|(rp, high)| !(*rp == p && o + 1 >= *high));
                if remaining.is_empty() {
                    st.caught_up.store(true, Ordering::SeqCst);
                    tracing::info!(subscribers = index.len(), "subscriber index caught up");
                }
            }
        }
    })?;
    Ok(status)
}
