//! Metrics shared by every stage, declared once: the runner records the same set for every
//! stage so that one dashboard serves them all. Labels are bounded (stage, topic,
//! partition, reason), never ids or cells.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use hexcast_core::Topic;
use metrics_exporter_prometheus::PrometheusBuilder;

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
/// Consumer lag by assigned partition: last stable offset minus committed offset,
/// refreshed every `runner.lag_refresh_ms`; 0 once the partition is revoked.
pub const LAG: &str = "hexcast_runner_consumer_lag_records";
/// 1 while the stage is stalled: its input waits and nothing was committed for
/// `runner.stall_after_secs`.
pub const STALLED: &str = "hexcast_runner_stalled";
/// Hanging transactional offset commits the runner closed (after an unclean broker stop).
pub const REPAIRED: &str = "hexcast_runner_hanging_commits_closed_total";
/// Per input record: from its timestamp (when it was produced to the stage's input topic)
/// to the commit of the batch that consumed it. The stage's share of the latency.
pub const RECORD_LATENCY_SECONDS: &str = "hexcast_runner_record_latency_seconds";
/// Per input record: from the origin time (the raw record's timestamp, carried in
/// [`ORIGIN_HEADER`]) to the commit of the batch that consumed it at this stage.
pub const END_TO_END_SECONDS: &str = "hexcast_runner_end_to_end_latency_seconds";

/// Header with the Unix ms timestamp of the raw record a record derives from: the first
/// stage sets it from its input's timestamp, later stages copy it.
pub const ORIGIN_HEADER: &str = "hexcast-origin-ms";

/// Bucket bounds in seconds of every histogram: exported as Prometheus histograms
/// (`_bucket` series) rather than summaries, so they aggregate across pods.
pub const LATENCY_BUCKETS_SECONDS: [f64; 16] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// Describes the runner metrics to the recorder (help texts on /metrics).
pub fn describe() {
    metrics::describe_counter!(RECEIVED, "records consumed by a stage");
    metrics::describe_counter!(EMITTED, "records produced by a stage, by topic");
    metrics::describe_counter!(FILTERED, "inputs a stage consumed without output or reject");
    metrics::describe_counter!(REJECTED, "inputs dead-lettered, by reason");
    metrics::describe_histogram!(BATCH_SECONDS, metrics::Unit::Seconds, "process and commit time per batch");
    metrics::describe_counter!(BATCHES, "batches committed");
    metrics::describe_counter!(ABORTED, "batches abandoned and retried");
    metrics::describe_gauge!(LAG, "consumer lag in records (last stable offset minus committed), by partition");
    metrics::describe_gauge!(STALLED, "1 while input waits and the stage commits nothing");
    metrics::describe_counter!(REPAIRED, "hanging transactional offset commits closed by the runner");
    metrics::describe_histogram!(
        RECORD_LATENCY_SECONDS,
        metrics::Unit::Seconds,
        "input record timestamp to the commit that consumed it"
    );
    metrics::describe_histogram!(
        END_TO_END_SECONDS,
        metrics::Unit::Seconds,
        "raw record timestamp to the commit that consumed its descendant at this stage"
    );
}

/// The exporter's builder: every histogram with [`LATENCY_BUCKETS_SECONDS`].
pub fn prometheus_builder() -> anyhow::Result<PrometheusBuilder> {
    PrometheusBuilder::new()
        .set_buckets(&LATENCY_BUCKETS_SECONDS)
        .map_err(|e| anyhow::anyhow!("histogram buckets: {e}"))
}

/// Installs the Prometheus exporter on `listen`.
pub fn install_prometheus(listen: std::net::SocketAddr) -> anyhow::Result<()> {
    prometheus_builder()?
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
    /// Total lag over the assigned partitions at the last refresh.
    pub lag_records: AtomicU64,
    /// Input waits and nothing was committed for `runner.stall_after_secs`: the health
    /// service reports the target NOT_SERVING while this is set.
    pub stalled: AtomicBool,
    /// Unix ms of the last commit (or of the stage's start).
    pub last_commit_ms: AtomicU64,
    partitions: Mutex<BTreeSet<i32>>,
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

    /// Whether the stage is stalled (see [`StageStats::stalled`]).
    pub fn is_stalled(&self) -> bool {
        self.stalled.load(Ordering::SeqCst)
    }

    /// The partitions the stage's consumer holds now.
    pub fn partitions(&self) -> BTreeSet<i32> {
        self.partitions.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Adds assigned partitions; returns how many are held.
    pub(crate) fn assign(&self, partitions: impl IntoIterator<Item = i32>) -> usize {
        let mut held = self.partitions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        held.extend(partitions);
        self.assigned_partitions.store(held.len() as u64, Ordering::SeqCst);
        held.len()
    }

    /// Removes revoked partitions.
    pub(crate) fn revoke(&self, partitions: &[i32]) {
        let mut held = self.partitions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for p in partitions {
            held.remove(p);
        }
        self.assigned_partitions.store(held.len() as u64, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_exported_with_buckets_not_as_summaries() {
        let recorder = prometheus_builder().expect("builder").build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::histogram!(BATCH_SECONDS, "stage" => "t").record(0.003);
            metrics::histogram!(END_TO_END_SECONDS, "stage" => "t").record(0.2);
        });
        let text = handle.render();
        assert!(text.contains("hexcast_runner_batch_seconds_bucket{stage=\"t\",le=\"0.005\"} 1"), "{text}");
        assert!(text.contains("hexcast_runner_end_to_end_latency_seconds_bucket"), "{text}");
        assert!(!text.contains("quantile="), "summaries remain: {text}");
    }

    #[test]
    fn revoked_partitions_are_no_longer_held() {
        let stats = StageStats::default();
        assert_eq!(stats.assign([0, 1, 2]), 3);
        stats.revoke(&[1]);
        assert_eq!(stats.partitions().into_iter().collect::<Vec<_>>(), vec![0, 2]);
        assert_eq!(stats.assigned_partitions.load(Ordering::SeqCst), 2);
    }
}
