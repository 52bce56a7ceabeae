#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# deploy/local/kafka.sh — owns stopping / starting ONLY the local Kafka
# node(s) (for broker-restart and failover tests), keeping their data: topics,
# committed offsets and transaction state survive a stop/start. Redis is not
# touched. The first start ever (no data yet) formats the storage; topics are
# up.sh's job. NODE (1..PGLOCAL_KAFKA_BROKERS, as recorded by up.sh in the run
# dir) acts on one node of a cluster; without it, on every node.
#   kafka.sh stop [NODE]     SIGTERM (controlled shutdown), wait (deadline), SIGKILL
#   kafka.sh kill [NODE]     SIGKILL at once (crash test; data kept)
#   kafka.sh start [NODE]    start and wait until the node is listed in Metadata
#                            (ok if already up)
#   kafka.sh restart [NODE]
#   kafka.sh status [NODE]   exit 0 if a broker answers Metadata (NODE: that
#                            node answers on its port and lists itself)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

nodes=("${@:2}")
case "${1:-}" in
  stop) pg_lock; pg_kafka_stop TERM "${nodes[@]}" ;;
  kill) pg_lock; pg_kafka_stop KILL "${nodes[@]}" ;;
  start) pg_lock; pg_topology_save; pg_kafka_start "${nodes[@]}" ;;
  restart) pg_lock; pg_topology_save; pg_kafka_stop TERM "${nodes[@]}"; pg_kafka_start "${nodes[@]}" ;;
  status)
    if ((${#nodes[@]})); then ok() { pg_kafka_node_ready "${nodes[0]}"; }; else ok() { pg_kafka_ready; }; fi
    if ok; then echo up; else echo down; exit 1; fi
    ;;
  *) echo "usage: $0 stop|kill|start|restart|status [NODE]" >&2; exit 2 ;;
esac
