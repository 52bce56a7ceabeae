# SPDX-License-Identifier: Apache-2.0
"""Prints the demo's decisions readably and checks each against the expected
verdict in inputs.jsonl. Reads JSON lines (from `pinguard avro decode --framed`)
of the three decision topics; exits 1 if a decision is missing or wrong.
Usage: show.py INPUTS RUN DECISIONS.jsonl DLQ_COUNT"""

import json
import sys

inputs_path, run, decisions_path, dlq_count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
expected = {}
dlq_expected = 0
for line in open(inputs_path):
    inp = json.loads(line.replace("@RUN@", run))
    if "raw" in inp:
        dlq_expected += 1
        continue
    rid = inp["record"].get("requestId") or inp["record"].get("adviceId")
    expected[rid] = inp

def union(v):
    return next(iter(v.values())) if isinstance(v, dict) else v

seen, bad = set(), 0
for line in open(decisions_path):
    if not line.strip() or line.strip() == "null":
        continue
    d = json.loads(line)
    rid = d.get("requestId") or d.get("adviceId")
    if rid not in expected or rid in seen:
        continue
    seen.add(rid)
    exp = expected[rid]["expect"]
    if "approved" in d:
        print(f"DRS advice {rid} (cluster {d['clusterUuid']}):")
        for m in d["approved"]:
            print(f"  APPROVED  vm {m['vmUuid']}  {m['srcHostUuid']} -> {m['dstHostUuid']}")
        for v in d["vetoed"]:
            devs = ", ".join(f"{x['deviceUuid']}({x['kind']})" for x in v["devices"]) or "-"
            print(f"  VETOED    vm {v['migration']['vmUuid']}  {v['reason']:<20} devices: {devs}")
        got_app = [m["vmUuid"] for m in d["approved"]]
        got_vet = {v["migration"]["vmUuid"]: v["reason"] for v in d["vetoed"]}
        ok = got_app == exp["approved"] and got_vet == exp["vetoed"]
    elif "verdict" in d:
        reason = union(d["reason"])
        devs = ", ".join(f"{x['deviceUuid']}({x['kind']})" for x in d["devices"]) or "-"
        print(f"MigrateVm {rid}: vm {d['vmUuid']} -> {union(d['dstHostUuid']) or '(no destination)'}: "
              f"{d['verdict']} {reason or ''}  devices: {devs}")
        ok = d["verdict"] == exp["verdict"] and reason == exp["reason"]
    else:
        devs = ", ".join(f"{x['deviceUuid']}({x['kind']})" for x in d["devices"]) or "-"
        print(f"Release {rid}: vm {d['vmUuid']} {d['outcome']}: {d['action']} "
              f"({d['reason']})  devices: {devs}")
        ok = d["action"] == exp["action"] and d["reason"] == exp["reason"]
    if not ok:
        bad += 1
        print(f"  ^ WRONG: expected {exp}")
missing = set(expected) - seen
for rid in sorted(missing):
    print(f"MISSING decision for {rid}")
print(f"dead-lettered inputs: {dlq_count} (expected {dlq_expected})")
ok = not bad and not missing and dlq_count == dlq_expected
print("demo: every decision is as expected" if ok else "demo: FAILED")
sys.exit(0 if ok else 1)
