# SPDX-License-Identifier: Apache-2.0
# shellcheck shell=bash disable=SC2034
# deploy/local/lib.sh — sourced by up.sh, down.sh, redis.sh, kafka.sh and
# kafka-tool.sh. Owns the layout of the local run dir, and the start / stop /
# readiness logic of the local Redis (standalone, or a Sentinel-managed
# primary with two replicas and three sentinels) and the local KRaft
# cluster (one combined broker/controller node, or several).
# Not executable on its own.
#
# Layout (PGLOCAL_RUN, default <repo>/.cache/run):
#   topology      what up.sh set up here (brokers, Redis mode, ports), written
#                 at the first start; later calls take these values and refuse
#                 different ones, so down.sh stops what up.sh started
#   redis/{redis.pid,redis.log,data/}       Redis node 1 (standalone: the one)
#   redis-<n>/{redis.conf,...}             Sentinel mode: nodes 2 and 3
#   sentinel-<n>/{sentinel.conf,sentinel.pid,sentinel.log}   Sentinel mode
#   kafka/{kafka.pid,server.properties,logs/{server.log,kafka.out},data/}
#   kafka-<n>/...                          the same for Kafka nodes 2, 3, ...
#
# Environment. These are PGLOCAL_*, never PINGUARD_*: pinguard reads every
# PINGUARD_<KEY> as one of its own settings (a kafka.<property> key as a
# librdkafka property), so a script variable named like that would change or
# break the worker under test.
#   PGLOCAL_RUN, PGLOCAL_CACHE (jar cache, see deploy/kafka/fetch.sh)
#   PGLOCAL_KAFKA_BROKERS (1): Kafka nodes, 1 to 5, each a combined
#     broker/controller of one static quorum (controller.quorum.voters). Node
#     n listens on PGLOCAL_KAFKA_PORT + 100*(n-1) (9092, 9192, 9292, ...),
#     its controller on that + 1, its SASL listener on that + 2. Replication
#     factor min(brokers, 3) for the SPEC and internal topics, min ISR one
#     less (at least 1): 3 and 2 with three brokers.
#   PGLOCAL_KAFKA_PORT (9092), PGLOCAL_KAFKA_CONTROLLER_PORT (node 1's
#   controller, Kafka port + 1), PGLOCAL_KAFKA_SASL_PORT (node 1's, Kafka port
#   + 2: a SASL_PLAINTEXT listener with SCRAM-SHA-256 and the test user
#   PG_SASL_USER below; inter-broker traffic and readiness stay on the
#   PLAINTEXT ports), PGLOCAL_KAFKA_HEAP (512m per node)
#   PGLOCAL_REDIS_MODE (standalone): or sentinel: a primary on
#     PGLOCAL_REDIS_PORT, replicas on + 1 and + 2, and three redis-sentinel
#     processes on PGLOCAL_SENTINEL_PORT + 0..2 (26379) monitoring it as
#     "pinguard" (redis.master.name's default) with quorum 2,
#     PGLOCAL_SENTINEL_DOWN_AFTER_MS (2000) and
#     PGLOCAL_SENTINEL_FAILOVER_TIMEOUT_MS (10000)
#   PGLOCAL_REDIS_PORT (6379), PGLOCAL_UP_TIMEOUT (90 s),
#   PGLOCAL_STOP_TIMEOUT (30 s).
# A private set beside the shared one needs its own PGLOCAL_RUN and ports.

PG_LOCAL="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PG_REPO="$(cd "$PG_LOCAL/../.." && pwd)"
PG_RUN="${PGLOCAL_RUN:-$PG_REPO/.cache/run}"
PG_HOST=127.0.0.1
PG_TOPOLOGY="$PG_RUN/topology"

pg_log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
pg_die() { echo "ERROR: $*" >&2; exit 1; }

# --- topology: what this run dir holds ----------------------------------------
# The topology file records the values below that decide what runs where. A
# variable left unset takes the recorded value; one set to another value is
# refused (the run dir's processes and data belong to the recorded set). A
# run dir from before the file existed holds at most one broker and a
# standalone Redis.
declare -A PG_RECORDED=()
if [ -s "$PG_TOPOLOGY" ]; then
  while IFS='=' read -r k v; do
    case "$k" in PGLOCAL_[A-Z]*) PG_RECORDED[$k]="$v" ;; esac
  done <"$PG_TOPOLOGY"
else
  [ ! -d "$PG_RUN/kafka" ] || PG_RECORDED[PGLOCAL_KAFKA_BROKERS]=1
  [ ! -d "$PG_RUN/redis" ] || PG_RECORDED[PGLOCAL_REDIS_MODE]=standalone
fi
# PG_TOPOLOGY_VARS: the recorded variables, with the shell variable of each.
PG_TOPOLOGY_VARS=()
# pg_recorded VAR NAME: VAR (a PG_* variable already set from NAME or its
# default) takes NAME's recorded value, unless NAME is set to another one.
pg_recorded() {
  local var="$1" name="$2" rec
  PG_TOPOLOGY_VARS+=("$name=$var")
  [ -n "${PG_RECORDED[$name]+x}" ] || return 0
  rec="${PG_RECORDED[$name]}"
  if [ -n "${!name:-}" ] && [ "${!name}" != "$rec" ]; then
    pg_die "$PG_RUN holds a set started with $name=$rec, not ${!name} ($PG_TOPOLOGY): unset it, use another PGLOCAL_RUN, or deploy/local/down.sh first"
  fi
  printf -v "$var" '%s' "$rec"
}

PG_KAFKA_BROKERS="${PGLOCAL_KAFKA_BROKERS:-1}"
pg_recorded PG_KAFKA_BROKERS PGLOCAL_KAFKA_BROKERS
[[ "$PG_KAFKA_BROKERS" =~ ^[1-5]$ ]] || pg_die "PGLOCAL_KAFKA_BROKERS=$PG_KAFKA_BROKERS: 1 to 5"
PG_KAFKA_PORT="${PGLOCAL_KAFKA_PORT:-9092}"
pg_recorded PG_KAFKA_PORT PGLOCAL_KAFKA_PORT
PG_CTL_PORT="${PGLOCAL_KAFKA_CONTROLLER_PORT:-$((PG_KAFKA_PORT + 1))}"
pg_recorded PG_CTL_PORT PGLOCAL_KAFKA_CONTROLLER_PORT
PG_SASL_PORT="${PGLOCAL_KAFKA_SASL_PORT:-$((PG_KAFKA_PORT + 2))}"
pg_recorded PG_SASL_PORT PGLOCAL_KAFKA_SASL_PORT
PG_REDIS_MODE="${PGLOCAL_REDIS_MODE:-standalone}"
pg_recorded PG_REDIS_MODE PGLOCAL_REDIS_MODE
case "$PG_REDIS_MODE" in standalone | sentinel) ;; *) pg_die "PGLOCAL_REDIS_MODE=$PG_REDIS_MODE: standalone or sentinel" ;; esac
PG_REDIS_PORT="${PGLOCAL_REDIS_PORT:-6379}"
pg_recorded PG_REDIS_PORT PGLOCAL_REDIS_PORT
PG_SENTINEL_PORT="${PGLOCAL_SENTINEL_PORT:-26379}"
pg_recorded PG_SENTINEL_PORT PGLOCAL_SENTINEL_PORT
for v in PG_KAFKA_PORT PG_CTL_PORT PG_SASL_PORT PG_REDIS_PORT PG_SENTINEL_PORT; do
  [[ "${!v}" =~ ^[0-9]+$ ]] && ((${!v} > 0 && ${!v} < 65000)) || pg_die "$v=${!v} is not a port"
done

# Records the topology (first start in this run dir; later ones match it).
pg_topology_save() {
  [ ! -s "$PG_TOPOLOGY" ] || return 0
  local kv var tmp="$PG_TOPOLOGY.tmp"
  mkdir -p "$PG_RUN"
  : >"$tmp"
  for kv in "${PG_TOPOLOGY_VARS[@]}"; do
    var="${kv#*=}"
    echo "${kv%%=*}=${!var}" >>"$tmp"
  done
  mv "$tmp" "$PG_TOPOLOGY"
}

# SCRAM-SHA-256 user written into the storage at format time. TEST-ONLY
# credentials for this loopback broker; never use them anywhere else. Do not
# delete SCRAM users on this broker: with Kafka 3.9.1, after any deletion the
# next broker start has no SCRAM users at all (tests upsert this one instead).
PG_SASL_USER=pinguard-test
PG_SASL_PASSWORD=pinguard-test-secret
PG_KAFKA_HEAP="${PGLOCAL_KAFKA_HEAP:-512m}"
PG_UP_TIMEOUT="${PGLOCAL_UP_TIMEOUT:-90}"
PG_STOP_TIMEOUT="${PGLOCAL_STOP_TIMEOUT:-30}"
PG_SENTINEL_DOWN_AFTER_MS="${PGLOCAL_SENTINEL_DOWN_AFTER_MS:-2000}"
PG_SENTINEL_FAILOVER_TIMEOUT_MS="${PGLOCAL_SENTINEL_FAILOVER_TIMEOUT_MS:-10000}"
# The name the sentinels monitor the primary under: redis.master.name's default.
PG_SENTINEL_MASTER=pinguard
# Replication of the topics: min(brokers, 3), min ISR one less (at least 1).
PG_KAFKA_RF=$((PG_KAFKA_BROKERS < 3 ? PG_KAFKA_BROKERS : 3))
PG_KAFKA_MIN_ISR=$((PG_KAFKA_RF > 1 ? PG_KAFKA_RF - 1 : 1))

# pg_kafka_node N: sets PG_NODE_* (ports, files) for Kafka node N.
pg_kafka_node() {
  PG_NODE="$1"
  PG_NODE_PORT=$((PG_KAFKA_PORT + 100 * (PG_NODE - 1)))
  if ((PG_NODE == 1)); then
    PG_NODE_CTL="$PG_CTL_PORT" PG_NODE_SASL="$PG_SASL_PORT" PG_NODE_DIR="$PG_RUN/kafka"
  else
    PG_NODE_CTL=$((PG_NODE_PORT + 1)) PG_NODE_SASL=$((PG_NODE_PORT + 2))
    PG_NODE_DIR="$PG_RUN/kafka-$PG_NODE"
  fi
  PG_NODE_PID="$PG_NODE_DIR/kafka.pid"
  PG_NODE_PROPS="$PG_NODE_DIR/server.properties"
  PG_NODE_LOGS="$PG_NODE_DIR/logs"
  PG_NODE_DATA="$PG_NODE_DIR/data"
}

PG_BOOTSTRAP="" PG_QUORUM_VOTERS=""
for ((n = 1; n <= PG_KAFKA_BROKERS; n++)); do
  pg_kafka_node "$n"
  PG_BOOTSTRAP+="${PG_BOOTSTRAP:+,}$PG_HOST:$PG_NODE_PORT"
  PG_QUORUM_VOTERS+="${PG_QUORUM_VOTERS:+,}$n@$PG_HOST:$PG_NODE_CTL"
done
unset n

# Node 1's files (the only node by default).
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

# --- Redis with Sentinel (PGLOCAL_REDIS_MODE=sentinel) ------------------------
# Three redis-server nodes (node 1 the primary at the first start, nodes 2
# and 3 its replicas) and three sentinels. Each has a config file in its own
# directory, written at its first start only: Sentinel rewrites the files
# (roles after a failover, the sentinels it has met), and a restart keeps
# what it wrote, as a real deployment would. No persistence (save ""), as
# standalone: a node restarted empty is made a replica by the sentinels and
# copies the primary; restart a killed primary only after the failover.

PG_REDIS_NODES=3
PG_SENTINELS=3

# pg_redis_node N / pg_sentinel_node N: sets PG_RN_* / PG_SN_* for node N.
pg_redis_node() {
  PG_RN="$1"
  PG_RN_PORT=$((PG_REDIS_PORT + PG_RN - 1))
  if ((PG_RN == 1)); then PG_RN_DIR="$PG_RUN/redis"; else PG_RN_DIR="$PG_RUN/redis-$PG_RN"; fi
  PG_RN_PID="$PG_RN_DIR/redis.pid" PG_RN_LOG="$PG_RN_DIR/redis.log" PG_RN_CONF="$PG_RN_DIR/redis.conf"
  # The process title redis-server sets (proc-title-template's default).
  PG_RN_MARK="redis-server $PG_HOST:$PG_RN_PORT"
}
pg_sentinel_node() {
  PG_SN="$1"
  PG_SN_PORT=$((PG_SENTINEL_PORT + PG_SN - 1))
  PG_SN_DIR="$PG_RUN/sentinel-$PG_SN"
  PG_SN_PID="$PG_SN_DIR/sentinel.pid" PG_SN_LOG="$PG_SN_DIR/sentinel.log" PG_SN_CONF="$PG_SN_DIR/sentinel.conf"
  PG_SN_MARK="redis-server $PG_HOST:$PG_SN_PORT"
}

pg_rcli() {
  local port="$1"
  shift
  timeout 3 redis-cli -h "$PG_HOST" -p "$port" "$@" 2>/dev/null
}
pg_ping_port() { [ "$(pg_rcli "$1" PING)" = PONG ]; }

# pg_daemon_start NAME PIDFILE MARKER PORT LOG ARGS...: starts a daemonizing
# redis-server with ARGS unless ours runs already; refuses a port taken by
# anything else; waits for PING.
pg_daemon_start() {
  local name="$1" pidfile="$2" marker="$3" port="$4" log="$5" pid
  shift 5
  pid="$(pg_read_pid "$pidfile")"
  if [ -n "$pid" ] && pg_pid_alive "$pid" "$marker"; then
    :
  elif pg_port_open "$port"; then
    pg_die "$name: port $port is taken by a process these scripts did not start"
  else
    rm -f "$pidfile"
    pg_log "$name: starting on $PG_HOST:$port"
    # The daemon must not inherit fd 9 (the lock) nor the caller's pipes.
    redis-server "$@" </dev/null >>"$log" 2>&1 9>&- || pg_die "$name failed to start; see $log"
  fi
  local deadline=$((SECONDS + PG_UP_TIMEOUT))
  until pg_ping_port "$port"; do
    if ((SECONDS >= deadline)); then
      echo "---- $log (tail) ----" >&2
      tail -n 40 "$log" >&2 2>/dev/null || true
      pg_die "$name did not answer PING within ${PG_UP_TIMEOUT}s"
    fi
    sleep 0.1
  done
}

# pg_redis_node_start N: Redis node N (empty after a restart, see above).
pg_redis_node_start() {
  command -v redis-server >/dev/null || pg_die "redis-server not found (deploy/install-deps.sh)"
  pg_redis_node "$1"
  mkdir -p "$PG_RN_DIR/data"
  if [ ! -s "$PG_RN_CONF" ]; then
    {
      echo "# Generated by deploy/local (lib.sh); Sentinel rewrites it (replicaof)."
      echo "bind $PG_HOST"
      echo "port $PG_RN_PORT"
      echo "protected-mode yes"
      echo "daemonize yes"
      echo "dir $PG_RN_DIR/data"
      echo "pidfile $PG_RN_PID"
      echo "logfile $PG_RN_LOG"
      echo 'save ""'
      echo "appendonly no"
      ((PG_RN == 1)) || echo "replicaof $PG_HOST $PG_REDIS_PORT"
    } >"$PG_RN_CONF"
  fi
  # A node coming back while the sentinels name another primary starts as its
  # replica (as an orchestrator would start it), not as an empty primary that
  # the sentinels demote only at their next look.
  local primary p="" pid
  pid="$(pg_read_pid "$PG_RN_PID")"
  if ! { [ -n "$pid" ] && pg_pid_alive "$pid" "$PG_RN_MARK"; }; then
    for ((primary = 1; primary <= PG_SENTINELS; primary++)); do
      p="$(pg_sentinel_primary "$primary" || true)"
      [ -z "$p" ] || break
    done
    primary="$p"
    pg_redis_node "$1"
    if [ -n "$primary" ] && [ "$primary" != "$PG_RN_PORT" ]; then
      sed -i '/^replicaof /d' "$PG_RN_CONF"
      echo "replicaof $PG_HOST $primary" >>"$PG_RN_CONF"
    fi
  fi
  pg_daemon_start "redis node $PG_RN" "$PG_RN_PID" "$PG_RN_MARK" "$PG_RN_PORT" "$PG_RN_LOG" "$PG_RN_CONF"
}

# pg_sentinel_start N: sentinel N, monitoring node 1 (at the first start).
pg_sentinel_start() {
  command -v redis-server >/dev/null || pg_die "redis-server not found (deploy/install-deps.sh)"
  pg_sentinel_node "$1"
  mkdir -p "$PG_SN_DIR"
  if [ ! -s "$PG_SN_CONF" ]; then
    {
      echo "# Generated by deploy/local (lib.sh); Sentinel rewrites it (the state it learns)."
      echo "bind $PG_HOST"
      echo "port $PG_SN_PORT"
      echo "protected-mode yes"
      echo "daemonize yes"
      echo "dir $PG_SN_DIR"
      echo "pidfile $PG_SN_PID"
      echo "logfile $PG_SN_LOG"
      echo "sentinel monitor $PG_SENTINEL_MASTER $PG_HOST $PG_REDIS_PORT 2"
      echo "sentinel down-after-milliseconds $PG_SENTINEL_MASTER $PG_SENTINEL_DOWN_AFTER_MS"
      echo "sentinel failover-timeout $PG_SENTINEL_MASTER $PG_SENTINEL_FAILOVER_TIMEOUT_MS"
      echo "sentinel parallel-syncs $PG_SENTINEL_MASTER 1"
    } >"$PG_SN_CONF"
  fi
  # redis-server CONF --sentinel is redis-sentinel (Debian packages that
  # name separately; the server binary is the same).
  pg_daemon_start "sentinel $PG_SN" "$PG_SN_PID" "$PG_SN_MARK" "$PG_SN_PORT" "$PG_SN_LOG" \
    "$PG_SN_CONF" --sentinel
}

# pg_flagged REPLY FLAGS: how many entries of a SENTINEL replicas / sentinels
# reply (redis-cli's flat output) have exactly these flags.
pg_flagged() { awk -v f="$2" 'prev == "flags" && $0 == f { n++ } { prev = $0 } END { print n + 0 }' <<<"$1"; }

# pg_sentinel_primary N: the port of the primary that sentinel N names.
pg_sentinel_primary() {
  pg_sentinel_node "$1"
  pg_rcli "$PG_SN_PORT" SENTINEL get-master-addr-by-name "$PG_SENTINEL_MASTER" | sed -n 2p
}

# The set is whole: every sentinel names the same primary and sees both
# replicas (flags exactly "slave": none down or disconnected) and the two
# other sentinels, and the primary says ROLE master with two replicas online.
pg_sentinel_healthy() {
  local n port="" p out
  for ((n = 1; n <= PG_SENTINELS; n++)); do
    p="$(pg_sentinel_primary "$n")"
    pg_sentinel_node "$n" # (the line above ran in a subshell)
    [ -n "$p" ] || return 1
    [ -z "$port" ] || [ "$p" = "$port" ] || return 1
    port="$p"
    out="$(pg_rcli "$PG_SN_PORT" SENTINEL replicas "$PG_SENTINEL_MASTER")" || return 1
    (($(pg_flagged "$out" slave) == PG_REDIS_NODES - 1)) || return 1
    out="$(pg_rcli "$PG_SN_PORT" SENTINEL sentinels "$PG_SENTINEL_MASTER")" || return 1
    (($(pg_flagged "$out" sentinel) == PG_SENTINELS - 1)) || return 1
  done
  [ "$(pg_rcli "$port" ROLE | head -n1)" = master ] || return 1
  (($(pg_rcli "$port" INFO replication | grep -c 'state=online') == PG_REDIS_NODES - 1))
}

pg_sentinel_wait() {
  local deadline=$((SECONDS + PG_UP_TIMEOUT)) n
  until pg_sentinel_healthy; do
    if ((SECONDS >= deadline)); then
      for ((n = 1; n <= PG_SENTINELS; n++)); do
        pg_sentinel_node "$n"
        echo "---- $PG_SN_LOG (tail) ----" >&2
        tail -n 15 "$PG_SN_LOG" >&2 2>/dev/null || true
      done
      pg_die "sentinel: not whole within ${PG_UP_TIMEOUT}s (one primary, 2 replicas online, 3 sentinels)"
    fi
    sleep 0.2
  done
  pg_log "sentinel: primary $PG_HOST:$(pg_sentinel_primary 1) as '$PG_SENTINEL_MASTER', 2 replicas online, 3 sentinels from $PG_HOST:$PG_SENTINEL_PORT"
}

# pg_stop_node PIDFILE MARKER NAME PORT SIG: stops it if ours; exit 1 if
# something else answers PING on the port (left alone).
pg_stop_node() {
  local pidfile="$1" marker="$2" name="$3" port="$4" sig="$5" pid
  pid="$(pg_read_pid "$pidfile")"
  if [ -n "$pid" ] && pg_pid_alive "$pid" "$marker"; then
    pg_stop_pid "$pidfile" "$marker" "$name" "$sig"
  else
    rm -f "$pidfile"
    if pg_ping_port "$port"; then
      pg_log "$name: the server on $PG_HOST:$port was not started by these scripts; left alone"
      return 1
    fi
  fi
}
# pg_redis_node_stop N [SIG] / pg_sentinel_stop N [SIG].
pg_redis_node_stop() {
  pg_redis_node "$1"
  pg_stop_node "$PG_RN_PID" "$PG_RN_MARK" "redis node $PG_RN" "$PG_RN_PORT" "${2:-TERM}"
}
pg_sentinel_stop() {
  pg_sentinel_node "$1"
  pg_stop_node "$PG_SN_PID" "$PG_SN_MARK" "sentinel $PG_SN" "$PG_SN_PORT" "${2:-TERM}"
}

# --- Redis, either mode --------------------------------------------------------

pg_redis_start_all() {
  if [ "$PG_REDIS_MODE" = standalone ]; then
    pg_redis_start
    return
  fi
  local n
  for ((n = 1; n <= PG_REDIS_NODES; n++)); do pg_redis_node_start "$n"; done
  for ((n = 1; n <= PG_SENTINELS; n++)); do pg_sentinel_start "$n"; done
  pg_sentinel_wait
}

# Sentinels first, so that none fails over while the nodes stop.
pg_redis_stop_all() {
  local sig="${1:-TERM}" n rc=0
  if [ "$PG_REDIS_MODE" = standalone ]; then
    if [ "$sig" = KILL ] && pg_redis_ours; then
      pg_stop_pid "$PG_REDIS_PID" redis-server redis KILL
    else
      pg_redis_stop || rc=1
    fi
    return "$rc"
  fi
  for ((n = 1; n <= PG_SENTINELS; n++)); do pg_sentinel_stop "$n" "$sig" || rc=1; done
  for ((n = 1; n <= PG_REDIS_NODES; n++)); do pg_redis_node_stop "$n" "$sig" || rc=1; done
  return "$rc"
}

# The directories of the Redis side (down.sh removes them).
pg_redis_dirs() {
  local n
  echo "$PG_REDIS_DIR"
  [ "$PG_REDIS_MODE" = sentinel ] || return 0
  for ((n = 2; n <= PG_REDIS_NODES; n++)); do echo "$PG_RUN/redis-$n"; done
  for ((n = 1; n <= PG_SENTINELS; n++)); do echo "$PG_RUN/sentinel-$n"; done
}

# --- Kafka ---------------------------------------------------------------------

# kcat is packaged as kafkacat on older Debian; either name works.
PG_KCAT="$(command -v kcat || command -v kafkacat || true)"
pg_kcat() {
  [ -n "$PG_KCAT" ] || pg_die "kcat/kafkacat not found (deploy/install-deps.sh)"
  "$PG_KCAT" "$@"
}

# pg_metadata BOOTSTRAP: kcat's metadata listing (brokers, topics), or fail.
pg_metadata() {
  [ -n "$PG_KCAT" ] || pg_die "kcat/kafkacat not found (deploy/install-deps.sh)"
  timeout 10 "$PG_KCAT" -L -b "$1" -m 2 2>/dev/null
}

# A broker answers a Metadata request and lists at least one broker.
pg_kafka_ready() {
  local n open=0 md
  for ((n = 1; n <= PG_KAFKA_BROKERS; n++)); do
    pg_kafka_node "$n"
    if pg_port_open "$PG_NODE_PORT"; then open=1; fi
  done
  ((open)) || return 1 # kcat would wait out its -m 2
  # Captured first: with pipefail, `kcat | grep -q` can fail on SIGPIPE.
  md="$(pg_metadata "$PG_BOOTSTRAP")" || return 1
  grep -q ' broker [0-9]* at ' <<<"$md"
}

# pg_kafka_node_ready N: node N answers Metadata on its own port and lists
# itself (registered with the controller and not fenced).
pg_kafka_node_ready() {
  local md
  pg_kafka_node "$1"
  pg_port_open "$PG_NODE_PORT" || return 1
  md="$(pg_metadata "$PG_HOST:$PG_NODE_PORT")" || return 1
  grep -q " broker $PG_NODE at $PG_HOST:$PG_NODE_PORT" <<<"$md"
}

# Every node of the cluster is listed in Metadata.
pg_kafka_all_listed() {
  local md
  md="$(pg_metadata "$PG_BOOTSTRAP")" || return 1
  (($(grep -c ' broker [0-9]* at ' <<<"$md") == PG_KAFKA_BROKERS))
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

# pg_kafka_node_ours N: node N runs, started by these scripts (its pid file).
pg_kafka_node_ours() {
  local pid
  pg_kafka_node "$1"
  pid="$(pg_read_pid "$PG_NODE_PID")"
  [ -n "$pid" ] && pg_pid_alive "$pid" kafka.Kafka
}
pg_kafka_ours() { pg_kafka_node_ours 1; }

# pg_kafka_write_props N: node N's server.properties (rewritten at each start).
pg_kafka_write_props() {
  pg_kafka_node "$1"
  mkdir -p "$PG_NODE_LOGS" "$PG_NODE_DATA"
  local what="single-node KRaft, combined mode"
  ((PG_KAFKA_BROKERS == 1)) || what="node $PG_NODE of $PG_KAFKA_BROKERS, KRaft combined mode, static quorum"
  cat >"$PG_NODE_PROPS" <<EOF
# Generated by deploy/local (lib.sh) — $what.
process.roles=broker,controller
node.id=$PG_NODE
controller.quorum.voters=$PG_QUORUM_VOTERS
listeners=PLAINTEXT://$PG_HOST:$PG_NODE_PORT,CONTROLLER://$PG_HOST:$PG_NODE_CTL,SASL_PLAINTEXT://$PG_HOST:$PG_NODE_SASL
advertised.listeners=PLAINTEXT://$PG_HOST:$PG_NODE_PORT,SASL_PLAINTEXT://$PG_HOST:$PG_NODE_SASL
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT
# Clients may authenticate with SCRAM-SHA-256 on the SASL_PLAINTEXT listener
# (users: StorageTool format --add-scram, or kafka-configs / AdminClient).
sasl.enabled.mechanisms=SCRAM-SHA-256
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$PG_NODE_DATA
num.partitions=6
# Replication: min(brokers, 3) copies, min ISR one less (at least 1). With
# three brokers a topic takes a write while two copies are in sync, and
# transactions (exactly once) need __transaction_state replicated alike.
default.replication.factor=$PG_KAFKA_RF
auto.create.topics.enable=false
min.insync.replicas=$PG_KAFKA_MIN_ISR
offsets.topic.num.partitions=6
offsets.topic.replication.factor=$PG_KAFKA_RF
transaction.state.log.num.partitions=6
transaction.state.log.replication.factor=$PG_KAFKA_RF
transaction.state.log.min.isr=$PG_KAFKA_MIN_ISR
group.initial.rebalance.delay.ms=0
log.retention.hours=24
# After a SIGKILL the restarted controller refuses the broker's new
# registration (DUPLICATE_BROKER_REGISTRATION) until the old session expires:
# 9 s by default, ~15 s to ready with retry backoff. Shorter for crash tests
# (and a killed broker is fenced, and leaves the ISRs, within 3 s).
broker.session.timeout.ms=3000
broker.heartbeat.interval.ms=500
EOF
}

# The cluster id: the one any node was formatted with, else a new one.
pg_kafka_cluster_id() {
  local n f cid
  for ((n = 1; n <= PG_KAFKA_BROKERS; n++)); do
    pg_kafka_node "$n"
    f="$PG_NODE_DATA/meta.properties"
    [ -f "$f" ] || continue
    cid="$(sed -n 's/^cluster\.id=//p' "$f")"
    [ -z "$cid" ] || { echo "$cid"; return 0; }
  done
  cid="$(pg_java_tool "$1" kafka.tools.StorageTool random-uuid | tail -n1)"
  [ -n "$cid" ] || pg_die "kafka: StorageTool random-uuid printed nothing"
  echo "$cid"
}

declare -A PG_LOG_MARK_SERVER=() PG_LOG_MARK_OUT=()

# pg_kafka_launch N LIBS CID: formats node N's storage if it never was, then
# starts it in the background (not waiting).
pg_kafka_launch() {
  local libs="$2" cid="$3"
  pg_kafka_write_props "$1"
  if [ ! -f "$PG_NODE_DATA/meta.properties" ]; then
    pg_log "kafka: formatting $PG_NODE_DATA (cluster id $cid)"
    pg_java_tool "$libs" kafka.tools.StorageTool format -t "$cid" -c "$PG_NODE_PROPS" \
      --add-scram "SCRAM-SHA-256=[name=$PG_SASL_USER,password=$PG_SASL_PASSWORD]" >&2 \
      || pg_die "kafka: StorageTool format failed"
  fi
  rm -f "$PG_NODE_PID"
  # Logs are appended across starts; a failure shows only this start's lines.
  PG_LOG_MARK_SERVER[$PG_NODE]="$(pg_lines "$PG_NODE_LOGS/server.log")"
  PG_LOG_MARK_OUT[$PG_NODE]="$(pg_lines "$PG_NODE_LOGS/kafka.out")"
  pg_log "kafka: starting node $PG_NODE on $PG_HOST:$PG_NODE_PORT (controller $PG_HOST:$PG_NODE_CTL)"
  # setsid: own session, so the broker outlives the calling shell / CI step
  # group; the inner shell writes its own pid, then execs java (same pid).
  # fd 9 (the lock) is closed so the broker does not hold it forever.
  # shellcheck disable=SC2016 # $$ and $1 belong to the inner shell
  setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$PG_NODE_PID" \
    java "-Xmx$PG_KAFKA_HEAP" -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent \
    -Djava.awt.headless=true \
    "-Dkafka.logs.dir=$PG_NODE_LOGS" \
    "-Dlog4j.configuration=file:$PG_LOCAL/log4j-broker.properties" \
    -cp "$libs/*" kafka.Kafka "$PG_NODE_PROPS" \
    </dev/null >>"$PG_NODE_LOGS/kafka.out" 2>&1 9>&- &
}

# pg_kafka_start [N...]: starts the nodes (default: all) that do not run,
# formatting their storage the first time, and waits until each is listed in
# Metadata (and, when all were asked for, until every node is). The nodes of
# a quorum start together: none is ready before a majority of voters runs.
pg_kafka_start() {
  command -v java >/dev/null || pg_die "java not found (deploy/install-deps.sh)"
  local nodes=("$@") launch=() n libs="" cid=""
  ((${#nodes[@]})) || for ((n = 1; n <= PG_KAFKA_BROKERS; n++)); do nodes+=("$n"); done
  for n in "${nodes[@]}"; do
    [[ "$n" =~ ^[0-9]+$ ]] && ((n >= 1 && n <= PG_KAFKA_BROKERS)) \
      || pg_die "kafka: no node $n (PGLOCAL_KAFKA_BROKERS=$PG_KAFKA_BROKERS)"
    if pg_kafka_node_ours "$n"; then
      continue
    elif ((PG_KAFKA_BROKERS == 1)) && pg_kafka_ready; then
      pg_log "kafka: a broker not started by these scripts answers on $PG_BOOTSTRAP; using it"
      return 0
    elif pg_port_open "$PG_NODE_PORT"; then
      pg_die "kafka: port $PG_NODE_PORT is taken by something these scripts did not start"
    elif pg_port_open "$PG_NODE_CTL"; then
      pg_die "kafka: controller port $PG_NODE_CTL is taken (PGLOCAL_KAFKA_CONTROLLER_PORT sets node 1's)"
    elif pg_port_open "$PG_NODE_SASL"; then
      pg_die "kafka: SASL port $PG_NODE_SASL is taken (PGLOCAL_KAFKA_SASL_PORT sets node 1's)"
    fi
    launch+=("$n")
  done
  if ((${#launch[@]})); then
    libs="$(pg_libs)"
    cid="$(pg_kafka_cluster_id "$libs")"
    for n in "${launch[@]}"; do pg_kafka_launch "$n" "$libs" "$cid"; done
  fi
  local deadline=$((SECONDS + PG_UP_TIMEOUT)) pid
  for n in "${nodes[@]}"; do
    until pg_kafka_node_ready "$n"; do
      pid="$(pg_read_pid "$PG_NODE_PID")"
      if [[ " ${launch[*]} " == *" $n "* ]] && [ -n "$pid" ] \
        && ! pg_pid_alive "$pid" kafka.Kafka; then
        pg_kafka_tail "$n"
        pg_die "kafka: node $n (pid $pid) exited during startup"
      fi
      if ((SECONDS >= deadline)); then
        pg_kafka_tail "$n"
        pg_die "kafka: node $n gave no Metadata answer listing itself within ${PG_UP_TIMEOUT}s"
      fi
      sleep 0.2
    done
    pg_log "kafka: node $n up on $PG_HOST:$PG_NODE_PORT (pid $(pg_read_pid "$PG_NODE_PID"))"
  done
  if ((${#nodes[@]} == PG_KAFKA_BROKERS && PG_KAFKA_BROKERS > 1)); then
    until pg_kafka_all_listed; do
      ((SECONDS < deadline)) || pg_die "kafka: not all $PG_KAFKA_BROKERS brokers in Metadata within ${PG_UP_TIMEOUT}s"
      sleep 0.2
    done
  fi
}

pg_lines() { if [ -f "$1" ]; then wc -l <"$1"; else echo 0; fi; }

# pg_kafka_tail [N]: node N's broker log (this start's part, last 60 lines)
# and the JVM's own output.
pg_kafka_tail() {
  local f mark out
  pg_kafka_node "${1:-1}"
  for f in server.log kafka.out; do
    [ -s "$PG_NODE_LOGS/$f" ] || continue
    if [ "$f" = server.log ]; then mark="${PG_LOG_MARK_SERVER[$PG_NODE]:-0}"; else mark="${PG_LOG_MARK_OUT[$PG_NODE]:-0}"; fi
    out="$(tail -n "+$((mark + 1))" "$PG_NODE_LOGS/$f" | tail -n 60)"
    [ -n "$out" ] || continue
    printf -- '---- %s (tail) ----\n%s\n' "$PG_NODE_LOGS/$f" "$out" >&2
  done
}

# pg_kafka_stop [SIG [N...]]: stops the nodes (default: all; SIGTERM, a
# controlled shutdown). Several nodes stop at once: a quorum that loses its
# majority one node at a time makes the last ones wait out their deadline.
# Exit 1 if a broker these scripts did not start answers (left alone).
pg_kafka_stop() {
  local sig="${1:-TERM}" nodes=("${@:2}") n pids=() rc=0
  ((${#nodes[@]})) || for ((n = 1; n <= PG_KAFKA_BROKERS; n++)); do nodes+=("$n"); done
  for n in "${nodes[@]}"; do
    if pg_kafka_node_ours "$n"; then
      pg_stop_pid "$PG_NODE_PID" kafka.Kafka "kafka node $n" "$sig" &
      pids+=($!)
    else
      rm -f "$PG_NODE_PID"
      if pg_port_open "$PG_NODE_PORT" && pg_metadata "$PG_HOST:$PG_NODE_PORT" >/dev/null; then
        pg_log "kafka: the broker on $PG_HOST:$PG_NODE_PORT was not started by these scripts; left alone"
        rc=1
      else
        pg_log "kafka: node $n not running"
      fi
    fi
  done
  for n in "${pids[@]}"; do wait "$n" || rc=1; done
  return "$rc"
}

# The directories of the Kafka nodes (down.sh removes them).
pg_kafka_dirs() {
  local n
  for ((n = 1; n <= PG_KAFKA_BROKERS; n++)); do
    pg_kafka_node "$n"
    echo "$PG_NODE_DIR"
  done
}
