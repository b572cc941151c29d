//! The gRPC services of the push service: Push (durable, resumable notification streams)
//! and Subscriptions (upsert, delete, get, bulk upsert). A tenant only ever reads and
//! writes its own subscribers and notifications.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use hexcast_core::Place;
use hexcast_core::cells::{GeoConfig, ShardMap};
use hexcast_core::taxonomy::validate_prefix;
use hexcast_core::{Area, Severity, Subscription, SubscriptionFilter, Timestamp, Topic};
use hexcast_proto::v1 as pb;
use hexcast_proto::v1::push_server::Push;
use hexcast_proto::v1::subscriptions_server::Subscriptions;
use hexcast_runtime::Runtime;
use prost::Message as _;
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::tenant_of;
use crate::cursor::Cursor;
use crate::error::PushError;
use crate::index::SubscriberIndex;
use crate::matcher::tenant_partition;

/// The status that ends streams at shutdown.
pub const SHUTTING_DOWN: &str = "server shutting down: reconnect with the last cursor";

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Splits `ids` into consecutive batches of at most `max_ids` ids and about `max_bytes`
/// encoded bytes (an id alone is never split). Returns index ranges, so a cursor can name
/// where the next batch starts.
pub fn split_ids(ids: &[String], max_ids: usize, max_bytes: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, id) in ids.iter().enumerate() {
        // A repeated string field: tag, length varint, bytes.
        let size = id.len() + 3;
        if i > start && (i - start >= max_ids.max(1) || bytes + size > max_bytes) {
            out.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < ids.len() {
        out.push(start..ids.len());
    }
    out
}

/// Longest accepted subscriber id.
pub const MAX_SUBSCRIBER_ID_LEN: usize = 128;

/// A read_committed consumer of one partition of `topic` from `offset`, for a server
/// stream (group `<prefix>-<group>`, never committed: the client holds the position).
pub(crate) fn partition_reader(
    rt: &Runtime,
    group: &str,
    topic: Topic,
    partition: i32,
    offset: Offset,
) -> Result<StreamConsumer, PushError> {
    let unavailable = |e: rdkafka::error::KafkaError| PushError::Unavailable(e.to_string());
    let consumer: StreamConsumer = rt
        .consumer_config()
        .set("group.id", format!("{}-{group}", rt.kafka.group_prefix))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .map_err(unavailable)?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(rt.names.name(topic), partition, offset).map_err(unavailable)?;
    consumer.assign(&tpl).map_err(unavailable)?;
    Ok(consumer)
}

/// The next record for a server stream, or `None` when the stream ends: the client went
/// away, or the server is shutting down, and then the client gets UNAVAILABLE (a status,
/// not a silent end: it knows to resume elsewhere). Consumer errors are logged and retried.
pub(crate) async fn next_record<'c, T>(
    consumer: &'c StreamConsumer,
    tx: &tokio::sync::mpsc::Sender<Result<T, Status>>,
    stop: &CancellationToken,
    stream: &'static str,
) -> Option<rdkafka::message::BorrowedMessage<'c>> {
    loop {
        let msg = tokio::select! {
            _ = tx.closed() => return None,
            _ = stop.cancelled() => {
                let _ = tokio::time::timeout(Duration::from_secs(1), tx.send(Err(Status::unavailable(SHUTTING_DOWN)))).await;
                return None;
            }
            m = consumer.recv() => m,
        };
        match msg {
            Ok(m) => return Some(m),
            Err(error) => {
                tracing::warn!(%error, stream, "stream consumer error");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// What the services share.
pub struct PushState {
    /// Kafka access.
    pub rt: Runtime,
    /// Resolutions.
    pub geo: GeoConfig,
    /// Shard map.
    pub shards: ShardMap,
    /// Partitions of the notifications topic.
    pub notification_partitions: u32,
    /// The subscriber index.
    pub index: Arc<SubscriberIndex>,
    /// Producer for the subscriptions topic.
    pub producer: FutureProducer,
    /// Most cells one subscription may cover.
    pub max_cells_per_subscription: usize,
    /// Most subscriber ids per streamed batch.
    pub max_ids_per_batch: usize,
    /// Most bytes of subscriber ids per streamed batch (half the response size limit, the
    /// rest is room for the alert).
    pub max_batch_id_bytes: usize,
    /// Streamed batches buffered per stream before backpressure.
    pub stream_buffer: usize,
    /// Ends open streams with UNAVAILABLE and refuses new ones (shutdown, after health
    /// has gone NOT_SERVING).
    pub streams_stop: CancellationToken,
}

impl std::fmt::Debug for PushState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushState").field("shards", &self.shards).finish()
    }
}

impl PushState {
    /// Turns an API subscription into the stored form (see [`stored_subscription`]).
    pub fn to_stored(&self, tenant: &str, api: pb::Subscription, now: Timestamp) -> Result<Subscription, PushError> {
        stored_subscription(&self.geo, &self.shards, self.max_cells_per_subscription, tenant, api, now)
    }

    /// Queues the records that store `sub` (one per shard) and tombstones the shards it
    /// left, returning their delivery futures.
    fn write(&self, sub: &Subscription) -> Result<Vec<rdkafka::producer::DeliveryFuture>, PushError> {
        let key = sub.key();
        let topic = self.rt.names.name(Topic::Subscriptions);
        let payload = pb::Subscription::from(sub).encode_to_vec();
        let old_shards: Vec<u32> = self.index.shards(&key).unwrap_or_default();
        let mut futures = Vec::with_capacity(sub.shards.len());
        for &shard in &sub.shards {
            let rec = FutureRecord::to(topic).key(&key).payload(&payload).partition(shard as i32);
            futures.push(self.producer.send_result(rec).map_err(|(e, _)| PushError::Unavailable(e.to_string()))?);
        }
        for shard in old_shards.into_iter().filter(|s| !sub.shards.contains(s)) {
            futures.push(self.tombstone(&key, shard)?);
        }
        Ok(futures)
    }

    /// Queues a tombstone for `key` on `shard`'s partition of the subscriptions topic.
    fn tombstone(&self, key: &str, shard: u32) -> Result<rdkafka::producer::DeliveryFuture, PushError> {
        let topic = self.rt.names.name(Topic::Subscriptions);
        let rec: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).key(key).partition(shard as i32);
        self.producer.send_result(rec).map_err(|(e, _)| PushError::Unavailable(e.to_string()))
    }
}

async fn await_all(futures: Vec<rdkafka::producer::DeliveryFuture>) -> Result<(), PushError> {
    for f in futures {
        match f.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(PushError::Unavailable(e.to_string())),
            Err(_) => return Err(PushError::Unavailable("producer dropped".into())),
        }
    }
    Ok(())
}

fn now(rt: &Runtime) -> Timestamp {
    (rt.clock)()
}

/// A valid subscriber id (trimmed), or INVALID_ARGUMENT naming `field`. The same rule for
/// writes and reads: `/` separates tenant and subscriber in stored keys, so it can never
/// appear in an id (no id can reach into another tenant's key space).
pub fn subscriber_id(field: &str, raw: &str) -> Result<String, PushError> {
    let id = raw.trim();
    if id.is_empty() || id.len() > MAX_SUBSCRIBER_ID_LEN || id.contains('/') {
        return Err(PushError::invalid(field, format!("must be 1..={MAX_SUBSCRIBER_ID_LEN} characters without '/'")));
    }
    Ok(id.to_owned())
}

/// Turns an API subscription into the stored form: a point or circle becomes a disc around
/// its center's cell at `geo.precision`, a polygon its cells at `geo.polygon_precision`.
/// The raw geometry is dropped here and never reaches Kafka.
pub fn stored_subscription(
    geo: &GeoConfig,
    shard_map: &ShardMap,
    max_cells: usize,
    tenant: &str,
    api: pb::Subscription,
    now: Timestamp,
) -> Result<Subscription, PushError> {
    let id = subscriber_id("subscription.subscriber_id", &api.subscriber_id)?;
    if api.areas.is_empty() {
        return Err(PushError::invalid("subscription.areas", "at least one area is required"));
    }
    let mut places = Vec::with_capacity(api.areas.len());
    let mut budget = max_cells;
    for (i, a) in api.areas.iter().enumerate() {
        let field = || format!("subscription.areas[{i}]");
        let area = Area::try_from(a).map_err(|e| PushError::invalid(field(), e))?;
        // Raw coordinates stop here: a center becomes its cell, a polygon its cells.
        places.push(match area {
            Area::Point(p) => Place::Disc { cell: p.cell(geo.precision), radius_m: 0.0 },
            Area::Circle { center, radius_m } => {
                Place::Disc { cell: center.cell(geo.precision), radius_m: radius_m as f32 }
            }
            Area::CellDisc { cell, radius_m } => Place::Disc { cell, radius_m: radius_m as f32 },
            Area::Polygon(_) | Area::MultiPolygon(_) | Area::Cells(_) => {
                let cells = hexcast_core::cells::subscriber_cells(&area, geo.polygon_precision, budget)
                    .map_err(|e| PushError::invalid(field(), e))?;
                budget = budget.saturating_sub(cells.len());
                Place::Cells(cells)
            }
        });
    }
    let filter = api.filter.unwrap_or_default();
    for (i, p) in filter.categories.iter().enumerate() {
        validate_prefix(p).map_err(|e| PushError::invalid(format!("subscription.filter.categories[{i}]"), e))?;
    }
    let min_severity = Severity::try_from(filter.min_severity)
        .map_err(|_| PushError::invalid("subscription.filter.min_severity", "unknown severity"))?;
    let (_, shards) = crate::index::shards_of(&places, shard_map);
    Ok(Subscription {
        tenant: tenant.to_owned(),
        subscriber_id: id,
        shards,
        places,
        filter: SubscriptionFilter { categories: filter.categories, min_severity, attributes: filter.attributes },
        updated_at: now,
    })
}

/// The Subscriptions service.
#[derive(Debug, Clone)]
pub struct SubscriptionsService(pub Arc<PushState>);

#[tonic::async_trait]
impl Subscriptions for SubscriptionsService {
    async fn upsert(&self, req: Request<pb::UpsertRequest>) -> Result<Response<pb::UpsertResponse>, Status> {
        let tenant = tenant_of(&req)?;
        let api = req.into_inner().subscription.ok_or_else(|| PushError::invalid("subscription", "is required"))?;
        let sub = self.0.to_stored(&tenant, api, now(&self.0.rt))?;
        await_all(self.0.write(&sub)?).await?;
        Ok(Response::new(pb::UpsertResponse { subscription: Some((&sub).into()) }))
    }

    async fn delete(&self, req: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        let tenant = tenant_of(&req)?;
        let id = subscriber_id("subscriber_id", &req.into_inner().subscriber_id)?;
        let key = hexcast_core::model::subscription_key(&tenant, &id);
        let existing = self.0.index.shards(&key);
        let shards: Vec<u32> = match &existing {
            Some(s) => s.clone(),
            // Not (yet) in the index: tombstone every shard so a write still in flight dies too.
            None => (0..self.0.shards.shards).collect(),
        };
        let futures = shards.into_iter().map(|shard| self.0.tombstone(&key, shard)).collect::<Result<Vec<_>, _>>()?;
        await_all(futures).await?;
        Ok(Response::new(pb::DeleteResponse { existed: existing.is_some() }))
    }

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::Subscription>, Status> {
        let tenant = tenant_of(&req)?;
        let id = subscriber_id("subscriber_id", &req.into_inner().subscriber_id)?;
        let key = hexcast_core::model::subscription_key(&tenant, &id);
        let sub = self.0.index.get(&key).ok_or_else(|| PushError::NotFound(format!("subscriber `{id}`")))?;
        Ok(Response::new((&sub).into()))
    }

    async fn bulk_upsert(
        &self,
        req: Request<Streaming<pb::UpsertRequest>>,
    ) -> Result<Response<pb::BulkUpsertResponse>, Status> {
        let tenant = tenant_of(&req)?;
        let mut stream = req.into_inner();
        let mut pending = Vec::new();
        let mut upserted = 0u64;
        let mut n = 0usize;
        while let Some(msg) = stream.next().await {
            let msg = msg?;
            let api = msg
                .subscription
                .ok_or_else(|| PushError::invalid(format!("message[{n}].subscription"), "is required"))?;
            let sub = self.0.to_stored(&tenant, api, now(&self.0.rt)).map_err(|e| match e {
                PushError::Invalid { field, message } => {
                    PushError::Invalid { field: format!("message[{n}].{field}"), message }
                }
                other => other,
            })?;
            pending.extend(self.0.write(&sub)?);
            n += 1;
            upserted += 1;
            // Bound what is in flight: settle deliveries in chunks.
            if pending.len() >= 50_000 {
                await_all(std::mem::take(&mut pending)).await?;
            }
        }
        await_all(pending).await?;
        Ok(Response::new(pb::BulkUpsertResponse { upserted }))
    }
}

/// The Push service.
#[derive(Debug, Clone)]
pub struct PushService(pub Arc<PushState>);

#[tonic::async_trait]
impl Push for PushService {
    type SubscribeStream = ReceiverStream<Result<pb::NotificationBatch, Status>>;

    async fn subscribe(&self, req: Request<pb::SubscribeRequest>) -> Result<Response<Self::SubscribeStream>, Status> {
        let tenant = tenant_of(&req)?;
        if self.0.streams_stop.is_cancelled() {
            return Err(Status::unavailable(SHUTTING_DOWN));
        }
        let r = req.into_inner();
        let state = Arc::clone(&self.0);
        let partition = tenant_partition(&tenant, state.notification_partitions);
        let (offset, skip) = if r.cursor.is_empty() {
            (if r.from_beginning { Offset::Beginning } else { Offset::End }, 0)
        } else {
            let c: Cursor = r.cursor.parse().map_err(|e| PushError::invalid("cursor", e))?;
            if c.partition != partition {
                return Err(PushError::invalid("cursor", "not a cursor of this tenant").into());
            }
            (Offset::Offset(c.offset), c.skip)
        };
        let max_ids = match r.max_batch_ids {
            0 => state.max_ids_per_batch,
            n => (n as usize).min(state.max_ids_per_batch),
        };
        let consumer = partition_reader(&state.rt, "push-stream", Topic::Notifications, partition, offset)?;
        let (tx, rx) = tokio::sync::mpsc::channel(state.stream_buffer.max(1));
        tracing::info!(tenant = %tenant, partition, "backend connected");
        metrics::gauge!("hexcast_push_connected_backends").increment(1.0);
        tokio::spawn(async move {
            let mut first = Some(skip);
            loop {
                let Some(msg) = next_record(&consumer, &tx, &state.streams_stop, "notifications").await else { break };
                let skip =
                    first.take().filter(|_| matches!(offset, Offset::Offset(o) if o == msg.offset())).unwrap_or(0)
                        as usize;
                if msg.key() != Some(tenant.as_bytes()) {
                    continue;
                }
                let Some(batch) = msg.payload().and_then(|p| pb::NotificationBatch::decode(p).ok()) else {
                    tracing::warn!(offset = msg.offset(), "undecodable notification record skipped");
                    continue;
                };
                // The key already names the tenant; the payload must agree, or it is not served.
                if batch.tenant != *tenant {
                    tracing::warn!(
                        offset = msg.offset(),
                        "notification record of another tenant under this key skipped"
                    );
                    continue;
                }
                let ids = batch.subscriber_ids.get(skip..).unwrap_or_default();
                let chunks = split_ids(ids, max_ids, state.max_batch_id_bytes);
                let last = chunks.len().saturating_sub(1);
                for (i, range) in chunks.into_iter().enumerate() {
                    let cursor = if i == last {
                        Cursor { partition, offset: msg.offset() + 1, skip: 0 }
                    } else {
                        Cursor { partition, offset: msg.offset(), skip: (skip + range.end) as u32 }
                    };
                    let chunk = &ids[range];
                    let out = pb::NotificationBatch {
                        alert: batch.alert.clone(),
                        tenant: batch.tenant.clone(),
                        subscriber_ids: chunk.to_vec(),
                        cursor: cursor.to_string(),
                        part: batch.part,
                        parts: batch.parts,
                        request: batch.request.clone(),
                        nearby_assets: batch.nearby_assets.clone(),
                    };
                    if tx.send(Ok(out)).await.is_err() {
                        break;
                    }
                }
                // From the record's commit to Kafka to its hand-off to the client's stream.
                if let Some(ts) = msg.timestamp().to_millis() {
                    let secs = (now_ms() - ts).max(0) as f64 / 1000.0;
                    metrics::histogram!("hexcast_push_delivery_seconds").record(secs);
                }
                metrics::counter!("hexcast_push_delivered_ids_total").increment(ids.len() as u64);
            }
            metrics::gauge!("hexcast_push_connected_backends").decrement(1.0);
            tracing::info!(tenant = %tenant, "backend disconnected");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::split_ids;

    #[test]
    fn batches_are_bounded_by_count_and_bytes_and_cover_every_id_once() {
        let ids: Vec<String> = (0..25).map(|i| format!("id-{i:02}")).collect(); // 5 bytes + 3
        assert_eq!(split_ids(&ids, 10, usize::MAX), vec![0..10, 10..20, 20..25]);
        assert_eq!(split_ids(&ids, 100, 8 * 7), vec![0..7, 7..14, 14..21, 21..25]);
        assert_eq!(split_ids(&ids, 3, 8 * 7), (0..9).map(|k| k * 3..(k * 3 + 3).min(25)).collect::<Vec<_>>());
        // An id larger than the budget still goes out, alone.
        let big = vec!["x".repeat(100), "y".into()];
        assert_eq!(split_ids(&big, 10, 50), vec![0..1, 1..2]);
        assert!(split_ids(&[], 10, 100).is_empty());
    }
}
