# SPDX-License-Identifier: Apache-2.0
"""`pinguard impact HOST` (every VM the host index lists, and what a MAINTENANCE
request for it would get now) and `pinguard publish FILE|-` (JSON lines onto
the binding feed), on the real Redis and Kafka.

The host index (pinguard:host:{<host>}:vms) is written here directly, as
`pinguard sync` would keep it, so that impact is tested on its own. Published
records are read back with confluent_kafka and decoded with fastavro (pgtest),
an implementation independent of pinguard's."""

import json
import re

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import NewTopic

from pgtest import decode, now_ms, run_cli, uid, wait_until


def _index(env, host, *vms):
    env.hosts.add(host)
    env.vms.update(v for v in vms if v)
    env.redis.sadd(f"pinguard:host:{{{host}}}:vms", *vms)


def _impact(env, host, *args, check=0):
    return run_cli("impact", host, *_settings(env), *args, check=check)


def _settings(env):
    out = []
    for s in env.settings():
        out += ["--set", s]
    return out


def _every_kind(env):
    """A host with a VM of every kind; returns (host, other host, vm names)."""
    host, other, tag = "h-" + uid(), "h-" + uid(), uid()[:8]
    v = {k: f"{tag}-{k}" for k in ("a-move", "b-dgpu", "c-pin", "d-kind", "e-malformed",
                                    "f-moved", "g-unknown", "h-bare")}
    env.vm(host=host, devices={"nic-1": "pci+vf"}, vm=v["a-move"], generation=3)
    env.vm(host=host, devices={"p1": "pci", "g1": "dgpu", "n1": "pci+vf2"}, vm=v["b-dgpu"],
           generation=9)
    env.vm(host=host, pin="licence dongle", vm=v["c-pin"])
    env.vm(host=host, devices={"x1": "PCI"}, vm=v["d-kind"])  # kinds match exactly
    env.vm(host=host, devices={"": "pci"}, vm=v["e-malformed"], generation=4)
    env.vm(host=other, devices={"g2": "dgpu"}, vm=v["f-moved"])
    env.vms.add(v["g-unknown"])  # listed, but not in the cache at all
    env.vm(host=host, vm=v["h-bare"])
    env.hosts.add(other)
    # An entry that names no VM (an empty member) is left out, with a word.
    _index(env, host, *v.values(), "")
    return host, other, v


def test_impact_text(cache_env):
    env = cache_env
    host, other, v = _every_kind(env)
    p = _impact(env, host)
    assert p.stdout.decode() == (
        f"{v['a-move']}  can move\n"
        f"{v['b-dgpu']}  stays  HOST_BOUND_DEVICE  g1(dgpu),p1(pci)\n"
        f"{v['c-pin']}  stays  OPERATOR_PIN\n"
        f"{v['d-kind']}  stays  UNKNOWN_DEVICE_KIND  x1(PCI)\n"
        f"{v['e-malformed']}  stays  UNKNOWN_VM\n"
        f"{v['f-moved']}  moved  now on {other}\n"
        f"{v['g-unknown']}  stays  UNKNOWN_VM\n"
        f"{v['h-bare']}  can move\n"
        f"host {host}: 7 VMs, 2 can move, 5 stay: 2 UNKNOWN_VM, 1 HOST_BOUND_DEVICE, "
        f"1 OPERATOR_PIN, 1 UNKNOWN_DEVICE_KIND\n")
    assert b"holds 1 entry that names no VM; left out" in p.stderr, p.stderr
    # A report writes nothing: the stale entry of the moved VM stays listed.
    assert env.redis.sismember(f"pinguard:host:{{{host}}}:vms", v["f-moved"])
    assert env.redis.scard(f"pinguard:host:{{{host}}}:vms") == 9


def test_impact_json(cache_env):
    env = cache_env
    host, other, v = _every_kind(env)
    out = json.loads(_impact(env, host, "--json").stdout)
    assert out["host"] == host
    by_vm = {e["vmUuid"]: e for e in out["vms"]}
    assert [e["vmUuid"] for e in out["vms"]] == sorted(by_vm)  # sorted, each once
    assert set(by_vm) == set(v.values()) - {v["f-moved"]}
    assert by_vm[v["a-move"]] == {"vmUuid": v["a-move"], "canMove": True, "reason": None,
                                  "devices": [], "generation": 3}
    assert by_vm[v["b-dgpu"]] == {
        "vmUuid": v["b-dgpu"], "canMove": False, "reason": "HOST_BOUND_DEVICE",
        "devices": [{"deviceUuid": "g1", "kind": "dgpu"}, {"deviceUuid": "p1", "kind": "pci"}],
        "generation": 9}
    assert by_vm[v["c-pin"]]["reason"] == "OPERATOR_PIN"
    assert by_vm[v["c-pin"]]["generation"] is None
    assert by_vm[v["d-kind"]]["reason"] == "UNKNOWN_DEVICE_KIND"
    assert by_vm[v["d-kind"]]["devices"] == [{"deviceUuid": "x1", "kind": "PCI"}]
    # Malformed: nothing of the entry is trusted, its generation neither.
    assert by_vm[v["e-malformed"]] == {"vmUuid": v["e-malformed"], "canMove": False,
                                       "reason": "UNKNOWN_VM", "devices": [],
                                       "generation": None}
    assert by_vm[v["g-unknown"]]["reason"] == "UNKNOWN_VM"
    assert by_vm[v["h-bare"]]["canMove"] is True
    assert out["moved"] == [{"vmUuid": v["f-moved"], "hostUuid": other}]
    assert out["summary"] == {"vms": 7, "canMove": 2, "stay": 5, "moved": 1,
                              "reasons": {"UNKNOWN_VM": 2, "HOST_BOUND_DEVICE": 1,
                                          "OPERATOR_PIN": 1, "UNKNOWN_DEVICE_KIND": 1}}
    assert list(out["summary"]["reasons"]) == ["UNKNOWN_VM", "HOST_BOUND_DEVICE",
                                               "OPERATOR_PIN", "UNKNOWN_DEVICE_KIND"]


def test_impact_uses_the_workers_policy(cache_env):
    """policy.allow.unknown.vm lets an unknown VM move, as the worker would;
    a malformed entry stays vetoed whatever it says; device.kinds reclassifies
    kinds."""
    env = cache_env
    host, _, v = _every_kind(env)
    out = json.loads(_impact(env, host, "--json", "--set",
                             "policy.allow.unknown.vm=true").stdout)
    by_vm = {e["vmUuid"]: e for e in out["vms"]}
    assert by_vm[v["g-unknown"]]["canMove"] is True
    assert by_vm[v["e-malformed"]]["reason"] == "UNKNOWN_VM"
    assert out["summary"]["canMove"] == 3 and out["summary"]["stay"] == 4
    # The site's device kinds (device.kinds) as the worker reads them.
    out = json.loads(_impact(env, host, "--json", "--set",
                             "device.kinds=PCI=migrates, pci+vf=pins").stdout)
    by_vm = {e["vmUuid"]: e for e in out["vms"]}
    assert by_vm[v["d-kind"]]["canMove"] is True
    assert by_vm[v["a-move"]]["reason"] == "HOST_BOUND_DEVICE"
    assert by_vm[v["a-move"]]["devices"] == [{"deviceUuid": "nic-1", "kind": "pci+vf"}]
    # Over the device limit: malformed, so UNKNOWN_VM.
    out = json.loads(_impact(env, host, "--json", "--set",
                             "redis.max.devices.per.vm=2").stdout)
    by_vm = {e["vmUuid"]: e for e in out["vms"]}
    assert by_vm[v["b-dgpu"]]["reason"] == "UNKNOWN_VM"


def test_impact_large_host(cache_env):
    """More VMs than one SSCAN step and one lookup chunk: every VM once, in
    order, decided."""
    env = cache_env
    host, tag, n = "h-" + uid(), uid()[:8], 2500
    vms = [f"{tag}-{i:05d}" for i in range(n)]
    p = env.redis.pipeline(transaction=False)
    for i, vm in enumerate(vms):
        p.set(f"pinguard:vm:{{{vm}}}:host", host)
        if i % 2:
            p.hset(f"pinguard:vm:{{{vm}}}:devices", "gpu", "dgpu")
    p.execute()
    _index(env, host, *vms)
    lines = _impact(env, host).stdout.decode().splitlines()
    assert lines[-1] == (f"host {host}: {n} VMs, {n // 2} can move, {n // 2} stay: "
                         f"{n // 2} HOST_BOUND_DEVICE")
    assert [ln.split("  ")[0] for ln in lines[:-1]] == vms
    assert lines[1] == f"{vms[1]}  stays  HOST_BOUND_DEVICE  gpu(dgpu)"


def test_impact_empty_host_usage_and_errors(cache_env):
    env = cache_env
    host = "h-" + uid()
    assert _impact(env, host).stdout.decode() == f"host {host}: 0 VMs, 0 can move, 0 stay\n"
    out = json.loads(_impact(env, host, "--json").stdout)
    assert out == {"host": host, "vms": [], "moved": [],
                   "summary": {"vms": 0, "canMove": 0, "stay": 0, "moved": 0, "reasons": {}}}
    assert run_cli("impact").returncode == 2
    assert run_cli("impact", "a", "b").returncode == 2
    assert run_cli("impact", "").returncode == 2
    p = run_cli("impact", host, "--set", "redis.port=1", check=1)
    assert b"redis 127.0.0.1:1" in p.stderr
    # An index key that is not a set is a runtime error, named.
    env.hosts.add(host)
    env.redis.set(f"pinguard:host:{{{host}}}:vms", "x")
    p = _impact(env, host, check=1)
    assert b"WRONGTYPE" in p.stderr


# --- publish -----------------------------------------------------------------

def _publish(env, *args, input=None, check=None):
    return run_cli("publish", *_settings(env), *args, input=input, check=check)


def _feed_size(env):
    """Records on the test's feed topic (the sum of its end offsets); a topic
    just created may not have its leaders yet, so asked until it answers."""
    def ask():
        try:
            return [sum(env.high_watermarks("bindings").values())]
        except KafkaException:
            return None
    return wait_until(ask, 30, "the feed's end offsets")[0]


def _lines(*objs):
    return ("\n".join(o if isinstance(o, str) else json.dumps(o) for o in objs) + "\n").encode()


def _good(vm, **kw):
    rec = {"vmUuid": vm, "hostUuid": "h1", "devices": [{"deviceUuid": "d1", "kind": "dgpu"}],
           "generation": 1}
    rec.update(kw)
    return rec


# Each line is refused, with a word of the reason; a line that is fine on its
# own may still be refused under the settings given with it.
BAD = [
    ("not json", "not a JSON object"),
    ({"hostUuid": "h1", "devices": [], "generation": 1}, "missing vmUuid"),
    (_good("v", color="red"), "has no field color"),
    (_good("v", hostUuid=""), "hostUuid is empty"),
    (_good("v", devices=[{"deviceUuid": "d", "kind": "pci"}] * 2), "d is listed twice"),
    (_good("v", devices=[{"deviceUuid": "d", "kind": ""}]), "kind"),
    (_good("v", devices=[{"deviceUuid": "d"}]), "missing field kind"),
    (_good("v", generation=-1), "negative"),
    (_good("v", generation="7"), "generation"),
    ({"vmUuid": "v", "hostUuid": "h1", "devices": []}, "missing field generation"),
    (_good("v\u0000x"), "the key (vmUuid) holds a NUL byte"),
    (_good(""), "the key (vmUuid) is empty"),
    ({"vmUuid": "v", "tombstone": False}, "tombstone must be true"),
    ({"vmUuid": "v", "tombstone": True, "generation": 3}, "a tombstone has no field"),
    ({"vmUuid": "", "tombstone": True}, "is empty"),
]


def test_publish_refuses_a_file_with_bad_lines(cache_env, tmp_path):
    """Every line is checked before anything is published; ten are named, all
    are counted, and the topic stays empty."""
    env = cache_env
    good = _good(uid())
    f = tmp_path / "feed.jsonl"
    f.write_bytes(_lines(good, *[b for b, _ in BAD], good))
    p = _publish(env, str(f), check=1)
    err = p.stderr.decode()
    named = [ln for ln in err.splitlines() if re.match(f"pinguard: publish {f}:[0-9]", ln)]
    assert len(named) == 10, err
    for i, (line, (_, why)) in enumerate(zip(named, BAD)):
        assert line.startswith(f"pinguard: publish {f}:{i + 2}: "), line
        assert why in line, (why, line)
    assert (f"{len(BAD)} invalid lines (the first is line 2); nothing was published"
            in err), err
    assert p.stdout == b""
    assert _feed_size(env) == 0
    # The rest of the reasons, each on its own.
    for line, why in BAD[10:]:
        p = _publish(env, "-", input=_lines(good, line), check=1)
        assert why in p.stderr.decode() and "line 2" in p.stderr.decode(), p.stderr


@pytest.mark.parametrize("line,settings,why", [
    (_good("v", devices=[{"deviceUuid": f"d{i}", "kind": "pci"} for i in range(3)]),
     ("redis.max.devices.per.vm=2",), "more than redis.max.devices.per.vm (2)"),
    (_good("v" * 41), ("input.max.string.length=40",), "LIMIT_EXCEEDED"),
    (_good("v", hostUuid="h" * 41), ("input.max.string.length=40",), "LIMIT_EXCEEDED"),
], ids=["devices", "long-vm", "long-host"])
def test_publish_applies_the_limits_of_the_settings(cache_env, line, settings, why):
    env = cache_env
    args = ["-"]
    for s in settings:
        args += ["--set", s]
    p = _publish(env, *args, input=_lines(line), check=1)
    assert why in p.stderr.decode(), p.stderr
    assert _feed_size(env) == 0


def test_publish_then_read_back(cache_env):
    """From stdin: records (updatedAtMs given or now, hostUuid null, no
    devices) and a tombstone, each keyed by its vmUuid, decoded field by field."""
    env = cache_env
    a, b, c = uid(), uid(), uid()
    env.vms.update((a, b, c))
    lines = _lines(
        {"vmUuid": a, "hostUuid": "host-1",
         "devices": [{"deviceUuid": "gpu-1", "kind": "dgpu"},
                     {"deviceUuid": "nic-1", "kind": "pci+vf"}],
         "generation": 42, "updatedAtMs": 1732580000789},
        "",
        {"vmUuid": b, "hostUuid": None, "devices": [], "generation": 9223372036854775807},
        {"vmUuid": c, "devices": [{"deviceUuid": "u1", "kind": "usb"}], "generation": 0},
        {"vmUuid": a, "tombstone": True})
    t0 = now_ms()
    p = _publish(env, "-", input=lines, check=0)
    t1 = now_ms()
    topic = env.topics["bindings"]
    assert p.stdout.decode() == f"published 4 records (1 tombstones) to {topic}\n"
    msgs = env.read_all("bindings")
    assert len(msgs) == 4
    by_key = {}
    for m in msgs:
        by_key.setdefault(m.key().decode(), []).append(m)
    assert set(by_key) == {a, b, c}
    # One VM's records keep their order (one key, one partition).
    first, tomb = sorted(by_key[a], key=lambda m: m.offset())
    assert tomb.value() is None
    name, rec = decode(first.value())
    assert name == "VmBindings"
    assert rec == {"vmUuid": a, "hostUuid": "host-1",
                   "devices": [{"deviceUuid": "gpu-1", "kind": "dgpu"},
                               {"deviceUuid": "nic-1", "kind": "pci+vf"}],
                   "generation": 42, "updatedAtMs": 1732580000789}
    _, rec = decode(by_key[b][0].value())
    assert rec["vmUuid"] == b and rec["hostUuid"] is None and rec["devices"] == []
    assert rec["generation"] == 9223372036854775807
    assert t0 <= rec["updatedAtMs"] <= t1  # default: now
    _, rec = decode(by_key[c][0].value())
    assert rec["hostUuid"] is None  # left out: the schema's default
    assert rec["devices"] == [{"deviceUuid": "u1", "kind": "usb"}] and rec["generation"] == 0
    # Publishing writes the feed only, never the cache.
    assert env.redis.exists(f"pinguard:vm:{{{b}}}:generation") == 0


def test_publish_counts_what_the_broker_refused(cache_env, tmp_path):
    """A record the broker refuses (over the topic's max.message.bytes): exit
    1, saying how many of how many were acknowledged."""
    env = cache_env
    topic = f"it.{env.tag}.small"
    fs = env.admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1,
                                           config={"max.message.bytes": "400"})])
    for fut in fs.values():
        fut.result()
    try:
        wait_until(lambda: topic in env.admin.list_topics(timeout=10).topics, 30,
                   "the topic")
        big = _good(uid(), devices=[{"deviceUuid": f"dev-{i:04d}", "kind": "pci"}
                                    for i in range(60)])
        f = tmp_path / "feed.jsonl"
        f.write_bytes(_lines(_good(uid()), big))
        # One record per request, so that the broker refuses the big one alone.
        p = _publish(env, str(f), "--set", f"topic.bindings={topic}", "-X",
                     "batch.num.messages=1", check=1)
    finally:
        for fut in env.admin.delete_topics([topic], operation_timeout=30).values():
            fut.result()
    err = p.stderr.decode()
    assert "the broker acknowledged 1 of 2 records (1 failed, 0 unanswered)" in err, err
    assert p.stdout == b""


def test_publish_usage_and_missing_topic(cache_env):
    env = cache_env
    assert run_cli("publish").returncode == 2
    assert run_cli("publish", "a", "b").returncode == 2
    p = run_cli("publish", "/nonexistent/feed.jsonl", check=1)
    assert b"No such file" in p.stderr
    missing = f"it.{env.tag}.missing"
    p = _publish(env, "-", "--set", f"topic.bindings={missing}", input=_lines(_good(uid())),
                 check=1)
    assert f"topic {missing} does not exist".encode() in p.stderr, p.stderr
    # Nothing to publish: no broker is needed, and it says so.
    p = _publish(env, "-", "--set", "kafka.bootstrap.servers=127.0.0.1:1", input=b"\n",
                 check=0)
    assert p.stdout.decode() == f"published 0 records (0 tombstones) to {env.topics['bindings']}\n"
