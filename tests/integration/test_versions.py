# SPDX-License-Identifier: Apache-2.0
"""Schema versions end to end (SPEC, "Schema versions and evolution"):
pinguard reads input written with any known version and writes the current
one. On real Kafka and Redis, in both delivery modes, v1 and v2 inputs are
interleaved on the same partitions of all three input streams; each is
decided as its v2 equivalent would be (a v1 request carries no minGeneration,
so it is never STALE_BINDINGS), and every output is written with the v2
schema, decodes with fastavro and is checked field by field, the binding
generation included. Then the Avro tools: `avro encode --schema-version 1`
writes what fastavro's v1 schema reads, and `avro decode` resolves any
version's bytes to the shape asked for (v2 by default, defaults filled)."""

import io
import json

import fastavro
import pytest

from pgtest import (CURRENT, FINGERPRINTS_BY_VERSION, RECORDS_OF, SCHEMAS_BY_VERSION, encode,
                    decode, now_ms, run_cli, uid, writer_of)

SRC, DST = uid(), uid()
ORIGINS = ["DRS", "HA", "API", "MAINTENANCE", "OTHER"]

# (name, devices, pin, known, generation, verdict, reason, pinning devices)
PROFILES = [
    ("free", [], None, True, 5, "APPROVED", None, []),
    ("nic, no generation", [("n1", "pci+vf")], None, True, None, "APPROVED", None, []),
    ("huge generation", [("n1", "pci+vdpa")], None, True, 2**62 + 3, "APPROVED", None, []),
    ("gpu", [("g1", "dgpu"), ("a-vf", "pci+vf")], None, True, 9, "VETOED",
     "HOST_BOUND_DEVICE", ["g1"]),
    ("pinned", [("g1", "dgpu")], "licence", True, 2, "VETOED", "OPERATOR_PIN", ["g1"]),
    ("odd kind", [("x1", "fpga")], None, True, 1, "VETOED", "UNKNOWN_DEVICE_KIND", ["x1"]),
    ("unknown", [], None, False, None, "VETOED", "UNKNOWN_VM", []),
]


def devices(devs):
    return [{"deviceUuid": d, "kind": k} for d, k in sorted(devs)]


def setup_profiles(env):
    """One VM per profile: (name, vm, generation, verdict, reason, pinning)."""
    out = []
    for name, devs, pin, known, gen, verdict, reason, pinning in PROFILES:
        vm = env.vm(host=SRC if known else None, devices=devs, pin=pin, generation=gen)
        kinds = dict(devs)
        out.append((name, vm, gen, verdict, reason, devices((d, kinds[d]) for d in pinning)))
    return out


def fence(name, verdict, reason, pinning):
    """The verdict of a request whose minGeneration the cache has not reached
    (SPEC precedence: OPERATOR_PIN, UNKNOWN_VM, then STALE_BINDINGS)."""
    if reason in ("OPERATOR_PIN", "UNKNOWN_VM"):
        return verdict, reason, pinning
    return "VETOED", "STALE_BINDINGS", []


def check_fields(got, want, record, what):
    """Every field of the v2 record, one by one: decidedAtMs within `want`'s
    (low, high) window, the others equal."""
    fields = [f["name"] for f in SCHEMAS_BY_VERSION[CURRENT][record]["fields"]]
    assert sorted(got) == sorted(fields), what
    for f in fields:
        if f == "decidedAtMs":
            lo, hi = want[f]
            assert lo <= got[f] <= hi, (what, f, got[f], lo, hi)
        else:
            assert got[f] == want[f], (what, f, got[f], want[f])


def test_v1_and_v2_inputs_interleaved(env):
    profiles = setup_profiles(env)
    t0 = now_ms()
    # --- requests: per VM, on its one partition: v1, v2 without a fence, v1,
    # v2 fenced at the cache's generation, v2 fenced one ahead of it.
    requests = {}  # requestId -> (what, version, request, (verdict, reason, devices), generation)
    for i, (name, vm, gen, verdict, reason, pinning) in enumerate(profiles):
        variants = [("v1", 1, None), ("v2 unfenced", 2, None), ("v1 again", 1, None)]
        if gen is not None:
            variants.append(("v2 fence met", 2, gen))
        variants.append(("v2 fence ahead", 2, (gen or 0) + 1))
        for j, (what, version, min_gen) in enumerate(variants):
            req = {"requestId": uid(), "vmUuid": vm, "srcHostUuid": SRC,
                   "dstHostUuid": None if (i + j) % 3 == 0 else DST,
                   "origin": ORIGINS[(i + j) % 5], "requestedAtMs": t0 - i - j,
                   "minGeneration": min_gen}
            want = (fence(name, verdict, reason, pinning) if what == "v2 fence ahead"
                    else (verdict, reason, pinning))
            requests[req["requestId"]] = (f"{name}: {what}", version, req, want, gen)
            env.produce("requests", vm, encode("MigrateVmRequest", req, version=version))

    # --- advice: two clusters, v1 and v2 alternating on each; v2 input names a
    # generation of its own, which the decision ignores for the cache's.
    gen_of = {vm: gen for _, vm, gen, *_ in profiles}
    want_of = {vm: (verdict, reason, pinning) for _, vm, _, verdict, reason, pinning in profiles}
    advices = {}  # adviceId -> (what, version, advice)
    for c in range(2):
        cluster = uid()
        for k, version in enumerate((1, 2, 1, 2)):
            order = profiles[k:] + profiles[:k] + profiles[:1]  # the first VM twice
            migs = [{"vmUuid": vm, "srcHostUuid": SRC, "dstHostUuid": DST,
                     "score": None if (n + k) % 2 else float(n) / 4,
                     "bindingsGeneration": 777 if n % 2 else None}
                    for n, (_, vm, *_) in enumerate(order)]
            adv = {"adviceId": uid(), "clusterUuid": cluster, "generatedAtMs": t0 - 100 * k,
                   "migrations": migs}
            advices[adv["adviceId"]] = (f"cluster {c} advice {k} (v{version})", version, adv)
            env.produce("advice", cluster, encode("DrsAdvice", adv, version=version))

    # --- results: VMs of their own (a failure counts towards quarantine), each
    # with a v1 and a v2 result, on one partition. MigrationResult is the
    # same in v1 and v2: both versions write the same bytes.
    releases = {}  # requestId -> (what, result, action, reason, devices, generation)
    for name, dst, observed, cache, outcome, gen, action, reason in [
            ("confirmed", DST, DST, DST, "SUCCEEDED", 4, "RELEASE", "CONFIRMED_ON_DESTINATION"),
            ("still on source", DST, SRC, SRC, "FAILED", None, "KEEP", "STILL_ON_SOURCE"),
            ("no destination", None, DST, DST, "SUCCEEDED", 7, "KEEP", "NO_DESTINATION"),
            ("conflict", DST, DST, SRC, "FAILED", 2**40, "KEEP", "PLACEMENT_CONFLICT")]:
        devs = [("gpu", "dgpu"), ("a-vf", "pci+vf")]
        vm = env.vm(host=cache, devices=devs, generation=gen)
        for version in (1, 2):
            res = {"requestId": uid(), "vmUuid": vm, "srcHostUuid": SRC, "dstHostUuid": dst,
                   "outcome": outcome, "observedHostUuid": observed,
                   "error": "aborted" if outcome == "FAILED" else None,
                   "finishedAtMs": t0 - version}
            data = encode("MigrationResult", res, version=version)
            assert data == encode("MigrationResult", res, version=3 - version)
            releases[res["requestId"]] = (f"{name} (v{version})", res, action, reason,
                                          devices(devs), gen)
            env.produce("results", vm, data)
    env.flush()

    w = env.worker()
    env.read("decisions", len(requests), timeout=90)
    env.read("advice.filtered", len(advices), timeout=90)
    env.read("release", len(releases), timeout=90)
    t1 = now_ms()
    assert w.stop() == 0, w.logs()[-3000:]
    assert env.read_all("dlq") == []
    for key, n in (("requests", len(requests)), ("advice", len(advices)),
                   ("results", len(releases))):
        assert sum(max(o, 0) for o in env.committed(key).values()) == n, key

    # --- every output: written with v2's schema, read by fastavro, field by field.
    def outputs(key, record):
        out = []
        for m in env.read_all(key):
            assert writer_of(m.value()) == (CURRENT, record), m.value()[:10]
            out.append((m, decode(m.value())[1]))
        return out

    seen = {}
    for m, d in outputs("decisions", "MigrateVmDecision"):
        what, version, req, (verdict, reason, devs), gen = requests.pop(d["requestId"])
        assert m.key().decode() == req["vmUuid"], what
        check_fields(d, {"requestId": req["requestId"], "vmUuid": req["vmUuid"],
                         "srcHostUuid": SRC, "dstHostUuid": req["dstHostUuid"],
                         "origin": req["origin"], "verdict": verdict, "reason": reason,
                         "devices": devs, "decidedAtMs": (t0, t1),
                         "bindingsGeneration": gen}, "MigrateVmDecision", what)
        if req["minGeneration"] is None or req["minGeneration"] <= (gen or 0):
            # A v1 request and an unfenced (or met) v2 one: one verdict per VM.
            seen.setdefault(req["vmUuid"], set()).add(
                (d["verdict"], d["reason"], json.dumps(d["devices"]), d["bindingsGeneration"]))
        if version == 1:
            assert d["reason"] != "STALE_BINDINGS", what
    assert not requests, f"{len(requests)} requests undecided"
    assert sorted(seen) == sorted(vm for _, vm, *_ in profiles)
    assert all(len(v) == 1 for v in seen.values()), seen

    for m, fa in outputs("advice.filtered", "FilteredAdvice"):
        what, version, adv = advices.pop(fa["adviceId"])
        assert m.key().decode() == adv["clusterUuid"], what
        approved, vetoed = [], []
        for mig in adv["migrations"]:
            out = dict(mig, bindingsGeneration=gen_of[mig["vmUuid"]])
            verdict, reason, devs = want_of[mig["vmUuid"]]
            if verdict == "APPROVED":
                approved.append(out)
            else:
                vetoed.append({"migration": out, "reason": reason, "devices": devs})
        check_fields(fa, {"adviceId": adv["adviceId"], "clusterUuid": adv["clusterUuid"],
                          "generatedAtMs": adv["generatedAtMs"], "decidedAtMs": (t0, t1),
                          "approved": approved, "vetoed": vetoed}, "FilteredAdvice", what)
    assert not advices, f"{len(advices)} advices undecided"

    for m, d in outputs("release", "DeviceReleaseDecision"):
        what, res, action, reason, devs, gen = releases.pop(d["requestId"])
        assert m.key().decode() == res["vmUuid"], what
        check_fields(d, {"requestId": res["requestId"], "vmUuid": res["vmUuid"],
                         "outcome": res["outcome"], "action": action, "reason": reason,
                         "fromHostUuid": SRC, "dstHostUuid": res["dstHostUuid"],
                         "devices": devs, "decidedAtMs": (t0, t1),
                         "bindingsGeneration": gen}, "DeviceReleaseDecision", what)
    assert not releases, f"{len(releases)} results undecided"


# --- the Avro tools ---------------------------------------------------------------

V1_SAMPLES = {
    "DrsAdvice": {
        "adviceId": "adv-1", "clusterUuid": "cl-1", "generatedAtMs": 1732580000123,
        "migrations": [{"vmUuid": "vm-1", "srcHostUuid": "h-a", "dstHostUuid": "h-b",
                        "score": 0.5},
                       {"vmUuid": "vm-\u00fc", "srcHostUuid": "h-a", "dstHostUuid": "h-c",
                        "score": None}]},
    "FilteredAdvice": {
        "adviceId": "adv-1", "clusterUuid": "cl-1", "generatedAtMs": 1, "decidedAtMs": 2,
        "approved": [{"vmUuid": "vm-2", "srcHostUuid": "h-a", "dstHostUuid": "h-c",
                      "score": None}],
        "vetoed": [{"migration": {"vmUuid": "vm-1", "srcHostUuid": "h-a",
                                  "dstHostUuid": "h-b", "score": -1.5},
                    "reason": "HOST_BOUND_DEVICE",
                    "devices": [{"deviceUuid": "d-1", "kind": "dgpu"}]}]},
    "MigrateVmRequest": {
        "requestId": "req-1", "vmUuid": "vm-1", "srcHostUuid": "h-a", "dstHostUuid": "h-b",
        "origin": "HA", "requestedAtMs": -9223372036854775808},
    "MigrateVmDecision": {
        "requestId": "req-1", "vmUuid": "vm-1", "srcHostUuid": "h-a", "dstHostUuid": None,
        "origin": "DRS", "verdict": "VETOED", "reason": "UNKNOWN_DEVICE_KIND",
        "devices": [{"deviceUuid": "d-1", "kind": "fpga"}], "decidedAtMs": 42},
    "MigrationResult": {
        "requestId": "req-1", "vmUuid": "vm-1", "srcHostUuid": "h-a", "dstHostUuid": "h-b",
        "outcome": "FAILED", "observedHostUuid": None, "error": "qemu: aborted",
        "finishedAtMs": 9223372036854775807},
    "DeviceReleaseDecision": {
        "requestId": "req-1", "vmUuid": "vm-1", "outcome": "SUCCEEDED", "action": "RELEASE",
        "reason": "CONFIRMED_ON_DESTINATION", "fromHostUuid": "h-a", "dstHostUuid": "h-b",
        "devices": [{"deviceUuid": "d-1", "kind": "dgpu"},
                    {"deviceUuid": "d-2", "kind": "pci+vf"}], "decidedAtMs": 7},
}
# The same records as v2 writes them: every field v2 added set.
V2_SAMPLES = json.loads(json.dumps(V1_SAMPLES))
for m in V2_SAMPLES["DrsAdvice"]["migrations"] + V2_SAMPLES["FilteredAdvice"]["approved"]:
    m["bindingsGeneration"] = 11
V2_SAMPLES["FilteredAdvice"]["vetoed"][0]["migration"]["bindingsGeneration"] = 2**62
V2_SAMPLES["MigrateVmRequest"]["minGeneration"] = 3
V2_SAMPLES["MigrateVmDecision"]["bindingsGeneration"] = 0
V2_SAMPLES["DeviceReleaseDecision"]["bindingsGeneration"] = 8
assert sorted(V1_SAMPLES) == sorted(RECORDS_OF[1])


def avro_json(record, rec, version):
    """fastavro's Avro JSON of rec with version's schema, parsed."""
    out = io.StringIO()
    fastavro.json_writer(out, SCHEMAS_BY_VERSION[version][record], [rec])
    return json.loads(out.getvalue())


def resolve(data, reader):
    """fastavro's reading of single-object bytes with reader version's schema."""
    wv, record = writer_of(data)
    return fastavro.schemaless_reader(io.BytesIO(data[10:]), SCHEMAS_BY_VERSION[wv][record],
                                      SCHEMAS_BY_VERSION[reader][record])


@pytest.mark.no_services
@pytest.mark.parametrize("record", RECORDS_OF[1])
def test_encode_v1_is_what_fastavro_v1_reads(record):
    """`avro encode --schema-version 1` writes v1's fingerprint and a body
    fastavro's v1 schema reads back to the record, byte for byte what
    fastavro writes."""
    rec = V1_SAMPLES[record]
    text = json.dumps(avro_json(record, rec, 1)).encode()
    p = run_cli("avro", "encode", "--type", record, "--schema-version", "1", input=text,
                check=0)
    data = p.stdout
    assert data[:10] == b"\xc3\x01" + FINGERPRINTS_BY_VERSION[1][record].to_bytes(8, "little")
    body = io.BytesIO(data[10:])
    schema = SCHEMAS_BY_VERSION[1][record]
    assert fastavro.schemaless_reader(body, schema, schema) == rec
    assert body.read() == b""
    assert data == encode(record, rec, version=1)


@pytest.mark.no_services
@pytest.mark.parametrize("record", RECORDS_OF[1])
def test_encode_defaults_to_v2(record):
    rec = V2_SAMPLES[record]
    text = json.dumps(avro_json(record, rec, 2)).encode()
    for args in ((), ("--schema-version", "2")):
        p = run_cli("avro", "encode", "--type", record, *args, input=text, check=0)
        assert p.stdout == encode(record, rec), args
        assert resolve(p.stdout, 2) == rec


@pytest.mark.no_services
@pytest.mark.parametrize("record", RECORDS_OF[1])
def test_decode_v1_bytes_prints_v2_with_defaults(record):
    """fastavro's v1 bytes, decoded by pinguard: the v2 shape, the fields v2
    added at their defaults (null), exactly fastavro's resolution."""
    data = encode(record, V1_SAMPLES[record], version=1)
    want = avro_json(record, resolve(data, 2), 2)
    for args in ((), ("--schema-version", "2")):
        got = json.loads(run_cli("avro", "decode", *args, input=data, check=0).stdout)
        assert got == want, args
    added = set(want) - set(avro_json(record, V1_SAMPLES[record], 1))
    assert all(want[f] is None for f in added)
    # As v1 asks for it: the record as written.
    got = json.loads(run_cli("avro", "decode", "--schema-version", "1", input=data,
                             check=0).stdout)
    assert got == avro_json(record, V1_SAMPLES[record], 1)


@pytest.mark.no_services
@pytest.mark.parametrize("record", RECORDS_OF[1])
def test_decode_v2_bytes_as_v1_drops_the_v2_fields(record):
    data = encode(record, V2_SAMPLES[record])
    v2 = json.loads(run_cli("avro", "decode", input=data, check=0).stdout)
    assert v2 == avro_json(record, V2_SAMPLES[record], 2)
    got = json.loads(run_cli("avro", "decode", "--schema-version", "1", input=data,
                             check=0).stdout)
    assert got == avro_json(record, resolve(data, 1), 1)
    assert got == avro_json(record, V1_SAMPLES[record], 1)
    assert "bindingsGeneration" not in json.dumps(got) and "minGeneration" not in got


@pytest.mark.no_services
def test_v1_round_trip_through_the_tools():
    """v1 bytes from pinguard, decoded by pinguard: v2 JSON, which encodes
    (as v2) to what fastavro writes for the resolved record."""
    rec = V1_SAMPLES["MigrateVmRequest"]
    v1 = run_cli("avro", "encode", "--type", "MigrateVmRequest", "--schema-version", "1",
                 input=json.dumps(avro_json("MigrateVmRequest", rec, 1)).encode(),
                 check=0).stdout
    text = run_cli("avro", "decode", input=v1, check=0).stdout
    assert json.loads(text)["minGeneration"] is None
    v2 = run_cli("avro", "encode", "--type", "MigrateVmRequest", input=text, check=0).stdout
    assert v2 == encode("MigrateVmRequest", dict(rec, minGeneration=None))
    assert v2 != v1 and writer_of(v2) == (2, "MigrateVmRequest")
