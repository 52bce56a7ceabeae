# SPDX-License-Identifier: Apache-2.0
# shellcheck shell=bash disable=SC2034
# deploy/local/lib.sh — sourced by up.sh, down.sh, redis.sh, kafka.sh and
# kafka-tool.sh. Owns the layout of the local run dir, and the start / stop /
# readiness logic of the local Redis and the local single-node KRaft broker.
# Not executable on its own.
#
# Layout (PGLOCAL_RUN, default <repo>/.cache/run):
#   redis/{redis.pid,redis.log,data/}
#   kafka/{kafka.pid,server.properties,logs/{server.log,kafka.out},data/}
# Environment: PGLOCAL_RUN, PGLOCAL_CACHE (jar cache, see
# deploy/kafka/fetch.sh), PGLOCAL_REDIS_PORT (6379), PGLOCAL_KAFKA_PORT
# (9092), PGLOCAL_KAFKA_CONTROLLER_PORT (Kafka port + 1),
# PGLOCAL_KAFKA_SASL_PORT (Kafka port + 2: a SASL_PLAINTEXT listener with
# SCRAM-SHA-256 and the test user PG_SASL_USER below; inter-broker traffic and
# readiness stay on the PLAINTEXT port),
# PGLOCAL_KAFKA_HEAP (512m), PGLOCAL_UP_TIMEOUT (90 s),
# PGLOCAL_STOP_TIMEOUT (30 s).

PG_LOCAL="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PG_REPO="$(cd "$PG_LOCAL/../.." && pwd)"
PG_RUN="${PGLOCAL_RUN:-$PG_REPO/.cache/run}"
PG_HOST=127.0.0.1
PG_REDIS_PORT="${PGLOCAL_REDIS_PORT:-6379}"
PG_KAFKA_PORT="${PGLOCAL_KAFKA_PORT:-9092}"
PG_CTL_PORT="${PGLOCAL_KAFKA_CONTROLLER_PORT:-$((PG_KAFKA_PORT + 1))}"
PG_SASL_PORT="${PGLOCAL_KAFKA_SASL_PORT:-$((PG_KAFKA_PORT + 2))}"
# SCRAM-SHA-256 user written into the storage at format time. TEST-ONLY
# credentials for this loopback broker; never use them anywhere else. Do not
# delete SCRAM users on this broker: with Kafka 3.9.1, after any deletion the
# next broker start has no SCRAM users at all (tests upsert this one instead).
PG_SASL_USER=pinguard-test
PG_SASL_PASSWORD=pinguard-test-secret
PG_KAFKA_HEAP="${PGLOCAL_KAFKA_HEAP:-512m}"
PG_UP_TIMEOUT="${PGLOCAL_UP_TIMEOUT:-90}"
PG_STOP_TIMEOUT="${PGLOCAL_STOP_TIMEOUT:-30}"
PG_BOOTSTRAP="$PG_HOST:$PG_KAFKA_PORT"

PG_REDIS_DIR="$PG_RUN/redis"
PG_REDIS_PID="$PG_REDIS_DIR/redis.pid"
PG_REDIS_LOG="$PG_REDIS_DIR/redis.log"
PG_KAFKA_DIR="$PG_RUN/kafka"
PG_KAFKA_PID="$PG_KAFKA_DIR/kafka.pid"
PG_KAFKA_PROPS="$PG_KAFKA_DIR/server.properties"
PG_KAFKA_LOGS="$PG_KAFKA_DIR/logs"
PG_KAFKA_DATA="$PG_KAFKA_DIR/data"

# The SPEC topics (inputs and outputs, the binding feed and the audit trail),
# all with 6 partitions.
PG_TOPICS=(drs.advice vm.migrate.requests vm.migrate.results
  drs.advice.filtered vm.migrate.decisions device.release.decisions
  pinguard.dlq device.bindings pinguard.audit)
PG_PARTITIONS=6
# Settings of a topic at creation (TopicCommand --config), by topic; the rest
# take the broker's defaults (cleanup.policy=delete, log.retention.hours).
# device.bindings is compacted: the last record of each VM is kept for ever,
# which is what lets `pinguard sync --rebuild` restore a lost cache. Small for
# a demo, so that compaction is seen within minutes: a segment rolls after a
# minute (only closed segments are compacted) and the cleaner starts once a
# tenth of the log is superseded. Tombstones stay for the default day
# (delete.retention.ms), so a sync that was down that long still sees them.
declare -A PG_TOPIC_CONFIG=(
  [device.bindings]="cleanup.policy=compact min.cleanable.dirty.ratio=0.1 segment.ms=60000"
  [pinguard.audit]="cleanup.policy=delete"
)

pg_log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
pg_die() { echo "ERROR: $*" >&2; exit 1; }

# --- run dir + lock ----------------------------------------------------------

# The lock lives next to the run dir (down.sh empties the run dir).
pg_lock() {
  case "$PG_RUN" in "" | / | "$HOME" | "$HOME/") pg_die "refusing PGLOCAL_RUN='$PG_RUN'" ;; esac
  mkdir -p "$PG_RUN"
  exec 9>"${PG_RUN%/}.lock"
  flock -w 300 9 || pg_die "another deploy/local script holds ${PG_RUN%/}.lock"
}

# --- processes -----------------------------------------------------------------

# pg_pid_alive PID MARKER: the process exists, is not a finished zombie (PID 1
# of a container may never reap orphans), and its command line contains MARKER
# (pid reuse guard). A JVM's main thread can be Z while other threads still
# exit and hold its sockets: a zombie is gone only once it is the last task.
pg_pid_alive() {
  local pid="$1" marker="$2" state cmd tasks
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [ -r "/proc/$pid/stat" ] || return 1
  state="$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)" || return 1
  if [ "$state" = Z ]; then
    tasks=(/proc/"$pid"/task/*)
    ((${#tasks[@]} > 1)) || return 1
    return 0
  fi
  cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
  [[ "$cmd" == *"$marker"* ]]
}

pg_read_pid() { if [ -s "$1" ]; then tr -dc '0-9' <"$1"; fi; }

# pg_stop_pid PIDFILE MARKER NAME [KILL]: SIGTERM, wait with a deadline,
# SIGKILL; with KILL, SIGKILL at once.
pg_stop_pid() {
  local pidfile="$1" marker="$2" name="$3" sig="${4:-TERM}" pid deadline
  pid="$(pg_read_pid "$pidfile")"
  if [ -z "$pid" ] || ! pg_pid_alive "$pid" "$marker"; then
    rm -f "$pidfile"
    return 0
  fi
  pg_log "stopping $name (pid $pid, SIG$sig)"
  kill "-$sig" "$pid" 2>/dev/null || true
  deadline=$((SECONDS + PG_STOP_TIMEOUT))
  while pg_pid_alive "$pid" "$marker"; do
    if ((SECONDS >= deadline)); then
      pg_log "$name did not stop within ${PG_STOP_TIMEOUT}s, sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      deadline=$((SECONDS + 10))
      while pg_pid_alive "$pid" "$marker"; do
        ((SECONDS < deadline)) || pg_die "$name (pid $pid) survived SIGKILL"
        sleep 0.1
      done
      break
    fi
    sleep 0.1
  done
  rm -f "$pidfile"
  pg_log "$name stopped"
}

# Something accepts TCP connections on 127.0.0.1:PORT.
pg_port_open() { (exec 3<>"/dev/tcp/$PG_HOST/$1") 2>/dev/null; }

# --- Redis ---------------------------------------------------------------------

pg_redis_ping() {
  [ "$(timeout 3 redis-cli -h "$PG_HOST" -p "$PG_REDIS_PORT" PING 2>/dev/null)" = PONG ]
}

pg_redis_ours() {
  local pid
  pid="$(pg_read_pid "$PG_REDIS_PID")"
  [ -n "$pid" ] && pg_pid_alive "$pid" redis-server
}

pg_redis_start() {
  command -v redis-server >/dev/null || pg_die "redis-server not found (deploy/install-deps.sh)"
  if pg_redis_ours; then
    :
  elif pg_redis_ping; then
    pg_log "redis: a Redis not started by these scripts answers on $PG_HOST:$PG_REDIS_PORT; using it"
    return 0
  elif pg_port_open "$PG_REDIS_PORT"; then
    pg_die "redis: port $PG_REDIS_PORT is taken by something that does not answer PING"
  else
    mkdir -p "$PG_REDIS_DIR/data"
    rm -f "$PG_REDIS_PID"
    pg_log "redis: starting on $PG_HOST:$PG_REDIS_PORT"
    # Config via arguments only: no file from /etc/redis is read. The daemon
    # must not inherit fd 9 (the lock) nor the caller's stdout/stderr pipes.
    # shellcheck disable=SC2094 # redis writes the log only after daemonizing
    redis-server --bind "$PG_HOST" --port "$PG_REDIS_PORT" \
      --daemonize yes --dir "$PG_REDIS_DIR/data" \
      --pidfile "$PG_REDIS_PID" --logfile "$PG_REDIS_LOG" \
      --save '' --appendonly no --protected-mode yes \
      </dev/null >>"$PG_REDIS_LOG" 2>&1 9>&- \
      || pg_die "redis-server failed to start; see $PG_REDIS_LOG"
  fi
  local deadline=$((SECONDS + PG_UP_TIMEOUT))
  until pg_redis_ping; do
    if ((SECONDS >= deadline)); then
      echo "---- $PG_REDIS_LOG (tail) ----" >&2
      tail -n 40 "$PG_REDIS_LOG" >&2 2>/dev/null || true
      pg_die "redis did not answer PING within ${PG_UP_TIMEOUT}s"
    fi
    sleep 0.1
  done
  pg_log "redis: up on $PG_HOST:$PG_REDIS_PORT"
}

pg_redis_stop() {
  if pg_redis_ours; then
    pg_stop_pid "$PG_REDIS_PID" redis-server redis
  else
    rm -f "$PG_REDIS_PID"
    if pg_redis_ping; then
      pg_log "redis: the Redis on $PG_HOST:$PG_REDIS_PORT was not started by these scripts; left alone"
      return 1
    fi
    pg_log "redis: not running"
  fi
}

# --- Kafka ---------------------------------------------------------------------

# kcat is packaged as kafkacat on older Debian; either name works.
PG_KCAT="$(command -v kcat || command -v kafkacat || true)"
pg_kcat() {
  [ -n "$PG_KCAT" ] || pg_die "kcat/kafkacat not found (deploy/install-deps.sh)"
  "$PG_KCAT" "$@"
}

# The broker answers a Metadata request and lists at least one broker.
pg_kafka_ready() {
  [ -n "$PG_KCAT" ] || pg_die "kcat/kafkacat not found (deploy/install-deps.sh)"
  pg_port_open "$PG_KAFKA_PORT" || return 1 # kcat would wait out its -m 2
  local md
  # Captured first: with pipefail, `kcat | grep -q` can fail on SIGPIPE.
  md="$(timeout 10 "$PG_KCAT" -L -b "$PG_BOOTSTRAP" -m 2 2>/dev/null)" || return 1
  grep -q ' broker [0-9]* at ' <<<"$md"
}

pg_libs() {
  local libs
  libs="$("$PG_REPO/deploy/kafka/fetch.sh" | tail -n1)" || pg_die "deploy/kafka/fetch.sh failed"
  [ -d "$libs" ] || pg_die "fetch.sh printed '$libs', not a directory"
  echo "$libs"
}

# Tools: fast JVM start, quiet logging (WARN+ to stderr).
pg_java_tool() {
  local libs="$1"
  shift
  java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    "-Dlog4j.configuration=file:$PG_LOCAL/log4j-tools.properties" \
    -cp "$libs/*" "$@"
}

pg_kafka_ours() {
  local pid
  pid="$(pg_read_pid "$PG_KAFKA_PID")"
  [ -n "$pid" ] && pg_pid_alive "$pid" kafka.Kafka
}

pg_kafka_write_props() {
  mkdir -p "$PG_KAFKA_LOGS" "$PG_KAFKA_DATA"
  cat >"$PG_KAFKA_PROPS" <<EOF
# Generated by deploy/local (lib.sh) — single-node KRaft, combined mode.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$PG_HOST:$PG_CTL_PORT
listeners=PLAINTEXT://$PG_HOST:$PG_KAFKA_PORT,CONTROLLER://$PG_HOST:$PG_CTL_PORT,SASL_PLAINTEXT://$PG_HOST:$PG_SASL_PORT
advertised.listeners=PLAINTEXT://$PG_HOST:$PG_KAFKA_PORT,SASL_PLAINTEXT://$PG_HOST:$PG_SASL_PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT
# Clients may authenticate with SCRAM-SHA-256 on the SASL_PLAINTEXT listener
# (users: StorageTool format --add-scram, or kafka-configs / AdminClient).
sasl.enabled.mechanisms=SCRAM-SHA-256
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$PG_KAFKA_DATA
num.partitions=6
default.replication.factor=1
auto.create.topics.enable=false
min.insync.replicas=1
offsets.topic.num.partitions=6
offsets.topic.replication.factor=1
transaction.state.log.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=24
# After a SIGKILL the restarted controller refuses the broker's new
# registration (DUPLICATE_BROKER_REGISTRATION) until the old session expires:
# 9 s by default, ~15 s to ready with retry backoff. Shorter for crash tests.
broker.session.timeout.ms=3000
broker.heartbeat.interval.ms=500
EOF
}

# Start the broker (format the storage first if it has never been formatted).
pg_kafka_start() {
  command -v java >/dev/null || pg_die "java not found (deploy/install-deps.sh)"
  local started=0
  if pg_kafka_ours; then
    :
  elif pg_kafka_ready; then
    pg_log "kafka: a broker not started by these scripts answers on $PG_BOOTSTRAP; using it"
    return 0
  elif pg_port_open "$PG_KAFKA_PORT"; then
    pg_die "kafka: port $PG_KAFKA_PORT is taken by something that is not a Kafka broker"
  elif pg_port_open "$PG_CTL_PORT"; then
    pg_die "kafka: controller port $PG_CTL_PORT is taken (set PGLOCAL_KAFKA_CONTROLLER_PORT)"
  elif pg_port_open "$PG_SASL_PORT"; then
    pg_die "kafka: SASL port $PG_SASL_PORT is taken (set PGLOCAL_KAFKA_SASL_PORT)"
  else
    local libs
    libs="$(pg_libs)"
    pg_kafka_write_props
    if [ ! -f "$PG_KAFKA_DATA/meta.properties" ]; then
      local cid
      cid="$(pg_java_tool "$libs" kafka.tools.StorageTool random-uuid | tail -n1)"
      [ -n "$cid" ] || pg_die "kafka: StorageTool random-uuid printed nothing"
      pg_log "kafka: formatting $PG_KAFKA_DATA (cluster id $cid)"
      pg_java_tool "$libs" kafka.tools.StorageTool format -t "$cid" -c "$PG_KAFKA_PROPS" \
        --add-scram "SCRAM-SHA-256=[name=$PG_SASL_USER,password=$PG_SASL_PASSWORD]" >&2 \
        || pg_die "kafka: StorageTool format failed"
    fi
    rm -f "$PG_KAFKA_PID"
    # Logs are appended across starts; a failure shows only this start's lines.
    PG_LOG_MARK_SERVER="$(pg_lines "$PG_KAFKA_LOGS/server.log")"
    PG_LOG_MARK_OUT="$(pg_lines "$PG_KAFKA_LOGS/kafka.out")"
    pg_log "kafka: starting on $PG_BOOTSTRAP (controller $PG_HOST:$PG_CTL_PORT)"
    # setsid: own session, so the broker outlives the calling shell / CI step
    # group; the inner shell writes its own pid, then execs java (same pid).
    # fd 9 (the lock) is closed so the broker does not hold it forever.
    # shellcheck disable=SC2016 # $$ and $1 belong to the inner shell
    setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$PG_KAFKA_PID" \
      java "-Xmx$PG_KAFKA_HEAP" -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
      -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent \
      -Djava.awt.headless=true \
      "-Dkafka.logs.dir=$PG_KAFKA_LOGS" \
      "-Dlog4j.configuration=file:$PG_LOCAL/log4j-broker.properties" \
      -cp "$libs/*" kafka.Kafka "$PG_KAFKA_PROPS" \
      </dev/null >>"$PG_KAFKA_LOGS/kafka.out" 2>&1 9>&- &
    started=1
  fi
  local deadline=$((SECONDS + PG_UP_TIMEOUT)) pid
  until pg_kafka_ready; do
    pid="$(pg_read_pid "$PG_KAFKA_PID")"
    if ((started)) && [ -n "$pid" ] && ! pg_pid_alive "$pid" kafka.Kafka; then
      pg_kafka_tail
      pg_die "kafka: the broker process (pid $pid) exited during startup"
    fi
    if ((SECONDS >= deadline)); then
      pg_kafka_tail
      pg_die "kafka: no Metadata answer from $PG_BOOTSTRAP within ${PG_UP_TIMEOUT}s"
    fi
    sleep 0.2
  done
  pg_log "kafka: up on $PG_BOOTSTRAP (pid $(pg_read_pid "$PG_KAFKA_PID"))"
}

pg_lines() { if [ -f "$1" ]; then wc -l <"$1"; else echo 0; fi; }

# The broker log (this start's part, last 60 lines) and the JVM's own output.
pg_kafka_tail() {
  local f mark out
  for f in server.log kafka.out; do
    [ -s "$PG_KAFKA_LOGS/$f" ] || continue
    if [ "$f" = server.log ]; then mark="${PG_LOG_MARK_SERVER:-0}"; else mark="${PG_LOG_MARK_OUT:-0}"; fi
    out="$(tail -n "+$((mark + 1))" "$PG_KAFKA_LOGS/$f" | tail -n 60)"
    [ -n "$out" ] || continue
    printf -- '---- %s (tail) ----\n%s\n' "$PG_KAFKA_LOGS/$f" "$out" >&2
  done
}

pg_kafka_stop() {
  if pg_kafka_ours; then
    pg_stop_pid "$PG_KAFKA_PID" kafka.Kafka kafka "${1:-TERM}"
  else
    rm -f "$PG_KAFKA_PID"
    if pg_kafka_ready; then
      pg_log "kafka: the broker on $PG_BOOTSTRAP was not started by these scripts; left alone"
      return 1
    fi
    pg_log "kafka: not running"
  fi
}
