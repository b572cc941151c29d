//! The hexcast binary's library half: configuration, `--target` wiring and the demo, so
//! that the end-to-end tests start exactly what the binary starts.

pub mod cap_export;
pub mod config;
pub mod decode;
pub mod demo;
pub mod geojson;
pub mod health;
pub mod normalize;
pub mod offline;
pub mod offline_stages;
pub mod targets;

pub use config::Config;
pub use targets::{Running, Target, parse_targets, start, start_with_console, start_with_review};

use hexcast_runtime::{Runtime, TopicsConfig};

/// Builds the shared runtime of a config.
pub fn runtime(cfg: &Config) -> Runtime {
    Runtime::new(cfg.kafka.clone(), cfg.runner.clone())
}

/// How long start-up waits for the cluster to answer before it gives up.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Checks that the cluster answers with the configured address and security settings,
/// failing with a message that names authentication, TLS or reachability; called before
/// anything else talks to Kafka, so a wrong password never turns into quiet retries.
pub async fn check_kafka(cfg: &Config) -> anyhow::Result<()> {
    let kafka = cfg.kafka.clone();
    tokio::task::spawn_blocking(move || hexcast_runtime::check_connection(&kafka, CONNECT_TIMEOUT))
        .await
        .map_err(|e| anyhow::anyhow!("kafka connection check did not finish: {e}"))??;
    Ok(())
}

/// [`check_kafka`] beside a start-up, so that configuration errors, found without the
/// cluster, are reported first and the check costs the start no time.
pub fn spawn_kafka_check(cfg: &Config) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let cfg = cfg.clone();
    tokio::spawn(async move { check_kafka(&cfg).await })
}

/// The outcome of a start that ran beside a [`spawn_kafka_check`]. A start that succeeded
/// is returned once the check passed; when the check fails, the targets are stopped and
/// the check's error (authentication, TLS, unreachable) is the start's error. A start that
/// failed returns its own error (a config error, found without the cluster), unless the
/// check fails within a moment: then the check's error names the cause.
pub async fn when_connected(
    check: tokio::task::JoinHandle<anyhow::Result<()>>,
    started: anyhow::Result<Running>,
) -> anyhow::Result<Running> {
    let running = match started {
        Ok(running) => running,
        Err(e) => {
            return match tokio::time::timeout(std::time::Duration::from_secs(2), check).await {
                Ok(Ok(Err(cause))) => {
                    tracing::warn!(error = %format!("{e:#}"), "start failed behind a kafka connection failure");
                    Err(cause)
                }
                _ => Err(e),
            };
        }
    };
    let failed = match check.await {
        Ok(Ok(())) => return Ok(running),
        Ok(Err(e)) => e,
        Err(e) => anyhow::anyhow!("kafka connection check did not finish: {e}"),
    };
    running.shutdown.cancel();
    // Stages that never connected stop at once; do not let one hold the error back.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), running.join()).await;
    Err(failed)
}

/// Creates the pipeline's topics on a real cluster (idempotent).
pub async fn create_topics(cfg: &Config) -> anyhow::Result<()> {
    check_kafka(cfg).await?;
    let rt = runtime(cfg);
    let specs = hexcast_runtime::specs(&rt.names, &cfg.topics);
    hexcast_runtime::ensure_topics(&cfg.kafka, &specs, replication(&cfg.topics)).await
}

fn replication(t: &TopicsConfig) -> i32 {
    t.replication_factor.get() as i32
}
