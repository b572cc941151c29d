//! `--target`: which stages this process runs. Every target runs on the same runner; the
//! same binary and image serve every deployment.

use std::fmt;
use std::str::FromStr;

use anyhow::Context as _;
use hexcast_core::Topic;
use hexcast_dedup::{Dedup, DedupConfig};
use hexcast_ingest::Ingest;
use hexcast_policy::{Policy, PolicyConfig};
use hexcast_push::{PushHandle, Tokens};
use hexcast_runtime::{Runtime, StageHandle, spawn_stage};
use hexcast_spatial::Spatial;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// One deployable target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// incidents.raw -> incidents.normalized
    Ingest,
    /// incidents.normalized -> incidents.unique
    Dedup,
    /// incidents.unique -> alerts, audit
    Policy,
    /// alerts -> alerts.indexed
    Spatial,
    /// review -> alerts, audit: the editorial hold's queue and the Review gRPC service
    Review,
    /// alerts.indexed -> notifications, and the gRPC service
    Push,
}

impl Target {
    /// Every pipeline target, in pipeline order (`--target all`). The review target is
    /// named on its own: it needs reviewers' tokens and runs once per cluster.
    pub const ALL: [Target; 5] = [Target::Ingest, Target::Dedup, Target::Policy, Target::Spatial, Target::Push];

    /// Every target `--target` accepts.
    pub const NAMED: [Target; 6] =
        [Target::Ingest, Target::Dedup, Target::Policy, Target::Spatial, Target::Review, Target::Push];
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Target::Ingest => "ingest",
            Target::Dedup => "dedup",
            Target::Policy => "policy",
            Target::Spatial => "spatial",
            Target::Review => "review",
            Target::Push => "push",
        })
    }
}

/// Parses `all` or a comma-separated list.
pub fn parse_targets(s: &str) -> anyhow::Result<Vec<Target>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if part == "all" {
            out.extend(Target::ALL);
            continue;
        }
        out.push(part.parse()?);
    }
    out.sort_unstable();
    out.dedup();
    anyhow::ensure!(!out.is_empty(), "--target: no target given (expected all or ingest,dedup,policy,spatial,push)");
    Ok(out)
}

impl FromStr for Target {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        Target::NAMED.into_iter().find(|t| t.to_string() == s).ok_or_else(|| {
            anyhow::anyhow!("--target: unknown target `{s}` (expected all or ingest,dedup,policy,spatial,push,review)")
        })
    }
}

/// The running targets of this process.
#[derive(Debug)]
pub struct Running {
    /// Stage runners, by target.
    pub stages: Vec<(Target, StageHandle)>,
    /// The push service, when running.
    pub push: Option<PushHandle>,
    /// The review service, when running.
    pub review: Option<hexcast_review::ReviewHandle>,
    /// Stops every target.
    pub shutdown: CancellationToken,
}

impl Running {
    /// The stage handle of a target.
    pub fn stage(&self, target: Target) -> Option<&StageHandle> {
        self.stages.iter().find(|(t, _)| *t == target).map(|(_, h)| h)
    }

    /// Waits until every stage's consumer has partitions (the group joins are done), so
    /// that measurements do not include start-up.
    pub async fn wait_assigned(&self, timeout: std::time::Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let stages = self
                .stages
                .iter()
                .map(|(_, h)| h)
                .chain(self.push.as_ref().map(|p| &p.matcher))
                .chain(self.review.as_ref().map(|r| &r.queue));
            if stages.into_iter().all(|h| h.stats.assigned_partitions.load(std::sync::atomic::Ordering::SeqCst) > 0) {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "stages not assigned partitions within {timeout:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Waits until every target has stopped. Targets only stop on shutdown or a fatal
    /// error, so the first one to stop cancels the rest; the first error wins.
    pub async fn join(self) -> anyhow::Result<()> {
        use futures::FutureExt as _;
        let mut waits: Vec<futures::future::BoxFuture<'static, (String, anyhow::Result<()>)>> = Vec::new();
        for (target, stage) in self.stages {
            waits.push(async move { (target.to_string(), stage.join().await) }.boxed());
        }
        if let Some(push) = self.push {
            waits.push(async move { ("push".to_owned(), push.matcher.join().await) }.boxed());
            let server = push.server;
            waits.push(
                async move { ("push gRPC".to_owned(), server.await.unwrap_or_else(|e| Err(anyhow::anyhow!(e)))) }
                    .boxed(),
            );
        }
        if let Some(review) = self.review {
            waits.push(async move { ("review".to_owned(), review.queue.join().await) }.boxed());
            let server = review.server;
            waits.push(
                async move { ("review gRPC".to_owned(), server.await.unwrap_or_else(|e| Err(anyhow::anyhow!(e)))) }
                    .boxed(),
            );
        }
        let mut result = Ok(());
        while !waits.is_empty() {
            let ((name, r), _, rest) = futures::future::select_all(waits).await;
            if let Err(e) = r {
                tracing::error!(target = %name, error = %format!("{e:#}"), "target failed");
                if result.is_ok() {
                    result = Err(e.context(format!("target {name}")));
                }
            }
            self.shutdown.cancel();
            waits = rest;
        }
        result
    }
}

/// Starts `targets`. `tokens` overrides `push.tokens_file` (demo and tests).
pub async fn start(
    cfg: &Config,
    rt: &Runtime,
    targets: &[Target],
    tokens: Option<Tokens>,
    listener: Option<tokio::net::TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    start_with_review(cfg, rt, targets, tokens, listener, None, shutdown).await
}

/// [`start`], with the review target's tokens (overriding `review.tokens_file`) and
/// listener given (tests).
pub async fn start_with_review(
    cfg: &Config,
    rt: &Runtime,
    targets: &[Target],
    tokens: Option<Tokens>,
    listener: Option<tokio::net::TcpListener>,
    review_service: Option<(Tokens, tokio::net::TcpListener)>,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    let (review_tokens, mut review_listener) = match review_service {
        Some((t, l)) => (Some(t), Some(l)),
        None => (None, None),
    };
    let policy = match &cfg.policy.file {
        Some(path) => load_policy(path)?,
        None => PolicyConfig::seed(),
    };
    let shards = cfg.topics.shards.get();
    let ingest = Ingest::new(&cfg.ingest).context("config section [ingest]")?;
    let mut stages = Vec::new();
    let mut push = None;
    let mut review = None;
    for &target in targets {
        let s = shutdown.child_token();
        let handle = match target {
            Target::Ingest => {
                let i = ingest.clone();
                spawn_stage(rt, Topic::Raw, move || i.clone(), s)?
            }
            Target::Dedup => {
                cfg.dedup.validate()?;
                let factory = dedup_factory(rt, &cfg.dedup, s.clone());
                spawn_stage(rt, Topic::Normalized, factory, s)?
            }
            Target::Policy => {
                let p = policy.clone();
                spawn_stage(rt, Topic::Unique, move || Policy::new(p.clone()), s)?
            }
            Target::Spatial => {
                let geo = cfg.geo;
                spawn_stage(rt, Topic::Alerts, move || Spatial::new(geo, shards), s)?
            }
            Target::Review => {
                let tokens = match (&review_tokens, &cfg.review.tokens_file) {
                    (Some(t), _) => t.clone(),
                    (None, Some(path)) => Tokens::load(path).context("config key `review.tokens_file`")?,
                    (None, None) => anyhow::bail!("config key `review.tokens_file`: required for target review"),
                };
                let listener = match review_listener.take() {
                    Some(l) => l,
                    None => tokio::net::TcpListener::bind(cfg.review.listen)
                        .await
                        .with_context(|| format!("binding review.listen {}", cfg.review.listen))?,
                };
                review = Some(
                    hexcast_review::start(rt, &cfg.review, cfg.topics.partitions.get(), tokens, listener, s).await?,
                );
                continue;
            }
            Target::Push => {
                let tokens = match (&tokens, &cfg.push.tokens_file) {
                    (Some(t), _) => t.clone(),
                    (None, Some(path)) => Tokens::load(path)?,
                    (None, None) => anyhow::bail!("config key `push.tokens_file`: required for target push"),
                };
                let listener = match listener {
                    Some(l) => l,
                    None => tokio::net::TcpListener::bind(cfg.push.listen)
                        .await
                        .with_context(|| format!("binding push.listen {}", cfg.push.listen))?,
                };
                push = Some(
                    hexcast_push::start(
                        rt,
                        &cfg.push,
                        cfg.geo,
                        shards,
                        cfg.topics.partitions.get(),
                        tokens,
                        listener,
                        s,
                    )
                    .await?,
                );
                break;
            }
        };
        stages.push((target, handle));
    }
    Ok(Running { stages, push, review, shutdown })
}

/// Reads a policy file, with region GeoJSON files read by the binary's GeoJSON reader.
pub fn load_policy(path: &std::path::Path) -> anyhow::Result<PolicyConfig> {
    let polygons = |p: &std::path::Path| -> Result<Vec<geo::Polygon<f64>>, String> {
        let text = std::fs::read_to_string(p).map_err(|e| format!("reading {}: {e}", p.display()))?;
        let shapes = crate::geojson::parse(&text).map_err(|e| format!("{}: {e:#}", p.display()))?;
        Ok(shapes.into_iter().flat_map(|s| s.polygons).collect())
    };
    Ok(PolicyConfig::load_with(path, &polygons)?)
}

/// How long a dedup instance may take to read its changelog before it retries.
const RESTORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// The dedup stage's factory: every call (start, abandoned batch, rebalance) rebuilds the
/// state from the `dedup.state` changelog as of the last committed transaction. The first
/// call also fences a crashed predecessor of this instance, whose open transaction would
/// otherwise hold the changelog's last stable offset back until it timed out; later calls
/// must not fence, since this process's own session is then the one that would be fenced.
/// A read that fails is retried until it succeeds or `shutdown` fires.
pub fn dedup_factory(
    rt: &Runtime,
    cfg: &DedupConfig,
    shutdown: CancellationToken,
) -> impl FnMut() -> Dedup + Send + 'static {
    let rt = rt.clone();
    let cfg = cfg.clone();
    let mut first = true;
    move || {
        loop {
            if shutdown.is_cancelled() {
                return Dedup::new(cfg.clone());
            }
            let restored = (|| {
                if first {
                    hexcast_runtime::fence_stage(&rt, "dedup")?;
                }
                hexcast_runtime::read_changelog(&rt, "dedup", Topic::DedupState, RESTORE_TIMEOUT)
            })();
            match restored {
                Ok(records) => {
                    first = false;
                    let (dedup, stats) = Dedup::restore(cfg.clone(), records, (rt.clock)());
                    tracing::info!(
                        restored = stats.restored,
                        expired = stats.expired,
                        malformed = stats.malformed,
                        "dedup state restored from its changelog"
                    );
                    return dedup;
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "restoring dedup state failed, retrying");
                    std::thread::sleep(std::time::Duration::from_millis(rt.runner.retry_backoff_ms.max(100)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_all_lists_and_refuse_unknown_names() {
        assert_eq!(parse_targets("all").expect("all"), Target::ALL.to_vec());
        assert_eq!(parse_targets("push, ingest").expect("list"), vec![Target::Ingest, Target::Push]);
        let e = parse_targets("ingest,matcher").expect_err("unknown").to_string();
        assert!(e.contains("matcher"), "{e}");
    }

    #[test]
    fn policy_regions_read_geojson_polygons_relative_to_the_policy_file() {
        let dir = std::env::temp_dir().join(format!("hexcast-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let geojson =
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/geofence/click_that_hood/philadelphia.geojson");
        std::fs::copy(geojson, dir.join("philadelphia.geojson")).expect("shared data beside the repository");
        let path = dir.join("policy.toml");
        std::fs::write(
            &path,
            "allow = [\"crime\"]\n[[region]]\nname = \"philadelphia\"\ngeojson = \"philadelphia.geojson\"\nhold = [\"crime.robbery\"]\n",
        )
        .expect("write policy");
        let policy = load_policy(&path).expect("valid policy");
        let city_hall = hexcast_core::LatLng::new(39.9526, -75.1652).expect("valid");
        let norristown = hexcast_core::LatLng::new(40.1215, -75.3399).expect("valid");
        assert_eq!(policy.rules_at(Some(city_hall)).1, Some("philadelphia"));
        assert_eq!(policy.rules_at(Some(norristown)).1, None);
        std::fs::write(&path, "allow = [\"crime\"]\n[[region]]\nname = \"x\"\ngeojson = \"missing.geojson\"\n")
            .expect("write policy");
        let e = format!("{:#}", load_policy(&path).expect_err("missing file"));
        assert!(e.contains("region[0].geojson"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
