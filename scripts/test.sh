#!/usr/bin/env bash
# The test command: unit tests, property tests and the end-to-end tests on a real Apache
# Kafka broker. Uses the brokers in HEXCAST_TEST_BROKERS when set; otherwise starts a
# throwaway single-node Kafka (scripts/kafka.sh) for the run and stops it afterwards.
# Tests that need the public data sets read them from HEXCAST_DATA (default ../shared/data
# beside the checkout) and fail with one line naming what is missing.
# Likewise a second broker whose only client listener is SASL_SSL with SCRAM-SHA-512
# (HEXCAST_KAFKA_SECURITY=sasl_ssl, port HEXCAST_TEST_SASL_KAFKA_PORT, default
# HEXCAST_KAFKA_PORT+500) unless HEXCAST_TEST_SASL_BROKERS is set; its client settings are
# exported as HEXCAST_TEST_SASL_{BROKERS,CA_FILE,USERNAME,PASSWORD_FILE,CERT_FILE,KEY_FILE}.
#
#   scripts/test.sh [extra cargo test args...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Build everything first: a compile error shows before a broker is started, and the broker
# is not kept waiting through the build.
cargo test --workspace --locked --no-run "$@"

started=""
sasl_started=""
sasl_port="${HEXCAST_TEST_SASL_KAFKA_PORT:-$((${HEXCAST_KAFKA_PORT:-19092} + 500))}"
sasl_kafka() {
    HEXCAST_KAFKA_PORT="$sasl_port" HEXCAST_KAFKA_SECURITY=sasl_ssl \
        HEXCAST_KAFKA_DATA="/tmp/hexcast-kafka-$sasl_port" scripts/kafka.sh "$@"
}
cleanup() {
    if [[ -n "$started" ]]; then
        scripts/kafka.sh stop >&2 || true
    fi
    if [[ -n "$sasl_started" ]]; then
        sasl_kafka stop >&2 || true
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

if [[ -z "${HEXCAST_TEST_SASL_BROKERS:-}" ]]; then
    sasl_started=1
    HEXCAST_TEST_SASL_BROKERS="$(sasl_kafka start)"
    export HEXCAST_TEST_SASL_BROKERS
    while IFS='=' read -r key value; do
        case "$key" in
            ca_file) export HEXCAST_TEST_SASL_CA_FILE="$value" ;;
            sasl_username) export HEXCAST_TEST_SASL_USERNAME="$value" ;;
            sasl_password_file) export HEXCAST_TEST_SASL_PASSWORD_FILE="$value" ;;
            cert_file) export HEXCAST_TEST_SASL_CERT_FILE="$value" ;;
            key_file) export HEXCAST_TEST_SASL_KEY_FILE="$value" ;;
        esac
    done < <(sasl_kafka client-info)
fi
echo "test.sh: SASL_SSL (SCRAM-SHA-512) end-to-end tests run against $HEXCAST_TEST_SASL_BROKERS" >&2

cargo test --workspace --locked --no-fail-fast "$@"
