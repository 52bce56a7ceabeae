#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The built-in demo, from a fresh machine: installs what is needed, builds
# pinguard, starts Kafka and Redis on loopback, loads a sample binding cache,
# produces sample DRS advice, MigrateVm requests and migration results (and one
# undecodable message), runs the worker, and prints every decision next to the
# expected one. Then the binding feed: publishes bindings for three VMs, runs
# `pinguard sync` until it has caught up, decides a request, publishes a newer
# generation that attaches a dGPU, decides again once synced, and shows the
# host's impact report. Then a quarantine: three FAILED results of one VM, a
# DRS request vetoed QUARANTINED beside an HA one approved, `pinguard
# unquarantine`, the DRS request approved again, and the VM's audit trail.
# Exits non-zero if any decision is missing or wrong.
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
sync_pid=""
cleanup() {
  local pid
  for pid in "$sync_pid" "$worker_pid"; do
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      wait "$pid" || true
    fi
  done
  rm -rf "$work"
}
trap cleanup EXIT

echo "== loading the binding cache"
"$pg" import "$demo/bindings.jsonl"
"$pg" explain 6f1c0a52-0005-4000-8000-00000000a005

declare -A topic=([advice]=drs.advice [requests]=vm.migrate.requests [results]=vm.migrate.results)
n=0
# produce FILE: the inputs of a JSON-lines file shaped like inputs.jsonl.
produce() {
  local line t key f count=0
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
    count=$((count + 1))
  done <"$1"
  echo "produced $count messages"
}

# collect: the decisions so far into decisions.jsonl; prints the count of this
# run's dead letters (the undecodable sample message names the run).
collect() {
  for t in drs.advice.filtered vm.migrate.decisions device.release.decisions; do
    "$kcat" -C -b "$broker" -t "$t" -o beginning -e -q -f '%R%s'
  done | "$pg" avro decode --framed >"$work/decisions.jsonl"
  "$kcat" -C -b "$broker" -t pinguard.dlq -o beginning -e -q -f '%s\n' |
    grep -c "demo $run" || true
}
# The same for inputs that expect no dead letter.
collect_no_dlq() {
  collect >/dev/null
  echo 0
}

# await INPUTS COLLECT: until every decision INPUTS expects is there (COLLECT
# prints the dead letters to count), then prints them beside the expected ones.
await() {
  local deadline=$((SECONDS + 90))
  until python3 "$demo/show.py" "$1" "$run" "$work/decisions.jsonl" "$($2)" >/dev/null; do
    if ((SECONDS > deadline)) || ! kill -0 "$worker_pid" 2>/dev/null; then
      echo "demo: decisions incomplete; worker log:" >&2
      tail -n 30 "$work/worker.log" >&2
      python3 "$demo/show.py" "$1" "$run" "$work/decisions.jsonl" "$($2)" || true
      exit 1
    fi
    sleep 0.5
  done
  echo
  python3 "$demo/show.py" "$1" "$run" "$work/decisions.jsonl" "$($2)"
}

# wait_for WHAT LOG PID CMD...: until CMD succeeds, within 60 s, while PID lives.
wait_for() {
  local what=$1 log=$2 pid=$3 deadline=$((SECONDS + 60))
  shift 3
  until "$@"; do
    if ((SECONDS > deadline)) || ! kill -0 "$pid" 2>/dev/null; then
      echo "demo: $what; log:" >&2
      tail -n 30 "$log" >&2
      exit 1
    fi
    sleep 0.2
  done
}

echo "== producing sample inputs (run $run)"
produce "$demo/inputs.jsonl"

echo "== running the worker"
"$pg" run >"$work/worker.log" 2>&1 &
worker_pid=$!
await "$demo/inputs.jsonl" collect
echo
echo "== worker log (vetoes and release decisions)"
grep -E 'event=(advice_vetoed|request_vetoed|release_decided|input_dead_lettered)' "$work/worker.log" | tail -n 20

# --- the binding feed -----------------------------------------------------
# The owner of three VMs on host-d publishes their complete bindings to
# device.bindings, and `pinguard sync` applies them. Generations only grow:
# this run's come from its clock, above those of every earlier run.
gen=$((run * 10))
vm_nic=6f1c0a52-00d1-4000-8000-00000000a0d1
vm_gpu=6f1c0a52-00d2-4000-8000-00000000a0d2
vm_bare=6f1c0a52-00d3-4000-8000-00000000a0d3
nic='{"deviceUuid": "0000:17:00.2", "kind": "pci+vf"}'
gpu='{"deviceUuid": "0000:b1:00.0", "kind": "dgpu"}'
# binding VM GENERATION DEVICES: one VmBindings line for `pinguard publish`.
binding() {
  printf '{"vmUuid": "%s", "hostUuid": "host-d", "devices": [%s], "generation": %s}\n' "$1" "$3" "$2"
}
# request ID VM MIN_GENERATION VERDICT REASON: one line of an inputs file.
request() {
  jq -nc --arg id "$1" --arg vm "$2" --argjson mg "$3" --arg verdict "$4" --argjson reason "$5" \
    '{topic: "requests", type: "MigrateVmRequest", key: $vm,
      record: {requestId: $id, vmUuid: $vm, srcHostUuid: "host-d", dstHostUuid: "host-e",
               origin: "API", requestedAtMs: 0, minGeneration: $mg},
      expect: {verdict: $verdict, reason: $reason}}'
}
synced() { [ "$("$pg" explain "$1" --json | jq -r .generation)" = "$2" ]; }
ready() { curl -fs http://127.0.0.1:9465/readyz >/dev/null 2>&1; }

echo
echo "== the binding feed: publishing three VMs on host-d (generation $((gen + 1)))"
{
  binding "$vm_nic" $((gen + 1)) "$nic"
  binding "$vm_gpu" $((gen + 1)) '{"deviceUuid": "0000:65:00.0", "kind": "dgpu"}'
  binding "$vm_bare" $((gen + 1)) ""
} >"$work/feed-1.jsonl"
"$pg" publish "$work/feed-1.jsonl"

echo "== running pinguard sync until it has caught up (/readyz)"
"$pg" sync >"$work/sync.log" 2>&1 &
sync_pid=$!
wait_for "pinguard sync did not catch up" "$work/sync.log" "$sync_pid" ready
curl -fs http://127.0.0.1:9465/metrics | grep '^pinguard_sync_records_total'
"$pg" explain "$vm_nic"
request "req-feed-nic-$run" "$vm_nic" $((gen + 1)) APPROVED null >"$work/feed-req-1.jsonl"
produce "$work/feed-req-1.jsonl"
await "$work/feed-req-1.jsonl" collect_no_dlq

echo
echo "== the owner attaches a dGPU to $vm_nic: generation $((gen + 2))"
binding "$vm_nic" $((gen + 2)) "$nic, $gpu" >"$work/feed-2.jsonl"
"$pg" publish "$work/feed-2.jsonl"
wait_for "generation $((gen + 2)) did not reach the cache" "$work/sync.log" "$sync_pid" \
  synced "$vm_nic" $((gen + 2))
echo "synced: the cache holds generation $((gen + 2)) of $vm_nic"
# The sender knows that the attach made generation gen+2 and fences on it.
request "req-feed-gpu-$run" "$vm_nic" $((gen + 2)) VETOED '"HOST_BOUND_DEVICE"' >"$work/feed-req-2.jsonl"
produce "$work/feed-req-2.jsonl"
await "$work/feed-req-2.jsonl" collect_no_dlq

echo
echo "== before maintenance of host-d: pinguard impact host-d"
"$pg" impact host-d
impact=$("$pg" impact host-d --json)
if [ "$(jq -c '.summary | [.vms, .canMove, .stay]' <<<"$impact")" != "[3,1,2]" ]; then
  echo "demo: FAILED: impact host-d should list 3 VMs, 1 that can move: $impact" >&2
  exit 1
fi

# --- quarantine -----------------------------------------------------------
# A VM with a NIC VF only (it may migrate) whose migrations keep failing:
# after quarantine.failures (3) FAILED results DRS may not move it for
# quarantine.base.ms (10 min); HA still may. The operator lifts it.
vm_q=6f1c0a52-00e1-4000-8000-00000000a0e1
echo
echo "== quarantine: $vm_q fails to migrate three times"
"$pg" place "$vm_q" host-f --actor demo
"$pg" bind "$vm_q" 0000:18:00.2 pci+vf --actor demo
now=$(date +%s%3N)
# failed ID AT: one FAILED MigrationResult of vm_q, finished at AT (ms).
failed() {
  jq -nc --arg id "$1" --arg vm "$vm_q" --argjson at "$2" \
    '{topic: "results", type: "MigrationResult", key: $vm,
      record: {requestId: $id, vmUuid: $vm, srcHostUuid: "host-f", dstHostUuid: "host-g",
               outcome: "FAILED", observedHostUuid: "host-f",
               error: "migration aborted: dirty page rate too high", finishedAtMs: $at},
      expect: {action: "KEEP", reason: "STILL_ON_SOURCE"}}'
}
# qrequest ID ORIGIN VERDICT REASON: a MigrateVmRequest of vm_q.
qrequest() {
  jq -nc --arg id "$1" --arg vm "$vm_q" --arg origin "$2" --arg verdict "$3" --argjson reason "$4" \
    '{topic: "requests", type: "MigrateVmRequest", key: $vm,
      record: {requestId: $id, vmUuid: $vm, srcHostUuid: "host-f", dstHostUuid: "host-g",
               origin: $origin, requestedAtMs: 0},
      expect: {verdict: $verdict, reason: $reason}}'
}
quarantined() { [ "$("$pg" explain "$vm_q" --json | jq -r .quarantine.quarantined)" = true ]; }
for i in 1 2 3; do failed "res-q$i-$run" $((now + i)); done >"$work/q-fail.jsonl"
produce "$work/q-fail.jsonl"
await "$work/q-fail.jsonl" collect_no_dlq
wait_for "the quarantine did not start" "$work/worker.log" "$worker_pid" quarantined
echo
"$pg" explain "$vm_q"
{
  qrequest "req-q-drs-$run" DRS VETOED '"QUARANTINED"'
  qrequest "req-q-ha-$run" HA APPROVED null
} >"$work/q-req-1.jsonl"
produce "$work/q-req-1.jsonl"
await "$work/q-req-1.jsonl" collect_no_dlq

echo
echo "== the operator lifts it: pinguard unquarantine $vm_q"
"$pg" unquarantine "$vm_q" --actor demo
qrequest "req-q-drs2-$run" DRS APPROVED null >"$work/q-req-2.jsonl"
produce "$work/q-req-2.jsonl"
await "$work/q-req-2.jsonl" collect_no_dlq
echo
echo "== the audit trail of $vm_q (pinguard audit $vm_q --since 5m)"
"$pg" audit "$vm_q" --since 5m

echo
echo "Services keep running; stop them with: bash deploy/local/down.sh"
