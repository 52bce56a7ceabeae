#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# deploy/local/down.sh — owns tearing down what deploy/local/up.sh started:
# stops the local Kafka node(s) and Redis (with Sentinel: the sentinels
# first, then the three servers), SIGTERM, wait with a deadline, then
# SIGKILL, and deletes their data under ${PGLOCAL_RUN:-<repo>/.cache/run}, so
# the next up.sh starts from a clean, freshly formatted cluster. What to stop
# is what the run dir's topology file recorded (no PGLOCAL_KAFKA_BROKERS or
# PGLOCAL_REDIS_MODE needed here). Idempotent: nothing running is not an
# error. Services on the ports that these scripts did not start (e.g.
# Debian's system Redis) are left alone.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

pg_lock
# Both sides at once (each stops its own processes in order).
pg_redis_stop_all TERM &
redis_job=$!
pg_kafka_stop TERM || true
wait "$redis_job" || true
# Only the directories lib.sh creates; never the whole of $PGLOCAL_RUN.
mapfile -t dirs < <(pg_kafka_dirs; pg_redis_dirs)
rm -rf "${dirs[@]}"
rm -f "$PG_RUN"/upcheck-*.err "$PG_RUN"/topic-*.out "$PG_TOPOLOGY"
pg_log "down: removed ${dirs[*]}"
