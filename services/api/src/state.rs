//! What the gateway's services share: the runtime (clock, topic names), the writer every
//! service writes through, the subscriber index (read for shard routing and Get), limits,
//! and the token that ends open streams at shutdown. Also the one loop that feeds a
//! server stream from a partition reader.

use std::sync::Arc;
use std::time::Duration;

use hexcast_core::cells::{GeoConfig, ShardMap};
use hexcast_core::{OutRecord, Timestamp};
use hexcast_match::SubscriberIndex;
use hexcast_runtime::{PartitionReader, ReadRecord, Runtime, ShardFollower, Writer};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::error::PushError;

/// The status that ends streams at shutdown.
pub const SHUTTING_DOWN: &str = "server shutting down: reconnect with the last cursor";

/// What the services share.
pub struct ApiState {
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
    /// Writes every record the services produce.
    pub writer: Writer,
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
    /// Which subscriptions partitions the index holds; `None`: every one.
    pub held: Option<Arc<ShardFollower>>,
    /// The other push instances (`push.peers`): Get and Delete of a subscriber held
    /// elsewhere are forwarded to them.
    pub peers: Vec<(String, tonic::transport::Channel)>,
    /// Polygon covers by content (identical neighborhoods are covered once).
    pub covers: crate::covers::CoverCache,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState").field("shards", &self.shards).finish()
    }
}

impl ApiState {
    /// The runtime's clock.
    pub fn now(&self) -> Timestamp {
        (self.rt.clock)()
    }

    /// Whether the index holds every shard's subscribers (a single instance, or one
    /// whose assignment is all partitions): then a subscriber it does not know exists
    /// nowhere.
    pub fn holds_every_shard(&self) -> bool {
        self.held.as_ref().is_none_or(|f| f.status().is_caught_up() && f.held().len() as u32 >= self.shards.shards)
    }

    /// Writes `records` through the writer, awaiting delivery.
    pub async fn write(&self, records: impl IntoIterator<Item = OutRecord>) -> Result<(), PushError> {
        Ok(self.writer.write(records).await?)
    }
}

/// The next record for a server stream, or `None` when the stream ends: the client went
/// away, or the server is shutting down, and then the client gets UNAVAILABLE (a status,
/// not a silent end: it knows to resume elsewhere).
pub async fn next_record<T>(
    reader: &PartitionReader,
    tx: &tokio::sync::mpsc::Sender<Result<T, Status>>,
    stop: &CancellationToken,
) -> Option<ReadRecord> {
    tokio::select! {
        _ = tx.closed() => None,
        _ = stop.cancelled() => {
            let _ = tokio::time::timeout(Duration::from_secs(1), tx.send(Err(Status::unavailable(SHUTTING_DOWN)))).await;
            None
        }
        r = reader.next() => Some(r),
    }
}
