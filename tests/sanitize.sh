#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# tests/sanitize.sh — owns the AddressSanitizer + UndefinedBehaviorSanitizer
# run: builds with -DPINGUARD_SANITIZE=ON in its own build dir and runs the
# whole ctest suite there (unit tests, and integration tests whose worker and
# CLI processes are the sanitized binary), against the local Kafka and Redis
# (deploy/local/up.sh reuses services that already answer). Any sanitizer
# report fails the run, even from a process a test killed or whose exit code
# nobody checked: reports go to files, which are collected at the end.
# Only pinguard's own code is instrumented; librdkafka, avro-c, hiredis and
# jansson are Debian's builds. LeakSanitizer still sees their allocations
# (malloc is intercepted), so a leak inside them would show too; none does
# today, so there is no suppressions file. Environment: SANITIZE_BUILD (default
# build-asan, inside the tree and git-ignored), PG_PYTHON, PG_TIME_SCALE (default 3), and
# deploy/local's PGLOCAL_RUN / PGLOCAL_KAFKA_PORT / PGLOCAL_REDIS_PORT.
# Usage: bash tests/sanitize.sh [ctest args...]   e.g. -L unit
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

build="$(realpath -m "${SANITIZE_BUILD:-build-asan}")"
python="${PG_PYTHON:-$PWD/.venv/bin/python}"
reports="$build/sanitizer-reports"

cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPINGUARD_SANITIZE=ON \
  -DPINGUARD_WERROR="${PG_WERROR:-OFF}" -DPG_PYTHON="$python" >/dev/null
cmake --build "$build"
bash deploy/local/up.sh

rm -rf "$reports"
mkdir -p "$reports"
# halt_on_error: the first finding stops the process (a failing test then
# shows it); log_path: each process writes its reports to its own file.
export ASAN_OPTIONS="halt_on_error=1:detect_leaks=1:abort_on_error=0:exitcode=86:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1:log_path=$reports/asan"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$reports/ubsan"
# Sanitized processes start and run slower; the integration tests' waits scale.
export PG_TIME_SCALE="${PG_TIME_SCALE:-3}"

rc=0
ctest --test-dir "$build" --output-on-failure "$@" || rc=$?

shopt -s nullglob
found=("$reports"/*)
if ((${#found[@]})); then
  echo "== sanitizer reports (${#found[@]} files in $reports)" >&2
  for f in "${found[@]}"; do
    echo "--- $f" >&2
    head -n 60 "$f" >&2
  done
  rc=1
fi
if [ "$rc" -ne 0 ]; then
  echo "sanitize: FAILED" >&2
  exit "$rc"
fi
echo "sanitize: every test passed under ASan + UBSan, no sanitizer report"
