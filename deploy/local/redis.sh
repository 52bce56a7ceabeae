#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# deploy/local/redis.sh — owns stopping / starting ONLY the local Redis (for
# tests that take Redis away mid-stream); Kafka is not touched. Redis runs
# with --save '' --appendonly no, so a restart comes back EMPTY: tests that
# need the cache after a restart must write it again.
#   redis.sh stop     SIGTERM, wait (deadline), SIGKILL; ok if not running;
#                     exit 1 if the Redis on the port was not started here
#   redis.sh kill     SIGKILL at once
#   redis.sh start    start and wait for PING (ok if already up)
#   redis.sh restart
#   redis.sh status   exit 0 if a Redis answers PING on the port
# With Sentinel (PGLOCAL_REDIS_MODE=sentinel, as recorded by up.sh in the run
# dir) these act on the whole set, sentinels included (start waits until the
# sentinels see a primary, two replicas online and each other; status: that
# the set is whole), and NODE (1..3, the servers on PGLOCAL_REDIS_PORT + 0..2)
# on one server: `redis.sh kill 1` is a crashed primary, `redis.sh start 1`
# brings it back and waits until the sentinels made it a replica. Restart a
# killed primary only once a replica was promoted: it comes back empty.
#   redis.sh primary  the port of the primary, as the first sentinel names it
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

node="${2:-}"
if [ -n "$node" ]; then
  [ "$PG_REDIS_MODE" = sentinel ] || pg_die "redis.sh: NODE only with PGLOCAL_REDIS_MODE=sentinel"
  [[ "$node" =~ ^[1-3]$ ]] || pg_die "redis.sh: no node $node (1, 2 or 3)"
fi
healthy() {
  if [ "$PG_REDIS_MODE" = sentinel ]; then pg_sentinel_healthy; else pg_redis_ping; fi
}
case "${1:-}" in
  stop | kill)
    sig=TERM
    [ "$1" = stop ] || sig=KILL
    pg_lock
    if [ -n "$node" ]; then pg_redis_node_stop "$node" "$sig"; else pg_redis_stop_all "$sig"; fi
    ;;
  start)
    pg_lock
    pg_topology_save
    if [ -n "$node" ]; then pg_redis_node_start "$node"; pg_sentinel_wait; else pg_redis_start_all; fi
    ;;
  restart)
    pg_lock
    pg_topology_save
    if [ -n "$node" ]; then
      pg_redis_node_stop "$node"
      pg_redis_node_start "$node"
      pg_sentinel_wait
    else
      pg_redis_stop_all
      pg_redis_start_all
    fi
    ;;
  status) if healthy; then echo up; else echo down; exit 1; fi ;;
  primary)
    [ "$PG_REDIS_MODE" = sentinel ] || { echo "$PG_REDIS_PORT"; exit 0; }
    p="$(pg_sentinel_primary 1)"
    [ -n "$p" ] || pg_die "sentinel 1 names no primary"
    echo "$p"
    ;;
  *) echo "usage: $0 stop|kill|start|restart|status|primary [NODE]" >&2; exit 2 ;;
esac
