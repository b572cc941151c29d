#!/usr/bin/env bash
# A throwaway single-node Apache Kafka broker (KRaft, broker+controller in one
# JVM) for hexcast's integration tests and benchmarks, run straight from Maven
# Central jars so that no tarball, Docker or system package is needed.
#
#   scripts/kafka.sh fetch           download the jars once (cached, idempotent)
#   scripts/kafka.sh start           fresh broker; prints 127.0.0.1:PORT on stdout
#   scripts/kafka.sh resume          start again on the data dir of an earlier start,
#                                    keeping every topic, offset and transaction
#   scripts/kafka.sh stop            SIGTERM, then SIGKILL after a timeout
#   scripts/kafka.sh kill            SIGKILL at once, as a crash would (fault runs);
#                                    the pid file is left behind, as a crash leaves it
#   scripts/kafka.sh status          exit 0 if running, 3 if not
#   scripts/kafka.sh client-info     key=value lines a client needs (bootstrap,
#                                    security protocol, SASL user and password file,
#                                    CA, client certificate, Java client properties)
#   scripts/kafka.sh version         Kafka version of the (cached) jars
#   scripts/kafka.sh run-class CLASS [ARGS...]
#                                    any class from the jars, e.g.
#                                    org.apache.kafka.tools.ProducerPerformance
#
# Environment (all optional):
#   HEXCAST_KAFKA_PORT     client port (default 19092); the controller uses PORT+1.
#                          Brokers on different ports can run side by side.
#   HEXCAST_KAFKA_DATA     data dir, wiped on start (default /tmp/hexcast-kafka-PORT);
#                          holds server.properties, kafka.log and kafka.pid.
#   HEXCAST_KAFKA_HOME     jar cache (default ~/.cache/hexcast/kafka-VERSION)
#   HEXCAST_KAFKA_VERSION  Kafka version to fetch (default below)
#   HEXCAST_KAFKA_HEAP_OPTS          broker heap (default -Xms256m -Xmx1g)
#   HEXCAST_KAFKA_LOG_LEVEL          broker root log level (default INFO)
#   HEXCAST_KAFKA_START_TIMEOUT      seconds to wait for readiness (default 90)
#   HEXCAST_KAFKA_STOP_TIMEOUT       seconds before SIGKILL on stop (default 30)
#   HEXCAST_KAFKA_EXTRA_PROPS        extra server.properties lines (key=value,
#                                    newline-separated); they win over ours
#   HEXCAST_KAFKA_SECURITY           plaintext (default) or sasl_ssl: the client
#                                    listener then accepts only SASL_SSL with
#                                    SCRAM-SHA-512. A CA, a broker and a client
#                                    certificate are made with openssl in DATA/tls, the
#                                    SCRAM users `hexcast` (for clients) and `admin`
#                                    (inter-broker) are added at format time, their
#                                    passwords in DATA/scram/*.password. `resume` keeps
#                                    the mode the data dir was started with.
#
# Progress and diagnostics go to stderr; stdout carries only what a caller may
# want to capture (the bootstrap address, the version, tool output).
set -euo pipefail

# 4.3.1 is the newest 4.x for which both kafka_2.13 and kafka-tools are on
# Maven Central (kafka_2.13 4.4.0 exists, kafka-tools 4.4.0 does not, and
# mixing versions on one classpath is asking for trouble).
KAFKA_VERSION="${HEXCAST_KAFKA_VERSION:-4.3.1}"
PORT="${HEXCAST_KAFKA_PORT:-19092}"
CONTROLLER_PORT=$((PORT + 1))
KAFKA_HOME="${HEXCAST_KAFKA_HOME:-$HOME/.cache/hexcast/kafka-$KAFKA_VERSION}"
DATA_DIR="${HEXCAST_KAFKA_DATA:-/tmp/hexcast-kafka-$PORT}"
HEAP_OPTS="${HEXCAST_KAFKA_HEAP_OPTS:--Xms256m -Xmx1g}"
LOG_LEVEL="${HEXCAST_KAFKA_LOG_LEVEL:-INFO}"
START_TIMEOUT="${HEXCAST_KAFKA_START_TIMEOUT:-90}"
STOP_TIMEOUT="${HEXCAST_KAFKA_STOP_TIMEOUT:-30}"
EXTRA_PROPS="${HEXCAST_KAFKA_EXTRA_PROPS:-}"
SECURITY="${HEXCAST_KAFKA_SECURITY:-}"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
POM="$SCRIPT_DIR/kafka/pom.xml"
LIB="$KAFKA_HOME/lib"
FETCHED_MARKER="$KAFKA_HOME/.fetched"
TOOLS_LOG4J="$KAFKA_HOME/tools-log4j2.properties"
PID_FILE="$DATA_DIR/kafka.pid"
LOG_FILE="$DATA_DIR/kafka.log"
CONFIG="$DATA_DIR/server.properties"
# Only a directory carrying this file is ever wiped, so a mistyped
# HEXCAST_KAFKA_DATA cannot delete somebody's files.
DATA_MARKER="$DATA_DIR/.hexcast-kafka"
BOOTSTRAP="127.0.0.1:$PORT"
# sasl_ssl material, all inside the data dir (wiped with it on the next start).
SECURITY_FILE="$DATA_DIR/security"
TLS_DIR="$DATA_DIR/tls"
SCRAM_DIR="$DATA_DIR/scram"
SCRAM_MECHANISM=SCRAM-SHA-512
CLIENT_USER=hexcast
ADMIN_USER=admin
CLIENT_PROPS="$DATA_DIR/client.properties"
# For the short-lived helper JVMs of `start` (format, readiness check): C1
# only and the serial GC start about 0.4 s faster each. Not for run-class,
# whose perf tools need the full JIT.
SHORT_JVM=(-XX:TieredStopAtLevel=1 -XX:+UseSerialGC "-Dlog4j2.configurationFile=$TOOLS_LOG4J")

log() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
# Seconds since $1 (an $EPOCHREALTIME), to one decimal place.
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

# ---------------------------------------------------------------------------
# Readiness check, compiled once into the cache. An open port proves little:
# the socket is bound well before the broker serves requests, and a broker
# still fenced rejects topic creation ("replication factor larger than
# available brokers"). The check also creates __consumer_offsets and
# __transaction_state up front, so the first test to use a group or a
# transaction does not pay for that (or time out on it).
READY_CLASS=HexcastKafkaReady
READY_SRC=$(cat <<'JAVA'
import java.io.FileInputStream;
import java.io.InputStream;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.CreateTopicsOptions;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.common.errors.TransactionalIdNotFoundException;

public class HexcastKafkaReady {
    public static void main(String[] args) throws Exception {
        String bootstrap = args[0];
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(Long.parseLong(args[1]));
        Properties p = new Properties();
        p.put("bootstrap.servers", bootstrap);
        p.put("request.timeout.ms", "5000");
        p.put("default.api.timeout.ms", "10000");
        p.put("retry.backoff.ms", "100");
        p.put("reconnect.backoff.ms", "100");
        p.put("reconnect.backoff.max.ms", "500");
        if (args.length > 2) {
            // Security settings of a secured listener (client.properties).
            try (InputStream in = new FileInputStream(args[2])) {
                p.load(in);
            }
        }
        String probe = "hexcast-ready-probe";
        Exception last = null;
        try (Admin admin = Admin.create(p)) {
            while (System.nanoTime() < deadline) {
                try {
                    // Fenced brokers are left out of describeCluster.
                    if (admin.describeCluster().nodes().get(10, TimeUnit.SECONDS).isEmpty())
                        throw new IllegalStateException("no unfenced broker yet");
                    admin.createTopics(List.of(new NewTopic(probe, 1, (short) 1)),
                            new CreateTopicsOptions().validateOnly(true)).all().get(10, TimeUnit.SECONDS);
                    admin.listConsumerGroupOffsets(probe).partitionsToOffsetAndMetadata()
                            .get(30, TimeUnit.SECONDS);
                    try {
                        admin.describeTransactions(List.of(probe)).all().get(30, TimeUnit.SECONDS);
                    } catch (ExecutionException e) {
                        // Reaching the coordinator and hearing "unknown id" is the goal.
                        if (!(e.getCause() instanceof TransactionalIdNotFoundException)) throw e;
                    }
                    System.out.println("ready");
                    return;
                } catch (Exception e) {
                    last = e;
                    Thread.sleep(200);
                }
            }
        }
        System.err.println("broker not ready: " + last);
        System.exit(1);
    }
}
JAVA
)
READY_DIR="$KAFKA_HOME/ready-$(printf '%s' "$READY_SRC" | sha256sum | cut -c1-12)"

# ---------------------------------------------------------------------------
# fetch

# Everything in the cache is built under an exclusive lock and published by
# rename, because parallel test runs may all start brokers on a cold cache.
with_cache_lock() {
  mkdir -p "$KAFKA_HOME"
  # A subshell, so the lock fd is closed before any broker is launched;
  # a broker inheriting it would hold the lock for its whole life.
  ( flock 9; "$@" ) 9>"$KAFKA_HOME/.lock"
}

fetch_locked() {
  [[ -f "$FETCHED_MARKER" && -d "$LIB" ]] && return 0
  command -v mvn >/dev/null || die "mvn not found (needed once to fetch the Kafka jars)"
  log "fetching Kafka $KAFKA_VERSION jars into $LIB"
  local partial="$KAFKA_HOME/lib.partial"
  rm -rf "$partial" "$LIB"
  mvn -q -B -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
    -Dkafka.version="$KAFKA_VERSION" \
    -DincludeScope=runtime \
    -DoutputDirectory="$partial" 2>&1 \
    | sed 's/\x1b\[[0-9;]*m//g' >&2 \
    || die "mvn could not fetch Kafka $KAFKA_VERSION"
  [[ -f "$partial/kafka_2.13-$KAFKA_VERSION.jar" && -f "$partial/kafka-tools-$KAFKA_VERSION.jar" ]] \
    || die "fetched jars lack kafka_2.13/kafka-tools $KAFKA_VERSION"
  mv "$partial" "$LIB"
  # The tools would otherwise use log4j's default config, which prints
  # nothing below ERROR; WARN to stderr keeps stdout clean for their output.
  cat >"$TOOLS_LOG4J" <<'EOF'
status = warn
appender.err.type = Console
appender.err.name = err
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = err
EOF
  echo "$KAFKA_VERSION" >"$FETCHED_MARKER"
}

ready_check_locked() {
  [[ -f "$READY_DIR/$READY_CLASS.class" ]] && return 0
  command -v javac >/dev/null || die "javac not found (a JDK 17+ is needed)"
  local tmp="$READY_DIR.partial"
  rm -rf "$tmp" && mkdir -p "$tmp"
  printf '%s\n' "$READY_SRC" >"$tmp/$READY_CLASS.java"
  javac -nowarn -d "$tmp" -cp "$LIB/*" "$tmp/$READY_CLASS.java" >&2 \
    || die "could not compile the readiness check"
  rm -rf "$READY_DIR" && mv "$tmp" "$READY_DIR"
}

ensure_fetched() {
  if [[ ! -f "$FETCHED_MARKER" || ! -d "$LIB" || ! -f "$READY_DIR/$READY_CLASS.class" ]]; then
    with_cache_lock fetch_locked
    with_cache_lock ready_check_locked
  fi
}

cmd_fetch() {
  ensure_fetched
  log "Kafka $KAFKA_VERSION jars in $LIB"
}

# ---------------------------------------------------------------------------
# process helpers

# True if PID is alive (zombies count as dead) and is the broker of *this*
# data dir, so a stale pid file never gets some recycled pid killed.
is_our_broker() {
  local pid=$1 state cmdline
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [[ -r "/proc/$pid/stat" ]] || return 1
  state=$(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/$pid/stat" 2>/dev/null) || return 1
  [[ "$state" != Z ]] || return 1
  cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ "$cmdline" == *" kafka.Kafka $CONFIG"* ]]
}

running_pid() {
  local pid
  [[ -f "$PID_FILE" ]] || return 1
  pid=$(<"$PID_FILE")
  is_our_broker "$pid" || return 1
  echo "$pid"
}

port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Waits for PID to go away; 0 if it did within $2 seconds.
wait_gone() {
  local pid=$1 deadline=$((SECONDS + $2))
  while is_our_broker "$pid"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

terminate() {
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || true
  if ! wait_gone "$pid" "$STOP_TIMEOUT"; then
    log "broker pid $pid still up after ${STOP_TIMEOUT}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone "$pid" 10 || die "broker pid $pid survived SIGKILL"
  fi
}

# The version the jars report about themselves, as the broker logs it.
jar_version() {
  local jar v
  jar=$(compgen -G "$LIB/kafka-clients-*.jar" | head -n1) || return 1
  v=$(unzip -p "$jar" kafka/kafka-version.properties 2>/dev/null \
    | sed -n 's/^version=//p' | tr -d '\r') || return 1
  [[ -n "$v" ]] || return 1
  echo "$v"
}

# ---------------------------------------------------------------------------
# start

# A KRaft cluster id is 16 random bytes in unpadded URL-safe base64. Made
# here rather than with `StorageTool random-uuid` to spare a JVM start;
# like Kafka, avoid ids starting with '-', which CLIs take for a flag.
new_cluster_id() {
  local id
  while :; do
    id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
    [[ "$id" != -* ]] && { echo "$id"; return; }
  done
}

prepare_data_dir() {
  if [[ -e "$DATA_DIR" ]]; then
    [[ -d "$DATA_DIR" ]] || die "$DATA_DIR exists and is not a directory"
    if [[ ! -f "$DATA_MARKER" && -n "$(ls -A "$DATA_DIR")" ]]; then
      die "$DATA_DIR is not empty and was not made by kafka.sh; refusing to wipe it"
    fi
    rm -rf "$DATA_DIR"
  fi
  mkdir -p "$DATA_DIR/logs"
  touch "$DATA_MARKER"
}

# The security mode of this start: the environment's for a fresh start; for
# resume, the one the data dir was started with (its SCRAM users and
# certificates exist only for that mode).
resolve_security() {
  local keep=$1 recorded=""
  [[ -f "$SECURITY_FILE" ]] && recorded=$(<"$SECURITY_FILE")
  if [[ -n "$keep" && -n "$recorded" ]]; then
    [[ -z "$SECURITY" || "$SECURITY" == "$recorded" ]] \
      || die "$DATA_DIR was started with HEXCAST_KAFKA_SECURITY=$recorded, not $SECURITY"
    SECURITY=$recorded
  fi
  SECURITY=${SECURITY:-plaintext}
  case "$SECURITY" in
    plaintext | sasl_ssl) ;;
    *) die "HEXCAST_KAFKA_SECURITY=$SECURITY (expected plaintext or sasl_ssl)" ;;
  esac
}

# 24 characters from [A-Za-z0-9]: safe inside JAAS quotes and --add-scram's
# [name=...,password=...] syntax.
new_password() {
  local pw=""
  while ((${#pw} < 24)); do
    pw+=$(head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
  done
  printf '%s' "${pw:0:24}"
}

# A throwaway CA, a broker certificate for 127.0.0.1/localhost and a client
# certificate (for clients that present one: the listener requests it), all
# PEM. Keys are unencrypted PKCS#8, which both Kafka's PEM key store and
# librdkafka read; they live in the data dir and die with it.
make_tls_material() {
  command -v openssl >/dev/null || die "openssl not found (needed for HEXCAST_KAFKA_SECURITY=sasl_ssl)"
  mkdir -p "$TLS_DIR"
  # (set -e does not reach into a subshell whose status is tested: hence the
  # explicit exits.)
  (
    cd "$TLS_DIR" || exit 1
    umask 077
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -keyout ca.key -out ca.pem \
      -subj "/CN=hexcast test CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" || exit 1
    for who in broker client; do
      cn=localhost usage=serverAuth,clientAuth
      [[ $who == client ]] && { cn=$CLIENT_USER; usage=clientAuth; }
      openssl req -newkey rsa:2048 -nodes -keyout "$who.key" -out "$who.csr" -subj "/CN=$cn" || exit 1
      openssl x509 -req -in "$who.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
        -out "$who.pem" -extfile <(printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=%s\n' "$usage") || exit 1
      rm -f "$who.csr"
    done
    # Kafka's PEM key store: the key, then the chain, in one file.
    cat broker.key broker.pem ca.pem >broker-keystore.pem || exit 1
    # The CA is public; clients of other users may read it.
    chmod 644 ca.pem
  ) >"$DATA_DIR/tls.log" 2>&1 || { cat "$DATA_DIR/tls.log" >&2; die "making the TLS material failed"; }
}

make_scram_passwords() {
  mkdir -p "$SCRAM_DIR"
  (
    umask 077
    new_password >"$SCRAM_DIR/$CLIENT_USER.password"
    new_password >"$SCRAM_DIR/$ADMIN_USER.password"
  )
}

# --add-scram arguments of the format step: the users exist from the first
# metadata record on, so the inter-broker login works on the first start.
scram_format_args() {
  local user
  for user in "$CLIENT_USER" "$ADMIN_USER"; do
    printf '%s\n' --add-scram "$SCRAM_MECHANISM=[name=$user,password=$(<"$SCRAM_DIR/$user.password")]"
  done
}

jaas_line() {
  printf 'org.apache.kafka.common.security.scram.ScramLoginModule required username="%s" password="%s";' \
    "$1" "$(<"$SCRAM_DIR/$1.password")"
}

# The listeners part of server.properties, by mode.
listener_config() {
  if [[ "$SECURITY" == sasl_ssl ]]; then
    # The broker talks to itself (transaction markers, for one) over the one
    # client listener too, as the admin user: nothing but the controller
    # listener is ever plaintext.
    cat <<EOF
listeners=SASL_SSL://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=SASL_SSL://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=SASL_SSL
listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms=$SCRAM_MECHANISM
sasl.mechanism.inter.broker.protocol=$SCRAM_MECHANISM
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=$(jaas_line "$ADMIN_USER")
ssl.keystore.type=PEM
ssl.keystore.location=$TLS_DIR/broker-keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$TLS_DIR/ca.pem
# Clients may present a certificate (it must then be signed by the CA); SASL
# is what every client must pass.
ssl.client.auth=requested
EOF
  else
    cat <<EOF
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
EOF
  fi
}

# Java client settings for the listener (readiness check, run-class tools
# with --command-config / --producer.config).
write_client_properties() {
  if [[ "$SECURITY" == sasl_ssl ]]; then
    (
      umask 077
      cat >"$CLIENT_PROPS" <<EOF
security.protocol=SASL_SSL
sasl.mechanism=$SCRAM_MECHANISM
sasl.jaas.config=$(jaas_line "$CLIENT_USER")
ssl.truststore.type=PEM
ssl.truststore.location=$TLS_DIR/ca.pem
EOF
    )
  else
    printf 'security.protocol=PLAINTEXT\n' >"$CLIENT_PROPS"
  fi
}

write_config() {
  cat >"$CONFIG" <<EOF
# Written by scripts/kafka.sh for a single-node test broker; rewritten on every start.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$CONTROLLER_PORT
$(listener_config)
log.dirs=$DATA_DIR/logs

# One broker: every internal topic must fit on it.
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Tests create their topics explicitly; a typo must fail, not invent a topic.
auto.create.topics.enable=false

# Internal topics with one partition are created in well under a second;
# the defaults (50) make the first group or transaction in a test slow.
offsets.topic.num.partitions=1
transaction.state.log.num.partitions=1

# Consumer groups: no waiting for more members before the first assignment,
# and short enough timeouts (new KIP-848 protocol) for tests that kill members.
group.initial.rebalance.delay.ms=0
group.consumer.min.heartbeat.interval.ms=500
group.consumer.heartbeat.interval.ms=1000
group.consumer.min.session.timeout.ms=3000
group.consumer.session.timeout.ms=10000

# Transactions: allow long ones, and abort timed-out ones promptly so tests
# of fencing and timeouts do not wait the default 10 s sweep.
transaction.max.timeout.ms=900000
transaction.abort.timed.out.transaction.cleanup.interval.ms=1000

# Compacted topics: the cleaner is on by default, but starts only after
# log.initial.task.delay.ms (30 s) and then polls every 15 s. The smaller
# dedupe buffer keeps its 128 MiB default from eating the small heap.
log.cleaner.enable=true
log.cleaner.threads=1
log.cleaner.backoff.ms=1000
log.cleaner.dedupe.buffer.size=33554432
log.initial.task.delay.ms=1000
EOF
  write_client_properties
  if [[ -n "$EXTRA_PROPS" ]]; then
    # Later keys override earlier ones in a properties file.
    printf '\n# From HEXCAST_KAFKA_EXTRA_PROPS\n%s\n' "$EXTRA_PROPS" >>"$CONFIG"
  fi

  cat >"$DATA_DIR/log4j2.properties" <<EOF
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = $LOG_LEVEL
rootLogger.appenderRef.out.ref = out
# The full config dumps (hundreds of lines per client and server) drown the log.
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
EOF
}

cmd_start() {
  local keep=${1:-} pid t0=$SECONDS t0_real=$EPOCHREALTIME
  ensure_fetched

  if pid=$(running_pid); then
    log "a broker is already running here (pid $pid); stopping it to start again"
    terminate "$pid"
  fi
  local p
  for p in "$PORT" "$CONTROLLER_PORT"; do
    # A process killed a moment ago may still hold its sockets: the kernel releases its
    # memory (and its /proc cmdline) before its files, so give the port a few seconds.
    local free_by=$((SECONDS + 10))
    while port_in_use "$p" && ((SECONDS < free_by)); do
      sleep 0.2
    done
    if port_in_use "$p"; then
      die "port $p is already in use (set HEXCAST_KAFKA_PORT)"
    fi
  done

  # A broker killed with SIGKILL leaves its pid file behind. Left in place, the
  # watch below could read that dead pid before the new broker writes its own
  # and report "broker exited during startup" while the new one runs.
  rm -f "$PID_FILE"

  resolve_security "$keep"
  if [[ -n "$keep" ]]; then
    # resume: the formatted log dir of an earlier start, kept as it is.
    [[ -f "$DATA_MARKER" && -f "$DATA_DIR/logs/meta.properties" ]] \
      || die "nothing to resume in $DATA_DIR (run start first)"
    write_config
  else
    prepare_data_dir
    echo "$SECURITY" >"$SECURITY_FILE"
    local format_args=()
    if [[ "$SECURITY" == sasl_ssl ]]; then
      make_tls_material
      make_scram_passwords
      mapfile -t format_args < <(scram_format_args)
    fi
    write_config

    local cluster_id
    cluster_id=$(new_cluster_id)
    # --standalone makes this node the sole voter of a dynamic quorum, which
    # is what controller.quorum.bootstrap.servers (vs. .voters) calls for.
    java "${SHORT_JVM[@]}" -cp "$LIB/*" kafka.tools.StorageTool \
      format --standalone -t "$cluster_id" -c "$CONFIG" "${format_args[@]}" >"$DATA_DIR/format.log" 2>&1 \
      || { cat "$DATA_DIR/format.log" >&2; die "storage format failed"; }
  fi

  # setsid: the broker outlives this script and is not hit by signals sent
  # to the caller's process group (Ctrl-C on a test run, a closing terminal).
  # The pid is written by the process itself, because setsid may fork.
  # shellcheck disable=SC2016,SC2086  # $$ is for the inner bash; HEAP_OPTS is a list
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PID_FILE" \
    java $HEAP_OPTS -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent \
    -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$DATA_DIR/log4j2.properties" \
    -Dkafka.logs.dir="$DATA_DIR" \
    -cp "$LIB/*" kafka.Kafka "$CONFIG" \
    >>"$LOG_FILE" 2>&1 </dev/null &
  local launcher=$!

  # The check retries on its own, so its JVM starts alongside the broker's
  # and its start-up time is hidden. Meanwhile the broker is watched, to fail
  # fast if it dies (bad config, port race) rather than sit out the timeout.
  local budget=$((START_TIMEOUT - (SECONDS - t0)))
  ((budget > 5)) || budget=5
  java "${SHORT_JVM[@]}" -cp "$READY_DIR:$LIB/*" "$READY_CLASS" "$BOOTSTRAP" "$budget" "$CLIENT_PROPS" \
    >/dev/null 2>"$DATA_DIR/ready.log" &
  local checker=$! deadline=$((SECONDS + budget + 5))
  pid=""
  while kill -0 "$checker" 2>/dev/null; do
    if [[ -z "$pid" && -s "$PID_FILE" ]]; then
      pid=$(<"$PID_FILE")
    fi
    if [[ -n "$pid" ]] && ! is_our_broker "$pid"; then
      kill "$checker" 2>/dev/null || true
      start_failed "$pid" "broker exited during startup"
    fi
    if [[ -z "$pid" ]] && ! kill -0 "$launcher" 2>/dev/null; then
      # The launcher may have written the pid just before it exec'd and the
      # broker died, or setsid may have forked: look once more.
      [[ -s "$PID_FILE" ]] && continue
      kill "$checker" 2>/dev/null || true
      start_failed "" "broker exited at once"
    fi
    if ((SECONDS >= deadline)); then
      kill "$checker" 2>/dev/null || true
      start_failed "$pid" "readiness check hung"
    fi
    sleep 0.1
  done
  if ! wait "$checker"; then
    tail -n 5 "$DATA_DIR/ready.log" >&2 || true
    start_failed "$pid" "broker did not become ready within ${START_TIMEOUT}s"
  fi
  [[ -n "$pid" ]] || pid=$(<"$PID_FILE")

  log "Kafka $(jar_version || echo "$KAFKA_VERSION") ready at $BOOTSTRAP" \
    "(pid $pid, $SECURITY, data $DATA_DIR, $(since "$t0_real")s)"
  if [[ "$SECURITY" != plaintext ]]; then
    log "a client needs (also: $0 client-info):"
    client_info | sed 's/^/  /' >&2
  fi
  echo "$BOOTSTRAP"
}

client_info() {
  echo "bootstrap=$BOOTSTRAP"
  if [[ "$SECURITY" == sasl_ssl ]]; then
    echo "security_protocol=SASL_SSL"
    echo "sasl_mechanism=$SCRAM_MECHANISM"
    echo "sasl_username=$CLIENT_USER"
    echo "sasl_password_file=$SCRAM_DIR/$CLIENT_USER.password"
    echo "ca_file=$TLS_DIR/ca.pem"
    echo "cert_file=$TLS_DIR/client.pem"
    echo "key_file=$TLS_DIR/client.key"
  else
    echo "security_protocol=PLAINTEXT"
  fi
  echo "java_client_properties=$CLIENT_PROPS"
}

start_failed() {
  local pid=$1 why=$2
  log "error: $why; last lines of $LOG_FILE:"
  tail -n 60 "$LOG_FILE" >&2 2>/dev/null || true
  # Do not leave a half-started broker holding the ports.
  if [[ -n "$pid" ]] && is_our_broker "$pid"; then
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PID_FILE"
  exit 1
}

# ---------------------------------------------------------------------------
# stop / status / version / run-class

cmd_stop() {
  local pid
  if ! pid=$(running_pid); then
    rm -f "$PID_FILE"
    log "no broker running for $DATA_DIR"
    return 0
  fi
  local t0=$EPOCHREALTIME
  terminate "$pid"
  rm -f "$PID_FILE"
  log "stopped broker pid $pid ($(since "$t0")s)"
}

# SIGKILL, for fault runs: no shutdown hooks, no controlled shutdown, open
# transactions left hanging, the pid file left stale; `resume` starts again.
cmd_kill() {
  local pid
  if ! pid=$(running_pid); then
    log "no broker running for $DATA_DIR"
    return 0
  fi
  kill -KILL "$pid" 2>/dev/null || true
  wait_gone "$pid" 10 || die "broker pid $pid survived SIGKILL"
  # Its sockets close last (after its /proc entry empties): wait for the port too.
  local closed_by=$((SECONDS + 10))
  while port_in_use "$PORT" && ((SECONDS < closed_by)); do
    sleep 0.2
  done
  log "killed broker pid $pid (SIGKILL)"
}

cmd_client_info() {
  [[ -f "$SECURITY_FILE" ]] || die "no broker was started in $DATA_DIR"
  resolve_security keep
  client_info
}

cmd_status() {
  local pid
  if pid=$(running_pid); then
    if port_in_use "$PORT"; then
      echo "running pid=$pid bootstrap=$BOOTSTRAP data=$DATA_DIR"
    else
      echo "starting pid=$pid bootstrap=$BOOTSTRAP data=$DATA_DIR (port not open yet)"
    fi
    return 0
  fi
  echo "not running (data=$DATA_DIR)"
  return 3
}

cmd_version() {
  if [[ -f "$FETCHED_MARKER" ]] && jar_version; then
    return 0
  fi
  echo "$KAFKA_VERSION"
}

cmd_run_class() {
  (($# >= 1)) || die "usage: $0 run-class CLASS [ARGS...]"
  ensure_fetched
  exec java -Dlog4j2.configurationFile="$TOOLS_LOG4J" -cp "$LIB/*" "$@"
}

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
  exit 2
}

case "${1:-}" in
  fetch) cmd_fetch ;;
  start) cmd_start ;;
  resume) cmd_start keep ;;
  stop) cmd_stop ;;
  kill) cmd_kill ;;
  client-info) cmd_client_info ;;
  status) cmd_status ;;
  version) cmd_version ;;
  run-class) shift; cmd_run_class "$@" ;;
  *) usage ;;
esac
