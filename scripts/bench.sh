#!/usr/bin/env bash
# The complete load bench on a fresh clone: starts a throwaway Apache Kafka broker
# (scripts/kafka.sh), builds hexcast, runs `hexcast bench load` (population through the
# Subscriptions API, incidents through the whole pipeline, a burst, and Kafka's own
# ProducerPerformance/ConsumerPerformance on the same broker), optionally the 3 M-subscriber
# city-wide alert of `hexcast bench push`, writes JSON and plots into the results folder,
# then stops the broker.
#
#   scripts/bench.sh [extra `hexcast bench load` args, e.g. --compare old/result.json]
#
# Environment (all optional):
#   BENCH_OUT          results folder (default target/bench)
#   BENCH_PROFILE      release (default) or debug (no release build: quick, slower figures)
#   BENCH_SUBSCRIBERS  population (default 1000000)
#   BENCH_RATE         synthetic incidents per second (default 1000)
#   BENCH_DURATION     how long to publish (default 60s)
#   BENCH_BURST        incidents of the max-throughput burst after the timed phase, for the
#                      pipeline-vs-raw-broker fraction (default 0: none; it also waits out
#                      any backlog the timed phase left, so use it with a rate the pipeline keeps)
#   BENCH_RAW_RECORDS  records of the raw broker baseline (default 1000000)
#   BENCH_REPLAY       a CAD export to replay instead (e.g.
#                      ../shared/data/cad/montco_pa_911_2015-12_2016-01.csv), BENCH_SPEEDUP
#   BENCH_CITY_WIDE    subscribers of the city-wide alert bench (default 0: skipped; 3000000)
#   HEXCAST_KAFKA_PORT broker port (default 19092); HEXCAST_BENCH_BROKERS: use a running one
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

out="${BENCH_OUT:-target/bench}"
profile="${BENCH_PROFILE:-release}"
mkdir -p "$out"

started=""
cleanup() {
    if [[ -n "$started" ]]; then
        scripts/kafka.sh stop >&2 || true
    fi
}
trap cleanup EXIT

case "$profile" in
    release) cargo build --release --locked -p hexcast-bench >&2; bin=target/release/hexcast-bench ;;
    debug) cargo build --locked -p hexcast-bench >&2; bin=target/debug/hexcast-bench ;;
    *) echo "bench.sh: BENCH_PROFILE must be release or debug, not $profile" >&2; exit 2 ;;
esac
scripts/kafka.sh fetch >&2

if [[ -z "${HEXCAST_BENCH_BROKERS:-}" ]]; then
    export HEXCAST_KAFKA_PORT="${HEXCAST_KAFKA_PORT:-19092}"
    HEXCAST_BENCH_BROKERS="$(scripts/kafka.sh start)"
    started=1
fi
export HEXCAST_BENCH_BROKERS
echo "bench.sh: Apache Kafka $(scripts/kafka.sh version) at $HEXCAST_BENCH_BROKERS, $bin" >&2

args=(
    --subscribers "${BENCH_SUBSCRIBERS:-1000000}"
    --rate "${BENCH_RATE:-1000}"
    --duration "${BENCH_DURATION:-60s}"
    --burst "${BENCH_BURST:-0}"
    --kafka-sh scripts/kafka.sh
    --raw-records "${BENCH_RAW_RECORDS:-1000000}"
    --out "$out"
)
if [[ -n "${BENCH_REPLAY:-}" ]]; then
    args+=(--replay "$BENCH_REPLAY" --speedup "${BENCH_SPEEDUP:-60}")
fi
"$bin" load "${args[@]}" "$@" | tee "$out/summary.txt"

if [[ "${BENCH_CITY_WIDE:-0}" != 0 ]]; then
    echo "bench.sh: city-wide alert to $BENCH_CITY_WIDE subscribers (hexcast bench push)" >&2
    "$bin" push --subscribers "$BENCH_CITY_WIDE" | tee "$out/push.txt" | tail -n 1 > "$out/push.json"
fi
echo "bench.sh: results in $out (result.json, report.html, latency.svg, throughput.svg, lag.svg)" >&2
