//! The writer: how everything outside the stage runner (the API gateway's services, the
//! review ticker, tools) puts records on a topic. It takes the same [`OutRecord`]s the
//! runner produces, so every record of a topic has one shape (key, partition, schema
//! header), and it returns only once the broker has acknowledged every record (idempotent
//! producer, `acks=all`). It never writes transactionally: records written here are
//! requests to the pipeline, and the stages that read them make the pipeline exactly once.

use std::time::Duration;

use futures::future::join_all;
use hexcast_core::OutRecord;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::runner::Runtime;
use crate::topics::TopicNames;

/// Why a write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The broker could not be reached or refused the records; nothing is known written.
    #[error("kafka unavailable: {0}")]
    Unavailable(String),
}

/// A producer that awaits delivery.
#[derive(Clone)]
pub struct Writer {
    producer: FutureProducer,
    names: TopicNames,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

/// How long a record may wait in the producer's queue for a broker before it fails.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

impl Writer {
    /// A writer whose client is named `client` (in broker logs and metrics).
    pub fn new(rt: &Runtime, client: &str) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let producer = rt
            .client_config()
            .set("client.id", format!("{}-{client}", rt.kafka.group_prefix))
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            .set("queue.buffering.max.messages", "1000000")
            .set("delivery.timeout.ms", DELIVERY_TIMEOUT.as_millis().to_string())
            .create()
            .with_context(|| format!("creating the {client} writer"))?;
        Ok(Self { producer, names: rt.names.clone() })
    }

    /// Writes `records` and waits until the broker has acknowledged all of them. Records
    /// of one key and partition keep their order.
    pub async fn write(&self, records: impl IntoIterator<Item = OutRecord>) -> Result<(), WriteError> {
        let mut pending = Vec::new();
        for rec in records {
            let mut headers = OwnedHeaders::new_with_capacity(rec.headers.len());
            for (k, v) in &rec.headers {
                headers = headers.insert(Header { key: k, value: Some(v.as_slice()) });
            }
            let mut fr: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(self.names.name(rec.topic)).key(rec.key.as_slice()).headers(headers);
            if let Some(p) = &rec.payload {
                fr = fr.payload(p.as_slice());
            }
            if let Some(p) = rec.partition {
                fr = fr.partition(p);
            }
            pending.push(self.producer.send_result(fr).map_err(|(e, _)| WriteError::Unavailable(e.to_string()))?);
        }
        for delivery in join_all(pending).await {
            match delivery {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(WriteError::Unavailable(e.to_string())),
                Err(_) => return Err(WriteError::Unavailable("producer dropped".into())),
            }
        }
        Ok(())
    }
}
