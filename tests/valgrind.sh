#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# tests/valgrind.sh — owns the valgrind run: the unit tests, then the
# integration tests with every pinguard process (workers and CLI calls, through
# pgtest's PG_WRAPPER) under
#   valgrind --leak-check=full --errors-for-leak-kinds=definite --error-exitcode=99
# against the local Kafka and Redis (deploy/local/up.sh reuses running ones).
# Fails when a test fails (a worker that valgrind flags exits 99, and the
# tests check exit codes) or when any valgrind log reports an error, which
# also catches processes whose exit code no test looked at. A process killed
# with SIGKILL (crash tests do that on purpose) writes no summary; those are
# listed, not failed. Uses the normal build (tests/run.sh's build/, or
# PG_BUILD). Environment: PG_BUILD, PG_PYTHON, PG_TIME_SCALE (default 10),
# VALGRIND_LOGS (default /tmp/pinguard-valgrind), and deploy/local's
# PGLOCAL_RUN / PGLOCAL_KAFKA_PORT / PGLOCAL_REDIS_PORT.
# Usage: bash tests/valgrind.sh [pytest args...]   e.g. -k hostile
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

build="${PG_BUILD:-build}"
python="${PG_PYTHON:-$PWD/.venv/bin/python}"
logs="${VALGRIND_LOGS:-/tmp/pinguard-valgrind}"
vg=(valgrind --leak-check=full --errors-for-leak-kinds=definite --error-exitcode=99
  --num-callers=30)

cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPINGUARD_WERROR="${PG_WERROR:-OFF}" \
  -DPG_PYTHON="$python" >/dev/null
cmake --build "$build"
bin="$(realpath "$build/pinguard")"
bash deploy/local/up.sh

rm -rf "$logs"
mkdir -p "$logs"

echo "== valgrind: unit tests"
# CK_FORK=no: each suite runs in one process, so valgrind's leak check at its
# exit covers every test (test_codec_alloc's counting allocator included).
for t in "$build"/tests/test_*; do
  if [ ! -f "$t" ] || [ ! -x "$t" ]; then continue; fi
  name="$(basename "$t")"
  CK_FORK=no PG_SOURCE_DIR="$PWD" PG_SCHEMAS_DIR="$PWD/schemas" \
    PG_TESTDATA_DIR="$PWD/tests/unit/data" \
    "${vg[@]}" --log-file="$logs/unit-$name.%p.log" "$t" >"$logs/unit-$name.out" 2>&1 || {
    cat "$logs/unit-$name.out" "$logs/unit-$name".*.log >&2
    echo "valgrind: unit test $name FAILED" >&2
    exit 1
  }
  echo "  $name: $(tail -n 1 "$logs/unit-$name.out")"
done

echo "== valgrind: integration tests"
rc=0
(
  cd tests/integration
  PG_WRAPPER="${vg[*]} --log-file=$logs/it.%p.log" PG_TIME_SCALE="${PG_TIME_SCALE:-10}" \
    PINGUARD_BIN="$bin" PG_SCHEMAS_DIR="$(realpath ../../schemas)" \
    "$python" -m pytest -q -p no:cacheprovider "$@"
) || rc=$?

# Every finished process ends its log with an ERROR SUMMARY line.
bad=()
unfinished=()
n=0
for f in "$logs"/*.log; do
  n=$((n + 1))
  summary="$(grep -h "ERROR SUMMARY:" "$f" | tail -n 1 || true)"
  if [ -z "$summary" ]; then
    unfinished+=("$f")
  elif ! grep -q "ERROR SUMMARY: 0 errors" <<<"$summary"; then
    bad+=("$f")
  fi
done
echo "== valgrind: $n processes checked, ${#bad[@]} with errors, ${#unfinished[@]} killed before their summary"
for f in "${unfinished[@]}"; do
  echo "  killed: $f ($(grep -m1 -o 'Command: .*' "$f" | cut -c1-120))"
done
for f in "${bad[@]}"; do
  echo "--- $f" >&2
  cat "$f" >&2
done
if ((${#bad[@]})) || [ "$rc" -ne 0 ]; then
  echo "valgrind: FAILED (pytest exit $rc)" >&2
  exit 1
fi
echo "valgrind: clean"
