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

use crate::targets::Readiness;

/// `[health]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Address of the gRPC health service; none: not served.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
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
