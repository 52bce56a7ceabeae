# SPDX-License-Identifier: Apache-2.0
"""The binding feed (SPEC "Binding feed: the cache as a view of a log"): VmBindings
records on a compacted topic, applied to the cache by `pinguard sync` and
replayed into it by `pinguard sync --rebuild`, on real Kafka and Redis.

Each test has its own feed topic, sync group, VMs and hosts (pgtest.Env). The
expected cache is computed by `Model`, the SPEC's rule applied record by
record in log order: a record replaces a VM's host, devices and generation
only when its generation is greater than the stored one; a tombstone deletes
them; pins and quarantine are never touched; the host index lists each VM
under the host it runs on. Every check compares the cache key by key with it.

Redis outages are made on a redis-server of this module's own (PrivateRedis,
on a free port), never on the shared one; the rebuild simulates a lost cache
by deleting exactly this test's keys (its VMs and hosts share a prefix)."""

import os
import pty
import re
import socket
import subprocess
import tempfile
import time
from collections import Counter

import pytest
import redis

from pgtest import (PINGUARD, TIME_SCALE, WRAPPER, Env, child_env, encode, now_ms, run_cli,
                    uid, wait_until)

SRC, DST = uid(), uid()

# What a rejected feed record is dead-lettered as: the code of its
# pinguard-error header and a word of the detail after it.
DEAD = {
    "garbage": ("BAD_MAGIC", "single-object"),
    "other record": ("UNEXPECTED_RECORD", "MigrateVmRequest"),
    "key names another VM": ("INVALID_FIELD", "another VM"),
    "empty device kind": ("INVALID_FIELD", "kind"),
    "empty host": ("INVALID_FIELD", "hostUuid"),
    "device listed twice": ("INVALID_FIELD", "twice"),
    "negative generation": ("INVALID_FIELD", "generation"),
}

# The last line of a rebuild: applied, stale, tombstones, dead letters, partitions.
SUMMARY = re.compile(r"rebuild: applied (\d+) records \((\d+) stale, (\d+) tombstones"
                     r"(?:, (\d+) dead letters)?\) from (\d+) partitions in [0-9.]+ s")


@pytest.fixture
def feed():
    """A test's own topics, groups and cache entries; `pinguard sync` does
    not depend on the worker's delivery mode, so every test runs once."""
    e = Env()
    yield e
    e.close()


# --- records and the model ---------------------------------------------------

def rec(vm, generation, host=None, devices=()):
    """A VmBindings record; devices as (deviceUuid, kind) pairs or dicts."""
    return {"vmUuid": vm, "hostUuid": host,
            "devices": [d if isinstance(d, dict) else {"deviceUuid": d[0], "kind": d[1]}
                        for d in devices],
            "generation": generation, "updatedAtMs": now_ms()}


def tomb(vm):
    return (vm, None)


class Model:
    """The cache the SPEC says the feed leaves, record by record."""

    def __init__(self):
        self.vms = {}  # vm -> (host or None, {device: kind}, generation)
        self.counts = Counter()

    def apply(self, items):
        for item in items:
            key, value = (item["vmUuid"], item) if isinstance(item, dict) else item
            if value is None:
                self.counts["deleted" if key in self.vms else "absent"] += 1
                self.vms.pop(key, None)
                continue
            old = self.vms.get(key)
            if old is not None and value["generation"] <= old[2]:
                self.counts["stale"] += 1
                continue
            self.counts["applied"] += 1
            devices = {d["deviceUuid"]: d["kind"] for d in value["devices"]}
            self.vms[key] = (value["hostUuid"], devices, value["generation"])
        return self

    def state(self, vm):
        """(host, devices, generation) as the cache should hold them."""
        host, devices, gen = self.vms.get(vm, (None, {}, None))
        return host, devices, None if gen is None else str(gen)

    def host_index(self):
        out = {}
        for vm, (host, _, _) in self.vms.items():
            if host is not None:
                out.setdefault(host, set()).add(vm)
        return out

    def keys(self):
        """Every key the feed's part of the cache consists of, with its value."""
        out = {}
        for vm, (host, devices, gen) in self.vms.items():
            if host is not None:
                out[f"pinguard:vm:{{{vm}}}:host"] = ("string", host)
            if devices:
                out[f"pinguard:vm:{{{vm}}}:devices"] = ("hash", devices)
            out[f"pinguard:vm:{{{vm}}}:generation"] = ("string", str(gen))
        for host, vms in self.host_index().items():
            out[f"pinguard:host:{{{host}}}:vms"] = ("set", vms)
        return out


def state(r, vm):
    p = r.pipeline(transaction=False)
    p.get(f"pinguard:vm:{{{vm}}}:host")
    p.hgetall(f"pinguard:vm:{{{vm}}}:devices")
    p.get(f"pinguard:vm:{{{vm}}}:generation")
    return tuple(p.execute())


def host_vms(r, host):
    return r.smembers(f"pinguard:host:{{{host}}}:vms")


def check_cache(r, model, vms, hosts=()):
    """Each VM's keys and each host's index as the model says, read in
    pipelined chunks; returns nothing, fails naming the first few VMs that
    differ."""
    vms, wrong = list(vms), []
    for i in range(0, len(vms), 5000):
        chunk = vms[i:i + 5000]
        p = r.pipeline(transaction=False)
        for vm in chunk:
            p.get(f"pinguard:vm:{{{vm}}}:host")
            p.hgetall(f"pinguard:vm:{{{vm}}}:devices")
            p.get(f"pinguard:vm:{{{vm}}}:generation")
        got = p.execute()
        for j, vm in enumerate(chunk):
            have, want = tuple(got[3 * j:3 * j + 3]), model.state(vm)
            if have != want:
                wrong.append((vm, have, want))
    assert not wrong, f"{len(wrong)} VMs differ from the model (have, want): {wrong[:3]}"
    index = model.host_index()
    hosts = list(hosts)
    p = r.pipeline(transaction=False)
    for h in hosts:
        p.smembers(f"pinguard:host:{{{h}}}:vms")
    for h, got in zip(hosts, p.execute()):
        assert got == index.get(h, set()), f"host index of {h}: {got} != {index.get(h, set())}"


def snapshot(r, prefix):
    """Every key of the VMs and hosts named `prefix`-..., with its type and value."""
    out = {}
    for pattern in (f"pinguard:vm:{{{prefix}-*", f"pinguard:host:{{{prefix}-*"):
        for k in r.scan_iter(match=pattern, count=1000):
            t = r.type(k)
            read = {"string": r.get, "hash": r.hgetall, "set": r.smembers}.get(t)
            out[k] = (t, read(k) if read else None)
    return out


def lose(r, prefix):
    """A lost cache, for this test's keys only: deletes them, returns how many."""
    n = 0
    for pattern in (f"pinguard:vm:{{{prefix}-*", f"pinguard:host:{{{prefix}-*"):
        ks = list(r.scan_iter(match=pattern, count=1000))
        for i in range(0, len(ks), 1000):
            n += r.delete(*ks[i:i + 1000])
    assert not snapshot(r, prefix)
    return n


# --- the sync process ----------------------------------------------------------

def synced(env, timeout=60):
    """Until the sync group has committed every partition of the feed up to
    its end (offsets are committed only once Redis confirmed the apply)."""
    hw = env.high_watermarks("bindings")

    def done():
        env.check_workers()
        c = env.committed("bindings", group=env.sync_group)
        return all(c[p] >= n for p, n in hw.items() if n > 0)
    wait_until(done, timeout, f"the sync group committed up to {hw}")


def records(s, result):
    return s.metric("pinguard_sync_records_total", result=result)


def counted(s, want):
    """pinguard_sync_records_total by result equals `want` (a Counter)."""
    def same():
        return all(records(s, k) == want.get(k, 0)
                   for k in ("applied", "stale", "deleted", "absent"))
    try:
        wait_until(same, 15, f"records_total = {dict(want)}")
    except AssertionError:
        got = {k: records(s, k) for k in ("applied", "stale", "deleted", "absent")}
        raise AssertionError(f"pinguard_sync_records_total {got} != {dict(want)}") from None


def rebuild_args(env):
    args = [*WRAPPER, PINGUARD, "sync", "--rebuild"]
    for s in env.sync_settings():
        args += ["--set", s]
    return args


def rebuild(env, timeout=120):
    """`pinguard sync --rebuild` to its end (not on a terminal): (rc, output,
    the summary's (applied, stale, tombstones, dead letters, partitions))."""
    p = subprocess.run(rebuild_args(env), capture_output=True, env=child_env(),
                       timeout=timeout * TIME_SCALE)
    out = (p.stdout + p.stderr).decode(errors="replace")
    m = SUMMARY.search(out)
    return p.returncode, out, tuple(int(g or 0) for g in m.groups()) if m else None


class PrivateRedis:
    """A redis-server of this module's own on a free port, stopped and
    started at will; its data survives a stop (saved, then loaded)."""

    def __init__(self, workdir):
        with socket.socket() as sk:
            sk.bind(("127.0.0.1", 0))
            self.port = sk.getsockname()[1]
        self.dir = workdir
        self.proc = None
        self.log = open(os.path.join(workdir, "redis.log"), "a")
        self.client = redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True)
        self.start()

    def _up(self):
        assert self.proc.poll() is None, "the private redis-server exited; see its log"
        try:
            return self.client.ping()
        except redis.ConnectionError:
            return False

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", self.dir,
             "--save", "", "--appendonly", "no", "--protected-mode", "yes"],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_until(self._up, 30, "the private redis-server to answer PING")

    def stop(self):
        self.client.save()
        self.proc.terminate()
        self.proc.wait(30)
        self.client.connection_pool.disconnect()

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


@pytest.fixture
def private_redis():
    with tempfile.TemporaryDirectory(prefix="pg-sync-redis-") as d:
        r = PrivateRedis(d)
        try:
            yield r
        finally:
            r.close()


# --- requests to a worker --------------------------------------------------------

class Requests:
    """MigrateVmRequests to the test's worker and their decisions."""

    def __init__(self, env):
        self.env = env
        self.sent = 0

    def decide(self, vms, min_generation=None):
        """{vm: decision} of one request per VM, sent now."""
        reqs = {}
        for vm in vms:
            mg = min_generation(vm) if callable(min_generation) else min_generation
            reqs[vm] = {"requestId": uid(), "vmUuid": vm, "srcHostUuid": SRC,
                        "dstHostUuid": DST, "origin": "API", "requestedAtMs": now_ms(),
                        "minGeneration": mg}
            self.env.produce("requests", vm, encode("MigrateVmRequest", reqs[vm]))
        self.env.flush()
        self.sent += len(reqs)
        by_id = {d["requestId"]: d for _, d in self.env.decisions("decisions", self.sent)}
        missing = [vm for vm, r in reqs.items() if r["requestId"] not in by_id]
        assert not missing, f"no decision for {missing}"
        return {vm: by_id[r["requestId"]] for vm, r in reqs.items()}

    def one(self, vm, min_generation=None):
        return self.decide([vm], min_generation)[vm]


def verdict(d):
    return (d["verdict"], d["reason"], d["devices"], d["bindingsGeneration"])


PINS, MIGRATE = {"pci", "dgpu", "mdev", "usb"}, {"pci+vf", "pci+vf2", "pci+vdpa"}


def expected_verdict(model, vm):
    """The SPEC's decision for an unfenced request on the model's entry (no
    pins here): UNKNOWN_VM without a host, else the pinning devices."""
    host, devices, gen = model.vms.get(vm, (None, {}, None))
    if host is None:
        return ("VETOED", "UNKNOWN_VM", [], gen)
    pinning = sorted((d, k) for d, k in devices.items() if k not in MIGRATE)
    listed = [{"deviceUuid": d, "kind": k} for d, k in pinning]
    if any(k in PINS for _, k in pinning):
        return ("VETOED", "HOST_BOUND_DEVICE", listed, gen)
    if pinning:
        return ("VETOED", "UNKNOWN_DEVICE_KIND", listed, gen)
    return ("APPROVED", None, [], gen)


# --- the rules of applying ---------------------------------------------------------

def test_apply_rules(feed):
    """One feed, one sync: a record applies only above the stored generation
    (out of order 3 then 2 keeps 3; duplicates and equal generations change
    nothing and are counted stale), a tombstone deletes and a later record
    re-creates, hostUuid null deletes :host, devices are replaced entirely,
    the host index follows the host, and an operator pin and the worker's
    quarantine keys survive every record and tombstone."""
    r = feed.redis
    h1, h2, h3 = uid(), uid(), uid()
    vm = {n: uid() for n in ("order", "dup", "again", "gone", "pin", "pin-gone", "nohost",
                             "devices", "move", "never")}
    # The operator's and the worker's keys, before the feed says anything.
    for name in ("pin", "pin-gone"):
        run_cli("--set", f"topic.audit={feed.topics['audit']}", "pin", vm[name],
                "licence dongle", check=0)
    r.set(f"pinguard:vm:{{{vm['pin-gone']}}}:quarantine", "held")
    r.zadd(f"pinguard:vm:{{{vm['pin-gone']}}}:failures", {"req-1": 1, "req-2": 2})
    items = [
        rec(vm["order"], 3, h1, [("g1", "dgpu")]),
        rec(vm["dup"], 1, h1, [("n1", "pci+vf")]),
        rec(vm["order"], 2, h2, []),  # older, and later: stale
        rec(vm["dup"], 1, h1, [("n1", "pci+vf")]),  # the same again: stale
        rec(vm["dup"], 1, h3, [("x1", "dgpu")]),  # an equal generation: stale
        rec(vm["again"], 1, h1, [("d1", "pci")]),
        tomb(vm["again"]),
        rec(vm["again"], 2, h3, [("u1", "usb")]),  # re-created
        rec(vm["gone"], 4, h1, [("d1", "mdev")]),
        tomb(vm["gone"]),
        rec(vm["pin"], 1, h1, [("n1", "pci+vf")]),
        rec(vm["pin"], 2, h2, []),
        tomb(vm["pin"]),
        rec(vm["pin"], 3, h1, [("g1", "dgpu")]),
        rec(vm["pin-gone"], 1, h1, []),
        tomb(vm["pin-gone"]),
        rec(vm["nohost"], 1, h1, [("g1", "dgpu")]),
        rec(vm["nohost"], 2, None, [("g1", "dgpu")]),
        rec(vm["devices"], 1, h2, [("a", "dgpu"), ("b", "pci+vf")]),
        rec(vm["devices"], 2, h2, [("b", "pci+vf"), ("c", "mdev")]),
        rec(vm["move"], 1, h1, [("n1", "pci+vdpa")]),
        rec(vm["move"], 2, h2, [("n1", "pci+vdpa")]),
        tomb(vm["never"]),
    ]
    model = Model().apply(items)
    assert model.counts == Counter(applied=15, stale=3, deleted=4, absent=1)
    feed.publish_bindings(items)
    s = feed.sync()
    synced(feed)

    check_cache(r, model, vm.values(), (h1, h2, h3))
    assert state(r, vm["order"]) == (h1, {"g1": "dgpu"}, "3")
    assert state(r, vm["dup"]) == (h1, {"n1": "pci+vf"}, "1")
    assert state(r, vm["again"]) == (h3, {"u1": "usb"}, "2")
    assert state(r, vm["gone"]) == (None, {}, None)
    assert state(r, vm["nohost"]) == (None, {"g1": "dgpu"}, "2")
    assert state(r, vm["devices"]) == (h2, {"b": "pci+vf", "c": "mdev"}, "2")
    assert vm["move"] not in host_vms(r, h1) and vm["move"] in host_vms(r, h2)
    assert vm["nohost"] not in host_vms(r, h1) and vm["gone"] not in host_vms(r, h1)
    for name in ("pin", "pin-gone"):
        assert r.get(f"pinguard:vm:{{{vm[name]}}}:pin") == "licence dongle", name
    assert r.get(f"pinguard:vm:{{{vm['pin-gone']}}}:quarantine") == "held"
    assert r.zrange(f"pinguard:vm:{{{vm['pin-gone']}}}:failures", 0, -1) == ["req-1", "req-2"]
    counted(s, model.counts)
    assert s.metric("pinguard_sync_dead_letters_total") == 0
    assert feed.read_all("dlq") == []
    assert s.stop() == 0


def test_decisions_follow_the_feed(feed):
    """End to end: what the feed says is what the worker decides on. A VM
    with a VF NIC is APPROVED at generation 1; the owner attaches a dGPU
    (generation 2) and, once synced, a request fenced at 2 is VETOED
    HOST_BOUND_DEVICE. With sync stopped, the next change (a USB device,
    generation 3) has not reached the cache: a request fenced at 3 is
    STALE_BINDINGS on generation 2; once sync is back, HOST_BOUND_DEVICE on 3."""
    vm = uid()
    nic, gpu, usb = ("0000:17:00.2", "pci+vf"), ("0000:65:00.0", "dgpu"), ("usb-1-4", "usb")
    feed.publish_bindings([rec(vm, 1, SRC, [nic])])
    s = feed.sync()
    feed.worker()
    req = Requests(feed)
    wait_until(lambda: state(feed.redis, vm)[2] == "1", 60, "generation 1 in the cache")
    d = req.one(vm, 1)
    assert verdict(d) == ("APPROVED", None, [], 1), d

    feed.publish_bindings([rec(vm, 2, SRC, [nic, gpu])])
    wait_until(lambda: state(feed.redis, vm)[2] == "2", 60, "generation 2 in the cache")
    d = req.one(vm, 2)
    assert verdict(d) == ("VETOED", "HOST_BOUND_DEVICE",
                          [{"deviceUuid": gpu[0], "kind": "dgpu"}], 2), d

    assert s.stop() == 0
    feed.publish_bindings([rec(vm, 3, SRC, [nic, gpu, usb])])
    d = req.one(vm, 3)
    assert verdict(d) == ("VETOED", "STALE_BINDINGS", [], 2), d
    assert state(feed.redis, vm)[2] == "2"
    feed.sync()
    wait_until(lambda: state(feed.redis, vm)[2] == "3", 60, "generation 3 in the cache")
    d = req.one(vm, 3)
    assert verdict(d) == ("VETOED", "HOST_BOUND_DEVICE",
                          [{"deviceUuid": gpu[0], "kind": "dgpu"},
                           {"deviceUuid": usb[0], "kind": "usb"}], 3), d


def test_bad_records_dead_lettered(feed):
    """Each bad record goes to the DLQ with its key, its bytes, the reason and
    where it came from; the record after it on the same partition (the same
    key) is applied, and every offset is committed."""
    vm = {case: uid() for case in DEAD}
    stranger = uid()
    bad = {
        "garbage": b"not Avro at all " + vm["garbage"].encode(),
        "other record": encode("MigrateVmRequest", {
            "requestId": uid(), "vmUuid": vm["other record"], "srcHostUuid": SRC,
            "dstHostUuid": None, "origin": "API", "requestedAtMs": now_ms()}),
        "key names another VM": encode("VmBindings", rec(stranger, 1, SRC, [("g", "dgpu")])),
        "empty device kind": encode("VmBindings", rec(vm["empty device kind"], 1, SRC,
                                                      [{"deviceUuid": "d1", "kind": ""}])),
        "empty host": encode("VmBindings", rec(vm["empty host"], 1, "", [])),
        "device listed twice": encode("VmBindings", rec(
            vm["device listed twice"], 1, SRC, [("d1", "pci"), ("d1", "pci+vf")])),
        "negative generation": encode("VmBindings", rec(vm["negative generation"], -1, SRC)),
    }
    items, good = [], []
    for case in DEAD:
        items.append((vm[case], bad[case]))
        g = rec(vm[case], 1, SRC, [("n1", "pci+vf")])
        items.append(g)
        good.append(g)
    feed.publish_bindings(items)
    feed.vms.add(stranger)
    s = feed.sync()
    synced(feed)

    model = Model().apply(good)
    check_cache(feed.redis, model, list(vm.values()) + [stranger], [SRC])
    assert state(feed.redis, stranger) == (None, {}, None)
    sources = {(m.key(), m.value()): (m.partition(), m.offset())
               for m in feed.read_all("bindings")}
    dlq = feed.read_all("dlq")
    assert len(dlq) == len(DEAD), [m.headers() for m in dlq]
    by_key = {m.key().decode(): m for m in dlq}
    for case, (code, word) in DEAD.items():
        m = by_key[vm[case]]
        assert m.value() == bad[case], case
        h = {k: v.decode() for k, v in m.headers()}
        got_code, _, detail = h["pinguard-error"].partition(": ")
        assert got_code == code, (case, h["pinguard-error"])
        assert word in detail, (case, h["pinguard-error"])
        part, off = sources[(vm[case].encode(), bad[case])]
        assert h["pinguard-source-topic"] == feed.topics["bindings"], case
        assert (int(h["pinguard-source-partition"]), int(h["pinguard-source-offset"])) == \
            (part, off), case
    want = Counter(code for code, _ in DEAD.values())
    for code, n in want.items():
        assert s.metric("pinguard_sync_dead_letters_total", reason=code) == n, code
    counted(s, Counter(applied=len(good)))
    assert s.stop() == 0


# --- Redis down, and readiness ------------------------------------------------------

def test_redis_down_nothing_committed(feed, private_redis):
    """Redis stops with the feed caught up; records published meanwhile are
    held: no offset committed, nothing dead-lettered, none counted applied,
    not ready; the loop still turns (/healthz). Once Redis is back they are
    applied and committed."""
    pr = private_redis
    hosts = [uid() for _ in range(3)]
    vms = [uid() for _ in range(20)]
    first = [rec(v, 1, hosts[i % 3], [(f"g{i}", "dgpu")]) for i, v in enumerate(vms)]
    feed.publish_bindings(first)
    s = feed.sync(f"redis.port={pr.port}", "retry.backoff.max.ms=500", "redis.timeout.ms=300")
    synced(feed)
    model = Model().apply(first)
    check_cache(pr.client, model, vms, hosts)
    counted(s, model.counts)

    pr.stop()
    committed = feed.committed("bindings", group=feed.sync_group)
    dlq_end = feed.high_watermarks("dlq")
    more = [uid() for _ in range(10)]
    second = ([rec(v, 2, hosts[(i + 1) % 3], [(f"n{i}", "pci+vf")])
               for i, v in enumerate(vms[:10])]
              + [rec(v, 5, hosts[0], [("u", "usb")]) for v in more])
    feed.publish_bindings(second)
    lag = {"topic": feed.topics["bindings"]}

    def held():
        feed.check_workers()
        return (s.metric("pinguard_redis_up") == 0
                and s.metric("pinguard_consumer_lag_messages", **lag) == len(second))
    wait_until(held, 30, "sync to see Redis down and the new records as lag")
    assert feed.committed("bindings", group=feed.sync_group) == committed
    assert feed.high_watermarks("dlq") == dlq_end
    assert records(s, "applied") == len(first)
    assert s.http("/readyz")[0] == 503
    assert s.http("/healthz")[0] == 200

    pr.start()
    synced(feed)
    model.apply(second)
    check_cache(pr.client, model, vms + more, hosts)
    counted(s, model.counts)
    wait_until(lambda: s.metric("pinguard_redis_up") == 1, 15, "pinguard_redis_up 1")
    assert s.http("/readyz")[0] == 200
    assert feed.read_all("dlq") == []
    assert s.stop() == 0


def test_ready_only_once_caught_up(feed, private_redis):
    """A backlog published before sync starts: while Redis holds every write
    (CLIENT PAUSE WRITE, reads and PING still answer) sync cannot catch up
    and /readyz answers 503 (/healthz 200); once writes go through, the first
    200 comes with the whole backlog in the cache."""
    pr = private_redis
    hosts = [uid() for _ in range(10)]
    vms = [uid() for _ in range(1000)]
    backlog = [rec(v, g, hosts[(i + g) % 10], [(f"d{g}", "dgpu" if g == 2 else "pci+vf")])
               for g in (1, 2, 3) for i, v in enumerate(vms)]
    feed.publish_bindings(backlog)
    model = Model().apply(backlog)
    pr.client.execute_command("CLIENT", "PAUSE", str(int(120000 * TIME_SCALE)), "WRITE")
    try:
        s = feed.sync(f"redis.port={pr.port}")
        wait_until(lambda: s.http("/healthz")[0] == 200, 30, "/healthz 200")
        end = time.monotonic() + 3 * TIME_SCALE
        while time.monotonic() < end:
            feed.check_workers()
            assert s.http("/readyz")[0] == 503, "ready while no record could be applied"
            assert s.metric("pinguard_sync_caught_up") == 0
            assert s.http("/healthz")[0] == 200
            time.sleep(0.2)
    finally:
        pr.client.execute_command("CLIENT", "UNPAUSE")
    wait_until(lambda: s.http("/readyz")[0] == 200, 60, "/readyz 200 once caught up")
    check_cache(pr.client, model, vms, hosts)
    assert s.metric("pinguard_sync_caught_up") == 1
    assert s.stop() == 0


# --- rebuild -------------------------------------------------------------------------

def prefixed_feed(prefix, n_vms=60, n_hosts=5):
    """A mixed feed over VMs and hosts named prefix-...: kinds that approve
    and veto, moves, devices replaced, a host set to null, tombstones (one
    VM re-created after it), several generations per VM."""
    hosts = [f"{prefix}-host-{j}" for j in range(n_hosts)]
    vms = [f"{prefix}-vm-{i:03d}" for i in range(n_vms)]
    kinds = ["pci+vf", "dgpu", "pci+vdpa", "mdev", "fpga", "usb"]
    items = []
    for i, v in enumerate(vms):
        items.append(rec(v, 10, hosts[i % n_hosts], [(f"d{i}", kinds[i % len(kinds)])]))
    for i, v in enumerate(vms):
        if i % 3 == 0:  # moved, one device swapped for another
            items.append(rec(v, 11, hosts[(i + 1) % n_hosts],
                             [(f"e{i}", kinds[(i + 1) % len(kinds)]), ("nic", "pci+vf")]))
        if i % 10 == 4:
            items.append(tomb(v))
        if i % 10 == 5:
            items.append(rec(v, 12, None, [(f"d{i}", "pci+vf")]))
    items.append(rec(vms[4], 20, hosts[0], [("back", "pci+vf")]))  # re-created
    return vms, hosts, items


def test_rebuild(feed):
    """A lost cache (this test's keys deleted) is rebuilt key by key by
    `sync --rebuild` (exit 0, a summary), and the worker decides as before; a
    second rebuild over the rebuilt cache changes nothing; a rebuild of a
    lost cache while the live sync runs and new records arrive ends in the
    state the whole feed says."""
    r, prefix = feed.redis, feed.tag
    vms, hosts, items = prefixed_feed(prefix)
    feed.publish_bindings(items)
    model = Model().apply(items)
    live = feed.sync()
    feed.worker()
    synced(feed)
    want = model.keys()
    assert snapshot(r, prefix) == want
    req = Requests(feed)
    before = {vm: verdict(d) for vm, d in req.decide(vms).items()}
    assert before == {vm: expected_verdict(model, vm) for vm in vms}
    assert {v[1] for v in before.values()} == {None, "UNKNOWN_VM", "HOST_BOUND_DEVICE",
                                               "UNKNOWN_DEVICE_KIND"}
    assert live.stop() == 0

    assert lose(r, prefix) == len(want)
    rc, out, summary = rebuild(feed)
    assert rc == 0, out
    assert summary is not None, out
    assert "\r" not in out and "\x1b" not in out, "not a terminal: plain lines, no bar"
    replay = Model().apply(items).counts
    assert summary == (replay["applied"], replay["stale"],
                       replay["deleted"] + replay["absent"], 0, 6), (summary, replay)
    assert snapshot(r, prefix) == want
    after = {vm: verdict(d) for vm, d in req.decide(vms).items()}
    assert after == before

    # Twice: the rebuilt cache is already what the feed says.
    rc, out, summary = rebuild(feed)
    assert rc == 0, out
    again = Model()
    again.vms = dict(model.vms)
    again.apply(items)
    assert again.vms == model.vms
    assert summary == (again.counts["applied"], again.counts["stale"],
                       again.counts["deleted"] + again.counts["absent"], 0, 6), \
        (summary, again.counts)
    assert snapshot(r, prefix) == want

    # Lost again, rebuilt while the live sync runs and the feed moves on.
    lose(r, prefix)
    live = feed.sync()
    wait_until(lambda: live.http("/readyz")[0] == 200, 60, "the live sync ready")
    proc = subprocess.Popen(rebuild_args(feed), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=child_env())
    newer = [rec(v, 30, hosts[(i + 2) % len(hosts)], [("late", "dgpu")])
             for i, v in enumerate(vms) if i % 4 == 1]
    newer.append(rec(f"{prefix}-vm-new", 1, hosts[0], [("n", "pci+vf")]))
    feed.publish_bindings(newer)
    out, _ = proc.communicate(timeout=120 * TIME_SCALE)
    assert proc.returncode == 0, out
    synced(feed)
    model.apply(newer)
    got, want = snapshot(r, prefix), model.keys()
    vm_keys = lambda ks: {k: v for k, v in ks.items() if k.startswith("pinguard:vm:")}  # noqa: E731
    assert vm_keys(got) == vm_keys(want)
    # The host index follows each apply in a second round trip (another
    # slot): when the rebuild and the live sync apply two generations of one
    # VM at once, its old host may keep listing it. It serves reports only,
    # which read the VM's own :host; no VM may be missing from its host.
    for k, (_, members) in want.items():
        if k.startswith("pinguard:host:"):
            host = k[len("pinguard:host:{"):-len("}:vms")]
            extra = got.get(k, ("set", set()))[1] - members
            assert members <= got.get(k, ("set", set()))[1], k
            for v in extra:
                assert r.get(f"pinguard:vm:{{{v}}}:host") != host, (k, v)
    assert live.stop() == 0


def test_rebuild_progress_on_a_terminal(feed):
    """On a terminal the rebuild draws a progress bar (a line redrawn with
    \\r) and still ends with the summary and exit 0."""
    vms, hosts, items = prefixed_feed(feed.tag, n_vms=20)
    feed.publish_bindings(items)
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(rebuild_args(feed), stdout=slave, stderr=slave,
                                env=child_env())
        os.close(slave)
        slave = None
        shown = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
        rc = proc.wait(60 * TIME_SCALE)
    finally:
        if slave is not None:
            os.close(slave)
        os.close(master)
    text = shown.decode(errors="replace")
    assert rc == 0, text
    assert "\r" in text.replace("\r\n", "\n"), text
    assert SUMMARY.search(text), text
    check_cache(feed.redis, Model().apply(items), vms, hosts)


# --- scale ----------------------------------------------------------------------------

def test_hundred_thousand_vms(feed):
    """100,000 VMs over 1,000 hosts applied, then the same records again (the
    same generations: every one stale); the cache checked key by key."""
    n, n_hosts = 100_000, 1000
    hosts = [f"{feed.tag}-h{j}" for j in range(n_hosts)]
    vms = [f"{feed.tag}-{i:06d}" for i in range(n)]
    kinds = ("pci+vf", "dgpu", "mdev", "pci+vdpa")
    recs = [rec(v, 7 + i % 3, hosts[i % n_hosts],
                [(f"dev-{i}", kinds[i % 4])] + ([("nic", "pci+vf")] if i % 2 else []))
            for i, v in enumerate(vms)]
    encoded = [(r["vmUuid"], encode("VmBindings", r)) for r in recs]
    feed.vms.update(vms)
    feed.hosts.update(hosts)
    model = Model().apply(recs)

    feed.publish_bindings(encoded)
    s = feed.sync()
    synced(feed, timeout=120)
    counted(s, Counter(applied=n))
    feed.publish_bindings(encoded)
    synced(feed, timeout=120)
    counted(s, Counter(applied=n, stale=n))
    check_cache(feed.redis, model, vms, hosts)
    assert s.metric("pinguard_sync_dead_letters_total") == 0
    assert s.stop() == 0
