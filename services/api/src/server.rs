//! Assembles the gateway: the gRPC server (Push, Subscriptions, Requests, Assets, health,
//! reflection) behind bearer-token authentication, optionally over TLS (rustls), over the
//! tables the runtime's followers keep; and, for the review target, the Review service on
//! its own listener with the same plumbing. One token stops a server, in this order: health
//! NOT_SERVING, open streams end with UNAVAILABLE (the client resumes from its last cursor
//! elsewhere), a grace period, then the listener closes.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hexcast_core::cells::{GeoConfig, ShardMap};
use hexcast_match::{AssetIndex, AssetsConfig, SubscriberIndex};
use hexcast_proto::v1::assets_server::AssetsServer;
use hexcast_proto::v1::push_server::PushServer;
use hexcast_proto::v1::requests_server::RequestsServer;
use hexcast_proto::v1::review_server::ReviewServer;
use hexcast_proto::v1::subscriptions_server::SubscriptionsServer;
use hexcast_review::PendingMap;
use hexcast_runtime::{Runtime, ShardFollower, Writer};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Identity, ServerTlsConfig};

use crate::assets::AssetsService;
use crate::auth::{Role, Tokens};
use crate::grpc_metrics::GrpcMetricsLayer;
use crate::push::PushService;
use crate::requests::{RequestStore, RequestsConfig, RequestsService};
use crate::review::ReviewService;
use crate::state::ApiState;
use crate::subscriptions::SubscriptionsService;

/// How long requests still in flight after the grace period may take before their
/// connections are closed.
const IN_FLIGHT_DEADLINE: Duration = Duration::from_secs(5);

/// `[push]` configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    /// gRPC listen address.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// TOML file of `tenant = "token"`; required to serve gRPC.
    #[serde(default)]
    pub tokens_file: Option<PathBuf>,
    /// Most subscriber ids per stored notification record and per streamed batch.
    #[serde(default = "default_max_ids")]
    pub max_ids_per_batch: NonZeroUsize,
    /// Streamed batches buffered per backend before HTTP/2 backpressure applies.
    #[serde(default = "default_stream_buffer")]
    pub stream_buffer: NonZeroUsize,
    /// Most cells one subscription may cover at the configured precision.
    #[serde(default = "default_max_cells")]
    pub max_cells_per_subscription: NonZeroUsize,
    /// PEM certificate chain; with `tls_key_file`, the server speaks TLS only (rustls).
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
    /// HTTP/2 PING interval (and TCP keepalive) towards idle clients.
    #[serde(default = "default_keepalive_interval_ms")]
    pub keepalive_interval_ms: u64,
    /// A client that does not answer a PING within this is disconnected.
    #[serde(default = "default_keepalive_timeout_ms")]
    pub keepalive_timeout_ms: u64,
    /// Largest request message accepted (larger: OUT_OF_RANGE, as tonic answers).
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: NonZeroUsize,
    /// Largest response message sent.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: NonZeroUsize,
    /// After health turns NOT_SERVING and streams end, how long the listener stays open
    /// (answering health checks, refusing new streams) before it closes.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// `[push.requests]`: geofenced requests from agency tenants.
    #[serde(default)]
    pub requests: RequestsConfig,
    /// `[push.assets]`: registered assets and alert enrichment.
    #[serde(default)]
    pub assets: AssetsConfig,
    /// The gRPC addresses (`http://host:port`) of the other push instances of the
    /// cluster. Each instance holds only its shards' subscribers; `Subscriptions.Get` and
    /// `Delete` for a subscriber held elsewhere are forwarded to these.
    #[serde(default)]
    pub peers: Vec<String>,
    /// How long the matcher keeps the recipients of record of an alert that has no expiry
    /// (alerts with one are kept until it).
    #[serde(default = "default_recipients_ttl_secs")]
    pub recipients_ttl_secs: u64,
}

fn default_recipients_ttl_secs() -> u64 {
    hexcast_match::DEFAULT_RECIPIENTS_TTL_SECS
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 50051))
}
fn default_max_ids() -> NonZeroUsize {
    NonZeroUsize::new(10_000).unwrap_or(NonZeroUsize::MIN)
}
fn default_stream_buffer() -> NonZeroUsize {
    NonZeroUsize::new(16).unwrap_or(NonZeroUsize::MIN)
}
fn default_max_cells() -> NonZeroUsize {
    NonZeroUsize::new(20_000).unwrap_or(NonZeroUsize::MIN)
}
fn default_keepalive_interval_ms() -> u64 {
    30_000
}
fn default_keepalive_timeout_ms() -> u64 {
    10_000
}
fn default_max_request_bytes() -> NonZeroUsize {
    NonZeroUsize::new(4 << 20).unwrap_or(NonZeroUsize::MIN)
}
fn default_max_response_bytes() -> NonZeroUsize {
    NonZeroUsize::new(16 << 20).unwrap_or(NonZeroUsize::MIN)
}
fn default_shutdown_grace_ms() -> u64 {
    1_000
}

impl PushConfig {
    /// The TLS identity when both files are configured, none when neither is; an error
    /// naming the key otherwise.
    pub fn tls(&self) -> anyhow::Result<Option<ServerTlsConfig>> {
        let read = |key: &str, path: &PathBuf| {
            std::fs::read(path).with_context(|| format!("config key `push.{key}`: reading {}", path.display()))
        };
        match (&self.tls_cert_file, &self.tls_key_file) {
            (None, None) => Ok(None),
            (Some(_), None) => anyhow::bail!("config key `push.tls_key_file`: required with push.tls_cert_file"),
            (None, Some(_)) => anyhow::bail!("config key `push.tls_cert_file`: required with push.tls_key_file"),
            (Some(cert), Some(key)) => {
                let (cert, key) = (read("tls_cert_file", cert)?, read("tls_key_file", key)?);
                anyhow::ensure!(
                    String::from_utf8_lossy(&cert).contains("-----BEGIN CERTIFICATE-----"),
                    "config key `push.tls_cert_file`: not a PEM certificate"
                );
                anyhow::ensure!(
                    String::from_utf8_lossy(&key).contains("PRIVATE KEY-----"),
                    "config key `push.tls_key_file`: not a PEM private key"
                );
                Ok(Some(ServerTlsConfig::new().identity(Identity::from_pem(cert, key))))
            }
        }
    }

    /// The peers' endpoints, or an error naming the key.
    pub fn peer_endpoints(&self) -> anyhow::Result<Vec<tonic::transport::Endpoint>> {
        self.peers
            .iter()
            .enumerate()
            .map(|(i, url)| {
                anyhow::ensure!(
                    url.starts_with("http://"),
                    "config key `push.peers[{i}]`: `{url}` must be an http:// address (peer TLS is not supported yet)"
                );
                Ok(tonic::transport::Endpoint::from_shared(url.clone())
                    .with_context(|| format!("config key `push.peers[{i}]`: invalid address `{url}`"))?
                    .connect_timeout(Duration::from_secs(2))
                    .timeout(Duration::from_secs(10)))
            })
            .collect()
    }

    /// Channels to the peers, connected on first use (needs a tokio runtime).
    pub fn peer_channels(&self) -> anyhow::Result<Vec<(String, tonic::transport::Channel)>> {
        Ok(self.peers.iter().cloned().zip(self.peer_endpoints()?.into_iter().map(|e| e.connect_lazy())).collect())
    }
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            tokens_file: None,
            max_ids_per_batch: default_max_ids(),
            stream_buffer: default_stream_buffer(),
            max_cells_per_subscription: default_max_cells(),
            tls_cert_file: None,
            tls_key_file: None,
            keepalive_interval_ms: default_keepalive_interval_ms(),
            keepalive_timeout_ms: default_keepalive_timeout_ms(),
            max_request_bytes: default_max_request_bytes(),
            max_response_bytes: default_max_response_bytes(),
            shutdown_grace_ms: default_shutdown_grace_ms(),
            recipients_ttl_secs: default_recipients_ttl_secs(),
            requests: RequestsConfig::default(),
            assets: AssetsConfig::default(),
            peers: Vec::new(),
        }
    }
}

/// The in-memory tables the services read, kept by the runtime's followers.
#[derive(Debug, Clone)]
pub struct Tables {
    /// Subscribers (shard routing, Get, Respond).
    pub index: Arc<SubscriberIndex>,
    /// Registered assets.
    pub assets: Arc<AssetIndex>,
    /// Geofenced requests.
    pub requests: Arc<RequestStore>,
    /// Which subscriptions partitions (shards) the index holds; `None`: all of them.
    pub shards: Option<Arc<ShardFollower>>,
}

/// A running gRPC server.
#[derive(Debug)]
pub struct ApiHandle {
    /// The bound address.
    pub addr: SocketAddr,
    /// The server task; it ends after shutdown.
    pub server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Starts the gateway's Push, Subscriptions, Requests and Assets services on `listener`.
#[allow(clippy::too_many_arguments)]
pub async fn start(
    rt: &Runtime,
    cfg: &PushConfig,
    geo: GeoConfig,
    shards: u32,
    notification_partitions: u32,
    tokens: Tokens,
    tables: Tables,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<ApiHandle> {
    // Configuration errors first, before anything starts.
    let tls = cfg.tls()?;
    cfg.requests.validate()?;
    cfg.assets.validate()?;
    let peers = cfg.peer_channels()?;
    let shard_map = ShardMap { territory_res: geo.territory_resolution, shards };
    let state = Arc::new(ApiState {
        rt: rt.clone(),
        geo,
        shards: shard_map,
        notification_partitions,
        index: Arc::clone(&tables.index),
        writer: Writer::new(rt, "api")?,
        max_cells_per_subscription: cfg.max_cells_per_subscription.get(),
        max_ids_per_batch: cfg.max_ids_per_batch.get(),
        max_batch_id_bytes: cfg.max_response_bytes.get() / 2,
        stream_buffer: cfg.stream_buffer.get(),
        streams_stop: CancellationToken::new(),
        held: tables.shards.clone(),
        peers,
        covers: crate::covers::CoverCache::default(),
    });

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", tonic_health::ServingStatus::Serving).await;
    health.set_serving::<PushServer<PushService>>().await;
    health.set_serving::<SubscriptionsServer<SubscriptionsService>>().await;
    health.set_serving::<RequestsServer<RequestsService>>().await;
    health.set_serving::<AssetsServer<AssetsService>>().await;
    let auth = tokens.interceptor();
    // Push and Subscriptions are for push backends only; Requests and Assets check the
    // role per call (Respond is a backend's, the rest of Requests an agency's).
    let backend_auth = tokens.interceptor_for(&[Role::Backend]);
    let (max_in, max_out) = (cfg.max_request_bytes.get(), cfg.max_response_bytes.get());
    let push = PushServer::new(PushService(Arc::clone(&state)))
        .max_decoding_message_size(max_in)
        .max_encoding_message_size(max_out);
    let subscriptions = SubscriptionsServer::new(SubscriptionsService(Arc::clone(&state)))
        .max_decoding_message_size(max_in)
        .max_encoding_message_size(max_out);
    let requests_service = RequestsServer::new(RequestsService {
        state: Arc::clone(&state),
        store: Arc::clone(&tables.requests),
        cfg: cfg.requests.clone(),
    })
    .max_decoding_message_size(max_in)
    .max_encoding_message_size(max_out);
    let assets_service = AssetsServer::new(AssetsService {
        state: Arc::clone(&state),
        index: Arc::clone(&tables.assets),
        cfg: cfg.assets.clone(),
    })
    .max_decoding_message_size(max_in)
    .max_encoding_message_size(max_out);
    let router = builder(cfg, tls.clone())?
        .add_service(health_service)
        .add_service(reflection()?)
        .add_service(InterceptedService::new(push, backend_auth.clone()))
        .add_service(InterceptedService::new(subscriptions, backend_auth))
        .add_service(InterceptedService::new(requests_service, auth.clone()))
        .add_service(InterceptedService::new(assets_service, auth));
    let drain = async move {
        health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        health.set_not_serving::<PushServer<PushService>>().await;
        health.set_not_serving::<SubscriptionsServer<SubscriptionsService>>().await;
        health.set_not_serving::<RequestsServer<RequestsService>>().await;
        health.set_not_serving::<AssetsServer<AssetsService>>().await;
        // ...then the open streams end with UNAVAILABLE (resume from the last cursor).
        state.streams_stop.cancel();
    };
    serve(router, listener, Duration::from_millis(cfg.shutdown_grace_ms), tls.is_some(), "push", drain, shutdown)
}

/// Starts the Review service on `listener`, over the review queue's pending holds. It
/// shares the gateway's TLS, keepalive, size limits and shutdown (`cfg`), and reviewers
/// authenticate with their own `tokens`. Verdicts go through `writer`.
pub async fn start_review(
    rt: &Runtime,
    cfg: &PushConfig,
    pending: PendingMap,
    writer: Writer,
    tokens: Tokens,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<ApiHandle> {
    start_review_service(cfg, ReviewService::new(pending, writer, rt.clock.clone()), tokens, listener, shutdown).await
}

/// [`start_review`] with the service built by the caller, so that another front end (the
/// web console) shares it: the same verdict path and the same guard against a second
/// verdict on one hold.
pub async fn start_review_service(
    cfg: &PushConfig,
    service: ReviewService,
    tokens: Tokens,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<ApiHandle> {
    let tls = cfg.tls()?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", tonic_health::ServingStatus::Serving).await;
    health.set_serving::<ReviewServer<ReviewService>>().await;
    let review = ReviewServer::new(service)
        .max_decoding_message_size(cfg.max_request_bytes.get())
        .max_encoding_message_size(cfg.max_response_bytes.get());
    let router = builder(cfg, tls.clone())?
        .add_service(health_service)
        .add_service(reflection()?)
        .add_service(InterceptedService::new(review, tokens.interceptor()));
    let drain = async move {
        health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        health.set_not_serving::<ReviewServer<ReviewService>>().await;
    };
    serve(router, listener, Duration::from_millis(cfg.shutdown_grace_ms), tls.is_some(), "review", drain, shutdown)
}

/// The layers in front of every service: request counts by method and status.
type Layers = tower_layer::Stack<GrpcMetricsLayer, tower_layer::Identity>;

/// A server builder with the configured keepalive and TLS.
fn builder(cfg: &PushConfig, tls: Option<ServerTlsConfig>) -> anyhow::Result<tonic::transport::Server<Layers>> {
    let keepalive = Duration::from_millis(cfg.keepalive_interval_ms);
    let builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(keepalive))
        .http2_keepalive_timeout(Some(Duration::from_millis(cfg.keepalive_timeout_ms)))
        .tcp_keepalive(Some(keepalive))
        .tcp_nodelay(true);
    let builder = match tls {
        Some(tls) => builder.tls_config(tls).context("config key `push.tls_cert_file`: invalid TLS identity")?,
        None => builder,
    };
    Ok(builder.layer(GrpcMetricsLayer))
}

/// The reflection service over hexcast's and health's descriptors.
fn reflection() -> anyhow::Result<
    tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(hexcast_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building reflection service")
}

/// Serves `router` on `listener` until `shutdown`: then `drain` (health NOT_SERVING, end
/// streams), a grace period with the listener still open for probes, and a hard deadline
/// for requests still in flight.
fn serve(
    router: tonic::transport::server::Router<Layers>,
    listener: TcpListener,
    grace: Duration,
    secure: bool,
    name: &'static str,
    drain: impl std::future::Future<Output = ()> + Send + 'static,
    shutdown: CancellationToken,
) -> anyhow::Result<ApiHandle> {
    let addr = listener.local_addr().context("reading the bound address")?;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let stop = shutdown.clone();
    let server = tokio::spawn(async move {
        let serve = router.serve_with_incoming_shutdown(incoming, async move {
            stop.cancelled().await;
            // Load balancers and probes first, so no new client is sent here...
            drain.await;
            tracing::info!(server = name, grace_ms = grace.as_millis() as u64, "gRPC server draining");
            // ...and the listener stays up a moment for probes to see NOT_SERVING.
            tokio::time::sleep(grace).await;
        });
        // Requests in flight get a few seconds more; a stream that never ends by itself
        // (a client's health Watch) must not hold the process up forever.
        tokio::select! {
            r = serve => r.with_context(|| format!("{name} gRPC server")),
            () = async {
                shutdown.cancelled().await;
                tokio::time::sleep(grace + IN_FLIGHT_DEADLINE).await;
            } => {
                tracing::warn!(server = name, "gRPC connections still open after the grace period: closed");
                Ok(())
            }
        }
    });
    tracing::info!(%addr, tls = secure, server = name, "gRPC server listening");
    Ok(ApiHandle { addr, server })
}
