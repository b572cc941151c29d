//! Metrics shared by every stage, declared once: the runner records the same set for every
//! stage so that one dashboard serves them all. Labels are bounded (stage, topic,
//! partition, reason), never ids or cells.

use std::sync::atomic::{AtomicU64, Ordering};

use hexcast_core::Topic;

/// Records consumed by a stage.
pub const RECEIVED: &str = "hexcast_runner_records_received_total";
/// Records produced by a stage, by destination topic.
pub const EMITTED: &str = "hexcast_runner_records_emitted_total";
/// Inputs that produced no output and were not rejected (filtered by the stage).
pub const FILTERED: &str = "hexcast_runner_records_filtered_total";
/// Inputs dead-lettered, by reason.
pub const REJECTED: &str = "hexcast_runner_records_rejected_total";
/// Time to process and commit one batch.
pub const BATCH_SECONDS: &str = "hexcast_runner_batch_seconds";
/// Batches committed.
pub const BATCHES: &str = "hexcast_runner_batches_committed_total";
/// Batches abandoned (transaction aborted or rebalance) and retried.
pub const ABORTED: &str = "hexcast_runner_batches_aborted_total";
/// Consumer lag by partition, from the client's statistics.
pub const LAG: &str = "hexcast_runner_consumer_lag_records";

/// Describes the runner metrics to the recorder (help texts on /metrics).
pub fn describe() {
    metrics::describe_counter!(RECEIVED, "records consumed by a stage");
    metrics::describe_counter!(EMITTED, "records produced by a stage, by topic");
    metrics::describe_counter!(FILTERED, "inputs a stage consumed without output or reject");
    metrics::describe_counter!(REJECTED, "inputs dead-lettered, by reason");
    metrics::describe_histogram!(BATCH_SECONDS, metrics::Unit::Seconds, "process and commit time per batch");
    metrics::describe_counter!(BATCHES, "batches committed");
    metrics::describe_counter!(ABORTED, "batches abandoned and retried");
    metrics::describe_gauge!(LAG, "consumer lag in records, by partition");
}

/// Installs the Prometheus exporter on `listen`.
pub fn install_prometheus(listen: std::net::SocketAddr) -> anyhow::Result<()> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(listen)
        .install()
        .map_err(|e| anyhow::anyhow!("starting the metrics endpoint on {listen}: {e}"))?;
    describe();
    Ok(())
}

/// In-process counters of one running stage, for the demo's summary and for tests.
#[derive(Debug, Default)]
pub struct StageStats {
    /// Inputs consumed in committed batches.
    pub received: AtomicU64,
    /// Inputs dead-lettered in committed batches.
    pub rejected: AtomicU64,
    /// Batches committed.
    pub batches: AtomicU64,
    /// Batches abandoned.
    pub aborted: AtomicU64,
    /// Partitions currently assigned to the stage's consumer.
    pub assigned_partitions: AtomicU64,
    emitted: [AtomicU64; Topic::ALL.len()],
}

impl StageStats {
    /// Outputs to `topic` in committed batches.
    pub fn emitted(&self, topic: Topic) -> u64 {
        self.emitted[topic.index()].load(Ordering::Relaxed)
    }

    pub(crate) fn add_emitted(&self, topic: Topic, n: u64) {
        self.emitted[topic.index()].fetch_add(n, Ordering::Relaxed);
    }
}
