#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The benchmark (not a test: it prints figures and never fails on a time).
# Sets up like tests/run.sh, then drives tests/bench/bench.py on the real Kafka
# and Redis: 100k cached VMs, 1M MigrateVmRequests, 1M MigrationResults and
# 100k DrsAdvice (10 migrations each) on 12-partition topics; one worker per
# stream from a fresh group, in both delivery modes; kcat, redis-benchmark and
# pg_bench_relay (consume+produce, tests/bench/relay.c) ceilings measured in
# the same run, with the CPU each process spent; latency at a steady 5,000
# inputs/s against the relay's floor.
# Writes tests/bench/RESULTS.md. BENCH_SCALE=0.01 runs a 1% smoke version.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

bash deploy/install-deps.sh >/dev/null
bash deploy/setup-python.sh
cmake -S . -B build-bench -G Ninja -DCMAKE_BUILD_TYPE=Release -DPINGUARD_WERROR="${PG_WERROR:-OFF}" >/dev/null
cmake --build build-bench >/dev/null
bash deploy/local/up.sh

exec .venv/bin/python tests/bench/bench.py --pinguard build-bench/pinguard \
  --relay build-bench/pg_bench_relay "$@"
