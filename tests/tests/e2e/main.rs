//! End-to-end tests on a real Apache Kafka broker (`HEXCAST_TEST_BROKERS`, started by
//! `scripts/test.sh`). They never fall back to a mock: without a broker they fail.

mod auth;
mod common;
mod console;
mod dedup_restart;
mod health;
mod hostile;
mod ingest_feeds;
mod interop;
mod lifecycle;
mod load_bench;
mod oversized;
mod pipeline;
mod recipients;
mod repair;
mod requests;
mod resume;
mod review;
mod runner_crash;
mod sasl;
mod scale_out;
mod streams;
