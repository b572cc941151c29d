#!/usr/bin/env bash
# The exactly-once fault run on a real Apache Kafka broker of its own.
#
#   scripts/faults.sh [DURATION_S [RATE [SEED [KILLS [DRIVER ARGS...]]]]]  (defaults: 60 20 1 24)
#
# Starts a broker (scripts/kafka.sh, port HEXCAST_FAULTS_KAFKA_PORT, default 19192, data
# dir kept across its restart), builds the hexcast binary and the driver (debug, or
# release with HEXCAST_FAULTS_PROFILE=release) and runs tests/src/bin/faults.rs: every
# stage as a separate `hexcast run --target` process (two push instances), a known
# population and incident stream, KILLS SIGKILLs of random stage processes at random
# moments with restarts, one broker restart (SIGTERM, or SIGKILL with
# HEXCAST_FAULTS_BROKER_STOP=kill), one push instance added and removed, and
# cursor-resuming gRPC backends. Prints a JSON summary (kills, incidents, expected,
# delivered, lost, duplicated) and exits non-zero unless nothing was lost or duplicated.
# Process logs: target/faults/logs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

duration="${1:-60}"
rate="${2:-20}"
seed="${3:-1}"
kills="${4:-24}"
shift $(($# < 4 ? $# : 4))
profile="${HEXCAST_FAULTS_PROFILE:-debug}"
# How the broker goes away once per run: `stop` (SIGTERM, the default) or `kill` (SIGKILL,
# the crash that can leave a hanging transaction: docs/runbook-hanging-transaction.md).
broker_stop="${HEXCAST_FAULTS_BROKER_STOP:-stop}"
[[ "$broker_stop" == stop || "$broker_stop" == kill ]] || { echo "HEXCAST_FAULTS_BROKER_STOP: stop or kill" >&2; exit 2; }

export HEXCAST_KAFKA_PORT="${HEXCAST_FAULTS_KAFKA_PORT:-19192}"
export HEXCAST_KAFKA_DATA="${HEXCAST_FAULTS_KAFKA_DATA:-/tmp/hexcast-faults-kafka-$HEXCAST_KAFKA_PORT}"

cleanup() { scripts/kafka.sh stop >&2 || true; }
trap cleanup EXIT

build_flags=(--locked -p hexcast -p hexcast-tests --bins)
[[ "$profile" == release ]] && build_flags+=(--release)
cargo build "${build_flags[@]}"
bin="target/$profile"

brokers="$(scripts/kafka.sh start)"
work="target/faults"
rm -rf "$work"
mkdir -p "$work"

"$bin/hexcast-faults" \
    --duration "$duration" --rate "$rate" --seed "$seed" --kills "$kills" \
    --hexcast "$bin/hexcast" --brokers "$brokers" \
    --broker-stop "scripts/kafka.sh $broker_stop" --broker-resume "scripts/kafka.sh resume" \
    --work-dir "$work" "$@"
