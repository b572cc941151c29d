//! `hexcast-bench`: the benchmarks (`hexcast bench ...` forwards here).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "hexcast-bench", version, about = "hexcast benchmarks: matcher, push service, whole-pipeline load")]
struct Cli {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// The matcher on a realistic population, with baselines; prints JSON.
    Match(hexcast_bench::population::MatchBenchArgs),
    /// The push service on a real Kafka cluster over gRPC: stream, BulkUpsert and a
    /// city-wide alert; prints JSON.
    Push(hexcast_bench::push::PushBenchArgs),
    /// The load bench for SREs: a population through the Subscriptions API, incidents
    /// (synthetic or a replay) through the whole pipeline, latency histogram, throughput,
    /// lag, RSS, the raw broker baseline; writes result.json and plots.
    Load(Box<hexcast_bench::load::LoadBenchArgs>),
    /// Compares two `bench load` result files; exits non-zero past the threshold.
    Compare(hexcast_bench::load::CompareArgs),
    /// How one city's subscribers spread over the shards under each shard scheme; prints
    /// JSON (counts, no timing).
    Shards(hexcast_bench::shards::ShardsBenchArgs),
}

fn init_logs(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

#[allow(clippy::print_stdout)]
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
            BenchCommand::Match(args) => {
                println!("{}", hexcast_bench::population::run_match(&args)?);
                Ok(())
            }
            BenchCommand::Push(args) => {
                init_logs("warn");
                println!("{}", hexcast_bench::push::run(&args).await?);
                Ok(())
            }
            BenchCommand::Load(args) => {
                init_logs("warn,librdkafka=error,hexcast_runtime::changelog=error");
                let regressed = hexcast_bench::load::run(&args).await?;
                anyhow::ensure!(!regressed, "a figure regressed past the threshold");
                Ok(())
            }
            BenchCommand::Shards(args) => {
                println!("{}", hexcast_bench::shards::run(&args)?);
                Ok(())
            }
            BenchCommand::Compare(args) => {
                let regressed = hexcast_bench::load::compare_cmd(&args)?;
                anyhow::ensure!(!regressed, "a figure regressed past the threshold");
                Ok(())
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
