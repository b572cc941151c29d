//! Assembles the push service: the subscriber index and its loader, the matcher stage on
//! the shared runner, the request and asset tables, and the gRPC server (Push,
//! Subscriptions, Requests, Assets, health, reflection) behind
//! bearer-token authentication, optionally over TLS (rustls). One call starts it all; one
//! token stops it all, in this order: health NOT_SERVING, open streams end with UNAVAILABLE
//! (the client resumes from its last cursor elsewhere), a grace period, then the listener
//! closes.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hexcast_core::Topic;
use hexcast_core::cells::{GeoConfig, ShardMap};
use hexcast_proto::v1::assets_server::AssetsServer;
use hexcast_proto::v1::push_server::PushServer;
use hexcast_proto::v1::requests_server::RequestsServer;
use hexcast_proto::v1::subscriptions_server::SubscriptionsServer;
use hexcast_runtime::{Runtime, StageHandle, spawn_stage};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Identity, ServerTlsConfig};

use crate::assets::{AssetIndex, AssetsConfig, AssetsService};
use crate::auth::{Role, Tokens};
use crate::index::SubscriberIndex;
use crate::loader::{LoaderStatus, spawn_loader};
use crate::matcher::Matcher;
use crate::requests::{RequestStore, RequestsConfig, RequestsService};
use crate::service::{PushService, PushState, SubscriptionsService};

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
            requests: RequestsConfig::default(),
            assets: AssetsConfig::default(),
        }
    }
}

/// A running push service.
#[derive(Debug)]
pub struct PushHandle {
    /// The bound gRPC address.
    pub addr: SocketAddr,
    /// The subscriber index.
    pub index: Arc<SubscriberIndex>,
    /// Loader progress.
    pub loader: Arc<LoaderStatus>,
    /// The matcher stage.
    pub matcher: StageHandle,
    /// The gRPC server task.
    pub server: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// Registered assets.
    pub assets: Arc<AssetIndex>,
    /// Geofenced requests.
    pub requests: Arc<RequestStore>,
}

/// Starts the push service on `listener`.
#[allow(clippy::too_many_arguments)]
pub async fn start(
    rt: &Runtime,
    cfg: &PushConfig,
    geo: GeoConfig,
    shards: u32,
    notification_partitions: u32,
    tokens: Tokens,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<PushHandle> {
    // Configuration errors first, before anything starts.
    let tls = cfg.tls()?;
    cfg.requests.validate()?;
    cfg.assets.validate()?;
    let shard_map = ShardMap { territory_res: geo.territory_resolution, shards };
    let index = Arc::new(SubscriberIndex::new(shard_map));
    let loader = spawn_loader(rt, Arc::clone(&index), None, shutdown.clone())?;
    let assets = Arc::new(AssetIndex::default());
    let requests = Arc::new(RequestStore::default());
    {
        let a = Arc::clone(&assets);
        crate::table::follow(rt, Topic::Assets, notification_partitions, move |k, v| a.apply(k, v), shutdown.clone())?;
        let r = Arc::clone(&requests);
        crate::table::follow(
            rt,
            Topic::Requests,
            notification_partitions,
            move |k, v| r.apply(k, v),
            shutdown.clone(),
        )?;
    }

    let matcher = {
        let index = Arc::clone(&index);
        let max_ids = cfg.max_ids_per_batch.get();
        let assets = Arc::clone(&assets);
        let rules: Arc<[crate::assets::EnrichRule]> = cfg.assets.enrich.clone().into();
        let (loaded, stop) = (Arc::clone(&loader), shutdown.clone());
        spawn_stage(
            rt,
            Topic::Indexed,
            move || {
                // The runner builds the stage before it opens its consumer: no alert is
                // matched against a half-loaded index (a restarted instance would miss the
                // subscribers not loaded yet, and its commit would make the loss final).
                while !loaded.caught_up.load(std::sync::atomic::Ordering::SeqCst) && !stop.is_cancelled() {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Matcher::new(Arc::clone(&index), notification_partitions, max_ids)
                    .with_assets(Arc::clone(&assets), Arc::clone(&rules))
            },
            shutdown.clone(),
        )?
    };

    let producer = rt
        .client_config()
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .context("creating subscriptions producer")?;
    let state = Arc::new(PushState {
        rt: rt.clone(),
        geo,
        shards: shard_map,
        notification_partitions,
        index: Arc::clone(&index),
        producer,
        max_cells_per_subscription: cfg.max_cells_per_subscription.get(),
        max_ids_per_batch: cfg.max_ids_per_batch.get(),
        max_batch_id_bytes: cfg.max_response_bytes.get() / 2,
        stream_buffer: cfg.stream_buffer.get(),
        streams_stop: CancellationToken::new(),
    });

    let addr = listener.local_addr().context("reading the bound address")?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", tonic_health::ServingStatus::Serving).await;
    health.set_serving::<PushServer<PushService>>().await;
    health.set_serving::<SubscriptionsServer<SubscriptionsService>>().await;
    health.set_serving::<RequestsServer<RequestsService>>().await;
    health.set_serving::<AssetsServer<AssetsService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(hexcast_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building reflection service")?;
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
        store: Arc::clone(&requests),
        cfg: cfg.requests.clone(),
    })
    .max_decoding_message_size(max_in)
    .max_encoding_message_size(max_out);
    let assets_service = AssetsServer::new(AssetsService {
        state: Arc::clone(&state),
        index: Arc::clone(&assets),
        cfg: cfg.assets.clone(),
    })
    .max_decoding_message_size(max_in)
    .max_encoding_message_size(max_out);
    let keepalive = Duration::from_millis(cfg.keepalive_interval_ms);
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(keepalive))
        .http2_keepalive_timeout(Some(Duration::from_millis(cfg.keepalive_timeout_ms)))
        .tcp_keepalive(Some(keepalive))
        .tcp_nodelay(true);
    let secure = tls.is_some();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).context("config key `push.tls_cert_file`: invalid TLS identity")?;
    }
    let router = builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(InterceptedService::new(push, backend_auth.clone()))
        .add_service(InterceptedService::new(subscriptions, backend_auth))
        .add_service(InterceptedService::new(requests_service, auth.clone()))
        .add_service(InterceptedService::new(assets_service, auth));
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let stop = shutdown.clone();
    let grace = Duration::from_millis(cfg.shutdown_grace_ms);
    let hard_stop = shutdown.clone();
    let server = tokio::spawn(async move {
        let serve = router.serve_with_incoming_shutdown(incoming, async move {
            stop.cancelled().await;
            // Load balancers and probes first, so no new client is sent here...
            health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
            health.set_not_serving::<PushServer<PushService>>().await;
            health.set_not_serving::<SubscriptionsServer<SubscriptionsService>>().await;
            health.set_not_serving::<RequestsServer<RequestsService>>().await;
            health.set_not_serving::<AssetsServer<AssetsService>>().await;
            // ...then the open streams end with UNAVAILABLE (resume from the last cursor)...
            state.streams_stop.cancel();
            tracing::info!(grace_ms = grace.as_millis() as u64, "push service draining");
            // ...and the listener stays up a moment for probes to see NOT_SERVING.
            tokio::time::sleep(grace).await;
        });
        // Requests in flight get a few seconds more; a stream that never ends by itself
        // (a client's health Watch) must not hold the process up forever.
        tokio::select! {
            r = serve => r.context("gRPC server"),
            () = async {
                hard_stop.cancelled().await;
                tokio::time::sleep(grace + IN_FLIGHT_DEADLINE).await;
            } => {
                tracing::warn!("gRPC connections still open after the grace period: closed");
                Ok(())
            }
        }
    });
    tracing::info!(%addr, tls = secure, "push service listening");
    Ok(PushHandle { addr, index, loader, matcher, server, assets, requests })
}
