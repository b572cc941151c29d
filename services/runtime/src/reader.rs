//! The partition reader: one partition of a topic, read_committed, from a position the
//! caller holds (a server stream's cursor). It never joins a group's assignment and never
//! commits: the client owns its position, so a stream can resume anywhere.

use std::time::Duration;

use hexcast_core::{InRecord, Topic};
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers as _;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::runner::Runtime;

/// Where a reader starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The first record still in the log.
    Beginning,
    /// The next record written.
    End,
    /// This offset.
    Offset(i64),
}

/// One record read, with its offset.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadRecord {
    /// Offset in its partition.
    pub offset: i64,
    /// The record's timestamp (producer create time unless the topic says otherwise).
    pub timestamp_ms: Option<i64>,
    /// Key, value and headers.
    pub record: InRecord,
}

/// Why a reader could not be opened or read.
#[derive(Debug, thiserror::Error)]
#[error("kafka unavailable: {0}")]
pub struct ReadError(String);

/// A reader of one partition.
pub struct PartitionReader {
    consumer: StreamConsumer,
}

impl std::fmt::Debug for PartitionReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionReader").finish_non_exhaustive()
    }
}

impl PartitionReader {
    /// Opens `partition` of `topic` at `start`; `group` names the (never committed) group.
    pub fn open(rt: &Runtime, group: &str, topic: Topic, partition: i32, start: StartAt) -> Result<Self, ReadError> {
        let err = |e: rdkafka::error::KafkaError| ReadError(e.to_string());
        let consumer: StreamConsumer = rt
            .consumer_config()
            .set("group.id", format!("{}-{group}", rt.kafka.group_prefix))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .map_err(err)?;
        let offset = match start {
            StartAt::Beginning => Offset::Beginning,
            StartAt::End => Offset::End,
            StartAt::Offset(o) => Offset::Offset(o),
        };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(rt.names.name(topic), partition, offset).map_err(err)?;
        consumer.assign(&tpl).map_err(err)?;
        Ok(Self { consumer })
    }

    /// The partition's low and high watermarks (the first offset still in the log and the
    /// offset the next record will get).
    pub fn watermarks(&self, rt: &Runtime, topic: Topic, partition: i32) -> Result<(i64, i64), ReadError> {
        self.consumer
            .fetch_watermarks(rt.names.name(topic), partition, Duration::from_secs(10))
            .map_err(|e| ReadError(e.to_string()))
    }

    /// The next record. Consumer errors are logged and retried: a broker that goes away
    /// only makes this wait.
    pub async fn next(&self) -> ReadRecord {
        loop {
            match self.consumer.recv().await {
                Ok(m) => {
                    let headers = m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec).unwrap_or_default()))
                                .collect()
                        })
                        .unwrap_or_default();
                    let record = InRecord {
                        key: m.key().map(<[u8]>::to_vec),
                        payload: m.payload().map(<[u8]>::to_vec),
                        headers,
                    };
                    return ReadRecord { offset: m.offset(), timestamp_ms: m.timestamp().to_millis(), record };
                }
                Err(error) => {
                    tracing::warn!(%error, "partition reader error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}
