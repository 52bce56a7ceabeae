# SPDX-License-Identifier: Apache-2.0
"""Generations in every decision (SPEC "Generations and the dispatch fence"):
a request's minGeneration against the cache's :generation (STALE_BINDINGS
until the cache caught up), the generation each decision was made on
(bindingsGeneration, null when the cache holds none) in request, release and
advice decisions, and the v2 veto precedence around STALE_BINDINGS. The
generation is written with a plain Redis client, as the binding feed would;
inputs are written with fastavro and the v2 schemas."""

from pgtest import decode, encode, now_ms, uid, wait_until

SRC, DST = uid(), uid()


def gen_key(vm):
    return f"pinguard:vm:{{{vm}}}:generation"


def request(vm, min_generation=None, dst=DST):
    return {"requestId": uid(), "vmUuid": vm, "srcHostUuid": SRC, "dstHostUuid": dst,
            "origin": "API", "requestedAtMs": now_ms(), "minGeneration": min_generation}


def advice_item(vm, generation):
    return {"vmUuid": vm, "srcHostUuid": SRC, "dstHostUuid": DST, "score": None,
            "bindingsGeneration": generation}


def decided(env, topic_key, id_field, ids, total):
    """The decisions of `ids` (in that order), reading the topic from the
    start until `total` decisions are there (a redelivery may add more)."""
    by_id = {d[id_field]: d for _, d in env.decisions(topic_key, total)}
    missing = [i for i in ids if i not in by_id]
    assert not missing, f"{topic_key}: no decision for {missing}"
    return [by_id[i] for i in ids]


def test_fence_until_the_cache_caught_up(env):
    """minGeneration=5: STALE_BINDINGS while the cache has no generation and
    at 4 (devices empty, even for a VM that a dGPU pins), APPROVED at 5 with
    bindingsGeneration 5; past the fence the devices decide again."""
    nic = env.vm(host=SRC, devices=[("n1", "pci+vf")])
    gpu = env.vm(host=SRC, devices=[("g1", "dgpu"), ("n1", "pci+vf")])
    w = env.worker()
    sent = []

    def decide(vm, min_generation):
        req = request(vm, min_generation)
        sent.append(req)
        env.produce("requests", vm, encode("MigrateVmRequest", req))
        env.flush()
        (d,) = decided(env, "decisions", "requestId", [req["requestId"]], len(sent))
        assert d["vmUuid"] == vm and d["srcHostUuid"] == SRC and d["dstHostUuid"] == DST
        return d

    for vm in (nic, gpu):
        d = decide(vm, 5)
        assert (d["verdict"], d["reason"]) == ("VETOED", "STALE_BINDINGS"), d
        assert d["devices"] == [] and d["bindingsGeneration"] is None, d
    for vm in (nic, gpu):
        env.redis.set(gen_key(vm), "4")
        d = decide(vm, 5)
        assert (d["verdict"], d["reason"]) == ("VETOED", "STALE_BINDINGS"), d
        assert d["devices"] == [] and d["bindingsGeneration"] == 4, d
    for vm in (nic, gpu):
        env.redis.set(gen_key(vm), "5")
    d = decide(nic, 5)
    assert (d["verdict"], d["reason"]) == ("APPROVED", None), d
    assert d["devices"] == [] and d["bindingsGeneration"] == 5, d
    d = decide(gpu, 5)
    assert (d["verdict"], d["reason"]) == ("VETOED", "HOST_BOUND_DEVICE"), d
    assert d["devices"] == [{"deviceUuid": "g1", "kind": "dgpu"}]
    assert d["bindingsGeneration"] == 5
    # A cache ahead of the fence passes it; no fence never vetoes STALE.
    env.redis.set(gen_key(nic), "9000000000000")
    d = decide(nic, 5)
    assert (d["verdict"], d["bindingsGeneration"]) == ("APPROVED", 9000000000000), d
    env.redis.delete(gen_key(nic))
    d = decide(nic, None)
    assert (d["verdict"], d["bindingsGeneration"]) == ("APPROVED", None), d

    # STALE_BINDINGS is counted like every other reason, once committed.
    def m(**labels):
        return w.metric("pinguard_decisions_total", stream="migrate", **labels)

    def counted():
        return (m(verdict="VETOED", reason="STALE_BINDINGS") == 4
                and m(verdict="APPROVED") == 3
                and m(verdict="VETOED", reason="HOST_BOUND_DEVICE") == 1)
    wait_until(counted, 30, "4 STALE_BINDINGS, 1 HOST_BOUND_DEVICE, 3 approvals counted")
    assert w.stop() == 0


def test_decisions_carry_their_generation(env):
    """bindingsGeneration is the :generation read with each decision, null
    where the cache holds none: requests, release decisions, and both the
    approved items and the vetoes' migrations of advice (whose input
    bindingsGeneration is ignored, and which has no fence)."""
    at7 = env.vm(host=SRC, devices=[("n1", "pci+vf")])
    bare = env.vm(host=SRC)
    gpu3 = env.vm(host=SRC, devices=[("g1", "dgpu")])
    unplaced9 = env.vm()
    bad = env.vm(host=SRC)
    env.redis.set(gen_key(at7), "7")
    env.redis.set(gen_key(gpu3), "3")
    env.redis.set(gen_key(unplaced9), "9")
    env.redis.set(gen_key(bad), "07")  # not canonical: the entry is malformed

    reqs = {vm: request(vm) for vm in (at7, bare, gpu3, unplaced9, bad)}
    for vm, r in reqs.items():
        env.produce("requests", vm, encode("MigrateVmRequest", r))
    # A v1 request has no minGeneration at all: no fence.
    v1 = request(bare)
    del v1["minGeneration"]
    env.produce("requests", bare, encode("MigrateVmRequest", v1, version=1))
    results = {}
    for vm in (at7, bare, bad):
        results[vm] = {"requestId": uid(), "vmUuid": vm, "srcHostUuid": SRC,
                       "dstHostUuid": DST, "outcome": "SUCCEEDED", "observedHostUuid": DST,
                       "error": None, "finishedAtMs": now_ms()}
        env.produce("results", vm, encode("MigrationResult", results[vm]))
    cluster = uid()
    # The input's bindingsGeneration is ignored: the decision says its own.
    migrations = [advice_item(vm, 999) for vm in (at7, bare, gpu3, unplaced9, bad, at7)]
    advice = {"adviceId": uid(), "clusterUuid": cluster, "generatedAtMs": now_ms(),
              "migrations": migrations}
    env.produce("advice", cluster, encode("DrsAdvice", advice))
    env.flush()
    w = env.worker()

    ids = [r["requestId"] for r in reqs.values()]
    got = dict(zip(reqs, decided(env, "decisions", "requestId", ids, len(ids) + 1)))
    want = {at7: ("APPROVED", None, 7), bare: ("APPROVED", None, None),
            gpu3: ("VETOED", "HOST_BOUND_DEVICE", 3), unplaced9: ("VETOED", "UNKNOWN_VM", 9),
            bad: ("VETOED", "UNKNOWN_VM", None)}
    for vm, d in got.items():
        assert (d["verdict"], d["reason"], d["bindingsGeneration"]) == want[vm], (vm, d)
    (d,) = decided(env, "decisions", "requestId", [v1["requestId"]], len(ids) + 1)
    assert (d["verdict"], d["bindingsGeneration"]) == ("APPROVED", None), d

    ids = [r["requestId"] for r in results.values()]
    ds = dict(zip(results, decided(env, "release", "requestId", ids, len(ids))))
    assert (ds[at7]["action"], ds[at7]["bindingsGeneration"]) == ("KEEP", 7), ds[at7]
    assert ds[at7]["reason"] == "PLACEMENT_CONFLICT"  # the cache still says SRC
    assert ds[at7]["devices"] == [{"deviceUuid": "n1", "kind": "pci+vf"}]
    assert ds[bare]["bindingsGeneration"] is None, ds[bare]
    assert (ds[bad]["action"], ds[bad]["reason"], ds[bad]["devices"],
            ds[bad]["bindingsGeneration"]) == ("KEEP", "PLACEMENT_UNCONFIRMED", [], None)

    (fa,) = decided(env, "advice.filtered", "adviceId", [advice["adviceId"]], 1)
    assert w.stop() == 0
    assert fa["approved"] == [advice_item(at7, 7), advice_item(bare, None),
                              advice_item(at7, 7)]
    assert fa["vetoed"] == [
        {"migration": advice_item(gpu3, 3), "reason": "HOST_BOUND_DEVICE",
         "devices": [{"deviceUuid": "g1", "kind": "dgpu"}]},
        {"migration": advice_item(unplaced9, 9), "reason": "UNKNOWN_VM", "devices": []},
        {"migration": advice_item(bad, None), "reason": "UNKNOWN_VM", "devices": []}]


def test_precedence_around_stale(env):
    """OPERATOR_PIN and UNKNOWN_VM come before STALE_BINDINGS: a pinned VM
    with a stale (or no) generation is OPERATOR_PIN, listing what pins it;
    an unknown VM is UNKNOWN_VM, even where unknown VMs are allowed only the
    fence then vetoes it."""
    pinned_stale = env.vm(host=SRC, devices=[("g1", "dgpu")], pin="licence")
    pinned_none = env.vm(host=SRC, pin="maintenance")
    unknown = env.vm()
    env.redis.set(gen_key(pinned_stale), "2")
    reqs = {vm: request(vm, 5) for vm in (pinned_stale, pinned_none, unknown)}
    for vm, r in reqs.items():
        env.produce("requests", vm, encode("MigrateVmRequest", r))
    env.flush()
    w = env.worker()
    ids = [r["requestId"] for r in reqs.values()]
    got = dict(zip(reqs, decided(env, "decisions", "requestId", ids, len(ids))))
    assert w.stop() == 0
    d = got[pinned_stale]
    assert (d["verdict"], d["reason"], d["bindingsGeneration"]) == (
        "VETOED", "OPERATOR_PIN", 2), d
    assert d["devices"] == [{"deviceUuid": "g1", "kind": "dgpu"}]
    d = got[pinned_none]
    assert (d["reason"], d["devices"], d["bindingsGeneration"]) == (
        "OPERATOR_PIN", [], None), d
    d = got[unknown]
    assert (d["reason"], d["devices"]) == ("UNKNOWN_VM", []), d

    # With unknown VMs allowed, the same unknown VM meets the fence.
    again = request(unknown, 5)
    env.produce("requests", unknown, encode("MigrateVmRequest", again))
    env.flush()
    w = env.worker("policy.allow.unknown.vm=true")
    (d,) = decided(env, "decisions", "requestId", [again["requestId"]], len(ids) + 1)
    assert w.stop() == 0
    assert (d["verdict"], d["reason"], d["devices"]) == ("VETOED", "STALE_BINDINGS", []), d
