#!/usr/bin/env bash
# The test command: unit tests, property tests and the end-to-end tests on a real Apache
# Kafka broker. Uses the brokers in HEXCAST_TEST_BROKERS when set; otherwise starts a
# throwaway single-node Kafka (scripts/kafka.sh) for the run and stops it afterwards.
# Tests that need the public data sets read them from HEXCAST_DATA (default ../shared/data
# beside the checkout) and fail with one line naming what is missing.
#
#   scripts/test.sh [extra cargo test args...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Build everything first: a compile error shows before a broker is started, and the broker
# is not kept waiting through the build.
cargo test --workspace --locked --no-run "$@"

started=""
cleanup() {
    if [[ -n "$started" ]]; then
        scripts/kafka.sh stop >&2 || true
    fi
}
trap cleanup EXIT

if [[ -z "${HEXCAST_TEST_BROKERS:-}" ]]; then
    export HEXCAST_KAFKA_PORT="${HEXCAST_KAFKA_PORT:-19092}"
    HEXCAST_TEST_BROKERS="$(scripts/kafka.sh start)"
    export HEXCAST_TEST_BROKERS
    started=1
fi
echo "test.sh: end-to-end tests run against Apache Kafka $(scripts/kafka.sh version) at $HEXCAST_TEST_BROKERS" >&2

cargo test --workspace --locked --no-fail-fast "$@"
