//! `hexcast`: one binary for every stage (`run --target`), topic management and the
//! self-contained demo.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hexcast::config::{Config, LogFormat};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "hexcast", version, about = "geofenced public-safety alert fan-out on Kafka and H3")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one or more pipeline targets against a Kafka cluster.
    Run {
        /// Config file (TOML); environment `HEXCAST__SECTION__KEY` overrides it.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// `all` (ingest,dedup,policy,spatial,push) or a comma-separated list of those and
        /// `review` (the editorial hold: its queue and the Review service, once per cluster)
        /// and `console` (the web console, beside `review`).
        #[arg(long, short, default_value = "all")]
        target: String,
        /// Override one key: `--set kafka.brokers=host:9092` (repeatable; wins over env).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
    /// Manage topics.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Run the whole pipeline in one process on an embedded broker, with synthetic
    /// subscribers and incidents, and print a summary.
    Demo(hexcast::demo::DemoArgs),
    /// Normalize feed files offline and print canonical Incident JSON lines.
    Normalize(hexcast::normalize::NormalizeArgs),
    /// Deduplicate Incident JSON lines (stdin) into IncidentEvent JSON lines (stdout).
    Dedup(hexcast::offline_stages::DedupArgs),
    /// Judge IncidentEvent JSON lines (stdin) with a policy file; print Alert JSON lines.
    Policy(hexcast::offline_stages::PolicyArgs),
    /// Print the H3 cells covering an area (every cell that touches it).
    Cover(hexcast::offline::CoverArgs),
    /// Match subscriptions against alerts offline, with the service's index and rules.
    Match(hexcast::offline::MatchArgs),
    /// Write Alert JSON lines (stdin) as OASIS CAP 1.2 messages (coarse area only).
    CapExport(hexcast::cap_export::CapExportArgs),
    /// Print every record of a topic (read_committed, to its current end) as JSON lines.
    Decode(hexcast::decode::DecodeArgs),
    /// Benchmarks: forwards its arguments to the `hexcast-bench` binary (built by
    /// `cargo build -p hexcast-bench`; not part of the production image).
    Bench {
        /// `match`, `push`, `load` or `compare`, and their arguments (`hexcast-bench --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum TopicsCommand {
    /// Create every pipeline topic that is missing.
    Create {
        /// Config file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Override one key (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
}

fn init_logs(format: LogFormat, filter: Option<&str>, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(filter.unwrap_or(default)))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn run(config: Option<PathBuf>, target: &str, sets: &[String]) -> anyhow::Result<()> {
    // Every key checked and every file read before anything happens: a wrong configuration
    // creates no topic and opens no port.
    let cfg = Config::load(config.as_deref(), sets)?;
    let targets = hexcast::parse_targets(target)?;
    let prepared = hexcast::targets::prepare(&cfg, &targets, None, None)?;
    init_logs(cfg.log.format, cfg.log.filter.as_deref(), "info");
    if let Some(listen) = cfg.metrics.listen {
        hexcast_runtime::telemetry::install_prometheus(listen)?;
    }
    if cfg.topics.create {
        hexcast::create_topics(&cfg).await?;
    }
    let shutdown = CancellationToken::new();
    hexcast_runtime::shutdown::cancel_on_signal(shutdown.clone());
    // The health server outlives the stages' shutdown token so it can report NOT_SERVING.
    let health_stop = CancellationToken::new();
    let health = match cfg.health.listen {
        Some(listen) => Some(hexcast::health::serve(listen, health_stop.clone()).await?),
        None => None,
    };
    let rt = hexcast::runtime(&cfg);
    let check = hexcast::spawn_kafka_check(&cfg);
    let started = hexcast::targets::start_prepared(&cfg, &rt, &targets, prepared, None, None, shutdown.clone()).await;
    let running = hexcast::when_connected(check, started).await?;
    tracing::info!(targets = %target, "hexcast running");
    // SERVING only while every stage holds partitions and the index has caught up; a stage
    // that dies on its own is fatal for the process: stop the rest and exit non-zero.
    let watch = {
        let (shutdown, readiness) = (shutdown.clone(), running.readiness());
        let health = health.clone();
        async move {
            match health {
                Some(h) => hexcast::health::watch(h, readiness, std::time::Duration::from_millis(500), shutdown).await,
                None => shutdown.cancelled().await,
            }
        }
    };
    let (result, ()) = tokio::join!(
        async {
            let r = running.join().await;
            shutdown.cancel();
            r
        },
        watch
    );
    health_stop.cancel();
    result
}

/// Runs `hexcast-bench` (beside this executable, else on `PATH`) with `args`.
fn bench(args: &[String]) -> anyhow::Result<()> {
    let beside = std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.join("hexcast-bench")));
    let program = beside.filter(|p| p.exists()).unwrap_or_else(|| PathBuf::from("hexcast-bench"));
    let status = std::process::Command::new(&program).args(args).status().map_err(|e| {
        anyhow::anyhow!("running {}: {e} (build it with `cargo build --release -p hexcast-bench`)", program.display())
    })?;
    anyhow::ensure!(status.success(), "hexcast-bench exited with {status}");
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run { config, target, sets } => run(config, &target, &sets).await,
            Command::Topics { command: TopicsCommand::Create { config, sets } } => {
                let cfg = Config::load(config.as_deref(), &sets)?;
                init_logs(cfg.log.format, cfg.log.filter.as_deref(), "info");
                hexcast::create_topics(&cfg).await
            }
            Command::Cover(args) => hexcast::offline::cover_cmd(args),
            Command::Normalize(args) => hexcast::normalize::run(args),
            Command::Dedup(args) => hexcast::offline_stages::dedup_cmd(args),
            Command::Policy(args) => hexcast::offline_stages::policy_cmd(args),
            Command::Bench { args } => bench(&args),
            Command::Match(args) => hexcast::offline::match_cmd(args),
            Command::CapExport(args) => hexcast::cap_export::cap_export_cmd(args),
            Command::Decode(args) => hexcast::decode::run(args),
            Command::Demo(args) => {
                init_logs(LogFormat::Text, None, "warn");
                hexcast::demo::run(args).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
