//! Follows a compacted topic (requests, assets) into an in-memory table: reads every
//! partition from the beginning and then keeps following it, calling `apply` with each
//! key and value (`None` for a tombstone). The topic is the source of truth; the table can
//! always be rebuilt from it. Writers also apply their own writes at once, so a read right
//! after a write sees it; applying a record twice is harmless (last value wins).

use std::time::Duration;

use anyhow::Context as _;
use hexcast_core::Topic;
use hexcast_runtime::Runtime;
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

/// Starts a task that applies every record of `topic` (`partitions` partitions) to `apply`.
pub fn follow(
    rt: &Runtime,
    topic: Topic,
    partitions: u32,
    mut apply: impl FnMut(&str, Option<&[u8]>) + Send + 'static,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let name = rt.names.name(topic).to_owned();
    let consumer: StreamConsumer = rt
        .consumer_config()
        .set("group.id", format!("{}-push-{}", rt.kafka.group_prefix, topic.base_name()))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .with_context(|| format!("creating the {topic} follower"))?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition_offset(&name, p, Offset::Beginning).context("assigning partitions")?;
    }
    consumer.assign(&tpl).with_context(|| format!("assigning {name}"))?;
    Ok(tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                () = shutdown.cancelled() => break,
                m = consumer.recv() => m,
            };
            match msg {
                Ok(m) => {
                    let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else { continue };
                    apply(key, m.payload());
                }
                Err(error) => {
                    tracing::warn!(%error, topic = %name, "follower consumer error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }))
}

/// A random 128-bit id as 32 hex digits, from the standard library's randomly seeded
/// hasher (no id is derived from anything a caller could guess).
pub fn random_id() -> String {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut out = String::with_capacity(32);
    for salt in 0..2u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(salt);
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}
