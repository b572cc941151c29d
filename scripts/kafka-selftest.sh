#!/usr/bin/env bash
# Self-test of scripts/kafka.sh on real brokers, with Kafka's own console tools:
#
#   1. plaintext: start, produce a record, SIGKILL the broker (`kill`), `resume`: status
#      must be 0, the pid file must name the live broker JVM (the one listening on the
#      port), and the record must still be there; then `stop`.
#   2. sasl_ssl (HEXCAST_KAFKA_SECURITY=sasl_ssl): start, produce and consume with the
#      SCRAM user over TLS; a wrong password and a plaintext client are refused; SIGKILL
#      and `resume` keep the mode, the users and the record; then `stop`.
#
#   scripts/kafka-selftest.sh
#
# Environment: HEXCAST_KAFKA_PORT (plaintext broker, default 19092) and
# HEXCAST_KAFKA_SELFTEST_SASL_PORT (default HEXCAST_KAFKA_PORT+100); each broker uses
# PORT+1 for its controller. Data dirs: /tmp/hexcast-kafka-selftest-PORT.
# Prints "N passed, N failed" and exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PLAIN_PORT="${HEXCAST_KAFKA_PORT:-19092}"
SASL_PORT="${HEXCAST_KAFKA_SELFTEST_SASL_PORT:-$((PLAIN_PORT + 100))}"
KSH="$PWD/scripts/kafka.sh"
work=$(mktemp -d)
passed=0
failed=0

pass() { passed=$((passed + 1)); printf 'ok   %s\n' "$*"; }
fail() { failed=$((failed + 1)); printf 'FAIL %s\n' "$*"; }
check() { # check DESCRIPTION COMMAND...
  local what=$1
  shift
  if "$@"; then pass "$what"; else fail "$what"; fi
}

# kafka.sh for one broker: plain|sasl, then its arguments.
broker() {
  local which=$1
  shift
  if [[ $which == sasl ]]; then
    HEXCAST_KAFKA_PORT=$SASL_PORT HEXCAST_KAFKA_DATA=/tmp/hexcast-kafka-selftest-$SASL_PORT \
      HEXCAST_KAFKA_SECURITY=${SELFTEST_SECURITY-sasl_ssl} "$KSH" "$@"
  else
    HEXCAST_KAFKA_PORT=$PLAIN_PORT HEXCAST_KAFKA_DATA=/tmp/hexcast-kafka-selftest-$PLAIN_PORT \
      HEXCAST_KAFKA_SECURITY=plaintext "$KSH" "$@"
  fi
}

cleanup() {
  broker plain stop >/dev/null 2>&1 || true
  broker sasl stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# The value of KEY in `kafka.sh client-info` of a broker.
info() { broker "$1" client-info | sed -n "s/^$2=//p"; }

create_topic() { # which topic [client properties]
  local bootstrap props=${3:-}
  bootstrap=$(info "$1" bootstrap)
  broker "$1" run-class org.apache.kafka.tools.TopicCommand --bootstrap-server "$bootstrap" \
    --create --topic "$2" --partitions 1 --replication-factor 1 ${props:+--command-config "$props"} \
    >"$work/create.out" 2>&1
}

produce() { # which topic value [client properties]
  local bootstrap props=${4:-}
  bootstrap=$(info "$1" bootstrap)
  printf '%s\n' "$3" | broker "$1" run-class org.apache.kafka.tools.ConsoleProducer \
    --bootstrap-server "$bootstrap" --topic "$2" --producer-property acks=all \
    ${props:+--command-config "$props"} >"$work/produce.out" 2>&1
}

# Prints the first record of partition 0 (empty if none within 60 s). No consumer group:
# nothing to wait for but the fetch.
consume() { # which topic [client properties]
  local bootstrap props=${3:-}
  bootstrap=$(info "$1" bootstrap)
  broker "$1" run-class org.apache.kafka.tools.consumer.ConsoleConsumer \
    --bootstrap-server "$bootstrap" --topic "$2" --partition 0 --offset earliest --max-messages 1 \
    --timeout-ms 60000 ${props:+--command-config "$props"} 2>"$work/consume.err" || true
}

# Gone: no such process, or a zombie nobody reaped yet (the broker's parent is init or
# a subreaper, not this script).
gone() {
  [[ ! -r /proc/$1/stat ]] || [[ $(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/$1/stat" 2>/dev/null) == Z ]]
}

# The pid file names a live JVM running kafka.Kafka on this data dir's config, and that
# process is the one listening on the port.
pid_file_is_live_broker() { # which port
  local data=/tmp/hexcast-kafka-selftest-$2 pid
  pid=$(cat "$data/kafka.pid" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q " kafka.Kafka $data/server.properties" || return 1
  if command -v ss >/dev/null; then
    ss -Hltnp "sport = :$2" | grep -q "pid=$pid," || return 1
  fi
}

run_quiet() { # run a kafka.sh command, its stderr kept for a failure report
  "$@" >"$work/cmd.out" 2>"$work/cmd.err" || { tail -n 20 "$work/cmd.err"; return 1; }
}

echo "== plaintext broker on $PLAIN_PORT: start, produce, SIGKILL, resume"
check "start" run_quiet broker plain start
check "create topic" create_topic plain selftest
check "produce a record" produce plain selftest "before-the-crash"
old_pid=$(cat "/tmp/hexcast-kafka-selftest-$PLAIN_PORT/kafka.pid")
check "kill (SIGKILL)" run_quiet broker plain kill
check "the killed JVM is gone" gone "$old_pid"
status_after_kill=0
broker plain status >/dev/null || status_after_kill=$?
check "status after kill exits 3 (got $status_after_kill)" test "$status_after_kill" = 3
check "resume exits 0" run_quiet broker plain resume
check "status after resume exits 0" run_quiet broker plain status
check "pid file names the live broker JVM" pid_file_is_live_broker plain "$PLAIN_PORT"
check "new pid differs from the killed one" test "$(cat "/tmp/hexcast-kafka-selftest-$PLAIN_PORT/kafka.pid")" != "$old_pid"
check "the record survived the crash" test "$(consume plain selftest)" = "before-the-crash"
check "stop" run_quiet broker plain stop
check "no pid file after stop" test ! -e "/tmp/hexcast-kafka-selftest-$PLAIN_PORT/kafka.pid"

echo "== sasl_ssl broker on $SASL_PORT: SCRAM-SHA-512 over TLS only"
check "start (sasl_ssl)" run_quiet broker sasl start
props=$(info sasl java_client_properties)
check "client-info names SASL_SSL" test "$(info sasl security_protocol)" = SASL_SSL
check "client-info's CA file exists" test -s "$(info sasl ca_file)"
check "client-info's password file exists" test -s "$(info sasl sasl_password_file)"
check "create topic as the SCRAM user" create_topic sasl selftest "$props"
check "produce as the SCRAM user" produce sasl selftest "over-sasl-ssl" "$props"
check "consume as the SCRAM user" test "$(consume sasl selftest "$props")" = "over-sasl-ssl"
sed 's/password="[^"]*"/password="not-the-password"/' "$props" >"$work/wrong.properties"
refused() { ! create_topic sasl refused "$work/wrong.properties"; }
check "a wrong password is refused" refused
check "the refusal names authentication" grep -qi "authentication failed" "$work/create.out"
printf 'security.protocol=PLAINTEXT\n' >"$work/plain.properties"
check "a plaintext client reads nothing" test -z "$(
  bootstrap=$(info sasl bootstrap)
  timeout 60 "$KSH" run-class org.apache.kafka.tools.consumer.ConsoleConsumer --bootstrap-server "$bootstrap" \
    --topic selftest --partition 0 --offset earliest --max-messages 1 --timeout-ms 8000 2>/dev/null || true
)"
check "kill (SIGKILL)" run_quiet broker sasl kill
# resume without HEXCAST_KAFKA_SECURITY: the data dir remembers its mode.
resume_mode_unset() { SELFTEST_SECURITY='' broker sasl resume; }
check "resume keeps sasl_ssl" run_quiet resume_mode_unset
check "the resumed broker is sasl_ssl" grep -q '^listeners=SASL_SSL://' "/tmp/hexcast-kafka-selftest-$SASL_PORT/server.properties"
check "pid file names the live broker JVM" pid_file_is_live_broker sasl "$SASL_PORT"
check "the SCRAM user and the record survived" test "$(consume sasl selftest "$props")" = "over-sasl-ssl"
check "stop" run_quiet broker sasl stop

echo "$passed passed, $failed failed"
((failed == 0))
