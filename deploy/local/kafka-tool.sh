#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# deploy/local/kafka-tool.sh — owns running one Kafka Java tool class from the
# same jars as the local broker (deploy/kafka/fetch.sh), with quiet logging
# (WARN+ to stderr). The tool's exit status is returned. Example:
#   deploy/local/kafka-tool.sh org.apache.kafka.tools.consumer.group.ConsumerGroupCommand \
#     --bootstrap-server 127.0.0.1:9092 --describe --group pinguard
# Other classes: org.apache.kafka.tools.TopicCommand,
# org.apache.kafka.tools.ProducerPerformance, org.apache.kafka.tools.GetOffsetShell,
# org.apache.kafka.tools.TransactionsCommand, kafka.tools.StorageTool.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

(($# >= 1)) || { sed -n '3,10p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
libs="$(pg_libs)"
# exec: signals and the exit status are the tool's own.
exec java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
  "-Dlog4j.configuration=file:$PG_LOCAL/log4j-tools.properties" \
  -cp "$libs/*" "$@"
