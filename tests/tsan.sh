#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# tests/tsan.sh — owns the ThreadSanitizer run: builds with -DPINGUARD_TSAN=ON
# in its own build dir, runs the unit tests there, then the integration suites
# that drive the threads sharing state in the worker (the metrics/health HTTP
# thread, librdkafka's callback threads, the poll loop): test_metrics.py,
# test_health.py, test_flows.py, test_kafka_states.py, with every worker and
# CLI process the TSan binary, against the local Kafka and Redis
# (deploy/local/up.sh reuses services that already answer; test_health and
# test_metrics stop and restart Redis, so point PGLOCAL_* at a private set
# when others share the machine's services).
# Any report fails the run, even from a process a test killed or whose exit
# code nobody checked: reports go to files, which are collected at the end.
# Only pinguard's own code is instrumented; librdkafka, avro-c, hiredis,
# jansson and libmicrohttpd are Debian's builds: tests/tsan.supp says how
# they are handled and why it suppresses nothing. TSan does not intercept
# glibc's C11 threads, which librdkafka uses: the TSan build links
# tests/tsan/c11threads.c, which routes them through pthreads.
# Environment: TSAN_BUILD (default build-tsan, inside the tree and
# git-ignored), PG_PYTHON, PG_TIME_SCALE (default 4), PG_WERROR (ON: -Werror),
# and deploy/local's PGLOCAL_RUN / PGLOCAL_KAFKA_PORT / PGLOCAL_REDIS_PORT.
# Usage: bash tests/tsan.sh [pytest args...]   e.g. -k lag (default: the four suites)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

build="$(realpath -m "${TSAN_BUILD:-build-tsan}")"
python="${PG_PYTHON:-$PWD/.venv/bin/python}"
reports="$build/tsan-reports"
suites=(test_metrics.py test_health.py test_flows.py test_kafka_states.py)
t0=$SECONDS

cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPINGUARD_TSAN=ON \
  -DPINGUARD_WERROR="${PG_WERROR:-OFF}" -DPG_PYTHON="$python" >/dev/null
cmake --build "$build"
bash deploy/local/up.sh

rm -rf "$reports"
mkdir -p "$reports"
# halt_on_error=0: a process goes on after a report, so one run shows every
# race; it still exits 66 at its end (tests check exit codes) and the report
# files fail the run below. log_path: each process writes its own file.
# history_size=4: older accesses stay in the history, so both stacks show.
# ignore_noninstrumented_modules: what the uninstrumented libraries do inside
# intercepted calls is not checked, their locking still counts (tests/tsan.supp
# says why, and why it suppresses nothing).
export TSAN_OPTIONS="halt_on_error=0:exitcode=66:second_deadlock_stack=1:history_size=4:ignore_noninstrumented_modules=1:suppressions=$PWD/tests/tsan.supp:log_path=$reports/tsan"
# Instrumented processes start and run slower; the integration tests' waits scale.
export PG_TIME_SCALE="${PG_TIME_SCALE:-4}"

rc=0
echo "== tsan: unit tests"
ctest --test-dir "$build" --output-on-failure -L unit || rc=$?

echo "== tsan: integration tests"
if (($# == 0)); then set -- "${suites[@]}"; fi
(
  cd tests/integration
  PINGUARD_BIN="$build/pinguard" PG_SCHEMAS_DIR="$(realpath ../../schemas)" \
    "$python" -m pytest -q -p no:cacheprovider "$@"
) || rc=$?

shopt -s nullglob
found=("$reports"/*)
if ((${#found[@]})); then
  echo "== tsan reports (${#found[@]} files in $reports)" >&2
  for f in "${found[@]}"; do
    echo "--- $f" >&2
    head -n 80 "$f" >&2
  done
  rc=1
fi
echo "tsan: $((SECONDS - t0)) s"
if [ "$rc" -ne 0 ]; then
  echo "tsan: FAILED" >&2
  exit "$rc"
fi
echo "tsan: every test passed under ThreadSanitizer, no report"
