//! hexcast-bench: the benchmark tooling, in its own binary so that none of it ships in the
//! production image. `match` measures the matcher on a realistic population against its
//! baselines; `push` measures the push target over gRPC on a real broker; `load` drives the
//! whole pipeline for SREs (population through BulkUpsert, incidents through Kafka, latency
//! histograms, throughput, lag, RSS, the raw broker baseline) and writes reports and plots;
//! `compare` checks two load results against a threshold.

pub mod load;
pub mod population;
pub mod push;
pub mod report;
pub mod shards;
