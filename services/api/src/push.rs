//! The Push service: durable, resumable notification streams. A backend reads its tenant's
//! partition of the notifications topic from a cursor it holds; a batch larger than the
//! response limit is split, and the cursor can point inside a record, so a resumed stream
//! neither repeats nor skips an id. A tenant never sees another tenant's notifications.

use std::sync::Arc;

use hexcast_core::Topic;
use hexcast_match::tenant_partition;
use hexcast_proto::v1 as pb;
use hexcast_proto::v1::push_server::Push;
use hexcast_runtime::{PartitionReader, StartAt};
use prost::Message as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth::tenant_of;
use crate::cursor::Cursor;
use crate::error::PushError;
use crate::state::{ApiState, SHUTTING_DOWN, next_record};

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

/// The Push service.
#[derive(Debug, Clone)]
pub struct PushService(pub Arc<ApiState>);

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
            (if r.from_beginning { StartAt::Beginning } else { StartAt::End }, 0)
        } else {
            let c: Cursor = r.cursor.parse().map_err(|e| PushError::invalid("cursor", e))?;
            if c.partition != partition {
                return Err(PushError::invalid("cursor", "not a cursor of this tenant").into());
            }
            (StartAt::Offset(c.offset), c.skip)
        };
        let max_ids = match r.max_batch_ids {
            0 => state.max_ids_per_batch,
            n => (n as usize).min(state.max_ids_per_batch),
        };
        let reader = PartitionReader::open(&state.rt, "push-stream", Topic::Notifications, partition, offset)
            .map_err(PushError::from)?;
        // A cursor this partition never reached (another cluster's, a reset topic's) would
        // otherwise wait forever for records that are not coming.
        if let StartAt::Offset(o) = offset {
            let (_, end) = reader.watermarks(&state.rt, Topic::Notifications, partition).map_err(PushError::from)?;
            if o > end {
                return Err(
                    PushError::OutOfRange(format!("cursor: offset {o} is past the end of the stream ({end})")).into()
                );
            }
        }
        let (tx, rx) = tokio::sync::mpsc::channel(state.stream_buffer.max(1));
        tracing::info!(tenant = %tenant, partition, "backend connected");
        metrics::gauge!("hexcast_push_connected_backends").increment(1.0);
        tokio::spawn(async move {
            let mut first = Some(skip);
            loop {
                let Some(msg) = next_record(&reader, &tx, &state.streams_stop).await else { break };
                let skip = first.take().filter(|_| matches!(offset, StartAt::Offset(o) if o == msg.offset)).unwrap_or(0)
                    as usize;
                if msg.record.key.as_deref() != Some(tenant.as_bytes()) {
                    continue;
                }
                let Some(batch) = msg.record.payload.as_deref().and_then(|p| pb::NotificationBatch::decode(p).ok())
                else {
                    tracing::warn!(offset = msg.offset, "undecodable notification record skipped");
                    continue;
                };
                // The key already names the tenant; the payload must agree, or it is not served.
                if batch.tenant != *tenant {
                    tracing::warn!(offset = msg.offset, "notification record of another tenant under this key skipped");
                    continue;
                }
                let all = &batch.subscriber_ids;
                let ids = all.get(skip..).unwrap_or_default();
                // Pieces are numbered over the whole record, so a resumed stream (same
                // max_batch_ids) labels them as the first reading did.
                let pieces = split_ids(all, max_ids, state.max_batch_id_bytes);
                let count = pieces.len() as u32;
                let expired = batch.expires_at_ms != 0 && hexcast_runtime::clock::now().0 >= batch.expires_at_ms;
                let last = pieces.len().saturating_sub(1);
                for (i, range) in pieces.into_iter().enumerate() {
                    if range.end <= skip {
                        continue;
                    }
                    let range = range.start.max(skip)..range.end;
                    let cursor = if i == last {
                        Cursor { partition, offset: msg.offset + 1, skip: 0 }
                    } else {
                        Cursor { partition, offset: msg.offset, skip: range.end as u32 }
                    };
                    let out = pb::NotificationBatch {
                        alert: batch.alert.clone(),
                        tenant: batch.tenant.clone(),
                        subscriber_ids: all[range.clone()].to_vec(),
                        cursor: cursor.to_string(),
                        part: batch.part,
                        parts: batch.parts,
                        request: batch.request.clone(),
                        nearby_assets: batch.nearby_assets.clone(),
                        language: batch.language.clone(),
                        deferred_from_ms: batch.deferred_from_ms,
                        expires_at_ms: batch.expires_at_ms,
                        expired,
                        collapse_key: batch.collapse_key.clone(),
                        idempotency_keys: batch.idempotency_keys.get(range).map(<[String]>::to_vec).unwrap_or_default(),
                        piece: i as u32,
                        pieces: count,
                    };
                    if tx.send(Ok(out)).await.is_err() {
                        break;
                    }
                }
                // From the record's commit to Kafka to its hand-off to the client's stream.
                if let Some(ts) = msg.timestamp_ms {
                    let secs = (hexcast_runtime::clock::now().0 - ts).max(0) as f64 / 1000.0;
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
