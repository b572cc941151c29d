//! hexcast-console: the web console, served by the hexcast binary beside the review
//! target. Editors work the review queue (their verdicts take the Review service's one
//! path, so each is the same audited record as a gRPC verdict); operators watch a live
//! map of active alerts; anyone reads the transparency log of agencies' geofenced
//! requests. Server-rendered HTML (maud, escaped by construction) with one small script
//! file; HttpOnly SameSite=Strict session cookies, a CSRF token on every form, a strict
//! Content-Security-Policy. It must never show personal data or a location finer than an
//! alert's public view, and it never talks to Kafka itself: the runtime's followers fill
//! its tables and the Review service writes the verdicts.

pub mod app;
pub mod audit;
pub mod config;
pub mod live;
pub mod map;
pub mod page;
pub mod review;
pub mod routes;
pub mod session;
pub mod transparency;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use hexcast_api::{ReviewService, Tokens};
use hexcast_core::Topic;
use hexcast_runtime::{FollowerStatus, Partitions, Runtime, follow};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use app::Console;
pub use config::ConsoleConfig;

/// A running console.
#[derive(Debug)]
pub struct ConsoleHandle {
    /// The bound address.
    pub addr: SocketAddr,
    /// The HTTP server task; it ends after shutdown.
    pub server: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// The state (tables, sessions).
    pub console: Arc<Console>,
    /// The followers of transparency, alerts, notifications and audit.
    pub followers: Vec<Arc<FollowerStatus>>,
}

/// Starts the console on `listener`: followers of `transparency`, `alerts`,
/// `notifications` and `audit` fill its tables; verdicts go through `review`; `outlines`
/// are drawn under the maps.
#[allow(clippy::too_many_arguments)]
pub async fn start(
    rt: &Runtime,
    cfg: &ConsoleConfig,
    review: ReviewService,
    reviewers: Tokens,
    operators: Tokens,
    outlines: Vec<map::Outline>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<ConsoleHandle> {
    cfg.validate()?;
    let console =
        Arc::new(Console::new(cfg.clone(), review, reviewers, operators, rt.clock.clone()).with_outlines(outlines));
    let followers = vec![
        follow(
            rt,
            "console-transparency",
            Topic::Transparency,
            Partitions::All,
            Arc::clone(&console.transparency) as _,
            shutdown.clone(),
        )?,
        follow(
            rt,
            "console-alerts",
            Topic::Alerts,
            Partitions::All,
            Arc::new(live::AlertsTable(Arc::clone(&console.live))),
            shutdown.clone(),
        )?,
        follow(
            rt,
            "console-notifications",
            Topic::Notifications,
            Partitions::All,
            Arc::new(live::NotificationsTable(Arc::clone(&console.live))),
            shutdown.clone(),
        )?,
        follow(rt, "console-audit", Topic::Audit, Partitions::All, Arc::clone(&console.audit) as _, shutdown.clone())?,
    ];
    let addr = listener.local_addr().context("reading the console's bound address")?;
    let app = routes::router(Arc::clone(&console));
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .context("console HTTP server")
    });
    tracing::info!(%addr, "console listening");
    Ok(ConsoleHandle { addr, server, console, followers })
}
