//! The process health endpoint: grpc.health.v1 on `[health] listen`, for Kubernetes' native
//! gRPC probes. SERVING only while the process does its job: every stage holds partitions
//! and the subscriber index has caught up ([`Readiness`]); NOT_SERVING before that, when a
//! rebalance takes a stage's partitions away, and as soon as shutdown begins, so traffic
//! drains before the process exits.

use std::net::SocketAddr;

use anyhow::Context as _;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use std::sync::Arc;

use hexcast_runtime::{FollowerStatus, ShardFollower, StageStats};

/// `[health]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Address of the gRPC health service; none: not served.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}

/// What "ready" means for this process: every stage holds partitions and the subscriber
/// index has caught up. Cheap to check; shared with the health endpoint.
#[derive(Debug, Clone)]
pub struct Readiness {
    stages: Vec<(&'static str, Arc<StageStats>)>,
    index: Option<Arc<FollowerStatus>>,
    /// The push target: the subscriptions partitions held, and the matcher's assignment.
    shards: Option<(Arc<ShardFollower>, Arc<StageStats>)>,
}

impl Readiness {
    /// Readiness over these stages' counters and, for a push target, the subscriptions
    /// follower.
    pub fn new(stages: Vec<(&'static str, Arc<StageStats>)>, index: Option<Arc<FollowerStatus>>) -> Self {
        Self { stages, index, shards: None }
    }

    /// Also requires the index to hold the subscriptions partitions of every alerts.indexed
    /// partition the matcher is assigned.
    pub fn with_shards(mut self, follower: Arc<ShardFollower>, matcher: Arc<StageStats>) -> Self {
        self.shards = Some((follower, matcher));
        self
    }

    /// `Ok` when the process is doing its job; else why not, in words for the log.
    pub fn check(&self) -> Result<(), String> {
        for (name, stats) in &self.stages {
            if stats.assigned_partitions.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                return Err(format!("stage {name} holds no partition"));
            }
            if stats.is_stalled() {
                return Err(format!("stage {name} is stalled: input waits and nothing was committed"));
            }
        }
        if let Some(index) = &self.index
            && !index.is_caught_up()
        {
            let applied = index.applied.load(std::sync::atomic::Ordering::Relaxed);
            return Err(format!("subscriber index still loading ({applied} records applied)"));
        }
        if let Some((follower, matcher)) = &self.shards {
            let (assigned, held) = (matcher.partitions(), follower.held());
            if !assigned.is_subset(&held) {
                return Err(format!("subscriber index holds shards {held:?}, not yet all of {assigned:?}"));
            }
        }
        Ok(())
    }
}

/// Serves health on `listen` until `shutdown`; returns the reporter to flip the status.
pub async fn serve(listen: SocketAddr, shutdown: CancellationToken) -> anyhow::Result<HealthReporter> {
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding health.listen {listen}"))?;
    Ok(serve_on(listener, shutdown).await)
}

/// [`serve`] on a bound listener; the status starts NOT_SERVING.
pub async fn serve_on(listener: tokio::net::TcpListener, shutdown: CancellationToken) -> HealthReporter {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_service_status("", ServingStatus::NotServing).await;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(async move {
        let result = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
            .await;
        if let Err(error) = result {
            tracing::error!(%error, "health server failed");
        }
    });
    reporter
}

/// Keeps `reporter` in step with `readiness` (checked every `every`) until `shutdown`, then
/// reports NOT_SERVING. Every change is logged with its reason and exported as the gauge
/// `hexcast_ready` (1 serving, 0 not).
pub async fn watch(
    reporter: HealthReporter,
    readiness: Readiness,
    every: std::time::Duration,
    shutdown: CancellationToken,
) {
    let mut last: Option<Result<(), String>> = None;
    loop {
        let now = readiness.check();
        if last.as_ref() != Some(&now) {
            match &now {
                Ok(()) => {
                    tracing::info!("ready: every stage holds partitions, the index has caught up");
                    reporter.set_service_status("", ServingStatus::Serving).await;
                }
                Err(why) => {
                    tracing::warn!(reason = %why, "not ready");
                    reporter.set_service_status("", ServingStatus::NotServing).await;
                }
            }
            metrics::gauge!("hexcast_ready").set(if now.is_ok() { 1.0 } else { 0.0 });
            last = Some(now);
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(every) => {}
        }
    }
    reporter.set_service_status("", ServingStatus::NotServing).await;
    metrics::gauge!("hexcast_ready").set(0.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_partitions_for_every_stage_and_a_caught_up_index() {
        let (a, b) = (Arc::new(StageStats::default()), Arc::new(StageStats::default()));
        let index = Arc::new(FollowerStatus::default());
        let r = Readiness {
            stages: vec![("ingest", Arc::clone(&a)), ("push", Arc::clone(&b))],
            index: Some(Arc::clone(&index)),
            shards: None,
        };
        assert!(r.check().expect_err("nothing assigned").contains("ingest"));
        a.assigned_partitions.store(3, std::sync::atomic::Ordering::SeqCst);
        assert!(r.check().expect_err("push unassigned").contains("push"));
        b.assigned_partitions.store(1, std::sync::atomic::Ordering::SeqCst);
        assert!(r.check().expect_err("index loading").contains("index"));
        index.caught_up.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(r.check(), Ok(()));
        b.stalled.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(r.check().expect_err("stalled").contains("stalled"));
        b.stalled.store(false, std::sync::atomic::Ordering::SeqCst);
        a.assigned_partitions.store(0, std::sync::atomic::Ordering::SeqCst);
        assert!(r.check().is_err(), "a revoked stage is not ready");
    }
}
