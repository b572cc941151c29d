//! The process health endpoint: grpc.health.v1 on `[health] listen`, for Kubernetes' native
//! gRPC probes. SERVING once every target has started and while none has died;
//! NOT_SERVING as soon as shutdown begins, so traffic drains before the process exits.

use std::net::SocketAddr;

use anyhow::Context as _;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

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
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_service_status("", ServingStatus::NotServing).await;
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding health.listen {listen}"))?;
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
    Ok(reporter)
}
