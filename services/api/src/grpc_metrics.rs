//! Every gRPC request counted by service, method and status code:
//! `hexcast_grpc_requests_total{service, method, code}`, and its handling time until the
//! response starts: `hexcast_grpc_request_seconds{service, method}`. A tower layer in front
//! of every service of the gateway.
//!
//! The code is the one the response starts with: a call refused or failed before its first
//! message (bad argument, bad token, unknown cursor) is answered with its status in the
//! headers (gRPC's "trailers-only" form) and counted under it; a call that starts answering
//! counts as `OK` (a server stream that fails later ends with its status in the trailers,
//! which this layer does not wait for).

use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;

/// Names of the time series.
pub const REQUESTS: &str = "hexcast_grpc_requests_total";
/// Handling time until the response starts.
pub const REQUEST_SECONDS: &str = "hexcast_grpc_request_seconds";

/// The layer: wraps every service of a server.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower_layer::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner }
    }
}

/// A service counted by [`GrpcMetricsLayer`].
#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

/// `(service, method)` of a request path `/package.Service/Method`; anything else (a scan,
/// a typo) is `("other", "other")`, so that labels stay few.
fn labels(path: &str) -> (String, String) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    match (parts.next(), parts.next()) {
        (Some(service), Some(method))
            if (service.starts_with("hexcast.") || service.starts_with("grpc."))
                && !method.is_empty()
                && method.chars().all(|c| c.is_ascii_alphanumeric()) =>
        {
            (service.to_owned(), method.to_owned())
        }
        _ => ("other".to_owned(), "other".to_owned()),
    }
}

/// The status a response starts with (`grpc-status` header), `OK` when it has none.
fn code<B>(response: &http::Response<B>) -> tonic::Code {
    response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from_i32)
}

impl<S, B, RB> tower_service::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (service, method) = labels(request.uri().path());
        // The clone is the one that was made ready; `self` keeps a fresh one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let started = Instant::now();
            let response = inner.call(request).await;
            if let Ok(r) = &response {
                let code = format!("{:?}", code(r));
                metrics::histogram!(REQUEST_SECONDS, "service" => service.clone(), "method" => method.clone())
                    .record(started.elapsed().as_secs_f64());
                metrics::counter!(REQUESTS, "service" => service, "method" => method, "code" => code).increment(1);
            }
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_become_few_labels() {
        assert_eq!(labels("/hexcast.v1.Push/Subscribe"), ("hexcast.v1.Push".into(), "Subscribe".into()));
        assert_eq!(labels("/grpc.health.v1.Health/Check"), ("grpc.health.v1.Health".into(), "Check".into()));
        for junk in ["/", "/wp-admin/x.php", "/hexcast.v1.Push/", "/hexcast.v1.Push/a/b", "x"] {
            assert_eq!(labels(junk), ("other".into(), "other".into()), "{junk}");
        }
    }

    #[test]
    fn the_status_a_response_starts_with() {
        let ok = http::Response::builder().body(()).expect("response");
        assert_eq!(code(&ok), tonic::Code::Ok);
        let refused = http::Response::builder().header("grpc-status", "3").body(()).expect("response");
        assert_eq!(code(&refused), tonic::Code::InvalidArgument);
        let unauthenticated = http::Response::builder().header("grpc-status", "16").body(()).expect("response");
        assert_eq!(format!("{:?}", code(&unauthenticated)), "Unauthenticated");
    }
}
