#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# deploy/local/redis.sh — owns stopping / starting ONLY the local Redis (for
# tests that take Redis away mid-stream); Kafka is not touched. Redis runs
# with --save '' --appendonly no, so a restart comes back EMPTY: tests that
# need the cache after a restart must write it again.
#   redis.sh stop     SIGTERM, wait (deadline), SIGKILL; ok if not running;
#                     exit 1 if the Redis on the port was not started here
#   redis.sh start    start and wait for PING (ok if already up)
#   redis.sh restart
#   redis.sh status   exit 0 if a Redis answers PING on the port
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

case "${1:-}" in
  stop) pg_lock; pg_redis_stop ;;
  start) pg_lock; pg_redis_start ;;
  restart) pg_lock; pg_redis_stop; pg_redis_start ;;
  status) if pg_redis_ping; then echo up; else echo down; exit 1; fi ;;
  *) echo "usage: $0 stop|start|restart|status" >&2; exit 2 ;;
esac
