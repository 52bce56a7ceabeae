# SPDX-License-Identifier: Apache-2.0
"""The three guards end to end: inputs produced to real Kafka, bindings in real
Redis, a `pinguard run` process, and every field of every decision read back
and checked against the SPEC."""

import os

from pgtest import encode, now_ms, uid

SRC, DST, THIRD = uid(), uid(), uid()

# (name, devices, pin, known, expected verdict, reason, expected pinning devices)
KINDS = [
    ("pci", [("d-pci", "pci")], None, True, "VETOED", "HOST_BOUND_DEVICE", ["d-pci"]),
    ("dgpu", [("d-gpu", "dgpu")], None, True, "VETOED", "HOST_BOUND_DEVICE", ["d-gpu"]),
    ("mdev only", [("d-mdev", "mdev")], None, True, "VETOED", "HOST_BOUND_DEVICE", ["d-mdev"]),
    ("usb", [("d-usb", "usb")], None, True, "VETOED", "HOST_BOUND_DEVICE", ["d-usb"]),
    ("vf nic", [("d-vf", "pci+vf")], None, True, "APPROVED", None, []),
    ("vf2 nic", [("d-vf2", "pci+vf2")], None, True, "APPROVED", None, []),
    ("vdpa nic", [("d-vdpa", "pci+vdpa")], None, True, "APPROVED", None, []),
    ("all nics", [("n1", "pci+vf"), ("n2", "pci+vf2"), ("n3", "pci+vdpa")], None, True,
     "APPROVED", None, []),
    ("unknown kind", [("d-x", "fpga"), ("n1", "pci+vf")], None, True, "VETOED",
     "UNKNOWN_DEVICE_KIND", ["d-x"]),
    ("mixed", [("z-gpu", "dgpu"), ("a-vf", "pci+vf"), ("m-odd", "weird"), ("b-pci", "pci")],
     None, True, "VETOED", "HOST_BOUND_DEVICE", ["b-pci", "m-odd", "z-gpu"]),
    ("no devices", [], None, True, "APPROVED", None, []),
    ("pinned", [("d-gpu", "dgpu")], "licence bound", True, "VETOED", "OPERATOR_PIN", ["d-gpu"]),
    ("pinned nic-only", [("n1", "pci+vf")], "maintenance", True, "VETOED", "OPERATOR_PIN", []),
    ("unknown vm", [], None, False, "VETOED", "UNKNOWN_VM", []),
]


def setup_kinds(env):
    out = []
    for name, devs, pin, known, verdict, reason, pinning in KINDS:
        # Device uuids are made unique per VM but keep their sort order.
        vm = uid()
        devs = [(f"{d}-{vm[:8]}", k) for d, k in devs]
        env.vm(host=SRC if known else None, devices=devs, pin=pin, vm=vm)
        kinds = dict(devs)
        pin_devs = [(f"{d}-{vm[:8]}") for d in pinning]
        out.append((name, vm, verdict, reason,
                    [{"deviceUuid": d, "kind": kinds[d]} for d in sorted(pin_devs)]))
    return out


def test_migrate_requests_every_kind(env):
    cases = setup_kinds(env)
    sent = {}
    t0 = now_ms()
    for i, (name, vm, verdict, reason, devices) in enumerate(cases):
        req = {"requestId": uid(), "vmUuid": vm, "srcHostUuid": SRC,
               "dstHostUuid": None if i % 4 == 0 else DST,
               "origin": ["DRS", "HA", "API", "MAINTENANCE", "OTHER"][i % 5],
               "requestedAtMs": t0 - i}
        sent[req["requestId"]] = (name, req, verdict, reason, devices)
        env.produce("requests", vm, encode("MigrateVmRequest", req))
    env.flush()
    w = env.worker()
    got = env.decisions("decisions", len(sent))
    t1 = now_ms()
    assert w.stop() == 0
    assert len(got) == len(sent)
    for msg, d in got:
        name, req, verdict, reason, devices = sent.pop(d["requestId"])
        assert msg.key().decode() == req["vmUuid"], name
        assert d["vmUuid"] == req["vmUuid"], name
        assert d["srcHostUuid"] == SRC, name
        assert d["dstHostUuid"] == req["dstHostUuid"], name
        assert d["origin"] == req["origin"], name
        assert d["verdict"] == verdict, name
        assert d["reason"] == reason, name
        assert d["devices"] == devices, name
        assert t0 <= d["decidedAtMs"] <= t1, name
    assert not sent
    # Every input's offset is committed once its decision is acknowledged.
    assert sum(max(o, 0) for o in env.committed("requests").values()) == len(KINDS)


def test_drs_advice_order_and_vetoes(env):
    cases = setup_kinds(env)
    migrations = []
    expected = []
    for name, vm, verdict, reason, devices in cases + cases[:3]:  # some VMs named twice
        m = {"vmUuid": vm, "srcHostUuid": SRC, "dstHostUuid": DST,
             "score": None if len(migrations) % 2 else 0.5 + len(migrations)}
        migrations.append(m)
        # Decided items carry the cache's generation: none here (v2 field).
        expected.append((dict(m, bindingsGeneration=None), verdict, reason, devices))
    cluster = uid()
    advice = {"adviceId": uid(), "clusterUuid": cluster, "generatedAtMs": now_ms() - 1000,
              "migrations": migrations}
    # A large advice: 400 VMs, every fifth holding a dGPU.
    big_migs, big_expected = [], []
    for i in range(400):
        vm = env.vm(host=SRC, devices=[(f"g-{i}", "dgpu")] if i % 5 == 0 else [])
        m = {"vmUuid": vm, "srcHostUuid": SRC, "dstHostUuid": DST, "score": float(i)}
        big_migs.append(m)
        big_expected.append(i % 5 == 0)
    big = {"adviceId": uid(), "clusterUuid": cluster, "generatedAtMs": now_ms(),
           "migrations": big_migs}
    env.produce("advice", cluster, encode("DrsAdvice", advice))
    env.produce("advice", cluster, encode("DrsAdvice", big))
    env.flush()
    w = env.worker()
    got = {d["adviceId"]: (m, d) for m, d in env.decisions("advice.filtered", 2)}
    assert w.stop() == 0

    msg, fa = got[advice["adviceId"]]
    assert msg.key().decode() == cluster
    assert fa["clusterUuid"] == cluster
    assert fa["generatedAtMs"] == advice["generatedAtMs"]
    assert fa["decidedAtMs"] >= advice["generatedAtMs"]
    want_approved = [m for m, v, _, _ in expected if v == "APPROVED"]
    want_vetoed = [{"migration": m, "reason": r, "devices": d}
                   for m, v, r, d in expected if v == "VETOED"]
    assert fa["approved"] == want_approved
    assert fa["vetoed"] == want_vetoed

    _, fb = got[big["adviceId"]]
    assert [m["vmUuid"] for m in fb["approved"]] == \
        [m["vmUuid"] for m, bound in zip(big_migs, big_expected) if not bound]
    assert [v["migration"]["vmUuid"] for v in fb["vetoed"]] == \
        [m["vmUuid"] for m, bound in zip(big_migs, big_expected) if bound]
    assert all(v["reason"] == "HOST_BOUND_DEVICE" and len(v["devices"]) == 1
               for v in fb["vetoed"])


# (name, dst, observed, cache host, outcome, action, reason)
RELEASE = [
    ("confirmed by both", DST, DST, DST, "SUCCEEDED", "RELEASE", "CONFIRMED_ON_DESTINATION"),
    ("confirmed by event", DST, DST, None, "SUCCEEDED", "RELEASE", "CONFIRMED_ON_DESTINATION"),
    ("confirmed by cache", DST, None, DST, "FAILED", "RELEASE", "CONFIRMED_ON_DESTINATION"),
    ("failed, still on source", DST, SRC, SRC, "FAILED", "KEEP", "STILL_ON_SOURCE"),
    ("failed, cache says source", DST, None, SRC, "FAILED", "KEEP", "STILL_ON_SOURCE"),
    ("succeeded but on source", DST, SRC, None, "SUCCEEDED", "KEEP", "STILL_ON_SOURCE"),
    ("null destination", None, DST, DST, "SUCCEEDED", "KEEP", "NO_DESTINATION"),
    ("no evidence", DST, None, None, "SUCCEEDED", "KEEP", "PLACEMENT_UNCONFIRMED"),
    ("disagreement", DST, DST, SRC, "SUCCEEDED", "KEEP", "PLACEMENT_CONFLICT"),
    ("third host", DST, THIRD, None, "FAILED", "KEEP", "PLACEMENT_CONFLICT"),
]


def test_migration_results_release_rule(env):
    sent = {}
    for i, (name, dst, observed, cache, outcome, action, reason) in enumerate(RELEASE):
        devs = [(f"gpu-{i}", "dgpu"), (f"a-vf-{i}", "pci+vf")]
        vm = env.vm(host=cache, devices=devs)
        res = {"requestId": uid(), "vmUuid": vm, "srcHostUuid": SRC, "dstHostUuid": dst,
               "outcome": outcome, "observedHostUuid": observed,
               "error": "migration aborted" if outcome == "FAILED" else None,
               "finishedAtMs": now_ms()}
        want_devs = sorted(({"deviceUuid": d, "kind": k} for d, k in devs),
                           key=lambda x: x["deviceUuid"])
        sent[res["requestId"]] = (name, res, action, reason, want_devs)
        env.produce("results", vm, encode("MigrationResult", res))
    env.flush()
    w = env.worker()
    got = env.decisions("release", len(sent))
    assert w.stop() == 0
    for msg, d in got:
        name, res, action, reason, devs = sent.pop(d["requestId"])
        assert msg.key().decode() == res["vmUuid"], name
        assert d["vmUuid"] == res["vmUuid"], name
        assert d["outcome"] == res["outcome"], name
        assert (d["action"], d["reason"]) == (action, reason), name
        assert d["fromHostUuid"] == SRC, name
        assert d["dstHostUuid"] == res["dstHostUuid"], name
        assert d["devices"] == devs, name
        assert d["decidedAtMs"] >= res["finishedAtMs"], name
    assert not sent
    # The worker logs every KEEP/RELEASE with the VM and the reason.
    assert "event=release_decided" in w.logs() and "reason=STILL_ON_SOURCE" in w.logs()


def test_poison_goes_to_dlq_and_next_is_decided(env):
    vm = env.vm(host=SRC, devices=[("g", "dgpu")])
    good = {"requestId": uid(), "vmUuid": vm, "srcHostUuid": SRC, "dstHostUuid": DST,
            "origin": "API", "requestedAtMs": now_ms()}
    wrong_type = encode("MigrationResult", {
        "requestId": uid(), "vmUuid": vm, "srcHostUuid": SRC, "dstHostUuid": DST,
        "outcome": "SUCCEEDED", "observedHostUuid": None, "error": None, "finishedAtMs": 1})
    poison = [(os.urandom(64), "BAD_MAGIC"), (b"", "EMPTY_MESSAGE"),
              (encode("MigrateVmRequest", good)[:-3], "TRUNCATED_BODY"),
              (b"\xc3\x01" + b"\x00" * 8 + b"\x02", "UNKNOWN_FINGERPRINT"),
              (wrong_type, "UNEXPECTED_RECORD")]
    # Same key: same partition, poison first, the good request last.
    for payload, _ in poison:
        env.produce("requests", vm, payload)
    env.produce("requests", vm, encode("MigrateVmRequest", good))
    env.flush()
    w = env.worker()
    decided = env.decisions("decisions", 1)
    dlq = env.read("dlq", len(poison))
    assert w.stop() == 0
    assert decided[0][1]["requestId"] == good["requestId"]
    assert decided[0][1]["verdict"] == "VETOED"
    assert len(dlq) == len(poison)
    committed = {p: o for p, o in env.committed("requests").items() if o >= 0}
    assert len(committed) == 1, committed
    partition = next(iter(committed))
    for i, (m, (payload, code)) in enumerate(zip(dlq, poison)):
        h = {k: v.decode() for k, v in m.headers()}
        assert h["pinguard-error"].startswith(code + ":"), h["pinguard-error"]
        assert h["pinguard-source-topic"] == env.topics["requests"]
        assert int(h["pinguard-source-partition"]) == partition
        assert int(h["pinguard-source-offset"]) == i
        assert (m.value() or b"") == payload
        assert m.key().decode() == vm
    # The dead letters' offsets are committed too: nothing is left behind.
    assert committed[partition] == len(poison) + 1
