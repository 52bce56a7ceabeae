#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# tests/fuzz/run.sh — owns the bounded fuzzing run of CI: configures a clang
# build with PINGUARD_FUZZ=ON (libFuzzer + ASan + UBSan), builds the decode
# targets, fuzzes each for FUZZ_SECONDS (default 60) from its seed corpus in
# tests/fuzz/corpus/<target>/, and fails on any crash, leak, undefined
# behaviour, timeout or out-of-memory. Prints each target's executions.
# New corpus entries go to the build dir, never into the repository.
# Environment: FUZZ_SECONDS, FUZZ_BUILD (default build-fuzz, git-ignored),
# FUZZ_TARGETS (default: all three).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

seconds="${FUZZ_SECONDS:-60}"
build="$(realpath -m "${FUZZ_BUILD:-build-fuzz}")"
read -r -a targets <<<"${FUZZ_TARGETS:-fuzz_drs_advice fuzz_migrate_vm_request fuzz_migration_result}"

cmake -S . -B "$build" -G Ninja -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DPINGUARD_WERROR="${PG_WERROR:-OFF}" \
  -DPINGUARD_FUZZ=ON >/dev/null
cmake --build "$build" --target "${targets[@]}"

# UBSan findings abort (the build has -fno-sanitize-recover too); leaks are
# checked per input by libFuzzer and at exit by LeakSanitizer.
export ASAN_OPTIONS="halt_on_error=1:detect_leaks=1:abort_on_error=1:symbolize=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"

failed=()
summary=()
for t in "${targets[@]}"; do
  work="$build/fuzz-work/$t"
  rm -rf "$work"
  mkdir -p "$work/corpus" "$work/artifacts"
  log="$work/fuzz.log"
  echo "== fuzz $t for ${seconds}s"
  # -malloc_limit_mb: no message of at most max_len bytes may need a large
  # allocation; -timeout: nor a second of work.
  rc=0
  "$build/tests/fuzz/$t" "$work/corpus" "tests/fuzz/corpus/$t" \
    -max_total_time="$seconds" -max_len=8192 -timeout=10 -rss_limit_mb=1024 \
    -malloc_limit_mb=64 -detect_leaks=1 -print_final_stats=1 \
    -artifact_prefix="$work/artifacts/" >"$log" 2>&1 || rc=$?
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)"
  cov="$(grep -o 'cov: [0-9]*' "$log" | tail -n1 || true)"
  if [ "$rc" -ne 0 ] || [ -z "$execs" ] || ls "$work/artifacts/"* >/dev/null 2>&1; then
    echo "FAIL: $t exited with $rc; the end of its log ($log):" >&2
    tail -n 60 "$log" >&2
    ls -l "$work/artifacts/" >&2 || true
    failed+=("$t")
    summary+=("$t: FAILED (exit $rc)")
  else
    summary+=("$t: ${execs} executions, ${cov:-cov: ?}, $(find "$work/corpus" -type f | wc -l) new corpus entries")
  fi
done

echo "== fuzz summary (${seconds}s per target)"
printf '  %s\n' "${summary[@]}"
if ((${#failed[@]})); then
  echo "fuzzing failed: ${failed[*]}" >&2
  exit 1
fi
