#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# deploy/local/kafka.sh — owns stopping / starting ONLY the local Kafka broker
# (for broker-restart tests), keeping its data: topics, committed offsets and
# transaction state survive a stop/start. Redis is not touched. The first
# start ever (no data yet) formats the storage; topics are up.sh's job.
#   kafka.sh stop     SIGTERM (controlled shutdown), wait (deadline), SIGKILL
#   kafka.sh kill     SIGKILL at once (crash test; data kept)
#   kafka.sh start    start and wait for a Metadata answer (ok if already up)
#   kafka.sh restart
#   kafka.sh status   exit 0 if a broker answers Metadata on the port
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

case "${1:-}" in
  stop) pg_lock; pg_kafka_stop TERM ;;
  kill) pg_lock; pg_kafka_stop KILL ;;
  start) pg_lock; pg_kafka_start ;;
  restart) pg_lock; pg_kafka_stop TERM; pg_kafka_start ;;
  status) if pg_kafka_ready; then echo up; else echo down; exit 1; fi ;;
  *) echo "usage: $0 stop|kill|start|restart|status" >&2; exit 2 ;;
esac
