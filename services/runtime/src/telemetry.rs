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

/// Installs the Prometheus exporter on `listen`, with the process metrics.
pub fn install_prometheus(listen: std::net::SocketAddr) -> anyhow::Result<()> {
    prometheus_builder()?
        .with_http_listener(listen)
        .install()
        .map_err(|e| anyhow::anyhow!("starting the metrics endpoint on {listen}: {e}"))?;
    describe();
    spawn_process_metrics();
    Ok(())
}

/// CPU time of the process, seconds (user + system).
pub const PROCESS_CPU_SECONDS: &str = "process_cpu_seconds_total";
/// Resident memory, bytes.
pub const PROCESS_RESIDENT_BYTES: &str = "process_resident_memory_bytes";
/// Open file descriptors.
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
/// Threads.
pub const PROCESS_THREADS: &str = "process_threads";

/// What `/proc/self` says about the process (Linux), under the names Prometheus' own
/// clients use.
#[derive(Debug, Clone, Copy, PartialEq)]
struct ProcessSample {
    cpu_seconds: f64,
    resident_bytes: f64,
    threads: f64,
}

/// Parses `/proc/self/stat` (CPU ticks, threads) and `/proc/self/status` (`VmRSS`).
/// /proc counts CPU time in USER_HZ ticks, 100 per second on every Linux architecture.
fn parse_process(stat: &str, status: &str) -> Option<ProcessSample> {
    // Fields after the command name, which may itself hold spaces and parentheses.
    let after = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // fields[0] is field 3 (state): utime is field 14, stime 15, num_threads 20.
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    let cpu_seconds = (ticks(11)? + ticks(12)?) / 100.0;
    let threads = ticks(17)?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())?;
    Some(ProcessSample { cpu_seconds, resident_bytes: rss_kb * 1024.0, threads })
}

/// Exports the process metrics every 5 s from a thread of their own (Linux only; elsewhere
/// nothing is exported).
fn spawn_process_metrics() {
    metrics::describe_counter!(PROCESS_CPU_SECONDS, metrics::Unit::Seconds, "user and system CPU time of the process");
    metrics::describe_gauge!(PROCESS_RESIDENT_BYTES, metrics::Unit::Bytes, "resident memory of the process");
    metrics::describe_gauge!(PROCESS_OPEN_FDS, "open file descriptors of the process");
    metrics::describe_gauge!(PROCESS_THREADS, "threads of the process");
    let spawned = std::thread::Builder::new().name("process-metrics".into()).spawn(|| {
        loop {
            let stat = std::fs::read_to_string("/proc/self/stat");
            let status = std::fs::read_to_string("/proc/self/status");
            let (Ok(stat), Ok(status)) = (stat, status) else { return };
            if let Some(p) = parse_process(&stat, &status) {
                metrics::counter!(PROCESS_CPU_SECONDS).absolute(p.cpu_seconds.round() as u64);
                metrics::gauge!(PROCESS_RESIDENT_BYTES).set(p.resident_bytes);
                metrics::gauge!(PROCESS_THREADS).set(p.threads);
            }
            if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
                metrics::gauge!(PROCESS_OPEN_FDS).set(fds.count() as f64);
            }
            std::thread::sleep(std::time::Duration::from_secs(5));
        }
    });
    if let Err(error) = spawned {
        tracing::warn!(%error, "no process metrics: cannot start their thread");
    }
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
    fn process_metrics_are_parsed_from_proc() {
        // A command name with a space and a parenthesis, as /proc may show it.
        let stat = "4242 (stage) x) S 1 4242 4242 0 -1 4194560 2000 0 0 0 250 130 0 0 20 0 37 0 100 \
                    500000000 12000 18446744073709551615";
        let status = "Name:\tstage\nVmPeak:\t  900000 kB\nVmRSS:\t  204800 kB\nThreads:\t37\n";
        let p = parse_process(stat, status).expect("parsed");
        assert_eq!(p, ProcessSample { cpu_seconds: 3.8, resident_bytes: 204_800.0 * 1024.0, threads: 37.0 });
        assert_eq!(parse_process("garbage", status), None);
        assert_eq!(parse_process(stat, "Name: x"), None);
        // This process, for real.
        let real = parse_process(
            &std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat"),
            &std::fs::read_to_string("/proc/self/status").expect("/proc/self/status"),
        )
        .expect("this process parses");
        assert!(real.resident_bytes > 1_000_000.0 && real.threads >= 1.0, "{real:?}");
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
