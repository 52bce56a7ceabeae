# SPDX-License-Identifier: Apache-2.0
"""Quarantine, pins with expiry, site device kinds and the audit trail (SPEC
"Quarantine (v2)", "Operator pins with expiry, and the audit trail (v2)"), on
real Kafka and Redis: FAILED results quarantine a VM for DRS but not for HA,
replayed results (produced again, or consumed again after a SIGKILL) change
nothing, the back-off doubles, caps and resets, a SUCCEEDED result and
`pinguard unquarantine` lift it, a pin `--for 2s` expires, device.kinds
decides site kinds, and every CLI edit and quarantine change is on the
test's audit topic with its actor, read back with fastavro and with
`pinguard audit`."""

import json
import re
import signal

import pytest

from pgtest import (Env, decode, encode, now_ms, run_cli, uid, wait_until)

SRC, DST = uid(), uid()
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (\S+) ([A-Z]+) (\S+) (.*)$")


@pytest.fixture
def eos_env():
    """One delivery mode, for what the mode cannot change (rules kept in
    Redis and in the policy)."""
    e = Env()
    yield e
    e.close()


def key(vm, part):
    return f"pinguard:vm:{{{vm}}}:{part}"


_last_finished = [0]


def result(vm, outcome="FAILED", rid=None):
    """A MigrationResult; each finishes a millisecond or more after the one
    before (failures are ordered by finishedAtMs)."""
    failed = outcome == "FAILED"
    _last_finished[0] = max(now_ms(), _last_finished[0] + 1)
    return {"requestId": rid or uid(), "vmUuid": vm, "srcHostUuid": SRC,
            "dstHostUuid": DST, "outcome": outcome,
            "observedHostUuid": None if failed else DST,
            "error": "migration aborted" if failed else None,
            "finishedAtMs": _last_finished[0]}


def request(vm, origin):
    return {"requestId": uid(), "vmUuid": vm, "srcHostUuid": SRC, "dstHostUuid": DST,
            "origin": origin, "requestedAtMs": now_ms()}


def cli(env, *args, settings=(), env_vars=None, check=None):
    """pinguard with this test's audit topic (and more settings)."""
    sets = []
    for s in (f"topic.audit={env.topics['audit']}",) + tuple(settings):
        sets += ["--set", s]
    return run_cli(*args, *sets, env=env_vars, check=check)


def explain(env, vm, *settings):
    return json.loads(cli(env, "explain", vm, "--json", settings=settings, check=0).stdout)


class Flow:
    """Inputs of one test and their decisions, read back by id."""

    def __init__(self, env):
        self.env = env
        self.sent = {"decisions": 0, "release": 0, "advice.filtered": 0}

    def results(self, *results):
        for r in results:
            self.env.produce("results", r["vmUuid"], encode("MigrationResult", r))
        self.env.flush()
        self.sent["release"] += len(results)
        return self.decided("release", [r["requestId"] for r in results])

    def requests(self, *reqs):
        for r in reqs:
            self.env.produce("requests", r["vmUuid"], encode("MigrateVmRequest", r))
        self.env.flush()
        self.sent["decisions"] += len(reqs)
        return self.decided("decisions", [r["requestId"] for r in reqs])

    def advice(self, *vms):
        adv = {"adviceId": uid(), "clusterUuid": uid(), "generatedAtMs": now_ms(),
               "migrations": [{"vmUuid": vm, "srcHostUuid": SRC, "dstHostUuid": DST,
                               "score": None} for vm in vms]}
        self.env.produce("advice", adv["clusterUuid"], encode("DrsAdvice", adv))
        self.env.flush()
        self.sent["advice.filtered"] += 1
        return self.decided("advice.filtered", [adv["adviceId"]], "adviceId")[0]

    def decided(self, topic_key, ids, field="requestId"):
        """The latest decision of each id, once every input sent to the topic
        has one (a redelivery may add more)."""
        by_id = {}
        for _, d in self.env.decisions(topic_key, self.sent[topic_key]):
            by_id[d[field]] = d
        missing = [i for i in ids if i not in by_id]
        assert not missing, f"{topic_key}: no decision for {missing}"
        return [by_id[i] for i in ids]


def audit_events(env):
    """The test's audit topic read with fastavro (read_committed)."""
    out = []
    for m in env.read_all("audit"):
        name, rec = decode(m.value())
        assert name == "AuditEvent"
        out.append((m, rec))
    return out


def audit_cli(env, *args):
    """`pinguard audit ... --json` on the test's topic: the events, oldest first."""
    p = cli(env, "audit", *args, "--json", check=0)
    return [json.loads(line) for line in p.stdout.decode().splitlines()]


def quarantine_state(env, vm):
    return (env.redis.zrange(key(vm, "failures"), 0, -1, withscores=True),
            env.redis.get(key(vm, "quarantine")), env.redis.pttl(key(vm, "quarantine")))


def quarantine(env, flow, vm):
    """Three FAILED results: the VM is quarantined once they are decided."""
    fails = [result(vm) for _ in range(3)]
    flow.results(*fails[:2])
    assert not env.redis.exists(key(vm, "quarantine")), "quarantined after 2 of 3 failures"
    flow.results(fails[2])
    wait_until(lambda: env.redis.exists(key(vm, "quarantine")), 30, "the quarantine")
    return fails


def test_failures_quarantine_drs_but_not_ha_and_replays_change_nothing(env):
    vm = env.vm(host=SRC, devices=[("n1", "pci+vf")])
    flow = Flow(env)
    w = env.worker()
    fails = quarantine(env, flow, vm)
    rids = [f["requestId"] for f in fails]

    drs, ha, api = request(vm, "DRS"), request(vm, "HA"), request(vm, "API")
    d_drs, d_ha, d_api = flow.requests(drs, ha, api)
    assert (d_drs["verdict"], d_drs["reason"], d_drs["devices"]) == ("VETOED", "QUARANTINED", [])
    assert (d_ha["verdict"], d_ha["reason"]) == ("APPROVED", None), d_ha
    assert (d_api["verdict"], d_api["reason"]) == ("APPROVED", None), d_api
    adv = flow.advice(vm)
    assert adv["approved"] == [] and [v["reason"] for v in adv["vetoed"]] == ["QUARANTINED"]

    # What operators see.
    out = explain(env, vm)
    q = out["quarantine"]
    assert (out["verdict"], out["reason"], out["hostBound"]) == ("VETOED", "QUARANTINED", False)
    assert q["quarantined"] and q["durationMs"] == 600000 and q["backoffLastMs"] == 600000
    assert 0 < q["expiresInMs"] <= 600000 and q["blocks"] == ["DRS"]
    assert q["failuresInWindow"] == 3 and [f["requestId"] for f in q["failures"]] == rids
    assert [f["finishedAtMs"] for f in q["failures"]] == [f["finishedAtMs"] for f in fails]
    assert q["startedBy"] == rids[2] and q["liftedBy"] is None
    assert out["keyTypes"]["failures"] == "zset" and out["keyTypes"]["quarantine"] == "string"
    text = cli(env, "explain", vm, check=0).stdout.decode()
    assert f"vm {vm}: QUARANTINED, migrations from DRS are vetoed (QUARANTINED)" in text
    assert "failed migrations within 1h: 3" in text and all(r in text for r in rids)
    assert "back-off: the last quarantine lasted 10m; the next would last 20m" in text

    # The worker's audit event, in `pinguard audit` too.
    events = [e for e in audit_cli(env, vm) if e["action"] == "QUARANTINE"]
    assert [e["eventId"] for e in events] == [f"quarantine:{rids[2]}"], events
    assert events[0]["actor"] == "pinguard" and events[0]["vmUuid"] == {"string": vm}
    assert "quarantined for 600000 ms" in events[0]["detail"]
    lines = cli(env, "audit", vm, check=0).stdout.decode().splitlines()
    m = LINE.match(lines[-1])
    assert m and m.groups()[:3] == ("pinguard", "QUARANTINE", vm), lines

    # The same three results again: nothing moves, the quarantine is not
    # restarted (its end and expiry stay), no other quarantine is audited.
    before = quarantine_state(env, vm)
    flow.results(*fails)
    after = quarantine_state(env, vm)
    assert after[0] == before[0] and len(after[0]) == 3
    assert after[1] == before[1] and 0 < after[2] <= before[2]
    ids = {r["eventId"] for _, r in audit_events(env) if r["action"] == "QUARANTINE"}
    assert ids == {f"quarantine:{rids[2]}"}
    assert (flow.requests(request(vm, "DRS"))[0]["reason"]) == "QUARANTINED"
    wait_until(lambda: w.metric("pinguard_quarantines_started_total") >= 1, 30,
               "the quarantine counted")
    assert w.stop() == 0


def test_results_consumed_again_after_sigkill_change_nothing():
    """At least once with offsets never committed before the kill: the
    restarted worker consumes the same three results again, for certain."""
    env = Env(delivery="at-least-once")
    try:
        vm = env.vm(host=SRC)
        flow = Flow(env)
        settings = ("kafka.auto.commit.interval.ms=600000", "kafka.session.timeout.ms=6000",
                    "kafka.heartbeat.interval.ms=500")
        w = env.worker(*settings)
        fails = quarantine(env, flow, vm)
        before = quarantine_state(env, vm)
        assert w.stop(signal.SIGKILL) == -signal.SIGKILL
        assert all(o < 0 for o in env.committed("results").values()), "offsets committed"
        w2 = env.worker(*settings)
        flow.sent["release"] += 3  # the three again, from the same offsets
        flow.decided("release", [f["requestId"] for f in fails])
        after = quarantine_state(env, vm)
        assert after[0] == before[0] and after[1] == before[1] and 0 < after[2] <= before[2]
        ids = [r["eventId"] for _, r in audit_events(env) if r["action"] == "QUARANTINE"]
        assert set(ids) == {f"quarantine:{fails[2]['requestId']}"} and len(ids) == 2, ids
        # Written twice, shown once.
        assert [e["eventId"] for e in audit_cli(env, vm)] == ids[:1]
        assert w2.stop() == 0
    finally:
        env.close()


def test_backoff_doubles_caps_and_resets(eos_env):
    env = eos_env
    vm = env.vm(host=SRC)
    flow = Flow(env)
    # A window short enough that the failures of the last round have left it
    # once the back-off is forgotten (quarantine.max.ms after it ended).
    w = env.worker("quarantine.base.ms=1000", "quarantine.max.ms=3000",
                   "quarantine.window.ms=5000")
    durations = []
    for want in (1000, 2000, 3000, 3000):
        fails = [result(vm) for _ in range(3)]
        flow.results(*fails)
        wait_until(lambda: env.redis.hget(key(vm, "backoff"), "started_by")
                   == fails[2]["requestId"], 30, f"a quarantine of {want} ms")
        durations.append(int(env.redis.hget(key(vm, "backoff"), "last")))
        # The next round once this one has expired (Redis removes the key).
        wait_until(lambda: not env.redis.exists(key(vm, "quarantine")), 10 + want / 1000,
                   "the quarantine to expire")
    assert durations == [1000, 2000, 3000, 3000]
    # No quarantine for quarantine.max.ms after the last: the back-off is
    # forgotten, the next one is the base again.
    wait_until(lambda: not env.redis.exists(key(vm, "backoff")), 15, "the back-off to expire")
    fails = [result(vm) for _ in range(3)]
    flow.results(*fails)
    wait_until(lambda: env.redis.hget(key(vm, "backoff"), "started_by")
               == fails[2]["requestId"], 30, "a quarantine after the back-off expired")
    assert env.redis.hget(key(vm, "backoff"), "last") == "1000"
    details = [r["detail"] for _, r in sorted(audit_events(env), key=lambda e: e[1]["atMs"])
               if r["action"] == "QUARANTINE"]
    assert [re.search(r"quarantined for (\d+) ms", d).group(1) for d in details] == \
        ["1000", "2000", "3000", "3000", "1000"], details
    assert w.stop() == 0


def test_success_lifts_the_quarantine(env):
    vm = env.vm(host=SRC, devices=[("n1", "pci+vf")])
    flow = Flow(env)
    w = env.worker()
    quarantine(env, flow, vm)
    ok = result(vm, "SUCCEEDED")
    (rel,) = flow.results(ok)
    assert rel["outcome"] == "SUCCEEDED"
    wait_until(lambda: not env.redis.exists(key(vm, "quarantine"), key(vm, "failures")), 30,
               "the quarantine lifted")
    assert env.redis.hgetall(key(vm, "backoff")) == {"lifted_by": ok["requestId"]}
    (d,) = flow.requests(request(vm, "DRS"))
    assert (d["verdict"], d["reason"]) == ("APPROVED", None), d
    lifted = [r for _, r in audit_events(env) if r["action"] == "UNQUARANTINE"]
    assert [r["eventId"] for r in lifted] == [f"unquarantine:{ok['requestId']}"]
    assert lifted[0]["actor"] == "pinguard" and ok["requestId"] in lifted[0]["detail"]
    assert not explain(env, vm)["quarantine"]["quarantined"]
    wait_until(lambda: w.metric("pinguard_quarantines_lifted_total") >= 1, 30,
               "the lift counted")
    assert w.stop() == 0


def test_many_results_per_batch_across_script_chunks(env):
    """A burst of results over many VMs, decided in batches that the notes
    split into scripts of 3 (redis.lookup.chunk=3): a VM's notes fall in one
    script or across two, and each script notes in order. Every VM ends as
    its own sequence says; a success with nothing to clear writes nothing."""
    patterns = {"FFF": "quarantined", "FFSF": "one failure", "SS": "clean",
                "FFFS": "lifted", "S": "clean"}
    vms = {p: [env.vm(host=SRC, devices=[("n1", "pci+vf")]) for _ in range(12)]
           for p in patterns}
    seqs = {vm: [result(vm, "FAILED" if c == "F" else "SUCCEEDED") for c in p]
            for p, group in vms.items() for vm in group}
    burst, depth = [], max(len(p) for p in patterns)
    for i in range(depth):  # the VMs interleaved; each VM's results in order
        burst += [seq[i] for seq in seqs.values() if i < len(seq)]
    w = env.worker("redis.lookup.chunk=3")
    flow = Flow(env)
    decided = flow.results(*burst)
    assert len(decided) == len(burst) == 12 * sum(len(p) for p in patterns)
    for p, group in vms.items():
        for vm in group:
            fails, q = quarantine_state(env, vm)[:2]
            backoff = env.redis.hgetall(key(vm, "backoff"))
            if patterns[p] == "quarantined":
                assert len(fails) == 3 and q is not None, (p, vm)
                assert backoff["started_by"] == seqs[vm][2]["requestId"], (p, backoff)
            elif patterns[p] == "one failure":
                assert [f[0] for f in fails] == [seqs[vm][3]["requestId"]] and q is None
                assert backoff == {}, (p, backoff)
            elif patterns[p] == "lifted":
                assert fails == [] and q is None, (p, vm)
                assert backoff == {"lifted_by": seqs[vm][3]["requestId"]}, (p, backoff)
            else:
                assert fails == [] and q is None and backoff == {}, (p, vm)
    wait_until(lambda: w.metric("pinguard_quarantines_started_total") == 24, 30,
               "24 quarantines counted")
    assert w.metric("pinguard_quarantines_lifted_total") == 12
    assert w.stop() == 0


@pytest.mark.parametrize("junk", [{"last": "x"}, {"since": "y"}, {"last": "", "since": "x"}],
                         ids=["last", "since", "both"])
def test_junk_backoff_fields_neither_stall_nor_block(eos_env, junk):
    """A :backoff hash whose fields are no numbers (written by hand, or by an
    older tool) reads as no back-off: the results are decided, the partition
    moves on, and three failures still quarantine. A :failures key of another
    type is a data error of that VM: its results are decided, not counted."""
    env = eos_env
    vm = env.vm(host=SRC, devices=[("n1", "pci+vf")])
    env.redis.hset(key(vm, "backoff"), mapping=junk)
    flow = Flow(env)
    w = env.worker()
    quarantine(env, flow, vm)
    (d,) = flow.requests(request(vm, "DRS"))
    assert (d["verdict"], d["reason"]) == ("VETOED", "QUARANTINED"), d
    other = env.vm(host=SRC, devices=[("n2", "pci+vf")])
    env.redis.set(key(other, "failures"), "not a zset")
    rels = flow.results(*[result(other) for _ in range(3)])
    assert [r["action"] for r in rels] == ["KEEP"] * 3
    assert not env.redis.exists(key(other, "quarantine"))
    assert env.redis.get(key(other, "failures")) == "not a zset"
    w.wait_log("quarantine_keys_malformed")
    assert w.stop() == 0


def test_unquarantine_lifts_it(eos_env):
    env = eos_env
    vm = env.vm(host=SRC)
    flow = Flow(env)
    w = env.worker()
    quarantine(env, flow, vm)
    p = cli(env, "unquarantine", vm, "--actor", "alice", check=0)
    assert f"vm {vm}: quarantine lifted" in p.stdout.decode()
    assert "its 3 failures and back-off cleared" in p.stdout.decode()
    for part in ("quarantine", "failures", "backoff"):
        assert not env.redis.exists(key(vm, part)), part
    (d,) = flow.requests(request(vm, "DRS"))
    assert (d["verdict"], d["reason"]) == ("APPROVED", None), d
    p = cli(env, "unquarantine", vm, env_vars={"USER": "dave", "SUDO_USER": ""}, check=0)
    assert f"vm {vm} was not quarantined" in p.stdout.decode()
    events = [e for e in audit_cli(env, vm) if e["action"] == "UNQUARANTINE"]
    assert [e["actor"] for e in events] == ["alice", "dave"], events
    assert events[0]["detail"].startswith("quarantine lifted (")
    assert events[1]["detail"].startswith("was not quarantined")
    assert w.stop() == 0


def test_pin_for_two_seconds(eos_env):
    env = eos_env
    vm = env.vm(host=SRC, devices=[("n1", "pci+vf")])
    flow = Flow(env)
    w = env.worker()
    cli(env, "pin", vm, "maintenance", "window", "--for", "2s", check=0)
    out = explain(env, vm)
    assert out["pin"] == "maintenance window" and 0 < out["pinExpiresInMs"] <= 2000
    assert "(expires in " in cli(env, "explain", vm, check=0).stdout.decode()
    (d,) = flow.requests(request(vm, "API"))
    assert (d["verdict"], d["reason"]) == ("VETOED", "OPERATOR_PIN"), d
    # Redis expires the pin: the wait is for the expiry itself.
    wait_until(lambda: not env.redis.exists(key(vm, "pin")), 10, "the pin to expire")
    (d,) = flow.requests(request(vm, "API"))
    assert (d["verdict"], d["reason"]) == ("APPROVED", None), d
    assert explain(env, vm)["pinExpiresInMs"] is None
    # A pin without --for has no expiry, even over one that had.
    cli(env, "pin", vm, "licence", "--for", "1h", check=0)
    assert 3500000 < env.redis.pttl(key(vm, "pin")) <= 3600000
    cli(env, "pin", vm, "licence", "dongle", check=0)
    assert env.redis.pttl(key(vm, "pin")) == -1
    out = explain(env, vm)
    assert out["pin"] == "licence dongle" and out["pinExpiresInMs"] is None
    assert "operator pin: licence dongle (no expiry)" in \
        cli(env, "explain", vm, check=0).stdout.decode()
    pins = [r["detail"] for _, r in sorted(audit_events(env), key=lambda e: e[1]["atMs"])
            if r["action"] == "PIN"]
    assert pins == ["pinned: maintenance window (expires in 2000 ms)",
                    "pinned: licence (expires in 3600000 ms)",
                    "pinned: licence dongle (no expiry)"]
    assert w.stop() == 0


def test_site_kinds(eos_env):
    env = eos_env
    kinds = "device.kinds=gpu-vf=pins, nvme-migratable=migrates, pci=migrates"
    nvme = env.vm(host=SRC, devices=[("s1", "nvme-migratable"), ("n1", "pci+vf")])
    vgpu = env.vm(host=SRC, devices=[("g1", "gpu-vf"), ("n1", "pci+vf")])
    pci = env.vm(host=SRC, devices=[("p1", "pci")])
    odd = env.vm(host=SRC, devices=[("x1", "fpga")])
    flow = Flow(env)
    w = env.worker(kinds)
    got = flow.requests(*(request(vm, "API") for vm in (nvme, vgpu, pci, odd)))
    assert [(d["verdict"], d["reason"]) for d in got] == [
        ("APPROVED", None), ("VETOED", "HOST_BOUND_DEVICE"), ("APPROVED", None),
        ("VETOED", "UNKNOWN_DEVICE_KIND")]
    assert got[1]["devices"] == [{"deviceUuid": "g1", "kind": "gpu-vf"}]
    # explain says which rule classified each device, with and without it.
    rules = {d["deviceUuid"]: (d["rule"], d["pins"]) for d in explain(env, vgpu, kinds)["devices"]}
    assert rules == {"g1": ("site", True), "n1": ("built-in", False)}
    assert explain(env, pci, kinds)["devices"][0]["rule"] == "site"
    assert explain(env, pci)["devices"][0]["rule"] == "built-in"
    assert explain(env, nvme)["devices"][1] == {"deviceUuid": "s1", "kind": "nvme-migratable",
                                                 "pins": True, "rule": "none"}
    text = cli(env, "explain", nvme, settings=(kinds,), check=0).stdout.decode()
    assert "migrates (site: device.kinds)" in text
    # bind: a declared kind is no surprise; one declared nowhere is warned of.
    vm = env.vm(host=SRC)
    p = cli(env, "bind", vm, "g2", "gpu-vf", settings=(kinds,), check=0)
    assert b"warning" not in p.stderr
    p = cli(env, "bind", vm, "g3", "gpu-vf", check=0)
    assert b"neither built in nor declared in device.kinds" in p.stderr
    assert w.stop() == 0


def test_explain_lists_at_most_20_failures(cache_env):
    """The window is counted back from now; the newest 20 of its failures
    are listed, oldest first; older ones are counted out of it."""
    env = cache_env
    vm = env.vm(host=SRC)
    now = now_ms()
    env.redis.zadd(key(vm, "failures"), {f"r-{i:02d}": now - 60000 + i for i in range(25)})
    env.redis.zadd(key(vm, "failures"), {"old": now - 3 * 3600000})
    q = explain(env, vm)["quarantine"]
    assert (q["failuresInWindow"], q["failuresTotal"], q["quarantined"]) == (25, 26, False)
    assert [f["requestId"] for f in q["failures"]] == [f"r-{i:02d}" for i in range(5, 25)]
    text = cli(env, "explain", vm, check=0).stdout.decode()
    assert "failed migrations within 1h: 25" in text and "... and 5 earlier" in text
    q = explain(env, vm, "quarantine.window.ms=30000")["quarantine"]
    assert q["failuresInWindow"] == 0 and q["failures"] == []


def test_audit_trail_of_every_edit(cache_env, tmp_path):
    env = cache_env
    vm, other = uid(), uid()
    env.vms.update((vm, other))
    bob = {"USER": "bob", "SUDO_USER": ""}
    alice = ("--actor", "alice")
    cli(env, "place", vm, "h1", *alice, check=0)
    cli(env, "bind", vm, "d1", "dgpu", env_vars=bob, check=0)
    cli(env, "bind", vm, "d2", "pci+vf", *alice, check=0)
    cli(env, "unbind", vm, "d2", env_vars={"USER": "root", "SUDO_USER": "carol"}, check=0)
    cli(env, "pin", vm, "maintenance", "window", "--for", "2h", *alice, check=0)
    cli(env, "unpin", vm, env_vars=bob, check=0)
    cli(env, "unquarantine", vm, *alice, check=0)
    f = tmp_path / "vms.jsonl"
    f.write_text("\n".join(json.dumps({"vmUuid": v, "hostUuid": "h2"}) for v in (vm, other)))
    cli(env, "import", str(f), *alice, check=0)

    want = [("PLACE", "alice", vm, "placed on h1"),
            ("BIND", "bob", vm, "bound d1 (dgpu, built-in: pins)"),
            ("BIND", "alice", vm, "bound d2 (pci+vf, built-in: migrates)"),
            ("UNBIND", "carol", vm, "unbound d2"),
            ("PIN", "alice", vm, "pinned: maintenance window (expires in 7200000 ms)"),
            ("UNPIN", "bob", vm, "unpinned"),
            ("UNQUARANTINE", "alice", vm, "was not quarantined; its 0 failures and "
                                          "back-off cleared"),
            ("IMPORT", "alice", None, f"imported 2 VMs (0 devices, 0 pins) from {f}")]
    # As fastavro reads the topic: keyed by the VM, in order within it.
    got = sorted(audit_events(env), key=lambda e: e[1]["atMs"])
    assert [(r["action"], r["actor"], r["vmUuid"], r["detail"]) for _, r in got] == want
    assert all(m.key() == (vm.encode() if r["vmUuid"] else None) for m, r in got)
    assert len({r["eventId"] for _, r in got}) == len(want)
    assert all(UUID4.match(r["eventId"]) for _, r in got)
    assert all(abs(r["atMs"] - m.timestamp()[1]) < 5000 for m, r in got)

    # As `pinguard audit` shows it: oldest first, one VM's or every one.
    js = audit_cli(env)
    assert [(e["action"], e["actor"], e["vmUuid"] and e["vmUuid"]["string"], e["detail"])
            for e in js] == want
    assert [e["eventId"] for e in js] == [r["eventId"] for _, r in got]
    lines = cli(env, "audit", vm, check=0).stdout.decode().splitlines()
    parsed = [LINE.match(line).groups() for line in lines]
    assert parsed == [(a, act, v, d) for act, a, v, d in want if v is not None]
    assert cli(env, "audit", "--since", "1ms", check=0).stdout == b""
    assert len(cli(env, "audit", "--since", "1h", check=0).stdout.splitlines()) == len(want)


def test_edit_without_its_audit_record(cache_env):
    """The edit is made and stays; the CLI says its record is missing, and
    exits 1: no such topic, or no broker."""
    env = cache_env
    vm = uid()
    env.vms.add(vm)
    missing = f"it.missing.{uid()}"
    p = run_cli("pin", vm, "licence", "--set", f"topic.audit={missing}", check=1)
    err = p.stderr.decode()
    assert f"vm {vm} was pinned, but its audit record could not be written" in err, err
    assert f"topic {missing} does not exist" in err
    assert env.redis.get(key(vm, "pin")) == "licence"
    p = run_cli("unpin", vm, "-X", "bootstrap.servers=127.0.0.1:1", check=1)
    assert f"vm {vm} was unpinned, but its audit record could not be written" in \
        p.stderr.decode()
    assert not env.redis.exists(key(vm, "pin"))
    p = run_cli("audit", "--set", f"topic.audit={missing}", check=1)
    assert b"does not exist" in p.stderr


@pytest.mark.no_services
@pytest.mark.parametrize("args", [
    ("pin", "v", "r", "--for", "0"), ("pin", "v", "r", "--for", "0s"),
    ("pin", "v", "r", "--for", "-5s"), ("pin", "v", "r", "--for", "2 h"),
    ("pin", "v", "r", "--for", "1.5h"), ("pin", "v", "r", "--for", "2w"),
    ("pin", "v", "r", "--for", "h"), ("pin", "v", "r", "--for", ""),
    ("pin", "v", "r", "--for", "36501d"), ("pin", "v", "r", "--for", "99999999999999999999ms"),
    ("pin", "v", "r", "--for"), ("place", "v", "h", "--for", "2s"),
    ("audit", "--since", "soon"), ("explain", "v", "--actor", "a"),
    ("pin", "v", "r", "--actor", ""), ("unquarantine",), ("unquarantine", "a", "b"),
    ("audit", "a", "b"), ("explain", "v", "--since", "1h"),
], ids=lambda a: " ".join(a))
def test_usage(args):
    p = run_cli(*args)
    assert p.returncode == 2, (p.returncode, p.stderr)


def test_config_rejects_bad_kinds_and_origins():
    for s in ("device.kinds=gpu-vf=sometimes", "device.kinds=a=pins,a=migrates",
              "device.kinds=gpu vf=pins", "quarantine.origins=DRS,drs",
              "quarantine.origins=NOBODY"):
        p = run_cli("run", "--check-config", "--set", s)
        assert p.returncode == 2, (s, p.stderr)
        assert s.split("=", 1)[0].encode() in p.stderr, p.stderr
    p = run_cli("run", "--check-config", "--set", "device.kinds=gpu-vf=pins, x=migrates",
                "--set", "quarantine.origins=DRS, API", check=0)
    assert b"device.kinds = gpu-vf=pins, x=migrates" in p.stdout
