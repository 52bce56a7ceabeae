#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# deploy/local/down.sh — owns tearing down what deploy/local/up.sh started:
# stops the local Kafka broker and Redis (SIGTERM, wait with a deadline, then
# SIGKILL) and deletes their data under ${PGLOCAL_RUN:-<repo>/.cache/run}, so
# the next up.sh starts from a clean, freshly formatted cluster. Idempotent:
# nothing running is not an error. Services on the ports that these scripts
# did not start (e.g. Debian's system Redis) are left alone.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

pg_lock
pg_kafka_stop TERM || true
pg_redis_stop || true
# Only the directories lib.sh creates; never the whole of $PGLOCAL_RUN.
rm -rf "$PG_KAFKA_DIR" "$PG_REDIS_DIR"
rm -f "$PG_RUN"/upcheck-*.err "$PG_RUN"/topic-*.out
pg_log "down: removed $PG_KAFKA_DIR and $PG_REDIS_DIR"
