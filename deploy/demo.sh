#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The built-in demo, from a fresh machine: installs what is needed, builds
# pinguard, starts Kafka and Redis on loopback, loads a sample binding cache,
# produces sample DRS advice, MigrateVm requests and migration results (and one
# undecodable message), runs the worker, and prints every decision next to the
# expected one. Exits non-zero if any decision is missing or wrong.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
demo=$root/deploy/demo

bash deploy/install-deps.sh >/dev/null
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPINGUARD_WERROR="${PG_WERROR:-OFF}" >/dev/null
cmake --build build >/dev/null
bash deploy/local/up.sh

pg=$root/build/pinguard
kcat=$(command -v kcat || command -v kafkacat)
broker=127.0.0.1:9092
run=$(date +%s)
work=$(mktemp -d)
worker_pid=""
cleanup() {
  if [ -n "$worker_pid" ] && kill -0 "$worker_pid" 2>/dev/null; then
    kill -TERM "$worker_pid"
    wait "$worker_pid" || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "== loading the binding cache"
"$pg" import "$demo/bindings.jsonl"
"$pg" explain 6f1c0a52-0005-4000-8000-00000000a005

echo "== producing sample inputs (run $run)"
declare -A topic=([advice]=drs.advice [requests]=vm.migrate.requests [results]=vm.migrate.results)
n=0
while IFS= read -r line; do
  line=${line//@RUN@/$run}
  t=$(jq -r .topic <<<"$line")
  key=$(jq -r .key <<<"$line")
  f=$work/in-$n.bin
  if [ "$(jq -r 'has("raw")' <<<"$line")" = true ]; then
    jq -j .raw <<<"$line" >"$f"
  else
    jq -c .record <<<"$line" | "$pg" avro encode --type "$(jq -r .type <<<"$line")" >"$f"
  fi
  "$kcat" -P -b "$broker" -t "${topic[$t]}" -k "$key" "$f"
  n=$((n + 1))
done <"$demo/inputs.jsonl"
echo "produced $n messages"

echo "== running the worker"
"$pg" run >"$work/worker.log" 2>&1 &
worker_pid=$!

collect() {
  for t in drs.advice.filtered vm.migrate.decisions device.release.decisions; do
    "$kcat" -C -b "$broker" -t "$t" -o beginning -e -q -f '%R%s'
  done | "$pg" avro decode --framed >"$work/decisions.jsonl"
  "$kcat" -C -b "$broker" -t pinguard.dlq -o beginning -e -q -f '%s\n' |
    grep -c "demo $run" || true
}
deadline=$((SECONDS + 90))
until python3 "$demo/show.py" "$demo/inputs.jsonl" "$run" "$work/decisions.jsonl" "$(collect)" >/dev/null; do
  if ((SECONDS > deadline)) || ! kill -0 "$worker_pid" 2>/dev/null; then
    echo "demo: decisions incomplete; worker log:" >&2
    tail -n 30 "$work/worker.log" >&2
    python3 "$demo/show.py" "$demo/inputs.jsonl" "$run" "$work/decisions.jsonl" "$(collect)" || true
    exit 1
  fi
  sleep 0.5
done
echo
python3 "$demo/show.py" "$demo/inputs.jsonl" "$run" "$work/decisions.jsonl" "$(collect)"
echo
echo "== worker log (vetoes and release decisions)"
grep -E 'event=(advice_vetoed|request_vetoed|release_decided|input_dead_lettered)' "$work/worker.log" | tail -n 20
echo
echo "Services keep running; stop them with: bash deploy/local/down.sh"
