//! hexcast-review: the editorial hold. Policy writes the alerts of held categories to the
//! compacted `review` topic; this crate's target keeps them pending (the [`queue`] stage on
//! the shared runner), serves the `Review` gRPC service (ListPending, Approve, Reject) to
//! authenticated reviewers, and applies each verdict or timeout exactly once: the released
//! alert, the audit record and the tombstones are written in one transaction. A reviewer's
//! verdict is itself a record on `review`, so nothing is decided outside the log. It never
//! alters a held alert: an approved alert is released exactly as policy redacted it.

pub mod queue;
pub mod service;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hexcast_core::{Topic, header};
use hexcast_proto::v1::review_server::ReviewServer;
use hexcast_push::Tokens;
use hexcast_runtime::{Runtime, StageHandle, spawn_stage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use queue::{Pending, PendingMap, ReviewInput, ReviewQueue};
pub use service::ReviewService;

/// `[review]` configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewConfig {
    /// gRPC listen address of the Review service.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// TOML file of `reviewer = "token"` (16+ characters); required for target review.
    #[serde(default)]
    pub tokens_file: Option<PathBuf>,
    /// How often the timeout rule is applied.
    #[serde(default = "default_tick_ms")]
    pub tick_interval_ms: u64,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 50052))
}

const fn default_tick_ms() -> u64 {
    5_000
}

impl Default for ReviewConfig {
    fn default() -> Self {
        Self { listen: default_listen(), tokens_file: None, tick_interval_ms: default_tick_ms() }
    }
}

/// A running review target.
#[derive(Debug)]
pub struct ReviewHandle {
    /// The bound gRPC address.
    pub addr: SocketAddr,
    /// The queue stage.
    pub queue: StageHandle,
    /// The gRPC server and ticker.
    pub server: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// Pending holds.
    pub pending: PendingMap,
}

const RESTORE_TIMEOUT: Duration = Duration::from_secs(120);

/// The queue's factory: every call rebuilds the pending holds from the `review` topic as of
/// the last committed transaction (the first call fences a crashed predecessor first).
fn factory(
    rt: &Runtime,
    pending: PendingMap,
    shutdown: CancellationToken,
) -> impl FnMut() -> ReviewQueue + Send + 'static {
    let rt = rt.clone();
    let mut first = true;
    move || {
        loop {
            if shutdown.is_cancelled() {
                return ReviewQueue::new(Arc::clone(&pending));
            }
            let read = (|| {
                if first {
                    hexcast_runtime::fence_stage(&rt, "review")?;
                }
                hexcast_runtime::read_changelog_partitioned(&rt, "review", Topic::Review, RESTORE_TIMEOUT)
            })();
            match read {
                Ok(records) => {
                    first = false;
                    let restored = queue::restore(records);
                    tracing::info!(pending = restored.len(), "review queue restored");
                    *pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = restored;
                    return ReviewQueue::new(Arc::clone(&pending));
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "restoring the review queue failed, retrying");
                    std::thread::sleep(Duration::from_millis(rt.runner.retry_backoff_ms.max(100)));
                }
            }
        }
    }
}

/// Starts the review target: the queue stage, the ticker and the gRPC service on
/// `listener`. `partitions` is the `review` topic's partition count.
pub async fn start(
    rt: &Runtime,
    cfg: &ReviewConfig,
    partitions: u32,
    tokens: Tokens,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<ReviewHandle> {
    anyhow::ensure!(cfg.tick_interval_ms > 0, "config key `review.tick_interval_ms`: expected at least 1");
    let pending = PendingMap::default();
    let queue = spawn_stage(rt, Topic::Review, factory(rt, Arc::clone(&pending), shutdown.clone()), shutdown.clone())?;
    let producer: FutureProducer = rt
        .client_config()
        .set("enable.idempotence", "true")
        .set("linger.ms", "1")
        .create()
        .context("creating review producer")?;
    let topic = rt.names.name(Topic::Review).to_owned();
    let service = ReviewService::new(Arc::clone(&pending), producer.clone(), topic.clone());
    let addr = listener.local_addr().context("reading the bound address")?;
    let router =
        tonic::transport::Server::builder().add_service(ReviewServer::with_interceptor(service, tokens.interceptor()));
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let stop = shutdown.clone();
    let tick_every = Duration::from_millis(cfg.tick_interval_ms);
    let server = tokio::spawn(async move {
        let ticker = async {
            let mut interval = tokio::time::interval(tick_every);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = interval.tick() => {}
                }
                for p in 0..partitions as i32 {
                    let rec = FutureRecord::to(&topic).key("tick").payload(b"t".as_slice()).partition(p).headers(
                        rdkafka::message::OwnedHeaders::new()
                            .insert(rdkafka::message::Header { key: header::SCHEMA, value: Some(queue::TICK_SCHEMA) }),
                    );
                    if let Err((e, _)) = producer.send(rec, Duration::from_secs(10)).await {
                        tracing::warn!(error = %e, partition = p, "review tick not delivered");
                    }
                }
            }
        };
        let serve = router.serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned());
        let (served, ()) = tokio::join!(serve, ticker);
        served.context("review gRPC server")
    });
    tracing::info!(%addr, "review service listening");
    Ok(ReviewHandle { addr, queue, server, pending })
}
