//! Assembles the push service: the subscriber index and its loader, the matcher stage on
//! the shared runner, and the gRPC server (Push, Subscriptions, health, reflection) behind
//! bearer-token authentication. One call starts it all; one token stops it all.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use hexcast_core::Topic;
use hexcast_core::cells::{GeoConfig, ShardMap};
use hexcast_proto::v1::push_server::PushServer;
use hexcast_proto::v1::subscriptions_server::SubscriptionsServer;
use hexcast_runtime::{FaultInjection, Runtime, StageHandle, spawn_stage};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::Tokens;
use crate::index::SubscriberIndex;
use crate::loader::{LoaderStatus, spawn_loader};
use crate::matcher::Matcher;
use crate::service::{PushService, PushState, SubscriptionsService};

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

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            tokens_file: None,
            max_ids_per_batch: default_max_ids(),
            stream_buffer: default_stream_buffer(),
            max_cells_per_subscription: default_max_cells(),
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
    let shard_map = ShardMap { territory_res: geo.territory_resolution, shards };
    let index = Arc::new(SubscriberIndex::new(shard_map));
    let loader = spawn_loader(rt, Arc::clone(&index), None, shutdown.clone())?;

    let matcher = {
        let index = Arc::clone(&index);
        let max_ids = cfg.max_ids_per_batch.get();
        spawn_stage(
            rt,
            Topic::Indexed,
            move || Matcher::new(Arc::clone(&index), notification_partitions, max_ids),
            shutdown.clone(),
            FaultInjection::default(),
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
        stream_buffer: cfg.stream_buffer.get(),
        shutdown: shutdown.clone(),
    });

    let addr = listener.local_addr().context("reading the bound address")?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<PushServer<PushService>>().await;
    health.set_serving::<SubscriptionsServer<SubscriptionsService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(hexcast_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building reflection service")?;
    let auth = tokens.interceptor();
    let router = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(PushServer::with_interceptor(PushService(Arc::clone(&state)), auth.clone()))
        .add_service(SubscriptionsServer::with_interceptor(SubscriptionsService(state), auth));
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let stop = shutdown.clone();
    let server = tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(incoming, async move {
                stop.cancelled().await;
                health.set_not_serving::<PushServer<PushService>>().await;
            })
            .await
            .context("gRPC server")
    });
    tracing::info!(%addr, "push service listening");
    Ok(PushHandle { addr, index, loader, matcher, server })
}
