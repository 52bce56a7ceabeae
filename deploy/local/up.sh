#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# deploy/local/up.sh — owns bringing up the local services for development and
# tests: Redis on 127.0.0.1:6379 and a single-node Apache Kafka (KRaft,
# combined broker+controller) on 127.0.0.1:9092, plus the SPEC topics
# (6 partitions each; device.bindings compacted, see PG_TOPIC_CONFIG in
# lib.sh) and a check that the group / transaction coordinators work. Idempotent: services that already answer are reused (even ones this
# script did not start), existing topics are kept.
# Clusters, for failover tests (see lib.sh for every variable):
#   PGLOCAL_KAFKA_BROKERS=3   three broker/controller nodes on 9092, 9192,
#                             9292 (controllers +1, SASL +2), one static
#                             three-voter quorum; topics and internal topics
#                             with replication factor 3, min ISR 2
#   PGLOCAL_REDIS_MODE=sentinel   a primary on 6379, replicas on 6380 and
#                             6381, sentinels on 26379-26381 (master name
#                             "pinguard", quorum 2); up.sh returns once all
#                             three sentinels see the primary, both replicas
#                             and each other
# The variables are PGLOCAL_*, never PINGUARD_*: pinguard reads PINGUARD_<KEY>
# as its own settings. A private set beside the shared one: PGLOCAL_RUN=<dir>
# with its own PGLOCAL_KAFKA_PORT, PGLOCAL_REDIS_PORT, PGLOCAL_SENTINEL_PORT.
# State lives under ${PGLOCAL_RUN:-<repo>/.cache/run}; what was set up there is
# recorded in its topology file, so that kafka.sh, redis.sh and down.sh act on
# the same set. deploy/local/down.sh undoes it.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

pg_lock
pg_topology_save
t0=$SECONDS

# The two services are independent: start Redis while the JVMs warm up.
pg_redis_start_all &
redis_job=$!
pg_kafka_start
wait "$redis_job" || pg_die "redis did not come up"

# --- topics --------------------------------------------------------------------

metadata() { timeout 20 "$PG_KCAT" -L -b "$PG_BOOTSTRAP" -m 5 2>/dev/null; }
# partitions TOPIC METADATA -> the partition count, or nothing.
partitions() { sed -n "s/^ *topic \"${1//./\\.}\" with \([0-9]*\) partitions:.*/\1/p" <<<"$2"; }

md="$(metadata)" || pg_die "kafka: metadata request failed"
missing=()
for t in "${PG_TOPICS[@]}"; do
  [ -n "$(partitions "$t" "$md")" ] || missing+=("$t")
done

if ((${#missing[@]})); then
  libs="$(pg_libs)"
  pg_log "topics: creating ${missing[*]}"
  pids=()
  # One JVM per topic (TopicCommand creates one at a time); run them at once.
  for t in "${missing[@]}"; do
    cfg=()
    for kv in ${PG_TOPIC_CONFIG[$t]:-}; do cfg+=(--config "$kv"); done
    pg_java_tool "$libs" org.apache.kafka.tools.TopicCommand \
      --bootstrap-server "$PG_BOOTSTRAP" --create --if-not-exists \
      --topic "$t" --partitions "$PG_PARTITIONS" --replication-factor "$PG_KAFKA_RF" "${cfg[@]}" \
      >"$PG_RUN/topic-$t.out" 2>&1 &
    pids+=($!)
  done
  failed=0
  for i in "${!missing[@]}"; do
    out="$PG_RUN/topic-${missing[$i]}.out"
    if ! wait "${pids[$i]}"; then
      failed=1
      cat "$out" >&2
    fi
    rm -f "$out"
  done
  ((failed == 0)) || pg_die "topics: TopicCommand failed (output above)"
fi

# The broker's metadata cache may trail CreateTopics by a moment.
deadline=$((SECONDS + 30))
while :; do
  md="$(metadata)" || md=""
  bad=()
  for t in "${PG_TOPICS[@]}"; do
    n="$(partitions "$t" "$md")"
    [ -z "$n" ] || [ "$n" = "$PG_PARTITIONS" ] \
      || pg_die "topics: $t has $n partitions, not $PG_PARTITIONS (delete it, or down.sh for a clean cluster)"
    [ -n "$n" ] || bad+=("$t")
  done
  ((${#bad[@]})) || break
  ((SECONDS < deadline)) || pg_die "topics: still absent after creation: ${bad[*]}"
  sleep 0.2
done
pg_log "topics: ${#PG_TOPICS[@]} SPEC topics with $PG_PARTITIONS partitions (replication factor $PG_KAFKA_RF, min ISR $PG_KAFKA_MIN_ISR)"

# --- internal topics: group coordinator + transaction coordinator -------------
# Both are created on first use; do that now so that the first test does not
# pay for it, and fail here if either coordinator is broken. Skipped when both
# topics exist already.
if [ -z "$(partitions __consumer_offsets "$md")" ] || [ -z "$(partitions __transaction_state "$md")" ]; then
  pg_log "coordinators: checking a consumer group join and a transaction"
  # Group: join (needs a loaded __consumer_offsets partition), read to the end.
  timeout 60 "$PG_KCAT" -b "$PG_BOOTSTRAP" -G pinguard-upcheck -q -e \
    -X auto.offset.reset=latest pinguard.dlq \
    >/dev/null 2>"$PG_RUN/upcheck-group.err" &
  group_job=$!
  # Transactions: init + begin + commit of an empty transaction (no record
  # lands in the topic). ProducerPerformance cannot do this: --num-records 0
  # divides by zero in 3.9.
  if ! timeout 60 "$PG_KCAT" -P -b "$PG_BOOTSTRAP" -t pinguard.dlq \
    -X transactional.id=pinguard-upcheck </dev/null >"$PG_RUN/upcheck-txn.err" 2>&1; then
    cat "$PG_RUN/upcheck-txn.err" >&2
    pg_die "coordinators: empty transaction failed"
  fi
  wait "$group_job" || { cat "$PG_RUN/upcheck-group.err" >&2; pg_die "coordinators: consumer group check failed"; }
  rm -f "$PG_RUN/upcheck-group.err" "$PG_RUN/upcheck-txn.err"
  # Leave no stray group in `ConsumerGroupCommand --list` (the transactional
  # id pinguard-upcheck stays, Empty, until it expires).
  pg_java_tool "$(pg_libs)" org.apache.kafka.tools.consumer.group.ConsumerGroupCommand \
    --bootstrap-server "$PG_BOOTSTRAP" --delete --group pinguard-upcheck >/dev/null \
    || pg_log "coordinators: could not delete group pinguard-upcheck (harmless)"
  md="$(metadata)" || md=""
  for t in __consumer_offsets __transaction_state; do
    [ -n "$(partitions "$t" "$md")" ] || pg_die "coordinators: $t was not created"
  done
fi
pg_log "coordinators: __consumer_offsets and __transaction_state present"

if [ "$PG_REDIS_MODE" = sentinel ]; then
  redis_what="redis primary $PG_HOST:$(pg_sentinel_primary 1) (sentinels $PG_HOST:$PG_SENTINEL_PORT-$((PG_SENTINEL_PORT + PG_SENTINELS - 1)), master name $PG_SENTINEL_MASTER)"
else
  redis_what="redis $PG_HOST:$PG_REDIS_PORT"
fi
pg_log "up in $((SECONDS - t0))s: $redis_what, kafka $PG_BOOTSTRAP, run dir $PG_RUN"
